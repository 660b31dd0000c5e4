"""Small flax networks of the offline algorithms (all on ``rl.networks.MLP``, PPO's
orthogonal initialization; ``rl.continuous``'s SAC / TD3 networks use flax's default
one, as rejax does, for the side-by-side with it). The squashed-Gaussian density is
``rl.continuous.tanh_gaussian_log_prob``, re-exported here.

Continuous actions live in [-1, 1]^d here (``ActionSpec.to_unit``). Every module
works on one example or a batch (leading axes are kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from convergence_jax.rl.continuous import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    tanh_gaussian_log_prob,
)
from convergence_jax.rl.networks import MLP

__all__ = [
    "Critic",
    "DeterministicActor",
    "GaussianActor",
    "LogitsNet",
    "TanhGaussianActor",
    "TwinCritic",
    "TwinLogitsNet",
    "ValueNet",
    "tanh_gaussian_log_prob",
]


class LogitsNet(nn.Module):
    """``obs [..., obs_dim] -> [..., num_actions]`` (Q values or logits)."""

    num_actions: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        return MLP(self.hidden_sizes, self.num_actions, self.activation, 1.0)(obs)


class ValueNet(nn.Module):
    """``obs -> V(s) [...]``."""

    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        return MLP(self.hidden_sizes, 1, self.activation, 1.0)(obs)[..., 0]


class Critic(nn.Module):
    """``(obs, action) -> Q(s, a) [...]`` on the concatenation."""

    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], -1)
        return MLP(self.hidden_sizes, 1, self.activation, 1.0)(x)[..., 0]


class TwinCritic(nn.Module):
    """Two independent critics: ``(obs, action) -> [2, ...]`` (clipped double Q)."""

    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs, action):
        return jnp.stack(
            [Critic(self.hidden_sizes, self.activation)(obs, action) for _ in range(2)]
        )


class DeterministicActor(nn.Module):
    """``obs -> tanh(MLP(obs))`` in [-1, 1]^d (TD3, TD3+BC)."""

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        return jnp.tanh(
            MLP(self.hidden_sizes, self.action_dim, self.activation, 0.01)(obs)
        )


class TanhGaussianActor(nn.Module):
    """SAC's policy: ``u ~ N(mean(s), std(s))``, ``a = tanh(u)``.

    ``__call__(obs) -> (mean, log_std)`` (log_std clipped to [-5, 2]);
    ``sample(obs, key) -> (action, log_prob, pre_tanh)``; ``log_prob(obs, action)``
    of actions in (-1, 1) (through ``atanh``); ``mode(obs) = tanh(mean)``.
    """

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        out = MLP(self.hidden_sizes, 2 * self.action_dim, self.activation, 0.01)(obs)
        mean, log_std = jnp.split(out, 2, -1)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs, key):
        mean, log_std = self(obs)
        pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
        log_prob = tanh_gaussian_log_prob(mean, log_std, pre_tanh)
        return jnp.tanh(pre_tanh), log_prob, pre_tanh

    def log_prob(self, obs, action):
        mean, log_std = self(obs)
        return tanh_gaussian_log_prob(mean, log_std, jnp.arctanh(action))

    def mode(self, obs):
        return jnp.tanh(self(obs)[0])


class GaussianActor(nn.Module):
    """IQL's policy (Kostrikov et al. 2022; CORL's ``GaussianPolicy``):
    ``N(tanh(MLP(s)), exp(log_std))`` with a state-independent ``log_std``
    (clipped to [-5, 2]); ``mode`` is the mean (in [-1, 1]).

    ``__call__(obs) -> (mean, log_std)``; ``log_prob(obs, action)``.
    """

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        mean = jnp.tanh(
            MLP(self.hidden_sizes, self.action_dim, self.activation, 0.01)(obs)
        )
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        log_std = jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
        return mean, jnp.broadcast_to(log_std, mean.shape)

    def log_prob(self, obs, action):
        mean, log_std = self(obs)
        std = jnp.exp(log_std)
        return jnp.sum(
            -0.5 * (((action - mean) / std) ** 2 + 2 * log_std + jnp.log(2 * jnp.pi)),
            -1,
        )

    def mode(self, obs):
        return self(obs)[0]


class TwinLogitsNet(nn.Module):
    """Two independent discrete Q networks: ``obs -> [2, ..., num_actions]``."""

    num_actions: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        return jnp.stack(
            [
                LogitsNet(self.num_actions, self.hidden_sizes, self.activation)(obs)
                for _ in range(2)
            ]
        )
