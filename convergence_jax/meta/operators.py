"""The strategy GA's operators, registries in ``lax.switch`` order.

Selection works on a population masked inside a static maximum ``Pmax``: rows
``>= n`` (``n`` traced) are inactive and never chosen. Each selection function is
``(key, score [Pmax], order [Pmax], n, params, distances [Pmax, Pmax]) -> [2 Pmax]``
parent rows; the GA uses draws ``0 .. n-1`` as first parents and draws
``n .. 2n-1`` as second parents, which is how :func:`convergence_jax.evolution.ga`
at size ``n`` consumes its ``2n`` draws, so a masked population of size ``n``
reproduces the ordinary GA built at size ``n`` (JAX random bits are
prefix-consistent along the leading axis).

The rank-based laws are those of :mod:`convergence_jax.evolution.selection` with the
size ``n`` traced. Mutation and crossover act row by row with the ordinary
operators' laws; their random words come from :func:`masked_uniform_bits`, which
gives the rows ``< n`` exactly the words the ordinary GA draws at size ``n`` (its
fast Threefry counter pairs element ``i`` with element ``i + N/2``, so the words
are not prefix-consistent by themselves). The new operators (SVD and layer-wise
mutation, layer swapping and weighted-merge crossover) are written here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

from convergence_jax.evolution import _genes as G
from convergence_jax.evolution import crossover as X
from convergence_jax.evolution.selection import _log_choose, rank_order

__all__ = [
    "CROSSOVER",
    "MUTATION",
    "clear_niches",
    "SELECTION",
    "layer_swap",
    "layerwise",
    "masked_uniform_bits",
    "svd_mutation",
    "weighted_merge",
]

CLEARED = -1e30
"""Selection score of an individual cleared from its niche (worse than any fitness,
better than a failed or inactive one)."""


def _sample_ranks(key, probs, num, n):
    """``num`` ranks from ``probs`` by inverse CDF, clipped to the active ``n``."""
    cdf = jnp.cumsum(probs)
    u = jax.random.uniform(key, (num,), cdf.dtype) * cdf[-1]
    ranks = jnp.searchsorted(cdf, u, side="right")
    return jnp.minimum(ranks, n - 1).astype(jnp.int32)


def tournament_probabilities(size: int, n, tournament_size):
    """Tournament winner's rank law over ``n`` active of ``size`` rows (0 beyond)."""
    n_f = jnp.asarray(n, jnp.float32)
    k = jnp.clip(jnp.asarray(tournament_size, jnp.float32), 1.0, n_f)
    r = jnp.arange(size, dtype=jnp.float32)
    worse = n_f - 1.0 - r
    log_p = _log_choose(jnp.maximum(worse, k - 1.0), k - 1.0) - _log_choose(n_f, k)
    probs = jnp.where(worse >= k - 1.0, jnp.exp(log_p), 0.0)
    return probs / jnp.sum(probs)


def tournament(key, score, order, n, params, distances):
    """Tournament selection of size ``params.tournament_size`` (exact rank law)."""
    del score, distances
    size = order.shape[0]
    probs = tournament_probabilities(size, n, params.tournament_size)
    return order[_sample_ranks(key, probs, 2 * size, n)]


def roulette(key, score, order, n, params, distances):
    """Fitness-proportional selection over the active rows (shift by the minimum)."""
    del order, params, distances
    size = score.shape[0]
    active = jnp.arange(size) < n
    finite = jnp.isfinite(score) & active
    low = jnp.min(jnp.where(finite, score, jnp.inf))
    weights = jnp.where(finite, score - low, 0.0)
    total = jnp.sum(weights)
    fallback = jnp.where(jnp.any(finite), finite, active).astype(jnp.float32)
    weights = jnp.where(total > 0, weights, fallback)
    probs = weights / jnp.sum(weights)
    return _sample_ranks(key, probs, 2 * size, n)


def rank(key, score, order, n, params, distances):
    """Linear ranking (Baker, 1985) over the ``n`` active ranks."""
    del score, distances
    size = order.shape[0]
    n_f = jnp.asarray(n, jnp.float32)
    s = jnp.clip(jnp.asarray(params.rank_pressure, jnp.float32), 1.0, 2.0)
    i = (n_f - 1.0) - jnp.arange(size, dtype=jnp.float32)
    probs = (2.0 - s) / n_f + 2.0 * i * (s - 1.0) / (n_f * jnp.maximum(n_f - 1.0, 1.0))
    probs = jnp.where(i >= 0, probs, 0.0)
    return order[_sample_ranks(key, probs, 2 * size, n)]


def truncation(key, score, order, n, params, distances):
    """Uniform over the best ``ceil(truncation_ratio * n)`` active ranks."""
    del score, distances
    size = order.shape[0]
    count = jnp.ceil(jnp.asarray(params.truncation_ratio, jnp.float32) * n - 1e-4)
    count = jnp.clip(count, 1, n).astype(jnp.int32)
    ranks = jax.random.randint(key, (2 * size,), 0, count, dtype=jnp.int32)
    return order[ranks]


def diversity(key, score, order, n, params, distances):
    """Clearing (Pétrowski, 1996), then tournament selection.

    An individual with at least ``niche_capacity`` better individuals within
    ``diversity_threshold`` (RMS distance per gene) is cleared: its score drops
    below every uncleared one, so each niche keeps at most ``niche_capacity``
    winners and the tournament spreads parents over niches.
    """
    cleared = clear_niches(
        score, n, distances, params.diversity_threshold, params.niche_capacity
    )
    return tournament(key, cleared, rank_order(cleared), n, params, None)


def clear_niches(score, n, distances, threshold, capacity):
    """Scores after clearing: rows with ``>= capacity`` better active rows closer
    than ``threshold`` drop to :data:`CLEARED`."""
    active = jnp.arange(score.shape[0]) < n
    near = (distances < threshold) & active[None, :]
    better = score[None, :] > score[:, None]
    num_better = jnp.sum(near & better, axis=1)
    cleared = (num_better >= capacity) & jnp.isfinite(score)
    return jnp.where(cleared, CLEARED, score)


SELECTION = {
    "tournament": tournament,
    "roulette": roulette,
    "rank": rank,
    "truncation": truncation,
    "diversity": diversity,
}


def masked_uniform_bits(key, shape, n):
    """``G.uniform_bits(key, (n, *shape[1:]))`` on rows ``< n`` of ``shape``.

    ``shape[0]`` is the static maximum, ``n`` traced. The ordinary fast path hashes
    counter pairs ``(j, j + h)``, ``h = ceil(N / 2)``, ``N = n * row size``; the
    same pairs are built here for the traced ``N`` (rows ``>= n`` get unrelated
    words). Keys that are not Threefry fall back to ``jax.random.bits``.
    """
    raw = G._threefry_key_data(key)
    total = math.prod(shape)
    if raw is None or total == 0:
        return jax.random.bits(key, shape, jnp.uint32)
    per_row = math.prod(shape[1:])
    size = jnp.asarray(n, jnp.uint32) * jnp.uint32(per_row)
    half = (size + 1) // 2
    num_pairs = (total + 1) // 2
    j = jax.lax.iota(jnp.uint32, num_pairs)
    partner = jnp.where(j + half < size, j + half, jnp.uint32(0))
    words = threefry_2x32((raw[0], raw[1]), jnp.concatenate([j, partner]))
    first, second = words[:num_pairs], words[num_pairs:]
    i = jax.lax.iota(jnp.uint32, total)
    from_first = first[jnp.minimum(i, num_pairs - 1)]
    from_second = second[jnp.clip(i.astype(jnp.int32) - half.astype(jnp.int32), 0)]
    return jnp.where(i < half, from_first, from_second).reshape(shape)


def perturb(key, population, steps, params, genes, n, *, dropout_rate=None):
    """:func:`convergence_jax.evolution.mutation.perturb` for unbounded float genes,
    with masked random words (same values as the ordinary GA at size ``n``)."""
    leaves = genes.flatten(population)
    num = leaves[0].shape[0]
    keys = jax.random.split(key, len(leaves))
    mutate_below = G.probability_threshold(params.mutation_rate)
    out = []
    for k, gene, x in zip(keys, genes.leaves, leaves, strict=True):
        shape = (num, *gene.shape)
        k_words, k_drop = jax.random.split(k)
        words = masked_uniform_bits(k_words, shape, n)
        mutate = G.low_half(words) < mutate_below
        dtype = G.search_dtype(gene)
        z = G.normal_from_high_half(words, dtype)
        if dropout_rate is not None:
            dropped = G.low_half(masked_uniform_bits(k_drop, shape, n))
            dropped = dropped < G.probability_threshold(dropout_rate)
            x = jnp.where(dropped, jnp.zeros((), x.dtype), x)
        step = G.broadcast_rows(steps * gene.scale, gene).astype(dtype)
        delta = jnp.where(mutate, step * z, jnp.zeros((), dtype))
        out.append((x + delta).astype(gene.dtype))
    return genes.unflatten(out)


def _num(population, genes):
    return genes.flatten(population)[0].shape[0]


def gaussian(key, population, sigmas, sigma, params, genes, n):
    """Gaussian mutation with the fixed step ``mutation_strength`` (ordinary law)."""
    del sigmas, sigma
    steps = jnp.full((_num(population, genes),), params.mutation_std, jnp.float32)
    return perturb(key, population, steps, params, genes, n), steps


def self_adaptive(key, population, sigmas, sigma, params, genes, n):
    """Self-adaptive log-normal step sizes (ordinary law, Schwefel 1977)."""
    del sigma
    key_sigma, key_step = jax.random.split(key)
    noise = jax.random.normal(key_sigma, sigmas.shape, jnp.float32)
    steps = jnp.clip(
        sigmas * jnp.exp(params.tau * noise), params.min_sigma, params.max_sigma
    )
    return perturb(key_step, population, steps, params, genes, n), steps


def dropout(key, population, sigmas, sigma, params, genes, n):
    """Genes reset to 0 with ``dropout_rate``, then a Gaussian step (ordinary law)."""
    del sigmas, sigma
    steps = jnp.full((_num(population, genes),), params.mutation_std, jnp.float32)
    mutated = perturb(
        key, population, steps, params, genes, n, dropout_rate=params.dropout_rate
    )
    return mutated, steps


def _numpy_svd(x):
    u, s, vt = np.linalg.svd(np.asarray(x), full_matrices=False)
    return u.astype(np.float32), s.astype(np.float32), vt.astype(np.float32)


def _host_svd(x):
    """Thin SVD of ``[..., a, b]`` float32 matrices, computed by NumPy on the host.

    jaxlib 0.10's batched LAPACK ``gesdd`` kernel on CPU can deadlock in its
    parallel batch loop when the batch is large (seen under ``vmap`` over
    genomes x tasks x seeds), so the decomposition goes through
    ``jax.pure_callback`` (batched: one host call per generation).
    """
    k = min(x.shape[-2:])
    shapes = (
        jax.ShapeDtypeStruct((*x.shape[:-1], k), jnp.float32),
        jax.ShapeDtypeStruct((*x.shape[:-2], k), jnp.float32),
        jax.ShapeDtypeStruct((*x.shape[:-2], k, x.shape[-1]), jnp.float32),
    )
    return jax.pure_callback(_numpy_svd, shapes, x, vmap_method="expand_dims")


def svd_mutation(key, population, sigmas, sigma, params, genes, n):
    """Spectrum perturbation of matrix-shaped genes (Gaussian for the others).

    A 2-D leaf ``W = U diag(s) V^T`` becomes ``U diag(s exp(step z)) V^T``, each
    singular value perturbed with probability ``mutation_rate``: the mutation
    rescales the directions the layer already uses instead of adding isotropic
    noise. Vector (and scalar) leaves take the usual Gaussian step, so on a flat
    vector genome this is Gaussian mutation.
    """
    key_gauss, key_svd = jax.random.split(key)
    mutated, steps = gaussian(key_gauss, population, sigmas, sigma, params, genes, n)
    leaves, new_leaves = genes.flatten(population), genes.flatten(mutated)
    keys = jax.random.split(key_svd, len(leaves))
    out = []
    for k, gene, x, y in zip(keys, genes.leaves, leaves, new_leaves, strict=True):
        if len(gene.shape) != 2 or min(gene.shape) < 2:
            out.append(y)
            continue
        u, s, vt = _host_svd(x.astype(jnp.float32))
        k_on, k_z = jax.random.split(k)
        on = jax.random.uniform(k_on, s.shape) < params.mutation_rate
        z = jax.random.normal(k_z, s.shape)
        s = s * jnp.exp(jnp.where(on, steps[:, None] * z, 0.0))
        out.append(jnp.einsum("pik,pk,pkj->pij", u, s, vt).astype(gene.dtype))
    return genes.unflatten(out), steps


def layerwise(key, population, sigmas, sigma, params, genes, n):
    """Each child mutates one leaf (layer), chosen uniformly; on a one-leaf genome
    this is Gaussian mutation."""
    key_gauss, key_layer = jax.random.split(key)
    mutated, steps = gaussian(key_gauss, population, sigmas, sigma, params, genes, n)
    leaves, new_leaves = genes.flatten(population), genes.flatten(mutated)
    num = leaves[0].shape[0]
    chosen = jax.random.randint(key_layer, (num,), 0, len(leaves), jnp.int32)
    out = [
        jnp.where(G.broadcast_rows(chosen == i, gene), y, x)
        for i, (gene, x, y) in enumerate(
            zip(genes.leaves, leaves, new_leaves, strict=True)
        )
    ]
    return genes.unflatten(out), steps


MUTATION = {
    "gaussian": gaussian,
    "self_adaptive": self_adaptive,
    "dropout": dropout,
    "svd": svd_mutation,
    "layerwise": layerwise,
}
"""``(key, population, sigmas, sigma, params, genes, n) -> (population, steps)``."""


def average(key, parents_a, parents_b, params, genes, weight_a, n):
    """Parameter averaging, ``child = (a + b) / 2``."""
    del weight_a, n
    return X.average(key, parents_a, parents_b, params, genes)


def layer_swap(key, parents_a, parents_b, params, genes, weight_a, n):
    """Each leaf (layer) of the child comes whole from either parent, p = 1/2."""
    del params, weight_a, n
    a_leaves = genes.flatten(parents_a, "parents_a")
    b_leaves = genes.flatten(parents_b, "parents_b")
    num = a_leaves[0].shape[0]
    coins = jax.random.uniform(key, (len(a_leaves), num)) < 0.5
    out = [
        jnp.where(G.broadcast_rows(coin, gene), b, a)
        for coin, gene, a, b in zip(
            coins, genes.leaves, a_leaves, b_leaves, strict=True
        )
    ]
    return genes.unflatten(out)


def weighted_merge(key, parents_a, parents_b, params, genes, weight_a, n):
    """``child = w a + (1 - w) b`` with ``w = weight_a`` per child (the GA gives the
    fitter parent the larger weight: ``w = (1 + u_a - u_b) / 2`` from rank scores)."""
    del key, params, n
    a_leaves = genes.flatten(parents_a, "parents_a")
    b_leaves = genes.flatten(parents_b, "parents_b")
    out = []
    for gene, a, b in zip(genes.leaves, a_leaves, b_leaves, strict=True):
        w = G.broadcast_rows(weight_a, gene).astype(a.dtype)
        out.append((w * a + (1 - w) * b).astype(gene.dtype))
    return genes.unflatten(out)


def uniform(key, parents_a, parents_b, params, genes, weight_a, n):
    """Uniform crossover (Syswerda, 1989), masked words (ordinary law)."""
    del params, weight_a
    a_leaves = genes.flatten(parents_a, "parents_a")
    b_leaves = genes.flatten(parents_b, "parents_b")
    keys = jax.random.split(key, len(genes.leaves))
    out = []
    for k, gene, a, b in zip(keys, genes.leaves, a_leaves, b_leaves, strict=True):
        num = a.shape[0]
        words = -(-gene.size // 32)
        bits = masked_uniform_bits(k, (num, words), n)
        shifts = jnp.arange(32, dtype=jnp.uint32)
        coins = (bits[:, :, None] >> shifts) & jnp.uint32(1)
        coins = (
            coins.reshape(num, words * 32)[:, : gene.size]
            .reshape((num, *gene.shape))
            .astype(bool)
        )
        out.append(jnp.where(coins, b, a))
    return genes.unflatten(out)


CROSSOVER = {
    "average": average,
    "layer_swap": layer_swap,
    "weighted_merge": weighted_merge,
    "uniform": uniform,
}
"""``(key, parents_a, parents_b, params, genes, weight_a, n) -> children``."""
