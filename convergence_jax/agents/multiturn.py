"""Multi-turn GRPO / GSPO on a `TaskEnv`: whole conversations as one compiled
program, trajectory-level group advantages, the loss on the agent's tokens only.

    from convergence_jax import llm, lm
    from convergence_jax.agents import multiturn
    from convergence_jax.agents.task_env import customer_service_env

    env = customer_service_env(lm.ByteTokenizer())
    sft = multiturn.make_multiturn_sft(model_config, env, num_demos=4096,
                                       batch_size=32)
    warm = sft.init(key)                                  # random init + demos
    warm, train_success = sft.run_until(warm, target=0.2, max_steps=2000)

    config = llm.GRPOConfig(loss="gspo", num_prompts=8, group_size=8,
                            learning_rate=3e-4)
    program = multiturn.make_multiturn_grpo(config, model_config, env)
    state = program.init(key, warm.params)
    state, metrics = program.run(state, num_steps=100)     # one lax.scan
    program.evaluate(state.params, held_out=True)          # greedy success rate

**The rollout** (`conversations`): ``num_prompts`` scenarios, each played
``group_size`` times. The prompt (the user's first message) is prefilled into a
KV cache sized for the whole conversation; then a ``lax.scan`` over
``env.max_turns`` turns: the agent's turn is sampled token by token (a
``lax.while_loop`` of at most ``env.turn_tokens`` steps that stops when every
conversation has emitted its end-of-turn token; one key per conversation, folded
with the token's index), `TaskEnv.step` parses it and returns the user's or the
tool's reply, which is fed into the cache in one forward pass. Finished
conversations feed masked padding. Everything is one XLA program.

**Learning** reuses `convergence_jax.llm.make_grpo`'s ``learn``: the whole
conversation after the prompt is the completion (``[P, G, C]``, ``C =
env.completion_length``); its ``mask`` (every real token) is the attention mask
and `Rollout.loss_mask` (the agent's tokens) the loss mask, so the policy attends
to the user and tool tokens and is trained on its own. The reward of a
conversation is the env's verifiable outcome (1 success, else 0); advantages are
group-relative over the ``G`` conversations of a scenario (trajectory level),
and every agent token of a conversation gets its conversation's advantage. Any
group loss of `llm.LOSSES` works (grpo, dr_grpo, dapo, gspo, gspo_token, gepo);
GSPO's sequence-level ratio is the geometric mean over the agent tokens.
(``vapo`` and ``ppo``, whose token-level GAE would run through the user's and
the tool's tokens, are rejected; turn-level credit is the multi-turn form.)

**Turn-level credit** (``make_multiturn_grpo(..., turn_credit="gae")``, opt
in): a conversation is an MDP over agent turns -- state ``s_t`` the
conversation before agent turn ``t``, action the turn, reward ``r_t`` the env's
reward of that turn (`Conversations.turn_rewards`; the customer-service env
pays its 0/1 outcome on the last turn; a host reward ``[P, G]`` is put on the
last turn, or give ``[P, G, T]`` per turn). A value model -- the VAPO / PPO one
of `llm.grpo` (`llm.grpo.init_value_model`: a copy of the policy's trunk with a
zero scalar head) -- reads ``V(s_t)`` at the token before the turn (the
prompt's last token for ``t = 0``, the previous reply's last one after).
Advantages are GAE over the turns (`turn_gae`: `llm.value.token_gae` on the
``[B, T]`` turn arrays, masked after the conversation's last turn, 0 bootstrap
after it), whitened over the batch's turns, and every agent token of turn ``t``
gets ``A_t`` (`spread_over_tokens`); ``"gae+group"`` adds the conversation's
group advantage. The value model regresses on the GAE returns ``A_t + V(s_t)``
(`llm.value.token_value_loss`, clipped by ``value_clip_eps``, finished turns
masked), ``num_epochs`` Adam steps per learn step. The numbers are
`GRPOConfig`'s value-model fields: ``gamma`` (static), ``gae_lambda`` and
``value_learning_rate`` (in `GRPOHParams`: sweep them under vmap).

**SFT warm-up** (`make_multiturn_sft`): a fixed set of ``num_demos``
demonstrations by the env's scripted expert (`expert_conversations`, the same
token layout), trained with the masked next-token NLL on the agent's tokens
(AdamW, `llm.sft.adamw_update`); ``run_until`` stops at a target greedy success
on training scenarios. Measured (2 layers, width 64, seed 0): with 32
demonstrations the model memorizes them (loss 0.006 after 250 steps) and never
copies an unseen order id (greedy success 0-1.6% up to 400 steps); with 4,096 it
reaches 14% train / 12.5% held-out success after 200 steps of batch 32.

**Continual learning** (``make_multiturn_grpo(..., continual="ewc")``, opt
in): a term of `convergence_jax.agents.continual` added to the policy loss of
every update, through `llm.make_grpo`'s ``extra_loss``, on a
`continual.PenaltyState` (``continual.penalty_state(old_params, hparams,
fisher=..., rows=...)``) given to ``step`` / ``run`` / ``learn`` /
``train(penalty=...)``: ``"ewc"`` (the diagonal Fisher of the earlier task,
e.g. `continual.fisher_diagonal` on its demonstrations), ``"lwf"`` (the KL
from the earlier policy at the agent's tokens of the conversations trained
on) or ``"replay"`` (a weighted NLL of rows of the earlier task, drawn each
step). A zero weight gives the plain GRPO update.

`train` is the high-level entry point (profiles, orbax checkpoints, exact
resume).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import PartitionSpec as P

from convergence_jax.agents.continual import (
    PenaltyState,
    policy_penalty,
)
from convergence_jax.agents.task_env import (
    INVALID,
    Conversations,
    Scenarios,
    TaskEnv,
    _conversations,
    expert_conversations,
    to_trajectories,
)
from convergence_jax.distributed import AXIS, global_mesh
from convergence_jax.llm.advantages import ADVANTAGES
from convergence_jax.llm.grpo import (
    GRPOConfig,
    GRPOHParams,
    GRPOState,
    Rollout,
    _apply,
    _optimizer,
    init_value_model,
    make_grpo,
    value_model_values,
)
from convergence_jax.llm.losses import LOSSES
from convergence_jax.llm.sft import SFTHParams, adamw_update
from convergence_jax.llm.value import masked_whiten, token_gae, token_value_loss
from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.generate import completion_logprobs, sample_token
from convergence_jax.lm.model import check_params, forward, init_cache, init_params

__all__ = [
    "PROFILES",
    "CONTINUAL",
    "TURN_CREDIT",
    "MultiTurnGRPO",
    "MultiTurnSFT",
    "TrainResult",
    "WarmupState",
    "conversation_rows",
    "conversations",
    "make_multiturn_grpo",
    "make_multiturn_sft",
    "spread_over_tokens",
    "train",
    "turn_gae",
    "turn_starts",
]

TURN_CREDIT = ("gae", "gae+group")
"""`make_multiturn_grpo`'s ``turn_credit`` modes: ``"gae"`` -- each agent
token of turn ``t`` gets the turn's GAE advantage ``A_t`` alone; ``"gae+group"``
-- ``A_t`` plus the conversation's group advantage."""

EVAL_SEED = 10**6
"""Evaluation scenarios come from ``jax.random.key(EVAL_SEED)`` (held-out split
and training split folded apart), a stream no training run consumes."""


# --- the rollout --------------------------------------------------------------


def conversations(
    params,
    model_config: LMConfig,
    env: TaskEnv,
    keys: jax.Array,
    scenarios: Scenarios,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
) -> Conversations:
    """Play one conversation per scenario ``[B]`` with the model ``params``.

    ``keys``: ``[B]`` typed keys, one per conversation (token ``s`` of turn
    ``t`` is drawn with ``fold_in(key, t * N + s)``); ``temperature`` 0 is
    greedy. Pure JAX: jit / vmap it. Returns `Conversations` in the env's token
    layout, with the sampler's log-probs (``log_softmax(logits /
    temperature)``) on the agent's tokens.
    """
    mc = model_config
    prompt = env.prompt(scenarios)
    prompt_tokens, prompt_mask = prompt
    b, lp = prompt_tokens.shape
    n, r = env.turn_tokens, env.reply_tokens
    stops = jnp.asarray(env.stop_tokens, jnp.int32)
    pad = env.pad_id
    cache = init_cache(mc, b, env.sequence_length)
    logits, cache = forward(params, mc, prompt_tokens, prompt_mask, cache=cache)
    top_k = jnp.asarray(top_k, jnp.int32)
    top_p = jnp.asarray(top_p, jnp.float32)

    def turn(carry, t):
        cache, last, state = carry
        base = lp + t * (n + r)

        def cond(c):
            s, _, _, done, _ = c
            return (s < n) & ~jnp.all(done)

        def body(c):
            s, cache, last, done, (tok_buf, mask_buf, logp_buf) = c
            step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t * n + s))(keys)
            token, logp = sample_token(step_keys, last, temperature, top_k, top_p)
            active = ~done
            token = jnp.where(active, token, pad)
            tok_buf = tok_buf.at[:, s].set(token)
            mask_buf = mask_buf.at[:, s].set(active.astype(jnp.int32))
            logp_buf = logp_buf.at[:, s].set(jnp.where(active, logp, 0.0))
            logits, cache = forward(
                params,
                mc,
                token[:, None],
                active[:, None].astype(jnp.int32),
                cache=cache,
            )
            done = done | (active & jnp.isin(token, stops))
            return s + 1, cache, logits[:, -1], done, (tok_buf, mask_buf, logp_buf)

        buffers = (
            jnp.full((b, n), pad, jnp.int32),
            jnp.zeros((b, n), jnp.int32),
            jnp.zeros((b, n), jnp.float32),
        )
        _, cache, last, _, (tokens, mask, logp) = jax.lax.while_loop(
            cond, body, (jnp.zeros((), jnp.int32), cache, last, state.done, buffers)
        )
        # Unwritten agent slots stay masked; the reply starts at a fixed column.
        cache = cache._replace(index=jnp.asarray(base + n, jnp.int32))
        state, reply_tokens, reply_mask, info = env.step(state, tokens, mask)

        def feed(cache, last):
            logits, cache = forward(params, mc, reply_tokens, reply_mask, cache=cache)
            length = reply_mask.sum(-1)
            fed = logits[jnp.arange(b), jnp.maximum(length - 1, 0)]
            return cache, jnp.where(length[:, None] > 0, fed, last)

        # After the last turn nothing is generated (and the cache has no room).
        cache, last = jax.lax.cond(
            t < env.max_turns - 1, feed, lambda c, x: (c, x), cache, last
        )
        return (cache, last, state), (
            (tokens, mask, logp, reply_tokens, reply_mask),
            info,
        )

    (_, _, state), (turns, infos) = jax.lax.scan(
        turn,
        (cache, logits[:, -1], env.reset(scenarios)),
        jnp.arange(env.max_turns),
    )
    return _conversations(env, scenarios, prompt, turns, state, infos)


def _conversation_metrics(conv: Conversations) -> dict:
    active = conv.reply_kinds >= 0  # [B, T]
    taken = (jnp.arange(conv.actions.shape[1]) < conv.num_turns[:, None]) & active
    invalid = jnp.sum((conv.actions == INVALID) & taken) / jnp.maximum(taken.sum(), 1)
    return {
        "success": conv.success.mean().astype(jnp.float32),
        "reward": conv.rewards.mean(),
        "num_turns": conv.num_turns.mean().astype(jnp.float32),
        "invalid_turns": invalid.astype(jnp.float32),
        "agent_tokens": conv.loss_mask.sum(-1).mean().astype(jnp.float32),
    }


def _eval_scenarios(env: TaskEnv, num: int, held_out: bool, key=None):
    key = jax.random.key(EVAL_SEED) if key is None else key
    return env.sample_scenarios(jax.random.fold_in(key, int(held_out)), num, held_out)


def _success_rate(params, mc, env, scenarios, key, temperature):
    keys = jax.random.split(key, scenarios.order.shape[0])
    conv = conversations(params, mc, env, keys, scenarios, temperature)
    return conv.success.mean().astype(jnp.float32)


# --- turn-level credit --------------------------------------------------------------


def turn_gae(
    turn_rewards: jax.Array,
    turn_values: jax.Array,
    num_turns: jax.Array,
    *,
    gamma: float | jax.Array = 1.0,
    gae_lambda: float | jax.Array = 0.95,
) -> tuple[jax.Array, jax.Array]:
    """GAE over a conversation's agent turns (Schulman et al. 2016, arXiv
    1506.02438): `llm.value.token_gae` on turns instead of tokens::

        delta_t = r_t + gamma V(s_{t+1}) - V(s_t)   (V after the last turn: 0)
        A_t     = delta_t + gamma lambda A_{t+1}
        R_t     = A_t + V(s_t)

    ``turn_rewards``, ``turn_values``: ``[B, T]``; ``num_turns``: ``[B]`` (turns
    ``t >= num_turns`` are masked: they count nothing). Returns
    ``(advantages, returns)``, ``[B, T]``, 0 on masked turns.
    """
    if turn_rewards.ndim != 2 or turn_values.shape != turn_rewards.shape:
        raise ValueError(
            f"turn_gae: turn_rewards and turn_values must be [B, T] of one shape, "
            f"got {turn_rewards.shape} and {turn_values.shape}"
        )
    if num_turns.shape != turn_rewards.shape[:1]:
        raise ValueError(
            f"turn_gae: num_turns must be [B] = {list(turn_rewards.shape[:1])}, got "
            f"{list(num_turns.shape)}"
        )
    mask = jnp.arange(turn_rewards.shape[1])[None, :] < num_turns[:, None]
    return token_gae(
        turn_rewards.astype(jnp.float32),
        turn_values.astype(jnp.float32),
        mask,
        gamma=gamma,
        gae_lambda=gae_lambda,
    )


def turn_starts(agent_lengths: jax.Array, reply_lengths: jax.Array) -> jax.Array:
    """``[B, T]``: the packed column (`Conversations.tokens`) of each agent
    turn's first token (past the end for turns not taken)."""
    block = agent_lengths + reply_lengths
    return jnp.cumsum(block, -1) - block


def spread_over_tokens(
    per_turn: jax.Array,
    agent_lengths: jax.Array,
    reply_lengths: jax.Array,
    length: int,
) -> jax.Array:
    """``[B, T] -> [B, length]``: each packed token gets the value of the turn
    it belongs to (an agent turn and the reply after it form turn ``t``'s
    block; padding gets the last turn's). Multiply by ``loss_mask`` to keep the
    agent's tokens."""
    ends = jnp.cumsum(agent_lengths + reply_lengths, -1)  # [B, T]
    column = jnp.arange(length)
    turn = jnp.sum(column[None, :, None] >= ends[:, None, :], -1)
    turn = jnp.minimum(turn, per_turn.shape[1] - 1)
    return jnp.take_along_axis(per_turn, turn, -1)


def _turn_values(value_params, model_config: LMConfig, conv: Conversations):
    """``V(s_t)`` ``[B, T]``: the value model at the column before each agent
    turn's first token (`llm.grpo.value_model_values` reads column ``j``'s
    value from the token before it)."""
    values = value_model_values(
        value_params,
        model_config,
        conv.prompt_tokens,
        conv.prompt_mask,
        conv.tokens[:, None],
        conv.mask[:, None],
    )[:, 0]
    starts = jnp.minimum(
        turn_starts(conv.agent_lengths, conv.reply_lengths), values.shape[1] - 1
    )
    return jnp.take_along_axis(values, starts, -1)


# --- the GRPO program -------------------------------------------------------------


class MultiTurnGRPO(NamedTuple):
    """Pure functions over `GRPOState` (see the module docstring).

    ``init(key, params, hparams=None) -> GRPOState``;
    ``step(state, hparams=None) -> (state, metrics)`` (jitted);
    ``run(state, hparams=None, num_steps=1) -> (state, metrics [num_steps])``
    (one ``lax.scan``, jitted; vmap it over states and hparams for seeds);
    ``sample(state, hparams=None) -> (state, Conversations)`` and
    ``learn(state, conversations, rewards [P, G], hparams=None) -> (state,
    metrics)`` (a Python reward between them);
    ``evaluate(params, held_out=True, greedy=True, num_scenarios=256, key=None)
    -> success rate`` (held out: held-out orders *and* held-out users);
    ``turn_values(value_params, conversations) -> V(s_t) [B, T]`` (turn
    credit only; None without it). With ``continual``, ``step``, ``run`` and
    ``learn`` take ``penalty=`` (a `continual.PenaltyState`).
    """

    config: GRPOConfig
    model_config: LMConfig
    env: TaskEnv
    grpo: Any
    default_hparams: GRPOHParams
    init: Callable
    step: Callable
    run: Callable
    sample: Callable
    learn: Callable
    evaluate: Callable
    turn_credit: str | None = None
    turn_values: Callable | None = None
    continual: str | None = None


CONTINUAL = ("replay", "lwf", "ewc")
"""`make_multiturn_grpo`'s ``continual`` terms (`continual.policy_penalty`)."""


def conversation_rows(mb) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A GRPO minibatch's conversations as ``[p * g, P + C]`` rows ``(tokens,
    mask, loss_mask)``: the (left-padded) prompt then the conversation, trained
    on the agent's tokens (``loss_mask > 0``)."""
    p, g, n = mb["tokens"].shape

    def rep(x):
        return jnp.repeat(x, g, axis=0)

    prompt_mask = rep(mb["prompt_mask"]).astype(jnp.int32)
    tokens = jnp.concatenate(
        [rep(mb["prompt_tokens"]), mb["tokens"].reshape(p * g, n)], axis=-1
    )
    mask = jnp.concatenate(
        [prompt_mask, mb["mask"].reshape(p * g, n).astype(jnp.int32)], axis=-1
    )
    trained = (mb["loss_mask"].reshape(p * g, n) > 0).astype(jnp.int32)
    loss_mask = jnp.concatenate([jnp.zeros_like(prompt_mask), trained], axis=-1)
    return tokens, mask, loss_mask


def make_multiturn_grpo(
    config: GRPOConfig,
    model_config: LMConfig,
    env: TaskEnv,
    *,
    turn_credit: str | None = None,
    continual: str | None = None,
) -> MultiTurnGRPO:
    """The multi-turn program of ``model_config``'s model on ``env``.

    ``config.num_prompts`` scenarios x ``config.group_size`` conversations per
    step; ``config.max_new_tokens`` is ignored (a conversation's length is the
    env's ``completion_length``). ``turn_credit``: None (every agent token gets
    its conversation's group advantage) or a mode of `TURN_CREDIT` (a value
    model and GAE over turns; see the module docstring), with ``config``'s
    ``gamma``, ``gae_lambda``, ``value_learning_rate`` and ``value_clip_eps``.
    ``ValueError`` before compiling for: a loss other than a group loss of
    `llm.LOSSES`, DAPO's dynamic sampling or overlong filter / punishment set
    on (their notion of a truncated completion is one without a stop token,
    which a conversation always lacks; off for dapo here), a continual term on
    more than one device, an env whose tokens or length do not fit the model,
    an unknown ``turn_credit`` or out-of-range turn-credit numbers (``gamma`` and
    ``gae_lambda`` in [0, 1], ``value_learning_rate`` > 0, ``value_clip_eps``
    None or > 0; no ``off_policy_threshold``: its mask is per conversation),
    and everything `llm.make_grpo` rejects.

    ``continual``: None, or a term of `CONTINUAL` added to the policy loss of
    every update (`continual.policy_penalty` on the ``penalty`` state given to
    ``step`` / ``run`` / ``learn``, anchored at the earlier task's policy):
    ``"ewc"`` -- ``lambda / 2 sum_i F_i (theta_i - theta*_i)**2``; ``"lwf"`` --
    ``lwf_beta`` times the KL from the anchored policy to the current one at
    the agent's tokens of the minibatch's conversations (temperature
    ``lwf_temperature``); ``"replay"`` -- ``replay_ratio`` times the NLL of
    ``num_prompts * group_size`` rows drawn each step from ``penalty.rows``
    (the earlier task's demonstrations, e.g. `tokenize_trajectories`).
    """
    if not isinstance(env, TaskEnv):
        raise ValueError(f"env must be a TaskEnv, got {type(env).__name__}")
    if not isinstance(model_config, LMConfig):
        raise ValueError(
            f"model_config must be an LMConfig, got {type(model_config).__name__}"
        )
    if config.loss not in LOSSES:
        raise ValueError(
            f"GRPOConfig.loss must be a group loss {sorted(LOSSES)} for multi-turn "
            f"GRPO, got {config.loss!r} (for credit from a value model use "
            f"make_multiturn_grpo(..., turn_credit='gae'))"
        )
    if turn_credit is not None:
        _check_turn_credit(config, turn_credit)
    if continual is not None and continual not in CONTINUAL:
        raise ValueError(
            f"make_multiturn_grpo: continual must be None or one of "
            f"{list(CONTINUAL)}, got {continual!r}"
        )
    for name in ("dynamic_sampling", "overlong_filter", "soft_overlong"):
        if getattr(config, name):
            raise ValueError(
                f"GRPOConfig.{name} is not supported in multi-turn GRPO (a "
                "conversation has no single stop token); leave it None"
            )
    if config.num_devices != 1 and continual is not None:
        raise ValueError(
            f"make_multiturn_grpo: continual={continual!r} runs on one device "
            f"(num_devices=1), got num_devices={config.num_devices}"
        )
    env.check_model(model_config)
    inner_config = dataclasses.replace(
        config,
        max_new_tokens=env.completion_length,
        dynamic_sampling=False,
        overlong_filter=False,
        soft_overlong=False,
    )

    def extra_loss(params, mb, extra):
        penalty, replayed = extra
        rows = replayed if continual == "replay" else None
        if continual == "lwf":
            rows = conversation_rows(mb)
        return policy_penalty(continual, params, penalty, model_config, rows)

    grpo = make_grpo(
        inner_config,
        model_config,
        None,
        extra_loss=None if continual is None else extra_loss,
    )
    mc = model_config
    num_dev = config.num_devices
    # Data parallel: every device plays its share of the step's conversations
    # (scenarios and keys are drawn for the whole batch first, so the numbers are
    # those of one device), and grpo.learn splits the updates over the same mesh.
    mesh = global_mesh(num_dev, AXIS) if num_dev > 1 else None
    num_prompts, group = config.num_prompts, config.group_size
    num_turns_max, length = env.max_turns, env.completion_length
    default_hparams = grpo.default_hparams
    group_advantage = ADVANTAGES[inner_config.recipe().advantage]

    def init(key, params, hparams=None) -> GRPOState:
        state = grpo.init(key, params, hparams)
        if turn_credit is None:
            return state
        hp = default_hparams if hparams is None else hparams
        value_params = init_value_model(state.params, mc)
        tx = _optimizer(hp.max_grad_norm, hp.weight_decay)
        return state.replace(
            value_params=value_params, value_opt_state=tx.init(value_params)
        )

    def turn_values(value_params, conv: Conversations):
        return _turn_values(value_params, mc, conv)

    def sample_local(state: GRPOState, hp):
        key, k_scen, k_roll = jax.random.split(state.key, 3)
        scenarios = env.sample_scenarios(k_scen, num_prompts, held_out=False)
        repeated = jax.tree.map(lambda x: jnp.repeat(x, group, 0), scenarios)
        keys = jax.vmap(
            lambda k: jax.vmap(lambda g: jax.random.fold_in(k, g))(jnp.arange(group))
        )(jax.random.split(k_roll, num_prompts)).reshape(num_prompts * group)

        def play(params, keys, scenarios, temperature):
            return conversations(
                params,
                mc,
                env,
                keys,
                scenarios,
                temperature,
                config.top_k,
                config.top_p,
            )

        if mesh is not None:
            # The turn loops start from constants filled per device, which the
            # varying-axis check rejects (as in llm.grpo's sampler).
            play = jax.shard_map(
                play,
                mesh=mesh,
                in_specs=(P(), P(AXIS), P(AXIS), P()),
                out_specs=P(AXIS),
                check_vma=False,
            )
        conv = play(state.params, keys, repeated, hp.temperature)
        return state.replace(key=key), conv

    def to_rollout(conv: Conversations) -> Rollout:
        c = env.completion_length

        def grouped(x):
            return x.reshape(num_prompts, group, c)

        return Rollout(
            prompt_tokens=conv.prompt_tokens[::group],
            prompt_mask=conv.prompt_mask[::group],
            tokens=grouped(conv.tokens),
            mask=grouped(conv.mask),
            logprobs=grouped(conv.logprobs),
            problem=None,
            loss_mask=grouped(conv.loss_mask),
        )

    def value_update(state: GRPOState, conv, old_values, returns, mask, hp):
        """``num_epochs`` full-batch Adam steps of the value model on the
        (clipped) regression to the GAE returns of the taken turns."""
        tx = _optimizer(hp.max_grad_norm, hp.weight_decay)

        def loss_fn(value_params):
            loss, metrics = token_value_loss(
                turn_values(value_params, conv),
                old_values,
                returns,
                mask,
                clip_eps=config.value_clip_eps,
                aggregation="token-mean",
            )
            return loss, metrics

        def body(carry, _):
            value_params, opt_state = carry
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                value_params
            )
            value_params, opt_state = _apply(
                tx, grads, opt_state, value_params, hp.value_learning_rate
            )
            return (value_params, opt_state), (loss, metrics["value_clip_fraction"])

        (value_params, opt_state), (losses, clipped) = jax.lax.scan(
            body, (state.value_params, state.value_opt_state), None, config.num_epochs
        )
        state = state.replace(value_params=value_params, value_opt_state=opt_state)
        return state, {
            "value_loss": losses[0],
            "value_clip_fraction": clipped.mean(),
        }

    def extra_of(state: GRPOState, penalty):
        """``learn``'s ``extra`` for the continual term: the penalty state and,
        for replay, this step's rows drawn from ``penalty.rows``."""
        if continual is None:
            return None
        replayed = None
        if continual == "replay":
            pool = penalty.rows
            count = pool.tokens.shape[0]
            key = jax.random.fold_in(state.key, 0x5E1A)
            index = jax.random.randint(key, (num_prompts * group,), 0, count)
            replayed = jax.tree.map(lambda x: x[index], pool)
        return penalty, replayed

    def credit_learn(state: GRPOState, conv, rewards, hp, penalty=None):
        b = num_prompts * group
        taken = jnp.arange(num_turns_max)[None, :] < conv.num_turns[:, None]
        if rewards.ndim == 3:  # per turn
            per_turn = rewards.reshape(b, num_turns_max) * taken
        else:  # the conversation's reward, paid on its last turn
            last = jax.nn.one_hot(
                jnp.maximum(conv.num_turns - 1, 0), num_turns_max, dtype=jnp.float32
            )
            per_turn = last * rewards.reshape(b, 1)
        totals = per_turn.sum(-1).reshape(num_prompts, group)
        old_values = jax.lax.stop_gradient(turn_values(state.value_params, conv))
        advantages, returns = turn_gae(
            per_turn,
            old_values,
            conv.num_turns,
            gamma=config.gamma,
            gae_lambda=hp.gae_lambda,
        )
        weights = conv.loss_mask.astype(jnp.float32)
        token_advantages = weights * spread_over_tokens(
            masked_whiten(advantages, taken),
            conv.agent_lengths,
            conv.reply_lengths,
            length,
        )
        if turn_credit == "gae+group":
            grouped = group_advantage(
                totals.reshape(-1), group, epsilon=config.advantage_epsilon
            )
            token_advantages = token_advantages + weights * grouped[:, None]
        state, metrics = grpo.learn(
            state,
            to_rollout(conv),
            totals,
            hp,
            advantages=token_advantages.reshape(num_prompts, group, length),
            extra=extra_of(state, penalty),
        )
        state, value_metrics = value_update(state, conv, old_values, returns, taken, hp)
        valid = taken.astype(jnp.float32)
        count = jnp.maximum(valid.sum(), 1.0)
        residual = jnp.where(taken, returns - old_values, 0.0)
        mean_return = jnp.sum(returns * valid) / count
        var_return = jnp.sum(jnp.square(returns - mean_return) * valid) / count
        var_residual = jnp.sum(jnp.square(residual) * valid) / count - jnp.square(
            jnp.sum(residual) / count
        )
        return state, {
            **metrics,
            **value_metrics,
            "value_first_turn": old_values[:, 0].mean(),
            "value_explained_variance": 1.0 - var_residual / (var_return + 1e-8),
            "turn_advantage_abs": jnp.sum(jnp.abs(advantages)) / count,
        }

    def learn_local(state, conv, rewards, hp, penalty=None):
        if turn_credit is None:
            return grpo.learn(
                state, to_rollout(conv), rewards, hp, extra=extra_of(state, penalty)
            )
        return credit_learn(state, conv, rewards, hp, penalty)

    def check_penalty(penalty):
        if continual is None and penalty is not None:
            raise ValueError(
                "penalty given to a program built without continual= "
                "(make_multiturn_grpo(..., continual='ewc'))"
            )
        if continual is not None:
            if not isinstance(penalty, PenaltyState):
                raise ValueError(
                    f"continual={continual!r} needs penalty=continual."
                    f"penalty_state(...), got {type(penalty).__name__}"
                )
            if continual == "replay" and penalty.rows is None:
                raise ValueError(
                    "continual='replay' needs penalty.rows (the earlier task's "
                    "rows: penalty_state(params, rows=...))"
                )
        return penalty

    def step_local(state: GRPOState, hp, penalty=None):
        state, conv = sample_local(state, hp)
        if turn_credit is None:
            rewards = conv.rewards.reshape(num_prompts, group)
        else:
            rewards = conv.turn_rewards.reshape(num_prompts, group, num_turns_max)
        state, metrics = learn_local(state, conv, rewards, hp, penalty)
        return state, {**metrics, **_conversation_metrics(conv)}

    step_jit = jax.jit(step_local)

    def step(state: GRPOState, hparams: GRPOHParams | None = None, penalty=None):
        """One step: sample, score with the env, learn (jitted)."""
        hp = default_hparams if hparams is None else hparams
        return step_jit(state, hp, check_penalty(penalty))

    @functools.partial(jax.jit, static_argnums=2)
    def run_jit(state, hp, num_steps, penalty):
        return jax.lax.scan(
            lambda s, _: step_local(s, hp, penalty), state, None, num_steps
        )

    def run(
        state: GRPOState,
        hparams: GRPOHParams | None = None,
        num_steps: int = 1,
        penalty=None,
    ):
        """``num_steps`` steps as one ``lax.scan`` -> ``(state, metrics)``."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
            raise ValueError(f"run: num_steps must be an int, got {num_steps!r}")
        if num_steps < 0:
            raise ValueError(f"run: num_steps must be >= 0, got {num_steps}")
        hp = default_hparams if hparams is None else hparams
        return run_jit(state, hp, int(num_steps), check_penalty(penalty))

    sample_jit = jax.jit(sample_local)

    def sample(state: GRPOState, hparams: GRPOHParams | None = None):
        """``(state, Conversations)`` of ``num_prompts * group_size``
        conversations (scenario-major), for a Python reward (compiled)."""
        return sample_jit(state, default_hparams if hparams is None else hparams)

    learn_jit = jax.jit(learn_local)

    def learn(state, conv: Conversations, rewards, hparams=None, penalty=None):
        """Advantages and updates from ``rewards`` ``[num_prompts,
        group_size]`` (e.g. a Python score of `to_trajectories`); with turn
        credit also ``[num_prompts, group_size, max_turns]`` per turn."""
        shapes = [(num_prompts, group)]
        if turn_credit is not None:
            shapes.append((num_prompts, group, num_turns_max))
        if np.shape(rewards) not in shapes:
            per_turn = ", or per turn [num_prompts, group_size, max_turns]"
            raise ValueError(
                f"learn: rewards must be [num_prompts, group_size]"
                f"{per_turn if turn_credit is not None else ''} = "
                f"{' or '.join(str(list(x)) for x in shapes)}, got "
                f"{list(np.shape(rewards))}"
            )
        hp = default_hparams if hparams is None else hparams
        rewards = jnp.asarray(rewards, jnp.float32)
        return learn_jit(state, conv, rewards, hp, check_penalty(penalty))

    @functools.partial(jax.jit, static_argnums=(1, 2, 3))
    def evaluate_jit(params, held_out, greedy, num_scenarios, key, temperature):
        scenarios = _eval_scenarios(env, num_scenarios, held_out, key)
        t = jnp.where(greedy, 0.0, temperature)
        return _success_rate(params, mc, env, scenarios, jax.random.key(1), t)

    def evaluate(
        params,
        held_out: bool = True,
        greedy: bool = True,
        num_scenarios: int = 256,
        key=None,
        temperature: float = 1.0,
    ):
        """Success rate of ``params`` on ``num_scenarios`` scenarios: held-out
        orders and held-out users (``held_out``), or training ones. The same
        scenarios for every call with the same ``key`` (default: the
        `EVAL_SEED` stream). Greedy, or sampled at ``temperature``."""
        key = jax.random.key(EVAL_SEED) if key is None else key
        return evaluate_jit(
            params, bool(held_out), bool(greedy), int(num_scenarios), key, temperature
        )

    return MultiTurnGRPO(
        config=config,
        model_config=mc,
        env=env,
        grpo=grpo,
        default_hparams=default_hparams,
        init=init,
        step=step,
        run=run,
        sample=sample,
        learn=learn,
        evaluate=evaluate,
        turn_credit=turn_credit,
        turn_values=None if turn_credit is None else jax.jit(turn_values),
        continual=continual,
    )


def _check_turn_credit(config: GRPOConfig, turn_credit) -> None:
    if turn_credit not in TURN_CREDIT:
        raise ValueError(
            f"make_multiturn_grpo: turn_credit must be None or one of "
            f"{list(TURN_CREDIT)}, got {turn_credit!r}"
        )
    for name in ("gamma", "gae_lambda"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"GRPOConfig.{name} must be a number, got {value!r}")
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"GRPOConfig.{name} must be in [0, 1] for turn credit, got {value}"
            )
    if not config.value_learning_rate > 0:
        raise ValueError(
            "GRPOConfig.value_learning_rate must be > 0 for turn credit (the "
            f"value model trains with it), got {config.value_learning_rate}"
        )
    if config.value_clip_eps is not None and not config.value_clip_eps > 0:
        raise ValueError(
            "GRPOConfig.value_clip_eps must be None (unclipped) or > 0, got "
            f"{config.value_clip_eps}"
        )
    if config.off_policy_threshold is not None:
        raise ValueError(
            "GRPOConfig.off_policy_threshold does not go with turn credit: its "
            "mask is per conversation, turn credit's advantages are per token"
        )


# --- the SFT warm-up -------------------------------------------------------------


@struct.dataclass
class WarmupState:
    """The SFT warm-up's state: parameters, AdamW moments, key, step."""

    params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array


class MultiTurnSFT(NamedTuple):
    """``init(key, params=None)``; ``step(state, hparams=None)``; ``run(state,
    hparams=None, num_steps=1)``; ``run_until(state, target, max_steps,
    hparams=None, eval_every=50, num_scenarios=128) -> (state, train success)``;
    ``loss(params, batch)``; ``demos``: the expert's `Conversations`."""

    model_config: LMConfig
    env: TaskEnv
    demos: Conversations
    default_hparams: SFTHParams
    init: Callable
    step: Callable
    run: Callable
    run_until: Callable
    loss: Callable


def agent_nll(params, model_config: LMConfig, conv: Conversations):
    """Mean NLL of the agent's tokens (``loss_mask``) given the whole
    conversation before each: ``-sum(loss_mask * log p) / sum(loss_mask)``."""
    logp = completion_logprobs(
        params,
        model_config,
        conv.prompt_tokens,
        conv.prompt_mask,
        conv.tokens,
        conv.mask,
    )
    weights = conv.loss_mask.astype(jnp.float32)
    return -jnp.sum(logp * weights) / jnp.maximum(weights.sum(), 1.0)


def make_multiturn_sft(
    model_config: LMConfig,
    env: TaskEnv,
    *,
    num_demos: int = 32,
    batch_size: int = 16,
    demo_seed: int = 0,
    hparams: SFTHParams | None = None,
) -> MultiTurnSFT:
    """SFT on ``num_demos`` scripted-expert conversations of training scenarios
    (drawn with ``demo_seed``; the same for every run), ``batch_size`` of them
    (drawn with replacement from the state's key) per AdamW step."""
    env.check_model(model_config)
    for name, value in (("num_demos", num_demos), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"make_multiturn_sft: {name} must be an int >= 1")
    demos = jax.jit(lambda s: expert_conversations(env, s))(
        env.sample_scenarios(jax.random.key(demo_seed), num_demos, held_out=False)
    )
    default_hparams = (
        SFTHParams.create(learning_rate=3e-3, warmup_steps=20)
        if hparams is None
        else hparams
    )
    moments = optax.scale_by_adam()
    mc = model_config

    def loss(params, batch: Conversations):
        return agent_nll(params, mc, batch)

    def init(key, params=None) -> WarmupState:
        k_params, k_data = jax.random.split(key)
        if params is None:
            params = init_params(k_params, mc)
        else:
            check_params(mc, params)
        return WarmupState(
            params, moments.init(params), k_data, jnp.zeros((), jnp.int32)
        )

    def step(state: WarmupState, hparams=None):
        hp = default_hparams if hparams is None else hparams
        rows = jax.random.randint(
            jax.random.fold_in(state.key, state.step), (batch_size,), 0, num_demos
        )
        batch = jax.tree.map(lambda x: x[rows], demos)
        value, grads = jax.value_and_grad(loss)(state.params, batch)
        params, opt_state, grad_norm, lr = adamw_update(
            moments, grads, state.opt_state, state.params, state.step, hp
        )
        state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return state, {"loss": value, "grad_norm": grad_norm, "learning_rate": lr}

    def run(state, hparams=None, num_steps: int = 1):
        return jax.lax.scan(lambda s, _: step(s, hparams), state, None, int(num_steps))

    def run_until(
        state,
        target,
        max_steps,
        hparams=None,
        *,
        eval_every: int = 50,
        num_scenarios: int = 128,
    ):
        """Train until the greedy success on training scenarios (from a key
        apart from `EVAL_SEED`'s) reaches ``target`` or ``max_steps``; checked
        every ``eval_every`` steps. Returns ``(state, success)``; vmappable."""
        scenarios = _eval_scenarios(
            env, int(num_scenarios), False, jax.random.key(EVAL_SEED + 1)
        )

        def score(params):
            return _success_rate(params, mc, env, scenarios, jax.random.key(0), 0.0)

        def cond(carry):
            state, success = carry
            return (success < target) & (state.step < max_steps)

        def body(carry):
            state, _ = carry
            state, _ = run(state, hparams, int(eval_every))
            return state, score(state.params)

        return jax.lax.while_loop(cond, body, (state, score(state.params)))

    return MultiTurnSFT(
        model_config=mc,
        env=env,
        demos=demos,
        default_hparams=default_hparams,
        init=init,
        step=step,
        run=run,
        run_until=run_until,
        loss=loss,
    )


# --- the high-level entry point ---------------------------------------------------

PROFILES = {
    # Small steps, a large group, a KL anchor to the starting policy.
    "conservative": dict(
        loss="grpo", learning_rate=1e-4, group_size=8, num_prompts=8, beta=0.04
    ),
    # The settings of the learning bar (benchmarks/agents_learning.py).
    "balanced": dict(loss="grpo", learning_rate=3e-4, group_size=8, num_prompts=8),
    # Large steps, off-policy second pass with GSPO's sequence-level clipping.
    "aggressive": dict(
        loss="gspo",
        learning_rate=1e-3,
        group_size=8,
        num_prompts=8,
        num_epochs=2,
    ),
}
"""`train`'s profiles: `GRPOConfig` fields (others at their defaults)."""


class TrainResult(NamedTuple):
    """What `train` returns: the final params, the program's state, the
    per-step metrics (NumPy, ``[num_steps]``), the program, and the step the
    run resumed from (0 if fresh)."""

    params: Any
    state: GRPOState
    metrics: dict
    program: MultiTurnGRPO
    resumed_from: int


@functools.lru_cache(maxsize=8)
def _cached_program(
    config, model_config, env, turn_credit=None, continual=None
) -> MultiTurnGRPO:
    # train() called again with the same settings (a resumed run) reuses the
    # compiled program.
    return make_multiturn_grpo(
        config, model_config, env, turn_credit=turn_credit, continual=continual
    )


def _agent_parts(agent_or_params):
    if isinstance(agent_or_params, tuple) and len(agent_or_params) == 2:
        params, model_config = agent_or_params
    elif hasattr(agent_or_params, "params") and hasattr(
        agent_or_params, "model_config"
    ):
        params, model_config = agent_or_params.params, agent_or_params.model_config
    else:
        raise ValueError(
            "train: agent_or_params must be (params, model_config) or an object "
            "with .params and .model_config"
        )
    if not isinstance(model_config, LMConfig):
        raise ValueError(
            f"train: model_config must be an LMConfig, got {type(model_config)}"
        )
    return params, model_config


def train(
    agent_or_params,
    env: TaskEnv,
    reward_fn: Callable | None = None,
    num_episodes: int = 1024,
    profile: str = "balanced",
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    *,
    seed: int = 0,
    checkpoint_every: int = 10,
    callback: Callable[[int, dict], None] | None = None,
    turn_credit: str | None = None,
    continual: str | None = None,
    penalty: PenaltyState | None = None,
    **overrides,
) -> TrainResult:
    """Multi-turn GRPO of an agent on ``env`` for ``num_episodes``
    conversations (``ceil(num_episodes / (num_prompts * group_size))`` steps).

    ``agent_or_params``: ``(params, model_config)`` or an object with
    ``.params`` and ``.model_config``. ``profile``: a key of `PROFILES`;
    ``overrides``: `GRPOConfig` fields over it. ``reward_fn``: None for the
    env's verifiable success, or ``reward_fn(trajectory) -> float`` on each
    `MultiTurnTrajectory` (`to_trajectories`; host side, between the compiled
    sample and learn). ``checkpoint_dir``: the `GRPOState` is saved through
    `convergence_jax.checkpoint` every ``checkpoint_every`` steps and at the
    end; with ``resume`` a run finds its latest step there and continues from
    it, exactly as an uninterrupted run (the state holds the key and the step).
    ``callback(step, metrics)`` runs after each step. ``turn_credit``: None
    or a mode of `TURN_CREDIT` (`make_multiturn_grpo`). ``continual``: None
    or a term of `CONTINUAL` added to the loss, on ``penalty`` (a
    `continual.PenaltyState`, e.g. ``continual.penalty_state(old_params,
    hparams, fisher=...)``; `make_multiturn_grpo`).
    """
    from convergence_jax import checkpoint

    if profile not in PROFILES:
        raise ValueError(
            f"train: profile must be one of {sorted(PROFILES)}, got {profile!r}"
        )
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, int):
        raise ValueError(f"train: num_episodes must be an int, got {num_episodes!r}")
    if num_episodes < 1:
        raise ValueError(f"train: num_episodes must be >= 1, got {num_episodes}")
    params, model_config = _agent_parts(agent_or_params)
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"train: unknown GRPOConfig fields {sorted(unknown)}")
    config = GRPOConfig(**{**PROFILES[profile], **overrides})
    program = _cached_program(config, model_config, env, turn_credit, continual)
    per_step = config.num_prompts * config.group_size
    num_steps = math.ceil(num_episodes / per_step)
    state = program.init(jax.random.key(seed), params)
    start = 0
    if checkpoint_dir is not None and resume:
        latest = checkpoint.latest_step(checkpoint_dir)
        if latest is not None:
            state = checkpoint.restore(checkpoint_dir, like=state, step=latest)
            start = int(latest)
    history: list[dict] = []
    for step in range(start, num_steps):
        if reward_fn is None:
            state, metrics = program.step(state, penalty=penalty)
        else:
            state, conv = program.sample(state)
            trajectories = to_trajectories(env, conv)
            rewards = np.asarray(
                [float(reward_fn(t)) for t in trajectories], np.float32
            ).reshape(config.num_prompts, config.group_size)
            state, metrics = program.learn(state, conv, rewards, penalty=penalty)
            metrics = {
                **metrics,
                **_conversation_metrics(conv),
                "reward": float(rewards.mean()),
            }
        metrics = {k: float(v) for k, v in metrics.items()}
        history.append(metrics)
        if callback is not None:
            callback(step, metrics)
        done = step + 1
        if checkpoint_dir is not None and (
            done % checkpoint_every == 0 or done == num_steps
        ):
            checkpoint.save(checkpoint_dir, state, step=done, overwrite=True)
    keys = sorted(history[0]) if history else []
    metrics = {k: np.asarray([h[k] for h in history]) for k in keys}
    return TrainResult(state.params, state, metrics, program, start)
