"""The sim-to-real gap: returns, MMD and Wasserstein against NumPy / SciPy."""

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from convergence_jax.sim2real import (
    episode_returns,
    mmd2,
    return_gap,
    rollout,
    visited_states,
    wasserstein_1d,
    wasserstein_per_dim,
)


def numpy_mmd2(x, y, h):
    def k(a, b):
        d = ((a[:, None] - b[None]) ** 2).sum(-1)
        return np.exp(-d / (2 * h * h))

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def test_mmd_matches_numpy_and_masks_drop_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (rng.normal(size=(30, 3)) + 0.5).astype(np.float32)
    np.testing.assert_allclose(
        mmd2(x, y, bandwidth=1.3), numpy_mmd2(x, y, 1.3), rtol=1e-4
    )
    pooled = np.concatenate([x, y])
    d = np.sqrt(((pooled[:, None] - pooled[None]) ** 2).sum(-1))
    h = np.median(d[~np.eye(len(pooled), dtype=bool)])
    np.testing.assert_allclose(mmd2(x, y), numpy_mmd2(x, y, h), rtol=1e-3)
    # padding with junk rows that the mask drops changes nothing
    xp = np.concatenate([x, 100 + np.zeros((5, 3), np.float32)])
    mask = np.arange(45) < 40
    np.testing.assert_allclose(
        mmd2(xp, y, x_mask=mask, bandwidth=1.3), numpy_mmd2(x, y, 1.3), rtol=1e-4
    )
    assert float(mmd2(x, x, bandwidth=1.0)) < 1e-6


def test_wasserstein_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=50).astype(np.float32)
    y = rng.exponential(size=37).astype(np.float32)
    np.testing.assert_allclose(
        wasserstein_1d(x, y), stats.wasserstein_distance(x, y), rtol=1e-5
    )
    mask = rng.random(50) < 0.6
    np.testing.assert_allclose(
        wasserstein_1d(x, y, x_mask=mask),
        stats.wasserstein_distance(x[mask], y),
        rtol=1e-5,
    )
    xs, ys = rng.normal(size=(60, 3)), rng.normal(size=(45, 3)) * 2
    per_dim = wasserstein_per_dim(xs, ys)
    np.testing.assert_allclose(
        per_dim,
        [stats.wasserstein_distance(xs[:, i], ys[:, i]) for i in range(3)],
        rtol=1e-4,
    )


def always_left(obs, key):
    return jnp.zeros(obs.shape[0], jnp.int32)


def test_rollout_returns_match_a_python_loop_and_the_gap():
    env, nominal = gymnax.make("CartPole-v1")
    short = nominal.replace(length=0.2, polemass_length=0.02)
    key = jax.random.key(0)
    traj = rollout(key, env, nominal, always_left, 3, 40)
    returns = np.asarray(episode_returns(traj))
    # Reference: the same keys, stepped one environment at a time in Python.
    k_reset, k_run = jax.random.split(key)
    reset_keys = jax.random.split(k_reset, 3)
    step_keys = jax.random.split(k_run, 40)
    for e in range(3):
        _, state = env.reset(reset_keys[e], nominal)
        total = 0.0
        for t in range(40):
            k_env = jax.random.split(jax.random.split(step_keys[t])[1], 3)[e]
            _, state, r, term, trunc, _ = env.step(k_env, state, 0, nominal)
            total += float(r)
            if term or trunc:
                break
        assert returns[e] == total
    states, mask = visited_states(traj)
    assert states.shape == (120, 4) and int(mask.sum()) == int(returns.sum())
    traj_short = rollout(key, env, short, always_left, 3, 40)
    gap = return_gap(episode_returns(traj_short), returns)
    np.testing.assert_allclose(
        gap, np.mean(episode_returns(traj_short)) - returns.mean()
    )
    # A shorter pole falls faster: the state distributions differ.
    s2, m2 = visited_states(traj_short)
    assert float(mmd2(states, s2, mask, m2)) > 0
    assert np.all(np.asarray(wasserstein_per_dim(states, s2, mask, m2)) >= 0)


@pytest.mark.parametrize("fn", [wasserstein_1d, mmd2])
def test_identical_samples_are_at_distance_zero(fn):
    x = jnp.linspace(-1, 1, 20)
    assert float(fn(x, x)) < 1e-6
