"""convergence_jax: systems that improve themselves, as pure functions over pytrees."""

__version__ = "0.1.0"
