"""The autonomous loop on CartPole-v1: does it converge, and what does it cost?

Runs ``experiments/autonomous_ppo.py`` (PPO under the loop until DORMANT, one
spawned variant, an ensemble) for several seeds and reports, per seed, whether
DORMANT was reached, the best validation return, the environment steps, and the
split of wall time between the compiled learn (``agent.learn``), the compiled
acting (train and validation windows) and everything else — the loop's own
overhead (scheduler, evaluator, checkpoint registry, policy manager, callbacks).
A warm-up run first compiles every program, so the timed runs measure the
steady state; compile time is reported separately.

    python benchmarks/loop_overhead.py [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import machine_info  # noqa: E402


def load_experiment():
    spec = importlib.util.spec_from_file_location(
        "autonomous_ppo", ROOT / "experiments" / "autonomous_ppo.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    exp = load_experiment()
    extra = {"max_episodes": 20, "max_spawns": 0} if args.quick else {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        exp.main(
            exp.Config(seed=99, out_dir=f"{tmp}/warmup", verbose=False, max_episodes=20)
        )
        warmup = time.perf_counter() - t0
        runs = []
        for seed in args.seeds:
            summary = exp.main(
                exp.Config(seed=seed, out_dir=f"{tmp}/s{seed}", verbose=False, **extra)
            )
            t = summary["timing"]
            runs.append(
                {
                    "seed": seed,
                    "reason": summary["reason"],
                    "reached_dormant": summary["reached_dormant"],
                    "best_val_score": summary["best_val_score"],
                    "ensemble_val_score": summary["ensemble_val_score"],
                    "env_steps": summary["env_steps"],
                    "windows": summary["windows"],
                    "total_s": t["total"],
                    "learn_s": t["learn"],
                    "act_s": t["act"],
                    "overhead_s": t["overhead"],
                    "checkpoint_s": t["checkpoint"],
                    "overhead_fraction": t["overhead"] / t["total"],
                }
            )
    total = sum(r["total_s"] for r in runs)
    overhead = sum(r["overhead_s"] for r in runs)
    result = {
        "benchmark": "loop_overhead",
        "machine": machine_info(),
        "load_average": os.getloadavg(),
        "warmup_compile_s": warmup,
        "runs": runs,
        "overhead_fraction_all": overhead / total,
    }
    out = ROOT / "benchmarks" / "results"
    name = "loop_overhead_quick" if args.quick else "loop_overhead"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# The autonomous loop on CartPole-v1 (PPO, until DORMANT)",
        "",
        f"Machine: {result['machine']}; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in result['load_average'])}. "
        f"Warm-up run (compiles everything): {warmup:.1f} s.",
        "",
        "| seed | stop reason | DORMANT | best val | ensemble val | env steps "
        "| total s | learn s | act s | overhead s (checkpoint) | overhead |",
        "|---:|---|:-:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        dormant = "yes" if r["reached_dormant"] else "no"
        lines.append(
            f"| {r['seed']} | {r['reason']} | {dormant} "
            f"| {r['best_val_score']:.1f} | {r['ensemble_val_score']:.1f} "
            f"| {r['env_steps']:,} | {r['total_s']:.2f} | {r['learn_s']:.2f} "
            f"| {r['act_s']:.2f} | {r['overhead_s']:.2f} ({r['checkpoint_s']:.2f}) "
            f"| {100 * r['overhead_fraction']:.1f}% |"
        )
    lines += [
        "",
        f"Overhead over all runs: **{100 * result['overhead_fraction_all']:.1f}%** "
        "of wall time (everything outside the compiled learn and act calls).",
    ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
