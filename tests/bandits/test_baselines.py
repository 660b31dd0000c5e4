"""Epsilon-greedy and uniform allocation baselines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import bandits


def test_epsilon_greedy_tries_each_arm_then_exploits():
    eg = bandits.epsilon_greedy(num_arms=4)
    params = eg.default_params.replace(epsilon=jnp.float32(0.0))
    state = eg.init(params)
    key = jax.random.key(0)
    select = jax.jit(eg.select, static_argnames="k")
    update = jax.jit(eg.update)
    rewards = jnp.array([0.1, 0.9, 0.4, 0.2])
    played = []
    for i in range(4):
        arm = select(jax.random.fold_in(key, i), state, params)
        played.append(int(arm))
        state = update(key, state, arm, rewards[arm], params)
    assert sorted(played) == [0, 1, 2, 3]  # untried arms come first
    np.testing.assert_allclose(eg.posterior_mean(state, params), rewards)
    assert int(select(key, state, params)) == 1  # then greedy
    assert list(np.asarray(select(key, state, params, k=2))) == [1, 2]


def test_epsilon_controls_exploration_rate():
    eg = bandits.epsilon_greedy(num_arms=5)
    params = eg.default_params.replace(epsilon=jnp.float32(0.3))
    state = eg.update(
        jax.random.key(0),
        eg.init(params, (20_000,)),
        jnp.broadcast_to(jnp.arange(5), (20_000, 5)),
        jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0, 0.0, 0.0]), (20_000, 5)),
        params,
    )
    arms = np.asarray(eg.select(jax.random.key(1), state, params))
    # greedy arm 2 with prob 1 - eps + eps / K
    assert abs((arms == 2).mean() - (0.7 + 0.3 / 5)) < 0.015
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 1\]"):
        eg.select(jax.random.key(1), state, params.replace(epsilon=jnp.float32(1.5)))


def test_uniform_is_uniform_and_tracks_empirical_means():
    un = bandits.uniform(num_arms=4)
    params = un.default_params
    state = un.init(params, (40_000,))
    arms = np.asarray(un.select(jax.random.key(2), state, params))
    counts = np.bincount(arms, minlength=4) / arms.size
    np.testing.assert_allclose(counts, 0.25, atol=0.01)
    top = np.asarray(un.select(jax.random.key(3), state, params, k=4))
    assert np.all(np.sort(top, -1) == np.arange(4))
    state = un.update(
        jax.random.key(4),
        un.init(params),
        jnp.array([0, 0, 3]),
        jnp.array([1.0, 0.0, 2.0]),
        params,
    )
    np.testing.assert_allclose(un.posterior_mean(state, params), [0.5, 0.0, 0.0, 2.0])
