"""safetensors files, read and written by hand (no dependency on the `safetensors` package).

A safetensors file is three parts (https://github.com/huggingface/safetensors):
    8 bytes        N, the header length, unsigned little-endian
    N bytes        JSON: {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                          "__metadata__": {str: str}}, padded with spaces to a multiple of 8
    the rest       raw little-endian tensor bytes; offsets count from the end of the header
Every write goes to a temporary file in the same folder, then `os.replace` swaps it in, so a
crash mid-write leaves the old file as it was, never half a file. Every flaw of a file read
is a CheckpointError whose message is one line naming the file.
"""
import json
import os
import struct

import numpy as np

from mini_llm import backend
from mini_llm.files import atomic_write


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

    atomic_write(path, write)     # temp file beside path, fsync, rename (mini_llm/files.py)


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
