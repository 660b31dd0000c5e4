"""RLP: reinforcement learning as a pretraining objective (Hatamizadeh et al.,
NVIDIA, 2025, "RLP: Reinforcement as a Pretraining Objective", arXiv
2510.01265, §2, Eq. 3-8, Algorithm 1), on any token stream.

    from convergence_jax.self_improve import rlp

    config = rlp.RLPConfig(think_start=10, think_end=11, pad_id=12,
                           group_size=8, batch_size=16, context_length=15,
                           max_thought_tokens=6)
    program = rlp.make_rlp(config, model_config)
    stream = rlp.digit_sum_stream(jax.random.key(0), 4096, 16)   # [N, T] tokens
    keys = jnp.stack([jax.random.key(seed) for seed in range(3)])
    state = jax.vmap(program.init, in_axes=(0, None))(keys, params)  # phi = theta
    state, metrics = jax.jit(jax.vmap(
        lambda s: program.run(s, stream, num_steps=300)))(state)
    metrics["reward"]                                   # [3, 300]

**The objective.** At a position ``t`` of a token sequence, with context
``x_<t`` and true next token ``x_t``, the network plays two roles: the thought
policy ``pi_theta(c | x_<t)`` and the reasoned predictor ``p_theta(x_t | x_<t,
c)``. A thought is the prompt ``x_<t`` followed by the configured
``think_start`` token (forced), then tokens sampled from the policy until it
emits ``think_end`` or ``max_thought_tokens`` are out (``think_end`` is then
appended, forced); ``x_t`` is scored after it. Per step (Algorithm 1):

1. ``theta_old <- theta`` (the sampling policy, under `jax.lax.stop_gradient`);
   draw ``B`` (sequence, position) pairs uniformly from the stream; sample ``G``
   thoughts ``c_1..c_G ~ pi_theta_old(. | x_<t)`` for each (temperature ``T``).
2. Reward (Eq. 3-5), no gradient through either term:

       r(c) = log p_theta_old(x_t | x_<t, c) - log pbar_phi(x_t | x_<t)

   ``pbar_phi`` the *no-think* prediction of an EMA copy ``phi`` of the same
   network (`information_gain_reward`).
3. Leave-one-out advantages (Eq. 7): ``A_i = G / (G - 1) * (r_i - mean_j r_j)``
   (`leave_one_out_advantages`; RLOO, no std normalization).
4. ``num_updates`` AdamW steps on the clipped surrogate over the thought tokens
   only (Eq. 8, `rlp_surrogate`):

       rho_u = exp(log pi_theta(l_u | x_<t, l_<u) - log pi_theta_old(l_u | ...))
       L     = -1/(B G) sum_{b,i} 1/|c| sum_u min(rho_u A, clip(rho_u, 1 - eps_low,
                                                            1 + eps_high) A)

   no next-token loss and no KL term (the paper's §2 and §10: KL 0), and after
   every optimizer step the EMA update ``phi <- tau phi + (1 - tau) theta``
   (`ema_update`; ``tau = 0.999``; ``phi = theta`` at `init`, the paper's lazy
   initialization).

Thought log-probs are ``log_softmax(logits / T)`` (the sampling distribution,
the project's and TRL's convention, so ``rho`` is a ratio of sampling
probabilities); the predictor's and the baseline's log-likelihoods of ``x_t``
are the raw model's (temperature 1). With ``num_updates = 1`` the ratio is 1
and the clip never binds (the surrogate's gradient is then REINFORCE with the
leave-one-out baseline); with more updates per rollout it does. The paper's v1
text gives no ``eps`` values; the defaults are PPO's 0.2 / 0.2.

**Metrics** per step (`RLP.step`): ``reward`` (mean information gain),
``logp_think`` (mean ``log p_theta(x_t | x_<t, c)`` over the sampled thoughts),
``logp_ema`` (mean ``log pbar_phi(x_t | x_<t)``), ``logp_nothink`` (the current
model's own no-think log-likelihood), ``accuracy_think`` / ``accuracy_ema`` (the
argmax is ``x_t``), ``thought_length`` (sampled tokens, ``think_end`` included),
``thought_ended`` (the fraction that emitted ``think_end``), ``clip_fraction``
(thought tokens whose clipped term binds, TRL's definition, mean over the
updates), ``ratio``, ``reward_std`` (within groups), ``loss``, ``grad_norm``,
``learning_rate``.

**Program.** `make_rlp` returns ``(init, step, run, rollout, loss)`` in the
style of `convergence_jax.llm.make_preference`: an `RLPState` (params, EMA
params, Adam's moments, key, step) and every number in `RLPHParams` (traced),
so a `jax.vmap` over seeds and over hyperparameters compiles once; ``run`` is a
`lax.scan` of ``step`` over a fixed ``[N, T]`` token stream.

**A stream where thinking helps.** `digit_sum_stream` draws digit sequences
whose every token after a random seed is the sum mod 10 of the digits at fixed
earlier offsets (default ``(1, 2, 4)``: ``x_t = x_{t-1} + x_{t-2} + x_{t-4} mod
10``). Predicting ``x_t`` in one step needs three look-ups and a 3-way sum; a
thought can carry the partial sums one addition at a time.
`sum_thought_batch` writes such thoughts (a scratchpad ``think_start d_1 d_2
p_2 .. d_k p_k think_end x_t``: each digit to add copied from the context, then
the running sum), for a warm-up only: RLP itself never sees them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from convergence_jax.llm.preference import _check_number
from convergence_jax.llm.sft import SFTHParams, adamw_update
from convergence_jax.llm.tasks import SFTBatch
from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.generate import generate
from convergence_jax.lm.model import Transformer, check_params, forward

__all__ = [
    "RLP",
    "RLPConfig",
    "RLPHParams",
    "RLPRollout",
    "RLPState",
    "digit_sum_stream",
    "ema_update",
    "information_gain_reward",
    "leave_one_out_advantages",
    "make_rlp",
    "rlp_surrogate",
    "sum_thought_batch",
]


# --- checks -----------------------------------------------------------------


def _check_shapes(where: str, fn, **arrays) -> None:
    try:
        fn()
    except AssertionError as error:
        shapes = ", ".join(f"{k} {tuple(jnp.shape(v))}" for k, v in arrays.items())
        raise ValueError(f"{where}: bad shapes ({shapes}): {error}") from None


# --- the pure core ------------------------------------------------------------


def information_gain_reward(logp_think: jax.Array, logp_ema: jax.Array) -> jax.Array:
    """RLP's reward (Eq. 3-5), ``[B, G]``; no gradient flows through it.

        r(c_i) = log p_theta(x_t | x_<t, c_i) - log pbar_phi(x_t | x_<t)

    ``logp_think``: ``[B, G]`` log-likelihood of the true next token after each of
    the ``G`` thoughts (``S_pred``); ``logp_ema``: ``[B]`` the no-think EMA
    baseline's (``S_ema``). Both are under `jax.lax.stop_gradient` (the paper:
    "no backpropagation through p_theta or pbar_phi"). In expectation over
    ``x_t`` it is the cross-entropy reduction the thought brings
    (Proposition 1).
    """
    _check_shapes(
        "information_gain_reward",
        lambda: (
            chex.assert_rank([logp_think, logp_ema], [2, 1]),
            chex.assert_equal_shape_prefix([logp_think, logp_ema], 1),
        ),
        logp_think=logp_think,
        logp_ema=logp_ema,
    )
    return jax.lax.stop_gradient(logp_think) - jax.lax.stop_gradient(logp_ema)[:, None]


def leave_one_out_advantages(rewards: jax.Array) -> jax.Array:
    """RLP's advantage (Eq. 7), ``[B, G]`` -> ``[B, G]``, no gradient.

        A_i = G / (G - 1) * (r_i - mean_j r_j)  =  r_i - mean_{j != i} r_j

    the "inclusive mean with correction", which is RLOO's leave-one-out
    baseline (Kool et al., 2019; `convergence_jax.llm.rloo_advantages` on the
    flat layout). No division by the std. Each group's advantages sum to 0.
    ``G >= 2``.
    """
    _check_shapes(
        "leave_one_out_advantages",
        lambda: chex.assert_rank(rewards, 2),
        rewards=rewards,
    )
    group = rewards.shape[1]
    if group < 2:
        raise ValueError(
            f"leave_one_out_advantages: needs G >= 2 thoughts per context, got "
            f"rewards of shape {tuple(rewards.shape)}"
        )
    r = jax.lax.stop_gradient(rewards)
    return group / (group - 1) * (r - r.mean(axis=1, keepdims=True))


def rlp_surrogate(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    epsilon_low=0.2,
    epsilon_high=0.2,
) -> tuple[jax.Array, dict]:
    """RLP's clipped surrogate on the thought tokens (Eq. 8), a loss to minimize.

        rho_u  = exp(logp_u - old_logp_u)
        L_i    = -(1 / |c_i|) sum_u m_u min(rho_u A_i,
                                           clip(rho_u, 1 - eps_low, 1 + eps_high) A_i)
        loss   = (1 / (B G)) sum_{b, i} L_{b, i}

    ``logp``, ``old_logp``, ``mask``: ``[B, G, N]`` (``N`` the thought budget;
    ``mask`` 1 on the sampled thought tokens, ``|c_i| = sum_u m_u``, a thought
    with no token adds 0); ``advantages``: ``[B, G]``, taken as constants
    (`jax.lax.stop_gradient`). Masked entries may hold anything (even ``inf``):
    their log-ratio is zeroed before ``exp``. This is TRL's ``loss_type="grpo"``
    aggregation (Tunix's ``sequence-mean-token-mean``) with ``beta = 0``.

    Returns ``(loss, metrics)``: ``clip_fraction`` (thought tokens with ``rho <
    1 - eps_low`` and ``A < 0`` or ``rho > 1 + eps_high`` and ``A > 0``, where the
    clipped term binds) and ``ratio`` (mean ``rho``), over the thought tokens.
    """
    _check_shapes(
        "rlp_surrogate",
        lambda: (
            chex.assert_rank([logp, old_logp, mask, advantages], [3, 3, 3, 2]),
            chex.assert_equal_shape([logp, old_logp, mask]),
            chex.assert_equal_shape_prefix([logp, advantages], 2),
        ),
        logp=logp,
        old_logp=old_logp,
        advantages=advantages,
        mask=mask,
    )
    _check_number("rlp_surrogate", "epsilon_low", epsilon_low, 0.0, 1.0, False, True)
    _check_number("rlp_surrogate", "epsilon_high", epsilon_high, low=0.0)
    valid = mask > 0
    weight = valid.astype(jnp.float32)
    adv = jax.lax.stop_gradient(advantages)[..., None]
    log_ratio = jnp.where(valid, logp - jax.lax.stop_gradient(old_logp), 0.0)
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = jnp.where(valid, jnp.minimum(ratio * adv, clipped * adv), 0.0)
    length = weight.sum(-1)
    per_thought = per_token.sum(-1) / jnp.maximum(length, 1.0)
    loss = -per_thought.mean()
    ratio_sg = jax.lax.stop_gradient(ratio)
    binds = ((ratio_sg < 1.0 - epsilon_low) & (adv < 0)) | (
        (ratio_sg > 1.0 + epsilon_high) & (adv > 0)
    )
    count = jnp.maximum(weight.sum(), 1.0)
    metrics = {
        "clip_fraction": (binds * weight).sum() / count,
        "ratio": (ratio_sg * weight).sum() / count,
    }
    return loss, metrics


def ema_update(ema_params, params, tau):
    """The no-think baseline's EMA step (§2.1, Algorithm 1 line 15):

        phi <- tau * phi + (1 - tau) * theta

    applied leaf by leaf (``optax.incremental_update(new=theta, old=phi,
    step_size=1 - tau)``), after each optimizer step; no gradient reaches
    ``phi``. ``tau = 0`` copies ``theta``; the paper uses ``tau = 0.999``.
    ``tau`` in ``[0, 1)`` (may be traced).
    """
    _check_number("ema_update", "tau", tau, 0.0, 1.0, high_open=True)
    chex.assert_trees_all_equal_shapes(ema_params, params)
    tau = jnp.asarray(tau, jnp.float32)
    return jax.lax.stop_gradient(
        optax.incremental_update(params, ema_params, 1.0 - tau)
    )


# --- configuration ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RLPConfig:
    """Sizes and tokens of an RLP run (static: changing one recompiles)."""

    think_start: int
    """Token that opens a thought (forced after the context)."""
    think_end: int
    """Token that closes a thought (the policy's stop token; appended if the
    budget runs out first)."""
    pad_id: int = 0
    """Padding token id (never attended to)."""
    group_size: int = 8
    """``G``: thoughts sampled per context (>= 2; the paper: 16)."""
    batch_size: int = 16
    """``B``: (context, next token) pairs per step."""
    context_length: int = 32
    """``W``: the context is the last ``W`` tokens before ``x_t`` (left-padded
    when the prefix is shorter)."""
    min_context: int = 1
    """Positions ``t`` are drawn uniformly from ``[min_context, T - 1]``: every
    context has at least ``min_context`` tokens."""
    max_thought_tokens: int = 16
    """``N``: the thought budget, ``think_end`` included (the paper: 2048)."""
    num_updates: int = 1
    """Optimizer steps per rollout (``> 1``: the importance ratio and its clip
    come into play)."""

    def validate(self, model_config: LMConfig | None = None) -> None:
        """Raise ``ValueError`` naming the first field that does not make sense."""
        for name in (
            "think_start",
            "think_end",
            "pad_id",
            "group_size",
            "batch_size",
            "context_length",
            "min_context",
            "max_thought_tokens",
            "num_updates",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"RLPConfig.{name} must be an int, got {value!r}")
        if self.group_size < 2:
            raise ValueError(
                f"RLPConfig.group_size must be >= 2 (leave-one-out advantages need "
                f"two thoughts per context), got {self.group_size}"
            )
        for name in (
            "batch_size",
            "context_length",
            "min_context",
            "max_thought_tokens",
            "num_updates",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"RLPConfig.{name} must be >= 1, got {getattr(self, name)}"
                )
        if self.min_context > self.context_length:
            raise ValueError(
                f"RLPConfig.min_context ({self.min_context}) must be <= "
                f"context_length ({self.context_length})"
            )
        if self.think_start == self.think_end:
            raise ValueError(
                f"RLPConfig.think_start and think_end must differ, both "
                f"{self.think_start}"
            )
        if model_config is None:
            return
        vocab = model_config.vocab_size
        for name in ("think_start", "think_end", "pad_id"):
            if not 0 <= getattr(self, name) < vocab:
                raise ValueError(
                    f"RLPConfig.{name} = {getattr(self, name)} is outside the model's "
                    f"vocabulary [0, {vocab}) (LMConfig.vocab_size)"
                )
        total = self.context_length + 1 + self.max_thought_tokens + 1
        if total > model_config.max_position_embeddings:
            raise ValueError(
                f"context_length {self.context_length} + think_start + "
                f"max_thought_tokens {self.max_thought_tokens} + x_t = {total} "
                f"exceeds LMConfig.max_position_embeddings "
                f"({model_config.max_position_embeddings})"
            )


@struct.dataclass
class RLPHParams:
    """The numbers of an RLP run; scalars (or batched, under ``vmap``)."""

    optim: SFTHParams
    """AdamW step size, schedule, weight decay and clipping (as `make_sft`)."""
    tau: jax.Array
    """EMA decay of the no-think baseline, in ``[0, 1)`` (the paper: 0.999)."""
    temperature: jax.Array
    """Thought sampling temperature, > 0 (the paper: 0.7)."""
    epsilon_low: jax.Array
    """Lower clip range of the ratio, in ``[0, 1)``."""
    epsilon_high: jax.Array
    """Upper clip range of the ratio, >= 0."""

    @classmethod
    def create(
        cls,
        learning_rate: float = 1e-4,
        tau: float = 0.999,
        temperature: float = 0.7,
        epsilon_low: float = 0.2,
        epsilon_high: float = 0.2,
        weight_decay: float = 0.0,
        warmup_steps: float = 0,
        decay_steps: float = 0,
        final_lr_fraction: float = 0.1,
        max_grad_norm: float = 1.0,
    ) -> RLPHParams:
        """Scalar hyperparameters (float32), validated when concrete."""
        optim = SFTHParams.create(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            decay_steps=decay_steps,
            final_lr_fraction=final_lr_fraction,
            max_grad_norm=max_grad_norm,
        )
        name = "RLPHParams"
        _check_number(name, "tau", tau, 0.0, 1.0, high_open=True)
        _check_number(name, "temperature", temperature, low=0.0, low_open=True)
        _check_number(name, "epsilon_low", epsilon_low, 0.0, 1.0, high_open=True)
        _check_number(name, "epsilon_high", epsilon_high, low=0.0)
        f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return cls(
            optim=optim,
            tau=f32(tau),
            temperature=f32(temperature),
            epsilon_low=f32(epsilon_low),
            epsilon_high=f32(epsilon_high),
        )


@struct.dataclass
class RLPState:
    """Everything an RLP run needs to continue."""

    params: Any
    """``theta``: the thought policy and reasoned predictor (trained)."""
    ema_params: Any
    """``phi``: the EMA no-think baseline (never differentiated)."""
    opt_state: Any
    key: jax.Array
    """Typed key; step ``i`` draws positions and thoughts from ``fold_in(key,
    i)``."""
    step: jax.Array
    """Rollouts done so far (int32)."""


class RLPRollout(NamedTuple):
    """One step's samples (all ``[B, G, ...]`` constants for the loss)."""

    prompt: jax.Array
    """``[B, W + 1]`` context window then ``think_start``, left-padded."""
    prompt_mask: jax.Array
    completion: jax.Array
    """``[B, G, N + 2]``: the thought, ``think_end`` if forced, ``x_t``, padding."""
    completion_mask: jax.Array
    thought_mask: jax.Array
    """``[B, G, N + 2]``: 1 on the sampled thought tokens (the only ones with a
    gradient)."""
    old_logp: jax.Array
    """``[B, G, N + 2]``: thought log-probs under the sampling policy."""
    target: jax.Array
    """``[B]``: the true next token ``x_t``."""
    logp_think: jax.Array
    """``[B, G]``: ``log p_theta_old(x_t | x_<t, c)``."""
    logp_ema: jax.Array
    """``[B]``: ``log pbar_phi(x_t | x_<t)``."""
    rewards: jax.Array
    advantages: jax.Array


class RLP(NamedTuple):
    """The pure functions of an RLP run (see the module docstring)."""

    config: RLPConfig
    model_config: LMConfig
    default_hparams: RLPHParams
    init: Callable[..., RLPState]
    """``init(key, params) -> RLPState`` with ``ema_params = params`` (the
    paper's lazy initialization ``phi <- theta``)."""
    step: Callable[..., tuple[RLPState, dict]]
    """``step(state, data, hparams=None) -> (state, metrics)``: one rollout on
    the ``[N, T]`` token stream ``data`` and ``num_updates`` optimizer steps,
    each followed by the EMA update."""
    run: Callable[..., tuple[RLPState, dict]]
    """``run(state, data, hparams=None, num_steps=...) -> (state, metrics
    [num_steps])``: ``num_steps`` (static) steps as one `lax.scan`."""
    rollout: Callable[..., tuple[RLPRollout, dict]]
    """``rollout(state, data, hparams=None) -> (RLPRollout, metrics)``: the
    sampling half of a step (no update)."""
    loss: Callable[..., tuple[jax.Array, dict]]
    """``loss(params, rollout, hparams) -> (loss, metrics)``: `rlp_surrogate` of
    ``params``' thought log-probs on a rollout."""


# --- model passes -------------------------------------------------------------


def _completion_logits(params, model_config: LMConfig, prompt, prompt_mask, comp, cm):
    """Logits ``[R, M, V]`` at the positions that predict each completion token
    (the output head only there, as `convergence_jax.lm.completion_logprobs`)."""
    tokens = jnp.concatenate([prompt, comp], axis=1)
    mask = jnp.concatenate([prompt_mask, cm], axis=1)
    hidden, _ = Transformer(model_config, output_hidden=True).apply(
        {"params": params}, tokens, mask
    )
    hidden = hidden[:, prompt.shape[1] - 1 : -1].astype(model_config.compute_dtype)
    if model_config.tie_word_embeddings:
        head = params["embed"]["embedding"].T
    else:
        head = params["lm_head"]["kernel"]
    return jnp.dot(hidden, head.astype(model_config.compute_dtype)).astype(jnp.float32)


def _pick(logp, tokens):
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


# --- the synthetic stream -----------------------------------------------------


def digit_sum_stream(
    key: jax.Array,
    num_sequences: int,
    length: int,
    offsets: Sequence[int] = (1, 2, 4),
    modulus: int = 10,
) -> jax.Array:
    """``[num_sequences, length]`` int32 digit sequences: the first
    ``max(offsets)`` digits uniform in ``[0, modulus)``, then

        x_t = (sum_{o in offsets} x_{t - o}) mod modulus

    With offsets ``(1, 2, 4)`` no two-term shortcut exists (a contiguous window
    ``1..k`` has one: ``x_t = 2 x_{t-1} - x_{t-1-k}``), so a one-step prediction
    needs all three look-ups."""
    offsets = tuple(int(o) for o in offsets)
    if not offsets or min(offsets) < 1 or len(set(offsets)) != len(offsets):
        raise ValueError(f"offsets must be distinct ints >= 1, got {offsets}")
    seed_len = max(offsets)
    if length <= seed_len:
        raise ValueError(f"length must exceed max(offsets) = {seed_len}, got {length}")
    if num_sequences < 1 or modulus < 2:
        raise ValueError(
            f"num_sequences must be >= 1 and modulus >= 2, got {num_sequences}, "
            f"{modulus}"
        )
    seed = jax.random.randint(key, (num_sequences, seed_len), 0, modulus, jnp.int32)

    def body(window, _):
        nxt = sum(window[:, seed_len - o] for o in offsets) % modulus
        return jnp.concatenate([window[:, 1:], nxt[:, None]], axis=1), nxt

    _, rest = jax.lax.scan(body, seed, None, length - seed_len)
    return jnp.concatenate([seed, rest.T], axis=1)


def _windows(data, seq, t, width: int, pad_id: int):
    """The left-padded context windows ``data[seq, t - width : t]`` and masks."""
    index = t[:, None] - width + jnp.arange(width)[None, :]
    valid = index >= 0
    tokens = data[seq[:, None], jnp.maximum(index, 0)]
    return jnp.where(valid, tokens, pad_id), valid.astype(jnp.int32)


def sum_thought_batch(
    key: jax.Array,
    data: jax.Array,
    batch_size: int,
    config: RLPConfig,
    offsets: Sequence[int] = (1, 2, 4),
    modulus: int = 10,
    corrupt: float = 0.0,
) -> SFTBatch:
    """Thought-formatted warm-up rows for a `digit_sum_stream` (an `SFTBatch`):

        [x_<t window (left-padded)] think_start d_1 d_2 p_2 .. d_k p_k think_end x_t

    a scratchpad with ``d_j = x_{t - o_j}`` the ``j``-th digit to add (a copy
    from the context) and ``p_j = (d_1 + .. + d_j) mod modulus`` the running sum
    next to its two operands (so ``p_k = x_t``; ``2k - 1`` thought tokens), and
    the loss on the thought, ``think_end`` and ``x_t`` (not on the context, not
    on ``think_start``,
    which RLP forces, so the model never learns to emit it at a context
    position and its no-think predictions stay those of the stream). Positions
    ``t`` uniform in ``[max(offsets), T - 1]``.

    ``corrupt``: the fraction of rows whose scratchpad is wrong (a random
    nonzero shift added to the running sum from a random step on, so ``p_k !=
    x_t``), with the true ``x_t`` after it and the loss on ``x_t`` only: the
    predictor learns how far to trust a thought (without them it copies ``p_k``
    with near certainty, and a wrong thought costs many nats), the policy never
    learns to write a wrong one."""
    offsets = tuple(int(o) for o in offsets)
    num, length = data.shape
    start = max(offsets)
    k_seq, k_pos, k_bad, k_from, k_shift = jax.random.split(key, 5)
    seq = jax.random.randint(k_seq, (batch_size,), 0, num)
    t = jax.random.randint(k_pos, (batch_size,), start, length)
    window, window_mask = _windows(data, seq, t, config.context_length, config.pad_id)
    picked = jnp.stack([data[seq, t - o] for o in offsets], axis=1)
    partial = jnp.cumsum(picked, axis=1) % modulus
    bad = jax.random.bernoulli(k_bad, corrupt, (batch_size,))
    if len(offsets) > 1:
        first = jax.random.randint(k_from, (batch_size, 1), 1, len(offsets))
        shift = jax.random.randint(k_shift, (batch_size, 1), 1, modulus)
        wrong = (partial + shift * (jnp.arange(len(offsets)) >= first)) % modulus
        partial = jnp.where(bad[:, None], wrong, partial)
    # d_1, then (d_j, p_j) for j >= 2: each sum's operands sit next to it.
    steps = [picked[:, :1]]
    for j in range(1, len(offsets)):
        steps += [picked[:, j : j + 1], partial[:, j : j + 1]]
    thought = jnp.concatenate(steps, axis=1).astype(jnp.int32)
    target = data[seq, t]
    fill = lambda v: jnp.full((batch_size, 1), v, jnp.int32)  # noqa: E731
    tokens = jnp.concatenate(
        [
            window,
            fill(config.think_start),
            thought,
            fill(config.think_end),
            target[:, None].astype(jnp.int32),
        ],
        axis=1,
    )
    ones = jnp.ones((batch_size, thought.shape[1] + 3), jnp.int32)
    mask = jnp.concatenate([window_mask, ones], axis=1)
    thought_loss = ones.at[:, 0].set(0)
    only_target = jnp.zeros_like(ones).at[:, -1].set(1)
    thought_loss = jnp.where(bad[:, None], only_target, thought_loss)
    loss_mask = jnp.concatenate([jnp.zeros_like(window_mask), thought_loss], axis=1)
    return SFTBatch(tokens, mask, loss_mask)


# --- the program --------------------------------------------------------------


def _check_data(data, config: RLPConfig, model_config: LMConfig) -> None:
    shape = tuple(jnp.shape(data))
    if len(shape) != 2:
        raise ValueError(
            f"data must be a token stream of shape [num_sequences, T], got shape "
            f"{shape}"
        )
    if not jnp.issubdtype(jnp.asarray(data).dtype, jnp.integer):
        raise ValueError("data must hold integer token ids")
    if shape[0] < 1:
        raise ValueError("data holds no sequence")
    if shape[1] < config.min_context + 1:
        raise ValueError(
            f"data sequences have T = {shape[1]} tokens, shorter than a context of "
            f"min_context = {config.min_context} tokens plus its next token"
        )
    if not isinstance(data, jax.core.Tracer):
        values = np.asarray(data)
        if values.min() < 0 or values.max() >= model_config.vocab_size:
            raise ValueError(
                f"data holds ids in [{values.min()}, {values.max()}], outside the "
                f"model's vocabulary [0, {model_config.vocab_size})"
            )


def make_rlp(
    config: RLPConfig, model_config: LMConfig, hparams: RLPHParams | None = None
) -> RLP:
    """The RLP program of ``model_config`` (see the module docstring).

    Raises ``ValueError`` before compiling for a bad config (``G < 2``, think
    tokens outside the vocabulary or equal, a context plus thought longer than
    the model's positions, ...); ``run``/``step`` check the stream (``[N, T]``
    integer ids in the vocabulary, ``T > min_context``).
    """
    if not isinstance(config, RLPConfig):
        raise ValueError(f"config must be an RLPConfig, got {type(config).__name__}")
    if not isinstance(model_config, LMConfig):
        raise ValueError(
            f"model_config must be an LMConfig, got {type(model_config).__name__}"
        )
    config.validate(model_config)
    default_hparams = RLPHParams.create() if hparams is None else hparams
    B, G = config.batch_size, config.group_size
    W, N = config.context_length, config.max_thought_tokens
    moments = optax.scale_by_adam()

    def init(key: jax.Array, params) -> RLPState:
        check_params(model_config, params)
        return RLPState(
            params=params,
            ema_params=jax.tree.map(jnp.asarray, params),
            opt_state=moments.init(params),
            key=key,
            step=jnp.zeros((), jnp.int32),
        )

    def thought_logp(params, prompt, prompt_mask, completion, completion_mask, temp):
        """Thought-token log-probs at ``temp`` and ``x_t``'s at 1, ``[B, G, M]``."""
        rows = (B * G, completion.shape[-1])
        logits = _completion_logits(
            params,
            model_config,
            jnp.repeat(prompt, G, axis=0),
            jnp.repeat(prompt_mask, G, axis=0),
            completion.reshape(rows),
            completion_mask.reshape(rows),
        ).reshape(*completion.shape, -1)
        at_temp = _pick(jax.nn.log_softmax(logits / temp, axis=-1), completion)
        raw = jax.nn.log_softmax(logits, axis=-1)
        return at_temp, raw

    def rollout(state: RLPState, data, hparams=None):
        hp = default_hparams if hparams is None else hparams
        num, length = data.shape
        key = jax.random.fold_in(state.key, state.step)
        k_seq, k_pos, k_gen = jax.random.split(key, 3)
        seq = jax.random.randint(k_seq, (B,), 0, num)
        t = jax.random.randint(k_pos, (B,), config.min_context, length)
        target = data[seq, t].astype(jnp.int32)
        window, window_mask = _windows(data, seq, t, W, config.pad_id)
        window = window.astype(jnp.int32)
        prompt = jnp.concatenate(
            [window, jnp.full((B, 1), config.think_start, jnp.int32)], axis=1
        )
        prompt_mask = jnp.concatenate([window_mask, jnp.ones((B, 1), jnp.int32)], 1)
        sampler = jax.lax.stop_gradient(state.params)
        gen = generate(
            jax.random.split(k_gen, B),
            sampler,
            model_config,
            prompt,
            prompt_mask,
            max_new_tokens=N,
            num_samples=G,
            temperature=hp.temperature,
            stop_tokens=(config.think_end,),
            pad_id=config.pad_id,
        )
        # [B, G, N + 2]: the thought, think_end if the budget ran out, x_t.
        length_c = gen.mask.sum(-1)
        ended = jnp.any((gen.tokens == config.think_end) & (gen.mask > 0), axis=-1)
        where = jnp.arange(N + 2)
        tgt_index = length_c + jnp.where(ended, 0, 1)
        thought = jnp.pad(gen.tokens, ((0, 0), (0, 0), (0, 2)))
        completion = jnp.where(where < length_c[..., None], thought, config.pad_id)
        completion = jnp.where(
            (where == length_c[..., None]) & ~ended[..., None],
            config.think_end,
            completion,
        )
        completion = jnp.where(
            where == tgt_index[..., None], target[:, None, None], completion
        ).astype(jnp.int32)
        completion_mask = (where <= tgt_index[..., None]).astype(jnp.int32)
        thought_mask = (where < length_c[..., None]).astype(jnp.int32)
        old_logp, raw = thought_logp(
            sampler, prompt, prompt_mask, completion, completion_mask, hp.temperature
        )
        old_logp = jnp.where(thought_mask > 0, old_logp, 0.0)
        target_logp = _pick(raw, completion)  # [B, G, M]
        at_target = where == tgt_index[..., None]
        logp_think = jnp.sum(jnp.where(at_target, target_logp, 0.0), axis=-1)
        think_right = jnp.sum(
            jnp.where(at_target, jnp.argmax(raw, -1) == target[:, None, None], False),
            axis=-1,
        )

        # The no-think predictions: the EMA baseline's and theta's own.
        def nothink(p):
            logits, _ = forward(
                jax.lax.stop_gradient(p), model_config, window, window_mask
            )
            logp = jax.nn.log_softmax(logits[:, -1], axis=-1)
            return _pick(logp, target), jnp.argmax(logits[:, -1], -1) == target

        logp_ema, ema_right = nothink(state.ema_params)
        logp_nothink, _ = nothink(state.params)
        rewards = information_gain_reward(logp_think, logp_ema)
        advantages = leave_one_out_advantages(rewards)
        out = RLPRollout(
            prompt=prompt,
            prompt_mask=prompt_mask,
            completion=completion,
            completion_mask=completion_mask,
            thought_mask=thought_mask,
            old_logp=old_logp,
            target=target,
            logp_think=logp_think,
            logp_ema=logp_ema,
            rewards=rewards,
            advantages=advantages,
        )
        metrics = {
            "reward": rewards.mean(),
            "reward_std": rewards.std(axis=1).mean(),
            "logp_think": logp_think.mean(),
            "logp_ema": logp_ema.mean(),
            "logp_nothink": logp_nothink.mean(),
            "accuracy_think": think_right.astype(jnp.float32).mean(),
            "accuracy_ema": ema_right.astype(jnp.float32).mean(),
            "thought_length": length_c.astype(jnp.float32).mean(),
            "thought_ended": ended.astype(jnp.float32).mean(),
        }
        return out, metrics

    def loss(params, ro: RLPRollout, hparams=None):
        hp = default_hparams if hparams is None else hparams
        logp, _ = thought_logp(
            params,
            ro.prompt,
            ro.prompt_mask,
            ro.completion,
            ro.completion_mask,
            hp.temperature,
        )
        return rlp_surrogate(
            logp,
            ro.old_logp,
            ro.advantages,
            ro.thought_mask,
            hp.epsilon_low,
            hp.epsilon_high,
        )

    def step(state: RLPState, data, hparams=None):
        _check_data(data, config, model_config)
        hp = default_hparams if hparams is None else hparams
        ro, metrics = rollout(state, data, hp)

        def update(carry, _):
            params, ema, opt_state, count = carry
            (value, parts), grads = jax.value_and_grad(loss, has_aux=True)(
                params, ro, hp
            )
            params, opt_state, grad_norm, lr = adamw_update(
                moments, grads, opt_state, params, count, hp.optim
            )
            ema = ema_update(ema, params, hp.tau)
            out = {"loss": value, "grad_norm": grad_norm, "learning_rate": lr, **parts}
            return (params, ema, opt_state, count + 1), out

        count = state.step * config.num_updates
        (params, ema, opt_state, _), per_update = jax.lax.scan(
            update,
            (state.params, state.ema_params, state.opt_state, count),
            None,
            config.num_updates,
        )
        metrics = {**metrics, **jax.tree.map(jnp.mean, per_update)}
        state = state.replace(
            params=params, ema_params=ema, opt_state=opt_state, step=state.step + 1
        )
        return state, metrics

    def run(state: RLPState, data, hparams=None, num_steps: int = 1):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
            raise ValueError(f"run: num_steps must be an int, got {num_steps!r}")
        if num_steps < 0:
            raise ValueError(f"run: num_steps must be >= 0, got {num_steps}")
        _check_data(data, config, model_config)
        hp = default_hparams if hparams is None else hparams

        def body(s, _):
            return step(s, data, hp)

        return jax.lax.scan(body, state, None, int(num_steps))

    return RLP(
        config=config,
        model_config=model_config,
        default_hparams=default_hparams,
        init=init,
        step=step,
        run=run,
        rollout=rollout,
        loss=loss,
    )
