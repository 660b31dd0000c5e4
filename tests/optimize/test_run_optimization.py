"""run_optimization and the CLI, end to end, on small budgets."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from convergence_jax.cli import main
from convergence_jax.optimize import config_from_dict, run_optimization

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def small_quickstart(out, **optimizer):
    data = yaml.safe_load(QUICKSTART.read_text())
    data["optimizer"].update(
        {
            "generations": 4,
            "population_size": 8,
            "evaluations_per_generation": 24,
            "batch_size": 4,
        }
        | optimizer
    )
    data["output"]["dir"] = str(out)
    return data


def test_quickstart_jax_path_writes_results_and_report(tmp_path):
    out = tmp_path / "run"
    result = run_optimization(config_from_dict(small_quickstart(out)), progress=False)
    best = json.loads((out / "best_config.json").read_text())
    assert best["config"] == result.best_config
    assert set(best["config"]) == {"temperature", "top_p", "model", "max_tokens"}
    assert best["config"]["model"] in ("small", "medium", "large")
    detail = json.loads((out / "detailed_results.json").read_text())
    # best_config.json, recomputed by hand from every recorded evaluation: the raw
    # pooled mean, the run's mean and the score shrunk by one pseudo-evaluation
    every = [e for g in detail["generations"] for e in g["evaluations"]]
    mine = [e["reward"] for e in every if e["config"] == best["config"]]
    run_mean = np.mean([e["reward"] for e in every])
    assert best["evaluations"] == len(mine) == result.best_evaluations
    assert best["mean_reward"] == pytest.approx(np.mean(mine))
    assert best["run_mean_reward"] == pytest.approx(run_mean)
    assert best["score"] == pytest.approx((np.sum(mine) + run_mean) / (len(mine) + 1))
    assert result.best_score == best["score"]
    assert best["generations_completed"] == 4
    # the winner's raw mean is above the run's mean; the shrunk score lies between
    assert run_mean < best["score"] < best["mean_reward"]
    assert detail["status"] == "complete"
    assert len(detail["generations"]) == 4
    for g in detail["generations"]:
        assert len(g["evaluations"]) == 24  # every evaluation is recorded
        assert len(g["population"]) == 8
        e = g["evaluations"][0]
        assert set(e["metrics"]) == {"quality", "latency_ms", "cost_usd"}
        assert 0.0 <= e["reward"] <= 1.0
    report = (out / "report.md").read_text()
    assert "![convergence](convergence.png)" in report
    assert "Top 10 configurations" in report
    assert (out / "convergence.png").stat().st_size > 10_000


def test_quickstart_finds_a_good_configuration(tmp_path):
    """The default budget gets close to the grid-search optimum (0.768)."""
    from convergence_jax.optimize import load_config, reward_spec
    from convergence_jax.optimize.objectives import simulated_objective

    data = small_quickstart(
        tmp_path,
        generations=12,
        population_size=16,
        evaluations_per_generation=64,
        batch_size=8,
    )
    result = run_optimization(config_from_dict(data), progress=False, write=False)
    config = load_config(QUICKSTART)
    space = config.space()
    exact = simulated_objective(space, noisy=False)
    arrays = space.encode([result.best_config])
    true = float(reward_spec(config).combine(exact(arrays))[0])
    random = space.sample(__import__("jax").random.key(0), 4096)
    random_mean = float(np.mean(reward_spec(config).combine(exact(random))))
    assert true > 0.74, (true, result.best_config)
    assert true > random_mean + 0.15


PY_OBJECTIVE = textwrap.dedent(
    """
    import time

    def evaluate(config):
        x = config["x"]
        if config["mode"] == "crash":
            raise RuntimeError("service unavailable")
        if config["mode"] == "hang":
            time.sleep(60)
        return {"quality": 1.0 - (x - 0.25) ** 2, "latency_ms": 100.0 * x}
    """
)


def python_config(tmp_path, generations=3):
    (tmp_path / "objective.py").write_text(PY_OBJECTIVE)
    return {
        "search_space": {
            "x": {"type": "float", "min": 0.0, "max": 1.0},
            "mode": {"type": "categorical", "choices": ["ok", "crash", "hang"]},
        },
        "objective": {
            "type": "python",
            "target": "objective.py:evaluate",
            "timeout_s": 0.5,
            "max_workers": 4,
        },
        "metrics": {
            "quality": {"goal": "maximize", "weight": 0.8, "min": 0.0, "max": 1.0},
            "latency_ms": {"goal": "minimize", "weight": 0.2, "min": 0.0, "max": 100.0},
        },
        "optimizer": {
            "generations": generations,
            "population_size": 6,
            "evaluations_per_generation": 12,
            "batch_size": 3,
        },
        "output": {"dir": str(tmp_path / "out")},
    }


def test_python_objective_records_failures_and_goes_on(tmp_path):
    config = config_from_dict(python_config(tmp_path), base_dir=tmp_path)
    result = run_optimization(config, progress=False)
    detail = json.loads((tmp_path / "out" / "detailed_results.json").read_text())
    evaluations = [e for g in detail["generations"] for e in g["evaluations"]]
    assert len(evaluations) == 3 * 12
    errors = [e["error"] for e in evaluations if e["error"]]
    crash = [e for e in evaluations if e["config"]["mode"] == "crash"]
    hang = [e for e in evaluations if e["config"]["mode"] == "hang"]
    assert all("RuntimeError: service unavailable" in e["error"] for e in crash)
    assert all(e["error"].startswith("TimeoutError") for e in hang)
    assert all(e["reward"] == 0.0 for e in crash + hang)
    assert len(errors) == len(crash) + len(hang)
    assert result.best_config["mode"] == "ok"
    report = (tmp_path / "out" / "report.md").read_text()
    if errors:
        assert "Failed evaluations" in report


def test_interrupted_python_run_keeps_finished_generations(tmp_path, monkeypatch):
    from convergence_jax.optimize import run as run_module

    config = config_from_dict(python_config(tmp_path, generations=4), base_dir=tmp_path)
    calls = {"n": 0}
    real = run_module.evaluate_batch

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2 * (1 + 2):  # two whole generations: 1 full round + 2 rounds
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate_batch", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_optimization(config, progress=False)
    detail = json.loads((tmp_path / "out" / "detailed_results.json").read_text())
    assert detail["status"] == "interrupted"
    assert len(detail["generations"]) == 2


def test_running_snapshots_are_spaced_by_their_cost(tmp_path, monkeypatch):
    """The running detailed_results.json holds every generation so far; with a
    slow write (50 ms here) it is not rewritten after each fast generation, and the
    final file still holds them all."""
    from convergence_jax.optimize import run as run_module

    data = python_config(tmp_path, generations=8)
    data["search_space"]["mode"]["choices"] = ["ok"]  # fast generations: no timeouts
    config = config_from_dict(data, base_dir=tmp_path)
    real, statuses = run_module._write_results, []

    def slow_write(out, config, me, records, status, seconds):
        time.sleep(0.05)
        statuses.append((status, len(records)))
        real(out, config, me, records, status, seconds)

    monkeypatch.setattr(run_module, "_write_results", slow_write)
    run_optimization(config, progress=False)
    running = [n for status, n in statuses if status == "running"]
    assert running[0] == 1 and len(running) < 8, statuses
    assert statuses[-1] == ("complete", 8)
    detail = json.loads((tmp_path / "out" / "detailed_results.json").read_text())
    assert len(detail["generations"]) == 8


def test_cli_optimize_with_flag_overrides(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "optimize",
            str(QUICKSTART),
            "--quiet",
            "--optimizer.generations",
            "2",
            "--optimizer.population-size",
            "8",
            "--optimizer.evaluations-per-generation",
            "16",
            "--output.dir",
            str(out),
        ]
    )
    assert code == 0
    detail = json.loads((out / "detailed_results.json").read_text())
    assert len(detail["generations"]) == 2
    assert detail["config"]["optimizer"]["population_size"] == 8
    assert "best configuration" in capsys.readouterr().out


def test_cli_reports_bad_config_with_the_key(tmp_path, capsys):
    data = yaml.safe_load(QUICKSTART.read_text())
    data["optimizer"]["generatons"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["optimize", str(path)]) == 2
    err = capsys.readouterr().err
    assert "optimizer.generatons: unknown key (did you mean 'generations'?)" in err
    assert main(["optimize", str(QUICKSTART), "--optimizer.generations", "0"]) == 2
    assert "optimizer.generations: must be > 0" in capsys.readouterr().err


def test_console_script_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "convergence_jax.cli",
            "optimize",
            str(QUICKSTART),
            "--help",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0
    assert "--optimizer.generations" in out.stdout


def test_host_loop_replays_propose_observe_evolve(tmp_path):
    """The host loop (one compiled call per round) proposes the same arms, and
    reaches the same posteriors, as calling mab_evolution's functions one by one."""
    import jax

    from convergence_jax.optimize.config import reward_spec
    from convergence_jax.optimize.run import build_optimizer

    (tmp_path / "obj.py").write_text(
        "def f(c):\n"
        "    return {'q': 1.0 - (c['x'] - 0.25) ** 2 - 0.1 * (c['m'] == 'b')}\n"
    )
    data = {
        "search_space": {
            "x": {"type": "float", "min": 0.0, "max": 1.0},
            "m": {"type": "categorical", "choices": ["a", "b"]},
        },
        "objective": {"type": "python", "target": "obj.py:f"},
        "metrics": {"q": {"goal": "maximize", "min": 0.0, "max": 1.0}},
        "optimizer": {
            "generations": 3,
            "population_size": 6,
            "evaluations_per_generation": 14,
            "batch_size": 4,
            "seed": 3,
        },
    }
    config = config_from_dict(data, base_dir=tmp_path)
    result = run_optimization(config, progress=False, write=False)

    me, params = build_optimizer(config, reward_spec(config))
    space = config.space()

    def rewards_of(state, arms):
        configs = space.decode(jax.device_get(me.configs(state, arms)))
        return np.asarray(
            [
                np.clip(1.0 - (c["x"] - 0.25) ** 2 - 0.1 * (c["m"] == "b"), 0, 1)
                for c in configs
            ],
            np.float32,
        )

    state = me.init(jax.random.key(3), params)
    key = jax.random.fold_in(jax.random.key(3), 1)
    for record in result.generations:
        key, k_first, k_evolve = jax.random.split(key, 3)
        arms = np.arange(6, dtype=np.int32)
        seen = list(arms)
        state = me.observe(k_first, state, arms, rewards_of(state, arms), params)
        for _ in range(me.num_rounds):
            key, k_propose, k_observe = jax.random.split(key, 3)
            arms = me.propose(k_propose, state, params)
            seen += list(np.asarray(arms))
            state = me.observe(k_observe, state, arms, rewards_of(state, arms), params)
        state, ended = me.evolve(k_evolve, state, params)
        assert [e["arm"] for e in record["evaluations"]] == [int(a) for a in seen]
        np.testing.assert_allclose(
            [p["posterior_mean"] for p in record["population"]],
            np.asarray(ended["fitness"]),
            rtol=1e-6,
        )
