"""The sample-efficient preset's free values, searched with ``loop.presearch``
(Thompson sampling + evolution over configurations, every batch of trials one
vmapped PPO program).

    python benchmarks/preset_search.py            # writes results/preset_search.*

Two small searches, one per part of ``loop.ppo_preset("sample_efficient")``:

* **Box** (continuous actions; searched on Pendulum-v1): learning rate, discount,
  reward scale and GAE lambda, starting from the preset's ``box`` shape (4 x 256
  windows, 10 epochs over 8 minibatches, observation normalization, no entropy
  bonus), trials of ``--box-steps`` environment steps.
* **Discrete** (CartPole-v1 and Acrobot-v1, one search each): learning rate and
  entropy bonus at the preset's 4 x 64 shape, trials of ``--discrete-steps``.

A trial's score is the mean return of the training episodes that ended in its
last 20% of updates (``presearch``'s score). Reported per search: the posterior
best configuration of each generation (the bandit's mean over its trials: less
lucky than the best single trial, which is reported too), every trial, the
environment steps and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from _machine import machine_info  # noqa: E402

from convergence_jax import loop  # noqa: E402
from convergence_jax.spaces import SearchSpace  # noqa: E402

NAME = "preset_search"

BOX_SPACE = {
    "learning_rate": {"type": "float", "min": 3e-4, "max": 3e-3, "log": True},
    "gamma": {"type": "float", "min": 0.85, "max": 0.99},
    "reward_scale": {"type": "float", "min": 0.02, "max": 0.5, "log": True},
    "gae_lambda": {"type": "float", "min": 0.8, "max": 1.0},
}
DISCRETE_SPACE = {
    "learning_rate": {"type": "float", "min": 5e-4, "max": 5e-3, "log": True},
    "ent_coef": {"type": "float", "min": 0.0, "max": 0.02},
}


def search(env_id: str, space: dict, steps: int, args) -> dict:
    preset = loop.ppo_preset("sample_efficient")
    base = preset.ppo_config(env_id)
    started = time.perf_counter()
    result = loop.presearch(
        base,
        SearchSpace.from_dict(space),
        trial_timesteps=steps,
        population_size=args.population,
        generations=args.generations,
        seed=args.seed,
        verbose=True,
    )
    seconds = time.perf_counter() - started
    best_trial = max(
        (t for t in result.trials if t["score"] == t["score"]),
        key=lambda t: t["score"],
    )
    return {
        "env_id": env_id,
        "space": space,
        "trial_timesteps": steps,
        "base": {k: getattr(base, k) for k in ("num_envs", "num_steps")}
        | {k: getattr(base, k) for k in ("update_epochs", "num_minibatches")}
        | {k: getattr(base, k) for k in ("learning_rate", "gamma", "reward_scale")}
        | {k: getattr(base, k) for k in ("ent_coef", "gae_lambda", "normalize_obs")},
        "generations": result.generations,
        "posterior_best": result.generations[-1]["best_config"],
        "posterior_best_fitness": result.generations[-1]["best_fitness"],
        "best_trial": best_trial,
        "trials": result.trials,
        "env_steps": result.env_steps,
        "seconds": seconds,
    }


def fmt_config(config: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in config.items())


def report(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# {NAME}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, CPU only; 1-minute load "
        f"{m['load_average_start']:.1f} before, {result['load_after']:.1f} after. "
        f"`loop.presearch` (Thompson sampling + evolution), population "
        f"{result['population']}, {result['generations']} generations (2 x "
        "population trials each), seed "
        f"{result['seed']}. Score: mean training-episode return over a trial's "
        "last 20% of updates.",
        "",
        "| part | task | trial steps | trials | posterior best (last generation) "
        "| its posterior mean | best single trial | env steps | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for part, s in result["searches"].items():
        lines.append(
            f"| {part.split(':')[0]} | {s['env_id']} | {s['trial_timesteps']:,} | "
            f"{len(s['trials'])} | {fmt_config(s['posterior_best'])} | "
            f"{s['posterior_best_fitness']:.1f} | "
            f"{fmt_config(s['best_trial']['config'])}: "
            f"{s['best_trial']['score']:.1f} | {s['env_steps']:,} | "
            f"{s['seconds']:.0f} |"
        )
    lines += ["", "Per generation (posterior best):", ""]
    for s in result["searches"].values():
        for g in s["generations"]:
            lines.append(
                f"- {s['env_id']} generation {g['generation']}: "
                f"{fmt_config(g['best_config'])} -> {g['best_fitness']:.1f}"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--box-steps", type=int, default=200_000)
    parser.add_argument("--discrete-steps", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--parts", default="box,discrete", help="comma-separated: box, discrete"
    )
    args = parser.parse_args()
    results_dir = ROOT / "results"
    path = results_dir / f"{NAME}.json"
    result = {
        "machine": machine_info(),
        "population": args.population,
        "generations": args.generations,
        "seed": args.seed,
        "searches": {},
    }
    if path.exists():  # keep the other part's search when rerunning one part
        result["searches"] = json.loads(path.read_text()).get("searches", {})
    jobs = []
    if "box" in args.parts:
        jobs.append(("box", "Pendulum-v1", BOX_SPACE, args.box_steps))
    if "discrete" in args.parts:
        for env_id in ("CartPole-v1", "Acrobot-v1"):
            jobs.append(("discrete", env_id, DISCRETE_SPACE, args.discrete_steps))
    for part, env_id, space, steps in jobs:
        result["searches"][f"{part}:{env_id}"] = search(env_id, space, steps, args)
        result["load_after"] = os.getloadavg()[0]
        path.write_text(json.dumps(result, indent=1))
        path.with_suffix(".md").write_text(report(result))
    print(path.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
