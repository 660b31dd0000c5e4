"""Load test of ``convergence-jax serve``: 8 client processes x 2,000 select+update.

One server process (``convergence-jax serve``, one uvicorn worker, SQLite in WAL
mode) serves one Beta-Bernoulli bandit with 10 arms (reward means evenly spread over
[0.1, 0.9]). Eight client processes, started together, each run 2,000 cycles over a
keep-alive HTTP connection on loopback: ``POST /select``, draw a Bernoulli reward of
the chosen arm, ``POST /update``. Every request is timed on the client.

Checked: ``GET /stats`` counts exactly 8 x 2,000 = 16,000 decisions and 16,000 updates
(no update lost) and every update answered ``applied``.

Side by side, the same 8 x 2,000 cycles call the library directly (``Runtime.select``
/ ``Runtime.update`` on one shared SQLite file, no HTTP), which shows what the HTTP
layer costs. No peer library offers a multi-process per-request bandit service to
compare with.

    python benchmarks/runtime_serve.py            # full run, writes results/
    python benchmarks/runtime_serve.py --quick    # 8 x 100 cycles, no files
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_info

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
ARMS = 10
WARMUP = 20
KEY = "bench-key"
BANDIT_YAML = """\
bandits:
  bench:
    arms: [{arms}]
    bandit: beta
"""


def means() -> dict[str, float]:
    return {f"a{i}": 0.1 + 0.8 * i / (ARMS - 1) for i in range(ARMS)}


def percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)

    def at(q):
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": xs[-1],
        "mean": statistics.fmean(xs),
    }


def http_client(url: str, cycles: int, seed: int, ready, go, out) -> None:
    import httpx
    import numpy as np

    rng = np.random.default_rng(seed)
    truth = means()
    select_ms, update_ms, best, not_applied = [], [], 0, 0
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        client.get("/healthz")  # open the connection before the clock starts
        ready.put(seed)
        go.wait()
        start = time.perf_counter()
        for i in range(cycles):
            t0 = time.perf_counter()
            r = client.post("/select", json={"bandit": "bench", "user_id": f"c{seed}"})
            t1 = time.perf_counter()
            r.raise_for_status()
            choice = r.json()
            reward = float(rng.random() < truth[choice["arm"]])
            body = {
                "bandit": "bench",
                "decision_id": choice["decision_id"],
                "reward": reward,
            }
            t2 = time.perf_counter()
            u = client.post("/update", json=body)
            t3 = time.perf_counter()
            u.raise_for_status()
            not_applied += not u.json()["applied"]
            select_ms.append(1e3 * (t1 - t0))
            update_ms.append(1e3 * (t3 - t2))
            best += choice["arm"] == f"a{ARMS - 1}" and i >= cycles // 2
        seconds = time.perf_counter() - start
    out.put(
        {
            "select_ms": select_ms,
            "update_ms": update_ms,
            "seconds": seconds,
            "best_second_half": best,
            "not_applied": not_applied,
        }
    )


def library_client(db: str, cycles: int, seed: int, ready, go, out) -> None:
    import numpy as np

    from convergence_jax.runtime import Runtime

    rng = np.random.default_rng(seed)
    truth = means()
    rt = Runtime(db)
    rt.update("bench", rt.select("bench").decision_id, 0.5)  # compile before the clock
    select_ms, update_ms, not_applied = [], [], 0
    ready.put(seed)
    go.wait()
    start = time.perf_counter()
    for _ in range(cycles):
        t0 = time.perf_counter()
        choice = rt.select("bench", user_id=f"c{seed}")
        t1 = time.perf_counter()
        reward = float(rng.random() < truth[choice.arm])
        t2 = time.perf_counter()
        not_applied += not rt.update("bench", choice.decision_id, reward).applied
        t3 = time.perf_counter()
        select_ms.append(1e3 * (t1 - t0))
        update_ms.append(1e3 * (t3 - t2))
    seconds = time.perf_counter() - start
    out.put(
        {
            "select_ms": select_ms,
            "update_ms": update_ms,
            "seconds": seconds,
            "not_applied": not_applied,
        }
    )


def run_clients(target, arg, clients: int, cycles: int) -> tuple[list[dict], float]:
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(arg, cycles, 1000 + k, ready, go, out))
        for k in range(clients)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # every client has imported, connected and warmed up
        ready.get(timeout=600)
    start = time.perf_counter()
    go.set()
    results = [out.get(timeout=1800) for _ in procs]
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
        assert p.exitcode == 0, f"a client failed (exit {p.exitcode})"
    return results, wall


def summarize(results: list[dict], wall: float, clients: int, cycles: int) -> dict:
    select = [x for r in results for x in r["select_ms"]]
    update = [x for r in results for x in r["update_ms"]]
    cycle = [
        s + u
        for r in results
        for s, u in zip(r["select_ms"], r["update_ms"], strict=True)
    ]
    return {
        "clients": clients,
        "cycles_per_client": cycles,
        "cycles": clients * cycles,
        "wall_s": wall,
        "cycles_per_s": clients * cycles / wall,
        "requests_per_s": 2 * clients * cycles / wall,
        "select_ms": percentiles(select),
        "update_ms": percentiles(update),
        "cycle_ms": percentiles(cycle),
        "not_applied": sum(r["not_applied"] for r in results),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_run(tmp: Path, clients: int, cycles: int, workers: int) -> dict:
    import httpx

    arms = ", ".join(means())
    (tmp / "bandits.yaml").write_text(BANDIT_YAML.format(arms=arms))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CONVERGENCE_API_KEY": KEY}
    server = subprocess.Popen(
        [sys.executable, "-m", "convergence_jax.cli", "serve"]
        + ["--db", str(tmp / f"http{workers}.db")]
        + ["--config", str(tmp / "bandits.yaml")]
        + ["--port", str(port), "--workers", str(workers)],
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/healthz").raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)
        # warm-up cycles compile every worker's select/update before the clock
        headers = {"Authorization": f"Bearer {KEY}"}
        for _ in range(WARMUP):
            d = httpx.post(url + "/select", json={"bandit": "bench"}, headers=headers)
            body = {"bandit": "bench", "decision_id": d.json()["decision_id"]}
            body["reward"] = 0.5
            httpx.post(url + "/update", json=body, headers=headers).raise_for_status()
        results, wall = run_clients(http_client, url, clients, cycles)
        stats = httpx.get(url + "/stats", params={"bandit": "bench"}).json()
    finally:
        server.terminate()
        server.wait(30)
    summary = summarize(results, wall, clients, cycles)
    best = sum(r["best_second_half"] for r in results)
    summary["best_arm_share_second_half"] = best / (clients * (cycles - cycles // 2))
    summary["workers"] = workers
    summary["stats"] = {
        "decisions": stats["decisions"] - WARMUP,
        "updates": stats["updates"] - WARMUP,
        "pending": stats["pending"],
    }
    return summary


def library_run(tmp: Path, clients: int, cycles: int) -> dict:
    from convergence_jax.runtime import Runtime

    db = str(tmp / "library.db")
    rt = Runtime(db)
    rt.configure("bench", list(means()))
    results, wall = run_clients(library_client, db, clients, cycles)
    stats = rt.stats("bench")
    summary = summarize(results, wall, clients, cycles)
    summary["stats"] = {
        "decisions": stats["decisions"] - clients,  # the warm-up cycles
        "updates": stats["updates"] - clients,
        "pending": stats["pending"],
    }
    return summary


def markdown(result: dict) -> str:
    m = result["machine"]
    http, lib = result["http"], result["library"]
    http2 = result["http_2_workers"]
    lines = [
        "## Runtime bandit service: 8 client processes x 2,000 select+update cycles",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"jax {m['jax']}, FastAPI {m['fastapi']}, uvicorn {m['uvicorn']}; "
        f"load average {m['load_average_start']:.2f} -> "
        f"{result['load_average_end']:.2f} (a shared machine: other jobs ran "
        "alongside).",
        "",
        "One `convergence-jax serve` process (one uvicorn worker, or two), SQLite "
        "WAL, one "
        "Beta-Bernoulli bandit with 10 arms; each client: keep-alive HTTP on "
        "loopback, `POST /select`, Bernoulli reward, `POST /update`, every request "
        "timed on the client. The library row runs the same cycles through "
        "`Runtime.select` / `Runtime.update` on one shared SQLite file (no HTTP).",
        "",
        "| path | cycles | wall (s) | cycles/s | select p50 / p99 (ms) | "
        "update p50 / p99 (ms) | cycle p50 / p99 (ms) | decisions / updates "
        "counted |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = (
        ("HTTP: `convergence-jax serve`", http),
        ("HTTP: `convergence-jax serve --workers 2`", http2),
        ("library, no HTTP", lib),
    )
    for name, r in rows:
        lines.append(
            f"| {name} | {r['cycles']:,} | {r['wall_s']:.1f} | "
            f"{r['cycles_per_s']:.0f} | {r['select_ms']['p50']:.2f} / "
            f"{r['select_ms']['p99']:.2f} | {r['update_ms']['p50']:.2f} / "
            f"{r['update_ms']['p99']:.2f} | {r['cycle_ms']['p50']:.2f} / "
            f"{r['cycle_ms']['p99']:.2f} | {r['stats']['decisions']:,} / "
            f"{r['stats']['updates']:,} |"
        )
    lines += [
        "",
        f"Every update was applied once: the server's `/stats` counts "
        f"{http['stats']['updates']:,} updates for {http['cycles']:,} cycles "
        f"({http2['stats']['updates']:,} with two workers; "
        f"{http['stats']['pending']} pending besides). Share of the best arm "
        f"(mean 0.9) in the second half of the HTTP run: "
        f"{http['best_arm_share_second_half']:.2f}. Latencies are per request "
        "on the client, with 8 clients queueing on 2 cores; the HTTP path costs "
        f"{http['cycle_ms']['p50'] / lib['cycle_ms']['p50']:.1f}x the library's "
        "median cycle.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 x 100, no files")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=2000)
    args = parser.parse_args()
    cycles = 100 if args.quick else args.cycles
    from importlib.metadata import version

    import jax

    machine = machine_info() | {
        "jax": jax.__version__,
        "fastapi": version("fastapi"),
        "uvicorn": version("uvicorn"),
        "httpx": version("httpx"),
        "sqlite": __import__("sqlite3").sqlite_version,
    }
    with tempfile.TemporaryDirectory() as tmp:
        http = http_run(Path(tmp), args.clients, cycles, workers=1)
        print("http", json.dumps(http, indent=1)[:600], flush=True)
        http2 = http_run(Path(tmp), args.clients, cycles, workers=2)
        print("http, 2 workers", json.dumps(http2, indent=1)[:600], flush=True)
        library = library_run(Path(tmp), args.clients, cycles)
        print("library", json.dumps(library, indent=1)[:800])
    total = args.clients * cycles
    for run in (http, http2):
        assert run["stats"]["updates"] == total, run["stats"]
        assert run["stats"]["decisions"] == total, run["stats"]
        assert run["not_applied"] == 0
    assert library["stats"]["updates"] == total, library["stats"]
    result = {
        "benchmark": "runtime_serve",
        "machine": machine,
        "load_average_end": os.getloadavg()[0],
        "http": http,
        "http_2_workers": http2,
        "library": library,
    }
    table = markdown(result)
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "runtime_serve.json").write_text(json.dumps(result, indent=1))
        (RESULTS / "runtime_serve.md").write_text(table)


if __name__ == "__main__":
    main()
