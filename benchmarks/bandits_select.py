"""Thompson select over 1,000,000 Beta-Bernoulli bandits x 10 arms, side by side.

One "select" draws one posterior sample per arm of every bandit and takes the
argmax per bandit: ``argmax(Beta(1 + S, 1 + F), axis=-1)`` for all 10^7 arms.

* ours exact:  ``bandits.beta_bernoulli(10).select`` (exact Beta draws), jitted
* ours approx: the same with ``sampler="approx"`` (moment-matched normal)
* NumPy:       ``Generator.beta(a, b).argmax(-1)``, vectorized, float64
* jax.random.beta + argmax, jitted; it is far slower, so it gets fewer rounds
  (at 1,000,000 x 10 and at 100,000 x 10, next to ours and NumPy at that size)

The rounds alternate between the contenders (the machine may be shared, so a
burst of load hits all of them alike); the table reports the median and the best
round, compile time (first call) separately, and the ratio NumPy time / our time
(> 1: we are faster).

    python benchmarks/bandits_select.py             # full run, writes results/
    python benchmarks/bandits_select.py --quick     # small sizes, writes nothing
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


def machine() -> dict:
    return machine_info() | {
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "numpy": np.__version__,
    }


def posterior_stats(rng: np.random.Generator, num_bandits: int):
    """A realistic state: each arm has seen 0-200 pulls with its own success rate."""
    pulls = rng.integers(0, 200, (num_bandits, ARMS)).astype(np.float64)
    rate = rng.uniform(0.05, 0.95, (num_bandits, ARMS))
    successes = rng.binomial(pulls.astype(np.int64), rate).astype(np.float64)
    return successes, pulls - successes


class Timer:
    """Round-robin timing of several zero-argument callables."""

    def __init__(self):
        self.fns: dict[str, callable] = {}
        self.compile_s: dict[str, float] = {}
        self.times: dict[str, list[float]] = {}

    def add(self, name, fn):
        start = time.perf_counter()
        fn()  # first call: tracing + compilation (+ one run)
        self.compile_s[name] = time.perf_counter() - start
        fn()  # warm-up
        self.fns[name] = fn
        self.times[name] = []

    def run(self, rounds: int):
        for _ in range(rounds):
            for name, fn in self.fns.items():
                start = time.perf_counter()
                fn()
                self.times[name].append(time.perf_counter() - start)


def jax_call(fn, *args):
    return lambda: jax.block_until_ready(fn(*args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, no files")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    num_bandits = 20_000 if args.quick else 1_000_000
    small = 2_000 if args.quick else 100_000
    rounds = 3 if args.quick else args.rounds

    info = machine()
    rng = np.random.default_rng(0)
    succ, fail = posterior_stats(rng, num_bandits)
    a64, b64 = 1.0 + succ, 1.0 + fail

    exact = bandits.beta_bernoulli(ARMS)
    approx = bandits.beta_bernoulli(ARMS, sampler="approx")
    params = exact.default_params
    state = bandits.BetaBernoulliState(
        successes=jnp.asarray(succ, jnp.float32),
        failures=jnp.asarray(fail, jnp.float32),
    )
    small_state = jax.tree.map(lambda x: x[:small], state)
    select_exact = jax.jit(exact.select)
    select_approx = jax.jit(approx.select)

    @jax.jit
    def jax_random_beta_select(key, state):
        draws = jax.random.beta(key, 1.0 + state.successes, 1.0 + state.failures)
        return jnp.argmax(draws, axis=-1)

    counter = iter(range(10**9))

    def key():
        return jax.random.key(next(counter))

    numpy_rng = np.random.default_rng(1)

    timer = Timer()
    timer.add("ours_exact", lambda: jax_call(select_exact, key(), state, params)())
    timer.add("ours_approx", lambda: jax_call(select_approx, key(), state, params)())
    timer.add("numpy", lambda: numpy_rng.beta(a64, b64).argmax(-1))
    timer.add(
        "numpy_small", lambda: numpy_rng.beta(a64[:small], b64[:small]).argmax(-1)
    )
    timer.add(
        "ours_exact_small",
        lambda: jax_call(select_exact, key(), small_state, params)(),
    )
    timer.add(
        "jax_random_beta_small",
        lambda: jax_call(jax_random_beta_select, key(), small_state)(),
    )
    # jax.random.beta is ~30x slower than everything else: fewer rounds for it,
    # and at full size only 2 timed rounds after its first call.
    slow = {"jax_random_beta_small": timer.fns.pop("jax_random_beta_small")}
    timer.run(rounds)
    for _ in range(max(3, rounds // 3)):
        start = time.perf_counter()
        slow["jax_random_beta_small"]()
        timer.times["jax_random_beta_small"].append(time.perf_counter() - start)
    full = jax_call(jax_random_beta_select, key(), state)
    start = time.perf_counter()
    full()
    timer.compile_s["jax_random_beta"] = time.perf_counter() - start
    timer.times["jax_random_beta"] = []
    for _ in range(2):
        start = time.perf_counter()
        full()
        timer.times["jax_random_beta"].append(time.perf_counter() - start)
    info["load_average_end"] = os.getloadavg()[0]

    rows = []
    spec = [
        ("ours_exact", "ours, exact (sample_beta)", num_bandits, "numpy"),
        ("ours_approx", "ours, approx (normal)", num_bandits, "numpy"),
        ("numpy", "NumPy Generator.beta + argmax", num_bandits, "numpy"),
        ("jax_random_beta", "jax.random.beta + argmax", num_bandits, "numpy"),
        ("ours_exact_small", "ours, exact (sample_beta)", small, "numpy_small"),
        ("numpy_small", "NumPy Generator.beta + argmax", small, "numpy_small"),
        ("jax_random_beta_small", "jax.random.beta + argmax", small, "numpy_small"),
    ]
    for name, label, size, ref in spec:
        t = timer.times[name]
        median = statistics.median(t)
        ref_median = statistics.median(timer.times[ref])
        rows.append(
            {
                "name": name,
                "label": label,
                "bandits": size,
                "arms": ARMS,
                "median_s": median,
                "best_s": min(t),
                "rounds": len(t),
                "compile_plus_first_call_s": timer.compile_s[name],
                "numpy_over_this": ref_median / median,
                "draws_per_s": size * ARMS / median,
            }
        )

    table = markdown(rows, info)
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        out = {"benchmark": "bandits_select", "machine": info, "results": rows}
        (RESULTS / "bandits_select.json").write_text(json.dumps(out, indent=2) + "\n")
        (RESULTS / "bandits_select.md").write_text(table + "\n")


def markdown(rows, info) -> str:
    lines = [
        "## Thompson select: one Beta draw per arm + argmax, 10 arms per bandit",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, device `{info['device']}`, "
        f"jax {info['jax']}, numpy {info['numpy']}; load average "
        f"{info['load_average_start']:.1f} -> {info['load_average_end']:.1f} "
        "(shared machine).",
        "",
        "| contender | bandits x arms | median (s) | best (s) | first call incl. "
        "compile (s) | NumPy time / this |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['bandits']:,} x {r['arms']} | {r['median_s']:.4f} | "
            f"{r['best_s']:.4f} | {r['compile_plus_first_call_s']:.2f} | "
            f"{r['numpy_over_this']:.2f}x |"
        )
    lines += [
        "",
        "Ratios compare medians at the same size. `jax.random.beta` at full size "
        "has 2 timed rounds (it is the slowest by far); the first call of a row "
        "includes tracing, compilation and one run.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
