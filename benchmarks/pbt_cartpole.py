"""Vmapped PBT (8 PPO agents in one program) against 8 independent runs.

Both start from the same 8 hyperparameter settings (learning rates spread
log-uniformly over [3e-5, 3e-3]; ``--lrs`` to change) and run the same program
(``loop.make_pbt``); the independent runs simply never exploit. An agent's
score is the mean training return over each round of ``exploit_every``
updates. Reported: environment steps *per agent* until the first round in
which the population's best agent scores >= 475 (PBT), against the median over
the 8 independent runs of their first such round (a run that never gets there
counts as never). Both populations spend 8x these steps in total, so the same
comparison holds for total environment steps.

    python benchmarks/pbt_cartpole.py [--seeds 0 1 2 3] [--quick]
"""

from __future__ import annotations

import argparse
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

from convergence_jax import loop, rl  # noqa: E402

THRESHOLD = 475.0


def first_reach(scores: np.ndarray) -> float:
    """Index of the first round with score >= THRESHOLD (inf if never)."""
    hit = np.nonzero(np.nan_to_num(scores, nan=-np.inf) >= THRESHOLD)[0]
    return float(hit[0]) if len(hit) else np.inf


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--exploit-every", type=int, default=4)
    parser.add_argument("--lrs", type=float, nargs="+", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seeds = 3, [0]
    lrs = args.lrs or list(np.geomspace(3e-5, 3e-3, 8))
    config = rl.PPOConfig(
        env_id="CartPole-v1", num_envs=8, num_steps=128, anneal_lr=False
    )
    hparams = rl.hparam_grid(config, learning_rate=lrs)
    steps_per_round = args.exploit_every * config.batch_size
    programs = {
        name: jax.jit(
            loop.make_pbt(
                config, args.rounds, args.exploit_every, exploit=(name == "pbt")
            )
        )
        for name in ("pbt", "independent")
    }
    compile_s = {}
    for name, program in programs.items():
        t0 = time.perf_counter()
        programs[name] = program.lower(jax.random.key(0), hparams).compile()
        compile_s[name] = time.perf_counter() - t0
    rows = []
    for seed in args.seeds:
        row = {"seed": seed}
        for name, program in programs.items():
            t0 = time.perf_counter()
            _, metrics = program(jax.random.key(seed), hparams)
            score = np.asarray(jax.block_until_ready(metrics["score"]))  # [R, N]
            row[f"{name}_seconds"] = time.perf_counter() - t0
            if name == "pbt":
                best = np.nanmax(np.nan_to_num(score, nan=-np.inf), axis=1)
                row["pbt_round"] = first_reach(best)
                row["pbt_final_lrs"] = np.asarray(
                    metrics["hparams"].learning_rate[-1]
                ).tolist()
            else:
                reach = [first_reach(score[:, i]) for i in range(score.shape[1])]
                row["independent_rounds"] = reach
                row["independent_median_round"] = float(np.median(reach))
                row["independent_best_round"] = float(np.min(reach))
        row["pbt_steps"] = (row["pbt_round"] + 1) * steps_per_round
        row["independent_median_steps"] = (
            row["independent_median_round"] + 1
        ) * steps_per_round
        row["independent_best_steps"] = (
            row["independent_best_round"] + 1
        ) * steps_per_round
        rows.append(row)
        print(row)
    pbt_steps = np.array([r["pbt_steps"] for r in rows])
    ind_steps = np.array([r["independent_median_steps"] for r in rows])
    result = {
        "benchmark": "pbt_cartpole",
        "machine": machine_info(),
        "load_average": os.getloadavg(),
        "config": {
            "num_envs": config.num_envs,
            "num_steps": config.num_steps,
            "rounds": args.rounds,
            "exploit_every": args.exploit_every,
            "learning_rates": lrs,
            "threshold": THRESHOLD,
        },
        "compile_s": compile_s,
        "runs": rows,
        "pbt_wins": int(np.sum(pbt_steps < ind_steps)),
        "pbt_wins_vs_best": int(
            np.sum(pbt_steps < np.array([r["independent_best_steps"] for r in rows]))
        ),
    }
    out = ROOT / "benchmarks" / "results"
    name = "pbt_cartpole_quick" if args.quick else "pbt_cartpole"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))

    single_run_wins = sum(
        8 * r["pbt_steps"] < r["independent_median_steps"] for r in rows
    )

    def fmt(x):
        return "never" if not np.isfinite(x) else f"{int(x):,}"

    lines = [
        "# Vmapped PBT (8 PPO agents, one program) vs 8 independent runs, CartPole-v1",
        "",
        f"Machine: {result['machine']}; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in result['load_average'])}. "
        f"Compile: PBT {compile_s['pbt']:.1f} s, independent "
        f"{compile_s['independent']:.1f} s. Same 8 starting learning rates "
        f"({', '.join(f'{x:.1e}' for x in lrs)}); exploit/explore every "
        f"{args.exploit_every} updates of {config.batch_size} steps.",
        "",
        "Environment steps per agent until the return reaches 475 (PBT: the "
        "population's best agent; independent: the median of the 8 runs). "
        "Multiply by 8 for the population total.",
        "",
        "| seed | PBT | independent (median) | independent (best run) "
        "| independent runs (rounds to 475) | PBT s | independent s |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {fmt(r['pbt_steps'])} | "
            f"{fmt(r['independent_median_steps'])} | "
            f"{fmt(r['independent_best_steps'])} | "
            f"{', '.join(fmt(x) for x in r['independent_rounds'])} | "
            f"{r['pbt_seconds']:.1f} | {r['independent_seconds']:.1f} |"
        )
    lines += [
        "",
        f"PBT reaches 475 in fewer steps than the independent median in "
        f"**{result['pbt_wins']} of {len(rows)}** seeds. Against the best of the 8 "
        f"independent runs (a stricter baseline: PBT's figure is also its best "
        f"agent, and a round's score is a noisy mean of the episodes that ended in "
        f"it) PBT is faster in {result['pbt_wins_vs_best']} of {len(rows)}.",
        "",
        "Counted as totals, both sides spend 8 x the per-agent steps (8 agents, or "
        "a sweep of 8 runs going side by side until its median run gets there), so "
        "the comparison above is also one of total steps. Against the steps of the "
        "median independent run alone, PBT's population total (8 x its per-agent "
        f"steps) is smaller in {single_run_wins} of {len(rows)} seeds.",
    ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
