"""``convergence-jax serve``: the runtime bandit over HTTP (FastAPI + uvicorn).

Routes:

- ``POST /select`` ``{"bandit", "user_id"?, "context"?}`` ->
  ``{"decision_id", "params", "arm", "segment"}``
- ``POST /update`` ``{"bandit", "decision_id", "reward"}`` ->
  ``{"decision_id", "applied", "arm", "segment"}``
- ``POST /expire`` ``{"bandit", "older_than_s"}`` -> ``{"bandit", "expired"}``:
  delete decisions still pending after that many seconds
- ``GET /stats`` (all bandits) or ``GET /stats?bandit=NAME``
- ``GET /healthz``

The mutating routes (select records a decision, update applies a reward, expire
deletes stale decisions) need the API
key, read from the environment variable ``--api-key-env`` (default
``CONVERGENCE_API_KEY``) and sent as ``Authorization: Bearer KEY`` or
``X-API-Key: KEY``. Bad input gets a 4xx whose ``detail`` says what is wrong: 400 (a
body that is not UTF-8 JSON), 401 (no or wrong key), 404 (unknown bandit or
decision), 409 (a decision already has another reward), 422 (a missing, unknown or
invalid field; a NaN or out-of-range reward). ``/openapi.json`` declares each
route's statuses and their bodies.

``/select`` and ``/update`` are answered in batches: each request is queued to a
thread of the server process (one for selects, one for updates), which takes every
request of its kind waiting and runs them as one ``Runtime.select_many`` (one read
per segment, one vmapped draw per 8 selections, one statement or transaction for
all the decisions) or one ``Runtime.update_many`` (one write transaction, applied
in order), then answers each request with its own result or error. Under load a
batch holds the requests that arrived while the previous one ran; alone, a request
is a batch of one. The guarantees are the runtime's: exact
counts, idempotent updates, atomic transactions.

FastAPI and uvicorn are imported only by this module (the command line imports it for
``serve`` alone), so the rest of the library does not need them.
"""

from __future__ import annotations

import asyncio
import difflib
import hmac
import json
import os
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro
import yaml
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from convergence_jax.runtime.bandit import (
    DecisionConflictError,
    Runtime,
    RuntimeBanditError,
    UnknownBanditError,
    UnknownDecisionError,
    _redacted,
    is_postgres_url,
)

__all__ = [
    "Batcher",
    "ServeArgs",
    "app_from_env",
    "configure_from_yaml",
    "create_app",
    "serve",
    "warm",
]

CONFIGURE_KEYS = (
    "arms",
    "space",
    "num_arms",
    "seed",
    "bandit",
    "gamma",
    "prior",
    "segment_key",
    "reward_range",
    "replace",
)


@dataclass(frozen=True)
class ServeArgs:
    """Serve the runtime bandits of one database (SQLite or PostgreSQL) over HTTP."""

    db: str = "convergence_runtime.db"
    """The SQLite database (created if missing), or a PostgreSQL URL
    postgresql://user[:password]@host[:port]/dbname that several servers share."""
    config: str | None = None
    """YAML file: bandits: {NAME: {arms: ..., bandit: beta, gamma: ...}} configured
    at start (an existing bandit with the same config is kept as it is)."""
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 8000
    """Port to listen on."""
    api_key_env: str = "CONVERGENCE_API_KEY"
    """Environment variable holding the API key of the mutating routes."""
    insecure_no_auth: bool = False
    """Serve without an API key (only on a trusted network)."""
    log_level: str = "warning"
    """uvicorn log level."""
    workers: int = 1
    """uvicorn worker processes; each opens the database (its transactions keep the
    counts exact)."""
    max_batch: int = 256
    """Most requests of one kind answered by one batch."""


def configure_from_yaml(runtime: Runtime, path: str | Path) -> list[str]:
    """Configure the bandits a YAML file names; errors name the key."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeBanditError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RuntimeBanditError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict) or set(data) != {"bandits"}:
        raise RuntimeBanditError(f"{path}: expected one top-level key 'bandits'")
    bandits = data["bandits"]
    if not isinstance(bandits, dict) or not bandits:
        raise RuntimeBanditError(f"{path}: bandits: expected a mapping name -> config")
    for name, spec in bandits.items():
        where = f"{path}: bandits.{name}"
        if not isinstance(spec, dict):
            raise RuntimeBanditError(f"{where}: expected a mapping, got {spec!r}")
        for key in spec:
            if key not in CONFIGURE_KEYS:
                close = difflib.get_close_matches(str(key), CONFIGURE_KEYS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise RuntimeBanditError(
                    f"{where}.{key}: unknown key{hint}; allowed: {list(CONFIGURE_KEYS)}"
                )
        spec = dict(spec)
        if isinstance(spec.get("reward_range"), list):
            spec["reward_range"] = tuple(spec["reward_range"])
        try:
            runtime.configure(str(name), spec.pop("arms", None), **spec)
        except RuntimeBanditError as e:
            raise RuntimeBanditError(f"{where}: {e}") from None
    return [str(n) for n in bandits]


class SelectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bandit: str = Field(min_length=1, description="the bandit's name")
    user_id: str | None = None
    context: dict[str, Any] | None = None


class SelectResponse(BaseModel):
    decision_id: str
    params: dict[str, Any]
    arm: str
    segment: str


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bandit: str = Field(min_length=1)
    decision_id: str = Field(min_length=1)
    reward: float


class UpdateResponse(BaseModel):
    decision_id: str
    applied: bool
    arm: str
    segment: str


class ExpireRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bandit: str = Field(min_length=1)
    older_than_s: float = Field(ge=0, description="seconds a decision has waited")


class ExpireResponse(BaseModel):
    bandit: str
    expired: int = Field(description="how many pending decisions were deleted")


class HealthResponse(BaseModel):
    status: str
    bandits: list[str]


class ErrorResponse(BaseModel):
    """A 400, 401, 404 or 409: ``detail`` says what is wrong."""

    detail: str


class ValidationIssue(BaseModel):
    """One invalid field of a request, as FastAPI (pydantic) reports it."""

    model_config = ConfigDict(extra="allow")
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    """A 422: a list of invalid fields (a missing, unknown or ill-typed field), or a
    message from the runtime (a NaN or out-of-range reward, a bad duration)."""

    detail: str | list[ValidationIssue]


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error statuses of a route, for its OpenAPI schema."""
    what = {
        400: (ErrorResponse, "a body that cannot be read (not UTF-8 JSON)"),
        401: (ErrorResponse, "missing or wrong API key"),
        404: (ErrorResponse, "unknown bandit (or decision)"),
        409: (ErrorResponse, "the decision already has another reward"),
        422: (ValidationErrorResponse, "invalid request"),
    }
    return {
        code: {"model": what[code][0], "description": what[code][1]} for code in codes
    }


class Batcher:
    """Answers ``select`` / ``update`` calls from the event loop in batches, on two
    threads of its own (one for selects, one for updates, each with its own
    database connection; started by the first call, so in the serving process).

    A call queues ``(args, future)`` for its kind and awaits its future; the
    kind's thread takes every call waiting (at most ``max_batch``), runs them as
    one ``select_many`` or ``update_many``, and hands each future its result (or
    its error) back on its event loop. Selects and updates overlap: a draw does
    not wait for an update's transaction, nor an update for a draw.
    """

    def __init__(self, runtime: Runtime, max_batch: int = 256):
        self.runtime = runtime
        self.max_batch = int(max_batch)
        self._queues = {"select": queue.SimpleQueue(), "update": queue.SimpleQueue()}
        self._runs = {"select": runtime.select_many, "update": runtime.update_many}
        self._threads: dict[str, threading.Thread] = {}
        self._start_lock = threading.Lock()
        self.batches = 0  # how many batches ran (a count for tests and profiling)

    async def call(self, kind: str, args: tuple):
        thread = self._threads.get(kind)
        if thread is None or not thread.is_alive():
            with self._start_lock:
                thread = self._threads.get(kind)
                if thread is None or not thread.is_alive():
                    thread = self._threads[kind] = threading.Thread(
                        target=self._run,
                        args=(kind,),
                        name=f"runtime-{kind}",
                        daemon=True,
                    )
                    thread.start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queues[kind].put((args, future, loop))
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    def _run(self, kind: str) -> None:
        calls, run = self._queues[kind], self._runs[kind]
        while True:
            waiting = [calls.get()]
            while len(waiting) < self.max_batch:
                try:
                    waiting.append(calls.get_nowait())
                except queue.Empty:
                    break
            self._answer(run, waiting)

    def _answer(self, run, calls) -> None:
        try:
            results = run([args for args, _, _ in calls])
        except Exception as e:  # the database failed: the whole batch fails
            results = [e] * len(calls)
        self.batches += 1
        by_loop: dict[Any, list] = {}
        for (_, future, loop), result in zip(calls, results, strict=True):
            by_loop.setdefault(loop, []).append((future, result))
        for loop, pairs in by_loop.items():
            loop.call_soon_threadsafe(_resolve, pairs)


def _resolve(pairs) -> None:
    for future, result in pairs:
        if not future.done():
            future.set_result(result)


def _json(data: dict) -> Response:
    return Response(json.dumps(data).encode(), media_type="application/json")


def _status_of(exc: RuntimeBanditError) -> int:
    if isinstance(exc, UnknownBanditError | UnknownDecisionError):
        return 404
    if isinstance(exc, DecisionConflictError):
        return 409
    return 422


_MAX_FAST_BODY = 64 * 1024


class _RuntimeApp(FastAPI):
    """FastAPI with a fast path for the two hot routes.

    A ``POST /select`` or ``/update`` with a JSON body, the right key and a valid
    body (the routes' own pydantic models, parsed from the raw bytes) is answered
    here: no middleware stack, routing or dependency solving, about half of the
    HTTP layer's time per request. Every other request, including any such
    request that fails a check (no or wrong key, bad JSON, an invalid field, a
    large body), goes to the FastAPI routes, which answer it: the answers, their
    statuses and the OpenAPI schema are the same either way. Runtime errors (404,
    409, 422) are answered with the same body as the FastAPI exception handler.
    """

    fast_routes: dict[str, tuple[type[BaseModel], Any]] = {}
    fast_key: bytes | None = None

    async def __call__(self, scope, receive, send) -> None:
        route = (
            self.fast_routes.get(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if route is None:
            return await super().__call__(scope, receive, send)
        body, more, messages = b"", True, []
        while more:  # read the body (kept to hand on to FastAPI if need be)
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
        answer = None if more else await self._fast(scope, body, *route)
        if answer is None:
            replay = iter(messages)

            async def receive_again():
                return next(replay, None) or await receive()

            return await super().__call__(scope, receive_again, send)
        status, payload = answer
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _fast(self, scope, body: bytes, model, call):
        """(status, body) answered here, or None to let FastAPI answer."""
        if len(body) > _MAX_FAST_BODY:
            return None
        headers = dict(scope["headers"])
        if not headers.get(b"content-type", b"").startswith(b"application/json"):
            return None
        if self.fast_key is not None:
            sent = headers.get(b"x-api-key")
            if sent is None:
                scheme, _, credentials = (
                    headers.get(b"authorization", b"").decode("latin-1").partition(" ")
                )
                if scheme.lower() != "bearer" or not credentials:
                    return None
                sent = credentials.strip().encode("latin-1")
            if not hmac.compare_digest(sent, self.fast_key):
                return None
        try:
            request = model.model_validate_json(body)
        except ValueError:  # pydantic's ValidationError: FastAPI lists the fields
            return None
        try:
            result = await call(request)
        except RuntimeBanditError as e:
            return _status_of(e), json.dumps({"detail": str(e)}).encode()
        return 200, json.dumps(result._asdict()).encode()


_API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="the API key"
)
_BEARER = HTTPBearer(auto_error=False, description="the API key as a bearer token")


def create_app(
    runtime: Runtime, api_key: str | None, *, max_batch: int = 256
) -> FastAPI:
    """The FastAPI app over ``runtime``; ``api_key=None`` disables the key check.
    ``/select`` and ``/update`` are answered in batches (``Batcher``) of at most
    ``max_batch`` requests.

    Its OpenAPI schema (``/openapi.json``) declares every status each route answers,
    with its body: 400 (an unreadable body), 401 (on the mutating routes, when a
    key is set), 404, 409 and 422.
    """

    async def check_key(
        header: Annotated[str | None, Security(_API_KEY_HEADER)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
    ) -> None:
        sent = header
        if sent is None and bearer is not None:
            sent = bearer.credentials.strip()
        if sent is None or not hmac.compare_digest(sent.encode(), api_key.encode()):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong API key: send 'Authorization: Bearer KEY' "
                "or 'X-API-Key: KEY'",
            )

    app = _RuntimeApp(title="convergence-jax runtime", version="1")
    batcher = app.state.batcher = Batcher(runtime, max_batch)
    # the mutating routes: the key check and its 401, unless served without a key
    auth = [Depends(check_key)] if api_key is not None else []
    unauthorized = (401,) if api_key is not None else ()

    @app.exception_handler(RuntimeBanditError)
    async def bandit_error(request: Request, exc: RuntimeBanditError):
        return JSONResponse(status_code=_status_of(exc), content={"detail": str(exc)})

    # The two hot routes run on the event loop (no thread-pool hop) and answer
    # with the JSON of the runtime's own tuple (no response-model round trip);
    # response_model still documents the body in the OpenAPI schema.
    @app.post(
        "/select",
        dependencies=auth,
        response_model=SelectResponse,
        responses=_responses(400, *unauthorized, 404, 422),
    )
    async def select(body: SelectRequest) -> Response:
        return _json((await select_call(body))._asdict())

    async def select_call(body: SelectRequest):
        return await batcher.call("select", (body.bandit, body.user_id, body.context))

    async def update_call(body: UpdateRequest):
        args = (body.bandit, body.decision_id, body.reward)
        return await batcher.call("update", args)

    @app.post(
        "/update",
        dependencies=auth,
        response_model=UpdateResponse,
        responses=_responses(400, *unauthorized, 404, 409, 422),
    )
    async def update(body: UpdateRequest) -> Response:
        return _json((await update_call(body))._asdict())

    app.fast_routes = {
        "/select": (SelectRequest, select_call),
        "/update": (UpdateRequest, update_call),
    }
    app.fast_key = None if api_key is None else api_key.encode()

    @app.post(
        "/expire", dependencies=auth, responses=_responses(400, *unauthorized, 404, 422)
    )
    def expire(body: ExpireRequest) -> ExpireResponse:
        count = runtime.expire(body.bandit, body.older_than_s)
        return ExpireResponse(bandit=body.bandit, expired=count)

    @app.get("/stats", responses=_responses(404, 422))
    def stats(bandit: str | None = Query(default=None)) -> dict[str, Any]:
        if bandit is not None:
            return runtime.stats(bandit)
        return {"bandits": {name: runtime.stats(name) for name in runtime.names()}}

    @app.get("/healthz")
    def healthz() -> HealthResponse:
        return HealthResponse(status="ok", bandits=runtime.names())

    return app


def warm(runtime: Runtime) -> None:
    """Compile every stored bandit's programs (one select, a batch of selects, an
    update) before the first request, which would otherwise wait for them (the
    vmapped draw of a batch takes a second or two to compile on a small CPU)."""
    from convergence_jax.runtime.bandit import _draw, _programs, _state

    for name in runtime.names():
        config = runtime._load(name)
        state = _state(config, None)
        _draw(config, [state], [(0, 0)])
        _draw(config, [state, state], [(0, 0), (0, 1)])
        low = config.reward_range[0] if config.reward_range else 0.0
        _programs(config.kind, config.num_arms)[2](state, 0, low, config.params)


_WORKER_ENV = "_CONVERGENCE_SERVE_WORKER"


def app_from_env() -> FastAPI:
    """The app of one uvicorn worker process (``--workers N``)."""
    settings = json.loads(os.environ[_WORKER_ENV])
    api_key = None if settings["insecure"] else os.environ[settings["api_key_env"]]
    return create_app(Runtime(settings["db"]), api_key, max_batch=settings["max_batch"])


def serve(argv: list[str]) -> int:
    """The ``convergence-jax serve`` command."""
    args = tyro.cli(ServeArgs, args=argv, prog="convergence-jax serve")
    api_key = os.environ.get(args.api_key_env) or None
    if args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.max_batch < 1:
        print(f"error: --max-batch must be >= 1, got {args.max_batch}", file=sys.stderr)
        return 2
    if api_key is None and not args.insecure_no_auth:
        print(
            f"error: set the API key in ${args.api_key_env} (or pass "
            "--insecure-no-auth on a trusted network)",
            file=sys.stderr,
        )
        return 2
    try:
        runtime = Runtime(args.db)
        names = configure_from_yaml(runtime, args.config) if args.config else []
    except RuntimeBanditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    print(
        f"serving {len(runtime.names())} bandit(s) {names or runtime.names()} from "
        f"{_redacted(args.db)} on http://{args.host}:{args.port} "
        f"({args.workers} worker(s))",
        flush=True,
    )
    options = dict(
        host=args.host, port=args.port, log_level=args.log_level, access_log=False
    )
    if args.workers == 1:
        warm(runtime)
        uvicorn.run(create_app(runtime, api_key, max_batch=args.max_batch), **options)
        return 0
    runtime.close()
    os.environ[_WORKER_ENV] = json.dumps(
        {
            "db": args.db if is_postgres_url(args.db) else str(Path(args.db).resolve()),
            "max_batch": args.max_batch,
            "api_key_env": args.api_key_env,
            "insecure": api_key is None,
        }
    )
    uvicorn.run(
        "convergence_jax.runtime.serve:app_from_env",
        factory=True,
        workers=args.workers,
        **options,
    )
    return 0
