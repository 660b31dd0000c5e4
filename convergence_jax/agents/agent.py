"""Multi-turn agents over three backends (host side: messages in, text out).

A `MultiTurnAgent` answers a conversation in OpenAI's chat format
(``[{"role": "user", "content": "..."}, ...]``) through a backend:

- `JaxBackend`: our own model through `convergence_jax.lm.generate` and the
  tokenizer's chat template. Prompts are left-padded to a few bucket lengths and
  the number of new tokens is rounded up to a power of two (then cut), so a
  conversation that grows, or a request for fewer tokens, reuses a compiled
  program instead of compiling a new one every turn;
- `StubBackend`: no model, deterministic answers (a list played in order, or a
  function of the messages), for prototyping and tests;
- `OpenAIBackend`: any OpenAI-compatible ``/chat/completions`` endpoint, through
  the project's HTTP client (`convergence_jax.optimize.http.Caller`: retries with
  backoff on 429 / 5xx / timeouts, the token read from the environment and masked
  in errors).

Every backend has ``complete(messages, temperature=None, top_p=None,
max_tokens=None, seed=None) -> Completion`` (``text, prompt_tokens,
completion_tokens, finish_reason``); ``None`` keeps the backend's default.

A plan (`Plan`: a goal, its steps, the current step) can be kept per
conversation: the agent injects it as a system message after its system prompt,
and ``context`` replaces it (``{"plan": {"goal": ..., "steps": [...]}}``) or
advances it (``{"advance_plan": True}``) before answering.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from convergence_jax.agents.trajectory import ROLES, Turn

MESSAGE_KEYS = ("role", "content", "name", "tool_call_id", "tool_calls")
FINISH_REASONS = ("stop", "length")


class Completion(NamedTuple):
    """One answer: its text, the prompt's and the completion's token counts and
    why it ended (``"stop"``: a stop token or the model's own end; ``"length"``:
    ``max_tokens`` reached). Unpacks as a 4-tuple."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@runtime_checkable
class Backend(Protocol):
    """What a `MultiTurnAgent` calls."""

    def complete(
        self,
        messages: Sequence[Mapping],
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> Completion: ...


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


def check_messages(messages, allow_empty: bool = False) -> list[dict]:
    """Validate a conversation in OpenAI's chat format and return a copy as a
    list of dicts.

    Each message is a dict with ``role`` (one of `ROLES`) and ``content`` (a
    string), optionally ``name`` and ``tool_call_id`` (strings) and, on an
    assistant message, ``tool_calls`` (a list; ``content`` may then be ``None``).
    Anything else raises ``ValueError`` naming the message and the key.
    """
    if isinstance(messages, str | bytes | Mapping) or not isinstance(
        messages, Iterable
    ):
        raise ValueError(
            f"messages must be a list of {{'role', 'content'}} dicts, got "
            f"{type(messages).__name__}"
        )
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(
                f"messages[{i}] must be a dict with 'role' and 'content', got "
                f"{type(message).__name__}"
            )
        unknown = sorted(set(message) - set(MESSAGE_KEYS))
        if unknown:
            raise ValueError(
                f"messages[{i}] has unknown keys {unknown}; allowed: "
                f"{list(MESSAGE_KEYS)}"
            )
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(
                f"messages[{i}]: role must be one of {ROLES}, got {role!r}"
            )
        if "content" not in message:
            raise ValueError(f"messages[{i}] ({role}) has no 'content'")
        content = message["content"]
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            if role != "assistant":
                raise ValueError(
                    f"messages[{i}]: only an assistant turn has tool_calls"
                )
            if not isinstance(tool_calls, list):
                raise ValueError(f"messages[{i}]: tool_calls must be a list")
        if not isinstance(content, str) and not (content is None and tool_calls):
            raise ValueError(
                f"messages[{i}] ({role}): content must be a string, got "
                f"{type(content).__name__}"
            )
        for key in ("name", "tool_call_id"):
            value = message.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(
                    f"messages[{i}]: {key} must be a string, got {value!r}"
                )
        out.append(dict(message))
    if not out and not allow_empty:
        raise ValueError("messages is empty: give at least one message")
    return out


def _plain(message: Mapping) -> dict:
    """``{role, content}`` for a chat template: an assistant turn that only
    called tools shows its calls as the JSON the tool parser reads."""
    content = message.get("content")
    calls = message.get("tool_calls") or []
    if calls and not content:
        shown = []
        for call in calls:
            fn = call.get("function", call) if isinstance(call, Mapping) else {}
            arguments = fn.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    pass
            shown.append({"tool": fn.get("name"), "arguments": arguments})
        content = json.dumps(shown[0] if len(shown) == 1 else shown)
    return {"role": message["role"], "content": content or ""}


def _openai_message(message: Mapping) -> dict:
    """A message as an OpenAI endpoint takes it (``None`` fields dropped)."""
    return {k: v for k, v in message.items() if v is not None}


# ---------------------------------------------------------------------------
# Sampling settings
# ---------------------------------------------------------------------------


def _check_sampling(temperature, top_p, max_tokens, seed, where: str) -> None:
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(
            f"{where}temperature must be a number >= 0, got {temperature!r}"
        )
    if top_p is not None and (
        isinstance(top_p, bool)
        or not isinstance(top_p, int | float)
        or not 0.0 < top_p <= 1.0
    ):
        raise ValueError(f"{where}top_p must be in (0, 1], got {top_p!r}")
    for name, value, low in (("max_tokens", max_tokens, 1), ("seed", seed, 0)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | np.integer)
            or value < low
        ):
            raise ValueError(f"{where}{name} must be an int >= {low}, got {value!r}")


def _count(value) -> int:
    """A usage count from a server's JSON (0 when missing or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def _next_power_of_two(n: int, floor: int) -> int:
    return max(floor, 1 << max(0, int(n) - 1).bit_length())


# ---------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------


class JaxBackend:
    """Our JAX model as a chat backend.

    Args:
        params, model_config: the model (`lm.init_params` / `lm.load_hf`).
        tokenizer: a `lm.ByteTokenizer` / `lm.HFTokenizer` whose chat template
            markers are tokens of its vocabulary.
        max_new_tokens: the default ``max_tokens`` of an answer.
        temperature: default sampling temperature (0: greedy).
        top_p: default nucleus mass in ``(0, 1]``.
        top_k: top-k filter (0: off).
        seed: the backend's key; call ``i`` without its own ``seed`` draws with
            ``fold_in(key(seed), i)``, a call with ``seed=s`` with ``key(s)``
            (so it is reproducible).
        min_prompt_bucket: the shortest prompt bucket; buckets double from it
            (``32, 64, 128, ...``) and the last one is what the context window
            leaves after the completion.

    ``complete`` renders the messages with ``tokenizer.apply_chat_template``,
    left-pads them to the bucket that fits, and generates
    ``next_power_of_two(max_tokens)`` tokens (at least 16; `lm.generate` stops
    early once the stop token is out), keeping the first ``max_tokens``. The
    sampling numbers are traced, so one program serves every temperature /
    top_p; a program is compiled per (prompt bucket, completion bucket) pair,
    listed in ``compiled_shapes``. A prompt longer than the last bucket raises
    ``ValueError`` (it is never cut).
    """

    def __init__(
        self,
        params,
        model_config,
        tokenizer,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        min_prompt_bucket: int = 32,
    ):
        import jax

        from convergence_jax.lm import LMConfig, check_params

        if not isinstance(model_config, LMConfig):
            raise ValueError(
                f"model_config must be an LMConfig, got {type(model_config).__name__}"
            )
        check_params(model_config, params)
        tokenizer.check_model(model_config)
        _check_sampling(temperature, top_p, max_new_tokens, seed, "JaxBackend: ")
        if max_new_tokens is None:
            raise ValueError("JaxBackend: max_new_tokens must be an int >= 1")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"JaxBackend: top_k must be an int >= 0, got {top_k!r}")
        if (
            isinstance(min_prompt_bucket, bool)
            or not isinstance(min_prompt_bucket, int)
            or min_prompt_bucket < 1
        ):
            raise ValueError(
                f"JaxBackend: min_prompt_bucket must be an int >= 1, got "
                f"{min_prompt_bucket!r}"
            )
        self.params = params
        self.config = model_config
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.seed = int(seed)
        self.min_prompt_bucket = int(min_prompt_bucket)
        self.stop_tokens = tuple(tokenizer.stop_tokens)
        self.compiled_shapes: set[tuple[int, int]] = set()
        self._key = jax.random.key(self.seed)
        self._calls = 0
        self._lock = threading.Lock()

    def completion_bucket(self, max_tokens: int) -> int:
        """How many tokens are generated for ``max_tokens`` (then cut)."""
        return _next_power_of_two(max_tokens, 16)

    def prompt_bucket(self, prompt_length: int, completion_bucket: int) -> int:
        """The padded prompt length for a prompt of ``prompt_length`` tokens."""
        room = self.config.max_position_embeddings - completion_bucket
        if prompt_length > room:
            raise ValueError(
                f"the prompt has {prompt_length} tokens; with {completion_bucket} "
                f"new tokens the model's context "
                f"(LMConfig.max_position_embeddings="
                f"{self.config.max_position_embeddings}) leaves room for {room}: "
                f"shorten the conversation or ask for fewer max_tokens"
            )
        return min(room, _next_power_of_two(prompt_length, self.min_prompt_bucket))

    def encode(self, messages: Sequence[Mapping]) -> list[int]:
        """The prompt's token ids (chat template with the generation prompt)."""
        messages = check_messages(messages)
        return list(
            self.tokenizer.apply_chat_template(
                [_plain(m) for m in messages], add_generation_prompt=True
            )
        )

    def complete(
        self,
        messages: Sequence[Mapping],
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> Completion:
        import jax

        from convergence_jax.lm import generate, pad_batch

        _check_sampling(temperature, top_p, max_tokens, seed, "")
        prompt = self.encode(messages)
        max_tokens = self.max_new_tokens if max_tokens is None else int(max_tokens)
        n_new = self.completion_bucket(max_tokens)
        length = self.prompt_bucket(len(prompt), n_new)
        tokens, mask = pad_batch([prompt], self.tokenizer.pad_id, length)
        if seed is not None:
            key = jax.random.key(int(seed))
        else:
            with self._lock:
                call, self._calls = self._calls, self._calls + 1
            key = jax.random.fold_in(self._key, call)
        out = generate(
            key,
            self.params,
            self.config,
            tokens,
            mask,
            max_new_tokens=n_new,
            temperature=self.temperature if temperature is None else temperature,
            top_k=self.top_k,
            top_p=self.top_p if top_p is None else top_p,
            stop_tokens=self.stop_tokens,
            pad_id=self.tokenizer.pad_id,
        )
        self.compiled_shapes.add((length, n_new))
        ids = np.asarray(out.tokens[0, 0])[:max_tokens]
        live = np.asarray(out.mask[0, 0])[:max_tokens] > 0
        ids = ids[live].tolist()
        stop = next((i for i, t in enumerate(ids) if t in self.stop_tokens), None)
        if stop is not None:
            text_ids, reason, used = ids[:stop], "stop", stop + 1
        else:
            text_ids, reason, used = ids, "length", len(ids)
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
        return Completion(text, len(prompt), used, reason)


class StubBackend:
    """A deterministic backend without a model.

    ``responses`` is either a list of strings, answered in order (call ``i``
    gets ``responses[i % len]`` when ``cycle``, else an exhausted list raises
    ``RuntimeError``), or a function ``fn(messages) -> str`` of the validated
    messages (e.g. echoing the last user turn). Token counts are whitespace word
    counts; ``max_tokens`` keeps the first ``max_tokens`` words (finish reason
    ``"length"``). ``calls`` records every ``(messages, settings)`` it got.
    """

    def __init__(
        self,
        responses: Sequence[str] | Callable[[list[dict]], str],
        cycle: bool = True,
    ):
        if callable(responses):
            self.fn, self.responses = responses, None
        else:
            if isinstance(responses, str) or not isinstance(responses, Iterable):
                raise ValueError(
                    "StubBackend takes a list of strings or a function of the "
                    f"messages, got {type(responses).__name__}"
                )
            self.responses = list(responses)
            if not self.responses:
                raise ValueError("StubBackend needs at least one response")
            for i, r in enumerate(self.responses):
                if not isinstance(r, str):
                    raise ValueError(f"responses[{i}] must be a string, got {r!r}")
            self.fn = None
        self.cycle = cycle
        self.calls: list[tuple[list[dict], dict]] = []

    def complete(
        self,
        messages: Sequence[Mapping],
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> Completion:
        _check_sampling(temperature, top_p, max_tokens, seed, "")
        messages = check_messages(messages)
        index = len(self.calls)
        self.calls.append(
            (
                messages,
                {
                    "temperature": temperature,
                    "top_p": top_p,
                    "max_tokens": max_tokens,
                    "seed": seed,
                },
            )
        )
        if self.fn is not None:
            text = self.fn(messages)
            if not isinstance(text, str):
                raise ValueError(
                    f"the StubBackend function returned {type(text).__name__}, "
                    "not a string"
                )
        elif index >= len(self.responses) and not self.cycle:
            raise RuntimeError(
                f"StubBackend: all {len(self.responses)} responses are used "
                "(cycle=False)"
            )
        else:
            text = self.responses[index % len(self.responses)]
        words = text.split()
        reason = "stop"
        if max_tokens is not None and len(words) > max_tokens:
            text, words, reason = (
                " ".join(words[:max_tokens]),
                words[:max_tokens],
                "length",
            )
        prompt_words = sum(len((m.get("content") or "").split()) for m in messages)
        return Completion(text, prompt_words, len(words), reason)


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint (``POST {base_url}/chat/completions``).

    Args:
        base_url: e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        model: the ``model`` field of each request.
        token_env: the environment variable holding the bearer token, read
            here (``None``: no ``Authorization`` header). Unset raises
            ``ValueError``; the token is masked as ``***`` in every error.
        timeout_s, retries, backoff_s, backoff_max_s: the HTTP client's
            (`optimize.http.Caller`): a 429, a 5xx, a timeout or a connection
            error is retried ``retries`` times with jittered exponential backoff;
            other 4xx fail at once. A call that fails for good raises
            `HttpCallError`.
        temperature, top_p, max_tokens: defaults sent with every request
            (``None``: not sent, the server's default).
        extra_body: more fields for every request (e.g. ``{"stop": [...]}``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        token_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        max_concurrency: int = 4,
    ):
        from convergence_jax.optimize.http import Caller, token_from_env

        if not isinstance(base_url, str) or not base_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        for name, value in (
            ("timeout_s", timeout_s),
            ("backoff_s", backoff_s),
            ("backoff_max_s", backoff_max_s),
        ):
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        _check_sampling(temperature, top_p, max_tokens, None, "OpenAIBackend: ")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.defaults = {
            k: v
            for k, v in (
                ("temperature", temperature),
                ("top_p", top_p),
                ("max_tokens", max_tokens),
            )
            if v is not None
        }
        self.extra_body = dict(extra_body or {})
        token = token_from_env(token_env, "OpenAIBackend token_env")
        self.caller = Caller(
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            backoff_max_s=backoff_max_s,
            concurrency=max_concurrency,
        )
        self.headers = {}
        if token:
            self.caller.secrets.append(token)
            self.headers["Authorization"] = f"Bearer {token}"
        self.notes: list[str] = []

    def complete(
        self,
        messages: Sequence[Mapping],
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> Completion:
        from convergence_jax.optimize.http import HttpCallError, get_path

        _check_sampling(temperature, top_p, max_tokens, seed, "")
        messages = check_messages(messages)
        body = {
            "model": self.model,
            "messages": [_openai_message(m) for m in messages],
            **self.defaults,
            **self.extra_body,
        }
        for name, value in (
            ("temperature", temperature),
            ("top_p", top_p),
            ("max_tokens", max_tokens),
            ("seed", seed),
        ):
            if value is not None:
                body[name] = value
        reply, _, notes = self.caller.call(
            "POST", self.url, headers=self.headers, payload=body
        )
        self.notes += notes
        try:
            content = get_path(reply, "choices.0.message.content")
        except KeyError as error:
            raise HttpCallError(
                f"unexpected chat response: {self.caller.redact(str(error))}"
            ) from None
        text = "" if content is None else str(content)
        usage = reply.get("usage") if isinstance(reply, Mapping) else None
        usage = usage if isinstance(usage, Mapping) else {}
        reason = reply["choices"][0].get("finish_reason") or "stop"
        return Completion(
            text,
            _count(usage.get("prompt_tokens")),
            _count(usage.get("completion_tokens")),
            str(reason),
        )

    def close(self) -> None:
        self.caller.close()


# ---------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """A goal, its steps in order and the index of the current step
    (``len(steps)`` once every step is done)."""

    goal: str
    steps: tuple[str, ...] = ()
    current_step: int = 0

    def __post_init__(self):
        if not isinstance(self.goal, str) or not self.goal.strip():
            raise ValueError(f"plan goal must be a non-empty string, got {self.goal!r}")
        if isinstance(self.steps, str) or not isinstance(self.steps, Iterable):
            raise ValueError("plan steps must be a list of strings")
        steps = tuple(self.steps)
        for i, step in enumerate(steps):
            if not isinstance(step, str) or not step.strip():
                raise ValueError(f"plan steps[{i}] must be a non-empty string")
        object.__setattr__(self, "steps", steps)
        c = self.current_step
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= len(steps):
            raise ValueError(
                f"plan current_step must be an int in [0, {len(steps)}], got {c!r}"
            )

    @classmethod
    def from_value(cls, value) -> Plan:
        """A `Plan` from a `Plan` or a dict with ``goal`` and optional ``steps``,
        ``current_step``; unknown keys raise ``ValueError``."""
        if isinstance(value, Plan):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(
                f"a plan must be a Plan or a dict with 'goal', 'steps', "
                f"'current_step', got {type(value).__name__}"
            )
        unknown = sorted(set(value) - {"goal", "steps", "current_step"})
        if unknown:
            raise ValueError(
                f"plan has unknown keys {unknown}; expected goal, steps, current_step"
            )
        if "goal" not in value:
            raise ValueError("plan needs a 'goal'")
        return cls(**value)

    @property
    def done(self) -> bool:
        return self.current_step >= len(self.steps)

    def advance(self) -> Plan:
        """The plan one step further (stays at the end once done)."""
        return dataclasses.replace(
            self, current_step=min(len(self.steps), self.current_step + 1)
        )

    def render(self) -> str:
        lines = [f"Plan. Goal: {self.goal}"]
        for i, step in enumerate(self.steps):
            mark = (
                "done"
                if i < self.current_step
                else ("current" if i == self.current_step else "todo")
            )
            lines.append(f"{i + 1}. [{mark}] {step}")
        if self.steps and self.done:
            lines.append("All steps are done.")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "goal": self.goal,
            "steps": list(self.steps),
            "current_step": self.current_step,
        }


# ---------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------

CONTEXT_KEYS = (
    "conversation_id",
    "plan",
    "advance_plan",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "scenario",
)


class MultiTurnAgent:
    """An agent that answers conversations through a backend.

    Args:
        backend: a `JaxBackend`, `StubBackend`, `OpenAIBackend` or anything with
            their ``complete`` method.
        system_prompt: prepended as a system message, unless the messages
            already open with one (theirs is kept).
        plan: an initial `Plan` (or its dict) for every new conversation.

    ``generate_response(messages, context=None) -> str``. ``context`` is a dict
    with any of:

    - ``conversation_id``: which conversation's plan to use (default
      ``"default"``);
    - ``plan``: a `Plan` or ``{"goal", "steps", "current_step"}``: replaces the
      conversation's plan (``None`` removes it);
    - ``advance_plan``: ``True`` moves the plan to its next step (after a
      replacement, if both are given);
    - ``temperature``, ``top_p``, ``max_tokens``, ``seed``: this call's sampling;
    - ``scenario``: free-form information (ignored by the agent, kept by the
      environment).

    An unknown key raises ``ValueError``. The prompt sent is: the system prompt,
    the plan (a system message rendered by `Plan.render`), then the messages.
    ``last_completion`` holds the last `Completion` (token counts, finish
    reason); `respond` gives the new turns as `Turn` objects.
    """

    def __init__(
        self,
        backend: Backend,
        system_prompt: str | None = None,
        plan: Plan | Mapping | None = None,
    ):
        if not callable(getattr(backend, "complete", None)):
            raise ValueError(
                f"backend must have a complete(messages, ...) method, got "
                f"{type(backend).__name__}"
            )
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(
                f"system_prompt must be a string or None, got {system_prompt!r}"
            )
        self.backend = backend
        self.system_prompt = system_prompt
        self.initial_plan = None if plan is None else Plan.from_value(plan)
        self.plans: dict[str, Plan | None] = {}
        self.last_completion: Completion | None = None

    def plan(self, conversation_id: str = "default") -> Plan | None:
        """The conversation's current plan."""
        return self.plans.get(conversation_id, self.initial_plan)

    def reset(self, conversation_id: str | None = None) -> None:
        """Forget one conversation's plan (or every one's)."""
        if conversation_id is None:
            self.plans.clear()
        else:
            self.plans.pop(conversation_id, None)

    def _apply_context(self, context) -> tuple[str, dict]:
        if context is None:
            context = {}
        if not isinstance(context, Mapping):
            raise ValueError(f"context must be a dict, got {type(context).__name__}")
        unknown = sorted(set(context) - set(CONTEXT_KEYS))
        if unknown:
            raise ValueError(
                f"context has unknown keys {unknown}; known: {list(CONTEXT_KEYS)}"
            )
        conversation = context.get("conversation_id", "default")
        if not isinstance(conversation, str):
            raise ValueError(
                f"context['conversation_id'] must be a string, got {conversation!r}"
            )
        if "plan" in context:
            plan = context["plan"]
            self.plans[conversation] = None if plan is None else Plan.from_value(plan)
        if context.get("advance_plan"):
            plan = self.plan(conversation)
            if plan is None:
                raise ValueError(
                    f"context['advance_plan']: conversation {conversation!r} has no "
                    "plan"
                )
            self.plans[conversation] = plan.advance()
        sampling = {
            k: context[k]
            for k in ("temperature", "top_p", "max_tokens", "seed")
            if context.get(k) is not None
        }
        _check_sampling(
            sampling.get("temperature"),
            sampling.get("top_p"),
            sampling.get("max_tokens"),
            sampling.get("seed"),
            "context: ",
        )
        return conversation, sampling

    def prompt(self, messages, conversation_id: str = "default") -> list[dict]:
        """The messages the backend gets: system prompt, plan, conversation."""
        messages = check_messages(messages)
        head = []
        if self.system_prompt is not None and messages[0]["role"] != "system":
            head.append({"role": "system", "content": self.system_prompt})
        plan = self.plan(conversation_id)
        if plan is not None:
            head.append({"role": "system", "content": plan.render()})
        if head and messages[0]["role"] == "system":
            return [messages[0], *head, *messages[1:]]
        return [*head, *messages]

    def complete(self, messages, context=None) -> Completion:
        """As `generate_response`, returning the whole `Completion`."""
        messages = check_messages(messages)
        conversation, sampling = self._apply_context(context)
        completion = self.backend.complete(
            self.prompt(messages, conversation), **sampling
        )
        self.last_completion = completion
        return completion

    def respond(self, messages, context=None) -> list[Turn]:
        """The new turns of this response (here one assistant `Turn` whose
        metadata holds the token counts and finish reason; a `ToolAgent` adds
        its tool calls and results). What `ConversationEnv` records."""
        completion = self.complete(messages, context)
        return [
            Turn(
                "assistant",
                completion.text,
                metadata={
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                    "finish_reason": completion.finish_reason,
                },
            )
        ]

    def generate_response(self, messages, context=None) -> str:
        """The assistant's next message for ``messages``."""
        return self.complete(messages, context).text
