"""The fused Numba kernels of mini_llm/model/row_kernels.py against their NumPy references
(layers.py, attention.py, optim.py), in float32 and float64, and the same at 1 and 2 threads.

The references run inside `row_kernels.reference_only()`; the gradient checks of test_layers.py
(which run with the kernels on) check the kernels against finite differences as well.
"""
import numba
import numpy as np
import pytest

from mini_llm import optim
from mini_llm.model import attention, layers, row_kernels

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def normal(r, shape, dtype, scale=1.0):
    return (scale * r.normal(size=shape)).astype(dtype)


def reference(fn, *args):
    with row_kernels.reference_only():
        return fn(*args)


def assert_same(got, want, dtype, what):
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert g.dtype == w.dtype, f"{what}: dtype {g.dtype} != {w.dtype}"
        np.testing.assert_allclose(g, w, err_msg=what, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 48), (2, 5, 3, 8), (1, 1, 5)])
def test_rmsnorm_kernel_is_the_reference(dtype, shape):
    r = np.random.default_rng(0)
    x, w, dy = normal(r, shape, dtype, 3.0), normal(r, shape[-1:], dtype), normal(r, shape, dtype)
    y, cache = row_kernels.rmsnorm_forward(x, w, 1e-5)
    y_ref, cache_ref = reference(layers.rmsnorm_forward, x, w, 1e-5)
    assert_same(y, y_ref, dtype, "rmsnorm y")
    assert_same(cache[2], cache_ref[2], dtype, "rmsnorm rstd")
    assert_same(row_kernels.rmsnorm_backward(dy, cache),
                reference(layers.rmsnorm_backward, dy, cache_ref), dtype, "rmsnorm dx, dweight")


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_product_kernel_is_the_reference(dtype):
    r = np.random.default_rng(1)
    gate, up, dh = (normal(r, (2, 9, 40), dtype, 4.0) for _ in range(3))
    gate[0, 0, :3] = [-80.0, 0.0, 80.0]          # far tails of the sigmoid
    h, cache = row_kernels.swiglu_product_forward(gate, up)
    h_ref, cache_ref = reference(layers.swiglu_product_forward, gate, up)
    assert_same(h, h_ref, dtype, "swiglu h")
    assert_same(row_kernels.swiglu_product_backward(dh, cache),
                reference(layers.swiglu_product_backward, dh, cache_ref), dtype, "swiglu dgate, dup")


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_kernel_is_the_reference(dtype):
    r = np.random.default_rng(2)
    x, dy = normal(r, (2, 11, 3, 16), dtype), normal(r, (2, 11, 3, 16), dtype)
    cos, sin = attention.rope_cos_sin(11, 16, 10000.0, dtype, start=5)
    y, cache = row_kernels.rope_forward(x, cos, sin)
    y_ref, cache_ref = reference(attention.rope_forward, x, cos, sin)
    assert_same(y, y_ref, dtype, "rope y")
    assert_same(row_kernels.rope_backward(dy, cache), reference(attention.rope_backward, dy, cache_ref),
                dtype, "rope dx")
    x_view = x.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)   # not C-contiguous
    assert_same(row_kernels.rope_forward(x_view, cos, sin)[0], y_ref, dtype, "rope y of a view")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_kernel_is_the_reference(dtype):
    r = np.random.default_rng(3)
    logits = normal(r, (3, 6, 50), dtype, 5.0)
    logits[0, 0, 7] = 200.0                      # exp would overflow without the row max
    targets = r.integers(0, 50, size=(3, 6))
    targets[1, 2:4] = -100                       # ignored positions
    loss, cache = row_kernels.cross_entropy_forward(logits, targets)
    loss_ref, cache_ref = reference(layers.cross_entropy_forward, logits, targets)
    assert loss.shape == () and np.isfinite(loss)
    assert_same(loss, loss_ref, dtype, "cross-entropy loss")
    dlogits = row_kernels.cross_entropy_backward(0.5, cache)
    assert_same(dlogits, reference(layers.cross_entropy_backward, 0.5, cache_ref), dtype, "dlogits")
    assert not dlogits[1, 2:4].any(), "ignored positions must get no gradient"


def test_cross_entropy_kernel_all_ignored_is_zero():
    logits = np.ones((2, 3, 5), np.float32)
    loss, cache = row_kernels.cross_entropy_forward(logits, np.full((2, 3), -100))
    assert float(loss) == 0.0 and not row_kernels.cross_entropy_backward(1.0, cache).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_kernel_is_the_reference(dtype, weight_decay):
    r = np.random.default_rng(4)
    state = [normal(r, (33, 17), dtype) for _ in range(2)] + [np.zeros((33, 17), dtype)] * 2
    kernel = [a.copy() for a in state]
    ref = [a.copy() for a in state]
    for t in (1, 2, 3):
        g = normal(r, (33, 17), dtype)
        row_kernels.adamw_update(kernel[0], g, kernel[2], kernel[3], 1e-2, 0.9, 0.95, 1e-8, weight_decay, t)
        reference(optim.adamw_update, ref[0], g, ref[2], ref[3], 1e-2, 0.9, 0.95, 1e-8, weight_decay, t)
    for name, a, b in zip("p g m v".split(), kernel, ref):
        assert_same(a, b, dtype, f"adamw {name}")


def test_layers_hand_numpy_arrays_to_the_kernels():
    """The dispatch itself: layers.py returns the kernel's cache types for NumPy arrays and the
    reference's inside reference_only()."""
    x = np.ones((2, 3, 4), np.float32)
    assert isinstance(layers.swiglu_product_forward(x, x)[1], row_kernels.SwigluProductCache)
    assert isinstance(layers.cross_entropy_forward(x, np.zeros((2, 3), int))[1], row_kernels.CrossEntropyCache)
    with row_kernels.reference_only():
        assert not row_kernels.applies(x)
        assert not isinstance(layers.swiglu_product_forward(x, x)[1], row_kernels.SwigluProductCache)
    assert row_kernels.applies(x) and not row_kernels.applies(x.astype(np.float16))


def test_kernels_give_the_same_bits_at_1_and_2_threads():
    """Reductions over rows go in fixed blocks: the thread count must not change a bit."""
    r = np.random.default_rng(5)
    x, w, dy = normal(r, (4, 100, 64), np.float32), normal(r, (64,), np.float32), normal(r, (4, 100, 64), np.float32)
    logits, targets = normal(r, (4, 100, 97), np.float32), r.integers(0, 97, size=(4, 100))
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            _, norm_cache = row_kernels.rmsnorm_forward(x, w, 1e-6)
            loss, ce_cache = row_kernels.cross_entropy_forward(logits, targets)
            results.append(row_kernels.rmsnorm_backward(dy, norm_cache)
                           + (loss, row_kernels.cross_entropy_backward(1.0, ce_cache)))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_a_cross_entropy_cache_serves_one_backward():
    """Backward turns the cache's (N, V) buffer into dlogits: a second call must refuse."""
    loss, cache = row_kernels.cross_entropy_forward(np.zeros((1, 2, 3), np.float32), np.zeros((1, 2), int))
    row_kernels.cross_entropy_backward(1.0, cache)
    with pytest.raises(RuntimeError, match="served a backward already"):
        row_kernels.cross_entropy_backward(1.0, cache)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_kernels_are_the_reference(dtype):
    """softmax, log_softmax and the softmax Jacobian, with -inf entries as attention's mask
    writes them (probability exactly 0 there)."""
    r = np.random.default_rng(6)
    z, dp = normal(r, (3, 4, 37), dtype, 6.0), normal(r, (3, 4, 37), dtype)
    z[0, 0, 5:] = -np.inf
    p = row_kernels.softmax(z)
    assert_same(p, reference(layers.softmax, z), dtype, "softmax")
    assert not p[0, 0, 5:].any()
    finite = np.isfinite(z)
    np.testing.assert_allclose(row_kernels.log_softmax(z)[finite], reference(layers.log_softmax, z)[finite],
                               **TOL[dtype])
    assert_same(row_kernels.softmax_backward(dp, p), reference(layers.softmax_backward, dp, p), dtype,
                "softmax backward")


def test_float32_exp_is_exp_to_an_ulp():
    """The kernels' own float32 exp (vectorisable) against float64 exp, over every argument a
    softmax gives it (x - max <= 0, down to -inf), seen through softmax((x, 0)) = sigmoid(x)."""
    x = np.concatenate([np.linspace(-87, 88, 200_001), [-np.inf, -1e4, -88.0, 0.0]]).astype(np.float32)
    pairs = np.stack([x, np.zeros_like(x)], axis=1)          # rows (x, 0)
    got = row_kernels.softmax(pairs)[:, 0]
    with np.errstate(over="ignore"):
        want = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(got, want, rtol=3e-7, atol=1e-37)


def test_add_into_adds_in_place_and_falls_back_to_numpy():
    r = np.random.default_rng(7)
    out, x = normal(r, (5, 6), np.float32), normal(r, (5, 6), np.float32)
    want = out + x
    assert row_kernels.add_into(out, x) is out
    np.testing.assert_array_equal(out, want)
    view = np.zeros((6, 5), np.float32).T                  # not C-contiguous: NumPy's += does it
    np.testing.assert_array_equal(row_kernels.add_into(view, x), x)
    broadcast = np.zeros((5, 6))
    np.testing.assert_array_equal(row_kernels.add_into(broadcast, np.ones(6)), np.ones((5, 6)))


def test_cross_entropy_kernel_refuses_a_target_outside_the_vocabulary():
    """The kernel reads logits[n, target] without a bounds check, so the wrapper checks first."""
    from tests.errors import one_line_error
    logits = np.zeros((1, 2, 5), np.float32)
    one_line_error(lambda: row_kernels.cross_entropy_forward(logits, np.array([[1, 5]])), "target id 5", "size 5")
    one_line_error(lambda: row_kernels.cross_entropy_forward(logits, np.array([[-3, 0]])), "target id -3")
