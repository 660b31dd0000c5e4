"""Parent selection: ``(key, fitness, num, params) -> indices [num]``.

``fitness`` is a ``[P]`` vector where **higher is better** and ``-inf`` (or NaN) is the
worst; :func:`convergence_jax.evolution.ga` converts minimization and failed (NaN)
evaluations to this form before calling a selection function. Every function draws
``num`` independent parents with replacement and is safe under ``jit``/``vmap``; all
numbers come from ``params`` (traced), only ``num`` is static.

The rank-based methods (tournament, rank, truncation) sort the population once, best
first (:func:`rank_order`), and then sample ranks from a closed-form
distribution, so their cost is ``O(P log P + num log P)`` whatever the numbers in
``params`` are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

__all__ = [
    "SELECTION",
    "rank",
    "rank_order",
    "rank_probabilities",
    "roulette",
    "roulette_probabilities",
    "tournament",
    "tournament_probabilities",
    "truncation",
    "truncation_probabilities",
]


def _clean(fitness: jax.Array) -> jax.Array:
    if fitness.ndim != 1:
        raise ValueError(f"fitness: expected shape [P], got {fitness.shape}")
    fitness = jnp.asarray(fitness, jnp.float32)
    return jnp.where(jnp.isnan(fitness), -jnp.inf, fitness)


def rank_order(fitness: jax.Array) -> jax.Array:
    """Indices of the population sorted best first (a stable sort).

    Ties keep row order: in a GA population the elites come first (ties favour the
    incumbents) and the other rows are i.i.d. children, so ties among them are broken
    at random already.
    """
    return jnp.argsort(-_clean(fitness), stable=True).astype(jnp.int32)


def _sample_ranks(key: jax.Array, probs: jax.Array, num: int) -> jax.Array:
    """``num`` ranks drawn from ``probs`` (ranks 0 = best .. P-1) by inverse CDF."""
    cdf = jnp.cumsum(probs)
    u = jax.random.uniform(key, (num,), cdf.dtype) * cdf[-1]
    ranks = jnp.searchsorted(cdf, u, side="right")
    return jnp.minimum(ranks, probs.shape[0] - 1).astype(jnp.int32)


def _log_choose(n: jax.Array, k: jax.Array) -> jax.Array:
    return gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)


def tournament_probabilities(size: int, tournament_size: jax.Array) -> jax.Array:
    """P(the winner has rank r), r = 0 (best) .. size-1, for a tournament of ``k``.

    A tournament draws ``k`` distinct contestants uniformly without replacement and
    keeps the fittest, so the winner has rank ``r`` iff contestant ``r`` is drawn and
    the other ``k - 1`` come from the ``size - 1 - r`` worse ones:
    ``p(r) = C(size - 1 - r, k - 1) / C(size, k)`` (Blickle & Thiele, 1995).
    ``k = 1`` is uniform, ``k = size`` always picks the best.
    """
    k = jnp.clip(jnp.asarray(tournament_size, jnp.float32), 1.0, float(size))
    r = jnp.arange(size, dtype=jnp.float32)
    n = size - 1.0 - r
    log_p = _log_choose(jnp.maximum(n, k - 1.0), k - 1.0) - _log_choose(
        jnp.float32(size), k
    )
    probs = jnp.where(n >= k - 1.0, jnp.exp(log_p), 0.0)
    # float32 log-gamma differences are accurate to ~1e-4 relative at P ~ 1e3.
    return probs / jnp.sum(probs)


def tournament(
    key: jax.Array, fitness: jax.Array, num: int, params, *, order=None
) -> jax.Array:
    """Tournament selection without replacement (Miller & Goldberg, 1995).

    Each of the ``num`` tournaments draws ``params.tournament_size`` distinct
    individuals uniformly at random and returns the fittest. The winner is sampled
    exactly through its rank distribution (:func:`tournament_probabilities`), so a
    larger tournament costs nothing extra and the size is a traced number.
    """
    if order is None:
        order = rank_order(fitness)
    probs = tournament_probabilities(order.shape[0], params.tournament_size)
    return order[_sample_ranks(key, probs, num)]


def roulette_probabilities(fitness: jax.Array) -> jax.Array:
    """Fitness-proportional probabilities after shifting by the minimum.

    ``w_i = f_i - min_j f_j`` over finite fitness (the worst individual gets weight
    0, negative fitness works), ``p_i = w_i / sum_j w_j``; failed (``-inf``/NaN)
    individuals get 0. If every weight is 0 (all equal) the finite individuals are
    equally likely; if none is finite, all are.
    """
    fitness = _clean(fitness)
    finite = jnp.isfinite(fitness)
    low = jnp.min(jnp.where(finite, fitness, jnp.inf))
    weights = jnp.where(finite, fitness - low, 0.0)
    total = jnp.sum(weights)
    fallback = jnp.where(jnp.any(finite), finite, True).astype(jnp.float32)
    weights = jnp.where(total > 0, weights, fallback)
    return weights / jnp.sum(weights)


def roulette(
    key: jax.Array, fitness: jax.Array, num: int, params, *, order=None
) -> jax.Array:
    """Fitness-proportional (roulette-wheel) selection (Holland, 1975; Goldberg 1989).

    ``p_i`` from :func:`roulette_probabilities`. With ``maximize=False`` the GA passes
    ``-f``, so the weights become ``max_j f_j - f_i``.
    """
    del order, params
    probs = roulette_probabilities(fitness)
    return _sample_ranks(key, probs, num)


def rank_probabilities(size: int, pressure: jax.Array) -> jax.Array:
    """Linear ranking (Baker, 1985): P(rank r), r = 0 (best) .. size-1.

    With ``s = pressure`` in [1, 2] and ``i = size - 1 - r`` (0 = worst):
    ``p = (2 - s) / size + 2 i (s - 1) / (size (size - 1))``. ``s = 1`` is uniform,
    ``s = 2`` gives the worst probability 0 and the best ``2 / size``.
    """
    s = jnp.clip(jnp.asarray(pressure, jnp.float32), 1.0, 2.0)
    i = (size - 1.0) - jnp.arange(size, dtype=jnp.float32)
    return (2.0 - s) / size + 2.0 * i * (s - 1.0) / (size * max(size - 1.0, 1.0))


def rank(
    key: jax.Array, fitness: jax.Array, num: int, params, *, order=None
) -> jax.Array:
    """Linear ranking selection with pressure ``params.rank_pressure``."""
    if order is None:
        order = rank_order(fitness)
    probs = rank_probabilities(order.shape[0], params.rank_pressure)
    return order[_sample_ranks(key, probs, num)]


def truncation_count(size: int, ratio: jax.Array) -> jax.Array:
    """Survivors of truncation: ``clip(ceil(ratio * size), 1, size)``."""
    count = jnp.ceil(jnp.asarray(ratio, jnp.float32) * size - 1e-4)
    return jnp.clip(count, 1, size).astype(jnp.int32)


def truncation_probabilities(size: int, ratio: jax.Array) -> jax.Array:
    """Uniform over the ``truncation_count`` best ranks, 0 elsewhere."""
    count = truncation_count(size, ratio)
    support = jnp.arange(size) < count
    return support / count.astype(jnp.float32)


def truncation(
    key: jax.Array, fitness: jax.Array, num: int, params, *, order=None
) -> jax.Array:
    """Truncation selection (Mühlenbein & Schlierkamp-Voosen, 1993).

    Parents are drawn uniformly from the best ``ceil(truncation_ratio * P)``.
    """
    if order is None:
        order = rank_order(fitness)
    count = truncation_count(order.shape[0], params.truncation_ratio)
    ranks = jax.random.randint(key, (num,), 0, count, dtype=jnp.int32)
    return order[ranks]


SELECTION = {
    "tournament": tournament,
    "roulette": roulette,
    "rank": rank,
    "truncation": truncation,
}
