"""BCQ: the VAE's ELBO and the targets vs NumPy, the discrete mask on a hand
fixture, the compiled programs (jit, vmap, no recompile, 4 devices == 1), bad
input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.offline import bcq
from convergence_jax.offline._common import hparam_grid
from tests.offline import _devices, _tiny

SMALL = dict(vae_hidden_sizes=(16,), num_action_samples=8, num_target_samples=4)


def test_vae_loss_is_the_elbo_of_the_authors():
    rng = np.random.default_rng(0)
    recon, action = rng.normal(size=(2, 3)).astype(np.float32)
    mean, log_std = rng.normal(size=(2, 6)).astype(np.float32)
    std = np.exp(log_std)
    recon_loss = np.mean((recon - action) ** 2)
    # KL(N(mean, std) || N(0, 1)) per dimension, averaged (BCQ.py's KL_loss)
    kl = np.mean(-0.5 * (1 + np.log(std**2) - mean**2 - std**2))
    np.testing.assert_allclose(
        bcq.vae_loss(recon, action, mean, log_std, 0.5), recon_loss + 0.5 * kl,
        rtol=1e-5,
    )  # fmt: skip
    np.testing.assert_allclose(
        bcq.vae_loss(recon, action, mean, log_std, 0.0), recon_loss, rtol=1e-6
    )
    # KL is 0 at the prior, and the batch mean of the per-example losses is the
    # authors' mse_loss + 0.5 * KL.mean() over the batch
    zero = jnp.zeros(6)
    assert float(bcq.vae_loss(action, action, zero, zero, 0.5)) == 0.0
    with pytest.raises(AssertionError):
        bcq.vae_loss(recon, action[:2], mean, log_std)


def test_soft_clipped_double_q_matches_numpy():
    q = np.random.default_rng(1).normal(size=(10, 2)).astype(np.float32)
    expected = np.max(0.75 * q.min(1) + 0.25 * q.max(1))
    np.testing.assert_allclose(bcq.soft_clipped_double_q(q, 0.75), expected, rtol=1e-6)
    np.testing.assert_allclose(bcq.soft_clipped_double_q(q, 1.0), q.min(1).max())


def test_discrete_mask_target_and_imitation_on_a_hand_fixture():
    # behaviour probabilities 0.5, 0.2, 0.14, 0.16 -> ratios to the max 1, 0.4,
    # 0.28, 0.32: with tau = 0.3 actions 0, 1, 3 are allowed, 2 is not
    probs = np.array([0.5, 0.2, 0.14, 0.16], np.float32)
    logits = jnp.log(probs) + 1.7  # any shift
    np.testing.assert_array_equal(
        bcq.discrete_bcq_mask(logits, 0.3), [True, True, False, True]
    )
    np.testing.assert_array_equal(
        bcq.discrete_bcq_mask(logits, 0.1), [True, True, True, True]
    )
    np.testing.assert_array_equal(
        bcq.discrete_bcq_mask(logits, 0.99), [True, False, False, False]
    )
    next_q = jnp.array([1.0, 2.0, 5.0, 3.0])  # the best action (2) is not allowed
    next_target_q = jnp.array([10.0, 20.0, 50.0, 30.0])
    target = bcq.discrete_bcq_target(
        jnp.float32(1.0), jnp.float32(0.9), next_q, next_target_q, logits, 0.3
    )
    np.testing.assert_allclose(target, 1.0 + 0.9 * 30.0)  # action 3, target net
    expected = -np.log(probs[1]) + 0.01 * np.mean(np.asarray(logits) ** 2)
    np.testing.assert_allclose(
        bcq.discrete_imitation_loss(logits, jnp.int32(1), 0.01), expected, rtol=1e-5
    )


def test_program_jit_vmap_no_recompile():
    # continuous (the discrete program: test_discrete_policy_stays_on_the_data)
    discrete = False
    config = functools.partial(bcq.BCQConfig, **SMALL)
    _tiny.check_program(
        bcq.make_bcq,
        config,
        bcq.BCQHParams,
        discrete,
        learning_rate=[1e-3, 3e-3],
        vae_learning_rate=[1e-3, 3e-3],
    )


def test_four_devices_equal_one_device():
    # continuous (the discrete program shares _common's data-parallel update)
    def make(devices):
        config = bcq.BCQConfig(**_tiny.TINY, **SMALL, num_devices=devices)
        return bcq.make_bcq(config, _tiny.OBS_DIM, _tiny.CONTINUOUS)

    _devices.assert_updates_match(make, _tiny.transitions(False))


def test_discrete_policy_stays_on_the_data_where_greedy_q_leaves_it():
    # behaviour: action 0 where obs[0] > 0, else 1; reward 1 for action 0. The
    # Q-network extrapolates "action 0 is good" to states where the data never
    # took it; the behaviour mask keeps BCQ's policy on the data's action there.
    # One jit of a vmap over (seed, hparams) pairs, no recompile on new numbers.
    data = _tiny.transitions(True, n=256)
    data = data.replace(rewards=(data.actions == 0).astype(jnp.float32))
    config = bcq.BCQConfig(
        num_steps=300, batch_size=64, hidden_sizes=(16,), learning_rate=3e-3
    )
    program = bcq.make_bcq(config, _tiny.OBS_DIM, _tiny.DISCRETE)
    train = jax.jit(jax.vmap(program.train, (0, None, 0)))
    seeds = jax.random.split(jax.random.key(0), 2)
    keys = jnp.stack([seeds[0], seeds[1], seeds[0]])
    grid = hparam_grid(program.default_hparams, learning_rate=[3e-3, 3e-3, 2e-3])
    states, metrics = train(keys, data, grid)
    w = states.critic["params"]["LogitsNet_0"]["MLP_0"]["Dense_0"]["kernel"]
    assert not np.allclose(w[0], w[1]) and not np.allclose(w[0], w[2])
    behaviour = np.asarray(data.actions)
    net = bcq.DiscreteBCQNet(2, (16,))
    policy = jax.jit(program.policy)
    for i in range(3):
        state = jax.tree.map(lambda x, i=i: x[i], states)
        loss = np.asarray(metrics["imitation_loss"][i])
        assert loss[-10:].mean() < 0.5 * loss[:10].mean()
        actions = np.asarray(policy(state, data.observations))
        q, logits = net.apply(state.critic, state.obs_norm(data.observations))
        greedy = np.asarray(q.argmax(-1))
        assert np.mean(greedy[behaviour == 1] == 0) > 0.9  # unconstrained: off data
        assert np.mean(actions == behaviour) > 0.85  # BCQ: the data's action
        allowed = np.asarray(jax.vmap(bcq.discrete_bcq_mask, (0, None))(logits, 0.3))
        assert allowed[np.arange(len(actions)), actions].all()  # never masked
    train(keys, data, jax.tree.map(lambda x: x * 0.5, grid))
    assert train._cache_size() == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": 1.0}, "threshold: expected in \\(0, 1\\)"),
        ({"threshold": 0.0}, "threshold: expected > 0"),
        ({"num_target_samples": 0}, "num_target_samples: expected an int >= 1"),
        ({"latent_dim": 0}, "latent_dim: expected None or an int >= 1"),
        ({"vae_hidden_sizes": ()}, "vae_hidden_sizes: expected positive ints"),
        ({"lam": 1.5}, "lam: expected in \\[0, 1\\]"),
        ({"batch_size": 6, "num_devices": 4}, "multiple of num_devices"),
    ],
)
def test_bad_config_fails_before_compiling(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bcq.make_bcq(bcq.BCQConfig(**kwargs), _tiny.OBS_DIM, _tiny.CONTINUOUS)


def test_dataset_not_matching_the_algorithm():
    program = bcq.make_bcq(
        bcq.BCQConfig(**_tiny.TINY, **SMALL), _tiny.OBS_DIM, _tiny.CONTINUOUS
    )
    with pytest.raises(ValueError, match="continuous actions of 1 dimensions"):
        program.train(jax.random.key(0), _tiny.transitions(True))
    with pytest.raises(ValueError, match="action_spec must be an offline ActionSpec"):
        bcq.make_bcq(bcq.BCQConfig(), 3, 2)
