"""Banded attention: the causal sliding window through dense BLAS products over the band only.

The dense reference (attention.py) scores every query against every key, (T, T) per head, and
masks most of them away; the Numba kernel (kernels.py) touches only the window but computes its
dot products in its own loops. This path sits between them: queries go in blocks of Q rows, and
block [s, e) can only see the keys [s - W + 1, e), at most Q + W - 1 of them. So each block is
one small dense attention, (Q, Q + W - 1) scores, computed by BLAS:

    keys:      0 1 2 3 4 5 6 7            T = 8, W = 3, Q = 2
    block 0   [. .]                        queries 0-1 see keys 0-1
    block 1   [. . . .]                    queries 2-3 see keys 1-3 (the band starts at s - W + 1)
    block 2       [. . . .]                queries 4-5 see keys 3-5 ...

Work and memory are O(T · (Q + W)) per head instead of O(T²). A smaller Q wastes less of each
block on masked scores (Q + W - 1 columns for W useful ones) but makes more, smaller BLAS calls;
Q = W / 2 measured fastest (benchmarks/attention.py). Same contract as attention.py's reference
for training (T keys, T queries); GQA: query head h reads kv head h // (H // Hkv).

Each BLAS call here is small (a few MFLOP), too small for a multi-threaded BLAS to split well;
but the (sequence, kv head) pairs are independent, so slices of them run on separate threads,
each with a one-thread BLAS (threads.in_parallel).
"""
import math

from mini_llm import threads
from mini_llm.backend import array_module
from mini_llm.model.layers import softmax_backward
from mini_llm.model.window import window_softmax

MIN_BLOCK, MAX_BLOCK = 16, 128      # the default block, W // 2, clipped to this range


def default_block(T, window):
    """Q, the query rows per block: half the window (of T when window is None), clipped to
    [MIN_BLOCK, MAX_BLOCK], at most T."""
    W = T if window is None else window
    return min(T, max(MIN_BLOCK, min(MAX_BLOCK, W // 2)))


def query_blocks(T, window, block):
    """(s, e, ks) per block: query rows [s, e) for s = 0, Q, 2Q, .., and ks = max(0, s - W + 1),
    the first key any of them can see (0 for window None). Example T=5, W=2, Q=2:
    (0, 2, 0), (2, 4, 1), (4, 5, 3)."""
    return [(s, min(s + block, T), 0 if window is None else max(0, s - window + 1))
            for s in range(0, T, block)]


def _by_kv_head(x, Hkv):
    """(B, T, H, D) -> contiguous (B * Hkv, G, T, D), G = H // Hkv: one row per (sequence, kv
    head), holding the G query heads that share it, so that one broadcast matmul serves all G."""
    B, T, H, D = x.shape
    xp = array_module(x)
    heads = x.reshape(B, T, Hkv, H // Hkv, D).transpose(0, 2, 3, 1, 4)          # (B, Hkv, G, T, D)
    return xp.ascontiguousarray(heads).reshape(B * Hkv, H // Hkv, T, D)


def _by_token(x, B):
    """(B * Hkv, G, T, D) -> contiguous (B, T, Hkv * G, D), the inverse of _by_kv_head."""
    N, G, T, D = x.shape
    heads = x.reshape(B, N // B, G, T, D).transpose(0, 3, 1, 2, 4)               # (B, T, Hkv, G, D)
    return array_module(x).ascontiguousarray(heads).reshape(B, T, N // B * G, D)


def _forward_heads(qh, kh, vh, out, window, Q):
    """One slice of heads: qh, out (N, G, T, D), kh/vh (N, 1, T, D). Per block of queries:
    s = q_b k_bᵀ · scale over its keys, p = window_softmax(s), out_b = p v_b. Returns the
    blocks' p, kept for backward."""
    scale = 1.0 / math.sqrt(qh.shape[-1])
    probs = []
    for s, e, ks in query_blocks(qh.shape[2], window, Q):
        scores = qh[:, :, s:e] @ kh[:, :, ks:e].swapaxes(-1, -2)       # (N, G, e-s, e-ks)
        p = window_softmax(scores, scale, window, q_start=s - ks)      # query s is the block's key s - ks
        out[:, :, s:e] = p @ vh[:, :, ks:e]                             # (N, G, e-s, D)
        probs.append(p)
    return probs


# per block, as the dense reference: dv_b += pᵀ dout_b, dp = dout_b v_bᵀ,
# ds = p ⊙ (dp - Σ_j dp ⊙ p) (masked p = 0, so masked ds = 0), dq_b = ds k_b · scale,
# dk_b += dsᵀ q_b · scale. Neighbouring blocks share W - 1 keys, so a key sums the terms of
# every block that saw it (+=), and a kv head sums its G query heads' terms (axis 1).
def _backward_heads(do, qh, kh, vh, probs, dq, dk, dv, window, Q):
    """One slice of heads: fills dq (N, G, T, D), dk, dv (N, 1, T, D, zeros on entry)."""
    scale = 1.0 / math.sqrt(qh.shape[-1])
    for (s, e, ks), p in zip(query_blocks(qh.shape[2], window, Q), probs):
        do_b, k_b, v_b = do[:, :, s:e], kh[:, :, ks:e], vh[:, :, ks:e]
        dv[:, :, ks:e] += (p.swapaxes(-1, -2) @ do_b).sum(axis=1, keepdims=True)
        dp = do_b @ v_b.swapaxes(-1, -2)                               # (N, G, e-s, e-ks)
        ds = softmax_backward(dp, p)
        dq[:, :, s:e] = ds @ k_b
        dk[:, :, ks:e] += (ds.swapaxes(-1, -2) @ qh[:, :, s:e]).sum(axis=1, keepdims=True)
    dq *= scale
    dk *= scale


def banded_attention_forward(q, k, v, window, block=None):
    """q (B, T, H, D), k/v (B, T, Hkv, D) -> out (B, T, H, D), cache. block: Q (default_block).
    The (sequence, kv head) rows are independent: slices of them run on separate threads
    (threads.in_parallel), each through all its blocks."""
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    Q = block or default_block(T, window)
    qh, kh, vh = _by_kv_head(q, Hkv), _by_kv_head(k, Hkv), _by_kv_head(v, Hkv)  # (B*Hkv, G|1, T, D)
    out = array_module(q).empty_like(qh)
    bounds = threads.slices(qh.shape[0])
    probs = threads.in_parallel(lambda lo, hi: _forward_heads(qh[lo:hi], kh[lo:hi], vh[lo:hi],
                                                              out[lo:hi], window, Q), bounds)
    return _by_token(out, B), (qh, kh, vh, probs, bounds, window, Q)


def banded_attention_backward(dout, cache):
    """dout (B, T, H, D) -> dq (B, T, H, D), dk, dv (B, T, Hkv, D), slice by slice as forward."""
    qh, kh, vh, probs, bounds, window, Q = cache
    B = dout.shape[0]
    xp = array_module(dout)
    do = _by_kv_head(dout, kh.shape[0] // B)                           # (B*Hkv, G, T, D)
    dq, dk, dv = xp.empty_like(qh), xp.zeros_like(kh), xp.zeros_like(vh)
    probs_of = dict(zip(bounds, probs))                               # each slice's blocks

    def backward(lo, hi):
        _backward_heads(do[lo:hi], qh[lo:hi], kh[lo:hi], vh[lo:hi], probs_of[lo, hi],
                        dq[lo:hi], dk[lo:hi], dv[lo:hi], window, Q)
    threads.in_parallel(backward, bounds)
    return _by_token(dq, B), _by_token(dk, B), _by_token(dv, B)
