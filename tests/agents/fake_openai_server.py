"""A small fake OpenAI-compatible chat server on 127.0.0.1 (http.server), for the
agents' OpenAI backend and LLM judge tests.

``POST /v1/chat/completions`` answers with ``reply(body) -> str`` (default: echo
the last message's content). ``script`` (a list of HTTP status codes, or
``"garbage"`` for a 200 that is not JSON) forces the next responses; ``token``
requires ``Authorization: Bearer <token>`` (else 401). Every request's JSON body
and headers are kept in ``requests``. Usage: ``prompt_tokens`` is the number of
whitespace words in all messages, ``completion_tokens`` those of the reply.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def echo(body: dict) -> str:
    return body["messages"][-1]["content"]


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAIServer

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 - http.server's naming
        srv = self.server
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": f"no route {self.path}"})
        body = json.loads(raw)
        with srv.lock:
            srv.requests.append({"body": body, "headers": dict(self.headers)})
            forced = srv.script.pop(0) if srv.script else None
        if srv.token and self.headers.get("Authorization") != f"Bearer {srv.token}":
            return self._send(401, {"error": "bad token"})
        if forced == "garbage":
            return self._send(200, b"<html>upstream hiccup</html>")
        if forced is not None:
            return self._send(forced, {"error": f"forced {forced}"})
        text = srv.reply(body)
        words = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
        self._send(
            200,
            {
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": words,
                    "completion_tokens": len(text.split()),
                },
            },
        )


class FakeOpenAIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, reply: Callable[[dict], str] = echo, token: str | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reply = reply
        self.token = token
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.script: list = []
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self):
        self.shutdown()
        self.server_close()
