"""CQL: the conservative gaps and the double-DQN loss vs NumPy, the tanh-Gaussian
log-density vs distrax, the compiled program (discrete and continuous)."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.offline import cql
from convergence_jax.offline.networks import tanh_gaussian_log_prob
from tests.offline import _tiny


def _logsumexp(x, axis):
    m = x.max(axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis, keepdims=True))).squeeze(axis)


def test_discrete_gap_matches_numpy():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(6, 3)).astype(np.float32)
    a = rng.integers(0, 3, 6)
    expected = (_logsumexp(q, 1) - q[np.arange(6), a]).mean()
    np.testing.assert_allclose(cql.cql_discrete_gap(q, a), expected, rtol=1e-5)
    # the gap is >= 0 and its gradient pushes Q(s, a_data) up, the others down
    grad = jax.grad(cql.cql_discrete_gap)(jnp.asarray(q), jnp.asarray(a))
    assert np.all(np.asarray(grad)[np.arange(6), a] < 0)
    np.testing.assert_allclose(np.asarray(grad).sum(1), 0.0, atol=1e-6)


@pytest.mark.parametrize("importance_sample", [True, False])
def test_continuous_gap_matches_numpy(importance_sample):
    rng = np.random.default_rng(1)
    b, n, d, temp = 4, 5, 2, 0.7
    q_data = rng.normal(size=b)
    q_rand, q_cur, lp_cur, q_nxt, lp_nxt = rng.normal(size=(5, b, n))
    if importance_sample:
        cat = np.concatenate(
            [q_rand - d * np.log(0.5), q_nxt - lp_nxt, q_cur - lp_cur], 1
        )
    else:
        cat = np.concatenate([q_rand, q_data[:, None], q_nxt, q_cur], 1)
    diff = temp * _logsumexp(cat / temp, 1) - q_data
    args = [jnp.asarray(x, jnp.float32) for x in (q_data, q_rand, q_cur, lp_cur)]
    args += [jnp.asarray(q_nxt, jnp.float32), jnp.asarray(lp_nxt, jnp.float32)]
    got = cql.cql_continuous_gap(*args, d, temp, importance_sample)
    np.testing.assert_allclose(got, diff.mean(), rtol=1e-5)
    clipped = cql.cql_continuous_gap(*args, d, temp, importance_sample, -0.1, 0.1)
    np.testing.assert_allclose(clipped, np.clip(diff, -0.1, 0.1).mean(), rtol=1e-5)


def test_double_dqn_loss_hand_fixture():
    q = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    actions = jnp.array([1, 0])
    rewards = jnp.array([1.0, 0.5])
    terminals = jnp.array([False, True])
    online = jnp.array([[0.0, 5.0], [9.0, 0.0]])  # picks action 1, then 0
    target = jnp.array([[100.0, 1.0], [3.0, 4.0]])
    # y = [1 + 0.5 * 1, 0.5]; errors [2 - 1.5, 0 - 0.5] -> huber 0.125 each
    got = cql.double_dqn_loss(q, actions, rewards, terminals, online, target, 0.5)
    np.testing.assert_allclose(got, 0.125, rtol=1e-6)
    # large errors are linear (Huber, delta 1)
    got = cql.double_dqn_loss(
        q + 10.0, actions, rewards, terminals, online, target, 0.5
    )
    np.testing.assert_allclose(got, ((12 - 1.5 - 0.5) + (10 - 0.5 - 0.5)) / 2)


def test_tanh_gaussian_log_prob_matches_distrax():
    rng = np.random.default_rng(2)
    mean, log_std, u = (jnp.asarray(x, jnp.float32) for x in rng.normal(size=(3, 4, 2)))
    dist = distrax.Transformed(
        distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)),
        distrax.Block(distrax.Tanh(), 1),
    )
    np.testing.assert_allclose(
        tanh_gaussian_log_prob(mean, log_std, u),
        dist.log_prob(jnp.tanh(u)),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize("discrete", [True, False])
def test_program_jit_vmap_no_recompile(discrete):
    states, metrics = _tiny.check_program(
        cql.make_cql,
        cql.CQLConfig,
        cql.CQLHParams,
        discrete,
        cql_weight=[1.0, 5.0],
        critic_lr=[1e-3, 3e-3],
    )
    assert np.all(np.asarray(metrics["cql_gap"]) > -1e-4)  # logsumexp >= Q(s, a)


def test_lagrange_moves_alpha_prime_towards_the_target_gap():
    config = cql.CQLConfig(**{**_tiny.TINY, "num_steps": 5}, lagrange=True)
    program = cql.make_cql(config, _tiny.OBS_DIM, _tiny.DISCRETE)
    data = _tiny.transitions(True)
    # a gap below the target lowers alpha', above raises it
    low = program.default_hparams.replace(target_action_gap=jnp.float32(100.0))
    high = program.default_hparams.replace(target_action_gap=jnp.float32(-100.0))
    train = jax.jit(program.train)
    _, m_low = train(jax.random.key(0), data, low)
    _, m_high = train(jax.random.key(0), data, high)
    assert m_low["alpha_prime"][-1] < np.e < m_high["alpha_prime"][-1]


def test_bad_input():
    with pytest.raises(ValueError, match="num_sampled_actions: expected an int"):
        cql.make_cql(cql.CQLConfig(num_sampled_actions=0), 3, _tiny.CONTINUOUS)
    with pytest.raises(ValueError, match="cql_weight: expected >= 0"):
        cql.make_cql(cql.CQLConfig(cql_weight=-1.0), 3, _tiny.CONTINUOUS)
    assert (
        cql.make_cql(cql.CQLConfig(), 3, _tiny.DISCRETE).default_hparams.cql_weight
        == 1.0
    )
    continuous = cql.make_cql(cql.CQLConfig(), 3, _tiny.CONTINUOUS)
    assert continuous.default_hparams.cql_weight == 5.0
    assert continuous.default_hparams.target_entropy == -1.0
    with pytest.raises(ValueError, match="built for 2 discrete actions"):
        cql.make_cql(cql.CQLConfig(**_tiny.TINY), 3, _tiny.DISCRETE).train(
            jax.random.key(0), _tiny.transitions(False)
        )
