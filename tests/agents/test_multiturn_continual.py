"""Multi-turn GRPO with a continual-learning term in the loss
(``make_multiturn_grpo(..., continual=...)``): the update's gradient is the one
of the GRPO loss plus the penalty (an explicit sum on a tiny model), a zero
weight is a no-op, and the LwF / replay terms read the rows they should."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import llm, lm
from convergence_jax.agents import continual
from convergence_jax.agents import multiturn as mt
from convergence_jax.agents.task_env import customer_service_env, expert_conversations
from convergence_jax.llm.advantages import ADVANTAGES

TOK = lm.ByteTokenizer()
CONFIG = llm.GRPOConfig(loss="grpo", num_prompts=2, group_size=2, learning_rate=1e-3)


@pytest.fixture(scope="module")
def setup():
    env = customer_service_env(TOK, num_orders=8, max_turns=2, seed=1)
    mc = lm.LMConfig(
        vocab_size=TOK.vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=8,
        rope_theta=1000.0,
        max_position_embeddings=env.sequence_length,
    )
    params = lm.init_params(jax.random.key(0), mc)
    program = mt.make_multiturn_grpo(CONFIG, mc, env, continual="ewc")
    state = program.init(jax.random.key(3), params)
    # The scripted expert's conversations (on-policy GRPO does not read the
    # sampler's log-probs): no sampler to compile. Each scenario's group of
    # conversations shares its prompt, as the sampler's do.
    scenarios = env.sample_scenarios(
        jax.random.key(4), CONFIG.num_prompts, held_out=False
    )
    scenarios = jax.tree.map(lambda x: jnp.repeat(x, CONFIG.group_size, 0), scenarios)
    conv = jax.jit(lambda s: expert_conversations(env, s))(scenarios)
    # A group's expert conversations are identical: train each on a random 70%
    # of its agent tokens so that they differ (their advantages sum to 0).
    keep = jax.random.bernoulli(jax.random.key(5), 0.7, conv.loss_mask.shape)
    conv = conv._replace(loss_mask=conv.loss_mask * keep.astype(conv.loss_mask.dtype))
    return env, mc, params, program, state, conv


def _grpo_loss(mc, conv, rewards):
    """The on-policy GRPO loss (ratio 1): -mean_i A_i mean_{agent t} log p_t."""
    advantages = ADVANTAGES["grpo"](
        rewards.reshape(-1), CONFIG.group_size, epsilon=1e-4
    )
    weights = conv.loss_mask.astype(jnp.float32)

    def loss(params):
        logp = lm.completion_logprobs(
            params, mc, conv.prompt_tokens, conv.prompt_mask, conv.tokens, conv.mask
        )
        per_seq = jnp.sum(logp * weights, -1) / jnp.maximum(weights.sum(-1), 1)
        return -jnp.mean(advantages * per_seq)

    return loss


def _sign_match(grads, before, after) -> float:
    """Adam's first step is ``lr * g / (|g| + eps)``: the fraction of the
    gradient's large entries whose step is its sign."""
    ok = total = 0
    for g, p0, p1 in zip(*map(jax.tree.leaves, (grads, before, after)), strict=True):
        g, step = (
            np.asarray(g),
            (np.asarray(p0) - np.asarray(p1)) / CONFIG.learning_rate,
        )
        big = np.abs(g) > 1e-5
        ok += np.sum(np.abs(step[big] - np.sign(g[big])) < 0.05)
        total += big.sum()
    return ok / total


def test_ewc_term_gradient_is_the_sum_and_zero_weight_is_a_no_op(setup):
    env, mc, params, program, state, conv = setup
    p, g = CONFIG.num_prompts, CONFIG.group_size
    rewards = jnp.asarray(np.arange(p * g).reshape(p, g) % 3, jnp.float32)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), 2 * len(leaves))
    anchor = tree.unflatten(
        [
            x + 0.05 * jax.random.normal(k, x.shape)
            for x, k in zip(leaves, keys[: len(leaves)], strict=True)
        ]
    )
    fisher = tree.unflatten(
        [
            jax.random.uniform(k, x.shape)
            for x, k in zip(leaves, keys[len(leaves) :], strict=True)
        ]
    )
    hp = continual.ContinualHParams.create(ewc_lambda=50.0)
    penalty = continual.penalty_state(anchor, hp, fisher=fisher)
    new_state, metrics = program.learn(state, conv, rewards, penalty=penalty)

    grpo_loss = _grpo_loss(mc, conv, rewards)

    def total(params):
        return grpo_loss(params) + continual.ewc_penalty(params, anchor, fisher, 50.0)

    @jax.jit
    def reference(params):
        ewc = continual.ewc_penalty(params, anchor, fisher, 50.0)
        return jax.grad(total)(params), jax.grad(grpo_loss)(params), ewc

    grads, grpo_grads, ewc = reference(state.params)
    np.testing.assert_allclose(float(metrics["extra_loss"]), float(ewc), rtol=1e-5)
    norm = float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(grads))))
    np.testing.assert_allclose(float(metrics["grad_norm"]), norm, rtol=1e-4)
    assert _sign_match(grads, state.params, new_state.params) > 0.999
    # the GRPO gradient alone is a different one (the term matters) ...
    grpo_norm = float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(grpo_grads))))
    assert abs(grpo_norm - norm) > 1e-3 * norm
    # ... and with lambda 0 the update is GRPO's alone: its gradient, its step
    zero = continual.penalty_state(anchor, hp.replace(ewc_lambda=0.0), fisher=fisher)
    with_zero, zero_metrics = program.learn(state, conv, rewards, penalty=zero)
    assert float(zero_metrics["extra_loss"]) == 0.0
    np.testing.assert_allclose(float(zero_metrics["grad_norm"]), grpo_norm, rtol=1e-4)
    assert _sign_match(grpo_grads, state.params, with_zero.params) > 0.999
    with pytest.raises(ValueError, match="needs penalty"):
        program.learn(state, conv, rewards)
    with pytest.raises(ValueError, match="continual must be"):
        mt.make_multiturn_grpo(CONFIG, mc, env, continual="l2")


def test_lwf_and_replay_terms_read_their_rows(setup):
    """LwF's rows are the conversations (prompt, then the conversation, trained
    on the agent's tokens); replay's term is the weighted NLL of the rows."""
    env, mc, params, program, state, conv = setup
    g = CONFIG.group_size
    mb = {
        "prompt_tokens": conv.prompt_tokens[::g],
        "prompt_mask": conv.prompt_mask[::g],
        "tokens": conv.tokens.reshape(-1, g, conv.tokens.shape[-1]),
        "mask": conv.mask.reshape(-1, g, conv.mask.shape[-1]),
        "loss_mask": conv.loss_mask.reshape(-1, g, conv.mask.shape[-1]) * 1.0,
    }
    tokens, mask, loss_mask = mt.conversation_rows(mb)
    np.testing.assert_array_equal(
        tokens, np.concatenate([conv.prompt_tokens, conv.tokens], -1)
    )
    np.testing.assert_array_equal(
        mask, np.concatenate([conv.prompt_mask, conv.mask], -1)
    )
    np.testing.assert_array_equal(
        loss_mask,
        np.concatenate([np.zeros_like(conv.prompt_mask), conv.loss_mask > 0], -1),
    )
    rows = llm.tasks.SFTBatch(tokens, mask, loss_mask)
    hp = continual.ContinualHParams.create(replay_ratio=0.3, lwf_beta=2.0)
    other = lm.init_params(jax.random.key(5), mc)
    pen = continual.penalty_state(other, hp, rows=rows)

    @jax.jit
    def terms(params):
        return (
            continual.policy_penalty("lwf", params, pen, mc, rows),
            2.0 * continual.lwf_loss(params, other, mc, rows, 1.0),
            continual.policy_penalty("replay", params, pen, mc, rows),
            0.3 * llm.sft_loss(params, mc, rows)[0],
        )

    lwf, want_lwf, replay, want_replay = (float(x) for x in terms(params))
    np.testing.assert_allclose(lwf, want_lwf, rtol=1e-6)
    assert lwf > 0
    np.testing.assert_allclose(replay, want_replay, rtol=1e-6)
