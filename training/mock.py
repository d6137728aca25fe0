"""Stand-in teachers for `python train.py --use_mock`: real models, built locally, no download.

1. A larger MiniTransformer (twice as wide, twice as deep as the student) trained briefly on the
   same training split with plain cross-entropy, in this run. It is saved under
   output_dir/mock_teacher with a fingerprint of its data and settings, so the next run with
   the same data loads it instead of training it again. Weights and fingerprint are written
   as one unit (save_mock_teacher); an unreadable fingerprint means: train it again.
2. An n-gram model counted on the same training split (logits only, no hidden states).
Both are genuine teachers: every number they contribute is computed from the data.
"""
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from mini_llm.files import atomic_write, fsync_dir
from mini_llm.model.transformer import MiniTransformer
from training.loop import TrainConfig, make_optimizer, train
from training.ngram_teacher import NGramTeacher
from training.teacher_cache import sequences_fingerprint
from training.teachers import TransformerTeacher


def mock_teacher_config(student_config):
    c = student_config
    return replace(c, hidden_size=2 * c.hidden_size, num_layers=2 * c.num_layers,
                   intermediate_size=2 * c.intermediate_size, head_dim=None)   # D resolved anew


def read_fingerprint(folder):
    """The stored fingerprint of a cached mock teacher, or (None, why not)."""
    stamp = Path(folder) / "fingerprint.json"
    if not stamp.is_file():
        return None, None
    try:
        return json.loads(stamp.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{stamp} is unreadable ({type(e).__name__})"


def save_mock_teacher(folder, model, tokenizer, fingerprint):
    """Weights, tokenizer and fingerprint as one unit: all written into folder.tmp, which then
    takes the place of folder. A crash leaves the old unit, no unit, or the new one: never new
    weights under an old fingerprint (nor the reverse)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save(tmp / "tokenizer.json")
    atomic_write(tmp / "fingerprint.json", json.dumps(fingerprint, indent=1))
    fsync_dir(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)


def build_mock_transformer_teacher(student_config, tokenizer, train_seq, out_dir, steps,
                                   batch_size, lr, seed):
    """Load the cached mock teacher if its fingerprint matches, else train and save it."""
    config = mock_teacher_config(student_config)
    folder = Path(out_dir) / "mock_teacher"
    fingerprint = dict(data=sequences_fingerprint(train_seq), config=config.to_dict(),
                       steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    stored, problem = read_fingerprint(folder)
    if problem:
        print(f"mock teacher: {problem}; training it again")
    if stored == fingerprint:
        print(f"mock teacher: loaded from {folder} (same data and settings)")
        model = MiniTransformer.from_pretrained(folder)
    else:
        model = MiniTransformer(config, seed=seed + 1)
        print(f"mock teacher: training a {model.num_parameters():,}-parameter model "
              f"({config.num_layers} layers, width {config.hidden_size}) for {steps} steps")
        # labels only; the CE scale 0.2 trains it better than 1.0 under the global-norm clip
        # (measured on the sample text: val ppl 43.0 vs 49.3)
        run = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(1, steps // 10),
                          ce_weight=0.2, seed=seed + 1)
        _, interrupted = train(model, make_optimizer(model, lr=lr), train_seq, [], run,
                               desc="mock teacher")
        if interrupted:                  # never cache a half-trained teacher under the full fingerprint
            raise KeyboardInterrupt
        save_mock_teacher(folder, model, tokenizer, fingerprint)
    return TransformerTeacher("mock_llama", "minillm", model, tokenizer=None)


def build_ngram_teacher(vocab_size, train_stream, order=3):
    teacher = NGramTeacher(vocab_size, order=order, name="ngram").fit(train_stream)
    print(f"n-gram teacher: order {order}, fitted on {len(train_stream):,} tokens")
    return teacher
