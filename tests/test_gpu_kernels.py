"""The GPU kernels (mini_llm/model/gpu_kernels.py) against the NumPy references: sliding-window
attention forward, log-sum-exp and backward against attention.attention_reference_forward /
_backward, float64 (to rounding) and float32, over shapes that reach every branch (windows of
1, < T, >= T and None; GQA; several tiles of 64 rows; T not a multiple of the tile; a head_dim
that is not a multiple of 4); the fused SiLU, SwiGLU-product and RMSNorm kernels against
layers.py; the fused AdamW update against optim.AdamW over two steps.

The GPU tests are skipped unless CuPy sees a GPU. NOT YET RUN ON A GPU: this file was written on
a machine without one (see the Status note in gpu_kernels.py). Two kinds of test run without
one: the module imports and says clearly why it cannot run; and the attention kernels' CUDA C
source, compiled as C++ for the CPU (a thread block = ROWS std::threads meeting at a
std::barrier for __syncthreads), computes the reference's numbers. That emulation checks the
kernels' indexing, windows, GQA and online softmax; not CUDA itself (memory model, occupancy).
"""
import ctypes
import math
import shutil
import subprocess

import numpy as np
import pytest

from mini_llm.model import gpu_kernels, layers
from mini_llm.model.attention import attention_reference_backward, attention_reference_forward, window_mask
from mini_llm.optim import AdamW
from tests.test_kernels import TOLERANCE, random_inputs   # the Numba kernel's tests: same inputs, same bounds

try:
    import cupy
    HAS_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:                       # no cupy, no driver: the same as no GPU
    cupy, HAS_GPU = None, False


def needs_gpu(test):
    """Skip without a GPU, marked gpu: under CI=true only gpu tests may skip (conftest.py)."""
    return pytest.mark.gpu(pytest.mark.skipif(not HAS_GPU, reason="no GPU visible to CuPy")(test))


CASES = [  # (B, T, H, Hkv, D, W)
    (2, 37, 4, 2, 8, 5),       # GQA, window < T, one tile
    (1, 50, 2, 2, 8, 1),       # each token sees only itself
    (1, 20, 3, 1, 8, None),    # full causal, one kv head for three query heads
    (2, 33, 4, 4, 8, 40),      # window >= T: plain causal
    (1, 150, 2, 1, 64, 70),    # three tiles of 64 rows, the last one partial; W spans tiles
    (1, 67, 2, 2, 6, 64),      # D % 4 != 0; a tile of 3 rows after a full one
    (1, 130, 4, 2, 64, None),  # full causal across tiles, the model's head_dim
    (1, 64, 1, 1, 8, 17),      # T exactly one tile
    (1, 100, 2, 1, 8, 18),     # key 63 is last seen by query 80, the first row of a new chunk
    (1, 45, 2, 1, 256, 20),    # the largest head_dim: float64 stages 8 rows at a time, not 16
]
def assert_close(array, expected, rtol, name):
    """max |array - expected| / max |expected| < rtol, after checking shape and dtype (array:
    NumPy or CuPy)."""
    actual = array if isinstance(array, np.ndarray) else cupy.asnumpy(array)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    err = np.abs(actual.astype(np.float64) - expected).max() / max(np.abs(expected).max(), 1e-30)
    assert err < rtol, f"{name}: max rel error {err:.2e} >= {rtol:.0e}"


def reference_lse(q, k, window):
    """(B, T, H) float64: log Σ_j exp(q·k_j / sqrt(D)) over each query's window, in float64."""
    B, T, H, D = q.shape
    k = np.repeat(k, H // k.shape[2], axis=2).astype(np.float64)
    scores = np.einsum("bthd,bshd->bhts", q.astype(np.float64), k) / math.sqrt(D)    # (B, H, T, T)
    scores = np.where(window_mask(T, T, window), scores, -np.inf)
    m = scores.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(scores - m).sum(axis=-1, keepdims=True)))[..., 0]      # (B, H, T)
    return lse.transpose(0, 2, 1)


# ---------------------------------------------------------------------------------------------
# Without a GPU


@pytest.mark.gpu                 # it skips ON a GPU machine: a GPU skip all the same
@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU error; a GPU is present")
def test_without_a_gpu_the_module_imports_and_says_why_it_cannot_run():
    with pytest.raises(RuntimeError, match="gpu_kernels needs"):
        gpu_kernels.require_gpu()
    with pytest.raises(RuntimeError, match="gpu_kernels needs"):
        gpu_kernels.silu_forward(np.zeros(3))


# ---------------------------------------------------------------------------------------------
# Sliding-window attention


def check_attention(run, B, T, H, Hkv, D, W, dtype):
    """run(q, k, v, dout, W) -> out, lse, dq, dk, dv (any arrays) must match the reference."""
    q, k, v, dout = random_inputs(B, T, H, Hkv, D, dtype)
    out_ref, cache = attention_reference_forward(q, k, v, W)
    dq_ref, dk_ref, dv_ref = attention_reference_backward(dout, cache)
    out, lse, dq, dk, dv = run(q, k, v, dout, W)
    rtol = TOLERANCE[dtype]
    assert_close(out, out_ref, rtol, "out")
    assert_close(lse, reference_lse(q, k, W), rtol, "lse")
    # W=1: p = 1 whatever q and k are, so dq = dk = 0 (up to rounding: relative error is moot)
    for name, got, want in (("dq", dq, dq_ref), ("dk", dk, dk_ref), ("dv", dv, dv_ref)):
        if W == 1 and name != "dv":
            assert float(abs(got).max()) < rtol and np.abs(want).max() < rtol, name
        else:
            assert_close(got, want, rtol, name)


def run_on_gpu(q, k, v, dout, W):
    q, k, v, dout = (cupy.asarray(a) for a in (q, k, v, dout))
    out, lse = gpu_kernels.sliding_window_attention_forward(q, k, v, W)
    return (out, lse) + gpu_kernels.sliding_window_attention_backward(dout, q, k, v, out, lse, W)


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B, T, H, Hkv, D, W", CASES)
def test_attention_matches_reference(B, T, H, Hkv, D, W, dtype):
    check_attention(run_on_gpu, B, T, H, Hkv, D, W, dtype)


@needs_gpu
def test_attention_takes_non_contiguous_inputs():
    q, k, v, dout = random_inputs(2, 40, 4, 2, 8, np.float64, seed=1)
    # the same values, laid out (B, H, T, D) in memory and viewed as (B, T, H, D)
    q_t, k_t, v_t, dout_t = (cupy.asarray(np.ascontiguousarray(a.transpose(0, 2, 1, 3))).transpose(0, 2, 1, 3)
                             for a in (q, k, v, dout))
    assert not q_t.flags.c_contiguous
    out, lse = gpu_kernels.sliding_window_attention_forward(q_t, k_t, v_t, 6)
    grads = gpu_kernels.sliding_window_attention_backward(dout_t, q_t, k_t, v_t, out, lse, 6)
    out_ref, cache = attention_reference_forward(q, k, v, 6)
    assert_close(out, out_ref, 1e-10, "out")
    for name, got, want in zip(("dq", "dk", "dv"), grads, attention_reference_backward(dout, cache)):
        assert_close(got, want, 1e-10, name)


@needs_gpu
def test_attention_rejects_bad_input_with_one_line():
    q, k, v, _ = random_inputs(1, 8, 2, 1, 8, np.float64)
    with pytest.raises(ValueError, match="CuPy arrays"):
        gpu_kernels.sliding_window_attention_forward(q, k, v, 4)
    q_g, k_g, v_g = (cupy.asarray(a) for a in (q, k, v))
    with pytest.raises(ValueError, match="float32 or float64"):
        gpu_kernels.sliding_window_attention_forward(q_g.astype(cupy.float16), k_g, v_g, 4)
    with pytest.raises(ValueError, match="shapes do not fit"):
        gpu_kernels.sliding_window_attention_forward(q_g, k_g[:, :7], v_g[:, :7], 4)
    with pytest.raises(ValueError, match="sliding window"):
        gpu_kernels.sliding_window_attention_forward(q_g, k_g, v_g, 0)


# ---------------------------------------------------------------------------------------------
# The attention kernels' CUDA source, run on the CPU (no GPU needed)

EMULATION_PRELUDE = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <thread>
#include <vector>
using std::exp; using std::log; using std::max; using std::min;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(n)
#define __shared__ static          // blocks run one after another, so a static is block-shared
struct Index { int x, y, z; };
thread_local Index threadIdx;
Index blockIdx;
std::barrier<>* block_barrier;
#define __syncthreads() block_barrier->arrive_and_wait()
"""

EMULATION_LAUNCHERS = r"""
template <class Kernel> void launch(int gx, int gy, int gz, Kernel kernel) {
    std::barrier<> barrier(ROWS);
    block_barrier = &barrier;
    for (int z = 0; z < gz; ++z) for (int y = 0; y < gy; ++y) for (int x = 0; x < gx; ++x) {
        blockIdx = {x, y, z};
        std::vector<std::thread> threads;
        for (int i = 0; i < ROWS; ++i) threads.emplace_back([&, i] { threadIdx = {i, 0, 0}; kernel(); });
        for (auto& t : threads) t.join();
    }
}
#define LAUNCHERS(S, NAME, D, CHUNK)                                                                 \
extern "C" void forward_##NAME##_##D(const S* q, const S* k, const S* v, S* out, double* lse,   \
                                     int B, int T, int H, int Hkv, int W, S scale) {            \
    int tiles = (T + ROWS - 1) / ROWS;                                                          \
    launch(tiles, H, B, [&] { swa_forward<S, D, CHUNK, ROWS>(q, k, v, out, lse, T, H, Hkv, W, scale); }); } \
extern "C" void backward_##NAME##_##D(const S* q, const S* k, const S* v, const S* dout,       \
        const double* lse, const S* delta, S* dq, S* dk, S* dv, int B, int T, int H, int Hkv, int W, S scale) { \
    int tiles = (T + ROWS - 1) / ROWS;                                                          \
    launch(tiles, H, B, [&] { swa_backward_dq<S, D, CHUNK, ROWS>(q, k, v, dout, lse, delta, dq, T, H, Hkv, W, scale); }); \
    launch(tiles, Hkv, B, [&] { swa_backward_dk<S, D, CHUNK, ROWS>(q, k, v, dout, lse, delta, dk, T, H, Hkv, W, scale); }); \
    launch(tiles, Hkv, B, [&] { swa_backward_dv<S, D, CHUNK, ROWS>(q, k, dout, lse, delta, dv, T, H, Hkv, W, scale); }); }
"""
EMULATED_HEAD_DIMS = sorted({case[4] for case in CASES})


@pytest.fixture(scope="module")
def emulated_kernels(tmp_path_factory):
    """The attention source compiled by g++ for the CPU, as a ctypes library."""
    if shutil.which("g++") is None:
        pytest.skip("no g++ to compile the CUDA source for the CPU")
    folder = tmp_path_factory.mktemp("cuda_on_cpu")
    probe = folder / "probe.cpp"
    probe.write_text("#include <barrier>\nint main() { std::barrier<> b(1); }\n")
    if subprocess.run(["g++", "-std=c++20", str(probe), "-o", str(folder / "probe")],
                      capture_output=True).returncode:
        pytest.skip("g++ has no C++20 <barrier>")
    launchers = "".join(f"LAUNCHERS({c}, {n}, {D}, {gpu_kernels.chunk_rows(D, size)})\n"
                        for c, n, size in (("float", "f32", 4), ("double", "f64", 8)) for D in EMULATED_HEAD_DIMS)
    source = folder / "attention_on_cpu.cpp"
    source.write_text(EMULATION_PRELUDE + f"constexpr int ROWS = {gpu_kernels.ROWS};\n"
                      + gpu_kernels._ATTENTION_SOURCE + EMULATION_LAUNCHERS + launchers)
    library = folder / "attention_on_cpu.so"
    compiled = subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread",
                               "-Wno-unknown-pragmas", str(source), "-o", str(library)],
                              capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    return ctypes.CDLL(str(library))


def run_emulated(library):
    """A runner for check_attention that calls the CPU build of the CUDA kernels, arranging the
    arguments as gpu_kernels.sliding_window_attention_forward / _backward do."""
    def run(q, k, v, dout, window):
        B, T, H, D = q.shape
        name, scalar = ("f32", ctypes.c_float) if q.dtype == np.float32 else ("f64", ctypes.c_double)
        W = T if window is None else min(window, T)
        sizes = [ctypes.c_int(n) for n in (B, T, H, k.shape[2], W)] + [scalar(1.0 / math.sqrt(D))]
        out, lse = np.empty_like(q), np.empty((B, T, H), np.float64)
        getattr(library, f"forward_{name}_{D}")(*map(pointer, (q, k, v, out, lse)), *sizes)
        delta = np.sum(dout * out, axis=-1, dtype=np.float64).astype(q.dtype)
        dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
        getattr(library, f"backward_{name}_{D}")(*map(pointer, (q, k, v, dout, lse, delta, dq, dk, dv)), *sizes)
        return out, lse, dq, dk, dv
    return run


def pointer(a):
    return a.ctypes.data_as(ctypes.c_void_p)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B, T, H, Hkv, D, W", CASES)
def test_attention_cuda_source_on_cpu_matches_reference(emulated_kernels, B, T, H, Hkv, D, W, dtype):
    check_attention(run_emulated(emulated_kernels), B, T, H, Hkv, D, W, dtype)


# ---------------------------------------------------------------------------------------------
# Fused elementwise kernels against layers.py and optim.py


FUSED_TOLERANCE = {np.float64: 1e-12, np.float32: 1e-6}


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_silu_matches_layers(dtype):
    rng = np.random.default_rng(0)
    x, dy = (rng.normal(scale=3.0, size=(2, 5, 24)).astype(dtype) for _ in range(2))
    y_ref, cache_ref = layers.silu_forward(x)
    y, cache = gpu_kernels.silu_forward(cupy.asarray(x))
    rtol = FUSED_TOLERANCE[dtype]
    assert_close(y, y_ref, rtol, "y")
    assert_close(cache[1], cache_ref[1], rtol, "sigmoid")
    assert_close(gpu_kernels.silu_backward(cupy.asarray(dy), cache), layers.silu_backward(dy, cache_ref), rtol, "dx")


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_swiglu_product_matches_layers(dtype):
    rng = np.random.default_rng(1)
    gate, up, dh = (rng.normal(scale=2.0, size=(2, 5, 24)).astype(dtype) for _ in range(3))
    act, act_cache = layers.silu_forward(gate)                  # what layers.swiglu_forward does
    h_ref = act * up
    dgate_ref, dup_ref = layers.silu_backward(dh * up, act_cache), dh * act
    h, cache = gpu_kernels.swiglu_product_forward(cupy.asarray(gate), cupy.asarray(up))
    dgate, dup = gpu_kernels.swiglu_product_backward(cupy.asarray(dh), cache)
    rtol = FUSED_TOLERANCE[dtype]
    assert_close(h, h_ref, rtol, "h")
    assert_close(dgate, dgate_ref, rtol, "dgate")
    assert_close(dup, dup_ref, rtol, "dup")


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(2, 5, 8), (3, 17, 768)])
def test_rmsnorm_matches_layers(dtype, shape):
    rng = np.random.default_rng(2)
    x, dy = (rng.normal(size=shape).astype(dtype) for _ in range(2))
    w = rng.normal(loc=1.0, scale=0.1, size=shape[-1]).astype(dtype)
    y_ref, cache_ref = layers.rmsnorm_forward(x, w, 1e-5)
    dx_ref, dw_ref = layers.rmsnorm_backward(dy, cache_ref)
    y, cache = gpu_kernels.rmsnorm_forward(cupy.asarray(x), cupy.asarray(w), 1e-5)
    dx, dw = gpu_kernels.rmsnorm_backward(cupy.asarray(dy), cache)
    rtol = 10 * FUSED_TOLERANCE[dtype]            # sums over C and over B*T rows, in other orders
    assert_close(y, y_ref, rtol, "y")
    assert_close(cache[2], cache_ref[2], rtol, "rstd")
    assert_close(dx, dx_ref, rtol, "dx")
    assert_close(dw, dw_ref, rtol, "dweight")


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adamw_update_matches_optim_over_two_steps(dtype):
    rng = np.random.default_rng(3)
    shapes = {"model.layers.0.mlp.up_proj.weight": (12, 8),        # decayed
              "model.layers.0.input_layernorm.weight": (8,),        # not decayed: 1-D
              "model.embed_tokens.weight": (20, 8)}                 # not decayed: embedding
    params = {n: rng.normal(size=s).astype(dtype) for n, s in shapes.items()}
    start = {n: p.copy() for n, p in params.items()}
    gpu_params = {n: cupy.asarray(p) for n, p in params.items()}
    hyper = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    optimizer = AdamW(params, **hyper)
    gpu_m = {n: cupy.zeros_like(p) for n, p in gpu_params.items()}
    gpu_v = {n: cupy.zeros_like(p) for n, p in gpu_params.items()}
    for t in (1, 2):
        grads = {n: rng.normal(size=p.shape).astype(dtype) for n, p in params.items()}
        optimizer.step(params, grads)
        for n, p in gpu_params.items():
            wd = hyper["weight_decay"] if optimizer.decay[n] else 0.0
            gpu_kernels.adamw_update(p, cupy.asarray(grads[n]), gpu_m[n], gpu_v[n], hyper["lr"],
                                     *hyper["betas"], hyper["eps"], wd, t)
    # --fmad=false makes each step round as NumPy does, so the results may well be bit-equal;
    # the updates (p - p_start, about lr) are checked on their own, not only within |p| ~ 1
    rtol, update_rtol = (1e-14, 1e-10) if dtype == np.float64 else (1e-6, 1e-4)
    for n in params:
        assert_close(gpu_params[n], params[n], rtol, n)
        assert_close(gpu_params[n] - cupy.asarray(start[n]), params[n] - start[n], update_rtol, "update " + n)
        assert_close(gpu_m[n], optimizer.m[n], rtol, "m." + n)
        assert_close(gpu_v[n], optimizer.v[n], rtol, "v." + n)
