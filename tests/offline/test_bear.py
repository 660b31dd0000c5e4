"""BEAR: the MMD (gaussian and laplacian kernels) vs NumPy, the Lagrange
multiplier's dual step and clamping, the warm-up, the compiled program (jit,
vmap, no recompile, 4 devices == 1), bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.offline import bear
from convergence_jax.offline._common import hparam_grid
from tests.offline import _devices, _tiny

SMALL = dict(vae_hidden_sizes=(16,), num_mmd_samples=3, num_target_samples=4)


def numpy_mmd(x, y, sigma, kernel):
    """The authors' mmd_loss_{laplacian,gaussian} for one state (divisor 2 sigma)."""

    def k(a, b):
        diff = a[:, None, :] - b[None, :, :]
        dist = np.abs(diff).sum(-1) if kernel == "laplacian" else (diff**2).sum(-1)
        return np.exp(-dist / (2.0 * sigma)).mean()

    return np.sqrt(k(x, x) + k(y, y) - 2.0 * k(x, y) + 1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian"])
def test_mmd_matches_numpy(kernel):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 2)).astype(np.float32)
    y = (rng.normal(size=(4, 2)) + 1.0).astype(np.float32)
    for sigma in (0.5, 10.0):
        np.testing.assert_allclose(
            bear.mmd(x, y, sigma, kernel), numpy_mmd(x, y, sigma, kernel), rtol=1e-5
        )
    # symmetric; sqrt(1e-6) between a sample set and itself
    np.testing.assert_allclose(
        bear.mmd(x, y, 2.0, kernel), bear.mmd(y, x, 2.0, kernel), rtol=1e-6
    )
    np.testing.assert_allclose(bear.mmd(x, x, 2.0, kernel), 1e-3, rtol=1e-3)
    # the kernel divides by 2 sigma (not 2 sigma^2): k(0, 1) = exp(-1 / (2 sigma))
    one = jnp.ones(1)
    k = bear.KERNELS[kernel](jnp.zeros(1), one, 4.0)
    np.testing.assert_allclose(k, np.exp(-1.0 / 8.0), rtol=1e-6)
    with pytest.raises(ValueError, match="kernel must be one of"):
        bear.mmd(x, y, 1.0, "cosine")
    with pytest.raises(AssertionError):
        bear.mmd(x, y[:, :1], 1.0, kernel)


def test_dual_step_raises_alpha_above_the_threshold_and_clamps():
    above = jnp.array([0.3, 0.2])  # mean MMD 0.25 > epsilon 0.05
    below = jnp.array([0.01, 0.02])
    g_above = jax.grad(bear.bear_alpha_loss)(jnp.float32(0.0), above, 0.05)
    g_below = jax.grad(bear.bear_alpha_loss)(jnp.float32(0.0), below, 0.05)
    np.testing.assert_allclose(g_above, -(0.25 - 0.05), rtol=1e-6)  # descent: up
    np.testing.assert_allclose(g_below, -(0.015 - 0.05), rtol=1e-5)  # descent: down
    np.testing.assert_allclose(
        bear.clamp_log_alpha(jnp.array([-7.0, 0.3, 12.0]), -5.0, 10.0),
        [-5.0, 0.3, 10.0],
    )
    # the actor loss: alpha * MMD while warm, minus Q after; no gradient to alpha
    q, d = jnp.array([1.0, 3.0]), jnp.array([0.5, 0.1])
    log_alpha = jnp.log(jnp.float32(2.0))
    warm = bear.bear_actor_loss(q, d, log_alpha, jnp.bool_(True))
    after = bear.bear_actor_loss(q, d, log_alpha, jnp.bool_(False))
    np.testing.assert_allclose(warm, 2.0 * 0.3, rtol=1e-6)
    np.testing.assert_allclose(after, 2.0 * 0.3 - 2.0, rtol=1e-6)
    assert float(jax.grad(bear.bear_actor_loss, 2)(q, d, log_alpha, False)) == 0.0


def test_program_warm_up_clamping_jit_vmap_no_recompile():
    # one jit of a vmap over (seed, hparams) pairs: (seed 0, epsilon 0), (seed 1,
    # epsilon 0), (seed 0, epsilon 100)
    data = _tiny.transitions(False)
    config = bear.BEARConfig(
        **{**_tiny.TINY, "num_steps": 8}, **SMALL, warmup_steps=4,
        alpha_learning_rate=3.0,
    )  # fmt: skip
    program = bear.make_bear(config, _tiny.OBS_DIM, _tiny.CONTINUOUS)
    train = jax.jit(jax.vmap(program.train, (0, None, 0)))
    seeds = jax.random.split(jax.random.key(0), 2)
    keys = jnp.stack([seeds[0], seeds[1], seeds[0]])
    grid = hparam_grid(program.default_hparams, alpha_threshold=[0.0, 0.0, 100.0])
    states, m = train(keys, data, grid)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in m.values())
    w = states.actor["params"]["MLP_0"]["Dense_0"]["kernel"]  # alpha moves it
    assert not np.allclose(w[0], w[1]) and not np.allclose(w[0], w[2])
    np.testing.assert_array_equal(m["warm"][0], [1, 1, 1, 1, 0, 0, 0, 0])
    # epsilon 0: the MMD is always above it, alpha climbs to the clamp e^10
    assert np.all(np.diff(np.asarray(m["alpha"][0])) >= 0)
    np.testing.assert_allclose(states.log_alpha[:2], 10.0)
    # epsilon far above the MMD: alpha falls to the clamp e^-5
    np.testing.assert_allclose(states.log_alpha[2], -5.0)
    # while warm the actor loss is alpha (before the dual step) times the MMD
    alpha, mmd = np.asarray(m["alpha"][0]), np.asarray(m["mmd"][0])
    alpha_before = np.concatenate([[1.0], alpha[:-1]])
    np.testing.assert_allclose(
        m["actor_loss"][0, :4], alpha_before[:4] * mmd[:4], rtol=1e-4
    )
    after = alpha_before[4:] * mmd[4:] - np.asarray(m["q_policy"][0, 4:])
    np.testing.assert_allclose(m["actor_loss"][0, 4:], after, rtol=1e-4, atol=1e-4)
    # new numbers, a new dataset of the same shapes: no new compilation
    train(keys, _tiny.transitions(False, seed=1), jax.tree.map(lambda x: x * 0.5, grid))
    assert train._cache_size() == 1
    actions = jax.jit(program.policy)(
        jax.tree.map(lambda x: x[0], states), data.observations[:5], jax.random.key(2)
    )
    assert actions.shape == (5, 1) and np.all(np.abs(np.asarray(actions)) <= 2.0)


def test_four_devices_equal_one_device():
    # one warm-up update, then a full one
    def make(devices):
        config = bear.BEARConfig(
            **_tiny.TINY, **SMALL, warmup_steps=1, num_devices=devices
        )
        return bear.make_bear(config, _tiny.OBS_DIM, _tiny.CONTINUOUS)

    _devices.assert_updates_match(make, _tiny.transitions(False))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel": "rbf"}, "kernel: expected one of"),
        ({"log_alpha_min": 10.0}, "must be below log_alpha_max"),
        ({"num_mmd_samples": 0}, "num_mmd_samples: expected an int >= 1"),
        ({"mmd_sigma": 0.0}, "mmd_sigma: expected > 0"),
        ({"warmup_steps": -1}, "warmup_steps: expected >= 0"),
        ({"tau": 2.0}, "tau: expected in"),
    ],
)
def test_bad_config_fails_before_compiling(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bear.make_bear(bear.BEARConfig(**kwargs), _tiny.OBS_DIM, _tiny.CONTINUOUS)


def test_discrete_actions_and_wrong_datasets_are_rejected():
    with pytest.raises(ValueError, match="BEAR is for continuous actions"):
        bear.make_bear(bear.BEARConfig(), _tiny.OBS_DIM, _tiny.DISCRETE)
    program = bear.make_bear(
        bear.BEARConfig(**_tiny.TINY, **SMALL), _tiny.OBS_DIM, _tiny.CONTINUOUS
    )
    with pytest.raises(ValueError, match="continuous actions of 1 dimensions"):
        program.train(jax.random.key(0), _tiny.transitions(True))
