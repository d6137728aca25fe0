"""Backend choice: NumPy on the CPU or CuPy on a GPU, picked once.

Model code never imports cupy. Functions that receive arrays ask
`array_module(x)` which library the arrays belong to, so the same layer code
runs on NumPy and on CuPy arrays. Code that *creates* arrays (parameter
initialisation, the optimizer state) uses `xp()`, the library chosen by
`set_device` ("cpu", "gpu" or "auto"; default: env MINILLM_DEVICE, else cpu).
"""
import os

import numpy as np

_xp = np            # the array library in use: numpy or cupy
_device = "cpu"


def _cupy_or_none():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:           # no cupy, no driver, or no GPU: all mean "no GPU"
        return None
    return None


def set_device(name=None):
    """Choose the backend: "cpu", "gpu" or "auto" (GPU if CuPy sees one). Returns the choice."""
    global _xp, _device
    name = (name or os.environ.get("MINILLM_DEVICE") or "cpu").lower()
    if name not in ("cpu", "gpu", "auto"):
        raise ValueError(f"unknown device {name!r} (--device or env MINILLM_DEVICE): use cpu, gpu or auto")
    cupy = _cupy_or_none() if name in ("gpu", "auto") else None
    if name == "gpu" and cupy is None:
        raise RuntimeError("device 'gpu' asked for, but CuPy sees no GPU (pip install cupy-cuda12x?)")
    _xp, _device = (cupy, "gpu") if cupy is not None else (np, "cpu")
    return _device


def xp():
    """The array library chosen by set_device (numpy or cupy)."""
    return _xp


def array_module(*arrays):
    """numpy or cupy: the library that owns these arrays (numpy for plain Python values)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy
            return cupy
    return np


def to_host(a):
    """A NumPy copy of `a` (no copy if it already is NumPy)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def to_device(a):
    """`a` as an array of the chosen backend."""
    return _xp.asarray(a)


def _choose_at_import():
    """Follow MINILLM_DEVICE at import, but never fail an import (or --help) over it: a bad
    value or a missing GPU leaves NumPy in place, and the entry points' set_device call then
    reports it as one error line."""
    try:
        set_device()
    except (ValueError, RuntimeError):
        pass


_choose_at_import()
