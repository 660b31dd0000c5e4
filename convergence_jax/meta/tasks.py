"""The task suite: families of tasks that one compiled program runs side by side.

A :class:`TaskFamily` is a set of tasks that share a solution shape and a fitness
function; what differs between them (which function, shift, rotation, environment
parameters, targets) is *data* with a leading ``[T]`` axis, so a family is
``vmap`` ped over its tasks. Meta-training runs every family of a suite inside one
``jit``.

Every task reports a **normalized** score so that tasks of different scale combine
fairly: 0 is the reference level (the best of ``reference_samples`` random
solutions from the task's initial distribution, averaged over 16 draws) and 1 the
best known value (for BBOB and regression, a gap of ``tolerance`` to the optimum
on a log scale; for CartPole, the maximal return, linearly). Scores are clipped to
``[-1, 1]``.

Families:

* :func:`bbob_family` — shifted and rotated BBOB-style functions (sphere, ellipsoid,
  Rastrigin, Rosenbrock, Ackley, Griewank, Schwefel; Hansen et al., 2009) in any
  dimension, initial solutions uniform on ``[-5, 5]^D``. Rotations are drawn once
  with NumPy from the instance seed and stored as task data.
* :func:`cartpole_family` — neuroevolution of an MLP policy on gymnax CartPole
  (variants change the pole length), fitness = mean return of episodes from fixed
  start states. A best-of-64 random policy often balances already, so its
  reference is the *mean* random return.
* :func:`regression_family` — a small MLP fit to ``c sin(a x + b)`` by evolution,
  fitness = minus the mean squared error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "BBOB_FUNCTIONS",
    "TaskFamily",
    "TaskSuite",
    "bbob_family",
    "cartpole_family",
    "normalize",
    "regression_family",
    "task_suite",
]


class TaskFamily(NamedTuple):
    """Tasks sharing a solution shape and a fitness function (data ``[T, ...]``).

    ``fitness(task, population) -> [P]`` (higher is better) and
    ``init_population(key, task, num) -> population`` take one task's data
    (``jax.tree.map(lambda x: x[t], data)``). ``data`` holds ``reference`` and
    ``optimum`` (raw fitness levels) and ``tolerance`` per task.
    """

    name: str
    task_names: tuple[str, ...]
    template: Any
    data: Any
    fitness: Callable
    init_population: Callable
    log_scale: bool

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def task(self, index: int):
        """The data of task ``index``."""
        return jax.tree.map(lambda x: x[index], self.data)

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other


class TaskSuite(NamedTuple):
    """Meta-train families and held-out meta-test families."""

    train: tuple[TaskFamily, ...]
    test: tuple[TaskFamily, ...]


def normalize(family: TaskFamily, task, raw):
    """Raw fitness -> normalized score (0 = reference, 1 = best known), clipped to
    ``[-1, 1]``; works on any shape of ``raw`` with ``task`` broadcast."""
    raw = jnp.asarray(raw, jnp.float32)
    if family.log_scale:
        tol = task["tolerance"]
        gap = jnp.maximum(task["optimum"] - raw, tol)
        ref = jnp.maximum(task["optimum"] - task["reference"], 10.0 * tol)
        score = (jnp.log(ref) - jnp.log(gap)) / (jnp.log(ref) - jnp.log(tol))
    else:
        score = (raw - task["reference"]) / (task["optimum"] - task["reference"])
    score = jnp.where(jnp.isnan(score), -1.0, score)
    return jnp.clip(score, -1.0, 1.0)


# ---------------------------------------------------------------- BBOB functions


def sphere(z):
    return jnp.sum(z**2, -1)


def ellipsoid(z):
    d = z.shape[-1]
    weights = 10.0 ** (6.0 * jnp.arange(d) / max(d - 1, 1))
    return jnp.sum(weights * z**2, -1)


def rastrigin(z):
    d = z.shape[-1]
    return 10.0 * d + jnp.sum(z**2 - 10.0 * jnp.cos(2 * jnp.pi * z), -1)


def rosenbrock(z):
    y = z + 1.0
    return jnp.sum(
        100.0 * (y[..., 1:] - y[..., :-1] ** 2) ** 2 + (1.0 - y[..., :-1]) ** 2, -1
    )


def ackley(z):
    a = -20.0 * jnp.exp(-0.2 * jnp.sqrt(jnp.mean(z**2, -1)))
    return a - jnp.exp(jnp.mean(jnp.cos(2 * jnp.pi * z), -1)) + 20.0 + math.e


def griewank(z):
    u = 100.0 * z  # [-5, 5] maps to Griewank's usual [-500, 500]
    i = jnp.arange(1, z.shape[-1] + 1, dtype=jnp.float32)
    return 1.0 + jnp.sum(u**2, -1) / 4000.0 - jnp.prod(jnp.cos(u / jnp.sqrt(i)), -1)


_SCHWEFEL_X = 420.968746


def schwefel(z):
    u = 100.0 * z + _SCHWEFEL_X  # optimum at z = 0
    inside = jnp.clip(u, -500.0, 500.0)
    penalty = jnp.sum((u - inside) ** 2, -1)
    value = -jnp.sum(inside * jnp.sin(jnp.sqrt(jnp.abs(inside))), -1)
    optimum = -z.shape[-1] * _SCHWEFEL_X * math.sin(math.sqrt(_SCHWEFEL_X))
    return value - optimum + penalty


BBOB_FUNCTIONS: dict[str, Callable] = {
    "sphere": sphere,
    "ellipsoid": ellipsoid,
    "rastrigin": rastrigin,
    "rosenbrock": rosenbrock,
    "ackley": ackley,
    "griewank": griewank,
    "schwefel": schwefel,
}
"""``f(z [..., D]) -> [...]``, minimum 0 at ``z = 0``."""


def _rotation(rng: np.random.Generator, dim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _with_reference(
    family: TaskFamily, samples: int, draws: int = 16, statistic: str = "best"
) -> TaskFamily:
    """Fill ``data["reference"]``: the best (or mean) of ``samples`` random
    solutions, averaged over ``draws`` draws."""

    def best_of_random(key, task):
        population = family.init_population(key, task, samples)
        fitness = family.fitness(task, population)
        if statistic == "mean":
            return jnp.nanmean(fitness)
        return jnp.max(jnp.where(jnp.isnan(fitness), -jnp.inf, fitness))

    keys = jax.random.split(jax.random.key(12345), draws)
    per_task = jax.vmap(jax.vmap(best_of_random, (0, None)), (None, 0))
    best = jax.jit(per_task)(keys, family.data)
    data = dict(family.data, reference=jnp.mean(best, axis=1).astype(jnp.float32))
    return family._replace(data=data)


def _check_names(field, names, valid):
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"{field}: expected a non-empty list of names, got {names!r}")
    for name in names:
        if name not in valid:
            raise ValueError(f"{field}: unknown {name!r}; valid: {sorted(valid)}")


def bbob_family(
    functions: Sequence[str],
    dim: int,
    *,
    instance: int = 0,
    tolerance: float = 1e-6,
    reference_samples: int = 64,
    name: str | None = None,
) -> TaskFamily:
    """Shifted and rotated BBOB-style functions in dimension ``dim``, one per task.

    Fitness is ``-f(R (x - x_opt))`` with ``x_opt`` uniform on ``[-4, 4]^D`` and a
    random rotation ``R`` (both from ``instance``); solutions are vectors ``[D]``.
    """
    _check_names("functions", functions, BBOB_FUNCTIONS)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"dim: expected an int >= 2, got {dim!r}")
    functions = tuple(functions)
    rng = np.random.default_rng([instance, dim])
    num = len(functions)
    data = {
        "function": jnp.arange(num, dtype=jnp.int32),
        "shift": jnp.asarray(rng.uniform(-4, 4, (num, dim)), jnp.float32),
        "rotation": jnp.asarray(np.stack([_rotation(rng, dim) for _ in functions])),
        "optimum": jnp.zeros((num,), jnp.float32),
        "tolerance": jnp.full((num,), tolerance, jnp.float32),
        "reference": jnp.zeros((num,), jnp.float32),
    }
    fns = [BBOB_FUNCTIONS[f] for f in functions]

    def fitness(task, population):
        z = (population - task["shift"]) @ task["rotation"].T
        values = jnp.stack([f(z) for f in fns])
        return -jnp.take(values, task["function"], axis=0)

    def init_population(key, task, num):
        del task
        return jax.random.uniform(key, (num, dim), jnp.float32, -5.0, 5.0)

    family = TaskFamily(
        name=name or f"bbob-d{dim}-i{instance}",
        task_names=tuple(f"{f}-d{dim}-i{instance}" for f in functions),
        template=jnp.zeros((dim,), jnp.float32),
        data=data,
        fitness=fitness,
        init_population=init_population,
        log_scale=True,
    )
    return _with_reference(family, reference_samples)


def _mlp_template(sizes):
    return {
        f"layer{i}": {
            "kernel": jnp.zeros((a, b), jnp.float32),
            "bias": jnp.zeros((b,), jnp.float32),
        }
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    }


def _mlp_init(key, template, num):
    """LeCun-normal kernels, zero biases, ``num`` networks."""
    out = {}
    keys = jax.random.split(key, len(template))
    for k, (name, layer) in zip(keys, sorted(template.items()), strict=True):
        fan_in = layer["kernel"].shape[0]
        out[name] = {
            "kernel": jax.random.normal(k, (num, *layer["kernel"].shape))
            / math.sqrt(fan_in),
            "bias": jnp.zeros((num, *layer["bias"].shape), jnp.float32),
        }
    return out


def _mlp_apply(params, x):
    """Tanh MLP on ``x [..., in]`` for one network ``params``."""
    layers = sorted(params)
    for i, name in enumerate(layers):
        x = x @ params[name]["kernel"] + params[name]["bias"]
        if i < len(layers) - 1:
            x = jnp.tanh(x)
    return x


def regression_family(
    targets: Sequence[tuple[float, float, float]] = ((2.0, 0.5, 1.0),),
    *,
    hidden: int = 16,
    num_points: int = 32,
    tolerance: float = 1e-4,
    reference_samples: int = 64,
    name: str = "regression",
) -> TaskFamily:
    """Fit an MLP ``1 -> hidden -> 1`` (tanh) to ``c sin(a x + b)`` on ``[-2, 2]``,
    one task per ``(a, b, c)``; fitness is minus the mean squared error."""
    targets = np.asarray(targets, np.float32)
    if targets.ndim != 2 or targets.shape[1] != 3 or len(targets) == 0:
        raise ValueError(
            f"targets: expected a list of (a, b, c) triples, got shape {targets.shape}"
        )
    xs = np.linspace(-2.0, 2.0, num_points, dtype=np.float32)
    ys = targets[:, 2:3] * np.sin(targets[:, 0:1] * xs[None] + targets[:, 1:2])
    num = len(targets)
    template = _mlp_template((1, hidden, 1))
    data = {
        "ys": jnp.asarray(ys),
        "optimum": jnp.zeros((num,), jnp.float32),
        "tolerance": jnp.full((num,), tolerance, jnp.float32),
        "reference": jnp.zeros((num,), jnp.float32),
    }
    inputs = jnp.asarray(xs)[:, None]

    def fitness(task, population):
        predict = jax.vmap(lambda p: _mlp_apply(p, inputs)[:, 0])(population)
        return -jnp.mean((predict - task["ys"]) ** 2, axis=-1)

    def init_population(key, task, num):
        del task
        return _mlp_init(key, template, num)

    family = TaskFamily(
        name=name,
        task_names=tuple(f"{name}-a{a:g}-b{b:g}-c{c:g}" for a, b, c in targets),
        template=template,
        data=data,
        fitness=fitness,
        init_population=init_population,
        log_scale=True,
    )
    return _with_reference(family, reference_samples)


def cartpole_family(
    pole_lengths: Sequence[float] = (0.5,),
    *,
    hidden: int = 8,
    max_steps: int = 200,
    num_episodes: int = 2,
    reference_samples: int = 64,
    name: str = "cartpole",
) -> TaskFamily:
    """Neuroevolution of an MLP policy ``4 -> hidden -> 2`` on gymnax CartPole-v1.

    One task per pole length (0.5 is the standard task); fitness is the mean return
    of ``num_episodes`` episodes of at most ``max_steps`` steps from the task's
    fixed start states (greedy actions), so the optimum is ``max_steps``. The
    reference level is the mean return of a random policy.
    """
    import gymnax

    if not pole_lengths:
        raise ValueError("pole_lengths: expected at least one length")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps: expected an int >= 1, got {max_steps!r}")
    env, base = gymnax.make("CartPole-v1")
    lengths = np.asarray(pole_lengths, np.float32)
    if np.any(lengths <= 0):
        raise ValueError(f"pole_lengths: expected positive lengths, got {lengths}")
    num = len(lengths)
    template = _mlp_template((4, hidden, 2))
    data = {
        "length": jnp.asarray(lengths),
        "reset_key": jax.random.key_data(
            jax.random.split(jax.random.key(7), (num, num_episodes))
        ),
        "optimum": jnp.full((num,), float(max_steps), jnp.float32),
        "tolerance": jnp.ones((num,), jnp.float32),
        "reference": jnp.zeros((num,), jnp.float32),
    }

    def episode(params, task, reset_key):
        env_params = base.replace(
            length=task["length"],
            polemass_length=base.masspole * task["length"],
            max_steps_in_episode=max_steps,
        )
        key = jax.random.wrap_key_data(reset_key)
        obs, state = env.reset_env(key, env_params)

        def step(carry, _):
            obs, state, alive, total = carry
            action = jnp.argmax(_mlp_apply(params, obs))
            obs, state, reward, done, _ = env.step_env(key, state, action, env_params)
            total = total + jnp.where(alive, reward, 0.0)
            return (obs, state, alive & ~done, total), None

        carry = (obs, state, jnp.asarray(True), jnp.zeros((), jnp.float32))
        (_, _, _, total), _ = jax.lax.scan(step, carry, None, max_steps)
        return total

    def fitness(task, population):
        over_starts = jax.vmap(episode, (None, None, 0))
        returns = jax.vmap(over_starts, (0, None, None))(
            population, task, task["reset_key"]
        )
        return jnp.mean(returns, axis=-1)

    def init_population(key, task, num):
        del task
        return _mlp_init(key, template, num)

    family = TaskFamily(
        name=name,
        task_names=tuple(f"{name}-len{x:g}" for x in lengths),
        template=template,
        data=data,
        fitness=fitness,
        init_population=init_population,
        log_scale=False,
    )
    return _with_reference(family, reference_samples, statistic="mean")


def task_suite(
    *,
    reference_samples: int = 64,
    cartpole_steps: int = 200,
    train: str = "bbob",
) -> TaskSuite:
    """The default split.

    Meta-train (6 tasks), ``train="bbob"``: sphere, Rastrigin, Rosenbrock in
    D = 10 and ellipsoid, Ackley, Griewank in D = 5; ``train="mixed"``: the same
    without Griewank, plus MLP regression on ``sin(x)`` (so that learned step
    sizes must also suit network weights). Held-out meta-test (11 tasks, the same
    for both): ellipsoid, Ackley, Griewank and the unseen Schwefel in D = 10 (new
    instances); sphere, Rastrigin, Rosenbrock in the unseen D = 20; MLP regression
    (2 other targets); CartPole neuroevolution (standard and long pole).
    """
    r = reference_samples
    if train not in ("bbob", "mixed"):
        raise ValueError(f"train: expected 'bbob' or 'mixed', got {train!r}")
    low_dim = ("ellipsoid", "ackley", "griewank")
    if train == "mixed":
        low_dim = low_dim[:2]
    train_families = (
        bbob_family(("sphere", "rastrigin", "rosenbrock"), 10, instance=1,
                    reference_samples=r),
        bbob_family(low_dim, 5, instance=2, reference_samples=r),
    )  # fmt: skip
    if train == "mixed":
        train_families += (
            regression_family(((1.0, 0.0, 1.0),), reference_samples=r,
                              name="regression-train"),
        )  # fmt: skip
    test = (
        bbob_family(
            ("ellipsoid", "ackley", "griewank", "schwefel"),
            10,
            instance=3,
            reference_samples=r,
        ),
        bbob_family(("sphere", "rastrigin", "rosenbrock"), 20, instance=4,
                    reference_samples=r),
        regression_family(((2.0, 0.5, 1.0), (3.0, -1.0, 0.8)), reference_samples=r),
        cartpole_family((0.5, 1.0), max_steps=cartpole_steps, reference_samples=r),
    )  # fmt: skip
    return TaskSuite(train=train_families, test=test)
