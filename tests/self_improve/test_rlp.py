"""RLP: leave-one-out advantages, the stop-gradient reward, the clipped
surrogate and the EMA update against NumPy; the program's loss against a
hand-written surrogate on the thought tokens only (no gradient from the
context or the target); one compiled step improves the surrogate; one compile
for a vmap over seeds and hyperparameters; the stream; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import llm, lm
from convergence_jax.self_improve import rlp

START, END, PAD = 10, 11, 12
MODEL = lm.LMConfig(
    vocab_size=16,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=2,
    num_kv_heads=2,
    head_dim=16,
    rope_theta=100.0,
    max_position_embeddings=32,
)
CONFIG = rlp.RLPConfig(
    think_start=START,
    think_end=END,
    pad_id=PAD,
    group_size=4,
    batch_size=3,
    context_length=6,
    min_context=4,
    max_thought_tokens=4,
    num_updates=3,
)
HP = rlp.RLPHParams.create(learning_rate=3e-3, temperature=1.0, tau=0.9)


TRACES = []


@pytest.fixture(scope="module")
def setup():
    data = rlp.digit_sum_stream(jax.random.key(0), 64, 10)
    program = rlp.make_rlp(CONFIG, MODEL, HP)
    params = lm.init_params(jax.random.key(1), MODEL)
    state = program.init(jax.random.key(2), params)
    rollout = jax.jit(program.rollout)
    ro, metrics = rollout(state, data, HP)
    loss_grad = jax.jit(
        jax.value_and_grad(lambda p, r: program.loss(p, r, HP), has_aux=True)
    )

    def run(s, hp):
        TRACES.append(1)
        return program.run(s, data, hp, num_steps=1)

    return dict(
        data=data,
        program=program,
        state=state,
        ro=ro,
        metrics=metrics,
        rollout=rollout,
        loss_grad=loss_grad,
        run=jax.jit(jax.vmap(run)),
    )


def _seeds(program, params, seeds, lrs):
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    states = jax.vmap(program.init, in_axes=(0, None))(keys, params)
    hps = jax.vmap(lambda lr: HP.replace(optim=HP.optim.replace(learning_rate=lr)))(
        jnp.asarray(lrs, jnp.float32)
    )
    return states, hps


# --- the pure core -------------------------------------------------------------


def test_leave_one_out_advantages_match_numpy_and_sum_to_zero():
    r = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    got = np.asarray(rlp.leave_one_out_advantages(jnp.asarray(r)))
    loo = r - (r.sum(1, keepdims=True) - r) / 3.0  # r_i - mean_{j != i} r_j
    np.testing.assert_allclose(got, loo, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, 4 / 3 * (r - r.mean(1, keepdims=True)), atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 0.0, atol=1e-5)
    flat = llm.rloo_advantages(jnp.asarray(r).reshape(-1), 4)
    np.testing.assert_allclose(got.reshape(-1), np.asarray(flat), atol=1e-6)
    # The research note's worked example.
    ex = rlp.leave_one_out_advantages(jnp.asarray([[0.2, -0.1, 0.5, 0.0]]))
    np.testing.assert_allclose(ex[0], [0.0667, -0.3333, 0.4667, -0.2], atol=1e-4)


def test_reward_is_the_log_ratio_and_has_no_gradient():
    a = jnp.asarray([[-0.5, -2.0, -1.0], [-0.1, -3.0, -0.2]])
    b = jnp.asarray([-1.5, -0.7])
    np.testing.assert_allclose(
        rlp.information_gain_reward(a, b), np.asarray(a) - np.asarray(b)[:, None]
    )
    ga, gb = jax.grad(
        lambda x, y: (rlp.information_gain_reward(x, y) ** 2).sum(), argnums=(0, 1)
    )(a, b)
    assert not np.any(np.asarray(ga)) and not np.any(np.asarray(gb))
    # ... nor through the advantages built from it.
    g = jax.grad(lambda x: (rlp.leave_one_out_advantages(x) ** 2).sum())(a)
    assert not np.any(np.asarray(g))


def np_surrogate(logp, old, adv, mask, el, eh):
    ratio = np.exp(np.where(mask > 0, logp - old, 0.0))
    a = adv[..., None]
    unclipped, clipped = ratio * a, np.clip(ratio, 1 - el, 1 + eh) * a
    term = np.where(mask > 0, np.minimum(unclipped, clipped), 0.0)
    length = np.maximum(mask.sum(-1), 1)
    loss = -(term.sum(-1) / length).mean()
    # d loss / d logp: the unclipped branch is the min (or both equal) -> rho A.
    active = (unclipped <= clipped) & (mask > 0)
    grad = -np.where(active, ratio * a, 0.0) / length[..., None] / adv.size
    binds = ((ratio < 1 - el) & (a < 0)) | ((ratio > 1 + eh) & (a > 0))
    clip_fraction = (binds & (mask > 0)).sum() / mask.sum()
    return loss, grad, clip_fraction


def test_clipped_surrogate_matches_numpy_value_gradient_and_clip_fraction():
    rng = np.random.default_rng(1)
    shape = (3, 4, 5)
    old = rng.normal(-1.5, 0.5, shape)
    logp = old + rng.normal(0.0, 0.4, shape)  # ratios in ~[0.3, 3]: both clips bind
    adv = rng.normal(size=shape[:2])
    mask = np.ones(shape)
    mask[0, 0, 2:] = 0
    mask[1, 2, 1:] = 0
    mask[2, 3, :] = 0  # an empty thought adds 0
    el, eh = 0.2, 0.28
    want, want_grad, want_clip = np_surrogate(logp, old, adv, mask, el, eh)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    (loss, metrics), grad = jax.jit(
        jax.value_and_grad(
            lambda lp: rlp.rlp_surrogate(lp, f32(old), f32(adv), f32(mask), el, eh),
            has_aux=True,
        )
    )(f32(logp))
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["clip_fraction"], want_clip, atol=1e-6)
    assert 0.05 < want_clip < 0.95
    # The same as the GRPO-family loss with TRL's "grpo" aggregation.
    flat = lambda x: f32(x).reshape(12, 5)  # noqa: E731
    grpo, _ = jax.jit(
        lambda *a: llm.policy_loss(
            *a, epsilon_low=el, epsilon_high=eh, aggregation="grpo"
        )
    )(flat(logp), flat(old), f32(adv).reshape(12), flat(mask))
    np.testing.assert_allclose(grpo, loss, rtol=1e-5)


def test_surrogate_mask_no_gradient_from_masked_positions():
    logp = jnp.asarray([[[-1.1, -2.0, jnp.inf, -jnp.inf]]])
    old = jnp.asarray([[[-1.2, -1.0, 3.0, jnp.nan]]])
    mask = jnp.asarray([[[1.0, 1.0, 0.0, 0.0]]])
    adv = jnp.asarray([[0.7]])
    (loss, _), g = jax.jit(
        jax.value_and_grad(
            lambda lp: rlp.rlp_surrogate(lp, old, adv, mask), has_aux=True
        )
    )(logp)
    assert np.isfinite(loss)
    assert np.all(np.asarray(g)[0, 0, 2:] == 0) and np.all(np.asarray(g)[0, 0, :2])


def test_ema_update_exact_formula_and_tau_zero_copies():
    rng = np.random.default_rng(2)
    ema = {"a": rng.normal(size=(3, 2)), "b": {"c": rng.normal(size=(4,))}}
    new = {"a": rng.normal(size=(3, 2)), "b": {"c": rng.normal(size=(4,))}}
    ema32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), ema)
    new32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), new)
    got = rlp.ema_update(ema32, new32, 0.999)
    for path in (("a",), ("b", "c")):
        e, n, g = ema, new, got
        for k in path:
            e, n, g = e[k], n[k], g[k]
        np.testing.assert_allclose(g, 0.999 * e + 0.001 * n, rtol=1e-6, atol=1e-7)
    copied = rlp.ema_update(ema32, new32, 0.0)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), copied, new32)
    for tau in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="tau"):
            rlp.ema_update(ema32, new32, tau)


# --- the stream ----------------------------------------------------------------


def test_digit_sum_stream_and_thought_rows():
    data = np.asarray(rlp.digit_sum_stream(jax.random.key(3), 8, 12, (1, 2, 4)))
    for t in range(4, 12):
        np.testing.assert_array_equal(
            data[:, t], (data[:, t - 1] + data[:, t - 2] + data[:, t - 4]) % 10
        )
    key = jax.random.key(4)
    rows = jax.jit(lambda d, c: rlp.sum_thought_batch(key, d, 5, CONFIG, corrupt=c))
    batch = rows(jnp.asarray(data), 0.0)
    tokens, mask, loss_mask = map(np.asarray, batch)
    w = CONFIG.context_length
    assert np.all(tokens[:, w] == START) and np.all(tokens[:, w + 6] == END)
    d1, d2, p2, d3, p3 = (tokens[:, w + i] for i in range(1, 6))
    np.testing.assert_array_equal(p2, (d1 + d2) % 10)
    np.testing.assert_array_equal(p3, (p2 + d3) % 10)
    np.testing.assert_array_equal(p3, tokens[:, w + 7])  # p_3 = x_t
    np.testing.assert_array_equal(d1, tokens[:, w - 1])  # x_{t-1}
    np.testing.assert_array_equal(d2, tokens[:, w - 2])  # x_{t-2}
    np.testing.assert_array_equal(d3, tokens[:, w - 4])  # x_{t-4}
    np.testing.assert_array_equal(loss_mask[:, : w + 1], 0)  # context, <think>
    np.testing.assert_array_equal(loss_mask[:, w + 1 :], 1)
    np.testing.assert_array_equal(mask[:, w:], 1)
    # corrupt = 1: every scratchpad wrong (p_3 != x_t), the loss on x_t only.
    bad = rows(jnp.asarray(data), 1.0)
    tokens, _, loss_mask = map(np.asarray, bad)
    assert np.all(tokens[:, w + 5] != tokens[:, w + 7])
    np.testing.assert_array_equal(loss_mask[:, :-1], 0)
    np.testing.assert_array_equal(loss_mask[:, -1], 1)


# --- the program ---------------------------------------------------------------


def test_rollout_layout_and_reward(setup):
    ro, metrics = setup["ro"], setup["metrics"]
    B, G, N = CONFIG.batch_size, CONFIG.group_size, CONFIG.max_thought_tokens
    assert ro.completion.shape == (B, G, N + 2)
    assert np.all(np.asarray(ro.prompt[:, -1]) == START)
    length = np.asarray(ro.thought_mask).sum(-1)
    assert np.all(length >= 1) and np.all(length <= N)
    comp = np.asarray(ro.completion)
    cmask = np.asarray(ro.completion_mask)
    for b in range(B):
        for g in range(G):
            n = int(cmask[b, g].sum())
            assert comp[b, g, n - 1] == int(ro.target[b])  # x_t last
            assert comp[b, g, n - 2] == END  # right after </think>
    np.testing.assert_allclose(
        ro.rewards,
        np.asarray(ro.logp_think) - np.asarray(ro.logp_ema)[:, None],
        rtol=1e-6,
    )
    np.testing.assert_allclose(np.asarray(ro.advantages).sum(1), 0.0, atol=1e-5)
    # At init phi = theta: the EMA baseline is the model's own no-think guess.
    np.testing.assert_allclose(metrics["logp_ema"], metrics["logp_nothink"])
    for name in ("reward", "logp_think", "logp_ema", "thought_length"):
        assert np.isfinite(metrics[name])


def test_loss_gradient_only_through_thought_tokens(setup):
    ro, loss_grad = setup["ro"], setup["loss_grad"]
    G = CONFIG.group_size
    # An off-policy point so the ratio and its clip matter.
    shift = jax.tree.map(lambda p: p * 1.05, setup["state"].params)

    @jax.jit
    def by_hand(p):
        rows = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
        logp = lm.completion_logprobs(
            p,
            MODEL,
            jnp.repeat(ro.prompt, G, axis=0),
            jnp.repeat(ro.prompt_mask, G, axis=0),
            rows(ro.completion),
            rows(ro.completion_mask),
            1.0,
        ).reshape(ro.completion.shape)
        m = ro.thought_mask.astype(jnp.float32)
        ratio = jnp.exp((logp - ro.old_logp) * m)
        a = ro.advantages[..., None]
        term = jnp.minimum(ratio * a, jnp.clip(ratio, 0.8, 1.2) * a) * m
        return -(term.sum(-1) / m.sum(-1)).mean()

    want, want_grad = jax.value_and_grad(by_hand)(shift)
    (got, _), got_grad = loss_grad(shift, ro)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6),
        got_grad,
        want_grad,
    )
    # The target token (after the thought) adds nothing to the loss or gradient.
    last = ro.completion_mask.sum(-1, keepdims=True) - 1
    flipped = jnp.where(
        jnp.arange(ro.completion.shape[-1]) == last,
        (ro.completion + 1) % 10,
        ro.completion,
    )
    assert not np.array_equal(np.asarray(flipped), np.asarray(ro.completion))
    (got2, _), grad2 = loss_grad(shift, ro._replace(completion=flipped))
    np.testing.assert_allclose(got2, got, rtol=1e-5, atol=1e-9)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
        grad2,
        got_grad,
    )


def test_one_step_improves_the_surrogate_and_updates_the_ema(setup):
    program, loss_grad = setup["program"], setup["loss_grad"]
    params = setup["state"].params
    states, hps = _seeds(program, params, (3, 4), (3e-3, 3e-3))
    new, metrics = setup["run"](states, hps)
    first = jax.tree.map(lambda x: x[0], states)
    ro, _ = setup["rollout"](first, setup["data"], HP)  # the step's own rollout
    (before, _), _ = loss_grad(first.params, ro)
    np.testing.assert_allclose(before, 0.0, atol=1e-6)  # ratio 1, sum A = 0
    (after, _), _ = loss_grad(jax.tree.map(lambda x: x[0], new.params), ro)
    assert float(after) < -1e-3, (float(before), float(after))
    assert np.all(np.asarray(new.step) == 1)
    # Three updates, each followed by phi <- 0.9 phi + 0.1 theta: phi moved.
    moved = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), new.ema_params, states.ema_params
    )
    assert max(jax.tree.leaves(moved)) > 0
    for name in (
        "reward",
        "logp_think",
        "logp_ema",
        "thought_length",
        "clip_fraction",
        "loss",
        "grad_norm",
    ):
        assert np.all(np.isfinite(metrics[name])), name
        assert metrics[name].shape == (2, 1), name
    assert np.all(np.asarray(metrics["clip_fraction"]) >= 0.0)
    # Three updates on one rollout: the ratio leaves 1 after the first.
    assert np.all(np.asarray(metrics["ratio"]) != 1.0)


def test_vmap_over_seeds_and_hparams_compiles_once(setup):
    program, params = setup["program"], setup["state"].params
    for seeds, lrs in (((0, 1), (1e-3, 3e-3)), ((5, 6), (1e-2, 1e-4))):
        states, hps = _seeds(program, params, seeds, lrs)
        out, metrics = setup["run"](states, hps)
        assert metrics["reward"].shape == (2, 1)
        assert np.all(np.asarray(out.step) == 1)
    # Different lrs give different parameters from the same seeds.
    states, hps = _seeds(program, params, (0, 0), (1e-3, 1e-2))
    out, _ = setup["run"](states, hps)
    a, b = jax.tree.leaves(out.params)[0]
    assert not np.allclose(np.asarray(a), np.asarray(b))
    assert len(TRACES) == 1


# --- bad input -----------------------------------------------------------------


def test_bad_input_is_rejected_clearly():
    def config(**kw):
        return rlp.RLPConfig(**{**CONFIG.__dict__, **kw})

    with pytest.raises(ValueError, match="group_size must be >= 2"):
        rlp.make_rlp(config(group_size=1), MODEL)
    with pytest.raises(ValueError, match="must differ"):
        rlp.make_rlp(config(think_end=START), MODEL)
    with pytest.raises(ValueError, match="think_start = 99 is outside"):
        rlp.make_rlp(config(think_start=99), MODEL)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        rlp.make_rlp(config(context_length=30), MODEL)
    with pytest.raises(ValueError, match="min_context"):
        rlp.make_rlp(config(min_context=7), MODEL)
    with pytest.raises(ValueError, match="tau"):
        rlp.RLPHParams.create(tau=1.0)
    with pytest.raises(ValueError, match="tau"):
        rlp.RLPHParams.create(tau=-0.5)
    with pytest.raises(ValueError, match="temperature"):
        rlp.RLPHParams.create(temperature=0.0)
    with pytest.raises(ValueError, match="G >= 2"):
        rlp.leave_one_out_advantages(jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="rlp_surrogate"):
        rlp.rlp_surrogate(
            jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros(2), jnp.ones((2, 3))
        )
    program = rlp.make_rlp(CONFIG, MODEL, HP)
    state = program.init(jax.random.key(0), lm.init_params(jax.random.key(0), MODEL))
    with pytest.raises(ValueError, match="shorter than a context"):
        program.run(state, jnp.zeros((4, 4), jnp.int32), num_steps=1)
    with pytest.raises(ValueError, match=r"\[num_sequences, T\]"):
        program.run(state, jnp.zeros((16,), jnp.int32), num_steps=1)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        program.run(state, jnp.full((4, 10), 40, jnp.int32), num_steps=1)
    with pytest.raises(ValueError, match="integer"):
        program.run(state, jnp.zeros((4, 10)), num_steps=1)
    with pytest.raises(ValueError, match="num_steps"):
        program.run(state, jnp.zeros((4, 10), jnp.int32), num_steps=-1)
