"""Offline RL learning bar: every algorithm's normalized score on datasets made here.

Datasets (``offline.datasets.collect_datasets``, D4RL's recipe with the project's
PPO as the behaviour learner): CartPole-v1 and Pendulum-v1, ``medium`` and
``medium-replay``; normalized score 0 = uniform random actions, 100 = the best PPO
checkpoint. They are collected once (key 0) and cached under
``benchmarks/results/tmp/offline_datasets/`` (git-ignored).

Algorithms: BC, CQL and IQL on both environments (discrete on CartPole, continuous
on Pendulum) and TD3+BC on Pendulum (continuous only); the other registry entries
with ``--algorithms``. Each (dataset, algorithm) trains ``--seeds`` seeds in one
call (``jax.vmap`` over keys of the ``train`` program, hidden sizes 256-256, batch
256, the algorithms' default numbers); the policy of every seed is evaluated
every ``--eval-every`` updates on ``--eval-episodes`` fresh episodes
(``offline.evaluate.evaluate_policy``, deterministic policies); the reported
score of a seed is the normalized score of its *final* evaluation.

Bar (issue 15): every algorithm reports its normalized score over 4 seeds; CQL and
IQL beat BC on medium-replay.

    python benchmarks/offline_learning.py           # writes results/offline_learning.*
    python benchmarks/offline_learning.py --quick   # smoke test, writes nothing
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _machine import machine_info

from convergence_jax.offline import registry
from convergence_jax.offline._common import env_spec
from convergence_jax.offline.dataset import Transitions
from convergence_jax.offline.evaluate import evaluate_policy, normalized_score

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CACHE = RESULTS / "tmp" / "offline_datasets"
NAME = "offline_learning"
ENVS = ("CartPole-v1", "Pendulum-v1")
KINDS = ("medium", "medium-replay")
DEFAULT_ALGORITHMS = ("bc", "td3bc", "cql", "iql")


def _load() -> float:
    return os.getloadavg()[0]


def datasets_for(env_id: str, num_transitions: int, refresh: bool = False):
    """``{kind: dict(transitions, random_return, expert_return, returns, meta)}``,
    collected once and cached."""
    path = CACHE / f"{env_id}-{num_transitions}.npz"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists() and not refresh:
        arrays = np.load(path)
        meta = json.loads(meta_path.read_text())
        out = {}
        for kind in KINDS:
            fields = {
                f: jnp.asarray(arrays[f"{kind}/{f}"])
                for f in Transitions.__dataclass_fields__
            }
            out[kind] = {
                "transitions": Transitions(**fields),
                "returns": arrays[f"{kind}/episode_returns"],
                **meta[kind],
            }
        return out
    from convergence_jax.offline.datasets import CollectConfig, collect_datasets

    t0 = time.perf_counter()
    made = collect_datasets(
        jax.random.key(0),
        env_id,
        KINDS,
        CollectConfig(num_transitions=num_transitions),
    )
    seconds = time.perf_counter() - t0
    CACHE.mkdir(parents=True, exist_ok=True)
    arrays, meta, out = {}, {}, {}
    for kind, ds in made.items():
        for f in Transitions.__dataclass_fields__:
            arrays[f"{kind}/{f}"] = np.asarray(getattr(ds.transitions, f))
        arrays[f"{kind}/episode_returns"] = ds.episode_returns
        summary = ds.summary()
        meta[kind] = {
            "random_return": ds.random_return,
            "expert_return": ds.expert_return,
            "summary": summary,
            "collect_seconds": seconds,
            "medium_in_band": ds.metadata.get("medium_in_band"),
        }
        out[kind] = {
            "transitions": ds.transitions,
            "returns": ds.episode_returns,
            **meta[kind],
        }
    np.savez(path, **arrays)
    meta_path.write_text(json.dumps(meta, indent=1))
    return out


def train_and_evaluate(name, env_id, dataset, args):
    """Train ``args.seeds`` seeds (vmapped) with evaluations along the way."""
    obs_dim, spec = env_spec(env_id)
    algo = registry.get_algorithm(name)
    if not getattr(algo, "discrete" if spec.discrete else "continuous"):
        return None
    overrides = {
        "num_steps": args.num_steps,
        "batch_size": args.batch_size,
        "hidden_sizes": tuple(args.hidden),
    }
    fields = algo.config.__dataclass_fields__
    overrides = {k: v for k, v in overrides.items() if k in fields}
    for item in args.override:
        target, _, assignment = item.partition(":")
        field, _, value = assignment.partition("=")
        if target == name:
            if field not in fields:
                raise ValueError(f"--override {item}: {name} has no field {field!r}")
            overrides[field] = json.loads(value)
    program = algo.make(algo.config(**overrides), obs_dim, spec)
    data = dataset["transitions"]
    chunks = max(1, args.num_steps // args.eval_every)
    chunk = args.num_steps // chunks
    keys = jax.random.split(jax.random.key(args.seed), args.seeds)

    init = jax.jit(jax.vmap(program.init, (0, None)))
    run = jax.jit(jax.vmap(lambda s, d: program.run(s, d, None, chunk), (0, None)))

    @jax.jit
    def evaluate(states, key):
        def one(state, k):
            act = functools.partial(program.policy, state)
            return evaluate_policy(k, env_id, act, args.eval_episodes)

        return jax.vmap(one)(states, jax.random.split(key, args.seeds))

    t0 = time.perf_counter()
    states = init(keys, data)
    states, metrics = run(states, data)
    jax.block_until_ready(states)
    first = time.perf_counter() - t0
    eval_key = jax.random.key(10_000 + args.seed)
    curve = [np.asarray(evaluate(states, jax.random.fold_in(eval_key, 1)))]
    train_seconds = 0.0
    losses = [jax.tree.map(np.asarray, metrics)]
    for i in range(1, chunks):
        t0 = time.perf_counter()
        states, metrics = run(states, data)
        jax.block_until_ready(states)
        train_seconds += time.perf_counter() - t0
        losses.append(jax.tree.map(np.asarray, metrics))
        curve.append(np.asarray(evaluate(states, jax.random.fold_in(eval_key, i + 1))))
    curve = np.stack(curve)  # [chunks, seeds, episodes]
    rr, er = dataset["random_return"], dataset["expert_return"]
    scores = np.array(
        [[normalized_score(c[s], rr, er) for s in range(args.seeds)] for c in curve]
    )
    steady_updates = chunk * (chunks - 1)
    return {
        "algorithm": name,
        "config": {k: getattr(program.config, k) for k in fields},
        "final_scores": scores[-1].tolist(),
        "final_score_mean": float(scores[-1].mean()),
        "final_score_std": float(scores[-1].std()),
        "final_returns": curve[-1].mean(-1).tolist(),
        "curve_steps": [(i + 1) * chunk for i in range(chunks)],
        "curve_scores": scores.tolist(),
        "first_chunk_seconds_incl_compile": first,
        "updates_per_second_all_seeds": (
            steady_updates * args.seeds / train_seconds if train_seconds else None
        ),
        "final_metrics": {
            k: float(np.mean(v[:, -100:])) for k, v in losses[-1].items()
        },
        "load_after": _load(),
    }


def markdown(result) -> str:
    lines = [
        "# Offline RL: normalized scores on datasets collected here",
        "",
        f"Machine: {result['machine'].get('cpu', '?')}, "
        f"{result['machine'].get('cores', '?')} cores, device "
        f"{result['machine'].get('device', jax.devices()[0].platform)}; "
        f"load {result['load_before']:.1f} -> {result['load_after']:.1f}.",
        "",
        f"{result['args']['seeds']} seeds per (dataset, algorithm), vmapped; "
        f"{result['args']['num_steps']} updates of batch "
        f"{result['args']['batch_size']}, hidden {result['args']['hidden']}; "
        f"final score = normalized score of {result['args']['eval_episodes']} "
        "evaluation episodes after the last update (random 0, expert 100). "
        "Config overrides: "
        + (", ".join(result["args"].get("override") or []) or "none (defaults)")
        + ".",
        "",
        "| dataset | transitions | data score | algorithm | score mean ± std "
        "| min / median / max over seeds | per seed | updates/s (all seeds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ds in result["datasets"]:
        for run in ds["runs"]:
            ups = run["updates_per_second_all_seeds"]
            scores = np.asarray(run["final_scores"])
            per_seed = ", ".join(f"{x:.1f}" for x in scores)
            spread = " / ".join(
                f"{x:.1f}" for x in (scores.min(), np.median(scores), scores.max())
            )
            rate = f"{ups:.0f}" if ups else "-"
            lines.append(
                f"| {ds['name']} | {ds['transitions']} | {ds['data_score']:.1f} | "
                f"{run['algorithm']} | {run['final_score_mean']:.1f} ± "
                f"{run['final_score_std']:.1f} | {spread} | {per_seed} | {rate} |"
            )
    lines += ["", "## Bar: CQL and IQL beat BC on medium-replay", ""]
    for line in result["bar"]:
        lines.append(f"- {line}")
    return "\n".join(lines) + "\n"


def bar_lines(result) -> list[str]:
    out = []
    for ds in result["datasets"]:
        if ds["kind"] != "medium-replay":
            continue
        runs = {r["algorithm"]: r for r in ds["runs"]}
        if "bc" not in runs:
            continue
        bc = np.array(runs["bc"]["final_scores"])
        for name in ("cql", "iql"):
            if name not in runs:
                continue
            s = np.array(runs[name]["final_scores"])
            verdict = "beats" if s.mean() > bc.mean() else "does NOT beat"
            if s.mean() > bc.mean() and s.min() <= bc.max():
                verdict += " (mean only; the per-seed ranges overlap)"
            out.append(
                f"{ds['name']}: {name} {s.mean():.1f} ± {s.std():.1f} {verdict} "
                f"BC {bc.mean():.1f} ± {bc.std():.1f}"
            )
    return out


def plot(result, path):
    import matplotlib.pyplot as plt

    n = len(result["datasets"])
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, ds in zip(axes[0], result["datasets"], strict=True):
        for run in ds["runs"]:
            scores = np.array(run["curve_scores"])
            steps = run["curve_steps"]
            (line,) = ax.plot(steps, scores.mean(1), label=run["algorithm"])
            ax.fill_between(
                steps, scores.min(1), scores.max(1), alpha=0.15, color=line.get_color()
            )
        ax.axhline(ds["data_score"], ls="--", c="gray", lw=1, label="data")
        ax.set_title(ds["name"], fontsize=9)
        ax.set_xlabel("updates")
        ax.set_ylabel("normalized score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(args):
    if args.markdown_from is not None:
        result = json.loads(args.markdown_from.read_text())
        args.markdown_from.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {args.markdown_from.with_suffix('.md')}")
        return result
    load_before = _load()
    result = {
        "name": NAME,
        "args": vars(args),
        "machine": machine_info(),
        "load_before": load_before,
        "datasets": [],
    }
    for env_id in args.envs:
        t0 = time.perf_counter()
        made = datasets_for(env_id, args.num_transitions, args.refresh)
        print(
            f"{env_id}: datasets ready in {time.perf_counter() - t0:.0f} s", flush=True
        )
        for kind in args.kinds:
            ds = made[kind]
            entry = {
                "name": f"{env_id} {kind}",
                "env_id": env_id,
                "kind": kind,
                "transitions": int(ds["transitions"].size),
                "episodes": int(len(ds["returns"])),
                "random_return": ds["random_return"],
                "expert_return": ds["expert_return"],
                "data_score": normalized_score(
                    ds["returns"], ds["random_return"], ds["expert_return"]
                ),
                "medium_in_band": ds.get("medium_in_band"),
                "runs": [],
            }
            for name in args.algorithms:
                t0 = time.perf_counter()
                run = train_and_evaluate(name, env_id, ds, args)
                if run is None:
                    continue
                entry["runs"].append(run)
                print(
                    f"  {entry['name']:28s} {name:6s} score "
                    f"{run['final_score_mean']:6.1f} ± {run['final_score_std']:5.1f} "
                    f"{[round(s, 1) for s in run['final_scores']]} "
                    f"({time.perf_counter() - t0:.0f} s, load {_load():.1f})",
                    flush=True,
                )
            result["datasets"].append(entry)
    result["load_after"] = _load()
    result["bar"] = bar_lines(result)
    for line in result["bar"]:
        print(line)
    if not args.quick:
        out = Path(args.out) if args.out else RESULTS / NAME
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown(result))
        plot(result, out.with_suffix(".png"))
        print(f"wrote {out}.json / .md / .png")
    return result


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=list(ENVS))
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--algorithms", nargs="+", default=list(DEFAULT_ALGORITHMS))
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-steps", type=int, default=10_000)
    p.add_argument("--eval-every", type=int, default=2_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--num-transitions", type=int, default=50_000)
    p.add_argument(
        "--override",
        nargs="*",
        default=[],
        help="ALGORITHM:FIELD=JSON, e.g. cql:cql_weight=3.0 (config of one algorithm)",
    )
    p.add_argument("--refresh", action="store_true", help="recollect the datasets")
    p.add_argument("--out", default=None, help="results path without suffix")
    p.add_argument("--quick", action="store_true", help="smoke test; writes nothing")
    p.add_argument(
        "--markdown-from", type=Path, help="rewrite the .md from a results .json"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.num_steps, args.eval_every, args.seeds = 40, 20, 2
        args.hidden, args.eval_episodes = [32], 2
    return args


if __name__ == "__main__":
    main(parse())
