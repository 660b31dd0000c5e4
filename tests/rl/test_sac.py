"""SAC: losses against NumPy, bad input, jit/vmap without recompiling, 4 devices."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.rl.continuous import (
    TanhGaussianActor,
    TwinQCritic,
    sac_actor_loss,
    sac_critic_loss,
    sac_temperature_loss,
    tanh_gaussian_log_prob,
)
from convergence_jax.rl.sac import (
    SACConfig,
    SACHParams,
    make_sac,
    make_sac_train,
    sac_hparam_grid,
)

TINY = dict(
    total_timesteps=48,
    num_envs=2,
    batch_size=8,
    buffer_size=64,
    hidden_sizes=(8,),
    learning_starts=16,
)

# ------------------------------------------------------------------ losses


def test_tanh_gaussian_log_prob_matches_numpy_change_of_variables():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(5, 3)).astype(np.float32)
    log_std = rng.uniform(-2, 1, size=(5, 3)).astype(np.float32)
    # includes large |u|, where log(1 - tanh(u)^2) is lost in float32 if naive
    u = rng.normal(size=(5, 3)).astype(np.float32) * 4
    got = np.asarray(tanh_gaussian_log_prob(mean, log_std, u))
    u64, m64, s64 = u.astype(np.float64), mean.astype(np.float64), np.exp(log_std)
    log_normal = -0.5 * ((u64 - m64) / s64) ** 2 - np.log(s64) - 0.5 * np.log(2 * np.pi)
    log_det = np.log1p(-(np.tanh(u64) ** 2))
    np.testing.assert_allclose(got, (log_normal - log_det).sum(-1), rtol=1e-5)


def test_actor_samples_lie_in_the_box_and_log_prob_is_consistent():
    actor = TanhGaussianActor(2, (8,))
    obs = jax.random.normal(jax.random.key(0), (64, 3))
    params = actor.init(jax.random.key(1), obs)
    action, log_prob, pre_tanh = actor.apply(
        params, obs, jax.random.key(2), method="sample"
    )
    assert action.shape == (64, 2) and log_prob.shape == (64,)
    # tanh saturates to exactly +-1 in float32 for |u| > ~9; the log-probability
    # is taken of the pre-tanh sample, so it stays finite there
    assert np.all(np.abs(np.asarray(action)) <= 1)
    assert np.all(np.isfinite(np.asarray(log_prob)))
    np.testing.assert_allclose(action, np.tanh(pre_tanh), rtol=1e-6)
    inside = np.all(np.abs(np.asarray(action)) < 0.99, -1)
    assert inside.sum() > 10
    again = actor.apply(params, obs, action, method="log_prob")
    np.testing.assert_allclose(
        np.asarray(again)[inside], np.asarray(log_prob)[inside], rtol=1e-3, atol=1e-3
    )


def test_twin_critic_has_two_independent_heads():
    critic = TwinQCritic((8,))
    obs, act = jnp.ones((5, 3)), jnp.zeros((5, 2))
    params = critic.init(jax.random.key(0), obs, act)
    q = critic.apply(params, obs, act)
    assert q.shape == (2, 5) and not np.allclose(q[0], q[1])
    assert critic.apply(params, obs[0], act[0]).shape == (2,)


def test_sac_critic_loss_uses_the_twin_minimum_soft_target():
    q = jnp.array([1.0, 2.0])
    next_q = jnp.array([3.0, 5.0])
    r, disc, logp, alpha = 0.5, 0.9, -1.2, 0.2
    target = r + disc * (min(3.0, 5.0) - alpha * logp)
    want = 0.5 * ((1.0 - target) ** 2 + (2.0 - target) ** 2)
    got = sac_critic_loss(q, jnp.float32(r), jnp.float32(disc), next_q, logp, alpha)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # termination (discount 0): the target is the reward alone
    got0 = sac_critic_loss(q, jnp.float32(r), jnp.float32(0.0), next_q, logp, alpha)
    np.testing.assert_allclose(got0, 0.5 * ((1 - r) ** 2 + (2 - r) ** 2), rtol=1e-6)
    # the target is held fixed: no gradient into the bootstrap
    g = jax.grad(sac_critic_loss, argnums=3)(
        q, jnp.float32(r), jnp.float32(disc), next_q, jnp.float32(logp), alpha
    )
    np.testing.assert_array_equal(g, 0.0)


def test_sac_actor_and_temperature_losses():
    q = jnp.array([4.0, 3.0])
    np.testing.assert_allclose(sac_actor_loss(q, jnp.float32(-2.0), 0.5), -1.0 - 3.0)
    log_alpha, logp, target = jnp.log(0.3), jnp.float32(-0.5), jnp.float32(-1.0)
    np.testing.assert_allclose(
        sac_temperature_loss(log_alpha, logp, target), -0.3 * (-1.5), rtol=1e-6
    )
    # entropy (0.5) above the target (-1): the gradient step lowers alpha
    g = jax.grad(sac_temperature_loss)(log_alpha, logp, target)
    assert float(g) > 0
    with pytest.raises(AssertionError):
        sac_actor_loss(jnp.ones(3), jnp.float32(0.0), 1.0)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"env_id": "CartPole-v1"}, "discrete action space.*continuous"),
        ({"env_id": "Pendulum-v2"}, "unknown gymnax.*did you mean Pendulum-v1"),
        ({"batch_size": 7}, "multiple of num_envs"),
        ({"num_envs": 64, "batch_size": 64, "num_devices": 64}, "64 requested"),
        ({"num_envs": 3, "batch_size": 6, "num_devices": 2}, "multiple of num_dev"),
        ({"gamma": 1.5}, "gamma: expected in"),
        ({"actor_lr": 0.0}, "actor_lr: expected > 0"),
        ({"activation": "sigmoid"}, "activation: expected one of"),
        ({"total_timesteps": 1}, "less than one update"),
        ({"hidden_sizes": ()}, "hidden_sizes"),
        ({"target_entropy": "auto"}, "target_entropy"),
    ],
)
def test_bad_config_fails_before_compiling(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_sac_train(SACConfig(**{**TINY, **kwargs}))


def test_bad_grid_and_run_arguments():
    config = SACConfig(**TINY)
    with pytest.raises(ValueError, match="unknown fields"):
        sac_hparam_grid(config, learning_rate=[1e-3])
    with pytest.raises(ValueError, match="equal lengths"):
        sac_hparam_grid(config, actor_lr=[1e-3], tau=[0.1, 0.2])
    sac = make_sac(config)
    with pytest.raises(ValueError, match="num_updates"):
        sac.run(None, None, -1)  # checked before anything is traced


# ------------------------------------------------------------------ programs


def test_default_target_entropy_is_minus_action_dim():
    config = SACConfig(env_id="Pendulum-v1", **TINY)
    assert float(make_sac(config).default_hparams.target_entropy) == -1.0
    hp = SACHParams.from_config(SACConfig(target_entropy=-3.0), action_dim=1)
    assert float(hp.target_entropy) == -3.0


@pytest.fixture(scope="module")
def vmapped():
    """One compiled program for the module: a jit of a vmap over 2 seeds x 2 sets of
    numbers, the first set the config's defaults (so that its runs are also the
    1-device runs that test_four_devices_equal_one_device compares against)."""
    config = SACConfig(**{**TINY, "num_envs": 4})
    train = jax.jit(jax.vmap(jax.vmap(make_sac_train(config), (0, None)), (None, 0)))
    keys = jax.random.split(jax.random.key(0), 2)
    grid = sac_hparam_grid(
        config, critic_lr=[config.critic_lr, 1e-2], init_alpha=[config.init_alpha, 0.5]
    )
    state, metrics = train(keys, grid)
    return config, train, keys, state, metrics


def test_vmap_over_seeds_and_hparams_without_recompiling(vmapped):
    config, train, keys, state, metrics = vmapped
    n = config.num_updates
    assert metrics["episode_return"].shape == (2, 2, n)
    np.testing.assert_array_equal(
        metrics["env_steps"][0, 0], np.arange(1, n + 1) * config.num_envs
    )
    # learning starts after learning_starts env steps, and only then
    learning = np.asarray(metrics["learning"][0, 0])
    np.testing.assert_array_equal(learning, np.arange(1, n + 1) * config.num_envs >= 16)
    assert np.all(np.asarray(metrics["critic_loss"])[..., ~learning] == 0)
    assert np.all(np.isfinite(np.asarray(metrics["critic_loss"])))
    # alpha starts at init_alpha (at the first learning update) and the buffer
    # holds every step
    first = int(np.argmax(learning))
    np.testing.assert_allclose(metrics["alpha"][:, 0, first], [1.0, 0.5], rtol=2e-2)
    # (rows times envs: buffer.size reads num_envs off the leaves' second axis,
    # which under the vmaps is the seeds')
    rows = np.asarray(state.buffer.rows_filled)
    assert np.all(rows * config.num_envs == config.total_timesteps)
    # seeds differ, learning rates differ
    w = np.asarray(jax.tree.leaves(state.params["critic"])[0])
    assert not np.allclose(w[0, 0], w[0, 1]) and not np.allclose(w[0, 0], w[1, 0])
    # target critics trail the online ones (Polyak)
    t = np.asarray(jax.tree.leaves(state.target_params["critic"])[0])
    assert not np.allclose(t, w)
    grid2 = sac_hparam_grid(config, critic_lr=[3e-3, 3e-2], gamma=[0.9, 0.95])
    train(jax.random.split(jax.random.key(1), 2), grid2)
    assert train._cache_size() == 1


def test_policy_maps_into_the_action_box(vmapped):
    config, _, _, states, _ = vmapped
    sac = make_sac(config)
    params = jax.tree.map(
        lambda x: np.asarray(x)[0, 0], states.params
    )  # one trained run
    obs = jax.random.normal(jax.random.key(1), (16, 3)) * 5
    policy = jax.jit(sac.policy, static_argnums=3)
    for deterministic in (False, True):
        a = policy(params, obs, jax.random.key(2), deterministic)
        assert a.shape == (16, 1)
        assert np.all(np.abs(np.asarray(a)) <= 2.0)  # Pendulum's torque box
    np.testing.assert_allclose(
        sac.to_env_action(jnp.array([[-1.0], [1.0]])), [[-2], [2]]
    )


def test_four_devices_equal_one_device(vmapped):
    """The 4-device run against the 1-device run of the same seed and numbers:
    the module's vmapped program at (default numbers, seed 0)."""
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    config, _, keys, states, metrics = vmapped
    config4 = dataclasses.replace(config, num_devices=4)
    s4, m4 = jax.jit(make_sac_train(config4))(keys[0])
    p1, m1 = jax.tree.map(lambda x: np.asarray(x)[0, 0], (states.params, metrics))
    assert len(s4.obs.sharding.device_set) == 4  # environments really were split
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(s4.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for name in ("critic_loss", "actor_loss", "alpha", "entropy"):
        np.testing.assert_allclose(m1[name], m4[name], rtol=1e-4, atol=1e-5)
