"""Reinforcement learning: PPO building blocks, networks and the compiled program.

    from convergence_jax import rl

    config = rl.PPOConfig(env_id="CartPole-v1", total_timesteps=500_000)
    train = rl.make_train(config)
    state, metrics = jax.jit(jax.vmap(train))(jax.random.split(key, 8))

See ``docs/rl.md``.
"""

from convergence_jax.rl.losses import (
    clipped_value_loss,
    entropy_loss,
    gae,
    normalize_advantages,
    ppo_policy_loss,
)
from convergence_jax.rl.networks import ACTIVATIONS, MLP, ActorCritic
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

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "PPO",
    "ActorCritic",
    "ObsStats",
    "PPOConfig",
    "PPOHParams",
    "TrainState",
    "clipped_value_loss",
    "entropy_loss",
    "gae",
    "hparam_grid",
    "make_ppo",
    "make_train",
    "normalize_advantages",
    "ppo_policy_loss",
]
