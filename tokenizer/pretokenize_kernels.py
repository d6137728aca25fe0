r"""The two built-in pre-tokenizer regexes (GPT-2's, GPT-4's cl100k) written out by hand in
Numba, and the encoder that runs them with BPE on all of Numba's threads.

What it is: the fast twin of `split_isolated(regex.compile(PATTERN), text)` in
`bpe_tokenizer.py` followed by `bpe_kernels.encode_chunks` on every chunk: text in, ids out,
with no Python object per chunk. What it isn't: a regex engine. Any other pattern (a
loaded file's Split regex, Digits, ...) goes through `regex`, the reference path.
`tests/test_tokenizer_encode_threads.py` pins the chunks to `regex`'s and the ids to the
reference path's, at 1 and 2 threads.

Why by hand: `regex` builds one Python string per chunk while it holds the GIL (measured:
`findall(text, concurrent=True)` on two threads took as long as on one), so threads cannot
share pre-tokenization, and it cost more than all the BPE merges.

The text arrives as an array of code points (`text.encode("utf-32-le")`). Each code point
has one class, LETTER (\p{L}), NUMBER (\p{N}), SPACE (\s) or OTHER, read from a table that
`regex` itself fills (`char_tables`), so the classes and (?i) agree with it, Unicode version
included. A matcher returns where the chunk that starts at i ends, trying the pattern's
alternatives in order, as the regex does (` ` below is one space):

    GPT-4 (cl100k)                GPT-2                          matches
    '(?i:[sdmt]|ll|ve|re)         's|'t|'re|'ve|'m|'ll|'d        a contraction
    [^\r\n\p{L}\p{N}]?+\p{L}+     ` ?\p{L}+`                     a word ("the", " the")
    \p{N}{1,3}                    ` ?\p{N}+`                     digits
    ` ?[^\s\p{L}\p{N}]++[\r\n]*`  ` ?[^\s\p{L}\p{N}]+`           punctuation
    \s*[\r\n]                     -                              spaces up to a newline
    \s+(?!\S)|\s+                 \s+(?!\S)|\s+                  other spaces

Threads: a long text is cut into segments of about SEGMENT_CHARS code points, each cut just
after a letter that a non-letter follows. A chunk always ends there (a word ends at its last
letter, whatever comes next), so each segment, matched alone, gives the chunks the whole
text would: `prange` hands segments to threads and the ids do not depend on how many.
"""
import functools
import threading

import numba
import numpy as np
import regex
from numba import njit, prange

from mini_llm.progress import warm_up
from tokenizer.bpe_kernels import _encode_one

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 4   # a code point's class (exactly one)
GPT2, GPT4 = 2, 4                           # which matcher
SEGMENT_CHARS = 1 << 14                     # code points per segment, about (a cut needs a letter)
# held around each call of encode_pieces: Numba's workqueue threading layer (mini_llm/threads.py)
# aborts the process when two Python threads launch parallel kernels at once
LAUNCH_LOCK = threading.Lock()
CR, LF, BLANK, QUOTE = 13, 10, 32, 39       # '\r' '\n' ' ' "'"


@functools.lru_cache(maxsize=None)
def char_tables():
    r"""(classes, folds): two (0x110000,) uint8 tables indexed by code point, filled by `regex`.

    classes[c]: LETTER for \p{L}, NUMBER for \p{N}, SPACE for \s, else OTHER.
    folds[c]: the ASCII letter that c matches under (?i) for the letters of GPT-4's
    contractions, else 0: folds[ord("S")] == ord("s"), and so does U+017F 'ſ'.
    Built once per process, about 0.2 s.
    """
    codes = np.arange(0x110000, dtype=np.uint32)
    codes[0xD800:0xE000] = 0                    # surrogates cannot be encoded; any stand-in
    every_char = codes.tobytes().decode("utf-32-le")     # position == code point
    classes = np.zeros(0x110000, np.uint8)
    for kind, prop in ((LETTER, r"\p{L}"), (NUMBER, r"\p{N}"), (SPACE, r"\s")):
        for match in regex.finditer(prop + "+", every_char):
            if classes[match.start():match.end()].any():
                raise AssertionError(f"{prop} overlaps another class at {match.start():#x}")
            classes[match.start():match.end()] = kind
    folds = np.zeros(0x110000, np.uint8)
    for letter in "stdmlver":
        for match in regex.finditer(f"(?i:{letter})", every_char):
            folds[match.start()] = ord(letter)
    return classes, folds


# ----------------------------------------------------------------------------
# The matchers: where does the chunk that starts at i end? (i < n; cps[lo:n] is the text)

@njit(cache=True, inline="always")
def _run(cps, i, n, classes, kind):
    """End of the run of `kind` code points starting at i."""
    while i < n and classes[cps[i]] == kind:
        i += 1
    return i


@njit(cache=True, inline="always")
def _space_end(cps, i, n, classes):
    r"""\s+(?!\S)|\s+ at a whitespace code point: the run, less its last code point when the
    run has two or more and a non-space follows (that one starts the next word: " the")."""
    j = _run(cps, i, n, classes, SPACE)
    return j - 1 if j < n and j - i >= 2 else j


@njit(cache=True)
def gpt2_end(cps, i, n, classes, folds):
    """End of GPT-2's match at i: its five alternatives (the table above), in order.
    folds is unused: GPT-2's contractions are lowercase only, no (?i)."""
    c = cps[i]
    if c == QUOTE and i + 1 < n:
        a = cps[i + 1]
        if a == ord("s") or a == ord("t") or a == ord("m") or a == ord("d"):
            return i + 2
        if i + 2 < n:
            b = cps[i + 2]
            if (a, b) == (ord("r"), ord("e")) or (a, b) == (ord("v"), ord("e")) \
                    or (a, b) == (ord("l"), ord("l")):
                return i + 3
    start = i   # ' ?': one space joins the word, digits or punctuation after it
    if c == BLANK and i + 1 < n and classes[cps[i + 1]] != SPACE:
        start = i + 1
    kind = classes[cps[start]]
    if kind == SPACE:
        return _space_end(cps, i, n, classes)
    return _run(cps, start + 1, n, classes, kind)


@njit(cache=True)
def gpt4_end(cps, i, n, classes, folds):
    """End of GPT-4's match at i: the six alternatives of the table above, in order."""
    c = cps[i]
    kind = classes[c]
    if c == QUOTE and i + 1 < n:                          # '(?i:[sdmt]|ll|ve|re)
        a = folds[cps[i + 1]]
        if a == ord("s") or a == ord("d") or a == ord("m") or a == ord("t"):
            return i + 2
        if i + 2 < n:
            b = folds[cps[i + 2]]
            if (a, b) == (ord("l"), ord("l")) or (a, b) == (ord("v"), ord("e")) \
                    or (a, b) == (ord("r"), ord("e")):
                return i + 3
    if kind == LETTER:                                    # [^\r\n\p{L}\p{N}]?+\p{L}+
        return _run(cps, i + 1, n, classes, LETTER)
    if c != CR and c != LF and kind != NUMBER and i + 1 < n and classes[cps[i + 1]] == LETTER:
        return _run(cps, i + 2, n, classes, LETTER)       # one leading non-letter: " the", "(the"
    if kind == NUMBER:                                    # \p{N}{1,3}
        j = i + 1
        while j < n and j < i + 3 and classes[cps[j]] == NUMBER:
            j += 1
        return j
    start = i + 1 if c == BLANK and i + 1 < n and classes[cps[i + 1]] == OTHER else i
    if classes[cps[start]] == OTHER:                      #  ?[^\s\p{L}\p{N}]++[\r\n]*
        j = _run(cps, start + 1, n, classes, OTHER)
        while j < n and (cps[j] == CR or cps[j] == LF):
            j += 1
        return j
    j = _run(cps, i, n, classes, SPACE)                   # \s*[\r\n]: to the run's last newline
    for k in range(j - 1, i - 1, -1):
        if cps[k] == CR or cps[k] == LF:
            return k + 1
    return _space_end(cps, i, n, classes)                 # \s+(?!\S)|\s+


@njit(cache=True)
def chunk_ends(cps, lo, hi, pattern, classes, folds):
    """The ends of the chunks of cps[lo:hi], in code points (for tests and for reading).
    GPT-4 on "Hi  there": ends [2, 3, 9], the chunks "Hi", " ", " there"."""
    ends = np.empty(hi - lo, np.int64)
    i, k = lo, 0
    while i < hi:
        i = gpt4_end(cps, i, hi, classes, folds) if pattern == GPT4 else \
            gpt2_end(cps, i, hi, classes, folds)
        ends[k] = i
        k += 1
    return ends[:k]


# ----------------------------------------------------------------------------
# Segments: where a long text can be cut so that threads match it independently

@njit(cache=True)
def cut_segments(cps, piece_bounds, classes, target):
    """Cut each piece cps[piece_bounds[p]:piece_bounds[p+1]] into segments of about `target`
    code points, each cut just after a letter that a non-letter follows.

    Returns (seg_bounds (G+1,), seg_piece (G,)): segment g is cps[seg_bounds[g]:seg_bounds[g+1]]
    and belongs to piece seg_piece[g]. Empty pieces have no segment.
    """
    n_pieces = piece_bounds.size - 1
    most = n_pieces + cps.size // max(target, 1) + 1
    bounds = np.empty(most + 1, np.int64)
    owner = np.empty(most, np.int64)
    g = 0
    for p in range(n_pieces):
        lo, hi = piece_bounds[p], piece_bounds[p + 1]
        while lo < hi:
            cut = min(lo + target, hi)
            while cut < hi and not (classes[cps[cut - 1]] == LETTER
                                    and classes[cps[cut]] != LETTER):
                cut += 1
            bounds[g], owner[g] = lo, p
            g += 1
            lo = cut
    bounds[g] = piece_bounds[n_pieces]                   # pieces are contiguous: the last end
    return bounds[:g + 1], owner[:g]


@njit(cache=True, inline="always")
def _utf8_length(c):
    return 1 if c < 0x80 else 2 if c < 0x800 else 3 if c < 0x10000 else 4


@njit(cache=True, inline="always")
def _put_utf8(c, out, o):
    """Write code point c as UTF-8 at out[o:]; returns the new o."""
    if c < 0x80:
        out[o] = c
        return o + 1
    if c < 0x800:
        out[o], out[o + 1] = 0xC0 | (c >> 6), 0x80 | (c & 0x3F)
        return o + 2
    if c < 0x10000:
        out[o], out[o + 1], out[o + 2] = 0xE0 | (c >> 12), 0x80 | ((c >> 6) & 0x3F), \
            0x80 | (c & 0x3F)
        return o + 3
    out[o], out[o + 1] = 0xF0 | (c >> 18), 0x80 | ((c >> 12) & 0x3F)
    out[o + 2], out[o + 3] = 0x80 | ((c >> 6) & 0x3F), 0x80 | (c & 0x3F)
    return o + 4


@njit(cache=True)
def _encode_segment(cps, lo, hi, byte_lo, pattern, classes, folds, data, ends,
                    byte_to_id, table_key, table_rank, rank_new_id, out):
    """Chunks of cps[lo:hi] -> UTF-8 in data[byte_lo:] (chunk k ends at ends[lo + k]), then
    BPE on each chunk -> ids in out[byte_lo:]. Returns the number of ids (<= the bytes)."""
    i, b, n_chunks, longest = lo, byte_lo, 0, 1
    while i < hi:                                        # 1. pre-tokenize, as UTF-8
        j = gpt4_end(cps, i, hi, classes, folds) if pattern == GPT4 else \
            gpt2_end(cps, i, hi, classes, folds)
        start = b
        for k in range(i, j):
            b = _put_utf8(cps[k], data, b)
        ends[lo + n_chunks] = b
        n_chunks += 1
        longest = max(longest, b - start)
        i = j
    sym = np.empty(longest, np.int64)                    # 2. merge each chunk's bytes
    nxt = np.empty(longest, np.int64)
    prv = np.empty(longest, np.int64)
    heap = np.empty(3 * longest, np.int64)
    o, start = byte_lo, byte_lo
    for k in range(n_chunks):
        o = _encode_one(data, start, ends[lo + k], byte_to_id, table_key, table_rank,
                        rank_new_id, sym, nxt, prv, heap, out, o)
        start = ends[lo + k]
    return o - byte_lo


@njit(cache=True)
def _plan(cps, piece_bounds, classes, target):
    """Segments and their buffers: (seg_bounds, seg_piece, seg_bytes, data, ends, out, n_ids).
    Segment g's UTF-8 goes to data[seg_bytes[g]:seg_bytes[g+1]], its ids to out[seg_bytes[g]:]
    (a segment has no more ids than bytes), their number to n_ids[g]."""
    seg_bounds, seg_piece = cut_segments(cps, piece_bounds, classes, target)
    seg_bytes = np.zeros(seg_piece.size + 1, np.int64)
    for g in range(seg_piece.size):
        size = 0
        for i in range(seg_bounds[g], seg_bounds[g + 1]):
            size += _utf8_length(cps[i])
        seg_bytes[g + 1] = seg_bytes[g] + size
    total = seg_bytes[seg_piece.size]
    return (seg_bounds, seg_piece, seg_bytes, np.empty(total, np.uint8),
            np.empty(cps.size, np.int64), np.empty(total, np.int64),
            np.zeros(seg_piece.size, np.int64))


@njit(cache=True)
def _gather(n_pieces, seg_piece, seg_bytes, out, n_ids):
    """The segments' ids, in order: (ids, id_bounds); piece p's ids are
    ids[id_bounds[p]:id_bounds[p+1]]."""
    id_bounds = np.zeros(n_pieces + 1, np.int64)
    for g in range(seg_piece.size):
        id_bounds[seg_piece[g] + 1] += n_ids[g]
    for p in range(n_pieces):
        id_bounds[p + 1] += id_bounds[p]
    ids = np.empty(id_bounds[n_pieces], np.int64)
    o = 0
    for g in range(seg_piece.size):
        ids[o:o + n_ids[g]] = out[seg_bytes[g]:seg_bytes[g] + n_ids[g]]
        o += n_ids[g]
    return ids, id_bounds


@njit(parallel=True, cache=True)
def encode_pieces(cps, piece_bounds, pattern, classes, folds, byte_to_id, table_key,
                  table_rank, rank_new_id, target=SEGMENT_CHARS):
    """Encode the pieces cps[piece_bounds[p]:piece_bounds[p+1]] (code points, no special
    tokens) with the pattern and the merge table of `bpe_kernels.build_merge_table`; each
    segment on one of Numba's threads, whole.

    Returns (ids, id_bounds): piece p's ids are ids[id_bounds[p]:id_bounds[p+1]].
    """
    seg_bounds, seg_piece, seg_bytes, data, ends, out, n_ids = _plan(cps, piece_bounds,
                                                                     classes, target)
    for g in prange(seg_piece.size):
        n_ids[g] = _encode_segment(cps, seg_bounds[g], seg_bounds[g + 1], seg_bytes[g],
                                   pattern, classes, folds, data, ends, byte_to_id,
                                   table_key, table_rank, rank_new_id, out)
    return _gather(piece_bounds.size - 1, seg_piece, seg_bytes, out, n_ids)


@njit(cache=True, nogil=True)
def encode_pieces_serial(cps, piece_bounds, pattern, classes, folds, byte_to_id, table_key,
                         table_rank, rank_new_id, target=SEGMENT_CHARS):
    """`encode_pieces` on the calling thread alone (the same segments, one after another):
    for one thread, or a short text, where waking the pool would cost more than the work."""
    seg_bounds, seg_piece, seg_bytes, data, ends, out, n_ids = _plan(cps, piece_bounds,
                                                                     classes, target)
    for g in range(seg_piece.size):
        n_ids[g] = _encode_segment(cps, seg_bounds[g], seg_bounds[g + 1], seg_bytes[g],
                                   pattern, classes, folds, data, ends, byte_to_id,
                                   table_key, table_rank, rank_new_id, out)
    return _gather(piece_bounds.size - 1, seg_piece, seg_bytes, out, n_ids)


# ----------------------------------------------------------------------------
# The driver: what `BPETokenizer` calls

def encode(cps, piece_bounds, pattern, byte_ids, table):
    """Encode pieces of code points (see `encode_pieces`) on numba.get_num_threads() threads,
    but on the calling thread alone when that is 1 or there is under two segments' work:
    waking the pool costs 0.1-1 ms, more than a short text takes.
    table: `byte_bpe.merge_table`'s (table_key, table_rank, rank_new_id)."""
    classes, folds = char_tables()
    args = (pattern, classes, folds, byte_ids, *table)
    tiny = np.zeros(1, np.uint32), np.array([0, 1])  # the first call compiles on one code point
    if numba.get_num_threads() == 1 or cps.size < 2 * SEGMENT_CHARS:
        warm_up("bpe encode serial", "BPE encoder", lambda: encode_pieces_serial(*tiny, *args))
        return encode_pieces_serial(cps, piece_bounds, *args)
    with LAUNCH_LOCK:
        warm_up("bpe encode threads", "threaded BPE encoder", lambda: encode_pieces(*tiny, *args))
        return encode_pieces(cps, piece_bounds, *args)
