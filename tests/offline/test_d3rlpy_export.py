"""benchmarks/offline_d3rlpy.py's dataset export (no d3rlpy needed): the arrays
given to d3rlpy's MDPDataset hold exactly our transitions, and every algorithm's
matched config builds our program."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from convergence_jax.offline import registry
from convergence_jax.offline._common import env_spec


def _benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "offline_d3rlpy.py"
    spec = importlib.util.spec_from_file_location("bench_offline_d3rlpy", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _episodes(lengths, ends_terminal, obs_dim=3, seed=0):
    """Chained episodes: next_observations[i] == observations[i + 1] inside one."""
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("obs", "next", "act", "rew", "term", "tout")}
    for length, terminal in zip(lengths, ends_terminal, strict=True):
        seq = rng.normal(size=(length + 1, obs_dim)).astype(np.float32)
        cols["obs"].append(seq[:-1])
        cols["next"].append(seq[1:])
        cols["act"].append(rng.uniform(-1, 1, (length, 1)).astype(np.float32))
        cols["rew"].append(rng.normal(size=length).astype(np.float32))
        flag = np.zeros(length, bool)
        flag[-1] = True
        cols["term"].append(flag if terminal else np.zeros(length, bool))
        cols["tout"].append(np.zeros(length, bool) if terminal else flag)
    c = {k: np.concatenate(v) for k, v in cols.items()}
    return {
        "observations": c["obs"],
        "actions": c["act"],
        "rewards": c["rew"],
        "next_observations": c["next"],
        "terminals": c["term"],
        "timeouts": c["tout"],
    }


def _d3rlpy_transitions(arrays):
    """The transitions d3rlpy 2.8.1 picks from these arrays: episodes split at
    terminal | timeout (``EpisodeGenerator``), ``BasicTransitionPicker``: next
    observation = the following row, a zero one at a terminal end, and an
    episode that did not terminate yields one transition less than its rows."""
    ends = np.flatnonzero((arrays["terminals"] > 0) | (arrays["timeouts"] > 0))
    out, start = [], 0
    for end in ends:
        obs = arrays["observations"][start : end + 1]
        terminal = arrays["terminals"][end] > 0
        count = len(obs) if terminal else len(obs) - 1
        for i in range(count):
            last = terminal and i == len(obs) - 1
            nxt = np.zeros_like(obs[i]) if last else obs[i + 1]
            row = start + i
            out.append(
                (
                    obs[i],
                    arrays["actions"][row],
                    float(arrays["rewards"][row, 0]),
                    nxt,
                    bool(last),
                )
            )
        start = end + 1
    return out


def test_export_round_trip_and_d3rlpy_sees_our_transitions(tmp_path):
    bench = _benchmark()
    data = _episodes([5, 3, 4], [False, True, False])
    path = bench.export_dataset(data, -1200.0, -180.0, tmp_path / "d.npz")
    back = bench.load_dataset(path)
    for field in bench.FIELDS:
        np.testing.assert_array_equal(back[field], data[field])
    assert (back["random_return"], back["expert_return"]) == (-1200.0, -180.0)

    arrays = bench.to_d3rlpy_arrays(back)
    assert len(arrays["rewards"]) == 12 + 2  # one extra row per timed-out episode
    picked = _d3rlpy_transitions(arrays)
    assert len(picked) == 12
    for i, (obs, act, rew, nxt, terminal) in enumerate(picked):
        np.testing.assert_array_equal(obs, data["observations"][i])
        np.testing.assert_array_equal(act, data["actions"][i])
        assert rew == pytest.approx(float(data["rewards"][i]))
        assert terminal == bool(data["terminals"][i])
        if not terminal:
            np.testing.assert_array_equal(nxt, data["next_observations"][i])


def test_export_rejects_unchained_rows_and_an_open_episode():
    bench = _benchmark()
    data = _episodes([4, 4], [False, False])
    data["next_observations"] = data["next_observations"].copy()
    data["next_observations"][1] += 1.0
    with pytest.raises(ValueError, match="not one episode"):
        bench.to_d3rlpy_arrays(data)
    open_end = _episodes([4], [False])
    open_end["timeouts"] = np.zeros(4, bool)
    with pytest.raises(ValueError, match="must end an episode"):
        bench.to_d3rlpy_arrays(open_end)


def test_every_matched_config_builds_our_program():
    bench = _benchmark()
    spec = {"hidden": [8], "batch_size": 4, "num_steps": 2, "bear_warmup": 1}
    for key in bench.ALGORITHMS:
        env_id, ours, kw, cls_name, d3_kw = bench.configs(key, spec)
        obs_dim, action_spec = env_spec(env_id)
        program = registry.make_algorithm(ours, obs_dim, action_spec, **kw)
        assert program.config.hidden_sizes == (8,)
        assert d3_kw["batch_size"] == 4
        assert cls_name.startswith("Discrete") == action_spec.discrete
