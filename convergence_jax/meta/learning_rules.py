"""Learned learning rules: genomes that say how a gradient-trained model learns.

A :class:`LearningRule` encodes a learning-rate schedule shape (constant, cosine,
linear warmup then cosine, step decay), the peak learning rate, gradient clipping
(on/off and the global-norm limit), momentum and decoupled weight decay.
:func:`build_optimizer` turns one (traced) rule into an optax transformation::

    clip_by_global_norm -> add_decayed_weights -> trace (momentum) -> -lr(t)

so one compiled training program runs every rule, and rules are ``vmap`` ped.
A rule is scored by training a small MLP on regression tasks (full-batch gradient
descent for ``num_steps`` steps) and reading the normalized best-so-far loss curve
with the same meta-metrics as strategy genomes (diversity and compute cost are
constant here); :func:`meta_train_learning_rules` meta-evolves them with the same
machinery as :func:`~convergence_jax.meta.meta_train`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from convergence_jax.meta import genome as gn
from convergence_jax.meta.evolve import (
    breed,
    check_meta_params,
    default_meta_params,
    run_meta_evolution,
)
from convergence_jax.meta.metrics import meta_fitness, run_metrics
from convergence_jax.meta.tasks import TaskFamily, normalize

__all__ = [
    "LearningRule",
    "SCHEDULES",
    "build_optimizer",
    "default_learning_rule",
    "learning_rate",
    "make_rule_curves",
    "meta_train_learning_rules",
]

SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")
"""Schedule shape gene values, in switch order."""


@struct.dataclass
class LearningRule:
    """A learning rule (or a batch: leading axis on every field)."""

    schedule: jax.Array  # index into SCHEDULES
    learning_rate: jax.Array  # peak learning rate
    warmup_fraction: jax.Array  # fraction of the steps spent warming up
    clipping: jax.Array  # int 0/1: clip the global gradient norm
    clip_norm: jax.Array  # the global-norm limit when clipping
    momentum: jax.Array  # heavy-ball decay (optax.trace)
    weight_decay: jax.Array  # decoupled weight decay per unit learning rate


LearningRule.SPECS = (
    gn.GeneSpec("schedule", "method", 0, 3, False, "constant", SCHEDULES),
    gn.GeneSpec("learning_rate", "float", 1e-4, 1.0, True, 0.01),
    gn.GeneSpec("warmup_fraction", "float", 0.0, 0.5, False, 0.1),
    gn.GeneSpec("clipping", "bool", 0, 1, False, 0),
    gn.GeneSpec("clip_norm", "float", 1e-2, 100.0, True, 1.0),
    gn.GeneSpec("momentum", "float", 0.0, 0.99, False, 0.9),
    gn.GeneSpec("weight_decay", "float", 0.0, 0.1, False, 0.0),
)
LearningRule.replace = gn._typed_replace


def default_learning_rule(**overrides) -> LearningRule:
    """The hand-designed default: SGD with momentum 0.9 at a constant 0.01, no
    clipping, no weight decay."""
    return gn.default_genome(genome_cls=LearningRule, **overrides)


def learning_rate(rule: LearningRule, step, num_steps: int):
    """The learning rate at ``step`` of ``num_steps`` (traced-safe).

    constant: ``lr``; cosine: ``lr (1 + cos(pi t)) / 2``; warmup_cosine: linear from
    0 over ``warmup_fraction`` then cosine to 0; step: ``lr 0.1^floor(3 t)`` (two
    decays by 10x), with ``t = step / num_steps``.
    """
    t = jnp.asarray(step, jnp.float32) / num_steps
    warm = jnp.maximum(rule.warmup_fraction, 1e-6)
    after = jnp.clip((t - rule.warmup_fraction) / jnp.maximum(1.0 - warm, 1e-6), 0, 1)
    shapes = jnp.stack(
        [
            jnp.ones_like(t),
            0.5 * (1.0 + jnp.cos(math.pi * t)),
            jnp.where(
                t < rule.warmup_fraction,
                t / warm,
                0.5 * (1.0 + jnp.cos(math.pi * after)),
            ),
            0.1 ** jnp.floor(jnp.minimum(3.0 * t, 2.0)),
        ]
    )
    index = jnp.clip(rule.schedule, 0, len(SCHEDULES) - 1)
    return rule.learning_rate * shapes[index]


def build_optimizer(rule: LearningRule, num_steps: int) -> optax.GradientTransformation:
    """An optax transformation for one (possibly traced) rule."""
    max_norm = jnp.where(rule.clipping > 0, rule.clip_norm, jnp.inf)
    return optax.chain(
        optax.clip_by_global_norm(max_norm),
        optax.add_decayed_weights(rule.weight_decay),
        optax.trace(decay=rule.momentum),
        optax.scale_by_schedule(lambda step: -learning_rate(rule, step, num_steps)),
    )


def make_rule_curves(family: TaskFamily, *, num_steps: int):
    """``curves(key, rules [M], num_seeds) -> normalized best-so-far [M, T, S, K]``.

    ``family`` must have a differentiable fitness (e.g.
    :func:`~convergence_jax.meta.regression_family`); the model starts from the
    family's initial distribution (a fresh draw per seed) and minimizes
    ``-fitness`` by full-batch steps of the rule's optimizer.
    """

    def train(key, rule, task):
        params = family.init_population(key, task, 1)
        params = jax.tree.map(lambda x: x[0], params)

        def loss(p):
            return -family.fitness(task, jax.tree.map(lambda x: x[None], p))[0]

        opt = build_optimizer(rule, num_steps)
        state = opt.init(params)

        def step(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        (params, _), losses = jax.lax.scan(step, (params, state), None, num_steps)
        losses = jnp.concatenate([losses[1:], loss(params)[None]])
        losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
        return jax.lax.cummin(losses)

    def curves(key, rules, num_seeds):
        keys = jax.random.split(key, (family.num_tasks, num_seeds))
        over_seeds = jax.vmap(train, (0, None, None))
        over_tasks = jax.vmap(over_seeds, (0, None, 0))
        raw = -jax.vmap(over_tasks, (None, 0, None))(keys, rules, family.data)
        task = jax.tree.map(lambda x: x[None, :, None, None], family.data)
        return normalize(family, task, raw)

    return curves


def meta_train_learning_rules(
    family: TaskFamily,
    key=None,
    *,
    num_rules: int = 16,
    num_meta_generations: int = 10,
    num_steps: int = 200,
    num_seeds: int = 2,
    num_elites: int = 2,
    params=None,
    final_rounds: int = 2,
    callback=None,
):
    """Meta-evolve learning rules on ``family``'s tasks (weighted-sum meta-fitness).

    Returns a :class:`~convergence_jax.meta.MetaResult` whose genomes are
    :class:`LearningRule` s; the first initial rule is the hand-designed default.
    """
    if not isinstance(family, TaskFamily):
        raise ValueError(f"family: expected a TaskFamily, got {type(family).__name__}")
    for name, value, lo in (
        ("num_rules", num_rules, 2),
        ("num_meta_generations", num_meta_generations, 1),
        ("num_steps", num_steps, 1),
        ("num_seeds", num_seeds, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {value!r}")
    if not 0 <= num_elites < num_rules:
        raise ValueError(f"num_elites: expected 0 <= num_elites < {num_rules}")
    params = default_meta_params() if params is None else params
    check_meta_params(params)
    specs = LearningRule.SPECS
    curves_fn = make_rule_curves(family, num_steps=num_steps)

    def step(key, rules, params):
        key_eval, key_breed = jax.random.split(key)
        curves = curves_fn(key_eval, rules, num_seeds)
        metrics = run_metrics(
            curves, jnp.ones_like(curves), jnp.ones((1, 1)), 1, params.threshold
        )
        fitness, per_task = meta_fitness(metrics, params.weights)
        return (
            breed(key_breed, rules, fitness, params, num_elites, specs),
            metrics,
            fitness,
            per_task,
        )

    key = jax.random.key(0) if key is None else key
    key_init, key_loop = jax.random.split(key)
    default = default_learning_rule()
    rand = gn.random_genomes(key_init, num_rules - 1, specs, genome_cls=LearningRule)
    initial = jax.tree.map(lambda d, r: jnp.concatenate([d[None], r]), default, rand)
    config = {
        "num_rules": num_rules,
        "num_meta_generations": num_meta_generations,
        "num_steps": num_steps,
        "num_seeds": num_seeds,
        "num_elites": num_elites,
        "weights": [float(w) for w in np.asarray(params.weights)],
    }
    return run_meta_evolution(
        step,
        initial,
        params,
        key_loop,
        num_meta_generations=num_meta_generations,
        final_rounds=final_rounds,
        callback=callback,
        task_names=family.task_names,
        config=config,
    )
