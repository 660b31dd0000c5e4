"""``convergence-jax agents train``: fine-tune an agent on demonstrations.

The YAML config (every key optional except ``data.train``; a flag overrides any
value, e.g. ``--train.steps 500``)::

    model:                  # a fresh model, unless init_from names a folder
      init_from: null       # an agent checkpoint, or a Hugging Face folder with
                            # tokenizer.json (Llama / Qwen2)
      hidden_size: 64
      intermediate_size: 256
      num_layers: 2
      num_heads: 4
      max_position_embeddings: 512
    data:
      train: demos.jsonl    # one MultiTurnTrajectory per line (agents.save_jsonl)
      eval: null            # held-out demonstrations: loss after each log
      max_length: null      # longest tokenized conversation (default: the data's)
    train:
      algorithm: sft
      steps: 200
      batch_size: 8
      learning_rate: 1.0e-3
      seed: 0
      log_every: 50
    agent:                  # written to agent.json
      name: null            # default: the output folder's name
      system_prompt: null   # default: init_from's (or none)
      temperature: 0.7
      max_tokens: 128
    output:
      dir: runs/agent       # the agent checkpoint folder (+ metrics.jsonl)

SFT: each conversation (with the agent's system prompt prepended where it has
no system turn: the prompt `agents serve` will give it) is tokenized with the
tokenizer's chat template by `agents.tokenize_trajectories`, whose loss mask is
1 on the assistant's own tokens only; the loss is `llm.sft.sft_loss` (the
masked next-token NLL) and the update `llm.sft.adamw_update` (clipping, Adam
moments, warmup / cosine schedule, decoupled decay), ``log_every`` steps per
compiled call (`jax.lax.fori_loop`: one program whatever the count). Batches
are drawn without replacement within an epoch (a fresh permutation of the
examples per epoch, from ``train.seed``).

Paths in the file are relative to the file's folder; a fresh model uses
`lm.ByteTokenizer` (no files needed). A bad value raises `ConfigError` naming
the key (``train.steps: must be >= 1, got 0``) before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import tyro
import yaml

from convergence_jax.optimize.config import ConfigError, _build

__all__ = [
    "AgentSection",
    "AgentTrainConfig",
    "DataSection",
    "GRPOSection",
    "ModelSection",
    "OutputSection",
    "TrainResult",
    "TrainSection",
    "load_train_config",
    "train_agent",
    "validate_train_config",
]


@dataclass(frozen=True)
class ModelSection:
    """The model trained: a fresh one of this shape, or ``init_from``."""

    init_from: str | None = None
    """An agent checkpoint folder (``agent.json``) or a Hugging Face folder
    (``config.json``, safetensors, ``tokenizer.json``) to start from; the shape
    fields below are then ignored."""
    hidden_size: int = 64
    """Width of a fresh model."""
    intermediate_size: int = 256
    """Width of its MLP."""
    num_layers: int = 2
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (must divide hidden_size)."""
    max_position_embeddings: int = 512
    """Longest conversation + answer, in tokens."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies."""


@dataclass(frozen=True)
class DataSection:
    """The demonstrations."""

    train: str = ""
    """JSONL file of MultiTurnTrajectory (one per line; agents.save_jsonl)."""
    eval: str | None = None
    """Held-out JSONL file: its loss is reported with each log line."""
    max_length: int | None = None
    """Pad / cap every conversation to this many tokens (default: the longest);
    a longer one is an error, never cut."""


@dataclass(frozen=True)
class TrainSection:
    """The optimization."""

    algorithm: Literal["sft", "grpo"] = "sft"
    """sft: supervised fine-tuning on data.train's demonstrations (assistant
    tokens only); grpo: multi-turn GRPO on the grpo section's TaskEnv."""
    steps: int = 200
    """AdamW updates."""
    batch_size: int = 8
    """Conversations per update."""
    learning_rate: float = 1e-3
    """Peak step size."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    warmup_steps: int = 10
    """Linear warmup length."""
    decay_steps: int = 0
    """Cosine decay ends here (0: constant after warmup)."""
    max_grad_norm: float = 1.0
    """Global-norm clipping (0: off)."""
    seed: int = 0
    """Initial parameters and the batch order."""
    log_every: int = 50
    """Print and record metrics every this many steps."""


@dataclass(frozen=True)
class GRPOSection:
    """Multi-turn GRPO on a TaskEnv (``train.algorithm: grpo``,
    `agents.multiturn.train`)."""

    env: Literal["customer_service"] = "customer_service"
    """The TaskEnv: customer_service (orders, a lookup tool, the refund rule)."""
    max_turns: int = 4
    """Agent turns per conversation."""
    turn_tokens: int = 12
    """Tokens per agent turn (>= 12)."""
    num_orders: int = 256
    """Orders in the env's table."""
    env_seed: int = 0
    """Seed of the env's table and its held-out split."""
    profile: Literal["conservative", "balanced", "aggressive"] = "balanced"
    """GRPO settings (agents.multiturn.PROFILES)."""
    turn_credit: Literal["gae", "gae+group"] | None = None
    """Turn-level credit (agents.multiturn.TURN_CREDIT: a value model and GAE
    over turns, with the overrides' gamma, gae_lambda, value_learning_rate);
    null: every agent token gets its conversation's group advantage."""
    num_episodes: int = 1024
    """Conversations played; steps = ceil(num_episodes / (num_prompts *
    group_size))."""
    overrides: Annotated[dict[str, Any], tyro.conf.Suppress] = field(
        default_factory=dict
    )
    """llm.GRPOConfig fields over the profile (num_prompts, group_size,
    learning_rate, loss, ...; YAML only)."""
    warmup_demos: int = 32
    """SFT on this many scripted-expert conversations first, with train.*'s
    numbers (agents.multiturn.make_multiturn_sft); 0: start GRPO from the
    model as it is."""
    warmup_target: float = 0.3
    """The warm-up stops at this greedy success on training scenarios..."""
    warmup_max_steps: int = 2000
    """...or after this many steps."""
    eval_scenarios: int = 128
    """Held-out scenarios (orders and users) scored before and after GRPO (0:
    no held-out evaluation)."""
    checkpoint_dir: str | None = None
    """Orbax checkpoints of the GRPO state (a rerun resumes from the latest)."""


@dataclass(frozen=True)
class AgentSection:
    """What ``agent.json`` records with the model."""

    name: str | None = None
    """Model id served by `agents serve` (default: the output folder's name)."""
    system_prompt: str | None = None
    """Prepended when a conversation has no system turn (default: init_from's)."""
    temperature: float = 0.7
    """Default sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Default nucleus mass."""
    top_k: int = 0
    """Default top-k filter (0: off)."""
    max_tokens: int = 128
    """Default answer length."""


@dataclass(frozen=True)
class OutputSection:
    dir: str = "runs/agent"
    """The agent checkpoint folder written (relative to the working directory)."""


@dataclass(frozen=True)
class AgentTrainConfig:
    """Fine-tune an agent (``convergence-jax agents train CONFIG.yaml``)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    agent: AgentSection = field(default_factory=AgentSection)
    output: OutputSection = field(default_factory=OutputSection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    base_dir: Annotated[str, tyro.conf.Suppress] = "."
    """Folder the config file was read from (data paths are relative to it)."""


class TrainResult(NamedTuple):
    """What `train_agent` wrote: the checkpoint folder, the metrics file and its
    rows (one per log)."""

    checkpoint: Path
    metrics_path: Path
    metrics: list[dict]


# ----------------------------------------------------------------------------- config


def load_train_config(path) -> AgentTrainConfig:
    """Read a YAML file into an `AgentTrainConfig`; errors name the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty")
    try:
        config = _build(AgentTrainConfig, data, "")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return dataclasses.replace(config, base_dir=str(path.parent))


def _at_least(where: str, value, low) -> None:
    if not value >= low:
        raise ConfigError(f"{where}: must be >= {low}, got {value}")


def validate_train_config(config: AgentTrainConfig) -> None:
    """Raise `ConfigError` naming the first key that does not make sense."""
    m, d, t, a = config.model, config.data, config.train, config.agent
    if m.init_from is None:
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "max_position_embeddings",
        ):
            _at_least(f"model.{name}", getattr(m, name), 1)
        if m.hidden_size % m.num_heads or (m.hidden_size // m.num_heads) % 2:
            raise ConfigError(
                f"model.num_heads: must divide model.hidden_size into an even head "
                f"width, got {m.num_heads} heads for width {m.hidden_size}"
            )
        if not m.rope_theta > 0:
            raise ConfigError(f"model.rope_theta: must be > 0, got {m.rope_theta}")
    if t.algorithm == "sft" and not d.train:
        raise ConfigError(
            "data.train: give the JSONL file of demonstrations (one "
            "MultiTurnTrajectory per line)"
        )
    if t.algorithm == "grpo":
        g = config.grpo
        for name, low in (
            ("max_turns", 1),
            ("turn_tokens", 12),
            ("num_orders", 2),
            ("env_seed", 0),
            ("num_episodes", 1),
            ("warmup_demos", 0),
            ("warmup_max_steps", 1),
            ("eval_scenarios", 0),
        ):
            _at_least(f"grpo.{name}", getattr(g, name), low)
        if not 0 <= g.warmup_target <= 1:
            raise ConfigError(
                f"grpo.warmup_target: must be in [0, 1], got {g.warmup_target}"
            )
        from convergence_jax.llm.grpo import GRPOConfig

        fields = [f.name for f in dataclasses.fields(GRPOConfig)]
        for key in g.overrides:
            if key not in fields:
                close = difflib.get_close_matches(str(key), fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"grpo.overrides.{key}: not a GRPOConfig field{hint}")
    if d.max_length is not None:
        _at_least("data.max_length", d.max_length, 2)
    for name in ("steps", "batch_size", "log_every"):
        _at_least(f"train.{name}", getattr(t, name), 1)
    if not t.learning_rate > 0:
        raise ConfigError(f"train.learning_rate: must be > 0, got {t.learning_rate}")
    for name in ("weight_decay", "warmup_steps", "decay_steps", "max_grad_norm"):
        _at_least(f"train.{name}", getattr(t, name), 0)
    _at_least("train.seed", t.seed, 0)
    _at_least("agent.temperature", a.temperature, 0)
    if not 0 < a.top_p <= 1:
        raise ConfigError(f"agent.top_p: must be in (0, 1], got {a.top_p}")
    _at_least("agent.top_k", a.top_k, 0)
    _at_least("agent.max_tokens", a.max_tokens, 1)
    if a.name is not None and not a.name.strip():
        raise ConfigError("agent.name: must not be empty")
    if not config.output.dir:
        raise ConfigError("output.dir: give the checkpoint folder to write")


def _path(config: AgentTrainConfig, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(config.base_dir) / path


# ----------------------------------------------------------------------------- model


def _initial_model(config: AgentTrainConfig):
    """``(params, model_config, tokenizer, system_prompt, source)``."""
    import jax

    from convergence_jax.agents.export import (
        AgentCheckpointError,
        is_agent_checkpoint,
        load_agent,
    )
    from convergence_jax.lm import ByteTokenizer, HFTokenizer, LMConfig, init_params
    from convergence_jax.lm.hf import load_hf

    m = config.model
    if m.init_from is not None:
        folder = _path(config, m.init_from)
        if not folder.is_dir():
            raise ConfigError(f"model.init_from: no such folder {str(folder)!r}")
        try:
            if is_agent_checkpoint(folder):
                params, model_config, tokenizer, meta = load_agent(folder)
                return params, model_config, tokenizer, meta.system_prompt, "agent"
            model_config, params = load_hf(folder)
            tokenizer = HFTokenizer.from_pretrained(folder)
            tokenizer.check_model(model_config)
        except (AgentCheckpointError, FileNotFoundError, ValueError) as error:
            raise ConfigError(f"model.init_from: {error}") from None
        return params, model_config, tokenizer, None, "hf"
    tokenizer = ByteTokenizer()
    model_config = LMConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_heads,
        head_dim=m.hidden_size // m.num_heads,
        rope_theta=m.rope_theta,
        max_position_embeddings=m.max_position_embeddings,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    key = jax.random.fold_in(jax.random.key(config.train.seed), 0)
    return init_params(key, model_config), model_config, tokenizer, None, "fresh"


def _with_system(trajectory, system_prompt):
    from convergence_jax.agents.trajectory import Turn

    if system_prompt is None or trajectory.turns[0].role == "system":
        return trajectory
    turns = (Turn("system", system_prompt), *trajectory.turns)
    return dataclasses.replace(trajectory, turns=turns)


def _tokenized(
    config: AgentTrainConfig, where: str, value: str, tokenizer, limit, system_prompt
):
    from convergence_jax.agents.trajectory import load_jsonl, tokenize_trajectories

    path = _path(config, value)
    if not path.is_file():
        raise ConfigError(f"{where}: no such file {str(path)!r}")
    try:
        trajectories = load_jsonl(path)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    if not trajectories:
        raise ConfigError(f"{where}: {path.name} holds no trajectories")
    # trained on the prompt it is served with
    trajectories = [_with_system(t, system_prompt) for t in trajectories]
    try:
        batch = tokenize_trajectories(trajectories, tokenizer, config.data.max_length)
    except ValueError as error:
        key = "data.max_length" if config.data.max_length else where
        raise ConfigError(f"{key}: {path.name}: {error}") from None
    if batch.tokens.shape[1] > limit:
        raise ConfigError(
            f"{where}: {path.name} has a conversation of {batch.tokens.shape[1]} "
            f"tokens, more than the model's max_position_embeddings ({limit})"
        )
    if batch.loss_mask.sum() == 0:
        raise ConfigError(f"{where}: {path.name} has no assistant turn to learn from")
    return batch, path


# ----------------------------------------------------------------------------- SFT


@functools.cache
def _sft_program(model_config, batch_size: int):
    """``(init_opt, run_chunk, eval_loss)``, jitted once per model and batch size
    (the hyperparameters are traced: another run with other numbers, or more
    steps, reuses the compiled program)."""
    import jax
    import jax.numpy as jnp
    import optax

    from convergence_jax.llm.sft import adamw_update, sft_loss

    moments = optax.scale_by_adam()

    def loss_fn(params, batch):
        return sft_loss(params, model_config, batch)

    def one_step(carry, data, key, hparams):
        params, opt_state, step, sums = carry
        tokens, mask, loss_mask = data
        count = tokens.shape[0]
        per_epoch = max(count // batch_size, 1)
        epoch, within = step // per_epoch, step % per_epoch
        order = jax.random.permutation(jax.random.fold_in(key, epoch), count)
        rows = jnp.take(order, (within * batch_size + jnp.arange(batch_size)) % count)
        batch = (tokens[rows], mask[rows], loss_mask[rows])
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch
        )
        params, opt_state, grad_norm, lr = adamw_update(
            moments, grads, opt_state, params, step, hparams
        )
        row = jnp.stack([loss, metrics["token_accuracy"], grad_norm, lr])
        return params, opt_state, step + 1, sums + row

    @jax.jit
    def run_chunk(params, opt_state, step, num_steps, data, key, hparams):
        carry = (params, opt_state, step, jnp.zeros(4, jnp.float32))
        params, opt_state, step, sums = jax.lax.fori_loop(
            0, num_steps, lambda i, c: one_step(c, data, key, hparams), carry
        )
        return params, opt_state, step, sums / jnp.maximum(num_steps, 1)

    @jax.jit
    def eval_loss(params, data):
        loss, metrics = loss_fn(params, data)
        return loss, metrics["token_accuracy"]

    return moments.init, run_chunk, eval_loss


def train_agent(
    config: AgentTrainConfig, progress: Callable[[str], None] | None = print
) -> TrainResult:
    """Run ``config`` (see the module docstring); returns what was written.

    ``progress`` gets one line per log (``None``: silent). The checkpoint folder
    (`agents.export.save_agent`) gets ``metrics.jsonl``: per log, the step, the
    mean training ``loss``, ``token_accuracy`` (teacher-forced argmax on the
    assistant's tokens), ``grad_norm`` and ``learning_rate`` over the logged
    steps, ``eval_loss`` / ``eval_token_accuracy`` when ``data.eval`` is set, and
    the wall time.
    """
    import jax
    import jax.numpy as jnp

    from convergence_jax.agents.export import save_agent
    from convergence_jax.llm.sft import SFTHParams

    validate_train_config(config)
    say = progress or (lambda line: None)
    if config.train.algorithm == "grpo":
        return _train_grpo(config, say)
    params, model_config, tokenizer, base_prompt, source = _initial_model(config)
    a = config.agent
    system_prompt = a.system_prompt if a.system_prompt is not None else base_prompt
    limit = model_config.max_position_embeddings
    train, train_path = _tokenized(
        config, "data.train", config.data.train, tokenizer, limit, system_prompt
    )
    held_out = None
    if config.data.eval is not None:
        held_out, _ = _tokenized(
            config, "data.eval", config.data.eval, tokenizer, limit, system_prompt
        )
    t = config.train
    hparams = SFTHParams.create(
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        decay_steps=t.decay_steps,
        max_grad_norm=t.max_grad_norm,
    )
    init_opt, run_chunk, eval_loss = _sft_program(model_config, t.batch_size)
    data = tuple(jnp.asarray(x) for x in train)
    eval_data = None if held_out is None else tuple(jnp.asarray(x) for x in held_out)
    key = jax.random.fold_in(jax.random.key(t.seed), 1)
    opt_state = init_opt(params)
    step = jnp.zeros((), jnp.int32)
    described = {
        "fresh": "a fresh model",
        "agent": "the agent checkpoint",
        "hf": "the Hugging Face model",
    }[source]
    say(
        f"SFT of {described} ({model_config.num_layers} layers, width "
        f"{model_config.hidden_size}) on {len(train.tokens)} conversations from "
        f"{train_path.name} ({int(train.loss_mask.sum())} assistant tokens), "
        f"{t.steps} steps of {t.batch_size}"
    )
    rows, done, start = [], 0, time.perf_counter()
    while done < t.steps:
        chunk = min(t.log_every, t.steps - done)
        params, opt_state, step, means = run_chunk(
            params, opt_state, step, jnp.asarray(chunk, jnp.int32), data, key, hparams
        )
        done += chunk
        loss, accuracy, grad_norm, lr = (float(v) for v in jax.device_get(means))
        row = {
            "step": done,
            "loss": loss,
            "token_accuracy": accuracy,
            "grad_norm": grad_norm,
            "learning_rate": lr,
        }
        line = f"step {done}/{t.steps}  loss {loss:.4f}  token acc {accuracy:.3f}"
        if eval_data is not None:
            e_loss, e_acc = (float(v) for v in eval_loss(params, eval_data))
            row |= {"eval_loss": e_loss, "eval_token_accuracy": e_acc}
            line += f"  eval loss {e_loss:.4f}  eval acc {e_acc:.3f}"
        row["elapsed_s"] = round(time.perf_counter() - start, 3)
        rows.append(row)
        say(f"{line}  ({row['elapsed_s']:.1f} s)")
    out = Path(config.output.dir)
    metadata = {
        "trained_with": "sft",
        "source": source if source == "fresh" else f"{source}:{config.model.init_from}",
        "data": str(train_path),
        "conversations": int(len(train.tokens)),
        "steps": t.steps,
        "final_loss": rows[-1]["loss"],
    }
    save_agent(
        out,
        params,
        model_config,
        tokenizer,
        system_prompt,
        name=a.name,
        generation={
            "temperature": a.temperature,
            "top_p": a.top_p,
            "top_k": a.top_k,
            "max_tokens": a.max_tokens,
        },
        metadata=metadata,
    )
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    say(f"wrote the agent checkpoint {out}/ (metrics in {metrics_path.name})")
    return TrainResult(out, metrics_path, rows)


# ----------------------------------------------------------------------------- GRPO


def _train_grpo(config: AgentTrainConfig, say) -> TrainResult:
    """``train.algorithm: grpo``: an optional SFT warm-up on the env's scripted
    expert, then `agents.multiturn.train`; held-out success before and after."""
    import jax
    import numpy as np

    from convergence_jax.agents import multiturn
    from convergence_jax.agents.export import save_agent
    from convergence_jax.agents.task_env import customer_service_env
    from convergence_jax.llm.sft import SFTHParams

    t, g, a = config.train, config.grpo, config.agent
    params, model_config, tokenizer, base_prompt, source = _initial_model(config)
    try:
        env = customer_service_env(
            tokenizer,
            max_turns=g.max_turns,
            turn_tokens=g.turn_tokens,
            num_orders=g.num_orders,
            seed=g.env_seed,
        )
    except ValueError as error:
        raise ConfigError(f"grpo: {error}") from None
    try:
        env.check_model(model_config)
    except ValueError as error:
        raise ConfigError(f"model: {error}") from None
    start = time.perf_counter()
    rows: list[dict] = []
    warm_success = None
    if g.warmup_demos > 0:
        hparams = SFTHParams.create(
            learning_rate=t.learning_rate,
            weight_decay=t.weight_decay,
            warmup_steps=t.warmup_steps,
            decay_steps=t.decay_steps,
            max_grad_norm=t.max_grad_norm,
        )
        sft = multiturn.make_multiturn_sft(
            model_config,
            env,
            num_demos=g.warmup_demos,
            batch_size=t.batch_size,
            demo_seed=t.seed,
        )
        warm = sft.init(jax.random.fold_in(jax.random.key(t.seed), 2), params)
        warm, success = jax.jit(
            lambda s: sft.run_until(
                s, g.warmup_target, g.warmup_max_steps, hparams, eval_every=t.log_every
            )
        )(warm)
        params, warm_success = warm.params, float(success)
        say(
            f"SFT warm-up on {g.warmup_demos} expert conversations: "
            f"{int(warm.step)} steps, greedy success on training scenarios "
            f"{warm_success:.3f} ({time.perf_counter() - start:.1f} s)"
        )

    def log(step: int, metrics: dict):
        row = {"step": step + 1, **metrics}
        row["elapsed_s"] = round(time.perf_counter() - start, 3)
        rows.append(row)
        if (step + 1) % t.log_every == 0 or step == 0:
            reward = metrics.get("reward", float("nan"))
            say(
                f"GRPO step {step + 1}  reward {reward:.3f}  ({row['elapsed_s']:.1f} s)"
            )

    checkpoint_dir = None
    if g.checkpoint_dir is not None:
        checkpoint_dir = Path(g.checkpoint_dir).expanduser().resolve()
    try:
        result = multiturn.train(
            (params, model_config),
            env,
            None,
            g.num_episodes,
            g.profile,
            checkpoint_dir,
            seed=t.seed,
            callback=log,
            turn_credit=g.turn_credit,
            **g.overrides,
        )
    except ValueError as error:
        raise ConfigError(f"grpo: {error}") from None
    before = after = None
    if g.eval_scenarios > 0:
        evaluate = result.program.evaluate
        before = float(evaluate(params, num_scenarios=g.eval_scenarios))
        after = float(evaluate(result.params, num_scenarios=g.eval_scenarios))
        say(
            f"held-out greedy success ({g.eval_scenarios} scenarios): {before:.3f} "
            f"before GRPO, {after:.3f} after"
        )
    out = Path(config.output.dir)
    system_prompt = a.system_prompt if a.system_prompt is not None else base_prompt
    metadata = {
        "trained_with": "grpo",
        "source": source if source == "fresh" else f"{source}:{config.model.init_from}",
        "env": g.env,
        "profile": g.profile,
        "turn_credit": g.turn_credit,
        "overrides": dict(g.overrides),
        "episodes": g.num_episodes,
        "steps": result.resumed_from + len(rows),
        "warmup_success": warm_success,
        "held_out_success_before": before,
        "held_out_success_after": after,
    }
    save_agent(
        out,
        result.params,
        model_config,
        tokenizer,
        system_prompt,
        name=a.name,
        generation={
            "temperature": a.temperature,
            "top_p": a.top_p,
            "top_k": a.top_k,
            "max_tokens": a.max_tokens,
        },
        metadata=metadata,
    )
    metrics_path = out / "metrics.jsonl"
    clean = [
        {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in r.items()
        }
        for r in rows
    ]
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in clean))
    say(f"wrote the agent checkpoint {out}/ (metrics in {metrics_path.name})")
    return TrainResult(out, metrics_path, clean)
