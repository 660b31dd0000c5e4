"""Meta-evolution of GA strategies (and learning rules), with a held-out check.

    python experiments/meta_evolution.py                       # the default run
    python experiments/meta_evolution.py --num-meta-generations 40 --test-seeds 64
    python experiments/meta_evolution.py --ranking pareto
    python experiments/meta_evolution.py --help                # every flag

Steps, each one compiled program:

1. meta-train strategy genomes on the suite's meta-train tasks
   (``convergence_jax.meta.meta_train``);
2. compare the universal best learned strategy with the hand-designed default
   genome on the held-out meta-test tasks over ``test_seeds`` seeds (final
   fitness at equal budget, evaluations and generations to a threshold, 95%
   paired-bootstrap intervals);
3. attribute the learned strategy's meta-fitness to its genes by ablation;
4. meta-evolve learning rules on regression tasks and check the best one against
   the default rule on held-out regression targets.

Writes to ``out_dir``: ``report.md``, ``meta_fitness.png``, ``held_out.png``,
``attribution.png``, ``learned_strategies.json``, ``learned_rules.json`` and
``summary.json``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import jax
import numpy as np
import tyro

from convergence_jax import meta

USAGE = __doc__.split("\n\nSteps")[0]


@dataclass(frozen=True)
class Config:
    """Meta-evolution of GA strategies and learning rules."""

    suite: Literal["default", "mixed", "small"] = "default"
    """Task suite: ``default`` (meta-train on 6 BBOB tasks; held-out BBOB in
    D = 10, 20, MLP regression, CartPole), ``mixed`` (the same, one BBOB
    meta-train task replaced by MLP regression) or ``small`` (BBOB in D = 3 only;
    for smoke tests)."""
    num_genomes: int = 16
    """Strategy genomes per meta-generation."""
    num_meta_generations: int = 20
    """Meta-generations of strategy evolution."""
    population: int = 64
    """Static maximum population of the inner GA (genomes mask inside it)."""
    min_population: int = 8
    """Smallest population a genome may choose."""
    generations: int = 100
    """Generations of every inner GA run."""
    seeds: int = 2
    """Seeds per genome and task during meta-training."""
    elites: int = 2
    """Genomes kept unchanged each meta-generation."""
    ranking: Literal["weighted", "pareto"] = "weighted"
    """Meta-fitness: weighted sum of the meta-metrics, or Pareto ranking."""
    weights: tuple[float, float, float, float, float, float] = meta.DEFAULT_WEIGHTS
    """Weights of convergence speed, final fitness, sample efficiency, diversity,
    robustness, compute cost."""
    test_seeds: int = 32
    """Seeds of the held-out comparison (learned vs default)."""
    attribution_replicates: int = 8
    """Independent replicates of the ablation study (each ``seeds`` seeds)."""
    rule_generations: int = 10
    """Meta-generations of learning-rule evolution (0 skips step 4)."""
    rule_steps: int = 200
    """Gradient steps of each learning-rule training run."""
    seed: int = 0
    """Master seed."""
    out_dir: str = "runs/meta_evolution"
    """Where the report, plots and learned strategies go."""
    progress: bool = True
    """Print one line per meta-generation."""
    genome_axis: Literal["auto", "map", "vmap"] = "auto"
    """How genomes are batched (speed only; see meta.make_curves): auto = map on
    CPU, vmap on accelerators."""


def parse(args=None) -> Config:
    return tyro.cli(Config, args=args, description=USAGE)


def suites(config: Config):
    if config.suite in ("default", "mixed"):
        train = "bbob" if config.suite == "default" else "mixed"
        return meta.task_suite(train=train), (
            meta.regression_family(
                ((2.0, 0.5, 1.0), (3.0, -1.0, 0.8), (1.0, 0.0, 1.0))
            ),
            meta.regression_family(
                ((2.5, 1.0, 1.0), (1.5, -0.5, 0.6)), name="reg-test"
            ),
        )
    train = meta.bbob_family(("sphere", "rastrigin"), 3, instance=1)
    test = meta.bbob_family(("ackley", "griewank"), 3, instance=2)
    return meta.TaskSuite((train,), (test,)), (
        meta.regression_family(((2.0, 0.5, 1.0),), hidden=4, num_points=8),
        meta.regression_family(((1.5, 0.0, 1.0),), hidden=4, num_points=8, name="t"),
    )


def _plot_meta_fitness(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fitness = history["fitness"]
    gens = np.arange(len(fitness))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(gens, fitness.max(1), label="best")
    ax.plot(gens, fitness.mean(1), label="mean")
    ax.plot(gens, fitness[:, 0], ":", label="elite #1 (row 0)")
    ax.set_xlabel("meta-generation")
    ax.set_ylabel("meta-fitness")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_held_out(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = results["curves"]  # [K, T, S, G]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, name in enumerate(results["names"]):
        n = results["population_size"][k]
        evals = n * np.arange(1, curves.shape[-1] + 1)
        per_seed = curves[k].mean(0)  # [S, G]
        mean = per_seed.mean(0)
        half = 1.96 * per_seed.std(0, ddof=1) / np.sqrt(per_seed.shape[0])
        ax.plot(evals, mean, label=f"{name} (population {n})")
        ax.fill_between(evals, mean - half, mean + half, alpha=0.25)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("normalized best so far\n(mean over held-out tasks)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ci(x):
    return f"{x['estimate']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]"


def _rule_comparison(family, rules, config, key):
    """Mean final normalized loss score per rule with a bootstrap 95% interval."""
    curves_fn = meta.make_rule_curves(family, num_steps=config.rule_steps)
    batch = meta.stack_genomes(list(rules.values()))
    curves = np.asarray(
        jax.jit(curves_fn, static_argnums=2)(key, batch, config.test_seeds)
    )
    final = curves[..., -1].mean(1)  # [K, S]
    rng = np.random.default_rng(config.seed)
    out = {}
    for k, name in enumerate(rules):
        boot = [
            final[k, rng.integers(0, final.shape[1], final.shape[1])].mean()
            for _ in range(2000)
        ]
        out[name] = {
            "estimate": float(final[k].mean()),
            "low": float(np.percentile(boot, 2.5)),
            "high": float(np.percentile(boot, 97.5)),
        }
    return out


def main(config: Config) -> dict:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(config.seed)
    k_train, k_test, k_attr, k_rules, k_rtest = jax.random.split(key, 5)
    start = time.perf_counter()
    suite, (rule_train, rule_test) = suites(config)
    params = meta.default_meta_params(weights=config.weights)

    def progress(gen, record):
        if config.progress:
            f = record["fitness"]
            print(
                f"meta-generation {gen:3d}: best {f.max():.4f} mean {f.mean():.4f}",
                flush=True,
            )

    result = meta.meta_train(
        suite.train,
        k_train,
        num_genomes=config.num_genomes,
        num_meta_generations=config.num_meta_generations,
        max_population_size=config.population,
        min_population_size=config.min_population,
        num_generations=config.generations,
        num_seeds=config.seeds,
        num_elites=config.elites,
        ranking=config.ranking,
        params=params,
        callback=progress,
        genome_axis=config.genome_axis,
    )
    result.export_learned_strategies(out / "learned_strategies.json")
    learned = result.universal_best()
    default = meta.default_genome(config.population)
    _plot_meta_fitness(result.history, out / "meta_fitness.png")

    comparison = meta.compare_strategies(
        suite.test,
        {"learned": learned, "default": default},
        baseline="default",
        key=k_test,
        num_seeds=config.test_seeds,
        max_population_size=config.population,
        num_generations=config.generations,
        genome_axis=config.genome_axis,
    )
    summary_cmp = meta.summarize_comparison(comparison)["learned"]
    _plot_held_out(comparison, out / "held_out.png")

    evaluate = meta.make_meta_fitness(
        suite.train,
        max_population_size=config.population,
        num_generations=config.generations,
        num_seeds=config.seeds,
        params=params,
        genome_axis=config.genome_axis,
    )
    attribution = meta.attribute(
        evaluate,
        k_attr,
        learned,
        default,
        num_replicates=config.attribution_replicates,
    )
    meta.plot_attribution(attribution, out / "attribution.png")

    rules = None
    if config.rule_generations > 0:
        rule_result = meta.meta_train_learning_rules(
            rule_train,
            k_rules,
            num_rules=config.num_genomes,
            num_meta_generations=config.rule_generations,
            num_steps=config.rule_steps,
            num_seeds=config.seeds,
            params=params,
        )
        rule_result.export_learned_strategies(out / "learned_rules.json")
        best_rule = rule_result.universal_best()
        rules = {
            "learned": meta.genome_to_dict(best_rule),
            "held_out": _rule_comparison(
                rule_test,
                {"learned": best_rule, "default": meta.default_learning_rule()},
                config,
                k_rtest,
            ),
            "meta_fitness_first": float(rule_result.history["fitness"][0].max()),
            "meta_fitness_last": float(rule_result.history["fitness"][-1].max()),
        }

    summary = {
        "config": asdict(config),
        "seconds": time.perf_counter() - start,
        "meta_train": {
            "compile_seconds": result.compile_seconds,
            "run_seconds": result.run_seconds,
            "meta_fitness_first": float(result.history["fitness"][0].max()),
            "meta_fitness_last": float(result.history["fitness"][-1].max()),
            "default_meta_fitness_first": float(result.history["fitness"][0][0]),
        },
        "learned": meta.genome_to_dict(learned),
        "held_out": {k: v for k, v in summary_cmp.items() if k not in ("per_task",)},
        "held_out_per_task": summary_cmp["per_task"],
        "attribution": attribution.to_dict(),
        "learning_rules": rules,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "report.md").write_text(report(summary, attribution, comparison))
    return summary


def report(summary, attribution, comparison) -> str:
    c, h = summary["config"], summary["held_out"]
    mt = summary["meta_train"]
    lines = [
        "# Meta-evolution report",
        "",
        f"{c['num_genomes']} genomes x {len(comparison['task_names'])} held-out "
        f"tasks; inner GA: population up to {c['population']}, "
        f"{c['generations']} generations; {c['num_meta_generations']} "
        f"meta-generations on {c['seeds']} seeds ({c['ranking']} meta-fitness, "
        f"weights {list(c['weights'])}). Seed {c['seed']}.",
        "",
        "## Meta-training",
        "",
        f"Compile {mt['compile_seconds']:.1f} s, {c['num_meta_generations']} "
        f"meta-generations {mt['run_seconds']:.1f} s. Best meta-fitness "
        f"{mt['meta_fitness_first']:.4f} -> {mt['meta_fitness_last']:.4f} (the "
        f"default genome scored {mt['default_meta_fitness_first']:.4f} in "
        "meta-generation 0).",
        "",
        "![meta-fitness](meta_fitness.png)",
        "",
        "## The learned strategy (universal best)",
        "",
        "| gene | learned | default |",
        "|---|---|---|",
    ]
    default = meta.genome_to_dict(meta.default_genome(c["population"]))
    for name, value in summary["learned"].items():
        lines.append(f"| {name} | {value} | {default[name]} |")
    lines += [
        "",
        f"## Held-out tasks: learned vs default ({c['test_seeds']} seeds, 95% CI)",
        "",
        "| measure | estimate [95% CI] |",
        "|---|---|",
        f"| final fitness at equal budget, relative improvement | "
        f"{_ci(h['final_improvement'])} |",
        f"| fewer evaluations to the threshold | {_ci(h['fewer_evaluations'])} |",
        f"| convergence speedup (generations to the threshold, x) | "
        f"{_ci(h['speedup'])} |",
        f"| mean normalized final score, learned | {_ci(h['final_strategy'])} |",
        f"| mean normalized final score, default | {_ci(h['final_baseline'])} |",
        f"| runs reaching the threshold, learned / default | "
        f"{h['reached_strategy']['estimate']:.2f} / "
        f"{h['reached_baseline']['estimate']:.2f} |",
        "",
        "The threshold of a task is the default's mean final normalized score; runs "
        "that never reach it count the whole budget.",
        "",
        "| task | final score difference | evaluations ratio | speedup |",
        "|---|---:|---:|---:|",
    ]
    for task, row in summary["held_out_per_task"].items():
        lines.append(
            f"| {task} | {row['final_difference']:+.3f} | "
            f"{row['evaluations_ratio']:.2f} | {row['speedup']:.2f} |"
        )
    lines += [
        "",
        "![held-out curves](held_out.png)",
        "",
        "## Attribution (ablation to the default, meta-train tasks)",
        "",
        attribution.table(),
        "![attribution](attribution.png)",
        "",
    ]
    rules = summary["learning_rules"]
    if rules is not None:
        lines += [
            "## Learning rules",
            "",
            f"Best meta-fitness {rules['meta_fitness_first']:.4f} -> "
            f"{rules['meta_fitness_last']:.4f}. Learned rule: "
            + ", ".join(f"{k}={v}" for k, v in rules["learned"].items())
            + ".",
            "",
            "| rule | mean normalized final loss score on held-out targets [95% CI] |",
            "|---|---|",
        ]
        for name, x in rules["held_out"].items():
            lines.append(
                f"| {name} | {x['estimate']:.3f} [{x['low']:.3f}, {x['high']:.3f}] |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    summary = main(parse(sys.argv[1:]))
    print(json.dumps(summary["held_out"], indent=1))
