"""The threaded path of BPETokenizer (GPT-2 / GPT-4 patterns): texts -> groups of code points
-> the Numba kernels of pretokenize_kernels.py (encoding) and count_kernels.py (counting the
chunks for training), on all of Numba's threads.

A group holds about GROUP_CHARS characters; a longer text is cut first, only where a chunk of
those patterns always ends (`cut_long`), so every way of cutting gives the ids of the whole.
"""
import itertools

import numpy as np
import regex

from tokenizer import count_kernels, pretokenize_kernels

GROUP_CHARS = 1 << 22         # characters per kernel call (20-40 bytes each)
LETTER_END = regex.compile(r"\p{L}(?=\P{L})")  # a letter, and a non-letter after it


def cut_long(text, size):
    """Cut text into parts of about `size` characters, each cut just after a letter that a
    non-letter follows: a chunk of the GPT-2 / GPT-4 patterns always ends there
    (pretokenize_kernels.py), so the parts encode to the ids of the whole.

    >>> cut_long("one two three", 5)
    ['one two', ' three']
    """
    parts, start = [], 0
    while len(text) - start > size:
        match = LETTER_END.search(text, start + size - 1)
        if match is None:
            break
        parts.append(text[start:match.end()])
        start = match.end()
    return parts + [text[start:]]


def groups_of(pieces, size):
    """Consecutive groups of pieces, each about `size` characters (one longer piece alone).

    >>> list(groups_of(["ab", "c", "defg", "h"], 3))
    [['ab', 'c'], ['defg'], ['h']]
    """
    group, chars = [], 0
    for piece in pieces:
        if group and chars + len(piece) > size:
            yield group
            group, chars = [], 0
        group.append(piece)
        chars += len(piece)
    if group:
        yield group


def code_points(group, what):
    """A group of texts as one (N,) uint32 array of code points, and bounds (len + 1,): text
    k is cps[bounds[k]:bounds[k+1]]. A lone surrogate is one error line naming `what`."""
    try:
        cps = np.frombuffer("".join(group).encode("utf-32-le"), np.uint32)
    except UnicodeEncodeError as e:
        raise ValueError(f"{what}: text holds {e.object[e.start]!r}, a lone surrogate, "
                         "which is not valid Unicode") from None
    bounds = np.fromiter(itertools.accumulate(map(len, group), initial=0), np.int64, len(group) + 1)
    return cps, bounds


def count_chunks(pieces, pattern):
    """The distinct chunks of the texts `pieces` under `pattern` with their counts, as
    ((data, bounds), counts) (count_kernels.count_pieces), group by group, then merged."""
    groups = [count_kernels.count_pieces(*code_points(group, "train()"), pattern)
              for group in groups_of(pieces, GROUP_CHARS)]
    return count_kernels.merge_counts(groups)


def encode_pieces(pieces, pattern, byte_ids, merge_table):
    """Ordinary texts (no special tokens, normalized) -> one id list each, by
    `pretokenize_kernels.encode`, group by group (a longer text cut where `cut_long` may)."""
    parts, owner = [], []                          # part j belongs to piece owner[j]
    for k, piece in enumerate(pieces):
        for part in cut_long(piece, GROUP_CHARS) if len(piece) > GROUP_CHARS else [piece]:
            parts.append(part)
            owner.append(k)
    encoded = []
    for group in groups_of(parts, GROUP_CHARS):
        ids, id_bounds = pretokenize_kernels.encode(*code_points(group, "encode()"), pattern,
                                                    byte_ids, merge_table)
        ids, id_bounds = ids.tolist(), id_bounds.tolist()
        encoded += [ids] if len(group) == 1 else \
            [ids[id_bounds[k]:id_bounds[k + 1]] for k in range(len(group))]
    if len(parts) == len(pieces):
        return encoded
    result = [[] for _ in pieces]
    for k, ids in zip(owner, encoded):
        result[k].extend(ids)
    return result
