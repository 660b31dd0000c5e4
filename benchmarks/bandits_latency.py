"""Thompson sampling decisions: ours vs MABWiser, one at a time and in batches.

One bandit, 10 Bernoulli arms (means evenly spread over [0.1, 0.9]); rewards are
drawn in Python with NumPy, the way a service would get them.

One decision per call (select -> reward -> update, driven from a Python loop):

* MABWiser 2.7 ``MAB(arms, LearningPolicy.ThompsonSampling())``:
  ``predict()`` then ``partial_fit([arm], [reward])``.
* ours, 2 calls: jitted ``select`` then jitted ``update`` (two dispatches and one
  device-to-host read of the arm per decision).
* ours, 1 call: one jitted function that applies the previous reward and selects
  the next arm (one dispatch per decision).

A batch of decisions per call (MABWiser's own batch API against ours, the same
work): each batch draws ``--batch`` decisions from the current posterior, then
its rewards are drawn in NumPy and learned in one update.

* MABWiser: ``predict(contexts)`` with ``--batch`` (ignored) context rows gives one
  Thompson draw per row; ``partial_fit(arms, rewards)`` learns them at once.
* ours: one jitted ``select`` on the state broadcast to ``[batch, 10]``, then one
  jitted ``update`` with the ``[batch]`` arms and rewards (duplicates add up).

What batching in the graph buys (ours only, rewards simulated in-graph; compared
with our own one-call loop, not with MABWiser, which has no in-graph path):

* one bandit, 10,000 decisions in one jitted ``lax.scan``;
* 100,000 independent bandits, one select + update for all of them per call.

Timed rounds alternate: each round runs every contender once (a block of 200
single decisions, 5 batches, one scan, one 100,000-bandit call), the order
rotated round to round, and records the 1-minute load. Figures are per
decision: min / median / max over the rounds, ratio of medians with its range
(one's min / the other's max .. max / min) and the paired per-round ratios; a
ratio whose range contains 1.0x is a tie. The per-decision median and 95th
percentile of the single-decision loops are also given (each decision timed).
Compile time is reported separately.

    python benchmarks/bandits_latency.py            # full run, writes results/
    python benchmarks/bandits_latency.py --quick    # fewer rounds, no files
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _machine import machine_info
from _timing import alternate, fmt_speedup, per_unit, speedup

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


def fitted_mabwiser(seed: int, rng: np.random.Generator):
    """MABWiser's Thompson sampler after the first fit it needs before ``predict``:
    one pull of each arm."""
    from mabwiser.mab import MAB, LearningPolicy

    mab = MAB(
        arms=list(range(ARMS)),
        learning_policy=LearningPolicy.ThompsonSampling(),
        seed=seed,
    )
    mab.fit(
        decisions=list(range(ARMS)),
        rewards=[int(r < m) for r, m in zip(rng.random(ARMS), MEANS, strict=True)],
    )
    return mab


class MabwiserLoop:
    name = "mabwiser"
    label = "MABWiser ThompsonSampling: predict + partial_fit"

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        start = time.perf_counter()
        self.mab = fitted_mabwiser(seed, self.rng)
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


class MabwiserBatch:
    name = "mabwiser_batch"

    def __init__(self, seed: int, batch: int):
        self.rng = np.random.default_rng(seed)
        self.contexts = np.zeros((batch, 1))
        start = time.perf_counter()
        self.mab = fitted_mabwiser(seed, self.rng)
        self.setup_s = time.perf_counter() - start

    def decide(self) -> np.ndarray:
        arms = np.asarray(self.mab.predict(self.contexts))
        rewards = (self.rng.random(arms.shape) < MEANS[arms]).astype(int)
        self.mab.partial_fit(arms, rewards)
        return arms


class OursBatch:
    name = "ours_batch"

    def __init__(self, seed: int, batch: int):
        self.rng = np.random.default_rng(seed)
        ts = bandits.beta_bernoulli(ARMS)
        self.params = ts.default_params
        self.state = ts.init(self.params)
        self.key = jax.random.key(seed)
        self.t = 0

        @jax.jit
        def select(key, t, state, params):
            wide = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, ARMS)), state)
            return ts.select(jax.random.fold_in(key, t), wide, params)

        @jax.jit
        def update(state, arms, rewards, params):
            return ts.update(jax.random.key(0), state, arms, rewards, params)

        self.select, self.update = select, update
        start = time.perf_counter()
        self.decide()
        self.setup_s = time.perf_counter() - start

    def decide(self) -> np.ndarray:
        arms = np.asarray(self.select(self.key, self.t, self.state, self.params))
        rewards = (self.rng.random(arms.shape) < MEANS[arms]).astype(np.float32)
        self.state = self.update(self.state, arms, rewards, self.params)
        self.t += 1
        return arms


def in_graph(decisions: int, batch: int):
    """The two in-graph programs, compiled: name -> (call(i), decisions, compile)."""
    ts = bandits.beta_bernoulli(ARMS)
    params = ts.default_params
    means = jnp.asarray(MEANS, jnp.float32)
    scan_run = jax.jit(
        lambda key: bandits.simulate_bernoulli(key, ts, params, means, decisions)[-1]
    )

    @jax.jit
    def batched_step(key, state, params):
        k_select, k_reward = jax.random.split(key)
        arms = ts.select(k_select, state, params)
        rewards = (jax.random.uniform(k_reward, arms.shape) < means[arms]).astype(
            jnp.float32
        )
        return ts.update(key, state, arms, rewards, params)

    holder = {"state": ts.init(params, (batch,))}

    def scan_call(i):
        jax.block_until_ready(scan_run(jax.random.key(i)))

    def batched_call(i):
        holder["state"] = jax.block_until_ready(
            batched_step(jax.random.key(i), holder["state"], params)
        )

    out = {}
    for name, call, n in (
        ("ours_scan", scan_call, decisions),
        ("ours_batched", batched_call, batch),
    ):
        start = time.perf_counter()
        call(10**6)  # tracing + compilation + one run
        out[name] = (call, n, time.perf_counter() - start)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no files")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    block, batches = 200, 5
    scan_decisions = 2_000 if args.quick else 10_000
    many_bandits = 10_000 if args.quick else 100_000
    info = machine()

    loops = [MabwiserLoop(0), OursTwoCalls(0), OursOneCall(0)]
    batch_loops = [MabwiserBatch(0, args.batch), OursBatch(0, args.batch)]
    for loop in loops:  # warm-up outside the timed rounds
        for _ in range(50):
            loop.decide()
    for loop in batch_loops:
        for _ in range(3):
            loop.decide()
    graph = in_graph(scan_decisions, many_bandits)

    singles = {loop.name: [] for loop in loops}

    def single(loop):
        def run(r):
            record = singles[loop.name]
            for _ in range(block):
                start = time.perf_counter()
                loop.decide()
                record.append(time.perf_counter() - start)

        return run

    def batched(loop):
        def run(r):
            for _ in range(batches):
                loop.decide()

        return run

    contenders = {loop.name: single(loop) for loop in loops}
    contenders |= {loop.name: batched(loop) for loop in batch_loops}
    contenders |= {
        name: (lambda r, call=call: call(r)) for name, (call, _, _) in graph.items()
    }
    timing = alternate(contenders, rounds)
    info["load_average_end"] = os.getloadavg()[0]
    decisions = {loop.name: block for loop in loops}
    decisions |= {loop.name: batches * args.batch for loop in batch_loops}
    decisions |= {name: n for name, (_, n, _) in graph.items()}
    per = per_unit(timing, decisions)

    setup = {loop.name: loop.setup_s for loop in loops + batch_loops}
    setup |= {name: c for name, (_, _, c) in graph.items()}
    labels = {
        "mabwiser": "MABWiser ThompsonSampling: predict() + partial_fit([arm], "
        "[reward])",
        "ours_2_calls": "ours: jit(select) + jit(update), 2 dispatches",
        "ours_1_call": "ours: one jit(update previous + select next), 1 dispatch",
        "mabwiser_batch": f"MABWiser: predict({args.batch:,} contexts) + "
        f"partial_fit({args.batch:,} decisions)",
        "ours_batch": f"ours: jit(select) on [{args.batch:,}, 10] + jit(update) "
        f"with {args.batch:,} observations",
        "ours_scan": f"ours: one bandit, {scan_decisions:,} decisions in one lax.scan",
        "ours_batched": f"ours: {many_bandits:,} bandits, one select + update per call",
    }
    rows = []
    for name in contenders:
        s = per["seconds"][name]
        row = {
            "name": name,
            "label": labels[name],
            "decisions_per_round": decisions[name],
            "rounds": rounds,
            "per_decision_us": {
                k: (v * 1e6 if k != "values" else [x * 1e6 for x in v])
                for k, v in s.items()
            },
            "setup_or_compile_s": setup[name],
        }
        if name in singles:
            t = np.asarray(singles[name])
            row["each_decision_median_us"] = float(np.median(t) * 1e6)
            row["each_decision_p95_us"] = float(np.percentile(t, 95) * 1e6)
        rows.append(row)
    comparisons = [
        ("one decision per call: ours 2 calls vs MABWiser", "ours_2_calls", "mabwiser"),
        ("one decision per call: ours 1 call vs MABWiser", "ours_1_call", "mabwiser"),
        (
            f"batches of {args.batch:,}: ours vs MABWiser's batch API",
            "ours_batch",
            "mabwiser_batch",
        ),
        (
            "what MABWiser's batch API buys it: batch vs one per call",
            "mabwiser_batch",
            "mabwiser",
        ),
        (
            "what batching buys us: our batches vs our 1-call loop",
            "ours_batch",
            "ours_1_call",
        ),
        (
            "what an in-graph scan buys: scan vs our 1-call loop",
            "ours_scan",
            "ours_1_call",
        ),
        (
            f"what {many_bandits:,} bandits per call buys: vs our 1-call loop",
            "ours_batched",
            "ours_1_call",
        ),
    ]
    ratios = [
        {"label": label, "fast": fast, "slow": slow} | speedup(per, fast, slow)
        for label, fast, slow in comparisons
    ]
    table = markdown(rows, ratios, info, per["load"], rounds)
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        out = {
            "benchmark": "bandits_latency",
            "machine": info,
            "rows": rows,
            "ratios": ratios,
            "timing_seconds_per_round": timing,
        }
        (RESULTS / "bandits_latency.json").write_text(json.dumps(out, indent=1) + "\n")
        (RESULTS / "bandits_latency.md").write_text(table + "\n")


def markdown(rows, ratios, info, load, rounds) -> str:
    lines = [
        "## Thompson sampling per decision: one bandit, 10 Bernoulli arms",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, device `{info['device']}`, "
        f"jax {info['jax']}, MABWiser {info['mabwiser']}. {rounds} alternating "
        "rounds, every contender once per round; 1-minute load over the rounds "
        f"{load['min']:.2f} / {load['median']:.2f} / {load['max']:.2f} (min / "
        "median / max).",
        "",
        "| contender | decisions per round | per decision (us): median | min .. max "
        "over rounds | each decision timed: median / p95 (us) | setup incl. "
        "compile (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        u = r["per_decision_us"]
        each = (
            f"{r['each_decision_median_us']:.1f} / {r['each_decision_p95_us']:.1f}"
            if "each_decision_median_us" in r
            else "-"
        )
        lines.append(
            f"| {r['label']} | {r['decisions_per_round']:,} | {u['median']:.3f} | "
            f"{u['min']:.3f} .. {u['max']:.3f} | {each} | "
            f"{r['setup_or_compile_s']:.2f} |"
        )
    lines += [
        "",
        "| comparison | how many times faster per decision: ratio of medians "
        "(range; paired min / median / max) |",
        "|---|---|",
    ]
    for r in ratios:
        lines.append(f"| {r['label']} | {fmt_speedup(r)} |")
    lines += [
        "",
        "A ratio is bold only when its range (one's min / the other's max .. max / "
        "min) lies wholly above or below 1.0x; otherwise it is a tie. A batch draws "
        "all its decisions from the same posterior and learns their rewards "
        "together (delayed feedback), on both sides of the batch row. The last three "
        "rows compare our batched or in-graph programs with our own one-call loop: "
        "they say what batching buys, not how we compare with MABWiser (the scan "
        "and the 100,000-bandit call also draw their rewards in the graph). A "
        "jitted call from Python pays a dispatch of a few tens of microseconds "
        "however small the work; that, not the sampling, is most of the "
        "per-decision figure for one bandit.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
