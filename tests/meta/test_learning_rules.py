"""Learning-rule genomes: schedules, optax build, one-compile meta-evolution."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from convergence_jax import meta
from convergence_jax.meta import genome as gn


def test_schedules_hand_computed():
    rule = meta.default_learning_rule(learning_rate=1.0, warmup_fraction=0.2)
    lr = lambda shape, step: float(  # noqa: E731
        meta.learning_rate(rule.replace(schedule=shape), step, 100)
    )
    assert lr("constant", 70) == 1.0
    assert lr("cosine", 50) == pytest.approx(0.5, abs=1e-6)
    assert lr("warmup_cosine", 10) == pytest.approx(0.5, abs=1e-6)
    assert lr("warmup_cosine", 20) == pytest.approx(1.0, abs=1e-6)
    assert lr("warmup_cosine", 60) == pytest.approx(0.5, abs=1e-6)
    assert lr("step", 40) == pytest.approx(0.1, rel=1e-6)
    assert lr("step", 99) == pytest.approx(0.01, rel=1e-5)


def test_optimizer_matches_plain_optax_sgd_with_momentum():
    rule = meta.default_learning_rule(learning_rate=0.1, momentum=0.5)
    params = {"w": jnp.array([1.0, -2.0])}
    ours, ref = meta.build_optimizer(rule, 10), optax.sgd(0.1, momentum=0.5)
    s1, s2 = ours.init(params), ref.init(params)
    for _ in range(3):
        g = jax.tree.map(lambda p: 2 * p, params)
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = ref.update(g, s2, params)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)
        params = optax.apply_updates(params, u1)
    clipped = meta.build_optimizer(rule.replace(clipping=1, clip_norm=0.01), 10)
    u, _ = clipped.update({"w": jnp.array([3.0, 4.0])}, clipped.init(params), params)
    assert float(jnp.linalg.norm(u["w"])) == pytest.approx(0.1 * 0.01, rel=1e-5)


def test_learning_rules_meta_evolve_and_beat_a_bad_default(tmp_path):
    family = meta.regression_family(((2.0, 0.5, 1.0),), hidden=8, num_points=16,
                                    reference_samples=8)  # fmt: skip
    result = meta.meta_train_learning_rules(
        family, jax.random.key(0), num_rules=8, num_meta_generations=4,
        num_steps=60, num_seeds=2, final_rounds=1,
    )  # fmt: skip
    assert result.history["fitness"].shape == (4, 8)
    best = result.universal_best()
    assert isinstance(best, meta.LearningRule)
    gn.check_genome(best)
    result.export_learned_strategies(tmp_path / "rules.json")
    loaded = meta.load_learned_strategies(tmp_path / "rules.json").universal_best()
    assert isinstance(loaded, meta.LearningRule)
    assert gn.genome_to_dict(loaded) == gn.genome_to_dict(best)
    # Row 0 of the first population is the default rule; the learned rule,
    # re-scored on fresh seeds, beats it clearly.
    assert gn.genome_to_dict(
        jax.tree.map(lambda x: x[0, 0], result.history["genomes"])
    ) == gn.genome_to_dict(meta.default_learning_rule())
    assert result.final_fitness.max() > result.history["fitness"][0, 0] + 0.05
