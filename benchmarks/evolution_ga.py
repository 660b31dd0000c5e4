"""convergence_jax.evolution.ga vs evosax (SimpleGA, CMA_ES, DE, PSO), side by side.

Every library runs in the same session on the same machine, each in its own worker
process (evosax in its own venv), every run one jitted ``lax.scan``.

* **Speed** (GA only): generations per second of a whole run on Rastrigin, D = 100,
  population 1024, timed in alternation after compilation (compile time reported
  separately). Three rows, each with its work per generation: our GA with its
  defaults (5% of genes mutate, 16-bit table normal), our GA with every gene mutated
  (``mutation_rate = 1``, the same density as SimpleGA; the 16-bit table normal
  cannot be switched off, see ``NOISE`` below), and evosax SimpleGA's defaults (a
  full-precision ``jax.random.normal`` on every gene). A fourth measurement times
  the noise draw alone (table vs ``jax.random.normal``) to show what the precision
  difference costs.
* **Quality at equal evaluations** on a suite of BBOB-style functions (``FUNCTIONS``)
  at D = 10 and 30, each seed a fresh instance (random shift of the optimum in
  [-4, 4]^D, random rotation for the rotated ones, optimum value 0), defined once
  here in JAX and used by every library. Reported: ``f(best) - f_opt`` per function,
  over evaluation seeds the tuning never saw. Budget: ``BUDGET_PER_DIM * D``
  evaluations per run for everyone (population-based methods: population
  ``--population``, the same initial population included; CMA-ES: with
  ``lambda = population`` and with its textbook ``lambda = 4 + floor(3 ln D)``).
* **Tuning**: the same rule for every library tuned (ours, SimpleGA, CMA-ES): a 3x3
  grid (9 settings) of two parameters, scored by the mean over functions, both
  dimensions and the tuning seeds of ``log10(max(f - f_opt, 1e-8))``; a grid whose
  best sits on an edge (not a hard bound) is moved to centre on it and re-run, up to
  ``--max-rounds`` rounds. The winner is then run on the evaluation seeds.

evosax needs its own environment: unless it imports in this interpreter, the script
creates ``benchmarks/.venvs/evosax`` (git-ignored) with evosax and this JAX version
and runs its half there.

    python benchmarks/evolution_ga.py                # full run, writes results/
    python benchmarks/evolution_ga.py --quick        # smoke test, writes nothing
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine_info
from _worker import JsonWorker, summarize, worker_env

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
PEER_VENV = ROOT / ".venvs" / "evosax"
EVOSAX_VERSION = "0.3.2"
LOW, HIGH = -5.0, 5.0  # BBOB search box; initial populations are uniform in it
SOLVED = 1e-8  # f - f_opt below this counts as solved (the COCO target)
BUDGET_PER_DIM = 5000  # evaluations per run = BUDGET_PER_DIM * D

FUNCTIONS = (
    "sphere",
    "ellipsoid",
    "ellipsoid_rotated",
    "rosenbrock",
    "rastrigin",
    "rastrigin_rotated",
    "ackley",
)

# What each library does per generation in the speed rows (checked against the
# source of evosax 0.3.2 and convergence_jax.evolution).
WORK = {
    "ours_defaults": "tournament(3) + uniform crossover (rate 0.9) + 2% elites kept; "
    "mutation on a 5% random subset of genes (max(0.05, 1/D)), 16-bit table normal",
    "ours_dense": "as defaults but mutation_rate = 1: every gene of every child "
    "mutated, 16-bit table normal",
    "ours_dense_erfinv": "as ours_dense, with the table swapped (benchmark-only "
    "patch) for jax.random.normal's construction (23-bit uniform, sqrt(2) erfinv, "
    "float32): the same noise work as SimpleGA",
    "evosax_simplega": "argsort; both parents uniform from the top 50%; crossover "
    "mask drawn (rate 0); jax.random.normal (full float32) on every gene of every "
    "child; no individual kept",
}
NOISE = (
    "Our GA has no switch for the normal's precision: the mutation step always "
    "takes its deviate from a 65536-entry inverse-CDF table indexed by 16 random "
    "bits (the other 16 bits of the same word decide whether the gene mutates). "
    "The same-work row (ours_dense_erfinv) therefore swaps that function for "
    "jax.random.normal's construction inside the benchmark only; the noise draw "
    "alone is timed too."
)

# Tuning grids (3 values per axis, 9 settings each): start centred on each
# library's default, step by `factor`, never past `bounds`.
TUNING = {
    "convergence_jax": {
        "mutation_std": {"center": 0.1, "factor": 3.0, "bounds": (0.0, math.inf)},
        "mutation_rate": {"center": 0.05, "factor": 2.0, "bounds": (0.0, 1.0)},
    },
    "SimpleGA": {
        "std": {"center": 1.0, "factor": 3.0, "bounds": (0.0, math.inf)},
        # At least one parent: the lower bound becomes 1 / population at run time.
        "elite_ratio": {"center": 0.5, "factor": 2.0, "bounds": (0.0, 1.0)},
    },
    "CMA_ES": {
        "std_init": {"center": 1.0, "factor": 3.0, "bounds": (0.0, math.inf)},
        # In evosax's CMA_ES elite_ratio only sets mu_eff, from the first
        # elite_ratio * lambda log-rank weights; those turn negative past
        # (lambda + 1) / 2, so the fraction stops at one half.
        "elite_ratio": {"center": 0.25, "factor": 2.0, "bounds": (0.0, 0.5)},
    },
}

# --------------------------------------------------------------- shared problems


def cma_lambda(dim: int) -> int:
    """CMA-ES's textbook population size (Hansen, 2016): 4 + floor(3 ln D)."""
    return 4 + int(3 * math.log(dim))


def _problem(key, fid, dim):
    """One instance: (fid, x_opt [D], rotation R [D, D]); f(x_opt) = 0."""
    import jax
    import jax.numpy as jnp

    k_shift, k_rot = jax.random.split(
        jax.random.fold_in(jax.random.fold_in(key, 1), fid)
    )
    x_opt = jax.random.uniform(k_shift, (dim,), minval=-4.0, maxval=4.0)
    # BBOB draws Rosenbrock's optimum in [-3, 3]^D.
    x_opt = jnp.where(fid == FUNCTIONS.index("rosenbrock"), 0.75 * x_opt, x_opt)
    q, r = jnp.linalg.qr(jax.random.normal(k_rot, (dim, dim)))
    rotation = q * jnp.sign(jnp.diag(r))  # Haar-distributed orthogonal matrix
    return fid, x_opt, rotation


def _evaluate(x, problem):
    """f(x) - f_opt for a population ``x [P, D]`` (f_opt = 0)."""
    import jax
    import jax.numpy as jnp

    fid, x_opt, rotation = problem
    dim = x.shape[-1]
    z = x - x_opt
    zr = z @ rotation.T
    cond = 10.0 ** (6.0 * jnp.arange(dim) / max(dim - 1, 1))

    def sphere(z, zr):
        return jnp.sum(z**2, -1)

    def ellipsoid(z, zr):
        return jnp.sum(cond * z**2, -1)

    def ellipsoid_rotated(z, zr):
        return jnp.sum(cond * zr**2, -1)

    def rosenbrock(z, zr):
        y = max(1.0, math.sqrt(dim) / 8.0) * z + 1.0
        a, b = y[..., :-1], y[..., 1:]
        return jnp.sum(100.0 * (a**2 - b) ** 2 + (a - 1.0) ** 2, -1)

    def rastrigin(z, zr):
        return 10.0 * dim + jnp.sum(z**2 - 10.0 * jnp.cos(2 * jnp.pi * z), -1)

    def rastrigin_rotated(z, zr):
        return rastrigin(zr, zr)

    def ackley(z, zr):
        a = -20.0 * jnp.exp(-0.2 * jnp.sqrt(jnp.mean(z**2, -1)))
        return a - jnp.exp(jnp.mean(jnp.cos(2 * jnp.pi * z), -1)) + 20.0 + jnp.e

    fns = {
        "sphere": sphere,
        "ellipsoid": ellipsoid,
        "ellipsoid_rotated": ellipsoid_rotated,
        "rosenbrock": rosenbrock,
        "rastrigin": rastrigin,
        "rastrigin_rotated": rastrigin_rotated,
        "ackley": ackley,
    }
    value = jax.lax.switch(fid, [fns[name] for name in FUNCTIONS], z, zr)
    return jnp.maximum(value, 0.0)  # ackley's float32 rounding can dip below 0


def _initial_population(key, size, dim):
    import jax

    return jax.random.uniform(
        jax.random.fold_in(key, 2), (size, dim), minval=LOW, maxval=HIGH
    )


def _run_key(key, fid):
    import jax

    return jax.random.fold_in(jax.random.fold_in(key, 3), fid)


def _rastrigin(x):  # the speed problem (unshifted, as in earlier runs)
    import jax.numpy as jnp

    return 10.0 * x.shape[-1] + jnp.sum(x**2 - 10.0 * jnp.cos(2 * jnp.pi * x), -1)


def _pairs(seeds, fids):
    """(seed, fid) rows, function-major: row f * len(seeds) + s."""
    import jax.numpy as jnp

    seed_col = jnp.asarray([s for _ in fids for s in seeds], jnp.uint32)
    fid_col = jnp.asarray([f for f in fids for _ in seeds], jnp.int32)
    return seed_col, fid_col


def _stack(rows):
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *rows)


# --------------------------------------------------------------------- workers


def _erfinv_normal(words, dtype):
    """jax.random.normal's construction from each whole 32-bit word.

    A float32 uniform from the top 23 bits, mapped to [nextafter(-1, 0), 1), then
    ``sqrt(2) * erfinv(u)`` (``jax._src.random.core._normal_real``). Swapped in for
    the 16-bit table in the benchmark-only ``ours_dense_erfinv`` speed row, so that
    our GA does the same noise work as SimpleGA; with ``mutation_rate = 1`` the
    word's low half (the mutate-or-not field) no longer matters.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    one_two = (words >> jnp.uint32(9)) | jnp.uint32(0x3F800000)
    u01 = jax.lax.bitcast_convert_type(one_two, jnp.float32) - 1.0
    u = jnp.maximum(lo, u01 * (1.0 - lo) + lo)
    return (np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)).astype(dtype)


class OursWorker:
    """convergence_jax.evolution.ga, minimizing."""

    def __init__(self, args):
        import jax
        import jax.numpy as jnp

        from convergence_jax import evolution

        self.jax, self.jnp, self.evolution = jax, jnp, evolution
        self.args = args
        self.timed = {}

    # ---- speed
    def compile(self, variant):
        jax, jnp, evolution, a = self.jax, self.jnp, self.evolution, self.args
        ga = evolution.ga(jnp.zeros(a.speed_dim), a.speed_population, maximize=False)
        params = ga.default_params
        if variant in ("ours_dense", "ours_dense_erfinv"):
            params = params.replace(mutation_rate=1.0)

        def run(key):
            population = _initial_population(key, a.speed_population, a.speed_dim)
            state, _ = evolution.run(
                _run_key(key, 0), ga, params, _rastrigin, a.speed_generations,
                population=population,
            )  # fmt: skip
            return state.best_fitness

        from convergence_jax.evolution import _genes as G

        table_normal = G.normal_from_high_half
        if variant == "ours_dense_erfinv":
            G.normal_from_high_half = _erfinv_normal  # only while this one traces
        try:
            start = time.perf_counter()
            self.timed[variant] = jax.jit(run).lower(jax.random.key(0)).compile()
            return time.perf_counter() - start
        finally:
            G.normal_from_high_half = table_normal

    def time_run(self, variant, seed):
        start = time.perf_counter()
        best = self.timed[variant](self.jax.random.key(seed))
        best = float(self.jax.block_until_ready(best))
        return time.perf_counter() - start, best

    def noise(self, repeats):
        """Seconds per draw of [P, D] deviates: 16-bit table vs jax.random.normal."""
        jax, jnp, a = self.jax, self.jnp, self.args
        from convergence_jax.evolution import _genes as G

        shape = (a.speed_population, a.speed_dim)

        def table(key):
            return G.normal_from_high_half(G.uniform_bits(key, shape), jnp.float32)

        def full(key):
            return jax.random.normal(key, shape, jnp.float32)

        out = {}
        for name, draw in (("table_16bit", table), ("jax_random_normal", full)):

            def loop(key, draw=draw):
                def body(acc, k):
                    return acc + draw(k)[0, 0], None

                keys = jax.random.split(key, a.speed_generations)
                return jax.lax.scan(body, jnp.zeros(()), keys)[0]

            fn = jax.jit(loop).lower(jax.random.key(0)).compile()
            fn(jax.random.key(0)).block_until_ready()
            times = []
            for rep in range(repeats):
                start = time.perf_counter()
                fn(jax.random.key(rep + 1)).block_until_ready()
                times.append((time.perf_counter() - start) / a.speed_generations)
            out[name] = times
        return out

    # ---- quality
    def suite(self, algo, dim, settings, seeds):
        jax, jnp, evolution = self.jax, self.jnp, self.evolution
        size = self.args.population
        generations = self.args.budget_per_dim * dim // size
        ga = evolution.ga(jnp.zeros(dim), size, maximize=False)

        def run(seed, fid, params):
            key = jax.random.key(seed)
            problem = _problem(key, fid, dim)
            population = _initial_population(key, size, dim)
            state, _ = evolution.run(
                _run_key(key, fid), ga, params,
                lambda x: _evaluate(x, problem), generations, population=population,
            )  # fmt: skip
            return state.best_fitness

        batch = _stack([ga.default_params.replace(**s) for s in settings])
        seed_col, fid_col = _pairs(seeds, range(len(FUNCTIONS)))
        fn = jax.jit(jax.vmap(jax.vmap(run, (0, 0, None)), (None, None, 0)))
        best = jax.device_get(fn(seed_col, fid_col, batch))
        return {"evaluations": generations * size, "best": best.tolist()}


class EvosaxWorker:
    """evosax 0.3 algorithms (all minimize)."""

    def __init__(self, args):
        import jax
        import jax.numpy as jnp
        import optax
        from evosax import algorithms

        self.jax, self.jnp, self.optax, self.algorithms = jax, jnp, optax, algorithms
        from importlib.metadata import version

        self.version = version("evosax")
        self.args = args
        self.timed = {}

    def _population_run(self, es, size, dim, generations, problem_fn):
        """run(key, problem, params, std=None) for a population-based algorithm.

        ``std`` (SimpleGA only) sets ``state.std`` after ``init`` and after every
        ``tell``: the same as ``std_schedule=optax.constant_schedule(std)`` (``ask``
        is the only reader of ``state.std``), but traced, so a sweep over it is one
        program.
        """
        jax = self.jax

        def fixed(state, std):
            return state if std is None else state.replace(std=std)

        def run(key, problem, params, std=None):
            fitness_fn = problem_fn(problem)
            population = _initial_population(key, size, dim)
            key_init, key_loop = jax.random.split(_run_key(key, problem[0]))
            state = es.init(key_init, population, fitness_fn(population), params)
            state = fixed(state, std)

            def step(state, key):
                key_ask, key_tell = jax.random.split(key)
                x, state = es.ask(key_ask, state, params)
                state, _ = es.tell(key_tell, x, fitness_fn(x), state, params)
                return fixed(state, std), None

            keys = jax.random.split(key_loop, generations - 1)
            state, _ = jax.lax.scan(step, state, keys)
            return state.best_fitness

        return run

    def _cma_run(self, es, size, dim, generations):
        jax = self.jax

        def run(key, problem, params):
            # The mean starts at a uniform random point of the search box.
            mean = _initial_population(key, 1, dim)[0]
            key_init, key_loop = jax.random.split(_run_key(key, problem[0]))
            state = es.init(key_init, mean, params)

            def step(state, key):
                key_ask, key_tell = jax.random.split(key)
                x, state = es.ask(key_ask, state, params)
                fitness = _evaluate(x, problem)
                state, _ = es.tell(key_tell, x, fitness, state, params)
                return state, None

            state, _ = jax.lax.scan(
                step, state, jax.random.split(key_loop, generations)
            )
            return state.best_fitness

        return run

    def _simple_ga(self, size, dim, std=None, elite_ratio=None):
        kwargs = {}
        if std is not None:
            kwargs["std_schedule"] = self.optax.constant_schedule(std)
        es = self.algorithms.SimpleGA(size, self.jnp.zeros(dim), **kwargs)
        if elite_ratio is not None:
            es.elite_ratio = elite_ratio
        return es

    # ---- speed
    def compile(self, variant):
        jax, a = self.jax, self.args
        es = self._simple_ga(a.speed_population, a.speed_dim)
        run = self._population_run(
            es, a.speed_population, a.speed_dim, a.speed_generations,
            lambda problem: _rastrigin,
        )  # fmt: skip
        params = es.default_params

        def timed(key):
            return run(key, (0,), params)

        start = time.perf_counter()
        self.timed[variant] = jax.jit(timed).lower(jax.random.key(0)).compile()
        return time.perf_counter() - start

    def time_run(self, variant, seed):
        start = time.perf_counter()
        best = self.timed[variant](self.jax.random.key(seed))
        best = float(self.jax.block_until_ready(best))
        return time.perf_counter() - start, best

    # ---- quality
    def suite(self, algo, dim, settings, seeds):
        jax, jnp, algorithms = self.jax, self.jnp, self.algorithms
        size = self.args.population
        if algo == "CMA_ES_textbook":
            size = cma_lambda(dim)
        generations = self.args.budget_per_dim * dim // size
        seed_col, fid_col = _pairs(seeds, range(len(FUNCTIONS)))

        def batched(run, params, over_params):
            def one(seed, fid, params):
                key = jax.random.key(seed)
                return run(key, _problem(key, fid, dim), params)

            inner = jax.vmap(one, (0, 0, None))
            if over_params:
                fn = jax.jit(jax.vmap(inner, (None, None, 0)))
                return jax.device_get(fn(seed_col, fid_col, params)).tolist()
            return [jax.device_get(jax.jit(inner)(seed_col, fid_col, params)).tolist()]

        def problem_fn(problem):
            return lambda x: _evaluate(x, problem)

        if algo in ("CMA_ES", "CMA_ES_textbook"):
            es = algorithms.CMA_ES(size, jnp.zeros(dim))
            rows = []
            for s in settings:
                sizer = algorithms.CMA_ES(size, jnp.zeros(dim))
                sizer.elite_ratio = s.get("elite_ratio", es.elite_ratio)
                p = sizer.default_params
                if "std_init" in s:
                    p = p.replace(std_init=jnp.asarray(s["std_init"], jnp.float32))
                rows.append(p)
            run = self._cma_run(es, size, dim, generations)
            best = batched(run, _stack(rows), True)
        elif algo == "SimpleGA":
            # elite_ratio is static in evosax (one program per value); std is
            # vmapped (see _population_run).
            best = [None] * len(settings)
            ratios = sorted({s.get("elite_ratio") for s in settings}, key=str)
            for ratio in ratios:
                rows = [
                    i for i, s in enumerate(settings) if s.get("elite_ratio") == ratio
                ]
                es = self._simple_ga(size, dim, elite_ratio=ratio)
                run = self._population_run(es, size, dim, generations, problem_fn)
                if all("std" in settings[i] for i in rows):
                    stds = jnp.asarray([settings[i]["std"] for i in rows], jnp.float32)

                    def run_std(key, problem, std, run=run, params=es.default_params):
                        return run(key, problem, params, std)

                    out = batched(run_std, stds, True)
                else:
                    out = batched(run, es.default_params, False) * len(rows)
                for i, row in zip(rows, out, strict=True):
                    best[i] = row
        elif algo in ("DifferentialEvolution", "PSO"):
            assert settings == [{}], "DE and PSO run with their defaults only"
            es = getattr(algorithms, algo)(size, jnp.zeros(dim))
            run = self._population_run(es, size, dim, generations, problem_fn)
            best = batched(run, es.default_params, False)
        else:
            raise ValueError(f"unknown algorithm {algo!r}")
        return {"evaluations": generations * size, "best": best}


def worker_main(kind, args):
    """Answer one JSON command per stdin line with one JSON line on stdout."""
    worker = {"ours": OursWorker, "evosax": EvosaxWorker}[kind](args)
    out = sys.stdout
    sys.stdout = sys.stderr  # keep stray prints off the protocol channel
    import jax

    info = {
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "platform": jax.devices()[0].platform,
    }
    if kind == "evosax":
        info["evosax"] = worker.version
    print(json.dumps(info), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "compile":
            reply = {"seconds": worker.compile(cmd["variant"])}
        elif cmd["op"] == "time":
            seconds, best = worker.time_run(cmd["variant"], cmd["seed"])
            reply = {"seconds": seconds, "best": best}
        elif cmd["op"] == "noise":
            reply = worker.noise(cmd["repeats"])
        elif cmd["op"] == "suite":
            reply = worker.suite(cmd["algo"], cmd["dim"], cmd["settings"], cmd["seeds"])
        else:
            break
        print(json.dumps(reply), file=out, flush=True)


# ---------------------------------------------------------------------- parent


def peer_python(args) -> str:
    """An interpreter that imports evosax: this one, or a venv made for it."""
    if args.peer_python:
        return args.peer_python
    probe = subprocess.run(
        [sys.executable, "-c", "import evosax"], capture_output=True, check=False
    )
    if probe.returncode == 0:
        return sys.executable
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        import jax

        print(f"creating {PEER_VENV} (evosax=={EVOSAX_VERSION}, jax {jax.__version__})")
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run(
            [
                str(python), "-m", "pip", "install", "-q",
                f"evosax=={EVOSAX_VERSION}",
                f"jax=={jax.__version__}",
                f"jaxlib=={jax.__version__}",
            ],
            check=True,
        )  # fmt: skip
    return str(python)


WORKER_FLAGS = (
    "population", "dims", "budget_per_dim",
    "speed_population", "speed_dim", "speed_generations",
)  # fmt: skip


class Worker(JsonWorker):
    def __init__(self, kind, python, args):
        argv = [python, __file__, "--worker", kind]
        for name in WORKER_FLAGS:
            value = getattr(args, name)
            value = ",".join(map(str, value)) if isinstance(value, list) else value
            argv += [f"--{name.replace('_', '-')}", str(value)]
        super().__init__(argv, worker_env())


# Which worker runs which algorithm, in table order.
ALGORITHMS = {
    "convergence_jax": "ours",
    "SimpleGA": "evosax",
    "CMA_ES": "evosax",
    "CMA_ES_textbook": "evosax",
    "DifferentialEvolution": "evosax",
    "PSO": "evosax",
}
LABELS = {
    "convergence_jax": "ours (GA)",
    "SimpleGA": "evosax SimpleGA",
    "CMA_ES": "evosax CMA_ES (λ = P)",
    "CMA_ES_textbook": "evosax CMA_ES (λ = 4 + 3 ln D)",
    "DifferentialEvolution": "evosax DE",
    "PSO": "evosax PSO",
}


def per_function(best_rows, seeds):
    """Split a flat function-major list into {function: [per seed]}."""
    n = len(seeds)
    return {f: best_rows[i * n : (i + 1) * n] for i, f in enumerate(FUNCTIONS)}


def suite_score(results_by_dim):
    """Mean over functions, dims and seeds of log10(max(f - f_opt, SOLVED))."""
    logs = [
        math.log10(max(v, SOLVED))
        for by_fn in results_by_dim.values()
        for values in by_fn.values()
        for v in values
    ]
    return statistics.fmean(logs)


def axis_value(axis, k):
    """The grid point ``k`` steps from the axis' starting centre."""
    return float(f"{axis['center'] * axis['factor'] ** k:.6g}")


def axis_ok(axis, k):
    lo, hi = axis["bounds"]
    return lo < axis_value(axis, k) <= hi


def grid_steps(axis, k):
    """Three steps centred on ``k``, shifted down when the top one passes a bound."""
    steps = [k - 1, k, k + 1]
    while not axis_ok(axis, steps[-1]):
        steps = [v - 1 for v in steps]
    return steps


def run_suite(worker, algo, settings, seeds, dims):
    """{dim: [per setting {function: [per seed]}]}, evaluations per dim."""
    out, evals = {}, {}
    for dim in dims:
        reply = worker.ask(
            op="suite", algo=algo, dim=dim, settings=settings, seeds=seeds
        )
        out[dim] = [per_function(row, seeds) for row in reply["best"]]
        evals[str(dim)] = reply["evaluations"]
    return out, evals


def tune(worker, algo, axes, tune_seeds, dims, max_rounds, log):
    """Grid rule: 3x3 grid; a best on a movable edge recentres the grid; repeat."""
    centers = dict.fromkeys(axes, 0)  # steps from each axis' starting centre
    rounds, best_overall = [], None
    for round_index in range(max_rounds):
        steps = {name: grid_steps(axes[name], centers[name]) for name in axes}
        grid = {
            name: [axis_value(axes[name], k) for k in ks] for name, ks in steps.items()
        }
        combos = list(itertools.product(*steps.values()))
        settings = [
            {
                name: axis_value(axes[name], k)
                for name, k in zip(axes, combo, strict=True)
            }
            for combo in combos
        ]
        results, _ = run_suite(worker, algo, settings, tune_seeds, dims)
        scores = [
            suite_score({dim: results[dim][i] for dim in dims})
            for i in range(len(settings))
        ]
        winner = min(range(len(settings)), key=scores.__getitem__)
        chosen = settings[winner]
        moved = {}
        for name, k in zip(axes, combos[winner], strict=True):
            index = steps[name].index(k)
            outward = -1 if index == 0 else 1
            if index in (0, 2) and axis_ok(axes[name], k + outward):
                moved[name] = k
        rounds.append(
            {
                "round": round_index + 1,
                "grid": grid,
                "tuning_scores": [
                    {"setting": s, "score": sc}
                    for s, sc in zip(settings, scores, strict=True)
                ],
                "winner": chosen,
                "winner_score": scores[winner],
                "edges_moved": sorted(moved),
            }
        )
        log(
            f"  {algo} round {round_index + 1}: {grid} -> {chosen} "
            f"({scores[winner]:.3f})" + (f", moving {sorted(moved)}" if moved else "")
        )
        if best_overall is None or scores[winner] < best_overall[1]:
            best_overall = (chosen, scores[winner])
        if not moved:
            break
        centers.update(moved)
    final_on_edge = bool(rounds[-1]["edges_moved"])
    return {
        "axes": {n: {**a, "bounds": list(a["bounds"])} for n, a in axes.items()},
        "tuning_seeds": tune_seeds,
        "score": "mean over functions, dims and tuning seeds of "
        "log10(max(f - f_opt, 1e-8))",
        "rounds": rounds,
        "chosen": best_overall[0],
        "chosen_tuning_score": best_overall[1],
        "still_on_edge_after_max_rounds": final_on_edge,
    }


def paired_wins(a, b):
    """Seeds (paired by instance) on which a is lower than b; both solved = tie."""
    wins = 0
    for x, y in zip(a, b, strict=True):
        if max(x, SOLVED) < max(y, SOLVED):
            wins += 1
    return wins


def verdicts(table, seeds):
    """Per function: best library by median, and whether it beats every other one."""
    out = {}
    for fn in FUNCTIONS:
        med = {
            lib: statistics.median(max(v, SOLVED) for v in table[lib][fn])
            for lib in table
        }
        order = sorted(med, key=med.__getitem__)
        first, second = order[0], order[1]
        wins = paired_wins(table[first][fn], table[second][fn])
        # Two-sided sign test over n paired seeds at the 5% level: n = 10 needs 9.
        need = (
            min(k for k in range(len(seeds) + 1) if _sign_p(k, len(seeds)) < 0.05)
            if len(seeds) >= 6
            else len(seeds)
        )
        clear = wins >= need
        tied = [lib for lib in order if med[lib] == med[first]]
        out[fn] = {
            "medians": med,
            "best": first,
            "runner_up": second,
            "best_beats_runner_up_on": wins,
            "of_seeds": len(seeds),
            "clear": clear and len(tied) == 1,
            "tied_at_best": tied,
        }
    return out


def _sign_p(k, n):
    """Two-sided sign-test p-value of k or more successes out of n."""
    tail = sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n
    return min(1.0, 2 * tail)


def main(args):
    python_peer = peer_python(args)
    ours = Worker("ours", sys.executable, args)
    peer = Worker("evosax", python_peer, args)
    by_kind = {"ours": ours, "evosax": peer}
    started = time.time()

    def log(msg):
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    result = {
        "benchmark": "convergence_jax.evolution.ga vs evosax SimpleGA, CMA_ES, DE, PSO",
        "machine": machine_info(),
        "versions": {"convergence_jax": ours.info, "evosax": peer.info},
        "load_average_start": os.getloadavg(),
    }
    log(json.dumps(result["versions"]))

    # ---- speed: compile once, then alternate timed runs
    speed_workers = {
        "ours_defaults": ours, "ours_dense": ours, "ours_dense_erfinv": ours,
        "evosax_simplega": peer,
    }  # fmt: skip
    compile_s = {
        v: w.ask(op="compile", variant=v)["seconds"] for v, w in speed_workers.items()
    }
    for v, w in speed_workers.items():  # one untimed warm-up run each
        w.ask(op="time", variant=v, seed=0)
    times = {v: [] for v in speed_workers}
    loads = []
    for rep in range(args.repeats):
        order = list(speed_workers.items())
        order = order[rep % len(order) :] + order[: rep % len(order)]
        if rep % 2:
            order.reverse()
        for v, w in order:
            times[v].append(w.ask(op="time", variant=v, seed=rep + 1)["seconds"])
        loads.append(os.getloadavg()[0])
    speed = {
        "problem": {
            "function": "rastrigin (unshifted), minimize",
            "dim": args.speed_dim,
            "population": args.speed_population,
            "generations": args.speed_generations,
        },
        "work_per_generation": WORK,
        "load_average_during": summarize(loads),
    }
    for v in speed_workers:
        speed[v] = {
            "compile_seconds": compile_s[v],
            "run_seconds": summarize(times[v]),
            "generations_per_second": summarize(
                [args.speed_generations / t for t in times[v]]
            ),
        }
        log(
            f"{v:16s} compile {compile_s[v]:.2f}s  "
            f"{speed[v]['generations_per_second']['median']:.0f} generations/s"
        )
    for v in ("ours_defaults", "ours_dense", "ours_dense_erfinv"):
        paired = [
            e / o for o, e in zip(times[v], times["evosax_simplega"], strict=True)
        ]
        speed[f"ratio_{v}_vs_evosax"] = {
            "ratio_of_medians": speed[v]["generations_per_second"]["median"]
            / speed["evosax_simplega"]["generations_per_second"]["median"],
            "paired": summarize(paired),
            # The stricter range: one side's slowest run against the other's
            # fastest, both ways.
            "range": [
                min(times["evosax_simplega"]) / max(times[v]),
                max(times["evosax_simplega"]) / min(times[v]),
            ],
        }
    noise = ours.ask(op="noise", repeats=args.repeats)
    speed["noise_draw_seconds"] = {k: summarize(v) for k, v in noise.items()}
    speed["noise_note"] = NOISE
    result["speed"] = speed
    if args.speed_only:
        for w in by_kind.values():
            w.close()
        return result

    # ---- quality at equal evaluations, defaults
    dims = args.dims
    eval_seeds = list(range(1000, 1000 + args.eval_seeds))
    tune_seeds = list(range(2000, 2000 + args.tune_seeds))
    quality = {
        "functions": list(FUNCTIONS),
        "dims": dims,
        "population": args.population,
        "budget": f"{args.budget_per_dim} * D evaluations per run",
        "eval_seeds": eval_seeds,
        "tune_seeds": tune_seeds,
        "metric": "f(best) - f_opt, best over the run; below 1e-8 counts as solved",
        "defaults": {},
        "evaluations": {},
    }
    defaults = {}
    for algo, kind in ALGORITHMS.items():
        log(f"defaults: {algo}")
        res, evals = run_suite(by_kind[kind], algo, [{}], eval_seeds, dims)
        defaults[algo] = {dim: res[dim][0] for dim in dims}
        quality["evaluations"][algo] = evals
    quality["defaults"] = {str(d): {a: defaults[a][d] for a in defaults} for d in dims}
    quality["defaults_verdicts"] = {
        str(d): verdicts({a: defaults[a][d] for a in defaults}, eval_seeds)
        for d in dims
    }

    # ---- tuning (tuning seeds), then the winners on the evaluation seeds
    tuned, tuning = {}, {}
    for algo, axes in TUNING.items():
        kind = ALGORITHMS[algo]
        log(f"tuning: {algo}")
        if "elite_ratio" in axes:  # int(elite_ratio * P) parents, at least one
            lo, hi = axes["elite_ratio"]["bounds"]
            bounds = (max(lo, 1.0 / args.population), hi)
            axes = {**axes, "elite_ratio": {**axes["elite_ratio"], "bounds": bounds}}
        tuning[algo] = tune(
            by_kind[kind], algo, axes, tune_seeds, dims, args.max_rounds, log
        )
        res, _ = run_suite(
            by_kind[kind], algo, [tuning[algo]["chosen"]], eval_seeds, dims
        )
        tuned[algo] = {dim: res[dim][0] for dim in dims}
    quality["tuning"] = tuning
    quality["tuned"] = {str(d): {a: tuned[a][d] for a in tuned} for d in dims}
    quality["tuned_verdicts"] = {
        str(d): verdicts({a: tuned[a][d] for a in tuned}, eval_seeds) for d in dims
    }
    quality["tuned_scores_on_eval_seeds"] = {a: suite_score(tuned[a]) for a in tuned}
    quality["default_scores_on_eval_seeds"] = {
        a: suite_score(defaults[a]) for a in defaults
    }
    result["quality"] = quality
    result["load_average_end"] = os.getloadavg()
    result["wall_seconds"] = time.time() - started
    for w in by_kind.values():
        w.close()
    return result


# -------------------------------------------------------------------- markdown


def _fmt(v):
    if v <= SOLVED:
        return "0 (solved)"
    if v >= 1000 or v < 0.01:
        return f"{v:.2e}"
    return f"{v:.3g}"


def _ratio_cell(r):
    """Bold only when the whole min..max range lies on one side of 1.0x."""
    p, (lo, hi) = r["paired"], r["range"]
    text = (
        f"{r['ratio_of_medians']:.2f}x (range {lo:.2f} .. {hi:.2f}; paired "
        f"{p['min']:.2f} .. {p['median']:.2f} .. {p['max']:.2f})"
    )
    return f"**{text}**" if lo > 1.0 or hi < 1.0 else f"{text}, a tie"


def _quality_table(table, verdict, seeds, algos):
    head = " | ".join(LABELS[a] for a in algos)
    lines = [
        f"| function | {head} | best (paired wins vs runner-up) | ours lower than "
        "SimpleGA on |",
        "|---|" + "---:|" * len(algos) + "---|---:|",
    ]
    for fn in FUNCTIONS:
        v = verdict[fn]
        cells = []
        for a in algos:
            cell = _fmt(statistics.median(table[a][fn]))
            cells.append(f"**{cell}**" if a in v["tied_at_best"] else cell)
        if len(v["tied_at_best"]) > 1:
            call = "tie: " + ", ".join(LABELS[a] for a in v["tied_at_best"])
        else:
            call = (
                f"{LABELS[v['best']]} ({v['best_beats_runner_up_on']}/{v['of_seeds']} "
                f"vs {LABELS[v['runner_up']]})"
                + ("" if v["clear"] else ", not significant: a tie")
            )
        ours_lower = paired_wins(table["convergence_jax"][fn], table["SimpleGA"][fn])
        simple_lower = paired_wins(table["SimpleGA"][fn], table["convergence_jax"][fn])
        duel = f"{ours_lower}/{len(seeds)}" + (
            f" (SimpleGA lower on {simple_lower})" if simple_lower else ""
        )
        lines.append(f"| {fn} | " + " | ".join(cells) + f" | {call} | {duel} |")
    return lines


def _tally(verdicts_by_dim):
    """Cells (function x dim) each library wins outright, and shares the best of."""
    wins, shared = {}, {}
    for verdict in verdicts_by_dim.values():
        for v in verdict.values():
            if len(v["tied_at_best"]) > 1:
                sharing = v["tied_at_best"]
            elif not v["clear"]:
                sharing = [v["best"], v["runner_up"]]
            else:
                wins[v["best"]] = wins.get(v["best"], 0) + 1
                continue
            for a in sharing:
                shared[a] = shared.get(a, 0) + 1
    return wins, shared


def _tally_line(verdicts_by_dim, algos):
    wins, shared = _tally(verdicts_by_dim)
    total = sum(len(v) for v in verdicts_by_dim.values())
    parts = [
        f"{LABELS[a]} {wins.get(a, 0)} won, {shared.get(a, 0)} tied for best"
        for a in algos
    ]
    return f"Of {total} function x dimension cells: " + "; ".join(parts) + "."


def markdown(result) -> str:
    s, m = result["speed"], result["machine"]
    ours_v, peer_v = result["versions"]["convergence_jax"], result["versions"]["evosax"]
    device = m["gpu"] if ours_v["platform"] == "gpu" else f"CPU ({m['cpu']})"
    sp = s["problem"]
    rounds = len(s["evosax_simplega"]["run_seconds"]["values"])
    load = s["load_average_during"]
    lines = [
        "# convergence_jax GA vs evosax (SimpleGA, CMA_ES, DE, PSO)",
        "",
        f"Device: {device}; {m['cores']} cores; jax {ours_v['jax']} (ours), "
        f"jax {peer_v['jax']} + evosax {peer_v.get('evosax')} (peer). "
        f"Load average at start / end: {result['load_average_start'][0]:.2f} / "
        f"{result.get('load_average_end', result['load_average_start'])[0]:.2f}.",
        "",
        "## GA speed (whole run as one jitted lax.scan, steady state)",
        "",
        f"Rastrigin (unshifted), D = {sp['dim']}, population {sp['population']}, "
        f"{sp['generations']} generations; {rounds} alternating timed runs each; load "
        f"average during the timed runs {load['min']:.2f} .. {load['max']:.2f}.",
        "",
        "| run | work per generation | generations / s (median) | min .. max "
        "| compile (s) |",
        "|---|---|---:|---:|---:|",
    ]
    for v in WORK:
        g = s[v]["generations_per_second"]
        lines.append(
            f"| {v} | {s['work_per_generation'][v]} | {g['median']:.0f} | "
            f"{g['min']:.0f} .. {g['max']:.0f} | {s[v]['compile_seconds']:.2f} |"
        )
    nd = s["noise_draw_seconds"]
    lines += [
        "",
        "Ours / evosax SimpleGA, generations per second: ratio of medians; range "
        "= one side's slowest run against the other's fastest, both ways; paired = "
        "per-round ratios min .. median .. max. Bold only when the range excludes "
        "1.0x:",
        "",
        "- defaults (ours mutates 5% of genes with a 16-bit table normal, evosax "
        "every gene with a full-precision normal): "
        + _ratio_cell(s["ratio_ours_defaults_vs_evosax"]),
        "- same mutation density (ours with mutation_rate = 1, still the 16-bit "
        "table normal): " + _ratio_cell(s["ratio_ours_dense_vs_evosax"]),
        "- same work (ours with mutation_rate = 1 and jax.random.normal's erfinv "
        "construction in place of the table): "
        + _ratio_cell(s["ratio_ours_dense_erfinv_vs_evosax"]),
        "",
        f"{s['noise_note']} One [{sp['population']}, {sp['dim']}] draw: table "
        f"{nd['table_16bit']['median'] * 1e6:.0f} µs, jax.random.normal "
        f"{nd['jax_random_normal']['median'] * 1e6:.0f} µs (medians).",
    ]
    if "quality" not in result:
        return "\n".join(lines) + "\n"
    q = result["quality"]
    algos = list(ALGORITHMS)
    ev = q["evaluations"]
    lines += [
        "",
        "## Quality at equal evaluations",
        "",
        f"Functions: {', '.join(q['functions'])} (BBOB-style definitions in "
        "`benchmarks/evolution_ga.py`, one JAX implementation for every library; each "
        "seed is a new instance: optimum shifted uniformly in [-4, 4]^D ([-3, 3]^D for "
        "Rosenbrock), a random rotation for the rotated ones, f_opt = 0). Budget "
        + ", ".join(
            f"D = {d}: {ev['convergence_jax'][str(d)]:,} evaluations" for d in q["dims"]
        )
        + " per run (CMA_ES with λ = 4 + 3 ln D: "
        + ", ".join(f"{ev['CMA_ES_textbook'][str(d)]:,}" for d in q["dims"])
        + f"); population {q['population']} for the population-based methods and "
        "CMA_ES (λ = P), all of them starting from the same uniform initial "
        "population in [-5, 5]^D (CMA-ES: its mean at a uniform random point of "
        "that box, evosax's std_init = 1).",
        "",
        f"Cells: median over {len(q['eval_seeds'])} evaluation seeds "
        f"{q['eval_seeds'][0]}..{q['eval_seeds'][-1]} of f(best) - f_opt (lower is "
        "better; below 1e-8 = solved). Bold: best median. The last column counts "
        "the seeds (paired by instance) on which the best beats the runner-up; "
        "fewer than a two-sided sign test at 5% needs is called a tie.",
    ]
    for d in q["dims"]:
        key = str(d)
        lines += ["", f"### Defaults, D = {d}", ""]
        lines += _quality_table(
            q["defaults"][key], q["defaults_verdicts"][key], q["eval_seeds"], algos
        )
    lines += ["", _tally_line(q["defaults_verdicts"], algos)]
    lines += [
        "",
        "Suite score with defaults on the evaluation seeds (mean log10 of "
        "max(f - f_opt, 1e-8) over functions, dims and seeds; lower is better): "
        + ", ".join(
            f"{LABELS[a]} {v:.2f}" for a, v in q["default_scores_on_eval_seeds"].items()
        )
        + ".",
    ]
    tuned_algos = list(TUNING)
    lines += [
        "",
        "## Tuned (same grid rule for every library tuned)",
        "",
        f"Each library tuned gets a 3x3 grid (9 settings a round) of two parameters, "
        f"scored on tuning seeds {q['tune_seeds'][0]}..{q['tune_seeds'][-1]} only "
        "(mean log10 of max(f - f_opt, 1e-8) over all functions, both dims and the "
        "tuning seeds); a best on a grid edge that is not a hard bound moves the grid "
        "to centre on it and the round is re-run. The winner is then run on the "
        "evaluation seeds. Rounds (tuning-seed scores):",
        "",
        "| library | round | grid | winner | tuning score | moved |",
        "|---|---:|---|---|---:|---|",
    ]
    for a in tuned_algos:
        t = q["tuning"][a]
        for r in t["rounds"]:
            grid = "; ".join(f"{k} {v}" for k, v in r["grid"].items())
            win = ", ".join(f"{k}={v}" for k, v in r["winner"].items())
            moved = ", ".join(r["edges_moved"]) or "—"
            at_bound = [
                k
                for k, v in r["winner"].items()
                if r["grid"][k].index(v) in (0, 2) and k not in r["edges_moved"]
            ]
            if at_bound:
                moved += " (" + ", ".join(at_bound) + " on a hard bound's edge)"
            lines.append(
                f"| {LABELS[a]} | {r['round']} | {grid} | {win} | "
                f"{r['winner_score']:.2f} | {moved} |"
            )
        if t["still_on_edge_after_max_rounds"]:
            lines.append(
                f"| {LABELS[a]} | | still on an edge after the last round | | | |"
            )
    for d in q["dims"]:
        key = str(d)
        lines += ["", f"### Tuned, D = {d}", ""]
        lines += _quality_table(
            q["tuned"][key], q["tuned_verdicts"][key], q["eval_seeds"], tuned_algos
        )
    lines += ["", _tally_line(q["tuned_verdicts"], tuned_algos)]
    lines += [
        "",
        "Suite score tuned, on the evaluation seeds: "
        + ", ".join(
            f"{LABELS[a]} {v:.2f}" for a, v in q["tuned_scores_on_eval_seeds"].items()
        )
        + ".",
    ]
    lines += [
        "",
        f"Wall time of the whole run: {result['wall_seconds'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["ours", "evosax"], help=argparse.SUPPRESS)
    p.add_argument("--population", type=int, default=100)
    p.add_argument(
        "--dims", type=lambda s: [int(v) for v in s.split(",")], default=[10, 30]
    )
    p.add_argument("--speed-population", type=int, default=1024)
    p.add_argument("--speed-dim", type=int, default=100)
    p.add_argument("--speed-generations", type=int, default=500)
    p.add_argument("--repeats", type=int, default=9, help="timed runs per speed row")
    p.add_argument(
        "--budget-per-dim", type=int, default=BUDGET_PER_DIM,
        help="evaluations per quality run = this * D",
    )  # fmt: skip
    p.add_argument("--eval-seeds", type=int, default=10)
    p.add_argument("--tune-seeds", type=int, default=3)
    p.add_argument("--max-rounds", type=int, default=8, help="tuning rounds at most")
    p.add_argument("--peer-python", help="interpreter with evosax installed")
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. _gpu)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="tiny smoke run, no files")
    p.add_argument("--speed-only", action="store_true", help="print speed, no files")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    if args.worker:
        worker_main(args.worker, args)
        sys.exit(0)
    if args.quick:
        args.population, args.dims, args.budget_per_dim = 16, [4], 100
        args.speed_population, args.speed_dim, args.speed_generations = 64, 10, 20
        args.repeats, args.eval_seeds, args.tune_seeds, args.max_rounds = 3, 2, 1, 2
    result = main(args)
    text = markdown(result)
    print(text)
    if not (args.quick or args.speed_only):
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"evolution_ga{args.tag}"
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{name}.md").write_text(text)
        print(f"wrote {args.out / name}.json and .md")
