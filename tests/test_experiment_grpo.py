"""experiments/grpo.py: its outputs, its errors, and a small version of the
learning bar (SFT to partial accuracy, then GRPO raises held-out exact match in
each of 2 vmapped seeds)."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from convergence_jax import checkpoint
from tests.test_experiments import ROOT, load_script


@pytest.fixture(scope="module")
def grpo():
    return load_script("grpo")


def test_grpo_experiment_bad_flags_are_clean_errors(grpo):
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        grpo.build(grpo.Config(group_size=1))
    with pytest.raises(ValueError, match="Config.sft_target"):
        grpo.build(grpo.Config(sft_target=1.5))
    with pytest.raises(ValueError, match="Config.model_path: no config.json"):
        grpo.build(grpo.Config(model_path="/nonexistent"))
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "grpo.py"),
            "--num-prompts",
            "6",
            "--num-minibatches",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: GRPOConfig.num_minibatches" in result.stderr
    assert "Traceback" not in result.stderr


def test_learning_bar_small_version(grpo, tmp_path):
    """SFT until partial accuracy, then a 100-step GRPO run: each of 2 vmapped
    seeds gains held-out greedy exact match (2 seeds, not the bar's 3, for the
    suite's time budget). The full bar, +20 points in each of 3 seeds with each
    of GRPO, Dr. GRPO, DAPO and GSPO over 600 steps, is
    benchmarks/grpo_learning.py."""
    config = grpo.Config(
        loss="grpo",
        num_seeds=2,
        rl_steps=100,
        eval_every=100,
        eval_problems=256,
        learning_rate=2e-4,
        num_epochs=2,
        save_checkpoint=False,
        out_dir=str(tmp_path / "bar"),
        progress=False,
    )
    summary = grpo.main(config)
    before = np.asarray(summary["exact_match_after_sft"])
    gain = np.asarray(summary["exact_match_gain"])
    # Warmed up to partial accuracy ...
    assert np.all((before > 0.1) & (before < 0.6)), before
    # ... and RL improves every seed.
    assert np.all(gain >= 0.05), gain
    assert gain.mean() >= 0.10, gain


def test_grpo_experiment_post_trains_a_local_hugging_face_folder(grpo, tmp_path):
    """--model-path: config.json + safetensors (our save_hf, the format
    transformers writes) and a tokenizer.json trained in-process; the run writes
    every output."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from convergence_jax import lm

    folder = tmp_path / "model"
    folder.mkdir()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(["12+34=46", "7+8=15"] * 20, trainer)
    bpe.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        '{"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}'
    )
    tokenizer = lm.HFTokenizer.from_pretrained(folder)
    model = lm.LMConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        model_type="qwen2",
        attention_bias=True,
        eos_token_id=tokenizer.eos_id,
    )
    lm.save_hf(folder, model, lm.init_params(jax.random.key(0), model))
    config = grpo.Config(
        model_path=str(folder),
        num_seeds=2,
        sft_steps=5,
        sft_target=None,
        rl_steps=4,
        eval_every=2,
        eval_problems=8,
        num_prompts=4,
        group_size=2,
        num_samples_shown=3,
        out_dir=str(tmp_path / "run"),
        progress=False,
    )
    summary = grpo.main(config)
    assert summary["model_config"]["model_type"] == "qwen2"
    # Every output: metrics per step and seed, curves, samples, summary, checkpoint.
    out = tmp_path / "run"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    steps = [r for r in rows if not r.get("eval")]
    evals = [r for r in rows if r.get("eval")]
    assert len(steps) == 2 * 4 and len(evals) == 2 * 3  # evals at steps 0, 2, 4
    assert {"reward", "exact_match", "grad_norm", "kl"} <= set(steps[0])
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "samples.txt").read_text().count("prompt:") == 3
    saved = json.loads((out / "summary.json").read_text())
    assert saved["eval_steps"] == [0, 2, 4] and len(saved["exact_match_after_rl"]) == 2
    assert summary["min_gain"] == saved["min_gain"]
    like = grpo.initial_states(grpo.build(config))
    states = checkpoint.restore(out / "checkpoint", like=like)
    np.testing.assert_array_equal(states.step, [4, 4])
    assert jax.tree.leaves(states.params)[0].shape[0] == 2
