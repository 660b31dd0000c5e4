"""The orbax checkpoint module: exact round trips, typed keys, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import checkpoint


def tree(seed):
    return {
        "w": jnp.arange(6.0).reshape(2, 3) + seed,
        "step": jnp.int32(seed),
        "keys": jax.random.split(jax.random.key(seed), 3),
        "nested": (jnp.ones(2, jnp.bfloat16), jnp.array([True, False])),
    }


def test_round_trip_with_typed_keys(tmp_path):
    saved = tree(1)
    path = checkpoint.save(tmp_path / "c", saved, step=5)
    assert path.name == "5" and path.exists()
    restored = checkpoint.restore(tmp_path / "c", like=tree(0))
    assert jax.dtypes.issubdtype(restored["keys"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(
        jax.random.key_data(restored["keys"]), jax.random.key_data(saved["keys"])
    )
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored), strict=True):
        if not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    # the restored keys draw the same numbers
    np.testing.assert_array_equal(
        jax.random.normal(restored["keys"][0]), jax.random.normal(saved["keys"][0])
    )


def test_restored_state_reuses_the_compiled_program(tmp_path):
    """A restored tree is placed as ``like`` is (uncommitted here), so a program
    compiled on the live state runs the restored one without compiling again;
    a ``like`` committed to a device gives committed arrays."""
    step = jax.jit(lambda t: jax.tree.map(lambda x: x, t))
    live = step(tree(1))
    checkpoint.save(tmp_path / "c", live, step=1)
    restored = checkpoint.restore(tmp_path / "c", like=tree(0))
    assert not any(x.committed for x in jax.tree.leaves(restored))
    step(restored)
    assert step._cache_size() == 1
    pinned = jax.device_put(tree(0), jax.devices()[0])
    again = checkpoint.restore(tmp_path / "c", like=pinned)
    assert all(x.committed for x in jax.tree.leaves(again))
    np.testing.assert_array_equal(again["w"], live["w"])
    tree_path = checkpoint.save_tree(tmp_path / "t", live)
    assert not any(
        x.committed
        for x in jax.tree.leaves(checkpoint.restore_tree(tree_path, tree(0)))
    )


def test_steps_latest_overwrite_and_max_to_keep(tmp_path):
    d = tmp_path / "c"
    assert checkpoint.latest_step(d) is None
    for step in (1, 2, 3):
        checkpoint.save(d, tree(step), step=step, max_to_keep=2)
    assert checkpoint.all_steps(d) == [2, 3]
    assert int(checkpoint.restore(d, like=tree(0), step=2)["step"]) == 2
    with pytest.raises(FileExistsError, match="step 3 exists"):
        checkpoint.save(d, tree(9), step=3)
    checkpoint.save(d, tree(9), step=3, overwrite=True)
    assert int(checkpoint.restore(d, like=tree(0))["step"]) == 9


def test_missing_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        checkpoint.restore(tmp_path / "nothing", like=tree(0))
    checkpoint.save(tmp_path / "c", tree(1), step=1)
    with pytest.raises(FileNotFoundError, match=r"saved steps: \[1\]"):
        checkpoint.restore(tmp_path / "c", like=tree(0), step=4)
