"""``portpool.dspy`` against the real ``dspy`` package, offline.

Skipped when ``dspy`` is not installed (the project's main ``.venv``); ``cargo
xtask ci`` runs this file with ``.venv-dspy``, where it is. LM replies come
from ``dspy.utils.DummyLM`` or from a fake OpenAI-compatible server on
loopback; ``portpool.dspy`` sets ``LITELLM_LOCAL_MODEL_COST_MAP=True`` so
LiteLLM does not fetch its price list.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("dspy")

from conftest import Worker  # noqa: E402
from dspy_openai_server import PROVIDER_MESSAGE, FakeOpenAI  # noqa: E402

import portpool.dspy as pd  # noqa: E402
from portpool import protocol  # noqa: E402
from portpool.app import Context, HandlerError  # noqa: E402

QA = {"dummy": {"sky": {"answer": "blue"}, "grass": {"answer": "green"}, "snow": {"answer": "white"}}}


@pytest.fixture
def ctx() -> Context:
    return Context(1, "dspy.call", session_id="s1", session={})


def error_type(f: Callable[[], Any]) -> tuple[str | None, HandlerError]:
    with pytest.raises(HandlerError) as info:
        f()
    return info.value.type, info.value


def test_create_and_call_predict(ctx: Context) -> None:
    made = pd.create({"name": "qa", "signature": "question -> answer"}, ctx)
    assert made["inputs"] == ["question"] and made["outputs"] == ["answer"]
    out = pd.call({"name": "qa", "inputs": {"question": "what colour is the sky?"}, "lm": QA}, ctx)
    assert out["outputs"] == {"answer": "blue"} and out["reasoning"] is None
    out = pd.call({"name": "qa", "inputs": {"question": "and grass?"}, "lm": QA, "usage": True}, ctx)
    assert out["outputs"] == {"answer": "green"}
    assert isinstance(out["usage"], dict)
    assert pd.list_programs(None, ctx) == ["qa"]


def test_signature_spec_with_types_and_descriptions(ctx: Context) -> None:
    spec = {
        "inputs": [{"name": "text", "desc": "a sentence"}],
        "outputs": [{"name": "words", "type": "int", "desc": "how many words"}, "language"],
        "instructions": "Count the words.",
    }
    made = pd.create({"name": "count", "signature": spec}, ctx)
    assert made["outputs"] == ["words", "language"] and made["instructions"] == "Count the words."
    lm = {"dummy": [{"words": "3", "language": "en"}]}
    out = pd.call({"name": "count", "inputs": {"text": "one two three"}, "lm": lm}, ctx)
    assert out["outputs"] == {"words": 3, "language": "en"}  # typed: an int, not "3"


def test_chain_of_thought_returns_reasoning(ctx: Context) -> None:
    pd.create({"name": "cot", "signature": "question -> answer", "module": "ChainOfThought"}, ctx)
    lm = {"dummy": [{"reasoning": "6 times 7", "answer": "42"}]}
    out = pd.call({"name": "cot", "inputs": {"question": "6*7?"}, "lm": lm}, ctx)
    assert out == {"outputs": {"answer": "42"}, "reasoning": "6 times 7", "usage": None}


def test_save_drop_load_gives_same_answers(ctx: Context) -> None:
    pd.create({"name": "qa", "signature": "question -> answer"}, ctx)
    train = [{"question": "sky", "answer": "blue"}, {"question": "grass", "answer": "green"}]
    pd.optimize({"name": "qa", "trainset": train, "optimizer": "LabeledFewShot"}, ctx)
    state = pd.save({"name": "qa"}, ctx)
    before = pd.call({"name": "qa", "inputs": {"question": "snow"}, "lm": QA}, ctx)
    assert pd.drop({"name": "qa"}, ctx) is True and pd.list_programs(None, ctx) == []
    other = Context(2, "dspy.load", session_id="s2", session={})  # as on another worker
    assert pd.load({"name": "qa", "state": state}, other)["demos"] == 2
    assert pd.save({"name": "qa"}, other) == state
    after = pd.call({"name": "qa", "inputs": {"question": "snow"}, "lm": QA}, other)
    assert after == before and after["outputs"] == {"answer": "white"}


def test_bootstrap_few_shot_carries_demos(ctx: Context) -> None:
    pd.create({"name": "qa", "signature": "question -> answer"}, ctx)
    train = [{"question": "sky", "answer": "blue"}, {"question": "grass", "answer": "green"}]
    out = pd.optimize({"name": "qa", "trainset": train, "metric": "exact_match", "lm": QA}, ctx)
    assert out["demos"] == 2
    demos = out["state"]["demos"]
    assert {d["question"]: d["answer"] for d in demos} == {"sky": "blue", "grass": "green"}
    # A metric that rejects every trace bootstraps nothing.
    wrong = {"dummy": {"sky": {"answer": "red"}, "grass": {"answer": "red"}}}
    pd.create({"name": "qa2", "signature": "question -> answer"}, ctx)
    out = pd.optimize(
        {
            "name": "qa2",
            "trainset": train,
            "lm": wrong,
            "max_labeled_demos": 0,
            "optimizer": "BootstrapFewShot",
        },
        ctx,
    )
    assert out["demos"] == 0


@pytest.mark.parametrize(
    "signature",
    [
        "question ->",
        "a b c",
        "question -> answer: NoSuchType",
        42,
        {"inputs": ["q"], "outputs": [{"name": "1x"}]},
    ],
)
def test_bad_signatures_are_typed(ctx: Context, signature: Any) -> None:
    kind, _ = error_type(lambda: pd.create({"name": "b", "signature": signature}, ctx))
    assert kind == "BadSignature"
    assert pd.list_programs(None, ctx) == []


def test_field_errors_are_typed(ctx: Context) -> None:
    pd.create({"name": "qa", "signature": "question, context -> answer"}, ctx)
    kind, e = error_type(lambda: pd.call({"name": "qa", "inputs": {"question": "x"}, "lm": QA}, ctx))
    assert kind == "MissingField" and e.data["missing"] == ["context"]
    kind, e = error_type(
        lambda: pd.call({"name": "qa", "inputs": {"question": "x", "context": "", "extra": 1}, "lm": QA}, ctx)
    )
    assert kind == "UnknownField" and e.data["unknown"] == ["extra"]
    kind, _ = error_type(lambda: pd.call({"name": "nope", "inputs": {}}, ctx))
    assert kind == "NoProgram"
    kind, _ = error_type(lambda: pd.create({"name": "m", "signature": "a -> b", "module": "ReAct"}, ctx))
    assert kind == "BadRequest"


def test_unparsable_reply_is_a_parse_error(ctx: Context) -> None:
    pd.create({"name": "qa", "signature": "question -> answer: int"}, ctx)
    lm = {"dummy": [{"answer": "not a number"}] * 4}
    kind, e = error_type(lambda: pd.call({"name": "qa", "inputs": {"question": "x"}, "lm": lm}, ctx))
    assert kind == "ParseError" and "not a number" in e.data["lm_response"]


def test_no_lm_configured(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pd._lms, "default", None)
    pd.create({"name": "qa", "signature": "question -> answer"}, ctx)
    kind, _ = error_type(lambda: pd.call({"name": "qa", "inputs": {"question": "x"}}, ctx))
    assert kind == "NotConfigured"
    assert pd.configure({"lm": QA}) == {"configured": True}
    assert pd.call({"name": "qa", "inputs": {"question": "sky"}}, ctx)["outputs"] == {"answer": "blue"}


def test_lm_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTPOOL_DSPY_MODEL", "openai/m")
    monkeypatch.setenv("PORTPOOL_DSPY_API_BASE", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("PORTPOOL_DSPY_API_KEY_ENV", "MY_KEY")
    monkeypatch.setenv("PORTPOOL_DSPY_TEMPERATURE", "0.5")
    monkeypatch.setenv("PORTPOOL_DSPY_CACHE", "0")
    assert pd._lm_from_env() == {
        "model": "openai/m",
        "api_base": "http://127.0.0.1:9/v1",
        "api_key_env": "MY_KEY",
        "temperature": 0.5,
        "cache": False,
    }


# ------------------------------------------------------------ the real LM path, over HTTP


@pytest.fixture
def openai_server() -> Iterator[Callable[..., FakeOpenAI]]:
    servers: list[FakeOpenAI] = []

    def make(mode: str = "ok", answers: dict[str, str] | None = None) -> FakeOpenAI:
        server = FakeOpenAI(mode, answers).__enter__()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.__exit__(None, None, None)


def http_lm(server: FakeOpenAI) -> dict[str, Any]:
    return {
        "model": "openai/fake-model",
        "api_base": server.api_base,
        "api_key_env": "PORTPOOL_TEST_DSPY_KEY",
        "cache": False,
        "num_retries": 0,
        "temperature": 0.0,
        "max_tokens": 64,
    }


def test_openai_compatible_server_over_http(
    ctx: Context, openai_server: Callable[..., FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTPOOL_TEST_DSPY_KEY", "sk-test-secret")
    server = openai_server("ok", {"answer": "Paris"})
    pd.create({"name": "qa", "signature": "question -> answer"}, ctx)
    out = pd.call(
        {"name": "qa", "inputs": {"question": "capital of France?"}, "lm": http_lm(server), "usage": True},
        ctx,
    )
    assert out["outputs"] == {"answer": "Paris"}
    assert len(server.requests) == 1
    sent = server.requests[0]
    assert sent["model"] == "fake-model"
    assert 64 in (sent.get("max_tokens"), sent.get("max_completion_tokens")), sent
    prompt = "\n".join(m["content"] for m in sent["messages"])
    assert "`question`" in prompt and "`answer`" in prompt and "capital of France?" in prompt
    assert server.headers_seen[0]["authorization"] == "Bearer sk-test-secret"
    assert out["usage"] and out["usage"]["openai/fake-model"]["total_tokens"] == 18


def test_http_500_is_an_lm_error(
    ctx: Context, openai_server: Callable[..., FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTPOOL_TEST_DSPY_KEY", "k")
    server = openai_server("500")
    pd.create({"name": "qa", "signature": "question -> answer"}, ctx)
    kind, e = error_type(
        lambda: pd.call({"name": "qa", "inputs": {"question": "x"}, "lm": http_lm(server)}, ctx)
    )
    assert kind == "LmError" and PROVIDER_MESSAGE in e.message, e.message
    assert e.data.get("status") == 500


def test_unparsable_http_reply_is_a_parse_error(
    ctx: Context, openai_server: Callable[..., FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTPOOL_TEST_DSPY_KEY", "k")
    server = openai_server("garbage")
    pd.create({"name": "qa", "signature": "question -> answer"}, ctx)
    kind, e = error_type(
        lambda: pd.call({"name": "qa", "inputs": {"question": "x"}, "lm": http_lm(server)}, ctx)
    )
    assert kind == "ParseError" and "I cannot help" in e.data["lm_response"]


def test_missing_key_variable_is_not_configured(
    ctx: Context, openai_server: Callable[..., FakeOpenAI]
) -> None:
    os.environ.pop("PORTPOOL_TEST_DSPY_KEY", None)
    lm = http_lm(openai_server())
    kind, e = error_type(lambda: pd.configure({"lm": lm}))
    assert kind == "NotConfigured" and "PORTPOOL_TEST_DSPY_KEY" in e.message


# ------------------------------------------------------------ through a real worker process


def test_worker_process_sessions_errors_and_close(spawn: Callable[..., Worker]) -> None:
    w = spawn("portpool.dspy:app", env={"PORTPOOL_TEST_DSPY_KEY": "secret-in-worker"})
    w.recv = _patient(w.recv)  # type: ignore[method-assign]
    assert w.result("dspy.configure", {"lm": QA}) == {"configured": True}
    for session in ("a", "b"):
        w.result("dspy.create", {"name": "qa", "signature": "question -> answer"}, session=session)
    assert w.result("dspy.call", {"name": "qa", "inputs": {"question": "sky"}}, session="a")["outputs"] == {
        "answer": "blue"
    }
    b_lm = {"dummy": {"sky": {"answer": "azure"}}}
    out = w.result("dspy.call", {"name": "qa", "inputs": {"question": "sky"}, "lm": b_lm}, session="b")
    assert out["outputs"] == {"answer": "azure"}
    # Typed errors over the wire; the worker lives on.
    for params, kind in (
        ({"name": "qa", "inputs": {}}, "MissingField"),
        ({"name": "zz", "inputs": {}}, "NoProgram"),
        (
            {"name": "qa", "inputs": {"question": "x"}, "lm": {"dummy": [{"answer": "x"}], "bogus": 1}},
            "BadRequest",
        ),
    ):
        msg = w.call("dspy.call", params, session="a")
        assert msg.get("error", {}).get("type") == kind, msg
    msg = w.call("dspy.create", {"name": "x", "signature": "->"}, session="a")
    assert msg["error"]["type"] == "BadSignature"
    # session_close frees the programs.
    assert w.result("dspy.list", None, session="a") == ["qa"]
    w.send(protocol.session_close_message("a"))
    assert w.result("dspy.list", None, session="a") == []
    assert w.result("dspy.list", None, session="b") == ["qa"]
    assert w.proc.poll() is None
    assert "secret-in-worker" not in w.stderr


def _patient(recv: Callable[..., Any]) -> Callable[..., Any]:
    """The first frames wait for ``import dspy`` (seconds on a busy machine)."""

    def wrapped(timeout: float = 5.0) -> Any:
        return recv(max(timeout, 30.0))

    return wrapped


def test_worker_configured_from_environment_at_start(
    spawn: Callable[..., Worker], openai_server: Callable[..., FakeOpenAI]
) -> None:
    server = openai_server("ok", {"answer": "Paris"})
    env = {
        "PORTPOOL_DSPY_MODEL": "openai/env-model",
        "PORTPOOL_DSPY_API_BASE": server.api_base,
        "PORTPOOL_DSPY_API_KEY_ENV": "PORTPOOL_TEST_DSPY_KEY",
        "PORTPOOL_TEST_DSPY_KEY": "sk-from-env",
        "PORTPOOL_DSPY_CACHE": "0",
        "PORTPOOL_DSPY_NUM_RETRIES": "0",
    }
    w = spawn("portpool.dspy:app", env=env)
    w.recv = _patient(w.recv)  # type: ignore[method-assign]
    assert w.result("dspy.info")["configured"] is True
    w.result("dspy.create", {"name": "qa", "signature": "question -> answer"}, session="s")
    out = w.result("dspy.call", {"name": "qa", "inputs": {"question": "capital?"}}, session="s")
    assert out["outputs"] == {"answer": "Paris"}
    assert server.requests[0]["model"] == "env-model"
    assert server.headers_seen[0]["authorization"] == "Bearer sk-from-env"
    assert "sk-from-env" not in w.stderr


OFFLINE_PROBE = """
import socket, sys
attempts = []
real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
def connect(self, address):
    host = address[0] if isinstance(address, tuple) else str(address)
    if host not in ("127.0.0.1", "::1", "localhost"):
        attempts.append(("connect", host))
        raise OSError("network blocked by the test")
    return real_connect(self, address)
def getaddrinfo(host, *args, **kwargs):
    if host not in ("127.0.0.1", "::1", "localhost", None):
        attempts.append(("getaddrinfo", host))
        raise OSError("network blocked by the test")
    return real_getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
from portpool.app import Context
import portpool.dspy as pd
ctx = Context(1, "x", session_id="s", session={})
pd.create({"name": "qa", "signature": "question -> answer", "module": "ChainOfThought"}, ctx)
lm = {"dummy": [{"reasoning": "r", "answer": "a"}]}
assert pd.call({"name": "qa", "inputs": {"question": "q"}, "lm": lm}, ctx)["outputs"] == {"answer": "a"}
print("ATTEMPTS", attempts)
"""


def test_import_and_calls_reach_no_network() -> None:
    """Importing portpool.dspy (so dspy and litellm) and calling a program opens no outside connection."""
    import subprocess
    import sys

    from conftest import worker_env

    env = worker_env()
    env.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)  # the module must set it itself
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "ATTEMPTS []" in proc.stdout, proc.stdout + proc.stderr


def test_lm_timeout_bounds_a_slow_provider(
    ctx: Context, openai_server: Callable[..., FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTPOOL_TEST_DSPY_KEY", "k")
    server = openai_server("slow")  # answers after 1 s
    pd.create({"name": "qa", "signature": "question -> answer"}, ctx)
    lm = {**http_lm(server), "timeout": 0.2}
    started = time.monotonic()
    kind, e = error_type(lambda: pd.call({"name": "qa", "inputs": {"question": "x"}, "lm": lm}, ctx))
    assert kind == "LmError" and "imeout" in e.message, e.message
    assert time.monotonic() - started < 0.9, "gave up before the slow reply"
