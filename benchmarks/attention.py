"""Sliding-window attention, forward + backward, float32: the three paths of mini_llm/model/attention.py.
The dense reference (full (B, H, T, T) scores, O(T²·D)), the banded path (banded_attention.py:
query blocks of Q = --block rows, default_block's W // 2 clipped to 16..128, against their
Q + W - 1 keys, dense BLAS matmuls over the band only, O(T·(Q + W)·D), slices of heads on
separate threads), and the Numba kernel (kernels.py, O(T·W·D), no (T, W) probabilities kept).

    python benchmarks/attention.py                      # B=1, H=4, D=64, W=256, T = 512 .. 8192
    python benchmarks/attention.py --quick              # smoke run, a few seconds
    python benchmarks/attention.py --max_dense_T 4096   # skip dense where its (B, H, T, T) tensors get big
    python benchmarks/attention.py --block 256          # banded in query blocks of 256 (= W)
    python benchmarks/attention.py --threads 1 --batch 8 --T 256 --window 128   # the train-step shape

Dense and kernel run through attention_forward / attention_backward (use_kernel=False / True),
banded through banded_attention_forward / _backward, what attention_forward calls for use_kernel
None in training. First banded is checked against dense on an awkward shape (GQA, T not a
multiple of Q) to 1e-5. Then for every T where dense runs, kernel and banded are checked against
it (max |x - dense| / max |dense| of out, dq, dk, dv: kernel to 1e-4, banded to 1e-5); above
--max_dense_T banded is checked against the kernel. Then each is timed, median of --repeats runs
(dense: --dense_repeats, it is slow at large T). They are timed in separate blocks, not
interleaved: for a while after a BLAS call, OpenBLAS's worker threads keep spinning and take a
core from the kernel's threads (on 2 cores that made the kernel 2x slower), so the kernel's block
comes last, after a pause.
The load average is printed before and after: other work on the machine slows both sides.
Targets (from the issue): at T=4096 the kernel is >= 5x faster than dense, and the kernel's time
grows no more than 9x from T=1024 to T=8192 (linear in T would be 8x).
Dense at T=8192 holds several (B, H, T, T) float32 tensors of 1 GiB each (H=4): about 5 GiB.
"""
import argparse
import os
import sys
import time

import mini_llm  # noqa: F401  first: it puts its thread settings (mini_llm/threads.py) in the environment before NumPy loads
import numba
import numpy as np

from mini_llm import memory, threads
from mini_llm.model.attention import attention_backward, attention_forward
from mini_llm.model.banded_attention import banded_attention_backward, banded_attention_forward, default_block
from timing import median_seconds


def fwd_bwd(q, k, v, dout, window, use_kernel):
    """One training step's worth of attention: forward, then backward."""
    out, cache = attention_forward(q, k, v, window, use_kernel=use_kernel)
    return (out,) + tuple(attention_backward(dout, cache))


def banded_fwd_bwd(q, k, v, dout, window, block):
    out, cache = banded_attention_forward(q, k, v, window, block)
    return (out,) + banded_attention_backward(dout, cache)


def rel_errors(results, reference):
    """max |a - b| / max |b| of out, dq, dk, dv."""
    return [float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(results, reference)]


def check(label, results, reference, tolerance):
    errors = rel_errors(results, reference)
    print(f"check {label}: max rel err out {errors[0]:.1e}  dq {errors[1]:.1e}  dk {errors[2]:.1e}  dv {errors[3]:.1e}")
    if max(errors) > tolerance:
        sys.exit(f"{label}: max rel err {max(errors):.1e} > {tolerance:.0e}: not timing")


def check_banded_edges(W, Q, D, rng):
    """Banded against dense where blocks are awkward: GQA (2 query heads per kv head), B 2,
    T = 2W + 7 (a short last block), float32."""
    T = 2 * W + 7
    q, dout = (rng.standard_normal((2, T, 4, D), dtype=np.float32) for _ in range(2))
    k, v = (rng.standard_normal((2, T, 2, D), dtype=np.float32) for _ in range(2))
    check(f"banded vs dense, B=2 T={T} H=4 Hkv=2 (GQA, last block {T % Q or Q} rows)",
          banded_fwd_bwd(q, k, v, dout, W, Q), fwd_bwd(q, k, v, dout, W, False), 1e-5)


def band_area(T, W):
    """(query, key) pairs inside the causal window: the work the kernel does grows with it."""
    return T * (T + 1) // 2 if T <= W else T * W - W * (W - 1) // 2


def median_ms(fn, repeats):
    return 1e3 * median_seconds(fn, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--T", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192],
                        help="sequence lengths (default 512 1024 2048 4096 8192)")
    parser.add_argument("--batch", type=int, default=1, help="B (default 1)")
    parser.add_argument("--heads", type=int, default=4, help="H, query heads (default 4)")
    parser.add_argument("--kv_heads", type=int, default=None, help="Hkv (default: = heads)")
    parser.add_argument("--head_dim", type=int, default=64, help="D (default 64)")
    parser.add_argument("--window", type=int, default=256, help="W, sliding window (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (default 5)")
    parser.add_argument("--dense_repeats", type=int, default=3,
                        help="timed runs of dense (default 3)")
    parser.add_argument("--max_dense_T", type=int, default=8192,
                        help="skip dense above this T (default 8192)")
    parser.add_argument("--block", type=int, default=None,
                        help="banded: query rows per block (default: default_block, W // 2 in 16..128)")
    parser.add_argument("--quick", action="store_true", help="smoke run: T 256 512, 2 repeats")
    threads.add_flag(parser)
    args = parser.parse_args()
    try:
        threads.set_threads(args.threads)
    except ValueError as e:
        parser.error(str(e))
    memory.keep_freed_memory()           # no page faults from malloc handing blocks back (memory.py)
    if args.quick:
        args.T, args.repeats, args.dense_repeats = [256, 512], 2, 2
    B, H, D, W = args.batch, args.heads, args.head_dim, args.window
    Hkv = args.kv_heads or H
    Q = args.block or default_block(max(args.T), W)
    print(f"attention fwd+bwd, float32, B={B} H={H} Hkv={Hkv} D={D} W={W}, banded blocks Q={Q}, "
          f"numba threads {numba.get_num_threads()}, "
          f"median of {args.repeats} runs (dense: {args.dense_repeats})")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rng = np.random.default_rng(0)
    check_banded_edges(W, Q, D, rng)
    rows = {}
    for T in args.T:
        q = rng.standard_normal((B, T, H, D), dtype=np.float32)
        k, v = (rng.standard_normal((B, T, Hkv, D), dtype=np.float32) for _ in range(2))
        dout = rng.standard_normal((B, T, H, D), dtype=np.float32)
        dense_ms = None
        kernel_results = fwd_bwd(q, k, v, dout, W, True)              # warm-up (and compile), the checks
        banded_results = banded_fwd_bwd(q, k, v, dout, W, Q)
        if T <= args.max_dense_T:
            dense_results = fwd_bwd(q, k, v, dout, W, False)
            check(f"T={T}", kernel_results, dense_results, 1e-4)        # the kernel against dense
            check(f"banded T={T}", banded_results, dense_results, 1e-5)
            del dense_results
            dense_ms = median_ms(lambda: fwd_bwd(q, k, v, dout, W, False), args.dense_repeats)
        else:
            check(f"banded vs kernel T={T}", banded_results, kernel_results, 1e-4)
        del kernel_results, banded_results
        banded_ms = median_ms(lambda: banded_fwd_bwd(q, k, v, dout, W, Q), args.repeats)
        time.sleep(0.5)                   # let OpenBLAS's threads go idle (see the docstring)
        fwd_bwd(q, k, v, dout, W, True)
        rows[T] = (dense_ms, banded_ms, median_ms(lambda: fwd_bwd(q, k, v, dout, W, True), args.repeats))

    print(f"\n{'T':>6} | {'dense ms':>10} | {'kernel ms':>10} | {'speedup':>8}")
    for T, (dense_ms, _, kernel_ms) in rows.items():
        dense = f"{dense_ms:10.1f}" if dense_ms is not None else f"{'-':>10}"
        speedup = f"{dense_ms / kernel_ms:7.1f}x" if dense_ms is not None else f"{'-':>8}"
        print(f"{T:>6} | {dense} | {kernel_ms:10.1f} | {speedup}")
    print(f"\n{'T':>6} | {'banded ms':>10} | {'kernel ms':>10} | {'kernel vs banded':>16} | {'banded vs dense':>15}")
    for T, (dense_ms, banded_ms, kernel_ms) in rows.items():
        vs_dense = f"{dense_ms / banded_ms:14.1f}x" if dense_ms is not None else f"{'-':>15}"
        print(f"{T:>6} | {banded_ms:10.1f} | {kernel_ms:10.1f} | {banded_ms / kernel_ms:15.2f}x | {vs_dense}")
    print("(speedup, kernel vs banded: the other's time / the kernel's; banded vs dense: dense's / banded's; "
          "medians)")
    if 1024 in rows and 8192 in rows:
        growth = rows[8192][2] / rows[1024][2]
        print(f"\nkernel growth T=1024 -> 8192: {growth:.2f}x (target <= 9x; the window band "
              f"grows {band_area(8192, W) / band_area(1024, W):.2f}x)")
    if 4096 in rows and rows[4096][0] is not None:
        print(f"speedup at T=4096: {rows[4096][0] / rows[4096][2]:.1f}x (target >= 5x); "
              f"kernel vs banded: {rows[4096][1] / rows[4096][2]:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
