"""The strategy GA: every method gene under jit and vmap, masking equals the
ordinary GA at size n, and the new operators' laws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import evolution
from convergence_jax.evolution import _genes as G
from convergence_jax.evolution.selection import tournament_probabilities
from convergence_jax.meta import genome as gn
from convergence_jax.meta import operators as ops
from convergence_jax.meta.inner import strategy_ga

TEMPLATE = {"dense": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros((4,))}}
PMAX, GENS = 16, 12


def fitness(pop):
    return -jnp.sum((pop["dense"]["kernel"] - 0.5) ** 2, (1, 2)) - jnp.sum(
        pop["dense"]["bias"] ** 2, 1
    )


def every_method_genomes():
    """Five genomes that together use every selection, mutation and crossover
    method, with a mix of sizes and diversity genes."""
    out = []
    for i in range(5):
        out.append(
            gn.default_genome(
                PMAX,
                selection=i,
                mutation=i,
                crossover=i % 4,
                population_size=8 + 2 * i,
                elitism_ratio=0.1 * i,
                tournament_size=2 + i,
                mutation_rate=0.5,
                fitness_sharing=i % 2,
                diversity_bonus=0.2 * (i % 3),
                age_penalty=0.05 * (i == 3),
                diversity_threshold=0.3,
                niche_capacity=2,
            )
        )
    return gn.stack_genomes(out)


@pytest.fixture(scope="module")
def runs():
    sga = strategy_ga(TEMPLATE, PMAX)
    run = evolution.make_run(sga, fitness, GENS)
    genomes = every_method_genomes()
    key = jax.random.key(0)
    batched = jax.jit(jax.vmap(run, (None, 0)))(key, genomes)
    single = jax.jit(run)
    singles = [single(key, g) for g in gn.unstack_genomes(genomes)]
    return genomes, batched, singles, single


def test_every_method_gene_runs_under_jit_and_vmap_alike(runs):
    genomes, (state, metrics), singles, _ = runs
    assert metrics["best_fitness"].shape == (5, GENS)
    for i, (s, m) in enumerate(singles):
        # lax.switch on one genome == the select that vmap turns it into.
        np.testing.assert_allclose(
            metrics["best_fitness"][i], m["best_fitness"], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            state.population["dense"]["kernel"][i],
            s.population["dense"]["kernel"],
            rtol=1e-4,
            atol=1e-5,
        )
    best = np.asarray(metrics["best_fitness"])
    assert np.all(np.isfinite(best)) and np.all(np.diff(best, axis=1) >= 0)
    assert np.all(best[:, -1] > best[:, 0]), "every strategy improves"
    n = np.asarray(genomes.population_size)
    np.testing.assert_array_equal(metrics["num_evaluations"][:, 0], n)


def test_no_recompile_when_only_genome_numbers_change(runs):
    *_, single = runs
    before = single._cache_size()
    g = gn.default_genome(PMAX, selection="roulette", population_size=9)
    single(jax.random.key(1), g)
    assert single._cache_size() == before


@pytest.mark.parametrize(
    "selection, mutation, crossover",
    [
        ("tournament", "gaussian", "uniform"),
        ("roulette", "self_adaptive", "average"),
        ("rank", "dropout", "uniform"),
        ("truncation", "gaussian", "average"),
    ],
)
def test_masked_population_of_size_n_equals_the_ga_built_at_n(
    runs, selection, mutation, crossover
):
    *_, single = runs
    n = 11
    genome = gn.default_genome(
        PMAX,
        selection=selection,
        mutation=mutation,
        crossover=crossover,
        population_size=n,
        elitism_ratio=0.2,
        tournament_size=4,
        mutation_rate=0.3,
    )
    ga, params = gn.to_evolution_config(genome, num_genes=16).build(TEMPLATE)
    assert isinstance(ga, evolution.GA) and ga.population_size == n
    key = jax.random.key(7)
    ref_state, ref = jax.jit(evolution.make_run(ga, fitness, GENS))(key, params)
    state, got = single(key, genome)
    for name in ("best_fitness", "mean_fitness", "success_rate"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-6, err_msg=name)
    for a, b in zip(
        jax.tree.leaves(ref_state.population),
        jax.tree.leaves(state.population),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b[:n])


@pytest.mark.parametrize("n", [1, 5, 8, 13])
def test_masked_bits_are_the_ordinary_words_of_size_n(n):
    key = jax.random.key(3)
    got = ops.masked_uniform_bits(key, (13, 3, 5), n)
    np.testing.assert_array_equal(got[:n], G.uniform_bits(key, (n, 3, 5)))


def test_masked_tournament_law_is_the_law_at_size_n():
    for n in (2, 5, 9):
        probs = ops.tournament_probabilities(12, n, 3)
        np.testing.assert_allclose(probs[:n], tournament_probabilities(n, 3), 1e-6)
        assert float(jnp.sum(probs[n:])) == 0.0


def test_inactive_rows_are_never_parents():
    score = jnp.arange(10.0)[::-1]  # the best rows are the inactive ones
    score = jnp.where(jnp.arange(10) < 6, -score, jnp.inf)
    params = type("P", (), {"tournament_size": 10, "truncation_ratio": 0.5,
                            "rank_pressure": 2.0, "diversity_threshold": 0.1,
                            "niche_capacity": 1})()  # fmt: skip
    raw = jnp.where(jnp.arange(10) < 6, score, -jnp.inf)
    order = jnp.argsort(-raw, stable=True)
    dist = jnp.where(jnp.eye(10, dtype=bool), 0.0, 1.0)
    for name, fn in ops.SELECTION.items():
        idx = jax.jit(fn, static_argnums=4)(
            jax.random.key(0), raw, order, 6, params, dist
        )
        assert idx.shape == (20,) and int(idx.max()) < 6, name


def test_clearing_keeps_the_best_of_each_niche():
    # Two niches: rows 0-4 near 0 (better), rows 5-9 near 10 (worse); row 9 is
    # inactive.
    x = jnp.concatenate([jnp.zeros(5), jnp.full(5, 10.0)])[:, None]
    x = x + 0.01 * jnp.arange(10.0)[:, None]
    score = -jnp.abs(x[:, 0] - 0.02) - 0.1 * (x[:, 0] > 5)
    from convergence_jax.meta.inner import rms_distances

    dist = rms_distances(x, jnp.arange(10) < 9)
    for capacity, kept in ((1, {2, 5}), (2, {1, 2, 3, 5, 6})):
        cleared = jax.jit(ops.clear_niches)(score, 9, dist, 1.0, capacity)
        got = set(np.flatnonzero(np.asarray(cleared) > ops.CLEARED).tolist()) - {9}
        assert got == kept


def test_new_operators_laws():
    genes = G.make_genes(TEMPLATE)
    key = jax.random.key(4)
    pop = jax.tree.map(lambda x: jax.random.normal(key, (6, *x.shape)), TEMPLATE)
    other = jax.tree.map(lambda x: x + 1.0, pop)
    params = gn.ga_params_for(gn.default_genome(8, mutation_rate=1.0), 16)
    steps = jnp.full((6,), 0.1)
    # SVD: singular vectors kept, singular values moved.
    new, _ = ops.svd_mutation(key, pop, steps, 0.1, params, genes, 6)
    w, w2 = pop["dense"]["kernel"], new["dense"]["kernel"]
    u, s, vt = jnp.linalg.svd(w, full_matrices=False)
    inner = jnp.einsum("pki,pkl,pjl->pij", u, w2, vt)
    off = inner - jax.vmap(jnp.diag)(jax.vmap(jnp.diag)(inner))
    assert float(jnp.max(jnp.abs(off))) < 1e-4
    assert float(jnp.max(jnp.abs(jax.vmap(jnp.diag)(inner) - s))) > 1e-3
    # Layer-wise: exactly one leaf changes per child.
    new, _ = ops.layerwise(key, pop, steps, 0.1, params, genes, 6)
    changed = jnp.stack(
        [jnp.any(a != b, axis=tuple(range(1, a.ndim)))
         for a, b in zip(jax.tree.leaves(pop), jax.tree.leaves(new), strict=True)]
    )  # fmt: skip
    np.testing.assert_array_equal(changed.sum(0), 1)
    # Layer swap: each leaf is one parent's; weighted merge with w = 1 is a.
    child = ops.layer_swap(key, pop, other, params, genes, None, 6)
    for a, b, c in zip(*(jax.tree.leaves(t) for t in (pop, other, child)), strict=True):
        same_a = jnp.all(c == a, axis=tuple(range(1, a.ndim)))
        same_b = jnp.all(c == b, axis=tuple(range(1, a.ndim)))
        assert bool(jnp.all(same_a | same_b))
    merged = ops.weighted_merge(key, pop, other, params, genes, jnp.ones(6), 6)
    np.testing.assert_allclose(merged["dense"]["bias"], pop["dense"]["bias"])
    half = ops.weighted_merge(key, pop, other, params, genes, jnp.full(6, 0.5), 6)
    np.testing.assert_allclose(
        half["dense"]["bias"], pop["dense"]["bias"] + 0.5, atol=1e-6
    )


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="max_population_size"):
        strategy_ga(TEMPLATE, 1)
    sga = strategy_ga(TEMPLATE, 8)
    with pytest.raises(ValueError, match="genome.population_size"):
        sga.init(jax.random.key(0), gn.default_genome(16))
    with pytest.raises(ValueError, match="params: expected a meta.Genome"):
        sga.init(jax.random.key(0), evolution.ga(TEMPLATE, 8).default_params)
