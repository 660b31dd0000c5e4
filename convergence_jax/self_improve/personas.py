"""A persona bank built in process: role x interest x style, deterministic.

SAO (arXiv 2510.06652, §4.1) draws one persona per synthetic prompt from
Persona-Hub (about 200,000 free-text personas) so that the prompts the model
writes for itself are diverse (without personas the paper measured 45.65% of the
prompts repeated, against 0.73% with them). Downloading Persona-Hub is out of
scope here; `persona_bank` composes short personas from three word lists instead
(24 roles x 5 interests x 6 styles = 720 personas by default), the same every
time, so that a run is reproducible and ships no data file:

    from convergence_jax.self_improve.personas import persona_bank

    bank = persona_bank()           # 720 Persona's
    bank[0].text                    # 'a terse nurse who loves coins'
    bank[0].interest                # 'coins'

Each `Persona` keeps its parts (``role``, ``interest``, ``style``) next to its
``text``, so that a synthetic task may tie what a persona asks about to a part of
it (the SAO benchmark's task maps the interest to the kind of arithmetic
problem). Only the ``text`` is shown to a model.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

__all__ = ["INTERESTS", "ROLES", "STYLES", "Persona", "persona_bank"]

ROLES = (
    "nurse",
    "farmer",
    "pilot",
    "chef",
    "tailor",
    "baker",
    "judge",
    "miner",
    "poet",
    "coach",
    "clerk",
    "sailor",
    "doctor",
    "painter",
    "teacher",
    "student",
    "lawyer",
    "dancer",
    "plumber",
    "florist",
    "barber",
    "banker",
    "actor",
    "writer",
)
INTERESTS = ("coins", "dice", "maps", "clocks", "stamps")
STYLES = ("terse", "curious", "busy", "calm", "witty", "shy")


@dataclasses.dataclass(frozen=True)
class Persona:
    """One persona: the text a model sees and the parts it was built from."""

    text: str
    role: str
    interest: str
    style: str


def persona_bank(
    roles=ROLES,
    interests=INTERESTS,
    styles=STYLES,
    template: str = "a {style} {role} who loves {interest}",
    shuffle_seed: int | None = None,
) -> list[Persona]:
    """Every (role, interest, style) combination as a `Persona` whose text is
    ``template`` filled in, in a fixed order (styles fastest, then interests,
    then roles), or shuffled by ``numpy.random.default_rng(shuffle_seed)``.

    Raises ``ValueError`` for an empty or repeated word list or a template
    without the three fields.
    """
    for name, words in (("roles", roles), ("interests", interests), ("styles", styles)):
        words = tuple(words)
        if not words:
            raise ValueError(f"persona_bank: {name} is empty")
        if len(set(words)) != len(words):
            raise ValueError(f"persona_bank: {name} has repeated words: {words}")
        if not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError(f"persona_bank: {name} must be non-empty strings")
    for field in ("{role}", "{interest}", "{style}"):
        if field not in template:
            raise ValueError(f"persona_bank: template {template!r} lacks {field}")
    bank = [
        Persona(template.format(role=r, interest=i, style=s), r, i, s)
        for r, i, s in itertools.product(roles, interests, styles)
    ]
    if shuffle_seed is not None:
        order = np.random.default_rng(int(shuffle_seed)).permutation(len(bank))
        bank = [bank[k] for k in order]
    return bank
