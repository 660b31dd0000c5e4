"""TD3 on gymnax as one compiled program, data parallel by design.

    config = TD3Config(env_id="Pendulum-v1", total_timesteps=20_000)
    train = make_td3_train(config)               # train(key, hparams=None)
    state, metrics = jax.jit(train)(key)         # metrics: dict of [num_updates]
    jax.jit(jax.vmap(train))(keys)               # many seeds in one call
    jax.jit(jax.vmap(train))(keys, hparams)      # ... and many hyperparameters

The agent (Fujimoto et al. 2018, "Addressing Function Approximation Error in
Actor-Critic Methods"): a deterministic tanh policy explored with Gaussian noise
(``exploration_noise``, in the unit box, then clipped to it), twin critics with
the clipped double-Q target (``continuous.td3_critic_loss``) at a smoothed
target action (``continuous.td3_target_action``: target actor plus clipped
Gaussian noise), and delayed policy updates: every ``policy_delay``-th gradient
step also updates the actor (deterministic policy gradient through the first
critic, ``continuous.td3_actor_loss``) and moves both target networks by Polyak
averaging with rate ``tau``.

Loop, replay buffer, truncation handling and data parallelism are those of
``rl._offpolicy`` (shared with SAC; see ``rl.sac``). Every number a sweep may
change, the policy delay included, lives in ``TD3HParams``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from convergence_jax.rl import _offpolicy
from convergence_jax.rl._offpolicy import OffPolicyTrainState, adam_step, polyak
from convergence_jax.rl.continuous import (
    DeterministicActor,
    TwinQCritic,
    td3_actor_loss,
    td3_critic_loss,
    td3_target_action,
)

__all__ = [
    "TD3",
    "TD3Config",
    "TD3HParams",
    "TD3TrainState",
    "make_td3",
    "make_td3_train",
    "td3_hparam_grid",
]

TD3TrainState = OffPolicyTrainState
"""The state of a TD3 run: ``params = {"actor", "critic"}``, ``target_params =
{"actor", "critic"}``, ``opt_state`` one Adam state per entry of ``params``."""


@dataclass(frozen=True)
class TD3Config:
    """A TD3 run: environment, sizes and networks (static), and default numbers."""

    env_id: str = "Pendulum-v1"
    """A gymnax environment id with a continuous (Box) action space."""
    total_timesteps: int = 20_000
    """Environment steps over the whole run (all environments together)."""
    num_envs: int = 1
    """Parallel environments (split over devices)."""
    rollout_steps: int = 1
    """Steps of every environment per update (each added to the buffer)."""
    gradient_steps: int = 1
    """Critic gradient steps per update (once learning has started)."""
    batch_size: int = 256
    """Transitions per minibatch; a multiple of num_envs (each env gives its share)."""
    buffer_size: int = 100_000
    """Replay capacity in transitions (all environments together)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the actor and of each critic."""
    activation: str = "relu"
    """Hidden activation: tanh, relu, gelu or silu (swish)."""
    num_devices: int = 1
    """Devices to split the environments and the buffer over (data parallel)."""
    actor_lr: float = 3e-4
    """Adam step size of the actor."""
    critic_lr: float = 3e-4
    """Adam step size of the critics."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Target rate: target <- (1 - tau) target + tau online, at each actor update."""
    policy_delay: int = 2
    """Gradient steps per actor (and target) update."""
    exploration_noise: float = 0.1
    """Std of the Gaussian exploration noise, in the unit box [-1, 1]^d."""
    target_noise: float = 0.2
    """Std of the target policy smoothing noise, in the unit box."""
    target_noise_clip: float = 0.5
    """Smoothing noise is clipped to +-target_noise_clip."""
    learning_starts: int = 1_000
    """Environment steps of uniform actions before learning starts."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for gymnax.make."""
    env_wrapper: Callable[[Any, Any], tuple[Any, Any]] | None = None
    """Optional ``f(env, env_params) -> (env, env_params)`` applied to the gymnax
    environment before flattening and logging (as PPOConfig.env_wrapper)."""

    @property
    def steps_per_update(self) -> int:
        """Environment steps per update: num_envs * rollout_steps."""
        return self.num_envs * self.rollout_steps

    @property
    def num_updates(self) -> int:
        """Updates of the run: total_timesteps // steps_per_update."""
        return self.total_timesteps // self.steps_per_update


@struct.dataclass
class TD3HParams:
    """The numbers of a TD3 run; scalars (or batched, under ``vmap``)."""

    actor_lr: jax.Array
    critic_lr: jax.Array
    gamma: jax.Array
    tau: jax.Array
    policy_delay: jax.Array
    exploration_noise: jax.Array
    target_noise: jax.Array
    target_noise_clip: jax.Array
    learning_starts: jax.Array

    @classmethod
    def from_config(cls, config: TD3Config) -> TD3HParams:
        return _offpolicy.hparams_from_config(cls, config)


class TD3(NamedTuple):
    """The pure functions of a TD3 run (see the module docstring)."""

    config: TD3Config
    actor: DeterministicActor
    critic: TwinQCritic
    default_hparams: TD3HParams
    init: Callable[..., OffPolicyTrainState]
    """``init(key, hparams=None) -> TD3TrainState``."""
    update: Callable[..., tuple[OffPolicyTrainState, dict]]
    """``update(state, hparams) -> (state, metrics)``: steps, then learning."""
    run: Callable[..., tuple[OffPolicyTrainState, dict]]
    """``run(state, hparams, num_updates, callback=None) -> (state, metrics [n])``."""
    policy: Callable[..., jax.Array]
    """``policy(params, obs [B, obs_dim], key=None) -> environment actions [B, ...]``:
    the deterministic policy, mapped into the action box (``key`` is unused; it
    is there so SAC and TD3 policies are called alike)."""
    to_env_action: Callable[[jax.Array], jax.Array]
    """Unit-box actions [-1, 1]^d -> the environment's box."""
    learn_batch: Callable[..., tuple[OffPolicyTrainState, dict]]
    """``learn_batch(state, batch, hparams=None) -> (state, metrics)``: add an
    outside window ``[T, num_envs]`` of ``obs``, ``action`` (environment
    actions), ``reward``, ``terminated``, ``final_obs`` to the buffer, then take
    gradient steps (the loop's hook; see ``rl._offpolicy``)."""


def _check(config: TD3Config) -> None:
    _offpolicy.check_config(
        config,
        "TD3Config",
        positive_floats=("actor_lr", "critic_lr"),
        unit_floats=("gamma", "tau"),
    )
    p = config.policy_delay
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"TD3Config.policy_delay: expected an int >= 1, got {p!r}")
    for name in ("exploration_noise", "target_noise", "target_noise_clip"):
        value = getattr(config, name)
        if not (isinstance(value, int | float) and value >= 0):
            raise ValueError(f"TD3Config.{name}: expected >= 0, got {value!r}")


def make_td3(config: TD3Config) -> TD3:
    """Build the pure functions of a TD3 run; validates ``config`` first."""
    env, env_params, _, low, high = _offpolicy.make_env(config, "TD3Config")
    _check(config)
    action_dim = int(low.shape[0])
    actor = DeterministicActor(
        action_dim, tuple(config.hidden_sizes), config.activation
    )
    critic = TwinQCritic(tuple(config.hidden_sizes), config.activation)
    default_hparams = TD3HParams.from_config(config)
    adam = _offpolicy.ADAM

    def init_params(key, obs, action, hparams: TD3HParams):
        k_actor, k_critic = jax.random.split(key)
        params = {
            "actor": actor.init(k_actor, obs),
            "critic": critic.init(k_critic, obs, action),
        }
        opt_state = {name: adam.init(p) for name, p in params.items()}
        return params, dict(params), opt_state

    def explore(params, obs, key, hparams: TD3HParams):
        action = actor.apply(params["actor"], obs)
        noise = hparams.exploration_noise * jax.random.normal(key, action.shape)
        return jnp.clip(action + noise, -1.0, 1.0)

    def learn_step(dp, params, target_params, opt_state, grad_step, batch, normal, hp):
        discount = hp.gamma * (1.0 - batch["terminated"].astype(jnp.float32))
        noise = hp.target_noise * normal(0, action_dim)
        next_action = jax.vmap(td3_target_action, in_axes=(0, 0, None))(
            actor.apply(target_params["actor"], batch["next_obs"]),
            noise,
            hp.target_noise_clip,
        )
        next_q = critic.apply(target_params["critic"], batch["next_obs"], next_action)

        def critic_loss(critic_params):
            q = critic.apply(critic_params, batch["obs"], batch["action"])  # [2, B]
            loss = jax.vmap(td3_critic_loss, in_axes=(1, 0, 0, 1))(
                q, batch["reward"], discount, next_q
            ).mean()
            return loss, {"critic_loss": loss, "q_mean": q.mean()}

        critic_grads, critic_aux = dp.grad(critic_loss, params["critic"])
        critic_params, critic_opt = adam_step(
            params["critic"], critic_grads, opt_state["critic"], hp.critic_lr
        )

        def actor_loss(actor_params):
            action = actor.apply(actor_params, batch["obs"])
            q1 = critic.apply(critic_params, batch["obs"], action)[0]
            loss = jax.vmap(td3_actor_loss)(q1).mean()
            return loss, loss

        def actor_update(_):
            grads, loss = dp.grad(actor_loss, params["actor"])
            actor_params, actor_opt = adam_step(
                params["actor"], grads, opt_state["actor"], hp.actor_lr
            )
            target = {
                "actor": polyak(target_params["actor"], actor_params, hp.tau),
                "critic": polyak(target_params["critic"], critic_params, hp.tau),
            }
            return actor_params, actor_opt, target, loss, jnp.float32(1.0)

        def no_actor_update(_):
            loss = jnp.float32(0.0)
            if dp.sharded:  # match the device-varying loss of the other branch
                loss = jax.lax.pcast(loss, _offpolicy.AXIS, to="varying")
            no = jnp.float32(0.0)
            return params["actor"], opt_state["actor"], target_params, loss, no

        delay = jnp.maximum(jnp.round(hp.policy_delay), 1.0).astype(jnp.int32)
        actor_params, actor_opt, new_target, loss, updated = jax.lax.cond(
            (grad_step + 1) % delay == 0, actor_update, no_actor_update, None
        )
        new_params = {"actor": actor_params, "critic": critic_params}
        new_opt = {"actor": actor_opt, "critic": critic_opt}
        aux = {**critic_aux, "actor_loss": loss, "actor_updated": updated}
        return new_params, new_target, new_opt, dp.pmean(aux)

    init, update, run, to_env_action, learn_batch = _offpolicy.build(
        config,
        env=env,
        env_params=env_params,
        low=low,
        high=high,
        init_params=init_params,
        explore=explore,
        learn_step=learn_step,
        aux_names=("critic_loss", "q_mean", "actor_loss", "actor_updated"),
        default_hparams=default_hparams,
    )

    def policy(params, obs, key=None):
        """Environment actions for a batch of observations ``[B, obs_dim]``."""
        obs = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
        return to_env_action(actor.apply(params["actor"], obs))

    return TD3(
        config=config,
        actor=actor,
        critic=critic,
        default_hparams=default_hparams,
        init=init,
        update=update,
        run=run,
        policy=policy,
        to_env_action=to_env_action,
        learn_batch=learn_batch,
    )


def make_td3_train(config: TD3Config, callback: Callable[[dict], None] | None = None):
    """``train(key, hparams=None) -> (TD3TrainState, metrics)``: a whole TD3 run.

    Jit it; ``vmap`` it over keys (seeds) and over ``TD3HParams``. ``metrics`` is a
    dict of ``[num_updates]`` arrays: ``episode_return`` (mean return of the
    episodes that ended during that update, NaN if none), ``episodes``,
    ``env_steps``, ``learning``, ``critic_loss``, ``q_mean``, ``actor_loss`` and
    ``actor_updated`` (means over the update's gradient steps; ``actor_loss``
    counts 0 on steps without an actor update, ``actor_updated`` is the fraction
    of steps with one).
    """
    td3 = make_td3(config)

    def train(key: jax.Array, hparams: TD3HParams | None = None):
        hparams = td3.default_hparams if hparams is None else hparams
        state = td3.init(key, hparams)
        return td3.run(state, hparams, config.num_updates, callback)

    return train


def td3_hparam_grid(config: TD3Config, **values: Sequence[float]) -> TD3HParams:
    """``TD3HParams`` batched over the listed values (others from ``config``);
    several fields must have equal lengths (zip, not product)."""
    base = make_td3(config).default_hparams
    return _offpolicy.hparam_grid(base, "td3_hparam_grid", **values)
