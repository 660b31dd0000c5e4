"""Beta-Bernoulli and Normal-Gamma Thompson sampling (and the shared interface)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from convergence_jax import bandits

K = 5

# Every algorithm over arms (Thompson sampling and the baselines), by name.
ALGORITHMS = {
    **{name: make for name, make in bandits.BANDITS.items()},
    "beta_bernoulli_approx": lambda num_arms: bandits.beta_bernoulli(
        num_arms, sampler="approx"
    ),
    "beta_bernoulli_trick": lambda num_arms: bandits.beta_bernoulli(
        num_arms, reward_update="bernoulli"
    ),
    "gaussian_approx": lambda num_arms: bandits.gaussian(num_arms, sampler="approx"),
    **bandits.BASELINES,
}


def random_observations(key, batch_shape, m):
    k1, k2 = jax.random.split(key)
    arms = jax.random.randint(k1, batch_shape + (m,), 0, K)
    rewards = jax.random.uniform(k2, batch_shape + (m,))
    return arms, rewards


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_interface_shapes_and_zero_state_is_prior(name):
    algo = ALGORITHMS[name](num_arms=K)
    assert isinstance(algo, bandits.BanditAlgorithm)
    params = algo.default_params
    key = jax.random.key(0)
    state = algo.init(params, batch_shape=(3, 2))
    for leaf in jax.tree.leaves(state):
        assert leaf.shape == (3, 2, K) and leaf.dtype == jnp.float32
        assert np.all(leaf == 0)
    # Unbatched: one statistic per arm in every leaf (whatever the family names them).
    unbatched = jax.tree.leaves(algo.init(params))
    assert unbatched and all(leaf.shape == (K,) for leaf in unbatched)
    assert algo.sample(key, state, params).shape == (3, 2, K)
    arms = algo.select(key, state, params)
    assert arms.shape == (3, 2) and arms.dtype == jnp.int32
    top = algo.select(key, state, params, k=3)
    assert top.shape == (3, 2, 3) and top.dtype == jnp.int32
    arms2, rewards = random_observations(key, (3, 2), 4)
    updated = algo.update(key, state, arms2, rewards, params)
    assert jax.tree.structure(updated) == jax.tree.structure(state)
    assert algo.posterior_mean(updated, params).shape == (3, 2, K)
    # The contract mab_evolution relies on: zeros = prior, arms move with [..., idx].
    reset = jax.tree.map(jnp.zeros_like, updated)
    np.testing.assert_allclose(
        algo.posterior_mean(reset, params), algo.posterior_mean(state, params)
    )
    perm = jnp.array([4, 3, 2, 1, 0])
    moved = jax.tree.map(lambda x: x[..., perm], updated)
    np.testing.assert_allclose(
        algo.posterior_mean(moved, params),
        algo.posterior_mean(updated, params)[..., perm],
        rtol=1e-6,
    )


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_top_k_is_top_of_one_draw(name):
    algo = ALGORITHMS[name](num_arms=K)
    params = algo.default_params
    key, k_obs = jax.random.split(jax.random.key(1))
    arms, rewards = random_observations(k_obs, (64,), 12)
    state = algo.update(k_obs, algo.init(params, (64,)), arms, rewards, params)
    draw = np.asarray(algo.sample(key, state, params))
    top = np.asarray(algo.select(key, state, params, k=3))
    expected = np.argsort(-draw, axis=-1, kind="stable")[:, :3]
    np.testing.assert_array_equal(top, expected)
    np.testing.assert_array_equal(algo.select(key, state, params), expected[:, 0])
    assert np.all(np.sort(top, axis=-1)[:, 1:] != np.sort(top, axis=-1)[:, :-1])
    full = np.asarray(algo.select(key, state, params, k=K))
    assert np.all(np.sort(full, axis=-1) == np.arange(K))


def test_beta_posterior_update_by_hand_with_duplicates_and_discount():
    ts = bandits.beta_bernoulli(num_arms=3)
    params = ts.default_params.replace(
        prior_alpha=jnp.float32(2.0), prior_beta=jnp.float32(0.5)
    )
    key = jax.random.key(0)
    state = ts.init(params)
    # M = 4 updates at once; arm 0 appears twice and both count.
    state = ts.update(
        key, state, jnp.array([0, 0, 2, 1]), jnp.array([1.0, 0.25, 0.0, 0.5]), params
    )
    np.testing.assert_allclose(state.successes, [1.25, 0.5, 0.0])
    np.testing.assert_allclose(state.failures, [0.75, 0.5, 1.0])
    np.testing.assert_allclose(
        ts.posterior_mean(state, params),
        [(2 + 1.25) / (2 + 1.25 + 0.5 + 0.75), (2.5) / 3.5, 2 / 3.5],
        rtol=1e-6,
    )
    # Discounting: stats are multiplied by gamma first, then the new data is added.
    params = params.replace(gamma=jnp.float32(0.5))
    state = ts.update(key, state, jnp.array(1), jnp.array(1.0), params)
    np.testing.assert_allclose(state.successes, [0.625, 1.25, 0.0])
    np.testing.assert_allclose(state.failures, [0.375, 0.25, 0.5])
    # With no new data, repeated discounting decays the posterior to the prior.
    for _ in range(60):
        state = ts.update(
            key, state, jnp.zeros((0,), jnp.int32), jnp.zeros((0,)), params
        )
    np.testing.assert_allclose(ts.posterior_mean(state, params), 2 / 2.5, rtol=1e-6)


def test_batched_updates_match_a_loop_of_single_updates():
    ts = bandits.beta_bernoulli(num_arms=K)
    params = ts.default_params.replace(gamma=jnp.float32(0.9))
    arms, rewards = random_observations(jax.random.key(3), (6,), 10)
    batched = ts.update(jax.random.key(0), ts.init(params, (6,)), arms, rewards, params)
    # Reference in NumPy: one discount, then the sum of every observation.
    succ = np.zeros((6, K))
    fail = np.zeros((6, K))
    np.add.at(succ, (np.arange(6)[:, None], np.asarray(arms)), np.asarray(rewards))
    np.add.at(fail, (np.arange(6)[:, None], np.asarray(arms)), 1 - np.asarray(rewards))
    np.testing.assert_allclose(batched.successes, succ, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched.failures, fail, rtol=1e-5, atol=1e-6)


def test_bernoulli_trick_draws_binary_rewards_with_the_right_mean():
    ts = bandits.beta_bernoulli(num_arms=1, reward_update="bernoulli")
    params = ts.default_params
    state = ts.init(params, (20_000,))
    zeros = jnp.zeros((20_000,), jnp.int32)
    state = ts.update(jax.random.key(4), state, zeros, jnp.full((20_000,), 0.3), params)
    s = np.asarray(state.successes[:, 0])
    assert set(np.unique(s)) == {0.0, 1.0}
    np.testing.assert_allclose(s + np.asarray(state.failures[:, 0]), 1.0)
    assert abs(s.mean() - 0.3) < 5 * np.sqrt(0.21 / 20_000)


def murphy_normal_gamma(x, mu0, kappa0, alpha0, beta0):
    """Murphy (2007) eqs. 86-89 from the raw data, in float64."""
    x = np.asarray(x, np.float64)
    n = len(x)
    xbar = x.mean() if n else 0.0
    kappa = kappa0 + n
    mu = (kappa0 * mu0 + n * xbar) / kappa
    alpha = alpha0 + n / 2
    beta = (
        beta0
        + 0.5 * ((x - xbar) ** 2).sum()
        + kappa0 * n * (xbar - mu0) ** 2 / (2 * kappa)
    )
    return mu, kappa, alpha, beta


def test_gaussian_posterior_matches_murphy_formulas():
    g = bandits.gaussian(num_arms=2)
    params = g.default_params.replace(
        prior_mean=jnp.float32(1.0),
        prior_kappa=jnp.float32(2.0),
        prior_alpha=jnp.float32(3.0),
        prior_beta=jnp.float32(0.5),
    )
    rng = np.random.default_rng(0)
    data = rng.normal(100.0, 2.0, size=40)  # large mean: Welford stays accurate
    arms = np.array([0] * 25 + [1] * 15)
    rng.shuffle(arms)
    key = jax.random.key(0)
    state = g.init(params)
    # in three batches of different sizes, with duplicates inside each batch
    for lo, hi in [(0, 7), (7, 8), (8, 40)]:
        state = g.update(
            key, state, jnp.asarray(arms[lo:hi]), jnp.asarray(data[lo:hi]), params
        )
    for arm in range(2):
        x = data[arms == arm]
        mu, kappa, alpha, beta = murphy_normal_gamma(x, 1.0, 2.0, 3.0, 0.5)
        assert float(state.count[arm]) == len(x)
        np.testing.assert_allclose(state.mean[arm], x.mean(), rtol=1e-6)
        np.testing.assert_allclose(
            state.m2[arm], ((x - x.mean()) ** 2).sum(), rtol=1e-4
        )
        np.testing.assert_allclose(g.posterior_mean(state, params)[arm], mu, rtol=1e-6)
    # The exact sampler's draws have the Student-t marginal (Murphy eq. 97).
    many = jax.tree.map(lambda x: jnp.broadcast_to(x, (20_000, 2)), state)
    draws = jax.jit(g.sample)(key, many, params)
    x = data[arms == 0]
    mu, kappa, alpha, beta = murphy_normal_gamma(x, 1.0, 2.0, 3.0, 0.5)
    from scipy import stats

    scale = np.sqrt(beta / (alpha * kappa))
    p = stats.kstest(
        np.asarray(draws[:, 0], np.float64), stats.t(2 * alpha, mu, scale).cdf
    )
    assert p.pvalue > 1e-5


def test_gaussian_discount_scales_count_and_m2_only():
    g = bandits.gaussian(num_arms=1)
    params = g.default_params
    key = jax.random.key(0)
    state = g.update(
        key, g.init(params), jnp.zeros(3, jnp.int32), jnp.array([1.0, 2.0, 6.0]), params
    )
    params = params.replace(gamma=jnp.float32(0.5))
    state = g.update(key, state, jnp.zeros(1, jnp.int32), jnp.array([3.0]), params)
    # Raw discounted sums: n = 0.5 * 3 + 1, S = 0.5 * 9 + 3, Q = 0.5 * 41 + 9.
    n, total, sq = 2.5, 7.5, 29.5
    np.testing.assert_allclose(state.count, [n])
    np.testing.assert_allclose(state.mean, [total / n], rtol=1e-6)
    np.testing.assert_allclose(state.m2, [sq - total**2 / n], rtol=1e-5)


@pytest.mark.parametrize("name", ["beta_bernoulli", "gaussian"])
def test_jit_scan_vmap_and_no_recompile_when_numbers_change(name):
    algo = bandits.BANDITS[name](num_arms=K)
    params = algo.default_params

    def run(key, params):
        def step(state, key):
            k_sel, k_rew, k_upd = jax.random.split(key, 3)
            arms = algo.select(k_sel, state, params, k=2)
            rewards = jax.random.uniform(k_rew, arms.shape)
            state = algo.update(k_upd, state, arms, rewards, params)
            return state, arms

        state = algo.init(params, (4,))
        state, arms = lax.scan(step, state, jax.random.split(key, 20))
        return algo.posterior_mean(state, params), arms

    traces = []

    def counted(key, params):
        traces.append(1)
        return run(key, params)

    sweep = jax.jit(jax.vmap(counted, in_axes=(0, 0)))
    keys = jax.random.split(jax.random.key(0), 3)
    gammas = jnp.array([1.0, 0.9, 0.5], jnp.float32)
    batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (3,)), params).replace(
        gamma=gammas
    )
    means, arms = sweep(keys, batch)
    assert means.shape == (3, 4, K) and arms.shape == (3, 20, 4, 2)
    # New numbers, same shapes: no retrace, no recompile.
    batch2 = batch.replace(prior_alpha=batch.prior_alpha * 2.0, gamma=gammas[::-1])
    sweep(jax.random.split(jax.random.key(1), 3), batch2)
    assert len(traces) == 1
    assert sweep._cache_size() == 1
    # Sweeping gamma changes the result (it is really used): the same keys with
    # every gamma = 1 change the runs whose gamma was not 1, and only those.
    undiscounted, _ = sweep(keys, batch.replace(gamma=jnp.ones(3, jnp.float32)))
    np.testing.assert_array_equal(undiscounted[0], means[0])  # gamma was 1 already
    assert not np.allclose(undiscounted[1], means[1])  # was 0.9
    assert not np.allclose(undiscounted[2], means[2])  # was 0.5
    assert sweep._cache_size() == 1


def test_bad_input_is_rejected_with_clear_messages():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_arms must be >= 1"):
        bandits.beta_bernoulli(num_arms=0)
    with pytest.raises(ValueError, match="num_arms must be >= 1"):
        bandits.gaussian(num_arms=-3)
    with pytest.raises(TypeError, match="num_arms must be an int"):
        bandits.gaussian(num_arms=2.5)
    with pytest.raises(ValueError, match="reward_update must be one of"):
        bandits.beta_bernoulli(3, reward_update="binary")
    with pytest.raises(ValueError, match="sampler must be one of"):
        bandits.gaussian(3, sampler="fast")
    ts = bandits.beta_bernoulli(num_arms=3)
    params = ts.default_params
    state = ts.init(params, (2,))
    with pytest.raises(ValueError, match=r"k must be in \[1, num_arms=3\]"):
        ts.select(key, state, params, k=4)
    with pytest.raises(ValueError, match=r"rewards must be in \[0, 1\]"):
        ts.update(key, state, jnp.array([0, 1]), jnp.array([0.5, 1.5]), params)
    with pytest.raises(ValueError, match=r"arms must be in \[0, 3\)"):
        ts.update(key, state, jnp.array([0, 3]), jnp.array([0.5, 0.5]), params)
    with pytest.raises(ValueError, match="same shape"):
        ts.update(key, state, jnp.array([0, 1]), jnp.array([0.5]), params)
    with pytest.raises(ValueError, match="batch_shape"):
        ts.update(key, state, jnp.array([0, 1, 2]), jnp.array([0.5, 0.5, 0.5]), params)
    with pytest.raises(TypeError, match="arms must be integers"):
        ts.update(key, state, jnp.array([0.0, 1.0]), jnp.array([0.5, 0.5]), params)
    for gamma in (0.0, 1.5, -0.1):
        bad = params.replace(gamma=jnp.float32(gamma))
        with pytest.raises(ValueError, match=r"gamma \(discount\) must be in \(0, 1\]"):
            ts.update(key, state, jnp.array([0, 1]), jnp.array([0.5, 0.5]), bad)
    with pytest.raises(ValueError, match="prior_alpha must be > 0"):
        ts.sample(key, state, params.replace(prior_alpha=jnp.float32(0.0)))
    with pytest.raises(ValueError, match="state leaves must have shape"):
        ts.sample(key, bandits.beta_bernoulli(4).init(params), params)
    g = bandits.gaussian(num_arms=3)
    gs = g.init(g.default_params)
    with pytest.raises(ValueError, match="rewards must be finite"):
        g.update(key, gs, jnp.array([0]), jnp.array([jnp.nan]), g.default_params)
    with pytest.raises(ValueError, match="prior_kappa must be > 0"):
        g.init(g.default_params.replace(prior_kappa=jnp.float32(-1.0)))
    # Under jit values are not checked: out-of-range rewards are clipped.
    clipped = jax.jit(ts.update)(
        key, state, jnp.array([0, 1]), jnp.array([-2.0, 3.0]), params
    )
    np.testing.assert_allclose(clipped.successes, [[0, 0, 0], [0, 1, 0]])
