"""Checkpoints of any pytree through orbax — the only module that imports orbax.

    from convergence_jax import checkpoint

    checkpoint.save("runs/ppo/ckpt", state, step=100)       # a folder per step
    state = checkpoint.restore("runs/ppo/ckpt", like=state)  # the latest step
    checkpoint.latest_step("runs/ppo/ckpt")                  # 100
    checkpoint.save_tree("runs/best/weights", params)        # one tree, one folder
    params = checkpoint.restore_tree("runs/best/weights", like=params)

Typed PRNG keys (``jax.random.key``) are stored as their raw key data and
rewrapped on restore with the implementation of the matching leaf of ``like``, so
a train state with per-environment keys round-trips exactly. Saves are
synchronous and atomic (orbax writes to a temporary folder and renames it): an
interrupted save never leaves a half-written step behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
    "AsyncTreeWriter",
    "all_steps",
    "latest_step",
    "restore",
    "restore_tree",
    "save",
    "save_tree",
]


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def _to_storable(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _manager(directory: str | Path, max_to_keep: int | None = None):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(
    directory: str | Path,
    tree: Any,
    step: int,
    *,
    max_to_keep: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``tree`` as step ``step`` under ``directory``; returns the step folder.

    ``max_to_keep`` keeps only the newest steps; ``overwrite`` replaces an existing
    step (otherwise saving a step twice raises ``FileExistsError``).
    """
    step = int(step)
    with _manager(directory, max_to_keep) as manager:
        if step in manager.all_steps():
            if not overwrite:
                raise FileExistsError(
                    f"checkpoint step {step} exists in {directory} (overwrite=True "
                    "replaces it)"
                )
            manager.delete(step)
        manager.save(step, args=ocp.args.StandardSave(_to_storable(tree)))
        manager.wait_until_finished()
    return Path(directory).absolute() / str(step)


def all_steps(directory: str | Path) -> list[int]:
    """The saved steps, ascending (empty if the folder does not exist)."""
    if not Path(directory).exists():
        return []
    with _manager(directory) as manager:
        return sorted(manager.all_steps())


def latest_step(directory: str | Path) -> int | None:
    """The newest saved step, or None."""
    steps = all_steps(directory)
    return steps[-1] if steps else None


def restore(directory: str | Path, like: Any, step: int | None = None) -> Any:
    """Restore step ``step`` (default: the latest) into the structure of ``like``.

    ``like`` is a concrete pytree of the same structure, shapes and dtypes (e.g. a
    freshly initialized train state); its typed keys give the key implementation.
    """
    steps = all_steps(directory)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(
            f"no checkpoint step {step} in {directory}; saved steps: {steps}"
        )
    with _manager(directory) as manager:
        stored = manager.restore(step, args=ocp.args.StandardRestore(_target(like)))
    return _rewrap(like, stored)


def _target(like: Any):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
        _to_storable(like),
    )


def _placed_like(x: Any, data: Any) -> Any:
    """``data`` committed to a device only where ``x`` is: orbax places every
    restored array on a device explicitly, and a jitted program called with
    committed arrays where it was compiled with uncommitted ones (a fresh init
    or another program's output) compiles again."""
    if (
        isinstance(data, jax.Array)
        and data.committed
        and not (isinstance(x, jax.Array) and x.committed)
    ):
        return jnp.asarray(np.asarray(data))
    return data


def _rewrap(like: Any, stored: Any) -> Any:
    return jax.tree.map(
        lambda x, data: (
            jax.random.wrap_key_data(
                _placed_like(jax.random.key_data(x), data),
                impl=jax.random.key_impl(x),
            )
            if _is_key(x)
            else _placed_like(x, data)
        ),
        like,
        stored,
    )


def save_tree(path: str | Path, tree: Any, *, overwrite: bool = False) -> Path:
    """Save one pytree as the folder ``path`` (no step folders); returns it.

    The write is atomic (a temporary folder renamed into place) and synchronous.
    """
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (overwrite=True replaces it)")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, _to_storable(tree), force=overwrite)
        checkpointer.wait_until_finished()
    return path


def restore_tree(path: str | Path, like: Any) -> Any:
    """Restore a pytree saved by ``save_tree`` into the structure of ``like``."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no saved tree at {path}")
    with ocp.StandardCheckpointer() as checkpointer:
        stored = checkpointer.restore(path, _target(like))
    return _rewrap(like, stored)


class AsyncTreeWriter:
    """``save_tree`` in the background (orbax async checkpointing).

    ``save(path, tree)`` returns once the arrays are copied to host memory; the
    write and its atomic rename finish on a background thread, so a training
    loop keeps computing meanwhile. A new save first waits for the previous
    one; ``wait()`` blocks until everything is on disk (call it before reading
    a path back — ``restore`` does). A crash mid-write leaves no folder at
    ``path``, only orbax's temporary one.
    """

    def __init__(self):
        self._checkpointer = ocp.StandardCheckpointer()

    def save(self, path: str | Path, tree: Any) -> Path:
        path = Path(path).absolute()
        self._checkpointer.save(path, _to_storable(tree), force=True)
        return path

    def wait(self) -> None:
        self._checkpointer.wait_until_finished()

    def restore(self, path: str | Path, like: Any) -> Any:
        self.wait()
        return restore_tree(path, like)
