"""Strategy genomes: defaults, validation, JSON round trip, evolution configs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import evolution
from convergence_jax.meta import genome as gn


def test_default_genome_is_the_ordinary_ga_defaults():
    g = gn.default_genome(32)
    d = gn.genome_to_dict(g)
    assert d["selection"] == "tournament" and d["mutation"] == "gaussian"
    assert d["crossover"] == "uniform" and d["population_size"] == 32
    assert d["tournament_size"] == 3 and d["fitness_sharing"] is False
    config = gn.to_evolution_config(g)
    assert config.ordinary and config.population_size == 32
    assert int(config.ga_params.num_elites) == 1  # round(0.02 * 32)


def test_random_genomes_are_valid_and_cover_every_method():
    specs = gn.genome_specs(64)
    genomes = gn.random_genomes(jax.random.key(0), 400, specs)
    gn.check_genome(genomes, specs)
    for spec in specs:
        values = np.asarray(getattr(genomes, spec.name))
        assert values.min() >= spec.low and values.max() <= spec.high, spec.name
        if spec.kind == "method":
            assert set(values.tolist()) == set(range(len(spec.choices))), spec.name


def test_json_round_trip_is_exact(tmp_path):
    genomes = gn.random_genomes(jax.random.key(1), 50, gn.genome_specs(64))
    for g in gn.unstack_genomes(genomes):
        text = json.dumps(gn.genome_to_dict(g))
        back = gn.genome_from_dict(json.loads(text))
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(back), strict=True):
            assert a.dtype == b.dtype and a.tobytes() == np.asarray(b).tobytes()
    # Floats are written as their shortest float32 decimals.
    d = gn.genome_to_dict(gn.default_genome(64, mutation_strength=0.1))
    assert d["mutation_strength"] == 0.1


def test_bad_genomes_fail_naming_the_gene():
    with pytest.raises(ValueError, match="genome.selection: unknown method 'best'"):
        gn.default_genome(64, selection="best")
    with pytest.raises(
        ValueError, match=r"genome.crossover_rate: expected \[0.0, 1.0\]"
    ):
        gn.check_genome(gn.default_genome(64, crossover_rate=1.5))
    with pytest.raises(ValueError, match="genome.population_size"):
        gn.check_genome(gn.default_genome(64), gn.genome_specs(32))
    d = gn.genome_to_dict(gn.default_genome(64))
    with pytest.raises(ValueError, match="genome.mutation_rate: missing"):
        gn.genome_from_dict({k: v for k, v in d.items() if k != "mutation_rate"})
    with pytest.raises(ValueError, match=r"unknown genes \['colour'\]"):
        gn.genome_from_dict({**d, "colour": 1})


def test_meta_mutation_and_crossover_stay_in_range():
    specs = gn.genome_specs(64, 8)
    genomes = gn.random_genomes(jax.random.key(2), 64, specs)
    other = gn.random_genomes(jax.random.key(3), 64, specs)
    children = gn.crossover_genomes(jax.random.key(4), genomes, other, 1.0)
    mutated = gn.mutate_genomes(jax.random.key(5), children, 1.0, 0.5, specs)
    gn.check_genome(mutated, specs)
    # Crossover takes every gene from one of the parents.
    for name in ("mutation_rate", "selection"):
        c, a, b = (np.asarray(getattr(x, name)) for x in (children, genomes, other))
        assert np.all((c == a) | (c == b))
    # Rate 0 changes nothing.
    same = gn.mutate_genomes(jax.random.key(6), genomes, 0.0, 0.5, specs)
    assert all(
        bool(jnp.all(x == y))
        for x, y in zip(jax.tree.leaves(same), jax.tree.leaves(genomes), strict=True)
    )


def test_evolution_config_builds_a_runnable_ga():
    g = gn.default_genome(16, selection="rank", crossover="average", elitism_ratio=0.25)
    ga, params = gn.to_evolution_config(g, num_genes=3).build(jnp.zeros(3))
    assert isinstance(ga, evolution.GA) and ga.population_size == 16
    assert int(params.num_elites) == 4
    diverse = gn.to_evolution_config(g.replace(selection="diversity"))
    assert not diverse.ordinary
    sga, genome = diverse.build(jnp.zeros(3))
    assert sga.population_size == 16 and int(genome.selection) == 4
