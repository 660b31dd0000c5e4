"""The RLP bar: on a token stream where the next token depends on earlier ones
through a computation a thought can carry, RLP raises the mean
information-gain reward over training and the model's log-likelihood of x_t
with a thought above the no-think EMA baseline, in each of 3 seeds.

    python benchmarks/rlp_learning.py                   # the committed run
    python benchmarks/rlp_learning.py --rlp-steps 100   # shorter

It runs ``experiments/rlp.py`` (the stream, the warm-up and RLP are described
there) with its defaults unless flags override them: 3 seeds vmapped, each a
fresh 2-layer, width-64 transformer, warmed up by next-token prediction on the
stream and on thought-formatted rows, then trained by RLP alone (no label, no
thought and no next-token loss after the warm-up). The figures, per seed, over
the first and the last tenth of the RLP steps: the mean information-gain
reward, ``log p_theta(x_t | x_<t, c)`` (with a sampled thought) and ``log
pbar_phi(x_t | x_<t)`` (the EMA no-think baseline), the argmax accuracies, the
thought length and the clip fraction. Writes
``benchmarks/results/rlp_learning.{json,md,png}``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import tyro

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT))
from _machine import machine_info  # noqa: E402


def load_experiment():
    path = ROOT.parent / "experiments" / "rlp.py"
    spec = importlib.util.spec_from_file_location("experiments_rlp", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["experiments_rlp"] = module
    spec.loader.exec_module(module)
    return module


def smooth(x: np.ndarray, width: int) -> np.ndarray:
    width = max(1, min(width, len(x)))
    kernel = np.ones(width) / width
    return np.convolve(x, kernel, mode="valid")


def main(config) -> dict:
    machine = machine_info()  # the load before the run
    experiment = sys.modules["experiments_rlp"]
    config = dataclasses.replace(config, out_dir=str(RESULTS / "tmp" / "rlp"))
    t0 = time.perf_counter()
    out = experiment.main(config)
    wall = time.perf_counter() - t0
    summary, metrics = out["summary"], out["metrics"]
    seeds = summary["seeds"]
    met = [
        s["reward"]["end"] > s["reward"]["start"]
        and s["logp_think"]["end"] > s["logp_ema"]["end"]
        for s in seeds
    ]
    curves = {
        name: np.asarray(metrics[name]).round(4).tolist()
        for name in (
            "reward",
            "logp_think",
            "logp_ema",
            "logp_nothink",
            "accuracy_think",
            "accuracy_ema",
            "thought_length",
            "clip_fraction",
        )
    }
    result = {
        "bar": (
            "per seed: mean reward over the last tenth of RLP steps > over the "
            "first tenth, and mean log p(x_t | x_<t, c) > mean log pbar(x_t | x_<t) "
            "over the last tenth"
        ),
        "met": bool(all(met)),
        "met_per_seed": met,
        "config": summary["config"],
        "window": summary["window"],
        "seeds": seeds,
        "warmup_seconds": summary["warmup_seconds"],
        "rlp_compile_seconds": summary["rlp_compile_seconds"],
        "rlp_seconds": summary["rlp_seconds"],
        "wall_seconds": wall,
        "machine": {**machine, "load_average_end": os.getloadavg()[0]},
        "curves": curves,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rlp_learning.json").write_text(json.dumps(result, indent=1))
    write_md(result)
    plot(result, metrics)
    return result


def write_md(result: dict) -> None:
    c, m = result["config"], result["machine"]
    lines = [
        "# RLP learning bar",
        "",
        f"Bar: {result['bar']}. **{'MET' if result['met'] else 'NOT MET'}** "
        f"(per seed: {result['met_per_seed']}).",
        "",
        f"Stream: {c['num_sequences']} sequences of {c['length']} digits mod "
        f"{c['modulus']}, x_t = sum of x_(t-o) for o in {tuple(c['offsets'])}. "
        f"Model: {c['num_layers']} layers, width {c['hidden_size']}, vocab 16. "
        f"Warm-up: {c['warmup_steps']} steps of next-token prediction "
        f"(stream rows + thought-formatted rows, {c['warmup_batch']} each). "
        f"RLP: {c['rlp_steps']} steps, B = {c['batch_size']}, G = "
        f"{c['group_size']}, thought budget {c['max_thought_tokens']}, "
        f"{c['num_updates']} updates per rollout, lr {c['learning_rate']}, tau "
        f"{c['tau']}, temperature {c['temperature']}, clip {c['epsilon']}; "
        f"{c['num_seeds']} seeds vmapped.",
        "",
        f"Figures: means over the first and the last {result['window']} RLP steps.",
        "",
        "| seed | reward start | reward end | log p(x_t \\| x_<t, c) start | end "
        "| log pbar(x_t \\| x_<t) start | end | acc. with thought start | end "
        "| acc. EMA no-think end | thought length end | clip fraction end |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(result["seeds"]):
        lines.append(
            f"| {i} | {s['reward']['start']:+.3f} | {s['reward']['end']:+.3f} "
            f"| {s['logp_think']['start']:.3f} | {s['logp_think']['end']:.3f} "
            f"| {s['logp_ema']['start']:.3f} | {s['logp_ema']['end']:.3f} "
            f"| {s['accuracy_think']['start']:.3f} "
            f"| {s['accuracy_think']['end']:.3f} "
            f"| {s['accuracy_ema']['end']:.3f} "
            f"| {s['thought_length']['end']:.2f} "
            f"| {s['clip_fraction']['end']:.4f} |"
        )
    lines += [
        "",
        f"Wall time: warm-up {result['warmup_seconds']:.1f} s (compile included), "
        f"RLP compile {result['rlp_compile_seconds']:.1f} s, RLP run "
        f"{result['rlp_seconds']:.1f} s, total {result['wall_seconds']:.1f} s.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, CPU only; 1-minute load at the "
        f"start {m['load_average_start']:.2f}, at the end "
        f"{m['load_average_end']:.2f} (a shared machine).",
        "",
        "![curves](rlp_learning.png)",
        "",
    ]
    (RESULTS / "rlp_learning.md").write_text("\n".join(lines))


def plot(result: dict, metrics) -> None:
    import matplotlib.pyplot as plt

    reward = np.asarray(metrics["reward"])
    think = np.asarray(metrics["logp_think"])
    ema = np.asarray(metrics["logp_ema"])
    seeds, steps = reward.shape
    width = max(1, steps // 20)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for s in range(seeds):
        x = np.arange(steps - width + 1) + width - 1
        axes[0].plot(x, smooth(reward[s], width), color=colors[s], label=f"seed {s}")
        axes[1].plot(
            x,
            smooth(think[s], width),
            color=colors[s],
            label=f"seed {s}: log p(x_t | x_<t, c)",
        )
        axes[1].plot(
            x,
            smooth(ema[s], width),
            color=colors[s],
            linestyle="--",
            label=f"seed {s}: log pbar(x_t | x_<t) (EMA, no think)",
        )
    axes[0].axhline(0.0, color="gray", linewidth=0.8)
    axes[0].set_title("mean information-gain reward")
    axes[1].set_title("log-likelihood of x_t")
    for ax in axes:
        ax.set_xlabel(f"RLP step (moving mean over {width})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "rlp_learning.png", dpi=110)


if __name__ == "__main__":
    experiment = load_experiment()
    config = tyro.cli(experiment.Config, description=__doc__.split("\n\n")[0])
    result = main(config)
    for i, s in enumerate(result["seeds"]):
        print(
            f"seed {i}: reward {s['reward']['start']:+.3f} -> {s['reward']['end']:+.3f}"
            f", log p think {s['logp_think']['end']:.3f} vs EMA no-think "
            f"{s['logp_ema']['end']:.3f}"
        )
    print("bar met:", result["met"], result["met_per_seed"])
