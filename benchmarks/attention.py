"""Sliding-window attention, forward + backward, float32: the Numba kernel (mini_llm/model/kernels.py,
O(T·W·D)) against the dense NumPy reference (mini_llm/model/attention.py, O(T²·D)).

    python benchmarks/attention.py                      # B=1, H=4, D=64, W=256, T = 512 .. 8192
    python benchmarks/attention.py --quick              # smoke run, a few seconds
    python benchmarks/attention.py --max_dense_T 4096   # skip dense where its (B, H, T, T) tensors get big

Both sides run through attention_forward / attention_backward (use_kernel=True / False), the
code path the model uses. For every T where dense runs, the two are first checked to agree
(max |kernel - dense| / max |dense| of out, dq, dk, dv); then each side is timed, median of
--repeats runs (dense: --dense_repeats, it is slow at large T). The two sides are timed in
separate blocks, not interleaved: for a while after a BLAS call, OpenBLAS's worker threads keep
spinning and take a core from the kernel's threads (on 2 cores that made the kernel 2x slower).
The load average is printed before and after: other work on the machine slows both sides.
Targets (from the issue): at T=4096 the kernel is >= 5x faster than dense, and the kernel's time
grows no more than 9x from T=1024 to T=8192 (linear in T would be 8x).
Dense at T=8192 holds several (B, H, T, T) float32 tensors of 1 GiB each (H=4): about 5 GiB.
"""
import argparse
import os
import sys
import time

import numba
import numpy as np

from mini_llm.model.attention import attention_backward, attention_forward


def fwd_bwd(q, k, v, dout, window, use_kernel):
    """One training step's worth of attention: forward, then backward."""
    out, cache = attention_forward(q, k, v, window, use_kernel=use_kernel)
    return (out,) + tuple(attention_backward(dout, cache))


def band_area(T, W):
    """(query, key) pairs inside the causal window: the work the kernel does grows with it."""
    return T * (T + 1) // 2 if T <= W else T * W - W * (W - 1) // 2


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


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
    parser.add_argument("--quick", action="store_true", help="smoke run: T 256 512, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.T, args.repeats, args.dense_repeats = [256, 512], 2, 2
    B, H, D, W = args.batch, args.heads, args.head_dim, args.window
    Hkv = args.kv_heads or H
    print(f"attention fwd+bwd, float32, B={B} H={H} Hkv={Hkv} D={D} W={W}, "
          f"numba threads {numba.get_num_threads()}, "
          f"median of {args.repeats} runs (dense: {args.dense_repeats})")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rng = np.random.default_rng(0)
    rows = {}
    for T in args.T:
        q = rng.standard_normal((B, T, H, D), dtype=np.float32)
        k, v = (rng.standard_normal((B, T, Hkv, D), dtype=np.float32) for _ in range(2))
        dout = rng.standard_normal((B, T, H, D), dtype=np.float32)
        dense_ms = None
        if T <= args.max_dense_T:
            dense_results = fwd_bwd(q, k, v, dout, W, False)          # warm-up, and the check
            kernel_results = fwd_bwd(q, k, v, dout, W, True)
            errors = [float(np.abs(a - b).max() / np.abs(b).max())
                      for a, b in zip(kernel_results, dense_results)]
            print(f"check T={T}: max rel err out {errors[0]:.1e}  dq {errors[1]:.1e}  "
                  f"dk {errors[2]:.1e}  dv {errors[3]:.1e}")
            if max(errors) > 1e-4:
                sys.exit(f"kernel and dense disagree at T={T} (max rel err {max(errors):.1e}): not timing")
            del dense_results
            dense_ms = median_ms(lambda: fwd_bwd(q, k, v, dout, W, False), args.dense_repeats)
        time.sleep(0.5)                   # let OpenBLAS's threads go idle (see the docstring)
        fwd_bwd(q, k, v, dout, W, True)                               # warm-up (and compile)
        rows[T] = (dense_ms, median_ms(lambda: fwd_bwd(q, k, v, dout, W, True), args.repeats))

    print(f"\n{'T':>6} | {'dense ms':>10} | {'kernel ms':>10} | {'speedup':>8}")
    for T, (dense_ms, kernel_ms) in rows.items():
        dense = f"{dense_ms:10.1f}" if dense_ms is not None else f"{'-':>10}"
        speedup = f"{dense_ms / kernel_ms:7.1f}x" if dense_ms is not None else f"{'-':>8}"
        print(f"{T:>6} | {dense} | {kernel_ms:10.1f} | {speedup}")
    if 1024 in rows and 8192 in rows:
        growth = rows[8192][1] / rows[1024][1]
        print(f"\nkernel growth T=1024 -> 8192: {growth:.2f}x (target <= 9x; the window band "
              f"grows {band_area(8192, W) / band_area(1024, W):.2f}x)")
    if 4096 in rows and rows[4096][0] is not None:
        print(f"speedup at T=4096: {rows[4096][0] / rows[4096][1]:.1f}x (target >= 5x)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
