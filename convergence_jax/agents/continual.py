"""Continual learning: train on a schedule of tasks without forgetting the earlier
ones — experience replay, Learning without Forgetting (LwF) and Elastic Weight
Consolidation (EWC) on the SFT loss, one compiled program.

    from convergence_jax import lm, llm
    from convergence_jax.agents import continual

    tokenizer = lm.ByteTokenizer()
    task_a = llm.tasks.sorting(4, tokenizer)
    task_b = llm.tasks.reverse(4, tokenizer, alphabet="abcdefgh")
    program = continual.make_continual(
        config, [task_a, task_b], [(0, 800), (1, 400)], method="ewc",
        batch_size=32)
    hparams = continual.ContinualHParams.create(ewc_lambda=100.0)
    keys = jnp.stack([jax.random.key(seed) for seed in range(3)])
    state = jax.vmap(program.init)(keys)
    state, metrics, ends = jax.jit(jax.vmap(
        lambda s: program.run(s, hparams)))(state)
    # ends[p]: the parameters at the end of phase p (seeds stacked)

The pieces (pure, safe under jit / vmap / scan):

* **Schedule** — a list of ``(task_index, steps)`` phases (`make_schedule`):
  ``[(0, N)]`` then ``[(1, M)]`` is "task A for N steps, then task B for M".
  `task_at` maps a global step to its task; the *switch* into phase ``p > 0``
  freezes the parameters ``theta*`` (the LwF teacher and the EWC anchor) and, for
  EWC, adds the Fisher of the task just left.
* **Data sources** — `task_source` (an ``llm.tasks`` task: an endless stream of
  ``sft_batch`` problems) or `dataset_source` (a fixed set of rows, e.g.
  ``agents.tokenize_trajectories`` of `MultiTurnTrajectory` lists, sampled
  uniformly with replacement). Every source is right-padded to the program's
  common length ``seq_len``; positions count real tokens only
  (`lm.positions_from_mask`), so the padding changes no logit.
* **Replay** — `ReplayBuffer`, a pytree of one fixed-capacity ring per task
  (`replay_init`, `replay_add`, `replay_sample`). Every training batch is written
  to its task's ring; with ``method="replay"`` a fraction ``replay_ratio`` of the
  rows of each batch (``round(ratio * batch_size)``, traced) is drawn from the
  rings of the *earlier* tasks of the schedule (`mix_batches`): ``balanced=True``
  first picks an earlier task uniformly, then a stored row of it uniformly;
  ``balanced=False`` picks uniformly over every stored row of the earlier tasks
  (so a task that was trained longer, up to the capacity, is drawn more).
* **LwF** (Li & Hoiem, 2016, "Learning without Forgetting") — on the new task's
  batch, at every trained token ``t`` (``loss_mask[t + 1] = 1``, the positions the
  SFT loss scores), the KL from the policy frozen at the switch to the current
  one, at temperature ``T``:

      L_lwf = beta * T**2 * sum_t w_t KL(p*_T(.|x_<=t) || p_T(.|x_<=t)) / sum_t w_t

  with ``p_T = softmax(logits / T)`` and ``p*`` the frozen policy: the forward
  KL ``sum_v p*_v (log p*_v - log p_v)``, i.e. the distillation cross-entropy of
  Li & Hoiem less the teacher's entropy (a constant), so the same gradient;
  ``T**2`` keeps the gradient scale of Hinton et al. (2015) across temperatures.
  ``lwf_targets="frozen"`` takes the KL on the frozen policy's *own*
  continuations of the new task's inputs instead (`frozen_rollout`: the prompt
  kept, each trained token drawn from ``p*`` given the drawn ones before it, up
  to its stop token; a fresh draw every step):

      y_n ~ p*(. | x_n),  c_nt = (x_n, y_n,<t),
      L_lwf = beta * T**2 * sum_nt w_nt KL(p*_T(.|c_nt) || p_T(.|c_nt)) / sum w

  (``w_nt``: the drawn tokens) — at ``T = 1``, a one-sample estimate of the
  sequence-level KL ``KL(p*(Y|x) || p(Y|x))`` per token (the sequence-level
  distillation of Kim & Rush, 2016, with the teacher's soft targets). Either
  way LwF sees the new task's inputs only, never the old task's data (that
  would be replay). With one output head shared by both tasks, the
  teacher-forced form asks, at B's answer positions, for the old answer and
  B's answer at once; the rollout form asks for the old behaviour on the
  contexts the frozen policy itself produces.
  Li & Hoiem keep the old task's *head* outputs on the new data; a language
  model has one head, and what names the old task is its prompt format.
  ``lwf_rows=template_rows(...)`` takes the KL (rollout form) on the new task's
  inputs written in the old task's format (a reverse problem ``faaf`` as
  ``"sort f,a,a,f="``), answered by the frozen policy: no row of the old task
  is stored or drawn, but the old task's template (its identity, which a
  separate head would give) is used.
* **EWC** (Kirkpatrick et al., 2017, "Overcoming catastrophic forgetting in
  neural networks") — the diagonal Fisher at the switch,

      F_i = mean_n (d/d theta_i log p(y_n | x_n))**2,

  over ``fisher_examples`` rows of the task just left, with ``log p(y_n|x_n)``
  the sum over the row's trained tokens of the log-likelihood of the targets:
  ``fisher_targets="data"`` (the default) takes **the data's targets** (the
  "empirical Fisher", deterministic), ``"model"`` draws each target token from
  the model's own distribution at that position, the data's prefix kept (the
  Fisher itself in expectation, as Kirkpatrick et al.; the empirical one shrinks
  as the model fits the data — Kunstner et al., 2019), and the penalty

      L_ewc = lambda / 2 * sum_i F_i (theta_i - theta*_i)**2.

  After several switches the Fishers add up and ``theta*`` is the latest switch
  (the "online" form of Huszár 2018 / Schwarz et al. 2018, with no decay).
  ``fisher_normalize=True`` divides each task's Fisher by its mean over all
  parameters first, so ``lambda`` is relative to the Fisher's own scale (which
  shrinks as a run fits the task).

`make_continual` puts them together: the SFT loss of `convergence_jax.llm.sft_loss`
(the masked next-token NLL) plus the method's regularizer, AdamW through
`convergence_jax.llm.adamw_update`; ``method`` in ``{"sequential", "replay",
"lwf", "ewc"}`` is static, every number (the `SFTHParams`, ``replay_ratio``,
``lwf_beta``, ``lwf_temperature``, ``ewc_lambda``) lives in a traced
`ContinualHParams`, so a ``jax.vmap`` over seeds and hyperparameters compiles
once. Every method carries the same state (buffer, anchor, Fisher), so one
phase-0 run can be continued by each method.

`continual_penalty` is the regularizer alone (``(params, state, hparams,
batch) -> scalar``), for adding LwF or EWC to another loss; `policy_penalty` on
a `PenaltyState` (`penalty_state`) is the form multi-turn GRPO adds to its loss
(``make_multiturn_grpo(..., continual="ewc")``), replay included as a weighted
NLL of the earlier task's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from convergence_jax.llm.sft import SFTHParams, adamw_update, evaluate, sft_loss
from convergence_jax.llm.tasks import SFTBatch, Task
from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.model import check_params, forward, init_params

METHODS = ("sequential", "replay", "lwf", "ewc")
"""The continual-learning methods of `make_continual`."""


# --- hyperparameters ------------------------------------------------------------


def _finite(name: str, value, low: float, high: float | None = None, open_low=False):
    if isinstance(value, jax.core.Tracer):
        return
    v = np.asarray(value, np.float64)
    bad = (
        not np.all(np.isfinite(v)) or np.any(v < low) or (open_low and np.any(v <= low))
    )
    if high is not None:
        bad = bad or np.any(v > high)
    if bad:
        if high is not None:
            want = f"in [{low}, {high}]"
        else:
            want = f"> {low}" if open_low else f">= {low}"
        raise ValueError(
            f"ContinualHParams.{name} must be finite and {want}, got {value!r}"
        )


@struct.dataclass
class ContinualHParams:
    """The numbers of a continual run; scalars (or batched, under ``vmap``)."""

    sft: SFTHParams
    """The optimizer's numbers (`SFTHParams`), the same in every phase."""
    replay_ratio: jax.Array
    """Fraction of each batch drawn from earlier tasks' rings (``"replay"``)."""
    lwf_beta: jax.Array
    """Weight of the LwF KL (``"lwf"``)."""
    lwf_temperature: jax.Array
    """Temperature ``T`` of the LwF KL (> 0)."""
    ewc_lambda: jax.Array
    """Weight ``lambda`` of the EWC penalty (``"ewc"``)."""

    @classmethod
    def create(
        cls,
        sft: SFTHParams | None = None,
        replay_ratio: float = 0.5,
        lwf_beta: float = 1.0,
        lwf_temperature: float = 1.0,
        ewc_lambda: float = 100.0,
    ) -> ContinualHParams:
        """Scalar hyperparameters (float32), validated when concrete: ratio in
        ``[0, 1]``, weights ``>= 0``, temperature ``> 0``."""
        _finite("replay_ratio", replay_ratio, 0.0, 1.0)
        _finite("lwf_beta", lwf_beta, 0.0)
        _finite("lwf_temperature", lwf_temperature, 0.0, open_low=True)
        _finite("ewc_lambda", ewc_lambda, 0.0)
        f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return cls(
            sft=SFTHParams.create() if sft is None else sft,
            replay_ratio=f32(replay_ratio),
            lwf_beta=f32(lwf_beta),
            lwf_temperature=f32(lwf_temperature),
            ewc_lambda=f32(ewc_lambda),
        )


# --- the schedule ---------------------------------------------------------------


class Phase(NamedTuple):
    """One phase of a schedule: ``steps`` updates on task ``task``."""

    task: int
    steps: int


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


def make_schedule(phases: Sequence, num_tasks: int) -> tuple[Phase, ...]:
    """Validate ``[(task_index, steps), ...]`` (at least one phase, indices in
    ``[0, num_tasks)``, steps >= 1) into a tuple of `Phase`."""
    if isinstance(phases, tuple) and len(phases) == 2 and _is_int(phases[0]):
        phases = [phases]
    if not isinstance(phases, Sequence) or len(phases) == 0:
        raise ValueError(
            f"schedule must be a non-empty list of (task_index, steps), got {phases!r}"
        )
    out = []
    for i, phase in enumerate(phases):
        if not isinstance(phase, Sequence) or len(phase) != 2:
            raise ValueError(
                f"schedule[{i}] must be (task_index, steps), got {phase!r}"
            )
        task, steps = phase
        if not _is_int(task) or not 0 <= task < num_tasks:
            raise ValueError(
                f"schedule[{i}]: task index must be an int in [0, {num_tasks}), "
                f"got {task!r}"
            )
        if not _is_int(steps) or steps < 1:
            raise ValueError(f"schedule[{i}]: steps must be an int >= 1, got {steps!r}")
        out.append(Phase(int(task), int(steps)))
    return tuple(out)


def phase_starts(schedule: Sequence[Phase]) -> np.ndarray:
    """The global step at which each phase begins, ``[num_phases]`` (0 first)."""
    steps = np.asarray([p.steps for p in schedule], np.int64)
    return np.concatenate([[0], np.cumsum(steps)[:-1]])


def task_at(schedule: Sequence[Phase], step) -> jax.Array:
    """The task index trained at global step ``step`` (0-based; traced is fine).
    Steps past the end map to the last phase's task."""
    starts = jnp.asarray(phase_starts(schedule))
    tasks = jnp.asarray([p.task for p in schedule], jnp.int32)
    phase = jnp.searchsorted(starts, jnp.asarray(step), side="right") - 1
    return tasks[jnp.clip(phase, 0, len(schedule) - 1)]


# --- data sources ---------------------------------------------------------------


class DataSource(NamedTuple):
    """Training rows of one task: ``sample(key, batch_size) -> SFTBatch`` of
    ``[batch_size, length]`` arrays (``batch_size`` static); ``task``: the
    ``llm.tasks`` task (for `llm.evaluate`), or None for a fixed data set;
    ``prompt_length``: the columns before the first one that can be trained,
    when every row has it (None: not known, e.g. a data set)."""

    name: str
    sample: Callable[[jax.Array, int], SFTBatch]
    length: int
    task: Task | None
    prompt_length: int | None = None


def pad_sft_batch(batch: SFTBatch, length: int, pad_id: int) -> SFTBatch:
    """Right-pad ``[B, T]`` arrays to ``[B, length]`` (tokens ``pad_id``, masks 0)."""
    tokens, mask, loss_mask = batch
    extra = int(length) - tokens.shape[-1]
    if extra < 0:
        raise ValueError(f"cannot pad rows of length {tokens.shape[-1]} to {length}")
    if extra == 0:
        return SFTBatch(tokens, mask, loss_mask)
    width = [(0, 0)] * (tokens.ndim - 1) + [(0, extra)]
    return SFTBatch(
        jnp.pad(tokens, width, constant_values=pad_id),
        jnp.pad(mask, width),
        jnp.pad(loss_mask, width),
    )


def task_source(task: Task) -> DataSource:
    """An ``llm.tasks`` task as a source: fresh ``task.sft_batch`` problems."""
    if not isinstance(task, Task):
        raise ValueError(f"expected an llm.tasks Task, got {type(task).__name__}")
    if task.host_only:
        raise ValueError(
            f"task {task.name!r} is host_only; continual training needs a task "
            "whose batches are drawn in JAX"
        )
    return DataSource(
        task.name,
        task.sft_batch,
        task.prompt_length + task.answer_length,
        task,
        task.prompt_length,
    )


def dataset_source(rows, name: str = "dataset") -> DataSource:
    """A fixed set of rows as a source, sampled uniformly with replacement.

    ``rows``: an `SFTBatch` or ``agents.TokenizedTrajectories`` (``tokens``,
    ``attention_mask``, ``loss_mask``) of ``[N, T]`` arrays — e.g.
    ``tokenize_trajectories(trajectories, tokenizer)``, whose loss mask covers the
    assistant tokens only. The rows become constants of the compiled program.
    """
    try:
        tokens, mask, loss_mask = (np.asarray(x) for x in rows)
    except (TypeError, ValueError):
        raise ValueError(
            "rows must be (tokens, attention_mask, loss_mask) arrays [N, T]"
        ) from None
    if (
        tokens.ndim != 2
        or tokens.shape != mask.shape
        or tokens.shape != loss_mask.shape
    ):
        raise ValueError(
            f"rows must be three [N, T] arrays of one shape, got {tokens.shape}, "
            f"{mask.shape}, {loss_mask.shape}"
        )
    if tokens.shape[0] < 1:
        raise ValueError("rows must hold at least one row")
    if not np.any(loss_mask[:, 1:] > 0):
        raise ValueError("rows have no trained token (loss_mask is 0 after column 0)")
    data = SFTBatch(
        jnp.asarray(tokens, jnp.int32),
        jnp.asarray(mask, jnp.int32),
        jnp.asarray(loss_mask, jnp.int32),
    )
    n = tokens.shape[0]

    def sample(key, batch_size: int) -> SFTBatch:
        index = jax.random.randint(key, (batch_size,), 0, n)
        return SFTBatch(*(x[index] for x in data))

    return DataSource(name, sample, int(tokens.shape[1]), None)


def template_rows(
    inputs: Callable[[jax.Array, int], jax.Array],
    tokenizer,
    lead: str,
    tail: str,
    answer_length: int,
    separator: str = "",
    name: str = "template",
) -> DataSource:
    """The new task's inputs written in an old task's prompt format: the rows of
    LwF's KL in the form of Li & Hoiem's old *head* on the new data
    (`make_continual(..., lwf_rows=...)`).

    ``inputs(key, batch_size) -> [batch_size, n]`` token ids (static ``n``): the
    new task's inputs, one token per item (e.g. the letters of a reverse
    problem). Each row is ``lead + x_1 + separator + x_2 ... + x_n + tail``, then
    ``answer_length`` answer slots (padding, attended, trained) that
    `frozen_rollout` fills with the frozen policy's own answer. For
    ``llm.tasks.sorting`` the format is ``lead="sort "``, ``separator=","``,
    ``tail="="``, ``answer_length = task.answer_length`` (the answer and its stop
    token): a reverse problem ``faaf`` becomes ``"sort f,a,a,f="``.

    What this uses of the old task is its prompt template, i.e. which task a
    prompt asks for (the identity that a separate head gives Li & Hoiem's
    network), never its data: the items are the new task's. Rows are
    ``[batch_size, len(lead) + n + (n - 1) * len(separator) + len(tail) +
    answer_length]``, no padding before the answer.
    """
    if not _is_int(answer_length) or answer_length < 1:
        raise ValueError(f"answer_length must be an int >= 1, got {answer_length!r}")
    if not callable(inputs):
        raise ValueError("inputs must be a function (key, batch_size) -> token ids")
    encode = lambda text: np.asarray(  # noqa: E731
        tokenizer.encode(text) if text else [], np.int32
    )
    head, sep, end = encode(lead), encode(separator), encode(tail)
    probe = np.asarray(jax.eval_shape(lambda k: inputs(k, 1), jax.random.key(0)).shape)
    if probe.size != 2 or probe[1] < 1:
        raise ValueError(
            f"inputs(key, batch_size) must return [batch_size, n] ids, got {probe}"
        )
    n = int(probe[1])
    prompt_length = head.size + n + (n - 1) * sep.size + end.size
    pad_id = int(tokenizer.pad_id)

    def sample(key, batch_size: int) -> SFTBatch:
        items = jnp.asarray(inputs(key, batch_size), jnp.int32)
        chex.assert_shape(items, (batch_size, n))
        fixed = lambda ids: jnp.broadcast_to(  # noqa: E731
            jnp.asarray(ids, jnp.int32), (batch_size, ids.size)
        )
        parts = [fixed(head)]
        for i in range(n):
            if i and sep.size:
                parts.append(fixed(sep))
            parts.append(items[:, i : i + 1])
        parts += [fixed(end), jnp.full((batch_size, answer_length), pad_id, jnp.int32)]
        tokens = jnp.concatenate(parts, axis=-1)
        mask = jnp.ones_like(tokens)
        loss_mask = (jnp.arange(tokens.shape[-1]) >= prompt_length).astype(jnp.int32)
        return SFTBatch(tokens, mask, jnp.broadcast_to(loss_mask, tokens.shape))

    return DataSource(
        name, sample, prompt_length + int(answer_length), None, prompt_length
    )


def _as_source(item) -> DataSource:
    if isinstance(item, DataSource):
        return item
    if isinstance(item, Task):
        return task_source(item)
    raise ValueError(
        "each task must be an llm.tasks Task or a DataSource (dataset_source(...)), "
        f"got {type(item).__name__}"
    )


# --- the replay buffer ----------------------------------------------------------


@struct.dataclass
class ReplayBuffer:
    """One ring of ``capacity`` rows per task: ``tokens``/``mask``/``loss_mask``
    ``[num_tasks, capacity, length]``, ``count [num_tasks]`` (rows stored, at
    most ``capacity``) and ``cursor [num_tasks]`` (the next slot written)."""

    tokens: jax.Array
    mask: jax.Array
    loss_mask: jax.Array
    count: jax.Array
    cursor: jax.Array


def replay_init(num_tasks: int, capacity: int, length: int, pad_id: int = 0):
    """An empty `ReplayBuffer`."""
    for name, value in (("num_tasks", num_tasks), ("capacity", capacity),
                        ("length", length)):  # fmt: skip
        if not _is_int(value) or value < 1:
            raise ValueError(f"replay_init: {name} must be an int >= 1, got {value!r}")
    shape = (int(num_tasks), int(capacity), int(length))
    return ReplayBuffer(
        tokens=jnp.full(shape, pad_id, jnp.int32),
        mask=jnp.zeros(shape, jnp.int32),
        loss_mask=jnp.zeros(shape, jnp.int32),
        count=jnp.zeros(shape[0], jnp.int32),
        cursor=jnp.zeros(shape[0], jnp.int32),
    )


def replay_add(buffer: ReplayBuffer, task, batch: SFTBatch) -> ReplayBuffer:
    """Write the rows of ``batch`` ``[B, length]`` into task ``task``'s ring (the
    oldest rows are overwritten once it is full). ``task`` may be traced."""
    tokens, mask, loss_mask = batch
    _, capacity, length = buffer.tokens.shape
    chex.assert_rank(tokens, 2)
    if tokens.shape[-1] != length:
        raise ValueError(
            f"replay_add: rows of length {tokens.shape[-1]}, the buffer holds {length}"
        )
    rows = tokens.shape[0]
    task = jnp.asarray(task, jnp.int32)
    slots = (buffer.cursor[task] + jnp.arange(rows)) % capacity
    if rows > capacity:  # only the last `capacity` rows survive; write those
        slots, tokens, mask, loss_mask = (
            x[-capacity:] for x in (slots, tokens, mask, loss_mask)
        )
    return buffer.replace(
        tokens=buffer.tokens.at[task, slots].set(tokens.astype(jnp.int32)),
        mask=buffer.mask.at[task, slots].set(mask.astype(jnp.int32)),
        loss_mask=buffer.loss_mask.at[task, slots].set(loss_mask.astype(jnp.int32)),
        count=buffer.count.at[task].set(
            jnp.minimum(buffer.count[task] + rows, capacity)
        ),
        cursor=buffer.cursor.at[task].set((buffer.cursor[task] + rows) % capacity),
    )


def replay_sample(
    key: jax.Array,
    buffer: ReplayBuffer,
    eligible,
    batch_size: int,
    *,
    balanced: bool = True,
) -> tuple[SFTBatch, jax.Array]:
    """Draw ``batch_size`` stored rows (with replacement) from the tasks where
    ``eligible [num_tasks]`` is true and that hold rows.

    ``balanced``: pick a task uniformly, then one of its rows uniformly; else
    uniformly over all their rows. Returns ``(SFTBatch [batch_size, length],
    task_ids [batch_size])``; with no eligible row stored, task ids are -1 and the
    rows are empty (masks 0), so they add nothing to a loss.
    """
    num_tasks, capacity, _ = buffer.tokens.shape
    eligible = jnp.asarray(eligible, bool) & (buffer.count > 0)
    chex.assert_shape(eligible, (num_tasks,))
    weights = jnp.where(eligible, 1.0 if balanced else buffer.count, 0.0)
    weights = weights.astype(jnp.float32)
    any_row = weights.sum() > 0
    k_task, k_row = jax.random.split(key)
    logits = jnp.where(weights > 0, jnp.log(jnp.maximum(weights, 1e-30)), -jnp.inf)
    logits = jnp.where(any_row, logits, 0.0)
    task = jax.random.categorical(k_task, logits, shape=(batch_size,))
    u = jax.random.uniform(k_row, (batch_size,))
    row = jnp.minimum(
        (u * buffer.count[task]).astype(jnp.int32),
        jnp.maximum(buffer.count[task] - 1, 0),
    )
    live = any_row.astype(jnp.int32)
    batch = SFTBatch(
        buffer.tokens[task, row],
        buffer.mask[task, row] * live,
        buffer.loss_mask[task, row] * live,
    )
    return batch, jnp.where(any_row, task, -1).astype(jnp.int32)


def replay_rows(ratio, batch_size: int) -> jax.Array:
    """Rows of a batch drawn from replay: ``round(ratio * batch_size)`` (int32)."""
    return jnp.round(jnp.asarray(ratio, jnp.float32) * batch_size).astype(jnp.int32)


def mix_batches(fresh: SFTBatch, replay: SFTBatch, num_replay) -> SFTBatch:
    """The first ``num_replay`` rows (traced) from ``replay``, the rest from
    ``fresh``; both ``[B, T]``."""
    rows = fresh.tokens.shape[0]
    take = (jnp.arange(rows) < num_replay)[:, None]
    return SFTBatch(
        *(jnp.where(take, r, f) for f, r in zip(fresh, replay, strict=True))
    )


# --- the regularizers -------------------------------------------------------------


def lwf_kl(logits, frozen_logits, weight, temperature=1.0) -> jax.Array:
    """``T**2 * sum_t w_t KL(softmax(frozen/T) || softmax(logits/T)) / max(sum w, 1)``.

    ``logits``, ``frozen_logits``: ``[..., V]``; ``weight``: ``[...]`` (the
    trained positions). The frozen logits get no gradient.
    """
    chex.assert_equal_shape([logits, frozen_logits])
    chex.assert_equal_shape_prefix([logits, weight], weight.ndim)
    t = jnp.asarray(temperature, jnp.float32)
    frozen = jax.lax.stop_gradient(frozen_logits)
    log_p_old = jax.nn.log_softmax(frozen / t, axis=-1)
    log_p_new = jax.nn.log_softmax(logits / t, axis=-1)
    kl = jnp.sum(jnp.exp(log_p_old) * (log_p_old - log_p_new), axis=-1)
    weight = weight.astype(jnp.float32)
    return t**2 * (kl * weight).sum() / jnp.maximum(weight.sum(), 1.0)


LWF_POSITIONS = ("trained", "all")
LWF_TARGETS = ("data", "frozen")


def frozen_rollout(
    key, frozen_params, config: LMConfig, batch: SFTBatch, start: int = 0,
    stop_token: int | None = None,
) -> tuple[SFTBatch, jax.Array]:  # fmt: skip
    """The frozen policy's own continuation of each row ``[B, T]``: every trained
    token (``loss_mask > 0``) is replaced, left to right, by a token drawn from
    ``p*(. | tokens[:t])`` with the earlier ones already replaced (the untrained
    tokens — the prompt, a user's turns — stay the data's). One full forward of
    the frozen model per column from ``start`` (static: the first column that can
    be trained is ``start + 1``). Returns ``(rows, weight [B, T - 1])``: the rolled
    rows and the positions whose next token the rollout drew, cut after the first
    drawn ``stop_token`` of a row (what follows a finished answer is never
    visited). No gradient flows through it."""
    tokens, mask, loss_mask = batch
    chex.assert_rank(tokens, 2)
    frozen_params = jax.lax.stop_gradient(frozen_params)
    length = tokens.shape[-1]
    trained = loss_mask > 0

    def body(t, carry):
        tokens, done, weight = carry
        logits, _ = forward(frozen_params, config, tokens, mask)
        drawn = jax.random.categorical(jax.random.fold_in(key, t), logits[:, t])
        here = trained[:, t + 1] & ~done
        tokens = tokens.at[:, t + 1].set(jnp.where(here, drawn, tokens[:, t + 1]))
        weight = weight.at[:, t].set(here)
        if stop_token is not None:
            done = done | (here & (drawn == stop_token))
        return tokens, done, weight

    done = jnp.zeros(tokens.shape[0], bool)
    weight = jnp.zeros((tokens.shape[0], length - 1), bool)
    tokens, _, weight = jax.lax.fori_loop(
        int(start), length - 1, body, (tokens, done, weight)
    )
    return SFTBatch(tokens, mask, loss_mask), weight


def lwf_loss(
    params, frozen_params, config: LMConfig, batch: SFTBatch, temperature=1.0,
    positions: str = "trained", weight=None,
):  # fmt: skip
    """`lwf_kl` of ``params`` against ``frozen_params`` on ``batch``: at the
    trained tokens (``positions="trained"``: the logits at ``t`` where
    ``loss_mask[t + 1] > 0``) or at every real next token (``"all"``: where
    ``mask[t + 1] > 0``, the prompt's positions too); ``weight [B, T - 1]``, when
    given, replaces both (e.g. `frozen_rollout`'s)."""
    if positions not in LWF_POSITIONS:
        raise ValueError(f"positions must be one of {LWF_POSITIONS}, got {positions!r}")
    tokens, mask, loss_mask = batch
    logits, _ = forward(params, config, tokens, mask)
    frozen, _ = forward(frozen_params, config, tokens, mask)
    if weight is None:
        weight = (loss_mask if positions == "trained" else mask)[:, 1:] > 0
    return lwf_kl(logits[:, :-1], frozen[:, :-1], weight, temperature)


def sequence_logprob(
    params, config: LMConfig, tokens, mask, loss_mask, key=None
) -> jax.Array:
    """``sum_t w_t log p(y_t | tokens[:t + 1])`` of one row ``[T]`` (``w_t =
    loss_mask[t + 1]``): with ``key`` None, ``y_t = tokens[t + 1]`` (the data's
    targets); with a key, ``y_t`` drawn from the model's own ``p(. | tokens[:t +
    1])`` at every trained position (the prefix stays the data's)."""
    chex.assert_rank([tokens, mask, loss_mask], 1)
    logits, _ = forward(params, config, tokens[None], mask[None])
    logp = jax.nn.log_softmax(logits[0, :-1], axis=-1)
    targets = tokens[1:]
    if key is not None:
        targets = jax.random.categorical(key, jax.lax.stop_gradient(logp), axis=-1)
    picked = jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0]
    return (picked * (loss_mask[1:] > 0)).sum()


FISHER_TARGETS = ("data", "model")


def fisher_diagonal(
    params, config: LMConfig, rows: SFTBatch, chunk: int = 64, key=None
):  # fmt: skip
    """The diagonal Fisher ``mean_n (grad log p(y_n | x_n))**2`` over the rows
    ``[N, T]`` of ``rows`` (per-example gradients, ``chunk`` rows at a time; ``N``
    must be a multiple of ``chunk``), a pytree like ``params``. ``key`` None: the
    data's targets (the empirical Fisher); a key: targets sampled from the model
    at each trained position (`sequence_logprob`; the Fisher itself, in
    expectation — cross terms between positions have mean zero)."""
    tokens = rows[0]
    n = tokens.shape[0]
    chunk = min(int(chunk), n)
    if n % chunk:
        raise ValueError(
            f"fisher_diagonal: {n} rows is not a multiple of chunk {chunk}"
        )
    split = jax.tree.map(lambda x: x.reshape(n // chunk, chunk, *x.shape[1:]), rows)
    grad = jax.grad(sequence_logprob)
    if key is None:
        per_example = jax.vmap(grad, in_axes=(None, None, 0, 0, 0))
        parts = split
    else:
        per_example = jax.vmap(grad, in_axes=(None, None, 0, 0, 0, 0))
        keys = jax.random.split(key, n).reshape(n // chunk, chunk)
        parts = (*split, keys)

    def body(total, part):
        grads = per_example(params, config, *part)
        return jax.tree.map(lambda t, g: t + (g**2).sum(0), total, grads), None

    zero = jax.tree.map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(body, zero, parts)
    return jax.tree.map(lambda t: t / n, total)


def ewc_penalty(params, anchor, fisher, ewc_lambda) -> jax.Array:
    """``lambda / 2 * sum_i F_i (theta_i - theta*_i)**2`` (``anchor`` = theta*)."""
    terms = jax.tree.map(
        lambda p, a, f: jnp.sum(f * (p - jax.lax.stop_gradient(a)) ** 2),
        params,
        anchor,
        fisher,
    )
    return 0.5 * jnp.asarray(ewc_lambda, jnp.float32) * sum(jax.tree.leaves(terms))


# --- the program ----------------------------------------------------------------


@struct.dataclass
class ContinualState:
    """Everything a continual run needs to continue."""

    params: Any
    opt_state: Any
    key: jax.Array
    """Typed key; update ``i`` draws from ``fold_in(key, i)``."""
    step: jax.Array
    """Updates done so far, over all phases (int32)."""
    buffer: ReplayBuffer
    anchor: Any
    """theta*: the parameters at the last switch (the LwF teacher, EWC's anchor)."""
    fisher: Any
    """The summed diagonal Fishers of the tasks left so far (zeros before)."""


class Continual(NamedTuple):
    """The pure functions of a continual run (see the module docstring)."""

    model_config: LMConfig
    sources: tuple[DataSource, ...]
    schedule: tuple[Phase, ...]
    method: str
    batch_size: int
    seq_len: int
    init: Callable[..., ContinualState]
    """``init(key, params=None) -> ContinualState``."""
    switch: Callable[..., ContinualState]
    """``switch(state, phase) -> state``: freeze theta* (and, for EWC, add the
    Fisher of the previous phase's task); ``phase`` >= 1, static."""
    step: Callable[..., tuple[ContinualState, dict]]
    """``step(state, hparams, phase) -> (state, metrics)``: one update of phase
    ``phase`` (static)."""
    run_phase: Callable[..., tuple[ContinualState, dict]]
    """``run_phase(state, hparams, phase) -> (state, metrics [steps])``: the
    switch (phase >= 1) then the phase's steps, one `lax.scan`."""
    run: Callable[..., tuple[ContinualState, tuple, tuple]]
    """``run(state, hparams) -> (state, metrics per phase, params at each phase's
    end)``: the whole schedule in one program."""
    loss: Callable[..., tuple[jax.Array, dict]]
    """``loss(params, state, hparams, batch, phase) -> (total, metrics)``."""
    penalty: Callable[..., jax.Array]
    """``penalty(params, state, hparams, batch, phase)``: the regularizer alone."""


def continual_penalty(
    method: str, params, state: ContinualState, hparams: ContinualHParams,
    config: LMConfig, batch: SFTBatch, lwf_positions: str = "trained",
    lwf_rollout: tuple[SFTBatch, jax.Array] | None = None,
) -> jax.Array:  # fmt: skip
    """The regularizer of ``method`` after a switch: ``lwf`` -> `lwf_loss`
    against ``state.anchor`` times ``lwf_beta`` (on ``batch``, or, given
    ``lwf_rollout = frozen_rollout(...)``, on the frozen policy's continuations
    at its weights); ``ewc`` -> `ewc_penalty`; ``sequential``/``replay`` -> 0.
    Add it to any loss of ``params``."""
    _check_method(method)
    if method == "lwf":
        rows, weight = (batch, None) if lwf_rollout is None else lwf_rollout
        return hparams.lwf_beta * lwf_loss(
            params, state.anchor, config, rows, hparams.lwf_temperature,
            lwf_positions, weight,
        )  # fmt: skip
    if method == "ewc":
        return ewc_penalty(params, state.anchor, state.fisher, hparams.ewc_lambda)
    return jnp.zeros((), jnp.float32)


@struct.dataclass
class PenaltyState:
    """What a continual term added to another program's loss needs (multi-turn
    GRPO, `convergence_jax.agents.multiturn`): ``anchor`` theta* (the LwF
    teacher, EWC's anchor), ``fisher`` (EWC's diagonal Fisher, like the params;
    zeros otherwise), ``hparams`` (`ContinualHParams`: ``replay_ratio``,
    ``lwf_beta``, ``lwf_temperature``, ``ewc_lambda``) and ``rows`` (replay:
    the earlier task's rows ``[N, T]``, an `SFTBatch`; unused otherwise)."""

    anchor: Any
    fisher: Any
    hparams: ContinualHParams
    rows: SFTBatch | None = None


def penalty_state(
    params, hparams: ContinualHParams | None = None, *, fisher=None, rows=None
) -> PenaltyState:
    """A `PenaltyState` anchored at ``params`` (theta*): ``fisher`` from
    `fisher_diagonal` on the earlier task's rows (zeros if None), ``rows`` the
    earlier task's rows for replay (an `SFTBatch` or ``(tokens, mask,
    loss_mask)`` ``[N, T]``)."""
    if fisher is None:
        fisher = jax.tree.map(jnp.zeros_like, params)
    elif jax.tree.structure(fisher) != jax.tree.structure(params):
        raise ValueError("penalty_state: fisher must be a pytree like params")
    if rows is not None:
        rows = SFTBatch(*(jnp.asarray(x, jnp.int32) for x in rows))
        chex.assert_rank(list(rows), 2)
    return PenaltyState(
        anchor=params,
        fisher=fisher,
        hparams=ContinualHParams.create() if hparams is None else hparams,
        rows=rows,
    )


def policy_penalty(
    method: str, params, penalty: PenaltyState, config: LMConfig, rows: SFTBatch
) -> jax.Array:
    """The continual term of ``method`` for another loss of ``params``:
    ``replay`` -> ``replay_ratio`` times the masked NLL (`llm.sft_loss`) of the
    earlier task's ``rows`` (a weight on the old task's likelihood, as
    InstructGPT's PPO-ptx, Ouyang et al. 2022, adds its pretraining one);
    ``lwf`` -> `lwf_loss` against the anchor on ``rows`` (the new task's rows,
    e.g. the conversations being trained on) times ``lwf_beta``; ``ewc`` ->
    `ewc_penalty`; ``sequential`` -> 0."""
    _check_method(method)
    if method == "replay":
        return penalty.hparams.replay_ratio * sft_loss(params, config, rows)[0]
    return continual_penalty(method, params, penalty, penalty.hparams, config, rows)


def _check_method(method) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def make_continual(
    model_config: LMConfig,
    tasks: Sequence,
    schedule: Sequence,
    *,
    method: str,
    batch_size: int,
    replay_capacity: int = 2048,
    replay_balanced: bool = True,
    fisher_examples: int = 256,
    fisher_chunk: int = 64,
    fisher_targets: str = "data",
    fisher_normalize: bool = False,
    lwf_positions: str = "trained",
    lwf_targets: str = "data",
    lwf_rows: DataSource | None = None,
    seq_len: int | None = None,
) -> Continual:
    """The continual program (see the module docstring).

    Args:
        model_config: the model (static).
        tasks: ``llm.tasks`` tasks and/or `DataSource` (`dataset_source`), indexed
            by the schedule.
        schedule: ``[(task_index, steps), ...]``.
        method: ``"sequential"`` (plain fine-tuning), ``"replay"``, ``"lwf"`` or
            ``"ewc"`` (static).
        batch_size: rows per update (static).
        replay_capacity: rows kept per task's ring.
        replay_balanced: draw replay rows balanced by task (else uniform).
        fisher_examples: rows of the task just left behind EWC's Fisher.
        fisher_chunk: rows per per-example-gradient chunk of the Fisher.
        fisher_targets: EWC's Fisher from the data's targets (``"data"``, the
            empirical Fisher) or from the model's own samples (``"model"``).
        fisher_normalize: divide each task's Fisher by its mean over every
            parameter before adding it, so ``lambda`` is the penalty's strength
            relative to the Fisher's own scale (the empirical Fisher shrinks as
            the model fits the task, so the same ``lambda`` is weaker for a run
            that fit better).
        lwf_positions: where LwF's KL is taken, ``"trained"`` (the new task's
            trained tokens) or ``"all"`` (every real position of its rows);
            with ``lwf_targets="frozen"``, the rollout's positions.
        lwf_targets: the contexts of LwF's KL: ``"data"``, the new task's rows
            as they are (teacher-forced on its targets); ``"frozen"``, the rows
            with their trained tokens drawn from the frozen policy
            (`frozen_rollout`, a fresh draw every step): the sequence-level KL.
        lwf_rows: rows of LwF's KL other than the new task's batch (a
            `DataSource`, ``batch_size`` rows a step, their trained tokens drawn
            from the frozen policy: ``lwf_targets`` must be ``"frozen"``), e.g.
            `template_rows`: the new task's inputs in the old task's prompt
            format. None: the new task's batch.
        seq_len: common row length (default: the longest source).

    Raises ``ValueError`` before compiling for an unknown method, a bad schedule,
    sizes < 1, a source longer than ``seq_len`` or than the model's positions.
    """
    _check_method(method)
    if fisher_targets not in FISHER_TARGETS:
        raise ValueError(
            f"fisher_targets must be one of {FISHER_TARGETS}, got {fisher_targets!r}"
        )
    if lwf_positions not in LWF_POSITIONS:
        raise ValueError(
            f"lwf_positions must be one of {LWF_POSITIONS}, got {lwf_positions!r}"
        )
    if lwf_targets not in LWF_TARGETS:
        raise ValueError(
            f"lwf_targets must be one of {LWF_TARGETS}, got {lwf_targets!r}"
        )
    if not isinstance(model_config, LMConfig):
        raise ValueError(
            f"model_config must be an LMConfig, got {type(model_config).__name__}"
        )
    if lwf_rows is not None:
        if not isinstance(lwf_rows, DataSource):
            raise ValueError(
                "lwf_rows must be a DataSource (e.g. template_rows(...)), got "
                f"{type(lwf_rows).__name__}"
            )
        if lwf_targets != "frozen":
            raise ValueError(
                "lwf_rows needs lwf_targets='frozen': its trained tokens are the "
                "frozen policy's own continuation"
            )
        if lwf_rows.length > model_config.max_position_embeddings:
            raise ValueError(
                f"lwf_rows' length {lwf_rows.length} exceeds "
                f"LMConfig.max_position_embeddings "
                f"({model_config.max_position_embeddings})"
            )
    if isinstance(tasks, Task | DataSource) or len(tasks) == 0:
        raise ValueError("tasks must be a non-empty list of tasks / DataSources")
    sources = tuple(_as_source(t) for t in tasks)
    schedule = make_schedule(schedule, len(sources))
    sizes = {
        "batch_size": batch_size,
        "replay_capacity": replay_capacity,
        "fisher_examples": fisher_examples,
        "fisher_chunk": fisher_chunk,
    }
    for name, value in sizes.items():
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if fisher_examples % min(fisher_chunk, fisher_examples):
        raise ValueError(
            f"fisher_examples ({fisher_examples}) must be a multiple of fisher_chunk "
            f"({fisher_chunk})"
        )
    longest = max(s.length for s in sources)
    seq_len = longest if seq_len is None else seq_len
    if not _is_int(seq_len) or seq_len < longest:
        raise ValueError(f"seq_len must be an int >= {longest} (the longest source)")
    if seq_len > model_config.max_position_embeddings:
        raise ValueError(
            f"seq_len {seq_len} exceeds LMConfig.max_position_embeddings "
            f"({model_config.max_position_embeddings})"
        )
    batch_size, seq_len = int(batch_size), int(seq_len)
    pad_id = int(model_config.pad_token_id or 0)
    for source in sources + (() if lwf_rows is None else (lwf_rows,)):
        probe = source.sample(jax.random.key(0), 2)
        used = np.asarray(probe.tokens)[np.asarray(probe.mask) > 0]
        if used.size and used.max() >= model_config.vocab_size:
            raise ValueError(
                f"source {source.name!r} uses token id {int(used.max())}, outside "
                f"the model's vocabulary [0, {model_config.vocab_size})"
            )
    moments = optax.scale_by_adam()
    num_tasks = len(sources)

    def draw(source_index: int, key, rows: int) -> SFTBatch:
        batch = sources[source_index].sample(key, rows)
        return pad_sft_batch(SFTBatch(*batch), seq_len, pad_id)

    def init(key, params=None) -> ContinualState:
        k_params, k_data = jax.random.split(key)
        if params is None:
            params = init_params(k_params, model_config)
        else:
            check_params(model_config, params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ContinualState(
            params=params,
            opt_state=moments.init(params),
            key=k_data,
            step=jnp.zeros((), jnp.int32),
            buffer=replay_init(num_tasks, int(replay_capacity), seq_len, pad_id),
            anchor=params,
            fisher=zeros,
        )

    def _phase(phase) -> int:
        if not _is_int(phase) or not 0 <= phase < len(schedule):
            raise ValueError(
                f"phase must be an int in [0, {len(schedule)}), got {phase!r}"
            )
        return int(phase)

    def switch(state: ContinualState, phase: int) -> ContinualState:
        phase = _phase(phase)
        if phase == 0:
            raise ValueError("switch: phase 0 has no task before it")
        fisher = state.fisher
        if method == "ewc":
            previous = schedule[phase - 1].task
            # Apart from the training stream fold_in(key, step), step < 2**30.
            key = jax.random.fold_in(state.key, 2**30 + phase)
            k_rows, k_targets = jax.random.split(key)
            rows = draw(previous, k_rows, int(fisher_examples))
            fresh = fisher_diagonal(
                state.params, model_config, rows, int(fisher_chunk),
                None if fisher_targets == "data" else k_targets,
            )  # fmt: skip
            if fisher_normalize:
                total = sum(jnp.sum(f) for f in jax.tree.leaves(fresh))
                size = sum(f.size for f in jax.tree.leaves(fresh))
                scale = size / jnp.maximum(total, 1e-30)
                fresh = jax.tree.map(lambda f: f * scale, fresh)
            fisher = jax.tree.map(jnp.add, fisher, fresh)
        return state.replace(anchor=state.params, fisher=fisher)

    # Tasks of the phases before each phase, other than its own: what replay draws.
    earlier = [
        np.asarray([any(schedule[q].task == k for q in range(p))
                    and k != schedule[p].task for k in range(num_tasks)])
        for p in range(len(schedule))
    ]  # fmt: skip

    # Rollouts start at the last column before any trained token can appear
    # (a task's prompt block; 0 for a data set, whose layout is not known here).
    def start_of(source: DataSource) -> int:
        return max(source.prompt_length - 1, 0) if source.prompt_length else 0

    rollout_start = min(start_of(s) for s in sources)
    stop_token = model_config.eos_token_id

    def rollout(state, batch, phase: int):
        """The frozen policy's continuations for LwF (None: LwF on the rows)."""
        if method != "lwf" or lwf_targets != "frozen" or _phase(phase) == 0:
            return None
        key = jax.random.fold_in(jax.random.fold_in(state.key, 2**30 - 1), state.step)
        start = rollout_start
        if lwf_rows is not None:  # other rows than the batch: the template's
            k_rows, key = jax.random.split(key)
            batch = lwf_rows.sample(k_rows, batch_size)
            start = start_of(lwf_rows)
        return frozen_rollout(key, state.anchor, model_config, batch, start, stop_token)

    def penalty(params, state, hparams, batch, phase: int, lwf_rollout=None):
        if _phase(phase) == 0:
            return jnp.zeros((), jnp.float32)
        if lwf_rollout is None:
            lwf_rollout = rollout(state, batch, phase)
        return continual_penalty(
            method, params, state, hparams, model_config, batch, lwf_positions,
            lwf_rollout,
        )  # fmt: skip

    def loss(params, state, hparams, batch, phase: int, lwf_rollout=None):
        nll, metrics = sft_loss(params, model_config, batch)
        reg = penalty(params, state, hparams, batch, phase, lwf_rollout)
        return nll + reg, {**metrics, "sft_loss": nll, "penalty": reg}

    def step(state: ContinualState, hparams: ContinualHParams, phase: int):
        phase = _phase(phase)
        task = schedule[phase].task
        k_fresh, k_replay = jax.random.split(jax.random.fold_in(state.key, state.step))
        fresh = draw(task, k_fresh, batch_size)
        batch = fresh
        replayed = jnp.zeros((), jnp.int32)
        if method == "replay" and earlier[phase].any():
            old, _ = replay_sample(
                k_replay, state.buffer, earlier[phase], batch_size,
                balanced=replay_balanced,
            )  # fmt: skip
            replayed = replay_rows(hparams.replay_ratio, batch_size)
            batch = mix_batches(fresh, old, replayed)
        (total, metrics), grads = jax.value_and_grad(loss, has_aux=True)(
            state.params, state, hparams, batch, phase, rollout(state, fresh, phase)
        )
        params, opt_state, grad_norm, lr = adamw_update(
            moments, grads, state.opt_state, state.params, state.step, hparams.sft
        )
        metrics = {
            **metrics,
            "loss": total,
            "grad_norm": grad_norm,
            "learning_rate": lr,
            "replay_rows": replayed,
        }
        state = state.replace(
            params=params,
            opt_state=opt_state,
            step=state.step + 1,
            buffer=replay_add(state.buffer, task, fresh),
        )
        return state, metrics

    def run_phase(state: ContinualState, hparams: ContinualHParams, phase: int):
        phase = _phase(phase)
        if phase > 0:
            state = switch(state, phase)
        return jax.lax.scan(
            lambda s, _: step(s, hparams, phase), state, None, schedule[phase].steps
        )

    def run(state: ContinualState, hparams: ContinualHParams):
        metrics, ends = [], []
        for phase in range(len(schedule)):
            state, m = run_phase(state, hparams, phase)
            metrics.append(m)
            ends.append(state.params)
        return state, tuple(metrics), tuple(ends)

    return Continual(
        model_config=model_config,
        sources=sources,
        schedule=schedule,
        method=method,
        batch_size=batch_size,
        seq_len=seq_len,
        init=init,
        switch=switch,
        step=step,
        run_phase=run_phase,
        run=run,
        loss=loss,
        penalty=penalty,
    )


def evaluate_tasks(key, params, config: LMConfig, tasks: Sequence, num_problems: int):
    """Held-out greedy scores (`llm.evaluate`) of ``params`` on each ``llm.tasks``
    task: ``{task.name: {"exact_match", "reward", "pass_at_k"}}``. Jittable."""
    out = {}
    for task in tasks:
        task = task.task if isinstance(task, DataSource) else task
        if task is None:
            raise ValueError(
                "evaluate_tasks needs llm.tasks tasks (a dataset has none)"
            )
        out[task.name] = evaluate(key, params, config, task, num_problems)
    return out
