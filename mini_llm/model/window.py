"""The causal sliding window (Mistral): which keys each query may see, and the softmax over them.

Query t sees the keys t-W+1 .. t (itself included); window None is plain causal attention (keys
0 .. t). The attention paths of attention.py (dense) and banded_attention.py (blocks of queries)
both turn their scores into probabilities with window_softmax; NumPy arrays go to its fused
Numba twin in kernels.py (one pass per row, on every core), CuPy arrays stay here.
"""
import numpy as np

from mini_llm.backend import array_module
from mini_llm.model import kernels, row_kernels
from mini_llm.model.config import check_window
from mini_llm.model.layers import softmax


def window_mask(T_q, T_k, window, q_start=0, xp=None):
    """bool (T_q, T_k): True where the query at absolute position q_start + i may see key j.
    Causal: j <= pos. Sliding window W (Mistral): also j > pos - W, so position t sees the W keys
    t-W+1 .. t, itself included. window=None is plain causal attention.
    Example, T=5, W=2: row t has ones at columns t-1 and t (row 0 only at column 0)."""
    xp = np if xp is None else xp
    check_window(window)
    pos = q_start + xp.arange(T_q)[:, None]        # (T_q, 1)
    j = xp.arange(T_k)[None, :]                    # (1, T_k)
    mask = j <= pos
    if window is not None:
        mask &= j > pos - window
    return mask


def window_softmax(scores, scale, window, q_start=0):
    """scores (..., T_q, T_k) -> probs (same shape): softmax(scale · scores) over the keys that
    window_mask(T_q, T_k, window, q_start) lets each query see, 0 at the others. Every query must
    see at least one key (q_start >= 0, and the last query's window reaches key T_k - 1), so that
    the max softmax subtracts is finite. Backward: dscores = scale · softmax_backward(dprobs,
    probs) (layers.py); a masked p is 0, so its dscores is 0 too."""
    check_window(window)
    T_q, T_k = scores.shape[-2:]
    if q_start < 0 or (window is not None and q_start + T_q - window > T_k - 1):
        raise ValueError(f"window_softmax: some query sees no key (T_q {T_q}, T_k {T_k}, "
                         f"window {window}, q_start {q_start})")
    if row_kernels.applies(scores):
        return kernels.window_softmax(scores, scale, window, q_start)
    xp = array_module(scores)
    visible = window_mask(T_q, T_k, window, q_start, xp=xp)          # (T_q, T_k)
    return softmax(xp.where(visible, scores * scale, -xp.inf))
