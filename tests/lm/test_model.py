"""The transformer: padding, the KV cache, rotary layout, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import lm

CONFIG = lm.LMConfig(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    max_position_embeddings=32,  # as in test_generate: one config, shared compiles
)


@pytest.fixture(scope="module")
def params():
    return lm.init_params(jax.random.key(0), CONFIG)


def random_tokens(seed, shape):
    return np.random.default_rng(seed).integers(0, CONFIG.vocab_size, shape)


def test_parameters_are_stacked_per_layer(params):
    q = params["layers"]["attn"]["q_proj"]["kernel"]
    assert q.shape == (2, 32, 32)
    assert params["layers"]["attn"]["k_proj"]["kernel"].shape == (2, 32, 16)
    assert "bias" not in params["layers"]["attn"]["q_proj"]
    assert params["lm_head"]["kernel"].shape == (32, 300)
    tied = lm.init_params(jax.random.key(0), CONFIG.replace(tie_word_embeddings=True))
    assert "lm_head" not in tied


def test_left_padding_gives_the_unpadded_logits(params):
    short, long = random_tokens(1, 5).tolist(), random_tokens(2, 9).tolist()
    tokens, mask = lm.pad_batch([short, long], pad_id=0)
    logits, _ = lm.forward(params, CONFIG, tokens, mask)
    alone, _ = lm.forward(params, CONFIG, np.array([short]))
    np.testing.assert_allclose(logits[0, -5:], alone[0], atol=1e-5)
    alone, _ = lm.forward(params, CONFIG, np.array([long]))
    np.testing.assert_allclose(logits[1], alone[0], atol=1e-5)
    assert np.isfinite(np.asarray(logits)).all()  # padding rows too


def test_cache_chunks_equal_one_full_pass(params):
    tokens, mask = lm.pad_batch(
        [random_tokens(3, 6).tolist(), random_tokens(4, 11).tolist()], pad_id=0
    )
    full, _ = lm.forward(params, CONFIG, tokens, mask)
    cache = lm.init_cache(CONFIG, 2, 16)
    step = lm.forward
    pieces = []
    for lo, hi in ((0, 7), (7, 8), (8, 11)):
        logits, cache = step(
            params, CONFIG, tokens[:, lo:hi], mask[:, lo:hi], None, cache
        )
        pieces.append(logits)
    assert int(cache.index) == 11
    np.testing.assert_array_equal(cache.mask[:, :11], mask)
    assert not np.asarray(cache.mask[:, 11:]).any()
    valid = mask[..., None] > 0
    got = np.concatenate(pieces, axis=1)
    np.testing.assert_allclose(
        np.where(valid, got, 0), np.where(valid, full, 0), atol=1e-5
    )


def test_rotary_is_hf_rotate_half_and_relative():
    x = np.random.default_rng(5).normal(size=(1, 3, 2, 8)).astype(np.float32)
    positions = np.array([[0, 1, 7]])
    got = np.asarray(lm.apply_rotary(jnp.asarray(x), jnp.asarray(positions), CONFIG))
    # transformers: emb = cat(freqs, freqs); x * cos + rotate_half(x) * sin
    inv = 1.0 / (10000.0 ** (np.arange(0, 8, 2) / 8))
    emb = np.concatenate([positions[..., None] * inv] * 2, -1)[:, :, None]
    half = np.concatenate([-x[..., 4:], x[..., :4]], -1)
    np.testing.assert_allclose(got, x * np.cos(emb) + half * np.sin(emb), atol=1e-6)
    # q.k after rotation depends only on the distance between positions
    q, k = x[:, :1], x[:, 1:2]

    def score(pq, pk):
        rq = lm.apply_rotary(jnp.asarray(q), jnp.array([[pq]]), CONFIG)
        rk = lm.apply_rotary(jnp.asarray(k), jnp.array([[pk]]), CONFIG)
        return float(jnp.sum(rq * rk))

    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_bfloat16_parameters_and_compute(params):
    config = CONFIG.replace(dtype="bfloat16", param_dtype="bfloat16")
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    tokens = random_tokens(6, (2, 8))
    logits, _ = lm.forward(half, config, tokens)
    reference, _ = lm.forward(params, CONFIG, tokens)
    assert logits.dtype == jnp.float32
    assert jax.tree.leaves(lm.init_params(jax.random.key(0), config))[0].dtype == (
        jnp.bfloat16
    )
    np.testing.assert_allclose(logits, reference, atol=0.05)
    assert np.abs(np.asarray(logits - reference)).max() > 0  # it did compute in bf16


def test_token_logprobs_match_log_softmax(params):
    tokens, mask = lm.pad_batch(
        [random_tokens(7, 4).tolist(), random_tokens(8, 7).tolist()], pad_id=0
    )
    got = lm.token_logprobs(params, CONFIG, tokens, mask, temperature=0.5)
    logits, _ = lm.forward(params, CONFIG, tokens, mask)
    logp = jax.nn.log_softmax(np.asarray(logits)[:, :-1] / 0.5, axis=-1)
    want = np.take_along_axis(np.asarray(logp), tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(got, np.where(mask[:, 1:] > 0, want, 0), atol=1e-5)


def test_cache_longer_than_context_is_rejected():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        lm.init_cache(CONFIG, 1, 33)


def test_gradients_flow_through_every_parameter(params):
    """The RL losses differentiate token log-probs: every parameter gets a finite,
    nonzero gradient, and one random directional derivative matches a central
    finite difference (in float32, hence the 2% tolerance)."""
    tokens, mask = lm.pad_batch(
        [random_tokens(9, 5).tolist(), random_tokens(10, 8).tolist()], pad_id=0
    )
    loss = lambda p: lm.token_logprobs(p, CONFIG, tokens, mask).sum()
    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0, (
            path
        )
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    direction = jax.tree.unflatten(
        tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )
    eps = 1e-3
    step = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, direction)
    numeric = (loss(step(1.0)) - loss(step(-1.0))) / (2 * eps)
    analytic = sum(
        jnp.vdot(g, d)
        for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
    )
    assert float(analytic) == pytest.approx(float(numeric), rel=2e-2)


def test_inputs_embeds_equal_the_token_path(params):
    """``inputs_embeds`` (a Decision Transformer's continuous inputs) replace the
    embedding lookup and nothing else."""
    tokens, mask = lm.pad_batch(
        [random_tokens(7, 4).tolist(), random_tokens(8, 6).tolist()], pad_id=0
    )
    want, _ = lm.forward(params, CONFIG, tokens, mask)
    embeds = params["embed"]["embedding"][np.asarray(tokens)]
    got, _ = lm.Transformer(CONFIG).apply(
        {"params": params}, None, mask, inputs_embeds=embeds
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    trunk = lm.Transformer(CONFIG, output_hidden=True)
    trunk_params = trunk.init(jax.random.key(0), None, inputs_embeds=embeds)["params"]
    assert "embed" not in trunk_params and "lm_head" not in trunk_params
    with pytest.raises(ValueError, match="exactly one of tokens, inputs_embeds"):
        trunk.apply({"params": trunk_params}, tokens, inputs_embeds=embeds)
