"""Attribution recovers known gene effects of a synthetic meta-fitness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.meta import genome as gn
from convergence_jax.meta.attribution import ablations, attribute, plot_attribution

TRUE = {
    "selection": 0.3,
    "mutation_strength": 0.1 * np.log(10.0),
    "elitism_ratio": -0.08,
}


def synthetic(key, genomes):
    """Known effects: truncation selection +0.3, 0.1 log(strength / 0.1), elitism
    -0.4 per unit ratio, crossover_rate no effect; noise sd 0.05 shared by the
    batch (common random numbers) plus independent noise sd 0.02."""
    shared = 0.05 * jax.random.normal(key)
    own = 0.02 * jax.random.normal(jax.random.fold_in(key, 1), genomes.selection.shape)
    return (
        0.3 * (genomes.selection == 3)
        + 0.1 * jnp.log(genomes.mutation_strength / 0.1)
        - 0.4 * genomes.elitism_ratio
        + shared
        + own
    )


def test_attribution_recovers_known_effects(tmp_path):
    reference = gn.default_genome(64, elitism_ratio=0.0)
    genome = reference.replace(
        selection="truncation", mutation_strength=1.0, elitism_ratio=0.2,
        crossover_rate=0.5,
    )  # fmt: skip
    result = attribute(synthetic, jax.random.key(0), genome, reference,
                       num_replicates=64)  # fmt: skip
    effects = dict(zip(result.genes, result.effect, strict=True))
    for name, true in TRUE.items():
        i = result.genes.index(name)
        assert result.low[i] < true < result.high[i], name
        assert abs(effects[name] - true) < 0.02, name
    assert sorted(result.significant()) == sorted(TRUE)
    i = result.genes.index("crossover_rate")
    assert result.low[i] < 0 < result.high[i]
    assert effects["population_size"] == 0.0  # unchanged gene
    assert "| selection | truncation | tournament | +0.3" in result.table()
    plot_attribution(result, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_ablations_change_one_gene_each():
    reference = gn.default_genome(64)
    genome = gn.random_genomes(jax.random.key(1), 1, gn.genome_specs(64))
    genome = jax.tree.map(lambda x: x[0], genome)
    batch = ablations(genome, reference)
    rows = gn.unstack_genomes(batch)
    assert len(rows) == 1 + len(gn.Genome.SPECS)
    for i, spec in enumerate(gn.Genome.SPECS):
        row = gn.genome_to_dict(rows[i + 1])
        assert row[spec.name] == gn.genome_to_dict(reference)[spec.name]
        for other in gn.Genome.SPECS:
            if other.name != spec.name:
                assert row[other.name] == gn.genome_to_dict(genome)[other.name]


def test_attribution_rejects_bad_input():
    g = gn.default_genome(64)
    with pytest.raises(ValueError, match="num_replicates"):
        attribute(synthetic, jax.random.key(0), g, g, num_replicates=1)
