"""TD3+BC (Fujimoto and Gu 2021, "A minimalist approach to offline reinforcement
learning"): TD3 with a behaviour-cloning term in the actor loss, continuous
actions only.

    td3bc = make_td3bc(TD3BCConfig(num_steps=20_000), obs_dim, spec)
    state, metrics = jax.jit(td3bc.train)(key, data)

As in the paper (and CORL / JAX-CORL): observations normalized by the dataset's
mean and std, twin critics with target policy smoothing (noise 0.2 clipped at
0.5), the actor and the targets updated every ``policy_freq`` (2) critic steps,
Polyak targets (tau 0.005), and the actor loss
``-lambda Q1(s, pi(s)) + (pi(s) - a)^2`` with ``lambda = alpha / mean|Q1|``
(alpha 2.5). Targets bootstrap through timeouts, not terminals.
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
from convergence_jax.offline.networks import DeterministicActor, TwinCritic

__all__ = [
    "TD3BC",
    "TD3BCConfig",
    "TD3BCHParams",
    "TD3BCState",
    "make_td3bc",
    "td3bc_actor_loss",
]


def td3bc_actor_loss(q, policy_actions, data_actions, alpha, q_abs_mean=None):
    """TD3+BC's actor loss (Fujimoto and Gu 2021, eq. 3)::

        lambda = alpha / mean_i |Q1(s_i, pi(s_i))|          (no gradient)
        L = -lambda mean_i Q1(s_i, pi(s_i)) + mean_{i,d} (pi(s_i)_d - a_{i,d})^2

    Args:
      q: ``[B]`` ``Q1(s, pi(s))``.
      policy_actions, data_actions: ``[B, d]``.
      alpha: the trade-off (2.5 in the paper).
      q_abs_mean: ``mean |Q1|`` over the *global* batch when data parallel
        (default: over this batch).
    """
    chex.assert_rank([q, policy_actions, data_actions], [1, 2, 2])
    chex.assert_equal_shape([policy_actions, data_actions])
    if q_abs_mean is None:
        q_abs_mean = jnp.mean(jnp.abs(q))
    lmbda = jax.lax.stop_gradient(alpha / q_abs_mean)
    return -lmbda * jnp.mean(q) + jnp.mean(jnp.square(policy_actions - data_actions))


@dataclass(frozen=True)
class TD3BCConfig:
    """A TD3+BC run: sizes (static) and default numbers (the paper's)."""

    num_steps: int = 20_000
    """Gradient updates (critic steps)."""
    batch_size: int = 256
    """Global minibatch size (split over devices)."""
    num_devices: int = 1
    """Devices to split every minibatch over (data parallel)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden sizes of the actor and of each critic."""
    activation: str = "relu"
    """Hidden activation."""
    normalize_obs: bool = True
    """Normalize observations by the dataset's mean and std (the paper does)."""
    policy_freq: int = 2
    """The actor and the targets are updated every policy_freq critic steps."""
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    """Polyak step of the target networks."""
    alpha: float = 2.5
    """Weight of the Q term against BC (lambda = alpha / mean |Q|)."""
    policy_noise: float = 0.2
    """Target policy smoothing noise std (in [-1, 1] action units)."""
    noise_clip: float = 0.5


@struct.dataclass
class TD3BCHParams:
    actor_lr: jax.Array
    critic_lr: jax.Array
    gamma: jax.Array
    tau: jax.Array
    alpha: jax.Array
    policy_noise: jax.Array
    noise_clip: jax.Array


@struct.dataclass
class TD3BCState:
    actor: Any
    critic: Any
    actor_target: Any
    critic_target: Any
    actor_opt: Any
    critic_opt: Any
    obs_norm: ObsNorm
    key: jax.Array
    step: jax.Array


class TD3BC(NamedTuple):
    config: TD3BCConfig
    spec: ActionSpec
    default_hparams: TD3BCHParams
    init: Callable
    update: Callable
    run: Callable
    policy: Callable
    """``policy(state, obs [B, obs_dim], key=None) -> environment actions``."""
    train: Callable


def make_td3bc(config: TD3BCConfig, obs_dim: int, action_spec: ActionSpec) -> TD3BC:
    """Build the TD3+BC program; validates the config and the spec first."""
    name = "TD3BCConfig"
    _common.check_config(config, name)
    _common.check_numbers(
        config,
        name,
        positive=("actor_lr", "critic_lr", "alpha"),
        nonnegative=("policy_noise", "noise_clip"),
        unit=("gamma", "tau"),
    )
    if isinstance(config.policy_freq, bool) or not isinstance(config.policy_freq, int):
        raise ValueError(f"{name}.policy_freq: expected an int >= 1")
    if config.policy_freq < 1:
        raise ValueError(f"{name}.policy_freq: expected an int >= 1")
    _common.check_spec(obs_dim, action_spec, "make_td3bc")
    if action_spec.discrete:
        raise ValueError(
            "TD3+BC is for continuous actions; the action spec is discrete "
            f"({action_spec.num_actions} actions): use bc, cql or iql"
        )
    spec = action_spec
    dim = spec.action_dim
    actor = DeterministicActor(dim, config.hidden_sizes, config.activation)
    critic = TwinCritic(config.hidden_sizes, config.activation)
    tx = optax.scale_by_adam()
    dp = _common.DataParallel(config.num_devices > 1)
    default_hparams = _common.hparams_from_config(TD3BCHParams, config)

    def init(key, data, hparams=None):
        k_actor, k_critic, k_state = jax.random.split(key, 3)
        obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, dim))
        actor_params = actor.init(k_actor, obs)
        critic_params = critic.init(k_critic, obs, act)
        return TD3BCState(
            actor=actor_params,
            critic=critic_params,
            actor_target=actor_params,
            critic_target=critic_params,
            actor_opt=tx.init(actor_params),
            critic_opt=tx.init(critic_params),
            obs_norm=_common.obs_norm_from_data(data, config.normalize_obs),
            key=k_state,
            step=jnp.zeros((), jnp.int32),
        )

    def critic_loss_fn(critic_params, state, batch, keys, hparams):
        noise = jax.vmap(lambda k: jax.random.normal(k, (dim,)))(keys)
        noise = jnp.clip(
            noise * hparams.policy_noise, -hparams.noise_clip, hparams.noise_clip
        )
        next_actions = actor.apply(state.actor_target, batch.next_observations)
        next_actions = jnp.clip(next_actions + noise, -1.0, 1.0)
        next_q = critic.apply(
            state.critic_target, batch.next_observations, next_actions
        ).min(0)
        target = bellman_target(batch.rewards, batch.terminals, next_q, hparams.gamma)
        q = critic.apply(critic_params, batch.observations, batch.actions)
        return twin_critic_loss(q, target), q.mean()

    def actor_loss_fn(actor_params, critic_params, batch, hparams):
        pi = actor.apply(actor_params, batch.observations)
        q = critic.apply(critic_params, batch.observations, pi)[0]
        q_abs_mean = dp.pmean(jnp.mean(jnp.abs(jax.lax.stop_gradient(q))))
        return td3bc_actor_loss(q, pi, batch.actions, hparams.alpha, q_abs_mean)

    def update_local(state, batch, keys, hparams):
        (critic_loss, q_mean), grads = dp.value_and_grad(critic_loss_fn, True)(
            state.critic, state, batch, keys, hparams
        )
        critic_params, critic_opt = _common.adam_step(
            tx, grads, state.critic_opt, state.critic, hparams.critic_lr
        )
        # The delayed actor step is computed every step and kept every
        # policy_freq steps (a select, so it stays one program under scan).
        actor_loss, grads = dp.value_and_grad(actor_loss_fn)(
            state.actor, critic_params, batch, hparams
        )
        actor_params, actor_opt = _common.adam_step(
            tx, grads, state.actor_opt, state.actor, hparams.actor_lr
        )
        critic_target = _common.soft_update(
            state.critic_target, critic_params, hparams.tau
        )
        actor_target = _common.soft_update(
            state.actor_target, actor_params, hparams.tau
        )
        delayed = (state.step + 1) % config.policy_freq == 0

        def keep(new, old):
            return jax.tree.map(lambda n, o: jnp.where(delayed, n, o), new, old)

        new_state = state.replace(
            critic=critic_params,
            critic_opt=critic_opt,
            actor=keep(actor_params, state.actor),
            actor_opt=keep(actor_opt, state.actor_opt),
            actor_target=keep(actor_target, state.actor_target),
            critic_target=keep(critic_target, state.critic_target),
        )
        metrics = {"critic_loss": critic_loss, "actor_loss": actor_loss, "q": q_mean}
        return new_state, metrics

    update = _common.make_update(config, update_local, spec)
    run = _common.make_run(update, default_hparams)

    def policy(state, obs, key=None):
        out = actor.apply(state.actor, state.obs_norm(obs.astype(jnp.float32)))
        return spec.from_unit(out)

    train = _common.make_train(init, run, config, default_hparams, obs_dim, spec)
    return TD3BC(config, spec, default_hparams, init, update, run, policy, train)
