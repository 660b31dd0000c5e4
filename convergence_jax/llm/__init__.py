"""Token-policy RL: GRPO-family advantages and losses, token GAE and VAPO, and
synthetic verifiable tasks (pure functions).

from convergence_jax import llm

adv = llm.ADVANTAGES["grpo"](rewards, group_size=8)          # [N]
loss, metrics = llm.policy_loss_from_config(
    "dapo", logp, old_logp, adv, mask)                       # [N, T] inputs
task = llm.tasks.addition(num_digits=3, tokenizer=lm.ByteTokenizer())
rewards = task.reward(completions, completion_mask, task.sample(key, 8))
"""

from convergence_jax.llm import tasks
from convergence_jax.llm.advantages import (
    ADVANTAGES,
    batch_std_advantages,
    dr_grpo_advantages,
    dynamic_sampling_mask,
    grpo_advantages,
    overlong_filter_mask,
    rloo_advantages,
    select_groups,
    soft_overlong_punishment,
)
from convergence_jax.llm.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    LOSSES,
    RATIO_LEVELS,
    TUNIX_AGGREGATION,
    PolicyLossConfig,
    aggregate,
    gepo_log_weights,
    importance_log_weights,
    kl_penalty,
    off_policy_mask,
    policy_loss,
    policy_loss_from_config,
)
from convergence_jax.llm.tasks import (
    TASKS,
    SFTBatch,
    Task,
    TaskBatch,
    TextTask,
    addition,
    countdown,
    countdown_score,
    reasoning_gym_task,
    reverse,
    sorting,
)
from convergence_jax.llm.value import (
    masked_whiten,
    positive_nll_loss,
    token_gae,
    token_ppo_loss,
    token_value_loss,
    vapo_advantages,
    vapo_lambda,
    vapo_loss,
)

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "LOSSES",
    "RATIO_LEVELS",
    "SFTBatch",
    "TASKS",
    "TUNIX_AGGREGATION",
    "PolicyLossConfig",
    "Task",
    "TaskBatch",
    "TextTask",
    "addition",
    "aggregate",
    "batch_std_advantages",
    "countdown",
    "countdown_score",
    "dr_grpo_advantages",
    "dynamic_sampling_mask",
    "gepo_log_weights",
    "grpo_advantages",
    "importance_log_weights",
    "kl_penalty",
    "masked_whiten",
    "off_policy_mask",
    "overlong_filter_mask",
    "policy_loss",
    "policy_loss_from_config",
    "positive_nll_loss",
    "reasoning_gym_task",
    "reverse",
    "rloo_advantages",
    "select_groups",
    "soft_overlong_punishment",
    "sorting",
    "tasks",
    "token_gae",
    "token_ppo_loss",
    "token_value_loss",
    "vapo_advantages",
    "vapo_lambda",
    "vapo_loss",
]
