"""The in-memory form of an offline-RL dataset: ``Transitions``, a pytree.

Every offline algorithm in ``convergence_jax.offline`` trains on a ``Transitions``
(D4RL's flat layout):

    observations       [N, obs_dim]  float32
    actions            [N] int32 (discrete) or [N, act_dim] float32 (continuous)
    rewards            [N]           float32
    next_observations  [N, obs_dim]  float32
    terminals          [N]           bool   true end of an episode: no bootstrap
    timeouts           [N]           bool   cut by a time limit: bootstrap

Terminals and timeouts are kept apart (D4RL and gymnax 1.0 both do): a Q target
bootstraps through a timeout and not through a terminal. An episode ends at a row
where either flag is set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = ["Transitions", "check_transitions", "episode_returns"]


@struct.dataclass
class Transitions:
    """A flat batch of transitions (see the module docstring for shapes)."""

    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_observations: jax.Array
    terminals: jax.Array
    timeouts: jax.Array

    @property
    def size(self) -> int:
        return self.rewards.shape[0]

    @property
    def discrete(self) -> bool:
        actions = self.actions
        return actions.ndim == 1 and jnp.issubdtype(actions.dtype, jnp.integer)


def check_transitions(
    data: Transitions,
    obs_dim: int | None = None,
    action_dim: int | None = None,
    num_actions: int | None = None,
    name: str = "dataset",
) -> Transitions:
    """Validate shapes, dtypes and values on the host, before anything compiles.

    ``obs_dim`` and either ``action_dim`` (continuous) or ``num_actions``
    (discrete) are the environment's, when known. Raises ``ValueError`` naming
    the field; returns ``data`` with canonical dtypes.
    """
    fields = {k: np.asarray(getattr(data, k)) for k in Transitions.__dataclass_fields__}
    n = fields["rewards"].shape[0] if fields["rewards"].ndim else -1
    if fields["rewards"].ndim != 1:
        raise ValueError(
            f"{name}.rewards: expected shape [N], got {fields['rewards'].shape}"
        )
    if n == 0:
        raise ValueError(f"{name}: empty dataset (0 transitions)")
    for key, value in fields.items():
        if value.shape[:1] != (n,):
            raise ValueError(
                f"{name}.{key}: expected {n} rows (as rewards), got shape {value.shape}"
            )
    for key in ("observations", "next_observations"):
        value = fields[key]
        if value.ndim != 2:
            raise ValueError(f"{name}.{key}: expected [N, obs_dim], got {value.shape}")
        if obs_dim is not None and value.shape[1] != obs_dim:
            raise ValueError(
                f"{name}.{key}: the environment's observations have {obs_dim} "
                f"dimensions, the dataset's have {value.shape[1]}"
            )
        if not np.isfinite(value).all():
            raise ValueError(f"{name}.{key}: contains NaN or infinite values")
    rewards = fields["rewards"]
    if not np.issubdtype(rewards.dtype, np.number):
        raise ValueError(f"{name}.rewards: expected numbers, got dtype {rewards.dtype}")
    bad = np.flatnonzero(~np.isfinite(rewards))
    if bad.size:
        raise ValueError(
            f"{name}.rewards: {bad.size} NaN or infinite values (first at row {bad[0]})"
        )
    actions = fields["actions"]
    if num_actions is not None:
        if actions.ndim != 1 or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(
                f"{name}.actions: the environment has {num_actions} discrete actions; "
                f"expected integer actions [N], got {actions.dtype} {actions.shape}"
            )
        if actions.min() < 0 or actions.max() >= num_actions:
            raise ValueError(
                f"{name}.actions: values must lie in [0, {num_actions}), got "
                f"[{actions.min()}, {actions.max()}]"
            )
        actions = actions.astype(np.int32)
    elif action_dim is not None:
        if actions.ndim != 2 or actions.shape[1] != action_dim:
            raise ValueError(
                f"{name}.actions: the environment's actions have {action_dim} "
                f"dimensions; expected [N, {action_dim}], got {actions.shape}"
            )
        if not np.isfinite(actions).all():
            raise ValueError(f"{name}.actions: contains NaN or infinite values")
        actions = actions.astype(np.float32)
    for key in ("terminals", "timeouts"):
        if fields[key].ndim != 1:
            raise ValueError(f"{name}.{key}: expected [N], got {fields[key].shape}")
    return Transitions(
        observations=jnp.asarray(fields["observations"], jnp.float32),
        actions=jnp.asarray(actions),
        rewards=jnp.asarray(rewards, jnp.float32),
        next_observations=jnp.asarray(fields["next_observations"], jnp.float32),
        terminals=jnp.asarray(fields["terminals"], bool),
        timeouts=jnp.asarray(fields["timeouts"], bool),
    )


def episode_returns(data: Transitions) -> np.ndarray:
    """Undiscounted return of every complete episode (ends at a terminal or a
    timeout); a trailing unfinished episode is left out."""
    rewards = np.asarray(data.rewards, np.float64)
    ends = np.flatnonzero(np.asarray(data.terminals) | np.asarray(data.timeouts))
    if ends.size == 0:
        return np.zeros((0,))
    sums = np.cumsum(rewards)[ends]
    return np.diff(np.concatenate([[0.0], sums]))
