"""An OpenAI-compatible chat endpoint for an agent (FastAPI + uvicorn).

Routes:

- ``POST /v1/chat/completions``: OpenAI's request body (``model``, ``messages``,
  ``temperature``, ``top_p``, ``max_tokens`` or ``max_completion_tokens``,
  ``seed``, ``stop``, ``n`` = 1) -> OpenAI's ``chat.completion`` object (``id``,
  ``object``, ``created``, ``model``, ``choices[0].message`` and
  ``finish_reason``, ``usage``);
- ``GET /v1/models``: the one model served;
- ``GET /healthz``: ``{"status": "ok", "model": NAME}`` (no key needed).

Errors use OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``:
400 ``invalid_request_error`` for a body that is not JSON, a malformed
``messages`` list, ``temperature < 0``, ``top_p`` outside (0, 1], ``max_tokens <
1``, ``n != 1``, ``stream: true``, a parameter this server does not implement
(``presence_penalty``, ``tools``, ...) or a conversation longer than the model's
context; 401 ``invalid_api_key``; 404 ``model_not_found`` for another model id.

API key: read once, at start, from the environment variable ``api_key_env``
(default ``CONVERGENCE_AGENT_API_KEY``) and checked as ``Authorization: Bearer
KEY`` on the ``/v1`` routes. When the variable is unset or empty the endpoint is
**open**: anyone who can reach the port can use it (the command says so when it
starts; keep it on 127.0.0.1 or set a key).

Generation goes through a *backend*, any object with

    complete(messages, temperature=None, top_p=None, max_tokens=None, seed=None)
        -> (text, prompt_tokens, completion_tokens, finish_reason)

(``None`` means the agent's default; ``finish_reason`` is ``"stop"`` or
``"length"``); it may raise `ChatRequestError` for a request it cannot serve.
Requests are served one at a time (one model, one lock).
"""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "API_KEY_ENV",
    "ChatBackend",
    "ChatRequestError",
    "create_chat_app",
]

API_KEY_ENV = "CONVERGENCE_AGENT_API_KEY"
"""The environment variable the API key is read from by default."""

# Parameters of OpenAI's API that change nothing here and are accepted as sent.
_IGNORED = {"user", "store", "metadata", "stream_options", "service_tier"}
# Parameters accepted only at their no-op value.
_NEUTRAL = {
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "top_logprobs": None,
    "logit_bias": None,
    "tools": None,
    "tool_choice": None,
    "response_format": None,
    "parallel_tool_calls": None,
}
ROLES = ("system", "developer", "user", "assistant", "tool")


class ChatRequestError(ValueError):
    """A request the backend cannot serve (OpenAI's 400 body: message, param,
    code)."""

    def __init__(self, message: str, param: str | None = None, code=None):
        super().__init__(message)
        self.param = param
        self.code = code


class ChatBackend(Protocol):
    def complete(
        self,
        messages: list[dict],
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> tuple[str, int, int, str]: ...


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None
    name: str | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, value):
        if value not in ROLES:
            raise ValueError(f"role must be one of {list(ROLES)}, got {value!r}")
        return value


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False


def _invalid(errors) -> JSONResponse:
    """OpenAI's 400 body for pydantic's list of invalid fields (the first one,
    and how many more)."""
    issue = errors[0]
    loc = [str(p) for p in issue.get("loc", ()) if p != "body"]
    param = None
    if loc:
        param = loc[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:])
    message = issue.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return _error(400, message, param=param)


def _error(status: int, message: str, param=None, code=None, kind=None):
    kind = kind or {
        401: "invalid_request_error",
        404: "invalid_request_error",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(status_code=status, content=body)


def _text(message: Message, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise ChatRequestError(
                f"messages[{index}].content[{j}]: only text parts are supported, got "
                f"type {part.type!r}",
                param=f"messages[{index}].content",
            )
        parts.append(part.text)
    return "".join(parts)


def _messages(request: ChatRequest) -> list[dict]:
    out = []
    for i, message in enumerate(request.messages):
        extra = sorted(set(message.model_extra or {}) - {"tool_call_id"})
        if extra:
            raise ChatRequestError(
                f"messages[{i}]: unsupported fields {extra} (tool calls are not "
                "implemented)",
                param=f"messages[{i}]",
            )
        role = "system" if message.role == "developer" else message.role
        out.append({"role": role, "content": _text(message, i)})
    return out


def _check_extras(request: ChatRequest) -> None:
    for key, value in (request.model_extra or {}).items():
        if key in _IGNORED:
            continue
        if key in _NEUTRAL and value == _NEUTRAL[key]:
            continue
        if key in _NEUTRAL:
            raise ChatRequestError(
                f"{key}={value!r} is not supported by this server (only "
                f"{_NEUTRAL[key]!r})",
                param=key,
            )
        raise ChatRequestError(f"unknown parameter {key!r}", param=key)
    if request.n != 1:
        raise ChatRequestError(f"n must be 1, got {request.n}", param="n")
    if request.stream:
        raise ChatRequestError("stream: true is not supported", param="stream")


def _cut_at_stop(text: str, stop) -> tuple[str, bool]:
    if not stop:
        return text, False
    stops = [stop] if isinstance(stop, str) else list(stop)
    cuts = [text.find(s) for s in stops if s]
    cuts = [c for c in cuts if c >= 0]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


@dataclass
class _Served:
    complete: Any
    name: str
    created: int
    lock: threading.Lock


def _complete_of(backend):
    """``backend.complete``; a `MultiTurnAgent` (system prompt, plan) is called
    through its own ``complete(messages, context)``."""
    if hasattr(backend, "backend") and hasattr(backend, "prompt"):

        def complete(messages, **sampling):
            context = {k: v for k, v in sampling.items() if v is not None}
            return backend.complete(messages, context=context)

        return complete
    if not callable(getattr(backend, "complete", None)):
        raise ValueError(
            f"backend must have a complete(messages, ...) method, got "
            f"{type(backend).__name__}"
        )
    return backend.complete


def create_chat_app(
    backend: ChatBackend, model_name: str, api_key: str | None = None
) -> FastAPI:
    """The FastAPI app serving ``backend`` as model ``model_name``;
    ``api_key=None`` (or empty) leaves the ``/v1`` routes open.

    ``backend``: anything with the ``complete`` of the module docstring (an
    `agents.agent.JaxBackend`, ``StubBackend``, ...), or a
    `agents.agent.MultiTurnAgent`, whose system prompt is then applied.
    """
    api_key = api_key or None
    served = _Served(
        _complete_of(backend), model_name, int(time.time()), threading.Lock()
    )
    app = FastAPI(title="convergence-jax agent", version="1")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _invalid(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(ChatRequestError)
    async def bad_request(request: Request, exc: ChatRequestError):
        return _error(400, str(exc), param=exc.param, code=exc.code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return _error(500, f"the server failed: {type(exc).__name__}: {exc}")

    def unauthorized(request: Request):
        if api_key is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, sent = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            sent.strip().encode(), api_key.encode()
        ):
            return None
        message = (
            "missing API key: send 'Authorization: Bearer KEY'"
            if not header
            else "incorrect API key"
        )
        return _error(401, message, code="invalid_api_key")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": served.name}

    @app.get("/v1/models")
    def models(request: Request):
        if (denied := unauthorized(request)) is not None:
            return denied
        card = {
            "id": served.name,
            "object": "model",
            "created": served.created,
            "owned_by": "convergence-jax",
        }
        return {"object": "list", "data": [card]}

    schema = {"application/json": {"schema": ChatRequest.model_json_schema()}}

    @app.post(
        "/v1/chat/completions",
        openapi_extra={"requestBody": {"content": schema, "required": True}},
    )
    async def chat(request: Request):
        # the key first, then the body: a caller without the key learns nothing
        if (denied := unauthorized(request)) is not None:
            return denied
        try:
            data = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _error(
                400, "the request body is not valid JSON", code="invalid_json"
            )
        try:
            body = ChatRequest.model_validate(data)
        except ValidationError as exc:
            return _invalid(exc.errors())
        return await run_in_threadpool(answer, body)

    def answer(body: ChatRequest):
        if body.model is not None and body.model != served.name:
            return _error(
                404,
                f"the model {body.model!r} does not exist; this server has "
                f"{served.name!r}",
                param="model",
                code="model_not_found",
            )
        _check_extras(body)
        messages = _messages(body)
        max_tokens = body.max_completion_tokens or body.max_tokens
        with served.lock:
            try:
                text, prompt_tokens, completion_tokens, finish = served.complete(
                    messages,
                    temperature=body.temperature,
                    top_p=body.top_p,
                    max_tokens=max_tokens,
                    seed=body.seed,
                )
            except ChatRequestError:
                raise
            except ValueError as error:
                # the backend's own checks: a prompt longer than the context, a
                # seed it does not take, a malformed message
                raise ChatRequestError(str(error)) from None
        text, stopped = _cut_at_stop(text, body.stop)
        if stopped:
            finish = "stop"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": int(prompt_tokens),
                "completion_tokens": int(completion_tokens),
                "total_tokens": int(prompt_tokens) + int(completion_tokens),
            },
            "system_fingerprint": None,
        }

    return app
