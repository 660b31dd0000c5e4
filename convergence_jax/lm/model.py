"""The decoder: a flax linen Llama / Qwen2-family transformer with a KV cache.

Flax linen with an explicit ``params`` pytree: the parameters are a plain dict that
`jax.vmap`, `jax.lax.scan`, optax and orbax take as they are, which is what the
token-policy RL programs (GRPO and relatives) need. The blocks are one
`flax.linen.scan` over layers, so every per-layer parameter is stacked on a leading
``[num_layers]`` axis and the compile time does not grow with depth.

Shapes: ``B`` batch, ``T`` new tokens, ``S`` cache slots, ``H`` hidden size, ``N``
query heads, ``K`` key/value heads, ``D`` head dim, ``V`` vocabulary.

Padding: batches are left-padded (``attention_mask`` 1 for tokens, 0 for padding).
Positions count only real tokens, so a left-padded prompt gives the same logits as the
same prompt alone. Padding never serves as a key; a padding query attends to itself
only (its output is finite and meaningless).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict
from jax import lax

from convergence_jax.lm.config import LMConfig


class KVCache(NamedTuple):
    """Keys and values of every layer in fixed-size buffers.

    ``k``, ``v``: ``[num_layers, B, S, K, D]``; ``mask``: ``[B, S]`` int32, 1 where a
    slot holds a real token; ``index``: int32 scalar, the next slot to write (all rows
    advance together, which left padding makes possible).
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array


def init_cache(config: LMConfig, batch_size: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache of ``max_len`` slots (prompt + completion) per row."""
    if max_len > config.max_position_embeddings:
        raise ValueError(
            f"cache max_len ({max_len}) exceeds "
            f"LMConfig.max_position_embeddings ({config.max_position_embeddings})"
        )
    dtype = config.compute_dtype if dtype is None else dtype
    shape = (
        config.num_layers,
        batch_size,
        max_len,
        config.num_kv_heads,
        config.head_dim,
    )
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        mask=jnp.zeros((batch_size, max_len), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


def positions_from_mask(attention_mask: jax.Array, offset=0) -> jax.Array:
    """Position ids ``[B, T]`` of a left-padded batch: real tokens count 0, 1, ...
    (plus ``offset``, the real tokens already in the cache); padding gets 0."""
    mask = attention_mask.astype(jnp.int32)
    positions = jnp.cumsum(mask, axis=-1) - 1 + jnp.asarray(offset)[..., None]
    return jnp.where(mask > 0, positions, 0)


def rotate_half(x: jax.Array) -> jax.Array:
    """Hugging Face's ``rotate_half``: ``[x1, x2] -> [-x2, x1]`` on the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, positions: jax.Array, config: LMConfig) -> jax.Array:
    """Rotary embedding of ``x [B, T, heads, D]`` at ``positions [B, T]``, in the
    layout of transformers' ``apply_rotary_pos_emb`` (angles computed in float32)."""
    inv_freq = jnp.asarray(config.inv_freq())
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    return x * cos + rotate_half(x) * sin


class RMSNorm(nn.Module):
    """``scale * x / sqrt(mean(x^2) + eps)``, normalized in float32 as transformers
    does, then cast back to the input dtype before the scale."""

    eps: float
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param(
            "scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(x.dtype) * normed.astype(x.dtype)


def _dense(config: LMConfig, features: int, use_bias: bool, name: str):
    """A ``nn.Dense`` applied to ``x [..., H]`` as one 2-D matmul over the
    flattened leading axes (its backward then contracts one axis, not two,
    which XLA's CPU backend runs markedly faster)."""
    dense = nn.Dense(
        features,
        use_bias=use_bias,
        dtype=config.compute_dtype,
        param_dtype=config.params_dtype,
        kernel_init=nn.initializers.normal(0.02),
        name=name,
    )

    def apply(x):
        return dense(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], features)

    return apply


class Attention(nn.Module):
    """Grouped-query causal self-attention with rotary embeddings."""

    config: LMConfig

    @nn.compact
    def __call__(self, x, positions, key_valid, layer_kv, index):
        c = self.config
        B, T, _ = x.shape
        q = _dense(c, c.num_heads * c.head_dim, c.attention_bias, "q_proj")(x)
        k = _dense(c, c.num_kv_heads * c.head_dim, c.attention_bias, "k_proj")(x)
        v = _dense(c, c.num_kv_heads * c.head_dim, c.attention_bias, "v_proj")(x)
        q = apply_rotary(q.reshape(B, T, c.num_heads, c.head_dim), positions, c)
        k = apply_rotary(k.reshape(B, T, c.num_kv_heads, c.head_dim), positions, c)
        v = v.reshape(B, T, c.num_kv_heads, c.head_dim)

        if layer_kv is None:
            keys, values, new_kv = k, v, None
            query_slots = jnp.arange(T)
        else:
            cache_k, cache_v = layer_kv
            start = (0, index, 0, 0)
            keys = lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
            values = lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
            new_kv = (keys, values)
            keys, values = keys.astype(q.dtype), values.astype(q.dtype)
            query_slots = index + jnp.arange(T)
        key_slots = jnp.arange(keys.shape[1])
        causal = key_slots[None, :] <= query_slots[:, None]  # [T, S]
        itself = key_slots[None, :] == query_slots[:, None]
        allowed = (causal[None] & (key_valid[:, None, :] > 0)) | itself[None]

        groups = c.num_heads // c.num_kv_heads
        q = q.reshape(B, T, c.num_kv_heads, groups, c.head_dim)
        scores = jnp.einsum(
            "btkgd,bskd->bkgts", q, keys, preferred_element_type=jnp.float32
        ) * (c.head_dim**-0.5)
        scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", weights, values)
        out = out.reshape(B, T, c.num_heads * c.head_dim)
        out = _dense(c, c.hidden_size, c.attention_out_bias, "o_proj")(out)
        return out, new_kv


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    config: LMConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        gate = _dense(c, c.intermediate_size, c.mlp_bias, "gate_proj")(x)
        up = _dense(c, c.intermediate_size, c.mlp_bias, "up_proj")(x)
        return _dense(c, c.hidden_size, c.mlp_bias, "down_proj")(nn.silu(gate) * up)


class Block(nn.Module):
    """One pre-norm transformer block; the `nn.scan` body over layers."""

    config: LMConfig

    @nn.compact
    def __call__(self, x, layer_kv, positions, key_valid, index):
        c = self.config
        norm = lambda name: RMSNorm(c.rms_norm_eps, c.params_dtype, name=name)
        h, new_kv = Attention(c, name="attn")(
            norm("input_norm")(x), positions, key_valid, layer_kv, index
        )
        x = x + h
        x = x + MLP(c, name="mlp")(norm("post_attention_norm")(x))
        return x, new_kv


class Transformer(nn.Module):
    """The causal language model: ``tokens [B, T] -> logits [B, T, V]`` (float32).

    ``__call__(tokens, attention_mask=None, positions=None, cache=None)`` returns
    ``(logits, cache)``. Without a cache it attends within ``tokens``; with one it
    writes the new keys/values at ``cache.index`` and attends to every filled slot.
    ``positions`` default to `positions_from_mask` (offset by the real tokens
    already cached). Writing past the cache's end is clamped by
    `lax.dynamic_update_slice`: callers size the cache (`init_cache`), as
    `convergence_jax.lm.generate` does.

    ``output_hidden=True`` returns the final-normed hidden states ``[B, T, H]``
    instead of logits and builds no output head (a value model's trunk: its
    parameters are the policy's without ``lm_head``).

    ``inputs_embeds [B, T, H]`` (with ``tokens=None``) feeds continuous vectors to
    the blocks in place of the token embeddings (the embedding table is then not
    used, and with ``output_hidden=True`` not even built): a Decision Transformer
    embeds returns, states and actions itself (``convergence_jax.offline.dt``).
    """

    config: LMConfig
    output_hidden: bool = False

    @nn.compact
    def __call__(
        self,
        tokens,
        attention_mask=None,
        positions=None,
        cache=None,
        inputs_embeds=None,
    ):
        c = self.config
        if (tokens is None) == (inputs_embeds is None):
            raise ValueError("Transformer: pass exactly one of tokens, inputs_embeds")
        length = tokens.shape[1] if inputs_embeds is None else inputs_embeds.shape[1]
        if attention_mask is None:
            shape = tokens.shape if inputs_embeds is None else inputs_embeds.shape[:2]
            attention_mask = jnp.ones(shape, jnp.int32)
        attention_mask = attention_mask.astype(jnp.int32)
        if cache is None:
            key_valid, index, layer_kv = attention_mask, jnp.zeros((), jnp.int32), None
            offset = 0
        else:
            offset = cache.mask.sum(axis=-1)
            key_valid = lax.dynamic_update_slice(
                cache.mask, attention_mask, (0, cache.index)
            )
            index, layer_kv = cache.index, (cache.k, cache.v)
        if positions is None:
            positions = positions_from_mask(attention_mask, offset)

        embed = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=c.compute_dtype,
            param_dtype=c.params_dtype,
            embedding_init=nn.initializers.normal(0.02),
            name="embed",
        )
        if inputs_embeds is None:
            x = embed(tokens)
        else:
            x = inputs_embeds.astype(c.compute_dtype)
        blocks = nn.scan(
            Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.num_layers,
        )
        x, new_kv = blocks(c, name="layers")(x, layer_kv, positions, key_valid, index)
        x = RMSNorm(c.rms_norm_eps, c.params_dtype, name="final_norm")(x)
        if cache is not None:
            cache = KVCache(
                k=new_kv[0], v=new_kv[1], mask=key_valid, index=index + length
            )
        if self.output_hidden:
            return x.astype(jnp.float32), cache
        if c.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = _dense(c, c.vocab_size, False, "lm_head")(x)
        return logits.astype(jnp.float32), cache


@functools.partial(jax.jit, static_argnums=1)
def init_params(key: jax.Array, config: LMConfig) -> dict:
    """Random parameters (normal(0.02) kernels and embeddings, unit norms)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    return Transformer(config).init(key, tokens)["params"]


@functools.partial(jax.jit, static_argnums=1)
def forward(
    params, config: LMConfig, tokens, attention_mask=None, positions=None, cache=None
):
    """``Transformer(config).apply`` on an explicit ``params`` pytree:
    ``-> (logits [B, T, V] float32, cache)``. Jitted, ``config`` static."""
    return Transformer(config).apply(
        {"params": params}, tokens, attention_mask, positions, cache
    )


@functools.partial(jax.jit, static_argnums=1)
def token_logprobs(
    params, config: LMConfig, tokens, attention_mask=None, temperature=1.0
):
    """Log-probabilities ``[B, T - 1]`` of ``tokens[:, 1:]`` given what precedes each,
    under ``log_softmax(logits / temperature)``, recomputed from scratch (no cache).
    Entries whose token is padding are 0."""
    logits, _ = forward(params, config, tokens, attention_mask)
    logp = jax.nn.log_softmax(logits[:, :-1] / temperature, axis=-1)
    picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    if attention_mask is not None:
        picked = jnp.where(attention_mask[:, 1:] > 0, picked, 0.0)
    return picked


@functools.lru_cache(maxsize=32)
def _param_shapes(config: LMConfig) -> dict[str, tuple[int, ...]]:
    shapes = jax.eval_shape(init_params, jax.random.key(0), config)
    return {"/".join(k): tuple(v.shape) for k, v in flatten_dict(shapes).items()}


def check_params(config: LMConfig, params, exclude: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming every parameter that is missing, extra or of the
    wrong shape for ``config``. ``exclude``: top-level entries left out of both
    sides (a reward model's trunk is the model without ``lm_head``)."""
    want = {
        k: v for k, v in _param_shapes(config).items() if k.split("/")[0] not in exclude
    }
    try:
        got = {"/".join(k): tuple(np.shape(v)) for k, v in flatten_dict(params).items()}
    except (TypeError, AttributeError) as error:
        raise ValueError(f"params must be a nested dict of arrays: {error}") from None
    problems = [f"missing {k}" for k in want if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in want]
    problems += [
        f"{k} has shape {got[k]}, expected {want[k]}"
        for k in want
        if k in got and got[k] != want[k]
    ]
    if problems:
        raise ValueError("params do not match the config: " + "; ".join(problems[:8]))
