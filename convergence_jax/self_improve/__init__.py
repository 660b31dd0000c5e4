"""Self-improving policies: preference pairs as text and their filters (`pairs`),
SAO (self-synthetic preference data) and RLP (reasoning rewarded by information
gain). See docs/self_improvement.md."""

from convergence_jax.self_improve import pairs
from convergence_jax.self_improve.pairs import (
    PairFilter,
    PreferencePair,
    distinct_n,
    filter_pairs,
    load_pairs,
    ngram_similarity,
    save_pairs,
)

__all__ = [
    "PairFilter",
    "PreferencePair",
    "distinct_n",
    "filter_pairs",
    "load_pairs",
    "ngram_similarity",
    "pairs",
    "save_pairs",
]
