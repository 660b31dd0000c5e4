"""The program shared by the continuous-action off-policy learners (SAC, TD3).

One *update* steps every environment ``rollout_steps`` times (each step added to
the replay buffer, ``rl.buffer``), then takes ``gradient_steps`` gradient steps
on minibatches of ``batch_size`` transitions drawn from the buffer. Before
``learning_starts`` environment steps, actions are uniform in the box and
nothing is learned. What a gradient step does (losses, target networks, delays)
is the algorithm's ``learn_step``; everything else lives here once.

Actions are stored and learned in the unit box [-1, 1]^d and mapped into the
environment's box when stepping. Truncation (a time limit) bootstraps from the
state the step reached (gymnax 1.0's ``info["final_observation"]``); termination
does not (the stored ``terminated`` flag zeroes the discount).

**Data parallel.** With ``num_devices = N`` the environments, and with them the
replay buffer (stored per environment), are split over a 1-D device mesh
(``jax.shard_map``); gradients are averaged with ``lax.pmean``. Every minibatch
takes ``batch_size / num_envs`` transitions of *each* environment, drawn with
that environment's own key, and every per-example random draw (policy samples,
smoothing noise) comes from the key of the environment it was drawn from, so
the N-device run computes the same thing as the 1-device run up to the order of
floating-point sums.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from gymnax.environments import spaces as gym_spaces
from gymnax.wrappers import FlattenObservationWrapper, LogWrapper
from jax.sharding import PartitionSpec as P

from convergence_jax.rl._scan import scan_updates
from convergence_jax.rl.buffer import ReplayBuffer, buffer_add, buffer_init
from convergence_jax.rl.networks import ACTIVATIONS

AXIS = "devices"


@struct.dataclass
class OffPolicyTrainState:
    """Everything a SAC or TD3 run needs to continue."""

    params: Any
    """Online parameters: ``{"actor", "critic"}`` (SAC adds ``"log_alpha"``)."""
    target_params: Any
    """Target networks: ``{"critic"}`` (TD3 adds ``"actor"``)."""
    opt_state: Any
    """Adam states, one per entry of ``params``."""
    buffer: ReplayBuffer
    """Replay buffer; data leaves ``[buffer_size // num_envs, num_envs, ...]``."""
    env_state: Any
    """gymnax states (LogWrapper), leaves ``[num_envs, ...]``."""
    obs: jax.Array
    """Current observations, ``[num_envs, obs_dim]``."""
    keys: jax.Array
    """One typed PRNG key per environment, ``[num_envs]``."""
    step: jax.Array
    """Updates done so far (int32)."""
    grad_step: jax.Array
    """Gradient steps done so far (int32; TD3's policy delay counts them)."""


class DataParallel:
    """``grad`` and ``pmean`` that do the right thing inside ``shard_map``."""

    def __init__(self, sharded: bool):
        self.sharded = sharded

    def pmean(self, x):
        return jax.lax.pmean(x, AXIS) if self.sharded else x

    def psum(self, x):
        return jax.lax.psum(x, AXIS) if self.sharded else x

    def grad(self, fn, params, *args):
        """``(grads, aux)`` of ``fn(params, *args) -> (loss, aux)``; the gradients
        are averaged over devices, ``aux`` is this device's. Inside shard_map the
        replicated parameters are device-invariant and a gradient with respect
        to an invariant input comes back already summed over devices;
        differentiating a device-varying copy gives this
        device's gradient, which ``pmean`` turns into the global one."""
        local = jax.lax.pcast(params, AXIS, to="varying") if self.sharded else params
        grads, aux = jax.grad(fn, has_aux=True)(local, *args)
        return self.pmean(grads), aux


ADAM = optax.scale_by_adam()


def adam_step(params, grads, opt_state, learning_rate):
    """One Adam step with a traced step size (so it can live in the hparams)."""
    updates, opt_state = ADAM.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - learning_rate * u, params, updates)
    return params, opt_state


def polyak(target, online, tau):
    """``target <- (1 - tau) target + tau online`` (leaf by leaf)."""
    return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def split_keys(keys, num: int):
    """Per-environment split: ``[E]`` keys -> ``num`` arrays of ``[E]`` keys."""
    split = jax.vmap(lambda k: jax.random.split(k, num))(keys)
    return tuple(split[:, i] for i in range(num))


# ------------------------------------------------------------------ validation


def make_env(config, name: str):
    """The gymnax environment of ``config`` (flattened, logged) and its box."""
    if config.env_id not in gymnax.registered_envs:
        close = difflib.get_close_matches(config.env_id, gymnax.registered_envs, 3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"{name}.env_id: unknown gymnax environment {config.env_id!r}{hint}; "
            f"known: {', '.join(gymnax.registered_envs)}"
        )
    env, env_params = gymnax.make(config.env_id, **config.env_kwargs)
    if config.env_wrapper is not None:
        env, env_params = config.env_wrapper(env, env_params)
    space = env.action_space(env_params)
    if not isinstance(space, gym_spaces.Box):
        what = (
            f"a discrete action space ({space.n} actions)"
            if isinstance(space, gym_spaces.Discrete)
            else f"a {type(space).__name__} action space"
        )
        algo = name.removesuffix("Config")
        raise ValueError(
            f"{name}.env_id: {config.env_id} has {what}; {algo} here needs a "
            "continuous (Box) action space, e.g. Pendulum-v1 or "
            "MountainCarContinuous-v0 (for discrete actions use rl.dqn)"
        )
    low = np.broadcast_to(np.asarray(space.low, np.float32), space.shape).reshape(-1)
    high = np.broadcast_to(np.asarray(space.high, np.float32), space.shape).reshape(-1)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError(
            f"{name}.env_id: {config.env_id}'s action box is unbounded "
            f"(low {low}, high {high}); the policy's actions are squashed into it"
        )
    if len(env.observation_space(env_params).shape) > 1:
        env = FlattenObservationWrapper(env)
    return LogWrapper(env), env_params, space, low, high


def check_config(config, name: str, positive_floats=(), unit_floats=()):
    """Validate the fields every off-policy config has; raises naming the field."""

    def positive_int(field):
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{field}: expected an int >= 1, got {value!r}")

    for field in (
        "total_timesteps",
        "num_envs",
        "rollout_steps",
        "gradient_steps",
        "batch_size",
        "buffer_size",
        "num_devices",
    ):
        positive_int(field)
    if config.batch_size % config.num_envs:
        raise ValueError(
            f"{name}: batch_size ({config.batch_size}) must be a multiple of "
            f"num_envs ({config.num_envs}); every minibatch takes an equal share "
            "of each environment's transitions"
        )
    if config.num_envs % config.num_devices:
        raise ValueError(
            f"{name}: num_envs ({config.num_envs}) must be a multiple of "
            f"num_devices ({config.num_devices})"
        )
    if config.num_devices > jax.device_count():
        raise ValueError(
            f"{name}.num_devices: {config.num_devices} requested, "
            f"{jax.device_count()} available ({jax.devices()[0].platform}); on CPU, "
            "set XLA_FLAGS=--xla_force_host_platform_device_count=N before "
            "importing jax"
        )
    if config.buffer_size < config.num_envs:
        raise ValueError(
            f"{name}.buffer_size ({config.buffer_size}) is smaller than num_envs "
            f"({config.num_envs}): the buffer needs at least one step of each"
        )
    if config.num_updates < 1:
        raise ValueError(
            f"{name}.total_timesteps ({config.total_timesteps}) is less than one "
            f"update (num_envs * rollout_steps = {config.steps_per_update})"
        )
    if config.activation not in ACTIVATIONS:
        raise ValueError(
            f"{name}.activation: expected one of {sorted(ACTIVATIONS)}, got "
            f"{config.activation!r}"
        )
    if not config.hidden_sizes or any(
        isinstance(h, bool) or not isinstance(h, int) or h < 1
        for h in config.hidden_sizes
    ):
        raise ValueError(
            f"{name}.hidden_sizes: expected positive ints, got {config.hidden_sizes}"
        )
    for field in positive_floats:
        value = getattr(config, field)
        if not (isinstance(value, int | float) and value > 0):
            raise ValueError(f"{name}.{field}: expected > 0, got {value!r}")
    for field in unit_floats:
        value = getattr(config, field)
        if not (isinstance(value, int | float) and 0 <= value <= 1):
            raise ValueError(f"{name}.{field}: expected in [0, 1], got {value!r}")
    if not (isinstance(config.learning_starts, int | float)) or (
        config.learning_starts < 0
    ):
        raise ValueError(
            f"{name}.learning_starts: expected >= 0 environment steps, got "
            f"{config.learning_starts!r}"
        )


def hparams_from_config(cls, config):
    return cls(
        **{
            name: jnp.asarray(getattr(config, name), jnp.float32)
            for name in cls.__dataclass_fields__
        }
    )


def hparam_grid(base, name: str, **values):
    """``base`` (an HParams struct of scalars) batched over the listed values
    (zip, not product); the other fields keep their values."""
    fields = type(base).__dataclass_fields__
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(
            f"{name}: unknown fields {sorted(unknown)}; known: {sorted(fields)}"
        )
    lengths = {len(v) for v in values.values()}
    if len(lengths) > 1:
        raise ValueError(f"{name}: values must have equal lengths, got {values}")
    n = lengths.pop() if lengths else 1
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,)), base).replace(
        **{k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    )


# ------------------------------------------------------------------ the program


def build(
    config,
    *,
    env,
    env_params,
    low,
    high,
    init_params: Callable,
    explore: Callable,
    learn_step: Callable,
    aux_names: tuple[str, ...],
    default_hparams,
):
    """``(init, update, run, to_env_action, learn_batch)`` of an off-policy
    program.

    ``init_params(key, obs, action, hparams) -> (params, target_params,
    opt_state)`` for one unbatched example ``obs``, ``action``.
    ``explore(params, obs [o], key, hparams) -> unit action [d]`` (the behaviour
    policy once learning has started). ``learn_step(dp, params, target_params,
    opt_state, grad_step, batch, normal, hparams) -> (params, target_params,
    opt_state, aux)``: one gradient step on this device's share of a minibatch
    (``batch`` leaves ``[B_local, ...]``; ``normal(salt, size) -> [B_local,
    size]`` standard normal noise for the examples, a different draw per salt);
    ``aux`` holds the scalars ``aux_names``, averaged over devices.
    """
    sharded = config.num_devices > 1
    dp = DataParallel(sharded)
    low = jnp.asarray(low)
    high = jnp.asarray(high)
    action_dim = int(low.shape[0])
    per_env_batch = config.batch_size // config.num_envs
    space_shape = env.action_space(env_params).shape
    obs_shape = env.observation_space(env_params).shape

    def to_env_action(unit):
        """[-1, 1]^d -> the environment's box (and its action shape)."""
        action = low + (unit + 1.0) * 0.5 * (high - low)
        return action.reshape(unit.shape[:-1] + tuple(space_shape))

    def init(key: jax.Array, hparams=None) -> OffPolicyTrainState:
        hparams = default_hparams if hparams is None else hparams
        k_params, k_envs = jax.random.split(key)
        obs_example = jnp.zeros(obs_shape, jnp.float32).reshape(-1)
        action_example = jnp.zeros((action_dim,), jnp.float32)
        params, target_params, opt_state = init_params(
            k_params, obs_example, action_example, hparams
        )
        env_keys = jax.random.split(k_envs, config.num_envs)
        reset_keys, keys = split_keys(env_keys, 2)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, env_params)
        obs = obs.reshape(config.num_envs, -1).astype(jnp.float32)
        example = {
            "obs": obs_example,
            "action": action_example,
            "reward": jnp.float32(0.0),
            "next_obs": obs_example,
            "terminated": jnp.bool_(False),
        }
        state = OffPolicyTrainState(
            params=params,
            target_params=target_params,
            opt_state=opt_state,
            buffer=buffer_init(example, config.buffer_size, config.num_envs),
            env_state=env_state,
            obs=obs,
            keys=keys,
            step=jnp.zeros((), jnp.int32),
            grad_step=jnp.zeros((), jnp.int32),
        )
        # Strong types throughout (gymnax counters are weakly typed Python ints),
        # so a restored state reuses the compiled program.
        return jax.tree.map(
            lambda x: x if _is_key(x) else jnp.asarray(x, x.dtype), state
        )

    def collect(state: OffPolicyTrainState, started, hparams):
        def step(carry, _):
            env_state, obs, keys, buffer = carry
            keys, k_act, k_uniform, k_env = split_keys(keys, 4)
            policy_action = jax.vmap(explore, in_axes=(None, 0, 0, None))(
                state.params, obs, k_act, hparams
            )
            uniform = jax.vmap(
                lambda k: jax.random.uniform(k, (action_dim,), minval=-1.0, maxval=1.0)
            )(k_uniform)
            action = jnp.where(started, policy_action, uniform)
            next_obs, env_state, reward, terminated, _, info = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(k_env, env_state, to_env_action(action), env_params)
            next_obs = next_obs.reshape(obs.shape).astype(jnp.float32)
            final_obs = info["final_observation"].reshape(obs.shape)
            buffer = buffer_add(
                buffer,
                {
                    "obs": obs,
                    "action": action,
                    "reward": reward.astype(jnp.float32),
                    "next_obs": final_obs.astype(jnp.float32),
                    "terminated": terminated,
                },
            )
            done = info["returned_episode"].astype(jnp.float32)
            returns = info["returned_episode_returns"] * done
            return (env_state, next_obs, keys, buffer), (done.sum(), returns.sum())

        (env_state, obs, keys, buffer), (done, returns) = jax.lax.scan(
            step,
            (state.env_state, state.obs, state.keys, state.buffer),
            None,
            config.rollout_steps,
        )
        return env_state, obs, keys, buffer, done.sum(), returns.sum()

    def sample(keys, buffer: ReplayBuffer):
        """``per_env_batch`` transitions of each local environment, each drawn
        with that environment's key, and ``normal(salt, size) -> [B_local,
        size]``: standard normal draws for the examples, each environment's
        share from that environment's key (one draw per environment, not per
        example: one random-bits call instead of ``B`` key splits)."""

        def one_env(key, column):
            rows = jax.random.randint(
                key, (per_env_batch,), 0, jnp.maximum(buffer.rows_filled, 1)
            )
            return jax.tree.map(lambda x: x[rows], column)

        k_rows, k_noise = split_keys(keys, 2)
        batch = jax.vmap(one_env, in_axes=(0, 1))(k_rows, buffer.data)
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731

        def normal(salt: int, size: int):
            draw = lambda k: jax.random.normal(  # noqa: E731
                jax.random.fold_in(k, salt), (per_env_batch, size)
            )
            return flat(jax.vmap(draw)(k_noise))

        return jax.tree.map(flat, batch), normal

    def learn(state: OffPolicyTrainState, keys, buffer, hparams, num_steps=None):
        def gradient_step(carry, _):
            params, target_params, opt_state, grad_step, keys = carry
            keys, k_sample = split_keys(keys, 2)
            batch, normal = sample(k_sample, buffer)
            params, target_params, opt_state, aux = learn_step(
                dp,
                params,
                target_params,
                opt_state,
                grad_step,
                batch,
                normal,
                hparams,
            )
            return (params, target_params, opt_state, grad_step + 1, keys), aux

        carry = (
            state.params,
            state.target_params,
            state.opt_state,
            state.grad_step,
            keys,
        )
        num_steps = config.gradient_steps if num_steps is None else num_steps
        carry, aux = jax.lax.scan(gradient_step, carry, None, num_steps)
        return carry, jax.tree.map(jnp.mean, aux)

    def update_local(state: OffPolicyTrainState, hparams):
        steps_before = state.step * config.steps_per_update
        steps_after = steps_before + config.steps_per_update
        started = steps_before >= hparams.learning_starts
        env_state, obs, keys, buffer, episodes, return_sum = collect(
            state, started, hparams
        )
        can_learn = steps_after >= hparams.learning_starts

        def do_learn(_):
            return learn(state, keys, buffer, hparams)

        def skip(_):
            carry = (
                state.params,
                state.target_params,
                state.opt_state,
                state.grad_step,
                keys,
            )
            return carry, {name: jnp.float32(0.0) for name in aux_names}

        carry, aux = jax.lax.cond(can_learn, do_learn, skip, None)
        params, target_params, opt_state, grad_step, keys = carry
        episodes = dp.psum(episodes)
        return_sum = dp.psum(return_sum)
        metrics = {
            "episode_return": jnp.where(
                episodes > 0, return_sum / jnp.maximum(episodes, 1.0), jnp.nan
            ),
            "episodes": episodes,
            "env_steps": steps_after,
            "learning": can_learn,
            **aux,
        }
        new_state = OffPolicyTrainState(
            params=params,
            target_params=target_params,
            opt_state=opt_state,
            buffer=buffer,
            env_state=env_state,
            obs=obs,
            keys=keys,
            step=state.step + 1,
            grad_step=grad_step,
        )
        return new_state, metrics

    def learn_batch_local(state: OffPolicyTrainState, batch: dict, hparams):
        """``learn_batch`` on this device's environments."""
        unit = batch["action"].reshape(batch["reward"].shape + (action_dim,)) - low
        unit = jnp.clip(unit / (high - low) * 2.0 - 1.0, -1.0, 1.0)
        steps = {
            "obs": batch["obs"].reshape(batch["reward"].shape + (-1,)),
            "action": unit,
            "reward": batch["reward"],
            "next_obs": batch["final_obs"].reshape(batch["reward"].shape + (-1,)),
            "terminated": batch["terminated"],
        }
        steps = jax.tree.map(lambda x: x.astype(jnp.float32), steps)
        steps["terminated"] = batch["terminated"].astype(bool)
        buffer = jax.lax.scan(
            lambda buf, step: (buffer_add(buf, step), None), state.buffer, steps
        )[0]
        num_steps = batch["reward"].shape[0]
        gradient_steps = max(
            1, num_steps * config.gradient_steps // config.rollout_steps
        )
        # Stored transitions stop growing at the capacity; a learning_starts above
        # it would otherwise never be reached (update() counts env steps instead).
        capacity = config.buffer_size // config.num_envs * config.num_envs
        can_learn = dp.psum(buffer.size) >= jnp.minimum(
            hparams.learning_starts, capacity
        )

        def do_learn(_):
            return learn(state, state.keys, buffer, hparams, gradient_steps)

        def skip(_):
            carry = (
                state.params,
                state.target_params,
                state.opt_state,
                state.grad_step,
                state.keys,
            )
            return carry, {name: jnp.float32(0.0) for name in aux_names}

        carry, aux = jax.lax.cond(can_learn, do_learn, skip, None)
        params, target_params, opt_state, grad_step, keys = carry
        new_state = state.replace(
            params=params,
            target_params=target_params,
            opt_state=opt_state,
            buffer=buffer,
            keys=keys,
            grad_step=grad_step,
        )
        return new_state, {"learning": can_learn, **aux}

    def learn_batch(state: OffPolicyTrainState, batch: dict, hparams=None):
        """Add an outside window of experience to the buffer, then learn.

        ``batch`` leaves are ``[T, num_envs, ...]``: ``obs``, ``action``
        (environment actions, in the box), ``reward``, ``terminated`` and
        ``final_obs`` (the observation each step led to, before any reset; a
        truncated step bootstraps from it). All T steps are added, then, once
        the buffer holds ``learning_starts`` transitions (or is full, if
        ``learning_starts`` exceeds its capacity),
        ``T * gradient_steps // rollout_steps`` gradient steps are taken (the
        update's ratio). The environments in ``state`` are not stepped. Data
        parallel like ``update``.
        """
        hparams = default_hparams if hparams is None else hparams
        required = ("obs", "action", "reward", "terminated", "final_obs")
        missing = [name for name in required if name not in batch]
        if missing:
            raise ValueError(
                f"learn_batch: batch lacks {', '.join(missing)} (expected "
                f"{', '.join(required)})"
            )
        shape = tuple(jnp.shape(batch["reward"]))
        if len(shape) != 2 or shape[1] != config.num_envs:
            raise ValueError(
                "learn_batch: expected rewards of shape [T, num_envs = "
                f"{config.num_envs}], got {list(shape)}"
            )
        for name in required:
            if tuple(jnp.shape(batch[name])[:2]) != shape:
                raise ValueError(
                    f"learn_batch: batch[{name!r}] must start with [T, num_envs] = "
                    f"{list(shape)}, got {list(jnp.shape(batch[name]))}"
                )
        batch = {name: jnp.asarray(batch[name]) for name in required}
        if not sharded:
            return learn_batch_local(state, batch, hparams)
        return jax.shard_map(
            learn_batch_local,
            mesh=mesh,
            in_specs=(state_specs, {name: P(None, AXIS) for name in batch}, P()),
            out_specs=(state_specs, P()),
        )(state, batch, hparams)

    if sharded:
        mesh = jax.make_mesh(
            (config.num_devices,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
        )
        state_specs = OffPolicyTrainState(
            params=P(),
            target_params=P(),
            opt_state=P(),
            buffer=ReplayBuffer(data=P(None, AXIS), insert=P(), rows_filled=P()),
            env_state=P(AXIS),
            obs=P(AXIS),
            keys=P(AXIS),
            step=P(),
            grad_step=P(),
        )
        update = jax.shard_map(
            update_local,
            mesh=mesh,
            in_specs=(state_specs, P()),
            out_specs=(state_specs, P()),
        )
    else:
        update = update_local

    def run(state, hparams=None, num_updates=None, callback=None):
        """``num_updates`` updates (default: the whole run) as one scan.

        ``callback(metrics)``, if given, is called on the host after every update
        with that update's metrics (NumPy scalars).
        """
        hparams = default_hparams if hparams is None else hparams
        if num_updates is None:
            num_updates = config.num_updates
        return scan_updates(update, state, hparams, num_updates, callback)

    return init, update, run, to_env_action, learn_batch
