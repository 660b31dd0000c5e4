"""The agent protocol of the loop, and the adapter that makes jitted PPO an agent.

The loop talks to an agent through exactly six methods and needs no JAX from it
(the tests drive the loop with a plain-Python agent). A JAX agent may also offer
``jax_policy()``: a pure ``apply(params, obs, key)`` and its current parameters,
which lets ``BatchPipeline`` compile a whole window of acting into one
``lax.scan`` instead of calling ``act`` once per step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from convergence_jax import checkpoint
from convergence_jax.rl.ppo import PPO, PPOConfig, PPOHParams, _normalize, make_ppo

__all__ = ["Agent", "JaxPolicy", "PPOAgent", "check_agent"]

AGENT_METHODS = (
    "act",
    "learn",
    "get_hyperparams",
    "set_hyperparams",
    "save_weights",
    "load_weights",
)


@runtime_checkable
class Agent(Protocol):
    """What the loop needs from an agent: six methods, nothing else."""

    def act(self, observation: Any) -> Any:
        """Actions for a batch of observations ``[num_envs, ...]``."""

    def learn(self, episode_data: Any) -> dict[str, float]:
        """Learn from one window of experience; returns metrics."""

    def get_hyperparams(self) -> dict[str, float]: ...

    def set_hyperparams(self, hyperparams: dict[str, float]) -> None: ...

    def save_weights(self, path: str | Path) -> None: ...

    def load_weights(self, path: str | Path) -> None: ...


def check_agent(agent: Any) -> None:
    """Raise a ``TypeError`` naming the protocol methods ``agent`` lacks."""
    missing = [m for m in AGENT_METHODS if not callable(getattr(agent, m, None))]
    if missing:
        raise TypeError(
            f"{type(agent).__name__} is not an Agent: missing {', '.join(missing)} "
            f"(the loop needs {', '.join(AGENT_METHODS)})"
        )


class JaxPolicy(NamedTuple):
    """A pure policy: ``apply(params, obs [B, ...], key) -> actions [B, ...]``.

    ``to_env``, when given, maps what ``apply`` returns (the policy's own samples,
    which learning needs) to environment actions, e.g. the squash of continuous
    actions into the action box; pipelines then record both. None: ``apply``
    returns environment actions."""

    apply: Callable[..., jax.Array]
    params: Any
    to_env: Callable[[jax.Array], jax.Array] | None = None


class _CompiledPPO(NamedTuple):
    ppo: PPO
    policy: Callable
    """``policy((params, obs_stats), obs, key) -> env actions``, pure."""
    policy_action: Callable
    """``policy_action((params, obs_stats), obs, key) -> policy samples``, pure."""
    probs: Callable
    """``probs((params, obs_stats), obs) -> [B, num_actions]``, pure."""
    init: Callable
    act: Callable
    learn: Callable
    jit_probs: Callable


_COMPILED: dict[str, _CompiledPPO] = {}


def _compiled(config: PPOConfig) -> _CompiledPPO:
    """One set of jitted functions per configuration, shared by every agent built
    from it (spawned variants and ensemble members reuse the compiled programs)."""
    cache_key = repr(config)
    if cache_key not in _COMPILED:
        ppo = make_ppo(config)

        def policy(params, obs, key):
            network_params, obs_stats = params
            return ppo.policy(network_params, obs_stats, obs, key)

        def policy_action(params, obs, key):
            network_params, obs_stats = params
            return ppo.policy_action(network_params, obs_stats, obs, key)

        def probs(params, obs):
            network_params, obs_stats = params
            obs = jnp.asarray(obs, jnp.float32).reshape(obs.shape[0], -1)
            obs = _normalize(obs, obs_stats, config.normalize_obs)
            return ppo.network.apply(network_params, obs)[0].probs

        _COMPILED[cache_key] = _CompiledPPO(
            ppo=ppo,
            policy=policy,
            policy_action=policy_action,
            probs=probs,
            init=jax.jit(ppo.init),
            act=jax.jit(policy),
            learn=jax.jit(ppo.learn_batch),
            jit_probs=jax.jit(probs),
        )
    return _COMPILED[cache_key]


_WRITER: list[checkpoint.AsyncTreeWriter] = []


def _shared_writer() -> checkpoint.AsyncTreeWriter:
    """One background writer for every agent, so that reading a snapshot waits
    for a write started by any agent (a variant loads its parent's weights)."""
    if not _WRITER:
        _WRITER.append(checkpoint.AsyncTreeWriter())
    return _WRITER[0]


class PPOAgent:
    """Jitted PPO (``convergence_jax.rl``) behind the six-method protocol.

    ``learn(window)`` is one compiled PPO update (GAE, ``update_epochs`` passes of
    minibatches) on the window's rollout, which a ``BatchPipeline`` with
    ``num_envs = config.num_envs`` and ``window_steps = config.num_steps``
    collected with the current parameters. Hyperparameters are ``PPOHParams``
    arrays, so ``set_hyperparams`` never recompiles. Weights (parameters,
    optimizer state, observation statistics) are saved with orbax, in the
    background (``wait_until_saved`` blocks until they are on disk). The update
    counter is the agent's own: with ``anneal_lr`` the learning rate decays over
    ``config.total_timesteps`` (a schedule horizon, not a stopping rule), and an
    agent that loads weights keeps its place in its schedule — a spawned variant
    (a fresh agent) starts its schedule anew, a warm restart.
    """

    def __init__(self, config: PPOConfig, seed: int = 0, **hyperparams: float):
        self.config = config
        self._compiled = _compiled(config)
        self.ppo = self._compiled.ppo
        self.hparams = self.ppo.default_hparams
        if hyperparams:
            self.set_hyperparams(hyperparams)
        self._key = jax.random.key(seed)
        self._key, init_key = jax.random.split(self._key)
        self.state = self._compiled.init(init_key, self.hparams)
        self._writer = _shared_writer()

    # -- the six methods ------------------------------------------------------

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
        if getattr(episode_data, "policy_actions", None) is not None:
            batch["policy_action"] = episode_data.policy_actions
        self.state, metrics = self._compiled.learn(self.state, batch, self.hparams)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}

    def get_hyperparams(self) -> dict[str, float]:
        return {
            name: float(getattr(self.hparams, name))
            for name in PPOHParams.__dataclass_fields__
        }

    def set_hyperparams(self, hyperparams: dict[str, float]) -> None:
        unknown = set(hyperparams) - set(PPOHParams.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"PPOAgent.set_hyperparams: unknown {sorted(unknown)}; known: "
                f"{sorted(PPOHParams.__dataclass_fields__)}"
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
        """Block until every ``save_weights`` is on disk."""
        self._writer.wait()

    # -- for pipelines and ensembles -----------------------------------------

    def jax_policy(self) -> JaxPolicy:
        """The policy's samples (``apply``) and, for continuous actions, their map
        into the action box (``to_env``), so that ``learn`` gets the samples."""
        ppo = self._compiled.ppo
        return JaxPolicy(
            apply=self._compiled.policy_action,
            params=(self.state.params, self.state.obs_stats),
            to_env=ppo.to_env_action if ppo.network.continuous else None,
        )

    def action_probabilities(self, observation) -> np.ndarray:
        """Discrete actions: the policy's probabilities ``[B, num_actions]``."""
        params = (self.state.params, self.state.obs_stats)
        return np.asarray(self._compiled.jit_probs(params, jnp.asarray(observation)))

    def jax_action_probabilities(self) -> JaxPolicy:
        """Discrete actions: pure ``probs(params, obs)`` and the current params."""
        return JaxPolicy(
            apply=self._compiled.probs,
            params=(self.state.params, self.state.obs_stats),
        )

    def _weights(self) -> dict:
        return {
            "params": self.state.params,
            "opt_state": self.state.opt_state,
            "obs_stats": self.state.obs_stats,
        }
