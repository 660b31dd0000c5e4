"""Domain randomization over gymnax ``EnvParams``.

    ranges = param_ranges("CartPole-v1", length=(0.25, 1.0),
                          masspole=LogUniform(0.05, 0.2))
    batch = sample_params(key, nominal, ranges, 64)      # EnvParams, leaves [64]
    env = DomainRandomization(gymnax_env, ranges)        # a gymnax environment
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, env.default_params)

A ``ParamRanges`` names the randomized fields (static) and holds their bounds as
arrays (traced), so a program that takes the ranges as an argument compiles once
and runs with any bounds. Each field is sampled uniformly, or log-uniformly
(uniform in ``log``) — the usual choice for scale parameters such as masses.

``DomainRandomization`` wraps a gymnax environment: every environment of a
``vmap``-ed batch draws its own physics at reset and again whenever its episode
ends, and its ``EnvParams`` travel in its state, so ``reset`` and ``step`` take the
same ``DRParams`` (nominal parameters + ranges) for the whole batch. PPO trains on
it through ``PPOConfig(env_wrapper=domain_randomization(ranges))``.

**Derived fields.** gymnax's CartPole stores ``total_mass`` (masscart + masspole)
and ``polemass_length`` (masspole * length) as fields of their own; randomizing
``masspole`` or ``length`` without recomputing them gives inconsistent physics, so
``sample_params`` recomputes them, and asking to randomize them directly is an
error.

Bounds are checked on the host before anything compiles: unknown fields (with a
did-you-mean), integer or array fields, low > high, non-finite bounds, bounds
outside the field's valid domain (a mass, length, time step or gravity must stay
positive), and log-uniform ranges that touch 0.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.wrappers.purerl import GymnaxWrapper

__all__ = [
    "DERIVED",
    "DOMAINS",
    "DRParams",
    "DRState",
    "DomainRandomization",
    "LogUniform",
    "ParamRanges",
    "Uniform",
    "check_ranges",
    "domain_randomization",
    "param_ranges",
    "sample_one",
    "sample_params",
]

_POSITIVE = (0.0, math.inf, False)
_NON_NEGATIVE = (0.0, math.inf, True)
_UNIT = (0.0, 1.0, True)

# Valid domain of each physical field: (low, high, low_included); a finite high
# is included. Fields not listed here (thresholds, goal positions, ...) only
# need to be finite.
DOMAINS: dict[str, dict[str, tuple[float, float, bool]]] = {
    "CartPole-v1": {
        name: _POSITIVE
        for name in (
            "gravity",
            "masscart",
            "masspole",
            "length",
            "force_mag",
            "tau",
            "theta_threshold_radians",
            "x_threshold",
        )
    },
    "Pendulum-v1": {
        name: _POSITIVE for name in ("max_speed", "max_torque", "dt", "g", "m", "l")
    },
    "Acrobot-v1": {
        **{
            name: _POSITIVE
            for name in (
                "dt",
                "link_length_1",
                "link_length_2",
                "link_mass_1",
                "link_mass_2",
                "link_moi",
                "max_vel_1",
                "max_vel_2",
            )
        },
        "link_com_pos_1": _UNIT,
        "link_com_pos_2": _UNIT,
        "torque_noise_max": _NON_NEGATIVE,
    },
    "MountainCar-v0": {name: _POSITIVE for name in ("max_speed", "force", "gravity")},
    "MountainCarContinuous-v0": {
        name: _POSITIVE for name in ("max_speed", "power", "gravity")
    },
}


def _cartpole_derived(params):
    return params.replace(
        total_mass=params.masscart + params.masspole,
        polemass_length=params.masspole * params.length,
    )


# Fields an environment stores that are functions of other fields: the function
# recomputes them, the set names them (they cannot be randomized directly).
DERIVED: dict[str, tuple[Callable[[Any], Any], dict[str, str]]] = {
    "CartPole-v1": (
        _cartpole_derived,
        {
            "total_mass": "masscart + masspole",
            "polemass_length": "masspole * length",
        },
    ),
}


@dataclass(frozen=True)
class Uniform:
    """A field sampled uniformly in ``[low, high]``."""

    low: float
    high: float


@dataclass(frozen=True)
class LogUniform:
    """A field sampled log-uniformly in ``[low, high]`` (``0 < low``)."""

    low: float
    high: float


@struct.dataclass
class ParamRanges:
    """Which ``EnvParams`` fields are randomized, and within which bounds.

    ``names``, ``log`` and ``env_name`` are static; ``low`` and ``high`` are
    float32 arrays ``[num_fields]`` (traced under ``jit``: new bounds do not
    recompile). Build it with ``param_ranges``, which validates the bounds; after
    ``.replace(low=..., high=...)`` call ``check_ranges`` yourself (a traced value
    cannot be checked).
    """

    names: tuple[str, ...] = struct.field(pytree_node=False)
    log: tuple[bool, ...] = struct.field(pytree_node=False)
    env_name: str = struct.field(pytree_node=False)
    low: jax.Array
    high: jax.Array


@struct.dataclass
class DRParams:
    """The parameters of a ``DomainRandomization`` environment."""

    nominal: Any
    """The inner environment's ``EnvParams``: fields that are not randomized."""
    ranges: ParamRanges


@struct.dataclass
class DRState:
    """A ``DomainRandomization`` state: the inner state and this env's physics."""

    env_state: Any
    physics: Any
    """This environment's ``EnvParams``, drawn at its last reset."""


# ------------------------------------------------------------------ validation


def _env_and_params(env):
    """``env`` is a gymnax id or an environment -> (env, default EnvParams)."""
    if isinstance(env, str):
        if env not in gymnax.registered_envs:
            close = difflib.get_close_matches(env, gymnax.registered_envs, 3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown gymnax environment {env!r}{hint}")
        return gymnax.make(env)
    return env, env.default_params


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _field_kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | np.integer):
        return "int"
    if isinstance(value, float | np.floating):
        return "float"
    arr = np.asarray(value) if _is_concrete(value) else value
    if getattr(arr, "ndim", 1) != 0:
        return f"array of shape {tuple(arr.shape)}"
    if jnp.issubdtype(arr.dtype, jnp.floating):
        return "float"
    return str(arr.dtype)


def _check_names(names, nominal, env_name: str, what: str):
    fields = {f.name: getattr(nominal, f.name) for f in dataclasses.fields(nominal)}
    derived = DERIVED.get(env_name, (None, {}))[1]
    for name in names:
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), 3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(
                f"{what}: {env_name} has no parameter {name!r}{hint}; its "
                f"EnvParams fields are {', '.join(fields)}"
            )
        if name in derived:
            raise ValueError(
                f"{what}: {env_name}.{name} is derived ({name} = {derived[name]}) "
                "and recomputed from those fields; randomize them instead"
            )
        kind = _field_kind(fields[name])
        if kind != "float":
            raise ValueError(
                f"{what}: {env_name}.{name} is a {kind} field; only scalar float "
                "fields can be randomized"
            )


def check_ranges(ranges: ParamRanges, nominal=None) -> None:
    """Validate concrete bounds (host side); raises ``ValueError`` naming the field.

    With ``nominal`` (an ``EnvParams``), also checks that every name is a scalar
    float field of it.
    """
    if nominal is not None:
        _check_names(ranges.names, nominal, ranges.env_name, "ParamRanges")
    if not (_is_concrete(ranges.low) and _is_concrete(ranges.high)):
        return
    low, high = np.asarray(ranges.low), np.asarray(ranges.high)
    k = len(ranges.names)
    if low.shape != (k,) or high.shape != (k,) or len(ranges.log) != k:
        raise ValueError(
            f"ParamRanges: expected low and high of shape [{k}] (one per name), got "
            f"{list(low.shape)} and {list(high.shape)}"
        )
    domains = DOMAINS.get(ranges.env_name, {})
    for i, name in enumerate(ranges.names):
        lo, hi = float(low[i]), float(high[i])
        where = f"ParamRanges[{name!r}] ({ranges.env_name})"
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{where}: bounds must be finite, got ({lo:g}, {hi:g})")
        if lo > hi:
            raise ValueError(f"{where}: low ({lo:g}) > high ({hi:g})")
        if ranges.log[i] and lo <= 0:
            raise ValueError(
                f"{where}: a log-uniform range needs low > 0, got low = {lo:g}"
            )
        if name in domains:
            d_lo, d_hi, low_included = domains[name]
            below = lo < d_lo if low_included else lo <= d_lo
            above = hi >= d_hi if math.isinf(d_hi) else hi > d_hi
            if below or above:
                left = "[" if low_included else "("
                right = ")" if math.isinf(d_hi) else "]"
                raise ValueError(
                    f"{where}: ({lo:g}, {hi:g}) lies outside the valid domain "
                    f"{left}{d_lo}, {d_hi}{right} of {name}"
                )


def param_ranges(env, **fields) -> ParamRanges:
    """Validated ``ParamRanges`` for a gymnax environment (an id or an env).

    Each keyword is an ``EnvParams`` field and a ``(low, high)`` pair (uniform),
    a ``Uniform(low, high)`` or a ``LogUniform(low, high)``::

        param_ranges("Pendulum-v1", m=LogUniform(0.5, 2.0), l=(0.8, 1.2))
    """
    env, nominal = _env_and_params(env)
    if not fields:
        raise ValueError("param_ranges: give at least one field=(low, high)")
    _check_names(list(fields), nominal, env.name, "param_ranges")
    lows, highs, logs = [], [], []
    for name, spec in fields.items():
        if isinstance(spec, Uniform | LogUniform):
            lo, hi, log = spec.low, spec.high, isinstance(spec, LogUniform)
        else:
            try:
                lo, hi = spec
            except (TypeError, ValueError):
                raise ValueError(
                    f"param_ranges[{name!r}]: expected (low, high), Uniform or "
                    f"LogUniform, got {spec!r}"
                ) from None
            log = False
        try:
            lo, hi = float(lo), float(hi)
        except (TypeError, ValueError):
            raise ValueError(
                f"param_ranges[{name!r}]: bounds must be numbers, got {spec!r}"
            ) from None
        lows.append(lo)
        highs.append(hi)
        logs.append(log)
    ranges = ParamRanges(
        names=tuple(fields),
        log=tuple(logs),
        env_name=env.name,
        low=jnp.asarray(lows, jnp.float32),
        high=jnp.asarray(highs, jnp.float32),
    )
    check_ranges(ranges)
    return ranges


# ------------------------------------------------------------------ sampling


def _strong(params):
    """Every leaf a strongly typed array (float32 / int32), for stable carries."""

    def convert(x):
        if isinstance(x, bool):
            return jnp.asarray(x)
        if isinstance(x, int):
            return jnp.asarray(x, jnp.int32)
        if isinstance(x, float):
            return jnp.asarray(x, jnp.float32)
        x = jnp.asarray(x)
        return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(convert, params)


def sample_one(key: jax.Array, nominal, ranges: ParamRanges):
    """One ``EnvParams``: ``nominal`` with the ranged fields drawn (derived fields
    recomputed). Pure; ``vmap`` it over keys."""
    k = len(ranges.names)
    u = jax.random.uniform(key, (k,), jnp.float32)
    low, high = ranges.low, ranges.high
    log = jnp.asarray(ranges.log, bool)
    safe_low = jnp.where(log, jnp.maximum(low, 1e-30), 1.0)
    safe_high = jnp.where(log, jnp.maximum(high, 1e-30), 1.0)
    log_draw = jnp.exp(jnp.log(safe_low) + u * (jnp.log(safe_high) - jnp.log(safe_low)))
    draw = jnp.where(log, log_draw, low + u * (high - low))
    params = _strong(nominal).replace(
        **{name: draw[i] for i, name in enumerate(ranges.names)}
    )
    derive = DERIVED.get(ranges.env_name, (None, {}))[0]
    return derive(params) if derive is not None else params


def sample_params(key: jax.Array, nominal, ranges: ParamRanges, num: int):
    """``num`` independent ``EnvParams`` (leaves ``[num]``) drawn within ``ranges``.

    Concrete bounds are validated first; ``num`` is static, the bounds are not.
    """
    if not isinstance(num, int) or isinstance(num, bool) or num < 1:
        raise ValueError(f"sample_params: num must be an int >= 1, got {num!r}")
    check_ranges(ranges, nominal)
    keys = jax.random.split(key, num)
    return jax.vmap(sample_one, in_axes=(0, None, None))(keys, nominal, ranges)


# ------------------------------------------------------------------ the wrapper


def _select(pred, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class DomainRandomization(GymnaxWrapper):
    """A gymnax environment whose physics are redrawn at every reset.

    ``reset(key, params)`` draws an ``EnvParams`` within ``params.ranges`` and
    resets the inner environment with it; ``step`` steps with the physics held in
    the state and, when the episode ends (terminated or truncated), draws new
    physics and resets with them. ``params`` is a ``DRParams`` (default:
    ``default_params`` = the inner nominal parameters and the ranges given here);
    it is the same for the whole batch, so ``vmap(reset, in_axes=(0, None))``
    gives every environment its own draw.
    """

    def __init__(self, env, ranges: ParamRanges, nominal=None):
        super().__init__(env)
        nominal = env.default_params if nominal is None else nominal
        if ranges.env_name != env.name:
            raise ValueError(
                f"DomainRandomization: ranges are for {ranges.env_name}, the "
                f"environment is {env.name}"
            )
        check_ranges(ranges, nominal)
        self._default = DRParams(nominal=nominal, ranges=ranges)

    @property
    def default_params(self) -> DRParams:
        return self._default

    def _inner(self, params):
        return params.nominal if isinstance(params, DRParams) else params

    def observation_space(self, params):
        return self._env.observation_space(self._inner(params))

    def action_space(self, params=None):
        return self._env.action_space(None if params is None else self._inner(params))

    def state_space(self, params):
        return self._env.state_space(self._inner(params))

    @partial(jax.jit, static_argnames=("self",))
    def reset(self, key: jax.Array, params: DRParams | None = None):
        params = self._default if params is None else params
        k_physics, k_reset = jax.random.split(key)
        physics = sample_one(k_physics, params.nominal, params.ranges)
        obs, env_state = self._env.reset(k_reset, physics)
        return obs, DRState(env_state=env_state, physics=physics)

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key: jax.Array, state: DRState, action, params=None):
        params = self._default if params is None else params
        k_step, k_physics, k_reset = jax.random.split(key, 3)
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            k_step, state.env_state, action, state.physics
        )
        # The inner step reset with the old physics; redraw and reset again.
        done = jnp.logical_or(terminated, truncated)
        physics = sample_one(k_physics, params.nominal, params.ranges)
        obs_re, state_re = self._env.reset(k_reset, physics)
        new_state = DRState(
            env_state=_select(done, state_re, env_state),
            physics=_select(done, physics, state.physics),
        )
        obs = _select(done, obs_re, obs)
        return obs, new_state, reward, terminated, truncated, info


def domain_randomization(
    ranges: ParamRanges | Mapping[str, Any], nominal=None
) -> Callable:
    """An ``env_wrapper`` for ``rl.PPOConfig``: ``(env, params) -> (DR env, DRParams)``.

    ``ranges`` is a ``ParamRanges`` or the keywords of ``param_ranges``;
    ``nominal`` overrides the inner environment's parameters (default: the ones
    ``gymnax.make`` returned, i.e. those of ``PPOConfig.env_kwargs``).
    """

    def wrap(env, env_params):
        r = ranges
        if not isinstance(r, ParamRanges):
            r = param_ranges(env, **dict(r))
        wrapped = DomainRandomization(
            env, r, env_params if nominal is None else nominal
        )
        return wrapped, wrapped.default_params

    return wrap
