"""What a teacher costs: a teacher 10x the student's size, live and from the top-k cache.

    python benchmarks/teacher_cost.py               # train_step.py's student, a ~10x teacher
    python benchmarks/teacher_cost.py --threads 1
    python benchmarks/teacher_cost.py --quick       # smoke run: tiny models, 1 repeat
    python benchmarks/teacher_cost.py --shapes      # random teachers shaped like published ones

Student: the config of benchmarks/train_step.py (vocab 8192, hidden 256, 4 layers, 4 heads,
intermediate 1024, window 128), sequence 256. Teacher: the same vocabulary and window, hidden 768,
8 layers, 12 heads, intermediate 3072: about 10x the student's parameters. float32, a batch of
--batch random sequences (both models see the same ids).

Every number is the library's own path, timed (median of --repeats, after one warm-up):
  student step     training/loop.py's forward_backward (CE), clip_grad_norm, AdamW, zero_grads
  teacher forward  TransformerTeacher.forward (inference only: no backward caches)
  distilled step   the student step with the teacher's KL (KnowledgeTransfer, teacher live)
  cached step      the same with --teacher_cache_topk's cache filled (the teacher not run)
and the cache's size on disk per token: TeacherOutputCache files for the batch, divided by its
tokens (k int32 ids + k float32 log-probs per token, plus one flag per sequence and meta.json).

--shapes: for each published teacher shape in SHAPES (random weights, the published sizes: what
a teacher step costs before you download one), in its own process, the parameter count, the
time of one inference forward of --batch x --seq tokens, and the process's peak resident memory.
"""
import argparse
import os
import tempfile
from pathlib import Path


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2, help="sequences per step (default 2)")
    parser.add_argument("--topk", type=int, default=32, help="cached teacher tokens per position (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS/Numba threads (default os.cpu_count())")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny models, 1 repeat")
    parser.add_argument("--shapes", action="store_true", help="time random teachers of published shapes")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence with --shapes (default 256)")
    parser.add_argument("--shape", help=argparse.SUPPRESS)              # one shape, in a child process
    return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:                    # the thread pools are sized when NumPy and Numba load
    from mini_llm import threads
    threads.pin_environment(ARGS.threads)

import numpy as np  # noqa: E402

from mini_llm.model.transformer import MiniTransformer, TransformerConfig  # noqa: E402
from mini_llm.optim import clip_grad_norm  # noqa: E402
from training.knowledge_transfer import DistillConfig, KnowledgeTransfer  # noqa: E402
from training.loop import forward_backward, make_optimizer, trainable, zero_grads  # noqa: E402
from training.teacher_cache import TeacherOutputCache  # noqa: E402
from training.teachers import TransformerTeacher  # noqa: E402
from timing import median_seconds  # noqa: E402

STUDENT = dict(vocab_size=8192, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
               intermediate_size=1024, max_seq_length=256, sliding_window=128)
TEACHER = dict(STUDENT, hidden_size=768, num_layers=8, num_heads=12, num_kv_heads=12, intermediate_size=3072)
QUICK_STUDENT = dict(STUDENT, vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                     intermediate_size=64, max_seq_length=32, sliding_window=16)
QUICK_TEACHER = dict(QUICK_STUDENT, hidden_size=96, num_layers=3, num_heads=6, num_kv_heads=6, intermediate_size=256)


# published configs (config.json of each model): the MiniLLM architecture of the same size.
# Qwen2.5's q/k/v biases are left out (a few thousand parameters, no measurable time).
SHAPES = {
    "SmolLM2-135M": dict(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                         intermediate_size=1536, tie_word_embeddings=True),
    "Qwen2.5-0.5B": dict(vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                         intermediate_size=4864, tie_word_embeddings=True),
    "TinyLlama-1.1B": dict(vocab_size=32000, hidden_size=2048, num_layers=22, num_heads=32, num_kv_heads=4,
                           intermediate_size=5632, tie_word_embeddings=False),
}


def time_shape(name, batch, seq):
    """One JSON line: parameters, inference-forward seconds (median of 2 after a warm-up), peak RSS."""
    import json
    import resource
    model = MiniTransformer(TransformerConfig(**SHAPES[name], max_seq_length=seq), seed=0)
    teacher = TransformerTeacher(name, "llama", model)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(batch, seq))
    seconds = warm_median_seconds(lambda: teacher.forward(ids), 2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024              # KiB -> MiB
    print(json.dumps(dict(name=name, params=model.num_parameters(), seconds=seconds, peak_mib=peak)))


def shape_table(args):
    import json
    import subprocess
    import sys
    print(f"random teachers of published shapes, float32, one forward of {args.batch} x {args.seq} tokens, "
          f"threads {args.threads}, each in its own process")
    print(f"\n{'shape':<16} | {'parameters':>13} | {'forward s':>9} | {'tokens/s':>8} | "
          f"{'weights MiB':>11} | {'peak RSS MiB':>12}")
    for name in SHAPES:
        out = subprocess.run([sys.executable, __file__, "--shape", name, "--batch", str(args.batch),
                              "--seq", str(args.seq), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{name:<16} | {r['params']:>13,} | {r['seconds']:>9.2f} | "
              f"{args.batch * args.seq / r['seconds']:>8.0f} | {4 * r['params'] / 2 ** 20:>11.0f} | "
              f"{r['peak_mib']:>12.0f}")
    print("weights: 4 bytes per parameter (float32); peak RSS: the whole process at its largest, the "
          "random init's float64 draws included")


def warm_median_seconds(fn, repeats):
    fn()                                                # warm-up: Numba compile, first allocations
    return median_seconds(fn, repeats)


def student_step(student, optimizer, batch, distiller=None, indices=None):
    """One optimizer step as train() takes it (one micro-batch)."""
    params, grads = trainable(student, distiller)
    forward_backward(student, batch, 1.0 if distiller is None else 0.2, distiller, indices)
    clip_grad_norm(grads, 1.0)
    optimizer.step(params, grads, lr=1e-4)
    zero_grads(grads)


def cache_bytes_per_token(folder, n_tokens):
    return sum(f.stat().st_size for f in Path(folder).iterdir()) / n_tokens


def main():
    args = ARGS
    if args.shape:
        return time_shape(args.shape, args.batch, args.seq)
    if args.shapes:
        return shape_table(args)
    repeats = 1 if args.quick else args.repeats
    s_cfg, t_cfg = (QUICK_STUDENT, QUICK_TEACHER) if args.quick else (STUDENT, TEACHER)
    student = MiniTransformer(TransformerConfig(**s_cfg), seed=0)
    teacher = TransformerTeacher("teacher", "minillm", MiniTransformer(TransformerConfig(**t_cfg), seed=1))
    T = s_cfg["max_seq_length"]
    batch = np.random.default_rng(0).integers(0, s_cfg["vocab_size"], size=(args.batch, T + 1))
    indices = np.arange(args.batch)
    ratio = teacher.model.num_parameters() / student.num_parameters()
    print(f"student {student.num_parameters():,} parameters, teacher {teacher.model.num_parameters():,} "
          f"({ratio:.1f}x); batch {args.batch} x {T} tokens, float32, threads {args.threads}, "
          f"median of {repeats} after a warm-up")

    plain = make_optimizer(student)
    live = KnowledgeTransfer(student, [(teacher, 1.0)], DistillConfig())
    live_opt = make_optimizer(student, live)
    with tempfile.TemporaryDirectory() as tmp:
        cached = KnowledgeTransfer(student, [(teacher, 1.0)], DistillConfig())
        cache = TeacherOutputCache(Path(tmp) / "teacher", "teacher", args.topk, 1.0, args.batch, T)
        cached.attach_cache(cached.links[0], cache)
        cached_opt = make_optimizer(student, cached)
        rows = [
            ("student step (CE)", warm_median_seconds(lambda: student_step(student, plain, batch), repeats)),
            ("teacher forward (inference)", warm_median_seconds(lambda: teacher.forward(batch[:, :-1]), repeats)),
            ("distilled step, teacher live", warm_median_seconds(
                lambda: student_step(student, live_opt, batch, live, indices), repeats)),
            ("distilled step, top-k cache", warm_median_seconds(       # warm-up fills the cache
                lambda: student_step(student, cached_opt, batch, cached, indices), repeats)),
        ]
        per_token = cache_bytes_per_token(Path(tmp) / "teacher", args.batch * T)
    base = rows[0][1]
    print(f"\n{'measured':<30} | {'ms':>9} | {'vs student step':>15}")
    for name, seconds in rows:
        print(f"{name:<30} | {1000 * seconds:>9.1f} | {seconds / base:>14.2f}x")
    print(f"\ntop-k cache on disk: {per_token:.1f} bytes per token (k={args.topk}: "
          f"{8 * args.topk} bytes of ids and log-probs, the rest flags and meta.json); "
          f"{per_token * 1e6 / 2 ** 20:.0f} MiB per million training tokens")


if __name__ == "__main__":
    main()
