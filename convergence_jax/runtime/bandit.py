"""The per-request bandit: select an arm per request, learn from each reward.

State lives in a database that several processes (web workers, batch jobs, several
servers) share: a SQLite file (WAL mode) on one machine, or a PostgreSQL server
(``Runtime("postgresql://user@host/db")``, through psycopg 3) for servers on
several machines. The math is the pure Thompson-sampling core of
``convergence_jax.bandits`` (``beta_bernoulli`` or ``gaussian``, optionally
discounted); this module is the shell that owns the database and the decisions.

Tables (the same on both):

- ``bandits``: name -> config (arms, kind, prior, discount, segment key) and version;
- ``segments``: the posterior sufficient statistics of every (bandit, segment) and
  its number of applied updates;
- ``decisions``: one row per ``select`` (id, bandit, segment, arm, user, context,
  time) that ``update`` fills with the reward.

``select`` reads the segment's statistics, draws one posterior sample per arm (the
pure ``select``) and inserts its decision. ``update`` runs in one write
transaction: it checks the decision, applies the pure ``update`` to the
statistics, writes them and marks the decision. On SQLite writers are serialized
(an flock, then ``BEGIN IMMEDIATE``); on PostgreSQL the transaction locks the
decision row, then the segment row (``SELECT ... FOR UPDATE``, always in that
order), so it reads the statistics only once no other writer can change them.
Either way no update is lost; a transaction is atomic, so a process killed
mid-write leaves the previous consistent state; a second update of a decision
changes nothing. ``select_many`` / ``update_many`` do the same for a batch in one
transaction (``convergence-jax serve`` batches the requests that arrive together).

A ``Runtime`` survives ``fork`` (a pre-fork server such as gunicorn ``--preload``):
a child opens its own connections and its own descriptor of the lock file the
first time it uses them, so parent and children exclude each other; the parent's
connections are never used nor closed in the child. (JAX itself does not survive a
fork once XLA has started: fork before the first ``configure``/``select``/``update``
/``stats``, or start workers with ``spawn``, as ``convergence-jax serve --workers``
does.)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import secrets
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "BanditConfig",
    "DecisionConflictError",
    "RewardError",
    "Runtime",
    "RuntimeBanditError",
    "Selection",
    "UnknownBanditError",
    "UnknownDecisionError",
    "Update",
    "configure_runtime",
    "default_db",
    "is_postgres_url",
    "runtime_expire",
    "runtime_select",
    "runtime_stats",
    "runtime_update",
]

KINDS = ("beta", "gaussian")
DEFAULT_SEGMENT = "default"


class RuntimeBanditError(ValueError):
    """Bad input to the runtime bandit; the message says what is wrong."""


class UnknownBanditError(RuntimeBanditError, LookupError):
    """No bandit of that name in the database."""


class UnknownDecisionError(RuntimeBanditError, LookupError):
    """No decision with that id (for that bandit)."""


class RewardError(RuntimeBanditError):
    """A reward that is not a finite number in the bandit's range."""


class DecisionConflictError(RuntimeBanditError):
    """The decision already has a different reward."""


class Selection(NamedTuple):
    """What ``select`` chose: keep ``decision_id`` to report the reward."""

    decision_id: str
    params: dict[str, Any]
    arm: str
    segment: str


class Update(NamedTuple):
    """``applied`` is False when the decision already had this reward."""

    decision_id: str
    applied: bool
    arm: str
    segment: str


@dataclass(frozen=True)
class BanditConfig:
    """A stored bandit: its arms and its posterior model."""

    name: str
    names: tuple[str, ...]
    arms: tuple[dict[str, Any], ...]
    kind: str = "beta"
    gamma: float = 1.0
    prior: tuple[tuple[str, float], ...] = ()
    segment_key: str | None = None
    reward_range: tuple[float, float] | None = None

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BanditConfig:
        data = json.loads(text)
        data["names"] = tuple(data["names"])
        data["arms"] = tuple(data["arms"])
        data["prior"] = tuple((k, v) for k, v in data["prior"])
        if data["reward_range"] is not None:
            data["reward_range"] = tuple(data["reward_range"])
        return cls(**data)

    @property
    def num_arms(self) -> int:
        return len(self.arms)

    @functools.cached_property
    def params(self):
        """The pure algorithm's params (prior, discount), built once."""
        import jax.numpy as jnp

        algo = _programs(self.kind, self.num_arms)[0]
        values = {k: jnp.asarray(v, jnp.float32) for k, v in self.prior}
        return algo.default_params.replace(
            gamma=jnp.asarray(self.gamma, jnp.float32), **values
        )

    def check_reward(self, reward: Any) -> float:
        if isinstance(reward, bool) or not isinstance(reward, int | float):
            try:
                reward = float(reward)  # NumPy scalars
            except (TypeError, ValueError):
                raise RewardError(f"reward must be a number, got {reward!r}") from None
        reward = float(reward)
        if not math.isfinite(reward):
            raise RewardError(f"reward must be finite, got {reward}")
        low, high = self.reward_range or (-math.inf, math.inf)
        if not low <= reward <= high:
            raise RewardError(
                f"reward {reward} is outside [{low}, {high}] for bandit "
                f"{self.name!r} ({self.kind})"
            )
        return reward


# ----------------------------------------------------------------------------- math


_PROGRAMS: dict[tuple[str, int], Any] = {}
_PROGRAMS_LOCK = threading.Lock()


def _programs(kind: str, num_arms: int):
    """(algorithm, jitted select, jitted update, jitted posterior_mean, jitted
    select vmapped over seeds, counters and states), cached."""
    with _PROGRAMS_LOCK:
        found = _PROGRAMS.get((kind, num_arms))
        if found is None:
            import jax

            from convergence_jax import bandits

            algo = (
                bandits.beta_bernoulli(num_arms)
                if kind == "beta"
                else bandits.gaussian(num_arms)
            )

            def select(seed, n, state, params):
                key = jax.random.fold_in(jax.random.key(seed), n)
                return algo.select(key, state, params)

            def update(state, arm, reward, params):
                # the fractional Beta and the Normal-Gamma updates use no randomness
                return algo.update(jax.random.key(0), state, arm, reward, params)

            found = (
                algo,
                jax.jit(select),
                jax.jit(update),
                jax.jit(algo.posterior_mean),
                # a batch of requests: one dispatch draws a row of arms
                jax.jit(jax.vmap(select, in_axes=(0, 0, 0, None))),
            )
            _PROGRAMS[(kind, num_arms)] = found
        return found


def _state(config: BanditConfig, stats: str | None):
    """The statistics as the algorithm's state (zeros, the prior, when None)."""
    import numpy as np

    from convergence_jax import bandits

    cls = bandits.BetaBernoulliState if config.kind == "beta" else bandits.GaussianState
    names = tuple(cls.__dataclass_fields__)
    if stats is None:
        return cls(**{k: np.zeros(config.num_arms, np.float32) for k in names})
    data = json.loads(stats)
    return cls(**{k: np.asarray(data[k], np.float32) for k in names})


def _stats_json(state) -> str:
    import numpy as np

    fields = state.__dataclass_fields__
    return json.dumps(
        {k: np.asarray(getattr(state, k), np.float64).tolist() for k in fields}
    )


# ------------------------------------------------------------------------------ fork


class _Connection:
    """A SQLite connection and the pid that opened it (weakly referenceable, which
    ``sqlite3.Connection`` is not)."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, pid: int, conn: sqlite3.Connection):
        self.pid, self.conn = pid, conn
        with _FORK_LOCK:
            _CONNECTIONS.add(self)


# Every open connection and every Runtime, weakly: a fork hook needs them all.
_CONNECTIONS: weakref.WeakSet[_Connection] = weakref.WeakSet()
_RUNTIMES_ALIVE: weakref.WeakSet[Runtime] = weakref.WeakSet()
_FORK_LOCK = threading.Lock()
# In a forked child: the parent's connections, referenced so that they are never
# closed here (the child's copy of another thread's thread-local would otherwise be
# freed, closing that connection). Never used either: each Runtime opens its own.
_INHERITED: list[_Connection] = []


def _before_fork() -> None:
    _FORK_LOCK.acquire()  # no connection is registered half-way while we fork
    pid = os.getpid()  # (those this process inherited are in _INHERITED already)
    _INHERITED.extend(h for h in _CONNECTIONS if h.pid == pid)


def _after_fork_in_parent() -> None:
    pid = os.getpid()
    _INHERITED[:] = [h for h in _INHERITED if h.pid != pid]
    _FORK_LOCK.release()


def _after_fork_in_child() -> None:
    global _FORK_LOCK, _PROGRAMS_LOCK
    _FORK_LOCK = threading.Lock()
    _PROGRAMS_LOCK = threading.Lock()
    for runtime in list(_RUNTIMES_ALIVE):
        runtime._after_fork_in_child()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


# ----------------------------------------------------------------------------- store

SCHEMA = """
CREATE TABLE IF NOT EXISTS bandits (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    bandit TEXT NOT NULL,
    segment TEXT NOT NULL,
    stats TEXT NOT NULL,
    updates INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bandit, segment)
);
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    bandit TEXT NOT NULL,
    segment TEXT NOT NULL,
    arm INTEGER NOT NULL,
    user_id TEXT,
    context TEXT,
    created REAL NOT NULL,
    reward REAL,
    updated REAL
);
CREATE INDEX IF NOT EXISTS decisions_by_arm ON decisions (bandit, segment, arm);
"""

# The same tables on PostgreSQL (times and rewards in double precision).
PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS bandits (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    created DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    bandit TEXT NOT NULL,
    segment TEXT NOT NULL,
    stats TEXT NOT NULL,
    updates BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (bandit, segment)
);
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    bandit TEXT NOT NULL,
    segment TEXT NOT NULL,
    arm INTEGER NOT NULL,
    user_id TEXT,
    context TEXT,
    created DOUBLE PRECISION NOT NULL,
    reward DOUBLE PRECISION,
    updated DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS decisions_by_arm ON decisions (bandit, segment, arm);
"""
# pg_advisory_xact_lock key held while creating the tables or configuring a bandit
_PG_SCHEMA_LOCK = 0x636F6E76  # "conv"


def default_db() -> str:
    """``$CONVERGENCE_RUNTIME_DB``, else ``convergence_runtime.db``."""
    return os.environ.get("CONVERGENCE_RUNTIME_DB", "convergence_runtime.db")


def _arms_from(name, arms, space, num_arms, seed):
    if (arms is None) == (space is None):
        raise RuntimeBanditError(
            f"configure_runtime({name!r}): give arms or space (one of them)"
        )
    if space is not None:
        import jax

        from convergence_jax.spaces import SearchSpace, SpaceError

        try:
            if not isinstance(space, SearchSpace):
                space = SearchSpace.from_dict(space)
        except SpaceError as e:
            raise RuntimeBanditError(f"space: {e}") from None
        if isinstance(num_arms, bool) or not isinstance(num_arms, int) or num_arms < 1:
            raise RuntimeBanditError(f"num_arms must be an int >= 1, got {num_arms!r}")
        params = space.decode(space.sample(jax.random.key(seed), num_arms))
        return [str(i) for i in range(num_arms)], params
    if isinstance(arms, Mapping):
        names, params = [str(k) for k in arms], list(arms.values())
    elif isinstance(arms, Sequence) and not isinstance(arms, str):
        arms = list(arms)
        if arms and all(isinstance(a, str) for a in arms):
            names, params = arms, [{"arm": a} for a in arms]
        else:
            names, params = [str(i) for i in range(len(arms))], arms
    else:
        raise RuntimeBanditError(
            f"arms must be a list of parameter dicts, a list of names or a dict "
            f"name -> params, got {type(arms).__name__}"
        )
    if not params:
        raise RuntimeBanditError("arms: give at least one arm")
    if len(set(names)) != len(names):
        raise RuntimeBanditError(f"arms: duplicate arm names in {names}")
    for n, p in zip(names, params, strict=True):
        if not isinstance(p, Mapping):
            raise RuntimeBanditError(
                f"arms[{n!r}]: expected a dict of params, got {p!r}"
            )
        try:
            json.dumps(p)
        except TypeError as e:
            raise RuntimeBanditError(f"arms[{n!r}]: params must be JSON: {e}") from None
    return names, [dict(p) for p in params]


def _prior(kind: str, prior: Mapping[str, float] | None, reward_range):
    allowed = (
        ("prior_alpha", "prior_beta")
        if kind == "beta"
        else ("prior_mean", "prior_kappa", "prior_alpha", "prior_beta")
    )
    values: dict[str, float] = {}
    if kind == "gaussian" and reward_range is not None:
        low, high = reward_range  # a weak prior on the rewards' scale
        values = {
            "prior_mean": 0.5 * (low + high),
            "prior_kappa": 1e-3,
            "prior_alpha": 1.0,
            "prior_beta": (0.1 * (high - low)) ** 2,
        }
    for k, v in (prior or {}).items():
        if k not in allowed:
            raise RuntimeBanditError(
                f"prior.{k}: unknown for a {kind} bandit; allowed: {list(allowed)}"
            )
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or not math.isfinite(v)
        ):
            raise RuntimeBanditError(f"prior.{k}: expected a finite number, got {v!r}")
        if k != "prior_mean" and not v > 0:
            raise RuntimeBanditError(f"prior.{k}: must be > 0, got {v}")
        values[k] = float(v)
    return tuple(sorted(values.items()))


def is_postgres_url(db) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) connection URL."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def _postgres():
    try:
        import psycopg
    except ImportError:
        raise ImportError(
            "a postgresql:// runtime needs psycopg 3: pip install "
            "'convergence_jax[postgres]' (or 'psycopg[binary]')"
        ) from None
    return psycopg


# A PostgreSQL transaction that lost a deadlock or a serialization check is rolled
# back by the server; the whole batch is then run again (at most this many times).
_PG_RETRIES = 8
_SELECT_CHUNK = 8  # a batch of selects is drawn by one vmapped program per 8 rows


class Runtime:
    """The runtime bandits of one database: a SQLite file or a PostgreSQL server.

    Args:
      path: a SQLite file (created with its tables if missing), or a PostgreSQL
        URL ``postgresql://user[:password]@host[:port]/dbname[?options]`` (the
        tables are created in the connection's schema if missing; several
        processes and machines may share it).
      seed: None draws selections from OS randomness; an int makes this instance's
        draws reproducible (``fold_in(key(seed), n)`` for its n-th selection).
      timeout_s: how long a writer waits for the database lock (SQLite), or for a
        connection (PostgreSQL).
    """

    def __init__(self, path: str | Path | None = None, *, seed=None, timeout_s=30.0):
        self.path = str(path if path is not None else default_db())
        self.postgres = is_postgres_url(self.path)
        self.seed = seed
        self.timeout_s = float(timeout_s)
        self._local = threading.local()
        self._configs: dict[str, tuple[int, BanditConfig]] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._lock_file: tuple[int, int] | None = None  # (pid that opened it, fd)
        self._sql_cache: dict[str, str] = {}
        _RUNTIMES_ALIVE.add(self)
        conn = self._conn()
        if self.postgres:
            # concurrent CREATE TABLE IF NOT EXISTS can collide in the catalogs:
            # one process at a time creates the schema
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
                for statement in PG_SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
        else:
            with conn:
                conn.executescript(SCHEMA)

    # -- plumbing

    def _sql(self, text: str) -> str:
        """``text`` in this database's placeholder style (``?`` or ``%s``)."""
        if not self.postgres:
            return text
        found = self._sql_cache.get(text)
        if found is None:
            found = self._sql_cache[text] = text.replace("?", "%s")
        return found

    def _execute(self, conn, text: str, args=()):
        return conn.execute(self._sql(text), args)

    def _conn(self):
        """This thread's connection, opened by this process.

        A connection is tagged with the pid that opened it: a child forked from a
        process that already used this ``Runtime`` opens its own, and never uses the
        parent's (neither SQLite nor libpq allows carrying a connection across
        ``fork``). The inherited one is kept referenced, never closed, in the child
        (see ``_INHERITED``)."""
        pid = os.getpid()
        handle = getattr(self._local, "handle", None)
        if handle is not None and handle.pid == pid:
            return handle.conn
        if self.postgres:
            psycopg = _postgres()
            try:
                conn = psycopg.connect(
                    self.path,
                    autocommit=True,
                    connect_timeout=max(1, int(self.timeout_s)),
                )
            except psycopg.OperationalError as e:
                raise RuntimeBanditError(
                    f"cannot connect to {_redacted(self.path)}: {e}"
                ) from None
        else:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout_s, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
        self._local.handle = _Connection(pid, conn)
        return conn

    def _lock_fd(self) -> int:
        """The descriptor of ``PATH.lock`` opened by this process (call it holding
        ``_write_lock``). ``flock`` locks belong to the open file description, which
        a forked child shares with its parent: locking the inherited descriptor
        would not exclude the parent (and the child's unlock would release the
        parent's lock), so a child opens its own. The inherited descriptor is left
        open: the child cannot know the number still names that file."""
        pid = os.getpid()
        if self._lock_file is None or self._lock_file[0] != pid:
            self._lock_file = (
                pid,
                os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT),
            )
        return self._lock_file[1]

    @contextlib.contextmanager
    def _writing(self):
        """SQLite: hold this database's write lock: a thread lock, then an flock on
        ``PATH.lock``. Writers then queue in the kernel and wake as soon as the lock
        is free, instead of polling in SQLite's busy handler (its sleeps of up to
        100 ms set the tail latency under contention). SQLite's own locking still
        guards the data; the kernel drops the flock of a killed process. Safe across
        ``fork``: each process locks its own open file (``_lock_fd``).

        PostgreSQL: nothing; its row locks order the writers (see ``_update_in``).
        """
        if self.postgres:
            yield
            return
        with self._write_lock:
            pid = os.getpid()
            fd = self._lock_fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if os.getpid() == pid:  # a child forked in here must not unlock
                    fcntl.flock(fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _transaction(self, conn):
        """One write transaction: SQLite ``BEGIN IMMEDIATE`` (the write lock is
        taken at once), PostgreSQL ``BEGIN`` (row locks are taken as rows are
        locked ``FOR UPDATE``); committed at the end, rolled back on any error."""
        if self.postgres:
            with conn.transaction():
                yield
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _retrying(self, fn):
        """``fn()``, run again when PostgreSQL aborted it for a deadlock or a
        serialization failure (nothing of it was committed)."""
        if not self.postgres:
            return fn()
        errors = _postgres().errors
        for attempt in range(_PG_RETRIES):
            try:
                return fn()
            except (errors.DeadlockDetected, errors.SerializationFailure):
                if attempt == _PG_RETRIES - 1:
                    raise
                time.sleep(0.001 * 2**attempt * (1 + secrets.randbelow(100) / 100))
        raise AssertionError("unreachable")

    def _after_fork_in_child(self) -> None:
        # the thread locks may have been held by a thread that does not exist here
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    def _seed(self) -> tuple[int, int]:
        """(seed, n): the n-th draw of this instance, or fresh OS randomness."""
        if self.seed is None:
            return secrets.randbits(32), 0
        with self._lock:
            n = self._count
            self._count += 1
        return self.seed % 2**32, n % 2**32

    def _config(self, name: str, version: int, text: str) -> BanditConfig:
        cached = self._configs.get(name)
        if cached is None or cached[0] != version:
            cached = (version, BanditConfig.from_json(text))
            self._configs[name] = cached
        return cached[1]

    def _load(self, name: str, conn=None) -> BanditConfig:
        row = self._execute(
            conn or self._conn(),
            "SELECT version, config FROM bandits WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise UnknownBanditError(self._unknown(name))
        return self._config(name, *row)

    def _unknown(self, name: str) -> str:
        names = self.names()
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"no bandit {name!r}{hint}; configured: {names}"

    # -- API

    def names(self) -> list[str]:
        rows = self._execute(self._conn(), "SELECT name FROM bandits ORDER BY name")
        return [r[0] for r in rows]

    def configure(
        self,
        name: str,
        arms=None,
        *,
        space=None,
        num_arms: int = 16,
        seed: int = 0,
        bandit: str = "beta",
        gamma: float = 1.0,
        prior: Mapping[str, float] | None = None,
        segment_key: str | None = None,
        reward_range: tuple[float, float] | None = None,
        replace: bool = False,
    ) -> BanditConfig:
        """Create (or check) a bandit; see ``configure_runtime``."""
        if not isinstance(name, str) or not name or len(name) > 200:
            raise RuntimeBanditError(f"name must be a non-empty string, got {name!r}")
        if bandit not in KINDS:
            raise RuntimeBanditError(f"bandit must be one of {KINDS}, got {bandit!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, int | float):
            raise RuntimeBanditError(f"gamma must be a number in (0, 1], got {gamma!r}")
        if not 0 < gamma <= 1:
            raise RuntimeBanditError(f"gamma (discount) must be in (0, 1], got {gamma}")
        if bandit == "beta":
            if reward_range not in (None, (0, 1), [0, 1]):
                raise RuntimeBanditError(
                    f"reward_range: a beta bandit takes rewards in [0, 1], got "
                    f"{reward_range!r} (use bandit='gaussian')"
                )
            reward_range = (0.0, 1.0)
        elif reward_range is not None:
            low, high = (float(v) for v in reward_range)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise RuntimeBanditError(
                    f"reward_range: expected (low, high) with low < high, got "
                    f"{reward_range!r}"
                )
            reward_range = (low, high)
        if segment_key is not None and not isinstance(segment_key, str):
            raise RuntimeBanditError(
                f"segment_key must be a string, got {segment_key!r}"
            )
        names, params = _arms_from(name, arms, space, num_arms, seed)
        config = BanditConfig(
            name=name,
            names=tuple(names),
            arms=tuple(params),
            kind=bandit,
            gamma=float(gamma),
            prior=_prior(bandit, prior, reward_range),
            segment_key=segment_key,
            reward_range=reward_range,
        )
        config = BanditConfig.from_json(config.to_json())  # as stored
        conn = self._conn()
        with self._writing():
            self._retrying(lambda: self._configure_in(conn, name, config, replace))
        _programs(config.kind, config.num_arms)
        return config

    def _configure_in(self, conn, name, config, replace) -> None:
        with self._transaction(conn):
            if self.postgres:  # two servers configuring at start: one at a time
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
            row = self._execute(
                conn, "SELECT config, version FROM bandits WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                self._execute(
                    conn,
                    "INSERT INTO bandits (name, config, created) VALUES (?, ?, ?)",
                    (name, config.to_json(), time.time()),
                )
            elif BanditConfig.from_json(row[0]) != config:
                if not replace:
                    old = BanditConfig.from_json(row[0])
                    diff = [
                        k
                        for k in ("names", "arms", "kind", "gamma", "prior")
                        + ("segment_key", "reward_range")
                        if getattr(old, k) != getattr(config, k)
                    ]
                    raise RuntimeBanditError(
                        f"bandit {name!r} exists with a different {', '.join(diff)}; "
                        "pass replace=True to reset it (its posteriors and decisions "
                        "are deleted)"
                    )
                self._execute(
                    conn,
                    "UPDATE bandits SET config = ?, version = version + 1 "
                    "WHERE name = ?",
                    (config.to_json(), name),
                )
                # decisions before segments: the order in which updates lock them
                self._execute(conn, "DELETE FROM decisions WHERE bandit = ?", (name,))
                self._execute(conn, "DELETE FROM segments WHERE bandit = ?", (name,))

    def segment_of(self, config: BanditConfig, user_id, context) -> str:
        if config.segment_key is None:
            return DEFAULT_SEGMENT
        if config.segment_key == "user_id":
            value = user_id
        else:
            value = (context or {}).get(config.segment_key)
        return DEFAULT_SEGMENT if value is None else str(value)

    def select(
        self,
        name: str,
        user_id: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Selection:
        """Draw an arm for one request and record the decision."""
        (result,) = self.select_many([(name, user_id, context)])
        if isinstance(result, Exception):
            raise result
        return result

    def select_many(
        self, requests: Sequence[tuple[str, Any, Mapping[str, Any] | None]]
    ) -> list[Selection | RuntimeBanditError]:
        """``select`` for a batch of ``(name, user_id, context)`` requests at once:
        one read of each segment's statistics, one vmapped draw per 8 requests of
        a bandit, one transaction recording all the decisions. Each request's
        answer is its ``Selection``, or the ``RuntimeBanditError`` that ``select``
        would raise for it (a database error fails the whole batch)."""
        out: list[Any] = [None] * len(requests)
        conn = self._conn()
        configs: dict[str, BanditConfig | RuntimeBanditError] = {}
        stats: dict[tuple[str, str], str | None] = {}
        todo: dict[str, list] = {}  # bandit -> [(index, segment, user, context)]
        for i, (name, user_id, context) in enumerate(requests):
            if context is not None and not isinstance(context, Mapping):
                out[i] = RuntimeBanditError(f"context must be a dict, got {context!r}")
                continue
            if user_id is not None and not isinstance(user_id, str | int):
                out[i] = RuntimeBanditError(
                    f"user_id must be a string, got {user_id!r}"
                )
                continue
            try:
                context_json = json.dumps(context) if context is not None else None
            except TypeError as e:
                out[i] = RuntimeBanditError(f"context must be JSON: {e}")
                continue
            if name not in configs:
                try:
                    configs[name] = self._load(name, conn)
                except UnknownBanditError as e:
                    configs[name] = e
            config = configs[name]
            if isinstance(config, Exception):
                out[i] = config
                continue
            segment = self.segment_of(config, user_id, context)
            if (name, segment) not in stats:
                found = self._execute(
                    conn,
                    "SELECT stats FROM segments WHERE bandit = ? AND segment = ?",
                    (name, segment),
                ).fetchone()
                stats[(name, segment)] = found[0] if found else None
            user = None if user_id is None else str(user_id)
            todo.setdefault(name, []).append((i, segment, user, context_json))
        rows = []
        now = time.time()
        for name, items in todo.items():
            config = configs[name]
            states = [_state(config, stats[(name, s)]) for _, s, _, _ in items]
            arms = _draw(config, states, [self._seed() for _ in items])
            for (i, segment, user, context_json), arm in zip(items, arms, strict=True):
                decision_id = uuid.uuid4().hex
                rows.append((decision_id, name, segment, arm, user, context_json, now))
                out[i] = Selection(
                    decision_id, dict(config.arms[arm]), config.names[arm], segment
                )
        if rows and self.postgres:
            # one statement (atomic by itself): one round trip for the batch
            conn.execute(
                "INSERT INTO decisions (id, bandit, segment, arm, user_id, context, "
                "created) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], "
                "%s::int[], %s::text[], %s::text[], %s::float8[])",
                [list(column) for column in zip(*rows, strict=True)],
            )
        elif rows:
            insert = (
                "INSERT INTO decisions (id, bandit, segment, arm, user_id, context, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?)"
            )
            with self._writing(), self._transaction(conn):
                conn.executemany(insert, rows)
        return out

    def update(self, name: str, decision_id: str, reward: float) -> Update:
        """Apply a decision's reward once (a repeat with the same reward is a no-op)."""
        (result,) = self.update_many([(name, decision_id, reward)])
        if isinstance(result, Exception):
            raise result
        return result

    def update_many(
        self, items: Sequence[tuple[str, str, float]]
    ) -> list[Update | RuntimeBanditError]:
        """``update`` for a batch of ``(name, decision_id, reward)`` in one write
        transaction, applied in order (so a decision repeated in the batch is
        applied once). Each item's answer is its ``Update``, or the
        ``RuntimeBanditError`` that ``update`` would raise for it (a database error
        fails the whole batch, and nothing of it is written)."""
        out: list[Any] = [None] * len(items)
        conn = self._conn()
        configs: dict[str, BanditConfig | RuntimeBanditError] = {}
        valid = []
        for i, (name, decision_id, reward) in enumerate(items):
            if name not in configs:
                try:
                    configs[name] = self._load(name, conn)
                except UnknownBanditError as e:
                    configs[name] = e
            config = configs[name]
            if isinstance(config, Exception):
                out[i] = config
                continue
            try:
                reward = config.check_reward(reward)
            except RewardError as e:
                out[i] = e
                continue
            if not isinstance(decision_id, str):
                out[i] = UnknownDecisionError(
                    f"decision_id must be a string, got {decision_id!r}"
                )
                continue
            valid.append((i, name, config, decision_id, reward))
        if valid:
            with self._writing():
                results = self._retrying(lambda: self._update_in(conn, valid))
            for i, result in results.items():
                out[i] = result
        return out

    def _update_in(self, conn, valid) -> dict[int, Update | RuntimeBanditError]:
        """One transaction for the batch. PostgreSQL: the decisions are locked
        first (``FOR UPDATE``, in id order), then the segments they touch (in
        (bandit, segment) order): every writer locks in the same order, so two
        servers never deadlock, and a segment's statistics are read only once its
        lock is held (no lost update); a decision being rewarded by another server
        is waited for, then seen rewarded (idempotent)."""
        results: dict[int, Any] = {}
        lock = " FOR UPDATE" if self.postgres else ""
        with self._transaction(conn):
            ids = sorted({d for _, _, _, d, _ in valid})
            if self.postgres:
                rows = conn.execute(
                    "SELECT id, bandit, segment, arm, reward FROM decisions "
                    "WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                    (ids,),
                ).fetchall()
            else:
                select = (
                    "SELECT id, bandit, segment, arm, reward FROM decisions "
                    "WHERE id = ?"
                )
                rows = [
                    row for d in ids if (row := conn.execute(select, (d,)).fetchone())
                ]
            decisions = {row[0]: list(row[1:]) for row in rows}
            needed = sorted(
                {
                    (name, decisions[d][1])
                    for _, name, _, d, _ in valid
                    if d in decisions and decisions[d][0] == name
                }
            )
            states, applied = {}, {}
            configs = {name: config for _, name, config, _, _ in valid}
            for name, segment in needed:
                found = self._execute(
                    conn,
                    "SELECT stats FROM segments WHERE bandit = ? AND segment = ?"
                    + lock,
                    (name, segment),
                ).fetchone()
                if found is None and self.postgres:
                    # a new segment: insert its row (another server may do so at
                    # once: the loser waits on the row, then locks it) and lock it
                    conn.execute(
                        "INSERT INTO segments (bandit, segment, stats, updates) "
                        "VALUES (%s, %s, %s, 0) ON CONFLICT DO NOTHING",
                        (name, segment, _stats_json(_state(configs[name], None))),
                    )
                    found = conn.execute(
                        "SELECT stats FROM segments WHERE bandit = %s AND "
                        "segment = %s FOR UPDATE",
                        (name, segment),
                    ).fetchone()
                states[(name, segment)] = _state(
                    configs[name], found[0] if found else None
                )
                applied[(name, segment)] = 0
            marks = []
            now = time.time()
            for i, name, config, decision_id, reward in valid:
                row = decisions.get(decision_id)
                if row is None or row[0] != name:
                    where = "" if row is None else f" (it belongs to bandit {row[0]!r})"
                    results[i] = UnknownDecisionError(
                        f"no decision {decision_id!r} for bandit {name!r}{where} "
                        "(never made, or expired while pending)"
                    )
                    continue
                _, segment, arm, previous = row
                if previous is not None:
                    if previous == reward:
                        results[i] = Update(
                            decision_id, False, config.names[arm], segment
                        )
                    else:
                        results[i] = DecisionConflictError(
                            f"decision {decision_id!r} already has reward "
                            f"{previous}; got {reward}"
                        )
                    continue
                update = _programs(config.kind, config.num_arms)[2]
                key = (name, segment)
                states[key] = update(states[key], arm, reward, config.params)
                applied[key] += 1
                row[3] = reward  # a repeat later in this batch is a no-op
                marks.append((reward, now, decision_id))
                results[i] = Update(decision_id, True, config.names[arm], segment)
            writes = [
                (name, segment, _stats_json(states[(name, segment)]), n)
                for (name, segment), n in applied.items()
                if n
            ]
            if writes:
                upsert = (
                    "INSERT INTO segments (bandit, segment, stats, updates) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (bandit, segment) DO UPDATE SET "
                    "stats = excluded.stats, updates = segments.updates + "
                    "excluded.updates"
                )
                if self.postgres:  # one round trip each
                    for write in writes:
                        conn.execute(self._sql(upsert), write)
                    conn.execute(
                        "UPDATE decisions SET reward = m.reward, updated = m.updated "
                        "FROM unnest(%s::float8[], %s::float8[], %s::text[]) "
                        "AS m (reward, updated, id) WHERE decisions.id = m.id",
                        [list(column) for column in zip(*marks, strict=True)],
                    )
                else:
                    conn.executemany(upsert, writes)
                    conn.executemany(
                        "UPDATE decisions SET reward = ?, updated = ? WHERE id = ?",
                        marks,
                    )
        return results

    def stats(self, name: str) -> dict[str, Any]:
        """Decisions, updates, and per segment and arm: selections, updates, mean
        reward and posterior mean."""
        conn = self._conn()
        config = self._load(name, conn)
        _, _, _, posterior_mean, _ = _programs(config.kind, config.num_arms)
        params = config.params
        counts: dict[str, dict[int, tuple]] = {}
        for segment, arm, n, m, mean in self._execute(
            conn,
            "SELECT segment, arm, COUNT(*), COUNT(reward), AVG(reward) FROM decisions "
            "WHERE bandit = ? GROUP BY segment, arm",
            (name,),
        ):
            counts.setdefault(segment, {})[arm] = (n, m, mean)
        posterior = {
            segment: (stats, updates)
            for segment, stats, updates in self._execute(
                conn,
                "SELECT segment, stats, updates FROM segments WHERE bandit = ?",
                (name,),
            )
        }
        segments = {}
        for segment in sorted(set(counts) | set(posterior)):
            stats, updates = posterior.get(segment, (None, 0))
            means = posterior_mean(_state(config, stats), params).tolist()
            arms = []
            for i, arm_name in enumerate(config.names):
                n, m, mean = counts.get(segment, {}).get(i, (0, 0, None))
                arms.append(
                    {
                        "arm": arm_name,
                        "params": config.arms[i],
                        "selections": n,
                        "updates": m,
                        "mean_reward": None if mean is None else float(mean),
                        "posterior_mean": means[i],
                    }
                )
            segments[segment] = {"updates": updates, "arms": arms}
        decisions = sum(a["selections"] for s in segments.values() for a in s["arms"])
        rewarded = sum(a["updates"] for s in segments.values() for a in s["arms"])
        return {
            "bandit": name,
            "kind": config.kind,
            "gamma": config.gamma,
            "arms": list(config.names),
            "decisions": decisions,
            "updates": sum(s["updates"] for s in segments.values()),
            "rewarded_decisions": rewarded,
            "pending": decisions - rewarded,
            "segments": segments,
        }

    def expire(self, name: str, older_than_s: float) -> int:
        """Delete the decisions of ``name`` still waiting for a reward after
        ``older_than_s`` seconds; returns how many. Posteriors are untouched (a
        pending decision never changed them); a later reward for an expired
        decision is refused as unknown. Rewarded decisions are kept (``stats``
        counts them)."""
        self._load(name)
        if (
            isinstance(older_than_s, bool)
            or not isinstance(older_than_s, int | float)
            or not math.isfinite(older_than_s)
            or older_than_s < 0
        ):
            raise RuntimeBanditError(
                f"older_than_s: expected a number of seconds >= 0, got {older_than_s!r}"
            )
        conn = self._conn()
        with self._writing():
            cursor = self._retrying(
                lambda: self._execute(
                    conn,
                    "DELETE FROM decisions WHERE bandit = ? AND reward IS NULL "
                    "AND created < ?",
                    (name, time.time() - older_than_s),
                )
            )
        return cursor.rowcount

    def close(self) -> None:
        """Close this thread's connection (one inherited across ``fork`` is only
        dropped, never closed: it is the parent's)."""
        handle = getattr(self._local, "handle", None)
        if handle is not None:
            self._local.handle = None
            if handle.pid == os.getpid():
                handle.conn.close()


def _draw(config: BanditConfig, states: list, seeds: list[tuple[int, int]]) -> list:
    """One arm per state: the jitted pure ``select`` for one, else the vmapped one
    on chunks of ``_SELECT_CHUNK`` rows (the last padded), one dispatch per chunk."""
    _, select, _, _, select_batch = _programs(config.kind, config.num_arms)
    if len(states) == 1:
        (seed, n), (state,) = seeds[0], states
        return [int(select(np.uint32(seed), np.uint32(n), state, config.params))]
    arms = []
    for start in range(0, len(states), _SELECT_CHUNK):
        chunk = states[start : start + _SELECT_CHUNK]
        pad = _SELECT_CHUNK - len(chunk)
        chunk = chunk + [chunk[-1]] * pad
        stacked = type(chunk[0])(
            **{
                k: np.stack([getattr(s, k) for s in chunk])
                for k in type(chunk[0]).__dataclass_fields__
            }
        )
        part = seeds[start : start + _SELECT_CHUNK]
        part = part + [part[-1]] * pad
        seed = np.asarray([s for s, _ in part], np.uint32)
        n = np.asarray([k for _, k in part], np.uint32)
        drawn = np.asarray(select_batch(seed, n, stacked, config.params))
        arms += [int(a) for a in drawn[: _SELECT_CHUNK - pad]]
    return arms


def _redacted(url: str) -> str:
    """A connection URL without its password."""
    import re

    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


# ------------------------------------------------------------------------ module API

_RUNTIMES: dict[tuple[int, str], Runtime] = {}


def _runtime(db: str | Path | None) -> Runtime:
    db = db if db is not None else default_db()
    path = db if is_postgres_url(db) else str(Path(db).resolve())
    key = (os.getpid(), path)
    runtime = _RUNTIMES.get(key)
    if runtime is None:
        runtime = _RUNTIMES[key] = Runtime(path)
    return runtime


def configure_runtime(name: str, arms=None, *, db=None, **kwargs) -> BanditConfig:
    """Create a runtime bandit (or check that it exists with this config).

    Args:
      name: the bandit's name.
      arms: a list of parameter dicts, a list of names, or a dict name -> params.
      space: instead of arms, a ``SearchSpace`` (or its dict) to draw ``num_arms``
        configurations from (with ``seed``).
      bandit: "beta" (rewards in [0, 1]) or "gaussian" (any finite rewards,
        optionally limited to ``reward_range``).
      gamma: discount in (0, 1] applied to every segment's statistics at each update
        (1 = stationary).
      prior: prior parameters (``prior_alpha``, ``prior_beta``; Gaussian also
        ``prior_mean``, ``prior_kappa``).
      segment_key: a context field (or "user_id") whose value picks a segment; each
        segment has its own posteriors over the same arms.
      replace: reset an existing bandit whose config differs.
      db: the SQLite file or a ``postgresql://`` URL (default
        ``$CONVERGENCE_RUNTIME_DB`` or ``convergence_runtime.db``).
    """
    return _runtime(db).configure(name, arms, **kwargs)


def runtime_select(name: str, user_id=None, context=None, *, db=None) -> Selection:
    """``Selection(decision_id, params, arm, segment)`` for one request."""
    return _runtime(db).select(name, user_id=user_id, context=context)


def runtime_update(name: str, decision_id: str, reward: float, *, db=None) -> Update:
    """Report a decision's reward; idempotent per decision id."""
    return _runtime(db).update(name, decision_id, reward)


def runtime_expire(name: str, older_than_s: float, *, db=None) -> int:
    """Delete decisions pending for longer than ``older_than_s`` seconds (see
    ``Runtime.expire``); returns how many."""
    return _runtime(db).expire(name, older_than_s)


def runtime_stats(name: str, *, db=None) -> dict[str, Any]:
    """Counts and posteriors of a bandit (see ``Runtime.stats``)."""
    return _runtime(db).stats(name)
