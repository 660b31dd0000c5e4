"""Policy management at convergence: rollback, spawning, ensembles, and the
controllers that decide what to do.

``adaptive_noise`` is the pure formula that sets how far a spawned variant's
hyperparameters move: far when validation is flat, the train/validation gap
wide or the two uncorrelated; close when validation still climbs and tracks
training. ``PolicyManager`` acts on DORMANT; ``MetaController`` maps the same
signals to STOP / PRUNE / SPAWN / NO_OP; ``RegimeDetector`` names the score
regime; ``EnsembleAgent`` is the weighted ensemble as an agent.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from convergence_jax.loop.agent import JaxPolicy

__all__ = [
    "EnsembleAgent",
    "MetaAction",
    "MetaController",
    "PolicyManager",
    "RegimeDetector",
    "adaptive_noise",
    "meta_features",
    "pearson",
    "slope",
]


# ------------------------------------------------------------------ formulas


def slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against 0, 1, 2, ... (0 if < 2 values)."""
    y = np.asarray(values, np.float64)
    if len(y) < 2:
        return 0.0
    x = np.arange(len(y), dtype=np.float64)
    x -= x.mean()
    return float(np.dot(x, y - y.mean()) / np.dot(x, x))


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation; 0 when either side is constant (no evidence)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def adaptive_noise(
    train: Sequence[float],
    val: Sequence[float],
    *,
    max_slope: float,
    min_scale: float = 0.05,
    max_scale: float = 0.5,
) -> dict[str, float]:
    """The three-signal noise scale for a spawned variant's hyperparameters:

        t             = clip(slope(val) / max_slope, 0, 1)
        gap_penalty   = clip(mean(train - val) / |mean(val)|, 0, 1)
        corr_penalty  = clip(1 - pearson(train, val), 0, 1)
        effective_t   = t (1 - 0.5 gap_penalty) (1 - 0.5 corr_penalty)
        noise         = max_scale - effective_t (max_scale - min_scale)

    Returns every term (``noise`` is the scale).
    """
    train = np.asarray(train, np.float64)
    val = np.asarray(val, np.float64)
    if train.shape != val.shape or len(val) == 0:
        raise ValueError(
            f"adaptive_noise: train and val need equal, non-zero lengths, got "
            f"{len(train)} and {len(val)}"
        )
    if max_slope <= 0 or not 0 <= min_scale <= max_scale:
        raise ValueError(
            "adaptive_noise: need max_slope > 0 and 0 <= min_scale <= max_scale"
        )
    t = float(np.clip(slope(val) / max_slope, 0.0, 1.0))
    mean_val = abs(float(val.mean()))
    gap = float((train - val).mean())
    gap_penalty = float(np.clip(gap / mean_val, 0.0, 1.0)) if mean_val > 0 else 1.0
    corr_penalty = float(np.clip(1.0 - pearson(train, val), 0.0, 1.0))
    effective_t = t * (1 - 0.5 * gap_penalty) * (1 - 0.5 * corr_penalty)
    return {
        "t": t,
        "gap_penalty": gap_penalty,
        "corr_penalty": corr_penalty,
        "effective_t": effective_t,
        "noise": max_scale - effective_t * (max_scale - min_scale),
    }


# ------------------------------------------------------------------ controllers


class MetaAction(IntEnum):
    NO_OP = 0
    SPAWN = 1
    PRUNE = 2
    STOP = 3


def meta_features(
    train: Sequence[float], val: Sequence[float], spawns_left: float
) -> np.ndarray:
    """``[gap, corr, slope, spawns_left]``: relative train-val gap, Pearson
    correlation, validation slope relative to ``|mean(val)|``, and the fraction
    of the spawn budget left. What a meta policy (rules or learned) sees."""
    train = np.asarray(train, np.float64)
    val = np.asarray(val, np.float64)
    scale = max(abs(float(val.mean())), 1e-12) if len(val) else 1.0
    gap = float((train - val).mean()) / scale if len(val) else 0.0
    return np.array(
        [gap, pearson(train, val), slope(val) / scale, float(spawns_left)], np.float64
    )


class MetaController:
    """Rules over ``meta_features``, with the interface a learned policy would
    have: ``controller(features) -> MetaAction``.

    Still climbing (relative slope > ``min_slope``): NO_OP. Overfitting (gap >
    ``max_gap``) or train and validation decoupled (corr < ``min_corr``):
    PRUNE. Otherwise SPAWN while budget is left, else STOP.
    """

    def __init__(self, max_gap: float = 0.2, min_corr: float = 0.0, min_slope=0.01):
        self.max_gap, self.min_corr, self.min_slope = max_gap, min_corr, min_slope

    def __call__(self, features: np.ndarray) -> MetaAction:
        gap, corr, rel_slope, spawns_left = features
        if rel_slope > self.min_slope:
            return MetaAction.NO_OP
        if gap > self.max_gap or corr < self.min_corr:
            return MetaAction.PRUNE
        return MetaAction.SPAWN if spawns_left > 0 else MetaAction.STOP

    def decide(self, train, val, spawns_left: float) -> MetaAction:
        return self(meta_features(train, val, spawns_left))


class RegimeDetector:
    """Names the regime of a score series: ``volatile`` when the coefficient of
    variation ``std / |mean|`` exceeds ``volatile_cv``, ``trending`` when the
    normalized slope ``slope * n / |mean|`` (relative change over the window)
    exceeds ``trend_threshold`` in size, else ``ranging``. Subclass and
    override ``classify`` for other regimes."""

    def __init__(self, volatile_cv=0.25, trend_threshold=0.1, window: int = 20):
        self.volatile_cv = volatile_cv
        self.trend_threshold = trend_threshold
        self.window = window

    def features(self, scores: Sequence[float]) -> tuple[float, float]:
        y = np.asarray(scores, np.float64)[-self.window :]
        y = y[np.isfinite(y)]
        if len(y) < 2:
            return 0.0, 0.0
        scale = max(abs(float(y.mean())), 1e-12)
        return float(y.std() / scale), slope(y) * len(y) / scale

    def classify(self, cv: float, normalized_slope: float) -> str:
        if cv > self.volatile_cv:
            return "volatile"
        if abs(normalized_slope) > self.trend_threshold:
            return "trending"
        return "ranging"

    def detect(self, scores: Sequence[float]) -> str:
        return self.classify(*self.features(scores))


# ------------------------------------------------------------------ ensemble


def _ensemble_apply(probs_fn):
    """A pure ensemble policy over members sharing ``probs_fn`` (cached)."""
    if probs_fn not in _ENSEMBLE_APPLY:

        def apply(params, obs, key):
            member_params, weights = params
            probs = sum(
                w * probs_fn(p, obs)
                for w, p in zip(weights, member_params, strict=True)
            )
            return jnp.argmax(probs, axis=-1)

        _ENSEMBLE_APPLY[probs_fn] = apply
    return _ENSEMBLE_APPLY[probs_fn]


_ENSEMBLE_APPLY: dict = {}


class EnsembleAgent:
    """A weighted ensemble as an agent (it acts; its members learn elsewhere).

    Discrete actions: the weighted average of the members' action
    probabilities (``action_probabilities``; a member without it votes with a
    one-hot of its action), then the most probable action. Continuous actions:
    the weighted average of the members' actions.
    """

    def __init__(
        self,
        members: Sequence,
        weights: Sequence[float],
        discrete: bool,
        num_actions: int | None = None,
    ):
        if len(members) == 0 or len(members) != len(weights):
            raise ValueError(
                f"EnsembleAgent: need as many weights as members (>= 1), got "
                f"{len(members)} members and {len(weights)} weights"
            )
        self.members = list(members)
        self.discrete = discrete
        self.num_actions = num_actions
        self.set_hyperparams({f"weight_{i}": w for i, w in enumerate(weights)})

    def act(self, observation):
        w = self.weights
        if not self.discrete:
            actions = [np.asarray(m.act(observation), np.float64) for m in self.members]
            return sum(wi * a for wi, a in zip(w, actions, strict=True))
        probs = [self._probs(m, observation) for m in self.members]
        return np.argmax(sum(wi * p for wi, p in zip(w, probs, strict=True)), axis=-1)

    def _probs(self, member, observation):
        probabilities = getattr(member, "action_probabilities", None)
        if callable(probabilities):
            return np.asarray(probabilities(observation))
        if self.num_actions is None:
            raise ValueError(
                f"EnsembleAgent: member {type(member).__name__} has no "
                "action_probabilities; pass num_actions so it can vote"
            )
        return np.eye(self.num_actions)[np.asarray(member.act(observation), int)]

    def jax_policy(self) -> JaxPolicy | None:
        """Compiled acting when every member offers ``jax_action_probabilities``
        with the same function (e.g. ``PPOAgent``s of one configuration); else
        None (pipelines then call ``act`` step by step)."""
        if not self.discrete or not all(
            callable(getattr(m, "jax_action_probabilities", None)) for m in self.members
        ):
            return None
        policies = [m.jax_action_probabilities() for m in self.members]
        probs_fn = policies[0].apply
        if any(p.apply is not probs_fn for p in policies):
            return None
        params = ([p.params for p in policies], jnp.asarray(self.weights, jnp.float32))
        return JaxPolicy(apply=_ensemble_apply(probs_fn), params=params)

    def learn(self, episode_data) -> dict[str, float]:
        raise TypeError(
            "EnsembleAgent acts only; train its members (e.g. with RLOptimizer) "
            "and build a new ensemble from them"
        )

    def get_hyperparams(self) -> dict[str, float]:
        return {f"weight_{i}": float(w) for i, w in enumerate(self.weights)}

    def set_hyperparams(self, hyperparams: dict[str, float]) -> None:
        weights = [hyperparams[f"weight_{i}"] for i in range(len(self.members))]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"EnsembleAgent: weights must be >= 0, not all 0: {weights}"
            )
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]

    def save_weights(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for i, member in enumerate(self.members):
            member.save_weights(path / f"member_{i}")
        (path / "weights.json").write_text(json.dumps(self.weights))

    def load_weights(self, path) -> None:
        path = Path(path)
        for i, member in enumerate(self.members):
            member.load_weights(path / f"member_{i}")
        weights = json.loads((path / "weights.json").read_text())
        self.set_hyperparams({f"weight_{i}": w for i, w in enumerate(weights)})


# ------------------------------------------------------------------ manager


@dataclass
class Member:
    name: str
    agent: object
    primary: deque = field(default_factory=lambda: deque(maxlen=10))
    train: deque = field(default_factory=lambda: deque(maxlen=10))
    val: deque = field(default_factory=lambda: deque(maxlen=10))
    boost: float = 1.0

    @property
    def mean_score(self) -> float:
        finite = [s for s in self.primary if math.isfinite(s)]
        return float(np.mean(finite)) if finite else math.nan


class PolicyManager:
    """What happens at DORMANT: rollback, spawning, the ensemble, the report.

    At DORMANT the current agent rolls back to the best checkpoint if its recent
    score is below it. Then (``meta_controller``, if given, decides first: PRUNE
    prunes the weakest member, STOP stops) a variant is spawned:
    ``agent_factory()`` builds a fresh agent, the best weights are loaded into
    it, its hyperparameters are the best snapshot's times ``exp(noise * N(0,
    1))`` with ``noise`` from ``adaptive_noise``, and the loop continues
    training it. With ``max_spawns`` used up the manager calls the stop
    function (``loop.stop``) and prints the training report. Every trained
    agent stays an ensemble member, weighted by its rolling mean score.
    """

    def __init__(
        self,
        agent_factory: Callable[[], object],
        *,
        max_spawns: int = 2,
        bounds: dict[str, tuple[float, float]] | None = None,
        perturb: Sequence[str] | None = None,
        max_slope: float = 1.0,
        min_scale: float = 0.05,
        max_scale: float = 0.5,
        score_window: int = 10,
        meta_controller: Callable | None = None,
        regime_detector: RegimeDetector | None = None,
        discrete: bool = True,
        num_actions: int | None = None,
        print_report: bool = True,
        seed: int = 0,
    ):
        if not isinstance(max_spawns, int) or max_spawns < 0:
            raise ValueError(
                f"PolicyManager.max_spawns: expected int >= 0, got {max_spawns!r}"
            )
        self.agent_factory = agent_factory
        self.max_spawns = max_spawns
        self.bounds = bounds or {}
        self.perturb = list(perturb) if perturb is not None else list(self.bounds)
        self.max_slope, self.min_scale, self.max_scale = max_slope, min_scale, max_scale
        self.score_window = score_window
        self.meta_controller = meta_controller
        self.regime_detector = regime_detector or RegimeDetector()
        self.discrete = discrete
        self.num_actions = num_actions
        self.print_report = print_report
        self.rng = np.random.default_rng(seed)
        self.members: list[Member] = []
        self.spawns_used = 0
        self.pruned = 0
        self.rollbacks = 0
        self.history: list[float] = []
        self.last_noise: dict[str, float] = {}
        self.stop_reason: str | None = None
        self.report_text = ""

    # -- bookkeeping ----------------------------------------------------------

    def member(self, agent) -> Member:
        for m in self.members:
            if m.agent is agent:
                return m
        name = getattr(agent, "name", None) or f"agent-{len(self.members)}"
        m = Member(
            name=name,
            agent=agent,
            primary=deque(maxlen=self.score_window),
            train=deque(maxlen=self.score_window),
            val=deque(maxlen=self.score_window),
        )
        self.members.append(m)
        return m

    def observe(self, agent, record: dict) -> None:
        """The loop reports every evaluation of the agent it trains."""
        m = self.member(agent)
        m.primary.append(float(record["primary_score"]))
        train = float(record.get("train_score", math.nan))
        val = float(record.get("val_score", math.nan))
        m.train.append(train if math.isfinite(train) else m.primary[-1])
        m.val.append(val if math.isfinite(val) else m.primary[-1])
        self.history.append(float(record["primary_score"]))

    def weights(self) -> dict[str, float]:
        """``w_i ∝ boost_i * (mean_i - min_j mean_j + eps)``, normalized."""
        means = {m.name: m.mean_score for m in self.members}
        finite = [v for v in means.values() if math.isfinite(v)]
        floor = min(finite) if finite else 0.0
        spread = (max(finite) - floor) if finite else 0.0
        eps = 1e-3 * spread + 1e-9
        raw = {
            m.name: m.boost
            * ((means[m.name] - floor + eps) if math.isfinite(means[m.name]) else 0.0)
            for m in self.members
        }
        total = sum(raw.values())
        if total <= 0:
            return {name: 1.0 / len(raw) for name in raw} if raw else {}
        return {name: value / total for name, value in raw.items()}

    def prune(self, bottom_k: int = 1) -> list[str]:
        """Drop the ``bottom_k`` members with the lowest rolling mean (one stays)."""
        ranked = sorted(
            self.members,
            key=lambda m: m.mean_score if math.isfinite(m.mean_score) else -math.inf,
        )
        removed = ranked[: max(0, min(bottom_k, len(self.members) - 1))]
        self.members = [m for m in self.members if m not in removed]
        self.pruned += len(removed)
        return [m.name for m in removed]

    def boost(self, agent, factor: float) -> None:
        """Multiply ``agent``'s ensemble weight by ``factor`` (> 0)."""
        if factor <= 0:
            raise ValueError(f"PolicyManager.boost: factor must be > 0, got {factor}")
        self.member(agent).boost *= factor

    def ensemble(self) -> EnsembleAgent:
        weights = self.weights()
        return EnsembleAgent(
            [m.agent for m in self.members],
            [weights[m.name] for m in self.members],
            discrete=self.discrete,
            num_actions=self.num_actions,
        )

    def regime(self) -> str:
        return self.regime_detector.detect(self.history)

    # -- at DORMANT -------------------------------------------------------------

    def on_dormant(self, loop) -> None:
        current = self.member(loop.agent)
        best = loop.registry.best
        recent = current.mean_score
        if best is not None and math.isfinite(recent) and recent < best.score:
            loop.registry.load_best(loop.agent)
            self.rollbacks += 1
        spawns_left = self.max_spawns - self.spawns_used
        if self.meta_controller is not None:
            action = self.meta_controller(
                meta_features(
                    current.train, current.val, spawns_left / max(1, self.max_spawns)
                )
            )
            if action == MetaAction.PRUNE:
                self.prune(1)
            elif action == MetaAction.STOP:
                return self.finish(loop, "meta controller: STOP")
            elif action == MetaAction.NO_OP:
                return None
        if spawns_left <= 0:
            return self.finish(loop, f"spawn budget used ({self.max_spawns} spawns)")
        self.spawn(loop)
        return None

    def spawn(self, loop):
        """A variant of the best snapshot, trained next by the loop."""
        current = self.member(loop.agent)
        best = loop.registry.best
        agent = self.agent_factory()
        hyperparams = dict(best.hyperparams if best else loop.agent.get_hyperparams())
        if best is not None:
            loop.registry.load_best(agent)
        train = list(current.train) or [0.0]
        val = list(current.val) or [0.0]
        self.last_noise = adaptive_noise(
            train,
            val,
            max_slope=self.max_slope,
            min_scale=self.min_scale,
            max_scale=self.max_scale,
        )
        for name in self.perturb:
            value = hyperparams[name] * math.exp(
                self.last_noise["noise"] * self.rng.normal()
            )
            lo, hi = self.bounds.get(name, (-math.inf, math.inf))
            hyperparams[name] = float(min(max(value, lo), hi))
        agent.set_hyperparams(hyperparams)
        self.spawns_used += 1
        if getattr(agent, "name", None) is None:
            try:
                agent.name = f"variant-{self.spawns_used}"
            except AttributeError:
                pass
        self.member(agent)
        loop.swap_agent(agent)
        return agent

    def finish(self, loop, reason: str) -> None:
        self.stop_reason = reason
        loop.stop(reason)
        self.report_text = self.report(loop, reason)
        if self.print_report:
            print(self.report_text)

    # -- reporting ------------------------------------------------------------

    def status(self, loop=None) -> dict:
        """A JSON-ready summary."""
        weights = self.weights()
        best = loop.registry.best if loop is not None else None
        last = loop.records[-1] if loop is not None and loop.records else {}
        return {
            "reason": self.stop_reason,
            "best_score": best.score if best else None,
            "val_score": _finite_or_none(last.get("val_score")),
            "generalization_gap": _finite_or_none(last.get("generalization_gap")),
            "spawns_used": self.spawns_used,
            "max_spawns": self.max_spawns,
            "pruned": self.pruned,
            "rollbacks": self.rollbacks,
            "ensemble_size": len(self.members),
            "regime": self.regime(),
            "noise": self.last_noise,
            "agents": [
                {
                    "name": m.name,
                    "weight": weights.get(m.name, 0.0),
                    "mean_score": _finite_or_none(m.mean_score),
                }
                for m in self.members
            ],
        }

    def report(self, loop, reason: str) -> str:
        s = self.status(loop)
        lines = [
            "=== convergence_jax training report ===",
            f"reason:             {reason}",
            f"best score:         {_fmt(s['best_score'])}",
            f"val score:          {_fmt(s['val_score'])}",
            f"generalization gap: {_fmt(s['generalization_gap'])}",
            f"spawns used:        {s['spawns_used']} / {s['max_spawns']}",
            f"pruned:             {s['pruned']}",
            f"ensemble size:      {s['ensemble_size']}",
            f"regime:             {s['regime']}",
            "agents:",
        ]
        for a in s["agents"]:
            lines.append(
                f"  {a['name']:<12s} weight {a['weight']:.3f}  mean score "
                f"{_fmt(a['mean_score'])}"
            )
        return "\n".join(lines)


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
