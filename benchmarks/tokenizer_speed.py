"""Benchmark the BPE tokenizer: training and encoding, ours vs references.

    python benchmarks/tokenizer_speed.py                 # corpus built from text on this machine
    python benchmarks/tokenizer_speed.py --corpus big.txt  # or a UTF-8 file you pass
    python benchmarks/tokenizer_speed.py --quick         # smoke run, seconds: 1 MB, vocab 1024,
                                                         # 30 reference merges, 1 repeat

Measures, on >= 5 MB of real English text (nothing is downloaded):
  - training time at --vocab-size (8192): Numba path vs Hugging Face `tokenizers`;
  - training time on the same, smaller work (--reference-merges merges on the
    same corpus): Numba path vs the plain-Python reference vs HF. The reference
    needs minutes per thousand merges, so it is timed on this work, not at 8192;
  - encoding throughput (MB/s) of one tokenizer.json (ours, trained above),
    with ours and with HF, each starting from a freshly loaded tokenizer;
  - bytes per token on held-out text: our trained tokenizer vs HF's.
It checks results as it goes (reference merges == Numba merges; HF encodes our
file to our ids) and prints medians with the ratios measured in this run.
"""
import argparse
import glob
import hashlib
import os
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars inside timed regions (read on import)
from tokenizer.bpe_tokenizer import PATTERNS, BPETokenizer  # noqa: E402  (after TQDM_DISABLE)
from training.data import read_data_file  # noqa: E402

MB = 1 << 20
SPECIALS = ["<|endoftext|>", "<pad>", "<bos>", "<eos>"]
SOURCES = [  # (name, glob patterns) searched in this order for English text
    ("Vim help files", ["/usr/share/vim/vim*/doc/*.txt"]),
    ("/usr/share/doc docs", ["/usr/share/doc/**/*.md", "/usr/share/doc/**/*.txt"]),
    ("licenses", ["/usr/share/common-licenses/*"]),
    ("site-packages docs", [os.path.join(sysconfig.get_paths()["purelib"], "**", "*.rst"),
                            os.path.join(sysconfig.get_paths()["purelib"], "**", "*.md")]),
]


def split_docs(docs, held_out_share=0.1):
    """Hold out a document whenever less than `held_out_share` of the bytes so far is held out."""
    train, held_out, held_bytes, total = [], [], 0, 0
    for doc in docs:
        size = len(doc.encode())
        total += size
        if held_bytes < held_out_share * total:
            held_out.append(doc)
            held_bytes += size
        else:
            train.append(doc)
    return train, held_out


def machine_corpus(train_bytes, held_out_bytes):
    """Documents from text files on this machine: (train docs, held-out docs, source counts).

    Python's own documentation (pydoc_data) comes first, then the SOURCES. Files
    that are not UTF-8, tiny, or duplicates are skipped.
    """
    docs, used, seen, total = [], {}, set(), 0
    try:
        from pydoc_data.topics import topics
        docs.append("\n\n".join(topics[k] for k in sorted(topics)))
        used["Python docs (pydoc_data)"] = 1
    except ImportError:
        pass
    total = sum(len(d.encode()) for d in docs)
    for name, patterns in SOURCES:
        for path in sorted({p for pattern in patterns for p in glob.glob(pattern, recursive=True)}):
            if total >= (train_bytes + held_out_bytes) * 1.05:
                break
            try:
                if not os.path.isfile(path) or not 2048 <= os.path.getsize(path) <= 4 * MB:
                    continue
                text = read_data_file(path)
            except (ValueError, OSError):
                continue
            digest = hashlib.sha1(text.encode()).digest()
            if digest not in seen:
                seen.add(digest)
                docs.append(text)
                total += len(text.encode())
                used[name] = used.get(name, 0) + 1
    return (*split_docs(docs), used)


def file_corpus(path):
    """A user's file cut into ~64 KB documents at line ends, about 10% held out."""
    text = read_data_file(path)
    docs, start = [], 0
    while start < len(text):
        end = text.find("\n", start + 65536)
        end = len(text) if end < 0 else end + 1
        docs.append(text[start:end])
        start = end
    return (*split_docs(docs), {path: 1})


def timed(fn, repeats):
    """Median wall time of fn() over `repeats` runs, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def hf_train(tokenizers, docs, vocab_size, pattern):
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    if pattern == PATTERNS["gpt2"]:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:  # the same regex as ours, LLaMA-3 style
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(docs, trainer)
    return tok


def parse_args():
    parser = argparse.ArgumentParser(description="BPE tokenizer benchmark")
    parser.add_argument("--corpus", help="UTF-8 text file (default: text found on this machine)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--reference-merges", type=int, default=500,
                        help="merges for the reference-vs-Numba timing (default 500; the "
                             "reference takes ~0.15 s per merge on 5 MB)")
    parser.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing (median)")
    parser.add_argument("--corpus-mb", type=float, default=5.0,
                        help="training text gathered from this machine, MB (default 5; "
                             "12%% more is held out)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run in seconds, the same steps and checks on less work: "
                             "--corpus-mb 1 --vocab-size 1024 --reference-merges 30 --repeats 1 "
                             "(flags given still win); its numbers mean little")
    if parser.parse_known_args()[0].quick:        # smaller defaults; flags given still win
        parser.set_defaults(corpus_mb=1.0, vocab_size=1024, reference_merges=30, repeats=1)
    return parser.parse_args()


def describe_run(args, train, held_out, used, tokenizers):
    """Print the corpus, where it came from, and the machine."""
    train_mb = sum(len(d.encode()) for d in train) / MB
    held_mb = sum(len(d.encode()) for d in held_out) / MB
    print(f"corpus: {train_mb:.2f} MB train ({len(train)} docs), {held_mb:.2f} MB held out "
          f"({len(held_out)} docs)")
    print("sources: " + ", ".join(f"{name} ({n} files)" for name, n in used.items()))
    if args.quick:
        print("note: --quick, a smoke run on little text: the timings and ratios mean little")
    elif train_mb < 5:
        print(f"note: the training text is {train_mb:.2f} MB, below the 5 MB the issue asks for")
    hf_version = tokenizers.__version__ if tokenizers else "not installed"
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"pattern {args.pattern}; repeats {args.repeats}; tokenizers {hf_version}\n")


def training_rows(args, train, tokenizers):
    """Time training: ours vs HF at --vocab-size, then ours vs the reference vs HF on
    --reference-merges merges (checking reference merges == Numba merges).
    Returns (rows, our tokenizer at --vocab-size, HF's or None)."""
    pattern = PATTERNS[args.pattern]

    def ours(vocab_size, reference=False):
        return BPETokenizer(vocab_size, SPECIALS, args.pattern).train(train, reference=reference)

    ours_s, ours_tok = timed(lambda: ours(args.vocab_size), args.repeats)
    merges = len(ours_tok.merges)
    hf_s, hf_tok = (timed(lambda: hf_train(tokenizers, train, args.vocab_size, pattern),
                          args.repeats) if tokenizers else (None, None))

    k = args.reference_merges
    small_s, small_tok = timed(lambda: ours(256 + len(SPECIALS) + k), args.repeats)
    ref_s, ref_tok = timed(lambda: ours(256 + len(SPECIALS) + k, reference=True), 1)
    if ref_tok.merges != small_tok.merges:
        sys.exit("validation failed: reference and Numba merges differ")
    hf_small_s = (timed(lambda: hf_train(tokenizers, train, 256 + len(SPECIALS) + k, pattern),
                        args.repeats)[0] if tokenizers else None)
    rows = [(f"train {merges} merges (vocab {args.vocab_size}), s", ours_s, None, hf_s,
             hf_s and ours_s / hf_s, "ours/HF <= 3", hf_s and ours_s / hf_s <= 3),
            (f"train {k} merges, same work, s", small_s, ref_s, hf_small_s,
             ref_s / small_s, "reference/ours >= 20", ref_s / small_s >= 20)]
    return rows, ours_tok, hf_tok


def encoding_rows(args, ours_tok, hf_tok, train, held_out, tokenizers):
    """Time encoding with one saved tokenizer.json, ours vs HF (checking that HF gives our
    ids), then compare bytes per token on the held-out text. Returns rows."""
    rows = []
    saved = ours_tok.save(os.path.join(tempfile.mkdtemp(prefix="minillm_bench_"), "tok.json"))
    docs = train + held_out
    n_mb = sum(len(d.encode()) for d in docs) / MB
    enc_s, our_ids = timed(lambda: BPETokenizer.load(saved).encode_batch(docs), args.repeats)
    if tokenizers:
        hf_file = tokenizers.Tokenizer.from_file(saved)
        if [e.ids for e in hf_file.encode_batch(held_out, add_special_tokens=False)] \
                != our_ids[len(train):]:
            sys.exit("validation failed: HF encodes our tokenizer.json to different ids")
        batch_s, _ = timed(lambda: tokenizers.Tokenizer.from_file(saved).encode_batch(
            docs, add_special_tokens=False), args.repeats)
        single_s, _ = timed(lambda: [tokenizers.Tokenizer.from_file(saved).encode(
            d, add_special_tokens=False) for d in docs], args.repeats)
        rows.append((f"encode {n_mb:.1f} MB, MB/s (HF: encode_batch)", n_mb / enc_s, None,
                     n_mb / batch_s, batch_s / enc_s, "ours/HF >= 1/3",
                     batch_s / enc_s >= 1 / 3))
        rows.append(("encode, MB/s (HF: one encode() per doc)", n_mb / enc_s, None,
                     n_mb / single_s, single_s / enc_s, "ours/HF >= 1/3",
                     single_s / enc_s >= 1 / 3))
    shutil.rmtree(os.path.dirname(saved))
    held_bytes = sum(len(d.encode()) for d in held_out)
    our_bpt = held_bytes / sum(len(ids) for ids in our_ids[len(train):])
    hf_bpt = hf_tok and held_bytes / sum(
        len(e.ids) for e in hf_tok.encode_batch(held_out, add_special_tokens=False))
    rows.append(("bytes per token, held out", our_bpt, None, hf_bpt,
                 hf_bpt and our_bpt / hf_bpt, "0.98 <= ours/HF <= 1.02",
                 hf_bpt and 0.98 <= our_bpt / hf_bpt <= 1.02))
    return rows


def print_table(rows):
    """rows: (what, ours, reference, HF, ratio, target, target met?), None where not measured."""
    print(f"{'measurement':<46} {'ours':>9} {'reference':>10} {'HF':>9} {'ratio':>8}  "
          f"{'target':<24} met")
    for what, a, ref, hf, ratio, target, met in rows:
        cells = [f"{x:>9.4f}" if x is not None else f"{'-':>9}" for x in (a, hf)]
        ref_cell = f"{ref:>10.2f}" if ref is not None else f"{'-':>10}"
        ratio_cell = f"{ratio:>8.3f}" if ratio is not None else f"{'-':>8}"
        verdict = "-" if hf is None and ref is None else ("yes" if met else "NO")
        print(f"{what:<46} {cells[0]} {ref_cell} {cells[1]} {ratio_cell}  {target:<24} {verdict}")


def main():
    args = parse_args()
    try:
        import tokenizers
    except ImportError:
        tokenizers = None
    train, held_out, used = (file_corpus(args.corpus) if args.corpus
                             else machine_corpus(args.corpus_mb * MB, 0.12 * args.corpus_mb * MB))
    describe_run(args, train, held_out, used, tokenizers)

    start = time.perf_counter()
    BPETokenizer(vocab_size=270).train("warm up the Numba kernels, warm up")
    BPETokenizer(vocab_size=300).encode("warm up")
    jit_s = time.perf_counter() - start

    rows, ours_tok, hf_tok = training_rows(args, train, tokenizers)
    rows += encoding_rows(args, ours_tok, hf_tok, train, held_out, tokenizers)
    print_table(rows)
    print(f"\nmedian of {args.repeats} runs (reference: 1 run). Training times include "
          "pre-tokenization and word counting. HF trains and encode_batch-es on all "
          f"{os.cpu_count()} CPUs; ours runs on one. Numba kernels loaded/compiled once "
          f"before timing ({jit_s:.1f} s, not counted). Checked in this run: reference merges "
          "== Numba merges" + ("; HF encodes our tokenizer.json to our ids on the held-out "
                               "text." if tokenizers else "."))

if __name__ == "__main__":
    main()
