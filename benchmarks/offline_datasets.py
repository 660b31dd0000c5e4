"""The offline benchmarks' datasets: D4RL kinds collected in-process from gymnax.

    python benchmarks/offline_datasets.py                  # CartPole-v1, Pendulum-v1
    python benchmarks/offline_datasets.py --envs Acrobot-v1

For each environment, one PPO run (``offline.datasets.PPO_PRESETS``) trains the
behaviour policy; ``collect_datasets`` makes random, medium, medium-replay,
expert and medium-expert from it (see ``convergence_jax/offline/datasets.py``).
Each dataset is written twice under ``benchmarks/.data/offline_datasets/``
(git-ignored: well over 10 MB at the default sizes):

    <env>-<kind>-v0.hdf5                  D4RL layout (offline.load_d4rl_hdf5)
    minari/convergence_jax/<env>/<kind>-v0/   Minari layout (offline.load_minari)

and the summary — sizes, episode returns, the reference returns (random = 0,
expert = 100) and each dataset's normalized score, the behaviour run's curve —
to ``benchmarks/results/offline_datasets.{json,md,png}`` (committed). The
datasets are deterministic given ``--seed``: rerunning this script remakes the
same files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import machine_info  # noqa: E402

from convergence_jax.offline.datasets import (  # noqa: E402
    KINDS,
    PPO_PRESETS,
    CollectConfig,
    collect_datasets,
    save_d4rl_hdf5,
    save_minari,
)

NAME = "offline_datasets"
DATA = ROOT / "benchmarks" / ".data" / NAME
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "Pendulum-v1"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-transitions", type=int, default=100_000)
    parser.add_argument(
        "--eval-every",
        type=int,
        default=2,
        help="PPO updates between evaluated checkpoints (the medium resolution)",
    )
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--name", default=NAME)
    parser.add_argument(
        "--total-timesteps",
        type=int,
        default=None,
        help="override the PPO presets' budget (a quick check of the script)",
    )
    args = parser.parse_args()
    config = CollectConfig(
        num_transitions=args.num_transitions, eval_every=args.eval_every
    )
    machine = machine_info()
    summary = {
        "benchmark": "offline datasets collected in-process (D4RL kinds)",
        "seed": args.seed,
        "collect_config": {
            k: v for k, v in dataclasses.asdict(config).items() if k != "ppo"
        },
        "data_dir": str(args.data_dir.relative_to(ROOT))
        if args.data_dir.is_relative_to(ROOT)
        else str(args.data_dir),
        "machine": machine,
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0]),
        "envs": {},
    }
    args.data_dir.mkdir(parents=True, exist_ok=True)
    for i, env_id in enumerate(args.envs):
        start = time.perf_counter()
        ppo = PPO_PRESETS[env_id]
        if args.total_timesteps is not None:
            ppo = dataclasses.replace(ppo, total_timesteps=args.total_timesteps)
        datasets = collect_datasets(
            jax.random.fold_in(jax.random.key(args.seed), i),
            env_id,
            KINDS,
            dataclasses.replace(config, ppo=ppo),
        )
        seconds = time.perf_counter() - start
        rows = {}
        for kind, ds in datasets.items():
            h5 = save_d4rl_hdf5(ds, args.data_dir / f"{ds.name}.hdf5")
            mpath = save_minari(ds, args.data_dir / "minari", overwrite=True)
            mbytes = sum(f.stat().st_size for f in mpath.rglob("*") if f.is_file())
            rows[kind] = {
                **ds.summary(),
                "hdf5": str(h5.relative_to(ROOT))
                if h5.is_relative_to(ROOT)
                else str(h5),
                "hdf5_bytes": h5.stat().st_size,
                "minari": str(mpath.relative_to(ROOT))
                if mpath.is_relative_to(ROOT)
                else str(mpath),
                "minari_bytes": mbytes,
            }
        meta = datasets["medium"].metadata
        summary["envs"][env_id] = {
            "collect_seconds": seconds,
            "load_average_end": os.getloadavg()[0],
            "behaviour": {
                k: meta[k]
                for k in (
                    "behaviour_algorithm",
                    "ppo_config",
                    "checkpoint_env_steps",
                    "checkpoint_eval_returns",
                    "expert_checkpoint",
                    "expert_env_steps",
                    "expert_eval_return",
                    "medium_checkpoint",
                    "medium_env_steps",
                    "medium_eval_return",
                    "medium_in_band",
                    "medium_band",
                )
            },
            "datasets": rows,
        }
        print(f"{env_id}: {seconds:.0f} s", flush=True)
        for kind, row in rows.items():
            print(
                f"  {kind:14s} {row['transitions']:8d} transitions "
                f"{row['episodes']:6d} episodes  return {row['return_mean']:9.2f}  "
                f"score {row['normalized_score']:7.1f}",
                flush=True,
            )
    summary["machine"]["load_average_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2))
    (RESULTS / f"{args.name}.md").write_text(markdown(summary))
    plot(summary, RESULTS / f"{args.name}.png")


def markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = [
        "# Offline datasets collected in-process (D4RL kinds)",
        "",
        "Made by `benchmarks/offline_datasets.py` with "
        "`offline.collect_datasets` (seed "
        f"{summary['seed']}, {summary['collect_config']['num_transitions']:,} "
        "transitions budget per random / medium / expert dataset, "
        f"{summary['collect_config']['num_envs']} environments side by side). "
        "For each environment one PPO run trains the behaviour policy; "
        "**random** = uniform random actions, **expert** = the run's best "
        "checkpoint, **medium** = its first checkpoint whose evaluated "
        "normalized score lies in 1/3 .. 1/2 of the way from random to expert, "
        "**medium-replay** = every transition that PPO run collected and learned "
        "from up to the medium checkpoint, **medium-expert** = medium + expert. "
        "Reference returns: random = mean return of uniform random actions, "
        "expert = mean return of the expert checkpoint, each over "
        f"{summary['collect_config']['reference_episodes']} fresh episodes; "
        "normalized score = 100 (mean return - random) / (expert - random) of "
        "the dataset's own (complete) episodes.",
        "",
        "Files (git-ignored, remade by rerunning the script): "
        f"`{summary['data_dir']}/` "
        "(`<env>-<kind>-v0.hdf5` in the D4RL layout, and `minari/` in the Minari "
        "layout).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {summary['device']}, jax "
        f"{summary['jax_version']}; 1-minute load at start / end: "
        f"{m['load_average_start']:.1f} / {m['load_average_end']:.1f}.",
        "",
    ]
    for env_id, env in summary["envs"].items():
        b = env["behaviour"]
        first = next(iter(env["datasets"].values()))
        lines += [
            f"## {env_id}",
            "",
            f"Behaviour run: PPO, {b['ppo_config']['total_timesteps']:,} env steps "
            f"({env['collect_seconds']:.0f} s for the run and all five datasets). "
            f"Medium = checkpoint {b['medium_checkpoint']} at "
            f"{b['medium_env_steps']:,} env steps (evaluated return "
            f"{b['medium_eval_return']:.1f}, "
            + (
                "in the band"
                if b["medium_in_band"]
                else "**no checkpoint in the band; the closest**"
            )
            + f"); expert = checkpoint {b['expert_checkpoint']} at "
            f"{b['expert_env_steps']:,} env steps (evaluated return "
            f"{b['expert_eval_return']:.1f}). Reference returns: random "
            f"{first['random_return']:.2f}, expert {first['expert_return']:.2f}.",
            "",
            "| dataset | transitions | episodes | return mean (min .. max) | "
            "normalized score | terminals | timeouts | HDF5 MB | Minari MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in env["datasets"].values():
            lines.append(
                f"| {r['name']} | {r['transitions']:,} | {r['episodes']:,} | "
                f"{r['return_mean']:.1f} ({r['return_min']:.1f} .. "
                f"{r['return_max']:.1f}) | {r['normalized_score']:.1f} | "
                f"{r['terminals']:,} | {r['timeouts']:,} | "
                f"{r['hdf5_bytes'] / 1e6:.1f} | {r['minari_bytes'] / 1e6:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = summary["envs"]
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), squeeze=False)
    for ax, (env_id, env) in zip(axes[0], envs.items(), strict=True):
        b = env["behaviour"]
        steps = np.asarray(b["checkpoint_env_steps"])
        evals = np.asarray(b["checkpoint_eval_returns"])
        first = next(iter(env["datasets"].values()))
        ax.plot(steps, evals, color="C0", label="PPO checkpoint (evaluated)")
        ax.axhline(first["random_return"], color="gray", ls=":", label="random")
        ax.axhline(first["expert_return"], color="k", ls="--", label="expert ref.")
        m, e = b["medium_checkpoint"], b["expert_checkpoint"]
        ax.scatter([steps[m]], [evals[m]], color="C1", zorder=3, label="medium")
        ax.scatter([steps[e]], [evals[e]], color="C2", zorder=3, label="expert")
        ax.axvspan(0, steps[m], color="C1", alpha=0.1, label="medium-replay")
        ax.set_title(env_id)
        ax.set_xlabel("env steps")
        ax.set_ylabel("episode return")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
