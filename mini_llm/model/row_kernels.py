"""Numba CPU kernels for the row-wise and elementwise work of a training step: RMSNorm, the
SwiGLU product, RoPE, softmax cross-entropy and the AdamW update.

layers.py, attention.py and optim.py hold the readable NumPy references; each of them hands
NumPy arrays to its twin here (`applies`), and CuPy arrays stay on the reference path.
tests/test_row_kernels.py pins every kernel to its reference, float32 and float64.

Why kernels for cheap operations? A NumPy expression like `x * rstd * weight` is one pass over
memory per operator, each allocating a temporary, on one thread. At the sizes of a training
step these operations are bound by memory traffic, not arithmetic, so fusing the passes of one
formula into one loop, over rows in parallel (`prange`), is what makes them fast and lets them
use every core. Each kernel works on rows of the last axis: (..., C) viewed as (N, C).
Every kernel releases the GIL (nogil=True): the model runs slices of a batch's rows on
separate Python threads (MiniTransformer.row_slices), and a kernel that kept the GIL would
hold the other slices' Python code up for its whole run.

Precision: sums over a row (mean of squares, Σ exp) accumulate in float64; everything else runs
in the input dtype, as the references do (see FAST for the compiler's freedom). Sums over rows (RMSNorm's dweight) go in fixed blocks
of ROW_BLOCK rows, so the result does not depend on the number of threads.
Turn the kernels off with MINILLM_KERNELS=0 in the environment, or `with reference_only():`.
"""
import contextlib
import math
import os

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from mini_llm.progress import warm_up

ROW_BLOCK = 64      # rows per partial sum of a reduction over rows
# LLVM may reorder a row's sum into vector lanes and use cheaper exp/log/division ("fast math"),
# but not assume that no NaN or inf occurs (masked logits are -inf). The order of a sum is then
# fixed by the compiled code, still not by the number of threads. AdamW runs without these
# flags, so that it rounds exactly as the NumPy reference (and torch) do.
FAST = {"reassoc", "nsz", "arcp", "contract", "afn"}
_enabled = os.environ.get("MINILLM_KERNELS", "1") != "0"
_warmed_dtypes = set()     # dtypes whose kernels applies() has compiled (or loaded) already


def applies(*arrays):
    """True when these arrays take the Numba path: NumPy arrays of float32/float64, kernels on.
    The first time per dtype, every kernel is compiled (or loaded from Numba's cache) on tiny
    arrays, with one notice if that takes a while (progress.warm_up)."""
    taken = _enabled and all(isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64)
                             for a in arrays)
    if taken and arrays[0].dtype not in _warmed_dtypes:     # once per dtype: no work per call
        dtype = arrays[0].dtype
        _warmed_dtypes.add(dtype)
        warm_up(f"row kernels {dtype}", f"row kernels for {dtype} (RMSNorm, SwiGLU, RoPE, softmax, "
                "cross-entropy, AdamW)", lambda: _compile_all(dtype))
    return taken


def _compile_all(dtype):
    """Every kernel of this file once, on tiny arrays of `dtype`."""
    x = np.ones((1, 2, 1, 2), dtype)
    cos_sin = np.ones((2, 2), dtype)
    rmsnorm_backward(x, rmsnorm_forward(x, x[0, 0, 0], 1e-6)[1])
    swiglu_product_backward(x, swiglu_product_forward(x, x)[1])
    rope_backward(x, rope_forward(x, cos_sin, cos_sin)[1])
    softmax_backward(x, softmax(x))
    log_softmax(x)
    cross_entropy_backward(1.0, cross_entropy_forward(x[0, :, 0], np.zeros((1, 2), np.int64))[1])
    adamw_update(*(np.ones(2, dtype) for _ in range(4)), 0.1, 0.9, 0.95, 1e-8, 0.1, 1)
    add_into(np.ones(2, dtype), np.ones(2, dtype))


@contextlib.contextmanager
def reference_only():
    """Inside this block every layer runs its NumPy reference (tests, debugging)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def _rows(a):
    """a (..., C) as a C-contiguous (N, C) view (a copy only if a is not contiguous)."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


# ---------------------------------------------------------------------------------------------
# exp, vectorisable. math.exp compiles to one call per element, which no loop can vectorise;
# NumPy's np.exp uses SIMD code. For float32 the kernels use their own exp, plain arithmetic
# that LLVM turns into vector instructions (Cephes' expf, the one most libraries start from):
#   exp(x) = 2^n · exp(r),  n = round(x / ln 2),  r = x - n ln 2 in [-ln 2 / 2, ln 2 / 2],
# exp(r) by a degree-7 polynomial (relative error < 1e-7, a float32 ulp), and 2^n written
# straight into a float's exponent bits. Below -87.3 (where float32 exp underflows) it is 0,
# so exp(-inf) = 0 as masks need. float64 keeps math.exp.


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 `bits` (a reinterpretation, no conversion)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(inline="always", fastmath=FAST)
def _exp_float32(x):
    f = np.float32
    clamped = min(x, f(88.7))
    n = math.floor(clamped * f(1.4426950408889634) + f(0.5))         # round(x / ln 2)
    r = clamped - n * f(0.693359375) + n * f(2.12194440e-4)          # x - n ln 2, in two parts
    p = f(1.9875691500e-4)
    p = p * r + f(1.3981999507e-3)
    p = p * r + f(8.3334519073e-3)
    p = p * r + f(4.1665795894e-2)
    p = p * r + f(1.6666665459e-1)
    p = p * r + f(5.0000001201e-1)
    p = p * r * r + r + f(1.0)                                       # exp(r)
    two_n = _float32_from_bits((np.int32(max(n, f(-126.0))) + np.int32(127)) << 23)   # 2^n
    return p * two_n if x > f(-87.3) else f(0.0)


def fast_exp(x):
    """exp(x) inside the kernels: _exp_float32 for float32, math.exp otherwise."""
    return math.exp(x)


@overload(fast_exp, inline="always")
def _fast_exp_for(x):
    if x == types.float32:
        return lambda x: _exp_float32(x)
    return lambda x: math.exp(x)


# ---------------------------------------------------------------------------------------------
# RMSNorm: y = x · rstd · w, rstd = 1 / sqrt(mean(x²) + eps)


@njit(parallel=True, cache=True, fastmath=FAST, nogil=True)
def _rmsnorm_forward(x, weight, eps, y, rstd):
    N, C = x.shape
    for n in prange(N):
        mean_sq = 0.0                                  # float64 accumulator
        for c in range(C):
            mean_sq += x[n, c] * x[n, c]
        r = x.dtype.type(1.0 / math.sqrt(mean_sq / C + eps))
        rstd[n] = r
        for c in range(C):
            y[n, c] = x[n, c] * r * weight[c]


# forward: y = w ⊙ x_hat, x_hat = x · rstd -> with g = dy ⊙ w, dx = rstd (g - x_hat mean(g x_hat))
# (rstd depends on every x of the row: that is the mean term), dweight = Σ_rows dy ⊙ x_hat, summed
# here per block of ROW_BLOCK rows (layers.rmsnorm_backward has the derivation in full)
@njit(parallel=True, cache=True, fastmath=FAST, nogil=True)
def _rmsnorm_backward(dy, x, weight, rstd, dx, dweight_blocks):
    N, C = x.shape
    for block in prange(dweight_blocks.shape[0]):
        for n in range(block * ROW_BLOCK, min(N, (block + 1) * ROW_BLOCK)):
            r = rstd[n]
            mean_g_xhat = 0.0                          # mean over the row of g · x_hat
            for c in range(C):
                mean_g_xhat += dy[n, c] * weight[c] * (x[n, c] * r)
            m = x.dtype.type(mean_g_xhat / C)
            for c in range(C):
                x_hat = x[n, c] * r
                dx[n, c] = r * (dy[n, c] * weight[c] - x_hat * m)
                dweight_blocks[block, c] += dy[n, c] * x_hat


def rmsnorm_forward(x, weight, eps):
    """Same contract and cache as layers.rmsnorm_forward: y, (x, weight, rstd (..., 1))."""
    x2 = _rows(x)
    y, rstd = np.empty_like(x2), np.empty(x2.shape[0], x.dtype)
    _rmsnorm_forward(x2, weight.astype(x.dtype, copy=False), eps, y, rstd)
    return y.reshape(x.shape), (x, weight, rstd.reshape(*x.shape[:-1], 1))


def rmsnorm_backward(dy, cache):
    """Returns dx, dweight, as layers.rmsnorm_backward (the derivation is there):
    dx = rstd (g - x_hat mean(g x_hat)) with g = dy ⊙ w; dweight = Σ_rows dy ⊙ x_hat."""
    x, weight, rstd = cache
    x2, dy2 = _rows(x), _rows(dy)
    dx = np.empty_like(x2)
    blocks = np.zeros((-(-x2.shape[0] // ROW_BLOCK), x2.shape[1]), x.dtype)
    _rmsnorm_backward(dy2, x2, weight.astype(x.dtype, copy=False), rstd.reshape(-1), dx, blocks)
    return dx.reshape(x.shape), blocks.sum(axis=0)


# ---------------------------------------------------------------------------------------------
# The SwiGLU product h = silu(gate) ⊙ up, silu(g) = g σ(g)


@njit(parallel=True, cache=True, fastmath=FAST, nogil=True)
def _swiglu_product_forward(gate, up, h):
    N, F = gate.shape
    for n in prange(N):
        for f in range(F):
            g = gate[n, f]
            h[n, f] = g / (1 + fast_exp(-g)) * up[n, f]


# forward: h = g σ(g) u -> dh/du = g σ(g); dh/dg = u (σ + g σ (1 - σ)) = u σ (1 + g (1 - σ)),
# σ recomputed from g (the cache keeps only gate and up)
@njit(parallel=True, cache=True, fastmath=FAST, nogil=True)
def _swiglu_product_backward(dh, gate, up, dgate, dup):
    N, F = gate.shape
    for n in prange(N):
        for f in range(F):
            g = gate[n, f]
            sig = 1 / (1 + fast_exp(-g))
            dup[n, f] = dh[n, f] * g * sig
            dgate[n, f] = dh[n, f] * up[n, f] * sig * (1 + g * (1 - sig))


def swiglu_product_forward(gate, up):
    """Same contract as layers.swiglu_product_forward, but the cache is (gate, up) only:
    backward recomputes σ(gate), two (B, T, F) tensors fewer kept per layer."""
    h = np.empty(gate.shape, gate.dtype)
    _swiglu_product_forward(_rows(gate), _rows(up), h.reshape(-1, gate.shape[-1]))
    return h, SwigluProductCache(gate, up)


class SwigluProductCache(tuple):
    """(gate, up): the kernel's cache, a type of its own so backward knows who made it."""

    def __new__(cls, gate, up):
        return super().__new__(cls, (gate, up))


def swiglu_product_backward(dh, cache):
    """Returns dgate, dup. forward: h = g σ(g) u -> dup = dh · g σ(g) and
    dgate = dh · u · σ(g) (1 + g (1 - σ(g))), the SiLU derivative (layers.silu_backward)."""
    gate, up = cache
    dgate, dup = np.empty(gate.shape, gate.dtype), np.empty(gate.shape, gate.dtype)
    F = gate.shape[-1]
    _swiglu_product_backward(_rows(dh), _rows(gate), _rows(up), dgate.reshape(-1, F), dup.reshape(-1, F))
    return dgate, dup


# ---------------------------------------------------------------------------------------------
# RoPE, rotate-half: y = x cos + R(x) sin with R(x1, x2) = (-x2, x1) on the halves of D


@njit(parallel=True, cache=True, nogil=True)
def _rope(x, cos, sin, sign, y):
    """x (B, T, H, D) turned by its position's angle, sign +1 (forward: y = x cos + R(x) sin),
    or turned back, sign -1 (backward: dx = dy cos - R(dy sin)); cos/sin (T, D)."""
    B, T, H, D = x.shape
    half = D // 2
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        for h in range(H):
            for i in range(half):
                x1, x2 = x[b, t, h, i], x[b, t, h, i + half]
                if sign > 0:        # y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin
                    y[b, t, h, i] = x1 * cos[t, i] - x2 * sin[t, i]
                    y[b, t, h, i + half] = x2 * cos[t, i + half] + x1 * sin[t, i + half]
                else:               # dx1 = dy1 cos + dy2 sin, dx2 = dy2 cos - dy1 sin
                    y[b, t, h, i] = x1 * cos[t, i] + x2 * sin[t, i + half]
                    y[b, t, h, i + half] = x2 * cos[t, i + half] - x1 * sin[t, i]


def rope_forward(x, cos, sin):
    """Same contract and cache as attention.rope_forward: x (B, T, H, D), cos/sin (T, D)."""
    y = np.empty(x.shape, x.dtype)
    _rope(np.ascontiguousarray(x), np.ascontiguousarray(cos), np.ascontiguousarray(sin), 1, y)
    return y, (cos, sin)


def rope_backward(dy, cache):
    """dx = dy cos - R(dy sin) (derivation in attention.rope_backward): per pair,
    dx1 = dy1 cos1 + dy2 sin2, dx2 = dy2 cos2 - dy1 sin1."""
    cos, sin = cache
    dx = np.empty(dy.shape, dy.dtype)
    _rope(np.ascontiguousarray(dy), np.ascontiguousarray(cos), np.ascontiguousarray(sin), -1, dx)
    return dx


# ---------------------------------------------------------------------------------------------
# Softmax, log-softmax and the softmax Jacobian over the last axis (attention's scores, the
# distillation losses' logits)


@njit(inline="always", fastmath=FAST)
def _exp_shifted_row(z, e):
    """One row: m = max z, e = exp(z - m) (no exp overflows), s = Σ e. Returns m, s (float64)."""
    m = z[0]
    for j in range(1, z.shape[0]):
        m = max(m, z[j])
    s = 0.0
    for j in range(z.shape[0]):
        e[j] = fast_exp(z[j] - m)
        s += e[j]
    return m, s


@njit(parallel=True, cache=True, fastmath=FAST, nogil=True)
def _softmax(z, out, log):
    """Per row, m = max z and s = Σ exp(z - m): out = exp(z - m) / s, or with log=True
    out = z - m - log s."""
    N, V = z.shape
    for n in prange(N):
        row, o = z[n], out[n]
        m, s = _exp_shifted_row(row, o)
        if log:
            shift = z.dtype.type(m + math.log(s))
            for j in range(V):
                o[j] = row[j] - shift
        else:
            scale = z.dtype.type(1.0 / s)
            for j in range(V):
                o[j] *= scale


# forward: p = softmax(z) -> dp_i/dz_j = p_i ([i = j] - p_j), so dz_j = p_j (dp_j - Σ_i p_i dp_i):
# one dot product per row, then one pass
@njit(parallel=True, cache=True, fastmath=FAST, nogil=True)
def _softmax_backward(dprobs, probs, dz):
    N, V = probs.shape
    for n in prange(N):
        dot = 0.0                                      # Σ_j p_j dp_j, float64
        for j in range(V):
            dot += probs[n, j] * dprobs[n, j]
        d = probs.dtype.type(dot)
        for j in range(V):
            dz[n, j] = probs[n, j] * (dprobs[n, j] - d)


def softmax(logits):
    """Same contract as layers.softmax: probabilities over the last axis, a new array."""
    z = _rows(logits)
    out = np.empty_like(z)
    _softmax(z, out, False)
    return out.reshape(logits.shape)


def log_softmax(logits):
    """Same contract as layers.log_softmax: log-probabilities over the last axis."""
    z = _rows(logits)
    out = np.empty_like(z)
    _softmax(z, out, True)
    return out.reshape(logits.shape)


def softmax_backward(dprobs, probs):
    """dz = p ⊙ (dp - Σ_j p_j dp_j), as layers.softmax_backward (derivation there)."""
    dz = np.empty(probs.shape, probs.dtype)
    _softmax_backward(_rows(dprobs), _rows(probs), dz.reshape(-1, probs.shape[-1]))
    return dz


# ---------------------------------------------------------------------------------------------
# Softmax cross-entropy, fused. Forward reads each row of logits twice (its max, then exp(z - m)
# written into one (N, V) buffer and summed) and keeps the buffer and the row sums; backward
# turns that buffer into dlogits in place, one multiply per entry and no second exp


@njit(parallel=True, cache=True, fastmath=FAST, nogil=True)
def _cross_entropy_forward(logits, targets, exp_shifted, row_sum, row_loss):
    """Per row: m = max z, e = exp(z - m) (no overflow), s = Σ e, and -log p(target) =
    log s - (z[target] - m) (0 where target < 0: ignored)."""
    for n in prange(logits.shape[0]):
        z = logits[n]
        m, s = _exp_shifted_row(z, exp_shifted[n])
        row_sum[n] = s
        t = targets[n]
        row_loss[n] = math.log(s) - (z[t] - m) if t >= 0 else 0.0


# forward: loss = Σ_n w_n (log s_n - (z_nt - m_n)) -> dz_nj = w_n (e_nj / s_n - [j = t_n]):
# softmax minus the one-hot, weighted (w_n = dloss / count, 0 where ignored)
@njit(parallel=True, cache=True, fastmath=FAST, nogil=True)
def _cross_entropy_backward(exp_shifted, row_sum, targets, row_weight):
    """exp_shifted becomes dlogits: softmax = e / s, so row n is e · (w_n / s_n), and the
    target's entry loses w_n (the one-hot)."""
    N, V = exp_shifted.shape
    for n in prange(N):
        scale = exp_shifted.dtype.type(row_weight[n] / row_sum[n])
        e = exp_shifted[n]
        for j in range(V):
            e[j] *= scale
        if targets[n] >= 0:
            e[targets[n]] -= row_weight[n]


class CrossEntropyCache:
    """What backward needs: exp(z - max) (N, V), its row sums (N,), the targets (N,) with -1
    where ignored, the count of the others and the logits' shape. Backward writes dlogits over
    the (N, V) buffer, so a cache serves one backward."""

    def __init__(self, exp_shifted, row_sum, targets, count, shape):
        self.exp_shifted, self.row_sum, self.targets = exp_shifted, row_sum, targets
        self.count, self.shape = count, shape


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """Same contract as layers.cross_entropy_forward: the mean of -log p(target) over the
    positions whose target is not ignore_index, as a 0-d array, and the cache."""
    z = _rows(logits)
    t = targets.reshape(-1).astype(np.int64)
    t = np.where(t == ignore_index, -1, t)
    if t.size and (t.max() >= z.shape[1] or t.min() < -1):     # the kernel reads z[n, t] unchecked
        bad = int(t.max()) if t.max() >= z.shape[1] else int(t.min())
        raise ValueError(f"target id {bad} is outside the vocabulary (size {z.shape[1]})")
    exp_shifted, row_sum, row_loss = np.empty_like(z), np.empty(z.shape[0]), np.empty(z.shape[0])
    _cross_entropy_forward(z, t, exp_shifted, row_sum, row_loss)
    count = max(int((t >= 0).sum()), 1)
    loss = np.asarray(row_loss.sum() / count, logits.dtype)
    return loss, CrossEntropyCache(exp_shifted, row_sum, t, count, logits.shape)


def cross_entropy_backward(dloss, cache):
    """forward: loss = -(1/N) Σ log softmax(z)[y] -> dz = (softmax(z) - onehot(y)) · dloss / N
    at counted positions, 0 at ignored ones."""
    if cache.exp_shifted is None:
        raise RuntimeError("cross_entropy_backward: this cache served a backward already "
                           "(its buffer became that dlogits); run the forward again")
    row_weight = np.where(cache.targets >= 0, float(dloss) / cache.count, 0.0)
    dlogits, cache.exp_shifted = cache.exp_shifted, None
    _cross_entropy_backward(dlogits, cache.row_sum, cache.targets, row_weight)
    return dlogits.reshape(cache.shape)


# ---------------------------------------------------------------------------------------------
# out += x: the gradient accumulation and residual adds of backward, over every core


@njit(parallel=True, cache=True, nogil=True)
def _add_into(out, x):
    for i in prange(out.size):
        out[i] += x[i]


def add_into(out, x):
    """out += x in place, for C-contiguous NumPy arrays of one shape and dtype (else NumPy's
    +=, the reference). Returns out."""
    if (applies(out, x) and out.shape == x.shape and out.dtype == x.dtype
            and out.flags.c_contiguous and x.flags.c_contiguous):
        _add_into(out.reshape(-1), x.reshape(-1))
    else:
        out += x
    return out


# ---------------------------------------------------------------------------------------------
# AdamW, one parameter in one pass (the formula and its order of operations: optim.adamw_update)


@njit(parallel=True, cache=True, nogil=True)
def _adamw(p, g, m, v, beta1, beta2, decay, sqrt_bias2, eps, step_size):
    one = p.dtype.type(1)
    for i in prange(p.size):
        m[i] = m[i] * beta1 + (one - beta1) * g[i]
        v[i] = v[i] * beta2 + (one - beta2) * (g[i] * g[i])
        p[i] = p[i] * decay - m[i] / (math.sqrt(v[i]) / sqrt_bias2 + eps) * step_size


def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """One AdamW step of one parameter, p, m and v updated in place; the contract of
    optim.adamw_update (t: the step number after this update; weight_decay 0: no decay)."""
    s = p.dtype.type                 # scalars in p's dtype, as NumPy casts them in optim.py
    bias1, bias2 = 1 - beta1 ** t, 1 - beta2 ** t
    if not all(a.flags.c_contiguous for a in (p, g, m, v)):
        raise ValueError("adamw_update needs C-contiguous p, g, m, v (it updates them in place)")
    _adamw(*(a.reshape(-1) for a in (p, g, m, v)), s(beta1), s(beta2), s(1 - lr * weight_decay), s(math.sqrt(bias2)), s(eps),
           s(lr / bias1))
