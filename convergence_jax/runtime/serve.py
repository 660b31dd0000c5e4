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

FastAPI and uvicorn are imported only by this module (the command line imports it for
``serve`` alone), so the rest of the library does not need them.
"""

from __future__ import annotations

import difflib
import hmac
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro
import yaml
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from convergence_jax.runtime.bandit import (
    DecisionConflictError,
    Runtime,
    RuntimeBanditError,
    UnknownBanditError,
    UnknownDecisionError,
)

__all__ = ["ServeArgs", "app_from_env", "configure_from_yaml", "create_app", "serve"]

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
    """Serve the runtime bandits of one SQLite database over HTTP."""

    db: str = "convergence_runtime.db"
    """The SQLite database (created if missing)."""
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
    """uvicorn worker processes; each opens the database (writes are serialized by
    its lock, so counts stay exact)."""


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


_API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="the API key"
)
_BEARER = HTTPBearer(auto_error=False, description="the API key as a bearer token")


def create_app(runtime: Runtime, api_key: str | None) -> FastAPI:
    """The FastAPI app over ``runtime``; ``api_key=None`` disables the key check.

    Its OpenAPI schema (``/openapi.json``) declares every status each route answers,
    with its body: 400 (an unreadable body), 401 (on the mutating routes, when a
    key is set), 404, 409 and 422.
    """

    def check_key(
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

    app = FastAPI(title="convergence-jax runtime", version="1")
    # the mutating routes: the key check and its 401, unless served without a key
    auth = [Depends(check_key)] if api_key is not None else []
    unauthorized = (401,) if api_key is not None else ()

    @app.exception_handler(RuntimeBanditError)
    async def bandit_error(request: Request, exc: RuntimeBanditError):
        if isinstance(exc, UnknownBanditError | UnknownDecisionError):
            code = 404
        elif isinstance(exc, DecisionConflictError):
            code = 409
        else:
            code = 422
        return JSONResponse(status_code=code, content={"detail": str(exc)})

    @app.post(
        "/select", dependencies=auth, responses=_responses(400, *unauthorized, 404, 422)
    )
    def select(body: SelectRequest) -> SelectResponse:
        choice = runtime.select(body.bandit, user_id=body.user_id, context=body.context)
        return SelectResponse(**choice._asdict())

    @app.post(
        "/update",
        dependencies=auth,
        responses=_responses(400, *unauthorized, 404, 409, 422),
    )
    def update(body: UpdateRequest) -> UpdateResponse:
        result = runtime.update(body.bandit, body.decision_id, body.reward)
        return UpdateResponse(**result._asdict())

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


_WORKER_ENV = "_CONVERGENCE_SERVE_WORKER"


def app_from_env() -> FastAPI:
    """The app of one uvicorn worker process (``--workers N``)."""
    settings = json.loads(os.environ[_WORKER_ENV])
    api_key = None if settings["insecure"] else os.environ[settings["api_key_env"]]
    return create_app(Runtime(settings["db"]), api_key)


def serve(argv: list[str]) -> int:
    """The ``convergence-jax serve`` command."""
    args = tyro.cli(ServeArgs, args=argv, prog="convergence-jax serve")
    api_key = os.environ.get(args.api_key_env) or None
    if args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
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
        f"{args.db} on http://{args.host}:{args.port} ({args.workers} worker(s))",
        flush=True,
    )
    options = dict(
        host=args.host, port=args.port, log_level=args.log_level, access_log=False
    )
    if args.workers == 1:
        uvicorn.run(create_app(runtime, api_key), **options)
        return 0
    runtime.close()
    os.environ[_WORKER_ENV] = json.dumps(
        {
            "db": str(Path(args.db).resolve()),
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
