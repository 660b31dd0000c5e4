"""An HTTP endpoint as an objective: LLM APIs or any JSON service.

One evaluation of a configuration calls the endpoint once per test case:

1. the request template is rendered with the configuration's parameters and the test
   case's fields (``{temperature}``, ``{input}``; a string that is exactly one
   placeholder keeps the value's type, so ``"{max_tokens}"`` sends a number);
2. the request is sent with retries: a 429, a 5xx, a timeout or a connection error is
   retried with exponential backoff and full jitter (a ``Retry-After`` header sets the
   floor of the delay); other 4xx and bodies that are not JSON fail at once;
3. the answer (``api.response.text``) is scored by the judge; token usage
   (``api.response.input_tokens`` / ``output_tokens``) is priced.

The metrics are means over the test cases: ``quality`` (judge score in [0, 1]),
``latency_ms`` (round trip of the successful attempt), ``cost_usd`` (per call),
``input_tokens`` and ``output_tokens``. A case that still fails after its retries fails
the evaluation: it is recorded with its error (retries included) and scored as the
worst reward. Retried faults of a successful evaluation are kept as notes.

The token is read from the environment when the objective is built, sent in a header,
and masked (``***``) in every error and note.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convergence_jax.optimize.config import ConfigError, OptimizeConfig
from convergence_jax.optimize.evaluate import Result

__all__ = [
    "HTTP_METRICS",
    "Caller",
    "HttpCallError",
    "HttpObjective",
    "check_http_config",
    "get_path",
    "http_objective",
    "placeholders",
    "render",
    "token_from_env",
]

HTTP_METRICS = ("quality", "latency_ms", "cost_usd", "input_tokens", "output_tokens")
"""Metrics an HTTP objective returns (means over the test cases)."""

OPENAI_CHAT_RESPONSE = {
    "text": "choices.0.message.content",
    "input_tokens": "usage.prompt_tokens",
    "output_tokens": "usage.completion_tokens",
}
DEFAULT_JUDGE_PROMPT = (
    "You grade answers. Question:\n{input}\n\nReference answer:\n{expected}\n\n"
    "Answer to grade:\n{answer}\n\nReply with one number between 0 and 1: how "
    "correct and complete the answer is (1 = fully correct)."
)

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


class HttpCallError(RuntimeError):
    """A request failed for good (after its retries, or at once)."""


# ----------------------------------------------------------------------------- pure


def placeholders(template: Any, where: str = "api.request") -> list[tuple[str, str]]:
    """``(name, where)`` for every ``{name}`` in a JSON-like template."""
    found = []
    if isinstance(template, str):
        for m in _PLACEHOLDER.finditer(template):
            if m.group(1):
                found.append((m.group(1), where))
    elif isinstance(template, Mapping):
        for k, v in template.items():
            found += placeholders(v, f"{where}.{k}")
    elif isinstance(template, list):
        for i, v in enumerate(template):
            found += placeholders(v, f"{where}[{i}]")
    return found


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def render(template: Any, values: Mapping[str, Any]) -> Any:
    """Fill ``{name}`` placeholders (``{{`` and ``}}`` are literal braces).

    A string that is exactly one placeholder becomes the value itself (a number stays a
    number); placeholders inside longer strings are replaced by the value's text.
    """
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole and whole.group(1):
            return values[whole.group(1)]

        def fill(m):
            if m.group(1):
                return _as_text(values[m.group(1)])
            return m.group(0)[0]

        return _PLACEHOLDER.sub(fill, template)
    if isinstance(template, Mapping):
        return {k: render(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, values) for v in template]
    return template


def get_path(data: Any, path: str) -> Any:
    """``get_path(body, "choices.0.message.content")``; KeyError names the step."""
    node = data
    for i, part in enumerate(path.split(".")):
        if isinstance(node, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(node) <= index < len(node):
                raise KeyError(
                    f"{'.'.join(path.split('.')[:i]) or '(body)'} has {len(node)} "
                    f"items, no index {index}"
                )
            node = node[index]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            at = ".".join(path.split(".")[:i]) or "(body)"
            keys = list(node)[:10] if isinstance(node, Mapping) else type(node).__name__
            raise KeyError(f"no field {part!r} in {at} (it has {keys})")
    return node


# ----------------------------------------------------------------------------- spec


@dataclass
class HttpSpec:
    """A resolved HTTP objective (preset applied, files read, checked)."""

    endpoint: str
    method: str
    request: dict[str, Any]
    response: dict[str, str | None]
    auth_type: str
    token_env: str | None
    auth_header: str
    headers: dict[str, str]
    cases: list[dict[str, Any]]
    param_names: tuple[str, ...]
    fixed_model: Any = None
    notes: list[str] = field(default_factory=list)


def _did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_cases(config: OptimizeConfig) -> list[dict[str, Any]]:
    obj = config.objective
    if not obj.test_cases:
        raise ConfigError(
            "objective.test_cases: an http objective needs a test-cases JSON file "
            "(a list of objects with the request's fields and 'expected')"
        )
    path = Path(obj.test_cases)
    if not path.is_absolute():
        path = Path(config.base_dir) / path
    if not path.is_file():
        raise ConfigError(f"objective.test_cases: no such file {str(path)!r}")
    try:
        cases = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"objective.test_cases: {path.name} is not valid JSON (line {e.lineno}, "
            f"column {e.colno}): {e.msg}"
        ) from None
    if not isinstance(cases, list) or not cases:
        raise ConfigError(
            f"objective.test_cases: {path.name} must hold a non-empty JSON list of "
            "objects"
        )
    for i, case in enumerate(cases):
        if not isinstance(case, dict):
            raise ConfigError(
                f"objective.test_cases: case {i} must be an object, got {case!r}"
            )
    return cases


def resolve(config: OptimizeConfig) -> HttpSpec:
    """Check an http objective's config and resolve it, without any network call."""
    api = config.objective.api
    space = config.space()
    names = tuple(space.names)
    request = dict(api.request)
    response = {
        "text": api.response.text,
        "input_tokens": api.response.input_tokens,
        "output_tokens": api.response.output_tokens,
    }
    auth_type, token_env = api.auth.type, api.auth.token_env
    endpoint = api.endpoint
    if api.preset == "openai_chat":
        if not api.base_url:
            raise ConfigError(
                "objective.api.base_url: the openai_chat preset needs the API's base "
                "URL, e.g. https://api.openai.com/v1 or http://localhost:8000/v1"
            )
        if api.endpoint:
            raise ConfigError(
                "objective.api.endpoint: give base_url with a preset, not endpoint"
            )
        endpoint = api.base_url.rstrip("/") + "/chat/completions"
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": "{input}"}],
        }
        body |= {name: "{" + name + "}" for name in names}
        body |= request  # the user's fields win (a fixed model, a system prompt)
        if "model" not in body:
            raise ConfigError(
                "objective.api.request.model: the openai_chat preset needs a model: "
                "tune it in search_space or fix it in api.request.model"
            )
        request = body
        if response == {"text": "text", "input_tokens": None, "output_tokens": None}:
            response = dict(OPENAI_CHAT_RESPONSE)
        if auth_type is None:
            auth_type = "bearer"
            token_env = token_env or "OPENAI_API_KEY"
    else:
        if api.base_url:
            raise ConfigError(
                "objective.api.base_url: only a preset takes base_url; give the full "
                "URL as api.endpoint"
            )
        if not endpoint:
            raise ConfigError(
                "objective.api.endpoint: an http objective needs the endpoint URL "
                "(or api.preset: openai_chat with api.base_url)"
            )
        if not request and api.method != "GET":
            raise ConfigError(
                "objective.api.request: give the request body template, e.g. "
                "{prompt: '{input}', temperature: '{temperature}'}"
            )
    if not re.match(r"https?://", endpoint):
        raise ConfigError(
            f"objective.api.endpoint: expected an http:// or https:// URL, got "
            f"{endpoint!r}"
        )
    auth_type = auth_type or "none"
    if auth_type != "none" and not token_env:
        raise ConfigError(
            f"objective.api.auth.token_env: auth type {auth_type!r} needs the name of "
            "the environment variable that holds the token"
        )
    for header in api.headers:
        if header.lower() in ("authorization", api.auth.header.lower()):
            raise ConfigError(
                f"objective.api.headers.{header}: put credentials in the environment "
                "and name them in api.auth.token_env, not in the config"
            )
    for name in ("request_timeout_s", "backoff_s", "backoff_max_s"):
        value = getattr(api, name)
        if not value > 0:
            raise ConfigError(f"objective.api.{name}: must be > 0, got {value}")
    if api.retries < 0:
        raise ConfigError(f"objective.api.retries: must be >= 0, got {api.retries}")
    if api.max_concurrency is not None and api.max_concurrency < 1:
        raise ConfigError(
            f"objective.api.max_concurrency: must be >= 1, got {api.max_concurrency}"
        )
    for key, price in [("", api.pricing)] + [
        (f"models.{m}.", p) for m, p in api.pricing.models.items()
    ]:
        for side in ("input_per_million", "output_per_million"):
            if not getattr(price, side) >= 0:
                raise ConfigError(
                    f"objective.api.pricing.{key}{side}: must be >= 0, got "
                    f"{getattr(price, side)}"
                )

    cases = _read_cases(config)
    reserved = {"expected", "id"}
    for i, case in enumerate(cases):
        clash = sorted(set(case) & set(names))
        if clash:
            raise ConfigError(
                f"objective.test_cases: case {i} has fields {clash} that are also "
                "search-space parameters; rename one"
            )
    case_fields = set.intersection(*(set(c) for c in cases)) - reserved
    available = set(names) | case_fields
    for name, where in placeholders(request):
        if name not in available:
            some = [c for c in cases if name in c]
            why = (
                f"only {len(some)} of {len(cases)} test cases have it"
                if some
                else f"available: {sorted(available)}"
            )
            raise ConfigError(
                f"objective.{where}: unknown placeholder {{{name}}}"
                f"{_did_you_mean(name, available)}; {why}"
            )
    _check_judge(config, cases)
    metrics = config.metrics or {"score": None}
    for name in metrics:
        if name not in HTTP_METRICS:
            raise ConfigError(
                f"metrics.{name}: an http objective returns {list(HTTP_METRICS)}"
                f"{_did_you_mean(name, HTTP_METRICS)}"
            )
    return HttpSpec(
        endpoint=endpoint,
        method=api.method,
        request=request,
        response=response,
        auth_type=auth_type,
        token_env=token_env,
        auth_header=api.auth.header,
        headers=dict(api.headers),
        cases=cases,
        param_names=names,
    )


def _check_judge(config: OptimizeConfig, cases) -> None:
    judge = config.objective.judge
    where = "objective.judge"
    if judge.type in ("exact", "contains", "regex", "json_field"):
        for i, case in enumerate(cases):
            if "expected" not in case:
                raise ConfigError(
                    f"objective.test_cases: case {i} has no 'expected' (the "
                    f"{judge.type} judge compares the answer to it)"
                )
    if judge.type == "regex":
        for i, case in enumerate(cases):
            try:
                re.compile(str(case["expected"]))
            except re.error as e:
                raise ConfigError(
                    f"objective.test_cases: case {i}: 'expected' is not a valid "
                    f"regular expression: {e}"
                ) from None
    if judge.type == "json_field" and not judge.field:
        raise ConfigError(f"{where}.field: the json_field judge needs a dotted path")
    if judge.type == "python" and not judge.target:
        raise ConfigError(
            f"{where}.target: the python judge needs 'module:function' or "
            "'file.py:function', called as f(answer, case) -> score in [0, 1]"
        )
    if judge.type == "llm":
        for name in ("base_url", "model"):
            if not getattr(judge, name):
                raise ConfigError(f"{where}.{name}: the llm judge needs it")
        if not judge.score_max > 0:
            raise ConfigError(f"{where}.score_max: must be > 0, got {judge.score_max}")
        if judge.prompt is not None:
            for name, _ in placeholders(judge.prompt):
                if name not in ("input", "expected", "answer"):
                    raise ConfigError(
                        f"{where}.prompt: unknown placeholder {{{name}}}; use "
                        "{input}, {expected} and {answer}"
                    )


def check_http_config(config: OptimizeConfig) -> None:
    """Raise ``ConfigError`` naming the key for anything wrong (no network)."""
    resolve(config)


# ----------------------------------------------------------------------------- calls


def _token(env: str | None, where: str) -> str | None:
    if env is None:
        return None
    token = os.environ.get(env)
    if not token:
        raise ConfigError(
            f"{where}: the environment variable {env!r} is not set (it holds the API "
            "token; it is read from the environment only)"
        )
    return token


class _Caller:
    """Requests with bounded concurrency, retries, backoff and jitter."""

    def __init__(self, *, timeout_s, retries, backoff_s, backoff_max_s, concurrency):
        import httpx

        self.httpx = httpx
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.slots = threading.BoundedSemaphore(concurrency)
        self.client = httpx.Client(
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency),
            follow_redirects=True,
        )
        self.secrets: list[str] = []
        self.rng = random.Random()

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def _snippet(self, response) -> str:
        body = response.text[:200].replace("\n", " ")
        return self.redact(f"HTTP {response.status_code}: {body!r}")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_s * 2**attempt)
        delay = self.rng.uniform(0.0, delay)  # full jitter
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.backoff_max_s))
            except ValueError:
                pass  # an HTTP-date Retry-After: keep the exponential delay
        return delay

    def call(self, method, url, *, headers, payload) -> tuple[Any, float, list[str]]:
        """JSON body, latency (ms) of the successful attempt, notes on retries."""
        httpx = self.httpx
        notes: list[str] = []
        kwargs = {"params": payload} if method == "GET" else {"json": payload}
        for attempt in range(self.retries + 1):
            retry_after = None
            with self.slots:
                start = time.perf_counter()
                try:
                    response = self.client.request(
                        method, url, headers=headers, **kwargs
                    )
                    latency_ms = 1000.0 * (time.perf_counter() - start)
                except httpx.TimeoutException:
                    fault = f"timeout after {self.timeout_s} s"
                except httpx.TransportError as e:
                    fault = self.redact(f"{type(e).__name__}: {e}")
                else:
                    code = response.status_code
                    if code == 429 or code >= 500:
                        fault = self._snippet(response)
                        retry_after = response.headers.get("retry-after")
                    elif code >= 400:
                        raise HttpCallError(self._snippet(response) + " (not retried)")
                    else:
                        try:
                            return response.json(), latency_ms, notes
                        except ValueError:
                            raise HttpCallError(
                                f"the response is not JSON: {self._snippet(response)}"
                            ) from None
            notes.append(f"attempt {attempt + 1}: {fault}")
            if attempt == self.retries:
                raise HttpCallError(
                    f"{fault} (gave up after {attempt + 1} attempts: "
                    + "; ".join(notes)
                    + ")"
                )
            time.sleep(self._delay(attempt, retry_after))
        raise AssertionError("unreachable")

    def close(self):
        self.client.close()


# Public names for other host-side shells (agents' OpenAI backend, LLM judge); the
# same objects, unchanged.
Caller = _Caller
token_from_env = _token


def _score(value: Any, where: str) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} returned {value!r}, not a number") from None
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"{where} returned {score}, outside [0, 1]")
    return score


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _make_judge(
    config: OptimizeConfig, caller: _Caller
) -> Callable[[str, dict], float]:
    judge = config.objective.judge
    fold = (lambda s: s.lower()) if judge.ignore_case else (lambda s: s)
    if judge.type == "exact":
        return lambda answer, case: float(
            fold(answer.strip()) == fold(str(case["expected"]).strip())
        )
    if judge.type == "contains":
        return lambda answer, case: float(fold(str(case["expected"])) in fold(answer))
    if judge.type == "regex":
        flags = re.IGNORECASE if judge.ignore_case else 0
        return lambda answer, case: float(
            re.search(str(case["expected"]), answer, flags) is not None
        )
    if judge.type == "json_field":

        def json_field(answer, case):
            text = answer.strip()
            fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
            try:
                data = json.loads(fence.group(1) if fence else text)
                value = get_path(data, judge.field)
            except (ValueError, KeyError):
                return 0.0  # the model did not answer with the field
            return float(value == case["expected"])

        return json_field
    if judge.type == "python":
        from convergence_jax.optimize.objectives import load_target

        try:
            fn = load_target(judge.target, config.base_dir)
        except ConfigError as e:
            message = str(e).replace("objective.target", "objective.judge.target")
            raise ConfigError(message) from None
        return lambda answer, case: _score(fn(answer, case), f"judge {judge.target}")
    # llm
    token = _token(judge.token_env, "objective.judge.token_env")
    caller.secrets.append(token)
    url = judge.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    prompt = judge.prompt or DEFAULT_JUDGE_PROMPT

    def llm(answer, case):
        values = {
            "input": case.get("input", ""),
            "expected": case.get("expected", ""),
            "answer": answer,
        }
        body = {
            "model": judge.model,
            "temperature": 0,
            "messages": [{"role": "user", "content": render(prompt, values)}],
        }
        reply, _, _ = caller.call("POST", url, headers=headers, payload=body)
        try:
            text = str(get_path(reply, "choices.0.message.content"))
        except KeyError as e:
            raise ValueError(f"LLM judge: unexpected response: {e}") from None
        m = _NUMBER.search(text)
        if not m:
            raise ValueError(f"LLM judge replied without a score: {text[:200]!r}")
        return _score(float(m.group(0)) / judge.score_max, "LLM judge")

    return llm


class HttpObjective:
    """``f(config) -> Result(metrics, notes)`` over the test cases; thread-safe."""

    def __init__(self, config: OptimizeConfig):
        self.spec = spec = resolve(config)
        api = config.objective.api
        token = _token(spec.token_env, "objective.api.auth.token_env")
        self.caller = _Caller(
            timeout_s=api.request_timeout_s,
            retries=api.retries,
            backoff_s=api.backoff_s,
            backoff_max_s=api.backoff_max_s,
            concurrency=api.max_concurrency or config.objective.max_workers,
        )
        self.caller.secrets.append(token)
        self.headers = dict(spec.headers)
        if spec.auth_type == "bearer":
            self.headers["Authorization"] = f"Bearer {token}"
        elif spec.auth_type == "header":
            self.headers[spec.auth_header] = token
        self.pricing = api.pricing
        self.judge = _make_judge(config, self.caller)

    def _price(self, params: Mapping[str, Any], body: Mapping[str, Any]):
        pricing = self.pricing
        model = params.get(pricing.model_param, body.get(pricing.model_param))
        price = pricing.models.get(str(model)) if model is not None else None
        return price or pricing

    def _tokens(self, reply, name: str) -> float:
        path = self.spec.response[name]
        if path is None:
            return 0.0
        value = get_path(reply, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"response field {path!r} is not a number: {value!r}")
        return float(value)

    def __call__(self, params: Mapping[str, Any]) -> Result:
        sums = dict.fromkeys(HTTP_METRICS, 0.0)
        notes: list[str] = []
        for i, case in enumerate(self.spec.cases):
            label = f"case {case.get('id', i)!r}" if "id" in case else f"case {i}"
            body = render(self.spec.request, {**case, **params})
            try:
                reply, latency_ms, retried = self.caller.call(
                    self.spec.method,
                    self.spec.endpoint,
                    headers=self.headers,
                    payload=body,
                )
                notes += [f"{label}: {n}" for n in retried]
                try:
                    answer = get_path(reply, self.spec.response["text"])
                    tokens_in = self._tokens(reply, "input_tokens")
                    tokens_out = self._tokens(reply, "output_tokens")
                except KeyError as e:
                    raise ValueError(f"unexpected response: {e.args[0]}") from None
                quality = self.judge(_as_text(answer), case)
            except Exception as e:
                message = self.caller.redact(f"{type(e).__name__}: {e}")
                raise HttpCallError(f"{label}: {message}") from None
            price = self._price(params, body)
            sums["quality"] += quality
            sums["latency_ms"] += latency_ms
            sums["cost_usd"] += (
                tokens_in * price.input_per_million
                + tokens_out * price.output_per_million
            ) / 1e6
            sums["input_tokens"] += tokens_in
            sums["output_tokens"] += tokens_out
        n = len(self.spec.cases)
        return Result({k: v / n for k, v in sums.items()}, notes)

    def close(self) -> None:
        self.caller.close()


def http_objective(config: OptimizeConfig) -> HttpObjective:
    """The objective an ``objective.type: http`` config describes."""
    return HttpObjective(config)
