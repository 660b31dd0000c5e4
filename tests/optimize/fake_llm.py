"""A small fake OpenAI-compatible chat API on 127.0.0.1, for the HTTP objective tests.

``POST /v1/chat/completions`` answers the user message ``"q<i>"`` with ``"a<i>"``
(right) or ``"wrong"``; whether an answer is right is a deterministic function of the
question and the parameters, with probability

    p(temperature, top_p) = exp(-((temperature - 0.3) / 0.25)^2) * (1 - 0.3 (1 - top_p))

so quality peaks at temperature 0.3, top_p 1. The ``model`` picks a behaviour:

- ``good``: answers at once;
- ``flaky``: each distinct request gets a 429 (Retry-After: 0), then a 500, then
  the answer;
- ``broken``: always 500;
- ``garbage``: 200 with a body that is not JSON;
- ``slow``: sleeps ``slow_s`` before answering (past the client's timeout);
- ``leaky``: 503 whose body echoes the request's Authorization header;
- ``judge``: grades ("Score: 0.75 ...") -- 1 when the graded answer contains the
  reference, else 0.25.

Usage is reported: 10 prompt tokens, ``min(max_tokens, 20)`` completion tokens.
``server.script`` (a list of status codes, "garbage" or "sleep") forces the next
responses whatever the model; ``server.requests`` counts requests by model.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def probability(temperature: float, top_p: float) -> float:
    return math.exp(-(((temperature - 0.3) / 0.25) ** 2)) * (1 - 0.3 * (1 - top_p))


def _uniform(*parts) -> float:
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class _Handler(BaseHTTPRequestHandler):
    server: FakeLLM

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body, headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 - http.server's naming
        srv = self.server
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": f"no route {self.path}"})
        if srv.token and self.headers.get("Authorization") != f"Bearer {srv.token}":
            return self._send(401, {"error": "bad token"})
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return self._send(400, {"error": "body is not JSON"})
        model = body.get("model", "good")
        with srv.lock:
            srv.requests[model] += 1
            forced = srv.script.pop(0) if srv.script else None
            attempt = srv.attempts[raw] = srv.attempts.get(raw, 0) + 1
        if forced is not None:
            if forced == "garbage":
                return self._send(200, b"<html>upstream hiccup</html>")
            if forced == "sleep":
                time.sleep(srv.slow_s)
            else:
                return self._send(forced, {"error": f"forced {forced}"})
        if model == "broken":
            return self._send(500, {"error": "internal error"})
        if model == "garbage":
            return self._send(200, b'{"choices": [oops')
        if model == "leaky":
            return self._send(503, {"error": self.headers.get("Authorization")})
        if model == "slow":
            time.sleep(srv.slow_s)
        if model == "flaky" and attempt == 1:
            return self._send(429, {"error": "rate limited"}, [("Retry-After", "0")])
        if model == "flaky" and attempt == 2:
            return self._send(500, {"error": "try again"})
        question = body["messages"][-1]["content"]
        if model == "judge":
            graded = question.split("Answer to grade:")[-1]
            reference = question.split("Reference answer:")[-1].split("\n")[1]
            score = 1.0 if reference.strip() in graded else 0.25
            text = f"Score: {score}. Reasoning omitted."
        else:
            t = float(body.get("temperature", 1.0))
            top_p = float(body.get("top_p", 1.0))
            right = _uniform(question, t, top_p) < probability(t, top_p)
            text = "a" + question[1:] if right else "wrong"
        completion = min(int(body.get("max_tokens", 20)), 20)
        self._send(
            200,
            {
                "choices": [{"message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": completion},
            },
        )


class FakeLLM(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str | None = None, slow_s: float = 0.5):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token = token
        self.slow_s = slow_s
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.attempts: dict[bytes, int] = {}
        self.script: list = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def handle_error(self, request, client_address):
        pass  # a client that timed out and hung up is expected here

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self):
        self.shutdown()
        self.server_close()
