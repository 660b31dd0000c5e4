"""Where windows of experience come from: vmapped gymnax environments, or a live
stream of transitions.

A pipeline is an object with ``episodes(agent)``, a generator of ``EpisodeData``
windows collected by ``agent.act``. The loop learns from each window (training
pipeline) or only scores it (validation pipeline: the agent acts, never learns).
Arrays are laid out ``[window_steps, num_envs, ...]``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from convergence_jax.rl.ppo import PPOConfig, _make_env

__all__ = [
    "BatchPipeline",
    "EpisodeData",
    "LivePipeline",
    "every_n_seconds",
    "episode_length",
    "every_n_steps",
    "on_episode_end",
    "window_steps_for",
]

# Environment steps per window, per episode length, by algorithm (tensor-optix
# 1.17.9, ``tensor_optix/utils/window_size.py``): on-policy learners want several
# episodes per window for their advantage estimates; off-policy ones learn from
# a replay buffer, and one episode per window is enough.
_EPISODES_PER_WINDOW = {
    "ppo": 4.0,
    "recurrent_ppo": 4.0,
    "dqn": 1.0,
    "sac": 1.0,
    "td3": 1.0,
}


def episode_length(
    env_id: str,
    env_kwargs: dict | None = None,
    *,
    calibrate: bool = False,
    num_envs: int = 16,
    seed: int = 0,
) -> int:
    """An environment's episode length in steps: its ``max_steps_in_episode``
    limit, or with ``calibrate`` (and for an environment without a limit) the
    mean length of ``num_envs`` episodes of uniformly random actions, run in one
    compiled scan of at most 10,000 steps (episodes that do not end by then count
    as 10,000 steps long)."""
    env, env_params = _make_env(PPOConfig(env_id=env_id, env_kwargs=env_kwargs or {}))
    limit = getattr(env_params, "max_steps_in_episode", None)
    if limit is not None and not calibrate:
        return int(limit)
    horizon = int(min(limit or 10_000, 10_000))
    space = env.action_space(env_params)

    def rollout(key):
        k_reset, k_run = jax.random.split(key)
        keys = jax.random.split(k_reset, num_envs)
        _, state = jax.vmap(env.reset, in_axes=(0, None))(keys, env_params)

        def step(carry, key):
            state, length, alive = carry
            k_act, k_env = jax.random.split(key)
            actions = jax.vmap(space.sample)(jax.random.split(k_act, num_envs))
            _, state, _, terminated, truncated, _ = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(jax.random.split(k_env, num_envs), state, actions, env_params)
            length = length + alive
            alive = alive & ~(terminated | truncated)
            return (state, length, alive), None

        init = (state, jnp.zeros(num_envs, jnp.int32), jnp.ones(num_envs, bool))
        (_, length, _), _ = jax.lax.scan(step, init, jax.random.split(k_run, horizon))
        return length

    lengths = np.asarray(jax.jit(rollout)(jax.random.key(seed)))
    return max(1, int(round(float(lengths.mean()))))


def window_steps_for(
    env_id: str,
    num_envs: int,
    algorithm: str = "ppo",
    *,
    min_steps: int = 512,
    max_steps: int = 8192,
    env_kwargs: dict | None = None,
    calibrate: bool = False,
) -> int:
    """Steps per environment of a training window sized from the episode length:
    ``ceil(clip(k * episode_length, min_steps, max_steps) / num_envs)``, with
    ``k`` episodes per window by algorithm (4 for PPO, 1 for DQN / SAC / TD3;
    2 for any other name) — tensor-optix's rule, with the total spread over
    ``num_envs`` vmapped environments. CartPole with 8 environments and PPO:
    ``ceil(2000 / 8) = 250``."""
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(
            f"window_steps_for.num_envs: expected an int >= 1, got {num_envs!r}"
        )
    if not 1 <= min_steps <= max_steps:
        raise ValueError(
            f"window_steps_for: expected 1 <= min_steps <= max_steps, got "
            f"{min_steps} and {max_steps}"
        )
    k = _EPISODES_PER_WINDOW.get(algorithm.lower().replace("-", "_"), 2.0)
    length = episode_length(env_id, env_kwargs, calibrate=calibrate)
    total = min(max(k * length, min_steps), max_steps)
    return math.ceil(total / num_envs)


@dataclass
class EpisodeData:
    """One window of experience, ``[steps, envs, ...]``."""

    observations: Any
    """Observations the agent acted on."""
    actions: Any
    rewards: Any
    terminated: Any
    truncated: Any
    final_observations: Any
    """The observation each step led to, before any reset (for bootstrapping)."""
    episode_returns: np.ndarray
    """Returns of the episodes that ended inside this window (1-D)."""
    recent_returns: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Each environment's last finished episode return, possibly from an earlier
    window (environments with no finished episode yet are left out)."""
    window: int = 0
    """Index of the window in its pipeline."""
    infos: Any = None
    policy_actions: Any = None
    """The policy's own samples when they differ from ``actions`` (continuous
    actions squashed or clipped into the box by the policy's ``to_env``); learning
    takes log-probabilities of these. None: ``actions`` are the samples."""

    @property
    def num_steps(self) -> int:
        """Environment steps in the window (all environments)."""
        return int(np.prod(np.shape(self.rewards)[:2]))


# ------------------------------------------------------------------ batch


class BatchPipeline:
    """Fixed windows of ``window_steps`` steps over ``num_envs`` vmapped gymnax
    environments (auto-reset inside; no reset between windows unless
    ``reset_each_window``, which a validation pipeline wants: fresh episodes of
    the current policy, e.g. ``window_steps`` = the episode limit; then only
    each environment's first episode is scored). ``window_steps="auto"`` is the
    episode length (``episode_length``): one whole episode per environment; for a
    training window sized by algorithm see ``window_steps_for``.

    With an agent that offers ``jax_policy()`` (``PPOAgent``, ``EnsembleAgent``
    of such agents) the whole window is one compiled ``lax.scan``; with any other
    agent, ``act`` is called once per step on the batch of observations.
    """

    def __init__(
        self,
        env_id: str = "CartPole-v1",
        num_envs: int = 8,
        window_steps: int | str = 128,
        seed: int = 0,
        *,
        reset_each_window: bool = False,
        env_kwargs: dict | None = None,
    ):
        if window_steps == "auto":
            window_steps = episode_length(env_id, env_kwargs)
        for name, value in (("num_envs", num_envs), ("window_steps", window_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"BatchPipeline.{name}: expected an int >= 1, got {value!r}"
                )
        self.env, self.env_params = _make_env(
            PPOConfig(env_id=env_id, env_kwargs=env_kwargs or {})
        )
        self.env_id = env_id
        self.num_envs = num_envs
        self.window_steps = window_steps
        self.reset_each_window = reset_each_window
        self._key = jax.random.key(seed)
        self._env_state = None
        self._obs = None
        self._window = 0
        env, env_params = self.env, self.env_params

        def reset(key):
            keys = jax.random.split(key, num_envs)
            obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, env_params)
            return obs.reshape(num_envs, -1).astype(jnp.float32), state

        def env_step(key, env_state, obs, action):
            keys = jax.random.split(key, num_envs)
            next_obs, env_state, reward, terminated, truncated, info = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(keys, env_state, action, env_params)
            transition = {
                "obs": obs,
                "action": action,
                "reward": reward.astype(jnp.float32),
                "terminated": terminated,
                "truncated": truncated,
                "final_obs": info["final_observation"].reshape(obs.shape),
                "done": info["returned_episode"],
                "return": info["returned_episode_returns"],
            }
            next_obs = next_obs.reshape(obs.shape).astype(jnp.float32)
            return env_state, next_obs, transition

        def collect(apply, to_env, params, env_state, obs, key):
            def step(carry, key):
                env_state, obs = carry
                k_act, k_env = jax.random.split(key)
                sample = apply(params, obs, k_act)
                action = sample if to_env is None else to_env(sample)
                env_state, next_obs, transition = env_step(
                    k_env, env_state, obs, action
                )
                if to_env is not None:
                    transition["policy_action"] = sample
                return (env_state, next_obs), transition

            keys = jax.random.split(key, window_steps)
            (env_state, obs), traj = jax.lax.scan(step, (env_state, obs), keys)
            return env_state, obs, traj

        self._reset = jax.jit(reset)
        self._env_step = jax.jit(env_step)
        self._collect = jax.jit(collect, static_argnums=(0, 1))

    def setup(self) -> None:
        self._env_state = None

    def teardown(self) -> None:
        pass

    def episodes(self, agent) -> Iterator[EpisodeData]:
        while True:
            yield self.collect(agent)

    def collect(self, agent) -> EpisodeData:
        """One window acted by ``agent``."""
        if self._env_state is None or self.reset_each_window:
            self._key, key = jax.random.split(self._key)
            self._obs, self._env_state = self._reset(key)
        self._key, key = jax.random.split(self._key)
        jax_policy = getattr(agent, "jax_policy", None)
        policy = jax_policy() if callable(jax_policy) else None
        if policy is not None:
            to_env = getattr(policy, "to_env", None)
            self._env_state, self._obs, traj = self._collect(
                policy.apply, to_env, policy.params, self._env_state, self._obs, key
            )
        else:
            self._env_state, self._obs, traj = self._act_by_step(agent, key)
        done, returns = jax.device_get((traj["done"], traj["return"]))
        if self.reset_each_window:
            # Fresh episodes: score each environment's first one only (counting
            # the restarts after early failures would favour short episodes).
            done = done & (np.cumsum(done, axis=0) == 1)
        finished = self._env_state.returned_episode_lengths > 0
        recent, finished = jax.device_get(
            (self._env_state.returned_episode_returns, finished)
        )
        data = EpisodeData(
            observations=traj["obs"],
            actions=traj["action"],
            rewards=traj["reward"],
            terminated=traj["terminated"],
            truncated=traj["truncated"],
            final_observations=traj["final_obs"],
            episode_returns=np.asarray(returns[done], np.float64),
            recent_returns=np.asarray(recent[finished], np.float64),
            window=self._window,
            policy_actions=traj.get("policy_action"),
        )
        self._window += 1
        return data

    def _act_by_step(self, agent, key):
        env_state, obs = self._env_state, self._obs
        steps = []
        for step_key in jax.random.split(key, self.window_steps):
            action = jnp.asarray(agent.act(np.asarray(obs)))
            env_state, obs, transition = self._env_step(
                step_key, env_state, obs, action
            )
            steps.append(transition)
        traj = jax.tree.map(lambda *xs: jnp.stack(xs), *steps)
        return env_state, obs, traj


# ------------------------------------------------------------------ live

Boundary = Callable[[int, float, bool, bool], bool]
"""``boundary(steps_in_window, seconds_in_window, terminated, truncated)``."""


def every_n_steps(n: int) -> Boundary:
    """Close a window every ``n`` steps."""
    if n < 1:
        raise ValueError(f"every_n_steps: n must be >= 1, got {n}")
    return lambda steps, seconds, terminated, truncated: steps >= n


def every_n_seconds(seconds: float) -> Boundary:
    """Close a window once ``seconds`` have passed since it opened."""
    if seconds <= 0:
        raise ValueError(f"every_n_seconds: seconds must be > 0, got {seconds}")
    return lambda steps, elapsed, terminated, truncated: elapsed >= seconds


def on_episode_end() -> Boundary:
    """Close a window when an episode ends."""
    return lambda steps, seconds, terminated, truncated: terminated or truncated


class LivePipeline:
    """Windows cut from any stream of ``(obs, reward, terminated, truncated,
    info)`` tuples — a market feed, a robot, a service.

    The first tuple gives the first observation. For every later one the agent
    has acted on the previous observation: if ``source`` is a generator the
    action is sent into it (``source.send(action)``), so the stream can react;
    otherwise the stream is observed and the actions only recorded. After a
    terminated or truncated step the next observation starts a new episode.
    ``boundary`` decides where windows end (``every_n_steps``,
    ``every_n_seconds``, ``on_episode_end`` or any function); the stream ending
    ends the pipeline (a partial last window is still yielded).
    """

    def __init__(
        self,
        source: Iterable,
        boundary: Boundary | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.source = source
        self.boundary = boundary or every_n_steps(100)
        self.clock = clock
        self._window = 0

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        close = getattr(self.source, "close", None)
        if callable(close):
            close()

    def episodes(self, agent) -> Iterator[EpisodeData]:
        stream = iter(self.source)
        can_send = hasattr(stream, "send")
        try:
            obs, *_ = self._unpack(next(stream))
        except StopIteration:
            return
        episode_return = 0.0
        while True:
            steps: list[tuple] = []
            returns: list[float] = []
            opened = self.clock()
            ended = False
            while True:
                action = np.asarray(agent.act(np.asarray(obs)[None]))[0]
                try:
                    item = stream.send(action) if can_send else next(stream)
                except StopIteration:
                    ended = True
                    break
                next_obs, reward, terminated, truncated, info = self._unpack(item)
                steps.append((obs, action, reward, terminated, truncated, next_obs))
                episode_return += reward
                if terminated or truncated:
                    returns.append(episode_return)
                    episode_return = 0.0
                obs = next_obs
                if self.boundary(
                    len(steps), self.clock() - opened, terminated, truncated
                ):
                    break
            if steps:
                yield self._window_data(steps, returns)
            if ended:
                return

    def _unpack(self, item):
        try:
            obs, reward, terminated, truncated, info = item
        except (TypeError, ValueError):
            raise ValueError(
                "LivePipeline: the source must yield (obs, reward, terminated, "
                f"truncated, info) tuples, got {item!r}"
            ) from None
        reward = float(reward)
        if not np.isfinite(reward):
            raise ValueError(f"LivePipeline: non-finite reward {reward}")
        return np.asarray(obs), reward, bool(terminated), bool(truncated), info

    def _window_data(self, steps, returns) -> EpisodeData:
        obs, action, reward, terminated, truncated, final = (
            np.stack(column)[:, None] for column in zip(*steps, strict=True)
        )
        data = EpisodeData(
            observations=obs,
            actions=action,
            rewards=reward.astype(np.float32),
            terminated=terminated,
            truncated=truncated,
            final_observations=final,
            episode_returns=np.asarray(returns, np.float64),
            recent_returns=np.asarray(returns[-1:], np.float64),
            window=self._window,
        )
        self._window += 1
        return data
