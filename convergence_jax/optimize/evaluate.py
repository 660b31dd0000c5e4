"""Host-side evaluation of plain Python objectives on a bounded pool of threads.

A call that raises is recorded with its error; a call that runs past ``timeout_s`` is
recorded as timed out and abandoned (its daemon thread is left to finish on its own and
its slot is handed to the next evaluation), so one hanging call never stalls the run.

A callable may return ``Result(metrics, notes)`` to attach notes to a successful
evaluation (the HTTP objective notes the faults it retried).
"""

from __future__ import annotations

import math
import queue
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["Evaluation", "Result", "evaluate_batch"]


class Result(NamedTuple):
    """Metrics with notes (e.g. faults that were retried), returned by an objective."""

    metrics: Any
    notes: list[str]


@dataclass
class Evaluation:
    """The outcome of one call: metrics on success, an error message otherwise."""

    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def _as_metrics(result: Any, single_metric: str) -> dict[str, float]:
    """A bare number is the single metric; a mapping gives several."""
    if isinstance(result, Mapping):
        out = {}
        for k, v in result.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                try:
                    v = float(v)  # NumPy and JAX scalars
                except (TypeError, ValueError):
                    raise ValueError(f"metric {k!r} is not a number: {v!r}") from None
            out[str(k)] = float(v)
        return out
    try:
        value = float(result)
    except (TypeError, ValueError):
        raise ValueError(
            f"objective returned {type(result).__name__}; expected a number or a "
            "dict of metric numbers"
        ) from None
    return {single_metric: value}


def _run_one(fn, index, config, single_metric, out: queue.Queue) -> None:
    start = time.perf_counter()
    try:
        result, notes = fn(dict(config)), []
        if isinstance(result, Result):
            result, notes = result.metrics, list(result.notes)
        metrics = _as_metrics(result, single_metric)
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"metrics {bad} are not finite: {metrics}")
        out.put((index, (metrics, notes), None, time.perf_counter() - start))
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
        message = f"{type(exc).__name__}: {exc}{where}"
        out.put((index, ({}, []), message, time.perf_counter() - start))


def evaluate_batch(
    fn: Callable[[dict[str, Any]], Any],
    configs: Sequence[Mapping[str, Any]],
    *,
    max_workers: int = 4,
    timeout_s: float | None = 60.0,
    single_metric: str = "score",
    on_result: Callable[[int, Evaluation], None] | None = None,
) -> list[Evaluation]:
    """Evaluate ``fn(config)`` for every config, at most ``max_workers`` at a time.

    Returns one ``Evaluation`` per config, in order. Never raises for a failing call.
    ``on_result(index, evaluation)`` is called (on the calling thread) as soon as each
    evaluation is settled, in completion order: resumable runs journal it there.
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
    results = [Evaluation(config=dict(c)) for c in configs]
    done: queue.Queue = queue.Queue()
    pending = list(range(len(configs)))[::-1]
    running: dict[int, float] = {}  # index -> deadline
    while pending or running:
        while pending and len(running) < max_workers:
            i = pending.pop()
            deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
            running[i] = deadline
            threading.Thread(
                target=_run_one,
                args=(fn, i, configs[i], single_metric, done),
                daemon=True,  # an abandoned, hanging call must not block exit
                name=f"convergence-eval-{i}",
            ).start()
        wait = min(running.values()) - time.monotonic()
        try:
            timeout = None if math.isinf(wait) else max(wait, 0.0)
            i, metrics, error, seconds = done.get(timeout=timeout)
        except queue.Empty:
            now = time.monotonic()
            for i in [j for j, d in running.items() if d <= now]:
                del running[i]
                results[i].error = f"TimeoutError: no result after {timeout_s} s"
                results[i].seconds = float(timeout_s)
                if on_result is not None:
                    on_result(i, results[i])
            continue
        if i in running:  # a late answer from an abandoned call is dropped
            del running[i]
            (results[i].metrics, results[i].notes), results[i].error = metrics, error
            results[i].seconds = seconds
            if on_result is not None:
                on_result(i, results[i])
    return results
