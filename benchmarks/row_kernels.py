"""The fused Numba kernels of mini_llm/model/row_kernels.py (and kernels.py's window softmax)
against their NumPy references, one training step's worth of each, float32, at the sizes of
benchmarks/train_step.py (B 8, T 256: N = 2048 rows; C 256, F 1024, V 8192, H 4, D 64; AdamW
over that model's 8.5 M parameters).

    python benchmarks/row_kernels.py                 # threads 1 and 2 (1 .. os.cpu_count())
    python benchmarks/row_kernels.py --threads 1,2,4 --repeats 9
    python benchmarks/row_kernels.py --quick         # smoke run: N = 256, 2 repeats

Each thread count runs in its own process (the parent starts `--worker N` children in turn), so
that NumPy's, OpenBLAS's and Numba's pools are sized before NumPy loads. In a child, each
operation's reference and kernel alternate, one call each, --repeats times; the table shows
medians and reference / kernel (the speed-up). The reference is the NumPy code in layers.py /
attention.py / optim.py run inside row_kernels.reference_only(): one thread whatever --threads.
Before timing, each kernel's output is checked against the reference (float32, rtol 1e-4).
"""
import argparse
import json
import os
import subprocess
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default=None,
                        help="comma-separated thread counts (default 1, 2, ... os.cpu_count())")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per side (default 7)")
    parser.add_argument("--quick", action="store_true", help="smoke run: N 256, 2 repeats")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.worker is not None:     # pools are sized when NumPy loads
    from mini_llm import threads
    threads.pin_environment(ARGS.worker)

import numpy as np  # noqa: E402

from mini_llm import optim  # noqa: E402
from mini_llm.model import attention, layers, row_kernels, window  # noqa: E402
from mini_llm.model.config import TransformerConfig, param_shapes  # noqa: E402

C, F, V, H, D = 256, 1024, 8192, 4, 64


def cases(N):
    """{name: (function of kernels on/off, what it returns to compare)}: one op, fwd + bwd."""
    r = np.random.default_rng(0)
    f32 = lambda *shape: r.standard_normal(shape, dtype=np.float32)   # noqa: E731
    x, w, dx = f32(N, C), f32(C), f32(N, C)
    gate, up, dh = f32(N, F), f32(N, F), f32(N, F)
    B, T = max(N // 256, 1), min(N, 256)                              # N = B * T positions
    q, dq = f32(B, T, H, D), f32(B, T, H, D)
    cos, sin = attention.rope_cos_sin(T, D, 10000.0, np.float32)
    logits, targets = 3 * f32(B, T, V), r.integers(0, V, size=(B, T))
    scores, dscores = 3 * f32(B, H, T, T), f32(B, H, T, T)
    config = TransformerConfig(vocab_size=V, hidden_size=C, num_layers=4, num_heads=H, num_kv_heads=H,
                               intermediate_size=F, max_seq_length=256)
    params = {n: f32(*s) for n, s in param_shapes(config).items()}
    grads = {n: f32(*s) for n, s in param_shapes(config).items()}
    moments = {n: (np.zeros_like(p), np.zeros_like(p)) for n, p in params.items()}

    def rmsnorm():
        y, cache = layers.rmsnorm_forward(x, w, 1e-6)
        return (y,) + layers.rmsnorm_backward(dx, cache)

    def swiglu_product():
        h, cache = layers.swiglu_product_forward(gate, up)
        return (h,) + layers.swiglu_product_backward(dh, cache)

    def rope():
        y, cache = attention.rope_forward(q, cos, sin)
        return y, attention.rope_backward(dq, cache)

    def attention_softmax():        # the dense attention path's: scale, causal mask W = T / 2, softmax
        p = window.window_softmax(scores, 1 / np.sqrt(D), T // 2)      # (B, H, T, T) scores
        return p, layers.softmax_backward(dscores, p)

    def cross_entropy():
        loss, cache = layers.cross_entropy_forward(logits, targets)
        return loss, layers.cross_entropy_backward(1.0, cache)

    def adamw():                    # the same step every call: t = 1 from fresh copies
        out = []
        for n, p in params.items():
            p, (m, v) = p.copy(), (a.copy() for a in moments[n])
            optim.adamw_update(p, grads[n], m, v, 3e-4, 0.9, 0.95, 1e-8, 0.1, 1)
            out.append(p)
        return tuple(out)

    return {f"RMSNorm (N, C={C})": rmsnorm, f"SwiGLU product (N, F={F})": swiglu_product,
            f"RoPE (N, H={H}, D={D})": rope, f"window softmax (N, H={H}, T={T})": attention_softmax,
            f"cross-entropy (N, V={V})": cross_entropy,
            "AdamW, 8.5 M params (incl. copies)": adamw}


def run(fn, kernels):
    if kernels:
        return fn()
    with row_kernels.reference_only():
        return fn()


def worker(threads, repeats, N):
    """Time every case in this process; print one JSON line {name: [ref_s, kernel_s]}."""
    result = {}
    for name, fn in cases(N).items():
        for got, want in zip(run(fn, True), run(fn, False)):      # also compiles / warms up
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
        times = ([], [])
        for _ in range(repeats):
            for side, kernels in ((0, False), (1, True)):
                start = time.perf_counter()
                run(fn, kernels)
                times[side].append(time.perf_counter() - start)
        result[name] = [float(np.median(t)) for t in times]
    print(json.dumps(result))


def main():
    args = ARGS
    N, repeats = (256, 2) if args.quick else (2048, args.repeats)
    if args.worker is not None:
        return worker(args.worker, repeats, N)
    counts = [int(t) for t in args.threads.split(",")] if args.threads else list(range(1, os.cpu_count() + 1))
    print(f"row kernels vs NumPy references, float32, N = {N} rows; fwd + bwd per call; median of "
          f"{repeats}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    table = {}
    for threads in counts:
        out = subprocess.run([sys.executable, __file__, "--worker", str(threads), "--repeats", str(args.repeats)]
                             + (["--quick"] if args.quick else []), capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"worker with {threads} threads failed:\n{out.stderr[-2000:]}")
        table[threads] = json.loads(out.stdout.strip().splitlines()[-1])
    names = list(table[counts[0]])
    head = " | ".join(f"{t} thr: kernel ms | speed-up" for t in counts)
    print(f"\n| operation | NumPy ms (1 thr) | {head} |")
    print("|---|---|" + "---|---|" * len(counts))
    for name in names:
        ref_ms = 1e3 * float(np.median([table[t][name][0] for t in counts]))
        cells = " | ".join(f"{1e3 * table[t][name][1]:.1f} | {table[t][name][0] / table[t][name][1]:.2f}x"
                           for t in counts)
        print(f"| {name} | {ref_ms:.1f} | {cells} |")
    print(f"\n(speed-up = reference / kernel in the same process; load average now "
          f"{os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
