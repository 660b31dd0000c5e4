"""Population-based training of PPO agents as one compiled program.

    pbt = make_pbt(PPOConfig(anneal_lr=False, ...), num_rounds=40, exploit_every=4)
    hparams = rl.hparam_grid(config, learning_rate=[...8 values...])
    states, metrics = jax.jit(pbt)(key, hparams)

``N = len(hparams)`` agents are vmapped; every ``exploit_every`` updates (inside
the ``lax.scan``) each agent is scored by the mean training return of those
updates and ``exploit_explore`` runs: the bottom 20% copy the weights, optimizer
state and observation statistics of a top-20% agent and perturb its
hyperparameters. With ``exploit=False`` the same program is N independent runs
from the same starting points (the baseline PBT is measured against).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from convergence_jax.loop.hparams import exploit_explore
from convergence_jax.rl.ppo import PPOConfig, PPOHParams, make_ppo

__all__ = ["DEFAULT_PBT_BOUNDS", "make_pbt"]

DEFAULT_PBT_BOUNDS = {
    "learning_rate": (1e-5, 1e-2),
    "ent_coef": (0.0, 0.1),
    "clip_eps": (0.05, 0.5),
    "gae_lambda": (0.8, 1.0),
    "gamma": (0.9, 0.999),
    "vf_coef": (0.1, 2.0),
    "max_grad_norm": (0.1, 10.0),
    "reward_scale": (0.01, 10.0),
}


def make_pbt(
    config: PPOConfig,
    num_rounds: int,
    exploit_every: int,
    *,
    quantile: float = 0.2,
    factors: tuple[float, float] = (0.8, 1.25),
    bounds: dict[str, tuple[float, float]] | None = None,
    exploit: bool = True,
) -> Callable:
    """``pbt(key, hparams [N]) -> (states [N], metrics)``; jit it.

    ``metrics`` holds the per-update PPO metrics ``[num_rounds, exploit_every,
    N]`` plus ``score [num_rounds, N]`` (what the rule ranked), ``source
    [num_rounds, N]`` (whom each agent copied) and ``hparams`` (each round's
    values, ``[num_rounds, N]`` leaves).
    """
    for name, value in (("num_rounds", num_rounds), ("exploit_every", exploit_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"make_pbt: {name} must be an int >= 1, got {value!r}")
    if config.anneal_lr:
        raise ValueError(
            "make_pbt: use PPOConfig(anneal_lr=False); PBT owns the learning rate"
        )
    if config.num_devices != 1:
        raise ValueError("make_pbt: agents are vmapped on one device (num_devices=1)")
    bounds = {**DEFAULT_PBT_BOUNDS, **(bounds or {})}
    unknown = set(bounds) - set(PPOHParams.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"make_pbt: bounds for unknown hyperparameters {sorted(unknown)}"
        )
    lo = PPOHParams(**{k: jnp.float32(v[0]) for k, v in bounds.items()})
    hi = PPOHParams(**{k: jnp.float32(v[1]) for k, v in bounds.items()})
    ppo = make_ppo(config)

    def train_segment(state, hparams):
        def body(state, _):
            return ppo.update(state, hparams)

        return jax.lax.scan(body, state, None, exploit_every)

    def pbt(key: jax.Array, hparams: PPOHParams):
        n = hparams.learning_rate.shape[0]
        k_init, k_rounds = jax.random.split(key)
        states = jax.vmap(ppo.init)(jax.random.split(k_init, n), hparams)

        def round_(carry, key):
            states, hparams = carry
            states, metrics = jax.vmap(train_segment)(states, hparams)
            returns = metrics["episode_return"]  # [N, exploit_every]
            seen = jnp.isfinite(returns)
            score = jnp.where(
                seen.any(1),
                jnp.where(seen, returns, 0.0).sum(1) / jnp.maximum(seen.sum(1), 1),
                jnp.nan,
            )
            if exploit:
                source, new_hparams = exploit_explore(
                    key, score, hparams, lo, hi, quantile, factors
                )
                copied = jax.tree.map(
                    lambda x: x[source],
                    (states.params, states.opt_state, states.obs_stats),
                )
                states = states.replace(
                    params=copied[0], opt_state=copied[1], obs_stats=copied[2]
                )
            else:
                source, new_hparams = jnp.arange(n, dtype=jnp.int32), hparams
            out = {
                **jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), metrics),
                "score": score,
                "source": source,
                "hparams": hparams,
            }
            return (states, new_hparams), out

        (states, _), metrics = jax.lax.scan(
            round_, (states, hparams), jax.random.split(k_rounds, num_rounds)
        )
        return states, metrics

    return pbt
