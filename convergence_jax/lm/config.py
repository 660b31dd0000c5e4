"""`LMConfig`: the shape of a Llama / Qwen2-family decoder, and its Hugging Face form.

The config is a frozen, hashable dataclass so that it can be a static argument of
`jax.jit`. `LMConfig.from_hf_config` reads the ``config.json`` of a
``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` checkpoint (both the ``rope_parameters``
layout of transformers 5 and the older top-level ``rope_theta`` / ``rope_scaling``);
`LMConfig.to_hf_config` writes one that transformers loads back.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ROPE_TYPES = ("default", "linear", "llama3")
MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """A decoder-only transformer of the Llama / Qwen2 family.

    Pre-norm blocks ``x + attn(rms_norm(x))``, ``x + mlp(rms_norm(x))`` with rotary
    position embeddings (Hugging Face's ``rotate_half`` layout), grouped-query
    attention and a SwiGLU MLP ``down(silu(gate(x)) * up(x))``.
    """

    vocab_size: int
    """Rows of the embedding table (may exceed the tokenizer's vocabulary)."""
    hidden_size: int
    """Width of the residual stream."""
    intermediate_size: int
    """Width of the SwiGLU MLP."""
    num_layers: int
    """Number of transformer blocks."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads; ``num_heads`` must be a multiple (grouped-query attention)."""
    head_dim: int
    """Width of one head (even, for the rotary embedding)."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies."""
    rms_norm_eps: float = 1e-6
    """Epsilon of every RMSNorm."""
    max_position_embeddings: int = 2048
    """Longest sequence (prompt + completion) the model accepts."""
    tie_word_embeddings: bool = False
    """Use the embedding table as the output projection (no ``lm_head``)."""
    attention_bias: bool = False
    """Bias on the q, k, v projections (Qwen2 has it)."""
    attention_out_bias: bool = False
    """Bias on the output projection (Llama's ``attention_bias`` sets both)."""
    mlp_bias: bool = False
    """Biases in the MLP (Llama's ``mlp_bias``)."""
    rope_type: str = "default"
    """``"default"``, ``"linear"`` (positions divided by ``rope_factor``) or
    ``"llama3"`` (Llama 3.1's frequency-dependent scaling)."""
    rope_factor: float = 1.0
    """Scaling factor of the ``linear`` and ``llama3`` rotary types."""
    rope_low_freq_factor: float = 1.0
    """``llama3`` only."""
    rope_high_freq_factor: float = 4.0
    """``llama3`` only."""
    rope_original_max_position_embeddings: int = 8192
    """``llama3`` only: the pre-training context length."""
    dtype: str = "float32"
    """Compute dtype of activations: ``float32``, ``bfloat16`` or ``float16``."""
    param_dtype: str = "float32"
    """Dtype of the parameters."""
    model_type: str = "llama"
    """The Hugging Face family written by `to_hf_config`: ``llama`` or ``qwen2``."""
    bos_token_id: int | None = None
    """Carried through ``config.json``; not used by the model."""
    eos_token_id: int | tuple[int, ...] | None = None
    """Carried through ``config.json``; `eos_token_ids` lists them."""
    pad_token_id: int | None = None
    """Carried through ``config.json``; not used by the model."""

    def __post_init__(self):
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that does not make sense."""
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
            "rope_original_max_position_embeddings",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"LMConfig.{name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"LMConfig.{name} must be >= 1, got {value}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LMConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"LMConfig.num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"LMConfig.head_dim must be even for the rotary embedding, got "
                f"{self.head_dim}"
            )
        for name in ("rope_theta", "rms_norm_eps", "rope_factor"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"LMConfig.{name} must be > 0, got {value!r}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"LMConfig.rope_type must be one of {ROPE_TYPES}, got "
                f"{self.rope_type!r}"
            )
        if (
            self.rope_type == "llama3"
            and self.rope_high_freq_factor <= self.rope_low_freq_factor
        ):
            raise ValueError(
                "LMConfig.rope_high_freq_factor must exceed rope_low_freq_factor, got "
                f"{self.rope_high_freq_factor} <= {self.rope_low_freq_factor}"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(
                    f"LMConfig.{name} must be one of {tuple(DTYPES)}, got "
                    f"{getattr(self, name)!r}"
                )
        if self.model_type not in MODEL_TYPES:
            raise ValueError(
                f"LMConfig.model_type must be one of {tuple(MODEL_TYPES)}, got "
                f"{self.model_type!r}"
            )
        if self.model_type == "qwen2" and (
            self.attention_out_bias or self.mlp_bias or not self.attention_bias
        ):
            raise ValueError(
                "LMConfig.model_type 'qwen2' has q/k/v biases only: set "
                "attention_bias=True, attention_out_bias=False, mlp_bias=False"
            )
        if (
            self.model_type == "llama"
            and self.attention_bias != self.attention_out_bias
        ):
            raise ValueError(
                "LMConfig.model_type 'llama' has one attention_bias for q, k, v and o: "
                "attention_bias and attention_out_bias must be equal"
            )

    # --------------------------------------------------------------- derived
    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def params_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def inv_freq(self) -> np.ndarray:
        """Rotary inverse frequencies ``[head_dim // 2]`` (float32), as transformers
        computes them for this ``rope_type``."""
        dim = self.head_dim
        exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
        inv_freq = (1.0 / (np.float32(self.rope_theta) ** exponents)).astype(np.float32)
        if self.rope_type == "linear":
            inv_freq = inv_freq / np.float32(self.rope_factor)
        elif self.rope_type == "llama3":
            factor = self.rope_factor
            low, high = self.rope_low_freq_factor, self.rope_high_freq_factor
            old_len = self.rope_original_max_position_embeddings
            low_wavelen, high_wavelen = old_len / low, old_len / high
            wavelen = 2 * math.pi / inv_freq
            scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
            smooth = (old_len / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
        return inv_freq

    def replace(self, **changes) -> LMConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------ HF format
    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], **overrides) -> LMConfig:
        """Read a transformers ``LlamaConfig`` / ``Qwen2Config`` dict (``config.json``).

        ``overrides`` replace fields after reading (e.g. ``dtype="bfloat16"``).
        Raises ``ValueError`` naming ``model_type`` / ``architectures`` for other
        families, and naming the field for features this model does not implement
        (sliding windows, partial rotary, other activations or rotary types).
        """
        if not isinstance(hf, dict):
            raise ValueError(f"config.json must hold a JSON object, got {type(hf)}")
        model_type = hf.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"unsupported checkpoint: model_type={model_type!r}, "
                f"architectures={hf.get('architectures')!r}; supported model_type: "
                f"{sorted(MODEL_TYPES)} ({', '.join(MODEL_TYPES.values())})"
            )
        architectures = hf.get("architectures") or [MODEL_TYPES[model_type]]
        known = {MODEL_TYPES[model_type]}  # a causal-LM head, not a bare *Model
        if not set(architectures) <= known:
            raise ValueError(
                f"unsupported checkpoint: architectures={architectures!r} for "
                f"model_type={model_type!r}; supported: {sorted(known)}"
            )
        for key in ("vocab_size", "hidden_size", "intermediate_size"):
            if key not in hf:
                raise ValueError(f"config.json has no {key!r}")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(
                f"config.json hidden_act={act!r}: only 'silu' is supported"
            )
        if hf.get("use_sliding_window", False):
            raise ValueError(
                "config.json use_sliding_window=True: sliding-window attention is not "
                "supported"
            )
        num_heads = hf.get("num_attention_heads", 32)
        num_kv_heads = hf.get("num_key_value_heads") or num_heads
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads

        rope = dict(hf.get("rope_parameters") or {})
        if not rope and hf.get("rope_scaling"):
            rope = dict(hf["rope_scaling"])
        if any(isinstance(v, dict) for v in rope.values()):
            raise ValueError(
                "config.json rope_parameters per layer type are not supported"
            )
        rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise ValueError(
                f"config.json rope_type={rope_type!r} is not supported "
                f"(supported: {ROPE_TYPES})"
            )
        partial = rope.get(
            "partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)
        )
        if partial != 1.0:
            raise ValueError(
                f"config.json partial_rotary_factor={partial}: only 1.0 is supported"
            )
        rope_fields = {}
        if rope_type in ("linear", "llama3"):
            rope_fields["rope_factor"] = float(rope["factor"])
        if rope_type == "llama3":
            rope_fields.update(
                rope_low_freq_factor=float(rope["low_freq_factor"]),
                rope_high_freq_factor=float(rope["high_freq_factor"]),
                rope_original_max_position_embeddings=int(
                    rope.get(
                        "original_max_position_embeddings",
                        hf.get("max_position_embeddings", 2048),
                    )
                ),
            )
        if model_type == "qwen2":
            biases = dict(attention_bias=True, attention_out_bias=False, mlp_bias=False)
        else:
            bias = bool(hf.get("attention_bias", False))
            biases = dict(
                attention_bias=bias,
                attention_out_bias=bias,
                mlp_bias=bool(hf.get("mlp_bias", False)),
            )
        dtype = hf.get("dtype", hf.get("torch_dtype")) or "float32"
        if dtype not in DTYPES:
            dtype = "float32"
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf.get("num_hidden_layers", 32),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            rope_theta=float(rope_theta),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            rope_type=rope_type,
            dtype=dtype,
            param_dtype=dtype,
            model_type=model_type,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            **biases,
            **rope_fields,
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict[str, Any]:
        """The ``config.json`` dict of the matching transformers class."""
        rope: dict[str, Any] = {
            "rope_theta": self.rope_theta,
            "rope_type": self.rope_type,
        }
        if self.rope_type in ("linear", "llama3"):
            rope["factor"] = self.rope_factor
        if self.rope_type == "llama3":
            rope.update(
                low_freq_factor=self.rope_low_freq_factor,
                high_freq_factor=self.rope_high_freq_factor,
                original_max_position_embeddings=self.rope_original_max_position_embeddings,
            )
        eos = self.eos_token_id
        hf: dict[str, Any] = {
            "architectures": [MODEL_TYPES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
            "pad_token_id": self.pad_token_id,
            "dtype": self.param_dtype,
            "use_cache": True,
        }
        if self.rope_type != "default":
            hf["rope_scaling"] = dict(rope)
        if self.model_type == "llama":
            hf.update(
                head_dim=self.head_dim,
                attention_bias=self.attention_bias,
                mlp_bias=self.mlp_bias,
            )
        else:
            if self.head_dim != self.hidden_size // self.num_heads:
                # Qwen2Config derives head_dim; transformers honours an explicit one.
                hf["head_dim"] = self.head_dim
            hf.update(use_sliding_window=False, sliding_window=None)
        return hf
