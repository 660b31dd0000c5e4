"""PPO on any gymnax environment: many seeds (and learning rates) in one compiled call.

    python experiments/ppo.py --env CartPole-v1 --num-seeds 8
    python experiments/ppo.py --preset pendulum             # Pendulum-v1 settings
    python experiments/ppo.py --preset pendulum --num-envs 32   # flags beat presets
    python experiments/ppo.py --num-seeds 4 --learning-rates 1e-4 3e-4 1e-3
    python experiments/ppo.py --help                         # every flag

The whole run is one ``jax.jit(jax.vmap(train))`` call over seeds (run ``i`` uses
``fold_in(key(seed), i)``); with ``--learning-rates`` it is vmapped over
``rl.hparam_grid`` too, ``len(learning_rates) x num_seeds`` runs, the same seeds
for every learning rate. Writes to ``out_dir`` (default ``runs/ppo/<env>``):

- ``metrics.jsonl``: one JSON line per update per seed (per learning rate):
  ``env_steps``, ``episode_return`` (null when no episode ended), losses, ...
- ``learning_curve.png``: episode return vs environment steps, mean and spread
  over seeds (one line per learning rate);
- ``checkpoint/``: the final train states, leaves ``[seeds, ...]`` (with a sweep
  ``[learning rates, seeds, ...]``), through ``convergence_jax.checkpoint``;
- ``summary.json``: the config, compile and run time, and the final return of
  every run (mean of ``episode_return`` over the last 5% of updates).

Restore the final states into the structure of freshly initialized ones::

    experiment = build(config)          # the Config of the run
    like = initial_states(experiment)
    states = checkpoint.restore(Path(out_dir) / "checkpoint", like=like)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tyro
from tqdm.auto import tqdm

from convergence_jax import checkpoint, rl

USAGE = __doc__.split("\n\nThe whole run")[0]

FINAL_FRACTION = 0.05
"""The final return of a run averages its last 5% of updates."""


@dataclass(frozen=True)
class Config:
    """PPO on a gymnax environment, vmapped over seeds (and learning rates)."""

    preset: Literal["cartpole", "pendulum"] = "cartpole"
    """Defaults of every other flag: cartpole, or pendulum (Pendulum-v1); flags win."""
    env: str = "CartPole-v1"
    """gymnax environment id, e.g. CartPole-v1, Pendulum-v1, Breakout-MinAtar."""
    total_timesteps: int = 500_000
    """Environment steps per run (all its environments together)."""
    num_envs: int = 4
    """Parallel environments per run."""
    num_steps: int = 128
    """Steps per environment per rollout."""
    update_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch; must divide num_steps."""
    num_seeds: int = 8
    """Independent runs, vmapped in one call."""
    seed: int = 0
    """Base seed; run i uses fold_in(key(seed), i)."""
    learning_rate: float = 2.5e-4
    """Adam step size (ignored when --learning-rates is given)."""
    learning_rates: tuple[float, ...] | None = None
    """Sweep: train num_seeds runs for each of these learning rates in one call."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_eps: float = 0.2
    """Clip range of the policy ratio and of the value change."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for learning (returns are logged unscaled)."""
    normalize_obs: bool = False
    """Normalize observations with their running mean and variance."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the actor and of the critic."""
    activation: Literal["tanh", "relu", "gelu", "silu"] = "tanh"
    """Hidden activation."""
    num_devices: int = 1
    """Devices per run (data parallel); on CPU see XLA_FLAGS in docs/rl.md."""
    out_dir: str | None = None
    """Output folder (default runs/ppo/<env>); replaces an earlier run's files."""
    progress: bool = True
    """Show a progress bar."""


PRESETS: dict[str, Config] = {
    "cartpole": Config(),
    "pendulum": Config(
        preset="pendulum",
        env="Pendulum-v1",
        total_timesteps=2_000_000,
        num_envs=16,
        num_steps=256,
        update_epochs=10,
        num_minibatches=8,
        learning_rate=1e-3,
        gamma=0.9,
        gae_lambda=0.95,
        clip_eps=0.2,
        ent_coef=0.0,
        max_grad_norm=0.5,
        reward_scale=0.1,
        normalize_obs=True,
    ),
}


def parse_args(args: list[str] | None = None) -> Config:
    """``--preset`` picks the defaults; tyro then parses every flag over them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset")
    known, _ = pre.parse_known_args(args)
    # An unknown preset falls back to the defaults; tyro then rejects the name.
    default = PRESETS.get(known.preset, PRESETS["cartpole"])
    return tyro.cli(Config, default=default, args=args, description=USAGE)


class Experiment(NamedTuple):
    """A validated run, ready to compile."""

    config: Config
    ppo_config: rl.PPOConfig
    ppo: rl.PPO
    hparams: rl.PPOHParams
    """Scalar leaves, or ``[len(learning_rates)]`` with a sweep."""
    keys: jax.Array
    """``[num_seeds]`` typed keys."""
    out_dir: Path


def ppo_config(config: Config) -> rl.PPOConfig:
    return rl.PPOConfig(
        env_id=config.env,
        total_timesteps=config.total_timesteps,
        num_envs=config.num_envs,
        num_steps=config.num_steps,
        update_epochs=config.update_epochs,
        num_minibatches=config.num_minibatches,
        hidden_sizes=tuple(config.hidden_sizes),
        activation=config.activation,
        normalize_obs=config.normalize_obs,
        anneal_lr=config.anneal_lr,
        num_devices=config.num_devices,
        learning_rate=config.learning_rate,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_eps=config.clip_eps,
        ent_coef=config.ent_coef,
        vf_coef=config.vf_coef,
        max_grad_norm=config.max_grad_norm,
        reward_scale=config.reward_scale,
    )


def build(config: Config) -> Experiment:
    """Validate everything (raises ValueError naming the field) before compiling."""
    if (
        isinstance(config.num_seeds, bool)
        or not isinstance(config.num_seeds, int)
        or config.num_seeds < 1
    ):
        raise ValueError(
            f"Config.num_seeds: expected an int >= 1, got {config.num_seeds!r}"
        )
    lrs = config.learning_rates
    if lrs is not None:
        if len(lrs) == 0:
            raise ValueError("Config.learning_rates: expected at least one value")
        bad = [lr for lr in lrs if not (math.isfinite(lr) and lr > 0)]
        if bad:
            raise ValueError(
                f"Config.learning_rates: expected finite values > 0, got {bad}"
            )
    if config.preset not in PRESETS:
        raise ValueError(
            f"Config.preset: expected one of {sorted(PRESETS)}, got {config.preset!r}"
        )
    ppo_cfg = ppo_config(config)
    ppo = rl.make_ppo(ppo_cfg)  # validates ppo_cfg (ValueError), compiles nothing
    if lrs is None:
        hparams = ppo.default_hparams
    else:
        hparams = rl.hparam_grid(ppo_cfg, learning_rate=list(lrs))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(config.seed), i))(
        jnp.arange(config.num_seeds)
    )
    out_dir = Path(config.out_dir or Path("runs") / "ppo" / config.env)
    return Experiment(config, ppo_cfg, ppo, hparams, keys, out_dir)


def _vmapped(experiment: Experiment, fn):
    """``fn(key, hparams)`` over seeds, and over learning rates when sweeping."""
    over_seeds = jax.vmap(fn, in_axes=(0, None))
    if experiment.config.learning_rates is None:
        return over_seeds
    return jax.vmap(over_seeds, in_axes=(None, 0))


def initial_states(experiment: Experiment) -> rl.TrainState:
    """Freshly initialized states with the layout of the saved ones (``like=``)."""
    init = _vmapped(experiment, experiment.ppo.init)
    return jax.jit(init)(experiment.keys, experiment.hparams)


class Progress:
    """A tqdm bar over updates, fed by the program's host callback.

    Under ``vmap`` JAX unrolls the callback: every update calls it once per run
    with that run's metrics (a version that batches would call it once with
    ``[runs]`` arrays). Counting results either way, an update is done when all
    runs have reported it.
    """

    def __init__(self, num_updates: int, num_runs: int, enabled: bool):
        self.num_updates, self.num_runs, self.enabled = num_updates, num_runs, enabled
        self.results = 0
        self.recent: list[float] = []
        self.lock = threading.Lock()
        self.bar = None

    def start(self) -> None:
        """Open the bar (after compiling, so that its rate is the training's)."""
        self.bar = tqdm(
            total=self.num_updates,
            unit="update",
            disable=not self.enabled,
            dynamic_ncols=True,
        )

    def __call__(self, metrics: dict) -> None:
        returns = np.asarray(metrics["episode_return"], np.float64).reshape(-1)
        with self.lock:
            if self.bar is None:
                self.start()
            self.results += returns.size
            self.recent = (self.recent + returns.tolist())[-self.num_runs :]
            done = min(self.results // self.num_runs, self.bar.total)
            if done > self.bar.n:
                finite = [r for r in self.recent if math.isfinite(r)]
                if finite:
                    self.bar.set_postfix(
                        episode_return=f"{np.mean(finite):.1f}", refresh=False
                    )
                self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean over the finite entries (NaN where there are none), without warnings."""
    finite = np.isfinite(x)
    count = finite.sum(axis)
    total = np.where(finite, x, 0.0).sum(axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _forward_fill(x: np.ndarray) -> np.ndarray:
    """Carry the last finite value forward along the last axis."""
    index = np.where(np.isfinite(x), np.arange(x.shape[-1]), 0)
    index = np.maximum.accumulate(index, axis=-1)
    filled = np.take_along_axis(x, index, axis=-1)
    return filled


def _json_value(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_metrics(path: Path, metrics: dict, lrs: list[float] | None) -> None:
    """One JSON line per update per seed (per learning rate); NaN is null."""
    names = sorted(metrics)
    values = {name: metrics[name].tolist() for name in names}  # [L][S][U]
    num_lrs, num_seeds, num_updates = metrics["env_steps"].shape
    with path.open("w") as f:
        for li in range(num_lrs):
            for si in range(num_seeds):
                for u in range(num_updates):
                    row: dict[str, Any] = {}
                    if lrs is not None:
                        row["sweep_learning_rate"] = lrs[li]
                    row["seed"] = si
                    row["update"] = u + 1
                    for name in names:
                        row[name] = _json_value(values[name][li][si][u])
                    f.write(json.dumps(row) + "\n")


def plot_learning_curve(
    path: Path, metrics: dict, lrs: list[float] | None, title: str
) -> str:
    """Mean over seeds and spread (IQR from 5 seeds, else min-max); returns the
    spread's name. Each seed's return is carried forward over updates in which
    none of its episodes ended."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    returns = _forward_fill(metrics["episode_return"].astype(np.float64))
    num_seeds = returns.shape[1]
    spread = "IQR" if num_seeds >= 5 else "min-max"
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for li in range(returns.shape[0]):
        steps = metrics["env_steps"][li, 0]
        curves = returns[li]  # [S, U]
        mean = _nanmean(curves, axis=0)
        ok = np.isfinite(mean)
        if not ok.any():
            continue
        shown = curves[:, ok]  # each column has a finite value
        if spread == "IQR":
            low, high = np.nanpercentile(shown, [25, 75], axis=0)
        else:
            low, high = np.nanmin(shown, axis=0), np.nanmax(shown, axis=0)
        label = f"{num_seeds} seeds" if lrs is None else f"lr {lrs[li]:g}"
        (line,) = ax.plot(steps[ok], mean[ok], label=label)
        ax.fill_between(steps[ok], low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("environment steps (per run)")
    ax.set_ylabel("episode return")
    ax.set_title(f"{title}: mean and {spread} over {num_seeds} seeds", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return spread


def run_experiment(experiment: Experiment) -> dict:
    """Compile, train, write every output; returns the summary."""
    config, ppo_cfg = experiment.config, experiment.ppo_config
    lrs = None if config.learning_rates is None else list(config.learning_rates)
    num_lrs = 1 if lrs is None else len(lrs)
    num_runs = num_lrs * config.num_seeds
    num_updates = ppo_cfg.num_updates
    out = experiment.out_dir
    out.mkdir(parents=True, exist_ok=True)

    progress = Progress(num_updates, num_runs, config.progress)
    train = rl.make_train(ppo_cfg, callback=progress if config.progress else None)
    program = jax.jit(_vmapped(experiment, train))
    if config.progress:
        print(
            f"compiling {num_runs} runs x {num_updates} updates as one program ...",
            file=sys.stderr,
            flush=True,
        )
    start = time.perf_counter()
    try:
        compiled = program.lower(experiment.keys, experiment.hparams).compile()
        compiled_at = time.perf_counter()
        progress.start()
        states, metrics = compiled(experiment.keys, experiment.hparams)
        jax.block_until_ready((states, metrics))
    finally:
        progress.close()
    end = time.perf_counter()
    compile_seconds, run_seconds = compiled_at - start, end - compiled_at

    metrics = {name: np.asarray(value) for name, value in metrics.items()}
    if lrs is None:  # one layout for both cases: [lrs, seeds, updates]
        metrics = {name: value[None] for name, value in metrics.items()}
    write_metrics(out / "metrics.jsonl", metrics, lrs)
    spread = plot_learning_curve(
        out / "learning_curve.png", metrics, lrs, ppo_cfg.env_id
    )
    ckpt_dir = out / "checkpoint"
    if ckpt_dir.exists():  # steps of an earlier run would shadow this one's
        shutil.rmtree(ckpt_dir)
    checkpoint.save(ckpt_dir, states, step=num_updates)

    window = max(1, math.ceil(FINAL_FRACTION * num_updates))
    final = _nanmean(metrics["episode_return"][..., -window:], axis=-1)  # [L, S]
    results = []
    for li in range(num_lrs):
        finite = final[li][np.isfinite(final[li])]
        results.append(
            {
                "learning_rate": ppo_cfg.learning_rate if lrs is None else lrs[li],
                "final_return_per_seed": [_json_value(float(r)) for r in final[li]],
                "final_return_mean": float(finite.mean()) if finite.size else None,
                "final_return_std": float(finite.std()) if finite.size else None,
            }
        )
    env_steps = num_updates * ppo_cfg.batch_size
    summary = {
        "config": asdict(config),
        "ppo_config": asdict(ppo_cfg),
        "num_runs": num_runs,
        "num_updates": num_updates,
        "env_steps_per_run": env_steps,
        "compile_seconds": compile_seconds,
        "run_seconds": run_seconds,
        "wall_seconds": end - start,
        "env_steps_per_second": num_runs * env_steps / run_seconds,
        "final_window_updates": window,
        "results": results,
        "learning_curve_spread": spread,
        "checkpoint": str(ckpt_dir),
        "checkpoint_step": num_updates,
        "device": str(jax.devices()[0]),
        "jax_version": jax.__version__,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def print_summary(summary: dict, out: Path) -> None:
    config = summary["config"]
    print(
        f"{config['env']}: {summary['num_runs']} runs x {summary['num_updates']} "
        f"updates ({summary['env_steps_per_run']:,} env steps each) in "
        f"{summary['run_seconds']:.1f} s + {summary['compile_seconds']:.1f} s "
        f"compile, {summary['env_steps_per_second']:,.0f} env steps/s"
    )
    window = summary["final_window_updates"]
    for result in summary["results"]:
        mean, std = result["final_return_mean"], result["final_return_std"]
        stat = "n/a (no episode ended)" if mean is None else f"{mean:.1f} +- {std:.1f}"
        per_seed = ", ".join(
            "nan" if r is None else f"{r:.1f}" for r in result["final_return_per_seed"]
        )
        lr = f"lr {result['learning_rate']:g}: " if config["learning_rates"] else ""
        print(f"  {lr}final return (last {window} updates) {stat}  [{per_seed}]")
    print(f"wrote {out}/ metrics.jsonl, learning_curve.png, summary.json, checkpoint/")


def main(config: Config) -> dict:
    """Run ``config`` (its ``preset`` is not applied: see ``PRESETS``)."""
    experiment = build(config)
    summary = run_experiment(experiment)
    print_summary(summary, experiment.out_dir)
    return summary


if __name__ == "__main__":
    cli_config = parse_args()
    try:
        cli_experiment = build(cli_config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print_summary(run_experiment(cli_experiment), cli_experiment.out_dir)
