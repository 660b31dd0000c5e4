"""Self-improving policies: preference pairs as text and their filters (`pairs`),
SAO (self-synthetic preference data) and RLP (reasoning rewarded by information
gain). See docs/self_improvement.md."""

from convergence_jax.self_improve import pairs, personas, rlp, sao
from convergence_jax.self_improve.pairs import (
    PairFilter,
    PreferencePair,
    distinct_n,
    filter_pairs,
    load_pairs,
    ngram_similarity,
    parse_ranking,
    save_pairs,
)
from convergence_jax.self_improve.personas import Persona, persona_bank
from convergence_jax.self_improve.rlp import (
    RLPConfig,
    RLPHParams,
    RLPState,
    digit_sum_stream,
    make_rlp,
)
from convergence_jax.self_improve.sao import (
    JaxGenerator,
    OpenAIGenerator,
    PreferenceTrainer,
    SAOConfig,
    run_sao,
    sao_round,
)

__all__ = [
    "JaxGenerator",
    "OpenAIGenerator",
    "PairFilter",
    "Persona",
    "PreferencePair",
    "PreferenceTrainer",
    "RLPConfig",
    "RLPHParams",
    "RLPState",
    "SAOConfig",
    "digit_sum_stream",
    "distinct_n",
    "filter_pairs",
    "load_pairs",
    "make_rlp",
    "ngram_similarity",
    "pairs",
    "parse_ranking",
    "persona_bank",
    "personas",
    "rlp",
    "run_sao",
    "sao",
    "sao_round",
    "save_pairs",
]
