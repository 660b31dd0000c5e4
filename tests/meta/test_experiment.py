"""experiments/meta_evolution.py runs end to end with tiny flags, writes its report."""

import json
import subprocess
import sys

from convergence_jax import meta
from tests.test_experiments import ROOT, load_script


def test_meta_evolution_experiment_writes_report_plots_and_strategies(tmp_path):
    script = load_script("meta_evolution")
    config = script.parse(
        [
            "--suite", "small", "--num-genomes", "4", "--num-meta-generations", "2",
            "--population", "8", "--generations", "4", "--test-seeds", "4",
            "--attribution-replicates", "2", "--rule-generations", "0",
            "--out-dir", str(tmp_path), "--no-progress",
        ]
    )  # fmt: skip
    summary = script.main(config)
    for name in ("meta_fitness.png", "held_out.png", "attribution.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    text = (tmp_path / "report.md").read_text()
    for heading in ("## Meta-training", "## Held-out tasks", "## Attribution"):
        assert heading in text
    assert "## Learning rules" not in text  # --rule-generations 0 skips step 4
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["learned"] == summary["learned"]
    assert set(saved["held_out"]) >= {"final_improvement", "fewer_evaluations",
                                      "speedup"}  # fmt: skip
    assert len(saved["attribution"]["genes"]) == len(meta.Genome.SPECS)
    learned = meta.load_learned_strategies(tmp_path / "learned_strategies.json")
    assert meta.genome_to_dict(learned.universal_best()) == summary["learned"]
    assert summary["learning_rules"] is None


def test_meta_evolution_experiment_bad_flag_is_a_clean_error():
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "meta_evolution.py"),
         "--ranking", "best"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--ranking" in result.stderr and "Traceback" not in result.stderr
