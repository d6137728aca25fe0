"""Teacher adapters: every model the student can learn from, behind one small interface.

A teacher is any object with
    name          str, used in logs and in the --layer_map JSON ("llama", "flux", "ngram")
    kind          "llama" (Hugging Face LLaMA / Mistral folder), "flux" (a MiniLLM checkpoint)
                  or "ngram" (a count-based model fitted on the training stream)
    tokenizer     a BPETokenizer, or None meaning "the same tokenizer as the student"
    vocab_size    V_teacher
    num_layers    decoder layers (0 for the n-gram)
    hidden_size   C_teacher (None for the n-gram)
    forward(ids, hidden_layers=()) -> (logits (B, T, V_teacher), {layer: hidden (B, T, C_teacher)})
                  inference only: nothing is kept for a backward pass
Layers are numbered as in MiniTransformer.hidden_states: 0 = embedding output, i = output of
decoder block i (1..num_layers).

Also here: the offline cache of teacher top-k outputs (TeacherOutputCache), parsing of
--teacher specs and --layer_map, the automatic teacher->student layer map and the vocabulary
check. The distillation losses are in training/losses.py, the system that combines teachers
in training/knowledge_transfer.py.
"""
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from mini_llm import backend
from mini_llm.files import atomic_write
from mini_llm.model.transformer import MiniTransformer
from tokenizer.bpe_tokenizer import BPETokenizer
from training.losses import teacher_topk

KINDS = ("llama", "mistral", "flux", "ngram")      # mistral is read exactly like llama


# ----------------------------------------------------------------------------- transformer teachers

class TransformerTeacher:
    """A MiniTransformer (ours, or loaded from a Hugging Face LLaMA / Mistral folder) as a teacher."""

    def __init__(self, name, kind, model, tokenizer=None):
        self.name, self.kind, self.model, self.tokenizer = name, kind, model, tokenizer
        self.vocab_size = model.config.vocab_size
        self.num_layers = model.config.num_layers
        self.hidden_size = model.config.hidden_size

    def forward(self, ids, hidden_layers=()):
        """ids (B, T) -> logits (B, T, V), {i: hidden_states[i] (B, T, C)} for i in hidden_layers."""
        for i in hidden_layers:
            if not 0 <= i <= self.num_layers:
                raise ValueError(f"teacher {self.name} has hidden states 0..{self.num_layers}, asked for {i}")
        logits = self.model.forward(ids, keep_cache=False)
        hidden = {i: self.model.hidden_states[i] for i in hidden_layers}
        self.model.hidden_states = []          # let the other layers' activations go
        return logits, hidden


def _load_transformer_teacher(path, kind, name, dtype):
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"teacher path {path} is not a checkpoint: no config.json")
    model = MiniTransformer.from_pretrained(path, dtype=dtype)
    tokenizer = BPETokenizer.load(path) if (path / "tokenizer.json").is_file() else None
    return TransformerTeacher(name or kind, kind, model, tokenizer)


def load_llama_teacher(path, name=None, dtype=np.float32):
    """A Hugging Face LLaMA or Mistral folder: config.json, *.safetensors, and tokenizer.json
    when the teacher has its own tokenizer (without one it must share the student's)."""
    return _load_transformer_teacher(path, "llama", name, dtype)


def load_flux_teacher(path, name=None, dtype=np.float32):
    """A MiniLLM checkpoint folder (MiniTransformer.save_pretrained; train.py saves the
    tokenizer.json beside it)."""
    return _load_transformer_teacher(path, "flux", name, dtype)


# ----------------------------------------------------------------------------- n-gram teacher

class NGramTeacher:
    """An interpolated absolute-discounting n-gram model, the cheapest possible teacher.

    For order n with context h (the previous n-1 tokens) and next token w:
        P_n(w | h) = max(c(h w) - D_n, 0) / c(h)  +  D_n N(h) / c(h) * P_{n-1}(w | h')
    where c(h) counts h followed by anything, N(h) is the number of distinct tokens seen after
    h, h' drops h's oldest token, and D_n = n1 / (n1 + 2 n2) (n1, n2: n-grams seen once,
    twice). The discounted mass D_n N(h) / c(h) is exactly what the lower order receives, so
    every row sums to 1. An unseen context backs off fully; the chain ends at the add-one
    unigram (c(w) + 1) / (N + V), so no token has probability 0.

    Counts are kept as sorted int64 keys: an n-gram x_1..x_n is the base-V number
    ((x_1 V + x_2) V + ...) V + x_n, so the n-grams of one context are a contiguous run of the
    sorted keys and a context is found with one searchsorted.
    """

    kind = "ngram"
    tokenizer = None
    num_layers = 0
    hidden_size = None

    def __init__(self, vocab_size, order=3, name="ngram", dtype=np.float32):
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        if vocab_size < 1:
            raise ValueError(f"n-gram vocab_size must be >= 1, got {vocab_size}")
        if order > 1 and order * math.log2(vocab_size) >= 63:
            raise ValueError(f"n-gram order {order} with vocab size {vocab_size} does not fit in "
                             f"int64 keys: use a lower order")
        self.vocab_size, self.order, self.name, self.dtype = vocab_size, order, name, np.dtype(dtype)
        self.unigram = None        # (V,) add-one probabilities, set by fit
        self.tables = {}           # n -> dict of sorted arrays for order n >= 2

    def _key(self, windows):
        """(..., m) token windows -> (...,) int64 base-V numbers."""
        key = np.zeros(windows.shape[:-1], dtype=np.int64)
        for j in range(windows.shape[-1]):
            key = key * self.vocab_size + windows[..., j]
        return key

    def fit(self, stream):
        """Count 1..order-grams of a 1-D token stream. Returns self."""
        stream = np.asarray(backend.to_host(stream), dtype=np.int64)
        if stream.ndim != 1 or len(stream) == 0:
            raise ValueError(f"n-gram fit needs a non-empty 1-D token stream, got shape {stream.shape}")
        if stream.min() < 0 or stream.max() >= self.vocab_size:
            raise ValueError(f"n-gram fit: token ids must be in [0, {self.vocab_size}), "
                             f"got {stream.min()}..{stream.max()}")
        V = self.vocab_size
        self.unigram = (np.bincount(stream, minlength=V) + 1.0) / (len(stream) + V)   # (V,)
        self.tables = {}
        for n in range(2, min(self.order, len(stream)) + 1):
            grams = np.lib.stride_tricks.sliding_window_view(stream, n)              # (N-n+1, n)
            keys, counts = np.unique(self._key(grams), return_counts=True)           # sorted n-grams
            contexts, first = np.unique(keys // V, return_index=True)                # runs of one context
            n1, n2 = np.sum(counts == 1), np.sum(counts == 2)
            self.tables[n] = dict(
                next=keys % V, count=counts.astype(np.float64),
                contexts=contexts, first=first, types=np.diff(np.append(first, len(keys))),
                total=np.add.reduceat(counts, first).astype(np.float64),
                discount=n1 / (n1 + 2.0 * n2) if n1 > 0 else 0.5)
        return self

    def _discounted_rows(self, n, contexts):
        """The n-gram term max(c(h w) - D, 0) / c(h) as dense rows (U, V), one per context index
        in `contexts` (U,): each context's continuations are a run of `types` sorted n-grams."""
        table = self.tables[n]
        types, total = table["types"][contexts], table["total"][contexts]
        run_start = np.repeat(np.cumsum(types) - types, types)
        g = np.repeat(table["first"][contexts], types) + np.arange(types.sum()) - run_start  # n-gram ids
        rows = np.zeros((len(contexts), self.vocab_size), dtype=self.dtype)
        rows[np.repeat(np.arange(len(contexts)), types), table["next"][g]] = (
            np.maximum(table["count"][g] - table["discount"], 0.0) / np.repeat(total, types))
        return rows

    def _interpolate(self, probs, ids, n):
        """Turn probs (B*T, V) from order n-1 into order n, in place, at every position whose
        context of n-1 tokens was seen in training. Positions that share a context share its
        n-gram term, so it is built once per distinct context."""
        table = self.tables[n]
        B, T = ids.shape
        if T < n - 1:
            return
        ctx = self._key(np.lib.stride_tricks.sliding_window_view(ids, n - 1, axis=1)).reshape(-1)
        pos = (np.arange(B)[:, None] * T + np.arange(n - 2, T)[None, :]).reshape(-1)   # row of each ctx
        c = np.minimum(np.searchsorted(table["contexts"], ctx), len(table["contexts"]) - 1)
        seen = table["contexts"][c] == ctx
        pos, c = pos[seen], c[seen]
        contexts, which = np.unique(c, return_inverse=True)
        backoff = table["discount"] * table["types"][contexts] / table["total"][contexts]  # mass left to n-1
        probs[pos] = (probs[pos] * backoff[which, None].astype(self.dtype)
                      + self._discounted_rows(n, contexts)[which])

    def forward(self, ids, hidden_layers=()):
        """ids (B, T) -> log P(next token | ids[:, :t+1]) as logits (B, T, V), and {}.
        Position t uses the last min(order-1, t+1) tokens as its context."""
        if self.unigram is None:
            raise RuntimeError(f"n-gram teacher {self.name} must be fit on a token stream first")
        if len(hidden_layers):
            raise ValueError(f"teacher {self.name} is an n-gram model and has no hidden states")
        ids = np.asarray(backend.to_host(ids), dtype=np.int64)
        if ids.ndim != 2:
            raise ValueError(f"ids must be 2-D (batch, time), got shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token id outside the n-gram vocabulary (size {self.vocab_size})")
        B, T = ids.shape
        probs = np.tile(self.unigram.astype(self.dtype), (B * T, 1))                  # (B*T, V)
        for n in range(2, self.order + 1):
            if n in self.tables:
                self._interpolate(probs, ids, n)
        return backend.to_device(np.log(probs, out=probs).reshape(B, T, self.vocab_size)), {}


# ----------------------------------------------------------------------------- offline cache

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

    def fetch(self, teacher, indices, inputs):
        """The teacher's top-k for sequences `indices` with input ids `inputs` (b, T): read from
        the cache when stored, else computed by the teacher (teacher_topk) and stored."""
        if not self.has(indices):
            logits, _ = teacher.forward(inputs)
            topk_ids, topk_logprobs = teacher_topk(logits, self.k, self.meta["temperature"])
            self.put(indices, topk_ids, topk_logprobs)
        return self.get(indices)


# ----------------------------------------------------------------------------- command-line specs

def _parse_weight(spec, text):
    try:
        weight = float(text)
    except ValueError:
        raise ValueError(f"teacher spec {spec!r}: weight {text!r} is not a number") from None
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"teacher spec {spec!r}: weight must be a finite number >= 0, got {text}")
    return weight


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_teacher_spec(spec):
    """"KIND:PATH[:WEIGHT]" or "KIND=PATH" -> (kind, path, weight). "mistral" reads as "llama";
    an n-gram needs no path. With ':' the last part is the weight when there are three or more;
    "KIND=PATH" takes the whole rest as the path (for paths holding ':'), weight 1.
    Examples: "llama:models/tiny" -> ("llama", "models/tiny", 1.0);
    "flux:out/ckpt:0.5" -> ("flux", "out/ckpt", 0.5); "ngram:0.5" and "ngram::0.5" ->
    ("ngram", "", 0.5); "llama=C:/models/tiny" -> ("llama", "C:/models/tiny", 1.0)."""
    head, eq, rest = spec.partition("=")
    if eq and ":" not in head:                      # KIND=PATH: the path verbatim
        kind, path, weight = head.strip().lower(), rest, 1.0
        parts = [head]
    else:
        parts = spec.split(":")
        kind = parts[0].strip().lower()
        path = ":".join(parts[1:-1]) if len(parts) > 2 else (parts[1] if len(parts) == 2 else "")
        weight = _parse_weight(spec, parts[-1]) if len(parts) > 2 else 1.0
        if kind == "ngram" and len(parts) == 2 and _is_number(path):
            path, weight = "", _parse_weight(spec, path)     # "ngram:0.5": a weight, as it looks
    if kind not in KINDS:
        raise ValueError(f"teacher spec {spec!r}: unknown kind {parts[0]!r}, use one of {', '.join(KINDS)}")
    if kind != "ngram" and not path:
        raise ValueError(f"teacher spec {spec!r}: a {kind} teacher needs a path (KIND:PATH[:WEIGHT], "
                         f"or KIND=PATH for a path holding ':')")
    return ("llama" if kind == "mistral" else kind), path, weight


def auto_layer_map(teacher_layers, student_layers):
    """Match layers spread evenly over depth: {teacher hidden index: student hidden index}.

    The deeper model's layers are sampled at the shallower one's relative depths (rounded),
    so the last layers always meet. Teacher 12, student 4 -> {3: 1, 6: 2, 9: 3, 12: 4};
    teacher 2, student 4 -> {1: 2, 2: 4}. A teacher without layers (n-gram) -> {}.
    """
    m = min(teacher_layers, student_layers)
    return {(2 * j * teacher_layers + m) // (2 * m): (2 * j * student_layers + m) // (2 * m)
            for j in range(1, m + 1)}


def _layer_index(value, what, num_layers, teacher_name):
    """A hidden-state index from JSON (an int, or an int written as a string) that exists."""
    try:
        if isinstance(value, (bool, float)):
            raise ValueError
        i = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"layer map for {teacher_name}: {what} layer {value!r} is not an integer") from None
    if not 0 <= i <= num_layers:
        raise ValueError(f"layer map for {teacher_name}: {what} layer {i} does not exist "
                         f"(hidden states 0..{num_layers}, 0 = embeddings)")
    return i


def parse_layer_map(json_text_or_dict, teacher_name, teacher_layers, student_layers):
    """This teacher's {teacher layer: student layer} from --layer_map, e.g.
    '{"llama": {"8": 1, "16": 2}}'. No map, or no entry for this teacher, means auto_layer_map;
    an empty entry ({"llama": {}}) means no hidden-state matching for it."""
    spec = json_text_or_dict
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return auto_layer_map(teacher_layers, student_layers)
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(f"layer map is not valid JSON (column {e.colno}): {e.msg}") from None
    if not isinstance(spec, dict):
        raise ValueError(f'layer map must be a JSON object like {{"llama": {{"8": 1}}}}, got {type(spec).__name__}')
    if teacher_name not in spec:
        return auto_layer_map(teacher_layers, student_layers)
    pairs = spec[teacher_name]
    if not isinstance(pairs, dict):
        raise ValueError(f"layer map for {teacher_name} must be an object of teacher layer: student layer")
    return {_layer_index(t, "teacher", teacher_layers, teacher_name):
            _layer_index(s, "student", student_layers, teacher_name) for t, s in pairs.items()}


def same_tokenizer(a, b):
    """True when two BPETokenizers turn every text into the same ids: same vocabulary, merges,
    special tokens, pre-tokenizer and normalizer (equal sizes are not enough)."""
    return (a.vocab == b.vocab and a.merges == b.merges and a.special_tokens == b.special_tokens
            and a.pre_tokenizer == b.pre_tokenizer and a.normalizer == b.normalizer)


def check_vocab(teacher, student_vocab_size, token_level=True):
    """Token-level losses compare probabilities token by token, so both vocabularies must be
    the same size (and the same tokens: the caller gives the student the teacher's tokenizer)."""
    if token_level and teacher.vocab_size != student_vocab_size:
        raise ValueError(f"teacher {teacher.name} has a vocabulary of {teacher.vocab_size} tokens, the "
                         f"student {student_vocab_size}: for token-level KL pass the teacher's tokenizer "
                         f"with --tokenizer_path, or use the cross-vocabulary (ULD) loss")
