import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.optimize import MetricSpec, RewardSpec, evaluate_batch

SPECS = {
    "quality": MetricSpec("quality", "maximize", 0.6, 0.0, 1.0),
    "latency_ms": MetricSpec("latency_ms", "minimize", 0.4, 0.0, 1000.0),
}


def test_reward_matches_hand_computation():
    reward = RewardSpec.build(SPECS)
    # 0.6 * 0.5 + 0.4 * (1 - 250/1000) = 0.3 + 0.3
    assert reward.combine_one({"quality": 0.5, "latency_ms": 250.0}) == pytest.approx(
        0.6
    )
    # clipped: latency above max counts as 0, quality above 1 as 1
    assert reward.combine_one({"quality": 2.0, "latency_ms": 5e3}) == pytest.approx(0.6)
    assert reward.best_reward == pytest.approx(1.0)
    assert reward.failure_reward == 0.0


def test_combine_in_jax_matches_host_and_handles_nan():
    reward = RewardSpec.build(SPECS)
    q = np.array([0.1, 0.9, np.nan, 0.5], np.float32)
    lat = np.array([100.0, 900.0, 10.0, np.inf], np.float32)
    out = jax.jit(reward.combine)({"quality": q, "latency_ms": lat})
    expected = [
        reward.combine_one({"quality": float(a), "latency_ms": float(b)})
        for a, b in zip(q[:2], lat[:2], strict=True)
    ]
    np.testing.assert_allclose(out[:2], expected, rtol=1e-6)
    assert out[2] == 0.0 and out[3] == 0.0  # NaN and inf are failures
    with pytest.raises(ValueError, match="latency_ms"):
        reward.combine({"quality": q})


def test_unbounded_metric_needs_a_failure_reward():
    specs = {"loss": MetricSpec("loss", "minimize")}
    with pytest.raises(ValueError, match="failure_reward"):
        RewardSpec.build(specs)
    reward = RewardSpec.build(specs, failure_reward=-100.0)
    assert reward.combine_one({"loss": 3.0}) == -3.0
    assert float(reward.combine({"loss": jnp.array([jnp.nan])})[0]) == -100.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"goal": "up"}, "goal"),
        ({"weight": -1.0}, "weight"),
        ({"min": 0.0}, "both"),
        ({"min": 1.0, "max": 1.0}, "below"),
    ],
)
def test_bad_metric_specs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MetricSpec("m", **kwargs)


def _objective(config):
    x = config["x"]
    if x == 1:
        raise RuntimeError("boom")
    if x == 2:
        time.sleep(30)  # hangs past the timeout
    if x == 3:
        return {"quality": float("nan")}
    if x == 4:
        return "not a number"
    return {"quality": x / 10}


def test_evaluate_batch_records_errors_and_timeouts_and_goes_on():
    configs = [{"x": i} for i in range(8)]
    start = time.perf_counter()
    results = evaluate_batch(_objective, configs, max_workers=2, timeout_s=0.5)
    assert time.perf_counter() - start < 5  # the hanging call did not stall the batch
    assert [r.config for r in results] == configs
    assert "RuntimeError: boom" in results[1].error
    assert results[2].error.startswith("TimeoutError")
    assert "not finite" in results[3].error
    assert "expected a number" in results[4].error
    for i in (0, 5, 6, 7):
        assert results[i].ok and math.isclose(results[i].metrics["quality"], i / 10)


def test_evaluate_batch_bounds_concurrency():
    import threading

    active, peak, lock = [0], [0], threading.Lock()

    def slow(config):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return 1.0

    results = evaluate_batch(slow, [{}] * 12, max_workers=3, single_metric="m")
    assert all(r.metrics == {"m": 1.0} for r in results)
    assert peak[0] == 3


def test_evaluate_batch_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_workers"):
        evaluate_batch(_objective, [], max_workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        evaluate_batch(_objective, [], timeout_s=0)


def test_combine_one_equals_the_array_combine():
    reward = RewardSpec.build(SPECS | {"raw": MetricSpec("raw", "minimize")}, 0.0)
    for q, lat, raw in [(0.5, 250.0, 3.0), (-0.2, 1500.0, -1.0), (1.3, -5.0, 0.25)]:
        values = {"quality": q, "latency_ms": lat, "raw": raw}
        arrays = {k: jnp.asarray([v]) for k, v in values.items()}
        assert reward.combine_one(values) == pytest.approx(
            float(reward.combine(arrays)[0]), rel=1e-6
        )


def test_pool_reuses_its_threads_and_replaces_an_abandoned_one():
    from convergence_jax.optimize.evaluate import EvaluationPool

    def objective(config):
        if config["hang"]:
            time.sleep(2.0)
        return {"quality": 0.5}

    with EvaluationPool(1) as pool:
        for _ in range(3):
            results = evaluate_batch(
                objective, [{"hang": False}] * 6, pool=pool, single_metric="quality"
            )
            assert all(r.ok for r in results)
        assert pool._started == 1  # 18 evaluations, one thread
        start = time.perf_counter()
        results = evaluate_batch(
            objective,
            [{"hang": True}] + [{"hang": False}] * 4,
            pool=pool,
            timeout_s=0.3,
        )
        assert time.perf_counter() - start < 1.5
        assert results[0].error.startswith("TimeoutError")
        assert all(r.ok for r in results[1:])
        assert pool._started == 2  # the hung worker was replaced, not waited for
