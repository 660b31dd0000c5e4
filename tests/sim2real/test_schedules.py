"""Progressive transfer schedules and the sim/real mix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.sim2real import (
    SCHEDULES,
    mix_params,
    param_ranges,
    sample_params,
    transfer_schedule,
)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("start, end", [(0.0, 1.0), (0.2, 0.7), (0.9, 0.1)])
def test_endpoints_and_monotonicity(kind, start, end):
    schedule = transfer_schedule(kind, 100, start, end)
    values = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(0, 131)))
    np.testing.assert_allclose(values[0], start, atol=1e-6)
    np.testing.assert_allclose(values[100:], end, atol=1e-6)
    steps = np.diff(values) * np.sign(end - start)
    assert np.all(steps >= -1e-6)
    assert np.all(
        (values >= min(start, end) - 1e-6) & (values <= max(start, end) + 1e-6)
    )


def test_shapes_against_formulas():
    t = np.arange(0, 101) / 100
    np.testing.assert_allclose(
        jax.vmap(transfer_schedule("cosine", 100))(jnp.arange(101)),
        0.5 * (1 - np.cos(np.pi * t)),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        jax.vmap(transfer_schedule("exponential", 100, rate=3.0))(jnp.arange(101)),
        np.expm1(3.0 * t) / np.expm1(3.0),
        atol=1e-6,
    )
    stairs = np.asarray(
        jax.vmap(transfer_schedule("step", 100, num_stages=4))(jnp.arange(101))
    )
    assert sorted(set(np.round(stairs, 6))) == [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(stairs[[24, 25, 99, 100]], [0.0, 0.25, 0.75, 1.0])


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("cosin", 10), {}, "unknown kind 'cosin'.*did you mean cosine"),
        (("linear", 0), {}, "num_steps must be an int >= 1"),
        (("linear", 10, -0.1), {}, "start must be a number in \\[0, 1\\]"),
        (("linear", 10, 0.0, 1.5), {}, "end must be"),
        (("exponential", 10), {"rate": 0.0}, "rate must be finite and non-zero"),
        (("step", 10), {"num_stages": 0}, "num_stages must be an int >= 1"),
    ],
)
def test_bad_schedules_fail_clearly(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        transfer_schedule(*args, **kwargs)


def test_mix_params_takes_real_with_the_scheduled_probability():
    import gymnax

    _, nominal = gymnax.make("Pendulum-v1")
    sim = sample_params(
        jax.random.key(0), nominal, param_ranges("Pendulum-v1", m=(0.5, 0.9)), 4000
    )
    real = nominal.replace(m=1.5)
    mixed, is_real = mix_params(jax.random.key(1), sim, real, 0.3)
    assert abs(float(is_real.mean()) - 0.3) < 0.03
    m = np.asarray(mixed.m)
    np.testing.assert_allclose(m[np.asarray(is_real)], 1.5)
    np.testing.assert_allclose(
        m[~np.asarray(is_real)], np.asarray(sim.m)[~np.asarray(is_real)]
    )
