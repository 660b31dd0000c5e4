"""Linear (contextual) Thompson sampling vs NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from convergence_jax import bandits

D = 4


def test_posterior_mean_matches_numpy_solve_with_discount():
    lin = bandits.linear(dim=D)
    params = lin.default_params.replace(
        regularization=jnp.float32(0.7), gamma=jnp.float32(0.8)
    )
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(m, D)) for m in (3, 1, 6)]
    rewards = [rng.normal(size=len(x)) for x in batches]
    key = jax.random.key(0)
    state = lin.init(params)
    gram, f = np.zeros((D, D)), np.zeros(D)
    for x, r in zip(batches, rewards, strict=True):
        if len(x) == 1:  # a single observation: contexts [d], reward []
            state = lin.update(key, state, jnp.asarray(x[0]), jnp.asarray(r[0]), params)
        else:
            state = lin.update(key, state, jnp.asarray(x), jnp.asarray(r), params)
        gram, f = 0.8 * gram + x.T @ x, 0.8 * f + x.T @ r
    np.testing.assert_allclose(state.gram, gram, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state.f, f, rtol=1e-5, atol=1e-5)
    expected = np.linalg.solve(0.7 * np.eye(D) + gram, f)
    np.testing.assert_allclose(lin.posterior_mean(state, params), expected, rtol=1e-4)


def test_posterior_draws_have_mean_mu_hat_and_covariance_v2_binv():
    lin = bandits.linear(dim=D)
    params = lin.default_params.replace(noise_scale=jnp.float32(0.3))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, D))
    r = x @ np.array([1.0, -0.5, 0.2, 0.0]) + 0.1 * rng.normal(size=30)
    state = lin.update(
        jax.random.key(0), lin.init(params), jnp.asarray(x), jnp.asarray(r), params
    )
    n = 20_000
    many = jax.tree.map(lambda s: jnp.broadcast_to(s, (n,) + s.shape), state)
    theta = np.asarray(jax.jit(lin.sample)(jax.random.key(1), many, params), np.float64)
    b = np.eye(D) + x.T @ x
    mu = np.linalg.solve(b, x.T @ r)
    cov = 0.09 * np.linalg.inv(b)
    np.testing.assert_allclose(
        theta.mean(0), mu, atol=5 * np.sqrt(np.diag(cov).max() / n)
    )
    np.testing.assert_allclose(np.cov(theta.T), cov, rtol=0.05, atol=0.05 * cov.max())


def test_select_is_argmax_and_top_k_of_contexts_at_theta():
    lin = bandits.linear(dim=D)
    params = lin.default_params
    key = jax.random.key(2)
    state = lin.init(params, batch_shape=(8,))
    contexts = jax.random.normal(jax.random.key(3), (8, 6, D))
    theta = lin.sample(key, state, params)
    scores = np.einsum("bkd,bd->bk", contexts, theta)
    np.testing.assert_array_equal(
        lin.select(key, state, params, contexts), scores.argmax(-1)
    )
    top = lin.select(key, state, params, contexts, k=3)
    np.testing.assert_array_equal(top, np.argsort(-scores, axis=-1)[:, :3])


def test_learns_a_linear_reward_in_one_scan_vmapped_over_seeds_and_params():
    lin = bandits.linear(dim=D)
    true_theta = jnp.array([0.8, -0.4, 0.3, 0.1])
    arms = 10

    def run(key, params):
        def step(state, key):
            k_ctx, k_sel, k_rew = jax.random.split(key, 3)
            contexts = jax.random.normal(k_ctx, (arms, D))
            arm = lin.select(k_sel, state, params, contexts)
            x = contexts[arm]
            reward = x @ true_theta + 0.1 * jax.random.normal(k_rew)
            regret = jnp.max(contexts @ true_theta) - x @ true_theta
            return lin.update(k_rew, state, x, reward, params), regret

        state, regret = lax.scan(step, lin.init(params), jax.random.split(key, 300))
        return lin.posterior_mean(state, params), regret

    traces = []

    def counted(key, params):
        traces.append(1)
        return run(key, params)

    sweep = jax.jit(jax.vmap(counted))
    keys = jax.random.split(jax.random.key(4), 4)
    params = jax.tree.map(lambda x: jnp.full((4,), x), lin.default_params)
    params = params.replace(noise_scale=jnp.array([0.1, 0.3, 0.5, 1.0]))
    mean, regret = sweep(keys, params)
    np.testing.assert_allclose(mean, np.broadcast_to(true_theta, (4, D)), atol=0.05)
    # Regret per step falls: the last 100 steps cost far less than the first 100.
    assert np.all(regret[:, -100:].sum(1) < 0.25 * regret[:, :100].sum(1))
    sweep(keys, params.replace(regularization=params.regularization * 3.0))
    assert len(traces) == 1 and sweep._cache_size() == 1


def test_bad_input_is_rejected_with_clear_messages():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="dim must be an int >= 1"):
        bandits.linear(dim=0)
    lin = bandits.linear(dim=3)
    params = lin.default_params
    state = lin.init(params, (2,))
    with pytest.raises(ValueError, match="contexts must be batch_shape"):
        lin.select(key, state, params, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match="last dimension 3"):
        lin.select(key, state, params, jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match=r"k must be in \[1, num_arms=5\]"):
        lin.select(key, state, params, jnp.ones((2, 5, 3)), k=6)
    with pytest.raises(ValueError, match="expected contexts"):
        lin.update(key, state, jnp.ones((2, 3)), jnp.ones((3,)), params)
    with pytest.raises(ValueError, match="must be finite"):
        lin.update(key, state, jnp.ones((2, 3)), jnp.array([1.0, jnp.inf]), params)
    with pytest.raises(ValueError, match="regularization must be > 0"):
        lin.init(params.replace(regularization=jnp.float32(0.0)))
    with pytest.raises(ValueError, match=r"gamma \(discount\) must be in \(0, 1\]"):
        lin.update(key, state, jnp.ones((2, 3)), jnp.ones(2), params.replace(gamma=2.0))
    with pytest.raises(ValueError, match="state.f must be"):
        lin.sample(key, bandits.linear(dim=4).init(params), params)
