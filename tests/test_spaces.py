import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax.spaces import Categorical, Float, Int, SearchSpace, SpaceError

SPEC = {
    "temperature": {"type": "float", "min": 0.0, "max": 2.0},
    "lr": {"type": "float", "min": 1e-5, "max": 1e-1, "log": True},
    "layers": {"type": "int", "min": 1, "max": 8},
    "model": {"type": "categorical", "choices": ["small", "large", 3, True]},
}


@pytest.fixture
def space():
    return SearchSpace.from_dict(SPEC)


def test_sample_respects_bounds_and_types(space):
    batch = space.sample(jax.random.key(0), 2000)
    assert batch["temperature"].dtype == jnp.float32
    assert batch["layers"].dtype == jnp.int32
    assert batch["model"].dtype == jnp.int32
    t, lr = np.asarray(batch["temperature"]), np.asarray(batch["lr"])
    assert t.min() >= 0.0 and t.max() <= 2.0
    assert lr.min() >= 1e-5 and lr.max() <= 1e-1
    # log-uniform: log10(lr) is uniform on [-5, -1], so its mean is -3.
    assert abs(np.log10(lr).mean() + 3.0) < 0.1
    layers = np.asarray(batch["layers"])
    assert set(np.unique(layers)) == set(range(1, 9))
    assert set(np.unique(np.asarray(batch["model"]))) == {0, 1, 2, 3}


def test_sample_under_jit_and_vmap(space):
    f = jax.jit(lambda k: space.sample(k, 5))
    keys = jax.random.split(jax.random.key(1), 3)
    out = jax.vmap(f)(keys)
    assert out["lr"].shape == (3, 5)
    for i, key in enumerate(keys):  # each lane is that key's own sample
        jax.tree.map(
            lambda batched, single, i=i: np.testing.assert_array_equal(
                batched[i], single
            ),
            out,
            f(key),
        )
    assert len(np.unique(np.asarray(out["lr"]))) == 15  # different keys, draws


def test_round_trip_is_exact(space):
    configs = [
        {"temperature": 0.7, "lr": 3.3e-4, "layers": 3, "model": "large"},
        {"temperature": 2.0, "lr": 1e-5, "layers": 8, "model": 3},
        {"temperature": 0.0, "lr": 0.1, "layers": 1, "model": True},
        {"temperature": 1 / 3, "lr": 0.012345678901234, "layers": 5, "model": "small"},
    ]
    arrays = space.encode(configs)
    assert arrays["temperature"].dtype == np.float64
    decoded = space.decode(arrays)
    assert decoded == configs
    for d, c in zip(decoded, configs, strict=True):
        assert type(d["model"]) is type(c["model"])
        assert type(d["layers"]) is int


def test_decode_of_samples_round_trips(space):
    configs = space.decode(space.sample(jax.random.key(3), 50))
    assert space.decode(space.encode(configs)) == configs


def test_categorical_does_not_confuse_true_and_one():
    c = Categorical("x", (1, True))
    assert c.to_array([True, 1]).tolist() == [1, 0]


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"p": {"type": "float", "min": 2.0, "max": 1.0}}, ["'p'", "greater than"]),
        ({"p": {"type": "int", "min": 5, "max": 1}}, ["'p'", "greater than"]),
        ({"p": {"type": "categorical", "choices": []}}, ["'p'", "empty"]),
        ({"p": {"type": "vector"}}, ["'p'", "unknown type", "float"]),
        ({"p": {"type": "float", "min": 0.0, "max": 1.0, "log": True}}, ["'p'", "log"]),
        (
            {"p": {"type": "float", "min": -1.0, "max": 1.0, "log": True}},
            ["'p'", "> 0"],
        ),
        ({"p": {"type": "float", "min": 0.0}}, ["'p'", "missing", "max"]),
        ({"p": {"type": "int", "min": 0.5, "max": 3}}, ["'p'", "integer"]),
        ({"p": {"type": "float", "min": 0, "max": 1, "step": 2}}, ["'p'", "step"]),
        ({"p": {"type": "categorical", "choices": "abc"}}, ["'p'", "list"]),
        ({"p": 3}, ["'p'", "mapping"]),
        ({}, ["at least one"]),
    ],
)
def test_bad_specs_name_the_parameter(spec, words):
    with pytest.raises(SpaceError) as info:
        SearchSpace.from_dict(spec)
    for w in words:
        assert w in str(info.value)


def test_encode_rejects_bad_configs(space):
    good = {"temperature": 0.7, "lr": 3.3e-4, "layers": 3, "model": "large"}
    with pytest.raises(SpaceError, match="temperature.*outside"):
        space.encode([{**good, "temperature": 3.0}])
    with pytest.raises(SpaceError, match="missing"):
        space.encode([{k: v for k, v in good.items() if k != "lr"}])
    with pytest.raises(SpaceError, match="unknown keys"):
        space.encode([{**good, "extra": 1}])
    with pytest.raises(SpaceError, match="model.*not one of"):
        space.encode([{**good, "model": "medium"}])
    with pytest.raises(SpaceError, match="layers.*integer"):
        space.encode([{**good, "layers": 2.5}])


def test_gene_specs(space):
    specs = space.gene_specs()
    assert specs["lr"].kind == "float" and specs["lr"].log
    assert specs["layers"] == ("int", 1.0, 8.0, False, 0)
    assert specs["model"].kind == "categorical" and specs["model"].num_choices == 4


def test_parameters_can_be_given_as_objects():
    space = SearchSpace((Float("a", 0, 1), Int("b", 0, 3), Categorical("c", ("x",))))
    assert space.names == ("a", "b", "c")
    assert SearchSpace.from_dict(space.to_dict()) == space
    with pytest.raises(SpaceError, match="duplicate"):
        SearchSpace((Float("a", 0, 1), Int("a", 0, 3)))


def test_float32_genes_decode_to_short_decimals_that_round_trip(space):
    batch = space.sample(jax.random.key(5), 100)
    configs = space.decode(batch)
    again = space.encode(configs)
    for name in ("temperature", "lr"):
        np.testing.assert_array_equal(again[name].astype(np.float32), batch[name])
        assert all(len(repr(c[name])) <= 16 for c in configs)
