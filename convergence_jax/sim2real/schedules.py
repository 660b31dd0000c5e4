"""Progressive transfer schedules: the share of "real" in a sim/real mix over time.

``transfer_schedule(kind, num_steps, start=0.0, end=1.0)`` returns a pure
function ``step -> fraction`` (a float32 array, ``jit``/``vmap``-safe) that goes
from ``start`` at step 0 to ``end`` at ``num_steps`` and stays at ``end`` after:

* ``linear``: ``start + (end - start) * t``, with ``t = step / num_steps``;
* ``cosine``: ``start + (end - start) * (1 - cos(pi t)) / 2``;
* ``exponential``: ``start + (end - start) * (exp(rate t) - 1) / (exp(rate) - 1)``
  (slow first, fast at the end for ``rate > 0``; the reverse for ``rate < 0``);
* ``step``: ``num_stages`` equal plateaus, ``start + (end - start) *
  floor(num_stages t) / num_stages``, reaching ``end`` at ``num_steps``.

Every schedule is monotone between its endpoints. ``mix_params`` uses the
fraction: each environment of a batch runs the real parameters with that
probability and its simulated ones otherwise.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["SCHEDULES", "mix_params", "transfer_schedule"]


def _linear(t, rate, num_stages):
    return t


def _cosine(t, rate, num_stages):
    return 0.5 * (1.0 - jnp.cos(jnp.pi * t))


def _exponential(t, rate, num_stages):
    return jnp.expm1(rate * t) / math.expm1(rate)


def _step(t, rate, num_stages):
    return jnp.floor(num_stages * t) / num_stages


# kind -> shape on [0, 1] (0 at t = 0, 1 at t = 1, monotone).
SCHEDULES: dict[str, Callable] = {
    "linear": _linear,
    "cosine": _cosine,
    "exponential": _exponential,
    "step": _step,
}


def transfer_schedule(
    kind: str,
    num_steps: int,
    start: float = 0.0,
    end: float = 1.0,
    *,
    rate: float = 5.0,
    num_stages: int = 4,
) -> Callable[[jax.Array], jax.Array]:
    """``step -> fraction``: a schedule from ``start`` to ``end`` over ``num_steps``.

    ``start`` and ``end`` are fractions in ``[0, 1]`` (either may be larger);
    ``rate`` (exponential, non-zero) and ``num_stages`` (step, >= 1) shape it.
    """
    if kind not in SCHEDULES:
        close = difflib.get_close_matches(str(kind), list(SCHEDULES), 1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(
            f"transfer_schedule: unknown kind {kind!r}{hint}; known: "
            f"{', '.join(SCHEDULES)}"
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(
            f"transfer_schedule: num_steps must be an int >= 1, got {num_steps!r}"
        )
    for name, value in (("start", start), ("end", end)):
        if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
            raise ValueError(
                f"transfer_schedule: {name} must be a number in [0, 1], got {value!r}"
            )
    if kind == "exponential" and not (math.isfinite(rate) and rate != 0.0):
        raise ValueError(
            f"transfer_schedule: rate must be finite and non-zero, got {rate!r}"
        )
    if kind == "step" and (
        isinstance(num_stages, bool)
        or not isinstance(num_stages, int)
        or num_stages < 1
    ):
        raise ValueError(
            f"transfer_schedule: num_stages must be an int >= 1, got {num_stages!r}"
        )
    shape = SCHEDULES[kind]
    start, end = float(start), float(end)

    def schedule(step):
        t = jnp.clip(jnp.asarray(step, jnp.float32) / num_steps, 0.0, 1.0)
        return jnp.asarray(
            start + (end - start) * shape(t, rate, num_stages), jnp.float32
        )

    return schedule


def mix_params(key: jax.Array, sim_params, real_params, real_fraction):
    """Per environment, the real ``EnvParams`` with probability ``real_fraction``.

    ``sim_params`` is batched (leaves ``[num_envs]``, e.g. from ``sample_params``);
    ``real_params`` is one ``EnvParams``. Returns ``(params [num_envs], is_real
    [num_envs])``.
    """
    num = jax.tree.leaves(sim_params)[0].shape[0]
    is_real = jax.random.uniform(key, (num,)) < real_fraction
    mixed = jax.tree.map(
        lambda s, r: jnp.where(
            is_real.reshape((num,) + (1,) * (jnp.ndim(s) - 1)),
            jnp.asarray(r, jnp.asarray(s).dtype),
            s,
        ),
        sim_params,
        real_params,
    )
    return mixed, is_real
