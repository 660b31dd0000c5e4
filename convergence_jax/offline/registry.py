"""Every offline algorithm by name: ``ALGORITHMS[name] = Algorithm(config, hparams,
make)``.

    algo = get_algorithm("cql")
    program = algo.make(algo.config(num_steps=1000), obs_dim, spec)
    state, metrics = jax.jit(program.train)(key, data)

To add an algorithm: write its module with ``XConfig`` / ``XHParams`` /
``make_x(config, obs_dim, action_spec)`` following ``offline/_common.py``, then add
one entry to ``ALGORITHMS`` below, e.g. ``"bcq": Algorithm(BCQConfig, BCQHParams,
make_bcq)``. ``discrete`` / ``continuous`` say which action spaces the algorithm
supports; ``get_algorithm`` and ``make_algorithm`` check them. (The Decision
Transformer is not here: its policy keeps a context, see ``offline.dt``.)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import NamedTuple

from convergence_jax.offline._common import ActionSpec
from convergence_jax.offline.bc import BCConfig, BCHParams, make_bc
from convergence_jax.offline.bcq import BCQConfig, BCQHParams, make_bcq
from convergence_jax.offline.bear import BEARConfig, BEARHParams, make_bear
from convergence_jax.offline.cql import CQLConfig, CQLHParams, make_cql
from convergence_jax.offline.iql import IQLConfig, IQLHParams, make_iql
from convergence_jax.offline.td3bc import TD3BCConfig, TD3BCHParams, make_td3bc

__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm", "make_algorithm"]


class Algorithm(NamedTuple):
    config: type
    """The frozen config dataclass (static sizes and default numbers)."""
    hparams: type
    """The HParams struct (every number; vmap over it for a sweep)."""
    make: Callable
    """``make(config, obs_dim, action_spec) -> program NamedTuple``."""
    discrete: bool = True
    """Supports discrete actions."""
    continuous: bool = True
    """Supports continuous actions."""


ALGORITHMS: dict[str, Algorithm] = {
    "bc": Algorithm(BCConfig, BCHParams, make_bc),
    "td3bc": Algorithm(TD3BCConfig, TD3BCHParams, make_td3bc, discrete=False),
    "cql": Algorithm(CQLConfig, CQLHParams, make_cql),
    "iql": Algorithm(IQLConfig, IQLHParams, make_iql),
    "bcq": Algorithm(BCQConfig, BCQHParams, make_bcq),
    "bear": Algorithm(BEARConfig, BEARHParams, make_bear, discrete=False),
}


def get_algorithm(name: str) -> Algorithm:
    """The registry entry of ``name``; a clear error (with a suggestion) if none."""
    if name not in ALGORITHMS:
        close = difflib.get_close_matches(name, ALGORITHMS, 3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown offline algorithm {name!r}{hint}; known: "
            f"{', '.join(sorted(ALGORITHMS))}"
        )
    return ALGORITHMS[name]


def make_algorithm(name: str, obs_dim: int, action_spec: ActionSpec, **config):
    """``get_algorithm(name)``'s program for ``config`` (keyword overrides of its
    config's defaults); checks that the algorithm supports the action space."""
    algo = get_algorithm(name)
    kind = "discrete" if action_spec.discrete else "continuous"
    if not getattr(algo, kind):
        raise ValueError(f"offline algorithm {name!r} does not support {kind} actions")
    return algo.make(algo.config(**config), obs_dim, action_spec)
