"""LMConfig: validation names the field; the Hugging Face form round-trips."""

import pytest

from convergence_jax.lm import LMConfig

TINY = dict(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
)


def test_config_is_hashable_and_frozen():
    config = LMConfig(**TINY)
    assert hash(config) == hash(LMConfig(**TINY))
    with pytest.raises(AttributeError):
        config.vocab_size = 3


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(num_kv_heads=3), "num_kv_heads"),
        (dict(head_dim=7), "head_dim"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(num_layers=1.5), "num_layers"),
        (dict(rope_type="yarn"), "rope_type"),
        (dict(dtype="int8"), "dtype"),
        (dict(model_type="gpt2"), "model_type"),
        (dict(model_type="qwen2"), "qwen2"),
        (dict(rms_norm_eps=-1.0), "rms_norm_eps"),
    ],
)
def test_bad_fields_are_named(change, field):
    with pytest.raises(ValueError, match=field):
        LMConfig(**{**TINY, **change})


@pytest.mark.parametrize(
    "config",
    [
        LMConfig(**TINY),
        LMConfig(**TINY, tie_word_embeddings=True, eos_token_id=(3, 4), bos_token_id=1),
        LMConfig(**TINY, model_type="qwen2", attention_bias=True, rope_theta=1e6),
        LMConfig(
            **TINY,
            rope_type="llama3",
            rope_factor=8.0,
            rope_low_freq_factor=1.0,
            rope_high_freq_factor=4.0,
            rope_original_max_position_embeddings=64,
        ),
        LMConfig(**TINY, rope_type="linear", rope_factor=2.0, dtype="bfloat16"),
    ],
)
def test_hf_config_round_trip(config):
    assert LMConfig.from_hf_config(config.to_hf_config()) == config.replace(
        param_dtype=config.param_dtype, dtype=config.param_dtype
    )


def test_old_style_hf_config_with_top_level_rope_theta():
    hf = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 300,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "torch_dtype": "bfloat16",
    }
    config = LMConfig.from_hf_config(hf)
    assert config.head_dim == 8 and config.rope_theta == 500000.0
    assert config.rope_type == "llama3" and config.rope_factor == 32.0
    assert config.param_dtype == "bfloat16"
    assert LMConfig.from_hf_config(hf, dtype="float32").dtype == "float32"


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(model_type="gpt2", architectures=["GPT2LMHeadModel"]), "model_type"),
        (dict(architectures=["LlamaForSequenceClassification"]), "architectures"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(rope_parameters={"rope_type": "yarn", "factor": 2.0}), "rope_type"),
        (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
        (dict(use_sliding_window=True), "use_sliding_window"),
        (dict(num_key_value_heads=3), "num_kv_heads"),
    ],
)
def test_unsupported_hf_configs_are_rejected(change, named):
    hf = {**LMConfig(**TINY).to_hf_config(), **change}
    with pytest.raises(ValueError, match=named):
        LMConfig.from_hf_config(hf)
