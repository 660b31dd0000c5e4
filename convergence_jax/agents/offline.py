"""Logged conversations: a dataset read from JSONL, offline training of the token
policy from it, and hybrid offline -> online multi-turn GRPO.

    from convergence_jax import lm
    from convergence_jax.agents import offline

    data = offline.ConversationDataset.from_jsonl("log.jsonl",
                                                  quality_threshold=None)
    print(data.report)                  # rows read, rows skipped (line: reason)
    good = data.filter(min_reward=1.0)  # reward-filtered BC's rows
    rows = good.to_rows(lm.ByteTokenizer(), max_length=env.sequence_length)
    trainer = offline.make_offline_trainer(model_config, rows, method="bc",
                                           batch_size=32)
    state = trainer.init(key, params)   # start from the logging policy
    state, metrics = trainer.run(state, num_steps=200)   # one lax.scan

**The dataset** (`ConversationDataset`): one `MultiTurnTrajectory` per line,
as `trajectory.save_jsonl` writes them (turns, a final reward and/or per-turn
rewards, metadata). `from_jsonl` never stops at a bad line and never drops one
silently: a line that is not JSON, not a valid trajectory, or carries no reward
at all is skipped, and its number and the reason are kept in the dataset's
`LoadReport` (and logged as a warning on the ``convergence_jax.agents.offline``
logger); ``strict=True`` raises on the first instead. ``quality_threshold``
keeps the rows whose reward (`MultiTurnTrajectory.total_reward`) is at least
the threshold (counted in the report, apart from the bad rows). `to_rows`
tokenizes with the chat template (`tokenize_trajectory`): ``tokens``,
``mask``, ``loss_mask`` ``[N, L]`` (1 on the assistant's tokens), right-padded,
the trailing untrained tokens cut; for the customer-service env's own logs the
tokens are exactly the layout its rollouts are trained on.

**Offline training** (`make_offline_trainer`; AdamW steps of
`llm.sft.adamw_update`, batches drawn with replacement, all one ``lax.scan``):

- ``"bc"`` -- behaviour cloning: the masked NLL of the agent's tokens of the
  rows given (reward-filtered BC: filter first, `ConversationDataset.filter`
  with ``min_reward`` or ``top_quantile``).
- ``"awr"`` -- advantage-weighted regression on tokens (Peng et al. 2019,
  arXiv 1910.00177; the advantage weighting of IQL's policy extraction,
  Kostrikov et al. 2021, arXiv 2110.06169): every agent token of conversation
  ``i`` is weighted by ``w_i = min(exp(beta (R_i - b_i)), max_weight)``
  (`awr_weights`), ``b_i`` the baseline (`baselines`: the mean reward of the
  conversation's scenario, or of the whole log), and the loss is
  `weighted_nll`. ``beta`` and ``max_weight`` are in `OfflineHParams` (sweep
  them under vmap).

**Hybrid** (`make_hybrid`): an offline trainer for the pre-training, then
`multiturn.make_multiturn_grpo(..., continual="replay")`: every online update
adds ``offline_weight`` times the NLL of ``num_prompts * group_size`` rows
drawn from the offline rows to the GRPO loss (the replay term of
`continual.policy_penalty`; weight 0 is plain online GRPO, the same program).

**Logging** (`log_conversations`): a policy's own conversations on the env
(each scenario played ``group_size`` times at each temperature), as
`MultiTurnTrajectory` with the env's 0/1 reward and metadata (the temperature,
the policy's name, the scenario's index), ready for `save_jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from convergence_jax.agents import multiturn as mt
from convergence_jax.agents.continual import (
    ContinualHParams,
    PenaltyState,
    penalty_state,
)
from convergence_jax.agents.task_env import TaskEnv, to_trajectories
from convergence_jax.agents.trajectory import (
    MultiTurnTrajectory,
    save_jsonl,
    tokenize_trajectory,
)
from convergence_jax.llm.grpo import GRPOConfig
from convergence_jax.llm.sft import SFTHParams, adamw_update
from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.model import check_params, token_logprobs

__all__ = [
    "BASELINES",
    "OFFLINE_METHODS",
    "ConversationDataset",
    "Hybrid",
    "LoadReport",
    "OfflineHParams",
    "OfflineRows",
    "OfflineState",
    "OfflineTrainer",
    "awr_weights",
    "baselines",
    "hybrid_penalty",
    "log_conversations",
    "make_hybrid",
    "make_offline_trainer",
    "weighted_nll",
]

logger = logging.getLogger(__name__)

OFFLINE_METHODS = ("bc", "awr")
"""`make_offline_trainer`'s methods."""

BASELINES = ("scenario", "mean")
"""`baselines`' kinds: the mean reward of each row's scenario (``scenario_id``;
the whole log's mean for a scenario seen once or without an id) or of the
whole log."""


# --- the dataset ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What `ConversationDataset.from_jsonl` read: ``num_lines`` non-blank
    lines, ``num_loaded`` rows kept, ``skipped`` ``((line, reason), ...)``
    (bad rows), ``below_threshold`` rows under ``quality_threshold``."""

    path: str
    num_lines: int
    num_loaded: int
    skipped: tuple[tuple[int, str], ...]
    below_threshold: int
    quality_threshold: float | None

    def __str__(self) -> str:
        text = (
            f"{self.path}: {self.num_loaded} of {self.num_lines} rows loaded, "
            f"{len(self.skipped)} skipped as bad"
        )
        if self.quality_threshold is not None:
            text += (
                f", {self.below_threshold} below quality_threshold="
                f"{self.quality_threshold}"
            )
        for line, reason in self.skipped:
            text += f"\n  line {line}: {reason}"
        return text


def _has_reward(trajectory: MultiTurnTrajectory) -> bool:
    return trajectory.final_reward is not None or any(
        r is not None for r in trajectory.turn_rewards
    )


def _row_reward(trajectory: MultiTurnTrajectory, where: str) -> float:
    reward = trajectory.total_reward
    if not np.isfinite(reward):
        raise ValueError(f"{where}: the reward is {reward}, not finite")
    return reward


class OfflineRows(NamedTuple):
    """Tokenized conversations: ``tokens``, ``mask``, ``loss_mask`` ``[N, L]``
    int32 (right-padded; ``loss_mask`` 1 on the agent's tokens), ``rewards``
    ``[N]`` float32, ``line_numbers`` ``[N]`` (each row's line in the log).
    The first three are a `llm.SFTBatch` (``rows[:3]``)."""

    tokens: np.ndarray
    mask: np.ndarray
    loss_mask: np.ndarray
    rewards: np.ndarray
    line_numbers: np.ndarray


@dataclasses.dataclass(frozen=True)
class ConversationDataset:
    """Logged conversations with rewards (see the module docstring).

    ``trajectories``: the rows; ``line_numbers``: each row's line in its
    JSONL file (its 1-based index when built in memory); ``report``: the
    `LoadReport` of `from_jsonl` (None otherwise)."""

    trajectories: tuple[MultiTurnTrajectory, ...]
    line_numbers: tuple[int, ...]
    report: LoadReport | None = None

    def __post_init__(self):
        if len(self.trajectories) != len(self.line_numbers):
            raise ValueError(
                f"ConversationDataset: {len(self.trajectories)} trajectories but "
                f"{len(self.line_numbers)} line numbers"
            )
        for i, t in enumerate(self.trajectories):
            if not isinstance(t, MultiTurnTrajectory):
                raise ValueError(
                    f"ConversationDataset: trajectories[{i}] is a "
                    f"{type(t).__name__}, not a MultiTurnTrajectory"
                )

    @classmethod
    def from_trajectories(
        cls, trajectories: Sequence[MultiTurnTrajectory]
    ) -> ConversationDataset:
        """A dataset of in-memory trajectories; each must carry a reward."""
        trajectories = tuple(trajectories)
        for i, t in enumerate(trajectories):
            if isinstance(t, MultiTurnTrajectory) and not _has_reward(t):
                raise ValueError(
                    f"trajectories[{i}] has no reward (final_reward and every "
                    "turn reward are None)"
                )
        return cls(trajectories, tuple(range(1, len(trajectories) + 1)))

    @classmethod
    def from_jsonl(
        cls,
        path: str | os.PathLike,
        quality_threshold: float | None = None,
        *,
        strict: bool = False,
    ) -> ConversationDataset:
        """Read a JSONL log (one `MultiTurnTrajectory.to_dict` per line, blank
        lines ignored). A bad line -- not JSON, not a valid trajectory, no
        reward, a reward that is not finite -- is skipped and reported with its
        number (`LoadReport.skipped`, and a warning on this module's logger);
        ``strict`` raises ``ValueError`` on it instead. ``quality_threshold``:
        keep only rows of ``total_reward >= quality_threshold``."""
        if quality_threshold is not None and (
            isinstance(quality_threshold, bool)
            or not isinstance(quality_threshold, int | float)
            or not np.isfinite(quality_threshold)
        ):
            raise ValueError(
                f"quality_threshold must be None or a finite number, got "
                f"{quality_threshold!r}"
            )
        path = Path(path)
        rows, lines, skipped = [], [], []
        num_lines = below = 0
        with path.open(encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                num_lines += 1
                try:
                    trajectory = MultiTurnTrajectory.from_dict(json.loads(line))
                    if not _has_reward(trajectory):
                        raise ValueError(
                            "no reward (final_reward and every turn reward are None)"
                        )
                    reward = _row_reward(trajectory, "reward")
                except (TypeError, ValueError) as error:
                    reason = f"{type(error).__name__}: {error}"
                    if strict:
                        raise ValueError(f"{path}: line {number}: {reason}") from None
                    skipped.append((number, reason))
                    continue
                if quality_threshold is not None and reward < quality_threshold:
                    below += 1
                    continue
                rows.append(trajectory)
                lines.append(number)
        report = LoadReport(
            str(path),
            num_lines,
            len(rows),
            tuple(skipped),
            below,
            None if quality_threshold is None else float(quality_threshold),
        )
        if skipped:
            logger.warning("%s", report)
        return cls(tuple(rows), tuple(lines), report)

    def __len__(self) -> int:
        return len(self.trajectories)

    @property
    def rewards(self) -> np.ndarray:
        """``[N]`` float32: each row's `MultiTurnTrajectory.total_reward`."""
        return np.asarray([t.total_reward for t in self.trajectories], np.float32)

    @property
    def scenario_ids(self) -> list[str | None]:
        return [t.scenario_id for t in self.trajectories]

    def _subset(self, keep: np.ndarray) -> ConversationDataset:
        index = np.flatnonzero(keep)
        return ConversationDataset(
            tuple(self.trajectories[i] for i in index),
            tuple(self.line_numbers[i] for i in index),
            self.report,
        )

    def filter(
        self,
        predicate: Callable[[MultiTurnTrajectory], bool] | None = None,
        *,
        min_reward: float | None = None,
        top_quantile: float | None = None,
    ) -> ConversationDataset:
        """The rows passing every given test: ``predicate(trajectory)``,
        ``reward >= min_reward``, and (``top_quantile`` in (0, 1]) ``reward >=``
        the ``1 - top_quantile`` quantile of the rewards (ties kept, so more
        than that fraction may pass). An empty result raises ``ValueError``."""
        rewards = self.rewards
        keep = np.ones(len(self), bool)
        if predicate is not None:
            keep &= np.asarray([bool(predicate(t)) for t in self.trajectories], bool)
        if min_reward is not None:
            keep &= rewards >= min_reward
        if top_quantile is not None:
            if not 0.0 < top_quantile <= 1.0:
                raise ValueError(
                    f"filter: top_quantile must be in (0, 1], got {top_quantile}"
                )
            if len(self):
                keep &= rewards >= np.quantile(rewards, 1.0 - top_quantile)
        if not keep.any():
            raise ValueError(
                f"filter: no row of {len(self)} passes (min_reward={min_reward}, "
                f"top_quantile={top_quantile}, predicate={predicate})"
            )
        return self._subset(keep)

    def split(
        self, fraction: float, seed: int = 0
    ) -> tuple[ConversationDataset, ConversationDataset]:
        """``(rest, held)``: the rows of a ``fraction`` of the scenarios
        (``scenario_id``; a row without one is its own scenario) go to
        ``held``, drawn with ``seed``, so no scenario is in both."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"split: fraction must be in (0, 1), got {fraction}")
        ids = [
            sid if sid is not None else f"\x00row{i}"
            for i, sid in enumerate(self.scenario_ids)
        ]
        unique = sorted(set(ids))
        order = np.random.default_rng(seed).permutation(len(unique))
        count = int(round(fraction * len(unique)))
        if not 0 < count < len(unique):
            raise ValueError(
                f"split: {fraction} of {len(unique)} scenarios leaves one side empty"
            )
        held_ids = {unique[i] for i in order[:count]}
        held = np.asarray([sid in held_ids for sid in ids], bool)
        return self._subset(~held), self._subset(held)

    def save(self, path: str | os.PathLike) -> int:
        """Write the rows to JSONL (`save_jsonl`); returns the count."""
        return save_jsonl(path, self.trajectories)

    def to_rows(
        self, tokenizer, max_length: int | None = None, *, skip_long: bool = False
    ) -> OfflineRows:
        """Tokenize every row (`tokenize_trajectory`, the chat template),
        drop the tokens after each row's last assistant token (nothing is
        trained on them) and right-pad with ``tokenizer.pad_id`` to
        ``max_length`` (default: the longest). A row longer than
        ``max_length`` raises ``ValueError`` naming its line, or with
        ``skip_long`` is left out and its line logged as a warning (an agent
        turn cut off without its end-of-turn token is logged as text and comes
        back with one: one token longer). A row without an assistant token
        raises."""
        if not len(self):
            raise ValueError("to_rows: the dataset is empty")
        rows, kept, long_lines = [], [], []
        for i, (trajectory, line) in enumerate(
            zip(self.trajectories, self.line_numbers, strict=True)
        ):
            tokens, mask, loss = tokenize_trajectory(trajectory, tokenizer)
            trained = np.flatnonzero(loss)
            if not len(trained):
                raise ValueError(f"to_rows: line {line}: no assistant turn to train on")
            end = int(trained[-1]) + 1
            if max_length is not None and end > max_length:
                if not skip_long:
                    raise ValueError(
                        f"to_rows: line {line}: {end} tokens, more than "
                        f"max_length={max_length} (skip_long=True leaves such "
                        "rows out)"
                    )
                long_lines.append(line)
                continue
            rows.append((tokens[:end], mask[:end], loss[:end]))
            kept.append(i)
        if long_lines:
            logger.warning(
                "to_rows: %d rows longer than max_length=%s left out, lines %s",
                len(long_lines),
                max_length,
                long_lines,
            )
        if not rows:
            raise ValueError(f"to_rows: no row fits max_length={max_length}")
        length = max_length if max_length is not None else max(len(r[0]) for r in rows)
        out = np.full((3, len(rows), length), 0, np.int32)
        out[0] = tokenizer.pad_id
        for i, row in enumerate(rows):
            for j in range(3):
                out[j, i, : len(row[j])] = row[j]
        kept = np.asarray(kept)
        return OfflineRows(
            out[0],
            out[1],
            out[2],
            self.rewards[kept],
            np.asarray(self.line_numbers, np.int32)[kept],
        )

    def fitting(self, tokenizer, max_length: int) -> ConversationDataset:
        """The rows whose trained part fits ``max_length`` tokens (what
        ``to_rows(tokenizer, max_length, skip_long=True)`` keeps; the lines
        left out are logged as a warning), so `baselines` and `to_rows` see
        the same rows."""
        lines = set(
            self.to_rows(tokenizer, max_length, skip_long=True).line_numbers.tolist()
        )
        return self._subset(np.asarray([n in lines for n in self.line_numbers], bool))

    def baselines(self, kind: str = "scenario") -> np.ndarray:
        """`baselines` of this dataset's rewards and scenario ids."""
        return baselines(self.rewards, self.scenario_ids, kind)


def baselines(
    rewards: np.ndarray, scenario_ids: Sequence[str | None], kind: str = "scenario"
) -> np.ndarray:
    """``[N]`` float32 baselines ``b_i`` for `awr_weights` (host side):
    ``"mean"`` -- the mean reward; ``"scenario"`` -- the mean reward of the rows
    with row ``i``'s ``scenario_id`` (the overall mean where a scenario has a
    single row or no id: its own reward would give it advantage 0)."""
    if kind not in BASELINES:
        raise ValueError(f"baselines: kind must be one of {BASELINES}, got {kind!r}")
    rewards = np.asarray(rewards, np.float64)
    if rewards.ndim != 1 or len(rewards) != len(scenario_ids):
        raise ValueError(
            f"baselines: rewards must be [N] with N = len(scenario_ids) = "
            f"{len(scenario_ids)}, got {rewards.shape}"
        )
    mean = rewards.mean() if len(rewards) else 0.0
    out = np.full(len(rewards), mean)
    if kind == "scenario":
        groups: dict[str, list[int]] = {}
        for i, sid in enumerate(scenario_ids):
            if sid is not None:
                groups.setdefault(sid, []).append(i)
        for index in groups.values():
            if len(index) > 1:
                out[index] = rewards[index].mean()
    return out.astype(np.float32)


# --- the pure core ------------------------------------------------------------------


def awr_weights(returns, baselines, beta, max_weight) -> jax.Array:
    """Advantage weights ``w_i = min(exp(beta (R_i - b_i)), max_weight)``
    (AWR, Peng et al. 2019; IQL's policy extraction, Kostrikov et al. 2021).

    ``returns``, ``baselines``: ``[N]``; ``beta`` (the inverse temperature,
    >= 0; 0 gives plain BC) and ``max_weight`` (> 0): scalars. The exponent is
    clipped at ``log(max_weight)`` before ``exp`` (no overflow). Returns ``[N]``
    float32."""
    chex.assert_rank([returns, baselines], 1)
    chex.assert_equal_shape([returns, baselines])
    beta = jnp.asarray(beta, jnp.float32)
    log_max = jnp.log(jnp.asarray(max_weight, jnp.float32))
    advantage = jnp.asarray(returns, jnp.float32) - jnp.asarray(baselines, jnp.float32)
    return jnp.exp(jnp.minimum(beta * advantage, log_max))


def weighted_nll(token_logprobs, loss_mask, weights) -> jax.Array:
    """Row-weighted NLL of the trained tokens:

        loss = -sum_{i,t} w_i m_{i,t} log p_{i,t} / max(sum_{i,t} m_{i,t}, 1)

    ``token_logprobs``, ``loss_mask``: ``[B, T]`` (``loss_mask`` 0/1);
    ``weights``: ``[B]``. Normalized by the number of trained tokens, not by
    the weights, so the weights scale the step (AWR's ``E[w log pi]``); all
    weights 1 is the masked mean NLL of `llm.sft_loss`."""
    chex.assert_rank([token_logprobs, loss_mask], 2)
    chex.assert_equal_shape([token_logprobs, loss_mask])
    chex.assert_shape(weights, token_logprobs.shape[:1])
    m = (loss_mask > 0).astype(jnp.float32)
    per_row = jnp.sum(token_logprobs * m, -1)
    return -jnp.sum(weights * per_row) / jnp.maximum(m.sum(), 1.0)


# --- the offline program -----------------------------------------------------------


@struct.dataclass
class OfflineHParams:
    """The numbers of an offline run: the AdamW schedule (`llm.SFTHParams`) and
    AWR's ``beta`` and ``max_weight`` (unused by ``"bc"``)."""

    sft: SFTHParams
    beta: jax.Array
    max_weight: jax.Array

    @classmethod
    def create(
        cls,
        learning_rate: float = 1e-3,
        beta: float = 2.0,
        max_weight: float = 20.0,
        **sft,
    ) -> OfflineHParams:
        for name, value, low in (("beta", beta, 0.0), ("max_weight", max_weight, 0.0)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"OfflineHParams.{name} must be a number")
            if (
                not np.isfinite(value)
                or value < low
                or (name == "max_weight" and value == 0)
            ):
                raise ValueError(
                    f"OfflineHParams.{name} must be finite and "
                    f"{'> 0' if name == 'max_weight' else '>= 0'}, got {value}"
                )
        return cls(
            sft=SFTHParams.create(learning_rate=learning_rate, **sft),
            beta=jnp.float32(beta),
            max_weight=jnp.float32(max_weight),
        )


@struct.dataclass
class OfflineState:
    """Parameters, AdamW moments, the batch key, the step."""

    params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array


class OfflineTrainer(NamedTuple):
    """``init(key, params) -> OfflineState``; ``step(state, hparams=None) ->
    (state, metrics)``; ``run(state, hparams=None, num_steps=1)`` (one
    ``lax.scan``; jit / vmap them); ``loss(params, batch, weights)``;
    ``weights(hparams)`` ``[N]`` (AWR's, or ones); ``rows``: the data
    (device arrays); ``evaluate(params, env, held_out=True, num_scenarios=256)``
    -> greedy success."""

    method: str
    model_config: LMConfig
    rows: OfflineRows
    default_hparams: OfflineHParams
    init: Callable
    step: Callable
    run: Callable
    loss: Callable
    weights: Callable
    evaluate: Callable


def make_offline_trainer(
    model_config: LMConfig,
    rows: OfflineRows,
    *,
    method: str = "bc",
    batch_size: int = 32,
    baseline: np.ndarray | None = None,
    hparams: OfflineHParams | None = None,
) -> OfflineTrainer:
    """Offline training of ``model_config``'s model on ``rows`` (see the module
    docstring). ``method``: ``"bc"`` or ``"awr"``; ``baseline`` ``[N]``: AWR's
    ``b_i`` (e.g. `ConversationDataset.baselines`; default the mean reward).
    Bad input raises ``ValueError`` before compiling."""
    if method not in OFFLINE_METHODS:
        raise ValueError(
            f"make_offline_trainer: method must be one of {OFFLINE_METHODS}, got "
            f"{method!r}"
        )
    if not isinstance(model_config, LMConfig):
        raise ValueError(
            f"model_config must be an LMConfig, got {type(model_config).__name__}"
        )
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ValueError("make_offline_trainer: batch_size must be an int >= 1")
    if not isinstance(rows, OfflineRows):
        raise ValueError(
            f"rows must be OfflineRows (ConversationDataset.to_rows), got "
            f"{type(rows).__name__}"
        )
    tokens = np.asarray(rows.tokens)
    if tokens.ndim != 2 or not len(tokens):
        raise ValueError(f"rows.tokens must be [N, L] with N >= 1, got {tokens.shape}")
    for name in ("mask", "loss_mask"):
        if np.shape(getattr(rows, name)) != tokens.shape:
            raise ValueError(f"rows.{name} must be {list(tokens.shape)}")
    if np.shape(rows.rewards) != tokens.shape[:1]:
        raise ValueError(f"rows.rewards must be [{len(tokens)}]")
    if tokens.shape[1] > model_config.max_position_embeddings:
        raise ValueError(
            f"rows of {tokens.shape[1]} tokens exceed LMConfig."
            f"max_position_embeddings={model_config.max_position_embeddings}"
        )
    if tokens.max() >= model_config.vocab_size:
        raise ValueError(
            f"rows hold token id {tokens.max()} >= LMConfig.vocab_size="
            f"{model_config.vocab_size}"
        )
    rewards = np.asarray(rows.rewards, np.float32)
    if baseline is None:
        baseline = np.full_like(rewards, rewards.mean())
    baseline = np.asarray(baseline, np.float32)
    if baseline.shape != rewards.shape:
        raise ValueError(
            f"baseline must be [N] = [{len(rewards)}], got {list(baseline.shape)}"
        )
    data = OfflineRows(
        jnp.asarray(tokens, jnp.int32),
        jnp.asarray(rows.mask, jnp.int32),
        jnp.asarray(rows.loss_mask, jnp.int32),
        jnp.asarray(rewards),
        jnp.asarray(np.asarray(rows.line_numbers), jnp.int32),
    )
    baseline = jnp.asarray(baseline)
    default_hparams = OfflineHParams.create() if hparams is None else hparams
    moments = optax.scale_by_adam()
    mc = model_config
    count = tokens.shape[0]

    def weights(hp: OfflineHParams | None = None):
        hp = default_hparams if hp is None else hp
        if method == "bc":
            return jnp.ones((count,), jnp.float32)
        return awr_weights(data.rewards, baseline, hp.beta, hp.max_weight)

    def loss(params, batch, batch_weights):
        tokens, mask, loss_mask = batch
        logp = token_logprobs(params, mc, tokens, mask)
        return weighted_nll(logp, loss_mask[:, 1:], batch_weights)

    def init(key, params) -> OfflineState:
        check_params(mc, params)
        return OfflineState(params, moments.init(params), key, jnp.zeros((), jnp.int32))

    def step(state: OfflineState, hparams: OfflineHParams | None = None):
        hp = default_hparams if hparams is None else hparams
        index = jax.random.randint(
            jax.random.fold_in(state.key, state.step), (batch_size,), 0, count
        )
        batch = (data.tokens[index], data.mask[index], data.loss_mask[index])
        w = weights(hp)[index]
        value, grads = jax.value_and_grad(loss)(state.params, batch, w)
        params, opt_state, grad_norm, lr = adamw_update(
            moments, grads, state.opt_state, state.params, state.step, hp.sft
        )
        state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return state, {
            "loss": value,
            "grad_norm": grad_norm,
            "learning_rate": lr,
            "mean_weight": w.mean(),
            "batch_reward": data.rewards[index].mean(),
        }

    def run(state, hparams=None, num_steps: int = 1):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
            raise ValueError(f"run: num_steps must be an int, got {num_steps!r}")
        return jax.lax.scan(lambda s, _: step(s, hparams), state, None, int(num_steps))

    def evaluate(params, env: TaskEnv, held_out: bool = True, num_scenarios: int = 256):
        """Greedy success on the `multiturn` evaluation scenarios."""
        scenarios = mt._eval_scenarios(env, int(num_scenarios), bool(held_out))
        return mt._success_rate(params, mc, env, scenarios, jax.random.key(1), 0.0)

    return OfflineTrainer(
        method=method,
        model_config=mc,
        rows=data,
        default_hparams=default_hparams,
        init=init,
        step=step,
        run=run,
        loss=loss,
        weights=weights,
        evaluate=evaluate,
    )


# --- hybrid offline -> online ------------------------------------------------------


def hybrid_penalty(params, rows: OfflineRows, offline_weight) -> PenaltyState:
    """The `continual.PenaltyState` of the hybrid's offline term: ``rows``
    (their tokens, mask, loss mask) replayed at weight ``offline_weight``
    (``ContinualHParams.replay_ratio``, in [0, 1]) in every online update."""
    if not isinstance(offline_weight, jax.core.Tracer):
        ContinualHParams.create(replay_ratio=float(offline_weight))  # validates
    hparams = ContinualHParams.create().replace(
        replay_ratio=jnp.asarray(offline_weight, jnp.float32)
    )
    return penalty_state(params, hparams, rows=tuple(rows[:3]))


class Hybrid(NamedTuple):
    """``offline``: the `OfflineTrainer` of the pre-training; ``online``: the
    `multiturn.MultiTurnGRPO` with the replay term; ``penalty(params,
    offline_weight)``: its `PenaltyState` on the offline rows; ``run(key,
    params, offline_steps, online_steps, offline_weight)`` -> ``(GRPOState,
    offline metrics, online metrics)``."""

    offline: OfflineTrainer
    online: mt.MultiTurnGRPO
    penalty: Callable
    run: Callable


def make_hybrid(
    config: GRPOConfig,
    model_config: LMConfig,
    env: TaskEnv,
    rows: OfflineRows,
    *,
    method: str = "bc",
    batch_size: int = 32,
    baseline: np.ndarray | None = None,
    hparams: OfflineHParams | None = None,
    replay_rows: OfflineRows | None = None,
) -> Hybrid:
    """Offline pre-training on ``rows`` (`make_offline_trainer` with
    ``method``, ``batch_size``, ``baseline``, ``hparams``), then multi-turn GRPO
    (``config``) with ``replay_rows`` (default ``rows``) replayed as an NLL
    term at weight ``offline_weight`` in each update."""
    trainer = make_offline_trainer(
        model_config,
        rows,
        method=method,
        batch_size=batch_size,
        baseline=baseline,
        hparams=hparams,
    )
    online = mt.make_multiturn_grpo(config, model_config, env, continual="replay")
    replayed = trainer.rows if replay_rows is None else replay_rows
    if np.shape(replayed.tokens)[1] > model_config.max_position_embeddings:
        raise ValueError(
            f"make_hybrid: replay_rows of {np.shape(replayed.tokens)[1]} tokens "
            f"exceed LMConfig.max_position_embeddings="
            f"{model_config.max_position_embeddings}"
        )

    def penalty(params, offline_weight):
        return hybrid_penalty(params, replayed, offline_weight)

    def run(key, params, offline_steps: int, online_steps: int, offline_weight):
        k_off, k_on = jax.random.split(key)
        state, off_metrics = trainer.run(
            trainer.init(k_off, params), None, int(offline_steps)
        )
        online_state = online.init(k_on, state.params)
        online_state, on_metrics = online.run(
            online_state,
            None,
            int(online_steps),
            penalty=penalty(state.params, offline_weight),
        )
        return online_state, off_metrics, on_metrics

    return Hybrid(offline=trainer, online=online, penalty=penalty, run=run)


# --- logging a policy's conversations ----------------------------------------------


def log_conversations(
    params,
    model_config: LMConfig,
    env: TaskEnv,
    key,
    *,
    num_scenarios: int,
    group_size: int = 1,
    temperatures: Sequence[float] = (1.0,),
    held_out: bool = False,
    policy: str = "behaviour",
    chunk: int = 512,
) -> list[MultiTurnTrajectory]:
    """The conversations of ``params`` on ``num_scenarios`` scenarios (drawn
    from ``key``), each played ``group_size`` times at each of
    ``temperatures`` (0 is greedy): ``num_scenarios * group_size *
    len(temperatures)`` `MultiTurnTrajectory` (`task_env.to_trajectories`:
    the env's 0/1 reward as ``final_reward``), their metadata extended with
    ``policy``, ``temperature`` and ``scenario`` (the index). The scenario's
    order id is the ``scenario_id`` (the group `baselines` averages over).
    Played ``chunk`` conversations per compiled call."""
    for name, value in (
        ("num_scenarios", num_scenarios),
        ("group_size", group_size),
        ("chunk", chunk),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"log_conversations: {name} must be an int >= 1")
    temperatures = [float(t) for t in temperatures]
    if not temperatures or any(not np.isfinite(t) or t < 0 for t in temperatures):
        raise ValueError(
            f"log_conversations: temperatures must be >= 0, got {temperatures}"
        )
    check_params(model_config, params)
    env.check_model(model_config)
    k_scen, k_play = jax.random.split(key)
    scenarios = jax.tree.map(
        np.asarray, env.sample_scenarios(k_scen, num_scenarios, bool(held_out))
    )
    index = np.repeat(np.arange(num_scenarios), group_size)
    chunk = min(chunk, len(index))
    play = jax.jit(
        lambda p, keys, sc, t: mt.conversations(p, model_config, env, keys, sc, t)
    )
    out: list[MultiTurnTrajectory] = []
    for ti, temperature in enumerate(temperatures):
        for start in range(0, len(index), chunk):
            rows = index[start : start + chunk]
            size = len(rows)
            pad = chunk - size  # one compiled shape
            rows_padded = np.concatenate([rows, np.zeros(pad, rows.dtype)])
            batch = jax.tree.map(lambda x, r=rows_padded: jnp.asarray(x[r]), scenarios)
            keys = jax.random.split(
                jax.random.fold_in(k_play, ti * 10**6 + start), chunk
            )
            conv = play(params, keys, batch, jnp.float32(temperature))
            conv = jax.tree.map(lambda x, n=size: np.asarray(x)[:n], conv)
            for row, trajectory in zip(
                rows, to_trajectories(env, conv, held_out=bool(held_out)), strict=True
            ):
                out.append(
                    dataclasses.replace(
                        trajectory,
                        metadata={
                            **trajectory.metadata,
                            "policy": policy,
                            "temperature": temperature,
                            "scenario": int(row),
                        },
                    )
                )
    return out
