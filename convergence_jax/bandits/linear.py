"""Linear (contextual) Thompson sampling (Agrawal & Goyal 2013).

Agrawal & Goyal, "Thompson sampling for contextual bandits with linear
payoffs", ICML 2013: with ``B = lambda I + sum_s x_s x_s^T`` and
``f = sum_s r_s x_s``, the posterior of the weight vector is
``N(mu_hat, v^2 B^-1)`` with ``mu_hat = B^-1 f``. Each round draws one
``theta`` and plays the arm whose context ``x_a`` maximizes ``x_a^T theta``.

The state keeps the data part only (``gram = sum x x^T`` and ``f``; all zeros =
no data); the regularization ``lambda`` (prior precision) lives in the params,
so sweeping it is a ``vmap`` and discounting (``gamma``) decays the data back
toward the prior ``N(0, v^2 / lambda I)``. Solves use a Cholesky factor
``B = L L^T``: ``mu_hat = cho_solve(L, f)`` and
``theta = mu_hat + v L^-T z`` (``Cov = v^2 L^-T L^-1 = v^2 B^-1``), never ``B^-1``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.linalg import cho_solve, solve_triangular

from convergence_jax.bandits import _sampling
from convergence_jax.bandits._core import (
    BanditAlgorithm,
    check_batch_shape,
    check_gamma,
    check_k,
    check_positive,
    is_concrete,
    top_k_indices,
)

__all__ = ["LinearParams", "LinearState", "linear"]


@struct.dataclass
class LinearParams:
    regularization: jax.Array
    """lambda > 0: prior precision of the weights (B = lambda I + gram)."""
    noise_scale: jax.Array
    """v > 0: scales the posterior covariance v^2 B^-1 (exploration)."""
    gamma: jax.Array
    """Discount in (0, 1] applied to ``gram`` and ``f`` before each update."""


@struct.dataclass
class LinearState:
    gram: jax.Array
    """``[..., d, d]``: discounted sum of x x^T of the played contexts."""
    f: jax.Array
    """``[..., d]``: discounted sum of r x."""


def linear(dim: int) -> BanditAlgorithm:
    """Linear Thompson sampling over ``dim``-dimensional contexts.

    Functions (shapes with a batch ``...`` of independent bandits):

    * ``init(params, batch_shape=())``: zeros ``gram [..., d, d]``, ``f [..., d]``.
    * ``sample(key, state, params) -> theta [..., d]``.
    * ``select(key, state, params, contexts, k=None)``: ``contexts [..., K, d]``;
      int32 ``[...]`` (argmax of ``contexts @ theta``) or ``[..., k]``.
    * ``update(key, state, contexts, rewards, params)``: played contexts
      ``[..., d]`` with rewards ``[...]``, or ``[..., M, d]`` with ``[..., M]``.
    * ``posterior_mean(state, params) -> mu_hat [..., d]``.
    """
    where = "linear"
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"{where}: dim must be an int >= 1, got {dim!r}")
    dim = int(dim)
    default_params = LinearParams(
        regularization=jnp.asarray(1.0, jnp.float32),
        noise_scale=jnp.asarray(0.5, jnp.float32),
        gamma=jnp.asarray(1.0, jnp.float32),
    )

    def check_params(params: LinearParams, fn: str) -> None:
        check_positive("params.regularization", f"{where}.{fn}", params.regularization)
        check_positive("params.noise_scale", f"{where}.{fn}", params.noise_scale)
        check_gamma(f"{where}.{fn}", params.gamma)

    def batch_shape(state: LinearState, fn: str) -> tuple[int, ...]:
        if state.f.ndim < 1 or state.f.shape[-1] != dim:
            raise ValueError(
                f"{where}.{fn}: state.f must be [..., {dim}], got {state.f.shape}"
            )
        shape = state.f.shape[:-1]
        if state.gram.shape != shape + (dim, dim):
            raise ValueError(
                f"{where}.{fn}: state.gram must be {shape + (dim, dim)}, got "
                f"{state.gram.shape}"
            )
        return shape

    def cholesky(state: LinearState, params: LinearParams) -> jax.Array:
        reg = jnp.asarray(params.regularization, jnp.float32)
        eye = jnp.eye(dim, dtype=jnp.float32)
        return jnp.linalg.cholesky(state.gram + reg[..., None, None] * eye)

    def init(params: LinearParams, batch_shape=()) -> LinearState:
        check_params(params, "init")
        shape = check_batch_shape(f"{where}.init", batch_shape)
        return LinearState(
            gram=jnp.zeros(shape + (dim, dim), jnp.float32),
            f=jnp.zeros(shape + (dim,), jnp.float32),
        )

    def posterior_mean(state: LinearState, params: LinearParams) -> jax.Array:
        """``mu_hat = B^-1 f``, ``[..., d]``."""
        batch_shape(state, "posterior_mean")
        chol = cholesky(state, params)
        return cho_solve((chol, True), state.f[..., None])[..., 0]

    def sample(key, state: LinearState, params: LinearParams) -> jax.Array:
        """One posterior draw of the weights, ``theta ~ N(mu_hat, v^2 B^-1)``."""
        check_params(params, "sample")
        shape = batch_shape(state, "sample")
        chol = cholesky(state, params)
        mu_hat = cho_solve((chol, True), state.f[..., None])
        z = _sampling.standard_normal(key, shape + (dim, 1))
        # L^T u = z  =>  u = L^-T z has covariance (L L^T)^-1 = B^-1.
        u = solve_triangular(chol, z, lower=True, trans="T")
        v = jnp.asarray(params.noise_scale, jnp.float32)[..., None, None]
        return (mu_hat + v * u)[..., 0]

    def select(key, state: LinearState, params: LinearParams, contexts, k=None):
        """Arm(s) maximizing ``contexts @ theta`` for one draw ``theta``."""
        shape = batch_shape(state, "select")
        contexts = jnp.asarray(contexts, jnp.float32)
        if contexts.shape[: len(shape)] != shape or contexts.ndim != len(shape) + 2:
            raise ValueError(
                f"{where}.select: contexts must be batch_shape + (K, {dim}) = "
                f"{shape} + (K, {dim}), got {contexts.shape}"
            )
        if contexts.shape[-1] != dim:
            raise ValueError(
                f"{where}.select: contexts must have last dimension {dim}, got "
                f"{contexts.shape}"
            )
        check_k(f"{where}.select", k, contexts.shape[-2])
        theta = sample(key, state, params)
        scores = jnp.einsum("...kd,...d->...k", contexts, theta)
        return top_k_indices(scores, k)

    def update(key, state: LinearState, contexts, rewards, params: LinearParams):
        """Discount by ``gamma``; add ``x x^T`` to ``gram`` and ``r x`` to ``f``."""
        del key
        check_params(params, "update")
        shape = batch_shape(state, "update")
        contexts = jnp.asarray(contexts, jnp.float32)
        rewards = jnp.asarray(rewards, jnp.float32)
        if contexts.shape == shape + (dim,) and rewards.shape == shape:
            contexts, rewards = contexts[..., None, :], rewards[..., None]
        n = len(shape)
        ok = (
            contexts.ndim == n + 2
            and contexts.shape[:n] == shape
            and contexts.shape[-1] == dim
            and rewards.shape == contexts.shape[:-1]
        )
        if not ok:
            raise ValueError(
                f"{where}.update: expected contexts {shape} + ({dim},) with rewards "
                f"{shape}, or contexts {shape} + (M, {dim}) with rewards {shape} + "
                f"(M,); got contexts {contexts.shape}, rewards {rewards.shape}"
            )
        if is_concrete(contexts, rewards) and not (
            np.all(np.isfinite(np.asarray(contexts)))
            and np.all(np.isfinite(np.asarray(rewards)))
        ):
            raise ValueError(f"{where}.update: contexts and rewards must be finite")
        gamma = jnp.asarray(params.gamma, jnp.float32)
        gram = gamma[..., None, None] * state.gram + jnp.einsum(
            "...md,...me->...de", contexts, contexts
        )
        f = gamma[..., None] * state.f + jnp.einsum(
            "...md,...m->...d", contexts, rewards
        )
        return LinearState(gram=gram, f=f)

    return BanditAlgorithm(
        default_params=default_params,
        init=init,
        sample=sample,
        select=select,
        update=update,
        posterior_mean=posterior_mean,
    )
