"""Value-based building blocks (DQN family): small pure functions, rlax style.

Each function takes one unbatched stream: the Q-values of one state (``[A]``), or
the ``n`` consecutive steps of one environment that an n-step target reads
(``[n]``). Batch them with ``jax.vmap``; the DQN program (``rl.dqn``) does.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

__all__ = [
    "double_q_value",
    "n_step_return",
    "q_learning_value",
    "td_loss",
]


def q_learning_value(q_next_target: jax.Array) -> jax.Array:
    """``max_a Q_target(s', a)``: the bootstrap value of Q-learning / DQN
    (Mnih et al. 2015). ``q_next_target`` is ``[A]``; returns a scalar."""
    chex.assert_rank(q_next_target, 1)
    return jnp.max(q_next_target)


def double_q_value(q_next_online: jax.Array, q_next_target: jax.Array) -> jax.Array:
    """Double DQN's bootstrap value (van Hasselt et al. 2016)::

        a* = argmax_a Q_online(s', a),   value = Q_target(s', a*)

    The online network picks the action, the target network values it, which
    removes the max operator's overestimation bias. Both inputs are ``[A]``; ties
    go to the lowest action index (``argmax``). Returns a scalar.
    """
    chex.assert_rank([q_next_online, q_next_target], 1)
    chex.assert_equal_shape([q_next_online, q_next_target])
    return q_next_target[jnp.argmax(q_next_online)]


def n_step_return(
    rewards: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The n-step return of one run of ``n`` consecutive steps, cut at the first
    episode end (Sutton & Barto 2018, §7.1; Hessel et al. 2018, Rainbow).

    For steps ``k = 0 .. n-1`` of one environment, with ``K - 1`` the first step
    that ended an episode (``terminated or truncated``), or ``K = n`` if none did::

        G        = sum_{k < K} gamma^k r_k
        discount = gamma^K (1 - terminated_{K-1})
        target   = G + discount * V(s'_{K-1})

    where ``s'_{K-1}`` is the state step ``K - 1`` reached before any reset
    (gymnax 1.0's ``info["final_observation"]``). Steps after the episode end
    belong to the next episode and are masked out. On termination there is no
    future (discount 0); on truncation (a time limit) the target bootstraps from
    ``V(s'_{K-1})`` (Pardo et al. 2018). With ``n = 1`` this is the one-step
    target ``r + gamma (1 - terminated) V(s')``.

    Args:
      rewards: ``[n]`` float.
      terminated, truncated: ``[n]`` bool (or 0/1).
      gamma: discount (scalar, may be traced).

    Returns:
      ``(G, discount, last)``: the partial return and the bootstrap discount
      (scalars) and the index ``K - 1`` (int32) whose next state is bootstrapped.
    """
    chex.assert_rank([rewards, terminated, truncated], 1)
    chex.assert_equal_shape([rewards, terminated, truncated])
    n = rewards.shape[0]
    done = jnp.logical_or(terminated.astype(bool), truncated.astype(bool))
    # Step k counts while no earlier step ended the episode.
    ended_before = jnp.cumsum(done) - done
    alive = (ended_before == 0).astype(rewards.dtype)
    powers = jnp.asarray(gamma, rewards.dtype) ** jnp.arange(n, dtype=rewards.dtype)
    partial = jnp.sum(alive * powers * rewards)
    last = jnp.where(jnp.any(done), jnp.argmax(done), n - 1).astype(jnp.int32)
    steps = (last + 1).astype(rewards.dtype)
    discount = jnp.asarray(gamma, rewards.dtype) ** steps * (
        1.0 - terminated[last].astype(rewards.dtype)
    )
    return partial, discount, last


def td_loss(q: jax.Array, action: jax.Array, target: jax.Array) -> jax.Array:
    """Half squared TD error of the taken action, ``0.5 (Q(s, a) - y)^2``, with the
    target ``y`` held fixed (``stop_gradient``). ``q`` is ``[A]``, ``action`` and
    ``target`` scalars; returns a scalar."""
    chex.assert_rank(q, 1)
    chex.assert_rank([action, target], 0)
    error = q[action] - jax.lax.stop_gradient(target)
    return 0.5 * jnp.square(error)
