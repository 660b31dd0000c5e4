"""The logging callbacks, each checked by reading back what it wrote: the
TensorBoard event files (tensorboard's EventAccumulator), the W&B offline run's
transaction log (wandb's own protobuf records), and a recorded rich console."""

import io
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from convergence_jax import loop


class Skill:
    """A toy agent: each window of learning adds ``rate`` skill, up to 20."""

    def __init__(self):
        self.skill, self.hp = 0.0, {"rate": 2.0}

    def act(self, observation):
        return np.zeros(len(observation), int)

    def learn(self, window):
        self.skill = min(self.skill + self.hp["rate"], 20.0)
        self.learned = getattr(self, "learned", 0) + 1
        return {"loss": 100.0 if self.learned == 15 else 1.0}  # one loss spike

    def get_hyperparams(self):
        return dict(self.hp)

    def set_hyperparams(self, hp):
        self.hp = dict(hp)

    def save_weights(self, path):
        Path(path).write_text(json.dumps(self.skill))

    def load_weights(self, path):
        self.skill = json.loads(Path(path).read_text())


def run_loop(tmp_path, callbacks):
    agent = Skill()
    rng = np.random.default_rng(0)

    def stream():
        yield np.zeros(2), 0.0, False, False, {}
        while True:
            yield np.zeros(2), agent.skill + rng.normal(0, 0.5), True, False, {}

    return loop.RLOptimizer(
        agent,
        loop.LivePipeline(stream(), loop.every_n_steps(5)),
        registry=loop.CheckpointRegistry(tmp_path / "ckpt"),
        hparam_optimizer=loop.BackoffOptimizer({"rate": (0.5, 5.0)}),
        diagnostics=loop.Diagnostics(rules=(loop.LossSpike(),), lr_key="rate"),
        callbacks=callbacks,
        max_episodes=400,
    ).run()


def improvement_windows(result):
    return [r["window"] for r in result.records if r["improved"]]


def test_record_scalars_flattens_a_record():
    record = {
        "window": 3,
        "agent": "Skill",
        "state": "COOLING",
        "primary_score": 1.5,
        "improved": False,
        "interval": 2.0,
        "val_score": math.nan,
        "upper": math.inf,
        "hyperparams": {"rate": 2.0},
        "diagnostics": {"entropy": 0.7, "rule": "none"},
    }
    assert loop.loggers.record_scalars(record) == {
        "loop/state": 1.0,
        "score/primary": 1.5,
        "loop/improved": 0.0,
        "loop/interval": 2.0,
        "hyperparams/rate": 2.0,
        "diagnostics/entropy": 0.7,
    }
    assert loop.loggers.relative_change({"a": 2.0}, {"a": 3.0}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="'window' or 'env_steps'"):
        loop.TensorBoardCallback(step="seconds")


def test_tensorboard_event_files_read_back(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    pytest.importorskip("tensorboardX")
    callback = loop.TensorBoardCallback(tmp_path / "tb")
    result = run_loop(tmp_path, [callback])
    assert result.reason.startswith("DORMANT")
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    primary = acc.Scalars("score/primary")
    assert [e.step for e in primary] == [r["window"] for r in result.records]
    np.testing.assert_allclose(
        [e.value for e in primary], [r["primary_score"] for r in result.records], 1e-6
    )
    assert [e.step for e in acc.Scalars("score/best")] == improvement_windows(result)
    assert [e.step for e in acc.Scalars("events/dormant")] == [
        r["window"] for r in result.records if r["dormant"]
    ]
    rates = [e.value for e in acc.Scalars("hyperparams/rate")]
    np.testing.assert_allclose(
        rates, [r["hyperparams"]["rate"] for r in result.records]
    )
    assert len(set(rates)) > 1  # the optimizer moved it
    assert len(acc.Scalars("tuning/relative_change")) > 0
    states = {e.value for e in acc.Scalars("loop/state")}
    assert loop.STATE_NAMES.index("DORMANT") in states
    fired = [e["window"] for e in result.diagnostics]
    assert fired == [15]
    assert [e.step for e in acc.Scalars("events/diagnostic")] == fired
    assert acc.Scalars("diagnostic/loss_spike")[0].value > 5.0
    (text,) = acc.Tensors("loop/result/text_summary")
    assert result.reason in text.tensor_proto.string_val[0].decode()


def read_wandb_records(path):
    """The protobuf records of a ``.wandb`` transaction log.

    The file is wandb's LevelDB-style log: a 7-byte header (``:W&B``, a 2-byte
    magic, a version byte), then 32 KiB blocks of chunks, each with a 7-byte
    header (CRC-32C, little-endian length, type 1 full / 2 first / 3 middle /
    4 last); a block's tail shorter than a header is zero padding.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # padding to the end of the block
            pos += left
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_wandb_offline_run_reads_back(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    callback = loop.WandbCallback(
        project="test", dir=tmp_path, config={"env": "skill-stream"}
    )
    result = run_loop(tmp_path, [callback])
    run_dir = Path(callback.run_dir)
    assert (
        run_dir.name.startswith("offline-run-") and run_dir.parent == tmp_path / "wandb"
    )
    (log,) = run_dir.glob("run-*.wandb")
    records = read_wandb_records(log)
    rows: dict[int, dict] = {}
    summary: dict[str, object] = {}
    config: dict[str, object] = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = rows.setdefault(record.history.step.num, {})
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                if item.key:
                    summary[item.key] = json.loads(item.value_json)
        elif kind == "run":
            for item in record.run.config.update:
                config[item.key] = json.loads(item.value_json)
    assert records[-1].WhichOneof("record_type") == "exit"  # complete on disk
    assert sorted(rows) == [r["window"] for r in result.records]
    for r in result.records:
        row = rows[r["window"]]
        assert row["score/primary"] == pytest.approx(r["primary_score"])
        assert row["hyperparams/rate"] == pytest.approx(r["hyperparams"]["rate"])
        assert ("score/best" in row) == bool(r["improved"])
    assert summary["reason"] == result.reason
    assert summary["windows"] == result.windows
    assert config["env"] == "skill-stream"
    assert config["hyperparams"] == {"rate": 2.0}


def test_rich_dashboard_live_and_line_modes(tmp_path):
    pytest.importorskip("rich")
    from rich.console import Console

    console = Console(record=True, width=110, file=io.StringIO())
    dashboard = loop.RichDashboard(console, title="skill run")
    result = run_loop(tmp_path, [dashboard])
    text = console.export_text()
    assert "skill run" in text and f"{len(result.records)} evaluations" in text
    assert "DORMANT" in text and "loop result" in text and result.reason in text
    assert f"best  {result.best_score:.4g}" in text  # the best checkpointed score
    assert "rate" in text  # the hyperparameter column
    assert any(block in text for block in "▁▂▃▄▅▆▇█")  # the score sparkline
    assert dashboard.events["improvements"] == len(improvement_windows(result))
    assert dashboard.events["dormant"] == 1
    assert dashboard.events["diagnostics"] == len(result.diagnostics) == 1

    console = Console(record=True, width=110, file=io.StringIO())
    run_loop(tmp_path / "lines", [loop.RichDashboard(console, live=False)])
    lines = [ln for ln in console.export_text().splitlines() if ln.startswith("window")]
    assert len(lines) == len(result.records)
    assert "DORMANT" in lines[-1]
    assert math.isfinite(float(lines[-1].split("score")[1].split()[0]))
