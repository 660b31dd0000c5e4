"""The GA: ask/tell semantics, elitism, NaN, 1/5th rule, run programs, bad input."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import evolution

P = 8


def told(ga, prm, fitness, population=None, seed=0):
    """State after init (optionally seeded) and one tell of ``fitness`` (jitted)."""
    return _told(ga, prm, jnp.asarray(fitness, jnp.float32), population, seed)


@partial(jax.jit, static_argnums=0)
def _first_generation(ga, prm, fitness, population, seed):
    key = jax.random.key(seed)
    state = ga.init(key, prm, population=population)
    pop, state = ga.ask(jax.random.fold_in(key, 1), state, prm)
    return ga.tell(jax.random.fold_in(key, 2), pop, fitness, state, prm)


def _told(ga, prm, fitness, population, seed):
    ga.check_params(prm)  # init cannot check traced params
    return _first_generation(ga, prm, fitness, population, seed)


def test_first_ask_returns_the_initial_population(net):
    ga = evolution.ga(net, P)
    prm = ga.default_params
    state = ga.init(jax.random.key(0), prm)
    pop, asked = ga.ask(jax.random.key(1), state, prm)
    for x, y in zip(
        jax.tree.leaves(pop), jax.tree.leaves(state.population), strict=True
    ):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(asked.parent_idx, np.arange(P))
    assert not np.any(asked.elite_mask)
    assert float(state.best_fitness) == -np.inf
    assert np.all(np.asarray(state.fitness) == -np.inf)


def test_init_population_shapes_and_seeding(space, net):
    ga = evolution.ga(net, P)
    prm = ga.default_params.replace(init_std=0.5)
    state = ga.init(jax.random.key(0), prm)
    assert state.population["dense"]["kernel"].shape == (P, 3, 2)
    std = np.std(
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.population)])
    )
    assert 0.35 < std < 0.65
    seed = jax.tree.map(lambda x: jnp.ones((P, *x.shape)), net)
    state = ga.init(jax.random.key(0), prm, population=seed)
    assert all(np.all(np.asarray(x) == 1) for x in jax.tree.leaves(state.population))

    ga = evolution.ga(space, 4096)
    pop = ga.init(jax.random.key(0), ga.default_params).population
    lr = np.log10(np.asarray(pop["lr"]))
    assert lr.min() >= -5 and lr.max() <= -1
    assert abs(np.mean(lr < -3) - 0.5) < 0.03  # log-uniform
    assert abs(np.mean(np.asarray(pop["temperature"]) < 1.0) - 0.5) < 0.03
    tokens = np.asarray(pop["max_tokens"])
    assert tokens.dtype == np.int32 and tokens.min() >= 64 and tokens.max() <= 1024
    assert set(np.unique(pop["model"])) == {0, 1, 2}


@pytest.mark.parametrize("maximize", [True, False])
def test_elites_are_copied_bit_exactly_best_first(net, maximize):
    ga = evolution.ga(net, P, maximize=maximize)
    prm = ga.default_params.replace(num_elites=3, mutation_rate=1.0, mutation_std=1.0)
    fitness = jnp.array([0.5, 3.0, -1.0, 2.0, 7.0, jnp.nan, 1.0, 0.0])
    state, _ = told(ga, prm, fitness)
    pop, asked = ga.ask(jax.random.key(5), state, prm)
    f = np.asarray(fitness)
    f = np.where(np.isnan(f), -np.inf if maximize else np.inf, f)
    best = np.argsort(-f if maximize else f, kind="stable")[:3]
    np.testing.assert_array_equal(asked.parent_idx[:3], best)
    np.testing.assert_array_equal(asked.elite_mask, np.arange(P) < 3)
    for x, y in zip(
        jax.tree.leaves(pop), jax.tree.leaves(state.population), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x)[:3], np.asarray(y)[best])
        # children mutate with rate 1: none equals its first parent
        assert np.all(np.asarray(x)[3:] != np.asarray(y)[asked.parent_idx[3:]])
    np.testing.assert_array_equal(asked.sigmas[:3], state.sigmas[best])


def test_num_elites_is_a_traced_number(net):
    ga = evolution.ga(net, P)
    prm = ga.default_params.replace(mutation_rate=1.0)
    fitness = jnp.arange(P, dtype=jnp.float32)
    state, _ = told(ga, prm, fitness)

    def num_kept(num_elites):
        p = prm.replace(num_elites=num_elites)
        return jnp.sum(ga.ask(jax.random.key(0), state, p)[1].elite_mask)

    counts = jax.jit(jax.vmap(num_kept))(jnp.arange(P + 1))
    np.testing.assert_array_equal(counts, np.arange(P + 1))


def test_nan_fitness_is_worst_and_counted(space):
    ga = evolution.ga(space, P)
    prm = ga.default_params
    fitness = jnp.array([jnp.nan, 1.0, jnp.nan, 0.5, -2.0, jnp.nan, 0.0, 0.25])
    state, metrics = told(ga, prm, fitness)
    assert int(metrics["num_failed"]) == 3
    assert float(state.best_fitness) == 1.0
    assert float(metrics["mean_fitness"]) == pytest.approx((1 + 0.5 - 2 + 0 + 0.25) / 5)
    assert np.all(np.asarray(state.fitness)[[0, 2, 5]] == -np.inf)
    for name in space.names:
        assert state.best_solution[name] == state.population[name][1]
    # all failed: nothing is best, mean is NaN, nothing crashes
    ga_min = evolution.ga(space, P, maximize=False)
    state, metrics = told(ga_min, prm, jnp.full(P, jnp.nan))
    assert float(state.best_fitness) == np.inf and int(metrics["num_failed"]) == P
    assert np.isnan(float(metrics["mean_fitness"]))
    pop, _ = ga_min.ask(jax.random.key(9), state, prm)
    assert pop["lr"].shape == (P,)


def test_minimize_tracks_the_lowest(net):
    ga = evolution.ga(net, P, maximize=False)
    state, metrics = told(ga, ga.default_params, jnp.arange(P, 0, -1.0))
    assert float(state.best_fitness) == 1.0
    assert float(metrics["best_fitness_in_generation"]) == 1.0
    leaves = zip(
        jax.tree.leaves(state.best_solution),
        jax.tree.leaves(state.population),
        strict=True,
    )
    for best, pop in leaves:
        np.testing.assert_array_equal(best, pop[P - 1])


@pytest.mark.parametrize("improve, direction", [(True, 1), (False, -1)])
def test_one_fifth_rule_direction(improve, direction):
    ga = evolution.ga(jnp.zeros(4), P, mutation="one_fifth")
    prm = ga.default_params.replace(num_elites=1, one_fifth_factor=1.5)
    state, _ = told(ga, prm, jnp.zeros(P))
    pop, state = ga.ask(jax.random.key(3), state, prm)
    fitness = jnp.full(P, 1.0 if improve else -1.0)
    new, metrics = ga.tell(jax.random.key(4), pop, fitness, state, prm)
    assert float(metrics["success_rate"]) == (1.0 if improve else 0.0)
    assert float(new.sigma) == pytest.approx(float(state.sigma) * 1.5**direction)
    # the next children are mutated with the new global sigma
    _, asked = ga.ask(jax.random.key(5), new, prm)
    np.testing.assert_allclose(asked.sigmas[1:], float(new.sigma))


def test_one_fifth_rule_holds_before_any_known_parent():
    ga = evolution.ga(jnp.zeros(4), P, mutation="one_fifth")
    state, metrics = told(ga, ga.default_params, jnp.ones(P))
    assert float(state.sigma) == float(ga.default_params.mutation_std)
    assert float(metrics["success_rate"]) == 0.0


def test_self_adaptive_children_inherit_their_parents_sigma():
    ga = evolution.ga(jnp.zeros(4), P, mutation="self_adaptive")
    prm = ga.default_params.replace(num_elites=2, tau=0.0)
    state, _ = told(ga, prm, jnp.arange(P, dtype=jnp.float32))
    state = state.replace(sigmas=jnp.geomspace(0.01, 1.0, P))
    _, asked = ga.ask(jax.random.key(7), state, prm)
    np.testing.assert_array_equal(asked.sigmas, state.sigmas[asked.parent_idx])
    prm = prm.replace(tau=0.3)
    _, asked = ga.ask(jax.random.key(7), state, prm)
    ratio = np.asarray(asked.sigmas / state.sigmas[asked.parent_idx])
    np.testing.assert_array_equal(ratio[:2], 1.0)  # elites keep theirs
    assert np.all(ratio[2:] != 1.0)


# --------------------------------------------------------------- run programs


def sphere(pop):
    return -jnp.sum(pop["x"] ** 2, axis=-1)


@pytest.mark.parametrize(
    "kind, name",
    [("selection", n) for n in sorted(evolution.SELECTION)]
    + [("mutation", n) for n in sorted(evolution.MUTATION)]
    + [("crossover", n) for n in sorted(evolution.CROSSOVER)],
)
def test_every_method_runs_jitted_vmapped_without_recompiling(kind, name):
    """The whole run (one lax.scan) under jit and vmap over keys and Params."""
    ga = evolution.ga({"x": jnp.zeros(3)}, P, **{kind: name})
    traces = []

    def run(key, params):
        traces.append(1)
        return evolution.run(key, ga, params, sphere, 4)

    run = jax.jit(jax.vmap(run))
    prm = ga.default_params
    keys = jax.random.split(jax.random.key(2), 3)
    batch = jax.tree.map(lambda x: jnp.stack([x] * 3), prm)
    batch = batch.replace(
        num_elites=jnp.array([0, 1, 4]), crossover_rate=jnp.array([0.0, 0.5, 1.0])
    )
    states, metrics = run(keys, batch)
    assert states.population["x"].shape == (3, P, 3)
    assert metrics["best_fitness"].shape == (3, 4)
    np.testing.assert_array_equal(states.generation, 4)
    best = np.asarray(metrics["best_fitness"])
    assert np.all(np.diff(best, axis=1) >= 0)  # best so far never gets worse
    batch = batch.replace(
        mutation_rate=jnp.array([0.1, 0.2, 0.3]), tournament_size=jnp.array([1, 2, 3])
    )
    run(keys, batch)
    assert len(traces) == 1 and run._cache_size() == 1


def test_run_accepts_static_ga_and_a_seed_population(net):
    ga = evolution.ga(net, P)

    def fitness(pop):
        return -sum(
            jnp.sum(x**2, axis=tuple(range(1, x.ndim))) for x in jax.tree.leaves(pop)
        )

    run = jax.jit(evolution.run, static_argnums=(1, 3, 4))
    seed = jax.tree.map(lambda x: jnp.zeros((P, *x.shape)), net)
    state, metrics = run(
        jax.random.key(0), ga, ga.default_params, fitness, 3, population=seed
    )
    assert metrics["best_fitness"].shape == (3,)
    assert float(metrics["best_fitness"][0]) == 0.0  # generation 0 evaluates the seed


def test_ask_tell_inside_a_host_loop_matches_run(space):
    ga = evolution.ga(space, P)
    prm = ga.default_params

    def fitness(pop):
        return -((pop["temperature"] - 0.7) ** 2) - (jnp.log10(pop["lr"]) + 3) ** 2

    ask, tell = jax.jit(ga.ask), jax.jit(ga.tell)
    key = jax.random.key(0)
    key_init, key_loop = jax.random.split(key)
    state = ga.init(key_init, prm)
    for k in jax.random.split(key_loop, 5):
        k_ask, k_tell = jax.random.split(k)
        pop, state = ask(k_ask, state, prm)
        state, _ = tell(k_tell, pop, fitness(pop), state, prm)
    ref, _ = evolution.run(key, ga, prm, fitness, 5)
    np.testing.assert_allclose(state.best_fitness, ref.best_fitness, rtol=1e-6)
    np.testing.assert_array_equal(state.population["model"], ref.population["model"])


# ------------------------------------------------------------------ bad input


def test_bad_factory_arguments(space, net):
    with pytest.raises(ValueError, match="selection.*'nope'.*roulette"):
        evolution.ga(space, P, selection="nope")
    with pytest.raises(ValueError, match="mutation.*one_fifth"):
        evolution.ga(space, P, mutation="gauss")
    with pytest.raises(ValueError, match="crossover.*one_point"):
        evolution.ga(space, P, crossover="two_point")
    with pytest.raises(ValueError, match="population_size"):
        evolution.ga(space, 1)
    with pytest.raises(ValueError, match="population_size"):
        evolution.ga(space, 8.0)
    with pytest.raises(ValueError, match="max_tournament_size"):
        evolution.ga(space, 8, max_tournament_size=9)
    with pytest.raises(ValueError, match="maximize"):
        evolution.ga(space, 8, maximize="yes")
    with pytest.raises(ValueError, match=r"\['b'\].*floating"):
        evolution.ga({"a": jnp.zeros(2), "b": jnp.zeros(2, jnp.int32)}, 8)
    with pytest.raises(ValueError, match="float array"):
        evolution.ga({"a": 3}, 8)
    assert evolution.ga(net, 4).max_tournament_size == 4


def test_bad_runtime_input(net):
    ga = evolution.ga(net, P)
    prm = ga.default_params
    state = ga.init(jax.random.key(0), prm)
    pop, state = ga.ask(jax.random.key(1), state, prm)
    with pytest.raises(ValueError, match=r"fitness.*\(8,\)"):
        ga.tell(jax.random.key(2), pop, jnp.zeros(7), state, prm)
    with pytest.raises(ValueError, match=r"fitness.*\(8,\)"):
        jax.jit(ga.tell)(jax.random.key(2), pop, jnp.zeros((8, 1)), state, prm)
    with pytest.raises(
        ValueError, match=r"population leaf \[.dense.\].*expected shape"
    ):
        bad = jax.tree.map(lambda x: x[:4], pop)
        ga.tell(jax.random.key(2), bad, jnp.zeros(4), state, prm)
    with pytest.raises(ValueError, match="structure"):
        ga.init(jax.random.key(0), prm, population={"w": jnp.zeros((P, 2))})
    for field, value in [
        ("mutation_rate", 1.5),
        ("num_elites", 9),
        ("tournament_size", 9),
        ("crossover_rate", -0.1),
        ("rank_pressure", 2.5),
        ("mutation_std", float("nan")),
    ]:
        with pytest.raises(ValueError, match=f"params.{field}"):
            ga.init(jax.random.key(0), prm.replace(**{field: value}))
    with pytest.raises(ValueError, match="num_generations"):
        evolution.run(jax.random.key(0), ga, prm, lambda p: jnp.zeros(P), 0)
