"""Meta-metrics of inner runs and the meta-fitness that combines them.

Per run (genome x task x seed), from the normalized best-so-far curve ``c[g]``
(0 = random reference, 1 = best known; see :func:`~convergence_jax.meta.normalize`)
after each of ``G`` generations of a population of ``n`` (inside ``Pmax``):

=====================  ===================================================  =======
metric                 definition (higher is better, in [-1, 1] or [0, 1])   weight
=====================  ===================================================  =======
``convergence_speed``  area under the curve, ``mean_g c[g]``                 0.3
``final_fitness``      ``c[G - 1]``                                          0.4
``sample_efficiency``  ``1 - evals to reach c >= threshold / (Pmax G)``, 0   0.2
                       if never reached
``diversity``          ``mean_g spread[g] / spread[0]``, clipped to [0, 1]   0.05
``robustness``         ``1 - std over seeds of final_fitness`` (per task)    0.03
``compute_cost``       ``1 - n / Pmax`` (evaluations saved)                  0.02
=====================  ===================================================  =======

Each metric is averaged over seeds, giving ``[M, T]`` per metric. The weighted-sum
meta-fitness is ``sum_k w_k metric_k`` per task, averaged over tasks; the Pareto
alternative ranks genomes by non-dominated front over the task-averaged metrics
(Deb et al., 2002) and breaks ties by the weighted sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "DEFAULT_WEIGHTS",
    "METRIC_NAMES",
    "meta_fitness",
    "pareto_fronts",
    "run_metrics",
]

METRIC_NAMES = (
    "convergence_speed",
    "final_fitness",
    "sample_efficiency",
    "diversity",
    "robustness",
    "compute_cost",
)
DEFAULT_WEIGHTS = (0.3, 0.4, 0.2, 0.05, 0.03, 0.02)


def run_metrics(curves, spreads, population_size, max_population_size, threshold):
    """Meta-metrics over the seed axis.

    Args:
      curves: normalized best-so-far ``[..., S, G]``.
      spreads: population diversity ``[..., S, G]``.
      population_size: ``n`` broadcastable to ``[...]``.
      max_population_size: ``Pmax`` (static).
      threshold: normalized level for ``sample_efficiency``.

    Returns:
      dict ``name -> [...]`` for every name in :data:`METRIC_NAMES`.
    """
    num_generations = curves.shape[-1]
    n = jnp.asarray(population_size, jnp.float32)
    final = curves[..., -1]
    reached = curves >= threshold
    first = jnp.argmax(reached, axis=-1)
    evals = (first + 1).astype(jnp.float32) * n[..., None]
    budget = float(max_population_size * num_generations)
    efficiency = jnp.where(jnp.any(reached, axis=-1), 1.0 - evals / budget, 0.0)
    start = jnp.maximum(spreads[..., :1], 1e-12)
    diversity = jnp.clip(jnp.mean(spreads / start, axis=-1), 0.0, 1.0)
    return {
        "convergence_speed": jnp.mean(jnp.mean(curves, axis=-1), axis=-1),
        "final_fitness": jnp.mean(final, axis=-1),
        "sample_efficiency": jnp.mean(efficiency, axis=-1),
        "diversity": jnp.mean(diversity, axis=-1),
        "robustness": 1.0 - jnp.clip(jnp.std(final, axis=-1), 0.0, 1.0),
        "compute_cost": jnp.broadcast_to(
            1.0 - n / max_population_size, final.shape[:-1]
        ),
    }


def weighted(metrics: dict, weights) -> jax.Array:
    """``sum_k w_k metric_k`` (any common shape)."""
    weights = jnp.asarray(weights, jnp.float32)
    return sum(weights[i] * metrics[name] for i, name in enumerate(METRIC_NAMES))


def pareto_fronts(points: jax.Array) -> jax.Array:
    """Non-dominated front index per row of ``points [M, K]`` (0 = best; maximize)."""
    num = points.shape[0]
    geq = jnp.all(points[None, :, :] >= points[:, None, :], axis=-1)
    gt = jnp.any(points[None, :, :] > points[:, None, :], axis=-1)
    dominated_by = geq & gt  # [i, j]: j dominates i

    def body(front, carry):
        fronts, remaining = carry
        beaten = jnp.any(dominated_by & remaining[None, :], axis=1)
        current = remaining & ~beaten
        return jnp.where(current, front, fronts), remaining & ~current

    fronts, _ = jax.lax.fori_loop(
        0, num, body, (jnp.full((num,), num, jnp.int32), jnp.ones((num,), bool))
    )
    return fronts


def meta_fitness(metrics: dict, weights, ranking: str = "weighted"):
    """``(fitness [M], per_task [M, T])`` from metrics ``name -> [M, T]``.

    ``ranking="weighted"``: the task-averaged weighted sum. ``"pareto"``: minus the
    Pareto front index over task-averaged metrics plus the weighted sum scaled into
    ``[0, 0.5)`` to order genomes within a front. ``per_task`` is always the
    weighted sum per task.
    """
    if ranking not in ("weighted", "pareto"):
        raise ValueError(f"ranking: expected 'weighted' or 'pareto', got {ranking!r}")
    per_task = weighted(metrics, weights)
    fitness = jnp.mean(per_task, axis=-1)
    if ranking == "pareto":
        points = jnp.stack([jnp.mean(metrics[k], -1) for k in METRIC_NAMES], -1)
        fronts = pareto_fronts(points).astype(jnp.float32)
        span = jnp.maximum(jnp.max(fitness) - jnp.min(fitness), 1e-12)
        fitness = -fronts + 0.499 * (fitness - jnp.min(fitness)) / span
    return fitness, per_task
