"""PPO on gymnax as one compiled program (purejaxrl style), data parallel by design.

    config = PPOConfig(env_id="CartPole-v1", total_timesteps=500_000)
    train = make_train(config)                   # train(key, hparams=None)
    state, metrics = jax.jit(train)(key)         # metrics: dict of [num_updates]
    jax.jit(jax.vmap(train))(keys)               # many seeds in one call
    jax.jit(jax.vmap(train))(keys, hparams)      # ... and many hyperparameters

Sizes, the environment and the network are static (``PPOConfig``); every number
that a sweep may change lives in ``PPOHParams`` (learning rate, discount, GAE
lambda, clip range, loss coefficients, gradient clip), so a sweep is a ``vmap``.

**Data parallel.** With ``num_devices = N`` the environments are split over a 1-D
device mesh (``jax.shard_map``); each device collects its share of every rollout,
computes gradients on its share of every minibatch, and the gradients are averaged
with ``lax.pmean``. Everything random is drawn per environment (each carries its
own key) and every minibatch takes ``num_steps / num_minibatches`` random steps of
*each* environment, so minibatches do not depend on how environments are placed:
the N-device run computes the same thing as the 1-device run on the same global
batch, up to the order of floating-point sums. ``learn_batch`` (the update on an
outside rollout, which ``loop.PPOAgent`` calls) is split over the mesh the same way.

**Resumable.** ``make_ppo(config)`` exposes ``init`` and ``run(state, hparams,
num_updates)``; the ``TrainState`` holds parameters, optimizer state, environment
states, observations, per-environment keys, observation statistics and the update
counter, so a run restored from a checkpoint (``convergence_jax.checkpoint``)
continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from gymnax.environments import spaces as gym_spaces
from gymnax.wrappers import FlattenObservationWrapper, LogWrapper
from jax.sharding import PartitionSpec as P

from convergence_jax.distributed import check_num_devices, global_mesh
from convergence_jax.rl._scan import scan_updates
from convergence_jax.rl.losses import (
    clipped_value_loss,
    entropy_loss,
    gae,
    ppo_policy_loss,
)
from convergence_jax.rl.networks import ACTIVATIONS, ActorCritic

__all__ = [
    "PPO",
    "ObsStats",
    "PPOConfig",
    "PPOHParams",
    "TrainState",
    "make_ppo",
    "make_train",
]

AXIS = "devices"


@dataclass(frozen=True)
class PPOConfig:
    """A PPO run: environment, sizes and network (static), and default numbers."""

    env_id: str = "CartPole-v1"
    """A gymnax environment id, e.g. CartPole-v1, Pendulum-v1, Breakout-MinAtar."""
    total_timesteps: int = 500_000
    """Environment steps over the whole run (all environments together)."""
    num_envs: int = 4
    """Parallel environments (split over devices)."""
    num_steps: int = 128
    """Steps per environment per rollout."""
    update_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch; must divide num_steps (each takes steps of every env)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the actor and of the critic."""
    activation: str = "tanh"
    """Hidden activation: tanh, relu, gelu or silu."""
    continuous: bool | None = None
    """Continuous actions; None reads it from the environment's action space."""
    squash: bool = False
    """Continuous actions: squash with tanh into the action box (else clip)."""
    normalize_obs: bool = False
    """Normalize observations with running mean and variance."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    num_devices: int = 1
    """Devices to split the environments over (data parallel)."""
    learning_rate: float = 2.5e-4
    """Adam step size (default of PPOHParams)."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_eps: float = 0.2
    """Clip range of the policy ratio and of the value change."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for learning (returns are logged unscaled)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for gymnax.make."""
    env_wrapper: Callable[[Any, Any], tuple[Any, Any]] | None = None
    """Optional ``f(env, env_params) -> (env, env_params)`` applied to the gymnax
    environment before flattening and logging, e.g.
    ``sim2real.domain_randomization(ranges)``; its params go to reset and step."""

    @property
    def batch_size(self) -> int:
        """Transitions per rollout: num_envs * num_steps."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Rollout + learning iterations: total_timesteps // batch_size."""
        return self.total_timesteps // self.batch_size

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches


@struct.dataclass
class PPOHParams:
    """The numbers of a run; scalars (or batched, under ``vmap``)."""

    learning_rate: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    clip_eps: jax.Array
    ent_coef: jax.Array
    vf_coef: jax.Array
    max_grad_norm: jax.Array
    reward_scale: jax.Array

    @classmethod
    def from_config(cls, config: PPOConfig) -> PPOHParams:
        return cls(
            **{
                name: jnp.asarray(getattr(config, name), jnp.float32)
                for name in cls.__dataclass_fields__
            }
        )


@struct.dataclass
class ObsStats:
    """Running mean and variance of observations (parallel update, Chan et al.)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array


@struct.dataclass
class TrainState:
    """Everything a PPO run needs to continue."""

    params: Any
    opt_state: Any
    obs_stats: ObsStats
    env_state: Any
    """gymnax states (LogWrapper), leaves ``[num_envs, ...]``."""
    obs: jax.Array
    """Current raw observations, ``[num_envs, obs_dim]``."""
    keys: jax.Array
    """One typed PRNG key per environment, ``[num_envs]``."""
    step: jax.Array
    """Updates done so far (int32)."""


class PPO(NamedTuple):
    """The pure functions of a PPO run (see the module docstring)."""

    config: PPOConfig
    network: ActorCritic
    default_hparams: PPOHParams
    init: Callable[..., TrainState]
    """``init(key, hparams) -> TrainState``."""
    update: Callable[..., tuple[TrainState, dict]]
    """``update(state, hparams) -> (state, metrics)``: one rollout and its epochs."""
    run: Callable[..., tuple[TrainState, dict]]
    """``run(state, hparams, num_updates, callback=None) -> (state, metrics [n])``."""
    policy: Callable[..., jax.Array]
    """``policy(params, obs_stats, obs [B, obs_dim], key) -> env actions [B, ...]``."""
    learn_batch: Callable[..., tuple[TrainState, dict]]
    """``learn_batch(state, batch, hparams) -> (state, metrics)``: one PPO update on
    a rollout collected outside (e.g. by a loop pipeline) with ``policy``; data
    parallel over ``num_devices`` like ``update``."""
    policy_action: Callable[..., jax.Array]
    """``policy_action(params, obs_stats, obs, key) -> [B, ...]``: the policy's own
    samples (for continuous actions, before the squash or clip into the action
    box); ``to_env_action`` of them is ``policy`` (same key, same actions)."""
    to_env_action: Callable[[jax.Array], jax.Array]
    """Policy samples -> environment actions (identity for discrete actions)."""


# ------------------------------------------------------------------ validation


def _make_env(config: PPOConfig):
    if config.env_id not in gymnax.registered_envs:
        close = difflib.get_close_matches(config.env_id, gymnax.registered_envs, 3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"PPOConfig.env_id: unknown gymnax environment {config.env_id!r}{hint}; "
            f"known: {', '.join(gymnax.registered_envs)}"
        )
    env, env_params = gymnax.make(config.env_id, **config.env_kwargs)
    if config.env_wrapper is not None:
        env, env_params = config.env_wrapper(env, env_params)
    if len(env.observation_space(env_params).shape) > 1:
        env = FlattenObservationWrapper(env)
    return LogWrapper(env), env_params


def _check_common(config, name: str) -> None:
    """The checks PPO and recurrent PPO share, after their int fields: the devices,
    at least one rollout, the network, and the ranges of the numbers; ``name`` is
    the config class's name, for the messages."""
    if config.num_devices > jax.device_count():
        raise ValueError(
            f"{name}.num_devices: {config.num_devices} requested, "
            f"{jax.device_count()} available ({jax.devices()[0].platform}); on CPU, "
            "set XLA_FLAGS=--xla_force_host_platform_device_count=N before "
            "importing jax"
        )
    check_num_devices(config.num_devices, f"{name}.num_devices")
    if config.num_updates < 1:
        raise ValueError(
            f"{name}.total_timesteps ({config.total_timesteps}) is less than one "
            f"rollout (num_envs * num_steps = {config.batch_size})"
        )
    if config.activation not in ACTIVATIONS:
        raise ValueError(
            f"{name}.activation: expected one of {sorted(ACTIVATIONS)}, got "
            f"{config.activation!r}"
        )
    if not config.hidden_sizes or any(
        not isinstance(h, int) or h < 1 for h in config.hidden_sizes
    ):
        raise ValueError(
            f"{name}.hidden_sizes: expected positive ints, got {config.hidden_sizes}"
        )
    for attr in ("learning_rate", "max_grad_norm", "reward_scale"):
        if not getattr(config, attr) > 0:
            raise ValueError(
                f"{name}.{attr}: expected > 0, got {getattr(config, attr)}"
            )
    for attr in ("clip_eps", "ent_coef", "vf_coef"):
        if not getattr(config, attr) >= 0:
            raise ValueError(
                f"{name}.{attr}: expected >= 0, got {getattr(config, attr)}"
            )
    for attr in ("gamma", "gae_lambda"):
        if not 0 <= getattr(config, attr) <= 1:
            raise ValueError(
                f"{name}.{attr}: expected in [0, 1], got {getattr(config, attr)}"
            )


def _check_config(config: PPOConfig, action_space) -> bool:
    """Validate before anything compiles; returns whether actions are continuous."""
    ints = ("total_timesteps", "num_envs", "num_steps", "update_epochs")
    ints += ("num_minibatches", "num_devices")
    for attr in ints:
        value = getattr(config, attr)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"PPOConfig.{attr}: expected an int >= 1, got {value!r}")
    if config.num_steps % config.num_minibatches:
        raise ValueError(
            f"PPOConfig: the batch does not divide into minibatches: num_steps "
            f"({config.num_steps}) must be a multiple of num_minibatches "
            f"({config.num_minibatches}); every minibatch takes num_steps / "
            "num_minibatches steps of each environment"
        )
    if config.num_envs % config.num_devices:
        raise ValueError(
            f"PPOConfig: num_envs ({config.num_envs}) must be a multiple of "
            f"num_devices ({config.num_devices})"
        )
    _check_common(config, "PPOConfig")
    discrete = isinstance(action_space, gym_spaces.Discrete)
    if not discrete and not isinstance(action_space, gym_spaces.Box):
        raise ValueError(
            f"PPOConfig.env_id: {config.env_id} has a {type(action_space).__name__} "
            "action space; PPO here supports Discrete and Box"
        )
    if config.continuous is True and discrete:
        raise ValueError(
            f"PPOConfig.continuous=True, but {config.env_id} has a discrete action "
            f"space ({action_space.n} actions); use continuous=None or False"
        )
    if config.continuous is False and not discrete:
        raise ValueError(
            f"PPOConfig.continuous=False, but {config.env_id} has a continuous "
            f"(Box {action_space.shape}) action space; use continuous=None or True"
        )
    if config.squash and discrete:
        raise ValueError("PPOConfig.squash applies to continuous actions only")
    return not discrete


# ------------------------------------------------------------------ helpers


def _pmean(x, sharded: bool):
    return jax.lax.pmean(x, AXIS) if sharded else x


def _psum(x, sharded: bool):
    return jax.lax.psum(x, AXIS) if sharded else x


def _rollout_metrics(traj, step, batch_size: int, learning_rate, aux, sharded: bool):
    """An update's metrics (PPO and recurrent PPO): the mean return of the episodes
    that ended in the rollout (NaN if none, over every device), their count, the
    environment steps so far, the learning rate, and the update's ``aux``."""
    done = traj["episode_done"].astype(jnp.float32)
    episodes = _psum(done.sum(), sharded)
    return_sum = _psum((traj["episode_return"] * done).sum(), sharded)
    return {
        "episode_return": jnp.where(
            episodes > 0, return_sum / jnp.maximum(episodes, 1.0), jnp.nan
        ),
        "episodes": episodes,
        "env_steps": (step + 1) * batch_size,
        "learning_rate": learning_rate,
        **aux,
    }


def _normalize(obs, stats: ObsStats, enabled: bool):
    if not enabled:
        return obs
    return jnp.clip((obs - stats.mean) / jnp.sqrt(stats.var + 1e-8), -10.0, 10.0)


def _update_stats(stats: ObsStats, obs, sharded: bool) -> ObsStats:
    """Merge the moments of a batch ``[..., obs_dim]`` (over all devices)."""
    flat = obs.reshape(-1, obs.shape[-1])
    batch_mean = _pmean(flat.mean(0), sharded)
    batch_var = _pmean(jnp.square(flat - batch_mean).mean(0), sharded)
    n = flat.shape[0] * (jax.lax.psum(1, AXIS) if sharded else 1)
    total = stats.count + n
    delta = batch_mean - stats.mean
    mean = stats.mean + delta * n / total
    m2 = stats.var * stats.count + batch_var * n + delta**2 * stats.count * n / total
    return ObsStats(mean=mean, var=m2 / total, count=total)


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _split_keys(keys, num: int):
    """Per-environment split: ``[E]`` keys -> ``num`` arrays of ``[E]`` keys."""
    split = jax.vmap(lambda k: jax.random.split(k, num))(keys)
    return tuple(split[:, i] for i in range(num))


# ------------------------------------------------------------------ the program


def make_ppo(config: PPOConfig) -> PPO:
    """Build the pure functions of a PPO run; validates ``config`` first."""
    env, env_params = _make_env(config)
    action_space = env.action_space(env_params)
    continuous = _check_config(config, action_space)
    obs_shape = env.observation_space(env_params).shape
    if continuous:
        action_dim = int(np.prod(action_space.shape))
        low = jnp.broadcast_to(
            jnp.asarray(action_space.low, jnp.float32), (action_dim,)
        )
        high = jnp.broadcast_to(
            jnp.asarray(action_space.high, jnp.float32), (action_dim,)
        )
    else:
        action_dim = int(action_space.n)
    network = ActorCritic(
        action_dim=action_dim,
        continuous=continuous,
        hidden_sizes=tuple(config.hidden_sizes),
        activation=config.activation,
    )
    sharded = config.num_devices > 1
    num_steps, num_minibatches = config.num_steps, config.num_minibatches
    steps_per_minibatch = num_steps // num_minibatches
    default_hparams = PPOHParams.from_config(config)

    def optimizer(hparams: PPOHParams):
        # The step size is applied by hand (see learn) so that it can be traced.
        return optax.chain(
            optax.clip_by_global_norm(hparams.max_grad_norm),
            optax.scale_by_adam(eps=1e-5),
        )

    def learning_rate(step, hparams: PPOHParams):
        """Adam step size of update ``step``: linear decay to 0 when annealing."""
        if not config.anneal_lr:
            return hparams.learning_rate
        # Floored at 0: continuing past num_updates keeps the step size at 0.
        return hparams.learning_rate * jnp.maximum(
            0.0, 1.0 - step.astype(jnp.float32) / config.num_updates
        )

    def to_env_action(raw):
        if not continuous:
            return raw
        if config.squash:
            action = low + (jnp.tanh(raw) + 1.0) * 0.5 * (high - low)
        else:
            action = jnp.clip(raw, low, high)
        return action.reshape(raw.shape[:-1] + tuple(action_space.shape))

    def init(key: jax.Array, hparams: PPOHParams | None = None) -> TrainState:
        hparams = default_hparams if hparams is None else hparams
        k_params, k_envs = jax.random.split(key)
        params = network.init(k_params, jnp.zeros(obs_shape, jnp.float32).reshape(-1))
        env_keys = jax.random.split(k_envs, config.num_envs)
        reset_keys, keys = _split_keys(env_keys, 2)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, env_params)
        obs = obs.reshape(config.num_envs, -1).astype(jnp.float32)
        dim = obs.shape[-1]
        state = TrainState(
            params=params,
            opt_state=optimizer(hparams).init(params),
            obs_stats=ObsStats(
                mean=jnp.zeros(dim, jnp.float32),
                var=jnp.ones(dim, jnp.float32),
                count=jnp.asarray(1e-4, jnp.float32),
            ),
            env_state=env_state,
            obs=obs,
            keys=keys,
            step=jnp.zeros((), jnp.int32),
        )
        # Strong types throughout (gymnax counters are weakly typed Python ints), so
        # a state restored from a checkpoint has the same types and reuses the
        # compiled program.
        return jax.tree.map(
            lambda x: x if _is_key(x) else jnp.asarray(x, x.dtype), state
        )

    def act(params, obs, key):
        """One environment: sample an action from the policy at ``obs``."""
        dist, value = network.apply(params, obs)
        raw = dist.sample(seed=key)
        return raw, dist.log_prob(raw), value

    def rollout(state: TrainState):
        params, stats = state.params, state.obs_stats

        def step(carry, _):
            env_state, obs, keys = carry
            keys, k_act, k_env = _split_keys(keys, 3)
            norm_obs = _normalize(obs, stats, config.normalize_obs)
            raw, log_prob, value = jax.vmap(act, in_axes=(None, 0, 0))(
                params, norm_obs, k_act
            )
            next_obs, env_state, reward, terminated, truncated, info = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(k_env, env_state, to_env_action(raw), env_params)
            next_obs = next_obs.reshape(obs.shape).astype(jnp.float32)
            final_obs = info["final_observation"].reshape(obs.shape)
            transition = {
                "obs": norm_obs,
                "raw_obs": obs,
                "action": raw,
                "log_prob": log_prob,
                "value": value,
                "reward": reward.astype(jnp.float32),
                "terminated": terminated,
                "truncated": truncated,
                "final_obs": _normalize(
                    final_obs.astype(jnp.float32), stats, config.normalize_obs
                ),
                "episode_done": info["returned_episode"],
                "episode_return": info["returned_episode_returns"],
            }
            return (env_state, next_obs, keys), transition

        (env_state, obs, keys), traj = jax.lax.scan(
            step, (state.env_state, state.obs, state.keys), None, num_steps
        )
        return env_state, obs, keys, traj

    def loss_fn(params, batch, hparams: PPOHParams):
        dist, value = network.apply(params, batch["obs"])
        log_prob = dist.log_prob(batch["action"])
        advantages = batch["advantage"]
        # Advantage normalization over the global minibatch (all devices).
        mean = _pmean(advantages.mean(), sharded)
        std = jnp.sqrt(_pmean(jnp.square(advantages - mean).mean(), sharded))
        advantages = (advantages - mean) / (std + 1e-8)
        policy_loss = ppo_policy_loss(
            log_prob, batch["log_prob"], advantages, hparams.clip_eps
        )
        ratio = jnp.exp(log_prob - batch["log_prob"])
        value_loss = clipped_value_loss(
            value, batch["value"], batch["return"], hparams.clip_eps
        )
        entropy = dist.entropy()
        total = (
            policy_loss
            + hparams.vf_coef * value_loss
            + hparams.ent_coef * entropy_loss(entropy)
        )
        aux = {
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "entropy": entropy.mean(),
            "approx_kl": jnp.mean((ratio - 1.0) - jnp.log(ratio)),
            "clip_fraction": jnp.mean(jnp.abs(ratio - 1.0) > hparams.clip_eps),
        }
        return total, aux

    def learn(state: TrainState, traj, advantages, returns, keys, hparams):
        """``update_epochs`` passes; each minibatch takes equal steps of every env."""
        data = {
            "obs": traj["obs"],
            "action": traj["action"],
            "log_prob": traj["log_prob"],
            "value": traj["value"],
            "advantage": advantages,
            "return": returns,
        }
        step_size = learning_rate(state.step, hparams)
        tx = optimizer(hparams)

        def minibatch_step(carry, batch):
            params, opt_state = carry
            # [steps_per_minibatch, local envs, ...] -> [B_local, ...]
            batch = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)
            # Inside shard_map the replicated parameters are device-invariant, and
            # the gradient with respect to an invariant input comes back already
            # summed over devices (N times the global mean). Differentiating with
            # respect to a device-varying copy gives this device's gradient, which
            # pmean turns into the gradient of the global minibatch.
            local_params = (
                jax.lax.pcast(params, AXIS, to="varying") if sharded else params
            )
            grads, aux = jax.grad(loss_fn, has_aux=True)(local_params, batch, hparams)
            grads = _pmean(grads, sharded)
            updates, opt_state = tx.update(grads, opt_state, params)
            updates = jax.tree.map(lambda u: -step_size * u, updates)
            params = optax.apply_updates(params, updates)
            return (params, opt_state), _pmean(aux, sharded)

        def epoch(carry, _):
            params, opt_state, keys = carry
            keys, k_perm = _split_keys(keys, 2)
            # One permutation of the time steps per environment.
            order = jax.vmap(lambda k: jax.random.permutation(k, num_steps))(k_perm)
            shuffled = jax.tree.map(
                lambda x: jnp.take_along_axis(
                    x, order.T.reshape(order.T.shape + (1,) * (x.ndim - 2)), axis=0
                ),
                data,
            )
            batches = jax.tree.map(
                lambda x: x.reshape(num_minibatches, steps_per_minibatch, *x.shape[1:]),
                shuffled,
            )
            (params, opt_state), aux = jax.lax.scan(
                minibatch_step, (params, opt_state), batches
            )
            return (params, opt_state, keys), aux

        (params, opt_state, keys), aux = jax.lax.scan(
            epoch, (state.params, state.opt_state, keys), None, config.update_epochs
        )
        return params, opt_state, keys, jax.tree.map(jnp.mean, aux)

    def update_local(state: TrainState, hparams: PPOHParams):
        env_state, obs, keys, traj = rollout(state)
        next_values = network.apply(state.params, traj["final_obs"])[1]
        advantages, returns = jax.vmap(
            gae, in_axes=(1, 1, 1, 1, 1, None, None), out_axes=1
        )(
            traj["reward"] * hparams.reward_scale,
            traj["value"],
            next_values,
            traj["terminated"],
            traj["truncated"],
            hparams.gamma,
            hparams.gae_lambda,
        )
        params, opt_state, keys, aux = learn(
            state, traj, advantages, returns, keys, hparams
        )
        stats = state.obs_stats
        if config.normalize_obs:
            stats = _update_stats(stats, traj["raw_obs"], sharded)
        metrics = _rollout_metrics(
            traj,
            state.step,
            config.batch_size,
            learning_rate(state.step, hparams),
            aux,
            sharded,
        )
        new_state = TrainState(
            params=params,
            opt_state=opt_state,
            obs_stats=stats,
            env_state=env_state,
            obs=obs,
            keys=keys,
            step=state.step + 1,
        )
        return new_state, metrics

    def policy_action(params, obs_stats: ObsStats, obs, key):
        """The policy's samples for a batch of raw observations (one key)."""
        norm_obs = _normalize(obs.astype(jnp.float32), obs_stats, config.normalize_obs)
        keys = jax.random.split(key, obs.shape[0])
        return jax.vmap(lambda o, k: act(params, o, k)[0])(norm_obs, keys)

    def policy(params, obs_stats: ObsStats, obs, key):
        """Environment actions for a batch of raw observations (one key)."""
        return to_env_action(policy_action(params, obs_stats, obs, key))

    if sharded:
        # Over the devices of every process in a multi-process run
        # (convergence_jax.distributed).
        mesh = global_mesh(config.num_devices, AXIS)
        state_specs = TrainState(
            params=P(),
            opt_state=P(),
            obs_stats=P(),
            env_state=P(AXIS),
            obs=P(AXIS),
            keys=P(AXIS),
            step=P(),
        )

    def learn_batch_local(state: TrainState, batch: dict, hparams: PPOHParams):
        """``learn_batch`` on this device's environments ``[num_steps, E_local]``."""
        rollout_shape = batch["reward"].shape
        stats = state.obs_stats
        obs = batch["obs"].reshape(rollout_shape + (-1,)).astype(jnp.float32)
        norm_obs = _normalize(obs, stats, config.normalize_obs)
        final_obs = _normalize(
            batch["final_obs"].reshape(obs.shape).astype(jnp.float32),
            stats,
            config.normalize_obs,
        )
        action = batch.get("policy_action", batch["action"])
        if continuous:
            action = action.reshape(rollout_shape + (action_dim,))
        dist, value = network.apply(state.params, norm_obs)
        next_values = network.apply(state.params, final_obs)[1]
        traj = {
            "obs": norm_obs,
            "action": action,
            "log_prob": dist.log_prob(action),
            "value": value,
        }
        advantages, returns = jax.vmap(
            gae, in_axes=(1, 1, 1, 1, 1, None, None), out_axes=1
        )(
            batch["reward"].astype(jnp.float32) * hparams.reward_scale,
            value,
            next_values,
            batch["terminated"],
            batch["truncated"],
            hparams.gamma,
            hparams.gae_lambda,
        )
        params, opt_state, keys, aux = learn(
            state, traj, advantages, returns, state.keys, hparams
        )
        if config.normalize_obs:
            stats = _update_stats(stats, obs, sharded)
        aux["learning_rate"] = learning_rate(state.step, hparams)
        new_state = state.replace(
            params=params,
            opt_state=opt_state,
            obs_stats=stats,
            keys=keys,
            step=state.step + 1,
        )
        return new_state, aux

    def learn_batch(state: TrainState, batch: dict, hparams: PPOHParams):
        """One update (GAE + epochs) on an outside rollout ``[num_steps, num_envs]``.

        ``batch`` holds raw ``obs``, ``action`` (environment actions), ``reward``,
        ``terminated``, ``truncated`` and ``final_obs`` (the observation each step
        led to, before any reset), and optionally ``policy_action``: the samples
        ``policy_action`` drew. Log-probabilities are taken of those when given;
        without them, of ``action``, which is exact for discrete actions but not for
        continuous ones that were squashed or clipped into the box. The rollout
        must come from the current parameters (on-policy): log-probabilities and
        values are computed here.

        With ``num_devices = N`` the update is data parallel like ``update``: the
        rollout's environments (axis 1 of every ``batch`` leaf, and the state's
        per-environment keys) are split over the device mesh, gradients and the
        advantage and observation statistics are averaged with ``lax.pmean``, and
        the result equals the 1-device update up to the order of floating-point
        sums.
        """
        required = ("obs", "action", "reward", "terminated", "truncated", "final_obs")
        missing = [name for name in required if name not in batch]
        if missing:
            raise ValueError(
                f"learn_batch: batch lacks {', '.join(missing)} (expected "
                f"{', '.join(required)}, and optionally policy_action)"
            )
        rollout_shape = (num_steps, config.num_envs)
        if tuple(batch["reward"].shape) != rollout_shape:
            raise ValueError(
                f"learn_batch: expected rewards of shape [num_steps, num_envs] = "
                f"{list(rollout_shape)}, got {list(batch['reward'].shape)}"
            )
        for name, value in batch.items():
            if tuple(jnp.shape(value)[:2]) != rollout_shape:
                raise ValueError(
                    f"learn_batch: batch[{name!r}] must start with [num_steps, "
                    f"num_envs] = {list(rollout_shape)}, got {list(jnp.shape(value))}"
                )
        if not sharded:
            return learn_batch_local(state, batch, hparams)
        batch = {name: jnp.asarray(value) for name, value in batch.items()}
        return jax.shard_map(
            learn_batch_local,
            mesh=mesh,
            in_specs=(state_specs, {name: P(None, AXIS) for name in batch}, P()),
            out_specs=(state_specs, P()),
        )(state, batch, hparams)

    if sharded:
        update = jax.shard_map(
            update_local,
            mesh=mesh,
            in_specs=(state_specs, P()),
            out_specs=(state_specs, P()),
        )
    else:
        update = update_local

    def run(
        state: TrainState,
        hparams: PPOHParams | None = None,
        num_updates: int | None = None,
        callback: Callable[[dict], None] | None = None,
    ):
        """``num_updates`` updates (default: the rest of the run) as one scan.

        ``callback(metrics)``, if given, is called on the host after every update
        with that update's metrics (NumPy scalars) — e.g. a progress bar.
        """
        hparams = default_hparams if hparams is None else hparams
        if num_updates is None:
            num_updates = config.num_updates
        return scan_updates(update, state, hparams, num_updates, callback)

    return PPO(
        config=config,
        network=network,
        default_hparams=default_hparams,
        init=init,
        update=update,
        run=run,
        policy=policy,
        learn_batch=learn_batch,
        policy_action=policy_action,
        to_env_action=to_env_action,
    )


def make_train(config: PPOConfig, callback: Callable[[dict], None] | None = None):
    """``train(key, hparams=None) -> (TrainState, metrics)``: a whole PPO run.

    Jit it; ``vmap`` it over keys (seeds) and over ``PPOHParams``. ``metrics`` is a
    dict of ``[num_updates]`` arrays: ``episode_return`` (mean return of the
    episodes that ended during that update, NaN if none), ``episodes``,
    ``env_steps``, ``learning_rate``, ``policy_loss``, ``value_loss``,
    ``entropy``, ``approx_kl``, ``clip_fraction``.
    """
    ppo = make_ppo(config)

    def train(key: jax.Array, hparams: PPOHParams | None = None):
        hparams = ppo.default_hparams if hparams is None else hparams
        state = ppo.init(key, hparams)
        return ppo.run(state, hparams, config.num_updates, callback)

    return train


def hparam_grid(config: PPOConfig, **values: Sequence[float]) -> PPOHParams:
    """``PPOHParams`` batched over the listed values (others from ``config``).

    ``hparam_grid(config, learning_rate=[1e-4, 3e-4])`` has leaves of shape [2];
    several fields must have equal lengths (zip, not product).
    """
    base = PPOHParams.from_config(config)
    lengths = {len(v) for v in values.values()}
    if len(lengths) > 1:
        raise ValueError(f"hparam_grid: values must have equal lengths, got {values}")
    n = lengths.pop() if lengths else 1
    unknown = set(values) - set(PPOHParams.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"hparam_grid: unknown fields {sorted(unknown)}; known: "
            f"{sorted(PPOHParams.__dataclass_fields__)}"
        )
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,)), base).replace(
        **{k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    )
