"""Agent checkpoints: one folder holding everything a chat endpoint needs.

    DIR/
      config.json           the model, Hugging Face style (`lm.save_hf`)
      model.safetensors     its weights
      tokenizer_spec.json   a `ByteTokenizer`'s special tokens and chat markers, or
      tokenizer.json        a Hugging Face tokenizer (+ tokenizer_config.json)
      agent.json            name, system prompt, generation defaults, chat template

`save_agent` writes it, `load_agent` reads it back as ``(params, model_config,
tokenizer, meta)``, and `load_chat_agent` as a ready `agents.agent.MultiTurnAgent`
(its system prompt over a `JaxBackend` with its generation defaults). The model
part is a plain Hugging Face folder: ``transformers`` loads ``config.json`` +
``model.safetensors`` as they are. A folder that is missing, incomplete or
corrupt raises `AgentCheckpointError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.hf import load_hf, save_hf
from convergence_jax.lm.tokenizer import ByteTokenizer, ChatTemplate, HFTokenizer

__all__ = [
    "AGENT_FORMAT",
    "AgentCheckpointError",
    "AgentMeta",
    "GenerationDefaults",
    "is_agent_checkpoint",
    "load_agent",
    "load_chat_agent",
    "save_agent",
]

AGENT_FORMAT = "convergence-jax-agent"
AGENT_VERSION = 1
CHAT_TEMPLATES = ("chatml",)
"""Chat template names an agent checkpoint may give (`lm.ChatTemplate` renders
ChatML with configurable markers)."""


class AgentCheckpointError(ValueError):
    """An agent checkpoint folder that cannot be written or read; says which file."""


@dataclasses.dataclass(frozen=True)
class GenerationDefaults:
    """Sampling settings a request may override (OpenAI's names)."""

    temperature: float = 0.7
    """0 is greedy decoding."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]; 1 keeps every token."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 keeps all."""
    max_tokens: int = 128
    """Completion length when a request gives none."""

    def __post_init__(self):
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"generation.{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"generation.{name} must be finite, got {value!r}")
        if self.temperature < 0:
            raise ValueError(
                f"generation.temperature must be >= 0, got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generation.top_p must be in (0, 1], got {self.top_p}")
        for name, low in (("top_k", 0), ("max_tokens", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"generation.{name} must be an int >= {low}, got {value!r}"
                )


@dataclasses.dataclass(frozen=True)
class AgentMeta:
    """What ``agent.json`` holds besides the model and tokenizer."""

    name: str = "agent"
    """The model id a chat endpoint reports (``GET /v1/models``)."""
    system_prompt: str | None = None
    """Prepended as a system turn when a conversation has none."""
    generation: GenerationDefaults = GenerationDefaults()
    chat_template: str = "chatml"
    """Name of the chat template (`CHAT_TEMPLATES`); its markers are the
    tokenizer's."""
    metadata: dict = dataclasses.field(default_factory=dict)
    """JSON values: how the agent was trained, its data, ..."""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ValueError(
                f"system_prompt must be a string or None, got {self.system_prompt!r}"
            )
        if self.chat_template not in CHAT_TEMPLATES:
            raise ValueError(
                f"chat_template must be one of {CHAT_TEMPLATES}, got "
                f"{self.chat_template!r}"
            )
        if isinstance(self.generation, Mapping):
            object.__setattr__(
                self, "generation", _build_generation(self.generation, "generation")
            )
        if not isinstance(self.generation, GenerationDefaults):
            raise ValueError(
                f"generation must be GenerationDefaults, got {self.generation!r}"
            )
        if not isinstance(self.metadata, Mapping):
            raise ValueError(f"metadata must be a dict, got {self.metadata!r}")
        object.__setattr__(self, "metadata", dict(self.metadata))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "system_prompt": self.system_prompt,
            "chat_template": self.chat_template,
            "generation": dataclasses.asdict(self.generation),
            "metadata": self.metadata,
        }


def _build_generation(data: Mapping, where: str) -> GenerationDefaults:
    fields = {f.name for f in dataclasses.fields(GenerationDefaults)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected {sorted(fields)}")
    return GenerationDefaults(**data)


# ----------------------------------------------------------------------------- files


def _tokenizer_spec(tokenizer) -> dict:
    template = tokenizer.chat_template
    chat = {
        "start": template.start,
        "end": template.end,
        "default_system": template.default_system,
    }
    if isinstance(tokenizer, ByteTokenizer):
        names = {i: t for t, i in tokenizer._special.items()}
        return {
            "type": "byte",
            "special_tokens": list(tokenizer.special_tokens),
            "pad_token": names.get(tokenizer.pad_id),
            "bos_token": names.get(tokenizer.bos_id),
            "eos_token": names.get(tokenizer.eos_id),
            "chat_markers": chat,
        }
    if isinstance(tokenizer, HFTokenizer):

        def name(i):
            return None if i is None else tokenizer.tokenizer.id_to_token(i)

        return {
            "type": "hf",
            "file": "tokenizer.json",
            "pad_token": name(tokenizer.pad_id),
            "bos_token": name(tokenizer.bos_id),
            "eos_token": name(tokenizer.eos_id),
            "chat_markers": chat,
        }
    raise AgentCheckpointError(
        f"tokenizer must be an lm.ByteTokenizer or lm.HFTokenizer, got "
        f"{type(tokenizer).__name__}"
    )


def save_agent(
    folder: str | os.PathLike,
    params,
    model_config: LMConfig,
    tokenizer,
    system_prompt: str | None = None,
    *,
    name: str | None = None,
    generation: GenerationDefaults | Mapping | None = None,
    chat_template: str = "chatml",
    metadata: Mapping | None = None,
    dtype: str | None = None,
) -> Path:
    """Write an agent checkpoint folder (see the module docstring); returns it.

    ``name`` defaults to the folder's name; ``generation`` (a `GenerationDefaults`
    or a dict of its fields) to `GenerationDefaults()`; ``dtype`` of the weights to
    ``model_config.param_dtype``. Raises `AgentCheckpointError` for a tokenizer
    that does not fit the model (ids beyond ``model_config.vocab_size``) or lacks
    the chat markers, and ``ValueError`` for bad metadata, before writing.
    """
    folder = Path(folder)
    if not isinstance(model_config, LMConfig):
        raise AgentCheckpointError(
            f"model_config must be an LMConfig, got {type(model_config).__name__}"
        )
    try:
        tokenizer.check_model(model_config)
    except ValueError as error:
        raise AgentCheckpointError(str(error)) from None
    for marker in (tokenizer.chat_template.start, tokenizer.chat_template.end):
        if tokenizer.token_to_id(marker) is None:
            raise AgentCheckpointError(
                f"the chat marker {marker!r} is not a token of this tokenizer"
            )
    if generation is None:
        generation = GenerationDefaults()
    elif isinstance(generation, Mapping):
        generation = _build_generation(generation, "generation")
    meta = AgentMeta(
        name=name if name is not None else (folder.resolve().name or "agent"),
        system_prompt=system_prompt,
        generation=generation,
        chat_template=chat_template,
        metadata=dict(metadata or {}),
    )
    spec = _tokenizer_spec(tokenizer)
    agent = {"format": AGENT_FORMAT, "version": AGENT_VERSION, **meta.to_dict()}
    try:
        agent_text = json.dumps(agent, indent=2, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata is not JSON-serializable: {error}") from None
    folder.mkdir(parents=True, exist_ok=True)
    save_hf(folder, model_config, params, dtype=dtype)
    if spec["type"] == "hf":
        tokenizer.tokenizer.save(str(folder / "tokenizer.json"))
        names = {k: spec[k] for k in ("pad_token", "bos_token", "eos_token")}
        (folder / "tokenizer_config.json").write_text(json.dumps(names, indent=2))
    (folder / "tokenizer_spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    # agent.json last: a folder with it is complete
    (folder / "agent.json").write_text(agent_text)
    return folder


def is_agent_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` has an ``agent.json``."""
    return (Path(folder) / "agent.json").is_file()


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise AgentCheckpointError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AgentCheckpointError(f"{path}: not valid JSON: {error}") from None


def _load_tokenizer(folder: Path, spec: Any):
    where = folder / "tokenizer_spec.json"
    if not isinstance(spec, dict) or spec.get("type") not in ("byte", "hf"):
        raise AgentCheckpointError(
            f"{where}: expected an object with type 'byte' or 'hf', got {spec!r}"
        )
    markers = spec.get("chat_markers") or {}
    try:
        template = ChatTemplate(**markers)
        names = {k: spec.get(k) for k in ("pad_token", "bos_token", "eos_token")}
        if spec["type"] == "byte":
            return ByteTokenizer(
                special_tokens=tuple(spec["special_tokens"]),
                chat_template=template,
                **names,
            )
        path = folder / spec.get("file", "tokenizer.json")
        if not path.is_file():
            raise AgentCheckpointError(f"{path}: missing (the Hugging Face tokenizer)")
        return HFTokenizer.from_file(path, chat_template=template, **names)
    except AgentCheckpointError:
        raise
    except Exception as error:  # a corrupt spec or tokenizer.json, whatever breaks
        raise AgentCheckpointError(
            f"{where}: cannot build the tokenizer: {type(error).__name__}: {error}"
        ) from None


def load_agent(folder: str | os.PathLike, **overrides):
    """Read an agent checkpoint: ``(params, model_config, tokenizer, meta)``.

    ``overrides`` replace `LMConfig` fields as in `lm.load_hf` (e.g.
    ``dtype="float32"``). Raises `AgentCheckpointError` naming the file for a
    missing folder, a missing or corrupt ``agent.json`` / tokenizer / model, and a
    tokenizer that does not fit the model.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AgentCheckpointError(f"{folder}: no such agent checkpoint folder")
    agent = _read_json(
        folder / "agent.json", "not an agent checkpoint: save_agent writes agent.json"
    )
    where = folder / "agent.json"
    if not isinstance(agent, dict) or agent.get("format") != AGENT_FORMAT:
        raise AgentCheckpointError(f"{where}: format is not {AGENT_FORMAT!r}")
    if agent.get("version") != AGENT_VERSION:
        raise AgentCheckpointError(
            f"{where}: version {agent.get('version')!r}; this library reads "
            f"version {AGENT_VERSION}"
        )
    fields = {"name", "system_prompt", "chat_template", "generation", "metadata"}
    unknown = sorted(set(agent) - fields - {"format", "version"})
    if unknown:
        raise AgentCheckpointError(f"{where}: unknown keys {unknown}")
    try:
        meta = AgentMeta(**{k: agent[k] for k in fields if k in agent})
    except (TypeError, ValueError) as error:
        raise AgentCheckpointError(f"{where}: {error}") from None
    spec = _read_json(folder / "tokenizer_spec.json", "the tokenizer's description")
    tokenizer = _load_tokenizer(folder, spec)
    try:
        model_config, params = load_hf(folder, **overrides)
    except FileNotFoundError as error:
        raise AgentCheckpointError(f"{folder}: {error}") from None
    except AgentCheckpointError:
        raise
    except Exception as error:  # a truncated safetensors file, a bad config.json
        raise AgentCheckpointError(
            f"{folder}: cannot load the model: {type(error).__name__}: {error}"
        ) from None
    try:
        tokenizer.check_model(model_config)
    except ValueError as error:
        raise AgentCheckpointError(f"{folder}: {error}") from None
    return params, model_config, tokenizer, meta


def load_chat_agent(folder: str | os.PathLike, seed: int = 0):
    """``(agent, meta)``: a `agents.agent.MultiTurnAgent` with the checkpoint's
    system prompt over a `agents.agent.JaxBackend` with its generation
    defaults."""
    from convergence_jax.agents.agent import JaxBackend, MultiTurnAgent

    params, model_config, tokenizer, meta = load_agent(folder)
    g = meta.generation
    backend = JaxBackend(
        params,
        model_config,
        tokenizer,
        max_new_tokens=g.max_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        seed=seed,
    )
    return MultiTurnAgent(backend, system_prompt=meta.system_prompt), meta
