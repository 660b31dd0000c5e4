"""Multi-turn GRPO on the customer-service TaskEnv: the rollout (deterministic,
cached sampling = full forward, wired to the env), the agent-only loss mask
against a hand-written gradient, checkpoint resume, bad input, a small bar."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import llm, lm
from convergence_jax.agents import multiturn as mt
from convergence_jax.agents.randomizer import DomainRandomizer
from convergence_jax.agents.task_env import customer_service_env
from convergence_jax.llm.advantages import ADVANTAGES

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


CONFIG = llm.GRPOConfig(loss="grpo", num_prompts=2, group_size=4, learning_rate=1e-3)


@pytest.fixture(scope="module")
def program(env, model_config):
    # The program train() builds for the same settings: compiled once here.
    return mt._cached_program(CONFIG, model_config, env)


@pytest.fixture(scope="module")
def params(model_config):
    return lm.init_params(jax.random.key(0), model_config)


@pytest.fixture(scope="module")
def sampled(program, params):
    state = program.init(jax.random.key(3), params)
    _, conv = program.sample(state)
    _, again = program.sample(state)
    return state, conv, again


def test_rollout_is_deterministic_and_key_dependent(program, params, sampled):
    state, conv, again = sampled
    for a, b in zip(jax.tree.leaves(conv), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = program.init(jax.random.key(4), params)
    _, conv2 = program.sample(other)
    assert not np.array_equal(np.asarray(conv.tokens), np.asarray(conv2.tokens))


def test_loss_mask_is_exactly_the_agent_tokens(env, sampled):
    _, conv, _ = sampled
    c = jax.tree.map(np.asarray, conv)
    for i in range(len(c.rewards)):
        want = []
        for a_len, r_len in zip(c.agent_lengths[i], c.reply_lengths[i], strict=True):
            want += [1] * int(a_len) + [0] * int(r_len)
        want += [0] * (env.completion_length - len(want))
        np.testing.assert_array_equal(c.loss_mask[i], want)
        real = int(c.agent_lengths[i].sum() + c.reply_lengths[i].sum())
        np.testing.assert_array_equal(
            c.mask[i], np.arange(env.completion_length) < real
        )
    assert c.reply_lengths.sum() > 0  # user / tool tokens present, not trained
    assert np.all(c.logprobs[c.loss_mask == 0] == 0)


def test_rollout_is_wired_to_the_env_and_cache_equals_full_forward(
    env, model_config, params, sampled
):
    """Replaying the sampled agent turns through env.step gives the recorded
    replies; the KV-cached sampler's log-probs equal one full forward's."""
    _, conv, _ = sampled
    c = jax.tree.map(np.asarray, conv)
    n = env.turn_tokens
    b = len(c.rewards)
    turns, replies, pos = [], [], np.zeros(b, int)
    for t in range(env.max_turns):
        tok = np.full((b, n), env.pad_id, np.int32)
        msk = np.zeros((b, n), np.int32)
        rep = []
        for i in range(b):
            a_len, r_len = int(c.agent_lengths[i, t]), int(c.reply_lengths[i, t])
            tok[i, :a_len] = c.tokens[i, pos[i] : pos[i] + a_len]
            msk[i, :a_len] = 1
            rep.append(c.tokens[i, pos[i] + a_len : pos[i] + a_len + r_len])
            pos[i] += a_len + r_len
        turns.append((tok, msk))
        replies.append(rep)
    state = env.reset(conv.scenarios)
    step = jax.jit(env.step)
    for t, (tok, msk) in enumerate(turns):
        state, rt, rm, info = step(state, jnp.asarray(tok), jnp.asarray(msk))
        np.testing.assert_array_equal(np.asarray(info.action), c.actions[:, t])
        if t < env.max_turns - 1:
            for i in range(b):
                want = np.asarray(rt[i])[np.asarray(rm[i]) > 0]
                np.testing.assert_array_equal(replies[t][i], want)
    np.testing.assert_array_equal(np.asarray(state.success), c.success)
    full = lm.completion_logprobs(
        params,
        model_config,
        conv.prompt_tokens,
        conv.prompt_mask,
        conv.tokens,
        conv.mask,
    )
    loss = c.loss_mask > 0
    np.testing.assert_allclose(np.asarray(full)[loss], c.logprobs[loss], atol=2e-4)


def test_learn_trains_agent_tokens_only(program, model_config, sampled):
    """One on-policy GRPO update (ratio 1, no clipping, Adam's first step is
    lr * g / (|g| + eps)) against the hand-written gradient of
    -mean_i A_i mean_{t in agent tokens of i} log p_t: user / tool tokens
    have no effect on the update; training on every token would."""
    state, conv, _ = sampled
    p, g = CONFIG.num_prompts, CONFIG.group_size
    rewards = jnp.asarray(np.arange(p * g).reshape(p, g) % 3, jnp.float32)
    new_state, _ = program.learn(state, conv, rewards)
    advantages = ADVANTAGES["grpo"](rewards.reshape(-1), g, epsilon=1e-4)

    def reference_loss(params, weights):
        logp = lm.completion_logprobs(
            params,
            model_config,
            conv.prompt_tokens,
            conv.prompt_mask,
            conv.tokens,
            conv.mask,
        )
        per_seq = jnp.sum(logp * weights, -1) / jnp.maximum(weights.sum(-1), 1)
        return -jnp.mean(advantages * per_seq)

    lr = CONFIG.learning_rate

    def matches(weights):
        grads = jax.grad(reference_loss)(state.params, weights.astype(jnp.float32))
        ok, total = 0, 0
        for g_ref, p0, p1 in zip(
            jax.tree.leaves(grads),
            jax.tree.leaves(state.params),
            jax.tree.leaves(new_state.params),
            strict=True,
        ):
            g_ref, step = np.asarray(g_ref), (np.asarray(p0) - np.asarray(p1)) / lr
            big = np.abs(g_ref) > 1e-5
            ok += np.sum(np.abs(step[big] - np.sign(g_ref[big])) < 0.05)
            total += big.sum()
        return ok / total

    assert matches(conv.loss_mask) > 0.999
    assert matches(conv.mask) < 0.99  # measured 0.94: the mask matters


def test_checkpoint_resume_is_exact(env, model_config, params, tmp_path):
    agent = (params, model_config)
    kw = dict(profile="balanced", num_prompts=2, group_size=4, seed=7)
    kw["learning_rate"] = CONFIG.learning_rate  # the fixture's program
    whole = mt.train(agent, env, num_episodes=3 * 8, **kw)
    first = mt.train(agent, env, num_episodes=2 * 8, checkpoint_dir=tmp_path, **kw)
    assert first.resumed_from == 0
    rest = mt.train(agent, env, num_episodes=3 * 8, checkpoint_dir=tmp_path, **kw)
    assert rest.resumed_from == 2 and len(rest.metrics["success"]) == 1
    for a, b in zip(
        jax.tree.leaves(whole.state), jax.tree.leaves(rest.state), strict=True
    ):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A Python reward on the trajectories runs through sample + learn.
    seen = []
    out = mt.train(
        agent, env, reward_fn=lambda t: seen.append(t) or 0.5, num_episodes=8, **kw
    )
    assert len(seen) == 8 and out.metrics["reward"][0] == 0.5


def test_bad_input_raises(env, model_config, params):
    with pytest.raises(ValueError, match="group loss"):
        mt.make_multiturn_grpo(CONFIG.__class__(loss="vapo"), model_config, env)
    with pytest.raises(ValueError, match="dynamic_sampling"):
        mt.make_multiturn_grpo(
            llm.GRPOConfig(loss="dapo", dynamic_sampling=True), model_config, env
        )
    with pytest.raises(ValueError, match="vocab_size"):
        mt.make_multiturn_grpo(CONFIG, model_config.replace(vocab_size=200), env)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        mt.make_multiturn_sft(model_config.replace(max_position_embeddings=64), env)
    with pytest.raises(ValueError, match="profile"):
        mt.train((params, model_config), env, profile="reckless")
    with pytest.raises(ValueError, match="agent_or_params"):
        mt.train(params, env)
    with pytest.raises(ValueError, match="unknown GRPOConfig"):
        mt.train((params, model_config), env, learning_rat=1.0)


@pytest.mark.parametrize("loss", ["dr_grpo", "gspo"])
def test_other_group_losses_learn_on_the_same_conversations(
    env, model_config, sampled, loss
):
    state, conv, _ = sampled
    config = llm.GRPOConfig(loss=loss, num_prompts=2, group_size=4, learning_rate=1e-3)
    program = mt.make_multiturn_grpo(config, model_config, env)
    rewards = jnp.asarray([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    new_state, metrics = program.learn(state, conv, rewards)
    assert np.isfinite(float(metrics["policy_loss"]))
    moved = [
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(
            jax.tree.leaves(state.params),
            jax.tree.leaves(new_state.params),
            strict=True,
        )
    ]
    assert all(moved)
    with pytest.raises(ValueError, match="rewards must be"):
        program.learn(state, conv, rewards[:1])


# --- turn-level credit ------------------------------------------------------------

CREDIT = llm.GRPOConfig(
    loss="grpo",
    num_prompts=2,
    group_size=4,
    learning_rate=1e-3,
    value_learning_rate=3e-3,
    gae_lambda=1.0,
)


@pytest.fixture(scope="module")
def credit_program(env, model_config):
    return mt.make_multiturn_grpo(CREDIT, model_config, env, turn_credit="gae+group")


def numpy_turn_gae(rewards, values, num_turns, gamma, lam):
    advantages, returns = np.zeros(rewards.shape), np.zeros(rewards.shape)
    for i, n in enumerate(num_turns):
        next_a = next_v = 0.0
        for t in reversed(range(n)):
            a = rewards[i, t] + gamma * next_v - values[i, t] + gamma * lam * next_a
            advantages[i, t], returns[i, t] = a, a + values[i, t]
            next_a, next_v = a, values[i, t]
    return advantages, returns


def test_turn_gae_matches_numpy_with_early_ends():
    rng = np.random.default_rng(0)
    b, t = 12, 5
    rewards = rng.normal(size=(b, t)).astype(np.float32)
    values = rng.normal(size=(b, t)).astype(np.float32)  # garbage after the end
    num_turns = rng.integers(1, t + 1, b)
    num_turns[:2] = (1, t)
    gae = jax.jit(mt.turn_gae)
    for gamma, lam in ((1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)):
        a, r = gae(
            jnp.asarray(rewards),
            jnp.asarray(values),
            jnp.asarray(num_turns),
            gamma=gamma,
            gae_lambda=lam,
        )
        want_a, want_r = numpy_turn_gae(rewards, values, num_turns, gamma, lam)
        np.testing.assert_allclose(np.asarray(a), want_a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(r), want_r, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="num_turns must be"):
        mt.turn_gae(jnp.asarray(rewards), jnp.asarray(values), jnp.ones(3, jnp.int32))


def test_turn_layout_and_values_read_before_each_turn(
    env, model_config, credit_program, params, sampled
):
    """Each agent token gets its own turn's value; V(s_t) is read at the
    column of the token that ends the previous reply (the prompt for t = 0)."""
    _, conv, _ = sampled
    c = jax.tree.map(np.asarray, conv)
    b, t = c.agent_lengths.shape
    per_turn = np.arange(b * t, dtype=np.float32).reshape(b, t) + 1
    spread = np.asarray(
        mt.spread_over_tokens(
            jnp.asarray(per_turn),
            conv.agent_lengths,
            conv.reply_lengths,
            env.completion_length,
        )
    )
    starts = np.asarray(mt.turn_starts(conv.agent_lengths, conv.reply_lengths))
    for i in range(b):
        want, column = [], 0
        for k in range(t):
            a_len, r_len = int(c.agent_lengths[i, k]), int(c.reply_lengths[i, k])
            if a_len:
                assert starts[i, k] == column
            want += [per_turn[i, k]] * a_len + [0.0] * r_len
            column += a_len + r_len
        want += [0.0] * (env.completion_length - len(want))
        np.testing.assert_array_equal(spread[i] * c.loss_mask[i], want)
    value_params = jax.tree.map(
        lambda x: x + 0.1, credit_program.init(jax.random.key(0), params).value_params
    )
    values = np.asarray(credit_program.turn_values(value_params, conv))
    hidden, _ = lm.Transformer(model_config, output_hidden=True).apply(
        {"params": value_params["trunk"]},
        jnp.concatenate([conv.prompt_tokens, conv.tokens], 1),
        jnp.concatenate([conv.prompt_mask, conv.mask], 1),
    )
    head = value_params["head"]
    full = np.asarray((hidden @ head["kernel"])[..., 0] + head["bias"][0])
    lp = c.prompt_tokens.shape[1]
    assistant = TOK.encode("<|im_start|>assistant\n")[-1]
    for i in range(b):
        for k in range(int(c.num_turns[i])):
            before = lp + starts[i, k] - 1  # the token before the turn
            np.testing.assert_allclose(values[i, k], full[i, before], atol=1e-5)
            sequence = np.concatenate([c.prompt_tokens[i], c.tokens[i]])
            assert sequence[before] == assistant  # "...<|im_start|>assistant\n"


def test_turn_credit_learn_trains_policy_and_value_under_vmap(
    credit_program, model_config, params, sampled
):
    """Turn credit's learn, vmapped over two value learning rates (one
    compile): the first update is the hand-written gradient of the GRPO loss
    with per-token advantages whiten(A_t) + group advantage (the value head
    starts at 0, so with gamma = lambda = 1 A_t = R on every turn taken); the
    value model moves and its loss on the fixed batch falls."""
    _, conv, _ = sampled
    p, g = CREDIT.num_prompts, CREDIT.group_size
    rewards = np.asarray([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]], np.float32)
    hparams = llm.grpo_hparam_grid(CREDIT, value_learning_rate=[1e-3, 2e-3])
    state = credit_program.init(jax.random.key(5), params)
    states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    learn = jax.jit(
        jax.vmap(lambda s, h: credit_program.learn(s, conv, rewards, h)),
    )
    losses, history = [], [states]
    for _ in range(8):
        states, metrics = learn(states, hparams)
        losses.append(np.asarray(metrics["value_loss"]))
        history.append(states)
    losses = np.stack(losses)  # [calls, 2]: the loss before each update
    assert np.all(losses[-1] < 0.75 * losses[0]), losses
    assert np.all(np.diff(losses[:, 0]) < 0), losses
    assert not np.allclose(losses[1:, 0], losses[1:, 1])  # two runs, one compile
    first = jax.tree.map(lambda x: x[0], history[1])
    second = jax.tree.map(lambda x: x[0], history[2])
    # The head starts at 0, so the trunk's first gradient is 0: it moves next.
    for before, after in (
        (state.params, first.params),
        (state.value_params["head"], first.value_params["head"]),
        (state.value_params, second.value_params),
    ):
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
            assert not np.array_equal(np.asarray(a), np.asarray(b))

    # The first policy update against the hand-written per-token advantages.
    c = jax.tree.map(np.asarray, conv)
    n = c.num_turns
    taken = np.arange(c.agent_lengths.shape[1])[None] < n[:, None]
    flat = rewards.reshape(-1)
    turn_a = np.where(taken, flat[:, None], 0.0)
    mean = turn_a[taken].mean()
    std = np.sqrt(turn_a[taken].var(ddof=1) + 1e-8)
    whitened = np.where(taken, (turn_a - mean) / std, 0.0)
    token_a = np.zeros(c.tokens.shape, np.float32)
    for i in range(len(flat)):
        column = 0
        for k in range(int(n[i])):
            a_len, r_len = int(c.agent_lengths[i, k]), int(c.reply_lengths[i, k])
            token_a[i, column : column + a_len] = whitened[i, k]
            column += a_len + r_len
    token_a += np.asarray(ADVANTAGES["grpo"](jnp.asarray(flat), g, epsilon=1e-4))[
        :, None
    ]
    weights = c.loss_mask.astype(np.float32)

    def reference_loss(params):
        logp = lm.completion_logprobs(
            params,
            model_config,
            conv.prompt_tokens,
            conv.prompt_mask,
            conv.tokens,
            conv.mask,
        )
        per_seq = jnp.sum(logp * token_a * weights, -1) / np.maximum(weights.sum(-1), 1)
        return -jnp.mean(per_seq)

    grads = jax.grad(reference_loss)(state.params)
    ok = total = 0
    for g_ref, p0, p1 in zip(
        jax.tree.leaves(grads),
        jax.tree.leaves(state.params),
        jax.tree.leaves(first.params),
        strict=True,
    ):
        g_ref = np.asarray(g_ref)
        step = (np.asarray(p0) - np.asarray(p1)) / CREDIT.learning_rate
        big = np.abs(g_ref) > 1e-5
        ok += np.sum(np.abs(step[big] - np.sign(g_ref[big])) < 0.05)
        total += big.sum()
    assert ok / total > 0.999
    assert p * g == len(flat)


def test_turn_credit_bad_options_raise(
    env, model_config, program, credit_program, sampled
):
    def make(turn_credit="gae", **fields):
        config = llm.GRPOConfig(num_prompts=2, group_size=4, **fields)
        return mt.make_multiturn_grpo(
            config, model_config, env, turn_credit=turn_credit
        )

    with pytest.raises(ValueError, match="turn_credit must be None or one of"):
        make("td")
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        make(gamma=1.5)
    with pytest.raises(ValueError, match=r"gae_lambda must be in \[0, 1\]"):
        make(gae_lambda=-0.1)
    with pytest.raises(ValueError, match="value_learning_rate must be > 0"):
        make(value_learning_rate=0.0)
    with pytest.raises(ValueError, match="value_clip_eps must be None"):
        make(value_clip_eps=0.0)
    with pytest.raises(ValueError, match="off_policy_threshold"):
        make(off_policy_threshold=0.5)
    with pytest.raises(ValueError, match="turn_credit='gae'"):
        make(None, loss="ppo")
    state, conv, _ = sampled  # learn checks the shapes before compiling
    with pytest.raises(ValueError, match="per turn"):
        credit_program.learn(state, conv, np.zeros((2, 4, env.max_turns + 1)))
    with pytest.raises(ValueError, match=r"rewards must be \[num_prompts"):
        program.learn(state, conv, np.zeros((2, 4, env.max_turns)))


def test_four_devices_equal_one(env, model_config, params):
    """Data parallel: each of 4 devices plays a quarter of the conversations and
    the updates are averaged over the mesh; the run is the one-device run."""
    config = llm.GRPOConfig(
        loss="grpo", num_prompts=4, group_size=2, learning_rate=1e-3, num_epochs=2
    )
    runs = []
    for devices in (1, 4):
        program = mt.make_multiturn_grpo(
            config.__class__(**{**vars(config), "num_devices": devices}),
            model_config,
            env,
        )
        state = program.init(jax.random.key(5), params)
        state, metrics = program.run(state, num_steps=2)
        runs.append((state, metrics))
    (one, m1), (four, m4) = runs
    leaves = zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params), strict=True)
    for a, b in leaves:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    for name in ("reward", "success", "agent_tokens"):
        np.testing.assert_allclose(np.asarray(m1[name]), np.asarray(m4[name]))
    with pytest.raises(ValueError, match="runs on one device"):
        mt.make_multiturn_grpo(
            config.__class__(**{**vars(config), "num_devices": 4}),
            model_config,
            env,
            continual="ewc",
        )
