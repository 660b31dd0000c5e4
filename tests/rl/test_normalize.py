"""Running mean / variance and reward scaling against NumPy references, under
jit, scan, vmap and shard_map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from convergence_jax import rl


def welford_reference(samples):
    """One sample at a time (Welford 1962), in float64."""
    mean = np.zeros(samples.shape[1:])
    m2 = np.zeros(samples.shape[1:])
    for n, x in enumerate(samples, start=1):
        delta = x - mean
        mean = mean + delta / n
        m2 = m2 + delta * (x - mean)
    return mean, m2 / len(samples)


def test_batches_merge_to_the_moments_of_all_samples():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 3)) for n in (1, 5, 17, 2)]
    stats = rl.running_stats_init((3,))
    for batch in batches:
        stats = rl.running_stats_update(stats, batch)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(stats.mean, everything.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.var, everything.var(0), rtol=1e-4)
    mean, var = welford_reference(everything)
    np.testing.assert_allclose(stats.var, var, rtol=1e-4)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-5)
    assert float(stats.count) == len(everything)
    # merge is symmetric and matches one update with both batches.
    a = rl.running_stats_update(rl.running_stats_init((3,)), batches[0])
    b = rl.running_stats_update(rl.running_stats_init((3,)), batches[2])
    ab, ba = rl.running_stats_merge(a, b), rl.running_stats_merge(b, a)
    both = np.concatenate([batches[0], batches[2]])
    for m in (ab, ba):
        np.testing.assert_allclose(m.mean, both.mean(0), rtol=1e-5)
        np.testing.assert_allclose(m.var, both.var(0), rtol=1e-4)


def test_empty_stats_and_normalize():
    stats = rl.running_stats_init((2,))
    x = jnp.array([[1.0, -2.0]])
    np.testing.assert_allclose(
        rl.running_stats_normalize(stats, x), x, rtol=1e-6
    )  # mean 0, var 1
    merged = rl.running_stats_merge(stats, rl.running_stats_init((2,)))
    np.testing.assert_array_equal(merged.var, stats.var)
    stats = rl.running_stats_update(stats, jnp.array([[0.0, 0.0], [2.0, 4.0]]))
    np.testing.assert_allclose(
        rl.running_stats_normalize(stats, jnp.array([2.0, 4.0])), [1.0, 1.0], rtol=1e-5
    )
    np.testing.assert_allclose(
        rl.running_stats_normalize(stats, jnp.array([100.0, 2.0]), clip=5.0),
        [5.0, 0.0],
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="must end in"):
        rl.running_stats_update(stats, jnp.zeros((4, 3)))


def test_scan_equals_one_batch_and_jit_does_not_recompile():
    rng = np.random.default_rng(1)
    rollout = jnp.asarray(rng.normal(size=(8, 4, 2)), jnp.float32)
    update = jax.jit(rl.running_stats_update)

    def body(stats, obs):
        return update(stats, obs), None

    scanned, _ = jax.lax.scan(body, rl.running_stats_init((2,)), rollout)
    once = update(rl.running_stats_init((2,)), rollout)
    np.testing.assert_allclose(scanned.mean, once.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scanned.var, once.var, rtol=1e-4)
    size = update._cache_size()
    update(once, rollout + 1.0)
    assert update._cache_size() == size


def test_vmap_keeps_streams_apart():
    rng = np.random.default_rng(2)
    data = jnp.asarray(
        rng.normal(size=(3, 10, 2)) * np.array([1.0, 5.0, 0.1])[:, None, None]
    )
    stats = jax.vmap(lambda d: rl.running_stats_update(rl.running_stats_init((2,)), d))(
        data
    )
    for i in range(3):
        np.testing.assert_allclose(
            stats.var[i], np.var(np.asarray(data[i]), 0), rtol=1e-4
        )


def test_shard_map_pools_every_device():
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs more than one device (tests/conftest.py forces 4 on CPU)")
    n = len(devices)
    mesh = jax.make_mesh((n,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    rng = np.random.default_rng(3)
    obs = jnp.asarray(rng.normal(2.0, 3.0, size=(n * 6, 2)), jnp.float32)

    def local(stats, obs):
        return rl.running_stats_update(stats, obs, axis_name="d")

    pooled = jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=(P(), P("d")), out_specs=P())
    )(rl.running_stats_init((2,)), obs)
    np.testing.assert_allclose(pooled.mean, np.mean(np.asarray(obs), 0), rtol=1e-5)
    np.testing.assert_allclose(pooled.var, np.var(np.asarray(obs), 0), rtol=1e-4)
    assert float(pooled.count) == n * 6


def reward_scale_reference(rewards, dones, gamma, clip, eps=1e-8):
    """OpenAI baselines VecNormalize's reward path, in NumPy float64."""
    ret = np.zeros(rewards.shape[1])
    mean, var, count = 0.0, 1.0, 0
    out = []
    for r, d in zip(rewards, dones, strict=True):
        ret = ret * gamma + r
        b_mean, b_var, b_n = ret.mean(), ret.var(), len(ret)
        total = count + b_n
        delta = b_mean - mean
        mean, var = (
            mean + delta * b_n / total,
            (var * count + b_var * b_n + delta**2 * count * b_n / total) / total,
        )
        count = total
        out.append(np.clip(r / np.sqrt(var + eps), -clip, clip))
        ret[d] = 0.0
    return np.array(out), var


def test_reward_scaling_matches_the_numpy_reference():
    rng = np.random.default_rng(4)
    rewards = rng.normal(1.0, 2.0, size=(50, 4)).astype(np.float32)
    dones = rng.random((50, 4)) < 0.1
    state, scaled = jax.jit(rl.reward_scale_rollout)(
        rl.reward_scale_init(4), rewards, dones, 0.9, 5.0
    )
    want, var = reward_scale_reference(rewards.astype(np.float64), dones, 0.9, 5.0)
    np.testing.assert_allclose(scaled, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.stats.var, var, rtol=1e-4)
    # The running return restarted where an episode ended.
    last = np.flatnonzero(dones[-1])
    np.testing.assert_array_equal(np.asarray(state.ret)[last], 0.0)
    # Signs are kept (no mean subtraction).
    np.testing.assert_array_equal(np.sign(scaled), np.sign(rewards))


def test_reward_scaling_is_scale_free_and_vmaps():
    rng = np.random.default_rng(5)
    rewards = jnp.asarray(rng.normal(size=(200, 8)), jnp.float32)
    dones = jnp.zeros((200, 8), bool).at[::25].set(True)

    def run(scale):
        return rl.reward_scale_rollout(
            rl.reward_scale_init(8), rewards * scale, dones, 0.99, jnp.inf
        )[1]

    scaled = jax.vmap(run)(jnp.array([1.0, 1000.0]))
    # Rewards 1000x larger scale to the same numbers.
    np.testing.assert_allclose(scaled[0], scaled[1], rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="num_envs"):
        rl.reward_scale_init(0)
