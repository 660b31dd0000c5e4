"""The learning bar of the GRPO program: SFT warm-up to partial accuracy, then RL
with each of GRPO, Dr. GRPO, DAPO and GSPO, 3 vmapped seeds each.

    python benchmarks/grpo_learning.py                 # the committed run
    python benchmarks/grpo_learning.py --rl-steps 100  # shorter

For every loss it runs ``experiments/grpo.py`` with its defaults and seeds
(so the same SFT warm-up: a 2-layer, width-64 transformer on 2-digit addition,
trained per seed until its greedy exact match on problems apart from the held-out
ones reaches 0.3, `llm.AdditionWarmup`), then RL with the exact-match reward.
The bar: held-out greedy exact match (512 problems from ``llm.eval_key``) rises by
at least 20 points in every seed of every loss. Writes
``benchmarks/results/grpo_learning.{json,md}``, ``grpo_learning.png`` (the four
curves) and each loss's experiment outputs (``metrics.jsonl``, ``curves.png``,
``samples.txt``, ``summary.json``) under ``benchmarks/results/grpo_learning/``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT))
from _machine import machine_info  # noqa: E402

LOSSES = ("grpo", "dr_grpo", "dapo", "gspo")
BAR = 0.20


@dataclass(frozen=True)
class Args:
    """The learning bar: every loss, the same seeds and settings."""

    rl_steps: int = 600
    """RL steps per run."""
    learning_rate: float = 2e-4
    """RL Adam step size (every loss)."""
    num_epochs: int = 2
    """Passes over each step's samples (mu): the second pass is off-policy, so
    each loss's clipping acts (with one pass GSPO's gradient is GRPO's)."""
    num_seeds: int = 3
    """Seeds, vmapped."""
    eval_every: int = 50
    """RL steps between held-out evaluations."""
    losses: tuple[str, ...] = LOSSES
    """Losses to run."""


def load_experiment():
    path = ROOT.parent / "experiments" / "grpo.py"
    spec = importlib.util.spec_from_file_location("experiments_grpo", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def plot(path: Path, runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for loss, summary in runs.items():
        steps = summary["eval_steps"]
        curves = np.asarray(summary["eval_exact_match"])  # [seeds, points]
        (line,) = ax.plot(steps, curves.mean(0), label=loss)
        ax.fill_between(
            steps, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15
        )
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out exact match (greedy)")
    ax.set_title(
        "2-digit addition after SFT warm-up: mean and min-max over seeds", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(args: Args) -> None:
    experiment = load_experiment()
    out_root = RESULTS / "grpo_learning"
    runs, seconds = {}, {}
    for loss in args.losses:
        config = experiment.Config(
            loss=loss,
            num_seeds=args.num_seeds,
            rl_steps=args.rl_steps,
            learning_rate=args.learning_rate,
            num_epochs=args.num_epochs,
            eval_every=args.eval_every,
            save_checkpoint=False,
            out_dir=str(out_root / loss),
        )
        start = time.perf_counter()
        runs[loss] = experiment.main(config)
        seconds[loss] = time.perf_counter() - start
        print(
            f"{loss}: gains {np.round(runs[loss]['exact_match_gain'], 3)}", flush=True
        )
    plot(RESULTS / "grpo_learning.png", runs)
    load = os.getloadavg()[0]
    result = {
        "machine": machine_info(),
        "args": dataclasses.asdict(args),
        "bar": BAR,
        "load_at_end": load,
        "runs": {
            loss: {
                "seconds": seconds[loss],
                **{
                    k: s[k]
                    for k in (
                        "exact_match_after_sft",
                        "exact_match_after_rl",
                        "exact_match_gain",
                        "min_gain",
                        "eval_steps",
                        "eval_exact_match",
                        "sft_steps",
                        "sft_seconds",
                        "rl_seconds",
                    )
                    if k in s
                },
            }
            for loss, s in runs.items()
        },
    }
    (RESULTS / "grpo_learning.json").write_text(json.dumps(result, indent=2))
    rows = []
    for loss, s in runs.items():

        def pct(values):
            return " / ".join(f"{100 * v:.1f}" for v in values)

        passed = all(g >= BAR for g in s["exact_match_gain"])
        rows.append(
            f"| {loss} | {pct(s['exact_match_after_sft'])} | "
            f"{pct(s['exact_match_after_rl'])} | {pct(s['exact_match_gain'])} | "
            f"{'yes' if passed else '**no**'} | {seconds[loss]:.0f} |"
        )
    base = runs[next(iter(runs))]["config"]
    md = [
        "# GRPO learning bar: SFT warm-up, then RL, 3 vmapped seeds per loss",
        "",
        f"Machine: {machine_info()['cpu']}, CPU only; 1-minute load at the end "
        f"{load:.2f}. Written by `benchmarks/grpo_learning.py`.",
        "",
        "Setup (every loss the same): 2-layer transformer, width 64, 4 heads, rotary "
        "base 100, ByteTokenizer; 2-digit addition. SFT (AdamW 3e-3, batch 32) per "
        "seed until greedy exact match on 256 problems apart from the held-out ones "
        f"reaches {base['sft_target']} (at most {base['sft_steps']} steps); then "
        f"{args.rl_steps} RL steps of {base['num_prompts']} prompts x "
        f"G = {base['group_size']} completions, exact-match reward, Adam "
        f"{args.learning_rate:g}, {args.num_epochs} passes (updates) per step "
        "(the old log-probs recomputed before the first), each loss's recipe "
        "(`llm.LOSSES`: DAPO with clip-higher, token-level loss, overlong filter, "
        "soft overlong punishment and dynamic sampling with refill; GSPO's "
        "sequence-level ratio). Held-out score: greedy exact match on 512 "
        "problems from `llm.eval_key(0)`, a key stream no training step draws.",
        "",
        f"Bar: a gain of at least {100 * BAR:.0f} points in every seed.",
        "",
        "| loss | exact match after SFT (%, seeds 0/1/2) | after RL (%) | gain "
        "(points) | bar met | seconds |",
        "|---|---|---|---|---|---:|",
        *rows,
        "",
        "![curves](grpo_learning.png)",
        "",
        "Per-loss outputs (metrics per step and seed, curves, greedy samples after "
        "SFT and after RL): `benchmarks/results/grpo_learning/<loss>/`.",
    ]
    (RESULTS / "grpo_learning.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main(tyro.cli(Args))
