"""Decision Transformer: normalized scores on the datasets of offline_learning.py.

The same cached datasets (CartPole-v1 and Pendulum-v1, medium and medium-replay,
collected once with key 0 by ``offline.collect_datasets``). Each dataset trains
``--seeds`` seeds in one call (``jax.vmap`` of ``make_dt(...).train`` over keys);
each seed is evaluated on ``--eval-episodes`` fresh episodes of
``offline.dt.make_rollout`` conditioned on a target return (``--target``: the
expert return of the dataset's reference, as the DT paper conditions on the
best return it wants, or the dataset's best episode). The reported score is D4RL's
normalized score (random 0, expert 100).

    python benchmarks/offline_dt.py                  # writes results/offline_dt.*
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
from _machine import machine_info
from offline_learning import KINDS, RESULTS, datasets_for

from convergence_jax.offline._common import env_spec
from convergence_jax.offline.dt import DTConfig, make_dt, make_rollout
from convergence_jax.offline.evaluate import normalized_score

NAME = "offline_dt"


def run_one(env_id, kind, dataset, args):
    obs_dim, spec = env_spec(env_id)
    config = DTConfig(
        num_steps=args.num_steps,
        batch_size=args.batch_size,
        context_length=args.context,
        embed_dim=args.embed,
        num_layers=args.layers,
        warmup_steps=args.warmup,
        learning_rate=args.learning_rate,
    )
    dt = make_dt(config, obs_dim, spec)
    data = dataset["transitions"]
    keys = jax.random.split(jax.random.key(args.seed), args.seeds)
    train = jax.jit(jax.vmap(lambda k: dt.train(k, data)))
    t0 = time.perf_counter()
    states, metrics = train(keys)
    jax.block_until_ready(states)
    seconds = time.perf_counter() - t0
    if args.target == "expert":
        target = float(dataset["expert_return"])
    else:
        target = float(np.max(dataset["returns"]))
    rollout = make_rollout(dt, env_id)
    evaluate = jax.jit(
        jax.vmap(lambda k, s: rollout(k, s, target, args.eval_episodes), (0, 0))
    )
    eval_keys = jax.random.split(jax.random.key(args.seed + 1), args.seeds)
    returns = np.asarray(evaluate(eval_keys, states))  # [seeds, episodes]
    scores = [
        normalized_score(r, dataset["random_return"], dataset["expert_return"])
        for r in returns
    ]
    loss = np.asarray(metrics["loss"])
    return {
        "env": env_id,
        "kind": kind,
        "transitions": int(data.rewards.shape[0]),
        "data_score": float(dataset["summary"]["normalized_score"]),
        "target_return": target,
        "scores": [float(s) for s in scores],
        "mean": float(np.mean(scores)),
        "std": float(np.std(scores)),
        "min": float(np.min(scores)),
        "median": float(np.median(scores)),
        "max": float(np.max(scores)),
        "final_loss": float(loss[:, -100:].mean()),
        "train_seconds_incl_compile": seconds,
        "updates_per_second_all_seeds": args.num_steps * args.seeds / seconds,
    }


def markdown(result) -> str:
    a = result["args"]
    m = result["machine"]
    lines = [
        "# Decision Transformer: normalized scores on datasets collected here",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, CPU; load "
        f"{m['load_average_start']:.1f} -> {result['load_end']:.1f}.",
        "",
        f"{a['seeds']} seeds per dataset, vmapped; {a['num_steps']} updates of "
        f"{a['batch_size']} windows of {a['context']} timesteps; embed "
        f"{a['embed']}, {a['layers']} layers, 1 head; lr {a['learning_rate']} "
        f"after {a['warmup']} warm-up updates; conditioned on the "
        f"{a['target']} return; {a['eval_episodes']} evaluation episodes per seed "
        "after the last update (random 0, expert 100).",
        "",
        "| dataset | transitions | data score | target return | score mean ± std "
        "| min / median / max over seeds | per seed | updates/s (all seeds, "
        "compile incl.) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['env']} {r['kind']} | {r['transitions']} | {r['data_score']:.1f} "
            f"| {r['target_return']:.1f} | {r['mean']:.1f} ± {r['std']:.1f} | "
            f"{r['min']:.1f} / {r['median']:.1f} / {r['max']:.1f} | "
            + ", ".join(f"{s:.1f}" for s in r["scores"])
            + f" | {r['updates_per_second_all_seeds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", nargs="+", default=["CartPole-v1", "Pendulum-v1"])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-steps", type=int, default=5_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--context", type=int, default=20)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--warmup", type=float, default=1_000)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--target", choices=["expert", "best"], default="expert")
    p.add_argument("--num-transitions", type=int, default=50_000)
    p.add_argument("--out", default=str(RESULTS / NAME))
    args = p.parse_args()
    result = {"args": vars(args), "machine": machine_info(), "rows": []}
    out = Path(args.out)
    for env_id in args.envs:
        sets = datasets_for(env_id, args.num_transitions)
        for kind in args.kinds:
            row = run_one(env_id, kind, sets[kind], args)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            result["load_end"] = os.getloadavg()[0]
            out.with_suffix(".json").write_text(json.dumps(result, indent=1))
            out.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
