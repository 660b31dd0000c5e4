"""Multi-host training: 2 processes x 2 CPU devices == 1 process x 4 devices.

Two processes on 127.0.0.1 (``tests/_multihost_worker.py``) join one run
through ``convergence_jax.distributed.initialize`` (JAX's multi-controller
runtime, gloo collectives on CPU) and run the same PPO and GRPO programs over a
4-device mesh spanning both; this process (4 local devices, forced by conftest)
runs them on one host. Same numbers, to float tolerance.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from convergence_jax import distributed
from tests import _multihost_worker as worker

WORKER = Path(worker.__file__)
TIMEOUT_S = 600  # generous: CI machines can be loaded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_processes(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    port = free_port()
    outs = [tmp_path / f"process{i}.npz" for i in range(2)]
    logs = [open(tmp_path / f"process{i}.log", "w+") for i in range(2)]  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), "2", str(port), str(outs[i])],
            stdout=logs[i],
            stderr=subprocess.STDOUT,
            env=env,
        )
        for i in range(2)
    ]
    return procs, logs, outs


def wait_for(procs, logs, outs) -> list[dict[str, np.ndarray]]:
    try:
        codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
        failure = None if codes == [0, 0] else f"exit codes {codes}"
    except subprocess.TimeoutExpired:
        failure = f"no result within {TIMEOUT_S} s"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    output = ""
    for i, log in enumerate(logs):
        log.seek(0)
        output += f"\n--- process {i} (last 4000 chars) ---\n{log.read()[-4000:]}"
        log.close()
    if failure:
        pytest.fail(f"2-process run failed: {failure}{output}")
    return [dict(np.load(out)) for out in outs]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    started = start_two_processes(tmp_path_factory.mktemp("multihost"))
    try:
        # The 1-process reference while the two processes run.
        assert jax.device_count() >= 4, "conftest forces 4 host devices"
        one = worker.results()
    finally:
        two = wait_for(*started)
    return one, two


def test_two_processes_really_ran_one_mesh(runs):
    _, (p0, p1) = runs
    for p in (p0, p1):
        assert int(p["process_count"]) == 2
        assert int(p["device_count"]) == 4 and int(p["local_device_count"]) == 2
        assert bool(p["ppo.split_over_processes"])  # envs on the other process
        assert "PPOConfig.num_devices: 2 requested in a run of 2 processes" in str(
            p["refused_partial_mesh"]
        )
    # Every process holds the same global values.
    assert p0.keys() == p1.keys()
    for name in p0:
        np.testing.assert_array_equal(p0[name], p1[name], err_msg=name)


def test_ppo_two_processes_equal_one(runs):
    one, (two, _) = runs
    names = [n for n in one if n.startswith("ppo.") and "split" not in n]
    assert any(".params" in n for n in names) and "ppo.metrics['value_loss']" in one
    for name in names:
        if one[name].dtype.kind == "f":
            np.testing.assert_allclose(
                two[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name
            )
        else:  # env steps, per-environment keys, counters, episode flags
            np.testing.assert_array_equal(two[name], one[name], err_msg=name)


def test_grpo_two_processes_equal_one(runs):
    one, (two, _) = runs
    # The same samples at every step, so the same rewards ...
    np.testing.assert_array_equal(
        two["grpo.metrics['reward']"], one["grpo.metrics['reward']"]
    )
    # ... the same gradients ...
    name = "grpo.metrics['grad_norm']"
    np.testing.assert_allclose(two[name], one[name], rtol=1e-4, err_msg=name)
    # ... and parameters apart by rounding only (Adam divides each gradient entry
    # by its own size: nearly-zero entries move a full step on a rounding
    # difference), against the change of the run.
    change = float(one["grpo.change"])
    names = [n for n in one if n.startswith("grpo.params")]
    assert change > 0 and names
    diff = max(float(np.abs(two[n] - one[n]).max()) for n in names)
    assert diff < 0.05 * change, (diff, change)


def test_to_host_and_mesh_on_one_process():
    mesh = distributed.global_mesh(4)
    assert mesh.shape == {distributed.AXIS: 4}
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))
    x = jax.device_put(np.arange(8.0), sharding)
    tree = {"x": x, "key": jax.random.key(0)}
    host = distributed.to_host(tree)
    np.testing.assert_array_equal(host["x"], np.arange(8.0))
    np.testing.assert_array_equal(
        host["key"], np.asarray(jax.random.key_data(jax.random.key(0)))
    )
    with pytest.raises(ValueError, match="64 requested"):
        distributed.global_mesh(64)


@pytest.mark.parametrize("cpu_devices", [None, 2])
def test_initialize_too_late_says_why(cpu_devices):
    jax.devices()  # the backend is up in this process
    with pytest.raises(RuntimeError, match="must run before anything starts"):
        distributed.initialize("127.0.0.1:1", 2, 0, cpu_devices=cpu_devices)
    with pytest.raises(ValueError, match="cpu_devices must be an int >= 1"):
        distributed.initialize("127.0.0.1:1", 2, 0, cpu_devices=0)
