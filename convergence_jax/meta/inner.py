"""The strategy GA: one compiled GA that any :class:`~.meta.Genome` drives.

``strategy_ga(solution, max_population_size)`` has the ``init / ask / tell`` shape of
:func:`convergence_jax.evolution.ga` (so :func:`convergence_jax.evolution.make_run`
runs it) with the genome as ``params``. Its generation scheme is the ordinary GA's
(generational replacement with elitism, the first ``ask`` returns the initial
population), and:

* the method genes pick selection, crossover and mutation with ``lax.switch``
  (under ``vmap`` over genomes every branch runs and the genome's is selected);
* the population lives in a static ``[Pmax, ...]`` array; rows ``>= n``
  (``n = genome.population_size``) are inactive: they are never selected, their
  fitness is ignored, and they do not count as evaluations. A genome of size ``n``
  gives exactly the ordinary GA built at size ``n`` when its methods exist there
  and its diversity genes are neutral (tested);
* selection scores can add a diversity bonus (distance to the nearest neighbour),
  an age penalty (generations an elite has survived) and fitness sharing
  (Goldberg & Richardson, 1987) on top of rank scores; with all three neutral the
  raw fitness is used, as in the ordinary GA. Elites are always the best by raw
  fitness.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from convergence_jax.evolution import _genes as G
from convergence_jax.evolution.crossover import apply_crossover
from convergence_jax.evolution.selection import rank_order
from convergence_jax.meta import operators as ops
from convergence_jax.meta.genome import (
    Genome,
    check_genome,
    default_genome,
    ga_params_for,
    genome_specs,
    num_elites,
)

__all__ = ["StrategyGA", "StrategyState", "make_inner_run", "strategy_ga"]


@struct.dataclass
class StrategyState:
    """Strategy GA state; ``[Pmax]`` fields describe ``population`` (all rows)."""

    population: Any  # pytree, leaves [Pmax, ...]
    fitness: jax.Array  # [Pmax] float32; worst for unknown and inactive rows
    best_solution: Any
    best_fitness: jax.Array
    generation: jax.Array
    sigma: jax.Array
    sigmas: jax.Array  # [Pmax]
    parent_idx: jax.Array  # [Pmax] int32
    elite_mask: jax.Array  # [Pmax] bool
    age: jax.Array  # [Pmax] int32, generations survived as an elite


class StrategyGA(NamedTuple):
    """A GA driven by a genome: pure ``init / ask / tell`` with ``params = genome``."""

    init: Callable[..., StrategyState]
    ask: Callable[..., tuple[Any, StrategyState]]
    tell: Callable[..., tuple[StrategyState, dict]]
    default_params: Genome
    check_params: Callable[[Genome], None]
    population_size: int  # the static maximum Pmax
    genes: G.Genes
    maximize: bool

    def __hash__(self):
        return hash((id(self.init), id(self.ask), id(self.tell)))


def _gather(tree, idx):
    return jax.tree.map(lambda x: x[idx], tree)


def _flat(genes, population):
    leaves = genes.flatten(population)
    return jnp.concatenate(
        [x.reshape(x.shape[0], -1).astype(jnp.float32) for x in leaves], axis=1
    )


def rms_distances(flat, active):
    """``[Pmax, Pmax]`` RMS distance per gene; ``inf`` to and from inactive rows."""
    sq = jnp.sum(flat * flat, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T
    d = jnp.sqrt(jnp.maximum(d2, 0.0) / flat.shape[1])
    both = active[:, None] & active[None, :]
    return jnp.where(both, d, jnp.inf)


def spread(flat, active):
    """Diversity of the active rows: mean over genes of the standard deviation."""
    w = active.astype(jnp.float32)[:, None]
    count = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(flat * w, axis=0) / count
    var = jnp.sum(w * (flat - mean) ** 2, axis=0) / count
    return jnp.mean(jnp.sqrt(var))


def strategy_ga(
    solution,
    max_population_size: int = 64,
    *,
    maximize: bool = True,
    init_std: float = 0.1,
) -> StrategyGA:
    """Build the strategy GA over pytrees shaped like ``solution``.

    Args:
      solution: a pytree of float arrays (a vector, or network params); every leaf is
        an unbounded float gene block. (Search spaces use the ordinary GA.)
      max_population_size: ``Pmax``, static; a genome's ``population_size`` must be
        in ``[2, Pmax]``.
      maximize: True to maximize fitness (default), False to minimize.
      init_std: spread of the initial population around ``solution`` when ``init``
        is not given a population (as the ordinary GA's ``init_std``).
    """
    if isinstance(max_population_size, bool) or not isinstance(
        max_population_size, int | np.integer
    ):
        raise ValueError(
            f"max_population_size: expected an int >= 2, got {max_population_size!r}"
        )
    P = int(max_population_size)
    if P < 2:
        raise ValueError(f"max_population_size: expected an int >= 2, got {P}")
    if not isinstance(maximize, bool):
        raise ValueError(f"maximize: expected True or False, got {maximize!r}")
    genes = G.make_genes(solution)
    if genes.from_space:
        raise ValueError(
            "solution: the strategy GA takes a pytree of float arrays; use "
            "convergence_jax.evolution.ga for a SearchSpace"
        )
    template = [
        jnp.asarray(leaf, gene.dtype)
        for gene, leaf in zip(genes.leaves, jax.tree.leaves(solution), strict=True)
    ]
    specs = genome_specs(P, 2)
    worst = -jnp.inf if maximize else jnp.inf
    rows = jnp.arange(P, dtype=jnp.int32)
    selection_fns = list(ops.SELECTION.values())
    mutation_fns = list(ops.MUTATION.values())
    crossover_fns = list(ops.CROSSOVER.values())

    def check_params(genome) -> None:
        if not isinstance(genome, Genome):
            raise ValueError(
                f"params: expected a meta.Genome, got {type(genome).__name__}"
            )
        check_genome(genome, specs)

    def score(fitness):
        fitness = jnp.where(jnp.isnan(fitness), worst, fitness)
        return fitness if maximize else -fitness

    def size(genome):
        return jnp.clip(genome.population_size, 2, P).astype(jnp.int32)

    def init(key, genome, population=None) -> StrategyState:
        """Initial state: ``solution + init_std * N(0, 1)`` rows, or ``population``
        (``[Pmax, ...]``); fitness unknown."""
        check_params(genome)
        leaves = G.initial_population(key, genes, template, P, init_std, population)
        population = genes.unflatten(leaves)
        sigma = jnp.asarray(genome.mutation_strength, jnp.float32)
        return StrategyState(
            population=population,
            fitness=jnp.full((P,), worst, jnp.float32),
            best_solution=_gather(population, 0),
            best_fitness=jnp.asarray(worst, jnp.float32),
            generation=jnp.zeros((), jnp.int32),
            sigma=sigma,
            sigmas=jnp.full((P,), sigma, jnp.float32),
            parent_idx=rows,
            elite_mask=jnp.zeros((P,), bool),
            age=jnp.zeros((P,), jnp.int32),
        )

    def selection_score(raw, order, n, genome, distances, age, active):
        """Raw scores when every diversity gene is neutral, else rank scores in
        ``[0, 1]`` plus bonus, minus age penalty, optionally shared in niches."""
        ranks = jnp.zeros((P,), jnp.float32).at[order].set(rows.astype(jnp.float32))
        u = 1.0 - ranks / jnp.maximum(n - 1, 1).astype(jnp.float32)
        nearest = jnp.min(jnp.where(jnp.eye(P, dtype=bool), jnp.inf, distances), 1)
        nearest = jnp.where(active & jnp.isfinite(nearest), nearest, 0.0)
        nearest = nearest / jnp.maximum(jnp.max(nearest), 1e-12)
        modified = (
            u
            + genome.diversity_bonus * nearest
            - genome.age_penalty * age.astype(jnp.float32)
        )
        radius = jnp.maximum(genome.diversity_threshold, 1e-12)
        niche = jnp.sum(jnp.maximum(0.0, 1.0 - distances / radius), axis=1)
        positive = modified - jnp.min(jnp.where(active, modified, jnp.inf)) + 1e-3
        shared = positive / jnp.maximum(niche, 1.0)
        modified = jnp.where(genome.fitness_sharing > 0, shared, modified)
        modified = jnp.where(active & jnp.isfinite(raw), modified, -jnp.inf)
        neutral = (
            (genome.diversity_bonus == 0)
            & (genome.age_penalty == 0)
            & (genome.fitness_sharing == 0)
        )
        return jnp.where(neutral, raw, modified), u

    def ask(key, state: StrategyState, genome):
        """Next population ``[Pmax, ...]`` (rows ``>= n`` inactive) and the state."""
        G.check_population(genes, state.population, P, "state.population")
        n = size(genome)
        params = ga_params_for(genome, genes.num_genes)
        key_select, key_cross, key_mutate = jax.random.split(key, 3)
        active = rows < n
        raw = jnp.where(active, score(state.fitness), -jnp.inf)
        order = rank_order(raw)
        distances = rms_distances(_flat(genes, state.population), active)
        sel_score, u = selection_score(
            raw, order, n, genome, distances, state.age, active
        )
        sel_order = rank_order(sel_score)
        select_params = _SelectParams(
            tournament_size=params.tournament_size,
            truncation_ratio=params.truncation_ratio,
            rank_pressure=params.rank_pressure,
            diversity_threshold=genome.diversity_threshold,
            niche_capacity=genome.niche_capacity,
        )
        parents = jax.lax.switch(
            jnp.clip(genome.selection, 0, len(selection_fns) - 1),
            selection_fns,
            key_select,
            sel_score,
            sel_order,
            n,
            select_params,
            distances,
        )
        second = parents[jnp.minimum(n + rows, 2 * P - 1)]
        initial = state.generation == 0
        kept = rows < jnp.where(initial, n, jnp.minimum(num_elites(genome), n))
        first = jnp.where(kept, jnp.where(initial, rows, order), parents[:P])
        parents_a = _gather(state.population, first)
        parents_b = _gather(state.population, second)
        weight_a = 0.5 * (1.0 + u[first] - u[second])

        def cross(key, a, b, params, genes):
            branches = [
                functools.partial(
                    fn, params=params, genes=genes, weight_a=weight_a, n=n
                )
                for fn in crossover_fns
            ]
            return jax.lax.switch(
                jnp.clip(genome.crossover, 0, len(branches) - 1),
                [lambda k, a, b, f=f: f(k, a, b) for f in branches],
                key,
                a,
                b,
            )

        children, _ = apply_crossover(
            cross, key_cross, parents_a, parents_b, params, genes
        )
        children, child_sigmas = jax.lax.switch(
            jnp.clip(genome.mutation, 0, len(mutation_fns) - 1),
            [
                lambda k, c, s, sg, f=f: f(k, c, s, sg, params, genes, n)
                for f in mutation_fns
            ],
            key_mutate,
            children,
            state.sigmas[first],
            state.sigma,
        )
        population = genes.unflatten(
            jnp.where(G.broadcast_rows(kept, gene), a, c)
            for gene, a, c in zip(
                genes.leaves,
                genes.flatten(parents_a),
                genes.flatten(children),
                strict=True,
            )
        )
        survived = kept & ~initial
        state = state.replace(
            parent_idx=first.astype(jnp.int32),
            elite_mask=survived,
            sigmas=jnp.where(kept, state.sigmas[first], child_sigmas),
            age=jnp.where(survived, state.age[first] + 1, 0).astype(jnp.int32),
        )
        return population, state

    def tell(key, population, fitness, state: StrategyState, genome):
        """Record the fitness ``[Pmax]`` of ``population``; inactive rows are ignored.

        Metrics are those of the ordinary GA over the active rows, plus
        ``diversity`` (mean per-gene standard deviation of the active rows) and
        ``num_evaluations`` (``n``).
        """
        del key
        G.check_population(genes, population, P, "population")
        if tuple(np.shape(fitness)) != (P,):
            raise ValueError(
                f"fitness: expected shape ({P},) (one value per row of the static "
                f"maximum), got {tuple(np.shape(fitness))}"
            )
        n = size(genome)
        active = rows < n
        fitness = jnp.asarray(fitness).astype(jnp.float32)
        failed = jnp.isnan(fitness) & active
        clean = jnp.where(failed | ~active, worst, fitness)
        new_score = score(clean)
        best = jnp.argmax(new_score)
        improved = new_score[best] > score(state.best_fitness)
        best_solution = jax.tree.map(
            lambda x, b: jnp.where(improved, x[best], b),
            population,
            state.best_solution,
        )
        best_fitness = jnp.where(improved, clean[best], state.best_fitness)
        parent_score = score(state.fitness)[state.parent_idx]
        counted = active & ~state.elite_mask & jnp.isfinite(parent_score)
        num_counted = jnp.sum(counted)
        successes = jnp.sum(counted & (new_score > parent_score))
        success_rate = successes / jnp.maximum(num_counted, 1)
        ok = active & ~failed
        num_ok = jnp.sum(ok)
        mean = jnp.sum(jnp.where(ok, fitness, 0.0)) / jnp.maximum(num_ok, 1)
        metrics = {
            "generation": state.generation,
            "best_fitness": best_fitness,
            "best_fitness_in_generation": clean[best],
            "mean_fitness": jnp.where(num_ok > 0, mean, jnp.nan),
            "num_failed": jnp.sum(failed).astype(jnp.int32),
            "success_rate": success_rate.astype(jnp.float32),
            "sigma": state.sigma,
            "mean_sigma": jnp.sum(jnp.where(active, state.sigmas, 0.0)) / n,
            "diversity": spread(_flat(genes, population), active),
            "num_evaluations": n,
        }
        state = state.replace(
            population=population,
            fitness=clean,
            best_solution=best_solution,
            best_fitness=best_fitness.astype(jnp.float32),
            generation=state.generation + 1,
        )
        return state, metrics

    return StrategyGA(
        init=init,
        ask=ask,
        tell=tell,
        default_params=default_genome(P),
        check_params=check_params,
        population_size=P,
        genes=genes,
        maximize=maximize,
    )


@struct.dataclass
class _SelectParams:
    tournament_size: jax.Array
    truncation_ratio: jax.Array
    rank_pressure: jax.Array
    diversity_threshold: jax.Array
    niche_capacity: jax.Array


def make_inner_run(sga: StrategyGA, fitness_fn, init_population, num_generations):
    """``run(key, genome, task) -> (curve [G], diversity [G], state)``.

    One inner GA run as one ``lax.scan``: ``init_population(key, task, Pmax)``
    draws the initial rows, ``fitness_fn(task, population) -> [Pmax]`` scores them
    (higher is better when ``sga.maximize``). ``curve`` is the best fitness so far
    after each generation (generation ``g`` has used ``(g + 1) n`` evaluations).
    ``vmap`` it over genomes, tasks and keys.
    """
    num_generations = int(num_generations)
    if num_generations < 1:
        raise ValueError(f"num_generations: expected >= 1, got {num_generations}")

    def run(key, genome, task):
        key_pop, key_loop = jax.random.split(key)
        population = init_population(key_pop, task, sga.population_size)
        state = sga.init(key_pop, genome, population)

        def generation(state, key):
            key_ask, key_tell = jax.random.split(key)
            candidates, state = sga.ask(key_ask, state, genome)
            fitness = fitness_fn(task, candidates)
            state, metrics = sga.tell(key_tell, candidates, fitness, state, genome)
            return state, (metrics["best_fitness"], metrics["diversity"])

        keys = jax.random.split(key_loop, num_generations)
        state, (curve, div) = jax.lax.scan(generation, state, keys)
        return curve, div, state

    return run
