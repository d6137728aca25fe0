"""Forward vs reverse KL: a one-Gaussian student fitted to a two-mode teacher.

    python demos/kl_directions.py [--steps 600] [--init_mean 1.0] [--plot]

Both distributions live on a grid of points on [-6, 6] (a categorical over G bins), so they are
exactly what training/losses.py compares: softmax over logits. The teacher's logits are the log
density of 0.5 N(-2.5, 0.6²) + 0.5 N(+2.5, 0.6²); the student's are -(x - mu)² / (2 sigma²) with
two parameters, mu and log sigma. Each step: kl_forward / kl_backward give d(loss)/d(student
logits), the chain rule takes it to the two parameters
    dz/dmu = (x - mu) / sigma²,    dz/dlog(sigma) = (x - mu)² / sigma²
and mini_llm.optim.AdamW updates them.
    forward KL(p_t || p_s)  mean-seeking: the student must cover both modes, so it sits between
                            them, wide (a Gaussian's forward-KL optimum matches the teacher's
                            mean and standard deviation)
    reverse KL(p_s || p_t)  mode-seeking: mass where the teacher has none is punished, so a
                            student that starts off-centre settles on the nearer mode. Reverse KL
                            is not convex here: from a start near the middle the student can stay
                            broad and centred, a worse local minimum, which the demo also shows.
"""
import argparse
import importlib.util
import os

import numpy as np

from mini_llm.model.layers import softmax
from mini_llm.optim import AdamW
from training.losses import kl_backward, kl_forward

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODES, MODE_STD, MODE_WEIGHT = (-2.5, 2.5), 0.6, 0.5


def teacher_logits(x):
    """Log density of the two-mode mixture on the grid (G,), computed stably with logaddexp."""
    parts = [np.log(MODE_WEIGHT) - (x - m) ** 2 / (2 * MODE_STD ** 2) for m in MODES]
    return np.logaddexp(*parts)


def student_logits(x, mu, log_sigma):
    return -(x - mu) ** 2 / (2 * np.exp(2 * log_sigma))


def fit(x, t_logits, direction, init_mean, steps, lr, temperature):
    """Gradient descent on the KL in `direction` over (mu, log sigma). Returns the student logits."""
    params = {"mu": np.array([init_mean]), "log_sigma": np.array([0.0])}
    opt = AdamW(params, lr=lr, weight_decay=0.0)
    teacher = t_logits[None, None, :]                                        # (1, 1, G)
    for _ in range(steps):
        mu, sigma2 = params["mu"][0], np.exp(2 * params["log_sigma"][0])
        z = student_logits(x, mu, params["log_sigma"][0])
        _, cache = kl_forward(z[None, None, :], teacher, temperature, direction)
        dz = kl_backward(1.0, cache)[0, 0]                                   # (G,)
        grads = {"mu": np.array([np.sum(dz * (x - mu) / sigma2)]),
                 "log_sigma": np.array([np.sum(dz * (x - mu) ** 2 / sigma2)])}
        opt.step(params, grads)
    return student_logits(x, params["mu"][0], params["log_sigma"][0])


def describe(x, logits):
    """mean, std, and the mass within 1 of each mode and within 1 of the midpoint 0."""
    p = softmax(logits)
    mean = float(np.sum(p * x))
    std = float(np.sqrt(np.sum(p * (x - mean) ** 2)))
    near = [float(p[np.abs(x - m) < 1].sum()) for m in MODES]
    gap = float(p[np.abs(x) < 1].sum())
    return {"mean": mean, "std": std, "left": near[0], "right": near[1], "gap": gap}


def mode_verdict(r):
    """One line saying where a fitted student put its mass."""
    if max(r["left"], r["right"]) > 0.5 and min(r["left"], r["right"]) < 0.05:
        side = "right" if r["right"] > r["left"] else "left"
        return (f"settles on the {side} mode (mean {r['mean']:+.3f}, std {r['std']:.3f}), "
                f"{max(r['left'], r['right']):.3f} of its mass within 1 of it, KL(s||t) {r['kl_reverse']:.4f}")
    return (f"stays broad (mean {r['mean']:+.3f}, std {r['std']:.3f}, {r['gap']:.3f} of its mass in the gap): "
            f"a local minimum, KL(s||t) {r['kl_reverse']:.4f}")


def kl_value(s_logits, t_logits, direction):
    return kl_forward(s_logits[None, None, :], t_logits[None, None, :], 1.0, direction)[0]


def plot(x, rows, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    dx = x[1] - x[0]
    for name, logits in rows:
        style = dict(color="black", lw=2.5) if name == "teacher" else dict(lw=2, ls="--" if name.startswith("forward") else "-")
        ax.plot(x, softmax(logits) / dx, label=name, **style)
    ax.set_ylim(0, 1.35 * ax.get_ylim()[1])
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.set_title("forward KL covers both modes; reverse KL picks one (or gets stuck)")
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "kl_directions.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=int, default=241, help="G, points on [-6, 6] (default: %(default)s)")
    p.add_argument("--steps", type=int, default=600, help="AdamW steps per fit (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.05, help="default: %(default)s")
    p.add_argument("--init_mean", type=float, default=1.0,
                   help="student's starting mu; reverse KL also starts from -init_mean and from 0 (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="tau of kl_forward: both sides softened to softmax(logits / tau) (default: %(default)s)")
    p.add_argument("--plot", action="store_true", help="save kl_directions.png (needs matplotlib)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "demos", "output"), help="default: %(default)s")
    args = p.parse_args(argv)
    x = np.linspace(-6.0, 6.0, args.grid)
    t_logits = teacher_logits(x)

    fits = [("teacher", t_logits)]
    starts = [("forward", args.init_mean), ("reverse", args.init_mean), ("reverse", -args.init_mean),
              ("reverse", 0.0)]
    for direction, start in starts:
        logits = fit(x, t_logits, direction, start, args.steps, args.lr, args.temperature)
        fits.append((f"{direction} KL from mu={start:g}", logits))
    print(f"teacher: {MODE_WEIGHT:g} N({MODES[0]:g}, {MODE_STD:g}²) + {MODE_WEIGHT:g} N({MODES[1]:+g}, {MODE_STD:g}²) "
          f"on {args.grid} grid points; student: one Gaussian (mu, sigma), sigma starts at 1, "
          f"{args.steps} AdamW steps, tau {args.temperature:g}")
    print(f"{'distribution':<26} {'mean':>7} {'std':>6} {'mass near ' + str(MODES[0]):>15} "
          f"{'mass near ' + format(MODES[1], '+g'):>15} {'mass |x|<1':>11} {'KL(t||s)':>9} {'KL(s||t)':>9}")
    results = {}
    for name, logits in fits:
        d = describe(x, logits)
        fwd, rev = kl_value(logits, t_logits, "forward"), kl_value(logits, t_logits, "reverse")
        results[name] = {**d, "kl_forward": fwd, "kl_reverse": rev}
        print(f"{name:<26} {d['mean']:>+7.3f} {d['std']:>6.3f} {d['left']:>15.3f} {d['right']:>15.3f} "
              f"{d['gap']:>11.3f} {fwd:>9.4f} {rev:>9.4f}")
    t = results["teacher"]
    print()
    for name, r in results.items():
        if name.startswith("forward"):
            print(f"{name}: matches the teacher's moments (mean {r['mean']:+.3f} vs {t['mean']:+.3f}, "
                  f"std {r['std']:.3f} vs {t['std']:.3f}) and puts {r['gap']:.3f} of its mass in the "
                  f"gap |x|<1, where the teacher has {t['gap']:.3f}")
        elif name.startswith("reverse"):
            print(f"{name}: {mode_verdict(r)}")
    print(f"(one mode fitted exactly gives KL(s||t) = -log {MODE_WEIGHT:g} = {-np.log(MODE_WEIGHT):.4f})")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("\n--plot needs matplotlib (pip install matplotlib): no figure written")
    elif args.plot:
        os.makedirs(args.out, exist_ok=True)
        print(f"\nplot: {plot(x, fits, args.out)}")
    return results


if __name__ == "__main__":
    main()
