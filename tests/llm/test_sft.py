"""SFT warm-up: the masked NLL against NumPy, the compiled program (learning,
vmap over seeds and hyperparameters, no recompile), held-out evaluation, bad
input."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import llm, lm
from convergence_jax.llm import sft as sft_module

TOKENIZER = lm.ByteTokenizer()
CONFIG = lm.LMConfig(
    vocab_size=TOKENIZER.vocab_size,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=2,
    head_dim=16,
    max_position_embeddings=32,
)
TASK = llm.addition(1, TOKENIZER)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_matches_numpy_reference():
    params = lm.init_params(jax.random.key(1), CONFIG)
    # Keep the output layer on the answer alphabet (digits and eos) with large
    # random weights, so argmax varies and sometimes hits the target.
    answer_ids = np.asarray([*TOKENIZER.encode("0123456789"), TOKENIZER.eos_id])
    head = np.zeros(params["lm_head"]["kernel"].shape, np.float32)
    head[:, answer_ids] = 3.0 * np.random.default_rng(0).normal(
        size=(head.shape[0], answer_ids.size)
    )
    params = {**params, "lm_head": {"kernel": jnp.asarray(head)}}
    batch = llm.addition(2, TOKENIZER).sft_batch(jax.random.key(2), 16)
    loss, metrics = llm.sft_loss(params, CONFIG, batch)

    logits, _ = lm.forward(params, CONFIG, batch.tokens, batch.mask)
    logits, tokens = np.asarray(logits, np.float64), np.asarray(batch.tokens)
    loss_mask = np.asarray(batch.loss_mask)
    total, right, count, rows_right = 0.0, 0, 0, 0
    for b in range(tokens.shape[0]):
        row_ok = True
        for t in range(1, tokens.shape[1]):
            if not loss_mask[b, t]:
                continue
            logp = _log_softmax(logits[b, t - 1])
            total -= logp[tokens[b, t]]
            hit = int(np.argmax(logits[b, t - 1]) == tokens[b, t])
            right += hit
            row_ok &= bool(hit)
            count += 1
        rows_right += row_ok
    assert count == int(loss_mask.sum()) > 0
    np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["token_accuracy"]), right / count)
    np.testing.assert_allclose(
        float(metrics["sequence_accuracy"]), rows_right / tokens.shape[0]
    )
    assert 0 < right < count  # the check above is not vacuous


def test_loss_ignores_prompt_and_padding_tokens():
    params = lm.init_params(jax.random.key(3), CONFIG)
    batch = TASK.sft_batch(jax.random.key(4), 4)
    base, _ = llm.sft_loss(params, CONFIG, batch)
    # Changing a prompt token changes the context, but the loss is still only
    # over answer tokens: zeroing the loss mask gives 0 and zero gradient.
    empty = batch._replace(loss_mask=jnp.zeros_like(batch.loss_mask))
    value, grads = jax.value_and_grad(lambda p: llm.sft_loss(p, CONFIG, empty)[0])(
        params
    )
    assert float(value) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    assert float(base) > 0


def test_schedule_warmup_then_cosine():
    hp = llm.SFTHParams.create(
        learning_rate=1.0, warmup_steps=4, decay_steps=10, final_lr_fraction=0.2
    )
    got = np.asarray(jax.vmap(lambda s: llm.learning_rate_at(s, hp))(jnp.arange(14)))
    want = [
        min(1.0, (s + 1) / 4)
        * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * min(s / 10, 1.0))))
        for s in range(14)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    constant = llm.SFTHParams.create(learning_rate=0.5)
    assert float(llm.learning_rate_at(100, constant)) == 0.5


def _program(batch_size=16):
    return llm.make_sft(CONFIG, TASK, batch_size=batch_size)


HP = llm.SFTHParams.create(learning_rate=3e-3, warmup_steps=5)


@functools.cache
def _two_seed_run():
    """Two seeds of 60 steps, vmapped: (program, keys, states, metrics)."""
    sft = _program()
    keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
    states, metrics = jax.jit(jax.vmap(lambda s, h: sft.run(s, h, 60)))(
        jax.vmap(sft.init)(keys), jax.tree.map(lambda x: jnp.stack([x, x]), HP)
    )
    return sft, keys, states, metrics


def test_loss_decreases_and_vmap_equals_separate_runs():
    sft, keys, batched, metrics = _two_seed_run()
    hp = HP
    run = jax.jit(lambda s, h: sft.run(s, h, 60))
    loss = np.asarray(metrics["loss"])  # [2, 60]
    assert loss.shape == (2, 60)
    assert (loss[:, -10:].mean(1) < 0.7 * loss[:, :10].mean(1)).all(), loss
    for i, key in enumerate(keys):
        single, single_metrics = run(sft.init(key), hp)
        row = jax.tree.map(lambda x, i=i: x[i], batched.params)
        np.testing.assert_allclose(
            np.asarray(single_metrics["loss"]), loss[i], rtol=2e-4, atol=2e-5
        )
        for a, b in zip(
            jax.tree.leaves(single.params),
            jax.tree.leaves(row),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    assert int(single.step) == 60

    # Only numbers change: a different learning rate reuses the compiled run.
    before = run._cache_size()
    run(sft.init(keys[0]), hp.replace(learning_rate=jnp.float32(1e-4)))
    assert run._cache_size() == before


def test_vmap_over_learning_rates_and_init_from_params():
    sft = _program(batch_size=8)
    params = lm.init_params(jax.random.key(7), CONFIG)
    state = sft.init(jax.random.key(8), params)
    for a, b in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    hps = jax.vmap(lambda lr: llm.SFTHParams.create(learning_rate=lr))(
        jnp.asarray([0.0, 1e-2])
    )
    out, metrics = jax.jit(jax.vmap(lambda h: sft.run(state, h, 3)))(hps)
    # Step size 0 leaves the parameters as they were; 1e-2 moves them.
    for a, b in zip(jax.tree.leaves(out.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a[0], b)
    moved = max(
        float(jnp.abs(a[1] - b).max())
        for a, b in zip(
            jax.tree.leaves(out.params), jax.tree.leaves(params), strict=True
        )
    )
    assert moved > 1e-3
    np.testing.assert_array_equal(metrics["learning_rate"][0], 0.0)


def test_evaluate_agrees_with_task_exact_match():
    sft, _, states, _ = _two_seed_run()
    state = sft.init(jax.random.key(0)).replace(
        params=jax.tree.map(lambda x: x[0], states.params)
    )
    key = llm.eval_key(0)
    scores = llm.evaluate(key, state.params, CONFIG, TASK, 64)

    k_problems, k_sample = jax.random.split(key)
    batch = TASK.sample(k_problems, 64)
    out = lm.generate(
        k_sample,
        state.params,
        CONFIG,
        batch.prompt_tokens,
        batch.prompt_mask,
        max_new_tokens=TASK.answer_length,
        temperature=0.0,
        stop_tokens=TASK.stop_tokens,
    )
    # Recompute exact match on the host from the decoded text.
    texts = TASK.parse(out.tokens[:, 0], out.mask[:, 0])
    a, b, _ = (np.asarray(x) for x in batch.problem)
    want = [
        float(text == str(int(x[0]) + int(y[0])))
        for text, x, y in zip(texts, a, b, strict=True)
    ]
    np.testing.assert_allclose(float(scores["exact_match"]), np.mean(want))
    np.testing.assert_allclose(
        float(scores["exact_match"]),
        float(TASK.exact_match(out.tokens, out.mask, batch).mean()),
    )
    np.testing.assert_allclose(
        float(scores["reward"]), float(TASK.reward(out.tokens, out.mask, batch).mean())
    )
    assert float(scores["pass_at_k"]) == float(scores["exact_match"])  # G = 1

    # Vmapped over two parameter sets, equal to one call each.
    stacked = jax.tree.map(
        lambda p, q: jnp.stack([p, q]), state.params, sft.init(jax.random.key(5)).params
    )
    both = jax.jit(jax.vmap(lambda p: llm.evaluate(key, p, CONFIG, TASK, 64)))(stacked)
    np.testing.assert_allclose(both["exact_match"][0], scores["exact_match"])
    np.testing.assert_allclose(both["reward"][0], scores["reward"], rtol=1e-6)

    sampled = llm.evaluate(
        key, state.params, CONFIG, TASK, 16, temperature=1.0, num_samples=4
    )
    assert 0.0 <= float(sampled["exact_match"]) <= float(sampled["pass_at_k"]) <= 1.0


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        llm.make_sft(CONFIG, TASK, batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be an int"):
        llm.make_sft(CONFIG, TASK, batch_size=2.0)
    short = CONFIG.replace(max_position_embeddings=4)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        llm.make_sft(short, TASK, batch_size=4)
    small_vocab = CONFIG.replace(vocab_size=128)  # ByteTokenizer's eos is 258
    with pytest.raises(ValueError, match="LMConfig.vocab_size"):
        llm.make_sft(small_vocab, TASK, batch_size=4)
    with pytest.raises(ValueError, match="host_only"):
        llm.make_sft(CONFIG, llm.countdown(2, TOKENIZER), batch_size=4)
    with pytest.raises(ValueError, match="SFTHParams.learning_rate"):
        llm.SFTHParams.create(learning_rate=-1.0)
    sft = _program(batch_size=4)
    with pytest.raises(ValueError, match="num_steps"):
        sft.run(sft.init(jax.random.key(0)), None, -1)
    wrong = lm.init_params(jax.random.key(0), CONFIG.replace(hidden_size=16))
    with pytest.raises(ValueError, match="params do not match"):
        sft.init(jax.random.key(0), wrong)
    with pytest.raises(ValueError, match="num_problems"):
        llm.evaluate(
            jax.random.key(0), sft.init(jax.random.key(0)).params, CONFIG, TASK, 0
        )


def test_eval_key_is_disjoint_from_training_keys():
    assert sft_module.EVAL_KEY_OFFSET == 10**6
    np.testing.assert_array_equal(
        jax.random.key_data(llm.eval_key(3)),
        jax.random.key_data(jax.random.key(10**6 + 3)),
    )


def test_run_until_stops_each_seed_at_its_target():
    sft = _program(batch_size=8)
    keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
    states = jax.vmap(sft.init)(keys)
    # Seed 0 is "there" at once (target 0); seed 1 never is (target 1.1) and
    # stops at max_steps (a multiple of eval_every).
    targets = jnp.asarray([0.0, 1.1])
    out, accuracy = jax.jit(
        jax.vmap(
            lambda s, t: sft.run_until(
                s, HP, llm.eval_key(0), t, 6, eval_every=3, num_problems=8
            )
        )
    )(states, targets)
    np.testing.assert_array_equal(out.step, [0, 6])
    for a, b in zip(
        jax.tree.leaves(out.params),
        jax.tree.leaves(states.params),
        strict=True,
    ):
        np.testing.assert_array_equal(a[0], b[0])  # frozen: no step taken
    # The reported accuracy is the held-out score of the returned parameters.
    last = jax.tree.map(lambda x: x[1], out.params)
    np.testing.assert_allclose(
        accuracy[1],
        llm.evaluate(llm.eval_key(0), last, CONFIG, TASK, 8)["exact_match"],
    )
    with pytest.raises(ValueError, match="eval_every"):
        sft.run_until(states, HP, llm.eval_key(0), 0.5, 6, eval_every=0, num_problems=8)


def test_addition_warmup_recipe_builds():
    recipe = llm.AdditionWarmup()
    config, task = recipe.model_config(), recipe.task()
    assert config.num_layers == 2 and config.hidden_size == 64
    assert config.vocab_size == TOKENIZER.vocab_size
    sft = llm.make_sft(config, task, batch_size=recipe.batch_size)
    assert sft.batch_size == recipe.batch_size
    assert np.float32(recipe.hparams().learning_rate) == np.float32(
        recipe.learning_rate
    )
    keys = {
        tuple(np.asarray(jax.random.key_data(k)).ravel())
        for k in (recipe.stop_key(), llm.eval_key(0), jax.random.key(0))
    }
    assert len(keys) == 3
