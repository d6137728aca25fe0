"""Watch byte-pair encoding learn, one merge at a time.

    python tokenizer/demo_bpe.py                    # built-in text, 40 merges
    python tokenizer/demo_bpe.py --text my.txt --merges 200 --plot   # + demos/output/bpe_compression.png

The loop below is the training algorithm itself (the same steps as
`train_reference` in byte_bpe.py), printed as it goes: count every
adjacent pair, merge the most frequent one into a new token, and watch a
sample sentence's segmentation and the compression ratio change. Then the real
BPETokenizer trains on the same text (it must find the same merges) and
encodes/decodes a sentence with non-English text and emoji, token boundaries
coloured when the terminal supports colour.
"""
import argparse
import collections
import os
import sys

import regex

from tokenizer.bpe_tokenizer import PATTERNS, BPETokenizer
from training.data import read_data_file
from tokenizer.byte_bpe import get_pair_counts, merge_pair, render_token

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BUILT_IN_TEXT = """\
A tokenizer turns text into numbers. The simplest one reads the text as bytes, so the
alphabet has only 256 symbols and nothing is ever unknown. The price is length: every
letter is a token, and the model has to read them all. Byte pair encoding shortens the
text step by step. It counts every pair of neighbouring tokens, finds the most frequent
pair, and gives that pair a new token of its own. Then it counts again. The pairs that
come first are the ones the text repeats most: the letters of "the", the space before a
word, the ends of words such as "ing" and "ed". After a few hundred merges, the common
words of the text are single tokens, and the rare ones are spelled from the pieces.
The same rules work for any language, because every language is bytes in the end:
Grüße aus Köln, una canción en español, 日本語の文章, and even emoji such as 🙂 and 🚀.
The merges are learned once, on the training text, and then replayed on new text in the
order they were learned. That is the whole algorithm: count, merge, repeat.
"""
SAMPLE = "The tokenizer merges the most frequent pairs of the text."
FINAL_SAMPLE = "Byte pair encoding: naïve café, 日本語, Ελληνικά, emoji 🤖🎉 — no unknown tokens."
COLOURS = [42, 43, 44, 45, 46, 47, 101, 102, 103, 104, 105, 106]  # ANSI backgrounds


def use_colour():
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ


def show_tokens(pieces, colour):
    """Token texts side by side: coloured blocks, or [bracketed] without colour."""
    if colour:
        return "".join(f"\x1b[30;{COLOURS[k % len(COLOURS)]}m{p}\x1b[0m"
                       for k, p in enumerate(pieces))
    return "".join(f"[{p}]" for p in pieces)


def learn_merges(text, num_merges, colour):
    """The BPE training loop, printed: returns the merges and the ratio after each."""
    chunks = regex.findall(PATTERNS["gpt4"], text)  # pre-tokenize: merges stay inside words
    word_counts = collections.Counter(chunks)
    words = [list(w.encode("utf-8")) for w in word_counts]
    counts = list(word_counts.values())
    sample = [list(c.encode("utf-8")) for c in regex.findall(PATTERNS["gpt4"], SAMPLE)]
    vocab = {i: bytes([i]) for i in range(256)}
    n_bytes = len(text.encode("utf-8"))
    print(f"training text: {n_bytes} bytes, {len(chunks)} chunks, {len(words)} distinct\n")
    merges, ratios = [], [1.0]
    for m in range(num_merges):
        pair_counts = get_pair_counts(words, counts)
        if not pair_counts:
            print(f"every chunk is now one token: stopping after {m} merges")
            break
        pair = max(pair_counts, key=lambda p: (pair_counts[p], -p[0], -p[1]))  # ties: smallest
        new_id = 256 + m
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        words = [merge_pair(w, pair, new_id) for w in words]
        sample = [merge_pair(c, pair, new_id) for c in sample]
        n_tokens = sum(len(w) * c for w, c in zip(words, counts))
        merges.append(pair)
        ratios.append(n_bytes / n_tokens)
        print(f"merge {m + 1}/{num_merges}: ({pair[0]}, {pair[1]}) "
              f"'{render_token(vocab[pair[0]])}' + '{render_token(vocab[pair[1]])}' -> "
              f"{new_id} '{render_token(vocab[new_id])}'  count {pair_counts[pair]}  "
              f"| {n_tokens} tokens, {ratios[-1]:.2f} bytes/token")
        pieces = [render_token(vocab[i]) for c in sample for i in c]
        print(f"    sample ({len(pieces)} tokens): {show_tokens(pieces, colour)}")
    return merges, ratios


def token_text(token):
    """Token bytes as text, or as <hex> bytes when they are not whole UTF-8 characters."""
    try:
        token.decode("utf-8")
        return render_token(token)
    except UnicodeDecodeError:
        return "".join(f"<{b:02x}>" for b in token)


def length_table(tokenizer, texts):
    print(f"\n{'text':<34} {'bytes':>7} {'tokens':>7} {'bytes/token':>12}")
    for name, text in texts:
        n_bytes, n_tokens = len(text.encode("utf-8")), len(tokenizer.encode(text))
        print(f"{name:<34} {n_bytes:>7} {n_tokens:>7} {n_bytes / max(n_tokens, 1):>12.2f}")


def plot(ratios, out_dir):
    """Vocabulary size vs compression, saved as OUT_DIR/bpe_compression.png; returns the path
    (None without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        print("--plot: matplotlib is not installed; no plot written")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(256, 256 + len(ratios)), ratios)
    ax.set_xlabel("vocabulary size (256 bytes + merges)")
    ax.set_ylabel("compression (bytes per token)")
    ax.set_title("BPE: compression grows with the vocabulary")
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "bpe_compression.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main(argv=None):
    """Run the demo on argv (default sys.argv[1:]); returns what it printed, as numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text", help="UTF-8 text file to train on (default: built-in text)")
    parser.add_argument("--merges", type=int, default=40, help="number of merges (default 40)")
    parser.add_argument("--plot", action="store_true",
                        help="write vocab size vs compression to OUT/bpe_compression.png (needs matplotlib)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "demos", "output"),
                        help="folder for the plot (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.merges < 1:
        parser.error(f"--merges must be at least 1, got {args.merges}")
    try:
        text = read_data_file(args.text) if args.text else BUILT_IN_TEXT
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    colour = use_colour()

    merges, ratios = learn_merges(text, args.merges, colour)

    tokenizer = BPETokenizer(vocab_size=256 + len(merges) + 4).train(text)
    same = [(a, b) for a, b, _ in tokenizer.merges] == merges
    print(f"\nBPETokenizer.train (Numba) learned the same {len(merges)} merges: {same}")
    ids = tokenizer.encode(FINAL_SAMPLE)
    pieces = [token_text(tokenizer.vocab[i]) for i in ids]
    print(f"\nencode: {FINAL_SAMPLE}\n  ids:    {ids}\n  tokens: {show_tokens(pieces, colour)}")
    print("  (<e6> is one byte: a token holding part of a multi-byte character)")
    decoded = tokenizer.decode(ids)
    print(f"decode: {decoded}\n  round trip exact: {decoded == FINAL_SAMPLE}")
    length_table(tokenizer, [("training text", text), ("sample sentence", SAMPLE),
                             ("non-English + emoji sentence", FINAL_SAMPLE)])
    png = plot(ratios, args.out) if args.plot else None
    return {"merges": merges, "ratios": ratios, "same_merges": same, "ids": ids,
            "round_trip": decoded == FINAL_SAMPLE, "png": png}


if __name__ == "__main__":
    main()
