"""Tests for mini_llm/model/attention.py: RoPE, the sliding-window mask, the dense reference
attention (against a loop written from the definition, and against PyTorch), and float64
finite-difference gradient checks of every backward (see mini_llm/gradcheck.py)."""
import numpy as np
import pytest

from mini_llm.gradcheck import assert_close_grad, numerical_grad
from mini_llm.model.attention import (
    apply_rope, attention_reference_backward, attention_reference_forward, rope_backward,
    rope_cos_sin, rope_forward, self_attention_backward, self_attention_forward, window_mask)


def random_qkv(rng, B, T, H, Hkv, D, dtype=np.float64):
    q = rng.standard_normal((B, T, H, D)).astype(dtype)
    k = rng.standard_normal((B, T, Hkv, D)).astype(dtype)
    v = rng.standard_normal((B, T, Hkv, D)).astype(dtype)
    return q, k, v


# ---------------------------------------------------------------------------------------------
# RoPE


def test_rope_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3, 8))
    cos, sin = rope_cos_sin(5, 8, theta=10000.0, dtype=np.float64, start=3)
    dy = rng.standard_normal(x.shape)
    y, cache = rope_forward(x, cos, sin)
    dx = rope_backward(dy, cache)
    assert_close_grad(dx, numerical_grad(lambda: np.sum(rope_forward(x, cos, sin)[0] * dy), x), "rope dx")


def test_rope_score_depends_only_on_offset():
    # The point of RoPE: <rope(q, m), rope(k, n)> depends on m - n, not on m and n.
    rng = np.random.default_rng(0)
    T, D = 12, 8
    q = np.broadcast_to(rng.standard_normal(D), (1, T, 1, D))     # the same q at every position
    k = np.broadcast_to(rng.standard_normal(D), (1, T, 1, D))
    cos, sin = rope_cos_sin(T, D, theta=100.0, dtype=np.float64)
    scores = apply_rope(q, cos, sin)[0, :, 0] @ apply_rope(k, cos, sin)[0, :, 0].T   # (T, T): [m, n]
    for offset in range(-T + 1, T):
        diagonal = np.diagonal(scores, offset=-offset)             # all (m, n) with m - n = offset
        np.testing.assert_allclose(diagonal, diagonal[0], rtol=1e-12, atol=1e-12)
    assert np.ptp(np.diagonal(scores)) < 1e-12 < abs(scores[5, 0] - scores[0, 0])


def test_rope_tables():
    cos, sin = rope_cos_sin(6, 4, theta=10000.0, dtype=np.float32, start=2)
    assert cos.shape == sin.shape == (6, 4) and cos.dtype == np.float32
    # rotate-half layout: pair (i, i + D/2) shares the angle position * theta^(-2i/D)
    angles = np.arange(2, 8)[:, None] * np.array([1.0, 0.01, 1.0, 0.01])
    np.testing.assert_allclose(cos, np.cos(angles), rtol=1e-6)
    np.testing.assert_allclose(sin, np.sin(angles), rtol=1e-6, atol=1e-7)
    # position 0 leaves x unchanged; start=s equals rows s.. of a longer table
    cos0, sin0 = rope_cos_sin(8, 4, theta=10000.0, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((1, 1, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(apply_rope(x, cos0[:1], sin0[:1]), x)
    np.testing.assert_allclose(cos0[2:], cos, rtol=1e-7)
    with pytest.raises(ValueError, match="even head_dim"):
        rope_cos_sin(4, 5, theta=10000.0, dtype=np.float32)


def test_rope_matches_hugging_face():
    torch = pytest.importorskip("torch")
    modeling = pytest.importorskip("transformers.models.llama.modeling_llama")
    rng = np.random.default_rng(0)
    T, D = 7, 8
    x = rng.standard_normal((2, T, 3, D))
    cos, sin = rope_cos_sin(T, D, theta=10000.0, dtype=np.float64)
    x_torch = torch.from_numpy(x).transpose(1, 2)                  # HF: (B, H, T, D)
    expected, _ = modeling.apply_rotary_pos_emb(x_torch, x_torch, torch.from_numpy(cos)[None],
                                                torch.from_numpy(sin)[None])
    np.testing.assert_allclose(apply_rope(x, cos, sin), expected.transpose(1, 2).numpy(), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# The mask


def test_window_mask_by_hand():
    # T=5, W=2: position t sees t-1 and t (Mistral: W keys, itself included)
    expected = np.array([[1, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0],
                         [0, 1, 1, 0, 0],
                         [0, 0, 1, 1, 0],
                         [0, 0, 0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(window_mask(5, 5, 2), expected)
    np.testing.assert_array_equal(window_mask(5, 5, None), np.tril(np.ones((5, 5), dtype=bool)))
    np.testing.assert_array_equal(window_mask(5, 5, 5), window_mask(5, 5, None))
    np.testing.assert_array_equal(window_mask(5, 5, 1), np.eye(5, dtype=bool))
    # a query at absolute position 4 (decoding with a cache of 5 keys)
    np.testing.assert_array_equal(window_mask(1, 5, 2, q_start=4), expected[4:])
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="sliding window"):
            window_mask(5, 5, bad)


# ---------------------------------------------------------------------------------------------
# Attention, dense reference


def attention_by_loops(q, k, v, window):
    """The definition, one query at a time: softmax over keys max(0, t-W+1) .. t of kv head h // group."""
    B, T, H, D = q.shape
    group = H // k.shape[2]
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                lo = 0 if window is None else max(0, t - window + 1)
                scores = k[b, lo:t + 1, h // group] @ q[b, t, h] / np.sqrt(D)
                p = np.exp(scores - scores.max())
                out[b, t, h] = (p / p.sum()) @ v[b, lo:t + 1, h // group]
    return out


ATTENTION_CASES = [(4, 2, 3), (4, 2, None), (2, 2, 3), (2, 2, None), (3, 1, 1)]   # (H, Hkv, W), T=6


@pytest.mark.parametrize("H, Hkv, window", ATTENTION_CASES)
def test_attention_reference_forward_matches_loops(H, Hkv, window):
    q, k, v = random_qkv(np.random.default_rng(0), 2, 6, H, Hkv, 4)
    out, _ = attention_reference_forward(q, k, v, window)
    np.testing.assert_allclose(out, attention_by_loops(q, k, v, window), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("H, Hkv, window", ATTENTION_CASES)
def test_attention_reference_gradient(H, Hkv, window):
    rng = np.random.default_rng(0)
    q, k, v = random_qkv(rng, 2, 6, H, Hkv, 4)
    dout = rng.standard_normal(q.shape)
    out, cache = attention_reference_forward(q, k, v, window)
    grads = attention_reference_backward(dout, cache)

    def f():
        return np.sum(attention_reference_forward(q, k, v, window)[0] * dout)

    for name, x, g in zip(("dq", "dk", "dv"), (q, k, v), grads):
        assert g.shape == x.shape
        assert_close_grad(g, numerical_grad(f, x), name)


def test_attention_reference_matches_torch():
    torch = pytest.importorskip("torch")
    q, k, v = random_qkv(np.random.default_rng(0), 2, 9, 4, 2, 8)
    mask = torch.from_numpy(window_mask(9, 9, 3))
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a).transpose(1, 2) for a in (q, k, v)), attn_mask=mask, enable_gqa=True)
    out, _ = attention_reference_forward(q, k, v, 3)
    np.testing.assert_allclose(out, expected.transpose(1, 2).numpy(), rtol=1e-10, atol=1e-12)


def test_attention_rejects_bad_shapes():
    q, k, v = random_qkv(np.random.default_rng(0), 1, 4, 3, 2, 4)
    with pytest.raises(ValueError, match="not a multiple"):
        attention_reference_forward(q, k, v, None)


# ---------------------------------------------------------------------------------------------
# The attention block: projections + RoPE + attention + output projection


@pytest.mark.parametrize("window, use_kernel", [(3, False), (3, None), (None, None)])
def test_self_attention_gradient(window, use_kernel):
    rng = np.random.default_rng(0)
    B, T, C, H, Hkv = 2, 5, 8, 4, 2
    D = C // H
    x = rng.standard_normal((B, T, C))
    shapes = ((H * D, C), (Hkv * D, C), (Hkv * D, C), (C, H * D))          # wq, wk, wv, wo
    weights = [rng.standard_normal(shape) * 0.5 for shape in shapes]
    cos, sin = rope_cos_sin(T, D, theta=10000.0, dtype=np.float64)
    dy = rng.standard_normal((B, T, C))

    def f():
        y, _ = self_attention_forward(x, *weights, cos, sin, H, Hkv, window, use_kernel)
        return np.sum(y * dy)

    y, cache = self_attention_forward(x, *weights, cos, sin, H, Hkv, window, use_kernel)
    *grads, extra = self_attention_backward(dy, cache)
    assert extra == {}
    for name, param, g in zip(("dx", "dwq", "dwk", "dwv", "dwo"), [x] + weights, grads):
        assert g.shape == param.shape
        assert_close_grad(g, numerical_grad(f, param), name)


@pytest.mark.parametrize("bias, qk_norm", [(True, False), (False, True), (True, True)])
def test_self_attention_gradient_with_bias_and_qk_norm(bias, qk_norm):
    """Qwen2's q/k/v bias and Qwen3's per-head q/k RMSNorm (D=6, not C/H), float64."""
    rng = np.random.default_rng(0)
    B, T, C, H, Hkv, D = 2, 5, 8, 4, 2, 6
    x = rng.standard_normal((B, T, C))
    shapes = ((H * D, C), (Hkv * D, C), (Hkv * D, C), (C, H * D))          # wq, wk, wv, wo
    weights = [rng.standard_normal(shape) * 0.5 for shape in shapes]
    biases = [rng.standard_normal(s[0]) for s in shapes[:3]] if bias else None
    norms = [1 + 0.3 * rng.standard_normal(D) for _ in range(2)] if qk_norm else None
    cos, sin = rope_cos_sin(T, D, theta=10000.0, dtype=np.float64)
    dy = rng.standard_normal((B, T, C))

    def run():
        return self_attention_forward(x, *weights, cos, sin, H, Hkv, 3,
                                      bias=biases, qk_norm=norms and (*norms, 1e-6))

    f = lambda: np.sum(run()[0] * dy)
    dx, dwq, dwk, dwv, dwo, extra = self_attention_backward(dy, run()[1])
    named = dict(zip(("dx", "dwq", "dwk", "dwv", "dwo"), [x] + weights))
    optional = {}
    if bias:
        optional.update(zip(("q_proj.bias", "k_proj.bias", "v_proj.bias"), biases))
    if qk_norm:
        optional.update(zip(("q_norm.weight", "k_norm.weight"), norms))
    assert set(extra) == set(optional)
    for name, g in [*zip(named, (dx, dwq, dwk, dwv, dwo)), *extra.items()]:
        param = named.get(name, optional.get(name))
        assert g.shape == param.shape
        assert_close_grad(g, numerical_grad(f, param), name)


def test_self_attention_rejects_bad_weights():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 8))
    cos, sin = rope_cos_sin(3, 4, theta=10000.0, dtype=np.float64)
    wq, wk, wo = np.zeros((8, 8)), np.zeros((4, 8)), np.zeros((8, 8))
    with pytest.raises(ValueError, match="attention weights"):
        self_attention_forward(x, wq, wk, np.zeros((8, 8)), wo, cos, sin, 2, 1, None)
