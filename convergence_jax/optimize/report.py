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
    ax.plot(
        gens,
        np.maximum.accumulate([r["best_posterior_mean"] for r in records]),
        "--",
        lw=1,
        label="best so far",
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
    """Distinct configurations ranked by their latest posterior mean.

    Each row has the configuration, its posterior mean, its number of evaluations,
    the last generation it was in, and the mean of every metric over its evaluations.
    """
    latest: dict[str, dict[str, Any]] = {}
    metric_sums: dict[str, dict[str, list[float]]] = {}
    for r in records:
        for p in r["population"]:
            latest[json.dumps(p["config"], sort_keys=True)] = {
                **p,
                "generation": r["generation"],
            }
        for e in r["evaluations"]:
            if e["error"] is None:
                sums = metric_sums.setdefault(
                    json.dumps(e["config"], sort_keys=True), {}
                )
                for name, v in e["metrics"].items():
                    sums.setdefault(name, []).append(v)
    rows = sorted(latest.values(), key=lambda p: -p["posterior_mean"])[:k]
    for row in rows:
        sums = metric_sums.get(json.dumps(row["config"], sort_keys=True), {})
        row["metric_means"] = {n: float(np.mean(v)) for n, v in sums.items()}
    return rows


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(out: Path, config, records: list[dict[str, Any]], reward) -> None:
    """Write ``report.md`` and ``convergence.png`` into ``out``."""
    plot_convergence(records, out / "convergence.png")
    last = records[-1]
    n_evals = sum(len(r["evaluations"]) for r in records)
    n_failed = sum(r["failures"] for r in records)
    names = list(config.space().names)
    metric_names = list(reward.names)
    lines = [
        "# Optimization report",
        "",
        f"- objective: `{config.objective.type}`"
        + (f" (`{config.objective.target}`)" if config.objective.target else ""),
        f"- generations: {len(records)}, "
        f"population {config.optimizer.population_size}, "
        f"{n_evals} evaluations ({n_failed} failed)",
        "- reward: "
        + " + ".join(f"{m.weight:g} x {m.name} ({m.goal[:3]})" for m in reward.metrics),
        "",
        "## Best configuration",
        "",
        "```json",
        json.dumps(last["best_config"], indent=2),
        "```",
        "",
        f"Posterior mean reward {last['best_posterior_mean']:.4f} from "
        f"{last['best_evaluations']} evaluations.",
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
    header = ["rank", *names, "posterior mean", "evals", *metric_names]
    lines += [
        "",
        f"## Top {config.output.top_k} configurations",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---:|" * len(header),
    ]
    for i, row in enumerate(top_configurations(records, config.output.top_k), 1):
        cells = [i, *(row["config"][n] for n in names)]
        cells += [row["posterior_mean"], row["evaluations"]]
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
    (out / "report.md").write_text("\n".join(lines) + "\n")
