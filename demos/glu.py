"""SwiGLU vs a plain feed-forward network with the same number of parameters, trained the same
way on the same small regression task, over several seeds.

    python demos/glu.py [--hidden 8] [--ffn 16] [--steps 500] [--seeds 5] [--plot]

    SwiGLU  y = down(silu(gate(x)) ⊙ up(x))    3 matrices: 3·C·F parameters   (layers.swiglu_forward)
    plain   y = W2 silu(W1 x)                  2 matrices: 2·C·F' parameters, F' = 3F/2 for the same count
The gate lets each hidden unit multiply two linear views of x, where the plain network can only
bend one. Shazeer (2020) found GLU variants better for language models; whether that carries to
a toy task is exactly what this demo measures rather than assumes.

Task: x ~ N(0, I) in R^C, target t = sin(A x) with a random A (std 2/sqrt(C) entries) drawn per
seed, 512 training and 512 held-out points. Both networks: weights N(0, 1/fan_in), full-batch
AdamW (mini_llm.optim.AdamW, no weight decay), mean squared error, backward written by hand
from the layer pairs in mini_llm/model/layers.py. Nothing is tuned for either side: same
steps, same learning rate, same data, same seed for the draws.
"""
import argparse
import importlib.util
import os

import numpy as np

from mini_llm.model.layers import (linear_backward, linear_forward, silu_backward, silu_forward,
                                   swiglu_backward, swiglu_forward)
from mini_llm.optim import AdamW

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plain_ffn_forward(x, w1, w2):
    """x (N, C), w1 (F', C), w2 (C, F') -> y (N, C) = silu(x W1ᵀ) W2ᵀ."""
    h, cache1 = linear_forward(x, w1)              # (N, F')
    a, cache_act = silu_forward(h)                 # (N, F')
    y, cache2 = linear_forward(a, w2)              # (N, C)
    return y, (cache1, cache_act, cache2)


def plain_ffn_backward(dy, cache):
    """Returns dw1, dw2. Reverse order of forward (dx is not needed here)."""
    cache1, cache_act, cache2 = cache
    da, dw2 = linear_backward(dy, cache2)
    dh = silu_backward(da, cache_act)
    _, dw1 = linear_backward(dh, cache1)
    return dw1, dw2


def swiglu_params(rng, C, F):
    return {"w_gate": rng.normal(0, C ** -0.5, (F, C)), "w_up": rng.normal(0, C ** -0.5, (F, C)),
            "w_down": rng.normal(0, F ** -0.5, (C, F))}


def plain_params(rng, C, F):
    return {"w1": rng.normal(0, C ** -0.5, (F, C)), "w2": rng.normal(0, F ** -0.5, (C, F))}


def swiglu_apply(params, x):
    y, cache = swiglu_forward(x, params["w_gate"], params["w_up"], params["w_down"])
    return y, lambda dy: dict(zip(("w_gate", "w_up", "w_down"), swiglu_backward(dy, cache)[1:]))


def plain_apply(params, x):
    y, cache = plain_ffn_forward(x, params["w1"], params["w2"])
    return y, lambda dy: dict(zip(("w1", "w2"), plain_ffn_backward(dy, cache)))


def make_task(rng, C, n):
    """(x_train, t_train, x_test, t_test): t = sin(A x), A with std 2/sqrt(C) entries."""
    A = rng.normal(0, 2 * C ** -0.5, (C, C))
    x = rng.normal(size=(2 * n, C))
    t = np.sin(x @ A.T)
    return x[:n], t[:n], x[n:], t[n:]


def train(apply, params, data, steps, lr, eval_every):
    """Full-batch AdamW on the mean squared error. Returns (final train loss, test losses
    every eval_every steps, the last one being the final test loss)."""
    x, t, x_test, t_test = data
    opt = AdamW(params, lr=lr, weight_decay=0.0)
    test_curve = []
    for step in range(steps):
        y, backward = apply(params, x)
        diff = y - t
        # loss = mean((y - t)²) over N·C numbers -> dy = 2 (y - t) / (N·C)
        opt.step(params, backward(2.0 * diff / diff.size))
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            test_curve.append(float(np.mean((apply(params, x_test)[0] - t_test) ** 2)))
    train_loss = float(np.mean((apply(params, x)[0] - t) ** 2))
    return train_loss, test_curve


def plot(curves, eval_every, steps, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, runs in curves.items():
        runs = np.array(runs)
        x = np.minimum(np.arange(1, runs.shape[1] + 1) * eval_every, steps)
        line, = ax.semilogy(x, runs.mean(axis=0), label=f"{name} (mean of {len(runs)} seeds)")
        ax.fill_between(x, runs.min(axis=0), runs.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("AdamW step")
    ax.set_ylabel("held-out mean squared error")
    ax.set_title("same parameter count, same data, same optimizer")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "glu.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=8, help="C, input and output width (default: %(default)s)")
    p.add_argument("--ffn", type=int, default=16, help="F of SwiGLU, even; the plain net gets 3F/2 (default: %(default)s)")
    p.add_argument("--samples", type=int, default=512, help="training points, and as many held out (default: %(default)s)")
    p.add_argument("--steps", type=int, default=500, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=1e-2, help="default: %(default)s")
    p.add_argument("--seeds", type=int, default=5, help="default: %(default)s")
    p.add_argument("--plot", action="store_true", help="save glu.png (needs matplotlib)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "demos", "output"), help="default: %(default)s")
    args = p.parse_args(argv)
    if args.ffn % 2:
        raise SystemExit(f"--ffn must be even so that 3F/2 is a whole number, got {args.ffn}")
    C, F, F_plain = args.hidden, args.ffn, 3 * args.ffn // 2
    eval_every = max(1, args.steps // 50)

    counts = {"SwiGLU": sum(a.size for a in swiglu_params(np.random.default_rng(0), C, F).values()),
              "plain": sum(a.size for a in plain_params(np.random.default_rng(0), C, F_plain).values())}
    print(f"SwiGLU C={C}, F={F}: {counts['SwiGLU']} parameters;  plain C={C}, F'={F_plain}: "
          f"{counts['plain']} parameters")
    print(f"task: t = sin(A x), {args.samples} train / {args.samples} held-out points; "
          f"{args.steps} full-batch AdamW steps, lr {args.lr:g}, MSE\n")
    print(f"{'seed':>4} {'SwiGLU train':>13} {'SwiGLU test':>12} {'plain train':>12} {'plain test':>11}  lower test loss")
    finals = {"SwiGLU": [], "plain": []}
    curves = {"SwiGLU": [], "plain": []}
    for seed in range(args.seeds):
        data = make_task(np.random.default_rng(seed), C, args.samples)
        row = {}
        for name, apply, init, width in (("SwiGLU", swiglu_apply, swiglu_params, F),
                                         ("plain", plain_apply, plain_params, F_plain)):
            params = init(np.random.default_rng(1000 + seed), C, width)
            row[name] = train(apply, params, data, args.steps, args.lr, eval_every)
            finals[name].append(row[name][1][-1])
            curves[name].append(row[name][1])
        winner = min(row, key=lambda n: row[n][1][-1])
        print(f"{seed:>4} {row['SwiGLU'][0]:>13.5f} {row['SwiGLU'][1][-1]:>12.5f} "
              f"{row['plain'][0]:>12.5f} {row['plain'][1][-1]:>11.5f}  {winner}")
    means = {n: float(np.mean(v)) for n, v in finals.items()}
    stds = {n: float(np.std(v)) for n, v in finals.items()}
    wins = sum(s < q for s, q in zip(finals["SwiGLU"], finals["plain"]))
    print(f"\nheld-out MSE, mean ± std over {args.seeds} seeds: SwiGLU {means['SwiGLU']:.5f} ± {stds['SwiGLU']:.5f}, "
          f"plain {means['plain']:.5f} ± {stds['plain']:.5f}")
    best = {n: float(np.mean([min(c) for c in runs])) for n, runs in curves.items()}
    print(f"best held-out MSE at any evaluated step (as early stopping would pick), mean over seeds: "
          f"SwiGLU {best['SwiGLU']:.5f}, plain {best['plain']:.5f}")
    better = "SwiGLU" if means["SwiGLU"] < means["plain"] else "plain"
    print(f"on this task and budget {better} is better on average; SwiGLU wins {wins} of {args.seeds} seeds")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("\n--plot needs matplotlib (pip install matplotlib): no figure written")
    elif args.plot:
        os.makedirs(args.out, exist_ok=True)
        print(f"\nplot: {plot(curves, eval_every, args.steps, args.out)}")
    return {"parameters": counts, "test_losses": finals, "best_test_losses": best, "swiglu_wins": wins}


if __name__ == "__main__":
    main()
