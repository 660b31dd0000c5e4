"""The configuration of an optimization run, read from YAML or built in Python.

The same frozen dataclasses back the YAML file and the command-line flags, so
``convergence-jax optimize config.yaml --optimizer.generations 5`` overrides one value
of the file. Reading a file checks every key and type and names the offending key::

    optimizer.generations: expected an integer, got 'ten'
    optimizer.generatons: unknown key (did you mean 'generations'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
import yaml

from convergence_jax.optimize.metrics import MetricSpec, RewardSpec
from convergence_jax.spaces import SearchSpace, SpaceError

__all__ = [
    "ApiConfig",
    "AuthConfig",
    "ConfigError",
    "JudgeConfig",
    "MetricConfig",
    "PriceConfig",
    "PricingConfig",
    "ResponseConfig",
    "ObjectiveConfig",
    "SocietyConfig",
    "OptimizeConfig",
    "OptimizerConfig",
    "OutputConfig",
    "load_config",
    "config_from_dict",
    "reward_spec",
    "validate",
]


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names the key."""


@dataclass(frozen=True)
class AuthConfig:
    """How requests authenticate; the token is read from the environment only."""

    type: Literal["bearer", "header", "none"] | None = None
    """bearer: 'Authorization: Bearer TOKEN'; header: 'HEADER: TOKEN'; none. Unset:
    none, or bearer with the openai_chat preset."""
    token_env: str | None = None
    """Environment variable holding the token (the token itself is never written)."""
    header: str = "Authorization"
    """Header name for type header (e.g. X-API-Key)."""


@dataclass(frozen=True)
class ResponseConfig:
    """Where the answer and the token usage are in the JSON response (dotted paths,
    list indices as numbers: choices.0.message.content)."""

    text: str = "text"
    """The answer the judge scores."""
    input_tokens: str | None = None
    """Prompt tokens used (for cost_usd), e.g. usage.prompt_tokens."""
    output_tokens: str | None = None
    """Completion tokens used (for cost_usd), e.g. usage.completion_tokens."""


@dataclass(frozen=True)
class PriceConfig:
    """USD per million tokens."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0


@dataclass(frozen=True)
class PricingConfig:
    """Token prices for cost_usd: a default and optional per-model prices."""

    input_per_million: float = 0.0
    """USD per million prompt tokens."""
    output_per_million: float = 0.0
    """USD per million completion tokens."""
    models: dict[str, PriceConfig] = field(default_factory=dict)
    """Prices by the value of the parameter model_param (e.g. per model name)."""
    model_param: str = "model"
    """Search-space parameter (or request field) whose value picks the price."""


@dataclass(frozen=True)
class ApiConfig:
    """An HTTP endpoint objective (objective.type: http)."""

    preset: Literal["openai_chat"] | None = None
    """openai_chat: POST {base_url}/chat/completions with every tuned parameter in
    the body, the test case's input as the user message, usage priced."""
    base_url: str | None = None
    """Base URL for a preset, e.g. https://api.openai.com/v1."""
    endpoint: str | None = None
    """Full URL of the endpoint (without a preset)."""
    method: Literal["GET", "POST", "PUT", "PATCH"] = "POST"
    """HTTP method; GET sends the rendered request as query parameters."""
    auth: AuthConfig = field(default_factory=AuthConfig)
    headers: dict[str, str] = field(default_factory=dict)
    """Extra request headers (no secrets: use auth.token_env)."""
    request: Annotated[dict[str, Any], tyro.conf.Suppress] = field(default_factory=dict)
    """JSON body template; strings may hold {param} and {test-case field}
    placeholders; a string that is exactly one placeholder keeps the value's type."""
    response: ResponseConfig = field(default_factory=ResponseConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    request_timeout_s: float = 30.0
    """Seconds before one request is abandoned (and retried)."""
    retries: int = 3
    """Retries after a 429, a 5xx, a timeout or a connection error."""
    backoff_s: float = 0.5
    """First retry delay; doubles each retry, with full jitter."""
    backoff_max_s: float = 10.0
    """Longest retry delay (also caps a Retry-After header)."""
    max_concurrency: int | None = None
    """Requests in flight at once (default: objective.max_workers)."""


@dataclass(frozen=True)
class JudgeConfig:
    """How an answer is scored into quality in [0, 1] (mean over test cases)."""

    type: Literal["exact", "contains", "regex", "json_field", "python", "llm"] = "exact"
    """exact / contains / regex (the case's expected is the pattern) / json_field
    (the answer is JSON; field equals expected) / python (target(answer, case) ->
    score) / llm (an OpenAI-compatible chat endpoint grades the answer)."""
    ignore_case: bool = False
    """exact, contains, regex: compare case-insensitively."""
    field: str | None = None
    """json_field: dotted path in the answer's JSON."""
    target: str | None = None
    """python: 'module:function' or 'file.py:function', f(answer, case) -> [0, 1]."""
    base_url: str | None = None
    """llm: base URL of an OpenAI-compatible API (…/v1)."""
    model: str | None = None
    """llm: the judging model."""
    token_env: str | None = None
    """llm: environment variable with the judge's API key (none when unset)."""
    prompt: str | None = None
    """llm: the grading prompt with {input}, {expected} and {answer}; the reply's
    first number is the score (divided by score_max)."""
    score_max: float = 1.0
    """llm: the top of the score scale the prompt asks for."""


@dataclass(frozen=True)
class ObjectiveConfig:
    """What is being optimized."""

    type: Literal["simulated_llm", "jax", "python", "http"] = "simulated_llm"
    """simulated_llm: the bundled LLM-API simulator (no network); jax: a vectorized JAX
    function f(key, params) -> metrics, run inside one compiled program; python: a
    plain callable f(config) -> metrics, run on a thread pool; http: an HTTP endpoint
    called once per test case (see api, test_cases, judge)."""
    target: str | None = None
    """'module:function' or 'file.py:function' (relative to the config file) for jax
    and python objectives."""
    timeout_s: float = 60.0
    """python and http objectives: seconds before an evaluation (for http: all its
    test cases, retries included) is recorded as timed out."""
    max_workers: int = 4
    """python and http objectives: evaluations run at the same time."""
    failure_reward: float | None = None
    """Reward of a failed evaluation; defaults to 0, the worst reward, when every
    metric has min and max."""
    api: ApiConfig = field(default_factory=ApiConfig)
    """http: the endpoint, request template and response fields."""
    test_cases: str | None = None
    """http: a JSON file (relative to the config file): a list of test cases, objects
    whose fields fill the request's placeholders, with 'expected' for the judge."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """http: how an answer is scored (quality)."""


@dataclass(frozen=True)
class MetricConfig:
    """One metric the objective returns."""

    goal: Literal["maximize", "minimize"] = "maximize"
    """Whether larger or smaller values are better."""
    weight: float = 1.0
    """Weight in the reward, a weighted sum of normalized metrics."""
    min: float | None = None
    """Lower end for normalization to [0, 1]; give both min and max or neither."""
    max: float | None = None
    """Upper end for normalization to [0, 1]."""


@dataclass(frozen=True)
class OptimizerConfig:
    """Thompson sampling + evolution (mab_evolution) settings."""

    generations: int = 10
    """Number of generations."""
    population_size: int = 16
    """Configurations per generation (the bandit's arms)."""
    evaluations_per_generation: int = 64
    """Noisy evaluations per generation: one per configuration, then Thompson sampling
    spends the rest on the promising ones."""
    batch_size: int = 8
    """Evaluations chosen per Thompson-sampling round (evaluated in parallel)."""
    elites: int = 2
    """Best configurations carried unchanged, with their posteriors, to the next
    generation."""
    selection: Literal["tournament", "roulette", "rank", "truncation"] = "tournament"
    """Parent selection."""
    mutation: Literal["gaussian", "self_adaptive", "one_fifth", "dropout"] = "gaussian"
    """Mutation operator."""
    crossover: Literal["uniform", "blend", "one_point", "average"] = "uniform"
    """Crossover operator."""
    mutation_rate: float | None = None
    """Per-gene mutation probability (library default when unset)."""
    mutation_std: float | None = None
    """Mutation step relative to each parameter's range (library default when unset)."""
    crossover_rate: float | None = None
    """Probability that a child is a crossover (library default when unset)."""
    seed: int = 0
    """Random seed."""


@dataclass(frozen=True)
class OutputConfig:
    """Where and what to write."""

    dir: str = "runs/latest"
    """Output folder (relative to the working directory)."""
    top_k: int = 10
    """Rows in the report's table of top configurations."""


@dataclass(frozen=True)
class SocietyLearningConfig:
    """Which of the society's agents run."""

    rlp_enabled: bool = True
    """RLP: reasons about the search and proposes children, rewarded by information
    gain."""
    sao_enabled: bool = True
    """SAO: turns the history into preference pairs (JSONL) every sao.every
    generations."""


@dataclass(frozen=True)
class SocietyLLMConfig:
    """The society's LLM: an OpenAI-compatible endpoint or our JAX model."""

    model: str | None = None
    """Model name sent to the endpoint (e.g. gpt-4o-mini); 'jax:FOLDER' for our JAX
    model (an agents.export.save_agent checkpoint, relative to the config file);
    'python' for a backend passed to run_optimization(society_backend=...)."""
    base_url: str | None = None
    """Base URL of an OpenAI-compatible API (…/v1); not for a jax: model."""
    api_key_env: str | None = None
    """Environment variable holding the API key (none: no Authorization header)."""
    temperature: float = 0.7
    """Sampling temperature of RLP's proposals (predictions and judgements use 0)."""
    max_tokens: int = 1024
    """Longest reply."""
    timeout_s: float = 60.0
    """Seconds before one request is abandoned (and retried)."""
    retries: int = 1
    """Retries after a 429, a 5xx, a timeout or a connection error."""
    backoff_s: float = 0.5
    """First retry delay; doubles each retry, with full jitter."""


@dataclass(frozen=True)
class RlpConfig:
    """The RLP agent."""

    proposals: int = 2
    """Configurations it proposes per generation; each replaces a non-elite child."""
    history: int = 8
    """Best configurations (with their mean rewards) shown in its prompt."""
    information_gain: bool = True
    """Reward its reasoning: two prediction calls per generation (without / with)."""


@dataclass(frozen=True)
class SaoConfig:
    """The SAO agent."""

    every: int = 2
    """Generations between rounds (a round also follows the last generation)."""
    pairs_per_round: int = 32
    """Pairs drawn from the history per round (before filtering)."""
    context_size: int = 4
    """Measured configurations shown in each pair's prompt."""
    min_margin: float = 0.0
    """Skip pairs whose mean rewards differ by less."""
    judge: bool = False
    """The LLM ranks each pair ('ranking: 1 > 2', SAO's format); its pick is the
    chosen reply."""
    min_length: int = 1
    """filter_pairs: shortest reply (words)."""
    max_length: int = 2048
    """filter_pairs: longest reply (words)."""
    dedup_threshold: float = 0.9
    """filter_pairs: drop a pair whose prompt's word-3-gram Jaccard similarity to a
    kept prompt is at least this."""
    file: str = "sao_pairs.jsonl"
    """File in the output folder (.jsonl or .json), rewritten every round."""


@dataclass(frozen=True)
class SocietyConfig:
    """The optimizer's society: an LLM beside the GA (python and http objectives)."""

    enabled: bool = False
    learning: SocietyLearningConfig = field(default_factory=SocietyLearningConfig)
    llm: SocietyLLMConfig = field(default_factory=SocietyLLMConfig)
    rlp: RlpConfig = field(default_factory=RlpConfig)
    sao: SaoConfig = field(default_factory=SaoConfig)


@dataclass(frozen=True)
class OptimizeConfig:
    """A whole optimization run."""

    search_space: Annotated[dict[str, Any], tyro.conf.Suppress] = field(
        default_factory=dict
    )
    """Parameters to tune: name -> {type: float|int|categorical, ...} (YAML only)."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    metrics: dict[str, MetricConfig] = field(default_factory=dict)
    """Metrics the objective returns, with goals, weights and bounds."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    society: SocietyConfig = field(default_factory=SocietyConfig)
    """The optional LLM society (RLP proposals, SAO preference pairs)."""
    base_dir: Annotated[str, tyro.conf.Suppress] = "."
    """Folder the config file was read from (file targets are relative to it)."""

    def space(self) -> SearchSpace:
        try:
            return SearchSpace.from_dict(self.search_space)
        except SpaceError as e:
            raise ConfigError(f"search_space: {e}") from None


# ----------------------------------------------------------------------------- reading

_TYPE_WORDS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true/false",
}


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _convert(value, typing.get_args(hint)[0], where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: bad value {value!r}"
        )
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{where}: expected one of {list(choices)}, got {value!r}"
            )
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, value_hint = typing.get_args(hint)
        return {
            str(k): _convert(v, value_hint, f"{where}.{k}") for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported type {hint}")  # a bug in this module


def _build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "base_dir"]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key{hint}; allowed: {names}")
        kwargs[key] = _convert(value, hints[key], path)
    return cls(**kwargs)


def config_from_dict(data: dict, base_dir: str | Path = ".") -> OptimizeConfig:
    """Build and validate an ``OptimizeConfig`` from plain data (a parsed YAML)."""
    config = _build(OptimizeConfig, data, "")
    config = dataclasses.replace(config, base_dir=str(base_dir))
    validate(config)
    return config


def load_config(path: str | Path) -> OptimizeConfig:
    """Read a YAML file into an ``OptimizeConfig``; errors name the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty")
    try:
        return config_from_dict(data, base_dir=path.parent)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _positive(where: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{where}: must be > 0, got {value}")


def validate(config: OptimizeConfig) -> None:
    """Cross-field checks, before anything is compiled or called."""
    if not config.search_space:
        raise ConfigError("search_space: name at least one parameter to tune")
    config.space()
    obj, opt = config.objective, config.optimizer
    if obj.type in ("jax", "python") and not obj.target:
        raise ConfigError(
            f"objective.target: a {obj.type} objective needs 'module:function' or "
            "'file.py:function'"
        )
    if obj.type in ("simulated_llm", "http") and obj.target:
        raise ConfigError(f"objective.target: the {obj.type} objective takes no target")
    if obj.type == "http":
        from convergence_jax.optimize.http import check_http_config

        check_http_config(config)
    _positive("objective.timeout_s", obj.timeout_s)
    _positive("objective.max_workers", obj.max_workers)
    for name in ("generations", "population_size", "evaluations_per_generation"):
        _positive(f"optimizer.{name}", getattr(opt, name))
    _positive("optimizer.batch_size", opt.batch_size)
    if opt.population_size < 2:
        raise ConfigError("optimizer.population_size: must be >= 2")
    if opt.evaluations_per_generation < opt.population_size:
        raise ConfigError(
            f"optimizer.evaluations_per_generation ({opt.evaluations_per_generation}) "
            f"must be >= population_size ({opt.population_size}): every configuration "
            "is evaluated at least once"
        )
    if not 0 <= opt.elites < opt.population_size:
        raise ConfigError(
            f"optimizer.elites: must be in [0, population_size), got {opt.elites}"
        )
    for name in ("mutation_rate", "crossover_rate"):
        v = getattr(opt, name)
        if v is not None and not 0 <= v <= 1:
            raise ConfigError(f"optimizer.{name}: must be in [0, 1], got {v}")
    if opt.mutation_std is not None:
        _positive("optimizer.mutation_std", opt.mutation_std)
    _positive("output.top_k", config.output.top_k)
    reward_spec(config)
    if config.society.enabled:
        from convergence_jax.optimize.society import check_society_config

        check_society_config(config)


def reward_spec(config: OptimizeConfig) -> RewardSpec:
    """The reward the config describes; with no metrics, one metric "score" (max)."""
    metrics = config.metrics or {"score": MetricConfig()}
    try:
        specs = {
            name: MetricSpec(name, m.goal, m.weight, m.min, m.max)
            for name, m in metrics.items()
        }
        return RewardSpec.build(specs, config.objective.failure_reward)
    except ValueError as e:
        raise ConfigError(str(e)) from None
