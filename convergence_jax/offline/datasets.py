"""D4RL-style offline datasets collected in-process from gymnax, saved and loaded
in the Minari format or read from a D4RL HDF5 file.

    datasets = collect_datasets(jax.random.key(0), "CartPole-v1")
    medium = datasets["medium"]              # an OfflineDataset
    medium.transitions                       # offline.Transitions (flat, D4RL layout)
    medium.normalized_score                  # of its own episodes: random 0, expert 100
    path = save_minari(medium, "datasets/")  # datasets/<dataset_id>/data/...
    same = load_minari(path)
    user = load_d4rl_hdf5("hopper.hdf5", env_id=None, random_return=..., ...)

**How the datasets are made** (D4RL's recipe, with the project's own PPO in place
of SAC): one PPO run (``convergence_jax.rl.ppo``) trains a behaviour policy on
the environment, in chunks of ``eval_every`` updates; after every chunk the
policy is evaluated (``evaluate_policy``, ``eval_episodes`` episodes, the
stochastic policy, as it collects). Every rollout PPO collects and learns from
is kept: the run steps its environments itself with ``ppo.policy_action`` and
hands each rollout to ``ppo.learn_batch``, which is exactly PPO's update on that
rollout. After the run:

* **random**: uniform random actions (the reference ``random_return`` is this
  policy's mean return over ``reference_episodes`` episodes). D4RL's random
  datasets come from a randomly *initialized* policy; uniform actions are the
  policy the normalized score's 0 stands for, so we use them for both.
* **expert**: the best checkpoint of the run (highest evaluated return; the
  latest on ties), rolled out for ``num_transitions`` steps. ``expert_return``
  is its mean return over ``reference_episodes`` fresh episodes.
* **medium**: the first checkpoint whose evaluated normalized score lies in
  ``medium_band`` (default 1/3 .. 1/2 of the way from random to expert, as D4RL's
  medium policies are trained to about a third of the expert's return); if no
  checkpoint lands in the band, the one closest to the band's middle
  (``metadata["medium_in_band"]`` says which happened).
* **medium-replay**: every transition the PPO run collected (and trained on)
  from its start up to the medium checkpoint: the replay of the medium policy's
  training run. This is the true on-policy training stream, not a re-collection.
* **medium-expert**: medium and expert concatenated (D4RL does the same).

Rollouts run ``num_envs`` environments side by side; each environment's steps
are stored contiguously and its trailing unfinished episode is dropped, so every
episode in a dataset is complete (a dataset may therefore hold a few hundred
fewer transitions than ``num_transitions``; ``transitions.size`` is exact).
Terminals (``terminated``) and timeouts (the environment's time limit) are kept
apart; ``next_observations`` are the true next observations (gymnax's
``final_observation`` at an episode's end, not the reset). Everything is
deterministic given the key.

**On disk.** ``save_minari`` / ``load_minari`` write and read the Minari format
(``<root>/<dataset_id>/data/main_data.hdf5`` + ``metadata.json``) through the
``minari`` package (``pip install 'convergence_jax[offline]'``): one group per
episode with ``T + 1`` observations, actions, rewards, terminations and
truncations; the reference returns are Minari's ``ref_min_score`` /
``ref_max_score`` (so ``minari.get_normalized_score`` works on them, as a
fraction), and our own record (env id, kind, episode returns, how it was
collected) is stored under the metadata key ``"convergence_jax"``.
``load_d4rl_hdf5`` reads a D4RL-layout HDF5 file (``observations, actions,
rewards, terminals`` and optionally ``timeouts, next_observations``) with
``h5py``; ``save_d4rl_hdf5`` writes one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces as gym_spaces

from convergence_jax.offline.dataset import (
    Transitions,
    check_transitions,
    episode_returns,
)
from convergence_jax.offline.evaluate import (
    evaluate_policy,
    make_env,
    normalized_score,
)
from convergence_jax.rl import ppo as ppo_lib
from convergence_jax.rl.ppo import PPOConfig

__all__ = [
    "KINDS",
    "PPO_PRESETS",
    "CollectConfig",
    "OfflineDataset",
    "collect_datasets",
    "collect_dataset",
    "make_dataset",
    "rollout_transitions",
    "dataset_id",
    "save_minari",
    "load_minari",
    "save_d4rl_hdf5",
    "load_d4rl_hdf5",
]

KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
"""The D4RL dataset kinds ``collect_datasets`` makes."""

# PPO settings that learn each environment (CartPole: benchmarks/ppo_cartpole.py;
# Pendulum: benchmarks/results/ppo_pendulum's settings, final return -169 over 4
# seeds after 2M steps).
PPO_PRESETS: dict[str, PPOConfig] = {
    "CartPole-v1": PPOConfig(
        env_id="CartPole-v1",
        total_timesteps=500_000,
        num_envs=16,
        num_steps=128,
        update_epochs=4,
        num_minibatches=4,
        learning_rate=2.5e-4,
        ent_coef=0.01,
    ),
    "Acrobot-v1": PPOConfig(
        env_id="Acrobot-v1",
        total_timesteps=500_000,
        num_envs=16,
        num_steps=128,
        update_epochs=4,
        num_minibatches=4,
        learning_rate=2.5e-4,
        ent_coef=0.01,
        normalize_obs=True,
    ),
    "Pendulum-v1": PPOConfig(
        env_id="Pendulum-v1",
        # benchmarks/results/ppo_pendulum plateaus at about -170 after ~300k steps.
        total_timesteps=600_000,
        num_envs=16,
        num_steps=256,
        update_epochs=10,
        num_minibatches=8,
        learning_rate=1e-3,
        gamma=0.9,
        ent_coef=0.0,
        reward_scale=0.1,
        normalize_obs=True,
    ),
}


@dataclass(frozen=True)
class CollectConfig:
    """How ``collect_datasets`` trains the behaviour policy and collects."""

    ppo: PPOConfig | None = None
    """The behaviour policy's PPO run; None: ``PPO_PRESETS[env_id]``."""
    num_transitions: int = 100_000
    """Collection budget of the random, medium and expert datasets (each)."""
    num_envs: int = 16
    """Environments stepped side by side while collecting."""
    eval_every: int = 4
    """PPO updates between two evaluated checkpoints."""
    eval_episodes: int = 32
    """Episodes per checkpoint evaluation."""
    reference_episodes: int = 100
    """Episodes for the random and expert reference returns."""
    medium_band: tuple[float, float] = (1 / 3, 1 / 2)
    """The medium policy's normalized score range, as fractions of expert."""
    max_replay_transitions: int | None = None
    """Keep at most this many medium-replay transitions (the latest); None: all."""


@dataclass(frozen=True)
class OfflineDataset:
    """An offline dataset with what its normalized score needs."""

    name: str
    """e.g. ``cartpole-medium-v0``."""
    env_id: str
    """The gymnax environment it came from."""
    kind: str
    """random, medium, medium-replay, expert, medium-expert, or what a loader
    found (e.g. ``d4rl``)."""
    transitions: Transitions
    random_return: float | None
    """Mean return of the random policy (normalized score 0)."""
    expert_return: float | None
    """Mean return of the expert policy (normalized score 100)."""
    episode_returns: np.ndarray = field(repr=False)
    """Undiscounted return of every complete episode in ``transitions``."""
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return self.transitions.size

    @property
    def num_episodes(self) -> int:
        return int(self.episode_returns.shape[0])

    def score(self, returns) -> float:
        """The normalized score of ``returns`` (e.g. an evaluated policy's)."""
        if self.random_return is None or self.expert_return is None:
            raise ValueError(
                f"{self.name}: no reference returns (random_return / expert_return) "
                "to normalize with"
            )
        return normalized_score(returns, self.random_return, self.expert_return)

    @property
    def normalized_score(self) -> float | None:
        """The normalized score of the dataset's own episodes (None without
        reference returns or episodes)."""
        if (
            self.random_return is None
            or self.expert_return is None
            or self.num_episodes == 0
        ):
            return None
        return self.score(self.episode_returns)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (sizes, returns, normalized score)."""
        returns = self.episode_returns
        return {
            "name": self.name,
            "env_id": self.env_id,
            "kind": self.kind,
            "transitions": int(self.size),
            "episodes": self.num_episodes,
            "return_mean": float(returns.mean()) if returns.size else None,
            "return_std": float(returns.std()) if returns.size else None,
            "return_min": float(returns.min()) if returns.size else None,
            "return_max": float(returns.max()) if returns.size else None,
            "random_return": self.random_return,
            "expert_return": self.expert_return,
            "normalized_score": self.normalized_score,
            "terminals": int(np.asarray(self.transitions.terminals).sum()),
            "timeouts": int(np.asarray(self.transitions.timeouts).sum()),
        }


# ------------------------------------------------------------------ checks


def _check_kinds(kinds) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError(f"no dataset kinds requested; known: {', '.join(KINDS)}")
    for kind in kinds:
        if kind not in KINDS:
            close = difflib.get_close_matches(str(kind), KINDS, 2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(
                f"unknown dataset kind {kind!r}{hint}; known: {', '.join(KINDS)}"
            )
    return kinds


def _check_collect(config: CollectConfig) -> None:
    for name in ("num_transitions", "num_envs", "eval_every", "eval_episodes"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"CollectConfig.{name}: expected an int >= 1, got {value!r}"
            )
    if not isinstance(config.reference_episodes, int) or config.reference_episodes < 1:
        raise ValueError(
            f"CollectConfig.reference_episodes: expected an int >= 1, got "
            f"{config.reference_episodes!r}"
        )
    lo, hi = config.medium_band
    if not 0 <= lo <= hi <= 1:
        raise ValueError(
            f"CollectConfig.medium_band: expected 0 <= low <= high <= 1, got "
            f"{config.medium_band}"
        )


def _env_dims(env_id: str, env_kwargs=None) -> dict[str, int]:
    env, params = make_env(env_id, env_kwargs)
    obs_dim = int(np.prod(env.observation_space(params).shape))
    space = env.action_space(params)
    if isinstance(space, gym_spaces.Discrete):
        return {"obs_dim": obs_dim, "num_actions": int(space.n)}
    return {"obs_dim": obs_dim, "action_dim": int(np.prod(space.shape))}


def make_dataset(
    transitions: Transitions,
    env_id: str,
    kind: str,
    random_return: float | None = None,
    expert_return: float | None = None,
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> OfflineDataset:
    """An ``OfflineDataset`` from ``transitions``, validated against the
    environment (shapes, dtypes, action range, finite values) with
    ``check_transitions``; raises ``ValueError`` naming what is wrong."""
    name = name or f"{_short(env_id)}-{kind}-v0"
    dims = _env_dims(env_id, env_kwargs) if env_id is not None else {}
    transitions = check_transitions(transitions, name=name, **dims)
    for label, value in (
        ("random_return", random_return),
        ("expert_return", expert_return),
    ):
        if value is not None and not math.isfinite(float(value)):
            raise ValueError(f"{name}.{label}: expected a finite number, got {value}")
    return OfflineDataset(
        name=name,
        env_id=env_id,
        kind=kind,
        transitions=transitions,
        random_return=None if random_return is None else float(random_return),
        expert_return=None if expert_return is None else float(expert_return),
        episode_returns=episode_returns(transitions),
        metadata=dict(metadata or {}),
    )


def _short(env_id: str) -> str:
    return str(env_id).split("-v")[0].lower().replace("_", "-")


def dataset_id(dataset: OfflineDataset, namespace: str = "convergence_jax") -> str:
    """Minari id ``<namespace>/<env>/<kind>-v0``, e.g.
    ``convergence_jax/cartpole/medium-replay-v0``."""
    return f"{namespace}/{_short(dataset.env_id)}/{dataset.kind}-v0"


# ------------------------------------------------------------------ rollouts


def _true_next(next_obs, info, done):
    """The observation each step led to: gymnax's ``final_observation`` where the
    episode ended, else the returned one (the same values, but taking the
    returned one keeps ``next_observations[t]`` bit-equal to
    ``observations[t + 1]``; XLA may round the two copies differently)."""
    final = info["final_observation"].reshape(next_obs.shape).astype(jnp.float32)
    return jnp.where(done[:, None], final, next_obs)


def _rollout_program(env, env_params, act, num_envs: int, num_steps: int):
    """``run(key, act_args) -> dict of [num_steps, num_envs, ...]``, one scan."""

    def run(key, act_args):
        k_reset, k_loop = jax.random.split(key)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_reset, num_envs), env_params
        )
        obs = obs.reshape(num_envs, -1).astype(jnp.float32)

        def step(carry, k):
            env_state, obs = carry
            k_act, k_env = jax.random.split(k)
            action = act(act_args, obs, k_act)
            next_obs, env_state, reward, terminated, truncated, info = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(jax.random.split(k_env, num_envs), env_state, action, env_params)
            next_obs = next_obs.reshape(num_envs, -1).astype(jnp.float32)
            out = {
                "observations": obs,
                "actions": action,
                "rewards": reward.astype(jnp.float32),
                "next_observations": _true_next(next_obs, info, terminated | truncated),
                "terminals": terminated,
                "timeouts": truncated & ~terminated,
            }
            return (env_state, next_obs), out

        return jax.lax.scan(
            step, (env_state, obs), jax.random.split(k_loop, num_steps)
        )[1]

    return run


def _streams(traj: dict[str, np.ndarray], begin=None) -> Transitions:
    """``[T, E, ...]`` rollouts -> flat ``Transitions``: each environment's steps
    contiguous, its trailing unfinished episode dropped. ``begin [E]`` (optional):
    the first row of each environment's stream that starts an episode (rows
    before it, the tail of an episode begun earlier, are dropped)."""
    done = np.asarray(traj["terminals"]) | np.asarray(traj["timeouts"])
    pieces = {k: [] for k in traj}
    for e in range(done.shape[1]):
        first = 0 if begin is None else int(begin[e])
        ends = np.flatnonzero(done[first:, e]) + first
        if ends.size == 0:
            continue
        keep = ends[-1] + 1
        for k, v in traj.items():
            pieces[k].append(np.asarray(v[first:keep, e]))
    if not pieces["rewards"]:
        raise ValueError(
            "no episode finished during collection: raise num_transitions (each "
            "environment needs at least one whole episode)"
        )
    flat = {k: np.concatenate(v) for k, v in pieces.items()}
    if flat["actions"].ndim > 2:
        flat["actions"] = flat["actions"].reshape(flat["actions"].shape[0], -1)
    return Transitions(**{k: jnp.asarray(v) for k, v in flat.items()})


def _env_action_fn(env, env_params):
    """Environment actions ``[B]`` int32 or ``[B, *shape]`` float32 from
    policy outputs, and a uniform random policy."""
    space = env.action_space(env_params)
    if isinstance(space, gym_spaces.Discrete):

        def random_act(_, obs, key):
            return jax.random.randint(key, obs.shape[:1], 0, space.n)

        return random_act
    low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), space.shape)
    high = jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), space.shape)

    def random_act(_, obs, key):
        return jax.random.uniform(
            key, (obs.shape[0], *space.shape), minval=low, maxval=high
        )

    return random_act


def rollout_transitions(
    key: jax.Array,
    env_id: str,
    act_fn,
    num_transitions: int,
    num_envs: int = 16,
    env_kwargs: dict[str, Any] | None = None,
) -> Transitions:
    """Roll out ``act_fn(obs [B, obs_dim], key) -> env actions [B, ...]`` in
    ``num_envs`` environments for ``ceil(num_transitions / num_envs)`` steps
    each (one compiled scan) and return the complete episodes as
    ``Transitions``."""
    env, env_params = make_env(env_id, env_kwargs)
    num_steps = -(-num_transitions // num_envs)
    run = _rollout_program(
        env, env_params, lambda _, obs, k: act_fn(obs, k), num_envs, num_steps
    )
    traj = jax.device_get(jax.jit(run)(key, None))
    return _streams(traj)


# ------------------------------------------------------------------ behaviour policy


class _Programs(NamedTuple):
    ppo: Any
    random_eval: Callable
    """``(key) -> [reference_episodes]`` returns of uniform random actions."""
    random_rollout: Callable
    """``(key) -> [T, E]`` rollout of uniform random actions."""
    init: Callable
    """``(key) -> PPO TrainState``."""
    chunk: Callable
    """``(state, key) -> (state, rollouts [U, T, E], eval returns [E])``."""
    policy_eval: Callable
    """``(key, (params, obs_stats)) -> [reference_episodes]`` returns."""
    policy_rollout: Callable
    """``(key, (params, obs_stats)) -> [T, E]`` rollout of the PPO policy."""


_PROGRAMS: dict[str, _Programs] = {}


def _programs(ppo_config: PPOConfig, config: CollectConfig) -> _Programs:
    """The compiled pieces of ``collect_datasets``, built once per configuration
    (a second collection with the same configs reuses them, compiled)."""
    cache_key = repr((ppo_config, config))
    if cache_key in _PROGRAMS:
        return _PROGRAMS[cache_key]
    ppo = ppo_lib.make_ppo(ppo_config)
    env_id, env_kwargs = ppo_config.env_id, ppo_config.env_kwargs
    env, env_params = make_env(env_id, env_kwargs)
    random_act = _env_action_fn(env, env_params)
    hparams = ppo.default_hparams
    num_envs, num_steps = ppo_config.num_envs, ppo_config.num_steps
    # PPO's own environment (LogWrapper around the same gymnax env) for its state.
    ppo_env, ppo_env_params = ppo_lib._make_env(ppo_config)
    collect_steps = -(-config.num_transitions // config.num_envs)

    def policy_act(args, obs, k):
        return ppo.policy(args[0], args[1], obs, k)

    def random_eval(key):
        return evaluate_policy(
            key,
            env_id,
            lambda obs, k: random_act(None, obs, k),
            config.reference_episodes,
            env_kwargs=env_kwargs,
        )

    def policy_eval(key, args):
        return evaluate_policy(
            key,
            env_id,
            lambda obs, k: policy_act(args, obs, k),
            config.reference_episodes,
            env_kwargs=env_kwargs,
        )

    def collect_and_learn(state, key):
        """One PPO update: a rollout stepped here, learned by ``learn_batch``."""

        def step(carry, k):
            env_state, obs = carry
            k_act, k_env = jax.random.split(k)
            raw = ppo.policy_action(state.params, state.obs_stats, obs, k_act)
            env_action = ppo.to_env_action(raw)
            next_obs, env_state, reward, terminated, truncated, info = jax.vmap(
                ppo_env.step, in_axes=(0, 0, 0, None)
            )(jax.random.split(k_env, num_envs), env_state, env_action, ppo_env_params)
            out = {
                "obs": obs,
                "action": env_action,
                "policy_action": raw,
                "reward": reward.astype(jnp.float32),
                "terminated": terminated,
                "truncated": truncated,
                "final_obs": info["final_observation"]
                .reshape(num_envs, -1)
                .astype(jnp.float32),
            }
            next_obs = next_obs.reshape(num_envs, -1).astype(jnp.float32)
            out["next_obs"] = _true_next(next_obs, info, terminated | truncated)
            return (env_state, next_obs), out

        (env_state, obs), batch = jax.lax.scan(
            step, (state.env_state, state.obs), jax.random.split(key, num_steps)
        )
        state = state.replace(env_state=env_state, obs=obs)
        next_obs = batch.pop("next_obs")
        state, _ = ppo.learn_batch(state, batch, hparams)
        keep = {
            "observations": batch["obs"],
            "actions": batch["action"],
            "rewards": batch["reward"],
            "next_observations": next_obs,
            "terminals": batch["terminated"],
            "timeouts": batch["truncated"] & ~batch["terminated"],
        }
        return state, keep

    def chunk(state, key):
        k_updates, k_eval = jax.random.split(key)
        state, rollouts = jax.lax.scan(
            collect_and_learn, state, jax.random.split(k_updates, config.eval_every)
        )
        returns = evaluate_policy(
            k_eval,
            env_id,
            lambda obs, k: ppo.policy(state.params, state.obs_stats, obs, k),
            config.eval_episodes,
            env_kwargs=env_kwargs,
        )
        return state, rollouts, returns

    programs = _Programs(
        ppo=ppo,
        random_eval=jax.jit(random_eval),
        random_rollout=jax.jit(
            lambda key: _rollout_program(
                env, env_params, random_act, config.num_envs, collect_steps
            )(key, None)
        ),
        init=jax.jit(lambda key: ppo.init(key, hparams)),
        chunk=jax.jit(chunk),
        policy_eval=jax.jit(policy_eval),
        policy_rollout=jax.jit(
            _rollout_program(
                env, env_params, policy_act, config.num_envs, collect_steps
            )
        ),
    )
    _PROGRAMS[cache_key] = programs
    return programs


def _train_behaviour(key, programs: _Programs, num_chunks: int):
    """PPO in chunks of ``eval_every`` updates: the checkpoint after every chunk
    (host pytrees), its mean evaluated return, and every rollout
    ``[U, T, E, ...]`` PPO learned from (host arrays)."""
    k_init, key = jax.random.split(key)
    state = programs.init(k_init)
    checkpoints, evals, rollouts = [], [], []
    for k in jax.random.split(key, num_chunks):
        state, chunk_rollouts, returns = programs.chunk(state, k)
        rollouts.append(jax.device_get(chunk_rollouts))
        evals.append(float(np.mean(np.asarray(returns))))
        checkpoints.append(jax.device_get((state.params, state.obs_stats)))
    return checkpoints, np.asarray(evals), rollouts


def _replay_transitions(rollouts, upto: int, limit: int | None) -> Transitions:
    """The rollouts of the first ``upto + 1`` chunks as one time-major stream per
    environment -> complete episodes (the latest ``limit`` steps, if given)."""
    traj = {
        k: np.concatenate(
            [r[k].reshape((-1,) + r[k].shape[2:]) for r in rollouts[: upto + 1]]
        )
        for k in rollouts[0]
    }
    if limit is None:
        return _streams(traj)
    num_envs = traj["rewards"].shape[1]
    steps = -(-limit // num_envs)
    cut = max(0, traj["rewards"].shape[0] - steps)
    done = np.asarray(traj["terminals"]) | np.asarray(traj["timeouts"])
    # The cut falls inside an episode of each environment: begin every stream
    # at the first row after the cut that starts an episode.
    begin = np.zeros(num_envs, np.int64)
    if cut > 0:
        for e in range(num_envs):
            ends = np.flatnonzero(done[cut - 1 :, e])
            begin[e] = ends[0] if ends.size else steps
    return _streams({k: v[cut:] for k, v in traj.items()}, begin)


def collect_datasets(
    key: jax.Array,
    env_id: str,
    kinds=KINDS,
    config: CollectConfig | None = None,
) -> dict[str, OfflineDataset]:
    """Make the requested D4RL ``kinds`` for ``env_id`` (see the module
    docstring); one PPO run serves them all. Deterministic given ``key``.

    The reference returns (``random_return``, ``expert_return``) are measured
    even when only some kinds are asked for, so that every dataset has its
    normalized score; ``random`` alone needs no PPO run only if it is the one
    kind asked for (then ``expert_return`` is None).
    """
    config = CollectConfig() if config is None else config
    kinds = _check_kinds(kinds)
    _check_collect(config)
    make_env(env_id, config.ppo.env_kwargs if config.ppo else None)
    ppo_config = config.ppo
    if ppo_config is None:
        if env_id not in PPO_PRESETS:
            raise ValueError(
                f"no PPO preset for {env_id!r} (presets: {', '.join(PPO_PRESETS)}); "
                "pass CollectConfig(ppo=PPOConfig(env_id=..., ...))"
            )
        ppo_config = PPO_PRESETS[env_id]
    if ppo_config.env_id != env_id:
        raise ValueError(
            f"CollectConfig.ppo.env_id is {ppo_config.env_id!r}, but the datasets "
            f"are for {env_id!r}"
        )
    if ppo_config.num_updates < config.eval_every:
        raise ValueError(
            f"CollectConfig.eval_every ({config.eval_every}) is more than the PPO "
            f"run's updates ({ppo_config.num_updates} = total_timesteps // "
            "(num_envs * num_steps))"
        )
    env_kwargs = ppo_config.env_kwargs
    programs = _programs(ppo_config, config)
    k_ref_random, k_random, k_train, k_ref_expert, k_medium, k_expert = (
        jax.random.split(key, 6)
    )
    random_return = float(np.mean(programs.random_eval(k_ref_random)))
    collect = {}
    base_meta = {
        "collected_by": "convergence_jax.offline.datasets.collect_datasets",
        "key_data": np.asarray(jax.random.key_data(key)).tolist(),
        "num_envs": config.num_envs,
        "num_transitions_budget": config.num_transitions,
        "random_policy": "uniform random actions",
        "reference_episodes": config.reference_episodes,
    }
    if "random" in kinds:
        collect["random"] = (
            _streams(jax.device_get(programs.random_rollout(k_random))),
            {"policy": "uniform random actions"},
        )
    expert_return, train_meta = None, {}
    if any(k != "random" for k in kinds):
        num_chunks = ppo_config.num_updates // config.eval_every
        checkpoints, evals, rollouts = _train_behaviour(k_train, programs, num_chunks)
        env_steps = (
            (np.arange(num_chunks) + 1) * config.eval_every * ppo_config.batch_size
        )
        best = int(num_chunks - 1 - np.argmax(evals[::-1]))
        expert_return = float(
            np.mean(programs.policy_eval(k_ref_expert, checkpoints[best]))
        )
        if expert_return == random_return:
            raise ValueError(
                f"{env_id}: the trained policy's return equals the random policy's "
                f"({expert_return:.2f}); the normalized score is undefined: train "
                "longer (CollectConfig.ppo.total_timesteps)"
            )
        if expert_return < random_return:
            warnings.warn(
                f"{env_id}: the best PPO checkpoint's return ({expert_return:.2f}) "
                f"is below the random policy's ({random_return:.2f}); the expert "
                "dataset is not an expert: train longer "
                "(CollectConfig.ppo.total_timesteps)",
                stacklevel=2,
            )
        fractions = (evals - random_return) / (expert_return - random_return)
        lo, hi = config.medium_band
        in_band = np.flatnonzero((fractions >= lo) & (fractions <= hi))
        medium = int(
            in_band[0] if in_band.size else np.argmin(np.abs(fractions - (lo + hi) / 2))
        )
        train_meta = {
            "behaviour_algorithm": "PPO (convergence_jax.rl.ppo)",
            "ppo_config": _jsonable(dataclasses.asdict(ppo_config)),
            "eval_every_updates": config.eval_every,
            "eval_episodes": config.eval_episodes,
            "checkpoint_env_steps": env_steps.tolist(),
            "checkpoint_eval_returns": evals.tolist(),
            "expert_checkpoint": best,
            "expert_env_steps": int(env_steps[best]),
            "expert_eval_return": float(evals[best]),
            "medium_checkpoint": medium,
            "medium_env_steps": int(env_steps[medium]),
            "medium_eval_return": float(evals[medium]),
            "medium_in_band": bool(in_band.size),
            "medium_band": list(config.medium_band),
        }

        def policy_rollout(k, checkpoint):
            return _streams(jax.device_get(programs.policy_rollout(k, checkpoint)))

        if "medium" in kinds or "medium-expert" in kinds:
            collect["medium"] = (
                policy_rollout(k_medium, checkpoints[medium]),
                {"policy": f"PPO checkpoint {medium} (stochastic)"},
            )
        if "expert" in kinds or "medium-expert" in kinds:
            collect["expert"] = (
                policy_rollout(k_expert, checkpoints[best]),
                {"policy": f"PPO checkpoint {best} (stochastic)"},
            )
        if "medium-replay" in kinds:
            collect["medium-replay"] = (
                _replay_transitions(rollouts, medium, config.max_replay_transitions),
                {
                    "policy": "the PPO run's own rollouts (the data it learned "
                    f"from) from its start up to the medium checkpoint {medium} "
                    f"({int(env_steps[medium])} env steps)"
                },
            )
        if "medium-expert" in kinds:
            med, exp = collect["medium"][0], collect["expert"][0]
            collect["medium-expert"] = (
                jax.tree.map(lambda a, b: jnp.concatenate([a, b]), med, exp),
                {"policy": "the medium dataset, then the expert dataset"},
            )
    out = {}
    for kind in kinds:
        transitions, meta = collect[kind]
        out[kind] = make_dataset(
            transitions,
            env_id,
            kind,
            random_return=random_return,
            expert_return=expert_return,
            metadata={**base_meta, **meta, **train_meta},
            env_kwargs=env_kwargs,
        )
    return out


def collect_dataset(
    key: jax.Array, env_id: str, kind: str, config: CollectConfig | None = None
) -> OfflineDataset:
    """One kind of ``collect_datasets`` (the others it needs are made and
    dropped; call ``collect_datasets`` for several)."""
    (kind,) = _check_kinds(kind)
    return collect_datasets(key, env_id, (kind,), config)[kind]


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


# ------------------------------------------------------------------ Minari


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(
            f"{module} is needed for this (pip install 'convergence_jax[offline]')"
        ) from err


def _gymnasium_spaces(dataset: OfflineDataset):
    import gymnasium

    data = dataset.transitions
    obs_dim = int(data.observations.shape[1])
    obs_space = gymnasium.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    if dataset.transitions.discrete:
        n = None
        if dataset.env_id is not None:
            n = _env_dims(dataset.env_id).get("num_actions")
        n = n or int(np.asarray(data.actions).max()) + 1
        return obs_space, gymnasium.spaces.Discrete(n)
    act_dim = int(data.actions.shape[1])
    if dataset.env_id is not None:
        env, params = make_env(dataset.env_id)
        space = env.action_space(params)
        low = np.broadcast_to(np.asarray(space.low, np.float32), (act_dim,))
        high = np.broadcast_to(np.asarray(space.high, np.float32), (act_dim,))
    else:
        low = np.full(act_dim, -np.inf, np.float32)
        high = np.full(act_dim, np.inf, np.float32)
    return obs_space, gymnasium.spaces.Box(low, high, (act_dim,), np.float32)


def _episode_slices(data: Transitions) -> list[slice]:
    done = np.asarray(data.terminals) | np.asarray(data.timeouts)
    ends = list(np.flatnonzero(done) + 1)
    if not ends or ends[-1] != data.size:
        ends.append(data.size)
    starts = [0] + ends[:-1]
    return [slice(s, e) for s, e in zip(starts, ends, strict=True)]


@contextlib.contextmanager
def _minari_root(root: Path):
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def save_minari(
    dataset: OfflineDataset,
    root: str | os.PathLike,
    dataset_id_: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``dataset`` in the Minari format under ``root`` (through the
    ``minari`` package) and return the dataset's directory
    ``root/<dataset_id>``. Episodes are split at terminals and timeouts; each
    episode's ``next_observations`` must continue its ``observations`` (Minari
    stores ``T + 1`` observations per episode), else a ``ValueError``."""
    minari = _require("minari")
    from minari.data_collector import EpisodeBuffer

    root = Path(root).absolute()
    ident = dataset_id_ or dataset_id(dataset)
    path = root / ident
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
        import shutil

        shutil.rmtree(path)
    data = dataset.transitions
    obs = np.asarray(data.observations, np.float32)
    next_obs = np.asarray(data.next_observations, np.float32)
    actions = np.asarray(data.actions)
    rewards = np.asarray(data.rewards, np.float32)
    terminals = np.asarray(data.terminals, bool)
    timeouts = np.asarray(data.timeouts, bool)
    buffers = []
    for i, s in enumerate(_episode_slices(data)):
        o, no = obs[s], next_obs[s]
        if len(o) > 1 and not np.array_equal(o[1:], no[:-1]):
            row = s.start + int(np.flatnonzero((o[1:] != no[:-1]).any(-1))[0])
            raise ValueError(
                f"{dataset.name}: next_observations[{row}] is not observations"
                f"[{row + 1}] inside one episode; Minari stores each episode as one "
                "observation sequence (mark episode ends with terminals / timeouts)"
            )
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=np.concatenate([o, no[-1:]]),
                actions=actions[s],
                rewards=rewards[s],
                terminations=terminals[s],
                truncations=timeouts[s],
                infos={},
            )
        )
    obs_space, act_space = _gymnasium_spaces(dataset)
    own = {
        "env_id": dataset.env_id,
        "kind": dataset.kind,
        "name": dataset.name,
        "random_return": dataset.random_return,
        "expert_return": dataset.expert_return,
        "episode_returns": dataset.episode_returns.tolist(),
        "metadata": _jsonable(dataset.metadata),
    }
    with _minari_root(root), warnings.catch_warnings():
        # Minari warns about an author, a code link and a gymnasium env spec;
        # the env is a gymnax one, recorded in our own metadata instead.
        warnings.simplefilter("ignore", UserWarning)
        ds = minari.create_dataset_from_buffers(
            ident,
            buffers,
            observation_space=obs_space,
            action_space=act_space,
            algorithm_name=str(dataset.metadata.get("behaviour_algorithm", "")),
            description=f"{dataset.name}: {dataset.kind} dataset of gymnax "
            f"{dataset.env_id}, made by convergence_jax",
            data_format="hdf5",
        )
        refs = {"convergence_jax": json.dumps(own)}
        if dataset.random_return is not None and dataset.expert_return is not None:
            refs["ref_min_score"] = dataset.random_return
            refs["ref_max_score"] = dataset.expert_return
        ds.storage.update_metadata(refs)
    return path


def load_minari(
    path: str | os.PathLike,
    env_id: str | None = None,
    random_return: float | None = None,
    expert_return: float | None = None,
) -> OfflineDataset:
    """Read a Minari dataset directory (``root/<dataset_id>``, the one holding
    ``data/``) into an ``OfflineDataset``. What the project wrote is restored
    whole; for another Minari dataset give ``env_id`` (a gymnax id, to check
    shapes against; optional) and the reference returns (else Minari's
    ``ref_min_score`` / ``ref_max_score`` when it has them)."""
    minari = _require("minari")
    path = Path(path)
    if not (path / "data").is_dir():
        raise FileNotFoundError(f"{path}: not a Minari dataset directory (no data/)")
    ds = minari.MinariDataset(path / "data")
    meta = ds.storage.metadata
    own = json.loads(meta["convergence_jax"]) if "convergence_jax" in meta else {}
    pieces = {k: [] for k in Transitions.__dataclass_fields__}
    for ep in ds.iterate_episodes():
        obs = np.asarray(ep.observations)
        if obs.ndim != 2:
            raise ValueError(
                f"{path}: episode {ep.id} has observations of shape {obs.shape}; "
                "expected flat vectors [T + 1, obs_dim]"
            )
        pieces["observations"].append(obs[:-1])
        pieces["next_observations"].append(obs[1:])
        pieces["actions"].append(np.asarray(ep.actions))
        pieces["rewards"].append(np.asarray(ep.rewards))
        pieces["terminals"].append(np.asarray(ep.terminations, bool))
        pieces["timeouts"].append(np.asarray(ep.truncations, bool))
    if not pieces["rewards"]:
        raise ValueError(f"{path}: empty dataset (0 episodes)")
    flat = {k: np.concatenate(v) for k, v in pieces.items()}
    if np.issubdtype(flat["actions"].dtype, np.integer):
        flat["actions"] = flat["actions"].astype(np.int32)
    elif flat["actions"].ndim == 1:
        flat["actions"] = flat["actions"][:, None]
    transitions = Transitions(**flat)
    env_id = env_id or own.get("env_id")
    if random_return is None:
        random_return = own.get("random_return", meta.get("ref_min_score"))
    if expert_return is None:
        expert_return = own.get("expert_return", meta.get("ref_max_score"))
    return make_dataset(
        transitions,
        env_id,
        own.get("kind", "minari"),
        random_return=random_return,
        expert_return=expert_return,
        name=own.get("name") or str(meta.get("dataset_id", path.name)),
        metadata={
            **own.get("metadata", {}),
            "minari_dataset_id": meta.get("dataset_id"),
        },
    )


# ------------------------------------------------------------------ D4RL HDF5


def save_d4rl_hdf5(dataset: OfflineDataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` as a D4RL-layout HDF5 file (``observations, actions,
    rewards, next_observations, terminals, timeouts``; the reference returns,
    env id, kind and name as file attributes), gzip-compressed."""
    h5py = _require("h5py")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k in Transitions.__dataclass_fields__:
            f.create_dataset(
                k, data=np.asarray(getattr(dataset.transitions, k)), compression="gzip"
            )
        for k in ("name", "env_id", "kind"):
            if getattr(dataset, k) is not None:
                f.attrs[k] = getattr(dataset, k)
        for k in ("random_return", "expert_return"):
            if getattr(dataset, k) is not None:
                f.attrs[k] = getattr(dataset, k)
        f.attrs["metadata"] = json.dumps(_jsonable(dataset.metadata))
    return path


def load_d4rl_hdf5(
    path: str | os.PathLike,
    env_id: str | None = None,
    random_return: float | None = None,
    expert_return: float | None = None,
    name: str | None = None,
) -> OfflineDataset:
    """Read a D4RL-format HDF5 file: ``observations [N, obs_dim]``, ``actions``,
    ``rewards [N]`` (or ``[N, 1]``), ``terminals [N]``, and optionally
    ``timeouts [N]`` (absent: none) and ``next_observations``.

    Without ``next_observations`` they are taken as D4RL's ``qlearning_dataset``
    does, ``observations[i + 1]``, except that a timeout row (whose next
    observation the file does not hold) is dropped and the row before it becomes
    the timeout, and a terminal row gets its own observation (no target
    bootstraps from it). ``env_id`` (a gymnax id) checks shapes, dtypes and the
    action range against the environment; the reference returns come from the
    arguments, else from the file's attributes (as ``save_d4rl_hdf5`` writes).
    """
    h5py = _require("h5py")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with h5py.File(path, "r") as f:
        missing = [
            k for k in ("observations", "actions", "rewards", "terminals") if k not in f
        ]
        if missing:
            raise ValueError(
                f"{path}: not a D4RL dataset: lacks {', '.join(missing)} (has "
                f"{', '.join(sorted(f.keys()))})"
            )
        raw = {k: np.asarray(f[k]) for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        attrs = dict(f.attrs)
    name = name or str(attrs.get("name", path.stem))
    obs = raw["observations"]
    n = obs.shape[0]
    if n == 0:
        raise ValueError(f"{name}: empty dataset (0 transitions)")
    rewards = raw["rewards"]
    if rewards.ndim == 2 and rewards.shape[1] == 1:
        rewards = rewards[:, 0]
    terminals = raw["terminals"].astype(bool).reshape(-1)
    timeouts = raw.get("timeouts", np.zeros(n, bool)).astype(bool).reshape(-1)
    actions = raw["actions"]
    env_id = env_id or (str(attrs["env_id"]) if "env_id" in attrs else None)
    dims = _env_dims(env_id) if env_id is not None else {}
    if "num_actions" in dims and actions.ndim == 2 and actions.shape[1] == 1:
        actions = actions[:, 0]
    if "num_actions" in dims and np.issubdtype(actions.dtype, np.floating):
        if not np.array_equal(actions, np.round(actions)):
            raise ValueError(
                f"{name}.actions: {env_id} has discrete actions; the file's are "
                "floats that are not whole numbers"
            )
        actions = actions.astype(np.int32)
    if "action_dim" in dims and actions.ndim == 1:
        actions = actions[:, None]
    for key, value in (
        ("rewards", rewards),
        ("terminals", terminals),
        ("timeouts", timeouts),
        ("actions", actions),
    ):
        if value.shape[0] != n:
            raise ValueError(
                f"{name}.{key}: expected {n} rows (as observations), got shape "
                f"{value.shape}"
            )
    if "next_observations" in raw:
        next_obs = raw["next_observations"]
        keep = np.ones(n, bool)
    else:
        if obs.ndim != 2:
            raise ValueError(
                f"{name}.observations: expected [N, obs_dim], got {obs.shape}"
            )
        next_obs = np.concatenate([obs[1:], obs[-1:]])
        next_obs[terminals] = obs[terminals]
        keep = ~(timeouts & ~terminals)
        keep[-1] = keep[-1] and terminals[-1]
        # The row before a dropped row ends its episode by the time limit.
        before = np.flatnonzero(~keep) - 1
        before = before[(before >= 0) & keep[np.maximum(before, 0)]]
        timeouts = timeouts.copy()
        timeouts[before] = ~terminals[before]
    transitions = Transitions(
        observations=obs[keep],
        actions=actions[keep],
        rewards=rewards[keep],
        next_observations=next_obs[keep],
        terminals=terminals[keep],
        timeouts=timeouts[keep] & ~terminals[keep],
    )
    if random_return is None and "random_return" in attrs:
        random_return = float(attrs["random_return"])
    if expert_return is None and "expert_return" in attrs:
        expert_return = float(attrs["expert_return"])
    metadata = json.loads(attrs["metadata"]) if "metadata" in attrs else {}
    return make_dataset(
        transitions,
        env_id,
        str(attrs.get("kind", "d4rl")),
        random_return=random_return,
        expert_return=expert_return,
        name=name,
        metadata={**metadata, "source": str(path)},
    )
