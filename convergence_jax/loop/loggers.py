"""Logging callbacks for the loop: TensorBoard, Weights & Biases, a terminal
dashboard. Each is a ``LoopCallback``; pass it in ``RLOptimizer(callbacks=...)``.

    loop.RLOptimizer(agent, pipeline, callbacks=[
        loop.TensorBoardCallback("runs/cartpole"),       # tensorboardX event files
        loop.WandbCallback(project="cartpole"),          # offline unless mode="online"
        loop.RichDashboard(),                             # rich, in the terminal
    ])

The libraries are the optional extra ``pip install convergence_jax[logging]``
(``tensorboardX``, ``wandb``, ``rich``); each is imported when its callback
starts, so the loop never needs them.

**What is logged, once per evaluation** (the x-axis is the window, or the
environment steps with ``step="env_steps"``): ``score/primary``, the record's
numbers under ``loop/`` (``train_score``, ``val_score``,
``generalization_gap``, the scheduler's ``level`` / ``lower`` / ``upper`` /
``slope`` / ``noise``, ``interval``, ``env_steps``, ``seconds``, the event
flags, and ``state`` as its index in ``STATE_NAMES``), the hyperparameters the
window ran with under ``hyperparams/``, any nested dict of numbers in the
record under its own name, and the events of that evaluation: ``score/best``
and ``events/improvement`` (a checkpoint), ``events/plateau``,
``events/dormant``, ``events/degradation`` (with ``score/at_degradation``) and
``tuning/relative_change`` (``||(new - old) / |old|||_2`` over the
hyperparameters an optimizer changed), and ``events/diagnostic`` with
``diagnostic/<rule>`` (the rule's signal) when a ``loop.Diagnostics`` rule
fires (on a window without evaluation, at that window). tensor-optix 1.17.9's
TensorBoard and W&B callbacks log the same groups (read for this module); here
the groups of one evaluation are written together, in one call, at one step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from convergence_jax.loop.backoff import STATE_NAMES
from convergence_jax.loop.controller import LoopCallback

__all__ = ["RichDashboard", "TensorBoardCallback", "WandbCallback", "record_scalars"]

_INSTALL = "install the logging extra: pip install 'convergence_jax[logging]'"


def _number(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:  # 0-d arrays
        try:
            return float(value.item())
        except (TypeError, ValueError):
            return None
    return None


def record_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one evaluation record, by tag (see the module docstring).

    Non-finite numbers (a bound not yet defined, no validation score) are left
    out, except ``score/primary``: a NaN there is a failed evaluation.
    """
    scalars: dict[str, float] = {}
    for key, value in record.items():
        if key == "window":
            continue
        if key == "primary_score":
            scalars["score/primary"] = float(value)
        elif key == "state" and value in STATE_NAMES:
            scalars["loop/state"] = float(STATE_NAMES.index(value))
        elif isinstance(value, Mapping):
            group = "hyperparams" if key == "hyperparams" else key
            for name, inner in value.items():
                number = _number(inner)
                if number is not None and math.isfinite(number):
                    scalars[f"{group}/{name}"] = number
        else:
            number = _number(value)
            if number is not None and math.isfinite(number):
                scalars[f"loop/{key}"] = number
    return scalars


def relative_change(old: Mapping, new: Mapping) -> float:
    """``||(new - old) / |old|||_2`` over the numeric names both share."""
    total = 0.0
    for name, value in new.items():
        a, b = _number(old.get(name)), _number(value)
        if a is not None and b is not None:
            total += ((b - a) / (abs(a) + 1e-12)) ** 2
    return math.sqrt(total)


class _ScalarLogger(LoopCallback):
    """Collects an evaluation's events and writes everything at its step."""

    def __init__(self, step: str = "window"):
        if step not in ("window", "env_steps"):
            raise ValueError(f"step must be 'window' or 'env_steps', got {step!r}")
        self.step = step
        self._pending: dict[str, float] = {}
        self._last_step = 0
        self._loop = None

    # what a backend implements
    def _open(self, loop) -> None: ...
    def _write(self, step: int, scalars: dict[str, float]) -> None: ...
    def _close(self, result) -> None: ...

    def on_loop_start(self, loop) -> None:
        self._pending = {}
        self._loop = loop
        self._open(loop)

    def on_loop_stop(self, loop, result) -> None:
        if self._pending:
            self._write(self._last_step, self._pending)
            self._pending = {}
        self._close(result)

    def on_episode_end(self, window: int, record: dict | None) -> None:
        if record is None:
            if self._pending:  # a diagnostic fired on a window without evaluation
                step = window if self.step == "window" else self._loop.env_steps
                self._last_step = int(step)
                self._write(self._last_step, self._pending)
                self._pending = {}
            return
        scalars = record_scalars(record)
        scalars.update(self._pending)
        self._pending = {}
        step = int(record.get(self.step, window))
        self._last_step = step
        self._write(step, scalars)

    def on_improvement(self, snapshot) -> None:
        self._pending["score/best"] = float(snapshot.score)
        self._pending["events/improvement"] = 1.0

    def on_plateau(self, window: int, state: str) -> None:
        self._pending["events/plateau"] = 1.0

    def on_dormant(self, window: int) -> None:
        self._pending["events/dormant"] = 1.0

    def on_degradation(self, window: int, record: dict) -> None:
        self._pending["events/degradation"] = 1.0
        self._pending["score/at_degradation"] = float(record["primary_score"])

    def on_hyperparam_update(self, old: dict, new: dict) -> None:
        self._pending["tuning/relative_change"] = relative_change(old, new)

    def on_diagnostic(self, event: dict) -> None:
        self._pending["events/diagnostic"] = 1.0
        signal = _number(event.get("signal"))
        if signal is not None:
            self._pending[f"diagnostic/{event['rule']}"] = signal


def _result_summary(result) -> dict[str, Any]:
    return {
        "reason": result.reason,
        "best_score": result.best_score,
        "windows": result.windows,
        "env_steps": result.env_steps,
        **{f"seconds_{k}": v for k, v in result.timing.items()},
    }


class TensorBoardCallback(_ScalarLogger):
    """TensorBoard event files through ``tensorboardX.SummaryWriter``.

    ``log_dir``: the run's folder (``tensorboard --logdir`` its parent);
    ``None`` lets tensorboardX pick ``runs/<date>_<host>``. At the stop the
    result (reason, best score, windows, environment steps, timing) is written
    as the text ``loop/result``. ``writer_kwargs`` go to ``SummaryWriter``.
    """

    def __init__(
        self,
        log_dir: str | None = None,
        *,
        step: str = "window",
        flush_secs: int = 10,
        **writer_kwargs,
    ):
        super().__init__(step)
        self.log_dir = None if log_dir is None else str(log_dir)
        self.flush_secs = flush_secs
        self.writer_kwargs = writer_kwargs
        self.writer = None

    def _open(self, loop) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError as err:
            raise ImportError(
                f"TensorBoardCallback needs tensorboardX: {_INSTALL}"
            ) from err
        self.writer = SummaryWriter(
            logdir=self.log_dir, flush_secs=self.flush_secs, **self.writer_kwargs
        )
        self.log_dir = self.writer.logdir

    def _write(self, step, scalars) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def _close(self, result) -> None:
        lines = [f"{k}: {v}" for k, v in _result_summary(result).items()]
        self.writer.add_text("loop/result", "  \n".join(lines), self._last_step)
        self.writer.close()
        self.writer = None


class WandbCallback(_ScalarLogger):
    """A Weights & Biases run, **offline by default** (no network, no account).

    ``mode="offline"`` writes the run under ``<dir>/wandb/offline-run-*``
    (``wandb sync`` uploads it later); pass ``mode="online"`` to stream it.
    The run's config holds ``config`` plus the agent's starting
    ``hyperparams``; at the stop its summary gets the result (reason, best
    score, windows, environment steps, timing) and the run finishes, its files
    complete on disk. ``init_kwargs`` go to ``wandb.init``.
    """

    def __init__(
        self,
        project: str = "convergence_jax",
        *,
        name: str | None = None,
        dir: str | None = None,
        mode: str = "offline",
        config: dict | None = None,
        tags: list[str] | None = None,
        step: str = "window",
        **init_kwargs,
    ):
        super().__init__(step)
        self.project, self.name, self.dir, self.mode = project, name, dir, mode
        self.config = dict(config or {})
        self.tags = tags
        self.init_kwargs = init_kwargs
        self.run = None
        self.run_dir: str | None = None
        """The run's folder (``offline-run-*``), once started."""

    def _open(self, loop) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ImportError(f"WandbCallback needs wandb: {_INSTALL}") from err
        kwargs = {"settings": wandb.Settings(silent=True, console="off")}
        kwargs.update(self.init_kwargs)
        config = {**self.config, "hyperparams": loop.agent.get_hyperparams()}
        self.run = wandb.init(
            project=self.project,
            name=self.name,
            dir=None if self.dir is None else str(self.dir),
            mode=self.mode,
            config=config,
            tags=self.tags,
            **kwargs,
        )
        self.run_dir = str(self.run.settings.sync_dir)

    def _write(self, step, scalars) -> None:
        self.run.log(scalars, step=step, commit=True)  # one row per step, final now

    def _close(self, result) -> None:
        import wandb

        self.run.summary.update(_result_summary(result))
        self.run.finish()
        self.run = None
        # finish() can return before wandb's service has written the run's last
        # block to disk; shutting the service down flushes it (unless another
        # run of this process still uses it). The next wandb.init restarts it.
        if wandb.run is None:
            wandb.teardown()


def _finite_or_low(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


_BLOCKS = "▁▂▃▄▅▆▇█"
_STATE_STYLES = {
    "ACTIVE": "bold green",
    "COOLING": "bold yellow",
    "DORMANT": "bold red",
    "WATCHDOG": "bold magenta",
}


def sparkline(values, width: int = 32) -> str:
    """The newest ``width`` values as block characters, low to high."""
    values = [v for v in values[-width:] if math.isfinite(v)]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return _BLOCKS[3] * len(values)
    top = len(_BLOCKS) - 1
    return "".join(_BLOCKS[round((v - lo) / (hi - lo) * top)] for v in values)


class RichDashboard(LoopCallback):
    """A terminal dashboard drawn with ``rich``.

    ``live=True`` (default) redraws one panel in place every ``refresh_every``
    evaluations (``rich.live.Live`` without its refresh thread: the loop draws
    it, so nothing runs between windows); ``live=False`` prints one line per
    evaluation instead (logs, CI). At the stop a summary table follows.
    ``console``: a ``rich.console.Console`` (default: a new one on stdout);
    ``render()`` returns the current panel.
    """

    def __init__(
        self,
        console=None,
        *,
        title: str = "convergence_jax loop",
        live: bool = True,
        history: int = 32,
        refresh_every: int = 1,
    ):
        if not isinstance(refresh_every, int) or refresh_every < 1:
            raise ValueError(
                "RichDashboard.refresh_every: expected an int >= 1, got "
                f"{refresh_every!r}"
            )
        self.console = console
        self.title = title
        self.live = live
        self.history = history
        self.refresh_every = refresh_every
        self._live = None
        self._reset()

    def _reset(self) -> None:
        self.scores: list[float] = []
        self.record: dict = {}
        self.best: float = math.nan
        self.events = {
            "improvements": 0,
            "plateaus": 0,
            "dormant": 0,
            "degradations": 0,
            "hyperparam updates": 0,
            "diagnostics": 0,
        }
        self.evaluations = 0
        self.started = time.perf_counter()

    def on_loop_start(self, loop) -> None:
        try:
            from rich.console import Console
            from rich.live import Live
        except ImportError as err:
            raise ImportError(f"RichDashboard needs rich: {_INSTALL}") from err
        if self.console is None:
            self.console = Console()
        self._reset()
        self.record = {"hyperparams": loop.agent.get_hyperparams()}
        if self.live:
            self._live = Live(self.render(), console=self.console, auto_refresh=False)
            self._live.start()

    def on_episode_end(self, window: int, record: dict | None) -> None:
        if record is None:
            return
        self.record = record
        self.scores = (self.scores + [float(record["primary_score"])])[-self.history :]
        self.evaluations += 1
        if self._live is not None:
            if self.evaluations % self.refresh_every == 0:
                self._live.update(self.render(), refresh=True)
        else:
            self.console.print(self._line())

    def on_improvement(self, snapshot) -> None:
        # The registry's best is the highest checkpointed score.
        self.best = max(float(snapshot.score), self.best, key=_finite_or_low)
        self.events["improvements"] += 1

    def on_plateau(self, window: int, state: str) -> None:
        self.events["plateaus"] += 1

    def on_dormant(self, window: int) -> None:
        self.events["dormant"] += 1

    def on_degradation(self, window: int, record: dict) -> None:
        self.events["degradations"] += 1

    def on_hyperparam_update(self, old: dict, new: dict) -> None:
        self.events["hyperparam updates"] += 1

    def on_diagnostic(self, event: dict) -> None:
        self.events["diagnostics"] += 1

    def on_loop_stop(self, loop, result) -> None:
        from rich.table import Table

        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.stop()
            self._live = None
            self.console.line()
        table = Table(title="loop result", show_header=False)
        table.add_column("", style="dim")
        table.add_column("")
        for key, value in _result_summary(result).items():
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            table.add_row(key, text)
        self.console.print(table)

    # -- drawing ------------------------------------------------------------------

    def _line(self) -> str:
        r = self.record
        return (
            f"window {r.get('window', 0):6d}  {r.get('state', ''):8s}  "
            f"score {r.get('primary_score', math.nan):10.3f}  "
            f"best {self.best:10.3f}  level {r.get('level', math.nan):10.3f}  "
            f"interval {r.get('interval', math.nan):4.0f}"
        )

    def render(self):
        """The dashboard as a ``rich`` renderable (a ``Panel``)."""
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        r = self.record
        elapsed = time.perf_counter() - self.started
        steps = r.get("env_steps", 0)
        state = r.get("state", "ACTIVE")

        score = Text()
        for label, key in (("last", "primary_score"), ("level", "level")):
            score.append(f"{label:6s}", style="dim")
            score.append(f"{r.get(key, math.nan):.4g}\n")
        score.append(f"{'best':6s}", style="dim")
        score.append(f"{self.best:.4g}\n", style="bold green")
        score.append(f"{'band':6s}", style="dim")
        score.append(
            f"[{r.get('lower', math.nan):.4g}, {r.get('upper', math.nan):.4g}]\n"
        )
        score.append(sparkline(self.scores, self.history), style="green")

        status = Text()
        status.append(f"{state}\n", style=_STATE_STYLES.get(state, "white"))
        status.append(f"{'window':11s}", style="dim")
        status.append(f"{r.get('window', 0)}\n")
        status.append(f"{'env steps':11s}", style="dim")
        status.append(f"{steps:,}\n")
        status.append(f"{'interval':11s}", style="dim")
        status.append(f"{r.get('interval', math.nan):.0f}\n")
        status.append(f"{'steps/s':11s}", style="dim")
        status.append(f"{steps / max(elapsed, 1e-9):,.0f}\n")
        for name, count in self.events.items():
            if count:
                status.append(f"{name} {count}\n", style="cyan")

        hyper = Text()
        for name, value in (r.get("hyperparams") or {}).items():
            hyper.append(f"{name[:16]:17s}", style="dim")
            number = _number(value)
            hyper.append(f"{number:.4g}\n" if number is not None else f"{value}\n")

        grid = Table.grid(expand=True, padding=(0, 2))
        for name in ("score", "state", "hyperparams"):
            grid.add_column(name, ratio=1)
        grid.add_row(score, status, hyper)
        header = f"{self.title}  |  {elapsed:.1f}s  |  {self.evaluations} evaluations"
        return Panel(grid, title=header, border_style="blue")
