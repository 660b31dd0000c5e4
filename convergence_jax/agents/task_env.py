"""Goal-oriented conversations with a verifiable outcome, in pure JAX on tokens.

    from convergence_jax import lm
    from convergence_jax.agents.randomizer import DomainRandomizer
    from convergence_jax.agents.task_env import customer_service_env

    env = customer_service_env(lm.ByteTokenizer(), DomainRandomizer(strength=0.7))
    scenarios = env.sample_scenarios(key, 16, held_out=False)
    prompt_tokens, prompt_mask = env.prompt(scenarios)        # [16, Lp]
    state = env.reset(scenarios)
    state, reply = env.step(state, turn_tokens, turn_mask)    # [16, N] -> [16, R]

A `TaskEnv` holds pre-tokenized tables; ``reset`` and ``step`` are pure functions
of ``[B]`` arrays, so a batch of whole conversations (`convergence_jax.agents.
multiturn`) compiles into one XLA program: no Python between turns.

**The customer-service world** (`customer_service_env`). A table of orders (a
4-digit id, a status -- delivered or in transit --, the days since delivery
(1-59), an amount ($100-999)); the user wants a refund. The user's first message
(persona + topic, from the `DomainRandomizer`) does not give the order id; the
user gives it only when asked, in their style (a template of the randomizer);
the record comes only from the lookup tool. The agent's protocol, one command per
turn, each ended by the end-of-turn token ``<|im_end|>``:

    ask id          -> the user replies with their order id (in their style)
    lookup 4821     -> the tool replies with order 4821's record, or "no such order"
    refund 4821     -> ends the episode
    deny 4821       -> ends the episode
    anything else   -> the fixed reply "error: unknown command" (the turn counts)

The rule: **refund iff the order was delivered less than 30 days ago**, else deny.
Success (reward 1, else 0) = the episode ends with the right action on the
user's own order id *and* that id was looked up earlier in the episode (so a
successful episode takes at least three agent turns: ask, lookup, act). The
episode also ends after ``max_turns`` agent turns (reward 0). No shaping.

**Held out**: a disjoint set of orders (``held_out_orders``, a fraction of the
table; their ids appear in no training scenario) and held-out users (the options
of ``held_out_users``, a `DomainRandomizer` whose personas, topics and styles are
disjoint from the training randomizer's: `DomainRandomizer.split`).

**Token layout.** While a conversation is played, it is ``max_turns`` blocks
of ``turn_tokens`` (N) agent slots then ``reply_tokens`` (R) reply slots (the
last reply dropped): ``completion_length = max_turns * (N + R) - R``. Each reply
is ``"\\n<|im_start|>{role}\\n{content}<|im_end|>\\n<|im_start|>assistant\\n"``;
unused slots are masked. The model attends only to mask-1 tokens and counts
positions over them, so the padding is invisible while sampling. `Conversations`
then packs each row (real tokens first, padding at the end): the real tokens
read exactly as `agents.tokenize_trajectory` renders the conversation (checked
in the tests), ``loss_mask`` is 1 exactly on the agent's tokens (content and
its ``<|im_end|>``), and `lm.completion_logprobs` (which predicts each token
from the column before it) scores them as the sampler did.

Parsing is exact on the canonical tokenization (``tokenizer.encode`` of the
command); tokenizers whose digits are not single tokens, or that merge a
command's prefix with its digits, are rejected at construction.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from convergence_jax.agents.randomizer import FACTORS, DomainRandomizer
from convergence_jax.agents.trajectory import MultiTurnTrajectory, Turn
from convergence_jax.lm.config import LMConfig

__all__ = [
    "ACTIONS",
    "Conversations",
    "EnvState",
    "REPLY_KINDS",
    "Scenarios",
    "TaskEnv",
    "customer_service_env",
    "expert_conversations",
    "to_trajectories",
]

ACTIONS = ("invalid", "ask", "lookup", "refund", "deny")
INVALID, ASK, LOOKUP, REFUND, DENY = range(5)
# Reply kinds; USER + s is the user's reply in style s.
REPLY_KINDS = ("none", "error", "delivered", "in_transit", "not_found", "user")
NONE, ERROR, DELIVERED, TRANSIT, NOT_FOUND, USER = range(6)
ID_DIGITS = 4
REFUND_DAYS = 30
"""Refund iff delivered and days since delivery < REFUND_DAYS."""

_COMMANDS = {ASK: "ask id", LOOKUP: "lookup ", REFUND: "refund ", DENY: "deny "}
_TOOL_TEMPLATES = {
    ERROR: ("tool", "error: unknown command"),
    DELIVERED: ("tool", "{order_id}: delivered {days} days ago, ${amount}"),
    TRANSIT: ("tool", "{order_id}: in transit, ${amount}"),
    NOT_FOUND: ("tool", "{order_id}: no such order"),
}
# Slots of the values vector: 4 id digits, 2 days digits, 3 amount digits.
_FIELDS = {"order_id": (0, 4), "days": (4, 2), "amount": (6, 3)}
_NUM_VALUES = 9


@struct.dataclass
class Scenarios:
    """``[B]`` int32: the order (row of the env's table) and the user (indices
    into the env's persona / topic / style lists)."""

    order: jax.Array
    persona: jax.Array
    topic: jax.Array
    style: jax.Array


@struct.dataclass
class EnvState:
    """``[B]`` per conversation: its scenario, the user's order id and whether a
    refund is right, progress flags, and the number of agent turns taken."""

    scenarios: Scenarios
    order_id: jax.Array
    refund_ok: jax.Array
    asked: jax.Array
    looked_up: jax.Array
    done: jax.Array
    success: jax.Array
    turn: jax.Array


class StepInfo(NamedTuple):
    """``[B]``: the parsed action (`ACTIONS`), its id argument (-1 if none), the
    reply kind (`REPLY_KINDS`, ``USER + style``), the reward, and whether the
    conversation was still active before this turn."""

    action: jax.Array
    arg: jax.Array
    reply_kind: jax.Array
    reward: jax.Array
    active: jax.Array


class Conversations(NamedTuple):
    """A batch of whole conversations ``[B, ...]``.

    ``tokens``/``mask``/``loss_mask``/``logprobs``: ``[B, C]`` after the prompt
    (``C = env.completion_length``), packed: each row's real tokens in order,
    then padding; ``mask`` is 1 on every real token (agent, user, tool),
    ``loss_mask`` on the agent's tokens only; ``logprobs`` are the sampler's on
    agent tokens (0 elsewhere and for the expert). ``agent_lengths`` /
    ``reply_lengths`` ``[B, T]``: the real tokens of each agent turn and of the
    reply that follows it (0 after the end). ``actions``, ``args``,
    ``reply_kinds``: ``[B, T]`` per agent turn (``reply_kind`` none after the
    end); ``rewards``/``success``/``num_turns``: ``[B]``; ``turn_rewards``
    ``[B, T]``: the env's reward of each agent turn (0 after the end; their sum
    is ``rewards``).
    """

    scenarios: Scenarios
    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    tokens: jax.Array
    mask: jax.Array
    loss_mask: jax.Array
    logprobs: jax.Array
    agent_lengths: jax.Array
    reply_lengths: jax.Array
    actions: jax.Array
    args: jax.Array
    reply_kinds: jax.Array
    rewards: jax.Array
    success: jax.Array
    num_turns: jax.Array
    turn_rewards: jax.Array


def _digits(values, width):
    """``[...] -> [..., width]`` decimal digits, most significant first."""
    powers = 10 ** jnp.arange(width - 1, -1, -1)
    return (values[..., None] // powers) % 10


def _tokenize_template(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Token ids and slots (-1 literal, else an index of the values vector) of a
    template with ``{order_id}``, ``{days}``, ``{amount}`` placeholders."""
    ids, slots = [], []
    for literal, field, _, _ in string.Formatter().parse(text):
        if literal:
            piece = tokenizer.encode(literal)
            ids += piece
            slots += [-1] * len(piece)
        if field is not None:
            if field not in _FIELDS:
                raise ValueError(
                    f"template {text!r}: unknown placeholder {{{field}}}; known: "
                    f"{sorted(_FIELDS)}"
                )
            start, width = _FIELDS[field]
            ids += [0] * width
            slots += list(range(start, start + width))
    return ids, slots


@dataclasses.dataclass(frozen=True, eq=False)
class TaskEnv:
    """The customer-service world's tables and pure functions (see the module
    docstring). Build it with `customer_service_env`."""

    tokenizer: Any
    max_turns: int
    turn_tokens: int
    reply_tokens: int
    prompt_length: int
    personas: tuple[str, ...]
    topics: tuple[str, ...]
    styles: tuple[str, ...]
    users: dict  # {"train": DomainRandomizer, "held_out": DomainRandomizer}
    user_probs: dict  # {split: {factor: np.ndarray over the combined list}}
    order_ids: np.ndarray
    delivered: np.ndarray
    days: np.ndarray
    amount: np.ndarray
    split_orders: dict  # {"train": np.ndarray of rows, "held_out": ...}
    tables: dict  # numpy tables (prompts, replies, commands, digits)
    stop_tokens: tuple[int, ...]
    pad_id: int
    max_token_id: int

    # -- sizes --
    @property
    def completion_length(self) -> int:
        return self.max_turns * (self.turn_tokens + self.reply_tokens) - (
            self.reply_tokens
        )

    @property
    def sequence_length(self) -> int:
        """Prompt + conversation: the context a model needs."""
        return self.prompt_length + self.completion_length

    def check_model(self, model_config: LMConfig) -> None:
        """``ValueError`` if the model cannot read this env's tokens or hold a
        whole conversation."""
        if self.max_token_id >= model_config.vocab_size:
            raise ValueError(
                f"the env's tokens reach id {self.max_token_id} but "
                f"LMConfig.vocab_size is {model_config.vocab_size}: does the "
                "tokenizer match the model?"
            )
        if self.sequence_length > model_config.max_position_embeddings:
            raise ValueError(
                f"a conversation takes {self.sequence_length} tokens (prompt "
                f"{self.prompt_length} + {self.max_turns} turns) but "
                f"LMConfig.max_position_embeddings is "
                f"{model_config.max_position_embeddings}"
            )

    def _table(self, name):
        return jnp.asarray(self.tables[name])

    # -- scenarios and prompts --
    def sample_scenarios(self, key, num: int, held_out: bool = False) -> Scenarios:
        """``num`` scenarios: orders uniform over the split's orders, users from
        the split's randomizer (its strengths)."""
        split = "held_out" if held_out else "train"
        k_order, *k_users = jax.random.split(key, 1 + len(FACTORS))
        rows = jnp.asarray(self.split_orders[split], jnp.int32)
        order = rows[jax.random.randint(k_order, (num,), 0, len(rows))]
        users = {
            factor: jax.random.categorical(
                k, jnp.log(jnp.asarray(self.user_probs[split][factor])), shape=(num,)
            ).astype(jnp.int32)
            for factor, k in zip(FACTORS, k_users, strict=True)
        }
        return Scenarios(order=order, **users)

    def prompt(self, scenarios: Scenarios) -> tuple[jax.Array, jax.Array]:
        """The user's first message, left-padded ``[B, prompt_length]`` (tokens,
        mask), ending with the generation prompt ``<|im_start|>assistant\\n``."""
        tokens = self._table("prompt_tokens")[scenarios.persona, scenarios.topic]
        mask = self._table("prompt_mask")[scenarios.persona, scenarios.topic]
        return tokens, mask

    def reset(self, scenarios: Scenarios) -> EnvState:
        b = scenarios.order.shape
        order_ids = jnp.asarray(self.order_ids, jnp.int32)[scenarios.order]
        delivered = jnp.asarray(self.delivered)[scenarios.order]
        days = jnp.asarray(self.days, jnp.int32)[scenarios.order]
        false = jnp.zeros(b, bool)
        return EnvState(
            scenarios=scenarios,
            order_id=order_ids,
            refund_ok=delivered & (days < REFUND_DAYS),
            asked=false,
            looked_up=false,
            done=false,
            success=false,
            turn=jnp.zeros(b, jnp.int32),
        )

    # -- the agent's turn --
    def parse(self, tokens, mask) -> tuple[jax.Array, jax.Array]:
        """``tokens``/``mask`` ``[B, N]`` (one agent turn) -> ``(action [B],
        arg [B])``: the `ACTIONS` code and the 4-digit id (-1 if none). A turn
        parses only if it is exactly a command followed by a stop token."""
        n = tokens.shape[-1]
        stops = jnp.asarray(self.stop_tokens, jnp.int32)
        is_stop = jnp.isin(tokens, stops) & (mask > 0)
        has_stop = is_stop.any(-1)
        length = jnp.where(has_stop, jnp.argmax(is_stop, -1), n + 1)
        value_of = self._table("digit_value")  # [vocab] -> 0-9 or -1
        values = value_of[jnp.clip(tokens, 0, value_of.shape[0] - 1)]
        action = jnp.full(tokens.shape[:-1], INVALID, jnp.int32)
        arg = jnp.full(tokens.shape[:-1], -1, jnp.int32)
        powers = 10 ** jnp.arange(ID_DIGITS - 1, -1, -1)
        for code, prefix in self.tables["command_ids"].items():
            k = len(prefix)
            width = k + (0 if code == ASK else ID_DIGITS)
            if width > n - 1:
                continue
            ok = (length == width) & jnp.all(
                tokens[..., :k] == jnp.asarray(prefix, jnp.int32), -1
            )
            if code != ASK:
                digits = values[..., k : k + ID_DIGITS]
                ok = ok & jnp.all(digits >= 0, -1)
                arg = jnp.where(ok, jnp.sum(digits * powers, -1), arg)
            action = jnp.where(ok, code, action)
        return action, arg

    def step(self, state: EnvState, tokens, mask):
        """One agent turn ``[B, N]`` -> ``(state, reply_tokens [B, R],
        reply_mask [B, R], StepInfo)``. Finished conversations stay finished
        (reply mask 0, reward 0)."""
        action, arg = self.parse(tokens, mask)
        active = ~state.done
        ids = jnp.asarray(self.order_ids, jnp.int32)
        match = ids[None, :] == arg[:, None]
        found = match.any(-1)
        row = jnp.argmax(match, -1)
        delivered = jnp.asarray(self.delivered)[row]
        kind = jnp.select(
            [action == ASK, action == LOOKUP, action >= REFUND],
            [
                USER + state.scenarios.style,
                jnp.where(found, jnp.where(delivered, DELIVERED, TRANSIT), NOT_FOUND),
                NONE,
            ],
            ERROR,
        )
        terminal = (action == REFUND) | (action == DENY)
        right = jnp.where(state.refund_ok, REFUND, DENY)
        success = (
            active
            & terminal
            & (arg == state.order_id)
            & state.looked_up
            & (action == right)
        )
        turn = state.turn + active.astype(jnp.int32)
        done = state.done | terminal | (turn >= self.max_turns)
        kind = jnp.where(active & ~done, kind, NONE)
        shown_id = jnp.where(action == ASK, state.order_id, arg)
        values = jnp.concatenate(
            [
                _digits(jnp.maximum(shown_id, 0), ID_DIGITS),
                _digits(jnp.asarray(self.days, jnp.int32)[row], 2),
                _digits(jnp.asarray(self.amount, jnp.int32)[row], 3),
            ],
            -1,
        )
        reply_tokens, reply_mask = self._fill("reply", kind, values)
        state = state.replace(
            asked=state.asked | (active & (action == ASK)),
            looked_up=state.looked_up
            | (active & (action == LOOKUP) & (arg == state.order_id)),
            done=done,
            success=state.success | success,
            turn=turn,
        )
        info = StepInfo(
            action=jnp.where(active, action, INVALID),
            arg=jnp.where(active, arg, -1),
            reply_kind=kind,
            reward=success.astype(jnp.float32),
            active=active,
        )
        return state, reply_tokens, reply_mask, info

    def _fill(self, table: str, kind, values):
        tokens = self._table(f"{table}_tokens")[kind]
        slots = self._table(f"{table}_slots")[kind]
        length = self._table(f"{table}_length")[kind]
        digit_ids = self._table("digit_ids")
        picked = jnp.take_along_axis(values, jnp.maximum(slots, 0), -1)
        tokens = jnp.where(slots >= 0, digit_ids[picked], tokens)
        width = tokens.shape[-1]
        mask = (jnp.arange(width) < length[..., None]).astype(jnp.int32)
        return jnp.where(mask > 0, tokens, self.pad_id), mask

    def expert_turn(self, state: EnvState) -> tuple[jax.Array, jax.Array]:
        """The scripted expert's turn ``[B, N]`` (tokens, mask): ask, then look
        up the user's id, then act by the rule."""
        action = jnp.where(
            ~state.asked,
            ASK,
            jnp.where(
                ~state.looked_up, LOOKUP, jnp.where(state.refund_ok, REFUND, DENY)
            ),
        )
        values = jnp.concatenate(
            [
                _digits(state.order_id, ID_DIGITS),
                jnp.zeros(state.order_id.shape + (5,), jnp.int32),
            ],
            -1,
        )
        tokens, mask = self._fill("command", action, values)
        return tokens, mask * (~state.done)[:, None]

    def correct_action(self, order: np.ndarray) -> np.ndarray:
        """Host-side: ``'refund'`` or ``'deny'`` for table rows ``order``."""
        ok = self.delivered[order] & (self.days[order] < REFUND_DAYS)
        return np.where(ok, "refund", "deny")


# --- the customer-service world ----------------------------------------------------


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"customer_service_env: {name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"customer_service_env: {name} must be >= {low}, got {value}")


def customer_service_env(
    tokenizer,
    randomizer: DomainRandomizer | None = None,
    held_out_users: DomainRandomizer | None = None,
    *,
    num_orders: int = 256,
    held_out_orders: float = 0.25,
    held_out_users_fraction: float = 0.25,
    delivered_fraction: float = 0.75,
    max_turns: int = 4,
    turn_tokens: int = 12,
    seed: int = 0,
) -> TaskEnv:
    """The customer-service `TaskEnv` (see the module docstring).

    ``randomizer`` gives the training users (default
    `DomainRandomizer.customer_service`); ``held_out_users`` the held-out ones --
    when None, ``randomizer.split(held_out_users_fraction, seed)`` deals its
    options into the two. Every style must contain ``{order_id}``. ``num_orders``
    orders are drawn with ``seed``; a ``held_out_orders`` fraction of them serve
    only held-out scenarios. ``turn_tokens`` (N) bounds an agent turn (>= 12:
    ``refund 1234<|im_end|>``). Bad settings raise ``ValueError`` naming them.
    """
    _check_int("num_orders", num_orders, 2)
    _check_int("max_turns", max_turns, 1)
    _check_int("turn_tokens", turn_tokens, 2 + len("refund ") + ID_DIGITS - 1)
    _check_int("seed", seed, 0)
    if num_orders > 9000:
        raise ValueError(
            f"customer_service_env: num_orders must be <= 9000 (4-digit ids), got "
            f"{num_orders}"
        )
    for name, value in (
        ("held_out_orders", held_out_orders),
        ("delivered_fraction", delivered_fraction),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"customer_service_env: {name} must be a number")
    if not 0.0 < held_out_orders < 1.0:
        raise ValueError(
            f"customer_service_env: held_out_orders must be in (0, 1), got "
            f"{held_out_orders}"
        )
    if not 0.0 <= delivered_fraction <= 1.0:
        raise ValueError(
            "customer_service_env: delivered_fraction must be in [0, 1], got "
            f"{delivered_fraction}"
        )
    if randomizer is None:
        randomizer = DomainRandomizer.customer_service()
    if not isinstance(randomizer, DomainRandomizer):
        raise ValueError(
            "customer_service_env: randomizer must be a DomainRandomizer, got "
            f"{type(randomizer).__name__}"
        )
    if held_out_users is None:
        train_users, held_out_users = randomizer.split(held_out_users_fraction, seed)
    else:
        if not isinstance(held_out_users, DomainRandomizer):
            raise ValueError(
                "customer_service_env: held_out_users must be a DomainRandomizer"
            )
        train_users = randomizer
    users = {"train": train_users, "held_out": held_out_users}
    combined = {}
    for factor in FACTORS:
        options = list(train_users.options(factor))
        options += [o for o in held_out_users.options(factor) if o not in options]
        combined[factor] = tuple(options)
    for style in combined["style"]:
        fields = {f for _, f, _, _ in string.Formatter().parse(style) if f}
        if fields != {"order_id"}:
            raise ValueError(
                f"customer_service_env: every style must contain {{order_id}} and "
                f"no other placeholder, got {style!r}"
            )
    user_probs = {}
    for split, r in users.items():
        user_probs[split] = {}
        for factor in FACTORS:
            probs = np.zeros(len(combined[factor]))
            for option, p in zip(
                r.options(factor), r.option_probabilities(factor), strict=True
            ):
                probs[combined[factor].index(option)] = p
            user_probs[split][factor] = probs.astype(np.float32)

    template = tokenizer.chat_template
    start, end = template.start, template.end
    for marker in (start, end):
        if tokenizer.token_to_id(marker) is None:
            raise ValueError(
                f"customer_service_env: the chat marker {marker!r} is not a token "
                "of this tokenizer"
            )
    digit_ids = []
    for d in range(10):
        ids = tokenizer.encode(str(d))
        if len(ids) != 1:
            raise ValueError(
                f"customer_service_env: the digit {d} is {len(ids)} tokens in this "
                "tokenizer; the env needs single-token digits"
            )
        digit_ids.append(ids[0])
    command_ids = {code: tokenizer.encode(text) for code, text in _COMMANDS.items()}
    for code, text in _COMMANDS.items():
        if code == ASK:
            continue
        if tokenizer.encode(text + "1234") != command_ids[code] + [
            digit_ids[i] for i in (1, 2, 3, 4)
        ]:
            raise ValueError(
                f"customer_service_env: this tokenizer merges {text!r} with the "
                "digits that follow; the protocol needs them apart"
            )
    end_id = tokenizer.token_to_id(end)

    # Orders: distinct 4-digit ids; held-out rows are a random subset.
    rng = np.random.default_rng(seed)
    order_ids = rng.choice(np.arange(1000, 10000), num_orders, replace=False)
    delivered = rng.random(num_orders) < delivered_fraction
    days = rng.integers(1, 60, num_orders)
    amount = rng.integers(100, 1000, num_orders)
    rows = rng.permutation(num_orders)
    k = min(max(round(held_out_orders * num_orders), 1), num_orders - 1)
    split_orders = {"train": np.sort(rows[k:]), "held_out": np.sort(rows[:k])}

    # Prompts: every persona x topic pair, left-padded.
    pairs = [
        [
            tokenizer.encode(f"{start}user\n{p} {t}{end}\n{start}assistant\n")
            for t in combined["topic"]
        ]
        for p in combined["persona"]
    ]
    prompt_length = max(len(ids) for row in pairs for ids in row)
    prompt_tokens = np.full(
        (len(pairs), len(pairs[0]), prompt_length), tokenizer.pad_id, np.int32
    )
    prompt_mask = np.zeros_like(prompt_tokens)
    for i, row in enumerate(pairs):
        for j, ids in enumerate(row):
            prompt_tokens[i, j, prompt_length - len(ids) :] = ids
            prompt_mask[i, j, prompt_length - len(ids) :] = 1

    # Replies: one row per kind (none, error, tools, then each user style).
    replies = [([], [])]
    texts = [_TOOL_TEMPLATES[k] for k in (ERROR, DELIVERED, TRANSIT, NOT_FOUND)]
    texts += [("user", style) for style in combined["style"]]
    for role, content in texts:
        head = tokenizer.encode(f"\n{start}{role}\n")
        body, slots = _tokenize_template(tokenizer, content)
        tail = tokenizer.encode(f"{end}\n{start}assistant\n")
        replies.append(
            (head + body + tail, [-1] * len(head) + slots + [-1] * len(tail))
        )
    reply_tokens = max(len(ids) for ids, _ in replies)

    def stack(rows_, width):
        tokens = np.full((len(rows_), width), tokenizer.pad_id, np.int32)
        slots = np.full((len(rows_), width), -1, np.int32)
        for i, (ids, sl) in enumerate(rows_):
            tokens[i, : len(ids)] = ids
            slots[i, : len(ids)] = sl
        return tokens, slots, np.asarray([len(ids) for ids, _ in rows_], np.int32)

    commands = [([], [])]  # the expert's turns, by action code
    for code in (ASK, LOOKUP, REFUND, DENY):
        text = _COMMANDS[code] + ("" if code == ASK else "{order_id}")
        ids, slots = _tokenize_template(tokenizer, text)
        commands.append((ids + [end_id], slots + [-1]))
    tables = {"command_ids": command_ids}
    for name, rows_, width in (
        ("reply", replies, reply_tokens),
        ("command", commands, turn_tokens),
    ):
        t, s, n = stack(rows_, width)
        tables.update({f"{name}_tokens": t, f"{name}_slots": s, f"{name}_length": n})
    tables["prompt_tokens"], tables["prompt_mask"] = prompt_tokens, prompt_mask
    tables["digit_ids"] = np.asarray(digit_ids, np.int32)
    vocab = int(tokenizer.vocab_size)
    digit_value = np.full(vocab, -1, np.int32)
    digit_value[digit_ids] = np.arange(10)
    tables["digit_value"] = digit_value
    max_token_id = int(
        max(
            prompt_tokens.max(),
            tables["reply_tokens"].max(),
            tables["command_tokens"].max(),
            max(digit_ids),
            *tokenizer.stop_tokens,
        )
    )
    return TaskEnv(
        tokenizer=tokenizer,
        max_turns=max_turns,
        turn_tokens=turn_tokens,
        reply_tokens=reply_tokens,
        prompt_length=prompt_length,
        personas=combined["persona"],
        topics=combined["topic"],
        styles=combined["style"],
        users=users,
        user_probs=user_probs,
        order_ids=order_ids.astype(np.int32),
        delivered=delivered,
        days=days.astype(np.int32),
        amount=amount.astype(np.int32),
        split_orders=split_orders,
        tables=tables,
        stop_tokens=tuple(tokenizer.stop_tokens),
        pad_id=int(tokenizer.pad_id),
        max_token_id=max_token_id,
    )


# --- whole conversations --------------------------------------------------------


def _conversations(env, scenarios, prompt, turns, final_state, infos):
    """Assemble `Conversations` from per-turn arrays ``[T, B, ...]``."""
    agent_tokens, agent_mask, agent_logp, reply_tokens, reply_mask = turns
    t, b, n = agent_tokens.shape
    r = reply_tokens.shape[-1]
    zeros_r = jnp.zeros((t, b, r), jnp.float32)
    tokens = jnp.concatenate([agent_tokens, reply_tokens], -1)  # [T, B, N + R]
    mask = jnp.concatenate([agent_mask, reply_mask], -1)
    loss_mask = jnp.concatenate([agent_mask, jnp.zeros_like(reply_mask)], -1)
    logp = jnp.concatenate([agent_logp, zeros_r], -1)

    def flat(x):
        return jnp.moveaxis(x, 0, 1).reshape(b, t * (n + r))[:, : env.completion_length]

    # Packed: each row's real tokens first, in order, padding at the end (the
    # layout `lm.completion_logprobs` scores, which reads the previous column).
    order = jnp.argsort(1 - flat(mask), axis=-1, stable=True)

    def packed(x):
        return jnp.take_along_axis(flat(x), order, -1)

    return Conversations(
        scenarios=scenarios,
        prompt_tokens=prompt[0],
        prompt_mask=prompt[1],
        tokens=jnp.where(packed(mask) > 0, packed(tokens), env.pad_id),
        mask=packed(mask),
        loss_mask=packed(loss_mask),
        logprobs=packed(logp),
        agent_lengths=agent_mask.sum(-1).T,
        reply_lengths=reply_mask.sum(-1).T,
        actions=infos.action.T,
        args=infos.arg.T,
        reply_kinds=infos.reply_kind.T,
        rewards=infos.reward.sum(0),
        success=final_state.success,
        num_turns=final_state.turn,
        turn_rewards=infos.reward.T,
    )


def expert_conversations(env: TaskEnv, scenarios: Scenarios) -> Conversations:
    """The scripted expert's conversations (ask, look up, act by the rule): the
    SFT demonstrations, in the same token layout as the model's rollouts.
    Pure JAX (jit / vmap it)."""
    prompt = env.prompt(scenarios)

    def body(state, _):
        tokens, mask = env.expert_turn(state)
        state, reply_tokens, reply_mask, info = env.step(state, tokens, mask)
        logp = jnp.zeros(tokens.shape, jnp.float32)
        return state, ((tokens, mask, logp, reply_tokens, reply_mask), info)

    state, (turns, infos) = jax.lax.scan(
        body, env.reset(scenarios), None, env.max_turns
    )
    return _conversations(env, scenarios, prompt, turns, state, infos)


# --- host side: readable trajectories ---------------------------------------------


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def to_trajectories(
    env: TaskEnv, conversations: Conversations, held_out: bool | None = None
) -> list[MultiTurnTrajectory]:
    """One `MultiTurnTrajectory` per conversation: the user's first message,
    then each agent turn (metadata: the parsed ``action``, ``arg``, whether it
    was ``truncated`` -- no end-of-turn token within N --) and the env's reply
    (metadata: ``reply_kind``, ``tool_result`` for tool replies); the final
    reward is the success, the trajectory's metadata the order's record."""
    c = jax.tree.map(np.asarray, conversations)
    template = env.tokenizer.chat_template
    stops = set(env.stop_tokens)
    out = []
    for i in range(len(c.rewards)):
        order = int(c.scenarios.order[i])
        persona = env.personas[int(c.scenarios.persona[i])]
        topic = env.topics[int(c.scenarios.topic[i])]
        turns = [Turn("user", f"{persona} {topic}")]
        pos = 0
        for t in range(env.max_turns):
            a_len = int(c.agent_lengths[i, t])
            r_len = int(c.reply_lengths[i, t])
            if a_len == 0:
                break
            real = c.tokens[i, pos : pos + a_len]
            pos += a_len
            truncated = not any(int(x) in stops for x in real)
            content = [x for x in real if int(x) not in stops]
            action = int(c.actions[i, t])
            turns.append(
                Turn(
                    "assistant",
                    _decode(env.tokenizer, content),
                    metadata={
                        "action": ACTIONS[action],
                        "arg": int(c.args[i, t]) if c.args[i, t] >= 0 else None,
                        "truncated": truncated,
                    },
                )
            )
            kind = int(c.reply_kinds[i, t])
            if kind == NONE or r_len == 0:
                continue
            reply = c.tokens[i, pos : pos + r_len]
            pos += r_len
            text = env.tokenizer.decode([int(x) for x in reply])
            role = "user" if kind >= USER else "tool"
            head = f"\n{template.start}{role}\n"
            content_text = text[len(head) :].split(template.end)[0]
            name = REPLY_KINDS[min(kind, USER)]
            metadata = {"reply_kind": name}
            if role == "tool":
                metadata["tool_result"] = content_text
            turns.append(
                Turn(
                    role,
                    content_text,
                    name="lookup" if role == "tool" else None,
                    metadata=metadata,
                )
            )
        split = "held_out" if order in set(env.split_orders["held_out"]) else "train"
        out.append(
            MultiTurnTrajectory(
                turns=tuple(turns),
                scenario_id=f"order-{int(env.order_ids[order])}",
                final_reward=float(c.rewards[i]),
                metadata={
                    "order_id": int(env.order_ids[order]),
                    "delivered": bool(env.delivered[order]),
                    "days": int(env.days[order]),
                    "amount": int(env.amount[order]),
                    "correct_action": str(env.correct_action(np.asarray(order))),
                    "success": bool(c.success[i]),
                    "num_turns": int(c.num_turns[i]),
                    "orders": split
                    if held_out is None
                    else ("held_out" if held_out else "train"),
                    "style": env.styles[int(c.scenarios.style[i])],
                },
            )
        )
    return out
