"""experiments/offline.py: collect or load a dataset, train over seeds, score."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location(
        "offline_experiment", ROOT / "experiments" / "offline.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_collect_train_and_score(tmp_path):
    exp = load_script()
    config = exp.Config(
        env="CartPole-v1",
        kind="random",
        num_transitions=600,
        algo="bc",
        algo_config='{"hidden_sizes": [16], "batch_size": 32}',
        num_steps=40,
        eval_every=20,
        num_seeds=2,
        eval_episodes=2,
        out_dir=str(tmp_path / "run"),
        save_minari=True,
    )
    summary = exp.main(config)
    out = tmp_path / "run"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["seed"], r["step"]) for r in rows] == [
        (0, 20),
        (1, 20),
        (0, 40),
        (1, 40),
    ]
    assert all("loss" in r and r["normalized_score"] is None for r in rows)
    assert summary["dataset"]["kind"] == "random"
    assert summary["training"]["final_normalized_score_mean"] is None  # no expert
    assert len(summary["training"]["final_return_per_seed"]) == 2
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert "| bc | cartpole-random-v0 |" in (out / "scores.md").read_text()
    assert (out / "minari").is_dir()

    # Load what it wrote (HDF5) with reference returns given on the command line.
    again = exp.main(
        exp.Config(
            load=str(out / "dataset.hdf5"),
            random_return=20.0,
            expert_return=500.0,
            out_dir=str(tmp_path / "loaded"),
        )
    )
    assert again["dataset"]["transitions"] == summary["dataset"]["transitions"]
    assert again["dataset"]["normalized_score"] == pytest.approx(
        100 * (summary["dataset"]["return_mean"] - 20.0) / 480.0
    )
    assert "training" not in again


def test_bad_flags():
    exp = load_script()
    with pytest.raises(
        ValueError, match="unknown offline algorithm 'bcc'.*did you mean bc"
    ):
        exp.main(
            exp.Config(
                kind="random",
                num_transitions=200,
                algo="bcc",
                num_steps=2,
                eval_every=1,
                out_dir="/tmp/cj_offline_bad",
            )
        )
    with pytest.raises(ValueError, match="multiple of --eval-every"):
        exp.main(exp.Config(num_steps=10, eval_every=3))
    with pytest.raises(ValueError, match="did you mean medium-replay"):
        exp.main(exp.Config(kind="medium_replay"))
    with pytest.raises(ValueError, match="algo-config: not JSON"):
        exp.main(exp.Config(algo_config="{batch: 3}"))
