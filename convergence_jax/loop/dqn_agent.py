"""Jitted DQN (``convergence_jax.rl.dqn``) behind the loop's six-method protocol."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from convergence_jax.loop.agent import JaxPolicy, _shared_writer
from convergence_jax.rl.dqn import DQN, DQNConfig, DQNHParams, make_dqn

__all__ = ["DQNAgent"]


class _CompiledDQN(NamedTuple):
    dqn: DQN
    policy: Any
    """``policy((params, epsilon), obs, key) -> actions``, pure."""
    init: Any
    act: Any
    learn: Any
    exploration: Any
    q_values: Any


_COMPILED: dict[str, _CompiledDQN] = {}


def _compiled(config: DQNConfig) -> _CompiledDQN:
    """One set of jitted functions per configuration, shared by its agents."""
    cache_key = repr(config)
    if cache_key not in _COMPILED:
        dqn = make_dqn(config)

        def policy(params, obs, key):
            network_params, epsilon = params
            return dqn.policy(network_params, obs, key, epsilon)

        _COMPILED[cache_key] = _CompiledDQN(
            dqn=dqn,
            policy=policy,
            init=jax.jit(dqn.init),
            act=jax.jit(policy),
            learn=jax.jit(dqn.learn_batch),
            exploration=jax.jit(dqn.exploration),
            q_values=jax.jit(dqn.q_values),
        )
    return _COMPILED[cache_key]


class DQNAgent:
    """DQN for the loop: ``act`` is epsilon-greedy with the run's schedule (uniform
    before ``learning_starts``), ``learn(window)`` puts a ``BatchPipeline``
    window (``num_envs = config.num_envs``, ``window_steps =
    config.rollout_steps``) into the replay buffer and takes the update's
    gradient steps and target update (``DQN.learn_batch``). Hyperparameters are
    ``DQNHParams`` arrays, so ``set_hyperparams`` never recompiles. Weights
    (online and target parameters, optimizer state) are saved with orbax in the
    background; the replay buffer is not part of them (a variant that loads
    weights refills its own buffer).
    """

    def __init__(self, config: DQNConfig, seed: int = 0, **hyperparams: float):
        self.config = config
        self._compiled = _compiled(config)
        self.dqn = self._compiled.dqn
        self.hparams = self.dqn.default_hparams
        if hyperparams:
            self.set_hyperparams(hyperparams)
        self._key, init_key = jax.random.split(jax.random.key(seed))
        self.state = self._compiled.init(init_key, self.hparams)
        self._writer = _shared_writer()

    def act(self, observation):
        self._key, key = jax.random.split(self._key)
        params = self.jax_policy().params
        return np.asarray(self._compiled.act(params, jnp.asarray(observation), key))

    def learn(self, episode_data) -> dict[str, float]:
        batch = {
            "obs": episode_data.observations,
            "action": episode_data.actions,
            "reward": episode_data.rewards,
            "terminated": episode_data.terminated,
            "truncated": episode_data.truncated,
            "final_obs": episode_data.final_observations,
        }
        self.state, metrics = self._compiled.learn(self.state, batch, self.hparams)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}

    def get_hyperparams(self) -> dict[str, float]:
        return {
            name: float(getattr(self.hparams, name))
            for name in DQNHParams.__dataclass_fields__
        }

    def set_hyperparams(self, hyperparams: dict[str, float]) -> None:
        unknown = set(hyperparams) - set(DQNHParams.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"DQNAgent.set_hyperparams: unknown {sorted(unknown)}; known: "
                f"{sorted(DQNHParams.__dataclass_fields__)}"
            )
        self.hparams = self.hparams.replace(
            **{k: jnp.asarray(v, jnp.float32) for k, v in hyperparams.items()}
        )

    def save_weights(self, path) -> None:
        """Asynchronous (orbax): returns once the weights are in host memory."""
        self._writer.save(path, self._weights())

    def load_weights(self, path) -> None:
        weights = self._writer.restore(path, like=self._weights())
        self.state = self.state.replace(**weights)

    def wait_until_saved(self) -> None:
        self._writer.wait()

    def jax_policy(self) -> JaxPolicy:
        """Epsilon-greedy ``apply((params, epsilon), obs, key)`` at the current
        point of the schedule, for compiled pipelines."""
        epsilon = self._compiled.exploration(self.state, self.hparams)
        return JaxPolicy(
            apply=self._compiled.policy, params=(self.state.params, epsilon)
        )

    def q_values(self, observation) -> np.ndarray:
        obs = jnp.asarray(observation, jnp.float32)
        return np.asarray(self._compiled.q_values(self.state.params, obs))

    def _weights(self) -> dict:
        return {
            "params": self.state.params,
            "target_params": self.state.target_params,
            "opt_state": self.state.opt_state,
        }
