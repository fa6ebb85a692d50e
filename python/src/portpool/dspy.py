"""DSPy programs served by portpool workers: ``python -m portpool portpool.dspy:app``.

Needs the ``dspy`` extra (``pip install portpool[dspy]``). Programs live in the
caller's session (``ctx.session``), so session affinity keeps each one on one
worker between calls and ``session_close`` frees it.

Methods (params and results are maps):

- ``dspy.configure`` ``{"lm": LM}``: the worker's default LM (see below).
- ``dspy.create`` ``{"name", "signature": str | spec, "module": "Predict" | "ChainOfThought", "lm"?}``
- ``dspy.call`` ``{"name", "inputs": {...}, "lm"?, "usage"?: bool}`` →
  ``{"outputs": {...}, "reasoning": str | None, "usage": {...} | None}``
- ``dspy.save`` ``{"name"}`` → a program state (``module``, ``signature``, ``state``)
- ``dspy.load`` ``{"name", "state"}``: a fresh program from a saved state
- ``dspy.optimize`` ``{"name", "trainset": [...], "metric", "optimizer", ...}`` → the optimized state
- ``dspy.list`` → names; ``dspy.drop`` ``{"name"}`` → whether it existed; ``dspy.info`` → versions

An LM is ``{"model", "api_base"?, "api_key_env"?, "temperature"?, "max_tokens"?,
"cache"?, "num_retries"?, "timeout"?}`` (``timeout``: seconds per LM request);
the API key is read from the environment variable *named* by ``api_key_env`` in
the worker, never sent over the wire nor logged.
``{"dummy": [...] | {...}}`` is ``dspy.utils.DummyLM`` (a testing aid: scripted
answers, a list consumed in order or a map from a text in the prompt to the answer).
A call uses its own ``lm``, else the worker's default, which can also come from
the environment at start: ``PORTPOOL_DSPY_MODEL``, ``PORTPOOL_DSPY_API_BASE``,
``PORTPOOL_DSPY_API_KEY_ENV``, ``PORTPOOL_DSPY_TEMPERATURE``,
``PORTPOOL_DSPY_MAX_TOKENS``, ``PORTPOOL_DSPY_CACHE`` (``0``/``1``),
``PORTPOOL_DSPY_NUM_RETRIES``, ``PORTPOOL_DSPY_TIMEOUT``.

Errors are typed (the remote error's ``type``): ``BadSignature``, ``BadRequest``,
``MissingField``, ``UnknownField``, ``NoProgram``, ``NotConfigured``, ``LmError``
(the provider's message; ``data`` has ``status``, ``code``, ``provider`` when known), ``ParseError``
(``data`` has the LM's raw reply), ``BadState``, ``DspyError`` (anything else).

Offline: this module sets ``LITELLM_LOCAL_MODEL_COST_MAP=True`` before importing
DSPy (LiteLLM would otherwise fetch its model price list at import).

``import dspy`` takes 1-2 s: start pools of these workers eagerly, in parallel.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

import dspy  # noqa: E402
from dspy.utils.exceptions import AdapterParseError, LMError  # noqa: E402

import portpool  # noqa: E402
from portpool.app import Context, HandlerError  # noqa: E402

__all__ = ["app", "register", "MODULES", "METRICS", "SESSION_KEY"]

#: Key of this module's entry in ``ctx.session``.
SESSION_KEY = "portpool.dspy"

#: Module kinds a program can be built with (none takes a Python callable).
MODULES: dict[str, Callable[[Any], Any]] = {
    "Predict": lambda sig: dspy.Predict(sig),
    "ChainOfThought": lambda sig: dspy.ChainOfThought(sig),
}

#: Field types a signature spec may name.
TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list[str]": list[str],
    "list[int]": list[int],
    "list[float]": list[float],
    "dict[str, str]": dict[str, str],
    "dict[str, Any]": dict[str, Any],
}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _norm(value: Any) -> str:
    return " ".join(str(value).split()).casefold()


def _exact_match(example: Any, pred: Any, trace: Any = None) -> bool:
    labels = example.labels()
    return all(_norm(pred.get(k, "")) == _norm(v) for k, v in labels.items())


def _contains(example: Any, pred: Any, trace: Any = None) -> bool:
    labels = example.labels()
    return all(_norm(v) in _norm(pred.get(k, "")) for k, v in labels.items())


#: Metrics an optimization can name: every label field of the example, compared
#: with the prediction after trimming, collapsing spaces and case folding.
METRICS: dict[str, Callable[..., bool]] = {"exact_match": _exact_match, "contains": _contains}


def _err(type_: str, message: str, data: Any = None) -> HandlerError:
    return HandlerError(message, type=type_, data=data)


# ---------------------------------------------------------------- LM config


def _lm_from_env() -> dict[str, Any] | None:
    model = os.environ.get("PORTPOOL_DSPY_MODEL")
    if not model:
        return None
    spec: dict[str, Any] = {"model": model}
    for key, var, conv in (
        ("api_base", "PORTPOOL_DSPY_API_BASE", str),
        ("api_key_env", "PORTPOOL_DSPY_API_KEY_ENV", str),
        ("temperature", "PORTPOOL_DSPY_TEMPERATURE", float),
        ("max_tokens", "PORTPOOL_DSPY_MAX_TOKENS", int),
        ("num_retries", "PORTPOOL_DSPY_NUM_RETRIES", int),
        ("timeout", "PORTPOOL_DSPY_TIMEOUT", float),
    ):
        raw = os.environ.get(var)
        if raw:
            spec[key] = conv(raw)
    cache = os.environ.get("PORTPOOL_DSPY_CACHE")
    if cache:
        spec["cache"] = cache not in ("0", "false", "False", "no")
    return spec


class _Lms:
    """The worker's default LM spec and a cache of built LMs by spec."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.default: dict[str, Any] | None = None
        self.built: dict[str, Any] = {}

    def build(self, spec: Any) -> Any:
        if not isinstance(spec, dict):
            raise _err("BadRequest", f"lm must be a map, got {type(spec).__name__}")
        key = json.dumps(spec, sort_keys=True, default=str)
        with self.lock:
            lm = self.built.get(key)
            if lm is None:
                lm = _make_lm(spec)
                if len(self.built) >= 64:
                    self.built.pop(next(iter(self.built)))
                self.built[key] = lm
            return lm

    def resolve(self, spec: Any) -> Any:
        if spec is None:
            spec = self.default
        if spec is None:
            raise _err(
                "NotConfigured",
                "no LM configured: call dspy.configure, pass lm, or set PORTPOOL_DSPY_MODEL",
            )
        return self.build(spec)


def _make_lm(spec: dict[str, Any]) -> Any:
    if "dummy" in spec:
        answers = spec["dummy"]
        if set(spec) - {"dummy", "reasoning"}:
            raise _err(
                "BadRequest", f"unknown dummy lm settings: {sorted(set(spec) - {'dummy', 'reasoning'})}"
            )
        if not isinstance(answers, (list, dict)):
            raise _err("BadRequest", "lm.dummy must be a list of answers or a map from prompt text to answer")
        return dspy.utils.DummyLM(answers, reasoning=bool(spec.get("reasoning", False)))
    model = spec.get("model")
    if not isinstance(model, str) or not model:
        raise _err(
            "BadRequest", "lm.model must be a non-empty string (a LiteLLM model, e.g. openai/gpt-4o-mini)"
        )
    known = {
        "model",
        "api_base",
        "api_key_env",
        "temperature",
        "max_tokens",
        "cache",
        "num_retries",
        "timeout",
    }
    unknown = set(spec) - known
    if unknown:
        raise _err("BadRequest", f"unknown lm settings: {sorted(unknown)}")
    kwargs: dict[str, Any] = {
        "cache": bool(spec.get("cache", True)),
        "num_retries": int(spec.get("num_retries", 3)),
    }
    if spec.get("temperature") is not None:
        kwargs["temperature"] = float(spec["temperature"])
    if spec.get("max_tokens") is not None:
        kwargs["max_tokens"] = int(spec["max_tokens"])
    if spec.get("timeout") is not None:
        kwargs["timeout"] = float(spec["timeout"])  # seconds, per LM request (LiteLLM)
    if spec.get("api_base"):
        kwargs["api_base"] = str(spec["api_base"])
    key_env = spec.get("api_key_env")
    if key_env:
        key = os.environ.get(str(key_env))
        if key is None:
            raise _err("NotConfigured", f"the API key variable {key_env} is not set in the worker")
        kwargs["api_key"] = key
    elif spec.get("api_base"):
        # An OpenAI-compatible server that takes no key still needs one for the client.
        kwargs["api_key"] = "unused"
    return dspy.LM(model, **kwargs)


_lms = _Lms()
_lms.default = _lm_from_env()


# ---------------------------------------------------------------- signatures


def _field_specs(raw: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise _err("BadSignature", f"signature.{what} must be a non-empty list of fields")
    out = []
    for f in raw:
        if isinstance(f, str):
            f = {"name": f}
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not _NAME.match(f["name"]):
            raise _err("BadSignature", f"bad {what} field {f!r}: needs a name that is a Python identifier")
        type_ = f.get("type", "str")
        if type_ not in TYPES:
            raise _err("BadSignature", f"field {f['name']!r}: unknown type {type_!r}; known: {sorted(TYPES)}")
        out.append({"name": f["name"], "desc": f.get("desc"), "type": type_})
    return out


def _signature(raw: Any) -> Any:
    """A dspy.Signature from a string ``"question -> answer"`` or a spec map."""
    try:
        if isinstance(raw, str):
            sig = dspy.Signature(raw)
        elif isinstance(raw, dict):
            inputs = _field_specs(raw.get("inputs"), "inputs")
            outputs = _field_specs(raw.get("outputs"), "outputs")
            names = [f["name"] for f in inputs + outputs]
            if len(set(names)) != len(names):
                raise _err("BadSignature", f"field names repeat: {names}")
            fields: dict[str, Any] = {}
            for f in inputs:
                kw = {"desc": f["desc"]} if f["desc"] else {}
                fields[f["name"]] = (TYPES[f["type"]], dspy.InputField(**kw))
            for f in outputs:
                kw = {"desc": f["desc"]} if f["desc"] else {}
                fields[f["name"]] = (TYPES[f["type"]], dspy.OutputField(**kw))
            instructions = raw.get("instructions")
            sig = dspy.Signature(fields, instructions) if instructions else dspy.Signature(fields)
        else:
            raise _err("BadSignature", f"signature must be a string or a map, got {type(raw).__name__}")
    except HandlerError:
        raise
    except Exception as e:  # DSPy's parser raises ValueError, SyntaxError, TypeError...
        raise _err("BadSignature", f"bad signature {raw!r}: {type(e).__name__}: {e}") from e
    if not sig.input_fields or not sig.output_fields:
        raise _err("BadSignature", f"signature {raw!r} needs at least one input and one output field")
    return sig


# ---------------------------------------------------------------- programs


class _Program:
    __slots__ = ("module", "signature", "sig", "program")

    def __init__(self, module: str, signature: Any) -> None:
        if module not in MODULES:
            raise _err("BadRequest", f"unknown module {module!r}; known: {sorted(MODULES)}")
        self.module = module
        self.signature = signature
        self.sig = _signature(signature)
        self.program = MODULES[module](self.sig)

    def state(self) -> dict[str, Any]:
        state = _plain(self.program.dump_state())
        return {"module": self.module, "signature": self.signature, "state": state}


def _plain(value: Any) -> Any:
    """A MessagePack-encodable copy (DSPy states may hold pydantic models or other objects)."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    if hasattr(value, "toDict"):
        return value.toDict()
    return str(value)


def _programs(ctx: Context) -> dict[str, _Program]:
    if ctx.session is None:
        raise _err("NoSession", "DSPy programs live in a session: call with a session id")
    progs: dict[str, _Program] = ctx.session.setdefault(SESSION_KEY, {})
    return progs


def _params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _err("BadRequest", f"params must be a map, got {type(params).__name__}")
    return params


def _name(p: dict[str, Any]) -> str:
    name = p.get("name", "default")
    if not isinstance(name, str) or not name:
        raise _err("BadRequest", f"name must be a non-empty string, got {name!r}")
    return name


def _get(ctx: Context, p: dict[str, Any]) -> tuple[str, _Program]:
    name = _name(p)
    prog = _programs(ctx).get(name)
    if prog is None:
        raise _err("NoProgram", f"no program {name!r} in this session", data={"name": name})
    return name, prog


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _classify(exc: Exception) -> HandlerError:
    """Maps an exception raised while running DSPy to a typed error."""
    if isinstance(exc, HandlerError):
        return exc
    for e in _chain(exc):
        if isinstance(e, AdapterParseError):
            raw = getattr(e, "lm_response", None)
            return _err(
                "ParseError",
                f"cannot parse the LM's reply into the outputs: {e}",
                {"lm_response": None if raw is None else str(raw)[:4000]},
            )
    for e in _chain(exc):
        if isinstance(e, LMError) or (type(e).__module__ or "").startswith(("litellm", "openai", "httpx")):
            data: dict[str, Any] = {"exception": type(e).__name__}
            for key in ("code", "status", "provider", "provider_code", "request_id", "model"):
                value = getattr(e, key, None)
                if isinstance(value, (str, int)) and not isinstance(value, bool):
                    data[key] = value
            status = getattr(e, "status_code", None)
            if "status" not in data and isinstance(status, int):
                data["status"] = status
            return _err("LmError", f"the LM call failed: {type(e).__name__}: {e}", data)
    return _err("DspyError", f"{type(exc).__name__}: {exc}")


@contextmanager
def _running(lm: Any, **extra: Any) -> Iterator[None]:
    try:
        with dspy.context(lm=lm, **extra):
            yield
    except HandlerError:
        raise
    except Exception as e:
        raise _classify(e) from e


def _check_inputs(prog: _Program, inputs: Any) -> dict[str, Any]:
    if not isinstance(inputs, dict):
        raise _err("BadRequest", f"inputs must be a map, got {type(inputs).__name__}")
    expected = list(prog.sig.input_fields)
    missing = [k for k in expected if k not in inputs]
    if missing:
        raise _err(
            "MissingField",
            f"missing input field(s) {missing}; the signature takes {expected}",
            {"missing": missing, "expected": expected},
        )
    unknown = [k for k in inputs if k not in prog.sig.input_fields]
    if unknown:
        raise _err(
            "UnknownField",
            f"unknown input field(s) {unknown}; the signature takes {expected}",
            {"unknown": unknown, "expected": expected},
        )
    return inputs


def _usage(pred: Any) -> dict[str, Any] | None:
    get = getattr(pred, "get_lm_usage", None)
    usage = get() if callable(get) else None
    return _plain(usage) if usage else None


# ---------------------------------------------------------------- handlers


def configure(params: Any) -> dict[str, Any]:
    """Sets (``{"lm": {...}}``) or clears (``{"lm": None}``) the worker's default LM."""
    p = _params(params)
    spec = p.get("lm")
    if spec is not None:
        _lms.build(spec)  # validate now
    _lms.default = spec
    return {"configured": spec is not None}


def create(params: Any, ctx: Context) -> dict[str, Any]:
    p = _params(params)
    name = _name(p)
    prog = _Program(str(p.get("module", "Predict")), p.get("signature"))
    if p.get("lm") is not None:
        _lms.build(p["lm"])
    _programs(ctx)[name] = prog
    return {
        "name": name,
        "inputs": list(prog.sig.input_fields),
        "outputs": list(prog.sig.output_fields),
        "instructions": prog.sig.instructions,
    }


def call(params: Any, ctx: Context) -> dict[str, Any]:
    p = _params(params)
    _, prog = _get(ctx, p)
    inputs = _check_inputs(prog, p.get("inputs"))
    lm = _lms.resolve(p.get("lm"))
    want_usage = bool(p.get("usage", False))
    with _running(lm, track_usage=want_usage):
        pred = prog.program(**inputs)
    outputs = {k: _plain(pred.get(k)) for k in prog.sig.output_fields}
    reasoning = pred.get("reasoning") if "reasoning" not in prog.sig.output_fields else None
    return {
        "outputs": outputs,
        "reasoning": None if reasoning is None else str(reasoning),
        "usage": _usage(pred) if want_usage else None,
    }


def save(params: Any, ctx: Context) -> dict[str, Any]:
    _, prog = _get(ctx, _params(params))
    return prog.state()


def load(params: Any, ctx: Context) -> dict[str, Any]:
    p = _params(params)
    name = _name(p)
    state = p.get("state")
    if not isinstance(state, dict) or "signature" not in state or not isinstance(state.get("state"), dict):
        raise _err("BadState", "state must be a map with module, signature and state (as dspy.save returns)")
    prog = _Program(str(state.get("module", "Predict")), state["signature"])
    try:
        prog.program.load_state(state["state"])
    except Exception as e:
        raise _err("BadState", f"cannot load the state: {type(e).__name__}: {e}") from e
    _programs(ctx)[name] = prog
    return {"name": name, "demos": _demo_count(prog)}


def _demo_count(prog: _Program) -> int:
    return sum(len(getattr(pred, "demos", [])) for _, pred in prog.program.named_predictors())


def optimize(params: Any, ctx: Context) -> dict[str, Any]:
    """Compiles the program with a few-shot optimizer; it replaces the program. Returns the new state."""
    p = _params(params)
    name, prog = _get(ctx, p)
    metric_name = p.get("metric", "exact_match")
    if metric_name not in METRICS:
        raise _err("BadRequest", f"unknown metric {metric_name!r}; known: {sorted(METRICS)}")
    raw = p.get("trainset")
    if not isinstance(raw, list) or not raw:
        raise _err("BadRequest", "trainset must be a non-empty list of examples (maps of inputs and outputs)")
    input_names = list(prog.sig.input_fields)
    trainset = []
    for i, ex in enumerate(raw):
        if not isinstance(ex, dict):
            raise _err("BadRequest", f"trainset[{i}] must be a map")
        missing = [k for k in list(prog.sig.input_fields) + list(prog.sig.output_fields) if k not in ex]
        if missing:
            raise _err(
                "MissingField", f"trainset[{i}] lacks field(s) {missing}", {"missing": missing, "index": i}
            )
        trainset.append(dspy.Example(**ex).with_inputs(*input_names))
    kind = p.get("optimizer", "BootstrapFewShot")
    k = int(p.get("max_labeled_demos", 16))
    if kind == "LabeledFewShot":
        optimizer: Any = dspy.LabeledFewShot(k=k)
        compile_kw: dict[str, Any] = {}
    elif kind == "BootstrapFewShot":
        optimizer = dspy.BootstrapFewShot(
            metric=METRICS[metric_name],
            max_bootstrapped_demos=int(p.get("max_bootstrapped_demos", 4)),
            max_labeled_demos=k,
            max_rounds=int(p.get("max_rounds", 1)),
        )
        compile_kw = {}
    else:
        raise _err("BadRequest", f"unknown optimizer {kind!r}; known: BootstrapFewShot, LabeledFewShot")
    # LabeledFewShot only samples the train set: it needs no LM.
    lm = _lms.resolve(p.get("lm")) if kind == "BootstrapFewShot" else None
    with _running(lm):
        compiled = optimizer.compile(prog.program, trainset=trainset, **compile_kw)
    new = _Program.__new__(_Program)
    new.module, new.signature, new.sig, new.program = prog.module, prog.signature, prog.sig, compiled
    _programs(ctx)[name] = new
    out = new.state()
    out["demos"] = _demo_count(new)
    return out


def list_programs(params: Any, ctx: Context) -> list[str]:
    return sorted(_programs(ctx))


def drop(params: Any, ctx: Context) -> bool:
    return _programs(ctx).pop(_name(_params(params)), None) is not None


def info(params: Any) -> dict[str, Any]:
    return {
        "dspy": str(getattr(dspy, "__version__", "?")),
        "modules": sorted(MODULES),
        "metrics": sorted(METRICS),
        "types": sorted(TYPES),
        "configured": _lms.default is not None,
        "pid": os.getpid(),
    }


def register(target: portpool.App, prefix: str = "dspy.") -> portpool.App:
    """Adds the DSPy handlers to ``target`` (a user's own app), named ``prefix + verb``."""
    for verb, func in (
        ("configure", configure),
        ("create", create),
        ("call", call),
        ("save", save),
        ("load", load),
        ("optimize", optimize),
        ("list", list_programs),
        ("drop", drop),
        ("info", info),
    ):
        target.add_handler(func, prefix + verb)
    return target


#: The ready-made app: ``python -m portpool portpool.dspy:app``.
app = register(
    portpool.App(max_concurrency=int(os.environ.get("PORTPOOL_DSPY_CONCURRENCY", "16")), name="dspy")
)
