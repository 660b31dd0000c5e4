"""Search spaces: float (linear or log scale), int and categorical parameters.

A search space turns plain configuration dicts into arrays and back::

    space = SearchSpace.from_dict({
        "temperature": {"type": "float", "min": 0.0, "max": 2.0},
        "lr": {"type": "float", "min": 1e-5, "max": 1e-1, "log": True},
        "max_tokens": {"type": "int", "min": 64, "max": 1024},
        "model": {"type": "categorical", "choices": ["small", "large"]},
    })
    batch = space.sample(jax.random.key(0), 8)   # dict name -> jnp array [8]
    configs = space.decode(batch)                 # list of 8 plain dicts
    arrays = space.encode(configs)                # dict name -> np.ndarray [8]

Genes hold natural values: float32 for floats (the GA mutates log-scaled floats in log
space), int32 for ints, and the int32 index of the choice for categoricals. On the host,
``encode`` uses float64 so that ``decode(encode(configs)) == configs`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Categorical",
    "Float",
    "GeneSpec",
    "Int",
    "Parameter",
    "SearchSpace",
    "SpaceError",
]


class SpaceError(ValueError):
    """A search-space specification or a configuration does not fit the space."""


class GeneSpec(NamedTuple):
    """Static description of one gene, used by evolution operators.

    kind is "float", "int" or "categorical"; categoricals have low = 0 and
    high = num_choices - 1. Unbounded genes use low = -inf, high = inf.
    """

    kind: str
    low: float
    high: float
    log: bool = False
    num_choices: int = 0


def _number(name: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpaceError(
            f"parameter {name!r}: {field!r} must be a number, got {value!r}"
        )
    if not math.isfinite(value):
        raise SpaceError(f"parameter {name!r}: {field!r} must be finite, got {value}")
    return value


@dataclass(frozen=True)
class Float:
    """A real parameter in [low, high]; ``log=True`` samples and mutates in log
    space."""

    name: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        low = _number(self.name, "min", self.low)
        high = _number(self.name, "max", self.high)
        if low > high:
            raise SpaceError(
                f"parameter {self.name!r}: min ({low}) is greater than max ({high})"
            )
        if self.log and low <= 0:
            raise SpaceError(
                f"parameter {self.name!r}: log scale needs min > 0, got min = {low}"
            )
        object.__setattr__(self, "low", float(low))
        object.__setattr__(self, "high", float(high))

    @property
    def gene(self) -> GeneSpec:
        return GeneSpec("float", self.low, self.high, self.log)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        u = jax.random.uniform(key, (n,))
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            x = jnp.exp(lo + u * (hi - lo))
        else:
            x = self.low + u * (self.high - self.low)
        return jnp.clip(x, self.low, self.high).astype(jnp.float32)

    def to_array(self, values: Sequence[Any]) -> np.ndarray:
        out = np.empty(len(values), dtype=np.float64)
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, int | float | np.number):
                raise SpaceError(
                    f"parameter {self.name!r}: expected a number, got {v!r}"
                )
            if not self.low <= v <= self.high:
                raise SpaceError(
                    f"parameter {self.name!r}: {v} is outside [{self.low}, {self.high}]"
                )
            out[i] = v
        return out

    def from_array(self, values: np.ndarray) -> list[float]:
        values = np.clip(values, self.low, self.high).astype(values.dtype)
        if values.dtype == np.float32:
            # Genes are float32: report the shortest decimal that is the same float32
            # (0.5921713, not 0.592171311378479); it encodes back to the same gene.
            return [float(str(v)) for v in values]
        return [float(v) for v in values]

    def to_dict(self) -> dict:
        return {"type": "float", "min": self.low, "max": self.high, "log": self.log}


@dataclass(frozen=True)
class Int:
    """An integer parameter in [low, high] (both inclusive)."""

    name: str
    low: int
    high: int

    def __post_init__(self):
        for field, v in (("min", self.low), ("max", self.high)):
            if isinstance(v, bool) or not (
                isinstance(v, int) or (isinstance(v, float) and v.is_integer())
            ):
                raise SpaceError(
                    f"parameter {self.name!r}: {field!r} must be an integer, got {v!r}"
                )
        if self.low > self.high:
            raise SpaceError(
                f"parameter {self.name!r}: min ({self.low}) is greater than "
                f"max ({self.high})"
            )
        object.__setattr__(self, "low", int(self.low))
        object.__setattr__(self, "high", int(self.high))

    @property
    def gene(self) -> GeneSpec:
        return GeneSpec("int", float(self.low), float(self.high))

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        return jax.random.randint(key, (n,), self.low, self.high + 1, dtype=jnp.int32)

    def to_array(self, values: Sequence[Any]) -> np.ndarray:
        out = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            ok = isinstance(v, int | np.integer) or (
                isinstance(v, float) and v.is_integer()
            )
            if isinstance(v, bool) or not ok:
                raise SpaceError(
                    f"parameter {self.name!r}: expected an integer, got {v!r}"
                )
            if not self.low <= v <= self.high:
                raise SpaceError(
                    f"parameter {self.name!r}: {v} is outside [{self.low}, {self.high}]"
                )
            out[i] = int(v)
        return out

    def from_array(self, values: np.ndarray) -> list[int]:
        return [int(v) for v in np.clip(np.rint(values), self.low, self.high)]

    def to_dict(self) -> dict:
        return {"type": "int", "min": self.low, "max": self.high}


@dataclass(frozen=True)
class Categorical:
    """One of a fixed list of choices (strings, numbers, booleans, ...)."""

    name: str
    choices: tuple

    def __post_init__(self):
        if isinstance(self.choices, str | bytes) or not isinstance(
            self.choices, Sequence
        ):
            raise SpaceError(
                f"parameter {self.name!r}: 'choices' must be a list, "
                f"got {self.choices!r}"
            )
        choices = tuple(self.choices)
        if not choices:
            raise SpaceError(f"parameter {self.name!r}: 'choices' is empty")
        if len(set(map(repr, choices))) != len(choices):
            raise SpaceError(f"parameter {self.name!r}: 'choices' has duplicates")
        object.__setattr__(self, "choices", choices)

    @property
    def gene(self) -> GeneSpec:
        n = len(self.choices)
        return GeneSpec("categorical", 0.0, float(n - 1), num_choices=n)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        return jax.random.randint(key, (n,), 0, len(self.choices), dtype=jnp.int32)

    def _index(self, value: Any) -> int:
        for i, c in enumerate(self.choices):
            # Compare type and value so that True does not match 1.
            if type(c) is type(value) and c == value:
                return i
        raise SpaceError(
            f"parameter {self.name!r}: {value!r} is not one of {list(self.choices)}"
        )

    def to_array(self, values: Sequence[Any]) -> np.ndarray:
        return np.array([self._index(v) for v in values], dtype=np.int64)

    def from_array(self, values: np.ndarray) -> list[Any]:
        idx = np.clip(np.rint(values), 0, len(self.choices) - 1).astype(int)
        return [self.choices[i] for i in idx]

    def to_dict(self) -> dict:
        return {"type": "categorical", "choices": list(self.choices)}


Parameter = Float | Int | Categorical

_TYPES = {"float": Float, "int": Int, "categorical": Categorical}
_KEYS = {
    "float": {"type", "min", "max", "log"},
    "int": {"type", "min", "max"},
    "categorical": {"type", "choices"},
}


def _parameter_from_spec(name: str, spec: Any) -> Parameter:
    if isinstance(spec, Float | Int | Categorical):
        return spec
    if not isinstance(spec, Mapping):
        raise SpaceError(
            f"parameter {name!r}: expected a mapping with a 'type', got {spec!r}"
        )
    kind = spec.get("type")
    if kind not in _TYPES:
        raise SpaceError(
            f"parameter {name!r}: unknown type {kind!r}; expected one of "
            f"{sorted(_TYPES)}"
        )
    unknown = set(spec) - _KEYS[kind]
    if unknown:
        raise SpaceError(
            f"parameter {name!r}: unknown keys {sorted(unknown)} for type {kind!r}; "
            f"allowed: {sorted(_KEYS[kind])}"
        )
    missing = _KEYS[kind] - set(spec) - {"log"}
    if missing:
        raise SpaceError(f"parameter {name!r}: missing keys {sorted(missing)}")
    if kind == "float":
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise SpaceError(f"parameter {name!r}: 'log' must be true or false")
        return Float(name, spec["min"], spec["max"], log)
    if kind == "int":
        return Int(name, spec["min"], spec["max"])
    return Categorical(name, spec["choices"])


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of named parameters."""

    params: tuple[Parameter, ...]

    def __post_init__(self):
        params = tuple(self.params)
        if not params:
            raise SpaceError("a search space needs at least one parameter")
        names = [p.name for p in params]
        for name in names:
            if not isinstance(name, str) or not name:
                raise SpaceError(f"parameter names must be non-empty strings: {name!r}")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SpaceError(f"duplicate parameter names: {sorted(dup)}")
        object.__setattr__(self, "params", params)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> SearchSpace:
        """Build from ``{name: {"type": ..., ...}}`` as written in YAML."""
        if not isinstance(spec, Mapping):
            raise SpaceError(
                f"a search space is a mapping of parameter names, got {spec!r}"
            )
        return cls(tuple(_parameter_from_spec(n, s) for n, s in spec.items()))

    def to_dict(self) -> dict[str, dict]:
        return {p.name: p.to_dict() for p in self.params}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def __len__(self) -> int:
        return len(self.params)

    def __getitem__(self, name: str) -> Parameter:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def gene_specs(self) -> dict[str, GeneSpec]:
        return {p.name: p.gene for p in self.params}

    def sample(self, key: jax.Array, n: int) -> dict[str, jax.Array]:
        """Draw ``n`` configurations uniformly (log-uniformly for log floats)."""
        keys = jax.random.split(key, len(self.params))
        return {p.name: p.sample(k, n) for p, k in zip(self.params, keys, strict=True)}

    def encode(self, configs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Plain dicts -> ``{name: np.ndarray [n]}`` (float64 / int64, exact)."""
        if isinstance(configs, Mapping):
            raise SpaceError("encode expects a list of configuration dicts")
        names = set(self.names)
        for i, c in enumerate(configs):
            if not isinstance(c, Mapping):
                raise SpaceError(f"configuration {i} is not a mapping: {c!r}")
            missing, extra = names - set(c), set(c) - names
            if missing:
                raise SpaceError(f"configuration {i} is missing {sorted(missing)}")
            if extra:
                raise SpaceError(f"configuration {i} has unknown keys {sorted(extra)}")
        return {p.name: p.to_array([c[p.name] for c in configs]) for p in self.params}

    def decode(self, arrays: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``{name: array [n]}`` -> list of plain dicts with Python values."""
        missing = set(self.names) - set(arrays)
        if missing:
            raise SpaceError(f"decode: arrays are missing {sorted(missing)}")
        host = {n: np.asarray(arrays[n]) for n in self.names}
        sizes = {h.shape for h in host.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise SpaceError(
                f"decode expects 1-D arrays of one length, got shapes "
                f"{ {n: h.shape for n, h in host.items()} }"
            )
        columns = [p.from_array(host[p.name]) for p in self.params]
        return [
            dict(zip(self.names, row, strict=True))
            for row in zip(*columns, strict=True)
        ]

    def decode_one(self, arrays: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
        """One configuration out of a batch (or out of unbatched scalars)."""
        batch = {n: np.atleast_1d(np.asarray(arrays[n])) for n in self.names}
        return self.decode({n: v[index : index + 1] for n, v in batch.items()})[0]
