"""``convergence-jax serve`` over real HTTP on 127.0.0.1."""

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from convergence_jax.runtime import Runtime
from convergence_jax.runtime.serve import configure_from_yaml, create_app

ROOT = Path(__file__).resolve().parents[2]
KEY = "rt-key-5d1c9a"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def server(tmp_path):
    import uvicorn

    runtime = Runtime(tmp_path / "rt.db", seed=0)
    runtime.configure("p", {"a": {"x": 1}, "b": {"x": 2}})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(runtime, KEY), log_level="warning", access_log=False
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client, runtime
    srv.should_exit = True
    thread.join(5)
    sock.close()


def test_select_update_stats_and_health(server):
    client, _ = server
    assert client.get("/healthz").json() == {"status": "ok", "bandits": ["p"]}
    r = client.post("/select", json={"bandit": "p", "user_id": "u1"}, headers=AUTH)
    assert r.status_code == 200, r.text
    choice = r.json()
    assert choice["params"] == {"a": {"x": 1}, "b": {"x": 2}}[choice["arm"]]
    body = {"bandit": "p", "decision_id": choice["decision_id"], "reward": 1.0}
    r = client.post("/update", json=body, headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json()["applied"] is True
    r = client.post("/update", json=body, headers=AUTH)  # idempotent
    assert r.status_code == 200 and r.json()["applied"] is False
    stats = client.get("/stats", params={"bandit": "p"}).json()
    assert stats["decisions"] == stats["updates"] == 1
    assert client.get("/stats").json()["bandits"]["p"]["updates"] == 1


def test_errors_say_what_is_wrong(server):
    client, _ = server
    r = client.post("/select", json={"bandit": "p"})
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    r = client.post("/select", json={"bandit": "p"}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401
    r = client.post("/select", json={"bandit": "q"}, headers=AUTH)
    assert r.status_code == 404 and "no bandit 'q'" in r.json()["detail"]
    r = client.post("/select", json={"bandt": "p"}, headers=AUTH)
    assert r.status_code == 422
    fields = {tuple(e["loc"]) for e in r.json()["detail"]}
    assert ("body", "bandit") in fields and ("body", "bandt") in fields
    choice = client.post("/select", json={"bandit": "p"}, headers=AUTH).json()
    cases = [
        ({"reward": 1.5}, 422, "outside [0.0, 1.0]"),
        ({"reward": "high"}, 422, "reward"),
        ({"reward": None}, 422, "reward"),
        ({"decision_id": "nope", "reward": 1.0}, 404, "no decision 'nope'"),
    ]
    for edit, code, text in cases:
        body = {"bandit": "p", "decision_id": choice["decision_id"]} | edit
        r = client.post("/update", json=body, headers=AUTH)
        assert r.status_code == code, (edit, r.text)
        assert text in r.text, (edit, r.text)
    decision = choice["decision_id"]
    nan = f'{{"bandit": "p", "decision_id": "{decision}", "reward": NaN}}'
    r = client.post(
        "/update", content=nan, headers=AUTH | {"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "finite" in r.text
    body = {"bandit": "p", "decision_id": choice["decision_id"], "reward": 0.0}
    assert client.post("/update", json=body, headers=AUTH).json()["applied"]
    r = client.post("/update", json=body | {"reward": 1.0}, headers=AUTH)
    assert r.status_code == 409 and "already has reward 0.0" in r.json()["detail"]
    r = client.get("/stats", params={"bandit": "nope"})
    assert r.status_code == 404


def test_concurrent_clients_lose_no_update(server):
    client, runtime = server

    def cycles(n):
        for _ in range(n):
            d = client.post("/select", json={"bandit": "p"}, headers=AUTH).json()
            body = {"bandit": "p", "decision_id": d["decision_id"], "reward": 0.5}
            assert client.post("/update", json=body, headers=AUTH).status_code == 200

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(cycles, [40] * 4))
    stats = runtime.stats("p")
    assert stats["updates"] == stats["decisions"] == 160
    arms = stats["segments"]["default"]["arms"]
    assert math.fsum(a["updates"] for a in arms) == 160


def test_yaml_config_errors_name_the_key(tmp_path):
    runtime = Runtime(tmp_path / "rt.db")
    path = tmp_path / "bandits.yaml"
    path.write_text("bandits:\n  p:\n    arms: [a, b]\n    gama: 0.9\n")
    with pytest.raises(ValueError, match=r"bandits.p.gama: unknown key \(did you mean"):
        configure_from_yaml(runtime, path)
    path.write_text("bandits:\n  p:\n    arms: [a, b]\n    gamma: 2\n")
    with pytest.raises(ValueError, match=r"bandits.p: gamma \(discount\) must be"):
        configure_from_yaml(runtime, path)


def test_cli_serve(tmp_path):
    (tmp_path / "bandits.yaml").write_text(
        "bandits:\n"
        "  prompt:\n"
        "    arms: {short: {max_tokens: 128}, long: {max_tokens: 512}}\n"
        "    bandit: gaussian\n"
        "    reward_range: [0, 10]\n"
        "    gamma: 0.99\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CONVERGENCE_API_KEY": KEY}
    command = [sys.executable, "-m", "convergence_jax.cli", "serve"]
    no_key = {k: v for k, v in env.items() if k != "CONVERGENCE_API_KEY"}
    out = subprocess.run(command, env=no_key, capture_output=True, text=True)
    assert out.returncode == 2 and "CONVERGENCE_API_KEY" in out.stderr
    args = ["--db", str(tmp_path / "rt.db"), "--config", str(tmp_path / "bandits.yaml")]
    proc = subprocess.Popen(
        command + args + ["--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        # The first /select compiles the bandit: allow for a loaded machine.
        client = httpx.Client(timeout=60)
        choice = client.post(url + "/select", json={"bandit": "prompt"}, headers=AUTH)
        assert choice.json()["params"]["max_tokens"] in (128, 512)
        body = {"bandit": "prompt", "decision_id": choice.json()["decision_id"]}
        r = client.post(url + "/update", json=body | {"reward": 11}, headers=AUTH)
        assert r.status_code == 422 and "outside [0.0, 10.0]" in r.text
        r = client.post(url + "/update", json=body | {"reward": 7}, headers=AUTH)
        assert r.json()["applied"]
        stats = client.get(url + "/stats", params={"bandit": "prompt"}).json()
        assert stats["kind"] == "gaussian" and stats["updates"] == 1
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def test_expire_route(server):
    client, runtime = server
    for _ in range(2):
        assert client.post("/select", json={"bandit": "p"}, headers=AUTH).is_success
    body = {"bandit": "p", "older_than_s": 0}
    assert client.post("/expire", json=body).status_code == 401
    r = client.post("/expire", json=body, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"bandit": "p", "expired": 2}
    assert runtime.stats("p")["pending"] == 0
    r = client.post("/expire", json={"bandit": "p", "older_than_s": -1}, headers=AUTH)
    assert r.status_code == 422
    r = client.post("/expire", json={"bandit": "q", "older_than_s": 1}, headers=AUTH)
    assert r.status_code == 404


def start_serve(db: str, config: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CONVERGENCE_API_KEY": KEY}
    command = [sys.executable, "-m", "convergence_jax.cli", "serve", "--db", db]
    proc = subprocess.Popen(
        command + ["--config", str(config), "--port", str(port), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the server exited"
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)


def test_two_servers_sharing_one_postgres_lose_no_update(pg_db, tmp_path):
    """Two `convergence-jax serve` processes on different ports, one PostgreSQL:
    8 threads select on one server and update on the other, and all of them race
    to reward the same decisions through both; the counts come out exact."""
    config = tmp_path / "bandits.yaml"
    config.write_text("bandits:\n  p:\n    arms: [a, b, c]\n    segment_key: country\n")
    servers = [start_serve(pg_db, config) for _ in range(2)]
    try:
        urls = [url for _, url in servers]
        clients = [httpx.Client(base_url=u, headers=AUTH, timeout=60) for u in urls]
        shared = [
            clients[0].post("/select", json={"bandit": "p"}).json()["decision_id"]
            for _ in range(20)
        ]
        cycles, threads = 40, 8

        def work(k):
            mine, other = clients[k % 2], clients[(k + 1) % 2]
            applied = 0
            for i in range(cycles):
                body = {"bandit": "p", "context": {"country": ["us", "fr"][i % 2]}}
                d = mine.post("/select", json=body).json()
                up = {"bandit": "p", "decision_id": d["decision_id"], "reward": 1.0}
                assert other.post("/update", json=up).json()["applied"]
                assert not mine.post("/update", json=up).json()["applied"]
            for d in shared:
                up = {"bandit": "p", "decision_id": d, "reward": 0.0}
                r = other.post("/update", json=up)
                assert r.status_code == 200, r.text
                applied += r.json()["applied"]
            return applied

        with ThreadPoolExecutor(threads) as pool:
            applied_shared = sum(pool.map(work, range(threads)))
        assert applied_shared == len(shared)  # each shared decision once
        stats = Runtime(pg_db).stats("p")
        total = threads * cycles
        assert stats["decisions"] == stats["updates"] == total + len(shared)
        assert stats["segments"]["us"]["updates"] == total // 2
        assert stats["segments"]["default"]["updates"] == len(shared)
        # no lost update: each segment's Beta counts hold one unit per update
        import psycopg

        with psycopg.connect(pg_db) as conn:
            rows = conn.execute("SELECT segment, stats, updates FROM segments")
            for segment, text, updates in rows:
                counts = json.loads(text)
                mass = sum(counts["successes"]) + sum(counts["failures"])
                assert mass == pytest.approx(updates), segment
        # both servers answer the same counts
        for client in clients:
            assert client.get("/stats", params={"bandit": "p"}).json() == stats
            client.close()
    finally:
        for proc, _ in servers:
            proc.terminate()
        for proc, _ in servers:
            proc.wait(10)


def test_the_fast_path_answers_as_the_fastapi_routes(tmp_path, monkeypatch):
    """The same requests with the fast path on and off: the same statuses and
    bodies; with it on, valid requests never reach FastAPI's routing, and every
    request it declines (bad key, bad JSON, invalid field) does."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    routed = []
    original = FastAPI.__call__

    async def recording(self, scope, receive, send):
        if scope["type"] == "http":
            routed.append(scope["path"])
        return await original(self, scope, receive, send)

    monkeypatch.setattr(FastAPI, "__call__", recording)

    def answers(fast: bool):
        runtime = Runtime(tmp_path / f"{fast}.db", seed=0)
        runtime.configure("p", {"a": {"x": 1}, "b": {"x": 2}})
        app = create_app(runtime, KEY)
        if not fast:
            app.fast_routes = {}
        out = []
        with TestClient(app) as client:
            d = client.post("/select", json={"bandit": "p"}, headers=AUTH).json()
            out.append(sorted(d))
            body = {"bandit": "p", "decision_id": d["decision_id"], "reward": 1.0}
            requests = [
                ("/update", body, AUTH),
                ("/update", body, {"X-API-Key": KEY}),  # a repeat: applied False
                ("/update", body | {"reward": 0.0}, AUTH),  # 409
                ("/update", body | {"reward": 1.5}, AUTH),  # 422, runtime's message
                ("/update", body | {"decision_id": "nope"}, AUTH),  # 404
                ("/select", {"bandit": "q"}, AUTH),  # 404
                ("/select", {"bandit": "p"}, {"X-API-Key": "wrong"}),  # 401
                ("/select", {"bandit": "p", "extra": 1}, AUTH),  # 422 field list
                ("/update", {"bandit": "p"}, AUTH),  # 422 missing fields
            ]
            for path, data, headers in requests:
                r = client.post(path, json=data, headers=headers)
                detail = r.json().get("detail")
                if isinstance(detail, list):
                    detail = sorted(tuple(e["loc"]) for e in detail)
                elif detail is not None:
                    detail = detail.replace(d["decision_id"], "ID")
                out.append((r.status_code, r.json().get("applied"), detail))
            r = client.post(
                "/select",
                content=b"{not json",
                headers=AUTH | {"Content-Type": "application/json"},
            )
            out.append(r.status_code)
        return out

    slow = answers(fast=False)
    routed.clear()
    fast = answers(fast=True)
    assert fast == slow
    assert [s for s, *_ in slow[1:-1]] == [200, 200, 409, 422, 404, 404, 401, 422, 422]
    assert slow[-1] == 422  # FastAPI: json_invalid
    # served by FastAPI with the fast path on: only the declined requests
    assert routed == ["/select", "/select", "/update", "/select"]
