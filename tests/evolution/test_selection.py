"""Selection operators: exact probabilities vs hand-computed and brute-force laws."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import evolution
from convergence_jax.evolution import selection as S

P = 6


def params(**kw):
    ga = evolution.ga(jnp.zeros(2), P, max_tournament_size=P)
    return ga.default_params.replace(**{k: jnp.asarray(v) for k, v in kw.items()})


def frequencies(fn, fitness, prm, num=200_000, seed=0):
    idx = jax.jit(fn, static_argnums=2)(jax.random.key(seed), fitness, num, prm)
    return np.bincount(np.asarray(idx), minlength=fitness.shape[0]) / num


def test_roulette_probabilities_hand_computed_with_negative_fitness():
    fitness = jnp.array([-2.0, 0.0, 1.0, 3.0, jnp.nan, -2.0])
    # w = f - min f = [0, 2, 3, 5, (NaN) 0, 0], sum 10
    expected = np.array([0.0, 0.2, 0.3, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(S.roulette_probabilities(fitness), expected, atol=1e-7)
    freq = frequencies(S.roulette, fitness, params())
    np.testing.assert_allclose(freq, expected, atol=0.005)


def test_roulette_equal_or_failed_fitness_is_uniform():
    np.testing.assert_allclose(S.roulette_probabilities(jnp.full(4, 7.0)), 0.25)
    np.testing.assert_allclose(
        S.roulette_probabilities(jnp.array([jnp.nan, 1.0, jnp.nan, 1.0])),
        [0.0, 0.5, 0.0, 0.5],
    )
    np.testing.assert_allclose(S.roulette_probabilities(jnp.full(4, jnp.nan)), 0.25)


def test_roulette_when_minimizing_weights_max_minus_f():
    """With maximize=False the GA selects on -f: weights are max f - f_i."""
    ga = evolution.ga(jnp.zeros(1), 4, selection="roulette", maximize=False)
    prm = ga.default_params.replace(num_elites=jnp.int32(0), crossover_rate=0.0)
    prm = prm.replace(mutation_rate=jnp.float32(0.0))
    pop = jnp.arange(4.0)[:, None]
    state = ga.init(jax.random.key(0), prm, population=pop)
    fitness = jnp.array([1.0, 2.0, 4.0, -1.0])  # weights 3, 2, 0, 5 over 10
    state, _ = ga.tell(jax.random.key(1), pop, fitness, state, prm)
    keys = jax.random.split(jax.random.key(2), 4000)
    asked = jax.jit(jax.vmap(lambda k: ga.ask(k, state, prm)[1].parent_idx))(keys)
    freq = np.bincount(np.asarray(asked).ravel(), minlength=4) / asked.size
    np.testing.assert_allclose(freq, [0.3, 0.2, 0.0, 0.5], atol=0.01)


def test_rank_probabilities_hand_computed():
    # P = 4, s = 1.5: p_i = (2 - s)/4 + 2 i (s - 1)/(4 * 3), i = 0 worst .. 3 best
    probs = S.rank_probabilities(4, 1.5)
    np.testing.assert_allclose(probs, [0.375, 7 / 24, 5 / 24, 0.125], atol=1e-6)
    np.testing.assert_allclose(S.rank_probabilities(5, 1.0), 0.2, atol=1e-7)
    np.testing.assert_allclose(S.rank_probabilities(3, 2.0), [2 / 3, 1 / 3, 0.0])
    fitness = jnp.array([0.5, 3.0, -1.0, 2.0])  # ranks best first: 1, 3, 0, 2
    freq = frequencies(S.rank, fitness, params(rank_pressure=1.5))
    np.testing.assert_allclose(freq, [5 / 24, 0.375, 0.125, 7 / 24], atol=0.005)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_tournament_matches_brute_force_enumeration(k):
    """Exact rank law of a tournament of k distinct contestants, by enumeration."""
    fitness = jnp.array([0.3, -1.0, 2.0, 5.0, 0.0, 1.0])
    f = np.asarray(fitness)
    expected = np.zeros(P)
    subsets = list(itertools.combinations(range(P), k))
    for subset in subsets:
        expected[max(subset, key=lambda i: f[i])] += 1 / len(subsets)
    order = np.argsort(-f)
    probs = np.asarray(S.tournament_probabilities(P, k))
    np.testing.assert_allclose(probs[np.argsort(order)], expected, atol=1e-6)
    freq = frequencies(S.tournament, fitness, params(tournament_size=k))
    np.testing.assert_allclose(freq, expected, atol=0.005)


def test_tournament_of_whole_population_always_picks_best():
    fitness = jnp.array([0.3, -1.0, 2.0, 5.0, jnp.nan, 1.0])
    idx = S.tournament(jax.random.key(3), fitness, 500, params(tournament_size=P))
    assert np.all(np.asarray(idx) == 3)


def test_truncation_support_is_the_best_fraction():
    fitness = jnp.array([0.3, -1.0, 2.0, 5.0, 0.0, 1.0])
    freq = frequencies(S.truncation, fitness, params(truncation_ratio=0.5))
    # ceil(0.5 * 6) = 3 best: indices 3, 2, 5, each 1/3
    np.testing.assert_allclose(freq, [0, 0, 1 / 3, 1 / 3, 0, 1 / 3], atol=0.005)
    assert int(S.truncation_count(6, 0.01)) == 1
    assert int(S.truncation_count(6, 1.0)) == 6


@pytest.mark.parametrize("name", sorted(evolution.SELECTION))
def test_selection_jit_vmap_scan_and_no_recompile(name):
    fn = evolution.SELECTION[name]
    fitness = jnp.array([0.3, -1.0, 2.0, 5.0, 0.0, 1.0])
    f = jax.jit(lambda key, prm: fn(key, fitness, 16, prm))
    keys = jax.random.split(jax.random.key(0), 3)
    prm = params()
    batch = jax.tree.map(lambda x: jnp.stack([x, x, x]), prm)
    batch = batch.replace(
        tournament_size=jnp.array([1, 3, 6]),
        truncation_ratio=jnp.array([0.2, 0.5, 1.0]),
        rank_pressure=jnp.array([1.0, 1.5, 2.0]),
    )
    out = jax.vmap(f)(keys, batch)
    assert out.shape == (3, 16) and out.dtype == jnp.int32
    assert np.all((np.asarray(out) >= 0) & (np.asarray(out) < P))
    f(keys[0], prm)
    size = f._cache_size()
    f(keys[1], prm.replace(tournament_size=jnp.int32(2), truncation_ratio=0.9))
    assert f._cache_size() == size

    def body(carry, key):
        return carry, fn(key, fitness, 4, prm)

    _, scanned = jax.lax.scan(body, 0, keys)
    assert scanned.shape == (3, 4)


def test_selection_rejects_non_vector_fitness():
    with pytest.raises(ValueError, match="fitness"):
        S.tournament(jax.random.key(0), jnp.zeros((2, 3)), 4, params())


def test_tournament_probabilities_sum_to_one():
    for size, k in [(7, 1), (7, 4), (50, 8), (1024, 3)]:
        total = float(jnp.sum(S.tournament_probabilities(size, k)))
        assert math.isclose(total, 1.0, rel_tol=1e-4)
