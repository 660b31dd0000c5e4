"""TD3+BC: losses vs hand-computed values, the compiled program, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.offline import td3bc
from convergence_jax.offline._common import bellman_target, twin_critic_loss
from tests.offline import _tiny


def test_actor_loss_hand_fixture():
    q = jnp.array([1.0, -3.0])
    pi = jnp.array([[0.5], [0.0]])
    a = jnp.array([[0.0], [1.0]])
    # lambda = 2.5 / mean|q| = 1.25; -1.25 * mean(q) = 1.25; mse = (0.25 + 1) / 2
    got = td3bc.td3bc_actor_loss(q, pi, a, 2.5)
    np.testing.assert_allclose(got, 1.25 + 0.625, rtol=1e-6)
    # the global |Q| mean (data parallel) replaces the local one
    got = td3bc.td3bc_actor_loss(q, pi, a, 2.5, q_abs_mean=5.0)
    np.testing.assert_allclose(got, 0.5 + 0.625, rtol=1e-6)
    # lambda carries no gradient: d/dq = -lambda / B
    grad = jax.grad(lambda q: td3bc.td3bc_actor_loss(q, pi, a, 2.5))(q)
    np.testing.assert_allclose(grad, [-0.625, -0.625], rtol=1e-6)


def test_bellman_target_bootstraps_through_timeouts_not_terminals():
    rewards = jnp.array([1.0, 1.0, 1.0])
    terminals = jnp.array([False, True, False])  # row 2 is a timeout: bootstrap
    next_v = jnp.array([10.0, 10.0, 10.0])
    np.testing.assert_allclose(
        bellman_target(rewards, terminals, next_v, 0.9), [10.0, 1.0, 10.0]
    )
    q = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    target = jnp.array([1.0, 1.0, 1.0])
    np.testing.assert_allclose(twin_critic_loss(q, target), 5 / 3 + 1.0, rtol=1e-6)


def test_program_jit_vmap_no_recompile():
    _tiny.check_program(
        td3bc.make_td3bc,
        td3bc.TD3BCConfig,
        td3bc.TD3BCHParams,
        False,
        alpha=[1.0, 2.5],
        critic_lr=[1e-3, 3e-3],
    )


def test_actor_is_updated_every_policy_freq_steps():
    program = td3bc.make_td3bc(
        td3bc.TD3BCConfig(**{**_tiny.TINY, "num_steps": 1}),
        _tiny.OBS_DIM,
        _tiny.CONTINUOUS,
    )
    data = _tiny.transitions(False)
    state = program.init(jax.random.key(0), data)
    run = jax.jit(program.run, static_argnums=3)
    one, _ = run(state, data, None, 1)
    two, _ = run(one, data, None, 1)
    same = jax.tree.map(np.array_equal, state.actor, one.actor)
    assert all(jax.tree.leaves(same))  # step 1: critic only
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, one.actor, two.actor)))
    assert not all(
        jax.tree.leaves(jax.tree.map(np.array_equal, state.critic, one.critic))
    )


def test_bad_input():
    with pytest.raises(ValueError, match="TD3\\+BC is for continuous actions"):
        td3bc.make_td3bc(td3bc.TD3BCConfig(), 3, _tiny.DISCRETE)
    with pytest.raises(ValueError, match="policy_freq: expected an int >= 1"):
        td3bc.make_td3bc(td3bc.TD3BCConfig(policy_freq=0), 3, _tiny.CONTINUOUS)
    with pytest.raises(ValueError, match="gamma: expected in"):
        td3bc.make_td3bc(td3bc.TD3BCConfig(gamma=1.5), 3, _tiny.CONTINUOUS)
    program = td3bc.make_td3bc(td3bc.TD3BCConfig(**_tiny.TINY), 3, _tiny.CONTINUOUS)
    with pytest.raises(ValueError, match="continuous actions of 1 dimensions"):
        program.train(jax.random.key(0), _tiny.transitions(True))
    with pytest.raises(ValueError, match="num_steps must be an int"):
        program.run(None, _tiny.transitions(False), None, -1)
