"""Thompson sampling + evolution: one compiled program, posteriors carried by elites."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.evolution.mab import mab_evolution, run_mab_evolution
from convergence_jax.spaces import SearchSpace

SPACE = SearchSpace.from_dict(
    {
        "x": {"type": "float", "min": -2.0, "max": 2.0},
        "k": {"type": "int", "min": 0, "max": 6},
        "c": {"type": "categorical", "choices": ["a", "b", "c"]},
    }
)
BONUS = jnp.array([0.0, 0.3, 0.1])


def true_reward(configs):
    x, k = configs["x"], configs["k"].astype(jnp.float32)
    return 1.0 - 0.2 * (x - 0.7) ** 2 - 0.05 * (k - 4.0) ** 2 + BONUS[configs["c"]]


def noisy(key, configs):
    return true_reward(configs) + 0.3 * jax.random.normal(key, configs["x"].shape)


def make(**kw):
    kw = {"population_size": 8, "evaluations_per_generation": 24, "batch_size": 4} | kw
    return mab_evolution(SPACE, **kw)


def test_one_compiled_program_and_history_shapes():
    me = make()
    traces = []

    def run(key, params):
        traces.append(1)
        return run_mab_evolution(key, me, params, noisy, 5)

    run = jax.jit(run)
    state, history = run(jax.random.key(0), me.default_params)
    assert me.num_rounds == 4 and me.evaluations_per_generation == 24
    assert history["fitness"].shape == (5, 8)
    assert history["rounds"]["arms"].shape == (5, 4, 4)
    assert history["first"]["arms"].shape == (5, 8)
    # every evaluation is counted: per generation 8 + 4 * 4
    np.testing.assert_array_equal(history["counts"].sum(-1) >= 24, True)
    assert int(state.generation) == 5
    # numbers change, no recompile
    params = me.default_params.replace(failure_reward=jnp.float32(-1.0))
    run(jax.random.key(1), params)
    assert len(traces) == 1


def test_vmap_over_seeds_and_params():
    me = make()
    run = jax.jit(
        jax.vmap(
            lambda key, params: run_mab_evolution(key, me, params, noisy, 3)[1][
                "best_fitness"
            ],
            in_axes=(0, None),
        )
    )
    keys = jax.random.split(jax.random.key(0), 4)
    out = np.asarray(run(keys, me.default_params))
    assert out.shape == (4, 3)
    assert len(np.unique(out[:, -1])) == 4  # every seed is its own run
    # each lane is the same run as its key alone (a vmapped seed reproduces)
    alone = jax.jit(
        lambda key: run_mab_evolution(key, me, me.default_params, noisy, 3)[1]
    )
    for j in (0, 3):
        np.testing.assert_array_equal(out[j], alone(keys[j])["best_fitness"])

    def sweep(rates):
        params = jax.vmap(
            lambda r: me.default_params.replace(
                ga=me.default_params.ga.replace(mutation_rate=r)
            )
        )(jnp.asarray(rates, jnp.float32))
        return jax.jit(
            jax.vmap(lambda p: run_mab_evolution(jax.random.key(0), me, p, noisy, 3)[1])
        )(params)["best_fitness"]

    swept, control = sweep([0.1, 0.5]), sweep([0.1, 0.1])
    assert swept.shape == (2, 3)
    # the swept number is really used, lane by lane: same lane, same key
    np.testing.assert_array_equal(swept[0], control[0])
    assert not np.array_equal(swept[1], control[1])


def test_elites_keep_their_posteriors():
    me = make()
    params = me.default_params.replace(
        ga=me.default_params.ga.replace(num_elites=jnp.int32(2))
    )
    state = me.init(jax.random.key(0), params)
    arms = jnp.arange(8)
    state = me.observe(jax.random.key(1), state, arms, jnp.linspace(0, 1, 8), params)
    state = me.observe(
        jax.random.key(2), state, arms[6:], jnp.array([0.9, 1.0]), params
    )
    before = state
    state, ended = me.evolve(jax.random.key(3), state, params)
    np.testing.assert_array_equal(ended["counts"], before.counts)
    assert int(ended["best_index"]) == 7
    elite = np.asarray(state.ga.elite_mask)
    src = np.asarray(state.ga.parent_idx)
    assert elite[:2].all() and not elite[2:].any()
    assert src[0] == 7 and src[1] == 6  # best first
    for leaf_new, leaf_old in zip(
        jax.tree.leaves(state.bandit), jax.tree.leaves(before.bandit), strict=True
    ):
        np.testing.assert_array_equal(leaf_new[:2], leaf_old[src[:2]])
        np.testing.assert_array_equal(leaf_new[2:], 0)
    np.testing.assert_array_equal(state.counts[:2], [2, 2])
    # the elite configurations are the same configurations
    for name in SPACE.names:
        np.testing.assert_array_equal(
            state.population[name][:2], before.population[name][src[:2]]
        )


def test_failed_evaluations_count_as_failure_reward():
    me = make()
    params = me.default_params.replace(failure_reward=jnp.float32(-5.0))
    state = me.init(jax.random.key(0), params)
    state = me.observe(
        jax.random.key(1),
        state,
        jnp.array([0, 0]),
        jnp.array([jnp.nan, jnp.nan]),
        params,
    )
    mean = me.posterior_mean(state, params)
    assert float(mean[0]) < -4.0
    assert int(state.counts[0]) == 2


def test_thompson_allocation_concentrates_on_good_arms():
    me = make(population_size=8, evaluations_per_generation=8 + 40 * 4)
    state = me.init(jax.random.key(0), me.default_params)
    params = me.default_params
    quality = jnp.linspace(0.0, 1.0, 8)
    state = me.observe(jax.random.key(1), state, jnp.arange(8), quality, params)

    def one_round(state, key):
        k1, k2 = jax.random.split(key)
        arms = me.propose(k1, state, params)
        rewards = quality[arms] + 0.1 * jax.random.normal(k2, arms.shape)
        return me.observe(k2, state, arms, rewards, params), None

    keys = jax.random.split(jax.random.key(2), 40)
    state, _ = jax.jit(lambda s: jax.lax.scan(one_round, s, keys))(state)
    counts = np.asarray(state.counts)
    assert counts[7] + counts[6] > 0.6 * counts.sum()


def test_finds_the_optimum_better_than_uniform_allocation_over_seeds():
    """A statistical check over 32 vmapped seeds, at equal budgets."""

    def final_true(allocation):
        me = make(
            population_size=12,
            evaluations_per_generation=60,
            batch_size=6,
            allocation=allocation,
        )

        def one(key):
            _, h = run_mab_evolution(key, me, me.default_params, noisy, 12)
            best = jax.tree.map(lambda x: x[-1, h["best_index"][-1]], h["population"])
            return true_reward(best)

        keys = jax.random.split(jax.random.key(0), 32)
        return np.asarray(jax.jit(jax.vmap(one))(keys))

    ts, uniform = final_true("thompson"), final_true("uniform")
    optimum = 1.3
    random_mean = float(true_reward(SPACE.sample(jax.random.key(9), 10_000)).mean())
    assert ts.mean() > random_mean + 0.5 * (optimum - random_mean)
    assert ts.mean() > uniform.mean()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"evaluations_per_generation": 4}, "evaluations_per_generation"),
        ({"batch_size": 0}, "batch_size"),
        ({"bandit": "ucb"}, "bandit"),
        ({"allocation": "greedy"}, "allocation"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)
