"""The model's layers, each a pair of plain functions: `y, cache = thing_forward(...)` and
`dx, dparams... = thing_backward(dy, cache)`. No autograd: every backward is written by hand,
with a short derivation above it (the long form is in docs/).

Symbol legend, used in every shape comment of the model:
    B batch, T time (sequence length), C hidden_size, H heads, Hkv kv heads, D head_dim,
    F intermediate_size, V vocab_size, W sliding window.

Weights use the Hugging Face layout [out, in], so a linear layer computes y = x @ W.T.
Arrays may be NumPy or CuPy: each function asks `array_module` which one it was given.
RMSNorm, the SwiGLU product and cross-entropy hand NumPy arrays to their fused Numba twins in
row_kernels.py (same results, faster, on every core); the code below them is the reference.
"""
from mini_llm.backend import array_module
from mini_llm.model import row_kernels

# ---------------------------------------------------------------------------------------------
# Embedding


def embedding_forward(ids, weight):
    """ids (B, T) int, weight (V, C) -> x (B, T, C): row ids[b, t] of the table."""
    x = weight[ids]                                            # (B, T, C)
    return x, (ids, weight.shape)


def embedding_backward_reference(dx, cache):
    """The same dweight (V, C) as embedding_backward, in its plainest form: for every position,
    add its dx into the row it looked up. np.add.at sums repeats (dweight[ids] += dx would keep
    only the last of them). tests/test_layers.py pins the two together."""
    ids, weight_shape = cache
    xp = array_module(dx)
    dweight = xp.zeros(weight_shape, dx.dtype)
    xp.add.at(dweight, ids.reshape(-1), dx.reshape(-1, weight_shape[1]))   # row ids[n] += dx[n]
    return dweight


def embedding_backward(dx, cache):
    """Returns dweight (V, C).
    forward: x[b, t] = weight[ids[b, t]] -> each row of dweight is the sum of the dx of every
    position that looked it up (a scatter-add: one id may appear many times). The plain form is
    embedding_backward_reference (np.add.at); this one is the same sum, faster."""
    ids, weight_shape = cache
    xp = array_module(dx)
    V, C = weight_shape
    # entry (r, c) of dweight is bin r*C + c of one flat histogram: bincount sums the weights
    # that fall in each bin, a scatter-add about twice as fast as xp.add.at
    bins = (ids.reshape(-1, 1) * C + xp.arange(C)).reshape(-1)          # (B*T*C,)
    dweight = xp.bincount(bins, weights=dx.reshape(-1), minlength=V * C)  # float64 sums
    return dweight.reshape(V, C).astype(dx.dtype)


# ---------------------------------------------------------------------------------------------
# Linear (no bias, as in LLaMA/Mistral), and with a bias (Qwen2's q/k/v)


def linear_forward(x, weight, out=None):
    """x (..., in), weight (out, in) -> y (..., out) = x @ weight.T
    The leading axes are flattened first: one 2-D (N, in) @ (in, out) product is what BLAS does
    fastest; NumPy would run (B, T, in) @ (in, out) as B smaller products.
    out: a contiguous (..., out) array to write y into (the model's row slices each write their
    rows of the batch's logits), else a new one."""
    x2 = x.reshape(-1, x.shape[-1])                            # (N, in), N = all leading positions
    y = array_module(x).matmul(x2, weight.T, out=None if out is None else out.reshape(len(x2), -1))
    return y.reshape(*x.shape[:-1], weight.shape[0]), (x, weight)


def linear_backward(dy, cache):
    """Returns dx (..., in), dweight (out, in).
    forward: y = x Wᵀ -> dx = dy W, dW = dyᵀ x (summed over every leading position)."""
    x, weight = cache
    dy2 = dy.reshape(-1, dy.shape[-1])                         # (N, out)
    dx = (dy2 @ weight).reshape(x.shape)
    dweight = dy2.T @ x.reshape(-1, x.shape[-1])
    return dx, dweight


def linear_bias_forward(x, weight, bias):
    """x (..., in), weight (out, in), bias (out,) or None -> y (..., out) = x @ weight.T + bias.
    Qwen2's q/k/v projections carry a bias; bias=None is exactly linear_forward."""
    y, linear_cache = linear_forward(x, weight)
    if bias is not None:
        y = y + bias
    return y, (linear_cache, bias is not None)


def linear_bias_backward(dy, cache):
    """Returns dx (..., in), dweight (out, in), dbias (out,) or None.
    forward: y = x Wᵀ + b -> dx, dW as for linear; b is added at every leading position, so
    db = Σ_positions dy."""
    linear_cache, has_bias = cache
    dx, dweight = linear_backward(dy, linear_cache)
    dbias = dy.reshape(-1, dy.shape[-1]).sum(axis=0) if has_bias else None
    return dx, dweight, dbias


# ---------------------------------------------------------------------------------------------
# RMSNorm


def rmsnorm_forward(x, weight, eps):
    """x (B, T, C), weight (C,) -> y = x / rms(x) * weight, rms(x) = sqrt(mean(x²) + eps).
    Any leading axes work: Qwen3's q/k norm passes (B, T, H, D) and a (D,) weight.
    The cache keeps (x, weight, rstd) with rstd (B, T, 1) and recomputes x_hat = x * rstd in
    backward: that saves storing one (B, T, C) tensor per norm."""
    if row_kernels.applies(x, weight):
        return row_kernels.rmsnorm_forward(x, weight, eps)
    xp = array_module(x)
    rstd = 1.0 / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps)   # (B, T, 1)
    y = x * rstd * weight
    return y, (x, weight, rstd)


def rmsnorm_backward(dy, cache):
    """Returns dx (B, T, C), dweight (C,).
    forward: y = w ⊙ x_hat, x_hat = x · rstd, rstd = (mean(x²) + eps)^(-1/2).
    dweight = Σ_positions dy ⊙ x_hat. Let g = dy ⊙ w. Term 1 (direct): g · rstd;
    term 2 (through rstd): -x_hat · rstd · mean(g ⊙ x_hat). So dx = rstd (g - x_hat mean(g x_hat))."""
    if row_kernels.applies(dy, *cache):
        return row_kernels.rmsnorm_backward(dy, cache)
    x, weight, rstd = cache
    xp = array_module(dy)
    x_hat = x * rstd                                           # (B, T, C)
    dweight = (dy * x_hat).reshape(-1, x.shape[-1]).sum(axis=0)
    g = dy * weight
    dx = rstd * (g - x_hat * xp.mean(g * x_hat, axis=-1, keepdims=True))
    return dx, dweight


# ---------------------------------------------------------------------------------------------
# SiLU and the SwiGLU feed-forward


def silu_forward(x):
    """silu(x) = x · sigmoid(x), elementwise."""
    xp = array_module(x)
    sig = 1.0 / (1.0 + xp.exp(-x))
    return x * sig, (x, sig)


def silu_backward(dy, cache):
    """forward: y = x σ(x) -> dy/dx = σ(x) + x σ(x)(1 - σ(x)) = σ(x) (1 + x (1 - σ(x)))."""
    x, sig = cache
    return dy * sig * (1.0 + x * (1.0 - sig))


def swiglu_product_forward(gate, up):
    """h = silu(gate) ⊙ up, gate/up (B, T, F) -> h (B, T, F): the gated unit of SwiGLU."""
    if row_kernels.applies(gate, up):
        return row_kernels.swiglu_product_forward(gate, up)
    act, act_cache = silu_forward(gate)                        # (B, T, F)
    return act * up, (act_cache, act, up)


def swiglu_product_backward(dh, cache):
    """Returns dgate, dup. The product rule on h = act ⊙ up: dact = dh ⊙ up, dup = dh ⊙ act;
    then through silu: dgate = silu_backward(dact)."""
    if isinstance(cache, row_kernels.SwigluProductCache):
        return row_kernels.swiglu_product_backward(dh, cache)
    act_cache, act, up = cache
    return silu_backward(dh * up, act_cache), dh * act


def swiglu_forward(x, w_gate, w_up, w_down):
    """The LLaMA feed-forward: y = down(silu(gate(x)) ⊙ up(x)).
    x (B, T, C); w_gate, w_up (F, C); w_down (C, F) -> y (B, T, C)."""
    gate, gate_cache = linear_forward(x, w_gate)               # (B, T, F)
    up, up_cache = linear_forward(x, w_up)                     # (B, T, F)
    h, product_cache = swiglu_product_forward(gate, up)        # (B, T, F)
    y, down_cache = linear_forward(h, w_down)                  # (B, T, C)
    return y, (gate_cache, up_cache, product_cache, down_cache)


def swiglu_backward(dy, cache):
    """Returns dx, dw_gate, dw_up, dw_down. Reverse order of forward; x feeds both gate and
    up, so dx adds."""
    gate_cache, up_cache, product_cache, down_cache = cache
    dh, dw_down = linear_backward(dy, down_cache)
    dgate, dup = swiglu_product_backward(dh, product_cache)
    dx_up, dw_up = linear_backward(dup, up_cache)
    dx_gate, dw_gate = linear_backward(dgate, gate_cache)
    return dx_gate + dx_up, dw_gate, dw_up, dw_down


# ---------------------------------------------------------------------------------------------
# Softmax cross-entropy with an ignore index


def log_softmax(logits):
    """Numerically stable log-softmax over the last axis: log p = (z - m) - log Σ exp(z - m),
    m the row max. One (B, T, V) result, shifted in place (V is large: every copy counts)."""
    if row_kernels.applies(logits):
        return row_kernels.log_softmax(logits)
    xp = array_module(logits)
    logp = logits - logits.max(axis=-1, keepdims=True)
    logp -= xp.log(xp.exp(logp).sum(axis=-1, keepdims=True))
    return logp


def softmax(logits):
    """Softmax over the last axis, stable: exp(z - m) / Σ exp(z - m), m the row max (rows of
    -inf entries, as masks write them, get probability 0 there). Normalised in place."""
    if row_kernels.applies(logits):
        return row_kernels.softmax(logits)
    xp = array_module(logits)
    p = xp.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return p


def softmax_backward(dprobs, probs):
    """forward: p = softmax(z) over the last axis -> dz = p ⊙ (dp - Σ_j p_j dp_j).
    The Jacobian is dp_i/dz_j = p_i ([i = j] - p_j), so dz_j = Σ_i dp_i p_i ([i = j] - p_j)
    = p_j dp_j - p_j Σ_i p_i dp_i."""
    if row_kernels.applies(dprobs, probs):
        return row_kernels.softmax_backward(dprobs, probs)
    return probs * (dprobs - (probs * dprobs).sum(axis=-1, keepdims=True))


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """logits (B, T, V), targets (B, T) int -> mean of -log p(target) over the positions whose
    target is not ignore_index (padding). Returns (loss as a 0-d array, cache)."""
    if row_kernels.applies(logits):          # fused: no (B, T, V) copy of the logits kept
        return row_kernels.cross_entropy_forward(logits, targets, ignore_index)
    xp = array_module(logits)
    logp = log_softmax(logits)                                 # (B, T, V)
    valid = targets != ignore_index                            # (B, T)
    safe_targets = xp.where(valid, targets, 0)
    rows, cols = xp.indices(targets.shape)                     # (B, T) each: every position
    picked = logp[rows, cols, safe_targets]                    # (B, T) log p(target)
    count = max(int(valid.sum()), 1)
    loss = -(picked * valid).sum() / count
    return loss, (logp, safe_targets, valid, count)


def cross_entropy_backward(dloss, cache):
    """forward: loss = -(1/N) Σ log softmax(z)[y] -> dz = (softmax(z) - onehot(y)) / N at each
    counted position, 0 at ignored ones."""
    if isinstance(cache, row_kernels.CrossEntropyCache):
        return row_kernels.cross_entropy_backward(dloss, cache)
    logp, safe_targets, valid, count = cache
    xp = array_module(logp)
    dlogits = xp.exp(logp)                                     # softmax, (B, T, V)
    rows, cols = xp.indices(safe_targets.shape)
    dlogits[rows, cols, safe_targets] -= 1.0                   # minus the one-hot target
    weight = (valid * (dloss / count)).astype(dlogits.dtype)    # (B, T); 0 at ignored positions
    dlogits *= weight[..., None]                               # in place, stays in logits' dtype
    return dlogits
