"""experiments/ppo.py writes its outputs and rejects bad flags cleanly."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from convergence_jax import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "experiments" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_ppo_experiment_writes_metrics_curve_checkpoint_and_summary(tmp_path):
    ppo = load_script("ppo")
    config = ppo.Config(
        total_timesteps=4 * 32 * 5,
        num_envs=4,
        num_steps=32,
        num_seeds=2,
        out_dir=str(tmp_path / "run"),
        progress=False,
    )
    summary = ppo.main(config)
    out = tmp_path / "run"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 5
    row = json.loads(lines[-1])
    assert row["seed"] == 1 and row["update"] == 5 and row["env_steps"] == 640
    assert (out / "learning_curve.png").stat().st_size > 1000
    saved = json.loads((out / "summary.json").read_text())
    assert (
        saved["num_runs"] == 2
        and len(saved["results"][0]["final_return_per_seed"]) == 2
    )
    assert summary["env_steps_per_run"] == 640
    like = ppo.initial_states(ppo.build(config))
    states = checkpoint.restore(out / "checkpoint", like=like)
    np.testing.assert_array_equal(states.step, [5, 5])
    assert jax.tree.leaves(states.params)[0].shape[0] == 2


def test_ppo_experiment_bad_flag_is_a_clean_error():
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "ppo.py"), "--env", "CartPole-v9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error: PPOConfig.env_id: unknown gymnax environment" in result.stderr
    assert "Traceback" not in result.stderr
