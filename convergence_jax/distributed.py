"""Multi-host runs: JAX's own multi-controller runtime, thinly wrapped.

    from convergence_jax import distributed

    distributed.initialize()          # first, before any other JAX call
    from convergence_jax import rl    # (gymnax runs JAX code when imported)
    config = rl.PPOConfig(num_devices=jax.device_count())   # every device
    state, metrics = jax.jit(rl.make_train(config))(jax.random.key(0))
    state = distributed.to_host(state)                 # NumPy, on every process

Every process runs the same program (multi-controller JAX): ``initialize``
connects the processes (``jax.distributed.initialize``), after which
``jax.devices()`` lists the devices of all of them and a program with
``num_devices = jax.device_count()`` runs over one mesh spanning every process
(``jax.shard_map``, collectives over the network). Nothing else changes: the
same ``make_train`` / ``make_grpo`` code, the same key, the same numbers as on
one host with as many devices, up to the order of floating-point sums.

Results that are replicated (parameters, metrics) read as usual on every
process; results split over the mesh (PPO's per-environment states, a GRPO
rollout) span devices that one process cannot address, and ``to_host`` gathers
them (``multihost_utils.process_allgather``). ``global_mesh`` is the 1-D mesh
the programs use, for code of your own.

On TPU pods, SLURM, Open MPI and Kubernetes ``initialize()`` takes no arguments:
JAX reads the coordinator address, the process count and the process id from
the environment (see ``docs/scale.md``). On CPU, cross-process collectives go
through gloo.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["AXIS", "check_num_devices", "global_mesh", "initialize", "to_host"]

AXIS = "devices"
"""The mesh axis of the data-parallel programs (PPO, GRPO, ...)."""


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | Sequence[int] | None = None,
    cpu_devices: int | None = None,
    **kwargs: Any,
) -> None:
    """Join this process to a multi-process run: ``jax.distributed.initialize``.

    Call it first, before any other JAX call and before importing
    ``convergence_jax.rl`` (gymnax runs JAX code when imported).
    ``coordinator_address`` is ``"host:port"`` of process 0 (the same on every
    process), ``num_processes`` the process count and ``process_id`` this
    process's index in
    ``0 .. num_processes - 1``; on TPU pods, SLURM, Open MPI and Kubernetes all
    three may be left out and JAX detects them. ``cpu_devices`` (optional) sets
    how many CPU devices this process has (``jax_num_cpu_devices``, the same as
    ``XLA_FLAGS=--xla_force_host_platform_device_count``), for trying a
    multi-process run on one machine. CPU collectives across processes use gloo
    unless ``jax_cpu_collectives_implementation`` was set (e.g. to ``mpi``).
    Other keyword arguments go to ``jax.distributed.initialize``
    (``initialization_timeout``, ``cluster_detection_method``, ...).
    """
    if cpu_devices is not None:
        if (
            isinstance(cpu_devices, bool)
            or not isinstance(cpu_devices, int)
            or cpu_devices < 1
        ):
            raise ValueError(
                f"initialize: cpu_devices must be an int >= 1, got {cpu_devices!r}"
            )
    try:
        if cpu_devices is not None:
            jax.config.update("jax_num_cpu_devices", cpu_devices)
        if jax.config.jax_cpu_collectives_implementation is None:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            **kwargs,
        )
    except RuntimeError as err:
        if "initiali" not in str(err):  # "initialized", "initialise"
            raise
        raise RuntimeError(
            "distributed.initialize must run before anything starts JAX's "
            "backend: any JAX computation, jax.devices(), and importing "
            "convergence_jax.rl (or gymnax, whose import runs JAX code). Call it "
            "right after `from convergence_jax import distributed`, then import "
            f"the rest. ({err})"
        ) from err


def check_num_devices(num_devices: int, field: str = "num_devices") -> None:
    """Raise a clear ``ValueError`` unless a ``num_devices`` mesh can be built:
    at most ``jax.device_count()`` devices, and in a multi-process run exactly
    that many (a mesh over the first devices only would leave some processes
    without a device of the program)."""
    available = jax.device_count()
    if num_devices > available:
        raise ValueError(
            f"{field}: {num_devices} requested, {available} available "
            f"({jax.devices()[0].platform}); on CPU, set XLA_FLAGS="
            "--xla_force_host_platform_device_count=N before importing jax"
        )
    if jax.process_count() > 1 and num_devices not in (1, available):
        raise ValueError(
            f"{field}: {num_devices} requested in a run of {jax.process_count()} "
            f"processes with {available} devices in all; a multi-process run "
            f"uses every device: set it to jax.device_count() ({available})"
        )


def global_mesh(num_devices: int | None = None, axis: str = AXIS):
    """The 1-D mesh ``(num_devices,)`` named ``axis`` over the devices of every
    process (default: all of them), as the data-parallel programs build it.
    Its axis type is ``Auto``: host arrays given to a program on it are split
    as its ``shard_map`` in_specs say."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    check_num_devices(num_devices)
    return jax.make_mesh(
        (num_devices,), (axis,), axis_types=(jax.sharding.AxisType.Auto,)
    )


def _leaf_to_host(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if (
        isinstance(x, jax.Array)
        and not x.is_fully_addressable
        and not x.is_fully_replicated
    ):
        return multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def to_host(tree):
    """A pytree of (possibly multi-process) arrays as NumPy arrays holding the
    global values, on every process. Arrays split over devices of other
    processes are gathered (``multihost_utils.process_allgather``, a
    collective: call it on every process); replicated and local arrays are
    read as they are. Typed PRNG keys come back as their key data
    (``jax.random.key_data``). On one process it is ``np.asarray`` per leaf."""
    return jax.tree.map(_leaf_to_host, tree)
