"""Thompson sampling with conjugate posteriors: Beta-Bernoulli and Normal-Gamma.

Both keep **sufficient statistics** in the state (all zeros = no data) and the
prior in the params; posterior parameters are formed from the two when
sampling. So ``jax.tree.map(jnp.zeros_like, state)`` resets every arm to the
prior and ``jax.tree.map(lambda x: x[..., idx], state)`` moves arms around.

Discounting (Raj & Kalyani 2017, "Taming non-stationary bandits: a Bayesian
approach", discounted Thompson sampling): each ``update`` first multiplies the
statistics by ``params.gamma`` in (0, 1] and then adds the new observations, so
old evidence decays geometrically and posteriors drift back to the prior.
``gamma = 1`` (the default) is the stationary algorithm.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from convergence_jax.bandits import _sampling
from convergence_jax.bandits._core import (
    BanditAlgorithm,
    arm_sums,
    batch_shape_of,
    check_batch_shape,
    check_choice,
    check_gamma,
    check_k,
    check_num_arms,
    check_positive,
    is_concrete,
    observations,
    top_k_indices,
)

__all__ = [
    "BetaBernoulliParams",
    "BetaBernoulliState",
    "GaussianParams",
    "GaussianState",
    "beta_bernoulli",
    "gaussian",
]

_SAMPLERS = ("exact", "approx")


# ----------------------------------------------------------------------------------
# Beta-Bernoulli


@struct.dataclass
class BetaBernoulliParams:
    """Prior Beta(prior_alpha, prior_beta) and discount; scalars or ``[K]`` arrays."""

    prior_alpha: jax.Array
    """Prior pseudo-successes (> 0); 1 with ``prior_beta = 1`` is uniform."""
    prior_beta: jax.Array
    """Prior pseudo-failures (> 0)."""
    gamma: jax.Array
    """Discount in (0, 1] applied to the statistics before each update."""


@struct.dataclass
class BetaBernoulliState:
    """Sufficient statistics, ``[..., K]`` float32."""

    successes: jax.Array
    """Discounted sum of (fractional or Bernoulli-drawn) rewards per arm."""
    failures: jax.Array
    """Discounted sum of 1 - reward per arm."""


def beta_bernoulli(
    num_arms: int,
    reward_update: str = "fractional",
    sampler: str = "exact",
) -> BanditAlgorithm:
    """Beta-Bernoulli Thompson sampling (Thompson 1933; Agrawal & Goyal 2012).

    Posterior of arm ``a``: ``Beta(prior_alpha + S_a, prior_beta + F_a)`` with
    ``S_a``/``F_a`` the (discounted) successes/failures. Its mean is
    ``alpha_n / (alpha_n + beta_n)``.

    Args:
      num_arms: K, static.
      reward_update: rewards are in [0, 1]. "fractional" adds ``r`` to successes and
        ``1 - r`` to failures; "bernoulli" first draws ``r~ ~ Bernoulli(r)`` and adds
        that (Agrawal & Goyal 2012, "Analysis of Thompson sampling for the
        multi-armed bandit problem", Algorithm 2), which keeps the posterior a
        true Beta-Bernoulli one and uses the update's key.
      sampler: "exact" draws Beta variates exactly (``sample_beta``); "approx"
        uses the moment-matched normal clipped to [0, 1] (``approx_beta``), about
        2x faster, accurate when arms have many observations.

    Eager calls raise ``ValueError`` for rewards outside [0, 1]; under ``jit``
    they are clipped to [0, 1].
    """
    where = "beta_bernoulli"
    num_arms = check_num_arms(where, num_arms)
    check_choice(where, "reward_update", reward_update, ("fractional", "bernoulli"))
    check_choice(where, "sampler", sampler, _SAMPLERS)
    default_params = BetaBernoulliParams(
        prior_alpha=jnp.asarray(1.0, jnp.float32),
        prior_beta=jnp.asarray(1.0, jnp.float32),
        gamma=jnp.asarray(1.0, jnp.float32),
    )

    def check_params(params: BetaBernoulliParams, fn: str) -> None:
        check_positive("params.prior_alpha", f"{where}.{fn}", params.prior_alpha)
        check_positive("params.prior_beta", f"{where}.{fn}", params.prior_beta)
        check_gamma(f"{where}.{fn}", params.gamma)

    def posterior(state: BetaBernoulliState, params: BetaBernoulliParams):
        batch_shape_of(where, state.successes, num_arms)
        chex.assert_equal_shape([state.successes, state.failures])
        return params.prior_alpha + state.successes, params.prior_beta + state.failures

    def init(params: BetaBernoulliParams, batch_shape=()) -> BetaBernoulliState:
        check_params(params, "init")
        shape = check_batch_shape(f"{where}.init", batch_shape) + (num_arms,)
        zeros = jnp.zeros(shape, jnp.float32)
        return BetaBernoulliState(successes=zeros, failures=zeros)

    def sample(key, state: BetaBernoulliState, params: BetaBernoulliParams):
        """Posterior draws of the arm means, ``[..., K]``."""
        check_params(params, "sample")
        a, b = posterior(state, params)
        if sampler == "exact":
            return _sampling.beta_unchecked(key, a, b, f"{where}.sample")
        return _sampling.approx_beta(key, a, b)

    def select(key, state: BetaBernoulliState, params: BetaBernoulliParams, k=None):
        """Argmax (``k=None``, int32 ``[...]``) or top-k (``[..., k]``) of one draw."""
        check_k(f"{where}.select", k, num_arms)
        return top_k_indices(sample(key, state, params), k)

    def update(key, state: BetaBernoulliState, arms, rewards, params):
        """Discount by ``gamma``, then add the observations (duplicates add up)."""
        check_params(params, "update")
        batch_shape = batch_shape_of(f"{where}.update", state.successes, num_arms)
        arms, rewards = observations(
            f"{where}.update", arms, rewards, batch_shape, num_arms
        )
        if is_concrete(rewards):
            r = np.asarray(rewards)
            if not np.all((r >= 0) & (r <= 1)):
                bad = r[~((r >= 0) & (r <= 1))].reshape(-1)[0]
                raise ValueError(
                    f"{where}.update: rewards must be in [0, 1], got {bad!r} (use "
                    "gaussian() for unbounded rewards)"
                )
        rewards = jnp.clip(rewards, 0.0, 1.0)
        if reward_update == "bernoulli":
            draws = jax.random.uniform(key, rewards.shape, jnp.float32)
            rewards = (draws < rewards).astype(jnp.float32)
        gamma = params.gamma
        return BetaBernoulliState(
            successes=gamma * state.successes + arm_sums(arms, rewards, num_arms),
            failures=gamma * state.failures + arm_sums(arms, 1.0 - rewards, num_arms),
        )

    def posterior_mean(state: BetaBernoulliState, params: BetaBernoulliParams):
        """``alpha_n / (alpha_n + beta_n)``, ``[..., K]``."""
        a, b = posterior(state, params)
        return a / (a + b)

    return BanditAlgorithm(
        default_params=default_params,
        init=init,
        sample=sample,
        select=select,
        update=update,
        posterior_mean=posterior_mean,
    )


# ----------------------------------------------------------------------------------
# Normal-Gamma (unknown mean and variance)


@struct.dataclass
class GaussianParams:
    """Normal-Gamma prior NG(mu, lambda | prior_mean, prior_kappa, prior_alpha,
    prior_beta) on each arm's mean ``mu`` and precision ``lambda``; and discount."""

    prior_mean: jax.Array
    """Prior guess of the mean (mu_0)."""
    prior_kappa: jax.Array
    """Pseudo-observations behind ``prior_mean`` (kappa_0 > 0)."""
    prior_alpha: jax.Array
    """Shape of the Gamma prior on the precision (alpha_0 > 0)."""
    prior_beta: jax.Array
    """Rate of the Gamma prior on the precision (beta_0 > 0)."""
    gamma: jax.Array
    """Discount in (0, 1] applied to the statistics before each update."""


@struct.dataclass
class GaussianState:
    """Sufficient statistics, ``[..., K]`` float32 (Welford form, stable in f32)."""

    count: jax.Array
    """Discounted number of observations n."""
    mean: jax.Array
    """Sample mean x_bar (0 with no data; not discounted: it is a ratio)."""
    m2: jax.Array
    """Discounted sum of squared deviations from the mean, sum (x - x_bar)^2."""


def gaussian(num_arms: int, sampler: str = "exact") -> BanditAlgorithm:
    """Gaussian Thompson sampling with a Normal-Gamma prior (unknown variance).

    With n observations of mean x_bar and ``m2 = sum (x - x_bar)^2`` (Murphy 2007,
    "Conjugate Bayesian analysis of the Gaussian distribution", eqs. 85-89)::

        kappa_n = kappa_0 + n
        mu_n    = (kappa_0 mu_0 + n x_bar) / kappa_n
        alpha_n = alpha_0 + n / 2
        beta_n  = beta_0 + m2 / 2 + kappa_0 n (x_bar - mu_0)^2 / (2 kappa_n)

    The exact draw of an arm mean takes ``tau ~ Gamma(alpha_n, rate=beta_n)`` then
    ``mu ~ N(mu_n, 1 / (kappa_n tau))``, i.e. ``mu_n + sqrt(beta_n / kappa_n) z /
    sqrt(G)`` with ``G ~ Gamma(alpha_n, 1)``: a Student-t with ``2 alpha_n``
    degrees of freedom, location ``mu_n`` and scale ``sqrt(beta_n / (alpha_n
    kappa_n))`` (Murphy eq. 97). ``sampler="approx"`` draws a normal with that
    location and scale (the t's large-``alpha_n`` limit; skips the Gamma draw).
    ``posterior_mean`` is ``mu_n``.

    Discounting multiplies ``count`` and ``m2`` by ``gamma`` (the raw sums n, sum x,
    sum x^2 all scale by ``gamma``; the mean, their ratio, does not change).

    Rewards may be any finite reals (eager calls reject NaN / inf).
    """
    where = "gaussian"
    num_arms = check_num_arms(where, num_arms)
    check_choice(where, "sampler", sampler, _SAMPLERS)
    default_params = GaussianParams(
        prior_mean=jnp.asarray(0.0, jnp.float32),
        prior_kappa=jnp.asarray(1.0, jnp.float32),
        prior_alpha=jnp.asarray(1.0, jnp.float32),
        prior_beta=jnp.asarray(1.0, jnp.float32),
        gamma=jnp.asarray(1.0, jnp.float32),
    )

    def check_params(params: GaussianParams, fn: str) -> None:
        for name in ("prior_kappa", "prior_alpha", "prior_beta"):
            check_positive(f"params.{name}", f"{where}.{fn}", getattr(params, name))
        if is_concrete(params.prior_mean) and not np.all(
            np.isfinite(np.asarray(params.prior_mean))
        ):
            raise ValueError(f"{where}.{fn}: params.prior_mean must be finite")
        check_gamma(f"{where}.{fn}", params.gamma)

    def posterior(state: GaussianState, params: GaussianParams):
        """(mu_n, kappa_n, alpha_n, beta_n), each ``[..., K]``."""
        batch_shape_of(where, state.count, num_arms)
        chex.assert_equal_shape([state.count, state.mean, state.m2])
        n, x_bar = state.count, state.mean
        kappa_0, mu_0 = params.prior_kappa, params.prior_mean
        kappa_n = kappa_0 + n
        mu_n = (kappa_0 * mu_0 + n * x_bar) / kappa_n
        alpha_n = params.prior_alpha + 0.5 * n
        shift = x_bar - mu_0
        beta_n = (
            params.prior_beta
            + 0.5 * state.m2
            + kappa_0 * n * shift * shift / (2 * kappa_n)
        )
        return mu_n, kappa_n, alpha_n, beta_n

    def init(params: GaussianParams, batch_shape=()) -> GaussianState:
        check_params(params, "init")
        shape = check_batch_shape(f"{where}.init", batch_shape) + (num_arms,)
        zeros = jnp.zeros(shape, jnp.float32)
        return GaussianState(count=zeros, mean=zeros, m2=zeros)

    def sample(key, state: GaussianState, params: GaussianParams):
        """Posterior draws of the arm means, ``[..., K]``."""
        check_params(params, "sample")
        mu_n, kappa_n, alpha_n, beta_n = posterior(state, params)
        if sampler == "exact":
            t = _sampling.student_scale_unchecked(key, alpha_n, f"{where}.sample")
            return mu_n + jnp.sqrt(beta_n / kappa_n) * t
        return _sampling.approx_normal(
            key, mu_n, jnp.sqrt(beta_n / (alpha_n * kappa_n))
        )

    def select(key, state: GaussianState, params: GaussianParams, k=None):
        """Argmax (``k=None``, int32 ``[...]``) or top-k (``[..., k]``) of one draw."""
        check_k(f"{where}.select", k, num_arms)
        return top_k_indices(sample(key, state, params), k)

    def update(key, state: GaussianState, arms, rewards, params: GaussianParams):
        """Discount by ``gamma``, then merge the observations (Chan et al. 1979).

        A batch ``[..., M]`` is summarized per arm (count, mean, sum of squared
        deviations; duplicate arms add up) and merged with the pairwise formula
        ``m2 = m2_a + m2_b + delta^2 n_a n_b / n``.
        """
        del key
        check_params(params, "update")
        batch_shape = batch_shape_of(f"{where}.update", state.count, num_arms)
        arms, rewards = observations(
            f"{where}.update", arms, rewards, batch_shape, num_arms
        )
        if is_concrete(rewards) and not np.all(np.isfinite(np.asarray(rewards))):
            raise ValueError(f"{where}.update: rewards must be finite (no NaN/inf)")
        n_a = params.gamma * state.count
        m2_a = params.gamma * state.m2
        mean_a = state.mean
        n_b = arm_sums(arms, jnp.ones_like(rewards), num_arms)
        seen = n_b > 0
        mean_b = arm_sums(arms, rewards, num_arms) / jnp.where(seen, n_b, 1.0)
        deviation = rewards - jnp.take_along_axis(
            mean_b, jnp.clip(arms, 0, num_arms - 1), axis=-1
        )
        m2_b = arm_sums(arms, deviation * deviation, num_arms)
        n = n_a + n_b
        safe_n = jnp.where(seen, n, 1.0)
        delta = mean_b - mean_a
        mean = jnp.where(seen, mean_a + delta * (n_b / safe_n), mean_a)
        m2 = m2_a + jnp.where(seen, m2_b + delta * delta * (n_a * n_b / safe_n), 0.0)
        return GaussianState(count=n, mean=mean, m2=m2)

    def posterior_mean(state: GaussianState, params: GaussianParams):
        """``mu_n``, ``[..., K]``."""
        return posterior(state, params)[0]

    return BanditAlgorithm(
        default_params=default_params,
        init=init,
        sample=sample,
        select=select,
        update=update,
        posterior_mean=posterior_mean,
    )
