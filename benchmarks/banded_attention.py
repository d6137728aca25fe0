"""Banded dense attention: the sliding window computed with dense NumPy matmuls over the band only.

A baseline for benchmarks/attention.py, between the dense reference (full (B, H, T, T) scores,
O(T²·D)) and the Numba kernel (O(T·W·D)): queries go in blocks of `block` rows (Q); block [s, e)
can only see keys [s - W + 1, e) (at most Q + W - 1 of them), so each block is one small dense
attention: (Q, Q + W - 1) scores, mask, softmax, @ v, through BLAS. Work and memory O(T·(Q + W))
per head. Q = W computes 2x the band; Q = W / 2 (benchmarks/attention.py's default) 1.5x in twice
the calls: at T 4096-8192, W 256 it took ~0.7x the time of Q = W (Q = W / 4 about the same, W / 8 more).
Same contract as mini_llm.model.attention's reference (q (B, T, H, D), k/v (B, T, Hkv, D), GQA:
query head h reads kv head h // (H // Hkv)); training only (Tk = T), window not None.
"""
import math

import numpy as np

from mini_llm.model.attention import window_mask


def blocks(T, W, Q):
    """(s, e, ks) per block: query rows [s, e), s = 0, Q, 2Q, .., and the first key they can see,
    ks = max(0, s - W + 1). Example T=5, W=2, Q=2: (0, 2, 0), (2, 4, 1), (4, 5, 3)."""
    return [(s, min(s + Q, T), max(0, s - W + 1)) for s in range(0, T, Q)]


def banded_attention_forward(q, k, v, window, block=None):
    """q (B, T, H, D), k/v (B, T, Hkv, D) -> out (B, T, H, D), cache. block: Q (default W).
    Heads are laid out (B, Hkv, G, T, D) with G = H // Hkv query heads per kv head, so one
    broadcast matmul serves a kv head's G query heads without repeating k and v."""
    B, T, H, D = q.shape
    Hkv, W = k.shape[2], window
    Q = block or W
    G = H // Hkv
    scale = 1.0 / math.sqrt(D)
    qh = np.ascontiguousarray(q.reshape(B, T, Hkv, G, D).transpose(0, 2, 3, 1, 4))   # (B, Hkv, G, T, D)
    kh = np.ascontiguousarray(k.transpose(0, 2, 1, 3))[:, :, None]                  # (B, Hkv, 1, T, D)
    vh = np.ascontiguousarray(v.transpose(0, 2, 1, 3))[:, :, None]                  # (B, Hkv, 1, T, D)
    out = np.empty_like(qh)
    probs = []
    for s, e, ks in blocks(T, W, Q):
        scores = (qh[..., s:e, :] @ kh[..., ks:e, :].swapaxes(-1, -2)) * scale      # (B, Hkv, G, e-s, e-ks)
        scores = np.where(window_mask(e - s, e - ks, W, q_start=s - ks), scores, -np.inf)
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))   # each row sees its own key: finite max
        p /= p.sum(axis=-1, keepdims=True)
        out[..., s:e, :] = p @ vh[..., ks:e, :]                                      # (B, Hkv, G, e-s, D)
        probs.append(p)
    out = np.ascontiguousarray(out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, D))
    return out, (qh, kh, vh, probs, W, Q)


def banded_attention_backward(dout, cache):
    """dout (B, T, H, D) -> dq (B, T, H, D), dk, dv (B, T, Hkv, D).
    forward, per block: s = q_b k_bᵀ·scale, p = softmax(masked s), out_b = p v_b ->
    dv_b += pᵀ dout_b, dp = dout_b v_bᵀ, ds = p ⊙ (dp - Σ_j dp ⊙ p) (masked p = 0, so masked ds = 0),
    dq_b = ds k_b·scale, dk_b += dsᵀ q_b·scale. A key lies in the ranges of several blocks (each
    overlaps the next by W - 1 keys), so it sums their terms (+=); a kv head sums its G query
    heads' terms (the sum over axis 2)."""
    qh, kh, vh, probs, W, Q = cache
    B, Hkv, G, T, D = qh.shape
    scale = 1.0 / math.sqrt(D)
    do = np.ascontiguousarray(dout.reshape(B, T, Hkv, G, D).transpose(0, 2, 3, 1, 4))  # (B, Hkv, G, T, D)
    dq = np.empty_like(qh)
    dk, dv = np.zeros((B, Hkv, T, D), qh.dtype), np.zeros((B, Hkv, T, D), qh.dtype)
    for (s, e, ks), p in zip(blocks(T, W, Q), probs):
        do_b, k_b, v_b = do[..., s:e, :], kh[..., ks:e, :], vh[..., ks:e, :]
        dv[:, :, ks:e] += (p.swapaxes(-1, -2) @ do_b).sum(axis=2)
        dp = do_b @ v_b.swapaxes(-1, -2)                                             # (B, Hkv, G, e-s, e-ks)
        ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
        dq[..., s:e, :] = (ds @ k_b) * scale
        dk[:, :, ks:e] += (ds.swapaxes(-1, -2) @ qh[..., s:e, :]).sum(axis=2) * scale
    dq = np.ascontiguousarray(dq.transpose(0, 3, 1, 2, 4).reshape(B, T, Hkv * G, D))
    return dq, np.ascontiguousarray(dk.transpose(0, 2, 1, 3)), np.ascontiguousarray(dv.transpose(0, 2, 1, 3))
