"""Step 1 of the tokenizer: byte-level BPE on raw bytes (train, encode, decode).

What it is: the whole BPE algorithm on lists of byte ids, in small pure
functions. What it isn't: a tokenizer for text. No regex, no special tokens, no
files; `bpe_tokenizer.py` (step 2) adds those and calls this file for the
per-chunk work.

    ids 0..255    the bytes themselves, the base alphabet
    merge m       the pair (a, b) becomes the new id first_id + m (256, 257, ...)
    words         lists of ids (one per unique chunk of text), each with a count

Training repeatedly merges the most frequent adjacent pair into a new token;
encoding replays those merges by rank; decoding joins each id's bytes. The
Wikipedia example, three merges on "aaabdaaabac":

    aa -> 256, ab -> 257, (256, 257) -> 258:  aaabdaaabac -> [258, 'd', 258, 'a', 'c']

Ties: when pairs have the same count, the pair (a, b) that is smallest in id
order, first by a, then by b, is merged. The readable reference
(`train_reference`) and the Numba path (`train_fast`, kernels in
`bpe_train_kernels.py`) both do this, and `tests/test_tokenizer_kernels.py` and
`tests/test_bpe_training_threads.py` check that they produce the same merges.
Hugging Face's trainer may break ties differently. What we match with
`tokenizers` is loading the same tokenizer.json and getting the same ids.
"""
import collections
import unicodedata

import numba
import numpy as np

from mini_llm.progress import warm_up
from tokenizer import bpe_kernels, bpe_train_kernels, pretokenize_kernels


# ----------------------------------------------------------------------------
# The reference algorithm: plain Python, one idea per function

def get_pair_counts(words, counts):
    """Count adjacent pairs over all words, each word weighted by its count.

    >>> get_pair_counts([[97, 97, 97, 98]], [2])
    {(97, 97): 4, (97, 98): 2}
    """
    pair_counts = collections.defaultdict(int)
    for word, count in zip(words, counts):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
    return dict(pair_counts)


def merge_pair(ids, pair, new_id):
    """Replace every occurrence of `pair` in `ids` by `new_id`, left to right.

    >>> merge_pair([97, 97, 97, 98], (97, 97), 256)
    [256, 97, 98]
    """
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def train_reference(words, counts, num_merges, first_id=256, on_merge=None):
    """Learn up to `num_merges` merges; returns [(a, b)] in order (merge m makes first_id + m).

    Ties: the highest count wins, then the smallest pair (a, b).
    Stops early when every word is a single token. on_merge(m, pair, count) is
    called after each merge, for printing.

    >>> train_reference([list(b"aaabdaaabac")], [1], 3)
    [(97, 97), (97, 98), (256, 257)]
    """
    merges = []
    for m in range(num_merges):
        pair_counts = get_pair_counts(words, counts)
        if not pair_counts:
            break
        pair = max(pair_counts, key=lambda p: (pair_counts[p], -p[0], -p[1]))
        words = [merge_pair(word, pair, first_id + m) for word in words]
        merges.append(pair)
        if on_merge:
            on_merge(m, pair, pair_counts[pair])
    return merges


def encode_chunk_reference(ids, merge_ranks, merge_ids):
    """Apply merges to one chunk's byte ids: always the lowest-rank pair present.

    merge_ranks: {(a, b): rank}; merge_ids: {(a, b): new id}.

    >>> ranks, new_ids = {(97, 97): 0, (97, 98): 1}, {(97, 97): 256, (97, 98): 257}
    >>> encode_chunk_reference(list(b"aaab"), ranks, new_ids)
    [256, 257]
    """
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: merge_ranks.get(p, float("inf")))
        if pair not in merge_ranks:
            break
        ids = merge_pair(ids, pair, merge_ids[pair])
    return ids


def decode(ids, id_bytes):
    """Ids -> the bytes they stand for, joined. id_bytes: id -> bytes (a list or a dict).

    >>> decode([258, 100], {258: b"aaab", 100: b"d"})
    b'aaabd'
    """
    return b"".join(map(id_bytes.__getitem__, ids))


def render_token(token):
    """Token bytes -> printable text: b'\\nthe' -> '\\\\u000athe' (control characters escaped)."""
    text = token.decode("utf-8", errors="replace")
    return "".join(c if unicodedata.category(c)[0] != "C" else f"\\u{ord(c):04x}" for c in text)


# ----------------------------------------------------------------------------
# The fast path: the same results from the Numba kernels in bpe_train_kernels.py
# (training) and bpe_kernels.py (encoding)

def train_fast(words, counts, num_merges, first_id=256, on_merge=None):
    """Same result as `train_reference`, with Numba kernels and incremental pair counts.

    words: lists of ids (or byte strings). See `train_packed` for the arrays it becomes.
    """
    symbols, bounds = bpe_train_kernels.pack_words(words)
    return train_packed(symbols, bounds, counts, num_merges, first_id, on_merge)


def train_packed(symbols, bounds, counts, num_merges, first_id=256, on_merge=None,
                 block_windows=bpe_train_kernels.BLOCK_WINDOWS):
    """`train_fast` on packed words: word k is symbols[bounds[k]:bounds[k+1]], counts[k] times.

    The kernel runs 256 merges per call; on_merge is then called for each. A merge step
    with many windows shares them out to Numba's threads (numba.get_num_threads()), at
    least block_windows windows each (tests make it tiny, to use threads on tiny words).
    """
    # the first call compiles the kernels on a 2-byte word (the nested call returns at once)
    warm_up("bpe train", "BPE training kernels", lambda: train_fast([[97, 98]], [1], 1))
    n_tokens = max(first_id + num_merges, int(np.max(symbols, initial=0)) + 1)
    state = bpe_train_kernels.packed_state(symbols, bounds, counts, n_tokens)
    bpe_train_kernels.train_init(state)
    merges = np.zeros((num_merges, 2), np.int64)
    merge_counts = np.zeros(num_merges, np.int64)
    done = 0
    while done < num_merges:
        stop = min(done + 256, num_merges)
        with pretokenize_kernels.LAUNCH_LOCK:   # one parallel kernel at a time (workqueue)
            reached = bpe_train_kernels.train_merges(state, first_id, done, stop, merges,
                                                     merge_counts, numba.get_num_threads(),
                                                     block_windows)
        for m in range(done, reached) if on_merge else ():
            on_merge(m, tuple(merges[m].tolist()), int(merge_counts[m]))
        done = reached
        if reached < stop:
            break
    return [tuple(pair) for pair in merges[:done].tolist()]


def merge_table(merges):
    """merges [(a, b, new_id)] by rank -> the kernel's hash table (table_key, table_rank,
    rank_new_id); see `bpe_kernels.build_merge_table`."""
    warm_up("bpe merge table", "BPE merge-table kernel",
            lambda: bpe_kernels.build_merge_table([(97, 98)], [256]))
    return bpe_kernels.build_merge_table([(a, b) for a, b, _ in merges],
                                         [new for _, _, new in merges])


def encode_fast(chunks, byte_ids, table):
    """Byte strings -> one tuple of ids each, by the Numba kernel; the same ids as
    `encode_chunk_reference`. byte_ids: (256,) int64, the id of each byte; table:
    from `merge_table`."""
    data = np.frombuffer(b"".join(chunks), np.uint8)
    return encode_symbols_fast(data, [len(c) for c in chunks], byte_ids, table)


def encode_symbols_fast(data, lengths, symbol_ids, table):
    """The kernel on any base alphabet: chunk k is the next lengths[k] entries of data
    (uint8 bytes here; int64 characters' ids in `sentencepiece_bpe.py`), each entry s
    starting as the id symbol_ids[s]. Returns one tuple of ids per chunk."""
    offsets = np.zeros(len(lengths) + 1, np.int64)  # (N+1,) chunk k: data[offsets[k]:offsets[k+1]]
    np.cumsum(lengths, out=offsets[1:])
    # compiles on 1 symbol, once per dtype of data (the nested call returns at once)
    warm_up(f"bpe encode {data.dtype}", "BPE encoding kernels",
            lambda: encode_symbols_fast(np.zeros(1, data.dtype), [1], symbol_ids, table))
    ids, bounds = bpe_kernels.encode_chunks(data, offsets, symbol_ids, *table)
    ids, bounds = ids.tolist(), bounds.tolist()
    return [tuple(ids[bounds[k]:bounds[k + 1]]) for k in range(len(lengths))]
