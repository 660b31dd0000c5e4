"""The optimizer's society: an LLM that reasons about the search (RLP) and turns the
history into preference data (SAO), beside Thompson sampling + evolution.

Enabled by the config's ``society`` block (The Convergence's keys)::

    society:
      enabled: true
      learning: {rlp_enabled: true, sao_enabled: true}
      llm: {model: gpt-4o-mini, base_url: https://api.openai.com/v1,
            api_key_env: OPENAI_API_KEY}
      rlp: {proposals: 2}
      sao: {every: 2}

Two agents share one LLM (an OpenAI-compatible endpoint through the project's HTTP
client, or our JAX model: ``llm.model: "jax:path/to/agent_checkpoint"``, a folder
written by ``agents.export.save_agent``):

**RLP** (reinforcement learning pre-training's reward, Hatamizadeh et al. 2025: a
thought is worth the information it adds about what comes next). Before each
generation after the first it is shown the search space, the reward and the best and
worst configurations measured so far, and writes its reasoning followed by
``rlp.proposals`` configurations in a JSON block. Each one is checked against the
search space (numbers out of range are clipped, anything else is dropped; both are
recorded as bad replies) and replaces one of the GA's non-elite children, so it is
evaluated by the same Thompson-sampling rounds as the GA's own children. Once the
generation is measured, RLP's reasoning gets its reward: the LLM predicts the mean
reward of every configuration of the generation twice, from the same history, once
without and once with that reasoning in context (at temperature 0), and

    information_gain = MSE(predictions without reasoning) - MSE(predictions with it)

over the generation's configurations (targets: the mean of each configuration's
evaluations in that generation). Under a Gaussian observation model with a fixed
noise ``sigma`` this is ``2 sigma^2 / N`` times the gain in log-likelihood, so
positive means the reasoning made the outcomes more predictable. The reasoning was
written before the generation was evaluated: nothing of the outcome leaks into it.

**SAO** (self-alignment optimization, Yin et al. 2025: preference data synthesized
without humans). Every ``sao.every`` generations (and after the last) it turns the
whole history into preference pairs: for each pair a context of
``sao.context_size`` measured configurations and two other measured configurations
are drawn; the prompt asks for a configuration given that context, ``chosen`` is the
JSON of the one that measured better, ``rejected`` the worse one (pairs whose
rewards differ by less than ``sao.min_margin`` are skipped). With ``sao.judge`` the
LLM ranks the two itself in SAO's format (``ranking: 1 > 2``; the order the two are
shown in is drawn at random): its pick is ``chosen``, whether it agrees with the
measurement goes into the pair's ``meta``, and a reply that does not parse drops the
pair and is recorded. The pairs are filtered
(``self_improve.pairs.filter_pairs``: lengths, diversity, near-duplicate prompts) and
written to ``sao.file`` (JSONL) in the output folder, ready for ``llm.preference``.

A failing, slow or garbled reply never stops the run: it is recorded (generation,
agent, call, kind -- ``http_error``, ``timeout``, ``garbled``, ``invalid_config``,
``out_of_range``, ``backend_error`` -- and a redacted excerpt) and the GA's own
children stand. The report gets a contribution table (see ``contributions``).

The society needs the host loop (``objective.type`` python or http): a JAX objective
runs the whole search as one compiled program, with no point to ask an LLM between
generations.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from convergence_jax.optimize.config import ConfigError, OptimizeConfig
from convergence_jax.self_improve.pairs import parse_ranking as _parse_ranking
from convergence_jax.spaces import Categorical, Float, Int, SearchSpace

__all__ = [
    "BAD_REPLY_KINDS",
    "Proposals",
    "ReplyError",
    "Society",
    "check_society_config",
    "contributions",
    "extract_json",
    "information_gain",
    "make_backend",
    "parse_predictions",
    "parse_proposals",
    "parse_ranking",
    "society_report_lines",
    "validate_config",
]

BAD_REPLY_KINDS = (
    "http_error",
    "timeout",
    "garbled",
    "invalid_config",
    "out_of_range",
    "backend_error",
)
EXCERPT_CHARS = 200
REASONING_CHARS = 4000  # kept in the record and shown to the predictor


class ReplyError(ValueError):
    """A reply that cannot be used; ``kind`` is one of ``BAD_REPLY_KINDS``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------- parsers

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


def extract_json(text: str) -> tuple[Any, str]:
    """The first JSON object or list in ``text`` and the text around it.

    A fenced block (```json ... ```) wins; otherwise the first ``{`` or ``[`` that
    starts a complete JSON value. Raises ``ReplyError("garbled")`` when there is none.
    """
    if not isinstance(text, str):
        raise ReplyError("garbled", f"the reply is {type(text).__name__}, not text")
    for m in _FENCE.finditer(text):
        try:
            value = json.loads(m.group(1))
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict | list):
            return value, (text[: m.start()] + text[m.end() :]).strip()
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch not in "{[":
            continue
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict | list):
            return value, (text[:i] + text[end:]).strip()
    raise ReplyError("garbled", "no JSON object or list in the reply")


def _finite_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)


def validate_config(
    raw: Any, space: SearchSpace
) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """Check one proposed configuration against ``space``.

    Returns ``(config, issues)``: numbers outside their range are clipped (issue
    ``out_of_range``), an integer given as a float is rounded; a configuration that is
    not a mapping, lacks or adds parameters, or has a value of the wrong type or an
    unknown choice gives ``None`` (issue ``invalid_config``). Each issue is
    ``(kind, message)``.
    """
    if not isinstance(raw, Mapping):
        return None, [("invalid_config", f"not an object: {raw!r}"[:EXCERPT_CHARS])]
    names = list(space.names)
    missing = [n for n in names if n not in raw]
    extra = sorted(str(k) for k in raw if k not in names)
    if missing or extra:
        what = []
        if missing:
            what.append(f"missing {missing}")
        if extra:
            what.append(f"unknown {extra}")
        return None, [("invalid_config", "; ".join(what))]
    out: dict[str, Any] = {}
    issues: list[tuple[str, str]] = []
    for p in space.params:
        v = raw[p.name]
        if isinstance(p, Categorical):
            match = [c for c in p.choices if type(c) is type(v) and c == v]
            if not match:
                return None, [
                    (
                        "invalid_config",
                        f"{p.name}: {v!r} is not one of {list(p.choices)}",
                    )
                ]
            out[p.name] = match[0]
            continue
        if not _finite_number(v):
            return None, [("invalid_config", f"{p.name}: {v!r} is not a number")]
        if isinstance(p, Int):
            v = int(round(v))
        if not p.low <= v <= p.high:
            clipped = min(max(v, p.low), p.high)
            issues.append(
                (
                    "out_of_range",
                    f"{p.name}: {v} outside [{p.low}, {p.high}], clipped to {clipped}",
                )
            )
            v = clipped
        out[p.name] = float(v) if isinstance(p, Float) else int(v)
    return out, issues


class Proposals(NamedTuple):
    """RLP's parsed reply."""

    reasoning: str
    configs: list[dict[str, Any]]
    """The usable configurations (checked, clipped), at most ``k``."""
    issues: list[tuple[str, str]]
    """``(kind, message)`` for every configuration clipped or dropped."""
    offered: int
    """Configurations in the reply, usable or not."""


def parse_proposals(text: str, space: SearchSpace, k: int) -> Proposals:
    """RLP's reply -> ``Proposals(reasoning, configs, issues, offered)``.

    The reply is reasoning followed by ``{"configs": [...]}`` (a bare list of
    configurations, or ``{"reasoning": ..., "configs": [...]}``, also parse). At most
    ``k`` configurations are used (extra ones are an ``invalid_config`` issue); each is
    checked with ``validate_config``. Raises ``ReplyError("garbled")`` when no list of
    configurations can be found.
    """
    value, rest = extract_json(text)
    reasoning = rest
    if isinstance(value, dict):
        if isinstance(value.get("reasoning"), str):
            reasoning = (value["reasoning"] + "\n" + rest).strip()
        configs = value.get("configs", value.get("configurations"))
        if configs is None and set(value) <= set(space.names) | {"reasoning"}:
            configs = [{n: v for n, v in value.items() if n != "reasoning"}]
    else:
        configs = value
    if not isinstance(configs, list) or not configs:
        raise ReplyError(
            "garbled", "the JSON block has no non-empty list 'configs' of objects"
        )
    issues: list[tuple[str, str]] = []
    offered = len(configs)
    if offered > k:
        issues.append(("invalid_config", f"{offered} configs, asked for {k}"))
        configs = configs[:k]
    kept = []
    for i, raw in enumerate(configs):
        config, found = validate_config(raw, space)
        issues += [(kind, f"config {i}: {msg}") for kind, msg in found]
        if config is not None:
            kept.append(config)
    return Proposals(reasoning, kept, issues, offered)


def parse_predictions(text: str, n: int) -> list[float]:
    """``{"predictions": [n numbers]}`` (or a bare list) -> the numbers.

    Raises ``ReplyError("garbled")`` for anything else (wrong count, non-numbers).
    """
    value, _ = extract_json(text)
    if isinstance(value, dict):
        value = value.get("predictions")
    if not isinstance(value, list):
        raise ReplyError("garbled", "no list 'predictions' in the JSON block")
    if len(value) != n:
        raise ReplyError("garbled", f"{len(value)} predictions for {n} configurations")
    out = []
    for v in value:
        if not _finite_number(v):
            raise ReplyError("garbled", f"prediction {v!r} is not a finite number")
        out.append(float(v))
    return out


def parse_ranking(text: str) -> int:
    """SAO's judging format, ``"ranking: X > Y"`` with X, Y one of 1 or 2 without
    repetition -> X, the preferred reply (`self_improve.pairs.parse_ranking`; the
    last ranking in the reply counts). Raises ``ReplyError("garbled")``."""
    ranking = _parse_ranking(text or "", which="last")
    if ranking is None:
        raise ReplyError("garbled", "no 'ranking: X > Y' (X, Y one of 1 or 2)")
    return ranking[0]


def information_gain(
    targets: Sequence[float], without: Sequence[float], with_: Sequence[float]
) -> dict[str, float]:
    """RLP's reward: how much the reasoning improved the predictions.

    ``mse_without`` and ``mse_with`` are the mean squared errors of the two
    prediction lists against ``targets``; ``gain = mse_without - mse_with``
    (positive: the reasoning helped). Under Gaussian noise of a fixed ``sigma`` the
    log-likelihood gain is ``N gain / (2 sigma^2)``.
    """
    t = np.asarray(targets, dtype=float)
    a = np.asarray(without, dtype=float)
    b = np.asarray(with_, dtype=float)
    if not (t.shape == a.shape == b.shape) or t.ndim != 1 or not len(t):
        raise ValueError(
            f"information_gain: one non-empty list each, got shapes {t.shape}, "
            f"{a.shape}, {b.shape}"
        )
    mse_without = float(np.mean((a - t) ** 2))
    mse_with = float(np.mean((b - t) ** 2))
    return {
        "mse_without": mse_without,
        "mse_with": mse_with,
        "gain": mse_without - mse_with,
    }


# ----------------------------------------------------------------------------- config


def _jax_model(model: str | None) -> bool:
    return isinstance(model, str) and model.startswith("jax:")


def check_society_config(config: OptimizeConfig) -> None:
    """Raise ``ConfigError`` naming the key for anything wrong (no network)."""
    s = config.society
    if not s.enabled:
        return
    where = "society"
    if config.objective.type not in ("python", "http"):
        raise ConfigError(
            f"{where}.enabled: the society needs objective.type python or http (a "
            f"{config.objective.type} objective runs the whole search as one "
            "compiled program, with no point to ask an LLM between generations)"
        )
    if not (s.learning.rlp_enabled or s.learning.sao_enabled):
        raise ConfigError(
            f"{where}.learning: enable rlp_enabled or sao_enabled (or set "
            "society.enabled: false)"
        )
    llm = s.llm
    if not llm.model:
        raise ConfigError(
            f"{where}.llm.model: name the model (e.g. gpt-4o-mini), or "
            "'jax:path/to/agent_checkpoint' for our JAX model, or 'python' for a "
            "backend passed to run_optimization(society_backend=...)"
        )
    if llm.model == "python":
        pass  # the backend object is passed to run_optimization(society_backend=)
    elif _jax_model(llm.model):
        if llm.base_url:
            raise ConfigError(
                f"{where}.llm.base_url: a jax: model runs in-process; remove base_url"
            )
        if len(llm.model) <= 4:
            raise ConfigError(f"{where}.llm.model: 'jax:' needs a checkpoint folder")
    else:
        if not llm.base_url:
            raise ConfigError(
                f"{where}.llm.base_url: the society's LLM needs the base URL of an "
                "OpenAI-compatible API, e.g. https://api.openai.com/v1 or "
                "http://127.0.0.1:8000/v1"
            )
        if not re.match(r"https?://", llm.base_url):
            raise ConfigError(
                f"{where}.llm.base_url: expected an http:// or https:// URL, got "
                f"{llm.base_url!r}"
            )
    for name in ("timeout_s", "backoff_s"):
        if not getattr(llm, name) > 0:
            value = getattr(llm, name)
            raise ConfigError(f"{where}.llm.{name}: must be > 0, got {value}")
    if llm.retries < 0:
        raise ConfigError(f"{where}.llm.retries: must be >= 0, got {llm.retries}")
    if llm.max_tokens < 1:
        raise ConfigError(f"{where}.llm.max_tokens: must be >= 1, got {llm.max_tokens}")
    if not 0 <= llm.temperature <= 2:
        raise ConfigError(
            f"{where}.llm.temperature: must be in [0, 2], got {llm.temperature}"
        )
    rlp, sao = s.rlp, s.sao
    opt = config.optimizer
    if s.learning.rlp_enabled:
        if rlp.proposals < 1:
            raise ConfigError(
                f"{where}.rlp.proposals: must be >= 1, got {rlp.proposals}"
            )
        free = opt.population_size - opt.elites
        if rlp.proposals > free:
            raise ConfigError(
                f"{where}.rlp.proposals ({rlp.proposals}) must be <= population_size "
                f"- elites ({free}): proposals replace the GA's non-elite children"
            )
        if rlp.history < 1:
            raise ConfigError(f"{where}.rlp.history: must be >= 1, got {rlp.history}")
    if s.learning.sao_enabled:
        for name in ("every", "pairs_per_round", "context_size"):
            if getattr(sao, name) < 1:
                raise ConfigError(
                    f"{where}.sao.{name}: must be >= 1, got {getattr(sao, name)}"
                )
        if sao.min_margin < 0:
            raise ConfigError(f"{where}.sao.min_margin: must be >= 0")
        if not sao.file.endswith((".jsonl", ".json")) or "/" in sao.file:
            raise ConfigError(
                f"{where}.sao.file: a file name ending in .jsonl or .json, got "
                f"{sao.file!r}"
            )
        try:
            _pair_filter(config)
        except ValueError as e:
            raise ConfigError(f"{where}.sao: {e}") from None


def _pair_filter(config: OptimizeConfig):
    from convergence_jax.self_improve.pairs import PairFilter

    sao = config.society.sao
    return PairFilter(
        min_length=sao.min_length,
        max_length=sao.max_length,
        dedup_threshold=sao.dedup_threshold,
        unit="word",
    )


def make_backend(config: OptimizeConfig):
    """The society's LLM: ``agents.agent.OpenAIBackend`` over the project's HTTP
    client, or ``JaxBackend`` over an agent checkpoint for ``jax:FOLDER``."""
    llm = config.society.llm
    if llm.model == "python":
        raise ConfigError(
            "society.llm.model: 'python' means the backend is passed in Python: "
            "run_optimization(config, society_backend=backend)"
        )
    if _jax_model(llm.model):
        from convergence_jax.agents.agent import JaxBackend
        from convergence_jax.agents.export import AgentCheckpointError, load_agent

        folder = Path(llm.model[4:])
        if not folder.is_absolute():
            folder = Path(config.base_dir) / folder
        try:
            params, model_config, tokenizer, _ = load_agent(folder)
        except AgentCheckpointError as e:
            raise ConfigError(f"society.llm.model: {e}") from None
        return JaxBackend(
            params,
            model_config,
            tokenizer,
            max_new_tokens=llm.max_tokens,
            temperature=llm.temperature,
            seed=config.optimizer.seed,
        )
    from convergence_jax.agents.agent import OpenAIBackend
    from convergence_jax.optimize.http import token_from_env

    token_from_env(llm.api_key_env, "society.llm.api_key_env")  # named if unset
    try:
        return OpenAIBackend(
            llm.base_url,
            llm.model,
            token_env=llm.api_key_env,
            timeout_s=llm.timeout_s,
            retries=llm.retries,
            backoff_s=llm.backoff_s,
            temperature=llm.temperature,
            max_tokens=llm.max_tokens,
            max_concurrency=1,
        )
    except ValueError as e:
        raise ConfigError(f"society.llm: {e}") from None


# ----------------------------------------------------------------------------- prompts


def _describe_space(space: SearchSpace) -> list[str]:
    lines = []
    for p in space.params:
        if isinstance(p, Categorical):
            lines.append(f"- {p.name}: one of {json.dumps(list(p.choices))}")
        elif isinstance(p, Int):
            lines.append(f"- {p.name}: integer in [{p.low}, {p.high}]")
        else:
            scale = ", log scale" if p.log else ""
            lines.append(f"- {p.name}: number in [{p.low:g}, {p.high:g}]{scale}")
    return lines


def _describe_reward(reward) -> str:
    return " + ".join(f"{m.weight:g} x {m.name} ({m.goal})" for m in reward.metrics)


def _config_text(config: Mapping[str, Any]) -> str:
    return json.dumps(dict(config))


def _pooled(records: Sequence[dict]) -> list[dict[str, Any]]:
    """Distinct configurations measured in ``records``, best mean reward first."""
    pooled: dict[str, dict[str, Any]] = {}
    for r in records:
        for e in r["evaluations"]:
            key = json.dumps(e["config"], sort_keys=True)
            row = pooled.setdefault(key, {"config": e["config"], "rewards": []})
            row["rewards"].append(e["reward"])
    rows = [
        {
            "config": row["config"],
            "mean_reward": float(np.mean(row["rewards"])),
            "evaluations": len(row["rewards"]),
        }
        for row in pooled.values()
    ]
    rows.sort(key=lambda row: -row["mean_reward"])
    return rows


def _history_lines(rows: Sequence[dict], top: int) -> list[str]:
    if not rows:
        return ["(nothing measured yet)"]
    lines = []
    best = rows[:top]
    for i, row in enumerate(best, 1):
        lines.append(
            f"{i}. {_config_text(row['config'])} -> {row['mean_reward']:.4f} "
            f"(n = {row['evaluations']})"
        )
    worst = [row for row in rows[-max(1, top // 4) :] if row not in best]
    if worst:
        lines.append("Worst so far:")
        for row in worst:
            lines.append(
                f"- {_config_text(row['config'])} -> {row['mean_reward']:.4f} "
                f"(n = {row['evaluations']})"
            )
    return lines


SYSTEM_PROMPT = (
    "You help a black-box optimizer (Thompson sampling + a genetic algorithm) find "
    "the configuration with the highest reward. Rewards are noisy measurements. "
    "Follow the requested reply format exactly."
)


# ----------------------------------------------------------------------------- shell


def inject_configs(state, space: SearchSpace, arms, configs):
    """``state`` (``MabEvolutionState``) with ``configs`` as the population's rows
    ``arms``. The arms must be non-elite children: their posteriors are the prior
    and their counts zero, so nothing else changes."""
    import jax.numpy as jnp

    encoded = space.encode(configs)
    new = {}
    for name, genes in state.ga.population.items():
        host = np.array(genes)  # a copy, set on the host: no program to compile
        host[np.asarray(arms)] = encoded[name].astype(host.dtype)
        new[name] = jnp.asarray(host)
    return state.replace(ga=state.ga.replace(population=new))


@dataclass
class _Pending:
    """RLP's proposal for the generation being evaluated."""

    generation: int
    reasoning: str = ""
    proposed: int = 0
    configs: list[dict[str, Any]] = field(default_factory=list)
    arms: list[int] = field(default_factory=list)
    replaced: list[dict[str, Any]] = field(default_factory=list)
    context: list[str] = field(default_factory=list)


class Society:
    """The host-side shell of the society for one run (see the module docstring).

    ``run.py`` calls ``propose`` before a generation is evaluated (it may replace
    some of the GA's children in the optimizer state) and ``observe`` once the
    generation's record is written (information gain, SAO); what they find goes
    into ``record["society"]``, so it is checkpointed and resumed with the records.
    """

    def __init__(
        self,
        config: OptimizeConfig,
        reward,
        out: Path | None,
        backend=None,
    ):
        self.config = config
        self.space = config.space()
        self.reward = reward
        self.out = out
        self.settings = config.society
        self._own_backend = backend is None
        self.backend = make_backend(config) if backend is None else backend
        self.pending: _Pending | None = None
        self.elites: list[int] = []  # arms of the generation that are elite copies
        self.bad: list[dict[str, Any]] = []  # bad replies of the current generation

    # -- calls

    def _redact(self, text: str) -> str:
        caller = getattr(self.backend, "caller", None)
        return caller.redact(text) if caller is not None else text

    def _bad(self, generation, agent, call, kind, message, reply=None) -> None:
        excerpt = "" if reply is None else str(reply)[:EXCERPT_CHARS]
        self.bad.append(
            {
                "generation": generation,
                "agent": agent,
                "call": call,
                "kind": kind,
                "message": self._redact(str(message))[:400],
                "excerpt": self._redact(excerpt),
            }
        )

    def _ask(self, generation, agent, call, prompt, temperature=None) -> str | None:
        """The LLM's reply text, or ``None`` after recording why there is none."""
        from convergence_jax.optimize.http import HttpCallError

        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
        try:
            return self.backend.complete(messages, temperature=temperature).text
        except HttpCallError as e:
            text = str(e)
            kind = "timeout" if text.startswith("timeout") else "http_error"
            self._bad(generation, agent, call, kind, text)
        except Exception as e:  # noqa: BLE001 - a broken backend never stops the run
            message = f"{type(e).__name__}: {e}"
            self._bad(generation, agent, call, "backend_error", message)
        return None

    # -- prompts

    def _task_lines(self) -> list[str]:
        return [
            "Maximize the reward of an objective over this search space:",
            *_describe_space(self.space),
            f"Reward (higher is better): {_describe_reward(self.reward)}.",
        ]

    def _context(self, records) -> list[str]:
        rows = _pooled(records)
        return [
            f"Measured so far ({len(rows)} distinct configurations, best first: mean "
            "reward over their n evaluations):",
            *_history_lines(rows, self.settings.rlp.history),
        ]

    def _propose_prompt(self, generation, context) -> str:
        k = self.settings.rlp.proposals
        example = {n: "..." for n in self.space.names}
        return "\n".join(
            [
                f"TASK: propose configurations (generation {generation})",
                *self._task_lines(),
                "",
                *context,
                "",
                "First reason step by step: which regions of the space look promising "
                "and why, what the measurements suggest about each parameter. Then "
                f"give exactly {k} new configurations, different from those measured, "
                "in one JSON block:",
                "```json",
                json.dumps({"configs": [example] * min(k, 2)}),
                "```",
            ]
        )

    def _predict_prompt(self, generation, context, configs, reasoning) -> str:
        lines = [
            f"TASK: predict rewards (generation {generation})",
            *self._task_lines(),
            "",
            *context,
            "",
        ]
        if reasoning is not None:
            lines += [
                "An analyst's reasoning about the search (written before these "
                "configurations were measured):",
                reasoning[:REASONING_CHARS],
                "",
            ]
        lines += [
            "Predict the mean reward each of these configurations will measure:",
            *(f"{i}. {_config_text(c)}" for i, c in enumerate(configs, 1)),
            "",
            "Reply with one JSON block holding one number per configuration, in "
            f'order: {{"predictions": [{len(configs)} numbers]}}',
        ]
        return "\n".join(lines)

    # -- RLP

    def propose(self, generation: int, state, records):
        """Before generation ``generation`` is evaluated: RLP's proposals replace
        the last non-elite children of the optimizer ``state``. Returns the state."""
        self.bad = []
        self.pending = None
        elite = np.asarray(state.ga.elite_mask)
        self.elites = [int(i) for i in np.flatnonzero(elite)] if generation else []
        if not self.settings.learning.rlp_enabled or generation == 0 or not records:
            return state
        k = self.settings.rlp.proposals
        context = self._context(records)
        pending = _Pending(generation, context=context)
        self.pending = pending
        text = self._ask(
            generation, "rlp", "propose", self._propose_prompt(generation, context)
        )
        if text is None:
            return state
        try:
            reasoning, configs, issues, offered = parse_proposals(text, self.space, k)
        except ReplyError as e:
            self._bad(generation, "rlp", "propose", e.kind, e, text)
            return state
        for kind, message in issues:
            self._bad(generation, "rlp", "propose", kind, message, text)
        pending.reasoning = reasoning[:REASONING_CHARS]
        pending.proposed = offered
        if not configs:
            return state
        free = [i for i in range(len(elite)) if not elite[i]]
        arms = free[-len(configs) :]
        pending.replaced = self.space.decode(
            {n: np.asarray(v)[arms] for n, v in state.ga.population.items()}
        )
        pending.configs = configs
        pending.arms = arms
        return inject_configs(state, self.space, arms, configs)

    def _information_gain(self, record, records_before) -> dict[str, Any] | None:
        pending = self.pending
        g = record["generation"]
        if not pending.reasoning.strip():
            return None
        means: dict[int, list[float]] = {}
        for e in record["evaluations"]:
            means.setdefault(e["arm"], []).append(e["reward"])
        arms = sorted(means)
        configs = [record["population"][a]["config"] for a in arms]
        targets = [float(np.mean(means[a])) for a in arms]
        predictions = {}
        for label, reasoning in (("without", None), ("with", pending.reasoning)):
            prompt = self._predict_prompt(g, pending.context, configs, reasoning)
            text = self._ask(g, "rlp", f"predict_{label}", prompt, temperature=0.0)
            if text is None:
                return None
            try:
                predictions[label] = parse_predictions(text, len(configs))
            except ReplyError as e:
                self._bad(g, "rlp", f"predict_{label}", e.kind, e, text)
                return None
        gain = information_gain(targets, predictions["without"], predictions["with"])
        return {
            "targets": targets,
            "without": predictions["without"],
            "with": predictions["with"],
            **gain,
        }

    def _rlp_entry(self, record, records_before) -> dict[str, Any] | None:
        pending = self.pending
        if pending is None or pending.generation != record["generation"]:
            return None
        rewards: dict[int, list[float]] = {}
        for e in record["evaluations"]:
            rewards.setdefault(e["arm"], []).append(e["reward"])
        elites = set(self.elites)
        mine = set(pending.arms)
        rlp_means = [float(np.mean(rewards[a])) for a in pending.arms if a in rewards]
        ga_means = [
            float(np.mean(v))
            for a, v in rewards.items()
            if a not in mine and a not in elites
        ]
        entry = {
            "reasoning": pending.reasoning,
            "proposed": pending.proposed,
            "configs": pending.configs,
            "arms": pending.arms,
            "replaced": pending.replaced,
            "proposal_rewards": rlp_means,
            "ga_children_rewards": ga_means,
            "proposals_mean_reward": float(np.mean(rlp_means)) if rlp_means else None,
            "ga_children_mean_reward": float(np.mean(ga_means)) if ga_means else None,
            "prediction": None,
        }
        if self.settings.rlp.information_gain:
            entry["prediction"] = self._information_gain(record, records_before)
        return entry

    # -- SAO

    def _pair_prompt(self, context_rows) -> str:
        return "\n".join(
            [
                "TASK: propose one configuration",
                *self._task_lines(),
                "",
                "Measured so far (mean reward):",
                *(
                    f"- {_config_text(r['config'])} -> {r['mean_reward']:.4f}"
                    for r in context_rows
                ),
                "",
                "Reply with one new configuration as a JSON object.",
            ]
        )

    def _judge(self, generation, prompt, a, b) -> int | None:
        question = "\n".join(
            [
                f"TASK: judge (generation {generation})",
                "A prompt and two candidate replies to it.",
                "",
                "Prompt:",
                prompt,
                "",
                f"Response 1: {a}",
                f"Response 2: {b}",
                "",
                "Which one will measure the higher reward? Rank the two from best "
                "to worst strictly in the format 'ranking: X > Y', where X and Y are "
                "1 or 2, without repetition.",
            ]
        )
        text = self._ask(generation, "sao", "judge", question, temperature=0.0)
        if text is None:
            return None
        try:
            return parse_ranking(text)
        except ReplyError as e:
            self._bad(generation, "sao", "judge", e.kind, e, text)
            return None

    def _sao_round(self, generation, records) -> dict[str, Any]:
        from convergence_jax.self_improve.pairs import (
            PreferencePair,
            filter_pairs,
            save_pairs,
        )

        sao = self.settings.sao
        rows = _pooled(records)
        rng = np.random.default_rng([self.config.optimizer.seed, 5, generation])
        pairs = []
        skipped = {"too_few_configs": 0, "margin": 0, "judge_failed": 0}
        agree = 0
        need = 2
        for i in range(sao.pairs_per_round):
            if len(rows) < need + 1:
                skipped["too_few_configs"] += 1
                continue
            size = min(sao.context_size, len(rows) - 2)
            picked = rng.choice(len(rows), size=size + 2, replace=False)
            context = sorted(
                (rows[j] for j in picked[:size]), key=lambda r: -r["mean_reward"]
            )
            a, b = rows[picked[size]], rows[picked[size + 1]]
            margin = abs(a["mean_reward"] - b["mean_reward"])
            if margin < sao.min_margin or margin == 0:
                skipped["margin"] += 1
                continue
            better, worse = (a, b) if a["mean_reward"] > b["mean_reward"] else (b, a)
            prompt = self._pair_prompt(context)
            meta: dict[str, Any] = {
                "source": "convergence_jax.optimize.society",
                "generation": generation,
                "index": i,
                "chosen_reward": better["mean_reward"],
                "rejected_reward": worse["mean_reward"],
                "chosen_evaluations": better["evaluations"],
                "rejected_evaluations": worse["evaluations"],
                "labels": "measured",
            }
            chosen, rejected = (
                _config_text(better["config"]),
                _config_text(worse["config"]),
            )
            if sao.judge:
                # SAO's self-judgement: the LLM's pick is the label; A/B order drawn
                first_is_better = bool(rng.integers(2))
                x, y = (chosen, rejected) if first_is_better else (rejected, chosen)
                pick = self._judge(generation, prompt, x, y)
                if pick is None:
                    skipped["judge_failed"] += 1
                    continue
                llm_prefers_better = (pick == 1) == first_is_better
                agree += llm_prefers_better
                meta |= {"labels": "llm", "judge_agrees": llm_prefers_better}
                if not llm_prefers_better:
                    chosen, rejected = rejected, chosen
            pairs.append(PreferencePair(prompt, chosen, rejected, meta))
        kept, counts = filter_pairs(pairs, _pair_filter(self.config))
        entry = {
            "pairs_built": len(pairs),
            "skipped": skipped,
            "filter_counts": counts,
            "exported": len(kept),
            "judge_agreement": (agree / len(pairs)) if sao.judge and pairs else None,
            "file": None,
        }
        if self.out is not None:
            path = save_pairs(kept, self.out / sao.file)
            entry["file"] = path.name
        return entry

    def observe(self, record, records_before, last: bool) -> None:
        """After ``record`` (the generation just measured) is built: RLP's entry
        and information gain, an SAO round when due; writes ``record["society"]``."""
        g = record["generation"]
        entry: dict[str, Any] = {
            "elites": list(self.elites),
            "rlp": self._rlp_entry(record, records_before),
        }
        sao = self.settings.sao
        entry["sao"] = None
        if self.settings.learning.sao_enabled and ((g + 1) % sao.every == 0 or last):
            entry["sao"] = self._sao_round(g, [*records_before, record])
        entry["bad_replies"] = list(self.bad)
        record["society"] = entry
        self.bad = []
        self.pending = None

    def close(self) -> None:
        if self._own_backend and hasattr(self.backend, "close"):
            self.backend.close()


# ----------------------------------------------------------------------------- report


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def contributions(records: Sequence[dict]) -> dict[str, Any] | None:
    """What each agent contributed over a run (``None`` without a society).

    ``agents``: one row each for ``ga`` (its own children), ``rlp`` and ``sao``
    with ``proposals_made``, ``proposals_evaluated``, ``mean_reward`` (of the
    agent's proposals, each configuration's mean over its evaluations in its
    generation), ``ga_children_mean_reward`` (the GA's non-elite children in the
    same generations), ``mean_information_gain`` and ``information_gain_rounds``,
    ``pairs_exported`` and ``bad_replies``. ``bad_replies``: every one, in order.
    """
    entries = [r["society"] for r in records if r.get("society")]
    if not entries:
        return None
    rlp = [e["rlp"] for e in entries if e.get("rlp")]
    sao = [e["sao"] for e in entries if e.get("sao")]
    bad = [b for e in entries for b in e["bad_replies"]]
    rlp_rewards = [v for e in rlp for v in e["proposal_rewards"]]
    paired = [e for e in rlp if e["proposal_rewards"]]
    gains = [e["prediction"]["gain"] for e in rlp if e.get("prediction")]
    ga_rewards = []
    for r in records:
        s = r.get("society")
        if not s or r["generation"] == 0:
            continue  # generation 0 is the random initial population, no children
        mine = set((s.get("rlp") or {}).get("arms", []))
        elites = set(s["elites"])
        by_arm: dict[int, list[float]] = {}
        for e in r["evaluations"]:
            by_arm.setdefault(e["arm"], []).append(e["reward"])
        ga_rewards += [
            float(np.mean(v))
            for a, v in by_arm.items()
            if a not in mine and a not in elites
        ]
    last_sao = sao[-1] if sao else None
    agents = [
        {
            "agent": "ga",
            "proposals_made": len(ga_rewards),
            "proposals_evaluated": len(ga_rewards),
            "mean_reward": _mean(ga_rewards),
            "ga_children_mean_reward": _mean(ga_rewards),
            "mean_information_gain": None,
            "information_gain_rounds": 0,
            "pairs_exported": None,
            "bad_replies": 0,
        },
        {
            "agent": "rlp",
            "proposals_made": sum(e["proposed"] for e in rlp),
            "proposals_evaluated": len(rlp_rewards),
            "mean_reward": _mean(rlp_rewards),
            "ga_children_mean_reward": _mean(
                [v for e in paired for v in e["ga_children_rewards"]]
            ),
            "mean_information_gain": _mean(gains),
            "information_gain_rounds": len(gains),
            "pairs_exported": None,
            "bad_replies": sum(b["agent"] == "rlp" for b in bad),
        },
        {
            "agent": "sao",
            "proposals_made": None,
            "proposals_evaluated": None,
            "mean_reward": None,
            "ga_children_mean_reward": None,
            "mean_information_gain": None,
            "information_gain_rounds": 0,
            "pairs_exported": last_sao["exported"] if last_sao else 0,
            "bad_replies": sum(b["agent"] == "sao" for b in bad),
        },
    ]
    kinds = {k: sum(b["kind"] == k for b in bad) for k in BAD_REPLY_KINDS}
    return {
        "agents": agents,
        "sao_rounds": [
            {"generation": r["generation"], **r["society"]["sao"]}
            for r in records
            if r.get("society") and r["society"].get("sao")
        ],
        "sao_file": last_sao["file"] if last_sao else None,
        "bad_reply_kinds": kinds,
        "bad_replies": bad,
    }


def _fmt(v, sign: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:+.4g}" if sign else f"{v:.4f}"
    return str(v)


def society_report_lines(records: Sequence[dict]) -> list[str]:
    """The report's society section (empty without a society)."""
    c = contributions(records)
    if c is None:
        return []
    lines = [
        "",
        "## Society",
        "",
        "What each agent contributed. `ga`: the GA's own (non-elite) children; `rlp`: "
        "the LLM's proposals, which replaced GA children and were measured the same "
        "way (rewards: each configuration's mean over its evaluations in its "
        "generation; `GA children` is the GA's mean in the generations RLP proposed "
        "in); information gain: MSE of the LLM's predictions of a generation's "
        "rewards without RLP's reasoning minus with it (positive: the reasoning "
        "helped); `sao`: preference pairs exported after filtering.",
        "",
        "| agent | proposals made | evaluated | mean reward | GA children | "
        "mean information gain (rounds) | pairs exported | bad replies |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in c["agents"]:
        gain = _fmt(a["mean_information_gain"], sign=True)
        if a["information_gain_rounds"]:
            gain += f" ({a['information_gain_rounds']})"
        lines.append(
            f"| {a['agent']} | {_fmt(a['proposals_made'])} | "
            f"{_fmt(a['proposals_evaluated'])} | {_fmt(a['mean_reward'])} | "
            f"{_fmt(a['ga_children_mean_reward'])} | {gain} | "
            f"{_fmt(a['pairs_exported'])} | {a['bad_replies']} |"
        )
    if c["sao_rounds"]:
        lines.append("")
    for r in c["sao_rounds"]:
        counts = ", ".join(f"{k} {v}" for k, v in r["filter_counts"].items())
        lines.append(
            f"- SAO after generation {r['generation']}: {r['pairs_built']} pairs built "
            f"({counts}); {r['exported']} exported"
            + (f" to `{r['file']}`" if r["file"] else "")
            + (
                f"; judge agreed with the measurement on {r['judge_agreement']:.0%}"
                if r.get("judge_agreement") is not None
                else ""
            )
        )
    bad = c["bad_replies"]
    lines += ["", f"### Bad replies ({len(bad)}; the run went on)", ""]
    if bad:
        lines += [
            "| generation | agent | call | kind | message | excerpt |",
            "|---:|---|---|---|---|---|",
        ]
        for b in bad:
            cells = [
                str(b["generation"]),
                b["agent"],
                b["call"],
                b["kind"],
                _md(b["message"][:120]),
                _md(b["excerpt"][:80]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("None.")
    return lines


def _md(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "/").replace("\n", " ") + "`"
