"""Which keys a query may see: the causal mask, the sliding-window band, how far information
travels through a stack of windowed layers, and how the rolling KV cache reuses its W slots.

    python demos/attention_patterns.py [--seq_len 10] [--window 4] [--layers 4] [--steps 8] [--plot]

1. The masks, from `attention.window_mask`, as character grids (row = query t, column = key j).
2. Receptive field: one layer lets position t read t-W+1..t. A second layer reads those
   positions' outputs, which each read W-1 further back, so after l layers the earliest
   position that can influence t is t - l(W-1). Computed here by propagating reachability
   through l copies of the band (a boolean matrix product per layer), then compared with the formula.
3. The rolling KV cache (`mini_llm.model.kv_cache.KVCache`): W slots; position p is written to slot
   p % W, overwriting position p - W, exactly the one that just left the window. The cached
   logits are compared with a full forward over the whole sequence.
"""
import argparse
import importlib.util
import os

import numpy as np

from mini_llm.model.kv_cache import KVCache
from mini_llm.model.attention import window_mask
from mini_llm.model.transformer import MiniTransformer, TransformerConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def grid(mask, seen="#", hidden="."):
    """bool (T_q, T_k) -> text lines, one per query, key index along the line."""
    T_k = mask.shape[1]
    lines = ["      key " + "".join(str(j % 10) for j in range(T_k))]
    for t, row in enumerate(mask):
        lines.append(f"query {t:>3} " + "".join(seen if v else hidden for v in row))
    return lines


def reach_per_layer(T, window, num_layers):
    """[reach after 1 layer, after 2, ...], each bool (T, T): reach[t, j] = information at
    position j can flow into the output of position t. One layer is the band itself; each
    further layer composes with it (t reads i through the band, i had already reached j)."""
    band = window_mask(T, T, window).astype(np.int64)
    reach, out = band, []
    for _ in range(num_layers):
        out.append(reach > 0)
        reach = (band @ reach > 0).astype(np.int64)
    return out


def receptive_field_table(T, window, num_layers):
    """Print, for the last position, the earliest position each depth reaches vs t - l(W-1).
    Returns [(layer, earliest measured, earliest by formula)]."""
    t = T - 1
    rows = []
    print(f"\nreceptive field of the last position t={t} (W={window}): "
          "earliest visible position after l layers")
    print(f"{'layers':>6} {'measured':>9} {'t - l(W-1)':>11}  reach of position t")
    for layer, reach in enumerate(reach_per_layer(T, window, num_layers), start=1):
        measured = int(np.argmax(reach[t]))                      # first True in the row
        formula = max(0, t - layer * (window - 1))
        rows.append((layer, measured, formula))
        picture = "".join("#" if v else "." for v in reach[t])
        print(f"{layer:>6} {measured:>9} {formula:>11}  {picture}"
              + ("" if measured == formula else "   MISMATCH"))
    ok = all(m == f for _, m, f in rows)
    print(f"formula t - l(W-1) {'matches' if ok else 'does NOT match'} every depth")
    big_window, big_layers = 4096, 32                              # Mistral 7B's settings
    print(f"(Mistral 7B: W={big_window:,}, {big_layers} layers -> a token can be influenced by the "
          f"last {big_layers * (big_window - 1) + 1:,} positions, each layer attending to {big_window:,})")
    return rows


def rolling_cache(window, steps, seed=0):
    """Feed a prompt, then one token per step, through a tiny windowed model with a KVCache.
    Prints slot_pos after each call and compares the last logits with a full forward.
    Returns (list of slot_pos lists, max |cached logits - full logits|)."""
    config = TransformerConfig(vocab_size=32, hidden_size=16, num_layers=2, num_heads=2,
                               num_kv_heads=1, intermediate_size=32, max_seq_length=64,
                               sliding_window=window)
    model = MiniTransformer(config, seed=seed, dtype=np.float64)
    model.use_kernel = False                       # the readable dense path for the comparison
    rng = np.random.default_rng(seed)
    prompt_len = max(1, window - 1)
    ids = rng.integers(0, config.vocab_size, size=(1, prompt_len + steps))
    cache = KVCache(model, batch_size=1)
    print(f"\nrolling KV cache: W={window} slots, prompt of {prompt_len} tokens, then 1 token per step")
    print(f"{'call':>10} {'positions fed':>14}  slot_pos (position held by slot 0..W-1, -1 = empty)")
    history, worst = [], 0.0
    chunks = [(0, prompt_len)] + [(p, p + 1) for p in range(prompt_len, prompt_len + steps)]
    for n, (lo, hi) in enumerate(chunks):
        logits = model.forward(ids[:, lo:hi], keep_cache=False, kv_cache=cache)  # (1, hi-lo, V)
        full = model.forward(ids[:, :hi], keep_cache=False)[:, lo:hi]            # (1, hi-lo, V)
        worst = max(worst, float(np.abs(logits - full).max()))
        slots = [int(s) for s in cache.slot_pos]
        history.append(slots)
        label = "prompt" if n == 0 else f"step {n}"
        fed = f"{lo}..{hi - 1}" if hi - lo > 1 else f"{lo}"
        note = f"   (slot {lo % window} overwrote position {lo - window})" if n and lo >= window else ""
        print(f"{label:>10} {fed:>14}  {slots}{note}")
    print(f"max |cached logits - full forward logits| over all calls: {worst:.1e}")
    return history, worst


def plot(panels, out_dir):
    """panels: [(title, bool (T, T))], drawn side by side as cells: dark = may attend (or, for
    the reach, may influence), light = masked. Ticks on whole positions, a key below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator
    colours = ["#eef3fa", "#1f4e8c"]                     # False, True
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.6))
    for ax, (title, m) in zip(axes, panels):
        ax.imshow(m, cmap=ListedColormap(colours), vmin=0, vmax=1)
        ax.set_title(title)
        ax.set_xlabel("key position j")
        ax.set_ylabel("query position t")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
    key = [Patch(facecolor=colours[1], label="key j reaches query t"),
           Patch(facecolor=colours[0], edgecolor="0.7", label="masked: no path from j to t")]
    fig.legend(handles=key, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = os.path.join(out_dir, "attention_patterns.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq_len", type=int, default=10, help="T of the printed grids (default: %(default)s)")
    p.add_argument("--window", type=int, default=4, help="W (default: %(default)s)")
    p.add_argument("--layers", type=int, default=4, help="depth for the receptive field (default: %(default)s)")
    p.add_argument("--steps", type=int, default=8, help="generation steps through the cache (default: %(default)s)")
    p.add_argument("--plot", action="store_true", help="save attention_patterns.png (needs matplotlib)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "demos", "output"), help="default: %(default)s")
    args = p.parse_args(argv)
    T, W = args.seq_len, args.window

    causal, band = window_mask(T, T, None), window_mask(T, T, W)
    print(f"causal mask, T={T}: query t sees keys 0..t ({int(causal.sum())} of {T * T} pairs)")
    print("\n".join(grid(causal)))
    print(f"\nsliding window W={W}: query t sees keys t-{W - 1}..t "
          f"({int(band.sum())} of {T * T} pairs; at most W per row)")
    print("\n".join(grid(band)))

    T_rf = args.layers * (W - 1) + W               # long enough that no depth hits position 0
    rows = receptive_field_table(T_rf, W, args.layers)
    history, worst = rolling_cache(W, args.steps)

    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("\n--plot needs matplotlib (pip install matplotlib): no figure written")
    elif args.plot:
        os.makedirs(args.out, exist_ok=True)
        reach = reach_per_layer(T_rf, W, args.layers)[-1]
        path = plot([("causal", window_mask(T_rf, T_rf, None)), (f"window W={W}", window_mask(T_rf, T_rf, W)),
                     (f"reach after {args.layers} layers", reach)], args.out)
        print(f"\nplot: {path}")
    return {"receptive_field": rows, "slot_history": history, "cache_error": worst}


if __name__ == "__main__":
    main()
