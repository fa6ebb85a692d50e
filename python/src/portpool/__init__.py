"""portpool: the Python worker runtime for portpool pools.

A worker is a long-lived process serving the handlers of one :class:`App` over
stdin/stdout with 4-byte big-endian length-prefixed MessagePack frames::

    # myapp.py
    import portpool

    app = portpool.App(max_concurrency=8)

    @app.handler
    def echo(params):
        return params

Run it with ``python -m portpool myapp.py`` (or ``python -m portpool mypkg.mod:app``).
:mod:`portpool.protocol` holds the pure frame/message encode and decode helpers.
"""

from portpool import protocol
from portpool.app import App, Context, HandlerError

__all__ = ["App", "Context", "HandlerError", "protocol", "__version__"]

__version__ = "0.1.0"
