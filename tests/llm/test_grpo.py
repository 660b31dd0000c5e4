"""The compiled GRPO program: vmap over seeds and hyperparameters, the host path,
dynamic sampling, value pretraining, checkpoints, data parallelism, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from convergence_jax import checkpoint, llm, lm

MODEL = lm.LMConfig(
    vocab_size=261,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    max_position_embeddings=64,
)
TOKENIZER = lm.ByteTokenizer()


def digit_reward(tokens, mask, batch):
    """A synthetic dense reward (the fraction of completion tokens with an odd
    id) so that a random model's groups have a reward spread."""
    return jnp.sum((tokens % 2) * mask, -1) / tokens.shape[-1]


@pytest.fixture(scope="module")
def task():
    return llm.tasks.addition(2, TOKENIZER)._replace(reward=digit_reward)


@pytest.fixture(scope="module")
def params():
    return lm.init_params(jax.random.key(0), MODEL)


def small(**overrides):
    base = dict(
        loss="grpo",
        num_prompts=4,
        group_size=4,
        max_new_tokens=4,
        learning_rate=1e-2,
        value_learning_rate=1e-2,
    )
    return llm.GRPOConfig(**{**base, **overrides})


def max_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_vmap_over_seeds_and_hyperparameters_and_exact_resume(task, params, tmp_path):
    config = small(num_epochs=2, num_minibatches=2)
    program = llm.make_grpo(config, MODEL, task)
    keys = jax.random.split(jax.random.key(1), 2)
    states = jax.vmap(program.init, in_axes=(0, None))(keys, params)
    grid = llm.grpo_hparam_grid(config, learning_rate=[1e-2, 3e-2])
    run = jax.jit(jax.vmap(program.run, in_axes=(0, 0, None)), static_argnums=2)
    out, metrics = run(states, grid, 2)
    assert metrics["reward"].shape == (2, 2)
    # Other values of the traced hyperparameters reuse the compiled program.
    run(states, grid.replace(beta=jnp.full(2, 0.1, jnp.float32)), 2)
    assert run._cache_size() == 1
    single = jax.jit(program.run, static_argnums=2)
    for lane in range(2):
        pick = jax.tree.map(lambda x, i=lane: x[i], (states, grid))
        alone, _ = single(*pick, 2)
        lane_state = jax.tree.map(lambda x, i=lane: x[i], out)
        # Equal up to rounding, which Adam scales up on near-zero gradient
        # entries (as in the 4-device test): a small fraction of the change.
        change = max_diff(lane_state.params, params)
        assert max_diff(alone.params, lane_state.params) < 0.05 * change
    # Different seeds and step sizes train differently.
    assert max_diff(out.params["embed"]["embedding"][0], params["embed"]["embedding"])
    a = jax.tree.map(lambda x: x[0], out.params)
    b = jax.tree.map(lambda x: x[1], out.params)
    assert max_diff(a, b) > 1e-4

    # A run saved, restored and continued equals the uninterrupted run.
    half = jax.tree.map(lambda x: x[0], out)
    straight, _ = single(half, None, 2)
    checkpoint.save(tmp_path / "grpo", half, step=2)
    restored = checkpoint.restore(tmp_path / "grpo", like=program.init(keys[0], params))
    assert max_diff(restored.params, half.params) == 0
    resumed, _ = single(restored, None, 2)
    assert max_diff(resumed.params, straight.params) == 0
    assert int(resumed.step) == 4


def test_host_path_equals_compiled_step_and_the_loss_gradient(task, params):
    config = small(beta=0.04, learning_rate=1e-3)
    program = llm.make_grpo(config, MODEL, task)
    state = program.init(jax.random.key(2), params)

    compiled, compiled_metrics = jax.jit(program.step)(state)

    def reward_fn(rollout):
        return np.asarray(digit_reward(rollout.tokens, rollout.mask, rollout.problem))

    hosted, hosted_metrics = program.host_step(state, reward_fn)
    assert max_diff(compiled.params, hosted.params) < 1e-6
    np.testing.assert_allclose(
        hosted_metrics["grad_norm"], compiled_metrics["grad_norm"], rtol=1e-5
    )

    # The program's gradient is that of the pure loss on the same samples.
    _, rollout = program.sample(state)
    rewards = reward_fn(rollout)
    _, metrics = program.learn(state, rollout, rewards)
    p, g, n = rollout.tokens.shape
    advantages = llm.grpo_advantages(jnp.asarray(rewards).reshape(-1), g)
    mask = rollout.mask.reshape(p * g, n)

    def logp_of(theta):
        return lm.completion_logprobs(
            theta,
            MODEL,
            rollout.prompt_tokens,
            rollout.prompt_mask,
            rollout.tokens,
            rollout.mask,
        ).reshape(p * g, n)

    ref = logp_of(params)

    def loss(theta):
        logp = logp_of(theta)
        value, _ = llm.policy_loss_from_config(
            "grpo",
            logp,
            jax.lax.stop_gradient(logp),
            advantages,
            mask,
            ref_logp=ref,
            beta=0.04,
        )
        return value

    expected = optax.tree.norm(jax.grad(loss)(state.params))
    np.testing.assert_allclose(metrics["grad_norm"], expected, rtol=1e-4)


def constant_reward(tokens, mask, batch):
    return jnp.zeros(tokens.shape[:2])


def gated_reward(tokens, mask, batch):
    """The odd-id reward for prompts whose last digit is odd, 0 for the others
    (whose groups then have no spread)."""
    odd_prompt = batch.prompt_tokens[:, -2:-1] % 2
    return digit_reward(tokens, mask, batch) * odd_prompt


def test_dynamic_sampling_refills_and_drops_flat_groups(task, params):
    config = small(loss="dapo", max_sampling_rounds=3)
    program = llm.make_grpo(config, MODEL, task._replace(reward=gated_reward))
    state = program.init(jax.random.key(4), params)
    _, metrics = jax.jit(program.step)(state)
    # About half the groups have a spread; refill rounds fill the batch.
    assert float(metrics["kept_fraction"]) < 1.0
    assert float(metrics["filled"]) == 1.0
    assert float(metrics["sampling_rounds"]) >= 2.0

    flat = llm.make_grpo(config, MODEL, task._replace(reward=constant_reward))
    after, metrics = jax.jit(flat.step)(flat.init(jax.random.key(4), params))
    # No group has a spread: every round runs, nothing is trained on.
    assert float(metrics["filled"]) == 0.0
    assert float(metrics["sampling_rounds"]) == 3.0
    assert max_diff(after.params, params) == 0.0


def test_vapo_value_pretraining_fits_returns_and_keeps_the_policy(task, params):
    program = llm.make_grpo(small(loss="vapo", learning_rate=1e-3), MODEL, task)
    state = program.init(jax.random.key(5), params)
    after, metrics = program.pretrain_value(state, None, 16)
    assert max_diff(after.params, state.params) == 0.0
    # From a zero head, 1/2 E[R^2], towards 1/2 Var(R) (fresh samples each step).
    losses = np.asarray(metrics["value_loss"])
    assert losses[-4:].mean() < 0.7 * losses[:4].mean()
    stepped, step_metrics = jax.jit(program.step)(after)
    assert np.isfinite(float(step_metrics["value_loss"]))
    assert max_diff(stepped.params, state.params) > 0.0


@pytest.mark.parametrize("loss", ["gepo", "gspo_token"])  # ppo: the sharded test
def test_every_loss_trains(task, params, loss):
    program = llm.make_grpo(small(loss=loss, num_epochs=2), MODEL, task)
    state, metrics = jax.jit(program.run, static_argnums=2)(
        program.init(jax.random.key(6), params), None, 2
    )
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())
    assert max_diff(state.params, params) > 0.0


@pytest.mark.parametrize("loss", ["dr_grpo", "ppo"])
def test_four_devices_equal_one(task, params, loss):
    """Same key, same prompts, same samples, same updates on a 4-device mesh.
    (beta = 0: with a KL term at step one, policy = reference and the loss's
    gradient is rounding noise, which Adam scales up to full steps.) In the
    test process: conftest forces 4 host devices before JAX is imported."""
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    out = []
    for devices in (1, 4):
        config = small(
            loss=loss,
            num_prompts=8,
            num_epochs=2,
            num_minibatches=2,
            num_devices=devices,
        )
        program = llm.make_grpo(config, MODEL, task)
        state = program.init(jax.random.key(1), params)
        out.append(jax.jit(program.run, static_argnums=2)(state, None, 3))
    (one, m1), (four, m4) = out
    change = max_diff(one.params, params)
    # The same samples at every step (so the same policies up to rounding) ...
    assert max_diff(m1["reward"], m4["reward"]) == 0.0
    # ... the same gradients ...
    for name in ("grad_norm", "value_loss") if loss == "ppo" else ("grad_norm",):
        np.testing.assert_allclose(m1[name], m4[name], rtol=1e-4, atol=1e-7)
    # ... and parameters apart by rounding only (Adam divides every gradient
    # entry by its own size, so entries that are nearly zero move by a full
    # step size on a rounding difference).
    assert max_diff(one.params, four.params) < 0.05 * change


def test_bad_input_names_the_field(task, params):
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        llm.make_grpo(small(group_size=1), MODEL, task)
    llm.make_grpo(small(loss="ppo", group_size=1), MODEL, task)  # fine
    with pytest.raises(ValueError, match="loss must be one of"):
        llm.make_grpo(small(loss="grpoo"), MODEL, task)
    with pytest.raises(ValueError, match="num_minibatches"):
        llm.make_grpo(small(num_minibatches=3), MODEL, task)
    too_many = len(jax.devices()) + 1
    with pytest.raises(ValueError, match="devices are visible"):
        llm.make_grpo(
            small(num_devices=too_many, num_prompts=4 * too_many), MODEL, task
        )
    with pytest.raises(ValueError, match="max_position_embeddings"):
        llm.make_grpo(small(max_new_tokens=60), MODEL, task)
    narrow = MODEL.__class__(**{**MODEL.__dict__, "vocab_size": 100})
    with pytest.raises(ValueError, match="vocab_size is 100"):
        llm.make_grpo(small(), narrow, task)
    with pytest.raises(ValueError, match="aggregation"):
        llm.make_grpo(small(aggregation="token-mean"), MODEL, task)
    with pytest.raises(ValueError, match="beta must be 0 for vapo"):
        llm.make_grpo(small(loss="vapo", beta=0.1), MODEL, task)
    with pytest.raises(ValueError, match="temperature"):
        llm.make_grpo(small(temperature=0.0), MODEL, task)
    countdown = llm.tasks.countdown(3, TOKENIZER)
    program = llm.make_grpo(small(), MODEL, countdown)
    state = program.init(jax.random.key(0), params)
    with pytest.raises(ValueError, match="host"):
        program.step(state)
    with pytest.raises(ValueError, match="params do not match"):
        program.init(jax.random.key(0), {"embed": params["embed"]})
    program = llm.make_grpo(small(), MODEL, task)
    with pytest.raises(ValueError, match=r"prompt_tokens must be \[num_prompts"):
        program.sample(state, None, np.ones((3, 5), np.int32))
    with pytest.raises(ValueError, match="vocabulary"):
        program.sample(state, None, np.full((4, 5), 300, np.int32))
    _, rollout = program.sample(state)
    with pytest.raises(ValueError, match=r"rewards must be \[num_prompts, group_size"):
        program.learn(state, rollout, np.zeros((4, 3)))


def test_host_path_with_text_prompts_and_reasoning_gym_rewards():
    """Prompts from the host (reasoning-gym questions, tokenized), rewards from
    the dataset's own verifier between the compiled sample and learn."""
    pytest.importorskip("reasoning_gym")
    gym = llm.reasoning_gym_task("basic_arithmetic", 16, 0)
    model = MODEL.__class__(
        **{
            **MODEL.__dict__,
            "max_position_embeddings": 128,
            "eos_token_id": TOKENIZER.eos_id,
        }
    )
    params = lm.init_params(jax.random.key(0), model)
    program = llm.make_grpo(small(), model)  # no task: prompts come from the host
    seen = []

    def prompts_fn(round_):
        questions, entries = gym.batch(4 * len(seen), 4)
        seen.append(entries)
        ids = [TOKENIZER.encode(q + " Answer: ") for q in questions]
        return lm.pad_batch(ids, TOKENIZER.pad_id, length=96)

    def reward_fn(rollout):
        texts = [
            TOKENIZER.decode(t[m > 0], skip_special_tokens=True)
            for t, m in zip(
                np.asarray(rollout.tokens).reshape(16, -1),
                np.asarray(rollout.mask).reshape(16, -1),
                strict=True,
            )
        ]
        entries = [e for e in seen[-1] for _ in range(4)]  # G = 4 per prompt
        return gym.reward(texts, entries).reshape(4, 4)

    state = program.init(jax.random.key(1), params)
    state, metrics = program.host_step(state, reward_fn, prompts_fn=prompts_fn)
    assert int(state.step) == 1 and len(seen) == 1
    assert 0.0 <= metrics["reward"] <= 1.0
    assert all(np.isfinite(v) for v in metrics.values())
    with pytest.raises(ValueError, match="step needs a task"):
        program.step(state)
