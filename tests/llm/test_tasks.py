import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convergence_jax import llm
from convergence_jax.llm import tasks
from convergence_jax.lm import ByteTokenizer, HFTokenizer, pad_batch

TOK = ByteTokenizer()
EOS = TOK.eos_id


def make_tasks():
    return {
        "addition": tasks.addition(3, TOK),
        "sorting": tasks.sorting(5, TOK),
        "copy": tasks.copy(4, TOK),
        "reverse": tasks.reverse(4, TOK),
        "countdown": tasks.countdown(4, TOK, max_value=12),
    }


TASKS = make_tasks()


def completions(texts, length=None, tokenizer=TOK):
    """Right-padded completion ids and mask from texts (special tokens allowed)."""
    ids = [tokenizer.encode(t) for t in texts]
    return pad_batch(ids, tokenizer.pad_id, length, side="right")


def answer_batch(answers, tokenizer=TOK):
    """A TaskBatch holding only the reference answers (what the scorers read)."""
    ids = [[t for c in a for t in tokenizer.encode(c)] + [tokenizer.eos_id]
           for a in answers]  # fmt: skip
    tokens, mask = pad_batch(ids, tokenizer.pad_id, side="right")
    empty = jnp.zeros((len(answers), 1), jnp.int32)
    return tasks.TaskBatch(empty, empty, tokens, mask, None)


def test_exported():
    for name in ("Task", "TaskBatch", "addition", "countdown", "reasoning_gym_task"):
        assert name in llm.__all__
    assert set(tasks.TASKS) == {"addition", "sorting", "copy", "reverse", "countdown"}


@pytest.mark.parametrize("name", list(TASKS))
def test_reference_answer_scores_one_and_shapes(name):
    task = TASKS[name]
    batch = jax.jit(task.sample, static_argnums=1)(jax.random.key(1), 6)
    assert batch.prompt_tokens.shape == (6, task.prompt_length)
    assert batch.answer_tokens.shape == (6, task.answer_length)
    # left-padded prompts ending in a real token; answers end with the stop token
    mask = np.asarray(batch.prompt_mask)
    assert (mask[:, -1] == 1).all() and (np.diff(mask, axis=1) >= 0).all()
    answer_mask = np.asarray(batch.answer_mask)
    last = answer_mask.sum(1) - 1
    assert (np.asarray(batch.answer_tokens)[np.arange(6), last] == EOS).all()
    reward = task.reward if task.host_only else jax.jit(task.reward)
    exact = task.exact_match if task.host_only else jax.jit(task.exact_match)
    r = reward(batch.answer_tokens, batch.answer_mask, batch)
    np.testing.assert_array_equal(np.asarray(r), np.ones(6))
    np.testing.assert_array_equal(
        np.asarray(exact(batch.answer_tokens, batch.answer_mask, batch)), np.ones(6)
    )
    # [B, G, N]: group 0 is the answer, group 1 the answer of another row
    other = jnp.roll(batch.answer_tokens, 1, axis=0)
    other_mask = jnp.roll(batch.answer_mask, 1, axis=0)
    grouped = jnp.stack([batch.answer_tokens, other], axis=1)
    grouped_mask = jnp.stack([batch.answer_mask, other_mask], axis=1)
    r = np.asarray(reward(grouped, grouped_mask, batch))
    assert r.shape == (6, 2)
    np.testing.assert_array_equal(r[:, 0], 1.0)
    texts = task.to_text(batch.answer_tokens, batch.answer_mask)
    differs = np.asarray([texts[i] != texts[i - 1] for i in range(6)])
    assert (r[differs, 1] < 1).all()
    # a wrong answer scores below one
    wrong, wrong_mask = completions(["x<eos>"] * 6)
    assert (np.asarray(reward(wrong, wrong_mask, batch)) < 1).all()


def test_addition_problems_are_correct_and_decode():
    task = tasks.addition(4, TOK)
    batch = task.sample(jax.random.key(3), 64)
    prompts = task.to_text(batch.prompt_tokens, batch.prompt_mask)
    answers = task.to_text(batch.answer_tokens, batch.answer_mask)
    for prompt, answer in zip(prompts, answers, strict=True):
        assert prompt.endswith("=")
        a, b = prompt[:-1].split("+")
        assert a == str(int(a)) and b == str(int(b))  # no leading zeros
        assert 0 <= int(a) < 10**4 and int(answer) == int(a) + int(b)
        assert answer == str(int(answer))
    # digits are spread: both short and long operands appear
    lengths = {len(p.split("+")[0]) for p in prompts}
    assert 4 in lengths and len(lengths) > 1


def test_sorting_copy_reverse_are_correct():
    for key in range(2):
        batch = TASKS["sorting"].sample(jax.random.key(key), 32)
        prompts = TASKS["sorting"].to_text(batch.prompt_tokens, batch.prompt_mask)
        answers = TASKS["sorting"].to_text(batch.answer_tokens, batch.answer_mask)
        for prompt, answer in zip(prompts, answers, strict=True):
            assert prompt.startswith("sort ") and prompt.endswith("=")
            digits = prompt[5:-1].split(",")
            assert len(digits) == 5 and answer == "".join(sorted(digits))
    for kind, fn in (("copy", lambda s: s), ("reverse", lambda s: s[::-1])):
        task = TASKS[kind]
        batch = task.sample(jax.random.key(0), 16)
        prompts = task.to_text(batch.prompt_tokens, batch.prompt_mask)
        answers = task.to_text(batch.answer_tokens, batch.answer_mask)
        for prompt, answer in zip(prompts, answers, strict=True):
            text = prompt[len(kind) + 1 : -1]
            assert prompt == f"{kind} {text}=" and len(text) == 4
            assert text.isalpha() and answer == fn(text)


def test_countdown_problems_are_solvable():
    task = TASKS["countdown"]
    batch = task.sample(jax.random.key(5), 64)
    prompts = task.to_text(batch.prompt_tokens, batch.prompt_mask)
    answers = task.to_text(batch.answer_tokens, batch.answer_mask)
    numbers, target = (np.asarray(x) for x in batch.problem)
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        shown, goal = prompt[:-1].split(" make ")
        assert [int(x) for x in shown.split(",")] == numbers[i].tolist()
        assert int(goal) == target[i] > 0
        assert 1 <= numbers[i].min() and numbers[i].max() <= 12
        assert eval(answer) == target[i]  # the reference chain, + - * only
        used = sorted(
            int(x)
            for x in answer.replace("(", " ")
            .replace(")", " ")
            .replace("+", " ")
            .replace("-", " ")
            .replace("*", " ")
            .split()
        )
        assert used == sorted(numbers[i].tolist())  # every number exactly once
        assert tasks.countdown_score(answer, numbers[i], target[i]) == 1.0


def test_addition_partial_credit_by_hand():
    task = TASKS["addition"]
    batch = answer_batch(["1281"] * 8)
    texts = [
        "1281<eos>",  # exact
        "1291<eos>",  # 3 of 4 digits right from the units
        "281<eos>",  # 3 right, longer string 4
        "12810<eos>",  # shifted: nothing aligned, 0 / 5
        "12 81<eos>777",  # whitespace ignored, stop ends the answer
        "1281",  # truncated without a stop token: read as is
        "1a81<eos>",  # a character outside the alphabet is wrong
        "<eos>",  # empty
    ]
    tokens, mask = completions(texts, length=16)
    r = np.asarray(jax.jit(task.reward)(tokens, mask, batch))
    np.testing.assert_allclose(r, [1, 0.75, 0.75, 0, 1, 1, 0.75, 0])
    e = np.asarray(task.exact_match(tokens, mask, batch))
    np.testing.assert_array_equal(e, [1, 0, 0, 0, 1, 1, 0, 0])
    # the completion mask hides tokens after it
    mask2 = mask.copy()
    mask2[0, 2:] = 0  # reads "12"
    assert float(task.reward(tokens, mask2, batch)[0]) == pytest.approx(0.0)
    assert task.parse(tokens, mask2)[:2] == ["12", "1291"]


def test_positional_partial_credit_by_hand():
    task = TASKS["reverse"]
    batch = answer_batch(["dcba"] * 5)
    texts = ["dcba<eos>", "dcbb<eos>", "dc<eos>", "dcbaa<eos>", "abcd<eos>"]
    tokens, mask = completions(texts)
    r = np.asarray(task.reward(tokens, mask, batch))
    np.testing.assert_allclose(r, [1, 0.75, 0.5, 0.8, 0])
    sort = TASKS["sorting"]
    batch = answer_batch(["01123"] * 3)
    tokens, mask = completions(["01123<eos>", "0,1,1,2,3<eos>", "11230<eos>"])
    np.testing.assert_allclose(np.asarray(sort.reward(tokens, mask, batch)),
                               [1, 2 / 9, 1 / 5])  # fmt: skip


def test_countdown_score_by_hand():
    nums, target = [3, 4, 5, 6], 19
    assert tasks.countdown_score("((4*6)-5) ", nums, target) == 1.0
    assert tasks.countdown_score("3+4*6-5-3*0", nums, target) == 0  # no 0
    assert tasks.countdown_score("5*3+4", nums, target) == 1.0  # precedence
    assert tasks.countdown_score("4*5", nums, target) == pytest.approx(
        0.5 * (1 - 1 / 19)
    )
    assert tasks.countdown_score("4*4+3", nums, target) == 0.0  # 4 used twice
    assert tasks.countdown_score("19", nums, target) == 0.0  # not a given number
    assert tasks.countdown_score("(4*5)-6/6", nums, target) == 0.0  # no division
    assert tasks.countdown_score("-3+22", nums, target) == 0.0
    assert tasks.countdown_score("__import__('os')", nums, target) == 0.0
    assert tasks.countdown_score("", nums, target) == 0.0
    assert tasks.countdown_score("4*5*6", nums, target) == 0.0  # far: clipped to 0
    task = TASKS["countdown"]
    batch = task.sample(jax.random.key(0), 2)
    numbers, goal = (np.asarray(x) for x in batch.problem)
    good = task.to_text(batch.answer_tokens, batch.answer_mask)[0]
    tokens, mask = completions([good + "<eos>junk", "1+<eos>", good, "x"], 24)
    grouped = tokens.reshape(2, 2, -1)
    r = task.reward(grouped, mask.reshape(2, 2, -1), batch)
    assert r.shape == (2, 2) and r[0, 0] == 1.0 and r[0, 1] == 0.0
    assert r[1, 1] == 0.0


def test_sample_vmaps_over_keys_and_is_deterministic():
    task = TASKS["addition"]
    keys = jax.random.split(jax.random.key(0), 3)
    batches = jax.vmap(lambda k: task.sample(k, 4))(keys)
    assert batches.prompt_tokens.shape == (3, 4, task.prompt_length)
    one = task.sample(keys[1], 4)
    np.testing.assert_array_equal(batches.prompt_tokens[1], one.prompt_tokens)
    again = task.sample(keys[1], 4)
    np.testing.assert_array_equal(one.answer_tokens, again.answer_tokens)
    assert not np.array_equal(batches.prompt_tokens[0], batches.prompt_tokens[2])
    r = jax.vmap(task.reward)(batches.answer_tokens, batches.answer_mask, batches)
    np.testing.assert_array_equal(np.asarray(r), np.ones((3, 4)))


def test_sft_batch_masks_the_answer_only():
    task = TASKS["copy"]
    sft = jax.jit(task.sft_batch, static_argnums=1)(jax.random.key(2), 4)
    batch = task.sample(jax.random.key(2), 4)
    width = task.prompt_length + task.answer_length
    assert sft.tokens.shape == sft.mask.shape == sft.loss_mask.shape == (4, width)
    full = TOK.decode_batch(sft.tokens, sft.mask, skip_special_tokens=False)
    target = TOK.decode_batch(sft.tokens, sft.loss_mask, skip_special_tokens=False)
    prompts = task.to_text(batch.prompt_tokens, batch.prompt_mask)
    answers = task.to_text(batch.answer_tokens, batch.answer_mask)
    for f, t, p, a in zip(full, target, prompts, answers, strict=True):
        assert f == p + a + "<eos>" and t == a + "<eos>"
    mask = np.asarray(sft.mask)
    assert ((np.asarray(sft.loss_mask) > 0) <= (mask > 0)).all()
    # contiguous real tokens (left padding, then right padding)
    assert (np.abs(np.diff(mask, axis=1)).sum(1) <= 2).all()


def test_prefix_suffix_chat_template():
    prefix = "<|im_start|>user\n"
    suffix = "<|im_end|>\n<|im_start|>assistant\n"
    task = tasks.addition(2, TOK, prefix=prefix, suffix=suffix)
    batch = task.sample(jax.random.key(0), 3)
    text = TOK.decode_batch(batch.prompt_tokens, batch.prompt_mask)
    raw = TOK.decode_batch(
        batch.prompt_tokens, batch.prompt_mask, skip_special_tokens=False
    )
    for t, r in zip(text, raw, strict=True):
        assert r.startswith(prefix) and r.endswith(suffix)
        assert t.startswith("user\n") and "+" in t
    # im_end is a stop token of the ByteTokenizer, so it ends a completion too
    assert TOK.token_to_id("<|im_end|>") in task.stop_tokens


def hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate("0123456789+=,abc")}
    for word in ("<eos>", "<pad>", "12", "281", "sort", "copy", "reverse", "make"):
        vocab[word] = len(vocab)
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return HFTokenizer(tok, pad_token="<pad>", eos_token="<eos>")


def test_multi_character_tokens_are_read_as_their_characters():
    tok = hf_tokenizer()
    task = tasks.addition(3, tok)
    batch = answer_batch(["1281"], tokenizer=tok)
    ids = tok.tokenizer.token_to_id
    rows = [
        [ids("1"), ids("281"), tok.eos_id],
        [ids("12"), ids("8"), ids("1"), tok.eos_id],
        [ids("12"), ids("[UNK]"), ids("1"), tok.eos_id],
    ]
    tokens, mask = pad_batch(rows, tok.pad_id, side="right")
    r = np.asarray(task.reward(tokens, mask, answer_batch(["1281"] * 3, tok)))
    np.testing.assert_allclose(r, [1, 1, 0.75])  # 12?1 vs 1281
    assert batch.answer_tokens.shape == (1, 5)


def test_bad_input():
    with pytest.raises(ValueError, match="num_digits"):
        tasks.addition(0, TOK)
    with pytest.raises(ValueError, match="num_digits"):
        tasks.addition(2.5, TOK)
    with pytest.raises(ValueError, match="length"):
        tasks.sorting(0, TOK)
    with pytest.raises(ValueError, match="alphabet"):
        tasks.copy(3, TOK, alphabet="aa")
    with pytest.raises(ValueError, match="num_numbers"):
        tasks.countdown(1, TOK)
    with pytest.raises(ValueError, match="overflows"):
        tasks.countdown(6, TOK, max_value=100)
    with pytest.raises(ValueError, match="tokenizer"):
        tasks.addition(2, None)
    with pytest.raises(ValueError, match="eos"):
        tasks.addition(2, ByteTokenizer(eos_token=None))
    with pytest.raises(ValueError, match="one token"):
        tasks.copy(3, hf_tokenizer(), alphabet="xy")  # not in the vocabulary
    with pytest.raises(ValueError, match="batch_size"):
        TASKS["copy"].sample(jax.random.key(0), 0)
    batch = TASKS["copy"].sample(jax.random.key(0), 2)
    tokens, mask = completions(["ab", "cd", "ef"])
    with pytest.raises(ValueError, match="B=2"):
        TASKS["copy"].reward(tokens, mask, batch)


def test_reasoning_gym_bridge():
    pytest.importorskip("reasoning_gym")
    task = tasks.reasoning_gym_task("basic_arithmetic", size=5, seed=3)
    items = list(task.items())
    assert len(items) == 5 and all(isinstance(p, str) and p for p, _ in items)
    prompts, entries = task.batch(3, 4)  # wraps around
    assert prompts[2] == items[0][0]
    right = [e["answer"] for e in entries]
    np.testing.assert_array_equal(task.reward(right, entries), np.ones(4))
    wrong = [str(int(a) + 1) + "7" for a in right]
    assert (task.reward(wrong, entries) < 1).all()
    again = tasks.reasoning_gym_task("basic_arithmetic", size=5, seed=3)
    assert [p for p, _ in again.items()] == [p for p, _ in items]
    tokens, mask = TOK.encode_batch(prompts)
    assert TOK.decode_batch(tokens, mask) == prompts
    with pytest.raises(ValueError, match="entries"):
        task.reward(right[:2], entries)


@pytest.mark.parametrize("name", ["addition", "reverse"])
def test_reward_is_one_exactly_when_exact_on_random_completions(name):
    task = TASKS[name]
    batch = task.sample(jax.random.key(7), 32)
    # random completions: the answer with some tokens replaced by alphabet chars
    alphabet = np.asarray(TOK.encode("0123456789" if name == "addition" else "abcd"))
    rng = np.random.default_rng(0)
    tokens = np.asarray(batch.answer_tokens).copy()
    mask = np.asarray(batch.answer_mask)
    flip = (rng.random(tokens.shape) < 0.2) & (tokens != EOS) & (mask > 0)
    tokens[flip] = rng.choice(alphabet, flip.sum())
    grouped = np.stack([tokens, np.asarray(batch.answer_tokens)], axis=1)
    grouped_mask = np.stack([mask, mask], axis=1)
    r = np.asarray(task.reward(grouped, grouped_mask, batch))
    e = np.asarray(task.exact_match(grouped, grouped_mask, batch))
    assert ((0 <= r) & (r <= 1)).all()
    np.testing.assert_array_equal(r == 1, e == 1)
    assert (e[:, 1] == 1).all() and (e[:, 0] == 0).any()

    # inside lax.scan over batches (a training loop's shape)
    def body(carry, key):
        b = task.sample(key, 4)
        return carry + task.reward(b.answer_tokens, b.answer_mask, b).sum(), None

    total, _ = jax.lax.scan(body, 0.0, jax.random.split(jax.random.key(0), 3))
    assert float(total) == 12.0
