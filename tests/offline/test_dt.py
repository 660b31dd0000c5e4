"""Decision Transformer: returns-to-go and timesteps vs NumPy, windows, causal
masking, padding, the compiled program (jit, vmap, no recompile, 4 devices == 1),
acting with a context in gymnax, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.offline import dt
from convergence_jax.offline._common import env_spec, hparam_grid
from tests.offline import _tiny

TINY = dict(
    num_steps=3, batch_size=8, context_length=4, embed_dim=16, num_layers=1,
    num_heads=2, max_timestep=64, warmup_steps=2,
)  # fmt: skip


def numpy_rtg(rewards, ends):
    out, future = np.zeros(len(rewards)), 0.0
    for i in reversed(range(len(rewards))):
        future = rewards[i] + (0.0 if ends[i] else future)
        out[i] = future
    return out


def test_returns_to_go_and_timesteps_match_numpy():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=23).astype(np.float32)
    ends = np.zeros(23, bool)
    ends[[4, 5, 13]] = True  # episodes 0-4, 5, 6-13, and an unfinished 14-22
    np.testing.assert_allclose(
        dt.returns_to_go(rewards, ends), numpy_rtg(rewards, ends), rtol=1e-5
    )
    timesteps, starts = dt.episode_timesteps(jnp.asarray(ends))
    expected_t = np.concatenate([np.arange(5), [0], np.arange(8), np.arange(9)])
    np.testing.assert_array_equal(timesteps, expected_t)
    np.testing.assert_array_equal(starts, np.repeat([0, 5, 6, 14], [5, 1, 8, 9]))
    # terminals and timeouts both end an episode
    data = _tiny.transitions(True)
    seq = dt.sequence_data(data, _tiny.DISCRETE)
    both = np.asarray(data.terminals | data.timeouts)
    np.testing.assert_allclose(seq.rtg, numpy_rtg(np.asarray(data.rewards), both), 1e-5)
    with pytest.raises(AssertionError):
        dt.returns_to_go(jnp.zeros(3), jnp.zeros(4, bool))


def test_windows_end_at_a_row_and_stay_in_its_episode():
    data = _tiny.transitions(False, n=64)
    seq = dt.sequence_data(data, _tiny.CONTINUOUS)
    w = dt.sample_windows(jax.random.key(0), seq, 32, 6)
    mask = np.asarray(w["mask"]).astype(bool)
    assert mask[:, -1].all()  # the window ends at a real row
    # left padding only: once real, real to the end
    assert np.all(np.diff(mask.astype(int), axis=1) >= 0)
    t = np.asarray(w["timesteps"])
    for row in range(32):
        real = t[row][mask[row]]
        np.testing.assert_array_equal(np.diff(real), 1)  # consecutive, one episode
        if (~mask[row]).any():
            assert real[0] == 0  # padded only where the episode began
    assert np.all(np.asarray(w["rtg"])[~mask] == 0)


@pytest.fixture(scope="module")
def continuous():
    config = dt.DTConfig(**TINY)
    program = dt.make_dt(config, _tiny.OBS_DIM, _tiny.CONTINUOUS)
    state = jax.jit(program.init)(jax.random.key(0), _tiny.transitions(False))
    return program, state


def test_future_timesteps_do_not_change_earlier_predictions(continuous):
    program, state = continuous
    rng = np.random.default_rng(1)
    k = TINY["context_length"]
    window = {
        "obs": jnp.asarray(rng.normal(size=(1, k, _tiny.OBS_DIM)), jnp.float32),
        "actions": jnp.asarray(rng.uniform(-1, 1, (1, k, 1)), jnp.float32),
        "rtg": jnp.asarray(rng.normal(size=(1, k)), jnp.float32),
        "timesteps": jnp.arange(k)[None],
        "mask": jnp.ones((1, k), jnp.int32),
    }
    predict = jax.jit(program.predict)
    base = np.asarray(predict(state, window))
    for t in range(k):
        changed = dict(window)
        changed["obs"] = window["obs"].at[:, t:].add(3.0)
        changed["rtg"] = window["rtg"].at[:, t:].add(5.0)
        changed["actions"] = window["actions"].at[:, t:].multiply(-1.0)
        out = np.asarray(predict(state, changed))
        np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-5)
        assert np.abs(out[:, t] - base[:, t]).max() > 1e-4  # R_t, s_t do matter
        # the action of timestep t itself never informs its own prediction
        own = dict(window, actions=window["actions"].at[:, t].multiply(-1.0))
        np.testing.assert_allclose(
            np.asarray(predict(state, own))[:, t], base[:, t], atol=1e-5
        )
    # a left-padded window predicts its real steps as the short one alone does
    short = {name: value[:, 2:] for name, value in window.items()}
    alone = jax.jit(
        dt.make_dt(
            dt.DTConfig(**{**TINY, "context_length": k - 2}),
            _tiny.OBS_DIM,
            _tiny.CONTINUOUS,
        ).predict
    )(state, short)
    padded = dict(window, mask=window["mask"].at[:, :2].set(0))
    padded = {
        n: (v.at[:, :2].set(0) if n not in ("mask",) else v) for n, v in padded.items()
    }
    padded["timesteps"] = jnp.concatenate(
        [jnp.zeros((1, 2), int), short["timesteps"]], 1
    )
    np.testing.assert_allclose(
        np.asarray(predict(state, padded))[:, 2:], np.asarray(alone), atol=1e-5
    )


def test_program_jit_vmap_no_recompile():
    # (seed 0, numbers 0), (seed 1, numbers 0), (seed 0, numbers 1) in one vmap
    config = dt.DTConfig(**TINY)
    program = dt.make_dt(config, _tiny.OBS_DIM, _tiny.DISCRETE)
    train = jax.jit(jax.vmap(program.train, (0, None, 0)))
    seeds = jax.random.split(jax.random.key(0), 2)
    keys = jnp.stack([seeds[0], seeds[1], seeds[0]])
    grid = hparam_grid(program.default_hparams, learning_rate=[1e-3, 1e-3, 3e-3])
    states, metrics = train(keys, _tiny.transitions(True), grid)
    assert metrics["loss"].shape == (3, 3)
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))
    np.testing.assert_allclose(metrics["learning_rate"][2], [1.5e-3, 3e-3, 3e-3])
    w = states.params["params"]["predict_action"]["kernel"]
    assert not np.allclose(w[0], w[1]) and not np.allclose(w[0], w[2])
    train(keys, _tiny.transitions(True, seed=1), jax.tree.map(lambda x: 2 * x, grid))
    assert train._cache_size() == 1


def test_four_devices_equal_one_device():
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    data = _tiny.transitions(True)
    programs = {
        d: dt.make_dt(dt.DTConfig(**TINY, num_devices=d), _tiny.OBS_DIM, _tiny.DISCRETE)
        for d in (1, 4)
    }
    seq = dt.sequence_data(data, _tiny.DISCRETE)
    state = jax.jit(programs[1].init)(jax.random.key(3), data)
    hp = programs[1].default_hparams.replace(learning_rate=1e-2)
    one, four = jax.jit(programs[1].update), jax.jit(programs[4].update)
    for _ in range(2):
        a, ma = one(state, seq, hp)
        b, mb = four(state, seq, hp)
        for x, y in zip(
            jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True
        ):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
        state = a


def test_acting_with_a_context_in_gymnax():
    obs_dim, spec = env_spec("CartPole-v1")
    program = dt.make_dt(dt.DTConfig(**TINY), obs_dim, spec)
    data = _tiny.transitions(True)
    data = data.replace(
        observations=jnp.zeros((64, obs_dim)),
        next_observations=jnp.zeros((64, obs_dim)),
    )
    state = jax.jit(program.init)(jax.random.key(0), data)
    rollout = jax.jit(dt.make_rollout(program, "CartPole-v1"), static_argnums=3)
    returns = np.asarray(rollout(jax.random.key(1), state, 500.0, 3))
    assert returns.shape == (3,) and np.all((returns >= 1) & (returns <= 500))
    # the context: the newest step last, real steps masked in, the rtg falls
    # (jitted: eager, each of their ops would compile on its own)
    start, policy = jax.jit(program.start), jax.jit(program.policy)
    context = start(jnp.ones((2, obs_dim)), 10.0)
    actions, context = policy(state, context, jnp.ones((2, obs_dim)))
    context = jax.jit(program.observe)(context, jnp.array([1.0, 2.0]))
    _, context = policy(state, context, 2 * jnp.ones((2, obs_dim)))
    np.testing.assert_array_equal(context.mask, [[0, 0, 1, 1]] * 2)
    np.testing.assert_allclose(context.rtg[:, -2:], [[10.0, 9.0], [10.0, 8.0]])
    np.testing.assert_array_equal(context.timesteps[:, -2:], [[0, 1]] * 2)
    np.testing.assert_array_equal(context.actions[:, -2], actions)
    with pytest.raises(ValueError, match="not the ones the Decision Transformer"):
        dt.make_rollout(program, "Pendulum-v1")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"embed_dim": 18, "num_heads": 4}, "must split into num_heads"),
        ({"embed_dim": 6, "num_heads": 2}, "even size"),
        ({"context_length": 0}, "context_length: expected an int >= 1"),
        ({"return_scale": 0.0}, "return_scale: expected > 0"),
        ({"batch_size": 6, "num_devices": 4}, "multiple of num_devices"),
    ],
)
def test_bad_config_fails_before_compiling(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dt.make_dt(dt.DTConfig(**{**TINY, **kwargs}), _tiny.OBS_DIM, _tiny.DISCRETE)


def test_dataset_not_matching_the_algorithm():
    program = dt.make_dt(dt.DTConfig(**TINY), _tiny.OBS_DIM, _tiny.DISCRETE)
    with pytest.raises(ValueError, match="built for 2 discrete actions"):
        program.train(jax.random.key(0), _tiny.transitions(False))
