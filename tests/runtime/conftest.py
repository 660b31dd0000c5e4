"""The runtime tests run on both backends: a SQLite file, and a real PostgreSQL
server (an ``initdb`` cluster in a temporary folder on a free loopback port, one per
test session and xdist worker), each test in a fresh schema of its own."""

import uuid
from urllib.parse import quote

import pytest

from convergence_jax.runtime.pgtemp import TemporaryPostgres, find_pg_bin

NO_SERVER = (
    "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on this machine: "
    "install Debian's postgresql package (.ci/run does) or set $PG_BIN"
)


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server for the session; skips only when no server
    binary exists at all (a server that fails to start is an error)."""
    if find_pg_bin() is None:
        pytest.skip(NO_SERVER)
    with TemporaryPostgres() as server:
        yield server


def fresh_schema(server: TemporaryPostgres) -> str:
    """A URL whose connections work in a new, empty schema."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{server.url}?options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path) -> str:
    """A fresh, empty database: a SQLite file or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "rt.db")
    return fresh_schema(request.getfixturevalue("postgres_server"))


@pytest.fixture
def pg_db(postgres_server) -> str:
    """A fresh PostgreSQL schema (for the tests that only concern PostgreSQL)."""
    return fresh_schema(postgres_server)
