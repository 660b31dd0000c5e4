"""Diagnostics: the loop's automatic responses to acute training failures.

A score-driven tuner (PBT, SPSA, backoff) sees only the score, a few windows
late. Some failures show in the training signals at once, and a person watching
the logs would act within a window:

- ``LossSpike``: the loss exceeds ``factor`` x the mean of the previous
  ``window`` losses; by default the learning rate is halved.
- ``EntropyCollapse``: the policy's entropy falls below ``fraction`` x its first
  value (or below ``floor``); the entropy bonus is doubled.
- ``KLDrift``: the approximate KL of an update exceeds ``max_kl`` for
  ``patience`` windows in a row; the learning rate is halved.
- ``ExplorationCollapse``: the actions taken in the window stop varying (the
  entropy of their histogram for discrete actions, the mean per-dimension std
  for continuous ones, below a threshold); the entropy bonus is doubled.

Each rule is a frozen dataclass holding its thresholds and its ``response``:
``"reduce_lr"``, ``"raise_entropy"`` or ``"rollback"`` (reload the best
checkpoint), or a tuple of them. Detection is a pure function of the history of
one signal (``LossSpike.check(history)`` and so on), so a rule can be tested, or
used elsewhere, on plain arrays. ``Diagnostics`` is the thin shell the loop
calls after every ``learn``: it keeps the histories, applies the responses
through ``agent.set_hyperparams`` / ``registry.load_best`` and returns one
record per firing, which the loop keeps in ``LoopResult.diagnostics``.

After tensor-optix's ``DiagnosticController`` (1.17.9,
``tensor_optix/core/diagnostic_controller.py``): the same loss-spike rule
(``loss > 5 x rolling mean``, the learning rate halved) and KL rule (a PPO
update too large: smaller steps, not a tighter clip). Where we differ: its
entropy floor is an absolute 0.05 nats for every environment, ours is relative
to the policy's first entropy by default (an absolute ``floor`` is an option);
we add the exploration rule on the actions actually taken, a rollback response,
and a per-rule cooldown so that one persisting condition does not halve the
learning rate every window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "RESPONSES",
    "Diagnostics",
    "EntropyCollapse",
    "ExplorationCollapse",
    "KLDrift",
    "LossSpike",
    "action_spread",
    "default_rules",
]

Response = Literal["reduce_lr", "raise_entropy", "rollback"]
RESPONSES = ("reduce_lr", "raise_entropy", "rollback")


def _first_present(metrics: dict, names: tuple[str, ...]) -> float | None:
    for name in names:
        value = metrics.get(name)
        if value is not None and math.isfinite(float(value)):
            return float(value)
    return None


@dataclass(frozen=True)
class LossSpike:
    """The loss jumps: ``loss_t > factor * mean(loss over the previous window)``.

    Only positive losses are compared (a PPO policy loss changes sign; its value
    loss does not), and the rule waits for ``min_history`` earlier values."""

    factor: float = 5.0
    window: int = 10
    min_history: int = 3
    metrics: tuple[str, ...] = ("loss", "value_loss", "critic_loss")
    """The first of these that ``learn`` reports is watched."""
    response: Response | tuple[Response, ...] = "reduce_lr"
    name: str = "loss_spike"

    def check(self, history) -> tuple[bool, str]:
        history = np.asarray(history, np.float64)
        if len(history) < self.min_history + 1:
            return False, ""
        current = history[-1]
        previous = history[-1 - self.window : -1]
        mean = float(previous.mean())
        if mean > 0 and current > self.factor * mean:
            return True, f"loss {current:.4g} > {self.factor:g} x mean {mean:.4g}"
        return False, ""


@dataclass(frozen=True)
class EntropyCollapse:
    """The policy stops exploring: entropy below ``fraction`` of its first value
    (the policy at the start of the run), or below ``floor`` nats when given."""

    fraction: float = 0.1
    floor: float | None = None
    metrics: tuple[str, ...] = ("entropy",)
    response: Response | tuple[Response, ...] = "raise_entropy"
    name: str = "entropy_collapse"

    def check(self, history) -> tuple[bool, str]:
        history = np.asarray(history, np.float64)
        if len(history) == 0:
            return False, ""
        current = history[-1]
        if self.floor is not None:
            limit, what = self.floor, f"floor {self.floor:g}"
        else:
            limit = self.fraction * history[0]
            what = f"{self.fraction:g} x first entropy {history[0]:.4g}"
        if current < limit:
            return True, f"entropy {current:.4g} < {what}"
        return False, ""


@dataclass(frozen=True)
class KLDrift:
    """Updates move the policy too far: approximate KL between the policy that
    collected the window and the updated one above ``max_kl`` for ``patience``
    windows in a row."""

    max_kl: float = 0.05
    patience: int = 2
    metrics: tuple[str, ...] = ("approx_kl", "kl")
    response: Response | tuple[Response, ...] = "reduce_lr"
    name: str = "kl_drift"

    def check(self, history) -> tuple[bool, str]:
        history = np.asarray(history, np.float64)
        if len(history) < self.patience:
            return False, ""
        recent = history[-self.patience :]
        if np.all(recent > self.max_kl):
            return True, (
                f"approx KL {recent[-1]:.4g} > {self.max_kl:g} for "
                f"{self.patience} windows"
            )
        return False, ""


def action_spread(actions) -> tuple[str, float]:
    """How varied the actions of a window are: ``("entropy", nats)`` of the
    histogram of discrete (integer) actions, or ``("std", value)``, the mean
    over action dimensions of the standard deviation over the window, for
    continuous ones."""
    actions = np.asarray(actions)
    if actions.size == 0:
        raise ValueError("action_spread: the window has no actions")
    if np.issubdtype(actions.dtype, np.integer) or actions.dtype == bool:
        _, counts = np.unique(actions.reshape(-1), return_counts=True)
        p = counts / counts.sum()
        return "entropy", float(-(p * np.log(p)).sum())
    flat = actions.reshape(-1, actions.shape[-1]) if actions.ndim > 2 else actions
    flat = flat.reshape(flat.shape[0], -1)
    return "std", float(flat.std(axis=0).mean())


@dataclass(frozen=True)
class ExplorationCollapse:
    """The actions taken stop varying: the entropy of the window's discrete action
    histogram below ``min_entropy`` nats, or the mean std of continuous actions
    below ``min_std``, for ``patience`` windows in a row."""

    min_entropy: float = 0.05
    min_std: float = 0.01
    patience: int = 2
    response: Response | tuple[Response, ...] = "raise_entropy"
    name: str = "exploration_collapse"

    def check(self, history, kind: str = "entropy") -> tuple[bool, str]:
        history = np.asarray(history, np.float64)
        if len(history) < self.patience:
            return False, ""
        limit = self.min_entropy if kind == "entropy" else self.min_std
        recent = history[-self.patience :]
        if np.all(recent < limit):
            return True, (
                f"action {kind} {recent[-1]:.4g} < {limit:g} for "
                f"{self.patience} windows"
            )
        return False, ""


def default_rules() -> tuple:
    return (LossSpike(), EntropyCollapse(), KLDrift(), ExplorationCollapse())


def _responses(rule) -> tuple[str, ...]:
    response = rule.response
    return (response,) if isinstance(response, str) else tuple(response)


@dataclass
class Diagnostics:
    """The shell: watches every window, fires rules, applies their responses.

    ``lr_factor`` multiplies the learning rate on ``"reduce_lr"`` (never below
    ``min_learning_rate``); ``entropy_factor`` multiplies the entropy bonus on
    ``"raise_entropy"`` (never above ``max_entropy_coef``; a zero bonus becomes
    ``initial_entropy_coef``); ``"rollback"`` reloads the best checkpoint (and
    is skipped, with a note, when none is saved yet). ``lr_key`` /
    ``entropy_key`` name the hyperparameters in ``agent.get_hyperparams()``; a
    response whose hyperparameter the agent does not have is recorded as
    skipped. No rule fires in the first ``warmup`` windows, and a rule that
    fired waits ``cooldown`` windows before it may fire again.
    """

    rules: tuple = field(default_factory=default_rules)
    lr_factor: float = 0.5
    min_learning_rate: float = 1e-6
    entropy_factor: float = 2.0
    initial_entropy_coef: float = 0.01
    max_entropy_coef: float = 0.5
    lr_key: str = "learning_rate"
    entropy_key: str = "ent_coef"
    warmup: int = 3
    cooldown: int = 3
    verbose: bool = False

    def __post_init__(self):
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"Diagnostics.rules: names must be unique, got {names}")
        for rule in self.rules:
            bad = [r for r in _responses(rule) if r not in RESPONSES]
            if bad:
                raise ValueError(
                    f"Diagnostics: rule {rule.name!r} has unknown response(s) "
                    f"{bad}; known: {list(RESPONSES)}"
                )
        if not 0 < self.lr_factor < 1:
            raise ValueError(
                f"Diagnostics.lr_factor: expected a value in (0, 1), got "
                f"{self.lr_factor!r}"
            )
        if not self.entropy_factor > 1:
            raise ValueError(
                f"Diagnostics.entropy_factor: expected a value > 1, got "
                f"{self.entropy_factor!r}"
            )
        self.history: dict[str, list[float]] = {}
        self.events: list[dict] = []
        self._windows = 0
        self._last_fired: dict[str, int] = {}

    def _signal(self, rule, metrics: dict, data) -> tuple[float | None, str]:
        if isinstance(rule, ExplorationCollapse):
            if data is None or getattr(data, "actions", None) is None:
                return None, ""
            actions = getattr(data, "policy_actions", None)
            actions = data.actions if actions is None else actions
            kind, value = action_spread(actions)
            return value, kind
        return _first_present(metrics, rule.metrics), ""

    def observe(self, loop, window: int, metrics: dict, data=None) -> list[dict]:
        """One window: update the histories, fire rules, apply responses."""
        self._windows += 1
        fired = []
        for rule in self.rules:
            value, kind = self._signal(rule, metrics, data)
            if value is None:
                continue
            history = self.history.setdefault(rule.name, [])
            history.append(value)
            if self._windows <= self.warmup:
                continue
            last = self._last_fired.get(rule.name)
            if last is not None and self._windows - last <= self.cooldown:
                continue
            if isinstance(rule, ExplorationCollapse):
                hit, detail = rule.check(history, kind)
            else:
                hit, detail = rule.check(history)
            if not hit:
                continue
            self._last_fired[rule.name] = self._windows
            actions = [self._apply(response, loop) for response in _responses(rule)]
            event = {
                "window": window,
                "rule": rule.name,
                "signal": value,
                "detail": detail,
                "actions": actions,
            }
            if self.verbose:
                print(
                    f"[diagnostics] window {window}: {rule.name}: {detail} -> "
                    + "; ".join(actions)
                )
            self.events.append(event)
            fired.append(event)
        return fired

    def _apply(self, response: str, loop) -> str:
        agent = loop.agent
        if response == "rollback":
            best = loop.registry.best
            if best is None:
                return "rollback skipped: no checkpoint yet"
            loop.registry.load_best(agent)
            return f"rolled back to snapshot {best.id} (score {best.score:.4g})"
        hyperparams = agent.get_hyperparams()
        key = self.lr_key if response == "reduce_lr" else self.entropy_key
        if key not in hyperparams:
            return f"{response} skipped: the agent has no {key!r}"
        old = float(hyperparams[key])
        if response == "reduce_lr":
            new = max(old * self.lr_factor, self.min_learning_rate)
        else:
            base = old if old > 0 else self.initial_entropy_coef / self.entropy_factor
            new = min(base * self.entropy_factor, self.max_entropy_coef)
        if new == old:
            return f"{key} already at its bound {old:.4g}"
        agent.set_hyperparams({**hyperparams, key: new})
        return f"{key} {old:.4g} -> {new:.4g}"
