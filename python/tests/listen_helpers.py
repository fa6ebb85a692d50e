"""Test helpers for ``python -m portpool APP --listen``: the listener process and a host-side client.

The client speaks the handshake of docs/remote.md and then ordinary frames over a real
TCP (optionally TLS) socket on loopback. Every read has a timeout.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import pathlib
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

import msgpack
from conftest import APPS, HERE, Calls, StderrCapture, worker_env

from portpool import protocol

SECRET = b"s3cret-for-tests-0123456789"
_LISTENING = re.compile(r"portpool: listening on (\S+):(\d+)\n")


class ListenerProcess:
    """``python -m portpool APP --listen 127.0.0.1:0 ...`` and its stderr, read continuously."""

    def __init__(
        self,
        tmp_path: pathlib.Path,
        *args: str,
        app: str | pathlib.Path = APPS / "basic.py",
        listen: str = "127.0.0.1:0",
        secret: bytes | None = SECRET,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
    ) -> None:
        cmd = [sys.executable, "-m", "portpool", str(app), "--listen", listen]
        if secret is not None:
            secret_file = tmp_path / f"secret-{secrets.token_hex(4)}"
            secret_file.write_bytes(secret + b"\n")
            cmd += ["--secret-file", str(secret_file)]
        cmd += list(args)
        full_env = worker_env(env)
        full_env.pop("PORTPOOL_SECRET", None)
        if env and "PORTPOOL_SECRET" in env:
            full_env["PORTPOOL_SECRET"] = env["PORTPOOL_SECRET"]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=HERE,
        )
        self._stderr = StderrCapture(self.proc)
        self.address: tuple[str, int] = ("", 0)
        if wait_ready:
            self.address = self.wait_listening()

    @property
    def stderr(self) -> str:
        return self._stderr.text

    def wait_stderr(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Waits until ``pattern`` (a regex) appears on the listener's stderr."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.stderr)
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on stderr within {timeout}s:\n{self.stderr}")
            time.sleep(0.02)

    def wait_listening(self, timeout: float = 20.0) -> tuple[str, int]:
        match = self.wait_stderr(_LISTENING.pattern, timeout)
        return match.group(1), int(match.group(2))

    def connect(self, secret: bytes = SECRET, ssl_context: ssl.SSLContext | None = None) -> Client:
        """A client that has completed the handshake (its ``hello`` is set)."""
        client = Client(self.address, ssl_context=ssl_context)
        client.handshake(secret)
        return client

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"listener did not exit within {timeout}s; stderr:\n{self.stderr}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Client(Calls):
    """A host's connection to a listener, at the frame level (no threads: reads on demand)."""

    call_timeout = 10.0

    def __init__(
        self, address: tuple[str, int], *, ssl_context: ssl.SSLContext | None = None, timeout: float = 5.0
    ) -> None:
        sock = socket.create_connection(address, timeout=timeout)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=address[0])
        self.sock = sock
        self._reader = protocol.FrameReader(protocol.DEFAULT_MAX_FRAME)
        self._bodies: list[bytes] = []
        self._ids = itertools.count(1)
        self.hello: dict[str, Any] = {}
        self.eof = False

    # -- frames

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(protocol.encode(message))

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next message (decoded as plain MessagePack); AssertionError on timeout or EOF."""
        body = self._next_body(timeout)
        if body is None:
            raise AssertionError("connection closed while waiting for a frame")
        msg: dict[str, Any] = msgpack.unpackb(body, raw=False)
        return msg

    def _next_body(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while not self._bodies:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no frame within {timeout}s")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(262144)
            except TimeoutError:
                continue
            except (ConnectionResetError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self.eof = True
                continue
            self._bodies += self._reader.feed(data)
        return self._bodies.pop(0)

    def read_until_closed(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every message until the listener closes the connection; AssertionError if it stays open."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            body = self._next_body(max(0.0, deadline - time.monotonic()) or 0.001)
            if body is None:
                return out
            out.append(msgpack.unpackb(body, raw=False))

    # -- handshake

    def handshake(self, secret: bytes = SECRET) -> dict[str, Any]:
        challenge = self.recv()
        assert challenge["type"] == "auth_challenge" and challenge["version"] == 1, challenge
        assert isinstance(challenge["nonce"], bytes) and len(challenge["nonce"]) == 32
        nonce = secrets.token_bytes(32)
        mac = hmac.new(
            secret, b"portpool-auth-v1 client" + challenge["nonce"] + nonce, hashlib.sha256
        ).digest()
        self.send({"type": "auth_response", "nonce": nonce, "mac": mac})
        reply = self.recv()
        if reply["type"] != "auth_ok":
            raise PermissionError(reply)
        expected = hmac.new(
            secret, b"portpool-auth-v1 server" + nonce + challenge["nonce"], hashlib.sha256
        ).digest()
        assert hmac.compare_digest(reply["mac"], expected), "the listener's mac is wrong"
        self.hello = self.recv()
        if self.hello["type"] == "auth_failed":  # no worker ready in time
            raise PermissionError(self.hello)
        assert self.hello["type"] == "hello", self.hello
        return self.hello

    # -- calls

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# -- TLS test certificates (made with the openssl command-line tool, per test session)


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_tls_files(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=portpool test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (directory / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n" + ext)
        _openssl(
            "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory
        )
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=directory,
        )  # fmt: skip
    return {p.name: p for p in directory.iterdir()}


def client_context(files: dict[str, pathlib.Path], *, with_cert: bool = False) -> ssl.SSLContext:
    """A host's TLS context trusting the test CA (and presenting the client certificate if asked)."""
    ctx = ssl.create_default_context(cafile=str(files["ca.pem"]))
    if with_cert:
        ctx.load_cert_chain(str(files["client.pem"]), str(files["client.key"]))
    return ctx
