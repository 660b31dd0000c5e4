"""Per-decision latency of Thompson sampling: ours vs MABWiser, side by side.

One bandit, 10 Bernoulli arms (means evenly spread over [0.1, 0.9]); each decision
is select -> reward (drawn in Python with NumPy) -> update, driven from a Python
loop, the way a service would call it:

* MABWiser 2.7 ``MAB(arms, LearningPolicy.ThompsonSampling())``:
  ``predict()`` then ``partial_fit([arm], [reward])``.
* ours, 2 calls: jitted ``select`` then jitted ``update`` (two dispatches and one
  device-to-host read of the arm per decision).
* ours, 1 call: one jitted function that applies the previous reward and selects
  the next arm (one dispatch per decision).

Then what batching buys (ours only; MABWiser has no batched non-contextual path):

* one bandit, 10,000 decisions in one jitted ``lax.scan`` (rewards simulated
  in-graph): total time / 10,000;
* 100,000 independent bandits, one select + update for all of them per call:
  time per call / 100,000.

Every decision is timed on its own; blocks of 200 decisions alternate between
the contenders so that load on a shared machine hits them alike. The table gives
median and 95th percentile per decision; compile time is reported separately.

    python benchmarks/bandits_latency.py            # full run, writes results/
    python benchmarks/bandits_latency.py --quick    # fewer decisions, no files
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _machine import machine_info

from convergence_jax import bandits

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
ARMS = 10
MEANS = np.linspace(0.1, 0.9, ARMS)


def machine() -> dict:
    from importlib.metadata import version

    return machine_info() | {
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "mabwiser": version("mabwiser"),
    }


class MabwiserLoop:
    name = "mabwiser"
    label = "MABWiser ThompsonSampling: predict + partial_fit"

    def __init__(self, seed: int):
        from mabwiser.mab import MAB, LearningPolicy

        self.rng = np.random.default_rng(seed)
        start = time.perf_counter()
        self.mab = MAB(
            arms=list(range(ARMS)),
            learning_policy=LearningPolicy.ThompsonSampling(),
            seed=seed,
        )
        # MABWiser needs a first fit before predict: one pull of each arm.
        self.mab.fit(
            decisions=list(range(ARMS)),
            rewards=[
                int(r < m) for r, m in zip(self.rng.random(ARMS), MEANS, strict=True)
            ],
        )
        self.setup_s = time.perf_counter() - start

    def decide(self) -> int:
        arm = self.mab.predict()
        reward = int(self.rng.random() < MEANS[arm])
        self.mab.partial_fit([arm], [reward])
        return arm


class OursTwoCalls:
    name = "ours_2_calls"
    label = "ours: jit(select) + jit(update), 2 dispatches"

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.ts = bandits.beta_bernoulli(ARMS)
        self.params = self.ts.default_params
        self.state = self.ts.init(self.params)
        self.key = jax.random.key(seed)
        self.t = 0
        ts = self.ts

        @jax.jit
        def select(key, t, state, params):
            return ts.select(jax.random.fold_in(key, t), state, params)

        @jax.jit
        def update(state, arm, reward, params):
            return ts.update(jax.random.key(0), state, arm, reward, params)

        self.select, self.update = select, update
        start = time.perf_counter()
        self.decide()
        self.setup_s = time.perf_counter() - start

    def decide(self) -> int:
        arm = int(self.select(self.key, self.t, self.state, self.params))
        reward = float(self.rng.random() < MEANS[arm])
        self.state = self.update(self.state, arm, reward, self.params)
        self.t += 1
        return arm


class OursOneCall:
    name = "ours_1_call"
    label = "ours: one jit(update previous + select next), 1 dispatch"

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        ts = bandits.beta_bernoulli(ARMS)
        self.params = ts.default_params
        self.state = ts.init(self.params)
        self.key = jax.random.key(seed)
        self.t = 0
        self.last = (0, 0.0, 0.0)  # arm, reward, weight (0 = nothing to apply yet)

        @jax.jit
        def step(key, t, state, arm, reward, weight, params):
            # weight 0 turns the first update into a no-op without a second program
            observed = ts.update(jax.random.key(0), state, arm, reward, params)
            state = jax.tree.map(
                lambda new, old: old + weight * (new - old), observed, state
            )
            return state, ts.select(jax.random.fold_in(key, t), state, params)

        self.step = step
        start = time.perf_counter()
        self.decide()
        self.setup_s = time.perf_counter() - start

    def decide(self) -> int:
        arm, reward, weight = self.last
        self.state, next_arm = self.step(
            self.key, self.t, self.state, arm, reward, weight, self.params
        )
        next_arm = int(next_arm)
        self.last = (next_arm, float(self.rng.random() < MEANS[next_arm]), 1.0)
        self.t += 1
        return next_arm


def per_decision_latency(loops, decisions: int, block: int = 200) -> dict:
    times = {loop.name: [] for loop in loops}
    for _ in range(decisions // block):
        for loop in loops:
            record = times[loop.name]
            for _ in range(block):
                start = time.perf_counter()
                loop.decide()
                record.append(time.perf_counter() - start)
    return times


def amortized(decisions: int, batch: int, repeats: int) -> list[dict]:
    ts = bandits.beta_bernoulli(ARMS)
    params = ts.default_params
    means = jnp.asarray(MEANS, jnp.float32)
    rows = []

    scan_run = jax.jit(
        lambda key: bandits.simulate_bernoulli(key, ts, params, means, decisions)[-1]
    )
    start = time.perf_counter()
    jax.block_until_ready(scan_run(jax.random.key(0)))
    compile_s = time.perf_counter() - start
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(scan_run(jax.random.key(i + 1)))
        times.append(time.perf_counter() - start)
    rows.append(
        {
            "name": "ours_scan",
            "label": f"ours: one bandit, {decisions:,} decisions in one lax.scan",
            "decisions_per_call": decisions,
            "call_median_s": statistics.median(times),
            "per_decision_us": statistics.median(times) / decisions * 1e6,
            "compile_plus_first_call_s": compile_s,
        }
    )

    @jax.jit
    def batched_step(key, state, params):
        k_select, k_reward = jax.random.split(key)
        arms = ts.select(k_select, state, params)
        rewards = (jax.random.uniform(k_reward, arms.shape) < means[arms]).astype(
            jnp.float32
        )
        return ts.update(key, state, arms, rewards, params)

    state = ts.init(params, (batch,))
    start = time.perf_counter()
    state = jax.block_until_ready(batched_step(jax.random.key(0), state, params))
    compile_s = time.perf_counter() - start
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        state = jax.block_until_ready(
            batched_step(jax.random.key(i + 1), state, params)
        )
        times.append(time.perf_counter() - start)
    rows.append(
        {
            "name": "ours_batched",
            "label": f"ours: {batch:,} bandits, one select + update per call",
            "decisions_per_call": batch,
            "call_median_s": statistics.median(times),
            "per_decision_us": statistics.median(times) / batch * 1e6,
            "compile_plus_first_call_s": compile_s,
        }
    )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer decisions, no files"
    )
    args = parser.parse_args()
    decisions = 400 if args.quick else 4000
    info = machine()

    loops = [MabwiserLoop(0), OursTwoCalls(0), OursOneCall(0)]
    # warm-up outside the timed blocks
    for loop in loops:
        for _ in range(50):
            loop.decide()
    times = per_decision_latency(loops, decisions)
    rows = []
    for loop in loops:
        t = np.asarray(times[loop.name])
        rows.append(
            {
                "name": loop.name,
                "label": loop.label,
                "decisions": len(t),
                "median_us": float(np.median(t) * 1e6),
                "p95_us": float(np.percentile(t, 95) * 1e6),
                "mean_us": float(t.mean() * 1e6),
                "setup_s": loop.setup_s,
            }
        )
    reference = rows[0]["median_us"]
    for row in rows:
        row["mabwiser_over_this"] = reference / row["median_us"]
    batch_rows = amortized(
        decisions=2_000 if args.quick else 10_000,
        batch=10_000 if args.quick else 100_000,
        repeats=3 if args.quick else 7,
    )
    for row in batch_rows:
        row["mabwiser_over_this"] = reference / row["per_decision_us"]
    info["load_average_end"] = os.getloadavg()[0]

    table = markdown(rows, batch_rows, info)
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        out = {
            "benchmark": "bandits_latency",
            "machine": info,
            "per_decision": rows,
            "amortized": batch_rows,
        }
        (RESULTS / "bandits_latency.json").write_text(json.dumps(out, indent=2) + "\n")
        (RESULTS / "bandits_latency.md").write_text(table + "\n")


def markdown(rows, batch_rows, info) -> str:
    lines = [
        "## Thompson sampling latency per decision: one bandit, 10 Bernoulli arms",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, device `{info['device']}`, "
        f"jax {info['jax']}, MABWiser {info['mabwiser']}; load average "
        f"{info['load_average_start']:.1f} -> {info['load_average_end']:.1f} "
        "(shared machine).",
        "",
        "Python decision loop (select -> reward -> update), each decision timed:",
        "",
        "| contender | decisions | median (us) | p95 (us) | setup incl. compile (s) "
        "| MABWiser median / this |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['decisions']:,} | {r['median_us']:.1f} | "
            f"{r['p95_us']:.1f} | {r['setup_s']:.2f} | {r['mabwiser_over_this']:.2f}x |"
        )
    lines += [
        "",
        "Amortized when decisions are batched (ours; rewards simulated in-graph):",
        "",
        "| contender | decisions per call | per call (s) | per decision (us) | "
        "first call incl. compile (s) | MABWiser median / this |",
        "|---|---|---|---|---|---|",
    ]
    for r in batch_rows:
        lines.append(
            f"| {r['label']} | {r['decisions_per_call']:,} | {r['call_median_s']:.4f} "
            f"| {r['per_decision_us']:.3f} | {r['compile_plus_first_call_s']:.2f} | "
            f"{r['mabwiser_over_this']:.0f}x |"
        )
    lines += [
        "",
        "A jitted call from Python pays a dispatch of a few tens of microseconds "
        "however small the work; that, not the sampling, is most of the per-decision "
        "figure for one bandit. Batched or scanned decisions amortize it.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
