"""The customer-service TaskEnv and the DomainRandomizer: parsing, transitions and
the success rule against a plain-Python reference, held-out splits, layout
equal to tokenize_trajectory, bad input."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import lm
from convergence_jax.agents.randomizer import DomainRandomizer
from convergence_jax.agents.task_env import (
    ACTIONS,
    customer_service_env,
    expert_conversations,
    to_trajectories,
)
from convergence_jax.agents.trajectory import tokenize_trajectory

TOK = lm.ByteTokenizer()
END = "<|im_end|>"


@pytest.fixture(scope="module")
def env():
    return customer_service_env(
        TOK, DomainRandomizer(strength=0.8), num_orders=64, max_turns=4, seed=3
    )


def encode_turns(env, texts):
    """Agent turns as [B, N] tokens / mask (a text may carry its own END)."""
    n = env.turn_tokens
    tokens = np.full((len(texts), n), env.pad_id, np.int32)
    mask = np.zeros((len(texts), n), np.int32)
    for i, text in enumerate(texts):
        ids = TOK.encode(text)[:n]
        tokens[i, : len(ids)] = ids
        mask[i, : len(ids)] = 1
    return jnp.asarray(tokens), jnp.asarray(mask)


# --- a plain-Python reference ---------------------------------------------------

COMMAND = re.compile(r"^(ask id|(lookup|refund|deny) (\d{4}))$")


def ref_parse(text):
    if not text.endswith(END):
        return "invalid", None
    body = text[: -len(END)]
    if END in body or "<|" in body:
        return "invalid", None
    m = COMMAND.match(body)
    if m is None:
        return "invalid", None
    if m.group(1) == "ask id":
        return "ask", None
    return m.group(2), int(m.group(3))


def ref_reply(env, scenario, action, arg):
    """The reply text (with its chat markers), or None."""
    style = env.styles[scenario["style"]]
    if action == "ask":
        role, content = "user", style.format(order_id=f"{scenario['id']:04d}")
    elif action == "lookup":
        rows = np.flatnonzero(env.order_ids == arg)
        if len(rows) == 0:
            role, content = "tool", f"{arg:04d}: no such order"
        else:
            row = rows[0]
            if env.delivered[row]:
                content = (
                    f"{arg:04d}: delivered {env.days[row]:02d} days ago, "
                    f"${env.amount[row]:03d}"
                )
            else:
                content = f"{arg:04d}: in transit, ${env.amount[row]:03d}"
            role = "tool"
    elif action == "invalid":
        role, content = "tool", "error: unknown command"
    else:
        return None
    return f"\n<|im_start|>{role}\n{content}{END}\n<|im_start|>assistant\n"


def ref_episode(env, scenario, texts):
    """Replies per turn (None after the end), the reward and the turn count."""
    looked_up, done, reward, turns, replies = False, False, 0.0, 0, []
    row = scenario["order"]
    right = "refund" if env.delivered[row] and env.days[row] < 30 else "deny"
    for text in texts:
        if done:
            replies.append(None)
            continue
        action, arg = ref_parse(text)
        turns += 1
        if action in ("refund", "deny"):
            done = True
            ok = arg == scenario["id"] and looked_up and action == right
            reward = float(ok)
            replies.append(None)
            continue
        if action == "lookup" and arg == scenario["id"]:
            looked_up = True
        done = turns >= env.max_turns
        replies.append(None if done else ref_reply(env, scenario, action, arg))
    return replies, reward, turns


# --- parsing ------------------------------------------------------------------


def test_parse_every_action_and_garbage(env):
    texts = [
        "ask id" + END,
        "lookup 1234" + END,
        "refund 0042" + END,
        "deny 9999" + END,
        "ask id",  # no end-of-turn token: truncated
        "ask" + END,
        "ask id " + END,
        "ASK ID" + END,
        "lookup 12a4" + END,
        "lookup 123" + END,
        "lookup 12345" + END,
        "refund  1234" + END,
        "refund 1234" + END + "x",
        "deny" + END,
        END,
        "",
        "\x00\xff" + END,
        "lookup 1234<eos>",
        "hello world",
    ]
    tokens, mask = encode_turns(env, texts)
    action, arg = jax.jit(env.parse)(tokens, mask)
    for i, text in enumerate(texts):
        ids = TOK.encode(text)[: env.turn_tokens]
        # The reference reads the turn the way the env does: up to its first stop.
        decoded = TOK.decode(ids)
        cut = min(
            (decoded.index(s) for s in (END, "<eos>") if s in decoded),
            default=None,
        )
        ref_text = decoded if cut is None else decoded[:cut] + END
        want_action, want_arg = ref_parse(ref_text)
        assert ACTIONS[int(action[i])] == want_action, text
        assert (int(arg[i]) if arg[i] >= 0 else None) == want_arg, text


def test_parse_random_bytes_never_crash(env):
    rng = np.random.default_rng(0)
    alphabet = list("askidlookuprefunddeny 0123456789") + [END, "x"]
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 10))) for _ in range(200)]
    texts += [f"lookup {rng.integers(0, 10000):04d}{END}" for _ in range(20)]
    tokens, mask = encode_turns(env, texts)
    action, arg = jax.jit(env.parse)(tokens, mask)
    for i, text in enumerate(texts):
        decoded = TOK.decode(TOK.encode(text)[: env.turn_tokens])
        ref_text = (
            decoded[: decoded.index(END) + len(END)] if END in decoded else decoded
        )
        want_action, want_arg = ref_parse(ref_text)
        assert ACTIONS[int(action[i])] == want_action, text
        assert (int(arg[i]) if arg[i] >= 0 else None) == want_arg, text


# --- transitions and the success rule -----------------------------------------------


def test_transitions_match_python_reference(env):
    rng = np.random.default_rng(1)
    b = 96
    sc = env.sample_scenarios(jax.random.key(0), b)
    order = np.asarray(sc.order)
    ids = env.order_ids[order]
    other = env.order_ids[(order + 1) % len(env.order_ids)]

    def random_turn(i):
        choice = rng.integers(0, 9)
        uid = f"{ids[i]:04d}"
        return [
            "ask id" + END,
            f"lookup {uid}{END}",
            f"lookup {other[i]:04d}{END}",
            f"lookup {rng.integers(0, 10000):04d}{END}",
            f"refund {uid}{END}",
            f"deny {uid}{END}",
            f"refund {other[i]:04d}{END}",
            "garbage" + END,
            "lookup " + uid,  # truncated
        ][choice]

    def scripted(i):  # mostly the expert, sometimes a wrong final action
        right = env.correct_action(np.asarray(order[i]))
        act = (
            right if rng.random() < 0.7 else ("deny" if right == "refund" else "refund")
        )
        return [
            "ask id" + END,
            f"lookup {ids[i]:04d}{END}",
            f"{act} {ids[i]:04d}{END}",
            "x",
        ]

    texts = [
        scripted(i) if i % 3 == 0 else [random_turn(i) for _ in range(env.max_turns)]
        for i in range(b)
    ]

    @jax.jit
    def play(sc, all_tokens, all_mask):
        state = env.reset(sc)
        out = []
        for t in range(env.max_turns):
            state, rt, rm, info = env.step(state, all_tokens[t], all_mask[t])
            out.append((rt, rm, info.reward))
        return state, out

    per_turn = [
        encode_turns(env, [texts[i][t] for i in range(b)]) for t in range(env.max_turns)
    ]
    state, out = play(
        sc, jnp.stack([p[0] for p in per_turn]), jnp.stack([p[1] for p in per_turn])
    )
    successes = 0
    for i in range(b):
        scenario = {"order": order[i], "id": int(ids[i]), "style": int(sc.style[i])}
        replies, reward, turns = ref_episode(env, scenario, texts[i])
        got_reward = sum(float(o[2][i]) for o in out)
        assert got_reward == reward, (texts[i], replies)
        assert bool(state.success[i]) == (reward == 1.0)
        assert int(state.turn[i]) == turns
        for t, want in enumerate(replies):
            rt, rm = np.asarray(out[t][0][i]), np.asarray(out[t][1][i])
            got = TOK.decode(rt[rm > 0].tolist()) if rm.sum() else None
            assert got == want, (i, t, texts[i][t])
        successes += reward
    assert 0 < successes < b  # both outcomes exercised


def test_expert_succeeds_and_layout_matches_tokenize_trajectory(env):
    sc = env.sample_scenarios(jax.random.key(5), 16, held_out=True)
    conv = jax.jit(lambda s: expert_conversations(env, s))(sc)
    assert np.all(np.asarray(conv.success))
    assert np.all(np.asarray(conv.num_turns) == 3)
    trajectories = to_trajectories(env, conv)
    for i, tr in enumerate(trajectories):
        assert tr.final_reward == 1.0
        assert [t.metadata.get("action") for t in tr.assistant_turns()] == [
            "ask",
            "lookup",
            tr.metadata["correct_action"],
        ]
        tokens, _, loss = tokenize_trajectory(tr, TOK)
        m = np.asarray(conv.mask[i]) > 0
        pm = np.asarray(conv.prompt_mask[i]) > 0
        ours = np.concatenate(
            [np.asarray(conv.prompt_tokens[i])[pm], np.asarray(conv.tokens[i])[m]]
        )
        our_loss = np.concatenate(
            [np.zeros(pm.sum(), np.int32), np.asarray(conv.loss_mask[i])[m]]
        )
        # tokenize_trajectory ends with the last turn's "\n"; the conversation
        # ends at the agent's final <|im_end|>.
        np.testing.assert_array_equal(ours, tokens[: len(ours)])
        np.testing.assert_array_equal(our_loss, loss[: len(ours)])
        assert len(tokens) == len(ours) + 1
        # loss mask only on agent tokens, never on padding
        assert np.all(np.asarray(conv.loss_mask[i]) <= np.asarray(conv.mask[i]))


def test_held_out_orders_and_users_are_disjoint(env):
    train = env.sample_scenarios(jax.random.key(1), 512, held_out=False)
    held = env.sample_scenarios(jax.random.key(2), 512, held_out=True)
    assert set(np.asarray(train.order)) <= set(env.split_orders["train"])
    assert set(np.asarray(held.order)) <= set(env.split_orders["held_out"])
    assert not set(env.split_orders["train"]) & set(env.split_orders["held_out"])
    for factor, names in (
        ("persona", env.personas),
        ("topic", env.topics),
        ("style", env.styles),
    ):
        tr = {names[i] for i in np.asarray(getattr(train, factor))}
        ho = {names[i] for i in np.asarray(getattr(held, factor))}
        assert tr <= set(env.users["train"].options(factor))
        assert ho <= set(env.users["held_out"].options(factor))
        assert not tr & ho


# --- the randomizer --------------------------------------------------------------


def test_randomizer_strength_and_split():
    r = DomainRandomizer(strength=0.0)
    assert {r.sample(s).indices for s in range(50)} == {(0, 0, 0)}
    r = DomainRandomizer(strength={"style": 1.0, "persona": 0.0, "topic": 0.5})
    draws = [r.sample(s) for s in range(300)]
    assert all(d.indices[0] == 0 and d.indices[2] != 0 for d in draws)
    freq = np.mean([d.indices[1] == 0 for d in draws])
    assert 0.4 < freq < 0.6
    np.testing.assert_allclose(r.option_probabilities("topic").sum(), 1.0)
    train, held = r.split(0.25, seed=4)
    for f in ("persona", "topic", "style"):
        assert not set(train.options(f)) & set(held.options(f))
        assert set(train.options(f)) | set(held.options(f)) == set(r.options(f))
        assert train.options(f)[0] == r.options(f)[0]
    assert r.split(0.25, seed=4) == (train, held)
    one = DomainRandomizer(persona=("a",), topic=("t", "u"), style=("{order_id}", "x"))
    a, b = one.split(0.5)
    assert a.persona == b.persona == ("a",)
    assert a.sample(np.random.default_rng(0)).persona == "a"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(persona=()), "at least one option"),
        (dict(topic="abc"), "list of strings"),
        (dict(style=("a", "a")), "duplicate"),
        (dict(style=("a", 3)), r"style\[1\]"),
        (dict(strength=1.5), r"\[0, 1\]"),
        (dict(strength={"mood": 0.1}), "unknown factors"),
    ],
)
def test_randomizer_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DomainRandomizer(**kwargs)


def test_randomizer_bad_split_and_seed():
    r = DomainRandomizer()
    with pytest.raises(ValueError, match="held_out_fraction"):
        r.split(1.0)
    with pytest.raises(ValueError, match="seed"):
        r.sample("zero")


# --- bad env config ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_orders=1), "num_orders"),
        (dict(num_orders=20000), "num_orders"),
        (dict(max_turns=0), "max_turns"),
        (dict(turn_tokens=8), "turn_tokens"),
        (dict(held_out_orders=1.5), "held_out_orders"),
        (dict(delivered_fraction=-0.1), "delivered_fraction"),
        (
            dict(randomizer=DomainRandomizer(style=("no id here", "{order_id}"))),
            "order_id",
        ),
        (dict(randomizer="users"), "DomainRandomizer"),
    ],
)
def test_env_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        customer_service_env(TOK, **kwargs)


def test_env_rejects_tokenizer_without_chat_markers_and_small_models(env):
    bare = lm.ByteTokenizer(special_tokens=("<pad>",), bos_token=None, eos_token=None)
    with pytest.raises(ValueError, match="chat marker"):
        customer_service_env(bare)
    small = lm.LMConfig(
        vocab_size=256,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=8,
        max_position_embeddings=512,
    )
    with pytest.raises(ValueError, match="vocab_size"):
        env.check_model(small)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        env.check_model(
            small.replace(vocab_size=TOK.vocab_size, max_position_embeddings=64)
        )
