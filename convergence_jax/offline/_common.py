"""The program pieces every offline algorithm shares (BC, TD3+BC, CQL, IQL, BCQ, ...).

An offline algorithm ``X`` is written as (see ``offline/bc.py`` for the smallest one):

1. ``XConfig``, a frozen dataclass of *static* things (hidden sizes, batch size,
   number of updates, number of devices, ...). Its first fields are those of
   ``check_config`` (``num_steps``, ``batch_size``, ``num_devices``,
   ``hidden_sizes``, ``activation``, ``normalize_obs``); call
   ``check_config(config, "XConfig")`` in the factory before anything compiles.
2. ``XHParams``, a ``flax.struct`` dataclass holding *every number* (step sizes,
   discount, loss weights) as arrays, so that a sweep is a ``vmap`` over it and
   never a recompile. ``hparams_from_config(XHParams, config)`` builds the default.
3. A state ``flax.struct`` dataclass that has (at least) ``key`` (a typed PRNG key),
   ``step`` (int32) and ``obs_norm`` (an ``ObsNorm``), and whatever parameters and
   optimizer states the algorithm needs. The state is replicated over devices.
4. ``update_local(state, batch, keys, hparams) -> (state, metrics)``: one gradient
   step on *this device's share* of the global minibatch. ``batch`` is a
   ``Transitions`` with leading axis ``batch_size / num_devices`` (observations
   already normalized, continuous actions already in [-1, 1]); ``keys`` holds one
   PRNG key per example of that share, for any sampling the loss does (policy
   actions, noise). Take gradients with ``dp.value_and_grad`` (they come back
   averaged over devices with ``lax.pmean``), average any batch statistic you need
   with ``dp.pmean``, and return metrics that are local means (they are averaged
   here).
5. ``make_update(config, update_local, prepare)`` turns it into
   ``update(state, data, hparams)``: draws the global minibatch of ``batch_size``
   rows uniformly from the whole dataset with the state's key (the same indices on
   every device), gives each device its contiguous slice of it (and of the
   per-example keys), runs ``update_local`` under ``jax.shard_map`` over the 1-D
   mesh axis ``"devices"``, and averages the metrics. Because the global batch and
   its keys do not depend on the number of devices, N devices compute the same
   update as 1 device, up to the order of floating-point sums.
6. ``make_run(update)`` gives ``run(state, data, hparams, num_steps)``: ``num_steps``
   updates as one ``lax.scan`` returning metrics stacked to ``[num_steps]``.
7. Pack the pure functions in a NamedTuple ``X(config, default_hparams, init,
   update, run, policy, train)`` where ``policy(state, obs [B, obs_dim], key) ->
   environment actions [B, ...]`` (the ``act_fn`` for
   ``offline.evaluate.evaluate_policy`` after ``functools.partial(policy, state)``)
   and ``train(key, data, hparams=None) -> (state, metrics)`` is init + run of
   ``config.num_steps``; ``jax.jit(jax.vmap(train, (0, None)))(keys, data)`` runs
   many seeds on one dataset, and ``jax.vmap(train, (None, None, 0))`` many
   hyperparameters.

The dataset is an argument of every program (never a closed-over constant), so a
new dataset of the same shapes does not recompile. ``check_data`` validates a
dataset against the algorithm's observation size and action spec on the host.

Continuous actions are learned in [-1, 1]^d: ``ActionSpec.to_unit`` maps the
dataset's actions there (clipped a hair inside, so that ``atanh`` of them is
finite) and ``ActionSpec.from_unit`` maps the policy's outputs back into the
environment's box.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from gymnax.environments import spaces as gym_spaces
from jax.sharding import PartitionSpec as P

from convergence_jax.offline.dataset import Transitions, check_transitions
from convergence_jax.rl.networks import ACTIVATIONS

__all__ = [
    "AXIS",
    "ActionSpec",
    "DataParallel",
    "ObsNorm",
    "adam_step",
    "bellman_target",
    "check_config",
    "check_data",
    "check_numbers",
    "check_shapes",
    "check_spec",
    "hparam_grid",
    "env_spec",
    "hparams_from_config",
    "make_run",
    "make_train",
    "make_update",
    "obs_norm_from_data",
    "prepare_batch",
    "sample_batch",
    "soft_update",
    "twin_critic_loss",
]

AXIS = "devices"
UNIT_CLIP = 1.0 - 1e-5
"""Dataset actions are clipped to [-UNIT_CLIP, UNIT_CLIP] in unit space."""


# ------------------------------------------------------------------ specs


class ActionSpec(NamedTuple):
    """What the actions are: ``discrete`` with ``num_actions``, or a continuous box
    of ``action_dim`` dimensions between ``low`` and ``high``."""

    discrete: bool
    num_actions: int | None = None
    action_dim: int | None = None
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    @classmethod
    def make_discrete(cls, num_actions: int) -> ActionSpec:
        return cls(discrete=True, num_actions=int(num_actions))

    @classmethod
    def make_continuous(cls, action_dim: int, low=-1.0, high=1.0) -> ActionSpec:
        low = tuple(float(x) for x in np.broadcast_to(low, (action_dim,)))
        high = tuple(float(x) for x in np.broadcast_to(high, (action_dim,)))
        return cls(discrete=False, action_dim=int(action_dim), low=low, high=high)

    @classmethod
    def from_space(cls, space) -> ActionSpec:
        """From a gymnax ``Discrete`` or ``Box`` action space."""
        if isinstance(space, gym_spaces.Discrete):
            return cls.make_discrete(space.n)
        if isinstance(space, gym_spaces.Box):
            dim = int(np.prod(space.shape))
            return cls.make_continuous(dim, space.low, space.high)
        raise ValueError(
            f"action space {type(space).__name__}: expected Discrete or Box"
        )

    @property
    def size(self) -> int:
        """Network output size: number of actions or action dimensions."""
        return self.num_actions if self.discrete else self.action_dim

    def _center_scale(self):
        low = jnp.asarray(self.low, jnp.float32)
        high = jnp.asarray(self.high, jnp.float32)
        return (high + low) / 2, (high - low) / 2

    def to_unit(self, actions: jax.Array) -> jax.Array:
        """Environment actions ``[..., d]`` -> [-1, 1]^d (identity when discrete)."""
        if self.discrete:
            return actions
        center, scale = self._center_scale()
        return jnp.clip((actions - center) / scale, -UNIT_CLIP, UNIT_CLIP)

    def from_unit(self, actions: jax.Array) -> jax.Array:
        """[-1, 1]^d -> environment actions (identity when discrete)."""
        if self.discrete:
            return actions
        center, scale = self._center_scale()
        return center + scale * actions


def env_spec(env_id: str, **env_kwargs) -> tuple[int, ActionSpec]:
    """``(obs_dim, ActionSpec)`` of a gymnax environment (did-you-mean on typos)."""
    if env_id not in gymnax.registered_envs:
        close = difflib.get_close_matches(env_id, gymnax.registered_envs, 3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown gymnax environment {env_id!r}{hint}")
    env, params = gymnax.make(env_id, **env_kwargs)
    obs_dim = int(np.prod(env.observation_space(params).shape))
    return obs_dim, ActionSpec.from_space(env.action_space(params))


# ------------------------------------------------------------------ validation


def check_config(config, name: str) -> None:
    """Validate the fields every offline config has; raises naming the field."""

    def positive_int(field):
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{field}: expected an int >= 1, got {value!r}")

    for field in ("num_steps", "batch_size", "num_devices"):
        positive_int(field)
    if config.batch_size % config.num_devices:
        raise ValueError(
            f"{name}: batch_size ({config.batch_size}) must be a multiple of "
            f"num_devices ({config.num_devices}); each device takes an equal share "
            "of every minibatch"
        )
    if config.num_devices > jax.device_count():
        raise ValueError(
            f"{name}.num_devices: {config.num_devices} requested, "
            f"{jax.device_count()} available ({jax.devices()[0].platform}); on CPU, "
            "set XLA_FLAGS=--xla_force_host_platform_device_count=N before "
            "importing jax"
        )
    hidden = getattr(config, "hidden_sizes", (1,))
    if (
        not isinstance(hidden, tuple | list)
        or not hidden
        or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden)
    ):
        raise ValueError(f"{name}.hidden_sizes: expected positive ints, got {hidden}")
    activation = getattr(config, "activation", "relu")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"{name}.activation: expected one of {sorted(ACTIVATIONS)}, got "
            f"{activation!r}"
        )


def check_numbers(config, name: str, positive=(), nonnegative=(), unit=()) -> None:
    """Range checks of default numbers: ``> 0``, ``>= 0``, in ``[0, 1]``."""
    for field in positive:
        if not getattr(config, field) > 0:
            raise ValueError(
                f"{name}.{field}: expected > 0, got {getattr(config, field)}"
            )
    for field in nonnegative:
        if not getattr(config, field) >= 0:
            raise ValueError(
                f"{name}.{field}: expected >= 0, got {getattr(config, field)}"
            )
    for field in unit:
        if not 0 <= getattr(config, field) <= 1:
            raise ValueError(
                f"{name}.{field}: expected in [0, 1], got {getattr(config, field)}"
            )


def check_spec(obs_dim: int, action_spec: ActionSpec, name: str) -> None:
    if isinstance(obs_dim, bool) or not isinstance(obs_dim, int) or obs_dim < 1:
        raise ValueError(f"{name}: obs_dim must be an int >= 1, got {obs_dim!r}")
    if not isinstance(action_spec, ActionSpec):
        raise ValueError(
            f"{name}: action_spec must be an offline ActionSpec (e.g. "
            f"ActionSpec.make_discrete(2), env_spec('Pendulum-v1')[1]), got "
            f"{type(action_spec).__name__}"
        )
    if action_spec.size is None or action_spec.size < 1:
        raise ValueError(f"{name}: action_spec has no actions: {action_spec}")


def check_data(
    data: Transitions, obs_dim: int, action_spec: ActionSpec, name: str = "dataset"
) -> Transitions:
    """``check_transitions`` against an algorithm's sizes; canonical dtypes back."""
    if not isinstance(data, Transitions):
        raise ValueError(
            f"{name}: expected an offline.Transitions, got {type(data).__name__}"
        )
    if action_spec.discrete:
        return check_transitions(
            data, obs_dim=obs_dim, num_actions=action_spec.num_actions, name=name
        )
    return check_transitions(
        data, obs_dim=obs_dim, action_dim=action_spec.action_dim, name=name
    )


def check_shapes(data, obs_dim: int, spec: ActionSpec, name: str) -> None:
    """Static shape and dtype checks (work on traced data inside ``jit``)."""
    if not isinstance(data, Transitions):
        raise ValueError(
            f"{name}: expected an offline.Transitions, got {type(data).__name__}"
        )
    n = data.rewards.shape[0] if data.rewards.ndim == 1 else None
    if n is None or n == 0:
        raise ValueError(
            f"{name}.rewards: expected a non-empty [N], got {data.rewards.shape}"
        )
    for field in ("observations", "next_observations"):
        shape = getattr(data, field).shape
        if shape != (n, obs_dim):
            raise ValueError(
                f"{name}.{field}: expected [N, obs_dim] = [{n}, {obs_dim}], got "
                f"{list(shape)}"
            )
    actions = data.actions
    if spec.discrete:
        if actions.shape != (n,) or not jnp.issubdtype(actions.dtype, jnp.integer):
            raise ValueError(
                f"{name}.actions: the algorithm was built for {spec.num_actions} "
                f"discrete actions; expected integer [N] = [{n}], got "
                f"{actions.dtype} {list(actions.shape)}"
            )
    elif actions.shape != (n, spec.action_dim) or not jnp.issubdtype(
        actions.dtype, jnp.floating
    ):
        raise ValueError(
            f"{name}.actions: the algorithm was built for continuous actions of "
            f"{spec.action_dim} dimensions; expected float [N, {spec.action_dim}] = "
            f"[{n}, {spec.action_dim}], got {actions.dtype} {list(actions.shape)}"
        )
    for field in ("terminals", "timeouts"):
        if getattr(data, field).shape != (n,):
            raise ValueError(
                f"{name}.{field}: expected [N] = [{n}], got "
                f"{list(getattr(data, field).shape)}"
            )


def hparams_from_config(cls, config):
    """An ``HParams`` struct whose fields take the config's numbers (float32)."""
    return cls(
        **{
            field: jnp.asarray(getattr(config, field), jnp.float32)
            for field in cls.__dataclass_fields__
        }
    )


def hparam_grid(base, **values) -> Any:
    """``base`` (an HParams, e.g. ``program.default_hparams``) batched over the
    listed values (zip, not product): ``hparam_grid(cql.default_hparams,
    cql_weight=[1.0, 5.0])`` has leaves of shape [2]; vmap ``train`` over it."""
    fields = type(base).__dataclass_fields__
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(
            f"hparam_grid: unknown fields {sorted(unknown)}; known: {sorted(fields)}"
        )
    lengths = {len(v) for v in values.values()}
    if len(lengths) > 1:
        raise ValueError(f"hparam_grid: values must have equal lengths, got {values}")
    n = lengths.pop() if lengths else 1
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,)), base).replace(
        **{k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    )


# ------------------------------------------------------------------ data


@struct.dataclass
class ObsNorm:
    """Observation normalization ``(obs - mean) / std`` (identity: 0 and 1)."""

    mean: jax.Array
    std: jax.Array

    def __call__(self, obs: jax.Array) -> jax.Array:
        return (obs - self.mean) / self.std


def obs_norm_from_data(data: Transitions, enabled: bool) -> ObsNorm:
    """The dataset's observation mean and std (TD3+BC's state normalization,
    std + 1e-3), or the identity when not ``enabled``."""
    dim = data.observations.shape[-1]
    if not enabled:
        return ObsNorm(mean=jnp.zeros(dim), std=jnp.ones(dim))
    return ObsNorm(mean=data.observations.mean(0), std=data.observations.std(0) + 1e-3)


def sample_batch(key: jax.Array, data: Transitions, batch_size: int) -> Transitions:
    """``batch_size`` rows drawn uniformly with replacement (inside the program)."""
    index = jax.random.randint(key, (batch_size,), 0, data.rewards.shape[0])
    return jax.tree.map(lambda x: x[index], data)


def prepare_batch(batch: Transitions, obs_norm: ObsNorm, spec: ActionSpec):
    """Normalized observations, unit-space continuous actions, float rewards."""
    return batch.replace(
        observations=obs_norm(batch.observations),
        next_observations=obs_norm(batch.next_observations),
        actions=spec.to_unit(batch.actions),
        rewards=batch.rewards.astype(jnp.float32),
    )


# ------------------------------------------------------------------ losses


def bellman_target(rewards, terminals, next_values, gamma):
    """``y = r + gamma (1 - terminal) V(s')`` over ``[B]``, without gradient.

    Timeouts are not terminals: a transition cut by a time limit bootstraps from
    ``V(s')`` (Pardo et al. 2018).
    """
    chex.assert_rank([rewards, terminals, next_values], 1)
    chex.assert_equal_shape([rewards, terminals, next_values])
    target = rewards + gamma * (1.0 - terminals.astype(rewards.dtype)) * next_values
    return jax.lax.stop_gradient(target)


def twin_critic_loss(q: jax.Array, target: jax.Array) -> jax.Array:
    """``sum_j mean_i (Q_j(s_i, a_i) - y_i)^2`` for ``q [2, B]``, ``target [B]``."""
    chex.assert_rank([q, target], [2, 1])
    chex.assert_equal_shape_suffix([q, target], 1)
    return jnp.sum(jnp.mean(jnp.square(q - target), -1))


# ------------------------------------------------------------------ parallel


class DataParallel(NamedTuple):
    """Collectives over the ``"devices"`` axis (no-ops on one device)."""

    sharded: bool

    def pmean(self, x):
        return jax.lax.pmean(x, AXIS) if self.sharded else x

    def psum(self, x):
        return jax.lax.psum(x, AXIS) if self.sharded else x

    def value_and_grad(self, fn: Callable, has_aux: bool = False):
        """``jax.value_and_grad(fn)`` w.r.t. the first argument, averaged over
        devices: the gradient of the global-minibatch mean loss. The loss comes
        back averaged too; ``aux`` (with ``has_aux``) stays this device's.

        Inside ``shard_map`` the replicated parameters are device-invariant, and
        the gradient w.r.t. an invariant input comes back already summed over
        devices; differentiating a device-varying copy (``pcast``) gives this
        device's gradient, which ``pmean`` turns into the global one.
        """
        grad_fn = jax.value_and_grad(fn, has_aux=has_aux)

        def wrapped(params, *args, **kwargs):
            if self.sharded:
                params = jax.lax.pcast(params, AXIS, to="varying")
            value, grads = grad_fn(params, *args, **kwargs)
            if has_aux:  # aux stays local (it may hold per-example arrays)
                value = (self.pmean(value[0]), value[1])
            else:
                value = self.pmean(value)
            return value, self.pmean(grads)

        return wrapped


def adam_step(tx: optax.GradientTransformation, grads, opt_state, params, lr):
    """One ``tx`` step (e.g. ``optax.scale_by_adam()``) scaled by a traced step
    size ``lr``: ``params - lr * tx(grads)``. Returns ``(params, opt_state)``."""
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
    return params, opt_state


def soft_update(target, online, tau):
    """Polyak averaging ``target <- (1 - tau) target + tau online``."""
    return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


def make_update(
    config,
    update_local: Callable,
    spec: ActionSpec,
    sample: Callable = sample_batch,
) -> Callable:
    """``update(state, data, hparams) -> (state, metrics)``, data parallel.

    ``sample(key, data, batch_size) -> pytree with leading [batch_size]`` draws the
    global minibatch (default: uniform transitions, then ``prepare_batch``; a
    sequence model can pass its own sampler, which then prepares its batch
    itself). Every device draws the same global batch from the same key and keeps
    its contiguous slice; ``update_local`` sees ``batch_size / num_devices``
    examples and as many per-example keys.
    """
    num_devices = config.num_devices
    sharded = num_devices > 1
    batch_size = config.batch_size
    local_size = batch_size // num_devices
    custom_sample = sample is not sample_batch

    def update_inner(state, data, hparams):
        key, k_sample, k_examples = jax.random.split(state.key, 3)
        batch = sample(k_sample, data, batch_size)
        if not custom_sample:
            batch = prepare_batch(batch, state.obs_norm, spec)
        keys = jax.random.split(k_examples, batch_size)
        if sharded:
            start = jax.lax.axis_index(AXIS) * local_size

            def local(x):
                return jax.lax.dynamic_slice_in_dim(x, start, local_size, 0)

            batch = jax.tree.map(local, batch)
            keys = local(keys)
        new_state, metrics = update_local(state.replace(key=key), batch, keys, hparams)
        metrics = (
            jax.tree.map(lambda x: jax.lax.pmean(x, AXIS), metrics)
            if (sharded)
            else metrics
        )
        return new_state.replace(step=state.step + 1), metrics

    if not sharded:
        return update_inner
    mesh = jax.make_mesh(
        (num_devices,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )
    return jax.shard_map(
        update_inner, mesh=mesh, in_specs=(P(), P(), P()), out_specs=(P(), P())
    )


def make_run(update: Callable, default_hparams) -> Callable:
    """``run(state, data, hparams=None, num_steps) -> (state, metrics [num_steps])``
    as one ``lax.scan``."""

    def run(state, data, hparams=None, num_steps: int = 1):
        hparams = default_hparams if hparams is None else hparams
        if (
            isinstance(num_steps, bool)
            or not isinstance(num_steps, int)
            or (num_steps < 0)
        ):
            raise ValueError(f"run: num_steps must be an int >= 0, got {num_steps!r}")

        def body(state, _):
            return update(state, data, hparams)

        return jax.lax.scan(body, state, None, num_steps)

    return run


def make_train(
    init: Callable,
    run: Callable,
    config,
    default_hparams,
    obs_dim: int,
    spec: ActionSpec,
    name: str = "dataset",
) -> Callable:
    """``train(key, data, hparams=None) -> (state, metrics)``: init + run of
    ``config.num_steps`` updates; jit it, vmap it over keys and hparams. The
    data's shapes are checked first (``check_shapes``)."""

    def train(key, data, hparams=None):
        check_shapes(data, obs_dim, spec, name)
        hparams = default_hparams if hparams is None else hparams
        state = init(key, data, hparams)
        return run(state, data, hparams, config.num_steps)

    return train
