"""Diagnostics (loss spikes, entropy / KL / exploration), checkpoint confirmation,
``target_score``, ``checkpoint_score_fn``, ``min_episodes_before_dormant`` and
window sizing from the episode length."""

import json
import math

import numpy as np
import pytest

from convergence_jax import loop


class ScriptedAgent:
    """No JAX: ``learn`` reports the next scripted metrics; ``skill`` is what a
    checkpoint holds."""

    def __init__(self, metrics=None, **hp):
        self.metrics = list(metrics or [])
        self.hp = {"learning_rate": 1e-3, "ent_coef": 0.01, **hp}
        self.skill = 0.0
        self.windows = 0

    def act(self, observation):
        return np.zeros(len(observation), np.int64)

    def learn(self, episode_data):
        self.windows += 1
        self.skill = float(self.windows)
        return self.metrics.pop(0) if self.metrics else {}

    def get_hyperparams(self):
        return dict(self.hp)

    def set_hyperparams(self, hp):
        self.hp = dict(hp)

    def save_weights(self, path):
        with open(path, "w") as f:
            json.dump({"skill": self.skill}, f)

    def load_weights(self, path):
        with open(path) as f:
            self.skill = json.load(f)["skill"]


def window(returns, actions=None):
    actions = np.zeros((4, 2), np.int32) if actions is None else np.asarray(actions)
    steps = actions.shape[0]
    return loop.EpisodeData(
        observations=np.zeros((steps, 2, 1), np.float32),
        actions=actions,
        rewards=np.zeros((steps, 2), np.float32),
        terminated=np.zeros((steps, 2), bool),
        truncated=np.zeros((steps, 2), bool),
        final_observations=np.zeros((steps, 2, 1), np.float32),
        episode_returns=np.asarray(returns, np.float64),
    )


class ScriptedPipeline:
    """Windows whose episode returns (and actions) come from a script."""

    def __init__(self, returns, actions=None):
        self.returns = list(returns)
        self.actions = actions
        self.served = 0

    def episodes(self, agent):
        for i, r in enumerate(self.returns):
            self.served += 1
            acts = None if self.actions is None else self.actions[i]
            yield window([r], acts)


# ------------------------------------------------------------------ rules


def test_rules_on_plain_histories():
    spike = loop.LossSpike(factor=5.0, window=3, min_history=3)
    assert spike.check([1.0, 1.0, 1.0, 6.0])[0]
    assert not spike.check([1.0, 1.0, 1.0, 4.9])[0]
    assert not spike.check([1.0, 1.0, 6.0])[0]  # too little history
    # The mean is over the previous `window` values only: 1, 1, 1 -> spike.
    assert spike.check([100.0, 1.0, 1.0, 1.0, 6.0])[0]
    entropy = loop.EntropyCollapse(fraction=0.1)
    assert entropy.check([0.69, 0.3, 0.06])[0]
    assert not entropy.check([0.69, 0.3, 0.07])[0]
    assert loop.EntropyCollapse(floor=0.2).check([0.69, 0.19])[0]
    kl = loop.KLDrift(max_kl=0.05, patience=2)
    assert kl.check([0.01, 0.06, 0.07])[0]
    assert not kl.check([0.06, 0.01, 0.07])[0]
    explore = loop.ExplorationCollapse(min_entropy=0.05, min_std=0.01, patience=1)
    assert explore.check([0.01], "entropy")[0]
    assert not explore.check([0.02], "std")[0]


def test_action_spread_by_hand():
    kind, value = loop.action_spread(np.array([[0, 1], [0, 1]]))
    assert kind == "entropy" and value == pytest.approx(math.log(2))
    assert loop.action_spread(np.zeros((5, 3), np.int32)) == ("entropy", 0.0)
    kind, value = loop.action_spread(np.array([[[0.0], [2.0]], [[0.0], [2.0]]]))
    assert kind == "std" and value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no actions"):
        loop.action_spread(np.zeros((0, 2), np.int32))


def test_bad_diagnostics_config_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown response"):
        loop.Diagnostics(rules=(loop.LossSpike(response="panic"),))
    with pytest.raises(ValueError, match="names must be unique"):
        loop.Diagnostics(rules=(loop.KLDrift(), loop.KLDrift()))
    with pytest.raises(ValueError, match="lr_factor"):
        loop.Diagnostics(lr_factor=1.5)


# ------------------------------------------------------------------ the shell


def run_loop(agent, pipeline, **kwargs):
    return loop.RLOptimizer(agent, pipeline, stop_when_dormant=False, **kwargs).run()


def test_each_rule_fires_its_response_and_is_recorded(tmp_path):
    metrics = [{"value_loss": 1.0, "entropy": 0.69, "approx_kl": 0.01}] * 4
    metrics += [{"value_loss": 50.0, "entropy": 0.69, "approx_kl": 0.01}]  # spike
    metrics += [{"value_loss": 1.0, "entropy": 0.69, "approx_kl": 0.2}] * 2  # KL
    metrics += [{"value_loss": 1.0, "entropy": 0.01, "approx_kl": 0.01}]  # entropy
    agent = ScriptedAgent(metrics)
    diagnostics = loop.Diagnostics(
        rules=(loop.LossSpike(), loop.KLDrift(), loop.EntropyCollapse()),
        warmup=3,
        cooldown=0,
    )
    fired = []

    class Recorder(loop.LoopCallback):
        def on_diagnostic(self, event):
            fired.append(event["rule"])

    result = run_loop(
        agent,
        ScriptedPipeline([1.0] * len(metrics)),
        diagnostics=diagnostics,
        callbacks=[Recorder()],
        registry=loop.CheckpointRegistry(tmp_path),
    )
    rules = [(e["window"], e["rule"]) for e in result.diagnostics]
    assert rules == [(5, "loss_spike"), (7, "kl_drift"), (8, "entropy_collapse")]
    assert fired == [r for _, r in rules]
    assert agent.hp["learning_rate"] == pytest.approx(1e-3 * 0.25)
    assert agent.hp["ent_coef"] == pytest.approx(0.02)
    assert result.diagnostics[0]["actions"] == ["learning_rate 0.001 -> 0.0005"]
    assert "50" in result.diagnostics[0]["detail"]


def test_cooldown_rollback_and_exploration_collapse(tmp_path):
    # Every window collapsed: fires at window 2 (after warm-up 1), then waits
    # `cooldown` = 2 windows, fires again at window 5.
    collapsed = [np.zeros((4, 2), np.int32)] * 6
    agent = ScriptedAgent()
    registry = loop.CheckpointRegistry(tmp_path)
    diagnostics = loop.Diagnostics(
        rules=(
            loop.ExplorationCollapse(
                patience=1, response=("raise_entropy", "rollback")
            ),
        ),
        warmup=1,
        cooldown=2,
    )
    result = run_loop(
        agent,
        ScriptedPipeline([1.0] * 6, actions=collapsed),
        diagnostics=diagnostics,
        registry=registry,
    )
    assert [e["window"] for e in result.diagnostics] == [2, 5]
    first = result.diagnostics[0]["actions"]
    assert first[0] == "ent_coef 0.01 -> 0.02"
    assert first[1].startswith("rolled back to snapshot 0")
    assert agent.hp["ent_coef"] == pytest.approx(0.04)
    # Varied actions never fire.
    varied = [np.array([[0, 1], [1, 0], [0, 1], [1, 0]])] * 6
    result = run_loop(
        ScriptedAgent(),
        ScriptedPipeline([1.0] * 6, actions=varied),
        diagnostics=loop.Diagnostics(
            rules=(loop.ExplorationCollapse(patience=1),), warmup=1
        ),
        registry=loop.CheckpointRegistry(tmp_path / "b"),
    )
    assert result.diagnostics == []


def test_a_response_the_agent_cannot_take_is_recorded_as_skipped(tmp_path):
    agent = ScriptedAgent([{"entropy": 1.0}, {"entropy": 0.01}])
    del agent.hp["ent_coef"]
    result = run_loop(
        agent,
        ScriptedPipeline([1.0, 1.0]),
        diagnostics=loop.Diagnostics(rules=(loop.EntropyCollapse(),), warmup=1),
        registry=loop.CheckpointRegistry(tmp_path),
    )
    assert result.diagnostics[0]["actions"] == [
        "raise_entropy skipped: the agent has no 'ent_coef'"
    ]


# ------------------------------------------------------------------ checkpoints


# Evaluate every window; claim an improvement on any rise of the window mean.
EVERY_WINDOW_NO_NOISE = loop.BackoffParams(max_interval=1.0, noise_z=0.0)


def test_one_lucky_window_does_not_replace_the_best_checkpoint(tmp_path):
    """Validation scores 10, 10, 10, then one lucky 100, then 10s again. With a
    scheduler that claims an improvement on any rise of the window mean
    (``noise_z = 0``), the lucky window is a candidate; without confirmation it
    becomes the best checkpoint, with it the candidate is re-scored on 3 fresh
    validation windows (10 each) and rejected."""
    val = [10.0, 10.0, 10.0, 100.0] + [10.0] * 20

    def best_after(confirm_windows, directory):
        agent = ScriptedAgent()
        lp = loop.RLOptimizer(
            agent,
            ScriptedPipeline([1.0] * 5),
            val_pipeline=ScriptedPipeline(val),
            scheduler_params=EVERY_WINDOW_NO_NOISE,
            registry=loop.CheckpointRegistry(directory),
            confirm_windows=confirm_windows,
            stop_when_dormant=False,
        )
        result = lp.run()
        return result, lp.registry

    plain, registry = best_after(0, tmp_path / "plain")
    assert plain.best.score == 100.0 and plain.best.window == 4
    assert plain.records[3]["checkpoint"] == "saved"

    confirmed, registry = best_after(3, tmp_path / "confirmed")
    assert confirmed.best.score == 10.0 and confirmed.best.window == 1
    lucky = [r for r in confirmed.records if r["window"] == 4][0]
    assert lucky["primary_score"] == 100.0
    assert lucky["checkpoint"] == "unconfirmed" and lucky["confirmed_score"] == 10.0
    assert all(s.score <= 10.0 for s in registry.snapshots)


def test_a_real_improvement_is_confirmed_and_saved_with_its_confirmed_score(
    tmp_path,
):
    val = [10.0, 10.0, 10.0, 50.0, 48.0, 52.0, 50.0, 50.0, 50.0, 50.0]
    result = loop.RLOptimizer(
        ScriptedAgent(),
        ScriptedPipeline([1.0] * 5),
        val_pipeline=ScriptedPipeline(val),
        scheduler_params=EVERY_WINDOW_NO_NOISE,
        registry=loop.CheckpointRegistry(tmp_path),
        confirm_windows=3,
        stop_when_dormant=False,
    ).run()
    assert result.best.score == pytest.approx(50.0)  # mean of 48, 52, 50
    assert result.best.window == 4


def test_checkpoint_score_fn_target_score_and_confirmation(tmp_path):
    held_out = iter([1.0, 1.0, 9.0, 3.0, 3.0, 9.5, 9.5, 9.5])
    agent = ScriptedAgent()
    result = loop.RLOptimizer(
        agent,
        ScriptedPipeline([1.0] * 20),
        checkpoint_score_fn=lambda a: next(held_out),
        confirm_windows=2,
        target_score=9.0,
        scheduler_params=loop.BackoffParams(max_interval=1.0),
        registry=loop.CheckpointRegistry(tmp_path),
    ).run()
    # Held-out scores: window 1 is the first checkpoint (1.0); window 2 does not
    # beat it; window 3 scores 9.0, is re-scored twice (3, 3) and saved at 3.0,
    # which does not reach the target; window 4 scores 9.5, confirmed (9.5, 9.5).
    assert [r.get("checkpoint") for r in result.records] == [
        "saved",
        None,
        "confirmed",
        "confirmed",
    ]
    third = result.records[2]
    assert third["checkpoint_score"] == 9.0 and third["confirmed_score"] == 3.0
    assert result.reason == "target_score reached: 9.5 >= 9"
    assert result.windows == 4 and result.best.score == pytest.approx(9.5)


def test_min_episodes_before_dormant_defers_the_stop(tmp_path):
    def run(min_windows):
        return loop.RLOptimizer(
            ScriptedAgent(),
            ScriptedPipeline([5.0] * 400),
            scheduler_params=loop.BackoffParams(max_interval=1.0),
            registry=loop.CheckpointRegistry(tmp_path / str(min_windows)),
            min_episodes_before_dormant=min_windows,
        ).run()

    early = run(0)
    assert early.reason.startswith("DORMANT")
    late = run(early.windows + 10)
    assert late.reason.startswith("DORMANT") and late.windows == early.windows + 10
    assert any(r.get("dormant_deferred") for r in late.records)


def test_loop_option_errors():
    agent = ScriptedAgent()
    pipeline = ScriptedPipeline([1.0])
    with pytest.raises(ValueError, match="confirm_windows: re-scoring needs"):
        loop.RLOptimizer(agent, pipeline, confirm_windows=2)
    with pytest.raises(ValueError, match="min_episodes_before_dormant"):
        loop.RLOptimizer(agent, pipeline, min_episodes_before_dormant=-1)
    with pytest.raises(ValueError, match="target_score"):
        loop.RLOptimizer(agent, pipeline, target_score=math.nan)
    with pytest.raises(ValueError, match="checkpoint_score_fn"):
        loop.RLOptimizer(agent, pipeline, checkpoint_score_fn=3.0)


# ------------------------------------------------------------------ window sizing


def test_window_sizing_from_the_episode_length():
    assert loop.episode_length("CartPole-v1") == 500
    assert loop.episode_length("Pendulum-v1") == 200
    # Catch's limit is 1000 but its episodes last 9 steps: calibrate.
    assert loop.episode_length("Catch-bsuite", calibrate=True) == 9
    assert loop.window_steps_for("CartPole-v1", 8) == 250  # 4 x 500 / 8
    assert loop.window_steps_for("Pendulum-v1", 4, "sac") == 128  # max(200, 512) / 4
    assert loop.window_steps_for("CartPole-v1", 1, "ppo", max_steps=1000) == 1000
    pipeline = loop.BatchPipeline("Pendulum-v1", 2, "auto", reset_each_window=True)
    assert pipeline.window_steps == 200
    with pytest.raises(ValueError, match="num_envs"):
        loop.window_steps_for("CartPole-v1", 0)
