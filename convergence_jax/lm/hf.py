"""Hugging Face checkpoints: ``config.json`` + safetensors <-> (`LMConfig`, params).

`load_hf` reads a ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` folder as written by
``save_pretrained`` (one ``model.safetensors`` or shards listed in
``model.safetensors.index.json``; float32, bfloat16 or float16 tensors; tied
embeddings without ``lm_head.weight``). `save_hf` writes a folder that
``transformers`` loads. Every tensor name, its place in our params and its
transpose are in one table, `hf_tensor_table`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from convergence_jax.lm.config import LMConfig
from convergence_jax.lm.model import check_params, init_params

_NUMPY_DTYPES = {
    "float32": np.float32,
    "bfloat16": ml_dtypes.bfloat16,
    "float16": np.float16,
}
# Buffers some older checkpoints carry; they are recomputed from the config.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class HFTensor(NamedTuple):
    """One checkpoint tensor: its Hugging Face name, the path of our parameter,
    whether it is stored transposed (``nn.Linear`` keeps ``[out, in]``, we keep
    ``[in, out]``) and its layer (``None`` for non-stacked parameters)."""

    name: str
    path: tuple[str, ...]
    transpose: bool
    layer: int | None


# (Hugging Face name inside a layer, our path under params["layers"], transpose,
#  the config flag that switches it on or None)
_LAYER_TABLE = (
    ("input_layernorm.weight", ("input_norm", "scale"), False, None),
    ("post_attention_layernorm.weight", ("post_attention_norm", "scale"), False, None),
    ("self_attn.q_proj.weight", ("attn", "q_proj", "kernel"), True, None),
    ("self_attn.k_proj.weight", ("attn", "k_proj", "kernel"), True, None),
    ("self_attn.v_proj.weight", ("attn", "v_proj", "kernel"), True, None),
    ("self_attn.o_proj.weight", ("attn", "o_proj", "kernel"), True, None),
    ("self_attn.q_proj.bias", ("attn", "q_proj", "bias"), False, "attention_bias"),
    ("self_attn.k_proj.bias", ("attn", "k_proj", "bias"), False, "attention_bias"),
    ("self_attn.v_proj.bias", ("attn", "v_proj", "bias"), False, "attention_bias"),
    ("self_attn.o_proj.bias", ("attn", "o_proj", "bias"), False, "attention_out_bias"),
    ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), True, None),
    ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), True, None),
    ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), True, None),
    ("mlp.gate_proj.bias", ("mlp", "gate_proj", "bias"), False, "mlp_bias"),
    ("mlp.up_proj.bias", ("mlp", "up_proj", "bias"), False, "mlp_bias"),
    ("mlp.down_proj.bias", ("mlp", "down_proj", "bias"), False, "mlp_bias"),
)


def hf_tensor_table(config: LMConfig) -> list[HFTensor]:
    """Every tensor of the checkpoint of ``config``, in a fixed order."""
    table = [HFTensor("model.embed_tokens.weight", ("embed", "embedding"), False, None)]
    for i in range(config.num_layers):
        for suffix, path, transpose, flag in _LAYER_TABLE:
            if flag is None or getattr(config, flag):
                table.append(
                    HFTensor(
                        f"model.layers.{i}.{suffix}", ("layers", *path), transpose, i
                    )
                )
    table.append(HFTensor("model.norm.weight", ("final_norm", "scale"), False, None))
    if not config.tie_word_embeddings:
        table.append(HFTensor("lm_head.weight", ("lm_head", "kernel"), True, None))
    return table


def _tensor_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no model.safetensors, model.safetensors.index.json or *.safetensors "
            f"in {folder} (PyTorch .bin checkpoints are not read)"
        )
    return files


def _iter_tensors(files: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    for file in files:
        with safe_open(file, framework="numpy") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def load_hf_config(folder: str | os.PathLike, **overrides) -> LMConfig:
    """`LMConfig.from_hf_config` of ``folder/config.json``."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {folder}")
    return LMConfig.from_hf_config(json.loads(path.read_text()), **overrides)


def load_hf(folder: str | os.PathLike, **overrides) -> tuple[LMConfig, dict]:
    """Load a Hugging Face Llama / Qwen2 checkpoint folder.

    ``overrides`` replace config fields, e.g. ``dtype="float32",
    param_dtype="float32"`` to compute a bfloat16 checkpoint in float32 (by default
    both follow ``config.json``'s ``dtype``). Returns ``(config, params)`` with params
    in ``config.param_dtype``. Missing, unexpected or mis-shaped tensors raise
    ``ValueError`` naming the tensor before anything is compiled.
    """
    folder = Path(folder)
    config = load_hf_config(folder, **overrides)
    table = hf_tensor_table(config)
    expected = {t.name: t for t in table}
    shapes = jax.eval_shape(lambda: init_params(jax.random.key(0), config))
    np_dtype = _NUMPY_DTYPES[config.param_dtype]

    per_layer: dict[tuple[str, ...], list] = {}
    flat: dict[tuple[str, ...], np.ndarray] = {}
    seen = set()
    unexpected = []
    for name, array in _iter_tensors(_tensor_files(folder)):
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # some tied checkpoints store the shared matrix twice
        entry = expected.get(name)
        if entry is None:
            unexpected.append(name)
            continue
        seen.add(name)
        if entry.transpose:
            array = array.T
        target = _get(shapes, entry.path)
        want = target.shape[1:] if entry.layer is not None else target.shape
        if tuple(array.shape) != tuple(want):
            stored = array.T.shape if entry.transpose else array.shape
            stored_want = tuple(reversed(want)) if entry.transpose else tuple(want)
            raise ValueError(
                f"checkpoint tensor {name!r} has shape {tuple(stored)}, but the "
                f"config.json (vocab_size={config.vocab_size}, hidden_size="
                f"{config.hidden_size}, intermediate_size={config.intermediate_size}, "
                f"num_attention_heads={config.num_heads}, num_key_value_heads="
                f"{config.num_kv_heads}, head_dim={config.head_dim}) implies "
                f"{stored_want}"
            )
        array = np.ascontiguousarray(array.astype(np_dtype))
        if entry.layer is None:
            flat[entry.path] = array
        else:
            per_layer.setdefault(entry.path, [None] * config.num_layers)[
                entry.layer
            ] = array
    if unexpected:
        raise ValueError(
            f"checkpoint has {len(unexpected)} tensors this {config.model_type} config "
            f"does not use, e.g. {unexpected[:5]} (check attention_bias, mlp_bias, "
            f"tie_word_embeddings, num_hidden_layers in config.json)"
        )
    missing = [name for name in expected if name not in seen]
    if missing:
        raise ValueError(
            f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:5]} (check "
            f"tie_word_embeddings, attention_bias, num_hidden_layers in config.json)"
        )
    params: dict = {}
    for path, array in flat.items():
        _set(params, path, jnp.asarray(array))
    for path, arrays in per_layer.items():
        _set(params, path, jnp.asarray(np.stack(arrays)))
    return config, params


def save_hf(folder: str | os.PathLike, config: LMConfig, params, dtype=None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` that ``transformers``'
    ``AutoModelForCausalLM.from_pretrained`` loads. ``dtype`` (``"float32"``,
    ``"bfloat16"``, ``"float16"``) defaults to ``config.param_dtype``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = config.param_dtype if dtype is None else dtype
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(_NUMPY_DTYPES)}, got {dtype!r}")
    np_dtype = _NUMPY_DTYPES[dtype]
    check_params(config, params)
    host = jax.device_get(params)
    tensors = {}
    for entry in hf_tensor_table(config):
        array = np.asarray(_get(host, entry.path))
        if entry.layer is not None:
            array = array[entry.layer]
        if entry.transpose:
            array = array.T
        tensors[entry.name] = np.ascontiguousarray(array.astype(np_dtype))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    hf = config.to_hf_config()
    hf["dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return folder
