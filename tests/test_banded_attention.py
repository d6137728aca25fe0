"""Banded attention (mini_llm/model/banded_attention.py) and its window softmax (window.py, and the
Numba twin in kernels.py) against the dense NumPy reference with the kernels off: forward and
backward in float64 and float32, finite differences in float64, blocks that overlap, GQA,
window None, slices of heads on 1 and 2 threads; and the dispatcher's choice of path."""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from mini_llm import threads
from mini_llm.gradcheck import assert_close_grad, numerical_grad
from mini_llm.model import attention, kernels, row_kernels
from mini_llm.model.attention import (attention_backward, attention_forward, attention_path,
                                      attention_reference_backward, attention_reference_forward)
from mini_llm.model.banded_attention import (banded_attention_backward, banded_attention_forward,
                                             default_block, query_blocks)
from mini_llm.model.window import window_mask, window_softmax

CASES = [  # (B, T, H, Hkv, D, W, block)
    (2, 37, 4, 2, 8, 5, 4),        # GQA, many overlapping blocks, T not a multiple of Q
    (1, 20, 3, 1, 8, None, 6),     # full causal, one kv head for three query heads
    (2, 33, 2, 2, 8, 40, 8),       # window >= T: plain causal
    (1, 16, 2, 2, 4, 1, 3),        # each token sees only itself
    (3, 50, 4, 4, 16, 12, None),   # the default block (16: W // 2 clipped up)
]
TOLERANCE = {np.float64: 1e-12, np.float32: 2e-5}


def random_inputs(B, T, H, Hkv, D, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q, dout = (rng.standard_normal((B, T, H, D)).astype(dtype) for _ in range(2))
    k, v = (rng.standard_normal((B, T, Hkv, D)).astype(dtype) for _ in range(2))
    return q, k, v, dout


def assert_close(actual, expected, rtol, name):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, name
    err = np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30)
    assert err < rtol, f"{name}: max rel error {err:.2e} >= {rtol:.0e}"


def dense_reference(q, k, v, dout, window):
    """out, dq, dk, dv of the dense path in plain NumPy (no Numba kernel anywhere)."""
    with row_kernels.reference_only():
        out, cache = attention_reference_forward(q, k, v, window)
        return (out, *attention_reference_backward(dout, cache))


def test_query_blocks_by_hand():
    assert query_blocks(5, 2, 2) == [(0, 2, 0), (2, 4, 1), (4, 5, 3)]
    assert query_blocks(5, None, 2) == [(0, 2, 0), (2, 4, 0), (4, 5, 0)]
    assert default_block(256, 128) == 64 and default_block(256, 8) == 16 and default_block(8, 128) == 8
    assert default_block(4096, None) == 128


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B, T, H, Hkv, D, W, block", CASES)
def test_banded_matches_dense_reference(B, T, H, Hkv, D, W, block, dtype):
    q, k, v, dout = random_inputs(B, T, H, Hkv, D, dtype)
    out, cache = banded_attention_forward(q, k, v, W, block)
    got = (out, *banded_attention_backward(dout, cache))
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, dense_reference(q, k, v, dout, W)):
        assert_close(a, b, TOLERANCE[dtype], name)


@pytest.mark.parametrize("W, Hkv", [(3, 1), (None, 2)])
def test_banded_gradient_by_finite_differences(W, Hkv):
    """float64, blocks of 2 queries over T 7: every key is in several blocks' ranges."""
    q, k, v, dout = random_inputs(1, 7, 2, Hkv, 3, np.float64, seed=1)
    _, cache = banded_attention_forward(q, k, v, W, block=2)
    grads = banded_attention_backward(dout, cache)

    def f():
        return np.sum(banded_attention_forward(q, k, v, W, block=2)[0] * dout)

    for name, x, g in zip(("dq", "dk", "dv"), (q, k, v), grads):
        assert_close_grad(g, numerical_grad(f, x), name)


@pytest.mark.parametrize("threads_used", [1, 2])
def test_slices_of_heads_give_the_same_bits_on_any_thread_count(threads_used):
    """The heads are cut into one slice per thread (threads.in_parallel); the numbers must not
    depend on the cut. Compared with the same call on one slice."""
    q, k, v, dout = random_inputs(3, 40, 4, 2, 8, np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        out1, cache1 = banded_attention_forward(q, k, v, 9)
        grads1 = banded_attention_backward(dout, cache1)
        numba.set_num_threads(min(threads_used, numba.config.NUMBA_NUM_THREADS))
        out, cache = banded_attention_forward(q, k, v, 9)
        grads = banded_attention_backward(dout, cache)
    finally:
        numba.set_num_threads(before)
    assert len(cache[4]) == min(threads_used, numba.config.NUMBA_NUM_THREADS)   # the slices
    for a, b in zip((out, *grads), (out1, *grads1)):
        np.testing.assert_array_equal(a, b)


def test_in_parallel_runs_every_slice_and_restores_the_pools():
    window_softmax(np.zeros((1, 1, 1), np.float32), 1.0, None)     # a kernel ran: Numba's layer is chosen
    seen = []
    bounds = [(0, 2), (2, 5), (5, 6)]
    before = numba.get_num_threads()
    results = threads.in_parallel(lambda lo, hi: seen.append((lo, hi)) or (hi - lo, numba.get_num_threads()),
                                  bounds)
    assert sorted(seen) == bounds
    # in order; Numba at one thread inside, unless the layer (workqueue) made them run serially
    inside = 1 if threads.concurrent_kernels_allowed() else before
    assert results == [(2, inside), (3, inside), (1, inside)]
    assert numba.get_num_threads() == before
    assert threads.slices(5) == [(i * 5 // numba.get_num_threads(), (i + 1) * 5 // numba.get_num_threads())
                                 for i in range(numba.get_num_threads())]
    assert threads.slices(0) == [(0, 0)]


# ---------------------------------------------------------------------------------------------
# The window softmax: kernel against reference


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T_q, T_k, window, q_start", [(4, 9, 3, 5), (6, 6, None, 0), (5, 12, 4, 2),
                                                       (3, 3, 1, 0), (2, 7, 10, 5)])
def test_window_softmax_kernel_matches_reference(T_q, T_k, window, q_start, dtype):
    scores = np.random.default_rng(0).standard_normal((2, 3, T_q, T_k)).astype(dtype) * 4
    got = window_softmax(scores, 0.3, window, q_start)
    with row_kernels.reference_only():
        expected = window_softmax(scores, 0.3, window, q_start)
    assert_close(got, expected, TOLERANCE[dtype] * 10, "probs")
    visible = window_mask(T_q, T_k, window, q_start)
    assert np.all(got[..., ~visible] == 0)
    np.testing.assert_allclose(got.sum(axis=-1), 1, rtol=1e-5)


def test_window_softmax_kernel_reads_only_the_visible_keys():
    """Masked scores may hold anything, even NaN: the kernel never reads them."""
    scores = np.full((1, 4, 6), np.nan)
    visible = window_mask(4, 6, 2, q_start=2)
    scores[0][visible] = 1.0
    probs = kernels.window_softmax(scores, 1.0, 2, 2)
    np.testing.assert_array_equal(probs[0], np.where(visible, 0.5, 0.0))


def test_window_softmax_rejects_a_query_that_sees_no_key():
    scores = np.zeros((3, 4))
    with pytest.raises(ValueError, match="sees no key"):
        window_softmax(scores, 1.0, 2, q_start=6)        # the last query is 8 keys after key 3
    with pytest.raises(ValueError, match="sees no key"):
        window_softmax(scores, 1.0, None, q_start=-1)
    with pytest.raises(ValueError, match="sliding window"):
        window_softmax(scores, 1.0, 0, q_start=0)


# ---------------------------------------------------------------------------------------------
# The dispatcher


def test_dispatcher_takes_banded_for_training_on_numpy(monkeypatch):
    q, k, v, dout = random_inputs(2, 24, 4, 2, 8, np.float32)
    assert attention_path(q, k, 5) == "banded" and attention_path(q, k, None) == "banded"
    assert attention_path(q, np.concatenate([k, k], axis=1), 5) == "reference"   # Tk > T: a KV cache
    monkeypatch.setattr(attention, "KERNEL_MIN_BAND", 2 * 4 * 24 * 10)           # banded would keep more
    assert attention_path(q, k, 5) == "kernel"
    assert attention_forward(q, k, v, 5)[1][0] == "kernel"
    monkeypatch.undo()
    out, cache = attention_forward(q, k, v, 5)
    assert cache[0] == "banded"
    assert attention_forward(q, k, v, 5, use_kernel=False)[1][0] == "reference"
    assert attention_forward(q, k, v, 5, use_kernel=True)[1][0] == "kernel"
    got = (out, *attention_backward(dout, cache))
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, dense_reference(q, k, v, dout, 5)):
        assert_close(a, b, TOLERANCE[np.float32], name)


WORKQUEUE_RUN = """
import numpy as np
from mini_llm import threads
threads.set_threads(2)
from mini_llm.model.banded_attention import banded_attention_backward, banded_attention_forward
q = np.random.default_rng(0).standard_normal((4, 40, 2, 8), dtype=np.float32)
out, cache = banded_attention_forward(q, q[:, :, :1], q[:, :, 1:], 9)
banded_attention_backward(out, cache)
print(threads.concurrent_kernels_allowed())
"""


def test_the_workqueue_layer_gets_the_slices_one_after_another():
    """Numba's workqueue layer aborts the process on concurrent launches from two Python threads
    (it is the fallback where OpenMP and TBB are missing): in_parallel must then run serially."""
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "NUMBA_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", WORKQUEUE_RUN], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"
