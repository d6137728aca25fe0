"""The allocator policy: freed memory stays in the process for the next step.

A training step allocates and frees the same large temporaries every time; at the size of
benchmarks/train_step.py the logits and the cross-entropy buffer are 64 MiB each. glibc's
malloc hands blocks above its mmap threshold (32 MiB at most) to fresh mmap calls and returns
them on free, and it trims the top of its heap whenever much of it is free. So every step
writes to pages that are new to the process, and the kernel must map and zero each one: a page
fault per 4 KiB, about 5 µs each on the development machine (a VM), some 3,000–16,000 faults
and 100–200 ms of a 1.4 s step on one thread (benchmarks/RESULTS.md).

keep_freed_memory() asks malloc to serve every block from its heap (M_MMAP_MAX = 0) and never
to trim it (M_TRIM_THRESHOLD at its largest): from the second step on, the step reuses the
same pages and faults no more. The price: the process keeps its peak memory until it exits
(the peak itself is the same, 776 MiB both ways in the train-step benchmark).

It changes the whole process, so the scripts that own one call it (train.py, evaluate.py,
generate.py, our benchmark workers); `import mini_llm` does not. glibc only; elsewhere, or when
the user has set MALLOC_* or GLIBC_TUNABLES variables, it leaves malloc alone.
"""
import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4           # mallopt's parameter numbers, glibc's malloc.h
LARGEST_INT = 2 ** 31 - 1                       # mallopt takes a C int

_state = {"kept": False}


def on_glibc():
    """True when this process runs on glibc (Linux distributions but Alpine's musl)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):          # no confstr, or not glibc
        return False


def user_tuned_malloc():
    """True when the environment already tunes glibc's malloc (MALLOC_ARENA_MAX, ...)."""
    return "GLIBC_TUNABLES" in os.environ or any(name.startswith("MALLOC_") for name in os.environ)


def keep_freed_memory():
    """Serve every block from malloc's heap and never trim it (see the module docstring).
    Returns True when that is in force, False when malloc was left alone."""
    if _state["kept"]:
        return True
    if not on_glibc() or user_tuned_malloc():
        return False
    mallopt = ctypes.CDLL(None).mallopt                 # the C library this process runs on
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _state["kept"] = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, LARGEST_INT))
    return _state["kept"]


def describe():
    """One line for a run's log."""
    return ("memory: freed blocks kept for reuse (malloc: no mmap, no trim)" if _state["kept"]
            else "memory: malloc's defaults")
