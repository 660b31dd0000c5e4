"""SAO, Self-Alignment Optimization: a model aligns itself on preference pairs it
writes, answers and ranks itself (Yin et al., "Aligning Large Language Models via
Fully Self-Synthetic Data", arXiv 2510.06652, Algorithm 1).

One round, for each persona of a bank (`personas.persona_bank`):

1. the model writes one prompt the persona might ask (the paper's instruction
   "Guess a prompt that the following persona may ask you to do: ... Your output
   should start with "User prompt:"", `PAPER_TEMPLATES`);
2. it answers that prompt twice at temperature ``tau`` (0.6, the paper's);
3. it ranks its own two answers and must reply ``ranking: X > Y`` (X, Y one of
   1 or 2, without repetition), parsed by `parse_ranking` (whitespace and case
   tolerant); an answer that does not parse is counted and its pair dropped;
4. the pairs pass `convergence_jax.self_improve.pairs.filter_pairs` (length,
   distinct-n, near-duplicate prompts), are saved (JSONL and JSON) and
5. train the model with SimPO (beta 10, gamma 3, the paper's) or any loss of
   `convergence_jax.llm.preference`; the trained model writes the next round.

    from convergence_jax.self_improve import sao
    from convergence_jax.self_improve.personas import persona_bank

    model = sao.JaxGenerator(config, tokenizer, params, max_new_tokens=8,
                             prompt_length=48)
    trainer = sao.PreferenceTrainer(config, tokenizer, prompt_length=16,
                                    completion_length=9)     # SimPO 10 / 3
    reports = sao.run_sao(jax.random.key(0), model, persona_bank(),
                          sao.SAOConfig(), rounds=3, trainer=trainer,
                          out_dir="runs/sao")

**What the paper leaves open, and what is chosen here.** The paper judges each
pair once, in one order, and does not say how unparsed rankings are handled.
Here a ranking that does not parse drops its pair (counted as
``parse_failures``); by default each pair is judged in both orders
(``judge_both_orders=True``) and kept only when the two rankings agree (the
disagreements, ``position_inconsistent``, measure the judge's position bias);
pairs whose two answers are identical are not sent to the judge (there is
nothing to rank) and are dropped by the filter as ``identical``. The judge
decodes greedily (``judge_temperature=0``); prompts are written at
``prompt_temperature`` (1.0; the paper gives only the response temperature).

**Pluggable models.** A generator is anything with ``generate(prompts,
temperature, key) -> list[str]`` (`Generator`): `JaxGenerator` (our model,
batched `convergence_jax.lm.generate`, compiled once per shape), or
`OpenAIGenerator` (any OpenAI-compatible ``/chat/completions`` endpoint through
the project's HTTP client, `convergence_jax.optimize.http.Caller`). The judge
defaults to the generator itself (self-judgment, the paper's best setting); any
other `Generator` may judge instead (the paper's ablation against a random judge
and ArmoRM). Only a `JaxGenerator` can be trained.

**A synthetic task where judging is easier than answering**, `PersonaArithmetic`:
the persona's interest picks the kind of addition problem the model's prompt
writer asks (two digits plus two, two plus one, one plus two); the model answers
``37+45=`` and ranks ``37+45=82 37+45=72 ranking:`` -> `` 1 > 2`` (each
answer after its prompt, as the model would write it: checking an answer is then
reading it the way the model reads its own, under teacher forcing). A warm-up
SFT on labelled examples of all three skills (`warmup_sft`) leaves the model
answering partly right and judging better than it answers; after it, SAO uses
no label: the hidden truth (`PersonaArithmetic.truth`) is only *reported* (the
judge's agreement with it, per round). See ``benchmarks/sao_learning.py``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import re
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from convergence_jax.llm.preference import (
    PREFERENCE_LOSSES,
    PreferenceBatch,
    PreferenceHParams,
    make_preference,
)
from convergence_jax.llm.sft import SFTHParams, adamw_update, sft_loss
from convergence_jax.llm.tasks import SFTBatch
from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.generate import generate as lm_generate
from convergence_jax.lm.tokenizer import pad_batch
from convergence_jax.self_improve.pairs import (
    PairFilter,
    PreferencePair,
    filter_pairs,
    parse_ranking,
    save_pairs,
)
from convergence_jax.self_improve.personas import Persona

__all__ = [
    "COMPACT_TEMPLATES",
    "PAPER_TEMPLATES",
    "Generator",
    "JaxGenerator",
    "OpenAIGenerator",
    "PersonaArithmetic",
    "PreferenceTrainer",
    "SAOConfig",
    "SAOTemplates",
    "extract_prompt",
    "pairs_to_batch",
    "parse_ranking",
    "run_sao",
    "sao_round",
    "tile_batch",
    "sft_rows",
    "warmup_sft",
]


# --- the templates -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SAOTemplates:
    """The three instructions of a round (``str.format`` fields in braces)."""

    prompt_writing: str
    """``{persona}`` -> the instruction that makes the model write one prompt."""
    response: str
    """``{prompt}`` -> what the model answers (``"{prompt}"``: the prompt as is)."""
    judging: str
    """``{prompt}``, ``{response_1}``, ``{response_2}`` -> the ranking request."""
    judge_prompted: bool = False
    """The judging text ends with ``ranking:`` and replies continue it."""
    prompt_marker: str = "User prompt:"
    """What the written prompt follows (`extract_prompt`)."""


PAPER_TEMPLATES = SAOTemplates(
    prompt_writing=(
        "Guess a prompt that the following persona may ask you to do: {persona}. "
        "Note: 1. The prompt should be informative and specific. 2. Your output "
        'should start with "User prompt:"'
    ),
    response="{prompt}",
    judging=(
        "You are an impartial judge. Your task is to rank two answers to a given "
        "prompt based on their quality.\n\nPrompt: {prompt}\n\n"
        "Response 1: <Response 1> {response_1} </Response 1>\n\n"
        "Response 2: <Response 2> {response_2} </Response 2>\n\n"
        "Evaluate the responses on these criteria: 1. Relevance and specificity: "
        "does the answer address the prompt directly? 2. Accuracy and "
        "correctness. 3. Completeness and comprehensiveness. 4. Clarity and "
        "understandability. Then, rank these two responses from best to worst. You "
        "must output your ranking strictly in the following format: ranking: X > Y, "
        "where X and Y represent one of 1 or 2, without repetition. Do not output "
        "anything else."
    ),
)
"""The paper's instructions (§4.1-4.3, Fig. 1), for an instruction-tuned model."""

COMPACT_TEMPLATES = SAOTemplates(
    prompt_writing="{persona}. User prompt:",
    response="{prompt}",
    judging="{prompt}{response_1} {prompt}{response_2} ranking:",
    judge_prompted=True,
)
"""The same three requests, short, for a tiny byte-level model that learned them
in a warm-up (`PersonaArithmetic`)."""


def extract_prompt(text: str, marker: str = "User prompt:") -> str | None:
    """The prompt a writer produced: what follows the last ``marker`` (the whole
    text if there is none), stripped; None if that is empty."""
    if not isinstance(text, str):
        return None
    if marker and marker.lower() in text.lower():
        at = text.lower().rindex(marker.lower())
        text = text[at + len(marker) :]
    text = text.strip().strip('"').strip()
    return text or None


# --- generators ------------------------------------------------------------------


class Generator(Protocol):
    """Anything that completes a list of prompts (a policy, a judge)."""

    def generate(
        self, prompts: Sequence[str], temperature: float, key: jax.Array
    ) -> list[str]: ...


class JaxGenerator:
    """Our model as a `Generator`: batched, KV-cached `convergence_jax.lm.generate`
    on prompts left-padded to ``prompt_length`` tokens, ``batch_size`` at a time
    (the last batch padded), so one compiled program serves every call (and every
    set of parameters of the same shapes: another seed, the next round).

    ``params`` is a public attribute: a trainer replaces it. A prompt longer than
    ``prompt_length`` tokens is not sent: its completion is ``""`` (counted in
    ``overlong``), which the pipeline drops like any failed answer. Greedy at
    ``temperature == 0``. Each prompt gets its own key (``fold_in(key, i)``), so
    its completion does not depend on the batching.
    """

    def __init__(
        self,
        config: LMConfig,
        tokenizer,
        params,
        *,
        max_new_tokens: int,
        prompt_length: int,
        batch_size: int = 256,
        top_k: int = 0,
        stop_tokens: Sequence[int] | None = None,
    ):
        if not isinstance(config, LMConfig):
            raise ValueError(f"config must be an LMConfig, got {type(config).__name__}")
        for name, value in (
            ("max_new_tokens", max_new_tokens),
            ("prompt_length", prompt_length),
            ("batch_size", batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"JaxGenerator: {name} must be an int >= 1, got {value!r}"
                )
        if prompt_length + max_new_tokens > config.max_position_embeddings:
            raise ValueError(
                f"JaxGenerator: prompt_length {prompt_length} + max_new_tokens "
                f"{max_new_tokens} exceeds max_position_embeddings "
                f"{config.max_position_embeddings}"
            )
        tokenizer.check_model(config)
        self.config = config
        self.tokenizer = tokenizer
        self.params = params
        self.max_new_tokens = max_new_tokens
        self.prompt_length = prompt_length
        self.batch_size = batch_size
        self.overlong = 0
        stops = tuple(tokenizer.stop_tokens if stop_tokens is None else stop_tokens)

        def run(params, keys, tokens, mask, temperature):
            out = lm_generate(
                keys,
                params,
                config,
                tokens,
                mask,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                stop_tokens=stops,
                pad_id=tokenizer.pad_id,
            )
            return out.tokens[:, 0], out.mask[:, 0]

        self._run = jax.jit(run)

    def generate(
        self, prompts: Sequence[str], temperature: float, key: jax.Array
    ) -> list[str]:
        prompts = list(prompts)
        if not prompts:
            return []
        if not (isinstance(temperature, int | float) and temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        ids = [self.tokenizer.encode(p) for p in prompts]
        fits = [0 < len(x) <= self.prompt_length for x in ids]
        self.overlong += sum(not f for f in fits)
        ids = [
            x if f else [self.tokenizer.pad_id] for x, f in zip(ids, fits, strict=True)
        ]
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(ids)))
        texts: list[str] = []
        size = self.batch_size
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            live = len(chunk)
            chunk = chunk + [chunk[0]] * (size - live)
            tokens, mask = pad_batch(chunk, self.tokenizer.pad_id, self.prompt_length)
            chunk_keys = keys[start : start + size]
            if live < size:
                chunk_keys = jnp.concatenate(
                    [chunk_keys, jnp.repeat(chunk_keys[:1], size - live)]
                )
            out, out_mask = self._run(
                self.params,
                chunk_keys,
                jnp.asarray(tokens),
                jnp.asarray(mask),
                jnp.float32(temperature),
            )
            texts += self.tokenizer.decode_batch(
                np.asarray(out)[:live], np.asarray(out_mask)[:live]
            )
        return [t if f else "" for t, f in zip(texts, fits, strict=True)]


class OpenAIGenerator:
    """Any OpenAI-compatible chat endpoint as a `Generator`: one ``POST
    {base_url}/chat/completions`` per prompt (a single user message; ``system``
    before it if given), at most ``max_concurrency`` at a time, through
    `convergence_jax.optimize.http.Caller` (retries with jittered backoff on 429,
    5xx, timeouts). Each request's ``seed`` comes from ``key``. A call that fails
    for good gives ``""`` and its error is kept in ``errors`` (the pipeline then
    drops that item, counted), so one bad call never loses a round.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        token_env: str | None = "OPENAI_API_KEY",
        *,
        max_tokens: int | None = 512,
        system: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_concurrency: int = 4,
        extra_body: dict | None = None,
    ):
        from convergence_jax.agents.agent import OpenAIBackend

        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise ValueError(f"max_concurrency must be an int, got {max_concurrency!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        # The request, the token (from the environment, masked in errors), the
        # retries and the response parsing are the agents' OpenAI backend's.
        self.backend = OpenAIBackend(
            base_url,
            model,
            token_env,
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            backoff_max_s=backoff_max_s,
            max_tokens=max_tokens,
            extra_body=extra_body,
            max_concurrency=max_concurrency,
        )
        self.model = model
        self.system = system
        self.max_concurrency = max_concurrency
        self.errors: list[str] = []

    @property
    def notes(self) -> list[str]:
        """The HTTP client's notes (retries and their reasons)."""
        return self.backend.notes

    def _one(self, prompt: str, temperature: float, seed: int) -> str:
        from convergence_jax.optimize.http import HttpCallError

        messages = [{"role": "user", "content": prompt}]
        if self.system:
            messages.insert(0, {"role": "system", "content": self.system})
        try:
            return self.backend.complete(
                messages, temperature=float(temperature), seed=int(seed)
            ).text
        except HttpCallError as error:
            redacted = self.backend.caller.redact(f"{type(error).__name__}: {error}")
            self.errors.append(redacted)
            return ""

    def generate(
        self, prompts: Sequence[str], temperature: float, key: jax.Array
    ) -> list[str]:
        prompts = list(prompts)
        if not prompts:
            return []
        if not (isinstance(temperature, int | float) and temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        seeds = np.asarray(jax.random.randint(key, (len(prompts),), 0, 2**31 - 1))
        with concurrent.futures.ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(
                pool.map(
                    lambda ps: self._one(ps[0], temperature, ps[1]),
                    zip(prompts, seeds.tolist(), strict=True),
                )
            )

    def close(self) -> None:
        self.backend.close()


# --- one round -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SAOConfig:
    """The numbers of a SAO run (the paper's where it gives them)."""

    temperature: float = 0.6
    """``tau``, the temperature of the two responses (the paper's 0.6)."""
    prompt_temperature: float = 1.0
    """The temperature at which prompts are written (not given in the paper)."""
    judge_temperature: float = 0.0
    """The judge's (0: greedy)."""
    judge_both_orders: bool = True
    """Judge (1, 2) and (2, 1); keep a pair only when both rankings agree."""
    templates: SAOTemplates = PAPER_TEMPLATES
    filter: PairFilter = PairFilter()
    """`filter_pairs`' spec (length, distinct-n, near-duplicate prompts)."""

    def __post_init__(self):
        for name in ("temperature", "prompt_temperature"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"SAOConfig.{name} must be a number, got {value!r}")
            if value <= 0:
                raise ValueError(
                    f"SAOConfig.{name} must be > 0 (SAO samples here: two "
                    f"different responses need sampling), got {value!r}"
                )
        if not (
            isinstance(self.judge_temperature, int | float)
            and self.judge_temperature >= 0
        ):
            raise ValueError(
                f"SAOConfig.judge_temperature must be >= 0, got "
                f"{self.judge_temperature!r}"
            )
        if not isinstance(self.templates, SAOTemplates):
            raise ValueError("SAOConfig.templates must be an SAOTemplates")
        if not isinstance(self.filter, PairFilter):
            raise ValueError("SAOConfig.filter must be a PairFilter")


def _persona_text(persona) -> str:
    text = persona.text if isinstance(persona, Persona) else persona
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"a persona must be a Persona or a non-empty str, got {persona!r}"
        )
    return text


def sao_round(
    key: jax.Array,
    generator: Generator,
    personas: Sequence[Persona | str],
    config: SAOConfig = SAOConfig(),
    *,
    judge: Generator | None = None,
    round_index: int = 0,
    truth: Callable[[str, str], bool | None] | None = None,
    prompt_ok: Callable[[str], bool] | None = None,
) -> tuple[list[PreferencePair], dict[str, Any]]:
    """One SAO round (see the module docstring): the kept `PreferencePair` s and
    the round's report.

    ``judge``: who ranks (default ``generator``: self-judgment). ``truth(prompt,
    response)``: the hidden ground truth where a task has one (True / False, None
    when unknown), used only for the report, never to choose or drop a pair.
    ``prompt_ok(prompt)``: drop written prompts it rejects (e.g. a benchmark's
    held-out problems), counted in ``prompts_rejected``.

    Report keys: ``personas``, ``prompts_written``, ``prompts_empty``,
    ``prompts_rejected``, ``pairs_sampled``, ``identical``, ``judge_calls``,
    ``parse_failures`` (judge replies that did not parse), ``unparsed_pairs``,
    ``position_inconsistent``, ``pairs_ranked``, ``filter`` (filter_pairs'
    counts), ``kept``, ``seconds``; with ``truth``: ``response_accuracy`` (of the
    sampled responses), ``decisive_pairs`` (ranked pairs with exactly one right
    answer), ``judge_agreement`` (of them, the fraction whose chosen answer is the
    right one; NaN if none), ``chosen_accuracy`` (kept pairs' chosen answers right).
    """
    start = time.perf_counter()
    personas = list(personas)
    if not personas:
        raise ValueError("sao_round: the persona bank is empty")
    texts = [_persona_text(p) for p in personas]
    judge = generator if judge is None else judge
    t = config.templates
    k_prompt, k_resp, k_judge1, k_judge2 = jax.random.split(key, 4)

    written = generator.generate(
        [t.prompt_writing.format(persona=p) for p in texts],
        config.prompt_temperature,
        k_prompt,
    )
    report: dict[str, Any] = {
        "round": round_index,
        "personas": len(texts),
        "prompts_empty": 0,
        "prompts_rejected": 0,
    }
    items = []  # (persona, prompt)
    for persona, raw in zip(texts, written, strict=True):
        prompt = extract_prompt(raw, t.prompt_marker)
        if prompt is None:
            report["prompts_empty"] += 1
        elif prompt_ok is not None and not prompt_ok(prompt):
            report["prompts_rejected"] += 1
        else:
            items.append((persona, prompt))
    report["prompts_written"] = len(items)
    asked = [t.response.format(prompt=p) for _, p in items]
    both = generator.generate(asked + asked, config.temperature, k_resp)
    first, second = both[: len(items)], both[len(items) :]
    report["pairs_sampled"] = len(items)
    # Only different answers go to the judge.
    differ = [i for i in range(len(items)) if first[i].strip() != second[i].strip()]
    report["identical"] = len(items) - len(differ)

    def ask(order_first, order_second, k):
        requests = [
            t.judging.format(
                prompt=items[i][1],
                response_1=order_first[i],
                response_2=order_second[i],
            )
            for i in differ
        ]
        replies = judge.generate(requests, config.judge_temperature, k)
        return [parse_ranking(r, prompted=t.judge_prompted) for r in replies], replies

    ranked_a, replies_a = ask(first, second, k_judge1)
    calls = len(differ)
    if config.judge_both_orders:
        ranked_b, replies_b = ask(second, first, k_judge2)
        calls += len(differ)
    else:
        ranked_b, replies_b = [None] * len(differ), [None] * len(differ)
    report["judge_calls"] = calls
    failures = sum(r is None for r in ranked_a)
    if config.judge_both_orders:
        failures += sum(r is None for r in ranked_b)
    report["parse_failures"] = failures

    pairs: list[PreferencePair] = []
    unparsed = inconsistent = 0
    for slot, i in enumerate(differ):
        persona, prompt = items[i]
        a = ranked_a[slot]
        if config.judge_both_orders:
            b = ranked_b[slot]
            if a is None or b is None:
                unparsed += 1
                continue
            # In order B, "1" is the second response.
            if a[0] != 3 - b[0]:
                inconsistent += 1
                continue
        elif a is None:
            unparsed += 1
            continue
        chosen, rejected = (first[i], second[i]) if a[0] == 1 else (second[i], first[i])
        pairs.append(
            PreferencePair(
                prompt,
                chosen,
                rejected,
                {
                    "persona": persona,
                    "round": round_index,
                    "ranking": replies_a[slot],
                    "ranking_swapped": replies_b[slot],
                },
            )
        )
    report["unparsed_pairs"] = unparsed
    report["position_inconsistent"] = inconsistent
    report["pairs_ranked"] = len(pairs)
    # Identical answers go through the filter too, so its counts add up to every
    # sampled pair.
    identical = [
        PreferencePair(items[i][1], first[i], second[i], {"round": round_index})
        for i in range(len(items))
        if first[i].strip() == second[i].strip()
    ]
    kept, counts = filter_pairs(pairs + identical, config.filter)
    # filter_pairs compares raw text; answers equal once stripped count as identical.
    leftover = [p for p in kept if p.chosen.strip() == p.rejected.strip()]
    if leftover:
        counts["identical"] += len(leftover)
        counts["kept"] -= len(leftover)
        kept = [p for p in kept if p.chosen.strip() != p.rejected.strip()]
    report["filter"] = counts
    report["kept"] = len(kept)
    if truth is not None:
        labels = [
            (truth(p, a), truth(p, b))
            for (_, p), a, b in zip(items, first, second, strict=True)
        ]
        known = [x for pair in labels for x in pair if x is not None]
        report["response_accuracy"] = float(np.mean(known)) if known else math.nan
        decisive = agree = 0
        for pair in pairs:
            right_w, right_l = (
                truth(pair.prompt, pair.chosen),
                truth(pair.prompt, pair.rejected),
            )
            if right_w is None or right_l is None or right_w == right_l:
                continue
            decisive += 1
            agree += bool(right_w)
        report["decisive_pairs"] = decisive
        report["judge_agreement"] = agree / decisive if decisive else math.nan
        chosen_right = [truth(p.prompt, p.chosen) for p in kept]
        chosen_right = [x for x in chosen_right if x is not None]
        report["chosen_accuracy"] = (
            float(np.mean(chosen_right)) if chosen_right else math.nan
        )
    report["seconds"] = time.perf_counter() - start
    return kept, report


# --- pairs -> PreferenceBatch, and the trainer ------------------------------------


def pairs_to_batch(
    pairs: Sequence[PreferencePair],
    tokenizer,
    prompt_length: int,
    completion_length: int,
    *,
    template: str = "{prompt}",
    stop_id: int | None = None,
) -> PreferenceBatch:
    """Tokenize pairs for `llm.preference`: the prompt as the policy saw it
    (``template.format(prompt=...)``) left-padded to ``prompt_length``; chosen
    and rejected, each followed by ``stop_id`` (default ``tokenizer.eos_id``; the
    masks cover it), right-padded to ``completion_length``. Raises ``ValueError``
    naming the pair for an empty list or a text that does not fit.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs_to_batch: no pairs")
    stop = tokenizer.eos_id if stop_id is None else stop_id
    prompts, chosen, rejected = [], [], []
    for n, pair in enumerate(pairs):
        p = tokenizer.encode(template.format(prompt=pair.prompt))
        w = tokenizer.encode(pair.chosen) + ([stop] if stop is not None else [])
        lo = tokenizer.encode(pair.rejected) + ([stop] if stop is not None else [])
        if not p or len(p) > prompt_length:
            raise ValueError(
                f"pairs_to_batch: pair {n}'s prompt has {len(p)} tokens; expected 1 "
                f"to prompt_length={prompt_length}"
            )
        for name, ids in (("chosen", w), ("rejected", lo)):
            if len(ids) > completion_length:
                raise ValueError(
                    f"pairs_to_batch: pair {n}'s {name} has {len(ids)} tokens (stop "
                    f"included), more than completion_length={completion_length}"
                )
        prompts.append(p)
        chosen.append(w)
        rejected.append(lo)
    pad = tokenizer.pad_id
    arrays = (
        *pad_batch(prompts, pad, prompt_length, "left"),
        *pad_batch(chosen, pad, completion_length, "right"),
        *pad_batch(rejected, pad, completion_length, "right"),
    )
    return PreferenceBatch(*(jnp.asarray(a, jnp.int32) for a in arrays))


def tile_batch(batch: PreferenceBatch, size: int) -> PreferenceBatch:
    """``batch`` repeated cyclically (or cut) to ``size`` rows: every round and
    every seed then trains on the same shapes (one compiled program). With ``n``
    rows each is repeated ``size // n`` or ``size // n + 1`` times."""
    rows = batch.prompt_tokens.shape[0]
    index = jnp.arange(size) % rows
    return PreferenceBatch(*(x[index] for x in batch))


class PreferenceTrainer:
    """Trains a `JaxGenerator`'s parameters on a round's pairs: ``num_steps``
    minibatches of ``batch_size`` of `llm.make_preference` with ``loss`` (SimPO
    with the paper's beta 10, gamma 3 by default; any `PREFERENCE_LOSSES` name),
    the pairs tokenized by `pairs_to_batch` and tiled to ``capacity`` rows, so one
    compiled ``run`` serves every round. For a loss with a reference (DPO, IPO,
    ...) the reference is the round's starting model (iterative DPO's choice).

    ``epochs``: train ``ceil(epochs * pairs / batch_size)`` updates (at most
    ``num_steps``) instead of ``num_steps`` (the paper trains 1 epoch), so that a
    round with few kept pairs takes few updates (one compiled update, looped).
    """

    def __init__(
        self,
        config: LMConfig,
        tokenizer,
        *,
        prompt_length: int,
        completion_length: int,
        loss: str = "simpo",
        hparams: PreferenceHParams | None = None,
        batch_size: int = 32,
        num_steps: int = 100,
        capacity: int = 512,
        template: str = "{prompt}",
        epochs: float | None = None,
    ):
        if epochs is not None and not (
            isinstance(epochs, int | float) and math.isfinite(epochs) and epochs > 0
        ):
            raise ValueError(f"PreferenceTrainer: epochs must be > 0, got {epochs!r}")
        if loss not in PREFERENCE_LOSSES:
            raise ValueError(
                f"unknown preference loss {loss!r}; expected one of "
                f"{sorted(PREFERENCE_LOSSES)}"
            )
        for name, value in (("num_steps", num_steps), ("capacity", capacity)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"PreferenceTrainer: {name} must be an int >= 1, got {value!r}"
                )
        if capacity < batch_size:
            raise ValueError(
                f"PreferenceTrainer: capacity {capacity} < batch_size {batch_size}"
            )
        if hparams is None:
            hparams = PreferenceHParams.create(learning_rate=1e-3, beta=10.0, gamma=3.0)
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.completion_length = completion_length
        self.capacity = capacity
        self.template = template
        self.loss = loss
        self.hparams = hparams
        self.num_steps = num_steps
        self.epochs = epochs
        self.batch_size = batch_size
        self.program = make_preference(
            config, loss, batch_size=batch_size, hparams=hparams
        )
        chunk = num_steps if epochs is None else 1
        self._run = jax.jit(
            lambda state, data, hp: self.program.run(state, data, hp, chunk)
        )

    def batch(self, pairs: Sequence[PreferencePair]) -> PreferenceBatch:
        return tile_batch(
            pairs_to_batch(
                pairs,
                self.tokenizer,
                self.prompt_length,
                self.completion_length,
                template=self.template,
            ),
            self.capacity,
        )

    def train(self, key: jax.Array, params, pairs: Sequence[PreferencePair]):
        """``(params, metrics)`` after ``num_steps`` on the ``pairs`` that `fits`
        (unchanged params when none does)."""
        pairs = list(pairs)
        fitting = [p for p in pairs if self.fits(p)]
        if not fitting:
            return params, {"pairs": 0, "dropped_overlong": len(pairs)}
        state = self.program.init(key, params=params)
        data = self.batch(fitting)
        if self.epochs is None:
            steps = self.num_steps
            state, metrics = self._run(state, data, self.hparams)
        else:
            steps = min(
                self.num_steps,
                max(1, math.ceil(self.epochs * len(fitting) / self.batch_size)),
            )
            chunks = []
            for _ in range(steps):
                state, m = self._run(state, data, self.hparams)
                chunks.append(m)
            metrics = jax.tree.map(lambda *xs: jnp.concatenate(xs), *chunks)
        summary = {
            name: float(np.mean(np.asarray(v)[-max(1, steps // 10) :]))
            for name, v in metrics.items()
        }
        summary["steps"] = steps
        summary["pairs"] = len(fitting)
        summary["dropped_overlong"] = len(pairs) - len(fitting)
        return state.params, summary

    def fits(self, pair: PreferencePair) -> bool:
        """Whether ``pair`` fits the trainer's shapes (a pair that does not, e.g.
        an answer cut at the length limit whose re-encoding is longer, is left
        out of training and counted as ``dropped_overlong``)."""
        enc = self.tokenizer.encode
        prompt = enc(self.template.format(prompt=pair.prompt))
        return (
            0 < len(prompt) <= self.prompt_length
            and len(enc(pair.chosen)) < self.completion_length
            and len(enc(pair.rejected)) < self.completion_length
        )


# --- rounds -------------------------------------------------------------------


def run_sao(
    key: jax.Array,
    generator: Generator,
    personas: Sequence[Persona | str],
    config: SAOConfig = SAOConfig(),
    *,
    rounds: int = 1,
    trainer: PreferenceTrainer | None = None,
    judge: Generator | None = None,
    truth: Callable[[str, str], bool | None] | None = None,
    prompt_ok: Callable[[str], bool] | None = None,
    evaluate: Callable[[Any], dict] | None = None,
    out_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
    """``rounds`` SAO rounds: each round's pairs (`sao_round`) train the
    generator (``trainer``, in place: ``generator.params``), whose new
    parameters write, answer and (self-)judge the next round. Without a trainer
    every round samples from the same model (data generation only).

    ``evaluate(params) -> dict`` (e.g. held-out accuracy) runs before round 1
    (report ``round 0``) and after each round's training. ``out_dir``: each
    round's kept pairs as ``round_<r>.jsonl`` and ``round_<r>.json``
    (`save_pairs`). ``progress``: a line per round (None: silent). Returns the
    reports, round 0 first when ``evaluate`` is given.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"run_sao: rounds must be an int >= 1, got {rounds!r}")
    if not list(personas):
        raise ValueError("run_sao: the persona bank is empty")
    if trainer is not None and not hasattr(generator, "params"):
        raise ValueError(
            "run_sao: a trainer needs a generator with parameters (JaxGenerator)"
        )
    reports: list[dict[str, Any]] = []
    if evaluate is not None:
        before = {"round": 0, **evaluate(generator.params)}
        reports.append(before)
        if progress:
            progress(f"SAO round 0: {_fmt(before)}")
    out = Path(out_dir) if out_dir is not None else None
    for r in range(1, rounds + 1):
        key, k_round, k_train = jax.random.split(key, 3)
        pairs, report = sao_round(
            k_round,
            generator,
            personas,
            config,
            judge=judge,
            round_index=r,
            truth=truth,
            prompt_ok=prompt_ok,
        )
        if out is not None:
            report["files"] = [
                str(save_pairs(pairs, out / f"round_{r}.jsonl")),
                str(save_pairs(pairs, out / f"round_{r}.json")),
            ]
        if trainer is not None:
            start = time.perf_counter()
            generator.params, metrics = trainer.train(k_train, generator.params, pairs)
            report["train"] = metrics
            report["train_seconds"] = time.perf_counter() - start
        if evaluate is not None:
            report.update(evaluate(generator.params))
        reports.append(report)
        if progress:
            progress(f"SAO round {r}: {_fmt(report)}")
    return reports


def _fmt(report: dict) -> str:
    keys = (
        "pairs_sampled",
        "parse_failures",
        "position_inconsistent",
        "kept",
        "judge_agreement",
        "accuracy",
    )
    parts = []
    for k in keys:
        if k in report:
            v = report[k]
            parts.append(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(parts)


# --- a synthetic task where judging is easier than answering ----------------------

INTEREST_DIGITS = {
    "coins": (2, 2),
    "clocks": (2, 2),
    "maps": (2, 2),
    "dice": (2, 1),
    "stamps": (1, 2),
}
"""`PersonaArithmetic`: a persona's interest -> the digits of the two addends."""

PROBLEM = re.compile(r"^\s*(\d{1,3})\+(\d{1,3})=\s*$")


def _number(rng: np.random.Generator, digits: int) -> int:
    return (
        int(rng.integers(0, 10))
        if digits == 1
        else int(rng.integers(10 ** (digits - 1), 10**digits))
    )


@dataclasses.dataclass(frozen=True)
class PersonaArithmetic:
    """Addition problems whose kind a persona picks (`INTEREST_DIGITS`), for the
    SAO learning bar. A problem ``a+b=`` is *held out* when ``crc32("a+b") % 8 ==
    0`` (about 1 in 8): warm-up never shows it, SAO drops a written prompt that
    is one (`prompt_ok`), and held-out accuracy is measured on them only.
    """

    held_out_mod: int = 8
    templates: SAOTemplates = COMPACT_TEMPLATES

    def digits(self, persona: Persona) -> tuple[int, int]:
        return INTEREST_DIGITS[persona.interest]

    def is_held_out(self, a: int, b: int) -> bool:
        return zlib.crc32(f"{a}+{b}".encode()) % self.held_out_mod == 0

    def parse(self, prompt: str) -> tuple[int, int] | None:
        match = PROBLEM.match(prompt)
        return None if match is None else (int(match.group(1)), int(match.group(2)))

    def truth(self, prompt: str, response: str) -> bool | None:
        """The hidden ground truth: is ``response`` the sum? (None for a prompt
        that is not a problem.)"""
        problem = self.parse(prompt)
        if problem is None:
            return None
        return response.strip() == str(sum(problem))

    def prompt_ok(self, prompt: str) -> bool:
        """False for a held-out problem (kept out of SAO's data)."""
        problem = self.parse(prompt)
        return problem is None or not self.is_held_out(*problem)

    def problem(self, rng, digits, held_out: bool = False) -> tuple[int, int]:
        while True:
            a, b = _number(rng, digits[0]), _number(rng, digits[1])
            if self.is_held_out(a, b) == held_out:
                return a, b

    def wrong_answer(self, rng, a: int, b: int) -> str:
        """A plausible wrong sum: one digit changed, off by 1 or 10, or a carry
        dropped."""
        right = a + b
        while True:
            kind = rng.integers(0, 4)
            if kind == 0:
                s = list(str(right))
                i = int(rng.integers(0, len(s)))
                s[i] = str((int(s[i]) + int(rng.integers(1, 10))) % 10)
                if s[0] == "0" and len(s) > 1:
                    continue
                wrong = int("".join(s))
            elif kind == 1:
                wrong = right + int(rng.choice([-1, 1]))
            elif kind == 2:
                wrong = right + int(rng.choice([-10, 10]))
            else:  # digit-wise sum without carries
                sa, sb = str(a).zfill(3), str(b).zfill(3)
                wrong = int(
                    "".join(
                        str((int(x) + int(y)) % 10) for x, y in zip(sa, sb, strict=True)
                    )
                )
            if wrong != right and wrong >= 0:
                return str(wrong)

    def examples(self, rng, personas: Sequence[Persona], count: int, skill: str):
        """``count`` labelled (prompt text, completion text) examples of one warm-up
        skill: ``"write"`` (persona -> a problem of its kind), ``"answer"``
        (problem -> sum) or ``"judge"`` (problem and two answers, one right ->
        `` X > Y``). Never a held-out problem."""
        t = self.templates
        out = []
        for _ in range(count):
            persona = personas[int(rng.integers(0, len(personas)))]
            a, b = self.problem(rng, self.digits(persona))
            prompt = f"{a}+{b}="
            if skill == "write":
                out.append(
                    (t.prompt_writing.format(persona=persona.text), " " + prompt)
                )
            elif skill == "answer":
                out.append((t.response.format(prompt=prompt), str(a + b)))
            elif skill == "judge":
                right, wrong = str(a + b), self.wrong_answer(rng, a, b)
                first = bool(rng.integers(0, 2))
                r1, r2 = (right, wrong) if first else (wrong, right)
                text = t.judging.format(prompt=prompt, response_1=r1, response_2=r2)
                out.append((text, " 1 > 2" if first else " 2 > 1"))
            else:
                raise ValueError(f"unknown skill {skill!r}")
        return out

    def held_out_problems(self, personas: Sequence[Persona], count: int, seed: int = 0):
        """``count`` distinct held-out problems ``(prompt, sum)``, each of the kind
        of a persona drawn uniformly from ``personas``."""
        rng = np.random.default_rng(10**6 + seed)
        seen, out = set(), []
        while len(out) < count:
            persona = personas[int(rng.integers(0, len(personas)))]
            a, b = self.problem(rng, self.digits(persona), held_out=True)
            if (a, b) not in seen:
                seen.add((a, b))
                out.append((f"{a}+{b}=", a + b))
        return out

    def judge_pairs(self, personas: Sequence[Persona], count: int, seed: int = 0):
        """``count`` held-out judging requests with their right ranking (the
        warm-up's kind of pair: one right sum, one plausible wrong)."""
        rng = np.random.default_rng(2 * 10**6 + seed)
        t = self.templates
        out = []
        for _ in range(count):
            persona = personas[int(rng.integers(0, len(personas)))]
            a, b = self.problem(rng, self.digits(persona), held_out=True)
            right, wrong = str(a + b), self.wrong_answer(rng, a, b)
            first = bool(rng.integers(0, 2))
            r1, r2 = (right, wrong) if first else (wrong, right)
            out.append(
                (
                    t.judging.format(prompt=f"{a}+{b}=", response_1=r1, response_2=r2),
                    1 if first else 2,
                )
            )
        return out


def sft_rows(tokenizer, examples, prompt_length: int, completion_length: int):
    """``SFTBatch`` arrays: prompt left-padded, completion plus eos right-padded,
    the loss on the completion and eos."""
    prompts = [tokenizer.encode(p) for p, _ in examples]
    completions = [tokenizer.encode(c) + [tokenizer.eos_id] for _, c in examples]
    p_tok, p_mask = pad_batch(prompts, tokenizer.pad_id, prompt_length, "left")
    c_tok, c_mask = pad_batch(completions, tokenizer.pad_id, completion_length, "right")
    tokens = np.concatenate([p_tok, c_tok], 1)
    mask = np.concatenate([p_mask, c_mask], 1)
    loss_mask = np.concatenate([np.zeros_like(p_mask), c_mask], 1)
    return SFTBatch(*(jnp.asarray(x, jnp.int32) for x in (tokens, mask, loss_mask)))


def warmup_sft(config: LMConfig, rows: dict[str, int], hparams: SFTHParams):
    """A warm-up SFT program over several skills (labels are used here only).
    ``rows`` maps a skill name to the examples of it drawn per step. Returns
    ``(init(key, params), run(state, pools, weights, num_steps))``: ``pools``
    maps each skill to an ``SFTBatch`` ``[N_s, T_s]`` (`sft_rows`); every step
    draws ``rows[s]`` examples of each skill ``s`` and minimizes ``sum_s w_s *
    sft_loss_s / sum_s w_s`` (``weights``: a dict of traced scalars, so a skill
    can be switched off without recompiling). ``run`` is one jitted
    `jax.lax.scan`; vmap it over seeds."""
    import optax

    moments = optax.scale_by_adam()
    names = sorted(rows)

    def loss(params, batches, weights):
        total, metrics = 0.0, {}
        norm = sum(weights[n] for n in names)
        for n in names:
            value, m = sft_loss(params, config, batches[n])
            total = total + weights[n] * value
            metrics[f"{n}_loss"] = value
            metrics[f"{n}_sequence_accuracy"] = m["sequence_accuracy"]
        return total / jnp.maximum(norm, 1e-9), metrics

    def init(key, params):
        return {
            "params": params,
            "opt": moments.init(params),
            "key": key,
            "step": jnp.zeros((), jnp.int32),
        }

    def step(state, pools, weights):
        k = jax.random.fold_in(state["key"], state["step"])
        batches = {}
        for j, n in enumerate(names):
            pool = pools[n]
            size = pool.tokens.shape[0]
            index = jax.random.randint(jax.random.fold_in(k, j), (rows[n],), 0, size)
            batches[n] = SFTBatch(*(x[index] for x in pool))
        (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(
            state["params"], batches, weights
        )
        params, opt, _, _ = adamw_update(
            moments, grads, state["opt"], state["params"], state["step"], hparams
        )
        new = {**state, "params": params, "opt": opt, "step": state["step"] + 1}
        return new, {**metrics, "loss": value}

    def run(state, pools, weights, num_steps: int):
        return jax.lax.scan(
            lambda s, _: step(s, pools, weights), state, None, num_steps
        )

    return init, run
