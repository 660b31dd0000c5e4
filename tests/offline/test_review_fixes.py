"""Regression tests for bugs found in review of the offline package."""

from __future__ import annotations

import numpy as np

from convergence_jax.offline.dataset import episode_returns
from convergence_jax.offline.datasets import _replay_transitions


def _fake_rollouts(num_steps: int, num_envs: int, length: int, offset=0):
    """One chunk of PPO-like rollouts ``[U=1, T, E]``: episodes of ``length``
    steps, the observation is the timestep within the episode, reward 1."""
    t = (np.arange(num_steps)[:, None] + offset + np.arange(num_envs)[None]) % length
    obs = t.astype(np.float32)[..., None]
    return [
        {
            "observations": obs[None],
            "actions": np.zeros((1, num_steps, num_envs), np.int32),
            "rewards": np.ones((1, num_steps, num_envs), np.float32),
            "next_observations": (obs + 1)[None],
            "terminals": (t == length - 1)[None],
            "timeouts": np.zeros((1, num_steps, num_envs), bool),
        }
    ]


def test_replay_limit_keeps_only_complete_episodes():
    # Cutting the latest `limit` steps lands inside an episode; the tail of that
    # episode must not be counted as a (short) episode of its own.
    rollouts = _fake_rollouts(num_steps=20, num_envs=2, length=3)
    data = _replay_transitions(rollouts, 0, limit=10)  # 5 steps per environment
    returns = episode_returns(data)
    assert returns.size > 0
    np.testing.assert_array_equal(returns, np.full(returns.shape, 3.0))
    obs = np.asarray(data.observations[:, 0])
    ends = np.asarray(data.terminals | data.timeouts)
    starts = np.concatenate([[True], ends[:-1]])
    np.testing.assert_array_equal(obs[starts], 0.0)  # every episode from its start


def test_replay_without_limit_keeps_every_episode():
    rollouts = _fake_rollouts(num_steps=10, num_envs=2, length=3)
    data = _replay_transitions(rollouts, 0, limit=None)
    # env 0: episodes end at t = 2, 5, 8; env 1 starts at timestep 1 (the
    # fake's offset), so its first episode is shorter (the stream's own start).
    assert data.size == 9 + 8


def test_dt_sequence_data_accepts_float_flags():
    # The other algorithms take 0/1 float terminals (bellman_target casts them);
    # the Decision Transformer's episode bookkeeping raised a TypeError on them.
    import jax.numpy as jnp

    from convergence_jax.offline._common import ActionSpec
    from convergence_jax.offline.dataset import Transitions
    from convergence_jax.offline.dt import sequence_data

    n = 5
    data = Transitions(
        observations=jnp.zeros((n, 2)),
        actions=jnp.zeros(n, jnp.int32),
        rewards=jnp.ones(n),
        next_observations=jnp.zeros((n, 2)),
        terminals=jnp.array([0.0, 1.0, 0.0, 0.0, 1.0]),
        timeouts=jnp.zeros(n),
    )
    seq = sequence_data(data, ActionSpec.make_discrete(2))
    np.testing.assert_array_equal(seq.rtg, [2.0, 1.0, 3.0, 2.0, 1.0])
    np.testing.assert_array_equal(seq.timesteps, [0, 1, 0, 1, 2])
    np.testing.assert_array_equal(seq.starts, [0, 0, 2, 2, 2])
