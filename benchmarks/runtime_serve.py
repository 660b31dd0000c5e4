"""Load test of ``convergence-jax serve``: 8 client processes x 2,000 select+update.

Each contender serves one Beta-Bernoulli bandit with 10 arms (reward means evenly
spread over [0.1, 0.9]). Eight client processes, started together, each run 2,000
cycles over one keep-alive HTTP connection on loopback (the standard library's
``http.client``: the client costs little CPU, which matters when clients and
servers share 2 cores): ``POST /select``, draw a Bernoulli reward of the chosen arm,
``POST /update``. Every request is timed on the client.

Contenders, per backend (``--groups sqlite,postgres``):

- ``serve x1``: one ``convergence-jax serve`` process;
- ``serve x2``: two ``convergence-jax serve`` processes on different ports sharing
  the database (one SQLite file, or one PostgreSQL database), the clients split
  between them;
- ``baseline``: a minimal FastAPI app doing the same transactions with NumPy
  sampling (``_runtime_baseline.py``), one process, same uvicorn;
- ``library``: the same cycles through ``Runtime.select`` / ``Runtime.update`` in
  the 8 client processes, no HTTP.

PostgreSQL runs as a throwaway ``initdb`` cluster on loopback
(``convergence_jax.runtime.pgtemp``) with ``synchronous_commit=off`` (a commit does
not wait for its WAL flush, like SQLite's ``synchronous=NORMAL`` in WAL mode used
here); each contender has its own database (SQLite file).

Checked every round: the contender's stats count exactly 8 x 2,000 more decisions
and updates than before the round (no update lost), and every update answered
``applied``. The contenders alternate over >= 7 rounds, the order rotated.

    python benchmarks/runtime_serve.py                    # full run, writes results/
    python benchmarks/runtime_serve.py --groups postgres  # one backend (merged in)
    python benchmarks/runtime_serve.py --quick            # 8 x 100, 1 round, no files
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
WARMUP = 30
KEY = "bench-key"
BANDIT_YAML = """\
bandits:
  bench:
    arms: [{arms}]
    bandit: beta
"""
PG_SETTINGS = {"fsync": "on", "synchronous_commit": "off", "max_connections": "200"}


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


class Http:
    """One keep-alive connection; JSON in, JSON out."""

    def __init__(self, port: int):
        import http.client

        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {
            "Authorization": f"Bearer {KEY}",
            "Content-Type": "application/json",
        }

    def post(self, path: str, body: dict) -> dict:
        self.conn.request("POST", path, json.dumps(body), self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
        return json.loads(data)

    def get(self, path: str) -> dict:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        return json.loads(response.read())


def http_client(ports, cycles: int, seed: int, ready, go, out) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    truth = means()
    client = Http(ports[seed % len(ports)])
    user = f"c{seed}"
    for _ in range(WARMUP):  # the clients warm up together: batches form
        d = client.post("/select", {"bandit": "bench", "user_id": user})
        body = {"bandit": "bench", "decision_id": d["decision_id"], "reward": 0.5}
        client.post("/update", body)
    select_ms, update_ms, not_applied = [], [], 0
    ready.put(seed)
    go.wait()
    start = time.perf_counter()
    for _ in range(cycles):
        t0 = time.perf_counter()
        choice = client.post("/select", {"bandit": "bench", "user_id": user})
        t1 = time.perf_counter()
        reward = float(rng.random() < truth[choice["arm"]])
        body = {"bandit": "bench", "decision_id": choice["decision_id"]}
        body["reward"] = reward
        t2 = time.perf_counter()
        not_applied += not client.post("/update", body)["applied"]
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


def library_client(db: str, cycles: int, seed: int, ready, go, out) -> None:
    import numpy as np

    from convergence_jax.runtime import Runtime

    rng = np.random.default_rng(seed)
    truth = means()
    rt = Runtime(db)
    for _ in range(WARMUP):  # compile before the clock
        rt.update("bench", rt.select("bench").decision_id, 0.5)
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
    time.sleep(0.2)
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
        "cycles": clients * cycles,
        "wall_s": wall,
        "cycles_per_s": clients * cycles / wall,
        "select_ms": percentiles(select),
        "update_ms": percentiles(update),
        "cycle_ms": percentiles(cycle),
        "not_applied": sum(r["not_applied"] for r in results),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while True:
        try:
            Http(port).get("/healthz")
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("a server did not start") from None
            time.sleep(0.2)


class Contender:
    """A server set (or the library) on its own database; ``run`` times one round."""

    def __init__(self, name: str, kind: str, db: str, tmp: Path, processes: int = 1):
        self.name, self.kind, self.db = name, kind, db
        self.ports = [free_port() for _ in range(processes)]
        self.procs: list[subprocess.Popen] = []
        env = {**os.environ, "CONVERGENCE_API_KEY": KEY}
        if kind == "serve":
            arms = ", ".join(means())
            (tmp / "bandits.yaml").write_text(BANDIT_YAML.format(arms=arms))
            for port in self.ports:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "convergence_jax.cli", "serve"]
                        + ["--db", db, "--config", str(tmp / "bandits.yaml")]
                        + ["--port", str(port)],
                        env=env,
                    )
                )
                wait_up(port, self.procs[-1])  # one at a time: configure once
        elif kind == "baseline":
            script = ROOT / "_runtime_baseline.py"
            for port in self.ports:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, str(script), db, str(port), str(ARMS)], env=env
                    )
                )
                wait_up(port, self.procs[-1])
        else:
            from convergence_jax.runtime import Runtime

            Runtime(db).configure("bench", list(means()))

    def counts(self) -> dict:
        if self.kind == "library":
            from convergence_jax.runtime import Runtime

            stats = Runtime(self.db).stats("bench")
        else:
            stats = Http(self.ports[0]).get("/stats?bandit=bench")
        return {k: stats[k] for k in ("decisions", "updates", "pending")}

    def run(self, clients: int, cycles: int) -> dict:
        before = self.counts()
        if self.kind == "library":
            results, wall = run_clients(library_client, self.db, clients, cycles)
        else:
            results, wall = run_clients(http_client, self.ports, clients, cycles)
        after = self.counts()
        summary = summarize(results, wall, clients, cycles)
        warm = clients * WARMUP
        summary["counted"] = {
            "decisions": after["decisions"] - before["decisions"] - warm,
            "updates": after["updates"] - before["updates"] - warm,
            "pending": after["pending"],
        }
        total = clients * cycles
        assert summary["counted"]["decisions"] == total, (self.name, summary)
        assert summary["counted"]["updates"] == total, (self.name, summary)
        assert summary["not_applied"] == 0, (self.name, summary)
        return summary

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(30)


def spread(values: list[float]) -> dict:
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "values": values,
    }


def run_group(
    group: str, tmp: Path, clients: int, cycles: int, rounds: int, skip=()
) -> dict:
    from convergence_jax.runtime.pgtemp import TemporaryPostgres

    server = None
    if group == "postgres":
        server = TemporaryPostgres(PG_SETTINGS).start()
        import psycopg

        with psycopg.connect(server.url, autocommit=True) as conn:
            for name in ("serve1", "serve2", "baseline", "library"):
                conn.execute(f"CREATE DATABASE {name}")

    def db(name: str) -> str:
        if server is None:
            return str(tmp / f"{name}.db")
        return server.url.rsplit("/", 1)[0] + f"/{name}"

    contenders = []
    try:
        specs = [
            ("serve x1", "serve", "serve1", 1),
            ("serve x2", "serve", "serve2", 2),
            ("baseline", "baseline", "baseline", 1),
            ("library", "library", "library", 1),
        ]
        contenders = [
            Contender(name, kind, db(base), tmp, processes=n)
            for name, kind, base, n in specs
            if f"{group}:{name}" not in skip
        ]
        records = []
        for r in range(rounds):
            k = r % len(contenders)
            order = contenders[k:] + contenders[:k]
            if (r // len(contenders)) % 2:
                order = order[::-1]
            record = {"order": [c.name for c in order]}
            for c in order:
                record[c.name] = c.run(clients, cycles)
                print(
                    f"{group} round {r} {c.name}: "
                    f"{record[c.name]['cycles_per_s']:.0f} cycles/s, cycle p50 / p99 "
                    f"{record[c.name]['cycle_ms']['p50']:.2f} / "
                    f"{record[c.name]['cycle_ms']['p99']:.2f} ms",
                    flush=True,
                )
            record["load"] = os.getloadavg()[0]
            records.append(record)
    finally:
        for c in contenders:
            c.close()
        if server is not None:
            server.stop()
    names = [c.name for c in contenders]
    summary = {}
    for name in names:
        rows = [rec[name] for rec in records]
        summary[name] = {
            "cycles_per_s": spread([x["cycles_per_s"] for x in rows]),
            "cycle_p50_ms": spread([x["cycle_ms"]["p50"] for x in rows]),
            "cycle_p99_ms": spread([x["cycle_ms"]["p99"] for x in rows]),
            "select_p99_ms": spread([x["select_ms"]["p99"] for x in rows]),
            "update_p99_ms": spread([x["update_ms"]["p99"] for x in rows]),
            "counted_every_round": all(
                x["counted"]["updates"] == clients * cycles for x in rows
            ),
        }
    ratios = {}
    for other in [n for n in ("baseline", "library") if n in names]:
        paired = [
            rec["serve x1"]["cycles_per_s"] / rec[other]["cycles_per_s"]
            for rec in records
        ]
        ratios[f"serve x1 / {other}"] = spread(paired)
    return {
        "backend": group,
        "settings": PG_SETTINGS if group == "postgres" else {"journal_mode": "WAL"},
        "rounds": records,
        "summary": summary,
        "paired_ratios_cycles_per_s": ratios,
        "load": spread([rec["load"] for rec in records]),
    }


ROW_NAMES = {
    "serve x1": "HTTP: 1 `convergence-jax serve`",
    "serve x2": "HTTP: 2 `convergence-jax serve` (2 ports, one database)",
    "baseline": "HTTP: baseline FastAPI app, NumPy sampling",
    "library": "library, no HTTP (8 processes)",
}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "## Runtime bandit service: 8 client processes x 2,000 select+update cycles",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (clients and servers share them), "
        f"Python {m['python']}, jax {m['jax']}, FastAPI {m['fastapi']}, uvicorn "
        f"{m['uvicorn']} (httptools {m.get('httptools')}), SQLite {m['sqlite']}, "
        f"PostgreSQL {m.get('postgres')}, psycopg {m.get('psycopg')}. A shared "
        "machine: other jobs ran alongside; the load is given per backend.",
        "",
        "Each client: one keep-alive `http.client` connection on loopback, `POST "
        "/select`, Bernoulli reward, `POST /update`, every request timed on the "
        "client. Figures are min / median / max over the rounds (each round runs "
        "every contender once, the order rotated); p50 / p99 are of the whole "
        "cycle (select + update) within a round. Every round of every contender "
        f"counted exactly {result['cycles']:,} more decisions and updates in the "
        "database.",
    ]
    if result.get("note"):
        lines += ["", result["note"]]
    for group in result["groups"].values():
        s, load = group["summary"], group["load"]
        lines += [
            "",
            f"### {group['backend']} ({len(group['rounds'])} rounds; load "
            f"{load['min']:.1f} / {load['median']:.1f} / {load['max']:.1f}; "
            f"settings {group['settings']})",
            "",
            "| path | cycles/s | cycle p50 (ms) | cycle p99 (ms) | update p99 (ms) |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in s.items():

            def f(d, fmt):
                return " / ".join(format(d[k], fmt) for k in ("min", "median", "max"))

            lines.append(
                f"| {ROW_NAMES[name]} | {f(row['cycles_per_s'], '.0f')} | "
                f"{f(row['cycle_p50_ms'], '.2f')} | {f(row['cycle_p99_ms'], '.1f')} | "
                f"{f(row['update_p99_ms'], '.1f')} |"
            )
        ratios = group["paired_ratios_cycles_per_s"]
        lines += [
            "",
            "Paired per-round ratios of cycles/s (min / median / max): "
            + "; ".join(
                f"{k}: {v['min']:.2f} / {v['median']:.2f} / {v['max']:.2f}x"
                for k, v in ratios.items()
            ),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 x 100, no files")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--groups", default="sqlite,postgres")
    parser.add_argument(
        "--markdown-from", help="re-render results/runtime_serve.md from this JSON"
    )
    parser.add_argument(
        "--skip", default="", help="contenders left out, e.g. 'postgres:library'"
    )
    args = parser.parse_args()
    if args.markdown_from:
        result = json.loads(Path(args.markdown_from).read_text())
        (RESULTS / "runtime_serve.md").write_text(markdown(result))
        return
    cycles, rounds = (100, 1) if args.quick else (args.cycles, args.rounds)
    from importlib.metadata import version

    import jax

    from convergence_jax.runtime.pgtemp import find_pg_bin

    pg_bin = find_pg_bin()
    postgres = None
    if pg_bin is not None:
        out = subprocess.run(
            [str(pg_bin / "postgres"), "--version"], capture_output=True, text=True
        )
        postgres = out.stdout.split()[2]
    machine = machine_info() | {
        "jax": jax.__version__,
        "fastapi": version("fastapi"),
        "uvicorn": version("uvicorn"),
        "httptools": version("httptools"),
        "psycopg": version("psycopg"),
        "postgres": postgres,
        "sqlite": __import__("sqlite3").sqlite_version,
    }
    groups = {}
    for group in args.groups.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            groups[group] = run_group(
                group, Path(tmp), args.clients, cycles, rounds, args.skip.split(",")
            )
            groups[group]["machine"] = machine
    path = RESULTS / "runtime_serve.json"
    result = {
        "benchmark": "runtime_serve",
        "machine": machine,
        "cycles": args.clients * cycles,
        "groups": {},
    }
    if not args.quick and path.is_file():
        old = json.loads(path.read_text())
        if "groups" in old:  # keep the other backend's figures
            result["groups"] = old["groups"]
    result["groups"].update(groups)
    table = markdown(result)
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        (RESULTS / "runtime_serve.md").write_text(table)


if __name__ == "__main__":
    main()
