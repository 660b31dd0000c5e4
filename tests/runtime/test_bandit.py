"""The runtime bandit on SQLite and on PostgreSQL (the ``db`` fixture runs each test
on both): math from the pure core, errors, segments, several processes at once,
and kill -9 mid-write."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import bandits
from convergence_jax.runtime import (
    DecisionConflictError,
    RewardError,
    Runtime,
    RuntimeBanditError,
    UnknownBanditError,
    UnknownDecisionError,
    configure_runtime,
    runtime_expire,
    runtime_select,
    runtime_stats,
    runtime_update,
)

ROOT = Path(__file__).resolve().parents[2]
ARMS = {"low": {"temperature": 0.2}, "mid": {"temperature": 0.7}, "high": {"t": 1}}


@pytest.fixture
def rt(db):
    runtime = Runtime(db, seed=0)
    yield runtime
    runtime.close()


def connect(db):
    """A plain connection of the backend's own driver (not the runtime's)."""
    if db.startswith("postgresql://"):
        import psycopg

        return psycopg.connect(db, autocommit=True), "%s"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return conn, "?"


def consistent(db, name):
    """Cross-table invariants that one transaction per update keeps."""
    conn, mark = connect(str(db))
    try:
        query = "SELECT COUNT(*) FROM decisions WHERE bandit = ? AND reward IS NOT NULL"
        rewarded = conn.execute(query.replace("?", mark), (name,)).fetchone()[0]
        applied, mass = 0, 0.0
        for stats, updates in conn.execute(
            "SELECT stats, updates FROM segments WHERE bandit = ?".replace("?", mark),
            (name,),
        ):
            s = json.loads(stats)
            applied += updates
            mass += sum(s["successes"]) + sum(s["failures"])
        assert applied == rewarded
        assert mass == pytest.approx(applied)  # gamma = 1: one unit per update
        return applied
    finally:
        conn.close()


def test_select_update_stats_learn_the_best_arm(rt):
    rt.configure("p", ARMS)
    means = {"low": 0.2, "mid": 0.5, "high": 0.8}
    rng = np.random.default_rng(0)
    for _ in range(300):
        choice = rt.select("p", user_id="u1", context={"page": "home"})
        assert choice.params == ARMS[choice.arm]
        assert choice.segment == "default"
        reward = float(rng.random() < means[choice.arm])
        assert rt.update("p", choice.decision_id, reward).applied  # (a tuple: truthy)
    stats = rt.stats("p")
    assert stats["decisions"] == stats["updates"] == 300 and stats["pending"] == 0
    arms = {a["arm"]: a for a in stats["segments"]["default"]["arms"]}
    assert arms["high"]["selections"] > 200
    # the posterior is the pure Beta-Bernoulli one: (1 + sum r) / (2 + n)
    for a in arms.values():
        n, r = a["updates"], (a["mean_reward"] or 0.0) * a["updates"]
        assert a["posterior_mean"] == pytest.approx((1 + r) / (2 + n), rel=1e-5)
    assert consistent(rt.path, "p") == 300


def test_gaussian_discounted_matches_the_pure_update(rt):
    rt.configure(
        "g", ["a", "b"], bandit="gaussian", gamma=0.9, reward_range=(-10.0, 10.0)
    )
    algo = bandits.gaussian(2)
    params = algo.default_params.replace(
        gamma=jnp.float32(0.9),
        prior_mean=jnp.float32(0.0),
        prior_kappa=jnp.float32(1e-3),
        prior_alpha=jnp.float32(1.0),
        prior_beta=jnp.float32(4.0),
    )
    state = algo.init(params)
    rewards = [3.0, -1.5, 7.25, 0.5, 2.0, -4.0]
    for r in rewards:
        choice = rt.select("g")
        assert choice.params == {"arm": choice.arm}
        rt.update("g", choice.decision_id, r)
        arm = ["a", "b"].index(choice.arm)
        state = algo.update(jax.random.key(0), state, arm, r, params)
    expected = np.asarray(algo.posterior_mean(state, params))
    got = [a["posterior_mean"] for a in rt.stats("g")["segments"]["default"]["arms"]]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_update_is_idempotent_and_errors_are_clear(rt):
    rt.configure("p", ARMS)
    choice = rt.select("p")
    assert rt.update("p", choice.decision_id, 1.0).applied is True
    assert rt.update("p", choice.decision_id, 1.0).applied is False
    assert rt.stats("p")["updates"] == 1
    with pytest.raises(DecisionConflictError, match="already has reward 1.0; got 0.0"):
        rt.update("p", choice.decision_id, 0.0)
    with pytest.raises(UnknownDecisionError, match="no decision 'nope' for bandit 'p'"):
        rt.update("p", "nope", 1.0)
    other = rt.select("p")
    with pytest.raises(RewardError, match="reward must be finite, got nan"):
        rt.update("p", other.decision_id, float("nan"))
    with pytest.raises(RewardError, match=r"reward 1.5 is outside \[0.0, 1.0\]"):
        rt.update("p", other.decision_id, 1.5)
    with pytest.raises(RewardError, match="reward must be a number, got 'good'"):
        rt.update("p", other.decision_id, "good")
    with pytest.raises(UnknownBanditError, match=r"no bandit 'q'; configured: \['p'\]"):
        rt.select("q")
    rt.configure("answers", ARMS)
    with pytest.raises(UnknownBanditError, match="did you mean 'answers'"):
        rt.select("answer")
    with pytest.raises(UnknownDecisionError, match="belongs to bandit 'p'"):
        rt.update("answers", other.decision_id, 1.0)
    assert rt.stats("p")["pending"] == 1  # failed updates changed nothing
    assert consistent(rt.path, "p") == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arms": []}, "give at least one arm"),
        ({"arms": [{"a": 1}, "b"]}, r"arms\['1'\]: expected a dict of params"),
        ({"arms": ["a", "a"]}, "duplicate arm names"),
        ({"arms": None}, "give arms or space"),
        ({"arms": ["a"], "gamma": 1.5}, r"gamma \(discount\) must be in \(0, 1\]"),
        ({"arms": ["a"], "bandit": "ucb"}, "bandit must be one of"),
        ({"arms": ["a"], "reward_range": (0, 5)}, "a beta bandit takes rewards"),
        ({"arms": ["a"], "prior": {"prior_mean": 1.0}}, "prior.prior_mean: unknown"),
        ({"arms": ["a"], "prior": {"prior_alpha": -1.0}}, "prior.prior_alpha: must"),
        ({"space": {"x": {"type": "flot"}}}, "space: "),
    ],
)
def test_bad_configuration_is_rejected(rt, kwargs, message):
    with pytest.raises(RuntimeBanditError, match=message):
        rt.configure("p", **kwargs)


def test_reconfigure_checks_and_replace_resets(rt):
    rt.configure("p", ARMS)
    rt.configure("p", ARMS)  # same config: a no-op
    rt.update("p", rt.select("p").decision_id, 1.0)
    with pytest.raises(RuntimeBanditError, match="exists with a different gamma"):
        rt.configure("p", ARMS, gamma=0.5)
    rt.configure("p", ARMS, gamma=0.5, replace=True)
    stats = rt.stats("p")
    assert stats["gamma"] == 0.5 and stats["decisions"] == stats["updates"] == 0


def test_segments_have_their_own_posteriors_and_space_arms(rt):
    space = {
        "temperature": {"type": "float", "min": 0.0, "max": 1.0},
        "model": {"type": "categorical", "choices": ["s", "m"]},
    }
    config = rt.configure("s", space=space, num_arms=3, segment_key="country")
    assert len(config.arms) == 3
    assert all(
        0 <= a["temperature"] <= 1 and a["model"] in ("s", "m") for a in config.arms
    )
    for country, reward in (("us", 1.0), ("fr", 0.0), ("us", 1.0)):
        choice = rt.select("s", context={"country": country})
        assert choice.segment == country
        rt.update("s", choice.decision_id, reward)
    assert rt.select("s", context={}).segment == "default"
    stats = rt.stats("s")
    assert set(stats["segments"]) == {"us", "fr", "default"}
    assert stats["segments"]["us"]["updates"] == 2
    # each segment learned only from its own rewards: its posterior is the Beta one
    # of its own counts (us: two rewards 1, fr: one reward 0)
    for segment, reward, updates in (("us", 1.0, 2), ("fr", 0.0, 1)):
        arms = stats["segments"][segment]["arms"]
        assert sum(a["updates"] for a in arms) == updates
        for a in arms:
            n = a["updates"]
            assert a["mean_reward"] == (reward if n else None)
            expected = (1 + reward * n) / (2 + n)
            assert a["posterior_mean"] == pytest.approx(expected, rel=1e-5)
    user = rt.configure("by_user", ["a", "b", "c"], segment_key="user_id")
    assert user.segment_key == "user_id"
    assert rt.select("by_user", user_id="u7").segment == "u7"


def test_module_functions_use_the_default_db(db, monkeypatch):
    monkeypatch.setenv("CONVERGENCE_RUNTIME_DB", db)
    configure_runtime("m", ["a", "b"])
    choice = runtime_select("m", user_id="u")
    assert runtime_update("m", choice.decision_id, 0.5).applied
    assert runtime_stats("m")["updates"] == 1
    assert Runtime(db).stats("m")["updates"] == 1  # it is this database
    if not db.startswith("postgresql://"):
        assert Path(db).is_file()


WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from convergence_jax.runtime import Runtime

    db, cycles, shared, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    rt = Runtime(db)
    rng = np.random.default_rng()
    repeats = 0
    for i in range(cycles):
        choice = rt.select("p", user_id=f"u{i}", context={"i": i})
        reward = float(rng.random() < 0.5)
        assert rt.update("p", choice.decision_id, reward).applied
        repeats += not rt.update("p", choice.decision_id, reward).applied
    # every worker races to apply the same pending decisions
    applied = sum(
        rt.update("p", d, 1.0).applied for d in json.load(open(shared))
    )
    json.dump({"repeats": repeats, "applied_shared": applied}, open(out, "w"))
    """
)


def test_several_processes_lose_no_update(db, tmp_path):
    rt = Runtime(db)
    rt.configure("p", ARMS)
    shared = [rt.select("p").decision_id for _ in range(40)]
    (tmp_path / "shared.json").write_text(json.dumps(shared))
    workers, cycles = 3, 120
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db), str(cycles)]
            + [str(tmp_path / "shared.json"), str(tmp_path / f"out{k}.json")],
            env=env,
        )
        for k in range(workers)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * workers
    outs = [json.loads((tmp_path / f"out{k}.json").read_text()) for k in range(workers)]
    assert [o["repeats"] for o in outs] == [cycles] * workers  # repeats: no-ops
    assert sum(o["applied_shared"] for o in outs) == len(shared)  # each once
    stats = rt.stats("p")
    assert stats["decisions"] == workers * cycles + len(shared)
    assert stats["updates"] == workers * cycles + len(shared)
    assert consistent(db, "p") == stats["updates"]


FORKED = textwrap.dedent(
    """
    import contextlib, json, os, sys, time
    import numpy as np
    from convergence_jax.runtime import Runtime

    db, cycles, children, shared, out = sys.argv[1:]
    cycles, children = int(cycles), int(children)
    rt = Runtime(db)
    # use the Runtime before forking (its connection and lock file are open), but
    # not JAX: a process that forks after XLA has started may deadlock in the child
    rt.expire("p", 1e9)

    # 1. the parent holds the write lock: a forked child's write must wait for it
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(ready_r, 1)
        rt.expire("p", 1e9)  # takes the write lock
        json.dump({"done": time.monotonic()}, open(out + ".child", "w"))
        os._exit(0)
    with rt._writing():
        os.write(ready_w, b"x")
        time.sleep(0.5)
        released = time.monotonic()
    assert os.waitpid(pid, 0)[1] == 0
    done = json.load(open(out + ".child"))["done"]

    # 2. parent and children select and update at once; each logs its spans
    # inside the write lock (CLOCK_MONOTONIC is one clock for all processes)
    spans, writing = [], rt._writing

    @contextlib.contextmanager
    def logged():
        with writing():
            start = time.monotonic()
            try:
                yield
            finally:
                spans.append((start, time.monotonic()))

    rt._writing = logged
    pids = []
    for k in range(children):
        pid = os.fork()
        if pid == 0:
            break
        pids.append(pid)
    child = len(pids) < children
    rng = np.random.default_rng()
    repeats = 0
    for i in range(cycles):
        choice = rt.select("p", user_id=f"u{i}")
        reward = float(rng.random() < 0.5)
        assert rt.update("p", choice.decision_id, reward).applied
        repeats += not rt.update("p", choice.decision_id, reward).applied
    applied = sum(rt.update("p", d, 1.0).applied for d in json.load(open(shared)))
    result = {"repeats": repeats, "applied_shared": applied, "spans": spans}
    json.dump(result, open(f"{out}.{os.getpid()}", "w"))
    if child:
        os._exit(0)
    assert [os.waitpid(p, 0)[1] for p in pids] == [0] * children
    json.dump({"released": released, "child_done": done}, open(out, "w"))
    """
)


def test_a_forked_child_reopens_the_lock_and_serializes_with_its_parent(tmp_path):
    db = tmp_path / "rt.db"
    rt = Runtime(db)
    rt.configure("p", ARMS)
    shared = [rt.select("p").decision_id for _ in range(30)]
    (tmp_path / "shared.json").write_text(json.dumps(shared))
    children, cycles = 3, 60
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "out.json"
    args = [str(db), str(cycles), str(children), str(tmp_path / "shared.json")]
    proc = subprocess.run(
        [sys.executable, "-c", FORKED, *args, str(out)],
        env=env,
        timeout=180,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    times = json.loads(out.read_text())
    # the child's write waited for the parent's lock (the old code shared the
    # parent's open file, so the child's flock passed at once)
    assert times["child_done"] >= times["released"]
    outs = [json.loads(f.read_text()) for f in tmp_path.glob("out.json.[0-9]*")]
    assert len(outs) == children + 1
    spans = sorted((s, e) for o in outs for s, e in o["spans"])
    assert len(spans) == (children + 1) * (3 * cycles + len(shared))
    overlaps = sum(
        s < e_prev for (_, e_prev), (s, _) in zip(spans, spans[1:], strict=False)
    )
    assert overlaps == 0  # no two processes were ever inside the write lock at once
    assert [o["repeats"] for o in outs] == [cycles] * (children + 1)
    assert sum(o["applied_shared"] for o in outs) == len(shared)  # each once
    stats = rt.stats("p")
    total = (children + 1) * cycles + len(shared)
    assert stats["decisions"] == stats["updates"] == total
    assert consistent(db, "p") == total


@pytest.mark.filterwarnings("ignore:os.fork")
def test_a_forked_child_opens_its_own_connection_in_every_thread(db):
    rt = Runtime(db)
    parent_conn = rt._conn()
    pid = os.fork()
    if pid == 0:  # SQLite only here: this process may have started XLA's threads
        code = 1
        try:
            other = []
            thread = threading.Thread(target=lambda: other.append(rt._conn()))
            thread.start()
            thread.join()
            mine = rt._conn()  # asked after another thread of the child opened one
            code = 0 if mine is not parent_conn and mine is not other[0] else 2
            assert mine.execute("SELECT COUNT(*) FROM bandits").fetchone() == (0,)
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0  # exit code 2: the child got the parent's
    assert rt._conn() is parent_conn
    rt.close()


KILLED = textwrap.dedent(
    """
    import sys
    from convergence_jax.runtime import Runtime

    rt = Runtime(sys.argv[1])
    while True:
        choice = rt.select("p")
        rt.update("p", choice.decision_id, 1.0)
    """
)


def test_kill_9_mid_write_leaves_a_consistent_database(db):
    rt = Runtime(db)
    rt.configure("p", ARMS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(db)], env=env)
    deadline = time.monotonic() + 60
    try:
        while rt.stats("p")["updates"] < 300 and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    applied = consistent(db, "p")
    assert applied >= 300
    stats = rt.stats("p")
    assert stats["pending"] <= 1  # at most the decision whose update was cut
    choice = rt.select("p")  # the database goes on working
    assert rt.update("p", choice.decision_id, 0.0).applied
    assert consistent(db, "p") == applied + 1
    # the posterior is the Beta one of exactly the committed rewards: the killed
    # worker's (all 1.0) and this last 0.0
    arms = rt.stats("p")["segments"]["default"]["arms"]
    assert sum(a["updates"] for a in arms) == applied + 1
    rewards = [(a["mean_reward"] or 0.0) * a["updates"] for a in arms]
    assert math.fsum(rewards) == pytest.approx(applied, rel=1e-9)
    for a, r in zip(arms, rewards, strict=True):
        n = a["updates"]
        assert a["posterior_mean"] == pytest.approx((1 + r) / (2 + n), rel=1e-5)


def test_expire_deletes_only_stale_pending_decisions(rt, monkeypatch):
    rt.configure("p", ARMS)
    old = [rt.select("p") for _ in range(3)]
    rt.update("p", old[0].decision_id, 1.0)  # rewarded: kept
    before = rt.stats("p")
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 60.0)
    fresh = rt.select("p")  # made "now + 60": not stale
    assert rt.expire("p", older_than_s=30.0) == 2
    assert rt.expire("p", older_than_s=30.0) == 0
    stats = rt.stats("p")
    assert stats["decisions"] == 2 and stats["pending"] == 1
    for a, b in zip(stats["segments"]["default"]["arms"],
                    before["segments"]["default"]["arms"], strict=True):  # fmt: skip
        assert a["posterior_mean"] == b["posterior_mean"]  # posteriors untouched
    with pytest.raises(UnknownDecisionError, match="expired while pending"):
        rt.update("p", old[1].decision_id, 1.0)
    assert rt.update("p", fresh.decision_id, 0.0).applied
    for bad in (-1, float("nan"), "1h", True):
        with pytest.raises(RuntimeBanditError, match="older_than_s"):
            rt.expire("p", bad)
    with pytest.raises(UnknownBanditError):
        rt.expire("q", 1.0)
    monkeypatch.undo()
    configure_runtime("m", ARMS, db=rt.path)
    runtime_select("m", db=rt.path)
    assert runtime_expire("m", 0.0, db=rt.path) == 1


def test_batches_answer_each_request_as_one_call_would(rt):
    rt.configure("p", ARMS, segment_key="country")
    rt.configure("g", ["a", "b"], bandit="gaussian", reward_range=(-1.0, 1.0))
    requests = [("p", "u1", {"country": "us"}), ("nope", None, None)]
    requests += [("p", None, {"country": "fr"})] * 9 + [("g", None, None)] * 3
    requests += [("p", None, "not a dict")]
    out = rt.select_many(requests)
    assert isinstance(out[1], UnknownBanditError) and "no bandit 'nope'" in str(out[1])
    assert isinstance(out[-1], RuntimeBanditError) and "context must be a dict" in str(
        out[-1]
    )
    chosen = [c for c in out if not isinstance(c, Exception)]
    assert [c.segment for c in chosen] == ["us"] + ["fr"] * 9 + ["default"] * 3
    assert all(c.params == ARMS[c.arm] for c in chosen[:10])
    assert len({c.decision_id for c in chosen}) == 13
    first, second = chosen[1].decision_id, chosen[2].decision_id
    items = [
        ("p", first, 1.0),
        ("p", first, 1.0),  # a repeat in the same batch: a no-op
        ("p", second, 0.0),
        ("p", second, 1.0),  # another reward in the same batch: a conflict
        ("p", "nope", 1.0),
        ("p", chosen[3].decision_id, 2.0),
        ("g", chosen[-1].decision_id, 0.5),
        ("g", first, 0.5),  # a decision of another bandit
    ]
    done = rt.update_many(items)
    assert [getattr(d, "applied", None) for d in done] == [
        True, False, True, None, None, None, True, None,
    ]  # fmt: skip
    assert isinstance(done[3], DecisionConflictError)
    assert isinstance(done[4], UnknownDecisionError)
    assert isinstance(done[5], RewardError)
    assert "belongs to bandit 'p'" in str(done[7])
    stats = rt.stats("p")
    assert stats["updates"] == 2 and stats["segments"]["fr"]["updates"] == 2
    assert stats["decisions"] == 10 and rt.stats("g")["updates"] == 1
    assert consistent(rt.path, "p") == 2
    # the batch's posterior equals one update at a time (the same pure updates)
    rt.configure("q", ARMS, gamma=0.8)
    rt.configure("r", ARMS, gamma=0.8)
    picks = {}
    for name in ("q", "r"):
        picks[name] = [rt.select(name) for _ in range(12)]
    rewards = [float(k % 3 == 0) for k in range(12)]
    for c, r in zip(picks["q"], rewards, strict=True):
        rt.update("q", c.decision_id, r)
    # the same arms for r: rewrite its decisions' arms to q's
    conn, mark = connect(rt.path)
    with conn:
        for cq, cr in zip(picks["q"], picks["r"], strict=True):
            arm = list(ARMS).index(cq.arm)
            conn.execute(
                "UPDATE decisions SET arm = ? WHERE id = ?".replace("?", mark),
                (arm, cr.decision_id),
            )
    conn.close()
    rt.update_many(
        [("r", c.decision_id, r) for c, r in zip(picks["r"], rewards, strict=True)]
    )
    q, r = (rt.stats(n)["segments"]["default"]["arms"] for n in ("q", "r"))
    assert [a["posterior_mean"] for a in q] == [a["posterior_mean"] for a in r]


def test_postgres_connection_errors_are_clear():
    with pytest.raises(RuntimeBanditError, match=r"cannot connect to postgresql://"
                       r"u:\*\*\*@127.0.0.1:1/db"):  # fmt: skip
        Runtime("postgresql://u:secret@127.0.0.1:1/db", timeout_s=2)
