"""Sampling from a language model: greedy, temperature, top-k and top-p side by side from one
prompt, and the speed the KV cache buys.

    python demos/generate.py                              # trains a tiny model first (~10 s)
    python demos/generate.py --checkpoint output/checkpoint --prompt "The model"

Without --checkpoint the demo trains what it samples from: a BPETokenizer (small vocabulary) on
90% of data/sample_training.txt, then a 2-layer MiniTransformer for a few hundred AdamW steps
with the project's loop (training/loop.py's `train`, as train.py runs it without teachers),
printing the validation loss five times. It is tiny and undertrained: expect word-like
fragments, not prose. With --checkpoint it loads a folder train.py wrote (config.json,
model.safetensors, tokenizer.json) through training/run_checkpoint.py's `load_checkpoint`.

What the knobs do to the next-token distribution p = softmax(logits / temperature):
    temperature 0   always the most likely token (greedy): deterministic, often repetitive
    temperature T   < 1 sharpens p, > 1 flattens it
    top-k k         keep the k most likely tokens, renormalise
    top-p p         keep the smallest set of most likely tokens whose mass reaches p
                    (nucleus sampling): the cut adapts to how peaked p is
The KV cache (mini_llm.model.kv_cache.KVCache) keeps each layer's keys and values, so each new token
costs one position of work instead of re-running the whole context.
"""
import argparse
import importlib.util
import os
import time

import numpy as np

from mini_llm.generate import generate
from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from tokenizer.bpe_tokenizer import BPETokenizer
from training.data import encode_documents, load_texts, make_sequences, split_train_val
from training.loop import TrainConfig, make_optimizer, train
from training.run_checkpoint import load_checkpoint

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO_ROOT, "data", "sample_training.txt")


def train_tiny(args):
    """Tokenizer + 2-layer model trained on the sample text. Returns (model, tokenizer)."""
    t0 = time.perf_counter()
    train_texts, val_texts = split_train_val(load_texts(DATA), 0.1, seed=args.seed)
    tokenizer = BPETokenizer(vocab_size=args.vocab_size).train(train_texts)
    train_seq, val_seq = (make_sequences(encode_documents(tokenizer, texts), args.seq_len)   # (S, T+1)
                          for texts in (train_texts, val_texts))
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=2, num_heads=4,
                               num_kv_heads=2, intermediate_size=192, max_seq_length=256)
    model = MiniTransformer(config, seed=args.seed)
    print(f"trained a BPE tokenizer ({tokenizer.vocab_size} tokens) and cut the text into "
          f"{len(train_seq)} training and {len(val_seq)} validation sequences of {args.seq_len} tokens "
          f"({time.perf_counter() - t0:.1f} s)")
    print(f"training a {model.num_parameters():,}-parameter model for {args.steps} steps "
          f"(batch {args.batch_size}, peak lr {args.lr:g})")
    # the loop of train.py: warm-up then cosine, clip at norm 1, AdamW with weight decay 0.1
    run = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=max(1, args.steps // 10), seed=args.seed, eval_every=max(1, args.steps // 5))
    t0 = time.perf_counter()
    train(model, make_optimizer(model, lr=args.lr), train_seq, val_seq, run, desc="tiny model")
    print(f"trained in {time.perf_counter() - t0:.1f} s")
    return model, tokenizer


SETTINGS = [dict(temperature=0), dict(temperature=0.7), dict(temperature=1.0), dict(temperature=1.5),
            dict(temperature=1.0, top_k=10), dict(temperature=1.0, top_p=0.9)]


def describe(setting):
    """{"temperature": 1.0, "top_k": 10} -> "top-k 10, temperature 1"."""
    if setting["temperature"] == 0:
        return "greedy (temperature 0)"
    filters = [f"{name.replace('_', '-')} {setting[name]:g}" for name in ("top_k", "top_p") if name in setting]
    return ", ".join(filters + [f"temperature {setting['temperature']:g}"])


def samples(model, tokenizer, prompt_ids, new_tokens, seed):
    """One continuation per setting, same prompt and seed. Returns [(setting, text)]."""
    rows = []
    for setting in SETTINGS:
        ids = generate(model, prompt_ids, new_tokens, seed=seed, **setting)
        rows.append((describe(setting), tokenizer.decode(ids[0, prompt_ids.shape[1]:].tolist())))
    return rows


def cache_speed(model, prompt_ids, new_tokens, repeats):
    """Median seconds for greedy generation with and without the KV cache, and whether both
    gave the same tokens. Returns {use_cache: seconds}, same."""
    seconds, outputs = {}, {}
    for use_cache in (True, False):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            outputs[use_cache] = generate(model, prompt_ids, new_tokens, temperature=0, use_cache=use_cache)
            times.append(time.perf_counter() - t0)
        seconds[use_cache] = float(np.median(times))
    return seconds, bool(np.array_equal(outputs[True], outputs[False]))


def plot(model, prompt_ids, out_dir):
    """Next-token probabilities after the prompt, by rank, at three temperatures, with the
    cuts of the top-k and top-p settings marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    logits = np.asarray(model.forward(prompt_ids, keep_cache=False)[0, -1], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    top_k = next(s["top_k"] for s in SETTINGS if "top_k" in s)
    top_p = next(s["top_p"] for s in SETTINGS if "top_p" in s)
    curves = {}
    for temperature in sorted({s["temperature"] for s in SETTINGS} - {0}):
        z = logits / temperature
        p = np.sort(np.exp(z - z.max()) / np.exp(z - z.max()).sum())[::-1]    # by rank
        curves[temperature] = p, int(np.searchsorted(np.cumsum(p), top_p)) + 1   # tokens top-p keeps
    # the rank axis reaches past every cut, so each dotted top-p line is on the figure
    ranks = np.arange(1, min(logits.size, int(1.15 * max([top_k] + [c for _, c in curves.values()]))) + 1)
    for temperature, (p, cut) in curves.items():
        line, = ax.semilogy(ranks, p[:ranks.size], label=f"temperature {temperature:g} (top-p {top_p:g} keeps {cut})")
        ax.axvline(cut, color=line.get_color(), ls=":", lw=1.2)
    ax.axvline(top_k, color="0.5", ls="--", lw=1, label=f"top-k {top_k}")
    ax.set_xlabel(f"rank of the token (of {logits.size}); dotted: where each top-p {top_p:g} cut falls")
    ax.set_ylabel("probability")
    ax.set_title("next-token distribution after the prompt")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "generate.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a folder written by train.py (with tokenizer.json); default: train a tiny model")
    p.add_argument("--prompt", default="A language model", help="default: %(default)r")
    p.add_argument("--new_tokens", type=int, default=40, help="tokens per sample (default: %(default)s)")
    p.add_argument("--speed_tokens", type=int, default=200, help="tokens for the cache timing (default: %(default)s)")
    p.add_argument("--vocab_size", type=int, default=384, help="tiny model's tokenizer (default: %(default)s)")
    p.add_argument("--seq_len", type=int, default=64, help="tiny model's training length (default: %(default)s)")
    p.add_argument("--steps", type=int, default=200, help="tiny model's training steps (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=8, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=3e-3, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", action="store_true", help="save generate.png (needs matplotlib)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "demos", "output"), help="default: %(default)s")
    args = p.parse_args(argv)

    if args.checkpoint:
        try:
            model, tokenizer = load_checkpoint(args.checkpoint)
        except ValueError as e:                       # CheckpointError is one too: one line
            raise SystemExit(f"error: {e}") from None
    else:
        model, tokenizer = train_tiny(args)
    prompt_ids = np.array([tokenizer.encode(args.prompt)], dtype=np.int64)
    if prompt_ids.shape[1] == 0:
        raise SystemExit("--prompt must not be empty")
    room = model.config.max_seq_length - prompt_ids.shape[1]
    if model.config.sliding_window is None and room < max(args.new_tokens, args.speed_tokens):
        raise SystemExit(f"prompt ({prompt_ids.shape[1]} tokens) + tokens to generate exceed "
                         f"max_seq_length={model.config.max_seq_length}")

    print(f"\n--- samples: prompt {args.prompt!r} ({prompt_ids.shape[1]} tokens), "
          f"{args.new_tokens} new tokens each, seed {args.seed}")
    rows = samples(model, tokenizer, prompt_ids, args.new_tokens, args.seed)
    width = max(len(name) for name, _ in rows)
    for name, text in rows:
        print(f"{name:<{width}} | " + (args.prompt + text).replace("\n", " / "))

    repeats = 3
    seconds, same = cache_speed(model, prompt_ids, args.speed_tokens, repeats)
    print(f"\n--- speed: {args.speed_tokens} greedy tokens after the prompt (median of {repeats} runs)")
    print(f"{'':<20} {'seconds':>8} {'tokens/s':>9} {'ratio':>6}")
    for use_cache, label in ((False, "without KV cache"), (True, "with KV cache")):
        print(f"{label:<20} {seconds[use_cache]:>8.3f} {args.speed_tokens / seconds[use_cache]:>9.0f} "
              f"{seconds[False] / seconds[use_cache]:>6.2f}")
    print(f"same tokens with and without the cache: {same}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("\n--plot needs matplotlib (pip install matplotlib): no figure written")
    elif args.plot:
        os.makedirs(args.out, exist_ok=True)
        print(f"\nplot: {plot(model, prompt_ids, args.out)}")
    return {"samples": rows, "seconds": seconds, "same_tokens": same}


if __name__ == "__main__":
    main()
