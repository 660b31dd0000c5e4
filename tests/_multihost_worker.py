"""The programs of tests/test_multihost.py, and one process of its 2-process run.

    python tests/_multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz

joins a run of NUM_PROCESSES processes on 127.0.0.1:PORT (``4 / NUM_PROCESSES``
CPU devices each, gloo collectives), runs ``results()`` — a tiny PPO run on
CartPole and a tiny GRPO run (the compiled ``run``), each over a 4-device mesh
spanning the processes — and writes the global values to OUT.npz. The test runs
``results()`` in its own process (4 local devices) as the 1-process reference.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

NUM_DEVICES = 4
"""The mesh of every run: 4 devices (1 process x 4, or 2 processes x 2)."""


def _flat(prefix: str, tree) -> dict[str, np.ndarray]:
    from convergence_jax import distributed

    leaves = jax.tree_util.tree_leaves_with_path(distributed.to_host(tree))
    return {prefix + jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def ppo_results() -> dict[str, np.ndarray]:
    from convergence_jax import rl

    config = rl.PPOConfig(
        num_envs=8,
        num_steps=16,
        num_minibatches=2,
        update_epochs=2,
        total_timesteps=8 * 16 * 3,
        normalize_obs=True,
        num_devices=NUM_DEVICES,
    )
    # Unclipped gradients: a clip by global norm hides a gradient off by a
    # constant factor (Adam does the rest).
    hparams = rl.PPOHParams.from_config(config).replace(max_grad_norm=jnp.float32(1e6))
    state, metrics = jax.jit(rl.make_train(config))(jax.random.key(3), hparams)
    split = not state.obs.is_fully_addressable  # environments on other processes
    return {
        **_flat("ppo.state", state),
        **_flat("ppo.metrics", metrics),
        "ppo.split_over_processes": np.asarray(split),
    }


def grpo_results() -> dict[str, np.ndarray]:
    from convergence_jax import llm, lm

    model = lm.LMConfig(
        vocab_size=261,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        max_position_embeddings=64,
    )

    def odd_tokens(tokens, mask, problem):
        """A synthetic dense reward (the fraction of odd completion token ids),
        so that a random model's groups have a reward spread."""
        return jnp.sum((tokens % 2) * mask, -1) / tokens.shape[-1]

    task = llm.tasks.addition(2, lm.ByteTokenizer())._replace(reward=odd_tokens)
    # beta = 0: with a KL term at step one, policy = reference and the loss's
    # gradient is rounding noise (see tests/llm/test_grpo.py).
    config = llm.GRPOConfig(
        loss="dr_grpo",
        num_prompts=8,
        group_size=4,
        max_new_tokens=4,
        learning_rate=1e-2,
        num_epochs=2,
        num_minibatches=2,
        num_devices=NUM_DEVICES,
    )
    program = llm.make_grpo(config, model, task)
    params = lm.init_params(jax.random.key(0), model)
    start = program.init(jax.random.key(1), params)
    state, metrics = jax.jit(program.run, static_argnums=2)(start, None, 2)
    change = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(
            jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True
        )
    )
    return {
        "grpo.change": np.float32(change),
        **_flat("grpo.params", state.params),
        **_flat("grpo.metrics", metrics),
    }


def results() -> dict[str, np.ndarray]:
    return {**ppo_results(), **grpo_results()}


def main(argv: list[str]) -> None:
    process_id, num_processes, port, out = argv
    from convergence_jax import distributed

    distributed.initialize(
        f"127.0.0.1:{port}",
        int(num_processes),
        int(process_id),
        cpu_devices=NUM_DEVICES // int(num_processes),
        initialization_timeout=300,
    )
    found = {
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
    }
    # A mesh over some processes' devices only is refused, naming the field.
    from convergence_jax import rl

    try:
        rl.make_train(rl.PPOConfig(num_envs=8, num_devices=2))
        refused = ""
    except ValueError as err:
        refused = str(err)
    found["refused_partial_mesh"] = refused
    out_results = results()
    np.savez(out, **out_results, **{k: np.asarray(v) for k, v in found.items()})
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
