"""GRPO training speed: convergence_jax.llm vs TRL's GRPOTrainer vs Tunix's GRPOLearner.

The same work for all three, side by side in one run on this machine, each
contender in its own worker process (so that peak memory is per contender):

* **Model**: one Llama-family decoder built from a config, no download: 2 layers,
  hidden 64, 4 attention heads, 2 KV heads, head_dim 16, intermediate 256,
  vocabulary 261 (`convergence_jax.lm.ByteTokenizer`: bytes 0-255 then
  ``<pad>``=256, ``<bos>``, ``<eos>``=258, ``<|im_start|>``, ``<|im_end|>``=260),
  untied embeddings, float32, RoPE theta 1e6 (Tunix 0.1.7's Llama3 ``apply_rope``
  always uses 1e6, whatever its config says, so the others are given 1e6 too).
  ONE set of weights: ``transformers.LlamaForCausalLM`` built from that config
  with a fixed torch seed and saved with ``save_pretrained`` (safetensors) into a
  temporary folder, with a ``PreTrainedTokenizerFast`` of the same 261 ids (a
  byte-level BPE with no merges and the five specials as added tokens, no BOS
  added) and ``generation_config.eos_token_id = [258, 260]`` (the task's stop
  tokens). Ours loads it with ``lm.load_hf``; TRL with ``from_pretrained``
  (policy and, as TRL does itself, the reference from the same path); Tunix with
  its own ``models.llama3.params.create_model_from_safe_tensors`` (its own
  key mapping) for the actor and again for the reference. Before timing, each
  contender's log-probabilities of the same token rows are compared with ours.
* **Task**: 3-digit addition ``"123+456="`` (`convergence_jax.llm.tasks.addition`),
  16 prompts per GRPO step, G = 8 completions each (128 per step), at most 8 new
  tokens, temperature 1.0, no top-k / top-p, stop tokens 258 and 260, reward =
  the task's partial credit (fraction of sum digits right from the units up).
  Ours samples prompts inside its compiled program; the peers get prompts drawn
  from the same task (``task.sample``, decoded to text) and score with a NumPy
  transcription of the task's reward on the completion **token ids** (checked
  here against ``task.reward`` on random completions before the run).
* **One GRPO step**: generate, rewards, group advantages (mean / std of the
  group), reference log-probs (beta = 0.04, k3 KL, frozen reference model), the
  policy log-probs, one Adam update on one minibatch of all 128 completions
  (num_iterations / mu = 1), clip epsilon 0.2, learning rate 1e-6, gradient
  global-norm clip as in `Workload.max_grad_norm`.
* **Timing**: one untimed round of K steps first (compilation, warm-up; its time
  is reported apart), then alternating timed rounds of K GRPO steps (the order
  rotated every round, see ``_timing.alternate``), the 1-minute load recorded
  each round. Per contender: GRPO steps / s, generated tokens / s (completion
  tokens up to and including the stop token, or 8 if none: counted from what
  each library actually generated), peak RSS of its process (``ru_maxrss``) and
  its RSS after imports; ratios ours / peer by ``_timing.speedup`` (ratio of
  medians, range from the two spreads, a tie if it straddles 1.0x).

How each peer runs (its own code path, minus logging):

* **TRL** (``benchmarks/.venvs/trl``: trl, CPU torch, transformers):
  ``GRPOTrainer(model=<folder>, reward_funcs=[partial_credit], args=GRPOConfig(
  per_device_train_batch_size=128, gradient_accumulation_steps=1,
  num_generations=8, generation_batch_size=128, max_completion_length=8,
  temperature=1.0, beta=0.04, loss_type="grpo", scale_rewards="group",
  num_iterations=1, use_vllm=False, bf16=False, gradient_checkpointing=False,
  lr_scheduler_type="constant", report_to="none", save_strategy="no",
  logging_steps=10**9, use_cpu=True))`` and ``trainer.train()`` for all the
  steps; a ``TrainerCallback.on_step_end`` ends a round after K optimizer steps
  and waits there for the next command, so optimizer state and the model carry
  over between rounds as in one training run. Per step TRL generates with
  ``model.generate`` (KV cache, stops when every row hit a stop token), decodes
  the text, calls the reward function, computes the reference log-probs with a
  forward of the reference model and the loss with a forward + backward of the
  policy (old log-probs are the detached current ones, mu = 1), then AdamW
  (weight decay 0). Loss ``grpo``: per-sequence token mean, then mean over rows.
* **Tunix** (``benchmarks/.venvs/tunix``: google-tunix and its JAX):
  ``GRPOLearner(RLCluster(actor, reference, tokenizer, ClusterConfig(role_to_mesh
  = the 1-device ("fsdp", "tp") mesh for actor / reference / rollout,
  rollout_engine="vanilla", training_config=RLTrainingConfig(actor_optimizer=
  optax Adam (+ global-norm clip), eval_every_n_steps=10**9, max_steps=10**9),
  rollout_config=RolloutConfig(max_tokens_to_generate=8, max_prompt_length=8,
  kv_cache_size=16, temperature=1.0, top_p=1.0, eos_tokens=[258, 260]))),
  GRPOConfig(num_generations=8, num_iterations=1, beta=0.04, epsilon=0.2,
  loss_agg_mode="sequence-mean-token-mean", kl_loss_mode="low_var_kl"))``,
  ``learner.train(batches)`` for all the steps; the batch iterator ends a round
  when the K+1-th batch is asked for (after blocking on the actor's weights) and
  waits for the next command. Per step Tunix's vanilla sampler prefills and
  decodes (jitted, ``while_loop`` until every row stopped), decodes text, runs
  the reward function, computes reference log-probs (jitted forward), GRPO
  advantages in NumPy, then one jitted train step (forward + backward + optax).
  Its reward function receives text; the token ids of the same completions are
  taken from the rollout's output (a wrapper around ``rollout.generate``).
* **Ours** (this repository's .venv): ``llm.make_grpo(GRPOConfig(...),
  model_config, task)``; ``program.run(state, num_steps=K)`` is one compiled
  ``lax.scan`` of K steps (sampling, reward, advantages, reference log-probs,
  update), results blocked on.

    python benchmarks/grpo_speed.py            # full run, writes results/grpo_speed.*
    python benchmarks/grpo_speed.py --quick    # smoke run, writes nothing
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
VENVS = ROOT / ".venvs"
NAME = "grpo_speed"
TORCH_VERSION = "2.13.0"  # the CPU wheel on this machine's disk
PEER_PACKAGES = {
    "trl": [f"torch=={TORCH_VERSION}", "trl==1.16.0"],
    "tunix": ["google-tunix==0.1.7"],
}
PEER_MODULES = {"trl": "trl", "tunix": "tunix"}
SPECIALS = ("<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>")
STOP_TOKENS = (258, 260)
PAD_ID = 256
OTHER = "\x01"  # a character outside the task's alphabet (one wrong character)
ALPHABET = "0123456789+="
WHITESPACE = " \t\n\r"


@dataclasses.dataclass(frozen=True)
class Workload:
    """The one GRPO workload all three contenders run."""

    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 256
    vocab_size: int = 261
    """ByteTokenizer: 256 bytes + 5 specials."""
    rope_theta: float = 1_000_000.0
    """Tunix 0.1.7's Llama3 ``apply_rope`` hard-codes 1e6, so everyone uses it."""
    rms_norm_eps: float = 1e-6
    num_digits: int = 3
    num_prompts: int = 16
    """Prompts per GRPO step."""
    group_size: int = 8
    """Completions per prompt (G)."""
    max_new_tokens: int = 8
    temperature: float = 1.0
    beta: float = 0.04
    epsilon: float = 0.2
    learning_rate: float = 1e-6
    max_grad_norm: float = 1.0
    """Global-norm gradient clip (TRL's default; given to Tunix and ours too)."""
    steps_per_round: int = 20
    """K: GRPO steps per timed round (and in the untimed warm-up round)."""
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Args:
    """GRPO training speed: ours vs TRL's GRPOTrainer vs Tunix's GRPOLearner."""

    workload: Workload = Workload()
    rounds: int = 15
    """Timed rounds (each runs every contender once, order rotated)."""
    quick: bool = False
    """Smoke run: 3 steps per round, 2 rounds, nothing written."""
    contenders: tuple[str, ...] = ("ours", "trl", "tunix")
    out: Path = RESULTS
    trl_python: str | None = None
    """Interpreter with trl (default: benchmarks/.venvs/trl, created if missing)."""
    tunix_python: str | None = None
    """Interpreter with google-tunix (default: benchmarks/.venvs/tunix)."""
    markdown_from: Path | None = None
    """Write the .md next to this results .json again, without running."""


# ------------------------------------------------------------------ the reward


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what ByteLevel BPE uses)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def char_table() -> list[str]:
    """What each of the 261 ids spells for the addition verifier, as
    ``convergence_jax.llm.tasks`` builds it for the ByteTokenizer: alphabet
    characters, "" for whitespace, one OTHER for anything else."""
    table = []
    for i in range(256 + len(SPECIALS)):
        text = bytes([i]).decode("utf-8", errors="replace") if i < 256 else ""
        if i >= 256:
            text = SPECIALS[i - 256]
        chars = [c for c in text if c not in WHITESPACE]
        if all(c in ALPHABET for c in chars) and len(chars) <= 1:
            table.append("".join(chars))
        else:
            table.append(OTHER)
    return table


def partial_credit(ids, answer: str, table) -> float:
    """The addition task's reward on completion ids: characters up to the first
    stop token, right-aligned against the answer digits, matches / longer."""
    chars = []
    for t in ids:
        t = int(t)
        if t in STOP_TOKENS:
            break
        chars.extend(table[t] if 0 <= t < len(table) else OTHER)
    n = min(len(chars), len(answer))
    matches = sum(chars[-1 - k] == answer[-1 - k] for k in range(n))
    return matches / max(len(chars), len(answer), 1)


def generated_tokens(ids, max_new_tokens: int) -> int:
    """Tokens sampled for one completion: up to and including the first stop
    token, else all ``max_new_tokens``."""
    for k, t in enumerate(ids):
        if int(t) in STOP_TOKENS:
            return k + 1
    return min(len(ids), max_new_tokens) if len(ids) else max_new_tokens


# ------------------------------------------------------------ worker plumbing


class Channel:
    """JSON lines: commands on stdin, replies on the real stdout."""

    def __init__(self):
        self.out = sys.stdout
        sys.stdout = sys.stderr  # library chatter must not break the protocol

    def send(self, obj):
        print(json.dumps(obj), file=self.out, flush=True)

    def next(self) -> dict:
        line = sys.stdin.readline()
        return json.loads(line) if line else {"op": "quit"}


def live_array_mib() -> float | None:
    """Bytes held by live JAX arrays (CPU has no allocator peak to read)."""
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    return sum(x.nbytes for x in jax.live_arrays()) / 2**20


def rss_mib(kind="peak") -> float:
    if kind == "peak":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RoundClock:
    """Times rounds of K steps inside a peer's own training loop."""

    def __init__(self, chan, max_new_tokens):
        self.chan, self.max_new_tokens = chan, max_new_tokens
        self.steps_left = 0
        self.tokens = self.completions = 0
        self.rewards = []

    def start(self, cmd):
        if cmd["op"] != "run":
            return False
        self.steps_left = cmd["steps"]
        self.tokens = self.completions = 0
        self.rewards = []
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return True

    def record(self, completion_ids, rewards):
        self.tokens += sum(
            generated_tokens(c, self.max_new_tokens) for c in completion_ids
        )
        self.completions += len(completion_ids)
        self.rewards.extend(rewards)

    def finish(self, optimizer_steps):
        self.chan.send({
            "optimizer_steps_so_far": int(optimizer_steps),
            "seconds": time.perf_counter() - self.t0,
            "cpu_seconds": time.process_time() - self.c0,
            "generated_tokens": self.tokens,
            "completions": self.completions,
            "reward_mean": statistics.fmean(self.rewards) if self.rewards else None,
            "peak_rss_mib": rss_mib(), "live_array_mib": live_array_mib(),
            "rss_mib": rss_mib("now"),
        })  # fmt: skip


def check_rows(w: Workload):
    """Fixed token rows [2, 12] whose log-probs every contender reports."""
    import random

    rng = random.Random(w.seed)
    return [[rng.randrange(256) for _ in range(12)] for _ in range(2)]  # bytes


# -------------------------------------------------------------- the TRL side


def make_checkpoint(w: Workload, folder: str):
    """Build the model and tokenizer once (in the TRL venv: torch, transformers)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(w.seed)
    config = LlamaConfig(
        vocab_size=w.vocab_size,
        hidden_size=w.hidden_size,
        intermediate_size=w.intermediate_size,
        num_hidden_layers=w.num_layers,
        num_attention_heads=w.num_heads,
        num_key_value_heads=w.num_kv_heads,
        head_dim=w.head_dim,
        max_position_embeddings=64,
        rms_norm_eps=w.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": w.rope_theta},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=list(STOP_TOKENS),
        pad_token_id=PAD_ID,
        dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=list(STOP_TOKENS), pad_token_id=PAD_ID, bos_token_id=None
    )
    model.save_pretrained(folder, safe_serialization=True)

    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=False
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>"
    )
    hf.save_pretrained(folder)
    ids = [hf.convert_tokens_to_ids(s) for s in SPECIALS]
    assert ids == list(range(256, 261)), ids
    return {"special_ids": ids, "encode_check": hf("117+226=<eos>")["input_ids"]}


def trl_worker(w: Workload, chan: Channel):
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    chan.send({
        "trl": trl.__version__, "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0], "rss_after_imports_mib": rss_mib(),
    })  # fmt: skip
    setup = chan.next()
    start = time.perf_counter()
    folder, table = setup["folder"], setup["table"]
    clock = RoundClock(chan, w.max_new_tokens)

    def addition_partial_credit(prompts, completions, completion_ids, answer, **kw):
        rewards = [
            partial_credit(c, a, table)
            for c, a in zip(completion_ids, answer, strict=True)
        ]
        clock.record(completion_ids, rewards)
        return rewards

    data = Dataset.from_dict({"prompt": setup["prompts"], "answer": setup["answers"]})
    batch = w.num_prompts * w.group_size
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_grpo_"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=w.group_size,
        generation_batch_size=batch,
        max_completion_length=w.max_new_tokens,
        temperature=w.temperature,
        top_p=1.0,
        top_k=0,
        beta=w.beta,
        epsilon=w.epsilon,
        loss_type="grpo",
        scale_rewards="group",
        num_iterations=1,
        learning_rate=w.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=w.max_grad_norm,
        max_steps=setup["total_steps"],
        use_vllm=False,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        model_init_kwargs={"dtype": "float32"},
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10**9,
        log_completions=False,
        disable_tqdm=True,
        use_cpu=True,
        seed=w.seed,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=folder,
        reward_funcs=[addition_partial_credit],
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(folder),
    )

    class Rounds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.steps_left -= 1
            if clock.steps_left > 0:
                return
            clock.finish(state.global_step)
            if not clock.start(chan.next()):
                control.should_training_stop = True

    trainer.add_callback(Rounds())
    rows = torch.tensor(check_rows(w))
    with torch.no_grad():
        logits = trainer.model(rows).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, rows[:, 1:, None])[..., 0]
    chan.send({
        "build_seconds": time.perf_counter() - start,
        "check_logp": logp.tolist(),
        "ref_model": type(trainer.ref_model).__name__,
        "optimizer": None,
        "eos_token_ids": list(trainer.eos_token_ids),
        "generation_config": trainer.generation_config.to_dict(),
        "steps_per_generation": trainer.args.steps_per_generation,
    })  # fmt: skip
    if clock.start(chan.next()):
        trainer.train()


# ------------------------------------------------------------ the Tunix side


def tunix_worker(w: Workload, chan: Channel):
    from importlib.metadata import version

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from transformers import AutoTokenizer
    from tunix.models.llama3 import model as llama_lib
    from tunix.models.llama3 import params as llama_params
    from tunix.rl import rl_cluster as rl_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    chan.send({
        "google-tunix": version("google-tunix"), "jax": jax.__version__,
        "flax": version("flax"), "optax": version("optax"),
        "device": str(jax.devices()[0]), "python": sys.version.split()[0],
        "rss_after_imports_mib": rss_mib(),
    })  # fmt: skip
    setup = chan.next()
    start = time.perf_counter()
    folder, table = setup["folder"], setup["table"]
    clock = RoundClock(chan, w.max_new_tokens)
    # Auto axes (jax.make_mesh would make Explicit ones, which Tunix 0.1.7's
    # models do not support).
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

    actor, reference = load(), load()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    optimizer = optax.chain(
        optax.clip_by_global_norm(w.max_grad_norm), optax.adam(w.learning_rate)
    )
    prompt_length = max(len(tokenizer(p)["input_ids"]) for p in setup["prompts"])
    cluster_config = rl_lib.ClusterConfig(
        role_to_mesh={
            rl_lib.Role.ACTOR: mesh,
            rl_lib.Role.REFERENCE: mesh,
            rl_lib.Role.ROLLOUT: mesh,
        },
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=rl_lib.RLTrainingConfig(
            actor_optimizer=optimizer,
            eval_every_n_steps=10**9,
            max_steps=10**9,
            pbar_description=None,
        ),
        rollout_config=base_rollout.RolloutConfig(
            max_tokens_to_generate=w.max_new_tokens,
            max_prompt_length=prompt_length,
            kv_cache_size=prompt_length + w.max_new_tokens,
            temperature=w.temperature,
            top_p=1.0,
            top_k=None,
            eos_tokens=list(STOP_TOKENS),
        ),
    )
    cluster = rl_lib.RLCluster(
        actor=actor, reference=reference, tokenizer=tokenizer,
        cluster_config=cluster_config,
    )  # fmt: skip
    rollout = cluster.rollout
    generate = rollout.generate
    last = {}

    def generate_and_keep_ids(*args, **kwargs):
        out = generate(*args, **kwargs)
        last["tokens"] = [list(map(int, t)) for t in out.tokens]
        last["text"] = list(out.text)
        return out

    rollout.generate = generate_and_keep_ids

    def addition_partial_credit(prompts, completions, answer, **kwargs):
        ids = last["tokens"]
        assert list(completions) == last["text"], "completions out of order"
        rewards = [
            partial_credit(c, a, table) for c, a in zip(ids, answer, strict=True)
        ]
        clock.record(ids, rewards)
        return rewards

    algo = grpo_learner.GRPOConfig(
        num_generations=w.group_size,
        num_iterations=1,
        beta=w.beta,
        epsilon=w.epsilon,
        loss_agg_mode="sequence-mean-token-mean",
        kl_loss_mode="low_var_kl",
    )
    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster, algo_config=algo, reward_fns=[addition_partial_credit]
    )
    # Tunix's own reference log-probs (the reference holds the same weights) of
    # the last 8 tokens of each check row given the first 4.
    rows = jnp.asarray(check_rows(w), jnp.int32)
    logp = cluster.get_ref_per_token_logps(
        rows[:, :4], rows[:, 4:], pad_id=PAD_ID, eos_id=STOP_TOKENS[0]
    )
    chan.send({
        "build_seconds": time.perf_counter() - start,
        "check_logp": np.asarray(logp).tolist(),
        "max_prompt_length": prompt_length,
    })  # fmt: skip

    # NumPy arrays, as a grain dataset gives them (Tunix repeats them per group).
    prompts, answers = np.asarray(setup["prompts"]), np.asarray(setup["answers"])
    n = w.num_prompts

    def batches():
        step = 0
        if not clock.start(chan.next()):
            return
        while True:
            if clock.steps_left == 0:
                jax.block_until_ready(nnx.state(actor, nnx.Param))
                clock.finish(cluster.actor_trainer.train_steps)
                if not clock.start(chan.next()):
                    return
            clock.steps_left -= 1
            lo = (step * n) % len(prompts)
            step += 1
            yield {"prompts": prompts[lo : lo + n], "answer": answers[lo : lo + n]}

    learner.train(batches())


# ------------------------------------------------------------------ our side


def ours_worker(w: Workload, chan: Channel):
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
    task = llm.tasks.addition(w.num_digits, lm.ByteTokenizer())
    config = llm.GRPOConfig(
        loss="grpo",
        num_prompts=w.num_prompts,
        group_size=w.group_size,
        max_new_tokens=w.max_new_tokens,
        num_epochs=1,
        num_minibatches=1,
        learning_rate=w.learning_rate,
        beta=w.beta,
        epsilon_low=w.epsilon,
        epsilon_high=w.epsilon,
        kl_estimator="k3",
        temperature=w.temperature,
        top_k=0,
        top_p=1.0,
        max_grad_norm=w.max_grad_norm,
        weight_decay=0.0,
    )
    program = llm.make_grpo(config, model_config, task)
    state = program.init(jax.random.key(w.seed), params)
    # program.run is one lax.scan but not jitted itself (at 6816a76): called as
    # is it traces and compiles again on every call (~20 s here), so it is
    # wrapped in jax.jit with num_steps static, compiled once in the warm-up.
    jitted = hasattr(program.run, "lower")
    run = program.run if jitted else jax.jit(program.run, static_argnames="num_steps")
    rows = jnp.asarray(check_rows(w), jnp.int32)
    logp = lm.token_logprobs(params, model_config, rows)
    chan.send({
        "build_seconds": time.perf_counter() - start,
        "check_logp": np.asarray(logp).tolist(),
        "run_was_jitted": jitted,
        "grpo_config": {k: repr(v) for k, v in dataclasses.asdict(config).items()},
    })  # fmt: skip
    completions = w.num_prompts * w.group_size
    while True:
        cmd = chan.next()
        if cmd["op"] != "run":
            return
        t0, c0 = time.perf_counter(), time.process_time()
        state, metrics = run(state, num_steps=cmd["steps"])
        state, metrics = jax.block_until_ready((state, metrics))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        metrics = jax.device_get(metrics)
        # completion_length: the mean mask sum (up to and including the stop
        # token) of the step's completions.
        lengths = np.asarray(metrics["completion_length"], np.float64)
        chan.send({
            "seconds": seconds, "cpu_seconds": cpu,
            "generated_tokens": int(round(float(lengths.sum()) * completions)),
            "completions": cmd["steps"] * completions,
            "reward_mean": float(np.mean(metrics["reward"])),
            "optimizer_steps_so_far": int(state.step),
            "peak_rss_mib": rss_mib(), "live_array_mib": live_array_mib(),
            "rss_mib": rss_mib("now"),
        })  # fmt: skip


WORKERS = {"ours": ours_worker, "trl": trl_worker, "tunix": tunix_worker}


# ----------------------------------------------------------------- the parent


def _installed(python, module, packages) -> bool:
    pins = [p.split("==") for p in packages]
    code = (
        f"import {module}\n"
        "from importlib.metadata import version\n"
        f"for name, want in {pins!r}:\n"
        "    assert version(name).split('+')[0] == want, (name, version(name))\n"
    )
    probe = [str(python), "-c", code]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def peer_python(name, given=None) -> str:
    """The interpreter of ``benchmarks/.venvs/<name>``, created on first use."""
    if given:
        return given
    venv = VENVS / name
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    packages = PEER_PACKAGES[name]
    if not _installed(python, PEER_MODULES[name], packages):
        print(f"installing {' '.join(packages)} into {venv}", flush=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        for package in packages:  # CPU torch first: trl must not pull a CUDA one
            subprocess.run([*pip, package], check=True)
    return str(python)


def prompts_for_peers(w: Workload, total_steps: int):
    """Prompts and answers (text) from the same task ours samples from."""
    import jax
    import numpy as np

    from convergence_jax import llm, lm

    tokenizer = lm.ByteTokenizer()
    task = llm.tasks.addition(w.num_digits, tokenizer)
    batch = task.sample(jax.random.key(w.seed + 1), w.num_prompts * total_steps)
    prompts = task.to_text(batch.prompt_tokens, batch.prompt_mask)
    answers = task.to_text(batch.answer_tokens, batch.answer_mask)
    assert all(a.isdigit() for a in answers), answers[:4]
    return prompts, answers, task, np.asarray(batch.prompt_tokens)


def check_reward(w: Workload, task, table) -> dict:
    """The NumPy transcription vs ``task.reward`` on random completions."""
    import jax
    import numpy as np

    rng = np.random.default_rng(w.seed)
    batch = task.sample(jax.random.key(w.seed + 2), 256)
    answers = task.to_text(batch.answer_tokens, batch.answer_mask)
    digits = np.asarray(batch.answer_tokens)[:, : w.max_new_tokens]
    pool = np.concatenate([np.arange(48, 58), [43, 61, 32, 258, 260, 256, 200, 65]])
    comps = rng.choice(pool, (256, w.max_new_tokens))
    comps[::3, : digits.shape[1]] = digits[::3]  # some exact answers
    comps[1::3] = rng.integers(0, w.vocab_size, (len(comps[1::3]), w.max_new_tokens))
    mask = np.ones_like(comps)
    want = np.asarray(task.reward(comps, mask, batch))
    got = np.asarray(
        [partial_credit(c, a, table) for c, a in zip(comps, answers, strict=True)]
    )
    return {
        "completions": len(comps),
        "max_abs_diff": float(np.abs(want - got).max()),
        "exact_rows": int((want == 1).sum()),
        "mean_reward": float(want.mean()),
    }


def source_state() -> dict:
    """The commit ours ran from and any uncommitted change under convergence_jax/."""

    def git(*argv):
        out = subprocess.run(["git", *argv], cwd=ROOT.parent, capture_output=True)
        return out.stdout.decode().strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": git("status", "--porcelain", "--", "convergence_jax").split(
            "\n"
        ),
    }


def run_worker(kind, python, w: Workload):
    sys.path.insert(0, str(ROOT))
    from _worker import JsonWorker, worker_env

    env = worker_env(
        JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false"
    )
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
    sys.path.insert(0, str(ROOT))
    from _machine import machine_info
    from _timing import alternate, speedup

    w = args.workload
    k = w.steps_per_round
    total_steps = k * (args.rounds + 1)
    table = char_table()
    prompts, answers, task, _ = prompts_for_peers(w, total_steps)
    result = {
        "benchmark": "GRPO training speed: ours vs TRL GRPOTrainer vs Tunix "
        "GRPOLearner",
        "workload": dataclasses.asdict(w),
        "rounds": args.rounds,
        "machine": machine_info(),
        "reward_check": check_reward(w, task, table),
        "ours_source": source_state(),
        "contenders": {},
        "errors": {},
    }
    print("reward check:", result["reward_check"], flush=True)
    folder = tempfile.mkdtemp(prefix="grpo_speed_model_")
    pythons = {"ours": sys.executable}
    for peer in ("trl", "tunix"):
        if peer in args.contenders:
            pythons[peer] = peer_python(peer, getattr(args, f"{peer}_python"))
    trl_python = pythons.get("trl") or peer_python("trl", args.trl_python)
    made = subprocess.run(
        [trl_python, __file__, "--make-checkpoint",
         json.dumps(dataclasses.asdict(w)), folder],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result["checkpoint"] = json.loads(made.stdout.strip().splitlines()[-1])
    print("checkpoint:", result["checkpoint"], flush=True)

    workers, replies = {}, {}
    for name in args.contenders:
        try:
            worker = run_worker(name, pythons[name], w)
            info = worker.info
            built = worker.ask(
                op="setup", folder=folder, prompts=prompts, answers=answers,
                table=table, total_steps=total_steps,
            )  # fmt: skip
            start = time.perf_counter()
            first = worker.ask(op="run", steps=k)
            first["wall_seconds_seen_by_parent"] = time.perf_counter() - start
        except Exception as error:  # a contender that cannot run is reported
            result["errors"][name] = f"{type(error).__name__}: {error}"
            print(f"{name} failed: {result['errors'][name]}", flush=True)
            continue
        workers[name] = worker
        replies[name] = []
        result["contenders"][name] = {"versions": info, "setup": built, "warmup": first}
        print(f"{name}: built in {built['build_seconds']:.1f} s, first round of {k} "
              f"steps {first['seconds']:.2f} s", flush=True)  # fmt: skip

    ours_logp = result["contenders"].get("ours", {}).get("setup", {}).get("check_logp")
    for entry in result["contenders"].values():
        logp = entry["setup"].pop("check_logp")
        if ours_logp is not None:
            entry["logp_max_abs_diff_vs_ours"] = max(
                abs(a - b)  # Tunix gives the last 8 tokens of each row
                for ra, rb in zip(logp, ours_logp, strict=True)
                for a, b in zip(ra, rb[len(rb) - len(ra) :], strict=True)
            )

    def contender(name):
        def run(r):
            reply = workers[name].ask(op="run", steps=k)
            replies[name].append(reply)
            return reply

        return run

    timing = alternate({n: contender(n) for n in workers}, args.rounds)
    for worker in workers.values():
        worker.close()
    for name in workers:
        reps = replies[name]
        tokens = [r["generated_tokens"] for r in reps]
        entry = result["contenders"][name]
        entry["round_replies"] = reps
        entry["optimizer_steps_at_end"] = reps[-1]["optimizer_steps_so_far"]
        entry["round_seconds"] = summarize([r["seconds"] for r in reps])
        entry["steps_per_second"] = summarize([k / r["seconds"] for r in reps])
        entry["generated_tokens_per_second"] = summarize(
            [t / r["seconds"] for t, r in zip(tokens, reps, strict=True)]
        )
        entry["generated_tokens_per_round"] = summarize(tokens)
        entry["cpu_per_wall"] = summarize(
            [r["cpu_seconds"] / r["seconds"] for r in reps]
        )
        entry["reward_mean"] = summarize([r["reward_mean"] for r in reps])
        entry["peak_rss_mib"] = max(r["peak_rss_mib"] for r in reps)
        entry["rss_at_end_mib"] = reps[-1]["rss_mib"]
        entry["live_array_mib_at_end"] = reps[-1].get("live_array_mib")
        entry["rss_after_imports_mib"] = entry["versions"].get("rss_after_imports_mib")
        entry["warmup_minus_median_round_seconds"] = (
            entry["warmup"]["seconds"] - entry["round_seconds"]["median"]
        )
    # Tokens per second as a time per token, so that speedup() applies.
    token_timing = {
        "rounds": [
            {n: rec[n] / replies[n][i]["generated_tokens"] for n in workers}
            for i, rec in enumerate(timing["rounds"])
        ],
    }
    token_timing["seconds"] = {
        n: summarize([rec[n] for rec in token_timing["rounds"]]) for n in workers
    }
    result["timing"] = timing
    result["ratios"] = {}
    names = list(workers)
    for a in names:
        for b in names:
            if a != b and (a == "ours" or (a, b) == ("tunix", "trl")):
                result["ratios"][f"{a}/{b}"] = {
                    "steps_per_second": speedup(timing, a, b),
                    "generated_tokens_per_second": speedup(token_timing, a, b),
                    "peak_rss": result["contenders"][a]["peak_rss_mib"]
                    / result["contenders"][b]["peak_rss_mib"],
                }
    result["load_average_end"] = os.getloadavg()[0]
    return result


LABEL = {
    "ours": "convergence_jax.llm",
    "trl": "TRL GRPOTrainer",
    "tunix": "Tunix GRPOLearner",
}


def _mmm(s, fmt="{:.2f}"):
    return (
        f"{fmt.format(s['median'])} ({fmt.format(s['min'])} .. {fmt.format(s['max'])})"
    )


def markdown(result) -> str:
    w, m = result["workload"], result["machine"]
    c = result["contenders"]
    lines = [
        "# GRPO training speed: convergence_jax.llm vs TRL GRPOTrainer vs Tunix "
        "GRPOLearner",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; all "
        "on CPU. "
        f"{result['rounds']} alternating timed rounds of {w['steps_per_round']} GRPO "
        "steps per contender, after one untimed round each; every contender in its own "
        f"process. 1-minute load: {result['timing']['load']['min']:.2f} .. "
        f"{result['timing']['load']['max']:.2f} over the rounds (median "
        f"{result['timing']['load']['median']:.2f}), "
        f"{result['load_average_end']:.2f} at the end.",
        "",
        f"Workload: Llama decoder {w['num_layers']} layers, hidden {w['hidden_size']}, "
        f"{w['num_heads']} heads / {w['num_kv_heads']} KV heads, head_dim "
        f"{w['head_dim']}, "
        f"MLP {w['intermediate_size']}, vocab {w['vocab_size']}, untied, float32, RoPE "
        f"theta {w['rope_theta']:g}; {w['num_digits']}-digit addition, "
        f"{w['num_prompts']} "
        f"prompts x G={w['group_size']} = {w['num_prompts'] * w['group_size']} "
        f"completions per step, <= {w['max_new_tokens']} new tokens, temperature "
        f"{w['temperature']}, beta {w['beta']} (k3, frozen reference), clip "
        f"{w['epsilon']}, Adam lr {w['learning_rate']}, grad-norm clip "
        f"{w['max_grad_norm']}, one update on all completions per step (mu = 1).",
        "",
        "| contender | GRPO steps / s | generated tokens / s | tokens per step | "
        "peak RSS (MiB) | RSS after imports (MiB) | build (s) | first round (s) | "
        "first round - median round (s) | CPU / wall | mean reward | log-p vs ours |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    k = w["steps_per_round"]
    for name, e in c.items():
        if "steps_per_second" not in e:
            continue
        tps = e["generated_tokens_per_round"]["median"] / k
        diff = e.get("logp_max_abs_diff_vs_ours")
        lines.append(
            f"| {LABEL[name]} | {_mmm(e['steps_per_second'])} | "
            f"{_mmm(e['generated_tokens_per_second'], '{:,.0f}')} | {tps:.0f} | "
            f"{e['peak_rss_mib']:.0f} | {e['rss_after_imports_mib']:.0f} | "
            f"{e['setup']['build_seconds']:.1f} | {e['warmup']['seconds']:.1f} | "
            f"{e['warmup_minus_median_round_seconds']:.1f} | "
            f"{e['cpu_per_wall']['median']:.2f} | {e['reward_mean']['median']:.3f} | "
            f"{'—' if diff is None else f'{diff:.1e}'} |"
        )
    lines += [
        "",
        "Figures are median (min .. max) over the timed rounds. Peak RSS is the "
        "process's ru_maxrss over the whole run (imports, model, compilation, "
        "training); RSS after imports is the same figure before the model was built.",
        "",
        "Memory at the end of the last round: "
        + "; ".join(
            f"{LABEL[n]} RSS {e['rss_at_end_mib']:.0f} MiB"
            + (
                f", live JAX arrays {e['live_array_mib_at_end']:.1f} MiB"
                if e.get("live_array_mib_at_end") is not None
                else ""
            )
            for n, e in c.items()
            if "rss_at_end_mib" in e
        )
        + ".",
        "",
        "| ratio | GRPO steps / s | generated tokens / s | peak RSS |",
        "|---|---|---|---:|",
    ]
    sys.path.insert(0, str(ROOT))
    from _timing import fmt_speedup

    for pair, r in result["ratios"].items():
        a, b = pair.split("/")
        lines.append(
            f"| {LABEL[a]} / {LABEL[b]} | {fmt_speedup(r['steps_per_second'])} | "
            f"{fmt_speedup(r['generated_tokens_per_second'])} | {r['peak_rss']:.2f}x |"
        )
    lines += [
        "",
        "A speed ratio is the ratio of medians, its range one's min / other's max .. "
        "max / min, then the per-round (paired) ratios; bold only when the range "
        "excludes 1.0x. Peak RSS ratio: ours / peer (below 1 = less memory).",
        "",
        f"Rounds (seconds per round of {k} steps; order; 1-minute load):",
        "",
        "| round | order | "
        + " | ".join(LABEL[n] for n in result["timing"]["seconds"])
        + " | load |",
        "|---:|---|" + "---:|" * len(result["timing"]["seconds"]) + "---:|",
    ]
    for i, rec in enumerate(result["timing"]["rounds"]):
        cells = " | ".join(f"{rec[n]:.2f}" for n in result["timing"]["seconds"])
        lines.append(
            f"| {i + 1} | {', '.join(rec['order'])} | {cells} | {rec['load']:.2f} |"
        )
    rc = result["reward_check"]
    steps = ", ".join(
        f"{LABEL[n]} {e['optimizer_steps_at_end']}"
        for n, e in c.items()
        if "optimizer_steps_at_end" in e
    )
    lines += [
        "",
        f"Optimizer steps each library counted by the end ((rounds + 1) x {k} = "
        f"{(result['rounds'] + 1) * k} expected): {steps}.",
    ]
    lines += [
        "",
        "## How each contender was run",
        "",
    ]
    for name, e in c.items():
        v = {
            k2: v2 for k2, v2 in e["versions"].items() if k2 != "rss_after_imports_mib"
        }
        lines.append(f"- **{LABEL[name]}**: {json.dumps(v)}")
    src = result.get("ours_source", {})
    if src:
        changed = [x for x in src.get("uncommitted", []) if x]
        lines.append(
            f"- Ours ran from commit {src['commit'][:10]}"
            + (f" with uncommitted changes in {changed}" if changed else "")
            + "."
        )
    lines += [
        "",
        "The peers' configuration, their algorithm as their code runs it, and what "
        "differs are in the script's docstring and in `notes` below.",
        "",
        f"Reward check: the NumPy transcription of the task's partial credit (what "
        f"the peers score with) against `task.reward` on {rc['completions']} random "
        f"completions: max |diff| {rc['max_abs_diff']:.1e}.",
        "",
        "## Notes",
        "",
    ]
    lines += [f"- {n}" for n in result.get("notes", [])]
    for name, err in result["errors"].items():
        lines.append(f"- {LABEL[name]} could not run: {err}")
    return "\n".join(lines) + "\n"


NOTES = [
    "Ours: program.run is jitted (since 10f438a; at 6816a76 it was not, and "
    "recompiled on every call, about 20 s here); the worker still wraps it in "
    "jax.jit(..., static_argnames='num_steps'), a no-op on top, compiled once in "
    "the warm-up round.",
    "The machine is shared with other work: each round's 1-minute load is in the "
    "rounds table (this benchmark alone keeps it near 2 on the 2 cores). In an "
    "earlier run with other processes loading the machine (load 3-4), TRL's "
    "torch (2 OpenMP threads) slowed most, from about 2 s to 16-37 s per round "
    "of 20 steps, while the JAX contenders slowed by at most 2x.",
    "Advantage epsilon: TRL and ours divide by (std + 1e-4), Tunix by "
    "(std + 1e-6); this does not change the work done.",
    "Prompts: ours samples a fresh batch of 16 problems inside its compiled step; "
    "the peers read problems drawn from the same task with another key (a text "
    "dataset of 16 x steps prompts). Same distribution, not the same problems.",
    "Generated tokens count each completion up to and including its first stop "
    "token (8 if none), from each library's own output: TRL's masked "
    "completion_ids, Tunix's sampler tokens (which end before the stop token, so "
    "one is added when it stopped early), ours from its metrics.",
    "Tunix's completion mask is `token != pad`, so the stop token itself is not "
    "trained on, and a <pad> token sampled mid-completion is masked; TRL and ours "
    "mask after the first stop token only.",
    "Tunix's vanilla sampler is called with its rollout_config.seed = None, so it "
    "samples with PRNGKey(0) at every step (Tunix's behaviour, not changed here).",
    "TRL runs on torch with its default threads (both cores); JAX uses both cores "
    "through XLA's own thread pool.",
    "TRL's reward function gets completion ids (TRL passes them); Tunix's gets "
    "text, so its ids are taken from the rollout's output of the same call.",
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
