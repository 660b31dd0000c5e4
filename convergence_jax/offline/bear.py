"""Bootstrapping Error Accumulation Reduction (BEAR), continuous actions.

    bear = make_bear(BEARConfig(num_steps=10_000), obs_dim, spec)
    state, metrics = jax.jit(bear.train)(key, data)
    act = functools.partial(bear.policy, state)              # act(obs [B, d], key)

Kumar, Fu, Tucker & Levine 2019, "Stabilizing off-policy Q-learning via
bootstrapping error reduction" (Algorithm 1), as the authors' ``algos.py``
(aviralkumar2907/BEAR @a57faff, ``mode="auto"``, ``version=0``) does it:

* a conditional VAE models the behaviour policy (BCQ's, ``bcq.ConditionalVAE``,
  loss ``bcq.vae_loss``);
* twin critics regressed on ``r + gamma (1 - terminal) max_j [lam min_k Q'_k +
  (1 - lam) max_k Q'_k](s', a_j)`` over ``num_target_samples`` (10) samples
  ``a_j`` of the target actor (``bcq.soft_clipped_double_q``, lam = 0.75);
* a tanh-Gaussian actor ``a = tanh(u)``, ``u ~ N(mu(s), sigma(s))``, trained on
  ``bear_actor_loss``: ``-min_k mean_j Q_k(s, a_j) + alpha * MMD`` after
  ``warmup_steps`` updates and ``alpha * MMD`` alone before them (the warm start);
* ``MMD = mmd(u_behaviour, u_policy)`` between ``num_mmd_samples`` VAE samples
  and as many policy samples at each state, **both before the tanh** ("to prevent
  gradient dying out due to saturation"): the VAE's ``decode_pre_tanh`` and the
  actor's Gaussian ``u`` (its noise clipped to [-0.5, 0.5], the authors' trick);
* the Lagrange multiplier ``alpha = exp(log_alpha)`` by dual ascent
  (``bear_alpha_loss``: gradient descent on ``-alpha (MMD - epsilon)``, so alpha
  grows while the MMD exceeds ``epsilon`` = ``alpha_threshold`` 0.05), then
  ``log_alpha`` clamped to [``log_alpha_min``, ``log_alpha_max``] = [-5, 10]
  (``clamp_log_alpha``); it is updated from the first step on, warm-up included;
* acting: ``num_action_samples`` (10) policy samples, the argmax of ``Q_1``.

No entropy term (the paper's actor is TD3-style; d3rlpy adds SAC's temperature,
and its D4RL reproduction switches it off with ``temp_learning_rate=0,
initial_temperature=1e-20``).

Where d3rlpy departs: since its commit 4abdbd3f ("Simplify ConditionalVAE") the
VAE decoder's ``with_squash`` flag is inverted, so its BEAR compares **tanh'd**
behaviour samples (``forward_vae_sample_n(..., with_squash=False)``) with
**pre-tanh** policy samples. We follow the paper and the authors' code: both
sides of the MMD are pre-tanh. Also as the authors (not d3rlpy): the Lagrange
step size is its own (``alpha_learning_rate``; d3rlpy's alpha optimizer takes the
actor's), and the actor's Q term averages over all ``num_mmd_samples`` samples.
``log_alpha`` starts at ``log(initial_alpha)`` (the authors draw it from N(0, 1)).

The kernels (``gaussian_kernel``, ``laplacian_kernel``) divide by ``2 sigma``, not
``2 sigma^2``, as the authors' ``mmd_loss_*`` and d3rlpy do (the paper writes
the usual Gaussian kernel; ``mmd_sigma`` is then a variance-like scale).
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
from convergence_jax.offline._common import ActionSpec, ObsNorm
from convergence_jax.offline.bcq import (
    ConditionalVAE,
    _split_rows,
    sample_latent,
    soft_clipped_double_q,
    vae_loss,
)
from convergence_jax.offline.networks import TanhGaussianActor, TwinCritic

__all__ = [
    "BEAR",
    "BEARConfig",
    "BEARHParams",
    "BEARState",
    "KERNELS",
    "bear_actor_loss",
    "bear_alpha_loss",
    "clamp_log_alpha",
    "gaussian_kernel",
    "laplacian_kernel",
    "make_bear",
    "mmd",
]

POLICY_NOISE_CLIP = 0.5


# ------------------------------------------------------------------ pure losses


def gaussian_kernel(x: jax.Array, y: jax.Array, sigma) -> jax.Array:
    """``exp(-sum_d (x_d - y_d)^2 / (2 sigma))`` over the last axis (broadcast)."""
    return jnp.exp(-jnp.sum(jnp.square(x - y), -1) / (2.0 * sigma))


def laplacian_kernel(x: jax.Array, y: jax.Array, sigma) -> jax.Array:
    """``exp(-sum_d |x_d - y_d| / (2 sigma))`` over the last axis (broadcast)."""
    return jnp.exp(-jnp.sum(jnp.abs(x - y), -1) / (2.0 * sigma))


KERNELS = {"gaussian": gaussian_kernel, "laplacian": laplacian_kernel}
"""MMD kernels by name."""


def mmd(
    x: jax.Array, y: jax.Array, sigma: float | jax.Array, kernel: str = "laplacian"
) -> jax.Array:
    """The (biased) sample MMD of BEAR (Gretton et al. 2012; Kumar et al. 2019
    eq. 4), with the authors' ``+ 1e-6`` inside the square root::

        sqrt(mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j)
             + 1e-6)

    Args: ``x [n, d]``, ``y [m, d]`` (one state's samples); ``kernel`` one of
    ``KERNELS``. Returns a scalar (``sqrt(1e-6)`` for identical sample sets).
    """
    chex.assert_rank([x, y], 2)
    chex.assert_equal_shape_suffix([x, y], 1)
    if kernel not in KERNELS:
        raise ValueError(
            f"mmd: kernel must be one of {sorted(KERNELS)}, got {kernel!r}"
        )
    k = KERNELS[kernel]
    kxx = k(x[:, None], x[None], sigma).mean()
    kyy = k(y[:, None], y[None], sigma).mean()
    kxy = k(x[:, None], y[None], sigma).mean()
    return jnp.sqrt(kxx + kyy - 2.0 * kxy + 1e-6)


def bear_actor_loss(
    q_min: jax.Array, mmd_value: jax.Array, log_alpha: jax.Array, warm: jax.Array
) -> jax.Array:
    """BEAR's actor loss over a batch::

        mean_i [-Q_min(s_i) + alpha MMD_i]   after the warm-up
        mean_i [alpha MMD_i]                 while ``warm`` (the warm start)

    with ``alpha = exp(log_alpha)`` held fixed (no gradient to it).

    Args: ``q_min, mmd_value [B]``; scalars ``log_alpha``, ``warm`` (bool).
    """
    chex.assert_rank([q_min, mmd_value, log_alpha, warm], [1, 1, 0, 0])
    chex.assert_equal_shape([q_min, mmd_value])
    alpha = jnp.exp(jax.lax.stop_gradient(log_alpha))
    constraint = alpha * mmd_value
    return jnp.mean(jnp.where(warm, constraint, constraint - q_min))


def bear_alpha_loss(
    log_alpha: jax.Array, mmd_value: jax.Array, threshold: float | jax.Array
) -> jax.Array:
    """The Lagrange multiplier's loss (dual ascent by gradient descent)::

        -mean_i exp(log_alpha) (MMD_i - epsilon)

    (the MMD held fixed): its gradient pushes ``log_alpha`` up while the mean MMD
    exceeds ``epsilon`` and down below it. Args: scalar ``log_alpha``,
    ``mmd_value [B]``.
    """
    chex.assert_rank([log_alpha, mmd_value], [0, 1])
    gap = jax.lax.stop_gradient(mmd_value) - threshold
    return -jnp.mean(jnp.exp(log_alpha) * gap)


def clamp_log_alpha(log_alpha: jax.Array, low, high) -> jax.Array:
    """``clip(log_alpha, low, high)`` (the authors' ``clamp_(-5, 10)``)."""
    return jnp.clip(log_alpha, low, high)


# ------------------------------------------------------------------ program


@dataclass(frozen=True)
class BEARConfig:
    """A BEAR run: sizes (static) and default numbers (the authors', unless said)."""

    num_steps: int = 100_000
    """Gradient updates."""
    batch_size: int = 100
    """Global minibatch size (split over devices)."""
    num_devices: int = 1
    """Devices to split every minibatch over (data parallel)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden sizes of the actor and the critics (the authors': 400, 300)."""
    activation: str = "relu"
    """Hidden activation."""
    normalize_obs: bool = True
    """Normalize observations by the dataset's mean and std (not in the paper)."""
    vae_hidden_sizes: tuple[int, ...] = (750, 750)
    """Hidden sizes of the VAE's encoder and decoder."""
    latent_dim: int | None = None
    """VAE latent size; None: 2 * action_dim."""
    kernel: str = "laplacian"
    """MMD kernel: laplacian or gaussian (static)."""
    num_mmd_samples: int = 5
    """Samples per state on each side of the MMD (the authors' num_samples_match)."""
    num_target_samples: int = 10
    """Target-actor samples at s' for the critic target."""
    num_action_samples: int = 10
    """Policy samples scored by Q_1 when acting."""
    actor_learning_rate: float = 1e-3
    """Adam step size of the actor (PyTorch's default, as the authors)."""
    learning_rate: float = 1e-3
    """Adam step size of the critics."""
    vae_learning_rate: float = 1e-3
    """Adam step size of the VAE."""
    alpha_learning_rate: float = 1e-3
    """Adam step size of log_alpha."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Polyak rate of the target networks."""
    lam: float = 0.75
    """Weight of the minimum in the soft clipped double Q."""
    mmd_sigma: float = 10.0
    """Kernel width (the authors: 10 with laplacian, 20 with gaussian)."""
    alpha_threshold: float = 0.05
    """epsilon, the MMD the Lagrange multiplier enforces."""
    initial_alpha: float = 1.0
    """exp(log_alpha) at the start."""
    log_alpha_min: float = -5.0
    """Lower clamp of log_alpha."""
    log_alpha_max: float = 10.0
    """Upper clamp of log_alpha (the authors' lagrange_thresh)."""
    warmup_steps: float = 40_000
    """Updates during which the actor minimizes alpha * MMD only (d3rlpy's 40k)."""
    kl_weight: float = 0.5
    """Weight of the VAE's KL term."""


@struct.dataclass
class BEARHParams:
    """Every number of a BEAR run (a sweep is a ``vmap``)."""

    actor_learning_rate: jax.Array
    learning_rate: jax.Array
    vae_learning_rate: jax.Array
    alpha_learning_rate: jax.Array
    gamma: jax.Array
    tau: jax.Array
    lam: jax.Array
    mmd_sigma: jax.Array
    alpha_threshold: jax.Array
    initial_alpha: jax.Array
    log_alpha_min: jax.Array
    log_alpha_max: jax.Array
    warmup_steps: jax.Array
    kl_weight: jax.Array


@struct.dataclass
class BEARState:
    """Parameters, targets and optimizer states of a BEAR run."""

    actor: Any
    actor_target: Any
    actor_opt: Any
    critic: Any
    critic_target: Any
    critic_opt: Any
    vae: Any
    vae_opt: Any
    log_alpha: jax.Array
    alpha_opt: Any
    obs_norm: ObsNorm
    key: jax.Array
    step: jax.Array


class BEAR(NamedTuple):
    config: BEARConfig
    spec: ActionSpec
    default_hparams: BEARHParams
    init: Callable[..., BEARState]
    """``init(key, data, hparams=None) -> BEARState``."""
    update: Callable
    """``update(state, data, hparams) -> (state, metrics)``."""
    run: Callable
    """``run(state, data, hparams=None, num_steps=1) -> (state, metrics)``."""
    policy: Callable
    """``policy(state, obs [B, obs_dim], key) -> environment actions``."""
    train: Callable
    """``train(key, data, hparams=None) -> (state, metrics)``."""


def _check_bear(config: BEARConfig, action_spec: ActionSpec) -> None:
    name = "BEARConfig"
    _common.check_config(config, name)
    for field in ("num_mmd_samples", "num_target_samples", "num_action_samples"):
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{field}: expected an int >= 1, got {value!r}")
    if config.kernel not in KERNELS:
        raise ValueError(
            f"{name}.kernel: expected one of {sorted(KERNELS)}, got {config.kernel!r}"
        )
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
            "actor_learning_rate",
            "learning_rate",
            "vae_learning_rate",
            "alpha_learning_rate",
            "mmd_sigma",
            "initial_alpha",
        ),
        nonnegative=("alpha_threshold", "warmup_steps", "kl_weight"),
        unit=("gamma", "tau", "lam"),
    )
    if not config.log_alpha_min < config.log_alpha_max:
        raise ValueError(
            f"{name}: log_alpha_min ({config.log_alpha_min}) must be below "
            f"log_alpha_max ({config.log_alpha_max})"
        )
    if action_spec.discrete:
        raise ValueError(
            "make_bear: BEAR is for continuous actions; for discrete ones use "
            "discrete BCQ or CQL"
        )


def make_bear(config: BEARConfig, obs_dim: int, action_spec: ActionSpec) -> BEAR:
    """Build the BEAR program; validates the config and the spec first."""
    _common.check_spec(obs_dim, action_spec, "make_bear")
    _check_bear(config, action_spec)
    spec = action_spec
    act_dim = spec.action_dim
    latent_dim = config.latent_dim or 2 * act_dim
    vae = ConditionalVAE(
        act_dim, latent_dim, config.vae_hidden_sizes, config.activation
    )
    actor = TanhGaussianActor(act_dim, config.hidden_sizes, config.activation)
    critic = TwinCritic(config.hidden_sizes, config.activation)
    tx = optax.scale_by_adam()
    dp = _common.DataParallel(config.num_devices > 1)
    n_mmd, n_target = config.num_mmd_samples, config.num_target_samples
    n_act, kernel = config.num_action_samples, config.kernel
    default_hparams = _common.hparams_from_config(BEARHParams, config)

    def init(key, data, hparams=None):
        hparams = default_hparams if hparams is None else hparams
        k_vae, k_actor, k_critic, k_noise, k_state = jax.random.split(key, 5)
        obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
        vae_params = vae.init(k_vae, obs, act, k_noise)
        actor_params = actor.init(k_actor, obs)
        critic_params = critic.init(k_critic, obs, act)
        log_alpha = jnp.log(jnp.asarray(hparams.initial_alpha, jnp.float32))
        return BEARState(
            actor=actor_params,
            actor_target=actor_params,
            actor_opt=tx.init(actor_params),
            critic=critic_params,
            critic_target=critic_params,
            critic_opt=tx.init(critic_params),
            vae=vae_params,
            vae_opt=tx.init(vae_params),
            log_alpha=log_alpha,
            alpha_opt=tx.init(log_alpha),
            obs_norm=_common.obs_norm_from_data(data, config.normalize_obs),
            key=k_state,
            step=jnp.zeros((), jnp.int32),
        )

    def policy_samples(params, obs, key, num, noise_clip=None):
        """``num`` tanh-Gaussian samples at one state: ``(a, u) [num, A]``."""
        mean, log_std = actor.apply(params, obs)
        noise = jax.random.normal(key, (num, act_dim))
        if noise_clip is not None:
            noise = jnp.clip(noise, -noise_clip, noise_clip)
        pre_tanh = mean + jnp.exp(log_std) * noise
        return jnp.tanh(pre_tanh), pre_tanh

    def vae_loss_fn(params, batch, keys, hparams):
        recon, mean, log_std = jax.vmap(lambda s, a, k: vae.apply(params, s, a, k))(
            batch.observations, batch.actions, keys
        )
        losses = jax.vmap(vae_loss, in_axes=(0, 0, 0, 0, None))(
            recon, batch.actions, mean, log_std, hparams.kl_weight
        )
        return losses.mean()

    def critic_loss_fn(params, batch, target):
        q = critic.apply(params, batch.observations, batch.actions)  # [2, B]
        return jnp.mean(jnp.square(q - target[None])) * 2.0, q.mean()

    def actor_loss_fn(params, state, batch, keys, warm, hparams):
        def one(s, k):
            k_vae, k_pi = jax.random.split(k)
            rep = jnp.broadcast_to(s, (n_mmd, obs_dim))
            z = sample_latent(k_vae, (n_mmd, latent_dim))
            behaviour = vae.apply(
                state.vae, rep, z, method=ConditionalVAE.decode_pre_tanh
            )
            a, u = policy_samples(params, s, k_pi, n_mmd, POLICY_NOISE_CLIP)
            q = critic.apply(state.critic, rep, a)  # [2, n]
            q_min = q.mean(-1).min()
            distance = mmd(
                jax.lax.stop_gradient(behaviour), u, hparams.mmd_sigma, kernel
            )
            return q_min, distance

        q_min, distance = jax.vmap(one)(batch.observations, keys)
        loss = bear_actor_loss(q_min, distance, state.log_alpha, warm)
        return loss, (distance, q_min)

    def update_local(state, batch, keys, hparams):
        k_vae, k_target, k_actor = _split_rows(keys, 3)
        vae_value, grads = dp.value_and_grad(vae_loss_fn)(
            state.vae, batch, k_vae, hparams
        )
        vae_params, vae_opt = _common.adam_step(
            tx, grads, state.vae_opt, state.vae, hparams.vae_learning_rate
        )

        def target_one(s2, r, terminal, k):
            a, _ = policy_samples(state.actor_target, s2, k, n_target)
            rep = jnp.broadcast_to(s2, (n_target, obs_dim))
            q = critic.apply(state.critic_target, rep, a).T  # [n, 2]
            value = soft_clipped_double_q(q, hparams.lam)
            return r + hparams.gamma * (1.0 - terminal) * value

        target = jax.vmap(target_one)(
            batch.next_observations,
            batch.rewards,
            batch.terminals.astype(jnp.float32),
            k_target,
        )
        target = jax.lax.stop_gradient(target)
        (critic_value, q_mean), grads = dp.value_and_grad(critic_loss_fn, has_aux=True)(
            state.critic, batch, target
        )
        critic_params, critic_opt = _common.adam_step(
            tx, grads, state.critic_opt, state.critic, hparams.learning_rate
        )
        state = state.replace(vae=vae_params, critic=critic_params)

        warm = state.step.astype(jnp.float32) < hparams.warmup_steps
        (actor_value, (distance, q_min)), grads = dp.value_and_grad(
            actor_loss_fn, has_aux=True
        )(state.actor, state, batch, k_actor, warm, hparams)
        actor_params, actor_opt = _common.adam_step(
            tx, grads, state.actor_opt, state.actor, hparams.actor_learning_rate
        )
        # The dual step uses the MMD of the actor step (as the authors do).
        _, grad = dp.value_and_grad(bear_alpha_loss)(
            state.log_alpha, distance, hparams.alpha_threshold
        )
        log_alpha, alpha_opt = _common.adam_step(
            tx, grad, state.alpha_opt, state.log_alpha, hparams.alpha_learning_rate
        )
        log_alpha = clamp_log_alpha(
            log_alpha, hparams.log_alpha_min, hparams.log_alpha_max
        )
        state = state.replace(
            vae_opt=vae_opt,
            critic_opt=critic_opt,
            actor=actor_params,
            actor_opt=actor_opt,
            log_alpha=log_alpha,
            alpha_opt=alpha_opt,
            critic_target=_common.soft_update(
                state.critic_target, critic_params, hparams.tau
            ),
            actor_target=_common.soft_update(
                state.actor_target, actor_params, hparams.tau
            ),
        )
        metrics = {
            "vae_loss": vae_value,
            "critic_loss": critic_value,
            "actor_loss": actor_value,
            "mmd": distance.mean(),
            "alpha": jnp.exp(log_alpha),
            "q_mean": q_mean,
            "q_policy": q_min.mean(),
            "warm": warm.astype(jnp.float32),
        }
        return state, metrics

    def policy(state, obs, key):
        """Acting: ``num_action_samples`` policy samples per state, the argmax of
        Q_1 (one key for the batch)."""
        obs = state.obs_norm(obs.astype(jnp.float32))
        keys = jax.random.split(key, obs.shape[0])

        def one(s, k):
            a, _ = policy_samples(state.actor, s, k, n_act)
            rep = jnp.broadcast_to(s, (n_act, obs_dim))
            q1 = critic.apply(state.critic, rep, a)[0]
            return a[jnp.argmax(q1)]

        return spec.from_unit(jax.vmap(one)(obs, keys))

    update = _common.make_update(config, update_local, spec)
    run = _common.make_run(update, default_hparams)
    train = _common.make_train(init, run, config, default_hparams, obs_dim, spec)
    return BEAR(config, spec, default_hparams, init, update, run, policy, train)
