"""Online hyperparameter tuning between windows: SPSA, momentum, adaptive routing.

Pure core first: ``spsa`` and ``momentum`` are factories of ``init / ask / tell``
over a vector of hyperparameters in a normalized ``[0, 1]`` space (``to_unit`` /
``from_unit``: linear, or linear in ``log`` for scale-like parameters), and
``router`` is a transition function over the score stream. All of them are
``jnp`` over ``flax.struct`` states, so they run under ``jit``, ``vmap`` (many
tuners or score streams at once, as the tests do) and ``lax.scan``. The shells
``SPSAOptimizer``, ``MomentumOptimizer`` and ``AdaptiveOptimizer`` hold a state
and call them, with the interface of ``BackoffOptimizer`` / ``PBTOptimizer``:
``suggest(hyperparams, record) -> hyperparams``, ``on_improvement(record)``,
``on_plateau(record)``, ``reset()``.

**The two-window estimate.** Every tuner here runs the same cycle: the loop's
score of window ``k`` measures ``theta + c_k * Delta`` and that of window
``k + 1`` measures ``theta - c_k * Delta``; then

    g = (s+ - s-) / (2 c_k) * Delta           (Delta_i = +-1, so 1/Delta_i = Delta_i)

(per coordinate ``(s+ - s-) / (x+_i - x-_i)`` when a probe was clipped at the
edge of ``[0, 1]``). SPSA (Spall 1992, IEEE TAC 37(3); gains from Spall 1998,
"Implementation of the simultaneous perturbation algorithm for stochastic
optimization", IEEE TAES 34(3)) draws ``Delta`` Rademacher, so all ``P``
parameters move every two windows, and steps with decaying gains

    theta <- clip(theta + a_k * clip(g, -grad_clip, grad_clip), 0, 1)
    a_k = a / (k + 1 + A) ** alpha,   c_k = c / (k + 1) ** gamma

(``alpha = 0.602``, ``gamma = 0.101``: Spall's practical values). ``momentum``
uses the same cycle, with either the SPSA direction or ``Delta = e_i`` (a
central finite difference on one coordinate, round robin), and feeds ``g`` to
Adam (Kingma & Ba 2015) or to bias-corrected EMA momentum.

How tensor-optix 1.17.9 does these (``tensor_optix/optimizers/``, read for this
module; none of its code is used here): its ``SPSAOptimizer`` runs the same
plus / minus pair in ``[0, 1]`` (log-normalized for ``log_params``), with a
*constant* ``c = 0.05`` and step ``0.1``, the gradient clipped to ``+-1``, one
idle window after each update, ``c *= 0.8`` on improvement and ``c = min(2 c,
0.2)`` on plateau. Its ``MomentumOptimizer`` is Adam on a *one-sided* finite
difference per parameter (probe ``+5 % |theta|``, the base score taken from the
previous window), linear normalization only. Here the gains decay as Spall
prescribes (so the iterate settles instead of wandering at a fixed step), both
probes of a pair are scored on their own windows, momentum's difference is
central (its error is ``O(c^2)``, not ``O(c)``) and log scaling applies to every
tuner.

**Routing** (``router``, ``AdaptiveOptimizer``; the rule of tensor-optix's
``AdaptiveOptimizer``): over the last ``window`` scores, ``rho`` is the lag-1
autocorrelation (Pearson of ``s[t-1]`` against ``s[t]``) and ``gap = (score -
best) / max(|best|, std(window), gap_floor)`` the relative shortfall from the
best score seen. First match wins:

    1. gap < -gap_threshold   -> "pbt"       (far below the best: jump to a
                                              setting that did well)
    2. rho > autocorr_thresh  -> "momentum"  (smooth, serially correlated
                                              scores: accumulate the direction)
    3. rho < -autocorr_thresh -> "backoff"   (oscillating scores: trust only
                                              the sign of a comparison)
    4. otherwise              -> "spsa"      (near-i.i.d. noise)

Nothing switches before ``min_history`` scores; a switch needs the active
tuner to have run ``switch_patience`` evaluations and the same new target on
``switch_confirmation`` evaluations in a row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from convergence_jax.loop.hparams import (
    BackoffOptimizer,
    PBTOptimizer,
    _check_bounds,
    _log_names,
)

__all__ = [
    "ROUTES",
    "AdaptiveOptimizer",
    "MomentumOptimizer",
    "MomentumParams",
    "RouteInfo",
    "Router",
    "RouterParams",
    "RouterState",
    "SPSAOptimizer",
    "SPSAParams",
    "Tuner",
    "TunerState",
    "from_unit",
    "lag1_autocorr",
    "momentum",
    "router",
    "spsa",
    "to_unit",
]

# What the last ``ask`` put out: nothing (the first score of a run, or after a
# reset), the plus probe, or the minus probe.
_NONE, _PLUS, _MINUS = 0, 1, 2


# ------------------------------------------------------------------ unit space


def to_unit(values, lo, hi, log):
    """Hyperparameter values ``[P]`` -> ``[0, 1]^P`` (``log`` masks log scaling)."""
    values, lo, hi = (jnp.asarray(v, jnp.float32) for v in (values, lo, hi))
    safe = lambda x: jnp.log(jnp.maximum(x, 1e-30))
    lin = (values - lo) / (hi - lo)
    logu = (safe(values) - safe(lo)) / (safe(hi) - safe(lo))
    return jnp.clip(jnp.where(log, logu, lin), 0.0, 1.0)


def from_unit(u, lo, hi, log):
    """``[0, 1]^P`` -> hyperparameter values ``[P]`` (the inverse of ``to_unit``)."""
    u = jnp.clip(jnp.asarray(u, jnp.float32), 0.0, 1.0)
    lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
    safe = lambda x: jnp.log(jnp.maximum(x, 1e-30))
    lin = lo + u * (hi - lo)
    logv = jnp.exp(safe(lo) + u * (safe(hi) - safe(lo)))
    return jnp.where(log, logv, lin)


# ------------------------------------------------------------------ two-window tuners


@struct.dataclass
class SPSAParams:
    """The numbers of ``spsa`` (scalars, or batched under ``vmap``)."""

    a: float = 0.2
    """Step gain numerator (unit space per unit of scaled gradient)."""
    c: float = 0.1
    """Perturbation gain numerator (unit space)."""
    stability: float = 10.0
    """Spall's ``A``: delays the step decay (about 10 % of the expected updates)."""
    alpha: float = 0.602
    """Step gain decay exponent."""
    gamma: float = 0.101
    """Perturbation gain decay exponent."""
    grad_clip: float = 1.0
    """Cap on each ``|g_i|`` (scaled score per unit), against one wild window."""
    score_scale: float = 1.0
    """Scores are divided by this before the gradient: set it to the score's
    typical spread so that ``a`` is in unit-space steps."""


@struct.dataclass
class MomentumParams:
    """The numbers of ``momentum`` (scalars, or batched under ``vmap``)."""

    lr: float = 0.05
    """First step size in unit space (Adam: about the largest step per update)."""
    stability: float = 10.0
    """``A`` of the step decay ``lr_k = lr * ((1 + A) / (k + 1 + A)) ** decay``."""
    decay: float = 0.602
    """Step decay exponent (0: a constant step)."""
    beta1: float = 0.9
    """First-moment (momentum) decay."""
    beta2: float = 0.999
    """Second-moment decay (Adam only)."""
    eps: float = 1e-8
    c: float = 0.1
    """Perturbation gain numerator (unit space); ``c_k = c / (k + 1) ** gamma``."""
    gamma: float = 0.101
    grad_clip: float = math.inf
    """Cap on each ``|g_i|`` before the moments (matters without Adam)."""
    score_scale: float = 1.0
    """Scores are divided by this before the gradient."""


@struct.dataclass
class TunerState:
    center: jax.Array
    """``theta [P]`` in unit space: the current estimate of the best setting."""
    delta: jax.Array
    """``Delta [P]`` of the current pair (+-1, or a one-hot for ``"fd"``)."""
    probe_plus: jax.Array
    """The plus probe actually run (clipped to ``[0, 1]``), ``[P]``."""
    score_plus: jax.Array
    """``s+`` once the plus window is scored."""
    pending: jax.Array
    """What the last ``ask`` put out: 0 nothing, 1 plus probe, 2 minus probe."""
    next_minus: jax.Array
    """The next ``ask`` runs the minus probe (bool)."""
    k: jax.Array
    """Completed updates (int32); the gains decay with it."""
    coord: jax.Array
    """``"fd"``: the coordinate of the next pair (int32)."""
    m: jax.Array
    """First moment ``[P]`` (momentum only)."""
    v: jax.Array
    """Second moment ``[P]`` (Adam only)."""
    t: jax.Array
    """Per-coordinate moment updates ``[P]`` (bias correction)."""


class Tuner(NamedTuple):
    num_params: int
    init: callable
    """``init(center [P] in [0, 1]) -> TunerState``."""
    ask: callable
    """``ask(key, state, params) -> (probe [P] in [0, 1], state)``: the setting
    to run for the next window."""
    tell: callable
    """``tell(state, score, params) -> (state, gradient [P])``: the score of the
    window run at the last probe (``gradient`` is zero except on the minus
    window, where the pair completes)."""


def _check_num_params(num_params, owner):
    if not isinstance(num_params, int) or isinstance(num_params, bool):
        raise ValueError(f"{owner}: num_params must be an int >= 1, got {num_params!r}")
    if num_params < 1:
        raise ValueError(f"{owner}: num_params must be an int >= 1, got {num_params}")


def _two_window(num_params, direction, perturbation, update):
    """The plus / minus cycle shared by every tuner here."""

    def init(center) -> TunerState:
        center = jnp.clip(jnp.asarray(center, jnp.float32), 0.0, 1.0)
        if center.shape != (num_params,):
            raise ValueError(
                f"init: center must have shape ({num_params},), got {center.shape}"
            )
        zeros = jnp.zeros(num_params, jnp.float32)
        return TunerState(
            center=center,
            delta=zeros,
            probe_plus=center,
            score_plus=jnp.asarray(jnp.nan, jnp.float32),
            pending=jnp.asarray(_NONE, jnp.int32),
            next_minus=jnp.asarray(False),
            k=jnp.zeros((), jnp.int32),
            coord=jnp.zeros((), jnp.int32),
            m=zeros,
            v=zeros,
            t=zeros,
        )

    def ask(key, state: TunerState, params):
        c_k = perturbation(state.k, params)
        fresh = direction(key, state)
        delta = jnp.where(state.next_minus, state.delta, fresh)
        plus = jnp.clip(state.center + c_k * delta, 0.0, 1.0)
        minus = jnp.clip(state.center - c_k * delta, 0.0, 1.0)
        probe = jnp.where(state.next_minus, minus, plus)
        state = state.replace(
            delta=delta,
            probe_plus=jnp.where(state.next_minus, state.probe_plus, plus),
            pending=jnp.where(state.next_minus, _MINUS, _PLUS).astype(jnp.int32),
        )
        return probe, state

    def tell(state: TunerState, score, params):
        score = jnp.asarray(score, jnp.float32)
        c_k = perturbation(state.k, params)
        minus = jnp.clip(state.center - c_k * state.delta, 0.0, 1.0)
        width = state.probe_plus - minus
        diff = (state.score_plus - score) / params.score_scale
        moved = width != 0
        grad = jnp.where(moved, diff / jnp.where(moved, width, 1.0), 0.0)
        # A failed (NaN) window says nothing: no step from this pair.
        grad = jnp.where(jnp.isfinite(diff), grad, 0.0)
        grad = jnp.clip(grad, -params.grad_clip, params.grad_clip)
        completes = state.pending == _MINUS
        updated = update(state, grad, moved, params)
        updated = updated.replace(
            k=state.k + 1,
            coord=(state.coord + 1) % num_params,
            next_minus=jnp.asarray(False),
        )
        after_plus = state.replace(score_plus=score, next_minus=jnp.asarray(True))
        new = jax.tree.map(
            lambda done, plus_scored, same: jnp.where(
                completes, done, jnp.where(state.pending == _PLUS, plus_scored, same)
            ),
            updated,
            after_plus,
            state,
        )
        new = new.replace(pending=jnp.asarray(_NONE, jnp.int32))
        return new, jnp.where(completes, grad, 0.0)

    return Tuner(num_params=num_params, init=init, ask=ask, tell=tell)


def _rademacher(num_params):
    def direction(key, state):
        return jax.random.rademacher(key, (num_params,), dtype=jnp.float32)

    return direction


def spsa(num_params: int) -> Tuner:
    """SPSA over ``num_params`` (static) hyperparameters in unit space.

    ``ask`` draws ``Delta`` Rademacher for each new pair; after the minus
    window ``tell`` steps ``theta <- clip(theta + a_k * clip(g), 0, 1)`` with
    ``a_k = a / (k + 1 + A) ** alpha`` and ``c_k = c / (k + 1) ** gamma``.
    """
    _check_num_params(num_params, "spsa")

    def perturbation(k, params: SPSAParams):
        return params.c / (k + 1.0) ** params.gamma

    def update(state, grad, moved, params: SPSAParams):
        a_k = params.a / (state.k + 1.0 + params.stability) ** params.alpha
        return state.replace(center=jnp.clip(state.center + a_k * grad, 0.0, 1.0))

    return _two_window(num_params, _rademacher(num_params), perturbation, update)


def momentum(num_params: int, gradient: str = "spsa", adam: bool = True) -> Tuner:
    """Gradient ascent with momentum over ``num_params`` (static) hyperparameters.

    ``gradient="spsa"``: the SPSA pair (all coordinates every two windows);
    ``"fd"``: a central finite difference on one coordinate per pair, round
    robin. The moments of a coordinate change only when the pair measured it.
    ``adam=True``: ``theta += lr * m_hat / (sqrt(v_hat) + eps)`` (Adam,
    bias-corrected); ``adam=False``: ``theta += lr * m_hat`` (EMA momentum).
    """
    _check_num_params(num_params, "momentum")
    if gradient not in ("spsa", "fd"):
        raise ValueError(f"momentum: gradient must be 'spsa' or 'fd', got {gradient!r}")

    if gradient == "spsa":
        direction = _rademacher(num_params)
    else:

        def direction(key, state):
            return jax.nn.one_hot(state.coord, num_params, dtype=jnp.float32)

    def perturbation(k, params: MomentumParams):
        return params.c / (k + 1.0) ** params.gamma

    def update(state, grad, moved, params: MomentumParams):
        m = jnp.where(
            moved, params.beta1 * state.m + (1 - params.beta1) * grad, state.m
        )
        v = jnp.where(
            moved, params.beta2 * state.v + (1 - params.beta2) * grad**2, state.v
        )
        t = state.t + moved.astype(jnp.float32)
        safe_t = jnp.maximum(t, 1.0)
        m_hat = m / (1 - params.beta1**safe_t)
        if adam:
            v_hat = v / (1 - params.beta2**safe_t)
            step = m_hat / (jnp.sqrt(v_hat) + params.eps)
        else:
            step = m_hat
        step = jnp.where(t > 0, step, 0.0)
        lr_k = (
            params.lr
            * ((1.0 + params.stability) / (state.k + 1.0 + params.stability))
            ** params.decay
        )
        center = jnp.clip(state.center + lr_k * step, 0.0, 1.0)
        return state.replace(center=center, m=m, v=v, t=t)

    return _two_window(num_params, direction, perturbation, update)


# ------------------------------------------------------------------ the router

ROUTES = ("spsa", "momentum", "backoff", "pbt")
_SPSA, _MOMENTUM, _BACKOFF, _PBT = range(4)


@struct.dataclass
class RouterParams:
    """The numbers of ``router`` (scalars, or batched under ``vmap``)."""

    autocorr_threshold: float = 0.3
    """``|rho|`` above this routes to momentum (+) or backoff (-)."""
    gap_threshold: float = 0.2
    """A relative gap below ``-gap_threshold`` routes to PBT."""
    gap_floor: float = 1.0
    """Floor on the gap's denominator (score units), for scores near zero."""
    switch_patience: int = 3
    """Evaluations the active tuner runs before any switch."""
    switch_confirmation: int = 3
    """Consecutive evaluations that must name the same new target."""
    min_history: int = 10
    """Scores needed before the signals are trusted."""


@struct.dataclass
class RouterState:
    scores: jax.Array
    """The last ``window`` finite scores, oldest first."""
    count: jax.Array
    """Finite scores seen (int32)."""
    best: jax.Array
    """Best score seen (-inf before the first)."""
    active: jax.Array
    """Index into ``ROUTES`` (int32)."""
    evals_on_active: jax.Array
    pending: jax.Array
    """Candidate target (-1: none)."""
    pending_count: jax.Array


class RouteInfo(NamedTuple):
    """What one router step found; scalars (or batched)."""

    active: jax.Array
    """The tuner to use for this evaluation (index into ``ROUTES``)."""
    target: jax.Array
    """What the signals alone would pick now."""
    switched: jax.Array
    rho: jax.Array
    """Lag-1 autocorrelation of the window (0 when degenerate)."""
    gap: jax.Array
    """Relative gap to the best score (<= 0)."""


class Router(NamedTuple):
    window: int
    init: callable
    """``init(active="spsa") -> RouterState``."""
    step: callable
    """``step(state, score, params) -> (state, RouteInfo)``."""


def lag1_autocorr(scores: jax.Array, count: jax.Array) -> jax.Array:
    """Pearson correlation of ``s[t-1]`` with ``s[t]`` over the newest
    ``min(count, W)`` entries of ``scores [W]`` (oldest first); 0 when either
    side is constant or fewer than 3 scores are in."""
    size = scores.shape[-1]
    n = jnp.clip(count, 0, size)
    x, y = scores[:-1], scores[1:]
    w = (jnp.arange(size - 1) >= size - n).astype(jnp.float32)
    pairs = jnp.maximum(jnp.sum(w), 1.0)
    x = jnp.where(w > 0, x, 0.0)
    y = jnp.where(w > 0, y, 0.0)
    mx, my = jnp.sum(w * x) / pairs, jnp.sum(w * y) / pairs
    dx, dy = w * (x - mx), w * (y - my)
    vx, vy = jnp.sum(dx**2), jnp.sum(dy**2)
    scale = 1e-6 * (1.0 + jnp.abs(mx)) ** 2 * pairs
    ok = (vx > scale) & (vy > scale) & (n >= 3)
    rho = jnp.sum(dx * dy) / jnp.sqrt(jnp.where(ok, vx * vy, 1.0))
    return jnp.where(ok, jnp.clip(rho, -1.0, 1.0), 0.0)


def router(window: int = 20) -> Router:
    """Routing between ``ROUTES`` over the last ``window`` (static, >= 3) scores."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 3:
        raise ValueError(f"router: window must be an int >= 3, got {window!r}")

    def init(active: str = "spsa") -> RouterState:
        if active not in ROUTES:
            raise ValueError(
                f"router.init: active must be one of {ROUTES}, got {active!r}"
            )
        return RouterState(
            scores=jnp.zeros(window, jnp.float32),
            count=jnp.zeros((), jnp.int32),
            best=jnp.asarray(-jnp.inf, jnp.float32),
            active=jnp.asarray(ROUTES.index(active), jnp.int32),
            evals_on_active=jnp.zeros((), jnp.int32),
            pending=jnp.asarray(-1, jnp.int32),
            pending_count=jnp.zeros((), jnp.int32),
        )

    def step(state: RouterState, score, params: RouterParams):
        score = jnp.asarray(score, jnp.float32)
        finite = jnp.isfinite(score)
        scores = jnp.where(
            finite, jnp.concatenate([state.scores[1:], score[None]]), state.scores
        )
        count = state.count + finite.astype(jnp.int32)
        best = jnp.where(finite, jnp.maximum(state.best, score), state.best)
        rho = lag1_autocorr(scores, count)
        n = jnp.clip(count, 1, window)
        valid = jnp.arange(window) >= window - n
        mean = jnp.sum(jnp.where(valid, scores, 0.0)) / n
        std = jnp.sqrt(jnp.sum(jnp.where(valid, (scores - mean) ** 2, 0.0)) / n)
        denom = jnp.maximum(jnp.maximum(jnp.abs(best), std), params.gap_floor)
        gap = jnp.where(finite, (score - best) / denom, 0.0)
        signal = jnp.where(
            gap < -params.gap_threshold,
            _PBT,
            jnp.where(
                rho > params.autocorr_threshold,
                _MOMENTUM,
                jnp.where(rho < -params.autocorr_threshold, _BACKOFF, _SPSA),
            ),
        )
        target = jnp.where(finite & (count >= params.min_history), signal, state.active)
        eligible = state.evals_on_active >= params.switch_patience
        differs = eligible & (target != state.active)
        pending_count = jnp.where(
            differs, jnp.where(target == state.pending, state.pending_count + 1, 1), 0
        )
        switched = differs & (pending_count >= params.switch_confirmation)
        active = jnp.where(switched, target, state.active)
        new = RouterState(
            scores=scores,
            count=count,
            best=best,
            active=active.astype(jnp.int32),
            evals_on_active=jnp.where(switched, 0, state.evals_on_active) + 1,
            pending=jnp.where(differs & ~switched, target, -1).astype(jnp.int32),
            pending_count=jnp.where(switched, 0, pending_count).astype(jnp.int32),
        )
        info = RouteInfo(
            active=new.active,
            target=target.astype(jnp.int32),
            switched=switched,
            rho=rho,
            gap=gap,
        )
        return new, info

    return Router(window=window, init=init, step=step)


# ------------------------------------------------------------------ shells


class _TwoWindowOptimizer:
    """Shell over a two-window tuner: unit space, keys, the pure state."""

    _owner = "tuner"

    def __init__(self, bounds, log_scale, seed):
        _check_bounds(bounds, self._owner)
        self.bounds = dict(bounds)
        self.names = list(bounds)
        self.log = _log_names(bounds, log_scale)
        for name in self.log:
            if name not in self.bounds or self.bounds[name][0] <= 0:
                raise ValueError(
                    f"{self._owner}: log_scale names {name!r}, which needs positive "
                    "bounds"
                )
        self._lo = np.array([lo for lo, _ in self.bounds.values()], np.float32)
        self._hi = np.array([hi for _, hi in self.bounds.values()], np.float32)
        self._is_log = np.array([n in self.log for n in self.names])
        self._key = jax.random.key(seed)
        self._ask = jax.jit(self.tuner.ask)
        self._tell = jax.jit(self.tuner.tell)
        self.reset()

    def reset(self) -> None:
        """Forget the pair in flight; the next ``suggest`` restarts the cycle
        from the hyperparameters it is given (the gains keep their ``k``)."""
        k = getattr(self, "state", None)
        self._k = 0 if k is None else int(k.k)
        self.state = None
        self.calls = getattr(self, "calls", 0)
        self.last_gradient = np.zeros(len(self.names))

    def _units(self, hyperparams) -> jax.Array:
        values = [float(hyperparams[n]) for n in self.names]
        return to_unit(values, self._lo, self._hi, self._is_log)

    def _values(self, units) -> dict[str, float]:
        values = np.asarray(from_unit(units, self._lo, self._hi, self._is_log))
        return {n: float(v) for n, v in zip(self.names, values, strict=True)}

    @property
    def is_probing(self) -> bool:
        """The agent is running a probe, not the center (always, once started)."""
        return self.state is not None

    def center_hyperparams(self, hyperparams: dict) -> dict:
        """``hyperparams`` with the tuned names at the current estimate."""
        if self.state is None:
            return dict(hyperparams)
        return {**hyperparams, **self._values(self.state.center)}

    def suggest(self, hyperparams: dict, record: dict) -> dict:
        missing = set(self.bounds) - set(hyperparams)
        if missing:
            raise KeyError(f"{self._owner}: agent has no hyperparams {sorted(missing)}")
        if self.state is None:
            self.state = self.tuner.init(self._units(hyperparams))
            self.state = self.state.replace(k=jnp.asarray(self._k, jnp.int32))
        score = float(record["primary_score"])
        self.state, grad = self._tell(self.state, score, self.params)
        self.last_gradient = np.asarray(grad)
        key = jax.random.fold_in(self._key, self.calls)
        self.calls += 1
        probe, self.state = self._ask(key, self.state, self.params)
        return {**hyperparams, **self._values(probe)}

    def on_improvement(self, record: dict) -> None:
        pass

    def on_plateau(self, record: dict) -> None:
        """Converged: restart the gain sequences (wider probes, larger steps)."""
        if self.state is not None:
            self.state = self.state.replace(k=jnp.zeros((), jnp.int32))
        self._k = 0


class SPSAOptimizer(_TwoWindowOptimizer):
    """SPSA between windows (``spsa``): every hyperparameter moves every two
    windows, whatever their number.

    ``bounds``: ``{name: (lo, hi)}``; ``log_scale`` names parameters normalized
    in log space (default: positive bounds spanning a factor of 10 or more, as
    ``BackoffOptimizer``). The window after each ``suggest`` runs ``theta +
    c_k Delta``, the next ``theta - c_k Delta``; ``center_hyperparams`` gives
    ``theta`` (the estimate to keep when tuning stops). ``on_plateau`` restarts
    the gains; the other numbers are ``SPSAParams``.
    """

    _owner = "SPSAOptimizer"

    def __init__(
        self,
        bounds: dict[str, tuple[float, float]],
        *,
        log_scale: Iterable[str] | None = None,
        a: float = 0.2,
        c: float = 0.1,
        stability: float = 10.0,
        alpha: float = 0.602,
        gamma: float = 0.101,
        grad_clip: float = 1.0,
        score_scale: float = 1.0,
        seed: int = 0,
    ):
        if not (c > 0 and a > 0 and score_scale > 0):
            raise ValueError(
                f"SPSAOptimizer: a, c and score_scale must be > 0, got {a}, {c}, "
                f"{score_scale}"
            )
        self.tuner = spsa(len(bounds)) if bounds else None
        self.params = SPSAParams(
            a=a,
            c=c,
            stability=stability,
            alpha=alpha,
            gamma=gamma,
            grad_clip=grad_clip,
            score_scale=score_scale,
        )
        super().__init__(bounds, log_scale, seed)


class MomentumOptimizer(_TwoWindowOptimizer):
    """Adam (or EMA momentum) on a two-window gradient (``momentum``).

    ``gradient="spsa"`` (default): the SPSA pair; ``"fd"``: a central finite
    difference, one parameter per pair of windows, round robin (as tensor-optix's
    momentum tuner, but two-sided). ``adam=False`` uses bias-corrected EMA
    momentum. Other numbers are ``MomentumParams``.
    """

    _owner = "MomentumOptimizer"

    def __init__(
        self,
        bounds: dict[str, tuple[float, float]],
        *,
        log_scale: Iterable[str] | None = None,
        gradient: str = "spsa",
        adam: bool = True,
        lr: float = 0.05,
        stability: float = 10.0,
        decay: float = 0.602,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        c: float = 0.1,
        gamma: float = 0.101,
        grad_clip: float = math.inf,
        score_scale: float = 1.0,
        seed: int = 0,
    ):
        if not (c > 0 and lr > 0 and score_scale > 0):
            raise ValueError(
                f"MomentumOptimizer: lr, c and score_scale must be > 0, got {lr}, "
                f"{c}, {score_scale}"
            )
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(
                f"MomentumOptimizer: need 0 <= beta1, beta2 < 1, got {beta1}, {beta2}"
            )
        self.gradient, self.adam = gradient, adam
        self.tuner = momentum(len(bounds), gradient, adam) if bounds else None
        self.params = MomentumParams(
            lr=lr,
            stability=stability,
            decay=decay,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            c=c,
            gamma=gamma,
            grad_clip=grad_clip,
            score_scale=score_scale,
        )
        super().__init__(bounds, log_scale, seed)


class AdaptiveOptimizer:
    """Routes each evaluation to SPSA, momentum, backoff or PBT (``router``).

    The four tuners are built from ``bounds`` unless given. Only the active one
    suggests; PBT's history is fed every evaluation, so it can exploit the best
    settings seen under any tuner. On a switch the new tuner starts from the
    old one's estimate (``center_hyperparams`` for SPSA / momentum, the
    unprobed value for backoff): that setting runs for one window, whose score
    becomes the new tuner's baseline. ``routes`` records every evaluation's
    ``active``, ``target``, ``rho``, ``gap`` and ``switched``.
    """

    def __init__(
        self,
        bounds: dict[str, tuple[float, float]],
        *,
        log_scale: Iterable[str] | None = None,
        window: int = 20,
        autocorr_threshold: float = 0.3,
        gap_threshold: float = 0.2,
        gap_floor: float = 1.0,
        switch_patience: int = 3,
        switch_confirmation: int = 3,
        min_history: int = 10,
        start: str = "spsa",
        spsa: SPSAOptimizer | None = None,
        momentum: MomentumOptimizer | None = None,
        backoff: BackoffOptimizer | None = None,
        pbt: PBTOptimizer | None = None,
        seed: int = 0,
    ):
        _check_bounds(bounds, "AdaptiveOptimizer")
        if switch_patience < 0 or switch_confirmation < 1 or min_history < 2:
            raise ValueError(
                "AdaptiveOptimizer: need switch_patience >= 0, switch_confirmation "
                f">= 1, min_history >= 2; got {switch_patience}, "
                f"{switch_confirmation}, {min_history}"
            )
        self.bounds = dict(bounds)
        self.optimizers = {
            "spsa": spsa or SPSAOptimizer(bounds, log_scale=log_scale, seed=seed),
            "momentum": momentum
            or MomentumOptimizer(bounds, log_scale=log_scale, seed=seed + 1),
            "backoff": backoff or BackoffOptimizer(bounds, log_scale=log_scale),
            "pbt": pbt or PBTOptimizer(bounds, log_scale=log_scale, seed=seed + 2),
        }
        self.router = router(window)
        self.router_params = RouterParams(
            autocorr_threshold=autocorr_threshold,
            gap_threshold=gap_threshold,
            gap_floor=gap_floor,
            switch_patience=switch_patience,
            switch_confirmation=switch_confirmation,
            min_history=min_history,
        )
        self._route = jax.jit(self.router.step)
        self.start = start
        self.reset()

    def reset(self) -> None:
        self.route_state = self.router.init(self.start)
        self.routes: list[dict] = []
        for optimizer in self.optimizers.values():
            optimizer.reset()

    @property
    def active(self) -> str:
        return ROUTES[int(self.route_state.active)]

    @property
    def is_probing(self) -> bool:
        return bool(getattr(self.optimizers[self.active], "is_probing", False))

    def _center(self, name: str, hyperparams: dict) -> dict:
        optimizer = self.optimizers[name]
        if isinstance(optimizer, _TwoWindowOptimizer):
            return optimizer.center_hyperparams(hyperparams)
        if isinstance(optimizer, BackoffOptimizer) and optimizer.phase != "base":
            return {**hyperparams, optimizer.name: optimizer.theta}
        return dict(hyperparams)

    def suggest(self, hyperparams: dict, record: dict) -> dict:
        before = self.active
        self.route_state, info = self._route(
            self.route_state, float(record["primary_score"]), self.router_params
        )
        info = {k: v.item() for k, v in jax.device_get(info._asdict()).items()}
        self.routes.append(
            {
                "window": record.get("window"),
                "active": ROUTES[info["active"]],
                "target": ROUTES[info["target"]],
                "switched": bool(info["switched"]),
                "rho": info["rho"],
                "gap": info["gap"],
            }
        )
        pbt = self.optimizers["pbt"]
        pbt_suggests = self.active == "pbt" and not info["switched"]
        if not pbt_suggests and isinstance(pbt, PBTOptimizer):
            pbt.history.append((float(record["primary_score"]), dict(hyperparams)))
            pbt.history = pbt.history[-pbt.history_size :]
        if info["switched"]:
            center = self._center(before, hyperparams)
            new = self.optimizers[self.active]
            if not isinstance(new, PBTOptimizer):
                new.reset()
            return center  # measured for one window: the new tuner's baseline
        return self.optimizers[self.active].suggest(hyperparams, record)

    def on_improvement(self, record: dict) -> None:
        for optimizer in self.optimizers.values():
            optimizer.on_improvement(record)

    def on_plateau(self, record: dict) -> None:
        for optimizer in self.optimizers.values():
            optimizer.on_plateau(record)
