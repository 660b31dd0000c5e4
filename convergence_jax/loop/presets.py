"""Named PPO shapes for the autonomous loop: sample-efficient or high-throughput.

    preset = loop.ppo_preset("sample_efficient")
    config = preset.ppo_config("Acrobot-v1")          # an rl.PPOConfig
    train = loop.BatchPipeline("Acrobot-v1", config.num_envs, config.num_steps)

``sample_efficient`` (the default of ``experiments/autonomous_ppo.py``) takes
small windows (4 environments x 64 steps = 256 transitions) and learns hard from
each: 10 epochs over 4 minibatches of 64 at a learning rate of 2.5e-3, decayed
linearly to 0 over 100,000 environment steps. It was chosen by loop runs scored
on fresh episodes (env steps to the first fresh-episode mean >= 475 on
CartPole-v1: 11,008-22,528 over 4 seeds) and solves the held-out Acrobot-v1
(``benchmarks/loop_vs_tensor_optix.py``).

For continuous (Box) action spaces the preset carries its own settings
(``PPOLoopPreset.box``), because the discrete ones do not learn Pendulum-v1
(about -900 when the loop stops): 4 x 256 windows (10 epochs over 8 minibatches
of 128), observation normalization, no entropy bonus, a shorter discount and
scaled-down rewards (Pendulum's returns are in the thousands), over a 300,000-step
learning-rate horizon. The learning rate, discount, GAE lambda and reward scale
are the posterior best of ``loop.presearch`` on Pendulum-v1
(``benchmarks/preset_search.py``), rounded; with them the loop solves Pendulum-v1
(fresh mean >= -200 in 4 of 4 seeds, after 56,320-76,800 environment steps).
``throughput`` is the earlier default: 8 x 128 windows, 4 epochs, 1e-3 over
300,000 steps — about 6x more environment steps to solve CartPole, but fewer
gradient steps per environment step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import gymnax
from gymnax.environments import spaces as gym_spaces

from convergence_jax.rl.ppo import PPOConfig

__all__ = ["PPO_PRESETS", "PPOLoopPreset", "is_continuous", "ppo_preset"]

_CONFIG_FIELDS = {f.name for f in fields(PPOConfig)}


def is_continuous(env_id: str, env_kwargs=None) -> bool:
    """Whether the gymnax environment ``env_id`` has a Box action space."""
    if env_id not in gymnax.registered_envs:
        return False  # PPOConfig's own check names the unknown id
    env, env_params = gymnax.make(env_id, **dict(env_kwargs or {}))
    return isinstance(env.action_space(env_params), gym_spaces.Box)


def _box_fields(box) -> dict[str, Any]:
    values = {("total_timesteps" if k == "lr_horizon" else k): v for k, v in box}
    unknown = sorted(set(values) - _CONFIG_FIELDS)
    if unknown:
        raise ValueError(
            f"PPOLoopPreset.box: unknown PPOConfig fields {unknown}; known: "
            f"{sorted(_CONFIG_FIELDS)} and 'lr_horizon'"
        )
    return values


@dataclass(frozen=True)
class PPOLoopPreset:
    """The rollout shape, update schedule and network of a loop's PPO agent."""

    num_envs: int
    """Training environments per window."""
    num_steps: int
    """Steps per environment per window (one PPO update per window)."""
    update_epochs: int
    """Passes over each window."""
    num_minibatches: int
    """Minibatches per pass."""
    learning_rate: float
    """Adam step size at the start."""
    lr_horizon: int
    """Environment steps over which the learning rate decays linearly to 0."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layers of the actor and of the critic."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    box: tuple[tuple[str, Any], ...] = ()
    """``(PPOConfig field, value)`` pairs that replace the above for environments
    with a continuous (Box) action space, e.g. ``(("num_steps", 256),)``; the field
    ``"lr_horizon"`` names ``lr_horizon``. Empty: one setting for every task."""

    @property
    def window_steps(self) -> int:
        """Environment steps per window: num_envs * num_steps."""
        return self.num_envs * self.num_steps

    def ppo_config(self, env_id: str = "CartPole-v1", **overrides) -> PPOConfig:
        """A ``PPOConfig`` for ``env_id`` with this shape; ``box`` applies when its
        action space is continuous, and ``overrides`` win over both."""
        config = PPOConfig(
            env_id=env_id,
            num_envs=self.num_envs,
            num_steps=self.num_steps,
            update_epochs=self.update_epochs,
            num_minibatches=self.num_minibatches,
            learning_rate=self.learning_rate,
            total_timesteps=self.lr_horizon,
            hidden_sizes=self.hidden_sizes,
            gae_lambda=self.gae_lambda,
            anneal_lr=True,
        )
        if self.box and is_continuous(env_id, overrides.get("env_kwargs")):
            config = replace(config, **_box_fields(self.box))
        return replace(config, **overrides)


PPO_PRESETS: dict[str, PPOLoopPreset] = {
    "sample_efficient": PPOLoopPreset(
        num_envs=4,
        num_steps=64,
        update_epochs=10,
        num_minibatches=4,
        learning_rate=2.5e-3,
        lr_horizon=100_000,
        box=(
            ("num_steps", 256),
            ("num_minibatches", 8),
            ("normalize_obs", True),
            ("learning_rate", 0.00061),
            ("gamma", 0.97),
            ("gae_lambda", 0.94),
            ("reward_scale", 0.033),
            ("ent_coef", 0.0),
            ("lr_horizon", 300_000),
        ),
    ),
    "throughput": PPOLoopPreset(
        num_envs=8,
        num_steps=128,
        update_epochs=4,
        num_minibatches=4,
        learning_rate=1e-3,
        lr_horizon=300_000,
    ),
}


def ppo_preset(name: str = "sample_efficient") -> PPOLoopPreset:
    """The preset called ``name`` (a key of ``PPO_PRESETS``)."""
    if name not in PPO_PRESETS:
        raise ValueError(
            f"ppo_preset: unknown preset {name!r}; expected one of "
            f"{sorted(PPO_PRESETS)}"
        )
    return PPO_PRESETS[name]
