"""Recurrent PPO: GRU reset semantics against NumPy, minibatches of whole env
sequences, jit/vmap over seeds and hparams, 4 devices == 1, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import rl
from convergence_jax.rl.recurrent_ppo import (
    RecurrentActorCritic,
    RecurrentPPOConfig,
    make_recurrent_ppo,
    make_recurrent_train,
    stratified_env_minibatches,
)

# MemoryChain with memory_length 2: every episode is exactly 3 steps.
TINY = dict(
    env_id="MemoryChain-bsuite",
    env_params={"memory_length": 2},
    total_timesteps=8 * 8 * 2,
    num_envs=8,
    num_steps=8,
    num_minibatches=2,
    update_epochs=2,
    rnn_size=8,
    embed_size=8,
    hidden_sizes=(8,),
)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"env_id": "MemoryChain"}, "unknown gymnax environment 'MemoryChain'"),
        ({"env_params": {"memory_len": 3}}, "has no parameters \\['memory_len'\\]"),
        ({"num_envs": 6, "num_minibatches": 4}, "multiple of num_devices \\*"),
        ({"num_envs": 16, "num_minibatches": 2, "num_devices": 8}, "8 requested"),
        ({"rnn_size": 0}, "rnn_size: expected an int >= 1"),
        ({"total_timesteps": 10}, "less than one rollout"),
        ({"activation": "sigmoid"}, "activation: expected one of"),
        ({"gae_lambda": -0.1}, "gae_lambda: expected in"),
    ],
)
def test_bad_config_fails_before_compiling(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_recurrent_ppo(RecurrentPPOConfig(**{**TINY, **kwargs}))


# ------------------------------------------------------------------ the network


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _numpy_reset_gru(p, hidden, x, starts):
    """flax GRUCell's equations in NumPy, zeroing the state where starts."""

    def dense(name, v, bias=True):
        out = v @ np.asarray(p[name]["kernel"])
        return out + np.asarray(p[name]["bias"]) if bias else out

    outs = []
    for t in range(x.shape[0]):
        hidden = np.where(starts[t][:, None], 0.0, hidden)
        r = _sigmoid(dense("ir", x[t]) + dense("hr", hidden, False))
        z = _sigmoid(dense("iz", x[t]) + dense("hz", hidden, False))
        n = np.tanh(dense("in", x[t]) + r * dense("hn", hidden))
        hidden = (1.0 - z) * n + z * hidden
        outs.append(hidden)
    return hidden, np.stack(outs)


def test_gru_state_is_reset_at_episode_starts_as_numpy_does():
    net = RecurrentActorCritic(action_dim=3, rnn_size=5, embed_size=4)
    T, B = 6, 3
    k_obs, k_h, k_p = jax.random.split(jax.random.key(0), 3)
    obs = jax.random.normal(k_obs, (T, B, 2))
    hidden0 = jax.random.normal(k_h, (B, 5))
    starts = np.zeros((T, B), bool)
    starts[2, 0] = starts[4, 1] = starts[0, 2] = True
    params = net.init(k_p, hidden0, obs, starts)

    def embed_and_gru(hidden, obs, starts):
        return net.apply(params, hidden, obs, starts)

    hidden_T, dist, value = embed_and_gru(hidden0, obs, starts)
    p = params["params"]
    x = np.tanh(
        np.asarray(obs) @ np.asarray(p["Dense_0"]["kernel"])
        + np.asarray(p["Dense_0"]["bias"])
    )
    ref_T, _ = _numpy_reset_gru(p["_ResetGRU_0"]["GRUCell_0"], hidden0, x, starts)
    np.testing.assert_allclose(hidden_T, ref_T, rtol=1e-5, atol=1e-6)
    assert dist.logits.shape == (T, B, 3) and value.shape == (T, B)

    # After a start nothing of the past is left: env 0 from t = 2 on behaves as a
    # fresh sequence beginning at t = 2, whatever its earlier state and inputs.
    fresh_starts = starts[2:].copy()
    fresh_starts[0, 0] = True  # already the case: the start at t = 2
    _, dist_fresh, value_fresh = embed_and_gru(
        jnp.full((B, 5), 7.0), obs[2:], fresh_starts
    )
    np.testing.assert_allclose(dist.logits[2:, 0], dist_fresh.logits[:, 0], rtol=1e-5)
    np.testing.assert_allclose(value[2:, 0], value_fresh[:, 0], rtol=1e-5)
    # ... and before the start the state did matter (the check above can fail).
    assert not np.allclose(
        value[:2, 0], embed_and_gru(0 * hidden0, obs, starts)[2][:2, 0]
    )


def test_minibatches_take_one_env_of_each_group_and_cover_all():
    keys = jax.random.split(jax.random.key(1), 12)
    index = np.asarray(stratified_env_minibatches(keys, 3))  # 4 groups of 3
    assert index.shape == (3, 4)
    assert sorted(index.ravel()) == list(range(12))
    np.testing.assert_array_equal(index // 3, np.tile(np.arange(4), (3, 1)))
    other = np.asarray(stratified_env_minibatches(jax.random.split(keys[0], 12), 3))
    assert not np.array_equal(index, other)  # a fresh draw, another assignment


# ------------------------------------------------------------------ whole runs


@pytest.fixture(scope="module")
def vmapped_run():
    config = RecurrentPPOConfig(**TINY)
    hparams = rl.hparam_grid(config, learning_rate=[1e-3, 1e-3]).replace(
        max_grad_norm=jnp.full(2, 1e6, jnp.float32)
    )
    keys = jax.vmap(jax.random.key)(jnp.arange(2))
    state, metrics = jax.jit(jax.vmap(make_recurrent_train(config)))(keys, hparams)
    return config, hparams, state, metrics


def test_runs_under_jit_and_vmap_over_seeds_and_hparams(vmapped_run):
    config, _, state, metrics = vmapped_run
    assert metrics["value_loss"].shape == (2, config.num_updates)
    assert np.isfinite(np.asarray(metrics["policy_loss"])).all()
    # Episodes of 3 steps: 8 envs x 8 steps hold 16 to 24 episode ends per update.
    assert ((metrics["episodes"] >= 16) & (metrics["episodes"] <= 24)).all()
    assert (np.abs(np.asarray(metrics["episode_return"])) <= 1).all()
    # Seeds differ; starts mark where an episode begins (every 3rd step).
    assert not np.allclose(metrics["value_loss"][0], metrics["value_loss"][1])
    total = config.num_updates * config.num_steps
    assert total % 3 != 0  # so a run that never updated starts would fail
    np.testing.assert_array_equal(state.starts, total % 3 == 0)
    assert state.hidden.shape == (2, config.num_envs, config.rnn_size)


def test_four_devices_equal_one_device(vmapped_run):
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    config, hparams, s1, m1 = vmapped_run
    config4 = RecurrentPPOConfig(**{**TINY, "num_devices": 4})
    s4, m4 = jax.jit(make_recurrent_train(config4))(
        jax.random.key(0), jax.tree.map(lambda x: x[0], hparams)
    )
    assert len(s4.hidden.sharding.device_set) == 4  # environments really were split
    for a, b in zip(
        jax.tree.leaves(jax.tree.map(lambda x: x[0], s1.params)),
        jax.tree.leaves(s4.params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m1["value_loss"][0], m4["value_loss"], rtol=1e-4)
    np.testing.assert_allclose(m1["episode_return"][0], m4["episode_return"])
    np.testing.assert_allclose(s1.hidden[0], s4.hidden, rtol=1e-4, atol=1e-6)
