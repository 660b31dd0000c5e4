"""PPO building blocks against hand-computed numbers and NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import rl


def numpy_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Straight loop over time, float64."""
    T = len(rewards)
    adv = np.zeros(T)
    last = 0.0
    for t in reversed(range(T)):
        nonterminal = 1.0 - terminated[t]
        done = max(terminated[t], truncated[t])
        delta = rewards[t] + gamma * nonterminal * next_values[t] - values[t]
        last = delta + gamma * lam * (1.0 - done) * last
        adv[t] = last
    return adv, adv + values


def test_gae_by_hand_termination_and_truncation():
    # Three steps: a normal step, a truncation, a termination.
    r = jnp.array([1.0, 2.0, 3.0])
    v = jnp.array([0.5, 1.0, 1.5])
    nv = jnp.array([1.0, 4.0, 9.0])  # V(s'_t); s'_1 is the final obs at the limit
    term = jnp.array([False, False, True])
    trunc = jnp.array([False, True, False])
    g, lam = 0.9, 0.8
    adv, ret = rl.gae(r, v, nv, term, trunc, g, lam)
    # t=2 terminated: delta = 3 - 1.5 = 1.5 (no bootstrap), A = 1.5
    # t=1 truncated: delta = 2 + 0.9 * 4 - 1 = 4.6 (bootstraps), A = 4.6 (no carry)
    # t=0: delta = 1 + 0.9 * 1 - 0.5 = 1.4; A = 1.4 + 0.9 * 0.8 * 4.6 = 4.712
    np.testing.assert_allclose(adv, [4.712, 4.6, 1.5], rtol=1e-6)
    np.testing.assert_allclose(ret, [5.212, 5.6, 3.0], rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_gae_matches_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    T = 50
    args = (
        rng.normal(size=T),
        rng.normal(size=T),
        rng.normal(size=T),
        (rng.random(T) < 0.1).astype(float),
        (rng.random(T) < 0.1).astype(float),
    )
    expected = numpy_gae(*args, 0.99, 0.95)
    got = jax.jit(rl.gae)(*(jnp.asarray(a, jnp.float32) for a in args), 0.99, 0.95)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_gae_vmaps_over_envs_and_checks_ranks():
    r = jnp.ones((7, 3))
    z = jnp.zeros((7, 3))
    batched = jax.vmap(rl.gae, in_axes=(1, 1, 1, 1, 1, None, None), out_axes=1)
    adv, _ = batched(r, z, z, z.astype(bool), z.astype(bool), 0.5, 1.0)
    # n steps left: A = sum_{k<n} 0.5^k = 2 - 0.5^(n-1)
    np.testing.assert_allclose(adv[:, 0], [2 - 0.5 ** (n - 1) for n in range(7, 0, -1)])
    with pytest.raises(AssertionError):
        rl.gae(r, z, z, z, z, 0.5, 1.0)  # rank 2: the caller must vmap


def test_ppo_policy_loss_by_hand_and_numpy():
    old = jnp.log(jnp.array([0.5, 0.5, 0.5, 0.5]))
    new = jnp.log(jnp.array([0.75, 0.25, 0.55, 0.45]))  # ratios 1.5, 0.5, 1.1, 0.9
    adv = jnp.array([1.0, 1.0, -2.0, -2.0])
    # min(r A, clip(r) A): 1.2, 0.5, -2.2, -1.8 -> mean -0.575 -> loss 0.575
    loss = rl.ppo_policy_loss(new, old, adv, 0.2)
    np.testing.assert_allclose(loss, 0.575, rtol=1e-6)
    rng = np.random.default_rng(0)
    lp, olp, a = rng.normal(size=(3, 100)) * 0.3
    ratio = np.exp(lp - olp)
    ref = -np.mean(np.minimum(ratio * a, np.clip(ratio, 0.9, 1.1) * a))
    np.testing.assert_allclose(rl.ppo_policy_loss(lp, olp, a, 0.1), ref, rtol=1e-5)


def test_clipped_value_loss_by_hand():
    v = jnp.array([2.0, 0.0])
    old = jnp.array([1.0, 0.0])
    ret = jnp.array([1.0, 1.0])
    # sample 0: clipped V = 1.2: max((2-1)^2, (1.2-1)^2) = 1
    # sample 1: V = old: both (0-1)^2 = 1
    np.testing.assert_allclose(rl.clipped_value_loss(v, old, ret, 0.2), 0.5 * 1.0)
    v = jnp.array([1.5])
    old = jnp.array([0.0])
    ret = jnp.array([2.0])
    # unclipped (1.5-2)^2 = 0.25; clipped V = 0.2: (0.2-2)^2 = 3.24 -> max 3.24
    np.testing.assert_allclose(
        rl.clipped_value_loss(v, old, ret, 0.2), 0.5 * 3.24, rtol=1e-6
    )


def test_entropy_and_advantage_normalization():
    np.testing.assert_allclose(rl.entropy_loss(jnp.array([0.5, 1.5])), -1.0)
    a = rl.normalize_advantages(jnp.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_allclose(a.mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(a.std(), 1.0, rtol=1e-5)
