"""Thompson select over 1,000,000 Beta-Bernoulli bandits x 10 arms, side by side.

One "select" draws one posterior sample per arm of every bandit and takes the
argmax per bandit: ``argmax(Beta(1 + S, 1 + F), axis=-1)`` for all 10^7 arms.

* ours exact:  ``bandits.beta_bernoulli(10).select`` (exact Beta draws), jitted,
  float32
* ours approx: the same with ``sampler="approx"`` (moment-matched normal), float32
* NumPy float64: ``Generator.beta(a, b).argmax(-1)``, vectorized. ``Generator.beta``
  has no ``dtype`` argument: it only draws float64.
* NumPy float32: ``Generator.standard_gamma(a, dtype=np.float32)`` for both shape
  parameters, then ``X / (X + Y)`` and argmax: the gamma-ratio Beta that
  ``Generator.beta`` itself uses when a parameter exceeds 1, in float32.
* jax.random.beta + argmax, jitted, float32.

NumPy's samplers run on one thread. XLA on the CPU uses every core it is given,
so ours is timed twice:

* **two cores** (this process, unpinned: both cores of the machine), and
* **one core**: a worker process pinned to CPU 0 with ``taskset -c 0`` and
  ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``, where ours and both NumPy
  samplers run again on the same inputs; the recorded CPU time / wall time of
  each contender shows how many cores it really used.

Timed rounds alternate: every round runs every contender once (the two-core
ones here, the one-core ones in the worker), the order rotated round to round,
and records the 1-minute load. The first call of each contender (tracing,
compilation and one run) is timed apart, then one untimed warm-up call. Ratios:
ratio of medians, its range (one's min / the other's max .. max / min) and the
paired per-round ratios; a ratio whose range contains 1.0x is a tie.

    python benchmarks/bandits_select.py             # full run, writes results/
    python benchmarks/bandits_select.py --quick     # small sizes, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _machine import machine_info
from _timing import alternate, fmt_speedup, speedup
from _worker import JsonWorker, worker_env

from convergence_jax import bandits

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
ARMS = 10
ONE_CORE_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"


def machine() -> dict:
    return machine_info() | {
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "numpy": np.__version__,
    }


def posterior_stats(num_bandits: int):
    """A realistic state: each arm has seen 0-200 pulls with its own success rate
    (the same for every process: seeded)."""
    rng = np.random.default_rng(0)
    pulls = rng.integers(0, 200, (num_bandits, ARMS)).astype(np.float64)
    rate = rng.uniform(0.05, 0.95, (num_bandits, ARMS))
    successes = rng.binomial(pulls.astype(np.int64), rate).astype(np.float64)
    return successes, pulls - successes


def make_contenders(num_bandits: int, small: int, names=None):
    """name -> zero-argument callable that runs one select and blocks."""
    succ, fail = posterior_stats(num_bandits)
    a64, b64 = 1.0 + succ, 1.0 + fail
    a32, b32 = a64.astype(np.float32), b64.astype(np.float32)
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

    rng = np.random.default_rng(1)

    def numpy32(a, b):
        x = rng.standard_gamma(a, dtype=np.float32)
        y = rng.standard_gamma(b, dtype=np.float32)
        return (x / (x + y)).argmax(-1)

    def ours(fn, s, *extra):
        return lambda: jax.block_until_ready(fn(key(), s, *extra))

    table = {
        "ours_exact": lambda: ours(select_exact, state, params),
        "ours_approx": lambda: ours(select_approx, state, params),
        "numpy64": lambda: lambda: rng.beta(a64, b64).argmax(-1),
        "numpy32": lambda: lambda: numpy32(a32, b32),
        "jax_random_beta": lambda: ours(jax_random_beta_select, state),
        "ours_exact_small": lambda: ours(select_exact, small_state, params),
        "numpy64_small": lambda: lambda: rng.beta(a64[:small], b64[:small]).argmax(-1),
        "jax_random_beta_small": lambda: ours(jax_random_beta_select, small_state),
    }
    fns, first_call_s = {}, {}
    for name in names or table:
        fn = table[name]()
        start = time.perf_counter()
        fn()  # tracing + compilation (+ one run)
        first_call_s[name] = time.perf_counter() - start
        fn()  # warm-up
        fns[name] = fn
    return fns, first_call_s


ONE_CORE = ("ours_exact", "ours_approx", "numpy64", "numpy32")


def worker(args):
    """One-core worker: answers {"op": "time", "name": ...} with its timing."""
    fns, first_call_s = make_contenders(args.bandits, args.small, ONE_CORE)
    info = {
        "affinity": sorted(os.sched_getaffinity(0)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "first_call_s": first_call_s,
    }
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        start, cpu = time.perf_counter(), time.process_time()
        fns[cmd["name"]]()
        out = {
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu,
        }
        print(json.dumps(out), flush=True)


def main(args):
    num_bandits = 20_000 if args.quick else 1_000_000
    small = 2_000 if args.quick else 100_000
    rounds = 3 if args.quick else args.rounds
    info = machine()
    fns, first_call_s = make_contenders(num_bandits, small)
    argv = ["taskset", "-c", "0", sys.executable, __file__, "--worker"]
    argv += ["--bandits", str(num_bandits), "--small", str(small)]
    one = JsonWorker(argv, worker_env(XLA_FLAGS=ONE_CORE_XLA_FLAGS))
    for name, s in one.info["first_call_s"].items():
        first_call_s[name + "_1core"] = s

    def local(fn):
        return lambda r: fn()

    def remote(name):
        return lambda r: one.ask(op="time", name=name)

    contenders = {n: local(f) for n, f in fns.items()}
    contenders |= {n + "_1core": remote(n) for n in ONE_CORE}
    timing = alternate(contenders, rounds)
    one.close()
    info["load_average_end"] = os.getloadavg()[0]
    info["one_core_worker"] = {
        k: v for k, v in one.info.items() if k != "first_call_s"
    } | {"command": "taskset -c 0 python benchmarks/bandits_select.py --worker"}

    comparisons = [
        # (label, fast, slow): slow's time / fast's time
        (
            "ours exact vs NumPy float64, one core each",
            "ours_exact_1core",
            "numpy64_1core",
        ),
        (
            "ours exact vs NumPy float32 (gamma ratio), one core each",
            "ours_exact_1core",
            "numpy32_1core",
        ),
        (
            "ours approx vs NumPy float64, one core each",
            "ours_approx_1core",
            "numpy64_1core",
        ),
        (
            "ours approx vs NumPy float32, one core each",
            "ours_approx_1core",
            "numpy32_1core",
        ),
        ("ours exact (2 cores) vs NumPy float64 (1 thread)", "ours_exact", "numpy64"),
        ("ours exact (2 cores) vs NumPy float32 (1 thread)", "ours_exact", "numpy32"),
        ("ours approx (2 cores) vs NumPy float64 (1 thread)", "ours_approx", "numpy64"),
        (
            "ours exact vs jax.random.beta, both 2 cores, float32",
            "ours_exact",
            "jax_random_beta",
        ),
        (
            "what the second core buys: ours exact on 2 cores vs on 1",
            "ours_exact",
            "ours_exact_1core",
        ),
        (
            "100,000 x 10: ours exact (2 cores) vs NumPy float64",
            "ours_exact_small",
            "numpy64_small",
        ),
        (
            "100,000 x 10: ours exact vs jax.random.beta (2 cores)",
            "ours_exact_small",
            "jax_random_beta_small",
        ),
    ]
    ratios = [
        {"label": label, "fast": fast, "slow": slow} | speedup(timing, fast, slow)
        for label, fast, slow in comparisons
    ]
    result = {
        "benchmark": "bandits_select",
        "machine": info,
        "bandits": num_bandits,
        "small": small,
        "arms": ARMS,
        "rounds": rounds,
        "first_call_s": first_call_s,
        "timing": timing,
        "ratios": ratios,
    }
    table = markdown(result)
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        payload = json.dumps(result, indent=1) + "\n"
        (RESULTS / "bandits_select.json").write_text(payload)
        (RESULTS / "bandits_select.md").write_text(table + "\n")


ROWS = [
    # name, label, precision, cores, size key
    ("ours_exact", "ours, exact (`sample_beta`)", "float32", "2", "bandits"),
    ("ours_approx", "ours, approx (normal)", "float32", "2", "bandits"),
    ("numpy64", "NumPy `Generator.beta` + argmax", "float64", "1 thread", "bandits"),
    (
        "numpy32",
        "NumPy `standard_gamma(dtype=float32)` ratio + argmax",
        "float32",
        "1 thread",
        "bandits",
    ),
    ("jax_random_beta", "`jax.random.beta` + argmax", "float32", "2", "bandits"),
    (
        "ours_exact_1core",
        "ours, exact (`sample_beta`)",
        "float32",
        "1 (pinned)",
        "bandits",
    ),
    ("ours_approx_1core", "ours, approx (normal)", "float32", "1 (pinned)", "bandits"),
    (
        "numpy64_1core",
        "NumPy `Generator.beta` + argmax",
        "float64",
        "1 (pinned)",
        "bandits",
    ),
    (
        "numpy32_1core",
        "NumPy `standard_gamma(dtype=float32)` ratio + argmax",
        "float32",
        "1 (pinned)",
        "bandits",
    ),
    ("ours_exact_small", "ours, exact (`sample_beta`)", "float32", "2", "small"),
    (
        "numpy64_small",
        "NumPy `Generator.beta` + argmax",
        "float64",
        "1 thread",
        "small",
    ),
    ("jax_random_beta_small", "`jax.random.beta` + argmax", "float32", "2", "small"),
]


def markdown(result) -> str:
    info, t = result["machine"], result["timing"]
    load = t["load"]
    w = info["one_core_worker"]
    lines = [
        "## Thompson select: one Beta draw per arm + argmax, 10 arms per bandit",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, device `{info['device']}`, "
        f"jax {info['jax']}, numpy {info['numpy']}. {result['rounds']} alternating "
        "rounds, every contender once per round; 1-minute load over the rounds "
        f"{load['min']:.2f} / {load['median']:.2f} / {load['max']:.2f} (min / "
        "median / max). One-core rows: a worker process run as "
        f"`{w['command']}` with `XLA_FLAGS={w['xla_flags']}` (CPU affinity "
        f"{w['affinity']}).",
        "",
        "| contender | precision | cores | bandits x arms | median (s) | min .. max "
        "(s) | CPU time / wall (median) | first call incl. compile (s) |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for name, label, precision, cores, size in ROWS:
        s, c = t["seconds"][name], t["cpu_per_wall"][name]
        lines.append(
            f"| {label} | {precision} | {cores} | {result[size]:,} x {result['arms']} "
            f"| {s['median']:.4f} | {s['min']:.4f} .. {s['max']:.4f} | "
            f"{c['median']:.2f} | {result['first_call_s'][name]:.2f} |"
        )
    lines += [
        "",
        "| comparison (1,000,000 x 10 unless said) | how many times faster ours "
        "is: ratio of medians (range; paired min / median / max) |",
        "|---|---|",
    ]
    for r in result["ratios"]:
        lines.append(f"| {r['label']} | {fmt_speedup(r)} |")
    lines += [
        "",
        "A ratio is bold only when its range (one's min / the other's max .. max / "
        "min) lies wholly above or below 1.0x; otherwise it is a tie. "
        "`Generator.beta` has no `dtype` argument (float64 only); the float32 NumPy "
        "row draws the same gamma-ratio Beta with `standard_gamma(dtype=float32)`. "
        "CPU time / wall near 1 means one core was busy, near 2 both.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, no files")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bandits", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        main(args)
