"""Crossover: ``(key, parents_a, parents_b, params, genes) -> children``.

``parents_a`` and ``parents_b`` are population pytrees with leaves ``[P, ...]`` (child
``i`` comes from pair ``(a[i], b[i])``); ``genes`` is the static layout from
:func:`convergence_jax.evolution.ga` (``ga.genes``). Arithmetic happens in search
coordinates (log for log-scaled genes); int genes are rounded and bounded genes clipped
afterwards. Categorical genes are never averaged: in ``blend`` and ``average`` each
takes one parent's value, chosen by a fair coin.

The operators always cross; :func:`apply_crossover` applies one to each child with
probability ``params.crossover_rate`` (the others are copies of ``parents_a``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from convergence_jax.evolution import _genes as G

__all__ = [
    "CROSSOVER",
    "apply_crossover",
    "average",
    "blend",
    "one_point",
    "uniform",
]


def _split_leaves(key, genes):
    return jax.random.split(key, len(genes.leaves))


def uniform(key, parents_a, parents_b, params, genes):
    """Uniform crossover (Syswerda, 1989): each gene from either parent, p = 1/2."""
    del params
    a_leaves = genes.flatten(parents_a, "parents_a")
    b_leaves = genes.flatten(parents_b, "parents_b")
    out = []
    for k, gene, a, b in zip(
        _split_leaves(key, genes), genes.leaves, a_leaves, b_leaves, strict=True
    ):
        out.append(jnp.where(G.packed_coins(k, a.shape[0], gene), b, a))
    return genes.unflatten(out)


def blend(key, parents_a, parents_b, params, genes):
    """BLX-alpha (Eshelman & Schaffer, 1993), per gene in search coordinates.

    ``child = a + u (b - a)``, ``u ~ U(-alpha, 1 + alpha)`` with
    ``alpha = params.blend_alpha``: uniform on the parents' interval widened by
    ``alpha |b - a|`` on each side. ``alpha = 0`` is uniform arithmetic crossover.
    """
    a_leaves = genes.flatten(parents_a, "parents_a")
    b_leaves = genes.flatten(parents_b, "parents_b")
    alpha = jnp.asarray(params.blend_alpha, jnp.float32)
    out = []
    for k, gene, a, b in zip(
        _split_leaves(key, genes), genes.leaves, a_leaves, b_leaves, strict=True
    ):
        if gene.categorical:
            out.append(jnp.where(G.packed_coins(k, a.shape[0], gene), b, a))
            continue
        dtype = G.search_dtype(gene)
        u = jax.random.uniform(k, a.shape, dtype)
        u = (u * (1.0 + 2.0 * alpha) - alpha).astype(dtype)
        ya, yb = G.to_search(gene, a), G.to_search(gene, b)
        out.append(G.finish(gene, ya + u * (yb - ya)))
    return genes.unflatten(out)


def one_point(key, parents_a, parents_b, params, genes):
    """One-point crossover (Holland, 1975) over the flattened gene order.

    A cut ``c`` is drawn uniformly from ``1 .. G-1`` (``G`` genes in all, leaves in
    layout order, each leaf flattened row-major): the child takes genes ``< c`` from
    ``a`` and genes ``>= c`` from ``b``. Works leaf by leaf with index offsets, so
    leaves keep their own dtypes.
    """
    del params
    a_leaves = genes.flatten(parents_a, "parents_a")
    b_leaves = genes.flatten(parents_b, "parents_b")
    num = a_leaves[0].shape[0]
    cut = jax.random.randint(key, (num,), 1, max(genes.num_genes, 2), jnp.int32)
    out = []
    for gene, a, b in zip(genes.leaves, a_leaves, b_leaves, strict=True):
        index = gene.offset + jnp.arange(gene.size, dtype=jnp.int32).reshape(gene.shape)
        from_a = index[None] < G.broadcast_rows(cut, gene)
        out.append(jnp.where(from_a, a, b))
    return genes.unflatten(out)


def average(key, parents_a, parents_b, params, genes):
    """Parameter averaging: ``child = (a + b) / 2`` in search coordinates.

    The exact mean for float genes (the geometric mean for log-scaled ones, as the
    arithmetic mean of logs); ints are rounded; categoricals take one parent's value.
    """
    del params
    a_leaves = genes.flatten(parents_a, "parents_a")
    b_leaves = genes.flatten(parents_b, "parents_b")
    out = []
    for k, gene, a, b in zip(
        _split_leaves(key, genes), genes.leaves, a_leaves, b_leaves, strict=True
    ):
        if gene.categorical:
            out.append(jnp.where(G.packed_coins(k, a.shape[0], gene), b, a))
            continue
        ya, yb = G.to_search(gene, a), G.to_search(gene, b)
        out.append(G.finish(gene, (ya + yb) / 2))
    return genes.unflatten(out)


CROSSOVER = {
    "uniform": uniform,
    "blend": blend,
    "one_point": one_point,
    "average": average,
}


def apply_crossover(fn, key, parents_a, parents_b, params, genes):
    """Cross each pair with probability ``params.crossover_rate``, else copy ``a``.

    Returns ``(children, crossed)`` where ``crossed`` is the ``[P]`` bool mask.
    """
    key_rate, key_cross = jax.random.split(key)
    a_leaves = genes.flatten(parents_a, "parents_a")
    num = a_leaves[0].shape[0]
    crossed = jax.random.uniform(key_rate, (num,)) < params.crossover_rate
    children = fn(key_cross, parents_a, parents_b, params, genes)
    out = [
        jnp.where(G.broadcast_rows(crossed, gene), c, a)
        for gene, a, c in zip(
            genes.leaves, a_leaves, genes.flatten(children), strict=True
        )
    ]
    return genes.unflatten(out), crossed
