"""Group-relative advantage estimators and DAPO's reward-side tools (pure functions).

Layout: ``rewards`` is a flat ``[num_prompts * group_size]`` vector in which the
``group_size`` completions of one prompt are consecutive rows (the layout TRL and
Tunix use: ``rewards.view(-1, num_generations)``). ``group_size`` is a static
Python int. Every estimator returns one advantage per completion, ``[N]``; the
loss broadcasts it over the completion's tokens.

``ADVANTAGES`` maps a name to an estimator with the signature
``f(rewards, group_size, *, epsilon=...) -> advantages``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

__all__ = [
    "ADVANTAGES",
    "batch_std_advantages",
    "dr_grpo_advantages",
    "dynamic_sampling_mask",
    "grpo_advantages",
    "overlong_filter_mask",
    "rloo_advantages",
    "select_groups",
    "soft_overlong_punishment",
]


def _grouped(rewards: jax.Array, group_size: int) -> jax.Array:
    """Checks the layout and returns ``rewards`` as ``[num_prompts, group_size]``."""
    if not isinstance(group_size, int) or isinstance(group_size, bool):
        raise ValueError(
            f"group_size must be a static Python int, got {type(group_size).__name__}"
        )
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 for a group-relative advantage, got {group_size}"
        )
    if rewards.ndim != 1:
        raise ValueError(
            "rewards must be a flat [num_prompts * group_size] vector, got shape "
            f"{rewards.shape}"
        )
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards has {rewards.shape[0]} rows, not a multiple of group_size="
            f"{group_size}"
        )
    return rewards.reshape(-1, group_size)


def grpo_advantages(
    rewards: jax.Array, group_size: int, *, epsilon: float | jax.Array = 1e-4
) -> jax.Array:
    """Group-normalized advantage (GRPO; Shao et al. 2024, DeepSeekMath, arXiv
    2402.03300).

    ``A_i = (r_i - mean_g(r)) / (std_g(r) + epsilon)`` with the Bessel-corrected
    (ddof 1) std of the prompt's group, as TRL (``scale_rewards="group"``,
    ``trl/trainer/utils.py::nanstd``, epsilon 1e-4) and Tunix
    (``algo_core.compute_advantages``, epsilon 1e-6) do.

    Args:
      rewards: ``[num_prompts * group_size]``.
      group_size: completions per prompt (static, >= 2).
      epsilon: added to the std (TRL 1e-4, Tunix 1e-6).

    Returns:
      ``[num_prompts * group_size]`` advantages.
    """
    grouped = _grouped(rewards, group_size)
    mean = grouped.mean(axis=1, keepdims=True)
    std = grouped.std(axis=1, ddof=1, keepdims=True)
    return ((grouped - mean) / (std + epsilon)).reshape(-1)


def dr_grpo_advantages(
    rewards: jax.Array, group_size: int, *, epsilon: float | jax.Array = 0.0
) -> jax.Array:
    """Mean-only advantage (Dr. GRPO; Liu et al. 2025, "Understanding R1-Zero-Like
    Training", arXiv 2503.20783): ``A_i = r_i - mean_g(r)``.

    No division by the std, which the paper shows biases updates towards prompts
    that are too easy or too hard. TRL ``scale_rewards="none"``; Tunix
    ``advantage_estimator="drgrpo"``. ``epsilon`` is accepted for a uniform
    registry signature and ignored.
    """
    del epsilon
    grouped = _grouped(rewards, group_size)
    return (grouped - grouped.mean(axis=1, keepdims=True)).reshape(-1)


def rloo_advantages(
    rewards: jax.Array, group_size: int, *, epsilon: float | jax.Array = 0.0
) -> jax.Array:
    """REINFORCE leave-one-out (Kool et al. 2019, "Buy 4 REINFORCE samples, get a
    baseline for free!"; Ahmadian et al. 2024, arXiv 2402.14740).

    ``A_i = r_i - (sum_g(r) - r_i) / (G - 1)  =  G / (G - 1) (r_i - mean_g(r))``,
    Tunix ``algo_core.compute_rloo_advantages`` (and RLP's advantage).
    ``epsilon`` is ignored (uniform registry signature).
    """
    del epsilon
    grouped = _grouped(rewards, group_size)
    others = (grouped.sum(axis=1, keepdims=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


def batch_std_advantages(
    rewards: jax.Array, group_size: int, *, epsilon: float | jax.Array = 1e-4
) -> jax.Array:
    """Group mean, batch std ("PPO-Lite"; Liu et al. 2025, "Part I: Tricks or
    Traps?", arXiv 2508.08221): ``A_i = (r_i - mean_g(r)) / (std_batch(r) + eps)``.

    The std (ddof 1) is over the whole batch, the mean per group, as TRL's
    ``scale_rewards="batch"``.
    """
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(axis=1, keepdims=True)
    return (centred / (rewards.std(ddof=1) + epsilon)).reshape(-1)


ADVANTAGES = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "batch_std": batch_std_advantages,
}


def dynamic_sampling_mask(
    rewards: jax.Array, group_size: int, *, atol: float | jax.Array = 0.0
) -> jax.Array:
    """DAPO's dynamic-sampling filter (Yu et al. 2025, arXiv 2503.14476:
    ``0 < |{o_i : is_equivalent(a, o_i)}| < G``), generalized to any reward.

    A group whose rewards are all equal (``max - min <= atol``) has zero
    group-relative advantage and gives no gradient; DAPO drops it and refills the
    batch from more samples. This returns ``[num_prompts]`` bool, ``True`` for the
    groups to keep. The refill (oversample, keep the first groups) is the
    program's job; ``select_groups`` gives fixed-size indices for it.
    """
    grouped = _grouped(rewards, group_size)
    spread = grouped.max(axis=1) - grouped.min(axis=1)
    return spread > atol


def select_groups(keep: jax.Array, num_groups: int) -> tuple[jax.Array, jax.Array]:
    """The first ``num_groups`` kept groups, as static-size indices for a refill.

    Args:
      keep: ``[num_candidate_groups]`` bool (e.g. from ``dynamic_sampling_mask``).
      num_groups: how many groups the batch needs (static).

    Returns:
      ``(indices [num_groups] int32, valid [num_groups] bool)``; where fewer than
      ``num_groups`` groups are kept, the tail repeats index 0 and is not valid.
    """
    chex.assert_rank(keep, 1)
    (indices,) = jnp.nonzero(keep, size=num_groups, fill_value=0)
    valid = jnp.arange(num_groups) < keep.sum()
    return indices.astype(jnp.int32), valid


def soft_overlong_punishment(
    lengths: jax.Array,
    max_length: int | float,
    cache_length: int | float,
    *,
    penalty: float | jax.Array = 1.0,
    capped: bool = True,
) -> jax.Array:
    """DAPO's soft overlong punishment (arXiv 2503.14476), a reward term.

    With ``L_exp = max_length - cache_length``::

        R(l) = 0                                   l <= L_exp
        R(l) = penalty (L_exp - l) / cache_length  L_exp < l <= max_length
        R(l) = -penalty                            l > max_length  (capped=True)

    ``capped=True, penalty=1`` is TRL's ``get_soft_overlong_punishment`` (token
    counts). ``capped=False`` keeps the linear ramp past ``max_length``, as
    Tunix's ``dapo_learner.reward_shaping`` does (it counts characters). Add the
    result to the task reward before computing advantages.

    ``cache_length=0`` leaves only the cap (TRL: "no minimum length").

    Args:
      lengths: ``[N]`` completion lengths.
    """
    chex.assert_rank(lengths, 1)
    if cache_length < 0 or max_length <= cache_length:
        raise ValueError(
            "need 0 <= cache_length < max_length, got "
            f"cache_length={cache_length}, max_length={max_length}"
        )
    lengths = lengths.astype(jnp.float32)
    over = lengths > max_length
    if cache_length == 0:  # TRL: no ramp, only the cap
        return jnp.where(over, -penalty, 0.0) * jnp.ones_like(lengths)
    expected = max_length - cache_length
    ramp = jnp.minimum((expected - lengths) / cache_length, 0.0) * penalty
    if capped:
        ramp = jnp.where(over, -penalty, ramp)
    return ramp


def overlong_filter_mask(mask: jax.Array, truncated: jax.Array) -> jax.Array:
    """DAPO's overlong filtering (arXiv 2503.14476): truncated completions
    (no EOS within the budget) drop out of the loss.

    ``mask'[i, t] = mask[i, t] * (1 - truncated[i])``; TRL
    ``mask_truncated_completions=True``. Shapes ``[B, T]`` and ``[B]``.
    """
    chex.assert_rank([mask, truncated], [2, 1])
    chex.assert_equal_shape_prefix([mask, truncated], 1)
    return mask * (1 - truncated.astype(mask.dtype))[:, None]
