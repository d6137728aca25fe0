"""Checkpoints: safetensors + config.json, the format Hugging Face `transformers` reads.

What this file is: a hand-written safetensors reader/writer (no dependency on the
`safetensors` package), the translation between `TransformerConfig` and a Hugging Face
LLaMA/Mistral `config.json`, and `save_pretrained` / `load_pretrained` for model folders,
plus one-file training state (optimizer moments, step, RNG) for resuming.
What it isn't: a loader for pickled `pytorch_model.bin`, GGUF, or architectures other than
LLaMA and Mistral; those are refused with one line saying so.

A safetensors file is three parts (https://github.com/huggingface/safetensors):
    8 bytes        N, the header length, unsigned little-endian
    N bytes        JSON: {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                          "__metadata__": {str: str}}, padded with spaces to a multiple of 8
    the rest       raw little-endian tensor bytes; offsets count from the end of the header
Every write goes to a temporary file in the same folder, then `os.replace` swaps it in, so a
crash mid-write leaves the old file as it was, never half a checkpoint.
"""
import json
import os
import struct

import numpy as np

from mini_llm import backend
from mini_llm.files import atomic_write
from mini_llm.model.transformer import TransformerConfig, param_shapes

FORMAT_VERSION = 1          # "minillm_version" in config.json; bump when the layout changes


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written; the message is one line naming the file."""


# ---------------------------------------------------------------------------------------------
# dtypes: safetensors code <-> how the bytes look in NumPy

STORED = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4"}
FLOAT_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}
CODE_OF_NUMPY = {"float64": "F64", "float32": "F32", "float16": "F16",
                 "int64": "I64", "int32": "I32"}


def float32_to_bfloat16_bits(x):
    """float32 array -> uint16 bfloat16 bits, rounded to nearest, ties to even.
    bfloat16 is the top half of a float32. Adding 0x7FFF plus the lowest kept bit before
    dropping the low 16 bits rounds to nearest-even: 0x3F808000 (1 + 2^-8, a tie) -> 0x3F80,
    0x3F818000 (1 + 3·2^-8, a tie) -> 0x3F82. NaN is kept a (quiet) NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    quiet_nan = ((bits >> 16) | 0x0040).astype(np.uint16)
    return np.where(np.isnan(x), quiet_nan, rounded)


def bfloat16_bits_to_float32(bits):
    """uint16 bfloat16 bits -> float32 (exact: put the 16 bits back on top of a float32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _encode(array, code):
    """The little-endian bytes of `array` stored as `code`."""
    if code == "BF16":
        return float32_to_bfloat16_bits(array.astype(np.float32)).astype("<u2").tobytes()
    return np.ascontiguousarray(array, dtype=STORED[code]).tobytes()


def _decode(raw, code, shape):
    """The NumPy array for the stored bytes (BF16 comes back as float32)."""
    array = np.frombuffer(raw, dtype=STORED[code]).reshape(shape)
    if code == "BF16":
        return bfloat16_bits_to_float32(array)
    return array.astype(array.dtype.newbyteorder("="))      # native order, and writable


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _atomic_write(path, write):
    """Call write(file) on a temporary file beside `path`, fsync it, rename it onto `path`
    (mini_llm.files.atomic_write: the project's one atomic writer)."""
    atomic_write(path, write)


def _write_json(path, obj):
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


# ---------------------------------------------------------------------------------------------
# safetensors


def write_safetensors(path, tensors, metadata=None, dtype=None):
    """Write {name: array} to `path` atomically. dtype: None keeps each array's own dtype
    (float64/32/16, int64/32); "float32", "float16", "bfloat16" or "float64" stores every
    floating tensor that way (bfloat16 by round-to-nearest-even from float32).
    metadata: {str: str}, stored as the header's "__metadata__"."""
    metadata = dict(metadata or {})
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise CheckpointError(f"{path}: safetensors metadata values must be strings, "
                              f"not for key {bad[0]!r} (json.dumps it)")
    if dtype is not None:
        dtype = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        if dtype not in FLOAT_CODES:
            raise CheckpointError(f"{path}: cannot store as dtype {dtype!r}; "
                                  f"choose one of {', '.join(FLOAT_CODES)}")
    header, arrays, offset = {}, [], 0
    for name, array in tensors.items():
        array = backend.to_host(array)
        code = CODE_OF_NUMPY.get(array.dtype.name)
        if code is None:
            raise CheckpointError(f"{path}: tensor {name} has dtype {array.dtype}, which "
                                  f"safetensors files here do not store")
        if dtype is not None and array.dtype.kind == "f":
            code = FLOAT_CODES[dtype]
        nbytes = array.size * (2 if code == "BF16" else np.dtype(STORED[code]).itemsize)
        header[name] = {"dtype": code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + nbytes]}
        arrays.append((array, code))
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)                    # data starts on an 8-byte boundary

    def write(f):
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for array, code in arrays:
            f.write(_encode(array, code))

    _atomic_write(path, write)


def _read_header(f, path):
    """(header dict without __metadata__, metadata dict, data start, data length), checked."""
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
        raise CheckpointError(f"{path}: header length {n} is beyond the file size {size} "
                              f"(truncated, or not a safetensors file)")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_length = size - 8 - n
    for name, info in header.items():
        _check_entry(path, name, info, data_length)
    return header, metadata, 8 + n, data_length


def _check_entry(path, name, info, data_length):
    """One header entry: a known dtype, a shape, and offsets inside the data that fit it."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if code not in STORED:
        raise CheckpointError(f"{path}: tensor {name} has dtype {code}, which MiniLLM does "
                              f"not read (it reads {', '.join(STORED)})")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
            and isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)):
        raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_length:
        raise CheckpointError(f"{path}: tensor {name} data_offsets [{begin}, {end}] lie outside "
                              f"the {data_length} data bytes (truncated file?)")
    expected = int(np.prod(shape)) * np.dtype(STORED[code]).itemsize
    if end - begin != expected:
        raise CheckpointError(f"{path}: tensor {name} has {end - begin} bytes, but dtype {code} "
                              f"shape {shape} needs {expected}")


def _open(path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open ({e.strerror})") from None


def read_safetensors(path, dtype=None):
    """{name: np.ndarray} from a safetensors file. F16 and BF16 are decoded (BF16 by putting
    its bits on top of a float32); dtype, if given, is what every floating tensor becomes."""
    with _open(path) as f:
        header, _, start, _ = _read_header(f, path)
        tensors = {}
        for name, info in header.items():
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            array = _decode(f.read(end - begin), info["dtype"], info["shape"])
            if dtype is not None and array.dtype.kind == "f":
                array = array.astype(dtype, copy=False)
            tensors[name] = array
    return tensors


def read_metadata(path):
    """The header's "__metadata__" dict ({} if none)."""
    with _open(path) as f:
        return _read_header(f, path)[1]


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
        "head_dim": config.head_size,
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
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim * heads == d["hidden_size"]:
        head_dim = None                     # the default; keep configs equal after a round trip
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
        head_dim=head_dim,
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
