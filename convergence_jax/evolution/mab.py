"""Thompson sampling + evolution: the algorithm of The Convergence.

Each generation is a bandit whose arms are the population's configurations:

1. every configuration is evaluated once (one noisy evaluation each);
2. Thompson sampling spends the rest of the generation's budget: each round draws one
   posterior sample per evaluation slot and evaluates the arms that win them, so
   promising configurations get most of the noisy evaluations;
3. the posterior means serve as fitness; the GA breeds the next generation;
4. elites survive unchanged and keep their posteriors (their sufficient statistics move
   with them), new children start from the prior.

Rewards are modelled with a Normal-Gamma posterior (unknown mean and noise) by default,
or Beta-Bernoulli for rewards in [0, 1]. A NaN reward is a failed evaluation and counts
as ``params.failure_reward``.

Usage, with a JAX objective (the whole run is one compiled program)::

    me = mab_evolution(space, population_size=16, evaluations_per_generation=64)
    params = me.default_params
    state, history = run_mab_evolution(key, me, params, objective, 20)

With an external objective, a host loop calls ``propose`` / ``observe`` / ``evolve``
(see ``convergence_jax.optimize``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import struct

from convergence_jax import bandits
from convergence_jax.evolution.genetic import ga as make_ga

__all__ = [
    "MabEvolution",
    "MabEvolutionParams",
    "MabEvolutionState",
    "mab_evolution",
    "reward_prior",
    "run_mab_evolution",
]


@struct.dataclass
class MabEvolutionParams:
    ga: Any
    """Params of the GA (``evolution.ga``)."""
    bandit: Any
    """Params of the Thompson-sampling posterior (``bandits.gaussian`` by default)."""
    failure_reward: jax.Array
    """Reward recorded for a failed (NaN) evaluation."""


@struct.dataclass
class MabEvolutionState:
    ga: Any
    """GA state; its ``population`` is the one being evaluated."""
    bandit: Any
    """Posterior sufficient statistics, one arm per configuration."""
    counts: jax.Array
    """[P] evaluations each configuration has had (elites keep theirs)."""
    generation: jax.Array
    """Generations completed."""

    @property
    def population(self):
        return self.ga.population


def reward_prior(bandit_params, center: float, scale: float):
    """A weak Normal-Gamma prior for rewards of a known scale.

    The prior mean is ``center`` with the weight of a thousandth of an observation
    (``prior_kappa = 1e-3``), and the prior guess of the noise standard deviation is
    a tenth of ``scale`` worth two pseudo-observations (``prior_alpha = 1``,
    ``prior_beta = (0.1 scale)^2``). The defaults assume rewards of order [0, 1].
    """
    return bandit_params.replace(
        prior_mean=jnp.asarray(center, jnp.float32),
        prior_kappa=jnp.asarray(1e-3, jnp.float32),
        prior_alpha=jnp.asarray(1.0, jnp.float32),
        prior_beta=jnp.asarray((0.1 * scale) ** 2, jnp.float32),
    )


class MabEvolution(NamedTuple):
    """Pure functions of one Thompson-sampling + evolution optimizer."""

    default_params: MabEvolutionParams
    init: Callable
    propose: Callable
    observe: Callable
    evolve: Callable
    configs: Callable
    posterior_mean: Callable
    population_size: int
    batch_size: int
    num_rounds: int
    """Thompson-sampling rounds per generation after the first full round."""

    @property
    def evaluations_per_generation(self) -> int:
        return self.population_size + self.num_rounds * self.batch_size


def mab_evolution(
    space_or_template,
    population_size: int = 16,
    evaluations_per_generation: int = 64,
    batch_size: int = 8,
    *,
    bandit: str = "gaussian",
    allocation: str = "thompson",
    selection: str = "tournament",
    mutation: str = "gaussian",
    crossover: str = "uniform",
    **ga_kwargs,
) -> MabEvolution:
    """Build a Thompson sampling + evolution optimizer.

    Args:
      space_or_template: a ``SearchSpace`` or a pytree of float arrays.
      population_size: configurations (arms) per generation, static.
      evaluations_per_generation: noisy evaluations per generation; the first
        ``population_size`` evaluate every configuration once, the rest go in rounds of
        ``batch_size``; a remainder that does not fill a round is not spent.
      batch_size: evaluations per Thompson-sampling round (evaluated in parallel).
      bandit: "gaussian" (Normal-Gamma) or "beta_bernoulli" (rewards in [0, 1]).
      allocation: "thompson" spends the budget by Thompson sampling; "uniform" spreads
        it uniformly at random over the population (the baseline that shows what
        Thompson sampling buys; fitness is still the posterior mean).
      selection, mutation, crossover, **ga_kwargs: forwarded to ``evolution.ga``.
    """
    if evaluations_per_generation < population_size:
        raise ValueError(
            f"evaluations_per_generation ({evaluations_per_generation}) must be >= "
            f"population_size ({population_size}): every configuration is evaluated "
            "at least once"
        )
    if allocation not in ("thompson", "uniform"):
        raise ValueError(
            f"allocation must be 'thompson' or 'uniform', got {allocation!r}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bandit not in ("gaussian", "beta_bernoulli"):
        raise ValueError(
            f"bandit must be 'gaussian' or 'beta_bernoulli', got {bandit!r}"
        )
    ga = make_ga(
        space_or_template,
        population_size,
        selection=selection,
        mutation=mutation,
        crossover=crossover,
        maximize=True,
        **ga_kwargs,
    )
    ts = bandits.BANDITS[bandit](num_arms=population_size)
    num_rounds = (evaluations_per_generation - population_size) // batch_size
    bandit_params = ts.default_params
    if bandit == "gaussian":
        bandit_params = reward_prior(bandit_params, center=0.5, scale=1.0)
    default_params = MabEvolutionParams(
        ga=ga.default_params,
        bandit=bandit_params,
        failure_reward=jnp.asarray(0.0, jnp.float32),
    )

    def init(key: jax.Array, params: MabEvolutionParams) -> MabEvolutionState:
        return MabEvolutionState(
            ga=ga.init(key, params.ga),
            bandit=ts.init(params.bandit),
            counts=jnp.zeros(population_size, jnp.int32),
            generation=jnp.asarray(0, jnp.int32),
        )

    def configs(state: MabEvolutionState, arms: jax.Array):
        """The configurations (pytree, leading axis like ``arms``) of some arms."""
        return jax.tree.map(lambda x: x[arms], state.ga.population)

    def posterior_mean(state: MabEvolutionState, params: MabEvolutionParams):
        return ts.posterior_mean(state.bandit, params.bandit)

    def propose(
        key: jax.Array, state: MabEvolutionState, params: MabEvolutionParams
    ) -> jax.Array:
        """Arms for the next ``batch_size`` evaluations, one posterior draw each."""
        if allocation == "uniform":
            return jax.random.randint(key, (batch_size,), 0, population_size)
        keys = jax.random.split(key, batch_size)
        draws = jax.vmap(ts.sample, in_axes=(0, None, None))(
            keys, state.bandit, params.bandit
        )
        return jnp.argmax(draws, axis=-1).astype(jnp.int32)

    def observe(
        key: jax.Array,
        state: MabEvolutionState,
        arms: jax.Array,
        rewards: jax.Array,
        params: MabEvolutionParams,
    ) -> MabEvolutionState:
        """Add evaluated rewards (NaN -> ``failure_reward``) to the posteriors."""
        chex.assert_rank(arms, 1)
        chex.assert_equal_shape([arms, rewards])
        rewards = jnp.where(jnp.isnan(rewards), params.failure_reward, rewards)
        counts = state.counts.at[arms].add(1)
        posterior = ts.update(key, state.bandit, arms, rewards, params.bandit)
        return state.replace(bandit=posterior, counts=counts)

    def evolve(key: jax.Array, state: MabEvolutionState, params: MabEvolutionParams):
        """Posterior means -> fitness -> next generation; elites keep posteriors.

        Returns the new state and metrics of the generation that just ended:
        ``population`` (its configurations), ``fitness`` (posterior means), ``counts``,
        ``best_index``, ``best_fitness``.
        """
        k_tell, k_ask = jax.random.split(key)
        fitness = ts.posterior_mean(state.bandit, params.bandit)
        ended = {
            "population": state.ga.population,
            "fitness": fitness,
            "counts": state.counts,
            "best_index": jnp.argmax(fitness),
            "best_fitness": jnp.max(fitness),
        }
        ga_state, _ = ga.tell(k_tell, state.ga.population, fitness, state.ga, params.ga)
        children, ga_state = ga.ask(k_ask, ga_state, params.ga)
        # The children are the next population to evaluate (tell receives them back).
        ga_state = ga_state.replace(population=children)
        keep = ga_state.elite_mask
        src = ga_state.parent_idx

        def carry(x):
            moved = x[..., src]
            return jnp.where(keep, moved, jnp.zeros_like(moved))

        new_state = state.replace(
            ga=ga_state,
            bandit=jax.tree.map(carry, state.bandit),
            counts=carry(state.counts),
            generation=state.generation + 1,
        )
        return new_state, ended

    return MabEvolution(
        default_params=default_params,
        init=init,
        propose=propose,
        observe=observe,
        evolve=evolve,
        configs=configs,
        posterior_mean=posterior_mean,
        population_size=population_size,
        batch_size=batch_size,
        num_rounds=num_rounds,
    )


def run_mab_evolution(
    key: jax.Array,
    me: MabEvolution,
    params: MabEvolutionParams,
    objective: Callable,
    num_generations: int,
    *,
    has_aux: bool = False,
    callback: Callable | None = None,
):
    """A whole run as one ``lax.scan``: jit it, ``vmap`` it over keys or params.

    Args:
      key: typed PRNG key.
      me: from ``mab_evolution``.
      params: ``MabEvolutionParams``.
      objective: ``objective(key, configs) -> rewards [N]`` (or ``(rewards, aux)`` with
        ``has_aux=True``), a vectorized JAX function over a batch of configurations.
      num_generations: static.
      callback: optional host function ``callback(generation, best_fitness)`` called
        through ``jax.debug.callback`` after each generation (progress bars).

    Returns:
      ``(state, history)``; history has a leading [num_generations] axis: the
      ``evolve`` metrics, plus ``first`` (arms, rewards, aux of the round that
      evaluates every configuration) and ``rounds`` (arms [R, B], rewards, aux).
    """
    P, R = me.population_size, me.num_rounds

    def evaluate(key, state, arms):
        out = objective(key, me.configs(state, arms))
        rewards, aux = out if has_aux else (out, None)
        rewards = jnp.asarray(rewards, jnp.float32)
        chex.assert_shape(rewards, arms.shape)
        return rewards, aux

    def ts_round(state, key):
        k_propose, k_eval, k_update = jax.random.split(key, 3)
        arms = me.propose(k_propose, state, params)
        rewards, aux = evaluate(k_eval, state, arms)
        state = me.observe(k_update, state, arms, rewards, params)
        return state, {"arms": arms, "rewards": rewards, "aux": aux}

    def generation(state, key):
        k_eval, k_update, k_rounds, k_evolve = jax.random.split(key, 4)
        arms = jnp.arange(P, dtype=jnp.int32)
        rewards, aux = evaluate(k_eval, state, arms)
        state = me.observe(k_update, state, arms, rewards, params)
        state, rounds = jax.lax.scan(ts_round, state, jax.random.split(k_rounds, R))
        state, ended = me.evolve(k_evolve, state, params)
        if callback is not None:
            jax.debug.callback(callback, state.generation, ended["best_fitness"])
        first = {"arms": arms, "rewards": rewards, "aux": aux}
        return state, {**ended, "first": first, "rounds": rounds}

    k_init, k_run = jax.random.split(key)
    state = me.init(k_init, params)
    return jax.lax.scan(generation, state, jax.random.split(k_run, num_generations))
