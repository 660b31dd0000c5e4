"""Preference losses and the preference program: Tunix's seeded DPO fixture,
TRL's step-one invariant (DPO's loss is ln 2 when policy = reference), a NumPy
reference of every loss's value and gradient, sequence log-probs against the
model's logits, the compiled program (jit, scan, vmap over seeds and over
hyperparameters, frozen reference), the synthetic data, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import llm, lm
from convergence_jax.llm import preference as P

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


# --- NumPy references (float64) ---------------------------------------------------


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_dpo(w, lo, rw, rl, beta):
    return -_log_sigmoid(beta * ((w - rw) - (lo - rl)))


def np_cdpo(w, lo, rw, rl, beta, eps):
    z = beta * ((w - rw) - (lo - rl))
    return -(1 - eps) * _log_sigmoid(z) - eps * _log_sigmoid(-z)


def np_robust(w, lo, rw, rl, beta, eps):
    z = beta * ((w - rw) - (lo - rl))
    return (-(1 - eps) * _log_sigmoid(z) + eps * _log_sigmoid(-z)) / (1 - 2 * eps)


def np_ipo(w, lo, rw, rl, beta):
    return (((w - rw) - (lo - rl)) - 1 / (2 * beta)) ** 2


def np_simpo(w, lo, beta, gamma):
    return -_log_sigmoid(beta * (w - lo) - gamma)


def np_orpo(w, lo, lam):
    log_odds = (w - lo) - (np.log1p(-np.exp(w)) - np.log1p(-np.exp(lo)))
    return -w - lam * _log_sigmoid(log_odds)


def _orpo_value(w, lo, lam):
    return P.orpo_loss(w, lo, lam)[0]


# name -> (ours, numpy, number of log-prob inputs, parameters)
CASES = {
    "dpo": (P.dpo_loss, np_dpo, 4, (0.5,)),
    "cdpo": (P.cdpo_loss, np_cdpo, 4, (0.5, 0.2)),
    "robust": (P.robust_dpo_loss, np_robust, 4, (0.5, 0.2)),
    "ipo": (P.ipo_loss, np_ipo, 4, (0.5,)),
    "simpo": (P.simpo_loss, np_simpo, 2, (2.5, 1.375)),
    "orpo": (_orpo_value, np_orpo, 2, (0.3,)),
}


def _inputs(n_inputs, size=7, seed=0):
    rng = np.random.default_rng(seed)
    if n_inputs == 2:  # mean per-token log-probs, strictly negative
        return [-rng.uniform(0.05, 3.0, size) for _ in range(2)]
    return [rng.normal(-10.0, 3.0, size) for _ in range(4)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_and_gradient_match_numpy(name):
    ours, ref, n_inputs, params = CASES[name]
    xs = _inputs(n_inputs)
    value = ours(*(jnp.asarray(x, jnp.float32) for x in xs), *params)
    np.testing.assert_allclose(value, ref(*xs, *params), rtol=2e-5, atol=2e-6)

    grads = jax.grad(
        lambda *a: ours(*a, *params).sum(), argnums=tuple(range(n_inputs))
    )(*(jnp.asarray(x, jnp.float32) for x in xs))
    h = 1e-6
    for i, g in enumerate(grads):
        up = [x.copy() for x in xs]
        down = [x.copy() for x in xs]
        up[i] = up[i] + h
        down[i] = down[i] - h
        # Each pair's loss depends on its own entries only: the derivative of
        # the sum along input i is the per-pair central difference.
        fd = (ref(*up, *params) - ref(*down, *params)) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-5)


def test_dpo_gradient_is_analytic():
    w, lo, rw, rl = (jnp.asarray(x, jnp.float32) for x in _inputs(4, seed=1))
    beta = 0.3
    g = jax.grad(lambda *a: P.dpo_loss(*a, beta).sum(), argnums=(0, 1, 2, 3))(
        w, lo, rw, rl
    )
    s = beta * jax.nn.sigmoid(-beta * ((w - rw) - (lo - rl)))
    for got, want in zip(g, (-s, s, s, -s), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_tunix_dpo_fixture():
    # tunix tests/sft/dpo/dpo_trainer_test.py::test_dpo_loss_fn: rows 0-3 chosen,
    # 4-7 rejected, log-probs summed over 4 tokens, the loss a mean over pairs.
    np.random.seed(0)
    per_token = np.random.normal(0, 5, size=(8, 4))
    ref = np.random.normal(0, 5, size=(8, 4)).sum(axis=-1)
    pi = per_token.sum(-1)
    args = [jnp.asarray(x, jnp.float32) for x in (pi[:4], pi[4:], ref[:4], ref[4:])]
    np.testing.assert_allclose(P.dpo_loss(*args, 0.1).mean(), 0.753059, atol=1e-5)
    np.testing.assert_allclose(P.cdpo_loss(*args, 0.1, 0.3).mean(), 0.925447, atol=1e-5)
    # cDPO with eps = 0 is DPO; robust with eps = 0 too; they differ for eps > 0.
    np.testing.assert_allclose(P.cdpo_loss(*args, 0.1, 0.0), P.dpo_loss(*args, 0.1))
    np.testing.assert_allclose(
        P.robust_dpo_loss(*args, 0.1, 0.0), P.dpo_loss(*args, 0.1)
    )
    assert not np.allclose(
        P.robust_dpo_loss(*args, 0.1, 0.3), P.cdpo_loss(*args, 0.1, 0.3)
    )


def test_simpo_worked_example_and_trl_form():
    # avg_w = -2, avg_l = -3, beta 2.5, gamma 1.375 (TRL's paper recipe).
    value = P.simpo_loss(jnp.array([-2.0]), jnp.array([-3.0]), 2.5, 1.375)
    np.testing.assert_allclose(value, [0.2811501], rtol=1e-6)
    # TRL's CPOTrainer: beta * (avg_w - avg_l - gamma / beta).
    trl = -_log_sigmoid(2.5 * ((-2.0 - -3.0) - 1.375 / 2.5))
    np.testing.assert_allclose(value, [trl], rtol=1e-6)


def test_orpo_parts_and_cap():
    w, lo = jnp.array([-0.5, -1e-9]), jnp.array([-1.5, -2.0])
    loss, parts = P.orpo_loss(w, lo, 0.1)
    np.testing.assert_allclose(parts["nll"], -w)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(parts["log_odds_ratio"]))
    cap = P.ORPO_LOGP_CAP
    want = (cap - -2.0) - (math.log1p(-math.exp(cap)) - math.log1p(-math.exp(-2.0)))
    np.testing.assert_allclose(parts["log_odds_ratio"][1], want, rtol=1e-5)


def test_losses_under_jit_and_vmap_over_parameters():
    w, lo, rw, rl = (jnp.asarray(x, jnp.float32) for x in _inputs(4))
    betas = jnp.array([0.1, 0.5, 1.0])
    out = jax.jit(jax.vmap(lambda b: P.dpo_loss(w, lo, rw, rl, b)))(betas)
    for i, b in enumerate(np.asarray(betas)):
        np.testing.assert_allclose(out[i], np_dpo(*_inputs(4), float(b)), rtol=1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: P.dpo_loss(jnp.zeros(3), jnp.zeros(4), jnp.zeros(3), jnp.zeros(3)),
            "dpo_loss: expected per-pair",
        ),
        (
            lambda: P.simpo_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3))),
            "simpo_loss: expected per-pair",
        ),
        (lambda: P.dpo_loss(*[jnp.zeros(2)] * 4, beta=0.0), "beta must be finite > 0"),
        (lambda: P.ipo_loss(*[jnp.zeros(2)] * 4, beta=-1.0), "beta"),
        (
            lambda: P.robust_dpo_loss(*[jnp.zeros(2)] * 4, 0.1, 0.5),
            r"label_smoothing must be finite in \[0.0, 0.5\)",
        ),
        (lambda: P.cdpo_loss(*[jnp.zeros(2)] * 4, 0.1, 1.5), "label_smoothing"),
        (lambda: P.simpo_loss(jnp.zeros(2), jnp.zeros(2), 1.0, float("nan")), "gamma"),
        (lambda: P.orpo_loss(jnp.zeros(2), jnp.zeros(2), -0.1), "orpo_lambda"),
        (lambda: P.PreferenceHParams.create(beta=0.0), "beta"),
        (lambda: P.make_preference(CONFIG, "kto", batch_size=2), "unknown preference"),
        (lambda: P.make_preference(CONFIG, "dpo", batch_size=0), "batch_size"),
    ],
)
def test_bad_input_fails_clearly(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- sequence log-probs from the model ------------------------------------------------


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _init(seed):
    return jax.jit(lm.init_params, static_argnums=1)(jax.random.key(seed), CONFIG)


def _data(num_pairs=24, held_out=8, seed=0):
    return P.synthetic_preferences(TASK, num_pairs, seed, held_out=held_out)


def test_sequence_logprobs_match_forward_logits():
    params = _init(1)
    batch = _data().train
    out = jax.jit(P.sequence_logprobs, static_argnums=1)(
        params,
        CONFIG,
        batch.prompt_tokens,
        batch.prompt_mask,
        batch.rejected,
        batch.rejected_mask,
    )
    tokens = np.concatenate([batch.prompt_tokens, batch.rejected], 1)
    mask = np.concatenate([batch.prompt_mask, batch.rejected_mask], 1)
    forward = jax.jit(lm.forward, static_argnums=1)
    logits, _ = forward(params, CONFIG, jnp.asarray(tokens), jnp.asarray(mask))
    logits = np.asarray(logits, np.float64)
    p = batch.prompt_tokens.shape[1]
    cmask = np.asarray(batch.rejected_mask)
    for b in range(tokens.shape[0]):
        total = sum(
            _log_softmax(logits[b, p + t - 1])[tokens[b, p + t]]
            for t in range(cmask.shape[1])
            if cmask[b, t]
        )
        np.testing.assert_allclose(out.summed[b], total, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out.length[b], cmask[b].sum())
        np.testing.assert_allclose(out.mean[b], total / cmask[b].sum(), rtol=1e-4)


def test_pair_logprobs_share_the_prompt_pass_same_values_and_gradients():
    # The prompt runs once into a cache for chosen and rejected: the same sums
    # (and gradients) as sequence_logprobs on [prompt, completion], here with
    # left-padded prompts and right-padded completions of different widths.
    params = _init(3)
    rng = np.random.default_rng(0)
    b, p, n, m = 6, 5, 4, 3
    prompt_mask = np.ones((b, p), np.int32)
    prompt_mask[:3, :2] = 0
    chosen_mask = np.ones((b, n), np.int32)
    chosen_mask[1:3, 2:] = 0
    rejected_mask = np.ones((b, m), np.int32)
    rejected_mask[4:, 1:] = 0
    batch = P.PreferenceBatch(
        *(
            jnp.asarray(x, jnp.int32)
            for x in (
                rng.integers(0, 256, (b, p)),
                prompt_mask,
                rng.integers(0, 256, (b, n)),
                chosen_mask,
                rng.integers(0, 256, (b, m)),
                rejected_mask,
            )
        )
    )

    def shared(q):
        logps = P.pair_logprobs(q, None, CONFIG, batch)
        return logps.chosen.summed, logps.rejected.summed

    def separate(q):
        one = lambda c, cm: (
            P.sequence_logprobs(  # noqa: E731
                q, CONFIG, batch.prompt_tokens, batch.prompt_mask, c, cm
            ).summed
        )
        return one(batch.chosen, batch.chosen_mask), one(
            batch.rejected, batch.rejected_mask
        )

    def total(f):  # one compile each: values as aux, gradient of their sum
        def value(q):
            out = f(q)
            return sum(x.sum() for x in out), out

        return jax.jit(jax.value_and_grad(value, has_aux=True))(params)

    (_, got), g_got = total(shared)
    (_, want), g_want = total(separate)
    for a, e in zip(got, want, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    for a, e in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


def test_reference_gets_no_gradient():
    params = _init(1)
    ref = _init(2)
    batch = _data().train
    hp = P.PreferenceHParams.create()

    def loss(p, r):
        return P.preference_loss("dpo", P.pair_logprobs(p, r, CONFIG, batch), hp)[0]

    # (The policy's gradient is nonzero: the program tests see its params move.)
    g_ref = jax.jit(jax.grad(loss, argnums=1))(params, ref)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_ref))


# --- the program ---------------------------------------------------------------------


def test_dpo_run_starts_at_ln2_is_a_scan_vmapped_over_seeds_reference_frozen():
    data = _data()
    pref = P.make_preference(
        CONFIG,
        "dpo",
        batch_size=8,
        hparams=P.PreferenceHParams.create(learning_rate=3e-3, beta=1.0),
    )
    keys = jnp.stack([jax.random.key(s) for s in range(2)])
    state0 = jax.jit(jax.vmap(pref.init))(keys)
    run = jax.jit(jax.vmap(lambda s: pref.run(s, data.train, num_steps=25)))
    state, metrics = run(state0)
    assert metrics["loss"].shape == (2, 25)
    # TRL tests/invariant/references/dpo.json: the step-1 loss is 0.6931... =
    # ln 2, as policy = reference there (delta = 0); ties are not reward wins.
    np.testing.assert_allclose(metrics["loss"][:, 0], math.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards_margins"][:, 0], 0.0, atol=1e-6)
    np.testing.assert_array_equal(metrics["rewards_accuracies"][:, 0], 0.0)
    np.testing.assert_array_equal(state.step, [25, 25])
    for a, b in zip(
        jax.tree.leaves(state.ref_params),
        jax.tree.leaves(state0.ref_params),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(
        jax.tree.leaves(state.params)[0], jax.tree.leaves(state0.params)[0]
    )
    # Seeds differ, and training on the pairs raises their margin.
    assert not np.allclose(metrics["loss"][0], metrics["loss"][1])
    scores = jax.jit(jax.vmap(lambda s: pref.evaluate(s, data.train)))(state)
    assert np.all(scores["reward_margin"] > 0)
    assert np.all(scores["loss"] < math.log(2.0))


def test_registry_dispatch_matches_numpy():
    # Each name reads the right log-probs (summed or mean) and parameters, and
    # reports TRL's reward metrics.
    rng = np.random.default_rng(4)
    seqs = []
    for _ in range(4):
        length = rng.integers(1, 6, 5).astype(np.float64)
        mean = -rng.uniform(0.1, 2.0, 5)
        seqs.append((mean * length, mean, length))
    logps = P.PairLogProbs(
        *(P.SequenceLogProbs(*(jnp.asarray(x, jnp.float32) for x in s)) for s in seqs)
    )
    hp = P.PreferenceHParams.create(
        beta=0.7, gamma=0.4, label_smoothing=0.2, orpo_lambda=0.3
    )
    (w, aw, _), (lo, al, _), (rw, raw, _), (rl, ral, _) = seqs
    want = {
        "dpo": np_dpo(w, lo, rw, rl, 0.7),
        "ipo": np_ipo(aw, al, raw, ral, 0.7),  # TRL's length-normalized IPO
        "cdpo": np_cdpo(w, lo, rw, rl, 0.7, 0.2),
        "robust": np_robust(w, lo, rw, rl, 0.7, 0.2),
        "simpo": np_simpo(aw, al, 0.7, 0.4),
        "orpo": np_orpo(aw, al, 0.3),
    }
    assert set(want) == set(P.PREFERENCE_LOSSES)
    for name, per_pair in want.items():
        value, metrics = P.preference_loss(name, logps, hp)
        np.testing.assert_allclose(value, per_pair.mean(), rtol=1e-5, err_msg=name)
        if name in P.REFERENCE_FREE:
            scale = 0.3 if name == "orpo" else 0.7
            chosen, rejected = scale * aw, scale * al
        else:
            chosen, rejected = 0.7 * (w - rw), 0.7 * (lo - rl)
        np.testing.assert_allclose(metrics["rewards_chosen"], chosen.mean(), rtol=1e-5)
        np.testing.assert_allclose(
            metrics["rewards_margins"], (chosen - rejected).mean(), rtol=1e-5
        )
        np.testing.assert_allclose(
            metrics["rewards_accuracies"], (chosen > rejected).mean()
        )
    no_ref = logps._replace(ref_chosen=None, ref_rejected=None)
    P.preference_loss("simpo", no_ref, hp)  # reference-free: fine
    with pytest.raises(ValueError, match="needs the reference"):
        P.preference_loss("dpo", no_ref, hp)
    with pytest.raises(ValueError, match="unknown preference loss"):
        P.preference_loss("kto", logps, hp)


def test_reference_free_program_learns_without_a_reference_pass():
    data = _data()
    hp = P.PreferenceHParams.create(learning_rate=3e-3, beta=2.0, gamma=0.5)
    # batch_size = every training pair: each step sees the same batch.
    pref = P.make_preference(CONFIG, "simpo", batch_size=16, hparams=hp)
    state = jax.jit(pref.init)(jax.random.key(0))
    state, metrics = jax.jit(lambda s: pref.run(s, data.train, num_steps=10))(state)
    loss, margin = np.asarray(metrics["loss"]), np.asarray(metrics["rewards_margins"])
    assert np.all(np.isfinite(loss))
    assert loss[-1] < loss[0] and margin[-1] > margin[0]


def test_hyperparameter_vmap_compiles_once():
    data = _data()
    pref = P.make_preference(CONFIG, "dpo", batch_size=8)
    state = jax.jit(pref.init)(jax.random.key(0))
    traces = []

    def one(hp):
        traces.append(1)
        return pref.step(state, data.train, hp)[1]["loss"]

    sweep = jax.jit(jax.vmap(one))
    grid = jax.vmap(lambda b: P.PreferenceHParams.create(beta=b))(jnp.array([0.1, 1.0]))
    sweep(grid)
    grid2 = jax.vmap(lambda b: P.PreferenceHParams.create(beta=b))(
        jnp.array([0.3, 3.0])
    )
    sweep(grid2)
    assert len(traces) == 1


# --- the synthetic data --------------------------------------------------------------


def test_synthetic_preferences_are_disjoint_one_token_corruptions():
    data = P.synthetic_preferences(llm.addition(2, TOKENIZER), 200, 3, held_out=0.25)
    train, held = data.train, data.held_out
    assert held.prompt_tokens.shape[0] == 50 and train.prompt_tokens.shape[0] == 150
    rows = lambda b: {tuple(r) for r in np.asarray(b.prompt_tokens)}  # noqa: E731
    assert not rows(train) & rows(held)
    assert len(rows(train)) == 150
    digits = set(TOKENIZER.encode("0123456789"))
    for batch in (train, held):
        chosen, rejected = np.asarray(batch.chosen), np.asarray(batch.rejected)
        np.testing.assert_array_equal(batch.chosen_mask, batch.rejected_mask)
        diff = chosen != rejected
        assert np.all(diff.sum(-1) == 1)
        assert set(rejected[diff].tolist()) <= digits
        # The chosen completion is the task's answer: it scores exact.
        prompts = np.asarray(batch.prompt_tokens)
        texts = TOKENIZER.decode_batch(prompts, np.asarray(batch.prompt_mask))
        answers = TOKENIZER.decode_batch(
            chosen, np.asarray(batch.chosen_mask), skip_special_tokens=True
        )
        for text, answer in zip(texts, answers, strict=True):
            a, b = text.rstrip("=").split("+")
            assert int(answer) == int(a) + int(b)


def test_synthetic_preferences_bad_input():
    with pytest.raises(ValueError, match="distinct prompts"):
        P.synthetic_preferences(TASK, 500, 0)  # 1-digit addition has 100 prompts
    with pytest.raises(ValueError, match="held_out"):
        P.synthetic_preferences(TASK, 10, 0, held_out=10)
    with pytest.raises(ValueError, match="num_pairs"):
        P.synthetic_preferences(TASK, 1, 0)
