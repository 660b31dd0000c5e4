"""Data parallel offline updates: 4 CPU devices compute what 1 device computes on
the same global minibatch (conftest forces 4 host devices before JAX starts).

TD3+BC (its lambda averages |Q| over the global batch), continuous CQL (per-example
policy and uniform samples) and discrete IQL (per-example advantages); BC shares
the same ``_common.make_update``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.offline import cql, iql, td3bc
from tests.offline import _tiny

CASES = {
    "td3bc": (td3bc.make_td3bc, td3bc.TD3BCConfig, False),
    "cql-continuous": (cql.make_cql, cql.CQLConfig, False),
    "iql-discrete": (iql.make_iql, iql.IQLConfig, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_four_devices_equal_one_device(name):
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    make, config_cls, discrete = CASES[name]
    data = _tiny.transitions(discrete)
    runs = {}
    for devices in (1, 4):
        config = config_cls(
            num_steps=4, batch_size=16, hidden_sizes=(16,), num_devices=devices
        )
        program = make(config, _tiny.OBS_DIM, _tiny.spec(discrete))
        runs[devices] = jax.jit(program.train)(jax.random.key(3), data)
    (s1, m1), (s4, m4) = runs[1], runs[4]
    leaves1, leaves4 = jax.tree.leaves(s1), jax.tree.leaves(s4)
    assert len(leaves1) == len(leaves4)
    for a, b in zip(leaves1, leaves4, strict=True):
        if jnp.issubdtype(a.dtype, jnp.floating):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    for key in m1:
        np.testing.assert_allclose(m1[key], m4[key], rtol=2e-4, atol=1e-6)
