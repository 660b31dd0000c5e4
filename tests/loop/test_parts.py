"""Formulas and shells of the loop, with hand-computed values."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import loop

# ------------------------------------------------------------------ formulas


def test_adaptive_noise_by_hand():
    train = [10.0, 12.0, 14.0, 16.0]
    val = [8.0, 9.0, 10.0, 11.0]
    out = loop.adaptive_noise(train, val, max_slope=2.0, min_scale=0.1, max_scale=0.5)
    # slope(val) = 1 -> t = 0.5; gap = mean(2, 3, 4, 5) / 9.5 = 3.5 / 9.5;
    # pearson = 1 -> corr_penalty = 0.
    gap = 3.5 / 9.5
    eff = 0.5 * (1 - 0.5 * gap) * 1.0
    assert out["t"] == pytest.approx(0.5)
    assert out["gap_penalty"] == pytest.approx(gap)
    assert out["corr_penalty"] == pytest.approx(0.0)
    assert out["effective_t"] == pytest.approx(eff)
    assert out["noise"] == pytest.approx(0.5 - eff * 0.4)
    # Flat validation: t = 0, the widest noise.
    flat = loop.adaptive_noise([1.0, 2.0], [3.0, 3.0], max_slope=1.0, max_scale=0.7)
    assert flat["noise"] == pytest.approx(0.7) and flat["corr_penalty"] == 1.0
    # Anti-correlated: corr_penalty clipped at 1.
    anti = loop.adaptive_noise([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], max_slope=1.0)
    assert anti["corr_penalty"] == 1.0
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        loop.adaptive_noise([1.0], [1.0, 2.0], max_slope=1.0)


def test_meta_controller_rules_and_features():
    features = loop.meta_features([12.0, 12.0, 12.0], [10.0, 10.0, 10.0], 0.5)
    np.testing.assert_allclose(features, [0.2, 0.0, 0.0, 0.5])
    mc = loop.MetaController(max_gap=0.3, min_corr=-0.5, min_slope=0.01)
    assert mc(np.array([0.0, 0.9, 0.05, 1.0])) == loop.MetaAction.NO_OP
    assert mc(np.array([0.5, 0.9, 0.0, 1.0])) == loop.MetaAction.PRUNE
    assert mc(np.array([0.0, -0.9, 0.0, 1.0])) == loop.MetaAction.PRUNE
    assert mc(np.array([0.0, 0.9, 0.0, 0.5])) == loop.MetaAction.SPAWN
    assert mc(np.array([0.0, 0.9, 0.0, 0.0])) == loop.MetaAction.STOP
    assert mc.decide([1.0, 2.0], [1.0, 2.0], 0.0) == loop.MetaAction.NO_OP


def test_regime_detector_and_subclass():
    rd = loop.RegimeDetector(volatile_cv=0.25, trend_threshold=0.1)
    assert rd.detect([10.0, 10.1, 9.9, 10.0]) == "ranging"
    assert rd.detect([10.0, 11.0, 12.0, 13.0]) == "trending"
    assert rd.detect([1.0, 20.0, 2.0, 18.0]) == "volatile"
    cv, s = rd.features([10.0, 11.0, 12.0, 13.0])
    assert s == pytest.approx(1.0 * 4 / 11.5)
    assert cv == pytest.approx(np.std([10, 11, 12, 13]) / 11.5)

    class Calm(loop.RegimeDetector):
        def classify(self, cv, normalized_slope):
            return "calm" if cv < 0.05 else "busy"

    assert Calm().detect([10.0, 10.1, 9.9]) == "calm"


def test_exploit_explore_by_hand():
    scores = jnp.array([5.0, 1.0, jnp.nan, 4.0, 3.0, 2.0, 0.0, 6.0, 7.0, 8.0])
    hp = {"lr": jnp.arange(10.0) + 1.0}
    source, new = jax.jit(loop.exploit_explore, static_argnums=(5, 6))(
        jax.random.key(0), scores, hp, {"lr": 0.0}, {"lr": 100.0}, 0.2, (0.5, 2.0)
    )
    source, lr = np.asarray(source), np.asarray(new["lr"])
    bottom = {2, 6}  # NaN ranks last, then 0.0
    for i in range(10):
        if i in bottom:
            assert source[i] in (8, 9)  # top 20%: scores 8 and 7
            assert lr[i] in (0.5 * (source[i] + 1), 2.0 * (source[i] + 1))
        else:
            assert source[i] == i and lr[i] == i + 1
    # Clipping to the bounds.
    _, clipped = loop.exploit_explore(
        jax.random.key(1), scores, hp, {"lr": 0.0}, {"lr": 3.0}, 0.2, (2.0, 2.0)
    )
    assert float(clipped["lr"][6]) == 3.0


# ------------------------------------------------------------------ optimizers


def test_backoff_optimizer_two_phase_round_robin():
    opt = loop.BackoffOptimizer(
        {"a": (0.0, 10.0), "b": (1e-4, 1e-2)}, step=0.1, shrink=0.5, grow=2.0
    )
    assert opt.log == {"b"}
    hp = {"a": 5.0, "b": 1e-3}
    hp = opt.suggest(hp, {"primary_score": 1.0})  # baseline 1.0, probe a + 1
    assert hp == {"a": 6.0, "b": 1e-3}
    hp = opt.suggest(hp, {"primary_score": 0.5})  # worse: probe a - 1
    assert hp["a"] == pytest.approx(4.0)
    hp = opt.suggest(hp, {"primary_score": 2.0})  # better: keep 4, shrink step
    assert opt.steps["a"] == pytest.approx(0.05)
    # ...and b is probed at once, in log space: log10 range 2 -> x10^(0.2)
    assert hp["a"] == pytest.approx(4.0)
    assert hp["b"] == pytest.approx(1e-3 * 10**0.2)
    hp = opt.suggest(hp, {"primary_score": 1.0})  # worse: b - delta
    assert hp["b"] == pytest.approx(1e-3 * 10**-0.2)
    hp = opt.suggest(hp, {"primary_score": 1.5})  # worse than 2.0: revert, grow
    assert hp["b"] == pytest.approx(1e-3) and opt.steps["b"] == pytest.approx(0.2)
    assert opt.phase == "base" and opt.name == "a"
    hp = opt.suggest(hp, {"primary_score": 2.0})  # re-measured baseline; probe a
    assert hp["a"] == pytest.approx(4.5)
    with pytest.raises(ValueError, match="needs lo < hi"):
        loop.BackoffOptimizer({"a": (1.0, 1.0)})


def test_pbt_optimizer_exploits_when_bottom_and_explores_otherwise():
    opt = loop.PBTOptimizer({"lr": (1e-5, 1e-1)}, min_history=5, seed=0)
    hp = {"lr": 1e-3}
    for score, lr in [(5.0, 1e-2), (4.0, 1e-3), (3.0, 1e-3), (2.0, 1e-3)]:
        opt.suggest({"lr": lr}, {"primary_score": score})
    assert opt.last_action == "warmup"
    new = opt.suggest(hp, {"primary_score": 0.0})  # the worst: copy the best
    assert opt.last_action == "exploit"
    assert new["lr"] in (pytest.approx(0.8e-2), pytest.approx(1.25e-2))
    new = opt.suggest(hp, {"primary_score": 4.5})  # middle: explore
    assert opt.last_action == "explore" and new["lr"] != hp["lr"]
    assert 1e-5 <= new["lr"] <= 1e-1


# ------------------------------------------------------------------ a plain agent


class PlainAgent:
    """No JAX: a one-number 'policy' that gets better as it learns."""

    def __init__(self, skill=0.0, rate=1.0):
        self.skill, self.hp = skill, {"rate": rate}
        self.name = None

    def act(self, observation):
        return np.zeros(len(observation), np.int64)

    def learn(self, episode_data):
        self.skill = min(self.skill + self.hp["rate"], 20.0)
        return {"skill": self.skill}

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


def skill_stream(agent):
    """A live source whose reward is the agent's skill plus noise."""
    rng = np.random.default_rng(0)
    obs = np.zeros(2)
    yield obs, 0.0, False, False, {}
    while True:
        yield obs, agent.skill + rng.normal(0, 0.5), True, False, {}


def test_plain_agent_loop_reaches_dormant_and_checkpoints(tmp_path):
    agent = PlainAgent(rate=2.0)
    events = []

    class Recorder(loop.LoopCallback):
        def on_loop_start(self, lp):
            events.append("start")

        def on_improvement(self, snapshot):
            events.append("improvement")

        def on_plateau(self, window, state):
            events.append("plateau")

        def on_dormant(self, window):
            events.append("dormant")

        def on_loop_stop(self, lp, result):
            events.append("stop")

    pipeline = loop.LivePipeline(skill_stream(agent), loop.every_n_steps(5))
    registry = loop.CheckpointRegistry(tmp_path / "ckpt", max_snapshots=2)
    lp = loop.RLOptimizer(
        agent, pipeline, registry=registry, callbacks=[Recorder()], max_episodes=500
    )
    result = lp.run()
    assert result.reason.startswith("DORMANT")
    assert events[0] == "start" and events[-1] == "stop"
    assert "plateau" in events and events.count("dormant") == 1
    assert result.best_score > 15.0  # skill saturates at 20
    assert len(registry.snapshots) == 2
    for record in result.records:
        assert {"primary_score", "generalization_gap", "state"} <= set(record)
    # The registry reopens from its manifest and loads the best weights.
    again = loop.CheckpointRegistry(tmp_path / "ckpt")
    fresh = PlainAgent()
    again.load_best(fresh)
    assert fresh.skill == pytest.approx(json.load(open(again.best.path))["skill"])


def test_validation_pipeline_never_learns_and_gap_is_recorded():
    agent = PlainAgent(rate=1.0)
    learned = []
    original = agent.learn
    agent.learn = lambda data: learned.append(data.window) or original(data)

    val_agent_calls = []

    def val_stream():
        obs = np.zeros(2)
        yield obs, 0.0, False, False, {}
        while True:
            action = yield obs, agent.skill - 3.0, True, False, {}
            val_agent_calls.append(action)

    lp = loop.RLOptimizer(
        agent,
        loop.LivePipeline(skill_stream(agent), loop.every_n_steps(4)),
        val_pipeline=loop.LivePipeline(val_stream(), loop.every_n_steps(2)),
        evaluator=loop.MinEvaluator(),
        max_episodes=6,
    )
    result = lp.run()
    assert result.reason == "max_episodes (6) reached"
    assert learned == list(range(6))  # only training windows were learned
    assert val_agent_calls  # the agent acted on validation windows
    for r in result.records:
        assert r["generalization_gap"] == pytest.approx(
            r["train_score"] - r["val_score"]
        )
        assert r["primary_score"] == min(r["train_score"], r["val_score"])


def test_hyperparam_updates_and_stop():
    agent = PlainAgent(rate=1.0)
    updates = []

    class Stopper(loop.LoopCallback):
        def on_hyperparam_update(self, old, new):
            updates.append((old, new))
            if len(updates) == 3:
                lp.stop("enough")

    lp = loop.RLOptimizer(
        agent,
        loop.LivePipeline(skill_stream(agent), loop.every_n_steps(3)),
        hparam_optimizer=loop.BackoffOptimizer({"rate": (0.1, 10.0)}),
        callbacks=[Stopper()],
    )
    result = lp.run()
    assert result.reason == "enough" and len(updates) == 3
    assert updates[0][1]["rate"] != updates[0][0]["rate"]


def test_live_pipeline_boundaries_and_bad_items():
    source = [(np.zeros(1), 1.0, i % 3 == 2, False, {}) for i in range(10)]
    windows = list(
        loop.LivePipeline(source, loop.on_episode_end()).episodes(PlainAgent())
    )
    assert [w.rewards.shape[0] for w in windows] == [2, 3, 3, 1]
    assert windows[0].episode_returns.tolist() == [2.0]
    clock = iter(range(100))
    timed = loop.LivePipeline(
        source, loop.every_n_seconds(2.5), clock=lambda: float(next(clock))
    )
    # one clock read opens a window, one per step: 3 steps reach 2.5 seconds
    assert [w.rewards.shape[0] for w in timed.episodes(PlainAgent())] == [3, 3, 3]
    with pytest.raises(ValueError, match="must yield"):
        list(loop.LivePipeline([1, 2]).episodes(PlainAgent()))
    with pytest.raises(ValueError, match="every_n_steps"):
        loop.every_n_steps(0)


def test_registry_manifest_is_atomic_and_orphans_are_removed(tmp_path):
    registry = loop.CheckpointRegistry(tmp_path, max_snapshots=2)
    agent = PlainAgent()
    for score in [1.0, 3.0, 2.0, math.nan]:
        agent.skill = score
        registry.save(
            agent, score, {"rate": 1.0}, window=int(score) if score == score else 9
        )
    assert [s.score for s in registry.snapshots] == [3.0, 2.0]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["score"] for s in manifest["snapshots"]] == [3.0, 2.0]
    assert not list(tmp_path.glob(".*tmp"))
    # A crash after the weights but before the manifest: an orphan folder.
    (tmp_path / "snapshot_000099").write_text("half")
    reopened = loop.CheckpointRegistry(tmp_path)
    assert not (tmp_path / "snapshot_000099").exists()
    assert reopened.best.score == 3.0
    with pytest.raises(KeyError, match="no snapshot 0"):
        reopened.load(agent, 0)
    with pytest.raises(LookupError, match="no snapshot saved"):
        loop.CheckpointRegistry(tmp_path / "empty").load_best(agent)


def test_check_agent_names_missing_methods():
    class Half:
        def act(self, obs):
            return obs

    with pytest.raises(TypeError, match="missing learn, get_hyperparams"):
        loop.RLOptimizer(Half(), loop.LivePipeline([]))


def test_policy_manager_weights_prune_boost_status():
    pm = loop.PolicyManager(lambda: PlainAgent(), max_spawns=1, print_report=False)
    a, b, c = PlainAgent(), PlainAgent(), PlainAgent()
    for agent, scores in ((a, [1.0, 3.0]), (b, [4.0, 6.0]), (c, [10.0])):
        for s in scores:
            pm.observe(agent, {"primary_score": s, "train_score": s, "val_score": s})
    w = pm.weights()  # means 2, 5, 10 -> (0, 3, 8) + eps
    eps = 1e-3 * 8 + 1e-9
    total = 11 + 3 * eps
    assert w["agent-0"] == pytest.approx(eps / total)
    assert w["agent-1"] == pytest.approx((3 + eps) / total)
    pm.boost(b, 2.0)
    assert pm.weights()["agent-1"] > w["agent-1"]
    assert pm.prune(1) == ["agent-0"] and pm.pruned == 1
    status = pm.status()
    json.dumps(status)
    assert status["ensemble_size"] == 2 and status["pruned"] == 1
    assert [x["name"] for x in status["agents"]] == ["agent-1", "agent-2"]


def test_ensemble_votes_and_averages():
    class Fixed(PlainAgent):
        def __init__(self, action, probs=None):
            super().__init__()
            self.action = action
            if probs is not None:
                self.action_probabilities = lambda obs: np.tile(probs, (len(obs), 1))

        def act(self, observation):
            return np.full(len(observation), self.action)

    obs = np.zeros((3, 2))
    ens = loop.EnsembleAgent(
        [Fixed(0, [0.6, 0.4]), Fixed(1, [0.1, 0.9])], [0.7, 0.3], discrete=True
    )
    # 0.7 * [0.6, 0.4] + 0.3 * [0.1, 0.9] = [0.45, 0.55] -> action 1
    assert ens.act(obs).tolist() == [1, 1, 1]
    votes = loop.EnsembleAgent([Fixed(0), Fixed(1)], [0.7, 0.3], True, num_actions=2)
    assert votes.act(obs).tolist() == [0, 0, 0]
    cont = loop.EnsembleAgent([Fixed(1.0), Fixed(3.0)], [1.0, 3.0], discrete=False)
    np.testing.assert_allclose(cont.act(obs), 2.5)
    with pytest.raises(TypeError, match="acts only"):
        ens.learn(None)
