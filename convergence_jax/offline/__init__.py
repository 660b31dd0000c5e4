"""Offline RL: datasets collected in-process or loaded from disk, and the offline
algorithms (BC, TD3+BC, CQL, IQL, BCQ, BEAR, Decision Transformer) as compiled
programs. See ``docs/offline.md``.
"""

from convergence_jax.offline.dataset import (
    Transitions,
    check_transitions,
    episode_returns,
)

__all__ = ["Transitions", "check_transitions", "episode_returns"]
