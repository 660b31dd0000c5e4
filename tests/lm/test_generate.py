"""Generation with the KV cache against recomputation from scratch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import lm
from convergence_jax.lm.generate import _generate

CONFIG = lm.LMConfig(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    max_position_embeddings=32,
)
N = 8
PROMPTS = [[5, 17, 42], [7, 1, 250, 99, 3, 12]]


@pytest.fixture(scope="module")
def params():
    # Wider than the 0.02 init so the next-token distributions are peaked.
    shapes = jax.eval_shape(lm.init_params, jax.random.key(0), CONFIG)

    @jax.jit
    def widened(key):
        leaves, tree = jax.tree.flatten(shapes)
        keys = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(
            tree,
            [
                0.3 * jax.random.normal(k, x.shape)
                for k, x in zip(keys, leaves, strict=True)
            ],
        )

    return widened(jax.random.key(1))


@pytest.fixture(scope="module")
def batch():
    return lm.pad_batch(PROMPTS, pad_id=0)


def greedy_from_scratch(params, prompt, steps, config=CONFIG):
    """Append argmax(logits[-1]) one token at a time, with no cache: the whole
    sequence is run again at every step (right-padded to one length so that one
    compiled forward serves every step; causality keeps the padding out)."""
    length = len(prompt) + steps
    seq = list(prompt)
    for _ in range(steps):
        buffer = np.zeros((1, length), np.int32)
        buffer[0, : len(seq)] = seq
        logits, _ = lm.forward(params, config, buffer)
        seq.append(int(np.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt) :]


def completion_logprobs(params, prompt, completion, temperature=1.0):
    seq = np.array([list(prompt) + list(completion)])
    logp = lm.token_logprobs(params, CONFIG, seq, temperature=temperature)
    return np.asarray(logp[0, len(prompt) - 1 :])


def test_greedy_with_cache_equals_argmax_from_scratch(params, batch):
    tokens, mask = batch
    out = lm.generate(
        jax.random.key(0),
        params,
        CONFIG,
        tokens,
        mask,
        max_new_tokens=N,
        temperature=0.0,
    )
    assert out.tokens.shape == out.logprobs.shape == out.mask.shape == (2, 1, N)
    assert np.asarray(out.mask).all()
    for row, prompt in enumerate(PROMPTS):
        want = greedy_from_scratch(params, prompt, N)
        assert out.tokens[row, 0].tolist() == want
        # greedy reports the raw model's log-probs
        np.testing.assert_allclose(
            out.logprobs[row, 0], completion_logprobs(params, prompt, want), atol=1e-5
        )
    assert len(set(out.tokens[0, 0].tolist())) > 1  # not one repeated token


def test_top_k_one_and_tiny_top_p_are_greedy(params, batch):
    tokens, mask = batch
    run = lambda **kw: lm.generate(
        jax.random.key(3), params, CONFIG, tokens, mask, max_new_tokens=N, **kw
    )
    greedy = run(temperature=0.0)
    compiled = _generate._cache_size()
    top_k = run(temperature=1.0, top_k=1)
    top_p = run(temperature=1.3, top_p=1e-6)
    sampled = run(temperature=1.0)
    np.testing.assert_array_equal(top_k.tokens, greedy.tokens)
    np.testing.assert_array_equal(top_p.tokens, greedy.tokens)
    assert (np.asarray(sampled.tokens) != np.asarray(greedy.tokens)).any()
    # temperature, top_k and top_p are traced: no recompilation
    assert _generate._cache_size() == compiled
    # log-probs are of log_softmax(logits / temperature), before filtering
    for row, prompt in enumerate(PROMPTS):
        np.testing.assert_allclose(
            top_p.logprobs[row, 0],
            completion_logprobs(params, prompt, top_p.tokens[row, 0], 1.3),
            atol=1e-5,
        )


def test_samples_per_prompt_differ_and_logprobs_match_from_scratch(params, batch):
    tokens, mask = batch
    # Inside an enclosing jit (as an RL step would call it), vmapped over keys.
    sample = jax.jit(
        jax.vmap(
            lambda key, tokens, mask: lm.generate(
                key,
                params,
                CONFIG,
                tokens,
                mask,
                max_new_tokens=N,
                num_samples=4,
                temperature=0.8,
            ),
            in_axes=(0, None, None),
        )
    )
    out = sample(jax.random.split(jax.random.key(5), 2), tokens, mask)
    assert out.tokens.shape == (2, 2, 4, N)
    for row, prompt in enumerate(PROMPTS):
        completions = {tuple(c) for c in np.asarray(out.tokens[0, row]).tolist()}
        assert len(completions) == 4
        for g in range(4):
            np.testing.assert_allclose(
                out.logprobs[0, row, g],
                completion_logprobs(params, prompt, out.tokens[0, row, g], 0.8),
                atol=1e-5,
            )
    assert (np.asarray(out.tokens[0]) != np.asarray(out.tokens[1])).any()  # keys
    # the batched recomputation a token-policy loss uses gives the same numbers
    rescored = lm.completion_logprobs(
        params, CONFIG, tokens, mask, out.tokens[1], out.mask[1], 0.8
    )
    np.testing.assert_allclose(rescored, out.logprobs[1], atol=1e-5)


def test_stop_tokens_end_the_completion_mask(params, batch):
    tokens, mask = batch
    greedy = greedy_from_scratch(params, PROMPTS[0], N)
    stop = greedy[3]
    first = greedy.index(stop)
    out = lm.generate(
        jax.random.key(0),
        params,
        CONFIG,
        tokens,
        mask,
        max_new_tokens=N,
        temperature=0.0,
        stop_tokens=(stop,),
        pad_id=299,
    )
    row = np.asarray(out.mask[0, 0])
    np.testing.assert_array_equal(row, np.arange(N) <= first)  # the stop token counts
    assert out.tokens[0, 0].tolist() == greedy[: first + 1] + [299] * (N - first - 1)
    assert not np.asarray(out.logprobs[0, 0, first + 1 :]).any()
    rescored = lm.completion_logprobs(
        params, CONFIG, tokens, mask, out.tokens[:, 0], out.mask[:, 0]
    )
    np.testing.assert_allclose(rescored, out.logprobs[:, 0], atol=1e-5)
    other = greedy_from_scratch(params, PROMPTS[1], N)
    end = other.index(stop) if stop in other else N - 1
    assert out.tokens[1, 0, : end + 1].tolist() == other[: end + 1]
    assert int(out.mask[1, 0].sum()) == end + 1


def test_sampling_follows_the_filtered_distribution(params):
    prompt = np.array([PROMPTS[0]])
    logits, _ = lm.forward(params, CONFIG, prompt)
    scaled = np.asarray(logits[0, -1], np.float64) / 0.7
    top5 = np.argsort(-scaled)[:5]
    out = lm.generate(
        jax.random.key(11),
        params,
        CONFIG,
        prompt,
        max_new_tokens=1,
        num_samples=4000,
        temperature=0.7,
        top_k=5,
    )
    first = np.asarray(out.tokens[0, :, 0])
    assert set(first.tolist()) <= set(top5.tolist())
    want = np.exp(scaled[top5] - scaled[top5].max())
    want /= want.sum()
    got = np.array([(first == t).mean() for t in top5])
    assert 0.5 * np.abs(got - want).sum() < 0.05  # total variation
    # nucleus: the smallest set of most likely tokens with mass >= top_p
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    nucleus = order[: np.searchsorted(np.cumsum(probs[order]), 0.6) + 1]
    filtered = lm.filter_logits(jnp.asarray(scaled, jnp.float32), 0, 0.6)
    assert set(np.flatnonzero(np.isfinite(filtered)).tolist()) == set(nucleus.tolist())


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(max_new_tokens=27), "max_position_embeddings"),
        (dict(stop_tokens=(300,)), "stop_tokens"),
        (dict(pad_id=-1), "pad_id"),
        (dict(top_p=0.0), "top_p"),
        (dict(temperature=-1.0), "temperature"),
        (dict(num_samples=0), "num_samples"),
        (dict(prompt_tokens=np.full((2, 6), 300)), "LMConfig.vocab_size"),
        (dict(prompt_mask=np.ones((2, 5))), "prompt_mask has shape"),
        (dict(prompt_mask=np.array([[1, 1, 1, 0, 0, 0]] * 2)), "left-padded"),
        (dict(prompt_mask=np.array([[0, 1, 1, 0, 1, 1]] * 2)), "not left-padded"),
        (dict(prompt_tokens=np.zeros(6, np.int32)), "prompt_tokens must have shape"),
    ],
)
def test_bad_input_is_named_before_compiling(params, batch, change, message):
    tokens, mask = batch
    kwargs = dict(prompt_tokens=tokens, prompt_mask=mask, max_new_tokens=N)
    kwargs.update(change)
    compiled = _generate._cache_size()
    with pytest.raises(ValueError, match=message):
        lm.generate(jax.random.key(0), params, CONFIG, **kwargs)
    assert _generate._cache_size() == compiled


def test_bfloat16_generation_equals_bfloat16_from_scratch(params, batch):
    config = CONFIG.replace(dtype="bfloat16", param_dtype="bfloat16")
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    tokens, mask = batch
    out = lm.generate(
        jax.random.key(0), half, config, tokens, mask, max_new_tokens=4, temperature=0
    )
    assert out.logprobs.dtype == jnp.float32
    for row, prompt in enumerate(PROMPTS):
        want = greedy_from_scratch(half, prompt, 4, config)
        assert out.tokens[row, 0].tolist() == want


def test_per_prompt_keys_make_draws_independent_of_the_batch(params, batch):
    tokens, mask = batch
    keys = jax.random.split(jax.random.key(5), 2)
    both = lm.generate(
        keys,
        params,
        CONFIG,
        tokens,
        mask,
        max_new_tokens=N,
        num_samples=3,
        temperature=1.0,
    )
    for b in range(2):
        alone = lm.generate(
            keys[b : b + 1],
            params,
            CONFIG,
            tokens[b : b + 1],
            mask[b : b + 1],
            max_new_tokens=N,
            num_samples=3,
            temperature=1.0,
        )
        valid = np.asarray(both.mask[b]) > 0
        np.testing.assert_array_equal(
            np.asarray(alone.tokens[0])[valid], np.asarray(both.tokens[b])[valid]
        )
    # The three samples of a prompt differ (one key per completion, not per prompt).
    assert len({tuple(np.asarray(both.tokens[1, g]).tolist()) for g in range(3)}) > 1
    with pytest.raises(ValueError, match="one key or"):
        lm.generate(
            jax.random.split(jax.random.key(5), 3),
            params,
            CONFIG,
            tokens,
            mask,
            max_new_tokens=N,
        )
