"""Sim-to-real tools on gymnax: domain randomization, system identification,
progressive transfer schedules and the sim-to-real gap.

* ``param_ranges`` / ``sample_params`` / ``DomainRandomization``: every
  environment of a batch draws its own ``EnvParams`` within validated ranges (one
  ``vmap``; the bounds are traced, so new bounds do not recompile);
  ``domain_randomization(ranges)`` is an ``rl.PPOConfig.env_wrapper``.
* ``identify_gradient`` (optax through the JAX dynamics) and
  ``identify_evolution`` (``evolution.ga``): the real system's parameters from
  logged ``(obs, action, next_obs)``.
* ``transfer_schedule``: linear, cosine, exponential and step schedules of the
  real share of a sim/real mix; ``mix_params`` applies one.
* ``rollout`` / ``episode_returns`` / ``return_gap`` and the distances ``mmd2``,
  ``wasserstein_per_dim`` between state-visitation samples.
"""

from convergence_jax.sim2real.gap import (
    Trajectory,
    episode_returns,
    mmd2,
    return_gap,
    rollout,
    visited_states,
    wasserstein_1d,
    wasserstein_per_dim,
)
from convergence_jax.sim2real.randomization import (
    DERIVED,
    DOMAINS,
    DomainRandomization,
    DRParams,
    DRState,
    LogUniform,
    ParamRanges,
    Uniform,
    check_ranges,
    domain_randomization,
    param_ranges,
    sample_one,
    sample_params,
)
from convergence_jax.sim2real.schedules import SCHEDULES, mix_params, transfer_schedule
from convergence_jax.sim2real.sysid import (
    DYNAMICS,
    SysIdResult,
    identify_evolution,
    identify_gradient,
    sysid_loss,
)

__all__ = [
    "DERIVED",
    "DOMAINS",
    "DRParams",
    "DRState",
    "DYNAMICS",
    "DomainRandomization",
    "LogUniform",
    "ParamRanges",
    "SCHEDULES",
    "SysIdResult",
    "Trajectory",
    "Uniform",
    "check_ranges",
    "domain_randomization",
    "episode_returns",
    "identify_evolution",
    "identify_gradient",
    "mix_params",
    "mmd2",
    "param_ranges",
    "return_gap",
    "rollout",
    "sample_one",
    "sample_params",
    "sysid_loss",
    "transfer_schedule",
    "visited_states",
    "wasserstein_1d",
    "wasserstein_per_dim",
]
