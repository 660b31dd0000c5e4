"""The backoff scheduler: a pure transition function over a small state.

The loop evaluates its agent every ``interval`` windows and feeds each score to
``step``. A score counts as an **improvement** only when the recent window as a
whole beats the best level so far by more than the noise. Over the last
``n <= window`` scores a least-squares line is fitted; its residual standard
deviation is the noise (a rising trend does not inflate it), and the window
mean is the level:

    sigma = max(residual std of the trend fit, noise_floor)
    lower = mean - noise_z * sigma / sqrt(n)

An improvement needs ``lower > best + improvement_margin``; the best level then
becomes the window mean (never a single lucky score). The first score is the
baseline (an improvement, so it is checkpointed, but it sets no level); the
first level and every later claim need three scores (the fit needs one
residual degree of freedom). Every other evaluation is a non-improvement and backs off:

    interval_n = min(interval_{n-1} * backoff_factor, max_interval)

    ACTIVE  --plateau_threshold non-improvements-->  COOLING
    COOLING --dormant_threshold non-improvements-->  DORMANT
    DORMANT --next evaluation-->                     WATCHDOG
    any     --improvement-->                         ACTIVE   (interval reset)
    DORMANT/WATCHDOG --degradation-->                ACTIVE   (interval reset)

**Degradation** (watched once converged): the *upper* bound ``mean + noise_z *
sigma / sqrt(n)`` falls below ``best - max(degradation_threshold * |best|,
improvement_margin)``.

Everything is ``jnp``: ``step`` runs under ``jit``, ``vmap`` (many score streams
at once, as the tests do) and ``lax.scan``; the loop controller jits it once.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

__all__ = [
    "ACTIVE",
    "COOLING",
    "DORMANT",
    "STATE_NAMES",
    "WATCHDOG",
    "BackoffEvent",
    "BackoffParams",
    "BackoffState",
    "Scheduler",
    "backoff_scheduler",
    "trend",
]

ACTIVE, COOLING, DORMANT, WATCHDOG = 0, 1, 2, 3
STATE_NAMES = ("ACTIVE", "COOLING", "DORMANT", "WATCHDOG")


@struct.dataclass
class BackoffParams:
    """The numbers of the scheduler (scalars, or batched under ``vmap``)."""

    base_interval: float = 1.0
    """Windows between evaluations after an improvement (>= 1)."""
    backoff_factor: float = 2.0
    """Interval growth per non-improvement (>= 1)."""
    max_interval: float = 16.0
    """Cap on the interval, in windows."""
    plateau_threshold: int = 3
    """Consecutive non-improvements that make ACTIVE -> COOLING."""
    dormant_threshold: int = 6
    """Consecutive non-improvements that make COOLING -> DORMANT."""
    improvement_margin: float = 0.0
    """Absolute margin the trend's lower bound must beat the best level by."""
    noise_z: float = 2.0
    """Width of the confidence band, in standard errors."""
    noise_floor: float = 0.0
    """Lower bound on the noise standard deviation (score units)."""
    degradation_threshold: float = 0.1
    """Relative drop below the best level that counts as degradation."""


@struct.dataclass
class BackoffState:
    mode: jax.Array
    """ACTIVE, COOLING, DORMANT or WATCHDOG (int32)."""
    interval: jax.Array
    """Windows until the next evaluation (float32; the loop uses max(1, floor))."""
    non_improvements: jax.Array
    """Consecutive evaluations without improvement (int32)."""
    best: jax.Array
    """Best trend level so far (-inf before the first evaluation)."""
    scores: jax.Array
    """The last ``window`` scores, oldest first (ring order kept by shifting)."""
    count: jax.Array
    """Scores seen (int32)."""


class BackoffEvent(NamedTuple):
    """What one ``step`` found; scalars (or batched)."""

    improved: jax.Array
    plateau: jax.Array
    """Entered COOLING on this step."""
    dormant: jax.Array
    """Entered DORMANT on this step."""
    degraded: jax.Array
    level: jax.Array
    """Mean of the recent window."""
    lower: jax.Array
    upper: jax.Array
    slope: jax.Array
    """Trend slope, score units per evaluation."""
    noise: jax.Array
    """sigma: residual std of the trend fit, floored at noise_floor."""


class Scheduler(NamedTuple):
    window: int
    init: callable
    """``init() -> BackoffState``."""
    step: callable
    """``step(state, score, params) -> (state, BackoffEvent)``."""


def trend(scores: jax.Array, count: jax.Array, noise_floor=0.0):
    """OLS line over the newest ``min(count, W)`` entries of ``scores [W]``.

    ``scores`` is oldest-first with the newest at the end. Returns ``(mean,
    slope, sigma, se)``: the window mean, the slope per entry, the residual
    standard deviation (``n - 2`` degrees of freedom, floored at
    ``noise_floor``; infinite while ``n <= 2``) and the standard error of the
    mean, ``sigma / sqrt(n)``.
    """
    size = scores.shape[-1]
    n = jnp.clip(count, 1, size).astype(jnp.float32)
    x = jnp.arange(size, dtype=jnp.float32) - (size - n)  # newest at x = n - 1
    mask = x >= 0
    w = mask.astype(jnp.float32)
    y = jnp.where(mask, scores, 0.0)
    x_mean = jnp.sum(w * x) / n
    y_mean = jnp.sum(w * y) / n
    sxx = jnp.sum(w * (x - x_mean) ** 2)
    slope = jnp.where(sxx > 0, jnp.sum(w * (x - x_mean) * (y - y_mean)), 0.0)
    slope = slope / jnp.where(sxx > 0, sxx, 1.0)
    fit = y_mean + slope * (x - x_mean)
    dof = n - 2.0
    resid_var = jnp.sum(w * (y - fit) ** 2) / jnp.maximum(dof, 1.0)
    # Two points say nothing about the noise: no improvement can be claimed yet.
    sigma = jnp.where(dof > 0, jnp.sqrt(resid_var), jnp.inf)
    sigma = jnp.maximum(sigma, noise_floor)
    return y_mean, slope, sigma, sigma / jnp.sqrt(n)


def backoff_scheduler(window: int = 8) -> Scheduler:
    """The scheduler over the last ``window`` (static, >= 2) evaluation scores."""
    if not isinstance(window, int) or window < 2:
        raise ValueError(
            f"backoff_scheduler: window must be an int >= 2, got {window!r}"
        )

    def init(params: BackoffParams | None = None) -> BackoffState:
        params = BackoffParams() if params is None else params
        return BackoffState(
            mode=jnp.asarray(ACTIVE, jnp.int32),
            interval=jnp.asarray(params.base_interval, jnp.float32),
            non_improvements=jnp.zeros((), jnp.int32),
            best=jnp.asarray(-jnp.inf, jnp.float32),
            scores=jnp.zeros(window, jnp.float32),
            count=jnp.zeros((), jnp.int32),
        )

    def step(state: BackoffState, score, params: BackoffParams):
        score = jnp.asarray(score, jnp.float32)
        scores = jnp.concatenate([state.scores[1:], score[None]])
        count = state.count + 1
        level, slope, sigma, se = trend(scores, count, params.noise_floor)
        lower = level - params.noise_z * se
        upper = level + params.noise_z * se
        # NaN scores (a failed evaluation) never improve; they count as plateau.
        improved = (lower > state.best + params.improvement_margin) & jnp.isfinite(
            score
        )
        improved = improved | (state.count == 0) & jnp.isfinite(score)
        converged = (state.mode == DORMANT) | (state.mode == WATCHDOG)
        allowed_drop = jnp.maximum(
            params.degradation_threshold * jnp.abs(state.best),
            params.improvement_margin,
        )
        degraded = converged & ~improved & (upper < state.best - allowed_drop)
        reset = improved | degraded
        non_improvements = jnp.where(reset, 0, state.non_improvements + 1)
        backed_off = jnp.minimum(
            state.interval * params.backoff_factor, params.max_interval
        )
        interval = jnp.where(reset, params.base_interval, backed_off)
        stalled_mode = jnp.where(
            non_improvements >= params.dormant_threshold,
            jnp.where(converged, WATCHDOG, DORMANT),
            jnp.where(non_improvements >= params.plateau_threshold, COOLING, ACTIVE),
        )
        mode = jnp.where(reset, ACTIVE, stalled_mode).astype(jnp.int32)
        # The baseline (first score) is checkpointed but sets no level: one score
        # carries no noise estimate, so the first level comes with three.
        best = jnp.where(improved & jnp.isfinite(lower), level, state.best)
        new_state = BackoffState(
            mode=mode,
            interval=interval.astype(jnp.float32),
            non_improvements=non_improvements.astype(jnp.int32),
            best=best.astype(jnp.float32),
            scores=scores,
            count=count,
        )
        event = BackoffEvent(
            improved=improved,
            plateau=(mode == COOLING) & (state.mode != COOLING),
            dormant=(mode == DORMANT) & (state.mode != DORMANT),
            degraded=degraded,
            level=level,
            lower=lower,
            upper=upper,
            slope=slope,
            noise=sigma,
        )
        return new_state, event

    return Scheduler(window=window, init=init, step=step)
