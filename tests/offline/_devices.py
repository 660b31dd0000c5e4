"""4 devices == 1 device, one update at a time (for BCQ, BEAR and DT)."""

import jax
import jax.numpy as jnp
import numpy as np


def assert_updates_match(make_program, data, num_updates: int = 2, seed: int = 3):
    """``make_program(num_devices)`` -> a program; from the same state, the
    4-device ``update`` equals the 1-device one (parameters, optimizer states and
    metrics), for ``num_updates`` successive updates.

    Each update starts both programs from the 1-device state: over many updates
    the float sums' order (and the all-reduce's) differs at the 1e-7 level and
    Adam's first steps (nearly sign(g) where g is ~0) can amplify that into a
    step-sized difference, which says nothing about the data-parallel update.
    """
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    one, four = make_program(1), make_program(4)
    update_one, update_four = jax.jit(one.update), jax.jit(four.update)
    state = jax.jit(one.init)(jax.random.key(seed), data)
    hparams = one.default_hparams
    moved = 0.0
    for _ in range(num_updates):
        a, metrics_a = update_one(state, data, hparams)
        b, metrics_b = update_four(state, data, hparams)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            if jnp.issubdtype(x.dtype, jnp.floating):
                np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
        for name in metrics_a:
            np.testing.assert_allclose(
                metrics_a[name], metrics_b[name], rtol=1e-4, atol=1e-6
            )
        floats = [
            (x, y)
            for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(a), strict=True)
            if jnp.issubdtype(x.dtype, jnp.floating)
        ]
        moved = max(moved, max(float(np.abs(x - y).max()) for x, y in floats))
        state = a
    assert moved > 1e-5  # the updates did change the state
    return state
