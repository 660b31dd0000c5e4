"""GRPO-family policy losses on ``[B, T]`` token batches (pure functions).

Unlike ``convergence_jax.rl.losses`` (one unbatched stream, batched by ``vmap``),
these losses take the whole ``[B, T]`` batch of completions, because the
aggregations that tell GRPO, BNPO, Dr. GRPO and DAPO apart normalize *across*
the batch (by its token count or by ``B * max_completion_length``).

Notation (TRL's, ``trl/trainer/grpo_trainer.py::_compute_loss``): completion
``i``, token ``t``, mask ``m_{i,t}``, ``l_{i,t} = log pi_theta(o_{i,t} | q,
o_{i,<t})`` (``logp``), ``l^old`` from the policy that sampled (``old_logp``),
per-completion advantage ``A_i``.

Padded positions (``mask == 0``) may hold any value (even ``inf``): the log
ratios are zeroed there *before* ``exp``, so they add nothing to the value or
the gradient.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "LOSSES",
    "RATIO_LEVELS",
    "TUNIX_AGGREGATION",
    "PolicyLossConfig",
    "aggregate",
    "gepo_log_weights",
    "importance_log_weights",
    "kl_penalty",
    "off_policy_mask",
    "policy_loss",
    "policy_loss_from_config",
]

KL_ESTIMATORS = ("k1", "k2", "k3")
RATIO_LEVELS = ("token", "sequence", "sequence_token", "gepo")

# TRL's loss_type names and their Tunix loss_agg_mode counterparts. Both
# libraries' names are accepted by ``aggregate``; a pair differs only where
# noted in ``aggregate``'s docstring (rows with no valid token).
TUNIX_AGGREGATION = {
    "grpo": "sequence-mean-token-mean",
    "bnpo": "token-mean",
    "dr_grpo": "sequence-mean-token-scale",
    "dapo": "token-mean",
}
AGGREGATIONS = (
    "grpo",
    "bnpo",
    "dr_grpo",
    "dapo",
    "token-mean",
    "sequence-mean-token-mean",
    "sequence-mean-token-scale",
    "seq-mean-token-sum",
    "sequence-mean-token-sum-norm",
)


def _check_tokens(name_to_array: dict[str, jax.Array], reference: str) -> None:
    """Every array must be ``[B, T]`` and shaped like ``name_to_array[reference]``."""
    shape = name_to_array[reference].shape
    if len(shape) != 2:
        raise ValueError(f"{reference} must be [B, T], got shape {shape}")
    for name, array in name_to_array.items():
        if array is not None and array.shape != shape:
            raise ValueError(
                f"{name} has shape {array.shape}, expected {shape} (the shape of "
                f"{reference})"
            )


def kl_penalty(
    logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3"
) -> jax.Array:
    """Per-token estimate of ``KL[pi_theta || pi_ref]`` from samples of pi_theta.

    With ``x = ref_logp - logp`` (Schulman 2020, "Approximating KL divergence",
    http://joschu.net/blog/kl-approx.html)::

        k1 = -x               (unbiased, high variance; Tunix kl_loss_mode="kl")
        k2 = x^2 / 2          (biased, low variance; Tunix "mse_kl")
        k3 = exp(x) - x - 1   (unbiased, >= 0; TRL's GRPO term, Tunix "low_var_kl")

    Elementwise; any shape, ``logp`` and ``ref_logp`` alike.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"ref_logp has shape {ref_logp.shape}, expected {logp.shape} (logp)"
        )
    x = ref_logp - logp
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * jnp.square(x)
    return jnp.exp(x) - x - 1.0


def aggregate(
    per_token: jax.Array,
    mask: jax.Array,
    mode: str,
    *,
    max_completion_length: int | float | None = None,
    num_items: float | jax.Array | None = None,
    norm: float | jax.Array | None = None,
) -> jax.Array:
    """Reduce a ``[B, T]`` per-token loss to a scalar (TRL ``loss_type`` /
    Tunix ``loss_agg_mode``).

    With ``n_i = sum_t m_{i,t}`` and ``S_i = sum_t m_{i,t} L_{i,t}``:

    ====================================  =========================================
    ``grpo`` (TRL)                        ``mean_i S_i / max(n_i, 1)`` (all B rows)
    ``bnpo`` (TRL), ``token-mean``        ``sum_i S_i / max(sum_i n_i, 1)``
    ``dr_grpo`` (TRL)                     ``sum_i S_i / (B * max_completion_length)``
    ``dapo`` (TRL)                        ``sum_i S_i / max(num_items, 1)``
    ``sequence-mean-token-mean``          ``sum_i S_i / max(n_i, 1) / R``
    ``sequence-mean-token-scale``         ``sum_i S_i / norm / R`` (norm default T)
    ``seq-mean-token-sum``                ``sum_i S_i / R``
    ``sequence-mean-token-sum-norm``      ``sum_i S_i / norm`` (norm default R)
    ====================================  =========================================

    ``R = max(#{i : n_i > 0}, 1)``, the non-empty rows (Tunix
    ``common.aggregate_loss``); TRL's ``grpo``/``dr_grpo`` divide by all ``B``
    rows instead, so the pairs in ``TUNIX_AGGREGATION`` agree whenever no row is
    empty. ``num_items`` is the token count of the *global* batch that TRL's
    ``dapo`` divides by (``gather(mask.sum()).sum() / num_processes``; default:
    this batch's ``sum(mask)``, i.e. ``bnpo``). ``max_completion_length``
    defaults to ``T``. Papers: GRPO (arXiv 2402.03300), Dr. GRPO (arXiv
    2503.20783), DAPO token-level loss (arXiv 2503.14476).
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")
    _check_tokens({"per_token": per_token, "mask": mask}, "per_token")
    mask = mask.astype(per_token.dtype)
    batch, length = per_token.shape
    sums = jnp.sum(jnp.where(mask > 0, per_token * mask, 0.0), axis=1)
    counts = mask.sum(axis=1)
    rows = jnp.maximum((counts > 0).sum(), 1).astype(per_token.dtype)
    if mode == "grpo":
        return jnp.mean(sums / jnp.maximum(counts, 1.0))
    if mode in ("bnpo", "token-mean"):
        return sums.sum() / jnp.maximum(counts.sum(), 1.0)
    if mode == "dr_grpo":
        scale = length if max_completion_length is None else max_completion_length
        if isinstance(scale, (int, float)) and scale <= 0:
            raise ValueError(f"max_completion_length must be > 0, got {scale}")
        return sums.sum() / (batch * scale)
    if mode == "dapo":
        total = counts.sum() if num_items is None else num_items
        return sums.sum() / jnp.maximum(total, 1.0)
    if mode == "sequence-mean-token-mean":
        return jnp.sum(sums / jnp.maximum(counts, 1.0)) / rows
    if mode == "sequence-mean-token-scale":
        scale = length if norm is None else norm
        return jnp.sum(sums / scale) / rows
    if mode == "seq-mean-token-sum":
        return sums.sum() / rows
    # sequence-mean-token-sum-norm
    return sums.sum() / (rows if norm is None else norm)


def _masked_sequence_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(values * mask, axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)


def gepo_log_weights(
    logp: jax.Array,
    old_logp: jax.Array,
    mask: jax.Array,
    group_size: int,
    *,
    length_normalize: bool = False,
) -> jax.Array:
    """Group-expectation importance weights (GEPO; Zhang et al. 2025,
    "Group Expectation Policy Optimization for Heterogeneous RL", arXiv
    2508.17850), in log space.

    For the ``G`` completions of one prompt, with ``p_i = pi_theta(o_i | q)``
    and ``q_i = pi_old(o_i | q)`` (sequence probabilities)::

        w_i = p_i / E_q[q],   E_q[q] = sum_j q_j^2 / sum_j q_j
        log w_i = log p_i - (logsumexp_j 2 log q_j - logsumexp_j log q_j)

    the form of HeteroRL_GEPO's README (``coef_1 = p / (normalized_q * q).sum()``
    with ``q`` detached). The log-space form never under- or overflows however
    long the completions are. ``length_normalize=True`` uses per-token mean log
    probabilities instead of sums (the GSPO convention); the README does not say
    which the paper's trainer uses, so the sum (the README's formula) is the
    default. Rows are grouped as consecutive blocks of ``group_size``.

    Returns:
      ``[B]`` log weights; the gradient flows through ``log p_i`` only.
    """
    _check_tokens({"logp": logp, "old_logp": old_logp, "mask": mask}, "logp")
    if group_size < 1 or logp.shape[0] % group_size:
        raise ValueError(
            f"group_size={group_size} must be >= 1 and divide the batch size "
            f"{logp.shape[0]}"
        )
    mask = mask.astype(logp.dtype)
    valid = mask > 0
    logp = jnp.where(valid, logp, 0.0)
    old_logp = jax.lax.stop_gradient(jnp.where(valid, old_logp, 0.0))
    reduce = (
        _masked_sequence_mean
        if length_normalize
        else (lambda x, m: jnp.sum(x * m, axis=1))
    )
    log_p = reduce(logp, mask)
    log_q = reduce(old_logp, mask).reshape(-1, group_size)
    # Centre on the group's largest log q (c): log E_q[q] - c =
    # lse(2 (log q - c)) - lse(log q - c). Subtracting c before doubling keeps
    # float32 exact enough for sums of thousands of token log-probs.
    centre = log_q.max(axis=1, keepdims=True)
    shifted = log_q - centre
    log_expectation = (
        centre[:, 0]
        + jax.nn.logsumexp(2.0 * shifted, axis=1)
        - jax.nn.logsumexp(shifted, axis=1)
    )
    return log_p - jnp.repeat(log_expectation, group_size)


def importance_log_weights(
    logp: jax.Array,
    old_logp: jax.Array,
    mask: jax.Array,
    level: str = "token",
    *,
    group_size: int | None = None,
    gepo_length_normalize: bool = False,
) -> jax.Array:
    """Log importance weights ``log w_{i,t}``, ``[B, T]``.

    With ``r_{i,t} = l_{i,t} - l^old_{i,t}`` (zero where masked)::

        token          : log w_{i,t} = r_{i,t}                 (GRPO, DAPO)
        sequence       : log w_{i,t} = log s_i = sum_t m r / max(n_i, 1)
                         s_i = (pi_theta(o_i|q) / pi_old(o_i|q))^(1/|o_i|)
                         (GSPO; Zheng et al. 2025, arXiv 2507.18071)
        sequence_token : log w_{i,t} = l_{i,t} - sg(l_{i,t}) + sg(log s_i)
                         (GSPO-token: value s_i, per-token gradient)
        gepo           : log w_{i,t} = gepo_log_weights(...)_i (needs group_size)
    """
    if level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {level!r}")
    _check_tokens({"logp": logp, "old_logp": old_logp, "mask": mask}, "logp")
    if level == "gepo":
        if group_size is None:
            raise ValueError("ratio_level='gepo' needs group_size")
        log_w = gepo_log_weights(
            logp, old_logp, mask, group_size, length_normalize=gepo_length_normalize
        )
        return jnp.broadcast_to(log_w[:, None], logp.shape)
    mask = mask.astype(logp.dtype)
    valid = mask > 0
    safe_logp = jnp.where(valid, logp, 0.0)
    log_ratio = safe_logp - jnp.where(valid, old_logp, 0.0)
    if level == "token":
        return log_ratio
    log_s = _masked_sequence_mean(log_ratio, mask)[:, None]
    if level == "sequence":
        return jnp.broadcast_to(log_s, logp.shape)
    return safe_logp - jax.lax.stop_gradient(safe_logp) + jax.lax.stop_gradient(log_s)


def off_policy_mask(
    advantages: jax.Array,
    logp: jax.Array,
    sampling_logp: jax.Array,
    mask: jax.Array,
    threshold: float | jax.Array,
) -> jax.Array:
    """Off-policy sequence mask (DeepSeek-V3.2, arXiv 2512.02556; TRL
    ``GRPOTrainer.get_off_policy_mask``), for samples from an older policy.

    Keep completion ``i`` unless its advantage is negative *and* the sampler has
    drifted: ``keep_i = (A_i >= 0) or (mean_t m (l^samp - sg(l)) <= threshold)``.
    Multiply the result into the per-token loss (``policy_loss``'s
    ``sequence_weights``), not into the mask, as TRL does.

    Shapes: ``advantages [B]``, the rest ``[B, T]``; returns ``[B]`` float.
    """
    _check_tokens({"logp": logp, "sampling_logp": sampling_logp, "mask": mask}, "logp")
    chex.assert_shape(advantages, logp.shape[:1])
    mask = mask.astype(logp.dtype)
    valid = mask > 0
    drift = jnp.where(valid, sampling_logp - jax.lax.stop_gradient(logp), 0.0)
    drift = jnp.nan_to_num(drift, nan=0.0)
    keep = (advantages >= 0) | (_masked_sequence_mean(drift, mask) <= threshold)
    return keep.astype(logp.dtype)


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    ratio_level: str = "token",
    epsilon_low: float | jax.Array = 0.2,
    epsilon_high: float | jax.Array | None = None,
    delta: float | jax.Array | None = None,
    dual_clip: float | jax.Array | None = None,
    aggregation: str = "grpo",
    max_completion_length: int | float | None = None,
    num_items: float | jax.Array | None = None,
    ref_logp: jax.Array | None = None,
    beta: float | jax.Array = 0.0,
    kl_estimator: str = "k3",
    sequence_weights: jax.Array | None = None,
    group_size: int | None = None,
    gepo_length_normalize: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO-family clipped surrogate as a loss to minimize (TRL's
    ``_compute_loss`` for ``loss_type in {grpo, bnpo, dr_grpo, dapo}``).

    ::

        w      = exp(log w_{i,t})            (see importance_log_weights)
        w_clip = clip(w, 1 - epsilon_low, 1 + epsilon_high)
        w_top  = min(w, delta)               (two-sided clipping, INTELLECT-2,
                                              arXiv 2505.07291; delta > 1 + eps)
        L_{i,t} = -min(w_top A, w_clip A) * sequence_weights_i
        L_{i,t} = min(L_{i,t}, -dual_clip A)  where A < 0 (dual clip, Ye et al.
                                              2020, arXiv 1912.09729; Tunix epsilon_c)
        L_{i,t} += beta * KL_{i,t}           (kl_penalty(logp, ref_logp, kl_estimator))
        loss   = aggregate(L, mask, aggregation)

    GRPO: Shao et al. 2024 (arXiv 2402.03300); clip-higher (``epsilon_high >
    epsilon_low``): DAPO (arXiv 2503.14476); ``epsilon_high=None`` means
    ``epsilon_low``. TRL warns that ``ratio_level="sequence"`` with any
    aggregation but ``grpo`` weights each sequence by its length; GSPO is
    ``sequence`` with ``grpo``.

    Args:
      logp, old_logp: ``[B, T]`` token log-probabilities under the policy being
        trained and under the policy that sampled (pass
        ``jax.lax.stop_gradient(logp)`` when on-policy: ratio 1, gradient not 0).
      advantages: ``[B]`` (per completion) or ``[B, T]`` (per token, e.g. GAE).
      mask: ``[B, T]``, 1 on completion tokens.
      sequence_weights: optional ``[B]`` multiplier (e.g. ``off_policy_mask``).
      group_size: for ``ratio_level="gepo"``.
      The rest: as in the formula and ``aggregate``.

    Returns:
      ``(loss, metrics)`` with ``metrics`` the masked means of the clip events
      (``clip_low``, ``clip_high``, TRL's definitions), of ``ratio`` and of
      ``kl`` (0 without ``ref_logp``).
    """
    _check_tokens(
        {"logp": logp, "old_logp": old_logp, "mask": mask, "ref_logp": ref_logp},
        "logp",
    )
    if advantages.shape not in (logp.shape[:1], logp.shape):
        raise ValueError(
            f"advantages must be [B] or [B, T] = {logp.shape[:1]} or {logp.shape}, "
            f"got {advantages.shape}"
        )
    if sequence_weights is not None:
        chex.assert_shape(sequence_weights, logp.shape[:1])
    if aggregation not in AGGREGATIONS:
        raise ValueError(
            f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}"
        )
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    mask = mask.astype(logp.dtype)
    valid = mask > 0
    adv = advantages[:, None] if advantages.ndim == 1 else advantages
    adv = jnp.where(valid, adv, 0.0)

    log_w = importance_log_weights(
        logp,
        old_logp,
        mask,
        ratio_level,
        group_size=group_size,
        gepo_length_normalize=gepo_length_normalize,
    )
    ratio = jnp.exp(log_w)
    clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    top = ratio if delta is None else jnp.minimum(ratio, delta)
    per_token = -jnp.minimum(top * adv, clipped * adv)
    if dual_clip is not None:
        per_token = jnp.where(
            adv < 0, jnp.minimum(per_token, -dual_clip * adv), per_token
        )
    if sequence_weights is not None:
        per_token = per_token * sequence_weights[:, None]

    kl = jnp.zeros_like(per_token)
    if ref_logp is not None:
        kl = kl_penalty(
            jnp.where(valid, logp, 0.0), jnp.where(valid, ref_logp, 0.0), kl_estimator
        )
        per_token = per_token + beta * kl

    loss = aggregate(
        per_token,
        mask,
        aggregation,
        max_completion_length=max_completion_length,
        num_items=num_items,
    )

    def masked_mean(x):
        return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(mask.sum(), 1.0)

    ratio_sg = jax.lax.stop_gradient(ratio)
    metrics = {
        "clip_low": masked_mean(
            ((ratio_sg < 1.0 - epsilon_low) & (adv < 0)).astype(logp.dtype)
        ),
        "clip_high": masked_mean(
            ((ratio_sg > 1.0 + epsilon_high) & (adv > 0)).astype(logp.dtype)
        ),
        "ratio": masked_mean(ratio_sg),
        "kl": masked_mean(jax.lax.stop_gradient(kl)),
    }
    return loss, metrics


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """The settings that make one GRPO-family recipe (static; numbers may be
    overridden per call).

    Attributes:
      advantage: a key of ``convergence_jax.llm.ADVANTAGES``.
      ratio_level: a key of ``RATIO_LEVELS``.
      aggregation: a TRL ``loss_type`` (its Tunix name: ``TUNIX_AGGREGATION``).
      epsilon_low, epsilon_high: the clip range ``[1 - low, 1 + high]``.
      beta: KL coefficient (0 drops the reference model).
      overlong_filter, dynamic_sampling, soft_overlong: DAPO's data-side parts,
        applied by the program (``overlong_filter_mask``, ``dynamic_sampling_mask``,
        ``soft_overlong_punishment``).
    """

    advantage: str = "grpo"
    ratio_level: str = "token"
    aggregation: str = "grpo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    overlong_filter: bool = False
    dynamic_sampling: bool = False
    soft_overlong: bool = False


# Recipes, as TRL encodes them (docs/source/paper_index.md) and Tunix names them:
#   grpo       TRL loss_type="grpo" (beta default 0; DeepSeekMath used 0.04);
#              Tunix GRPOConfig loss_algo="grpo", "sequence-mean-token-mean".
#   dr_grpo    TRL loss_type="dr_grpo", scale_rewards="none";
#              Tunix DrGRPOConfig (advantage "drgrpo", "sequence-mean-token-scale").
#   dapo       TRL loss_type="dapo", epsilon_high=0.28, mask_truncated_completions;
#              Tunix DAPOConfig ("token-mean", eps 0.2/0.28, overlong_buffer).
#   gspo       TRL importance_sampling_level="sequence", loss_type="grpo",
#              epsilon=3e-4, epsilon_high=4e-4 (arXiv 2507.18071).
#   gspo_token TRL experimental gspo_token; Tunix loss_algo="gspo-token".
#   gepo       not in TRL or Tunix; GRPO's objective with GEPO's weights.
LOSSES = {
    "grpo": PolicyLossConfig(),
    "dr_grpo": PolicyLossConfig(advantage="dr_grpo", aggregation="dr_grpo"),
    "dapo": PolicyLossConfig(
        aggregation="dapo",
        epsilon_high=0.28,
        overlong_filter=True,
        dynamic_sampling=True,
        soft_overlong=True,
    ),
    "gspo": PolicyLossConfig(
        ratio_level="sequence", epsilon_low=3e-4, epsilon_high=4e-4
    ),
    "gspo_token": PolicyLossConfig(
        ratio_level="sequence_token", epsilon_low=3e-4, epsilon_high=4e-4
    ),
    "gepo": PolicyLossConfig(ratio_level="gepo"),
}


def policy_loss_from_config(
    config: PolicyLossConfig | str,
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    **overrides,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``policy_loss`` with a recipe's settings (a ``LOSSES`` key or a config);
    keyword ``overrides`` (e.g. ``ref_logp``, ``group_size``, ``beta``) win."""
    if isinstance(config, str):
        if config not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {config!r}")
        config = LOSSES[config]
    kwargs = dict(
        ratio_level=config.ratio_level,
        aggregation=config.aggregation,
        epsilon_low=config.epsilon_low,
        epsilon_high=config.epsilon_high,
        beta=config.beta,
    )
    kwargs.update(overrides)
    return policy_loss(logp, old_logp, advantages, mask, **kwargs)
