"""The GRPO family (GRPO, Dr. GRPO, DAPO, GSPO, GEPO, VAPO, token PPO) as one
compiled post-training program.

    from convergence_jax import lm, llm

    task = llm.tasks.addition(3, lm.ByteTokenizer())
    config = llm.GRPOConfig(loss="dapo", num_prompts=16, group_size=8,
                            max_new_tokens=8)
    program = llm.make_grpo(config, model_config, task)
    state = program.init(key, params)                   # + a frozen reference
    state, metrics = program.run(state, num_steps=100)  # one lax.scan

    # seeds x hyperparameters in one call, no recompilation per value:
    states = jax.vmap(program.init, in_axes=(0, None))(keys, params)
    hparams = llm.grpo_hparam_grid(config, learning_rate=[1e-5, 3e-5, 1e-4])
    jax.vmap(program.run, in_axes=(0, 0, None))(states, hparams, 100)

**One step** (``program.step``; ``run`` scans it): draw ``num_prompts`` prompts
from the task, sample ``group_size`` completions of each with the KV cache
(`convergence_jax.lm.generate`), score them with the task's JAX reward, compute
advantages (``convergence_jax.llm.ADVANTAGES``, or token GAE for ``vapo`` /
``ppo``), then ``num_epochs`` passes of ``num_minibatches`` optax updates of the
chosen loss against the frozen reference model. Everything is one XLA program.

**Hyperparameters that a sweep changes** live in `GRPOHParams` (learning rates,
beta, the clip range, the sampling temperature, the gradient clip, ...), a traced
pytree: ``vmap`` over it (and over states built from different keys) runs many
seeds and settings at once. Sizes, the loss and its switches are static
(`GRPOConfig`).

**Python rewards** (a code executor, an HTTP judge, ``reasoning-gym``
verifiers): ``sample`` (compiled) returns a `Rollout`; score it on the host;
``learn(state, rollout, rewards)`` (compiled) does the rest. ``host_step`` wires
the two with a reward function and refills DAPO's dynamic sampling on the host.

**DAPO's dynamic sampling** (``dynamic_sampling``) drops groups whose rewards are
all equal and refills the batch: inside the program a ``lax.while_loop`` samples
fresh prompts, up to ``max_sampling_rounds`` rounds, until ``num_prompts`` groups
with a reward spread are collected; slots still empty after the last round are
masked out of the loss (metric ``filled``). TRL has no refill; Tunix neither.

**Data parallel** (``num_devices > 1``): prompts are split over a 1-D device mesh
(``jax.shard_map``). Every random draw is made per prompt from keys split on the
whole batch, minibatch ``m`` holds the prompts ``i`` with ``i % num_minibatches ==
m``, every loss is normalized by the global batch's count (sequences or tokens)
and gradients are summed over devices, so the N-device run computes what the
1-device run computes, up to the order of floating-point sums. With dynamic
sampling each device refills its own share.

**Old and reference log-probs.** On-policy (``num_epochs * num_minibatches ==
1``) the importance ratio is ``exp(logp - stop_gradient(logp))``, as TRL does;
otherwise the old log-probs are recomputed once, before the first update, with
the sampling parameters. Log-probs are ``log_softmax(logits / temperature)``
(TRL's convention, also used for the reference model).

**Resumable**: a `GRPOState` holds the policy, the optimizer state, the reference,
the value model (``vapo``, ``ppo``), the key and the step, so a run restored
through `convergence_jax.checkpoint` continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax
from jax.sharding import PartitionSpec as P

from convergence_jax.distributed import check_num_devices, global_mesh, to_host
from convergence_jax.llm.advantages import ADVANTAGES, soft_overlong_punishment
from convergence_jax.llm.losses import (
    KL_ESTIMATORS,
    LOSSES,
    RATIO_LEVELS,
    off_policy_mask,
    policy_loss,
)
from convergence_jax.llm.value import (
    positive_nll_loss,
    token_gae,
    token_value_loss,
    vapo_advantages,
)
from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.generate import _generate, completion_logprobs
from convergence_jax.lm.model import Transformer, check_params

__all__ = [
    "GRPO",
    "GRPOConfig",
    "GRPOHParams",
    "GRPOState",
    "PROGRAM_LOSSES",
    "Rollout",
    "grpo_hparam_grid",
    "init_value_model",
    "make_grpo",
    "value_model_values",
]

AXIS = "devices"
# The program's losses: the group recipes of ``LOSSES`` plus the two with a
# value model.
PROGRAM_LOSSES = (*LOSSES, "vapo", "ppo")
_VALUE_LOSSES = ("vapo", "ppo")
# The aggregations the program normalizes over the global batch (TRL's names).
_PROGRAM_AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")
_LOSS_TERMS = ("policy_loss", "value_loss", "nll_loss")


@dataclass(frozen=True)
class GRPOConfig:
    """A post-training run: the loss, sizes and switches (static), and the
    default numbers of `GRPOHParams`. ``None`` takes the loss's recipe
    (``convergence_jax.llm.LOSSES``; ``vapo``: clip 0.2 / 0.28, token-level
    loss; ``ppo``: clip 0.2, token-level loss)."""

    loss: str = "grpo"
    """grpo, dr_grpo, dapo, gspo, gspo_token, gepo, vapo or ppo."""
    num_prompts: int = 16
    """Prompts per step, all devices together."""
    group_size: int = 8
    """Completions sampled per prompt (G)."""
    max_new_tokens: int = 16
    """Completion length budget (N); a completion without a stop token by then is
    truncated."""
    num_epochs: int = 1
    """Passes over each step's samples (mu; TRL num_iterations)."""
    num_minibatches: int = 1
    """Optimizer updates per pass; must divide num_prompts / num_devices."""
    learning_rate: float = 1e-5
    """Adam step size of the policy."""
    beta: float | None = None
    """KL coefficient to the reference model (0: no KL term)."""
    epsilon_low: float | None = None
    """Clip range below 1 of the importance ratio."""
    epsilon_high: float | None = None
    """Clip range above 1 (clip-higher when > epsilon_low)."""
    delta: float | None = None
    """Two-sided clipping: cap of the ratio for negative advantages (INTELLECT-2)."""
    kl_estimator: str = "k3"
    """k1, k2 or k3 (Schulman's estimators; TRL's GRPO uses k3)."""
    use_reference: bool | None = None
    """Compute the reference model's log-probs; None: when beta > 0. Set True to
    sweep beta through 0 under vmap."""
    advantage: str | None = None
    """A key of ADVANTAGES (group losses)."""
    advantage_epsilon: float = 1e-4
    """Added to the standard deviation of group/batch-normalized advantages."""
    aggregation: str | None = None
    """grpo, bnpo, dr_grpo or dapo (TRL's loss_type)."""
    temperature: float = 1.0
    """Sampling temperature (also divides the logits of every log-prob)."""
    top_k: int = 0
    """Sample from the k most likely tokens; 0: all."""
    top_p: float = 1.0
    """Nucleus mass; 1: all."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW)."""
    dynamic_sampling: bool | None = None
    """DAPO: drop zero-spread groups and refill the batch."""
    max_sampling_rounds: int = 4
    """Dynamic sampling: at most this many sampling rounds per step."""
    overlong_filter: bool | None = None
    """DAPO: truncated completions drop out of the loss."""
    soft_overlong: bool | None = None
    """DAPO: add the soft overlong punishment to the rewards."""
    overlong_buffer: int | None = None
    """Soft overlong punishment: the ramp's length in tokens (L_cache); None:
    max_new_tokens // 4 (DAPO: 4,096 of 20,480)."""
    overlong_penalty: float = 1.0
    """Soft overlong punishment: its size at max_new_tokens."""
    off_policy_threshold: float | None = None
    """Mask negative-advantage completions whose sampler drifted by more than
    this (DeepSeek-V3.2's off-policy mask; for num_epochs > 1)."""
    value_learning_rate: float = 1e-5
    """Adam step size of the value model (vapo, ppo)."""
    value_clip_eps: float | None = 0.2
    """Value clipping range (vapo, ppo); None: unclipped."""
    gamma: float = 1.0
    """Discount over tokens (vapo, ppo)."""
    gae_lambda: float = 0.95
    """GAE lambda of the policy's advantages (ppo); VAPO's critic uses 1."""
    vapo_alpha: float = 0.05
    """VAPO's length-adaptive lambda = 1 - 1 / (alpha * length)."""
    nll_coef: float = 0.1
    """VAPO's positive-example NLL weight (mu in the paper)."""
    positive_threshold: float = 1.0
    """VAPO: a completion with reward >= this is a positive example."""
    num_devices: int = 1
    """Devices to split the prompts over (data parallel)."""

    def recipe(self) -> _Recipe:
        """The resolved settings: this config's values over the loss's recipe."""
        if self.loss in LOSSES:
            base = LOSSES[self.loss]
            defaults = dict(
                advantage=base.advantage,
                ratio_level=base.ratio_level,
                aggregation=base.aggregation,
                epsilon_low=base.epsilon_low,
                epsilon_high=base.epsilon_high,
                beta=base.beta,
                dynamic_sampling=base.dynamic_sampling,
                overlong_filter=base.overlong_filter,
                soft_overlong=base.soft_overlong,
            )
        else:
            defaults = dict(
                advantage="gae",
                ratio_level="token",
                aggregation="dapo",
                epsilon_low=0.2,
                epsilon_high=0.28 if self.loss == "vapo" else 0.2,
                beta=0.0,
                dynamic_sampling=False,
                overlong_filter=False,
                soft_overlong=False,
            )
        for name in list(defaults):
            if name != "ratio_level" and getattr(self, name) is not None:
                defaults[name] = getattr(self, name)
        use_reference = self.use_reference
        if use_reference is None:
            use_reference = defaults["beta"] > 0
        return _Recipe(**defaults, use_reference=bool(use_reference))


class _Recipe(NamedTuple):
    advantage: str
    ratio_level: str
    aggregation: str
    epsilon_low: float
    epsilon_high: float
    beta: float
    dynamic_sampling: bool
    overlong_filter: bool
    soft_overlong: bool
    use_reference: bool


@struct.dataclass
class GRPOHParams:
    """The numbers of a run; scalars (or batched, under ``vmap``)."""

    learning_rate: jax.Array
    beta: jax.Array
    epsilon_low: jax.Array
    epsilon_high: jax.Array
    temperature: jax.Array
    max_grad_norm: jax.Array
    weight_decay: jax.Array
    value_learning_rate: jax.Array
    gae_lambda: jax.Array
    vapo_alpha: jax.Array
    nll_coef: jax.Array

    @classmethod
    def from_config(cls, config: GRPOConfig) -> GRPOHParams:
        recipe = config.recipe()
        values = {
            name: getattr(recipe, name, None)
            if getattr(config, name) is None
            else getattr(config, name)
            for name in cls.__dataclass_fields__
        }
        return cls(**{k: jnp.asarray(v, jnp.float32) for k, v in values.items()})


@struct.dataclass
class GRPOState:
    """Everything a run needs to continue: the policy and its optimizer state,
    the frozen reference (None without one), the value model and its optimizer
    state (None unless ``vapo`` / ``ppo``), the key and the step counter."""

    params: Any
    opt_state: Any
    reference: Any
    value_params: Any
    value_opt_state: Any
    key: jax.Array
    step: jax.Array


class Rollout(NamedTuple):
    """One step's samples, ``[P]`` prompts and ``[P, G, N]`` completions.

    ``prompt_tokens``/``prompt_mask`` are left-padded; ``tokens``, ``mask``
    (1 up to and including the stop token) and ``logprobs`` (the sampler's,
    ``log_softmax(logits / temperature)``) come from `lm.generate`; ``problem``
    is the task's batch (`TaskBatch`) when the task drew the prompts, else None.
    ``loss_mask`` (``[P, G, N]``, optional) selects the tokens the loss trains
    on, while ``mask`` stays the attention mask: a multi-turn conversation
    (`convergence_jax.agents.multiturn`) attends to its user and tool tokens but
    trains on the agent's only. None: ``mask``.
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    problem: Any
    loss_mask: Any = None


class GRPO(NamedTuple):
    """The program: pure functions over `GRPOState` (see the module docstring).

    ``init(key, params, hparams=None) -> GRPOState``;
    ``step(state, hparams=None) -> (state, metrics)``;
    ``run(state, hparams=None, num_steps=1, callback=None) -> (state, metrics
    [num_steps])``; ``sample(state, hparams=None, prompt_tokens=None,
    prompt_mask=None) -> (state, Rollout)``; ``learn(state, rollout, rewards,
    hparams=None, valid=None) -> (state, metrics)``; ``host_step(state,
    reward_fn, hparams=None, prompts_fn=None) -> (state, metrics)``;
    ``pretrain_value(state, hparams=None, num_steps=1) -> (state, metrics)``
    (VAPO's value pretraining: the critic fits the fixed policy's returns).
    """

    config: GRPOConfig
    model_config: LMConfig
    default_hparams: GRPOHParams
    init: Callable
    step: Callable
    run: Callable
    sample: Callable
    learn: Callable
    host_step: Callable
    pretrain_value: Callable


def grpo_hparam_grid(config: GRPOConfig, **values: Sequence[float]) -> GRPOHParams:
    """`GRPOHParams` batched over the listed values (others from ``config``).

    ``grpo_hparam_grid(config, learning_rate=[1e-5, 3e-5])`` has leaves of shape
    ``[2]``; several fields must have equal lengths (zip, not product):
    ``vmap`` the program over the result.
    """
    fields = GRPOHParams.__dataclass_fields__
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(
            f"grpo_hparam_grid: unknown fields {sorted(unknown)}; known: "
            f"{sorted(fields)}"
        )
    lengths = {len(v) for v in values.values()}
    if len(lengths) > 1:
        raise ValueError(
            f"grpo_hparam_grid: values must have equal lengths, got {values}"
        )
    n = lengths.pop() if lengths else 1
    base = GRPOHParams.from_config(config)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,)), base).replace(
        **{k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    )


# --- checks -----------------------------------------------------------------------


def _check(config: GRPOConfig, model_config: LMConfig, task) -> _Recipe:
    if not isinstance(config, GRPOConfig):
        raise ValueError(f"config must be a GRPOConfig, got {type(config).__name__}")
    if not isinstance(model_config, LMConfig):
        raise ValueError(
            f"model_config must be an LMConfig, got {type(model_config).__name__}"
        )
    if config.loss not in PROGRAM_LOSSES:
        raise ValueError(
            f"GRPOConfig.loss must be one of {list(PROGRAM_LOSSES)}, got "
            f"{config.loss!r}"
        )
    for name in (
        "num_prompts",
        "group_size",
        "max_new_tokens",
        "num_epochs",
        "num_minibatches",
        "max_sampling_rounds",
        "num_devices",
    ):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"GRPOConfig.{name} must be an int >= 1, got {value!r}")
    recipe = config.recipe()
    if config.loss not in _VALUE_LOSSES and config.group_size < 2:
        raise ValueError(
            f"GRPOConfig.group_size must be >= 2 for loss {config.loss!r}: its "
            f"advantage is relative to the group (got {config.group_size}); the "
            "value-model losses vapo and ppo accept 1"
        )
    if recipe.dynamic_sampling and config.group_size < 2:
        raise ValueError("GRPOConfig.dynamic_sampling needs group_size >= 2")
    share, rest = divmod(config.num_prompts, config.num_devices)
    if rest:
        raise ValueError(
            f"GRPOConfig.num_prompts ({config.num_prompts}) must be a multiple of "
            f"num_devices ({config.num_devices})"
        )
    if share % config.num_minibatches:
        raise ValueError(
            f"GRPOConfig.num_minibatches ({config.num_minibatches}) must divide "
            f"num_prompts / num_devices ({share})"
        )
    if config.num_devices > len(jax.devices()):
        raise ValueError(
            f"GRPOConfig.num_devices is {config.num_devices} but only "
            f"{len(jax.devices())} devices are visible (on CPU, set XLA_FLAGS="
            "--xla_force_host_platform_device_count before importing jax)"
        )
    check_num_devices(config.num_devices, "GRPOConfig.num_devices")
    if config.loss not in _VALUE_LOSSES and recipe.advantage not in ADVANTAGES:
        raise ValueError(
            f"GRPOConfig.advantage must be one of {sorted(ADVANTAGES)}, got "
            f"{recipe.advantage!r}"
        )
    if recipe.aggregation not in _PROGRAM_AGGREGATIONS:
        raise ValueError(
            f"GRPOConfig.aggregation must be one of {list(_PROGRAM_AGGREGATIONS)} "
            f"(TRL's loss_type names), got {recipe.aggregation!r}"
        )
    if recipe.ratio_level not in RATIO_LEVELS:  # pragma: no cover - recipes only
        raise ValueError(f"unknown ratio level {recipe.ratio_level!r}")
    if config.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"GRPOConfig.kl_estimator must be one of {KL_ESTIMATORS}, got "
            f"{config.kl_estimator!r}"
        )
    if not 0.0 <= recipe.epsilon_low < 1.0 or recipe.epsilon_high < 0.0:
        raise ValueError(
            "GRPOConfig.epsilon_low must be in [0, 1) and epsilon_high >= 0, got "
            f"{recipe.epsilon_low}, {recipe.epsilon_high}"
        )
    if recipe.beta < 0:
        raise ValueError(f"GRPOConfig.beta must be >= 0, got {recipe.beta}")
    if config.loss == "vapo" and recipe.beta > 0:
        raise ValueError(
            "GRPOConfig.beta must be 0 for vapo: VAPO has no KL term (the paper "
            "drops it); ppo puts beta's KL in the reward"
        )
    if recipe.beta > 0 and not recipe.use_reference:
        raise ValueError("GRPOConfig.beta > 0 needs use_reference (the KL term)")
    if config.temperature <= 0:
        raise ValueError(
            f"GRPOConfig.temperature must be > 0 for sampling, got {config.temperature}"
        )
    if not 0.0 < config.top_p <= 1.0 or config.top_k < 0:
        raise ValueError(
            f"GRPOConfig.top_p must be in (0, 1] and top_k >= 0, got "
            f"{config.top_p}, {config.top_k}"
        )
    buffer = config.overlong_buffer
    if recipe.soft_overlong and buffer is not None:
        if not 0 <= buffer < config.max_new_tokens:
            raise ValueError(
                f"GRPOConfig.overlong_buffer must be in [0, max_new_tokens) = [0, "
                f"{config.max_new_tokens}), got {buffer}"
            )
    if task is not None:
        total = task.prompt_length + config.max_new_tokens
        if total > model_config.max_position_embeddings:
            raise ValueError(
                f"the task's prompts ({task.prompt_length} tokens) + "
                f"GRPOConfig.max_new_tokens ({config.max_new_tokens}) = {total} "
                f"exceed LMConfig.max_position_embeddings "
                f"({model_config.max_position_embeddings})"
            )
        ids = list(task.stop_tokens)
        probe = task.sample(jax.random.key(0), 4)
        ids += [int(np.max(probe.prompt_tokens)), int(np.max(probe.answer_tokens))]
        if min(ids) < 0 or max(ids) >= model_config.vocab_size:
            raise ValueError(
                f"the task's tokens reach id {max(ids)} but LMConfig.vocab_size is "
                f"{model_config.vocab_size}: does the task's tokenizer match the "
                "model?"
            )
    return recipe


# --- the program --------------------------------------------------------------------


def _optimizer(max_grad_norm, weight_decay):
    """The policy's and the value model's optimizer; the step size is applied by
    hand (`_apply`) so that it can be traced."""
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.scale_by_adam(),
        optax.add_decayed_weights(weight_decay),
    )


def _apply(tx, grads, opt_state, params, step_size):
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: -step_size * u, updates)
    return optax.apply_updates(params, updates), opt_state


def init_value_model(params, model_config: LMConfig):
    """The value model of ``vapo`` / ``ppo`` (and of multi-turn turn credit):
    a copy of the policy's trunk (every parameter but ``lm_head``) and a
    zero-initialized scalar head, ``{"trunk", "head": {"kernel", "bias"}}``."""
    trunk = {k: v for k, v in params.items() if k != "lm_head"}
    head = {
        "kernel": jnp.zeros((model_config.hidden_size, 1), jnp.float32),
        "bias": jnp.zeros((1,), jnp.float32),
    }
    return {"trunk": trunk, "head": head}


def value_model_values(
    value_params, model_config: LMConfig, prompt_tokens, prompt_mask, tokens, mask
):
    """V at each completion token's prediction position, ``[P, G, N]``:
    ``values[..., j]`` is read from the hidden state of the token before
    completion token ``j`` (the prompt's last token for ``j = 0``).
    ``prompt_tokens``/``prompt_mask``: ``[P, Lp]``; ``tokens``/``mask``:
    ``[P, G, N]``."""
    p, g, n = tokens.shape
    prompts = jnp.repeat(prompt_tokens, g, axis=0)
    pmask = jnp.repeat(prompt_mask, g, axis=0)
    seq = jnp.concatenate([prompts, tokens.reshape(p * g, n)], axis=1)
    seq_mask = jnp.concatenate([pmask, mask.reshape(p * g, n)], axis=1)
    hidden, _ = Transformer(model_config, output_hidden=True).apply(
        {"params": value_params["trunk"]}, seq, seq_mask
    )
    hidden = hidden[:, prompts.shape[1] - 1 : -1]
    head = value_params["head"]
    values = (hidden @ head["kernel"])[..., 0] + head["bias"][0]
    return values.reshape(p, g, n)


def _tree_take(tree, index, axis=0):
    return jax.tree.map(lambda x: jnp.take(x, index, axis=axis), tree)


def _local_slice(tree, start, size):
    return jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, start, size, 0), tree)


def make_grpo(
    config: GRPOConfig, model_config: LMConfig, task=None, *, extra_loss=None
) -> GRPO:
    """Build the program for ``model_config``'s model on ``task`` (a
    `convergence_jax.llm.tasks.Task`; None when the prompts come from the host).

    ``extra_loss(params, minibatch, extra) -> scalar`` (optional, one device
    only): a term added to the policy loss of every minibatch update (e.g. a
    continual-learning penalty, `convergence_jax.agents.continual`), with
    ``extra`` the pytree given to ``learn(..., extra=...)`` and ``minibatch`` the
    update's data (``prompt_tokens``, ``tokens``, ``mask``, ``loss_mask``, ...).

    Bad settings raise ``ValueError`` naming the field, before anything compiles:
    an unknown loss, group size 1 for a group-relative loss, sizes that do not
    divide, more devices than are visible, prompts plus ``max_new_tokens``
    longer than the model's context, a task whose token ids do not fit the
    model's vocabulary.
    """
    recipe = _check(config, model_config, task)
    if extra_loss is not None and config.num_devices != 1:
        raise ValueError("make_grpo: extra_loss runs on one device (num_devices=1)")
    mc = model_config
    num_prompts, group = config.num_prompts, config.group_size
    length = config.max_new_tokens
    num_dev = config.num_devices
    sharded = num_dev > 1
    local_prompts = num_prompts // num_dev
    num_mb = config.num_minibatches
    on_policy = config.num_epochs * num_mb == 1
    value_model = config.loss in _VALUE_LOSSES
    stop_tokens = tuple(task.stop_tokens) if task is not None else ()
    if task is None and mc.eos_token_id is not None:
        eos = mc.eos_token_id
        stop_tokens = tuple(eos) if isinstance(eos, tuple) else (int(eos),)
    pad_id = int(mc.pad_token_id) if mc.pad_token_id is not None else 0
    default_hparams = GRPOHParams.from_config(config)
    overlong_buffer = (
        length // 4 if config.overlong_buffer is None else config.overlong_buffer
    )
    # Over the devices of every process in a multi-process run
    # (convergence_jax.distributed); Auto axes, so that host arrays given to
    # sample / learn are split as the shard_map in_specs say.
    mesh = global_mesh(num_dev, AXIS) if sharded else None

    # -- collectives that vanish on one device --
    def psum(x):
        return lax.psum(x, AXIS) if sharded else x

    def pmean(x):
        return lax.pmean(x, AXIS) if sharded else x

    def gather(x):
        return lax.all_gather(x, AXIS, tiled=True) if sharded else x

    def local_start():
        return lax.axis_index(AXIS) * local_prompts if sharded else 0

    optimizer, apply = _optimizer, _apply

    def init_value(params):
        return init_value_model(params, mc)

    def values_of(value_params, prompt_tokens, prompt_mask, tokens, mask):
        return value_model_values(
            value_params, mc, prompt_tokens, prompt_mask, tokens, mask
        )

    def init(key: jax.Array, params, hparams: GRPOHParams | None = None) -> GRPOState:
        """The state of a fresh run from the policy ``params`` (the reference is
        a frozen copy of them)."""
        check_params(mc, params)
        params = jax.tree.map(jnp.asarray, params)
        hp = default_hparams if hparams is None else hparams
        tx = optimizer(hp.max_grad_norm, hp.weight_decay)
        value_params = init_value(params) if value_model else None
        return GRPOState(
            params=params,
            opt_state=tx.init(params),
            reference=params if recipe.use_reference else None,
            value_params=value_params,
            value_opt_state=tx.init(value_params) if value_model else None,
            key=key,
            step=jnp.zeros((), jnp.int32),
        )

    # -- sampling --
    def generate_local(params, prompt_tokens, prompt_mask, keys, hp):
        """Per-prompt keys make the draws independent of how prompts are placed."""
        return _generate(
            keys,
            params,
            prompt_tokens,
            prompt_mask,
            hp.temperature,
            jnp.asarray(config.top_k, jnp.int32),
            jnp.asarray(config.top_p, jnp.float32),
            config=mc,
            max_new_tokens=length,
            num_samples=group,
            stop_tokens=stop_tokens,
            pad_id=pad_id,
        )

    def draw_local(params, key, hp, prompts=None):
        """Sample this device's share of a fresh batch (task prompts if None)."""
        k_prompts, k_gen = jax.random.split(key)
        start = local_start()
        if prompts is None:
            problem = _local_slice(
                task.sample(k_prompts, num_prompts), start, local_prompts
            )
            prompt_tokens, prompt_mask = problem.prompt_tokens, problem.prompt_mask
        else:
            problem = None
            prompt_tokens, prompt_mask = prompts
        keys = lax.dynamic_slice_in_dim(
            jax.random.split(k_gen, num_prompts), start, local_prompts
        )
        gen = generate_local(params, prompt_tokens, prompt_mask, keys, hp)
        return Rollout(
            prompt_tokens, prompt_mask, gen.tokens, gen.mask, gen.logprobs, problem
        )

    def truncated_of(rollout: Rollout):
        stops = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)
        ended = jnp.any(jnp.isin(rollout.tokens, stops) & (rollout.mask > 0), -1)
        return ~ended  # [P, G]

    def shape_rewards(rewards, rollout: Rollout):
        if not recipe.soft_overlong:
            return rewards
        lengths = rollout.mask.sum(-1).reshape(-1)
        # A truncated completion stops at the budget: count it one past it, so
        # that it gets the cap (TRL: length > max_completion_length).
        lengths = jnp.where(truncated_of(rollout).reshape(-1), length + 1, lengths)
        penalty = soft_overlong_punishment(
            lengths,
            length,
            overlong_buffer,
            penalty=config.overlong_penalty,
        )
        return rewards + penalty.reshape(rewards.shape)

    def group_spread(rewards):
        return (rewards.max(-1) - rewards.min(-1)) > 0

    def collect_local(state: GRPOState, key, hp):
        """Sample, score, and (DAPO) refill: ``(rollout, rewards, valid, info)``."""
        first = draw_local(state.params, key, hp)
        raw = task.reward(first.tokens, first.mask, first.problem)
        exact = task.exact_match(first.tokens, first.mask, first.problem)
        rewards = shape_rewards(raw, first)
        info = {
            "reward": pmean(raw.mean()),
            "exact_match": pmean(exact.mean()),
            "shaped_reward": pmean(rewards.mean()),
            "completion_length": pmean(first.mask.sum(-1).mean().astype(jnp.float32)),
            "truncated": pmean(truncated_of(first).mean().astype(jnp.float32)),
        }
        if not recipe.dynamic_sampling:
            return first, rewards, jnp.ones(local_prompts, bool), info
        keep = group_spread(rewards)
        order = jnp.argsort(~keep, stable=True)  # kept groups first
        buffer = (_tree_take(first, order), rewards[order])
        filled = keep.sum()

        def cond(carry):
            round_, filled, _ = carry
            return (round_ < config.max_sampling_rounds) & (filled < local_prompts)

        def body(carry):
            round_, filled, (rollout, rewards) = carry
            new = draw_local(state.params, jax.random.fold_in(key, round_), hp)
            new_rewards = shape_rewards(
                task.reward(new.tokens, new.mask, new.problem), new
            )
            keep = group_spread(new_rewards)
            slot = filled + jnp.cumsum(keep) - 1
            slot = jnp.where(keep & (slot < local_prompts), slot, local_prompts)

            def put(old, x):
                return old.at[slot].set(x, mode="drop")

            rollout = jax.tree.map(put, rollout, new)
            rewards = put(rewards, new_rewards)
            filled = jnp.minimum(filled + keep.sum(), local_prompts)
            return round_ + 1, filled, (rollout, rewards)

        rounds, filled, (rollout, rewards) = lax.while_loop(
            cond, body, (jnp.ones((), jnp.int32), filled, buffer)
        )
        valid = jnp.arange(local_prompts) < filled
        info["kept_fraction"] = pmean(keep.mean().astype(jnp.float32))
        info["filled"] = pmean(valid.mean().astype(jnp.float32))
        info["sampling_rounds"] = pmean(rounds.astype(jnp.float32))
        return rollout, rewards, valid, info

    # -- learning --
    def loss_weight_scale():
        # Each device's loss is its share of the global loss: summed over devices
        # (with the gradients) it is the 1-device loss on the whole batch.
        return 1.0 / num_dev

    def policy_terms(params, mb, hp):
        logp = completion_logprobs(
            params,
            mc,
            mb["prompt_tokens"],
            mb["prompt_mask"],
            mb["tokens"],
            mb["mask"],
            hp.temperature,
        )
        p, g, n = mb["tokens"].shape
        logp = logp.reshape(p * g, n)
        old = lax.stop_gradient(logp) if on_policy else mb["old_logp"].reshape(p * g, n)
        loss_mask = mb["loss_mask"].reshape(p * g, n)
        advantages = mb["advantages"]
        advantages = advantages.reshape(p * g, *advantages.shape[2:])
        ref = mb["ref_logp"].reshape(p * g, n) if recipe.use_reference else None
        return logp, old, loss_mask, advantages, ref

    def global_count(mask):
        return psum(mask.sum().astype(jnp.float32))

    def group_loss(params, mb, hp):
        logp, old, loss_mask, advantages, ref = policy_terms(params, mb, hp)
        weights = None
        if config.off_policy_threshold is not None:
            p, g, n = mb["tokens"].shape
            weights = off_policy_mask(
                advantages,
                logp,
                mb["logprobs"].reshape(p * g, n),
                loss_mask,
                config.off_policy_threshold,
            )
        if recipe.aggregation in ("dapo", "bnpo"):
            aggregation, num_items, scale = "dapo", global_count(loss_mask), 1.0
        else:
            aggregation, num_items, scale = (
                recipe.aggregation,
                None,
                loss_weight_scale(),
            )
        loss, metrics = policy_loss(
            logp,
            old,
            advantages,
            loss_mask,
            ratio_level=recipe.ratio_level,
            epsilon_low=hp.epsilon_low,
            epsilon_high=hp.epsilon_high,
            delta=config.delta,
            aggregation=aggregation,
            max_completion_length=length,
            num_items=num_items,
            ref_logp=ref,
            beta=hp.beta if recipe.use_reference else 0.0,
            kl_estimator=config.kl_estimator,
            sequence_weights=weights,
            group_size=group,
        )
        return loss * scale, {**metrics, "policy_loss": loss * scale}

    def value_policy_loss(params, mb, hp):
        """VAPO / PPO's actor: token-level clipped surrogate (+ VAPO's NLL)."""
        logp, old, loss_mask, advantages, _ = policy_terms(params, mb, hp)
        num_items = global_count(loss_mask)
        loss, metrics = policy_loss(
            logp,
            old,
            advantages,
            loss_mask,
            epsilon_low=hp.epsilon_low,
            epsilon_high=hp.epsilon_high,
            delta=config.delta,
            aggregation="dapo",
            num_items=num_items,
        )
        metrics = {**metrics, "policy_loss": loss}
        if config.loss == "vapo":
            p, g, _ = mb["tokens"].shape
            positive = mb["positive"].reshape(p * g)
            count = psum(jnp.sum(loss_mask * positive[:, None]).astype(jnp.float32))
            nll = positive_nll_loss(logp, loss_mask, positive, num_items=count)
            loss = loss + hp.nll_coef * nll
            metrics["nll_loss"] = nll
        return loss, metrics

    def value_loss(value_params, mb):
        values = values_of(
            value_params,
            mb["prompt_tokens"],
            mb["prompt_mask"],
            mb["tokens"],
            mb["mask"],
        )
        p, g, n = mb["tokens"].shape
        loss_mask = mb["loss_mask"].reshape(p * g, n)
        loss, metrics = token_value_loss(
            values.reshape(p * g, n),
            mb["old_values"].reshape(p * g, n),
            mb["returns"].reshape(p * g, n),
            loss_mask,
            clip_eps=config.value_clip_eps,
            aggregation="dapo",
            num_items=global_count(loss_mask),
        )
        return loss, {**metrics, "value_loss": loss}

    def minibatches(data):
        """``[P_local, ...] -> [M, P_local / M, ...]``: minibatch m holds the
        prompts i with i % M == m (the same prompts on any number of devices)."""
        return jax.tree.map(
            lambda x: x.reshape(local_prompts // num_mb, num_mb, *x.shape[1:]).swapaxes(
                0, 1
            ),
            data,
        )

    def update_epochs(
        state: GRPOState, data, key, hp, train_policy, train_value, extra=None
    ):
        tx = optimizer(hp.max_grad_norm, hp.weight_decay)
        batches = minibatches(data)
        policy_loss_fn = value_policy_loss if value_model else group_loss
        if extra_loss is not None and train_policy:

            def policy_loss_fn(params, mb, hp):
                base = value_policy_loss if value_model else group_loss
                loss, metrics = base(params, mb, hp)
                term = extra_loss(params, mb, extra)
                return loss + term, {**metrics, "extra_loss": term}

        def minibatch_step(carry, mb):
            params, opt_state, value_params, value_opt_state = carry
            metrics = {}
            if train_policy:
                loss_fn = policy_loss_fn
                grads, metrics = jax.grad(loss_fn, has_aux=True)(params, mb, hp)
                grads = psum(grads)
                metrics["grad_norm"] = optax.tree.norm(grads)
                params, opt_state = apply(
                    tx, grads, opt_state, params, hp.learning_rate
                )
            if train_value:
                grads, vmetrics = jax.grad(value_loss, has_aux=True)(value_params, mb)
                grads = psum(grads)
                value_params, value_opt_state = apply(
                    tx, grads, value_opt_state, value_params, hp.value_learning_rate
                )
                metrics.update(vmetrics)
            # Loss terms are each device's share of the global loss: summed.
            metrics = {
                k: psum(v) if k in _LOSS_TERMS else pmean(v) for k, v in metrics.items()
            }
            return (params, opt_state, value_params, value_opt_state), metrics

        def epoch(carry, epoch_key):
            order = jax.random.permutation(epoch_key, num_mb)
            return lax.scan(minibatch_step, carry, _tree_take(batches, order))

        carry = (
            state.params,
            state.opt_state,
            state.value_params,
            state.value_opt_state,
        )
        carry, metrics = lax.scan(
            epoch, carry, jax.random.split(key, config.num_epochs)
        )
        params, opt_state, value_params, value_opt_state = carry
        state = state.replace(
            params=params,
            opt_state=opt_state,
            value_params=value_params,
            value_opt_state=value_opt_state,
        )
        return state, jax.tree.map(jnp.mean, metrics)

    def token_rewards(rollout: Rollout, rewards):
        """The completion's reward on its last token, ``[P, G, N]``."""
        last = jnp.maximum(rollout.mask.sum(-1) - 1, 0)
        onehot = jax.nn.one_hot(last, length, dtype=jnp.float32)
        return onehot * rewards[..., None] * (rollout.mask.sum(-1, keepdims=True) > 0)

    def whiten(x, mask):
        """Masked whitening over the global batch (Tunix's masked_whiten)."""
        count = jnp.maximum(global_count(mask), 1.0)
        mean = psum(jnp.sum(x * mask)) / count
        var = psum(jnp.sum(jnp.square(x - mean) * mask)) / jnp.maximum(count - 1, 1)
        return jnp.where(mask > 0, (x - mean) * lax.rsqrt(var + 1e-8), 0.0)

    def learn_local(
        state: GRPOState,
        rollout: Rollout,
        rewards,
        valid,
        key,
        hp,
        advantages=None,
        extra=None,
    ):
        p, g, n = rollout.tokens.shape
        trained = rollout.mask if rollout.loss_mask is None else rollout.loss_mask
        loss_mask = trained.astype(jnp.float32) * valid[:, None, None]
        if recipe.overlong_filter:
            loss_mask = loss_mask * (~truncated_of(rollout))[..., None]
        data = {
            "prompt_tokens": rollout.prompt_tokens,
            "prompt_mask": rollout.prompt_mask,
            "tokens": rollout.tokens,
            "mask": rollout.mask,
            "logprobs": rollout.logprobs,
            "loss_mask": loss_mask,
        }

        def logp_of(params):
            return completion_logprobs(
                params,
                mc,
                rollout.prompt_tokens,
                rollout.prompt_mask,
                rollout.tokens,
                rollout.mask,
                hp.temperature,
            )

        if not on_policy:
            data["old_logp"] = logp_of(state.params)
        if recipe.use_reference:
            data["ref_logp"] = logp_of(state.reference)
        metrics = {}
        if value_model:
            old_values = values_of(
                state.value_params,
                rollout.prompt_tokens,
                rollout.prompt_mask,
                rollout.tokens,
                rollout.mask,
            )
            tok_rewards = token_rewards(rollout, rewards)
            if config.loss == "ppo" and recipe.use_reference:
                old = data.get("old_logp", rollout.logprobs)
                kl = jnp.where(rollout.mask > 0, old - data["ref_logp"], 0.0)
                tok_rewards = tok_rewards - hp.beta * kl  # KL in the reward (k1)
                metrics["kl_reward"] = pmean(
                    jnp.sum(kl * rollout.mask) / jnp.maximum(rollout.mask.sum(), 1)
                )
            flat = (p * g, n)
            args = (
                tok_rewards.reshape(flat),
                old_values.reshape(flat),
                rollout.mask.reshape(flat),
            )
            if config.loss == "vapo":
                advantages, returns = vapo_advantages(
                    *args, alpha=hp.vapo_alpha, gamma=config.gamma
                )
            else:
                advantages, returns = token_gae(
                    *args, gamma=config.gamma, gae_lambda=hp.gae_lambda
                )
                advantages = whiten(advantages, loss_mask.reshape(flat))
            data["advantages"] = advantages.reshape(p, g, n)
            data["returns"] = returns.reshape(p, g, n)
            data["old_values"] = old_values
            data["positive"] = (rewards >= config.positive_threshold).astype(
                jnp.float32
            )
        elif advantages is not None:
            # Given by the caller (this device's share), e.g. multi-turn credit.
            keep = valid.reshape(valid.shape + (1,) * (advantages.ndim - 1))
            data["advantages"] = advantages.astype(jnp.float32) * keep
        else:
            flat_rewards = gather(rewards).reshape(-1)
            advantages = ADVANTAGES[recipe.advantage](
                flat_rewards, group, epsilon=config.advantage_epsilon
            ).reshape(num_prompts, group)
            data["advantages"] = (
                lax.dynamic_slice_in_dim(advantages, local_start(), p, 0)
                * valid[:, None]
            )
        state, update_metrics = update_epochs(
            state, data, key, hp, True, value_model, extra
        )
        metrics.update(update_metrics)
        metrics["valid_groups"] = pmean(valid.mean().astype(jnp.float32))
        return state.replace(step=state.step + 1), metrics

    def step_local(state: GRPOState, hp):
        # The same key stream as sample + learn (the host path).
        key, k_sample = jax.random.split(state.key)
        rollout, rewards, valid, info = collect_local(state, k_sample, hp)
        key, k_learn = jax.random.split(key)
        state, metrics = learn_local(
            state.replace(key=key), rollout, rewards, valid, k_learn, hp
        )
        return state, {**info, **metrics}

    def sample_local(state: GRPOState, hp, prompts):
        key, k_sample = jax.random.split(state.key)
        rollout = draw_local(state.params, k_sample, hp, prompts)
        return state.replace(key=key), rollout

    def host_learn_local(
        state: GRPOState, rollout, rewards, valid, hp, advantages, extra=None
    ):
        key, k_learn = jax.random.split(state.key)
        rewards = shape_rewards(rewards, rollout)
        if recipe.dynamic_sampling:
            valid = valid & group_spread(rewards)
        return learn_local(
            state.replace(key=key),
            rollout,
            rewards,
            valid,
            k_learn,
            hp,
            advantages,
            extra,
        )

    def pretrain_value_local(state: GRPOState, hp):
        key, k_sample, k_learn = jax.random.split(state.key, 3)
        rollout = draw_local(state.params, jax.random.fold_in(k_sample, 0), hp)
        rewards = shape_rewards(
            task.reward(rollout.tokens, rollout.mask, rollout.problem), rollout
        )
        old_values = values_of(
            state.value_params,
            rollout.prompt_tokens,
            rollout.prompt_mask,
            rollout.tokens,
            rollout.mask,
        )
        p, g, n = rollout.tokens.shape
        _, returns = token_gae(
            token_rewards(rollout, rewards).reshape(p * g, n),
            old_values.reshape(p * g, n),
            rollout.mask.reshape(p * g, n),
            gamma=config.gamma,
            gae_lambda=1.0,
        )
        data = {
            "prompt_tokens": rollout.prompt_tokens,
            "prompt_mask": rollout.prompt_mask,
            "tokens": rollout.tokens,
            "mask": rollout.mask,
            "loss_mask": rollout.mask.astype(jnp.float32),
            "old_values": old_values,
            "returns": returns.reshape(p, g, n),
        }
        state, metrics = update_epochs(
            state.replace(key=key),
            data,
            k_learn,
            hp,
            train_policy=False,
            train_value=True,
        )
        return state, {**metrics, "reward": pmean(rewards.mean())}

    # -- the mesh --
    rollout_spec = Rollout(*(P(AXIS),) * 7)

    def on_mesh(fn, in_specs, out_specs):
        if not sharded:
            return fn
        # The sampler's loops start from constants and fill them with per-device
        # values, which the varying-axis type check rejects; without it, each
        # device differentiates its own loss and the gradients are summed
        # explicitly (psum above).
        return jax.shard_map(
            fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )

    step_mapped = on_mesh(step_local, (P(), P()), (P(), P()))
    pretrain_mapped = on_mesh(pretrain_value_local, (P(), P()), (P(), P()))

    def need_task(name):
        if task is None:
            raise ValueError(f"{name} needs a task (make_grpo(config, model, task))")
        if task.host_only:
            raise ValueError(
                f"{name}: the task's reward runs on the host ({task.name}); use "
                "sample + learn or host_step"
            )

    step_jit = jax.jit(step_mapped)

    @functools.partial(jax.jit, static_argnums=2)
    def pretrain_jit(state, hp, num_steps):
        return lax.scan(lambda s, _: pretrain_mapped(s, hp), state, None, num_steps)

    def step(state: GRPOState, hparams: GRPOHParams | None = None):
        """One post-training step (see the module docstring); jitted."""
        need_task("step")
        hp = default_hparams if hparams is None else hparams
        return step_jit(state, hp)

    @functools.partial(jax.jit, static_argnums=(2, 3))
    def run_jit(state, hp, num_steps, callback):
        def body(state, _):
            state, metrics = step_mapped(state, hp)
            if callback is not None:
                jax.debug.callback(callback, metrics)
            return state, metrics

        return lax.scan(body, state, None, num_steps)

    def run(
        state: GRPOState,
        hparams: GRPOHParams | None = None,
        num_steps: int = 1,
        callback: Callable[[dict], None] | None = None,
    ):
        """``num_steps`` steps as one jitted ``lax.scan`` -> ``(state, metrics)``
        with ``[num_steps]`` leaves (compiled once per ``num_steps`` and
        ``callback``). ``callback(metrics)`` runs on the host after each step
        (e.g. a progress bar)."""
        need_task("run")
        if (
            isinstance(num_steps, bool)
            or not isinstance(num_steps, int)
            or num_steps < 0
        ):
            raise ValueError(f"run: num_steps must be an int >= 0, got {num_steps!r}")
        hp = default_hparams if hparams is None else hparams
        return run_jit(state, hp, num_steps, callback)

    def check_prompts(prompt_tokens, prompt_mask):
        shape = np.shape(prompt_tokens)
        if len(shape) != 2 or shape[0] != num_prompts:
            raise ValueError(
                f"sample: prompt_tokens must be [num_prompts, P] = [{num_prompts}, "
                f"P], got {shape}"
            )
        if np.shape(prompt_mask) != shape:
            raise ValueError(
                f"sample: prompt_mask has shape {np.shape(prompt_mask)}, "
                f"prompt_tokens {shape}"
            )
        total = shape[1] + length
        if total > mc.max_position_embeddings:
            raise ValueError(
                f"sample: prompts of {shape[1]} tokens + max_new_tokens {length} = "
                f"{total} exceed LMConfig.max_position_embeddings "
                f"({mc.max_position_embeddings})"
            )
        tokens = np.asarray(prompt_tokens)
        if tokens.min() < 0 or tokens.max() >= mc.vocab_size:
            raise ValueError(
                f"sample: prompt ids in [{tokens.min()}, {tokens.max()}] outside the "
                f"model's vocabulary [0, {mc.vocab_size}): does the tokenizer "
                "match the model (LMConfig.vocab_size)?"
            )
        mask = np.asarray(prompt_mask) > 0
        if not mask[:, -1].all() or (np.diff(mask.astype(np.int8), axis=1) < 0).any():
            raise ValueError("sample: prompts must be left-padded (prompt_mask)")
        return jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32)

    @functools.partial(jax.jit, static_argnums=3)
    def _sample_jit(state, hp, prompts, external):
        if sharded:
            in_prompts = (P(AXIS), P(AXIS)) if external else None
            spec = rollout_spec._replace(
                problem=P(AXIS) if not external else None, loss_mask=None
            )
            fn = jax.shard_map(
                lambda s, h, pr: sample_local(s, h, pr),
                mesh=mesh,
                in_specs=(P(), P(), in_prompts),
                out_specs=(P(), spec),
                check_vma=False,
            )
            return fn(state, hp, prompts)
        return sample_local(state, hp, prompts)

    def sample(
        state: GRPOState,
        hparams: GRPOHParams | None = None,
        prompt_tokens=None,
        prompt_mask=None,
    ):
        """Sample ``group_size`` completions of ``num_prompts`` prompts: the
        task's (default) or the given left-padded ``[num_prompts, P]`` arrays.
        Returns ``(state, Rollout)`` with ``[P]``-first arrays (compiled)."""
        hp = default_hparams if hparams is None else hparams
        if prompt_tokens is None:
            if task is None:
                raise ValueError("sample: give prompt_tokens, or build with a task")
            return _sample_jit(state, hp, None, False)
        if prompt_mask is None:
            prompt_mask = np.ones(np.shape(prompt_tokens), np.int32)
        prompts = check_prompts(prompt_tokens, prompt_mask)
        return _sample_jit(state, hp, prompts, True)

    @functools.partial(jax.jit, static_argnums=5)
    def _learn_jit(
        state, rollout, rewards, valid, hp, has_problem, advantages, extra=None
    ):
        if sharded:
            spec = rollout_spec._replace(
                problem=P(AXIS) if has_problem else None,
                loss_mask=P(AXIS) if rollout.loss_mask is not None else None,
            )
            fn = jax.shard_map(
                host_learn_local,
                mesh=mesh,
                in_specs=(
                    P(),
                    spec,
                    P(AXIS),
                    P(AXIS),
                    P(),
                    None if advantages is None else P(AXIS),
                ),
                out_specs=(P(), P()),
                check_vma=False,
            )
            return fn(state, rollout, rewards, valid, hp, advantages)
        return host_learn_local(state, rollout, rewards, valid, hp, advantages, extra)

    def learn(
        state: GRPOState,
        rollout: Rollout,
        rewards,
        hparams: GRPOHParams | None = None,
        valid=None,
        advantages=None,
        extra=None,
    ):
        """Advantages and updates on a `Rollout` scored on the host: ``rewards``
        ``[num_prompts, group_size]``; ``valid`` ``[num_prompts]`` bool (groups
        to train on; DAPO's dynamic sampling also drops zero-spread groups).
        ``advantages`` (group losses only): ``[num_prompts, group_size]`` per
        completion or ``[num_prompts, group_size, max_new_tokens]`` per token,
        used instead of the group advantages of ``rewards`` (which then only
        feed DAPO's filters and the metrics): e.g. multi-turn turn-level
        credit (`convergence_jax.agents.multiturn`). ``extra``: the pytree
        handed to ``extra_loss`` (`make_grpo`)."""
        hp = default_hparams if hparams is None else hparams
        if advantages is not None:
            if value_model:
                raise ValueError(
                    f"learn: advantages are computed by loss {config.loss!r}'s "
                    "value model; give them only with a group loss"
                )
            if config.off_policy_threshold is not None and np.ndim(advantages) != 2:
                raise ValueError(
                    "learn: per-token advantages do not go with "
                    "GRPOConfig.off_policy_threshold (a per-completion mask)"
                )
            shapes = ((num_prompts, group), (num_prompts, group, length))
            if np.shape(advantages) not in shapes:
                raise ValueError(
                    f"learn: advantages must be {list(shapes[0])} or "
                    f"{list(shapes[1])}, got {list(np.shape(advantages))}"
                )
            advantages = jnp.asarray(advantages, jnp.float32)
        want = (num_prompts, group)
        if np.shape(rewards) != want:
            raise ValueError(
                f"learn: rewards must be [num_prompts, group_size] = {list(want)}, "
                f"got {list(np.shape(rewards))}"
            )
        if np.shape(rollout.tokens) != (num_prompts, group, length):
            raise ValueError(
                f"learn: rollout.tokens must be [{num_prompts}, {group}, {length}], "
                f"got {list(np.shape(rollout.tokens))}"
            )
        if rollout.loss_mask is not None and np.shape(rollout.loss_mask) != np.shape(
            rollout.tokens
        ):
            raise ValueError(
                f"learn: rollout.loss_mask has shape "
                f"{list(np.shape(rollout.loss_mask))}, rollout.tokens "
                f"{list(np.shape(rollout.tokens))}"
            )
        rewards = jnp.asarray(rewards, jnp.float32)
        valid = (
            jnp.ones(num_prompts, bool) if valid is None else jnp.asarray(valid, bool)
        )
        if valid.shape != (num_prompts,):
            raise ValueError(
                f"learn: valid must be [num_prompts] = [{num_prompts}], got "
                f"{list(valid.shape)}"
            )
        return _learn_jit(
            state,
            rollout,
            rewards,
            valid,
            hp,
            rollout.problem is not None,
            advantages,
            extra,
        )

    def host_step(
        state: GRPOState,
        reward_fn: Callable[[Rollout], Any],
        hparams: GRPOHParams | None = None,
        prompts_fn: Callable[[int], tuple] | None = None,
    ):
        """One step with a Python reward: ``reward_fn(rollout) -> [num_prompts,
        group_size]`` (NumPy) on the host, given the rollout as NumPy arrays
        (gathered from every process in a multi-process run).
        ``prompts_fn(round)``, if given, returns ``(prompt_tokens,
        prompt_mask)``; otherwise the task draws them.
        With dynamic sampling, rounds are sampled (at most
        ``max_sampling_rounds``) until ``num_prompts`` groups have a reward
        spread. Returns ``(state, metrics)`` (NumPy floats)."""
        hp = default_hparams if hparams is None else hparams
        kept, kept_rewards, first = [], [], None
        rounds = config.max_sampling_rounds if recipe.dynamic_sampling else 1
        for round_ in range(rounds):
            args = prompts_fn(round_) if prompts_fn is not None else (None, None)
            state, rollout = sample(state, hp, *args)
            # NumPy on the host: the whole rollout, also where it is split over
            # the devices of several processes (every process scores all of it).
            rollout = to_host(rollout)
            rewards = np.asarray(reward_fn(rollout), np.float32)
            if rewards.shape != (num_prompts, group):
                raise ValueError(
                    f"host_step: reward_fn returned shape {rewards.shape}, expected "
                    f"[num_prompts, group_size] = [{num_prompts}, {group}]"
                )
            if first is None:
                first = (rollout, rewards)
            if not recipe.dynamic_sampling:
                kept, kept_rewards = [rollout], [rewards]
                break
            shaped = np.asarray(shape_rewards(jnp.asarray(rewards), rollout))
            spread = shaped.max(-1) > shaped.min(-1)
            kept.append(jax.tree.map(lambda x, s=spread: x[s], rollout))
            kept_rewards.append(rewards[spread])
            if sum(len(r) for r in kept_rewards) >= num_prompts:
                break
        filled = min(sum(len(r) for r in kept_rewards), num_prompts)
        # Slots no round filled take the first round's groups, masked out.
        kept.append(jax.tree.map(lambda x: x[: num_prompts - filled], first[0]))
        kept_rewards.append(first[1][: num_prompts - filled])
        rollout = jax.tree.map(lambda *xs: np.concatenate(xs)[:num_prompts], *kept)
        rewards = np.concatenate(kept_rewards)[:num_prompts]
        valid = np.arange(num_prompts) < filled
        state, metrics = learn(state, rollout, rewards, hp, valid)
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics.update(
            reward=float(first[1].mean()),
            filled=filled / num_prompts,
            sampling_rounds=float(round_ + 1),
        )
        return state, metrics

    def pretrain_value(
        state: GRPOState, hparams: GRPOHParams | None = None, num_steps: int = 1
    ):
        """VAPO's value pretraining: ``num_steps`` steps in which the critic fits
        the lambda = 1 (Monte-Carlo) returns of samples from the fixed policy;
        the policy does not change. One ``lax.scan``."""
        if not value_model:
            raise ValueError(
                f"pretrain_value: loss {config.loss!r} has no value model (vapo, ppo)"
            )
        need_task("pretrain_value")
        hp = default_hparams if hparams is None else hparams
        return pretrain_jit(state, hp, num_steps)

    return GRPO(
        config=config,
        model_config=mc,
        default_hparams=default_hparams,
        init=init,
        step=step,
        run=run,
        sample=sample,
        learn=learn,
        host_step=host_step,
        pretrain_value=pretrain_value,
    )
