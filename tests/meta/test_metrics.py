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
    # Each run rises linearly to 1 and stays there; it first reaches 1 (the
    # baseline's final score, the threshold) at its own generation: 8-12 for the
    # strategy, 16-24 for the baseline, per task and seed. Both populations are 10.
    rng = np.random.default_rng(0)
    reach = np.stack([rng.integers(8, 13, (3, 16)), rng.integers(16, 25, (3, 16))])
    g = np.arange(1, 31)
    curves = np.minimum(g / reach[..., None], 1.0)  # [2 strategies, 3, 16, 30]
    results = {"names": ["fast", "base"], "task_names": ["a", "b", "c"],
               "curves": curves, "population_size": np.array([10, 10]),
               "baseline": "base"}  # fmt: skip
    s = meta.summarize_comparison(results, num_bootstrap=200)["fast"]
    # Known from the construction: the geometric mean over tasks of the ratio of
    # the mean generations to reach the threshold.
    ratio = reach[1].mean(-1) / reach[0].mean(-1)  # [tasks]
    speedup = np.exp(np.log(ratio).mean())
    assert 1.6 < speedup < 2.4  # (a real speedup, about 2x)
    assert s["speedup"]["estimate"] == pytest.approx(speedup, rel=1e-12)
    assert s["speedup"]["low"] < speedup < s["speedup"]["high"]
    assert s["fewer_evaluations"]["estimate"] == pytest.approx(1 - 1 / speedup)
    assert s["final_improvement"]["estimate"] == 0.0  # both end at 1
    assert s["reached_strategy"]["estimate"] == s["reached_baseline"]["estimate"] == 1
    # At equal budget (10 x 30 evaluations), a baseline population of 20 is scored
    # at generation 15, where its runs are at min(15 / reach, 1).
    results["population_size"] = np.array([10, 20])
    s = meta.summarize_comparison(results, num_bootstrap=10)["fast"]
    at_15 = np.minimum(15 / reach[1], 1.0).mean()
    assert s["final_improvement"]["estimate"] == pytest.approx(1 / at_15 - 1)
    assert s["fewer_evaluations"]["estimate"] == pytest.approx(1 - 0.5 / speedup)
