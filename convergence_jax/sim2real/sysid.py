"""System identification: the "real" system's ``EnvParams`` from logged transitions.

Given transitions ``(obs, action, next_obs)`` logged on the real system (``next_obs``
is the observation the step led to, before any reset), find the values of some
``EnvParams`` fields under which the simulator predicts ``next_obs`` best:

    loss(theta) = mean_t  sum_d ((f_theta(obs_t, a_t) - next_obs_t)_d / s_d)^2

with ``s_d`` the standard deviation of ``next_obs - obs`` in the log (so every
dimension counts alike). Two optimizers:

* ``identify_gradient`` — Adam (optax) on the loss, by gradient through the JAX
  dynamics. Positive fields are optimized in log space (a step is a relative
  change, and they stay positive).
* ``identify_evolution`` — the project's genetic algorithm
  (``convergence_jax.evolution.ga``) over a ``SearchSpace`` made from
  ``ParamRanges`` (log-uniform ranges become log genes); no gradient needed.

gymnax detaches the outputs of CartPole's ``step`` (``stop_gradient``), so the
one-step models used here (``DYNAMICS``) restate each environment's transition
from its observation; tests check them against gymnax's own ``step_env`` so the
two cannot drift apart. The state must be recoverable from one observation
(CartPole: the observation is the state; Pendulum: the angle is ``atan2(sin,
cos)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from convergence_jax import evolution
from convergence_jax.sim2real.randomization import (
    DERIVED,
    DOMAINS,
    ParamRanges,
    _check_names,
    _strong,
    check_ranges,
)
from convergence_jax.spaces import SearchSpace

__all__ = [
    "DYNAMICS",
    "SysIdResult",
    "identify_evolution",
    "identify_gradient",
    "sysid_loss",
]


def _cartpole_next_obs(params, obs, action):
    """gymnax CartPole-v1 ``step_env`` (Euler), from the observation = state."""
    x, x_dot, theta, theta_dot = obs[0], obs[1], obs[2], obs[3]
    force = params.force_mag * action - params.force_mag * (1 - action)
    costheta, sintheta = jnp.cos(theta), jnp.sin(theta)
    temp = (force + params.polemass_length * theta_dot**2 * sintheta) / (
        params.total_mass
    )
    thetaacc = (params.gravity * sintheta - costheta * temp) / (
        params.length * (4.0 / 3.0 - params.masspole * costheta**2 / params.total_mass)
    )
    xacc = temp - params.polemass_length * thetaacc * costheta / params.total_mass
    return jnp.stack(
        [
            x + params.tau * x_dot,
            x_dot + params.tau * xacc,
            theta + params.tau * theta_dot,
            theta_dot + params.tau * thetaacc,
        ]
    )


def _pendulum_next_obs(params, obs, action):
    """gymnax Pendulum-v1 ``step_env``, from the observation (cos, sin, theta_dot)."""
    theta = jnp.arctan2(obs[1], obs[0])
    theta_dot = obs[2]
    u = jnp.clip(jnp.reshape(action, ()), -params.max_torque, params.max_torque)
    new_theta_dot = (
        theta_dot
        + (
            3 * params.g / (2 * params.l) * jnp.sin(theta)
            + 3.0 / (params.m * params.l**2) * u
        )
        * params.dt
    )
    new_theta_dot = jnp.clip(new_theta_dot, -params.max_speed, params.max_speed)
    new_theta = theta + new_theta_dot * params.dt
    return jnp.stack([jnp.cos(new_theta), jnp.sin(new_theta), new_theta_dot])


# env name -> next_obs = f(EnvParams, obs [d], action): differentiable one-step models.
DYNAMICS: dict[str, Callable[[Any, jax.Array, jax.Array], jax.Array]] = {
    "CartPole-v1": _cartpole_next_obs,
    "Pendulum-v1": _pendulum_next_obs,
}


class SysIdResult(NamedTuple):
    """An identification: the estimate and how the loss went."""

    params: Any
    """``nominal`` with the identified fields replaced (derived fields recomputed)."""
    values: jax.Array
    """The identified values ``[num_fields]``, in the order of ``names``."""
    loss: jax.Array
    """The loss per optimizer step (gradient) or best loss per generation."""


def _with_values(nominal, env_name: str, names: Sequence[str], values):
    params = _strong(nominal).replace(**{n: values[i] for i, n in enumerate(names)})
    derive = DERIVED.get(env_name, (None, {}))[0]
    return derive(params) if derive is not None else params


def _scale(obs, next_obs, mask):
    w = mask.astype(jnp.float32)[:, None]
    delta = next_obs - obs
    mean = (delta * w).sum(0) / jnp.maximum(w.sum(), 1.0)
    var = (jnp.square(delta - mean) * w).sum(0) / jnp.maximum(w.sum(), 1.0)
    return jnp.sqrt(var) + 1e-6


def sysid_loss(
    values: jax.Array,
    nominal,
    env_name: str,
    names: Sequence[str],
    obs: jax.Array,
    action: jax.Array,
    next_obs: jax.Array,
    mask: jax.Array | None = None,
    scale: jax.Array | None = None,
) -> jax.Array:
    """Mean squared one-step prediction error (see the module docstring).

    ``values [k]`` are the candidate values of ``names``; ``obs, next_obs [N, d]``,
    ``action [N, ...]``, ``mask [N]`` (True = use this transition), ``scale [d]``
    (default: std of ``next_obs - obs`` over the masked log). Pure, differentiable
    in ``values``.
    """
    mask = jnp.ones(obs.shape[0], bool) if mask is None else mask
    scale = _scale(obs, next_obs, mask) if scale is None else scale
    params = _with_values(nominal, env_name, names, values)
    predict = DYNAMICS[env_name]
    pred = jax.vmap(predict, in_axes=(None, 0, 0))(params, obs, action)
    err = jnp.sum(jnp.square((pred - next_obs) / scale), axis=-1)
    w = mask.astype(jnp.float32)
    return (err * w).sum() / jnp.maximum(w.sum(), 1.0)


def _check_log(env_name, names, nominal, obs, action, next_obs, mask, what):
    if env_name not in DYNAMICS:
        raise ValueError(
            f"{what}: no one-step model for {env_name!r}; known: "
            f"{', '.join(DYNAMICS)} (add one to sim2real.DYNAMICS)"
        )
    if not names:
        raise ValueError(f"{what}: name at least one field to identify")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: repeated field names {list(names)}")
    _check_names(names, nominal, env_name, what)
    obs_shape, next_shape = np.shape(obs), np.shape(next_obs)
    if len(obs_shape) != 2 or obs_shape != next_shape:
        raise ValueError(
            f"{what}: expected obs and next_obs of one shape [N, obs_dim], got "
            f"{list(obs_shape)} and {list(next_shape)}"
        )
    if obs_shape[0] < 1:
        raise ValueError(f"{what}: the log is empty")
    if np.shape(action)[:1] != obs_shape[:1]:
        raise ValueError(
            f"{what}: expected actions [N={obs_shape[0]}, ...], got "
            f"{list(np.shape(action))}"
        )
    if mask is not None and np.shape(mask) != obs_shape[:1]:
        raise ValueError(
            f"{what}: expected mask [N={obs_shape[0]}], got {list(np.shape(mask))}"
        )
    for label, x in (("obs", obs), ("next_obs", next_obs)):
        if not isinstance(x, jax.core.Tracer) and not np.all(np.isfinite(x)):
            raise ValueError(f"{what}: {label} has non-finite values")


@partial(jax.jit, static_argnames=("env_name", "names", "num_steps", "positive"))
def _gradient_program(
    init,
    nominal,
    obs,
    action,
    next_obs,
    mask,
    learning_rate,
    *,
    env_name,
    names,
    num_steps,
    positive,
):
    positive = jnp.asarray(positive, bool)
    scale = _scale(obs, next_obs, mask)

    def to_values(z):
        return jnp.where(positive, jnp.exp(z), z)

    def loss_fn(z):
        return sysid_loss(
            to_values(z), nominal, env_name, names, obs, action, next_obs, mask, scale
        )

    tx = optax.adam(learning_rate)
    z0 = jnp.where(positive, jnp.log(jnp.where(positive, init, 1.0)), init)

    def step(carry, _):
        z, opt_state = carry
        loss, grad = jax.value_and_grad(loss_fn)(z)
        updates, opt_state = tx.update(grad, opt_state, z)
        return (optax.apply_updates(z, updates), opt_state), loss

    (z, _), losses = jax.lax.scan(step, (z0, tx.init(z0)), None, num_steps)
    values = to_values(z)
    return _with_values(nominal, env_name, names, values), values, losses


def identify_gradient(
    env_name: str,
    nominal,
    names: Sequence[str],
    obs,
    action,
    next_obs,
    mask=None,
    *,
    init=None,
    num_steps: int = 500,
    learning_rate: float = 0.05,
) -> SysIdResult:
    """Identify ``names`` by Adam on ``sysid_loss`` through the JAX dynamics.

    Starts from ``init`` (default: the values in ``nominal``); positive fields
    (per ``DOMAINS``) move in log space. Returns a ``SysIdResult``. The log is
    validated first; the program is compiled once per (env, names, num_steps,
    shapes) and takes the log, the start and the step size as arguments.
    """
    names = tuple(names)
    _check_log(env_name, names, nominal, obs, action, next_obs, mask, "identify")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"identify: num_steps must be an int >= 1, got {num_steps!r}")
    if not learning_rate > 0:
        raise ValueError(f"identify: learning_rate must be > 0, got {learning_rate}")
    domains = DOMAINS.get(env_name, {})
    positive = tuple(
        n in domains and domains[n][:3] == (0.0, math.inf, False) for n in names
    )
    if init is None:
        init = [float(getattr(nominal, n)) for n in names]
    init = jnp.asarray(init, jnp.float32)
    if init.shape != (len(names),):
        raise ValueError(
            f"identify: init must have one value per name ({len(names)}), got "
            f"shape {list(init.shape)}"
        )
    if any(p and float(v) <= 0 for p, v in zip(positive, init, strict=True)):
        raise ValueError(f"identify: init must be > 0 for positive fields, got {init}")
    mask = jnp.ones(np.shape(obs)[0], bool) if mask is None else jnp.asarray(mask)
    params, values, losses = _gradient_program(
        init,
        nominal,
        jnp.asarray(obs, jnp.float32),
        jnp.asarray(action),
        jnp.asarray(next_obs, jnp.float32),
        mask,
        jnp.asarray(learning_rate, jnp.float32),
        env_name=env_name,
        names=names,
        num_steps=num_steps,
        positive=positive,
    )
    return SysIdResult(params=params, values=values, loss=losses)


def identify_evolution(
    key: jax.Array,
    ranges: ParamRanges,
    nominal,
    obs,
    action,
    next_obs,
    mask=None,
    *,
    num_generations: int = 60,
    population_size: int = 64,
) -> SysIdResult:
    """Identify the fields of ``ranges`` with ``evolution.ga`` within its bounds.

    The search space has one float gene per field (a log gene for a log-uniform
    range); fitness is ``-sysid_loss``. Returns a ``SysIdResult`` whose ``loss``
    is the best loss after each generation.
    """
    env_name, names = ranges.env_name, tuple(ranges.names)
    _check_log(env_name, names, nominal, obs, action, next_obs, mask, "identify")
    check_ranges(ranges, nominal)
    low, high = np.asarray(ranges.low), np.asarray(ranges.high)
    space = SearchSpace.from_dict(
        {
            n: {
                "type": "float",
                "min": float(low[i]),
                "max": float(high[i]),
                "log": bool(ranges.log[i]),
            }
            for i, n in enumerate(names)
        }
    )
    obs = jnp.asarray(obs, jnp.float32)
    next_obs = jnp.asarray(next_obs, jnp.float32)
    action = jnp.asarray(action)
    mask = jnp.ones(obs.shape[0], bool) if mask is None else jnp.asarray(mask)
    scale = _scale(obs, next_obs, mask)

    def fitness(population):
        values = jnp.stack([population[n] for n in names], axis=-1)  # [P, k]
        losses = jax.vmap(
            lambda v: sysid_loss(
                v, nominal, env_name, names, obs, action, next_obs, mask, scale
            )
        )(values)
        return -losses

    ga = evolution.ga(space, population_size=population_size)
    state, metrics = jax.jit(evolution.make_run(ga, fitness, num_generations))(
        key, ga.default_params
    )
    values = jnp.stack([jnp.asarray(state.best_solution[n]) for n in names])
    values = values.astype(jnp.float32).reshape(len(names))
    return SysIdResult(
        params=_with_values(nominal, env_name, names, values),
        values=values,
        loss=-metrics["best_fitness"],
    )
