"""The language-model layer: a Llama / Qwen2-family transformer, tokenizers,
KV-cache generation and Hugging Face checkpoints.

    from convergence_jax import lm

    config, params = lm.load_hf("path/to/Qwen2-folder")
    tokenizer = lm.HFTokenizer.from_pretrained("path/to/Qwen2-folder")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    tokens, mask = lm.pad_batch([prompt], tokenizer.pad_id)
    out = lm.generate(key, params, config, tokens, mask, max_new_tokens=32,
                      num_samples=4, temperature=0.7, stop_tokens=tokenizer.stop_tokens)

See ``docs/lm.md``.
"""

from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.generate import (
    Generation,
    completion_logprobs,
    filter_logits,
    generate,
    sample_token,
)
from convergence_jax.lm.hf import (
    HFTensor,
    hf_tensor_table,
    load_hf,
    load_hf_config,
    save_hf,
)
from convergence_jax.lm.model import (
    KVCache,
    Transformer,
    apply_rotary,
    check_params,
    forward,
    init_cache,
    init_params,
    positions_from_mask,
    rotate_half,
    token_logprobs,
)
from convergence_jax.lm.tokenizer import (
    CHATML,
    ByteTokenizer,
    ChatTemplate,
    HFTokenizer,
    pad_batch,
)

__all__ = [
    "CHATML",
    "ByteTokenizer",
    "ChatTemplate",
    "Generation",
    "HFTensor",
    "HFTokenizer",
    "KVCache",
    "LMConfig",
    "Transformer",
    "apply_rotary",
    "check_params",
    "completion_logprobs",
    "filter_logits",
    "forward",
    "generate",
    "hf_tensor_table",
    "init_cache",
    "init_params",
    "load_hf",
    "load_hf_config",
    "pad_batch",
    "positions_from_mask",
    "rotate_half",
    "sample_token",
    "save_hf",
    "token_logprobs",
]
