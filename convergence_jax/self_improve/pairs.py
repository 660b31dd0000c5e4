"""Preference pairs as text: the record, JSONL / JSON files, and SAO's quality
filters.

    from convergence_jax.self_improve import pairs

    data = [pairs.PreferencePair("2+2=", "4", "5", {"round": 0})]
    kept, counts = pairs.filter_pairs(data, pairs.PairFilter(unit="char"))
    pairs.save_pairs(kept, "round0.jsonl")            # or .json: one list
    assert pairs.load_pairs("round0.jsonl") == kept

A `PreferencePair` is one (prompt, chosen, rejected) triple of strings with free
``meta`` (persona, round, the judge's raw reply, ...). Files: ``.jsonl`` holds
one JSON object per line, ``.json`` one list of objects; both have the keys
``prompt``, ``chosen``, ``rejected``, ``meta``. Writes are atomic (a temporary
file renamed over the target), so a crash never leaves half a file.

`filter_pairs` applies, in order, the filters SAO's data needs (the paper keeps
one prompt per persona for diversity; self-written data also repeats itself):

1. ``identical``: chosen == rejected (no preference signal);
2. ``too_short`` / ``too_long``: either response's length, in words or
   characters (``unit``), outside ``[min_length, max_length]``;
3. ``low_diversity``: either response's distinct-n ratio (distinct n-grams /
   n-grams, Li et al. 2016) below ``min_distinct`` (degenerate repetition);
4. ``near_duplicate``: the prompt's n-gram Jaccard similarity to a prompt already
   kept at or above ``dedup_threshold`` (the earlier pair wins).

Each pair is counted under the first filter that drops it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "PairFilter",
    "PreferencePair",
    "distinct_n",
    "filter_pairs",
    "load_pairs",
    "ngram_similarity",
    "parse_ranking",
    "save_pairs",
]

Unit = Literal["word", "char"]
_KEYS = ("prompt", "chosen", "rejected")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """One preference: ``chosen`` is preferred to ``rejected`` as a reply to
    ``prompt``; ``meta`` is free JSON-serializable data about how it was made."""

    prompt: str
    chosen: str
    rejected: str
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for key in _KEYS:
            if not isinstance(getattr(self, key), str):
                raise TypeError(
                    f"PreferencePair.{key} must be a str, got "
                    f"{type(getattr(self, key)).__name__}"
                )
        if not isinstance(self.meta, Mapping):
            raise TypeError(
                f"PreferencePair.meta must be a mapping, got {type(self.meta).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in _KEYS} | {"meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> PreferencePair:
        if not isinstance(row, Mapping):
            raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        missing = [key for key in _KEYS if key not in row]
        if missing:
            raise ValueError(f"missing key(s) {missing}")
        unknown = sorted(set(row) - {*_KEYS, "meta"})
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}")
        return cls(
            row["prompt"], row["chosen"], row["rejected"], dict(row.get("meta", {}))
        )


def save_pairs(pairs: Iterable[PreferencePair], path: str | os.PathLike) -> Path:
    """Write ``pairs`` to ``path``: ``.jsonl`` (one object per line) or ``.json``
    (one list), atomically. Returns the path."""
    path = Path(path)
    rows = [pair.to_dict() for pair in pairs]
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    elif path.suffix == ".json":
        text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    else:
        raise ValueError(f"save_pairs: {path} must end in .jsonl or .json")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_pairs(path: str | os.PathLike) -> list[PreferencePair]:
    """Read pairs written by `save_pairs` (or by hand in the same format); a bad
    row raises ``ValueError`` naming the file and the line (``.jsonl``) or the
    index (``.json``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = [
            (f"line {number}", line)
            for number, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
        decoded = []
        for where, line in rows:
            try:
                decoded.append((where, json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, {where}: not JSON ({error})") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of pairs")
        decoded = [(f"item {index}", row) for index, row in enumerate(data)]
    else:
        raise ValueError(f"load_pairs: {path} must end in .jsonl or .json")
    out = []
    for where, row in decoded:
        try:
            out.append(PreferencePair.from_dict(row))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}, {where}: {error}") from None
    return out


RANKING = re.compile(r"ranking\s*[:=]\s*\**\s*(\d+)\s*>\s*(\d+)", re.IGNORECASE)
"""SAO's judging format ``ranking: X > Y`` anywhere in a text: any case and
spacing, ``=`` for ``:``, markdown bold (``**Ranking:** 2 > 1``)."""


def parse_ranking(
    text: str, prompted: bool = False, which: Literal["first", "last"] = "first"
) -> tuple[int, int] | None:
    """``(best, worst)`` from a judge's reply in SAO's fixed format ``ranking: X >
    Y`` (X, Y one of 1 or 2, X != Y), or None when it does not parse (no such
    text, a repeated digit, a number other than 1 or 2).

    ``prompted``: the judging prompt itself ended with ``ranking:`` (how a tiny
    model is asked) and ``text`` is its continuation, e.g. ``" 1 > 2"``.
    ``which``: the ranking that counts when a reply has several: the ``first``
    (a model answering in the format at once) or the ``last`` (a chat model that
    may quote the format before its verdict).
    """
    if which not in ("first", "last"):
        raise ValueError(f"parse_ranking: which must be 'first' or 'last': {which!r}")
    if not isinstance(text, str):
        return None
    found = RANKING.findall(("ranking:" + text) if prompted else text)
    if not found:
        return None
    best, worst = (int(v) for v in found[0 if which == "first" else -1])
    if {best, worst} != {1, 2}:
        return None
    return best, worst


def _units(text: str, unit: Unit) -> list[str]:
    if unit == "word":
        return text.split()
    if unit == "char":
        return list(text)
    raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")


def _ngrams(text: str, n: int, unit: Unit) -> list[tuple[str, ...]]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    units = _units(text, unit)
    return [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]


def distinct_n(text: str, n: int = 2, unit: Unit = "word") -> float:
    """Distinct n-grams / n-grams of ``text`` (1.0 when it has no n-gram: too
    short to repeat itself)."""
    grams = _ngrams(text, n, unit)
    return len(set(grams)) / len(grams) if grams else 1.0


def ngram_similarity(a: str, b: str, n: int = 3, unit: Unit = "word") -> float:
    """Jaccard similarity of the sets of n-grams of ``a`` and ``b`` (texts
    shorter than ``n`` units count as one n-gram: themselves)."""
    sets = []
    for text in (a, b):
        grams = set(_ngrams(text, n, unit)) or {tuple(_units(text, unit))}
        sets.append(grams)
    union = sets[0] | sets[1]
    return len(sets[0] & sets[1]) / len(union) if union else 1.0


@dataclasses.dataclass(frozen=True)
class PairFilter:
    """The thresholds of `filter_pairs` (lengths and n-grams in ``unit``s)."""

    min_length: int = 1
    max_length: int = 2048
    min_distinct: float = 0.0
    distinct_n: int = 2
    dedup_threshold: float = 0.9
    dedup_n: int = 3
    unit: Unit = "word"
    drop_identical: bool = True

    def __post_init__(self):
        if self.unit not in ("word", "char"):
            raise ValueError(f"PairFilter.unit must be 'word' or 'char': {self.unit!r}")
        if not 0 <= self.min_length <= self.max_length:
            raise ValueError(
                "PairFilter needs 0 <= min_length <= max_length, got "
                f"{self.min_length}, {self.max_length}"
            )
        if not 0.0 <= self.min_distinct <= 1.0:
            raise ValueError(f"PairFilter.min_distinct in [0, 1]: {self.min_distinct}")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise ValueError(
                f"PairFilter.dedup_threshold in (0, 1]: {self.dedup_threshold}"
            )
        if self.distinct_n < 1 or self.dedup_n < 1:
            raise ValueError("PairFilter.distinct_n and dedup_n must be >= 1")


def filter_pairs(
    pairs: Iterable[PreferencePair], spec: PairFilter = PairFilter()
) -> tuple[list[PreferencePair], dict[str, int]]:
    """The pairs that pass every filter of ``spec`` (in their order), and how
    many were dropped by each (keys ``kept``, ``identical``, ``too_short``,
    ``too_long``, ``low_diversity``, ``near_duplicate``; they sum to the number
    of input pairs)."""
    counts = dict.fromkeys(
        ("kept", "identical", "too_short", "too_long", "low_diversity"), 0
    )
    counts["near_duplicate"] = 0
    kept: list[PreferencePair] = []
    kept_grams: list[set] = []
    # An inverted index from n-gram to kept prompts, so that only prompts that
    # share an n-gram are compared (Jaccard is 0 otherwise).
    index: dict[tuple[str, ...], list[int]] = {}
    for pair in pairs:
        responses = (pair.chosen, pair.rejected)
        lengths = [len(_units(text, spec.unit)) for text in responses]
        if spec.drop_identical and pair.chosen == pair.rejected:
            reason = "identical"
        elif min(lengths) < spec.min_length:
            reason = "too_short"
        elif max(lengths) > spec.max_length:
            reason = "too_long"
        elif min(distinct_n(t, spec.distinct_n, spec.unit) for t in responses) < (
            spec.min_distinct
        ):
            reason = "low_diversity"
        else:
            grams = set(_ngrams(pair.prompt, spec.dedup_n, spec.unit)) or {
                tuple(_units(pair.prompt, spec.unit))
            }
            candidates = {i for gram in grams for i in index.get(gram, ())}
            duplicate = any(
                len(grams & kept_grams[i]) / len(grams | kept_grams[i])
                >= spec.dedup_threshold
                for i in candidates
            )
            if duplicate:
                reason = "near_duplicate"
            else:
                reason = "kept"
                for gram in grams:
                    index.setdefault(gram, []).append(len(kept))
                kept.append(pair)
                kept_grams.append(grams)
        counts[reason] += 1
    return kept, counts
