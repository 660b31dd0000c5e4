"""Conversational agents: multi-turn trajectories with agent-token loss masks,
JSONL files, and heuristic / composite / multi-objective rewards.

    from convergence_jax import agents, lm

    trajectory = agents.MultiTurnTrajectory.from_messages(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    )
    tokens, attention_mask, loss_mask = agents.tokenize_trajectory(
        trajectory, lm.ByteTokenizer())
    reward = agents.CompositeReward(
        [(agents.politeness_reward(), 1.0), (agents.length_reward(max_length=200), 1.0)]
    )

See ``docs/agents.md``.
"""

from convergence_jax.agents.reward_model import (
    PreferenceData,
    RewardModelState,
    RewardModelTrainer,
    SyntheticPreferences,
    bradley_terry_loss,
    init_reward_model,
    make_reward_model_trainer,
    preference_data_from_texts,
    reward_scores,
    synthetic_preference_pairs,
)
from convergence_jax.agents.rewards import (
    FALLBACK_REWARD,
    POLITE_MARKERS,
    RUDE_MARKERS,
    SAFETY_BLOCKLIST,
    CompositeReward,
    MultiObjectiveReward,
    RewardFn,
    RewardFunction,
    RewardResult,
    ScoreReport,
    forbidden_phrases_reward,
    length_reward,
    pareto_rank,
    politeness_reward,
    required_phrases_reward,
    reward_function,
    safety_reward,
    score_trajectories,
    text_of,
)
from convergence_jax.agents.trajectory import (
    ROLES,
    MultiTurnTrajectory,
    TokenizedTrajectories,
    Turn,
    load_jsonl,
    save_jsonl,
    tokenize_trajectories,
    tokenize_trajectory,
)

__all__ = [
    "PreferenceData",
    "RewardModelState",
    "RewardModelTrainer",
    "SyntheticPreferences",
    "bradley_terry_loss",
    "init_reward_model",
    "make_reward_model_trainer",
    "preference_data_from_texts",
    "reward_scores",
    "synthetic_preference_pairs",
    "FALLBACK_REWARD",
    "POLITE_MARKERS",
    "ROLES",
    "RUDE_MARKERS",
    "SAFETY_BLOCKLIST",
    "CompositeReward",
    "MultiObjectiveReward",
    "MultiTurnTrajectory",
    "RewardFn",
    "RewardFunction",
    "RewardResult",
    "ScoreReport",
    "TokenizedTrajectories",
    "Turn",
    "forbidden_phrases_reward",
    "length_reward",
    "load_jsonl",
    "pareto_rank",
    "politeness_reward",
    "required_phrases_reward",
    "reward_function",
    "safety_reward",
    "save_jsonl",
    "score_trajectories",
    "text_of",
    "tokenize_trajectories",
    "tokenize_trajectory",
]
