"""Shared pieces of the bandit algorithms: the NamedTuple, checks, top-k, sums."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BanditAlgorithm", "top_k_indices"]


class BanditAlgorithm(NamedTuple):
    """A bandit algorithm as pure functions (optax style).

    Fields:
      default_params: a ``flax.struct.dataclass`` of float32 arrays (the prior,
        ``gamma`` ...). Every number lives here, so a sweep is a ``vmap`` over
        params and never a recompile.
      init: ``init(params, batch_shape=()) -> state``; all zeros = no data.
      sample: ``sample(key, state, params) -> [..., K]`` posterior draws.
      select: ``select(key, state, params, k=None) -> int32 [...]`` (or
        ``[..., k]`` for a static ``k``: the top k of one posterior draw).
        Linear TS takes the contexts: ``select(key, state, params, contexts, k=None)``.
      update: ``update(key, state, arms, rewards, params) -> state``; ``arms`` and
        ``rewards`` are ``[...]`` (one observation per bandit) or ``[..., M]``.
      posterior_mean: ``posterior_mean(state, params) -> [..., K]``.
    """

    default_params: Any
    init: Callable
    sample: Callable
    select: Callable
    update: Callable
    posterior_mean: Callable


def is_concrete(*trees) -> bool:
    """True when no leaf is a tracer (an eager call: values can be checked)."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


def check_positive(name: str, where: str, value) -> None:
    """Raise if a concrete ``value`` has an entry that is not > 0 and finite."""
    if not is_concrete(value):
        return
    arr = np.asarray(value)
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        raise ValueError(
            f"{where}: {name} must be > 0 and finite, got {arr[bad].reshape(-1)[0]!r}"
        )


def check_gamma(where: str, gamma) -> None:
    """Raise if a concrete discount ``gamma`` is outside (0, 1]."""
    if not is_concrete(gamma):
        return
    arr = np.asarray(gamma)
    bad = ~((arr > 0) & (arr <= 1))
    if bad.any():
        raise ValueError(
            f"{where}: params.gamma (discount) must be in (0, 1], got "
            f"{arr[bad].reshape(-1)[0]!r}"
        )


def check_num_arms(where: str, num_arms) -> int:
    if isinstance(num_arms, bool) or not isinstance(num_arms, int | np.integer):
        raise TypeError(f"{where}: num_arms must be an int, got {num_arms!r}")
    if num_arms < 1:
        raise ValueError(f"{where}: num_arms must be >= 1, got {num_arms}")
    return int(num_arms)


def check_choice(where: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{where}: {name} must be one of {choices}, got {value!r}")


def batch_shape_of(where: str, stat: jax.Array, num_arms: int) -> tuple[int, ...]:
    """Batch shape of a ``[..., K]`` state leaf, checking ``K``."""
    if stat.ndim < 1 or stat.shape[-1] != num_arms:
        raise ValueError(
            f"{where}: state leaves must have shape batch_shape + ({num_arms},), got "
            f"{stat.shape}"
        )
    return stat.shape[:-1]


def check_batch_shape(where: str, batch_shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in batch_shape)
    except TypeError:
        raise TypeError(
            f"{where}: batch_shape must be a tuple of ints, got {batch_shape!r}"
        ) from None
    if any(d < 0 for d in shape):
        raise ValueError(f"{where}: batch_shape must be non-negative, got {shape}")
    return shape


def observations(
    where: str, arms, rewards, batch_shape: tuple[int, ...], num_arms: int
) -> tuple[jax.Array, jax.Array]:
    """Validate ``arms``/``rewards`` and bring them to ``batch_shape + (M,)``.

    ``[...]`` (one observation per bandit) becomes ``[..., 1]``.
    """
    arms = jnp.asarray(arms)
    rewards = jnp.asarray(rewards)
    if not jnp.issubdtype(arms.dtype, jnp.integer):
        raise TypeError(f"{where}: arms must be integers, got dtype {arms.dtype}")
    if arms.shape != rewards.shape:
        raise ValueError(
            f"{where}: arms and rewards must have the same shape, got {arms.shape} "
            f"and {rewards.shape}"
        )
    n = len(batch_shape)
    if arms.shape == batch_shape:
        arms, rewards = arms[..., None], rewards[..., None]
    elif not (arms.ndim == n + 1 and arms.shape[:n] == batch_shape):
        raise ValueError(
            f"{where}: arms/rewards must have shape batch_shape {batch_shape} (one "
            f"observation per bandit) or batch_shape + (M,), got {arms.shape}"
        )
    if is_concrete(arms) and arms.size:
        lo, hi = int(arms.min()), int(arms.max())
        if lo < 0 or hi >= num_arms:
            raise ValueError(
                f"{where}: arms must be in [0, {num_arms}), got values in [{lo}, {hi}]"
            )
    return arms.astype(jnp.int32), rewards.astype(jnp.float32)


def arm_sums(arms: jax.Array, values: jax.Array, num_arms: int) -> jax.Array:
    """``out[..., a] = sum_m values[..., m] * (arms[..., m] == a)``: duplicates add.

    A one-hot contraction ``[..., M] x [..., M, K]``; out-of-range arms (possible
    only under jit) contribute nothing.
    """
    one_hot = arms[..., None] == jnp.arange(num_arms, dtype=arms.dtype)
    return jnp.sum(jnp.where(one_hot, values[..., None], 0.0), axis=-2)


def check_k(where: str, k, num_arms: int) -> None:
    if k is None:
        return
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(
            f"{where}: k must be a static int or None, got {k!r} (under jit, mark it "
            "static: jax.jit(algo.select, static_argnames='k'))"
        )
    if not 1 <= k <= num_arms:
        raise ValueError(f"{where}: k must be in [1, num_arms={num_arms}], got {k}")


def top_k_indices(scores: jax.Array, k: int | None) -> jax.Array:
    """Indices of the largest ``scores`` along the last axis, best first.

    ``k=None`` gives the argmax, int32 ``[...]``; an int ``k`` gives ``[..., k]``
    (distinct arms; ties go to the lower index). Small ``k`` uses repeated masked
    argmax, which is much cheaper on CPU than ``lax.top_k`` for few arms.
    """
    if k is None:
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    if k > 8:
        return jax.lax.top_k(scores, k)[1].astype(jnp.int32)
    # -inf is a valid score (never chosen before finite ones); NaN-free inputs.
    lowest = jnp.finfo(scores.dtype).min
    scores = jnp.maximum(scores, lowest)
    positions = jnp.arange(scores.shape[-1], dtype=jnp.int32)
    chosen = []
    for _ in range(k):
        best = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        chosen.append(best)
        scores = jnp.where(positions == best[..., None], -jnp.inf, scores)
    return jnp.stack(chosen, axis=-1)
