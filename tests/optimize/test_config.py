import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from convergence_jax.cli import InitArgs, starter_yaml
from convergence_jax.optimize import ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def _quickstart():
    return yaml.safe_load(QUICKSTART.read_text())


def test_quickstart_loads():
    config = load_config(QUICKSTART)
    assert config.objective.type == "simulated_llm"
    assert set(config.space().names) == {"temperature", "top_p", "model", "max_tokens"}
    assert config.metrics["latency_ms"].goal == "minimize"


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["optimizer"].update(generations="ten"),
            "optimizer.generations: expected an integer, got 'ten'",
        ),
        (
            lambda d: d["optimizer"].update(generatons=3),
            "optimizer.generatons: unknown key (did you mean 'generations'?)",
        ),
        (lambda d: d.update(optimiser={}), "optimiser: unknown key"),
        (
            lambda d: d["optimizer"].update(selection="best"),
            "optimizer.selection: expected one of",
        ),
        (
            lambda d: d["metrics"]["quality"].update(weight="high"),
            "metrics.quality.weight: expected a number",
        ),
        (lambda d: d["metrics"]["quality"].update(goal="up"), "metrics.quality.goal"),
        (
            lambda d: d["search_space"]["top_p"].update(min=2.0),
            "search_space: parameter 'top_p': min (2.0) is greater than max",
        ),
        (
            lambda d: d["optimizer"].update(evaluations_per_generation=4),
            "optimizer.evaluations_per_generation",
        ),
        (lambda d: d["optimizer"].update(elites=16), "optimizer.elites"),
        (lambda d: d["objective"].update(type="python"), "objective.target"),
        (lambda d: d["metrics"]["quality"].pop("min"), "metrics.quality"),
        (lambda d: d.update(objective=[1, 2]), "objective: expected a mapping"),
    ],
)
def test_bad_configs_name_the_key(edit, message):
    data = _quickstart()
    edit(data)
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert message in str(info.value)


def test_bad_yaml_file_reports_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optimizer:\n  generations: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML.*line"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(tmp_path / "empty.yaml")


@pytest.mark.parametrize("objective", ["simulated_llm", "python", "jax", "http"])
def test_init_starter_configs_are_valid(objective, tmp_path):
    from convergence_jax.cli import HTTP_TEST_CASES

    (tmp_path / "test_cases.json").write_text(json.dumps(HTTP_TEST_CASES))
    args = InitArgs(objective=objective, target="mod:fn")
    data = yaml.safe_load(starter_yaml(args))
    config = config_from_dict(data, tmp_path)
    assert config.objective.type == objective


def test_init_cli_writes_file_without_a_tty(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "convergence_jax.cli",
        "init",
        "--path",
        "c.yaml",
        "--objective",
        "python",
        "--target",
        "obj.py:f",
    ]
    out = subprocess.run(
        cmd,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    config = load_config(tmp_path / "c.yaml")
    assert config.objective.target == "obj.py:f"
    again = subprocess.run(
        cmd,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert again.returncode == 2 and "exists" in again.stderr


def test_init_asks_questions_when_interactive(tmp_path, monkeypatch):
    from convergence_jax import cli

    answers = iter(["python", "my.py:evaluate", "runs/x", str(tmp_path / "q.yaml")])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    assert cli.main(["init", "--interactive"]) == 0
    config = load_config(tmp_path / "q.yaml")
    assert config.objective.target == "my.py:evaluate"
    assert config.output.dir == "runs/x"


def test_config_is_frozen():
    config = load_config(QUICKSTART)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optimizer.generations = 3
