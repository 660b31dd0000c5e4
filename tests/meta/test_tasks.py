"""Task suite: BBOB optima, rotations, normalization, CartPole and regression."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import meta
from convergence_jax.meta import tasks as tk


@pytest.fixture(scope="module")
def bbob():
    return meta.bbob_family(tuple(meta.BBOB_FUNCTIONS), 4, instance=3,
                            reference_samples=16)  # fmt: skip


def test_bbob_functions_are_zero_at_the_shifted_optimum_and_positive_elsewhere(bbob):
    shifts = bbob.data["shift"]
    at_opt = jax.vmap(lambda t, x: bbob.fitness(t, x[None])[0])(bbob.data, shifts)
    # float32 rounding only (measured: |f| <= 1e-6, from ackley's exp/sqrt terms)
    np.testing.assert_allclose(at_opt, 0.0, atol=1e-5)
    away = jax.vmap(lambda t, x: bbob.fitness(t, x[None] + 0.7)[0])(bbob.data, shifts)
    assert np.all(np.asarray(away) < -1.0)  # measured: sphere's 1.96 is the least
    rot = np.asarray(bbob.data["rotation"])
    eye = np.broadcast_to(np.eye(4), rot.shape)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), eye, atol=1e-5)
    assert bbob.task_names[0] == "sphere-d4-i3"


def test_normalization_is_zero_at_the_reference_and_one_at_the_optimum(bbob):
    t = bbob.task(1)
    assert float(tk.normalize(bbob, t, t["reference"])) == pytest.approx(0.0, abs=1e-5)
    assert float(tk.normalize(bbob, t, 0.0)) == 1.0
    assert float(tk.normalize(bbob, t, jnp.nan)) == -1.0
    # Log scale: halfway in log-gap between reference and tolerance.
    gap = np.sqrt(-float(t["reference"]) * 1e-6)
    assert float(tk.normalize(bbob, t, -gap)) == pytest.approx(0.5, abs=1e-3)


def test_cartpole_and_regression_families():
    cart = meta.cartpole_family((0.5, 1.0), max_steps=50, num_episodes=1,
                                reference_samples=8)  # fmt: skip
    assert cart.task_names == ("cartpole-len0.5", "cartpole-len1")
    # The reference is the mean return of random policies (episodes of 1..50).
    assert np.all((cart.data["reference"] > 1) & (cart.data["reference"] < 50))
    assert cart.init_population(jax.random.key(0), cart.task(0), 5)["layer0"][
        "kernel"
    ].shape == (5, 4, 8)
    reg = meta.regression_family(((2.0, 0.5, 1.0),), hidden=4, num_points=8,
                                 reference_samples=8)  # fmt: skip
    pop = reg.init_population(jax.random.key(1), reg.task(0), 3)
    assert pop["layer0"]["kernel"].shape == (3, 1, 4)
    zero = jax.tree.map(jnp.zeros_like, pop)
    mse = -reg.fitness(reg.task(0), zero)
    ys = np.sin(2.0 * np.linspace(-2, 2, 8) + 0.5)
    np.testing.assert_allclose(mse, np.mean(ys**2), rtol=1e-5)


def test_bad_task_arguments_fail_clearly():
    with pytest.raises(ValueError, match="functions: unknown 'sphear'"):
        meta.bbob_family(("sphear",), 3)
    with pytest.raises(ValueError, match="dim: expected an int >= 2"):
        meta.bbob_family(("sphere",), 1)
    with pytest.raises(ValueError, match="targets"):
        meta.regression_family(((1.0, 2.0),))
    with pytest.raises(ValueError, match="pole_lengths"):
        meta.cartpole_family((-1.0,))


def test_task_suite_rejects_an_unknown_training_split():
    with pytest.raises(ValueError, match="train: expected 'bbob' or 'mixed'"):
        meta.task_suite(train="everything")
