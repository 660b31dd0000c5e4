"""Genetic algorithms over any pytree: search-space configs or network weights.

``ga(solution_or_space, population_size)`` returns pure ``init / ask / tell``
functions; ``run`` / ``make_run`` compile a whole run into one ``lax.scan``. The
operator families are registries (``SELECTION``, ``MUTATION``, ``CROSSOVER``) of pure
functions that tests and sweeps can loop over. Fitness is maximized unless
``maximize=False``; NaN fitness is a failed evaluation and counts as the worst.
"""

from convergence_jax.evolution import crossover, mutation, selection
from convergence_jax.evolution._genes import Gene, Genes
from convergence_jax.evolution.crossover import CROSSOVER, apply_crossover
from convergence_jax.evolution.genetic import (
    GA,
    GAParams,
    GAState,
    default_params,
    ga,
    make_run,
    run,
)
from convergence_jax.evolution.mab import (
    MabEvolution,
    MabEvolutionParams,
    MabEvolutionState,
    mab_evolution,
    reward_prior,
    run_mab_evolution,
)
from convergence_jax.evolution.mutation import MUTATION
from convergence_jax.evolution.selection import SELECTION

__all__ = [
    "CROSSOVER",
    "GA",
    "GAParams",
    "GAState",
    "MabEvolution",
    "MabEvolutionParams",
    "MabEvolutionState",
    "Gene",
    "Genes",
    "MUTATION",
    "SELECTION",
    "apply_crossover",
    "crossover",
    "default_params",
    "ga",
    "mab_evolution",
    "make_run",
    "mutation",
    "reward_prior",
    "run",
    "run_mab_evolution",
    "selection",
]
