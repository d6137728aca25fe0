"""Gradient checks for every layer in mini_llm/model/layers.py.

Each test builds tiny float64 inputs with seed 0 (B=2, T=5, C=8), runs forward, projects the
output onto a random dy, and compares `thing_backward(dy, cache)` with central differences.
"""
import numpy as np

from mini_llm.model import layers
from mini_llm.gradcheck import assert_close_grad, numerical_grad

B, T, C, F, V = 2, 5, 8, 12, 11


def rng():
    return np.random.default_rng(0)


def test_linear():
    r = rng()
    x, w = r.normal(size=(B, T, C)), r.normal(size=(F, C))
    dy = r.normal(size=(B, T, F))
    y, cache = layers.linear_forward(x, w)
    np.testing.assert_allclose(y, np.einsum("btc,fc->btf", x, w))
    dx, dw = layers.linear_backward(dy, cache)
    f = lambda: np.sum(layers.linear_forward(x, w)[0] * dy)
    assert_close_grad(dx, numerical_grad(f, x), "linear dx")
    assert_close_grad(dw, numerical_grad(f, w), "linear dweight")



def test_linear_with_bias():
    r = rng()
    x, w, b = r.normal(size=(B, T, C)), r.normal(size=(F, C)), r.normal(size=F)
    dy = r.normal(size=(B, T, F))
    y, cache = layers.linear_bias_forward(x, w, b)
    np.testing.assert_allclose(y, np.einsum("btc,fc->btf", x, w) + b)
    dx, dw, db = layers.linear_bias_backward(dy, cache)
    f = lambda: np.sum(layers.linear_bias_forward(x, w, b)[0] * dy)
    assert_close_grad(dx, numerical_grad(f, x), "linear_bias dx")
    assert_close_grad(dw, numerical_grad(f, w), "linear_bias dweight")
    assert_close_grad(db, numerical_grad(f, b), "linear_bias dbias")
    y0, cache0 = layers.linear_bias_forward(x, w, None)      # no bias: the plain linear
    np.testing.assert_array_equal(y0, layers.linear_forward(x, w)[0])
    assert layers.linear_bias_backward(dy, cache0)[2] is None


def test_rmsnorm_over_heads():
    """Qwen3's q/k norm: RMSNorm over the last axis of (B, T, H, D) with one (D,) weight."""
    r = rng()
    x, w = r.normal(size=(B, T, 3, 4)), r.normal(size=4)
    dy = r.normal(size=x.shape)
    y, cache = layers.rmsnorm_forward(x, w, 1e-6)
    np.testing.assert_allclose(y, x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w)
    dx, dw = layers.rmsnorm_backward(dy, cache)
    f = lambda: np.sum(layers.rmsnorm_forward(x, w, 1e-6)[0] * dy)
    assert_close_grad(dx, numerical_grad(f, x), "head rmsnorm dx")
    assert_close_grad(dw, numerical_grad(f, w), "head rmsnorm dweight")

def test_embedding_with_repeated_ids():
    r = rng()
    ids = np.array([[1, 3, 3, 0, 1], [2, 2, 2, 4, 1]])     # repeats: the scatter-add must sum
    w = r.normal(size=(V, C))
    dy = r.normal(size=(B, T, C))
    y, cache = layers.embedding_forward(ids, w)
    np.testing.assert_array_equal(y[1, 3], w[4])
    dw = layers.embedding_backward(dy, cache)
    f = lambda: np.sum(layers.embedding_forward(ids, w)[0] * dy)
    assert_close_grad(dw, numerical_grad(f, w), "embedding dweight")


def test_embedding_backward_is_the_add_at_reference():
    """The bincount scatter-add equals the plain np.add.at one, repeats and unused rows included
    (float32: bincount sums in float64, add.at in float32, so only to rounding)."""
    r = rng()
    ids = np.array([[1, 3, 3, 0, 1], [2, 2, 2, 1, 1]])      # rows 4.. never looked up: stay 0
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        dy = r.normal(size=(B, T, C)).astype(dtype)
        _, cache = layers.embedding_forward(ids, np.zeros((V, C), dtype))
        fast, plain = layers.embedding_backward(dy, cache), layers.embedding_backward_reference(dy, cache)
        assert fast.dtype == plain.dtype == dtype
        np.testing.assert_allclose(fast, plain, rtol=rtol, atol=1e-6 * (dtype == np.float32))
        assert not plain[4:].any()


def test_rmsnorm():
    r = rng()
    x, w = r.normal(size=(B, T, C)), r.normal(size=C)
    dy = r.normal(size=(B, T, C))
    y, cache = layers.rmsnorm_forward(x, w, 1e-5)
    expected = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    dx, dw = layers.rmsnorm_backward(dy, cache)
    f = lambda: np.sum(layers.rmsnorm_forward(x, w, 1e-5)[0] * dy)
    assert_close_grad(dx, numerical_grad(f, x), "rmsnorm dx")
    assert_close_grad(dw, numerical_grad(f, w), "rmsnorm dweight")


def test_silu():
    r = rng()
    x, dy = r.normal(size=(B, T, C)) * 3, r.normal(size=(B, T, C))
    y, cache = layers.silu_forward(x)
    np.testing.assert_allclose(y, x / (1 + np.exp(-x)))
    dx = layers.silu_backward(dy, cache)
    f = lambda: np.sum(layers.silu_forward(x)[0] * dy)
    assert_close_grad(dx, numerical_grad(f, x), "silu dx")


def test_swiglu():
    r = rng()
    x = r.normal(size=(B, T, C))
    wg, wu, wd = r.normal(size=(F, C)), r.normal(size=(F, C)), r.normal(size=(C, F))
    dy = r.normal(size=(B, T, C))
    y, cache = layers.swiglu_forward(x, wg, wu, wd)
    g = x @ wg.T
    np.testing.assert_allclose(y, ((g / (1 + np.exp(-g))) * (x @ wu.T)) @ wd.T, rtol=1e-12)
    grads = layers.swiglu_backward(dy, cache)
    f = lambda: np.sum(layers.swiglu_forward(x, wg, wu, wd)[0] * dy)
    for name, arr, g_analytic in zip(["dx", "dw_gate", "dw_up", "dw_down"], [x, wg, wu, wd], grads):
        assert_close_grad(g_analytic, numerical_grad(f, arr), f"swiglu {name}")


def test_cross_entropy_with_ignore_index():
    r = rng()
    logits = r.normal(size=(B, T, V))
    targets = r.integers(0, V, size=(B, T))
    targets[0, 1] = targets[1, 4] = -100                   # padding: must not count
    loss, cache = layers.cross_entropy_forward(logits, targets)
    # reference: plain per-position -log softmax, averaged over the 8 counted positions
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean([logp[b, t, targets[b, t]] for b in range(B) for t in range(T) if targets[b, t] >= 0])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-12)
    dlogits = layers.cross_entropy_backward(1.0, cache)
    assert np.all(dlogits[0, 1] == 0) and np.all(dlogits[1, 4] == 0)
    f = lambda: layers.cross_entropy_forward(logits, targets)[0]
    assert_close_grad(dlogits, numerical_grad(f, logits), "cross-entropy dlogits")


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = np.zeros((1, 3, V))
    loss, cache = layers.cross_entropy_forward(logits, np.full((1, 3), -100))
    assert float(loss) == 0.0
    assert np.all(layers.cross_entropy_backward(1.0, cache) == 0)
