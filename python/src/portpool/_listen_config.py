"""The options of ``python -m portpool APP --listen HOST:PORT``, checked before anything starts.

Every mistake that would make the listener insecure or useless (plaintext on a public
address, no secret, unreadable certificates, a bad address) stops it here with exit code 2
and a message that names the problem, before a child runtime is started.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import ssl
import sys
from dataclasses import dataclass
from typing import NoReturn

from portpool import _auth, protocol
from portpool._stdio import _env_int

EXIT_USAGE = 2
DEFAULT_HANDSHAKE_TIMEOUT = 5.0
DEFAULT_SHUTDOWN_GRACE = 10.0
DEFAULT_MAX_HANDSHAKES = 256
_MAX_SECONDS = 24 * 3600.0

USAGE = """\
usage: python -m portpool APP --listen HOST:PORT [--tls-cert FILE --tls-key FILE
       [--tls-client-ca FILE]] [--secret-file FILE] [--insecure]
       [--handshake-timeout SECONDS] [--shutdown-grace SECONDS] [--port-file FILE]
       [--max-handshakes N]

Serves APP to remote hosts over TCP (see docs/remote.md): one child runtime
(python -m portpool APP), any number of host connections, each authenticated with
the shared secret (--secret-file, else $PORTPOOL_SECRET; at least 16 bytes).
Plaintext is refused on a non-loopback address unless --insecure is given.
With port 0, the bound address is logged ("portpool: listening on HOST:PORT")
and written to --port-file. At most --max-handshakes (default 256) connections
may be unauthenticated at once; more are closed at once.
"""


@dataclass(frozen=True)
class Options:
    """What the listener runs with (all checked)."""

    app: str
    host: str
    port: int
    secret: bytes
    ssl_context: ssl.SSLContext | None
    handshake_timeout: float
    max_handshakes: int
    shutdown_grace: float
    port_file: str | None
    max_frame: int


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"portpool: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_USAGE)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(USAGE)
        _fail(message)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> ``(host, port)``; raises ValueError."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1, localhost); other names are not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= _MAX_SECONDS:
        raise ValueError(text)
    return value


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1_000_000:
        raise ValueError(text)
    return value


def _tls_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        _fail(f"cannot load --tls-cert {cert!r} / --tls-key {key!r}: {exc}")
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            _fail(f"cannot load --tls-client-ca {client_ca!r}: {exc}")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def parse(argv: list[str]) -> Options:
    """Checks the command line and the environment; exits 2 with a message on any problem."""
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(USAGE)
        raise SystemExit(0)
    p = _Parser(prog="python -m portpool", add_help=False, usage=argparse.SUPPRESS)
    p.add_argument("app")
    p.add_argument("--listen", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-client-ca")
    p.add_argument("--secret-file")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--handshake-timeout", type=_seconds, default=DEFAULT_HANDSHAKE_TIMEOUT)
    p.add_argument("--shutdown-grace", type=_seconds, default=DEFAULT_SHUTDOWN_GRACE)
    p.add_argument("--max-handshakes", type=_count, default=DEFAULT_MAX_HANDSHAKES)
    p.add_argument("--port-file")
    args = p.parse_args(argv)
    try:
        host, port = parse_address(args.listen)
    except ValueError as exc:
        _fail(f"--listen: {exc}")
    if (args.tls_cert is None) != (args.tls_key is None):
        _fail("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        _fail("--tls-client-ca needs --tls-cert and --tls-key")
    ssl_context = None
    if args.tls_cert is not None:
        ssl_context = _tls_context(args.tls_cert, args.tls_key, args.tls_client_ca)
    elif not is_loopback(host) and not args.insecure:
        _fail(
            f"refusing to serve plaintext on the non-loopback address {format_address(host, port)}:"
            " give --tls-cert and --tls-key, or --insecure if the network is trusted"
        )
    try:
        secret = _auth.load_secret(args.secret_file, os.environ)
    except _auth.SecretError as exc:
        _fail(str(exc))
    return Options(
        app=args.app,
        host=host,
        port=port,
        secret=secret,
        ssl_context=ssl_context,
        handshake_timeout=args.handshake_timeout,
        max_handshakes=args.max_handshakes,
        shutdown_grace=args.shutdown_grace,
        port_file=args.port_file,
        max_frame=_env_int("PORTPOOL_MAX_FRAME", protocol.DEFAULT_MAX_FRAME),
    )
