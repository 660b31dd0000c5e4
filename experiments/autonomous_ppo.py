"""PPO on a gymnax environment under the autonomous loop, until it converges.

    python experiments/autonomous_ppo.py                      # CartPole-v1
    python experiments/autonomous_ppo.py --max-spawns 2 --out-dir runs/auto
    python experiments/autonomous_ppo.py --preset throughput   # the old shape

``--preset sample_efficient`` (the default, ``loop.ppo_preset``) learns hard from
small windows (4 x 64 steps, 10 epochs over 4 minibatches, lr 2.5e-3) to solve
tasks in few environment steps (CartPole-v1 in 11,000-23,000 and Acrobot-v1 in
17,000-28,000 over 4 seeds, ``benchmarks/loop_vs_tensor_optix.py``); on Box
action spaces it takes its own settings (``PPOLoopPreset.box``: 4 x 256 windows,
observation normalization, scaled rewards; Pendulum-v1 to a fresh mean >= -200
in 56,000-77,000 steps, ``python experiments/autonomous_ppo.py --env-id
Pendulum-v1 --val-steps 200``);
``--preset throughput`` (8 x 128, 4 epochs, lr 1e-3, the earlier default) needs
several times more environment steps but spends fewer gradient steps per
environment step. ``--num-envs`` etc. override the preset's numbers.

The loop trains in windows of ``num_envs x num_steps`` steps, scores every
``interval`` windows on a validation pipeline (fresh episodes, never learned
from), backs off while nothing beats the noise, and at DORMANT hands over to
the policy manager: roll back to the best checkpoint, spawn a variant with
adaptively perturbed hyperparameters, and, with the spawn budget used, stop and
print the training report. Writes ``records.jsonl`` (one line per evaluation),
``loop.png`` (score, loop state and hyperparameters over time), ``summary.json``
and the checkpoint registry.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from convergence_jax import loop, rl
from convergence_jax.spaces import SearchSpace


@dataclass(frozen=True)
class Config:
    env_id: str = "CartPole-v1"
    """A gymnax environment, discrete or continuous (Box) actions; for Box the
    preset's ``box`` settings apply."""
    seed: int = 0
    """Seed of the first agent and the pipelines."""
    preset: Literal["sample_efficient", "throughput"] = "sample_efficient"
    """PPO shape (``loop.PPO_PRESETS``): small windows learned from hard, or
    large windows for throughput. The fields below left at None take its value."""
    num_envs: int | None = None
    """Training environments per window (None: the preset's)."""
    num_steps: int | None = None
    """Steps per environment per window, one PPO update each (None: preset's)."""
    update_epochs: int | None = None
    """Passes over each window (None: the preset's)."""
    num_minibatches: int | None = None
    """Minibatches per pass (None: the preset's)."""
    learning_rate: float | None = None
    """Adam step size of the first agent (None: the preset's)."""
    lr_horizon: int | None = None
    """Environment steps over which the learning rate decays to 0 (a schedule,
    not a stopping rule: the loop stops when it detects convergence; None: the
    preset's)."""
    val_envs: int = 32
    """Validation environments; each plays one fresh episode per evaluation."""
    val_steps: int = 500
    """Steps per validation window (CartPole's episode limit)."""
    target_score: float | None = None
    """Stop as soon as the validation score reaches this (None: run until the
    loop converges)."""
    trend_window: int = 8
    """Evaluations in the scheduler's trend window."""
    plateau_threshold: int = 4
    """Non-improvements before COOLING."""
    dormant_threshold: int = 12
    """Non-improvements before DORMANT."""
    max_interval: float = 16.0
    """Largest gap between evaluations, in windows."""
    max_spawns: int = 1
    """Variants the policy manager may spawn before stopping."""
    max_episodes: int = 2_000
    """Safety cap on windows (the loop normally stops at DORMANT long before)."""
    presearch_population: int = 0
    """Trial pre-search before the main run (0: none): configurations per
    generation of Thompson sampling + evolution over the learning rate (log),
    entropy bonus and update epochs; the main run starts from the best trial's
    configuration and weights."""
    presearch_generations: int = 2
    """Generations of the pre-search (2 x population trials each)."""
    presearch_timesteps: int = 20_000
    """Environment steps per pre-search trial."""
    out_dir: str = "runs/autonomous_ppo"
    """Where records, plot, summary and checkpoints go."""
    verbose: bool = True
    """Print one line per evaluation."""


PRESEARCH_SPACE = SearchSpace.from_dict(
    {
        "learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True},
        "ent_coef": {"type": "float", "min": 0.0, "max": 0.05},
        "update_epochs": {"type": "int", "min": 1, "max": 8},
    }
)


def ppo_config_of(config: Config) -> rl.PPOConfig:
    """The first agent's PPOConfig: the preset, with the fields set in
    ``config`` taking precedence."""
    preset = loop.ppo_preset(config.preset)
    overrides = {
        name: getattr(config, field)
        for name, field in (
            ("num_envs", "num_envs"),
            ("num_steps", "num_steps"),
            ("update_epochs", "update_epochs"),
            ("num_minibatches", "num_minibatches"),
            ("learning_rate", "learning_rate"),
            ("total_timesteps", "lr_horizon"),
        )
        if getattr(config, field) is not None
    }
    return preset.ppo_config(config.env_id, **overrides)


def build(config: Config):
    """The agent factory, pipelines, manager and loop of ``config`` (and the
    pre-search result, or None)."""
    ppo_config = ppo_config_of(config)
    searched, hyperparams = None, {}
    if config.presearch_population:
        searched = loop.presearch(
            ppo_config,
            PRESEARCH_SPACE,
            trial_timesteps=config.presearch_timesteps,
            population_size=config.presearch_population,
            generations=config.presearch_generations,
            seed=config.seed,
            verbose=config.verbose,
        )
        ppo_config, hyperparams = searched.best_config, searched.best_hyperparams
    spawned = iter(range(1, 10**6))

    def agent_factory():
        seed = config.seed + 1000 * next(spawned)
        return loop.PPOAgent(ppo_config, seed=seed, **hyperparams)

    if searched is not None:
        agent = searched.agent(seed=config.seed)
    else:
        agent = loop.PPOAgent(ppo_config, seed=config.seed)
    agent.name = "agent-0"
    train = loop.BatchPipeline(
        config.env_id, ppo_config.num_envs, ppo_config.num_steps, seed=config.seed + 1
    )
    val = loop.BatchPipeline(
        config.env_id,
        config.val_envs,
        config.val_steps,
        seed=config.seed + 2,
        reset_each_window=True,
    )
    num_actions = int(agent.ppo.network.action_dim)
    manager = loop.PolicyManager(
        agent_factory,
        max_spawns=config.max_spawns,
        bounds={"learning_rate": (1e-5, 1e-2), "ent_coef": (0.0, 0.05)},
        perturb=["learning_rate"],
        max_slope=10.0,
        num_actions=num_actions,
        seed=config.seed,
    )
    out = Path(config.out_dir)
    registry = loop.CheckpointRegistry(out / "checkpoints", max_snapshots=3)
    params = loop.BackoffParams(
        plateau_threshold=config.plateau_threshold,
        dormant_threshold=config.dormant_threshold,
        max_interval=config.max_interval,
        noise_floor=1.0,
    )
    controller = loop.RLOptimizer(
        agent,
        train,
        val_pipeline=val,
        scheduler_params=params,
        trend_window=config.trend_window,
        registry=registry,
        policy_manager=manager,
        max_episodes=config.max_episodes,
        target_score=config.target_score,
        verbose=config.verbose,
    )
    return controller, manager, val, searched


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["env_steps"] for r in records]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax = axes[0]
    ax.plot(steps, [r["val_score"] for r in records], ".", label="validation score")
    ax.plot(steps, [r["train_score"] for r in records], ".", alpha=0.4, label="train")
    ax.plot(steps, [r["level"] for r in records], "-", label="trend level (mean)")
    ax.plot(steps, [r["lower"] for r in records], ":", label="lower bound")
    for r in records:
        if r["improved"]:
            ax.axvline(r["env_steps"], color="green", alpha=0.15)
    ax.set_ylabel("return")
    ax.legend(loc="lower right", fontsize=8)
    names = loop.STATE_NAMES
    ax = axes[1]
    ax.step(steps, [names.index(r["state"]) for r in records], where="post")
    ax.set_yticks(range(len(names)), names)
    ax2 = ax.twinx()
    ax2.plot(steps, [r["interval"] for r in records], "k:", alpha=0.5)
    ax2.set_ylabel("interval (windows)")
    ax.set_ylabel("loop state")
    ax = axes[2]
    for name in ("learning_rate", "ent_coef"):
        ax.plot(steps, [r["hyperparams"][name] for r in records], label=name)
    ax.set_yscale("log")
    ax.set_ylabel("hyperparameter")
    ax.set_xlabel("environment steps")
    ax.legend(fontsize=8)
    agents = [r["agent"] for r in records]
    for i in range(1, len(records)):
        if agents[i] != agents[i - 1]:
            for a in axes:
                a.axvline(steps[i], color="red", ls="--", alpha=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def main(config: Config) -> dict:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    built = time.perf_counter()
    controller, manager, val, searched = build(config)
    started = time.perf_counter()
    result = controller.run()
    seconds = time.perf_counter() - started
    with open(out / "records.jsonl", "w") as f:
        for record in result.records:
            f.write(json.dumps(_clean(record)) + "\n")
    plot(result.records, out / "loop.png")
    ensemble = manager.ensemble()
    ensemble_scores = loop.Evaluator().score(val.collect(ensemble)).primary_score
    summary = {
        "reason": result.reason,
        "reached_dormant": any(r["dormant"] for r in result.records),
        "best_val_score": result.best_score,
        "best_window": result.best.window if result.best else None,
        "ensemble_val_score": ensemble_scores,
        "windows": result.windows,
        "env_steps": result.env_steps,
        "seconds": seconds,
        "timing": result.timing,
        "overhead_fraction": result.timing["overhead"] / result.timing["total"],
        "status": manager.status(controller),
        "build_seconds": started - built,
    }
    if searched is not None:
        summary["presearch"] = {
            "env_steps": searched.env_steps,
            "best_score": searched.best_score,
            "best_config": {
                **{
                    k: searched.best_hyperparams[k]
                    for k in ("learning_rate", "ent_coef")
                },
                "update_epochs": searched.best_config.update_epochs,
            },
            "generations": searched.generations,
        }
    (out / "summary.json").write_text(json.dumps(_clean(summary), indent=1))
    print(
        f"best validation return {summary['best_val_score']:.1f}; ensemble "
        f"{ensemble_scores:.1f}; {result.env_steps} steps in {seconds:.1f} s; "
        f"loop overhead {100 * summary['overhead_fraction']:.1f}% -> {out}"
    )
    return summary


if __name__ == "__main__":
    main(tyro.cli(Config))
