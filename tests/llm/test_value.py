"""Token GAE, the value loss, token PPO and VAPO vs NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import llm
from tests.llm.test_losses import np_policy_loss


def np_token_gae(rewards, values, mask, gamma, lam):
    """Loop over each row's valid tokens only (float64)."""
    rewards, values, mask = (np.asarray(x, np.float64) for x in (rewards, values, mask))
    lam = np.broadcast_to(np.asarray(lam, np.float64), rewards.shape[:1])
    adv = np.zeros_like(values)
    for i in range(values.shape[0]):
        idx = np.flatnonzero(mask[i] > 0)
        next_adv, next_v = 0.0, 0.0
        for t in idx[::-1]:
            delta = rewards[i, t] + gamma * next_v - values[i, t]
            next_adv = delta + gamma * lam[i] * next_adv
            next_v = values[i, t]
            adv[i, t] = next_adv
    return adv, np.where(mask > 0, adv + values, 0.0)


def random_value_batch(seed, batch, length, holes=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, size=batch)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.float32)
    if holes:  # e.g. tool output inside a completion
        mask = mask * (rng.uniform(size=mask.shape) < 0.7)
        mask[:, 0] = 1.0
    rewards = rng.normal(size=(batch, length)).astype(np.float32)
    values = rng.normal(size=(batch, length)).astype(np.float32)
    rewards[mask == 0] = 1e4  # junk in the padding must not leak
    values[mask == 0] = -1e4
    return rewards, values, mask


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.7, 1.0, "per_row"])
def test_token_gae_matches_numpy(holes, lam):
    rewards, values, mask = random_value_batch(int(holes), 5, 8, holes)
    if lam == "per_row":
        lam = np.linspace(0.1, 0.9, 5).astype(np.float32)
    adv, ret = jax.jit(llm.token_gae)(
        jnp.asarray(rewards),
        jnp.asarray(values),
        jnp.asarray(mask),
        gamma=0.9,
        gae_lambda=jnp.asarray(lam),
    )
    want_adv, want_ret = np_token_gae(rewards, values, mask, 0.9, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)


def test_token_gae_lambda_one_gives_monte_carlo_returns():
    rewards, values, mask = random_value_batch(3, 4, 6)
    _, ret = llm.token_gae(
        jnp.asarray(rewards),
        jnp.asarray(values),
        jnp.asarray(mask),
        gamma=1.0,
        gae_lambda=1.0,
    )
    r = np.where(mask > 0, rewards, 0.0)
    mc = np.cumsum(r[:, ::-1], axis=1)[:, ::-1] * mask
    np.testing.assert_allclose(ret, mc, rtol=1e-5, atol=1e-4)


def test_masked_whiten():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    mask = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    got = llm.masked_whiten(x, mask)
    v = np.array([1.0, 2, 3, 4, 5])
    # Tunix's masked_whiten: Bessel-corrected variance, + 1e-8 inside the sqrt
    expected = (v - v.mean()) / np.sqrt(v.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(got[mask > 0], expected, rtol=1e-6)
    assert not np.allclose(got[mask > 0], (v - v.mean()) / v.std(), rtol=1e-3)
    assert float(got[1, 2]) == 0.0


@pytest.mark.parametrize("clip_eps", [None, 0.2])
def test_value_loss_value_and_gradient(clip_eps):
    rng = np.random.default_rng(7)
    _, values, mask = random_value_batch(4, 6, 7)
    old = (values + rng.normal(0, 0.3, size=values.shape)).astype(np.float32)
    returns = rng.normal(size=values.shape).astype(np.float32)
    m = mask.astype(np.float64)
    v, o, r = (
        np.where(m > 0, x, 0.0).astype(np.float64) for x in (values, old, returns)
    )
    un = (v - r) ** 2
    d_un = 2 * (v - r)
    if clip_eps is None:
        per, dper = un, d_un
    else:
        vc = o + np.clip(v - o, -clip_eps, clip_eps)
        cl = (vc - r) ** 2
        inside = np.abs(v - o) < clip_eps
        d_cl = np.where(inside, 2 * (vc - r), 0.0)
        per, dper = np.maximum(un, cl), np.where(un >= cl, d_un, d_cl)
    want = (0.5 * per * m).sum() / m.sum()
    want_grad = 0.5 * dper * m / m.sum()

    def f(x):
        return llm.token_value_loss(
            x,
            jnp.asarray(old),
            jnp.asarray(returns),
            jnp.asarray(mask),
            clip_eps=clip_eps,
        )[0]

    value, grad = jax.value_and_grad(f)(jnp.asarray(values))
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)


def test_vapo_lambda():
    got = llm.vapo_lambda(jnp.array([1, 20, 40, 1000, 10000]), alpha=0.05)
    np.testing.assert_allclose(got, [0.0, 0.0, 0.5, 0.98, 0.998], rtol=1e-6)


def test_vapo_advantages_are_decoupled():
    rewards, values, mask = random_value_batch(5, 4, 30)
    adv, ret = llm.vapo_advantages(
        jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), alpha=0.1
    )
    lam = np.clip(1 - 1 / (0.1 * mask.sum(1)), 0, 1)
    want_adv, _ = np_token_gae(rewards, values, mask, 1.0, lam)
    _, want_ret = np_token_gae(rewards, values, mask, 1.0, 1.0)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-4)


def test_positive_nll_value_gradient_and_empty():
    rng = np.random.default_rng(2)
    _, _, mask = random_value_batch(6, 5, 6)
    logp = -np.abs(rng.normal(size=mask.shape)).astype(np.float32)
    logp[mask == 0] = np.inf
    positive = np.array([True, False, True, True, False])
    w = mask * positive[:, None]
    want = -(np.where(w > 0, logp, 0) * w).sum() / w.sum()
    value, grad = jax.value_and_grad(llm.positive_nll_loss)(
        jnp.asarray(logp), jnp.asarray(mask), jnp.asarray(positive)
    )
    np.testing.assert_allclose(value, want, rtol=1e-6)
    np.testing.assert_allclose(grad, -w / w.sum(), rtol=1e-6)
    none = llm.positive_nll_loss(
        jnp.asarray(logp), jnp.asarray(mask), jnp.zeros(5, bool)
    )
    assert float(none) == 0.0
    with pytest.raises(ValueError, match="positive"):
        llm.positive_nll_loss(jnp.asarray(logp), jnp.asarray(mask), jnp.zeros(4, bool))


def test_vapo_loss_value_and_gradient():
    rng = np.random.default_rng(11)
    rewards, values, mask = random_value_batch(8, 4, 7)
    logp = -np.abs(rng.normal(1.0, 0.5, size=mask.shape)).astype(np.float32)
    old = (logp + rng.normal(0, 0.25, size=mask.shape)).astype(np.float32)
    adv, _ = llm.vapo_advantages(
        jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), alpha=0.5
    )
    positive = np.array([True, False, True, False])
    pg, pg_grad = np_policy_loss(
        logp,
        old,
        np.asarray(adv),
        mask,
        eps_low=0.2,
        eps_high=0.28,
        aggregation="dapo",
    )
    w = mask * positive[:, None]
    nll = -(logp * w).sum() / w.sum()
    want, want_grad = pg + 0.1 * nll, pg_grad - 0.1 * w / w.sum()

    def f(lp):
        return llm.vapo_loss(
            lp, jnp.asarray(old), adv, jnp.asarray(mask), jnp.asarray(positive)
        )[0]

    value, grad = jax.jit(jax.value_and_grad(f))(jnp.asarray(logp))
    np.testing.assert_allclose(value, want, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-4, atol=1e-6)


def test_token_ppo_loss_composes_policy_and_value():
    rng = np.random.default_rng(12)
    rewards, values, mask = random_value_batch(9, 3, 6)
    logp = -np.abs(rng.normal(1.0, 0.5, size=mask.shape)).astype(np.float32)
    old = (logp + rng.normal(0, 0.25, size=mask.shape)).astype(np.float32)
    old_values = values + 0.1
    args = [jnp.asarray(x) for x in (rewards, values, mask)]
    adv, ret = llm.token_gae(*args, gamma=1.0, gae_lambda=0.95)
    loss, metrics = jax.jit(llm.token_ppo_loss)(
        jnp.asarray(logp),
        jnp.asarray(old),
        jnp.asarray(values),
        jnp.asarray(old_values),
        adv,
        ret,
        jnp.asarray(mask),
    )
    pg, _ = np_policy_loss(logp, old, np.asarray(adv), mask, aggregation="token-mean")
    vf, _ = llm.token_value_loss(
        jnp.asarray(values),
        jnp.asarray(old_values),
        ret,
        jnp.asarray(mask),
        clip_eps=0.2,
    )
    np.testing.assert_allclose(metrics["policy_loss"], pg, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(loss, pg + 0.5 * float(vf), rtol=2e-5, atol=1e-6)


def test_shape_errors_name_the_argument():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="rewards"):
        llm.token_gae(jnp.zeros((2, 4)), x, x)
    with pytest.raises(ValueError, match="returns"):
        llm.token_value_loss(x, x, jnp.zeros((3, 3)), x)
