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

__all__ = ["Evaluation", "EvaluationPool", "Result", "evaluate_batch"]


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


def _run_one(fn, index, config, single_metric, out, worker=None) -> None:
    start = time.perf_counter()
    try:
        result, notes = fn(dict(config)), []
        if isinstance(result, Result):
            result, notes = result.metrics, list(result.notes)
        metrics = _as_metrics(result, single_metric)
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"metrics {bad} are not finite: {metrics}")
        out.put((index, (metrics, notes), None, time.perf_counter() - start, worker))
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
        message = f"{type(exc).__name__}: {exc}{where}"
        out.put((index, ({}, []), message, time.perf_counter() - start, worker))


class _Worker:
    """A daemon thread that runs one evaluation at a time from its inbox.

    Kept across rounds (``EvaluationPool``) so that a run does not start a thread per
    evaluation; an abandoned (timed-out) worker exits after its call returns.
    """

    def __init__(self, name: str):
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.abandoned = False
        threading.Thread(target=self._loop, daemon=True, name=name).start()

    def _loop(self) -> None:
        while True:
            task = self.inbox.get()
            if task is None or self.abandoned:
                return
            fn, index, config, single_metric, out = task
            _run_one(fn, index, config, single_metric, out, self)
            if self.abandoned:
                return


class EvaluationPool:
    """Reusable worker threads for ``evaluate_batch`` (``close()`` when done).

    At most ``max_workers`` calls run at a time; a call past its timeout is abandoned
    and its worker replaced, so one hanging call never stalls the run.
    """

    def __init__(self, max_workers: int = 4):
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers = max_workers
        self._idle: list[_Worker] = []
        self._started = 0

    def _worker(self) -> _Worker:
        if self._idle:
            return self._idle.pop()
        self._started += 1
        return _Worker(f"convergence-eval-{self._started}")

    def close(self) -> None:
        for w in self._idle:
            w.inbox.put(None)
        self._idle = []

    def __enter__(self) -> EvaluationPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def evaluate_batch(
    fn: Callable[[dict[str, Any]], Any],
    configs: Sequence[Mapping[str, Any]],
    *,
    max_workers: int = 4,
    timeout_s: float | None = 60.0,
    single_metric: str = "score",
    on_result: Callable[[int, Evaluation], None] | None = None,
    pool: EvaluationPool | None = None,
) -> list[Evaluation]:
    """Evaluate ``fn(config)`` for every config, at most ``max_workers`` at a time.

    Returns one ``Evaluation`` per config, in order. Never raises for a failing call.
    ``on_result(index, evaluation)`` is called (on the calling thread) as soon as each
    evaluation is settled, in completion order: resumable runs journal it there.
    ``pool``: worker threads kept across calls (its ``max_workers`` applies); by
    default a pool lives for this call only.
    """
    if pool is None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        with EvaluationPool(max_workers) as own:
            return evaluate_batch(
                fn,
                configs,
                timeout_s=timeout_s,
                single_metric=single_metric,
                on_result=on_result,
                pool=own,
            )
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
    results = [Evaluation(config=dict(c)) for c in configs]
    done: queue.SimpleQueue = queue.SimpleQueue()
    pending = list(range(len(configs)))[::-1]
    running: dict[int, tuple[float, _Worker]] = {}  # index -> (deadline, worker)
    while pending or running:
        while pending and len(running) < pool.max_workers:
            i = pending.pop()
            deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
            worker = pool._worker()
            running[i] = (deadline, worker)
            worker.inbox.put((fn, i, configs[i], single_metric, done))
        wait = min(d for d, _ in running.values()) - time.monotonic()
        try:
            timeout = None if math.isinf(wait) else max(wait, 0.0)
            i, metrics, error, seconds, worker = done.get(timeout=timeout)
        except queue.Empty:
            now = time.monotonic()
            for i in [j for j, (d, _) in running.items() if d <= now]:
                _, worker = running.pop(i)
                worker.abandoned = True  # it exits once its call returns
                results[i].error = f"TimeoutError: no result after {timeout_s} s"
                results[i].seconds = float(timeout_s)
                if on_result is not None:
                    on_result(i, results[i])
            continue
        if i in running and running[i][1] is worker:
            del running[i]  # a late answer from an abandoned call is dropped
            pool._idle.append(worker)
            (results[i].metrics, results[i].notes), results[i].error = metrics, error
            results[i].seconds = seconds
            if on_result is not None:
                on_result(i, results[i])
    return results
