"""Meta-evolution: evolve the evolution strategy itself, as one compiled program.

Level 0 is the solutions, level 1 a GA that evolves them, level 2 a population of
strategy genomes (:class:`Genome`: method genes picked with ``lax.switch`` plus the
GA's numbers, population size masked in a static maximum) evolved by meta-fitness
over a task suite. ``meta_train`` runs genomes x tasks x seeds of the inner GA in
one ``jit`` per meta-generation; ``compare_strategies`` checks learned strategies
against the hand-designed default on held-out tasks; ``attribute`` measures each
gene's causal contribution by ablation; ``LearningRule`` genomes do the same for
optax learning rules.
"""

from convergence_jax.meta.attribution import (
    Attribution,
    ablations,
    attribute,
    plot_attribution,
)
from convergence_jax.meta.compare import compare_strategies, summarize_comparison
from convergence_jax.meta.evolve import (
    LearnedStrategies,
    MetaParams,
    MetaResult,
    default_meta_params,
    load_learned_strategies,
    make_curves,
    make_evaluate,
    make_meta_fitness,
    make_meta_step,
    meta_train,
)
from convergence_jax.meta.genome import (
    CROSSOVER_METHODS,
    MUTATION_METHODS,
    SELECTION_METHODS,
    EvolutionConfig,
    GeneSpec,
    Genome,
    check_genome,
    default_genome,
    genome_from_dict,
    genome_specs,
    genome_to_dict,
    random_genomes,
    stack_genomes,
    to_evolution_config,
    unstack_genomes,
)
from convergence_jax.meta.inner import (
    StrategyGA,
    StrategyState,
    make_inner_run,
    strategy_ga,
)
from convergence_jax.meta.learning_rules import (
    SCHEDULES,
    LearningRule,
    build_optimizer,
    default_learning_rule,
    learning_rate,
    make_rule_curves,
    meta_train_learning_rules,
)
from convergence_jax.meta.metrics import (
    DEFAULT_WEIGHTS,
    METRIC_NAMES,
    meta_fitness,
    pareto_fronts,
    run_metrics,
)
from convergence_jax.meta.operators import CROSSOVER, MUTATION, SELECTION
from convergence_jax.meta.tasks import (
    BBOB_FUNCTIONS,
    TaskFamily,
    TaskSuite,
    bbob_family,
    cartpole_family,
    normalize,
    regression_family,
    task_suite,
)

__all__ = [
    "Attribution",
    "BBOB_FUNCTIONS",
    "CROSSOVER",
    "CROSSOVER_METHODS",
    "DEFAULT_WEIGHTS",
    "EvolutionConfig",
    "GeneSpec",
    "Genome",
    "LearnedStrategies",
    "LearningRule",
    "METRIC_NAMES",
    "MUTATION",
    "MUTATION_METHODS",
    "MetaParams",
    "MetaResult",
    "SCHEDULES",
    "SELECTION",
    "SELECTION_METHODS",
    "StrategyGA",
    "StrategyState",
    "TaskFamily",
    "TaskSuite",
    "ablations",
    "attribute",
    "bbob_family",
    "build_optimizer",
    "cartpole_family",
    "check_genome",
    "compare_strategies",
    "default_genome",
    "default_learning_rule",
    "default_meta_params",
    "genome_from_dict",
    "genome_specs",
    "genome_to_dict",
    "learning_rate",
    "load_learned_strategies",
    "make_curves",
    "make_evaluate",
    "make_inner_run",
    "make_meta_fitness",
    "make_meta_step",
    "make_rule_curves",
    "meta_fitness",
    "meta_train",
    "meta_train_learning_rules",
    "normalize",
    "pareto_fronts",
    "plot_attribution",
    "random_genomes",
    "regression_family",
    "run_metrics",
    "stack_genomes",
    "strategy_ga",
    "summarize_comparison",
    "task_suite",
    "to_evolution_config",
    "unstack_genomes",
]
