"""Preference optimization (DPO, IPO, cDPO, robust DPO, SimPO, ORPO) on a
synthetic preference set, seeds vmapped, every chunk of steps one compiled
program.

    python experiments/preference.py --loss dpo --num-seeds 3
    python experiments/preference.py --loss simpo --beta 2.0 --gamma 1.0
    python experiments/preference.py --task addition --size 2 --steps 2000
    python experiments/preference.py --help                          # every flag

The data (``llm.synthetic_preferences``): prompts of a ``llm.tasks`` task,
chosen = the right answer, rejected = the answer with one token replaced by
another of the answer alphabet; prompts deduplicated and split into disjoint
train and held-out sets (``data_seed``). Seed ``i`` trains a fresh tiny model
from ``fold_in(key(seed), i)``, its frozen reference being its own initial
parameters (policy = reference at step 0, so DPO's first loss is ln 2). After
every ``eval_every`` steps it scores every held-out pair. Writes to ``out_dir``
(default ``runs/preference/<task>-<loss>``):

- ``metrics.jsonl``: one line per step per seed (loss, TRL's rewards/chosen,
  rewards/rejected, margins, accuracies, log-probs, grad norm) and one
  ``"eval"`` line per evaluation per seed (held-out win rate, reward accuracy,
  margin, loss);
- ``summary.json``: the config, times, and per seed the held-out win rate before
  and after training.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from convergence_jax import llm, lm

USAGE = __doc__.split("\n\nThe data")[0]


@dataclass(frozen=True)
class Config:
    """Preference optimization on a synthetic preference set."""

    loss: Literal["dpo", "ipo", "cdpo", "robust", "simpo", "orpo"] = "dpo"
    """The preference loss (llm.PREFERENCE_LOSSES)."""
    task: Literal["addition", "sorting", "copy", "reverse"] = "reverse"
    """The task whose answers make the pairs (convergence_jax.llm.tasks)."""
    size: int = 4
    """Digits per addend (addition) or sequence length (the others)."""
    num_pairs: int = 16384
    """Distinct prompts in the set (train + held-out)."""
    held_out: int = 512
    """Of them, the held-out pairs (never trained on)."""
    data_seed: int = 0
    """Seed of the preference set (the same for every training seed)."""
    num_seeds: int = 3
    """Independent runs, vmapped in one call."""
    seed: int = 0
    """Base seed; run i uses fold_in(key(seed), i)."""
    hidden_size: int = 64
    """Model width."""
    intermediate_size: int = 256
    """MLP width."""
    num_layers: int = 2
    """Layers."""
    num_heads: int = 4
    """Attention heads."""
    rope_theta: float = 100.0
    """Rotary base (llm.AdditionWarmup explains 100)."""
    steps: int = 1000
    """Updates."""
    batch_size: int = 32
    """Pairs per update."""
    learning_rate: float = 3e-3
    """Peak AdamW step size."""
    warmup_steps: int = 20
    """Linear warmup."""
    cosine_decay: bool = False
    """Cosine decay of the step size to a tenth of its peak at the last step
    (SAO's and SimPO's recipe); off: constant after the warmup."""
    max_grad_norm: float = 1.0
    """Global-norm clipping (0: off)."""
    beta: float = 1.0
    """DPO family: KL strength; SimPO: reward scale."""
    gamma: float = 1.0
    """SimPO: target margin."""
    label_smoothing: float = 0.1
    """cDPO / robust: label-flip probability."""
    orpo_lambda: float = 0.1
    """ORPO: weight of the odds-ratio term."""
    eval_every: int = 100
    """Steps between held-out evaluations (also the compiled chunk length)."""
    out_dir: str | None = None
    """Output folder (default runs/preference/<task>-<loss>)."""
    progress: bool = True
    """Print a line per evaluation."""


def _check(config: Config) -> None:
    for name in (
        "size",
        "num_pairs",
        "held_out",
        "num_seeds",
        "steps",
        "batch_size",
        "eval_every",
        "hidden_size",
        "num_layers",
    ):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Config.{name}: expected an int >= 1, got {value!r}")
    if config.steps % config.eval_every:
        raise ValueError(
            f"Config.steps ({config.steps}) must be a multiple of Config.eval_every "
            f"({config.eval_every})"
        )
    if config.held_out >= config.num_pairs:
        raise ValueError(
            f"Config.held_out ({config.held_out}) must be < Config.num_pairs "
            f"({config.num_pairs})"
        )


def make_task(config: Config) -> llm.Task:
    tokenizer = lm.ByteTokenizer()
    if config.task == "addition":
        return llm.addition(config.size, tokenizer)
    if config.task == "sorting":
        return llm.sorting(config.size, tokenizer)
    return getattr(llm.tasks, config.task)(config.size, tokenizer)


def model_config(config: Config, task: llm.Task) -> lm.LMConfig:
    tokenizer = lm.ByteTokenizer()
    total = task.prompt_length + task.answer_length
    return lm.LMConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=config.num_heads,
        head_dim=config.hidden_size // config.num_heads,
        rope_theta=config.rope_theta,
        max_position_embeddings=max(32, 2 * total),
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )


def hparams(config: Config) -> llm.PreferenceHParams:
    return llm.PreferenceHParams.create(
        learning_rate=config.learning_rate,
        beta=config.beta,
        gamma=config.gamma,
        label_smoothing=config.label_smoothing,
        orpo_lambda=config.orpo_lambda,
        warmup_steps=config.warmup_steps,
        decay_steps=config.steps if config.cosine_decay else 0,
        max_grad_norm=config.max_grad_norm,
    )


def _floats(tree, index) -> dict:
    return {k: float(np.asarray(v)[index]) for k, v in tree.items()}


def main(config: Config) -> dict:
    """Build the data, train every seed, write the outputs; the summary."""
    _check(config)
    task = make_task(config)
    data = llm.synthetic_preferences(
        task, config.num_pairs, config.data_seed, held_out=config.held_out
    )
    pref = llm.make_preference(
        model_config(config, task),
        config.loss,
        batch_size=config.batch_size,
        hparams=hparams(config),
    )
    base = jax.random.key(config.seed)
    keys = jnp.stack([jax.random.fold_in(base, i) for i in range(config.num_seeds)])
    out_dir = Path(config.out_dir or f"runs/preference/{config.task}-{config.loss}")
    out_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    state = jax.jit(jax.vmap(pref.init))(keys)
    evaluate = jax.jit(jax.vmap(lambda s: pref.evaluate(s, data.held_out)))
    chunk = jax.jit(
        jax.vmap(lambda s: pref.run(s, data.train, num_steps=config.eval_every))
    )
    first = evaluate(state)
    evals = [(0, first)]
    lines = []
    train_time = 0.0
    for _ in range(config.steps // config.eval_every):
        t0 = time.perf_counter()
        state, metrics = chunk(state)
        jax.block_until_ready(state)
        train_time += time.perf_counter() - t0
        step = int(np.asarray(state.step)[0])
        scores = evaluate(state)
        evals.append((step, scores))
        for seed in range(config.num_seeds):
            for j in range(config.eval_every):
                row = {k: float(np.asarray(v)[seed, j]) for k, v in metrics.items()}
                row.update(seed=seed, step=step - config.eval_every + j + 1)
                lines.append(row)
        if config.progress:
            win = [round(float(w), 3) for w in np.asarray(scores["win_rate"])]
            print(f"step {step}: held-out win rate per seed {win}", flush=True)
    for step, scores in evals:
        for seed in range(config.num_seeds):
            lines.append(
                {"eval": True, "seed": seed, "step": step, **_floats(scores, seed)}
            )
    total_time = time.perf_counter() - start
    with open(out_dir / "metrics.jsonl", "w") as f:
        for row in lines:
            f.write(json.dumps(row) + "\n")
    last = evals[-1][1]
    summary = {
        "config": asdict(config),
        "task": task.name,
        "train_pairs": int(data.train.prompt_tokens.shape[0]),
        "held_out_pairs": int(data.held_out.prompt_tokens.shape[0]),
        "total_seconds": total_time,
        "train_seconds_with_first_compile": train_time,
        "win_rate_before": np.asarray(first["win_rate"]).tolist(),
        "win_rate_after": np.asarray(last["win_rate"]).tolist(),
        "reward_accuracy_after": np.asarray(last["reward_accuracy"]).tolist(),
        "reward_margin_after": np.asarray(last["reward_margin"]).tolist(),
        "curve": [
            {"step": step, "win_rate": np.asarray(s["win_rate"]).tolist()}
            for step, s in evals
        ],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    try:
        main(tyro.cli(Config, description=USAGE))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
