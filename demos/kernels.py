"""The readable NumPy reference next to its Numba kernel: same numbers, different speed.

    python demos/kernels.py [--shapes 256:32,1024:64,2048:128] [--merges 200] [--repeats 5]

1. Sliding-window attention. `attention.attention_reference_forward` builds dense (B, H, T, T)
   scores and masks all but W per row: O(T²) work and memory. `kernels.sliding_window_attention_forward`
   visits only the W keys of each query's window: O(T·W). One row per (T, W): the max abs
   difference of the outputs, then median times and the ratio, measured in the same run.
2. BPE training (tokenizer/byte_bpe.py). The reference `get_pair_counts` counts every
   adjacent pair in plain Python; `train_reference` recounts everything after each merge. The
   Numba path (`bpe_train_kernels.new_train_state` + `train_init`, then `train_fast`) counts
   once into hash tables and afterwards only updates the occurrences a merge touches. Same
   counts, same merges, and the table says where the speed comes from (and where there is none).
The first kernel call includes Numba's compile (or loading it from the on-disk cache); it is
timed apart and left out of the medians.
"""
import argparse
import importlib.util
import collections
import os
import time

import numpy as np
import regex

from mini_llm.model.attention import attention_reference_forward
from mini_llm.model.kernels import sliding_window_attention_forward
from tokenizer import bpe_train_kernels
from tokenizer.bpe_tokenizer import PATTERNS, split_isolated
from tokenizer.byte_bpe import get_pair_counts, train_fast, train_reference
from training.data import load_texts

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO_ROOT, "data", "sample_training.txt")


def median_seconds(fn, repeats):
    """Median wall time of fn() over `repeats` calls (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def attention_table(shapes, repeats, B=1, H=4, Hkv=2, D=32, seed=0):
    """Reference vs kernel forward for each (T, W), float32. Returns [(T, W, max diff, t_ref, t_kernel)]."""
    rng = np.random.default_rng(seed)
    T0, W0 = shapes[0]
    q, k, v = (rng.normal(size=(B, T0, h, D)).astype(np.float32) for h in (H, Hkv, Hkv))
    t0 = time.perf_counter()
    sliding_window_attention_forward(q, k, v, W0)
    print(f"1. attention forward, float32, B={B}, H={H}, Hkv={Hkv}, D={D}; first kernel call "
          f"(compile or cache load) {time.perf_counter() - t0:.2f} s")
    print(f"{'T':>6} {'W':>5} {'max |diff|':>11} {'reference ms':>13} {'kernel ms':>10} {'speed-up':>9}")
    rows = []
    for T, W in shapes:
        q, k, v = (rng.normal(size=(B, T, h, D)).astype(np.float32) for h in (H, Hkv, Hkv))
        out_ref, _ = attention_reference_forward(q, k, v, W)
        out_kernel, _ = sliding_window_attention_forward(q, k, v, W)
        diff = float(np.abs(out_ref - out_kernel).max())
        t_ref = median_seconds(lambda: attention_reference_forward(q, k, v, W), repeats)
        t_kernel = median_seconds(lambda: sliding_window_attention_forward(q, k, v, W), repeats)
        rows.append((T, W, diff, t_ref, t_kernel))
        print(f"{T:>6} {W:>5} {diff:>11.1e} {1e3 * t_ref:>13.2f} {1e3 * t_kernel:>10.2f} {t_ref / t_kernel:>8.1f}x")
    return rows


def corpus_words(path):
    """The unique pre-tokenized chunks of the file as byte lists, and how often each occurs:
    the (words, counts) both BPE trainers take."""
    pattern = regex.compile(PATTERNS["gpt4"])
    chunks = collections.Counter(c for text in load_texts(path) for c in split_isolated(pattern, text))
    return [list(w.encode("utf-8")) for w in chunks], list(chunks.values())


def numba_pair_counts(words, counts):
    """{(a, b): count} from the Numba trainer's initial state."""
    state = bpe_train_kernels.new_train_state(words, counts)
    bpe_train_kernels.train_init(state)
    n = int(state.sizes[0])
    return dict(zip(zip(state.pair_a[:n].tolist(), state.pair_b[:n].tolist()), state.pair_count[:n].tolist()))


def bpe_table(path, merges, repeats):
    """Reference vs Numba for one pair count and for `merges` merge steps. Returns
    {"counts_equal", "merges_equal", "count": (t_ref, t_numba), "train": (t_ref, t_numba)}."""
    words, counts = corpus_words(path)
    t0 = time.perf_counter()
    fast_counts = numba_pair_counts(words, counts)
    fast_merges = train_fast(words, counts, merges)
    first = time.perf_counter() - t0
    ref_counts = get_pair_counts(words, counts)
    ref_merges = train_reference(words, counts, merges)
    counts_equal, merges_equal = ref_counts == fast_counts, ref_merges == fast_merges
    t_count = (median_seconds(lambda: get_pair_counts(words, counts), repeats),
               median_seconds(lambda: numba_pair_counts(words, counts), repeats))
    t_train = (median_seconds(lambda: train_reference(words, counts, merges), max(1, repeats // 2)),
               median_seconds(lambda: train_fast(words, counts, merges), repeats))
    print(f"\n2. BPE on {os.path.relpath(path, REPO_ROOT)}: {len(words)} unique chunks, "
          f"{sum(map(len, words))} bytes in them, {len(ref_counts)} distinct pairs; first Numba "
          f"calls (compile or cache load) {first:.2f} s")
    print(f"{'task':<28} {'same result':>11} {'reference ms':>13} {'Numba ms':>9} {'speed-up':>9}")
    for name, same, (t_ref, t_fast) in (("count pairs once", counts_equal, t_count),
                                        (f"train {len(ref_merges)} merges", merges_equal, t_train)):
        print(f"{name:<28} {str(same):>11} {1e3 * t_ref:>13.2f} {1e3 * t_fast:>9.2f} {t_ref / t_fast:>8.1f}x")
    print("counting once, the Numba path also builds its hash table, postings lists and heap, so it\n"
          "need not win there; its speed is in the merges, where it updates only the words a merge touches")
    return {"counts_equal": counts_equal, "merges_equal": merges_equal, "count": t_count, "train": t_train}


def speedup_bars(ax, labels, pairs, title, fast_name):
    """One bar per task: reference time / fast time, on a linear axis from 0, so a bar twice as
    tall is twice the speed-up; the dashed line at 1 is "same speed". pairs: [(t_ref, t_fast)] s."""
    ratios = [t_ref / t_fast for t_ref, t_fast in pairs]
    x = np.arange(len(ratios))
    bars = ax.bar(x, ratios, 0.6, color="tab:orange")
    for bar, ratio, (t_ref, t_fast) in zip(bars, ratios, pairs):
        ax.annotate(f"{ratio:.1f}x\n{1e3 * t_ref:,.4g} → {1e3 * t_fast:,.4g} ms",
                    (bar.get_x() + bar.get_width() / 2, ratio), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.axhline(1, color="0.4", ls="--", lw=1, label="1x: same speed")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1.25 * max(ratios + [1.0]))
    ax.set_ylabel(f"speed-up of {fast_name} (reference time / its time)")
    ax.set_title(title, fontsize=10)


def plot(rows, bpe, out_dir):
    """Left: sliding-window attention, one bar per (T, W); right: BPE, counting pairs once and
    training the merges. Each bar is a ratio measured in this run, its label the two medians."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    speedup_bars(ax1, [f"T={T}\nW={W}" for T, W, *_ in rows], [(r[3], r[4]) for r in rows],
                 "1. attention forward: dense T×T reference vs Numba kernel (T×W)", "the kernel")
    speedup_bars(ax2, ["count pairs once", "train the merges"], [bpe["count"], bpe["train"]],
                 "2. BPE: Python reference vs Numba", "Numba")
    fig.tight_layout()
    path = os.path.join(out_dir, "kernels.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_shapes(text):
    try:
        shapes = [tuple(int(n) for n in item.split(":")) for item in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise SystemExit(f"--shapes must look like 256:32,1024:64 (T:W pairs), got {text!r}")
    return shapes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="256:32,1024:64,2048:128", help="T:W pairs (default: %(default)s)")
    p.add_argument("--corpus", default=DATA, help="text for the BPE part (default: data/sample_training.txt)")
    p.add_argument("--merges", type=int, default=200, help="BPE merges to train (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per median (default: %(default)s)")
    p.add_argument("--plot", action="store_true", help="save kernels.png (needs matplotlib)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "demos", "output"), help="default: %(default)s")
    args = p.parse_args(argv)

    rows = attention_table(parse_shapes(args.shapes), args.repeats)
    bpe = bpe_table(args.corpus, args.merges, args.repeats)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("\n--plot needs matplotlib (pip install matplotlib): no figure written")
    elif args.plot:
        os.makedirs(args.out, exist_ok=True)
        print(f"\nplot: {plot(rows, bpe, args.out)}")
    return {"attention": rows, "bpe": bpe}


if __name__ == "__main__":
    main()
