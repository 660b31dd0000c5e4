"""Shared test setup.

Four host CPU devices are forced before JAX is imported so that multi-device code can be
tested on a CPU-only machine.

JAX's persistent compilation cache lives in ``.jax_cache/`` at the repository root
(git-ignored; empty in a fresh checkout), shared by the xdist workers and by the
subprocesses that run the experiments and notebooks, so that a program compiled by one
test is loaded, not compiled again, by the next one that builds the same program.
``CJ_TEST_DURATIONS=FILE`` appends each test's call time to FILE as it finishes (a run
cut short still leaves its timings).
"""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(Path(__file__).resolve().parent.parent / ".jax_cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

_DURATIONS = os.environ.get("CJ_TEST_DURATIONS")


def pytest_runtest_logreport(report):
    if _DURATIONS and report.when in ("setup", "call"):
        with open(_DURATIONS, "a") as f:
            f.write(f"{report.duration:.2f} {report.when} {report.nodeid}\n")
