"""Domain randomization of the simulated user: who they are (persona), what they
want (topic) and how they say it (style), host side.

    from convergence_jax.agents.randomizer import DomainRandomizer

    users = DomainRandomizer.customer_service(strength=0.7)
    train_users, held_out_users = users.split(held_out_fraction=0.3, seed=0)
    profile = train_users.sample(0)   # UserProfile(persona, topic, style)

Each factor is a list of options; option 0 is its *default*. ``strength`` is the
probability of drawing a non-default option (then uniformly among the others):
0 always gives the default user, 1 never does. ``split`` deals each factor's
options into two disjoint sets, so that an agent trained on one randomizer's users
is evaluated on users it has never met (`convergence_jax.agents.task_env` tokenizes
the options into tables and draws them in JAX with the same rule,
`option_probabilities`).

In the customer-service defaults, ``persona`` is the user's greeting, ``topic``
their request and ``style`` the template of the reply that gives their order id
(``{order_id}`` is filled in); any strings work for other uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "CUSTOMER_SERVICE_PERSONAS",
    "CUSTOMER_SERVICE_STYLES",
    "CUSTOMER_SERVICE_TOPICS",
    "FACTORS",
    "DomainRandomizer",
    "UserProfile",
]

FACTORS = ("persona", "topic", "style")

# Short on purpose: a byte-level model reads every character.
CUSTOMER_SERVICE_PERSONAS = (
    "Hi.",
    "Hello!",
    "Hey there.",
    "Good morning.",
    "Hi, Sam here.",
    "Hello, it's Ana.",
    "Greetings.",
    "Yo.",
    "Good evening.",
    "Hey.",
    "Hi there!",
    "Howdy.",
    "Hello, Raj here.",
    "Hi, it's Li.",
    "Morning!",
    "Good day.",
    "Hey, Kim here.",
    "Hiya.",
    "Hello there.",
    "Hi, Omar here.",
    "Evening.",
    "Hi all.",
    "Salut.",
    "Hey, it's Bo.",
)
CUSTOMER_SERVICE_TOPICS = (
    "I want a refund.",
    "Please refund my order.",
    "Can I get my money back?",
    "I'd like to return my order.",
    "Refund me, please.",
    "My order was bad, refund?",
    "I need a refund now.",
    "Is a refund possible?",
    "I want my money back.",
    "Can you refund me?",
    "Please give me a refund.",
    "I'd like a refund.",
    "Refund my order.",
    "My item broke. Refund?",
    "I want to return this.",
    "Money back, please.",
    "Can I return my order?",
    "I need my money back.",
    "Refund, please.",
    "Could I get a refund?",
    "I demand a refund.",
    "Please issue a refund.",
    "I'd like my money back.",
    "Return and refund, pls.",
)
_STYLE_PREFIXES = (
    "It is ",
    "",
    "Order ",
    "Sure: ",
    "#",
    "The id is ",
    "ok ",
    "It's ",
    "id ",
    "Here: ",
    "My order: ",
    "Yes, ",
)
_STYLE_SUFFIXES = ("", ".", "!", " thanks", ", thanks.", " is mine.")
CUSTOMER_SERVICE_STYLES = tuple(
    f"{prefix}{{order_id}}{suffix}"
    for prefix in _STYLE_PREFIXES
    for suffix in _STYLE_SUFFIXES
)
"""72 reply templates: every prefix with every suffix (``"It is {order_id}"``
first, the default)."""


class UserProfile(NamedTuple):
    """One simulated user: the option drawn for each factor, and its index in the
    randomizer's option list (``indices = (persona, topic, style)``)."""

    persona: str
    topic: str
    style: str
    indices: tuple[int, int, int] = (0, 0, 0)


def _check_options(name: str, options) -> tuple[str, ...]:
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise ValueError(
            f"DomainRandomizer.{name} must be a list of strings, got "
            f"{type(options).__name__}"
        )
    options = tuple(options)
    if not options:
        raise ValueError(f"DomainRandomizer.{name} needs at least one option")
    for i, option in enumerate(options):
        if not isinstance(option, str):
            raise ValueError(
                f"DomainRandomizer.{name}[{i}] must be a string, got {option!r}"
            )
    if len(set(options)) != len(options):
        raise ValueError(f"DomainRandomizer.{name} has duplicate options: {options}")
    return options


def _check_strength(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"DomainRandomizer strength of {name} must be a number")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"DomainRandomizer strength of {name} must be in [0, 1], got {value}"
        )
    return value


@dataclasses.dataclass(frozen=True)
class DomainRandomizer:
    """Options per factor (index 0 = the default) and the strength of each.

    ``strength`` is one number for every factor or a dict ``{factor: number}``
    (missing factors take 0.5). ``sample(seed_or_rng)`` draws a `UserProfile`;
    ``split(held_out_fraction, seed)`` gives two randomizers with disjoint
    options. Bad options or strengths raise ``ValueError`` naming the field.
    """

    persona: tuple[str, ...] = CUSTOMER_SERVICE_PERSONAS
    topic: tuple[str, ...] = CUSTOMER_SERVICE_TOPICS
    style: tuple[str, ...] = CUSTOMER_SERVICE_STYLES
    strength: float | Mapping[str, float] = 0.5

    def __post_init__(self):
        for name in FACTORS:
            object.__setattr__(self, name, _check_options(name, getattr(self, name)))
        strength = self.strength
        if isinstance(strength, Mapping):
            unknown = set(strength) - set(FACTORS)
            if unknown:
                raise ValueError(
                    f"DomainRandomizer.strength: unknown factors {sorted(unknown)}; "
                    f"known: {list(FACTORS)}"
                )
            values = {n: _check_strength(n, strength.get(n, 0.5)) for n in FACTORS}
        else:
            values = {n: _check_strength(n, strength) for n in FACTORS}
        object.__setattr__(self, "strength", values)

    @classmethod
    def customer_service(cls, strength: float | Mapping[str, float] = 0.5):
        """The customer-service users (greeting, refund request, order-id reply
        template with ``{order_id}``): 24 personas, 24 topics and 72 styles (12
        prefixes x 6 suffixes around the id). Varied on purpose (measured after
        the SFT warm-up of `benchmarks/agents_learning.py`, seed 0): with 8
        options per factor (6 for training after `split`) the model asked
        held-out users for their id in 49% of conversations (100% for training
        users; strength 0.7); with 24 personas and topics in 98%, but with 16
        whole reply templates it copied the id from a held-out template in 5% of
        conversations (62% from training ones: its copy pointer slipped by a
        digit); with the 72 compositional templates (strength 0.92) in 44% (57%)."""
        return cls(strength=strength)

    def options(self, factor: str) -> tuple[str, ...]:
        if factor not in FACTORS:
            raise ValueError(f"unknown factor {factor!r}; known: {list(FACTORS)}")
        return getattr(self, factor)

    def option_probabilities(self, factor: str) -> np.ndarray:
        """``[num_options]`` probabilities of each option of ``factor``: ``1 -
        strength`` on the default, ``strength`` shared by the others (all on the
        default when it is the only option)."""
        n = len(self.options(factor))
        if n == 1:
            return np.ones(1)
        s = self.strength[factor]
        return np.concatenate([[1.0 - s], np.full(n - 1, s / (n - 1))])

    def sample(self, seed_or_rng=None) -> UserProfile:
        """One user: an int seed, a ``numpy.random.Generator`` or None (fresh
        entropy)."""
        if isinstance(seed_or_rng, np.random.Generator):
            rng = seed_or_rng
        elif seed_or_rng is None or (
            isinstance(seed_or_rng, int | np.integer)
            and not isinstance(seed_or_rng, bool)
        ):
            rng = np.random.default_rng(seed_or_rng)
        else:
            raise ValueError(
                "sample takes an int seed, a numpy.random.Generator or None, got "
                f"{type(seed_or_rng).__name__}"
            )
        indices = tuple(
            int(rng.choice(len(self.options(f)), p=self.option_probabilities(f)))
            for f in FACTORS
        )
        return UserProfile(
            *(self.options(f)[i] for f, i in zip(FACTORS, indices, strict=True)),
            indices=indices,
        )

    def split(
        self, held_out_fraction: float = 0.25, seed: int = 0
    ) -> tuple[DomainRandomizer, DomainRandomizer]:
        """``(train, held_out)`` randomizers whose options are disjoint in every
        factor with at least two options (a factor with one option is shared).

        The default (option 0) stays in ``train``; ``held_out`` takes
        ``round(held_out_fraction * n)`` of the others (at least 1, at most ``n -
        1``), chosen by ``seed``; each keeps this randomizer's strengths, and
        ``held_out``'s default is its first option.
        """
        if isinstance(held_out_fraction, bool) or not isinstance(
            held_out_fraction, int | float
        ):
            raise ValueError("split: held_out_fraction must be a number in (0, 1)")
        if not 0.0 < held_out_fraction < 1.0:
            raise ValueError(
                f"split: held_out_fraction must be in (0, 1), got {held_out_fraction}"
            )
        rng = np.random.default_rng(seed)
        train, held = {}, {}
        for name in FACTORS:
            options = self.options(name)
            n = len(options)
            if n == 1:
                train[name] = held[name] = options
                continue
            k = min(max(round(held_out_fraction * n), 1), n - 1)
            others = rng.permutation(np.arange(1, n))
            held_idx = sorted(int(i) for i in others[:k])
            train[name] = tuple(o for i, o in enumerate(options) if i not in held_idx)
            held[name] = tuple(options[i] for i in held_idx)
        return (
            DomainRandomizer(**train, strength=dict(self.strength)),
            DomainRandomizer(**held, strength=dict(self.strength)),
        )
