"""One training step of MiniTransformer against the same model in PyTorch eager, on the CPU, each
framework in its own process, at 1, 2, 4, ... threads.

    python benchmarks/train_step.py                    # threads 1, 2, 4, .. up to all cores, 3 rounds
    python benchmarks/train_step.py --threads 1,2      # just these thread counts
    python benchmarks/train_step.py --quick            # smoke run: batch 2, 1 thread, 1 round, 2 timed steps
    python benchmarks/train_step.py --worker ours --threads 2   # one worker alone (prints its JSON line)

A step = forward + cross-entropy + backward + AdamW update (lr 3e-4, betas (0.9, 0.95), weight
decay 0.1 on 2-D weights but the embedding), float32, config: vocab 8192, hidden 256, 4 layers,
4 heads (4 kv heads), intermediate 1024, sequence 256, batch 8, sliding window 128.
PyTorch runs a small Mistral module written with torch ops (F.scaled_dot_product_attention with
a band mask, torch.optim.AdamW), loaded with our weights (benchmarks/train_step_worker.py).

Processes: --rounds rounds, each of: for every thread count N, our worker, then PyTorch's worker
(so a slow spell of the shared machine hits every thread count, not just one), each
a fresh `python benchmarks/train_step.py --worker ours|torch --threads N` whose environment has
OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = MKL_NUM_THREADS = NUMBA_NUM_THREADS = N before it
imports NumPy; ours also with the library's spin settings (mini_llm/threads.py) and its
allocator policy (mini_llm/memory.py: freed memory kept for the next step), as train.py runs;
PyTorch without them (its OpenMP pool spins by default, as its users run it). So one
framework's thread pool never spins while the other computes, and a slow patch of the machine
hits both (alternating rounds). A worker: builds the model from seed 0,
trains 3 steps on the same batch (the loss check; also the warm-up), --warmup more untimed
steps, then --steps timed ones. The tables show medians over all rounds' timed steps.
Correctness: the 3 losses of every worker, ours and PyTorch's, must agree to 1e-4; the parent
compares them after the first round, and again at the end, before it prints any time.

Memory: peak resident set (ru_maxrss) of each worker after its timed steps, beside its resident
set before the model was built (imports only). The PyTorch worker builds our model as well, for
its weights, so its peak includes our float32 parameters.

Share of measured matmul throughput (column "share of measured matmul (N thr)")
= model FLOPs per step / (step time * measured matmul rate): how close a step comes to the rate
this machine's np.matmul reaches with the same threads, not to the hardware's peak:
    FLOPs/step = 6 * N * B*T  +  12 * L * B * band(T, W) * H * D
N: parameters that multiply activations (every weight matrix; not the embedding, a lookup, nor
norm weights); 6 = 2 (multiply-add) * 3 (forward, and two matmuls in backward). The attention
term counts q·k and p·v over the query-key pairs inside the window (band(T, W) of them per
sequence and head: 2 * 2 in forward, twice that in backward). The matmul rate is a 2048x2048
float32 np.matmul timed in our first worker at each thread count.

Our first worker at each thread count then also measures (after its timed steps and memory):
  - the real training-loop step (training/loop.py's train, what train.py runs, timed by the loop
    itself): gradient clipping at 1.0, then clipping plus the KL to one mock teacher (the shape
    of training/mock.py's stand-in, twice as wide and deep; untrained weights cost the same).
    Ours only: PyTorch has no equivalent here.
  - the profile of one of our steps, by wrapping the library's layer functions with timers
    (the worker patches the module attributes; the library is not edited). Time is exclusive: a
    matmul inside SwiGLU counts for "swiglu matmuls", not for the SwiGLU wrapper as well.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
from statistics import median

from mini_llm import threads as thread_policy    # imports no NumPy: the workers size their own pools


def default_threads():
    """1, 2, 4, ... up to the cores this process may use (os.cpu_count() without an affinity mask)."""
    n, counts = thread_policy.available_cores(), [1]
    while counts[-1] * 2 < n:
        counts.append(counts[-1] * 2)
    return counts + [n] if n > 1 else counts


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default=None,
                        help="thread counts, e.g. 1,2 (default 1, 2, 4, .. every core; --quick: 1)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per framework and thread count (default 3)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the 3 check steps (default 1)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 8; --quick: 2)")
    parser.add_argument("--profile_steps", type=int, default=3, help="profiled steps of ours (default 3)")
    parser.add_argument("--loop_steps", type=int, default=3,
                        help="train() steps each, clip and clip + teacher; the first untimed (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2, threads 1, 1 round, "
                                                             "1 warm-up (a check step), 2 timed steps")
    parser.add_argument("--worker", choices=("ours", "torch"), help="run one worker (what the parent starts)")
    parser.add_argument("--extras", action="store_true", help="with --worker ours: also the matmul rate, "
                                                              "the profile and the loop steps")
    args = parser.parse_args()
    if args.loop_steps < 2 or args.profile_steps < 1:
        parser.error("--loop_steps must be >= 2 (the first is untimed), --profile_steps >= 1")
    if args.quick:
        args.rounds, args.steps, args.warmup, args.profile_steps, args.loop_steps = 1, 2, 0, 1, 2
    args.batch = args.batch or (2 if args.quick else 8)
    args.threads = [int(n) for n in args.threads.split(",")] if args.threads else (
        [1] if args.quick else default_threads())
    return args


# ---------------------------------------------------------------------------------------------
# The parent: start the workers, check their losses, print the tables


def start_worker(framework, threads, args, extras):
    """Run one worker process with its thread pools sized by the environment; its JSON line."""
    env = thread_policy.child_environment(threads, spin=framework == "ours")  # torch: its own defaults
    cmd = [sys.executable, __file__, "--worker", framework, "--threads", str(threads),
           "--batch", str(args.batch), "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--profile_steps", str(args.profile_steps), "--loop_steps", str(args.loop_steps)]
    cmd += ["--extras"] if extras else []
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)   # stderr: ours
    if result.returncode:
        sys.exit(f"worker {framework} at {threads} threads failed (exit {result.returncode}): {' '.join(cmd)}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_losses(runs, threads):
    """Every worker's 3 losses against our first worker's; exits when any differs by > 1e-4."""
    ref = runs["ours"][0]["losses"]
    theirs = runs["torch"][0]["losses"] if runs["torch"] else None
    workers = [r for rs in runs.values() for r in rs]
    worst = max(abs(a - b) for r in workers for a, b in zip(r["losses"], ref))
    pairs = ", ".join(f"{a:.6f} / {b:.6f}" for a, b in zip(ref, theirs)) if theirs else "no torch installed"
    print(f"check, loss ours / torch: {pairs}; {len(workers)} workers at {threads} thread(s), same "
          f"weights and batch  (max diff {worst:.1e})")
    if worst > 1e-4:
        sys.exit(f"losses differ by {worst:.1e} > 1e-4: not timing")


def thread_line(runs, threads, rounds):
    """What the first workers' pools report, and the load average while they ran."""
    first = {name: rs[0] for name, rs in runs.items() if rs}
    o = first["ours"]
    torch_part = f", torch {first['torch']['torch_threads']}" if "torch" in first else ", no torch installed"
    loads = [r[k] for rs in runs.values() for r in rs for k in ("load_before", "load_after")]
    return (f"\n--- {threads} thread(s), {rounds} round(s) ours / PyTorch, each a process; "
            f"threads {threads} (numba {o['numba_threads']}{torch_part}; pools: {o['pools'].removeprefix('threads: ')}); "
            f"ours: {o['memory']}; "
            f"load average {min(loads):.1f} .. {max(loads):.1f} on {os.cpu_count()} cores")


def step_seconds(rs):
    return median([s for r in rs for s in r["step_s"]])


def print_block(runs, threads, args):
    """The tables for one thread count: the two frameworks, our loop steps, our profile."""
    o = runs["ours"][0]
    tokens = o["tokens"]
    medians = {"MiniTransformer": step_seconds(runs["ours"])}
    if runs["torch"]:
        medians["PyTorch eager"] = step_seconds(runs["torch"])
    gflops = o["matmul_gflops"]
    print(f"FLOPs/step = {o['flops'] / 1e9:.2f} GFLOP (N = {o['matmul_params']:,} matmul parameters); "
          f"np.matmul 2048^3 float32 at {threads} thread(s): {gflops:.1f} GFLOP/s")
    base = medians.get("PyTorch eager")
    share = f"share of measured matmul ({threads} thr)"
    print(f"\n{'framework':<16} | {'ms/step (median)':>16} | {'tokens/s':>9} | {'ratio vs PyTorch':>16} | {share}")
    for name, sec in medians.items():
        ratio = f"{base / sec:15.2f}x" if base else f"{'-':>16}"
        print(f"{name:<16} | {1e3 * sec:16.1f} | {tokens / sec:9.0f} | {ratio} | "
              f"{100 * o['flops'] / sec / (gflops * 1e9):{len(share) - 1}.1f}%")
    loads = [r[k] for rs in runs.values() for r in rs for k in ("load_before", "load_after")]
    per_round = "; ".join(f"{fw} " + ", ".join(f"{1e3 * median(r['step_s']):.0f}" for r in runs[fw])
                          for fw in ("ours", "torch") if runs[fw])
    print(f"(median of {len(runs['ours'])} rounds x {args.steps} timed steps each; per-round medians, ms: "
          f"{per_round}; load average {min(loads):.1f} .. {max(loads):.1f}; ratio = tokens/s / PyTorch's; "
          f"target >= 0.8x)")

    bare = 1e3 * medians["MiniTransformer"]
    ratio = o["teacher_params"] / o["student_params"]
    print(f"\n{'MiniTransformer step (ours only: PyTorch has no train.py)':<62} | {'ms/step':>8} | vs bare step")
    for name, ms in (("bare step (above: forward, CE, backward, AdamW)", bare),
                     ("train.py's loop step: + grad-norm clip 1.0", median(o["loop_clip_ms"][1:])),
                     (f"  + KL to one mock teacher ({ratio:.1f}x the parameters)", median(o["loop_kd_ms"][1:]))):
        print(f"{name:<62} | {ms:8.1f} | {ms / bare:10.2f}x")
    print(f"(training/loop.py's train(), its own per-step ms, median of {len(o['loop_clip_ms']) - 1} after 1 "
          f"untimed, in one process; the teacher: training/mock.py's mock_teacher_config, CE weight 0.2, KL 0.8)")
    print_profile(o["profile"], o["profile_step_ms"], threads)


def print_profile(cells, step_ms, threads):
    rows = {name: {"fwd": 0.0, "bwd": 0.0} for name in ("attention (banded)", "attention (Numba kernel)",
                                                        "attention (dense reference)")}
    for row, phase, ms in cells:
        rows.setdefault(row, {"fwd": 0.0, "bwd": 0.0})[phase] += ms
    rows["other (residual adds, grads +=, reshapes, Python)"] = {"fwd": 0.0, "bwd": step_ms - sum(c[2] for c in cells)}
    rows = {name: rows[name] for name in sorted(rows, key=lambda r: -sum(rows[r].values()))}
    print(f"\nMiniTransformer at {threads} thread(s), one step = {step_ms:.1f} ms (median of the profiled steps; "
          f"each cell its own median; the 'bwd' column also holds zero_grad and the optimizer)")
    print(f"{'part':<52} | {'fwd ms':>8} | {'bwd ms':>8} | {'total ms':>8} | {'% step':>6}")
    for name, r in rows.items():
        total = r["fwd"] + r["bwd"]
        print(f"{name:<52} | {r['fwd']:8.1f} | {r['bwd']:8.1f} | {total:8.1f} | {100 * total / step_ms:5.1f}%")
    print("(attention: the path the library's dispatcher, attention_forward, took at this T and W; the other rows 0)")


def print_scaling(results):
    """One row per (thread count, framework): throughput, scaling, memory."""
    print(f"\n{'threads':>7} | {'framework':<16} | {'tokens/s':>9} | {'ratio vs PyTorch':>16} | "
          f"{'vs 1 thread':>11} | {'/ threads':>9} | {'RSS before model MiB':>20} | {'peak RSS MiB':>12}")
    for threads, runs in results.items():
        for name, fw in (("MiniTransformer", "ours"), ("PyTorch eager", "torch")):
            if not runs[fw]:
                continue
            tokens = runs["ours"][0]["tokens"]
            rate = tokens / step_seconds(runs[fw])
            theirs = tokens / step_seconds(runs["torch"]) if runs["torch"] else None
            one = tokens / step_seconds(results[1][fw]) if 1 in results else None
            ratio = f"{rate / theirs:15.2f}x" if theirs else f"{'-':>16}"
            speedup = f"{rate / one:10.2f}x" if one else f"{'-':>11}"
            efficiency = f"{100 * rate / one / threads:8.0f}%" if one else f"{'-':>9}"
            before = median(r["rss_before_mib"] for r in runs[fw])
            peak = median(r["peak_mib"] for r in runs[fw])
            print(f"{threads:>7} | {name:<16} | {rate:9.0f} | {ratio} | {speedup} | {efficiency} | "
                  f"{before:20.0f} | {peak:12.0f}")
    print("(vs 1 thread: tokens/s(N) / tokens/s(1) of the same framework; / threads: that over N, the "
          "scaling efficiency; RSS: medians over the workers, ru_maxrss after the timed steps)")


def main(args):
    has_torch = importlib.util.find_spec("torch") is not None
    print(f"train step, float32, MiniTransformer vs PyTorch eager, B={args.batch}; thread "
          f"counts {','.join(map(str, args.threads))}; {args.rounds} round(s) x (3 check + {args.warmup} "
          f"warm-up + {args.steps} timed steps) per framework and thread count; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    results = {threads: {"ours": [], "torch": []} for threads in args.threads}
    for round_ in range(args.rounds):     # each round visits every thread count: a slow spell hits all
        for threads, runs in results.items():
            runs["ours"].append(start_worker("ours", threads, args, extras=round_ == 0))
            if has_torch:
                runs["torch"].append(start_worker("torch", threads, args, extras=False))
            if round_ == 0:
                if threads == args.threads[0]:
                    print(f"model: {runs['ours'][0]['shape']}")
                check_losses(runs, threads)
    for threads, runs in results.items():
        print(thread_line(runs, threads, args.rounds))
        if args.rounds > 1:
            check_losses(runs, threads)
        print_block(runs, threads, args)
    print("\n--- scaling and memory, every thread count")
    print_scaling(results)


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.worker:                 # the pools are sized when NumPy and Numba load: set them first
        # ours with the library's spin settings (as train.py runs); torch as its users run it
        thread_policy.pin_environment(ARGS.threads[0], spin=ARGS.worker == "ours")
        import train_step_worker    # beside this script: `python benchmarks/X.py` puts benchmarks/ on the path
        train_step_worker.run(ARGS.worker, ARGS.threads[0], ARGS.batch, ARGS.warmup, ARGS.steps,
                              ARGS.profile_steps if ARGS.extras else 0, ARGS.loop_steps if ARGS.extras else 0)
    else:
        main(ARGS)
