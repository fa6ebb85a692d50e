"""``python -m portpool APP``: serve an App over stdin/stdout."""

from portpool._cli import main

if __name__ == "__main__":
    main()
