"""DQN on gymnax: value losses against NumPy, bad input, jit/vmap without
recompiling, 4 devices == 1."""

import dataclasses
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.rl.dqn import (
    DQNConfig,
    DQNHParams,
    dqn_hparam_grid,
    make_dqn,
    make_train,
)
from convergence_jax.rl.value_losses import (
    double_q_value,
    n_step_return,
    q_learning_value,
    td_loss,
)

TINY = dict(
    total_timesteps=4 * 40,
    num_envs=4,
    rollout_steps=2,
    gradient_steps=2,
    batch_size=8,
    buffer_size=64,
    learning_starts=16,
    hidden_sizes=(16,),
)


# ------------------------------------------------------------------ pure losses


def _np_n_step(rewards, terminated, truncated, gamma, next_values):
    """The n-step target by a plain loop: sum rewards until the first episode end,
    then bootstrap from that step's next state unless it terminated."""
    target, discount = 0.0, 1.0
    for k in range(len(rewards)):
        target += discount * rewards[k]
        discount *= gamma
        if terminated[k]:
            return target
        if truncated[k] or k == len(rewards) - 1:
            return target + discount * next_values[k]
    raise AssertionError


@pytest.mark.parametrize("n", [1, 3, 5])
def test_n_step_target_matches_a_numpy_loop(n):
    rng = np.random.default_rng(n)
    gamma = 0.9
    for _ in range(40):
        rewards = rng.normal(size=n).astype(np.float32)
        terminated = rng.random(n) < 0.2
        truncated = ~terminated & (rng.random(n) < 0.2)
        next_values = rng.normal(size=n).astype(np.float32)
        partial, discount, last = n_step_return(
            jnp.asarray(rewards), jnp.asarray(terminated), jnp.asarray(truncated), gamma
        )
        ours = float(partial + discount * next_values[int(last)])
        expected = _np_n_step(rewards, terminated, truncated, gamma, next_values)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_n_step_cut_cases_by_hand():
    r = jnp.array([1.0, 2.0, 4.0])
    no = jnp.zeros(3, bool)
    # No episode end: 1 + 0.5*2 + 0.25*4, bootstrap gamma^3 from step 2.
    g, d, last = n_step_return(r, no, no, 0.5)
    assert (float(g), float(d), int(last)) == (3.0, 0.125, 2)
    # Terminated at step 1: 1 + 0.5*2, no bootstrap; step 2 is the next episode.
    g, d, last = n_step_return(r, jnp.array([False, True, False]), no, 0.5)
    assert (float(g), float(d), int(last)) == (2.0, 0.0, 1)
    # Truncated at step 0: r0, bootstrap gamma from step 0's final observation.
    g, d, last = n_step_return(r, no, jnp.array([True, False, True]), 0.5)
    assert (float(g), float(d), int(last)) == (1.0, 0.5, 0)


def test_double_and_vanilla_targets_match_numpy():
    rng = np.random.default_rng(0)
    online = rng.normal(size=(50, 4)).astype(np.float32)
    target = rng.normal(size=(50, 4)).astype(np.float32)
    double = jax.vmap(double_q_value)(jnp.asarray(online), jnp.asarray(target))
    expected = target[np.arange(50), online.argmax(1)]
    np.testing.assert_array_equal(np.asarray(double), expected)
    vanilla = jax.vmap(q_learning_value)(jnp.asarray(target))
    np.testing.assert_array_equal(np.asarray(vanilla), target.max(1))
    # Double DQN does not take the max of the target network.
    assert np.any(np.asarray(double) < target.max(1))


def test_td_loss_and_its_gradient_touch_only_the_taken_action():
    q = jnp.array([1.0, 3.0, -2.0])
    loss, grad = jax.value_and_grad(td_loss)(q, jnp.int32(1), jnp.float32(0.5))
    assert float(loss) == pytest.approx(0.5 * 2.5**2)
    np.testing.assert_allclose(grad, [0.0, 2.5, 0.0])
    # The target is held fixed.
    assert float(jax.grad(td_loss, argnums=2)(q, jnp.int32(1), 0.5)) == 0.0


def test_losses_check_ranks():
    with pytest.raises(AssertionError):
        n_step_return(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2, 3)), 0.9)
    with pytest.raises(AssertionError):
        double_q_value(jnp.zeros(3), jnp.zeros(4))


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"env_id": "CartPol-v1"}, "DQNConfig.env_id: unknown.*did you mean"),
        ({"env_id": "Pendulum-v1"}, "Box action space; DQN needs a Discrete"),
        ({"batch_size": 10}, "batch_size \\(10\\) must be a multiple of num_envs"),
        ({"num_envs": 6, "num_devices": 4, "batch_size": 12}, "multiple of num_dev"),
        ({"num_envs": 64, "num_devices": 64, "batch_size": 64}, "64 requested"),
        ({"n_step": 0}, "n_step: expected an int >= 1"),
        ({"buffer_size": 8, "n_step": 3}, "fewer than n_step"),
        ({"learning_starts": 1000}, "would never learn"),
        ({"total_timesteps": 4}, "less than one update"),
        ({"activation": "sigmoid"}, "activation: expected one of"),
        ({"gamma": 1.5}, "gamma: expected in"),
        ({"tau": 0.0}, "tau: expected in \\(0, 1\\]"),
        ({"exploration_fraction": -0.1}, "exploration_fraction: expected in"),
        ({"hidden_sizes": ()}, "hidden_sizes: expected positive ints"),
    ],
)
def test_bad_config_fails_before_compiling(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_train(DQNConfig(**{**TINY, **kwargs}))


# ------------------------------------------------------------------ the program


@pytest.fixture(scope="module")
def vmapped():
    """One compiled program for the module: a jit of a vmap over (seed, numbers)
    pairs, both the config's defaults, so that the first run is also the 1-device
    run that test_four_devices_equal_one_device compares against. 8 envs, 2 steps
    each: 16 steps an update. Unclipped: a clip by global norm would hide a
    gradient off by a constant factor across devices (Adam does the rest)."""
    config = DQNConfig(
        **{
            **TINY,
            "num_envs": 8,
            "batch_size": 16,
            "buffer_size": 128,
            "learning_starts": 32,
        },
        n_step=3,
        max_grad_norm=1e6,
    )
    train = jax.jit(jax.vmap(make_train(config)))
    batched = dqn_hparam_grid(config, gamma=[config.gamma, config.gamma])
    keys = jax.random.split(jax.random.key(0), 2)
    state, metrics = train(keys, batched)
    return config, train, keys, batched, state, metrics


def test_runs_under_jit_and_vmaps_over_keys_and_hparams_without_recompiling(vmapped):
    config, train, keys, batched, state, metrics = vmapped
    with pytest.raises(ValueError, match="unknown fields \\['lr'\\]"):
        dqn_hparam_grid(config, lr=[1.0])
    assert metrics["loss"].shape == (2, config.num_updates)
    learning = np.asarray(metrics["learning"])
    # 16 steps an update: learning starts with the update that reaches
    # learning_starts (32) steps, the second.
    assert not learning[:, 0].any() and learning[:, 1:].all()
    loss = np.asarray(metrics["loss"])
    assert np.all(np.isfinite(loss)) and np.all(loss[:, 1:] > 0)
    assert np.all(np.asarray(metrics["env_steps"])[:, -1] == config.total_timesteps)
    # Different seeds, different runs.
    assert not np.allclose(loss[0], loss[1])
    eps = np.asarray(metrics["epsilon"])[0]
    assert eps[0] == 1.0 and np.all(np.diff(eps[2:]) <= 0)
    # New numbers (a learning-rate and gamma sweep, a hard target copy every 16
    # steps), same shapes: no recompile, and they change the result.
    other = batched.replace(
        learning_rate=jnp.array([1e-2, 1e-4]),
        gamma=jnp.array([0.5, 0.9]),
        tau=jnp.ones(2, jnp.float32),
        target_update_period=jnp.full(2, 16.0, jnp.float32),
    )
    state2, metrics2 = train(keys, other)
    assert train._cache_size() == 1
    assert not np.allclose(np.asarray(metrics2["loss"]), loss)
    assert jax.tree.leaves(state2.buffer.data)[0].shape[:3] == (2, 16, 8)


def test_run_fills_the_buffer_learns_moves_the_target_and_acts():
    """Two updates of 60 steps of 4 envs: the first uniform (learning_starts), the
    second learns. CartPole ends episodes within ~60 uniform steps, so the buffer
    holds episode ends: the stored next_obs of an ending step is the state it
    reached, not the reset observation the environment continues from."""
    config = DQNConfig(
        **{
            **TINY,
            "total_timesteps": 480,
            "rollout_steps": 60,
            "buffer_size": 480,
            "learning_starts": 300,
        },
        tau=0.5,
        target_update_period=8,
    )
    dqn = make_dqn(config)
    state0 = dqn.init(jax.random.key(1))
    state, metrics = jax.jit(dqn.run)(state0)
    np.testing.assert_array_equal(metrics["learning"], [False, True])
    np.testing.assert_array_equal(metrics["epsilon"], [1.0, 1.0])
    assert int(state.buffer.rows_filled) == 120
    p0, p1, t1 = (
        jax.tree.leaves(x)[0]
        for x in (state0.params, state.params, state.target_params)
    )
    assert not np.allclose(p0, p1)  # learned
    # Polyak with tau 0.5 twice: the target is p0 after the first update (nothing
    # learned yet), then halfway between p0 and the new parameters.
    np.testing.assert_allclose(t1, 0.5 * (p0 + p1), rtol=1e-5, atol=1e-7)
    data = jax.device_get(state.buffer.data)
    ended = np.argwhere(data["terminated"][:-1])
    assert len(ended) > 0
    for t, e in ended:
        assert not np.allclose(data["next_obs"][t, e], data["obs"][t + 1, e])
    alive = np.argwhere(~data["terminated"][:-1] & ~data["truncated"][:-1])
    for t, e in alive[:20]:
        np.testing.assert_array_equal(data["next_obs"][t, e], data["obs"][t + 1, e])
    # The policy is greedy by default and epsilon-greedy on request.
    obs = jnp.asarray(state.obs)
    greedy = dqn.policy(state.params, obs, jax.random.key(0))
    np.testing.assert_array_equal(
        greedy, jnp.argmax(dqn.q_values(state.params, obs), -1)
    )
    random = dqn.policy(state.params, jnp.tile(obs, (50, 1)), jax.random.key(0), 1.0)
    assert set(np.asarray(random).tolist()) == {0, 1}


def test_four_devices_equal_one_device(vmapped):
    """The 4-device run against the 1-device run of the same seed and numbers:
    the module's vmapped program at its first (seed, numbers) pair."""
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    config, _, keys, batched, states, metrics = vmapped
    config4 = dataclasses.replace(config, num_devices=4)
    hparams = DQNHParams.from_config(config4)
    s4, m4 = jax.jit(make_train(config4))(keys[0], hparams)
    p1, m1 = jax.tree.map(lambda x: np.asarray(x)[0], (states.params, metrics))
    for a, b in zip(jax.tree.leaves(hparams), jax.tree.leaves(batched), strict=True):
        np.testing.assert_array_equal(a, b[0])  # the same numbers
    assert len(s4.obs.sharding.device_set) == 4  # environments really were split
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(s4.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-4)
    np.testing.assert_allclose(m1["q_mean"], m4["q_mean"], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(m1["episodes"], m4["episodes"])


def test_learn_batch_and_the_loop_agent():
    """``DQNAgent``: windows from a compiled ``BatchPipeline`` go into the buffer;
    learning starts at learning_starts; numbers never recompile; weights round
    trip."""
    from convergence_jax import loop
    from convergence_jax.loop.dqn_agent import DQNAgent

    config = DQNConfig(**TINY)
    agent = DQNAgent(config, seed=0)
    loop.check_agent(agent)
    pipe = loop.BatchPipeline("CartPole-v1", 4, config.rollout_steps, seed=1)
    learned = [agent.learn(pipe.collect(agent))["learning"] for _ in range(3)]
    assert learned == [0.0, 1.0, 1.0]  # 8 steps a window, learning_starts 16
    assert int(agent.state.buffer.rows_filled) == 6
    agent.set_hyperparams({"learning_rate": 1e-2, "eps_end": 0.0})
    metrics = agent.learn(pipe.collect(agent))
    assert agent._compiled.learn._cache_size() == 1
    assert metrics["loss"] > 0 and agent.get_hyperparams()["eps_end"] == 0.0
    with pytest.raises(ValueError, match="unknown"):
        agent.set_hyperparams({"lr": 1.0})
    window = pipe.collect(agent)
    short = dataclasses.replace(window, rewards=window.rewards[:1])
    with pytest.raises(ValueError, match="must start with \\[rollout_steps"):
        agent.learn(short)  # fails while tracing: nothing compiles
    agent.save_weights(tmp := Path(tempfile.mkdtemp()) / "w")
    other = DQNAgent(config, seed=5)
    other.load_weights(tmp)
    obs = np.asarray(window.observations[0])
    np.testing.assert_allclose(other.q_values(obs), agent.q_values(obs), rtol=1e-6)
