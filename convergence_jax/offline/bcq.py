"""Batch-Constrained deep Q-learning (BCQ), continuous and discrete.

    bcq = make_bcq(BCQConfig(num_steps=10_000), obs_dim, spec)
    state, metrics = jax.jit(bcq.train)(key, data)
    act = functools.partial(bcq.policy, state)               # act(obs [B, d], key)

**Continuous** (Fujimoto, Meger & Precup 2019, "Off-policy deep reinforcement
learning without exploration", Algorithm 1; the authors' ``BCQ.py``):

* a conditional VAE ``G(a | s)`` models the behaviour policy: encoder
  ``q(z | s, a) = N(mu, sigma)`` (``log sigma`` clipped to [-4, 15]), latent of
  ``2 |A|`` dimensions, decoder ``a = tanh(D(s, z))`` (the paper's decoder is
  squashed into the action box), trained on ``vae_loss``;
* a perturbation network ``xi(s, a) = clip(a + Phi tanh(f(s, a)), -1, 1)`` with
  ``Phi = action_flexibility`` (0.05), trained to maximize ``Q_1(s, xi(s, a))`` on
  VAE samples ``a ~ G(s)``;
* twin critics regressed on ``r + gamma (1 - terminal) max_j [lam min_k Q'_k +
  (1 - lam) max_k Q'_k](s', a_j)`` over ``num_target_samples`` (10) perturbed VAE
  samples ``a_j`` at ``s'`` (``soft_clipped_double_q``, lam = 0.75); latents are
  drawn from ``N(0, 1)`` clipped to [-0.5, 0.5];
* acting: ``num_action_samples`` (100) perturbed VAE samples, the argmax of
  ``Q_1`` (so the policy is stochastic, as the paper's).

Where d3rlpy departs: since its "Simplify ConditionalVAE" commit (4abdbd3f) the
decoder's ``with_squash`` flag is inverted and BCQ decodes *without* tanh (the
residual policy then clamps to [-1, 1]). We follow the paper and the authors'
code: the decoder squashes (``ConditionalVAE.decode``; the raw output is
``decode_pre_tanh``, named by what it returns).

**Discrete** (Fujimoto, Conti, Ghavamzadeh & Pineau 2019, "Benchmarking batch
deep reinforcement learning algorithms"; the authors' ``discrete_BCQ.py``): a
Q-network and an imitation network ``G_w(a | s)`` (separate MLPs). An action is
allowed where ``G_w(a | s) / max_a' G_w(a' | s) > tau`` (``discrete_bcq_mask``,
tau = ``threshold`` 0.3); the target takes the allowed argmax of the online Q at
``s'`` and evaluates it with the target network (double DQN); the loss is the
Huber TD error plus ``-log G_w(a | s) + logit_reg mean(logits^2)``
(``discrete_imitation_loss``); the target network follows by Polyak averaging
(the authors' "regular" setting, tau 0.005). Acting: the allowed argmax of Q.

Continuous actions are learned in [-1, 1]^d (``ActionSpec.to_unit``); the terminal
flag stops the bootstrap, a timeout does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from convergence_jax.offline import _common
from convergence_jax.offline._common import ActionSpec, ObsNorm
from convergence_jax.offline.networks import LogitsNet, TwinCritic
from convergence_jax.rl.networks import MLP

__all__ = [
    "BCQ",
    "BCQConfig",
    "BCQHParams",
    "BCQState",
    "ConditionalVAE",
    "DiscreteBCQNet",
    "Perturbation",
    "discrete_bcq_mask",
    "discrete_bcq_target",
    "discrete_imitation_loss",
    "make_bcq",
    "sample_latent",
    "soft_clipped_double_q",
    "vae_loss",
]

VAE_LOG_STD_MIN, VAE_LOG_STD_MAX = -4.0, 15.0
LATENT_CLIP = 0.5


# ------------------------------------------------------------------ pure losses


def vae_loss(
    recon: jax.Array,
    action: jax.Array,
    mean: jax.Array,
    log_std: jax.Array,
    kl_weight: float | jax.Array = 0.5,
) -> jax.Array:
    """The (negative) ELBO of the conditional VAE on one example (Kingma &
    Welling 2014; BCQ's and BEAR's behaviour model, Fujimoto et al. 2019 eq. 28)::

        mean_d (D(s, z)_d - a_d)^2 + kl_weight * mean_k KL_k,
        KL_k = -1/2 (1 + log sigma_k^2 - mu_k^2 - sigma_k^2)

    (KL of ``N(mu, sigma)`` to ``N(0, 1)`` per latent dimension; the means over
    dimensions make the batch mean equal the authors' ``mse_loss + 0.5 *
    KL.mean()``).

    Args: ``recon, action [d]``; ``mean, log_std [k]``. Returns a scalar.
    """
    chex.assert_rank([recon, action, mean, log_std], 1)
    chex.assert_equal_shape([recon, action])
    chex.assert_equal_shape([mean, log_std])
    recon_loss = jnp.mean(jnp.square(recon - action))
    kl = -0.5 * (1.0 + 2.0 * log_std - jnp.square(mean) - jnp.exp(2.0 * log_std))
    return recon_loss + kl_weight * jnp.mean(kl)


def soft_clipped_double_q(q: jax.Array, lam: float | jax.Array = 0.75) -> jax.Array:
    """BCQ's target value over sampled actions (Fujimoto et al. 2019, eq. 13)::

        max_j [lam min_k Q_k(s', a_j) + (1 - lam) max_k Q_k(s', a_j)]

    Args: ``q [num_samples, num_critics]``. Returns a scalar.
    """
    chex.assert_rank(q, 2)
    mixed = lam * q.min(-1) + (1.0 - lam) * q.max(-1)
    return mixed.max()


def discrete_bcq_mask(logits: jax.Array, threshold: float | jax.Array) -> jax.Array:
    """Actions discrete BCQ allows: ``G(a | s) / max_a' G(a' | s) > threshold``,
    computed in log space (``log G(a) - max log G > log threshold``).

    Args: ``logits [A]`` of the imitation network. Returns bool ``[A]``; the most
    likely action is always allowed when ``threshold < 1``.
    """
    chex.assert_rank(logits, 1)
    log_probs = jax.nn.log_softmax(logits)
    return log_probs - log_probs.max() > jnp.log(threshold)


def discrete_bcq_target(
    reward: jax.Array,
    discount: jax.Array,
    next_q: jax.Array,
    next_target_q: jax.Array,
    next_logits: jax.Array,
    threshold: float | jax.Array,
) -> jax.Array:
    """``r + discount * Q'(s', argmax_{a' allowed} Q(s', a'))`` (double DQN over
    the allowed actions of ``discrete_bcq_mask``); ``discount`` is ``gamma (1 -
    terminal)``.

    Args: scalars ``reward, discount``; ``next_q, next_target_q, next_logits
    [A]``. Returns a scalar (not stopped: callers stop the gradient).
    """
    chex.assert_rank([reward, discount], 0)
    chex.assert_rank([next_q, next_target_q, next_logits], 1)
    chex.assert_equal_shape([next_q, next_target_q, next_logits])
    allowed = discrete_bcq_mask(next_logits, threshold)
    best = jnp.argmax(jnp.where(allowed, next_q, -jnp.inf))
    return reward + discount * next_target_q[best]


def discrete_imitation_loss(
    logits: jax.Array, action: jax.Array, logit_reg: float | jax.Array = 1e-2
) -> jax.Array:
    """``-log softmax(logits)[a] + logit_reg * mean(logits^2)`` for one example
    (the authors' ``nll_loss + 1e-2 * i.pow(2).mean()``; d3rlpy's ``beta``).

    Args: ``logits [A]``, ``action`` int scalar. Returns a scalar.
    """
    chex.assert_rank([logits, action], [1, 0])
    log_probs = jax.nn.log_softmax(logits)
    return -log_probs[action] + logit_reg * jnp.mean(jnp.square(logits))


# ------------------------------------------------------------------ networks


def sample_latent(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """BCQ's prior samples: ``N(0, 1)`` clipped to [-0.5, 0.5]."""
    return jnp.clip(jax.random.normal(key, tuple(shape)), -LATENT_CLIP, LATENT_CLIP)


class ConditionalVAE(nn.Module):
    """``G(a | s)``: encoder ``(s, a) -> (mu, log sigma)``, decoder ``(s, z) -> a``.

    ``__call__(obs, action, key) -> (recon, mean, log_std)`` (a reparameterized
    latent; ``recon`` squashed). ``decode(obs, z)`` is ``tanh(decode_pre_tanh)``;
    ``decode_pre_tanh`` is what BEAR compares in its MMD.
    """

    action_dim: int
    latent_dim: int
    hidden_sizes: Sequence[int] = (750, 750)
    activation: str = "relu"

    def setup(self):
        self.encoder = MLP(self.hidden_sizes, 2 * self.latent_dim, self.activation)
        self.decoder = MLP(self.hidden_sizes, self.action_dim, self.activation)

    def encode(self, obs, action):
        out = self.encoder(jnp.concatenate([obs, action], -1))
        mean, log_std = jnp.split(out, 2, -1)
        return mean, jnp.clip(log_std, VAE_LOG_STD_MIN, VAE_LOG_STD_MAX)

    def decode_pre_tanh(self, obs, z):
        return self.decoder(jnp.concatenate([obs, z], -1))

    def decode(self, obs, z):
        return jnp.tanh(self.decode_pre_tanh(obs, z))

    def __call__(self, obs, action, key):
        mean, log_std = self.encode(obs, action)
        z = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
        return self.decode(obs, z), mean, log_std


class Perturbation(nn.Module):
    """``xi(s, a) = clip(a + phi * tanh(f(s, a)), -1, 1)`` (BCQ's actor)."""

    action_dim: int
    hidden_sizes: Sequence[int] = (400, 300)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs, action, phi):
        x = jnp.concatenate([obs, action], -1)
        delta = MLP(self.hidden_sizes, self.action_dim, self.activation, 0.01)(x)
        return jnp.clip(action + phi * jnp.tanh(delta), -1.0, 1.0)


class DiscreteBCQNet(nn.Module):
    """``obs -> (Q [..., A], imitation logits [..., A])`` (two MLPs)."""

    num_actions: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        q = LogitsNet(self.num_actions, self.hidden_sizes, self.activation)(obs)
        logits = LogitsNet(self.num_actions, self.hidden_sizes, self.activation)(obs)
        return q, logits


# ------------------------------------------------------------------ program


@dataclass(frozen=True)
class BCQConfig:
    """A BCQ run: sizes (static) and default numbers (the paper's, unless said)."""

    num_steps: int = 100_000
    """Gradient updates."""
    batch_size: int = 100
    """Global minibatch size (split over devices)."""
    num_devices: int = 1
    """Devices to split every minibatch over (data parallel)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden sizes of the critics and the perturbation network (discrete: of the
    Q and imitation networks); the paper's are (400, 300)."""
    activation: str = "relu"
    """Hidden activation."""
    normalize_obs: bool = True
    """Normalize observations by the dataset's mean and std (not in the paper)."""
    vae_hidden_sizes: tuple[int, ...] = (750, 750)
    """Hidden sizes of the VAE's encoder and decoder (continuous)."""
    latent_dim: int | None = None
    """VAE latent size; None: 2 * action_dim (the paper's)."""
    num_target_samples: int = 10
    """VAE samples at s' for the critic target (continuous)."""
    num_action_samples: int = 100
    """VAE samples scored by Q_1 when acting (continuous)."""
    learning_rate: float = 1e-3
    """Adam step size of the critics (discrete: of both networks; the discrete
    paper uses 3e-4 on Atari)."""
    actor_learning_rate: float = 1e-3
    """Adam step size of the perturbation network (continuous)."""
    vae_learning_rate: float = 1e-3
    """Adam step size of the VAE (continuous)."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Polyak rate of the target networks."""
    lam: float = 0.75
    """Weight of the minimum in the soft clipped double Q (continuous)."""
    action_flexibility: float = 0.05
    """Phi, the largest perturbation in [-1, 1] action units (continuous)."""
    kl_weight: float = 0.5
    """Weight of the VAE's KL term (continuous)."""
    threshold: float = 0.3
    """tau of discrete BCQ: allowed where G(a|s) / max G > threshold (discrete)."""
    logit_reg: float = 1e-2
    """Weight of mean(logits^2) in the imitation loss (discrete)."""


@struct.dataclass
class BCQHParams:
    """Every number of a BCQ run (a sweep is a ``vmap``; unused ones are ignored:
    the discrete program uses learning_rate, gamma, tau, threshold, logit_reg)."""

    learning_rate: jax.Array
    actor_learning_rate: jax.Array
    vae_learning_rate: jax.Array
    gamma: jax.Array
    tau: jax.Array
    lam: jax.Array
    action_flexibility: jax.Array
    kl_weight: jax.Array
    threshold: jax.Array
    logit_reg: jax.Array


@struct.dataclass
class BCQState:
    """Parameters, targets and optimizer states of a BCQ run. Discrete: ``critic``
    holds the Q + imitation networks and ``actor`` / ``vae`` are empty."""

    critic: Any
    critic_target: Any
    critic_opt: Any
    actor: Any
    actor_target: Any
    actor_opt: Any
    vae: Any
    vae_opt: Any
    obs_norm: ObsNorm
    key: jax.Array
    step: jax.Array


class BCQ(NamedTuple):
    config: BCQConfig
    spec: ActionSpec
    default_hparams: BCQHParams
    init: Callable[..., BCQState]
    """``init(key, data, hparams=None) -> BCQState``."""
    update: Callable
    """``update(state, data, hparams) -> (state, metrics)``."""
    run: Callable
    """``run(state, data, hparams=None, num_steps=1) -> (state, metrics)``."""
    policy: Callable
    """``policy(state, obs [B, obs_dim], key) -> environment actions``."""
    train: Callable
    """``train(key, data, hparams=None) -> (state, metrics)``."""


def _check_bcq(config: BCQConfig) -> None:
    name = "BCQConfig"
    _common.check_config(config, name)
    for field in ("num_target_samples", "num_action_samples"):
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{field}: expected an int >= 1, got {value!r}")
    if config.latent_dim is not None and (
        isinstance(config.latent_dim, bool)
        or not isinstance(config.latent_dim, int)
        or config.latent_dim < 1
    ):
        raise ValueError(
            f"{name}.latent_dim: expected None or an int >= 1, got "
            f"{config.latent_dim!r}"
        )
    hidden = config.vae_hidden_sizes
    if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(
            f"{name}.vae_hidden_sizes: expected positive ints, got {hidden}"
        )
    _common.check_numbers(
        config,
        name,
        positive=(
            "learning_rate",
            "actor_learning_rate",
            "vae_learning_rate",
            "threshold",
        ),
        nonnegative=("action_flexibility", "kl_weight", "logit_reg"),
        unit=("gamma", "tau", "lam"),
    )
    if config.threshold >= 1:
        raise ValueError(
            f"{name}.threshold: expected in (0, 1) (1 would allow no action), got "
            f"{config.threshold}"
        )


def make_bcq(config: BCQConfig, obs_dim: int, action_spec: ActionSpec) -> BCQ:
    """Build the BCQ program (discrete or continuous by ``action_spec``);
    validates the config and the spec first."""
    _check_bcq(config)
    _common.check_spec(obs_dim, action_spec, "make_bcq")
    if action_spec.discrete:
        return _make_discrete(config, obs_dim, action_spec)
    return _make_continuous(config, obs_dim, action_spec)


def _finish(config, spec, init, update_local, policy, obs_dim):
    default_hparams = _common.hparams_from_config(BCQHParams, config)
    update = _common.make_update(config, update_local, spec)
    run = _common.make_run(update, default_hparams)
    train = _common.make_train(init, run, config, default_hparams, obs_dim, spec)
    return BCQ(config, spec, default_hparams, init, update, run, policy, train)


def _make_continuous(config: BCQConfig, obs_dim: int, spec: ActionSpec) -> BCQ:
    act_dim = spec.action_dim
    latent_dim = config.latent_dim or 2 * act_dim
    vae = ConditionalVAE(
        act_dim, latent_dim, config.vae_hidden_sizes, config.activation
    )
    actor = Perturbation(act_dim, config.hidden_sizes, config.activation)
    critic = TwinCritic(config.hidden_sizes, config.activation)
    tx = optax.scale_by_adam()
    dp = _common.DataParallel(config.num_devices > 1)
    n_target, n_act = config.num_target_samples, config.num_action_samples

    def init(key, data, hparams=None):
        k_vae, k_actor, k_critic, k_noise, k_state = jax.random.split(key, 5)
        obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
        vae_params = vae.init(k_vae, obs, act, k_noise)
        actor_params = actor.init(k_actor, obs, act, 0.05)
        critic_params = critic.init(k_critic, obs, act)
        return BCQState(
            critic=critic_params,
            critic_target=critic_params,
            critic_opt=tx.init(critic_params),
            actor=actor_params,
            actor_target=actor_params,
            actor_opt=tx.init(actor_params),
            vae=vae_params,
            vae_opt=tx.init(vae_params),
            obs_norm=_common.obs_norm_from_data(data, config.normalize_obs),
            key=k_state,
            step=jnp.zeros((), jnp.int32),
        )

    def candidates(vae_params, actor_params, obs, key, num, phi):
        """``num`` perturbed VAE samples at one state: ``(obs [num, d], a [num,
        A])``."""
        obs = jnp.broadcast_to(obs, (num, obs_dim))
        z = sample_latent(key, (num, latent_dim))
        sampled = vae.apply(vae_params, obs, z, method=ConditionalVAE.decode)
        return obs, actor.apply(actor_params, obs, sampled, phi)

    def vae_loss_fn(params, batch, keys, hparams):
        recon, mean, log_std = jax.vmap(lambda s, a, k: vae.apply(params, s, a, k))(
            batch.observations, batch.actions, keys
        )
        losses = jax.vmap(vae_loss, in_axes=(0, 0, 0, 0, None))(
            recon, batch.actions, mean, log_std, hparams.kl_weight
        )
        return losses.mean()

    def critic_loss_fn(params, batch, target, hparams):
        q = critic.apply(params, batch.observations, batch.actions)  # [2, B]
        loss = jnp.mean(jnp.square(q - target[None])) * 2.0  # sum over the critics
        return loss, q.mean()

    def actor_loss_fn(params, state, batch, keys, hparams):
        def one(s, k):
            z = sample_latent(k, (latent_dim,))
            sampled = vae.apply(state.vae, s, z, method=ConditionalVAE.decode)
            a = actor.apply(params, s, sampled, hparams.action_flexibility)
            return critic.apply(state.critic, s, a)[0]

        return -jax.vmap(one)(batch.observations, keys).mean()

    def update_local(state, batch, keys, hparams):
        k_vae, k_target, k_actor = _split_rows(keys, 3)
        vae_loss_value, grads = dp.value_and_grad(vae_loss_fn)(
            state.vae, batch, k_vae, hparams
        )
        vae_params, vae_opt = _common.adam_step(
            tx, grads, state.vae_opt, state.vae, hparams.vae_learning_rate
        )

        def target_one(s2, r, terminal, k):
            obs, a = candidates(
                vae_params, state.actor_target, s2, k, n_target,
                hparams.action_flexibility,
            )  # fmt: skip
            q = critic.apply(state.critic_target, obs, a).T  # [n, 2]
            value = soft_clipped_double_q(q, hparams.lam)
            return r + hparams.gamma * (1.0 - terminal) * value

        target = jax.vmap(target_one)(
            batch.next_observations,
            batch.rewards,
            batch.terminals.astype(jnp.float32),
            k_target,
        )
        target = jax.lax.stop_gradient(target)
        (critic_loss, q_mean), grads = dp.value_and_grad(critic_loss_fn, has_aux=True)(
            state.critic, batch, target, hparams
        )
        critic_params, critic_opt = _common.adam_step(
            tx, grads, state.critic_opt, state.critic, hparams.learning_rate
        )
        state = state.replace(vae=vae_params, critic=critic_params)
        actor_loss, grads = dp.value_and_grad(actor_loss_fn)(
            state.actor, state, batch, k_actor, hparams
        )
        actor_params, actor_opt = _common.adam_step(
            tx, grads, state.actor_opt, state.actor, hparams.actor_learning_rate
        )
        state = state.replace(
            vae_opt=vae_opt,
            critic_opt=critic_opt,
            actor=actor_params,
            actor_opt=actor_opt,
            critic_target=_common.soft_update(
                state.critic_target, critic_params, hparams.tau
            ),
            actor_target=_common.soft_update(
                state.actor_target, actor_params, hparams.tau
            ),
        )
        metrics = {
            "vae_loss": vae_loss_value,
            "critic_loss": critic_loss,
            "actor_loss": actor_loss,
            "q_mean": q_mean,
        }
        return state, metrics

    def policy(state, obs, key, hparams=None):
        """Acting: ``num_action_samples`` perturbed VAE samples per state, the
        argmax of Q_1 (one key for the batch)."""
        phi = (config if hparams is None else hparams).action_flexibility
        obs = state.obs_norm(obs.astype(jnp.float32))
        keys = jax.random.split(key, obs.shape[0])

        def one(s, k):
            rep, a = candidates(state.vae, state.actor, s, k, n_act, phi)
            q1 = critic.apply(state.critic, rep, a)[0]
            return a[jnp.argmax(q1)]

        return spec.from_unit(jax.vmap(one)(obs, keys))

    return _finish(config, spec, init, update_local, policy, obs_dim)


def _split_rows(keys: jax.Array, num: int) -> tuple[jax.Array, ...]:
    """Per-example split: ``[B]`` keys -> ``num`` arrays of ``[B]`` keys."""
    split = jax.vmap(lambda k: jax.random.split(k, num))(keys)
    return tuple(split[:, i] for i in range(num))


def _make_discrete(config: BCQConfig, obs_dim: int, spec: ActionSpec) -> BCQ:
    net = DiscreteBCQNet(spec.num_actions, config.hidden_sizes, config.activation)
    tx = optax.scale_by_adam()
    dp = _common.DataParallel(config.num_devices > 1)

    def init(key, data, hparams=None):
        k_net, k_state = jax.random.split(key)
        params = net.init(k_net, jnp.zeros((1, obs_dim)))
        return BCQState(
            critic=params,
            critic_target=params,
            critic_opt=tx.init(params),
            actor=(),
            actor_target=(),
            actor_opt=(),
            vae=(),
            vae_opt=(),
            obs_norm=_common.obs_norm_from_data(data, config.normalize_obs),
            key=k_state,
            step=jnp.zeros((), jnp.int32),
        )

    def loss_fn(params, target_params, batch, hparams):
        q, logits = net.apply(params, batch.observations)
        next_q, next_logits = net.apply(params, batch.next_observations)
        next_target_q, _ = net.apply(target_params, batch.next_observations)
        discount = hparams.gamma * (1.0 - batch.terminals.astype(jnp.float32))
        target = jax.vmap(discrete_bcq_target, in_axes=(0, 0, 0, 0, 0, None))(
            batch.rewards, discount, next_q, next_target_q, next_logits,
            hparams.threshold,
        )  # fmt: skip
        target = jax.lax.stop_gradient(target)
        q_taken = jnp.take_along_axis(q, batch.actions[:, None], 1)[:, 0]
        td_loss = optax.huber_loss(q_taken, target, delta=1.0).mean()
        imitation = jax.vmap(discrete_imitation_loss, in_axes=(0, 0, None))(
            logits, batch.actions, hparams.logit_reg
        ).mean()
        return td_loss + imitation, {
            "td_loss": td_loss,
            "imitation_loss": imitation,
            "q_mean": q_taken.mean(),
        }

    def update_local(state, batch, keys, hparams):
        (loss, aux), grads = dp.value_and_grad(loss_fn, has_aux=True)(
            state.critic, state.critic_target, batch, hparams
        )
        params, opt_state = _common.adam_step(
            tx, grads, state.critic_opt, state.critic, hparams.learning_rate
        )
        target = _common.soft_update(state.critic_target, params, hparams.tau)
        state = state.replace(critic=params, critic_opt=opt_state, critic_target=target)
        return state, {"loss": loss, **aux}

    def policy(state, obs, key=None, hparams=None):
        """The allowed argmax of Q (deterministic; ``key`` is unused)."""
        threshold = (config if hparams is None else hparams).threshold
        q, logits = net.apply(state.critic, state.obs_norm(obs.astype(jnp.float32)))
        allowed = jax.vmap(discrete_bcq_mask, in_axes=(0, None))(logits, threshold)
        return jnp.argmax(jnp.where(allowed, q, -jnp.inf), -1)

    return _finish(config, spec, init, update_local, policy, obs_dim)
