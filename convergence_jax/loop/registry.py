"""Snapshots of the agent at its best moments, with a JSON manifest.

Each snapshot is a folder written by the agent's ``save_weights`` plus a manifest
entry (score, hyperparameters, window, metrics). The manifest is written to a
temporary file, flushed to disk and renamed over the old one, so a crash at any
moment leaves either the old or the new manifest, never a torn one; weights are
written before their entry, and folders that no entry names (a crash between the
two) are removed when the registry is opened again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["CheckpointRegistry", "Snapshot"]

MANIFEST = "manifest.json"


@dataclass
class Snapshot:
    id: int
    window: int
    score: float
    hyperparams: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)
    path: str = ""
    time: float = 0.0


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _rank(snapshot: Snapshot) -> float:
    score = snapshot.score
    return score if score is not None and math.isfinite(score) else -math.inf


class CheckpointRegistry:
    """Keeps the best ``max_snapshots`` snapshots of an agent under ``directory``."""

    def __init__(self, directory: str | Path, max_snapshots: int = 3):
        if not isinstance(max_snapshots, int) or max_snapshots < 1:
            raise ValueError(
                f"CheckpointRegistry.max_snapshots: expected an int >= 1, got "
                f"{max_snapshots!r}"
            )
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_snapshots = max_snapshots
        self._snapshots: list[Snapshot] = []
        self._next_id = 0
        manifest = self.directory / MANIFEST
        if manifest.exists():
            data = json.loads(manifest.read_text())
            self._next_id = data["next_id"]
            self._snapshots = [Snapshot(**entry) for entry in data["snapshots"]]
        # Entries whose weights never reached disk (an agent that saves in the
        # background and a crash before the write finished) are dropped.
        kept = [s for s in self._snapshots if Path(s.path).exists()]
        if len(kept) != len(self._snapshots):
            self._snapshots = kept
            self._write_manifest()
        known = {Path(s.path).name for s in self._snapshots}
        for child in self.directory.glob("snapshot_*"):
            if child.name not in known:  # weights whose entry never landed
                _remove(child)

    @property
    def snapshots(self) -> list[Snapshot]:
        """Kept snapshots, best first."""
        return sorted(self._snapshots, key=_rank, reverse=True)

    @property
    def best(self) -> Snapshot | None:
        snapshots = self.snapshots
        return snapshots[0] if snapshots else None

    def save(
        self,
        agent,
        score: float,
        hyperparams: dict[str, float],
        window: int,
        metrics: dict[str, float] | None = None,
    ) -> Snapshot:
        """Write ``agent``'s weights and record them; drops the worst beyond
        ``max_snapshots`` (which may be this one, if it ranks below all kept)."""
        snapshot_id = self._next_id
        path = self.directory / f"snapshot_{snapshot_id:06d}"
        agent.save_weights(path)
        snapshot = Snapshot(
            id=snapshot_id,
            window=int(window),
            score=float(score),
            hyperparams={k: float(v) for k, v in hyperparams.items()},
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            path=str(path),
            time=time.time(),
        )
        kept = sorted([*self._snapshots, snapshot], key=_rank, reverse=True)
        dropped = kept[self.max_snapshots :]
        self._snapshots = kept[: self.max_snapshots]
        self._next_id = snapshot_id + 1
        self._write_manifest()
        for old in dropped:
            _remove(Path(old.path))
        return snapshot

    def load(self, agent, snapshot_id: int) -> Snapshot:
        """Load snapshot ``snapshot_id``'s weights into ``agent``."""
        for snapshot in self._snapshots:
            if snapshot.id == snapshot_id:
                agent.load_weights(snapshot.path)
                return snapshot
        raise KeyError(
            f"no snapshot {snapshot_id} in {self.directory}; kept: "
            f"{[s.id for s in self.snapshots]}"
        )

    def load_best(self, agent) -> Snapshot:
        best = self.best
        if best is None:
            raise LookupError(f"no snapshot saved in {self.directory} yet")
        agent.load_weights(best.path)
        return best

    def _write_manifest(self) -> None:
        data = {
            "version": 1,
            "next_id": self._next_id,
            "snapshots": [_json_safe(asdict(s)) for s in self._snapshots],
        }
        tmp = self.directory / f".{MANIFEST}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / MANIFEST)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
