"""The ``--listen`` handshake of docs/remote.md, without I/O: the secret, nonces, MACs, checks.

Every host connection proves it knows the shared secret before it sees the worker's hello
(and the listener proves it back), TLS or not: TLS protects the bytes, the secret says who
may call. Kept apart from the socket code so that the rules can be read in one place.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from typing import Final

import msgpack

from portpool import protocol

ENV_SECRET: Final = "PORTPOOL_SECRET"
SECRET_MIN_BYTES: Final = 16
AUTH_VERSION: Final = 1
NONCE_BYTES: Final = 32
# Handshake frames are tiny; anything larger is refused before its body is read.
HANDSHAKE_MAX_FRAME: Final = 4096
AUTH_FAILED: Final = "authentication failed"

_CLIENT_LABEL: Final = b"portpool-auth-v1 client"
_SERVER_LABEL: Final = b"portpool-auth-v1 server"


class SecretError(Exception):
    """No usable secret: the listener must not start (exit 2)."""


class HandshakeError(Exception):
    """The host failed the handshake. ``reason`` goes into ``auth_failed``; ``str()`` is logged."""

    def __init__(self, detail: str, reason: str = AUTH_FAILED) -> None:
        super().__init__(detail)
        self.reason = reason


def load_secret(path: str | None, environ: Mapping[str, str] = os.environ) -> bytes:
    """The shared secret: the bytes of ``path``, else ``PORTPOOL_SECRET``; one trailing newline stripped.

    The same rule for both sources (and on the Rust host): one secret given as a file on one
    side and as the environment on the other (a Kubernetes Secret made from a file) agrees.

    Raises :class:`SecretError` when there is none or it is shorter than 16 bytes: a short
    secret would make the MAC guessable, so refusing to start is kinder than starting weak.
    """
    if path is not None:
        try:
            with open(path, "rb") as f:
                secret = f.read()
        except OSError as exc:
            raise SecretError(f"cannot read the secret file {path!r}: {exc}") from None
        source = f"the secret file {path!r}"
    elif ENV_SECRET in environ:
        secret = environ[ENV_SECRET].encode("utf-8")
        source = f"${ENV_SECRET}"
    else:
        raise SecretError(f"a shared secret is required: give --secret-file FILE or set ${ENV_SECRET}")
    if secret.endswith(b"\n"):  # exactly one "\n", as docs/remote.md says (the Rust host does the same)
        secret = secret[:-1]
    if len(secret) < SECRET_MIN_BYTES:
        raise SecretError(
            f"{source} holds {len(secret)} bytes; the secret must be at least {SECRET_MIN_BYTES} bytes"
        )
    return secret


def new_nonce() -> bytes:
    """32 random bytes from the OS's CSPRNG: a fresh challenge per connection defeats replays."""
    return secrets.token_bytes(NONCE_BYTES)


def client_mac(secret: bytes, listener_nonce: bytes, host_nonce: bytes) -> bytes:
    """What the host must send: HMAC-SHA256(secret, "portpool-auth-v1 client" + listener + host nonce)."""
    return hmac.new(secret, _CLIENT_LABEL + listener_nonce + host_nonce, hashlib.sha256).digest()


def server_mac(secret: bytes, host_nonce: bytes, listener_nonce: bytes) -> bytes:
    """What the listener answers: HMAC-SHA256(secret, "portpool-auth-v1 server" + host + listener nonce).

    A different label and nonce order than :func:`client_mac`, so that neither side's proof
    can be reflected back as the other's.
    """
    return hmac.new(secret, _SERVER_LABEL + host_nonce + listener_nonce, hashlib.sha256).digest()


def challenge_frame(nonce: bytes) -> bytes:
    """Step 1, listener -> host."""
    msg: protocol.AuthChallengeMessage = {"type": "auth_challenge", "version": AUTH_VERSION, "nonce": nonce}
    return protocol.encode(msg)


def ok_frame(mac: bytes) -> bytes:
    """Step 3 when the host's mac is right."""
    msg: protocol.AuthOkMessage = {"type": "auth_ok", "mac": mac}
    return protocol.encode(msg)


def failed_frame(reason: str) -> bytes:
    """The listener's last frame on a connection whose handshake failed."""
    msg: protocol.AuthFailedMessage = {"type": "auth_failed", "reason": reason}
    return protocol.encode(msg)


def check_response(body: bytes, secret: bytes, listener_nonce: bytes) -> bytes:
    """Checks step 2 (the host's ``auth_response`` body); returns the host's nonce.

    Raises :class:`HandshakeError` for anything but a well-formed ``auth_response`` whose
    mac is right. The mac is compared in constant time (``hmac.compare_digest``); a malformed
    message is refused before any MAC is computed, which reveals nothing about the secret.
    """
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise HandshakeError(f"handshake frame is not valid MessagePack ({type(exc).__name__})") from None
    if not isinstance(msg, dict):
        raise HandshakeError(f"handshake frame is a MessagePack {type(msg).__name__}, not a map")
    kind = msg.get("type")
    if kind != "auth_response":
        raise HandshakeError(f"expected an auth_response, got a message of type {str(kind)[:40]!r}")
    nonce, mac = msg.get("nonce"), msg.get("mac")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise HandshakeError(f"auth_response 'nonce' must be {NONCE_BYTES} bytes (bin)")
    if not isinstance(mac, bytes) or len(mac) != hashlib.sha256().digest_size:
        raise HandshakeError("auth_response 'mac' must be 32 bytes (bin)")
    if not hmac.compare_digest(mac, client_mac(secret, listener_nonce, nonce)):
        raise HandshakeError("wrong mac: the host does not know the shared secret")
    return nonce
