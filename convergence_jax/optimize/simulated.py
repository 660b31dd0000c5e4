"""A simulated LLM API: tune it without a network, a key or a bill.

``simulated_llm(key, params)`` maps a batch of request settings to noisy
``quality``, ``latency_ms`` and ``cost_usd``, the way a real chat-completion endpoint
trades them off:

- each model has a base quality, a price per 1k tokens and a per-token latency;
- quality peaks at a model-specific temperature and at top_p near 0.9, and grows with
  max_tokens until answers stop being truncated;
- tokens used are the shorter of max_tokens and the answer length the request needs;
- every call has noise: quality +- 0.05, latency +- 10 % (log-normal), tokens +- 15 %.

It is a vectorized JAX function, so ``convergence-jax optimize`` runs it inside one
compiled program. The best trade-off (with the quickstart weights) is the medium model
with temperature near 0.6, top_p near 0.9 and max_tokens near 330 (a grid search
over the noise-free metrics, ``simulated_llm_mean``, finds reward 0.768 there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["MODELS", "simulated_llm", "simulated_llm_mean"]

# name: (base quality, USD per 1k tokens, ms per token, best temperature)
MODELS = {
    "small": (0.60, 0.0005, 6.0, 0.9),
    "medium": (0.78, 0.0030, 12.0, 0.6),
    "large": (0.86, 0.0150, 28.0, 0.4),
}
_TABLE = jnp.array(list(MODELS.values()), dtype=jnp.float32)
ANSWER_TOKENS = 450.0  # tokens a complete answer needs, on average


def _expected(params, tokens_noise, quality_noise, latency_noise):
    model = jnp.asarray(params["model"], jnp.int32)
    base, price, ms_per_token, best_t = _TABLE[model].T
    temperature = jnp.asarray(params["temperature"], jnp.float32)
    top_p = jnp.asarray(params["top_p"], jnp.float32)
    max_tokens = jnp.asarray(params["max_tokens"], jnp.float32)
    needed = ANSWER_TOKENS * (1.0 + tokens_noise)
    tokens = jnp.minimum(max_tokens, needed)
    completeness = tokens / needed  # a truncated answer loses quality
    quality = (
        base
        - 0.25 * (temperature - best_t) ** 2
        - 0.30 * (top_p - 0.9) ** 2
        - 0.35 * (1.0 - completeness) ** 2
        + quality_noise
    )
    latency_ms = (250.0 + tokens * ms_per_token) * jnp.exp(latency_noise)
    cost_usd = tokens / 1000.0 * price
    return {
        "quality": jnp.clip(quality, 0.0, 1.0),
        "latency_ms": latency_ms,
        "cost_usd": cost_usd,
    }


def simulated_llm(key: jax.Array, params: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """One noisy call per row of ``params`` (a dict of arrays [N]).

    Args:
      key: a typed PRNG key.
      params: ``temperature`` [N] in [0, 2], ``top_p`` [N] in (0, 1], ``model`` [N]
        int index into ``MODELS``, ``max_tokens`` [N] int.

    Returns:
      ``{"quality": [N] in [0, 1], "latency_ms": [N], "cost_usd": [N]}``.
    """
    n = jnp.shape(params["temperature"])
    k_tokens, k_quality, k_latency = jax.random.split(key, 3)
    return _expected(
        params,
        0.15 * jax.random.normal(k_tokens, n),
        0.05 * jax.random.normal(k_quality, n),
        0.10 * jax.random.normal(k_latency, n),
    )


def simulated_llm_mean(params: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The noise-free metrics (noise at zero), to check what an optimizer found."""
    zero = jnp.zeros(jnp.shape(params["temperature"]))
    return _expected(params, zero, zero, zero)
