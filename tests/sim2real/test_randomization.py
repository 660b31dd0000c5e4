"""Domain randomization: ranges, sampling, the wrapper, PPO on it, bad input."""

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import rl
from convergence_jax.sim2real import (
    DomainRandomization,
    LogUniform,
    Uniform,
    check_ranges,
    domain_randomization,
    param_ranges,
    sample_params,
)

ENV, NOMINAL = gymnax.make("CartPole-v1")
RANGES = param_ranges("CartPole-v1", length=(0.25, 1.0), masspole=LogUniform(0.05, 0.2))


def test_samples_lie_in_ranges_differ_per_env_and_keep_derived_fields():
    batch = sample_params(jax.random.key(0), NOMINAL, RANGES, 256)
    length, masspole = np.asarray(batch.length), np.asarray(batch.masspole)
    assert length.shape == masspole.shape == (256,)
    assert np.all((length >= 0.25) & (length <= 1.0))
    assert np.all((masspole >= 0.05) & (masspole <= 0.2))
    assert len(np.unique(length)) == 256 and len(np.unique(masspole)) == 256
    # log-uniform: log(masspole) uniform, so its median sits near the log midpoint
    assert abs(np.median(np.log(masspole)) - np.log(0.1)) < 0.1
    np.testing.assert_allclose(batch.total_mass, 1.0 + masspole, rtol=1e-6)
    np.testing.assert_allclose(batch.polemass_length, masspole * length, rtol=1e-6)
    np.testing.assert_allclose(batch.gravity, 9.8)  # not randomized
    assert batch.max_steps_in_episode.dtype == jnp.int32


def test_new_ranges_do_not_recompile():
    sample = jax.jit(sample_params, static_argnums=3)
    a = sample(jax.random.key(1), NOMINAL, RANGES, 8)
    narrow = param_ranges(
        "CartPole-v1", length=(0.4, 0.41), masspole=LogUniform(0.1, 0.11)
    )
    b = sample(jax.random.key(1), NOMINAL, narrow, 8)
    assert sample._cache_size() == 1
    assert np.all((np.asarray(b.length) >= 0.4) & (np.asarray(b.length) <= 0.41))
    assert not np.allclose(a.length, b.length)


def test_wrapper_gives_each_env_its_physics_and_redraws_at_episode_end():
    env = DomainRandomization(ENV, RANGES)
    params = env.default_params
    keys = jax.random.split(jax.random.key(2), 16)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    assert obs.shape == (16, 4)
    first = np.asarray(state.physics.length)
    assert len(np.unique(first)) == 16

    def step(carry, key):
        state, ended = carry
        keys = jax.random.split(key, 16)
        _, state, _, term, trunc, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            keys, state, jnp.zeros(16, jnp.int32), params
        )
        return (state, ended | term | trunc), None

    (state, ended), _ = jax.lax.scan(
        step, (state, jnp.zeros(16, bool)), jax.random.split(jax.random.key(3), 60)
    )
    # Always pushing left ends every episode well within 60 steps.
    assert bool(ended.all())
    after = np.asarray(state.physics.length)
    assert np.all(after != first)
    assert np.all((after >= 0.25) & (after <= 1.0))
    # The inner state was reset with the new physics.
    np.testing.assert_allclose(
        state.physics.polemass_length,
        after * np.asarray(state.physics.masspole),
        rtol=1e-6,
    )


def test_ppo_trains_on_randomized_physics():
    config = rl.PPOConfig(
        total_timesteps=4 * 32 * 2,
        num_envs=4,
        num_steps=32,
        env_wrapper=domain_randomization(
            {"length": (0.25, 1.0), "masspole": LogUniform(0.05, 0.2)}
        ),
    )
    state, metrics = jax.jit(rl.make_train(config))(jax.random.key(0))
    physics = state.env_state.env_state.physics
    assert len(np.unique(np.asarray(physics.length))) == 4
    assert np.all(np.isfinite(metrics["policy_loss"]))


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"lenght": (0.2, 1.0)}, "no parameter 'lenght'.*did you mean length"),
        ({"length": (1.0, 0.2)}, r"low \(1\) > high \(0.2\)"),
        ({"masspole": (-0.1, 0.2)}, "outside the valid domain \\(0.0, inf\\)"),
        ({"gravity": (0.0, 9.8)}, "outside the valid domain"),
        ({"length": Uniform(0.1, float("inf"))}, "must be finite"),
        ({"length": LogUniform(0.0, 1.0)}, "log-uniform range needs low > 0"),
        ({"total_mass": (1.0, 2.0)}, "derived .*masscart \\+ masspole"),
        ({"max_steps_in_episode": (100, 500)}, "is a int field"),
        ({"length": 0.5}, "expected \\(low, high\\)"),
        ({}, "at least one field"),
    ],
)
def test_bad_ranges_fail_clearly(fields, match):
    with pytest.raises(ValueError, match=match):
        param_ranges("CartPole-v1", **fields)


def test_other_bad_input():
    with pytest.raises(ValueError, match="did you mean CartPole-v1"):
        param_ranges("CartPol-v1", length=(0.2, 1.0))
    with pytest.raises(ValueError, match="array of shape"):
        param_ranges("Acrobot-v1", available_torque=(0.0, 1.0))
    with pytest.raises(ValueError, match="valid domain \\[0.0, 1.0\\]"):
        param_ranges("Acrobot-v1", link_com_pos_1=(0.2, 1.5))
    with pytest.raises(ValueError, match="ranges are for CartPole-v1"):
        DomainRandomization(gymnax.make("Pendulum-v1")[0], RANGES)
    bad = RANGES.replace(low=jnp.asarray([0.5, -1.0]))
    with pytest.raises(ValueError, match="masspole.*log-uniform"):
        check_ranges(bad)
    with pytest.raises(ValueError, match="masspole.*log-uniform"):
        sample_params(jax.random.key(0), NOMINAL, bad, 4)
    with pytest.raises(ValueError, match="num must be an int >= 1"):
        sample_params(jax.random.key(0), NOMINAL, RANGES, 0)
