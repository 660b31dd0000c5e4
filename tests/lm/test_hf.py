"""Hugging Face checkpoints: logits match transformers; saving round-trips.

Tiny randomly initialized ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` models are
built with transformers (torch CPU, from the dev extra) and saved to a temporary
folder; nothing is downloaded.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from convergence_jax import lm

SHAPE = dict(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
MODELS = {
    # GQA, untied head
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    # q/k/v biases, tied embeddings, Qwen2's rope_theta
    "qwen2": (
        transformers.Qwen2Config,
        transformers.Qwen2ForCausalLM,
        dict(
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        ),
    ),
    # attention and MLP biases, Llama 3.1 rotary scaling (the low / medium / high
    # frequency bands all occur at head_dim 16 with an original context of 64)
    "llama3-bias": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(
            num_attention_heads=2,
            num_key_value_heads=1,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
}


def build(name, folder, seed=0):
    config_cls, model_cls, extra = MODELS[name]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**SHAPE, **extra})).eval()
    with torch.no_grad():  # every tensor random, biases and norms included
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    return model


def hf_logits(model, tokens, mask=None):
    tokens = torch.tensor(np.asarray(tokens), dtype=torch.long)
    kwargs = {}
    if mask is not None:
        mask = torch.tensor(np.asarray(mask), dtype=torch.long)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = dict(attention_mask=mask, position_ids=positions)
    with torch.no_grad():
        return model(tokens, **kwargs).logits.float().numpy()


@pytest.fixture(scope="module", params=list(MODELS))
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model = build(request.param, folder)
    return request.param, folder, model


TOKENS = np.random.default_rng(0).integers(0, 300, (2, 40))


def test_logits_match_transformers(checkpoint):
    name, folder, model = checkpoint
    config, params = lm.load_hf(folder)
    assert config.model_type == name.split("-")[0].replace("llama3", "llama")
    ours, _ = lm.forward(params, config, TOKENS)
    diff = np.abs(np.asarray(ours) - hf_logits(model, TOKENS)).max()
    print(f"{name}: max |logit difference| = {diff:.2e}")
    assert diff < 1e-4


def test_left_padded_logits_match_transformers(checkpoint):
    name, folder, model = checkpoint
    config, params = lm.load_hf(folder)
    rows = [TOKENS[0, :25].tolist(), TOKENS[1].tolist()]
    tokens, mask = lm.pad_batch(rows, pad_id=0)
    ours, _ = lm.forward(params, config, tokens, mask)
    theirs = hf_logits(model, tokens, mask)
    valid = mask[..., None] > 0
    assert np.abs(np.where(valid, np.asarray(ours) - theirs, 0)).max() < 1e-4


def test_saved_checkpoint_loads_in_transformers(checkpoint, tmp_path):
    name, folder, model = checkpoint
    config, params = lm.load_hf(folder)
    lm.save_hf(tmp_path, config, params)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == [type(model).__name__]
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert reloaded.config.tie_word_embeddings == config.tie_word_embeddings
    np.testing.assert_array_equal(hf_logits(reloaded, TOKENS), hf_logits(model, TOKENS))
    # and back: our loader reads what we wrote, bit for bit
    config2, params2 = lm.load_hf(tmp_path)
    assert config2 == config
    lm.check_params(config2, params2)
    ours, _ = lm.forward(params2, config2, TOKENS)
    reference, _ = lm.forward(params, config, TOKENS)
    np.testing.assert_array_equal(ours, reference)


def test_sharded_checkpoint(tmp_path):
    model = build("llama", tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    config, params = lm.load_hf(tmp_path / "sharded")
    ours, _ = lm.forward(params, config, TOKENS)
    assert np.abs(np.asarray(ours) - hf_logits(model, TOKENS)).max() < 1e-4


def test_bfloat16_checkpoint(tmp_path):
    model = build("qwen2", tmp_path / "f32").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    config, params = lm.load_hf(tmp_path / "bf16")
    assert config.param_dtype == "bfloat16" and config.dtype == "bfloat16"
    assert params["embed"]["embedding"].dtype == jnp.bfloat16
    # computed in float32 from the same bf16 weights, it matches transformers in fp32
    config32, params32 = lm.load_hf(
        tmp_path / "bf16", dtype="float32", param_dtype="float32"
    )
    ours, _ = lm.forward(params32, config32, TOKENS)
    reference = hf_logits(model.float(), TOKENS)
    assert np.abs(np.asarray(ours) - reference).max() < 1e-4
    # in bf16 it stays close to that
    half, _ = lm.forward(params, config, TOKENS)
    assert np.abs(np.asarray(half) - reference).max() < 0.2
    lm.save_hf(tmp_path / "ours", config, params)
    assert type(model).from_pretrained(tmp_path / "ours").dtype == torch.bfloat16


def test_unsupported_architecture_is_named(tmp_path):
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_layer=1,
            n_embd=16,
            n_head=2,
            vocab_size=50,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    gpt2.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type='gpt2'.*GPT2LMHeadModel"):
        lm.load_hf(tmp_path)


def test_bad_checkpoints_are_named_before_compiling(tmp_path):
    build("qwen2", tmp_path / "good")

    def edited(name, **changes):
        folder = tmp_path / name
        shutil.copytree(tmp_path / "good", folder)
        hf = json.loads((folder / "config.json").read_text())
        hf.update(changes)
        (folder / "config.json").write_text(json.dumps(hf))
        return folder

    with pytest.raises(ValueError, match="model.embed_tokens.weight.*vocab_size=512"):
        lm.load_hf(edited("vocab", vocab_size=512))
    with pytest.raises(ValueError, match="intermediate_size"):
        lm.load_hf(edited("width", intermediate_size=48))
    with pytest.raises(ValueError, match="lacks .*lm_head.weight"):
        lm.load_hf(edited("untied", tie_word_embeddings=False))
    with pytest.raises(ValueError, match="does not use.*layers.1"):
        lm.load_hf(edited("depth", num_hidden_layers=1))
    with pytest.raises(FileNotFoundError, match="config.json"):
        lm.load_hf(tmp_path / "nowhere")
    config, params = lm.load_hf(tmp_path / "good")
    params["layers"]["attn"]["q_proj"]["kernel"] = params["layers"]["attn"]["q_proj"][
        "kernel"
    ][:, :, :16]
    with pytest.raises(ValueError, match="q_proj/kernel has shape"):
        lm.save_hf(tmp_path / "out", config, params)


def test_greedy_generation_matches_transformers_generate(tmp_path):
    model = build("qwen2", tmp_path)
    config, params = lm.load_hf(tmp_path)
    tokens, mask = lm.pad_batch([TOKENS[0, :5].tolist(), TOKENS[1, :9].tolist()], 0)
    with torch.no_grad():
        theirs = model.generate(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )[:, tokens.shape[1] :].numpy()
    ours = lm.generate(
        jax.random.key(0),
        params,
        config,
        tokens,
        mask,
        max_new_tokens=10,
        temperature=0,
    )
    np.testing.assert_array_equal(ours.tokens[:, 0], theirs)


@pytest.mark.parametrize("top_k, top_p", [(0, 0.3), (0, 0.9), (7, 1.0), (20, 0.5)])
def test_filters_match_transformers_warpers(top_k, top_p):
    from transformers.generation.logits_process import (
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = np.random.default_rng(top_k).normal(size=(6, 300)).astype(np.float32) * 3
    reference = torch.tensor(logits)
    if top_k:
        reference = TopKLogitsWarper(top_k)(None, reference)
    if top_p < 1:
        reference = TopPLogitsWarper(top_p)(None, reference)
    ours = np.asarray(lm.filter_logits(jnp.asarray(logits), top_k, top_p))
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(reference.numpy()))
