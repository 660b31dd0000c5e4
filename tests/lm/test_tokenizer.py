"""Tokenizers: bytes with no files, any tokenizer.json, ChatML, left padding."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from convergence_jax import lm

TEXT = "Grüße, world! 1+1=2 ✓"


def test_byte_tokenizer_round_trips_utf8_and_specials():
    tok = lm.ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8"))
    assert tok.decode(ids) == TEXT
    assert tok.vocab_size == 261 and tok.pad_id == 256
    with_specials = tok.encode("<bos>hi<|im_end|>", add_bos=False)
    assert with_specials == [257, ord("h"), ord("i"), 260]
    assert tok.encode("hi", add_bos=True) == [257, ord("h"), ord("i")]
    assert tok.decode(with_specials) == "<bos>hi<|im_end|>"
    assert tok.decode(with_specials, skip_special_tokens=True) == "hi"
    # a completion cut inside a character still decodes
    assert tok.decode(list("é".encode())[:1]) == "\ufffd"
    assert tok.stop_tokens == (258, 260)
    with pytest.raises(ValueError, match="outside"):
        tok.decode([999])
    with pytest.raises(ValueError, match="eos_token"):
        lm.ByteTokenizer(special_tokens=("<pad>",), bos_token=None, eos_token="</s>")


def test_pad_batch_left_and_right():
    tokens, mask = lm.pad_batch([[1, 2], [3, 4, 5], []], pad_id=9)
    np.testing.assert_array_equal(tokens, [[9, 1, 2], [3, 4, 5], [9, 9, 9]])
    np.testing.assert_array_equal(mask, [[0, 1, 1], [1, 1, 1], [0, 0, 0]])
    tokens, mask = lm.pad_batch([[1, 2]], pad_id=0, length=4, side="right")
    np.testing.assert_array_equal(tokens, [[1, 2, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 0, 0]])
    with pytest.raises(ValueError, match="length=2"):
        lm.pad_batch([[1, 2, 3]], pad_id=0, length=2)


def test_chat_template_is_chatml():
    tok = lm.ByteTokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok.apply_chat_template(messages)
    assert ids.count(259) == 3 and ids.count(260) == 2
    assert tok.decode(ids) == text
    no_prompt = tok.apply_chat_template(messages[1:], add_generation_prompt=False)
    assert tok.decode(no_prompt) == "<|im_start|>user\nHi<|im_end|>\n"
    qwen = lm.ChatTemplate(default_system="You are a helpful assistant.")
    assert qwen.render(messages[1:]).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    )
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        tok.apply_chat_template([{"role": "user"}])
    with pytest.raises(ValueError, match="marker '<|im_start|>'"):
        lm.ByteTokenizer(
            special_tokens=("<pad>", "<bos>", "<eos>")
        ).apply_chat_template(messages)


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    """A byte-level BPE trained in-process and saved as tokenizer.json."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(
        ["the quick brown fox jumps over the lazy dog"] * 50, trainer
    )
    folder = tmp_path_factory.mktemp("tok")
    bpe.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        '{"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}'
    )
    return folder


def test_hf_tokenizer_from_tokenizer_json(tokenizer_json):
    tok = lm.HFTokenizer.from_file(
        tokenizer_json / "tokenizer.json", eos_token="<|endoftext|>"
    )
    # 256 byte symbols + 3 specials + the merges learned from the corpus
    assert 259 < tok.vocab_size == tok.tokenizer.get_vocab_size(with_added_tokens=True)
    assert tok.pad_id == tok.eos_id == 0  # no pad token: eos pads
    ids = tok.encode("the quick brown fox")
    assert len(ids) < len("the quick brown fox")  # merges were learned
    assert tok.decode(ids) == "the quick brown fox"
    assert tok.decode(tok.encode(TEXT)) == TEXT  # byte-level: any text
    chat = tok.apply_chat_template([{"role": "user", "content": "the fox"}])
    assert chat[0] == 1 and chat.count(2) == 1
    assert tok.decode(chat, skip_special_tokens=True) == "user\nthe fox\nassistant\n"
    tokens, mask = tok.encode_batch(["the dog", "the quick brown fox jumps"])
    assert tokens.shape == mask.shape and mask[0, 0] == 0 and mask[:, -1].all()
    assert tokens[0, 0] == tok.pad_id
    assert tok.decode_batch(tokens, mask) == ["the dog", "the quick brown fox jumps"]


def test_hf_tokenizer_from_pretrained_reads_tokenizer_config(tokenizer_json):
    tok = lm.HFTokenizer.from_pretrained(tokenizer_json)
    assert (tok.eos_id, tok.pad_id) == (2, 0)
    assert tok.stop_tokens == (2,)
    with pytest.raises(ValueError, match="bos_token '<s>'"):
        lm.HFTokenizer.from_pretrained(tokenizer_json, bos_token="<s>")


def test_tokenizer_vocabulary_must_fit_the_model(tokenizer_json):
    config = lm.LMConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
    )
    tok = lm.HFTokenizer.from_pretrained(tokenizer_json)
    with pytest.raises(ValueError, match="vocabulary.*LMConfig.vocab_size is 256"):
        tok.check_model(config)
    bytes_only = lm.ByteTokenizer((), pad_token=None, bos_token=None, eos_token=None)
    bytes_only.check_model(config)  # 256 ids fit
    assert bytes_only.pad_id == 0 and bytes_only.stop_tokens == ()
    tok.check_model(config.replace(vocab_size=320))  # larger tables are fine
