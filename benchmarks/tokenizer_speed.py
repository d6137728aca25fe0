"""Benchmark the BPE tokenizer: training and encoding, ours vs Hugging Face `tokenizers` and
tiktoken, at 1 and 2 threads, each framework in its own process.

    python benchmarks/tokenizer_speed.py                 # corpus built from text on this machine
    python benchmarks/tokenizer_speed.py --corpus big.txt  # or a UTF-8 file you pass
    python benchmarks/tokenizer_speed.py --threads 1,2,4   # thread counts (default 1,2)
    python benchmarks/tokenizer_speed.py --quick         # smoke run, seconds: 1 MB, vocab 1024,
                                                         # 30 reference merges, 1 round

Measures, on >= 5 MB of real English text (nothing is downloaded), at each thread count:
  - training time at --vocab-size (8192): ours (Numba) vs HF;
  - at the first thread count, training on the same, smaller work (--reference-merges
    merges on the same corpus): ours vs the plain-Python reference vs HF. The reference
    needs minutes per thousand merges, so it is timed on this work, not at 8192;
  - encoding throughput (MB/s) of one tokenizer.json (ours, trained above) with ours, HF and
    tiktoken. tiktoken gets an Encoding built from the same vocabulary: our pattern, our
    special tokens and mergeable_ranks = token bytes -> id (for byte-level BPE trained
    merge by merge, a token's id is its rank). Each encodes train + held-out text in one
    encode_batch call, from a loaded tokenizer after a warm-up call;
  - bytes per token on held-out text: our trained tokenizer vs HF's.

Processes: every timed run is a fresh `python benchmarks/tokenizer_speed.py --worker NAME
--task train|encode --threads N` whose environment sets NUMBA_NUM_THREADS = RAYON_NUM_THREADS
= OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = N, so one framework's pool never spins while
another works. --repeats rounds alternate the frameworks (ours, HF, tiktoken, ours, ...); the
table shows medians and the ratios of those medians. Each worker also reports CPU time over
wall time in its timed region: the threads it really used.
Checks, before the table: reference merges == Numba merges; our merges and ids the same at
every thread count; HF encodes our tokenizer.json to our ids, tiktoken too (a mismatch is
reported, counted by document).
"""
import argparse
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import mini_llm  # noqa: F401  first: the thread pools' settings, before NumPy (mini_llm/threads.py)

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars inside timed regions (read on import)
from tokenizer.bpe_tokenizer import PATTERNS, BPETokenizer  # noqa: E402  (after TQDM_DISABLE)
from training.data import read_data_file  # noqa: E402

MB = 1 << 20
SPECIALS = ["<|endoftext|>", "<pad>", "<bos>", "<eos>"]
THREAD_VARS = ("NUMBA_NUM_THREADS", "RAYON_NUM_THREADS", "RAYON_RS_NUM_CPUS",
               "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SOURCES = [  # (name, glob patterns) searched in this order for English text
    ("Vim help files", ["/usr/share/vim/vim*/doc/*.txt"]),
    ("/usr/share/doc docs", ["/usr/share/doc/**/*.md", "/usr/share/doc/**/*.txt"]),
    ("licenses", ["/usr/share/common-licenses/*"]),
    ("site-packages docs", [os.path.join(sysconfig.get_paths()["purelib"], "**", "*.rst"),
                            os.path.join(sysconfig.get_paths()["purelib"], "**", "*.md")]),
]


# ----------------------------------------------------------------------------
# The corpus

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


# ----------------------------------------------------------------------------
# The workers: one timed run each, in a process of its own

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


def tiktoken_encoding(ours, pattern):
    """A tiktoken Encoding on our vocabulary: rank = id for byte-level BPE."""
    import tiktoken
    return tiktoken.Encoding(name="minillm", pat_str=pattern,
                             mergeable_ranks={token: i for i, token in ours.vocab.items()},
                             special_tokens=ours.special_tokens)


def timed(fn):
    """(wall seconds, CPU seconds of the whole process, result) of one call."""
    cpu, start = time.process_time(), time.perf_counter()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


def train_worker(args, corpus):
    """Train once at --vocab-size; ours saves its tokenizer.json to --save (for checks)."""
    pattern = PATTERNS[args.pattern]
    if args.worker == "hf":
        import tokenizers
        wall, cpu, tok = timed(lambda: hf_train(tokenizers, corpus["train"], args.vocab_size,
                                                pattern))
        held_out = tok.encode_batch(corpus["held_out"], add_special_tokens=False)
        return {"seconds": wall, "cpu": cpu, "held_out_tokens": sum(len(e.ids) for e in held_out)}
    BPETokenizer(vocab_size=270).train("warm up the Numba kernels, warm up")  # compile / load
    wall, cpu, tok = timed(lambda: BPETokenizer(args.vocab_size, SPECIALS, args.pattern).train(
        corpus["train"], reference=args.worker == "reference"))
    tok.save(args.save)
    return {"seconds": wall, "cpu": cpu}


def encoder(name, path, pattern, threads):
    """The tokenizer.json at `path` loaded by one framework: a function list of texts -> ids."""
    if name == "ours":
        return BPETokenizer.load(path).encode_batch
    if name == "hf":
        import tokenizers
        tok = tokenizers.Tokenizer.from_file(path)
        return lambda docs: [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
    enc = tiktoken_encoding(BPETokenizer.load(path), pattern)
    return lambda docs: enc.encode_batch(docs, num_threads=threads, allowed_special="all")


def encode_worker(args, corpus):
    """Load the tokenizer.json, warm up, encode the held-out text (ids to --save, for the
    checks), then time encode_batch over all the text."""
    encode = encoder(args.worker, os.path.join(args.work, "tokenizer.json"),
                     PATTERNS[args.pattern], int(args.threads))
    encode(["warm up, <pad> warm up " * 2000])      # long enough for our threaded kernel too
    with open(args.save, "w") as f:
        json.dump(encode(corpus["held_out"]), f)
    wall, cpu, _ = timed(lambda: encode(corpus["train"] + corpus["held_out"]))
    return {"seconds": wall, "cpu": cpu}


def run_worker(args, worker, task, threads, save, vocab_size=None):
    """One worker process, its pools sized by the environment; returns its JSON line."""
    env = dict(os.environ, TQDM_DISABLE="1", **{var: str(threads) for var in THREAD_VARS})
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--task", task,
           "--threads", str(threads), "--work", args.work, "--save", save,
           "--pattern", args.pattern, "--vocab-size", str(vocab_size or args.vocab_size)]
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)   # stderr: ours
    if result.returncode:
        sys.exit(f"worker failed (exit {result.returncode}): {' '.join(cmd)}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------
# The parent: rounds of workers, checks, one table

def rounds(args, names, task, threads, vocab_size=None, repeats=None):
    """`repeats` rounds of one worker per name, alternating; {name: [worker results]}.
    Each result gets "file": what the worker saved (round 0's file is kept for checks)."""
    runs = {name: [] for name in names}
    for r in range(repeats or args.repeats):
        for name in names:
            save = os.path.join(args.work, f"{task}_{name}_{vocab_size or args.vocab_size}_"
                                           f"{threads}_{r}.json")
            runs[name].append(dict(run_worker(args, name, task, threads, save, vocab_size),
                                   file=save))
    return runs


def median(runs, key="seconds"):
    return statistics.median(run[key] for run in runs) if runs else None


def read_json(path):
    with open(path) as f:
        return json.load(f)


def merges_of(path):
    return read_json(path)["model"]["merges"]


def check(ok, what):
    print(f"check: {what}: {'yes' if ok else 'NO'}")
    if not ok:
        sys.exit(f"validation failed: {what}")


def training_rows(args, threads, others):
    """Training at --vocab-size at each thread count, and (first count) the same smaller
    work for ours vs the reference vs HF. Returns (rows by thread count, HF held-out tokens)."""
    rows, hf_tokens, first = {}, None, None
    for n in threads:
        runs = rounds(args, ["ours"] + others, "train", n)
        files = [run["file"] for run in runs["ours"]]
        first = first or files[0]
        check(all(merges_of(f) == merges_of(first) for f in files),
              f"our merges at {n} thread(s), every round, == at {threads[0]}")
        ours, hf = median(runs["ours"]), median(runs.get("hf", []))
        hf_tokens = hf_tokens or (runs["hf"][0]["held_out_tokens"] if hf else None)
        rows[n] = [(f"train {len(merges_of(first))} merges (vocab {args.vocab_size}), s", ours,
                    None, hf, hf and ours / hf, "ours/HF <= 1", hf and ours / hf <= 1)]
    shutil.copy(first, os.path.join(args.work, "tokenizer.json"))      # the one we encode with
    k, small = args.reference_merges, 256 + len(SPECIALS) + args.reference_merges
    runs = rounds(args, ["ours"] + others, "train", threads[0], small)
    reference = rounds(args, ["reference"], "train", threads[0], small, repeats=1)["reference"]
    check(merges_of(reference[0]["file"]) == merges_of(runs["ours"][0]["file"]),
          f"reference merges == Numba merges ({k} merges)")
    ours, ref, hf = median(runs["ours"]), median(reference), median(runs.get("hf", []))
    rows[threads[0]].append((f"train {k} merges, same work, s", ours, ref, hf, ref / ours,
                             "reference/ours >= 20", ref / ours >= 20))
    return rows, hf_tokens


def encoding_rows(args, threads, others, n_mb):
    """Encoding MB/s at each thread count, with the id checks. Returns (rows by thread
    count, our held-out ids, check notes, CPU/wall ratios)."""
    rows, our_ids, notes, usage = {}, None, [], {}
    for n in threads:
        runs = rounds(args, ["ours"] + others, "encode", n)
        ids = {name: read_json(rs[0]["file"]) for name, rs in runs.items()}
        our_ids = our_ids or ids["ours"]
        check(ids["ours"] == our_ids, f"our held-out ids at {n} thread(s) == at {threads[0]}")
        if "hf" in ids:
            check(ids["hf"] == our_ids, f"HF encodes our tokenizer.json to our ids ({n} thr)")
        if "tiktoken" in ids:
            differ = sum(a != b for a, b in zip(ids["tiktoken"], our_ids))
            print(f"check: tiktoken (our vocabulary) gives our ids ({n} thr): "
                  + ("yes" if not differ else f"NO, {differ} of {len(our_ids)} documents differ"))
            notes.append("tiktoken (ranks = our ids) too" if not differ else
                         f"tiktoken differs on {differ} of {len(our_ids)} held-out documents")
        rate = {name: n_mb / median(rs) for name, rs in runs.items()}
        usage[n] = {name: statistics.median(r["cpu"] / r["seconds"] for r in rs)
                    for name, rs in runs.items()}
        ours, hf, tt = rate["ours"], rate.get("hf"), rate.get("tiktoken")
        rows[n] = [(f"encode {n_mb:.1f} MB, MB/s (HF: encode_batch)", ours, None, hf,
                    hf and ours / hf, "ours/HF >= 1/3", hf and ours / hf >= 1 / 3),
                   (f"encode {n_mb:.1f} MB, MB/s (reference: tiktoken)", ours, tt, None,
                    tt and ours / tt, "ours/tiktoken >= 0.5", tt and ours / tt >= 0.5)]
    return rows, our_ids, notes[:1], usage


def print_table(sections):
    """sections: [(title, rows)]; a row: (what, ours, reference, HF, ratio, target, met?),
    None where not measured."""
    print(f"\n{'measurement':<46} {'ours':>9} {'reference':>10} {'HF':>9} {'ratio':>8}  "
          f"{'target':<24} met")
    for title, rows in sections:
        print(f"--- {title}")
        for what, a, ref, hf, ratio, target, met in rows:
            cells = [f"{x:>9.4f}" if x is not None else f"{'-':>9}" for x in (a, hf)]
            ref_cell = f"{ref:>10.2f}" if ref is not None else f"{'-':>10}"
            ratio_cell = f"{ratio:>8.3f}" if ratio is not None else f"{'-':>8}"
            verdict = "-" if hf is None and ref is None else ("yes" if met else "NO")
            print(f"{what:<46} {cells[0]} {ref_cell} {cells[1]} {ratio_cell}  {target:<24} "
                  f"{verdict}")


def describe_run(args, train, held_out, used, others):
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
    missing = [module for module, name in (("tokenizers", "hf"), ("tiktoken", "tiktoken"))
               if name not in others]
    if missing:
        print(f"note: not installed, so not measured: {', '.join(missing)}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"pattern {args.pattern}; repeats {args.repeats}; threads {args.threads}\n")


def parse_args():
    parser = argparse.ArgumentParser(description="BPE tokenizer benchmark")
    parser.add_argument("--corpus", help="UTF-8 text file (default: text found on this machine)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--reference-merges", type=int, default=500,
                        help="merges for the reference-vs-Numba timing (default 500; the "
                             "reference takes ~0.15 s per merge on 5 MB)")
    parser.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4")
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2,4 (default 1,2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of workers per timing (median; the reference: 1)")
    parser.add_argument("--corpus-mb", type=float, default=5.0,
                        help="training text gathered from this machine, MB (default 5; "
                             "12%% more is held out)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run in seconds, the same steps and checks on less work: "
                             "--corpus-mb 1 --vocab-size 1024 --reference-merges 30 --repeats 1 "
                             "(flags given still win); its numbers mean little")
    worker = parser.add_argument_group("one worker (what the parent starts)")
    worker.add_argument("--worker", choices=("ours", "reference", "hf", "tiktoken"))
    worker.add_argument("--task", choices=("train", "encode"))
    worker.add_argument("--work", help="the parent's folder: corpus.json, tokenizer.json")
    worker.add_argument("--save", help="where the worker writes its tokenizer.json or ids")
    if parser.parse_known_args()[0].quick:        # smaller defaults; flags given still win
        parser.set_defaults(corpus_mb=1.0, vocab_size=1024, reference_merges=30, repeats=1)
    return parser.parse_args()


def main():
    args = parse_args()
    if args.worker:
        with open(os.path.join(args.work, "corpus.json")) as f:
            corpus = json.load(f)
        print(json.dumps((train_worker if args.task == "train" else encode_worker)(args, corpus)))
        return
    train, held_out, used = (file_corpus(args.corpus) if args.corpus
                             else machine_corpus(args.corpus_mb * MB, 0.12 * args.corpus_mb * MB))
    threads = [int(n) for n in args.threads.split(",")]
    hf = ["hf"] if importlib.util.find_spec("tokenizers") else []    # optional references
    tt = ["tiktoken"] if importlib.util.find_spec("tiktoken") else []
    describe_run(args, train, held_out, used, hf + tt)
    args.work = tempfile.mkdtemp(prefix="minillm_bench_")
    try:
        with open(os.path.join(args.work, "corpus.json"), "w") as f:
            json.dump({"train": train, "held_out": held_out}, f)
        n_mb = sum(len(d.encode()) for d in train + held_out) / MB
        train_rows, hf_tokens = training_rows(args, threads, hf)
        enc_rows, our_ids, notes, usage = encoding_rows(args, threads, hf + tt, n_mb)
    finally:
        shutil.rmtree(args.work)
    held_bytes = sum(len(d.encode()) for d in held_out)
    our_bpt = held_bytes / sum(map(len, our_ids))
    hf_bpt = hf_tokens and held_bytes / hf_tokens
    sections = [(f"{n} thread{'s' if n > 1 else ''} each", train_rows[n] + enc_rows[n])
                for n in threads]
    sections.append(("on the held-out text", [
        ("bytes per token, held out", our_bpt, None, hf_bpt, hf_bpt and our_bpt / hf_bpt,
         "0.98 <= ours/HF <= 1.02", hf_bpt and 0.98 <= our_bpt / hf_bpt <= 1.02)]))
    print_table(sections)
    used = ("; ".join(f"{n} thr: " + ", ".join(f"{name} {u:.2f}" for name, u in usage[n].items())
                      for n in threads))
    print(f"\nthreads used (CPU s / wall s in the timed encode, median): {used}")
    print(f"median of {args.repeats} rounds (reference: 1 run), each run a fresh process with "
          "NUMBA / RAYON / OPENBLAS / OMP_NUM_THREADS = the section's thread count. Training "
          "times include pre-tokenization and word counting; encoding times do not include "
          "loading. Checked in this run: reference merges == Numba merges" + (
              "; HF encodes our tokenizer.json to our ids on the held-out text" if hf else "")
          + "".join(f"; {note}" for note in notes) + ".")


if __name__ == "__main__":
    main()
