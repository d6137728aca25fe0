"""Knowledge distillation, measured: how much of the gap between a small student trained alone and
a larger teacher does distillation close, at an equal number of student steps?

    python benchmarks/distillation.py                     # ~2 MB of local English docs, ~10 min on 2 cores
    python benchmarks/distillation.py --quick             # smoke run, seconds (its numbers mean little)
    python benchmarks/distillation.py --corpus my.txt --ce_weight 1 --kl_weight 1 --temperature 2

1. Corpus: --corpus PATH (.txt/.json/.jsonl, read by training/data.py), or else one built here
   from the English prose found on the machine (README, license and documentation files under
   /usr/share/doc, /usr/share/common-licenses and site-packages), paragraph by paragraph:
   prose-looking paragraphs only, near-duplicates dropped, at most --per_file_kb per file,
   until --corpus_mb; plus data/sample_training.txt. It prints what it used.
2. A byte-level BPE tokenizer (tokenizer/bpe_tokenizer.py) trained on the training paragraphs.
3. The models, all through training/loop.train (the code path train.py uses):
     teacher      wider and deeper, --teacher_steps of plain training (loss = CE)
     scratch      the student, --student_steps of plain training (loss = CE)
     scratch@ce   the same, on the distilled run's CE scale (loss = ce_weight * CE); with a
                  global-norm clip and AdamW the scale of the loss is not neutral, so the
                  distilled run is compared with both (only when ce_weight != 1)
     distilled    the same student (same seed, so the same init; same batches; same steps), on
                  ce_weight * CE + kl_weight * KL(teacher || student) [+ hidden_weight * the
                  --hidden_loss of projected hidden states], through KnowledgeTransfer
4. The table: validation perplexity of each, and the share of the scratch -> teacher gap that
   distillation closes, (ppl_scratch - ppl_distilled) / (ppl_scratch - ppl_teacher), against
   each baseline. Target (from the issue): >= 30% at equal steps.

What we measured (built corpus, 2 cores, benchmarks/RESULTS.md): the defaults (ce 0.2, kl 0.8,
tau 1) close 82.0%, 81.3%, 79.4% of the gap to plain training (CE 1) for seeds 0/1/2, and
82.2%, 81.9%, 80.1% of the gap to the same-CE-scale baseline (0.2 CE); about 10 minutes a seed
on one thread (--on_policy adds the on-policy rows, about 40 minutes more). The temperature
matters most: tau 2 with ce 1, kl 1 ends worse than scratch (-13%, seed 0). In a seed-0 sweep
of the mix (tau 1), KL-heavy beat CE-heavy: ce/kl 0.5/0.5 61%, 0.4/0.6 70%, 0.3/0.7 72%,
0.2/0.8 78%, 0.1/0.9 77%, 0/1 74%. The teacher needs its own, lower learning rate: at 3e-3 it
stayed worse than the student after 400 steps.
"""
import argparse
import hashlib
import math
import re
import site
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

from mini_llm import threads
from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from tokenizer.bpe_tokenizer import BPETokenizer
from training.data import encode_documents, load_texts, make_sequences, split_train_val
from training.knowledge_transfer import DistillConfig, KnowledgeTransfer
from training.loop import TrainConfig, evaluate, make_optimizer, train
from training import seq_kd
from mini_llm.generate import generate
from training.teachers import TransformerTeacher

SAMPLE_TEXT = Path(__file__).resolve().parents[1] / "data" / "sample_training.txt"
PROSE_ROOTS = [Path("/usr/share/doc"), Path("/usr/share/common-licenses")]
PROSE_SUFFIXES = {".txt", ".md", ".rst"}
PROSE_NAMES = ("readme", "license", "licence", "copying", "copyright", "news", "authors", "thanks")
MAX_FILE_BYTES = 512 * 1024          # bigger files are changelogs, symbol lists, API dumps
SHINGLE_WORDS = 8                    # near-duplicate test: runs of this many words


# ----------------------------------------------------------------------------- corpus

def prose_files():
    """Candidate text files: README/LICENSE-like names or .txt/.md/.rst, under the doc folders
    and every site-packages, sorted (the corpus is then the same on every run)."""
    roots = PROSE_ROOTS + [Path(p) for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]}]
    files = set()
    for root in roots:
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            name = path.name.lower()
            wanted = path.suffix.lower() in PROSE_SUFFIXES or name.startswith(PROSE_NAMES)
            if wanted and path.is_file() and not path.is_symlink() and \
                    0 < path.stat().st_size <= MAX_FILE_BYTES:
                files.add(path)
    return sorted(files)


def is_prose(paragraph):
    """A paragraph that reads like English sentences: long enough, mostly letters, words of
    ordinary length, no code or table markup. "The cat sat on the mat, as cats do." -> True;
    "x = f(y); // 42" -> False."""
    text = " ".join(paragraph.split())
    if len(text) < 80 or not re.search(r"[a-z]{3,} [a-z]{2,} [a-z]{2,}", text):
        return False
    letters = sum(c.isalpha() for c in text)
    plain = sum(c.isalpha() or c in " .,;:'\"()-?!" for c in text)
    words = text.split()
    mean_word = sum(map(len, words)) / len(words)
    return letters >= 0.75 * len(text) and plain >= 0.95 * len(text) and 3.0 <= mean_word <= 8.0


def shingles(paragraph, n=SHINGLE_WORDS):
    """The paragraph's lower-cased runs of n words, hashed: near-duplicates share most of them."""
    words = paragraph.lower().split()
    return {hashlib.blake2b(" ".join(words[i:i + n]).encode(), digest_size=8).digest()
            for i in range(max(1, len(words) - n + 1))}


def build_corpus(corpus_bytes, per_file_bytes, seed=0):
    """Prose paragraphs from the machine's documentation, at most per_file_bytes from one file,
    until corpus_bytes. Files are visited in a seeded random order made from a hash of each
    path, so a file installed later moves no other file in the order. A paragraph is skipped
    when more than half of its 8-word runs were seen before: license texts and release notes
    repeat with small edits across packages, and the copies would leak into validation.
    Returns (paragraphs, number of files used)."""
    files = sorted(prose_files(), key=lambda path: hashlib.blake2b(f"{seed}:{path}".encode()).digest())
    seen, paragraphs, total, used = set(), [], 0, 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        taken = 0
        for paragraph in re.split(r"\n[ \t]*\n", text):
            if not is_prose(paragraph):
                continue
            runs = shingles(paragraph)
            if 2 * len(runs & seen) > len(runs):
                continue
            seen |= runs
            paragraph = "\n".join(line.strip() for line in paragraph.strip().splitlines())
            paragraphs.append(paragraph)
            taken += len(paragraph) + 2
            if taken >= per_file_bytes:
                break
        used += taken > 0
        total += taken
        if total >= corpus_bytes:
            break
    return paragraphs, used


def load_documents(args):
    """The documents to train on: --corpus, or the built corpus plus the sample text."""
    if args.corpus:
        documents = load_texts(args.corpus)
        print(f"corpus: {args.corpus}: {len(documents):,} documents, "
              f"{sum(map(len, documents)) / 1e6:.2f} M characters")
        return documents
    paragraphs, files = build_corpus(args.corpus_mb * 1e6, args.per_file_kb * 1e3, args.seed)
    sample = load_texts(SAMPLE_TEXT)
    print(f"corpus: {len(paragraphs):,} prose paragraphs from {files} files under "
          f"{', '.join(str(r) for r in PROSE_ROOTS)} and site-packages, "
          f"{sum(map(len, paragraphs)) / 1e6:.2f} M characters; plus {SAMPLE_TEXT.name} "
          f"({len(sample)} paragraphs, {sum(map(len, sample)) / 1e6:.2f} M characters)")
    if not paragraphs:
        raise SystemExit("error: no prose found on this machine: pass a text file with --corpus")
    return paragraphs + sample


# ----------------------------------------------------------------------------- models

def model_config(vocab_size, hidden, layers, heads, seq_len):
    """A LLaMA-style block: GQA with half as many kv heads, SwiGLU of width ~2.75 C (multiple of 32)."""
    return TransformerConfig(vocab_size=vocab_size, hidden_size=hidden, num_layers=layers,
                             num_heads=heads, num_kv_heads=max(1, heads // 2),
                             intermediate_size=32 * round(2.75 * hidden / 32),
                             max_seq_length=seq_len).validate()


def fit(model, ce_weight, teachers, distill, train_seq, val_seq, steps, lr, seed, args, desc,
        **loop_options):
    """Train `model` for `steps` AdamW steps (peak `lr`, cosine decay) on the batch order fixed
    by `seed`, on ce_weight * CE plus the teachers' terms (none: plain training); loop_options
    go to TrainConfig (on_policy_fraction, on_policy_tokens). Returns (validation loss, seconds)."""
    distiller = KnowledgeTransfer(model, teachers, distill, seed=seed) if teachers else None
    optimizer = make_optimizer(model, distiller, lr, args.weight_decay)
    run = TrainConfig(steps=steps, batch_size=args.batch_size, lr=lr, warmup_steps=max(1, steps // 20),
                      ce_weight=ce_weight, grad_clip=1.0, seed=seed, eval_every=args.eval_every,
                      **loop_options)
    start = time.perf_counter()
    _, interrupted = train(model, optimizer, train_seq, val_seq, run, distiller, desc=desc)
    if interrupted:                 # Ctrl-C / SIGTERM: a cut-short run must not enter the table
        raise SystemExit(f"interrupted ({interrupted}) while training {desc}: no table")
    seconds = time.perf_counter() - start
    return evaluate(model, val_seq, args.batch_size), seconds


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", help="a .txt/.json/.jsonl file (default: build one from local docs)")
    p.add_argument("--corpus_mb", type=float, default=2.0, help="size of the built corpus")
    p.add_argument("--per_file_kb", type=float, default=24.0, help="most text taken from one file")
    p.add_argument("--vocab_size", type=int, default=2048)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--val_sequences", type=int, default=256, help="most validation sequences scored")
    p.add_argument("--teacher_hidden", type=int, default=256)
    p.add_argument("--teacher_layers", type=int, default=4)
    p.add_argument("--student_hidden", type=int, default=128)
    p.add_argument("--student_layers", type=int, default=2)
    p.add_argument("--teacher_steps", type=int, default=600)
    p.add_argument("--student_steps", type=int, default=300)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--teacher_lr", type=float, default=1e-3, help="teacher's peak learning rate")
    p.add_argument("--lr", type=float, default=3e-3, help="students' peak learning rate")
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--ce_weight", type=float, default=0.2)
    p.add_argument("--kl_weight", type=float, default=0.8)
    p.add_argument("--hidden_weight", type=float, default=0.0)
    p.add_argument("--hidden_loss", choices=["mse", "cosine"], default="mse")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--kl_direction", choices=["forward", "reverse"], default="forward")
    p.add_argument("--eval_every", type=int, default=0, help="print validation loss every N steps (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--on_policy", action="store_true", help="also compare on-policy KD (lambda 0.5, "
                   "1), the MiniLLM objective and seq-KD with plain KD, at equal steps and equal wall time")
    p.add_argument("--on_policy_tokens", type=int, default=16, help="tokens the student writes per sequence")
    p.add_argument("--seq_kd", type=int, default=2048, help="sequences the teacher writes for seq-KD")
    p.add_argument("--seq_kd_prompt", type=int, default=8)
    threads.add_flag(p)
    p.add_argument("--mix_alpha", type=float, default=0.2, help="MiniLLM's teacher share in sampling")
    p.add_argument("--cache_dir", default="benchmarks/output", help="where seq-KD's text is cached")
    p.add_argument("--quick", action="store_true", help="smoke run in seconds: checks that the "
                   "pipeline runs; models this small and short say little about distillation")
    if p.parse_args().quick:                      # smaller defaults; flags given still win
        p.set_defaults(corpus_mb=0.2, vocab_size=512, val_sequences=32, teacher_hidden=64,
                       student_hidden=32, teacher_steps=60, student_steps=30, teacher_lr=3e-3,
                       seq_kd=64)
    return p.parse_args()


def main():
    args = parse_args()
    threads.set_threads(args.threads)
    t_start = time.perf_counter()
    documents = load_documents(args)
    train_docs, val_docs = split_train_val(documents, 0.1, args.seed)
    tokenizer = BPETokenizer(vocab_size=args.vocab_size).train(train_docs)
    train_seq = make_sequences(encode_documents(tokenizer, train_docs), args.seq_len)
    val_seq = make_sequences(encode_documents(tokenizer, val_docs), args.seq_len)[:args.val_sequences]
    V = tokenizer.vocab_size
    print(f"tokens: vocab {V}, {train_seq.size:,} train tokens in {len(train_seq)} sequences of "
          f"{args.seq_len}, {len(val_seq)} validation sequences; "
          f"{args.student_steps * args.batch_size / len(train_seq):.1f} student epochs "
          f"({time.perf_counter() - t_start:.0f} s so far)")

    teacher_config = model_config(V, args.teacher_hidden, args.teacher_layers, 8, args.seq_len)
    student_config = model_config(V, args.student_hidden, args.student_layers, 4, args.seq_len)
    teacher = MiniTransformer(teacher_config, seed=args.seed + 1)
    rows = [("teacher", teacher, args.teacher_steps,
             *fit(teacher, 1.0, [], None, train_seq, val_seq, args.teacher_steps, args.teacher_lr,
                  args.seed + 1, args, "teacher"))]
    baselines = ["scratch"] + ([f"scratch@ce{args.ce_weight:g}"] if args.ce_weight != 1.0 else [])
    for name, ce_weight in zip(baselines, (1.0, args.ce_weight)):
        scratch = MiniTransformer(student_config, seed=args.seed)
        rows.append((name, scratch, args.student_steps,
                     *fit(scratch, ce_weight, [], None, train_seq, val_seq, args.student_steps,
                          args.lr, args.seed, args, name)))
    distill = DistillConfig(kl_weight=args.kl_weight, hidden_weight=args.hidden_weight,
                            hidden_loss=args.hidden_loss, temperature=args.temperature,
                            kl_direction=args.kl_direction)
    distilled = MiniTransformer(student_config, seed=args.seed)          # the same init as scratch
    teachers = [(TransformerTeacher("teacher", "minillm", teacher), 1.0)]
    rows.append(("distilled", distilled, args.student_steps,
                 *fit(distilled, args.ce_weight, teachers, distill, train_seq, val_seq,
                      args.student_steps, args.lr, args.seed, args, "distilled")))

    ppl = {name: math.exp(loss) for name, _, _, loss, _ in rows}
    print(f"distillation: ce {args.ce_weight} | kl {args.kl_weight} ({args.kl_direction}, "
          f"tau {args.temperature}) | hidden {args.hidden_weight} ({args.hidden_loss}) | "
          f"lr teacher {args.teacher_lr:g}, students {args.lr:g} | seed {args.seed}")
    print("---")
    print(f"{'model':<14} {'params':>10} {'steps':>6} {'val loss':>9} {'val ppl':>9} {'train s':>8}")
    for name, model, steps, loss, seconds in rows:
        print(f"{name:<14} {model.num_parameters():>10,} {steps:>6} {loss:>9.3f} {ppl[name]:>9.2f} "
              f"{seconds:>8.0f}")
    print("---")
    for baseline in baselines:
        gap = ppl[baseline] - ppl["teacher"]
        if gap > 0:
            closed = (ppl[baseline] - ppl["distilled"]) / gap
            print(f"gap closed vs {baseline}: (ppl_{baseline} - ppl_distilled) / (ppl_{baseline} - "
                  f"ppl_teacher) = {100 * closed:.1f}% ({'meets' if closed >= 0.30 else 'misses'} "
                  f"the 30% target)")
        else:
            print(f"gap closed vs {baseline}: undefined, the teacher is not better than it "
                  "(train it longer: --teacher_steps, or tune --teacher_lr)")
    if args.on_policy:
        compare_on_policy(args, student_config, teachers[0][0], distill, train_seq, val_seq,
                          ppl["distilled"])
    print(f"total {time.perf_counter() - t_start:.0f} s")


# ----------------------------------------------------------------------------- on-policy and seq-KD

def teacher_ppl_of_student_text(model, teacher, val_seq, prompt_tokens, new_tokens, seed, n=64):
    """What on-policy methods target: the teacher's perplexity of what the student writes.
    The student continues n validation prompts by new_tokens sampled tokens (temperature 1);
    the teacher scores those tokens: exp(mean -log p_teacher(token | everything before))."""
    prompts = val_seq[:n, :prompt_tokens]                                      # (n, P)
    ids = generate(model, prompts, new_tokens, temperature=1.0, seed=seed)     # (n, P + L)
    logits = teacher.forward(ids[:, :-1])[0][:, prompt_tokens - 1:]            # (n, L, V)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    written = ids[:, prompt_tokens:]                                           # (n, L)
    return math.exp(-np.take_along_axis(log_p, written[..., None], -1).mean())


def compare_on_policy(args, student_config, teacher, distill, train_seq, val_seq, kd_ppl):
    """Plain (off-policy) KD against GKD-style on-policy KD (lambda 0.5 and 1), MiniLLM's
    policy-gradient objective (lambda 1, teacher-mixed sampling) and seq-KD, at equal student
    steps and at equal wall time (steps scaled by KD's time / the method's)."""
    L, P = args.on_policy_tokens, args.seq_len - args.on_policy_tokens
    teachers = [(teacher, 1.0)]
    start = time.perf_counter()
    written, _ = seq_kd.load_or_write(Path(args.cache_dir) / f"seq_kd_seed{args.seed}", teacher,
                                      train_seq, args.seq_kd, args.seq_kd_prompt, args.seed)
    write_s = time.perf_counter() - start
    methods = {"kd": ({}, train_seq, 0.0),
               "on-policy λ=0.5": (dict(on_policy_fraction=0.5, on_policy_tokens=L), train_seq, 0.0),
               "on-policy λ=1": (dict(on_policy_fraction=1.0, on_policy_tokens=L), train_seq, 0.0),
               "MiniLLM λ=1": (dict(on_policy_fraction=1.0, on_policy_tokens=L, objective="minillm",
                                    mix_alpha=args.mix_alpha), train_seq, 0.0),
               "seq-KD": ({}, np.concatenate([train_seq, written]), write_s)}
    results = []
    for name, (options, data, extra_s) in methods.items():
        for budget in ("equal steps", "equal time"):
            if name == "kd" and budget == "equal time":
                continue
            steps = args.student_steps
            if budget == "equal time":            # step costs measured in this table, at equal steps
                kd_time = next(r[4] for r in results if r[0] == "kd")
                per_step = (next(r[4] for r in results if r[0] == name) - extra_s) / args.student_steps
                steps = max(1, round((kd_time - extra_s) / per_step))
            model = MiniTransformer(student_config, seed=args.seed)
            loss, seconds = fit(model, args.ce_weight, teachers, distill, data, val_seq, steps,
                                args.lr, args.seed, args, f"{name} ({budget})", **options)
            seconds += extra_s
            text_ppl = teacher_ppl_of_student_text(model, teacher, val_seq, P, L, args.seed)
            results.append((name, budget, steps, math.exp(loss), seconds, text_ppl))
    print("--- on-policy and sequence-level KD (same teacher, corpus, init and batch order)")
    print(f"{'method':<16} {'budget':<12} {'steps':>6} {'val ppl':>9} {'teacher ppl of':>15} "
          f"{'train s':>8} {'s/step vs kd':>13}")
    print(f"{'':<16} {'':<12} {'':>6} {'':>9} {'student text':>15}")
    kd_step = results[0][4] / args.student_steps
    for name, budget, steps, val_ppl, seconds, text_ppl in results:
        print(f"{name:<16} {budget:<12} {steps:>6} {val_ppl:>9.2f} {text_ppl:>15.2f} {seconds:>8.0f} "
              f"{seconds / steps / kd_step:>12.2f}x")
    print(f"(kd is the distilled run of the table above trained again: {kd_ppl:.2f} there; seq-KD's time includes the "
          f"teacher writing {args.seq_kd} sequences: {write_s:.0f} s; teacher ppl of student text: "
          f"{L} sampled tokens after {P} prompt tokens, 64 validation prompts)")


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:                       # bad --corpus file, bad sizes: one line
        sys.exit(f"error: {e}")
