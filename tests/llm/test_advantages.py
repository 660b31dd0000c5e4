"""GRPO-family advantages and DAPO's reward-side tools vs NumPy and peer fixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import llm


def numpy_advantages(name, rewards, group_size, epsilon):
    """Independent float64 reference: loops over groups."""
    r = np.asarray(rewards, np.float64)
    out = np.empty_like(r)
    batch_std = r.std(ddof=1)
    for start in range(0, len(r), group_size):
        g = r[start : start + group_size]
        if name == "grpo":
            out[start : start + group_size] = (g - g.mean()) / (g.std(ddof=1) + epsilon)
        elif name == "dr_grpo":
            out[start : start + group_size] = g - g.mean()
        elif name == "rloo":
            for j in range(group_size):
                baseline = (g.sum() - g[j]) / (group_size - 1)
                out[start + j] = g[j] - baseline
        elif name == "batch_std":
            out[start : start + group_size] = (g - g.mean()) / (batch_std + epsilon)
    return out


@pytest.mark.parametrize("name", sorted(llm.ADVANTAGES))
@pytest.mark.parametrize("num_prompts,group_size", [(1, 2), (3, 4), (5, 7)])
def test_matches_numpy(name, num_prompts, group_size):
    rng = np.random.default_rng(num_prompts * 10 + group_size)
    rewards = rng.normal(size=num_prompts * group_size).astype(np.float32)
    got = llm.ADVANTAGES[name](jnp.asarray(rewards), group_size, epsilon=1e-4)
    want = numpy_advantages(name, rewards, group_size, 1e-4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rloo_tunix_fixture():
    # google/tunix tests/rl/algo_core_test.py (compute_rloo_advantages, G=3).
    got = llm.rloo_advantages(jnp.arange(1.0, 7.0), 3)
    np.testing.assert_allclose(got, [-1.5, 0.0, 1.5, -1.5, 0.0, 1.5], atol=1e-6)


def test_grpo_tunix_fixture():
    # google/tunix tests/rl/algo_core_test.py: compute_advantages on
    # uniform(PRNGKey(0), (1, 6)) with jax_threefry_partitionable=False, G=3,
    # epsilon 1e-6 (Tunix's), rtol 1e-3.
    previous = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", False)
    try:
        rewards = jax.random.uniform(jax.random.PRNGKey(0), (1, 6))
    finally:
        jax.config.update("jax_threefry_partitionable", previous)
    got = llm.grpo_advantages(rewards.reshape(-1), 3, epsilon=1e-6)
    want = [0.307498, -1.117636, 0.810138, 1.094526, -0.228671, -0.865855]
    np.testing.assert_allclose(got, want, rtol=1e-3)


def test_trl_hand_example():
    # /work/shared/research/rlp-sao-preference-tunix-offline.md §4.2 / §11:
    # rewards [1, 0], TRL epsilon 1e-4 -> +-0.7070068; Tunix 1e-6 -> +-0.70710578.
    r = jnp.array([1.0, 0.0])
    np.testing.assert_allclose(llm.grpo_advantages(r, 2), [0.7070068, -0.7070068])
    np.testing.assert_allclose(
        llm.grpo_advantages(r, 2, epsilon=1e-6), [0.70710578, -0.70710578]
    )


def test_rloo_is_rescaled_mean_centring():
    # RLOO = G / (G - 1) * (r - mean): RLP's advantage (research note §11).
    r = jnp.array([0.2, -0.1, 0.5, 0.0])
    np.testing.assert_allclose(
        llm.rloo_advantages(r, 4), [0.0666667, -0.3333333, 0.4666667, -0.2], atol=1e-6
    )
    np.testing.assert_allclose(
        llm.rloo_advantages(r, 4), 4 / 3 * llm.dr_grpo_advantages(r, 4), atol=1e-6
    )


@pytest.mark.parametrize("name", sorted(llm.ADVANTAGES))
def test_jit_and_vmap(name):
    fn = jax.jit(llm.ADVANTAGES[name], static_argnums=1)
    rewards = jax.random.normal(jax.random.key(0), (3, 8))
    batched = jax.vmap(lambda r: fn(r, 4))(rewards)
    for row, out in zip(rewards, batched, strict=True):
        np.testing.assert_allclose(
            out, numpy_advantages(name, row, 4, 1e-4), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("name", sorted(llm.ADVANTAGES))
def test_bad_input(name):
    fn = llm.ADVANTAGES[name]
    with pytest.raises(ValueError, match="group_size"):
        fn(jnp.ones(4), 1)
    with pytest.raises(ValueError, match="group_size"):
        fn(jnp.ones(5), 2)
    with pytest.raises(ValueError, match="rewards"):
        fn(jnp.ones((2, 2)), 2)


def test_constant_group_gives_zero_advantage():
    r = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.5])
    adv = llm.grpo_advantages(r, 3)
    np.testing.assert_allclose(adv[:3], 0.0)
    assert np.all(np.isfinite(adv))


def test_dynamic_sampling_mask_and_select_groups():
    r = jnp.array([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.3, 0.3, 0.5, 0.2, 0.5, 0.5])
    keep = llm.dynamic_sampling_mask(r, 2)
    np.testing.assert_array_equal(keep, [False, False, True, False, True, False])
    idx, valid = llm.select_groups(keep, 3)
    np.testing.assert_array_equal(idx, [2, 4, 0])
    np.testing.assert_array_equal(valid, [True, True, False])
    # With a tolerance, nearly equal rewards count as constant.
    near = jnp.array([1.0, 1.0 + 1e-7, 0.0, 1.0])
    np.testing.assert_array_equal(llm.dynamic_sampling_mask(near, 2, atol=1e-6), [0, 1])
    idx, valid = jax.jit(llm.select_groups, static_argnums=1)(keep, 1)
    np.testing.assert_array_equal(idx, [2])
    assert bool(valid[0])


def test_soft_overlong_punishment_trl():
    # trl/rewards/other_rewards.py docstring: max 100, cache 20, 90 tokens -> -0.5.
    lengths = jnp.array([10, 80, 90, 100, 101, 500])
    got = llm.soft_overlong_punishment(lengths, 100, 20)
    np.testing.assert_allclose(got, [0.0, 0.0, -0.5, -1.0, -1.0, -1.0])
    # TRL: cache 0 -> no ramp, only the cap.
    got = llm.soft_overlong_punishment(lengths, 100, 0)
    np.testing.assert_allclose(got, [0, 0, 0, 0, -1, -1])


def test_soft_overlong_punishment_tunix_uncapped():
    # google/tunix tests/rl/grpo/dapo_learner_test.py::test_reward_scores
    # (research note §5.2): length 110, max 100, buffer 20, penalty 10 -> -15.
    got = llm.soft_overlong_punishment(
        jnp.array([70, 90, 110]), 100, 20, penalty=10.0, capped=False
    )
    np.testing.assert_allclose(got, [0.0, -5.0, -15.0])
    with pytest.raises(ValueError, match="cache_length"):
        llm.soft_overlong_punishment(jnp.array([1]), 10, 10)


def test_overlong_filter_mask():
    mask = jnp.ones((3, 4))
    truncated = jnp.array([True, False, True])
    got = llm.overlong_filter_mask(mask, truncated)
    np.testing.assert_array_equal(got.sum(axis=1), [0, 4, 0])
