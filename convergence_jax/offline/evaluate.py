"""Evaluate a policy in a gymnax environment, and D4RL's normalized score.

    returns = evaluate_policy(key, "CartPole-v1", act_fn, num_episodes=16)
    score = normalized_score(returns, random_return=22.0, expert_return=500.0)

``act_fn(obs [B, obs_dim], key) -> actions`` is a pure JAX function: ``[B]``
integers for a discrete action space, ``[B, act_dim]`` floats for a continuous
one (e.g. ``functools.partial(program.policy, state)`` of an offline algorithm).
``num_episodes`` environments run side by side (``vmap``) inside one
``lax.while_loop`` until every one of them has finished its first episode (a
terminal or the environment's time limit) or ``max_steps`` steps have passed;
rewards after an environment's episode ended are masked out.

``evaluate_policy`` is traceable: call it inside your own ``jax.jit`` (and
``vmap`` it over keys or over the state ``act_fn`` closes over) to make the
evaluation part of a larger program. Called eagerly it compiles the whole
evaluation as one program for that call.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces as gym_spaces

__all__ = ["evaluate_policy", "normalized_score", "make_env"]


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None):
    """``(env, env_params)`` of a gymnax id; a clear error (with a suggestion) on
    an unknown id."""
    if not isinstance(env_id, str) or env_id not in gymnax.registered_envs:
        close = difflib.get_close_matches(str(env_id), gymnax.registered_envs, 3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown gymnax environment {env_id!r}{hint}")
    return gymnax.make(env_id, **(env_kwargs or {}))


def evaluate_policy(
    key: jax.Array,
    env_id: str,
    act_fn: Callable[[jax.Array, jax.Array], jax.Array],
    num_episodes: int,
    env_kwargs: dict[str, Any] | None = None,
    max_steps: int | None = None,
) -> jax.Array:
    """Undiscounted return of ``num_episodes`` episodes of ``act_fn``: ``[E]``.

    ``key`` seeds the resets, the environment steps and ``act_fn``'s sampling
    (``act_fn`` gets a fresh key each step). ``max_steps`` caps the steps per
    episode (default: the environment's own time limit,
    ``env_params.max_steps_in_episode``). Continuous actions are clipped into
    the action box. See the module docstring.
    """
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, int):
        raise ValueError(
            f"evaluate_policy: num_episodes must be an int, got {num_episodes!r}"
        )
    if num_episodes < 1:
        raise ValueError(
            f"evaluate_policy: num_episodes must be >= 1, got {num_episodes}"
        )
    env, env_params = make_env(env_id, env_kwargs)
    limit = int(env_params.max_steps_in_episode)
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int):
            raise ValueError(
                f"evaluate_policy: max_steps must be an int, got {max_steps!r}"
            )
        if max_steps < 1:
            raise ValueError(
                f"evaluate_policy: max_steps must be >= 1, got {max_steps}"
            )
        limit = min(limit, max_steps)
    space = env.action_space(env_params)
    discrete = isinstance(space, gym_spaces.Discrete)
    if not discrete and not isinstance(space, gym_spaces.Box):
        raise ValueError(
            f"evaluate_policy: {env_id} has a {type(space).__name__} action space; "
            "expected Discrete or Box"
        )
    if not discrete:
        action_shape = tuple(space.shape)
        action_dim = int(np.prod(action_shape))
        low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), action_shape)
        high = jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), action_shape)

    def to_env_actions(actions):
        if discrete:
            if actions.shape != (num_episodes,):
                raise ValueError(
                    f"evaluate_policy: {env_id} has {space.n} discrete actions; "
                    f"act_fn must return [B] = [{num_episodes}] integers, got "
                    f"shape {actions.shape}"
                )
            return actions.astype(jnp.int32)
        if actions.shape not in (
            (num_episodes, action_dim),
            (num_episodes, *action_shape),
        ):
            raise ValueError(
                f"evaluate_policy: {env_id}'s actions have {action_dim} "
                f"dimensions; act_fn must return [B, {action_dim}] = "
                f"[{num_episodes}, {action_dim}], got shape {actions.shape}"
            )
        actions = actions.reshape((num_episodes, *action_shape))
        return jnp.clip(actions.astype(jnp.float32), low, high)

    def observe(obs):
        return obs.reshape(num_episodes, -1).astype(jnp.float32)

    def program(key):
        k_reset, k_loop = jax.random.split(key)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_reset, num_episodes), env_params
        )
        carry = (
            observe(obs),
            env_state,
            jnp.zeros(num_episodes, jnp.float32),
            jnp.zeros(num_episodes, bool),
            jnp.zeros((), jnp.int32),
            k_loop,
        )

        def cond(carry):
            _, _, _, done, t, _ = carry
            return (t < limit) & ~done.all()

        def body(carry):
            obs, env_state, returns, done, t, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            actions = to_env_actions(jnp.asarray(act_fn(obs, k_act)))
            next_obs, env_state, reward, terminated, truncated, _ = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(jax.random.split(k_env, num_episodes), env_state, actions, env_params)
            returns = returns + jnp.where(done, 0.0, reward.astype(jnp.float32))
            done = done | terminated | truncated
            return observe(next_obs), env_state, returns, done, t + 1, key

        return jax.lax.while_loop(cond, body, carry)[2]

    # Under an outer jit this is a nested call (act_fn may close over its tracers).
    return jax.jit(program)(key)


def normalized_score(returns, random_return: float, expert_return: float) -> float:
    """D4RL's normalized score: ``100 * (mean(returns) - random) / (expert -
    random)`` (random policy = 0, expert = 100). ``returns`` is a scalar or an
    array of episode returns (host values)."""
    random_return = float(random_return)
    expert_return = float(expert_return)
    if not np.isfinite(random_return) or not np.isfinite(expert_return):
        raise ValueError(
            f"normalized_score: reference returns must be finite, got random "
            f"{random_return}, expert {expert_return}"
        )
    if expert_return == random_return:
        raise ValueError(
            f"normalized_score: expert_return equals random_return "
            f"({expert_return}); the score is undefined"
        )
    values = np.asarray(returns, np.float64)
    if values.size == 0:
        raise ValueError("normalized_score: no returns (empty array)")
    return float(
        100.0 * (values.mean() - random_return) / (expert_return - random_return)
    )
