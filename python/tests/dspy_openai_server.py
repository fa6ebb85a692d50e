"""A tiny OpenAI-compatible chat-completions server on loopback, for the DSPy tests.

``POST /v1/chat/completions`` answers by the ``mode`` set on the server:

- ``"ok"``: a ChatAdapter-formatted reply giving every output field of the
  last user message a scripted value (``answers``: field -> value), else ``"ok"``;
- ``"500"``: HTTP 500 with an OpenAI-style error body;
- ``"garbage"``: a 200 whose text has no output fields at all;
- ``"slow"``: as ``"ok"``, after 1 s (a call to be in flight when its worker dies).

Every request body is kept in ``requests``. As a script
(``python dspy_openai_server.py MODE [SECONDS]``) it prints ``PORT <n>`` and
serves until its stdin closes or for at most SECONDS (default 60), printing
each request as ``REQUEST <json>``: the Rust tests use that.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROVIDER_MESSAGE = "the fake provider is down (test)"


class FakeOpenAI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str = "ok", answers: dict[str, str] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        self.answers = answers or {}
        self.requests: list[dict[str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.echo = False  # script mode: print each request as a line "REQUEST <json>"
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def _reply_text(server: FakeOpenAI, body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
    # ChatAdapter's system prompt lists the outputs after "Your output fields are:".
    outputs_part = system.split("Your output fields are:", 1)[-1].split("All interactions", 1)[0]
    fields = re.findall(r"^\d+\. `(\w+)`", outputs_part, flags=re.M) or ["answer"]
    parts = [f"[[ ## {f} ## ]]\n{server.answers.get(f, 'ok')}" for f in fields]
    return "\n\n".join(parts + ["[[ ## completed ## ]]"])


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append(body)
        self.server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        if self.server.echo:
            auth = self.headers.get("authorization", "")
            print("REQUEST " + json.dumps({"body": body, "authorization": auth}), flush=True)
        if self.server.mode == "500":
            self._send(500, {"error": {"message": PROVIDER_MESSAGE, "type": "server_error", "code": "down"}})
            return
        if self.server.mode == "slow":
            time.sleep(1.0)
        text = "I cannot help with that." if self.server.mode == "garbage" else _reply_text(self.server, body)
        self._send(
            200,
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "test"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            },
        )

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    with FakeOpenAI(mode, {"answer": "Paris"}) as server:
        server.echo = True
        print(f"PORT {server.port}", flush=True)
        # Serve until stdin closes (the test that started us is gone) or SECONDS pass.
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        done.wait(seconds)


if __name__ == "__main__":
    main()
