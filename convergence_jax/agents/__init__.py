"""Conversational agents: multi-turn trajectories with agent-token loss masks, rewards
(heuristic, composite, multi-objective, a Bradley-Terry reward model, an LLM judge),
agents over three backends with tools and plans, host-side conversations, a
customer-service `TaskEnv` whose conversations compile into one program, multi-turn
GRPO / GSPO on it, continual learning (replay, LwF, EWC), offline training from
logged conversations (filtered BC, AWR, hybrid offline -> online), agent
checkpoints and an OpenAI-compatible chat endpoint (``convergence-jax agents train /
evaluate / serve``).

    from convergence_jax import agents, lm

    trajectory = agents.MultiTurnTrajectory.from_messages(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    )
    tokens, attention_mask, loss_mask = agents.tokenize_trajectory(
        trajectory, lm.ByteTokenizer())
    reward = agents.CompositeReward(
        [(agents.politeness_reward(), 1.0), (agents.length_reward(max_length=200), 1.0)]
    )

The server (`agents.serve`), the command line (`agents.cli`, `agents.train`) are
submodules, imported on use (they bring in FastAPI and uvicorn). See
``docs/agents.md``.
"""

from convergence_jax.agents.agent import (
    Backend,
    Completion,
    JaxBackend,
    MultiTurnAgent,
    OpenAIBackend,
    Plan,
    StubBackend,
    check_messages,
)
from convergence_jax.agents.continual import (
    METHODS as CONTINUAL_METHODS,
)
from convergence_jax.agents.continual import (
    Continual,
    ContinualHParams,
    ContinualState,
    PenaltyState,
    ReplayBuffer,
    continual_penalty,
    dataset_source,
    evaluate_tasks,
    ewc_penalty,
    fisher_diagonal,
    lwf_kl,
    make_continual,
    make_schedule,
    penalty_state,
    policy_penalty,
    task_source,
    template_rows,
)
from convergence_jax.agents.conversation import (
    ConversationEnv,
    EpisodeReport,
    Scenario,
)
from convergence_jax.agents.export import (
    AgentCheckpointError,
    load_agent,
    load_chat_agent,
    save_agent,
)
from convergence_jax.agents.judge import JudgeError, LLMJudge, parse_score
from convergence_jax.agents.multiturn import (
    CONTINUAL,
    PROFILES,
    TURN_CREDIT,
    MultiTurnGRPO,
    MultiTurnSFT,
    conversation_rows,
    make_multiturn_grpo,
    make_multiturn_sft,
    train,
    turn_gae,
)
from convergence_jax.agents.offline import (
    ConversationDataset,
    LoadReport,
    OfflineHParams,
    OfflineRows,
    awr_weights,
    log_conversations,
    make_hybrid,
    make_offline_trainer,
    weighted_nll,
)
from convergence_jax.agents.randomizer import DomainRandomizer, UserProfile
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
from convergence_jax.agents.task_env import (
    TaskEnv,
    customer_service_env,
    expert_conversations,
    to_trajectories,
)
from convergence_jax.agents.tools import Tool, ToolAgent, parse_tool_calls
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
    "AgentCheckpointError",
    "Backend",
    "CONTINUAL",
    "CONTINUAL_METHODS",
    "Completion",
    "Continual",
    "ContinualHParams",
    "ContinualState",
    "ConversationDataset",
    "ConversationEnv",
    "DomainRandomizer",
    "EpisodeReport",
    "JaxBackend",
    "JudgeError",
    "LLMJudge",
    "LoadReport",
    "MultiTurnAgent",
    "MultiTurnGRPO",
    "MultiTurnSFT",
    "OfflineHParams",
    "OfflineRows",
    "OpenAIBackend",
    "PROFILES",
    "PenaltyState",
    "TURN_CREDIT",
    "Plan",
    "ReplayBuffer",
    "Scenario",
    "StubBackend",
    "TaskEnv",
    "Tool",
    "ToolAgent",
    "UserProfile",
    "awr_weights",
    "check_messages",
    "continual_penalty",
    "customer_service_env",
    "dataset_source",
    "evaluate_tasks",
    "ewc_penalty",
    "expert_conversations",
    "fisher_diagonal",
    "load_agent",
    "load_chat_agent",
    "log_conversations",
    "lwf_kl",
    "make_continual",
    "make_hybrid",
    "make_multiturn_grpo",
    "make_multiturn_sft",
    "make_offline_trainer",
    "turn_gae",
    "make_schedule",
    "parse_score",
    "parse_tool_calls",
    "save_agent",
    "task_source",
    "to_trajectories",
    "train",
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
    "weighted_nll",
    "penalty_state",
    "policy_penalty",
    "template_rows",
    "conversation_rows",
]
