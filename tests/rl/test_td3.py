"""TD3: losses against NumPy, bad input, jit/vmap without recompiling, 4 devices."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.rl.continuous import (
    DeterministicActor,
    td3_actor_loss,
    td3_critic_loss,
    td3_target_action,
)
from convergence_jax.rl.td3 import TD3Config, make_td3, make_td3_train, td3_hparam_grid

TINY = dict(
    total_timesteps=48,
    num_envs=2,
    batch_size=8,
    buffer_size=64,
    hidden_sizes=(8,),
    learning_starts=16,
)

# ------------------------------------------------------------------ losses


def test_target_policy_smoothing_clips_noise_then_action():
    rng = np.random.default_rng(0)
    action = rng.uniform(-1, 1, size=(50, 3)).astype(np.float32)
    noise = (rng.normal(size=(50, 3)) * 0.8).astype(np.float32)
    got = jax.vmap(td3_target_action, in_axes=(0, 0, None))(
        action, noise, jnp.float32(0.5)
    )
    want = np.clip(action + np.clip(noise, -0.5, 0.5), -1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # both clips are active somewhere in this sample
    assert np.any(np.abs(noise) > 0.5) and np.any(np.abs(action + noise) > 1)


def test_td3_critic_loss_uses_the_twin_minimum_and_stops_the_gradient():
    q, next_q = jnp.array([1.0, -1.0]), jnp.array([2.0, 0.5])
    r, disc = jnp.float32(1.0), jnp.float32(0.99)
    target = 1.0 + 0.99 * 0.5
    want = 0.5 * ((1.0 - target) ** 2 + (-1.0 - target) ** 2)
    np.testing.assert_allclose(td3_critic_loss(q, r, disc, next_q), want, rtol=1e-6)
    g = jax.grad(td3_critic_loss, argnums=3)(q, r, disc, next_q)
    np.testing.assert_array_equal(g, 0.0)
    np.testing.assert_allclose(td3_actor_loss(jnp.float32(2.5)), -2.5)
    with pytest.raises(AssertionError):
        td3_critic_loss(jnp.ones(3), r, disc, next_q)


def test_deterministic_actor_lies_in_the_unit_box():
    actor = DeterministicActor(2, (8,))
    obs = jax.random.normal(jax.random.key(0), (32, 3)) * 10
    a = actor.apply(actor.init(jax.random.key(1), obs), obs)
    assert a.shape == (32, 2) and np.all(np.abs(np.asarray(a)) <= 1)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"env_id": "Acrobot-v1"}, "discrete action space.*continuous"),
        ({"env_id": "pendulum-v1"}, "unknown gymnax.*did you mean Pendulum-v1"),
        ({"policy_delay": 0}, "policy_delay: expected an int >= 1"),
        ({"target_noise": -0.1}, "target_noise: expected >= 0"),
        ({"tau": 2.0}, "tau: expected in"),
        ({"batch_size": 5}, "multiple of num_envs"),
        ({"buffer_size": 1}, "smaller than num_envs"),
        ({"learning_starts": -1}, "learning_starts"),
    ],
)
def test_bad_config_fails_before_compiling(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_td3_train(TD3Config(**{**TINY, **kwargs}))


# ------------------------------------------------------------------ programs


@pytest.fixture(scope="module")
def vmapped():
    """One compiled program for the module: a jit of a vmap over 2 seeds x 2 sets of
    numbers, the second set the config's defaults (policy_delay 2, target_noise
    0.2), so that its runs are also the 1-device runs that
    test_four_devices_equal_one_device compares against."""
    config = TD3Config(**{**TINY, "num_envs": 4})
    train = jax.jit(jax.vmap(jax.vmap(make_td3_train(config), (0, None)), (None, 0)))
    keys = jax.random.split(jax.random.key(0), 2)
    grid = td3_hparam_grid(
        config,
        policy_delay=[1, config.policy_delay],
        target_noise=[0.1, config.target_noise],
    )
    state, metrics = train(keys, grid)
    return config, train, keys, state, metrics


def test_vmap_over_seeds_and_hparams_without_recompiling(vmapped):
    config, train, keys, state, metrics = vmapped
    n = config.num_updates
    assert metrics["episode_return"].shape == (2, 2, n)
    learning = np.asarray(metrics["learning"][0, 0])
    np.testing.assert_array_equal(learning, np.arange(1, n + 1) * config.num_envs >= 16)
    # the policy delay is a number: every step, then every second step
    assert config.policy_delay == 2
    updated = np.asarray(metrics["actor_updated"])[:, 0, learning]
    np.testing.assert_array_equal(updated[0], 1.0)
    np.testing.assert_array_equal(updated[1], np.arange(learning.sum()) % 2)
    assert np.all(np.isfinite(np.asarray(metrics["critic_loss"])))
    w = np.asarray(jax.tree.leaves(state.params["actor"])[0])
    assert not np.allclose(w[0, 0], w[0, 1]) and not np.allclose(w[0, 0], w[1, 0])
    grid2 = td3_hparam_grid(config, policy_delay=[3, 1], exploration_noise=[0, 0.5])
    train(jax.random.split(jax.random.key(1), 2), grid2)
    assert train._cache_size() == 1


def test_policy_maps_into_the_action_box(vmapped):
    config, _, _, states, _ = vmapped
    td3 = make_td3(config)
    params = jax.tree.map(
        lambda x: np.asarray(x)[0, 0], states.params
    )  # one trained run
    obs = jax.random.normal(jax.random.key(1), (16, 3)) * 5
    a = jax.jit(td3.policy)(params, obs)
    assert a.shape == (16, 1) and np.all(np.abs(np.asarray(a)) <= 2.0)


def test_four_devices_equal_one_device(vmapped):
    """The 4-device run against the 1-device run of the same seed and numbers:
    the module's vmapped program at (default numbers, seed 0)."""
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    config, _, keys, states, metrics = vmapped
    config4 = dataclasses.replace(config, num_devices=4)
    s4, m4 = jax.jit(make_td3_train(config4))(keys[0])
    p1, m1 = jax.tree.map(
        lambda x: np.asarray(x)[1, 0], ((states.params, states.target_params), metrics)
    )
    assert len(s4.obs.sharding.device_set) == 4
    for a, b in zip(
        jax.tree.leaves(p1),
        jax.tree.leaves((s4.params, s4.target_params)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for name in ("critic_loss", "actor_loss", "q_mean"):
        np.testing.assert_allclose(m1[name], m4[name], rtol=1e-4, atol=1e-5)


def test_learn_batch_adds_an_outside_window_then_learns():
    config = TD3Config(**{**TINY, "learning_starts": 8})
    td3 = make_td3(config)
    state = jax.jit(td3.init)(jax.random.key(0))
    k_obs, k_act, k_rew = jax.random.split(jax.random.key(1), 3)
    shape = (6, config.num_envs)
    batch = {
        "obs": jax.random.normal(k_obs, shape + (3,)),
        "action": jax.random.uniform(k_act, shape + (1,), minval=-2, maxval=2),
        "reward": jax.random.normal(k_rew, shape),
        "terminated": jnp.zeros(shape, bool),
        "final_obs": jax.random.normal(k_obs, shape + (3,)) + 1,
    }
    new, metrics = jax.jit(td3.learn_batch)(state, batch)
    assert int(new.buffer.size) == 12 and bool(metrics["learning"])
    assert int(new.grad_step) == 6  # T * gradient_steps // rollout_steps
    # stored in the unit box: Pendulum's [-2, 2] halved
    np.testing.assert_allclose(
        new.buffer.data["action"][:6], batch["action"] / 2, rtol=1e-5, atol=1e-6
    )
    w0, w1 = (jax.tree.leaves(s.params["critic"])[0] for s in (state, new))
    assert not np.allclose(w0, w1)
    with pytest.raises(ValueError, match="lacks final_obs"):
        td3.learn_batch(state, {k: v for k, v in batch.items() if k != "final_obs"})
    with pytest.raises(ValueError, match="num_envs"):
        td3.learn_batch(state, {k: v[:, :1] for k, v in batch.items()})
