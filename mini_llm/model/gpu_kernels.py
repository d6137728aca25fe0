"""GPU kernels (CuPy): sliding-window attention as CUDA C raw kernels, and fused elementwise
kernels for SiLU, the SwiGLU product, RMSNorm and the AdamW update.

The attention functions keep the contract of kernels.py (the Numba CPU kernels):
    out, lse = sliding_window_attention_forward(q, k, v, window)
    dq, dk, dv = sliding_window_attention_backward(dout, q, k, v, out, lse, window)
with q (B, T, H, D), k/v (B, T, Hkv, D) CuPy arrays, float32 or float64, GQA, window None = full
causal, lse (B, T, H) float64; each query touches only the W keys of its window. The fused
kernels keep the contracts of their layers.py / optim.py counterparts. Each replaces several
array passes by one: at the sizes of a training step these ops are bound by memory traffic.
This file is the fast path, not the readable one: attention.py and layers.py stay the
references, and tests/test_gpu_kernels.py pins every function here to them.

Status: NOT YET RUN on a GPU. Written on a machine without one; the CUDA source compiles with
NVRTC for sm_90 (H100/H200), where ptxas reports, float32 D=64: forward and dv 168 registers,
no spills; dq and dk 255 registers, 44-64 bytes spilled; float64 and D >= 128 spill more
(correct, slower). The same source, compiled by g++ for the CPU with each thread block
emulated by std::threads (tests/test_gpu_kernels.py), matches the NumPy reference. The CuPy
elementwise kernels have not been compiled. The GPU tests skip without a GPU.

Attention design, correct first: one thread per row.
  - forward: a block of ROWS threads owns ROWS consecutive queries of one (batch, head); each
    thread keeps its q row and its output accumulator in registers. The block walks the keys its
    queries can see, CHUNK rows of k and v at a time staged in shared memory, and each thread
    folds the keys of its own window into an online softmax (running max m, running sum l,
    rescaled when m grows), so nothing of size T×W is ever stored.
  - backward (FlashAttention-style, as kernels.py): p = exp(s - lse) is recomputed and
    delta_t = Σ_d dout·out stands in for the softmax-Jacobian term. dq: one thread per query,
    over its window's keys. dk and dv: one thread per key j, over the queries j .. j+W-1 of
    every head of its kv group. Every thread writes only its own row: no atomics. dk and dv are
    two kernels so that a thread holds at most three D-vectors in registers (k, v, dk; or k, dv):
    fused, four D=64 float32 vectors would pass the 255-register budget and spill.
  - D is a template parameter (register arrays need a compile-time size); each (dtype, D)
    compiles once, on first use, and CuPy caches the binary on disk.
"""
import functools
import math

import numpy as np

from mini_llm.model.kernels import checked_window

ROWS = 64           # threads per block: the queries (or keys) one block owns
MAX_HEAD_DIM = 256  # register arrays of D values; larger D would only spill more

# ---------------------------------------------------------------------------------------------
# The CUDA source of the attention kernels. Arrays are C-contiguous: q, out, dout, dq
# (B, T, H, D); k, v, dk, dv (B, T, Hkv, D); lse, delta (B, T, H).

_ATTENTION_SOURCE = r"""
__device__ __forceinline__ float exp_t(float x) { return expf(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }
__device__ __forceinline__ float lowest(float) { return -3.402823466e38f; }
__device__ __forceinline__ double lowest(double) { return -1.7976931348623157e308; }

// Offset of row (b, t, head) of a (B, T, heads, D) array.
__device__ __forceinline__ long long row_at(int b, int t, int head, int T, int heads, int D)
{
    return (((long long)b * T + t) * heads + head) * D;
}

// dst[i] = row (first + i) of `head` in src, for i < CHUNK; rows past T read as zeros.
template <typename scalar_t, int D, int CHUNK, int ROWS>
__device__ __forceinline__ void load_rows(scalar_t (*dst)[D], const scalar_t* __restrict__ src,
                                          int b, int first, int head, int T, int heads)
{
    for (int e = threadIdx.x; e < CHUNK * D; e += ROWS) {
        const int i = e / D, d = e % D, t = first + i;
        dst[i][d] = t < T ? src[row_at(b, t, head, T, heads, D) + d] : scalar_t(0);
    }
}

template <typename scalar_t, int D>
__device__ __forceinline__ scalar_t dot(const scalar_t* x, const scalar_t* y)
{
    scalar_t s = 0;
#pragma unroll
    for (int d = 0; d < D; ++d) s += x[d] * y[d];
    return s;
}

// Forward. Grid (query tiles, H, B); thread = query t. Online softmax over keys lo .. t:
// m = max score so far, l = sum of exp(s - m), acc = sum of exp(s - m) v.
template <typename scalar_t, int D, int CHUNK, int ROWS>
__global__ void __launch_bounds__(ROWS) swa_forward(
    const scalar_t* __restrict__ q, const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
    scalar_t* __restrict__ out, double* __restrict__ lse, int T, int H, int Hkv, int W, scalar_t scale)
{
    const int b = blockIdx.z, h = blockIdx.y, kv = h / (H / Hkv);
    const int t0 = blockIdx.x * ROWS, t = t0 + threadIdx.x, lo = t - W + 1;
    const bool active = t < T;
    __shared__ scalar_t k_s[CHUNK][D], v_s[CHUNK][D];

    scalar_t q_t[D], acc[D];
    const long long at = row_at(b, active ? t : 0, h, T, H, D);
#pragma unroll
    for (int d = 0; d < D; ++d) { q_t[d] = q[at + d]; acc[d] = 0; }
    scalar_t m = lowest(scalar_t(0));
    double l = 0;

    const int first = max(0, t0 - W + 1), end = min(T, t0 + ROWS);   // keys the block sees
    for (int c = first; c < end; c += CHUNK) {
        load_rows<scalar_t, D, CHUNK, ROWS>(k_s, k, b, c, kv, T, Hkv);
        load_rows<scalar_t, D, CHUNK, ROWS>(v_s, v, b, c, kv, T, Hkv);
        __syncthreads();
        for (int i = 0; i < CHUNK; ++i) {
            const int j = c + i;
            if (!active || j < lo || j > t) continue;
            const scalar_t s = dot<scalar_t, D>(q_t, k_s[i]) * scale;
            if (s > m) {                              // a new max: rescale what is summed so far
                const scalar_t r = exp_t(m - s);
                l *= r;
#pragma unroll
                for (int d = 0; d < D; ++d) acc[d] *= r;
                m = s;
            }
            const scalar_t p = exp_t(s - m);
            l += p;
#pragma unroll
            for (int d = 0; d < D; ++d) acc[d] += p * v_s[i][d];
        }
        __syncthreads();
    }
    if (!active) return;
#pragma unroll
    for (int d = 0; d < D; ++d) out[at + d] = scalar_t(acc[d] / l);
    lse[((long long)b * T + t) * H + h] = double(m) + log(l);
}

// Backward, dq. Grid (query tiles, H, B); thread = query t:
// dq_t = scale * sum_j ds_tj k_j over its window, ds_tj = p_tj (dout_t . v_j - delta_t).
template <typename scalar_t, int D, int CHUNK, int ROWS>
__global__ void __launch_bounds__(ROWS) swa_backward_dq(
    const scalar_t* __restrict__ q, const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
    const scalar_t* __restrict__ dout, const double* __restrict__ lse, const scalar_t* __restrict__ delta,
    scalar_t* __restrict__ dq, int T, int H, int Hkv, int W, scalar_t scale)
{
    const int b = blockIdx.z, h = blockIdx.y, kv = h / (H / Hkv);
    const int t0 = blockIdx.x * ROWS, t = t0 + threadIdx.x, lo = t - W + 1;
    const bool active = t < T;
    __shared__ scalar_t k_s[CHUNK][D], v_s[CHUNK][D];

    scalar_t q_t[D], dout_t[D], dq_t[D];
    const long long at = row_at(b, active ? t : 0, h, T, H, D);
#pragma unroll
    for (int d = 0; d < D; ++d) { q_t[d] = q[at + d]; dout_t[d] = dout[at + d]; dq_t[d] = 0; }
    const long long bth = ((long long)b * T + (active ? t : 0)) * H + h;
    const double lse_t = lse[bth];
    const scalar_t delta_t = delta[bth];

    const int first = max(0, t0 - W + 1), end = min(T, t0 + ROWS);
    for (int c = first; c < end; c += CHUNK) {
        load_rows<scalar_t, D, CHUNK, ROWS>(k_s, k, b, c, kv, T, Hkv);
        load_rows<scalar_t, D, CHUNK, ROWS>(v_s, v, b, c, kv, T, Hkv);
        __syncthreads();
        for (int i = 0; i < CHUNK; ++i) {
            const int j = c + i;
            if (!active || j < lo || j > t) continue;
            const scalar_t s = dot<scalar_t, D>(q_t, k_s[i]) * scale;
            const scalar_t p = exp_t(scalar_t(s - lse_t));
            const scalar_t ds = p * (dot<scalar_t, D>(dout_t, v_s[i]) - delta_t);
#pragma unroll
            for (int d = 0; d < D; ++d) dq_t[d] += ds * k_s[i][d];
        }
        __syncthreads();
    }
    if (!active) return;
#pragma unroll
    for (int d = 0; d < D; ++d) dq[at + d] = dq_t[d] * scale;
}

// The queries t = c .. c+CHUNK-1 of head h, staged for the dk and dv kernels: q and dout rows,
// lse and delta.
template <typename scalar_t, int D, int CHUNK, int ROWS>
__device__ __forceinline__ void load_queries(
    scalar_t (*q_s)[D], scalar_t (*dout_s)[D], double* lse_s, scalar_t* delta_s,
    const scalar_t* __restrict__ q, const scalar_t* __restrict__ dout,
    const double* __restrict__ lse, const scalar_t* __restrict__ delta, int b, int c, int h, int T, int H)
{
    load_rows<scalar_t, D, CHUNK, ROWS>(q_s, q, b, c, h, T, H);
    load_rows<scalar_t, D, CHUNK, ROWS>(dout_s, dout, b, c, h, T, H);
    for (int i = threadIdx.x; i < CHUNK; i += ROWS) {
        const int t = c + i;
        const long long bth = ((long long)b * T + t) * H + h;
        lse_s[i] = t < T ? lse[bth] : 0.0;
        delta_s[i] = t < T ? delta[bth] : scalar_t(0);
    }
}

// Backward, dk. Grid (key tiles, Hkv, B); thread = key j of kv head `kv`:
// dk_j = scale * sum ds_tj q_t over the queries t = j .. j+W-1 of every head of the group.
template <typename scalar_t, int D, int CHUNK, int ROWS>
__global__ void __launch_bounds__(ROWS) swa_backward_dk(
    const scalar_t* __restrict__ q, const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
    const scalar_t* __restrict__ dout, const double* __restrict__ lse, const scalar_t* __restrict__ delta,
    scalar_t* __restrict__ dk, int T, int H, int Hkv, int W, scalar_t scale)
{
    const int b = blockIdx.z, kv = blockIdx.y, group = H / Hkv;
    const int j0 = blockIdx.x * ROWS, j = j0 + threadIdx.x;
    const bool active = j < T;
    __shared__ scalar_t q_s[CHUNK][D], dout_s[CHUNK][D];
    __shared__ double lse_s[CHUNK];
    __shared__ scalar_t delta_s[CHUNK];

    scalar_t k_j[D], v_j[D], dk_j[D];
    const long long at = row_at(b, active ? j : 0, kv, T, Hkv, D);
#pragma unroll
    for (int d = 0; d < D; ++d) { k_j[d] = k[at + d]; v_j[d] = v[at + d]; dk_j[d] = 0; }

    const int end = min(T, j0 + ROWS + W - 1);        // queries that see a key of this block
    for (int h = kv * group; h < (kv + 1) * group; ++h) {
        for (int c = j0; c < end; c += CHUNK) {
            load_queries<scalar_t, D, CHUNK, ROWS>(q_s, dout_s, lse_s, delta_s, q, dout, lse, delta,
                                                   b, c, h, T, H);
            __syncthreads();
            for (int i = 0; i < CHUNK; ++i) {
                const int t = c + i;
                if (!active || t < j || t >= j + W || t >= T) continue;
                const scalar_t s = dot<scalar_t, D>(k_j, q_s[i]) * scale;
                const scalar_t p = exp_t(scalar_t(s - lse_s[i]));
                const scalar_t ds = p * (dot<scalar_t, D>(v_j, dout_s[i]) - delta_s[i]);
#pragma unroll
                for (int d = 0; d < D; ++d) dk_j[d] += ds * q_s[i][d];
            }
            __syncthreads();
        }
    }
    if (!active) return;
#pragma unroll
    for (int d = 0; d < D; ++d) dk[at + d] = dk_j[d] * scale;
}

// Backward, dv. Same walk as dk: dv_j = sum p_tj dout_t over the queries that see key j.
template <typename scalar_t, int D, int CHUNK, int ROWS>
__global__ void __launch_bounds__(ROWS) swa_backward_dv(
    const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
    const scalar_t* __restrict__ dout, const double* __restrict__ lse, const scalar_t* __restrict__ delta,
    scalar_t* __restrict__ dv, int T, int H, int Hkv, int W, scalar_t scale)
{
    const int b = blockIdx.z, kv = blockIdx.y, group = H / Hkv;
    const int j0 = blockIdx.x * ROWS, j = j0 + threadIdx.x;
    const bool active = j < T;
    __shared__ scalar_t q_s[CHUNK][D], dout_s[CHUNK][D];
    __shared__ double lse_s[CHUNK];
    __shared__ scalar_t delta_s[CHUNK];

    scalar_t k_j[D], dv_j[D];
    const long long at = row_at(b, active ? j : 0, kv, T, Hkv, D);
#pragma unroll
    for (int d = 0; d < D; ++d) { k_j[d] = k[at + d]; dv_j[d] = 0; }

    const int end = min(T, j0 + ROWS + W - 1);
    for (int h = kv * group; h < (kv + 1) * group; ++h) {
        for (int c = j0; c < end; c += CHUNK) {
            load_queries<scalar_t, D, CHUNK, ROWS>(q_s, dout_s, lse_s, delta_s, q, dout, lse, delta,
                                                   b, c, h, T, H);
            __syncthreads();
            for (int i = 0; i < CHUNK; ++i) {
                const int t = c + i;
                if (!active || t < j || t >= j + W || t >= T) continue;
                const scalar_t s = dot<scalar_t, D>(k_j, q_s[i]) * scale;
                const scalar_t p = exp_t(scalar_t(s - lse_s[i]));
#pragma unroll
                for (int d = 0; d < D; ++d) dv_j[d] += p * dout_s[i][d];
            }
            __syncthreads();
        }
    }
    if (!active) return;
#pragma unroll
    for (int d = 0; d < D; ++d) dv[at + d] = dv_j[d];
}
"""

# ---------------------------------------------------------------------------------------------
# CuPy, loaded on first use


def require_gpu():
    """The cupy module, or one RuntimeError saying why the GPU kernels cannot run here."""
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:          # no cupy, no driver, or a driver too old: all mean "no GPU"
        raise RuntimeError(f"mini_llm.model.gpu_kernels needs CuPy and a GPU "
                           f"(pip install cupy-cuda12x): {type(e).__name__}: {e}") from None
    if count == 0:
        raise RuntimeError("mini_llm.model.gpu_kernels needs a GPU, and CuPy sees none")
    return cupy


def _on_gpu(*arrays):
    """cupy, after checking that every array is a CuPy array."""
    cp = require_gpu()
    for a in arrays:
        if not isinstance(a, cp.ndarray):
            raise ValueError(f"gpu_kernels takes CuPy arrays, got {type(a).__name__} "
                             f"(NumPy arrays go to kernels.py / layers.py)")
    return cp


# ---------------------------------------------------------------------------------------------
# Sliding-window attention: Python side


def chunk_rows(D, itemsize):
    """CHUNK, the rows of k and v (or q and dout) staged in shared memory at a time: 16, fewer
    when two (CHUNK, D) arrays would pass 32 KiB of the 48 KiB of static shared memory a block
    may use."""
    return max(1, min(16, 16384 // (D * itemsize)))


@functools.lru_cache(maxsize=None)
def _attention_kernels(dtype_name, D):
    """The four attention kernels compiled for one dtype and head_dim."""
    cp = require_gpu()
    ctype = {"float32": "float", "float64": "double"}[dtype_name]
    chunk = chunk_rows(D, np.dtype(dtype_name).itemsize)
    names = {kind: f"swa_{kind}<{ctype}, {D}, {chunk}, {ROWS}>"
             for kind in ("forward", "backward_dq", "backward_dk", "backward_dv")}
    module = cp.RawModule(code=_ATTENTION_SOURCE, options=("-std=c++17",),
                          name_expressions=list(names.values()))
    return {kind: module.get_function(name) for kind, name in names.items()}


def _checked(q, k, v, window):
    """cupy and the effective window (T when None, at most T), after checking the inputs."""
    cp = _on_gpu(q, k, v)
    W = checked_window(q, k, v, window, who="GPU attention")
    if q.shape[3] > MAX_HEAD_DIM:
        raise ValueError(f"GPU attention supports head_dim up to {MAX_HEAD_DIM}, got {q.shape[3]}")
    return cp, W


def sliding_window_attention_forward(q, k, v, window):
    """q (B, T, H, D), k/v (B, T, Hkv, D) CuPy -> out (B, T, H, D) in q's dtype, lse (B, T, H)
    float64, the log-sum-exp of each query's scaled scores. window None = full causal."""
    cp, W = _checked(q, k, v, window)
    B, T, H, D = q.shape
    q, k, v = (cp.ascontiguousarray(a) for a in (q, k, v))
    out = cp.empty_like(q)                                                 # (B, T, H, D)
    lse = cp.empty((B, T, H), cp.float64)
    grid = ((T + ROWS - 1) // ROWS, H, B)
    _attention_kernels(q.dtype.name, D)["forward"](
        grid, (ROWS,), (q, k, v, out, lse, np.int32(T), np.int32(H), np.int32(k.shape[2]),
                        np.int32(W), q.dtype.type(1.0 / math.sqrt(D))))
    return out, lse


def sliding_window_attention_backward(dout, q, k, v, out, lse, window):
    """Returns dq (B, T, H, D), dk, dv (B, T, Hkv, D) for the forward above (out and lse are
    its outputs). delta_t = Σ_d dout_t·out_t is summed in float64, as kernels.py does."""
    cp, W = _checked(q, k, v, window)
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    q, k, v = (cp.ascontiguousarray(a) for a in (q, k, v))
    dout = cp.ascontiguousarray(dout, dtype=q.dtype)
    lse = cp.ascontiguousarray(lse, dtype=cp.float64)
    delta = cp.sum(dout * out, axis=-1, dtype=cp.float64).astype(q.dtype)   # (B, T, H)
    dq, dk, dv = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
    sizes = (np.int32(T), np.int32(H), np.int32(Hkv), np.int32(W), q.dtype.type(1.0 / math.sqrt(D)))
    kernels = _attention_kernels(q.dtype.name, D)
    query_tiles, key_tiles = ((T + ROWS - 1) // ROWS, H, B), ((T + ROWS - 1) // ROWS, Hkv, B)
    kernels["backward_dq"](query_tiles, (ROWS,), (q, k, v, dout, lse, delta, dq) + sizes)
    kernels["backward_dk"](key_tiles, (ROWS,), (q, k, v, dout, lse, delta, dk) + sizes)
    kernels["backward_dv"](key_tiles, (ROWS,), (q, k, dout, lse, delta, dv) + sizes)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# Fused elementwise kernels. Each expression is the layers.py / optim.py formula, in the same
# order of operations; T is the array dtype. CuPy compiles each on first call per dtype.


@functools.lru_cache(maxsize=None)
def _fused():
    cp = require_gpu()
    elementwise, reduction = cp.ElementwiseKernel, cp.ReductionKernel
    # row statistics over the last axis; _in_ind.size() / _out_ind.size() = elements per row
    per_row = "(_in_ind.size() / _out_ind.size())"
    return {
        "silu_forward": elementwise(
            "T x", "T y, T sig",
            "sig = T(1) / (T(1) + exp(-x)); y = x * sig;", "minillm_silu_forward"),
        "silu_backward": elementwise(
            "T dy, T x, T sig", "T dx",
            "dx = dy * sig * (T(1) + x * (T(1) - sig));", "minillm_silu_backward"),
        "swiglu_product_forward": elementwise(
            "T gate, T up", "T h",
            "T sig = T(1) / (T(1) + exp(-gate)); h = gate * sig * up;", "minillm_swiglu_forward"),
        "swiglu_product_backward": elementwise(
            "T dh, T gate, T up", "T dgate, T dup",
            """T sig = T(1) / (T(1) + exp(-gate));
               dup = dh * (gate * sig);
               dgate = dh * up * sig * (T(1) + gate * (T(1) - sig));""", "minillm_swiglu_backward"),
        "mean_square": reduction(
            "T x", "T ms", "x * x", "a + b", f"ms = a / {per_row}", "0", "minillm_mean_square"),
        "inverse_rms": elementwise(
            "T ms, T eps", "T rstd", "rstd = T(1) / sqrt(ms + eps);", "minillm_inverse_rms"),
        "rmsnorm_scale": elementwise(
            "T x, T rstd, T w", "T y", "y = x * rstd * w;", "minillm_rmsnorm_scale"),
        "mean_g_xhat": reduction(
            "T dy, T x, T w, T rstd", "T mean", "dy * w * (x * rstd)", "a + b",
            f"mean = a / {per_row}", "0", "minillm_rmsnorm_mean_g_xhat"),
        "sum_dy_xhat": reduction(
            "T dy, T x, T rstd", "T dw", "dy * (x * rstd)", "a + b", "dw = a", "0",
            "minillm_rmsnorm_dweight"),
        "rmsnorm_dx": elementwise(
            "T dy, T x, T w, T rstd, T mean", "T dx",
            "dx = rstd * (dy * w - x * rstd * mean);", "minillm_rmsnorm_dx"),
        # --fmad=false: no fused multiply-adds, so each step rounds as optim.py's array ops do
        "adamw": elementwise(
            "T g, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T decay, "
            "T sqrt_bias2, T eps, T step_size", "T p, T m, T v",
            """m = m * beta1 + one_minus_beta1 * g;
               v = v * beta2 + one_minus_beta2 * (g * g);
               p = p * decay - m / (sqrt(v) / sqrt_bias2 + eps) * step_size;""",
            "minillm_adamw", options=("--fmad=false",)),
    }


def silu_forward(x):
    """silu(x) = x · sigmoid(x) in one pass. Same contract as layers.silu_forward:
    returns y and the cache (x, sig)."""
    _on_gpu(x)
    y, sig = _fused()["silu_forward"](x)
    return y, (x, sig)


def silu_backward(dy, cache):
    """forward: y = x σ(x) -> dx = dy σ(x) (1 + x (1 - σ(x))), as layers.silu_backward."""
    x, sig = cache
    _on_gpu(dy, x, sig)
    return _fused()["silu_backward"](dy, x, sig)


def swiglu_product_forward(gate, up):
    """h = silu(gate) ⊙ up, gate/up (B, T, F) -> h (B, T, F), in one pass. The cache is
    (gate, up) only: backward recomputes σ(gate), which saves two (B, T, F) tensors per layer
    over layers.swiglu_forward's (act, sig)."""
    _on_gpu(gate, up)
    return _fused()["swiglu_product_forward"](gate, up), (gate, up)


def swiglu_product_backward(dh, cache):
    """Returns dgate, dup. forward: h = gate σ(gate) up -> dup = dh · gate σ(gate),
    dgate = dh · up · σ (1 + gate (1 - σ)) (the SiLU derivative, see silu_backward)."""
    gate, up = cache
    _on_gpu(dh, gate, up)
    return _fused()["swiglu_product_backward"](dh, gate, up)


def rmsnorm_forward(x, weight, eps):
    """x (B, T, C), weight (C,) -> y = x · rstd · weight, rstd = 1 / sqrt(mean(x²) + eps).
    Same contract and cache as layers.rmsnorm_forward: (x, weight, rstd), rstd (B, T, 1)."""
    _on_gpu(x, weight)
    k = _fused()
    mean_sq = k["mean_square"](x, axis=x.ndim - 1, keepdims=True)          # (B, T, 1)
    rstd = k["inverse_rms"](mean_sq, x.dtype.type(eps))                    # (B, T, 1)
    return k["rmsnorm_scale"](x, rstd, weight), (x, weight, rstd)


def rmsnorm_backward(dy, cache):
    """Returns dx (B, T, C), dweight (C,). With g = dy ⊙ w and x_hat = x · rstd (derivation
    in layers.rmsnorm_backward): dx = rstd (g - x_hat mean(g x_hat)), dweight = Σ dy ⊙ x_hat."""
    x, weight, rstd = cache
    _on_gpu(dy, x, weight, rstd)
    k = _fused()
    mean = k["mean_g_xhat"](dy, x, weight, rstd, axis=x.ndim - 1, keepdims=True)   # (B, T, 1)
    dweight = k["sum_dy_xhat"](dy, x, rstd, axis=tuple(range(x.ndim - 1)))       # (C,)
    return k["rmsnorm_dx"](dy, x, weight, rstd, mean), dweight


def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """One AdamW step of one parameter, p, m and v updated in place by one kernel. t is the step
    number after this update (1 for the first), weight_decay 0 for tensors without decay.
    The formula and the order of operations are those of optim.AdamW.step:
        m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²
        p = p (1 - lr·wd) - m / (sqrt(v) / sqrt(1-β2^t) + eps) · lr / (1-β1^t)"""
    _on_gpu(p, g, m, v)
    s = p.dtype.type                   # scalars in p's dtype, as NumPy casts them in optim.py
    bias1, bias2 = 1 - beta1 ** t, 1 - beta2 ** t
    _fused()["adamw"](g, s(beta1), s(1 - beta1), s(beta2), s(1 - beta2), s(1 - lr * weight_decay),
                      s(math.sqrt(bias2)), s(eps), s(lr / bias1), p, m, v)
