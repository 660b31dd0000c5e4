import json
import math

import numpy as np
import pytest

from convergence_jax import agents, lm
from convergence_jax.agents import MultiTurnTrajectory, Turn

MESSAGES = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "Where is my order?"},
    {"role": "assistant", "content": "Your order id, please?"},
    {"role": "user", "content": "1234"},
    {"role": "assistant", "content": '{"tool": "lookup", "order_id": 1234}'},
    {"role": "tool", "content": "shipped", "name": "lookup", "tool_call_id": "c1"},
    {"role": "assistant", "content": "It shipped — ça arrive demain."},
]


def make(**kwargs):
    turns = [Turn(**m) for m in MESSAGES]
    turns[2] = Turn(**MESSAGES[2], reward=0.5, metadata={"step": 1})
    defaults = dict(scenario_id="s1", final_reward=1.0, metadata={"seed": 3})
    return MultiTurnTrajectory(turns=turns, **{**defaults, **kwargs})


def masked_runs(tokens, mask):
    """The contiguous runs of ``tokens`` where ``mask`` is 1."""
    runs, current = [], []
    for t, m in zip(tokens.tolist(), mask.tolist(), strict=True):
        if m:
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def test_trajectory_fields_and_messages():
    t = make()
    assert t.turn_rewards == [None, None, 0.5, None, None, None, None]
    assert t.total_reward == 1.5
    assert make(final_reward=None).total_reward == 0.5
    assert t.messages() == MESSAGES
    assert [turn.content for turn in t.assistant_turns()] == [
        MESSAGES[i]["content"] for i in (2, 4, 6)
    ]
    assert isinstance(t.turns, tuple)


@pytest.mark.parametrize(
    "tokenizer",
    [
        lm.ByteTokenizer(),
        lm.ByteTokenizer(
            chat_template=lm.ChatTemplate(default_system="Be brief."),
        ),
    ],
    ids=["chatml", "default_system"],
)
def test_loss_mask_is_exactly_the_assistant_tokens(tokenizer):
    t = make()
    tokens, attention, loss = agents.tokenize_trajectory(t, tokenizer)
    assert tokens.dtype == attention.dtype == loss.dtype == np.int32
    assert tokens.shape == attention.shape == loss.shape
    assert attention.tolist() == [1] * len(tokens)
    # same ids as the chat template renders the whole conversation
    plain = [{"role": m["role"], "content": m["content"]} for m in MESSAGES]
    assert tokens.tolist() == tokenizer.apply_chat_template(
        plain, add_generation_prompt=False
    )
    runs = masked_runs(tokens, loss)
    end = tokenizer.chat_template.end
    want = [m["content"] + end for m in MESSAGES if m["role"] == "assistant"]
    assert [tokenizer.decode(r) for r in runs] == want
    # nothing else is trained on: the unmasked text is everything but those runs
    rest = tokenizer.decode(tokens[loss == 0].tolist())
    assert "support agent" in rest and "Where is my order?" in rest
    assert "shipped" in rest and "It shipped" not in rest
    assert rest.count("<|im_start|>assistant\n") == 3


def test_default_system_is_not_trained():
    tokenizer = lm.ByteTokenizer(chat_template=lm.ChatTemplate(default_system="Hi."))
    t = MultiTurnTrajectory.from_messages(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    )
    tokens, _, loss = agents.tokenize_trajectory(t, tokenizer)
    assert tokenizer.decode(tokens.tolist()).startswith("<|im_start|>system\nHi.")
    assert [tokenizer.decode(r) for r in masked_runs(tokens, loss)] == ["b<|im_end|>"]


def test_message_lists_are_accepted():
    tokenizer = lm.ByteTokenizer()
    a = agents.tokenize_trajectory(MESSAGES, tokenizer)
    b = agents.tokenize_trajectory(make(), tokenizer)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_padding(side):
    tokenizer = lm.ByteTokenizer()
    short = MultiTurnTrajectory.from_messages(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    )
    long = make()
    singles = [agents.tokenize_trajectory(t, tokenizer) for t in (short, long)]
    batch = agents.tokenize_trajectories([short, long], tokenizer, side=side)
    length = len(singles[1][0])
    assert batch.tokens.shape == batch.attention_mask.shape == (2, length)
    n = len(singles[0][0])
    pad = length - n
    cols = slice(0, n) if side == "right" else slice(pad, length)
    pads = slice(n, length) if side == "right" else slice(0, pad)
    np.testing.assert_array_equal(batch.tokens[0, cols], singles[0][0])
    np.testing.assert_array_equal(batch.loss_mask[0, cols], singles[0][2])
    assert (batch.tokens[0, pads] == tokenizer.pad_id).all()
    assert (batch.attention_mask[0, pads] == 0).all()
    assert (batch.loss_mask[0, pads] == 0).all()
    assert batch.attention_mask[0].sum() == n
    np.testing.assert_array_equal(batch.tokens[1], singles[1][0])
    np.testing.assert_array_equal(batch.loss_mask[1], singles[1][2])
    # pad to a fixed length, as a compiled program wants
    fixed = agents.tokenize_trajectories([short], tokenizer, max_length=n + 5)
    assert fixed.tokens.shape == (1, n + 5)


def test_too_long_raises_never_cuts():
    tokenizer = lm.ByteTokenizer()
    n = len(agents.tokenize_trajectory(make(), tokenizer)[0])
    assert len(agents.tokenize_trajectory(make(), tokenizer, max_length=n)[0]) == n
    with pytest.raises(ValueError, match=rf"{n} tokens, more than max_length={n - 1}"):
        agents.tokenize_trajectory(make(), tokenizer, max_length=n - 1)
    with pytest.raises(ValueError, match=r"trajectories\[1\].*max_length"):
        agents.tokenize_trajectories(
            [MESSAGES[:3], make()], tokenizer, max_length=n - 1
        )


def test_missing_chat_markers_raise():
    tokenizer = lm.ByteTokenizer(special_tokens=("<pad>", "<bos>", "<eos>"))
    with pytest.raises(ValueError, match="not a token of this tokenizer"):
        agents.tokenize_trajectory(make(), tokenizer)


@pytest.mark.parametrize(
    "turns, match",
    [
        ([], "turns is empty"),
        ([{"role": "robot", "content": "x"}], r"turns\[0\].*role must be one of"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": 3}],
            r"turns\[1\].*content must be a string",
        ),
        ([{"role": "user"}], r"turns\[0\].*missing key 'content'"),
        ([{"role": "user", "content": "a", "extra": 1}], r"turns\[0\].*unknown keys"),
        ([{"role": "user", "content": "a", "reward": "high"}], r"turns\[0\].*reward"),
        (["hello"], r"turns\[0\].*must be a dict"),
        ("hello", "turns must be a list"),
    ],
)
def test_malformed_turns_raise(turns, match):
    with pytest.raises(ValueError, match=match):
        MultiTurnTrajectory(turns=turns)


def test_malformed_fields_raise():
    with pytest.raises(ValueError, match="role must be one of"):
        Turn("bot", "x")
    with pytest.raises(ValueError, match="final_reward"):
        MultiTurnTrajectory(turns=MESSAGES[:2], final_reward="1")
    with pytest.raises(ValueError, match="scenario_id"):
        MultiTurnTrajectory(turns=MESSAGES[:2], scenario_id=3)
    with pytest.raises(ValueError, match="metadata must be a dict"):
        MultiTurnTrajectory(turns=MESSAGES[:2], metadata=[1])
    with pytest.raises(ValueError, match=r"expected a MultiTurnTrajectory"):
        agents.tokenize_trajectory("hello", lm.ByteTokenizer())
    with pytest.raises(ValueError, match="non-empty list"):
        agents.tokenize_trajectories([], lm.ByteTokenizer())


def test_jsonl_round_trip_is_exact(tmp_path):
    trajectories = [
        make(),
        make(scenario_id=None, final_reward=None, metadata={}),
        MultiTurnTrajectory(
            turns=[Turn("user", "x" * 3, reward=1 / 3, metadata={"nested": [1, {}]})],
            final_reward=-0.1 + 0.2,
        ),
    ]
    path = tmp_path / "t.jsonl"
    assert agents.save_jsonl(path, trajectories) == 3
    assert len(path.read_text().splitlines()) == 3
    back = agents.load_jsonl(path)
    assert back == trajectories
    assert back[2].turns[0].reward == 1 / 3
    assert back[2].final_reward == -0.1 + 0.2
    # write-read-write gives the same bytes
    again = tmp_path / "again.jsonl"
    agents.save_jsonl(again, back)
    assert again.read_bytes() == path.read_bytes()


def test_jsonl_corrupt_line_names_its_number(tmp_path):
    path = tmp_path / "t.jsonl"
    agents.save_jsonl(path, [make(), make()])
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n\n" + lines[1][:-5] + "\n")
    with pytest.raises(ValueError, match=r"line 3"):
        agents.load_jsonl(path)
    bad = json.loads(lines[1])
    bad["turns"][1]["role"] = "robot"
    path.write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"line 2: turns\[1\]: role must be one of"):
        agents.load_jsonl(path)


def test_save_jsonl_rejects_non_json_metadata(tmp_path):
    t = make(metadata={"x": object()})
    with pytest.raises(ValueError, match=r"trajectories\[0\] is not JSON"):
        agents.save_jsonl(tmp_path / "t.jsonl", [t])
    with pytest.raises(ValueError, match=r"trajectories\[0\] is a dict"):
        agents.save_jsonl(tmp_path / "t.jsonl", [{"turns": []}])


def test_nan_reward_survives_jsonl(tmp_path):
    t = make(final_reward=math.nan)
    agents.save_jsonl(tmp_path / "t.jsonl", [t])
    (back,) = agents.load_jsonl(tmp_path / "t.jsonl")
    assert math.isnan(back.final_reward) and back.turns == t.turns


def test_loss_mask_with_a_hugging_face_bpe_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(["where is my order? your order id, please"] * 20, trainer)
    tokenizer = lm.HFTokenizer(bpe, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tokens, _, loss = agents.tokenize_trajectory(make(), tokenizer)
    runs = masked_runs(tokens, loss)
    want = [m["content"] + "<|im_end|>" for m in MESSAGES if m["role"] == "assistant"]
    assert [tokenizer.decode(r) for r in runs] == want
    assert tokenizer.decode(tokens.tolist()) == lm.CHATML.render(
        [{"role": m["role"], "content": m["content"]} for m in MESSAGES],
        add_generation_prompt=False,
    )
