"""Shared test setup.

Four host CPU devices are forced before JAX is imported so that multi-device code can be
tested on a CPU-only machine.

JAX's persistent compilation cache lives in ``.jax_cache/`` at the repository root
(git-ignored; empty in a fresh checkout), shared by the xdist workers and by the
subprocesses that run the experiments and notebooks, so that a program compiled by one
test is loaded, not compiled again, by the next one that builds the same program.
``CJ_TEST_DURATIONS=FILE`` appends each test's call time to FILE as it finishes (a run
cut short still leaves its timings).

After each test module the compiled programs are dropped (``jax.clear_caches``) and the
objects that survive are moved out of the garbage collector's reach (``gc.freeze``). A
worker runs hundreds of modules; without this its heap grows to several GiB and every
full collection walks all of it, so the suite slows down more the longer it runs. A
program needed again is read back from the persistent cache.
"""

import gc
import os
from pathlib import Path

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(Path(__file__).resolve().parent.parent / ".jax_cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

_DURATIONS = os.environ.get("CJ_TEST_DURATIONS")


# Files of long tests (subprocesses, notebooks, small learning bars) run first, so
# that the xdist workers do not end with one of them running while the other idles.
_LONG_FIRST = (
    "tests/test_experiment_grpo.py",
    "tests/test_notebooks.py",
    "tests/test_docs.py",
    "tests/test_experiments.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        for i, prefix in enumerate(_LONG_FIRST):
            if item.nodeid.startswith(prefix):
                return i
        return len(_LONG_FIRST)

    items.sort(key=rank)  # stable: each file's tests stay together, in order


def pytest_runtest_logreport(report):
    # Under xdist the hook runs in the worker and again in the controller: write once.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if _DURATIONS and report.when in ("setup", "call"):
        with open(_DURATIONS, "a") as f:
            f.write(f"{report.duration:.2f} {report.when} {report.nodeid}\n")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    yield
    import jax

    jax.clear_caches()
    gc.collect()
    gc.freeze()
