"""DPO training speed: convergence_jax.llm vs TRL's DPOTrainer vs Tunix's DPOTrainer.

The same work for all, side by side in one run on this machine, each contender in
its own worker process (TRL and Tunix in their own venvs, the ones
`grpo_speed.py` builds: ``benchmarks/.venvs/trl`` with CPU torch 2.13.0 and
trl 1.16.0, ``benchmarks/.venvs/tunix`` with google-tunix 0.1.7 and its JAX):

* **Model**: one Llama-family decoder built from a config, no download (the one
  `grpo_speed.py` builds, with its ``make_checkpoint``): 2 layers, hidden 64, 4
  attention heads, 2 KV heads, head_dim 16, MLP 256, vocabulary 261 (bytes 0-255,
  then ``<pad>``=256, ``<bos>``, ``<eos>``=258, ``<|im_start|>``, ``<|im_end|>``),
  untied, float32, RoPE theta 1e6. ``transformers.LlamaForCausalLM`` from that
  config with a fixed torch seed, saved with ``save_pretrained`` (safetensors)
  with a byte-level ``PreTrainedTokenizerFast`` of the same ids. TRL loads it
  with ``from_pretrained`` (the policy, and the reference again from the same
  path, as TRL does itself when ``ref_model`` is None); Tunix with its
  ``models.llama3.params.create_model_from_safe_tensors``, once for the policy
  and once for the reference; ours with ``lm.load_hf`` (the reference = the same
  initial weights, `make_preference`'s default). Before timing, every contender
  reports the summed log-probs of the first batch's chosen and rejected
  completions under its own code (max difference vs ours in the results).
* **Data**: ``num_pairs`` preference pairs made here with NumPy (seeded): the
  prompt is 16 random lowercase ASCII letters, the chosen completion the first
  15 prompt letters reversed, the rejected one the same with one letter replaced
  by another, each completion followed by ``<eos>`` (16 tokens). Byte-level
  tokens map one character to one id, so every row is exactly 16 + 16 tokens:
  no padding anywhere, the same shapes for all contenders. TRL gets the text
  (``prompt`` / ``chosen`` / ``rejected`` columns of an in-memory
  ``datasets.Dataset``; its ``_prepare_dataset`` tokenizes it once before
  training and appends nothing, since the completions already end in
  ``<eos>``); Tunix and ours get the same token ids as arrays (Tunix's
  pre-tokenized ``TrainingInput`` path, ours a `PreferenceBatch`).
* **One DPO step**: 32 pairs, sigmoid DPO loss, beta 0.1, no label smoothing,
  the reference's log-probs recomputed by a forward of the frozen reference on
  every step (nobody precomputes), chosen and rejected in one batched forward
  (TRL and Tunix: 64 rows of prompt + completion; ours: the prompt once, see
  below), one Adam update (lr 1e-6 constant, betas 0.9 / 0.999, eps
  1e-8, weight decay 0, global-norm gradient clip 1.0), no gradient
  accumulation, float32, no gradient checkpointing.
* **Timing**: one untimed round of K steps first (compilation, warm-up; its time
  is reported apart), then alternating timed rounds of K steps (the order
  rotated every round, ``_timing.alternate``), the 1-minute load recorded each
  round. DPO steps / s per contender (min / median / max over rounds) and
  ratios ours / peer by ``_timing.speedup`` (ratio of medians, range from the
  two spreads, paired per-round ratios; a tie if the range straddles 1.0x).

How each contender runs (its own code path, minus logging):

* **TRL** ``DPOTrainer(model=<folder>, args=DPOConfig(per_device_train_batch_size
  =32, gradient_accumulation_steps=1, beta=0.1, loss_type=["sigmoid"],
  learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=0,
  weight_decay=0, max_grad_norm=1.0, precompute_ref_log_probs=False,
  padding_free=False, gradient_checkpointing=False, bf16=False, use_cpu=True,
  dataloader_num_workers=0, report_to="none", logging_steps=10**9,
  save_strategy="no"), train_dataset=<text pairs>)`` and ``trainer.train()`` for
  all the steps; a ``TrainerCallback.on_step_end`` ends a round after K optimizer
  steps and waits there for the next command (optimizer state and model carry
  over, as in one training run). What TRL 1.16.0's code does per step: the
  ``DataCollatorForPreference`` builds ``[prompt + chosen; prompt + rejected]``
  (2B rows, right-padded to the batch's longest, here none) with a completion
  mask; ``_compute_loss`` runs ONE concatenated forward of the policy (with
  grad) and ONE of the reference model under ``torch.no_grad`` (reference
  log-probs are NOT precomputed: ``precompute_ref_log_probs`` defaults to
  False), both through TRL's fused LM head (``add_fused_lm_head``: per-token
  log-probs computed in tiles without materialising the full logits, plus
  entropy / mean-logit / top-1 metrics), sums the completion tokens'
  log-probs, the sigmoid loss, backward, gradient clipping, ``AdamW`` (whatever
  ``trainer.optimizer`` is, recorded below); per-step metrics are accumulated
  in Python lists (never logged, since logging_steps is huge). Padding-free is
  off (DPOConfig says it is "temporarily unavailable" since the refactor and
  falls back to padding).
* **Tunix** ``DPOTrainer(model, ref_model, optax.chain(clip_by_global_norm(1.0),
  adam(1e-6)), DPOTrainingConfig(algorithm="dpo", beta=0.1, label_smoothing=0,
  eval_every_n_steps=10**9, max_steps=None))`` and ``trainer.train(batches)``
  under the 1-device ``("fsdp", "tp")`` mesh; the batch iterator ends a round
  when the K+1-th batch is asked for (after blocking on the policy's weights)
  and waits for the next command. What Tunix 0.1.7's code does per step:
  ``_prepare_inputs`` concatenates ``[prompt; prompt]`` and ``[chosen;
  rejected]`` eagerly (jnp ops dispatched one by one), builds the causal
  attention mask and positions, and computes the reference log-probs with a
  separately jitted ``compute_logps(ref_model, ...)`` (one concatenated
  forward, every step, not precomputed); then the jitted train step
  (``nnx.jit``, the optimizer donated) runs one concatenated policy forward +
  backward (``dpo_loss_fn``) and the optax update; losses and aux metrics are
  buffered and read back one step late (in-memory metrics logger, no
  backend).
* **Ours** (this repository's .venv) ``llm.make_preference(model_config,
  "dpo", batch_size=32, hparams=PreferenceHParams.create(learning_rate=1e-6,
  beta=0.1, max_grad_norm=1.0))``, two ways:
  ``ours``: ``jax.jit(pref.step, donate_argnums=0)`` called once per step from
  Python on a host (NumPy) `PreferenceBatch` of the next 32 pairs (what a
  training loop over a dataset does); ``ours_scan``: ``jax.jit(pref.run,
  static_argnames="num_steps")``, K steps in one compiled ``lax.scan``, each
  drawing its 32 pairs in the program from the device-resident set. Per step
  (both), for the policy (forward + backward) and for the reference (forward
  under ``stop_gradient``, recomputed each step): ``pair_logprobs`` runs the
  prompts once, ``[B, 16]``, into a key/value cache, then chosen and rejected
  together, ``[2B, 16]``, on two copies of that cache (since 6662950; the same
  log-probs and gradients as the concatenated forward, tested), so the
  prompt's layers run on 32 rows, not 64: 1536 token positions per pass
  instead of TRL's and Tunix's 2048; then the sigmoid loss and TRL's reward
  metrics, global-norm clip, Adam. ``ours_baseline`` (with
  ``--baseline-tree``): the jitted step of an earlier tree, e.g. e738ab8,
  whose ``pair_logprobs`` ran one concatenated ``[2B, 32]`` forward like the
  peers.

    python benchmarks/preference_speed.py            # writes results/preference_speed.*
    python benchmarks/preference_speed.py --quick    # smoke run, writes nothing
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from grpo_speed import (  # noqa: E402  (benchmarks/ on sys.path above)
    PEER_PACKAGES,
    Channel,
    live_array_mib,
    make_checkpoint,
    peer_python,
    rss_mib,
)

RESULTS = ROOT / "results"
NAME = "preference_speed"
EOS_ID = 258
EOS_TEXT = "<eos>"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclasses.dataclass(frozen=True)
class Workload:
    """The one DPO workload every contender runs."""

    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 256
    vocab_size: int = 261
    """Bytes 0-255 + 5 specials (as `convergence_jax.lm.ByteTokenizer`)."""
    rope_theta: float = 1_000_000.0
    """Tunix 0.1.7's Llama3 ``apply_rope`` hard-codes 1e6, so everyone uses it."""
    rms_norm_eps: float = 1e-6
    prompt_length: int = 16
    completion_length: int = 16
    """Tokens per completion, ``<eos>`` included."""
    batch_size: int = 32
    """Pairs per DPO step (2 x 32 rows per forward)."""
    num_pairs: int = 2048
    """Pairs in the training set (cycled through)."""
    beta: float = 0.1
    learning_rate: float = 1e-6
    max_grad_norm: float = 1.0
    steps_per_round: int = 30
    """K: DPO steps per timed round (and in the untimed warm-up round)."""
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Args:
    """DPO training speed: ours vs TRL's DPOTrainer vs Tunix's DPOTrainer."""

    workload: Workload = Workload()
    rounds: int = 9
    """Timed rounds (each runs every contender once, order rotated)."""
    quick: bool = False
    """Smoke run: 3 steps per round, 2 rounds, nothing written."""
    contenders: tuple[str, ...] = ("ours", "ours_scan", "trl", "tunix")
    out: Path = RESULTS
    baseline_tree: Path | None = None
    """Also time ``ours_baseline``: the jitted step with ``convergence_jax``
    imported from this folder (e.g. an earlier commit's tree, ``git archive
    <commit> convergence_jax | tar -x -C <folder>``), for a before / after in
    the same alternating rounds."""
    markdown_from: Path | None = None
    """Write the .md next to this results .json again, without running."""


# ------------------------------------------------------------------- the data


def make_pairs(w: Workload) -> dict:
    """``num_pairs`` text pairs (see the module docstring) and their token ids."""
    import numpy as np

    rng = np.random.default_rng(w.seed)
    n, p, c = w.num_pairs, w.prompt_length, w.completion_length - 1
    letters = np.asarray(list(LETTERS))
    prompt = rng.integers(0, 26, (n, p))
    chosen = prompt[:, :c][:, ::-1].copy()
    rejected = chosen.copy()
    pos = rng.integers(0, c, n)
    shift = rng.integers(1, 26, n)
    rejected[np.arange(n), pos] = (chosen[np.arange(n), pos] + shift) % 26
    text = {
        "prompt": ["".join(r) for r in letters[prompt]],
        "chosen": ["".join(r) + EOS_TEXT for r in letters[chosen]],
        "rejected": ["".join(r) + EOS_TEXT for r in letters[rejected]],
    }
    ids = {
        "prompt": [list(s.encode()) for s in text["prompt"]],
        "chosen": [
            list(s[: -len(EOS_TEXT)].encode()) + [EOS_ID] for s in text["chosen"]
        ],
        "rejected": [
            list(s[: -len(EOS_TEXT)].encode()) + [EOS_ID] for s in text["rejected"]
        ],
    }
    return {"text": text, "ids": ids}


def id_arrays(ids: dict):
    """NumPy int32 arrays (all rows the same length: no padding needed)."""
    import numpy as np

    out = {k: np.asarray(v, np.int32) for k, v in ids.items()}
    return out, {k: np.ones_like(v) for k, v in out.items()}


# -------------------------------------------------------------- the TRL side


def trl_worker(w: Workload, chan: Channel):
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    chan.send({
        "trl": trl.__version__, "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0], "rss_after_imports_mib": rss_mib(),
    })  # fmt: skip
    setup = chan.next()
    start = time.perf_counter()
    folder = setup["folder"]
    data = Dataset.from_dict(setup["text"])
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_dpo_"),
        per_device_train_batch_size=w.batch_size,
        gradient_accumulation_steps=1,
        beta=w.beta,
        loss_type=["sigmoid"],
        label_smoothing=0.0,
        learning_rate=w.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=w.max_grad_norm,
        max_steps=setup["total_steps"],
        precompute_ref_log_probs=False,
        padding_free=False,
        max_length=None,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        model_init_kwargs={"dtype": "float32"},
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10**9,
        disable_tqdm=True,
        use_cpu=True,
        seed=w.seed,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        model=folder,
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(folder),
    )
    first = [trainer.train_dataset[i] for i in range(w.batch_size)]
    lengths = {
        k: sorted({len(e[k]) for e in trainer.train_dataset})
        for k in ("prompt_ids", "chosen_ids", "rejected_ids")
    }
    inputs = trainer.data_collator(first)
    ids_match = [e["chosen_ids"] for e in first] == setup["first_chosen_ids"]
    chosen, rejected = trainer.compute_ref_log_probs(trainer.ref_model, inputs)
    state = {"left": 0, "t0": 0.0, "c0": 0.0}

    def opt(trainer):  # the torch optimizer inside accelerate's wrapper
        return getattr(trainer.optimizer, "optimizer", trainer.optimizer)

    def begin(cmd):
        if cmd["op"] != "run":
            return False
        state.update(left=cmd["steps"], t0=time.perf_counter(), c0=time.process_time())
        return True

    class Rounds(TrainerCallback):
        def on_step_end(self, args, st, control, **kwargs):
            state["left"] -= 1
            if state["left"] > 0:
                return
            chan.send({
                "seconds": time.perf_counter() - state["t0"],
                "cpu_seconds": time.process_time() - state["c0"],
                "optimizer_steps_so_far": int(st.global_step),
                "optimizer": type(opt(trainer)).__name__,
                "optimizer_defaults": {
                    k: v for k, v in opt(trainer).defaults.items()
                    if isinstance(v, int | float | bool | tuple | type(None))
                },
                "param_group_weight_decay": sorted(
                    {g["weight_decay"] for g in opt(trainer).param_groups}
                ),
                "peak_rss_mib": rss_mib(), "rss_mib": rss_mib("now"),
            })  # fmt: skip
            if not begin(chan.next()):
                control.should_training_stop = True

    trainer.add_callback(Rounds())
    chan.send({
        "build_seconds": time.perf_counter() - start,
        "check_logp": {"chosen": chosen.tolist(), "rejected": rejected.tolist()},
        "token_ids_match_ours": ids_match,
        "tokenized_lengths": lengths,
        "input_ids_shape": list(inputs["input_ids"].shape),
        "ref_model": type(trainer.ref_model).__name__,
        "precompute_ref_logps": trainer.precompute_ref_logps,
    })  # fmt: skip
    if begin(chan.next()):
        trainer.train()


# ------------------------------------------------------------ the Tunix side


def tunix_worker(w: Workload, chan: Channel):
    from importlib.metadata import version

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from tunix.models.llama3 import model as llama_lib
    from tunix.models.llama3 import params as llama_params
    from tunix.sft.dpo import dpo_trainer

    chan.send({
        "google-tunix": version("google-tunix"), "jax": jax.__version__,
        "flax": version("flax"), "optax": version("optax"),
        "device": str(jax.devices()[0]), "python": sys.version.split()[0],
        "rss_after_imports_mib": rss_mib(),
    })  # fmt: skip
    setup = chan.next()
    start = time.perf_counter()
    folder = setup["folder"]
    mesh = jax.sharding.Mesh(
        np.asarray(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp")
    )
    config = llama_lib.ModelConfig(
        num_layers=w.num_layers,
        vocab_size=w.vocab_size,
        embed_dim=w.hidden_size,
        hidden_dim=w.intermediate_size,
        num_heads=w.num_heads,
        head_dim=w.head_dim,
        num_kv_heads=w.num_kv_heads,
        rope_theta=int(w.rope_theta),
        norm_eps=w.rms_norm_eps,
        weight_tying=False,
    )

    def load():
        return llama_params.create_model_from_safe_tensors(
            folder, config, mesh, dtype=jnp.float32
        )

    policy, reference = load(), load()
    optimizer = optax.chain(
        optax.clip_by_global_norm(w.max_grad_norm), optax.adam(w.learning_rate)
    )
    trainer = dpo_trainer.DPOTrainer(
        model=policy,
        ref_model=reference,
        optimizer=optimizer,
        training_config=dpo_trainer.DPOTrainingConfig(
            algorithm="dpo",
            beta=w.beta,
            label_smoothing=0.0,
            eval_every_n_steps=10**9,
            max_steps=None,
            pbar_description=None,
        ),
    )
    ids, masks = id_arrays(setup["ids"])
    n, b = len(ids["prompt"]), w.batch_size

    def batch(i):
        lo = (i * b) % n
        sl = slice(lo, lo + b)
        return {
            "prompt_ids": ids["prompt"][sl], "prompt_mask": masks["prompt"][sl],
            "chosen_ids": ids["chosen"][sl], "chosen_mask": masks["chosen"][sl],
            "rejected_ids": ids["rejected"][sl],
            "rejected_mask": masks["rejected"][sl],
        }  # fmt: skip

    with mesh:
        example = trainer._prepare_inputs(batch(0))
    chan.send({
        "build_seconds": time.perf_counter() - start,
        "check_logp": {
            "chosen": np.asarray(example.ref_chosen_logps).tolist(),
            "rejected": np.asarray(example.ref_rejected_logps).tolist(),
        },
        "input_ids_shape": list(example.input_ids.shape),
        "logits_to_keep": example.logits_to_keep,
    })  # fmt: skip
    state = {"left": 0, "t0": 0.0, "c0": 0.0}

    def begin(cmd):
        if cmd["op"] != "run":
            return False
        state.update(left=cmd["steps"], t0=time.perf_counter(), c0=time.process_time())
        return True

    def batches():
        step = 0
        if not begin(chan.next()):
            return
        while True:
            if state["left"] == 0:
                jax.block_until_ready(nnx.state(policy, nnx.Param))
                chan.send({
                    "seconds": time.perf_counter() - state["t0"],
                    "cpu_seconds": time.process_time() - state["c0"],
                    "optimizer_steps_so_far": int(trainer.train_steps),
                    "peak_rss_mib": rss_mib(), "rss_mib": rss_mib("now"),
                    "live_array_mib": live_array_mib(),
                })  # fmt: skip
                if not begin(chan.next()):
                    return
            state["left"] -= 1
            yield batch(step)
            step += 1

    with mesh:
        trainer.train(batches())


# ------------------------------------------------------------------ our side


def ours_worker(w: Workload, chan: Channel, scan: bool):
    from importlib.metadata import version

    import jax
    import jax.numpy as jnp
    import numpy as np

    from convergence_jax import llm, lm

    chan.send({
        "jax": jax.__version__, "flax": version("flax"), "optax": version("optax"),
        "device": str(jax.devices()[0]), "python": sys.version.split()[0],
        "rss_after_imports_mib": rss_mib(),
    })  # fmt: skip
    setup = chan.next()
    start = time.perf_counter()
    model_config, params = lm.load_hf(
        setup["folder"], dtype="float32", param_dtype="float32"
    )
    hparams = llm.PreferenceHParams.create(
        learning_rate=w.learning_rate, beta=w.beta, max_grad_norm=w.max_grad_norm
    )
    pref = llm.make_preference(
        model_config, "dpo", batch_size=w.batch_size, hparams=hparams
    )
    # The reference is a copy (not the same buffers), so the state can be donated.
    state = pref.init(jax.random.key(w.seed), params, jax.tree.map(jnp.copy, params))
    ids, masks = id_arrays(setup["ids"])
    n, b = len(ids["prompt"]), w.batch_size

    def host_batch(i):
        lo = (i * b) % n
        sl = slice(lo, lo + b)
        return llm.PreferenceBatch(
            ids["prompt"][sl], masks["prompt"][sl], ids["chosen"][sl],
            masks["chosen"][sl], ids["rejected"][sl], masks["rejected"][sl],
        )  # fmt: skip

    first = jax.tree.map(jnp.asarray, host_batch(0))
    logps = llm.pair_logprobs(params, None, model_config, first)
    data = jax.tree.map(
        jnp.asarray,
        llm.PreferenceBatch(
            ids["prompt"], masks["prompt"], ids["chosen"], masks["chosen"],
            ids["rejected"], masks["rejected"],
        ),
    )  # fmt: skip
    step = jax.jit(pref.step, donate_argnums=0)
    run = jax.jit(pref.run, static_argnames="num_steps", donate_argnums=0)
    chan.send({
        "build_seconds": time.perf_counter() - start,
        "check_logp": {
            "chosen": np.asarray(logps.chosen.summed).tolist(),
            "rejected": np.asarray(logps.rejected.summed).tolist(),
        },
        "mode": "run (lax.scan of K steps)" if scan else "jitted step per batch",
        "convergence_jax_from": str(Path(llm.__file__).parents[1]),
    })  # fmt: skip
    i = 0
    while True:
        cmd = chan.next()
        if cmd["op"] != "run":
            return
        k = cmd["steps"]
        t0, c0 = time.perf_counter(), time.process_time()
        if scan:
            state, metrics = run(state, data, num_steps=k)
        else:
            for _ in range(k):
                state, metrics = step(state, host_batch(i))
                i += 1
        state, metrics = jax.block_until_ready((state, metrics))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        chan.send({
            "seconds": seconds, "cpu_seconds": cpu,
            "optimizer_steps_so_far": int(state.step),
            "last_loss": float(np.asarray(metrics["loss"]).reshape(-1)[-1]),
            "peak_rss_mib": rss_mib(), "rss_mib": rss_mib("now"),
            "live_array_mib": live_array_mib(),
        })  # fmt: skip


WORKERS = {
    "ours": lambda w, c: ours_worker(w, c, scan=False),
    "ours_baseline": lambda w, c: ours_worker(w, c, scan=False),
    "ours_scan": lambda w, c: ours_worker(w, c, scan=True),
    "trl": trl_worker,
    "tunix": tunix_worker,
}
VENV_OF = {
    "ours": None,
    "ours_baseline": None,
    "ours_scan": None,
    "trl": "trl",
    "tunix": "tunix",
}
LABEL = {
    "ours": "convergence_jax.llm (jitted step)",
    "ours_baseline": "convergence_jax.llm before (jitted step)",
    "ours_scan": "convergence_jax.llm (run: lax.scan)",
    "trl": "TRL DPOTrainer",
    "tunix": "Tunix DPOTrainer",
}


# ----------------------------------------------------------------- the parent


def source_state() -> dict:
    def git(*argv):
        out = subprocess.run(["git", *argv], cwd=ROOT.parent, capture_output=True)
        return out.stdout.decode().strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": [
            x
            for x in git("status", "--porcelain", "--", "convergence_jax").split("\n")
            if x
        ],
    }


def run_worker(kind, python, w: Workload, tree: Path | None = None):
    from _worker import JsonWorker, worker_env

    env = worker_env(
        JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false"
    )
    if tree is not None:  # its convergence_jax first on the path
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env["PYTHONPATH"]])
    argv = [python, __file__, "--worker", kind, json.dumps(dataclasses.asdict(w))]
    return JsonWorker(argv, env)


def summarize(values):
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def main(args: Args):
    from _machine import machine_info
    from _timing import alternate, speedup

    w = args.workload
    k = w.steps_per_round
    total_steps = k * (args.rounds + 1)
    pairs = make_pairs(w)
    contenders = list(args.contenders)
    if args.baseline_tree is not None and "ours_baseline" not in contenders:
        contenders.insert(1, "ours_baseline")
    result = {
        "benchmark": "DPO training speed: ours vs TRL DPOTrainer vs Tunix DPOTrainer",
        "workload": dataclasses.asdict(w),
        "rounds": args.rounds,
        "machine": machine_info(),
        "ours_source": source_state(),
        "peer_packages": PEER_PACKAGES,
        "contenders": {},
        "errors": {},
    }
    print("machine:", result["machine"], flush=True)
    pythons = {}
    for name in contenders:
        venv = VENV_OF[name]
        try:
            pythons[name] = sys.executable if venv is None else peer_python(venv)
        except Exception as error:
            result["errors"][name] = f"venv: {type(error).__name__}: {error}"
    folder = tempfile.mkdtemp(prefix="preference_speed_model_")
    made = subprocess.run(
        [peer_python("trl"), __file__, "--make-checkpoint",
         json.dumps(dataclasses.asdict(w)), folder],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result["checkpoint"] = json.loads(made.stdout.strip().splitlines()[-1])
    setup = {
        "op": "setup", "folder": folder, "text": pairs["text"], "ids": pairs["ids"],
        "total_steps": total_steps,
        "first_chosen_ids": pairs["ids"]["chosen"][: w.batch_size],
    }  # fmt: skip

    workers = {}
    replies = {}
    for name in contenders:
        if name not in pythons:
            continue
        try:
            tree = args.baseline_tree if name == "ours_baseline" else None
            worker = run_worker(name, pythons[name], w, tree)
            info = worker.info
            built = worker.ask(**setup)
            start = time.perf_counter()
            first = worker.ask(op="run", steps=k)
            first["wall_seconds_seen_by_parent"] = time.perf_counter() - start
        except Exception as error:  # a contender that cannot run is reported
            result["errors"][name] = f"{type(error).__name__}: {error}"
            print(f"{name} failed: {result['errors'][name]}", flush=True)
            continue
        workers[name], replies[name] = worker, []
        result["contenders"][name] = {"versions": info, "setup": built, "warmup": first}
        print(f"{name}: built in {built['build_seconds']:.1f} s, warm-up round of {k} "
              f"steps {first['seconds']:.2f} s", flush=True)  # fmt: skip

    ours = result["contenders"].get("ours", {}).get("setup", {}).get("check_logp")
    for entry in result["contenders"].values():
        logp = entry["setup"].pop("check_logp")
        entry["check_logp_first3"] = {s: logp[s][:3] for s in logp}
        if ours is not None:
            entry["logp_max_abs_diff_vs_ours"] = max(
                abs(a - b) for s in ("chosen", "rejected")
                for a, b in zip(logp[s], ours[s], strict=True)
            )  # fmt: skip

    def contender(name):
        def run(r):
            reply = workers[name].ask(op="run", steps=k)
            replies[name].append(reply)
            print(f"round {r + 1} {name}: {reply['seconds']:.3f} s", flush=True)
            return reply

        return run

    timing = alternate({n: contender(n) for n in workers}, args.rounds)
    for worker in workers.values():
        worker.close()
    for name in workers:
        reps = replies[name]
        entry = result["contenders"][name]
        entry["round_replies"] = reps
        entry["optimizer_steps_at_end"] = reps[-1]["optimizer_steps_so_far"]
        entry["round_seconds"] = summarize([r["seconds"] for r in reps])
        entry["steps_per_second"] = summarize([k / r["seconds"] for r in reps])
        entry["cpu_per_wall"] = summarize(
            [r["cpu_seconds"] / r["seconds"] for r in reps]
        )
        entry["peak_rss_mib"] = max(r["peak_rss_mib"] for r in reps)
        entry["warmup_minus_median_round_seconds"] = (
            entry["warmup"]["seconds"] - entry["round_seconds"]["median"]
        )
    result["timing"] = timing
    result["ratios"] = {}
    for a in ("ours", "ours_baseline", "ours_scan", "tunix"):
        for b in ("trl", "tunix"):
            if a in workers and b in workers and a != b:
                result["ratios"][f"{a}/{b}"] = speedup(timing, a, b)
    for a, b in (("ours_scan", "ours"), ("ours", "ours_baseline")):
        if a in workers and b in workers:
            result["ratios"][f"{a}/{b}"] = speedup(timing, a, b)
    if args.baseline_tree is not None:
        result["baseline_tree"] = str(args.baseline_tree)
    result["load_average_end"] = os.getloadavg()[0]
    return result


def _mmm(s, fmt="{:.1f}"):
    return (
        f"{fmt.format(s['median'])} ({fmt.format(s['min'])} .. {fmt.format(s['max'])})"
    )


def markdown(result) -> str:
    from _timing import fmt_speedup

    w, m, c = result["workload"], result["machine"], result["contenders"]
    k = w["steps_per_round"]
    t = result["timing"]["load"]
    lines = [
        "# DPO training speed: convergence_jax.llm vs TRL DPOTrainer vs Tunix "
        "DPOTrainer",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; all on "
        f"CPU. {result['rounds']} alternating timed rounds of {k} DPO steps per "
        "contender, after one untimed warm-up round each; every contender in its own "
        f"process. 1-minute load: {m['load_average_start']:.2f} at the start, "
        f"{t['min']:.2f} .. {t['max']:.2f} over the rounds (median {t['median']:.2f}), "
        f"{result['load_average_end']:.2f} at the end.",
        "",
        f"Workload: Llama decoder {w['num_layers']} layers, hidden {w['hidden_size']}, "
        f"{w['num_heads']} heads / {w['num_kv_heads']} KV heads, head_dim "
        f"{w['head_dim']}, MLP {w['intermediate_size']}, vocab {w['vocab_size']}, "
        "untied, float32, one set of weights for all; "
        f"{w['batch_size']} pairs per step, prompt {w['prompt_length']} + completion "
        f"{w['completion_length']} tokens (no padding), sigmoid DPO, beta {w['beta']}, "
        "frozen reference recomputed every step, chosen + rejected batched in one "
        "forward (TRL, Tunix, ours before: 64 rows of prompt + completion; ours: "
        f"the prompt once, see the notes), Adam lr {w['learning_rate']}, grad-norm "
        "clip "
        f"{w['max_grad_norm']}, no gradient accumulation.",
        "",
        "| contender | DPO steps / s | build (s) | warm-up round (s) | warm-up - "
        "median round (s) | CPU / wall | peak RSS (MiB) | log-p vs ours |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in c.items():
        if "steps_per_second" not in e:
            continue
        diff = e.get("logp_max_abs_diff_vs_ours")
        lines.append(
            f"| {LABEL[name]} | {_mmm(e['steps_per_second'])} | "
            f"{e['setup']['build_seconds']:.1f} | {e['warmup']['seconds']:.2f} | "
            f"{e['warmup_minus_median_round_seconds']:.2f} | "
            f"{e['cpu_per_wall']['median']:.2f} | {e['peak_rss_mib']:.0f} | "
            f"{'—' if diff is None else f'{diff:.1e}'} |"
        )
    lines += [
        "",
        "Steps / s: median (min .. max) over the timed rounds. Log-p vs ours: max "
        "|difference| of the first batch's summed chosen / rejected log-probs, each "
        "library's own code, same weights.",
        "",
        "| ratio (steps / s) | value |",
        "|---|---|",
    ]
    for pair, r in result["ratios"].items():
        a, b = pair.split("/")
        lines.append(f"| {LABEL[a]} / {LABEL[b]} | {fmt_speedup(r)} |")
    bar = {"trl": 5.0, "tunix": 2.0}
    verdicts = []
    for pair, r in result["ratios"].items():
        a, b = pair.split("/")
        if a.startswith("ours") and b in bar:
            p = r["paired"]
            met = (
                "met"
                if r["range"][0] >= bar[b]
                else (
                    "met by the median only" if r["of_medians"] >= bar[b] else "NOT met"
                )
            )
            verdicts.append(
                f"{LABEL[a]} / {LABEL[b]} >= {bar[b]:g}x: {met} "
                f"({r['of_medians']:.2f}x of medians, range "
                f"{r['range'][0]:.2f} .. {r['range'][1]:.2f}x, "
                f"paired {p['min']:.2f} .. {p['max']:.2f}x)"
            )
    if verdicts:
        lines += ["", "Issue 14's speed bar (at least 5x TRL, 2x Tunix):", ""]
        lines += [f"- {v}" for v in verdicts]
    lines += [
        "",
        "A ratio is the ratio of medians, its range one's min / other's max .. max / "
        "min, then the per-round (paired) ratios; bold only when the range excludes "
        "1.0x (otherwise a tie).",
        "",
        f"Rounds (seconds per round of {k} steps; order; 1-minute load):",
        "",
        "| round | order | "
        + " | ".join(LABEL[n] for n in result["timing"]["seconds"])
        + " | load |",
        "|---:|---|" + "---:|" * len(result["timing"]["seconds"]) + "---:|",
    ]
    for i, rec in enumerate(result["timing"]["rounds"]):
        cells = " | ".join(f"{rec[n]:.3f}" for n in result["timing"]["seconds"])
        lines.append(
            f"| {i + 1} | {', '.join(rec['order'])} | {cells} | {rec['load']:.2f} |"
        )
    steps = ", ".join(
        f"{LABEL[n]} {e['optimizer_steps_at_end']}"
        for n, e in c.items()
        if "optimizer_steps_at_end" in e
    )
    lines += [
        "",
        f"Optimizer steps each library counted by the end ((rounds + 1) x {k} = "
        f"{(result['rounds'] + 1) * k} expected): {steps}.",
        "",
        "## How each contender was run",
        "",
    ]
    for name, e in c.items():
        v = {a: b for a, b in e["versions"].items() if a != "rss_after_imports_mib"}
        setup = {a: b for a, b in e["setup"].items() if a != "build_seconds"}
        lines.append(f"- **{LABEL[name]}**: {json.dumps(v)}; {json.dumps(setup)}")
    trl = c.get("trl", {}).get("warmup", {})
    if trl.get("optimizer"):
        lines.append(
            f"- TRL's optimizer: {trl['optimizer']} "
            f"{json.dumps(trl['optimizer_defaults'])}; the weight decay of its "
            f"parameter groups (what it applies): {trl['param_group_weight_decay']}"
        )
    src = result.get("ours_source", {})
    if src:
        changed = src.get("uncommitted", [])
        lines.append(
            f"- Ours ran from commit {src['commit'][:10]}"
            + (f" with uncommitted changes in {changed}" if changed else "")
            + "."
        )
    lines += [
        "",
        "What each library's code does per step (concatenated forward, reference "
        "recomputed, not precomputed, fused LM head, ...) is in the script's "
        "docstring and in the notes below.",
        "",
        "## Notes",
        "",
    ]
    lines += [f"- {n}" for n in result.get("notes", [])]
    for name, err in result["errors"].items():
        lines.append(f"- {LABEL[name]} could not run: {err}")
    return "\n".join(lines) + "\n"


NOTES = [
    "All recompute the reference log-probs with a forward of the frozen "
    "reference every step. TRL and Tunix run chosen and rejected as one "
    "concatenated batch of 2 x 32 rows of prompt + completion (TRL: "
    "DataCollatorForPreference + _compute_loss; Tunix: _prepare_inputs + "
    "dpo_loss_fn), so each prompt goes through the model twice per pass; ours "
    "(pair_logprobs since 6662950) runs the 32 prompts once into a KV cache "
    "and the 64 completions on two copies of it: 25% fewer token positions per "
    "pass at 16 + 16 tokens, the same log-probs (max difference in the table). "
    "ours_baseline, when present, is the concatenated version. TRL's "
    "precompute_ref_log_probs=True would drop the reference forward from its "
    "steps (and ours could be given precomputed reference log-probs the same "
    "way); it is not used by anyone here.",
    "TRL's reference forward runs outside autograd (torch.no_grad); Tunix's in a "
    "separate jitted call before the jitted train step; ours inside the same "
    "compiled step under stop_gradient (XLA sees one program).",
    "TRL runs on torch with its default threads (both cores); JAX uses both "
    "cores through XLA's own thread pool.",
    "ours feeds a host NumPy batch per step to the jitted step (as TRL's "
    "dataloader and Tunix's iterator do); ours_scan draws its minibatches inside "
    "the compiled K-step lax.scan from the device-resident set (random.choice "
    "without replacement), so it has no per-step Python or host transfer.",
    "The machine is shared: each round's 1-minute load is in the rounds table. "
    "In the recorded run (load 4.1 .. 7.2 from other work) TRL's torch slowed "
    "most and most erratically (12 .. 84 s per round of 30 steps, CPU / wall "
    "about 1 on 2 cores), as in grpo_speed's notes; the JAX contenders' round 1 "
    "(load 7.2) was also about 2x their later rounds. The min-max ranges "
    "include that round; the paired per-round ratios are steadier.",
    "ours (jitted step, one call per step on a host batch) ran at about 2/3 of "
    "ours_scan (K steps in one lax.scan) here: per-step dispatch and host "
    "transfer, not measured apart.",
]


def parse() -> Args:
    import tyro

    args = tyro.cli(Args)
    if args.quick:
        args = dataclasses.replace(
            args,
            rounds=2,
            workload=dataclasses.replace(args.workload, steps_per_round=3),
        )
    return args


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, workload = sys.argv[2], Workload(**json.loads(sys.argv[3]))
        WORKERS[kind](workload, Channel())
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--make-checkpoint":
        workload = Workload(**json.loads(sys.argv[2]))
        print(json.dumps(make_checkpoint(workload, sys.argv[3])))
        sys.exit(0)
    args = parse()
    if args.markdown_from:
        result = json.loads(args.markdown_from.read_text())
        args.markdown_from.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {args.markdown_from.with_suffix('.md')}")
        sys.exit(0)
    result = main(args)
    result["notes"] = NOTES
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    print(text)
    if not args.quick:
        (args.out / f"{NAME}.md").write_text(text)
        print(f"wrote {args.out / NAME}.json and .md")
