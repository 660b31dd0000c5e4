"""Scores for windows: what "better" means to the loop.

``score(window, learn_metrics) -> EvalMetrics`` turns a window into a primary
score; ``combine(train, val)`` merges a training and a validation score. The
default primary score is the validation score, and every combined record carries
``train_score``, ``val_score`` and ``generalization_gap = train - val``.
Subclass to plug in a different notion (``SharpeEvaluator``, ``MinEvaluator``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["EvalMetrics", "Evaluator", "MinEvaluator", "SharpeEvaluator"]


@dataclass
class EvalMetrics:
    primary_score: float
    metrics: dict[str, float] = field(default_factory=dict)


class Evaluator:
    """Mean return of the episodes that ended in the window (else the
    environments' last finished returns; NaN when no episode has ended yet)."""

    def score(self, episode_data, learn_metrics: dict | None = None) -> EvalMetrics:
        returns = episode_data.episode_returns
        if len(returns) == 0:
            returns = episode_data.recent_returns
        value = float(np.mean(returns)) if len(returns) else math.nan
        return EvalMetrics(
            primary_score=value,
            metrics={"episode_return": value, "episodes": float(len(returns))},
        )

    def combine(self, train: EvalMetrics, val: EvalMetrics) -> EvalMetrics:
        return EvalMetrics(
            primary_score=val.primary_score,
            metrics={
                "train_score": train.primary_score,
                "val_score": val.primary_score,
                "generalization_gap": train.primary_score - val.primary_score,
            },
        )


class MinEvaluator(Evaluator):
    """Primary score ``min(train, val)``: a policy is as good as its worse side."""

    def combine(self, train: EvalMetrics, val: EvalMetrics) -> EvalMetrics:
        combined = super().combine(train, val)
        combined.primary_score = min(train.primary_score, val.primary_score)
        return combined


class SharpeEvaluator(Evaluator):
    """Sharpe ratio of the per-step rewards summed over environments:
    ``mean / std * sqrt(periods)`` (``periods`` annualizes, e.g. 252 for days)."""

    def __init__(self, periods: float = 1.0):
        self.periods = periods

    def score(self, episode_data, learn_metrics: dict | None = None) -> EvalMetrics:
        rewards = np.asarray(episode_data.rewards, np.float64)
        pnl = rewards.reshape(rewards.shape[0], -1).sum(axis=1)
        std = pnl.std(ddof=1) if len(pnl) > 1 else 0.0
        sharpe = float(pnl.mean() / std * math.sqrt(self.periods)) if std > 0 else 0.0
        return EvalMetrics(
            primary_score=sharpe,
            metrics={"sharpe": sharpe, "mean_reward": float(pnl.mean())},
        )
