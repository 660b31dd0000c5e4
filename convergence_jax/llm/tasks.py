"""Synthetic verifiable tasks for token-policy RL, generated and scored in JAX.

    from convergence_jax import lm, llm

    task = llm.tasks.addition(num_digits=3, tokenizer=lm.ByteTokenizer())
    batch = task.sample(key, 16)                 # prompts [16, P] left-padded
    out = lm.generate(key, params, config, batch.prompt_tokens, batch.prompt_mask,
                      max_new_tokens=8, num_samples=4, stop_tokens=task.stop_tokens)
    rewards = task.reward(out.tokens, out.mask, batch)   # [16, 4]
    sft = task.sft_batch(key, 16)                # prompt + answer, loss on answer

Each factory returns a `Task` of pure functions with static sizes, already
wrapped in `jax.jit` (and safe inside an outer jit / vmap / scan): ``sample`` and
``sft_batch`` (``batch_size`` static), ``reward`` and ``exact_match``, except for
`countdown`, whose verifier evaluates the expression on the host
(``task.host_only``; call it between compiled steps).

Tokens: the variable parts of a prompt (digits, letters) are emitted one token per
character, so every character of a task's alphabet must encode to a single token
of the tokenizer (checked when the task is built); fixed words (``prefix``, the
task's own lead and tail, ``suffix``) are encoded as whole strings, so a chat
template can be given as ``prefix``/``suffix``. Completions are parsed through a
table from token id to the characters it spells (any tokenizer: a token "168"
reads as three digits), up to the first stop token inside ``completion_mask``;
whitespace is ignored and any other character outside the task's alphabet counts as
a wrong character.

Rewards (``reward``, in ``[0, 1]``, 1 exactly when the answer is exact):

* addition: the fraction of sum digits right, aligned from the least significant
  digit, over ``max(len(completion), len(answer))`` digits;
* sorting, copy, reverse: the fraction of positions right, aligned from the left,
  over ``max(len(completion), len(answer))``;
* countdown (host): 1 if a valid expression (integers, ``+ - *``, parentheses,
  each given number used at most once) equals the target, else
  ``0.5 * max(0, 1 - |value - target| / target)`` for a valid expression, and 0
  for anything that does not parse or uses other numbers.

``exact_match`` is the 0/1 score. `reasoning_gym_task` bridges the procedural
generators and verifiers of the ``reasoning-gym`` package (host side, text).
"""

from __future__ import annotations

import ast
import functools
import math
import string
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

WHITESPACE = " \t\n\r"
_SKIP = -1  # an empty character slot (padding inside a token, or whitespace)


class TaskBatch(NamedTuple):
    """A batch of problems.

    ``prompt_tokens``/``prompt_mask``: ``[B, P]`` left-padded (what
    `convergence_jax.lm.generate` takes); ``answer_tokens``/``answer_mask``:
    ``[B, A]`` right-padded, the reference answer followed by the stop token;
    ``problem``: the task's own arrays (operands, numbers, target, ...).
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    answer_tokens: jax.Array
    answer_mask: jax.Array
    problem: Any


class SFTBatch(NamedTuple):
    """Prompt followed by answer, ``[B, P + A]``: ``tokens`` (left padding before
    the prompt, right padding after the answer), ``mask`` (attention mask, 1 on
    real tokens) and ``loss_mask`` (1 on the answer tokens and the stop token only).
    Token ``t`` predicts token ``t + 1``, so the loss on answer token ``t`` uses the
    logits at ``t - 1``."""

    tokens: jax.Array
    mask: jax.Array
    loss_mask: jax.Array


class Task(NamedTuple):
    """A verifiable task (see the module docstring for each reward).

    ``sample(key, batch_size) -> TaskBatch``; ``sft_batch(key, batch_size) ->
    SFTBatch``; ``reward(completions, completion_mask, batch)`` and
    ``exact_match(...)`` take completions ``[B, N]`` or ``[B, G, N]`` and return
    ``[B]`` or ``[B, G]`` float32; ``to_text(tokens, mask)`` decodes rows for
    humans; ``parse(completions, completion_mask)`` gives the completion text as
    the verifier reads it (host). ``host_only``: ``reward`` runs on the host.
    """

    name: str
    sample: Callable
    sft_batch: Callable
    reward: Callable
    exact_match: Callable
    to_text: Callable
    parse: Callable
    prompt_length: int
    answer_length: int
    stop_tokens: tuple[int, ...]
    host_only: bool


# --- token <-> character plumbing -------------------------------------------------


class _Vocab(NamedTuple):
    alphabet: str
    char_ids: np.ndarray  # [C] token id of each alphabet character
    table: np.ndarray  # [V, K] alphabet index per character of each token
    other: int  # index of "a character outside the alphabet"
    stop_id: int
    stop_tokens: tuple[int, ...]


def _token_text(tokenizer, i: int) -> str:
    try:
        return tokenizer.decode([i], skip_special_tokens=False)
    except Exception:  # ids a tokenizer cannot decode read as unknown
        return "\ufffd"


def _build_vocab(tokenizer, alphabet: str, stop_token, max_chars: int = 8) -> _Vocab:
    if tokenizer is None:
        raise ValueError("tokenizer is required (e.g. lm.ByteTokenizer())")
    char_ids = []
    for c in alphabet:
        ids = tokenizer.encode(c)
        if len(ids) != 1:
            raise ValueError(
                f"character {c!r} encodes to {len(ids)} tokens {ids}; every "
                f"character of the task alphabet {alphabet!r} must be one token"
            )
        if _token_text(tokenizer, ids[0]).strip(WHITESPACE) != c:
            raise ValueError(
                f"character {c!r} encodes to token {ids[0]}, which decodes to "
                f"{_token_text(tokenizer, ids[0])!r}: every character of the task "
                f"alphabet {alphabet!r} must be one token of its own"
            )
        char_ids.append(ids[0])
    if stop_token is None:
        stop_token = tokenizer.eos_id
    if stop_token is None:
        raise ValueError("the tokenizer has no eos token; pass stop_token=")
    stop_token = int(stop_token)
    stops = set(getattr(tokenizer, "stop_tokens", ())) | {stop_token}
    other = len(alphabet)
    index = {c: k for k, c in enumerate(alphabet)}
    texts = [_token_text(tokenizer, i) for i in range(tokenizer.vocab_size)]
    spelled = [[c for c in text if c not in WHITESPACE] for text in texts]
    width = max(
        [1]
        + [
            len(chars)
            for chars in spelled
            if len(chars) <= max_chars and all(c in index for c in chars)
        ]
    )
    table = np.full((len(texts), width), _SKIP, np.int32)
    for i, chars in enumerate(spelled):
        if not chars:
            continue
        if len(chars) > width or any(c not in index for c in chars):
            table[i, 0] = other  # one wrong character stands for the whole token
        else:
            table[i, : len(chars)] = [index[c] for c in chars]
    return _Vocab(
        alphabet, np.asarray(char_ids, np.int32), table, other, stop_token,
        tuple(sorted(stops)),
    )  # fmt: skip


def _compact(values: jax.Array, keep: jax.Array, fill, left: bool = True):
    """Move the kept entries of the last axis together, in order: to the front
    (``left``) or to the back; the rest become ``fill``. Returns (values, keep)."""
    keep = keep.astype(bool)
    order = jnp.argsort(keep if not left else ~keep, axis=-1, stable=True)
    values = jnp.take_along_axis(values, order, axis=-1)
    keep = jnp.take_along_axis(keep, order, axis=-1)
    return jnp.where(keep, values, fill), keep.astype(jnp.int32)


def _parse_chars(vocab: _Vocab, completions, completion_mask):
    """Completion ids ``[..., N]`` -> (alphabet indices ``[..., N * K]`` packed to
    the front, ``-1`` after; length ``[...]``), up to the first stop token."""
    completions = jnp.asarray(completions, jnp.int32)
    live = jnp.asarray(completion_mask) > 0
    is_stop = live & jnp.isin(completions, jnp.asarray(vocab.stop_tokens))
    before_stop = jnp.cumsum(is_stop, axis=-1) == 0
    content = live & before_stop
    table = jnp.asarray(vocab.table)
    inside = (completions >= 0) & (completions < table.shape[0])
    chars = table[jnp.clip(completions, 0, table.shape[0] - 1)]  # [..., N, K]
    unknown = jnp.full_like(chars, _SKIP).at[..., 0].set(vocab.other)
    chars = jnp.where(inside[..., None], chars, unknown)
    keep = content[..., None] & (chars != _SKIP)
    flat = chars.reshape(*chars.shape[:-2], -1)
    keep = keep.reshape(flat.shape)
    chars, keep = _compact(flat, keep, _SKIP)
    return chars, keep.sum(-1)


def _answer_chars(vocab: _Vocab, batch: TaskBatch):
    """The reference answer as alphabet indices ``[B, A]`` (stop token dropped)."""
    lookup = np.full(int(vocab.char_ids.max()) + 1, _SKIP, np.int32)
    lookup[vocab.char_ids] = np.arange(len(vocab.char_ids))
    tokens = jnp.asarray(batch.answer_tokens)
    chars = jnp.asarray(lookup)[jnp.clip(tokens, 0, lookup.shape[0] - 1)]
    keep = (jnp.asarray(batch.answer_mask) > 0) & (tokens != vocab.stop_id)
    chars = jnp.where(keep & (tokens < lookup.shape[0]), chars, _SKIP)
    return chars, keep.sum(-1)


def _broadcast_answer(answer, length, completions):
    """Answers ``[B, A]`` to the completions' leading shape ``[B]`` or ``[B, G]``."""
    lead = completions.shape[:-1]
    if completions.ndim not in (2, 3) or lead[0] != answer.shape[0]:
        raise ValueError(
            f"completions must be [B, N] or [B, G, N] with B={answer.shape[0]}, "
            f"got shape {completions.shape}"
        )
    if completions.ndim == 3:
        answer = jnp.broadcast_to(answer[:, None], (*lead, answer.shape[-1]))
        length = jnp.broadcast_to(length[:, None], lead)
    return answer, length


def _positional_score(parsed, parsed_len, answer, answer_len, from_right: bool):
    """(partial credit, exact) of one completion against one answer."""
    width = max(parsed.shape[-1], answer.shape[-1])
    parsed = jnp.pad(parsed, (0, width - parsed.shape[-1]), constant_values=_SKIP)
    answer = jnp.pad(answer, (0, width - answer.shape[-1]), constant_values=_SKIP)
    if from_right:  # right-align both strings, so units meet units
        parsed = jnp.roll(parsed, width - parsed_len)
        answer = jnp.roll(answer, width - answer_len)
    valid = answer != _SKIP
    matches = jnp.sum((parsed == answer) & valid)
    longest = jnp.maximum(jnp.maximum(parsed_len, answer_len), 1)
    exact = (parsed_len == answer_len) & (matches == answer_len)
    return (matches / longest).astype(jnp.float32), exact.astype(jnp.float32)


def _make_scorer(vocab: _Vocab, from_right: bool):
    score = jax.vmap(functools.partial(_positional_score, from_right=from_right))

    def both(completions, completion_mask, batch: TaskBatch):
        completions = jnp.asarray(completions)
        parsed, parsed_len = _parse_chars(vocab, completions, completion_mask)
        answer, answer_len = _answer_chars(vocab, batch)
        answer, answer_len = _broadcast_answer(answer, answer_len, completions)
        lead = completions.shape[:-1]
        flat = [
            x.reshape(-1, *x.shape[len(lead) :])
            for x in (parsed, parsed_len, answer, answer_len)
        ]
        partial, exact = score(*flat)
        return partial.reshape(lead), exact.reshape(lead)

    @jax.jit
    def reward(completions, completion_mask, batch):
        return both(completions, completion_mask, batch)[0]

    @jax.jit
    def exact_match(completions, completion_mask, batch):
        return both(completions, completion_mask, batch)[1]

    return reward, exact_match


# --- building prompts ---------------------------------------------------------


def _static(tokenizer, text: str, batch_size: int):
    ids = np.asarray(tokenizer.encode(text) if text else [], np.int32)
    tokens = jnp.broadcast_to(jnp.asarray(ids), (batch_size, ids.size))
    return tokens, jnp.ones_like(tokens, jnp.int32)


def _chars(vocab: _Vocab, indices, keep=None):
    """Alphabet indices ``[B, L]`` -> their token ids (and a keep mask)."""
    tokens = jnp.asarray(vocab.char_ids)[indices]
    keep = jnp.ones_like(tokens, jnp.int32) if keep is None else keep.astype(jnp.int32)
    return tokens, keep


def _pack(segments, pad_id: int, left: bool):
    tokens = jnp.concatenate([s[0] for s in segments], axis=-1)
    keep = jnp.concatenate([s[1] for s in segments], axis=-1)
    return _compact(tokens, keep, pad_id, left=left)


def _number_digits(x, width: int):
    """Integers ``[B]`` -> digits ``[B, width]`` (most significant first) and a mask
    that drops leading zeros (a zero keeps its one digit)."""
    powers = 10 ** jnp.arange(width - 1, -1, -1, dtype=jnp.int32)
    digits = (x[:, None] // powers) % 10
    return digits, _strip_leading_zeros(digits)


def _strip_leading_zeros(digits):
    seen = jnp.cumsum(digits != 0, axis=-1) > 0
    return seen.at[:, -1].set(True)


class _Builder(NamedTuple):
    vocab: _Vocab
    tokenizer: Any
    pad_id: int
    prompt_length: int
    answer_length: int


def _finish(
    name, builder: _Builder, problem_fn, reward, exact_match, parse=None,
    host_only=False,
):  # fmt: skip
    """``problem_fn(key, batch_size) -> (prompt segments, answer segments,
    problem)``; wraps it into a `Task`."""
    vocab, tokenizer, pad_id = builder.vocab, builder.tokenizer, builder.pad_id

    @functools.partial(jax.jit, static_argnums=1)
    def sample(key, batch_size: int) -> TaskBatch:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        prompt, answer, problem = problem_fn(key, batch_size)
        prompt_tokens, prompt_mask = _pack(prompt, pad_id, left=False)
        stop = jnp.full((batch_size, 1), vocab.stop_id, jnp.int32)
        answer_tokens, answer_mask = _pack(
            [*answer, (stop, jnp.ones_like(stop))], pad_id, left=True
        )
        return TaskBatch(
            prompt_tokens, prompt_mask, answer_tokens, answer_mask, problem
        )

    @functools.partial(jax.jit, static_argnums=1)
    def sft_batch(key, batch_size: int) -> SFTBatch:
        batch = sample(key, batch_size)
        tokens = jnp.concatenate([batch.prompt_tokens, batch.answer_tokens], axis=-1)
        mask = jnp.concatenate([batch.prompt_mask, batch.answer_mask], axis=-1)
        loss_mask = jnp.concatenate(
            [jnp.zeros_like(batch.prompt_mask), batch.answer_mask], axis=-1
        )
        return SFTBatch(tokens, mask, loss_mask)

    def to_text(tokens, mask=None) -> list[str]:
        tokens = np.asarray(tokens)
        flat = tokens.reshape(-1, tokens.shape[-1])
        m = None if mask is None else np.asarray(mask).reshape(flat.shape)
        return tokenizer.decode_batch(flat, m, skip_special_tokens=True)

    def parse_text(completions, completion_mask) -> list[str]:
        chars, length = _parse_chars(vocab, completions, completion_mask)
        chars, length = np.asarray(chars), np.asarray(length)
        flat = chars.reshape(-1, chars.shape[-1])
        alphabet = vocab.alphabet + "\ufffd"
        return [
            "".join(alphabet[c] for c in row[:n])
            for row, n in zip(flat, length.reshape(-1), strict=True)
        ]

    return Task(
        name=name,
        sample=sample,
        sft_batch=sft_batch,
        reward=reward,
        exact_match=exact_match,
        to_text=to_text,
        parse=parse or parse_text,
        prompt_length=builder.prompt_length,
        answer_length=builder.answer_length,
        stop_tokens=vocab.stop_tokens,
        host_only=host_only,
    )


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _setup(tokenizer, alphabet, stop_token, prefix, lead, tail, suffix, dynamic, ans):
    vocab = _build_vocab(tokenizer, alphabet, stop_token)
    fixed = len(tokenizer.encode(prefix + lead)) if prefix + lead else 0
    fixed += len(tokenizer.encode(tail + suffix)) if tail + suffix else 0
    return _Builder(vocab, tokenizer, int(tokenizer.pad_id), fixed + dynamic, ans + 1)


# --- the tasks ------------------------------------------------------------------


def addition(
    num_digits: int,
    tokenizer,
    prefix: str = "",
    suffix: str = "",
    stop_token: int | None = None,
) -> Task:
    """``"{a}+{b}="`` -> the digits of ``a + b`` then the stop token; ``a`` and
    ``b`` are uniform over ``[0, 10**num_digits)`` (written without leading zeros).
    Digits are drawn one by one, so any ``num_digits`` works. Partial credit: the
    fraction of digits right from the units up, over the longer string.
    ``problem``: ``(a_digits [B, n], b_digits [B, n], sum_digits [B, n + 1])``,
    most significant first."""
    n = _check_int("num_digits", num_digits, 1)
    builder = _setup(
        tokenizer, "0123456789+=", stop_token, prefix, "", "=", suffix, 2 * n + 1, n + 1
    )
    vocab = builder.vocab
    plus_index = vocab.alphabet.index("+")
    head, tail = prefix, "=" + suffix

    def problem_fn(key, batch_size):
        ka, kb = jax.random.split(key)
        a = jax.random.randint(ka, (batch_size, n), 0, 10, jnp.int32)
        b = jax.random.randint(kb, (batch_size, n), 0, 10, jnp.int32)

        def add(carry, digits):
            total = digits[0] + digits[1] + carry
            return total // 10, total % 10

        carry, low_first = jax.lax.scan(
            add, jnp.zeros(batch_size, jnp.int32), (a[:, ::-1].T, b[:, ::-1].T)
        )
        total = jnp.concatenate([carry[:, None], low_first.T[:, ::-1]], axis=-1)
        plus = jnp.full((batch_size, 1), plus_index, jnp.int32)
        prompt = [
            _static(tokenizer, head, batch_size),
            _chars(vocab, a, _strip_leading_zeros(a)),
            _chars(vocab, plus),
            _chars(vocab, b, _strip_leading_zeros(b)),
            _static(tokenizer, tail, batch_size),
        ]
        answer = [_chars(vocab, total, _strip_leading_zeros(total))]
        return prompt, answer, (a, b, total)

    reward, exact = _make_scorer(vocab, from_right=True)
    return _finish(f"addition_{n}", builder, problem_fn, reward, exact)


def sorting(
    length: int,
    tokenizer,
    prefix: str = "",
    suffix: str = "",
    stop_token: int | None = None,
) -> Task:
    """``"sort 3,1,2="`` -> ``"123"`` then the stop token: ``length`` digits drawn
    uniformly from 0-9 (repeats allowed), answered in ascending order without
    separators. Partial credit: the fraction of positions right, from the left,
    over the longer string. ``problem``: ``(digits [B, L], sorted [B, L])``."""
    n = _check_int("length", length, 1)
    builder = _setup(
        tokenizer, "0123456789,", stop_token, prefix, "sort ", "=", suffix, 2 * n - 1, n
    )
    vocab = builder.vocab
    comma = vocab.alphabet.index(",")

    def problem_fn(key, batch_size):
        digits = jax.random.randint(key, (batch_size, n), 0, 10, jnp.int32)
        listed = jnp.full((batch_size, 2 * n - 1), comma, jnp.int32)
        listed = listed.at[:, ::2].set(digits)
        ordered = jnp.sort(digits, axis=-1)
        prompt = [
            _static(tokenizer, prefix + "sort ", batch_size),
            _chars(vocab, listed),
            _static(tokenizer, "=" + suffix, batch_size),
        ]
        return prompt, [_chars(vocab, ordered)], (digits, ordered)

    reward, exact = _make_scorer(vocab, from_right=False)
    return _finish(f"sorting_{n}", builder, problem_fn, reward, exact)


def _string_task(kind: str, length, tokenizer, alphabet, prefix, suffix, stop_token):
    n = _check_int("length", length, 1)
    if not isinstance(alphabet, str) or len(alphabet) < 2:
        raise ValueError(f"alphabet must be a string of >= 2 characters: {alphabet!r}")
    if len(set(alphabet)) != len(alphabet) or set(alphabet) & set(WHITESPACE + "="):
        raise ValueError(
            f"alphabet must have distinct characters, no whitespace and no '=': "
            f"{alphabet!r}"
        )
    builder = _setup(
        tokenizer, alphabet, stop_token, prefix, kind + " ", "=", suffix, n, n
    )
    vocab = builder.vocab

    def problem_fn(key, batch_size):
        text = jax.random.randint(key, (batch_size, n), 0, len(alphabet), jnp.int32)
        target = text if kind == "copy" else text[:, ::-1]
        prompt = [
            _static(tokenizer, prefix + kind + " ", batch_size),
            _chars(vocab, text),
            _static(tokenizer, "=" + suffix, batch_size),
        ]
        return prompt, [_chars(vocab, target)], (text, target)

    reward, exact = _make_scorer(vocab, from_right=False)
    return _finish(f"{kind}_{n}", builder, problem_fn, reward, exact)


def copy(
    length: int,
    tokenizer,
    alphabet: str = string.ascii_lowercase,
    prefix: str = "",
    suffix: str = "",
    stop_token: int | None = None,
) -> Task:
    """``"copy abc="`` -> ``"abc"``: ``length`` characters uniform over
    ``alphabet``. Partial credit: positions right from the left over the longer
    string. ``problem``: ``(text [B, L], target [B, L])`` as alphabet indices."""
    return _string_task("copy", length, tokenizer, alphabet, prefix, suffix, stop_token)


def reverse(
    length: int,
    tokenizer,
    alphabet: str = string.ascii_lowercase,
    prefix: str = "",
    suffix: str = "",
    stop_token: int | None = None,
) -> Task:
    """``"reverse abc="`` -> ``"cba"``; otherwise as `copy`."""
    return _string_task(
        "reverse", length, tokenizer, alphabet, prefix, suffix, stop_token
    )


def countdown_score(text: str, numbers: Sequence[int], target: int) -> float:
    """Host verifier of one countdown answer (see the module docstring).

    ``text`` must be an arithmetic expression of non-negative integer literals,
    binary ``+ - *`` and parentheses (no unary minus, no ``/``), each literal one
    of ``numbers`` used at most as often as it is given.
    """
    text = "".join(c for c in text if c not in WHITESPACE)
    if not text or len(text) > 256:
        return 0.0
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return 0.0
    used: list[int] = []

    def evaluate(node):
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.BinOp) and isinstance(
            node.op, ast.Add | ast.Sub | ast.Mult
        ):
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            return left * right
        if (
            isinstance(node, ast.Constant)
            and type(node.value) is int
            and node.value >= 0
        ):
            used.append(node.value)
            return node.value
        raise ValueError("not allowed")

    try:
        value = evaluate(tree)
    except ValueError:
        return 0.0
    available = list(map(int, numbers))
    for x in used:
        if x not in available:
            return 0.0
        available.remove(x)
    target = int(target)
    if value == target:
        return 1.0
    return 0.5 * max(0.0, 1.0 - abs(value - target) / max(abs(target), 1))


def countdown(
    num_numbers: int,
    tokenizer,
    max_value: int = 20,
    prefix: str = "",
    suffix: str = "",
    stop_token: int | None = None,
) -> Task:
    """``"3,4,5,6 make 19="`` -> an expression of the numbers with ``+ - *`` equal
    to the target. ``num_numbers`` integers uniform over ``[1, max_value]``; the
    target is the value of a random left-to-right chain over all of them in a
    random order (``-`` only where the running value stays positive), so a solution
    always exists; the reference answer is that chain, e.g. ``"((4*5)-6)+3"``.
    The verifier runs on the host (`countdown_score`; ``task.host_only``):
    ``reward``/``exact_match`` take the same arguments as the other tasks but
    return NumPy arrays. ``problem``: ``(numbers [B, n] as shown, target [B])``.
    """
    n = _check_int("num_numbers", num_numbers, 2)
    top = _check_int("max_value", max_value, 1)
    if max(top, 2) ** n >= 2**31:
        raise ValueError(
            f"max_value**num_numbers = {top}**{n} overflows int32 targets; use "
            "fewer or smaller numbers"
        )
    width = len(str(top))
    target_width = len(str(max(top, 2) ** n))
    alphabet = "0123456789+-*(),"
    chain = (n - 2) + n * width + (n - 1) + (n - 2)  # parens, numbers, ops
    builder = _setup(
        tokenizer,
        alphabet,
        stop_token,
        prefix,
        "",
        "=",
        suffix,
        n * width + (n - 1) + target_width + len(tokenizer.encode(" make ")),
        chain,
    )
    vocab = builder.vocab
    index = {c: k for k, c in enumerate(alphabet)}
    op_index = jnp.asarray([index["+"], index["-"], index["*"]], jnp.int32)

    def problem_fn(key, batch_size):
        k_num, k_op, k_perm = jax.random.split(key, 3)
        values = jax.random.randint(k_num, (batch_size, n), 1, top + 1, jnp.int32)
        ops = jax.random.randint(k_op, (batch_size, n - 1), 0, 3, jnp.int32)

        def step(acc, inputs):
            x, op = inputs
            op = jnp.where((op == 1) & (acc - x <= 0), 0, op)
            acc = jnp.select([op == 0, op == 1], [acc + x, acc - x], acc * x)
            return acc, op

        target, ops = jax.lax.scan(step, values[:, 0], (values[:, 1:].T, ops.T))
        ops = ops.T
        shown = jax.random.permutation(k_perm, values, axis=1, independent=True)

        def number(x):
            return _chars(vocab, *_number_digits(x, width))

        comma = jnp.full((batch_size, 1), index[","], jnp.int32)
        prompt = [_static(tokenizer, prefix, batch_size)]
        for i in range(n):
            if i:
                prompt.append(_chars(vocab, comma))
            prompt.append(number(shown[:, i]))
        prompt += [
            _static(tokenizer, " make ", batch_size),
            _chars(vocab, *_number_digits(target, target_width)),
            _static(tokenizer, "=" + suffix, batch_size),
        ]

        def char(c):
            return _chars(vocab, jnp.full((batch_size, 1), index[c], jnp.int32))

        answer = [char("(") for _ in range(n - 2)] + [number(values[:, 0])]
        for i in range(1, n):
            answer += [_chars(vocab, op_index[ops[:, i - 1]][:, None])]
            answer += [number(values[:, i])]
            if i < n - 1:
                answer.append(char(")"))
        return prompt, answer, (shown, target)

    def parse_text(completions, completion_mask) -> list[str]:
        tokens = np.asarray(completions)
        mask = np.asarray(completion_mask) > 0
        flat, flat_mask = (
            tokens.reshape(-1, tokens.shape[-1]),
            mask.reshape(-1, tokens.shape[-1]),
        )
        stops = np.isin(flat, vocab.stop_tokens) & flat_mask
        content = flat_mask & (np.cumsum(stops, axis=-1) == 0)
        return [
            tokenizer.decode(row[m].tolist(), skip_special_tokens=True)
            for row, m in zip(flat, content, strict=True)
        ]

    def reward(completions, completion_mask, batch: TaskBatch) -> np.ndarray:
        lead = np.shape(completions)[:-1]
        if len(lead) not in (1, 2):
            raise ValueError(
                f"completions must be [B, N] or [B, G, N], got {np.shape(completions)}"
            )
        numbers, target = (np.asarray(x) for x in batch.problem)
        if lead[0] != numbers.shape[0]:
            raise ValueError(f"completions have B={lead[0]}, batch {numbers.shape[0]}")
        group = 1 if len(lead) == 1 else lead[1]
        texts = parse_text(completions, completion_mask)
        scores = [
            countdown_score(t, numbers[i // group], target[i // group])
            for i, t in enumerate(texts)
        ]
        return np.asarray(scores, np.float32).reshape(lead)

    def exact_match(completions, completion_mask, batch: TaskBatch) -> np.ndarray:
        return (reward(completions, completion_mask, batch) == 1.0).astype(np.float32)

    return _finish(
        f"countdown_{n}", builder, problem_fn, reward, exact_match, parse_text,
        host_only=True,
    )  # fmt: skip


TASKS = {
    "addition": addition,
    "sorting": sorting,
    "copy": copy,
    "reverse": reverse,
    "countdown": countdown,
}


# --- reasoning-gym bridge ---------------------------------------------------------


class TextTask(NamedTuple):
    """A host-side text task from ``reasoning-gym``.

    ``entries``: the ``size`` generated entries (dicts with ``question``,
    ``answer``, ``metadata``); ``batch(start, batch_size) -> (prompts, entries)``
    cycles through them; ``reward(completions: list[str], entries) -> [B]`` float32
    scores from the dataset's own ``score_answer``.
    """

    name: str
    entries: list
    batch: Callable
    reward: Callable
    items: Callable


def reasoning_gym_task(name: str, size: int, seed: int, **config) -> TextTask:
    """Wrap ``reasoning_gym.create_dataset(name, size=size, seed=seed, **config)``.

    Only procedural generators should be used here (most of reasoning-gym's are;
    they need no download). ``items()`` yields ``(prompt text, entry)``;
    tokenize the prompts with ``tokenizer.encode_batch`` (or the chat template).
    """
    _check_int("size", size, 1)
    _check_int("seed", seed, 0)
    try:
        import reasoning_gym
    except ImportError as error:  # optional dependency
        raise ImportError(
            "reasoning_gym_task needs the reasoning-gym package: "
            "pip install reasoning-gym"
        ) from error
    dataset = reasoning_gym.create_dataset(name, size=size, seed=seed, **config)
    entries = [dataset[i] for i in range(size)]

    def items():
        for entry in entries:
            yield entry["question"], entry

    def batch(start: int, batch_size: int):
        _check_int("batch_size", batch_size, 1)
        chosen = [entries[(start + i) % size] for i in range(batch_size)]
        return [e["question"] for e in chosen], chosen

    def reward(completions: Sequence[str], chosen: Sequence[dict]) -> np.ndarray:
        if len(completions) != len(chosen):
            raise ValueError(
                f"{len(completions)} completions for {len(chosen)} entries"
            )
        scores = []
        for text, entry in zip(completions, chosen, strict=True):
            score = dataset.score_answer(text.strip(), entry=entry)
            scores.append(0.0 if score is None or math.isnan(score) else score)
        return np.asarray(scores, np.float32)

    return TextTask(name, entries, batch, reward, items)
