"""The baseline of ``runtime_serve.py``: a minimal FastAPI app doing the runtime's
transactions with NumPy sampling, no convergence_jax.

``POST /select`` ``{"bandit", "user_id"?}``: read the segment's Beta counts, draw one
``numpy`` Beta sample per arm, take the argmax, insert the decision.
``POST /update`` ``{"bandit", "decision_id", "reward"}``: one write transaction:
read (and on PostgreSQL lock, ``FOR UPDATE``) the decision; if it has no reward
yet, lock the segment row, add ``r`` / ``1 - r`` to the arm's counts, write them,
mark the decision (a repeat is a no-op: idempotent, as ours). ``GET /stats``
counts the decisions and applied updates.

Plain sync FastAPI routes with pydantic request models (run in FastAPI's thread
pool), one connection per thread; SQLite writers queue on a process lock
(``BEGIN IMMEDIATE`` with the busy timeout across processes). What a user would
write by hand in an afternoon, so that the table shows what our layer costs.

    python benchmarks/_runtime_baseline.py DB PORT ARMS   # DB: a file or a URL
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
import uuid

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    bandit TEXT, segment TEXT, stats TEXT, updates INTEGER,
    PRIMARY KEY (bandit, segment));
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY, bandit TEXT, segment TEXT, arm INTEGER, user_id TEXT,
    created REAL, reward REAL, updated REAL);
"""
PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    bandit TEXT, segment TEXT, stats TEXT, updates BIGINT,
    PRIMARY KEY (bandit, segment));
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY, bandit TEXT, segment TEXT, arm INTEGER, user_id TEXT,
    created DOUBLE PRECISION, reward DOUBLE PRECISION, updated DOUBLE PRECISION)
"""


class SelectBody(BaseModel):
    bandit: str
    user_id: str | None = None


class UpdateBody(BaseModel):
    bandit: str
    decision_id: str
    reward: float


def make_app(db: str, num_arms: int) -> FastAPI:
    postgres = db.startswith("postgresql://")
    local = threading.local()
    write_lock = threading.Lock()
    q = (lambda s: s.replace("?", "%s")) if postgres else (lambda s: s)
    zeros = json.dumps({"s": [0.0] * num_arms, "f": [0.0] * num_arms})

    def conn():
        c = getattr(local, "conn", None)
        if c is None:
            if postgres:
                import psycopg

                c = psycopg.connect(db, autocommit=True)
            else:
                c = sqlite3.connect(db, timeout=30, isolation_level=None)
                c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=NORMAL")
            local.conn = c
        return c

    c = conn()
    if postgres:
        for statement in PG_SCHEMA.split(";"):
            c.execute(statement)
        c.execute(
            "INSERT INTO segments VALUES ('bench', 'default', %s, 0) "
            "ON CONFLICT DO NOTHING",
            (zeros,),
        )
    else:
        c.executescript(SQLITE_SCHEMA)
        c.execute(
            "INSERT OR IGNORE INTO segments VALUES ('bench', 'default', ?, 0)", (zeros,)
        )

    app = FastAPI()
    rng_local = threading.local()

    def rng():
        r = getattr(rng_local, "rng", None)
        if r is None:
            r = rng_local.rng = np.random.default_rng()
        return r

    @app.post("/select")
    def select(body: SelectBody):
        c = conn()
        row = c.execute(
            q("SELECT stats FROM segments WHERE bandit = ? AND segment = 'default'"),
            (body.bandit,),
        ).fetchone()
        if row is None:
            raise HTTPException(404, f"no bandit {body.bandit!r}")
        stats = json.loads(row[0])
        draw = rng().beta(1.0 + np.asarray(stats["s"]), 1.0 + np.asarray(stats["f"]))
        arm = int(np.argmax(draw))
        decision_id = uuid.uuid4().hex
        insert = q(
            "INSERT INTO decisions (id, bandit, segment, arm, user_id, created) "
            "VALUES (?, ?, 'default', ?, ?, ?)"
        )
        args = (decision_id, body.bandit, arm, body.user_id, time.time())
        if postgres:
            c.execute(insert, args)
        else:
            with write_lock:
                c.execute(insert, args)
        return {"decision_id": decision_id, "arm": f"a{arm}", "segment": "default"}

    def apply(c, body: UpdateBody) -> dict:
        lock = " FOR UPDATE" if postgres else ""
        row = c.execute(
            q("SELECT arm, reward FROM decisions WHERE id = ? AND bandit = ?") + lock,
            (body.decision_id, body.bandit),
        ).fetchone()
        if row is None:
            raise HTTPException(404, f"no decision {body.decision_id!r}")
        arm, previous = row
        if previous is not None:
            return {"decision_id": body.decision_id, "applied": False}
        (text,) = c.execute(
            q("SELECT stats FROM segments WHERE bandit = ? AND segment = 'default'")
            + lock,
            (body.bandit,),
        ).fetchone()
        stats = json.loads(text)
        stats["s"][arm] += body.reward
        stats["f"][arm] += 1.0 - body.reward
        c.execute(
            q(
                "UPDATE segments SET stats = ?, updates = updates + 1 "
                "WHERE bandit = ? AND segment = 'default'"
            ),
            (json.dumps(stats), body.bandit),
        )
        c.execute(
            q("UPDATE decisions SET reward = ?, updated = ? WHERE id = ?"),
            (body.reward, time.time(), body.decision_id),
        )
        return {"decision_id": body.decision_id, "applied": True}

    @app.post("/update")
    def update(body: UpdateBody):
        if not 0.0 <= body.reward <= 1.0:
            raise HTTPException(422, "reward must be in [0, 1]")
        c = conn()
        if postgres:
            with c.transaction():
                return apply(c, body)
        with write_lock:
            c.execute("BEGIN IMMEDIATE")
            try:
                out = apply(c, body)
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
            return out

    @app.get("/stats")
    def stats(bandit: str):
        c = conn()
        decisions, rewarded = c.execute(
            q("SELECT COUNT(*), COUNT(reward) FROM decisions WHERE bandit = ?"),
            (bandit,),
        ).fetchone()
        (updates,) = c.execute(
            q("SELECT SUM(updates) FROM segments WHERE bandit = ?"), (bandit,)
        ).fetchone()
        return {
            "decisions": decisions,
            "updates": int(updates or 0),
            "pending": decisions - rewarded,
        }

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    db, port, arms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    uvicorn.run(
        make_app(db, arms),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )
