"""Mutation operators, registry :data:`MUTATION`.

Each is ``(key, population, sigmas, sigma, params, genes) -> (population, sigmas)``.

``population`` is a pytree with leaves ``[P, ...]``; ``sigmas`` ``[P]`` are the step
sizes inherited from each child's first parent and ``sigma`` is the global step size
(``GAState.sigmas[parent]`` and ``GAState.sigma``). Every method returns the step size
it used for each child, which the GA stores as the children's ``sigmas``.

Shared by every method, per gene (Bäck, 1996):

* with probability ``params.mutation_rate`` a numeric gene takes a Gaussian step in
  search coordinates, ``y' = y + s_i * scale * z``, ``z ~ N(0, 1)``, where ``s_i`` is
  the method's step size and ``scale`` the width of the gene's range in search
  coordinates (``log(high) - log(low)`` for log floats), or 1 for unbounded genes
  (so ``s_i`` is absolute there);
* with probability ``params.mutation_rate`` a categorical gene is resampled uniformly
  (it may draw its old value);
* then int genes are rounded and bounded genes clipped into ``[low, high]``.

Each numeric gene consumes one 32-bit random word: 16 bits decide whether it mutates
(resolution ``2**-16``) and 16 bits give its Gaussian deviate by inverse CDF.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from convergence_jax.evolution import _genes as G

__all__ = [
    "MUTATION",
    "dropout",
    "gaussian",
    "one_fifth",
    "perturb",
    "self_adaptive",
]


def perturb(key, population, steps, params, genes, *, dropout_rate=None):
    """Gaussian step of size ``steps [P]`` on a ``mutation_rate`` fraction of genes.

    With ``dropout_rate`` given, each numeric gene is first set to 0 (clipped into its
    bounds) with that probability.
    """
    leaves = genes.flatten(population)
    num = leaves[0].shape[0]
    keys = jax.random.split(key, len(leaves))
    mutate_below = G.probability_threshold(params.mutation_rate)
    out = []
    for k, gene, x in zip(keys, genes.leaves, leaves, strict=True):
        shape = (num, *gene.shape)
        if gene.categorical:
            k_mask, k_value = jax.random.split(k)
            resample = jax.random.uniform(k_mask, shape) < params.mutation_rate
            value = jax.random.randint(k_value, shape, 0, gene.num_choices, jnp.int32)
            out.append(jnp.where(resample, value, x))
            continue
        k_words, k_drop = jax.random.split(k)
        words = G.uniform_bits(k_words, shape)
        mutate = G.low_half(words) < mutate_below
        dtype = G.search_dtype(gene)
        z = G.normal_from_high_half(words, dtype)
        if dropout_rate is not None:
            dropped = G.low_half(G.uniform_bits(k_drop, shape))
            dropped = dropped < G.probability_threshold(dropout_rate)
            zero = min(max(0.0, gene.low), gene.high)
            x = jnp.where(dropped, jnp.asarray(zero, x.dtype), x)
        step = G.broadcast_rows(steps * gene.scale, gene).astype(dtype)
        if gene.kind == "float" and not gene.log and not gene.bounded:
            delta = jnp.where(mutate, step * z, jnp.zeros((), dtype))
            out.append((x + delta).astype(gene.dtype))
        else:
            # Genes that do not mutate stay bit-exact (exp(log(x)) may not be x).
            stepped = G.finish(gene, G.to_search(gene, x) + step * z)
            out.append(jnp.where(mutate, stepped, x))
    return genes.unflatten(out)


def _fixed(params_value, num):
    return jnp.full((num,), params_value, jnp.float32)


def _num(population, genes):
    return genes.flatten(population)[0].shape[0]


def gaussian(key, population, sigmas, sigma, params, genes):
    """Gaussian mutation with a fixed step ``params.mutation_std`` for every child."""
    del sigmas, sigma
    steps = _fixed(params.mutation_std, _num(population, genes))
    return perturb(key, population, steps, params, genes), steps


def self_adaptive(key, population, sigmas, sigma, params, genes):
    """Self-adaptive step sizes (Schwefel, 1977; Bäck & Schwefel, 1993).

    Each child inherits its first parent's ``sigma_i``, mutates it log-normally,
    ``sigma_i' = clip(sigma_i exp(tau N(0, 1)), min_sigma, max_sigma)`` with
    ``tau = params.tau``, and then uses it for its own Gaussian step, so step sizes
    that produce fit children spread through the population.
    """
    del sigma
    key_sigma, key_step = jax.random.split(key)
    noise = jax.random.normal(key_sigma, sigmas.shape, jnp.float32)
    steps = jnp.clip(
        sigmas * jnp.exp(params.tau * noise), params.min_sigma, params.max_sigma
    )
    return perturb(key_step, population, steps, params, genes), steps


def one_fifth(key, population, sigmas, sigma, params, genes):
    """Gaussian mutation with the global step ``sigma`` of the 1/5th success rule.

    ``sigma`` is adapted in ``tell`` (Rechenberg, 1973): multiplied by
    ``params.one_fifth_factor`` when more than ``params.success_target`` of the
    children beat their first parent, divided by it when fewer did.
    """
    del sigmas
    steps = jnp.full((_num(population, genes),), sigma, jnp.float32)
    return perturb(key, population, steps, params, genes), steps


def dropout(key, population, sigmas, sigma, params, genes):
    """Dropout mutation: genes reset to 0 (clipped into bounds), then a Gaussian step.

    Each numeric gene is set to ``clip(0, low, high)`` with probability
    ``params.dropout_rate`` (a sparsifying move for network weights, in the spirit of
    dropout, Srivastava et al., 2014), then every gene takes the usual Gaussian step.
    """
    del sigmas, sigma
    steps = _fixed(params.mutation_std, _num(population, genes))
    mutated = perturb(
        key, population, steps, params, genes, dropout_rate=params.dropout_rate
    )
    return mutated, steps


MUTATION = {
    "gaussian": gaussian,
    "self_adaptive": self_adaptive,
    "one_fifth": one_fifth,
    "dropout": dropout,
}
