"""Exactness and behaviour of the fast Beta/Gamma samplers (KS tests vs SciPy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from scipy import stats

from convergence_jax import bandits
from convergence_jax.bandits import _sampling

N = 40_000
# A p-value this small happens by chance once in 10^5 tests; a real bias in the
# sampler at this sample size gives p-values of 1e-10 and below.
P_MIN = 1e-5


def ks_pvalue(x, cdf) -> float:
    return stats.kstest(np.asarray(x, np.float64), cdf).pvalue


# float32 resolves values near 0 finely but near 1 only to 6e-8: a case such as
# Beta(0.3, 0.05), with a third of its mass within 1e-7 of 1, cannot pass a KS test
# in float32 whatever the sampler; its mirror Beta(0.05, 0.3) can.
BETA_CASES = [
    (1.0, 1.0),
    (0.5, 0.5),
    (0.1, 3.0),
    (0.05, 0.3),
    (0.4, 0.6),
    (2.0, 5.0),
    (1.0, 30.0),
    (1e4, 1e4),
    (1e4, 3.0),
    (7.5, 0.7),
]


@pytest.fixture(scope="module")
def beta_draws():
    """One jitted call draws every case side by side (mixed parameters)."""
    a = jnp.repeat(jnp.array([c[0] for c in BETA_CASES]), N)
    b = jnp.repeat(jnp.array([c[1] for c in BETA_CASES]), N)
    x = jax.jit(bandits.sample_beta)(jax.random.key(0), a, b)
    return np.asarray(x).reshape(len(BETA_CASES), N)


@pytest.mark.parametrize("case", range(len(BETA_CASES)))
def test_beta_matches_scipy(beta_draws, case):
    a, b = BETA_CASES[case]
    x = beta_draws[case]
    assert np.all((x >= 0) & (x <= 1))
    assert ks_pvalue(x, stats.beta(a, b).cdf) > P_MIN


GAMMA_SHAPES = [0.01, 0.2, 0.5, 1.0, 1.5, 3.0, 40.0, 1e4]


@pytest.fixture(scope="module")
def log_gamma_draws():
    a = jnp.repeat(jnp.array(GAMMA_SHAPES), N)
    x = jax.jit(bandits.sample_log_gamma)(jax.random.key(1), a)
    return np.asarray(x).reshape(len(GAMMA_SHAPES), N)


@pytest.mark.parametrize("case", range(len(GAMMA_SHAPES)))
def test_log_gamma_matches_scipy(log_gamma_draws, case):
    # scipy.stats.loggamma(c) is the law of log X with X ~ Gamma(c): exact even
    # for a = 0.01, where X itself underflows float32 half of the time.
    a = GAMMA_SHAPES[case]
    assert ks_pvalue(log_gamma_draws[case], stats.loggamma(a).cdf) > P_MIN


@pytest.mark.parametrize("a", [0.5, 1.0, 3.0, 1e4])
def test_gamma_matches_scipy(a):
    x = bandits.sample_gamma(jax.random.key(2), jnp.full((N,), a))
    assert x.dtype == jnp.float32
    assert ks_pvalue(x, stats.gamma(a).cdf) > P_MIN


@pytest.mark.parametrize("alpha", [0.4, 2.0, 50.0])
def test_student_scale_is_student_t(alpha):
    x = bandits.sample_student_scale(jax.random.key(3), jnp.full((N,), alpha))
    t = np.asarray(x) * np.sqrt(alpha)
    assert ks_pvalue(t, stats.t(2 * alpha).cdf) > P_MIN


def test_standard_normal_matches_scipy():
    z = bandits.standard_normal(jax.random.key(4), (N,))
    assert z.shape == (N,) and z.dtype == jnp.float32
    assert ks_pvalue(z, stats.norm.cdf) > P_MIN


def test_large_array_path_with_compaction_is_exact():
    # > _TINY_SIZE elements: one full pass, rejected elements compacted and redrawn.
    n = 2 * _sampling._TINY_SIZE
    a = jnp.where(jnp.arange(n) % 2 == 0, 1.0, 0.3)
    b = jnp.where(jnp.arange(n) % 2 == 0, 1.0, 4.0)
    x = np.asarray(jax.jit(bandits.sample_beta)(jax.random.key(5), a, b))
    assert ks_pvalue(x[0::2], stats.beta(1.0, 1.0).cdf) > P_MIN
    assert ks_pvalue(x[1::2], stats.beta(0.3, 4.0).cdf) > P_MIN


def test_buffer_overflow_fallback_is_exact(monkeypatch):
    # A buffer far too small for the ~9% rejections of Beta(1, 1) forces the
    # full-size retry loop; the result must still be exact.
    monkeypatch.setattr(_sampling, "_BUFFER_DIVISOR", 100_000)
    n = _sampling._TINY_SIZE + 1000
    draw = _sampling._make_draw(_sampling._propose_beta)
    seed = jnp.array([7, 9], jnp.uint32)
    x = jax.jit(draw)(seed[0], seed[1], jnp.ones((n,)), jnp.ones((n,)))
    assert ks_pvalue(x, stats.uniform.cdf) > P_MIN


def test_shapes_broadcast_and_determinism():
    key = jax.random.key(6)
    a = jnp.ones((3, 1, 4))
    b = jnp.full((5, 1), 2.0)
    x = bandits.sample_beta(key, a, b)
    assert x.shape == (3, 5, 4) and x.dtype == jnp.float32
    np.testing.assert_array_equal(x, bandits.sample_beta(key, a, b))
    assert not np.array_equal(x, bandits.sample_beta(jax.random.key(7), a, b))
    assert bandits.sample_gamma(key, 2.0).shape == ()
    assert bandits.sample_beta(key, jnp.ones((0, 3)), 1.0).shape == (0, 3)


def test_vmap_over_keys_gives_independent_exact_draws():
    keys = jax.random.split(jax.random.key(8), 2000)
    a, b = jnp.array([0.5, 2.0, 9.0]), jnp.array([0.5, 3.0, 1.0])
    x = np.asarray(jax.jit(jax.vmap(bandits.sample_beta, (0, None, None)))(keys, a, b))
    assert x.shape == (2000, 3)
    for j in range(3):
        assert ks_pvalue(x[:, j], stats.beta(float(a[j]), float(b[j])).cdf) > P_MIN
    # different keys, different draws; vmap over parameters as well
    assert len(np.unique(x[:, 0])) == 2000
    y = jax.vmap(bandits.sample_gamma)(keys[:4], jnp.array([1.0, 2.0, 3.0, 4.0]))
    assert y.shape == (4,)


def test_vmap_lane_is_the_unbatched_draw_of_its_key():
    keys = jax.random.split(jax.random.key(12), 3)
    a = jnp.full((5,), 2.0)
    batched = np.asarray(jax.vmap(bandits.sample_beta, (0, None, None))(keys, a, 3.0))
    for j in range(3):  # what jax.random.beta guarantees
        np.testing.assert_array_equal(batched[j], bandits.sample_beta(keys[j], a, 3.0))


# Every sampler built on the exact driver, with one or two parameter arrays.
EXACT_SAMPLERS = {
    "beta": lambda key, a: bandits.sample_beta(key, a, jnp.flip(a, -1) + 0.5),
    "gamma": bandits.sample_gamma,
    "log_gamma": bandits.sample_log_gamma,
    "student_scale": bandits.sample_student_scale,
}


def lane_params(lanes: int, arms: int) -> jax.Array:
    """[lanes, arms] shapes around 1 (the highest rejection rates) and below 1."""
    grid = jnp.linspace(0.2, 3.0, lanes * arms).reshape(lanes, arms)
    return jnp.where(jnp.arange(arms) % 3 == 0, 1.0, grid)


@pytest.mark.parametrize("name", sorted(EXACT_SAMPLERS))
# 4 x 5,000 is past _TINY_SIZE in one flat vmapped problem (compacted retries)
# while each lane alone takes the small path: the draws must not depend on it.
@pytest.mark.parametrize("lanes, arms", [(6, 10), (4, 5000)])
def test_vmap_over_keys_and_params_equals_the_loop(name, lanes, arms):
    sample = EXACT_SAMPLERS[name]
    keys = jax.random.split(jax.random.key(20), lanes)
    a = lane_params(lanes, arms)
    batched = np.asarray(jax.vmap(sample)(keys, a))
    for j in range(lanes):
        np.testing.assert_array_equal(batched[j], sample(keys[j], a[j]))
    # jit changes nothing either
    np.testing.assert_array_equal(jax.jit(jax.vmap(sample))(keys, a), batched)


@pytest.mark.parametrize("name", sorted(EXACT_SAMPLERS))
def test_vmap_with_a_shared_key_equals_the_loop(name):
    # An unbatched key over batched parameters means what a Python loop calling
    # the sampler with that one key means: common random numbers across lanes.
    sample = EXACT_SAMPLERS[name]
    key = jax.random.key(21)
    a = lane_params(5, 7)
    batched = np.asarray(jax.vmap(sample, (None, 0))(key, a))
    for j in range(5):
        np.testing.assert_array_equal(batched[j], sample(key, a[j]))
    # lanes with the same key and the same parameters draw the same numbers
    same = np.asarray(jax.vmap(sample, (None, 0))(key, jnp.tile(a[:1], (3, 1))))
    for j in range(3):
        np.testing.assert_array_equal(same[j], batched[0])


def test_vmap_over_a_non_leading_axis_equals_the_loop():
    key = jax.random.key(22)
    a = lane_params(4, 6)  # lanes along axis 1: six lanes of four
    batched = np.asarray(jax.vmap(bandits.sample_beta, (None, 1, None), 1)(key, a, 2.0))
    for j in range(6):
        np.testing.assert_array_equal(
            batched[:, j], bandits.sample_beta(key, a[:, j], 2.0)
        )


def test_nested_vmap_equals_the_double_loop():
    # outer: keys; inner: parameters under the outer lane's (shared) key
    keys = jax.random.split(jax.random.key(23), 3)
    a = lane_params(4, 5)
    nested = jax.jit(
        jax.vmap(jax.vmap(bandits.sample_beta, (None, 0, None)), (0, None, None))
    )
    out = np.asarray(nested(keys, a, 0.8))
    assert out.shape == (3, 4, 5)
    for i in range(3):
        for j in range(4):
            np.testing.assert_array_equal(
                out[i, j], bandits.sample_beta(keys[i], a[j], 0.8)
            )
    # both levels over keys (a [3, 2] grid), parameters batched at the inner one
    grid = jax.random.split(jax.random.key(24), (3, 2))
    b = lane_params(2, 5)
    both = jax.vmap(jax.vmap(bandits.sample_gamma), (0, None))(grid, b)
    for i in range(3):
        for j in range(2):
            np.testing.assert_array_equal(
                both[i, j], bandits.sample_gamma(grid[i, j], b[j])
            )


@pytest.mark.parametrize("algorithm", ["beta_bernoulli", "gaussian"])
def test_thompson_sample_vmapped_over_keys_equals_each_key(algorithm):
    ts = getattr(bandits, algorithm)(10)
    params = ts.default_params
    state = ts.init(params)
    arms = jnp.array([0, 1, 1, 2, 3, 3, 3, 9])
    rewards = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.5, 1.0, 0.2])
    state = ts.update(jax.random.key(1), state, arms, rewards, params)
    keys = jax.random.split(jax.random.key(25), 6)
    draws = np.asarray(
        jax.jit(jax.vmap(ts.sample, (0, None, None)))(keys, state, params)
    )
    for j in range(6):
        single = np.asarray(ts.sample(keys[j], state, params))
        if algorithm == "beta_bernoulli":  # the sampler's output itself
            np.testing.assert_array_equal(draws[j], single)
        else:
            # mu_n + sqrt(beta_n / kappa_n) t: t is equal bit for bit (see
            # student_scale above), but XLA:CPU may fuse this multiply-add into
            # an FMA at one array size and not at another (an ulp, as with
            # jax.random), so this one is compared to float32 rounding.
            np.testing.assert_allclose(draws[j], single, rtol=1e-6, atol=1e-7)


def test_inside_scan_and_nested_vmap():
    def step(carry, key):
        draw = bandits.sample_beta(key, carry, 2.0)
        return carry + draw, draw

    keys = jax.random.split(jax.random.key(9), 50)
    final, draws = jax.jit(lambda k: lax.scan(step, jnp.ones(4), k))(keys)
    assert draws.shape == (50, 4) and np.all((draws >= 0) & (draws <= 1))
    grid = jax.random.split(jax.random.key(10), (3, 2))
    nested = jax.vmap(jax.vmap(lambda k: bandits.sample_beta(k, jnp.ones(5), 1.0)))
    out = nested(grid)
    assert out.shape == (3, 2, 5)
    assert len(np.unique(np.asarray(out))) == 30


def test_approx_beta_moments_and_range():
    a, b = 30.0, 70.0
    x = np.asarray(bandits.approx_beta(jax.random.key(11), jnp.full((N,), a), b))
    assert np.all((x >= 0) & (x <= 1))
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(x.mean() - mean) < 5 * np.sqrt(var / N)
    assert abs(x.var() / var - 1) < 0.05


def test_bad_input_is_rejected_with_clear_messages():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="a must be > 0"):
        bandits.sample_beta(key, jnp.array([1.0, 0.0]), 1.0)
    with pytest.raises(ValueError, match="b must be > 0"):
        bandits.sample_beta(key, 1.0, -2.0)
    with pytest.raises(ValueError, match="a must be > 0 and finite"):
        bandits.sample_gamma(key, jnp.inf)
    with pytest.raises(ValueError, match="a must be > 0"):
        bandits.sample_gamma(key, jnp.nan)
    with pytest.raises(TypeError, match="PRNG key"):
        bandits.sample_gamma(0, 1.0)
    with pytest.raises(ValueError, match="one PRNG key"):
        bandits.sample_gamma(jax.random.split(key, 2), 1.0)
    with pytest.raises(TypeError, match="real array"):
        bandits.sample_gamma(key, jnp.array([1 + 1j]))
    # Under jit values cannot be checked: bad entries come out NaN, never hang.
    x = jax.jit(bandits.sample_beta)(key, jnp.array([1.0, 0.0, -1.0, jnp.nan]), 1.0)
    assert np.isfinite(x[0]) and np.all(np.isnan(x[1:]))


def test_other_key_implementations_are_accepted():
    key = jax.random.key(0, impl="rbg")
    x = bandits.sample_beta(key, jnp.full((N,), 2.0), 3.0)
    assert ks_pvalue(x, stats.beta(2.0, 3.0).cdf) > P_MIN
