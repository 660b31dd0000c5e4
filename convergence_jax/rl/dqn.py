"""DQN on gymnax as one compiled program (purejaxrl style), data parallel by design.

    config = DQNConfig(env_id="CartPole-v1", total_timesteps=100_000)
    train = make_train(config)                   # train(key, hparams=None)
    state, metrics = jax.jit(train)(key)         # metrics: dict of [num_updates]
    jax.jit(jax.vmap(train))(keys)               # many seeds in one call
    jax.jit(jax.vmap(train))(keys, hparams)      # ... and many hyperparameters

The agent: double DQN (van Hasselt et al. 2016; ``double_dqn``), a dueling head
(Wang et al. 2016; ``dueling``), n-step returns cut at episode ends (``n_step``),
a target network updated every ``target_update_period`` environment steps by
Polyak averaging with rate ``tau`` (``tau = 1`` is a hard copy), and a linear
epsilon-greedy schedule. Truncation (a time limit) bootstraps from the state the
step reached (gymnax 1.0's ``info["final_observation"]``); termination does not.
The replay buffer (``rl.buffer``) lives inside the compiled program.

One *update* steps every environment ``rollout_steps`` times (adding each step
to the buffer), then takes ``gradient_steps`` Adam steps on minibatches of
``batch_size`` drawn from the buffer, then updates the target network. Before
``learning_starts`` environment steps, actions are uniform and nothing is learned.

Sizes, the environment and the network are static (``DQNConfig``); every number a
sweep may change lives in ``DQNHParams`` (learning rate, discount, the epsilon
schedule, target rate and period, gradient clip, learning start), so a sweep is a
``vmap``.

**Data parallel.** With ``num_devices = N`` the environments, and with them the
replay buffer (stored per environment), are split over a 1-D device mesh
(``jax.shard_map``); each device steps its environments, samples its share of
every minibatch from its own part of the buffer, and the gradients are averaged
with ``lax.pmean``. Every minibatch takes ``batch_size / num_envs`` transitions
of *each* environment, drawn with that environment's own key, so minibatches do
not depend on how environments are placed: the N-device run computes the same
thing as the 1-device run, up to the order of floating-point sums.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from gymnax.environments import spaces as gym_spaces
from jax.sharding import PartitionSpec as P

from convergence_jax.rl import _offpolicy
from convergence_jax.rl import ppo as _ppo
from convergence_jax.rl._scan import scan_updates
from convergence_jax.rl.buffer import (
    ReplayBuffer,
    buffer_add,
    buffer_init,
    buffer_sample_sequences,
)
from convergence_jax.rl.networks import ACTIVATIONS
from convergence_jax.rl.value_losses import (
    double_q_value,
    n_step_return,
    q_learning_value,
    td_loss,
)

__all__ = [
    "DQN",
    "DQNConfig",
    "DQNHParams",
    "DQNTrainState",
    "QNetwork",
    "dqn_hparam_grid",
    "make_dqn",
    "make_dqn_train",
    "make_train",
]

AXIS = _ppo.AXIS


@dataclass(frozen=True)
class DQNConfig:
    """A DQN run: environment, sizes and network (static), and default numbers."""

    env_id: str = "CartPole-v1"
    """A gymnax environment id with a discrete action space, e.g. CartPole-v1."""
    total_timesteps: int = 100_000
    """Environment steps over the whole run (all environments together)."""
    num_envs: int = 10
    """Parallel environments (split over devices)."""
    rollout_steps: int = 1
    """Steps of every environment per update (each added to the buffer)."""
    gradient_steps: int = 5
    """Adam steps per update (once learning has started)."""
    batch_size: int = 100
    """Transitions per minibatch; a multiple of num_envs (each env gives its share)."""
    buffer_size: int = 50_000
    """Replay capacity in transitions (all environments together)."""
    n_step: int = 1
    """Steps of the n-step return (1: one-step Q-learning)."""
    double_dqn: bool = True
    """Double DQN target: the online network picks a', the target network values it."""
    dueling: bool = True
    """Dueling head: Q = V + A - mean(A)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the Q network."""
    activation: str = "silu"
    """Hidden activation: tanh, relu, gelu or silu (swish)."""
    num_devices: int = 1
    """Devices to split the environments and the buffer over (data parallel)."""
    learning_rate: float = 1e-3
    """Adam step size (default of DQNHParams)."""
    gamma: float = 0.99
    """Discount."""
    eps_start: float = 1.0
    """Exploration epsilon at the start of the schedule."""
    eps_end: float = 0.05
    """Exploration epsilon at the end of the schedule (and after)."""
    exploration_fraction: float = 0.5
    """Fraction of total_timesteps over which epsilon decays linearly."""
    tau: float = 0.02
    """Target update rate: target <- (1 - tau) target + tau online (1: hard copy)."""
    target_update_period: int = 1
    """Environment steps between target updates (crossings of its multiples)."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip."""
    learning_starts: int = 5_000
    """Environment steps of uniform actions before learning starts."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for gymnax.make."""
    env_wrapper: Callable[[Any, Any], tuple[Any, Any]] | None = None
    """Optional ``f(env, env_params) -> (env, env_params)`` applied to the gymnax
    environment before flattening and logging (as PPOConfig.env_wrapper), e.g. a
    domain randomization; its params go to reset and step."""

    @property
    def steps_per_update(self) -> int:
        """Environment steps per update: num_envs * rollout_steps."""
        return self.num_envs * self.rollout_steps

    @property
    def num_updates(self) -> int:
        """Updates of the run: total_timesteps // steps_per_update."""
        return self.total_timesteps // self.steps_per_update


@struct.dataclass
class DQNHParams:
    """The numbers of a run; scalars (or batched, under ``vmap``)."""

    learning_rate: jax.Array
    gamma: jax.Array
    eps_start: jax.Array
    eps_end: jax.Array
    exploration_fraction: jax.Array
    tau: jax.Array
    target_update_period: jax.Array
    max_grad_norm: jax.Array
    learning_starts: jax.Array

    @classmethod
    def from_config(cls, config: DQNConfig) -> DQNHParams:
        return cls(
            **{
                name: jnp.asarray(getattr(config, name), jnp.float32)
                for name in cls.__dataclass_fields__
            }
        )


@struct.dataclass
class DQNTrainState:
    """Everything a DQN run needs to continue."""

    params: Any
    target_params: Any
    opt_state: Any
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


class QNetwork(nn.Module):
    """An MLP from observations to Q-values ``[..., num_actions]``; with
    ``dueling``, separate value and advantage heads on the shared torso,
    ``Q = V + A - mean_a A`` (Wang et al. 2016). Flax's default initializers."""

    num_actions: int
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "silu"
    dueling: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        x = obs
        for size in self.hidden_sizes:
            x = act(nn.Dense(size)(x))
        if not self.dueling:
            return nn.Dense(self.num_actions)(x)
        value = nn.Dense(1)(x)
        advantage = nn.Dense(self.num_actions)(x)
        return value + advantage - advantage.mean(-1, keepdims=True)


class DQN(NamedTuple):
    """The pure functions of a DQN run (see the module docstring)."""

    config: DQNConfig
    network: QNetwork
    default_hparams: DQNHParams
    init: Callable[..., DQNTrainState]
    """``init(key, hparams=None) -> DQNTrainState``."""
    update: Callable[..., tuple[DQNTrainState, dict]]
    """``update(state, hparams) -> (state, metrics)``: steps, learning, target."""
    run: Callable[..., tuple[DQNTrainState, dict]]
    """``run(state, hparams, num_updates, callback=None) -> (state, metrics [n])``."""
    policy: Callable[..., jax.Array]
    """``policy(params, obs [B, obs_dim], key, epsilon=0.0) -> actions [B]``:
    epsilon-greedy (greedy by default)."""
    q_values: Callable[..., jax.Array]
    """``q_values(params, obs [..., obs_dim]) -> [..., num_actions]``."""
    epsilon: Callable[..., jax.Array]
    """``epsilon(env_steps, hparams)``: the linear exploration schedule."""
    exploration: Callable[..., jax.Array]
    """``exploration(state, hparams)``: the epsilon the next update acts with (1
    before learning_starts)."""
    learn_batch: Callable[..., tuple[DQNTrainState, dict]]
    """``learn_batch(state, batch, hparams) -> (state, metrics)``: one update on
    ``[rollout_steps, num_envs]`` steps collected outside (``loop.DQNAgent``)."""


# ------------------------------------------------------------------ validation


def _make_env(config: DQNConfig):
    try:
        return _ppo._make_env(config)
    except ValueError as error:  # its message names PPOConfig
        raise ValueError(str(error).replace("PPOConfig", "DQNConfig")) from None


def _check_config(config: DQNConfig, action_space) -> None:
    """Validate before anything compiles; messages name the field."""

    def int_at_least(name, low):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"DQNConfig.{name}: expected an int >= {low}, got {value!r}"
            )

    for name in (
        "total_timesteps",
        "num_envs",
        "rollout_steps",
        "gradient_steps",
        "batch_size",
        "buffer_size",
        "n_step",
        "num_devices",
        "target_update_period",
    ):
        int_at_least(name, 1)
    int_at_least("learning_starts", 0)
    if not isinstance(action_space, gym_spaces.Discrete):
        raise ValueError(
            f"DQNConfig.env_id: {config.env_id} has a {type(action_space).__name__} "
            "action space; DQN needs a Discrete one (for continuous actions use SAC "
            "or TD3)"
        )
    if config.num_envs % config.num_devices:
        raise ValueError(
            f"DQNConfig: num_envs ({config.num_envs}) must be a multiple of "
            f"num_devices ({config.num_devices})"
        )
    if config.num_devices > jax.device_count():
        raise ValueError(
            f"DQNConfig.num_devices: {config.num_devices} requested, "
            f"{jax.device_count()} available ({jax.devices()[0].platform}); on CPU, "
            "set XLA_FLAGS=--xla_force_host_platform_device_count=N before "
            "importing jax"
        )
    if config.batch_size % config.num_envs:
        raise ValueError(
            f"DQNConfig: batch_size ({config.batch_size}) must be a multiple of "
            f"num_envs ({config.num_envs}); every minibatch takes batch_size / "
            "num_envs transitions of each environment"
        )
    rows = config.buffer_size // config.num_envs
    if rows < config.n_step:
        raise ValueError(
            f"DQNConfig.buffer_size ({config.buffer_size}) holds {rows} steps per "
            f"environment ({config.num_envs} envs), fewer than n_step "
            f"({config.n_step})"
        )
    if config.num_updates < 1:
        raise ValueError(
            f"DQNConfig.total_timesteps ({config.total_timesteps}) is less than one "
            f"update (num_envs * rollout_steps = {config.steps_per_update})"
        )
    if config.learning_starts >= config.total_timesteps:
        raise ValueError(
            f"DQNConfig.learning_starts ({config.learning_starts}) >= "
            f"total_timesteps ({config.total_timesteps}): the run would never learn"
        )
    if config.activation not in ACTIVATIONS:
        raise ValueError(
            f"DQNConfig.activation: expected one of {sorted(ACTIVATIONS)}, got "
            f"{config.activation!r}"
        )
    if not config.hidden_sizes or any(
        isinstance(h, bool) or not isinstance(h, int) or h < 1
        for h in config.hidden_sizes
    ):
        raise ValueError(
            f"DQNConfig.hidden_sizes: expected positive ints, got {config.hidden_sizes}"
        )
    for name in ("learning_rate", "max_grad_norm"):
        if not getattr(config, name) > 0:
            raise ValueError(
                f"DQNConfig.{name}: expected > 0, got {getattr(config, name)}"
            )
    for name in ("gamma", "eps_start", "eps_end", "exploration_fraction"):
        if not 0 <= getattr(config, name) <= 1:
            raise ValueError(
                f"DQNConfig.{name}: expected in [0, 1], got {getattr(config, name)}"
            )
    if not 0 < config.tau <= 1:
        raise ValueError(f"DQNConfig.tau: expected in (0, 1], got {config.tau}")


# ------------------------------------------------------------------ the program


def make_dqn(config: DQNConfig) -> DQN:
    """Build the pure functions of a DQN run; validates ``config`` first."""
    env, env_params = _make_env(config)
    action_space = env.action_space(env_params)
    _check_config(config, action_space)
    num_actions = int(action_space.n)
    obs_dim = int(np.prod(env.observation_space(env_params).shape))
    network = QNetwork(
        num_actions=num_actions,
        hidden_sizes=tuple(config.hidden_sizes),
        activation=config.activation,
        dueling=config.dueling,
    )
    sharded = config.num_devices > 1
    n_step = config.n_step
    per_env_batch = config.batch_size // config.num_envs
    default_hparams = DQNHParams.from_config(config)
    pmean = (lambda x: jax.lax.pmean(x, AXIS)) if sharded else (lambda x: x)
    psum = (lambda x: jax.lax.psum(x, AXIS)) if sharded else (lambda x: x)

    def optimizer(hparams: DQNHParams):
        # The step size is applied by hand (see learn) so that it can be traced.
        return optax.chain(
            optax.clip_by_global_norm(hparams.max_grad_norm), optax.scale_by_adam()
        )

    def epsilon(env_steps, hparams: DQNHParams):
        """Linear from eps_start to eps_end over exploration_fraction of the run."""
        horizon = jnp.maximum(hparams.exploration_fraction * config.total_timesteps, 1)
        frac = jnp.clip(jnp.asarray(env_steps, jnp.float32) / horizon, 0.0, 1.0)
        return hparams.eps_start + frac * (hparams.eps_end - hparams.eps_start)

    def q_values(params, obs):
        return network.apply(params, obs)

    def greedy_or_random(q, key, eps):
        """One environment: epsilon-greedy action from Q-values ``[A]``."""
        k_explore, k_action = jax.random.split(key)
        random_action = jax.random.randint(k_action, (), 0, num_actions)
        explore = jax.random.uniform(k_explore) < eps
        return jnp.where(explore, random_action, jnp.argmax(q)).astype(jnp.int32)

    def policy(params, obs, key, epsilon=0.0):
        obs = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
        keys = jax.random.split(key, obs.shape[0])
        eps = jnp.broadcast_to(jnp.asarray(epsilon, jnp.float32), obs.shape[:1])
        return jax.vmap(greedy_or_random)(q_values(params, obs), keys, eps)

    def init(key: jax.Array, hparams: DQNHParams | None = None) -> DQNTrainState:
        hparams = default_hparams if hparams is None else hparams
        k_params, k_envs = jax.random.split(key)
        params = network.init(k_params, jnp.zeros((obs_dim,), jnp.float32))
        env_keys = jax.random.split(k_envs, config.num_envs)
        reset_keys, keys = _ppo._split_keys(env_keys, 2)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, env_params)
        obs = obs.reshape(config.num_envs, -1).astype(jnp.float32)
        example = {
            "obs": jnp.zeros((obs_dim,), jnp.float32),
            "action": jnp.zeros((), jnp.int32),
            "reward": jnp.zeros((), jnp.float32),
            "terminated": jnp.zeros((), bool),
            "truncated": jnp.zeros((), bool),
            "next_obs": jnp.zeros((obs_dim,), jnp.float32),
        }
        state = DQNTrainState(
            params=params,
            target_params=params,
            opt_state=optimizer(hparams).init(params),
            buffer=buffer_init(example, config.buffer_size, config.num_envs),
            env_state=env_state,
            obs=obs,
            keys=keys,
            step=jnp.zeros((), jnp.int32),
        )
        # Strong types (gymnax counters are weakly typed), so a restored state
        # reuses the compiled program.
        return jax.tree.map(
            lambda x: x if _ppo._is_key(x) else jnp.asarray(x, x.dtype), state
        )

    def collect(state: DQNTrainState, eps):
        """``rollout_steps`` steps of every (local) environment into the buffer."""

        def step(carry, _):
            env_state, obs, keys, buffer = carry
            keys, k_act, k_env = _ppo._split_keys(keys, 3)
            q = q_values(state.params, obs)
            action = jax.vmap(greedy_or_random, in_axes=(0, 0, None))(q, k_act, eps)
            next_obs, env_state, reward, terminated, truncated, info = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(k_env, env_state, action, env_params)
            next_obs = next_obs.reshape(obs.shape).astype(jnp.float32)
            transition = {
                "obs": obs,
                "action": action,
                "reward": reward.astype(jnp.float32),
                "terminated": terminated,
                "truncated": truncated,
                "next_obs": info["final_observation"].reshape(obs.shape),
            }
            buffer = buffer_add(buffer, transition)
            done = info["returned_episode"].astype(jnp.float32)
            logged = (done, info["returned_episode_returns"] * done)
            return (env_state, next_obs, keys, buffer), logged

        (env_state, obs, keys, buffer), (done, returns) = jax.lax.scan(
            step,
            (state.env_state, state.obs, state.keys, state.buffer),
            None,
            config.rollout_steps,
        )
        return env_state, obs, keys, buffer, done.sum(), returns.sum()

    def sample(keys, buffer: ReplayBuffer):
        """``per_env_batch`` runs of ``n_step`` steps of each local environment,
        each drawn with that environment's key: leaves ``[B_local, n, ...]``."""

        def one_env(key, column):
            single = buffer.replace(data=jax.tree.map(lambda x: x[:, None], column))
            return buffer_sample_sequences(key, single, per_env_batch, n_step)

        runs = jax.vmap(one_env, in_axes=(0, 1))(keys, buffer.data)
        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), runs)

    def loss_fn(params, target_params, batch, hparams: DQNHParams):
        partial, discount, last = jax.vmap(n_step_return, in_axes=(0, 0, 0, None))(
            batch["reward"], batch["terminated"], batch["truncated"], hparams.gamma
        )
        rows = jnp.arange(last.shape[0])
        next_obs = batch["next_obs"][rows, last]
        q_next_target = q_values(target_params, next_obs)
        if config.double_dqn:
            q_next_online = q_values(jax.lax.stop_gradient(params), next_obs)
            bootstrap = jax.vmap(double_q_value)(q_next_online, q_next_target)
        else:
            bootstrap = jax.vmap(q_learning_value)(q_next_target)
        target = partial + discount * bootstrap
        q = q_values(params, batch["obs"][:, 0])
        action = batch["action"][:, 0]
        loss = jax.vmap(td_loss)(q, action, target).mean()
        q_taken = jnp.take_along_axis(q, action[:, None], axis=1)[:, 0]
        return loss, {
            "loss": loss,
            "q_mean": q_taken.mean(),
            "target_mean": target.mean(),
        }

    def learn(state: DQNTrainState, keys, buffer, hparams: DQNHParams):
        tx = optimizer(hparams)

        def gradient_step(carry, _):
            params, opt_state, keys = carry
            keys, k_sample = _ppo._split_keys(keys, 2)
            batch = sample(k_sample, buffer)
            # Differentiate a device-varying copy: the gradient with respect to a
            # replicated (invariant) input would come back already psummed.
            local = jax.lax.pcast(params, AXIS, to="varying") if sharded else params
            grads, aux = jax.grad(loss_fn, has_aux=True)(
                local, state.target_params, batch, hparams
            )
            grads = pmean(grads)
            updates, opt_state = tx.update(grads, opt_state, params)
            updates = jax.tree.map(lambda u: -hparams.learning_rate * u, updates)
            params = optax.apply_updates(params, updates)
            return (params, opt_state, keys), pmean(aux)

        (params, opt_state, keys), aux = jax.lax.scan(
            gradient_step,
            (state.params, state.opt_state, keys),
            None,
            config.gradient_steps,
        )
        return params, opt_state, keys, jax.tree.map(jnp.mean, aux)

    def learn_and_target(state: DQNTrainState, keys, buffer, hparams):
        """The learning half of an update, after its steps are in ``buffer``:
        ``gradient_steps`` Adam steps (once learning has started), then the
        target update on every crossing of a multiple of target_update_period."""
        steps_before = state.step * config.steps_per_update
        steps_after = steps_before + config.steps_per_update
        can_learn = (steps_after >= hparams.learning_starts) & (
            buffer.rows_filled >= n_step
        )

        def do_learn(_):
            return learn(state, keys, buffer, hparams)

        def skip(_):
            aux = {name: jnp.float32(0.0) for name in ("loss", "q_mean", "target_mean")}
            return state.params, state.opt_state, keys, aux

        params, opt_state, keys, aux = jax.lax.cond(can_learn, do_learn, skip, None)
        period = hparams.target_update_period
        crossed = jnp.floor(steps_after / period) > jnp.floor(steps_before / period)
        rate = jnp.where(crossed, hparams.tau, 0.0)
        target_params = jax.tree.map(
            lambda t, p: t + rate * (p - t), state.target_params, params
        )
        new_state = state.replace(
            params=params,
            target_params=target_params,
            opt_state=opt_state,
            buffer=buffer,
            keys=keys,
            step=state.step + 1,
        )
        aux = {"env_steps": steps_after, "learning": can_learn, **aux}
        return new_state, aux

    def exploration(state: DQNTrainState, hparams: DQNHParams):
        """Epsilon of the update ``state.step``: 1 (uniform) before learning_starts."""
        steps_before = state.step * config.steps_per_update
        started = steps_before >= hparams.learning_starts
        return jnp.where(started, epsilon(steps_before, hparams), 1.0)

    def update_local(state: DQNTrainState, hparams: DQNHParams):
        eps = exploration(state, hparams)
        env_state, obs, keys, buffer, episodes, return_sum = collect(state, eps)
        state = state.replace(env_state=env_state, obs=obs)
        new_state, aux = learn_and_target(state, keys, buffer, hparams)
        episodes, return_sum = psum(episodes), psum(return_sum)
        metrics = {
            "episode_return": jnp.where(
                episodes > 0, return_sum / jnp.maximum(episodes, 1.0), jnp.nan
            ),
            "episodes": episodes,
            "epsilon": eps,
            **aux,
        }
        return new_state, metrics

    def learn_batch_local(state: DQNTrainState, batch: dict, hparams: DQNHParams):
        def add(buffer, step):
            return buffer_add(buffer, step), None

        transitions = {
            "obs": batch["obs"],
            "action": batch["action"],
            "reward": batch["reward"],
            "terminated": batch["terminated"],
            "truncated": batch["truncated"],
            "next_obs": batch["final_obs"],
        }
        buffer, _ = jax.lax.scan(add, state.buffer, transitions)
        new_state, aux = learn_and_target(state, state.keys, buffer, hparams)
        return new_state, {"epsilon": exploration(new_state, hparams), **aux}

    if sharded:
        mesh = jax.make_mesh(
            (config.num_devices,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
        )
        state_specs = DQNTrainState(
            params=P(),
            target_params=P(),
            opt_state=P(),
            buffer=ReplayBuffer(data=P(None, AXIS), insert=P(), rows_filled=P()),
            env_state=P(AXIS),
            obs=P(AXIS),
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

    def learn_batch(state: DQNTrainState, batch: dict, hparams: DQNHParams):
        """One update on steps collected outside (e.g. by a loop pipeline).

        ``batch`` holds ``obs``, ``action``, ``reward``, ``terminated``,
        ``truncated`` and ``final_obs`` (the observation each step led to, before
        any reset), each ``[rollout_steps, num_envs, ...]``. The steps go into the
        replay buffer, then the update learns like ``update`` (its gradient steps,
        its target update; nothing before learning_starts). ``metrics["epsilon"]``
        is the exploration the *next* window should use (see ``policy``). Data
        parallel over ``num_devices`` like ``update``.
        """
        required = ("obs", "action", "reward", "terminated", "truncated", "final_obs")
        missing = [name for name in required if name not in batch]
        if missing:
            raise ValueError(
                f"learn_batch: batch lacks {', '.join(missing)} (expected "
                f"{', '.join(required)})"
            )
        shape = (config.rollout_steps, config.num_envs)
        for name in required:
            if tuple(jnp.shape(batch[name])[:2]) != shape:
                raise ValueError(
                    f"learn_batch: batch[{name!r}] must start with [rollout_steps, "
                    f"num_envs] = {list(shape)}, got {list(jnp.shape(batch[name]))}"
                )
        batch = {
            "obs": jnp.asarray(batch["obs"], jnp.float32).reshape(shape + (obs_dim,)),
            "action": jnp.asarray(batch["action"]).reshape(shape).astype(jnp.int32),
            "reward": jnp.asarray(batch["reward"], jnp.float32).reshape(shape),
            "terminated": jnp.asarray(batch["terminated"]).reshape(shape).astype(bool),
            "truncated": jnp.asarray(batch["truncated"]).reshape(shape).astype(bool),
            "final_obs": jnp.asarray(batch["final_obs"], jnp.float32).reshape(
                shape + (obs_dim,)
            ),
        }
        if not sharded:
            return learn_batch_local(state, batch, hparams)
        return jax.shard_map(
            learn_batch_local,
            mesh=mesh,
            in_specs=(state_specs, {name: P(None, AXIS) for name in batch}, P()),
            out_specs=(state_specs, P()),
        )(state, batch, hparams)

    def run(
        state: DQNTrainState,
        hparams: DQNHParams | None = None,
        num_updates: int | None = None,
        callback: Callable[[dict], None] | None = None,
    ):
        """``num_updates`` updates (default: the whole run) as one scan.

        ``callback(metrics)``, if given, is called on the host after every update
        with that update's metrics (NumPy scalars).
        """
        hparams = default_hparams if hparams is None else hparams
        if num_updates is None:
            num_updates = config.num_updates
        return scan_updates(update, state, hparams, num_updates, callback)

    return DQN(
        config=config,
        network=network,
        default_hparams=default_hparams,
        init=init,
        update=update,
        run=run,
        policy=policy,
        q_values=q_values,
        epsilon=epsilon,
        exploration=exploration,
        learn_batch=learn_batch,
    )


def make_train(config: DQNConfig, callback: Callable[[dict], None] | None = None):
    """``train(key, hparams=None) -> (DQNTrainState, metrics)``: a whole DQN run.

    Jit it; ``vmap`` it over keys (seeds) and over ``DQNHParams``. ``metrics`` is a
    dict of ``[num_updates]`` arrays: ``episode_return`` (mean return of the
    episodes that ended during that update, NaN if none), ``episodes``,
    ``env_steps``, ``epsilon``, ``learning`` (whether it took gradient steps),
    ``loss`` (mean TD loss of its gradient steps), ``q_mean`` (mean Q of the taken
    actions in its minibatches) and ``target_mean``.
    """
    dqn = make_dqn(config)

    def train(key: jax.Array, hparams: DQNHParams | None = None):
        hparams = dqn.default_hparams if hparams is None else hparams
        state = dqn.init(key, hparams)
        return dqn.run(state, hparams, config.num_updates, callback)

    return train


make_dqn_train = make_train
"""``make_train`` under the name ``convergence_jax.rl`` exports (its ``make_train``
is PPO's)."""


def dqn_hparam_grid(config: DQNConfig, **values: Sequence[float]) -> DQNHParams:
    """``DQNHParams`` batched over the listed values (others from ``config``).

    ``dqn_hparam_grid(config, learning_rate=[1e-4, 1e-3])`` has leaves of shape
    [2]; several fields must have equal lengths (zip, not product).
    """
    base = DQNHParams.from_config(config)
    return _offpolicy.hparam_grid(base, "dqn_hparam_grid", **values)
