"""System identification: one-step models vs gymnax, recovery, bad input."""

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.sim2real import (
    DYNAMICS,
    LogUniform,
    identify_evolution,
    identify_gradient,
    param_ranges,
    rollout,
)


def random_cartpole(obs, key):
    return jax.random.randint(key, (obs.shape[0],), 0, 2)


def random_pendulum(obs, key):
    return jax.random.uniform(key, (obs.shape[0], 1), minval=-2.0, maxval=2.0)


@pytest.mark.parametrize(
    "env_id, policy, real",
    [
        ("CartPole-v1", random_cartpole, dict(length=0.8, masspole=0.25)),
        ("Pendulum-v1", random_pendulum, dict(m=1.4, l=1.25)),
    ],
)
def test_one_step_models_match_gymnax(env_id, policy, real):
    env, nominal = gymnax.make(env_id)
    params = nominal.replace(**real)
    if env_id == "CartPole-v1":
        params = params.replace(
            total_mass=params.masscart + params.masspole,
            polemass_length=params.masspole * params.length,
        )
    traj = rollout(jax.random.key(0), env, params, policy, 4, 30)
    obs = traj.obs.reshape(-1, traj.obs.shape[-1])
    act = traj.action.reshape((obs.shape[0],) + traj.action.shape[2:])
    pred = jax.vmap(DYNAMICS[env_id], in_axes=(None, 0, 0))(params, obs, act)
    np.testing.assert_allclose(
        pred, traj.next_obs.reshape(obs.shape), rtol=1e-5, atol=1e-5
    )


def cartpole_log(real, key=0, num_envs=4, num_steps=40):
    env, nominal = gymnax.make("CartPole-v1")
    params = nominal.replace(
        **real,
        total_mass=nominal.masscart + real["masspole"],
        polemass_length=real["masspole"] * real["length"],
    )
    traj = rollout(
        jax.random.key(key), env, params, random_cartpole, num_envs, num_steps
    )
    return nominal, (
        traj.obs.reshape(-1, 4),
        traj.action.reshape(-1),
        traj.next_obs.reshape(-1, 4),
        traj.valid.reshape(-1),
    )


def test_gradient_recovers_known_parameters():
    real = dict(length=0.8, masspole=0.25)
    nominal, log = cartpole_log(real)
    result = identify_gradient(
        "CartPole-v1", nominal, ["length", "masspole"], *log, num_steps=200
    )
    np.testing.assert_allclose(result.values, [0.8, 0.25], rtol=1e-2)
    assert float(result.loss[-1]) < 1e-3 * float(result.loss[0])
    np.testing.assert_allclose(result.params.polemass_length, 0.2, rtol=1e-2)


def test_gradient_on_pendulum_with_noisy_observations():
    env, nominal = gymnax.make("Pendulum-v1")
    real = nominal.replace(m=1.4, l=1.25)
    traj = rollout(jax.random.key(1), env, real, random_pendulum, 4, 50)
    noise = 0.003 * jax.random.normal(jax.random.key(2), traj.next_obs.shape)
    result = identify_gradient(
        "Pendulum-v1",
        nominal,
        ["m", "l"],
        traj.obs.reshape(-1, 3),
        traj.action.reshape(-1, 1),
        (traj.next_obs + noise).reshape(-1, 3),
        num_steps=200,
    )
    np.testing.assert_allclose(result.values, [1.4, 1.25], rtol=0.05)


def test_evolution_recovers_known_parameters():
    real = dict(length=0.8, masspole=0.25)
    nominal, log = cartpole_log(real)
    ranges = param_ranges(
        "CartPole-v1", length=LogUniform(0.1, 2.0), masspole=LogUniform(0.02, 0.5)
    )
    result = identify_evolution(
        jax.random.key(3),
        ranges,
        nominal,
        *log,
        num_generations=20,
        population_size=32,
    )
    np.testing.assert_allclose(result.values, [0.8, 0.25], rtol=0.05)
    assert np.all(np.diff(np.asarray(result.loss)) <= 1e-9)  # elitist best


def test_bad_input_fails_before_compiling():
    nominal, (obs, act, nxt, mask) = cartpole_log(dict(length=0.8, masspole=0.25))
    with pytest.raises(ValueError, match="no parameter 'lenght'.*did you mean length"):
        identify_gradient("CartPole-v1", nominal, ["lenght"], obs, act, nxt)
    with pytest.raises(ValueError, match="no one-step model for 'Acrobot-v1'"):
        identify_gradient("Acrobot-v1", nominal, ["length"], obs, act, nxt)
    with pytest.raises(ValueError, match="one shape \\[N, obs_dim\\]"):
        identify_gradient("CartPole-v1", nominal, ["length"], obs, act, nxt[:, :3])
    with pytest.raises(ValueError, match="expected actions \\[N="):
        identify_gradient("CartPole-v1", nominal, ["length"], obs, act[:5], nxt)
    with pytest.raises(ValueError, match="non-finite"):
        identify_gradient(
            "CartPole-v1", nominal, ["length"], obs, act, nxt.at[0, 0].set(jnp.nan)
        )
    with pytest.raises(ValueError, match="the log is empty"):
        identify_gradient("CartPole-v1", nominal, ["length"], obs[:0], act[:0], nxt[:0])
    with pytest.raises(ValueError, match="derived"):
        identify_gradient("CartPole-v1", nominal, ["total_mass"], obs, act, nxt)
    with pytest.raises(ValueError, match="init must be > 0"):
        identify_gradient(
            "CartPole-v1", nominal, ["length"], obs, act, nxt, init=[-1.0]
        )
