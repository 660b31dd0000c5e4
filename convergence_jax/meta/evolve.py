"""Meta-evolution: a population of strategy genomes evolved by meta-fitness.

:func:`make_evaluate` builds one pure function that runs every genome on every task
of every family for every seed — ``vmap`` over genomes x tasks x seeds of the inner
GA's ``lax.scan``, all families inside one program — and returns the meta-metrics.
:func:`make_meta_step` adds breeding (elitism, tournament selection, uniform gene
crossover, mutation of method genes and numbers) so that one meta-generation is
one jitted call that compiles once. :func:`meta_train` is the host-side loop; it
returns a :class:`MetaResult` with the history and the learned strategies.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from convergence_jax.meta import genome as gn
from convergence_jax.meta.genome import Genome
from convergence_jax.meta.inner import make_inner_run, strategy_ga
from convergence_jax.meta.metrics import (
    DEFAULT_WEIGHTS,
    METRIC_NAMES,
    meta_fitness,
    run_metrics,
)
from convergence_jax.meta.tasks import TaskFamily, TaskSuite, normalize

__all__ = [
    "LearnedStrategies",
    "MetaParams",
    "MetaResult",
    "load_learned_strategies",
    "make_curves",
    "make_evaluate",
    "make_meta_fitness",
    "make_meta_step",
    "meta_train",
]


@struct.dataclass
class MetaParams:
    """Every tunable number of meta-evolution (``vmap`` over it to sweep)."""

    weights: jax.Array  # [6] meta-fitness weights, METRIC_NAMES order
    threshold: jax.Array  # normalized level for sample_efficiency
    mutation_rate: jax.Array  # per-gene meta-mutation probability
    mutation_strength: jax.Array  # meta-mutation step, fraction of the gene range
    crossover_rate: jax.Array  # probability that a child genome is a crossover
    tournament_size: jax.Array  # int, meta-selection tournament


def default_meta_params(**overrides) -> MetaParams:
    f32 = jnp.float32
    params = MetaParams(
        weights=jnp.asarray(DEFAULT_WEIGHTS, f32),
        threshold=jnp.asarray(0.5, f32),
        mutation_rate=jnp.asarray(0.15, f32),
        mutation_strength=jnp.asarray(0.15, f32),
        crossover_rate=jnp.asarray(0.5, f32),
        tournament_size=jnp.asarray(3, jnp.int32),
    )
    for name, value in overrides.items():
        old = getattr(params, name)
        params = params.replace(**{name: jnp.asarray(value, old.dtype)})
    check_meta_params(params)
    return params


def check_meta_params(params: MetaParams) -> None:
    """ValueError naming the field for a bad concrete value."""
    w = np.asarray(params.weights)
    if w.shape != (len(METRIC_NAMES),) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError(
            f"weights: expected {len(METRIC_NAMES)} non-negative numbers for "
            f"{list(METRIC_NAMES)}, got {w}"
        )
    for name, lo, hi in (
        ("threshold", -1.0, 1.0),
        ("mutation_rate", 0.0, 1.0),
        ("mutation_strength", 0.0, 10.0),
        ("crossover_rate", 0.0, 1.0),
        ("tournament_size", 1, 1 << 20),
    ):
        value = np.asarray(getattr(params, name))
        if not (np.isfinite(value) and lo <= value <= hi):
            raise ValueError(f"{name}: expected a number in [{lo}, {hi}], got {value}")


def _families(tasks) -> tuple[TaskFamily, ...]:
    if isinstance(tasks, TaskSuite):
        tasks = tasks.train
    if isinstance(tasks, TaskFamily):
        tasks = (tasks,)
    tasks = tuple(tasks)
    if not tasks or not all(isinstance(f, TaskFamily) for f in tasks):
        raise ValueError(
            "tasks: expected a TaskSuite, a TaskFamily or a list of TaskFamily"
        )
    return tasks


def task_names(tasks) -> tuple[str, ...]:
    return tuple(n for f in _families(tasks) for n in f.task_names)


GENOME_AXES = ("auto", "map", "vmap")


def _genome_axis(genome_axis: str) -> str:
    if genome_axis not in GENOME_AXES:
        raise ValueError(
            f"genome_axis: expected one of {GENOME_AXES}, got {genome_axis!r}"
        )
    if genome_axis == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return genome_axis


def make_curves(
    tasks,
    *,
    max_population_size: int,
    num_generations: int,
    genome_axis: str = "auto",
):
    """``curves(key, genomes [M], num_seeds) -> (curves, spreads)``, ``[M, T, S, G]``.

    Normalized best-so-far curves and population spreads of every genome on every
    task (families concatenated in order) for ``num_seeds`` seeds (static). Every
    genome sees the same seeds (common random numbers). Pure: ``jit`` it.

    ``genome_axis`` says how the genomes are batched; both run the same runs with
    the same keys (equal up to float rounding, which a GA amplifies over
    generations):

    * ``"vmap"``: one flat ``vmap`` over (genome, task, seed) triples. Under
      ``vmap`` a ``lax.switch`` on the (batched) method genes becomes a select, so
      every run computes every operator branch; the batch is as wide as it gets,
      which is what an accelerator wants.
    * ``"map"``: ``lax.map`` over genomes, ``vmap`` over (task, seed) inside. The
      method genes are then unbatched, so each genome runs only its own operators;
      on 2 CPU cores a meta-generation took 0.71 s against 1.07 s with ``"vmap"``
      (medians of 21 alternating rounds, ``benchmarks/meta_evolution.py``).
    * ``"auto"`` (default): ``"map"`` on the CPU backend, ``"vmap"`` elsewhere.
    """
    axis = _genome_axis(genome_axis)
    families = _families(tasks)
    runs = []
    for family in families:
        sga = strategy_ga(family.template, max_population_size)
        runs.append(
            make_inner_run(sga, family.fitness, family.init_population, num_generations)
        )

    def curves(key, genomes, num_seeds):
        num_genomes = jax.tree.leaves(genomes)[0].shape[0]
        all_curves, all_spreads = [], []
        for i, (family, run) in enumerate(zip(families, runs, strict=True)):
            num_tasks = family.num_tasks
            keys = jax.random.split(jax.random.fold_in(key, i), (num_tasks, num_seeds))
            shape = (num_genomes, num_tasks, num_seeds)
            g_idx, t_idx, s_idx = (x.reshape(-1) for x in jnp.indices(shape))
            flat_tasks = jax.tree.map(lambda x, i=t_idx: x[i], family.data)
            if axis == "vmap":
                # One flat vmap over (genome, task, seed) triples: the same runs as
                # three nested vmaps, but a smaller program that compiles faster.
                flat_genomes = jax.tree.map(lambda x, i=g_idx: x[i], genomes)
                raw, spread, _ = jax.vmap(run)(
                    keys[t_idx, s_idx], flat_genomes, flat_tasks
                )
            else:
                t_run, s_run = (x.reshape(-1) for x in jnp.indices(shape[1:]))
                run_tasks = jax.tree.map(lambda x, i=t_run: x[i], family.data)
                run_keys = keys[t_run, s_run]

                def one_genome(genome, run=run, run_keys=run_keys, tasks=run_tasks):
                    raw, spread, _ = jax.vmap(run, (0, None, 0))(
                        run_keys, genome, tasks
                    )
                    return raw, spread

                raw, spread = jax.lax.map(one_genome, genomes)
                raw = raw.reshape(-1, raw.shape[-1])
                spread = spread.reshape(-1, spread.shape[-1])
            raw = normalize(family, flat_tasks, raw.T).T.reshape(*shape, -1)
            all_curves.append(raw)
            all_spreads.append(spread.reshape(*shape, -1))
        return jnp.concatenate(all_curves, 1), jnp.concatenate(all_spreads, 1)

    return curves


def make_evaluate(
    tasks,
    *,
    max_population_size: int,
    num_generations: int,
    num_seeds: int,
    genome_axis: str = "auto",
):
    """``evaluate(key, genomes [M], params) -> metrics name -> [M, T]``
    (``genome_axis``: see :func:`make_curves`)."""
    curves_fn = make_curves(
        tasks,
        max_population_size=max_population_size,
        num_generations=num_generations,
        genome_axis=genome_axis,
    )

    def evaluate(key, genomes, params: MetaParams):
        curves, spreads = curves_fn(key, genomes, num_seeds)
        n = jnp.clip(genomes.population_size, 2, max_population_size)[:, None]
        return run_metrics(curves, spreads, n, max_population_size, params.threshold)

    return evaluate


def make_meta_fitness(
    tasks,
    *,
    max_population_size: int,
    num_generations: int,
    num_seeds: int,
    params: MetaParams | None = None,
    genome_axis: str = "auto",
):
    """``fitness(key, genomes [N]) -> [N]``: the weighted-sum meta-fitness (for
    :func:`convergence_jax.meta.attribute` and other batch evaluations)."""
    params = default_meta_params() if params is None else params
    evaluate = make_evaluate(
        tasks,
        max_population_size=max_population_size,
        num_generations=num_generations,
        num_seeds=num_seeds,
        genome_axis=genome_axis,
    )

    def fitness(key, genomes):
        metrics = evaluate(key, genomes, params)
        return meta_fitness(metrics, params.weights)[0]

    return fitness


def _tournament(key, fitness, num, size):
    """``num`` winners of tournaments of ``size`` (with replacement) by fitness."""
    m = fitness.shape[0]
    max_size = m
    contestants = jax.random.randint(key, (num, max_size), 0, m)
    valid = jnp.arange(max_size)[None, :] < jnp.clip(size, 1, m)
    scores = jnp.where(valid, fitness[contestants], -jnp.inf)
    return contestants[jnp.arange(num), jnp.argmax(scores, axis=1)]


def breed(key, genomes, fitness, params: MetaParams, num_elites: int, specs):
    """Next genome population: the ``num_elites`` best unchanged (best first), the
    rest children of tournament-selected parents (gene-uniform crossover, then
    meta-mutation)."""
    m = fitness.shape[0]
    k_a, k_b, k_cross, k_mut = jax.random.split(key, 4)
    fitness = jnp.where(jnp.isnan(fitness), -jnp.inf, fitness)
    order = jnp.argsort(-fitness, stable=True)
    num_children = m - num_elites
    a = _tournament(k_a, fitness, num_children, params.tournament_size)
    b = _tournament(k_b, fitness, num_children, params.tournament_size)
    take = lambda idx: jax.tree.map(lambda x: x[idx], genomes)  # noqa: E731
    children = gn.crossover_genomes(k_cross, take(a), take(b), params.crossover_rate)
    children = gn.mutate_genomes(
        k_mut, children, params.mutation_rate, params.mutation_strength, specs
    )
    elites = take(order[:num_elites])
    return jax.tree.map(lambda e, c: jnp.concatenate([e, c]), elites, children)


def make_meta_step(
    tasks,
    *,
    max_population_size: int,
    num_generations: int,
    num_seeds: int,
    num_elites: int = 2,
    ranking: str = "weighted",
    specs=None,
    genome_axis: str = "auto",
):
    """``step(key, genomes, params) -> (next_genomes, metrics, fitness, per_task)``.

    One meta-generation: evaluate ``genomes [M]`` on every task and seed, score
    them, breed the next population. Pure; ``jax.jit`` compiles it once for all
    genome values and every :class:`MetaParams`.
    """
    if ranking not in ("weighted", "pareto"):
        raise ValueError(f"ranking: expected 'weighted' or 'pareto', got {ranking!r}")
    specs = gn.genome_specs(max_population_size) if specs is None else specs
    evaluate = make_evaluate(
        tasks,
        max_population_size=max_population_size,
        num_generations=num_generations,
        num_seeds=num_seeds,
        genome_axis=genome_axis,
    )

    def step(key, genomes, params):
        key_eval, key_breed = jax.random.split(key)
        metrics = evaluate(key_eval, genomes, params)
        fitness, per_task = meta_fitness(metrics, params.weights, ranking)
        next_genomes = breed(key_breed, genomes, fitness, params, num_elites, specs)
        return next_genomes, metrics, fitness, per_task

    return step


@dataclasses.dataclass(frozen=True)
class LearnedStrategies:
    """Exported strategies: the universal best and the best per task."""

    universal: Genome
    per_task: dict
    info: dict

    def universal_best(self) -> Genome:
        return self.universal

    def best_for_task(self, task_id: str) -> Genome:
        if task_id not in self.per_task:
            raise ValueError(
                f"task_id: unknown task {task_id!r}; known: {sorted(self.per_task)}"
            )
        return self.per_task[task_id]

    def export(self, path) -> None:
        """Write JSON; :func:`load_learned_strategies` reads it back exactly."""
        payload = {
            "format": "convergence_jax.meta.learned_strategies",
            "version": 1,
            "genome_class": type(self.universal).__name__,
            "universal_best": gn.genome_to_dict(self.universal),
            "best_for_task": {
                name: gn.genome_to_dict(g) for name, g in self.per_task.items()
            },
            "info": self.info,
        }
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def load_learned_strategies(path) -> LearnedStrategies:
    """Read a file written by :meth:`LearnedStrategies.export`."""
    try:
        payload = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON file ({err})") from None
    if payload.get("format") != "convergence_jax.meta.learned_strategies":
        raise ValueError(f"{path}: not a learned-strategies file")
    from convergence_jax.meta.learning_rules import LearningRule

    classes = {"Genome": Genome, "LearningRule": LearningRule}
    cls_name = payload.get("genome_class", "Genome")
    if cls_name not in classes:
        raise ValueError(f"{path}: unknown genome_class {cls_name!r}")
    cls = classes[cls_name]
    return LearnedStrategies(
        universal=gn.genome_from_dict(payload["universal_best"], genome_cls=cls),
        per_task={
            name: gn.genome_from_dict(g, genome_cls=cls)
            for name, g in payload["best_for_task"].items()
        },
        info=payload.get("info", {}),
    )


@dataclasses.dataclass(frozen=True)
class MetaResult:
    """What :func:`meta_train` returns.

    ``history`` holds NumPy arrays with a leading meta-generation axis:
    ``fitness [E, M]``, ``per_task [E, M, T]``, one ``[E, M]`` array per metric
    name, ``genomes`` (a :class:`Genome` batch ``[E, M]``). ``final_*`` are the
    last population re-evaluated on ``final_seeds`` fresh seeds, from which the
    learned strategies are picked.
    """

    history: dict
    task_names: tuple[str, ...]
    genomes: Genome  # final population [M]
    final_fitness: np.ndarray  # [M]
    final_per_task: np.ndarray  # [M, T]
    compile_seconds: float
    run_seconds: float
    config: dict

    def universal_best(self) -> Genome:
        """The final genome with the best re-evaluated meta-fitness."""
        return self._genome(int(np.argmax(self.final_fitness)))

    def best_for_task(self, task_id) -> Genome:
        """The final genome with the best re-evaluated meta-fitness on one task
        (a task name or an index into ``task_names``)."""
        if isinstance(task_id, str):
            if task_id not in self.task_names:
                raise ValueError(
                    f"task_id: unknown task {task_id!r}; known: {list(self.task_names)}"
                )
            task_id = self.task_names.index(task_id)
        if not 0 <= int(task_id) < len(self.task_names):
            raise ValueError(
                f"task_id: expected 0 <= id < {len(self.task_names)}, got {task_id}"
            )
        return self._genome(int(np.argmax(self.final_per_task[:, int(task_id)])))

    def _genome(self, index: int) -> Genome:
        return jax.tree.map(lambda x: x[index], self.genomes)

    def learned_strategies(self) -> LearnedStrategies:
        best = int(np.argmax(self.final_fitness))
        return LearnedStrategies(
            universal=self.universal_best(),
            per_task={n: self.best_for_task(n) for n in self.task_names},
            info={
                "meta_fitness": float(self.final_fitness[best]),
                "tasks": list(self.task_names),
                "config": self.config,
            },
        )

    def export_learned_strategies(self, path) -> None:
        self.learned_strategies().export(path)


def meta_train(
    tasks,
    key=None,
    *,
    num_genomes: int = 16,
    num_meta_generations: int = 20,
    max_population_size: int = 64,
    min_population_size: int = 8,
    num_generations: int = 100,
    num_seeds: int = 2,
    num_elites: int = 2,
    ranking: str = "weighted",
    params: MetaParams | None = None,
    initial_genomes: Genome | None = None,
    final_rounds: int = 4,
    callback: Callable[[int, dict], Any] | None = None,
    genome_axis: str = "auto",
) -> MetaResult:
    """Meta-evolve strategy genomes on ``tasks`` (a suite's ``train`` families).

    The initial population is ``initial_genomes`` or the hand-designed default
    genome plus random genomes. Each meta-generation is one call of the jitted
    :func:`make_meta_step` (it compiles once). The final population is then
    re-evaluated ``final_rounds`` times on fresh seeds (same compiled step) and the
    learned strategies are picked from that average. ``callback(generation,
    record)`` is called on the host after each meta-generation. ``genome_axis``
    chooses how genomes are batched (:func:`make_curves`); it changes speed, not
    results.
    """
    families = _families(tasks)
    for name, value, lo in (
        ("num_genomes", num_genomes, 2),
        ("num_meta_generations", num_meta_generations, 1),
        ("max_population_size", max_population_size, 2),
        ("num_generations", num_generations, 1),
        ("num_seeds", num_seeds, 1),
        ("final_rounds", final_rounds, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {value!r}")
    if not 0 <= num_elites < num_genomes:
        raise ValueError(
            f"num_elites: expected 0 <= num_elites < num_genomes ({num_genomes}), "
            f"got {num_elites}"
        )
    specs = gn.genome_specs(max_population_size, min_population_size)
    params = default_meta_params() if params is None else params
    check_meta_params(params)
    key = jax.random.key(0) if key is None else key
    key_init, key_loop = jax.random.split(key)
    if initial_genomes is None:
        default = gn.default_genome(max_population_size)
        rand = gn.random_genomes(key_init, num_genomes - 1, specs)
        initial_genomes = jax.tree.map(
            lambda d, r: jnp.concatenate([d[None], r]), default, rand
        )
    gn.check_genome(initial_genomes, specs)
    if jax.tree.leaves(initial_genomes)[0].shape != (num_genomes,):
        raise ValueError(
            f"initial_genomes: expected a batch of {num_genomes} genomes, got shape "
            f"{jax.tree.leaves(initial_genomes)[0].shape}"
        )
    step = make_meta_step(
        families,
        max_population_size=max_population_size,
        num_generations=num_generations,
        num_seeds=num_seeds,
        num_elites=num_elites,
        ranking=ranking,
        specs=specs,
        genome_axis=genome_axis,
    )
    config = {
        "num_genomes": num_genomes,
        "num_meta_generations": num_meta_generations,
        "max_population_size": max_population_size,
        "min_population_size": min_population_size,
        "num_generations": num_generations,
        "num_seeds": num_seeds,
        "num_elites": num_elites,
        "ranking": ranking,
        "weights": [float(w) for w in np.asarray(params.weights)],
        "threshold": float(params.threshold),
    }
    return run_meta_evolution(
        step,
        initial_genomes,
        params,
        key_loop,
        num_meta_generations=num_meta_generations,
        final_rounds=final_rounds,
        callback=callback,
        task_names=task_names(families),
        config=config,
    )


def run_meta_evolution(
    step,
    initial_genomes,
    params,
    key,
    *,
    num_meta_generations: int,
    final_rounds: int,
    callback,
    task_names: tuple[str, ...],
    config: dict,
) -> MetaResult:
    """The host loop shared by :func:`meta_train` and the learning-rule version:
    jit ``step`` once, run the meta-generations, re-score the final population."""
    step = jax.jit(step)
    keys = jax.random.split(key, num_meta_generations + max(final_rounds, 1))
    start = time.perf_counter()
    compiled = step.lower(keys[0], initial_genomes, params).compile()
    compile_seconds = time.perf_counter() - start
    genomes = initial_genomes
    records = []
    start = time.perf_counter()
    for gen in range(num_meta_generations):
        next_genomes, metrics, fitness, per_task = compiled(keys[gen], genomes, params)
        record = {
            "genomes": jax.device_get(genomes),
            "fitness": np.asarray(fitness),
            "per_task": np.asarray(per_task),
            **{k: np.asarray(jnp.mean(v, -1)) for k, v in metrics.items()},
        }
        records.append(record)
        if callback is not None:
            callback(gen, record)
        genomes = next_genomes
    jax.block_until_ready(genomes)
    run_seconds = time.perf_counter() - start

    # Re-score the final population on fresh seeds; breeding output is discarded.
    totals, task_totals = [], []
    for r in range(final_rounds):
        _, _, fitness, per_task = compiled(
            keys[num_meta_generations + r], genomes, params
        )
        totals.append(np.asarray(fitness))
        task_totals.append(np.asarray(per_task))
    if final_rounds == 0:
        _, _, fitness, per_task = compiled(keys[-1], genomes, params)
        totals, task_totals = [np.asarray(fitness)], [np.asarray(per_task)]
    history = {
        name: np.stack([r[name] for r in records])
        for name in records[0]
        if name != "genomes"
    }
    history["genomes"] = jax.tree.map(
        lambda *xs: np.stack(xs), *[r["genomes"] for r in records]
    )
    return MetaResult(
        history=history,
        task_names=tuple(task_names),
        genomes=jax.device_get(genomes),
        final_fitness=np.mean(totals, axis=0),
        final_per_task=np.mean(task_totals, axis=0),
        compile_seconds=compile_seconds,
        run_seconds=run_seconds,
        config=config,
    )
