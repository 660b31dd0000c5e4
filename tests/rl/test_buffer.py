import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.rl.buffer import (
    buffer_add,
    buffer_can_sample,
    buffer_init,
    buffer_sample,
    buffer_sample_sequences,
)


def _step(t, num_envs):
    # Each transition records its own time and environment, so samples can be
    # traced back to where they were written.
    return {
        "t": jnp.full((num_envs,), t, jnp.int32),
        "env": jnp.arange(num_envs, dtype=jnp.int32),
        "obs": jnp.full((num_envs, 3), t, jnp.float32),
    }


def _fill(buffer, steps, num_envs):
    for t in range(steps):
        buffer = buffer_add(buffer, _step(t, num_envs))
    return buffer


def test_ring_overwrites_oldest_rows():
    example = jax.tree.map(lambda x: x[0], _step(0, 2))
    buffer = buffer_init(example, capacity=10, num_envs=2)  # 5 rows
    assert buffer.rows == 5 and buffer.num_envs == 2
    buffer = _fill(buffer, 7, 2)
    assert int(buffer.rows_filled) == 5 and int(buffer.size) == 10
    assert int(buffer.insert) == 2
    np.testing.assert_array_equal(buffer.data["t"][:, 0], [5, 6, 2, 3, 4])
    assert buffer.data["obs"].shape == (5, 2, 3)


def test_sample_only_written_rows():
    example = jax.tree.map(lambda x: x[0], _step(0, 4))
    buffer = _fill(buffer_init(example, capacity=400, num_envs=4), 3, 4)
    assert not bool(buffer_can_sample(buffer, 13))
    assert bool(buffer_can_sample(buffer, 12))
    batch = jax.jit(buffer_sample, static_argnums=2)(jax.random.key(0), buffer, 256)
    assert batch["t"].shape == (256,) and batch["obs"].shape == (256, 3)
    assert set(np.unique(batch["t"])) == {0, 1, 2}
    assert set(np.unique(batch["env"])) == {0, 1, 2, 3}
    np.testing.assert_array_equal(batch["obs"][:, 0], batch["t"])


@pytest.mark.parametrize("steps", [4, 9, 23])
def test_sequences_are_contiguous_and_never_cross_the_write_head(steps):
    example = jax.tree.map(lambda x: x[0], _step(0, 2))
    buffer = _fill(buffer_init(example, capacity=16, num_envs=2), steps, 2)
    seqs = buffer_sample_sequences(jax.random.key(1), buffer, 512, 3)
    t = np.asarray(seqs["t"])
    assert t.shape == (512, 3)
    # Consecutive steps of one environment, and only steps still in the buffer.
    np.testing.assert_array_equal(np.diff(t, axis=1), 1)
    assert t.min() >= max(0, steps - 8) and t.max() <= steps - 1
    assert (seqs["env"] == seqs["env"][:, :1]).all()
    # Every valid start is reachable.
    assert len(np.unique(t[:, 0])) == min(steps, 8) - 2


def test_vmapped_over_seeds():
    example = jax.tree.map(lambda x: x[0], _step(0, 2))

    def run(key):
        buffer = buffer_init(example, capacity=8, num_envs=2)

        def body(buffer, t):
            return buffer_add(buffer, _step(t, 2)), None

        buffer, _ = jax.lax.scan(body, buffer, jnp.arange(6))
        return buffer_sample(key, buffer, 5)["t"]

    out = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(2), 3))
    assert out.shape == (3, 5)
    assert (np.asarray(out) >= 2).all()


def test_bad_sizes():
    with pytest.raises(ValueError, match="capacity"):
        buffer_init({"x": jnp.zeros(())}, capacity=0)
    with pytest.raises(ValueError, match="smaller than num_envs"):
        buffer_init({"x": jnp.zeros(())}, capacity=3, num_envs=4)
