"""Knowledge distillation in one short script, read top to bottom (what `train.py --use_mock`
does, without the command line, checkpoints and logging).

    python training/mock_training_demo.py            # about half a minute on 2 CPU cores

1. Tokenize the bundled text with a small BPE vocabulary.
2. Train a teacher: a MiniTransformer twice as wide and deep as the student, plain cross-entropy.
3. Train the same student twice for the same steps: from the labels alone, and from the labels
   plus the teacher's distribution (KL) and hidden states (through a learned projection).
4. Compare validation perplexities. Every number is computed here; nothing is written in.
"""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # run from anywhere

from mini_llm.model.transformer import MiniTransformer, TransformerConfig  # noqa: E402
from tokenizer.bpe_tokenizer import BPETokenizer  # noqa: E402
from training.data import encode_documents, load_texts, make_sequences, split_train_val  # noqa: E402
from training.knowledge_transfer import DISTILL_CE_WEIGHT, DistillConfig, KnowledgeTransfer  # noqa: E402
from training.loop import TrainConfig, evaluate, make_optimizer, train  # noqa: E402
from training.mock import mock_teacher_config  # noqa: E402
from training.teachers import TransformerTeacher  # noqa: E402


def main(steps=90, teacher_steps=150, lr=3e-3, batch_size=16):
    # 1. data: documents -> train/val split -> BPE ids -> windows of 64 (+1 for the targets)
    texts = load_texts(Path(__file__).resolve().parents[1] / "data" / "sample_training.txt")
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
    train(teacher_model, make_optimizer(teacher_model, lr=lr), train_seq, [], plain, desc="teacher")
    teacher = TransformerTeacher("teacher", "flux", teacher_model)

    # 3. the same student (same seed, same batches) alone, then with the teacher:
    #    alone:     loss = CE                 distilled: loss = 0.2 CE + 0.8 KL + 0.5 hidden
    results = {"teacher": evaluate(teacher_model, val_seq)}
    for name, ce_weight, teachers in [("student alone", 1.0, []),
                                      ("student distilled", DISTILL_CE_WEIGHT, [(teacher, 1.0)])]:
        student = MiniTransformer(student_config, seed=0)
        distiller = KnowledgeTransfer(student, teachers, DistillConfig(hidden_weight=0.5),
                                      tokenizer) if teachers else None
        run = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=10,
                          ce_weight=ce_weight, seed=0)
        train(student, make_optimizer(student, distiller, lr), train_seq, [], run, distiller, desc=name)
        results[name] = evaluate(student, val_seq)

    # 4. perplexity = exp(mean cross-entropy) on text none of them trained on
    print(f"{'model':<20} {'val perplexity':>15}")
    for name, loss in results.items():
        print(f"{name:<20} {math.exp(loss):>15.2f}")
    return {name: math.exp(loss) for name, loss in results.items()}


if __name__ == "__main__":
    main()
