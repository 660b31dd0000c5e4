"""Trial pre-search: Thompson sampling + evolution over short vmapped PPO trials,
failed trials recorded, and the main run's agent warm-started from the best."""

import math

import jax
import numpy as np
import pytest

from convergence_jax import loop, rl
from convergence_jax.spaces import SearchSpace

BASE = rl.PPOConfig(num_envs=4, num_steps=32, num_minibatches=2, update_epochs=2)


@pytest.fixture(scope="module")
def searched():
    space = SearchSpace.from_dict(
        {
            "learning_rate": {"type": "float", "min": 1e-6, "max": 1e-2, "log": True},
            # 3 does not divide the 128-step batch: those trials fail.
            "num_minibatches": {"type": "int", "min": 2, "max": 4},
        }
    )
    return loop.presearch(
        BASE,
        space,
        trial_timesteps=4096,
        population_size=6,
        trials_per_generation=12,
        batch_size=6,
        generations=2,
        seed=0,
    )


def test_search_log_and_best_trial(searched):
    trials = searched.trials
    assert len(trials) == 2 * 12 and len(searched.generations) == 2
    scores = np.array([t["score"] for t in trials])
    ok = np.isfinite(scores)
    # The best trial is the best score any trial reached, with its own config.
    assert searched.best_score == pytest.approx(scores[ok].max())
    best = trials[int(np.nanargmax(scores))]
    assert searched.best_config.num_minibatches == best["config"]["num_minibatches"]
    assert searched.best_hyperparams["learning_rate"] == pytest.approx(
        best["config"]["learning_rate"]
    )
    # Untouched fields come from the base config; the horizon is the base one.
    assert searched.best_hyperparams["gamma"] == pytest.approx(BASE.gamma)
    assert searched.best_config.total_timesteps == BASE.total_timesteps
    # A learning rate of 1e-6 does not learn CartPole in 4,096 steps: the best does.
    assert searched.best_hyperparams["learning_rate"] > 1e-4
    assert searched.env_steps == 4096 * int(ok.sum())


def test_invalid_trials_are_recorded_not_fatal(searched):
    failed = [t for t in searched.trials if "error" in t]
    assert failed and all(t["config"]["num_minibatches"] == 3 for t in failed)
    assert all(math.isnan(t["score"]) for t in failed)
    assert "num_minibatches" in failed[0]["error"]
    assert searched.best_config.num_minibatches in (2, 4)


def test_the_agent_warm_starts_from_the_best_trial(searched):
    agent = searched.agent(seed=1)
    assert isinstance(agent, loop.PPOAgent)
    for got, want in zip(
        jax.tree.leaves(agent.state.params),
        jax.tree.leaves(searched.best_state.params),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert agent.get_hyperparams()["learning_rate"] == pytest.approx(
        searched.best_hyperparams["learning_rate"]
    )
    window = loop.BatchPipeline("CartPole-v1", 4, 32).collect(agent)
    assert math.isfinite(agent.learn(window)["value_loss"])


def test_bad_spaces_are_clear_errors():
    with pytest.raises(ValueError, match="not a PPOHParams field"):
        loop.presearch(
            BASE,
            SearchSpace.from_dict({"lr": {"type": "float", "min": 0, "max": 1}}),
            trial_timesteps=128,
        )
    with pytest.raises(ValueError, match="not a searchable PPOConfig field"):
        loop.presearch(
            BASE,
            SearchSpace.from_dict({"seed": {"type": "int", "min": 1, "max": 3}}),
            trial_timesteps=128,
        )
    with pytest.raises(ValueError, match="takes float, log-float and int"):
        loop.presearch(
            BASE,
            SearchSpace.from_dict(
                {"activation": {"type": "categorical", "choices": ["tanh", "relu"]}}
            ),
            trial_timesteps=128,
        )
    space = SearchSpace.from_dict({"ent_coef": {"type": "float", "min": 0, "max": 1}})
    with pytest.raises(ValueError, match="trial_timesteps"):
        loop.presearch(BASE, space, trial_timesteps=0)
