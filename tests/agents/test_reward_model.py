"""The Bradley–Terry reward model: loss vs NumPy, last-token pooling, training to
the held-out accuracy bar, vmap over seeds, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.agents.reward_model import (
    REJECTION_KINDS,
    PreferenceData,
    bradley_terry_loss,
    init_reward_model,
    last_token_index,
    make_reward_model_trainer,
    preference_data_from_texts,
    reward_scores,
    synthetic_preference_pairs,
)
from convergence_jax.llm import SFTHParams
from convergence_jax.lm import ByteTokenizer, LMConfig, init_params

TOKENIZER = ByteTokenizer()
CONFIG = LMConfig(
    vocab_size=TOKENIZER.vocab_size,
    hidden_size=32,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=4,
    head_dim=8,
    rope_theta=100.0,
    max_position_embeddings=128,
)
HPARAMS = SFTHParams.create(learning_rate=3e-3, warmup_steps=20)


def np_bt(chosen, rejected, margin):
    """-mean log sigmoid(c - r - m) and its gradient in (c, r), in float64."""
    z = chosen - rejected - margin
    loss = np.mean(np.log1p(np.exp(-z)))
    dz = -1.0 / (1.0 + np.exp(z)) / z.size
    return loss, dz, -dz


@pytest.mark.parametrize("margin", [None, 0.5, "vector"])
def test_bradley_terry_matches_numpy(margin):
    rng = np.random.default_rng(0)
    c = rng.normal(size=7).astype(np.float32) * 3
    r = rng.normal(size=7).astype(np.float32) * 3
    m = rng.uniform(0, 1, size=7).astype(np.float32) if margin == "vector" else margin
    want, dc, dr = np_bt(
        c.astype(np.float64), r.astype(np.float64), 0.0 if m is None else m
    )
    (loss, metrics), grads = jax.value_and_grad(
        lambda c, r: bradley_terry_loss(c, r, m), argnums=(0, 1), has_aux=True
    )(jnp.asarray(c), jnp.asarray(r))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(grads[0], dc, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grads[1], dr, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(c > r))


def test_bradley_terry_equal_scores_is_ln2_and_stable():
    s = jnp.asarray([-3.0, 0.0, 5.0])
    loss, metrics = bradley_terry_loss(s, s)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
    assert metrics["accuracy"] == 0.0  # ties count as wrong
    loss, _ = bradley_terry_loss(jnp.asarray([-200.0]), jnp.asarray([200.0]))
    np.testing.assert_allclose(loss, 400.0, rtol=1e-6)
    with pytest.raises(AssertionError):
        bradley_terry_loss(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(jnp.zeros(3), jnp.zeros(3), jnp.zeros((3, 1)))


def test_last_token_pooling_left_and_right_padding():
    mask = jnp.asarray([[0, 0, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(last_token_index(mask), [3, 2, 0, 3])
    params = init_reward_model(jax.random.key(0), CONFIG)
    # A random head, so that scores differ between positions.
    params["head"]["kernel"] = jax.random.normal(jax.random.key(1), (32, 1))
    texts = ["Hi there, how are you?", "ok", "Order 1234 is late."]
    alone = [
        reward_scores(params, CONFIG, *TOKENIZER.encode_batch([t]))[0] for t in texts
    ]
    for side in ("left", "right"):
        tokens, mask = TOKENIZER.encode_batch(texts, length=30, side=side)
        np.testing.assert_allclose(
            reward_scores(params, CONFIG, tokens, mask), alone, rtol=1e-4, atol=1e-5
        )
    # The score reads the last real token: changing it changes the score,
    # changing padding does not.
    tokens, mask = TOKENIZER.encode_batch(texts, length=30, side="right")
    other_pad = jnp.where(mask > 0, tokens, 65)
    np.testing.assert_allclose(
        reward_scores(params, CONFIG, other_pad, mask), alone, rtol=1e-4, atol=1e-5
    )


def test_init_from_lm_params_drops_lm_head():
    lm_params = init_params(jax.random.key(3), CONFIG)
    rm = init_reward_model(jax.random.key(0), CONFIG, lm_params)
    assert "lm_head" not in rm["trunk"]
    np.testing.assert_array_equal(
        rm["trunk"]["embed"]["embedding"], lm_params["embed"]["embedding"]
    )
    assert rm["head"]["kernel"].shape == (32, 1)
    bad = dict(lm_params, embed={"embedding": jnp.zeros((5, 32))})
    with pytest.raises(ValueError, match="embed/embedding has shape"):
        init_reward_model(jax.random.key(0), CONFIG, bad)


def test_synthetic_pairs_are_not_a_length_game():
    pairs = synthetic_preference_pairs(jax.random.key(0), 400, TOKENIZER)
    longer = np.mean(
        [len(c) > len(r) for c, r in zip(pairs.chosen, pairs.rejected, strict=True)]
    )
    assert 0.3 < longer < 0.7
    assert set(pairs.kinds) == {"rude", "no_answer", "rude_and_wrong"}
    for prompt, c, r in zip(pairs.prompts, pairs.chosen, pairs.rejected, strict=True):
        assert c.startswith(prompt) and r.startswith(prompt) and c != r
        status = prompt.split(": ")[1].split(".")[0]
        assert f"is {status}." in c
    again = synthetic_preference_pairs(jax.random.key(0), 400, TOKENIZER)
    assert again.chosen == pairs.chosen and again.rejected == pairs.rejected
    other = synthetic_preference_pairs(jax.random.key(1), 400, TOKENIZER)
    assert other.chosen != pairs.chosen
    wrong = synthetic_preference_pairs(
        jax.random.key(0), 50, TOKENIZER, kinds=["wrong_status"]
    )
    for prompt, r in zip(wrong.prompts, wrong.rejected, strict=True):
        status = prompt.split(": ")[1].split(".")[0]
        assert f"is {status}." not in r and " is " in r[len(prompt) :]
    with pytest.raises(ValueError, match="kinds"):
        synthetic_preference_pairs(jax.random.key(0), 5, TOKENIZER, kinds=["mean"])
    assert "wrong_status" in REJECTION_KINDS


def test_training_reaches_the_held_out_bar():
    """Bar of issue 13: >= 90% pairwise accuracy on held-out synthetic pairs
    (pairs from another key), in each of 2 vmapped seeds."""
    train = synthetic_preference_pairs(jax.random.key(0), 1024, TOKENIZER, length=104)
    held_out = synthetic_preference_pairs(jax.random.key(1), 512, TOKENIZER, length=104)
    trainer = make_reward_model_trainer(CONFIG, batch_size=16, hparams=HPARAMS)
    state = jax.vmap(trainer.init)(jnp.stack([jax.random.key(s) for s in range(2)]))
    before = jax.vmap(trainer.evaluate, in_axes=(0, None))(state.params, held_out.data)
    np.testing.assert_allclose(before["loss"], np.log(2.0), rtol=1e-5)
    state, metrics = jax.jit(
        jax.vmap(lambda s, d: trainer.run(s, None, d, 80), in_axes=(0, None))
    )(state, train.data)
    assert metrics["loss"].shape == (2, 80)
    scores = jax.jit(jax.vmap(trainer.evaluate, in_axes=(0, None)))(
        state.params, held_out.data
    )
    assert np.all(np.asarray(scores["accuracy"]) >= 0.9), scores["accuracy"]
    assert np.all(np.asarray(scores["loss"]) < 0.3), scores["loss"]


def test_vmap_over_seeds_and_learning_rates_equals_separate_runs():
    pairs = synthetic_preference_pairs(jax.random.key(2), 64, TOKENIZER, length=104)
    trainer = make_reward_model_trainer(CONFIG, batch_size=8)
    keys = [jax.random.key(s) for s in (5, 6)]
    rates = (1e-3, 3e-3)
    hparams = [SFTHParams.create(learning_rate=lr) for lr in rates]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *hparams)
    run = jax.jit(lambda s, h, d: trainer.run(s, h, d, 3))
    batched, bm = jax.jit(jax.vmap(run, in_axes=(0, 0, None)))(
        jax.vmap(trainer.init)(jnp.stack(keys)), stacked, pairs.data
    )
    for i, key in enumerate(keys):
        alone, am = run(trainer.init(key), hparams[i], pairs.data)
        np.testing.assert_allclose(bm["loss"][i], am["loss"], rtol=1e-4, atol=1e-6)
        mine = jax.tree.map(lambda b, i=i: b[i], batched.params)
        jax.tree.map(
            lambda b, a: np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5),
            mine,
            alone.params,
        )
    assert int(batched.step[0]) == 3


def test_bad_input():
    pairs = synthetic_preference_pairs(jax.random.key(0), 8, TOKENIZER, length=104)
    trainer = make_reward_model_trainer(CONFIG, batch_size=4)
    state = trainer.init(jax.random.key(0))
    d = pairs.data
    with pytest.raises(ValueError, match="one shape"):
        trainer.run(state, None, d._replace(rejected_tokens=d.rejected_tokens[:4]), 1)
    with pytest.raises(ValueError, match="batch_size \\(16\\) exceeds the 8"):
        make_reward_model_trainer(CONFIG, batch_size=16).run(state, None, d, 1)
    bad_ids = d._replace(chosen_tokens=d.chosen_tokens.at[0, -1].set(999))
    with pytest.raises(ValueError, match="id 999, outside the model's vocabulary"):
        trainer.evaluate(state.params, bad_ids)
    long = preference_data_from_texts(["x" * 130], ["y" * 130], TOKENIZER)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        trainer.evaluate(state.params, long)
    empty = d._replace(rejected_mask=d.rejected_mask.at[2].set(0))
    with pytest.raises(ValueError, match="no real tokens"):
        trainer.run(state, None, empty, 1)
    with pytest.raises(ValueError, match="\\[N, T\\]"):
        trainer.evaluate(state.params, PreferenceData(*(x[0] for x in d)))
    with pytest.raises(ValueError, match="pairs need one of each"):
        preference_data_from_texts(["a", "b"], ["c"], TOKENIZER)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_reward_model_trainer(CONFIG, batch_size=0)
    with pytest.raises(ValueError, match="num_steps"):
        trainer.run(state, None, d, -1)
