"""PPO over the devices of several processes (multi-host), one mesh for all.

    # on one machine: 2 processes x 2 CPU devices (the script starts them)
    python experiments/multihost_ppo.py --local-processes 2 --cpu-devices 2

    # the same, each process started by hand (as on 2 hosts, with host 0's address)
    python experiments/multihost_ppo.py --coordinator-address 127.0.0.1:12355 \\
        --num-processes 2 --process-id 0 --cpu-devices 2 &
    python experiments/multihost_ppo.py --coordinator-address 127.0.0.1:12355 \\
        --num-processes 2 --process-id 1 --cpu-devices 2

    # TPU pod, SLURM (srun), Open MPI (mpirun), Kubernetes: no flags, JAX detects
    # the coordinator, the process count and the process id
    srun --nodes 2 --ntasks-per-node 8 python experiments/multihost_ppo.py

Every process runs this same script: ``convergence_jax.distributed.initialize``
joins the run, then the ordinary ``rl.make_train`` program runs with
``num_devices = jax.device_count()`` (every device of every process). Process 0
prints the result and, with ``--out``, writes the final parameters and the
metrics to a ``.npz`` file (``distributed.to_host``). See docs/scale.md.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import tyro

USAGE = __doc__.split("\n\nEvery process")[0]


@dataclass(frozen=True)
class Config:
    """PPO on a gymnax environment over a mesh spanning processes."""

    coordinator_address: str | None = None
    """host:port of process 0, the same on every process (None: detected on TPU
    pods, SLURM, Open MPI, Kubernetes)."""
    num_processes: int | None = None
    """Processes in the run (None: detected)."""
    process_id: int | None = None
    """This process's index in 0 .. num_processes - 1 (None: detected)."""
    cpu_devices: int | None = None
    """CPU devices per process, to try a multi-process run on one machine."""
    local_processes: int = 0
    """If > 0: start this many processes on 127.0.0.1 (a free port) running this
    script with these flags, wait for them, and exit with the first failure."""
    env: str = "CartPole-v1"
    """gymnax environment id."""
    total_timesteps: int = 100_000
    """Environment steps of the run (all processes together)."""
    num_envs: int = 16
    """Parallel environments, all processes together (a multiple of the device
    count)."""
    num_steps: int = 128
    """Steps per environment per rollout."""
    seed: int = 0
    """PRNG seed (the same on every process)."""
    out: str | None = None
    """A .npz file for the final parameters and the metrics (process 0)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(config: Config) -> int:
    """Start ``config.local_processes`` processes of this script on 127.0.0.1."""
    address = f"127.0.0.1:{_free_port()}"
    common = [
        f"--env={config.env}",
        f"--total-timesteps={config.total_timesteps}",
        f"--num-envs={config.num_envs}",
        f"--num-steps={config.num_steps}",
        f"--seed={config.seed}",
        f"--coordinator-address={address}",
        f"--num-processes={config.local_processes}",
    ]
    if config.cpu_devices is not None:
        common.append(f"--cpu-devices={config.cpu_devices}")
    if config.out is not None:
        common.append(f"--out={config.out}")
    procs = [
        subprocess.Popen([sys.executable, __file__, *common, f"--process-id={i}"])
        for i in range(config.local_processes)
    ]
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)


def main(config: Config) -> dict:
    """Join the run, train, and return the summary (the same on every process)."""
    import jax
    import numpy as np

    from convergence_jax import distributed

    distributed.initialize(
        config.coordinator_address,
        config.num_processes,
        config.process_id,
        cpu_devices=config.cpu_devices,
    )
    # After initialize: importing gymnax (under rl) starts JAX's backend.
    from convergence_jax import rl

    ppo_config = rl.PPOConfig(
        env_id=config.env,
        total_timesteps=config.total_timesteps,
        num_envs=config.num_envs,
        num_steps=config.num_steps,
        num_devices=jax.device_count(),
    )
    train = jax.jit(rl.make_train(ppo_config))
    key = jax.random.key(config.seed)
    start = time.perf_counter()
    compiled = train.lower(key).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state, metrics = compiled(key)
    jax.block_until_ready(state)
    run_s = time.perf_counter() - start
    returns = np.asarray(metrics["episode_return"])
    last = returns[-max(1, len(returns) // 20) :]
    summary = {
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "env_steps": ppo_config.num_updates * ppo_config.batch_size,
        "final_return": float(np.nanmean(last)) if np.isfinite(last).any() else None,
        "compile_s": compile_s,
        "env_steps_per_s": ppo_config.num_updates * ppo_config.batch_size / run_s,
    }
    # A collective: every process takes part, process 0 writes.
    params = distributed.to_host(state.params)
    if jax.process_index() == 0:
        print(
            f"{summary['processes']} processes, {summary['devices']} devices: "
            f"{summary['env_steps']} env steps, final return "
            f"{summary['final_return']}, compile {compile_s:.1f} s, "
            f"{summary['env_steps_per_s']:,.0f} env steps/s"
        )
        if config.out is not None:
            leaves = jax.tree_util.tree_leaves_with_path(params)
            np.savez(
                config.out,
                **{"params" + jax.tree_util.keystr(p): x for p, x in leaves},
                **{k: np.asarray(v) for k, v in metrics.items()},
            )
    return summary


if __name__ == "__main__":
    cli_config = tyro.cli(Config, description=USAGE)
    if cli_config.local_processes > 0:
        sys.exit(launch_local(cli_config))
    try:
        main(cli_config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
