"""One threading policy for the whole process: BLAS, OpenMP and Numba pools, sized once.

A training step alternates between NumPy's matmuls (OpenBLAS's thread pool) and Numba kernels
(Numba's pool). Each pool, left alone, sizes itself to every core, and after its work each
keeps its threads spinning for a while, waiting for more. So when the two alternate, one
pool's spinning threads take the cores the other needs: on 2 cores that made a step several
times slower than on one thread. The policy (measured in benchmarks/threads.py, numbers in
benchmarks/RESULTS.md):

  - one thread count for every pool: `set_threads(n)` (train.py, evaluate.py, generate.py and
    the benchmarks take it as --threads; default: every core this process may use);
  - idle threads sleep instead of spinning: OpenBLAS's after 2^4 cycles instead of about 2^28
    (OPENBLAS_THREAD_TIMEOUT=4), OpenMP's (Numba's default layer on Linux) at once
    (OMP_WAIT_POLICY=passive). Numba's `workqueue` layer sleeps too and measured the same, but
    two Python threads launching kernels at once abort the process on it; the OpenMP layer
    takes that.

Pool sizes can change at run time (threadpoolctl for BLAS and OpenMP, numba.set_num_threads),
but the spin settings are read once, when the libraries load. So `import mini_llm` writes them
into the environment (prepare_environment) if NumPy is not loaded yet, never overriding a value
the user set; the entry scripts import mini_llm before NumPy for that reason.
This module imports neither NumPy nor Numba at its top, so that it can run before them.
"""
import os
import sys
import threading

SPIN_SETTINGS = {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "passive"}
POOL_SIZE_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def available_cores():
    """The cores this process may run on (its CPU affinity), else os.cpu_count()."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_SET_HERE = set()        # the spin settings this process wrote (not the user's)


def prepare_environment():
    """Before NumPy and Numba load: their spin settings (SPIN_SETTINGS) as defaults of the
    environment. Returns False, changing nothing, when NumPy is loaded already."""
    if "numpy" in sys.modules:
        return False
    for name, value in SPIN_SETTINGS.items():
        if name not in os.environ:
            os.environ[name] = value
            _SET_HERE.add(name)
    return True


def child_environment(threads, spin=True):
    """The environment for a benchmark's worker process: every pool sized to `threads`, and
    the spin settings when it runs our code (spin=True); for another framework (spin=False)
    without the ones this process added, so that it runs as its own users run it."""
    env = {k: v for k, v in os.environ.items() if spin or k not in _SET_HERE}
    env.update({name: str(threads) for name in POOL_SIZE_VARIABLES})
    return env


def pin_environment(threads, spin=True):
    """For a process that must start with `threads` everywhere (a benchmark's worker): every
    pool's size in the environment, before NumPy loads, with our spin settings (spin=True) or
    without the ones `import mini_llm` added (spin=False: another framework's worker)."""
    for name in POOL_SIZE_VARIABLES:
        os.environ[name] = str(threads)
    if spin:
        prepare_environment()
    else:
        for name in _SET_HERE:
            os.environ.pop(name, None)
        _SET_HERE.clear()


def check_threads(threads):
    """One clear error for a bad --threads (0, negative, more than Numba's pool holds)."""
    import numba
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"--threads {threads} is more than the {numba.config.NUMBA_NUM_THREADS} "
                         "threads Numba's pool holds (set NUMBA_NUM_THREADS before starting)")


def add_flag(parser):
    """--threads, as every entry script and benchmark takes it."""
    parser.add_argument("--threads", type=int, default=None, help="threads for every pool: BLAS, "
                        f"OpenMP and Numba (default: every core this process may use, {available_cores()} "
                        "here; under MPI, those cores shared among the ranks on the machine)")


def set_threads(threads=None, ranks_here=1):
    """Size BLAS, OpenMP and Numba to `threads`. None: available_cores(), shared among the
    `ranks_here` processes of one run on this machine. Returns the count."""
    import numba
    from threadpoolctl import threadpool_limits
    if threads is None:
        threads = min(max(1, available_cores() // ranks_here), numba.config.NUMBA_NUM_THREADS)
    check_threads(threads)
    threadpool_limits(limits=threads)          # OpenBLAS (or MKL) under NumPy, and OpenMP
    numba.set_num_threads(threads)
    return threads


def describe():
    """One line: the pools and their sizes, for a run's log."""
    import numba
    from threadpoolctl import threadpool_info
    pools = ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info())
    try:
        layer = numba.threading_layer()          # known once a parallel kernel has run
    except ValueError:
        layer = os.environ.get("NUMBA_THREADING_LAYER", "default")
    return f"threads: numba {numba.get_num_threads()} ({layer} layer), {pools}"


# ---------------------------------------------------------------------------------------------
# Independent slices of work on separate threads (the model's batch rows, banded attention's heads)
#
# Some work is many small BLAS calls: banded attention multiplies (Q, D) by (D, Q + W - 1)
# blocks, a few MFLOP each, once per block and head. A multi-threaded BLAS cannot split a call
# that small well, but the heads are independent: slices of them can run on separate Python
# threads at once, each with BLAS and Numba at one thread (NumPy's matmul and our nogil kernels
# release the GIL), so the slices share the cores without oversubscribing them.
# The same holds one level up: the rows of a batch are independent through every block, so
# MiniTransformer.row_slices gives each thread its own rows for the whole forward and backward
# instead of handing every matmul and kernel to the pools, which costs a wake-up and a wait for
# the slowest thread each time. Inside a slice everything is at one thread, banded attention too.

_pool = {"executor": None, "size": 0, "blas": None}     # created at the first in_parallel
_POOL_LOCK = threading.Lock()      # one in_parallel at a time: the BLAS limit is process-wide


def count():
    """The policy's thread count here: Numba's, which set_threads sized (1 inside a slice)."""
    import numba
    return numba.get_num_threads()


def slices(n_items):
    """[(lo, hi), ..]: range(n_items) cut into one contiguous slice per thread of the policy
    (count()), fewer when there are fewer items."""
    n = max(1, min(count(), n_items))
    return [(i * n_items // n, (i + 1) * n_items // n) for i in range(n)]


def _one_thread(fn, lo, hi):
    """fn(lo, hi) with this thread's Numba pool at one thread (numba's count is per thread)."""
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return fn(lo, hi)
    finally:
        numba.set_num_threads(before)


def concurrent_kernels_allowed():
    """True when Numba kernels may be launched from several Python threads at once: the OpenMP
    and TBB layers allow it; workqueue (the fallback where neither is installed, e.g. often on
    macOS, or NUMBA_THREADING_LAYER=workqueue) aborts the process. Before any parallel kernel
    has run the layer is not chosen yet, and the answer is False."""
    import numba
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:
        return False


def in_parallel(fn, bounds):
    """[fn(lo, hi) for (lo, hi) in bounds], the slices run concurrently, the calling thread
    taking the first; BLAS at one thread meanwhile. fn must only write its own slice. Where
    Numba's layer cannot take launches from several threads, the slices run one after another."""
    if len(bounds) == 1 or not concurrent_kernels_allowed():
        return [fn(lo, hi) for lo, hi in bounds]
    from concurrent.futures import ThreadPoolExecutor
    from threadpoolctl import ThreadpoolController
    with _POOL_LOCK:
        if _pool["size"] < len(bounds) - 1:             # first call, or more threads than before
            if _pool["executor"] is not None:
                _pool["executor"].shutdown(wait=False)
            _pool.update(executor=ThreadPoolExecutor(len(bounds) - 1, thread_name_prefix="minillm-slice"),
                         size=len(bounds) - 1, blas=_pool["blas"] or ThreadpoolController())
        with _pool["blas"].limit(limits=1, user_api="blas"):
            futures = [_pool["executor"].submit(_one_thread, fn, lo, hi) for lo, hi in bounds[1:]]
            first = _one_thread(fn, *bounds[0])
            return [first] + [f.result() for f in futures]
