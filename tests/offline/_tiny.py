"""Tiny synthetic datasets and configs for the offline-algorithm tests."""

import jax
import jax.numpy as jnp
import numpy as np

from convergence_jax.offline._common import ActionSpec
from convergence_jax.offline.dataset import Transitions

OBS_DIM = 3
DISCRETE = ActionSpec.make_discrete(2)
CONTINUOUS = ActionSpec.make_continuous(1, -2.0, 2.0)
TINY = dict(num_steps=3, batch_size=8, hidden_sizes=(16,))


def transitions(discrete: bool, n: int = 64, seed: int = 0) -> Transitions:
    """``n`` random transitions; actions follow a simple rule of the state."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    if discrete:
        actions = (obs[:, 0] > 0).astype(np.int32)
    else:
        actions = (2.0 * np.tanh(obs[:, :1])).astype(np.float32)
    return Transitions(
        observations=jnp.asarray(obs),
        actions=jnp.asarray(actions),
        rewards=jnp.asarray(rng.normal(size=n).astype(np.float32)),
        next_observations=jnp.asarray(rng.normal(size=(n, OBS_DIM)), jnp.float32),
        terminals=jnp.asarray(rng.random(n) < 0.1),
        timeouts=jnp.asarray(rng.random(n) < 0.05),
    )


def spec(discrete: bool) -> ActionSpec:
    return DISCRETE if discrete else CONTINUOUS


def check_program(make, config_cls, grid_cls, discrete: bool, **grid_values):
    """One jit of a vmap over (seed, hparams) pairs: (seed 0, numbers 0), (seed 1,
    numbers 0), (seed 0, numbers 1); no recompile on new numbers or on a new
    dataset of the same shapes; policy shapes. Returns (states, metrics)."""
    from convergence_jax.offline._common import hparam_grid

    config = config_cls(**TINY)
    program = make(config, OBS_DIM, spec(discrete))
    train = jax.jit(jax.vmap(program.train, (0, None, 0)))
    seeds = jax.random.split(jax.random.key(0), 2)
    keys = jnp.stack([seeds[0], seeds[1], seeds[0]])
    values = {k: [v[0], v[0], v[1]] for k, v in grid_values.items()}
    data = transitions(discrete)
    grid = hparam_grid(program.default_hparams, **values)
    assert isinstance(grid, grid_cls)
    states, metrics = train(keys, data, grid)
    for name, value in metrics.items():
        assert value.shape == (3, config.num_steps), name
        assert np.all(np.isfinite(np.asarray(value))), name
    assert np.all(np.asarray(states.step) == config.num_steps)

    def differ(i, j):
        return any(
            not np.allclose(x[i], x[j], rtol=1e-6, atol=0)
            for x in jax.tree.leaves(states)
            if jnp.issubdtype(x.dtype, jnp.floating)
        )

    assert differ(0, 1), "different seeds gave the same run"
    assert differ(0, 2), "different numbers gave the same run"
    # new numbers, a new dataset of the same shapes: no new compilation
    grid2 = jax.tree.map(lambda x: x * 0.5, grid)
    train(keys, transitions(discrete, seed=1), grid2)
    assert train._cache_size() == 1
    # the policy of one run: environment actions of the right shape and range
    state = jax.tree.map(lambda x: x[0], states)
    obs = data.observations[:5]
    actions = jax.jit(program.policy)(state, obs, jax.random.key(2))
    if discrete:
        assert actions.shape == (5,) and jnp.issubdtype(actions.dtype, jnp.integer)
        assert np.all((np.asarray(actions) >= 0) & (np.asarray(actions) < 2))
    else:
        assert actions.shape == (5, 1)
        assert np.all(np.abs(np.asarray(actions)) <= 2.0 + 1e-6)
    return states, metrics
