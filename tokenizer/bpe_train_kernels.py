"""Numba kernels for BPE training: the merges (the chunks are counted in count_kernels.py).

The fast twin of `byte_bpe.train_reference` (recount every pair, merge every word, each
step) and of `BPETokenizer._count_chunks` (regex chunks into a Counter). `byte_bpe.train_fast`
drives the merge kernels; `tests/test_tokenizer_kernels.py` and
`tests/test_bpe_training_threads.py` pin them to the reference, merge for merge and count
for count, at 1 and 2 threads. Read the reference first: this file trades clarity for speed.

The corpus is its unique words (chunks) with their counts. Every symbol of every word has
a *position* in one array, linked to its neighbours as in Hugging Face's `Word`:

    symbols  token id at each position; EMPTY once merged into its left neighbour
    prev/next  the neighbouring live positions of the same word (EMPTY at its ends)
    window   two neighbouring positions (i, next[i]): one occurrence of a pair
    pairs    hash (a, b) -> pair index; per pair: a, b, count, and its postings:
             the positions of its windows, post[pair_first[p] : pair_first[p] + pair_num[p]]
    heap     max-heap of pairs by (count desc, a asc, b asc)

Why postings are one block per pair, complete when the pair is born: every window that a
merge creates holds the new token x, so all windows of a pair (u, v) appear in one step,
the step that made the newer of u and v (or at the start, for two bytes). Later steps only
make some of them stale (a symbol changed); a stale window is skipped when read.

One merge step of pair (a, b) -> x, for its windows in position order:
  1. merge: at each live window i, j = next[i]: symbols[i] = x, j leaves the links.
     Position order makes runs like "aaaa" merge left to right: (aa)(aa), as the reference.
  2. count: the windows around the merge change, (y, a) -> (y, x) on the left and
     (b, y) -> (x, y) on the right, for the neighbour y; the count of (a, b) drops to 0.
  3. post the new windows (all hold x) into one block per new pair; push the new pairs.
So a step costs the occurrences of (a, b), however long the word: a 1 MB line without a
space is one word, and no step rescans it. Threads: step 1 splits the windows into blocks
that no merge crosses (`_cut_blocks`) when there are many; steps 2-3 run in window order.

Before all that, the chunks are cut and counted on all threads (count_kernels.py), for the
built-in patterns. No result depends on the number of threads.
"""
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from tokenizer.bpe_kernels import EMPTY, find_slot, pair_key, table_capacity

LEFT_OLD, LEFT_NEW, RIGHT_OLD, RIGHT_NEW = 0, 1, 2, 3  # pairs (y, a), (y, x), (b, y), (x, y)
BLOCK_WINDOWS = 1 << 13   # a merge step uses another thread per this many windows of its pair


# ----------------------------------------------------------------------------
# The state

class TrainState(NamedTuple):
    """S symbols (positions), N windows at the start, P pairs, Q postings, V token ids."""
    symbols: np.ndarray      # (S,) int32 token at each position, EMPTY once merged away
    prev: np.ndarray         # (S,) int64 previous live position in the word, EMPTY: none
    next: np.ndarray         # (S,) int64 next live position in the word, EMPTY: none
    weight: np.ndarray       # (S,) int64 count of the word that holds the position
    pair_a: np.ndarray       # (P,) int32 left token of pair p
    pair_b: np.ndarray       # (P,) int32 right token of pair p
    pair_count: np.ndarray   # (P,) int64 occurrences of pair p, weighted by word counts
    pair_first: np.ndarray   # (P,) int64 its postings start at post[pair_first[p]] ...
    pair_num: np.ndarray     # (P,) int64 ... and number pair_num[p] (some stale)
    table_key: np.ndarray    # (T,) int64 packed (a, b), EMPTY when free
    table_pair: np.ndarray   # (T,) int64 pair index stored in the slot
    post: np.ndarray         # (Q,) int64 window positions, one block per pair
    heap_pair: np.ndarray    # (P,) int64 heap entries: pair index ...
    heap_count: np.ndarray   # (P,) int64 ... and its count when pushed
    cache_pair: np.ndarray   # (4, V) int64 this step's pair index of (y, a), (y, x), (b, y), (x, y)
    cache_step: np.ndarray   # (4, V) int64 ... valid where it holds the step's stamp
    ev_left: np.ndarray      # (N,) per window of the step: left neighbour token, or EMPTY
    ev_right: np.ndarray     # (N,) int64 right neighbour token, or EMPTY
    ev_h: np.ndarray         # (N,) int64 left neighbour position; -2: window not merged
    win_pos: np.ndarray      # (2N,) int64 the step's new windows: position ...
    win_pair: np.ndarray     # (2N,) int64 ... and pair
    sizes: np.ndarray        # (3,) int64 number of pairs, postings, heap entries


def pack_words(words):
    """Lists of token ids -> (symbols (S,) int32, bounds (W+1,) int64): word k is
    symbols[bounds[k]:bounds[k+1]]. Byte strings work too (b"ab" is [97, 98]); then
    symbols are their bytes, uint8."""
    bounds = np.zeros(len(words) + 1, np.int64)
    np.cumsum([len(w) for w in words], out=bounds[1:])
    if all(isinstance(w, bytes) for w in words):
        return np.frombuffer(b"".join(words), np.uint8), bounds
    symbols = np.fromiter((t for w in words for t in w), np.int32, count=int(bounds[-1]))
    return symbols, bounds


def new_train_state(words, counts, n_tokens=None):
    """A TrainState for `words` (lists of ids) occurring `counts` times; see `packed_state`."""
    return packed_state(*pack_words(words), counts, n_tokens)


def packed_state(symbols, bounds, counts, n_tokens=None):
    """A TrainState for word k = symbols[bounds[k]:bounds[k+1]] occurring counts[k] times.

    n_tokens: ids stay below it, merges included (default: 65536 past the largest symbol).
    Capacities are upper bounds, kept tight (untouched memory costs nothing, touched costs
    page faults): a step merges at least one window, so there are fewer steps than windows
    and than n_tokens, and each makes at most 2 new pairs per neighbour token y, (y, x)
    and (x, y), and 2 new windows per merged one; the first pairs are at most alphabet².
    """
    S = symbols.size
    alphabet = int(symbols.max(initial=255)) + 1
    n_tokens = n_tokens or alphabet + 65536
    lengths = np.diff(bounds)
    n_windows = int(np.maximum(lengths - 1, 0).sum())
    n_pairs = min(n_windows, alphabet ** 2) + 2 * min(n_windows, n_tokens ** 2) + 1
    n_posts = 3 * n_windows + 1
    position = np.arange(S, dtype=np.int64)
    ends = lengths > 0
    first = np.zeros(S, bool)
    first[bounds[:-1][ends]] = True
    last = np.zeros(S, bool)
    last[bounds[1:][ends] - 1] = True
    z64 = lambda n: np.zeros(n, np.int64)  # noqa: E731
    return TrainState(
        symbols.astype(np.int32), np.where(first, EMPTY, position - 1),
        np.where(last, EMPTY, position + 1), np.repeat(np.asarray(counts, np.int64), lengths),
        np.zeros(n_pairs, np.int32), np.zeros(n_pairs, np.int32),
        z64(n_pairs), z64(n_pairs), z64(n_pairs),
        np.full(table_capacity(n_pairs), EMPTY, np.int64), z64(table_capacity(n_pairs)),
        z64(n_posts), z64(n_pairs), z64(n_pairs),
        np.zeros((4, n_tokens), np.int64), np.zeros((4, n_tokens), np.int64),
        z64(n_windows + 1), z64(n_windows + 1), z64(n_windows + 1),
        z64(2 * n_windows + 1), z64(2 * n_windows + 1), z64(3))


# ----------------------------------------------------------------------------
# The heap of pairs: best first, stale entries re-pushed when popped

@njit(cache=True, inline="always")
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


# ----------------------------------------------------------------------------
# Pairs and their first count

@njit(cache=True, inline="always")
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
def _post_windows(st, n_win, first_pair):
    """Post the windows win_pos[:n_win] under their pairs win_pair[:n_win], which are all
    pairs first_pair.. (new ones): a counting sort, so each pair's block keeps their order."""
    for w in range(n_win):
        st.pair_num[st.win_pair[w]] += 1
    start = st.sizes[1]
    for p in range(first_pair, st.sizes[0]):
        st.pair_first[p] = start
        start += st.pair_num[p]
        st.pair_num[p] = 0
    for w in range(n_win):
        p = st.win_pair[w]
        st.post[st.pair_first[p] + st.pair_num[p]] = st.win_pos[w]
        st.pair_num[p] += 1
    st.sizes[1] = start


@njit(cache=True)
def train_init(st):
    """Count every window of every word, post each under its pair, heap all pairs.

    The windows are visited in position order, which each pair's block keeps.
    """
    n_win = 0
    for i in range(st.symbols.size):
        j = st.next[i]
        if j != EMPTY:
            p = _pair_index(st, st.symbols[i], st.symbols[j])
            st.pair_count[p] += st.weight[i]
            st.win_pos[n_win], st.win_pair[n_win] = i, p
            n_win += 1
    _post_windows(st, n_win, 0)
    for p in range(st.sizes[0]):
        _heap_push(st, p, st.pair_count[p])


# ----------------------------------------------------------------------------
# One merge step

@njit(cache=True, inline="always")
def _is_window(st, i, a, b):
    """Is position i the left end of a live window (a, b)?"""
    return st.symbols[i] == a and st.next[i] != EMPTY and st.symbols[st.next[i]] == b


@njit(cache=True)
def _merge_run(st, lo, hi, first, a, b, x):
    """Step 1 on the postings post[lo:hi], left to right: merge each live window (a, b)
    into x and note its neighbours in ev_*[o - first] (first: the pair's first posting)."""
    for o in range(lo, hi):
        i = st.post[o]
        if not _is_window(st, i, a, b):   # stale, or the right half of a merge ("aaa")
            st.ev_h[o - first] = -2
            continue
        j = st.next[i]
        h, k = st.prev[i], st.next[j]
        st.ev_h[o - first] = h
        st.ev_left[o - first] = st.symbols[h] if h != EMPTY else EMPTY
        st.ev_right[o - first] = st.symbols[k] if k != EMPTY else EMPTY
        st.symbols[i], st.symbols[j] = x, EMPTY
        st.next[i] = k
        if k != EMPTY:
            st.prev[k] = i


@njit(cache=True)
def _cut_blocks(st, lo, hi, a, b, n_blocks):
    """Cut the postings post[lo:hi] into n_blocks runs whose merges cannot touch.

    The merge at window i (partner j = next[i]) writes i, j and prev[next[j]], and reads
    the neighbours' symbols. The next live window v is safe to merge on another thread
    unless v == j (overlap, "aaa") or v == next[j] ("abab"): cut only before such a v.
    Returns cuts (n_blocks + 1,): block t is post[cuts[t]:cuts[t+1]] (maybe empty).
    """
    cuts = np.empty(n_blocks + 1, np.int64)
    cuts[0], cuts[n_blocks] = lo, hi
    for t in range(1, n_blocks):
        o = max(lo + (hi - lo) * t // n_blocks, cuts[t - 1])
        u = o - 1                       # the last live window before the cut
        while u >= lo and not _is_window(st, st.post[u], a, b):
            u -= 1
        while o < hi:
            v = st.post[o]
            if _is_window(st, v, a, b):
                if u < lo:
                    break
                j = st.next[st.post[u]]
                if v != j and v != st.next[j]:
                    break
                u = o
            o += 1
        cuts[t] = o
    return cuts


@njit(cache=True, inline="always")
def _cached_pair(st, family, y, u, v, stamp):
    """Index of pair (u, v), one of the four pairs of neighbour y that a step changes,
    remembered for the rest of the step (the hash table is far bigger than the cache)."""
    if st.cache_step[family, y] != stamp:
        st.cache_step[family, y] = stamp
        st.cache_pair[family, y] = _pair_index(st, u, v)
    return st.cache_pair[family, y]


@njit(cache=True)
def _count_step(st, lo, hi, a, b, x, stamp):
    """Step 2 for the windows post[lo:hi] merged by step 1, in order: each merged window
    (h, i, j, k) turns (y, a) at h into (y, x), and (b, y) at j into (x, y) at i.
    Returns the number of new windows written to win_pos / win_pair."""
    n_win = 0
    for o in range(lo, hi):
        h = st.ev_h[o - lo]
        if h == -2:
            continue
        i = st.post[o]
        c = st.weight[i]
        y = st.ev_left[o - lo]
        if y != EMPTY:
            st.pair_count[_cached_pair(st, LEFT_OLD, y, y, a, stamp)] -= c
            q = _cached_pair(st, LEFT_NEW, y, y, x, stamp)
            st.pair_count[q] += c
            st.win_pos[n_win], st.win_pair[n_win] = h, q
            n_win += 1
        y = st.ev_right[o - lo]
        if y != EMPTY:
            st.pair_count[_cached_pair(st, RIGHT_OLD, y, b, y, stamp)] -= c
            q = _cached_pair(st, RIGHT_NEW, y, x, y, stamp)
            st.pair_count[q] += c
            st.win_pos[n_win], st.win_pair[n_win] = i, q
            n_win += 1
    return n_win


@njit(cache=True)
def _finish_step(st, p, lo, hi, x, stamp):
    """Steps 2 and 3 of merging pair p (windows post[lo:hi]) into x, after step 1."""
    first_new = st.sizes[0]   # every pair made below holds x: new
    n_win = _count_step(st, lo, hi, st.pair_a[p], st.pair_b[p], x, stamp)
    st.pair_count[p] = 0       # every occurrence merged; none is left, not even in "aaa"
    st.pair_num[p] = 0
    _post_windows(st, n_win, first_new)
    for new in range(first_new, st.sizes[0]):  # pushed once, with their complete counts
        if st.pair_count[new] > 0:
            _heap_push(st, new, st.pair_count[new])


@njit(cache=True, parallel=True)
def train_merges(st, first_id, start, stop, merges, merge_counts, n_threads=1,
                 block_windows=BLOCK_WINDOWS):
    """Run merge steps start..stop-1; step m creates token first_id + m.

    Writes merges[m] = (a, b) and merge_counts[m]; returns the step reached
    (less than `stop` when no pair is left to merge). Step 1 of a step whose pair has
    many windows runs in up to n_threads blocks of at least block_windows windows, one per
    thread (`_cut_blocks`; tests make the blocks tiny). The caller passes
    numba.get_num_threads(): read in here, it would stop Numba caching this function.
    """
    for m in range(start, stop):
        p = _pop_best(st)
        if p == EMPTY:
            return m
        a, b, x = st.pair_a[p], st.pair_b[p], first_id + m
        merges[m, 0], merges[m, 1], merge_counts[m] = a, b, st.pair_count[p]
        lo, hi = st.pair_first[p], st.pair_first[p] + st.pair_num[p]
        n_blocks = min(n_threads, (hi - lo) // block_windows)
        if n_blocks >= 2:
            cuts = _cut_blocks(st, lo, hi, a, b, n_blocks)
            for t in prange(n_blocks):
                _merge_run(st, cuts[t], cuts[t + 1], lo, a, b, x)
        else:
            _merge_run(st, lo, hi, lo, a, b, x)
        _finish_step(st, p, lo, hi, x, m + 1)
    return stop
