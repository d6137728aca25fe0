"""Checkpoints: safetensors + config.json, the format Hugging Face `transformers` reads.

What this file is: `save_pretrained` / `load_pretrained` for model folders (config.json +
safetensors), plus one-file training state (optimizer moments, step, RNG) for resuming. The
translation between `TransformerConfig` and a Hugging Face LLaMA / Mistral / Qwen2 / Qwen3
`config.json` is in hf_config.py; the safetensors format itself in safetensors_file.py.
What it isn't: a loader for pickled `pytorch_model.bin`, GGUF, or architectures other than
those four families; those are refused with one line saying so.
"""
import json
import os

import numpy as np

from mini_llm import backend
from mini_llm.files import atomic_write
# the config.json mapping of each family lives in hf_config.py; importable from here as before
from mini_llm.hf_config import FORMAT_VERSION, config_from_hf, config_to_hf  # noqa: F401
from mini_llm.model.config import param_shapes
from mini_llm.safetensors_file import CheckpointError, read_metadata, read_safetensors, write_safetensors

def _write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


# ---------------------------------------------------------------------------------------------
# Model folders


def save_pretrained(model, directory):
    """Write config.json and model.safetensors into `directory` (created if needed), each
    atomically. Weights are stored as float32, or float64 for a float64 model."""
    dtype_name = "float64" if np.dtype(model.dtype) == np.float64 else "float32"
    hf_config = config_to_hf(model.config, dtype_name)   # first: a config no family holds writes nothing
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, "model.safetensors"), model.params,
                      metadata={"format": "pt"}, dtype=dtype_name)   # "pt": transformers asks
    _write_json(os.path.join(directory, "config.json"), hf_config)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _read_weights(directory):
    """({name: array}, {name: file it came from}, the file to name when a tensor is missing),
    read from model.safetensors or from the shards a model.safetensors.index.json lists."""
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no weight_map")
        files = [os.path.join(directory, shard) for shard in sorted(set(weight_map.values()))]
    else:
        raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json "
                              f"(pickled pytorch_model.bin is not read; convert it to safetensors)")
    tensors, origin = {}, {}
    for path in files:
        for name, array in read_safetensors(path).items():
            tensors[name], origin[name] = array, path
    return tensors, origin, (single if files == [single] else index)


def _is_buffer(name):
    """Non-parameter buffers some exporters include (RoPE tables); safe to skip."""
    return name.endswith(("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached"))


def _check_tensors(config, tensors, origin, where):
    """Every expected tensor present with its shape; extras only if harmless."""
    expected = param_shapes(config)
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{where}: tensor {name} is missing")
        if tuple(tensors[name].shape) != tuple(shape):
            raise CheckpointError(f"{origin[name]}: tensor {name} has shape "
                                  f"{tuple(tensors[name].shape)}, config.json says {tuple(shape)}")
    extra = [n for n in tensors if n not in expected and not _is_buffer(n)]
    if config.tie_word_embeddings and "lm_head.weight" in extra:
        if not np.array_equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"]):
            raise CheckpointError(f"{origin['lm_head.weight']}: lm_head.weight differs from "
                                  f"model.embed_tokens.weight, but config.json says "
                                  f"tie_word_embeddings=true")
        extra.remove("lm_head.weight")
    if extra:
        raise CheckpointError(f"{origin[extra[0]]}: unexpected tensor {extra[0]} "
                              f"({len(extra)} unexpected in all; not a checkpoint of the family "
                              f"config.json names?)")


def load_pretrained(directory, dtype=np.float32):
    """(TransformerConfig, {name: array on the chosen device}) from a folder holding
    config.json and model.safetensors (or model.safetensors.index.json + shards). Works for
    folders written by save_pretrained and by Hugging Face (fp32, fp16, bf16)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{directory}: no config.json (not a model folder)")
    config = config_from_hf(_read_json(config_path), source=config_path)
    tensors, origin, where = _read_weights(directory)
    _check_tensors(config, tensors, origin, where)
    params = {name: backend.to_device(tensors[name].astype(dtype, copy=False))
              for name in param_shapes(config)}
    return config, params


# ---------------------------------------------------------------------------------------------
# Training state (for resuming)


def save_training_state(path, optimizer_state, meta):
    """One safetensors file: the optimizer's arrays (dtypes kept) and `meta` (step, RNG state,
    anything JSON-serialisable) as JSON in the header's metadata. Atomic."""
    try:
        meta_json = json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: training meta is not JSON-serialisable ({e})") from None
    write_safetensors(path, optimizer_state, metadata={"minillm_training_state": meta_json})


def load_training_state(path):
    """(state {name: array on the chosen device}, meta dict) written by save_training_state."""
    meta_json = read_metadata(path).get("minillm_training_state")
    if meta_json is None:
        raise CheckpointError(f"{path}: not a MiniLLM training state (no minillm_training_state)")
    state = {name: backend.to_device(a) for name, a in read_safetensors(path).items()}
    return state, json.loads(meta_json)
