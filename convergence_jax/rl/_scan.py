"""The ``run`` of every compiled RL program here (PPO, DQN, SAC, TD3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax


def scan_updates(
    update: Callable[[Any, Any], tuple[Any, dict]],
    state: Any,
    hparams: Any,
    num_updates: int,
    callback: Callable[[dict], None] | None = None,
) -> tuple[Any, dict]:
    """``num_updates`` calls of ``update(state, hparams) -> (state, metrics)`` as
    one ``lax.scan``; metrics stacked ``[num_updates]``. ``callback(metrics)``, if
    given, runs on the host after every update (e.g. a progress bar)."""
    if isinstance(num_updates, bool) or not isinstance(num_updates, int):
        raise ValueError(f"run: num_updates must be an int >= 0, got {num_updates!r}")
    if num_updates < 0:
        raise ValueError(f"run: num_updates must be an int >= 0, got {num_updates!r}")

    def body(state, _):
        state, metrics = update(state, hparams)
        if callback is not None:
            jax.debug.callback(callback, metrics)
        return state, metrics

    return jax.lax.scan(body, state, None, num_updates)
