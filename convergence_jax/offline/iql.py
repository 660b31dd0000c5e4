"""Implicit Q-learning, IQL (Kostrikov, Nair and Levine 2022, "Offline reinforcement
learning with implicit Q-learning"), discrete and continuous.

    iql = make_iql(IQLConfig(num_steps=20_000), obs_dim, spec)
    state, metrics = jax.jit(iql.train)(key, data)

Three losses, all on dataset actions only (no action is ever queried outside the
data), each gradient taken at the parameters before the update (as CORL's
``ImplicitQLearning.train``):

* value: expectile regression of ``V(s)`` on ``min_j Q'_j(s, a)`` of the target
  critics, ``L_V = mean |tau - 1(u < 0)| u^2``, ``u = Q'(s, a) - V(s)``
  (expectile ``tau`` 0.7);
* critics: ``L_Q = sum_j mean (Q_j(s, a) - r - gamma (1 - terminal) V(s'))^2``;
* policy, advantage-weighted regression: ``L_pi = -mean min(exp(beta (Q'(s, a) -
  V(s))), 100) log pi(a | s)`` (beta 3).

Continuous policy: a Gaussian with ``tanh`` mean and a state-independent std
(CORL's ``GaussianPolicy``), acting with its mean. Discrete: a categorical policy
and twin Q networks over actions, acting greedily in the policy. Targets are
Polyak averages of the critics; they bootstrap through timeouts, not terminals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from convergence_jax.offline import _common
from convergence_jax.offline._common import (
    ActionSpec,
    ObsNorm,
    bellman_target,
    twin_critic_loss,
)
from convergence_jax.offline.networks import (
    GaussianActor,
    LogitsNet,
    TwinCritic,
    TwinLogitsNet,
    ValueNet,
)

__all__ = [
    "IQL",
    "IQLConfig",
    "IQLHParams",
    "IQLState",
    "awr_policy_loss",
    "expectile_loss",
    "make_iql",
]


def expectile_loss(diff: jax.Array, expectile) -> jax.Array:
    """``mean_i |tau - 1(u_i < 0)| u_i^2`` for ``u = diff [B]`` (IQL eq. 5)."""
    chex.assert_rank(diff, 1)
    weight = jnp.where(diff > 0, expectile, 1.0 - expectile)
    return jnp.mean(weight * jnp.square(diff))


def awr_policy_loss(log_prob, advantage, beta, max_weight=100.0) -> jax.Array:
    """Advantage-weighted regression (Peng et al. 2019; IQL eq. 7)::

        L = -mean_i min(exp(beta A_i), max_weight) log pi(a_i | s_i)

    The weights carry no gradient. Args: ``log_prob, advantage [B]``.
    """
    chex.assert_rank([log_prob, advantage], 1)
    chex.assert_equal_shape([log_prob, advantage])
    weight = jnp.minimum(jnp.exp(beta * advantage), max_weight)
    return -jnp.mean(jax.lax.stop_gradient(weight) * log_prob)


@dataclass(frozen=True)
class IQLConfig:
    """An IQL run: sizes (static) and default numbers (the paper's / CORL's
    locomotion settings)."""

    num_steps: int = 20_000
    """Gradient updates."""
    batch_size: int = 256
    """Global minibatch size (split over devices)."""
    num_devices: int = 1
    """Devices to split every minibatch over (data parallel)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden sizes of the policy, of V and of each critic."""
    activation: str = "relu"
    """Hidden activation."""
    normalize_obs: bool = True
    """Normalize observations by the dataset's mean and std."""
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    """Polyak step of the target critics."""
    expectile: float = 0.7
    """tau of the expectile regression of V (0.5: mean; -> 1: max)."""
    beta: float = 3.0
    """Inverse temperature of the advantage weights."""
    max_weight: float = 100.0
    """Clip of the advantage weights exp(beta A)."""


@struct.dataclass
class IQLHParams:
    actor_lr: jax.Array
    critic_lr: jax.Array
    value_lr: jax.Array
    gamma: jax.Array
    tau: jax.Array
    expectile: jax.Array
    beta: jax.Array
    max_weight: jax.Array


@struct.dataclass
class IQLState:
    actor: Any
    critic: Any
    critic_target: Any
    value: Any
    actor_opt: Any
    critic_opt: Any
    value_opt: Any
    obs_norm: ObsNorm
    key: jax.Array
    step: jax.Array


class IQL(NamedTuple):
    config: IQLConfig
    spec: ActionSpec
    default_hparams: IQLHParams
    init: Callable
    update: Callable
    run: Callable
    policy: Callable
    """``policy(state, obs [B, obs_dim], key=None) -> environment actions``
    (the mean / the most likely action)."""
    train: Callable


def make_iql(config: IQLConfig, obs_dim: int, action_spec: ActionSpec) -> IQL:
    """Build the IQL program; validates the config and the spec first."""
    name = "IQLConfig"
    _common.check_config(config, name)
    _common.check_numbers(
        config,
        name,
        positive=("actor_lr", "critic_lr", "value_lr", "max_weight"),
        nonnegative=("beta",),
        unit=("gamma", "tau"),
    )
    if not 0 < config.expectile < 1:
        raise ValueError(
            f"{name}.expectile: expected in (0, 1), got {config.expectile}"
        )
    _common.check_spec(obs_dim, action_spec, "make_iql")
    spec = action_spec
    discrete = spec.discrete
    sizes, act = config.hidden_sizes, config.activation
    if discrete:
        actor = LogitsNet(spec.num_actions, sizes, act)
        critic = TwinLogitsNet(spec.num_actions, sizes, act)
    else:
        actor = GaussianActor(spec.action_dim, sizes, act)
        critic = TwinCritic(sizes, act)
    value = ValueNet(sizes, act)
    tx = optax.scale_by_adam()
    dp = _common.DataParallel(config.num_devices > 1)
    default_hparams = _common.hparams_from_config(IQLHParams, config)

    def q_of(params, obs, actions):
        """``[2, B]`` Q values of the dataset's actions."""
        if discrete:
            q = critic.apply(params, obs)  # [2, B, A]
            return jnp.take_along_axis(q, actions[None, :, None], 2)[..., 0]
        return critic.apply(params, obs, actions)

    def log_prob_of(params, obs, actions):
        if discrete:
            log_probs = jax.nn.log_softmax(actor.apply(params, obs))
            return jnp.take_along_axis(log_probs, actions[:, None], 1)[:, 0]
        return actor.apply(params, obs, actions, method="log_prob")

    def init(key, data, hparams=None):
        k_actor, k_critic, k_value, k_state = jax.random.split(key, 4)
        obs = jnp.zeros((1, obs_dim))
        actor_params = actor.init(k_actor, obs)
        if discrete:
            critic_params = critic.init(k_critic, obs)
        else:
            critic_params = critic.init(k_critic, obs, jnp.zeros((1, spec.action_dim)))
        value_params = value.init(k_value, obs)
        return IQLState(
            actor=actor_params,
            critic=critic_params,
            critic_target=critic_params,
            value=value_params,
            actor_opt=tx.init(actor_params),
            critic_opt=tx.init(critic_params),
            value_opt=tx.init(value_params),
            obs_norm=_common.obs_norm_from_data(data, config.normalize_obs),
            key=k_state,
            step=jnp.zeros((), jnp.int32),
        )

    def value_loss(params, target_q, obs, hparams):
        v = value.apply(params, obs)
        return expectile_loss(target_q - v, hparams.expectile), v

    def critic_loss(params, target, obs, actions):
        return twin_critic_loss(q_of(params, obs, actions), target)

    def actor_loss(params, obs, actions, advantage, hparams):
        log_prob = log_prob_of(params, obs, actions)
        return awr_policy_loss(log_prob, advantage, hparams.beta, hparams.max_weight)

    def update_local(state, batch, keys, hparams):
        obs, actions = batch.observations, batch.actions
        target_q = q_of(state.critic_target, obs, actions).min(0)
        (v_loss, v), g_value = dp.value_and_grad(value_loss, has_aux=True)(
            state.value, target_q, obs, hparams
        )
        next_v = value.apply(state.value, batch.next_observations)
        target = bellman_target(batch.rewards, batch.terminals, next_v, hparams.gamma)
        q_loss, g_critic = dp.value_and_grad(critic_loss)(
            state.critic, target, obs, actions
        )
        advantage = target_q - v
        pi_loss, g_actor = dp.value_and_grad(actor_loss)(
            state.actor, obs, actions, advantage, hparams
        )
        value_params, value_opt = _common.adam_step(
            tx, g_value, state.value_opt, state.value, hparams.value_lr
        )
        critic_params, critic_opt = _common.adam_step(
            tx, g_critic, state.critic_opt, state.critic, hparams.critic_lr
        )
        actor_params, actor_opt = _common.adam_step(
            tx, g_actor, state.actor_opt, state.actor, hparams.actor_lr
        )
        new_state = state.replace(
            actor=actor_params,
            critic=critic_params,
            critic_target=_common.soft_update(
                state.critic_target, critic_params, hparams.tau
            ),
            value=value_params,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
            value_opt=value_opt,
        )
        metrics = {
            "value_loss": v_loss,
            "critic_loss": q_loss,
            "actor_loss": pi_loss,
            "v": v.mean(),
            "advantage": advantage.mean(),
        }
        return new_state, metrics

    update = _common.make_update(config, update_local, spec)
    run = _common.make_run(update, default_hparams)

    def policy(state, obs, key=None):
        obs = state.obs_norm(obs.astype(jnp.float32))
        if discrete:
            return jnp.argmax(actor.apply(state.actor, obs), -1)
        return spec.from_unit(actor.apply(state.actor, obs, method="mode"))

    train = _common.make_train(init, run, config, default_hparams, obs_dim, spec)
    return IQL(config, spec, default_hparams, init, update, run, policy, train)
