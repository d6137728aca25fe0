"""Offline distillation's store: a teacher's top-k outputs per training sequence, on disk.

KnowledgeTransfer.cached_term fills it the first time a sequence is seen and reads it after;
losses.topk_kl_forward compares the student with what it holds.
"""
import hashlib
import json
from pathlib import Path

import numpy as np

from mini_llm import backend
from mini_llm.files import atomic_write


def sequences_fingerprint(sequences):
    """A short hex digest of a token array (its shape and values), for TeacherOutputCache."""
    a = np.ascontiguousarray(backend.to_host(sequences), dtype=np.int64)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()[:16]


class TeacherOutputCache:
    """Offline distillation: the teacher's top-k (ids, log-probs) per training sequence, on disk.

    A slow teacher runs once per sequence over the whole training; later epochs and later runs
    read its outputs back. Files in `directory` (one directory per teacher):
        meta.json            k, temperature, teacher name, shapes, fingerprint of the sequences
        topk_ids.npy         (S, T, k) int32     memory-mapped
        topk_logprobs.npy    (S, T, k) float32   log p_teacher at `temperature`, best first
        filled.npy           (S,) bool           which sequences are stored
    If the stored meta differs from the one asked for, the cache starts fresh; `message` says
    what happened (new / reused / restarted and why) for the caller to print.
    """

    def __init__(self, directory, teacher_name, k, temperature, num_sequences, seq_len, fingerprint=""):
        if k < 1:
            raise ValueError(f"teacher cache: k must be >= 1, got {k}")
        if not temperature > 0:
            raise ValueError(f"teacher cache: temperature must be > 0, got {temperature}")
        if num_sequences < 1 or seq_len < 1:
            raise ValueError(f"teacher cache: needs num_sequences >= 1 and seq_len >= 1, "
                             f"got {num_sequences} and {seq_len}")
        self.directory = Path(directory)
        self.k, self.seq_len = int(k), int(seq_len)
        self.meta = dict(teacher=teacher_name, k=int(k), temperature=float(temperature),
                         num_sequences=int(num_sequences), seq_len=int(seq_len), fingerprint=fingerprint)
        changed = self._changed_fields()
        if changed is None:
            self._open("r+")
            self.message = (f"teacher cache {self.directory}: reusing {int(self.filled.sum())}/"
                            f"{num_sequences} stored sequences")
        else:
            self._create()
            self.message = f"teacher cache {self.directory}: " + (
                f"{', '.join(changed)} changed, starting fresh" if changed else "new")

    def _changed_fields(self):
        """None if the stored cache matches self.meta, else the list of differing fields
        ([] when there is no usable cache)."""
        meta_path = self.directory / "meta.json"
        try:
            stored = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return []
        files = ("topk_ids.npy", "topk_logprobs.npy", "filled.npy")
        if not all((self.directory / f).is_file() for f in files):
            return []
        changed = [key for key, value in self.meta.items() if stored.get(key) != value]
        return changed or None

    def _open(self, mode):
        self.ids = np.load(self.directory / "topk_ids.npy", mmap_mode=mode)
        self.logprobs = np.load(self.directory / "topk_logprobs.npy", mmap_mode=mode)
        self.filled = np.load(self.directory / "filled.npy", mmap_mode=mode)

    def _create(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "meta.json").unlink(missing_ok=True)    # invalid until fully written
        shape = (self.meta["num_sequences"], self.seq_len, self.k)
        open_memmap = np.lib.format.open_memmap
        self.ids = open_memmap(self.directory / "topk_ids.npy", mode="w+", dtype=np.int32, shape=shape)
        self.logprobs = open_memmap(self.directory / "topk_logprobs.npy", mode="w+", dtype=np.float32, shape=shape)
        self.filled = open_memmap(self.directory / "filled.npy", mode="w+", dtype=np.bool_, shape=shape[:1])
        self.filled[:] = False
        self.filled.flush()
        atomic_write(self.directory / "meta.json", json.dumps(self.meta, indent=1))

    def _indices(self, indices):
        indices = np.asarray(backend.to_host(indices), dtype=np.int64).reshape(-1)
        S = self.meta["num_sequences"]
        if indices.size and (indices.min() < 0 or indices.max() >= S):
            raise ValueError(f"teacher cache: sequence index outside 0..{S - 1}")
        return indices

    def has(self, indices):
        """True when every sequence in `indices` is stored."""
        return bool(self.filled[self._indices(indices)].all())

    def get(self, indices):
        """(topk_ids (b, T, k) int32, topk_logprobs (b, T, k) float32) host arrays."""
        indices = self._indices(indices)
        if not self.filled[indices].all():
            missing = indices[~self.filled[indices]]
            raise ValueError(f"teacher cache: sequence {int(missing[0])} is not stored")
        return np.array(self.ids[indices]), np.array(self.logprobs[indices])

    def put(self, indices, topk_ids, topk_logprobs):
        """Store (b, T, k) outputs for the sequences `indices`; the data is flushed before the
        filled flags, so an interrupted run never marks a half-written row as stored."""
        indices = self._indices(indices)
        topk_ids, topk_logprobs = backend.to_host(topk_ids), backend.to_host(topk_logprobs)
        expected = (len(indices), self.seq_len, self.k)
        if topk_ids.shape != expected or topk_logprobs.shape != expected:
            raise ValueError(f"teacher cache: expected outputs of shape {expected}, got "
                             f"{topk_ids.shape} and {topk_logprobs.shape}")
        self.ids[indices] = topk_ids
        self.logprobs[indices] = topk_logprobs
        self.ids.flush()
        self.logprobs.flush()
        self.filled[indices] = True
        self.filled.flush()
