"""Causal strategy attribution by controlled ablation.

For a genome ``g`` and a reference (the hand-designed default), the contribution
of gene ``i`` is the drop in meta-fitness when only gene ``i`` is set back to its
reference value::

    effect_i = E[ F(g) - F(g with gene i := reference_i) ]

estimated over ``R`` independent replicates (fresh seeds each), with every
ablation of a replicate evaluated on the same seeds as ``g`` itself (common random
numbers, so the differences are paired). The interval is the Student-t 95%
interval of the paired differences. Genes already at their reference value have
effect 0 by construction. Effects are not additive in general: genes interact
(e.g. a mutation strength matters through the mutation method).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from convergence_jax.meta import genome as gn

__all__ = ["Attribution", "ablations", "attribute", "plot_attribution"]


def ablations(genome, reference, specs=None):
    """``[1 + G]`` genomes: ``genome`` then one copy per gene with that gene set to
    its ``reference`` value (a batch of the genome's class)."""
    cls = type(genome)
    specs = gn._specs_for(cls, specs)
    rows = [genome]
    for spec in specs:
        rows.append(genome.replace(**{spec.name: getattr(reference, spec.name)}))
    return gn.stack_genomes(rows)


@dataclasses.dataclass(frozen=True)
class Attribution:
    """Per-gene effects with 95% confidence intervals (see the module doc)."""

    genes: tuple[str, ...]
    values: dict  # the genome's genes (JSON-ready)
    reference: dict  # the reference genome's genes
    effect: np.ndarray  # [G] mean paired drop in meta-fitness
    low: np.ndarray  # [G]
    high: np.ndarray  # [G]
    samples: np.ndarray  # [R, G] paired differences
    fitness: float  # mean meta-fitness of the genome

    def significant(self) -> list[str]:
        """Genes whose interval excludes 0."""
        pairs = zip(self.genes, self.low, self.high, strict=True)
        return [g for g, lo, hi in pairs if lo > 0 or hi < 0]

    def table(self) -> str:
        """A markdown table, largest absolute effect first."""
        lines = [
            f"Meta-fitness of the genome: {self.fitness:.4f} "
            f"({self.samples.shape[0]} replicates).",
            "",
            "| gene | value | reference | effect | 95% CI |",
            "|---|---|---|---:|---|",
        ]
        for i in np.argsort(-np.abs(self.effect)):
            g = self.genes[i]
            lines.append(
                f"| {g} | {self.values[g]} | {self.reference[g]} | "
                f"{self.effect[i]:+.4f} | [{self.low[i]:+.4f}, {self.high[i]:+.4f}] |"
            )
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return {
            "fitness": self.fitness,
            "replicates": int(self.samples.shape[0]),
            "genes": {
                g: {
                    "value": self.values[g],
                    "reference": self.reference[g],
                    "effect": float(self.effect[i]),
                    "low": float(self.low[i]),
                    "high": float(self.high[i]),
                }
                for i, g in enumerate(self.genes)
            },
        }


def attribute(
    evaluate: Callable,
    key,
    genome,
    reference,
    *,
    num_replicates: int = 16,
    specs=None,
) -> Attribution:
    """Ablate each gene of ``genome`` back to ``reference`` and measure the drop.

    Args:
      evaluate: ``evaluate(key, genomes [N]) -> meta-fitness [N]``, pure; every
        genome of the batch must see the same seeds (as
        :func:`convergence_jax.meta.evolve.make_evaluate` gives).
      key: a typed key; replicate ``r`` uses ``split(key, R)[r]``.
      genome, reference: single genomes of the same class.
      num_replicates: ``R >= 2``.

    All ``R x (1 + G)`` evaluations run as one jitted ``vmap``.
    """
    if type(genome) is not type(reference):
        raise ValueError(
            f"reference: expected a {type(genome).__name__}, got "
            f"{type(reference).__name__}"
        )
    if isinstance(num_replicates, bool) or not isinstance(num_replicates, int):
        raise ValueError(
            f"num_replicates: expected an int >= 2, got {num_replicates!r}"
        )
    if num_replicates < 2:
        raise ValueError(f"num_replicates: expected an int >= 2, got {num_replicates}")
    specs = gn._specs_for(type(genome), specs)
    batch = ablations(genome, reference, specs)
    keys = jax.random.split(key, num_replicates)
    fitness = jax.jit(jax.vmap(evaluate, (0, None)))(keys, batch)
    fitness = np.asarray(fitness, np.float64)  # [R, 1 + G]
    diffs = fitness[:, :1] - fitness[:, 1:]
    same = np.array(
        [
            bool(jnp.all(getattr(genome, s.name) == getattr(reference, s.name)))
            for s in specs
        ]
    )
    diffs[:, same] = 0.0
    effect = diffs.mean(0)
    sem = diffs.std(0, ddof=1) / np.sqrt(num_replicates)
    half = stats.t.ppf(0.975, num_replicates - 1) * sem
    return Attribution(
        genes=tuple(s.name for s in specs),
        values=gn.genome_to_dict(genome, specs),
        reference=gn.genome_to_dict(reference, specs),
        effect=effect,
        low=effect - half,
        high=effect + half,
        samples=diffs,
        fitness=float(fitness[:, 0].mean()),
    )


def plot_attribution(attribution: Attribution, path) -> None:
    """Horizontal bars of the effects with their 95% intervals, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(np.abs(attribution.effect))
    names = [attribution.genes[i] for i in order]
    effect = attribution.effect[order]
    err = np.stack([effect - attribution.low[order], attribution.high[order] - effect])
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.2))
    colors = ["tab:green" if e > 0 else "tab:red" for e in effect]
    ax.barh(names, effect, xerr=err, color=colors, capsize=3)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("meta-fitness drop when the gene is reset to the default")
    ax.set_title("Gene attribution (95% CI)")
    fig.tight_layout()
    fig.savefig(Path(path), dpi=120)
    plt.close(fig)
