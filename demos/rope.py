"""Rotary position embeddings (RoPE): each pair of a head's dimensions is a 2-D point turned by
an angle proportional to the token's position, so the dot product of a query at position m
with a key at position n depends only on the offset m - n.

    python demos/rope.py [--head_dim 8] [--theta 10000] [--plot]

Layout: rotate-half, as Hugging Face LLaMA/Mistral store q_proj/k_proj: pair i is the entries
(i, i + D/2), turned at frequency theta^(-2i/D) radians per position. The tables come from
`attention.rope_cos_sin`, the rotation from `attention.apply_rope`:
    y = x cos + rotate_half(x) sin  ->  (y_i, y_{i+D/2}) = R(m freq_i) (x_i, x_{i+D/2})
Why the dot product is relative: R(a)ᵀ R(b) = R(b - a), so (R_m q)·(R_n k) = q·R_{n-m} k.
"""
import argparse
import importlib.util
import math
import os

import numpy as np

from mini_llm.model.attention import apply_rope, rope_cos_sin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rope_at(x, position, theta):
    """x (D,) as a query or key at `position`, rotated: apply_rope on a (1, 1, 1, D) view."""
    cos, sin = rope_cos_sin(1, x.shape[0], theta, np.float64, start=position)      # (1, D)
    return apply_rope(x[None, None, None, :], cos, sin)[0, 0, 0]


def pair_angles(head_dim, theta, positions):
    """Print the angle of every pair at each position, read back from the cos/sin tables, and
    check it equals position * freq (mod 2π). Returns the largest disagreement in radians."""
    half = head_dim // 2
    freq = theta ** (-np.arange(half) * 2.0 / head_dim)                           # (D/2,)
    cos, sin = rope_cos_sin(max(positions) + 1, head_dim, theta, np.float64)       # (T, D)
    print(f"RoPE angles, D={head_dim}, theta={theta:g}: pair i = dims (i, i+{half}), "
          f"angle = position * theta^(-2i/D)")
    header = "".join(f"{'pos ' + str(m):>10}" for m in positions)
    print(f"{'pair':>4} {'freq (rad/pos)':>15} {'wavelength':>11}{header}   (degrees, mod 360)")
    worst = 0.0
    for i in range(half):
        angles = np.arctan2(sin[positions, i], cos[positions, i])                  # from the tables
        expected = np.angle(np.exp(1j * np.asarray(positions) * freq[i]))          # m freq mod 2π
        worst = max(worst, float(np.abs(np.angle(np.exp(1j * (angles - expected)))).max()))
        cells = "".join(f"{np.degrees(a) % 360:>10.2f}" for a in angles)
        print(f"{i:>4} {freq[i]:>15.6f} {2 * math.pi / freq[i]:>11.1f}{cells}")
    print(f"angles read from cos/sin tables vs position*freq: max difference {worst:.1e} rad")
    return worst


def rotation_of_pairs(x, position, theta):
    """Print each pair before and after RoPE at `position`: same length, turned by position*freq.
    Returns (max change of length, max error of the turn angle)."""
    half = x.shape[0] // 2
    y = rope_at(x, position, theta)
    freq = theta ** (-np.arange(half) * 2.0 / x.shape[0])
    print(f"\none vector x at position {position}: every pair keeps its length and turns by {position}*freq_i")
    print(f"{'pair':>4} {'(x_i, x_i+D/2)':>20} {'->':>3} {'(y_i, y_i+D/2)':>20} {'|x|':>7} {'|y|':>7} "
          f"{'turned (deg)':>13} {'m*freq (deg)':>13}")
    worst_len = worst_angle = 0.0
    for i in range(half):
        a, b = np.array([x[i], x[i + half]]), np.array([y[i], y[i + half]])
        turned = math.atan2(b[1], b[0]) - math.atan2(a[1], a[0])
        expected = position * freq[i]
        err = abs(math.remainder(turned - expected, 2 * math.pi))
        worst_len = max(worst_len, abs(np.linalg.norm(a) - np.linalg.norm(b)))
        worst_angle = max(worst_angle, err)
        print(f"{i:>4} ({a[0]:>8.4f},{a[1]:>8.4f}) {'->':>3} ({b[0]:>8.4f},{b[1]:>8.4f}) "
              f"{np.linalg.norm(a):>7.4f} {np.linalg.norm(b):>7.4f} "
              f"{math.degrees(turned) % 360:>13.2f} {math.degrees(expected) % 360:>13.2f}")
    print(f"max | |y| - |x| | = {worst_len:.1e};  max angle error = {worst_angle:.1e} rad")
    return worst_len, worst_angle


def relative_scores(q, k, theta, offset, bases, other_offsets):
    """q_m · k_n for several (m, n) with m - n = offset (equal), then for other offsets (differ).
    Returns (equal-offset scores, scores for the other offsets)."""
    print(f"\nq_m · k_n for the same q and k at positions with m - n = {offset}:")
    same = []
    for n in bases:
        m = n + offset
        score = float(rope_at(q, m, theta) @ rope_at(k, n, theta))
        same.append(score)
        print(f"  m={m:>6} n={n:>6}   score {score:+.12f}")
    spread = max(same) - min(same)
    print(f"  spread (max - min) = {spread:.1e}  -> the score depends only on m - n")
    print("and for other offsets m - n (n = 0), the score changes:")
    others = []
    for d in other_offsets:
        score = float(rope_at(q, d, theta) @ rope_at(k, 0, theta))
        others.append(score)
        print(f"  m - n = {d:>3}   score {score:+.12f}")
    gaps = np.abs(np.subtract.outer(others + [same[0]], others + [same[0]]))
    smallest = gaps[~np.eye(len(gaps), dtype=bool)].min()
    print(f"  smallest gap between scores of different offsets = {smallest:.1e} "
          f"(vs the {spread:.1e} spread at equal offset)")
    return same, others


def shown_pairs(half, most=6):
    """The pairs the left panel draws: all of them when there are few, else `most` spread evenly
    from the fastest (0) to the slowest (half-1)."""
    return list(range(half)) if half <= most else sorted({round(x) for x in np.linspace(0, half - 1, most)})


def plot(q, k, head_dim, theta, out_dir):
    """Left: a unit vector placed in pair i, rotated to positions 0..16, drawn in the plane of
    that pair's two dimensions (x_i, x_{i+D/2}); pair i on a circle of its own radius so the
    slow pairs, which barely turn, stay visible. Right: q_m · k_n against m - n for three n."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.2))
    half = head_dim // 2
    pairs = shown_pairs(half)
    circle = np.linspace(0, 2 * np.pi, 200)
    unit = np.zeros(head_dim)
    for rank, i in enumerate(pairs):
        radius = 1.0 - 0.7 * rank / max(1, len(pairs) - 1)              # 1 (fastest) .. 0.3 (slowest)
        unit[:] = 0
        unit[i] = radius
        pts = np.array([rope_at(unit, m, theta)[[i, i + half]] for m in range(17)])
        ax1.plot(radius * np.cos(circle), radius * np.sin(circle), color="0.88", lw=1)
        freq = theta ** (-2.0 * i / head_dim)
        line, = ax1.plot(pts[:, 0], pts[:, 1], "o", ms=4,
                         label=f"pair {i}: dims ({i}, {i + half}), {np.degrees(freq):.3g}°/position")
        labelled = []
        for m in (0, 1, 2, 16):                  # label a position only where it stands apart
            if all(np.linalg.norm(pts[m] - pts[j]) > 0.08 for j in labelled):
                labelled.append(m)
                ax1.annotate(str(m), pts[m], xytext=(3, 3), textcoords="offset points", fontsize=7,
                             color=line.get_color())
    ax1.set_aspect("equal")
    ax1.set_xlim(-1.15, 1.15)
    ax1.set_ylim(-1.15, 1.15)
    ax1.set_xlabel("first dimension of the pair, x_i")
    ax1.set_ylabel("second dimension, x_(i+D/2)")
    shown = "every pair" if len(pairs) == half else f"pairs {pairs} of {half}"
    ax1.set_title(f"D={head_dim}: {shown} at positions 0..16 (numbers = position);\n"
                  "slow pairs barely turn in 16 positions", fontsize=10)
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    offsets = np.arange(-24, 25)
    curves = {n: np.array([rope_at(q, n + d, theta) @ rope_at(k, n, theta) for d in offsets])
              for n in (0, 100, 1000)}
    # the three curves coincide: draw them so each stays visible on top of the others
    ax2.plot(offsets, curves[0], "-", color="tab:blue", lw=7, alpha=0.3, label="n = 0")
    ax2.plot(offsets, curves[100], "o", color="tab:orange", ms=6, mfc="none", label="n = 100")
    ax2.plot(offsets, curves[1000], "x-", color="black", ms=4, lw=0.8, label="n = 1000")
    spread = max(float(np.abs(curves[n] - curves[0]).max()) for n in curves)
    ax2.set_xlabel("offset m - n")
    ax2.set_ylabel("score q_m · k_n")
    ax2.set_title(f"the curves for n = 0, 100, 1000 coincide (max difference {spread:.0e}):\n"
                  "the score depends only on m - n", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "rope.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head_dim", type=int, default=8, help="D, even (default: %(default)s)")
    p.add_argument("--theta", type=float, default=10000.0, help="RoPE base (default: %(default)s)")
    p.add_argument("--offset", type=int, default=3, help="m - n for the equal-offset scores (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", action="store_true", help="save rope.png (needs matplotlib)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "demos", "output"), help="default: %(default)s")
    args = p.parse_args(argv)
    if args.head_dim < 2 or args.head_dim % 2:
        raise SystemExit(f"--head_dim must be even and >= 2, got {args.head_dim}")
    rng = np.random.default_rng(args.seed)
    q, k = rng.normal(size=args.head_dim), rng.normal(size=args.head_dim)

    angle_error = pair_angles(args.head_dim, args.theta, [0, 1, 2, 5, 100])
    length_error, turn_error = rotation_of_pairs(q, 5, args.theta)
    same, others = relative_scores(q, k, args.theta, args.offset, [0, 7, 97, 997, 9997],
                                   [d for d in range(0, 8) if d != args.offset])
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("\n--plot needs matplotlib (pip install matplotlib): no figure written")
    elif args.plot:
        os.makedirs(args.out, exist_ok=True)
        print(f"\nplot: {plot(q, k, args.head_dim, args.theta, args.out)}")
    return {"angle_error": angle_error, "length_error": length_error, "turn_error": turn_error,
            "equal_offset_scores": same, "other_offset_scores": others}


if __name__ == "__main__":
    main()
