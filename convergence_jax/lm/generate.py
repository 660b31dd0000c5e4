"""Sampling with the KV cache: one compiled program per shape.

`generate` prefills the left-padded prompts once, copies each prompt's cache
``num_samples`` times and decodes in a `lax.while_loop` that stops early when every
completion has hit a stop token. Sizes (batch, prompt length, ``max_new_tokens``,
``num_samples``, the stop tokens, ``pad_id``) are static; ``temperature``, ``top_k``
and ``top_p`` are traced, so changing them does not recompile.

Log-probabilities: ``logprobs`` are ``log_softmax(logits / temperature)`` of the
sampled token, over the whole vocabulary, before top-k / top-p filtering
(temperature 0, greedy, reports the raw model ``log_softmax(logits)``). This is the
quantity TRL's GRPO trainer recomputes in its loss (``logits / temperature`` then a
log-softmax), so the sampler's log-probs can serve as the old policy's log-probs of
a token-policy RL step; `completion_logprobs` recomputes them from scratch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.model import (
    KVCache,
    Transformer,
    check_params,
    forward,
    init_cache,
)


class Generation(NamedTuple):
    """Completions ``[B, G, N]`` (``G`` samples per prompt, ``N`` max_new_tokens).

    ``tokens``: int32, ``pad_id`` after a completion ends; ``logprobs``: float32
    log-probs of each sampled token (see the module docstring), 0 where ``mask`` is
    0; ``mask``: int32 completion mask, 1 up to and including the first stop token.
    """

    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array


def filter_logits(logits: jax.Array, top_k, top_p) -> jax.Array:
    """Set to ``-inf`` the logits ``[..., V]`` outside the top ``top_k`` (0: off)
    and then outside the nucleus of mass ``top_p`` (1: off), as transformers'
    ``TopKLogitsWarper`` then ``TopPLogitsWarper`` do; at least one token is kept.
    Ties at the threshold are all kept. ``top_k``/``top_p`` may be traced."""
    vocab = logits.shape[-1]
    top_k = jnp.asarray(top_k, jnp.int32)
    top_p = jnp.asarray(top_p, jnp.float32)

    def apply(logits):
        ranked = -jnp.sort(-logits, axis=-1)  # descending
        k = jnp.where(top_k > 0, jnp.clip(top_k, 1, vocab), vocab)
        ranked = jnp.where(jnp.arange(vocab) < k, ranked, -jnp.inf)
        probs = jax.nn.softmax(ranked, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = (mass_before < top_p) | (top_p >= 1.0)
        keep = keep.at[..., 0].set(True)
        kept = jnp.sum(keep & (jnp.arange(vocab) < k), axis=-1, keepdims=True)
        threshold = jnp.take_along_axis(ranked, kept - 1, axis=-1)
        return jnp.where(logits < threshold, -jnp.inf, logits)

    active = (top_k > 0) | (top_p < 1.0)
    return lax.cond(active, apply, lambda x: x, logits)


def sample_token(key, logits, temperature, top_k, top_p):
    """One token per row of ``logits [B, V]`` -> ``(token [B] int32, logprob [B])``.

    ``key``: one key, or ``[B]`` keys (one per row: each row's draw then does not
    depend on the other rows). ``temperature <= 0`` is greedy (argmax). The
    log-prob is that of ``log_softmax(logits / temperature)`` (temperature 1 when
    greedy), unfiltered.
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    greedy = temperature <= 0
    scaled = logits / jnp.where(greedy, 1.0, temperature)
    logp = jax.nn.log_softmax(scaled, axis=-1)
    filtered = filter_logits(scaled, top_k, top_p)
    if jnp.ndim(key) == 1:
        sampled = jax.vmap(jax.random.categorical)(key, filtered)
    else:
        sampled = jax.random.categorical(key, filtered, axis=-1)
    token = jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled).astype(jnp.int32)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def _repeat_rows(cache: KVCache, logits, times: int):
    if times == 1:
        return cache, logits
    return (
        KVCache(
            k=jnp.repeat(cache.k, times, axis=1),
            v=jnp.repeat(cache.v, times, axis=1),
            mask=jnp.repeat(cache.mask, times, axis=0),
            index=cache.index,
        ),
        jnp.repeat(logits, times, axis=0),
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "config",
        "max_new_tokens",
        "num_samples",
        "stop_tokens",
        "pad_id",
    ),
)
def _generate(
    key,
    params,
    prompt_tokens,
    prompt_mask,
    temperature,
    top_k,
    top_p,
    *,
    config: LMConfig,
    max_new_tokens: int,
    num_samples: int,
    stop_tokens: tuple[int, ...],
    pad_id: int,
):
    batch, prompt_len = prompt_tokens.shape
    rows = batch * num_samples
    cache = init_cache(config, batch, prompt_len + max_new_tokens)
    logits, cache = forward(params, config, prompt_tokens, prompt_mask, cache=cache)
    cache, last = _repeat_rows(cache, logits[:, -1], num_samples)
    stops = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)
    if jnp.ndim(key) == 1:  # one key per prompt -> one per completion
        key = jax.vmap(
            lambda k: jax.vmap(lambda g: jax.random.fold_in(k, g))(
                jnp.arange(num_samples)
            )
        )(key).reshape(rows)

    def fold(step):
        if jnp.ndim(key) == 1:
            return jax.vmap(lambda k: jax.random.fold_in(k, step))(key)
        return jax.random.fold_in(key, step)

    def emit(step, logits, done, buffers):
        token, logp = sample_token(fold(step), logits, temperature, top_k, top_p)
        active = ~done
        token = jnp.where(active, token, pad_id)
        tokens, logps, masks = buffers
        buffers = (
            tokens.at[:, step].set(token),
            logps.at[:, step].set(jnp.where(active, logp, 0.0)),
            masks.at[:, step].set(active.astype(jnp.int32)),
        )
        done = done | (active & jnp.isin(token, stops))
        return token, done, buffers

    buffers = (
        jnp.full((rows, max_new_tokens), pad_id, jnp.int32),
        jnp.zeros((rows, max_new_tokens), jnp.float32),
        jnp.zeros((rows, max_new_tokens), jnp.int32),
    )
    done = jnp.zeros((rows,), bool)
    token, done, buffers = emit(0, last, done, buffers)

    def cond(carry):
        step, _, _, done, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, cache, token, done, buffers = carry
        # A finished row feeds padding that no later token attends to.
        logits, cache = forward(
            params,
            config,
            token[:, None],
            (~done)[:, None].astype(jnp.int32),
            cache=cache,
        )
        token, done, buffers = emit(step, logits[:, -1], done, buffers)
        return step + 1, cache, token, done, buffers

    carry = (jnp.ones((), jnp.int32), cache, token, done, buffers)
    *_, buffers = lax.while_loop(cond, body, carry)
    shape = (batch, num_samples, max_new_tokens)
    return Generation(*(b.reshape(shape) for b in buffers))


@functools.partial(jax.jit, static_argnums=1)
def completion_logprobs(
    params,
    config: LMConfig,
    prompt_tokens,
    prompt_mask,
    completions,
    completion_mask,
    temperature=1.0,
):
    """Log-probs of completion tokens given their prompt, recomputed in one pass
    (no cache), as a token-policy loss needs them.

    ``prompt_tokens``/``prompt_mask``: ``[B, P]`` left-padded; ``completions`` /
    ``completion_mask``: ``[B, N]`` or ``[B, G, N]`` (a `Generation`'s fields; each
    prompt is then repeated ``G`` times). Returns ``log_softmax(logits /
    temperature)`` of each completion token, ``[B, N]`` or ``[B, G, N]``, 0 where
    ``completion_mask`` is 0: `generate`'s ``logprobs`` for its own samples.
    """
    shape = completions.shape
    if completions.ndim == 3:
        prompt_tokens = jnp.repeat(prompt_tokens, shape[1], axis=0)
        prompt_mask = jnp.repeat(prompt_mask, shape[1], axis=0)
        completions = completions.reshape(-1, shape[-1])
        completion_mask = completion_mask.reshape(-1, shape[-1])
    prompt_len = prompt_tokens.shape[1]
    tokens = jnp.concatenate([prompt_tokens, completions], axis=1)
    mask = jnp.concatenate([prompt_mask, completion_mask], axis=1)
    # The output head only where a completion token is predicted (not over the
    # prompt): the vocabulary projection and its softmax are the widest layers.
    hidden, _ = Transformer(config, output_hidden=True).apply(
        {"params": params}, tokens, mask
    )
    hidden = hidden[:, prompt_len - 1 : -1].astype(config.compute_dtype)
    if config.tie_word_embeddings:
        head = params["embed"]["embedding"].T
    else:
        head = params["lm_head"]["kernel"]
    logits = jnp.dot(hidden, head.astype(config.compute_dtype)).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits / temperature, axis=-1)
    picked = jnp.take_along_axis(logp, completions[..., None], axis=-1)[..., 0]
    return jnp.where(completion_mask > 0, picked, 0.0).reshape(shape)


def _concrete(x) -> np.ndarray | None:
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def generate(
    key: jax.Array,
    params,
    config: LMConfig,
    prompt_tokens,
    prompt_mask=None,
    *,
    max_new_tokens: int,
    num_samples: int = 1,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
) -> Generation:
    """Sample ``num_samples`` completions of each left-padded prompt.

    Args:
        key: a typed `jax.random.key`, or ``[B]`` keys, one per prompt: each
            prompt's samples then do not depend on the rest of the batch (how a
            data-parallel program gets the same draws on any number of devices).
        params: the model's parameters (`init_params` / `load_hf`).
        config: the model's `LMConfig` (static).
        prompt_tokens: ``[B, P]`` int, left-padded (`pad_batch`,
            ``tokenizer.encode_batch``).
        prompt_mask: ``[B, P]``, 1 for prompt tokens, 0 for padding (default all 1).
        max_new_tokens: ``N``, the completion length (static).
        num_samples: ``G`` completions per prompt (static).
        temperature: 0 for greedy decoding; traced.
        top_k: keep the ``k`` most likely tokens, 0 for all; traced.
        top_p: nucleus mass in ``(0, 1]``, 1 for all; traced.
        stop_tokens: ids that end a completion (kept in it), e.g.
            ``tokenizer.stop_tokens`` (static).
        pad_id: the id written after a completion ends (static).

    Returns:
        `Generation` of ``[B, G, N]`` arrays: tokens, log-probs, completion mask.

    Bad input (params that do not fit ``config``, shapes, a prompt plus
    ``max_new_tokens`` longer than ``config.max_position_embeddings``, ids outside
    the vocabulary, a batch that is not left-padded) raises ``ValueError`` naming
    the argument, before compiling.
    Value checks are skipped for arrays traced by an enclosing `jax.jit`.
    """
    if not isinstance(config, LMConfig):
        raise ValueError(f"config must be an LMConfig, got {type(config).__name__}")
    check_params(config, params)
    shape = np.shape(prompt_tokens)
    if len(shape) != 2 or shape[1] < 1:
        raise ValueError(
            f"prompt_tokens must have shape [B, P] with P >= 1, got {shape}"
        )
    if not jnp.issubdtype(jnp.asarray(prompt_tokens).dtype, jnp.integer):
        raise ValueError("prompt_tokens must hold integer token ids")
    if prompt_mask is None:
        prompt_mask = jnp.ones(shape, jnp.int32)
    if np.shape(prompt_mask) != shape:
        raise ValueError(
            f"prompt_mask has shape {np.shape(prompt_mask)}, prompt_tokens {shape}"
        )
    for name, value in (
        ("max_new_tokens", max_new_tokens),
        ("num_samples", num_samples),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | np.integer)
            or value < 1
        ):
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    total = shape[1] + max_new_tokens
    if total > config.max_position_embeddings:
        raise ValueError(
            f"prompt length {shape[1]} + max_new_tokens {max_new_tokens} = {total} "
            f"exceeds LMConfig.max_position_embeddings "
            f"({config.max_position_embeddings})"
        )
    if jnp.ndim(key) not in (0, 1) or (jnp.ndim(key) == 1 and len(key) != shape[0]):
        raise ValueError(
            f"key must be one key or [B] = [{shape[0]}] keys (one per prompt), got "
            f"shape {jnp.shape(key)}"
        )
    stop_tokens = tuple(int(t) for t in stop_tokens)
    for name, ids in (("stop_tokens", stop_tokens), ("pad_id", (pad_id,))):
        bad = [i for i in ids if not 0 <= i < config.vocab_size]
        if bad:
            raise ValueError(
                f"{name} {bad} outside the model's vocabulary "
                f"[0, {config.vocab_size}) (LMConfig.vocab_size)"
            )
    tokens = _concrete(prompt_tokens)
    if tokens is not None and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
        raise ValueError(
            f"prompt_tokens hold ids in [{tokens.min()}, {tokens.max()}], outside the "
            f"model's vocabulary [0, {config.vocab_size}): does the tokenizer match "
            f"the model (LMConfig.vocab_size)?"
        )
    mask = _concrete(prompt_mask)
    if mask is not None:
        mask = mask > 0
        if not mask[:, -1].all():
            rows = np.flatnonzero(~mask[:, -1]).tolist()
            raise ValueError(
                f"prompt_mask rows {rows[:5]} end in padding or are empty: prompts "
                f"must be left-padded with at least one token"
            )
        if (np.diff(mask.astype(np.int8), axis=1) < 0).any():
            raise ValueError("prompt_mask is not left-padded (a 0 follows a 1)")
    for name, value, low in (("temperature", temperature, 0.0), ("top_k", top_k, 0)):
        v = _concrete(value)
        if v is not None and (v.shape != () or v < low):
            raise ValueError(f"{name} must be a scalar >= {low}, got {value!r}")
    p = _concrete(top_p)
    if p is not None and (p.shape != () or not 0.0 < p <= 1.0):
        raise ValueError(f"top_p must be a scalar in (0, 1], got {top_p!r}")
    return _generate(
        key,
        params,
        jnp.asarray(prompt_tokens, jnp.int32),
        jnp.asarray(prompt_mask, jnp.int32),
        jnp.asarray(temperature, jnp.float32),
        jnp.asarray(top_k, jnp.int32),
        jnp.asarray(top_p, jnp.float32),
        config=config,
        max_new_tokens=int(max_new_tokens),
        num_samples=int(num_samples),
        stop_tokens=stop_tokens,
        pad_id=int(pad_id),
    )
