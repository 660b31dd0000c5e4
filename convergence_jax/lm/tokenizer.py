"""Tokenizers and the chat template (host side: strings in, int arrays out).

`ByteTokenizer` needs no files: ids 0-255 are the UTF-8 bytes, then special tokens.
`HFTokenizer` wraps any Hugging Face ``tokenizer.json`` through the ``tokenizers``
package. Both give ``encode`` / ``decode`` / ``encode_batch`` (left-padded, the
layout `convergence_jax.lm.generate` takes) and ``apply_chat_template`` for lists of
``{"role", "content"}`` messages in ChatML, the format of Qwen2's chat models.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convergence_jax.lm.config import LMConfig


def pad_batch(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    length: int | None = None,
    side: str = "left",
) -> tuple[np.ndarray, np.ndarray]:
    """Stack token lists into ``(tokens [B, L] int32, mask [B, L] int32)``.

    ``length`` defaults to the longest sequence; a longer sequence raises
    ``ValueError`` (it is never cut silently). ``side="left"`` puts the padding
    first, as generation needs.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if len(sequences) == 0:
        raise ValueError("pad_batch needs at least one sequence")
    longest = max(len(s) for s in sequences)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a sequence has {longest} tokens, more than length={length}")
    tokens = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for row, seq in enumerate(sequences):
        if len(seq) == 0:
            continue
        cols = (
            slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
        )
        tokens[row, cols] = seq
        mask[row, cols] = 1
    return tokens, mask


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then
    ``<|im_start|>assistant\\n`` when a generation prompt is asked for.
    ``default_system`` is prepended when the messages have no system turn (Qwen2's
    template does this with its own sentence; ``None`` adds nothing)."""

    start: str = "<|im_start|>"
    end: str = "<|im_end|>"
    default_system: str | None = None

    def render(
        self, messages: Sequence[dict], add_generation_prompt: bool = True
    ) -> str:
        if isinstance(messages, dict | str):
            raise ValueError("messages must be a list of {'role', 'content'} dicts")
        messages = list(messages)
        if self.default_system is not None and (
            not messages or messages[0].get("role") != "system"
        ):
            messages.insert(0, {"role": "system", "content": self.default_system})
        parts = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or set(message) - {"role", "content"}:
                raise ValueError(
                    f"messages[{i}] must be a dict with keys 'role' and 'content', "
                    f"got {message!r}"
                )
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise ValueError(
                    f"messages[{i}]: 'role' and 'content' must be strings, got "
                    f"{role!r}, {content!r}"
                )
            parts.append(f"{self.start}{role}\n{content}{self.end}\n")
        if add_generation_prompt:
            parts.append(f"{self.start}assistant\n")
        return "".join(parts)


CHATML = ChatTemplate()


class _Tokenizer:
    """What both tokenizers share; subclasses give ``encode``, ``decode``,
    ``vocab_size``, ``token_to_id`` and the ``pad_id``/``bos_id``/``eos_id``."""

    pad_id: int
    bos_id: int | None
    eos_id: int | None
    chat_template: ChatTemplate = CHATML

    def encode_batch(
        self,
        texts: Sequence[str],
        length: int | None = None,
        add_bos: bool = False,
        side: str = "left",
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens [B, L], mask [B, L])``, left-padded with ``pad_id``."""
        ids = [self.encode(t, add_bos=add_bos) for t in texts]
        return pad_batch(ids, self.pad_id, length, side)

    def decode_batch(self, tokens, mask=None, skip_special_tokens=True) -> list[str]:
        """Decode each row of ``tokens [B, L]``, keeping only entries where ``mask``
        (e.g. a completion mask) is nonzero."""
        tokens = np.asarray(tokens)
        mask = np.ones_like(tokens) if mask is None else np.asarray(mask)
        return [
            self.decode(row[m > 0].tolist(), skip_special_tokens=skip_special_tokens)
            for row, m in zip(tokens, mask, strict=True)
        ]

    def apply_chat_template(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = True,
        tokenize: bool = True,
    ):
        """Render ``messages`` with ``self.chat_template``; token ids unless
        ``tokenize=False``. Each chat marker must be one token of this vocabulary."""
        text = self.chat_template.render(messages, add_generation_prompt)
        if not tokenize:
            return text
        for marker in (self.chat_template.start, self.chat_template.end):
            if self.token_to_id(marker) is None:
                raise ValueError(
                    f"the chat template's marker {marker!r} is not a token of this "
                    f"tokenizer; add it as a special token"
                )
        return self.encode(text)

    @property
    def stop_tokens(self) -> tuple[int, ...]:
        """Ids that end a completion: ``eos`` and the chat end marker, if present."""
        ids = {self.eos_id, self.token_to_id(self.chat_template.end)}
        return tuple(sorted(i for i in ids if i is not None))

    def check_model(self, config: LMConfig) -> None:
        """Raise ``ValueError`` if this tokenizer can emit ids the model has no
        embedding for (models may have more rows than the tokenizer has ids)."""
        if self.vocab_size > config.vocab_size:
            raise ValueError(
                f"tokenizer vocabulary ({self.vocab_size} ids) does not fit the model: "
                f"LMConfig.vocab_size is {config.vocab_size}"
            )


class ByteTokenizer(_Tokenizer):
    """UTF-8 bytes as ids 0-255, then ``special_tokens`` as 256, 257, ...

    Special-token strings in the text are encoded as their single id; without a
    ``pad_token``, byte 0 pads. Decoding
    replaces invalid UTF-8 (a completion cut inside a character) with U+FFFD.
    """

    def __init__(
        self,
        special_tokens: Sequence[str] = (
            "<pad>",
            "<bos>",
            "<eos>",
            "<|im_start|>",
            "<|im_end|>",
        ),
        pad_token: str | None = "<pad>",
        bos_token: str | None = "<bos>",
        eos_token: str | None = "<eos>",
        chat_template: ChatTemplate = CHATML,
    ):
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special_tokens has duplicates: {special_tokens}")
        self.special_tokens = tuple(special_tokens)
        self._special = {tok: 256 + i for i, tok in enumerate(self.special_tokens)}
        self._special_ids = {i: tok for tok, i in self._special.items()}
        for field, token in (
            ("pad_token", pad_token),
            ("bos_token", bos_token),
            ("eos_token", eos_token),
        ):
            if token is not None and token not in self._special:
                raise ValueError(f"{field} {token!r} is not one of special_tokens")
        # Without a pad token the NUL byte pads (padding is always masked out).
        self.pad_id = 0 if pad_token is None else self._special[pad_token]
        self.bos_id = None if bos_token is None else self._special[bos_token]
        self.eos_id = None if eos_token is None else self._special[eos_token]
        self.chat_template = chat_template
        longest_first = sorted(self.special_tokens, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._special.get(token)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos and self.bos_id is not None else []
        for piece in self._split.split(text) if self.special_tokens else [text]:
            if piece in self._special:
                ids.append(self._special[piece])
            elif piece:
                ids.extend(piece.encode("utf-8"))
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        out, run = [], bytearray()
        for i in map(int, ids):
            if 0 <= i < 256:
                run.append(i)
                continue
            if i not in self._special_ids:
                raise ValueError(f"id {i} is outside this ByteTokenizer's vocabulary")
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            if not skip_special_tokens:
                out.append(self._special_ids[i])
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


class HFTokenizer(_Tokenizer):
    """A Hugging Face ``tokenizers.Tokenizer`` (any ``tokenizer.json``).

    The pad / bos / eos tokens are given by name; `from_pretrained` reads them
    from a checkpoint folder's ``tokenizer_config.json`` when present. Without a
    pad token the eos token pads (masked out anyway).
    """

    def __init__(
        self,
        tokenizer,
        pad_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        chat_template: ChatTemplate = CHATML,
    ):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        ids = {}
        for field, token in (
            ("pad_token", pad_token),
            ("bos_token", bos_token),
            ("eos_token", eos_token),
        ):
            ids[field] = None if token is None else tokenizer.token_to_id(token)
            if token is not None and ids[field] is None:
                raise ValueError(
                    f"{field} {token!r} is not in the tokenizer's vocabulary"
                )
        self.bos_id, self.eos_id = ids["bos_token"], ids["eos_token"]
        pad = ids["pad_token"] if ids["pad_token"] is not None else self.eos_id
        if pad is None:
            raise ValueError(
                "HFTokenizer needs a pad_token or an eos_token to pad with"
            )
        self.pad_id = pad

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> HFTokenizer:
        """Read a ``tokenizer.json``; ``kwargs`` as for the constructor."""
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        return cls(Tokenizer.from_file(str(path)), **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs) -> HFTokenizer:
        """``folder/tokenizer.json``, with pad/bos/eos names from
        ``folder/tokenizer_config.json`` unless given in ``kwargs``."""
        folder = Path(folder)
        settings = {}
        config_path = folder / "tokenizer_config.json"
        if config_path.exists():
            raw = json.loads(config_path.read_text())
            for name in ("pad_token", "bos_token", "eos_token"):
                value = raw.get(name)
                if isinstance(value, dict):  # AddedToken serialized as a dict
                    value = value.get("content")
                if isinstance(value, str):
                    settings[name] = value
        settings.update(kwargs)
        return cls.from_file(folder / "tokenizer.json", **settings)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(
            [int(i) for i in ids], skip_special_tokens=skip_special_tokens
        )
