"""Normalizers as pure pieces: running mean / variance, reward scaling.

Both are ``flax.struct`` states changed by pure functions, so they sit inside
any compiled program: a rollout ``lax.scan``, a ``vmap`` over seeds or
environments, a ``shard_map`` over devices (``axis_name`` merges the moments of
every device's batch).

**Running mean and variance** (``RunningStats``): the exact moments of every
sample seen, merged batch by batch with the parallel update of Chan, Golub &
LeVeque (1979) — Welford's (1962) update is its one-sample case:

    n = n_a + n_b,   d = mean_b - mean_a
    mean = mean_a + d * n_b / n
    var  = (var_a n_a + var_b n_b + d^2 n_a n_b / n) / n      (population variance)

It starts empty (``count = 0``, ``var = 1``, so normalizing before any update
leaves observations centred on 0 at scale 1); unlike the baselines /
tensor-optix ``RunningMeanStd`` there is no ``1e-4`` pseudo-count, so the
moments equal NumPy's ``mean`` / ``var`` of the samples.

**Reward scaling** (``RewardScaleState``): rewards are divided by the running
standard deviation of the discounted return, not shifted (the sign of a reward
is kept) — the scheme of OpenAI baselines' ``VecNormalize`` (and tensor-optix's
``RewardNormalizer``; Engstrom et al. 2020, "Implementation Matters in Deep
Policy Gradients", ICLR, call it reward scaling):

    ret   <- gamma * ret + r          (per environment)
    stats <- update(stats, ret)
    r'    =  clip(r / sqrt(var(ret) + eps), -clip, clip)
    ret   <- ret * (1 - done)
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import struct

__all__ = [
    "RewardScaleState",
    "RunningStats",
    "reward_scale_init",
    "reward_scale_rollout",
    "reward_scale_step",
    "running_stats_init",
    "running_stats_merge",
    "running_stats_normalize",
    "running_stats_update",
]


@struct.dataclass
class RunningStats:
    """Mean and (population) variance of every sample seen, and their count."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array
    """Samples seen (float32, so long runs do not overflow an int32)."""


def running_stats_init(shape=(), dtype=jnp.float32) -> RunningStats:
    """Empty statistics for samples of ``shape`` (``()`` for scalars)."""
    return RunningStats(
        mean=jnp.zeros(shape, dtype),
        var=jnp.ones(shape, dtype),
        count=jnp.zeros((), jnp.float32),
    )


def running_stats_merge(a: RunningStats, b: RunningStats) -> RunningStats:
    """The statistics of the union of two sample sets (Chan et al. 1979)."""
    chex.assert_equal_shape([a.mean, b.mean])
    total = a.count + b.count
    safe = jnp.maximum(total, 1e-30)
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / safe)
    m2 = a.var * a.count + b.var * b.count + delta**2 * (a.count * b.count / safe)
    empty = total == 0
    return RunningStats(
        mean=jnp.where(empty, a.mean, mean).astype(a.mean.dtype),
        var=jnp.where(empty, a.var, m2 / safe).astype(a.var.dtype),
        count=total,
    )


def running_stats_update(
    stats: RunningStats, batch: jax.Array, axis_name=None
) -> RunningStats:
    """Merge a batch ``[..., *shape]`` (every leading axis is samples).

    With ``axis_name`` (inside ``shard_map`` / ``vmap`` with that axis name),
    the batch is the union of every member's batch along the axis: the moments
    are reduced with ``psum`` exactly, so every member ends with the same
    statistics.
    """
    feature = stats.mean.shape
    batch = jnp.asarray(batch, stats.mean.dtype)
    if batch.ndim < len(feature) or batch.shape[batch.ndim - len(feature) :] != feature:
        raise ValueError(
            f"running_stats_update: batch shape {batch.shape} must end in the "
            f"statistics' shape {feature}"
        )
    flat = batch.reshape((-1, *feature))
    n = jnp.asarray(flat.shape[0], jnp.float32)
    total = flat.sum(0)
    if axis_name is not None:
        n = jax.lax.psum(n, axis_name)
        total = jax.lax.psum(total, axis_name)
    mean = total / jnp.maximum(n, 1.0)
    m2 = jnp.square(flat - mean).sum(0)
    if axis_name is not None:
        m2 = jax.lax.psum(m2, axis_name)
    var = m2 / jnp.maximum(n, 1.0)
    return running_stats_merge(stats, RunningStats(mean=mean, var=var, count=n))


def running_stats_normalize(
    stats: RunningStats, x: jax.Array, clip: float = 10.0, eps=1e-8
):
    """``clip((x - mean) / sqrt(var + eps), -clip, clip)`` (``clip=inf``: none)."""
    return jnp.clip((x - stats.mean) / jnp.sqrt(stats.var + eps), -clip, clip)


@struct.dataclass
class RewardScaleState:
    ret: jax.Array
    """The running discounted return of each environment, ``[num_envs]``."""
    stats: RunningStats
    """Running statistics of ``ret`` (scalar)."""


def reward_scale_init(num_envs: int) -> RewardScaleState:
    """Zero returns for ``num_envs`` environments, empty statistics."""
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(
            f"reward_scale_init: num_envs must be an int >= 1, got {num_envs!r}"
        )
    return RewardScaleState(
        ret=jnp.zeros(num_envs, jnp.float32), stats=running_stats_init(())
    )


def reward_scale_step(
    state: RewardScaleState,
    reward: jax.Array,
    done: jax.Array,
    gamma: float = 0.99,
    clip: float = 10.0,
    eps: float = 1e-8,
    axis_name=None,
):
    """One environment step: ``reward, done [num_envs]`` -> ``(state, scaled)``.

    ``done`` is the episode end (terminated or truncated): the running return
    restarts there. ``axis_name`` pools the return statistics over a mapped
    axis (the environments of every device).
    """
    chex.assert_shape([reward, done], state.ret.shape)
    reward = jnp.asarray(reward, jnp.float32)
    ret = state.ret * gamma + reward
    stats = running_stats_update(state.stats, ret, axis_name)
    scaled = jnp.clip(reward / jnp.sqrt(stats.var + eps), -clip, clip)
    ret = jnp.where(jnp.asarray(done, bool), 0.0, ret)
    return RewardScaleState(ret=ret, stats=stats), scaled


def reward_scale_rollout(
    state: RewardScaleState,
    rewards: jax.Array,
    dones: jax.Array,
    gamma: float = 0.99,
    clip: float = 10.0,
    eps: float = 1e-8,
    axis_name=None,
):
    """``reward_scale_step`` over a rollout ``[T, num_envs]`` (one ``lax.scan``)."""
    chex.assert_rank([rewards, dones], 2)

    def body(state, step):
        reward, done = step
        return reward_scale_step(state, reward, done, gamma, clip, eps, axis_name)

    return jax.lax.scan(body, state, (rewards, dones))
