"""Which threading policy? One MiniTransformer training step under each way of running the
BLAS and Numba thread pools side by side (the choice mini_llm/threads.py makes).

    python benchmarks/threads.py                     # --threads 2 (os.cpu_count()), 3 rounds
    python benchmarks/threads.py --threads 4 --rounds 5
    python benchmarks/threads.py --quick             # smoke run: batch 1, 1 round

The step is benchmarks/train_step.py's, from benchmarks/train_step_worker.py (vocab 8192, hidden 256, 4 layers, seq 256, batch 8,
window 128, float32, AdamW). Each policy runs in its own process, with its settings in the
environment before NumPy loads; the processes take turns (policy 1, 2, ..., 1, 2, ...) for
--rounds rounds, 2 warm-up then --steps timed steps each; the table shows the median over all
rounds and the ratio to the 1-thread run. Policies:
  library defaults   what NumPy and Numba do alone: OpenBLAS threads spin ~2^28 cycles after a
                     matmul; Numba's OpenMP layer (its default here), whose threads spin too
  OpenBLAS timeout   OPENBLAS_THREAD_TIMEOUT=4: OpenBLAS threads sleep after 2^4 cycles
  workqueue          NUMBA_THREADING_LAYER=workqueue: Numba's idle threads sleep (but two
                     Python threads launching kernels at once abort the process)
  workqueue + timeout  both of the above
  the policy         OpenBLAS timeout + OMP_WAIT_POLICY=passive: OpenMP threads sleep at once;
                     Numba's default layer (mini_llm/threads.py)
"""
import argparse
import json
import os
import subprocess
import sys
import time

from mini_llm.threads import POOL_SIZE_VARIABLES     # imports no NumPy: the children size their pools

POLICIES = {
    "1 thread (the policy)": (1, {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "passive"}),
    "library defaults": (None, {"OPENBLAS_THREAD_TIMEOUT": "0", "NUMBA_THREADING_LAYER": "omp"}),
    "OpenBLAS timeout": (None, {"OPENBLAS_THREAD_TIMEOUT": "4", "NUMBA_THREADING_LAYER": "omp"}),
    "workqueue": (None, {"OPENBLAS_THREAD_TIMEOUT": "0", "NUMBA_THREADING_LAYER": "workqueue"}),
    "workqueue + timeout": (None, {"OPENBLAS_THREAD_TIMEOUT": "4", "NUMBA_THREADING_LAYER": "workqueue"}),
    "the policy": (None, {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "passive"}),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of every pool (default: all cores)")
    p.add_argument("--rounds", type=int, default=3, help="turns of every policy (default 3)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per turn (default 3)")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 1, 1 round, 1 step")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def worker(args):
    """One policy's turn: the environment is set already; print the step times as JSON."""
    import numpy as np

    from mini_llm import memory, threads
    from mini_llm.model.transformer import MiniTransformer, TransformerConfig
    from mini_llm.optim import AdamW
    from train_step_worker import BATCH, CONFIG, OPTIM, SEQ, ours_step_fn   # the same step
    threads.set_threads(args.threads)
    memory.keep_freed_memory()                    # every policy with train.py's allocator policy
    config = TransformerConfig(**CONFIG)
    model = MiniTransformer(config, seed=0)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, size=(1 if args.quick else BATCH, SEQ + 1))
    step = ours_step_fn(model, AdamW(model.params, **OPTIM), ids)
    times = []
    for k in range(2 + args.steps):
        start = time.perf_counter()
        step()
        if k >= 2:
            times.append(time.perf_counter() - start)
    print(json.dumps({"times": times, "pools": threads.describe()}))


def run_policy(name, args):
    threads, settings = POLICIES[name]
    threads = threads or args.threads
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "NUMBA_THREADING_LAYER")}
    env.update(settings)
    env.update({var: str(threads) for var in POOL_SIZE_VARIABLES})
    command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--steps", str(args.steps)]
    out = subprocess.run(command + (["--quick"] if args.quick else []), env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{name}: the worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    args = parse_args()
    if args.worker:
        return worker(args)
    import numpy as np
    rounds, args.steps = (1, 1) if args.quick else (args.rounds, args.steps)
    print(f"one training step per policy, --threads {args.threads}, {rounds} rounds x {args.steps} "
          f"steps; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    times, pools = {name: [] for name in POLICIES}, {}
    for _ in range(rounds):
        for name in POLICIES:
            result = run_policy(name, args)
            times[name] += result["times"]
            pools[name] = result["pools"]
    base = float(np.median(times["1 thread (the policy)"]))
    print("\n| policy | ms/step (median) | speed-up vs 1 thread | pools |")
    print("|---|---|---|---|")
    for name, t in times.items():
        ms = 1e3 * float(np.median(t))
        print(f"| {name} | {ms:.0f} | {base * 1e3 / ms:.2f}x | {pools[name]} |")
    print(f"\n(load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
