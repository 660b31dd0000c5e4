"""Soft Actor-Critic on gymnax as one compiled program, data parallel by design.

    config = SACConfig(env_id="Pendulum-v1", total_timesteps=20_000)
    train = make_sac_train(config)               # train(key, hparams=None)
    state, metrics = jax.jit(train)(key)         # metrics: dict of [num_updates]
    jax.jit(jax.vmap(train))(keys)               # many seeds in one call
    jax.jit(jax.vmap(train))(keys, hparams)      # ... and many hyperparameters

The agent (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and
Applications"): a tanh-squashed Gaussian policy, twin Q critics with the minimum
in the soft target (``continuous.sac_critic_loss``), Polyak-averaged target
critics (rate ``tau`` after every gradient step), and automatic entropy tuning:
``log alpha`` is learned so that the policy's entropy tracks ``target_entropy``
(``-action_dim`` unless set; ``continuous.sac_temperature_loss``). Each gradient
step updates the critics, then the actor (against the updated critics), then the
temperature (with the actor's fresh samples), each with its own Adam.

Loop, replay buffer, truncation handling and data parallelism are those of
``rl._offpolicy`` (shared with TD3): one update steps every environment
``rollout_steps`` times, then takes ``gradient_steps`` gradient steps on
minibatches of ``batch_size``; uniform actions until ``learning_starts``
environment steps; truncation bootstraps, termination does not; with
``num_devices = N`` environments and buffer are split over a device mesh and
the N-device run equals the 1-device run up to floating-point sums.

Sizes, the environment and the networks are static (``SACConfig``); every number
a sweep may change lives in ``SACHParams`` so a sweep is a ``vmap``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from convergence_jax.rl import _offpolicy
from convergence_jax.rl._offpolicy import OffPolicyTrainState, adam_step, polyak
from convergence_jax.rl.continuous import (
    TanhGaussianActor,
    TwinQCritic,
    sac_actor_loss,
    sac_critic_loss,
    sac_temperature_loss,
)

__all__ = [
    "SAC",
    "SACConfig",
    "SACHParams",
    "SACTrainState",
    "make_sac",
    "make_sac_train",
    "sac_hparam_grid",
]

SACTrainState = OffPolicyTrainState
"""The state of a SAC run: ``params = {"actor", "critic", "log_alpha"}``,
``target_params = {"critic"}``, ``opt_state`` one Adam state per entry."""


@dataclass(frozen=True)
class SACConfig:
    """A SAC run: environment, sizes and networks (static), and default numbers."""

    env_id: str = "Pendulum-v1"
    """A gymnax environment id with a continuous (Box) action space."""
    total_timesteps: int = 20_000
    """Environment steps over the whole run (all environments together)."""
    num_envs: int = 1
    """Parallel environments (split over devices)."""
    rollout_steps: int = 1
    """Steps of every environment per update (each added to the buffer)."""
    gradient_steps: int = 1
    """Gradient steps per update (once learning has started)."""
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
    alpha_lr: float = 3e-4
    """Adam step size of log alpha (the temperature)."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Target rate: target <- (1 - tau) target + tau online, every gradient step."""
    init_alpha: float = 1.0
    """Initial temperature alpha."""
    target_entropy: float | None = None
    """Entropy the temperature aims at; None: -action_dim (Haarnoja et al. 2018b)."""
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
class SACHParams:
    """The numbers of a SAC run; scalars (or batched, under ``vmap``)."""

    actor_lr: jax.Array
    critic_lr: jax.Array
    alpha_lr: jax.Array
    gamma: jax.Array
    tau: jax.Array
    init_alpha: jax.Array
    target_entropy: jax.Array
    learning_starts: jax.Array

    @classmethod
    def from_config(cls, config: SACConfig, action_dim: int) -> SACHParams:
        if config.target_entropy is None:
            config = dataclasses.replace(config, target_entropy=-float(action_dim))
        return _offpolicy.hparams_from_config(cls, config)


class SAC(NamedTuple):
    """The pure functions of a SAC run (see the module docstring)."""

    config: SACConfig
    actor: TanhGaussianActor
    critic: TwinQCritic
    default_hparams: SACHParams
    init: Callable[..., OffPolicyTrainState]
    """``init(key, hparams=None) -> SACTrainState``."""
    update: Callable[..., tuple[OffPolicyTrainState, dict]]
    """``update(state, hparams) -> (state, metrics)``: steps, then learning."""
    run: Callable[..., tuple[OffPolicyTrainState, dict]]
    """``run(state, hparams, num_updates, callback=None) -> (state, metrics [n])``."""
    policy: Callable[..., jax.Array]
    """``policy(params, obs [B, obs_dim], key, deterministic=False) -> environment
    actions [B, ...]``: samples of the squashed Gaussian (its mode with
    ``deterministic=True``), mapped into the action box."""
    to_env_action: Callable[[jax.Array], jax.Array]
    """Unit-box actions [-1, 1]^d -> the environment's box."""
    learn_batch: Callable[..., tuple[OffPolicyTrainState, dict]]
    """``learn_batch(state, batch, hparams=None) -> (state, metrics)``: add an
    outside window ``[T, num_envs]`` of ``obs``, ``action`` (environment
    actions), ``reward``, ``terminated``, ``final_obs`` to the buffer, then take
    gradient steps (the loop's hook; see ``rl._offpolicy``)."""


def _check(config: SACConfig) -> None:
    _offpolicy.check_config(
        config,
        "SACConfig",
        positive_floats=("actor_lr", "critic_lr", "alpha_lr", "init_alpha"),
        unit_floats=("gamma", "tau"),
    )
    if config.target_entropy is not None and not isinstance(
        config.target_entropy, int | float
    ):
        raise ValueError(
            "SACConfig.target_entropy: expected a number or None (-action_dim), got "
            f"{config.target_entropy!r}"
        )


def make_sac(config: SACConfig) -> SAC:
    """Build the pure functions of a SAC run; validates ``config`` first."""
    env, env_params, _, low, high = _offpolicy.make_env(config, "SACConfig")
    _check(config)
    action_dim = int(low.shape[0])
    actor = TanhGaussianActor(action_dim, tuple(config.hidden_sizes), config.activation)
    critic = TwinQCritic(tuple(config.hidden_sizes), config.activation)
    default_hparams = SACHParams.from_config(config, action_dim)
    adam = _offpolicy.ADAM

    def init_params(key, obs, action, hparams: SACHParams):
        k_actor, k_critic = jax.random.split(key)
        params = {
            "actor": actor.init(k_actor, obs),
            "critic": critic.init(k_critic, obs, action),
            "log_alpha": jnp.log(jnp.asarray(hparams.init_alpha, jnp.float32)),
        }
        opt_state = {name: adam.init(p) for name, p in params.items()}
        return params, {"critic": params["critic"]}, opt_state

    def explore(params, obs, key, hparams):
        return actor.apply(params["actor"], obs, key, method="sample")[0]

    def learn_step(dp, params, target_params, opt_state, grad_step, batch, normal, hp):
        alpha = jnp.exp(params["log_alpha"])
        discount = hp.gamma * (1.0 - batch["terminated"].astype(jnp.float32))

        # Critics: soft target from the current actor and the target critics.
        next_action, next_log_prob, _ = actor.apply(
            params["actor"],
            batch["next_obs"],
            normal(0, action_dim),
            method="sample_from_noise",
        )
        next_q = critic.apply(target_params["critic"], batch["next_obs"], next_action)

        def critic_loss(critic_params):
            q = critic.apply(critic_params, batch["obs"], batch["action"])  # [2, B]
            loss = jax.vmap(sac_critic_loss, in_axes=(1, 0, 0, 1, 0, None))(
                q, batch["reward"], discount, next_q, next_log_prob, alpha
            ).mean()
            return loss, {"critic_loss": loss, "q_mean": q.mean()}

        critic_grads, critic_aux = dp.grad(critic_loss, params["critic"])
        critic_params, critic_opt = adam_step(
            params["critic"], critic_grads, opt_state["critic"], hp.critic_lr
        )

        # Actor: against the updated critics, reparameterized samples.
        pi_noise = normal(1, action_dim)

        def actor_loss(actor_params):
            action, log_prob, _ = actor.apply(
                actor_params, batch["obs"], pi_noise, method="sample_from_noise"
            )
            q = critic.apply(critic_params, batch["obs"], action)
            loss = jax.vmap(sac_actor_loss, in_axes=(1, 0, None))(
                q, log_prob, alpha
            ).mean()
            return loss, {"actor_loss": loss, "log_prob": log_prob}

        actor_grads, actor_aux = dp.grad(actor_loss, params["actor"])
        actor_params, actor_opt = adam_step(
            params["actor"], actor_grads, opt_state["actor"], hp.actor_lr
        )
        # The temperature sees the actor's samples of this step (before its update).
        log_prob = jax.lax.stop_gradient(actor_aux.pop("log_prob"))

        def temperature_loss(log_alpha):
            loss = jax.vmap(sac_temperature_loss, in_axes=(None, 0, None))(
                log_alpha, log_prob, hp.target_entropy
            ).mean()
            return loss, {"alpha_loss": loss}

        alpha_grads, alpha_aux = dp.grad(temperature_loss, params["log_alpha"])
        log_alpha, alpha_opt = adam_step(
            params["log_alpha"], alpha_grads, opt_state["log_alpha"], hp.alpha_lr
        )
        new_params = {
            "actor": actor_params,
            "critic": critic_params,
            "log_alpha": log_alpha,
        }
        new_target = {"critic": polyak(target_params["critic"], critic_params, hp.tau)}
        new_opt = {"actor": actor_opt, "critic": critic_opt, "log_alpha": alpha_opt}
        aux = {
            **critic_aux,
            **actor_aux,
            **alpha_aux,
            "alpha": alpha,
            "entropy": -log_prob.mean(),
        }
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
        aux_names=(
            "critic_loss",
            "q_mean",
            "actor_loss",
            "alpha_loss",
            "alpha",
            "entropy",
        ),
        default_hparams=default_hparams,
    )

    def policy(params, obs, key, deterministic: bool = False):
        """Environment actions for a batch of observations ``[B, obs_dim]``."""
        obs = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
        if deterministic:
            unit = actor.apply(params["actor"], obs, method="mode")
        else:
            keys = jax.random.split(key, obs.shape[0])
            unit = jax.vmap(
                lambda o, k: actor.apply(params["actor"], o, k, method="sample")[0]
            )(obs, keys)
        return to_env_action(unit)

    return SAC(
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


def make_sac_train(config: SACConfig, callback: Callable[[dict], None] | None = None):
    """``train(key, hparams=None) -> (SACTrainState, metrics)``: a whole SAC run.

    Jit it; ``vmap`` it over keys (seeds) and over ``SACHParams``. ``metrics`` is a
    dict of ``[num_updates]`` arrays: ``episode_return`` (mean return of the
    episodes that ended during that update, NaN if none), ``episodes``,
    ``env_steps``, ``learning``, ``critic_loss``, ``q_mean``, ``actor_loss``,
    ``alpha_loss``, ``alpha`` and ``entropy`` (``-log pi`` of the actor's samples;
    means over the update's gradient steps, 0 before learning starts).
    """
    sac = make_sac(config)

    def train(key: jax.Array, hparams: SACHParams | None = None):
        hparams = sac.default_hparams if hparams is None else hparams
        state = sac.init(key, hparams)
        return sac.run(state, hparams, config.num_updates, callback)

    return train


def sac_hparam_grid(config: SACConfig, **values: Sequence[float]) -> SACHParams:
    """``SACHParams`` batched over the listed values (others from ``config``);
    several fields must have equal lengths (zip, not product):
    ``sac_hparam_grid(config, actor_lr=[1e-4, 3e-4])`` has leaves of shape [2]."""
    base = make_sac(config).default_hparams
    return _offpolicy.hparam_grid(base, "sac_hparam_grid", **values)
