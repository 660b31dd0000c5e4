"""offline.datasets: collection (D4RL kinds), Minari and D4RL-HDF5 files."""

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.offline.dataset import Transitions, episode_returns
from convergence_jax.offline.datasets import (
    KINDS,
    CollectConfig,
    collect_datasets,
    dataset_id,
    load_d4rl_hdf5,
    load_minari,
    make_dataset,
    save_d4rl_hdf5,
    save_minari,
)
from convergence_jax.offline.evaluate import normalized_score
from convergence_jax.rl.ppo import PPOConfig

FIELDS = tuple(Transitions.__dataclass_fields__)


def tiny(env_id, **kw):
    ppo = PPOConfig(
        env_id=env_id,
        total_timesteps=kw.pop("total_timesteps", 1024),
        num_envs=4,
        num_steps=32,
        num_minibatches=2,
        update_epochs=1,
        hidden_sizes=(16,),
        learning_rate=3e-3,
    )
    base = dict(
        ppo=ppo,
        num_transitions=800,
        num_envs=4,
        eval_every=2,
        eval_episodes=4,
        reference_episodes=8,
    )
    return CollectConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def cartpole():
    return collect_datasets(
        jax.random.key(0), "CartPole-v1", config=tiny("CartPole-v1")
    )


def assert_complete_episodes(data: Transitions):
    """Every episode ends at a terminal or timeout, next obs continue obs."""
    done = np.asarray(data.terminals) | np.asarray(data.timeouts)
    assert done[-1]
    assert not (np.asarray(data.terminals) & np.asarray(data.timeouts)).any()
    obs, nxt = np.asarray(data.observations), np.asarray(data.next_observations)
    inside = ~done[:-1]
    np.testing.assert_array_equal(nxt[:-1][inside], obs[1:][inside])


def assert_same(a: Transitions, b: Transitions):
    for f in FIELDS:
        x, y = np.asarray(getattr(a, f)), np.asarray(getattr(b, f))
        assert x.dtype == y.dtype, f
        np.testing.assert_array_equal(x, y, err_msg=f)


def test_collect_every_kind(cartpole):
    assert tuple(cartpole) == KINDS
    for kind, ds in cartpole.items():
        data = ds.transitions
        assert ds.kind == kind and ds.env_id == "CartPole-v1"
        assert data.observations.shape == (data.size, 4)
        assert data.actions.shape == (data.size,) and data.actions.dtype == jnp.int32
        assert set(np.unique(data.actions)) <= {0, 1}
        assert_complete_episodes(data)
        np.testing.assert_allclose(ds.episode_returns, episode_returns(data))
        assert ds.normalized_score == pytest.approx(
            normalized_score(ds.episode_returns, ds.random_return, ds.expert_return)
        )
        assert ds.random_return == cartpole["random"].random_return
        assert ds.expert_return == cartpole["random"].expert_return
    for kind in ("random", "medium", "expert"):
        assert 400 <= cartpole[kind].size <= 800  # trailing episodes dropped
    med, exp = cartpole["medium"].transitions, cartpole["expert"].transitions
    me = cartpole["medium-expert"].transitions
    for f in FIELDS:
        np.testing.assert_array_equal(
            getattr(me, f), np.concatenate([getattr(med, f), getattr(exp, f)])
        )


def test_medium_and_replay_follow_the_run(cartpole):
    meta = cartpole["medium"].metadata
    evals = np.asarray(meta["checkpoint_eval_returns"])
    assert len(evals) == 1024 // (4 * 32) // 2
    rnd, exp = cartpole["medium"].random_return, cartpole["medium"].expert_return
    frac = (evals - rnd) / (exp - rnd)
    in_band = np.flatnonzero((frac >= 1 / 3) & (frac <= 1 / 2))
    if in_band.size:
        assert meta["medium_in_band"] and meta["medium_checkpoint"] == in_band[0]
    else:
        assert not meta["medium_in_band"]
        assert meta["medium_checkpoint"] == np.argmin(np.abs(frac - 5 / 12))
    assert meta["expert_checkpoint"] == len(evals) - 1 - np.argmax(evals[::-1])
    # medium-replay: the PPO run's own rollouts (4 envs x 32 steps x 2 updates a
    # chunk) up to the medium checkpoint, less each env's unfinished episode.
    steps = (meta["medium_checkpoint"] + 1) * 2 * 32 * 4
    replay = cartpole["medium-replay"]
    assert steps - 4 * 500 < replay.size <= steps
    assert replay.metadata["medium_env_steps"] == steps


def test_deterministic_given_the_key(cartpole):
    config = tiny("CartPole-v1")
    again = collect_datasets(jax.random.key(0), "CartPole-v1", config=config)
    for kind in KINDS:
        assert_same(again[kind].transitions, cartpole[kind].transitions)
    other = collect_datasets(
        jax.random.key(1), "CartPole-v1", ("random",), config=config
    )
    assert other["random"].size != cartpole["random"].size or not np.array_equal(
        other["random"].transitions.observations,
        cartpole["random"].transitions.observations,
    )


@pytest.fixture(scope="module")
def pendulum():
    # Two chunks of 16 updates: even the first checkpoint's replay holds
    # 16 x 32 = 512 steps of each environment, two whole 200-step episodes.
    config = tiny(
        "Pendulum-v1", num_transitions=1600, total_timesteps=4096, eval_every=16
    )
    return collect_datasets(
        jax.random.key(2), "Pendulum-v1", ("random", "medium-replay"), config
    )


def test_pendulum_continuous_with_timeouts(pendulum):
    ds = pendulum
    for d in ds.values():
        data = d.transitions
        assert data.actions.shape == (data.size, 1)
        assert data.actions.dtype == jnp.float32
        assert np.abs(np.asarray(data.actions)).max() <= 2.0
        # Pendulum never terminates; its 200-step time limit is a timeout.
        assert not np.asarray(data.terminals).any()
        assert (np.diff(np.flatnonzero(data.timeouts), prepend=-1) == 200).all()
        assert_complete_episodes(data)
    assert ds["random"].size == 1600  # 4 envs x 400 steps = 2 episodes each
    assert ds["medium-replay"].expert_return is not None


def test_minari_round_trip(cartpole, tmp_path):
    minari = pytest.importorskip("minari")
    for kind in ("medium-replay", "medium-expert"):
        ds = cartpole[kind]
        path = save_minari(ds, tmp_path)
        assert path == tmp_path / dataset_id(ds)
        assert (path / "data" / "main_data.hdf5").is_file()
        assert (path / "data" / "metadata.json").is_file()
        back = load_minari(path)
        assert_same(back.transitions, ds.transitions)
        assert (back.name, back.env_id, back.kind) == (ds.name, ds.env_id, ds.kind)
        assert back.random_return == ds.random_return
        assert back.expert_return == ds.expert_return
        assert back.normalized_score == pytest.approx(ds.normalized_score)
        assert back.metadata["medium_checkpoint"] == ds.metadata["medium_checkpoint"]
        # Minari's own reader sees the same episodes and reference scores.
        m = minari.MinariDataset(path / "data")
        assert m.total_steps == ds.size and m.total_episodes == ds.num_episodes
        score = minari.get_normalized_score(m, ds.episode_returns.mean())
        assert 100 * float(score) == pytest.approx(ds.normalized_score)
    with pytest.raises(FileExistsError):
        save_minari(cartpole["medium-replay"], tmp_path)
    save_minari(cartpole["medium-replay"], tmp_path, overwrite=True)


def test_minari_continuous_round_trip(pendulum, tmp_path):
    pytest.importorskip("minari")
    ds = pendulum["medium-replay"]
    back = load_minari(save_minari(ds, tmp_path))
    assert_same(back.transitions, ds.transitions)
    assert back.normalized_score == pytest.approx(ds.normalized_score)


def test_minari_rejects_broken_episodes(cartpole, tmp_path):
    pytest.importorskip("minari")
    data = cartpole["random"].transitions
    broken = data.replace(timeouts=jnp.zeros_like(data.timeouts))
    broken = broken.replace(terminals=broken.terminals.at[:-1].set(False))
    ds = make_dataset(broken, "CartPole-v1", "random")
    with pytest.raises(ValueError, match="next_observations.*inside one episode"):
        save_minari(ds, tmp_path)


def write_d4rl(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def test_d4rl_hdf5_with_next_observations(tmp_path):
    rng = np.random.default_rng(0)
    n = 6
    obs = rng.normal(size=(n, 3)).astype(np.float64)
    path = tmp_path / "pendulum.hdf5"
    write_d4rl(
        path,
        observations=obs,
        next_observations=obs + 1,
        actions=rng.uniform(-2, 2, size=(n, 1)),
        rewards=rng.normal(size=(n, 1)),
        terminals=np.array([0, 0, 1, 0, 0, 0], bool),
        timeouts=np.array([0, 0, 0, 0, 0, 1], bool),
    )
    ds = load_d4rl_hdf5(
        path, env_id="Pendulum-v1", random_return=-1.0, expert_return=1.0
    )
    data = ds.transitions
    assert data.size == n and data.observations.dtype == jnp.float32
    np.testing.assert_allclose(data.next_observations, obs + 1, rtol=1e-6)
    assert data.rewards.shape == (n,) and data.actions.shape == (n, 1)
    assert ds.num_episodes == 2 and ds.normalized_score is not None


def test_d4rl_hdf5_without_next_observations(tmp_path):
    # Two episodes: rows 0-2 end at a terminal, rows 3-5 at a timeout (row 5).
    obs = np.arange(12, dtype=np.float32).reshape(6, 2) * np.array([1, 0], np.float32)
    obs = np.concatenate([obs, np.zeros((6, 2), np.float32)], 1)  # CartPole: 4 dims
    path = tmp_path / "cartpole.hdf5"
    write_d4rl(
        path,
        observations=obs,
        actions=np.array([0, 1, 0, 1, 1, 0], np.float32),  # whole-number floats
        rewards=np.ones(6),
        terminals=np.array([0, 0, 1, 0, 0, 0]),
        timeouts=np.array([0, 0, 0, 0, 0, 1]),
    )
    data = load_d4rl_hdf5(path, env_id="CartPole-v1").transitions
    # The timeout row's next observation is not in the file: it is dropped and
    # the row before it becomes the timeout (D4RL's qlearning_dataset drops it).
    assert data.size == 5 and data.actions.dtype == jnp.int32
    np.testing.assert_array_equal(data.terminals, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(data.timeouts, [0, 0, 0, 0, 1])
    next_obs = np.asarray(data.next_observations)
    np.testing.assert_array_equal(next_obs[[0, 1, 3]], obs[[1, 2, 4]])
    np.testing.assert_array_equal(data.next_observations[2], obs[2])  # terminal
    assert_complete_episodes(data)


def test_d4rl_hdf5_round_trip(cartpole, tmp_path):
    ds = cartpole["medium"]
    back = load_d4rl_hdf5(save_d4rl_hdf5(ds, tmp_path / "medium.hdf5"))
    assert_same(back.transitions, ds.transitions)
    assert (back.env_id, back.kind, back.name) == (ds.env_id, ds.kind, ds.name)
    assert back.normalized_score == pytest.approx(ds.normalized_score)


def test_d4rl_hdf5_bad_files(tmp_path):
    rng = np.random.default_rng(1)
    good = dict(
        observations=rng.normal(size=(4, 4)),
        actions=np.array([0, 1, 1, 0]),
        rewards=np.ones(4),
        terminals=np.array([0, 0, 0, 1]),
    )

    def load(**changes):
        path = tmp_path / "f.hdf5"
        arrays = {k: v for k, v in {**good, **changes}.items() if v is not None}
        write_d4rl(path, **arrays)
        return load_d4rl_hdf5(path, env_id="CartPole-v1")

    load()
    with pytest.raises(ValueError, match="lacks terminals"):
        load(terminals=None)
    with pytest.raises(ValueError, match="NaN or infinite.*row 2"):
        load(rewards=np.array([1.0, 1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="observations have 4 dimensions.*have 3"):
        load(observations=rng.normal(size=(4, 3)))
    with pytest.raises(ValueError, match=r"values must lie in \[0, 2\)"):
        load(actions=np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="not whole numbers"):
        load(actions=np.array([0.5, 1, 1, 0]))
    with pytest.raises(ValueError, match="expected 4 rows"):
        load(rewards=np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        load(
            observations=np.zeros((0, 4)),
            actions=np.zeros(0, int),
            rewards=np.zeros(0),
            terminals=np.zeros(0),
        )
    with pytest.raises(FileNotFoundError):
        load_d4rl_hdf5(tmp_path / "missing.hdf5")


def test_bad_collect_input():
    config = tiny("CartPole-v1")
    with pytest.raises(ValueError, match="did you mean medium-replay"):
        collect_datasets(jax.random.key(0), "CartPole-v1", ("medium_replay",), config)
    with pytest.raises(ValueError, match="did you mean CartPole-v1"):
        collect_datasets(jax.random.key(0), "Cartpole-v1", ("random",), config)
    with pytest.raises(ValueError, match="no PPO preset"):
        collect_datasets(jax.random.key(0), "MountainCar-v0", ("random",))
    with pytest.raises(ValueError, match="are for 'Acrobot-v1'"):
        collect_datasets(jax.random.key(0), "Acrobot-v1", ("random",), config)
    with pytest.raises(ValueError, match="CollectConfig.num_transitions"):
        collect_datasets(
            jax.random.key(0),
            "CartPole-v1",
            ("random",),
            tiny("CartPole-v1", num_transitions=0),
        )
    with pytest.raises(ValueError, match="medium_band"):
        collect_datasets(
            jax.random.key(0),
            "CartPole-v1",
            ("random",),
            tiny("CartPole-v1", medium_band=(0.6, 0.4)),
        )


def test_make_dataset_checks_against_the_env(cartpole):
    data = cartpole["random"].transitions
    with pytest.raises(ValueError, match="the environment's observations have 3"):
        make_dataset(data, "Pendulum-v1", "random")
    with pytest.raises(ValueError, match="NaN or infinite"):
        make_dataset(
            data.replace(rewards=data.rewards.at[0].set(jnp.nan)), "CartPole-v1", "x"
        )
    with pytest.raises(ValueError, match="empty dataset"):
        make_dataset(jax.tree.map(lambda x: x[:0], data), "CartPole-v1", "x")
