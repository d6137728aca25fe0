"""One threading policy for the whole process: BLAS, OpenMP and Numba pools, sized once.

A training step alternates between NumPy's matmuls (OpenBLAS's thread pool) and Numba kernels
(Numba's pool). Each pool, left alone, sizes itself to every core, and after its work each
keeps its threads spinning for a while, waiting for more. So when the two alternate, one
pool's spinning threads take the cores the other needs: on 2 cores that made a step several
times slower than on one thread. The policy (measured in benchmarks/threads.py, numbers in
benchmarks/RESULTS.md):

  - one thread count for every pool: `set_threads(n)` (train.py, evaluate.py, generate.py and
    the benchmarks take it as --threads; default: every core this process may use);
  - OpenBLAS's threads go to sleep almost at once after a matmul (OPENBLAS_THREAD_TIMEOUT=4,
    2^4 cycles instead of about 2^28) and Numba runs on its `workqueue` layer, whose idle
    threads sleep instead of spinning (its OpenMP layer spins, and so would NumPy's OpenBLAS
    against it).

Pool sizes can change at run time (threadpoolctl for BLAS and OpenMP, numba.set_num_threads),
but the spin settings are read once, when the libraries load. So `import mini_llm` writes them
into the environment (prepare_environment) if NumPy is not loaded yet, never overriding a value
the user set; the entry scripts import mini_llm before NumPy for that reason.
This module imports neither NumPy nor Numba at its top, so that it can run before them.
"""
import os
import sys

SPIN_SETTINGS = {"OPENBLAS_THREAD_TIMEOUT": "4", "NUMBA_THREADING_LAYER": "workqueue"}
POOL_SIZE_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def available_cores():
    """The cores this process may run on (its CPU affinity), else os.cpu_count()."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def prepare_environment():
    """Before NumPy and Numba load: their spin settings (SPIN_SETTINGS) as defaults of the
    environment. Returns False, changing nothing, when NumPy is loaded already."""
    if "numpy" in sys.modules:
        return False
    for name, value in SPIN_SETTINGS.items():
        os.environ.setdefault(name, value)
    return True


def pin_environment(threads):
    """For a process that must start with `threads` everywhere (a benchmark's worker): every
    pool's size in the environment, before NumPy loads, plus the spin settings."""
    for name in POOL_SIZE_VARIABLES:
        os.environ[name] = str(threads)
    prepare_environment()


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
    layer = os.environ.get("NUMBA_THREADING_LAYER", "default")
    return f"threads: numba {numba.get_num_threads()} ({layer} layer), {pools}"
