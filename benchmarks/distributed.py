"""Data parallelism on one machine: a training step as 2 MPI ranks x 1 thread vs 1 x 2 and 1 x 1.

The same global batch three ways: 2 processes of one thread, one process of 2 threads, and one
process of one thread (the baseline).

    python benchmarks/distributed.py                 # 3 repeats x 7 timed steps per configuration
    python benchmarks/distributed.py --repeats 5     # more repeats on a noisy machine
    python benchmarks/distributed.py --quick         # smoke run: a tiny model, 2 timed steps

A step is the body of training/loop.py's train() without its logging: get_lr, step_gradients
(this rank's share of the global micro-batch, forward + backward, group.allreduce_grads,
group.sum_values of the losses), clip_grad_norm, optimizer.step (AdamW), zero_grads; the library's
functions, called as train() calls them. Model: the config of benchmarks/train_step.py (vocab
8192, hidden 256, 4 layers, 4 heads (4 kv heads), intermediate 1024, sequence 256, window 128),
float32, global batch 8 (2 ranks: 4 rows each), random token ids (seed 0), no file needed.

Each configuration runs in its own process (so thread pools never share one), launched by this
script as a worker: `python benchmarks/distributed.py --worker 1x2` with OPENBLAS_NUM_THREADS=2
and NUMBA_NUM_THREADS=2, or `mpiexec -n 2 python benchmarks/distributed.py --worker 2x1` with one
thread each. Rank 0 of each worker prints one JSON line: its step times, and for 2 ranks the
times of group.allreduce_grads, which the worker wraps with a clock (on its own Group object;
the library is not edited).

First (nothing is timed before it): each configuration takes one step and dumps its gradients
after the all-reduce (every rank's); they must equal the 1x1 run's to rtol 1e-4, atol 1e-6 (the
ranks add the same float32 numbers in another order). Then --repeats rounds, the order of the
three configurations reversed every other round; each worker takes --warmup untimed steps, then
--steps timed ones. The table shows the median over all timed steps of all rounds.

The all-reduce clock starts with a barrier, so "all-reduce ms" is the sum itself (pack into
buckets, MPI Allreduce, unpack), not one rank waiting for the other's backward; that wait is
shown on its own line. On 2 cores this compares processes with threads on one machine: the
transfer is a copy through shared memory, not a network (RESULTS.md estimates a network).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mini_llm.threads import POOL_SIZE_VARIABLES

FULL = dict(model=dict(vocab_size=8192, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
                       intermediate_size=1024, max_seq_length=256, sliding_window=128), batch=8)
QUICK = dict(model=dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
                        intermediate_size=256, max_seq_length=64, sliding_window=32), batch=4)
CONFIGS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}          # name: (ranks, threads each)
LABEL = {"1x1": "1 rank x 1 thread", "1x2": "1 rank x 2 threads", "2x1": "2 ranks x 1 thread"}
RTOL, ATOL = 1e-4, 1e-6


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per worker (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three workers (default 3)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds a worker may take (default 900)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: vocab 512, hidden 64, 2 layers, seq 64, global batch 4; "
                             "1 warm-up, 2 timed steps, 1 repeat")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)   # set by the driver
    parser.add_argument("--dump", help=argparse.SUPPRESS)    # worker: one step, grads to DIR/NAME_rankR.npz
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.repeats = 2, 1, 1
    return args


# ---------------------------------------------------------------------------------------------
# The worker: one configuration, in its own process (its thread counts come from the driver)


def clock_all_reduce(group):
    """Wrap this Group's allreduce_grads and sum_in_place with clocks; returns the lists they
    fill, one entry per step: wait (the barrier before it), all-reduce (pack, MPI, unpack), mpi."""
    times = {"wait": [], "all_reduce": [], "mpi": []}
    all_reduce, sum_in_place = group.allreduce_grads, group.sum_in_place

    def timed_all_reduce(grads):
        t0 = time.perf_counter()
        group.barrier()                     # the other rank's backward ends here, not below
        t1 = time.perf_counter()
        times["mpi"].append(0.0)
        all_reduce(grads)
        times["wait"].append(t1 - t0)
        times["all_reduce"].append(time.perf_counter() - t1)

    def timed_sum(flat):
        t0 = time.perf_counter()
        sum_in_place(flat)
        times["mpi"][-1] += time.perf_counter() - t0

    group.allreduce_grads, group.sum_in_place = timed_all_reduce, timed_sum
    return times


def worker(args):
    import numba
    from mini_llm import distributed
    from mini_llm.model.transformer import MiniTransformer, TransformerConfig
    from mini_llm.optim import clip_grad_norm, get_lr
    from training.loop import TrainConfig, make_optimizer, step_gradients, trainable, zero_grads

    group = distributed.setup()
    try:
        size = QUICK if args.quick else FULL
        config = TransformerConfig(**size["model"])
        student = MiniTransformer(config, seed=0, dtype=np.float32)
        params, grads = trainable(student)
        group.broadcast_params(params)                      # as train.py: one start everywhere
        optimizer = make_optimizer(student)                 # AdamW, lr 3e-4, weight decay 0.1
        steps = args.warmup + args.steps
        run = TrainConfig(steps=steps, batch_size=size["batch"] // group.size, lr=3e-4)
        T = config.max_seq_length
        data = np.random.default_rng(0).integers(0, config.vocab_size, size=(4 * size["batch"], T + 1))
        times = clock_all_reduce(group)

        def train_step(step):               # train()'s loop body, less its logging
            lr = get_lr(step, run.lr, run.warmup_steps, run.steps, run.min_lr_ratio)
            step_gradients(student, None, data, step, run, group)
            clip_grad_norm(grads, run.grad_clip)
            optimizer.step(params, grads, lr=lr)
            zero_grads(grads)

        if args.dump:                       # the check: step 0's summed gradients, every rank
            step_gradients(student, None, data, 0, run, group)
            np.savez(Path(args.dump) / f"{args.worker}_rank{group.rank}.npz", **grads)
            return
        step_s = []
        for step in range(steps):
            start = time.perf_counter()
            train_step(step)
            step_s.append(time.perf_counter() - start)
        names = sorted(grads)
        nbytes = {n: grads[n].nbytes for n in names}
        mpi_version = ""
        if group.size > 1:
            from mpi4py import MPI
            mpi_version = " ".join(MPI.Get_library_version().split()[:3])
        if group.is_root:
            timed = slice(args.warmup, None)
            print(json.dumps({
                "name": args.worker, "ranks": group.size, "numba_threads": numba.get_num_threads(),
                "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                "step_s": step_s[timed], "wait_s": times["wait"][timed],
                "all_reduce_s": times["all_reduce"][timed], "mpi_s": times["mpi"][timed],
                "grad_bytes": sum(nbytes.values()),
                "buckets": len(distributed.buckets(names, nbytes, distributed.BUCKET_BYTES)),
                "mpi": mpi_version, "load": os.getloadavg()[0]}), flush=True)
    except BaseException:
        if group.size > 1:                  # the other rank waits in a collective: stop it too
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
            group.abort(1)
        raise


# ---------------------------------------------------------------------------------------------
# The driver: launch the workers, check, time, print


def find_mpiexec():
    """mpiexec beside this Python (a venv's bin/), else on PATH; None without it or mpi4py."""
    try:
        import mpi4py  # noqa: F401  (the package only: MPI itself starts in the workers)
    except ImportError:
        return None
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def launch(name, args, mpiexec, dump=None):
    """Run one worker to its end; returns its JSON line (None with --dump). Started in its own
    session, so that a timeout can kill mpiexec and its ranks together."""
    ranks, threads = CONFIGS[name]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1", **{v: str(threads) for v in POOL_SIZE_VARIABLES})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--dump", dump] if dump else []
    if ranks > 1:
        cmd = [mpiexec, "-n", str(ranks)] + cmd
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)         # the workers catch SIGTERM
        proc.communicate()
        sys.exit(f"worker {name} ran past --timeout {args.timeout} s: killed")
    if proc.returncode:
        sys.exit(f"worker {name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    if dump:
        return None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        sys.exit(f"worker {name} printed no result line:\n{out[-2000:]}\n{err[-2000:]}")
    return json.loads(lines[-1])


def check_gradients(args, mpiexec):
    """Step 0 in each configuration; every rank's summed gradients must equal the 1x1 run's."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in CONFIGS:
            launch(name, args, mpiexec, dump=tmp)
        reference = dict(np.load(Path(tmp) / "1x1_rank0.npz"))
        report = []
        for name, (ranks, _) in CONFIGS.items():
            for rank in range(ranks):
                if name == "1x1":
                    continue
                got = np.load(Path(tmp) / f"{name}_rank{rank}.npz")
                worst = max(float(np.abs(got[n] - g).max()) for n, g in reference.items())
                close = all(np.allclose(got[n], g, rtol=RTOL, atol=ATOL) for n, g in reference.items())
                report.append(f"{name} rank {rank} max diff {worst:.1e}" + ("" if close else " (DIFFERENT)"))
                if not close or set(got.files) != set(reference):
                    sys.exit("check FAILED, " + ", ".join(report) + ": not timing")
    print(f"check, step-0 gradients after the all-reduce vs 1x1 (rtol {RTOL:g}, atol {ATOL:g}, "
          f"{len(reference)} tensors): " + ", ".join(report) + ": equal")


def median_ms(values):
    return 1e3 * float(np.median(values)) if values else float("nan")


def main():
    args = parse_args()
    if args.worker:
        return worker(args)
    mpiexec = find_mpiexec()
    if mpiexec is None:
        print("benchmarks/distributed.py needs mpi4py and mpiexec (pip install -e \".[distributed]\", "
              "which brings the mpich wheel): not found", file=sys.stderr)
        sys.exit(2)
    size = QUICK if args.quick else FULL
    m, B = size["model"], size["batch"]
    T = m["max_seq_length"]
    print(f"distributed train step, float32, global batch B={B} T={T} V={m['vocab_size']} "
          f"C={m['hidden_size']} L={m['num_layers']} H={m['num_heads']} Hkv={m['num_kv_heads']} "
          f"F={m['intermediate_size']} W={m['sliding_window']}; AdamW; {args.repeats} repeats x "
          f"{args.steps} timed steps after {args.warmup} warm-up; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {mpiexec}")
    if args.quick:
        print("note: --quick: a tiny model, 2 timed steps; the numbers only show that it runs")
    check_gradients(args, mpiexec)

    results = {name: [] for name in CONFIGS}
    for r in range(args.repeats):               # reversed every other round: drift hits all three
        order = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))
        for name in order:
            results[name].append(launch(name, args, mpiexec))
        print(f"repeat {r + 1}/{args.repeats} ({' -> '.join(order)}), ms/step: " + ", ".join(
            f"{name} {median_ms(results[name][-1]['step_s']):.1f}" for name in CONFIGS)
            + f"; load average {os.getloadavg()[0]:.1f}", flush=True)

    pooled = {name: {key: [x for run in runs for x in run[key]]
                     for key in ("step_s", "wait_s", "all_reduce_s", "mpi_s")}
              for name, runs in results.items()}
    step = {name: median_ms(p["step_s"]) for name, p in pooled.items()}
    tokens = B * T
    print(f"\n{'configuration':<19} | {'ms/step':>8} | {'tokens/s':>8} | {'ratio vs 1x1':>12} | "
          f"{'all-reduce ms/step':>18} | all-reduce share of step")
    for name in CONFIGS:
        ratio = step["1x1"] / step[name]
        if CONFIGS[name][0] > 1:
            ar = median_ms(pooled[name]["all_reduce_s"])
            ar_cols = f"{ar:18.1f} | {100 * ar / step[name]:23.1f}%"
        else:
            ar_cols = f"{'-':>18} | {'-':>24}"
        print(f"{LABEL[name]:<19} | {step[name]:8.1f} | {1e3 * tokens / step[name]:8.0f} | "
              f"{ratio:11.2f}x | {ar_cols}")
    n_steps = len(pooled["1x1"]["step_s"])
    print(f"(median of {n_steps} timed steps per configuration over {args.repeats} processes each; "
          f"ratio = tokens/s / 1x1's; ideal on 2 cores 2.00x)")

    two = results["2x1"][0]
    mpi, ar = median_ms(pooled["2x1"]["mpi_s"]), median_ms(pooled["2x1"]["all_reduce_s"])
    print(f"all-reduced per step: {two['grad_bytes']:,} bytes ({two['grad_bytes'] / 2 ** 20:.1f} MiB) "
          f"of float32 gradients in {two['buckets']} bucket(s) of at most 32 MiB; of its {ar:.1f} ms, "
          f"MPI Allreduce {mpi:.1f} ms ({two['grad_bytes'] / (mpi / 1e3) / 1e9:.2f} GB/s = bytes / time), "
          f"pack + unpack copies {ar - mpi:.1f} ms")
    print(f"before it, the ranks waited {median_ms(pooled['2x1']['wait_s']):.1f} ms/step for each other "
          f"(median); MPI: {two['mpi'] or 'unknown'}; threads seen by the workers: " + ", ".join(
              f"{name} numba {runs[0]['numba_threads']} openblas {runs[0]['openblas_threads']}"
              for name, runs in results.items()))


if __name__ == "__main__":
    main()
