"""Baseline policies with the same interface: epsilon-greedy and uniform allocation.

Both keep empirical statistics (``count``, ``reward_sum``; all zeros = no data)
and are useful as the reference that Thompson sampling should beat.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from convergence_jax.bandits._core import (
    BanditAlgorithm,
    arm_sums,
    batch_shape_of,
    check_batch_shape,
    check_gamma,
    check_k,
    check_num_arms,
    is_concrete,
    observations,
    top_k_indices,
)

__all__ = [
    "EmpiricalState",
    "EpsilonGreedyParams",
    "UniformParams",
    "epsilon_greedy",
    "uniform",
]


@struct.dataclass
class EmpiricalState:
    """Empirical statistics, ``[..., K]`` float32."""

    count: jax.Array
    """Discounted number of pulls."""
    reward_sum: jax.Array
    """Discounted sum of rewards."""


@struct.dataclass
class EpsilonGreedyParams:
    epsilon: jax.Array
    """Probability of playing a uniformly random arm (or set of k arms)."""
    gamma: jax.Array
    """Discount in (0, 1] applied to the statistics before each update."""


@struct.dataclass
class UniformParams:
    gamma: jax.Array
    """Discount in (0, 1] of the statistics behind ``posterior_mean``."""


def _empirical(where: str, num_arms: int, gamma_of):
    def init(params, batch_shape=()) -> EmpiricalState:
        check_gamma(f"{where}.init", gamma_of(params))
        shape = check_batch_shape(f"{where}.init", batch_shape) + (num_arms,)
        zeros = jnp.zeros(shape, jnp.float32)
        return EmpiricalState(count=zeros, reward_sum=zeros)

    def update(key, state: EmpiricalState, arms, rewards, params) -> EmpiricalState:
        del key
        check_gamma(f"{where}.update", gamma_of(params))
        batch_shape = batch_shape_of(f"{where}.update", state.count, num_arms)
        arms, rewards = observations(
            f"{where}.update", arms, rewards, batch_shape, num_arms
        )
        gamma = gamma_of(params)
        return EmpiricalState(
            count=gamma * state.count
            + arm_sums(arms, jnp.ones_like(rewards), num_arms),
            reward_sum=gamma * state.reward_sum + arm_sums(arms, rewards, num_arms),
        )

    def posterior_mean(state: EmpiricalState, params) -> jax.Array:
        """Empirical mean reward per arm (0 for arms never played)."""
        del params
        batch_shape_of(where, state.count, num_arms)
        seen = state.count > 0
        return jnp.where(
            seen, state.reward_sum / jnp.where(seen, state.count, 1.0), 0.0
        )

    return init, update, posterior_mean


def epsilon_greedy(num_arms: int) -> BanditAlgorithm:
    """Epsilon-greedy (Sutton & Barto 2018, sec. 2.2).

    With probability ``epsilon`` (per bandit) a uniformly random arm is played,
    otherwise the arm with the best empirical mean; arms never played come first
    (each is tried once), ties are broken at random. ``sample`` returns the
    scores whose argmax is that choice.
    """
    where = "epsilon_greedy"
    num_arms = check_num_arms(where, num_arms)
    default_params = EpsilonGreedyParams(
        epsilon=jnp.asarray(0.1, jnp.float32), gamma=jnp.asarray(1.0, jnp.float32)
    )
    init, update, posterior_mean = _empirical(where, num_arms, lambda p: p.gamma)

    def sample(key, state: EmpiricalState, params: EpsilonGreedyParams):
        if is_concrete(params.epsilon):
            eps = np.asarray(params.epsilon)
            if not np.all((eps >= 0) & (eps <= 1)):
                raise ValueError(
                    f"{where}: params.epsilon must be in [0, 1], got {eps!r}"
                )
        batch_shape = batch_shape_of(where, state.count, num_arms)
        k_explore, k_noise = jax.random.split(key)
        explore = jax.random.uniform(k_explore, batch_shape) < params.epsilon
        noise = jax.random.uniform(k_noise, batch_shape + (num_arms,))
        seen = state.count > 0
        means = state.reward_sum / jnp.where(seen, state.count, 1.0)
        # Rank: untried arms (inf) first, then by mean; noise breaks exact ties.
        greedy = jnp.where(seen, means + 1e-6 * (1.0 + jnp.abs(means)) * noise, jnp.inf)
        return jnp.where(explore[..., None], noise, greedy)

    def select(key, state: EmpiricalState, params: EpsilonGreedyParams, k=None):
        check_k(f"{where}.select", k, num_arms)
        return top_k_indices(sample(key, state, params), k)

    return BanditAlgorithm(
        default_params=default_params,
        init=init,
        sample=sample,
        select=select,
        update=update,
        posterior_mean=posterior_mean,
    )


def uniform(num_arms: int) -> BanditAlgorithm:
    """Uniform allocation: every decision picks arms uniformly at random.

    ``sample`` returns i.i.d. U(0, 1) scores (so the top-k are k distinct random
    arms); ``posterior_mean`` is the empirical mean.
    """
    where = "uniform"
    num_arms = check_num_arms(where, num_arms)
    default_params = UniformParams(gamma=jnp.asarray(1.0, jnp.float32))
    init, update, posterior_mean = _empirical(where, num_arms, lambda p: p.gamma)

    def sample(key, state: EmpiricalState, params: UniformParams):
        del params
        batch_shape = batch_shape_of(where, state.count, num_arms)
        return jax.random.uniform(key, batch_shape + (num_arms,))

    def select(key, state: EmpiricalState, params: UniformParams, k=None):
        check_k(f"{where}.select", k, num_arms)
        return top_k_indices(sample(key, state, params), k)

    return BanditAlgorithm(
        default_params=default_params,
        init=init,
        sample=sample,
        select=select,
        update=update,
        posterior_mean=posterior_mean,
    )
