"""Behaviour cloning (BC): maximum likelihood of the dataset's actions.

    data = offline.check_data(data, obs_dim, spec)          # host-side validation
    bc = make_bc(BCConfig(num_steps=10_000), obs_dim, spec)
    state, metrics = jax.jit(bc.train)(key, data)          # metrics: [num_steps]
    act = functools.partial(bc.policy, state)               # act(obs [B, d], key)

Discrete actions: cross-entropy of a categorical policy (greedy at evaluation).
Continuous actions: a *deterministic* tanh policy fitted by mean squared error on
actions scaled to [-1, 1] (the MLE of a fixed-variance Gaussian; CORL's
``any_percent_bc`` and TD3+BC's BC term do the same).
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
from convergence_jax.offline.networks import DeterministicActor, LogitsNet

__all__ = [
    "BC",
    "BCConfig",
    "BCHParams",
    "BCState",
    "bc_discrete_loss",
    "bc_mse_loss",
    "make_bc",
]


def bc_discrete_loss(logits: jax.Array, actions: jax.Array) -> jax.Array:
    """Cross-entropy ``-mean_i log softmax(logits_i)[a_i]``.

    Args: ``logits [B, A]``, ``actions [B]`` int. Returns a scalar.
    """
    chex.assert_rank([logits, actions], [2, 1])
    chex.assert_equal_shape_prefix([logits, actions], 1)
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, actions[:, None], 1))


def bc_mse_loss(predicted: jax.Array, actions: jax.Array) -> jax.Array:
    """``mean_{i,d} (pi(s_i)_d - a_{i,d})^2`` over ``[B, d]`` actions."""
    chex.assert_rank([predicted, actions], 2)
    chex.assert_equal_shape([predicted, actions])
    return jnp.mean(jnp.square(predicted - actions))


@dataclass(frozen=True)
class BCConfig:
    """A BC run: sizes (static) and default numbers."""

    num_steps: int = 10_000
    """Gradient updates."""
    batch_size: int = 256
    """Global minibatch size (split over devices)."""
    num_devices: int = 1
    """Devices to split every minibatch over (data parallel)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the policy."""
    activation: str = "relu"
    """Hidden activation."""
    normalize_obs: bool = True
    """Normalize observations by the dataset's mean and std."""
    learning_rate: float = 3e-4
    """Adam step size."""


@struct.dataclass
class BCHParams:
    learning_rate: jax.Array


@struct.dataclass
class BCState:
    params: Any
    opt_state: Any
    obs_norm: ObsNorm
    key: jax.Array
    step: jax.Array


class BC(NamedTuple):
    config: BCConfig
    spec: ActionSpec
    default_hparams: BCHParams
    init: Callable[..., BCState]
    """``init(key, data, hparams=None) -> BCState``."""
    update: Callable
    """``update(state, data, hparams) -> (state, metrics)``."""
    run: Callable
    """``run(state, data, hparams=None, num_steps=1) -> (state, metrics)``."""
    policy: Callable
    """``policy(state, obs [B, obs_dim], key) -> environment actions``."""
    train: Callable
    """``train(key, data, hparams=None) -> (state, metrics)``."""


def make_bc(config: BCConfig, obs_dim: int, action_spec: ActionSpec) -> BC:
    """Build the BC program; validates the config and the spec first."""
    _common.check_config(config, "BCConfig")
    _common.check_numbers(config, "BCConfig", positive=("learning_rate",))
    _common.check_spec(obs_dim, action_spec, "make_bc")
    spec = action_spec
    if spec.discrete:
        net = LogitsNet(spec.num_actions, config.hidden_sizes, config.activation)
    else:
        net = DeterministicActor(
            spec.action_dim, config.hidden_sizes, config.activation
        )
    tx = optax.scale_by_adam()
    dp = _common.DataParallel(config.num_devices > 1)
    default_hparams = _common.hparams_from_config(BCHParams, config)

    def init(key, data, hparams=None):
        k_net, k_state = jax.random.split(key)
        params = net.init(k_net, jnp.zeros((1, obs_dim)))
        return BCState(
            params=params,
            opt_state=tx.init(params),
            obs_norm=_common.obs_norm_from_data(data, config.normalize_obs),
            key=k_state,
            step=jnp.zeros((), jnp.int32),
        )

    def loss_fn(params, batch):
        out = net.apply(params, batch.observations)
        if spec.discrete:
            return bc_discrete_loss(out, batch.actions)
        return bc_mse_loss(out, batch.actions)

    def update_local(state, batch, keys, hparams):
        loss, grads = dp.value_and_grad(loss_fn)(state.params, batch)
        params, opt_state = _common.adam_step(
            tx, grads, state.opt_state, state.params, hparams.learning_rate
        )
        return state.replace(params=params, opt_state=opt_state), {"loss": loss}

    update = _common.make_update(config, update_local, spec)
    run = _common.make_run(update, default_hparams)

    def policy(state, obs, key=None):
        out = net.apply(state.params, state.obs_norm(obs.astype(jnp.float32)))
        if spec.discrete:
            return jnp.argmax(out, -1)
        return spec.from_unit(out)

    train = _common.make_train(init, run, config, default_hparams, obs_dim, spec)
    return BC(config, spec, default_hparams, init, update, run, policy, train)
