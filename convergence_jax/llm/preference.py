"""Preference optimization: the DPO family, SimPO and ORPO on sequence
log-probs, and a compiled program that trains a policy on (prompt, chosen,
rejected) pairs against a frozen reference.

    from convergence_jax import lm, llm

    config = llm.AdditionWarmup().model_config()     # 2 layers, width 64, bytes
    task = llm.tasks.reverse(4, lm.ByteTokenizer())
    data = llm.synthetic_preferences(task, num_pairs=16384, seed=0, held_out=512)
    hparams = llm.PreferenceHParams.create(learning_rate=3e-3, beta=1.0)
    pref = llm.make_preference(config, "dpo", batch_size=32, hparams=hparams)
    keys = jnp.stack([jax.random.key(seed) for seed in range(3)])
    state = jax.vmap(pref.init)(keys)                 # reference = initial policy
    state, metrics = jax.jit(jax.vmap(
        lambda s: pref.run(s, data.train, num_steps=1000)))(state)
    scores = jax.vmap(lambda s: pref.evaluate(s, data.held_out))(state)
    scores["win_rate"]                                # [3]

**The losses** are pure functions of per-pair sequence log-probs ``[B]`` (one
entry per (prompt, chosen, rejected) triple) and return the per-pair loss ``[B]``;
the batch loss is its mean, as in TRL's ``DPOTrainer`` / ``CPOTrainer`` and
Tunix's ``dpo_loss_fn``. Notation: ``pi_w``, ``pi_l`` the policy's log-probs of
the chosen (winning) and rejected (losing) completion given the prompt, ``ref_w``,
``ref_l`` the reference's, ``avg_*`` the same divided by the completion's length
(the mean per-token log-prob), and

    delta = (pi_w - ref_w) - (pi_l - ref_l)

the DPO margin. ``sequence_logprobs`` computes ``pi`` and ``avg`` from a model
(via `convergence_jax.lm.completion_logprobs`); `PREFERENCE_LOSSES` names every
loss and `preference_loss` dispatches by name with the batch metrics TRL logs
(``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``; here with ``_``
instead of ``/``).

Parameters (``beta``, ``label_smoothing``, ...) may be traced; when concrete they
are validated (``ValueError`` naming the parameter). Shapes are checked with
chex before anything is computed (``ValueError`` naming the loss and the array).

**The program** `make_preference` returns ``(init, step, run, evaluate, loss)``
in the style of `make_sft`: a `PreferenceState` holds the policy's parameters, the
frozen reference's parameters (never differentiated: `jax.lax.stop_gradient`,
and not in the optimizer), Adam's moments, the batch key and the step count;
every number (step size, schedule, clipping, ``beta``, ``gamma``, smoothing,
ORPO's ``lambda``) lives in `PreferenceHParams`, traced, so a `jax.vmap` over
seeds and over hyperparameters compiles once. ``run`` is a `lax.scan` of ``step``
over minibatches drawn (without replacement within a step) from a training set.

**The data** `synthetic_preferences` builds a preference set from any JAX-scored
`llm.tasks` task, in process: the chosen completion is the task's reference answer
(with its stop token), the rejected one the same answer with one answer token
replaced by a different token of the answer alphabet (so chosen and rejected have
the same length and differ at one position). Prompts are deduplicated and split
into disjoint train and held-out sets (no held-out prompt is ever trained on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from convergence_jax.llm.sft import SFTHParams, adamw_update
from convergence_jax.llm.tasks import Task
from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.generate import completion_logprobs
from convergence_jax.lm.model import KVCache, Transformer, check_params, init_params

__all__ = [
    "ORPO_LOGP_CAP",
    "PREFERENCE_LOSSES",
    "REFERENCE_FREE",
    "PairLogProbs",
    "Preference",
    "PreferenceBatch",
    "PreferenceHParams",
    "PreferenceSplit",
    "PreferenceState",
    "SequenceLogProbs",
    "cdpo_loss",
    "dpo_loss",
    "ipo_loss",
    "make_preference",
    "orpo_loss",
    "pair_logprobs",
    "preference_loss",
    "robust_dpo_loss",
    "sequence_logprobs",
    "simpo_loss",
    "synthetic_preferences",
]


# --- checks -----------------------------------------------------------------


def _check_pairs(loss: str, **arrays) -> None:
    """Every array must be ``[B]`` with the same ``B`` (chex), as a ValueError."""
    try:
        chex.assert_rank(list(arrays.values()), 1)
        chex.assert_equal_shape(list(arrays.values()))
    except AssertionError as error:
        shapes = ", ".join(f"{k} {tuple(jnp.shape(v))}" for k, v in arrays.items())
        raise ValueError(
            f"{loss}: expected per-pair sequence log-probs, all of shape [B]; got "
            f"{shapes}"
        ) from error


def _check_number(
    loss: str, name: str, value, low=None, high=None, low_open=False, high_open=False
) -> None:
    """Validate a concrete scalar parameter (traced values pass through)."""
    if isinstance(value, jax.core.Tracer):
        return
    v = np.asarray(value, np.float64)
    bad = not np.all(np.isfinite(v))
    if low is not None:
        bad |= bool(np.any(v <= low) if low_open else np.any(v < low))
    if high is not None:
        bad |= bool(np.any(v >= high) if high_open else np.any(v > high))
    if bad:
        if low is not None and high is not None:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            where = f" in {left}{low}, {high}{right}"
        elif low is not None:
            where = f" {'>' if low_open else '>='} {low}"
        else:
            where = ""
        raise ValueError(f"{loss}: {name} must be finite{where}, got {value!r}")


def _margin(pi_w, pi_l, ref_w, ref_l):
    return (pi_w - ref_w) - (pi_l - ref_l)


# --- the losses ---------------------------------------------------------------


def dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.1) -> jax.Array:
    """DPO with the sigmoid (Bradley-Terry) loss, per pair ``[B]``.

        loss = -log sigmoid(beta * delta),
        delta = (pi_w - ref_w) - (pi_l - ref_l)

    Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model
    is Secretly a Reward Model" (Eq. 7). Inputs: summed completion log-probs
    ``[B]`` (TRL's ``loss_type="sigmoid"``, Tunix's ``algorithm="dpo"`` with
    ``label_smoothing=0``). When policy equals reference, ``delta = 0`` and the
    loss is ``log 2`` (TRL's step-1 invariant). ``beta > 0``.
    """
    _check_pairs("dpo_loss", pi_w=pi_w, pi_l=pi_l, ref_w=ref_w, ref_l=ref_l)
    _check_number("dpo_loss", "beta", beta, low=0.0, low_open=True)
    return -jax.nn.log_sigmoid(beta * _margin(pi_w, pi_l, ref_w, ref_l))


def cdpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.1, label_smoothing=0.0) -> jax.Array:
    """Conservative DPO (label-smoothed), per pair ``[B]``.

        loss = -(1 - eps) * log sigmoid(beta * delta)
               - eps * log sigmoid(-beta * delta)

    The DPO loss when each preference label is flipped with probability ``eps``
    (Mitchell, 2023, "A note on DPO with noisy preferences & relationship to
    IPO"): Tunix's ``dpo_loss_fn`` with ``label_smoothing`` and TRL's
    ``"sigmoid"`` before it dropped smoothing. ``eps = 0`` is `dpo_loss`; at
    ``eps = 0.5`` the loss no longer depends on which answer was chosen.
    ``beta > 0``, ``eps`` in ``[0, 1]``.
    """
    _check_pairs("cdpo_loss", pi_w=pi_w, pi_l=pi_l, ref_w=ref_w, ref_l=ref_l)
    _check_number("cdpo_loss", "beta", beta, low=0.0, low_open=True)
    _check_number("cdpo_loss", "label_smoothing", label_smoothing, 0.0, 1.0)
    logits = beta * _margin(pi_w, pi_l, ref_w, ref_l)
    eps = label_smoothing
    return -(1.0 - eps) * jax.nn.log_sigmoid(logits) - eps * jax.nn.log_sigmoid(-logits)


def robust_dpo_loss(
    pi_w, pi_l, ref_w, ref_l, beta=0.1, label_smoothing=0.0
) -> jax.Array:
    """Robust DPO (rDPO), per pair ``[B]``.

        loss = (-(1 - eps) * log sigmoid(beta * delta)
                + eps * log sigmoid(-beta * delta)) / (1 - 2 * eps)

    An unbiased estimate of the clean-label DPO loss when labels are flipped
    with probability ``eps`` (Chowdhury et al., 2024, "Provably Robust DPO:
    Aligning Language Models with Noisy Feedback", Eq. 9): TRL's
    ``loss_type="robust"`` (``label_smoothing = eps``). Unlike `cdpo_loss` the
    flipped term enters with a *plus* sign and the whole is rescaled, so the
    loss can be negative. ``eps = 0`` is `dpo_loss`. ``beta > 0``, ``eps`` in
    ``[0, 0.5)``.
    """
    _check_pairs("robust_dpo_loss", pi_w=pi_w, pi_l=pi_l, ref_w=ref_w, ref_l=ref_l)
    _check_number("robust_dpo_loss", "beta", beta, low=0.0, low_open=True)
    _check_number(
        "robust_dpo_loss",
        "label_smoothing",
        label_smoothing,
        0.0,
        0.5,
        high_open=True,
    )
    logits = beta * _margin(pi_w, pi_l, ref_w, ref_l)
    eps = label_smoothing
    return (
        -(1.0 - eps) * jax.nn.log_sigmoid(logits) + eps * jax.nn.log_sigmoid(-logits)
    ) / (1.0 - 2.0 * eps)


def ipo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.1) -> jax.Array:
    """IPO, per pair ``[B]``.

        loss = (delta - 1 / (2 * beta))**2

    Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning
    from Human Preferences" (Eq. 17, with ``tau = beta``): a squared loss that
    drives the margin to ``1 / (2 beta)`` instead of to infinity. With summed
    log-probs this is the paper's form; TRL's ``loss_type="ipo"`` divides each
    log-ratio by its completion's length ("confirmed with the IPO authors"), which
    is this function on *mean* per-token log-probs (``avg_w``, ``avg_l`` and the
    reference's): the `preference_loss` ``"ipo"`` entry does that. ``beta > 0``.
    """
    _check_pairs("ipo_loss", pi_w=pi_w, pi_l=pi_l, ref_w=ref_w, ref_l=ref_l)
    _check_number("ipo_loss", "beta", beta, low=0.0, low_open=True)
    return (_margin(pi_w, pi_l, ref_w, ref_l) - 1.0 / (2.0 * beta)) ** 2


def simpo_loss(avg_w, avg_l, beta=2.0, gamma=1.0) -> jax.Array:
    """SimPO, per pair ``[B]``; reference-free.

        loss = -log sigmoid(beta * (avg_w - avg_l) - gamma)

    ``avg_*``: *mean* per-token log-probs of the completion (length-normalized),
    the implicit reward ``beta * avg``; ``gamma`` the target reward margin. Meng
    et al., 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward" (Eq. 6). TRL: ``CPOTrainer(loss_type="simpo", cpo_alpha=0)``, which
    computes ``beta * (avg_w - avg_l - gamma / beta)``: the same value (TRL's
    ``simpo_gamma`` is this ``gamma``). The paper's recipe is ``beta = 2.5``,
    ``gamma = 1.375``; SAO uses ``beta = 10``, ``gamma = 3``. ``beta > 0``,
    ``gamma`` finite.
    """
    _check_pairs("simpo_loss", avg_w=avg_w, avg_l=avg_l)
    _check_number("simpo_loss", "beta", beta, low=0.0, low_open=True)
    _check_number("simpo_loss", "gamma", gamma)
    return -jax.nn.log_sigmoid(beta * (avg_w - avg_l) - gamma)


ORPO_LOGP_CAP = -1e-7
"""`orpo_loss` caps mean log-probs here: ``log(1 - p)`` is ``-inf`` at ``p = 1``
(Tunix caps at the same value)."""


def orpo_loss(avg_w, avg_l, orpo_lambda=0.1) -> tuple[jax.Array, dict]:
    """ORPO, per pair ``[B]``; reference-free. Returns ``(loss, parts)``.

        log_odds(y) = avg(y) - log(1 - exp(avg(y)))
        or_term     = -log sigmoid(log_odds(y_w) - log_odds(y_l))
        loss        = -avg_w + lambda * or_term

    Hong et al., 2024, "ORPO: Monolithic Preference Optimization without
    Reference Model" (Eq. 6-7): the odds of a completion are taken on its
    length-normalized probability ``exp(avg)``; the first term is the NLL of the
    chosen completion (here its mean per-token NLL, as with Tunix's
    ``average_log_prob_orpo``; TRL's ``ORPOTrainer`` and Tunix average the NLL over
    every chosen token of the batch instead, the same when lengths are equal).
    TRL's ``beta`` and Tunix's ``lambda_orpo`` (default 0.1) are ``lambda``. Mean
    log-probs are capped at `ORPO_LOGP_CAP`; ``log(1 - exp(avg))`` is computed as
    ``log(-expm1(avg))``, accurate in float32 near the cap. ``parts``: ``nll`` and
    ``log_odds_ratio`` (``[B]``). ``lambda >= 0``.
    """
    _check_pairs("orpo_loss", avg_w=avg_w, avg_l=avg_l)
    _check_number("orpo_loss", "orpo_lambda", orpo_lambda, low=0.0)
    cap_w = jnp.minimum(avg_w, ORPO_LOGP_CAP)
    cap_l = jnp.minimum(avg_l, ORPO_LOGP_CAP)
    # log(1 - e^x) as log(-expm1(x)): exact near x = 0, where 1 - e^x rounds.
    log_odds = (cap_w - cap_l) - (
        jnp.log(-jnp.expm1(cap_w)) - jnp.log(-jnp.expm1(cap_l))
    )
    nll = -avg_w
    loss = nll - orpo_lambda * jax.nn.log_sigmoid(log_odds)
    return loss, {"nll": nll, "log_odds_ratio": log_odds}


# --- sequence log-probs from a model -------------------------------------------


class SequenceLogProbs(NamedTuple):
    """Per-sequence log-probs of completions ``[B]``: ``summed`` (sum over the
    completion's tokens), ``mean`` (``summed / length``, 0 for an empty one) and
    ``length`` (tokens counted, float32)."""

    summed: jax.Array
    mean: jax.Array
    length: jax.Array


def sequence_logprobs(
    params,
    config: LMConfig,
    prompt_tokens,
    prompt_mask,
    completions,
    completion_mask,
) -> SequenceLogProbs:
    """Summed and mean log-probs of each completion given its prompt.

    ``prompt_tokens``/``prompt_mask``: ``[B, P]`` left-padded; ``completions``/
    ``completion_mask``: ``[B, N]`` right-padded (1 on the completion's tokens,
    the stop token included). One teacher-forced pass of
    `convergence_jax.lm.completion_logprobs`:

        summed_b = sum_t m_bt log p(y_bt | x_b, y_b<t),   mean_b = summed_b / sum_t m_bt

    (TRL's ``logps = per_token_logps.sum(1)``; its CPO / SimPO
    ``average_log_prob``). Differentiable in ``params``.
    """
    chex.assert_rank([prompt_tokens, prompt_mask, completions, completion_mask], 2)
    chex.assert_equal_shape([prompt_tokens, prompt_mask])
    chex.assert_equal_shape([completions, completion_mask])
    chex.assert_equal_shape_prefix([prompt_tokens, completions], 1)
    logp = completion_logprobs(
        params, config, prompt_tokens, prompt_mask, completions, completion_mask
    )
    weight = (completion_mask > 0).astype(jnp.float32)
    summed = (logp * weight).sum(-1)
    length = weight.sum(-1)
    return SequenceLogProbs(summed, summed / jnp.maximum(length, 1.0), length)


class PreferenceBatch(NamedTuple):
    """Preference pairs: ``prompt_tokens``/``prompt_mask`` ``[B, P]``
    left-padded; ``chosen``/``chosen_mask`` ``[B, N]`` and ``rejected``/
    ``rejected_mask`` ``[B, M]`` right-padded (the stop token included in the
    mask)."""

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    chosen: jax.Array
    chosen_mask: jax.Array
    rejected: jax.Array
    rejected_mask: jax.Array


class PairLogProbs(NamedTuple):
    """The policy's and the reference's `SequenceLogProbs` of the chosen and the
    rejected completions (``ref_*`` may be None for a reference-free loss)."""

    chosen: SequenceLogProbs
    rejected: SequenceLogProbs
    ref_chosen: SequenceLogProbs | None
    ref_rejected: SequenceLogProbs | None


def _pad_to(x, width: int):
    return jnp.pad(x, ((0, 0), (0, width - x.shape[1])))


def _both_logprobs(params, config, batch: PreferenceBatch):
    """Chosen and rejected `SequenceLogProbs`, the prompt computed once.

    One pass of the prompt ``[B, P]`` into a key/value cache, then one pass of
    chosen and rejected together ``[2B, N]`` (right-padded to the longer) on two
    copies of that cache: the same logits as `sequence_logprobs` on ``[prompt,
    completion]`` for each (same positions, same keys, same causal and padding
    masks), but the prompt's layers run on ``B`` rows instead of ``2B`` (the
    concatenated forward of TRL and Tunix runs them twice). Differentiable in
    ``params`` through the cache. Token ``t`` of a completion is predicted from
    the last prompt position (``t = 0``, shared by both) or from completion
    position ``t - 1``; the output head runs only there."""
    width = max(batch.chosen.shape[1], batch.rejected.shape[1])
    rows, prompt_len = batch.prompt_tokens.shape
    completions = jnp.concatenate(
        [_pad_to(batch.chosen, width), _pad_to(batch.rejected, width)]
    )
    mask = jnp.concatenate(
        [_pad_to(batch.chosen_mask, width), _pad_to(batch.rejected_mask, width)]
    )
    trunk = Transformer(config, output_hidden=True)
    dtype = config.compute_dtype
    shape = (config.num_layers, rows, prompt_len + width, config.num_kv_heads)
    cache = KVCache(
        k=jnp.zeros((*shape, config.head_dim), dtype),
        v=jnp.zeros((*shape, config.head_dim), dtype),
        mask=jnp.zeros((rows, prompt_len + width), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )
    prompt_hidden, cache = trunk.apply(
        {"params": params}, batch.prompt_tokens, batch.prompt_mask, cache=cache
    )
    twice = lambda x, axis: jnp.concatenate([x, x], axis=axis)  # noqa: E731
    cache = KVCache(
        twice(cache.k, 1), twice(cache.v, 1), twice(cache.mask, 0), cache.index
    )
    hidden, _ = trunk.apply({"params": params}, completions, mask, cache=cache)
    hidden = jnp.concatenate(
        [twice(prompt_hidden[:, -1:], 0), hidden[:, :-1]], axis=1
    ).astype(dtype)
    if config.tie_word_embeddings:
        head = params["embed"]["embedding"].T
    else:
        head = params["lm_head"]["kernel"]
    logits = jnp.dot(hidden, head.astype(dtype)).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, completions[..., None], axis=-1)[..., 0]
    weight = (mask > 0).astype(jnp.float32)
    summed = (picked * weight).sum(-1)
    length = weight.sum(-1)
    out = SequenceLogProbs(summed, summed / jnp.maximum(length, 1.0), length)
    first = SequenceLogProbs(*(x[:rows] for x in out))
    second = SequenceLogProbs(*(x[rows:] for x in out))
    return first, second


def _check_batch(batch: PreferenceBatch) -> None:
    if not isinstance(batch, PreferenceBatch):
        raise ValueError(f"expected a PreferenceBatch, got {type(batch).__name__}")
    for name, array in batch._asdict().items():
        if jnp.ndim(array) != 2:
            raise ValueError(
                f"PreferenceBatch.{name} must be [B, length], got shape "
                f"{tuple(jnp.shape(array))}"
            )
    rows = {name: jnp.shape(a)[0] for name, a in batch._asdict().items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"PreferenceBatch fields disagree on B: {rows}")
    for tokens, mask in (
        ("prompt_tokens", "prompt_mask"),
        ("chosen", "chosen_mask"),
        ("rejected", "rejected_mask"),
    ):
        a, b = getattr(batch, tokens), getattr(batch, mask)
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(
                f"PreferenceBatch.{mask} has shape {tuple(jnp.shape(b))}, expected "
                f"{tuple(jnp.shape(a))} (the shape of {tokens})"
            )


def pair_logprobs(
    params, ref_params, config: LMConfig, batch: PreferenceBatch
) -> PairLogProbs:
    """`PairLogProbs` of ``batch`` under the policy ``params`` and the reference
    ``ref_params`` (None: no reference terms). The reference is under
    `jax.lax.stop_gradient`: no gradient reaches it."""
    _check_batch(batch)
    chosen, rejected = _both_logprobs(params, config, batch)
    if ref_params is None:
        return PairLogProbs(chosen, rejected, None, None)
    ref_chosen, ref_rejected = _both_logprobs(
        jax.lax.stop_gradient(ref_params), config, batch
    )
    ref_chosen = SequenceLogProbs(*map(jax.lax.stop_gradient, ref_chosen))
    ref_rejected = SequenceLogProbs(*map(jax.lax.stop_gradient, ref_rejected))
    return PairLogProbs(chosen, rejected, ref_chosen, ref_rejected)


# --- the registry ----------------------------------------------------------------


@struct.dataclass
class PreferenceHParams:
    """The numbers of a preference run; scalars (or batched, under ``vmap``)."""

    optim: SFTHParams
    """AdamW step size, schedule, weight decay and clipping (as `make_sft`)."""
    beta: jax.Array
    """DPO / IPO / cDPO / robust: the KL strength; SimPO: the reward scale."""
    gamma: jax.Array
    """SimPO's target margin."""
    label_smoothing: jax.Array
    """cDPO / robust: the label-flip probability ``eps``."""
    orpo_lambda: jax.Array
    """ORPO's weight of the odds-ratio term."""

    @classmethod
    def create(
        cls,
        learning_rate: float = 1e-3,
        beta: float = 0.1,
        gamma: float = 1.0,
        label_smoothing: float = 0.0,
        orpo_lambda: float = 0.1,
        weight_decay: float = 0.0,
        warmup_steps: float = 0,
        decay_steps: float = 0,
        final_lr_fraction: float = 0.1,
        max_grad_norm: float = 1.0,
    ) -> PreferenceHParams:
        """Scalar hyperparameters (float32), validated when concrete."""
        optim = SFTHParams.create(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            decay_steps=decay_steps,
            final_lr_fraction=final_lr_fraction,
            max_grad_norm=max_grad_norm,
        )
        name = "PreferenceHParams"
        _check_number(name, "beta", beta, low=0.0, low_open=True)
        _check_number(name, "gamma", gamma)
        _check_number(name, "label_smoothing", label_smoothing, 0.0, 1.0)
        _check_number(name, "orpo_lambda", orpo_lambda, low=0.0)
        f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return cls(
            optim=optim,
            beta=f32(beta),
            gamma=f32(gamma),
            label_smoothing=f32(label_smoothing),
            orpo_lambda=f32(orpo_lambda),
        )


def _dpo_family(fn, per_token: bool = False):
    def loss(logps: PairLogProbs, hp: PreferenceHParams, **extra):
        field = "mean" if per_token else "summed"
        args = [
            getattr(s, field)
            for s in (
                logps.chosen,
                logps.rejected,
                logps.ref_chosen,
                logps.ref_rejected,
            )
        ]
        value = fn(*args, hp.beta, **extra)
        chosen_reward = hp.beta * (logps.chosen.summed - logps.ref_chosen.summed)
        rejected_reward = hp.beta * (logps.rejected.summed - logps.ref_rejected.summed)
        return value, chosen_reward, rejected_reward, {}

    return loss


def _dpo(logps, hp):
    return _dpo_family(dpo_loss)(logps, hp)


def _ipo(logps, hp):
    return _dpo_family(ipo_loss, per_token=True)(logps, hp)


def _cdpo(logps, hp):
    return _dpo_family(cdpo_loss)(logps, hp, label_smoothing=hp.label_smoothing)


def _robust(logps, hp):
    return _dpo_family(robust_dpo_loss)(logps, hp, label_smoothing=hp.label_smoothing)


def _simpo(logps, hp):
    value = simpo_loss(logps.chosen.mean, logps.rejected.mean, hp.beta, hp.gamma)
    return value, hp.beta * logps.chosen.mean, hp.beta * logps.rejected.mean, {}


def _orpo(logps, hp):
    value, parts = orpo_loss(logps.chosen.mean, logps.rejected.mean, hp.orpo_lambda)
    # TRL's ORPOTrainer logs rewards = beta * mean log-prob (its beta is lambda).
    chosen_reward = hp.orpo_lambda * logps.chosen.mean
    rejected_reward = hp.orpo_lambda * logps.rejected.mean
    extra = {
        "nll_loss": parts["nll"].mean(),
        "log_odds_ratio": parts["log_odds_ratio"].mean(),
    }
    return value, chosen_reward, rejected_reward, extra


PREFERENCE_LOSSES: dict[str, Callable] = {
    "dpo": _dpo,
    "ipo": _ipo,
    "cdpo": _cdpo,
    "robust": _robust,
    "simpo": _simpo,
    "orpo": _orpo,
}
"""Name -> ``fn(logps: PairLogProbs, hparams) -> (per-pair loss, chosen reward,
rejected reward, extra metrics)``. ``dpo``: `dpo_loss` (summed log-probs);
``ipo``: `ipo_loss` on mean per-token log-probs (TRL's); ``cdpo``: `cdpo_loss`;
``robust``: `robust_dpo_loss`; ``simpo``: `simpo_loss`; ``orpo``: `orpo_loss`."""

REFERENCE_FREE = frozenset({"simpo", "orpo"})
"""Losses that never read the reference (the program skips its forward pass)."""


def preference_loss(
    name: str, logps: PairLogProbs, hparams: PreferenceHParams
) -> tuple[jax.Array, dict]:
    """The batch loss of `PREFERENCE_LOSSES` ``[name]`` (the mean over pairs) and
    the metrics TRL logs: ``rewards_chosen``, ``rewards_rejected`` (the loss's
    implicit rewards: ``beta * (pi - ref)`` for the DPO family on summed
    log-probs, ``beta * avg`` for SimPO, ``lambda * avg`` for ORPO),
    ``rewards_margins``, ``rewards_accuracies`` (the fraction of pairs whose
    chosen reward is strictly higher), ``logps_chosen``, ``logps_rejected``
    (summed, policy), plus ORPO's ``nll_loss`` and ``log_odds_ratio``."""
    if name not in PREFERENCE_LOSSES:
        raise ValueError(
            f"unknown preference loss {name!r}; expected one of "
            f"{sorted(PREFERENCE_LOSSES)}"
        )
    if name not in REFERENCE_FREE and (
        logps.ref_chosen is None or logps.ref_rejected is None
    ):
        raise ValueError(f"preference loss {name!r} needs the reference log-probs")
    per_pair, chosen_reward, rejected_reward, extra = PREFERENCE_LOSSES[name](
        logps, hparams
    )
    metrics = {
        "rewards_chosen": chosen_reward.mean(),
        "rewards_rejected": rejected_reward.mean(),
        "rewards_margins": (chosen_reward - rejected_reward).mean(),
        "rewards_accuracies": (chosen_reward > rejected_reward).mean(),
        "logps_chosen": logps.chosen.summed.mean(),
        "logps_rejected": logps.rejected.summed.mean(),
        **extra,
    }
    return per_pair.mean(), metrics


# --- the program ---------------------------------------------------------------


@struct.dataclass
class PreferenceState:
    """Everything a preference run needs to continue."""

    params: Any
    """The policy (trained)."""
    ref_params: Any
    """The frozen reference (never updated, never differentiated)."""
    opt_state: Any
    key: jax.Array
    """Typed key of the minibatch stream; update ``i`` draws from
    ``fold_in(key, i)``."""
    step: jax.Array
    """Updates done so far (int32)."""


class Preference(NamedTuple):
    """The pure functions of a preference run (see the module docstring)."""

    model_config: LMConfig
    loss_name: str
    batch_size: int
    default_hparams: PreferenceHParams
    init: Callable[..., PreferenceState]
    """``init(key, params=None, ref_params=None) -> PreferenceState``: random
    ``params`` when None; the reference defaults to ``params`` (policy =
    reference at step 0, so DPO's first loss is ``log 2``)."""
    step: Callable[..., tuple[PreferenceState, dict]]
    """``step(state, batch, hparams=None) -> (state, metrics)``: one AdamW update
    on the `PreferenceBatch` ``batch``."""
    run: Callable[..., tuple[PreferenceState, dict]]
    """``run(state, data, hparams=None, num_steps=...) -> (state, metrics
    [num_steps])``: ``num_steps`` (static) updates as one `lax.scan`, each on
    ``batch_size`` pairs of ``data`` drawn without replacement from
    ``fold_in(state.key, state.step)``."""
    evaluate: Callable[..., dict]
    """``evaluate(state, data) -> dict`` of float32 scalars over every pair of
    ``data`` (one pass): ``win_rate`` (the policy's summed log-prob of the chosen
    completion strictly above the rejected one's), ``mean_win_rate`` (the same on
    mean per-token log-probs), ``reward_accuracy`` (the loss's implicit reward
    strictly higher for the chosen), ``reward_margin`` and ``loss``."""
    loss: Callable[..., tuple[jax.Array, dict]]
    """``loss(params, ref_params, batch, hparams) -> (loss, metrics)``."""


def make_preference(
    model_config: LMConfig,
    loss: str = "dpo",
    *,
    batch_size: int,
    hparams: PreferenceHParams | None = None,
) -> Preference:
    """The preference program of ``model_config`` with the loss ``loss`` (a
    `PREFERENCE_LOSSES` name, static) on minibatches of ``batch_size`` pairs.

    Raises ``ValueError`` before compiling for an unknown loss or a
    ``batch_size`` < 1.
    """
    if not isinstance(model_config, LMConfig):
        raise ValueError(
            f"model_config must be an LMConfig, got {type(model_config).__name__}"
        )
    if loss not in PREFERENCE_LOSSES:
        raise ValueError(
            f"unknown preference loss {loss!r}; expected one of "
            f"{sorted(PREFERENCE_LOSSES)}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size must be an int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    default_hparams = PreferenceHParams.create() if hparams is None else hparams
    uses_reference = loss not in REFERENCE_FREE
    moments = optax.scale_by_adam()

    def loss_fn(params, ref_params, batch: PreferenceBatch, hp: PreferenceHParams):
        logps = pair_logprobs(
            params, ref_params if uses_reference else None, model_config, batch
        )
        return preference_loss(loss, logps, hp)

    def init(key: jax.Array, params=None, ref_params=None) -> PreferenceState:
        k_params, k_data = jax.random.split(key)
        if params is None:
            params = init_params(k_params, model_config)
        else:
            check_params(model_config, params)
        if ref_params is None:
            ref_params = params
        else:
            check_params(model_config, ref_params)
        return PreferenceState(
            params=params,
            ref_params=ref_params,
            opt_state=moments.init(params),
            key=k_data,
            step=jnp.zeros((), jnp.int32),
        )

    def step(state: PreferenceState, batch: PreferenceBatch, hparams=None):
        hp = default_hparams if hparams is None else hparams
        (value, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.ref_params, batch, hp
        )
        params, opt_state, grad_norm, lr = adamw_update(
            moments, grads, state.opt_state, state.params, state.step, hp.optim
        )
        metrics = {
            **metrics,
            "loss": value,
            "grad_norm": grad_norm,
            "learning_rate": lr,
        }
        state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return state, metrics

    def minibatch(key, data: PreferenceBatch) -> PreferenceBatch:
        size = data.prompt_tokens.shape[0]
        index = jax.random.choice(key, size, (batch_size,), replace=False)
        return PreferenceBatch(*(x[index] for x in data))

    def run(
        state: PreferenceState, data: PreferenceBatch, hparams=None, num_steps: int = 1
    ):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
            raise ValueError(f"run: num_steps must be an int, got {num_steps!r}")
        if num_steps < 0:
            raise ValueError(f"run: num_steps must be >= 0, got {num_steps}")
        _check_batch(data)
        if data.prompt_tokens.shape[0] < batch_size:
            raise ValueError(
                f"run: data has {data.prompt_tokens.shape[0]} pairs, fewer than "
                f"batch_size {batch_size}"
            )
        hp = default_hparams if hparams is None else hparams

        def body(s, _):
            batch = minibatch(jax.random.fold_in(s.key, s.step), data)
            return step(s, batch, hp)

        return jax.lax.scan(body, state, None, int(num_steps))

    def evaluate(state: PreferenceState, data: PreferenceBatch, hparams=None):
        hp = default_hparams if hparams is None else hparams
        logps = pair_logprobs(
            state.params,
            state.ref_params if uses_reference else None,
            model_config,
            data,
        )
        value, metrics = preference_loss(loss, logps, hp)
        return {
            "win_rate": (logps.chosen.summed > logps.rejected.summed).mean(),
            "mean_win_rate": (logps.chosen.mean > logps.rejected.mean).mean(),
            "reward_accuracy": metrics["rewards_accuracies"],
            "reward_margin": metrics["rewards_margins"],
            "loss": value,
        }

    return Preference(
        model_config=model_config,
        loss_name=loss,
        batch_size=batch_size,
        default_hparams=default_hparams,
        init=init,
        step=step,
        run=run,
        evaluate=evaluate,
        loss=loss_fn,
    )


# --- a synthetic preference set -------------------------------------------------


class PreferenceSplit(NamedTuple):
    """Disjoint train and held-out `PreferenceBatch` es (no prompt in both)."""

    train: PreferenceBatch
    held_out: PreferenceBatch


def synthetic_preferences(
    task: Task,
    num_pairs: int,
    seed: int = 0,
    *,
    held_out: int | float = 0.2,
    corrupt_tokens=None,
) -> PreferenceSplit:
    """A preference set from ``task`` (host side, numpy; see the module
    docstring): prompts from ``task.sample``, chosen = the reference answer,
    rejected = the answer with one non-stop answer token (uniform position)
    replaced by a different token drawn uniformly from ``corrupt_tokens``
    (default: every token that occurs in the sampled answers, stop tokens
    excluded).

    Draws ``2 * num_pairs`` problems from ``jax.random.key(seed)``, keeps the
    first ``num_pairs`` distinct prompts, and puts ``held_out`` of them (a
    count, or a fraction in (0, 1)) in the held-out split. Raises ``ValueError``
    if the task cannot give ``num_pairs`` distinct prompts that way, or for a
    host-only task.
    """
    if not isinstance(task, Task):
        raise ValueError(f"task must be an llm.tasks Task, got {type(task).__name__}")
    if task.host_only:
        raise ValueError(f"task {task.name!r} is host_only; needs a JAX-scored task")
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, int | np.integer):
        raise ValueError(f"num_pairs must be an int, got {num_pairs!r}")
    if num_pairs < 2:
        raise ValueError(f"num_pairs must be >= 2, got {num_pairs}")
    if isinstance(held_out, float) and not isinstance(held_out, bool):
        if not 0.0 < held_out < 1.0:
            raise ValueError(
                f"held_out as a fraction must be in (0, 1), got {held_out}"
            )
        num_held = max(1, int(round(held_out * num_pairs)))
    else:
        num_held = int(held_out)
    if not 1 <= num_held < num_pairs:
        raise ValueError(
            f"held_out must leave at least one pair on each side, got {held_out!r} "
            f"of {num_pairs}"
        )
    key = jax.random.key(int(seed))
    k_sample, k_corrupt = jax.random.split(key)
    batch = task.sample(k_sample, 2 * int(num_pairs))
    prompts = np.asarray(batch.prompt_tokens)
    prompt_mask = np.asarray(batch.prompt_mask)
    answers = np.asarray(batch.answer_tokens)
    answer_mask = np.asarray(batch.answer_mask)
    # Distinct prompts, in draw order.
    rows = np.where(prompt_mask > 0, prompts, -1)
    _, first = np.unique(rows, axis=0, return_index=True)
    order = np.sort(first)
    if order.size < num_pairs:
        raise ValueError(
            f"task {task.name!r} gave {order.size} distinct prompts in "
            f"{2 * num_pairs} draws, fewer than num_pairs {num_pairs}"
        )
    keep = order[:num_pairs]
    prompts, prompt_mask = prompts[keep], prompt_mask[keep]
    answers, answer_mask = answers[keep], answer_mask[keep]
    stop = np.isin(answers, np.asarray(task.stop_tokens))
    corruptible = (answer_mask > 0) & ~stop
    if corrupt_tokens is None:
        corrupt_tokens = np.unique(answers[corruptible])
    corrupt_tokens = np.asarray(corrupt_tokens, np.int32).reshape(-1)
    if corrupt_tokens.size < 2:
        raise ValueError(
            f"corrupt_tokens must hold at least 2 distinct tokens, got {corrupt_tokens}"
        )
    if not np.all(corruptible.sum(-1) >= 1):
        raise ValueError(f"task {task.name!r} has an answer with no token to corrupt")
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_corrupt)).ravel())
    # A uniform corruptible position per row.
    score = np.where(corruptible, rng.random(answers.shape), -1.0)
    position = score.argmax(-1)
    original = answers[np.arange(num_pairs), position]
    # A uniform different token: draw among corrupt_tokens without `original`.
    in_set = corrupt_tokens[None, :] == original[:, None]
    member = in_set.any(-1)
    size = corrupt_tokens.size
    choice = np.where(
        member,
        rng.integers(0, size - 1, num_pairs),  # the set without `original`
        rng.integers(0, size, num_pairs),
    )
    idx = np.where(member & (choice >= in_set.argmax(-1)), choice + 1, choice)
    replacement = corrupt_tokens[idx]
    rejected = answers.copy()
    rejected[np.arange(num_pairs), position] = replacement
    perm = rng.permutation(num_pairs)
    held, train = perm[:num_held], perm[num_held:]

    def take(index) -> PreferenceBatch:
        return PreferenceBatch(
            *(
                jnp.asarray(x[index], jnp.int32)
                for x in (
                    prompts,
                    prompt_mask,
                    answers,
                    answer_mask,
                    rejected,
                    answer_mask,
                )
            )
        )

    return PreferenceSplit(train=take(train), held_out=take(held))
