"""Trial pre-search: short PPO trials searched by Thompson sampling + evolution,
before the loop's main run, which starts from the best trial's weights.

    space = SearchSpace.from_dict({
        "learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True},
        "ent_coef": {"type": "float", "min": 0.0, "max": 0.05},
        "update_epochs": {"type": "int", "min": 2, "max": 8},
    })
    result = loop.presearch(rl.PPOConfig(num_envs=8, num_steps=128), space,
                            trial_timesteps=30_000, generations=3)
    agent = result.agent()     # a PPOAgent: the best trial's config and weights

The search is the project's own ``evolution.mab_evolution``: each generation every
configuration of the population runs one trial, then Thompson sampling spends the
rest of the generation's trials on the configurations whose posterior looks best
(a trial is a noisy evaluation: another seed), and the GA breeds the next
population from the posterior means. A trial is a whole PPO run of
``trial_timesteps`` environment steps (``rl.make_train``), scored by the mean
return of the episodes that ended over its last ``score_fraction`` of updates.

Float and log-float parameters name ``PPOHParams`` fields (learning rate, entropy
bonus, clip range, ...): they are arrays, so a batch of trials is one
``vmap`` of the compiled run — one program for the whole batch. Int parameters
name static ``PPOConfig`` fields that change shapes (``num_envs``, ``num_steps``,
``update_epochs``, ``num_minibatches``): trials are grouped by their int values and
each group is one vmapped program (compiled once per distinct group and reused).
A trial whose configuration is invalid (say ``num_minibatches`` that does not
divide the batch) is a failed evaluation: it scores NaN (the bandit counts it as
``failure_reward``, below the worst trial of the first round) and is recorded
with its error; it never stops the search.

The best single trial — its configuration, its seed and its final ``TrainState`` —
is kept; ``PresearchResult.agent()`` builds a ``PPOAgent`` with that configuration
(the base config's ``total_timesteps`` as the learning-rate horizon) and loads the
trial's parameters, optimizer state and observation statistics, so the main run
warm-starts where the best trial ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from convergence_jax.evolution.mab import mab_evolution, reward_prior
from convergence_jax.rl.ppo import PPOConfig, PPOHParams, make_train
from convergence_jax.spaces import Float, Int, SearchSpace

__all__ = ["STATIC_INT_FIELDS", "PresearchResult", "presearch"]

STATIC_INT_FIELDS = ("num_envs", "num_steps", "update_epochs", "num_minibatches")
_HPARAMS = tuple(f.name for f in fields(PPOHParams))


@dataclass
class PresearchResult:
    best_config: PPOConfig
    """The best trial's configuration (static ints and floats applied), with the
    base config's ``total_timesteps``."""
    best_hyperparams: dict[str, float]
    """Its ``PPOHParams`` values."""
    best_score: float
    """The best single trial's score."""
    best_state: Any
    """The best trial's final ``TrainState``."""
    trials: list[dict] = field(default_factory=list)
    """Every trial: ``generation``, ``config`` (the searched values), ``seed``,
    ``score`` and, for a failed trial, ``error``."""
    generations: list[dict] = field(default_factory=list)
    """Per generation: ``best_fitness`` (posterior mean), ``best_config``,
    ``trials``."""
    env_steps: int = 0
    """Environment steps of all trials together."""

    def agent(self, seed: int = 0):
        """A ``PPOAgent`` warm-started from the best trial."""
        from convergence_jax.loop.agent import PPOAgent

        agent = PPOAgent(self.best_config, seed=seed, **self.best_hyperparams)
        state = jax.device_get(self.best_state)
        agent.state = agent.state.replace(
            params=state.params, opt_state=state.opt_state, obs_stats=state.obs_stats
        )
        return agent


def _check_space(space: SearchSpace) -> None:
    if not isinstance(space, SearchSpace):
        raise ValueError(
            f"presearch.space: expected a SearchSpace, got {type(space).__name__}"
        )
    for name in space.names:
        param = space[name]
        if isinstance(param, Float):
            if name not in _HPARAMS:
                raise ValueError(
                    f"presearch.space: float parameter {name!r} is not a PPOHParams "
                    f"field; floats must be one of {list(_HPARAMS)}"
                )
        elif isinstance(param, Int):
            if name not in STATIC_INT_FIELDS:
                raise ValueError(
                    f"presearch.space: int parameter {name!r} is not a searchable "
                    f"PPOConfig field; ints must be one of {list(STATIC_INT_FIELDS)}"
                )
            if param.low < 1:
                raise ValueError(
                    f"presearch.space: int parameter {name!r} must have min >= 1, "
                    f"got {param.low}"
                )
        else:
            raise ValueError(
                f"presearch.space: {name!r} is {type(param).__name__}; pre-search "
                "takes float, log-float and int parameters"
            )


def _score(metrics, fraction: float) -> np.ndarray:
    returns = np.asarray(metrics["episode_return"], np.float64)  # [N, updates]
    tail = max(1, int(math.ceil(returns.shape[1] * fraction)))
    last = returns[:, -tail:]
    with np.errstate(invalid="ignore"):
        counts = np.isfinite(last).sum(1)
        total = np.where(np.isfinite(last), last, 0.0).sum(1)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def presearch(
    config: PPOConfig,
    space: SearchSpace,
    *,
    trial_timesteps: int,
    population_size: int = 8,
    trials_per_generation: int | None = None,
    batch_size: int | None = None,
    generations: int = 2,
    score_fraction: float = 0.2,
    seed: int = 0,
    verbose: bool = False,
) -> PresearchResult:
    """Search ``space`` with short PPO trials; returns the best trial and the log.

    Args:
      config: the base ``PPOConfig`` (environment, network, the values of every
        field the space does not search).
      space: float / log-float parameters over ``PPOHParams`` fields, int
        parameters over ``STATIC_INT_FIELDS``.
      trial_timesteps: environment steps per trial (at least one rollout).
      population_size: configurations per generation.
      trials_per_generation: trials per generation (default ``2 *
        population_size``): one per configuration, the rest by Thompson sampling
        in rounds of ``batch_size`` (default ``population_size // 2``).
      generations: GA generations.
      score_fraction: a trial's score is the mean return of the episodes that
        ended in its last ``score_fraction`` of updates.
    """
    _check_space(space)
    for name, value, low in (
        ("trial_timesteps", trial_timesteps, 1),
        ("population_size", population_size, 2),
        ("generations", generations, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"presearch.{name}: expected an int >= {low}, got {value!r}"
            )
    if not 0 < score_fraction <= 1:
        raise ValueError(
            f"presearch.score_fraction: expected a value in (0, 1], got "
            f"{score_fraction!r}"
        )
    trials_per_generation = trials_per_generation or 2 * population_size
    batch_size = batch_size or max(1, population_size // 2)
    me = mab_evolution(
        space,
        population_size=population_size,
        evaluations_per_generation=trials_per_generation,
        batch_size=batch_size,
    )
    params = me.default_params
    propose, observe, evolve = (jax.jit(f) for f in (me.propose, me.observe, me.evolve))
    ints = [n for n in space.names if isinstance(space[n], Int)]
    floats = [n for n in space.names if isinstance(space[n], Float)]
    programs: dict[tuple, Any] = {}
    result = PresearchResult(
        best_config=config, best_hyperparams={}, best_score=-math.inf, best_state=None
    )
    next_seed = [seed * 1_000_003]

    def trial_config(static: dict) -> PPOConfig:
        return replace(config, total_timesteps=trial_timesteps, **static)

    def run_group(static: tuple, rows: list[dict], seeds: list[int]):
        cfg = trial_config(dict(zip(ints, static, strict=True)))
        if static not in programs:
            programs[static] = jax.jit(jax.vmap(make_train(cfg)))
        # Batches are padded (repeating the first trial) to the round size or the
        # population size, so that each static group compiles at most twice.
        real = len(rows)
        size = batch_size if real <= batch_size else population_size
        rows = rows + [rows[0]] * (size - real)
        seeds = seeds + [seeds[0]] * (size - real)
        base = PPOHParams.from_config(cfg)
        hparams = base.replace(
            **{
                name: jnp.asarray([row[name] for row in rows], jnp.float32)
                for name in floats
            }
        )
        hparams = jax.tree.map(
            lambda x: jnp.broadcast_to(x, (len(rows),)) if jnp.ndim(x) == 0 else x,
            hparams,
        )
        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
        states, metrics = programs[static](keys, hparams)
        steps = cfg.num_updates * cfg.num_envs * cfg.num_steps * real
        scores = _score(jax.device_get(metrics), score_fraction)[:real]
        return scores, states, steps

    def evaluate(generation: int, configs: dict) -> np.ndarray:
        rows = space.decode(jax.device_get(configs))
        scores = np.full(len(rows), np.nan)
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(tuple(int(row[n]) for n in ints), []).append(i)
        seeds = []
        for _ in rows:
            seeds.append(next_seed[0])
            next_seed[0] += 1
        errors: dict[int, str] = {}
        for static, members in groups.items():
            try:
                group_scores, states, steps = run_group(
                    static, [rows[i] for i in members], [seeds[i] for i in members]
                )
            except ValueError as error:  # an invalid configuration: a failed trial
                for i in members:
                    errors[i] = str(error)
                continue
            result.env_steps += steps
            for j, i in enumerate(members):
                scores[i] = group_scores[j]
                if np.isfinite(group_scores[j]) and group_scores[j] > result.best_score:
                    result.best_score = float(group_scores[j])
                    result.best_state = jax.tree.map(lambda x, j=j: x[j], states)
                    best_static = dict(zip(ints, static, strict=True))
                    result.best_config = replace(config, **best_static)
                    result.best_hyperparams = {
                        **{
                            n: float(getattr(PPOHParams.from_config(config), n))
                            for n in _HPARAMS
                        },
                        **{n: float(rows[i][n]) for n in floats},
                    }
        for i, row in enumerate(rows):
            entry = {
                "generation": generation,
                "config": row,
                "seed": seeds[i],
                "score": float(scores[i]),
            }
            if i in errors:
                entry["error"] = errors[i]
            result.trials.append(entry)
        return scores

    key = jax.random.key(seed)
    key, k_init = jax.random.split(key)
    state = me.init(k_init, params)
    for generation in range(generations):
        key, k_obs, k_rounds, k_evolve = jax.random.split(key, 4)
        arms = jnp.arange(population_size, dtype=jnp.int32)
        scores = evaluate(generation, me.configs(state, arms))
        if generation == 0:  # the posterior's prior, on the scale of the returns
            finite = scores[np.isfinite(scores)]
            center = float(finite.mean()) if len(finite) else 0.0
            scale = float(finite.std()) if len(finite) > 1 else 1.0
            params = params.replace(
                bandit=reward_prior(params.bandit, center, max(scale, 1e-3)),
                # A failed trial ranks below every trial that ran.
                failure_reward=jnp.asarray(
                    float(finite.min()) - max(scale, 1.0) if len(finite) else 0.0,
                    jnp.float32,
                ),
            )
        state = observe(k_obs, state, arms, jnp.asarray(scores, jnp.float32), params)
        for k_round in jax.random.split(k_rounds, me.num_rounds):
            k_prop, k_obs = jax.random.split(k_round)
            arms = propose(k_prop, state, params)
            scores = evaluate(generation, me.configs(state, arms))
            state = observe(
                k_obs, state, arms, jnp.asarray(scores, jnp.float32), params
            )
        state, ended = evolve(k_evolve, state, params)
        ended = jax.device_get(ended)
        best = int(ended["best_index"])
        summary = {
            "generation": generation,
            "best_fitness": float(ended["best_fitness"]),
            "best_config": space.decode_one(ended["population"], best),
            "trials": me.evaluations_per_generation,
        }
        result.generations.append(summary)
        if verbose:
            print(
                f"[presearch] generation {generation}: posterior best "
                f"{summary['best_fitness']:.2f} at {summary['best_config']}; best "
                f"trial so far {result.best_score:.2f}"
            )
    if result.best_state is None:
        raise RuntimeError(
            "presearch: every trial failed or no episode ended in any trial; "
            "errors: "
            + "; ".join(sorted({t.get("error", "no episodes") for t in result.trials}))[
                :2000
            ]
        )
    return result
