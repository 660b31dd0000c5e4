"""Behaviour cloning: losses vs NumPy, the compiled program, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.offline import bc, iql, registry
from convergence_jax.offline._common import ActionSpec, check_data, hparam_grid
from tests.offline import _tiny


def test_bc_losses_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    actions = np.array([0, 2, 1, 1, 0])
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -log_softmax[np.arange(5), actions].mean()
    got = bc.bc_discrete_loss(jnp.asarray(logits), jnp.asarray(actions))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    pred, target = rng.normal(size=(2, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(
        bc.bc_mse_loss(pred, target), ((pred - target) ** 2).mean(), rtol=1e-6
    )
    with pytest.raises(AssertionError):
        bc.bc_discrete_loss(jnp.asarray(logits), jnp.asarray(actions[:4]))


@pytest.mark.parametrize("discrete", [True, False])
def test_program_jit_vmap_no_recompile(discrete):
    _tiny.check_program(
        bc.make_bc, bc.BCConfig, bc.BCHParams, discrete, learning_rate=[1e-3, 3e-3]
    )


def test_bc_fits_the_behaviour_rule():
    data = _tiny.transitions(True, n=256)
    program = bc.make_bc(
        bc.BCConfig(
            num_steps=300, batch_size=64, hidden_sizes=(16,), learning_rate=3e-3
        ),
        _tiny.OBS_DIM,
        _tiny.DISCRETE,
    )
    state, metrics = jax.jit(program.train)(jax.random.key(0), data)
    assert metrics["loss"][-1] < 0.5 * metrics["loss"][0]
    actions = program.policy(state, data.observations)
    assert np.mean(np.asarray(actions) == np.asarray(data.actions)) > 0.9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 6, "num_devices": 4}, "multiple of num_devices"),
        ({"num_devices": 64}, "64 requested"),
        ({"num_steps": 0}, "num_steps: expected an int >= 1"),
        ({"hidden_sizes": ()}, "hidden_sizes: expected positive ints"),
        ({"activation": "sigmoid"}, "activation: expected one of"),
        ({"learning_rate": 0.0}, "learning_rate: expected > 0"),
    ],
)
def test_bad_config_fails_before_compiling(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bc.make_bc(bc.BCConfig(**kwargs), _tiny.OBS_DIM, _tiny.DISCRETE)


def test_dataset_not_matching_the_algorithm():
    discrete = bc.make_bc(bc.BCConfig(**_tiny.TINY), _tiny.OBS_DIM, _tiny.DISCRETE)
    with pytest.raises(ValueError, match="built for 2 discrete actions"):
        discrete.train(jax.random.key(0), _tiny.transitions(False))
    continuous = bc.make_bc(bc.BCConfig(**_tiny.TINY), _tiny.OBS_DIM, _tiny.CONTINUOUS)
    with pytest.raises(ValueError, match="continuous actions of 1 dimensions"):
        continuous.train(jax.random.key(0), _tiny.transitions(True))
    wrong_obs = bc.make_bc(bc.BCConfig(**_tiny.TINY), 5, _tiny.DISCRETE)
    with pytest.raises(ValueError, match=r"observations: expected \[N, obs_dim\]"):
        wrong_obs.train(jax.random.key(0), _tiny.transitions(True))
    with pytest.raises(ValueError, match="obs_dim must be an int"):
        bc.make_bc(bc.BCConfig(), 0, _tiny.DISCRETE)
    with pytest.raises(ValueError, match="action_spec must be an offline ActionSpec"):
        bc.make_bc(bc.BCConfig(), 3, 2)
    # host-side validation before compiling: NaN rewards, actions out of range
    data = _tiny.transitions(True)
    with pytest.raises(ValueError, match="rewards: 1 NaN"):
        check_data(
            data.replace(rewards=data.rewards.at[3].set(jnp.nan)), 3, _tiny.DISCRETE
        )
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\)"):
        check_data(data, 3, ActionSpec.make_discrete(1))
    with pytest.raises(ValueError, match="expected an offline.Transitions"):
        check_data({"rewards": data.rewards}, 3, _tiny.DISCRETE)


def test_registry_knows_every_algorithm_and_rejects_unknown_ones():
    assert {"bc", "td3bc", "cql", "iql"} <= set(registry.ALGORITHMS)
    with pytest.raises(
        ValueError, match="unknown offline algorithm 'cqll'.*did you mean cql"
    ):
        registry.get_algorithm("cqll")
    with pytest.raises(ValueError, match="'td3bc' does not support discrete"):
        registry.make_algorithm("td3bc", 3, _tiny.DISCRETE)
    program = registry.make_algorithm("bc", 3, _tiny.DISCRETE, num_steps=2)
    assert program.config.num_steps == 2
    for name, algo in registry.ALGORITHMS.items():
        assert algo.config().num_steps >= 1, name


def test_hparam_grid():
    program = bc.make_bc(bc.BCConfig(), _tiny.OBS_DIM, _tiny.DISCRETE)
    grid = hparam_grid(program.default_hparams, learning_rate=[1e-4, 1e-3])
    np.testing.assert_allclose(grid.learning_rate, [1e-4, 1e-3])
    with pytest.raises(ValueError, match="unknown fields \\['lr'\\]"):
        hparam_grid(program.default_hparams, lr=[1e-4])
    with pytest.raises(ValueError, match="equal lengths"):
        hparam_grid(
            iql.make_iql(iql.IQLConfig(), 3, _tiny.DISCRETE).default_hparams,
            beta=[1.0],
            expectile=[0.5, 0.7],
        )
