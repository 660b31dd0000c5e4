"""A genetic algorithm over any pytree: a search space of configs or network weights.

::

    ga = evolution.ga(space_or_solution, population_size=64)
    params = ga.default_params
    state = ga.init(key, params)
    population, state = ga.ask(key, state, params)
    state, metrics = ga.tell(key, population, fitness, state, params)

Fitness is **maximized** by default (``maximize=False`` minimizes, like evosax). NaN
fitness marks a failed evaluation: it counts as the worst possible value and is
counted in ``metrics["num_failed"]``.

Generation scheme: generational replacement with elitism. The first ``ask`` after
``init`` returns the initial population unchanged so that it gets evaluated; every
later ``ask`` breeds a full new population from ``state.population`` /
``state.fitness``: the ``num_elites`` best individuals are copied unchanged to rows
``0 .. num_elites-1`` (best first), every other row is a child of two selected parents
(crossover with probability ``crossover_rate``, then mutation). ``tell`` makes the
evaluated population the new ``state.population``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from convergence_jax.evolution import _genes as G
from convergence_jax.evolution.crossover import CROSSOVER, apply_crossover
from convergence_jax.evolution.mutation import MUTATION
from convergence_jax.evolution.selection import SELECTION, rank_order

__all__ = ["GA", "GAParams", "GAState", "ga", "make_run", "run"]


@struct.dataclass
class GAParams:
    """Every tunable number of the GA (jnp scalars; ``vmap`` over them to sweep).

    Step sizes (``mutation_std``, ``sigma``, ``sigmas``) are relative to the width of a
    bounded gene's range (in log space for log floats) and absolute for unbounded genes.
    """

    num_elites: jax.Array  # int, copied unchanged each generation; 0 .. P
    tournament_size: jax.Array  # int, 1 .. max_tournament_size
    truncation_ratio: jax.Array  # fraction of the best that truncation draws from
    rank_pressure: jax.Array  # linear-ranking pressure s in [1, 2]
    crossover_rate: jax.Array  # probability that a child is a crossover
    blend_alpha: jax.Array  # BLX-alpha widening
    mutation_rate: jax.Array  # per-gene mutation probability
    mutation_std: jax.Array  # Gaussian step (and initial sigma / sigmas)
    dropout_rate: jax.Array  # per-gene reset-to-zero probability (dropout mutation)
    tau: jax.Array  # learning rate of self-adaptive log-normal sigma updates
    one_fifth_factor: jax.Array  # sigma multiplier of the 1/5th success rule (> 1)
    success_target: jax.Array  # target success rate of the 1/5th rule
    min_sigma: jax.Array  # lower clip of adapted step sizes
    max_sigma: jax.Array  # upper clip of adapted step sizes
    init_std: jax.Array  # spread of the initial population around a pytree template


def _typed_replace(self, **updates):
    """``dataclasses.replace`` that keeps each field's dtype for Python numbers.

    ``params.replace(mutation_std=0.2)`` then gives a float32 array like the default,
    so a jitted run sees the same types and does not recompile.
    """
    for name, value in updates.items():
        old = getattr(self, name)
        if isinstance(value, int | float) and hasattr(old, "dtype"):
            updates[name] = jnp.asarray(value, old.dtype)
    return dataclasses.replace(self, **updates)


GAParams.replace = _typed_replace


@struct.dataclass
class GAState:
    """GA state; after ``tell`` every ``[P]`` field describes ``population``.

    ``parent_idx``, ``elite_mask`` and ``sigmas`` are written by ``ask`` for the
    population it returns: ``parent_idx[i]`` is the row of the previous population
    that is individual ``i``'s first parent (for an elite, the row it was copied from),
    ``elite_mask[i]`` says whether ``i`` is an unchanged elite copy, and ``sigmas[i]``
    is the step size ``i`` was mutated with.
    """

    population: Any  # pytree, leaves [P, ...]
    fitness: jax.Array  # [P] float32; worst (-inf, or +inf when minimizing) if unknown
    best_solution: Any  # pytree, one individual
    best_fitness: jax.Array  # best fitness ever told (NaN never counts)
    generation: jax.Array  # number of tells so far
    sigma: jax.Array  # global step size (1/5th success rule)
    sigmas: jax.Array  # [P] per-individual step sizes (self-adaptive)
    parent_idx: jax.Array  # [P] int32
    elite_mask: jax.Array  # [P] bool


class GA(NamedTuple):
    """A genetic algorithm: pure ``init / ask / tell`` plus its static configuration."""

    init: Callable[..., GAState]
    ask: Callable[..., tuple[Any, GAState]]
    tell: Callable[..., tuple[GAState, dict]]
    default_params: GAParams
    check_params: Callable[[GAParams], None]
    population_size: int
    genes: G.Genes
    maximize: bool
    selection: str
    mutation: str
    crossover: str
    max_tournament_size: int

    # Identity-based hash so a GA can be a static argument of jax.jit; copies made
    # with _replace share init and hash alike (tuple equality still applies).
    def __hash__(self):
        return hash((id(self.init), id(self.ask), id(self.tell)))


def default_params(population_size: int, num_genes: int, max_tournament_size: int):
    """Defaults for a population of ``population_size`` and ``num_genes`` genes."""
    f32, i32 = jnp.float32, jnp.int32
    return GAParams(
        num_elites=jnp.asarray(max(1, round(0.02 * population_size)), i32),
        tournament_size=jnp.asarray(min(3, max_tournament_size), i32),
        truncation_ratio=jnp.asarray(0.5, f32),
        rank_pressure=jnp.asarray(1.5, f32),
        crossover_rate=jnp.asarray(0.9, f32),
        blend_alpha=jnp.asarray(0.5, f32),
        mutation_rate=jnp.asarray(min(1.0, max(0.05, 1.0 / num_genes)), f32),
        mutation_std=jnp.asarray(0.1, f32),
        dropout_rate=jnp.asarray(0.01, f32),
        tau=jnp.asarray(1.0 / math.sqrt(2.0 * max(num_genes, 1)), f32),
        one_fifth_factor=jnp.asarray(1.2, f32),
        success_target=jnp.asarray(0.2, f32),
        min_sigma=jnp.asarray(1e-6, f32),
        max_sigma=jnp.asarray(1e3, f32),
        init_std=jnp.asarray(0.1, f32),
    )


def _concrete(value):
    """``value`` as a NumPy array, or None while it is being traced."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _params_checker(population_size: int, max_tournament_size: int):
    P = population_size
    rules = {
        "num_elites": (
            lambda v: (v >= 0) & (v <= P) & (v == np.round(v)),
            f"an integer in [0, {P}] (population_size)",
        ),
        "tournament_size": (
            lambda v: (v >= 1) & (v <= max_tournament_size) & (v == np.round(v)),
            f"an integer in [1, {max_tournament_size}] (max_tournament_size)",
        ),
        "truncation_ratio": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
        "rank_pressure": (lambda v: (v >= 1) & (v <= 2), "in [1, 2]"),
        "crossover_rate": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
        "blend_alpha": (lambda v: v >= 0, ">= 0"),
        "mutation_rate": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
        "mutation_std": (lambda v: v >= 0, ">= 0"),
        "dropout_rate": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
        "tau": (lambda v: v >= 0, ">= 0"),
        "one_fifth_factor": (lambda v: v >= 1, ">= 1"),
        "success_target": (lambda v: (v > 0) & (v < 1), "in (0, 1)"),
        "min_sigma": (lambda v: v > 0, "> 0"),
        "max_sigma": (lambda v: v > 0, "> 0"),
        "init_std": (lambda v: v >= 0, ">= 0"),
    }

    def check_params(params: GAParams) -> None:
        """Raise ValueError naming the field if a concrete Params value is invalid.

        Traced values (inside ``jit``/``vmap``) cannot be checked and are clipped into
        range where that is meaningful.
        """
        if not isinstance(params, GAParams):
            raise ValueError(
                f"params: expected GAParams (ga.default_params), got "
                f"{type(params).__name__}"
            )
        for name, (ok, expected) in rules.items():
            value = _concrete(getattr(params, name))
            if value is None:
                continue
            if not np.issubdtype(value.dtype, np.number):
                raise ValueError(f"params.{name}: expected a number, got {value!r}")
            if not np.all(np.isfinite(value) & ok(value)):
                raise ValueError(f"params.{name}: expected {expected}, got {value}")
        lo, hi = _concrete(params.min_sigma), _concrete(params.max_sigma)
        if lo is not None and hi is not None and np.any(lo > hi):
            raise ValueError(
                f"params.min_sigma ({lo}) must not exceed params.max_sigma ({hi})"
            )

    return check_params


def _gather(tree, idx):
    return jax.tree.map(lambda x: x[idx], tree)


def ga(
    solution_or_space,
    population_size: int = 64,
    *,
    selection: str = "tournament",
    mutation: str = "gaussian",
    crossover: str = "uniform",
    maximize: bool = True,
    max_tournament_size: int | None = None,
) -> GA:
    """Build a genetic algorithm.

    Args:
      solution_or_space: a :class:`~convergence_jax.spaces.SearchSpace` (population
        ``dict name -> [P]``: float32 floats, int32 ints, int32 choice indices), or
        any pytree of float arrays (a template solution, e.g. flax params): every
        leaf is an unbounded float gene block and population leaves get a leading
        ``[P]`` axis.
      population_size: ``P``, static, at least 2.
      selection: a key of :data:`SELECTION` (tournament, roulette, rank, truncation).
      mutation: a key of :data:`MUTATION` (gaussian, self_adaptive, one_fifth,
        dropout).
      crossover: a key of :data:`CROSSOVER` (uniform, blend, one_point, average).
      maximize: True to maximize fitness (default), False to minimize.
      max_tournament_size: static upper bound of ``params.tournament_size``
        (default ``min(8, population_size)``).

    Returns:
      a :class:`GA` with ``init(key, params, population=None)``,
      ``ask(key, state, params)`` and ``tell(key, population, fitness, state,
      params)``.
    """
    if isinstance(population_size, bool) or not isinstance(
        population_size, int | np.integer
    ):
        raise ValueError(
            f"population_size: expected an int >= 2, got {population_size!r}"
        )
    P = int(population_size)
    if P < 2:
        raise ValueError(f"population_size: expected an int >= 2, got {P}")
    if max_tournament_size is None:
        max_tournament_size = min(8, P)
    if isinstance(max_tournament_size, bool) or not isinstance(
        max_tournament_size, int | np.integer
    ):
        raise ValueError(
            f"max_tournament_size: expected an int, got {max_tournament_size!r}"
        )
    if not 1 <= max_tournament_size <= P:
        raise ValueError(
            f"max_tournament_size: expected 1 <= max_tournament_size <= "
            f"population_size ({P}), got {max_tournament_size}"
        )
    for field, name, registry in (
        ("selection", selection, SELECTION),
        ("mutation", mutation, MUTATION),
        ("crossover", crossover, CROSSOVER),
    ):
        if name not in registry:
            raise ValueError(
                f"{field}: unknown method {name!r}; valid: {sorted(registry)}"
            )
    if not isinstance(maximize, bool):
        raise ValueError(f"maximize: expected True or False, got {maximize!r}")

    genes = G.make_genes(solution_or_space)
    template = None
    if not genes.from_space:
        template = [
            jnp.asarray(leaf, gene.dtype)
            for gene, leaf in zip(
                genes.leaves, jax.tree.leaves(solution_or_space), strict=True
            )
        ]
    select_fn = SELECTION[selection]
    mutate_fn = MUTATION[mutation]
    cross_fn = CROSSOVER[crossover]
    max_k = int(max_tournament_size)
    check_params = _params_checker(P, max_k)
    worst = -jnp.inf if maximize else jnp.inf

    def score(fitness):
        """Higher is better; NaN is the worst."""
        fitness = jnp.where(jnp.isnan(fitness), worst, fitness)
        return fitness if maximize else -fitness

    def clipped(params):
        return params.replace(
            num_elites=jnp.clip(params.num_elites, 0, P),
            tournament_size=jnp.clip(params.tournament_size, 1, max_k),
        )

    def init(key, params, population=None) -> GAState:
        """Initial state: random population (or ``population``), fitness unknown.

        A search space is sampled uniformly within bounds (log-uniformly for log
        floats, uniformly over ints and choices); a pytree solution gives
        ``template + params.init_std * N(0, 1)``.
        """
        check_params(params)
        leaves = G.initial_population(
            key, genes, template, P, params.init_std, population
        )
        population = genes.unflatten(leaves)
        sigma = jnp.asarray(params.mutation_std, jnp.float32)
        return GAState(
            population=population,
            fitness=jnp.full((P,), worst, jnp.float32),
            best_solution=_gather(population, 0),
            best_fitness=jnp.asarray(worst, jnp.float32),
            generation=jnp.zeros((), jnp.int32),
            sigma=sigma,
            sigmas=jnp.full((P,), sigma, jnp.float32),
            parent_idx=jnp.arange(P, dtype=jnp.int32),
            elite_mask=jnp.zeros((P,), bool),
        )

    def ask(key, state: GAState, params: GAParams):
        """Next population to evaluate ``[P, ...]`` and the state that bred it.

        Before the first ``tell`` this is the initial population itself.
        """
        G.check_population(genes, state.population, P, "state.population")
        params = clipped(params)
        key_select, key_cross, key_mutate = jax.random.split(key, 3)
        fitness = score(state.fitness)
        order = rank_order(fitness)
        parents = select_fn(key_select, fitness, 2 * P, params, order=order)
        # Rows < num_kept are unchanged copies of state.population[order]: the elites,
        # or in generation 0 the whole initial population (branch-free, vmap-friendly).
        initial = state.generation == 0
        rows = jnp.arange(P, dtype=jnp.int32)
        kept = rows < jnp.where(initial, P, params.num_elites)
        first = jnp.where(kept, jnp.where(initial, rows, order), parents[:P])
        parents_a = _gather(state.population, first)
        children, _ = apply_crossover(
            cross_fn,
            key_cross,
            parents_a,
            _gather(state.population, parents[P:]),
            params,
            genes,
        )
        children, child_sigmas = mutate_fn(
            key_mutate, children, state.sigmas[first], state.sigma, params, genes
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
        state = state.replace(
            parent_idx=first.astype(jnp.int32),
            elite_mask=kept & ~initial,
            sigmas=jnp.where(kept, state.sigmas[first], child_sigmas),
        )
        return population, state

    def tell(key, population, fitness, state: GAState, params: GAParams):
        """Record the fitness ``[P]`` of ``population`` (the one ``ask`` returned)."""
        del key
        G.check_population(genes, population, P, "population")
        if tuple(np.shape(fitness)) != (P,):
            raise ValueError(
                f"fitness: expected shape ({P},) (one value per individual), got "
                f"{tuple(np.shape(fitness))}"
            )
        fitness = jnp.asarray(fitness)
        if not (
            jnp.issubdtype(fitness.dtype, jnp.floating)
            or jnp.issubdtype(fitness.dtype, jnp.integer)
        ):
            raise ValueError(f"fitness: expected numbers, got dtype {fitness.dtype}")
        fitness = fitness.astype(jnp.float32)
        failed = jnp.isnan(fitness)
        clean = jnp.where(failed, worst, fitness)
        new_score = score(clean)

        best = jnp.argmax(new_score)
        improved = new_score[best] > score(state.best_fitness)
        best_solution = jax.tree.map(
            lambda x, b: jnp.where(improved, x[best], b),
            population,
            state.best_solution,
        )
        best_fitness = jnp.where(improved, clean[best], state.best_fitness)

        # Children (not elite copies) whose first parent had a known fitness.
        parent_score = score(state.fitness)[state.parent_idx]
        counted = ~state.elite_mask & jnp.isfinite(parent_score)
        num_counted = jnp.sum(counted)
        successes = jnp.sum(counted & (new_score > parent_score))
        success_rate = successes / jnp.maximum(num_counted, 1)
        sigma = state.sigma
        if mutation == "one_fifth":
            factor = jnp.where(
                success_rate > params.success_target,
                params.one_fifth_factor,
                jnp.where(
                    success_rate < params.success_target,
                    1.0 / params.one_fifth_factor,
                    1.0,
                ),
            )
            factor = jnp.where(num_counted > 0, factor, 1.0)
            sigma = jnp.clip(sigma * factor, params.min_sigma, params.max_sigma)

        ok = ~failed
        num_ok = jnp.sum(ok)
        mean = jnp.sum(jnp.where(ok, fitness, 0.0)) / jnp.maximum(num_ok, 1)
        metrics = {
            "generation": state.generation,
            "best_fitness": best_fitness,
            "best_fitness_in_generation": clean[best],
            "mean_fitness": jnp.where(num_ok > 0, mean, jnp.nan),
            "num_failed": jnp.sum(failed).astype(jnp.int32),
            "success_rate": success_rate.astype(jnp.float32),
            "sigma": sigma.astype(jnp.float32),
            "mean_sigma": jnp.mean(state.sigmas),
        }
        state = state.replace(
            population=population,
            fitness=clean,
            best_solution=best_solution,
            best_fitness=best_fitness.astype(jnp.float32),
            generation=state.generation + 1,
            sigma=sigma.astype(jnp.float32),
        )
        return state, metrics

    return GA(
        init=init,
        ask=ask,
        tell=tell,
        default_params=default_params(P, genes.num_genes, max_k),
        check_params=check_params,
        population_size=P,
        genes=genes,
        maximize=maximize,
        selection=selection,
        mutation=mutation,
        crossover=crossover,
        max_tournament_size=max_k,
    )


def make_run(ga: GA, fitness_fn: Callable, num_generations: int, *, population=None):
    """``run(key, params) -> (state, metrics)``: a whole GA run as one ``lax.scan``.

    ``fitness_fn`` maps a population pytree ``[P, ...]`` to fitness ``[P]`` (a
    vectorized JAX function). Generation 0 evaluates the initial population (or
    ``population``), so a run costs ``num_generations * P`` evaluations. ``metrics``
    holds each :meth:`tell` metric stacked over generations. The returned function
    is pure: ``jax.jit`` it, ``vmap`` it over keys and over :class:`GAParams`.
    """
    if isinstance(num_generations, bool) or not isinstance(
        num_generations, int | np.integer
    ):
        raise ValueError(
            f"num_generations: expected an int >= 1, got {num_generations!r}"
        )
    if num_generations < 1:
        raise ValueError(
            f"num_generations: expected an int >= 1, got {num_generations}"
        )
    if not callable(fitness_fn):
        raise ValueError(f"fitness_fn: expected a callable, got {fitness_fn!r}")

    def run_fn(key, params):
        key_init, key_loop = jax.random.split(key)
        state = ga.init(key_init, params, population)

        def generation(state, key):
            key_ask, key_tell = jax.random.split(key)
            candidates, state = ga.ask(key_ask, state, params)
            fitness = fitness_fn(candidates)
            return ga.tell(key_tell, candidates, fitness, state, params)

        keys = jax.random.split(key_loop, int(num_generations))
        return jax.lax.scan(generation, state, keys)

    return run_fn


def run(key, ga: GA, params: GAParams, fitness_fn, num_generations, *, population=None):
    """Run ``ga`` for ``num_generations`` on ``fitness_fn``; see :func:`make_run`.

    ``jax.jit(run, static_argnums=(1, 3, 4))`` compiles it once per GA and fitness.
    """
    return make_run(ga, fitness_fn, num_generations, population=population)(key, params)
