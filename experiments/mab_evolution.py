"""What Thompson sampling buys evolution: TS allocation vs uniform allocation.

Both arms of the experiment run the same GA with the same budget of noisy evaluations
per generation on the simulated LLM API; one spends it by Thompson sampling, the other
uniformly at random. Each run is one compiled program, vmapped over seeds. The score
of a run is the noise-free reward (``simulated_llm_mean``) of the configuration it
reports as best, per generation.

    python experiments/mab_evolution.py --num-seeds 32 --generations 15
    python experiments/mab_evolution.py --help

Writes ``<out>/mab_evolution.json`` and ``<out>/mab_evolution.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from convergence_jax.evolution.mab import mab_evolution, run_mab_evolution
from convergence_jax.optimize import load_config, reward_spec
from convergence_jax.optimize.objectives import jax_objective, simulated_objective
from convergence_jax.optimize.run import build_optimizer

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"


@dataclass(frozen=True)
class Config:
    """TS vs uniform allocation inside Thompson sampling + evolution."""

    num_seeds: int = 32
    """Independent runs per allocation, vmapped in one call."""
    generations: int = 15
    """Generations per run."""
    population_size: int = 16
    """Configurations per generation."""
    evaluations_per_generation: int = 64
    """Noisy evaluations per generation (same for both allocations)."""
    batch_size: int = 8
    """Evaluations per Thompson-sampling round."""
    seed: int = 0
    """Base seed; run i uses fold_in(key(seed), i)."""
    out: str = "runs/experiments"
    """Output folder."""


def best_true_reward(config: Config, allocation: str) -> np.ndarray:
    """[num_seeds, generations] noise-free reward of each generation's best config."""
    base = load_config(QUICKSTART)
    reward = reward_spec(base)
    space = base.space()
    _, params = build_optimizer(base, reward)
    me = mab_evolution(
        space,
        config.population_size,
        config.evaluations_per_generation,
        config.batch_size,
        allocation=allocation,
    )
    noisy = jax_objective(base, space)

    def objective(key, configs):
        return reward.combine(noisy(key, configs))

    true_metrics = simulated_objective(space, noisy=False)

    def one_run(key):
        _, history = run_mab_evolution(key, me, params, objective, config.generations)
        best = jax.vmap(lambda pop, i: jax.tree.map(lambda x: x[i], pop))(
            history["population"], history["best_index"]
        )
        return reward.combine(true_metrics(best))

    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(config.seed), i))(
        jnp.arange(config.num_seeds)
    )
    return np.asarray(jax.jit(jax.vmap(one_run))(keys))


def main(config: Config) -> dict:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"config": asdict(config)}
    curves = {}
    for allocation in ("thompson", "uniform"):
        start = time.perf_counter()
        curves[allocation] = best_true_reward(config, allocation)
        final = curves[allocation][:, -1]
        results[allocation] = {
            "final_true_reward_mean": float(final.mean()),
            "final_true_reward_sem": float(final.std(ddof=1) / np.sqrt(len(final))),
            "curve_mean": curves[allocation].mean(0).tolist(),
            "seconds": time.perf_counter() - start,
        }
        print(
            f"{allocation:>8}: final true reward {final.mean():.4f} "
            f"+- {results[allocation]['final_true_reward_sem']:.4f} (sem)"
        )
    diff = curves["thompson"][:, -1] - curves["uniform"][:, -1]
    results["thompson_minus_uniform"] = {
        "mean": float(diff.mean()),
        "sem": float(diff.std(ddof=1) / np.sqrt(len(diff))),
    }
    (out / "mab_evolution.json").write_text(json.dumps(results, indent=2))
    _plot(curves, out / "mab_evolution.png")
    print(f"wrote {out / 'mab_evolution.json'} and {out / 'mab_evolution.png'}")
    return results


def _plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, curve in curves.items():
        mean = curve.mean(0)
        sem = curve.std(0, ddof=1) / np.sqrt(curve.shape[0])
        gens = np.arange(len(mean))
        ax.plot(gens, mean, label=f"{name} allocation")
        ax.fill_between(gens, mean - 2 * sem, mean + 2 * sem, alpha=0.2)
    ax.axhline(0.768, color="0.5", ls="--", lw=1, label="optimum (grid search)")
    ax.set_xlabel("generation")
    ax.set_ylabel("noise-free reward of reported best")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(Config))
