"""Hyperparameter adaptation between windows, and the pure PBT rule.

``BackoffOptimizer`` tunes one parameter at a time by a two-phase finite
difference; ``PBTOptimizer`` applies population-based training's exploit /
explore rule to the loop's own history. Both are small host objects with
``suggest(hyperparams, record) -> hyperparams``; ``exploit_explore`` is the pure
population rule that ``make_pbt`` runs inside its compiled program.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BackoffOptimizer", "PBTOptimizer", "exploit_explore"]


def _check_bounds(bounds: dict[str, tuple[float, float]], owner: str) -> None:
    if not bounds:
        raise ValueError(f"{owner}: bounds must name at least one hyperparameter")
    for name, (lo, hi) in bounds.items():
        if not lo < hi:
            raise ValueError(f"{owner}: bounds[{name!r}] = ({lo}, {hi}) needs lo < hi")


def _log_names(bounds, log_scale: Iterable[str] | None) -> set[str]:
    """Scale-like parameters move in log space: by default those with positive
    bounds spanning a factor of 10 or more."""
    if log_scale is not None:
        return set(log_scale)
    return {n for n, (lo, hi) in bounds.items() if lo > 0 and hi / lo >= 10}


class BackoffOptimizer:
    """Two-phase finite difference, one parameter at a time (round robin).

    For parameter ``p`` at ``theta`` with score ``s0``: probe ``theta + delta``
    for one evaluation; keep it if the score rose above ``s0 + margin``, else
    probe ``theta - delta``; keep that if it rose, else go back to ``theta``.
    ``delta = step_p * (hi - lo)``, measured in log space for scale-like
    parameters. A kept probe shrinks ``step_p`` (``* shrink``); a parameter with
    no better side grows it (``* grow``), within ``[min_step, max_step]``.
    """

    def __init__(
        self,
        bounds: dict[str, tuple[float, float]],
        *,
        log_scale: Iterable[str] | None = None,
        step: float = 0.1,
        shrink: float = 0.7,
        grow: float = 1.5,
        min_step: float = 0.01,
        max_step: float = 0.5,
        margin: float = 0.0,
    ):
        _check_bounds(bounds, "BackoffOptimizer")
        if not 0 < shrink <= 1 <= grow:
            raise ValueError(
                f"BackoffOptimizer: need 0 < shrink <= 1 <= grow, got {shrink}, {grow}"
            )
        self.bounds = dict(bounds)
        self.log = _log_names(bounds, log_scale)
        self.steps = {name: float(step) for name in bounds}
        self.shrink, self.grow = shrink, grow
        self.min_step, self.max_step = min_step, max_step
        self.margin = margin
        self.reset()

    def reset(self) -> None:
        self.index = 0
        self.phase = "base"
        self.baseline = math.nan
        self.theta = math.nan

    @property
    def name(self) -> str:
        return list(self.bounds)[self.index]

    def _to_unit(self, name, value):
        lo, hi = self.bounds[name]
        if name in self.log:
            return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (value - lo) / (hi - lo)

    def _from_unit(self, name, u):
        lo, hi = self.bounds[name]
        u = min(max(u, 0.0), 1.0)
        if name in self.log:
            return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        return lo + u * (hi - lo)

    def _probe(self, hyperparams, sign):
        name = self.name
        u = self._to_unit(name, self.theta) + sign * self.steps[name]
        return {**hyperparams, name: self._from_unit(name, u)}

    def _next_param(self, hyperparams, score):
        """Move to the next parameter and start probing it from ``score``."""
        self.index = (self.index + 1) % len(self.bounds)
        self.phase = "base"
        return self._start(hyperparams, score)

    def _start(self, hyperparams, score):
        if not math.isfinite(score):
            return hyperparams  # wait for a real baseline
        self.baseline = score
        self.theta = hyperparams[self.name]
        self.phase = "plus"
        return self._probe(hyperparams, +1)

    def _scale_step(self, factor):
        name = self.name
        self.steps[name] = min(
            max(self.steps[name] * factor, self.min_step), self.max_step
        )

    def suggest(self, hyperparams: dict, record: dict) -> dict:
        missing = set(self.bounds) - set(hyperparams)
        if missing:
            raise KeyError(
                f"BackoffOptimizer: agent has no hyperparams {sorted(missing)}"
            )
        score = float(record["primary_score"])
        better = math.isfinite(score) and score > self.baseline + self.margin
        if self.phase == "base":
            return self._start(hyperparams, score)
        if self.phase == "plus":
            if better:
                self._scale_step(self.shrink)
                return self._next_param(hyperparams, score)
            self.phase = "minus"
            return self._probe(hyperparams, -1)
        # phase == "minus"
        if better:
            self._scale_step(self.shrink)
            return self._next_param(hyperparams, score)
        self._scale_step(self.grow)
        reverted = {**hyperparams, self.name: self.theta}
        self.index = (self.index + 1) % len(self.bounds)
        self.phase = "base"  # measure the reverted setting before the next probe
        return reverted

    def on_improvement(self, record: dict) -> None:
        pass

    def on_plateau(self, record: dict) -> None:
        """Converged: widen every step (explore further next time)."""
        for name in self.steps:
            self.steps[name] = min(self.steps[name] * self.grow, self.max_step)


def exploit_explore(
    key: jax.Array,
    scores: jax.Array,
    hparams,
    lo,
    hi,
    quantile: float = 0.2,
    factors: tuple[float, float] = (0.8, 1.25),
):
    """PBT's truncation rule on a population (pure; ``jit``/``scan`` safe).

    Members ranked in the bottom ``quantile`` (NaN scores rank last) copy a
    uniformly drawn member of the top ``quantile`` and multiply each copied
    hyperparameter by ``factors[0]`` or ``factors[1]`` (a fair coin each),
    clipped to ``[lo, hi]``; the rest keep theirs. ``hparams``, ``lo`` and
    ``hi`` are matching pytrees (leaves ``[N]``, scalars, scalars). Returns
    ``(source [N] int32, new hparams)``: member ``i`` continues from member
    ``source[i]``'s weights.
    """
    n = scores.shape[0]
    count = max(1, int(round(quantile * n)))
    ranked = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    order = jnp.argsort(-ranked, stable=True)  # best first
    rank = jnp.argsort(order, stable=True)
    bottom = rank >= n - count
    k_pick, k_coin = jax.random.split(key)
    donors = order[jax.random.randint(k_pick, (n,), 0, count)]
    source = jnp.where(bottom, donors, jnp.arange(n)).astype(jnp.int32)
    leaves, treedef = jax.tree.flatten(hparams)
    coins = jax.random.bernoulli(k_coin, 0.5, (len(leaves), n))
    new_leaves = []
    for coin, leaf, low, high in zip(
        coins, leaves, jax.tree.leaves(lo), jax.tree.leaves(hi), strict=True
    ):
        factor = jnp.where(coin, factors[1], factors[0])
        explored = jnp.clip(leaf[source] * factor, low, high)
        new_leaves.append(jnp.where(bottom, explored, leaf))
    return source, jax.tree.unflatten(treedef, new_leaves)


class PBTOptimizer:
    """Population-based training's rule applied to one agent's history.

    The last ``history`` evaluations (score, hyperparameters) are the
    population. If the newest score ranks in the bottom ``quantile``, the
    hyperparameters of a top-``quantile`` entry are copied and perturbed
    (``* 0.8`` or ``* 1.25`` each); otherwise the current ones are explored
    (``* exp(explore * N(0, 1))`` in log space, ``+ explore * (hi - lo) *
    N(0, 1)`` otherwise). Always clipped to ``bounds``.
    """

    def __init__(
        self,
        bounds: dict[str, tuple[float, float]],
        *,
        log_scale: Iterable[str] | None = None,
        history: int = 20,
        quantile: float = 0.2,
        factors: tuple[float, float] = (0.8, 1.25),
        explore: float = 0.1,
        min_history: int = 5,
        seed: int = 0,
    ):
        _check_bounds(bounds, "PBTOptimizer")
        if not 0 < quantile <= 0.5:
            raise ValueError(
                f"PBTOptimizer.quantile: expected (0, 0.5], got {quantile}"
            )
        self.bounds = dict(bounds)
        self.log = _log_names(bounds, log_scale)
        self.history_size = history
        self.quantile = quantile
        self.factors = factors
        self.explore = explore
        self.min_history = min_history
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self.history: list[tuple[float, dict]] = []
        self.last_action = "none"

    def suggest(self, hyperparams: dict, record: dict) -> dict:
        score = float(record["primary_score"])
        self.history.append((score, dict(hyperparams)))
        self.history = self.history[-self.history_size :]
        if len(self.history) < self.min_history:
            self.last_action = "warmup"
            return hyperparams
        scores = np.array([s for s, _ in self.history], np.float64)
        scores = np.where(np.isnan(scores), -np.inf, scores)
        count = max(1, int(round(self.quantile * len(scores))))
        order = np.argsort(-scores, kind="stable")
        rank = np.argsort(order, kind="stable")[-1]  # rank of the newest
        new = dict(hyperparams)
        if rank >= len(scores) - count:
            donor = self.history[order[self.rng.integers(count)]][1]
            for name in self.bounds:
                factor = self.factors[int(self.rng.integers(2))]
                new[name] = donor[name] * factor
            self.last_action = "exploit"
        else:
            for name, (lo, hi) in self.bounds.items():
                noise = self.rng.normal()
                if name in self.log:
                    new[name] = new[name] * math.exp(self.explore * noise)
                else:
                    new[name] = new[name] + self.explore * (hi - lo) * noise
            self.last_action = "explore"
        for name, (lo, hi) in self.bounds.items():
            new[name] = float(min(max(new[name], lo), hi))
        return new

    def on_improvement(self, record: dict) -> None:
        pass

    def on_plateau(self, record: dict) -> None:
        pass
