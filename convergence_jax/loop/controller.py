"""``RLOptimizer``: the autonomous loop — a thin shell over the pure scheduler.

    loop = RLOptimizer(agent, BatchPipeline("CartPole-v1", 8, 128),
                       val_pipeline=BatchPipeline(..., reset_each_window=True))
    result = loop.run()          # returns when the scheduler says DORMANT

Every window the agent learns; every ``interval`` windows (the scheduler backs
off while nothing improves) the loop scores the window, lets the agent act on
the validation pipeline, combines the two (``evaluator.combine``), steps the
backoff scheduler, checkpoints on improvement, optionally rolls back on
degradation, hands DORMANT to the policy manager (spawn, rollback, stop) and
lets the hyperparameter optimizer suggest new values. It stops on DORMANT
(``stop_when_dormant``, when no policy manager decides instead, and not before
``min_episodes_before_dormant`` windows), when the checkpoint score reaches
``target_score``, on ``stop()``, after ``max_episodes`` windows, or when the
pipeline ends.

Checkpoints. A candidate is saved when the scheduler reports an improvement, or,
with an external ``checkpoint_score_fn(agent) -> float`` (a held-out
evaluation, say), when that score beats the best snapshot's. With
``confirm_windows = k > 0`` a candidate that would become the new best is first
re-scored on ``k`` fresh windows of the validation pipeline (or ``k`` more calls
of ``checkpoint_score_fn``); it is saved with the mean of those scores, and only
if that mean still beats the best — so one lucky window cannot replace a good
checkpoint. ``diagnostics`` (``loop.Diagnostics``) watches every window's
training signals and responds to loss spikes, entropy collapse, KL drift and
exploration collapse; its firings are in ``LoopResult.diagnostics``.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax

from convergence_jax.loop.agent import check_agent
from convergence_jax.loop.backoff import (
    STATE_NAMES,
    BackoffParams,
    backoff_scheduler,
)
from convergence_jax.loop.evaluator import Evaluator
from convergence_jax.loop.registry import CheckpointRegistry, Snapshot

__all__ = ["LoopCallback", "LoopResult", "RLOptimizer"]


class LoopCallback:
    """Hooks into the loop; override the ones you need."""

    def on_loop_start(self, loop: RLOptimizer) -> None: ...
    def on_loop_stop(self, loop: RLOptimizer, result: LoopResult) -> None: ...
    def on_episode_end(self, window: int, record: dict | None) -> None: ...
    def on_improvement(self, snapshot: Snapshot) -> None: ...
    def on_plateau(self, window: int, state: str) -> None: ...
    def on_dormant(self, window: int) -> None: ...
    def on_degradation(self, window: int, record: dict) -> None: ...
    def on_hyperparam_update(self, old: dict, new: dict) -> None: ...
    def on_diagnostic(self, event: dict) -> None: ...


@dataclass
class LoopResult:
    reason: str
    """Why the loop stopped."""
    best: Snapshot | None
    records: list[dict]
    """One record per evaluation (see ``RLOptimizer.run``)."""
    windows: int
    env_steps: int
    timing: dict[str, float] = field(default_factory=dict)
    """Seconds: ``total``, ``learn`` (agent.learn), ``act`` (windows acted, train
    and validation), ``overhead`` (everything else: the loop itself), and
    ``checkpoint`` (the part of the overhead spent saving snapshots)."""
    diagnostics: list[dict] = field(default_factory=list)
    """One entry per diagnostic firing: ``window``, ``rule``, ``signal``,
    ``detail`` and the ``actions`` taken (see ``loop.Diagnostics``)."""

    @property
    def best_score(self) -> float:
        return self.best.score if self.best is not None else math.nan


class _CurrentAgent:
    """What pipelines see: always the loop's current agent (it can be swapped)."""

    def __init__(self, loop: RLOptimizer):
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop.agent, name)


class RLOptimizer:
    def __init__(
        self,
        agent,
        pipeline,
        *,
        val_pipeline=None,
        evaluator: Evaluator | None = None,
        scheduler_params: BackoffParams | None = None,
        trend_window: int = 8,
        hparam_optimizer=None,
        registry: CheckpointRegistry | None = None,
        policy_manager=None,
        rollback_on_degradation: bool = False,
        max_episodes: int | None = None,
        stop_when_dormant: bool = True,
        min_episodes_before_dormant: int = 0,
        target_score: float | None = None,
        checkpoint_score_fn: Callable[[Any], float] | None = None,
        confirm_windows: int = 0,
        diagnostics=None,
        callbacks: tuple[LoopCallback, ...] | list[LoopCallback] = (),
        verbose: bool = False,
    ):
        check_agent(agent)
        for name, value, low in (
            ("max_episodes", max_episodes, 1),
            ("min_episodes_before_dormant", min_episodes_before_dormant, 0),
            ("confirm_windows", confirm_windows, 0),
        ):
            if value is None and name == "max_episodes":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"RLOptimizer.{name}: expected an int >= {low}"
                    f"{' or None' if name == 'max_episodes' else ''}, got {value!r}"
                )
        if target_score is not None and not math.isfinite(float(target_score)):
            raise ValueError(
                f"RLOptimizer.target_score: expected a finite number or None, got "
                f"{target_score!r}"
            )
        if checkpoint_score_fn is not None and not callable(checkpoint_score_fn):
            raise ValueError(
                "RLOptimizer.checkpoint_score_fn: expected a callable agent -> float"
            )
        if confirm_windows and val_pipeline is None and checkpoint_score_fn is None:
            raise ValueError(
                "RLOptimizer.confirm_windows: re-scoring needs fresh episodes — give "
                "a val_pipeline (e.g. BatchPipeline(..., reset_each_window=True)) or "
                "a checkpoint_score_fn"
            )
        self.agent = agent
        self.pipeline = pipeline
        self.val_pipeline = val_pipeline
        self.evaluator = evaluator or Evaluator()
        self.scheduler = backoff_scheduler(trend_window)
        self.scheduler_params = scheduler_params or BackoffParams()
        self._step = jax.jit(self.scheduler.step)
        # Compile the transition now, not inside the timed loop.
        self._step(
            self.scheduler.init(self.scheduler_params), 0.0, self.scheduler_params
        )
        self.hparam_optimizer = hparam_optimizer
        self.registry = registry or CheckpointRegistry(
            tempfile.mkdtemp(prefix="convergence_jax_loop_")
        )
        self.policy_manager = policy_manager
        self.rollback_on_degradation = rollback_on_degradation
        self.max_episodes = max_episodes
        self.stop_when_dormant = stop_when_dormant
        self.min_episodes_before_dormant = min_episodes_before_dormant
        self.target_score = None if target_score is None else float(target_score)
        self.checkpoint_score_fn = checkpoint_score_fn
        self.confirm_windows = confirm_windows
        self.diagnostics = diagnostics
        self.callbacks = list(callbacks)
        self.verbose = verbose
        self.records: list[dict] = []
        self.sched_state = self.scheduler.init(self.scheduler_params)
        self._stop_reason: str | None = None
        self._dormant_pending = False
        self.windows = 0
        self.env_steps = 0

    # -- control ----------------------------------------------------------------

    def stop(self, reason: str = "stop() called") -> None:
        """Stop after the current window."""
        self._stop_reason = reason

    def swap_agent(self, agent) -> None:
        """Continue with ``agent`` (a spawned variant); the scheduler restarts."""
        check_agent(agent)
        self.agent = agent
        self.sched_state = self.scheduler.init(self.scheduler_params)

    @property
    def state(self) -> str:
        """ACTIVE, COOLING, DORMANT or WATCHDOG."""
        return STATE_NAMES[int(self.sched_state.mode)]

    @property
    def best(self) -> Snapshot | None:
        return self.registry.best

    # -- the loop -------------------------------------------------------------

    def run(self) -> LoopResult:
        """Run until a stop condition; returns the records and the best snapshot.

        Each evaluation record holds ``window``, ``env_steps``, ``seconds``,
        ``agent`` (which agent was trained), ``state``, ``interval``,
        ``primary_score``, ``train_score``, ``val_score``,
        ``generalization_gap``, the scheduler's ``level`` / ``lower`` / ``upper``
        / ``slope`` / ``noise``, the events (``improved``, ``plateau``,
        ``dormant``, ``degraded``) and ``hyperparams``.
        """
        self._stop_reason = None
        self._val_windows = None
        current = _CurrentAgent(self)
        for pipeline in (self.pipeline, self.val_pipeline):
            if pipeline is not None and hasattr(pipeline, "setup"):
                pipeline.setup()
        train_windows = self.pipeline.episodes(current)
        val_windows = self.val_pipeline.episodes(current) if self.val_pipeline else None
        self._val_windows = val_windows
        timing = self._timing = {"learn": 0.0, "act": 0.0, "checkpoint": 0.0}
        started = time.perf_counter()
        since_eval = 0
        self._fire("on_loop_start", self)
        try:
            while self._stop_reason is None:
                if self.max_episodes is not None and self.windows >= self.max_episodes:
                    self._stop_reason = f"max_episodes ({self.max_episodes}) reached"
                    break
                t0 = time.perf_counter()
                try:
                    data = next(train_windows)
                except StopIteration:
                    self._stop_reason = "pipeline exhausted"
                    break
                t1 = time.perf_counter()
                learn_metrics = self.agent.learn(data)
                t2 = time.perf_counter()
                timing["act"] += t1 - t0
                timing["learn"] += t2 - t1
                self.windows += 1
                self.env_steps += data.num_steps
                if self.diagnostics is not None:
                    for event in self.diagnostics.observe(
                        self, self.windows, learn_metrics, data
                    ):
                        self._fire("on_diagnostic", event)
                since_eval += 1
                record = None
                if since_eval >= max(1, int(self.sched_state.interval)):
                    since_eval = 0
                    record = self._evaluate(data, learn_metrics, val_windows, timing)
                    record["seconds"] = time.perf_counter() - started
                self._fire("on_episode_end", self.windows, record)
        finally:
            for pipeline in (self.pipeline, self.val_pipeline):
                if pipeline is not None and hasattr(pipeline, "teardown"):
                    pipeline.teardown()
        # A two-window tuner (SPSA, momentum) leaves the agent on its last probe:
        # end on the tuner's estimate instead.
        center = getattr(self.hparam_optimizer, "center_hyperparams", None)
        if callable(center):
            hyperparams = self.agent.get_hyperparams()
            centered = center(hyperparams)
            if centered != hyperparams:
                self.agent.set_hyperparams(centered)
        wait = getattr(self.agent, "wait_until_saved", None)
        if callable(wait):  # background checkpoint writes land before we return
            wait()
        timing["total"] = time.perf_counter() - started
        timing["overhead"] = timing["total"] - timing["learn"] - timing["act"]
        result = LoopResult(
            reason=self._stop_reason or "stopped",
            best=self.registry.best,
            records=self.records,
            windows=self.windows,
            env_steps=self.env_steps,
            timing=timing,
            diagnostics=list(self.diagnostics.events) if self.diagnostics else [],
        )
        self._fire("on_loop_stop", self, result)
        return result

    def _evaluate(self, data, learn_metrics, val_windows, timing) -> dict:
        train = self.evaluator.score(data, learn_metrics)
        if val_windows is not None:
            t0 = time.perf_counter()
            val_data = next(val_windows)
            timing["act"] += time.perf_counter() - t0
            val = self.evaluator.score(val_data)
            combined = self.evaluator.combine(train, val)
        else:
            combined = train
            combined.metrics.setdefault("train_score", train.primary_score)
            combined.metrics.setdefault("val_score", math.nan)
            combined.metrics.setdefault("generalization_gap", math.nan)
        self.sched_state, event = self._step(
            self.sched_state, combined.primary_score, self.scheduler_params
        )
        event = {k: v.item() for k, v in jax.device_get(event._asdict()).items()}
        hyperparams = self.agent.get_hyperparams()
        record = {
            "window": self.windows,
            "env_steps": self.env_steps,
            "agent": getattr(self.agent, "name", type(self.agent).__name__),
            "state": self.state,
            "interval": float(self.sched_state.interval),
            "primary_score": combined.primary_score,
            **combined.metrics,
            **event,
            "hyperparams": hyperparams,
        }
        self.records.append(record)
        if self.verbose:
            print(
                f"[loop] window {self.windows:5d}  {record['state']:8s} "
                f"score {record['primary_score']:9.3f}  "
                f"trend {record['level']:9.3f}  interval {record['interval']:.0f}"
            )
        if self.policy_manager is not None:
            self.policy_manager.observe(self.agent, record)
        if self.checkpoint_score_fn is not None:
            record["checkpoint_score"] = float(self.checkpoint_score_fn(self.agent))
        checkpoint_score = record.get("checkpoint_score", combined.primary_score)
        best = self.registry.best
        beats_best = math.isfinite(checkpoint_score) and (
            best is None or not checkpoint_score <= best.score
        )
        if event["improved"] or (self.checkpoint_score_fn is not None and beats_best):
            score = checkpoint_score
            if self.confirm_windows and beats_best and best is not None:
                score = record["confirmed_score"] = self._confirm()
                record["checkpoint"] = (
                    "confirmed" if score > best.score else "unconfirmed"
                )
            if record.get("checkpoint") != "unconfirmed":
                record.setdefault("checkpoint", "saved")
                t0 = time.perf_counter()
                snapshot = self.registry.save(
                    self.agent,
                    score,
                    hyperparams,
                    self.windows,
                    {k: v for k, v in combined.metrics.items() if isinstance(v, float)},
                )
                self._timing["checkpoint"] += time.perf_counter() - t0
                if self.hparam_optimizer is not None:
                    self.hparam_optimizer.on_improvement(record)
                self._fire("on_improvement", snapshot)
        if self.target_score is not None and checkpoint_score >= self.target_score:
            reached = checkpoint_score
            if self.confirm_windows:
                reached = record.get("confirmed_score")
                if reached is None:
                    reached = record["confirmed_score"] = self._confirm()
            if reached >= self.target_score:
                self.stop(
                    f"target_score reached: {reached:.6g} >= {self.target_score:.6g}"
                )
        if event["plateau"]:
            self._fire("on_plateau", self.windows, record["state"])
        if event["degraded"]:
            if self.rollback_on_degradation and self.registry.best is not None:
                self.registry.load_best(self.agent)
            self._fire("on_degradation", self.windows, record)
        # DORMANT before min_episodes_before_dormant windows is deferred: it is
        # acted on at the first evaluation after that, unless the scheduler has
        # left DORMANT / WATCHDOG (an improvement or a degradation) by then.
        if event["dormant"]:
            self._dormant_pending = True
        elif record["state"] in ("ACTIVE", "COOLING"):
            self._dormant_pending = False
        if self._dormant_pending:
            if self.windows < self.min_episodes_before_dormant:
                record["dormant_deferred"] = True
            else:
                self._dormant_pending = False
                self._fire("on_dormant", self.windows)
                if self.hparam_optimizer is not None:
                    self.hparam_optimizer.on_plateau(record)
                if self.policy_manager is not None:
                    self.policy_manager.on_dormant(self)
                elif self.stop_when_dormant and self._stop_reason is None:
                    self.stop("DORMANT: converged (no improvement beyond the noise)")
        if self.hparam_optimizer is not None and self._stop_reason is None:
            old = self.agent.get_hyperparams()
            new = self.hparam_optimizer.suggest(old, record)
            if new != old:
                self.agent.set_hyperparams(new)
                self._fire("on_hyperparam_update", old, new)
        return record

    def _confirm(self) -> float:
        """Mean score of ``confirm_windows`` fresh evaluations of the agent."""
        scores = []
        for _ in range(self.confirm_windows):
            if self.checkpoint_score_fn is not None:
                scores.append(float(self.checkpoint_score_fn(self.agent)))
                continue
            t0 = time.perf_counter()
            data = next(self._val_windows)
            self._timing["act"] += time.perf_counter() - t0
            scores.append(self.evaluator.score(data).primary_score)
        finite = [x for x in scores if math.isfinite(x)]
        return sum(finite) / len(finite) if finite else math.nan

    def _fire(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(*args)
