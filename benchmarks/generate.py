"""Generation speed: the KV cache against recomputing the whole context, and per-token time as
the sequence grows, with and without a sliding window.

    python benchmarks/generate.py                   # 512 new tokens, threads = os.cpu_count()
    python benchmarks/generate.py --threads 1
    python benchmarks/generate.py --quick           # smoke run: 128 new tokens

Model: the config of benchmarks/train_step.py (vocab 8192, hidden 256, 4 layers, 4 heads,
4 kv heads, intermediate 1024, window 128) with max_seq_length 640, float32, batch 1, a prompt
of 16 random tokens, greedy decoding (temperature 0). Non-norm weights are N(0, 0.2), ten times
the training init, so that the greedy choice is never a near-tie that rounding could flip.

Everything runs through mini_llm.generate.generate, the real loop: use_cache=True feeds one new
token a step through the KV cache, use_cache=False re-runs model.forward on the whole context.
The script wraps generate's sample_next with a clock: the time between two calls is the time of
one token. The first step (the prompt) is left out of tokens/s and of the per-token medians.

First, both modes must give the same tokens on a short run (else nothing is timed). Then:
  table 1  tokens/s of each mode at --new_tokens tokens, window 128
  table 2  median per-token time at tokens N/8..N/4 and 7N/8..N (64-128 and 448-512 for N=512),
           and their ratio, with window --flat_window (64) and with no window.
"""
import argparse
import os
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new_tokens", type=int, default=512, help="tokens generated per run (default 512)")
    parser.add_argument("--prompt_tokens", type=int, default=16, help="prompt length (default 16)")
    parser.add_argument("--flat_window", type=int, default=64, help="window of table 2 (default 64)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="NumPy/Numba threads (default os.cpu_count())")
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 new tokens")
    return parser.parse_args()


# The BLAS thread pool is sized when NumPy loads: the thread count goes into the environment first.
ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    from mini_llm import threads
    threads.pin_environment(ARGS.threads)           # mini_llm/threads.py: before NumPy loads

import numba  # noqa: E402
import numpy as np  # noqa: E402

import mini_llm.generate as generation  # noqa: E402
from mini_llm.model.transformer import MiniTransformer, TransformerConfig  # noqa: E402

CONFIG = dict(vocab_size=8192, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
              intermediate_size=1024, max_seq_length=640, sliding_window=128)


def make_model(window):
    model = MiniTransformer(TransformerConfig(**{**CONFIG, "sliding_window": window}), seed=0)
    for name, p in model.params.items():
        if not name.endswith("norm.weight"):
            p *= 10.0                                   # N(0, 0.02) -> N(0, 0.2): peaked logits
    return model


def timed_generate(model, prompt, new_tokens, use_cache):
    """generate(...) greedily; returns the ids and the seconds each new token took."""
    stamps = []
    sample_next = generation.sample_next

    def clocked(*args, **kwargs):                       # called once per token, after its forward
        stamps.append(time.perf_counter())
        return sample_next(*args, **kwargs)

    generation.sample_next = clocked
    try:
        start = time.perf_counter()
        ids = generation.generate(model, prompt, new_tokens, temperature=0, use_cache=use_cache)
    finally:
        generation.sample_next = sample_next
    return ids, np.diff([start] + stamps)               # (new_tokens,) seconds; [0] is the prompt


def span_ms(per_token, lo, hi):
    """Median ms of the tokens lo..hi-1 (1-based count of generated tokens)."""
    return 1e3 * float(np.median(per_token[lo:hi]))


def main():
    args = ARGS
    N = 128 if args.quick else args.new_tokens
    numba.set_num_threads(args.threads)
    if args.prompt_tokens + N > CONFIG["max_seq_length"]:
        sys.exit(f"prompt + new tokens = {args.prompt_tokens + N} > max_seq_length {CONFIG['max_seq_length']}")
    prompt = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], size=(1, args.prompt_tokens))
    print(f"generation, float32, batch 1, prompt {args.prompt_tokens} tokens, greedy, "
          f"threads {args.threads} (numba {numba.get_num_threads()}); load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")

    models = {w: make_model(w) for w in (CONFIG["sliding_window"], args.flat_window, None)}
    for window, model in models.items():               # the check, which also compiles and warms up
        short = [timed_generate(model, prompt, 24, use_cache)[0] for use_cache in (True, False)]
        if not np.array_equal(*short):
            sys.exit(f"window {window}: KV cache and recompute give different tokens: not timing")
    print(f"check: 24 greedy tokens identical with and without the KV cache (windows "
          f"{', '.join(str(w) for w in models)})")

    runs = {}
    for window, model in models.items():
        for use_cache in (True, False):
            runs[window, use_cache] = timed_generate(model, prompt, N, use_cache)

    W = CONFIG["sliding_window"]
    same = np.array_equal(runs[W, True][0], runs[W, False][0])
    print(f"\n{N} new tokens, window {W}, max_seq_length {CONFIG['max_seq_length']} "
          f"(tokens identical in both modes: {'yes' if same else 'NO'})")
    print(f"{'mode':<28} | {'total s':>8} | {'tokens/s':>9} | {'speedup':>8}")
    rate = {}
    for use_cache in (False, True):
        per_token = runs[W, use_cache][1]
        rate[use_cache] = (N - 1) / per_token[1:].sum()
        name = "KV cache" if use_cache else "recompute (use_cache=False)"
        print(f"{name:<28} | {per_token.sum():8.2f} | {rate[use_cache]:9.1f} | {rate[use_cache] / rate[False]:7.1f}x")

    early, late = (N // 8, N // 4), (N - N // 8, N)
    print(f"\nper-token ms (median) at generated tokens {early[0]}-{early[1]} and {late[0]}-{late[1]}")
    print(f"{'window':<8} | {'mode':<10} | {'early ms':>9} | {'late ms':>9} | {'late/early':>10}")
    for window in (args.flat_window, None):
        for use_cache in (True, False):
            per_token = runs[window, use_cache][1]
            a, b = span_ms(per_token, *early), span_ms(per_token, *late)
            print(f"{str(window):<8} | {'KV cache' if use_cache else 'recompute':<10} | {a:9.2f} | {b:9.2f} | {b / a:9.2f}x")


if __name__ == "__main__":
    main()
