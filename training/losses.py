"""Knowledge-distillation losses, each a forward/backward pair like the model's layers.

    loss, cache = thing_forward(student..., teacher..., mask=None)    # loss: a Python float
    dstudent... = thing_backward(dloss, cache)                         # fresh arrays

Only the student receives gradients; teacher arrays are constants. This file holds the losses
on logits (and the helpers every loss shares); the losses on hidden states are in
hidden_losses.py. The math only:
the system that weighs several losses and teachers and feeds the gradients into the student
lives in training/knowledge_transfer.py. Cross-entropy on labels is in mini_llm/model/layers.py.

Legend: B batch, T time, V vocab (Vs, Vt when student and teacher differ), Cs / Ct student /
teacher hidden size, k kept teacher tokens, N counted positions, tau temperature.
Logits are (B, T, V), hidden states (B, T, C). `mask` is (B, T), float or bool, 1 = the position
counts, None = all count. Every loss is a mean over counted positions: sum_bt w_bt loss_bt with
w = mask / sum(mask) (a float mask weights positions; if none counts the loss is 0).

    kl             KL(p_t || p_s) or reverse KL(p_s || p_t) on softmax(logits / tau), x tau^2
    jsd            generalized Jensen-Shannon divergence JSD(beta) between them (GKD), x tau^2
    minillm        MiniLLM's policy-gradient surrogate of the sequence-level reverse KL
    topk_kl        forward KL against a cached teacher top-k plus one "rest" bucket, x tau^2
    uld            Universal Logit Distillation: L1 of sorted probabilities (any two vocabularies)

Runs on NumPy or CuPy arrays (float32 or float64), through `array_module`.
"""
import numpy as np

from mini_llm.backend import array_module
from mini_llm.model.layers import log_softmax, softmax, softmax_backward


# ----------------------------------------------------------------------------- helpers

def check_float(name, a, ndim):
    if getattr(a, "ndim", None) != ndim or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be a float array with {ndim} axes, got "
                         f"{getattr(a, 'dtype', type(a).__name__)} "
                         f"of shape {getattr(a, 'shape', '?')}")


def check_same_positions(name, a, student):
    if a.shape[:2] != student.shape[:2]:
        raise ValueError(f"{name} has (B, T) = {a.shape[:2]}, the student has {student.shape[:2]}")


def _check_logit_pair(student_logits, teacher_logits, temperature):
    """Both (B, T, V) float arrays of the same vocabulary, and a temperature > 0."""
    check_float("student_logits", student_logits, 3)
    check_float("teacher_logits", teacher_logits, 3)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits shape {teacher_logits.shape} != student_logits shape "
                         f"{student_logits.shape} (different vocabularies: use uld_forward)")
    check_temperature(temperature)


def check_temperature(temperature):
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def position_weights(mask, shape, dtype, xp):
    """(B, T) weights w = mask / sum(mask), summing to 1 over counted positions (all 0 if none)."""
    if mask is None:
        return xp.full(shape, 1.0 / (shape[0] * shape[1]), dtype=dtype)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected (B, T) = {tuple(shape)}")
    m = xp.asarray(mask, dtype=dtype)
    if bool((m < 0).any()):
        raise ValueError("mask has negative entries: use 1 = position counts, 0 = ignored")
    total = float(m.sum())
    return m / total if total > 0 else m


def _scatter_last(values, ids, size):
    """Zeros (..., size) with values (..., k) written at ids (..., k) along the last axis.

    Example: values [[5., 7.]], ids [[2, 0]], size 3 -> [[7., 0., 5.]].
    ids must not repeat within a row.
    """
    xp = array_module(values, ids)
    rows = values.size // values.shape[-1]
    out = xp.zeros((rows, size), dtype=values.dtype)
    out[xp.arange(rows)[:, None], ids.reshape(rows, -1)] = values.reshape(rows, -1)
    return out.reshape(values.shape[:-1] + (size,))


# ----------------------------------------------------------------------------- logit KL

def kl_forward(student_logits, teacher_logits, temperature=1.0, direction="forward", mask=None):
    """KL divergence between the tempered teacher and student distributions, times tau^2.

    student_logits, teacher_logits: (B, T, V). With p = softmax(logits / tau) on the last axis:
      "forward": KL(p_t || p_s) = sum_v p_t (log p_t - log p_s), mean-seeking: the student
                 must cover every token the teacher gives mass to (Hinton et al. 2015).
      "reverse": KL(p_s || p_t) = sum_v p_s (log p_s - log p_t), mode-seeking: the student may
                 drop teacher modes it cannot fit, but must not put mass where the teacher has
                 none (Gu et al. 2023, "MiniLLM").
    The tau^2 factor keeps the gradient's scale independent of tau: the gradient of the
    softened KL shrinks as 1/tau^2 (Hinton et al. 2015). Returns (loss, cache).
    """
    _check_logit_pair(student_logits, teacher_logits, temperature)
    if direction not in ("forward", "reverse"):
        raise ValueError(f"unknown KL direction {direction!r}: use 'forward' or 'reverse'")
    xp = array_module(student_logits, teacher_logits)
    dtype = np.result_type(student_logits.dtype, teacher_logits.dtype)
    w = position_weights(mask, student_logits.shape[:2], dtype, xp)              # (B, T)
    log_ps = log_softmax(student_logits / temperature)                             # (B, T, V)
    log_pt = log_softmax(teacher_logits / temperature)                             # (B, T, V)
    if direction == "forward":
        kl = (xp.exp(log_pt) * (log_pt - log_ps)).sum(axis=-1)                     # (B, T)
    else:
        kl = (xp.exp(log_ps) * (log_ps - log_pt)).sum(axis=-1)                     # (B, T)
    loss = temperature ** 2 * (w * kl).sum()
    return float(loss), (log_ps, log_pt, kl, w, temperature, direction, student_logits.dtype)


def kl_backward(dloss, cache):
    # forward: loss = tau^2 sum_bt w KL, s = z / tau, so dz = dloss tau^2 w dKL/ds / tau.
    # forward KL = sum_v p_t (log p_t - log p_s): dKL/ds = p_s - p_t (softmax + cross-entropy).
    # reverse KL = sum_v p_s a_v, a = log p_s - log p_t: dKL/ds = p_s (a - KL)
    #   (term 1, through p_s: p_s (a - sum p_s a); term 2, through a: sum_v p_s (e_v - p_s) = 0).
    log_ps, log_pt, kl, w, tau, direction, dtype = cache
    xp = array_module(log_ps, log_pt)
    p_s = xp.exp(log_ps)
    if direction == "forward":
        ds = p_s - xp.exp(log_pt)
    else:
        ds = p_s * (log_ps - log_pt - kl[..., None])
    return (dloss * tau * w[..., None] * ds).astype(dtype, copy=False)


# ----------------------------------------------------------------------------- generalized JSD

def jsd_forward(student_logits, teacher_logits, beta=0.5, temperature=1.0, mask=None):
    """Generalized Jensen-Shannon divergence (GKD, Agarwal et al. 2024, eq. 1), times tau^2.

    With p = softmax(teacher / tau), q = softmax(student / tau) and the mixture
    m = beta p + (1 - beta) q:
        JSD(beta) = beta KL(p || m) + (1 - beta) KL(q || m)
    It is bounded by the binary entropy H(beta) <= log 2 (reached when p and q do not
    overlap), and interpolates between the two KLs:
    JSD(beta) / beta -> KL(p || q) (forward) as beta -> 0, JSD(beta) / (1 - beta) -> KL(q || p)
    (reverse) as beta -> 1. At the ends themselves it would be 0, so beta = 0 and beta = 1 are
    the forward and reverse KL (as Hugging Face TRL's GKD trainer defines them).
    Shapes as kl_forward. Returns (loss, cache).
    """
    if not 0 <= beta <= 1:
        raise ValueError(f"jsd beta must lie in [0, 1], got {beta}")
    if beta in (0, 1):
        return kl_forward(student_logits, teacher_logits, temperature,
                          "forward" if beta == 0 else "reverse", mask)
    _check_logit_pair(student_logits, teacher_logits, temperature)
    xp = array_module(student_logits, teacher_logits)
    dtype = np.result_type(student_logits.dtype, teacher_logits.dtype)
    w = position_weights(mask, student_logits.shape[:2], dtype, xp)              # (B, T)
    log_q = log_softmax(student_logits / temperature)                              # (B, T, V)
    log_p = log_softmax(teacher_logits / temperature)                              # (B, T, V)
    # log m = log(beta p + (1 - beta) q), as a log-sum-exp of the two (no underflow)
    a, b = log_p + np.log(beta), log_q + np.log(1 - beta)
    top = xp.maximum(a, b)
    log_m = top + xp.log(xp.exp(a - top) + xp.exp(b - top))                      # (B, T, V)
    jsd = (beta * xp.exp(log_p) * (log_p - log_m)
           + (1 - beta) * xp.exp(log_q) * (log_q - log_m)).sum(axis=-1)            # (B, T)
    loss = temperature ** 2 * (w * jsd).sum()
    return float(loss), ("jsd", log_q, log_m, w, beta, temperature, student_logits.dtype)


def jsd_backward(dloss, cache):
    # forward: J = beta sum p log(p/m) + (1-beta) sum q log(q/m), m = beta p + (1-beta) q.
    # dJ/dq_v = beta (-p_v/m_v)(1-beta) + (1-beta)(log(q_v/m_v) + 1 - q_v (1-beta)/m_v)
    #         = (1-beta)(log(q_v/m_v) + 1 - m_v/m_v) = (1-beta) log(q_v/m_v);
    # then through q = softmax(s): ds = q (g - sum q g), and s = z / tau: dz = dloss tau^2 w ds / tau.
    if not isinstance(cache[0], str):                         # beta 0 or 1: a plain KL
        return kl_backward(dloss, cache)
    _, log_q, log_m, w, beta, tau, dtype = cache
    xp = array_module(log_q)
    ds = softmax_backward((1 - beta) * (log_q - log_m), xp.exp(log_q))
    return (dloss * tau * w[..., None] * ds).astype(dtype, copy=False)


# ----------------------------------------------------------------------------- MiniLLM (sequence-level reverse KL)

def minillm_forward(student_logits, teacher_logits, tokens, sampling_probs, mask):
    """MiniLLM's policy-gradient surrogate for the sequence-level reverse KL KL(q || p) (Gu et
    al. 2024, "MiniLLM: Knowledge Distillation of Large Language Models", eqs. 2-6).

    student_logits, teacher_logits (B, T, V) at the positions that predict `tokens` (B, T), the
    sampled ids; sampling_probs (B, T) the probability p~(y_t) the sampler gave each token
    (p~ = alpha p + (1 - alpha) q with teacher-mixed sampling, q when alpha = 0); mask (B, T) 1
    where the token was sampled. With q = softmax(student), p = softmax(teacher), per sampled t:
        r_t = log p(y_t) - log q(y_t)                    the reward (eq. 2)
        R_t = mean of r over the sampled t' > t          the length-normalised future (eq. 5)
        w_t = q(y_t) / p~(y_t)                           token-level importance weight (eq. 6)
    and the surrogate, whose gradient at fixed samples is the paper's estimate (eqs. 4-6):
        S = sum_t u_t w_t [ KL(q_t || p_t)  -  R_t log q(y_t) ],   u = mask / sum(mask)
    where w_t and R_t are constants (not differentiated). The first term is the single-step
    part, exact over the vocabulary; the second the long-term part. No temperature (tau = 1).
    Returns (S, cache).
    """
    _check_logit_pair(student_logits, teacher_logits, 1.0)
    xp = array_module(student_logits, teacher_logits)
    dtype = np.result_type(student_logits.dtype, teacher_logits.dtype)
    u = position_weights(mask, student_logits.shape[:2], dtype, xp)              # (B, T)
    counted = xp.asarray(mask, dtype=dtype)                                        # (B, T) 0/1
    log_q, log_p = log_softmax(student_logits), log_softmax(teacher_logits)       # (B, T, V)
    kl = (xp.exp(log_q) * (log_q - log_p)).sum(axis=-1)                            # (B, T)
    log_q_y = xp.take_along_axis(log_q, tokens[..., None], axis=-1)[..., 0]        # (B, T)
    r = (xp.take_along_axis(log_p, tokens[..., None], axis=-1)[..., 0] - log_q_y) * counted
    # R_t: sum and count of the rewards after t (reverse cumulative sums), then their mean
    later_sum = xp.cumsum(r[:, ::-1], axis=1)[:, ::-1] - r                         # (B, T)
    later_count = xp.cumsum(counted[:, ::-1], axis=1)[:, ::-1] - counted
    R = xp.where(later_count > 0, later_sum / xp.maximum(later_count, 1), 0.0)
    w = xp.where(counted > 0, xp.exp(log_q_y) / xp.where(counted > 0, sampling_probs, 1.0), 0.0)
    surrogate = float((u * w * (kl - R * log_q_y)).sum())
    return surrogate, (log_q, log_p, kl, tokens, R, w, u, student_logits.dtype)


def minillm_backward(dloss, cache):
    # forward: S = sum_t u w [KL(q_t || p_t) - R log q(y_t)], w and R constants, q = softmax(z).
    # d KL(q||p)/dz = q (log q - log p - KL)          (the reverse KL of kl_backward, tau = 1)
    # d (-R log q(y))/dz = -R (onehot(y) - q)          (softmax + cross-entropy)
    log_q, log_p, kl, tokens, R, w, u, dtype = cache
    xp = array_module(log_q)
    q = xp.exp(log_q)
    onehot = _scatter_last(xp.ones(tokens.shape + (1,), dtype=q.dtype), tokens[..., None], q.shape[-1])
    dz = q * (log_q - log_p - kl[..., None]) - R[..., None] * (onehot - q)
    return (dloss * (u * w)[..., None] * dz).astype(dtype, copy=False)


# ----------------------------------------------------------------------------- top-k KL (offline)

def teacher_topk(teacher_logits, k, temperature=1.0):
    """The teacher's k most probable tokens per position, for an offline distillation cache.

    teacher_logits (B, T, V) -> topk_ids (B, T, k) int, topk_logprobs (B, T, k): log p_t at
    temperature tau, most probable first. Example (one position, k = 2): logits [0., 2., 1.]
    -> ids [1, 2], logprobs [-0.41, -1.41].
    """
    check_float("teacher_logits", teacher_logits, 3)
    check_temperature(temperature)
    if not 1 <= k <= teacher_logits.shape[-1]:
        raise ValueError(f"top-k needs 1 <= k <= V = {teacher_logits.shape[-1]}, got k = {k}")
    xp = array_module(teacher_logits)
    log_pt = log_softmax(teacher_logits / temperature)                             # (B, T, V)
    ids = xp.argpartition(-log_pt, k - 1, axis=-1)[..., :k]                        # k largest
    logprobs = xp.take_along_axis(log_pt, ids, axis=-1)                            # (B, T, k)
    order = xp.argsort(-logprobs, axis=-1)                                         # largest first
    return xp.take_along_axis(ids, order, axis=-1), xp.take_along_axis(logprobs, order, axis=-1)


def topk_kl_forward(student_logits, topk_ids, topk_logprobs, temperature=1.0, mask=None):
    """Forward KL against a cached teacher top-k: k token buckets plus one "rest" bucket, x tau^2.

    student_logits (B, T, V); topk_ids (B, T, k) distinct int ids; topk_logprobs (B, T, k) the
    teacher's log-probabilities at temperature tau (see teacher_topk). Buckets:
      teacher: q_i = exp(topk_logprobs_i), q_rest = max(0, 1 - sum_i q_i)
      student: p_i = p_s[topk_ids_i],     p_rest = sum of p_s over the other V - k tokens
    with p_s = softmax(student_logits / tau). loss = tau^2 mean_bt sum_buckets q (log q - log p).
    log p_rest is a log-sum-exp over the other tokens, exact even when the rest is tiny; with
    k = V there is no rest bucket and the loss equals kl_forward(direction="forward").
    """
    check_float("student_logits", student_logits, 3)
    check_float("topk_logprobs", topk_logprobs, 3)
    check_same_positions("topk_ids", topk_ids, student_logits)
    if topk_ids.shape != topk_logprobs.shape or not np.issubdtype(topk_ids.dtype, np.integer):
        raise ValueError(f"topk_ids must be int with the shape of topk_logprobs "
                         f"{topk_logprobs.shape}, got {topk_ids.dtype} {topk_ids.shape}")
    check_temperature(temperature)
    xp = array_module(student_logits, topk_logprobs)
    V, k = student_logits.shape[-1], topk_ids.shape[-1]
    if not 1 <= k <= V:
        raise ValueError(f"top-k KL needs 1 <= k <= V = {V}, got k = {k}")
    lo, hi = int(topk_ids.min()), int(topk_ids.max())
    if lo < 0 or hi >= V:
        raise ValueError(f"topk_ids must lie in [0, {V}), got values from {lo} to {hi}")
    dtype = np.result_type(student_logits.dtype, topk_logprobs.dtype)
    w = position_weights(mask, student_logits.shape[:2], dtype, xp)              # (B, T)
    log_ps = log_softmax(student_logits / temperature)                             # (B, T, V)
    q = xp.exp(topk_logprobs)                                                      # (B, T, k)
    kl = (q * (topk_logprobs - xp.take_along_axis(log_ps, topk_ids, axis=-1))).sum(axis=-1)
    q_rest = log_p_rest = None
    if k < V:
        q_rest = xp.maximum(1 - q.sum(axis=-1), 0)                                 # (B, T)
        in_topk = _scatter_last(xp.ones(topk_ids.shape, dtype=bool), topk_ids, V)  # (B, T, V)
        rest = xp.where(in_topk, -xp.inf, log_ps)
        top = rest.max(axis=-1)                                                    # finite: k < V
        log_p_rest = top + xp.log(xp.exp(rest - top[..., None]).sum(axis=-1))      # (B, T)
        log_q_rest = xp.log(xp.where(q_rest > 0, q_rest, 1))                       # 0 log 0 = 0
        kl = kl + q_rest * (log_q_rest - log_p_rest)
    loss = temperature ** 2 * (w * kl).sum()
    cache = (log_ps, topk_ids, q, q_rest, log_p_rest, w, temperature, student_logits.dtype)
    return float(loss), cache


def topk_kl_backward(dloss, cache):
    # forward: KL = sum_i q_i (log q_i - log p_i) + q_rest (log q_rest - log p_rest), s = z / tau,
    # log p_i = s_id_i - lse(s), log p_rest = lse(s over the rest) - lse(s).
    # Each -q log p(set) term has d/ds = q (softmax over all - softmax within the set), so
    # dKL/ds = (sum_i q_i + q_rest) p_s - q at the top-k ids - q_rest p_s / p_rest on the rest;
    # dz = dloss tau^2 w dKL/ds / tau.
    log_ps, ids, q, q_rest, log_p_rest, w, tau, dtype = cache
    xp = array_module(log_ps)
    V = log_ps.shape[-1]
    total = q.sum(axis=-1)
    ds = -_scatter_last(q, ids, V)                                                 # (B, T, V)
    if q_rest is not None:
        total = total + q_rest
        in_topk = _scatter_last(xp.ones(ids.shape, dtype=bool), ids, V)
        within_rest = xp.where(in_topk, 0, xp.exp(log_ps - log_p_rest[..., None]))
        ds -= q_rest[..., None] * within_rest
    ds += total[..., None] * xp.exp(log_ps)
    return (dloss * tau * w[..., None] * ds).astype(dtype, copy=False)


# ----------------------------------------------------------------------------- ULD

def uld_forward(student_logits, teacher_logits, temperature=1.0, mask=None):
    """Universal Logit Distillation (Boizard et al. 2024): teachers with another vocabulary.

    student_logits (B, T, Vs), teacher_logits (B, T, Vt), Vs and Vt may differ. Token ids of
    two vocabularies do not correspond, so only the shapes of the distributions are compared:
    p = softmax(logits / tau), each sorted in decreasing order, the shorter padded with zeros,
    loss = mean_bt sum_r |p_s_sorted_r - p_t_sorted_r| (rank r = r-th most probable token).
    |.| is not differentiable at exact ties (equal sorted values); the gradient takes 0 there.
    """
    check_float("student_logits", student_logits, 3)
    check_float("teacher_logits", teacher_logits, 3)
    check_same_positions("teacher_logits", teacher_logits, student_logits)
    check_temperature(temperature)
    xp = array_module(student_logits, teacher_logits)
    dtype = np.result_type(student_logits.dtype, teacher_logits.dtype)
    (B, T, vs), vt = student_logits.shape, teacher_logits.shape[-1]
    w = position_weights(mask, (B, T), dtype, xp)                                 # (B, T)
    p_s = softmax(student_logits / temperature)                                    # (B, T, Vs)
    order = xp.argsort(-p_s, axis=-1)                                              # rank -> token
    p_t_sorted = -xp.sort(-softmax(teacher_logits / temperature), axis=-1)        # (B, T, Vt)
    diff = xp.zeros((B, T, max(vs, vt)), dtype=dtype)                              # zero padding
    diff[..., :vs] += xp.take_along_axis(p_s, order, axis=-1)
    diff[..., :vt] -= p_t_sorted
    loss = (w * xp.abs(diff).sum(axis=-1)).sum()
    cache = (p_s, order, xp.sign(diff[..., :vs]), w, temperature, student_logits.dtype)
    return float(loss), cache


def uld_backward(dloss, cache):
    # forward: loss = sum_bt w sum_r |p_s[order_r] - p_t_sorted_r|
    # -> dp_s[order_r] = sign(diff_r): un-sort the sign vector through the permutation,
    # then the softmax Jacobian: ds = p_s (dp_s - p_s . dp_s), dz = dloss w ds / tau.
    p_s, order, sign, w, tau, dtype = cache
    dp = _scatter_last(sign, order, p_s.shape[-1])                                 # (B, T, Vs)
    ds = softmax_backward(dp, p_s)
    return (dloss * w[..., None] * ds / tau).astype(dtype, copy=False)
