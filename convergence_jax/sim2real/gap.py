"""The sim-to-real gap: returns, and distances between state-visitation samples.

``rollout`` runs a policy on a gymnax environment (one ``EnvParams`` for every
environment, or one per environment) for a fixed number of steps and keeps the
first episode of each environment; ``episode_returns`` sums its rewards.
``return_gap(real, sim)`` is the mean return on the real system minus the mean
return in simulation (negative: the policy does worse on the real system).

Distances between two sets of visited states (``[N, d]`` samples, optionally
masked so that they can be computed under ``jit`` on fixed shapes):

* ``mmd2`` — squared maximum mean discrepancy with a Gaussian kernel (the biased
  V-statistic of Gretton et al. 2012, Eq. 5), bandwidth by the median heuristic
  unless given;
* ``wasserstein_1d`` / ``wasserstein_per_dim`` — the 1-Wasserstein distance
  between weighted empirical distributions, ``int |F(t) - G(t)| dt``, per state
  dimension (what ``scipy.stats.wasserstein_distance`` computes).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "Trajectory",
    "episode_returns",
    "mmd2",
    "return_gap",
    "rollout",
    "visited_states",
    "wasserstein_1d",
    "wasserstein_per_dim",
]


class Trajectory(NamedTuple):
    """A batch of rollouts, time-major: leaves ``[num_steps, num_envs, ...]``."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    """The observation each step led to, before any reset (gymnax's
    ``final_observation``): what system identification needs."""
    done: jax.Array
    valid: jax.Array
    """True up to and including the step that ended each environment's first
    episode."""


@partial(jax.jit, static_argnames=("env", "act", "num_envs", "num_steps", "batched"))
def rollout(
    key: jax.Array,
    env,
    env_params,
    act: Callable[[jax.Array, jax.Array], jax.Array],
    num_envs: int,
    num_steps: int,
    batched: bool = False,
) -> Trajectory:
    """Run ``act(obs [num_envs, d], key) -> actions`` for ``num_steps`` steps.

    ``env_params`` is one ``EnvParams`` for all environments, or (``batched``)
    one per environment, leaves ``[num_envs]`` (e.g. from ``sample_params``).
    ``act`` must be hashable (a function, not a fresh lambda per call, to reuse
    the compiled program).
    """
    params_axis = 0 if batched else None
    k_reset, k_run = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, params_axis))(
        jax.random.split(k_reset, num_envs), env_params
    )

    def step(carry, key):
        obs, state, alive = carry
        k_act, k_env = jax.random.split(key)
        action = act(obs, k_act)
        next_obs, state, reward, terminated, truncated, info = jax.vmap(
            env.step, in_axes=(0, 0, 0, params_axis)
        )(jax.random.split(k_env, num_envs), state, action, env_params)
        done = jnp.logical_or(terminated, truncated)
        out = Trajectory(
            obs=obs,
            action=action,
            reward=reward.astype(jnp.float32),
            next_obs=info["final_observation"],
            done=done,
            valid=alive,
        )
        return (next_obs, state, jnp.logical_and(alive, ~done)), out

    alive = jnp.ones(num_envs, bool)
    _, traj = jax.lax.scan(
        step, (obs, state, alive), jax.random.split(k_run, num_steps)
    )
    return traj


def episode_returns(traj: Trajectory) -> jax.Array:
    """``[num_envs]``: the return of each environment's first episode (truncated
    at ``num_steps`` if it had not ended)."""
    return jnp.sum(traj.reward * traj.valid, axis=0)


def visited_states(traj: Trajectory) -> tuple[jax.Array, jax.Array]:
    """``(states [T * E, d], mask [T * E])``: observations of the first episodes."""
    obs = traj.obs.reshape(-1, traj.obs.shape[-1])
    return obs, traj.valid.reshape(-1)


def return_gap(real_returns: jax.Array, sim_returns: jax.Array) -> jax.Array:
    """Mean return on the real system minus mean return in simulation."""
    return jnp.mean(jnp.asarray(real_returns, jnp.float32)) - jnp.mean(
        jnp.asarray(sim_returns, jnp.float32)
    )


def _weights(n: int, mask: Any) -> jax.Array:
    w = jnp.ones(n, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    return w / jnp.maximum(w.sum(), 1e-12)


@jax.jit
def mmd2(
    x: jax.Array,
    y: jax.Array,
    x_mask: jax.Array | None = None,
    y_mask: jax.Array | None = None,
    bandwidth: float | jax.Array | None = None,
) -> jax.Array:
    """Squared MMD between samples ``x [N, d]`` and ``y [M, d]``.

    ``k(a, b) = exp(-|a - b|^2 / (2 h^2))``; ``MMD^2 = E k(x, x') + E k(y, y')
    - 2 E k(x, y)`` over the (masked) empirical distributions, including the
    diagonal terms (V-statistic: >= 0, and 0 for identical samples). ``h`` is the
    median of the pairwise distances of the pooled samples unless given.
    """
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    x = x[:, None] if x.ndim == 1 else x
    y = y[:, None] if y.ndim == 1 else y
    wx, wy = _weights(x.shape[0], x_mask), _weights(y.shape[0], y_mask)

    def sq_dists(a, b):
        return jnp.maximum(
            jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2 * a @ b.T,
            0.0,
        )

    dxx, dyy, dxy = sq_dists(x, x), sq_dists(y, y), sq_dists(x, y)
    if bandwidth is None:
        pooled = jnp.concatenate([x, y])
        pw = jnp.concatenate([wx > 0, wy > 0])
        d = jnp.sqrt(sq_dists(pooled, pooled))
        pair = pw[:, None] & pw[None, :] & ~jnp.eye(pooled.shape[0], dtype=bool)
        bandwidth = jnp.nanmedian(jnp.where(pair, d, jnp.nan))
        bandwidth = jnp.maximum(bandwidth, 1e-6)
    gamma = 1.0 / (2.0 * jnp.square(bandwidth))
    kxx = wx @ jnp.exp(-gamma * dxx) @ wx
    kyy = wy @ jnp.exp(-gamma * dyy) @ wy
    kxy = wx @ jnp.exp(-gamma * dxy) @ wy
    return jnp.maximum(kxx + kyy - 2.0 * kxy, 0.0)


@jax.jit
def wasserstein_1d(
    x: jax.Array,
    y: jax.Array,
    x_mask: jax.Array | None = None,
    y_mask: jax.Array | None = None,
) -> jax.Array:
    """1-Wasserstein distance between 1-D samples ``x [N]`` and ``y [M]``.

    ``int |F(t) - G(t)| dt`` with ``F``, ``G`` the (masked, equally weighted)
    empirical CDFs; equals ``scipy.stats.wasserstein_distance(x, y)``.
    """
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    wx, wy = _weights(x.shape[0], x_mask), _weights(y.shape[0], y_mask)
    values = jnp.concatenate([x, y])
    order = jnp.argsort(values)
    values = values[order]
    cdf_x = jnp.cumsum(jnp.concatenate([wx, jnp.zeros_like(wy)])[order])
    cdf_y = jnp.cumsum(jnp.concatenate([jnp.zeros_like(wx), wy])[order])
    return jnp.sum(jnp.abs(cdf_x - cdf_y)[:-1] * jnp.diff(values))


@jax.jit
def wasserstein_per_dim(
    x: jax.Array,
    y: jax.Array,
    x_mask: jax.Array | None = None,
    y_mask: jax.Array | None = None,
) -> jax.Array:
    """``[d]``: ``wasserstein_1d`` of each dimension of ``x [N, d]``, ``y [M, d]``."""
    return jax.vmap(wasserstein_1d, in_axes=(1, 1, None, None))(
        jnp.asarray(x), jnp.asarray(y), x_mask, y_mask
    )
