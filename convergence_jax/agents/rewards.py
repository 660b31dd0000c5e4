"""Heuristic rewards for conversations (host side, plain Python and NumPy).

A reward function maps a `MultiTurnTrajectory` to a float. `reward_function`
turns a plain sync or async Python function of a trajectory or of a text into one
(recording its name); the heuristics read the final assistant turn
(``scope="final"``) or every assistant turn joined by newlines
(``scope="assistant"``). `CompositeReward` sums weighted rewards,
`MultiObjectiveReward` returns a vector and `pareto_rank` sorts vectors into
non-dominated fronts. A reward that raises or returns NaN / inf is recorded with
its error and replaced by a fallback (`CompositeReward.evaluate`,
`score_trajectories`); it never stops a batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from convergence_jax.agents.trajectory import MultiTurnTrajectory

SCOPES = ("final", "assistant")
FALLBACK_REWARD = 0.0


@runtime_checkable
class RewardFn(Protocol):
    """What every reward here is: ``reward(trajectory) -> float`` with a
    ``name``."""

    name: str

    def __call__(self, trajectory) -> float: ...


def text_of(trajectory, scope: str = "final") -> str:
    """The text a text reward reads: a ``str`` as it is; of a trajectory, the
    last assistant turn's content (``"final"``) or all assistant turns joined by
    ``"\\n"`` (``"assistant"``). A trajectory without an assistant turn raises
    ``ValueError``."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if isinstance(trajectory, str):
        return trajectory
    if not isinstance(trajectory, MultiTurnTrajectory):
        raise ValueError(
            f"expected a MultiTurnTrajectory or a str, got {type(trajectory).__name__}"
        )
    turns = trajectory.assistant_turns()
    if not turns:
        raise ValueError("the trajectory has no assistant turn to score")
    if scope == "final":
        return turns[-1].content
    return "\n".join(turn.content for turn in turns)


def _run_sync(coroutine):
    """Run a coroutine to completion from sync code, also when an event loop is
    already running in this thread (then in a worker thread with its own loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class RewardFunction:
    """A named reward: calls ``fn`` on the trajectory (``takes="trajectory"``) or
    on `text_of(trajectory, scope)` (``takes="text"``) and returns a float.

    An async ``fn`` is awaited: ``reward(trajectory)`` runs it to completion,
    ``await reward.acall(trajectory)`` awaits it in the caller's loop.
    """

    def __init__(
        self,
        fn: Callable,
        name: str | None = None,
        takes: str = "trajectory",
        scope: str = "final",
    ):
        if not callable(fn):
            raise ValueError(f"a reward function must be callable, got {fn!r}")
        if takes not in ("trajectory", "text"):
            raise ValueError(f"takes must be 'trajectory' or 'text', got {takes!r}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.takes = takes
        self.scope = scope
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn, updated=())

    def _argument(self, trajectory):
        return text_of(trajectory, self.scope) if self.takes == "text" else trajectory

    def __call__(self, trajectory) -> float:
        value = self.fn(self._argument(trajectory))
        if inspect.isawaitable(value):
            value = _run_sync(value)
        return float(value)

    async def acall(self, trajectory) -> float:
        value = self.fn(self._argument(trajectory))
        if inspect.isawaitable(value):
            value = await value
        return float(value)

    def __repr__(self):
        return f"RewardFunction({self.name!r}, takes={self.takes!r})"


def reward_function(
    fn: Callable | None = None,
    *,
    name: str | None = None,
    takes: str = "trajectory",
    scope: str = "final",
):
    """Decorator: ``@reward_function`` or ``@reward_function(takes="text")`` makes
    a plain (sync or async) function a `RewardFunction` named after it."""

    def wrap(f):
        return RewardFunction(f, name=name, takes=takes, scope=scope)

    return wrap if fn is None else wrap(fn)


# ---------------------------------------------------------------------------
# Heuristics
# ---------------------------------------------------------------------------


def _count(text: str, unit: str) -> int:
    return len(text) if unit == "chars" else len(text.split())


def length_reward(
    min_length: int | None = None,
    max_length: int | None = None,
    unit: str = "chars",
    penalty: str = "hard",
    scale: float | None = None,
    scope: str = "final",
) -> RewardFunction:
    """1 when the text's length (``unit``: ``"chars"`` or ``"words"``, split on
    whitespace) lies in ``[min_length, max_length]``; outside, by ``d`` units:
    ``penalty="hard"`` gives 0, ``"smooth"`` gives ``exp(-d / scale)``
    (``scale`` defaults to a quarter of the bound crossed, at least 1)."""
    if unit not in ("chars", "words"):
        raise ValueError(f"unit must be 'chars' or 'words', got {unit!r}")
    if penalty not in ("hard", "smooth"):
        raise ValueError(f"penalty must be 'hard' or 'smooth', got {penalty!r}")
    if min_length is None and max_length is None:
        raise ValueError("length_reward needs min_length, max_length or both")
    for field, value in (("min_length", min_length), ("max_length", max_length)):
        if value is not None and value < 0:
            raise ValueError(f"{field} must be >= 0, got {value}")
    if min_length is not None and max_length is not None and min_length > max_length:
        raise ValueError(f"min_length={min_length} is above max_length={max_length}")
    if scale is not None and scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")

    def length(text: str) -> float:
        n = _count(text, unit)
        if min_length is not None and n < min_length:
            distance, bound = min_length - n, min_length
        elif max_length is not None and n > max_length:
            distance, bound = n - max_length, max_length
        else:
            return 1.0
        if penalty == "hard":
            return 0.0
        return math.exp(-distance / (scale or max(1.0, bound / 4)))

    return RewardFunction(length, name="length", takes="text", scope=scope)


def _phrases(phrases: Sequence[str], field: str) -> tuple[str, ...]:
    if isinstance(phrases, str):
        raise ValueError(f"{field} must be a list of strings, not one string")
    out = tuple(phrases)
    for i, p in enumerate(out):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"{field}[{i}] must be a non-empty string, got {p!r}")
    return out


def _found(text: str, phrases: Sequence[str]) -> int:
    lowered = text.casefold()
    return sum(p.casefold() in lowered for p in phrases)


def required_phrases_reward(
    phrases: Sequence[str], scope: str = "final"
) -> RewardFunction:
    """The fraction of ``phrases`` found in the text (case-insensitive substring
    match)."""
    phrases = _phrases(phrases, "phrases")
    if not phrases:
        raise ValueError("required_phrases_reward needs at least one phrase")

    def required_phrases(text: str) -> float:
        return _found(text, phrases) / len(phrases)

    return RewardFunction(required_phrases, takes="text", scope=scope)


def forbidden_phrases_reward(
    phrases: Sequence[str], scope: str = "final"
) -> RewardFunction:
    """1 minus the fraction of ``phrases`` found in the text (case-insensitive
    substring match): 1 when none appears, 0 when all do."""
    phrases = _phrases(phrases, "phrases")
    if not phrases:
        raise ValueError("forbidden_phrases_reward needs at least one phrase")

    def forbidden_phrases(text: str) -> float:
        return 1.0 - _found(text, phrases) / len(phrases)

    return RewardFunction(forbidden_phrases, takes="text", scope=scope)


POLITE_MARKERS = (
    "please",
    "thank you",
    "thanks",
    "sorry",
    "apologize",
    "apologies",
    "appreciate",
    "happy to help",
    "glad to help",
    "you're welcome",
    "my pleasure",
    "kindly",
)
RUDE_MARKERS = (
    "stupid",
    "idiot",
    "dumb",
    "shut up",
    "whatever",
    "not my problem",
    "figure it out yourself",
    "ridiculous",
)


def _marker_hits(text: str, markers: Sequence[str]) -> int:
    """Distinct markers present as whole words (case-insensitive)."""
    lowered = text.casefold()
    return sum(
        re.search(rf"\b{re.escape(m.casefold())}\b", lowered) is not None
        for m in markers
    )


def politeness_reward(
    polite: Sequence[str] = POLITE_MARKERS,
    rude: Sequence[str] = RUDE_MARKERS,
    base: float = 0.5,
    polite_step: float = 0.25,
    rude_step: float = 0.5,
    scope: str = "final",
) -> RewardFunction:
    """``clip(base + polite_step * p - rude_step * r, 0, 1)`` where ``p`` and ``r``
    count the distinct polite / rude markers present as whole words
    (case-insensitive; lexicons `POLITE_MARKERS` and `RUDE_MARKERS`). A neutral
    text scores ``base``; two polite markers reach 1; one rude marker costs
    half."""
    polite, rude = _phrases(polite, "polite"), _phrases(rude, "rude")

    def politeness(text: str) -> float:
        score = base + polite_step * _marker_hits(text, polite)
        score -= rude_step * _marker_hits(text, rude)
        return float(min(1.0, max(0.0, score)))

    return RewardFunction(politeness, takes="text", scope=scope)


SAFETY_BLOCKLIST = (
    "kill yourself",
    "hurt yourself",
    "how to make a bomb",
    "build a weapon",
    "credit card number",
    "social security number",
    "your password",
    "wire the money to",
)


def safety_reward(
    blocklist: Sequence[str] = SAFETY_BLOCKLIST,
    penalty: float = 0.0,
    scope: str = "assistant",
) -> RewardFunction:
    """1 when no ``blocklist`` entry appears in the text as whole words
    (case-insensitive), else ``penalty`` (0 by default; e.g. -1 to punish). The
    default `SAFETY_BLOCKLIST` is a small example (self-harm, weapons, asking for
    credentials or money), not a safety system; the default scope reads every
    assistant turn."""
    blocklist = _phrases(blocklist, "blocklist")
    if not blocklist:
        raise ValueError("safety_reward needs at least one blocked phrase")

    def safety(text: str) -> float:
        return float(penalty) if _marker_hits(text, blocklist) else 1.0

    return RewardFunction(safety, takes="text", scope=scope)


# ---------------------------------------------------------------------------
# Robust evaluation, composites, several objectives
# ---------------------------------------------------------------------------


def _evaluate_one(fn, trajectory) -> tuple[float, str | None]:
    """``(value, None)``, or ``(nan, error message)`` when ``fn`` raises or gives
    a non-finite value."""
    name = getattr(fn, "name", getattr(fn, "__name__", repr(fn)))
    try:
        value = float(fn(trajectory))
    except Exception as error:  # a user's reward: record it, never lose the batch
        return math.nan, f"{name}: {type(error).__name__}: {error}"
    if not math.isfinite(value):
        return math.nan, f"{name}: returned {value}"
    return value, None


class RewardResult(NamedTuple):
    """One evaluation: the total, each component's value (the fallback where it
    failed) and each failed component's error."""

    value: float
    components: dict[str, float]
    errors: dict[str, str]


def _named(fns: Sequence[Callable]) -> list[str]:
    names, seen = [], {}
    for fn in fns:
        name = getattr(fn, "name", getattr(fn, "__name__", type(fn).__name__))
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


class CompositeReward:
    """A weighted sum ``sum_i w_i r_i`` of reward functions, divided by
    ``sum_i |w_i|`` when ``normalize`` (the default, so rewards in [0, 1] with
    positive weights stay in [0, 1]).

    A component that raises or returns NaN / inf counts as ``fallback``
    (`FALLBACK_REWARD`, 0.0) and its error is kept in `evaluate`'s result.
    """

    def __init__(
        self,
        components: Sequence[tuple[Callable, float]],
        normalize: bool = True,
        fallback: float = FALLBACK_REWARD,
        name: str = "composite",
    ):
        components = list(components)
        if not components:
            raise ValueError("CompositeReward needs at least one (fn, weight) pair")
        for i, pair in enumerate(components):
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ValueError(f"components[{i}] must be (fn, weight), got {pair!r}")
            fn, weight = pair
            if not callable(fn):
                raise ValueError(f"components[{i}]: {fn!r} is not callable")
            if not isinstance(weight, int | float) or not math.isfinite(weight):
                raise ValueError(
                    f"components[{i}]: weight must be finite, got {weight!r}"
                )
        self.fns = [fn for fn, _ in components]
        self.weights = np.asarray([w for _, w in components], np.float64)
        total = float(np.abs(self.weights).sum())
        if normalize and total == 0:
            raise ValueError("normalize=True needs a nonzero weight")
        self.normalize = normalize
        self.scale = total if normalize else 1.0
        self.fallback = float(fallback)
        self.names = _named(self.fns)
        self.name = name

    def evaluate(self, trajectory) -> RewardResult:
        components, errors = {}, {}
        for name, fn in zip(self.names, self.fns, strict=True):
            value, error = _evaluate_one(fn, trajectory)
            if error is not None:
                errors[name], value = error, self.fallback
            components[name] = value
        values = np.asarray(list(components.values()), np.float64)
        total = float(values @ self.weights) / self.scale
        return RewardResult(total, components, errors)

    def __call__(self, trajectory) -> float:
        return self.evaluate(trajectory).value


class MultiObjectiveReward:
    """Several rewards kept apart: ``reward(trajectory) -> [K]`` float64 array
    (a failed objective gives ``fallback``). ``objectives`` is a list of reward
    functions or a ``{name: fn}`` dict."""

    def __init__(
        self,
        objectives: Sequence[Callable] | Mapping[str, Callable],
        fallback: float = FALLBACK_REWARD,
    ):
        if isinstance(objectives, Mapping):
            self.names, self.fns = list(objectives), list(objectives.values())
        else:
            self.fns = list(objectives)
            self.names = _named(self.fns)
        if not self.fns:
            raise ValueError("MultiObjectiveReward needs at least one objective")
        for name, fn in zip(self.names, self.fns, strict=True):
            if not callable(fn):
                raise ValueError(f"objective {name!r} is not callable")
        self.fallback = float(fallback)
        self.name = "multi_objective"

    def evaluate(self, trajectory) -> tuple[np.ndarray, dict[str, str]]:
        values, errors = [], {}
        for name, fn in zip(self.names, self.fns, strict=True):
            value, error = _evaluate_one(fn, trajectory)
            if error is not None:
                errors[name], value = error, self.fallback
            values.append(value)
        return np.asarray(values, np.float64), errors

    def __call__(self, trajectory) -> np.ndarray:
        return self.evaluate(trajectory)[0]

    def weighted(
        self, weights: Sequence[float] | Mapping[str, float], normalize: bool = True
    ) -> CompositeReward:
        """The scalar `CompositeReward` of these objectives with ``weights`` (a
        list in objective order, or ``{name: weight}``, missing names weigh 0)."""
        if isinstance(weights, Mapping):
            unknown = set(weights) - set(self.names)
            if unknown:
                raise ValueError(
                    f"unknown objectives {sorted(unknown)}; have {self.names}"
                )
            weights = [weights.get(n, 0.0) for n in self.names]
        weights = list(weights)
        if len(weights) != len(self.fns):
            raise ValueError(
                f"{len(weights)} weights for {len(self.fns)} objectives {self.names}"
            )
        return CompositeReward(
            list(zip(self.fns, weights, strict=True)),
            normalize=normalize,
            fallback=self.fallback,
            name="weighted",
        )


def pareto_rank(vectors, maximize: bool = True) -> np.ndarray:
    """Non-dominated sorting ranks ``[N]`` int of ``vectors [N, K]``: 0 for the
    Pareto front, 1 for the front once rank 0 is removed, and so on (NSGA-II).
    ``a`` dominates ``b`` when it is at least as good in every objective and
    better in one (larger is better unless ``maximize=False``)."""
    v = np.asarray(vectors, np.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(
            f"vectors must be a non-empty [N, K] array, got shape {v.shape}"
        )
    if not np.all(np.isfinite(v)):
        raise ValueError("vectors must be finite")
    if not maximize:
        v = -v
    # dominates[i, j]: i dominates j
    geq = np.all(v[:, None, :] >= v[None, :, :], axis=-1)
    gt = np.any(v[:, None, :] > v[None, :, :], axis=-1)
    dominates = geq & gt
    ranks = np.full(v.shape[0], -1, np.int64)
    remaining = np.ones(v.shape[0], bool)
    rank = 0
    while remaining.any():
        dominated = (dominates & remaining[:, None]).any(axis=0)
        front = remaining & ~dominated
        ranks[front] = rank
        remaining &= ~front
        rank += 1
    return ranks


class ScoreReport(NamedTuple):
    """`score_trajectories`'s result: ``rewards [N]`` (or ``[N, K]`` for a
    `MultiObjectiveReward`), each trajectory's error (``None`` when it scored
    cleanly) and how many failed."""

    rewards: np.ndarray
    errors: list[str | None]
    num_failures: int


def score_trajectories(
    fn: Callable, trajectories: Sequence, fallback: float = FALLBACK_REWARD
) -> ScoreReport:
    """Score every trajectory, never stopping on a failure: a reward that raises
    or returns NaN / inf gives ``fallback`` for that trajectory and its error is
    kept. For a `CompositeReward` / `MultiObjectiveReward` a failed component
    takes the reward's own fallback, the rest still count, and the trajectory is
    a failure with every component's error joined by ``"; "``."""
    rewards, errors = [], []
    for trajectory in trajectories:
        if isinstance(fn, CompositeReward | MultiObjectiveReward):
            try:
                result = fn.evaluate(trajectory)
            except Exception as error:  # recorded, never loses the batch
                value = (
                    np.full(len(fn.fns), fallback)
                    if isinstance(fn, MultiObjectiveReward)
                    else fallback
                )
                problems = {"": f"{fn.name}: {type(error).__name__}: {error}"}
            else:
                if isinstance(result, RewardResult):
                    value, problems = result.value, result.errors
                else:
                    value, problems = result
            rewards.append(value)
            errors.append("; ".join(problems.values()) if problems else None)
            continue
        value, error = _evaluate_one(fn, trajectory)
        rewards.append(fallback if error is not None else value)
        errors.append(error)
    rewards = np.asarray(rewards, np.float64)
    return ScoreReport(rewards, errors, sum(e is not None for e in errors))
