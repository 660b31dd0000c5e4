"""A throwaway PostgreSQL server for tests and benchmarks: ``initdb`` in a temporary
folder, ``pg_ctl start`` on a free loopback port, ``pg_ctl stop`` and the folder
removed at the end.

::

    with TemporaryPostgres() as pg:
        rt = Runtime(pg.url)          # postgresql://convergence@127.0.0.1:PORT/postgres

It runs the server binaries of the machine (``$PG_BIN``, ``pg_config --bindir``,
``initdb`` on ``PATH``, or Debian's ``/usr/lib/postgresql/*/bin``). PostgreSQL
refuses to run as root: as root, the cluster is created and served as the
``postgres`` user (Debian's package creates it), else as ``nobody``. Nothing here
is used by ``Runtime`` itself.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["TemporaryPostgres", "find_pg_bin"]

USER = "convergence"


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(os.environ["PG_BIN"])
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            )
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            pass
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    # Debian: newest major version first
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += debian
    for folder in candidates:
        path = Path(folder)
        if all((path / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryPostgres:
    """A PostgreSQL cluster in a temporary folder, served on 127.0.0.1.

    Args:
      settings: server settings (``postgresql.conf`` names) passed to ``postgres
        -c``; the default turns ``fsync`` off (a throwaway cluster).
      port: the port (default: a free one).
    """

    def __init__(self, settings: dict[str, str] | None = None, port: int | None = None):
        self.bin = find_pg_bin()
        if self.bin is None:
            raise FileNotFoundError(
                "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found: "
                "install Debian's postgresql package or set $PG_BIN"
            )
        self.settings = {"fsync": "off", "max_connections": "200"} | dict(
            settings or {}
        )
        self.port = port or _free_port()
        self.folder: Path | None = None
        self._run_as: pwd.struct_passwd | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        kwargs = {}
        if self._run_as is not None:
            kwargs = {
                "user": self._run_as.pw_uid,
                "group": self._run_as.pw_gid,
                "extra_groups": [],
            }
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            check=check,
            cwd=self.folder,
            env={**os.environ, "LC_ALL": "C"},
            **kwargs,
        )

    def start(self) -> TemporaryPostgres:
        self.folder = Path(tempfile.mkdtemp(prefix="convergence-pg-"))
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self._run_as = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self._run_as is None:
                raise PermissionError("running as root and no 'postgres' user")
            os.chown(self.folder, self._run_as.pw_uid, self._run_as.pw_gid)
        data = self.folder / "data"
        try:
            self._run(
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )
            options = " ".join(
                ["-c listen_addresses=127.0.0.1", f"-p {self.port}"]
                + [f"-k {self.folder}"]
                + [f"-c {k}={v}" for k, v in self.settings.items()]
            )
            self._run(
                str(self.bin / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self.folder / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            )
        except subprocess.CalledProcessError as e:
            log = self.folder / "server.log"
            text = log.read_text()[-2000:] if log.is_file() else ""
            self._cleanup()
            raise RuntimeError(
                f"PostgreSQL did not start: {' '.join(e.cmd[:2])}: {e.stderr}{text}"
            ) from None
        self._wait()
        return self

    def _wait(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.folder is None:
            return
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.folder / "data"),
            "-m",
            "immediate",
            "-w",
            "stop",
            check=False,
        )
        self._cleanup()

    def _cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
