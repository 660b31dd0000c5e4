"""Vectorized Thompson sampling and fast exact Beta/Gamma sampling."""

from convergence_jax.bandits._sampling import (
    approx_beta,
    approx_normal,
    sample_beta,
    sample_gamma,
    sample_log_gamma,
    sample_student_scale,
    standard_normal,
)

__all__ = [
    "approx_beta",
    "approx_normal",
    "sample_beta",
    "sample_gamma",
    "sample_log_gamma",
    "sample_student_scale",
    "standard_normal",
]
