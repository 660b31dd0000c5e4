"""Token-level value learning: GAE over completion tokens, the clipped value
loss, and VAPO's parts (pure functions on ``[B, T]``).

The token MDP of a completion: state = prompt + tokens so far, action = the next
token, reward ``r_{i,t}`` (usually the sequence reward on the last token plus any
per-token terms), terminal after the last valid token. ``values[i, t] =
V(s_{i,t})`` comes from a value head on the same positions as ``logp``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from convergence_jax.llm.losses import _check_tokens, aggregate, policy_loss

__all__ = [
    "masked_whiten",
    "positive_nll_loss",
    "token_gae",
    "token_ppo_loss",
    "token_value_loss",
    "vapo_advantages",
    "vapo_lambda",
    "vapo_loss",
]


def token_gae(
    rewards: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    *,
    gamma: float | jax.Array = 1.0,
    gae_lambda: float | jax.Array = 0.95,
) -> tuple[jax.Array, jax.Array]:
    """Generalized advantage estimation over tokens (Schulman et al. 2016,
    arXiv 1506.02438), as Tunix ``algo_core.compute_gae_advantages`` does it.

    Backwards over ``t``, skipping masked tokens (so a mask with holes, e.g. tool
    output inside a completion, links each valid token to the next valid one)::

        delta_t = r_t + gamma V_next - V_t          V_next = V of the next valid
        A_t     = delta_t + gamma lambda A_next     token, 0 after the last one
        R_t     = A_t + V_t

    Args:
      rewards, values, mask: ``[B, T]``.
      gamma: discount (scalar).
      gae_lambda: scalar or ``[B]`` (a per-completion lambda, e.g. VAPO's
        length-adaptive one).

    Returns:
      ``(advantages, returns)``, ``[B, T]``, zero where ``mask == 0``. Unlike
      Tunix the advantages are not whitened here (``masked_whiten`` does that).
    """
    _check_tokens({"rewards": rewards, "values": values, "mask": mask}, "values")
    mask = mask.astype(values.dtype)
    valid = mask > 0
    rewards = jnp.where(valid, rewards, 0.0)
    values = jnp.where(valid, values, 0.0)
    lam = jnp.broadcast_to(jnp.asarray(gae_lambda, values.dtype), values.shape[:1])

    def step(carry, xs):
        next_advantage, next_value = carry
        r_t, v_t, m_t = xs
        advantage = r_t + gamma * next_value - v_t + gamma * lam * next_advantage
        keep = m_t > 0
        next_advantage = jnp.where(keep, advantage, next_advantage)
        next_value = jnp.where(keep, v_t, next_value)
        return (next_advantage, next_value), jnp.where(keep, advantage, 0.0)

    zeros = jnp.zeros_like(values[:, 0])
    _, advantages = jax.lax.scan(
        step, (zeros, zeros), (rewards.T, values.T, mask.T), reverse=True
    )
    advantages = advantages.T
    return advantages, jnp.where(valid, advantages + values, 0.0)


def masked_whiten(x: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``(x - mean) / sqrt(var + eps)`` over the valid tokens, with the unbiased
    (Bessel-corrected, ``n - 1``) variance, as Tunix ``algo_core.masked_whiten``
    (``masked_var``) does; zero where masked."""
    _check_tokens({"x": x, "mask": mask}, "x")
    mask = mask.astype(x.dtype)
    count = jnp.maximum(mask.sum(), 1.0)
    x = jnp.where(mask > 0, x, 0.0)
    mean = x.sum() / count
    var = jnp.sum(jnp.square(x - mean) * mask) / jnp.maximum(count - 1.0, 1.0)
    return jnp.where(mask > 0, (x - mean) * jax.lax.rsqrt(var + eps), 0.0)


def token_value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float | jax.Array | None = None,
    aggregation: str = "token-mean",
    num_items: float | jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO's (clipped) value loss per token (Tunix ``ppo_value_loss_fn``)::

        V_clip = old_V + clip(V - old_V, -clip_eps, clip_eps)
        L_t    = 1/2 max((V_t - R_t)^2, (V_clip_t - R_t)^2)   (1/2 (V - R)^2
                                                               without clip_eps)
        loss   = aggregate(L, mask, aggregation)   (token-mean as Tunix)

    ``num_items``: the token count ``aggregation="dapo"`` divides by (the
    global batch's, when the batch is split over devices).
    Returns ``(loss, {"value_clip_fraction"})``.
    """
    _check_tokens(
        {"values": values, "old_values": old_values, "returns": returns, "mask": mask},
        "values",
    )
    valid = mask > 0
    values = jnp.where(valid, values, 0.0)
    returns = jnp.where(valid, returns, 0.0)
    old_values = jnp.where(valid, old_values, 0.0)
    unclipped = jnp.square(values - returns)
    if clip_eps is None:
        per_token, clipped_more = unclipped, jnp.zeros_like(unclipped)
    else:
        clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
        clipped_loss = jnp.square(clipped - returns)
        per_token = jnp.maximum(unclipped, clipped_loss)
        clipped_more = (clipped_loss > unclipped).astype(values.dtype)
    loss = aggregate(0.5 * per_token, mask, aggregation, num_items=num_items)
    fraction = jnp.sum(clipped_more * mask) / jnp.maximum(mask.sum(), 1.0)
    return loss, {"value_clip_fraction": jax.lax.stop_gradient(fraction)}


def token_ppo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    values: jax.Array,
    old_values: jax.Array,
    advantages: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    *,
    epsilon_low: float | jax.Array = 0.2,
    epsilon_high: float | jax.Array | None = None,
    value_clip_eps: float | jax.Array | None = 0.2,
    value_coef: float | jax.Array = 0.5,
    aggregation: str = "token-mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token PPO with a value head (Ouyang et al. 2022, arXiv 2203.02155; the
    Tunix PPO learner): ``policy_loss`` on per-token advantages (from
    ``token_gae``) + ``value_coef * token_value_loss``.

    All arrays ``[B, T]``. Returns ``(loss, metrics)`` with the policy and value
    terms and the clip fractions.
    """
    pg, metrics = policy_loss(
        logp,
        old_logp,
        advantages,
        mask,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        aggregation=aggregation,
    )
    vf, vf_metrics = token_value_loss(
        values,
        old_values,
        returns,
        mask,
        clip_eps=value_clip_eps,
        aggregation=aggregation,
    )
    metrics = {**metrics, **vf_metrics, "policy_loss": pg, "value_loss": vf}
    return pg + value_coef * vf, metrics


def vapo_lambda(lengths: jax.Array, alpha: float | jax.Array = 0.05) -> jax.Array:
    """VAPO's length-adaptive GAE lambda for the policy (Yue et al. 2025,
    arXiv 2504.05118): ``lambda_policy = 1 - 1 / (alpha l)``.

    Clipped to ``[0, 1]``: for ``l < 1/alpha`` the formula is negative (the
    paper's responses are thousands of tokens long), and 0 is one-step TD.
    ``lengths``: ``[B]``.
    """
    lengths = jnp.maximum(jnp.asarray(lengths, jnp.float32), 1.0)
    return jnp.clip(1.0 - 1.0 / (alpha * lengths), 0.0, 1.0)


def vapo_advantages(
    rewards: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    *,
    alpha: float | jax.Array = 0.05,
    gamma: float | jax.Array = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """VAPO's decoupled, length-adaptive GAE (arXiv 2504.05118).

    The policy's advantages use ``lambda = vapo_lambda(|o_i|, alpha)`` per
    completion; the value targets use ``lambda_critic = 1`` (unbiased
    Monte-Carlo-like returns, ``R_t = sum_{u >= t} gamma^{u-t} r_u``).

    Returns ``(policy_advantages, value_returns)``, ``[B, T]``.
    """
    _check_tokens({"rewards": rewards, "values": values, "mask": mask}, "values")
    lam = vapo_lambda(mask.sum(axis=1), alpha)
    advantages, _ = token_gae(rewards, values, mask, gamma=gamma, gae_lambda=lam)
    _, returns = token_gae(rewards, values, mask, gamma=gamma, gae_lambda=1.0)
    return advantages, returns


def positive_nll_loss(
    logp: jax.Array,
    mask: jax.Array,
    positive: jax.Array,
    num_items: float | jax.Array | None = None,
) -> jax.Array:
    """VAPO's positive-example LM loss (arXiv 2504.05118)::

        L_NLL = -1 / sum_{o in T} |o|  sum_{o in T} sum_t log pi(o_t | q, o_<t)

    over the correct completions ``T`` (``positive[i]``); 0 if there are none.
    ``logp, mask``: ``[B, T]``; ``positive``: ``[B]`` bool. ``num_items``
    replaces the denominator ``sum_{o in T} |o|`` (e.g. by the global batch's).
    """
    _check_tokens({"logp": logp, "mask": mask}, "logp")
    if positive.shape != logp.shape[:1]:
        raise ValueError(
            f"positive must be [B] = {logp.shape[:1]}, got {positive.shape}"
        )
    weights = mask.astype(logp.dtype) * positive.astype(logp.dtype)[:, None]
    total = jnp.sum(jnp.where(weights > 0, logp * weights, 0.0))
    count = weights.sum() if num_items is None else num_items
    return -total / jnp.maximum(count, 1.0)


def vapo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    positive: jax.Array,
    *,
    epsilon_low: float | jax.Array = 0.2,
    epsilon_high: float | jax.Array = 0.28,
    nll_coef: float | jax.Array = 0.1,
    num_items: float | jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """VAPO's actor loss (arXiv 2504.05118): the clipped surrogate with
    clip-higher (0.2 / 0.28) and DAPO's token-level normalizer on per-token
    advantages (``vapo_advantages``), plus ``nll_coef * positive_nll_loss``
    (mu = 0.1 in the paper). The critic trains with ``token_value_loss`` on
    the lambda = 1 returns; value pretraining (fitting V to Monte-Carlo returns
    of the fixed SFT policy before RL) is that same loss run first.
    """
    pg, metrics = policy_loss(
        logp,
        old_logp,
        advantages,
        mask,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        aggregation="dapo",
        num_items=num_items,
    )
    nll = positive_nll_loss(logp, mask, positive)
    return pg + nll_coef * nll, {**metrics, "policy_loss": pg, "nll_loss": nll}
