"""The optimizer's own overhead: ``run_optimization`` against The Convergence 0.1.8 on
a trivial Python objective, same budget (480 objective calls: 10 generations x 48).

    python benchmarks/optimizer_overhead.py            # 15 alternating rounds
    python benchmarks/optimizer_overhead.py --rounds 7
    python benchmarks/optimizer_overhead.py --baseline-rev 3e42c55  # + the old loop

**The objective.** ``score(x, y, kind) = 1 - ((x - 0.3)^2 + (y + 0.2)^2) / 8 - p(kind)``
over x, y in [-1, 1] and kind in {a, b, c} (p = 0, 0.05, 0.1): a few arithmetic
operations, so what is timed is the optimizer around it. Each side gets the same
function through a wrapper of its calling convention (ours: ``f(config) -> dict``,
The Convergence's local function: ``f(**params) -> dict``) that counts its calls; every
run is checked to make exactly 480 calls.

**Ours.** ``run_optimization`` with ``objective.type: python`` on the default host loop
(a bounded pool of 4 worker threads, ``timeout_s`` 60), Thompson sampling + evolution
(``mab_evolution``): population 16, 48 evaluations per generation (every configuration
once, then 4 Thompson-sampling rounds of 8), 10 generations. Rows: ``ours`` without the
output folder (``write=False``: the optimizer alone); ``ours_written`` with it
(``write=True``: the evaluation journal and checkpoint every generation, results JSON,
``report.md`` with its matplotlib plot at the end); ``ours_p48``: population 48, 48
evaluations per generation (no Thompson rounds: the peer's shape), ``write=False``;
with ``--baseline-rev REV``, ``ours_before``: the package as of that git revision
(``git archive``, first on the worker's ``PYTHONPATH``), ``write=False``.

**The Convergence 0.1.8** (PyPI ``the-convergence``, in
``benchmarks/.venvs/the_convergence``, made by this script), run as its SDK documents:
``await convergence.sdk.run_optimization(ConvergenceConfig(...), local_function=f,
evaluator=e, test_cases=[one case])`` with ``api.name = "local_quad"`` (a ``local_``
name selects its ``LocalFunctionAdapter``), population 48, 10 generations, early
stopping off (its default stops after a generation whose best improves by < 0.01).
Its code (``optimization/runner.py``): per generation every configuration is run on
every test case, one after another on the event loop (``asyncio.gather`` of coroutines
around the synchronous call), each result scored by the evaluator through
``Evaluator.evaluate_with_aggregate`` (wrapped in a ``weave.op``: weave is one of its
dependencies) and progress printed with ``rich``; then ``EvolutionEngine.
evolve_population``: the 2 elites kept, the rest by crossover (rate 0.7) of two
tournament winners (tournaments of 12) or per-parameter mutation (rate 0.2) of one;
``random`` from the standard library. Its ``ThompsonSamplingStrategy`` is built but
never called in ``run()``: each configuration gets exactly one evaluation per
generation. At the end it saves the best config and the history to its default storage
(SQLite + JSON files under ``./data/optimization`` of the worker's temporary working
directory). Its printing goes to ``/dev/null``.

**Timing.** Each contender lives in its own worker process (imports, compilation and
one untimed warm-up run first); then rounds alternate between them, the order rotated
(``_timing.alternate``); a run is timed inside its worker (wall and CPU seconds) with a
new seed each round. Ratio = peer seconds / ours, with the range over both spreads; a
range that overlaps 1.0x is a tie.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
VENVS = ROOT / ".venvs"
NAME = "optimizer_overhead"
PEER_PACKAGES = ["the-convergence==0.1.8"]
GENERATIONS = 10
EVALUATIONS_PER_GENERATION = 48
BUDGET = GENERATIONS * EVALUATIONS_PER_GENERATION
PENALTY = {"a": 0.0, "b": 0.05, "c": 0.1}

# ---------------------------------------------------------------- the objective

CALLS = [0]


def score(x: float, y: float, kind: str) -> float:
    return 1.0 - ((x - 0.3) ** 2 + (y + 0.2) ** 2) / 8.0 - PENALTY[kind]


def ours_objective(config: dict) -> dict:
    CALLS[0] += 1
    return {"score": score(config["x"], config["y"], config["kind"])}


def peer_objective(**params) -> dict:
    CALLS[0] += 1
    return {"score": score(params["x"], params["y"], params["kind"])}


def peer_evaluator(prediction, expected, context) -> dict:
    return {"score": prediction["result"]["score"]}


# ----------------------------------------------------------------------- workers


def _ours_config(out: str, seed: int, population: int) -> dict:
    return {
        "search_space": {
            "x": {"type": "float", "min": -1.0, "max": 1.0},
            "y": {"type": "float", "min": -1.0, "max": 1.0},
            "kind": {"type": "categorical", "choices": list(PENALTY)},
        },
        "objective": {"type": "python", "target": f"{__file__}:ours_objective"},
        "metrics": {"score": {"goal": "maximize", "min": 0.0, "max": 1.0}},
        "optimizer": {
            "generations": GENERATIONS,
            "population_size": population,
            "evaluations_per_generation": EVALUATIONS_PER_GENERATION,
            "batch_size": 8,
            "seed": seed,
        },
        "output": {"dir": out},
    }


def worker_ours(population: int, write: bool):
    import jax

    from convergence_jax.optimize import run_optimization

    tmp = tempfile.TemporaryDirectory()
    counter = {}

    def run(seed: int) -> dict:
        out = os.path.join(tmp.name, f"run{seed}")
        start, cpu = time.perf_counter(), time.process_time()
        result = run_optimization(
            _ours_config(out, seed, population), progress=False, write=write
        )
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        # run_optimization imports the target file afresh each run (a new counter)
        module = sys.modules["_convergence_objective_optimizer_overhead"]
        same = counter.get("module") is module
        calls = module.CALLS[0] - (counter["before"] if same else 0)
        counter.update(module=module, before=module.CALLS[0])
        evaluations = sum(len(g["evaluations"]) for g in result.generations)
        return {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "calls": calls,
            "evaluations": evaluations,
            "best": result.best_reward,
        }

    info = {"jax": jax.__version__, "backend": jax.default_backend()}
    return info, run


def worker_peer():
    import asyncio
    import importlib.metadata
    import random

    from convergence.optimization.runner import OptimizationRunner
    from convergence.sdk import _convert_to_optimization_schema
    from convergence.types import (
        ApiConfig,
        ConvergenceConfig,
        EvaluationConfig,
        RunnerConfig,
        SearchSpaceConfig,
    )

    tmp = tempfile.TemporaryDirectory()
    os.chdir(tmp.name)  # its storage writes ./data/optimization
    os.makedirs("data/optimization", exist_ok=True)  # it does not make ./data itself
    config = ConvergenceConfig(
        # endpoint and token_env: demanded by its config validator, unused locally
        api=ApiConfig(
            name="local_quad", endpoint="local://quad", auth_token_env="UNUSED_KEY"
        ),
        search_space=SearchSpaceConfig(
            parameters={
                "x": {"type": "float", "min": -1.0, "max": 1.0, "step": 0.001},
                "y": {"type": "float", "min": -1.0, "max": 1.0, "step": 0.001},
                "kind": {"type": "categorical", "choices": list(PENALTY)},
            }
        ),
        runner=RunnerConfig(
            generations=GENERATIONS,
            population=EVALUATIONS_PER_GENERATION,
            early_stopping={"enabled": False},
        ),
        evaluation=EvaluationConfig(required_metrics=["score"], weights={"score": 1.0}),
    )

    def run(seed: int) -> dict:
        random.seed(seed)
        before = CALLS[0]
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            start, cpu = time.perf_counter(), time.process_time()
            # convergence.sdk.run_optimization(config, local_function=f, evaluator=e,
            # test_cases=...) minus its line `internal_config.local_function = f`,
            # which pydantic refuses ("OptimizationSchema" object has no field
            # "local_function"); set past pydantic's check instead.
            schema = _convert_to_optimization_schema(
                config, test_cases=[{"input": {}, "expected": {}, "meta": {}}]
            )
            object.__setattr__(schema, "local_function", peer_objective)
            runner = OptimizationRunner(
                schema, config_file_path=None, custom_evaluator_callable=peer_evaluator
            )
            result = asyncio.run(runner.run())
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "calls": CALLS[0] - before,
            "evaluations": len(result.all_results),
            "generations": result.generations_run,
            "best": result.best_score,
        }

    run.workdir = tmp  # kept alive: the working directory
    info = {"the-convergence": importlib.metadata.version("the-convergence")}
    return info, run


def worker_main(kind: str) -> None:
    sys.path.append(str(ROOT.parent))  # after PYTHONPATH: the baseline's tree wins
    real_stdout = sys.stdout  # the JSON lines; the libraries' printing goes aside
    with contextlib.redirect_stdout(sys.stderr):
        if kind == "peer":
            info, run = worker_peer()
        else:
            population = 48 if kind == "ours_p48" else 16
            info, run = worker_ours(population, write=kind == "ours_written")
            import convergence_jax

            info["package"] = str(Path(convergence_jax.__file__).parent)
        warm = run(10_000)  # compile / import / first-call costs, untimed
    real_stdout.write(json.dumps({**info, "warmup": warm}) + "\n")
    real_stdout.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            return
        with contextlib.redirect_stdout(sys.stderr):
            answer = run(cmd["seed"])
        real_stdout.write(json.dumps(answer) + "\n")
        real_stdout.flush()


# ------------------------------------------------------------------------ driver


def peer_python() -> Path:
    venv = VENVS / "the_convergence"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True
        )
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--worker", choices=["ours", "ours_before", "ours_written", "ours_p48", "peer"]
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--baseline-rev",
        help="also time convergence_jax as of this git revision (row ours_before)",
    )
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker)
        return

    sys.path.insert(0, str(ROOT))
    from _machine import machine_info
    from _timing import alternate, fmt_speedup, speedup
    from _worker import JsonWorker, worker_env

    machine = machine_info()
    env = worker_env(JAX_PLATFORMS="cpu")
    pythons = {
        "ours": sys.executable,
        "ours_written": sys.executable,
        "ours_p48": sys.executable,
        "peer": str(peer_python()),
    }
    envs = dict.fromkeys(pythons, env)
    baseline = rev = None
    if args.baseline_rev:
        rev = subprocess.run(
            ["git", "rev-parse", args.baseline_rev],
            cwd=ROOT.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        baseline = tempfile.TemporaryDirectory()
        archive = subprocess.run(
            ["git", "archive", rev, "convergence_jax"],
            cwd=ROOT.parent,
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", baseline.name], input=archive, check=True)
        pythons["ours_before"] = sys.executable
        envs["ours_before"] = env | {"PYTHONPATH": baseline.name}
    workers, started = {}, {}
    for name, python in pythons.items():
        t = time.perf_counter()
        argv = [python, __file__, "--worker", name]
        workers[name] = JsonWorker(argv, envs[name])
        started[name] = time.perf_counter() - t
    checks = {}

    def contender(name):
        def go(r):
            out = workers[name].ask(op="run", seed=r)
            checks.setdefault(name, []).append(out)
            return out

        return go

    try:
        timing = alternate({n: contender(n) for n in workers}, args.rounds)
    finally:
        for w in workers.values():
            w.close()
    for name, outs in checks.items():
        bad = [o for o in outs if o["calls"] != BUDGET or o["evaluations"] != BUDGET]
        if bad:
            raise SystemExit(f"{name}: a run did not make {BUDGET} calls: {bad[0]}")

    ours_rows = [n for n in workers if n.startswith("ours")]
    ratios = {n: speedup(timing, n, "peer") for n in ours_rows}
    fix = speedup(timing, "ours", "ours_before") if rev else None
    result = {
        "name": NAME,
        "machine": machine,
        "device": "cpu",
        "budget": {
            "objective_calls": BUDGET,
            "generations": GENERATIONS,
            "evaluations_per_generation": EVALUATIONS_PER_GENERATION,
        },
        "workers": {n: w.info for n, w in workers.items()},
        "worker_start_seconds": started,
        "timing": timing,
        "runs": checks,
        "peer_over_ours": ratios,
        "rounds": args.rounds,
        "baseline_rev": rev,
        "before_over_after": fix,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(result, indent=1))

    s = timing["seconds"]
    cpu = timing["cpu_per_wall"]
    rows = {
        "ours": "ours, `write=False` (pop. 16, 48 evals/gen: 1 + 4 Thompson rounds)",
        "ours_written": "ours, `write=True` (journal, checkpoint, results, report)",
        "ours_p48": "ours, `write=False`, pop. 48, 48 evals/gen (the peer's shape)",
        "peer": "The Convergence 0.1.8, local function (pop. 48, one call each)",
    }
    if rev:
        rows["ours_before"] = f"ours as of `{rev[:10]}` (before the fix), `write=False`"
    lines = [
        f"# {NAME}: the optimizer's own overhead vs The Convergence 0.1.8",
        "",
        f"Trivial Python objective, {BUDGET} objective calls per run ({GENERATIONS} "
        f"generations x {EVALUATIONS_PER_GENERATION}; every run's calls counted), "
        f"{args.rounds} alternating rounds, one worker process per contender (imports,"
        " compilation and one warm-up run untimed). Machine: "
        f"{machine['cpu']}, {machine['cores']} cores, CPU only; 1-min load "
        f"{timing['load']['min']:.2f} / {timing['load']['median']:.2f} / "
        f"{timing['load']['max']:.2f} (min / median / max over rounds).",
        "",
        "| contender | seconds per run (min / median / max) | CPU s / wall s "
        "(median) | The Convergence's time / ours |",
        "|---|---|---|---|",
    ]
    for name, label in rows.items():
        t = s[name]
        ratio = fmt_speedup(ratios[name]) if name in ratios else "-"
        lines.append(
            f"| {label} | {t['min']:.3f} / {t['median']:.3f} / {t['max']:.3f} | "
            f"{cpu[name]['median']:.2f} | {ratio} |"
        )
    if rev:
        same = max(
            abs(a["best"] - b["best"])
            for a, b in zip(checks["ours"], checks["ours_before"], strict=True)
        )
        lines += [
            "",
            f"The fix: ours as of `{rev[:10]}` / ours now, same config and seeds: "
            f"{fmt_speedup(fix)}; the best reward of every seed agrees to {same:.1e} "
            "(the old loop rounded rewards to float32; the proposals are the same).",
        ]
    lines += [
        "",
        "Ratio: The Convergence's median over ours (range: its min / our max .. its "
        "max / our min; paired: per-round ratios); a range overlapping 1.0x is a tie.",
        "",
        "Warm-up runs (untimed, seconds): "
        + ", ".join(
            f"{n} {w.info['warmup']['seconds']:.2f}" for n, w in workers.items()
        )
        + ".",
        "",
        "What each side does: see the docstring of `benchmarks/optimizer_overhead.py`.",
    ]
    (RESULTS / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
