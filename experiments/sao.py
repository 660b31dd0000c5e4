"""SAO data from an OpenAI-compatible model: personas -> prompts -> two answers
at tau -> the model's own ranking, filtered and saved per round.

    python experiments/sao.py --base-url http://127.0.0.1:8000/v1 --model qwen
    python experiments/sao.py --base-url https://api.openai.com/v1 \\
        --model gpt-4o-mini --judge-model gpt-4o --personas 200
    python experiments/sao.py --help                          # every flag

The paper's instructions (`self_improve.sao.PAPER_TEMPLATES`) and persona bank
(`self_improve.personas.persona_bank`, 720 compositional personas). The judge is
the generating model itself unless ``--judge-model`` / ``--judge-base-url`` name
another one. Writes to ``out_dir``: ``round_<r>.jsonl`` and ``round_<r>.json``
(the kept pairs, `self_improve.pairs.load_pairs` reads them back) and
``report.json`` (per round: personas, prompts, identical answers, judge calls,
parse failures, position-inconsistent pairs, filter counts, kept pairs). The
model's weights are not ours, so rounds here generate data without training;
to train a JAX model on them, load the pairs and use
`self_improve.sao.PreferenceTrainer` (benchmarks/sao_learning.py runs the whole
loop on a tiny model).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import numpy as np
import tyro

from convergence_jax.self_improve import sao
from convergence_jax.self_improve.pairs import PairFilter
from convergence_jax.self_improve.personas import persona_bank


@dataclass(frozen=True)
class Config:
    """SAO pairs from an OpenAI-compatible chat endpoint."""

    base_url: str
    """The endpoint, e.g. http://127.0.0.1:8000/v1."""
    model: str
    """The model that writes prompts and answers them."""
    token_env: str | None = "OPENAI_API_KEY"
    """Environment variable with the bearer token (None: no header)."""
    judge_model: str | None = None
    """Another model as judge (default: the same one, self-judgment)."""
    judge_base_url: str | None = None
    """The judge's endpoint (default: base_url)."""
    personas: int = 100
    """Personas per round (one prompt each), drawn without replacement."""
    rounds: int = 1
    """Rounds (without training: fresh draws of the same model)."""
    temperature: float = 0.6
    """tau, the answers' temperature (the paper's)."""
    prompt_temperature: float = 1.0
    """The prompts' temperature."""
    judge_both_orders: bool = True
    """Rank each pair in both orders; keep it only when they agree."""
    max_tokens: int = 512
    """Completion limit per request."""
    max_concurrency: int = 4
    """Requests in flight."""
    seed: int = 0
    """Persona draws and request seeds."""
    out_dir: str = "runs/sao"
    """Where the pairs and the report go."""


def main(config: Config) -> list[dict]:
    generator = sao.OpenAIGenerator(
        config.base_url,
        config.model,
        config.token_env,
        max_tokens=config.max_tokens,
        max_concurrency=config.max_concurrency,
    )
    judge = None
    if config.judge_model or config.judge_base_url:
        judge = sao.OpenAIGenerator(
            config.judge_base_url or config.base_url,
            config.judge_model or config.model,
            config.token_env,
            max_tokens=64,
            max_concurrency=config.max_concurrency,
        )
    sao_config = sao.SAOConfig(
        temperature=config.temperature,
        prompt_temperature=config.prompt_temperature,
        judge_both_orders=config.judge_both_orders,
        templates=sao.PAPER_TEMPLATES,
        filter=PairFilter(min_length=1, max_length=4096, min_distinct=0.3),
    )
    bank = persona_bank()
    if not 1 <= config.personas <= len(bank):
        raise SystemExit(
            f"--personas must be in [1, {len(bank)}], got {config.personas}"
        )
    rng = np.random.default_rng(config.seed)
    out = Path(config.out_dir)
    reports = []
    key = jax.random.key(config.seed)
    try:
        for r in range(1, config.rounds + 1):
            drawn = rng.choice(len(bank), config.personas, replace=False)
            key, k = jax.random.split(key)
            (report,) = sao.run_sao(
                k,
                generator,
                [bank[i] for i in drawn],
                sao_config,
                rounds=1,
                judge=judge,
                out_dir=out / f"round_{r}",
                progress=print,
            )
            report["round"] = r
            report["http_errors"] = list(generator.errors)
            reports.append(report)
    finally:
        generator.close()
        if judge is not None:
            judge.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(
        json.dumps({"config": asdict(config), "rounds": reports}, indent=2)
    )
    return reports


if __name__ == "__main__":
    main(tyro.cli(Config))
