"""Simulated Bernoulli bandit runs (one ``lax.scan``) and the Lai-Robbins bound."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from convergence_jax.bandits._core import BanditAlgorithm

__all__ = ["bernoulli_kl", "lai_robbins_regret", "simulate_bernoulli"]


def simulate_bernoulli(
    key: jax.Array,
    algo: BanditAlgorithm,
    params,
    means,
    horizon: int,
    num_runs: int | None = None,
) -> jax.Array:
    """Cumulative pseudo-regret of ``algo`` on a Bernoulli bandit.

    Each step selects one arm, draws a reward ``~ Bernoulli(means[arm])`` and
    updates; the regret of a step is ``max(means) - means[arm]``. The run is one
    ``lax.scan`` over ``horizon`` steps (static); jit the call, and ``vmap`` it
    over keys or params (or pass ``num_runs`` to vmap over ``num_runs`` keys).

    Args:
      key: typed PRNG key.
      algo: a ``BanditAlgorithm`` with ``num_arms == len(means)`` (no contexts).
      params: its params.
      means: ``[K]`` success probabilities.
      horizon: number of steps T, static.
      num_runs: optional number of independent runs (static).

    Returns:
      float32 ``[horizon]`` cumulative regret after each step, or
      ``[num_runs, horizon]``.
    """
    means = jnp.asarray(means, jnp.float32)
    if means.ndim != 1:
        raise ValueError(f"simulate_bernoulli: means must be [K], got {means.shape}")
    if not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(
            f"simulate_bernoulli: horizon must be an int >= 1, got {horizon!r}"
        )
    best = jnp.max(means)

    def run(key: jax.Array) -> jax.Array:
        state = algo.init(params)
        leaves = jax.tree.leaves(state)
        if leaves and leaves[0].shape[-1:] != means.shape:
            raise ValueError(
                f"simulate_bernoulli: the algorithm has {leaves[0].shape[-1]} arms, "
                f"means has {means.shape[0]}"
            )

        def step(state, key):
            k_select, k_reward, k_update = jax.random.split(key, 3)
            arm = algo.select(k_select, state, params)
            p = means[arm]
            reward = (jax.random.uniform(k_reward) < p).astype(jnp.float32)
            state = algo.update(k_update, state, arm, reward, params)
            return state, best - p

        _, gaps = jax.lax.scan(step, state, jax.random.split(key, horizon))
        return jnp.cumsum(gaps)

    if num_runs is None:
        return run(key)
    return jax.vmap(run)(jax.random.split(key, num_runs))


def bernoulli_kl(p, q):
    """KL(Bernoulli(p) || Bernoulli(q)) in nats (NumPy, float64)."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, p * np.log(p / q), 0.0)
        b = np.where(p < 1, (1 - p) * np.log((1 - p) / (1 - q)), 0.0)
    return a + b


def lai_robbins_regret(means, horizon: int) -> float:
    """Lai & Robbins (1985) asymptotic regret ``sum_a Delta_a / KL(mu_a, mu*) ln T``.

    The lower bound on the regret of any consistent policy on a Bernoulli bandit,
    which Thompson sampling attains asymptotically (Kaufmann, Korda & Munos 2012).
    """
    means = np.asarray(means, np.float64)
    best = means.max()
    sub = means < best
    gaps = best - means[sub]
    return float(np.sum(gaps / bernoulli_kl(means[sub], best)) * np.log(horizon))
