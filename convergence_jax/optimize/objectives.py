"""Turning an objective named in a config into something the optimizer can call.

Three kinds:

- ``simulated_llm``: the bundled simulator (``convergence_jax.optimize.simulated``);
- ``jax``: ``f(key, params) -> metrics``, vectorized over a batch of configurations:
  ``params`` is a dict of arrays [N] (categoricals as the index of the choice) and the
  result a dict of metric arrays [N], or one array [N] (the metric ``score``);
- ``python``: ``f(config) -> metrics`` on one plain dict (categoricals as the choice
  itself), returning a dict of numbers or one number (the metric ``score``).

Targets are ``"package.module:function"`` or ``"path/to/file.py:function"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from convergence_jax.optimize.config import ConfigError, OptimizeConfig
from convergence_jax.optimize.simulated import MODELS, simulated_llm, simulated_llm_mean
from convergence_jax.spaces import Categorical, SearchSpace

__all__ = ["jax_objective", "load_target", "simulated_objective"]

SIMULATED_DEFAULTS = {
    "temperature": 1.0,
    "top_p": 1.0,
    "model": "medium",
    "max_tokens": 512,
}


def load_target(target: str, base_dir: str | Path = ".") -> Callable:
    """Import ``"module:function"`` or ``"file.py:function"``."""
    if ":" not in target:
        raise ConfigError(
            f"objective.target: expected 'module:function' or 'file.py:function', "
            f"got {target!r}"
        )
    module_name, _, attr = target.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_absolute():
                path = Path(base_dir) / path
            if not path.is_file():
                raise ConfigError(f"objective.target: no such file {str(path)!r}")
            name = f"_convergence_objective_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # so that pickling and dataclasses work
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as e:  # an import error in user code is reported, not raised raw
        raise ConfigError(
            f"objective.target: importing {module_name!r} failed: "
            f"{type(e).__name__}: {e}"
        ) from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"objective.target: {module_name!r} has no function {attr!r}")
    return fn


def simulated_objective(space: SearchSpace, *, noisy: bool = True) -> Callable:
    """The simulator on a space's genes; parameters not tuned keep defaults.

    Returns ``f(key, params) -> metrics``, or the noise-free ``f(params) -> metrics``
    with ``noisy=False``.
    """
    names = set(space.names)
    unknown = names - set(SIMULATED_DEFAULTS)
    if unknown:
        raise ConfigError(
            f"search_space: the simulated_llm objective has no parameters "
            f"{sorted(unknown)}; it takes {sorted(SIMULATED_DEFAULTS)}"
        )
    if "model" in names:
        model = space["model"]
        if not isinstance(model, Categorical) or not set(model.choices) <= set(MODELS):
            raise ConfigError(
                f"search_space.model: must be categorical with choices from "
                f"{list(MODELS)}"
            )
        model_index = jnp.array([list(MODELS).index(c) for c in model.choices])
    for name in ("temperature", "top_p", "max_tokens"):
        if name in names and isinstance(space[name], Categorical):
            raise ConfigError(f"search_space.{name}: must be a number (float or int)")

    def settings(params):
        n = jnp.shape(next(iter(params.values())))
        full = {}
        for name, default in SIMULATED_DEFAULTS.items():
            if name == "model":
                value = (
                    model_index[params["model"]]
                    if "model" in params
                    else jnp.full(n, list(MODELS).index(default))
                )
            else:
                value = params.get(name, jnp.full(n, default, jnp.float32))
            full[name] = value
        return full

    if noisy:
        return lambda key, params: simulated_llm(key, settings(params))
    return lambda params: simulated_llm_mean(settings(params))


def jax_objective(config: OptimizeConfig, space: SearchSpace) -> Callable:
    """``f(key, configs) -> dict of metric arrays`` for simulated and JAX objectives."""
    if config.objective.type == "simulated_llm":
        return simulated_objective(space)
    fn = load_target(config.objective.target, config.base_dir)

    def objective(key: jax.Array, params):
        out = fn(key, params)
        return out if isinstance(out, dict) else {"score": out}

    return objective
