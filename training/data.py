"""Training data: text files -> documents -> one token stream -> fixed-length sequences.

    texts = load_texts("data/sample_training.txt")        # list of documents (str)
    train, val = split_train_val(texts, 0.1)              # at least one document on each side
    stream = encode_documents(tokenizer, train)           # (N,) int64: doc ids, eos, doc ids, eos, ...
    seqs = make_sequences(stream, seq_len=128)            # (S, 129): inputs [:, :-1], targets [:, 1:]

training/loop.py then draws the batches (micro_batch: row indices from a seeded generator, so
an offline teacher cache can look up its stored outputs by index).

Everything here runs on the host with NumPy; the training loop moves batches to the device.
Bad input (missing, empty, binary or non-UTF-8 file, broken JSON, a record without text) raises a
ValueError with one line naming the file and the problem. This file knows nothing of models.
"""
import json
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

PROGRESS_MIN_TEXTS = 1000       # show a progress bar when encoding at least this many documents


# ----------------------------------------------------------------------------- loading

def _txt_documents(text, name):
    """Documents are paragraphs (separated by blank lines) when the file has blank lines,
    else lines. "a\\nb\\n\\nc" -> ["a\\nb", "c"];  "a\\nb" -> ["a", "b"]."""
    blank_line = re.compile(r"\n[ \t\r\f\v]*\n")
    pieces = blank_line.split(text) if blank_line.search(text) else text.splitlines()
    return [p.strip() for p in pieces]


def _record_text(record, where):
    """The text of one JSON record: a string, or an object with a string "text" field."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise ValueError(f"{where} is a {type(record).__name__}, expected a string or an object with 'text'")
    if "text" not in record:
        raise ValueError(f"{where} has no 'text' field")
    if not isinstance(record["text"], str):
        raise ValueError(f"{where} has a 'text' field that is a {type(record['text']).__name__}, not a string")
    return record["text"]


def _json_documents(text, name):
    """A JSON list of strings or of {"text": ...} objects. Items are numbered from 1."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, list):
        raise ValueError(f"{name}: expected a JSON list of documents, got a {type(data).__name__}")
    return [_record_text(record, f"{name}: item {i}") for i, record in enumerate(data, start=1)]


def _jsonl_documents(text, name):
    """One JSON string or {"text": ...} object per line; blank lines are skipped."""
    documents = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: invalid JSON on line {lineno} column {e.colno}: {e.msg}") from None
        documents.append(_record_text(record, f"{name}: line {lineno}"))
    return documents


READERS = {".txt": _txt_documents, ".json": _json_documents, ".jsonl": _jsonl_documents}
ENCODING_ERRORS = ("strict", "replace", "ignore")      # train.py / evaluate.py --encoding_errors


def read_data_file(path, errors="strict"):
    """The text of a data file: UTF-8, without a leading byte-order mark. One-line ValueError
    for a missing file, a folder, an empty file, a binary file (it holds NUL bytes) or invalid
    UTF-8 (unless errors is "replace" or "ignore")."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a data file")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{path}: file is empty")
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(f"{path}: a NUL byte at offset {nul}: a binary file (or UTF-16), not UTF-8 text")
    try:
        text = data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 at byte offset {e.start} ({e.reason}); "
                         f"--encoding_errors replace substitutes U+FFFD for bad bytes") from None
    return text.removeprefix("\ufeff")                    # a BOM marks the encoding, it is not text


def load_texts(path, errors="strict", notice=print):
    """The documents of a .txt, .json or .jsonl file, as a list of non-empty strings.

    .txt   documents separated by blank lines; a file without blank lines has one per line
    .json  ["doc", ...] or [{"text": "doc", ...}, ...]
    .jsonl one "doc" or {"text": "doc", ...} per line
    Any other name (README, GPL-3, notes.md) is read like .txt, and notice(...) says so.
    Empty documents are dropped; a file with none left is an error.
    """
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    text = read_data_file(path, errors)
    if reader is None:
        reader = _txt_documents
        notice(f"note: {path} is not .txt, .json or .jsonl; reading it as plain text")
    documents = [d for d in reader(text, path.name) if d.strip()]
    if not documents:
        raise ValueError(f"{path}: no documents (every record is empty)")
    return documents


# ----------------------------------------------------------------------------- splitting

BOUNDARIES = (r"\n[ \t]*\n", r"[.!?][\"')\]]*\s+", r"\s+")     # paragraph, sentence, word


def _cut_near(text, target):
    """An index to cut `text` near `target`: the end of the closest paragraph break, else
    sentence end, else space, within half the smaller side's size; else exactly `target`."""
    tolerance = max(1, min(target, len(text) - target) // 2)
    for pattern in BOUNDARIES:
        cuts = [m.end() for m in re.finditer(pattern, text) if 0 < m.end() < len(text)]
        cuts = [c for c in cuts if abs(c - target) <= tolerance]
        if cuts:
            return min(cuts, key=lambda c: abs(c - target))
    return target


def split_train_val(texts, val_fraction=0.1, seed=0):
    """Split documents into (train, val), both non-empty, each keeping the original order.

    With >= 2 documents, round(val_fraction * n) of them (at least 1, at most n - 1), chosen at
    random by `seed`, go to val. With one document the text itself is cut: the last
    ~val_fraction of its characters, starting at a paragraph or sentence boundary when one is
    near, become the validation document.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(texts) == 0:
        raise ValueError("split_train_val: no documents to split")
    if len(texts) == 1:
        text = texts[0]
        if len(text) < 2:
            raise ValueError(f"split_train_val: one document of {len(text)} character(s) cannot be split")
        target = min(len(text) - 1, max(1, round(len(text) * (1.0 - val_fraction))))
        cut = _cut_near(text, target)
        return [text[:cut]], [text[cut:]]
    n = len(texts)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return ([t for t, v in zip(texts, is_val) if not v], [t for t, v in zip(texts, is_val) if v])


# ----------------------------------------------------------------------------- tokens

def encode_documents(tokenizer, texts):
    """One token stream: each document's ids followed by tokenizer.eos_id (when it has one).

    The eos token marks where one document ends, so the model learns not to carry a sentence
    across documents. Returns (N,) int64; a tqdm bar shows when there are many texts.
    """
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    pieces = [np.asarray(tokenizer.encode(text) + eos, dtype=np.int64)
              for text in tqdm(texts, desc="encoding", unit="doc", disable=len(texts) < PROGRESS_MIN_TEXTS)]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def make_sequences(stream, seq_len):
    """Cut a token stream into rows of seq_len + 1 tokens: inputs row[:-1], targets row[1:].

    Row i is stream[i*seq_len : i*seq_len + seq_len + 1]: the inputs do not overlap and
    consecutive rows share one boundary token, so every token after the first is a target
    exactly once. Example: stream [0..6], seq_len 3 -> [[0 1 2 3], [3 4 5 6]].
    A stream shorter than seq_len + 1 gives one shorter row (the whole stream).
    stream (N,) int -> (S, seq_len + 1) int64 with S = (N - 1) // seq_len.
    """
    stream = np.asarray(stream, dtype=np.int64)
    if stream.ndim != 1:
        raise ValueError(f"make_sequences: the token stream must be 1-D, got shape {stream.shape}")
    if seq_len < 1:
        raise ValueError(f"make_sequences: seq_len must be >= 1, got {seq_len}")
    if len(stream) < 2:
        raise ValueError(f"make_sequences: need at least 2 tokens (one input, one target), got {len(stream)}")
    if len(stream) < seq_len + 1:
        return stream[None, :].copy()
    num_rows = (len(stream) - 1) // seq_len
    rows = np.arange(num_rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]   # (S, seq_len+1)
    return stream[rows]
