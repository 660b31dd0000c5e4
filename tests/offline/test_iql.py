"""IQL: expectile and AWR losses vs hand-computed values, the compiled program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.offline import iql
from tests.offline import _tiny


def test_expectile_loss_hand_fixture():
    diff = jnp.array([2.0, -1.0, 0.5])
    # 0.7 * 4 + 0.3 * 1 + 0.7 * 0.25
    np.testing.assert_allclose(
        iql.expectile_loss(diff, 0.7), (2.8 + 0.3 + 0.175) / 3, rtol=1e-6
    )
    # expectile 0.5 is half the mean squared error
    np.testing.assert_allclose(iql.expectile_loss(diff, 0.5), 0.5 * (4 + 1 + 0.25) / 3)
    # the tau-expectile of {0, 1, 5} (found by bisection on its first-order
    # condition tau sum (x - v)+ = (1 - tau) sum (v - x)+) zeroes the gradient
    x = np.array([0.0, 1.0, 5.0])
    lo, hi = 0.0, 5.0
    for _ in range(60):
        v = (lo + hi) / 2
        excess = (
            0.9 * np.clip(x - v, 0, None).sum() - 0.1 * np.clip(v - x, 0, None).sum()
        )
        lo, hi = (v, hi) if excess > 0 else (lo, v)
    grad = jax.grad(lambda v: iql.expectile_loss(jnp.asarray(x, jnp.float32) - v, 0.9))
    np.testing.assert_allclose(grad(jnp.float32(v)), 0.0, atol=1e-5)
    assert abs(float(grad(jnp.float32(v + 0.1)))) > 1e-2
    assert v > x.mean()


def test_awr_loss_clips_weights_and_stops_their_gradient():
    log_prob = jnp.array([-1.0, -2.0])
    advantage = jnp.array([0.0, 10.0])  # exp(3 * 10) is clipped to 100
    np.testing.assert_allclose(
        iql.awr_policy_loss(log_prob, advantage, 3.0), (1.0 + 200.0) / 2, rtol=1e-6
    )
    grad = jax.grad(lambda a: iql.awr_policy_loss(log_prob, a, 3.0))(advantage)
    np.testing.assert_allclose(grad, [0.0, 0.0])
    grad = jax.grad(lambda lp: iql.awr_policy_loss(lp, advantage, 1.0))(log_prob)
    np.testing.assert_allclose(grad, [-0.5, -50.0], rtol=1e-6)


@pytest.mark.parametrize("discrete", [True, False])
def test_program_jit_vmap_no_recompile(discrete):
    _tiny.check_program(
        iql.make_iql,
        iql.IQLConfig,
        iql.IQLHParams,
        discrete,
        expectile=[0.7, 0.9],
        beta=[1.0, 3.0],
    )


def test_bad_input():
    with pytest.raises(ValueError, match="expectile: expected in \\(0, 1\\)"):
        iql.make_iql(iql.IQLConfig(expectile=1.0), 3, _tiny.DISCRETE)
    with pytest.raises(ValueError, match="beta: expected >= 0"):
        iql.make_iql(iql.IQLConfig(beta=-1.0), 3, _tiny.DISCRETE)
    program = iql.make_iql(iql.IQLConfig(**_tiny.TINY), 3, _tiny.DISCRETE)
    with pytest.raises(ValueError, match="built for 2 discrete actions"):
        program.train(jax.random.key(0), _tiny.transitions(False))
