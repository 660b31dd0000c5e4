"""RLAIF: an LLM grades conversations against a rubric (host side).

`LLMJudge` sends a rubric prompt over the conversation's transcript to any
OpenAI-compatible ``/chat/completions`` endpoint (through the project's HTTP
client: retries with backoff on 429 / 5xx / timeouts, the token read from the
environment and masked in errors) and parses the score from the reply with
`parse_score`. A reply without a readable score, a score outside
``score_range``, or a request that fails for good is a failure: counted in
``judge.failures``, its error kept (``judge.errors`` and the `JudgeResult`), and
the score is ``fallback``. ``judge.as_reward()`` is a reward function of the
`agents.rewards` protocol, so it composes in a `CompositeReward` or
`score_trajectories`.
"""

from __future__ import annotations

import json
import math
import re
import string
import threading
from collections.abc import Mapping
from typing import NamedTuple

from convergence_jax.agents.rewards import RewardFunction
from convergence_jax.agents.trajectory import MultiTurnTrajectory

DEFAULT_JUDGE_TEMPLATE = (
    "You are grading a conversation between a user and an AI assistant.\n\n"
    "Rubric:\n{rubric}\n\nConversation:\n{conversation}\n\n"
    "Grade the assistant against the rubric. Give a short reason, then end with "
    "a line 'Score: N' where N is a number from {low} to {high} ({high} is best)."
)
TEMPLATE_FIELDS = ("rubric", "conversation", "low", "high", "scenario_id")

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_LABELLED = re.compile(
    rf"\b(?:score|rating|grade)\b\s*(?:is|of|=|:)?\s*\**\s*({_NUMBER})"
    rf"(?:\s*(?:/|out\s+of)\s*({_NUMBER}))?",
    re.IGNORECASE,
)
_BOLD = re.compile(rf"\*\*\s*({_NUMBER})\s*(?:/\s*({_NUMBER}))?\s*\*\*")
_FRACTION = re.compile(rf"({_NUMBER})\s*(?:/|out\s+of)\s*({_NUMBER})", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)


class JudgeError(ValueError):
    """The judge could not give a score (no score in the reply, out of range,
    or the request failed)."""


def _json_score(text: str):
    decoder = json.JSONDecoder()
    for i, char in enumerate(text):
        if char != "{":
            continue
        try:
            value, _ = decoder.raw_decode(text, i)
        except ValueError:
            continue
        if isinstance(value, Mapping):
            for key in ("score", "rating", "grade"):
                if key in value:
                    return value[key]
    return None


def parse_score(text: str, score_range: tuple[float, float] = (0, 10)) -> float:
    """The score in a judge's reply, checked against ``score_range``.

    Read in this order: a JSON object with ``"score"`` (or ``"rating"``,
    ``"grade"``), e.g. ``{"score": 7}``; a labelled score, ``Score: 7``,
    ``Rating: 8/10``, ``score = 6.5``, ``Grade: **9**`` (the last label wins, so
    a final verdict after reasoning counts); a bold number ``**8**``; a
    fraction ``7/10``; the only number of the reply (``"7"``). A fraction's
    denominator must equal the range's top. No score, several unlabelled
    numbers, or a score outside the range raise `JudgeError`.
    """
    if not isinstance(text, str):
        raise JudgeError(f"the judge's reply is not text: {text!r}")
    low, high = score_range
    value, denominator = _json_score(text), None
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise JudgeError(f"the JSON score is not a number: {value!r}")
        try:
            value = float(value)
        except ValueError:
            raise JudgeError(f"the JSON score is not a number: {value!r}") from None
    else:
        for pattern in (_LABELLED, _BOLD, _FRACTION):
            found = list(pattern.finditer(text))
            if found:
                value, denominator = found[-1].group(1), found[-1].group(2)
                break
        else:
            numbers = _ANY_NUMBER.findall(text)
            if len(numbers) != 1:
                what = "no number" if not numbers else f"{len(numbers)} numbers"
                raise JudgeError(
                    f"no score in the judge's reply ({what}, no 'Score: N'): "
                    f"{text.strip()[:200]!r}"
                )
            value = numbers[0]
        value = float(value)
    if denominator is not None and float(denominator) != float(high):
        raise JudgeError(
            f"the judge scored out of {denominator}, expected out of {high}: "
            f"{text.strip()[:200]!r}"
        )
    if not math.isfinite(value) or not low <= value <= high:
        raise JudgeError(f"the score {value} is outside the range [{low}, {high}]")
    return value


def transcript(trajectory) -> str:
    """The conversation as ``Role: text`` lines (system turns left out; tool
    turns as ``Tool (name): ...``)."""
    if isinstance(trajectory, MultiTurnTrajectory):
        messages = trajectory.messages()
    else:
        messages = list(trajectory)
    lines = []
    for m in messages:
        role = m["role"]
        if role == "system":
            continue
        label = {"user": "User", "assistant": "Assistant"}.get(role, "Tool")
        if role == "tool" and m.get("name"):
            label = f"Tool ({m['name']})"
        lines.append(f"{label}: {m.get('content') or ''}")
    return "\n".join(lines)


class JudgeResult(NamedTuple):
    """One grading: ``score`` (the fallback on failure), ``normalized`` (the
    score mapped to [0, 1]), the judge's ``reply`` text (``None`` when the
    request failed) and ``error`` (``None`` when clean)."""

    score: float
    normalized: float
    reply: str | None
    error: str | None


class LLMJudge:
    """A rubric judge over an OpenAI-compatible endpoint.

    Args:
        base_url, model, token_env: the endpoint (``POST
            {base_url}/chat/completions``), its model and the environment
            variable with the bearer token (``None``: no auth; unset raises
            ``ValueError``).
        rubric: what a good assistant does here (the ``{rubric}`` of the
            template).
        score_range: ``(low, high)`` of the scores the judge gives.
        template: the prompt, with ``{rubric}``, ``{conversation}`` (the
            `transcript`), ``{low}``, ``{high}``, ``{scenario_id}``; another
            placeholder raises ``ValueError``.
        fallback: the score of a failed grading (default ``low``).
        temperature, max_tokens: sent with each request (``None``: not sent,
            the server's default).
        timeout_s, retries, backoff_s, backoff_max_s: the HTTP client's.

    ``judge(trajectory)`` gives the score (the fallback on failure);
    `evaluate` the whole `JudgeResult`. ``failures`` counts failed gradings;
    ``errors`` keeps ``(scenario_id, error)`` for each.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        rubric: str,
        token_env: str | None = "OPENAI_API_KEY",
        score_range: tuple[float, float] = (0, 10),
        template: str = DEFAULT_JUDGE_TEMPLATE,
        fallback: float | None = None,
        temperature: float | None = 0.0,
        max_tokens: int | None = None,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        name: str = "llm_judge",
    ):
        from convergence_jax.agents.agent import OpenAIBackend

        if not isinstance(rubric, str) or not rubric.strip():
            raise ValueError("LLMJudge: rubric must be a non-empty string")
        if (
            not isinstance(score_range, tuple | list)
            or len(score_range) != 2
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool)
                for v in score_range
            )
            or not score_range[0] < score_range[1]
        ):
            raise ValueError(
                f"LLMJudge: score_range must be (low, high) numbers with low < high, "
                f"got {score_range!r}"
            )
        if not isinstance(template, str):
            raise ValueError("LLMJudge: template must be a string")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        except ValueError as error:
            raise ValueError(f"LLMJudge: template does not parse: {error}") from None
        unknown = sorted(fields - set(TEMPLATE_FIELDS))
        if unknown:
            raise ValueError(
                f"LLMJudge: template has unknown placeholders {unknown}; use "
                f"{list(TEMPLATE_FIELDS)}"
            )
        if "conversation" not in fields:
            raise ValueError("LLMJudge: template must contain {conversation}")
        self.low, self.high = float(score_range[0]), float(score_range[1])
        fallback = self.low if fallback is None else fallback
        if not isinstance(fallback, int | float) or not math.isfinite(fallback):
            raise ValueError(
                f"LLMJudge: fallback must be a finite number, got {fallback!r}"
            )
        self.backend = OpenAIBackend(
            base_url,
            model,
            token_env=token_env,
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            backoff_max_s=backoff_max_s,
            temperature=temperature,
            max_tokens=max_tokens,
        )
        self.rubric = rubric
        self.template = template
        self.fallback = float(fallback)
        self.name = name
        self.failures = 0
        self.calls = 0
        self.errors: list[tuple[str | None, str]] = []
        self._lock = threading.Lock()

    def prompt(self, trajectory) -> str:
        """The grading prompt for one conversation."""
        scenario_id = getattr(trajectory, "scenario_id", None)
        return self.template.format(
            rubric=self.rubric,
            conversation=transcript(trajectory),
            low=_show(self.low),
            high=_show(self.high),
            scenario_id=scenario_id or "",
        )

    def normalize(self, score: float) -> float:
        return (score - self.low) / (self.high - self.low)

    def evaluate(self, trajectory) -> JudgeResult:
        """Grade one conversation (a `MultiTurnTrajectory` or a message list);
        never raises for a bad reply or a failed request (see the class)."""
        if not isinstance(trajectory, MultiTurnTrajectory):
            trajectory = MultiTurnTrajectory.from_messages(list(trajectory))
        reply, error = None, None
        try:
            reply = self.backend.complete(
                [{"role": "user", "content": self.prompt(trajectory)}]
            ).text
            score = parse_score(reply, (self.low, self.high))
        except Exception as problem:  # recorded, the caller gets the fallback
            error = self.backend.caller.redact(f"{type(problem).__name__}: {problem}")
            score = self.fallback
        with self._lock:
            self.calls += 1
            if error is not None:
                self.failures += 1
                self.errors.append((trajectory.scenario_id, error))
        return JudgeResult(score, self.normalize(score), reply, error)

    def __call__(self, trajectory) -> float:
        return self.evaluate(trajectory).score

    def as_reward(self, normalize: bool = True, on_failure: str = "raise"):
        """This judge as a `RewardFunction` named ``self.name``: the score,
        mapped to [0, 1] when ``normalize``. On a failed grading
        (``on_failure``): ``"raise"`` raises `JudgeError` so that
        `CompositeReward` / `score_trajectories` record the error and use their
        own fallback; ``"fallback"`` returns the judge's fallback. Either way
        ``failures`` counts it."""
        if on_failure not in ("raise", "fallback"):
            raise ValueError(
                f"on_failure must be 'raise' or 'fallback', got {on_failure!r}"
            )

        def judged(trajectory) -> float:
            result = self.evaluate(trajectory)
            if result.error is not None and on_failure == "raise":
                raise JudgeError(result.error)
            return result.normalized if normalize else result.score

        return RewardFunction(judged, name=self.name)

    def close(self) -> None:
        self.backend.close()


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
