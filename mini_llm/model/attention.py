"""Reference NumPy attention: RoPE, causal + sliding window (Mistral: t-W+1..t), GQA.
Readable, not fast; banded_attention.py (BLAS over the band only) and kernels.py (a Numba kernel)
compute the same thing quickly, and tests/test_banded_attention.py and tests/test_kernels.py pin
them to it.

Shapes follow the legend of layers.py: B batch, T time, C hidden_size, H heads, Hkv kv heads,
D head_dim, W sliding window. Activations are (B, T, H, D); weights use the Hugging Face
[out, in] layout. Every function asks `array_module` for numpy or cupy, so the same code runs on
a GPU; the Numba kernel is CPU-only, and `attention_forward` picks it only for NumPy arrays.

The pieces, in the order a layer uses them:
    rope_cos_sin / rope_forward   rotate q and k by an angle proportional to their position
                                  (optionally Llama 3 / linear scaled frequencies: rope_inv_freq)
    window_mask (window.py)       which keys each query may see (causal band of width W)
    attention_reference_forward   softmax(q kᵀ / sqrt(D) + mask) v, dense (B, H, T, T) scores
    banded_attention_forward      the same over blocks of queries and the band of keys they see
    (banded_attention.py)
    attention_forward             the dispatcher: banded, the Numba kernel, or the reference
    self_attention_forward        projections (+ Qwen2 bias) (+ Qwen3 q/k norm) + RoPE + attention
                                  + output projection
"""
import math

import numpy as np

from mini_llm.backend import array_module
from mini_llm.model import gpu_kernels, row_kernels
from mini_llm.model.banded_attention import banded_attention_backward, banded_attention_forward, default_block
from mini_llm.model.config import check_window
from mini_llm.model.kernels import sliding_window_attention_backward, sliding_window_attention_forward
from mini_llm.model.layers import (linear_backward, linear_bias_backward, linear_bias_forward,
                                   linear_forward, rmsnorm_backward, rmsnorm_forward, softmax_backward)
from mini_llm.model.window import window_mask, window_softmax  # noqa: F401 (window_mask: re-exported)

# ---------------------------------------------------------------------------------------------
# RoPE, rotate-half layout (as Hugging Face LLaMA/Mistral store q_proj and k_proj)
#
# Rotate-half pairs entry i with entry i + D/2 (pair i = (x_i, x_{i+D/2})); the RoFormer paper
# pairs neighbours (x_2i, x_2i+1). The two are the same up to a fixed permutation of the head's
# D dimensions: reorder (0, 1, 2, 3, ...) to (0, D/2, 1, D/2+1, ...) and one becomes the other.
# Since the permutation is fixed it can live in the q_proj / k_proj rows, which is how
# checkpoints converted from Meta's interleaved layout to Hugging Face's are stored.


def rope_inv_freq(head_dim, theta, scaling=None, xp=None):
    """(D/2,) float64: the frequency of each pair, theta^(-2i/D), then the optional scaling
    (docs/rope_scaling.md, transformers' modeling_rope_utils.py):
        linear  every frequency / factor: position p turns as p / factor did
        llama3  wavelength 2π/f below old/high_freq_factor: kept; above old/low_freq_factor:
                / factor; between: mixed, s·f + (1 - s)·f/factor with s = (old/λ - low)/(high - low)
    old = original_max_position_embeddings, the context the model was trained on."""
    xp = np if xp is None else xp
    inv_freq = 1.0 / theta ** (xp.arange(0, head_dim, 2, dtype=xp.float64) / head_dim)   # (D/2,)
    if scaling is None:
        return inv_freq
    factor = scaling["factor"]
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    old, low, high = (scaling[k] for k in ("original_max_position_embeddings",
                                            "low_freq_factor", "high_freq_factor"))
    wavelen = 2 * math.pi / inv_freq                                                      # (D/2,)
    smooth = (old / wavelen - low) / (high - low)              # 1 at λ = old/high, 0 at λ = old/low
    mixed = smooth * inv_freq + (1 - smooth) * inv_freq / factor
    return xp.where(wavelen < old / high, inv_freq,
                    xp.where(wavelen > old / low, inv_freq / factor, mixed))


def rope_cos_sin(seq_len, head_dim, theta, dtype, start=0, xp=None, scaling=None):
    """cos, sin tables, each (T, D), for positions start .. start+T-1.
    Pair i of the head (entries i and i + D/2) turns at frequency theta^(-2i/D), changed by
    `scaling` (config.rope_scaling: Llama 3 or linear, see rope_inv_freq); the angles are
    computed in float64 and only then cast to dtype, so float32 tables stay accurate at large
    positions."""
    xp = np if xp is None else xp
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    inv_freq = rope_inv_freq(head_dim, theta, scaling, xp=xp)                             # (D/2,)
    positions = xp.arange(start, start + seq_len, dtype=xp.float64)                       # (T,)
    angles = xp.outer(positions, inv_freq)                                                # (T, D/2)
    emb = xp.concatenate([angles, angles], axis=-1)                                       # (T, D)
    return xp.cos(emb).astype(dtype), xp.sin(emb).astype(dtype)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis: a 90° turn of every pair."""
    xp = array_module(x)
    half = x.shape[-1] // 2
    return xp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x, cos, sin):
    """x (B, T, H, D), cos/sin (T, D) -> x turned by its position: x cos + rotate_half(x) sin."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def rope_forward(x, cos, sin):
    """apply_rope with a cache for backward. x (B, T, H, D) -> y (B, T, H, D).
    NumPy arrays go to the fused Numba twin (row_kernels.py): one pass, no temporaries."""
    if row_kernels.applies(x, cos, sin):
        return row_kernels.rope_forward(x, cos, sin)
    return apply_rope(x, cos, sin), (cos, sin)


def rope_backward(dy, cache):
    """forward: y = x cos + R(x) sin, R = rotate_half, a linear map with Rᵀ = -R
    (R(x1, x2) = (-x2, x1), so Rᵀ(g1, g2) = (g2, -g1)). Hence dx = dy cos + Rᵀ(dy sin)
    = dy cos - R(dy sin): the rotation by the opposite angle."""
    if row_kernels.applies(dy, *cache):
        return row_kernels.rope_backward(dy, cache)
    cos, sin = cache
    return dy * cos[:, None, :] - rotate_half(dy * sin[:, None, :])


# ---------------------------------------------------------------------------------------------
# Shapes (the causal window itself, window_mask and window_softmax, is in window.py)


def _kv_group(q, k, v):
    """H // Hkv, the number of query heads that share one kv head (GQA), after checking shapes.
    k and v may hold more positions than q (generation: the KV cache's earlier keys first)."""
    if (k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[1] > k.shape[1]
            or q.shape[3] != k.shape[3]):
        raise ValueError(f"attention shapes do not fit: q {q.shape}, k {k.shape}, v {v.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"num_heads {q.shape[2]} is not a multiple of num_kv_heads {k.shape[2]}")
    return q.shape[2] // k.shape[2]


# ---------------------------------------------------------------------------------------------
# Attention, dense reference


def attention_reference_forward(q, k, v, window):
    """q (B, T, H, D), k/v (B, Tk, Hkv, D) -> out (B, T, H, D).
    out = softmax(q kᵀ / sqrt(D), masked to the causal window) v, per head. With GQA (Hkv < H)
    query head h reads kv head h // (H // Hkv): k and v are repeated to H heads.
    Training has Tk = T. Generation with a KV cache passes Tk >= T keys of consecutive
    positions, the queries being the last T of them (so query i sits at key Tk - T + i)."""
    xp = array_module(q, k, v)
    check_window(window)
    group = _kv_group(q, k, v)
    T, Tk, D = q.shape[1], k.shape[1], q.shape[3]
    qh = q.transpose(0, 2, 1, 3)                                       # (B, H, T, D)
    kh = xp.repeat(k, group, axis=2).transpose(0, 2, 1, 3)             # (B, H, Tk, D)
    vh = xp.repeat(v, group, axis=2).transpose(0, 2, 1, 3)             # (B, H, Tk, D)
    scores = qh @ kh.transpose(0, 1, 3, 2)                             # (B, H, T, Tk)
    # softmax(scores / sqrt(D)) over the keys window_mask lets each query see; query i sits at
    # key Tk - T + i
    p = window_softmax(scores, 1.0 / math.sqrt(D), window, q_start=Tk - T)   # (B, H, T, Tk)
    out = (p @ vh).transpose(0, 2, 1, 3)                               # (B, T, H, D)
    return xp.ascontiguousarray(out), (qh, kh, vh, p, group)


def attention_reference_backward(dout, cache):
    """Returns dq (B, T, H, D), dk, dv (B, T, Hkv, D).
    forward: s = q kᵀ · scale, p = softmax(s), out = p v ->
    dv = pᵀ dout, dp = dout vᵀ, ds = p ⊙ (dp - Σ_j dp ⊙ p) (softmax Jacobian; masked p = 0 so
    masked ds = 0), dq = ds k · scale, dk = dsᵀ q · scale. GQA: a kv head was read by `group`
    query heads, so its dk and dv sum theirs."""
    qh, kh, vh, p, group = cache
    B, H, T, D = qh.shape
    scale = 1.0 / math.sqrt(D)
    dout_h = dout.transpose(0, 2, 1, 3)                                # (B, H, T, D)
    dv = p.transpose(0, 1, 3, 2) @ dout_h                              # (B, H, T, D)
    dp = dout_h @ vh.transpose(0, 1, 3, 2)                             # (B, H, T, T)
    ds = softmax_backward(dp, p)                                       # (B, H, T, T)
    dq = (ds @ kh) * scale                                             # (B, H, T, D)
    dk = (ds.transpose(0, 1, 3, 2) @ qh) * scale                       # (B, H, T, D)

    def sum_groups(g):                                                 # (B, H, Tk, D) -> (B, Tk, Hkv, D)
        return g.transpose(0, 2, 1, 3).reshape(B, g.shape[2], H // group, group, D).sum(axis=3)

    xp = array_module(dout)
    return xp.ascontiguousarray(dq.transpose(0, 2, 1, 3)), sum_groups(dk), sum_groups(dv)


# ---------------------------------------------------------------------------------------------
# The dispatcher: for NumPy arrays in training, the banded path (or the O(T·W) Numba kernel for
# very long sequences); the dense reference otherwise


# Measured 2026-12-01 (benchmarks/attention.py, float32, D 64, forward + backward; table in
# benchmarks/RESULTS.md): at T 512-8192, W 256, banded took 0.07-0.9x the dense reference's time
# and 0.4-0.6x the kernel's; at the train step's T 256, W 128 (B 8) 0.85x / 0.76x dense's and
# 0.58x / 0.53x the kernel's on 1 / 2 threads. What the kernel still has is memory: one lse per query, where
# banded keeps each block's (Q, Q + W - 1) probabilities for backward, B·H·T·(Q + W - 1) numbers
# per layer. The kernel takes over past KERNEL_MIN_BAND of them.
KERNEL_MIN_BAND = 2 ** 28        # banded probabilities kept per layer (1 GiB of float32)


def attention_path(q, k, window):
    """use_kernel=None's choice: "banded" for NumPy arrays in training (Tk = T), "kernel" when
    banded's probabilities would pass KERNEL_MIN_BAND numbers, "reference" (dense) otherwise:
    CuPy arrays (the CUDA kernel is opt-in) and generation (Tk > T, from a KV cache)."""
    B, T, H, _ = q.shape
    if array_module(q) is not np or k.shape[1] != T:
        return "reference"
    W = T if window is None else min(window, T)
    band = B * H * T * (default_block(T, window) + W - 1)
    return "kernel" if band > KERNEL_MIN_BAND else "banded"


def attention_forward(q, k, v, window, use_kernel=None):
    """Same contract as attention_reference_forward. use_kernel: None picks the fastest path for
    these arrays (attention_path); True forces the kernel (Numba on NumPy arrays, CUDA on CuPy
    arrays), False the dense reference."""
    xp = array_module(q, k, v)
    _kv_group(q, k, v)
    check_window(window)
    path = attention_path(q, k, window) if use_kernel is None else ("kernel" if use_kernel else "reference")
    if path == "reference":
        out, cache = attention_reference_forward(q, k, v, window)
    elif path == "banded":
        out, cache = banded_attention_forward(q, k, v, window)
    else:
        # CuPy arrays: the CUDA kernel of gpu_kernels.py, opt-in until it has run on a GPU
        forward = sliding_window_attention_forward if xp is np else gpu_kernels.sliding_window_attention_forward
        # lse (B, T, H): the log-sum-exp of each query's scaled scores over its window, log Σ_j
        # exp(s_tj), softmax's log-denominator. The backward rebuilds p_tj = exp(s_tj - lse_t)
        # from it instead of keeping the (T, W) probabilities (docs/attention.md §6)
        out, lse = forward(q, k, v, window)
        cache = (q, k, v, out, lse, window)
    return out, (path, cache)


def attention_backward(dout, cache):
    """Returns dq, dk, dv through whichever path attention_forward took."""
    path, inner = cache
    if path == "reference":
        return attention_reference_backward(dout, inner)
    if path == "banded":
        return banded_attention_backward(dout, inner)
    q, k, v, out, lse, window = inner
    backward = (sliding_window_attention_backward if array_module(q) is np
                else gpu_kernels.sliding_window_attention_backward)
    return backward(dout, q, k, v, out, lse, window)


# ---------------------------------------------------------------------------------------------
# The attention block of a layer: projections, RoPE, attention, output projection


def self_attention_forward(x, wq, wk, wv, wo, cos, sin, num_heads, num_kv_heads, window,
                           use_kernel=None, kv_cache=None, layer=0, bias=None, qk_norm=None):
    """x (B, T, C); wq (H*D, C), wk/wv (Hkv*D, C), wo (C, H*D); cos/sin (T, D) -> y (B, T, C).
    bias (Qwen2): (bq (H*D,), bk, bv (Hkv*D,)) added by the q/k/v projections, or None.
    qk_norm (Qwen3): (q_norm (D,), k_norm (D,), eps): RMSNorm over each head of q and of k,
    after the projections and before RoPE, or None.
    kv_cache (generation): the keys and values of earlier positions come from it, the new ones
    go into it (kv_cache.py), and the dense reference attends over all of them."""
    B, T, C = x.shape
    H, Hkv = num_heads, num_kv_heads
    D = wq.shape[0] // H
    if wq.shape != (H * D, C) or wk.shape != (Hkv * D, C) or wv.shape != wk.shape or wo.shape != (C, H * D):
        raise ValueError(f"attention weights do not fit H={H}, Hkv={Hkv}, C={C}: wq {wq.shape}, "
                         f"wk {wk.shape}, wv {wv.shape}, wo {wo.shape}")
    if cos.shape != (T, D) or sin.shape != (T, D):
        raise ValueError(f"RoPE tables must be (T, D) = {(T, D)}, got cos {cos.shape}, sin {sin.shape}")
    bq, bk, bv = bias if bias is not None else (None, None, None)
    q, q_cache = linear_bias_forward(x, wq, bq)                        # (B, T, H*D)
    k, k_cache = linear_bias_forward(x, wk, bk)                        # (B, T, Hkv*D)
    v, v_cache = linear_bias_forward(x, wv, bv)                        # (B, T, Hkv*D)
    q, k, v = q.reshape(B, T, H, D), k.reshape(B, T, Hkv, D), v.reshape(B, T, Hkv, D)
    norm_caches = None
    if qk_norm is not None:
        q_norm, k_norm, eps = qk_norm
        q, qn_cache = rmsnorm_forward(q, q_norm, eps)                  # (B, T, H, D), rms over D
        k, kn_cache = rmsnorm_forward(k, k_norm, eps)                  # (B, T, Hkv, D)
        norm_caches = (qn_cache, kn_cache)
    q, rope_q_cache = rope_forward(q, cos, sin)                        # (B, T, H, D)
    k, rope_k_cache = rope_forward(k, cos, sin)                        # (B, T, Hkv, D)
    if kv_cache is not None:
        k, v = kv_cache.extend(layer, k, v)                           # (B, S'+T, Hkv, D)
        use_kernel = False                                             # the kernels take Tk = T
    a, attn_cache = attention_forward(q, k, v, window, use_kernel)
    y, o_cache = linear_forward(a.reshape(B, T, H * D), wo)            # (B, T, C)
    return y, (q_cache, k_cache, v_cache, norm_caches, rope_q_cache, rope_k_cache, attn_cache, o_cache)


def self_attention_backward(dy, cache):
    """Returns dx (B, T, C), dwq, dwk, dwv, dwo, and a dict of the optional parameters'
    gradients ({} for LLaMA/Mistral; "q_proj.bias".. with bias, "q_norm.weight".. with qk_norm).
    Reverse order of forward; x feeds the q, k and v projections, so its three gradients add."""
    q_cache, k_cache, v_cache, norm_caches, rope_q_cache, rope_k_cache, attn_cache, o_cache = cache
    B, T = dy.shape[:2]
    D = rope_q_cache[0].shape[1]                                       # cos is (T, D)
    da, dwo = linear_backward(dy, o_cache)                             # (B, T, H*D)
    dq, dk, dv = attention_backward(da.reshape(B, T, -1, D), attn_cache)
    dq = rope_backward(dq, rope_q_cache)                               # (B, T, H, D)
    dk = rope_backward(dk, rope_k_cache)                               # (B, T, Hkv, D)
    extra = {}
    if norm_caches is not None:
        dq, extra["q_norm.weight"] = rmsnorm_backward(dq, norm_caches[0])
        dk, extra["k_norm.weight"] = rmsnorm_backward(dk, norm_caches[1])
    dx_q, dwq, dbq = linear_bias_backward(dq.reshape(B, T, -1), q_cache)
    dx_k, dwk, dbk = linear_bias_backward(dk.reshape(B, T, -1), k_cache)
    dx_v, dwv, dbv = linear_bias_backward(dv.reshape(B, T, -1), v_cache)
    if dbq is not None:
        extra.update({"q_proj.bias": dbq, "k_proj.bias": dbk, "v_proj.bias": dbv})
    return dx_q + dx_k + dx_v, dwq, dwk, dwv, dwo, extra
