"""Knowledge distillation in one short script, read top to bottom (what `train.py --use_mock`
does, without the command line, checkpoints and logging).

    python training/mock_training_demo.py            # 1-4 min on 2 busy CPU cores (README: Demos)
    python training/mock_training_demo.py --steps 30 --plot   # + demos/output/mock_training_demo.png

1. Tokenize the bundled text with a small BPE vocabulary.
2. Train a teacher: a MiniTransformer twice as wide and deep as the student, plain cross-entropy.
3. Train the same student twice for the same steps: from the labels alone, and from the labels
   plus the teacher's distribution (KL) and hidden states (through a learned projection).
4. Compare validation perplexities. Every number is computed here; nothing is written in.
"""
import argparse
import importlib.util
import json
import math
import os
import tempfile
from pathlib import Path

from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from tokenizer.bpe_tokenizer import BPETokenizer
from training.data import encode_documents, load_texts, make_sequences, split_train_val
from training.knowledge_transfer import DISTILL_CE_WEIGHT, DistillConfig, KnowledgeTransfer
from training.loop import TrainConfig, evaluate, make_optimizer, train
from training.mock import mock_teacher_config
from training.teachers import TransformerTeacher

REPO_ROOT = Path(__file__).resolve().parents[1]


def run(steps, teacher_steps, lr, batch_size, log_dir):
    """Steps 1-4 above; each run's per-step losses go to log_dir/NAME.jsonl. Returns
    {name: validation perplexity}."""
    # 1. data: documents -> train/val split -> BPE ids -> windows of 64 (+1 for the targets)
    texts = load_texts(REPO_ROOT / "data" / "sample_training.txt")
    train_texts, val_texts = split_train_val(texts, 0.1, seed=0)
    tokenizer = BPETokenizer(vocab_size=512)
    tokenizer.train(train_texts)
    train_seq = make_sequences(encode_documents(tokenizer, train_texts), 64)
    val_seq = make_sequences(encode_documents(tokenizer, val_texts), 64)
    student_config = TransformerConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=2,
                                       num_heads=4, num_kv_heads=2, intermediate_size=192, max_seq_length=64)

    # 2. the teacher learns from the labels only (no teachers of its own)
    teacher_model = MiniTransformer(mock_teacher_config(student_config), seed=1)
    plain = TrainConfig(steps=teacher_steps, batch_size=batch_size, lr=lr, warmup_steps=10, seed=1)
    train(teacher_model, make_optimizer(teacher_model, lr=lr), train_seq, [], plain, desc="teacher",
          metrics_path=log_dir / "teacher.jsonl")
    teacher = TransformerTeacher("teacher", "minillm", teacher_model)

    # 3. the same student (same seed, same batches) alone, then with the teacher:
    #    alone:     loss = CE                 distilled: loss = 0.2 CE + 0.8 KL + 0.5 hidden
    results = {"teacher": evaluate(teacher_model, val_seq)}
    for name, ce_weight, teachers in [("student alone", 1.0, []),
                                      ("student distilled", DISTILL_CE_WEIGHT, [(teacher, 1.0)])]:
        student = MiniTransformer(student_config, seed=0)
        distiller = KnowledgeTransfer(student, teachers, DistillConfig(hidden_weight=0.5),
                                      tokenizer) if teachers else None
        run_config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=10,
                                 ce_weight=ce_weight, seed=0)
        train(student, make_optimizer(student, distiller, lr), train_seq, [], run_config, distiller,
              desc=name, metrics_path=log_dir / f"{name}.jsonl")
        results[name] = evaluate(student, val_seq)

    # 4. perplexity = exp(mean cross-entropy) on text none of them trained on
    print(f"{'model':<20} {'val perplexity':>15}")
    for name, loss in results.items():
        print(f"{name:<20} {math.exp(loss):>15.2f}")
    return {name: math.exp(loss) for name, loss in results.items()}


def plot(ppl, log_dir, out_dir):
    """Left: the training cross-entropy of each run against its step (the distilled student's
    loss also holds the teacher's terms; its CE alone is drawn). Right: validation perplexity."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for name in ppl:
        rows = [json.loads(line) for line in open(log_dir / f"{name}.jsonl")]
        ax1.plot([r["step"] for r in rows], [r["ce"] for r in rows], label=f"{name} ({len(rows)} steps)")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("training cross-entropy (nats per token)")
    ax1.set_title("training: cross-entropy on the labels")
    ax1.legend()
    bars = ax2.bar(list(ppl), list(ppl.values()), color=["0.5", "tab:orange", "tab:green"])
    ax2.bar_label(bars, fmt="%.1f")
    ax2.set_ylabel("validation perplexity (lower is better)")
    ax2.set_title("held-out text, same steps for both students")
    fig.tight_layout()
    path = os.path.join(out_dir, "mock_training_demo.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=90, help="steps of each student (default: %(default)s)")
    p.add_argument("--teacher_steps", type=int, default=150, help="steps of the teacher (default: %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=16, help="default: %(default)s")
    p.add_argument("--plot", action="store_true", help="save mock_training_demo.png (needs matplotlib)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "demos", "output"), help="default: %(default)s")
    args = p.parse_args(argv)
    if min(args.steps, args.teacher_steps, args.batch_size) < 1:
        raise SystemExit("--steps, --teacher_steps and --batch_size must be at least 1")
    with tempfile.TemporaryDirectory(prefix="mock_demo_") as logs:
        ppl = run(args.steps, args.teacher_steps, args.lr, args.batch_size, Path(logs))
        if args.plot and importlib.util.find_spec("matplotlib") is None:
            print("\n--plot needs matplotlib (pip install matplotlib): no figure written")
        elif args.plot:
            os.makedirs(args.out, exist_ok=True)
            print(f"\nplot: {plot(ppl, Path(logs), args.out)}")
    return ppl


if __name__ == "__main__":
    main()
