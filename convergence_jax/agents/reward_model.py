"""A neural reward model: our transformer with a scalar head, trained with the
Bradley–Terry loss on preference pairs.

    from convergence_jax import agents, lm, llm

    tokenizer = lm.ByteTokenizer()
    train = agents.synthetic_preference_pairs(jax.random.key(0), 2048, tokenizer)
    held_out = agents.synthetic_preference_pairs(jax.random.key(1), 512, tokenizer)
    trainer = agents.make_reward_model_trainer(config, batch_size=32)
    keys = jnp.stack([jax.random.key(seed) for seed in range(3)])
    state = jax.vmap(trainer.init)(keys)
    state, metrics = jax.jit(jax.vmap(
        lambda s: trainer.run(s, hparams, train.data, 400)))(state)
    scores = jax.vmap(lambda p: trainer.evaluate(p, held_out.data))(state.params)

The reward model is the trunk of `convergence_jax.lm.Transformer` (its
``output_hidden=True`` form: the final-normed hidden states, no ``lm_head``) and a
linear head ``hidden -> 1`` read at the **last real token** of each sequence (the
InstructGPT reward model reads the final token the same way). Rows may be
left-padded, as `convergence_jax.lm.pad_batch` and ``tokenizer.encode_batch`` do
by default, or right-padded: the mask finds the last real token either way, and
positions count real tokens only, so the score of a sequence does not depend on
its padding.

Training (`make_reward_model_trainer`) is one compiled program in the house
style of `convergence_jax.llm.make_sft`: AdamW with global-norm clipping, every
number in a traced `convergence_jax.llm.SFTHParams` (the same fields and
schedule), so a `jax.vmap` over seeds and learning rates compiles once; each
update draws ``batch_size`` distinct pairs of a fixed `PreferenceData` set from
``fold_in(state.key, state.step)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from convergence_jax.llm.sft import SFTHParams, adamw_update
from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.model import Transformer, check_params, init_params
from convergence_jax.lm.tokenizer import pad_batch

# --- the model ----------------------------------------------------------------


def init_reward_model(key: jax.Array, config: LMConfig, params=None) -> dict:
    """Reward-model parameters ``{"trunk": ..., "head": {"kernel" [H, 1],
    "bias" [1]}}``.

    ``params``: language-model parameters of ``config`` (``lm_head``, if any, is
    dropped: the trunk starts from the policy, as InstructGPT's reward model
    starts from the SFT model) or None for a random trunk from ``key``. The head
    starts at zero, so every score is 0 and the Bradley–Terry loss is ``ln 2``
    before the first update. Raises ``ValueError`` when ``params`` do not match
    ``config``.
    """
    if not isinstance(config, LMConfig):
        raise ValueError(f"config must be an LMConfig, got {type(config).__name__}")
    if params is None:
        params = init_params(key, config)
    trunk = {k: v for k, v in params.items() if k != "lm_head"}
    check_params(config, trunk, exclude=("lm_head",))
    head = {
        "kernel": jnp.zeros((config.hidden_size, 1), jnp.float32),
        "bias": jnp.zeros((1,), jnp.float32),
    }
    return {"trunk": jax.tree.map(jnp.asarray, trunk), "head": head}


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index ``[B]`` of the last nonzero entry of each row of ``mask [B, T]``
    (left- or right-padded; 0 for a row without real tokens)."""
    chex.assert_rank(mask, 2)
    T = mask.shape[1]
    live = (mask > 0)[:, ::-1]
    return jnp.where(live.any(axis=-1), T - 1 - jnp.argmax(live, axis=-1), 0)


@functools.partial(jax.jit, static_argnums=1)
def reward_scores(rm_params, config: LMConfig, tokens, mask) -> jax.Array:
    """Scalar rewards ``[B]`` of ``tokens [B, T]`` (``mask`` 1 for real tokens).

    ``r = h_last @ kernel + bias`` with ``h_last`` the trunk's final-normed
    hidden state at the last real token of each row (see `last_token_index`);
    left- and right-padded rows give the same score as the unpadded sequence.
    Jitted, ``config`` static.
    """
    chex.assert_rank([tokens, mask], 2)
    chex.assert_equal_shape([tokens, mask])
    hidden, _ = Transformer(config, output_hidden=True).apply(
        {"params": rm_params["trunk"]}, tokens, mask
    )
    last = last_token_index(mask)
    pooled = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    head = rm_params["head"]
    return (pooled @ head["kernel"])[:, 0] + head["bias"][0]


# --- the loss -----------------------------------------------------------------


def bradley_terry_loss(
    chosen_scores: jax.Array, rejected_scores: jax.Array, margin=None
) -> tuple[jax.Array, dict]:
    """The Bradley–Terry negative log-likelihood of preference pairs.

    Bradley & Terry (1952), "Rank Analysis of Incomplete Block Designs: I. The
    Method of Paired Comparisons": ``P(chosen > rejected) = sigmoid(r_c - r_r)``.
    As a reward-model loss (Ouyang et al., 2022, "Training language models to
    follow instructions with human feedback", InstructGPT, eq. 1), over ``B``
    pairs with scores ``r_c, r_r [B]`` and an optional ``margin m`` (scalar or
    ``[B]``; Llama 2's margin loss, Touvron et al. 2023):

        loss = -mean_b log sigmoid(r_c[b] - r_r[b] - m[b])

    computed as ``softplus(-(r_c - r_r - m))`` (stable for large differences).
    Equal scores and no margin give ``ln 2``.

    Returns ``(loss, metrics)``; metrics: ``accuracy`` (fraction of pairs with
    ``r_c > r_r``, ties count as wrong), ``margin`` (mean ``r_c - r_r``),
    ``chosen_score`` and ``rejected_score`` (means).
    """
    chex.assert_rank([chosen_scores, rejected_scores], 1)
    chex.assert_equal_shape([chosen_scores, rejected_scores])
    diff = chosen_scores - rejected_scores
    if margin is not None:
        margin = jnp.asarray(margin, diff.dtype)
        if margin.ndim not in (0, 1):
            raise ValueError(
                f"margin must be a scalar or [B], got shape {margin.shape}"
            )
        if margin.ndim == 1:
            chex.assert_equal_shape([margin, diff])
        shifted = diff - margin
    else:
        shifted = diff
    loss = jax.nn.softplus(-shifted).mean()
    metrics = {
        "accuracy": (diff > 0).astype(jnp.float32).mean(),
        "margin": diff.mean(),
        "chosen_score": chosen_scores.mean(),
        "rejected_score": rejected_scores.mean(),
    }
    return loss, metrics


# --- data ---------------------------------------------------------------------


class PreferenceData(NamedTuple):
    """Preference pairs as padded arrays, all ``[N, T]`` int32 (mask 1 for real
    tokens). Row ``i`` of ``chosen`` is preferred to row ``i`` of ``rejected``;
    each row is the whole sequence scored (prompt and reply)."""

    chosen_tokens: jax.Array
    chosen_mask: jax.Array
    rejected_tokens: jax.Array
    rejected_mask: jax.Array


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_preference_data(config: LMConfig, data: PreferenceData) -> int:
    """Raise ``ValueError`` for arrays that are not ``[N, T]`` of one shape,
    sequences longer than ``config.max_position_embeddings``, or (when the
    arrays are concrete) token ids outside ``[0, config.vocab_size)`` or rows
    without real tokens. Returns ``N``."""
    if not isinstance(data, PreferenceData):
        raise ValueError(f"data must be a PreferenceData, got {type(data).__name__}")
    shapes = {name: np.shape(value) for name, value in data._asdict().items()}
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise ValueError(f"data.{name} must be [N, T], got shape {shape}")
    if len(set(shapes.values())) != 1:
        raise ValueError(
            "chosen and rejected tokens and masks must have one shape [N, T], got "
            + ", ".join(f"{k} {v}" for k, v in shapes.items())
        )
    n, t = shapes["chosen_tokens"]
    if n < 1:
        raise ValueError("data holds no preference pairs")
    if t > config.max_position_embeddings:
        raise ValueError(
            f"sequences of {t} tokens exceed LMConfig.max_position_embeddings "
            f"({config.max_position_embeddings})"
        )
    for side in ("chosen", "rejected"):
        tokens = getattr(data, f"{side}_tokens")
        mask = getattr(data, f"{side}_mask")
        if not (_is_concrete(tokens) and _is_concrete(mask)):
            continue
        tokens, mask = np.asarray(tokens), np.asarray(mask)
        used = tokens[mask > 0]
        if used.size and (used.min() < 0 or used.max() >= config.vocab_size):
            high = used.max() >= config.vocab_size
            bad = int(used.max()) if high else int(used.min())
            raise ValueError(
                f"{side} tokens hold id {bad}, outside the model's vocabulary "
                f"[0, {config.vocab_size}) (LMConfig.vocab_size): does the "
                "tokenizer match the model?"
            )
        empty = np.flatnonzero(~(mask > 0).any(axis=-1))
        if empty.size:
            raise ValueError(
                f"{side} rows {empty[:8].tolist()} have no real tokens (mask all 0)"
            )
    return int(n)


# --- the program --------------------------------------------------------------


@struct.dataclass
class RewardModelState:
    """Everything a reward-model run needs to continue."""

    params: Any
    """``{"trunk", "head"}`` (see `init_reward_model`)."""
    opt_state: Any
    key: jax.Array
    """Typed key of the minibatch stream; update ``i`` draws from
    ``fold_in(key, i)``."""
    step: jax.Array
    """Updates done so far (int32)."""


class RewardModelTrainer(NamedTuple):
    """The pure functions of a reward-model run (see the module docstring)."""

    model_config: LMConfig
    batch_size: int
    default_hparams: SFTHParams
    init: Callable[..., RewardModelState]
    """``init(key, params=None) -> RewardModelState``: ``params`` are LM
    parameters of the config (the trunk's start) or None (random)."""
    step: Callable[..., tuple[RewardModelState, dict]]
    """``step(state, hparams, data) -> (state, metrics)``: one AdamW update on
    ``batch_size`` distinct pairs of ``data``."""
    run: Callable[..., tuple[RewardModelState, dict]]
    """``run(state, hparams, data, num_steps) -> (state, metrics [num_steps])``:
    ``num_steps`` (static) updates as one `lax.scan`."""
    evaluate: Callable[..., dict]
    """``evaluate(params, data) -> {"accuracy", "loss", "margin", ...}`` over
    every pair of ``data`` (no margin)."""
    loss: Callable[..., tuple[jax.Array, dict]]
    """``loss(params, chosen_tokens, chosen_mask, rejected_tokens, rejected_mask)
    -> (loss, metrics)``."""


def make_reward_model_trainer(
    config: LMConfig,
    *,
    batch_size: int,
    hparams: SFTHParams | None = None,
) -> RewardModelTrainer:
    """The Bradley–Terry training program of a reward model of ``config``.

    Args:
        config: the trunk's shape (static).
        batch_size: preference pairs per update (static; both sequences of a
            pair go through the trunk in one ``[2 * batch_size, T]`` pass).
        hparams: the default `convergence_jax.llm.SFTHParams` (AdamW step size,
            weight decay, warmup, cosine decay, clipping) when ``step`` / ``run``
            get None.

    ``run`` and ``evaluate`` raise ``ValueError`` before compiling when ``data``
    fails `check_preference_data` or holds fewer than ``batch_size`` pairs.
    """
    if not isinstance(config, LMConfig):
        raise ValueError(f"config must be an LMConfig, got {type(config).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size must be an int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    default_hparams = SFTHParams.create() if hparams is None else hparams
    moments = optax.scale_by_adam()

    def loss(params, chosen_tokens, chosen_mask, rejected_tokens, rejected_mask):
        tokens = jnp.concatenate([chosen_tokens, rejected_tokens], axis=0)
        mask = jnp.concatenate([chosen_mask, rejected_mask], axis=0)
        scores = reward_scores(params, config, tokens, mask)
        chosen, rejected = jnp.split(scores, 2)
        return bradley_terry_loss(chosen, rejected)

    def check(data: PreferenceData) -> None:
        n = check_preference_data(config, data)
        if batch_size > n:
            raise ValueError(
                f"batch_size ({batch_size}) exceeds the {n} preference pairs of data"
            )

    def init(key: jax.Array, params=None) -> RewardModelState:
        k_params, k_data = jax.random.split(key)
        rm_params = init_reward_model(k_params, config, params)
        return RewardModelState(
            params=rm_params,
            opt_state=moments.init(rm_params),
            key=k_data,
            step=jnp.zeros((), jnp.int32),
        )

    def _step(state: RewardModelState, hparams: SFTHParams, data: PreferenceData):
        n = data.chosen_tokens.shape[0]
        key = jax.random.fold_in(state.key, state.step)
        idx = jax.random.choice(key, n, (batch_size,), replace=False)
        batch = [jnp.take(x, idx, axis=0) for x in data]
        (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(
            state.params, *batch
        )
        params, opt_state, grad_norm, lr = adamw_update(
            moments, grads, state.opt_state, state.params, state.step, hparams
        )
        metrics = {
            **metrics,
            "loss": value,
            "grad_norm": grad_norm,
            "learning_rate": lr,
        }
        state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return state, metrics

    def step(state, hparams: SFTHParams | None, data: PreferenceData):
        check(data)
        hparams = default_hparams if hparams is None else hparams
        return _step(state, hparams, data)

    def run(state, hparams: SFTHParams | None, data: PreferenceData, num_steps: int):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
            raise ValueError(f"run: num_steps must be an int, got {num_steps!r}")
        if num_steps < 0:
            raise ValueError(f"run: num_steps must be >= 0, got {num_steps}")
        check(data)
        hparams = default_hparams if hparams is None else hparams
        return jax.lax.scan(
            lambda s, _: _step(s, hparams, data), state, None, int(num_steps)
        )

    def evaluate(params, data: PreferenceData) -> dict:
        check_preference_data(config, data)
        value, metrics = loss(params, *data)
        return {**metrics, "loss": value}

    return RewardModelTrainer(
        model_config=config,
        batch_size=batch_size,
        default_hparams=default_hparams,
        init=init,
        step=step,
        run=run,
        evaluate=evaluate,
        loss=loss,
    )


# --- a synthetic preference task ----------------------------------------------

STATUSES = ("shipped", "delayed", "pending", "arrived")
"""Order statuses of `synthetic_preference_pairs` (all 7 characters)."""
NAMES = ("Ana", "Ben", "Cruz", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "June")
POLITE_OPENERS = ("Hi {name}!", "Thanks, {name}.", "Hello {name},", "Sure, {name}.")
RUDE_OPENERS = ("Ugh, {name}.", "Look {name},", "Fine, {name}.", "Again, {name}?")
POLITE_CLOSERS = ("Happy to help.", "Anything else?", "Have a nice day.", "Thank you!")
RUDE_CLOSERS = ("Stop asking.", "Not my problem.", "Go away now.", "Read emails!")
NON_ANSWERS = ("No news on {order_id} yet.", "I can't look up {order_id}.")
REJECTION_KINDS = ("rude", "no_answer", "rude_and_wrong", "wrong_status")
"""Every kind of rejected reply `synthetic_preference_pairs` can draw."""
DEFAULT_KINDS = ("rude", "no_answer", "rude_and_wrong")
"""The kinds drawn by default: ``"wrong_status"`` (a one-word difference to check
against the prompt) is left out, as a 2-layer width-32 model learns it in some
seeds only (400 steps of batch 32 on 2048 ``"wrong_status"`` pairs: held-out
accuracy 53% for seed 0, 98.6% for seed 1)."""


class SyntheticPreferences(NamedTuple):
    """The pairs as arrays (``data``) and as text."""

    data: PreferenceData
    prompts: list[str]
    chosen: list[str]
    """Full texts scored (prompt + reply)."""
    rejected: list[str]
    kinds: list[str]
    """Why each rejected reply loses: one of `REJECTION_KINDS`."""


def _prompt(order_id: str, status: str, name: str) -> str:
    return f"Order {order_id}: {status}.\n{name}: Where is {order_id}?\nAgent: "


def _reply(polite: bool, order_id: str, status: str | None, name: str, rng) -> str:
    openers = POLITE_OPENERS if polite else RUDE_OPENERS
    closers = POLITE_CLOSERS if polite else RUDE_CLOSERS
    opener = openers[rng.integers(len(openers))].format(name=name)
    closer = closers[rng.integers(len(closers))]
    if status is None:
        answer = NON_ANSWERS[rng.integers(len(NON_ANSWERS))].format(order_id=order_id)
    else:
        answer = f"Order {order_id} is {status}."
    return f"{opener} {answer} {closer}"


def synthetic_preference_pairs(
    key: jax.Array,
    num_pairs: int,
    tokenizer,
    *,
    length: int | None = None,
    side: str = "left",
    kinds: Sequence[str] = DEFAULT_KINDS,
) -> SyntheticPreferences:
    """Customer-service reply pairs whose preference is read from the text.

    Each pair shares one prompt built from a random 4-digit order id, a status
    from `STATUSES` and a customer name from `NAMES`::

        Order 4821: delayed.
        Ana: Where is 4821?
        Agent: <reply>

    and a reply ``"<opener> <answer> <closer>"``. The **chosen** reply is
    polite (an opener from `POLITE_OPENERS`, a closer from `POLITE_CLOSERS`) and
    answers ``"Order 4821 is <status>."`` with the status of the prompt's first
    line. The **rejected** reply, of a kind drawn uniformly from ``kinds``
    (default `DEFAULT_KINDS`), is

    - ``"rude"``: the right status, but a rude opener and closer
      (`RUDE_OPENERS`, `RUDE_CLOSERS`);
    - ``"no_answer"``: polite, but no status (one of `NON_ANSWERS`);
    - ``"rude_and_wrong"``: rude, and another status than the prompt's;
    - ``"wrong_status"`` (not drawn by default): polite, but another status.

    Every template draws its own opener and closer, every status has 7
    characters and the polite, rude and non-answer phrase sets have
    overlapping lengths, so length alone does not tell the two apart (the
    chosen text is longer in about
    half the pairs); ``"wrong_status"`` pairs differ in one word only, which must
    be compared with the prompt. Draws are a deterministic function of ``key``
    (NumPy's generator seeded from it), so pairs from another key are held out
    (a 4-digit id, name, status and template combination can still repeat by
    chance).

    Returns `SyntheticPreferences`: ``data`` padded by ``tokenizer.encode_batch``
    to ``length`` (default: the longest text) on ``side`` (``"left"`` as
    `convergence_jax.lm.pad_batch`), and the texts.
    """
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, int | np.integer):
        raise ValueError(f"num_pairs must be an int, got {num_pairs!r}")
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in REJECTION_KINDS]
    if not kinds or unknown:
        raise ValueError(
            f"kinds must be a non-empty subset of {REJECTION_KINDS}, got {kinds}"
        )
    seed = np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel().tolist()
    rng = np.random.default_rng(seed)
    prompts, chosen, rejected, why = [], [], [], []
    for _ in range(int(num_pairs)):
        order_id = f"{rng.integers(1000, 10000)}"
        status_index = int(rng.integers(len(STATUSES)))
        status = STATUSES[status_index]
        name = NAMES[rng.integers(len(NAMES))]
        kind = kinds[rng.integers(len(kinds))]
        prompt = _prompt(order_id, status, name)
        wrong = STATUSES[
            (status_index + 1 + int(rng.integers(len(STATUSES) - 1))) % len(STATUSES)
        ]
        bad_status = {"rude": status, "no_answer": None}.get(kind, wrong)
        polite = kind in ("no_answer", "wrong_status")
        prompts.append(prompt)
        chosen.append(prompt + _reply(True, order_id, status, name, rng))
        rejected.append(prompt + _reply(polite, order_id, bad_status, name, rng))
        why.append(kind)
    data = preference_data_from_texts(
        chosen, rejected, tokenizer, length=length, side=side
    )
    return SyntheticPreferences(data, prompts, chosen, rejected, why)


def preference_data_from_texts(
    chosen: Sequence[str],
    rejected: Sequence[str],
    tokenizer,
    *,
    length: int | None = None,
    side: str = "left",
) -> PreferenceData:
    """`PreferenceData` of text pairs (``chosen[i]`` preferred to
    ``rejected[i]``), tokenized by ``tokenizer.encode`` and padded with
    `convergence_jax.lm.pad_batch` to ``length`` (default: the longest)."""
    if len(chosen) != len(rejected):
        raise ValueError(
            f"chosen has {len(chosen)} texts and rejected {len(rejected)}; "
            "pairs need one of each"
        )
    if not chosen:
        raise ValueError("no preference pairs given")
    ids = [tokenizer.encode(t) for t in list(chosen) + list(rejected)]
    if length is None:
        length = max(len(i) for i in ids)
    tokens, mask = pad_batch(ids, tokenizer.pad_id, length, side)
    n = len(chosen)
    return PreferenceData(
        chosen_tokens=jnp.asarray(tokens[:n]),
        chosen_mask=jnp.asarray(mask[:n]),
        rejected_tokens=jnp.asarray(tokens[n:]),
        rejected_mask=jnp.asarray(mask[n:]),
    )


__all__ = [
    "NAMES",
    "POLITE_CLOSERS",
    "POLITE_OPENERS",
    "DEFAULT_KINDS",
    "NON_ANSWERS",
    "REJECTION_KINDS",
    "RUDE_CLOSERS",
    "RUDE_OPENERS",
    "STATUSES",
    "PreferenceData",
    "RewardModelState",
    "RewardModelTrainer",
    "SyntheticPreferences",
    "bradley_terry_loss",
    "check_preference_data",
    "init_reward_model",
    "last_token_index",
    "make_reward_model_trainer",
    "preference_data_from_texts",
    "reward_scores",
    "synthetic_preference_pairs",
]
