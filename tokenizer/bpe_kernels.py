"""Numba kernels for byte-level BPE: the fast path of training and of encoding.

This file is the fast twin of the readable helpers in `byte_bpe.py`
(`get_pair_counts`, `merge_pair`, `train_reference`, `encode_chunk_reference`),
which also holds the drivers that call it (`train_fast`, `encode_fast`);
`tests/test_tokenizer_kernels.py` pins each kernel to its reference. Read those
first: this file trades clarity for speed and says so.

Training works on the corpus's *unique words* (pre-tokenized chunks) with their
counts, stored as integer arrays in a `TrainState`:

    symbols     word after word, the token ids of each unique word
    pair table  hash (a, b) -> pair index; per pair: a, b, count
    postings    per pair, a linked list of the words that contain it
    heap        max-heap of pairs by (count desc, a asc, b asc)

Each merge step pops the best pair, visits only the words on its postings
list, and there subtracts the word's old pair windows and adds the new ones:
an incremental update instead of a recount of the whole corpus. Counts are
exactly those a full recount would give, so the merges equal the reference's.

Encoding (`encode_chunks`) applies merges to each chunk in the order Hugging
Face `tokenizers` does: repeatedly the lowest-rank pair, leftmost first, with a
heap, so a long chunk costs O(n log n), not O(n^2).
"""
from typing import NamedTuple

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
# Training

class TrainState(NamedTuple):
    symbols: np.ndarray      # (S,) int32 token ids of all unique words, concatenated
    word_start: np.ndarray   # (Wd,) int64 where each word starts in `symbols`
    word_len: np.ndarray     # (Wd,) int64 its current length (shrinks as merges apply)
    word_count: np.ndarray   # (Wd,) int64 how often the word occurs in the corpus
    word_mark: np.ndarray    # (Wd,) int64 last merge step that visited the word (+1)
    pair_a: np.ndarray       # (P,) int32 left token of pair p
    pair_b: np.ndarray       # (P,) int32 right token of pair p
    pair_count: np.ndarray   # (P,) int64 occurrences of pair p, weighted by word counts
    pair_head: np.ndarray    # (P,) int64 first posting of pair p (EMPTY: none)
    pair_last: np.ndarray    # (P,) int64 last word posted for pair p (avoids duplicates)
    table_key: np.ndarray    # (T,) int64 packed (a, b), EMPTY when free
    table_pair: np.ndarray   # (T,) int64 pair index stored in the slot
    post_word: np.ndarray    # (Q,) int64 word of a posting
    post_next: np.ndarray    # (Q,) int64 next posting of the same pair
    heap_pair: np.ndarray    # (P,) int64 heap entries: pair index ...
    heap_count: np.ndarray   # (P,) int64 ... and its count when pushed
    sizes: np.ndarray        # (3,) int64 number of pairs, postings, heap entries


def new_train_state(words, counts):
    """Allocate a TrainState for `words` (lists of token ids) occurring `counts` times.

    Capacities are upper bounds: every merged occurrence removes one symbol and
    creates at most two new windows, so pairs and postings never exceed
    (initial windows) + 2 * (initial symbols).
    """
    lengths = np.array([len(w) for w in words], dtype=np.int64)
    n_symbols = int(lengths.sum())
    n_windows = n_symbols - len(words)
    cap = n_windows + 2 * n_symbols + 1
    starts = np.zeros(len(words), dtype=np.int64)
    starts[1:] = np.cumsum(lengths)[:-1]
    symbols = np.fromiter((t for w in words for t in w), dtype=np.int32, count=n_symbols)
    return TrainState(
        symbols, starts, lengths, np.asarray(counts, dtype=np.int64),
        np.zeros(len(words), dtype=np.int64),
        np.zeros(cap, np.int32), np.zeros(cap, np.int32), np.zeros(cap, np.int64),
        np.full(cap, EMPTY, np.int64), np.full(cap, EMPTY, np.int64),
        np.full(table_capacity(cap), EMPTY, np.int64), np.zeros(table_capacity(cap), np.int64),
        np.zeros(cap, np.int64), np.zeros(cap, np.int64),
        np.zeros(cap, np.int64), np.zeros(cap, np.int64),
        np.zeros(3, np.int64))


@njit(cache=True)
def _better(st, c1, p1, c2, p2):
    """Is pair p1 (count c1) merged before p2 (count c2)? Higher count, then smaller (a, b)."""
    if c1 != c2:
        return c1 > c2
    if st.pair_a[p1] != st.pair_a[p2]:
        return st.pair_a[p1] < st.pair_a[p2]
    return st.pair_b[p1] < st.pair_b[p2]


@njit(cache=True)
def _heap_push(st, p, c):
    i = st.sizes[2]
    st.sizes[2] += 1
    while i > 0:  # sift up
        parent = (i - 1) // 2
        if not _better(st, c, p, st.heap_count[parent], st.heap_pair[parent]):
            break
        st.heap_pair[i] = st.heap_pair[parent]
        st.heap_count[i] = st.heap_count[parent]
        i = parent
    st.heap_pair[i] = p
    st.heap_count[i] = c


@njit(cache=True)
def _heap_pop(st):
    """Remove the top entry and return (pair, count)."""
    p, c = st.heap_pair[0], st.heap_count[0]
    n = st.sizes[2] - 1
    st.sizes[2] = n
    lp, lc = st.heap_pair[n], st.heap_count[n]  # the last entry sinks down from the root
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and _better(st, st.heap_count[child + 1], st.heap_pair[child + 1],
                                     st.heap_count[child], st.heap_pair[child]):
            child += 1
        if not _better(st, st.heap_count[child], st.heap_pair[child], lc, lp):
            break
        st.heap_pair[i] = st.heap_pair[child]
        st.heap_count[i] = st.heap_count[child]
        i = child
    st.heap_pair[i] = lp
    st.heap_count[i] = lc
    return p, c


@njit(cache=True)
def _pair_index(st, a, b):
    """Index of pair (a, b), created with count 0 if it is new."""
    key = pair_key(a, b)
    slot = find_slot(st.table_key, key)
    if st.table_key[slot] == EMPTY:
        p = st.sizes[0]
        st.sizes[0] += 1
        st.table_key[slot] = key
        st.table_pair[slot] = p
        st.pair_a[p] = a
        st.pair_b[p] = b
        return p
    return st.table_pair[slot]


@njit(cache=True)
def _add_window(st, a, b, w, c, post):
    """Count the window (a, b) of word w (occurring c times); post w under the pair if asked."""
    p = _pair_index(st, a, b)
    st.pair_count[p] += c
    if post and st.pair_last[p] != w:
        q = st.sizes[1]
        st.sizes[1] += 1
        st.post_word[q] = w
        st.post_next[q] = st.pair_head[p]
        st.pair_head[p] = q
        st.pair_last[p] = w


@njit(cache=True)
def train_init(st):
    """Count every window of every word, post each word under its pairs, heap all pairs."""
    for w in range(st.word_start.size):
        s = st.word_start[w]
        for i in range(s, s + st.word_len[w] - 1):
            _add_window(st, st.symbols[i], st.symbols[i + 1], w, st.word_count[w], True)
    for p in range(st.sizes[0]):
        _heap_push(st, p, st.pair_count[p])


@njit(cache=True)
def _pop_best(st):
    """The pair to merge next, or EMPTY when no pair is left.

    Heap entries may be stale: counts only fall after a pair is pushed, so a
    stale entry is re-pushed with its current count (or dropped at zero).
    """
    while st.sizes[2] > 0:
        p, c = _heap_pop(st)
        current = st.pair_count[p]
        if current == c:
            return p
        if current > 0:
            _heap_push(st, p, current)
    return EMPTY


@njit(cache=True)
def _merge_word(st, w, a, b, x):
    """Replace (a, b) by x in word w and update the pair counts; False if w has no (a, b)."""
    s, n, c = st.word_start[w], st.word_len[w], st.word_count[w]
    found = False
    for i in range(s, s + n - 1):
        if st.symbols[i] == a and st.symbols[i + 1] == b:
            found = True
            break
    if not found:
        return False
    for i in range(s, s + n - 1):  # forget the old windows ...
        st.pair_count[_pair_index(st, st.symbols[i], st.symbols[i + 1])] -= c
    i, j = s, s
    while i < s + n:  # ... merge left to right, in place ...
        if i + 1 < s + n and st.symbols[i] == a and st.symbols[i + 1] == b:
            st.symbols[j] = x
            i += 2
        else:
            st.symbols[j] = st.symbols[i]
            i += 1
        j += 1
    st.word_len[w] = j - s
    for i in range(s, j - 1):  # ... and count the new ones (only windows with x are new)
        left, right = st.symbols[i], st.symbols[i + 1]
        _add_window(st, left, right, w, c, left == x or right == x)
    return True


@njit(cache=True)
def train_merges(st, first_id, start, stop, merges, merge_counts):
    """Run merge steps start..stop-1; step m creates token first_id + m.

    Writes merges[m] = (a, b) and merge_counts[m]; returns the step reached
    (less than `stop` when no pair is left to merge).
    """
    for m in range(start, stop):
        p = _pop_best(st)
        if p == EMPTY:
            return m
        a, b, x = st.pair_a[p], st.pair_b[p], first_id + m
        merges[m, 0], merges[m, 1], merge_counts[m] = a, b, st.pair_count[p]
        first_new_pair = st.sizes[0]
        q = st.pair_head[p]
        while q != EMPTY:
            w = st.post_word[q]
            q = st.post_next[q]
            if st.word_mark[w] != m + 1:
                st.word_mark[w] = m + 1
                _merge_word(st, w, a, b, x)
        st.pair_head[p] = EMPTY
        for new in range(first_new_pair, st.sizes[0]):  # pairs with x are pushed once, complete
            if st.pair_count[new] > 0:
                _heap_push(st, new, st.pair_count[new])
    return stop


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
