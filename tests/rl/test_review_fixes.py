"""Regression tests for bugs found in review (rl.dqn, rl.sac, rl.td3)."""

import jax
import jax.numpy as jnp

from convergence_jax.rl.td3 import TD3Config, make_td3


def test_offpolicy_learn_batch_learns_when_learning_starts_exceeds_the_buffer():
    """learn_batch counted stored transitions, which stop at the capacity: with
    learning_starts > buffer_size it never learned (update() counts env steps
    and does). Once the buffer is full it must learn."""
    config = TD3Config(
        total_timesteps=64,
        num_envs=2,
        batch_size=4,
        buffer_size=8,
        hidden_sizes=(4,),
        learning_starts=16,
    )
    td3 = make_td3(config)
    state = jax.jit(td3.init)(jax.random.key(0))
    k_obs, k_act, k_rew = jax.random.split(jax.random.key(1), 3)
    shape = (10, config.num_envs)  # 20 transitions > learning_starts, buffer holds 8
    batch = {
        "obs": jax.random.normal(k_obs, shape + (3,)),
        "action": jax.random.uniform(k_act, shape + (1,), minval=-2, maxval=2),
        "reward": jax.random.normal(k_rew, shape),
        "terminated": jnp.zeros(shape, bool),
        "final_obs": jax.random.normal(k_obs, shape + (3,)) + 1,
    }
    new, metrics = jax.jit(td3.learn_batch)(state, batch)
    assert int(new.buffer.size) == 8
    assert bool(metrics["learning"])
    assert int(new.grad_step) == 10


def test_dqn_learn_batch_epsilon_is_the_next_windows():
    """DQN.learn_batch documents ``metrics["epsilon"]`` as the exploration the
    next window should use; it returned the epsilon of the window just learned
    (one update behind)."""
    from convergence_jax.rl.dqn import DQNConfig, make_dqn

    config = DQNConfig(
        total_timesteps=160,
        num_envs=4,
        rollout_steps=2,
        gradient_steps=1,
        batch_size=8,
        buffer_size=64,
        learning_starts=0,
        hidden_sizes=(4,),
    )
    dqn = make_dqn(config)
    hparams = dqn.default_hparams
    state = jax.jit(dqn.init)(jax.random.key(0))
    shape = (config.rollout_steps, config.num_envs)
    k_obs, k_act = jax.random.split(jax.random.key(1))
    batch = {
        "obs": jax.random.normal(k_obs, shape + (4,)),
        "action": jax.random.randint(k_act, shape, 0, 2),
        "reward": jnp.ones(shape),
        "terminated": jnp.zeros(shape, bool),
        "truncated": jnp.zeros(shape, bool),
        "final_obs": jax.random.normal(k_obs, shape + (4,)) + 1,
    }
    new, metrics = jax.jit(dqn.learn_batch)(state, batch, hparams)
    now, nxt = dqn.exploration(state, hparams), dqn.exploration(new, hparams)
    assert float(now) != float(nxt)  # the schedule moves between the two windows
    assert float(metrics["epsilon"]) == float(nxt)
