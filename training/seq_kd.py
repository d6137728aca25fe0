"""Sequence-level knowledge distillation (Kim & Rush, 2016): train on what the teacher writes.

Before training, the teacher continues N prompts taken from the training text (the first
`prompt_tokens` tokens of N training sequences, sampled at temperature 1 with the KV cache),
and its text joins the training data as ordinary sequences: the student then learns by plain
cross-entropy (and the other terms) on teacher-written text as well as on the data. It needs
no teacher at training time for those rows, only once, before.

The written sequences are cached in output_dir/seq_kd with a fingerprint of the data, the
teacher's weights and the settings; a later run with the same fingerprint reads them back.
"""
import hashlib
import json
from pathlib import Path

import numpy as np

from mini_llm import backend
from mini_llm.files import atomic_write
from mini_llm.generate import generate
from training.data import make_sequences
from training.teacher_cache import sequences_fingerprint


def weights_fingerprint(model):
    """A short digest of every parameter of a MiniTransformer (names, shapes, values)."""
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(model.params):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(backend.to_host(model.params[name])).tobytes())
    return digest.hexdigest()


def teacher_writes(teacher, train_seq, n, prompt_tokens, seed, eos_id=None):
    """(n, M + 1) sequences of teacher-written text, M = train_seq.shape[1] - 1: prompt i is
    the start of training sequence i (spread over the data), continued to M tokens by the
    teacher. The texts are joined like documents (eos_id between them, when there is one) and
    cut like the training data (make_sequences)."""
    M = train_seq.shape[1] - 1
    rows = np.linspace(0, len(train_seq) - 1, n).astype(np.int64)           # (n,) spread out
    prompts = train_seq[rows, :prompt_tokens]                               # (n, P)
    written = generate(teacher.model, prompts, M - prompt_tokens, temperature=1.0, seed=seed)  # (n, M)
    if eos_id is not None:
        written = np.concatenate([written, np.full((n, 1), eos_id)], axis=1)     # (n, M + 1)
    return make_sequences(written.reshape(-1), M)[:n]


def check_request(n, prompt_tokens, max_seq_length, has_teacher):
    """The settings alone, before any work: N >= 0, a prompt that leaves room, a teacher."""
    if n < 0:
        raise ValueError(f"--seq_kd must be >= 0, got {n}")
    if n == 0:
        return
    if not 1 <= prompt_tokens < max_seq_length:
        raise ValueError(f"--seq_kd_prompt must lie in [1, {max_seq_length - 1}], got {prompt_tokens}")
    if not has_teacher:
        raise ValueError("--seq_kd needs a teacher that writes text: a transformer teacher "
                         "(--teacher llama:... or minillm:..., or --use_mock); an n-gram cannot")


def check_settings(n, prompt_tokens, teacher, max_seq_length):
    """The request, then the writer itself (the first transformer teacher, or None)."""
    check_request(n, prompt_tokens, max_seq_length, teacher is not None)
    if n == 0:
        return
    if teacher.tokenizer is not None:
        raise ValueError(f"--seq_kd: teacher {teacher.name} has its own tokenizer; its text must be "
                         "in the student's tokens")
    if teacher.model.config.sliding_window is None and teacher.model.config.max_seq_length < max_seq_length:
        raise ValueError(f"--seq_kd: teacher {teacher.name} reads at most "
                         f"{teacher.model.config.max_seq_length} tokens, fewer than the student's "
                         f"max_seq_length {max_seq_length}")


def load_or_write(folder, teacher, train_seq, n, prompt_tokens, seed, eos_id=None):
    """The teacher's n sequences, read from `folder` when its fingerprint matches, else written
    now and saved (sequences first, fingerprint last, each through a rename: a half-written
    cache has no fingerprint and is written again; mini_llm.files.atomic_write). Returns
    (sequences, message)."""
    folder = Path(folder)
    fingerprint = dict(data=sequences_fingerprint(train_seq), teacher=teacher.name,
                       weights=weights_fingerprint(teacher.model), n=n, prompt_tokens=prompt_tokens,
                       seed=seed, eos_id=eos_id)
    stamp, path = folder / "fingerprint.json", folder / "sequences.npy"
    try:
        if json.loads(stamp.read_text()) == fingerprint:
            return np.load(path), f"seq-KD: {n} teacher-written sequences read from {folder}"
    except (OSError, ValueError):
        pass
    sequences = teacher_writes(teacher, train_seq, n, prompt_tokens, seed, eos_id)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)                   # invalid until both files are complete
    atomic_write(path, lambda f: np.save(f, sequences))
    atomic_write(stamp, json.dumps(fingerprint, indent=1))
    return sequences, f"seq-KD: teacher {teacher.name} wrote {n} sequences (saved in {folder})"
