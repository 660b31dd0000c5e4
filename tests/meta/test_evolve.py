"""meta_train: one compile, history, learned strategies, export/load, improvement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import meta
from convergence_jax.meta import genome as gn

P, GENS, M = 8, 12, 6


@pytest.fixture(scope="module")
def family():
    return meta.bbob_family(("sphere", "ellipsoid"), 3, instance=5, reference_samples=8)


@pytest.fixture(scope="module")
def trained(family):
    # Start from genomes that barely mutate (strength 1e-3): meta-evolution must
    # find larger steps to make progress within GENS generations.
    specs = gn.genome_specs(P)
    start = gn.random_genomes(jax.random.key(1), M, specs).replace(
        mutation_strength=jnp.full((M,), 1e-3), mutation="gaussian"
    )
    start = start.replace(mutation=jnp.zeros((M,), jnp.int32))
    calls = []
    result = meta.meta_train(
        family,
        jax.random.key(0),
        num_genomes=M,
        num_meta_generations=8,
        max_population_size=P,
        num_generations=GENS,
        num_seeds=4,
        initial_genomes=start,
        params=meta.default_meta_params(mutation_rate=0.4, mutation_strength=0.3),
        final_rounds=2,
        callback=lambda g, r: calls.append(g),
    )
    return result, calls


def test_history_and_learned_strategies(trained, family):
    result, calls = trained
    assert calls == list(range(8))
    h = result.history
    assert h["fitness"].shape == (8, M) and h["per_task"].shape == (8, M, 2)
    for name in meta.METRIC_NAMES:
        assert h[name].shape == (8, M), name
    assert h["genomes"].mutation_strength.shape == (8, M)
    assert result.task_names == family.task_names
    best = result.universal_best()
    assert gn.genome_to_dict(best) == gn.genome_to_dict(
        jax.tree.map(lambda x: x[int(np.argmax(result.final_fitness))], result.genomes)
    )
    by_name = result.best_for_task(family.task_names[1])
    by_index = result.best_for_task(1)
    assert gn.genome_to_dict(by_name) == gn.genome_to_dict(by_index)
    with pytest.raises(ValueError, match="task_id: unknown task 'nope'"):
        result.best_for_task("nope")


def test_meta_evolution_improves_on_a_bad_start(trained):
    result, _ = trained
    fitness = result.history["fitness"]
    assert fitness[-3:].max(1).mean() > fitness[0].max() + 0.02
    # The learned step sizes moved far away from 1e-3.
    assert float(result.universal_best().mutation_strength) > 1e-2


def test_export_and_load_are_exact(trained, tmp_path):
    result, _ = trained
    path = tmp_path / "learned.json"
    result.export_learned_strategies(path)
    loaded = meta.load_learned_strategies(path)
    for a, b in zip(
        jax.tree.leaves(result.universal_best()),
        jax.tree.leaves(loaded.universal_best()),
        strict=True,
    ):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    name = result.task_names[0]
    assert gn.genome_to_dict(loaded.best_for_task(name)) == gn.genome_to_dict(
        result.best_for_task(name)
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a learned-strategies file"):
        meta.load_learned_strategies(bad)


def test_elites_survive_unchanged(trained):
    result, _ = trained
    h = result.history
    for e in range(len(h["fitness"]) - 1):
        best = int(np.argmax(h["fitness"][e]))
        for name in ("mutation_strength", "population_size", "selection"):
            values = getattr(h["genomes"], name)
            assert values[e + 1, 0] == values[e, best], (e, name)
    # Re-scored final population: one value per genome and task.
    assert result.final_fitness.shape == (M,)
    assert result.final_per_task.shape == (M, 2)


def test_bad_arguments_fail_clearly(family):
    with pytest.raises(ValueError, match="num_elites"):
        meta.meta_train(family, num_genomes=4, num_elites=4)
    with pytest.raises(ValueError, match="tasks: expected a TaskSuite"):
        meta.meta_train([1, 2])
    with pytest.raises(ValueError, match="ranking"):
        meta.make_meta_step(family, max_population_size=P, num_generations=2,
                            num_seeds=1, ranking="lexicographic")  # fmt: skip
    with pytest.raises(ValueError, match="weights: expected 6 non-negative"):
        meta.default_meta_params(weights=(1.0, -1.0, 0, 0, 0, 0))


def test_genome_axes_run_the_same_runs(family):
    """``lax.map`` over genomes (each runs only its own operator branches) and one
    flat ``vmap`` (every branch, selected) give the same curves; a GA amplifies
    float rounding over generations, so this compares a few generations."""
    genomes = gn.random_genomes(jax.random.key(2), 5, gn.genome_specs(P))
    out = {}
    for axis in ("map", "vmap"):
        curves = meta.make_curves(
            family, max_population_size=P, num_generations=3, genome_axis=axis
        )
        out[axis] = jax.jit(curves, static_argnums=2)(jax.random.key(3), genomes, 2)
    for a, b in zip(out["map"], out["vmap"], strict=True):
        assert a.shape == (5, 2, 2, 3)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="genome_axis: expected one of"):
        meta.make_curves(family, max_population_size=P, num_generations=3,
                         genome_axis="pmap")  # fmt: skip
