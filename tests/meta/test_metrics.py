"""Meta-metrics, meta-fitness, Pareto fronts and the comparison summary."""

import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import meta


def test_run_metrics_hand_computed():
    # One genome, one task, two seeds, four generations.
    curves = jnp.array([[[[0.0, 0.25, 0.5, 1.0], [0.0, 0.0, 0.25, 0.5]]]])
    spreads = jnp.array([[[[2.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]]])
    m = meta.run_metrics(curves, spreads, jnp.array([[4]]), 8, 0.5)
    np.testing.assert_allclose(m["final_fitness"], [[0.75]])
    np.testing.assert_allclose(m["convergence_speed"], [[(0.4375 + 0.1875) / 2]])
    # Seed 0 reaches 0.5 at generation 3 (12 of 32 evaluations), seed 1 at 4 (16).
    np.testing.assert_allclose(m["sample_efficiency"], [[(20 / 32 + 16 / 32) / 2]])
    np.testing.assert_allclose(m["diversity"], [[(0.5 + 1.0) / 2]])
    np.testing.assert_allclose(m["robustness"], [[1.0 - 0.25]])
    np.testing.assert_allclose(m["compute_cost"], [[0.5]])


def test_weighted_meta_fitness_uses_the_default_weights():
    metrics = {name: jnp.full((1, 2), float(i)) for i, name in
               enumerate(meta.METRIC_NAMES)}  # fmt: skip
    fitness, per_task = meta.meta_fitness(metrics, meta.DEFAULT_WEIGHTS)
    expected = sum(w * i for i, w in enumerate(meta.DEFAULT_WEIGHTS))
    np.testing.assert_allclose(fitness, [expected], rtol=1e-6)
    assert per_task.shape == (1, 2)
    with pytest.raises(ValueError, match="ranking"):
        meta.meta_fitness(metrics, meta.DEFAULT_WEIGHTS, "best")


def test_pareto_fronts_hand_fixture():
    points = jnp.array([[1.0, 1.0], [2.0, 0.0], [0.0, 2.0], [0.5, 0.5], [0.0, 0.0]])
    np.testing.assert_array_equal(meta.pareto_fronts(points), [0, 0, 0, 1, 2])
    metrics = {name: jnp.zeros((5, 1)) for name in meta.METRIC_NAMES}
    metrics["final_fitness"] = points[:, :1]
    metrics["convergence_speed"] = points[:, 1:]
    fitness, _ = meta.meta_fitness(metrics, meta.DEFAULT_WEIGHTS, "pareto")
    fitness = np.asarray(fitness)
    assert fitness[:3].min() > fitness[3] > fitness[4]


def test_summarize_comparison_recovers_a_known_speedup():
    # Baseline curves rise linearly to 1 over 20 generations; the strategy twice
    # as fast; both with population 10.
    g = np.arange(1, 21)
    base = np.minimum(g / 20, 1.0)
    fast = np.minimum(g / 10, 1.0)
    noise = np.random.default_rng(0).normal(0, 0.01, (2, 3, 16, 20))
    curves = np.stack([np.broadcast_to(fast, (3, 16, 20)),
                       np.broadcast_to(base, (3, 16, 20))]) + noise  # fmt: skip
    results = {"names": ["fast", "base"], "task_names": ["a", "b", "c"],
               "curves": curves, "population_size": np.array([10, 10]),
               "baseline": "base"}  # fmt: skip
    s = meta.summarize_comparison(results, num_bootstrap=200)["fast"]
    assert s["speedup"]["low"] < 2.0 < s["speedup"]["high"] + 0.15
    assert abs(s["fewer_evaluations"]["estimate"] - 0.5) < 0.06
    assert s["final_improvement"]["estimate"] == pytest.approx(0.0, abs=0.02)
    # At equal budget, a population of 20 is scored at generation 10 (0.5).
    results["population_size"] = np.array([10, 20])
    s = meta.summarize_comparison(results, num_bootstrap=10)["fast"]
    assert s["final_improvement"]["estimate"] == pytest.approx(1.0, abs=0.05)
