"""Several metrics per evaluation, combined into one reward.

Each metric has a goal (maximize or minimize), a weight and optional bounds. With
bounds, a value is normalized to [0, 1] with 1 the best end::

    maximize: (v - min) / (max - min)        minimize: (max - v) / (max - min)

clipped to [0, 1]. Without bounds the raw value is used (negated when minimized).
The reward is the weighted sum ``sum_i w_i * normalized_i``. A failed evaluation (an
error, a timeout, a missing metric or any NaN) gets ``failure_reward``, the worst
reward: 0 when every metric is bounded, otherwise the value the config names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp

__all__ = ["MetricSpec", "RewardSpec"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``goal`` is "maximize" or "minimize"; bounds are optional."""

    name: str
    goal: str = "maximize"
    weight: float = 1.0
    min: float | None = None
    max: float | None = None

    def __post_init__(self):
        where = f"metrics.{self.name}"
        if self.goal not in ("maximize", "minimize"):
            raise ValueError(
                f"{where}.goal: expected 'maximize' or 'minimize', got {self.goal!r}"
            )
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(
                f"{where}.weight: expected a finite number >= 0, got {self.weight}"
            )
        if (self.min is None) != (self.max is None):
            raise ValueError(f"{where}: give both 'min' and 'max', or neither")
        if self.min is not None and not self.min < self.max:
            raise ValueError(
                f"{where}: 'min' ({self.min}) must be below 'max' ({self.max})"
            )

    @property
    def bounded(self) -> bool:
        return self.min is not None

    def normalize_float(self, value: float) -> float:
        """``normalize`` of one Python float, in plain Python (no array dispatch:
        the host loop scores every evaluation with it)."""
        if self.bounded:
            z = (value - self.min) / (self.max - self.min)
            if self.goal == "minimize":
                z = 1.0 - z
            return min(max(z, 0.0), 1.0)
        return value if self.goal == "maximize" else -value

    def normalize(self, value):
        """Normalized value (1 = best end); ``value`` is a JAX array or a number."""
        if self.bounded:
            z = (value - self.min) / (self.max - self.min)
            if self.goal == "minimize":
                z = 1.0 - z
            return jnp.clip(z, 0.0, 1.0)
        return value if self.goal == "maximize" else -value


@dataclass(frozen=True)
class RewardSpec:
    """The weighted combination of several metrics into one reward."""

    metrics: tuple[MetricSpec, ...]
    failure_reward: float = 0.0

    @classmethod
    def build(
        cls, metrics: Mapping[str, MetricSpec], failure_reward: float | None = None
    ) -> RewardSpec:
        specs = tuple(metrics.values())
        if not specs:
            raise ValueError("metrics: name at least one metric")
        if sum(m.weight for m in specs) <= 0:
            raise ValueError("metrics: at least one weight must be positive")
        if failure_reward is None:
            unbounded = [m.name for m in specs if not m.bounded]
            if unbounded:
                raise ValueError(
                    f"metrics {unbounded} have no min/max, so the worst reward is "
                    "unknown: give them bounds or set objective.failure_reward"
                )
            failure_reward = 0.0
        return cls(specs, float(failure_reward))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    @property
    def best_reward(self) -> float | None:
        """The largest reachable reward, when every metric is bounded."""
        if all(m.bounded for m in self.metrics):
            return float(sum(m.weight for m in self.metrics))
        return None

    def combine(self, values: Mapping[str, jax.Array]) -> jax.Array:
        """Reward from a dict of metric arrays, inside compiled programs.

        Where any metric is NaN (a failed evaluation) the reward is ``failure_reward``.
        """
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ValueError(
                f"the objective returned {sorted(values)}, missing metrics {missing}"
            )
        total, failed = 0.0, False
        for m in self.metrics:
            v = jnp.asarray(values[m.name], jnp.float32)
            total = total + m.weight * m.normalize(v)
            failed = failed | ~jnp.isfinite(v)
        return jnp.where(failed, self.failure_reward, total)

    def combine_one(self, values: Mapping[str, float]) -> float:
        """Reward of one host-side evaluation; raises ValueError on a bad result."""
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ValueError(f"result is missing metrics {missing}")
        total = 0.0
        for m in self.metrics:
            v = values[m.name]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"metric {m.name!r} is not a number: {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"metric {m.name!r} is not finite: {v}")
            total += m.weight * m.normalize_float(float(v))
        return total
