"""Recurrent PPO on gymnax: a GRU actor-critic for partially observable tasks.

    config = RecurrentPPOConfig(
        env_id="MemoryChain-bsuite", env_params={"memory_length": 10}
    )
    train = make_train(config)                   # train(key, hparams=None)
    state, metrics = jax.jit(train)(key)         # metrics: dict of [num_updates]
    jax.jit(jax.vmap(train))(keys)               # many seeds in one call

The design follows purejaxrl's ``ppo_rnn.py`` (Lu et al. 2022), written anew on
this package's PPO pieces (``PPOHParams``, ``gae``, the clipped losses):

* **Hidden state through the rollout.** ``TrainState.hidden`` (``[num_envs,
  rnn_size]``) carries the GRU state from one rollout to the next, and
  ``TrainState.starts`` says which current observations begin an episode. The
  network zeroes the hidden state of an environment *before* it reads the first
  observation of an episode (``starts[t]`` is ``done[t - 1]``), so no memory
  crosses an episode boundary, in the rollout and in training alike.
* **Truncated backprop over the rollout.** The hidden state at the start of each
  rollout is stored; training replays every environment's whole ``num_steps``
  sequence from it (with the same resets) and backpropagates through all of it.
* **Minibatches over environments.** Each minibatch holds whole sequences of
  ``num_envs / num_minibatches`` environments. The environments are taken in
  consecutive groups of ``num_minibatches`` and every epoch each group sends one
  random member (drawn from its environments' own keys) to each minibatch; a
  device holds whole groups, so every device holds an equal share of every
  minibatch whatever the placement, and the ``num_devices = N`` run
  (``jax.shard_map``, gradients averaged with ``lax.pmean``) computes the same
  thing as the 1-device run, up to the order of floating-point sums.
* **Values of the next observation.** GAE bootstraps from ``V(s'_t)`` on
  truncation; here it is the critic at ``s'_t`` (before any reset) after the GRU
  has read the episode up to ``t``, computed in the rollout.

Sizes and the environment are static (``RecurrentPPOConfig``); the numbers are
``PPOHParams`` (the same as PPO's), so a sweep over them is a ``vmap``.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import distrax
import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from gymnax.environments import spaces as gym_spaces
from gymnax.wrappers import FlattenObservationWrapper, LogWrapper
from jax.sharding import PartitionSpec as P

from convergence_jax.distributed import global_mesh
from convergence_jax.rl._scan import scan_updates
from convergence_jax.rl.losses import (
    clipped_value_loss,
    entropy_loss,
    gae,
    ppo_policy_loss,
)
from convergence_jax.rl.networks import ACTIVATIONS, MLP, _orthogonal
from convergence_jax.rl.ppo import (
    PPOHParams,
    _check_common,
    _is_key,
    _pmean,
    _rollout_metrics,
    _split_keys,
)

__all__ = [
    "RecurrentActorCritic",
    "RecurrentPPO",
    "RecurrentPPOConfig",
    "RecurrentTrainState",
    "make_recurrent_ppo",
    "make_recurrent_train",
]

AXIS = "devices"


@dataclass(frozen=True)
class RecurrentPPOConfig:
    """A recurrent PPO run: environment, sizes and network (static), and numbers."""

    env_id: str = "MemoryChain-bsuite"
    """A gymnax environment id."""
    total_timesteps: int = 1_000_000
    """Environment steps over the whole run (all environments together)."""
    num_envs: int = 64
    """Parallel environments (split over devices)."""
    num_steps: int = 128
    """Steps per environment per rollout: the length of the backpropagated
    sequences."""
    update_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch, each of num_envs / num_minibatches whole sequences;
    num_devices * num_minibatches must divide num_envs."""
    rnn_size: int = 128
    """GRU hidden state size."""
    embed_size: int = 128
    """Size of the dense embedding of observations before the GRU."""
    hidden_sizes: tuple[int, ...] = (128,)
    """Hidden layer sizes of the actor head and of the critic head on the GRU."""
    activation: str = "tanh"
    """Activation of the embedding and heads: tanh, relu, gelu or silu."""
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
    """Keyword arguments for gymnax.make (the environment's constructor)."""
    env_params: dict[str, Any] = field(default_factory=dict)
    """Overrides of the environment's EnvParams fields, e.g. memory_length=10
    for MemoryChain-bsuite."""

    @property
    def batch_size(self) -> int:
        """Transitions per rollout: num_envs * num_steps."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Rollout + learning iterations: total_timesteps // batch_size."""
        return self.total_timesteps // self.batch_size


@struct.dataclass
class RecurrentTrainState:
    """Everything a recurrent PPO run needs to continue."""

    params: Any
    opt_state: Any
    env_state: Any
    """gymnax states (LogWrapper), leaves ``[num_envs, ...]``."""
    obs: jax.Array
    """Current observations, ``[num_envs, obs_dim]``."""
    starts: jax.Array
    """Whether each current observation begins an episode, ``[num_envs]`` bool."""
    hidden: jax.Array
    """GRU state before reading ``obs``, ``[num_envs, rnn_size]``."""
    keys: jax.Array
    """One typed PRNG key per environment, ``[num_envs]``."""
    step: jax.Array
    """Updates done so far (int32)."""


class _ResetGRU(nn.Module):
    """A GRU scanned over time whose state is zeroed where an episode starts."""

    rnn_size: int

    @functools.partial(
        nn.scan,
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=0,
        out_axes=0,
    )
    @nn.compact
    def __call__(self, hidden, inputs):
        x, starts = inputs
        hidden = jnp.where(starts[..., None], jnp.zeros_like(hidden), hidden)
        hidden, out = nn.GRUCell(self.rnn_size)(hidden, x)
        return hidden, out


class RecurrentActorCritic(nn.Module):
    """Dense embedding -> GRU (reset at episode starts) -> actor and critic heads.

    ``__call__(hidden [B, H], obs [T, B, obs_dim], starts [T, B]) ->
    (hidden_T [B, H], distribution over [T, B], value [T, B])``. ``starts[t, b]``
    zeroes environment ``b``'s state before it reads ``obs[t, b]``. Discrete
    actions: ``distrax.Categorical``; continuous: a diagonal Gaussian with a
    state-independent ``log_std``.
    """

    action_dim: int
    continuous: bool = False
    rnn_size: int = 128
    embed_size: int = 128
    hidden_sizes: tuple[int, ...] = (128,)
    activation: str = "tanh"

    @nn.compact
    def __call__(self, hidden, obs, starts):
        act = ACTIVATIONS[self.activation]
        x = act(nn.Dense(self.embed_size, kernel_init=_orthogonal(np.sqrt(2.0)))(obs))
        hidden, features = _ResetGRU(self.rnn_size)(hidden, (x, starts))
        out = MLP(self.hidden_sizes, self.action_dim, self.activation, 0.01)(features)
        value = MLP(self.hidden_sizes, 1, self.activation, 1.0)(features)[..., 0]
        if not self.continuous:
            return hidden, distrax.Categorical(logits=out), value
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        dist = distrax.MultivariateNormalDiag(
            out, jnp.exp(log_std) * jnp.ones_like(out)
        )
        return hidden, dist, value

    def initial_hidden(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.rnn_size), jnp.float32)


class RecurrentPPO(NamedTuple):
    """The pure functions of a recurrent PPO run (see the module docstring)."""

    config: RecurrentPPOConfig
    network: RecurrentActorCritic
    default_hparams: PPOHParams
    init: Callable[..., RecurrentTrainState]
    """``init(key, hparams=None) -> RecurrentTrainState``."""
    update: Callable[..., tuple[RecurrentTrainState, dict]]
    """``update(state, hparams) -> (state, metrics)``: one rollout and its epochs."""
    run: Callable[..., tuple[RecurrentTrainState, dict]]
    """``run(state, hparams, num_updates, callback=None) -> (state, metrics [n])``."""
    policy: Callable[..., tuple[jax.Array, jax.Array]]
    """``policy(params, hidden [B, H], obs [B, obs_dim], starts [B], key) ->
    (env actions [B, ...], hidden [B, H])``: one step of the policy."""


# ------------------------------------------------------------------ validation


def _make_env(config: RecurrentPPOConfig):
    if config.env_id not in gymnax.registered_envs:
        close = difflib.get_close_matches(config.env_id, gymnax.registered_envs, 3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"RecurrentPPOConfig.env_id: unknown gymnax environment "
            f"{config.env_id!r}{hint}"
        )
    env, env_params = gymnax.make(config.env_id, **config.env_kwargs)
    unknown = set(config.env_params) - set(env_params.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"RecurrentPPOConfig.env_params: {config.env_id} has no parameters "
            f"{sorted(unknown)}; known: {sorted(env_params.__dataclass_fields__)}"
        )
    env_params = env_params.replace(**config.env_params)
    if len(env.observation_space(env_params).shape) > 1:
        env = FlattenObservationWrapper(env)
    return LogWrapper(env), env_params


def _check_config(config: RecurrentPPOConfig, action_space) -> bool:
    """Validate before anything compiles; returns whether actions are continuous."""
    name_of = "RecurrentPPOConfig."
    ints = ("total_timesteps", "num_envs", "num_steps", "update_epochs")
    ints += ("num_minibatches", "num_devices", "rnn_size", "embed_size")
    for name in ints:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name_of}{name}: expected an int >= 1, got {value!r}")
    groups = config.num_devices * config.num_minibatches
    if config.num_envs % groups:
        raise ValueError(
            f"RecurrentPPOConfig: num_envs ({config.num_envs}) must be a multiple of "
            f"num_devices * num_minibatches ({config.num_devices} * "
            f"{config.num_minibatches}); every minibatch takes whole sequences of "
            "an equal share of each device's environments"
        )
    _check_common(config, "RecurrentPPOConfig")
    if isinstance(action_space, gym_spaces.Discrete):
        return False
    if isinstance(action_space, gym_spaces.Box):
        return True
    raise ValueError(
        f"{name_of}env_id: {config.env_id} has a {type(action_space).__name__} "
        "action space; recurrent PPO here supports Discrete and Box"
    )


# ------------------------------------------------------------------ helpers


def stratified_env_minibatches(keys: jax.Array, num_minibatches: int) -> jax.Array:
    """Which environments go to which minibatch this epoch.

    ``keys [E]`` (one per environment, ``E`` a multiple of ``num_minibatches``) ->
    ``index [num_minibatches, E / num_minibatches]`` of environments: environments
    ``g M .. g M + M - 1`` form group ``g`` and minibatch ``m`` takes the group
    member of rank ``m`` under uniform draws from the members' own keys, so each
    group is spread over all minibatches in a random order.
    """
    num_envs = keys.shape[0]
    draws = jax.vmap(jax.random.uniform)(keys).reshape(-1, num_minibatches)
    order = jnp.argsort(draws, axis=1)  # [G, M]: member of rank m in group g
    base = (jnp.arange(num_envs // num_minibatches) * num_minibatches)[:, None]
    return (base + order).T


# ------------------------------------------------------------------ the program


def make_recurrent_ppo(config: RecurrentPPOConfig) -> RecurrentPPO:
    """Build the pure functions of a recurrent PPO run; validates ``config``."""
    env, env_params = _make_env(config)
    action_space = env.action_space(env_params)
    continuous = _check_config(config, action_space)
    obs_dim = int(np.prod(env.observation_space(env_params).shape))
    if continuous:
        action_dim = int(np.prod(action_space.shape))
        low = jnp.broadcast_to(jnp.asarray(action_space.low, jnp.float32), action_dim)
        high = jnp.broadcast_to(jnp.asarray(action_space.high, jnp.float32), action_dim)
    else:
        action_dim = int(action_space.n)
    network = RecurrentActorCritic(
        action_dim=action_dim,
        continuous=continuous,
        rnn_size=config.rnn_size,
        embed_size=config.embed_size,
        hidden_sizes=tuple(config.hidden_sizes),
        activation=config.activation,
    )
    sharded = config.num_devices > 1
    num_steps, num_minibatches = config.num_steps, config.num_minibatches
    default_hparams = PPOHParams.from_config(config)

    def optimizer(hparams: PPOHParams):
        # The step size is applied by hand (see learn) so that it can be traced.
        return optax.chain(
            optax.clip_by_global_norm(hparams.max_grad_norm),
            optax.scale_by_adam(eps=1e-5),
        )

    def learning_rate(step, hparams: PPOHParams):
        if not config.anneal_lr:
            return hparams.learning_rate
        return hparams.learning_rate * jnp.maximum(
            0.0, 1.0 - step.astype(jnp.float32) / config.num_updates
        )

    def to_env_action(raw):
        if not continuous:
            return raw
        action = jnp.clip(raw, low, high)
        return action.reshape(raw.shape[:-1] + tuple(action_space.shape))

    def sample_each(dist, keys):
        """One sample per environment from a distribution over ``[1, B]``, each
        with that environment's own key (so placement on devices does not matter).
        """
        if continuous:
            noise = jax.vmap(lambda k: jax.random.normal(k, (action_dim,)))(keys)
            return dist.loc[0] + dist.scale_diag[0] * noise
        return jax.vmap(jax.random.categorical)(keys, dist.logits[0])

    def init(key: jax.Array, hparams: PPOHParams | None = None):
        hparams = default_hparams if hparams is None else hparams
        k_params, k_envs = jax.random.split(key)
        params = network.init(
            k_params,
            network.initial_hidden(1),
            jnp.zeros((1, 1, obs_dim), jnp.float32),
            jnp.zeros((1, 1), bool),
        )
        env_keys = jax.random.split(k_envs, config.num_envs)
        reset_keys, keys = _split_keys(env_keys, 2)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, env_params)
        state = RecurrentTrainState(
            params=params,
            opt_state=optimizer(hparams).init(params),
            env_state=env_state,
            obs=obs.reshape(config.num_envs, -1).astype(jnp.float32),
            starts=jnp.ones(config.num_envs, bool),
            hidden=network.initial_hidden(config.num_envs),
            keys=keys,
            step=jnp.zeros((), jnp.int32),
        )
        # Strong types (gymnax counters are weakly typed Python ints), so a state
        # restored from a checkpoint reuses the compiled program.
        return jax.tree.map(
            lambda x: x if _is_key(x) else jnp.asarray(x, x.dtype), state
        )

    def rollout(state: RecurrentTrainState):
        params = state.params

        def step(carry, _):
            env_state, obs, starts, hidden, keys = carry
            keys, k_act, k_env = _split_keys(keys, 3)
            hidden, dist, value = network.apply(params, hidden, obs[None], starts[None])
            raw = sample_each(dist, k_act)
            log_prob = dist.log_prob(raw[None])[0]
            next_obs, env_state, reward, terminated, truncated, info = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(k_env, env_state, to_env_action(raw), env_params)
            next_obs = next_obs.reshape(obs.shape).astype(jnp.float32)
            final_obs = info["final_observation"].reshape(obs.shape)
            final_obs = final_obs.astype(jnp.float32)
            # V(s'_t) with the memory of the episode so far (same episode: no reset).
            _, _, next_value = network.apply(
                params, hidden, final_obs[None], jnp.zeros_like(starts)[None]
            )
            done = jnp.logical_or(terminated, truncated)
            transition = {
                "obs": obs,
                "starts": starts,
                "action": raw,
                "log_prob": log_prob,
                "value": value[0],
                "next_value": next_value[0],
                "reward": reward.astype(jnp.float32),
                "terminated": terminated,
                "truncated": truncated,
                "episode_done": info["returned_episode"],
                "episode_return": info["returned_episode_returns"],
            }
            return (env_state, next_obs, done, hidden, keys), transition

        carry = (state.env_state, state.obs, state.starts, state.hidden, state.keys)
        carry, traj = jax.lax.scan(step, carry, None, num_steps)
        return carry, traj

    def loss_fn(params, batch, hparams: PPOHParams):
        _, dist, value = network.apply(
            params, batch["hidden"], batch["obs"], batch["starts"]
        )
        log_prob = dist.log_prob(batch["action"]).reshape(-1)
        entropy = dist.entropy().reshape(-1)
        value = value.reshape(-1)
        flat = {k: batch[k].reshape(-1) for k in ("log_prob", "value", "advantage")}
        returns = batch["return"].reshape(-1)
        advantages = flat["advantage"]
        # Advantage normalization over the global minibatch (all devices).
        mean = _pmean(advantages.mean(), sharded)
        std = jnp.sqrt(_pmean(jnp.square(advantages - mean).mean(), sharded))
        advantages = (advantages - mean) / (std + 1e-8)
        policy_loss = ppo_policy_loss(
            log_prob, flat["log_prob"], advantages, hparams.clip_eps
        )
        value_loss = clipped_value_loss(value, flat["value"], returns, hparams.clip_eps)
        ratio = jnp.exp(log_prob - flat["log_prob"])
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

    def learn(state: RecurrentTrainState, data, keys, hparams):
        """``update_epochs`` passes over minibatches of whole env sequences."""
        step_size = learning_rate(state.step, hparams)
        tx = optimizer(hparams)

        def minibatch_step(carry, batch):
            params, opt_state = carry
            # See ppo.py: differentiate a device-varying copy, then pmean.
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
            index = stratified_env_minibatches(k_perm, num_minibatches)  # [M, E/M]
            batches = {
                # hidden is env-major [E, H]; the rest time-major [T, E, ...].
                k: (
                    jnp.take(v, index, axis=0)
                    if k == "hidden"
                    else jnp.moveaxis(jnp.take(v, index, axis=1), 1, 0)
                )
                for k, v in data.items()
            }
            (params, opt_state), aux = jax.lax.scan(
                minibatch_step, (params, opt_state), batches
            )
            return (params, opt_state, keys), aux

        (params, opt_state, keys), aux = jax.lax.scan(
            epoch, (state.params, state.opt_state, keys), None, config.update_epochs
        )
        return params, opt_state, keys, jax.tree.map(jnp.mean, aux)

    def update_local(state: RecurrentTrainState, hparams: PPOHParams):
        carry, traj = rollout(state)
        env_state, obs, starts, hidden, keys = carry
        advantages, returns = jax.vmap(
            gae, in_axes=(1, 1, 1, 1, 1, None, None), out_axes=1
        )(
            traj["reward"] * hparams.reward_scale,
            traj["value"],
            traj["next_value"],
            traj["terminated"],
            traj["truncated"],
            hparams.gamma,
            hparams.gae_lambda,
        )
        data = {
            "hidden": state.hidden,
            "obs": traj["obs"],
            "starts": traj["starts"],
            "action": traj["action"],
            "log_prob": traj["log_prob"],
            "value": traj["value"],
            "advantage": advantages,
            "return": returns,
        }
        params, opt_state, keys, aux = learn(state, data, keys, hparams)
        metrics = _rollout_metrics(
            traj,
            state.step,
            config.batch_size,
            learning_rate(state.step, hparams),
            aux,
            sharded,
        )
        new_state = RecurrentTrainState(
            params=params,
            opt_state=opt_state,
            env_state=env_state,
            obs=obs,
            starts=starts,
            hidden=hidden,
            keys=keys,
            step=state.step + 1,
        )
        return new_state, metrics

    if sharded:
        mesh = global_mesh(config.num_devices, AXIS)
        state_specs = RecurrentTrainState(
            params=P(),
            opt_state=P(),
            env_state=P(AXIS),
            obs=P(AXIS),
            starts=P(AXIS),
            hidden=P(AXIS),
            keys=P(AXIS),
            step=P(),
        )
        update = jax.shard_map(
            update_local,
            mesh=mesh,
            in_specs=(state_specs, P()),
            out_specs=(state_specs, P()),
        )
    else:
        update = update_local

    def policy(params, hidden, obs, starts, key):
        """One policy step for a batch: ``(env actions [B, ...], hidden [B, H])``."""
        hidden, dist, _ = network.apply(
            params, hidden, obs.astype(jnp.float32)[None], starts[None]
        )
        keys = jax.random.split(key, obs.shape[0])
        return to_env_action(sample_each(dist, keys)), hidden

    def run(
        state: RecurrentTrainState,
        hparams: PPOHParams | None = None,
        num_updates: int | None = None,
        callback: Callable[[dict], None] | None = None,
    ):
        """``num_updates`` updates (default: the whole run) as one scan."""
        hparams = default_hparams if hparams is None else hparams
        if num_updates is None:
            num_updates = config.num_updates
        return scan_updates(update, state, hparams, num_updates, callback)

    return RecurrentPPO(
        config=config,
        network=network,
        default_hparams=default_hparams,
        init=init,
        update=update,
        run=run,
        policy=policy,
    )


def make_recurrent_train(
    config: RecurrentPPOConfig, callback: Callable[[dict], None] | None = None
):
    """``train(key, hparams=None) -> (RecurrentTrainState, metrics)``: a whole run.

    Jit it; ``vmap`` it over keys (seeds) and over ``PPOHParams``. ``metrics`` is
    a dict of ``[num_updates]`` arrays, as PPO's: ``episode_return``, ``episodes``,
    ``env_steps``, ``learning_rate``, ``policy_loss``, ``value_loss``,
    ``entropy``, ``approx_kl``, ``clip_fraction``.
    """
    ppo = make_recurrent_ppo(config)

    def train(key: jax.Array, hparams: PPOHParams | None = None):
        hparams = ppo.default_hparams if hparams is None else hparams
        state = ppo.init(key, hparams)
        return ppo.run(state, hparams, config.num_updates, callback)

    return train
