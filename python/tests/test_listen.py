"""``python -m portpool APP --listen``: relaying calls between hosts and one child runtime.

Real processes on loopback (docs/remote.md): a listener, its child runtime, and clients
speaking the handshake and frames over TCP (and TLS).
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from conftest import APPS
from listen_helpers import Client, ListenerProcess, client_context

from portpool import protocol

REMOTE_APP = APPS / "remote.py"


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenerProcess]:
    """One plaintext loopback listener shared by the tests that leave it as they found it."""
    lp = ListenerProcess(tmp_path_factory.mktemp("listen"), app=REMOTE_APP)
    yield lp
    lp.kill()


@pytest.fixture
def own_listener(tmp_path: pathlib.Path) -> Iterator[list[ListenerProcess]]:
    """A list to put listeners in that this test alone uses; they are killed at teardown."""
    made: list[ListenerProcess] = []
    yield made
    for lp in made:
        lp.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_echo_stream_and_ping_over_plaintext(listener: ListenerProcess) -> None:
    client = listener.connect()
    hello = client.hello
    assert re.fullmatch(r"[0-9a-f]{32}", hello["instance"]), hello
    assert hello["max_concurrency"] == 8 and "echo" in hello["methods"]
    assert client.result("echo", {"x": [1, 2.5, "s", b"\x00bin"]}) == {"x": [1, 2.5, "s", b"\x00bin"]}
    assert client.result("pid") == hello["pid"]
    # Streams: every chunk comes back under the host's own id.
    sid = client.request("stream", 3, id=77)
    frames = [client.recv() for _ in range(4)]
    assert [(f["type"], f["id"]) for f in frames] == [("chunk", 77)] * 3 + [("response", 77)]
    assert [f["data"] for f in frames[:3]] == [0, 1, 2] and sid == 77
    client.send({"type": "ping", "id": 2**64 - 1})
    assert client.recv() == {"type": "pong", "id": 2**64 - 1}
    client.close()


def test_two_hosts_with_colliding_ids_get_only_their_own_replies(listener: ListenerProcess) -> None:
    a, b = listener.connect(), listener.connect()
    assert a.hello["instance"] == b.hello["instance"]  # the same worker behind both
    for i in range(1, 6):  # both hosts use ids 1..5, interleaved, some answered out of order
        a.request("sleep", 0.05 * (6 - i), id=i)
        b.request("echo", {"host": "b", "i": i}, id=i)
    got_a = {m["id"]: m["result"] for m in (a.recv() for _ in range(5))}
    got_b = {m["id"]: m["result"] for m in (b.recv() for _ in range(5))}
    assert got_a == {i: 0.05 * (6 - i) for i in range(1, 6)}
    assert got_b == {i: {"host": "b", "i": i} for i in range(1, 6)}
    a.close()
    b.close()


def test_session_state_is_shared_between_hosts(listener: ListenerProcess) -> None:
    a, b = listener.connect(), listener.connect()
    assert a.result("session_set", {"colour": "teal"}, session="s-shared") is None
    assert b.result("session_get", "colour", session="s-shared") == "teal"
    assert b.result("session_get", "colour", session="s-other") is None
    b.send({"type": "session_close", "session": "s-shared"})
    assert a.result("session_get", "colour", session="s-shared") is None
    a.close()
    b.close()


def test_host_disconnect_cancels_its_calls_in_the_child(listener: ListenerProcess) -> None:
    a, b = listener.connect(), listener.connect()
    a.request("wait_cancel", {"key": "disconnect", "seconds": 30})
    deadline = time.monotonic() + 10
    while b.result("outcome", "disconnect") != "running":
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.02)
    a.close()
    while b.result("outcome", "disconnect") != "cancelled":
        assert time.monotonic() < deadline, "the disconnected host's call was not cancelled"
        time.sleep(0.02)
    b.close()


def test_host_shutdown_drains_its_own_calls_only(listener: ListenerProcess) -> None:
    a, b = listener.connect(), listener.connect()
    b_call = b.request("wait_cancel", {"key": "b-during-a-shutdown", "seconds": 3})
    a_call = a.request("sleep", 0.3)
    a.send({"type": "shutdown"})
    late = a.request("echo", "too late")
    messages = a.read_until_closed(timeout=10)
    assert [m["type"] for m in messages] == ["response", "response", "goodbye"], messages
    refused, done = messages[0], messages[1]
    assert refused["id"] == late and refused["error"]["type"] == "ShuttingDown"
    assert done == {"type": "response", "id": a_call, "result": 0.3}
    # B's call was neither cancelled nor ended by A's shutdown, and B keeps working.
    assert b.result("outcome", "b-during-a-shutdown") == "running"
    assert b.result("echo", "still here") == "still here"
    b.send({"type": "cancel", "id": b_call})
    assert b.recv()["id"] == b_call
    b.close()


def test_bad_frames_after_the_handshake_close_only_that_host(listener: ListenerProcess) -> None:
    survivor = listener.connect()
    pid = survivor.result("pid")
    bad_inputs = [
        (1 << 30).to_bytes(4, "big"),  # announces more than the max frame
        b"\x00\x00\x00\x02\xc1\xc1",  # not MessagePack
        b"\x00\x00\x00\x01\x05",  # not a map
    ]
    for raw in bad_inputs:
        c = listener.connect()
        c.send_raw(raw)
        assert c.read_until_closed(timeout=5) == []
    # a worker -> host message, and an id already in flight: protocol errors of that host only
    c = listener.connect()
    c.send({"type": "pong", "id": 1})
    assert c.read_until_closed(timeout=5) == []
    c = listener.connect()
    c.request("sleep", 5, id=9)
    c.request("sleep", 5, id=9)
    assert c.read_until_closed(timeout=5) == []
    assert survivor.result("pid") == pid  # same child, still serving
    listener.wait_stderr("already in flight")
    listener.wait_stderr("malformed frame")
    survivor.close()


def test_invalid_params_are_answered_not_fatal(listener: ListenerProcess) -> None:
    client = listener.connect()
    # A request whose params is a str that is not UTF-8: readable envelope, undecodable params.
    body = b"\x84\xa4type\xa7request\xa2id\x05\xa6method\xa4echo\xa6params\xa2\xff\xfe"
    client.send_raw(len(body).to_bytes(4, "big") + body)
    reply = client.recv()
    assert reply["id"] == 5 and reply["error"]["type"] == "InvalidParams", reply
    assert client.result("echo", 1) == 1
    client.close()


def test_tls_echo(
    tmp_path: pathlib.Path, tls_files: dict[str, pathlib.Path], own_listener: list[ListenerProcess]
) -> None:
    lp = ListenerProcess(
        tmp_path,
        "--tls-cert",
        str(tls_files["server.pem"]),
        "--tls-key",
        str(tls_files["server.key"]),
        app=REMOTE_APP,
    )
    own_listener.append(lp)
    client = lp.connect(ssl_context=client_context(tls_files))
    assert client.result("echo", "over tls") == "over tls"
    client.close()
    # Plaintext to a TLS listener gets no challenge: the TLS handshake fails and it is closed.
    plain = Client(lp.address)
    plain.send_raw(b"\x00\x00\x00\x10" + bytes(16))
    assert plain.read_until_closed(timeout=10) == []


def test_child_killed_goodbye_then_new_instance(
    tmp_path: pathlib.Path, own_listener: list[ListenerProcess]
) -> None:
    lp = ListenerProcess(tmp_path, app=REMOTE_APP)
    own_listener.append(lp)
    a, b = lp.connect(), lp.connect()
    old_pid, old_instance = a.hello["pid"], a.hello["instance"]
    a.request("sleep", 30)
    os.kill(old_pid, signal.SIGKILL)
    for client in (a, b):
        messages = client.read_until_closed(timeout=10)
        assert [m["type"] for m in messages] == ["goodbye"], messages
        reason = messages[0]["reason"]
        assert f"pid {old_pid}" in reason and "SIGKILL" in reason, reason
        assert "remote app imported: these are its last words" in reason, reason
    c = lp.connect()  # at once: it waits for the new child's hello within its handshake time-out
    assert c.hello["instance"] != old_instance and c.hello["pid"] != old_pid
    assert c.result("echo", "again") == "again"
    c.close()


def test_sigterm_drains_then_exits_zero(tmp_path: pathlib.Path, own_listener: list[ListenerProcess]) -> None:
    lp = ListenerProcess(tmp_path, app=REMOTE_APP)
    own_listener.append(lp)
    client = lp.connect()
    child_pid = client.hello["pid"]
    call = client.request("sleep", 0.5)
    lp.signal(signal.SIGTERM)
    assert client.recv() == {"type": "goodbye", "reason": "draining"}
    late = client.request("echo", "late")
    messages = client.read_until_closed(timeout=10)
    assert {"type": "response", "id": call, "result": 0.5} in messages
    assert [m["error"]["type"] for m in messages if m["id"] == late] == ["ShuttingDown"]
    assert lp.wait(15) == 0
    deadline = time.monotonic() + 5
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child_pid), "the child runtime outlived the listener"
    with pytest.raises(OSError):
        Client(lp.address, timeout=2)


def test_slow_reader_does_not_block_other_hosts(
    tmp_path: pathlib.Path, own_listener: list[ListenerProcess]
) -> None:
    lp = ListenerProcess(tmp_path, app=REMOTE_APP, env={"PORTPOOL_MAX_FRAME": str(1 << 20)})
    own_listener.append(lp)
    reader, sleeper = lp.connect(), lp.connect()
    for _ in range(60):  # 30 MB of replies it never reads
        sleeper.request("big", 500_000)
    for i in range(40):
        assert reader.result("echo", i, timeout=10) == i
    lp.wait_stderr("does not read its replies")
    assert reader.result("echo", "after the drop") == "after the drop"
    sleeper.close()
    reader.close()


def test_host_shutdown_cancels_its_calls_after_the_grace(
    tmp_path: pathlib.Path, own_listener: list[ListenerProcess]
) -> None:
    lp = ListenerProcess(tmp_path, "--shutdown-grace", "0.3", app=REMOTE_APP)
    own_listener.append(lp)
    client, observer = lp.connect(), lp.connect()
    call = client.request("wait_cancel", {"key": "grace", "seconds": 30})
    client.send({"type": "shutdown"})
    messages = client.read_until_closed(timeout=10)
    assert [(m["type"], m.get("id")) for m in messages] == [("response", call), ("goodbye", None)], messages
    assert messages[1]["reason"] == "shutdown requested by the host"
    assert observer.result("outcome", "grace") == "cancelled"
    observer.close()


def test_a_worker_that_cannot_start_stops_the_listener(tmp_path: pathlib.Path) -> None:
    lp = ListenerProcess(tmp_path, app=tmp_path / "missing.py", wait_ready=False)
    try:
        assert lp.wait(20) == 1
        assert "could not start" in lp.stderr and "exited with status" in lp.stderr
        assert "listening on" not in lp.stderr
    finally:
        lp.kill()


def test_requests_in_any_key_order_are_relayed(listener: ListenerProcess) -> None:
    client = listener.connect()
    client.send_raw(
        protocol.frame(msgpack.packb({"params": [1, 2], "id": 300, "method": "echo", "type": "request"}))
    )
    assert client.recv() == {"type": "response", "id": 300, "result": [1, 2]}
    client.close()


def test_a_flood_of_large_requests_is_relayed_whole(listener: ListenerProcess) -> None:
    flooder, other = listener.connect(), listener.connect()
    payload = bytes(range(256)) * 1200  # 300 KiB: the child's input backs up, reading pauses, resumes
    ids = [flooder.request("echo", [i, payload]) for i in range(30)]
    assert other.result("echo", "meanwhile") == "meanwhile"
    replies = {m["id"]: m["result"] for m in (flooder.recv(timeout=20) for _ in ids)}
    assert replies == {id_: [i, payload] for i, id_ in enumerate(ids)}
    flooder.close()
    other.close()


def test_a_child_that_cannot_restart_is_retried(
    tmp_path: pathlib.Path, own_listener: list[ListenerProcess]
) -> None:
    marker = tmp_path / "refuse-to-start"
    app = tmp_path / "fragile.py"
    app.write_text(
        "import os, pathlib, portpool\n"
        "if pathlib.Path(os.environ['PORTPOOL_TEST_MARKER']).exists():\n"
        "    raise RuntimeError('refusing to start: the marker is there')\n"
        "app = portpool.App()\n"
        "app.handler(lambda params: params, name='echo')\n"
    )
    lp = ListenerProcess(
        tmp_path, "--handshake-timeout", "0.5", app=app, env={"PORTPOOL_TEST_MARKER": str(marker)}
    )
    own_listener.append(lp)
    old_pid = lp.connect().hello["pid"]
    marker.touch()
    os.kill(old_pid, signal.SIGKILL)
    lp.wait_stderr("could not start again")
    with pytest.raises(PermissionError) as refused:  # authenticated, but no worker to hand over
        lp.connect()
    assert refused.value.args[0] == {"type": "auth_failed", "reason": "worker not ready"}
    marker.unlink()
    lp.wait_stderr(rf"worker runtime started \(pid (?!{old_pid}\b)", timeout=20)
    client = lp.connect()
    assert client.hello["pid"] != old_pid and client.result("echo", "back") == "back"


def _request_with_two_ids(first: int, second: int, method: str, params: Any) -> bytes:
    """A request map with the key ``id`` twice: the listener must not read one and the child the other."""
    pack = msgpack.packb
    body = b"\x85" + b"".join(
        pack(x, use_bin_type=True)
        for x in ("type", "request", "id", first, "method", method, "params", params, "id", second)
    )
    return len(body).to_bytes(4, "big") + body


def test_a_request_with_two_ids_cannot_reach_another_hosts_call(
    tmp_path: pathlib.Path, own_listener: list[ListenerProcess]
) -> None:
    # A fresh listener numbers its listener-wide ids from 1: A's call below is id 1 in the child.
    lp = ListenerProcess(tmp_path, app=REMOTE_APP)
    own_listener.append(lp)
    a, b = lp.connect(), lp.connect()
    pid = a.hello["pid"]
    a_call = a.request("sleep", 0.5, id=40)
    # B's frame: the listener used to splice its first id (7) and the child to read its last (1),
    # which is A's call in flight: the child then exited for everybody (or a reply crossed hosts).
    b.send_raw(_request_with_two_ids(7, 1, "echo", "forged"))
    assert b.read_until_closed(timeout=10) == []
    assert a.recv(timeout=10) == {"type": "response", "id": a_call, "result": 0.5}
    assert a.result("pid") == pid  # the same child, still serving
    lp.wait_stderr("malformed frame")
    a.close()


def test_params_nested_too_deep_are_answered_not_fatal(listener: ListenerProcess) -> None:
    client = listener.connect()
    # Deeper than msgpack-python decodes: the envelope is readable, the child answers InvalidParams.
    head = b"\x84\xa4type\xa7request\xa2id\x06\xa6method\xa4echo\xa6params"
    body = head + b"\x91" * 100_000 + b"\x01"
    client.send_raw(len(body).to_bytes(4, "big") + body)
    reply = client.recv(timeout=10)
    assert reply["id"] == 6 and reply["error"]["type"] == "InvalidParams", reply
    assert client.result("echo", 1) == 1
    client.close()
