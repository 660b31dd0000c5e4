"""Decision Transformer (DT): return-conditioned behaviour cloning on sequences.

    dt = make_dt(DTConfig(num_steps=5_000), obs_dim, spec)
    state, metrics = jax.jit(dt.train)(key, data)
    rollout = make_rollout(dt, "CartPole-v1")
    returns = jax.jit(rollout, static_argnums=3)(key, state, 500.0, 16)

Chen et al. 2021, "Decision Transformer: reinforcement learning via sequence
modeling" (the authors' ``gym/decision_transformer``): a window of the last ``K``
timesteps ``(R_t, s_t, a_t)`` is embedded as ``3K`` tokens (one linear embedding
per modality, or a table for discrete actions, plus a learned timestep embedding
added to all three, then a LayerNorm), run through a causal transformer, and the
hidden state at each *state* token predicts that timestep's action (it sees
``R_0..R_t, s_0..s_t, a_0..a_{t-1}``, never ``a_t``). ``R_t`` is the
return-to-go, the undiscounted sum of the episode's rewards from ``t`` on
(``returns_to_go``), divided by ``return_scale``. Loss: mean squared error of
``tanh`` actions in [-1, 1] (continuous) or cross-entropy (discrete), averaged
over the real (non-padding) timesteps of the global minibatch; AdamW with a
linear learning-rate warm-up and a gradient-norm clip (the authors': 1e-4,
weight decay 1e-4, 10k warm-up steps, clip 0.25).

The transformer is the project's own (``convergence_jax.lm.Transformer``, fed
continuous vectors through its ``inputs_embeds`` path): pre-norm Llama blocks
with rotary positions over the ``3K`` tokens, where the authors use GPT-2 with its
position embeddings removed; there is no dropout.

Training windows end at a row drawn uniformly from the dataset and reach back
``K`` rows within that row's episode, left-padded with masked slots when the
episode is shorter -- the same shape as the context at evaluation, which is
always the last ``K`` steps (the authors draw the window's *start* instead).

**Acting** keeps a context (``DTContext``): ``start(obs, target_return)``, then
per step ``policy(state, context, obs, key) -> (actions, context)`` and, after
the environment step, ``observe(context, rewards)`` (the return-to-go drops by
the reward). ``make_rollout(dt, env_id)`` runs whole gymnax episodes this way in
one compiled program.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.model import Transformer
from convergence_jax.offline import _common
from convergence_jax.offline._common import ActionSpec, ObsNorm
from convergence_jax.offline.dataset import Transitions

__all__ = [
    "DT",
    "DTConfig",
    "DTContext",
    "DTHParams",
    "DTState",
    "DecisionTransformer",
    "SequenceData",
    "dt_action_loss",
    "episode_timesteps",
    "make_dt",
    "make_rollout",
    "returns_to_go",
    "sample_windows",
    "sequence_data",
]


# ------------------------------------------------------------------ pure pieces


def returns_to_go(rewards: jax.Array, ends: jax.Array) -> jax.Array:
    """Undiscounted return-to-go of every row of a flat dataset::

        R_i = r_i + (0 if ends_i else R_{i+1}),   R_{N-1} = r_{N-1}

    (a reverse scan: episodes end where ``ends`` = terminal or timeout; a trailing
    unfinished episode counts the rewards it has).

    Args: ``rewards [N]`` float, ``ends [N]`` bool. Returns ``[N]`` float32.
    """
    chex.assert_rank([rewards, ends], 1)
    chex.assert_equal_shape([rewards, ends])

    def step(future, inputs):
        reward, end = inputs
        value = reward + jnp.where(end, 0.0, future)
        return value, value

    _, rtg = jax.lax.scan(
        step,
        jnp.zeros((), jnp.float32),
        (rewards.astype(jnp.float32), ends.astype(bool)),
        reverse=True,
    )
    return rtg


def episode_timesteps(ends: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Timestep within its episode and the episode's first row, for every row.

    Args: ``ends [N]`` bool. Returns ``(timesteps [N] int32, starts [N] int32)``.
    """
    chex.assert_rank(ends, 1)
    n = ends.shape[0]
    starts_here = jnp.concatenate([jnp.ones(1, bool), ends[:-1].astype(bool)])

    def step(carry, inputs):
        t, first = carry
        index, new = inputs
        t = jnp.where(new, 0, t + 1)
        first = jnp.where(new, index, first)
        return (t, first), (t, first)

    _, (timesteps, starts) = jax.lax.scan(
        step,
        (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)),
        (jnp.arange(n, dtype=jnp.int32), starts_here),
    )
    return timesteps, starts


def dt_action_loss(
    predicted: jax.Array, actions: jax.Array, mask: jax.Array, discrete: bool
) -> tuple[jax.Array, jax.Array]:
    """Sum and count of DT's per-timestep action loss over the real timesteps.

    Continuous: ``mean_d (pred_d - a_d)^2`` per timestep; discrete: ``-log
    softmax(logits)[a]``. Returns ``(sum over mask, number of real timesteps)``;
    the loss is their ratio (over the global batch when data parallel).

    Args: ``predicted [K, A]`` (actions in [-1, 1] or logits), ``actions [K, A]``
    float or ``[K]`` int, ``mask [K]``.
    """
    chex.assert_rank([predicted, mask], [2, 1])
    if discrete:
        chex.assert_rank(actions, 1)
        per_step = -jnp.take_along_axis(
            jax.nn.log_softmax(predicted), actions[:, None], 1
        )[:, 0]
    else:
        chex.assert_equal_shape([predicted, actions])
        per_step = jnp.mean(jnp.square(predicted - actions), -1)
    mask = mask.astype(jnp.float32)
    return jnp.sum(per_step * mask), jnp.sum(mask)


@struct.dataclass
class SequenceData:
    """A flat dataset with what windows need: ``observations [N, d]``,
    ``actions`` (unit space for continuous), ``rtg [N]``, ``timesteps [N]``,
    ``starts [N]`` (each row's episode's first row)."""

    observations: jax.Array
    actions: jax.Array
    rtg: jax.Array
    timesteps: jax.Array
    starts: jax.Array


def sequence_data(data: Transitions, spec: ActionSpec) -> SequenceData:
    """Returns-to-go, timesteps and episode starts of a ``Transitions`` (jittable)."""
    ends = data.terminals.astype(bool) | data.timeouts.astype(bool)
    timesteps, starts = episode_timesteps(ends)
    return SequenceData(
        observations=data.observations.astype(jnp.float32),
        actions=spec.to_unit(data.actions),
        rtg=returns_to_go(data.rewards, ends),
        timesteps=timesteps,
        starts=starts,
    )


def sample_windows(key: jax.Array, data: SequenceData, batch_size: int, length: int):
    """``batch_size`` windows of ``length`` rows, each ending at a uniformly drawn
    row and left-padded where its episode began later: a dict of ``obs [B, K,
    d]``, ``actions``, ``rtg [B, K]``, ``timesteps [B, K]``, ``mask [B, K]`` (1 on
    real rows; padded rows hold zeros)."""
    n = data.rtg.shape[0]
    ends = jax.random.randint(key, (batch_size,), 0, n)
    index = ends[:, None] - (length - 1) + jnp.arange(length)[None]  # [B, K]
    mask = index >= data.starts[ends][:, None]
    index = jnp.maximum(index, 0)

    def take(x):
        rows = x[index]
        keep = mask.reshape(mask.shape + (1,) * (rows.ndim - 2))
        return jnp.where(keep, rows, jnp.zeros((), rows.dtype))

    return {
        "obs": take(data.observations),
        "actions": take(data.actions),
        "rtg": take(data.rtg),
        "timesteps": take(data.timesteps),
        "mask": mask.astype(jnp.int32),
    }


# ------------------------------------------------------------------ network


class DecisionTransformer(nn.Module):
    """``(rtg [B, K], obs [B, K, d], actions, timesteps [B, K], mask [B, K]) ->
    action predictions [B, K, A]`` (tanh actions or logits), from the state tokens.
    ``rtg`` is already divided by the return scale."""

    lm_config: LMConfig
    action_size: int
    discrete: bool
    max_timestep: int

    @nn.compact
    def __call__(self, rtg, obs, actions, timesteps, mask):
        hidden = self.lm_config.hidden_size
        batch, length = rtg.shape
        time = nn.Embed(self.max_timestep, hidden, name="embed_timestep")(
            jnp.clip(timesteps, 0, self.max_timestep - 1)
        )
        returns = nn.Dense(hidden, name="embed_return")(rtg[..., None])
        states = nn.Dense(hidden, name="embed_state")(obs)
        if self.discrete:
            acts = nn.Embed(self.action_size, hidden, name="embed_action")(actions)
        else:
            acts = nn.Dense(hidden, name="embed_action")(actions)
        tokens = jnp.stack([returns + time, states + time, acts + time], axis=2)
        tokens = nn.LayerNorm(name="embed_norm")(
            tokens.reshape(batch, 3 * length, hidden)
        )
        token_mask = jnp.repeat(mask, 3, axis=-1)
        h, _ = Transformer(self.lm_config, output_hidden=True, name="transformer")(
            None, token_mask, inputs_embeds=tokens
        )
        h_state = h.reshape(batch, length, 3, hidden)[:, :, 1]
        out = nn.Dense(self.action_size, name="predict_action")(h_state)
        return out if self.discrete else jnp.tanh(out)


# ------------------------------------------------------------------ program


@dataclass(frozen=True)
class DTConfig:
    """A Decision Transformer run: sizes (static) and default numbers (the
    authors' gym settings, unless said)."""

    num_steps: int = 10_000
    """Gradient updates."""
    batch_size: int = 64
    """Global minibatch size, in windows (split over devices)."""
    num_devices: int = 1
    """Devices to split every minibatch over (data parallel)."""
    normalize_obs: bool = True
    """Normalize observations by the dataset's mean and std."""
    context_length: int = 20
    """K, timesteps per window (3K tokens)."""
    max_timestep: int = 1000
    """Rows of the timestep embedding (later timesteps share the last row)."""
    embed_dim: int = 128
    """Width of the tokens and of the transformer."""
    num_layers: int = 3
    """Transformer blocks."""
    num_heads: int = 1
    """Attention heads (embed_dim must divide into them, with an even head size)."""
    mlp_ratio: int = 4
    """Width of the transformer's MLP over embed_dim."""
    learning_rate: float = 1e-4
    """AdamW peak step size."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    warmup_steps: float = 10_000
    """Linear learning-rate warm-up, in updates."""
    max_grad_norm: float = 0.25
    """Global gradient-norm clip."""
    return_scale: float = 1000.0
    """Returns-to-go are divided by this before embedding."""

    def lm_config(self) -> LMConfig:
        head_dim = self.embed_dim // self.num_heads
        return LMConfig(
            vocab_size=1,
            hidden_size=self.embed_dim,
            intermediate_size=self.mlp_ratio * self.embed_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_heads,
            head_dim=head_dim,
            max_position_embeddings=3 * self.context_length,
        )


@struct.dataclass
class DTHParams:
    """Every number of a DT run (a sweep is a ``vmap``)."""

    learning_rate: jax.Array
    weight_decay: jax.Array
    warmup_steps: jax.Array
    max_grad_norm: jax.Array
    return_scale: jax.Array


@struct.dataclass
class DTState:
    params: Any
    opt_state: Any
    obs_norm: ObsNorm
    key: jax.Array
    step: jax.Array
    return_scale: jax.Array
    """The scale the model was trained with (acting uses the same)."""


@struct.dataclass
class DTContext:
    """The acting context of ``B`` episodes: the last ``K`` timesteps (raw
    ``obs [B, K, d]``, ``actions``, unscaled ``rtg [B, K]``, ``timesteps``,
    ``mask``), the current return-to-go ``target [B]`` and timestep ``t [B]``."""

    obs: jax.Array
    actions: jax.Array
    rtg: jax.Array
    timesteps: jax.Array
    mask: jax.Array
    target: jax.Array
    t: jax.Array


class DT(NamedTuple):
    config: DTConfig
    spec: ActionSpec
    network: DecisionTransformer
    default_hparams: DTHParams
    init: Callable[..., DTState]
    """``init(key, data, hparams=None) -> DTState``."""
    update: Callable
    """``update(state, seq_data, hparams) -> (state, metrics)`` on a
    ``SequenceData`` (``sequence_data(data, spec)``)."""
    run: Callable
    """``run(state, data, hparams=None, num_steps=1) -> (state, metrics)`` on a
    ``SequenceData`` or a ``Transitions`` (then converted first)."""
    start: Callable
    """``start(obs [B, d], target_return) -> DTContext``."""
    policy: Callable
    """``policy(state, context, obs [B, d], key) -> (env actions, context)``."""
    observe: Callable
    """``observe(context, rewards [B]) -> context``: after the environment step."""
    predict: Callable
    """``predict(state, window) -> [B, K, A]``: the network on a window dict (as
    ``sample_windows`` makes; observations raw, rtg unscaled)."""
    train: Callable
    """``train(key, data, hparams=None) -> (state, metrics)`` on a
    ``Transitions``."""


def _check_dt(config: DTConfig) -> None:
    name = "DTConfig"
    _common.check_config(config, name)
    for field in (
        "context_length",
        "max_timestep",
        "embed_dim",
        "num_layers",
        "num_heads",
        "mlp_ratio",
    ):
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{field}: expected an int >= 1, got {value!r}")
    if (
        config.embed_dim % config.num_heads
        or (config.embed_dim // config.num_heads) % 2
    ):
        raise ValueError(
            f"{name}: embed_dim ({config.embed_dim}) must split into num_heads "
            f"({config.num_heads}) heads of an even size (rotary embedding)"
        )
    _common.check_numbers(
        config,
        name,
        positive=("learning_rate", "max_grad_norm", "return_scale"),
        nonnegative=("weight_decay", "warmup_steps"),
    )


def make_dt(config: DTConfig, obs_dim: int, action_spec: ActionSpec) -> DT:
    """Build the Decision Transformer program; validates the config and spec."""
    _check_dt(config)
    _common.check_spec(obs_dim, action_spec, "make_dt")
    spec = action_spec
    discrete = spec.discrete
    length = config.context_length
    network = DecisionTransformer(
        config.lm_config(), spec.size, discrete, config.max_timestep
    )
    dp = _common.DataParallel(config.num_devices > 1)
    num_devices = config.num_devices
    default_hparams = _common.hparams_from_config(DTHParams, config)
    action_shape = () if discrete else (spec.action_dim,)
    action_dtype = jnp.int32 if discrete else jnp.float32

    def init(key, data, hparams=None):
        hparams = default_hparams if hparams is None else hparams
        k_net, k_state = jax.random.split(key)
        window = {
            "rtg": jnp.zeros((1, length)),
            "obs": jnp.zeros((1, length, obs_dim)),
            "actions": jnp.zeros((1, length) + action_shape, action_dtype),
            "timesteps": jnp.zeros((1, length), jnp.int32),
            "mask": jnp.ones((1, length), jnp.int32),
        }
        params = network.init(
            k_net, window["rtg"], window["obs"], window["actions"],
            window["timesteps"], window["mask"],
        )  # fmt: skip
        return DTState(
            params=params,
            opt_state=optax.scale_by_adam().init(params),
            obs_norm=_common.obs_norm_from_data(data, config.normalize_obs),
            key=k_state,
            step=jnp.zeros((), jnp.int32),
            return_scale=jnp.asarray(hparams.return_scale, jnp.float32),
        )

    def apply(params, obs_norm, return_scale, window):
        return network.apply(
            params,
            window["rtg"] / return_scale,
            obs_norm(window["obs"]),
            window["actions"],
            window["timesteps"],
            window["mask"],
        )

    def loss_fn(params, state, window):
        predicted = apply(params, state.obs_norm, state.return_scale, window)
        total, count = jax.vmap(dt_action_loss, in_axes=(0, 0, 0, None))(
            predicted, window["actions"], window["mask"], discrete
        )
        # Token mean over the *global* batch: this device's sum over the global
        # count, times the device count (value_and_grad averages over devices).
        count = dp.psum(count.sum())
        return num_devices * total.sum() / count

    def update_local(state, window, keys, hparams):
        loss, grads = dp.value_and_grad(loss_fn)(state.params, state, window)
        grads, _ = optax.clip_by_global_norm(hparams.max_grad_norm).update(
            grads, optax.EmptyState()
        )
        updates, opt_state = optax.scale_by_adam().update(grads, state.opt_state)
        warm = jnp.minimum(
            1.0, (state.step + 1.0) / jnp.maximum(hparams.warmup_steps, 1.0)
        )
        lr = hparams.learning_rate * warm
        params = jax.tree.map(
            lambda p, u: p - lr * (u + hparams.weight_decay * p), state.params, updates
        )
        state = state.replace(params=params, opt_state=opt_state)
        return state, {"loss": loss, "learning_rate": lr}

    def sample(key, seq_data, batch_size):
        return sample_windows(key, seq_data, batch_size, length)

    update = _common.make_update(config, update_local, spec, sample=sample)
    run_sequences = _common.make_run(update, default_hparams)

    def run(state, data, hparams=None, num_steps: int = 1):
        if isinstance(data, Transitions):
            _common.check_shapes(data, obs_dim, spec, "dataset")
            data = sequence_data(data, spec)
        return run_sequences(state, data, hparams, num_steps)

    def train(key, data, hparams=None):
        _common.check_shapes(data, obs_dim, spec, "dataset")
        hparams = default_hparams if hparams is None else hparams
        state = init(key, data, hparams)
        return run(state, sequence_data(data, spec), hparams, config.num_steps)

    def start(obs, target_return):
        obs = jnp.asarray(obs, jnp.float32)
        batch = obs.shape[0]
        target = jnp.broadcast_to(jnp.asarray(target_return, jnp.float32), (batch,))
        return DTContext(
            obs=jnp.zeros((batch, length, obs_dim)),
            actions=jnp.zeros((batch, length) + action_shape, action_dtype),
            rtg=jnp.zeros((batch, length)),
            timesteps=jnp.zeros((batch, length), jnp.int32),
            mask=jnp.zeros((batch, length), jnp.int32),
            target=target,
            t=jnp.zeros((batch,), jnp.int32),
        )

    def shift(x, new):
        return jnp.concatenate([x[:, 1:], new[:, None].astype(x.dtype)], axis=1)

    def policy(state, context, obs, key=None):
        """Append ``obs`` (with the current return-to-go and timestep) to the
        context, predict this timestep's action (greedy: the tanh action or the
        argmax), record it; ``key`` is unused."""
        obs = jnp.asarray(obs, jnp.float32).reshape(context.obs.shape[0], obs_dim)
        context = context.replace(
            obs=shift(context.obs, obs),
            actions=shift(
                context.actions, jnp.zeros(context.actions.shape[:1] + action_shape)
            ),
            rtg=shift(context.rtg, context.target),
            timesteps=shift(context.timesteps, context.t),
            mask=shift(context.mask, jnp.ones_like(context.t)),
        )
        window = {
            "obs": context.obs,
            "actions": context.actions,
            "rtg": context.rtg,
            "timesteps": context.timesteps,
            "mask": context.mask,
        }
        out = apply(state.params, state.obs_norm, state.return_scale, window)[:, -1]
        action = jnp.argmax(out, -1).astype(jnp.int32) if discrete else out
        context = context.replace(actions=context.actions.at[:, -1].set(action))
        return spec.from_unit(action), context

    def observe(context, rewards):
        return context.replace(
            target=context.target - jnp.asarray(rewards, jnp.float32),
            t=context.t + 1,
        )

    def predict(state, window):
        return apply(state.params, state.obs_norm, state.return_scale, window)

    return DT(
        config, spec, network, default_hparams, init, update, run, start, policy,
        observe, predict, train,
    )  # fmt: skip


def make_rollout(dt: DT, env_id: str, env_kwargs: dict | None = None):
    """``rollout(key, state, target_return, num_episodes) -> returns [E]``: whole
    gymnax episodes of the Decision Transformer conditioned on
    ``target_return``, side by side, as one traceable program (a ``lax.scan``
    over the environment's time limit; rewards after an episode's end are
    masked). ``num_episodes`` is static."""
    from convergence_jax.offline.evaluate import make_env

    env, env_params = make_env(env_id, env_kwargs)
    obs_dim, spec = _common.env_spec(env_id, **(env_kwargs or {}))
    if spec.discrete != dt.spec.discrete or spec.size != dt.spec.size:
        raise ValueError(
            f"make_rollout: {env_id}'s actions ({spec}) are not the ones the "
            f"Decision Transformer was built for ({dt.spec})"
        )
    limit = int(env_params.max_steps_in_episode)

    def rollout(key, state, target_return, num_episodes: int):
        if isinstance(num_episodes, bool) or not isinstance(num_episodes, int):
            raise ValueError(
                f"rollout: num_episodes must be an int, got {num_episodes!r}"
            )
        k_reset, k_loop = jax.random.split(key)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_reset, num_episodes), env_params
        )
        obs = obs.reshape(num_episodes, -1).astype(jnp.float32)
        context = dt.start(obs, target_return)

        def step(carry, key):
            obs, env_state, context, returns, done = carry
            actions, context = dt.policy(state, context, obs)
            if not spec.discrete:
                low = jnp.asarray(spec.low, jnp.float32)
                high = jnp.asarray(spec.high, jnp.float32)
                actions = jnp.clip(actions, low, high)
            next_obs, env_state, reward, terminated, truncated, _ = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(jax.random.split(key, num_episodes), env_state, actions, env_params)
            reward = reward.astype(jnp.float32)
            returns = returns + jnp.where(done, 0.0, reward)
            context = dt.observe(context, reward)
            done = done | terminated | truncated
            next_obs = next_obs.reshape(num_episodes, -1).astype(jnp.float32)
            return (next_obs, env_state, context, returns, done), None

        carry = (
            obs,
            env_state,
            context,
            jnp.zeros(num_episodes),
            jnp.zeros(num_episodes, bool),
        )
        carry, _ = jax.lax.scan(step, carry, jax.random.split(k_loop, limit))
        return carry[3]

    return rollout
