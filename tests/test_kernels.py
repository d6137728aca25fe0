"""The Numba sliding-window kernels (mini_llm/model/kernels.py) against the dense reference
(mini_llm/model/attention.py): forward, log-sum-exp and backward, float64 (to rounding) and
float32, over shapes that reach every branch: windows of 1, < T, >= T and None; GQA; several
query blocks (T > 64); a head_dim that is not a multiple of 4."""
import numpy as np
import pytest

from mini_llm.model.attention import (
    attention_backward, attention_forward, attention_reference_backward, attention_reference_forward,
    window_mask)
from mini_llm.model.kernels import sliding_window_attention_backward, sliding_window_attention_forward

CASES = [  # (B, T, H, Hkv, D, W)
    (2, 37, 4, 2, 8, 5),       # GQA, window < T
    (1, 50, 2, 2, 16, 1),      # each token sees only itself
    (1, 20, 3, 1, 8, None),    # full causal, one kv head for three query heads
    (2, 33, 4, 4, 8, 40),      # window >= T: plain causal
    (1, 150, 2, 1, 64, 70),    # several blocks of 64 queries / keys
    (1, 67, 2, 2, 6, 64),      # D % 4 != 0
]
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}


def random_inputs(B, T, H, Hkv, D, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, H, D)).astype(dtype)
    k = rng.standard_normal((B, T, Hkv, D)).astype(dtype)
    v = rng.standard_normal((B, T, Hkv, D)).astype(dtype)
    dout = rng.standard_normal((B, T, H, D)).astype(dtype)
    return q, k, v, dout


def assert_close(actual, expected, rtol, name):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, name
    err = np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30)
    assert err < rtol, f"{name}: max rel error {err:.2e} >= {rtol:.0e}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B, T, H, Hkv, D, W", CASES)
def test_kernel_matches_reference(B, T, H, Hkv, D, W, dtype):
    q, k, v, dout = random_inputs(B, T, H, Hkv, D, dtype)
    out_ref, cache = attention_reference_forward(q, k, v, W)
    dq_ref, dk_ref, dv_ref = attention_reference_backward(dout, cache)
    out, lse = sliding_window_attention_forward(q, k, v, W)
    dq, dk, dv = sliding_window_attention_backward(dout, q, k, v, out, lse, W)
    rtol = TOLERANCE[dtype]
    assert_close(out, out_ref, rtol, "out")
    # W=1: p = 1 whatever q and k are, so dq = dk = 0 (up to rounding: relative error is moot)
    for name, got, want in (("dq", dq, dq_ref), ("dk", dk, dk_ref), ("dv", dv, dv_ref)):
        if W == 1 and name != "dv":
            assert np.abs(got).max() < rtol and np.abs(want).max() < rtol, name
        else:
            assert_close(got, want, rtol, name)


def test_lse_is_the_log_sum_exp_of_the_window():
    q, k, v, _ = random_inputs(1, 12, 2, 1, 8, np.float64)
    _, lse = sliding_window_attention_forward(q, k, v, 4)
    scores = np.einsum("thd,sd->hts", q[0], k[0, :, 0]) / np.sqrt(8)        # (H, T, T)
    scores = np.where(window_mask(12, 12, 4), scores, -np.inf)
    expected = np.log(np.exp(scores).sum(axis=-1)).T                        # (T, H)
    assert lse.shape == (1, 12, 2) and lse.dtype == np.float64
    np.testing.assert_allclose(lse[0], expected, rtol=1e-12)


def test_kernel_accepts_strided_inputs():
    q, k, v, dout = random_inputs(2, 16, 4, 4, 8, np.float64)
    q_strided = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)   # other strides
    out, lse = sliding_window_attention_forward(q_strided, k, v, 3)
    out_ref, _ = attention_reference_forward(q, k, v, 3)
    assert_close(out, out_ref, 1e-12, "out")


def test_dispatcher_forced_kernel_matches_forced_reference():
    """use_kernel=True takes the kernel, False the dense reference (the choice for None is
    tested in test_banded_attention.py); both give the same numbers."""
    q, k, v, dout = random_inputs(1, 24, 4, 2, 8, np.float32)
    out, cache = attention_forward(q, k, v, 5, use_kernel=True)
    assert cache[0] == "kernel"
    assert attention_forward(q, k, v, None, use_kernel=True)[1][0] == "kernel"
    out_ref, cache_ref = attention_forward(q, k, v, 5, use_kernel=False)
    assert cache_ref[0] == "reference"
    assert_close(out, out_ref, 1e-5, "out")
    grads, grads_ref = attention_backward(dout, cache), attention_backward(dout, cache_ref)
    for name, got, want in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_close(got, want, 1e-5, name)


def test_kernel_rejects_bad_input():
    q, k, v, _ = random_inputs(1, 8, 2, 1, 4, np.float32)
    with pytest.raises(ValueError, match="float32 or float64"):
        sliding_window_attention_forward(q.astype(np.float16), k, v, 2)
    with pytest.raises(ValueError, match="shapes do not fit"):
        sliding_window_attention_forward(q[:, :4], k, v, 2)
    with pytest.raises(ValueError, match="sliding window"):
        sliding_window_attention_forward(q, k, v, 0)
