"""Reinforcement learning on gymnax: on-policy PPO and the off-policy learners DQN, SAC
and TD3, each a compiled program with its losses and networks.

    from convergence_jax import rl

    config = rl.PPOConfig(env_id="CartPole-v1", total_timesteps=500_000)
    train = rl.make_train(config)
    state, metrics = jax.jit(jax.vmap(train))(jax.random.split(key, 8))

    train = rl.make_dqn_train(rl.DQNConfig(env_id="CartPole-v1"))
    train = rl.make_sac_train(rl.SACConfig(env_id="Pendulum-v1"))

See ``docs/rl.md``.
"""

from convergence_jax.rl.buffer import (
    ReplayBuffer,
    buffer_add,
    buffer_can_sample,
    buffer_init,
    buffer_sample,
    buffer_sample_sequences,
)
from convergence_jax.rl.continuous import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    DenseMLP,
    DeterministicActor,
    QCritic,
    TanhGaussianActor,
    TwinQCritic,
    sac_actor_loss,
    sac_critic_loss,
    sac_temperature_loss,
    tanh_gaussian_log_prob,
    td3_actor_loss,
    td3_critic_loss,
    td3_target_action,
)
from convergence_jax.rl.dqn import (
    DQN,
    DQNConfig,
    DQNHParams,
    DQNTrainState,
    QNetwork,
    dqn_hparam_grid,
    make_dqn,
    make_dqn_train,
)
from convergence_jax.rl.losses import (
    clipped_value_loss,
    entropy_loss,
    gae,
    normalize_advantages,
    ppo_policy_loss,
)
from convergence_jax.rl.networks import (
    ACTIVATIONS,
    MLP,
    ActorCritic,
)
from convergence_jax.rl.normalize import (
    RewardScaleState,
    RunningStats,
    reward_scale_init,
    reward_scale_rollout,
    reward_scale_step,
    running_stats_init,
    running_stats_merge,
    running_stats_normalize,
    running_stats_update,
)
from convergence_jax.rl.ppo import (
    PPO,
    ObsStats,
    PPOConfig,
    PPOHParams,
    TrainState,
    hparam_grid,
    make_ppo,
    make_train,
)
from convergence_jax.rl.recurrent_ppo import (
    RecurrentActorCritic,
    RecurrentPPO,
    RecurrentPPOConfig,
    RecurrentTrainState,
    make_recurrent_ppo,
    make_recurrent_train,
)
from convergence_jax.rl.sac import (
    SAC,
    SACConfig,
    SACHParams,
    SACTrainState,
    make_sac,
    make_sac_train,
    sac_hparam_grid,
)
from convergence_jax.rl.td3 import (
    TD3,
    TD3Config,
    TD3HParams,
    TD3TrainState,
    make_td3,
    make_td3_train,
    td3_hparam_grid,
)
from convergence_jax.rl.value_losses import (
    double_q_value,
    n_step_return,
    q_learning_value,
    td_loss,
)

__all__ = [
    "ACTIVATIONS",
    "DQN",
    "LOG_STD_MAX",
    "LOG_STD_MIN",
    "MLP",
    "PPO",
    "SAC",
    "TD3",
    "ActorCritic",
    "DQNConfig",
    "DQNHParams",
    "DQNTrainState",
    "DenseMLP",
    "DeterministicActor",
    "ObsStats",
    "PPOConfig",
    "PPOHParams",
    "QCritic",
    "QNetwork",
    "RecurrentActorCritic",
    "RecurrentPPO",
    "RecurrentPPOConfig",
    "RecurrentTrainState",
    "ReplayBuffer",
    "RewardScaleState",
    "RunningStats",
    "SACConfig",
    "SACHParams",
    "SACTrainState",
    "TD3Config",
    "TD3HParams",
    "TD3TrainState",
    "TanhGaussianActor",
    "TrainState",
    "TwinQCritic",
    "buffer_add",
    "buffer_can_sample",
    "buffer_init",
    "buffer_sample",
    "buffer_sample_sequences",
    "clipped_value_loss",
    "double_q_value",
    "dqn_hparam_grid",
    "entropy_loss",
    "gae",
    "hparam_grid",
    "make_dqn",
    "make_dqn_train",
    "make_ppo",
    "make_recurrent_ppo",
    "make_recurrent_train",
    "make_sac",
    "make_sac_train",
    "make_td3",
    "make_td3_train",
    "make_train",
    "n_step_return",
    "normalize_advantages",
    "ppo_policy_loss",
    "q_learning_value",
    "reward_scale_init",
    "reward_scale_rollout",
    "reward_scale_step",
    "running_stats_init",
    "running_stats_merge",
    "running_stats_normalize",
    "running_stats_update",
    "sac_actor_loss",
    "sac_critic_loss",
    "sac_hparam_grid",
    "sac_temperature_loss",
    "tanh_gaussian_log_prob",
    "td3_actor_loss",
    "td3_critic_loss",
    "td3_hparam_grid",
    "td3_target_action",
    "td_loss",
]
