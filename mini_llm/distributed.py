"""Data parallelism over MPI: N processes ("ranks"), one model each, one batch between them.

    mpiexec -n 2 python train.py --use_mock          # 2 ranks on this machine

Every rank holds the whole model and the same optimizer state. A step goes:
  1. the global micro-batch, the same on every rank (training/loop.py's micro_batch with
     batch_size N·b), is cut into N contiguous shares: rank r takes rows share(n_rows)
  2. each rank runs forward and backward on its share alone, its loss weighted by its share of
     the rows (n_r / n), so that the sum over ranks is the mean over the whole micro-batch
  3. the gradients are summed over ranks (allreduce_grads: a few large flat buckets, one
     MPI Allreduce each, or NCCL for CuPy arrays), so every rank holds the gradient of the
     global batch
  4. every rank takes the same AdamW step: the weights stay identical without being sent
So N ranks with --batch_size b train exactly like one process with --batch_size N·b (up to the
order of float additions). Only rank 0 writes files and prints.

A single process (no launcher) never imports mpi4py: Group() is rank 0 of 1 and every method
is a no-op. MPICH's and Open MPI's launchers set PMI_SIZE / OMPI_COMM_WORLD_SIZE; when they say
N > 1 and mpi4py is missing, `setup` refuses (each rank alone would train on all the data).
"""
import os

import numpy as np

from mini_llm import backend

BUCKET_BYTES = 32 * 2 ** 20      # gradients are summed in flat buffers of up to 32 MiB
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")      # MPICH / Open MPI
LAUNCHER_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")


class NoMPI(ValueError):
    """Started by an MPI launcher with several ranks, but mpi4py cannot be imported."""


def _launcher_value(names, default):
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return default


def launched_ranks():
    """How many ranks the MPI launcher started (1 when there is no launcher)."""
    return _launcher_value(LAUNCHER_SIZE_VARIABLES, 1)


def ranks_on_this_machine():
    """How many of the launcher's ranks run on this machine (1 when there is no launcher, or it
    does not say): they share its cores (mini_llm/threads.py)."""
    return _launcher_value(("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"), 1)


def launched_rank():
    """This process's rank as the launcher numbered it (0 without a launcher), known even
    when mpi4py is missing."""
    return _launcher_value(LAUNCHER_RANK_VARIABLES, 0)


def setup():
    """The Group of this process: MPI.COMM_WORLD under a launcher with several ranks, else a
    single rank. One-line ValueError when a launcher started several ranks but mpi4py is not
    installed."""
    if launched_ranks() <= 1:
        return Group()
    try:
        from mpi4py import MPI
    except ImportError:
        raise NoMPI(f"started as one of {launched_ranks()} MPI ranks, but mpi4py is not "
                    "installed: pip install -e \".[distributed]\" (each rank alone would "
                    "train on all the data)") from None
    return Group(MPI.COMM_WORLD)


class Group:
    """The ranks of a run: rank, size, and the few collective operations training needs."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.lockstep = False        # True while training runs: an error then must stop every rank
        self._nccl = None

    @property
    def is_root(self):
        return self.rank == 0

    # ----- the batch split ----------------------------------------------------------------

    def share(self, n_rows):
        """This rank's rows of a global micro-batch of n_rows, as a slice: contiguous blocks in
        rank order, the first n_rows % size ranks one row more (n_rows 5, 2 ranks: 0..2, 3..4).
        A rank may get no row at the end of an epoch; it then adds nothing."""
        base, extra = divmod(n_rows, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    # ----- gradients ----------------------------------------------------------------------

    def allreduce_grads(self, grads):
        """Sum every gradient over the ranks, in place. The arrays are packed, in name order,
        into flat buckets of up to BUCKET_BYTES (one collective per bucket, not per tensor)."""
        if self.size == 1:
            return
        names = sorted(grads)
        for bucket in buckets(names, {n: grads[n].nbytes for n in names}, BUCKET_BYTES):
            flat = pack([grads[n] for n in bucket])
            self.sum_in_place(flat)
            unpack(flat, [grads[n] for n in bucket])

    def sum_in_place(self, flat):
        """flat (n,) summed over the ranks, in place: NCCL for CuPy arrays, MPI for NumPy."""
        if backend.array_module(flat) is np:
            from mpi4py import MPI
            self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        else:
            from cupy.cuda import nccl
            self.nccl().allReduce(flat.data.ptr, flat.data.ptr, flat.size, nccl_dtype(flat),
                                  nccl.NCCL_SUM, backend.xp().cuda.get_current_stream().ptr)

    def nccl(self):
        """The NCCL communicator for CuPy buffers, made once: rank 0's unique id is broadcast
        over MPI, then every rank joins (cupy.cuda.nccl)."""
        if self._nccl is None:
            from cupy.cuda import nccl
            uid = self.comm.bcast(nccl.get_unique_id() if self.is_root else None, root=0)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return self._nccl

    def pick_gpu(self):
        """On the GPU backend, rank r of a node uses that node's GPU r % (GPUs on the node)
        (MPI_LOCALRANKID from MPICH, OMPI_COMM_WORLD_LOCAL_RANK from Open MPI)."""
        xp = backend.xp()
        if self.size == 1 or xp is np:
            return
        local = _launcher_value(("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK"), self.rank)
        xp.cuda.Device(local % xp.cuda.runtime.getDeviceCount()).use()

    def all_reduce_name(self, arrays):
        """Which engine sums the gradients, for the log line."""
        if self.size == 1:
            return "none (one process)"
        on_gpu = any(backend.array_module(a) is not np for a in arrays)
        return "NCCL (CuPy arrays)" if on_gpu else "MPI Allreduce (NumPy arrays)"

    def broadcast_params(self, params):
        """Rank 0's values of every array in `params`, in place on every rank (the same init and
        the same resumed state everywhere, whatever each rank computed)."""
        if self.size == 1:
            return
        for name in sorted(params):
            host = np.ascontiguousarray(backend.to_host(params[name]))
            self.comm.Bcast(host, root=0)
            params[name][...] = backend.to_device(host)

    # ----- small values -------------------------------------------------------------------

    def sum_values(self, values):
        """{name: float} summed over the ranks (names a rank lacks count as 0)."""
        if self.size == 1:
            return values
        total = {}
        for part in self.comm.allgather(values):          # in rank order: rank 0's names first
            for name, v in part.items():
                total[name] = total.get(name, 0.0) + v
        return total

    def first_signal(self, stop):
        """The stop request of any rank (the signal name, or None), the same on every rank, so
        all ranks stop after the same step."""
        if self.size == 1:
            return stop
        return next((s for s in self.comm.allgather(stop) if s), None)

    def rank0_first(self, fn, then=None):
        """fn() on rank 0 first (it may write files: a trained tokenizer, a mock teacher, a
        cache), then on the other ranks `then()` (default: fn() again, which finds what rank 0
        wrote). A ValueError or OSError on rank 0 is raised on every rank, so all stop at the
        same place."""
        if self.size == 1:
            return fn()
        failure, result = None, None
        if self.is_root:
            try:
                result = fn()
            except (ValueError, OSError) as e:
                failure = e
        message = self.comm.bcast(None if failure is None else str(failure), root=0)
        if failure is not None:
            raise failure
        if message is not None:
            raise ValueError(message)
        return result if self.is_root else (then or fn)()

    def check_same(self, what, value_of):
        """One-line ValueError on every rank when the ranks disagree on value_of() (a string:
        the command line, a data file's digest), computed only when there are several ranks."""
        if self.size == 1:
            return
        values = self.comm.allgather(value_of())
        other = next((r for r, v in enumerate(values) if v != values[0]), None)
        if other is not None:
            raise ValueError(f"the {self.size} MPI ranks disagree on {what}: rank {other} differs "
                             f"from rank 0 (start every rank with the same arguments and files)")

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    def abort(self, code):
        """Stop every rank now (an error on one rank while the others wait in a collective)."""
        if self.size > 1:
            self.comm.Abort(code)


def nccl_dtype(array):
    from cupy.cuda import nccl
    return {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}[array.dtype.name]


def buckets(names, nbytes, limit):
    """names cut, in order, into runs whose sizes add up to at most `limit` bytes (a tensor
    larger than `limit` is a bucket of its own). [a 10, b 10, c 30], limit 25 -> [[a, b], [c]]."""
    runs, run, size = [], [], 0
    for name in names:
        if run and size + nbytes[name] > limit:
            runs.append(run)
            run, size = [], 0
        run.append(name)
        size += nbytes[name]
    return runs + ([run] if run else [])


def pack(arrays):
    """One flat array holding every array's values, in order (a new buffer; one dtype per
    bucket in practice: the gradients share the model's dtype)."""
    xp = backend.array_module(*arrays)
    return xp.concatenate([a.reshape(-1) for a in arrays])


def unpack(flat, arrays):
    """Write flat's values back into `arrays`, in place, in the order pack used."""
    offset = 0
    for a in arrays:
        a[...] = flat[offset:offset + a.size].reshape(a.shape)
        offset += a.size


SINGLE = Group()          # the one rank of a run without a launcher
