"""PPO on gymnax: bad input, jit/vmap without recompiling, data parallel, resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import checkpoint, rl

TINY = dict(total_timesteps=4 * 32 * 3, num_envs=4, num_steps=32)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"env_id": "CartPole-v2"},
            "unknown gymnax environment 'CartPole-v2'.*did you mean CartPole-v1",
        ),
        ({"continuous": True}, "continuous=True, but CartPole-v1 has a discrete"),
        ({"env_id": "Pendulum-v1", "continuous": False}, "has a continuous"),
        ({"num_steps": 30, "num_minibatches": 4}, "does not divide into minibatches"),
        ({"num_envs": 6, "num_devices": 4}, "multiple of num_devices"),
        ({"num_envs": 64, "num_devices": 64}, "64 requested"),
        ({"num_envs": 0}, "num_envs: expected an int >= 1"),
        ({"total_timesteps": 10}, "less than one rollout"),
        ({"activation": "sigmoid"}, "activation: expected one of"),
        ({"gamma": 1.5}, "gamma: expected in"),
        ({"squash": True}, "continuous actions only"),
    ],
)
def test_bad_config_fails_before_compiling(kwargs, match):
    config = rl.PPOConfig(**{**TINY, **kwargs})
    with pytest.raises(ValueError, match=match):
        rl.make_train(config)


def test_hparam_grid():
    config = rl.PPOConfig(**TINY)
    grid = rl.hparam_grid(config, learning_rate=[1e-4, 3e-4], ent_coef=[0.0, 0.01])
    assert grid.learning_rate.shape == (2,) and grid.gamma.shape == (2,)
    np.testing.assert_allclose(grid.ent_coef, [0.0, 0.01])
    with pytest.raises(ValueError, match="unknown fields"):
        rl.hparam_grid(config, lr=[1.0])
    with pytest.raises(ValueError, match="equal lengths"):
        rl.hparam_grid(config, learning_rate=[1.0], gamma=[0.9, 0.99])


# ------------------------------------------------------------------ networks


def test_actor_critic_discrete_and_continuous():
    obs = jnp.ones((5, 3))
    net = rl.ActorCritic(action_dim=2)
    params = net.init(jax.random.key(0), obs)
    dist, value = net.apply(params, obs)
    assert value.shape == (5,) and dist.sample(seed=jax.random.key(1)).shape == (5,)
    net = rl.ActorCritic(action_dim=2, continuous=True, hidden_sizes=(8,))
    params = net.init(jax.random.key(0), obs)
    dist, value = net.apply(params, obs)
    assert dist.sample(seed=jax.random.key(1)).shape == (5, 2)
    assert dist.log_prob(jnp.zeros((5, 2))).shape == (5,)
    np.testing.assert_allclose(params["params"]["log_std"], 0.0)


def test_orthogonal_init_is_orthogonal_and_matches_lapack_qr():
    from convergence_jax.rl.networks import _householder_q, _orthogonal

    a = jax.random.normal(jax.random.key(0), (32, 8))
    q, r = np.linalg.qr(np.asarray(a, np.float64))
    np.testing.assert_allclose(_householder_q(a), q * np.sign(np.diag(r)), atol=1e-5)
    for shape in [(4, 64), (64, 64), (64, 1)]:
        w = np.asarray(_orthogonal(2.0)(jax.random.key(1), shape), np.float64)
        gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
        np.testing.assert_allclose(gram, 4.0 * np.eye(len(gram)), atol=1e-5)
    # vmapped (many seeds at once): plain XLA, no batched LAPACK call.
    ws = jax.vmap(lambda k: _orthogonal(1.0)(k, (16, 16)))(
        jax.random.split(jax.random.key(2), 64)
    )
    assert ws.shape == (64, 16, 16)


# ------------------------------------------------------------------ programs


def test_vmap_over_seeds_and_hparams_without_recompiling():
    config = rl.PPOConfig(**TINY)
    train = jax.jit(jax.vmap(jax.vmap(rl.make_train(config), (0, None)), (None, 0)))
    keys = jax.random.split(jax.random.key(0), 2)
    grid = rl.hparam_grid(config, learning_rate=[1e-4, 1e-3, 3e-3])
    state, metrics = train(keys, grid)
    assert metrics["episode_return"].shape == (3, 2, config.num_updates)
    assert metrics["env_steps"][0, 0, -1] == config.num_updates * config.batch_size
    # different seeds and different learning rates give different parameters
    w = jax.tree.leaves(state.params)[0]
    assert not np.allclose(w[0, 0], w[0, 1]) and not np.allclose(w[0, 0], w[1, 0])
    # same numbers, new values: no new compilation
    grid2 = rl.hparam_grid(config, learning_rate=[2e-4, 2e-3, 5e-3], gamma=[0.9] * 3)
    train(jax.random.split(jax.random.key(1), 2), grid2)
    assert train._cache_size() == 1


def test_learning_rate_annealing_and_callback():
    config = rl.PPOConfig(**TINY)
    seen = []
    train = jax.jit(rl.make_train(config, callback=lambda m: seen.append(m)))
    _, metrics = train(jax.random.key(0))
    jax.block_until_ready(metrics)
    lr = np.asarray(metrics["learning_rate"])
    np.testing.assert_allclose(lr, 2.5e-4 * (1 - np.arange(3) / 3), rtol=1e-6)
    assert len(seen) == config.num_updates
    assert int(seen[-1]["env_steps"]) == config.total_timesteps // 128 * 128


@pytest.mark.parametrize("squash", [False, True])
def test_continuous_actions_run(squash):
    config = rl.PPOConfig(
        env_id="Pendulum-v1", squash=squash, normalize_obs=True, **TINY
    )
    state, metrics = jax.jit(rl.make_train(config))(jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(metrics["value_loss"])))
    assert "log_std" in state.params["params"]
    # obs statistics were updated from the rollouts (Pendulum obs are not 0-mean)
    assert float(state.obs_stats.count) == pytest.approx(3 * 128, rel=1e-3)


def test_four_devices_equal_one_device_on_the_same_global_batch():
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    runs = {}
    for devices in (1, 4):
        config = rl.PPOConfig(
            total_timesteps=8 * 32 * 4,
            num_envs=8,
            num_steps=32,
            normalize_obs=True,
            num_devices=devices,
        )
        # Unclipped gradients: a clip by global norm hides a gradient off by a
        # constant factor (Adam does the rest), so the check would not see one.
        hparams = rl.PPOHParams.from_config(config).replace(
            max_grad_norm=jnp.float32(1e6)
        )
        runs[devices] = jax.jit(rl.make_train(config))(jax.random.key(3), hparams)
    (s1, m1), (s4, m4) = runs[1], runs[4]
    assert len(s4.obs.sharding.device_set) == 4  # environments really were split
    for a, b in zip(
        jax.tree.leaves(s1.params), jax.tree.leaves(s4.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m1["episode_return"], m4["episode_return"], rtol=1e-5)
    np.testing.assert_allclose(m1["value_loss"], m4["value_loss"], rtol=1e-4)
    np.testing.assert_allclose(s1.obs_stats.var, s4.obs_stats.var, rtol=1e-5)


def _outside_rollout(key, num_steps, num_envs):
    """A rollout as a loop pipeline hands it to ``learn_batch`` (CartPole shapes)."""
    k_obs, k_act, k_rew, k_term, k_final = jax.random.split(key, 5)
    shape = (num_steps, num_envs)
    return {
        "obs": 2.0 + jax.random.normal(k_obs, shape + (4,)),
        "action": jax.random.bernoulli(k_act, 0.5, shape).astype(jnp.int32),
        "reward": jax.random.uniform(k_rew, shape),
        "terminated": jax.random.bernoulli(k_term, 0.1, shape),
        "truncated": jnp.zeros(shape, bool),
        "final_obs": 2.0 + jax.random.normal(k_final, shape + (4,)),
    }


def test_learn_batch_four_devices_equal_one_device():
    """``learn_batch`` (the loop's update) is data parallel like ``update``."""
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    batches = [_outside_rollout(jax.random.key(i), 16, 8) for i in range(2)]
    runs = {}
    for devices in (1, 4):
        config = rl.PPOConfig(num_envs=8, num_steps=16, num_minibatches=2,
                              update_epochs=2, normalize_obs=True,
                              num_devices=devices)  # fmt: skip
        ppo = rl.make_ppo(config)
        learn = jax.jit(ppo.learn_batch)
        start = state = ppo.init(jax.random.key(3))
        metrics = []
        # Two updates, the second from the sharded state: with the default gradient
        # clip, then unclipped (where a gradient off by a factor shows).
        unclipped = ppo.default_hparams.replace(max_grad_norm=jnp.float32(1e6))
        for batch, hp in zip(batches, [ppo.default_hparams, unclipped], strict=True):
            state, m = learn(state, batch, hp)
            metrics.append(m)
        runs[devices] = start, state, metrics
    (start, s1, m1), (_, s4, m4) = runs[1], runs[4]
    assert len(s4.keys.sharding.device_set) == 4  # environments really were split
    moved = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()), start.params, s1.params
    )
    moved = max(jax.tree.leaves(moved))
    assert moved > 1e-4  # the updates changed the parameters ...
    for a, b in zip(
        jax.tree.leaves(s1.params), jax.tree.leaves(s4.params), strict=True
    ):  # ... and 4 devices changed them as 1 did, to rounding
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(m1, m4, strict=True):
        np.testing.assert_allclose(a["value_loss"], b["value_loss"], rtol=1e-5)
        np.testing.assert_allclose(a["approx_kl"], b["approx_kl"], rtol=1e-3)
    # observation statistics merged over all devices (count of 2 x 16 x 8 rows)
    np.testing.assert_allclose(s1.obs_stats.mean, s4.obs_stats.mean, rtol=1e-5)
    np.testing.assert_allclose(s1.obs_stats.var, s4.obs_stats.var, rtol=1e-5)
    assert float(s4.obs_stats.count) == pytest.approx(2 * 16 * 8, rel=1e-3)
    np.testing.assert_array_equal(
        jax.random.key_data(s1.keys), jax.random.key_data(s4.keys)
    )
    with pytest.raises(ValueError, match=r"batch\['final_obs'\] must start with"):
        bad = {**batches[0], "final_obs": batches[0]["final_obs"][:, :4]}
        rl.make_ppo(config).learn_batch(s4, bad, rl.PPOHParams.from_config(config))


def test_resumed_run_continues_exactly(tmp_path):
    config = rl.PPOConfig(total_timesteps=4 * 32 * 4, num_envs=4, num_steps=32)
    ppo = rl.make_ppo(config)
    hp = ppo.default_hparams
    run = jax.jit(ppo.run, static_argnums=2)
    start = ppo.init(jax.random.key(7), hp)
    full, full_metrics = run(start, hp, 4)  # uninterrupted

    half, _ = run(start, hp, 2)
    checkpoint.save(tmp_path / "ckpt", half, step=2)
    assert checkpoint.latest_step(tmp_path / "ckpt") == 2
    restored = checkpoint.restore(
        tmp_path / "ckpt", like=ppo.init(jax.random.key(0), hp)
    )
    assert int(restored.step) == 2
    resumed, resumed_metrics = run(restored, hp, 2)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        full_metrics["policy_loss"][2:], resumed_metrics["policy_loss"]
    )


def test_cartpole_solved_by_7_of_8_seeds_within_500k_steps():
    """The bar: >= 475 final mean return in >= 7 of 8 vmapped seeds, one call.

    Final mean return: the mean over the episodes that ended in the last 5% of
    updates (48 of 976 updates of 4 envs x 128 steps, about 25k steps).
    """
    config = rl.PPOConfig(env_id="CartPole-v1", total_timesteps=500_000)
    train = jax.jit(jax.vmap(rl.make_train(config)))
    _, metrics = train(jax.random.split(jax.random.key(42), 8))
    returns = np.asarray(metrics["episode_return"])
    tail = max(1, config.num_updates // 20)
    final = np.nanmean(returns[:, -tail:], axis=1)
    assert (final >= 475).sum() >= 7, final.round(1)
