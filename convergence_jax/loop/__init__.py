"""The autonomous training loop (after tensor-optix), rebuilt in three layers.

Pure core: the backoff scheduler (``backoff_scheduler``: ACTIVE -> COOLING ->
DORMANT -> WATCHDOG as a transition function), the PBT rule
(``exploit_explore``) and the adaptive-noise formula. Program: ``make_pbt``, N
PPO agents vmapped with exploit/explore inside one scan. Shells: ``RLOptimizer``
(the loop controller), ``BatchPipeline`` / ``LivePipeline``,
``CheckpointRegistry`` (orbax, atomic JSON manifest), ``BackoffOptimizer`` /
``PBTOptimizer``, ``PolicyManager``, ``MetaController``, ``RegimeDetector``,
``EnsembleAgent``, and ``PPOAgent`` / ``DQNAgent``, which put jitted PPO / DQN behind
the six-method ``Agent`` protocol.
"""

from convergence_jax.loop.agent import Agent, JaxPolicy, PPOAgent, check_agent
from convergence_jax.loop.backoff import (
    ACTIVE,
    COOLING,
    DORMANT,
    STATE_NAMES,
    WATCHDOG,
    BackoffEvent,
    BackoffParams,
    BackoffState,
    backoff_scheduler,
    trend,
)
from convergence_jax.loop.controller import LoopCallback, LoopResult, RLOptimizer
from convergence_jax.loop.diagnostics import (
    Diagnostics,
    EntropyCollapse,
    ExplorationCollapse,
    KLDrift,
    LossSpike,
    action_spread,
    default_rules,
)
from convergence_jax.loop.dqn_agent import DQNAgent
from convergence_jax.loop.evaluator import (
    EvalMetrics,
    Evaluator,
    MinEvaluator,
    SharpeEvaluator,
)
from convergence_jax.loop.hparams import BackoffOptimizer, PBTOptimizer, exploit_explore
from convergence_jax.loop.loggers import (
    RichDashboard,
    TensorBoardCallback,
    WandbCallback,
)
from convergence_jax.loop.pbt import DEFAULT_PBT_BOUNDS, make_pbt
from convergence_jax.loop.pipeline import (
    BatchPipeline,
    EpisodeData,
    LivePipeline,
    episode_length,
    every_n_seconds,
    every_n_steps,
    on_episode_end,
    window_steps_for,
)
from convergence_jax.loop.policy import (
    EnsembleAgent,
    MetaAction,
    MetaController,
    PolicyManager,
    RegimeDetector,
    adaptive_noise,
    meta_features,
    pearson,
    slope,
)
from convergence_jax.loop.presearch import PresearchResult, presearch
from convergence_jax.loop.presets import PPO_PRESETS, PPOLoopPreset, ppo_preset
from convergence_jax.loop.registry import CheckpointRegistry, Snapshot
from convergence_jax.loop.tuning import (
    AdaptiveOptimizer,
    MomentumOptimizer,
    SPSAOptimizer,
)

__all__ = [
    "ACTIVE",
    "COOLING",
    "DEFAULT_PBT_BOUNDS",
    "DORMANT",
    "STATE_NAMES",
    "WATCHDOG",
    "AdaptiveOptimizer",
    "Agent",
    "BackoffEvent",
    "BackoffOptimizer",
    "BackoffParams",
    "BackoffState",
    "BatchPipeline",
    "CheckpointRegistry",
    "Diagnostics",
    "EnsembleAgent",
    "EntropyCollapse",
    "EpisodeData",
    "EvalMetrics",
    "Evaluator",
    "ExplorationCollapse",
    "DQNAgent",
    "JaxPolicy",
    "KLDrift",
    "LivePipeline",
    "LoopCallback",
    "LoopResult",
    "LossSpike",
    "MetaAction",
    "MetaController",
    "MinEvaluator",
    "MomentumOptimizer",
    "PBTOptimizer",
    "PPOAgent",
    "PPOLoopPreset",
    "PPO_PRESETS",
    "PolicyManager",
    "PresearchResult",
    "RLOptimizer",
    "RegimeDetector",
    "RichDashboard",
    "SPSAOptimizer",
    "SharpeEvaluator",
    "Snapshot",
    "TensorBoardCallback",
    "WandbCallback",
    "action_spread",
    "adaptive_noise",
    "backoff_scheduler",
    "check_agent",
    "default_rules",
    "episode_length",
    "every_n_seconds",
    "every_n_steps",
    "exploit_explore",
    "make_pbt",
    "meta_features",
    "on_episode_end",
    "pearson",
    "ppo_preset",
    "presearch",
    "slope",
    "trend",
    "window_steps_for",
]
