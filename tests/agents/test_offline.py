"""Logged conversations (agents.offline): the JSONL dataset with its line-numbered
skip report, filtering and splitting, rows in the env's token layout, the AWR
weights and weighted NLL against NumPy, the offline trainer (jit, scan, vmap
over hparams, learns), the hybrid offline -> online program, bad input."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import llm, lm
from convergence_jax.agents import multiturn as mt
from convergence_jax.agents import offline
from convergence_jax.agents.randomizer import DomainRandomizer
from convergence_jax.agents.task_env import (
    customer_service_env,
    expert_conversations,
    to_trajectories,
)
from convergence_jax.agents.trajectory import MultiTurnTrajectory, save_jsonl

TOK = lm.ByteTokenizer()


@pytest.fixture(scope="module")
def env():
    return customer_service_env(
        TOK, DomainRandomizer(strength=0.5), num_orders=32, max_turns=3, seed=1
    )


@pytest.fixture(scope="module")
def model_config(env):
    return lm.LMConfig(
        vocab_size=TOK.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=16,
        rope_theta=1000.0,
        max_position_embeddings=env.sequence_length,
    )


@pytest.fixture(scope="module")
def params(model_config):
    return lm.init_params(jax.random.key(0), model_config)


@pytest.fixture(scope="module")
def logged(env, model_config, params):
    """A random policy's conversations (all reward 0) and the expert's (1)."""
    random_play = offline.log_conversations(
        params,
        model_config,
        env,
        jax.random.key(1),
        num_scenarios=4,
        group_size=2,
        temperatures=(0.0, 1.0),
        policy="random",
    )
    sc = env.sample_scenarios(jax.random.key(2), 8, held_out=False)
    expert = to_trajectories(env, jax.jit(lambda s: expert_conversations(env, s))(sc))
    return random_play, expert


def test_log_conversations_counts_metadata_and_rewards(logged):
    random_play, expert = logged
    assert len(random_play) == 4 * 2 * 2
    temps = [t.metadata["temperature"] for t in random_play]
    assert temps == [0.0] * 8 + [1.0] * 8
    assert {t.metadata["policy"] for t in random_play} == {"random"}
    assert [t.metadata["scenario"] for t in random_play[:8]] == [0, 0, 1, 1, 2, 2, 3, 3]
    # a scenario's group shares its order id (the scenario_id baselines use)
    assert random_play[0].scenario_id == random_play[1].scenario_id
    assert all(t.final_reward == 0.0 for t in random_play)  # untrained: no success
    assert all(t.final_reward == 1.0 for t in expert)


def test_from_jsonl_reports_bad_lines_by_number(tmp_path, logged, caplog):
    _, expert = logged
    path = tmp_path / "log.jsonl"
    save_jsonl(path, expert[:3])
    lines = path.read_text().splitlines()
    no_reward = MultiTurnTrajectory.from_messages(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    )
    bad = [
        lines[0],
        "{not json",
        json.dumps({"turns": []}),
        "",
        lines[1],
        json.dumps(no_reward.to_dict()),
        json.dumps({**json.loads(lines[2]), "final_reward": "high"}),
        lines[2],
    ]
    path.write_text("\n".join(bad) + "\n")
    with caplog.at_level(logging.WARNING, logger="convergence_jax.agents.offline"):
        data = offline.ConversationDataset.from_jsonl(path)
    assert len(data) == 3
    assert data.line_numbers == (1, 5, 8)
    report = data.report
    assert [line for line, _ in report.skipped] == [2, 3, 6, 7]
    assert "no reward" in report.skipped[2][1]
    assert report.num_lines == 7 and report.num_loaded == 3
    assert "line 2" in caplog.text and "line 7" in caplog.text
    with pytest.raises(ValueError, match="line 2"):
        offline.ConversationDataset.from_jsonl(path, strict=True)


def test_quality_threshold_filter_split_and_save(tmp_path, logged):
    random_play, expert = logged
    path = tmp_path / "mixed.jsonl"
    save_jsonl(path, random_play + expert)
    data = offline.ConversationDataset.from_jsonl(path)
    assert len(data) == 24 and not data.report.skipped
    good = offline.ConversationDataset.from_jsonl(path, quality_threshold=0.5)
    assert len(good) == 8 and good.report.below_threshold == 16
    assert np.all(good.rewards == 1.0)
    assert len(data.filter(min_reward=1.0)) == 8
    assert len(data.filter(top_quantile=0.1)) == 8  # ties at the top kept
    assert len(data.filter(lambda t: t.metadata.get("temperature") == 0.0)) == 8
    with pytest.raises(ValueError, match="no row"):
        data.filter(min_reward=2.0)
    rest, held = data.split(0.25, seed=0)
    assert len(rest) + len(held) == len(data)
    assert not set(rest.scenario_ids) & set(held.scenario_ids)
    out = tmp_path / "again.jsonl"
    assert held.save(out) == len(held)
    again = offline.ConversationDataset.from_jsonl(out)
    assert [t.to_dict() for t in again.trajectories] == [
        t.to_dict() for t in held.trajectories
    ]


def test_rows_are_the_env_layout(env, logged):
    _, expert = logged
    data = offline.ConversationDataset.from_trajectories(expert)
    rows = data.to_rows(TOK, max_length=env.sequence_length)
    assert rows.tokens.shape == (8, env.sequence_length)
    sc = env.sample_scenarios(jax.random.key(2), 8, held_out=False)
    conv = jax.tree.map(np.asarray, expert_conversations(env, sc))
    for i in range(8):
        pm, m = conv.prompt_mask[i] > 0, conv.mask[i] > 0
        want = np.concatenate([conv.prompt_tokens[i][pm], conv.tokens[i][m]])
        want_loss = np.concatenate([np.zeros(pm.sum(), int), conv.loss_mask[i][m]])
        n = len(want)
        np.testing.assert_array_equal(rows.tokens[i, :n], want)
        np.testing.assert_array_equal(rows.loss_mask[i, :n], want_loss)
        assert rows.mask[i, :n].all() and not rows.mask[i, n:].any()
        assert np.all(rows.tokens[i, n:] == TOK.pad_id)
    with pytest.raises(ValueError, match="line 1"):
        data.to_rows(TOK, max_length=10)


def test_baselines_against_numpy():
    rewards = np.asarray([1.0, 0.0, 0.0, 1.0, 0.5], np.float32)
    ids = ["a", "a", "b", None, "c"]
    got = offline.baselines(rewards, ids, "scenario")
    mean = rewards.mean()
    np.testing.assert_allclose(got, [0.5, 0.5, mean, mean, mean], rtol=1e-6)
    np.testing.assert_allclose(offline.baselines(rewards, ids, "mean"), [mean] * 5)
    with pytest.raises(ValueError, match="kind"):
        offline.baselines(rewards, ids, "value")


def test_awr_weights_and_weighted_nll_against_numpy():
    rng = np.random.default_rng(0)
    returns = rng.normal(size=6).astype(np.float32)
    base = rng.normal(size=6).astype(np.float32)
    got = jax.jit(offline.awr_weights)(returns, base, 1.5, 3.0)
    np.testing.assert_allclose(
        got, np.minimum(np.exp(1.5 * (returns - base)), 3.0), rtol=1e-6
    )
    huge = offline.awr_weights(jnp.asarray([1e4]), jnp.zeros(1), 10.0, 20.0)
    assert float(huge[0]) == pytest.approx(20.0)  # clipped, no overflow
    np.testing.assert_allclose(offline.awr_weights(returns, base, 0.0, 5.0), 1.0)
    logp = -rng.random((6, 5)).astype(np.float32)
    mask = (rng.random((6, 5)) > 0.4).astype(np.int32)
    w = rng.random(6).astype(np.float32)
    want = -np.sum(w[:, None] * logp * mask) / mask.sum()
    np.testing.assert_allclose(offline.weighted_nll(logp, mask, w), want, rtol=1e-6)
    with pytest.raises(AssertionError):
        offline.weighted_nll(logp, mask, w[:3])


@pytest.fixture(scope="module")
def mixed_rows(env, logged):
    random_play, expert = logged
    data = offline.ConversationDataset.from_trajectories(random_play + expert)
    # the random policy's cut-off turns come back one token longer (the text
    # gets its end marker): rows that no longer fit are left out, by line
    data = data.fitting(TOK, env.sequence_length)
    assert 8 <= len(data) < 24
    return data, data.to_rows(TOK, max_length=env.sequence_length)


def test_bc_loss_is_sft_loss_and_awr_weights_rows(model_config, params, mixed_rows):
    data, rows = mixed_rows
    bc = offline.make_offline_trainer(model_config, rows, method="bc", batch_size=4)
    batch = tuple(jnp.asarray(x) for x in rows[:3])
    want, _ = llm.sft_loss(params, model_config, llm.SFTBatch(*batch))
    got = bc.loss(params, batch, bc.weights())
    np.testing.assert_allclose(got, want, rtol=1e-5)
    awr = offline.make_offline_trainer(
        model_config,
        rows,
        method="awr",
        batch_size=4,
        baseline=data.baselines("mean"),
        hparams=offline.OfflineHParams.create(beta=2.0, max_weight=4.0),
    )
    w = np.asarray(awr.weights())
    mean = data.rewards.mean()
    np.testing.assert_allclose(
        w, np.minimum(np.exp(2.0 * (data.rewards - mean)), 4.0), rtol=1e-6
    )
    assert w[-1] > w[0]  # expert rows weigh more than the failures
    np.testing.assert_array_equal(rows.line_numbers, data.line_numbers)


def test_offline_trainer_learns_jits_scans_and_vmaps(model_config, params, mixed_rows):
    data, rows = mixed_rows
    good = data.filter(min_reward=1.0).to_rows(TOK, max_length=rows.tokens.shape[1])
    trainer = offline.make_offline_trainer(
        model_config,
        good,
        method="bc",
        batch_size=4,
        hparams=offline.OfflineHParams.create(learning_rate=3e-3),
    )
    state = trainer.init(jax.random.key(0), params)
    run = jax.jit(lambda s: trainer.run(s, None, 30))
    end, metrics = run(state)
    assert metrics["loss"].shape == (30,)
    assert float(metrics["loss"][-5:].mean()) < 0.6 * float(metrics["loss"][:3].mean())
    np.testing.assert_allclose(metrics["batch_reward"], 1.0)
    # vmap over learning rates: lr 0 leaves the params unchanged
    hps = jax.tree.map(
        lambda a, b: jnp.stack([a, b]),
        offline.OfflineHParams.create(learning_rate=0.0),
        offline.OfflineHParams.create(learning_rate=3e-3),
    )
    states = jax.vmap(lambda h: trainer.run(state, h, 2)[0])(hps)
    leaf = jax.tree.leaves(params)[0]
    np.testing.assert_array_equal(jax.tree.leaves(states.params)[0][0], leaf)
    assert not np.array_equal(jax.tree.leaves(states.params)[0][1], leaf)


def test_hybrid_runs_and_zero_weight_is_plain_grpo(
    env, model_config, params, mixed_rows
):
    _, rows = mixed_rows
    config = llm.GRPOConfig(
        loss="grpo", num_prompts=2, group_size=2, learning_rate=1e-3
    )
    hybrid = offline.make_hybrid(config, model_config, env, rows, batch_size=4)
    state, off_m, on_m = hybrid.run(jax.random.key(0), params, 2, 1, 0.5)
    assert off_m["loss"].shape == (2,) and on_m["success"].shape == (1,)
    assert int(state.step) == 1
    # weight 0: the replay term adds nothing, the update is plain GRPO's
    plain = mt.make_multiturn_grpo(config, model_config, env)
    s0 = plain.init(jax.random.key(5), params)
    a, _ = plain.run(s0, None, 1)
    b, _ = hybrid.online.run(s0, None, 1, penalty=hybrid.penalty(params, 0.0))
    c, _ = hybrid.online.run(s0, None, 1, penalty=hybrid.penalty(params, 0.5))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    moved = [
        not np.allclose(x, y)
        for x, y in zip(
            jax.tree.leaves(a.params), jax.tree.leaves(c.params), strict=True
        )
    ]
    assert any(moved)  # a non-zero weight changes the update


def test_bad_input(model_config, mixed_rows, tmp_path):
    _, rows = mixed_rows
    with pytest.raises(ValueError, match="method"):
        offline.make_offline_trainer(model_config, rows, method="cql")
    with pytest.raises(ValueError, match="batch_size"):
        offline.make_offline_trainer(model_config, rows, batch_size=0)
    with pytest.raises(ValueError, match="baseline"):
        offline.make_offline_trainer(model_config, rows, baseline=np.zeros(3))
    with pytest.raises(ValueError, match="max_position"):
        offline.make_offline_trainer(
            model_config.replace(max_position_embeddings=16)
            if hasattr(model_config, "replace")
            else __import__("dataclasses").replace(
                model_config, max_position_embeddings=16
            ),
            rows,
        )
    with pytest.raises(ValueError, match="max_weight"):
        offline.OfflineHParams.create(max_weight=0.0)
    with pytest.raises(ValueError, match="quality_threshold"):
        offline.ConversationDataset.from_jsonl(tmp_path / "x", quality_threshold="a")
    with pytest.raises(ValueError, match="no reward"):
        offline.ConversationDataset.from_trajectories(
            [MultiTurnTrajectory.from_messages([{"role": "user", "content": "x"}])]
        )
