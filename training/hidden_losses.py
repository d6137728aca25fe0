"""Distillation losses on hidden states, forward/backward pairs like the model's layers.

    loss, cache = thing_forward(student_h, proj_w, teacher_h, mask=None)
    dstudent_h, dproj_w = thing_backward(dloss, cache)

The student's hidden states h (B, T, Cs) are first projected into the teacher's width by a
learned matrix proj_w (Ct, Cs): y = h proj_wᵀ (B, T, Ct); the projection is trained with the
student. mask (B, T) and the mean over counted positions as in losses.py.

    hidden_mse     mean squared error between projected student and teacher hidden states
    hidden_cosine  1 - cosine similarity between them
    contrastive    InfoNCE: each student position must pick its own teacher position in the batch
"""
import numpy as np

from mini_llm.backend import array_module
from mini_llm.model.layers import log_softmax
from training.losses import check_float, check_same_positions, check_temperature, position_weights

NORM_EPS = 1e-8        # norms below this are floored before dividing (cosine, contrastive)


# ----------------------------------------------------------------------------- helpers

def _normalize_forward(x):
    """z = x / max(|x|, NORM_EPS) over the last axis; cache (z, norm)."""
    xp = array_module(x)
    norm = xp.maximum(xp.sqrt((x * x).sum(axis=-1, keepdims=True)), NORM_EPS)
    z = x / norm
    return z, (z, norm)


def _normalize_backward(dz, cache):
    # forward: z = x / |x| -> dx = (dz - z (z . dz)) / |x|: the radial part of dz is dropped.
    # Where |x| was floored the forward is z = x / eps, a plain scaling, so dx = dz / eps.
    xp = array_module(dz)
    z, norm = cache
    radial = xp.where(norm > NORM_EPS, (z * dz).sum(axis=-1, keepdims=True), 0)
    return (dz - z * radial) / norm


def _check_projection(student_h, proj_w, teacher_h):
    check_float("student_h", student_h, 3)
    check_float("proj_w", proj_w, 2)
    check_float("teacher_h", teacher_h, 3)
    check_same_positions("teacher_h", teacher_h, student_h)
    if proj_w.shape != (teacher_h.shape[-1], student_h.shape[-1]):
        raise ValueError(f"proj_w has shape {proj_w.shape}, expected (Ct, Cs) = "
                         f"{(teacher_h.shape[-1], student_h.shape[-1])}")


def _project_backward(dy, student_h, proj_w):
    # forward: y = h W^T -> dh = dy W, dW = dy^T h (summed over every position)
    ct, cs = proj_w.shape
    return dy @ proj_w, dy.reshape(-1, ct).T @ student_h.reshape(-1, cs)


# ----------------------------------------------------------------------------- hidden states

def hidden_mse_forward(student_h, proj_w, teacher_h, mask=None):
    """Mean squared error between projected student states and teacher states.

    student_h (B, T, Cs), proj_w (Ct, Cs) a learned map to the teacher's width, teacher_h
    (B, T, Ct). y = student_h @ proj_w.T; loss = mean_bt mean_c (y - teacher_h)^2.
    """
    _check_projection(student_h, proj_w, teacher_h)
    xp = array_module(student_h, proj_w, teacher_h)
    dtype = np.result_type(student_h.dtype, proj_w.dtype, teacher_h.dtype)
    w = position_weights(mask, student_h.shape[:2], dtype, xp)                   # (B, T)
    diff = student_h @ proj_w.T - teacher_h                                        # (B, T, Ct)
    loss = (w * (diff * diff).mean(axis=-1)).sum()
    return float(loss), (diff, w, student_h, proj_w)


def hidden_mse_backward(dloss, cache):
    # forward: loss = sum_bt w mean_c (y - t)^2, y = h W^T -> dy = dloss w 2 (y - t) / Ct,
    # then through the projection: dh = dy W, dW = dy^T h.
    diff, w, student_h, proj_w = cache
    dy = dloss * w[..., None] * 2 * diff / diff.shape[-1]                          # (B, T, Ct)
    dh, dw = _project_backward(dy, student_h, proj_w)
    return dh.astype(student_h.dtype, copy=False), dw.astype(proj_w.dtype, copy=False)


def hidden_cosine_forward(student_h, proj_w, teacher_h, mask=None):
    """1 - cosine similarity between projected student states and teacher states.

    Shapes as hidden_mse_forward. y = student_h @ proj_w.T; loss = mean_bt (1 - cos(y, teacher_h)).
    Norms are floored at NORM_EPS, so a zero vector has cosine 0 rather than NaN. Only
    directions count: scaling teacher_h (or y) by any positive number leaves the loss unchanged.
    """
    _check_projection(student_h, proj_w, teacher_h)
    xp = array_module(student_h, proj_w, teacher_h)
    dtype = np.result_type(student_h.dtype, proj_w.dtype, teacher_h.dtype)
    w = position_weights(mask, student_h.shape[:2], dtype, xp)                   # (B, T)
    z_y, norm_cache = _normalize_forward(student_h @ proj_w.T)                     # (B, T, Ct)
    z_t, _ = _normalize_forward(teacher_h)                                         # (B, T, Ct)
    loss = (w * (1 - (z_y * z_t).sum(axis=-1))).sum()
    return float(loss), (z_t, norm_cache, w, student_h, proj_w)


def hidden_cosine_backward(dloss, cache):
    # forward: loss = sum_bt w (1 - z_y . z_t), z_y = normalize(y), y = h W^T
    # -> dz_y = -dloss w z_t, then back through normalize and the projection.
    z_t, norm_cache, w, student_h, proj_w = cache
    dy = _normalize_backward(-dloss * w[..., None] * z_t, norm_cache)             # (B, T, Ct)
    dh, dw = _project_backward(dy, student_h, proj_w)
    return dh.astype(student_h.dtype, copy=False), dw.astype(proj_w.dtype, copy=False)


def contrastive_forward(student_h, proj_w, teacher_h, temperature=0.1, mask=None):
    """InfoNCE between student and teacher states over the N counted positions of the batch.

    Shapes as hidden_mse_forward. z_s = normalize(student_h @ proj_w.T), z_t = normalize(teacher_h)
    at the counted positions (N, Ct); logits_ij = z_s_i . z_t_j / tau (N, N);
    loss = mean_i CE(logits row i, target i): each student state must pick its own teacher
    state out of all N, the others in the batch being the negatives. A float mask weights the
    rows; every position with mask != 0 is a candidate. The (N, N) matrix is built in full:
    fine up to a few thousand positions (N = 4096 is 128 MiB per float64 copy); beyond that,
    mask out a random subset of positions. Fewer than one counted position gives loss 0.
    """
    _check_projection(student_h, proj_w, teacher_h)
    check_temperature(temperature)
    xp = array_module(student_h, proj_w, teacher_h)
    dtype = np.result_type(student_h.dtype, proj_w.dtype, teacher_h.dtype)
    w = position_weights(mask, student_h.shape[:2], dtype, xp).reshape(-1)       # (B*T,)
    rows = xp.nonzero(w)[0]                                                        # (N,) counted
    h = student_h.reshape(-1, student_h.shape[-1])[rows]                           # (N, Cs)
    if h.shape[0] == 0:
        return 0.0, (None, None, None, None, rows, h, proj_w, temperature, student_h.shape)
    z_s, norm_cache = _normalize_forward(h @ proj_w.T)                             # (N, Ct)
    z_t, _ = _normalize_forward(teacher_h.reshape(-1, teacher_h.shape[-1])[rows])  # (N, Ct)
    log_probs = log_softmax(z_s @ z_t.T / temperature)                             # (N, N)
    loss = -(w[rows] * xp.diagonal(log_probs)).sum()
    cache = (log_probs, z_t, norm_cache, w[rows], rows, h, proj_w, temperature, student_h.shape)
    return float(loss), cache


def contrastive_backward(dloss, cache):
    # forward: loss = sum_i w_i (lse_j l_ij - l_ii), l = z_s z_t^T / tau
    # -> dl = dloss w_i (softmax(l)_ij - [i = j]), dz_s = dl z_t / tau,
    # then back through normalize and the projection; uncounted positions get 0.
    log_probs, z_t, norm_cache, w, rows, h, proj_w, tau, shape = cache
    xp = array_module(h, proj_w)
    dh = xp.zeros((shape[0] * shape[1], shape[2]), dtype=h.dtype)                 # (B*T, Cs)
    if log_probs is None:
        return dh.reshape(shape), xp.zeros_like(proj_w)
    dl = xp.exp(log_probs)                                                         # (N, N)
    n = dl.shape[0]
    dl[xp.arange(n), xp.arange(n)] -= 1
    dl *= dloss * w[:, None]
    dy = _normalize_backward(dl @ z_t / tau, norm_cache)                           # (N, Ct)
    dh_rows, dw = _project_backward(dy, h, proj_w)
    dh[rows] = dh_rows
    return dh.reshape(shape), dw.astype(proj_w.dtype, copy=False)
