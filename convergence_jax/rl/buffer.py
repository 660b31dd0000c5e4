"""A replay buffer that lives inside the compiled program: a ring buffer pytree.

    buffer = buffer_init(example_transition, capacity=10_000, num_envs=8)
    buffer = buffer_add(buffer, transition)             # leaves [num_envs, ...]
    batch = buffer_sample(key, buffer, batch_size=128)  # leaves [128, ...]
    seqs = buffer_sample_sequences(key, buffer, 64, 3)  # leaves [64, 3, ...]

Storage is time-major, ``[capacity // num_envs, num_envs, ...]``: every call adds
one step of every environment, so steps ``t, t+1, ...`` of one environment are
neighbours and n-step returns can be read as short contiguous sequences.

Why not ``flashbax``: its flat and trajectory buffers do the same thing, but it is
one more dependency for about a hundred lines, and a plain ``flax.struct``
dataclass is checkpointed by orbax, vmapped over seeds and split over a device
mesh (along ``num_envs``) like every other state here, with nothing to adapt.
All functions are pure and safe under ``jit``, ``vmap``, ``lax.scan`` and
``shard_map``; sizes are static (they come from the leaves' shapes).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

__all__ = [
    "ReplayBuffer",
    "buffer_add",
    "buffer_can_sample",
    "buffer_init",
    "buffer_sample",
    "buffer_sample_sequences",
]


@struct.dataclass
class ReplayBuffer:
    """Ring buffer state. ``data`` leaves are ``[rows, num_envs, ...]``.

    ``rows``, ``num_envs`` and ``size`` read the leaves' shapes: inside ``vmap``
    they are the per-seed figures; on a stack of buffers outside it (a leading
    seeds axis, e.g. the output of a vmapped run) index one buffer first.
    """

    data: Any
    insert: jax.Array
    """Next row to write (int32)."""
    rows_filled: jax.Array
    """Rows written so far, at most ``rows`` (int32)."""

    @property
    def rows(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]

    @property
    def num_envs(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[1]

    @property
    def size(self) -> jax.Array:
        """Transitions stored (all environments together)."""
        return self.rows_filled * self.num_envs


def buffer_init(example: Any, capacity: int, num_envs: int = 1) -> ReplayBuffer:
    """An empty buffer for transitions shaped like ``example`` (one, unbatched).

    ``capacity`` counts transitions over all environments; it is rounded down to a
    multiple of ``num_envs`` and must leave at least one row.
    """
    for name, value in (("capacity", capacity), ("num_envs", num_envs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"buffer_init: {name} must be an int >= 1, got {value!r}")
    rows = capacity // num_envs
    if rows < 1:
        raise ValueError(
            f"buffer_init: capacity {capacity} is smaller than num_envs {num_envs}"
        )
    data = jax.tree.map(
        lambda x: jnp.zeros((rows, num_envs, *jnp.shape(x)), jnp.asarray(x).dtype),
        example,
    )
    return ReplayBuffer(data, jnp.int32(0), jnp.int32(0))


def buffer_add(buffer: ReplayBuffer, transition: Any) -> ReplayBuffer:
    """Write one step of every environment (leaves ``[num_envs, ...]``)."""
    data = jax.tree.map(
        lambda store, x: store.at[buffer.insert].set(x.astype(store.dtype)),
        buffer.data,
        transition,
    )
    return buffer.replace(
        data=data,
        insert=(buffer.insert + 1) % buffer.rows,
        rows_filled=jnp.minimum(buffer.rows_filled + 1, buffer.rows),
    )


def buffer_can_sample(buffer: ReplayBuffer, min_size: int | jax.Array) -> jax.Array:
    """Whether at least ``min_size`` transitions are stored."""
    return buffer.size >= min_size


def buffer_sample(key: jax.Array, buffer: ReplayBuffer, batch_size: int) -> Any:
    """``batch_size`` transitions drawn uniformly with replacement (leaves
    ``[batch_size, ...]``). An empty buffer returns its zero rows; guard with
    ``buffer_can_sample``."""
    row_key, env_key = jax.random.split(key)
    rows = jax.random.randint(
        row_key, (batch_size,), 0, jnp.maximum(buffer.rows_filled, 1)
    )
    envs = jax.random.randint(env_key, (batch_size,), 0, buffer.num_envs)
    return jax.tree.map(lambda store: store[rows, envs], buffer.data)


def buffer_sample_sequences(
    key: jax.Array, buffer: ReplayBuffer, batch_size: int, length: int
) -> Any:
    """``batch_size`` runs of ``length`` consecutive steps of one environment
    (leaves ``[batch_size, length, ...]``), uniformly over the runs that lie wholly
    in written rows and do not cross the write head (so no run mixes old and new
    data). Episode boundaries inside a run are the caller's to mask (with the
    stored ``done`` flags). Needs ``rows_filled >= length``.
    """
    row_key, env_key = jax.random.split(key)
    starts_available = jnp.maximum(buffer.rows_filled - length + 1, 1)
    offset = jax.random.randint(row_key, (batch_size,), 0, starts_available)
    # Once the ring is full the oldest row is the write head; count from it so a
    # run never wraps across the newest row into the oldest.
    oldest = jnp.where(buffer.rows_filled < buffer.rows, 0, buffer.insert)
    rows = (oldest + offset[:, None] + jnp.arange(length)[None, :]) % buffer.rows
    envs = jax.random.randint(env_key, (batch_size,), 0, buffer.num_envs)
    return jax.tree.map(lambda store: store[rows, envs[:, None]], buffer.data)
