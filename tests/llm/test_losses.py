"""GRPO-family losses: value and gradient vs an independent NumPy reference,
TRL's invariants and Tunix's fixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import llm

# ----------------------------------------------------------------------------
# NumPy reference (float64). The gradient is derived by hand, not by autodiff:
# loss = sum_{i,t} c_{i,t} L_{i,t}, with c the aggregation's linear weights.


def np_aggregation_weights(mask, mode, max_len=None, num_items=None, norm=None):
    """c_{i,t} such that aggregate(L) = sum c L (every mode is linear in L)."""
    mask = np.asarray(mask, np.float64)
    batch, length = mask.shape
    counts = mask.sum(1, keepdims=True)
    rows = max((counts[:, 0] > 0).sum(), 1)
    if mode == "grpo":
        return mask / np.maximum(counts, 1) / batch
    if mode in ("bnpo", "token-mean"):
        return mask / max(mask.sum(), 1)
    if mode == "dr_grpo":
        return mask / (batch * (length if max_len is None else max_len))
    if mode == "dapo":
        return mask / max(mask.sum() if num_items is None else num_items, 1)
    if mode == "sequence-mean-token-mean":
        return mask / np.maximum(counts, 1) / rows
    if mode == "sequence-mean-token-scale":
        return mask / (length if norm is None else norm) / rows
    if mode == "seq-mean-token-sum":
        return mask / rows
    if mode == "sequence-mean-token-sum-norm":
        return mask / (rows if norm is None else norm)
    raise AssertionError(mode)


def np_kl(logp, ref, estimator):
    x = ref - logp
    value = {"k1": -x, "k2": 0.5 * x**2, "k3": np.exp(x) - x - 1}[estimator]
    grad = {"k1": np.ones_like(x), "k2": -x, "k3": 1 - np.exp(x)}[estimator]
    return value, grad  # grad wrt logp


def np_log_weights(logp, old, mask, level, group_size=None):
    lr = np.where(mask > 0, logp - old, 0.0)
    counts = np.maximum(mask.sum(1, keepdims=True), 1)
    if level == "token":
        return lr
    if level in ("sequence", "sequence_token"):
        return np.broadcast_to((lr * mask).sum(1, keepdims=True) / counts, lr.shape)
    # gepo, sums of log-probs, direct (non-log-space) expectation: float64 is fine
    # for the short sequences of these tests.
    log_p = (np.where(mask > 0, logp, 0) * mask).sum(1)
    q = np.exp((np.where(mask > 0, old, 0) * mask).sum(1)).reshape(-1, group_size)
    expectation = np.repeat((q**2).sum(1) / q.sum(1), group_size)
    return np.broadcast_to((log_p - np.log(expectation))[:, None], lr.shape)


def np_policy_loss(
    logp,
    old,
    adv,
    mask,
    *,
    level="token",
    eps_low=0.2,
    eps_high=None,
    delta=None,
    dual_clip=None,
    aggregation="grpo",
    max_len=None,
    num_items=None,
    ref=None,
    beta=0.0,
    kl_estimator="k3",
    seq_weights=None,
    group_size=None,
):
    """Returns (loss, d loss / d logp) in float64."""
    logp, old, mask = (np.asarray(x, np.float64) for x in (logp, old, mask))
    eps_high = eps_low if eps_high is None else eps_high
    adv = np.asarray(adv, np.float64)
    a = adv[:, None] * np.ones_like(logp) if adv.ndim == 1 else adv
    a = np.where(mask > 0, a, 0.0)
    w = np.exp(np_log_weights(logp, old, mask, level, group_size))
    clip = np.clip(w, 1 - eps_low, 1 + eps_high)
    top = w if delta is None else np.minimum(w, delta)
    per = -np.minimum(top * a, clip * a)
    # d per / d log w: -a w where the unclipped branch is the minimum and is not
    # capped by delta; inside the clip range both branches move with w.
    inside = (w >= 1 - eps_low) & (w <= 1 + eps_high)
    active = inside | ((a > 0) & (w < 1 - eps_low)) | ((a < 0) & (w > 1 + eps_high))
    if delta is not None:
        active &= w < delta
    dper = np.where(active, -a * w, 0.0)
    if dual_clip is not None:
        floor = -dual_clip * a
        use_floor = (a < 0) & (floor < per)
        per = np.where(use_floor, floor, per)
        dper = np.where(use_floor, 0.0, dper)
    if seq_weights is not None:
        sw = np.asarray(seq_weights, np.float64)[:, None]
        per, dper = per * sw, dper * sw
    c = np_aggregation_weights(mask, aggregation, max_len, num_items)
    g_logw = c * dper
    counts = np.maximum(mask.sum(1, keepdims=True), 1)
    if level in ("token", "sequence_token"):
        grad = g_logw
    elif level == "sequence":
        grad = g_logw.sum(1, keepdims=True) * mask / counts
    else:  # gepo: log w_i = sum_t m logp
        grad = g_logw.sum(1, keepdims=True) * mask
    if ref is not None:
        kl, dkl = np_kl(
            np.where(mask > 0, logp, 0), np.where(mask > 0, ref, 0), kl_estimator
        )
        per = per + beta * kl
        grad = grad + c * beta * dkl
    return (c * per).sum(), grad * (mask > 0)


def random_batch(seed, batch, length, *, group_size=None, garbage=True):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, length + 1, size=batch)
    lengths[0] = length  # at least one full row
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.float32)
    logp = -np.abs(rng.normal(1.0, 0.7, size=(batch, length))).astype(np.float32)
    old = (logp + rng.normal(0, 0.25, size=(batch, length))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.3, size=(batch, length))).astype(np.float32)
    adv = rng.normal(size=batch).astype(np.float32)
    if garbage:  # padding holds junk that must not leak (TRL's padding test)
        for x in (logp, old, ref):
            x[mask == 0] = 1e4
    return logp, old, adv, mask, ref


def jax_value_and_grad(logp, old, adv, mask, **kw):
    def f(lp):
        return llm.policy_loss(lp, jnp.asarray(old), jnp.asarray(adv), mask, **kw)[0]

    return jax.value_and_grad(f)(jnp.asarray(logp))


CASES = [
    dict(level="token"),
    dict(level="token", eps_high=0.28, aggregation="dapo"),
    dict(level="token", aggregation="dapo", num_items=57.0),
    dict(level="token", aggregation="bnpo", delta=1.25),
    dict(level="token", aggregation="dr_grpo", max_len=13),
    dict(level="token", dual_clip=3.0, aggregation="token-mean"),
    dict(level="token", ref="ref", beta=0.1, kl_estimator="k1"),
    dict(level="token", ref="ref", beta=0.1, kl_estimator="k2", aggregation="bnpo"),
    dict(level="token", ref="ref", beta=0.05, kl_estimator="k3"),
    dict(level="token", seq_weights="random", aggregation="seq-mean-token-sum"),
    dict(level="sequence", eps_low=0.05, eps_high=0.06),
    dict(level="sequence", aggregation="sequence-mean-token-mean"),
    dict(level="sequence_token", eps_low=0.05, eps_high=0.06),
    dict(level="sequence_token", aggregation="sequence-mean-token-scale"),
    dict(level="gepo", group_size=3, eps_low=0.2),
    dict(level="gepo", group_size=2, aggregation="sequence-mean-token-sum-norm"),
]

JAX_NAMES = dict(
    level="ratio_level",
    eps_low="epsilon_low",
    eps_high="epsilon_high",
    max_len="max_completion_length",
    ref="ref_logp",
    seq_weights="sequence_weights",
)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("shape", [(6, 9), (12, 5)])
def test_value_and_gradient_match_numpy(case, shape):
    kw = dict(CASES[case])
    logp, old, adv, mask, ref = random_batch(case * 7 + shape[0], *shape)
    if kw.get("ref") == "ref":
        kw["ref"] = ref
    if kw.get("seq_weights") == "random":
        kw["seq_weights"] = (np.arange(shape[0]) % 3 != 0).astype(np.float32)
    want_value, want_grad = np_policy_loss(logp, old, adv, mask, **kw)
    jax_kw = {JAX_NAMES.get(k, k): v for k, v in kw.items()}
    for k in ("ref_logp", "sequence_weights"):
        if k in jax_kw:
            jax_kw[k] = jnp.asarray(jax_kw[k])
    value, grad = jax_value_and_grad(logp, old, adv, jnp.asarray(mask), **jax_kw)
    np.testing.assert_allclose(value, want_value, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-4, atol=1e-6)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_numpy_gradient_matches_finite_differences(level):
    # Checks the hand-derived reference itself (float64 central differences).
    logp, old, adv, mask, ref = random_batch(3, 4, 5, garbage=False)
    logp, old = logp.astype(np.float64), old.astype(np.float64)
    kw = dict(level=level, ref=ref, beta=0.1, eps_high=0.3)
    _, grad = np_policy_loss(logp, old, adv, mask, **kw)
    h = 1e-6
    fd = np.zeros_like(logp)
    for idx in np.ndindex(logp.shape):
        up, down = logp.copy(), logp.copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (
            np_policy_loss(up, old, adv, mask, **kw)[0]
            - np_policy_loss(down, old, adv, mask, **kw)[0]
        ) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=1e-6)


# ----------------------------------------------------------------------------
# TRL invariants (research note rlp-sao-preference-tunix-offline.md §4.2, §11)


def on_policy_example():
    adv = llm.grpo_advantages(jnp.array([1.0, 0.0]), 2)  # TRL epsilon 1e-4
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # |o| = 3, 1
    logp = jnp.log(jnp.array([[0.5, 0.4, 0.3, 0.2], [0.6, 0.1, 0.1, 0.1]]))
    return logp, adv, mask


@pytest.mark.parametrize(
    "aggregation,expected",
    [
        ("grpo", 0.0),
        ("bnpo", -0.3535034),
        ("dapo", -0.3535034),
        ("dr_grpo", -0.1767517),
    ],
)
def test_on_policy_loss_per_aggregation(aggregation, expected):
    logp, adv, mask = on_policy_example()

    def f(lp):
        return llm.policy_loss(
            lp,
            jax.lax.stop_gradient(lp),
            adv,
            mask,
            aggregation=aggregation,
            max_completion_length=4,
        )[0]

    value, grad = jax.value_and_grad(f)(logp)
    np.testing.assert_allclose(value, expected, atol=1e-6)
    # ratio 1 -> dL/dlogp_{i,t} = -A_i c_{i,t}: the gradient is never zero.
    c = np_aggregation_weights(np.asarray(mask), aggregation, max_len=4)
    np.testing.assert_allclose(grad, -np.asarray(adv)[:, None] * c, rtol=1e-5)
    assert np.abs(grad).sum() > 0


@pytest.mark.parametrize("name", sorted(llm.LOSSES))
def test_all_truncated_gives_zero_loss_and_gradient(name):
    # TRL test_train_with_mask_truncated_completions_all_masked: every completion
    # truncated + overlong filtering -> loss 0, no parameter change.
    logp, old, adv, mask, ref = random_batch(0, 4, 6)
    logp[:] = np.inf  # junk everywhere: all positions end up masked
    mask = llm.overlong_filter_mask(jnp.asarray(mask), jnp.ones(4, bool))

    def f(lp):
        return llm.policy_loss_from_config(
            name,
            lp,
            jnp.asarray(old),
            jnp.asarray(adv),
            mask,
            ref_logp=jnp.asarray(ref),
            beta=0.1,
            group_size=2,
        )[0]

    value, grad = jax.value_and_grad(f)(jnp.asarray(logp))
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_clipping_zeroes_the_gradient():
    # §4.2: A > 0 and rho > 1 + eps_high -> 0; A < 0 and rho < 1 - eps_low -> 0;
    # otherwise dL/dlogp = -A rho (before normalization).
    old = jnp.zeros((4, 1))
    logp = jnp.log(jnp.array([[1.5], [0.5], [1.1], [0.9]]))
    adv = jnp.array([1.0, -1.0, 1.0, -1.0])
    mask = jnp.ones((4, 1))

    def f(lp):
        return llm.policy_loss(
            lp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.28, aggregation="bnpo"
        )[0]

    grad = jax.grad(f)(logp)[:, 0] * 4
    np.testing.assert_allclose(grad, [0.0, 0.0, -1.1, 0.9], rtol=1e-6)
    _, metrics = llm.policy_loss(logp, old, adv, mask, epsilon_high=0.28)
    np.testing.assert_allclose(metrics["clip_high"], 0.25)
    np.testing.assert_allclose(metrics["clip_low"], 0.25)


def test_off_policy_mask_trl_examples():
    # trl tests/test_grpo_trainer.py::test_get_off_policy_mask.
    adv = jnp.array([1.0, -1.0, -1.0])
    logp = jnp.array([[-2.0, -2.0], [-0.5, -0.5], [-2.0, -2.0]])
    sampling = jnp.zeros((3, 2))
    mask = jnp.ones((3, 2))
    got = llm.off_policy_mask(adv, logp, sampling, mask, 1.0)
    np.testing.assert_array_equal(got, [1.0, 1.0, 0.0])
    # test_get_off_policy_mask_padding: padded values (+-10,000) are ignored.
    logp_p = jnp.concatenate([logp, jnp.full((3, 2), -1e4)], axis=1)
    sampling_p = jnp.concatenate([sampling, jnp.full((3, 2), 1e4)], axis=1)
    mask_p = jnp.concatenate([mask, jnp.zeros((3, 2))], axis=1)
    got = llm.off_policy_mask(adv, logp_p, sampling_p, mask_p, 1.0)
    np.testing.assert_array_equal(got, [1.0, 1.0, 0.0])


# ----------------------------------------------------------------------------
# Tunix fixtures


def test_tunix_aggregate_table():
    # google/tunix tests/rl/common_test.py::test_aggregate_loss_values (HEAD),
    # copied from the research note §5.4.
    per_token = jnp.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    table = {
        "token-mean": (1.8 / 5, {}),
        "sequence-mean-token-mean": ((0.3 / 2 + 1.5 / 3) / 2, {}),
        "sequence-mean-token-scale": ((0.3 / 3 + 1.5 / 3) / 2, {}),
        "seq-mean-token-sum": (0.9, {}),
        "sequence-mean-token-sum-norm": (1.8 / 2, {}),
    }
    for mode, (want, kw) in table.items():
        np.testing.assert_allclose(llm.aggregate(per_token, mask, mode, **kw), want)
    np.testing.assert_allclose(
        llm.aggregate(per_token, mask, "sequence-mean-token-scale", norm=3.14),
        (0.3 / 3.14 + 1.5 / 3.14) / 2,
        rtol=1e-6,
    )
    for mode in llm.AGGREGATIONS:  # all-zero masks give 0
        assert float(llm.aggregate(per_token, jnp.zeros_like(mask), mode)) == 0.0


def test_trl_and_tunix_names_agree_without_empty_rows():
    per_token = jax.random.normal(jax.random.key(1), (4, 7))
    mask = (jax.random.uniform(jax.random.key(2), (4, 7)) < 0.7).at[:, 0].set(True)
    for trl_name, tunix_name in llm.TUNIX_AGGREGATION.items():
        np.testing.assert_allclose(
            llm.aggregate(per_token, mask, trl_name),
            llm.aggregate(per_token, mask, tunix_name),
            rtol=1e-6,
        )


@pytest.mark.parametrize("level", ["token", "sequence_token"])
def test_tunix_packed_vs_unpacked_fixture_unpacked_side(level):
    # google/tunix tests/rl/algo_core_test.py::test_grpo_loss_fn_packed_equals_unpacked
    # (HEAD): A (adv 1.5, 3 tokens), B (adv 3.0, 1 token), ratio 1,
    # sequence-mean-token-mean -> -2.25 (never the per-row -1.875).
    logp = jnp.log(jnp.array([[0.2, 0.3, 0.4], [0.5, 0.9, 0.9]]))
    mask = jnp.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, _ = llm.policy_loss(
        logp,
        jax.lax.stop_gradient(logp),
        jnp.array([1.5, 3.0]),
        mask,
        ratio_level=level,
        aggregation="sequence-mean-token-mean",
    )
    np.testing.assert_allclose(loss, -2.25, rtol=1e-6)


# ----------------------------------------------------------------------------
# KL, GEPO, registry, jit / vmap, bad input


@pytest.mark.parametrize("estimator", llm.KL_ESTIMATORS)
def test_kl_estimators(estimator):
    logp, _, _, _, ref = random_batch(5, 3, 4, garbage=False)
    want, _ = np_kl(logp.astype(np.float64), ref.astype(np.float64), estimator)
    got = llm.kl_penalty(jnp.asarray(logp), jnp.asarray(ref), estimator)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(llm.kl_penalty(jnp.asarray(ref), jnp.asarray(ref)), 0)


def test_gepo_log_space_is_finite_for_long_sequences():
    # 4,000 tokens at log-prob -2 each: p = exp(-8000) underflows in float64, the
    # log-space weight does not. Equal logp and old -> log w = -log-spread only.
    length, group = 4000, 4
    old = jnp.full((group, length), -2.0).at[1].set(-2.001)
    logp = old
    log_w = llm.gepo_log_weights(logp, old, jnp.ones((group, length)), group)
    assert np.all(np.isfinite(log_w))
    log_q = np.asarray(old, np.float64).sum(1)
    log_e = np.logaddexp.reduce(2 * log_q) - np.logaddexp.reduce(log_q)
    # atol: a float32 sum of 4,000 log-probs near -8,000 carries ~1e-4 rounding.
    np.testing.assert_allclose(log_w, log_q - log_e, atol=1e-3)
    # length-normalized variant: per-token means
    log_w_n = llm.gepo_log_weights(
        logp, old, jnp.ones((group, length)), group, length_normalize=True
    )
    log_qn = np.asarray(old, np.float64).mean(1)
    log_en = np.logaddexp.reduce(2 * log_qn) - np.logaddexp.reduce(log_qn)
    np.testing.assert_allclose(log_w_n, log_qn - log_en, atol=1e-6)


@pytest.mark.parametrize("name", sorted(llm.LOSSES))
def test_every_recipe_jits_and_vmaps_over_epsilon(name):
    logp, old, adv, mask, _ = random_batch(9, 4, 6)
    args = [jnp.asarray(x) for x in (logp, old, adv, mask)]

    @jax.jit
    def f(eps):
        return llm.policy_loss_from_config(
            name, *args, epsilon_low=eps, epsilon_high=eps, group_size=2
        )[0]

    eps = jnp.array([0.1, 0.2, 0.3])
    batched = jax.vmap(f)(eps)
    config = llm.LOSSES[name]
    for e, got in zip(eps, batched, strict=True):
        want, _ = np_policy_loss(
            logp,
            old,
            adv,
            mask,
            level=config.ratio_level,
            eps_low=float(e),
            eps_high=float(e),
            aggregation=config.aggregation,
            group_size=2,
        )
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_bad_input_names_the_argument():
    logp, old, adv, mask, _ = (jnp.asarray(x) for x in random_batch(1, 4, 5))
    with pytest.raises(ValueError, match="old_logp"):
        llm.policy_loss(logp, old[:, :4], adv, mask)
    with pytest.raises(ValueError, match="mask"):
        llm.policy_loss(logp, old, adv, mask[:3])
    with pytest.raises(ValueError, match="advantages"):
        llm.policy_loss(logp, old, adv[:3], mask)
    with pytest.raises(ValueError, match="ref_logp"):
        llm.policy_loss(logp, old, adv, mask, ref_logp=old[:2])
    with pytest.raises(ValueError, match="logp must be"):
        llm.policy_loss(logp[0], old[0], adv, mask[0])
    with pytest.raises(ValueError, match="aggregation"):
        llm.policy_loss(logp, old, adv, mask, aggregation="mean")
    with pytest.raises(ValueError, match="ratio_level"):
        llm.policy_loss(logp, old, adv, mask, ratio_level="word")
    with pytest.raises(ValueError, match="group_size"):
        llm.policy_loss(logp, old, adv, mask, ratio_level="gepo")
    with pytest.raises(ValueError, match="group_size"):
        llm.policy_loss(logp, old, adv, mask, ratio_level="gepo", group_size=3)
    with pytest.raises(ValueError, match="estimator"):
        llm.kl_penalty(logp, old, "k4")
    with pytest.raises(ValueError, match="loss"):
        llm.policy_loss_from_config("ppo", logp, old, adv, mask)
