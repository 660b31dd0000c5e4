"""Conservative Q-learning, CQL(H) (Kumar et al. 2020, "Conservative Q-learning for
offline reinforcement learning"), continuous on SAC and discrete on double DQN.

    cql = make_cql(CQLConfig(num_steps=20_000), obs_dim, spec)
    state, metrics = jax.jit(cql.train)(key, data)

**Continuous** (as JAX-CORL's ``algos/cql.py`` / young-geng's JaxCQL and d3rlpy's
``CQLImpl`` do it): SAC with twin critics, a tanh-Gaussian policy and automatic
entropy tuning; each critic's loss adds ``w * mean(logsumexp_a Q(s, a) - Q(s,
a_data))`` where the logsumexp over actions is estimated by importance sampling from
``N`` uniform actions, ``N`` policy actions at ``s`` and ``N`` policy actions at
``s'`` (all evaluated at ``s``, each term minus its log-density). With
``lagrange=True`` the weight is ``alpha' w`` and ``alpha'`` (clipped to [0, 1e6])
is learned by dual ascent so that the gap stays near ``target_action_gap``.

**Discrete**: a double-DQN TD loss (Huber, as d3rlpy's ``DiscreteCQL``) plus
``w * mean(logsumexp_a Q(s, a) - Q(s, a_data))`` with the exact logsumexp.

Every gradient of one update is taken at the parameters before that update
(critic, actor, temperature and ``alpha'`` together, as JaxCQL does); targets are
Polyak averages. Targets bootstrap through timeouts, not terminals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from convergence_jax.offline import _common
from convergence_jax.offline._common import (
    ActionSpec,
    ObsNorm,
    bellman_target,
    twin_critic_loss,
)
from convergence_jax.offline.networks import LogitsNet, TanhGaussianActor, TwinCritic

__all__ = [
    "CQL",
    "CQLConfig",
    "CQLHParams",
    "CQLState",
    "cql_continuous_gap",
    "cql_discrete_gap",
    "double_dqn_loss",
    "make_cql",
]


def cql_discrete_gap(q_values: jax.Array, actions: jax.Array) -> jax.Array:
    """``mean_i [logsumexp_a Q(s_i, a) - Q(s_i, a_i)]``: CQL(H)'s regularizer with
    the exact logsumexp over a discrete action set (Kumar et al. 2020, eq. 4).

    Args: ``q_values [B, A]``, ``actions [B]`` int. Returns a scalar.
    """
    chex.assert_rank([q_values, actions], [2, 1])
    chex.assert_equal_shape_prefix([q_values, actions], 1)
    q_data = jnp.take_along_axis(q_values, actions[:, None], 1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(q_values, -1) - q_data)


def cql_continuous_gap(
    q_data,
    q_random,
    q_current,
    log_prob_current,
    q_next,
    log_prob_next,
    action_dim: int,
    temperature=1.0,
    importance_sample: bool = True,
    clip_min=-np.inf,
    clip_max=np.inf,
):
    """CQL(H)'s regularizer for continuous actions, one critic (Kumar et al. 2020,
    appendix F; JaxCQL's ``cql_importance_sample``)::

        cat_i = [Q(s_i, u_k) - log(0.5^d),                 u_k ~ U(-1, 1)^d
                 Q(s_i, a'_k) - log pi(a'_k | s'_i),       a'_k ~ pi(. | s'_i)
                 Q(s_i, a_k) - log pi(a_k | s_i)]          a_k ~ pi(. | s_i)
        gap = mean_i clip(T logsumexp_k(cat_i / T) - Q(s_i, a_data_i), min, max)

    Without importance sampling ``cat_i`` is the plain Q values together with
    ``Q(s_i, a_data_i)`` (the CQL authors' code). All Q values are at ``s``.

    Args:
      q_data: ``[B]``, ``Q(s, a_data)``.
      q_random, q_current, log_prob_current, q_next, log_prob_next: ``[B, N]``.
      action_dim: ``d`` (the uniform proposal's density is ``0.5^d``).
      temperature: ``T``. clip_min, clip_max: clip of the per-example gap.

    Returns a scalar.
    """
    chex.assert_rank(q_data, 1)
    chex.assert_rank([q_random, q_current, log_prob_current, q_next, log_prob_next], 2)
    chex.assert_equal_shape(
        [q_random, q_current, log_prob_current, q_next, log_prob_next]
    )
    chex.assert_equal_shape_prefix([q_data, q_random], 1)
    if importance_sample:
        random_density = action_dim * np.log(0.5)
        cat = jnp.concatenate(
            [
                q_random - random_density,
                q_next - log_prob_next,
                q_current - log_prob_current,
            ],
            1,
        )
    else:
        cat = jnp.concatenate([q_random, q_data[:, None], q_next, q_current], 1)
    ood = temperature * jax.nn.logsumexp(cat / temperature, 1)
    return jnp.mean(jnp.clip(ood - q_data, clip_min, clip_max))


def double_dqn_loss(
    q_values, actions, rewards, terminals, next_q_online, next_q_target, gamma
):
    """Double-DQN TD loss (van Hasselt et al. 2016), Huber with delta 1::

        a*_i = argmax_a Q_online(s'_i, a)
        y_i  = r_i + gamma (1 - terminal_i) Q_target(s'_i, a*_i)
        L    = mean_i huber(Q(s_i, a_i) - y_i)

    Args: ``q_values, next_q_online, next_q_target [B, A]``; ``actions [B]`` int;
    ``rewards, terminals [B]``. Returns a scalar.
    """
    chex.assert_rank([q_values, next_q_online, next_q_target], 2)
    chex.assert_equal_shape([q_values, next_q_online, next_q_target])
    chex.assert_rank([actions, rewards, terminals], 1)
    best = jnp.argmax(next_q_online, -1)
    next_q = jnp.take_along_axis(next_q_target, best[:, None], 1)[:, 0]
    target = bellman_target(rewards, terminals, next_q, gamma)
    q_data = jnp.take_along_axis(q_values, actions[:, None], 1)[:, 0]
    return jnp.mean(optax.huber_loss(q_data, target, delta=1.0))


@dataclass(frozen=True)
class CQLConfig:
    """A CQL run: sizes and switches (static) and default numbers (JaxCQL's for
    continuous actions, d3rlpy's DiscreteCQL weight for discrete ones)."""

    num_steps: int = 20_000
    """Gradient updates."""
    batch_size: int = 256
    """Global minibatch size (split over devices)."""
    num_devices: int = 1
    """Devices to split every minibatch over (data parallel)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden sizes of the policy and of each critic (or of the Q network)."""
    activation: str = "relu"
    """Hidden activation."""
    normalize_obs: bool = True
    """Normalize observations by the dataset's mean and std."""
    num_sampled_actions: int = 10
    """Continuous: N actions per proposal (uniform, pi(s), pi(s')) in the
    logsumexp."""
    importance_sample: bool = True
    """Continuous: subtract each sampled action's log-density in the logsumexp."""
    lagrange: bool = False
    """Learn the regularizer's weight alpha' by dual ascent (CQL-Lagrange)."""
    auto_alpha: bool = True
    """Continuous: tune SAC's temperature to the target entropy."""
    backup_entropy: bool = False
    """Continuous: subtract alpha log pi(a'|s') in the TD target (JaxCQL: off)."""
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    """Step size of SAC's log temperature and of log alpha'."""
    gamma: float = 0.99
    tau: float = 0.005
    """Polyak step of the target critics."""
    cql_weight: float | None = None
    """w, the regularizer's weight; None: 5.0 continuous (JaxCQL's
    cql_min_q_weight), 1.0 discrete (d3rlpy's DiscreteCQL alpha)."""
    temperature: float = 1.0
    """T of the logsumexp (continuous)."""
    target_action_gap: float = 1.0
    """Lagrange: the gap alpha' drives the regularizer towards."""
    init_alpha: float = 1.0
    """SAC's initial temperature (and the fixed one without auto_alpha)."""
    target_entropy: float | None = None
    """None: -action_dim."""


@struct.dataclass
class CQLHParams:
    actor_lr: jax.Array
    critic_lr: jax.Array
    alpha_lr: jax.Array
    gamma: jax.Array
    tau: jax.Array
    cql_weight: jax.Array
    temperature: jax.Array
    target_action_gap: jax.Array
    init_alpha: jax.Array
    target_entropy: jax.Array


@struct.dataclass
class CQLState:
    actor: Any
    """Policy parameters (continuous); None for discrete actions."""
    critic: Any
    """Twin critics (continuous) or the Q network (discrete)."""
    critic_target: Any
    log_alpha: jax.Array
    log_alpha_prime: jax.Array
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    obs_norm: ObsNorm
    key: jax.Array
    step: jax.Array


class CQL(NamedTuple):
    config: CQLConfig
    spec: ActionSpec
    default_hparams: CQLHParams
    init: Callable
    update: Callable
    run: Callable
    policy: Callable
    """``policy(state, obs [B, obs_dim], key=None) -> environment actions``
    (greedy in Q for discrete actions, tanh of the mean for continuous ones)."""
    train: Callable


def make_cql(config: CQLConfig, obs_dim: int, action_spec: ActionSpec) -> CQL:
    """Build the CQL program; validates the config and the spec first."""
    name = "CQLConfig"
    _common.check_config(config, name)
    _common.check_spec(obs_dim, action_spec, "make_cql")
    spec = action_spec
    discrete = spec.discrete
    if config.cql_weight is None:
        config = dataclasses.replace(config, cql_weight=1.0 if discrete else 5.0)
    if config.target_entropy is None:
        config = dataclasses.replace(
            config, target_entropy=0.0 if discrete else -float(spec.action_dim)
        )
    _common.check_numbers(
        config,
        name,
        positive=("actor_lr", "critic_lr", "alpha_lr", "temperature", "init_alpha"),
        nonnegative=("cql_weight",),
        unit=("gamma", "tau"),
    )
    n = config.num_sampled_actions
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}.num_sampled_actions: expected an int >= 1, got {n!r}")
    tx = optax.scale_by_adam()
    dp = _common.DataParallel(config.num_devices > 1)
    default_hparams = _common.hparams_from_config(CQLHParams, config)
    if discrete:
        qnet = LogitsNet(spec.num_actions, config.hidden_sizes, config.activation)
    else:
        dim = spec.action_dim
        actor = TanhGaussianActor(dim, config.hidden_sizes, config.activation)
        critic = TwinCritic(config.hidden_sizes, config.activation)

    def init(key, data, hparams=None):
        hparams = default_hparams if hparams is None else hparams
        k_actor, k_critic, k_state = jax.random.split(key, 3)
        obs = jnp.zeros((1, obs_dim))
        if discrete:
            actor_params = None
            critic_params = qnet.init(k_critic, obs)
        else:
            act = jnp.zeros((1, dim))
            actor_params = actor.init(k_actor, obs)
            critic_params = critic.init(k_critic, obs, act)
        log_alpha = jnp.log(hparams.init_alpha).astype(jnp.float32)
        # JaxCQL starts log alpha' at 1.0.
        log_alpha_prime = jnp.ones((), jnp.float32)
        return CQLState(
            actor=actor_params,
            critic=critic_params,
            critic_target=critic_params,
            log_alpha=log_alpha,
            log_alpha_prime=log_alpha_prime,
            actor_opt=None if discrete else tx.init(actor_params),
            critic_opt=tx.init(critic_params),
            alpha_opt=tx.init((log_alpha, log_alpha_prime)),
            obs_norm=_common.obs_norm_from_data(data, config.normalize_obs),
            key=k_state,
            step=jnp.zeros((), jnp.int32),
        )

    def alpha_prime_of(log_alpha_prime):
        return jnp.clip(jnp.exp(log_alpha_prime), 0.0, 1e6)

    def regularizer(gap, log_alpha_prime, hparams):
        """The critic's CQL term, and alpha''s loss (dual ascent on the gap)."""
        if not config.lagrange:
            return hparams.cql_weight * gap, jnp.zeros(())
        alpha_prime = alpha_prime_of(log_alpha_prime)
        term = (
            jax.lax.stop_gradient(alpha_prime)
            * hparams.cql_weight
            * (gap - hparams.target_action_gap)
        )
        dual = (
            -alpha_prime
            * hparams.cql_weight
            * (jax.lax.stop_gradient(gap) - hparams.target_action_gap)
        )
        return term, dual

    # ---------------------------------------------------------- discrete

    def discrete_loss(params, log_alpha_prime, state, batch, hparams):
        q_values = qnet.apply(params, batch.observations)
        next_online = qnet.apply(params, batch.next_observations)
        next_target = qnet.apply(state.critic_target, batch.next_observations)
        td = double_dqn_loss(
            q_values,
            batch.actions,
            batch.rewards,
            batch.terminals,
            jax.lax.stop_gradient(next_online),
            next_target,
            hparams.gamma,
        )
        gap = cql_discrete_gap(q_values, batch.actions)
        term, dual = regularizer(gap, log_alpha_prime, hparams)
        return td + term + dual, {"td_loss": td, "cql_gap": gap, "q": q_values.mean()}

    def discrete_update(state, batch, keys, hparams):
        grad_fn = dp.value_and_grad(
            lambda p, *a: discrete_loss(p[0], p[1], *a), has_aux=True
        )
        (loss, aux), (g_critic, g_alpha_prime) = grad_fn(
            (state.critic, state.log_alpha_prime), state, batch, hparams
        )
        critic_params, critic_opt = _common.adam_step(
            tx, g_critic, state.critic_opt, state.critic, hparams.critic_lr
        )
        (_, log_alpha_prime), alpha_opt = _common.adam_step(
            tx,
            (jnp.zeros(()), g_alpha_prime),
            state.alpha_opt,
            (state.log_alpha, state.log_alpha_prime),
            hparams.alpha_lr,
        )
        new_state = state.replace(
            critic=critic_params,
            critic_opt=critic_opt,
            critic_target=_common.soft_update(
                state.critic_target, critic_params, hparams.tau
            ),
            log_alpha_prime=log_alpha_prime,
            alpha_opt=alpha_opt,
        )
        aux["loss"] = loss
        aux["alpha_prime"] = alpha_prime_of(log_alpha_prime)
        return new_state, aux

    # ---------------------------------------------------------- continuous

    def sample(actor_params, obs, keys, num):
        """``num`` policy actions per example: ``([B, num, d], [B, num])``."""

        def one(o, k):
            reps = jnp.broadcast_to(o, (num,) + o.shape)
            action, log_prob, _ = actor.apply(actor_params, reps, k, method="sample")
            return action, log_prob

        return jax.vmap(one)(obs, keys)

    def actor_alpha_loss(params, state, batch, keys, hparams):
        actor_params, log_alpha = params
        actions, log_prob = sample(actor_params, batch.observations, keys, 1)
        actions, log_prob = actions[:, 0], log_prob[:, 0]
        q = critic.apply(state.critic, batch.observations, actions).min(0)
        alpha = jax.lax.stop_gradient(jnp.exp(log_alpha))
        actor_loss = jnp.mean(alpha * log_prob - q)
        alpha_loss = -log_alpha * jnp.mean(
            jax.lax.stop_gradient(log_prob) + hparams.target_entropy
        )
        if not config.auto_alpha:
            alpha_loss = jnp.zeros(())
        entropy = -jnp.mean(jax.lax.stop_gradient(log_prob))
        return actor_loss + alpha_loss, {"actor_loss": actor_loss, "entropy": entropy}

    def critic_loss(params, state, batch, keys, hparams):
        critic_params, log_alpha_prime = params
        per = jax.vmap(lambda k: jax.random.split(k, 4))(keys)
        k_next, k_rand, k_cur, k_cur_next = (per[:, i] for i in range(4))
        obs, next_obs = batch.observations, batch.next_observations
        # TD target from the current policy at s' and the target critics.
        next_actions, next_log_prob = sample(state.actor, next_obs, k_next, 1)
        next_q = critic.apply(state.critic_target, next_obs, next_actions[:, 0]).min(0)
        if config.backup_entropy:
            next_q = next_q - jnp.exp(state.log_alpha) * next_log_prob[:, 0]
        target = bellman_target(batch.rewards, batch.terminals, next_q, hparams.gamma)
        # CQL: N uniform, N pi(s) and N pi(s') actions, all evaluated at s; one
        # critic call on [B, 1 + 3N] actions (the data action first).
        random_actions = jax.vmap(
            lambda k: jax.random.uniform(k, (n, dim), minval=-1.0, maxval=1.0)
        )(k_rand)
        cur_actions, cur_log_prob = sample(state.actor, obs, k_cur, n)
        nxt_actions, nxt_log_prob = sample(state.actor, next_obs, k_cur_next, n)
        all_actions = jnp.concatenate(
            [batch.actions[:, None], random_actions, cur_actions, nxt_actions], 1
        )
        obs_rep = jnp.broadcast_to(
            obs[:, None], (obs.shape[0], 1 + 3 * n, obs.shape[1])
        )
        q_all = critic.apply(critic_params, obs_rep, all_actions)  # [2, B, 1 + 3N]
        q_data = q_all[:, :, 0]
        q_rand, q_cur, q_nxt = jnp.split(q_all[:, :, 1:], 3, axis=2)
        td = twin_critic_loss(q_data, target)
        gaps = [
            cql_continuous_gap(
                q_data[j],
                q_rand[j],
                q_cur[j],
                cur_log_prob,
                q_nxt[j],
                nxt_log_prob,
                dim,
                hparams.temperature,
                config.importance_sample,
            )
            for j in range(2)
        ]
        terms, duals = zip(
            *(regularizer(g, log_alpha_prime, hparams) for g in gaps), strict=True
        )
        loss = td + sum(terms) + 0.5 * sum(duals)
        aux = {
            "td_loss": td,
            "cql_gap": 0.5 * (gaps[0] + gaps[1]),
            "q": q_data.mean(),
        }
        return loss, aux

    def continuous_update(state, batch, keys, hparams):
        per = jax.vmap(jax.random.split)(keys)
        k_actor, k_critic = per[:, 0], per[:, 1]
        (_, actor_aux), (g_actor, g_log_alpha) = dp.value_and_grad(
            actor_alpha_loss, has_aux=True
        )((state.actor, state.log_alpha), state, batch, k_actor, hparams)
        (_, critic_aux), (g_critic, g_alpha_prime) = dp.value_and_grad(
            critic_loss, has_aux=True
        )((state.critic, state.log_alpha_prime), state, batch, k_critic, hparams)
        actor_params, actor_opt = _common.adam_step(
            tx, g_actor, state.actor_opt, state.actor, hparams.actor_lr
        )
        critic_params, critic_opt = _common.adam_step(
            tx, g_critic, state.critic_opt, state.critic, hparams.critic_lr
        )
        (log_alpha, log_alpha_prime), alpha_opt = _common.adam_step(
            tx,
            (g_log_alpha, g_alpha_prime),
            state.alpha_opt,
            (state.log_alpha, state.log_alpha_prime),
            hparams.alpha_lr,
        )
        new_state = state.replace(
            actor=actor_params,
            actor_opt=actor_opt,
            critic=critic_params,
            critic_opt=critic_opt,
            critic_target=_common.soft_update(
                state.critic_target, critic_params, hparams.tau
            ),
            log_alpha=log_alpha,
            log_alpha_prime=log_alpha_prime,
            alpha_opt=alpha_opt,
        )
        metrics = {
            **actor_aux,
            **critic_aux,
            "alpha": jnp.exp(log_alpha),
            "alpha_prime": alpha_prime_of(log_alpha_prime),
        }
        return new_state, metrics

    update_local = discrete_update if discrete else continuous_update
    update = _common.make_update(config, update_local, spec)
    run = _common.make_run(update, default_hparams)

    def policy(state, obs, key=None):
        obs = state.obs_norm(obs.astype(jnp.float32))
        if discrete:
            return jnp.argmax(qnet.apply(state.critic, obs), -1)
        return spec.from_unit(actor.apply(state.actor, obs, method="mode"))

    train = _common.make_train(init, run, config, default_hparams, obs_dim, spec)
    return CQL(config, spec, default_hparams, init, update, run, policy, train)
