"""Checkpoints: safetensors + config.json, the format Hugging Face `transformers` reads.

What this file is: the translation between `TransformerConfig` and a Hugging Face
LLaMA/Mistral `config.json`, and `save_pretrained` / `load_pretrained` for model folders,
plus one-file training state (optimizer moments, step, RNG) for resuming. The safetensors
format itself is read and written in safetensors_file.py.
What it isn't: a loader for pickled `pytorch_model.bin`, GGUF, or architectures other than
LLaMA and Mistral; those are refused with one line saying so.
"""
import json
import os

import numpy as np

from mini_llm import backend
from mini_llm.files import atomic_write
from mini_llm.model.config import TransformerConfig, param_shapes
from mini_llm.safetensors_file import CheckpointError, read_metadata, read_safetensors, write_safetensors

FORMAT_VERSION = 1          # "minillm_version" in config.json; bump when the layout changes


def _write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


# ---------------------------------------------------------------------------------------------
# config.json <-> TransformerConfig


def config_to_hf(config, dtype_name="float32"):
    """A Hugging Face MistralConfig dict for `config` (LLaMA when there is no window is the
    same network, so "mistral" covers both)."""
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_length,
        "sliding_window": config.sliding_window,
        "rope_theta": config.rope_theta,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": dtype_name,
        "attention_dropout": 0.0,
        "minillm_version": FORMAT_VERSION,
    }


def _rope_theta(d, source):
    """RoPE base from either layout; refuse any scaling MiniLLM does not implement.
    transformers <= 4: top-level rope_theta + optional rope_scaling {"rope_type"|"type": ...};
    transformers 5: rope_parameters {"rope_type": "default", "rope_theta": ...}."""
    for key in ("rope_scaling", "rope_parameters"):
        rope = d.get(key) or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise CheckpointError(f"{source}: {key} of type {kind!r} is not supported "
                                  f"(MiniLLM implements plain RoPE only)")
    return float((d.get("rope_parameters") or {}).get("rope_theta", d.get("rope_theta", 10000.0)))


# config.json fields and what each must hold: (key, kind, may be null)
INT_FIELDS = [("vocab_size", False), ("hidden_size", False), ("intermediate_size", False),
              ("num_hidden_layers", False), ("num_attention_heads", False),
              ("num_key_value_heads", True), ("head_dim", True), ("max_position_embeddings", False),
              ("sliding_window", True)]
FLOAT_FIELDS = ["rope_theta", "rms_norm_eps"]


def _check_field_types(d, source):
    """Sizes are positive integers (not strings, floats or booleans), rope_theta and
    rms_norm_eps positive numbers, tie_word_embeddings a boolean: one line naming the field."""
    for key, nullable in INT_FIELDS:
        if key not in d or (nullable and d[key] is None):
            continue
        value = d[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{source}: {key} must be a positive integer"
                                  f"{' or null' if nullable else ''}, got {value!r}")
    for key in FLOAT_FIELDS:
        value = d.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise CheckpointError(f"{source}: {key} must be a positive number, got {value!r}")
    if not isinstance(d.get("tie_word_embeddings", False), bool):
        raise CheckpointError(f"{source}: tie_word_embeddings must be true or false, "
                              f"got {d['tie_word_embeddings']!r}")


def config_from_hf(d, source="config.json"):
    """TransformerConfig from a config.json dict: ours, a published LLaMA/Mistral config, or
    the transformers-5 layout. Raises CheckpointError (one line) for what MiniLLM cannot run."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(d).__name__}")
    model_type = d.get("model_type")
    if model_type not in ("llama", "mistral"):
        raise CheckpointError(f"{source}: model_type {model_type!r} is not supported "
                              f"(MiniLLM reads llama and mistral)")
    version = d.get("minillm_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{source}: minillm_version {version!r} is newer than this "
                              f"MiniLLM reads ({FORMAT_VERSION}); update MiniLLM")
    for flag in ("mlp_bias", "attention_bias"):
        if d.get(flag):
            raise CheckpointError(f"{source}: {flag}=true is not supported "
                                  f"(MiniLLM's projections have no bias)")
    if d.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {d['hidden_act']!r} is not supported "
                              f"(MiniLLM's MLP is SwiGLU with silu)")
    required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads"]
    missing = [k for k in required if k not in d]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r}")
    _check_field_types(d, source)
    heads = d["num_attention_heads"]
    config = TransformerConfig(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        intermediate_size=d["intermediate_size"],
        max_seq_length=d.get("max_position_embeddings", 2048),
        sliding_window=d.get("sliding_window") if model_type == "mistral" else None,
        rope_theta=_rope_theta(d, source),
        norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        head_dim=d.get("head_dim"),           # None: hidden_size // heads, as transformers does
    )
    try:
        return config.validate()
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Model folders


def save_pretrained(model, directory):
    """Write config.json and model.safetensors into `directory` (created if needed), each
    atomically. Weights are stored as float32, or float64 for a float64 model."""
    os.makedirs(directory, exist_ok=True)
    dtype_name = "float64" if np.dtype(model.dtype) == np.float64 else "float32"
    write_safetensors(os.path.join(directory, "model.safetensors"), model.params,
                      metadata={"format": "pt"}, dtype=dtype_name)   # "pt": transformers asks
    _write_json(os.path.join(directory, "config.json"), config_to_hf(model.config, dtype_name))


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
                              f"({len(extra)} unexpected in all; not a LLaMA/Mistral checkpoint?)")


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
