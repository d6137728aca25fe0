"""Finite-difference gradient checking, walked through: first one layer (RMSNorm), then why the
check runs in float64 and how eps is chosen (measured, not asserted), then every parameter of a
whole tiny model.

    python demos/gradient_check.py [--attention reference|kernel] [--plot]

The check (mini_llm/gradcheck.py): nudge one entry of x by ±eps and watch a scalar f change,
    df/dx_i ≈ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)
A layer's output is an array, so it is turned into a scalar by projecting onto a fixed random
dy: f = Σ y·dy. The gradient of that f is exactly what `thing_backward(dy, cache)` returns.
The two errors of the estimate pull eps in opposite directions:
    truncation  the Taylor remainder, ~ eps² |f'''| / 6          (wants eps small)
    rounding    f is known to ~ machine_eps |f|, divided by eps   (wants eps large)
Their sum is smallest near eps ≈ machine_eps^(1/3): about 6e-6 in float64, 5e-3 in float32,
where the best reachable error is ~ machine_eps^(2/3): 4e-11 in float64 but only 2e-5 in float32.
That is why gradient checks run in float64.
"""
import argparse
import importlib.util
import os

import numpy as np

from mini_llm.gradcheck import numerical_grad, rel_error
from mini_llm.model.layers import cross_entropy_backward, cross_entropy_forward, rmsnorm_backward, rmsnorm_forward
from mini_llm.model.transformer import MiniTransformer, TransformerConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NORM_EPS = 1e-5        # RMSNorm's own epsilon (inside the sqrt), not the finite-difference step
STEP = 1e-6            # the finite-difference step eps of parts 1 and 3 (mini_llm/gradcheck.py's default)
TOLERANCE = 1e-6       # the project's bar for a float64 check


def rmsnorm_problem(seed, dtype=np.float64, shape=(2, 3, 4)):
    """x (B, T, C), weight (C,), dy (B, T, C) and f() = Σ rmsnorm(x)·dy, all in dtype."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(dtype)
    weight = (1.0 + 0.5 * rng.normal(size=shape[-1])).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    f = lambda: (rmsnorm_forward(x, weight, NORM_EPS)[0] * dy).sum()       # noqa: E731
    return x, weight, dy, f


def check_rmsnorm(seed):
    """Analytic (rmsnorm_backward) vs numeric gradients of one layer. Returns (err dx, err dweight)."""
    x, weight, dy, f = rmsnorm_problem(seed)
    _, cache = rmsnorm_forward(x, weight, NORM_EPS)
    dx, dweight = rmsnorm_backward(dy, cache)
    num_dx, num_dweight = numerical_grad(f, x, eps=STEP), numerical_grad(f, weight, eps=STEP)
    print(f"1. RMSNorm, x {x.shape} float64, f = Σ rmsnorm(x)·dy, central differences with eps = {STEP:g}")
    print(f"{'entry':>10} {'analytic dx':>20} {'numeric dx':>20} {'|difference|':>13}")
    for index in [(0, 0, 0), (0, 1, 2), (1, 2, 3)]:
        a, n = dx[index], num_dx[index]
        print(f"{str(index):>10} {a:>20.12f} {n:>20.12f} {abs(a - n):>13.1e}")
    err_dx, err_dw = rel_error(dx, num_dx), rel_error(dweight, num_dweight)
    print(f"rel error dx {err_dx:.1e}, dweight {err_dw:.1e}   "
          f"(rel_error = max|a-b| / max(|a|+|b|); the bar is {TOLERANCE:.0e})")
    return err_dx, err_dw


def eps_sweep(seed, steps):
    """Rel error of the finite difference (computed in float64 or float32) against the float64
    analytic gradient, for each eps. Returns {dtype name: [errors]}."""
    x64, w64, dy64, _ = rmsnorm_problem(seed)
    reference, _ = rmsnorm_backward(dy64, rmsnorm_forward(x64, w64, NORM_EPS)[1])
    errors = {}
    for dtype in (np.float64, np.float32):
        x, _, _, f = rmsnorm_problem(seed, dtype)
        errors[np.dtype(dtype).name] = [rel_error(numerical_grad(f, x, eps=eps), reference) for eps in steps]
    print("\n2. the same dx by finite differences with f evaluated in float64 or float32, "
          "against the float64 analytic dx")
    print(f"{'eps':>8} {'rel err float64':>16} {'rel err float32':>16}")
    for i, eps in enumerate(steps):
        print(f"{eps:>8.0e} {errors['float64'][i]:>16.1e} {errors['float32'][i]:>16.1e}")
    for name, errs in errors.items():
        best = int(np.argmin(errs))
        machine = np.finfo(name).eps
        print(f"{name}: best eps here {steps[best]:.0e} (rel err {errs[best]:.1e}); "
              f"machine eps {machine:.1e}, machine_eps^(1/3) = {machine ** (1 / 3):.1e}")
    return errors


def tiny_model(seed, attention):
    """A 2-layer float64 model with GQA and a sliding window; weights drawn larger than the
    training init (std 0.3) so that no gradient sits at the level of rounding noise."""
    config = TransformerConfig(vocab_size=11, hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=1,
                               intermediate_size=12, max_seq_length=8, sliding_window=3)
    model = MiniTransformer(config, seed=seed, dtype=np.float64)
    model.use_kernel = {"kernel": True, "reference": False, "banded": None}[attention]
    rng = np.random.default_rng(seed + 1)
    for name, p in model.params.items():
        p[...] = rng.normal(1.0 if name.endswith("norm.weight") else 0.0, 0.3, p.shape)
    return model


def check_model(seed, attention):
    """Every parameter of the tiny model: model.backward vs numerical_grad of the loss.
    Returns {parameter name: rel error}."""
    model = tiny_model(seed, attention)
    rng = np.random.default_rng(seed + 2)
    ids = rng.integers(0, model.config.vocab_size, size=(2, 6))
    targets = rng.integers(0, model.config.vocab_size, size=(2, 6))
    targets[1, 0] = -100                                   # one padded position: ignored by the loss
    loss, ce_cache = cross_entropy_forward(model.forward(ids), targets)
    model.zero_grad()
    model.backward(cross_entropy_backward(1.0, ce_cache))
    loss_fn = lambda: cross_entropy_forward(model.forward(ids, keep_cache=False), targets)[0]   # noqa: E731
    c = model.config
    print(f"\n3. the whole model, float64: {c.num_layers} layers, C={c.hidden_size}, H={c.num_heads}, "
          f"Hkv={c.num_kv_heads}, W={c.sliding_window}, attention path: {attention}; "
          f"loss = cross-entropy {float(loss):.4f} on ids (2, 6), one target ignored")
    print(f"{'parameter':<47} {'shape':>8} {'max |grad|':>11} {'rel error':>10}")
    errors = {}
    for name, p in model.params.items():
        numeric = numerical_grad(loss_fn, p, eps=STEP)
        errors[name] = rel_error(model.grads[name], numeric)
        flag = "" if errors[name] < TOLERANCE else "  FAIL"
        print(f"{name:<47} {str(p.shape):>8} {np.abs(model.grads[name]).max():>11.2e} {errors[name]:>10.1e}{flag}")
    worst = max(errors, key=errors.get)
    verdict = "all below" if errors[worst] < TOLERANCE else "NOT all below"
    print(f"{len(errors)} parameters ({model.num_parameters()} numbers): worst rel error "
          f"{errors[worst]:.1e} ({worst}); {verdict} {TOLERANCE:.0e}")
    return errors


def plot(steps, errors, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, errs in errors.items():
        line, = ax.loglog(steps, errs, "o-", label=name)
        ax.axvline(np.finfo(name).eps ** (1 / 3), color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("finite-difference step eps")
    ax.set_ylabel("rel error vs float64 analytic dx")
    ax.set_title("RMSNorm dx: truncation (right) vs rounding (left);\ndotted: machine_eps^(1/3)")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "gradient_check.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attention", choices=["kernel", "reference", "banded"], default="reference",
                   help="attention path of the whole-model check: the dense NumPy reference, the "
                        "Numba kernel and its lse-based backward, or the banded blocks (what "
                        "training takes) (default: %(default)s)")
    p.add_argument("--skip_model", action="store_true", help="only the one-layer parts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", action="store_true", help="save gradient_check.png (needs matplotlib)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "demos", "output"), help="default: %(default)s")
    args = p.parse_args(argv)
    steps = [10.0 ** -e for e in range(1, 11)]

    err_dx, err_dw = check_rmsnorm(args.seed)
    errors = eps_sweep(args.seed, steps)
    model_errors = {} if args.skip_model else check_model(args.seed, args.attention)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("\n--plot needs matplotlib (pip install matplotlib): no figure written")
    elif args.plot:
        os.makedirs(args.out, exist_ok=True)
        print(f"\nplot: {plot(steps, errors, args.out)}")
    return {"rmsnorm": (err_dx, err_dw), "eps_steps": steps, "eps_sweep": errors, "model": model_errors}


if __name__ == "__main__":
    main()
