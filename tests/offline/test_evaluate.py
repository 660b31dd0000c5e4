"""offline.evaluate: episode returns in a vmapped while_loop, normalized score."""

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.offline.evaluate import evaluate_policy, normalized_score


def reference_returns(key, env_id, action, num_episodes, max_steps=None):
    """One environment at a time on the host, with evaluate_policy's key schedule."""
    env, params = gymnax.make(env_id)
    limit = params.max_steps_in_episode if max_steps is None else max_steps
    k_reset, key = jax.random.split(key)
    reset_keys = jax.random.split(k_reset, num_episodes)
    states = [env.reset(k, params)[1] for k in reset_keys]
    returns = np.zeros(num_episodes)
    done = np.zeros(num_episodes, bool)
    t = 0
    while t < limit and not done.all():
        key, _, k_env = jax.random.split(key, 3)
        step_keys = jax.random.split(k_env, num_episodes)
        for i in range(num_episodes):
            _, states[i], r, term, trunc, _ = env.step(
                step_keys[i], states[i], action, params
            )
            if not done[i]:
                returns[i] += float(r)
            done[i] |= bool(term) | bool(trunc)
        t += 1
    return returns


def test_cartpole_matches_a_host_loop():
    key = jax.random.key(0)
    act = lambda obs, k: jnp.zeros(obs.shape[0], jnp.int32)
    returns = evaluate_policy(key, "CartPole-v1", act, 3)
    assert returns.shape == (3,)
    np.testing.assert_allclose(
        returns, reference_returns(key, "CartPole-v1", 0, 3), rtol=1e-6
    )
    # CartPole pays 1 per step: always pushing left falls within ~10 steps.
    assert (returns >= 8).all() and (returns <= 12).all()


def test_pendulum_runs_to_max_steps():
    key = jax.random.key(1)
    act = lambda obs, k: jnp.full((obs.shape[0], 1), 0.5)
    returns = evaluate_policy(key, "Pendulum-v1", act, 2, max_steps=7)
    np.testing.assert_allclose(
        returns,
        reference_returns(key, "Pendulum-v1", jnp.array([0.5]), 2, 7),
        rtol=1e-5,
    )
    full = evaluate_policy(key, "Pendulum-v1", act, 2)
    assert (full < returns).all()  # 200 steps of negative reward


def test_random_cartpole_and_a_greedy_policy():
    key = jax.random.key(2)
    random_act = lambda obs, k: jax.random.randint(k, obs.shape[:1], 0, 2)
    random = evaluate_policy(key, "CartPole-v1", random_act, 64)
    assert 15 < float(random.mean()) < 30  # D4RL-style random reference ~22
    # Push toward the side the pole leans to: a simple controller does much better.
    lean = lambda obs, k: (obs[:, 2] + obs[:, 3] > 0).astype(jnp.int32)
    assert float(evaluate_policy(key, "CartPole-v1", lean, 8).mean()) > 150


def test_inside_jit_and_vmap_over_keys_and_closure():
    def evaluate(key, threshold):
        act = lambda obs, k: (obs[:, 2] > threshold).astype(jnp.int32)
        return evaluate_policy(key, "CartPole-v1", act, 4)

    keys = jax.random.split(jax.random.key(3), 2)
    thresholds = jnp.array([0.0, 10.0])  # 10: always action 0
    out = jax.jit(jax.vmap(evaluate))(keys, thresholds)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out[1], evaluate(keys[1], 10.0))
    assert float(out[0].mean()) > float(out[1].mean())


def test_bad_input():
    act = lambda obs, k: jnp.zeros(obs.shape[0], jnp.int32)
    with pytest.raises(ValueError, match="did you mean CartPole-v1"):
        evaluate_policy(jax.random.key(0), "CartPole-v2", act, 2)
    with pytest.raises(ValueError, match="num_episodes must be >= 1"):
        evaluate_policy(jax.random.key(0), "CartPole-v1", act, 0)
    with pytest.raises(ValueError, match=r"\[B, 1\]"):
        evaluate_policy(jax.random.key(0), "Pendulum-v1", act, 2)
    with pytest.raises(ValueError, match=r"\[B\] = \[2\] integers"):
        evaluate_policy(
            jax.random.key(0), "CartPole-v1", lambda o, k: jnp.zeros((2, 2)), 2
        )


def test_normalized_score():
    assert normalized_score([10.0, 30.0], 10.0, 110.0) == pytest.approx(10.0)
    assert normalized_score(jnp.array(-150.0), -1200.0, -150.0) == pytest.approx(100)
    with pytest.raises(ValueError, match="undefined"):
        normalized_score([1.0], 5.0, 5.0)
    with pytest.raises(ValueError, match="empty"):
        normalized_score([], 0.0, 1.0)
