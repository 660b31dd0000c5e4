"""PPO building blocks: small pure functions on one unbatched stream (rlax style).

Each function takes the data of one trajectory (time-major ``[T]``) or one batch of
samples (``[B]``), checks ranks with chex, and says its formula. Batch them with
``jax.vmap``; e.g. GAE over ``[T, num_envs]`` is
``jax.vmap(gae, in_axes=(1, 1, 1, 1, 1, None, None), out_axes=1)``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

__all__ = [
    "clipped_value_loss",
    "entropy_loss",
    "gae",
    "normalize_advantages",
    "ppo_policy_loss",
]


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
    gae_lambda: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Generalized advantage estimation (Schulman et al. 2016) with time limits.

    For steps ``t = 0 .. T-1`` of one environment (auto-resetting, so a trajectory
    may hold several episodes)::

        delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)
        A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1},   A_T = 0
        done_t  = terminated_t or truncated_t,   returns_t = A_t + V(s_t)

    ``s'_t`` is the state the step reached *before* any reset (gymnax 1.0's
    ``info["final_observation"]``). On termination its value is 0 (no future); on
    truncation (a time limit) the step bootstraps from ``V(s'_t)`` (Pardo et al.
    2018, "Time limits in reinforcement learning"); either way the recursion does
    not carry advantages across the episode boundary. For the last step of a
    rollout ``V(s'_{T-1})`` bootstraps the unfinished episode.

    Args:
      rewards, values, next_values: ``[T]`` float; ``values[t] = V(s_t)``,
        ``next_values[t] = V(s'_t)``.
      terminated, truncated: ``[T]`` bool (or 0/1).
      gamma, gae_lambda: discount and GAE lambda (scalars, may be traced).

    Returns:
      ``(advantages [T], returns [T])``.
    """
    chex.assert_rank([rewards, values, next_values, terminated, truncated], 1)
    chex.assert_equal_shape([rewards, values, next_values, terminated, truncated])
    terminated = terminated.astype(values.dtype)
    done = jnp.maximum(terminated, truncated.astype(values.dtype))
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    decay = gamma * gae_lambda * (1.0 - done)

    def backward(next_advantage, step):
        delta, keep = step
        advantage = delta + keep * next_advantage
        return advantage, advantage

    # zeros_like(values[-1]), not zeros(()): the carry then has the same type as
    # the data (e.g. device-varying inside shard_map).
    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(values[-1]), (deltas, decay), reverse=True
    )
    return advantages, advantages + values


def normalize_advantages(advantages: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``(A - mean(A)) / (std(A) + eps)`` over a ``[B]`` batch."""
    chex.assert_rank(advantages, 1)
    return (advantages - advantages.mean()) / (advantages.std() + eps)


def ppo_policy_loss(
    log_prob: jax.Array,
    old_log_prob: jax.Array,
    advantages: jax.Array,
    clip_eps: float | jax.Array,
) -> jax.Array:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimize.

    ``rho = exp(log_prob - old_log_prob)``;
    ``L = -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A))`` over ``[B]``.
    """
    chex.assert_rank([log_prob, old_log_prob, advantages], 1)
    chex.assert_equal_shape([log_prob, old_log_prob, advantages])
    ratio = jnp.exp(log_prob - old_log_prob)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    return -jnp.mean(jnp.minimum(unclipped, clipped))


def clipped_value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    clip_eps: float | jax.Array,
) -> jax.Array:
    """PPO's clipped value loss (as in OpenAI baselines ppo2 and purejaxrl).

    ``V_clip = old_V + clip(V - old_V, -eps, eps)``;
    ``L = 0.5 mean(max((V - R)^2, (V_clip - R)^2))`` over ``[B]``.
    """
    chex.assert_rank([values, old_values, returns], 1)
    chex.assert_equal_shape([values, old_values, returns])
    clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    return 0.5 * jnp.mean(
        jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns))
    )


def entropy_loss(entropy: jax.Array) -> jax.Array:
    """``-mean(H)`` over ``[B]``: minimizing it with a positive coefficient is the
    entropy bonus that keeps the policy exploring (Mnih et al. 2016)."""
    chex.assert_rank(entropy, 1)
    return -jnp.mean(entropy)
