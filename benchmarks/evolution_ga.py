"""convergence_jax.evolution.ga vs evosax SimpleGA on Rastrigin, side by side.

Both libraries run the same problem in the same session on the same machine:
Rastrigin, D = 100, population 1024, the initial population drawn uniformly from
[-5.12, 5.12]^D with the same key for both, every run one jitted ``lax.scan``.

* Speed: generations per second of a whole run (steady state, after compilation),
  measured in alternation between the two libraries, each in its own worker process;
  compile time is reported separately.
* Quality at equal evaluations (``generations * population``, the initial population
  included): best fitness with each library's defaults, and after a small sweep of
  the same size for both (18 settings, tuned on 2 seeds, reported on 8 fresh seeds).

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
LOW, HIGH = -5.12, 5.12

# 18 settings each, centred on each library's best from the previous run (a best
# on a grid edge moves the grid). Run 1: ours rate [0.01, 0.03, 0.1] x std [0.1, 0.3,
# 1] x tournament [3, 5] -> (0.01, 1, 5); evosax std [0.1, 0.3, 1] x crossover [0,
# 0.5, 0.9] x elite [0.1, 0.5] -> (0.1, 0.5, 0.1). Run 2: ours [0.005, 0.01, 0.02] x
# [0.5, 1, 2] x [5, 8] -> (0.005, 0.5, 8): 0.03; evosax std [0.01, 0.03, 0.1] ->
# (0.01, 0.5, 0.5): 18.3. Run 3: ours [0.0025, 0.005, 0.01] x [0.25, 0.5, 1] x [5, 8]
# -> (0.005, 0.5, 8): 0.03; evosax std [0.003, 0.01, 0.03] -> (0.003, 0.5, 0.5): 17.7.
# Run 4 (this grid): ours -> (0.005, 0.5, 8): 0.03; evosax -> (0.003, 0.5, 0.75): 20.0.
OUR_SWEEP = {
    "mutation_rate": [0.0025, 0.005, 0.01],
    "mutation_std": [0.25, 0.5, 1.0],
    "tournament_size": [8, 16],
}
EVOSAX_SWEEP = {
    "std": [0.001, 0.003, 0.01],
    "crossover_rate": [0.0, 0.5, 0.9],
    "elite_ratio": [0.5, 0.75],
}

# --------------------------------------------------------------------- workers


def _rastrigin(x):
    import jax.numpy as jnp

    return 10.0 * x.shape[-1] + jnp.sum(x**2 - 10.0 * jnp.cos(2 * jnp.pi * x), -1)


def _initial_population(key, size, dim):
    import jax

    return jax.random.uniform(key, (size, dim), minval=LOW, maxval=HIGH)


class OursWorker:
    """convergence_jax.evolution.ga, minimizing."""

    def __init__(self, size, dim, generations):
        import jax
        import jax.numpy as jnp

        from convergence_jax import evolution

        self.jax, self.jnp = jax, jnp
        self.ga = evolution.ga(jnp.zeros(dim), size, maximize=False)
        self.size, self.dim, self.generations = size, dim, generations

        def run(key, params):
            key_pop, key_run = jax.random.split(key)
            population = _initial_population(key_pop, size, dim)
            state, _ = evolution.run(
                key_run, self.ga, params, _rastrigin, generations, population=population
            )
            return state.best_fitness

        self.run = run
        self.timed = None

    def settings(self, sweep):
        if not sweep:
            return [{}]
        combos = itertools.product(*sweep.values())
        return [dict(zip(sweep, combo, strict=True)) for combo in combos]

    def compile(self):
        jax = self.jax
        start = time.perf_counter()
        lowered = jax.jit(self.run).lower(jax.random.key(0), self.ga.default_params)
        self.timed = lowered.compile()
        return time.perf_counter() - start

    def time_run(self, seed):
        start = time.perf_counter()
        best = self.timed(self.jax.random.key(seed), self.ga.default_params)
        best = float(self.jax.block_until_ready(best))
        return time.perf_counter() - start, best

    def quality(self, sweep, seeds):
        """Best fitness [settings, seeds]; one program vmapped over Params and keys."""
        jax, jnp = self.jax, self.jnp
        settings = self.settings(sweep)
        rows = [self.ga.default_params.replace(**s) for s in settings]
        batch = jax.tree.map(lambda *x: jnp.stack(x), *rows)
        keys = jnp.stack([jax.random.key(s) for s in seeds])
        fn = jax.jit(jax.vmap(jax.vmap(self.run, (0, None)), (None, 0)))
        best = jax.device_get(fn(keys, batch))
        return settings, [[float(v) for v in row] for row in best]


class EvosaxWorker:
    """evosax SimpleGA (minimizes)."""

    def __init__(self, size, dim, generations):
        import jax
        import jax.numpy as jnp
        import optax
        from evosax.algorithms import SimpleGA

        self.jax, self.jnp, self.optax = jax, jnp, optax
        self.SimpleGA = SimpleGA
        from importlib.metadata import version

        self.version = version("evosax")
        self.size, self.dim, self.generations = size, dim, generations
        self.timed = None

    def make(self, std=None, elite_ratio=None):
        jax, jnp = self.jax, self.jnp
        kwargs = {}
        if std is not None:
            kwargs["std_schedule"] = self.optax.constant_schedule(std)
        es = self.SimpleGA(self.size, jnp.zeros(self.dim), **kwargs)
        if elite_ratio is not None:
            es.elite_ratio = elite_ratio
        size, dim, generations = self.size, self.dim, self.generations

        def run(key, params):
            key_pop, key_run = jax.random.split(key)
            key_init, key_loop = jax.random.split(key_run)
            population = _initial_population(key_pop, size, dim)
            state = es.init(key_init, population, _rastrigin(population), params)

            def step(state, key):
                key_ask, key_tell = jax.random.split(key)
                x, state = es.ask(key_ask, state, params)
                state, _ = es.tell(key_tell, x, _rastrigin(x), state, params)
                return state, None

            keys = jax.random.split(key_loop, generations - 1)
            state, _ = jax.lax.scan(step, state, keys)
            return state.best_fitness

        return es, run

    def compile(self):
        jax = self.jax
        es, run = self.make()
        self.params = es.default_params
        start = time.perf_counter()
        self.timed = jax.jit(run).lower(jax.random.key(0), self.params).compile()
        return time.perf_counter() - start

    def time_run(self, seed):
        start = time.perf_counter()
        best = float(
            self.jax.block_until_ready(
                self.timed(self.jax.random.key(seed), self.params)
            )
        )
        return time.perf_counter() - start, best

    def quality(self, sweep, seeds):
        jax, jnp = self.jax, self.jnp
        keys = jnp.stack([jax.random.key(s) for s in seeds])
        if not sweep:
            es, run = self.make()
            best = jax.jit(jax.vmap(run, (0, None)))(keys, es.default_params)
            return [{}], [[float(v) for v in jax.device_get(best)]]
        settings, results = [], []
        # std and elite_ratio are static in evosax (one program each); crossover_rate
        # is a Param, vmapped.
        for std, elite_ratio in itertools.product(sweep["std"], sweep["elite_ratio"]):
            es, run = self.make(std, elite_ratio)
            rates = sweep["crossover_rate"]
            params = es.default_params.replace(crossover_rate=jnp.asarray(rates))
            fn = jax.jit(jax.vmap(jax.vmap(run, (0, None)), (None, 0)))
            best = jax.device_get(fn(keys, params))
            for rate, row in zip(rates, best, strict=True):
                settings.append(
                    {"std": std, "crossover_rate": rate, "elite_ratio": elite_ratio}
                )
                results.append([float(v) for v in row])
        return settings, results


def worker_main(kind, size, dim, generations):
    """Answer one JSON command per stdin line with one JSON line on stdout."""
    worker_cls = {"ours": OursWorker, "evosax": EvosaxWorker}[kind]
    worker = worker_cls(size, dim, generations)
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
            reply = {"seconds": worker.compile()}
        elif cmd["op"] == "time":
            seconds, best = worker.time_run(cmd["seed"])
            reply = {"seconds": seconds, "best": best}
        elif cmd["op"] == "quality":
            settings, best = worker.quality(cmd["sweep"], cmd["seeds"])
            reply = {"settings": settings, "best": best}
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


class Worker(JsonWorker):
    def __init__(self, kind, python, args):
        env = worker_env()
        argv = [
            python, __file__, "--worker", kind,
            "--population", str(args.population),
            "--dim", str(args.dim),
            "--generations", str(args.generations),
        ]  # fmt: skip
        super().__init__(argv, env)


def tune_and_evaluate(worker, sweep, tune_seeds, eval_seeds):
    reply = worker.ask(op="quality", sweep=sweep, seeds=tune_seeds)
    settings, best = reply["settings"], reply["best"]
    means = [statistics.fmean(row) for row in best]
    chosen = settings[min(range(len(means)), key=means.__getitem__)]
    final = worker.ask(
        op="quality", sweep={k: [v] for k, v in chosen.items()}, seeds=eval_seeds
    )
    return {
        "sweep": sweep,
        "tuning_seeds": tune_seeds,
        "tuning_mean_best": [
            {"setting": s, "mean_best": m} for s, m in zip(settings, means, strict=True)
        ],
        "chosen": chosen,
        "best_fitness": summarize(final["best"][0]),
    }


def main(args):
    python_peer = peer_python(args)
    ours = Worker("ours", sys.executable, args)
    peer = Worker("evosax", python_peer, args)
    workers = {"convergence_jax": ours, "evosax": peer}
    result = {
        "benchmark": "GA on Rastrigin: convergence_jax.evolution.ga vs evosax SimpleGA",
        "problem": {
            "function": "rastrigin, minimize, optimum 0",
            "dim": args.dim,
            "population": args.population,
            "generations": args.generations,
            "evaluations_per_run": args.population * args.generations,
            "initial_population": f"uniform [{LOW}, {HIGH}]^D, same key for both",
        },
        "machine": machine_info(),
        "versions": {"convergence_jax": ours.info, "evosax": peer.info},
        "load_average_start": os.getloadavg(),
    }
    print(json.dumps(result["versions"], indent=1))

    # ---- speed: compile once, then alternate timed runs
    compile_s = {name: w.ask(op="compile")["seconds"] for name, w in workers.items()}
    for w in workers.values():  # one untimed warm-up run each
        w.ask(op="time", seed=0)
    times = {name: [] for name in workers}
    for rep in range(args.repeats):
        order = list(workers.items())
        if rep % 2:
            order.reverse()
        for name, w in order:
            times[name].append(w.ask(op="time", seed=rep + 1)["seconds"])
    speed = {}
    for name in workers:
        gens = [args.generations / t for t in times[name]]
        speed[name] = {
            "compile_seconds": compile_s[name],
            "run_seconds": summarize(times[name]),
            "generations_per_second": summarize(gens),
        }
        med = speed[name]["generations_per_second"]["median"]
        print(f"{name:16s} compile {compile_s[name]:.2f}s  {med:.0f} generations/s")
    paired = [
        e / o for o, e in zip(times["convergence_jax"], times["evosax"], strict=True)
    ]
    speed["ratio_median_generations_per_second"] = (
        speed["convergence_jax"]["generations_per_second"]["median"]
        / speed["evosax"]["generations_per_second"]["median"]
    )
    speed["ratio_paired_median"] = statistics.median(paired)
    result["speed"] = speed
    ratio = speed["ratio_median_generations_per_second"]
    print(f"speed ratio (ours / evosax): {ratio:.2f}")

    if args.speed_only:
        for w in workers.values():
            w.close()
        return result

    # ---- quality at equal evaluations
    eval_seeds = list(range(1000, 1000 + args.eval_seeds))
    tune_seeds = list(range(2000, 2000 + args.tune_seeds))
    quality = {"eval_seeds": eval_seeds}
    for name, w in workers.items():
        reply = w.ask(op="quality", sweep={}, seeds=eval_seeds)
        quality[name] = {"defaults": {"best_fitness": summarize(reply["best"][0])}}
        sweep = OUR_SWEEP if name == "convergence_jax" else EVOSAX_SWEEP
        quality[name]["tuned"] = tune_and_evaluate(w, sweep, tune_seeds, eval_seeds)
        d = quality[name]["defaults"]["best_fitness"]["mean"]
        t = quality[name]["tuned"]["best_fitness"]["mean"]
        print(f"{name:16s} defaults {d:.2f}   tuned {t:.2f}")
    result["quality"] = quality
    result["load_average_end"] = os.getloadavg()
    for w in workers.values():
        w.close()
    return result


def markdown(result) -> str:
    s, q, m = result["speed"], result["quality"], result["machine"]
    prob = result["problem"]
    ours_v, peer_v = result["versions"]["convergence_jax"], result["versions"]["evosax"]
    device = m["gpu"] if ours_v["platform"] == "gpu" else f"CPU ({m['cpu']})"
    lines = [
        "# GA on Rastrigin: convergence_jax vs evosax SimpleGA",
        "",
        f"Rastrigin, D = {prob['dim']}, population {prob['population']}, "
        f"{prob['generations']} generations = {prob['evaluations_per_run']:,} "
        "evaluations per run (initial population included), minimizing (optimum 0). "
        "Same initial population for both (uniform in [-5.12, 5.12]^D, same key).",
        "",
        f"Device: {device}; {m['cores']} cores; jax {ours_v['jax']} (ours), "
        f"jax {peer_v['jax']} + evosax {peer_v.get('evosax')} (peer). "
        f"Load average at start / end: {result['load_average_start'][0]:.2f} / "
        f"{result['load_average_end'][0]:.2f}.",
        "",
        "## Speed (whole run as one jitted lax.scan, steady state)",
        "",
        "| library | generations / s (median) | min .. max | compile (s) |",
        "|---|---:|---:|---:|",
    ]
    for name in ("convergence_jax", "evosax"):
        g = s[name]["generations_per_second"]
        lines.append(
            f"| {name} | {g['median']:.0f} | {g['min']:.0f} .. {g['max']:.0f} | "
            f"{s[name]['compile_seconds']:.2f} |"
        )
    lines += [
        "",
        "Ratio of medians (ours / evosax): "
        f"**{s['ratio_median_generations_per_second']:.2f}x**; "
        f"median of paired ratios: {s['ratio_paired_median']:.2f}x "
        f"({len(s['evosax']['run_seconds']['values'])} alternating runs each).",
        "",
        "## Best fitness at equal evaluations (lower is better)",
        "",
        f"Mean (median) over {len(q['eval_seeds'])} seeds {q['eval_seeds'][0]}.."
        f"{q['eval_seeds'][-1]}. Tuned: the best of an 18-setting sweep per library "
        "(mean over 2 tuning seeds), re-run on the evaluation seeds.",
        "",
        "| library | defaults | tuned | tuned setting |",
        "|---|---:|---:|---|",
    ]
    for name in ("convergence_jax", "evosax"):
        d = q[name]["defaults"]["best_fitness"]
        t = q[name]["tuned"]["best_fitness"]
        chosen = ", ".join(f"{k}={v}" for k, v in q[name]["tuned"]["chosen"].items())
        lines.append(
            f"| {name} | {d['mean']:.2f} ({d['median']:.2f}) | "
            f"{t['mean']:.2f} ({t['median']:.2f}) | {chosen} |"
        )
    d_ratio = q["evosax"]["defaults"]["best_fitness"]["mean"] / max(
        q["convergence_jax"]["defaults"]["best_fitness"]["mean"], 1e-12
    )
    t_ratio = q["evosax"]["tuned"]["best_fitness"]["mean"] / max(
        q["convergence_jax"]["tuned"]["best_fitness"]["mean"], 1e-12
    )
    lines += [
        "",
        f"evosax / ours mean best fitness: defaults {d_ratio:.1f}x, "
        f"tuned {t_ratio:.1f}x.",
        "",
        "Sweeps: ours " + json.dumps(OUR_SWEEP) + " (vmapped over Params, one "
        "program); evosax " + json.dumps(EVOSAX_SWEEP) + " (std and elite_ratio are "
        "static in evosax, crossover_rate vmapped).",
        "",
    ]
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["ours", "evosax"], help=argparse.SUPPRESS)
    p.add_argument("--population", type=int, default=1024)
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--generations", type=int, default=500)
    p.add_argument("--repeats", type=int, default=9, help="timed runs per library")
    p.add_argument("--eval-seeds", type=int, default=8)
    p.add_argument("--tune-seeds", type=int, default=2)
    p.add_argument("--peer-python", help="interpreter with evosax installed")
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. _gpu)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="tiny smoke run, no files")
    p.add_argument("--speed-only", action="store_true", help="print speed, no files")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    if args.worker:
        worker_main(args.worker, args.population, args.dim, args.generations)
        sys.exit(0)
    if args.quick:
        args.population, args.dim, args.generations = 64, 10, 20
        args.repeats, args.eval_seeds, args.tune_seeds = 2, 2, 1
    result = main(args)
    if args.speed_only:
        sys.exit(0)
    text = markdown(result)
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"evolution_ga{args.tag}"
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{name}.md").write_text(text)
        print(f"wrote {args.out / name}.json and .md")
