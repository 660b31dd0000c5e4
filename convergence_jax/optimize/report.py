"""The markdown report of an optimization run, with its convergence plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["top_configurations", "write_report", "plot_convergence"]


def plot_convergence(records: list[dict[str, Any]], path: Path) -> None:
    """Best posterior mean and evaluation rewards per generation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = np.arange(len(records))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for r in records:
        ok = [e["reward"] for e in r["evaluations"] if e["error"] is None]
        jitter = np.random.default_rng(r["generation"]).uniform(-0.25, 0.25, len(ok))
        ax.scatter(
            r["generation"] + jitter, ok, s=4, color="0.7", alpha=0.5, linewidths=0
        )
    ax.plot(gens, [r["mean_reward"] for r in records], "o-", ms=3, label="mean reward")
    ax.plot(
        gens,
        [r["best_posterior_mean"] for r in records],
        "o-",
        ms=3,
        label="best posterior mean",
    )
    ax.set_xlabel("generation")
    ax.set_ylabel("reward")
    ax.set_title("Thompson sampling + evolution")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def top_configurations(records: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Distinct configurations ranked by all their evaluations over the run.

    A configuration can be evaluated in several generations (elites survive) and
    appear more than once in a population, so its evaluations are pooled. The
    ranking score is the mean reward shrunk toward the run's mean reward by one
    pseudo-evaluation, ``(sum + overall_mean) / (n + 1)``, so that one lucky noisy
    evaluation does not outrank a configuration measured many times. Failed
    evaluations count with the reward they were given.

    Each row: ``config``, ``score``, ``mean_reward``, ``evaluations``, ``failures``,
    ``last_generation`` and ``metric_means`` (over successful evaluations).
    """
    pooled: dict[str, dict[str, Any]] = {}
    all_rewards = []
    for r in records:
        for e in r["evaluations"]:
            key = json.dumps(e["config"], sort_keys=True)
            row = pooled.setdefault(
                key,
                {"config": e["config"], "rewards": [], "metrics": {}, "failures": 0},
            )
            row["rewards"].append(e["reward"])
            row["last_generation"] = r["generation"]
            all_rewards.append(e["reward"])
            if e["error"] is None:
                for name, v in e["metrics"].items():
                    row["metrics"].setdefault(name, []).append(v)
            else:
                row["failures"] += 1
    overall = float(np.mean(all_rewards)) if all_rewards else 0.0
    rows = []
    for row in pooled.values():
        n = len(row["rewards"])
        rows.append(
            {
                "config": row["config"],
                "score": (float(np.sum(row["rewards"])) + overall) / (n + 1),
                "mean_reward": float(np.mean(row["rewards"])),
                "evaluations": n,
                "failures": row["failures"],
                "last_generation": row["last_generation"],
                "metric_means": {
                    name: float(np.mean(v)) for name, v in row["metrics"].items()
                },
            }
        )
    rows.sort(key=lambda row: -row["score"])
    return rows[:k]


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(out: Path, config, records: list[dict[str, Any]], reward) -> None:
    """Write ``report.md`` and ``convergence.png`` into ``out``."""
    plot_convergence(records, out / "convergence.png")
    top = top_configurations(records, config.output.top_k)
    best = top[0]
    n_evals = sum(len(r["evaluations"]) for r in records)
    n_failed = sum(r["failures"] for r in records)
    n_retried = sum(
        len(e.get("notes") or []) for r in records for e in r["evaluations"]
    )
    names = list(config.space().names)
    metric_names = list(reward.names)
    lines = [
        "# Optimization report",
        "",
        f"- objective: `{config.objective.type}`"
        + (f" (`{config.objective.target}`)" if config.objective.target else ""),
        f"- generations: {len(records)}, "
        f"population {config.optimizer.population_size}, "
        f"{n_evals} evaluations ({n_failed} failed"
        + (f"; {n_retried} faults retried, see notes" if n_retried else "")
        + ")",
        "- reward: "
        + " + ".join(f"{m.weight:g} x {m.name} ({m.goal[:3]})" for m in reward.metrics),
        "",
        "## Best configuration",
        "",
        "```json",
        json.dumps(best["config"], indent=2),
        "```",
        "",
        f"Mean reward {best['mean_reward']:.4f} over {best['evaluations']} "
        "evaluations (the raw mean, biased upward: the best is picked for its high "
        f"noisy mean); ranking score, shrunk toward the run's mean, "
        f"{best['score']:.4f}.",
        "",
        "## Convergence",
        "",
        "![convergence](convergence.png)",
        "",
        "| generation | best posterior mean | mean reward | failures |",
        "|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['generation']} | {r['best_posterior_mean']:.4f} | "
            f"{r['mean_reward']:.4f} | {r['failures']} |"
        )
    header = ["rank", *names, "score", "mean reward", "evals", *metric_names]
    lines += [
        "",
        f"## Top {config.output.top_k} configurations",
        "",
        "Distinct configurations, their evaluations pooled over the run, ranked by "
        "mean reward shrunk toward the run's mean by one pseudo-evaluation "
        "(score = (sum + overall mean) / (n + 1)); metrics are means over "
        "successful evaluations.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---:|" * len(header),
    ]
    for i, row in enumerate(top, 1):
        cells = [i, *(row["config"][n] for n in names)]
        cells += [row["score"], row["mean_reward"], row["evaluations"]]
        cells += [row["metric_means"].get(m, float("nan")) for m in metric_names]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    failures = [
        (r["generation"], e)
        for r in records
        for e in r["evaluations"]
        if e["error"] is not None
    ]
    if failures:
        lines += ["", "## Failed evaluations (first 20)", ""]
        for g, e in failures[:20]:
            lines.append(f"- generation {g}, `{json.dumps(e['config'])}`: {e['error']}")
    if getattr(config, "society", None) is not None and config.society.enabled:
        from convergence_jax.optimize.society import society_report_lines

        lines += society_report_lines(records)
    (out / "report.md").write_text("\n".join(lines) + "\n")
