"""Static gene layout of a population pytree, shared by every operator.

A population is a pytree whose leaves carry a leading ``[P]`` axis. Each leaf is a
block of genes that share one :class:`Gene` (kind, bounds, log scale): a search space
gives one scalar gene per parameter (``dict name -> [P]``), a network-params pytree
gives one unbounded float block per weight array (``[P, *weight.shape]``).

Operators work in *search coordinates*: ``log(x)`` for log-scaled genes, ``x``
otherwise. Mutation steps are relative to :attr:`Gene.scale`, the width of the gene's
range in search coordinates (1 for unbounded genes). :func:`finish` maps search
coordinates back to natural values: ``exp`` for log genes, rounding for ints,
clipping into bounds, then the leaf's dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32, threefry_prng_impl


class Gene(NamedTuple):
    """Static description of one population leaf (hashable, never traced).

    ``shape`` is the per-individual shape, ``offset`` the index of the leaf's first gene
    in the flattened gene order (used by one-point crossover), ``name`` the leaf's path
    for error messages.
    """

    name: str
    kind: str  # "float" | "int" | "categorical"
    low: float
    high: float
    log: bool
    num_choices: int
    shape: tuple[int, ...]
    dtype: Any
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def categorical(self) -> bool:
        return self.kind == "categorical"

    @property
    def scale(self) -> float:
        """Width of the range in search coordinates; 1 for unbounded genes."""
        if not self.bounded:
            return 1.0
        if self.log:
            return math.log(self.high) - math.log(self.low)
        return self.high - self.low


class Genes(NamedTuple):
    """The gene layout of a whole population: tree structure plus one Gene per leaf."""

    treedef: Any
    leaves: tuple[Gene, ...]
    num_genes: int
    from_space: bool

    def unflatten(self, leaves) -> Any:
        return jax.tree.unflatten(self.treedef, list(leaves))

    def flatten(self, tree, what: str = "population") -> list:
        """Leaves of ``tree`` in layout order; ValueError if the structure differs."""
        leaves, treedef = jax.tree.flatten(tree)
        if treedef != self.treedef:
            raise ValueError(
                f"{what}: pytree structure {treedef} does not match the GA's "
                f"solution structure {self.treedef}"
            )
        return leaves


def _leaf_name(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def genes_from_space(space) -> Genes:
    """Layout of ``dict name -> [P]`` for a ``SearchSpace`` (convergence_jax.spaces).

    Offsets follow ``space.names`` (the declared order), whatever order the dict leaves
    flatten in.
    """
    specs = space.gene_specs()
    names = tuple(space.names)
    order = {name: i for i, name in enumerate(names)}
    template = {name: 0 for name in names}
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, _ in paths:
        name = path[0].key
        spec = specs[name]
        kind = spec.kind
        if kind not in ("float", "int", "categorical"):
            raise ValueError(f"space parameter {name!r}: unknown gene kind {kind!r}")
        if kind == "categorical":
            if spec.num_choices < 1:
                raise ValueError(
                    f"space parameter {name!r}: categorical gene needs num_choices "
                    f">= 1, got {spec.num_choices}"
                )
            low, high = 0.0, float(spec.num_choices - 1)
        else:
            low, high = float(spec.low), float(spec.high)
        if low > high:
            raise ValueError(f"space parameter {name!r}: low {low} > high {high}")
        if spec.log and not low > 0:
            raise ValueError(f"space parameter {name!r}: log scale needs low > 0")
        dtype = jnp.float32 if kind == "float" else jnp.int32
        leaves.append(
            Gene(
                name=name,
                kind=kind,
                low=low,
                high=high,
                log=bool(spec.log) and kind != "categorical",
                num_choices=int(spec.num_choices) if kind == "categorical" else 0,
                shape=(),
                dtype=jnp.dtype(dtype),
                offset=order[name],
            )
        )
    return Genes(treedef, tuple(leaves), len(names), True)


def genes_from_pytree(solution) -> Genes:
    """Layout of a population of ``solution``-shaped pytrees: unbounded float genes."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(solution)
    if not paths:
        raise ValueError("solution: the pytree has no leaves")
    leaves, offset = [], 0
    for path, leaf in paths:
        name = _leaf_name(path)
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            if not isinstance(leaf, float):
                raise ValueError(
                    f"solution leaf {name}: expected a float array, got "
                    f"{type(leaf).__name__} {leaf!r}"
                )
            dtype = jnp.float32
        dtype = jnp.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"solution leaf {name}: expected a floating dtype, got {dtype} "
                "(every leaf of a pytree solution is an unbounded float gene; use a "
                "SearchSpace for int or categorical genes)"
            )
        if dtype == jnp.float64 and not jax.config.jax_enable_x64:
            dtype = jnp.dtype(jnp.float32)
        shape = tuple(np.shape(leaf))
        gene = Gene(name, "float", -math.inf, math.inf, False, 0, shape, dtype, offset)
        leaves.append(gene)
        offset += gene.size
    return Genes(treedef, tuple(leaves), offset, False)


def is_space(obj) -> bool:
    return callable(getattr(obj, "gene_specs", None)) and hasattr(obj, "names")


def make_genes(solution_or_space) -> Genes:
    if is_space(solution_or_space):
        return genes_from_space(solution_or_space)
    return genes_from_pytree(solution_or_space)


def check_population(genes: Genes, population, size: int, what: str = "population"):
    """Leaves of ``population`` after checking structure, shapes and dtype kinds."""
    leaves = genes.flatten(population, what)
    for gene, leaf in zip(genes.leaves, leaves, strict=True):
        shape = tuple(np.shape(leaf))
        expected = (size, *gene.shape)
        if shape != expected:
            raise ValueError(
                f"{what} leaf {gene.name}: expected shape {expected} (population "
                f"axis first), got {shape}"
            )
        dtype = jnp.dtype(
            leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
        )
        want_float = gene.kind == "float"
        if want_float and not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{what} leaf {gene.name}: expected a float array, got {dtype}"
            )
        if not want_float and not jnp.issubdtype(dtype, jnp.integer):
            raise ValueError(
                f"{what} leaf {gene.name}: expected an int array ({gene.kind} gene), "
                f"got {dtype}"
            )
    return leaves


def initial_population(
    key: jax.Array, genes: Genes, template, size: int, init_std, population=None
) -> list[jax.Array]:
    """The leaves of a first population of ``size`` rows.

    ``population`` (checked and cast) if given; else a search space is sampled
    uniformly within bounds, and a pytree solution gives ``template + init_std *
    N(0, 1)``.
    """
    if population is not None:
        leaves = check_population(genes, population, size, "population")
        return [
            jnp.asarray(x).astype(gene.dtype)
            for gene, x in zip(genes.leaves, leaves, strict=True)
        ]
    keys = jax.random.split(key, len(genes.leaves))
    if genes.from_space:
        return [
            sample_uniform(k, gene, size)
            for k, gene in zip(keys, genes.leaves, strict=True)
        ]
    return [
        t[None]
        + jnp.asarray(init_std, gene.dtype)
        * jax.random.normal(k, (size, *gene.shape), gene.dtype)
        for k, gene, t in zip(keys, genes.leaves, template, strict=True)
    ]


def search_dtype(gene: Gene):
    """Float dtype used for arithmetic on a gene."""
    return gene.dtype if gene.kind == "float" else jnp.dtype(jnp.float32)


def to_search(gene: Gene, x: jax.Array) -> jax.Array:
    """Natural value -> search coordinate (log for log-scaled genes)."""
    y = x.astype(search_dtype(gene))
    return jnp.log(y) if gene.log else y


def finish(gene: Gene, y: jax.Array) -> jax.Array:
    """Search coordinate -> valid natural value: exp, round, clip, cast."""
    x = jnp.exp(y) if gene.log else y
    if gene.kind != "float":
        x = jnp.round(x)
    if gene.bounded:
        x = jnp.clip(x, gene.low, gene.high)
    return x.astype(gene.dtype)


def broadcast_rows(values: jax.Array, gene: Gene) -> jax.Array:
    """Reshape a per-individual vector ``[P]`` to broadcast against ``[P, *shape]``."""
    return values.reshape(values.shape + (1,) * len(gene.shape))


def sample_uniform(key: jax.Array, gene: Gene, num: int) -> jax.Array:
    """Uniform natural values within bounds (log-uniform for log genes)."""
    shape = (num, *gene.shape)
    if gene.kind == "categorical":
        return jax.random.randint(key, shape, 0, gene.num_choices, dtype=jnp.int32)
    if gene.kind == "int" and not gene.log:
        lo, hi = int(gene.low), int(gene.high)
        return jax.random.randint(key, shape, lo, hi + 1, dtype=jnp.int32)
    if gene.log:
        lo, hi = math.log(gene.low), math.log(gene.high)
    else:
        lo, hi = gene.low, gene.high
    y = jax.random.uniform(key, shape, search_dtype(gene), lo, hi)
    return finish(gene, y)


def _threefry_key_data(key: jax.Array):
    """The raw ``uint32[2]`` of a threefry key (typed or legacy), else None."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != threefry_prng_impl.name:
            return None
        return jax.random.key_data(key)
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return key
    return None


def uniform_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """One uniformly random 32-bit word per element (``uint32``).

    For threefry keys this applies the Threefry-2x32 hash to a counter
    (``jax.extend.random.threefry_2x32``), which yields two words per hash block;
    ``jax.random.bits`` in its partitionable mode spends a block per word, so this
    halves the cost of the GA's dominant operation. Other key types fall back to
    ``jax.random.bits``.
    """
    raw = _threefry_key_data(key)
    size = math.prod(shape)
    if raw is None or size == 0:
        return jax.random.bits(key, shape, jnp.uint32)
    count = jax.lax.iota(jnp.uint32, size)
    return threefry_2x32((raw[0], raw[1]), count).reshape(shape)


def packed_coins(key: jax.Array, num: int, gene: Gene) -> jax.Array:
    """Fair coin flips ``[num, *gene.shape]`` (bool), 32 per random word."""
    words = -(-gene.size // 32)
    bits = uniform_bits(key, (num, words))
    shifts = jnp.arange(32, dtype=jnp.uint32)
    coins = (bits[:, :, None] >> shifts) & jnp.uint32(1)
    return (
        coins.reshape(num, words * 32)[:, : gene.size]
        .reshape((num, *gene.shape))
        .astype(bool)
    )


def probability_threshold(rate: jax.Array) -> jax.Array:
    """``rate`` as a threshold on a 16-bit field: P(field < t) = t / 2**16."""
    t = jnp.round(jnp.clip(rate, 0.0, 1.0) * 65536.0)
    return t.astype(jnp.uint32)


def low_half(words: jax.Array) -> jax.Array:
    return words & jnp.uint32(0xFFFF)


@functools.cache
def _normal_table() -> np.ndarray:
    """Inverse normal CDF at the 2**16 midpoints ``(k + 0.5) / 2**16``, symmetric."""
    with jax.ensure_compile_time_eval():
        u = (np.arange(32768, 65536, dtype=np.float64) + 0.5) / 65536.0
        upper = np.asarray(jax.scipy.special.ndtri(jnp.asarray(u, jnp.float32)))
    return np.concatenate([-upper[::-1], upper]).astype(np.float32)


def normal_from_high_half(words: jax.Array, dtype) -> jax.Array:
    """Standard normal deviates from the top 16 bits of each word (inverse CDF).

    The 2**16 levels sit at the midpoints ``(k + 0.5) / 2**16`` of the normal CDF, so
    the deviates are exactly symmetric (mean zero) and ``|z| <= 4.32``. For mutation
    noise this costs nothing and, with the other 16 bits deciding whether the gene
    mutates at all, a gene needs one 32-bit random word instead of two; a lookup
    table is cheaper than evaluating ``erfinv``.
    """
    table = jnp.asarray(_normal_table())
    return table[(words >> jnp.uint32(16)).astype(jnp.int32)].astype(dtype)
