"""The per-request runtime bandit on SQLite, and its HTTP service.

::

    from convergence_jax.runtime import (
        configure_runtime, runtime_select, runtime_update)

    configure_runtime("prompt", arms={"short": {"max_tokens": 128},
                                      "long": {"max_tokens": 512}})
    choice = runtime_select("prompt", user_id="u1")
    ...  # serve the request with choice.params
    runtime_update("prompt", choice.decision_id, reward=1.0)

``convergence-jax serve`` exposes the same over HTTP (see ``docs/runtime.md``).
"""

from convergence_jax.runtime.bandit import (
    BanditConfig,
    DecisionConflictError,
    RewardError,
    Runtime,
    RuntimeBanditError,
    Selection,
    UnknownBanditError,
    UnknownDecisionError,
    Update,
    configure_runtime,
    default_db,
    runtime_expire,
    runtime_select,
    runtime_stats,
    runtime_update,
)

__all__ = [
    "BanditConfig",
    "DecisionConflictError",
    "RewardError",
    "Runtime",
    "RuntimeBanditError",
    "Selection",
    "UnknownBanditError",
    "UnknownDecisionError",
    "Update",
    "configure_runtime",
    "default_db",
    "runtime_expire",
    "runtime_select",
    "runtime_stats",
    "runtime_update",
]
