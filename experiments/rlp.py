"""RLP (reinforcement learning as a pretraining objective) on a digit stream
where a thought can carry the computation, seeds vmapped.

    python experiments/rlp.py --num-seeds 3
    python experiments/rlp.py --rlp-steps 200 --warmup-steps 300
    python experiments/rlp.py --help                              # every flag

The stream (``rlp.digit_sum_stream``): sequences of ``length`` digits mod
``modulus`` whose tokens after a random seed are ``x_t = (x_{t-1} + x_{t-2} +
x_{t-4} + x_{t-7}) mod 5`` (``offsets``, ``modulus``): a one-step prediction
needs four look-ups and a 4-way sum (625 cases); a thought can do it one
2-way sum (25 cases) at a time. Vocabulary: the digits (0-9), ``<think>`` (10),
``</think>`` (11), padding (12), 16 rows in all.

**Warm-up** (``warmup_steps`` AdamW steps, before RLP): next-token prediction on
two batches per step, their losses summed: (a) whole stream sequences (loss on
every token after the first: plain pretraining, which is all the no-think
baseline ever learns), (b) thought-formatted rows from
``rlp.sum_thought_batch``: ``[x_<t] <think> d_1 d_2 p_2 d_3 p_3 d_4 p_4 </think>
x_t`` with ``d_j`` the digit at offset ``o_j`` and ``p_j`` the running sum
(loss on the thought, ``</think>`` and ``x_t``; never on ``<think>``, which RLP
forces, nor on the context). It teaches the thought *format* and that the token
after ``</think>`` is the last running sum.

**RLP** (``rlp_steps``): ``rlp.make_rlp`` from the warmed-up parameters (the
EMA baseline starts equal to them); from then on no thought, no label and no
next-token loss is used: the only signal is the information-gain reward.

Writes ``out_dir/metrics.jsonl`` (one line per RLP step per seed) and
``out_dir/summary.json`` (config, times, per-seed first/last-window figures).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

from convergence_jax import lm
from convergence_jax.llm.sft import SFTHParams, adamw_update, sft_loss
from convergence_jax.llm.tasks import SFTBatch
from convergence_jax.self_improve import rlp

USAGE = __doc__.split("\n\nThe stream")[0]
THINK_START, THINK_END, PAD, VOCAB = 10, 11, 12, 16


@dataclass(frozen=True)
class Config:
    """RLP on a digit-sum stream, after a short warm-up."""

    num_seeds: int = 3
    """Independent runs (model init, warm-up and RLP draws), vmapped."""
    seed: int = 0
    """Base seed; run i uses fold_in(key(seed), i)."""
    data_seed: int = 0
    """Seed of the stream (the same for every run)."""
    num_sequences: int = 4096
    """Sequences in the stream."""
    length: int = 20
    """Tokens per sequence (T)."""
    offsets: tuple[int, ...] = (1, 2, 4, 7)
    """x_t = sum of x_{t-o} over these offsets, mod ``modulus``."""
    modulus: int = 5
    """Digits are 0 .. modulus - 1 (at most 10)."""
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
    warmup_steps: int = 1000
    """Warm-up AdamW steps (next-token prediction, see the module docstring)."""
    warmup_batch: int = 64
    """Rows of each of the two warm-up batches."""
    warmup_lr: float = 3e-3
    """Warm-up step size."""
    warmup_corrupt: float = 0.2
    """Fraction of warm-up thought rows with a wrong scratchpad (loss on x_t only;
    rlp.sum_thought_batch's corrupt)."""
    rlp_steps: int = 250
    """RLP steps (rollouts)."""
    batch_size: int = 16
    """RLP contexts per step (B)."""
    group_size: int = 8
    """Thoughts per context (G)."""
    context_length: int = 15
    """Context window (W)."""
    max_thought_tokens: int = 10
    """Thought budget (N), </think> included."""
    num_updates: int = 2
    """Optimizer steps per rollout."""
    learning_rate: float = 5e-4
    """RLP AdamW step size."""
    tau: float = 0.999
    """EMA decay of the no-think baseline."""
    temperature: float = 0.7
    """Thought sampling temperature."""
    epsilon: float = 0.2
    """Clip range (low = high)."""
    out_dir: str = "runs/rlp"
    """Where metrics.jsonl and summary.json go."""


def model_config(config: Config) -> lm.LMConfig:
    return lm.LMConfig(
        vocab_size=VOCAB,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=config.num_heads,
        head_dim=config.hidden_size // config.num_heads,
        rope_theta=config.rope_theta,
        max_position_embeddings=64,
        pad_token_id=PAD,
    )


def rlp_config(config: Config) -> rlp.RLPConfig:
    return rlp.RLPConfig(
        think_start=THINK_START,
        think_end=THINK_END,
        pad_id=PAD,
        group_size=config.group_size,
        batch_size=config.batch_size,
        context_length=config.context_length,
        min_context=max(config.offsets),
        max_thought_tokens=config.max_thought_tokens,
        num_updates=config.num_updates,
    )


def rlp_hparams(config: Config) -> rlp.RLPHParams:
    return rlp.RLPHParams.create(
        learning_rate=config.learning_rate,
        tau=config.tau,
        temperature=config.temperature,
        epsilon_low=config.epsilon,
        epsilon_high=config.epsilon,
    )


def make_warmup(config: Config, mcfg: lm.LMConfig, rcfg: rlp.RLPConfig):
    """``warmup(key, data) -> (params, metrics [warmup_steps])``: a fresh model
    from ``key``, then the warm-up of the module docstring, one `lax.scan`."""
    hp = SFTHParams.create(learning_rate=config.warmup_lr, warmup_steps=50)
    moments = optax.scale_by_adam()

    def loss(params, key, data):
        k_rows, k_thought = jax.random.split(key)
        rows = data[jax.random.randint(k_rows, (config.warmup_batch,), 0, len(data))]
        rows = rows.astype(jnp.int32)
        ones = jnp.ones_like(rows)
        plain = SFTBatch(rows, ones, ones.at[:, 0].set(0))
        thought = rlp.sum_thought_batch(
            k_thought,
            data,
            config.warmup_batch,
            rcfg,
            config.offsets,
            config.modulus,
            config.warmup_corrupt,
        )
        plain_loss, _ = sft_loss(params, mcfg, plain)
        thought_loss, parts = sft_loss(params, mcfg, thought)
        total = plain_loss + thought_loss
        return total, {
            "plain_loss": plain_loss,
            "thought_loss": thought_loss,
            "thought_token_accuracy": parts["token_accuracy"],
        }

    def warmup(key, data):
        k_init, k_data = jax.random.split(key)
        params = lm.init_params(k_init, mcfg)

        def body(carry, i):
            params, opt_state = carry
            (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(
                params, jax.random.fold_in(k_data, i), data
            )
            params, opt_state, _, _ = adamw_update(
                moments, grads, opt_state, params, i, hp
            )
            return (params, opt_state), metrics

        (params, _), metrics = jax.lax.scan(
            body, (params, moments.init(params)), jnp.arange(config.warmup_steps)
        )
        return params, metrics

    return warmup


def _window_means(values: np.ndarray, width: int) -> tuple[float, float]:
    width = max(1, min(width, len(values)))
    return float(values[:width].mean()), float(values[-width:].mean())


def main(config: Config) -> dict:
    mcfg, rcfg = model_config(config), rlp_config(config)
    hp = rlp_hparams(config)
    data = rlp.digit_sum_stream(
        jax.random.key(config.data_seed),
        config.num_sequences,
        config.length,
        config.offsets,
        config.modulus,
    )
    program = rlp.make_rlp(rcfg, mcfg, hp)
    warmup = make_warmup(config, mcfg, rcfg)
    base = jax.random.key(config.seed)
    keys = jnp.stack([jax.random.fold_in(base, i) for i in range(config.num_seeds)])
    warm_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    rlp_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)

    t0 = time.perf_counter()
    warm_fn = jax.jit(jax.vmap(warmup, in_axes=(0, None)))
    params, warm_metrics = jax.block_until_ready(warm_fn(warm_keys, data))
    warmup_seconds = time.perf_counter() - t0

    state = jax.vmap(program.init)(rlp_keys, params)
    run_fn = jax.jit(
        jax.vmap(lambda s: program.run(s, data, hp, config.rlp_steps)),
    )
    t0 = time.perf_counter()
    compiled = run_fn.lower(state).compile()
    compile_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, metrics = jax.block_until_ready(compiled(state))
    rlp_seconds = time.perf_counter() - t0

    metrics = jax.tree.map(np.asarray, metrics)
    warm_metrics = jax.tree.map(np.asarray, warm_metrics)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "w") as f:
        for s in range(config.num_seeds):
            for i in range(config.rlp_steps):
                row = {k: float(v[s, i]) for k, v in metrics.items()}
                f.write(json.dumps({"seed": s, "step": i, **row}) + "\n")
    window = max(1, config.rlp_steps // 10)
    seeds = []
    for s in range(config.num_seeds):
        per = {}
        for name in (
            "reward",
            "logp_think",
            "logp_ema",
            "logp_nothink",
            "accuracy_think",
            "accuracy_ema",
            "thought_length",
            "clip_fraction",
        ):
            start, end = _window_means(metrics[name][s], window)
            per[name] = {"start": start, "end": end}
        per["warmup_final"] = {
            k: float(v[s, -20:].mean()) for k, v in warm_metrics.items()
        }
        seeds.append(per)
    summary = {
        "config": asdict(config),
        "window": window,
        "warmup_seconds": warmup_seconds,
        "rlp_compile_seconds": compile_seconds,
        "rlp_seconds": rlp_seconds,
        "seeds": seeds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"summary": summary, "metrics": metrics, "warmup": warm_metrics}


if __name__ == "__main__":
    config = tyro.cli(Config, description=USAGE)
    result = main(config)["summary"]
    for s, per in enumerate(result["seeds"]):
        print(
            f"seed {s}: reward {per['reward']['start']:+.3f} -> "
            f"{per['reward']['end']:+.3f}; logp think "
            f"{per['logp_think']['end']:.3f} vs ema {per['logp_ema']['end']:.3f}; "
            f"acc think {per['accuracy_think']['start']:.2f} -> "
            f"{per['accuracy_think']['end']:.2f}",
            file=sys.stderr,
        )
    print(
        f"warm-up {result['warmup_seconds']:.1f} s, RLP compile "
        f"{result['rlp_compile_seconds']:.1f} s, run {result['rlp_seconds']:.1f} s",
        file=sys.stderr,
    )
