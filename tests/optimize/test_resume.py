"""Resumable runs: Ctrl-C and kill -9 mid-generation, then --resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from convergence_jax.cli import main
from convergence_jax.optimize import ConfigError, config_from_dict, run_optimization

ROOT = Path(__file__).resolve().parents[2]
GENERATIONS, PER_GENERATION = 3, 12

OBJECTIVE = textwrap.dedent(
    """
    import json, os, time

    def evaluate(config):
        time.sleep(float(os.environ.get("OBJECTIVE_SLEEP", "0")))
        x, y = config["x"], config["y"]
        if config["mode"] == "crash":
            raise RuntimeError("service unavailable")
        value = {"score": 1.0 - (x - 0.3) ** 2 - 0.5 * (y - 2) ** 2 / 25}
        with open(os.environ["CALLS_LOG"], "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "config": config}) + "\\n")
        return value
    """
)


def setup(tmp_path, out="out", generations=GENERATIONS, workers=2):
    (tmp_path / "objective.py").write_text(OBJECTIVE)
    data = {
        "search_space": {
            "x": {"type": "float", "min": 0.0, "max": 1.0},
            "y": {"type": "int", "min": 0, "max": 5},
            "mode": {"type": "categorical", "choices": ["ok", "crash"]},
        },
        "objective": {
            "type": "python",
            "target": "objective.py:evaluate",
            "max_workers": workers,
        },
        "metrics": {"score": {"min": 0.0, "max": 1.0}},
        "optimizer": {
            "generations": generations,
            "population_size": 6,
            "evaluations_per_generation": PER_GENERATION,
            "batch_size": 3,
            "seed": 3,
        },
        "output": {"dir": str(tmp_path / out)},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return data, path


def calls(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def journal_entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def config_key(record: dict) -> str:
    """A call, journal row or reported evaluation, by the config it evaluated."""
    return json.dumps(record["config"], sort_keys=True)


def comparable(generations):
    """Records without wall-clock seconds."""
    out = json.loads(json.dumps(generations))
    for g in out:
        for e in g["evaluations"]:
            e.pop("seconds")
    return out


@pytest.fixture
def calls_log(tmp_path, monkeypatch):
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("CALLS_LOG", str(log))
    monkeypatch.setenv("OBJECTIVE_SLEEP", "0")
    return log


def test_ctrl_c_mid_generation_then_resume_equals_uninterrupted(
    tmp_path, calls_log, monkeypatch
):
    from convergence_jax.optimize import run as run_module

    data, _ = setup(tmp_path, workers=1)  # one call at a time: none left in flight
    config = config_from_dict(data, tmp_path)
    real = run_module.evaluate_batch
    settled = {"n": 0}
    stop_at = PER_GENERATION + 4  # inside the second generation

    def interrupted(fn, configs, **kwargs):
        inner = kwargs["on_result"]

        def on_result(i, evaluation):
            inner(i, evaluation)
            settled["n"] += 1
            if settled["n"] == stop_at:
                raise KeyboardInterrupt

        return real(fn, configs, **kwargs | {"on_result": on_result})

    monkeypatch.setattr(run_module, "evaluate_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_optimization(config, progress=False)
    monkeypatch.setattr(run_module, "evaluate_batch", real)
    out = tmp_path / "out"
    assert json.loads((out / "detailed_results.json").read_text())["status"] == (
        "interrupted"
    )
    ok_before = len(calls(calls_log))
    resumed = run_optimization(config, progress=False, resume=True)
    total = GENERATIONS * PER_GENERATION
    crashes = sum(
        e["config"]["mode"] == "crash"
        for g in resumed.generations
        for e in g["evaluations"]
    )
    # the resumed run called the objective only for what had not settled
    crashes_before = sum(
        json.loads(line)["row"]["error"] is not None
        for line in (out / "evaluations.jsonl").read_text().splitlines()[:stop_at]
    )
    assert len(calls(calls_log)) - ok_before == (total - stop_at) - (
        crashes - crashes_before
    )
    straight = run_optimization(
        config_from_dict(setup(tmp_path, out="straight", workers=1)[0], tmp_path),
        progress=False,
    )
    assert comparable(resumed.generations) == comparable(straight.generations)
    assert resumed.best_config == straight.best_config
    detail = json.loads((out / "detailed_results.json").read_text())
    assert detail["status"] == "complete"
    assert (out / "report.md").is_file()


def test_kill_9_mid_generation_then_resume(tmp_path, calls_log, monkeypatch):
    """kill -9 the CLI mid-generation; --resume finishes with nothing lost and every
    evaluation settled exactly once. Calls are at-least-once (docs/optimize.md): a
    call in flight at the kill may have finished without being journaled, and it
    runs again on resume, so at most max_workers calls repeat, and nothing that was
    journaled does (equality with an uninterrupted run: the Ctrl-C test above)."""
    workers = 2
    monkeypatch.setenv("OBJECTIVE_SLEEP", "0.05")
    data, path = setup(tmp_path, workers=workers)
    data["search_space"]["mode"]["choices"] = ["ok"]  # every call is logged
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    journal = out / "evaluations.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "convergence_jax.cli", "optimize", str(path), "--quiet"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            lines = journal.read_text().count("\n") if journal.is_file() else 0
            if lines >= PER_GENERATION + 5:  # inside the second generation
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.01)
        else:
            pytest.fail("the run did not reach its second generation")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    journaled = journal_entries(journal)
    settled = {(e["generation"], e["round"], e["slot"]) for e in journaled}
    total = GENERATIONS * PER_GENERATION
    assert PER_GENERATION < len(settled) < total  # killed mid-generation
    before = calls(calls_log)
    assert {c["pid"] for c in before} == {proc.pid}

    assert main(["optimize", str(path), "--quiet", "--resume", str(out)]) == 0

    after = [c for c in calls(calls_log) if c["pid"] == os.getpid()]
    assert len(after) == total - len(settled)  # only what had not settled is called
    detail = json.loads((out / "detailed_results.json").read_text())
    assert detail["status"] == "complete"
    evaluations = [e for g in detail["generations"] for e in g["evaluations"]]
    assert len(evaluations) == total  # nothing lost
    entries = journal_entries(journal)
    keys = [(e["generation"], e["round"], e["slot"]) for e in entries]
    assert len(keys) == len(set(keys)) == total  # each evaluation settled once
    assert sorted(map(config_key, (e["row"] for e in entries))) == sorted(
        map(config_key, evaluations)
    )  # the journal holds what the results report

    # At-least-once, and exactly the bound: every evaluation was called; the only
    # extra calls repeat one the killed run finished but had not journaled (in
    # flight at the kill), at most max_workers of them.
    called = Counter(map(config_key, before + after))
    reported = Counter(map(config_key, evaluations))
    assert not reported - called  # every evaluation reported was really called
    repeated = called - reported
    unjournaled = Counter(map(config_key, before)) - Counter(
        map(config_key, (e["row"] for e in journaled))
    )
    assert not repeated - unjournaled  # nothing journaled ran again
    assert repeated.total() == len(before) - len(settled) <= workers, (
        len(before),
        len(settled),
        repeated,
    )


def test_resume_checks(tmp_path, calls_log):
    data, path = setup(tmp_path, generations=1)
    with pytest.raises(ConfigError, match="has no checkpoint.pkl"):
        run_optimization(config_from_dict(data, tmp_path), progress=False, resume=True)
    run_optimization(config_from_dict(data, tmp_path), progress=False)
    changed = json.loads(json.dumps(data))
    changed["optimizer"]["seed"] = 4
    with pytest.raises(ConfigError, match=r"optimizer.seed was 3, now 4"):
        run_optimization(
            config_from_dict(changed, tmp_path), progress=False, resume=True
        )
    # a finished run can be extended: only the new generation is evaluated
    n = len(calls(calls_log))
    longer = json.loads(json.dumps(data))
    longer["optimizer"]["generations"] = 2
    result = run_optimization(
        config_from_dict(longer, tmp_path), progress=False, resume=True
    )
    assert len(result.generations) == 2
    new_ok = sum(e["error"] is None for e in result.generations[1]["evaluations"])
    assert len(calls(calls_log)) - n == new_ok
    quick = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    with pytest.raises(ConfigError, match="one compiled program"):
        run_optimization(config_from_dict(quick), progress=False, resume=True)
