"""``--listen``: who gets in. The handshake, TLS, and the refusals to start insecurely.

Every refused connection must be closed quickly, logged, and leave nothing behind in the
listener; every refusal to start must exit 2 with a message naming the problem.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator

import msgpack
import pytest
from conftest import APPS, HERE, worker_env
from listen_helpers import SECRET, Client, ListenerProcess, client_context

from portpool import _listen_config

REMOTE_APP = APPS / "remote.py"


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenerProcess]:
    """A plaintext loopback listener with a short handshake time-out (0.5 s)."""
    lp = ListenerProcess(tmp_path_factory.mktemp("listen"), "--handshake-timeout", "0.5", app=REMOTE_APP)
    yield lp
    lp.kill()


def _challenged(lp: ListenerProcess) -> Client:
    client = Client(lp.address)
    assert client.recv()["type"] == "auth_challenge"
    return client


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_wrong_secret_gets_auth_failed_and_is_closed(listener: ListenerProcess) -> None:
    client = Client(listener.address)
    with pytest.raises(PermissionError) as info:
        client.handshake(b"not-the-secret-but-long-enough")
    assert info.value.args[0] == {"type": "auth_failed", "reason": "authentication failed"}
    assert client.read_until_closed(timeout=5) == []
    listener.wait_stderr("wrong mac")


@pytest.mark.parametrize(
    ("first_frame", "logged"),
    [
        (b"\x00\x00\x00\x03\xc1\xc1\xc1", "not valid MessagePack"),
        (b"\x00\x00\x00\x01\x07", "not a map"),
        (
            msgpack.packb({"type": "request", "id": 1, "method": "echo", "params": 1}),
            "expected an auth_response",
        ),
        (msgpack.packb({"type": "auth_response", "nonce": b"short", "mac": bytes(32)}), "'nonce' must be 32"),
        (msgpack.packb({"type": "auth_response", "nonce": bytes(32), "mac": "text"}), "'mac' must be 32"),
    ],
)
def test_bad_first_frame_is_refused(listener: ListenerProcess, first_frame: bytes, logged: str) -> None:
    client = _challenged(listener)
    if not first_frame.startswith(b"\x00\x00\x00"):
        first_frame = len(first_frame).to_bytes(4, "big") + first_frame
    client.send_raw(first_frame)
    messages = client.read_until_closed(timeout=5)
    assert [m["type"] for m in messages] == ["auth_failed"], messages
    listener.wait_stderr(re.escape(logged))


def test_oversized_handshake_frame_is_refused_before_its_body(listener: ListenerProcess) -> None:
    client = _challenged(listener)
    client.send_raw((4097).to_bytes(4, "big"))  # the header alone: the body is never awaited
    messages = client.read_until_closed(timeout=5)
    # refused for its size (not by the 0.5 s time-out, whose reason would be "handshake timed out")
    assert messages == [{"type": "auth_failed", "reason": "handshake frame too large"}]
    listener.wait_stderr("handshake frame of 4097 bytes")


def test_stalled_handshake_is_closed_and_others_are_served(listener: ListenerProcess) -> None:
    silent = Client(listener.address)  # never answers the challenge
    half = _challenged(listener)
    half.send_raw(b"\x00\x00\x00\x40" + bytes(10))  # a frame that never completes
    started = time.monotonic()
    other = listener.connect()  # meanwhile, another host gets in and is served
    assert other.result("echo", "served") == "served"
    for client in (silent, half):
        messages = client.read_until_closed(timeout=5)
        assert messages[-1:] == [{"type": "auth_failed", "reason": "handshake timed out"}], messages
    assert time.monotonic() - started < 5
    listener.wait_stderr(re.escape("handshake not done within 0.5s"))
    assert other.result("echo", "still served") == "still served"
    other.close()


def test_failed_handshakes_leave_nothing_behind(listener: ListenerProcess) -> None:
    pid = listener.proc.pid
    baseline = _open_fds(pid)
    clients = []
    for i in range(30):
        client = Client(listener.address)
        if i % 3 == 0:
            client.send_raw(b"\x00\x00\x00\x01\x07")
        elif i % 3 == 1:
            client.send_raw((1 << 31).to_bytes(4, "big"))
        clients.append(client)  # the rest stall
    for client in clients:
        client.read_until_closed(timeout=5)
        client.close()
    deadline = time.monotonic() + 5
    while _open_fds(pid) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_fds(pid) <= baseline
    assert listener.connect().result("echo", 1) == 1


def test_mutual_tls_requires_a_client_certificate(
    tmp_path: pathlib.Path, tls_files: dict[str, pathlib.Path]
) -> None:
    lp = ListenerProcess(
        tmp_path,
        "--tls-cert",
        str(tls_files["server.pem"]),
        "--tls-key",
        str(tls_files["server.key"]),
        "--tls-client-ca",
        str(tls_files["ca.pem"]),
        "--handshake-timeout",
        "2",
        app=REMOTE_APP,
    )
    try:
        with_cert = lp.connect(ssl_context=client_context(tls_files, with_cert=True))
        assert with_cert.result("echo", "mtls") == "mtls"
        # Without a certificate: no challenge ever arrives (TLS 1.3 reports the refusal on the
        # first read, TLS 1.2 during the TLS handshake).
        try:
            refused = Client(lp.address, ssl_context=client_context(tls_files))
        except (ssl.SSLError, ConnectionError):
            pass
        else:
            assert refused.read_until_closed(timeout=5) == []
        lp.wait_stderr("TLS handshake failed|closed during the handshake")
        # A TLS connection that never says anything is closed at the handshake time-out (2 s).
        silent = Client(lp.address)
        started = time.monotonic()
        assert silent.read_until_closed(timeout=10) == []
        assert time.monotonic() - started < 8
        lp.wait_stderr("TLS handshake not done within 2s")
        assert with_cert.result("echo", "still") == "still"
    finally:
        lp.kill()


def _start(
    tmp_path: pathlib.Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = worker_env(env)
    if not env or "PORTPOOL_SECRET" not in env:
        full_env.pop("PORTPOOL_SECRET", None)
    return subprocess.run(
        [sys.executable, "-m", "portpool", str(REMOTE_APP), *args],
        env=full_env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_plaintext_on_a_public_address_is_refused(tmp_path: pathlib.Path) -> None:
    done = _start(tmp_path, "--listen", "0.0.0.0:0", env={"PORTPOOL_SECRET": SECRET.decode()})
    assert done.returncode == 2
    assert "non-loopback address 0.0.0.0:0" in done.stderr and "--insecure" in done.stderr


def test_insecure_allows_plaintext_on_a_public_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # Checked without binding: no test sends traffic to a non-loopback address.
    monkeypatch.setenv("PORTPOOL_SECRET", SECRET.decode())
    options = _listen_config.parse(["app.py", "--listen", "0.0.0.0:0", "--insecure"])
    assert options.ssl_context is None and options.host == "0.0.0.0"
    assert _listen_config.is_loopback("127.8.9.1") and _listen_config.is_loopback("::1")
    assert not _listen_config.is_loopback("10.0.0.1") and not _listen_config.is_loopback("example.com")


@pytest.mark.parametrize(
    ("secret_env", "expected"),
    [
        (None, "a shared secret is required"),
        ("too-short", "at least 16 bytes"),
    ],
)
def test_a_secret_of_16_bytes_is_required(
    tmp_path: pathlib.Path, secret_env: str | None, expected: str
) -> None:
    done = _start(
        tmp_path,
        "--listen",
        "127.0.0.1:0",
        env=None if secret_env is None else {"PORTPOOL_SECRET": secret_env},
    )
    assert done.returncode == 2 and expected in done.stderr, done.stderr


def test_secret_file_newline_and_env_secret_hidden_from_the_app(tmp_path: pathlib.Path) -> None:
    lp = ListenerProcess(tmp_path, app=REMOTE_APP, secret=None, env={"PORTPOOL_SECRET": SECRET.decode()})
    try:
        client = lp.connect(SECRET)
        assert client.result("environ", "PORTPOOL_SECRET") is None
    finally:
        lp.kill()
    # One trailing newline is stripped from the environment too (as from the file, and by the
    # Rust host): a Kubernetes Secret made from a file, given as env here and as a file there,
    # is the same secret everywhere.
    lp = ListenerProcess(
        tmp_path, app=REMOTE_APP, secret=None, env={"PORTPOOL_SECRET": SECRET.decode() + "\n"}
    )
    try:
        assert lp.connect(SECRET).result("echo", "nl") == "nl"
    finally:
        lp.kill()
    short = tmp_path / "short"
    short.write_bytes(b"0123456789abcde\n")  # 15 bytes once its newline is stripped
    done = _start(tmp_path, "--listen", "127.0.0.1:0", "--secret-file", str(short))
    assert done.returncode == 2 and "15 bytes" in done.stderr, done.stderr


def test_port_file_holds_the_bound_address(tmp_path: pathlib.Path) -> None:
    port_file = tmp_path / "port"
    lp = ListenerProcess(tmp_path, "--port-file", str(port_file), app=REMOTE_APP)
    try:
        assert port_file.read_text().strip() == f"{lp.address[0]}:{lp.address[1]}"
        with socket.create_connection(lp.address, timeout=5):
            pass
    finally:
        lp.kill()


def test_unauthenticated_connections_are_capped(tmp_path: pathlib.Path) -> None:
    # Each connection that has not proven the secret yet holds a socket, a timer and buffers
    # until its handshake time-out: without a cap, anyone who can reach the port holds as many
    # as the listener has file descriptors, for as long as they keep reconnecting.
    lp = ListenerProcess(tmp_path, "--max-handshakes", "3", "--handshake-timeout", "60", app=REMOTE_APP)
    try:
        served = lp.connect()  # authenticated: not counted
        idle = [_challenged(lp) for _ in range(3)]
        started = time.monotonic()
        refused = Client(lp.address)
        assert refused.read_until_closed(timeout=10) == []  # closed at once, no challenge
        assert time.monotonic() - started < 10  # (not by the 60 s handshake time-out)
        lp.wait_stderr("3 handshakes in progress")
        assert served.result("echo", "still served") == "still served"
        idle[0].close()  # a place frees up: the next host gets in
        deadline = time.monotonic() + 10
        while True:
            try:
                late = lp.connect()
                break
            except AssertionError:  # closed before the listener saw the first one go
                assert time.monotonic() < deadline, lp.stderr
                time.sleep(0.05)
        assert late.result("echo", "in") == "in"
    finally:
        lp.kill()
