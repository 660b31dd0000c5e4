"""Learned vs hand-designed strategies on held-out tasks, with confidence intervals.

:func:`compare_strategies` runs every strategy on every task for many seeds in one
compiled program (common random numbers: strategy ``k`` and the baseline see the
same seeds) and reports, for each strategy against the baseline:

* ``final_improvement`` — relative improvement of the mean normalized score at an
  **equal budget** (``min_k n_k * G`` evaluations: a smaller population is scored
  at the generation where it has used that many);
* ``fewer_evaluations`` — ``1 - `` the geometric mean over tasks of the ratio of
  mean evaluations needed to reach the threshold (the baseline's mean final
  normalized score on the task); runs that never reach it count the whole budget
  (censored, which favours the slower strategy), and the reached fractions are
  reported;
* ``speedup`` — the geometric mean over tasks of the ratio of mean generations
  (sequential steps) to the same threshold, baseline over strategy.

95% confidence intervals come from a paired bootstrap over seeds (2000 resamples,
percentile).
"""

from __future__ import annotations

import jax
import numpy as np

from convergence_jax.meta.evolve import _families, make_curves, task_names
from convergence_jax.meta.genome import stack_genomes

__all__ = ["compare_strategies", "summarize_comparison"]


def compare_strategies(
    tasks,
    strategies: dict,
    *,
    baseline: str,
    key=None,
    num_seeds: int = 32,
    max_population_size: int = 64,
    num_generations: int = 100,
    genome_axis: str = "auto",
) -> dict:
    """Run ``strategies`` (name -> :class:`~convergence_jax.meta.Genome`) on
    ``tasks``; return the raw results (NumPy) for :func:`summarize_comparison`.
    ``genome_axis``: see :func:`convergence_jax.meta.make_curves`.

    Returns a dict with ``names``, ``task_names``, ``curves [K, T, S, G]``
    (normalized best-so-far), ``population_size [K]``, ``baseline``.
    """
    if baseline not in strategies:
        raise ValueError(
            f"baseline: {baseline!r} is not one of the strategies {list(strategies)}"
        )
    families = _families(tasks)
    names = list(strategies)
    genomes = stack_genomes([strategies[n] for n in names])
    curves_fn = make_curves(
        families,
        max_population_size=max_population_size,
        num_generations=num_generations,
        genome_axis=genome_axis,
    )
    key = jax.random.key(2024) if key is None else key
    curves, _ = jax.jit(curves_fn, static_argnums=2)(key, genomes, num_seeds)
    n = np.clip(np.asarray(genomes.population_size), 2, max_population_size)
    return {
        "names": names,
        "task_names": list(task_names(families)),
        "curves": np.asarray(curves, np.float64),
        "population_size": n.astype(np.int64),
        "baseline": baseline,
    }


def _first_reach(curves, thresholds):
    """Generations (1-based) to reach ``thresholds [T]``; ``G`` if never; and
    whether it was reached. ``curves [T, S, G]``."""
    reached = curves >= thresholds[:, None, None]
    any_reached = reached.any(-1)
    first = np.where(any_reached, reached.argmax(-1) + 1, curves.shape[-1])
    return first, any_reached


def _stats(curves_k, curves_b, n_k, n_b, seeds):
    """Summary numbers for one strategy vs the baseline on the seed subset."""
    ck, cb = curves_k[:, seeds], curves_b[:, seeds]
    g = ck.shape[-1]
    budget = min(n_k, n_b) * g
    at_k = max(budget // n_k, 1) - 1
    at_b = max(budget // n_b, 1) - 1
    final_k, final_b = ck[..., at_k], cb[..., at_b]
    thresholds = cb[..., -1].mean(-1)
    gens_k, hit_k = _first_reach(ck, thresholds)
    gens_b, hit_b = _first_reach(cb, thresholds)
    evals_k, evals_b = gens_k * n_k, gens_b * n_b
    mean_b = final_b.mean()
    return {
        "final_improvement": (final_k.mean() - mean_b) / max(abs(mean_b), 1e-12),
        "fewer_evaluations": 1.0
        - np.exp(np.mean(np.log(evals_k.mean(-1) / evals_b.mean(-1)))),
        "speedup": np.exp(np.mean(np.log(gens_b.mean(-1) / gens_k.mean(-1)))),
        "final_strategy": final_k.mean(),
        "final_baseline": mean_b,
        "reached_strategy": hit_k.mean(),
        "reached_baseline": hit_b.mean(),
        "per_task_final": final_k.mean(-1) - final_b.mean(-1),
        "per_task_evals": evals_k.mean(-1) / evals_b.mean(-1),
        "per_task_gens": gens_b.mean(-1) / gens_k.mean(-1),
    }


def summarize_comparison(results: dict, *, num_bootstrap: int = 2000, seed: int = 0):
    """Point estimates and 95% paired-bootstrap intervals for every strategy.

    Returns ``{strategy: {metric: {"estimate", "low", "high"}, "per_task": ...}}``
    for every strategy other than the baseline.
    """
    names, curves = results["names"], results["curves"]
    b = names.index(results["baseline"])
    n = results["population_size"]
    num_seeds = curves.shape[2]
    rng = np.random.default_rng(seed)
    out = {}
    for k, name in enumerate(names):
        if k == b:
            continue
        all_seeds = np.arange(num_seeds)
        point = _stats(curves[k], curves[b], int(n[k]), int(n[b]), all_seeds)
        boot = [
            _stats(
                curves[k],
                curves[b],
                int(n[k]),
                int(n[b]),
                rng.integers(0, num_seeds, num_seeds),
            )
            for _ in range(num_bootstrap)
        ]
        summary = {}
        for metric in (
            "final_improvement",
            "fewer_evaluations",
            "speedup",
            "final_strategy",
            "final_baseline",
            "reached_strategy",
            "reached_baseline",
        ):
            values = np.array([s[metric] for s in boot])
            summary[metric] = {
                "estimate": float(point[metric]),
                "low": float(np.percentile(values, 2.5)),
                "high": float(np.percentile(values, 97.5)),
            }
        summary["per_task"] = {
            task: {
                "final_difference": float(point["per_task_final"][t]),
                "evaluations_ratio": float(point["per_task_evals"][t]),
                "speedup": float(point["per_task_gens"][t]),
            }
            for t, task in enumerate(results["task_names"])
        }
        summary["population_size"] = int(n[k])
        summary["baseline_population_size"] = int(n[b])
        out[name] = summary
    return out
