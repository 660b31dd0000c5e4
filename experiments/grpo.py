"""SFT warm-up, then RL with a verifiable reward: any loss of the GRPO family,
seeds vmapped, every step one compiled program.

    python experiments/grpo.py --task addition --loss dapo --num-seeds 3
    python experiments/grpo.py --loss gspo --rl-steps 400 --learning-rate 3e-5
    python experiments/grpo.py --model-path ./my-qwen2 --sft-steps 0  # a local
                                                   # Hugging Face folder
    python experiments/grpo.py --help                                # every flag

Seed ``i`` uses ``fold_in(key(seed), i)`` for its SFT run, its RL run and
nothing else; held-out evaluation uses ``llm.eval_key`` (problems no training
step draws). The SFT phase is one ``jax.vmap`` over seeds (``llm.make_sft``),
the RL phase one ``jax.vmap`` of ``llm.make_grpo``'s ``run`` over seeds, compiled
once and called for ``eval_every`` steps at a time, with a held-out evaluation
after each call. Writes to ``out_dir`` (default ``runs/grpo/<task>-<loss>``):

- ``metrics.jsonl``: one JSON line per RL step per seed (sampled reward and
  exact match, losses, clip fractions, KL, ...), and one ``"eval"`` line per
  evaluation per seed (held-out greedy exact match and reward);
- ``curves.png``: held-out exact match and training reward vs RL step, mean and
  min-max spread over seeds;
- ``samples.txt``: held-out prompts with each seed's greedy completion after
  SFT and after RL;
- ``checkpoint/``: the final `GRPOState` of every seed (leaves ``[seeds, ...]``)
  through ``convergence_jax.checkpoint``;
- ``summary.json``: the config, times, and per seed the held-out exact match
  after SFT, after RL, and the gain.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tyro
from tqdm.auto import tqdm

from convergence_jax import checkpoint, llm, lm

USAGE = __doc__.split("\n\nSeed ``i``")[0]


@dataclass(frozen=True)
class Config:
    """SFT warm-up then GRPO-family RL on a synthetic verifiable task."""

    task: Literal["addition", "sorting", "copy", "reverse"] = "addition"
    """The task (convergence_jax.llm.tasks)."""
    size: int = 2
    """Digits per addend (addition) or sequence length (the others)."""
    loss: Literal[
        "grpo", "dr_grpo", "dapo", "gspo", "gspo_token", "gepo", "vapo", "ppo"
    ] = "grpo"
    """The RL loss (llm.PROGRAM_LOSSES)."""
    num_seeds: int = 3
    """Independent runs, vmapped in one call."""
    seed: int = 0
    """Base seed; run i uses fold_in(key(seed), i)."""
    model_path: str | None = None
    """A local Hugging Face folder (config.json + safetensors + tokenizer.json) to
    start from instead of a fresh tiny model."""
    hidden_size: int = 64
    """Width of the fresh model."""
    intermediate_size: int = 256
    """MLP width of the fresh model."""
    num_layers: int = 2
    """Layers of the fresh model."""
    num_heads: int = 4
    """Attention heads of the fresh model."""
    rope_theta: float = 100.0
    """Rotary base of the fresh model (llm.AdditionWarmup explains 100)."""
    sft_steps: int = 3000
    """Supervised warm-up updates at most (0: none)."""
    sft_target: float | None = 0.3
    """Stop a seed's SFT once its greedy exact match (on problems apart from the
    held-out ones) reaches this; None: run all sft_steps."""
    sft_batch_size: int = 32
    """Problems per SFT update."""
    sft_learning_rate: float = 3e-3
    """SFT AdamW step size (after 50 warmup steps)."""
    rl_steps: int = 600
    """RL steps (each: sample, score, update)."""
    num_prompts: int = 16
    """Prompts per RL step."""
    group_size: int = 8
    """Completions per prompt."""
    max_new_tokens: int | None = None
    """Completion budget; default: the task's answer length + 4 (room for DAPO's
    overlong ramp, max_new_tokens // 4 tokens, to sit past every right answer)."""
    reward: Literal["exact", "partial"] = "exact"
    """RL reward: exact match (0/1, what the held-out score measures) or the
    task's partial credit (fraction of characters right)."""
    num_epochs: int = 2
    """Passes over each step's samples (the learning bar's setting: the second
    pass is off-policy, old log-probs recomputed, ratio clipped)."""
    num_minibatches: int = 1
    """Updates per pass."""
    learning_rate: float = 2e-4
    """RL Adam step size of the policy."""
    value_learning_rate: float = 1e-4
    """Adam step size of the value model (vapo, ppo)."""
    value_pretrain_steps: int = 20
    """VAPO / PPO: value pretraining steps before RL."""
    beta: float | None = None
    """KL coefficient (default: the loss's recipe)."""
    temperature: float = 1.0
    """Sampling temperature."""
    num_devices: int = 1
    """Devices per run (data parallel); on CPU see XLA_FLAGS in docs/llm.md."""
    eval_every: int = 50
    """RL steps between held-out evaluations."""
    eval_problems: int = 512
    """Held-out problems per evaluation (greedy decoding)."""
    num_samples_shown: int = 8
    """Prompts written to samples.txt."""
    save_checkpoint: bool = True
    """Write the final states to out_dir/checkpoint."""
    out_dir: str | None = None
    """Output folder (default runs/grpo/<task>-<loss>); replaces earlier files."""
    progress: bool = True
    """Show progress bars."""


class Experiment(NamedTuple):
    config: Config
    task: llm.Task
    model_config: lm.LMConfig
    tokenizer: object
    base_params: object | None
    grpo: llm.GRPO
    sft: llm.SFT | None
    keys: jax.Array
    out_dir: Path


def _positive_int(config: Config, name: str, low: int = 1) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Config.{name}: expected an int >= {low}, got {value!r}")


def build(config: Config) -> Experiment:
    """Validate everything (ValueError naming the field) before compiling."""
    for name in (
        "num_seeds",
        "size",
        "num_prompts",
        "group_size",
        "eval_every",
        "eval_problems",
    ):
        _positive_int(config, name)
    for name in ("sft_steps", "rl_steps", "value_pretrain_steps", "num_samples_shown"):
        _positive_int(config, name, 0)
    for name in ("sft_learning_rate", "learning_rate", "value_learning_rate"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"Config.{name}: expected a finite value > 0, got {value}")
    if config.sft_target is not None and not 0.0 < config.sft_target <= 1.0:
        raise ValueError(
            f"Config.sft_target: expected a value in (0, 1] or None, got "
            f"{config.sft_target}"
        )
    base_params = None
    if config.model_path is not None:
        folder = Path(config.model_path)
        if not (folder / "config.json").exists():
            raise ValueError(
                f"Config.model_path: no config.json in {folder} (a Hugging Face "
                "model folder)"
            )
        model_config, base_params = lm.load_hf(folder)
        tokenizer = lm.HFTokenizer.from_pretrained(folder)
    else:
        tokenizer = lm.ByteTokenizer()
        model_config = lm.LMConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            num_kv_heads=config.num_heads,
            head_dim=config.hidden_size // config.num_heads,
            rope_theta=config.rope_theta,
            max_position_embeddings=64 + 4 * config.size,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )
        if config.hidden_size % config.num_heads:
            raise ValueError(
                f"Config.hidden_size ({config.hidden_size}) must be a multiple of "
                f"num_heads ({config.num_heads})"
            )
    task = llm.TASKS[config.task](config.size, tokenizer)
    if config.reward == "exact":
        task = task._replace(reward=task.exact_match)
    grpo_config = llm.GRPOConfig(
        loss=config.loss,
        num_prompts=config.num_prompts,
        group_size=config.group_size,
        max_new_tokens=config.max_new_tokens or task.answer_length + 4,
        num_epochs=config.num_epochs,
        num_minibatches=config.num_minibatches,
        learning_rate=config.learning_rate,
        value_learning_rate=config.value_learning_rate,
        beta=config.beta,
        temperature=config.temperature,
        num_devices=config.num_devices,
    )
    grpo = llm.make_grpo(grpo_config, model_config, task)  # validates, compiles nothing
    sft = None
    if config.sft_steps:
        sft = llm.make_sft(
            model_config,
            task,
            batch_size=config.sft_batch_size,
            hparams=llm.SFTHParams.create(
                learning_rate=config.sft_learning_rate, warmup_steps=50
            ),
        )
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(config.seed), i))(
        jnp.arange(config.num_seeds)
    )
    out_dir = Path(
        config.out_dir or Path("runs") / "grpo" / f"{task.name}-{config.loss}"
    )
    return Experiment(
        config, task, model_config, tokenizer, base_params, grpo, sft, keys, out_dir
    )


def _evaluator(experiment: Experiment):
    config = experiment.config

    def scores(params):
        return llm.evaluate(
            llm.eval_key(config.seed),
            params,
            experiment.model_config,
            experiment.task,
            config.eval_problems,
            max_new_tokens=experiment.grpo.config.max_new_tokens,
        )

    return jax.jit(jax.vmap(scores))


def _greedy_samples(
    experiment: Experiment, params
) -> tuple[list[str], list[list[str]]]:
    config, task = experiment.config, experiment.task
    n = max(config.num_samples_shown, 1)
    batch = task.sample(llm.eval_key(config.seed), n)

    def one(p):
        return lm.generate(
            jax.random.key(0),
            p,
            experiment.model_config,
            batch.prompt_tokens,
            batch.prompt_mask,
            max_new_tokens=experiment.grpo.config.max_new_tokens,
            temperature=0.0,
            stop_tokens=task.stop_tokens,
        )

    out = [
        one(jax.tree.map(lambda x, i=i: x[i], params)) for i in range(config.num_seeds)
    ]
    prompts = task.to_text(batch.prompt_tokens, batch.prompt_mask)
    texts = [task.parse(o.tokens[:, 0], o.mask[:, 0]) for o in out]
    return prompts, texts


def _json(x):
    x = float(x)
    return x if math.isfinite(x) else None


def plot_curves(path: Path, eval_steps, eval_exact, train_steps, train_reward, title):
    """Held-out exact match (left) and training reward (right): mean and min-max
    over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    panels = (
        (axes[0], eval_steps, eval_exact, "held-out exact match (greedy)"),
        (axes[1], train_steps, train_reward, "sampled reward (training)"),
    )
    for ax, steps, values, label in panels:
        values = np.asarray(values, np.float64)  # [seeds, points]
        mean = values.mean(0)
        (line,) = ax.plot(steps, mean, label=f"mean of {values.shape[0]} seeds")
        ax.fill_between(
            steps,
            values.min(0),
            values.max(0),
            color=line.get_color(),
            alpha=0.2,
            label="min-max",
        )
        ax.set_xlabel("RL step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_experiment(experiment: Experiment) -> dict:
    """SFT, evaluate, RL in evaluated chunks, write every output; the summary."""
    config, grpo = experiment.config, experiment.grpo
    out = experiment.out_dir
    out.mkdir(parents=True, exist_ok=True)
    evaluate = _evaluator(experiment)
    times = {}
    log = sys.stderr

    # -- SFT --
    start = time.perf_counter()
    if experiment.base_params is not None:
        params = jax.tree.map(
            lambda x: jnp.broadcast_to(x, (config.num_seeds, *x.shape)),
            experiment.base_params,
        )
    else:
        params = jax.vmap(lm.init_params, in_axes=(0, None))(
            jax.vmap(lambda k: jax.random.fold_in(k, 1))(experiment.keys),
            experiment.model_config,
        )
    if experiment.sft is not None:
        if config.progress:
            print(
                f"SFT: {config.num_seeds} seeds x {config.sft_steps} steps ...",
                file=log,
                flush=True,
            )
        sft = experiment.sft
        if config.sft_target is None:
            sft_run = jax.jit(jax.vmap(lambda s: sft.run(s, None, config.sft_steps)))
        else:
            stop_key = jax.random.fold_in(llm.eval_key(config.seed), 1)
            sft_run = jax.jit(
                jax.vmap(
                    lambda s: sft.run_until(
                        s,
                        None,
                        stop_key,
                        config.sft_target,
                        config.sft_steps,
                        eval_every=50,
                        num_problems=256,
                    )
                )
            )
        sft_state = jax.vmap(sft.init)(experiment.keys, params)
        sft_state, _ = sft_run(sft_state)
        params = sft_state.params
        times["sft_steps"] = np.asarray(sft_state.step).tolist()
    jax.block_until_ready(params)
    times["sft_seconds"] = time.perf_counter() - start
    before = {k: np.asarray(v) for k, v in evaluate(params).items()}
    prompts, before_text = _greedy_samples(experiment, params)
    if config.progress:
        print(
            f"after SFT: held-out exact match per seed "
            f"{np.round(before['exact_match'], 3).tolist()}",
            file=log,
            flush=True,
        )

    # -- RL --
    rl_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(experiment.keys)
    states = jax.vmap(grpo.init)(rl_keys, params)
    if config.loss in ("vapo", "ppo") and config.value_pretrain_steps:
        pretrain = jax.jit(
            jax.vmap(
                lambda s: grpo.pretrain_value(s, None, config.value_pretrain_steps)
            )
        )
        states, _ = pretrain(states)
    chunk = jax.jit(jax.vmap(lambda s: grpo.run(s, None, config.eval_every)))
    num_chunks = math.ceil(config.rl_steps / config.eval_every)
    tail = config.rl_steps - (num_chunks - 1) * config.eval_every
    last_chunk = (
        chunk
        if tail == config.eval_every
        else jax.jit(jax.vmap(lambda s: grpo.run(s, None, tail)))
    )
    eval_steps, eval_exact, eval_reward = (
        [0],
        [before["exact_match"]],
        [before["reward"]],
    )
    train_metrics = []
    start = time.perf_counter()
    bar = tqdm(
        total=config.rl_steps,
        unit="step",
        disable=not config.progress,
        dynamic_ncols=True,
        desc=f"RL {config.loss}",
    )
    compile_seconds = None
    try:
        for c in range(num_chunks):
            t0 = time.perf_counter()
            fn = last_chunk if c == num_chunks - 1 else chunk
            states, metrics = fn(states)
            metrics = {k: np.asarray(v) for k, v in metrics.items()}  # [S, steps]
            if compile_seconds is None:
                compile_seconds = time.perf_counter() - t0
            train_metrics.append(metrics)
            scores = {k: np.asarray(v) for k, v in evaluate(states.params).items()}
            done = min((c + 1) * config.eval_every, config.rl_steps)
            eval_steps.append(done)
            eval_exact.append(scores["exact_match"])
            eval_reward.append(scores["reward"])
            bar.set_postfix(
                exact=f"{scores['exact_match'].mean():.3f}",
                reward=f"{metrics['reward'][:, -1].mean():.3f}",
                refresh=False,
            )
            bar.update(done - bar.n)
    finally:
        bar.close()
    times["rl_seconds"] = time.perf_counter() - start
    times["rl_first_chunk_seconds_with_compile"] = compile_seconds

    metrics = {
        k: np.concatenate([m[k] for m in train_metrics], axis=1)
        for k in train_metrics[0]
    }
    eval_exact = np.stack(eval_exact, axis=1)  # [S, points]
    eval_reward = np.stack(eval_reward, axis=1)
    with (out / "metrics.jsonl").open("w") as f:
        names = sorted(metrics)
        for s in range(config.num_seeds):
            for t in range(config.rl_steps):
                row = {"seed": s, "step": t + 1}
                row.update({n: _json(metrics[n][s, t]) for n in names})
                f.write(json.dumps(row) + "\n")
            for i, step in enumerate(eval_steps):
                f.write(
                    json.dumps(
                        {
                            "eval": True,
                            "seed": s,
                            "step": step,
                            "exact_match": _json(eval_exact[s, i]),
                            "reward": _json(eval_reward[s, i]),
                        }
                    )
                    + "\n"
                )
    plot_curves(
        out / "curves.png",
        eval_steps,
        eval_exact,
        np.arange(1, config.rl_steps + 1),
        metrics["reward"],
        f"{experiment.task.name}, {config.loss}: {config.num_seeds} seeds after "
        f"{config.sft_steps} SFT steps",
    )
    _, after_text = _greedy_samples(experiment, states.params)
    with (out / "samples.txt").open("w") as f:
        for i, prompt in enumerate(prompts):
            f.write(f"prompt: {prompt}\n")
            for s in range(config.num_seeds):
                f.write(
                    f"  seed {s}: SFT {before_text[s][i]!r}  ->  RL "
                    f"{after_text[s][i]!r}\n"
                )
    ckpt = out / "checkpoint"
    if ckpt.exists():
        shutil.rmtree(ckpt)
    if config.save_checkpoint:
        checkpoint.save(ckpt, states, step=config.rl_steps)
    gain = eval_exact[:, -1] - eval_exact[:, 0]
    summary = {
        "config": asdict(config),
        "grpo_config": asdict(grpo.config),
        "model_config": asdict(experiment.model_config),
        "task": experiment.task.name,
        **times,
        "exact_match_after_sft": eval_exact[:, 0].tolist(),
        "exact_match_after_rl": eval_exact[:, -1].tolist(),
        "exact_match_gain": gain.tolist(),
        "min_gain": float(gain.min()),
        "eval_steps": eval_steps,
        "eval_exact_match": eval_exact.tolist(),
        "backend": jax.default_backend(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if config.progress:
        print(
            f"held-out exact match: SFT {np.round(eval_exact[:, 0], 3).tolist()} "
            f"-> RL {np.round(eval_exact[:, -1], 3).tolist()} (written to {out})",
            file=log,
            flush=True,
        )
    return summary


def initial_states(experiment: Experiment):
    """States with the layout of the saved checkpoint (for ``like=``)."""
    params = jax.vmap(lm.init_params, in_axes=(0, None))(
        experiment.keys, experiment.model_config
    )
    return jax.vmap(experiment.grpo.init)(experiment.keys, params)


def main(config: Config) -> dict:
    return run_experiment(build(config))


if __name__ == "__main__":
    try:
        main(tyro.cli(Config, description=USAGE))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
