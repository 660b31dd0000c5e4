"""Crossover and mutation operators: exact properties and reference statistics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import evolution
from convergence_jax.evolution import crossover as C
from convergence_jax.evolution import mutation as M

P = 64


def setup(solution, **kw):
    ga = evolution.ga(solution, P)
    prm = ga.default_params.replace(**kw)
    return ga, prm


def two_populations(ga, prm, seed=0):
    a = ga.init(jax.random.key(seed), prm).population
    b = ga.init(jax.random.key(seed + 1), prm).population
    return a, b


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_valid(space, pop):
    """Every gene within bounds, ints integral, categoricals valid indices."""
    for name, spec in space.gene_specs().items():
        x = np.asarray(pop[name])
        assert x.shape[0] == P
        assert np.all(np.isfinite(x))
        assert np.all((x >= spec.low) & (x <= spec.high)), name
        if spec.kind != "float":
            assert x.dtype == np.int32, name
        if spec.kind == "categorical":
            assert set(np.unique(x)) <= set(range(spec.num_choices))


# --------------------------------------------------------------------- crossover


def test_uniform_takes_each_gene_from_a_parent(net):
    ga, prm = setup(net)
    a, b = two_populations(ga, prm)
    child = C.uniform(jax.random.key(2), a, b, prm, ga.genes)
    from_b = []
    for x, y, c in zip(leaves(a), leaves(b), leaves(child), strict=True):
        assert np.all((c == x) | (c == y))
        from_b.append((c == y).ravel())
    frac = np.concatenate(from_b).mean()
    assert abs(frac - 0.5) < 0.05


def test_one_point_is_a_prefix_suffix_split_over_all_leaves(space, net):
    """Flattened in gene order, each child is a's genes up to a cut, then b's."""
    for solution in (space, net):
        ga, prm = setup(solution)
        genes = ga.genes
        a, b = two_populations(ga, prm)
        # Make every gene differ between the parents so the source is identifiable.
        b = jax.tree.map(lambda x, y: jnp.where(x == y, x + 1, y), a, b)
        child = C.one_point(jax.random.key(3), a, b, prm, genes)
        # Rebuild each child's "came from a" flags in gene order (offsets).
        flags = np.zeros((P, genes.num_genes), bool)
        for gene, x, c in zip(
            genes.leaves, leaves(a), genes.flatten(child), strict=True
        ):
            c = np.asarray(c).reshape(P, -1)
            flags[:, gene.offset : gene.offset + gene.size] = c == x.reshape(P, -1)
        cuts = flags.sum(1)
        assert np.all(flags == (np.arange(genes.num_genes)[None] < cuts[:, None]))
        assert np.all((cuts >= 1) & (cuts <= genes.num_genes - 1))
        assert len(np.unique(cuts)) > 1


def test_one_point_follows_declared_space_order(space):
    """The gene order of a space is space.names, not the dict's sorted order."""
    ga, _ = setup(space)
    offsets = {g.name: g.offset for g in ga.genes.leaves}
    assert offsets == {name: i for i, name in enumerate(space.names)}


def test_average_is_the_exact_mean(net, space):
    ga, prm = setup(net)
    a, b = two_populations(ga, prm)
    child = C.average(jax.random.key(4), a, b, prm, ga.genes)
    for x, y, c in zip(leaves(a), leaves(b), leaves(child), strict=True):
        np.testing.assert_array_equal(c, (x + y) / 2)

    ga, prm = setup(space)
    a, b = two_populations(ga, prm)
    child = C.average(jax.random.key(4), a, b, prm, ga.genes)
    np.testing.assert_allclose(
        child["temperature"], (a["temperature"] + b["temperature"]) / 2, rtol=1e-6
    )
    np.testing.assert_allclose(child["lr"], np.sqrt(a["lr"] * b["lr"]), rtol=1e-5)
    np.testing.assert_array_equal(
        child["max_tokens"],
        np.round((np.asarray(a["max_tokens"]) + np.asarray(b["max_tokens"])) / 2),
    )
    m = np.asarray(child["model"])
    assert np.all((m == a["model"]) | (m == b["model"]))
    assert_valid(space, child)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_blend_stays_in_the_widened_interval(net, space, alpha):
    ga, prm = setup(net, blend_alpha=alpha)
    a, b = two_populations(ga, prm)
    child = C.blend(jax.random.key(5), a, b, prm, ga.genes)
    for x, y, c in zip(leaves(a), leaves(b), leaves(child), strict=True):
        lo, hi = np.minimum(x, y), np.maximum(x, y)
        d = hi - lo
        assert np.all(c >= lo - alpha * d - 1e-6) and np.all(c <= hi + alpha * d + 1e-6)
        if alpha > 0:  # some children land outside [lo, hi]
            assert np.mean((c < lo) | (c > hi)) > 0.1
    ga, prm = setup(space, blend_alpha=alpha)
    a, b = two_populations(ga, prm)
    child = C.blend(jax.random.key(5), a, b, prm, ga.genes)
    assert_valid(space, child)
    m = np.asarray(child["model"])
    assert np.all((m == a["model"]) | (m == b["model"]))


def test_apply_crossover_rate(net):
    ga, prm = setup(net)
    a, b = two_populations(ga, prm)
    for rate, expect in [(0.0, 0.0), (1.0, 1.0)]:
        p = prm.replace(crossover_rate=rate)
        child, crossed = C.apply_crossover(
            C.average, jax.random.key(0), a, b, p, ga.genes
        )
        assert float(crossed.mean()) == expect
        if rate == 0.0:
            for x, c in zip(leaves(a), leaves(child), strict=True):
                np.testing.assert_array_equal(x, c)
    p = prm.replace(crossover_rate=0.3)
    _, crossed = C.apply_crossover(C.average, jax.random.key(0), a, b, p, ga.genes)
    assert 0.1 < float(crossed.mean()) < 0.5


# ---------------------------------------------------------------------- mutation


def mutate(name, solution, key=0, **kw):
    ga, prm = setup(solution, **kw)
    pop = ga.init(jax.random.key(10), prm).population
    sigmas = jnp.full((P,), prm.mutation_std)
    out, steps = evolution.MUTATION[name](
        jax.random.key(key), pop, sigmas, prm.mutation_std, prm, ga.genes
    )
    return ga, prm, pop, out, steps


@pytest.mark.parametrize("name", sorted(evolution.MUTATION))
def test_mutation_keeps_space_genes_valid(space, name):
    """Huge steps and high rates still give in-bound ints and valid choices."""
    ga, prm, pop, out, _ = mutate(
        name, space, mutation_rate=0.9, mutation_std=5.0, dropout_rate=0.3
    )
    assert_valid(space, out)
    for leaf_in, leaf_out in zip(leaves(pop), leaves(out), strict=True):
        assert leaf_in.dtype == leaf_out.dtype
        assert np.mean(leaf_in != leaf_out) > 0.3


@pytest.mark.parametrize("name", sorted(evolution.MUTATION))
def test_zero_rate_changes_nothing(net, space, name):
    for solution in (net, space):
        _, _, pop, out, _ = mutate(name, solution, mutation_rate=0.0, dropout_rate=0.0)
        for x, y in zip(leaves(pop), leaves(out), strict=True):
            np.testing.assert_array_equal(x, y)


def test_gaussian_step_statistics_unbounded_and_bounded(space):
    solution = jnp.zeros((256,))
    _, _, pop, out, steps = mutate(
        "gaussian", solution, mutation_rate=0.25, mutation_std=0.3
    )
    delta = np.asarray(out - pop)
    mutated = delta != 0
    assert abs(mutated.mean() - 0.25) < 0.01
    assert abs(delta[mutated].std() / 0.3 - 1) < 0.03
    assert abs(delta[mutated].mean()) < 0.01
    np.testing.assert_allclose(steps, 0.3)

    # bounded float: the step is relative to high - low; log floats in log space
    _, _, pop, out, _ = mutate(
        "gaussian", space, key=3, mutation_rate=1.0, mutation_std=0.01
    )
    d_temp = np.asarray(out["temperature"] - pop["temperature"])
    inside = (np.asarray(out["temperature"]) > 0) & (np.asarray(out["temperature"]) < 2)
    assert abs(d_temp[inside].std() / (0.01 * 2.0) - 1) < 0.25
    d_lr = np.log(np.asarray(out["lr"])) - np.log(np.asarray(pop["lr"]))
    assert abs(d_lr.std() / (0.01 * math.log(1e4)) - 1) < 0.25


def test_categorical_resampling_rate(space):
    ga, prm = setup(space)
    changed = []
    for k in range(20):
        _, _, pop, out, _ = mutate("gaussian", space, key=k, mutation_rate=0.3)
        changed.append(np.asarray(out["model"] != pop["model"]))
    # resampled with p = 0.3, lands on a new value with p = 2/3
    assert abs(np.mean(changed) - 0.3 * 2 / 3) < 0.03


def test_self_adaptive_sigma_inheritance_and_use():
    solution = jnp.zeros((400,))
    ga, prm = setup(solution, mutation_rate=1.0)
    pop = jnp.zeros((P, 400))
    parent_sigmas = jnp.geomspace(0.01, 1.0, P)
    # tau = 0: the child keeps its parent's sigma exactly and steps with it
    out, sig = M.self_adaptive(
        jax.random.key(0), pop, parent_sigmas, 0.5, prm.replace(tau=0.0), ga.genes
    )
    np.testing.assert_array_equal(sig, parent_sigmas)
    row_std = np.asarray(out).std(axis=1)
    np.testing.assert_allclose(row_std / np.asarray(parent_sigmas), 1.0, atol=0.12)
    # tau > 0: log-normal perturbation log(sig'/sig) ~ N(0, tau^2)
    many = jnp.full((4096,), 0.1)
    _, sig = M.self_adaptive(
        jax.random.key(1),
        jnp.zeros((4096, 400)),
        many,
        0.5,
        prm.replace(tau=0.2),
        ga.genes,
    )
    log_ratio = np.log(np.asarray(sig) / 0.1)
    assert abs(log_ratio.std() - 0.2) < 0.01 and abs(log_ratio.mean()) < 0.01
    # clipped into [min_sigma, max_sigma]
    _, sig = M.self_adaptive(
        jax.random.key(1),
        pop,
        parent_sigmas,
        0.5,
        prm.replace(tau=5.0, min_sigma=0.05, max_sigma=0.5),
        ga.genes,
    )
    assert float(sig.min()) >= 0.05 and float(sig.max()) <= 0.5


def test_one_fifth_uses_the_global_sigma():
    solution = jnp.zeros((400,))
    ga, prm = setup(solution, mutation_rate=1.0)
    pop = jnp.zeros((P, 400))
    out, steps = M.one_fifth(
        jax.random.key(0), pop, jnp.full((P,), 9.0), 0.25, prm, ga.genes
    )
    np.testing.assert_allclose(steps, 0.25)
    assert abs(float(np.asarray(out).std()) / 0.25 - 1) < 0.02


def test_dropout_resets_to_zero_or_the_bound(space):
    solution = jnp.zeros((100,))
    ga, prm = setup(solution, mutation_rate=0.0, dropout_rate=1.0)
    pop = jnp.full((P, 100), 3.0)
    out, _ = M.dropout(jax.random.key(0), pop, None, None, prm, ga.genes)
    np.testing.assert_array_equal(out, 0.0)
    prm = prm.replace(dropout_rate=0.2)
    out, _ = M.dropout(jax.random.key(0), pop, None, None, prm, ga.genes)
    assert abs(float(jnp.mean(out == 0.0)) - 0.2) < 0.02
    _, _, pop, out, _ = mutate("dropout", space, mutation_rate=0.0, dropout_rate=1.0)
    np.testing.assert_array_equal(out["temperature"], 0.0)
    np.testing.assert_allclose(out["lr"], 1e-5, rtol=1e-6)  # 0 clipped into bounds
    np.testing.assert_array_equal(out["max_tokens"], 64)
    np.testing.assert_array_equal(out["model"], pop["model"])  # not numeric


# ------------------------------------------------------- transformations


@pytest.mark.parametrize("family", ["crossover", "mutation"])
def test_operators_jit_vmap_no_recompile(space, family):
    """Each operator jitted and vmapped over keys and Params (lax.scan: test_ga)."""
    ga, prm = setup(space)
    a, b = two_populations(ga, prm)
    registry = evolution.CROSSOVER if family == "crossover" else evolution.MUTATION
    sigmas = jnp.full((P,), 0.1)
    keys = jax.random.split(jax.random.key(2), 2)
    batch = jax.tree.map(lambda x: jnp.stack([x, x]), prm)
    batch = batch.replace(mutation_std=jnp.array([0.01, 1.0]))
    for name, fn in registry.items():
        if family == "crossover":
            op = lambda key, p, fn=fn: fn(key, a, b, p, ga.genes)  # noqa: E731
        else:
            op = lambda key, p, fn=fn: fn(key, a, sigmas, 0.1, p, ga.genes)[0]  # noqa: E731
        f = jax.jit(jax.vmap(op))
        out = f(keys, batch)
        assert jax.tree.leaves(out)[0].shape[:2] == (2, P)
        for row in range(2):
            assert_valid(space, jax.tree.map(lambda x, row=row: x[row], out))
        f(keys, batch.replace(mutation_rate=jnp.array([0.5, 0.9])))
        assert f._cache_size() == 1, name
