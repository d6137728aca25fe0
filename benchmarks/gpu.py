"""GPU benchmarks, for a machine with an NVIDIA GPU and CuPy (written for the H200 device machine).

    python benchmarks/gpu.py                 # the full run (a few minutes on an H200)
    python benchmarks/gpu.py --quick         # smoke run: a small model, short sequences
    python benchmarks/gpu.py --tf32          # let float32 matmuls use TF32 tensor cores, both sides
    python benchmarks/gpu.py --skip_torch    # MiniTransformer only

NOT YET RUN: written on a machine without a GPU. Exits with one line when CuPy sees no GPU.

(a) Training step, float32: MiniTransformer on CuPy against the same Mistral decoder in PyTorch
    eager (torch ops, F.scaled_dot_product_attention with a band mask, torch.optim.AdamW), loaded
    with our weights as in benchmarks/train_step.py. Config: vocab 32000, hidden 768, 12 layers,
    12 heads (12 kv heads), intermediate 3072, sequence 1024, batch 16, sliding window 512.
    A step = forward + cross-entropy + backward + AdamW (train_step.py's settings). Before
    timing, both train 3 steps from the same weights on the same batch and their losses must
    agree (1e-4; 1e-2 with TF32, whose matmuls keep 10 mantissa bits). Ours runs twice when it
    can: with attention.py's dense reference (use_kernel=False) and with the GPU kernel
    (use_kernel=True), which works once attention_forward sends CuPy arrays to gpu_kernels.
(b) Sliding-window attention, forward + backward, float32, B=1, H=12, D=64, W=512, T=8192:
    gpu_kernels against the dense CuPy reference (attention_reference_forward / _backward,
    what attention_forward(use_kernel=False) runs), checked to agree first.
(c) Share of measured matmul throughput: train_step.py's FLOPs count per step over (step time x
    the rate of an 8192^3 CuPy float32 matmul measured in the same run, same TF32 setting); a
    share of what this GPU's matmul reached, not of its peak.
(d) The fused elementwise kernels against the layers.py / optim.py array code on CuPy, at the
    training step's shapes, checked to agree first.

TF32: CuPy reads CUPY_TF32 at its first float32 matmul, so this script sets it (to 1 with
--tf32, else 0) before importing anything; PyTorch gets torch.backends.cuda.matmul.allow_tf32
and torch.backends.cudnn.allow_tf32. The header line prints both settings.
Timing: each step or call is bracketed by device synchronisations; warm-up calls (which also
compile the CUDA kernels) are not timed; tables show medians; steps alternate between
frameworks so that a slow patch of the machine hits both.
"""
import argparse
import os
import sys
import time

from mini_llm import threads                     # imports no NumPy: pools are sized before it loads


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per row (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per cell in (b), (d) (default 10)")
    parser.add_argument("--T", type=int, nargs="+", default=[1024, 8192], help="attention lengths for (b)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (default: strict float32)")
    parser.add_argument("--skip_torch", action="store_true", help="no PyTorch rows")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, T 1024, 2 steps")
    threads.add_flag(parser)                     # the CPU side: PyTorch's and NumPy's host work
    return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["CUPY_TF32"] = "1" if ARGS.tf32 else "0"
    threads.pin_environment(ARGS.threads or threads.available_cores())

import numpy as np  # noqa: E402

from mini_llm import backend  # noqa: E402
from mini_llm.model import attention, gpu_kernels, layers  # noqa: E402
from mini_llm.model.transformer import MiniTransformer, TransformerConfig  # noqa: E402
from mini_llm.optim import AdamW  # noqa: E402
from train_step_worker import OPTIM, band_area, flops_per_step, ours_step_fn, torch_model, torch_step_fn  # noqa: E402

CONFIG = dict(vocab_size=32000, hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12,
              intermediate_size=3072, max_seq_length=1024, sliding_window=512)
SEQ, BATCH = 1024, 16
QUICK_CONFIG = dict(vocab_size=1024, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
                    intermediate_size=512, max_seq_length=128, sliding_window=64)
QUICK_SEQ, QUICK_BATCH = 128, 2
ATTENTION = dict(B=1, H=12, D=64, W=512)

# ---------------------------------------------------------------------------------------------
# Timing on the device


def synchronize(torch=None):
    import cupy
    cupy.cuda.Device().synchronize()
    if torch is not None:
        torch.cuda.synchronize()


def seconds(fn, torch=None):
    """Wall time of fn() with the device idle before and after."""
    synchronize(torch)
    start = time.perf_counter()
    fn()
    synchronize(torch)
    return time.perf_counter() - start


def median_ms(fn, repeats, torch=None):
    fn()                                                   # warm-up (and compile)
    return 1e3 * float(np.median([seconds(fn, torch) for _ in range(repeats)]))


def max_rel_error(a, b):
    a, b = backend.to_host(a).astype(np.float64), backend.to_host(b).astype(np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def free_memory(torch=None):
    import cupy
    cupy.get_default_memory_pool().free_all_blocks()
    if torch is not None:
        torch.cuda.empty_cache()


def matmul_tflops(n=8192, repeats=10):
    """Median rate of an n x n x n CuPy float32 matmul, in TFLOP/s (TF32 as CUPY_TF32 says)."""
    import cupy
    rng = cupy.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=cupy.float32) for _ in range(2))
    return 2 * n ** 3 / (median_ms(lambda: a @ b, repeats) / 1e3) / 1e12


# ---------------------------------------------------------------------------------------------
# (a) The same model in PyTorch: train_step.py's torch_model, built on the GPU


def train_step_rows(args, torch, config, seq, batch):
    """(a) and (c): {row name: median seconds per step}, after checking the losses agree."""
    import cupy
    ids = np.random.default_rng(0).integers(0, config.vocab_size, size=(batch, seq + 1))
    steps = {}
    for name, use_kernel in (("MiniTransformer, dense attention", False),
                             ("MiniTransformer, GPU attention kernel", True)):
        model = MiniTransformer(config, seed=0, dtype=np.float32)
        model.use_kernel = use_kernel
        steps[name] = ours_step_fn(model, AdamW(model.params, **OPTIM), cupy.asarray(ids))
    if torch is not None:
        model = MiniTransformer(config, seed=0, dtype=np.float32)   # the same initial weights
        steps["PyTorch eager"] = torch_step_fn(torch, torch_model(torch, model.params, config, seq, "cuda"),
                                               ids, "cuda")
        del model

    losses = {}
    for name in list(steps):                   # 3 steps each from the same weights: the check
        try:
            losses[name] = [steps[name]() for _ in range(3)]
        except ValueError as e:                # attention_forward refuses use_kernel=True on CuPy
            print(f"{name}: not run ({e})")
            del steps[name]
    print("check, loss over 3 steps: " + "; ".join(f"{n}: " + ", ".join(f"{x:.6f}" for x in ls)
                                                   for n, ls in losses.items()))
    tolerance = 1e-2 if args.tf32 else 1e-4
    first = next(iter(losses.values()))
    worst = max(abs(a - b) for ls in losses.values() for a, b in zip(ls, first))
    if worst > tolerance:
        sys.exit(f"losses differ by {worst:.1e} > {tolerance:.0e}: not timing")
    print(f"losses agree to {worst:.1e} (tolerance {tolerance:.0e})")
    for _ in range(max(0, args.warmup - 3)):                         # the check steps warmed up
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            times[name].append(seconds(step, torch))
    return {name: float(np.median(t)) for name, t in times.items()}


def print_train_table(medians, flops, tflops, tokens):
    base = medians.get("PyTorch eager")
    share = "share of measured matmul (GPU)"
    print(f"\n{'framework':<38} | {'ms/step':>9} | {'tokens/s':>9} | {'vs PyTorch':>10} | {share}")
    for name, sec in medians.items():
        ratio = f"{base / sec:9.2f}x" if base else f"{'-':>10}"
        print(f"{name:<38} | {1e3 * sec:9.1f} | {tokens / sec:9.0f} | {ratio} | "
              f"{100 * flops / sec / (tflops * 1e12):{len(share) - 1}.1f}%")


# ---------------------------------------------------------------------------------------------
# (b) Sliding-window attention: GPU kernel against the dense CuPy reference


def attention_rows(args):
    import cupy
    B, H, D, W = ATTENTION["B"], ATTENTION["H"], ATTENTION["D"], ATTENTION["W"]
    tolerance = 1e-2 if args.tf32 else 1e-4          # the dense reference's matmuls may be TF32

    def kernel(q, k, v, dout):
        out, lse = gpu_kernels.sliding_window_attention_forward(q, k, v, W)
        return (out,) + gpu_kernels.sliding_window_attention_backward(dout, q, k, v, out, lse, W)

    def dense(q, k, v, dout):
        out, cache = attention.attention_reference_forward(q, k, v, W)
        return (out,) + tuple(attention.attention_reference_backward(dout, cache))

    rows = {}
    rng = cupy.random.default_rng(0)
    for T in args.T:
        q, k, v, dout = (rng.standard_normal((B, T, H, D), dtype=cupy.float32) for _ in range(4))
        errors = [max_rel_error(a, b) for a, b in zip(kernel(q, k, v, dout), dense(q, k, v, dout))]
        print(f"check T={T}: max rel err out {errors[0]:.1e}  dq {errors[1]:.1e}  "
              f"dk {errors[2]:.1e}  dv {errors[3]:.1e}")
        if max(errors) > tolerance:
            sys.exit(f"kernel and dense disagree at T={T} ({max(errors):.1e} > {tolerance:.0e}): not timing")
        free_memory()
        rows[T] = (median_ms(lambda: dense(q, k, v, dout), args.repeats),
                   median_ms(lambda: kernel(q, k, v, dout), args.repeats))
        free_memory()
    print(f"\nattention fwd+bwd, float32, B={B} H={H} D={D} W={W}, median of {args.repeats}")
    print(f"{'T':>6} | {'dense ms':>9} | {'kernel ms':>9} | {'speedup':>8} | {'kernel TFLOP/s':>14}")
    for T, (dense_ms, kernel_ms) in rows.items():
        useful = 12 * B * band_area(T, W) * H * D        # 4 in forward, 8 in backward, per pair
        print(f"{T:>6} | {dense_ms:9.2f} | {kernel_ms:9.2f} | {dense_ms / kernel_ms:7.1f}x | "
              f"{useful / (kernel_ms / 1e3) / 1e12:14.2f}")


# ---------------------------------------------------------------------------------------------
# (d) Fused elementwise kernels against the layers.py / optim.py array code


def fused_rows(args, config, seq, batch):
    import cupy
    rng = cupy.random.default_rng(1)
    N, C, F = batch * seq, config.hidden_size, config.intermediate_size
    x, dy = (rng.standard_normal((batch, seq, C), dtype=cupy.float32) for _ in range(2))
    gate, up, dh = (rng.standard_normal((N, F), dtype=cupy.float32) for _ in range(3))
    w = cupy.ones(C, cupy.float32)

    def swiglu_layers():
        act, cache = layers.silu_forward(gate)
        h = act * up
        return h, layers.silu_backward(dh * up, cache), dh * act

    def swiglu_fused():
        h, cache = gpu_kernels.swiglu_product_forward(gate, up)
        return (h,) + gpu_kernels.swiglu_product_backward(dh, cache)

    def rmsnorm_with(module):
        y, cache = module.rmsnorm_forward(x, w, config.norm_eps)
        return (y,) + tuple(module.rmsnorm_backward(dy, cache))

    model = MiniTransformer(config, seed=0, dtype=np.float32)
    grads = {n: rng.standard_normal(p.shape, dtype=cupy.float32) for n, p in model.params.items()}
    optimizer = AdamW(model.params, **OPTIM)
    fused_state = AdamW(model.params, **OPTIM)      # holds the fused path's moments and step count

    def adamw_fused():
        fused_state.t += 1
        for n, p in model.params.items():
            wd = OPTIM["weight_decay"] if fused_state.decay[n] else 0.0
            gpu_kernels.adamw_update(p, grads[n], fused_state.m[n], fused_state.v[n], OPTIM["lr"],
                                     *OPTIM["betas"], OPTIM["eps"], wd, fused_state.t)

    # AdamW updates in place: compare one step of each from the same parameters and zero moments
    start = {n: p.copy() for n, p in model.params.items()}
    optimizer.step(model.params, grads)
    expected = {n: p.copy() for n, p in model.params.items()}
    for n, p in model.params.items():
        p[...] = start[n]
    adamw_fused()
    adamw_error = max(max_rel_error(model.params[n] - start[n], expected[n] - start[n]) for n in start)
    del start, expected

    cases = {   # name: (array code, fused kernels)
        f"SiLU fwd+bwd ({N}, {F})": (
            lambda: layers.silu_backward(dh, layers.silu_forward(gate)[1]),
            lambda: gpu_kernels.silu_backward(dh, gpu_kernels.silu_forward(gate)[1])),
        f"SwiGLU product fwd+bwd ({N}, {F})": (swiglu_layers, swiglu_fused),
        f"RMSNorm fwd+bwd ({batch}, {seq}, {C})": (lambda: rmsnorm_with(layers), lambda: rmsnorm_with(gpu_kernels)),
        f"AdamW step, {model.num_parameters():,} params": (
            lambda: optimizer.step(model.params, grads), adamw_fused),
    }
    print(f"\n(d) fused elementwise kernels against the array code (layers.py, optim.py) on CuPy, "
          f"float32, median of {args.repeats}; AdamW's error is on the update p - p_before")
    print(f"{'op':<44} | {'arrays ms':>9} | {'fused ms':>9} | {'speedup':>8} | {'max rel err':>11}")
    for name, (reference, fused) in cases.items():
        error = adamw_error if name.startswith("AdamW") else max(
            max_rel_error(a, b) for a, b in zip(fused(), reference()))
        if error > 1e-4:
            sys.exit(f"{name}: fused and array code disagree ({error:.1e} > 1e-4): not timing")
        ref_ms, fused_ms = median_ms(reference, args.repeats), median_ms(fused, args.repeats)
        print(f"{name:<44} | {ref_ms:9.2f} | {fused_ms:9.2f} | {ref_ms / fused_ms:7.1f}x | {error:11.1e}")


# ---------------------------------------------------------------------------------------------


def main():
    args = ARGS
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() == 0:
            raise RuntimeError("no device")
    except Exception as e:
        sys.exit(f"benchmarks/gpu.py needs a GPU visible to CuPy (pip install cupy-cuda12x): {e}")
    backend.set_device("gpu")
    torch = None
    if not args.skip_torch:
        try:
            import torch
        except ImportError:
            print("no PyTorch installed: MiniTransformer rows only")
        if torch is not None and not torch.cuda.is_available():
            print("PyTorch sees no GPU: MiniTransformer rows only")
            torch = None
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.manual_seed(0)
    config = TransformerConfig(**(QUICK_CONFIG if args.quick else CONFIG))
    seq, batch = (QUICK_SEQ, QUICK_BATCH) if args.quick else (SEQ, BATCH)
    if args.quick:
        args.steps, args.warmup, args.repeats, args.T = 2, 1, 3, [1024]

    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"{name}; CuPy {cupy.__version__} (CUPY_TF32={os.environ['CUPY_TF32']})"
          + (f"; PyTorch {torch.__version__} (allow_tf32={torch.backends.cuda.matmul.allow_tf32})"
             if torch is not None else ""))
    tflops = matmul_tflops()
    print(f"CuPy float32 matmul 8192^3: {tflops:.1f} TFLOP/s (TF32 {'on' if args.tf32 else 'off'})")

    print(f"\n(a) train step, float32, B={batch} T={seq} V={config.vocab_size} C={config.hidden_size} "
          f"L={config.num_layers} H={config.num_heads} Hkv={config.num_kv_heads} "
          f"F={config.intermediate_size} W={config.sliding_window}")
    medians = train_step_rows(args, torch, config, seq, batch)
    model = MiniTransformer(config, seed=0, dtype=np.float32)
    flops, n_matmul = flops_per_step(model.params, config, batch, seq)
    del model
    free_memory(torch)
    print(f"(c) FLOPs/step = 6 * {n_matmul:,} * {batch * seq} + 12 * {config.num_layers} * {batch} * "
          f"{band_area(seq, config.sliding_window)} * {config.num_heads} * {config.head_dim} "
          f"= {flops / 1e9:.1f} GFLOP; share of the measured matmul rate above")
    print_train_table(medians, flops, tflops, batch * seq)

    print("\n(b) sliding-window attention")
    attention_rows(args)
    fused_rows(args, config, seq, batch)


if __name__ == "__main__":
    main()
