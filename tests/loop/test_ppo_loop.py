"""PPO under the loop: the agent adapter, compiled pipelines, PBT, the experiment."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from convergence_jax import loop, rl

ROOT = Path(__file__).resolve().parents[2]
TINY = rl.PPOConfig(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=1)


def test_ppo_agent_protocol_no_recompile_and_weights(tmp_path):
    agent = loop.PPOAgent(TINY, seed=0)
    loop.check_agent(agent)
    pipe = loop.BatchPipeline("CartPole-v1", 4, 16, seed=1)
    data = pipe.collect(agent)  # compiled acting through jax_policy
    assert data.rewards.shape == (16, 4) and data.num_steps == 64
    agent.learn(data)
    agent.set_hyperparams({"learning_rate": 1e-3, "ent_coef": 0.0})
    metrics = agent.learn(pipe.collect(agent))
    assert agent._compiled.learn._cache_size() == 1  # numbers never recompile
    assert {"policy_loss", "value_loss", "learning_rate"} <= set(metrics)
    assert agent.get_hyperparams()["learning_rate"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown"):
        agent.set_hyperparams({"lr": 1.0})
    agent.save_weights(tmp_path / "w")
    other = loop.PPOAgent(TINY, seed=5)
    other.load_weights(tmp_path / "w")
    obs = np.asarray(data.observations[0])
    np.testing.assert_allclose(
        other.action_probabilities(obs), agent.action_probabilities(obs), rtol=1e-6
    )
    # Acting step by step (plain agents) gives windows of the same layout.
    plain = pipe.collect(type("A", (), {"act": agent.act})())
    assert plain.rewards.shape == (16, 4)
    with pytest.raises(ValueError, match="expected rewards of shape"):
        agent.learn(loop.BatchPipeline("CartPole-v1", 4, 8).collect(agent))


def test_ppo_agent_on_two_devices_learns_as_on_one(tmp_path):
    """``PPOAgent(num_devices=2)``: the update is split over a device mesh and
    equals the 1-device update on the same window; acting and saving still work."""
    assert jax.device_count() >= 2, "conftest forces 4 host devices"
    one = loop.PPOAgent(TINY, seed=0)
    two = loop.PPOAgent(dataclasses.replace(TINY, num_devices=2), seed=0)
    data = loop.BatchPipeline("CartPole-v1", 4, 16, seed=1).collect(one)
    before = one.state.params
    metrics_one, metrics_two = one.learn(data), two.learn(data)
    assert len(two.state.keys.sharding.device_set) == 2
    moved = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()), before, one.state.params
    )
    assert max(jax.tree.leaves(moved)) > 1e-4
    for a, b in zip(
        jax.tree.leaves(one.state.params),
        jax.tree.leaves(two.state.params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert metrics_two["value_loss"] == pytest.approx(
        metrics_one["value_loss"], rel=1e-5
    )
    obs = np.asarray(data.observations[0])
    np.testing.assert_allclose(
        two.action_probabilities(obs), one.action_probabilities(obs), rtol=1e-5
    )
    assert two.act(obs).shape == (4,)
    two.save_weights(tmp_path / "w")  # replicated parameters, sharded keys
    restored = loop.PPOAgent(TINY, seed=5)
    restored.load_weights(tmp_path / "w")
    np.testing.assert_allclose(
        restored.action_probabilities(obs), two.action_probabilities(obs), rtol=1e-6
    )
    with pytest.raises(ValueError, match="num_devices: 64 requested"):
        loop.PPOAgent(dataclasses.replace(TINY, num_envs=64, num_devices=64))
    with pytest.raises(ValueError, match="multiple of num_devices"):
        loop.PPOAgent(dataclasses.replace(TINY, num_devices=3))


def test_ensemble_of_ppo_agents_acts_compiled():
    a, b = loop.PPOAgent(TINY, seed=0), loop.PPOAgent(TINY, seed=1)
    ens = loop.EnsembleAgent([a, b], [0.25, 0.75], discrete=True)

    def expected(obs):  # the weighted vote, on the host
        mix = 0.25 * a.action_probabilities(obs) + 0.75 * b.action_probabilities(obs)
        return np.argmax(mix, -1)

    pipe = loop.BatchPipeline("CartPole-v1", 4, 16, reset_each_window=True)
    data = pipe.collect(ens)
    assert pipe._collect._cache_size() == 1  # the window was acted compiled
    observations, actions = np.asarray(data.observations), np.asarray(data.actions)
    policy = ens.jax_policy()
    np.testing.assert_array_equal(
        policy.apply(policy.params, observations[5], jax.random.key(0)),
        expected(observations[5]),
    )
    for obs, taken in zip(observations, actions, strict=True):  # every step
        np.testing.assert_array_equal(taken, expected(obs))
        np.testing.assert_array_equal(ens.act(obs), taken)
    assert len(np.unique(actions)) == 2  # both actions occur: the vote decides


def test_pbt_exploits_inside_the_program_and_independent_does_not():
    config = rl.PPOConfig(num_envs=2, num_steps=16, num_minibatches=2, anneal_lr=False)
    hp = rl.hparam_grid(config, learning_rate=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    pbt = jax.jit(loop.make_pbt(config, num_rounds=2, exploit_every=2))
    _, metrics = pbt(jax.random.key(0), hp)
    source = np.asarray(metrics["source"])
    assert source.shape == (2, 5)
    assert (source != np.arange(5)).sum(1).tolist() == [1, 1]  # bottom 20% of 5
    lrs = np.asarray(metrics["hparams"].learning_rate)
    np.testing.assert_allclose(lrs[0], [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], rtol=1e-6)
    independent = jax.jit(loop.make_pbt(config, 2, 2, exploit=False))
    _, ind = independent(jax.random.key(0), hp)
    np.testing.assert_array_equal(
        np.asarray(ind["source"]), np.tile(np.arange(5), (2, 1))
    )
    with pytest.raises(ValueError, match="anneal_lr=False"):
        loop.make_pbt(rl.PPOConfig(), 1, 1)


def test_autonomous_cartpole_reaches_dormant_with_best_val_475(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "autonomous_ppo", ROOT / "experiments" / "autonomous_ppo.py"
    )
    exp = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = exp
    spec.loader.exec_module(exp)
    # The throughput preset (8 x 128 windows) reaches DORMANT in a few seconds; the
    # sample-efficient default is measured in benchmarks/loop_vs_tensor_optix.py.
    config = exp.Config(
        seed=1, preset="throughput", out_dir=str(tmp_path), verbose=False
    )
    summary = exp.main(config)
    assert summary["reached_dormant"]
    assert summary["best_val_score"] >= 475
    printed = capsys.readouterr().out
    assert "training report" in printed and "spawns used:        1 / 1" in printed
    assert (tmp_path / "loop.png").stat().st_size > 10_000
    records = [
        json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()
    ]
    assert {r["state"] for r in records} >= {"ACTIVE", "COOLING", "DORMANT"}
    assert (
        json.loads((tmp_path / "summary.json").read_text())["status"]["ensemble_size"]
        == 2
    )


def test_autonomous_presets_resolve_and_overrides_win():
    spec = importlib.util.spec_from_file_location(
        "autonomous_ppo", ROOT / "experiments" / "autonomous_ppo.py"
    )
    exp = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = exp
    spec.loader.exec_module(exp)
    default = exp.ppo_config_of(exp.Config())
    preset = loop.ppo_preset("sample_efficient")
    assert exp.Config().preset == "sample_efficient"
    assert (default.num_envs, default.num_steps) == (preset.num_envs, preset.num_steps)
    assert default.update_epochs == preset.update_epochs == 10
    assert default.total_timesteps == preset.lr_horizon and default.anneal_lr
    old = exp.ppo_config_of(exp.Config(preset="throughput", learning_rate=3e-4))
    assert (old.num_envs, old.num_steps, old.update_epochs) == (8, 128, 4)
    assert old.learning_rate == 3e-4 and old.total_timesteps == 300_000
    assert loop.ppo_preset("throughput").window_steps == 1024
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        loop.ppo_preset("fast")


def test_preset_box_settings_apply_to_continuous_actions_only():
    preset = loop.ppo_preset("sample_efficient")
    box = dict(preset.box)
    discrete = preset.ppo_config("Acrobot-v1")
    continuous = preset.ppo_config("Pendulum-v1")
    assert (discrete.num_steps, discrete.gamma) == (preset.num_steps, 0.99)
    assert not discrete.normalize_obs
    assert continuous.num_steps == box["num_steps"] != preset.num_steps
    assert continuous.gamma == box["gamma"] and continuous.normalize_obs
    assert continuous.total_timesteps == box["lr_horizon"]
    assert preset.ppo_config("Pendulum-v1", gamma=0.97).gamma == 0.97
    bad = loop.PPOLoopPreset(4, 64, 10, 4, 1e-3, 10_000, box=(("gama", 0.9),))
    assert bad.ppo_config("CartPole-v1").gamma == 0.99
    with pytest.raises(ValueError, match="unknown PPOConfig fields \\['gama'\\]"):
        bad.ppo_config("Pendulum-v1")


def test_continuous_actions_are_learned_as_sampled():
    """Squashed continuous actions: the window records the policy's samples next to
    the environment actions, and learning takes log-probabilities of the samples."""
    config = rl.PPOConfig(env_id="Pendulum-v1", num_envs=4, num_steps=16,
                          num_minibatches=2, update_epochs=1, squash=True)  # fmt: skip
    agent = loop.PPOAgent(config, seed=0)
    data = loop.BatchPipeline("Pendulum-v1", 4, 16, seed=1).collect(agent)
    samples, actions = np.asarray(data.policy_actions), np.asarray(data.actions)
    assert samples.shape == actions.shape == (16, 4, 1)
    np.testing.assert_allclose(actions, 2.0 * np.tanh(samples), rtol=1e-5, atol=1e-6)
    batch = {
        "obs": data.observations,
        "action": data.actions,
        "reward": data.rewards,
        "terminated": data.terminated,
        "truncated": data.truncated,
        "final_obs": data.final_observations,
    }
    learn, state, hp = agent._compiled.learn, agent.state, agent.hparams
    sampled = learn(state, {**batch, "policy_action": samples}, hp)[0].params
    ignored = {**batch, "policy_action": samples, "action": np.zeros_like(actions)}
    as_taken = learn(state, batch, hp)[0].params  # the env actions: biased
    agent.learn(data)

    def same(a, b):
        return all(jax.tree.leaves(jax.tree.map(np.allclose, a, b)))

    assert same(agent.state.params, sampled)
    assert same(learn(state, ignored, hp)[0].params, sampled)
    assert not same(as_taken, sampled)
    # discrete actions: the samples are the environment actions, none recorded
    cartpole = loop.BatchPipeline("CartPole-v1", 4, 16).collect(loop.PPOAgent(TINY))
    assert cartpole.policy_actions is None
