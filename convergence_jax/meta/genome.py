"""Strategy genomes: a complete GA configuration as one pytree of jnp scalars.

A :class:`Genome` holds three *method genes* (int32 indices into
:data:`SELECTION_METHODS`, :data:`MUTATION_METHODS`, :data:`CROSSOVER_METHODS`, picked
with ``lax.switch`` inside one compiled program) and the GA's numbers, including the
population size, which is masked inside a static maximum so that no genome
recompiles. A batch of genomes is the same dataclass with a leading axis on every
field, so meta-evolution ``vmap`` s over it.

Every gene is described by a :class:`GeneSpec` (kind, bounds, log scale, default);
the generic helpers here (:func:`random_genomes`, :func:`check_genome`,
:func:`genome_to_dict`, ...) work for any genome class with a spec table, which the
learning-rule genomes (:mod:`convergence_jax.meta.learning_rules`) reuse.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from convergence_jax.evolution.genetic import GAParams
from convergence_jax.evolution.genetic import default_params as ga_default_params

__all__ = [
    "CROSSOVER_METHODS",
    "EvolutionConfig",
    "GeneSpec",
    "Genome",
    "MUTATION_METHODS",
    "SELECTION_METHODS",
    "check_genome",
    "default_genome",
    "genome_from_dict",
    "genome_specs",
    "genome_to_dict",
    "random_genomes",
    "stack_genomes",
    "to_evolution_config",
    "unstack_genomes",
]

SELECTION_METHODS = ("tournament", "roulette", "rank", "truncation", "diversity")
"""Selection method gene values, in ``lax.switch`` order."""
MUTATION_METHODS = ("gaussian", "self_adaptive", "dropout", "svd", "layerwise")
"""Mutation method gene values, in ``lax.switch`` order."""
CROSSOVER_METHODS = ("average", "layer_swap", "weighted_merge", "uniform")
"""Crossover method gene values, in ``lax.switch`` order."""


class GeneSpec(NamedTuple):
    """Static description of one gene of a genome class.

    ``kind`` is ``"method"`` (an index into ``choices``), ``"int"``, ``"float"`` or
    ``"bool"``; ``low``/``high`` bound numbers (inclusive), ``log`` says whether
    meta-mutation steps are taken in log space. ``default`` is the hand-designed
    value (a method name for method genes).
    """

    name: str
    kind: str
    low: float
    high: float
    log: bool
    default: Any
    choices: tuple[str, ...] = ()

    @property
    def dtype(self):
        return jnp.float32 if self.kind == "float" else jnp.int32


def _typed_replace(self, **updates):
    """``dataclasses.replace`` keeping each field's dtype for Python numbers and
    accepting method names for method genes."""
    specs = {s.name: s for s in type(self).SPECS}
    for name, value in updates.items():
        spec = specs.get(name)
        if spec is not None and spec.kind == "method" and isinstance(value, str):
            value = _method_index(spec, value)
        old = getattr(self, name)
        if isinstance(value, bool | int | float | np.number) and hasattr(old, "dtype"):
            updates[name] = jnp.asarray(value, old.dtype)
    return dataclasses.replace(self, **updates)


@struct.dataclass
class Genome:
    """One evolution strategy (or a batch of them: leading axis on every field).

    Method genes are int32 indices; numbers are float32 / int32 scalars; the
    population size is used as a mask inside the inner GA's static maximum.
    """

    selection: jax.Array  # index into SELECTION_METHODS
    mutation: jax.Array  # index into MUTATION_METHODS
    crossover: jax.Array  # index into CROSSOVER_METHODS
    population_size: jax.Array  # int, active rows of the static maximum
    elitism_ratio: jax.Array  # fraction of the population copied unchanged
    crossover_rate: jax.Array  # probability that a child is a crossover
    mutation_rate: jax.Array  # per-gene mutation probability
    mutation_strength: jax.Array  # Gaussian step (absolute for unbounded genes)
    tournament_size: jax.Array  # int, tournament and diversity selection
    diversity_threshold: jax.Array  # niche radius, RMS distance per gene
    fitness_sharing: jax.Array  # int 0/1: share selection scores within niches
    niche_capacity: jax.Array  # int, winners a niche keeps (diversity selection)
    diversity_bonus: jax.Array  # score bonus for distance to the nearest neighbour
    age_penalty: jax.Array  # score penalty per generation an individual survived


def genome_specs(
    max_population_size: int = 64, min_population_size: int | None = None
) -> tuple[GeneSpec, ...]:
    """The strategy genes, with the population size in ``[min, max]`` (default
    ``min(8, max)``); the default genome uses the whole maximum."""
    max_p = int(max_population_size)
    min_p = min(8, max_p) if min_population_size is None else int(min_population_size)
    if not 2 <= min_p <= max_p:
        raise ValueError(
            f"min_population_size: expected 2 <= min <= max_population_size "
            f"({max_p}), got {min_p}"
        )
    return (
        GeneSpec("selection", "method", 0, 4, False, "tournament", SELECTION_METHODS),
        GeneSpec("mutation", "method", 0, 4, False, "gaussian", MUTATION_METHODS),
        GeneSpec("crossover", "method", 0, 3, False, "uniform", CROSSOVER_METHODS),
        GeneSpec("population_size", "int", min_p, max_p, True, max_p),
        GeneSpec("elitism_ratio", "float", 0.0, 0.5, False, 0.02),
        GeneSpec("crossover_rate", "float", 0.0, 1.0, False, 0.9),
        GeneSpec("mutation_rate", "float", 0.01, 1.0, True, 0.1),
        GeneSpec("mutation_strength", "float", 1e-3, 2.0, True, 0.1),
        GeneSpec("tournament_size", "int", 1, 16, False, 3),
        GeneSpec("diversity_threshold", "float", 1e-3, 3.0, True, 0.1),
        GeneSpec("fitness_sharing", "bool", 0, 1, False, 0),
        GeneSpec("niche_capacity", "int", 1, 8, False, 1),
        GeneSpec("diversity_bonus", "float", 0.0, 1.0, False, 0.0),
        GeneSpec("age_penalty", "float", 0.0, 0.5, False, 0.0),
    )


Genome.replace = _typed_replace
Genome.SPECS = genome_specs(1 << 16, 2)
"""The widest valid ranges (validation and JSON); meta-training narrows the
population size to its static maximum with :func:`genome_specs`."""
MAX_TOURNAMENT_SIZE = 16


def _method_index(spec: GeneSpec, name: str) -> int:
    if name not in spec.choices:
        raise ValueError(
            f"genome.{spec.name}: unknown method {name!r}; valid: {list(spec.choices)}"
        )
    return spec.choices.index(name)


def _specs_for(genome_cls, specs):
    specs = tuple(genome_cls.SPECS if specs is None else specs)
    names = [f.name for f in dataclasses.fields(genome_cls)]
    if [s.name for s in specs] != names:
        raise ValueError(
            f"specs: expected one GeneSpec per field of {genome_cls.__name__} in order "
            f"{names}, got {[s.name for s in specs]}"
        )
    return specs


def default_genome(
    max_population_size: int = 64, *, genome_cls=Genome, specs=None, **overrides
):
    """The hand-designed default: every gene at its spec default, then ``overrides``.

    For :class:`Genome` that is :func:`convergence_jax.evolution.ga` with its
    defaults — tournament (size 3), Gaussian mutation (step 0.1), uniform
    crossover (rate 0.9), 2% elites, the full population, no diversity
    mechanisms — except the mutation rate, 0.1 instead of ``1 / num_genes``
    (a genome does not know the task's size).
    """
    if specs is None and genome_cls is Genome:
        specs = genome_specs(max_population_size)
    specs = _specs_for(genome_cls, specs)
    values = {}
    for spec in specs:
        value = spec.default
        if spec.kind == "method":
            value = _method_index(spec, value)
        values[spec.name] = jnp.asarray(value, spec.dtype)
    genome = genome_cls(**values)
    if overrides:
        genome = genome.replace(**overrides)
    return genome


def _to_search(spec: GeneSpec, x):
    x = jnp.asarray(x, jnp.float32)
    return jnp.log(jnp.maximum(x, 1e-30)) if spec.log else x


def _search_bounds(spec: GeneSpec):
    if spec.log:
        return math.log(spec.low), math.log(spec.high)
    return float(spec.low), float(spec.high)


def _finish(spec: GeneSpec, y):
    x = jnp.exp(y) if spec.log else y
    if spec.kind != "float":
        x = jnp.round(x)
    return jnp.clip(x, spec.low, spec.high).astype(spec.dtype)


def random_genomes(key, num: int, specs=None, *, genome_cls=Genome):
    """``num`` genomes drawn uniformly from the gene ranges (log-uniform for log
    genes, uniform over methods and bools); fields get a leading ``[num]`` axis."""
    specs = _specs_for(genome_cls, specs)
    keys = jax.random.split(key, len(specs))
    values = {}
    for k, spec in zip(keys, specs, strict=True):
        if spec.kind in ("method", "bool"):
            values[spec.name] = jax.random.randint(
                k, (num,), int(spec.low), int(spec.high) + 1, jnp.int32
            )
        else:
            lo, hi = _search_bounds(spec)
            if spec.kind == "int":  # every integer equally likely
                lo, hi = (lo, hi) if spec.log else (spec.low - 0.499, spec.high + 0.499)
            values[spec.name] = _finish(
                spec, jax.random.uniform(k, (num,), jnp.float32, lo, hi)
            )
    return genome_cls(**values)


def mutate_genomes(key, genomes, rate, strength, specs=None):
    """Meta-mutation of a batch ``[M]``: each gene changes with probability ``rate``.

    Method genes and bools are redrawn uniformly (possibly to the same value);
    numbers take a Gaussian step of ``strength`` times their range in search
    coordinates (log space for log genes), then are rounded and clipped.
    """
    specs = _specs_for(type(genomes), specs)
    keys = jax.random.split(key, len(specs))
    out = {}
    for k, spec in zip(keys, specs, strict=True):
        x = getattr(genomes, spec.name)
        k_on, k_val = jax.random.split(k)
        on = jax.random.uniform(k_on, x.shape) < rate
        if spec.kind in ("method", "bool"):
            new = jax.random.randint(
                k_val, x.shape, int(spec.low), int(spec.high) + 1, jnp.int32
            )
        else:
            lo, hi = _search_bounds(spec)
            step = strength * (hi - lo) * jax.random.normal(k_val, x.shape)
            new = _finish(spec, _to_search(spec, x) + step)
        out[spec.name] = jnp.where(on, new, x).astype(spec.dtype)
    return type(genomes)(**out)


def crossover_genomes(key, genomes_a, genomes_b, rate):
    """Uniform crossover gene by gene with probability ``rate`` per child, else a."""
    names = [f.name for f in dataclasses.fields(genomes_a)]
    keys = jax.random.split(key, len(names) + 1)
    num = getattr(genomes_a, names[0]).shape[0]
    crossed = jax.random.uniform(keys[-1], (num,)) < rate
    out = {}
    for k, name in zip(keys[:-1], names, strict=True):
        a, b = getattr(genomes_a, name), getattr(genomes_b, name)
        from_b = crossed & (jax.random.uniform(k, a.shape) < 0.5)
        out[name] = jnp.where(from_b, b, a)
    return type(genomes_a)(**out)


def clip_genomes(genomes, specs=None):
    """Genes clipped/rounded into their spec ranges (traced-safe)."""
    specs = _specs_for(type(genomes), specs)
    out = {}
    for spec in specs:
        x = jnp.asarray(getattr(genomes, spec.name))
        if spec.kind == "float":
            out[spec.name] = jnp.clip(x, spec.low, spec.high).astype(spec.dtype)
        else:
            x = jnp.round(x) if jnp.issubdtype(x.dtype, jnp.floating) else x
            out[spec.name] = jnp.clip(x, spec.low, spec.high).astype(spec.dtype)
    return type(genomes)(**out)


def check_genome(genome, specs=None) -> None:
    """Raise ValueError naming the gene if a concrete genome (or batch) is invalid."""
    specs = _specs_for(type(genome), specs)
    for spec in specs:
        try:
            value = np.asarray(getattr(genome, spec.name))
        except (
            jax.errors.TracerArrayConversionError,
            jax.errors.ConcretizationTypeError,
        ):
            continue
        if not np.issubdtype(value.dtype, np.number) and value.dtype != bool:
            raise ValueError(f"genome.{spec.name}: expected a number, got {value!r}")
        where = f"[{spec.low}, {spec.high}]"
        if spec.kind == "method":
            where = f"an index in [0, {len(spec.choices) - 1}] ({list(spec.choices)})"
        elif spec.kind == "bool":
            where = "0 or 1"
        elif spec.kind == "int":
            where = f"an integer in [{spec.low}, {spec.high}]"
        ok = np.isfinite(value) & (value >= spec.low) & (value <= spec.high)
        if spec.kind != "float":
            ok &= value == np.round(value)
        if not np.all(ok):
            raise ValueError(f"genome.{spec.name}: expected {where}, got {value}")


def _float32_text(x) -> float:
    """The shortest decimal that reads back as the same float32."""
    return float(str(np.float32(x)))


def genome_to_dict(genome, specs=None) -> dict:
    """JSON-ready dict of one genome: method names, ints, shortest float32 decimals.

    ``genome_from_dict(genome_to_dict(g))`` equals ``g`` bit for bit.
    """
    specs = _specs_for(type(genome), specs)
    check_genome(genome, specs)
    out = {}
    for spec in specs:
        value = np.asarray(getattr(genome, spec.name))
        if value.shape != ():
            raise ValueError(
                f"genome.{spec.name}: expected one genome (scalar genes), got shape "
                f"{value.shape}; use unstack_genomes for a batch"
            )
        if spec.kind == "method":
            out[spec.name] = spec.choices[int(value)]
        elif spec.kind == "bool":
            out[spec.name] = bool(value)
        elif spec.kind == "int":
            out[spec.name] = int(value)
        else:
            out[spec.name] = _float32_text(value)
    return out


def genome_from_dict(data: dict, specs=None, *, genome_cls=Genome):
    """Inverse of :func:`genome_to_dict`; ValueError names a missing or bad gene."""
    specs = _specs_for(genome_cls, specs)
    if not isinstance(data, dict):
        raise ValueError(f"genome: expected a dict, got {type(data).__name__}")
    extra = sorted(set(data) - {s.name for s in specs})
    if extra:
        raise ValueError(f"genome: unknown genes {extra}")
    values = {}
    for spec in specs:
        if spec.name not in data:
            raise ValueError(f"genome.{spec.name}: missing")
        value = data[spec.name]
        if spec.kind == "method":
            if not isinstance(value, str):
                raise ValueError(
                    f"genome.{spec.name}: expected a method name, got {value!r}"
                )
            value = _method_index(spec, value)
        elif isinstance(value, str) or value is None:
            raise ValueError(f"genome.{spec.name}: expected a number, got {value!r}")
        values[spec.name] = jnp.asarray(value, spec.dtype)
    genome = genome_cls(**values)
    check_genome(genome, specs)
    return genome


def save_genomes(path, genomes: dict, specs=None, **extra) -> None:
    """Write ``{name: genome}`` (plus JSON-ready ``extra``) to ``path`` as JSON."""
    payload = {
        "format": "convergence_jax.meta.genomes",
        "version": 1,
        "genomes": {name: genome_to_dict(g, specs) for name, g in genomes.items()},
        **extra,
    }
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def stack_genomes(genomes: Sequence):
    """A batch ``[M]`` from a sequence of single genomes."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *genomes)


def unstack_genomes(genomes) -> list:
    """The single genomes of a batch, in order."""
    num = jax.tree.leaves(genomes)[0].shape[0]
    return [jax.tree.map(lambda x, i=i: x[i], genomes) for i in range(num)]


@dataclasses.dataclass(frozen=True)
class EvolutionConfig:
    """A genome as a GA configuration: methods by name, sizes, and numbers.

    ``ga_params`` are the matching :class:`~convergence_jax.evolution.GAParams`
    (for population ``population_size``); ``extras`` hold the genes the ordinary
    GA does not have (diversity mechanisms), which :meth:`build` honours by running
    the strategy GA when they are not neutral.
    """

    population_size: int
    selection: str
    mutation: str
    crossover: str
    ga_params: GAParams
    extras: dict

    @property
    def ordinary(self) -> bool:
        """True when :func:`convergence_jax.evolution.ga` can run it exactly."""
        from convergence_jax.evolution import CROSSOVER, MUTATION, SELECTION

        neutral = (
            not self.extras["fitness_sharing"]
            and self.extras["diversity_bonus"] == 0.0
            and self.extras["age_penalty"] == 0.0
        )
        return (
            neutral
            and self.selection in SELECTION
            and self.mutation in MUTATION
            and self.crossover in CROSSOVER
        )

    def build(self, solution, *, maximize: bool = True):
        """``(ga, params)`` to run with ``evolution.make_run``.

        The ordinary :func:`convergence_jax.evolution.ga` when it has every method
        and the diversity genes are neutral, else the strategy GA of this package
        at exactly ``population_size`` (same results, see the tests).
        """
        if self.ordinary:
            from convergence_jax.evolution import ga

            algo = ga(
                solution,
                self.population_size,
                selection=self.selection,
                mutation=self.mutation,
                crossover=self.crossover,
                maximize=maximize,
                max_tournament_size=min(MAX_TOURNAMENT_SIZE, self.population_size),
            )
            return algo, self.ga_params
        from convergence_jax.meta.inner import strategy_ga

        algo = strategy_ga(solution, self.population_size, maximize=maximize)
        return algo, self.genome

    @property
    def genome(self) -> Genome:
        p = self.ga_params
        return default_genome(
            self.population_size,
            selection=self.selection,
            mutation=self.mutation,
            crossover=self.crossover,
            population_size=self.population_size,
            elitism_ratio=self.extras["elitism_ratio"],
            crossover_rate=float(p.crossover_rate),
            mutation_rate=float(p.mutation_rate),
            mutation_strength=float(p.mutation_std),
            tournament_size=int(p.tournament_size),
            diversity_threshold=self.extras["diversity_threshold"],
            fitness_sharing=int(self.extras["fitness_sharing"]),
            niche_capacity=self.extras["niche_capacity"],
            diversity_bonus=self.extras["diversity_bonus"],
            age_penalty=self.extras["age_penalty"],
        )


def num_elites(genome) -> jax.Array:
    """Elites of a genome: ``round(elitism_ratio * population_size)`` (traced-safe)."""
    n = genome.population_size.astype(jnp.float32)
    return jnp.clip(jnp.round(genome.elitism_ratio * n), 0, n).astype(jnp.int32)


def ga_params_for(genome, num_genes: int) -> GAParams:
    """The :class:`GAParams` a genome implies (traced-safe).

    Numbers the genome does not carry (truncation ratio, rank pressure, dropout
    rate, tau, sigma bounds, init spread) keep the ordinary GA's defaults.
    """
    base = ga_default_params(64, num_genes, MAX_TOURNAMENT_SIZE)
    return base.replace(
        num_elites=num_elites(genome),
        tournament_size=genome.tournament_size.astype(jnp.int32),
        crossover_rate=genome.crossover_rate.astype(jnp.float32),
        mutation_rate=genome.mutation_rate.astype(jnp.float32),
        mutation_std=genome.mutation_strength.astype(jnp.float32),
    )


def to_evolution_config(genome: Genome, num_genes: int = 1) -> EvolutionConfig:
    """Turn one concrete genome into an :class:`EvolutionConfig`.

    ``num_genes`` only sets the ordinary GA's ``tau`` default (self-adaptive).
    """
    d = genome_to_dict(genome)
    return EvolutionConfig(
        population_size=d["population_size"],
        selection=d["selection"],
        mutation=d["mutation"],
        crossover=d["crossover"],
        ga_params=ga_params_for(genome, num_genes),
        extras={
            "elitism_ratio": d["elitism_ratio"],
            "diversity_threshold": d["diversity_threshold"],
            "fitness_sharing": d["fitness_sharing"],
            "niche_capacity": d["niche_capacity"],
            "diversity_bonus": d["diversity_bonus"],
            "age_penalty": d["age_penalty"],
        },
    )
