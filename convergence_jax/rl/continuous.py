"""Networks and pure losses of the continuous-action off-policy learners (SAC, TD3).

Actions live in the unit box [-1, 1]^d here; the programs map them into the
environment's box (``low + (a + 1) (high - low) / 2``). Every network works on
one example or a batch (leading axes are kept):

* ``TwinQCritic``: two independent Q networks on ``concat(obs, action)``, run as
  one ``nn.vmap`` over a leading ensemble axis of their parameters (one batched
  matmul per layer): ``(obs [..., o], action [..., d]) -> [2, ...]``.
* ``TanhGaussianActor`` (SAC): ``u ~ N(mean(s), std(s))``, ``a = tanh(u)``, with
  ``log_prob`` corrected for the squash (``tanh_gaussian_log_prob``).
* ``DeterministicActor`` (TD3): ``a = tanh(MLP(s))``.

The losses are small functions on *one* example (rlax style: the caller
``vmap``s them over the batch and takes the mean), opening with chex shape
checks; each docstring gives the formula and the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from convergence_jax.rl.networks import ACTIVATIONS

__all__ = [
    "LOG_STD_MAX",
    "LOG_STD_MIN",
    "DenseMLP",
    "DeterministicActor",
    "QCritic",
    "TanhGaussianActor",
    "TwinQCritic",
    "sac_actor_loss",
    "sac_critic_loss",
    "sac_temperature_loss",
    "tanh_gaussian_log_prob",
    "td3_actor_loss",
    "td3_critic_loss",
    "td3_target_action",
]

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
"""Bounds of the actor's log standard deviation (clipped)."""


# ------------------------------------------------------------------ networks


class DenseMLP(nn.Module):
    """Dense layers with flax's default initializers (LeCun-normal weights, zero
    biases), as rejax, Stable-Baselines3 and CleanRL initialize SAC and TD3
    networks (no orthogonal init, unlike ``rl.networks.MLP`` for PPO)."""

    hidden_sizes: Sequence[int]
    out_size: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for size in self.hidden_sizes:
            x = act(nn.Dense(size)(x))
        return nn.Dense(self.out_size)(x)


class QCritic(nn.Module):
    """``(obs [..., o], action [..., d]) -> Q(s, a) [...]`` on the concatenation."""

    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], -1)
        return DenseMLP(self.hidden_sizes, 1, self.activation)(x)[..., 0]


class TwinQCritic(nn.Module):
    """Two independent critics (clipped double Q, Fujimoto et al. 2018):
    ``(obs, action) -> [2, ...]``. Parameters carry a leading axis of size 2."""

    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs, action):
        ensemble = nn.vmap(
            QCritic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=2,
        )
        return ensemble(self.hidden_sizes, self.activation)(obs, action)


def tanh_gaussian_log_prob(
    mean: jax.Array, log_std: jax.Array, pre_tanh: jax.Array
) -> jax.Array:
    """``log pi(a)`` of ``a = tanh(u)``, ``u ~ N(mean, exp(log_std)^2)`` (diagonal).

    Change of variables (Haarnoja et al. 2018, "Soft Actor-Critic", appendix C,
    eq. 21): ``log pi(a) = sum_d [log N(u_d; mean_d, std_d) - log(1 - tanh(u_d)^2)]``,
    with the correction in the stable form ``log(1 - tanh(u)^2) =
    2 (log 2 - u - softplus(-2u))`` (exact; no ``+ 1e-6`` inside a log).

    Shapes: ``[..., d]`` each -> ``[...]``. The density is of the unit-box action;
    the affine map into the environment's box adds a constant, which the
    temperature's target entropy absorbs.
    """
    chex.assert_equal_shape([mean, log_std, pre_tanh])
    std = jnp.exp(log_std)
    log_normal = -0.5 * (
        jnp.square((pre_tanh - mean) / std) + 2.0 * log_std + jnp.log(2.0 * jnp.pi)
    )
    log_det = 2.0 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))
    return jnp.sum(log_normal - log_det, -1)


class TanhGaussianActor(nn.Module):
    """SAC's policy: ``u ~ N(mean(s), diag(std(s)^2))``, ``a = tanh(u)`` in (-1, 1).

    ``__call__(obs) -> (mean, log_std)`` (log_std clipped to [LOG_STD_MIN,
    LOG_STD_MAX]); ``sample(obs, key) -> (action, log_prob, pre_tanh)`` with a
    reparameterized sample (gradients flow through it), or
    ``sample_from_noise(obs, noise)`` with the standard normal draws given;
    ``log_prob(obs, action)`` of actions in (-1, 1) (through ``atanh``);
    ``mode(obs) = tanh(mean)``.
    """

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        out = DenseMLP(self.hidden_sizes, 2 * self.action_dim, self.activation)(obs)
        mean, log_std = jnp.split(out, 2, -1)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs, key):
        return self.sample_from_noise(
            obs, jax.random.normal(key, obs.shape[:-1] + (self.action_dim,))
        )

    def sample_from_noise(self, obs, noise):
        """``sample`` with the standard normal draws given (``[..., d]``)."""
        mean, log_std = self(obs)
        pre_tanh = mean + jnp.exp(log_std) * noise
        log_prob = tanh_gaussian_log_prob(mean, log_std, pre_tanh)
        return jnp.tanh(pre_tanh), log_prob, pre_tanh

    def log_prob(self, obs, action):
        mean, log_std = self(obs)
        return tanh_gaussian_log_prob(mean, log_std, jnp.arctanh(action))

    def mode(self, obs):
        return jnp.tanh(self(obs)[0])


class DeterministicActor(nn.Module):
    """TD3's policy: ``obs -> tanh(MLP(obs))`` in [-1, 1]^d."""

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        return jnp.tanh(
            DenseMLP(self.hidden_sizes, self.action_dim, self.activation)(obs)
        )


# ------------------------------------------------------------------ SAC losses


def sac_critic_loss(
    q: jax.Array,
    reward: jax.Array,
    discount: jax.Array,
    next_q_target: jax.Array,
    next_log_prob: jax.Array,
    alpha: jax.Array,
) -> jax.Array:
    """Soft Bellman error of twin critics on one transition (Haarnoja et al. 2018,
    eq. 5, with the clipped double Q of Fujimoto et al. 2018; "Soft Actor-Critic
    Algorithms and Applications", Haarnoja et al. 2018b, eqs. 6-7):

        y    = r + discount * (min_i Q'_i(s', a') - alpha * log pi(a' | s')),
               a' ~ pi(. | s')
        loss = sum_i 0.5 * (Q_i(s, a) - sg(y))^2

    Shapes: ``q [2]`` (both critics at (s, a)), ``reward []``, ``discount []``
    (``gamma * (1 - terminated)``: 0 at a termination, gamma at a truncation, which
    bootstraps), ``next_q_target [2]`` (target critics at (s', a')),
    ``next_log_prob []``, ``alpha []`` -> ``[]``.
    """
    chex.assert_shape([q, next_q_target], (2,))
    chex.assert_rank([reward, discount, next_log_prob, alpha], 0)
    soft_value = jnp.min(next_q_target) - alpha * next_log_prob
    target = jax.lax.stop_gradient(reward + discount * soft_value)
    return 0.5 * jnp.sum(jnp.square(q - target))


def sac_actor_loss(q: jax.Array, log_prob: jax.Array, alpha: jax.Array) -> jax.Array:
    """SAC's policy loss on one state (Haarnoja et al. 2018, eq. 12, with the
    minimum of the twin critics as in Haarnoja et al. 2018b):

        loss = alpha * log pi(a | s) - min_i Q_i(s, a),  a = tanh(u) reparameterized

    Shapes: ``q [2]`` (critics at the sampled action), ``log_prob []``, ``alpha []``
    (held fixed by the caller) -> ``[]``.
    """
    chex.assert_shape(q, (2,))
    chex.assert_rank([log_prob, alpha], 0)
    return alpha * log_prob - jnp.min(q)


def sac_temperature_loss(
    log_alpha: jax.Array, log_prob: jax.Array, target_entropy: jax.Array
) -> jax.Array:
    """Automatic entropy tuning on one state (Haarnoja et al. 2018b, eq. 18):

        loss = -alpha * sg(log pi(a | s) + target_entropy),  alpha = exp(log_alpha)

    (optimized over ``log_alpha`` so alpha stays positive): alpha grows while the
    policy's entropy ``-log pi`` is below ``target_entropy`` (``-action_dim`` by
    default) and shrinks while it is above. Shapes: all ``[]`` -> ``[]``.
    """
    chex.assert_rank([log_alpha, log_prob, target_entropy], 0)
    return -jnp.exp(log_alpha) * jax.lax.stop_gradient(log_prob + target_entropy)


# ------------------------------------------------------------------ TD3 losses


def td3_target_action(
    next_action: jax.Array,
    noise: jax.Array,
    noise_clip: jax.Array,
) -> jax.Array:
    """Target policy smoothing (Fujimoto et al. 2018, "Addressing Function
    Approximation Error in Actor-Critic Methods", eq. 14):

        a' = clip(mu'(s') + clip(noise, -c, c), -1, 1),  noise ~ N(0, sigma^2)

    Shapes: ``next_action [d]`` (the target actor at s', in [-1, 1]),
    ``noise [d]`` (already scaled by sigma), ``noise_clip []`` -> ``[d]``.
    """
    chex.assert_rank(next_action, 1)
    chex.assert_equal_shape([next_action, noise])
    chex.assert_rank(noise_clip, 0)
    return jnp.clip(next_action + jnp.clip(noise, -noise_clip, noise_clip), -1.0, 1.0)


def td3_critic_loss(
    q: jax.Array,
    reward: jax.Array,
    discount: jax.Array,
    next_q_target: jax.Array,
) -> jax.Array:
    """Clipped double-Q Bellman error on one transition (Fujimoto et al. 2018,
    eq. 10 / Algorithm 1):

        y    = r + discount * min_i Q'_i(s', a'),  a' = td3_target_action(...)
        loss = sum_i 0.5 * (Q_i(s, a) - sg(y))^2

    Shapes: ``q [2]``, ``reward []``, ``discount []`` (``gamma * (1 -
    terminated)``), ``next_q_target [2]`` (target critics at the smoothed target
    action) -> ``[]``.
    """
    chex.assert_shape([q, next_q_target], (2,))
    chex.assert_rank([reward, discount], 0)
    target = jax.lax.stop_gradient(reward + discount * jnp.min(next_q_target))
    return 0.5 * jnp.sum(jnp.square(q - target))


def td3_actor_loss(q1: jax.Array) -> jax.Array:
    """Deterministic policy gradient through the first critic (Fujimoto et al.
    2018, Algorithm 1; Silver et al. 2014): ``loss = -Q_1(s, mu(s))``.

    Shapes: ``q1 []`` -> ``[]``.
    """
    chex.assert_rank(q1, 0)
    return -q1
