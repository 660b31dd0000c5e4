"""Multi-turn trajectories: turns, rewards, token masks on the agent's own tokens,
JSONL files (host side: strings in, NumPy int arrays out).

A `MultiTurnTrajectory` is one whole conversation (an episode): its turns in order,
a reward per turn where one was given, a final reward and free-form metadata.
`tokenize_trajectory` renders it with the tokenizer's chat template and returns a
``loss_mask`` that is 1 exactly on the assistant's own tokens -- its content and
its end-of-turn marker -- so system, user and tool tokens and the template's role
headers are never trained on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from convergence_jax.lm.tokenizer import pad_batch

ROLES = ("system", "user", "assistant", "tool")


def _check_reward(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number or None, got {value!r}")
    return float(value)


def _check_metadata(value, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(value).__name__}")
    return dict(value)


@dataclasses.dataclass(frozen=True)
class Turn:
    """One message of a conversation.

    ``role`` is one of ``system``, ``user``, ``assistant``, ``tool``; ``content``
    is its text. ``name`` (a tool's name, or a participant's) and ``tool_call_id``
    (the call a tool message answers) follow OpenAI's chat format. ``reward`` is
    this turn's own reward, if one was given; ``metadata`` holds JSON values.
    """

    role: str
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    reward: float | None = None
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(
                f"content must be a string, got {type(self.content).__name__}"
            )
        for field in ("name", "tool_call_id"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{field} must be a string or None, got {value!r}")
        object.__setattr__(self, "reward", _check_reward(self.reward, "reward"))
        object.__setattr__(self, "metadata", _check_metadata(self.metadata, "metadata"))

    @classmethod
    def from_dict(cls, data: Mapping) -> Turn:
        """A turn from an OpenAI-style message dict (extra keys ``reward`` and
        ``metadata`` allowed); an unknown key raises ``ValueError``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a turn must be a dict, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(
                f"unknown keys {sorted(unknown)}; expected {sorted(fields)}"
            )
        for key in ("role", "content"):
            if key not in data:
                raise ValueError(f"missing key {key!r}")
        return cls(**data)

    def to_dict(self) -> dict:
        """Every field, ``None`` included (what `save_jsonl` writes)."""
        return dataclasses.asdict(self)

    def message(self) -> dict:
        """This turn in OpenAI's chat format: ``role``, ``content`` and, where set,
        ``name`` and ``tool_call_id``."""
        out = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclasses.dataclass(frozen=True)
class MultiTurnTrajectory:
    """One whole conversation.

    ``turns`` is a non-empty sequence of `Turn` (or message dicts, converted);
    per-turn rewards live on the turns (`turn_rewards`), ``final_reward`` is the
    episode's outcome reward. ``total_reward`` is the final reward plus every
    per-turn reward, ``None`` counting as 0.
    """

    turns: tuple[Turn, ...]
    scenario_id: str | None = None
    final_reward: float | None = None
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.turns, str | Mapping) or not isinstance(
            self.turns, Iterable
        ):
            raise ValueError(
                f"turns must be a list of Turn or message dicts, got "
                f"{type(self.turns).__name__}"
            )
        turns = []
        for i, turn in enumerate(self.turns):
            if isinstance(turn, Turn):
                turns.append(turn)
                continue
            try:
                turns.append(Turn.from_dict(turn))
            except (TypeError, ValueError) as error:
                raise ValueError(f"turns[{i}]: {error}") from None
        if not turns:
            raise ValueError("turns is empty: a trajectory needs at least one turn")
        object.__setattr__(self, "turns", tuple(turns))
        if self.scenario_id is not None and not isinstance(self.scenario_id, str):
            raise ValueError(
                f"scenario_id must be a string or None, got {self.scenario_id!r}"
            )
        object.__setattr__(
            self, "final_reward", _check_reward(self.final_reward, "final_reward")
        )
        object.__setattr__(self, "metadata", _check_metadata(self.metadata, "metadata"))

    @property
    def turn_rewards(self) -> list[float | None]:
        return [turn.reward for turn in self.turns]

    @property
    def total_reward(self) -> float:
        rewards = [r for r in self.turn_rewards if r is not None]
        if self.final_reward is not None:
            rewards.append(self.final_reward)
        return float(math.fsum(rewards))

    def messages(self) -> list[dict]:
        """The conversation in OpenAI's chat format (rewards and metadata left
        out)."""
        return [turn.message() for turn in self.turns]

    def assistant_turns(self) -> list[Turn]:
        return [turn for turn in self.turns if turn.role == "assistant"]

    def to_dict(self) -> dict:
        return {
            "scenario_id": self.scenario_id,
            "turns": [turn.to_dict() for turn in self.turns],
            "final_reward": self.final_reward,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> MultiTurnTrajectory:
        if not isinstance(data, Mapping):
            raise ValueError(f"a trajectory must be a dict, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(
                f"unknown keys {sorted(unknown)}; expected {sorted(fields)}"
            )
        if "turns" not in data:
            raise ValueError("missing key 'turns'")
        return cls(**data)

    @classmethod
    def from_messages(
        cls, messages: Sequence[Mapping], **kwargs
    ) -> MultiTurnTrajectory:
        """A trajectory from OpenAI-style message dicts; ``kwargs`` as for the
        constructor."""
        return cls(turns=tuple(messages), **kwargs)


# ---------------------------------------------------------------------------
# Tokenization with the agent-token loss mask
# ---------------------------------------------------------------------------


class TokenizedTrajectories(NamedTuple):
    """``[B, T]`` int32 arrays: token ids, attention mask (1 on real tokens) and
    loss mask (1 on the assistant's own tokens)."""

    tokens: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray


def _as_trajectory(trajectory) -> MultiTurnTrajectory:
    if isinstance(trajectory, MultiTurnTrajectory):
        return trajectory
    if isinstance(trajectory, str | Mapping) or not isinstance(trajectory, Iterable):
        raise ValueError(
            f"expected a MultiTurnTrajectory or a list of message dicts, got "
            f"{type(trajectory).__name__}"
        )
    return MultiTurnTrajectory.from_messages(list(trajectory))


def tokenize_trajectory(
    trajectory, tokenizer, max_length: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tokens [T], attention_mask [T], loss_mask [T])``, int32, of one
    conversation rendered with ``tokenizer.chat_template`` (ChatML:
    ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn).

    ``loss_mask`` is 1 exactly on each assistant turn's content and its end marker
    ``<|im_end|>`` (what the model must produce after the generation prompt
    ``<|im_start|>assistant\\n``, and where it must stop), 0 on the role headers,
    the newline after each end marker and every system / user / tool token. Each
    piece (header, content, end marker, newline) is encoded on its own, so the
    assistant's tokens are those a model generates after the header; with
    `ByteTokenizer` the ids equal ``tokenizer.apply_chat_template(messages,
    add_generation_prompt=False)``. To score targets with `lm.token_logprobs`
    (which gives ``[T - 1]`` entries for ``tokens[1:]``) use ``loss_mask[1:]``.

    ``trajectory`` is a `MultiTurnTrajectory` or a list of message dicts. A
    conversation longer than ``max_length`` tokens raises ``ValueError`` (it is
    never cut); so do malformed messages, naming the turn.
    """
    trajectory = _as_trajectory(trajectory)
    template = tokenizer.chat_template
    for marker in (template.start, template.end):
        if tokenizer.token_to_id(marker) is None:
            raise ValueError(
                f"the chat template's marker {marker!r} is not a token of this "
                f"tokenizer; add it as a special token"
            )
    turns = list(trajectory.turns)
    if template.default_system is not None and turns[0].role != "system":
        turns.insert(0, Turn("system", template.default_system))
    tokens, loss = [], []

    def add(text: str, trained: bool):
        ids = tokenizer.encode(text) if text else []
        tokens.extend(ids)
        loss.extend([int(trained)] * len(ids))

    for turn in turns:
        trained = turn.role == "assistant"
        add(f"{template.start}{turn.role}\n", False)
        add(turn.content, trained)
        add(template.end, trained)
        add("\n", False)
    if max_length is not None and len(tokens) > max_length:
        where = (
            f" (scenario {trajectory.scenario_id!r})"
            if trajectory.scenario_id is not None
            else ""
        )
        raise ValueError(
            f"the trajectory{where} has {len(tokens)} tokens, more than "
            f"max_length={max_length}; it is never cut"
        )
    tokens = np.asarray(tokens, np.int32)
    return tokens, np.ones_like(tokens), np.asarray(loss, np.int32)


def tokenize_trajectories(
    trajectories: Sequence,
    tokenizer,
    max_length: int | None = None,
    side: str = "right",
) -> TokenizedTrajectories:
    """A batch of `tokenize_trajectory`, padded with ``tokenizer.pad_id`` to
    ``max_length`` (default: the longest) into ``[B, T]`` arrays.

    Right padding by default: a training forward scores whole sequences from
    position 0, and `lm.positions_from_mask` counts positions over real tokens
    only, so either side gives the same logits; right padding keeps turn
    boundaries at the same columns as `tokenize_trajectory`. ``side="left"`` is
    what `lm.generate` takes (the layout of `lm.pad_batch`, which does the
    padding here). Padding is 0 in both masks.
    """
    if isinstance(trajectories, MultiTurnTrajectory) or len(trajectories) == 0:
        raise ValueError("tokenize_trajectories needs a non-empty list of trajectories")
    rows = []
    for i, trajectory in enumerate(trajectories):
        try:
            rows.append(tokenize_trajectory(trajectory, tokenizer, max_length))
        except ValueError as error:
            raise ValueError(f"trajectories[{i}]: {error}") from None
    tokens, attention = pad_batch(
        [r[0].tolist() for r in rows], tokenizer.pad_id, max_length, side
    )
    loss, _ = pad_batch([r[2].tolist() for r in rows], 0, max_length, side)
    return TokenizedTrajectories(tokens, attention, loss)


# ---------------------------------------------------------------------------
# JSONL
# ---------------------------------------------------------------------------


def save_jsonl(path: str | os.PathLike, trajectories: Iterable) -> int:
    """Write one trajectory per line (``to_dict`` as JSON); returns the count.
    Metadata must hold JSON values (a tuple comes back as a list)."""
    path = Path(path)
    lines = []
    for i, trajectory in enumerate(trajectories):
        if not isinstance(trajectory, MultiTurnTrajectory):
            raise ValueError(
                f"trajectories[{i}] is a {type(trajectory).__name__}, not a "
                f"MultiTurnTrajectory"
            )
        try:
            lines.append(json.dumps(trajectory.to_dict(), ensure_ascii=False))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"trajectories[{i}] is not JSON-serializable: {error}"
            ) from None
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def load_jsonl(path: str | os.PathLike) -> list[MultiTurnTrajectory]:
    """Read what `save_jsonl` wrote (blank lines skipped). A line that is not
    JSON or not a valid trajectory raises ``ValueError`` naming its number."""
    path = Path(path)
    out = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                data: Any = json.loads(line)
                out.append(MultiTurnTrajectory.from_dict(data))
            except (TypeError, ValueError) as error:
                raise ValueError(f"{path}: line {number}: {error}") from None
    return out
