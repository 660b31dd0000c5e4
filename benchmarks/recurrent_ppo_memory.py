"""Recurrent (GRU) PPO against feed-forward (MLP) PPO on a memory task.

gymnax ``MemoryChain-bsuite`` (bsuite's memory_chain, one context bit): the first
observation shows a bit (+1 or -1), the following ``memory_length`` show only the
time left, and the last action is rewarded +1 if it equals the bit and -1
otherwise (gymnax returns the pre-step observation, so the bit is seen on the
first two steps). An episode is ``memory_length + 1`` steps. A memoryless policy
sees the same observation at the decision whatever the bit, so it cannot beat
chance: mean return 0, success rate 50%.

Both agents get the same budget (environment steps), rollout shape (num_envs x
num_steps), epochs, minibatch count, numbers (PPOHParams) and seeds, 4 seeds
vmapped in one program each:

* recurrent: ``rl.make_recurrent_train`` (embedding -> GRU -> actor / critic heads,
  hidden state reset at episode starts, truncated backprop over the rollout,
  minibatches of whole environment sequences);
* feed-forward: ``rl.make_train`` (separate actor and critic MLPs).

Scored per seed by the mean training return over the last 10% of updates and by
the success rate of the final policy (sampled, not greedy) on 2,048 fresh
episodes. Results go to benchmarks/results/recurrent_ppo_memory.{json,md,png}.

    python benchmarks/recurrent_ppo_memory.py [--memory-length 8] [--quick]
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import machine_info  # noqa: E402

from convergence_jax import rl  # noqa: E402
from convergence_jax.rl.recurrent_ppo import (  # noqa: E402
    RecurrentPPOConfig,
    make_recurrent_ppo,
)

ENV_ID = "MemoryChain-bsuite"


@dataclass(frozen=True)
class Config:
    memory_length: int = 8
    """MemoryChain memory_length (steps between the bit and the decision)."""
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    """Seeds, vmapped in one program per agent."""
    total_timesteps: int = 262_144
    """Environment steps per seed, the same for both agents."""
    num_envs: int = 32
    num_steps: int = 64
    update_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 5e-4
    ent_coef: float = 0.01
    eval_episodes: int = 2048
    """Fresh episodes to score each seed's final policy."""
    name: str = "recurrent_ppo_memory"
    """Results file stem under benchmarks/results/."""
    quick: bool = False
    """A tiny run that checks the script (results not written)."""


def memory_length_wrapper(memory_length: int):
    def wrap(env, env_params):
        return env, env_params.replace(memory_length=memory_length)

    return wrap


def evaluate(step_policy, init_carry, env, env_params, key, episodes, length):
    """Success rate and mean return of fresh episodes of exactly ``length`` steps.

    ``step_policy(carry, obs, first, key) -> (actions, carry)`` acts for a batch.
    """
    k_reset, k_run = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(k_reset, episodes), env_params
    )

    def step(carry, key):
        obs, state, policy_carry, first, total = carry
        k_act, k_env = jax.random.split(key)
        action, policy_carry = step_policy(policy_carry, obs, first, k_act)
        obs, state, reward, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, episodes), state, action, env_params
        )
        return (obs, state, policy_carry, jnp.zeros_like(first), total + reward), None

    first = jnp.ones(episodes, bool)
    carry = (obs, state, init_carry, first, jnp.zeros(episodes))
    (_, _, _, _, total), _ = jax.lax.scan(step, carry, jax.random.split(k_run, length))
    return {"success_rate": jnp.mean(total > 0), "mean_return": jnp.mean(total)}


def main(cfg: Config):
    if cfg.quick:
        cfg = Config(
            memory_length=cfg.memory_length,
            seeds=(0, 1),
            total_timesteps=16 * 32 * 4,
            num_envs=16,
            num_steps=32,
            eval_episodes=64,
            quick=True,
        )
    common = dict(
        total_timesteps=cfg.total_timesteps,
        num_envs=cfg.num_envs,
        num_steps=cfg.num_steps,
        update_epochs=cfg.update_epochs,
        num_minibatches=cfg.num_minibatches,
        learning_rate=cfg.learning_rate,
        ent_coef=cfg.ent_coef,
    )
    recurrent_config = RecurrentPPOConfig(
        env_id=ENV_ID,
        env_params={"memory_length": cfg.memory_length},
        rnn_size=128,
        embed_size=128,
        hidden_sizes=(128,),
        **common,
    )
    mlp_config = rl.PPOConfig(
        env_id=ENV_ID,
        env_wrapper=memory_length_wrapper(cfg.memory_length),
        hidden_sizes=(128, 128),
        **common,
    )
    env, env_params = gymnax.make(ENV_ID)
    env_params = env_params.replace(memory_length=cfg.memory_length)
    length = cfg.memory_length + 1
    keys = jax.vmap(jax.random.key)(jnp.asarray(cfg.seeds))
    eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)

    recurrent = make_recurrent_ppo(recurrent_config)
    ppo = rl.make_ppo(mlp_config)

    def recurrent_run(key, eval_key):
        state, metrics = recurrent.run(recurrent.init(key))

        def act(hidden, obs, first, k):
            return recurrent.policy(state.params, hidden, obs, first, k)

        hidden = recurrent.network.initial_hidden(cfg.eval_episodes)
        score = evaluate(
            act, hidden, env, env_params, eval_key, cfg.eval_episodes, length
        )
        return metrics, score

    def mlp_run(key, eval_key):
        state, metrics = ppo.run(ppo.init(key))

        def act(carry, obs, first, k):
            return ppo.policy(state.params, state.obs_stats, obs, k), carry

        score = evaluate(
            act, jnp.zeros(()), env, env_params, eval_key, cfg.eval_episodes, length
        )
        return metrics, score

    results = {}
    for name, fn in (("recurrent", recurrent_run), ("feed_forward", mlp_run)):
        program = jax.jit(jax.vmap(fn))
        t0 = time.perf_counter()
        compiled = program.lower(keys, eval_keys).compile()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics, score = jax.block_until_ready(compiled(keys, eval_keys))
        run_s = time.perf_counter() - t0
        returns = np.asarray(metrics["episode_return"])  # [seeds, updates]
        tail = max(1, returns.shape[1] // 10)
        results[name] = {
            "compile_s": compile_s,
            "run_s": run_s,
            "final_train_return": np.nanmean(returns[:, -tail:], axis=1).tolist(),
            "eval_success_rate": np.asarray(score["success_rate"]).tolist(),
            "eval_mean_return": np.asarray(score["mean_return"]).tolist(),
            "curve_env_steps": np.asarray(metrics["env_steps"][0]).tolist(),
            "curve_return": returns.tolist(),
        }
        print(
            f"{name}: compile {compile_s:.1f} s, run {run_s:.1f} s, eval success "
            f"{np.round(results[name]['eval_success_rate'], 3)}"
        )
    if cfg.quick:
        return results

    result = {
        "benchmark": "recurrent_ppo_memory",
        "env": ENV_ID,
        "memory_length": cfg.memory_length,
        "episode_length": length,
        "config": {k: v for k, v in cfg.__dict__.items() if k not in ("quick", "name")},
        "recurrent_network": "Dense(128) tanh -> GRU(128) -> heads (128,)",
        "feed_forward_network": "actor and critic MLPs (128, 128) tanh",
        "machine": machine_info(),
        "results": results,
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    result["machine"]["load_average_end"] = os.getloadavg()[0]
    (out / f"{cfg.name}.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, out / f"{cfg.name}.md", cfg.name)
    plot(result, out / f"{cfg.name}.png")
    return results


def write_markdown(result, path: Path, name: str):
    r = result["results"]
    seeds = result["config"]["seeds"]

    def row(name, label):
        x = r[name]
        cells = " | ".join(
            f"{s:.3f} / {t:+.3f}"
            for s, t in zip(
                x["eval_success_rate"], x["final_train_return"], strict=True
            )
        )
        return (
            f"| {label} | {cells} | {np.median(x['eval_success_rate']):.3f} | "
            f"{x['compile_s']:.0f} / {x['run_s']:.0f} |"
        )

    m = result["machine"]
    end = m.get("load_average_end")
    end = "(not recorded)" if end is None else f"{end:.1f}"
    lines = [
        f"# Recurrent vs feed-forward PPO on {result['env']} "
        f"(memory_length {result['memory_length']})",
        "",
        f"Episodes of {result['episode_length']} steps; chance is success 0.5, "
        "return 0. Each cell: success rate of the final (sampled) policy on "
        f"{result['config']['eval_episodes']} fresh episodes / mean training "
        "return over the last 10% of updates. Same budget "
        f"({result['config']['total_timesteps']:,} env steps per seed), rollout, "
        "epochs, minibatches and PPOHParams for both; "
        f"{len(seeds)} seeds vmapped in one program per agent.",
        "",
        "| agent | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | median success | compile / run s |",
        "|---|" + "---|" * len(seeds) + "---|---|",
        row("recurrent", f"GRU PPO ({result['recurrent_network']})"),
        row("feed_forward", f"MLP PPO ({result['feed_forward_network']})"),
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, load average "
        f"{m['load_average_start']:.1f} at the start, "
        f"{end} at the end; "
        "CPU (JAX default device). Times are one vmapped run of all seeds, "
        "compile separate; the machine was shared, so they are indicative only.",
        "",
        f"![curves]({name}.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(result, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, color in (("recurrent", "tab:blue"), ("feed_forward", "tab:orange")):
        x = np.asarray(result["results"][name]["curve_env_steps"])
        for i, curve in enumerate(result["results"][name]["curve_return"]):
            ax.plot(x, curve, color=color, alpha=0.7, label=name if i == 0 else None)
    ax.axhline(0.0, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("environment steps per seed")
    ax.set_ylabel("mean training episode return")
    ax.set_title(
        f"{result['env']}, memory_length {result['memory_length']} (one line a seed)"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(Config))
