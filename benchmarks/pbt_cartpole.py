"""Vmapped PBT (8 PPO agents in one program) against 8 independent runs.

Both start from the same 8 hyperparameter settings (learning rates spread
log-uniformly over [3e-5, 3e-3]; ``--lrs`` to change) and run the same program
(``loop.make_pbt``); the independent runs simply never exploit. An agent's
score is the mean training return over each round of ``exploit_every``
updates; an agent "reaches 475" in the first round its score is >= 475.

Reported, in environment steps *per agent* until 475, two like-for-like
pairings side by side:

* **best vs best**: the first agent of the PBT population to get there against
  the first of the 8 independent runs to get there;
* **median vs median**: the median over PBT's 8 population slots (a slot's
  agent may be a copy of a better one after an exploit step: that is what the
  population holds) against the median over the 8 independent runs.

A run that never gets there counts as never (a tie when both never do). Both
populations spend 8x these steps in total.

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
            reach = [first_reach(score[:, i]) for i in range(score.shape[1])]
            row[f"{name}_rounds"] = reach
            row[f"{name}_best_round"] = float(np.min(reach))
            row[f"{name}_median_round"] = float(np.median(reach))
            for which in ("best", "median"):
                row[f"{name}_{which}_steps"] = (
                    row[f"{name}_{which}_round"] + 1
                ) * steps_per_round
            if name == "pbt":
                row["pbt_final_lrs"] = np.asarray(
                    metrics["hparams"].learning_rate[-1]
                ).tolist()
        rows.append(row)
        print(row, flush=True)

    def tally(which):
        pbt = np.array([r[f"pbt_{which}_steps"] for r in rows])
        ind = np.array([r[f"independent_{which}_steps"] for r in rows])
        with np.errstate(invalid="ignore"):
            ratio = np.where(pbt == ind, 1.0, ind / pbt)  # never/never is a tie
        return {
            "independent_over_pbt_steps": ratio.tolist(),
            "ratio_min_median_max": [
                float(np.min(ratio)),
                float(np.median(ratio)),
                float(np.max(ratio)),
            ],
            "pbt_fewer_steps": int(np.sum(pbt < ind)),
            "tie": int(np.sum(pbt == ind)),
            "independent_fewer_steps": int(np.sum(pbt > ind)),
        }

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
            "steps_per_round": steps_per_round,
        },
        "compile_s": compile_s,
        "runs": rows,
        "best_vs_best": tally("best"),
        "median_vs_median": tally("median"),
    }
    out = ROOT / "benchmarks" / "results"
    name = "pbt_cartpole_quick" if args.quick else "pbt_cartpole"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))

    def fmt(x):
        return "never" if not np.isfinite(x) else f"{int(x):,}"

    def rounds(xs):
        return ", ".join("never" if not np.isfinite(x) else str(int(x)) for x in xs)

    def verdict(t):
        per_seed = ", ".join(
            "never" if not np.isfinite(x) else f"{x:.2f}"
            for x in t["independent_over_pbt_steps"]
        )
        lo, mid, hi = (
            "never" if not np.isfinite(x) else f"{x:.2f}x"
            for x in t["ratio_min_median_max"]
        )
        return (
            f"PBT fewer steps in **{t['pbt_fewer_steps']} of {len(rows)}** seeds, "
            f"tie in {t['tie']}, independent fewer in "
            f"{t['independent_fewer_steps']}; independent / PBT steps per seed "
            f"{per_seed} (min / median / max {lo} / {mid} / {hi}; 'never': the "
            "independent side never got there)"
        )

    load = ", ".join(f"{x:.1f}" for x in result["load_average"])
    lines = [
        "# Vmapped PBT (8 PPO agents, one program) vs 8 independent runs, CartPole-v1",
        "",
        f"Machine: {result['machine']}; load average at the end {load}. "
        f"Compile: PBT {compile_s['pbt']:.1f} s, independent "
        f"{compile_s['independent']:.1f} s. Same 8 starting learning rates "
        f"({', '.join(f'{x:.1e}' for x in lrs)}); exploit/explore every "
        f"{args.exploit_every} updates of {config.batch_size} steps "
        f"({steps_per_round:,} steps per agent per round), {args.rounds} rounds; "
        f"seeds {', '.join(str(s) for s in args.seeds)}.",
        "",
        "Environment steps per agent until the round score reaches 475, paired "
        "like for like: the first agent of each population to get there (best vs "
        "best), and the median over the 8 agents of each (median vs median; PBT's "
        "8 are its population slots). Multiply by 8 for a population's total.",
        "",
        "| seed | PBT best agent | independent best run | PBT median agent "
        "| independent median run | PBT slots (rounds to 475) "
        "| independent runs (rounds to 475) | PBT s | independent s |",
        "|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {fmt(r['pbt_best_steps'])} | "
            f"{fmt(r['independent_best_steps'])} | "
            f"{fmt(r['pbt_median_steps'])} | "
            f"{fmt(r['independent_median_steps'])} | "
            f"{rounds(r['pbt_rounds'])} | {rounds(r['independent_rounds'])} | "
            f"{r['pbt_seconds']:.1f} | {r['independent_seconds']:.1f} |"
        )
    lines += [
        "",
        f"- Best vs best: {verdict(result['best_vs_best'])}.",
        f"- Median vs median: {verdict(result['median_vs_median'])}.",
        "",
        "Steps to a threshold are counts from one run per seed, not timings; with "
        f"{len(rows)} seeds these tallies are small samples, and a round's score is "
        "a noisy mean of the episodes that ended in it.",
    ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
