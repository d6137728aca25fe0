"""Numba kernels that count a corpus's chunks: the fast `BPETokenizer._count_chunks` for the
built-in patterns (GPT-2, GPT-4), on all threads.

The text's code points are cut into chunks by the hand-written matchers of
`pretokenize_kernels.py` (`chunk_pieces`, in parallel over segments), then equal chunks are
found by hashing their bytes and counted (`unique_words`: a dedupe per thread, merged in
first-seen order), so the result is the regex Counter's, in the same order, whatever the
number of threads. `tests/test_bpe_training_threads.py` pins it to `_count_chunks`.
"""
import numba
import numpy as np
from numba import njit, prange

from mini_llm.progress import warm_up
from tokenizer.bpe_kernels import EMPTY
from tokenizer.pretokenize_kernels import GPT4, LAUNCH_LOCK, SEGMENT_CHARS, _put_utf8, \
    _utf8_length, char_tables, cut_segments, gpt2_end, gpt4_end

# ----------------------------------------------------------------------------
# Counting the chunks: the fast `BPETokenizer._count_chunks` for the built-in patterns

@njit(cache=True, inline="always")
def _fnv1a(data, lo, hi):
    """64-bit FNV-1a hash of the bytes data[lo:hi]."""
    h = np.uint64(14695981039346656037)
    for t in range(lo, hi):
        h = (h ^ np.uint64(data[t])) * np.uint64(1099511628211)
    return h


@njit(cache=True)
def _chunk_segment(cps, lo, hi, byte_lo, pattern, classes, folds, data, ends):
    """Pre-tokenize the code points cps[lo:hi] into chunks, as UTF-8 from data[byte_lo]:
    chunk k ends at byte ends[lo + k]. Returns the number of chunks."""
    i, o, k = lo, byte_lo, 0
    while i < hi:
        j = gpt4_end(cps, i, hi, classes, folds) if pattern == GPT4 else \
            gpt2_end(cps, i, hi, classes, folds)
        for t in range(i, j):
            o = _put_utf8(cps[t], data, o)
        ends[lo + k] = o
        k += 1
        i = j
    return k


@njit(cache=True, parallel=True)
def chunk_pieces(cps, piece_bounds, pattern, classes, folds, target):
    """All chunks of the pieces cps[piece_bounds[p]:piece_bounds[p+1]] (code points, no
    special tokens), in order, on all threads: one segment (`cut_segments`) per task.

    Returns (data, bounds): chunk c is the UTF-8 bytes data[bounds[c]:bounds[c+1]].
    """
    seg_bounds, _ = cut_segments(cps, piece_bounds, classes, target)
    n_seg = seg_bounds.size - 1
    seg_bytes = np.zeros(n_seg + 1, np.int64)            # segment g's bytes start there
    for g in prange(n_seg):
        size = 0
        for i in range(seg_bounds[g], seg_bounds[g + 1]):
            size += _utf8_length(cps[i])
        seg_bytes[g + 1] = size
    seg_bytes = np.cumsum(seg_bytes)
    data = np.empty(seg_bytes[n_seg], np.uint8)
    ends = np.empty(cps.size, np.int64)
    n_chunks = np.zeros(n_seg + 1, np.int64)
    for g in prange(n_seg):
        n_chunks[g + 1] = _chunk_segment(cps, seg_bounds[g], seg_bounds[g + 1], seg_bytes[g],
                                         pattern, classes, folds, data, ends)
    first_chunk = np.cumsum(n_chunks)                    # segment g's chunks start there
    bounds = np.zeros(first_chunk[n_seg] + 1, np.int64)
    for g in prange(n_seg):
        lo, c = seg_bounds[g], first_chunk[g]
        bounds[c + 1:c + 1 + n_chunks[g + 1]] = ends[lo:lo + n_chunks[g + 1]]
    return data, bounds


@njit(cache=True, inline="always")
def _slot(h, bits):
    """Slot of hash h in a table of 2**bits: its top bits after a Fibonacci multiply."""
    return np.int64((h * np.uint64(11400714819323198485)) >> np.uint64(64 - bits))


@njit(cache=True, inline="always")
def _same_bytes(x, x_lo, x_hi, y, y_lo, y_hi):
    """Is x[x_lo:x_hi] == y[y_lo:y_hi]?"""
    if x_hi - x_lo != y_hi - y_lo:
        return False
    for t in range(x_hi - x_lo):
        if x[x_lo + t] != y[y_lo + t]:
            return False
    return True


@njit(cache=True)
def _dedupe(data, starts, ends, hashes, weights, pool, out_bounds, out_hash, out_count):
    """The distinct words among word t = data[starts[t]:ends[t]] (its hash hashes[t], weight
    weights[t]), in the order first seen. Distinct word d is copied to
    pool[out_bounds[d]:out_bounds[d+1]] (from out_bounds[0], set by the caller), with its
    hash out_hash[d] and total weight out_count[d]. Returns their number.

    The hash table starts small and doubles, and compares against the copies in `pool`,
    so the search stays in cache: the distinct words are few (52K in 1.3M chunks, 5 MB).
    """
    bits, n = 6, 0
    size = 1 << bits
    table = np.full(size, EMPTY, np.int64)               # slot -> distinct word d
    for t in range(starts.size):
        if 2 * (n + 1) > size:                           # grow: re-insert the distinct words
            bits += 1
            size = 1 << bits
            table = np.full(size, EMPTY, np.int64)
            for d in range(n):
                slot = _slot(out_hash[d], bits)
                while table[slot] != EMPTY:
                    slot = (slot + 1) & (size - 1)
                table[slot] = d
        h, lo, hi = hashes[t], starts[t], ends[t]
        slot = _slot(h, bits)
        while table[slot] != EMPTY:
            d = table[slot]
            if out_hash[d] == h and _same_bytes(pool, out_bounds[d], out_bounds[d + 1],
                                                data, lo, hi):
                break
            slot = (slot + 1) & (size - 1)
        if table[slot] == EMPTY:                         # new: copy it into the pool
            pool[out_bounds[n]:out_bounds[n] + hi - lo] = data[lo:hi]
            out_bounds[n + 1] = out_bounds[n] + hi - lo
            table[slot], out_hash[n], out_count[n] = n, h, 0
            n += 1
        out_count[table[slot]] += weights[t]
    return n


@njit(cache=True, parallel=True)
def unique_words(data, bounds, weights, n_blocks=1):
    """Add up equal words: word c = data[bounds[c]:bounds[c+1]] with weight weights[c].

    Returns (word_data, word_bounds, word_count) for the distinct words, in the order
    they first appear. Threads: each of n_blocks runs of words finds its own distinct
    words (`_dedupe`), then one pass merges those, run after run. First seen in the runs,
    in order, is first seen in the whole, so the result does not depend on n_blocks.
    """
    n = bounds.size - 1
    hashes = np.empty(n, np.uint64)
    for c in prange(n):
        hashes[c] = _fnv1a(data, bounds[c], bounds[c + 1])
    cuts = np.linspace(0, n, n_blocks + 1).astype(np.int64)
    pool = np.empty(data.size, np.uint8)                 # run k copies into its own bytes
    pool_bounds = np.empty(n + n_blocks, np.int64)       # run k: from cuts[k] + k
    found_hash, found_count = np.empty(n, np.uint64), np.empty(n, np.int64)
    n_found = np.zeros(n_blocks, np.int64)
    for k in prange(n_blocks):                           # 1. distinct words of each run
        lo, hi = cuts[k], cuts[k + 1]
        pool_bounds[lo + k] = bounds[lo]
        n_found[k] = _dedupe(data, bounds[lo:hi], bounds[lo + 1:hi + 1], hashes[lo:hi],
                             weights[lo:hi], pool, pool_bounds[lo + k:hi + k + 1],
                             found_hash[lo:hi], found_count[lo:hi])
    if n_blocks == 1:
        m = n_found[0]
        return pool[:pool_bounds[m]].copy(), pool_bounds[:m + 1].copy(), found_count[:m].copy()
    total = n_found.sum()                                # 2. merge the runs' words, in order
    starts, ends = np.empty(total, np.int64), np.empty(total, np.int64)
    hashes2, weights2 = np.empty(total, np.uint64), np.empty(total, np.int64)
    t = 0
    for k in range(n_blocks):
        lo, m = cuts[k], n_found[k]
        starts[t:t + m] = pool_bounds[lo + k:lo + k + m]
        ends[t:t + m] = pool_bounds[lo + k + 1:lo + k + m + 1]
        hashes2[t:t + m], weights2[t:t + m] = found_hash[lo:lo + m], found_count[lo:lo + m]
        t += m
    word_data = np.empty(data.size, np.uint8)
    word_bounds = np.zeros(total + 1, np.int64)
    word_count = np.empty(total, np.int64)
    m = _dedupe(pool, starts, ends, hashes2, weights2, word_data, word_bounds,
                np.empty(total, np.uint64), word_count)
    return word_data[:word_bounds[m]].copy(), word_bounds[:m + 1].copy(), word_count[:m].copy()


def count_pieces(cps, piece_bounds, pattern):
    """The distinct chunks of the pieces cps[piece_bounds[p]:piece_bounds[p+1]] (code points,
    no special tokens) under `pattern` (pretokenize_kernels.GPT2 / GPT4), with counts:
    ((data, bounds), counts), chunk k = data[bounds[k]:bounds[k+1]] (UTF-8), on all threads."""
    classes, folds = char_tables()
    tiny = np.zeros(1, np.uint32), np.array([0, 1])
    with LAUNCH_LOCK:   # see pretokenize_kernels.LAUNCH_LOCK
        warm_up("bpe count chunks", "BPE chunk counter",
                lambda: unique_words(*chunk_pieces(*tiny, pattern, classes, folds, SEGMENT_CHARS),
                                     np.ones(1, np.int64), 1))
        data, bounds = chunk_pieces(cps, piece_bounds, pattern, classes, folds, SEGMENT_CHARS)
        word_data, word_bounds, counts = unique_words(
            data, bounds, np.ones(bounds.size - 1, np.int64), numba.get_num_threads())
    return (word_data, word_bounds), counts


def merge_counts(groups):
    """Several `count_pieces` results -> one, equal chunks added up (first seen first)."""
    if len(groups) == 1:
        return groups[0]
    data = np.concatenate([np.zeros(0, np.uint8)] + [d for (d, _), _ in groups])
    sizes = np.concatenate([np.zeros(0, np.int64)] + [np.diff(b) for (_, b), _ in groups])
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    counts = np.concatenate([np.zeros(0, np.int64)] + [c for _, c in groups])
    with LAUNCH_LOCK:
        word_data, word_bounds, word_counts = unique_words(data, bounds, counts,
                                                           numba.get_num_threads())
    return (word_data, word_bounds), word_counts
