"""Numba CPU kernels for causal sliding-window attention with GQA (Mistral: query t sees the keys
t-W+1 .. t). attention.py holds the readable reference, with dense (B, H, T, T) scores and a
mask; this file computes the same numbers while touching only the W keys of each query's window:
O(T·W·D) work and O(T·D) memory instead of O(T²). tests/test_kernels.py pins the two together,
benchmarks/attention.py times them. Also here: window_softmax, the one-pass softmax over each
query's visible keys that the banded and dense paths use (window.py holds its reference).

Forward returns, besides `out`, the log-sum-exp of each query's scaled scores, lse (B, T, H).
Backward is FlashAttention-style: nothing of size T×W is stored; the probabilities are
recomputed as p = exp(s - lse), and delta_t = Σ_d dout[t, d] out[t, d] stands in for the
softmax-Jacobian term Σ_j p_tj dp_tj.

How it is made fast:
  - Work is split into tasks of BLOCK queries (or keys) of one (batch, head); prange hands them
    to the threads one by one. A task writes only its own rows of out and dq (or of dk and dv),
    so there are no write races and no atomics.
  - A task first copies the rows its queries can see (at most BLOCK+W-1 of them) into a
    transposed tile (D, L). The dot products of one query with its whole window then become
    D axpys over contiguous memory, s[i] += q[d] · tile[d, i], whose lanes are independent, so
    LLVM vectorises them without fastmath; the weighted sums Σ_i p_i v_i are axpys over
    contiguous rows. The tile also keeps a task's working set small whatever T is.
  - The inner loops take four d (or four rows) per pass: a quarter of the loads and stores.
Precision: dot products, weighted sums and exp run in the input dtype, float32 or float64 (as
the matmuls and exp of the reference do); forward's Σ exp and the lse it returns are float64.
"""
import math

import numpy as np
from numba import njit, parallel_chunksize, prange

from mini_llm.model.config import check_window
from mini_llm.model.row_kernels import FAST, _exp_shifted_row
from mini_llm.progress import warm_up

BLOCK = 64          # queries (or keys) per parallel task


# ---------------------------------------------------------------------------------------------
# Inner loops shared by forward and backward


@njit(fastmath=False, cache=True)
def _copy_transposed(rows, lo, n, tile):
    """tile[:, i] = rows[lo + i] for i < n. rows (T, D), tile (D, >= n): a block's window of
    rows, transposed, so that its dot products become contiguous axpys (see _window_dots)."""
    for i in range(n):
        row = rows[lo + i]
        for d in range(row.shape[0]):
            tile[d, i] = row[d]


@njit(fastmath=False, cache=True)
def _window_dots(x, tile, lo, n, s):
    """s[i] = x · tile[:, lo + i] for i < n. x (D,), tile (D, L): rows of the window as columns.
    The slices make i count from 0, which is what lets LLVM vectorise the loops."""
    s[:n] = 0
    D = x.shape[0]
    D4 = D - D % 4
    for d in range(0, D4, 4):
        x0, x1, x2, x3 = x[d], x[d + 1], x[d + 2], x[d + 3]
        r0, r1 = tile[d, lo:lo + n], tile[d + 1, lo:lo + n]
        r2, r3 = tile[d + 2, lo:lo + n], tile[d + 3, lo:lo + n]
        for i in range(n):
            s[i] += (x0 * r0[i] + x1 * r1[i]) + (x2 * r2[i] + x3 * r3[i])
    for d in range(D4, D):
        xd, r = x[d], tile[d, lo:lo + n]
        for i in range(n):
            s[i] += xd * r[i]


@njit(fastmath=False, cache=True)
def _add_weighted_rows(w, rows, lo, n, acc):
    """acc += Σ_{i<n} w[i] rows[lo + i]. w (>= n,), rows (T, D), acc (D,)."""
    n4 = n - n % 4
    for i in range(0, n4, 4):
        w0, w1, w2, w3 = w[i], w[i + 1], w[i + 2], w[i + 3]
        r0, r1, r2, r3 = rows[lo + i], rows[lo + i + 1], rows[lo + i + 2], rows[lo + i + 3]
        for d in range(acc.shape[0]):
            acc[d] += (w0 * r0[d] + w1 * r1[d]) + (w2 * r2[d] + w3 * r3[d])
    for i in range(n4, n):
        wi, r = w[i], rows[lo + i]
        for d in range(acc.shape[0]):
            acc[d] += wi * r[d]


# ---------------------------------------------------------------------------------------------
# Forward


@njit(parallel=True, fastmath=False, cache=True, nogil=True)
def _forward(q, k, v, window, scale, out, lse):
    """q (B, H, T, D), k/v (B, Hkv, T, D) -> out (B, H, T, D), lse (B, H, T), written in place
    (out must come in zeroed)."""
    B, H, T, D = q.shape
    group = H // k.shape[1]
    n_blocks = (T + BLOCK - 1) // BLOCK
    for task in prange(B * H * n_blocks):
        b, h, block = task // (H * n_blocks), (task // n_blocks) % H, task % n_blocks
        kv = h // group
        t0, t1 = block * BLOCK, min(T, (block + 1) * BLOCK)      # this task's queries
        first = max(0, t0 - window + 1)                          # first key they see
        k_tile = np.empty((D, t1 - first), q.dtype)
        _copy_transposed(k[b, kv], first, t1 - first, k_tile)
        s = np.empty(window, q.dtype)
        for t in range(t0, t1):
            lo = max(0, t - window + 1)                          # the window: keys lo .. t
            n = t - lo + 1
            _window_dots(q[b, h, t], k_tile, lo - first, n, s)
            m = s[0]
            for i in range(1, n):
                m = max(m, s[i])
            total = 0.0
            for i in range(n):                                   # s <- unnormalised p
                e = math.exp((s[i] - m) * scale)
                s[i] = e
                total += e
            _add_weighted_rows(s, v[b, kv], lo, n, out[b, h, t])
            for d in range(D):
                out[b, h, t, d] /= total
            lse[b, h, t] = m * scale + math.log(total)


# ---------------------------------------------------------------------------------------------
# Backward: forward s = q kᵀ·scale, p = exp(s - lse), out = p v. With dp = dout vᵀ and
# ds = p ⊙ (dp - delta): dq = ds k·scale, dk = dsᵀ q·scale, dv = pᵀ dout.


@njit(parallel=True, fastmath=False, cache=True, nogil=True)
def _backward_dq(q, k, v, dout, lse, delta, window, scale, dq):
    """dq_t = Σ_{j in window(t)} ds_tj k_j, one query row at a time, added into dq (B, H, T, D),
    which comes in zeroed; the caller applies the scale."""
    B, H, T, D = q.shape
    group = H // k.shape[1]
    n_blocks = (T + BLOCK - 1) // BLOCK
    for task in prange(B * H * n_blocks):
        b, h, block = task // (H * n_blocks), (task // n_blocks) % H, task % n_blocks
        kv = h // group
        t0, t1 = block * BLOCK, min(T, (block + 1) * BLOCK)
        first = max(0, t0 - window + 1)
        k_tile = np.empty((D, t1 - first), q.dtype)
        v_tile = np.empty((D, t1 - first), q.dtype)
        _copy_transposed(k[b, kv], first, t1 - first, k_tile)
        _copy_transposed(v[b, kv], first, t1 - first, v_tile)
        s = np.empty(window, q.dtype)
        dp = np.empty(window, q.dtype)
        for t in range(t0, t1):
            lo = max(0, t - window + 1)
            n = t - lo + 1
            _window_dots(q[b, h, t], k_tile, lo - first, n, s)      # s_tj / scale
            _window_dots(dout[b, h, t], v_tile, lo - first, n, dp)  # dp_tj
            for i in range(n):                                      # s <- ds
                p = math.exp(s[i] * scale - lse[b, h, t])
                s[i] = p * (dp[i] - delta[b, h, t])
            _add_weighted_rows(s, k[b, kv], lo, n, dq[b, h, t])


@njit(parallel=True, fastmath=False, cache=True, nogil=True)
def _backward_dkdv(q, k, v, dout, lse, delta, window, scale, dk, dv):
    """For each key j: the queries that see it are t = j .. j+W-1 of every head in its kv
    group; dk_j = Σ ds_tj q_t (the caller applies the scale), dv_j = Σ p_tj dout_t. Added
    into dk, dv (B, Hkv, T, D), which come in zeroed."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    group = H // Hkv
    n_blocks = (T + BLOCK - 1) // BLOCK
    for task in prange(B * Hkv * n_blocks):
        b, kv, block = task // (Hkv * n_blocks), (task // n_blocks) % Hkv, task % n_blocks
        j0, j1 = block * BLOCK, min(T, (block + 1) * BLOCK)      # this task's keys
        end = min(T, j1 + window - 1)                            # queries j0 .. end-1 see them
        q_tile = np.empty((D, end - j0), q.dtype)
        dout_tile = np.empty((D, end - j0), q.dtype)
        p = np.empty(window, q.dtype)
        ds = np.empty(window, q.dtype)
        for h in range(kv * group, (kv + 1) * group):
            _copy_transposed(q[b, h], j0, end - j0, q_tile)
            _copy_transposed(dout[b, h], j0, end - j0, dout_tile)
            for j in range(j0, j1):
                n = min(T, j + window) - j                           # queries j .. j+n-1
                _window_dots(k[b, kv, j], q_tile, j - j0, n, p)      # s_tj / scale
                _window_dots(v[b, kv, j], dout_tile, j - j0, n, ds)  # dp_tj
                for i in range(n):
                    p[i] = math.exp(p[i] * scale - lse[b, h, j + i])
                    ds[i] = p[i] * (ds[i] - delta[b, h, j + i])
                _add_weighted_rows(p, dout[b, h], j, n, dv[b, kv, j])
                _add_weighted_rows(ds, q[b, h], j, n, dk[b, kv, j])


# ---------------------------------------------------------------------------------------------
# The window softmax (window.py's reference): a block of scores -> probabilities, one pass per row


@njit(parallel=True, cache=True, fastmath=FAST, nogil=True)
def _window_softmax(scores, scale, window, q_start, probs):
    """scores, probs (M, T_q, T_k). Row i of each matrix is the query at key position q_start + i;
    it sees the keys lo .. hi-1: probs there = softmax(scale · scores), 0 elsewhere (window <= 0:
    plain causal, lo = 0). Only the visible keys are read."""
    M, T_q, T_k = scores.shape
    for r in prange(M * T_q):
        z, p = scores[r // T_q, r % T_q], probs[r // T_q, r % T_q]
        pos = q_start + r % T_q
        lo, hi = (max(0, pos - window + 1) if window > 0 else 0), min(pos + 1, T_k)
        p[:lo] = 0
        p[hi:] = 0
        band = p[lo:hi]
        for j in range(hi - lo):
            band[j] = z[lo + j] * scale
        _, s = _exp_shifted_row(band, band)            # band = exp(band - max), s = its sum
        inv = probs.dtype.type(1.0 / s)
        for j in range(hi - lo):
            band[j] *= inv


def window_softmax(scores, scale, window, q_start):
    """Same contract as window.window_softmax: scores (..., T_q, T_k) -> probs, a new array."""
    T_q, T_k = scores.shape[-2:]
    z = np.ascontiguousarray(scores).reshape(-1, T_q, T_k)
    probs = np.empty_like(z)
    _warm_up(z.dtype, "window softmax")
    _window_softmax(z, z.dtype.type(scale), 0 if window is None else int(window), int(q_start), probs)
    return probs.reshape(scores.shape)


# ---------------------------------------------------------------------------------------------
# Python wrappers: (B, T, H, D) in and out, like attention.py


def checked_window(q, k, v, window, who="kernel"):
    """The effective window (T when None, at most T), after checking dtypes and shapes (the
    Numba kernels here and the CUDA kernels of gpu_kernels.py take the same inputs)."""
    if q.dtype not in (np.float32, np.float64) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{who} needs float32 or float64 q, k, v of one dtype, "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    B, T, H, D = q.shape
    if k.shape != v.shape or k.shape[:2] != (B, T) or k.shape[3] != D or H % k.shape[2]:
        raise ValueError(f"attention shapes do not fit: q {q.shape}, k {k.shape}, v {v.shape}")
    check_window(window)
    return T if window is None else min(int(window), T)


def _heads_major(x):
    """(B, T, H, D) -> contiguous (B, H, T, D)."""
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3))


_warmed_parts = set()      # (dtype, part) pairs _warm_up has compiled (or loaded) already


def _warm_up(dtype, part):
    """Compile one part's kernels ("forward", "backward", "window softmax") for `dtype` on one
    token, one head, D=1, before their first real call: on a first run that takes seconds, and a
    notice says so. Later calls cost one set lookup (window_softmax runs once per query block)."""
    if (dtype, part) in _warmed_parts:
        return
    _warmed_parts.add((dtype, part))
    x, row = np.zeros((1, 1, 1, 1), dtype), np.zeros((1, 1, 1), dtype)
    scale = dtype.type(1.0)
    if part == "backward":
        warm_up(f"attention backward {dtype}", f"attention backward kernels for {dtype}",
                lambda: (_backward_dq(x, x, x, x, row, row, 1, scale, x.copy()),
                         _backward_dkdv(x, x, x, x, row, row, 1, scale, x.copy(), x.copy())))
    elif part == "forward":
        warm_up(f"attention forward {dtype}", f"attention forward kernel for {dtype}",
                lambda: _forward(x, x, x, 1, scale, x.copy(), np.zeros((1, 1, 1), np.float64)))
    else:
        warm_up(f"window softmax {dtype}", f"window softmax kernel for {dtype}",
                lambda: _window_softmax(row, scale, 1, 0, row.copy()))


def sliding_window_attention_forward(q, k, v, window):
    """q (B, T, H, D), k/v (B, T, Hkv, D) -> out (B, T, H, D) in q's dtype, lse (B, T, H) float64.
    window None means full causal attention."""
    W = checked_window(q, k, v, window)
    B, T, H, D = q.shape
    scale = q.dtype.type(1.0 / math.sqrt(D))            # in q's dtype, so float32 stays float32
    out = np.zeros((B, H, T, D), q.dtype)
    lse = np.empty((B, H, T), np.float64)
    _warm_up(q.dtype, "forward")
    with parallel_chunksize(1):          # hand out tasks one by one: a busy core does fewer
        _forward(_heads_major(q), _heads_major(k), _heads_major(v), W, scale, out, lse)
    return np.ascontiguousarray(out.transpose(0, 2, 1, 3)), np.ascontiguousarray(lse.transpose(0, 2, 1))


def sliding_window_attention_backward(dout, q, k, v, out, lse, window):
    """Returns dq (B, T, H, D), dk, dv (B, T, Hkv, D) for the forward above (out and lse are its
    outputs)."""
    W = checked_window(q, k, v, window)
    B, T, H, D = q.shape
    scale = q.dtype.type(1.0 / math.sqrt(D))
    dout = dout.astype(q.dtype, copy=False)
    qh, kh, vh, dout_h = _heads_major(q), _heads_major(k), _heads_major(v), _heads_major(dout)
    lse_h = np.ascontiguousarray(lse.transpose(0, 2, 1), dtype=q.dtype)                  # (B, H, T)
    delta = np.sum(dout_h * _heads_major(out), axis=-1, dtype=np.float64).astype(q.dtype)  # (B, H, T)
    dq, dk, dv = np.zeros_like(qh), np.zeros_like(kh), np.zeros_like(vh)
    _warm_up(q.dtype, "backward")
    with parallel_chunksize(1):
        _backward_dq(qh, kh, vh, dout_h, lse_h, delta, W, scale, dq)
        _backward_dkdv(qh, kh, vh, dout_h, lse_h, delta, W, scale, dk, dv)

    dq *= scale                                            # the kernels leave the scale out
    dk *= scale

    def tokens_major(g):                                   # (B, H, T, D) -> (B, T, H, D)
        return np.ascontiguousarray(g.transpose(0, 2, 1, 3))

    return tokens_major(dq), tokens_major(dk), tokens_major(dv)
