"""Finite-difference gradient checking, the way cs231n teaches it.

`numerical_grad(f, x)` nudges each entry of x by ±eps and measures the change of the scalar f():
    df/dx_i ≈ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)       (central difference, error O(eps²))
Array-valued layers are turned into scalars by projecting onto a fixed random dy: f = Σ y·dy,
whose gradient with respect to the input is exactly what `thing_backward(dy, cache)` returns.
Always in float64: in float32 the rounding error of f swamps the O(eps²) truncation error.
Used by the tests (tests/test_layers.py shows the pattern) and by demos/gradient_check.py.
"""
import numpy as np


def numerical_grad(f, x, eps=1e-6):
    """df/dx for a scalar function f() that reads the array x (modified in place, then restored)."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat_x, flat_g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat_x.size):
        old = flat_x[i]
        flat_x[i] = old + eps
        f_plus = float(f())
        flat_x[i] = old - eps
        f_minus = float(f())
        flat_x[i] = old
        flat_g[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def rel_error(a, b):
    """max |a - b| relative to the size of the numbers compared (0 when both are 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-12, np.max(np.abs(a) + np.abs(b))))


def assert_close_grad(analytic, numeric, name, tol=1e-6):
    """Fail with the first few (analytic, numeric) pairs and the max error, like llm.c's check_tensor."""
    err = rel_error(analytic, numeric)
    if err >= tol:
        pairs = list(zip(np.ravel(analytic)[:5], np.ravel(numeric)[:5]))
        raise AssertionError(f"{name}: rel error {err:.2e} >= {tol:.0e}; first (analytic, numeric): {pairs}")
