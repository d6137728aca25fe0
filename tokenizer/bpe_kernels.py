"""Numba kernels for byte-level BPE encoding, and the pair hash table they share with
training (`bpe_train_kernels.py`, which holds the training kernels).

This file is the fast twin of the readable `encode_chunk_reference` in `byte_bpe.py`,
which also holds the driver that calls it (`encode_fast`); `tests/test_tokenizer_kernels.py`
pins the kernel to its reference. Read that first: this file trades clarity for speed
and says so.

Encoding (`encode_chunks`) applies merges to each chunk in the order Hugging
Face `tokenizers` does: repeatedly the lowest-rank pair, leftmost first, with a
heap, so a long chunk costs O(n log n), not O(n^2).
"""
import numpy as np
from numba import njit

EMPTY = -1  # an unused slot in a hash table, or the end of a linked list


# ----------------------------------------------------------------------------
# Open-addressing hash table keyed by a pair (a, b) packed into one int64

@njit(cache=True, inline="always")
def pair_key(a, b):
    return (np.int64(a) << 32) | np.int64(b)


@njit(cache=True)
def find_slot(table_key, key):
    """Slot of `key` in the table, or the empty slot where it belongs (linear probing)."""
    mask = table_key.size - 1
    i = np.int64((np.uint64(key) * np.uint64(11400714819323198485)) >> np.uint64(33)) & mask
    while table_key[i] != key and table_key[i] != EMPTY:
        i = (i + 1) & mask
    return i


def table_capacity(n_items):
    """A power of two at least twice `n_items`, so probes stay short."""
    return 1 << max(4, int(2 * max(n_items, 1) - 1).bit_length())


# ----------------------------------------------------------------------------
# Encoding

def build_merge_table(merges, new_ids):
    """Hash table (a, b) -> rank for the kernel; the merge of rank r makes new_ids[r].

    A pair listed twice keeps its last rank, as Hugging Face does.
    Returns (table_key, table_rank, rank_new_id).
    """
    pairs = np.asarray(merges, dtype=np.int64).reshape(-1, 2)
    table_key = np.full(table_capacity(len(pairs)), EMPTY, np.int64)
    table_rank = np.zeros(table_key.size, np.int64)
    _fill_merge_table(table_key, table_rank, pairs)
    return table_key, table_rank, np.asarray(new_ids, dtype=np.int64)


@njit(cache=True)
def _fill_merge_table(table_key, table_rank, pairs):
    for rank in range(pairs.shape[0]):
        key = pair_key(pairs[rank, 0], pairs[rank, 1])
        slot = find_slot(table_key, key)
        table_key[slot] = key
        table_rank[slot] = rank


@njit(cache=True)
def _rank(table_key, table_rank, a, b):
    slot = find_slot(table_key, pair_key(a, b))
    return table_rank[slot] if table_key[slot] != EMPTY else EMPTY


@njit(cache=True)
def _push_min(heap, n, key):
    i = n
    while i > 0 and heap[(i - 1) // 2] > key:
        heap[i] = heap[(i - 1) // 2]
        i = (i - 1) // 2
    heap[i] = key
    return n + 1


@njit(cache=True)
def _pop_min(heap, n):
    top, n = heap[0], n - 1
    last, i = heap[n], 0
    while 2 * i + 1 < n:
        child = 2 * i + 1
        if child + 1 < n and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] >= last:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = last
    return top, n


@njit(cache=True)
def _encode_one(data, lo, hi, byte_to_id, table_key, table_rank, rank_new_id,
                sym, nxt, prv, heap, out, o):
    """Merge the symbols data[lo:hi] into tokens written to out[o:]; returns the new o.

    Heap keys are rank << 32 | position: lowest rank first, then leftmost,
    exactly the order of Hugging Face's `Word::merge_all`. An entry is stale when
    its symbol was merged away or the pair there no longer makes its token.
    """
    n = hi - lo
    if n == 0:
        return o
    for i in range(n):
        sym[i] = byte_to_id[data[lo + i]]
        nxt[i] = i + 1 if i + 1 < n else EMPTY
        prv[i] = i - 1
    size = 0
    for i in range(n - 1):
        r = _rank(table_key, table_rank, sym[i], sym[i + 1])
        if r != EMPTY:
            size = _push_min(heap, size, (r << 32) | i)
    while size > 0:
        key, size = _pop_min(heap, size)
        r, i = key >> 32, key & 0xFFFFFFFF
        if sym[i] == EMPTY or nxt[i] == EMPTY:
            continue
        j = nxt[i]
        now = _rank(table_key, table_rank, sym[i], sym[j])
        if now == EMPTY or rank_new_id[now] != rank_new_id[r]:
            continue
        sym[i] = rank_new_id[r]  # merge j into i
        sym[j] = EMPTY
        nxt[i] = nxt[j]
        if nxt[i] != EMPTY:
            prv[nxt[i]] = i
        if prv[i] >= 0:
            r2 = _rank(table_key, table_rank, sym[prv[i]], sym[i])
            if r2 != EMPTY:
                size = _push_min(heap, size, (r2 << 32) | prv[i])
        if nxt[i] != EMPTY:
            r2 = _rank(table_key, table_rank, sym[i], sym[nxt[i]])
            if r2 != EMPTY:
                size = _push_min(heap, size, (r2 << 32) | i)
    i = 0
    while i != EMPTY:
        out[o] = sym[i]
        o += 1
        i = nxt[i]
    return o


@njit(cache=True, nogil=True)
def encode_chunks(data, offsets, byte_to_id, table_key, table_rank, rank_new_id):
    """Encode chunks data[offsets[k]:offsets[k+1]] into token ids; data holds bytes (uint8)
    or, for SentencePiece-style BPE, characters' ids (int64), each mapped by byte_to_id.

    Returns (ids, out_offsets): chunk k's tokens are ids[out_offsets[k]:out_offsets[k+1]].
    """
    n_chunks = offsets.size - 1
    longest = 1
    for k in range(n_chunks):
        longest = max(longest, offsets[k + 1] - offsets[k])
    sym = np.empty(longest, np.int64)
    nxt = np.empty(longest, np.int64)
    prv = np.empty(longest, np.int64)
    heap = np.empty(3 * longest, np.int64)  # n - 1 initial entries + at most 2 per merge
    out = np.empty(data.size, np.int64)
    out_offsets = np.zeros(n_chunks + 1, np.int64)
    o = 0
    for k in range(n_chunks):
        o = _encode_one(data, offsets[k], offsets[k + 1], byte_to_id, table_key, table_rank,
                        rank_new_id, sym, nxt, prv, heap, out, o)
        out_offsets[k + 1] = o
    return out[:o], out_offsets
