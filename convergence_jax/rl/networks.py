"""Actor-critic MLPs (flax) with distrax policies and orthogonal initialization."""

from __future__ import annotations

from collections.abc import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ACTIVATIONS", "ActorCritic", "MLP"]

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}
"""Hidden-layer activations by name."""


def _householder_q(a: jax.Array) -> jax.Array:
    """Q of the QR decomposition of ``a`` (``[m, n]``, m >= n) with diag(R) > 0.

    Householder reflections in plain ``jnp``: no LAPACK call. On CPU, jax 0.10
    runs batched LAPACK QR (a ``vmap`` over seeds of ``nn.initializers.orthogonal``)
    on a parallel thread pool that can deadlock on few cores; this form is
    ordinary XLA code and vmaps safely.
    """
    m, n = a.shape
    rows = jnp.arange(m)

    def reflect(k, carry):
        r, q = carry
        x = jnp.where(rows >= k, r[:, k], 0.0)
        sign = jnp.where(x[k] >= 0, 1.0, -1.0)
        v = x.at[k].add(sign * jnp.linalg.norm(x))
        v = v / jnp.maximum(jnp.linalg.norm(v), 1e-30)
        r = r - 2.0 * jnp.outer(v, v @ r)
        q = q - 2.0 * jnp.outer(q @ v, v)  # q <- q H_k
        return r, q

    r, q = jax.lax.fori_loop(0, n, reflect, (a, jnp.eye(m, dtype=a.dtype)))
    return q[:, :n] * jnp.sign(jnp.diagonal(r))


def _orthogonal(scale: float):
    """Orthogonal initializer (Saxe et al. 2014) with the law of
    ``nn.initializers.orthogonal``: Q of a Gaussian matrix, diag(R) > 0."""

    def init(key, shape, dtype=jnp.float32):
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        tall = (max(rows, cols), min(rows, cols))
        q = _householder_q(jax.random.normal(key, tall, jnp.float32))
        if rows < cols:
            q = q.T
        return (scale * q).reshape(shape).astype(dtype)

    return init


class MLP(nn.Module):
    """Dense layers with orthogonal weights (scale sqrt(2)) and zero biases; the
    output layer has its own scale (Engstrom et al. 2020, "Implementation matters
    in deep policy gradients"; Andrychowicz et al. 2021)."""

    hidden_sizes: Sequence[int]
    out_size: int
    activation: str = "tanh"
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for size in self.hidden_sizes:
            x = act(nn.Dense(size, kernel_init=_orthogonal(np.sqrt(2.0)))(x))
        return nn.Dense(self.out_size, kernel_init=_orthogonal(self.out_scale))(x)


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs on the same observation.

    Discrete actions: ``distrax.Categorical(logits)``. Continuous actions: a
    ``distrax.MultivariateNormalDiag(mean, exp(log_std))`` with a state-independent
    ``log_std`` parameter (initialized to 0). Its samples are unbounded: the PPO
    program maps them into the action box (clipping, or ``tanh`` with
    ``squash=True``) and keeps the unbounded sample for the ratio, which is exact
    because the map does not depend on the parameters.

    ``__call__(obs [..., obs_dim]) -> (distribution, value [...])``.
    """

    action_dim: int
    continuous: bool = False
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs: jax.Array):
        out = MLP(self.hidden_sizes, self.action_dim, self.activation, 0.01)(obs)
        value = MLP(self.hidden_sizes, 1, self.activation, 1.0)(obs)[..., 0]
        if not self.continuous:
            return distrax.Categorical(logits=out), value
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        dist = distrax.MultivariateNormalDiag(
            out, jnp.exp(log_std) * jnp.ones_like(out)
        )
        return dist, value
