"""Vectorized Thompson sampling and fast exact Beta/Gamma sampling.

Algorithms are factories returning a ``BanditAlgorithm`` NamedTuple of pure
functions (``default_params, init, sample, select, update, posterior_mean``)::

    from convergence_jax import bandits

    ts = bandits.beta_bernoulli(num_arms=10)
    params = ts.default_params
    state = ts.init(params, batch_shape=(1000,))
    arms = ts.select(key, state, params)                 # int32 [1000]
    state = ts.update(key, state, arms, rewards, params)

See ``docs/bandits.md`` for the math, citations and measured speed.
"""

from convergence_jax.bandits._core import BanditAlgorithm, top_k_indices
from convergence_jax.bandits._sampling import (
    approx_beta,
    approx_normal,
    sample_beta,
    sample_gamma,
    sample_log_gamma,
    sample_student_scale,
    standard_normal,
)
from convergence_jax.bandits.baselines import (
    EmpiricalState,
    EpsilonGreedyParams,
    UniformParams,
    epsilon_greedy,
    uniform,
)
from convergence_jax.bandits.linear import LinearParams, LinearState, linear
from convergence_jax.bandits.simulation import (
    bernoulli_kl,
    lai_robbins_regret,
    simulate_bernoulli,
)
from convergence_jax.bandits.thompson import (
    BetaBernoulliParams,
    BetaBernoulliState,
    GaussianParams,
    GaussianState,
    beta_bernoulli,
    gaussian,
)

BANDITS = {"beta_bernoulli": beta_bernoulli, "gaussian": gaussian}
"""Thompson-sampling factories over arms (same signature: ``f(num_arms=K)``)."""

BASELINES = {"epsilon_greedy": epsilon_greedy, "uniform": uniform}
"""Baseline policies with the same interface."""

__all__ = [
    "BANDITS",
    "BASELINES",
    "BanditAlgorithm",
    "BetaBernoulliParams",
    "BetaBernoulliState",
    "EmpiricalState",
    "EpsilonGreedyParams",
    "GaussianParams",
    "GaussianState",
    "LinearParams",
    "LinearState",
    "UniformParams",
    "approx_beta",
    "approx_normal",
    "bernoulli_kl",
    "beta_bernoulli",
    "epsilon_greedy",
    "gaussian",
    "lai_robbins_regret",
    "linear",
    "sample_beta",
    "sample_gamma",
    "sample_log_gamma",
    "sample_student_scale",
    "simulate_bernoulli",
    "standard_normal",
    "top_k_indices",
    "uniform",
]
