"""The backoff scheduler: every transition, the trend formula, synthetic streams."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.loop import (
    ACTIVE,
    COOLING,
    DORMANT,
    WATCHDOG,
    BackoffParams,
    backoff_scheduler,
    trend,
)

SCHED = backoff_scheduler(window=4)
STEP = jax.jit(SCHED.step)


def feed(scores, params, state=None):
    state = SCHED.init(params) if state is None else state
    events = []
    for s in scores:
        state, event = STEP(state, s, params)
        events.append(jax.device_get(event))
    return state, events


def test_trend_matches_numpy_least_squares():
    scores = jnp.array([0.0, 1.0, 3.0, 2.0, 5.0, 4.0])
    level, slope, sigma, se = trend(scores, jnp.int32(6))
    x = np.arange(6.0)
    coef = np.polyfit(x, np.asarray(scores), 1)
    resid = np.asarray(scores) - np.polyval(coef, x)
    s = np.sqrt((resid**2).sum() / 4)
    np.testing.assert_allclose(slope, coef[0], rtol=1e-5)
    np.testing.assert_allclose(level, 2.5, rtol=1e-6)
    np.testing.assert_allclose(sigma, s, rtol=1e-5)
    np.testing.assert_allclose(se, s / np.sqrt(6), rtol=1e-5)
    # Only the newest `count` entries count; the rest of the buffer is ignored.
    level3, slope3, _, _ = trend(jnp.array([99.0, 99.0, 99.0, 1.0, 2.0, 3.0]), 3)
    np.testing.assert_allclose([level3, slope3], [2.0, 1.0], rtol=1e-6)


def test_improvement_formula_by_hand():
    # Window [1, 2, 3, 4]: the line fits exactly, so sigma = noise_floor = 0.5;
    # mean 2.5; lower = 2.5 - 2 * 0.5 / sqrt(4) = 2.0, which beats best 1.5.
    params = BackoffParams(noise_z=2.0, noise_floor=0.5)
    state = SCHED.init(params).replace(
        scores=jnp.array([0.0, 1.0, 2.0, 3.0]), count=jnp.int32(3), best=1.5
    )
    new, event = STEP(state, 4.0, params)
    np.testing.assert_allclose([event.level, event.lower, event.noise], [2.5, 2.0, 0.5])
    np.testing.assert_allclose(event.slope, 1.0)
    assert bool(event.improved) and float(new.best) == 2.5
    # A margin of 0.6 asks for lower > 2.1: not enough.
    _, event = STEP(state, 4.0, params.replace(improvement_margin=0.6))
    assert not bool(event.improved)


def test_baseline_then_no_claim_until_three_scores():
    params = BackoffParams()
    state, events = feed([10.0, 100.0], params)
    assert bool(events[0].improved)  # the first score sets the baseline
    assert not bool(events[1].improved)  # two points say nothing about noise
    assert float(state.best) == -np.inf  # no level from the baseline alone


def test_interval_backs_off_exponentially_and_caps():
    params = BackoffParams(backoff_factor=3.0, max_interval=20.0, base_interval=2.0)
    state, events = feed([1.0] * 6, params)
    # baseline: 2; no claim: 6; first level (an improvement): 2; then 6, 18, 20 (cap)
    assert [bool(e.improved) for e in events] == [
        True,
        False,
        True,
        False,
        False,
        False,
    ]
    assert float(state.interval) == 20.0
    state, _ = feed([1.0, 1.0], params)
    assert float(state.interval) == 6.0


def test_active_cooling_dormant_watchdog_and_back():
    params = BackoffParams(plateau_threshold=2, dormant_threshold=4, noise_floor=0.1)
    # baseline, no claim, first level, then two flat evaluations
    state, events = feed([5.0] * 5, params)
    assert int(state.mode) == COOLING and bool(events[-1].plateau)
    state, events = feed([5.0, 5.0], params, state)
    assert int(state.mode) == DORMANT and bool(events[-1].dormant)
    state, events = feed([5.0], params, state)
    assert int(state.mode) == WATCHDOG and not bool(events[-1].dormant)
    # A clear rise beyond the noise: improvement -> ACTIVE, interval reset.
    state, events = feed([8.0, 11.0, 14.0], params, state)
    assert any(bool(e.improved) for e in events)
    assert int(state.mode) == ACTIVE and float(state.interval) <= 2.0


def test_degradation_only_when_converged():
    params = BackoffParams(
        plateau_threshold=1,
        dormant_threshold=2,
        noise_floor=0.1,
        degradation_threshold=0.1,
    )
    # In ACTIVE/COOLING a drop is just a non-improvement.
    state, events = feed([10.0, 10.0, 10.0, 2.0], params)
    assert int(state.mode) == COOLING
    assert not any(bool(e.degraded) for e in events)
    state, events = feed([10.0] * 5, params)
    assert int(state.mode) in (DORMANT, WATCHDOG)
    for score in [3.0, 2.0, 1.0, 1.0, 1.0]:
        state, (event,) = feed([score], params, state)
        if bool(event.degraded):
            break
    assert bool(event.degraded)
    assert int(state.mode) == ACTIVE and float(state.interval) == 1.0


def test_nan_score_never_improves():
    params = BackoffParams()
    state, events = feed([1.0, float("nan"), float("nan")], params)
    assert [bool(e.improved) for e in events] == [True, False, False]
    assert int(state.non_improvements) == 2


def test_runs_under_vmap_and_scan_over_params():
    params = jax.tree.map(lambda x: jnp.full(2, x, jnp.float32), BackoffParams())
    params = params.replace(noise_z=jnp.array([1.0, 3.0]))
    scores = jnp.tile(jnp.array([0.0, 1.0, 2.5, 3.0, 4.5])[None], (2, 1))

    def stream(p, s):
        return jax.lax.scan(lambda st, x: SCHED.step(st, x, p), SCHED.init(p), s)

    state, events = jax.jit(jax.vmap(stream))(params, scores)
    assert events.improved.shape == (2, 5)
    # A narrower band claims at least as many improvements.
    assert int(events.improved[0].sum()) >= int(events.improved[1].sum())


def test_bad_window():
    with pytest.raises(ValueError, match="window must be an int >= 2"):
        backoff_scheduler(1)


# ------------------------------------------------------------------ streams


@pytest.fixture(scope="module")
def streams():
    sched = backoff_scheduler(window=8)
    params = BackoffParams(plateau_threshold=3, dormant_threshold=6)

    def run(scores):
        def body(state, s):
            state, event = sched.step(state, s, params)
            return state, (state.mode, event.improved, event.dormant, event.degraded)

        return jax.lax.scan(body, sched.init(params), scores)[1]

    runs = jax.jit(jax.vmap(run))
    t = jnp.arange(60.0)
    noise = jax.random.normal(jax.random.key(7), (500, 60))
    return {
        "improving": runs(0.5 * t + noise),
        "plateau": runs(jnp.minimum(t, 20.0) * 0.5 + noise),
        "noisy_flat": runs(3.0 * noise),
        "degrading": runs(
            jnp.where(t < 30, jnp.minimum(t, 10.0), 10.0 - 2.0 * (t - 30)) + noise
        ),
    }


def test_improving_stream_stays_active(streams):
    mode, improved, dormant, _ = (np.asarray(x) for x in streams["improving"])
    assert dormant.any(1).mean() < 0.05
    assert improved.sum(1).mean() > 20


def test_plateau_stream_goes_dormant_after_the_rise(streams):
    mode, improved, dormant, _ = (np.asarray(x) for x in streams["plateau"])
    first = np.where(dormant.any(1), dormant.argmax(1), 99)
    assert (first < 60).mean() > 0.98
    assert np.median(first) > 20  # not before the rise has ended


def test_noise_is_not_mistaken_for_improvement(streams):
    mode, improved, dormant, _ = (np.asarray(x) for x in streams["noisy_flat"])
    # A few early claims while the baseline is a single draw; after that, rare.
    assert improved[:, 10:].sum(1).mean() < 1.0
    assert dormant.any(1).mean() > 0.98


def test_degrading_stream_is_caught_by_the_watchdog(streams):
    mode, improved, dormant, degraded = (np.asarray(x) for x in streams["degrading"])
    assert (dormant[:, :30].any(1)).mean() > 0.9
    caught = degraded[:, 30:].any(1)
    assert caught.mean() > 0.98
    # ...and not before the drop starts.
    assert degraded[:, :30].sum(1).mean() < 0.05


def test_autocorrelated_noise_is_not_mistaken_for_improvement():
    """AR(1) noise (rho = 0.8, unit variance): consecutive scores look like a
    trend; the window-mean bound still claims little and the stream converges.
    benchmarks/convergence_tests.py compares this with tensor-optix's tests."""
    sched = backoff_scheduler(window=8)
    params = BackoffParams(plateau_threshold=3, dormant_threshold=6)
    rho, steps = 0.8, 60
    e = jax.random.normal(jax.random.key(3), (400, steps))

    def ar1(carry, e_t):
        x = rho * carry + jnp.sqrt(1 - rho**2) * e_t
        return x, x

    noise = jax.lax.scan(ar1, e[:, 0], e[:, 1:].T)[1].T

    def run(scores):
        def body(state, s):
            state, event = sched.step(state, s, params)
            return state, (event.improved, event.dormant)

        return jax.lax.scan(body, sched.init(params), scores)[1]

    improved, dormant = (np.asarray(x) for x in jax.jit(jax.vmap(run))(noise))
    assert improved[:, 10:].mean() < 0.08
    assert dormant.any(1).all()
