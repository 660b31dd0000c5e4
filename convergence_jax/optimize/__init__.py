"""Tune any objective with Thompson sampling + evolution: configs, objectives, reports.

``run_optimization(config)`` is the Python entry point and ``convergence-jax optimize``
the command line; both read the same ``OptimizeConfig``. Objectives: JAX functions,
Python callables, HTTP endpoints (``http_objective``) and the bundled simulator.
"""

from convergence_jax.optimize.config import (
    ApiConfig,
    AuthConfig,
    ConfigError,
    JudgeConfig,
    MetricConfig,
    ObjectiveConfig,
    OptimizeConfig,
    OptimizerConfig,
    OutputConfig,
    config_from_dict,
    load_config,
    reward_spec,
)
from convergence_jax.optimize.evaluate import Evaluation, Result, evaluate_batch
from convergence_jax.optimize.http import HttpCallError, http_objective
from convergence_jax.optimize.metrics import MetricSpec, RewardSpec
from convergence_jax.optimize.run import OptimizationResult, run_optimization
from convergence_jax.optimize.simulated import simulated_llm, simulated_llm_mean

__all__ = [
    "ApiConfig",
    "AuthConfig",
    "ConfigError",
    "Evaluation",
    "HttpCallError",
    "JudgeConfig",
    "MetricConfig",
    "MetricSpec",
    "ObjectiveConfig",
    "OptimizationResult",
    "OptimizeConfig",
    "OptimizerConfig",
    "OutputConfig",
    "Result",
    "RewardSpec",
    "config_from_dict",
    "evaluate_batch",
    "http_objective",
    "load_config",
    "reward_spec",
    "run_optimization",
    "simulated_llm",
    "simulated_llm_mean",
]
