"""Shared fixtures for the GA tests: a mixed search space and a small params pytree."""

import jax.numpy as jnp
import pytest

from convergence_jax.spaces import SearchSpace


@pytest.fixture(scope="session")
def space():
    return SearchSpace.from_dict(
        {
            "temperature": {"type": "float", "min": 0.0, "max": 2.0},
            "lr": {"type": "float", "min": 1e-5, "max": 1e-1, "log": True},
            "max_tokens": {"type": "int", "min": 64, "max": 1024},
            "model": {"type": "categorical", "choices": ["a", "b", "c"]},
        }
    )


@pytest.fixture(scope="session")
def net():
    """A flax-like params pytree (nested dict of float arrays)."""
    return {
        "dense": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros((2,))},
        "out": {"kernel": jnp.zeros((2, 1))},
    }
