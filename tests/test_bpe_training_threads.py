"""BPE training's fast path (tokenizer/bpe_train_kernels.py) against its references.

  merges      `train_packed` learns the merges of `train_reference`, with the same counts,
              on random small corpora (long words, runs like "aaaa", ties everywhere),
              at 1 and 2 threads, with merge steps cut into blocks as small as 1 window
              so that the threaded step runs on tiny words too;
  long lines  one 10 KB chunk (no space) equals the reference; a 100 KB one is checked
              against the encoder (an independent kernel, pinned to its own reference):
              training's final tokens of a word are that word's encoding, and the counts
              kept incrementally equal a recount;
  chunks      Numba's chunk counts equal the `regex` Counter (`_count_chunks`), for both
              built-in patterns, at 1 and 2 threads, in one call or in several groups;
  tokenizer   BPETokenizer.train gives the same tokenizer at 1 and 2 threads.
No timings here: see the numbers in the issue / benchmarks.
"""
import random
import re

import numba
import numpy as np
import pytest

from tokenizer import bpe_train_kernels as kernels
from tokenizer import count_kernels
from tokenizer.bpe_tokenizer import BPETokenizer
from tokenizer.byte_bpe import get_pair_counts, train_packed, train_reference

SPECIALS = ["<|endoftext|>", "<pad>", "<bos>", "<eos>"]
needs_two = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                               reason="Numba's pool has one thread (NUMBA_NUM_THREADS=1)")


@pytest.fixture
def threads():
    """set(n): run Numba on n threads for the rest of the test (restored after)."""
    before = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(before)


def reference_with_counts(words, counts, num_merges):
    seen = []
    train_reference([list(w) for w in words], counts, num_merges,
                    on_merge=lambda m, pair, count: seen.append((pair, count)))
    return seen


def fast_with_counts(words, counts, num_merges, block_windows=kernels.BLOCK_WINDOWS):
    seen = []
    train_packed(*kernels.pack_words(words), counts, num_merges, block_windows=block_windows,
                 on_merge=lambda m, pair, count: seen.append((pair, count)))
    return seen


def random_corpus(seed):
    """Few letters (many ties, many overlapping pairs), short and long words, counts 1-5."""
    rng = random.Random(seed)
    letters = rng.choice([b"ab", b"aab", b"abc", b"abcdefgh"])
    words = [[rng.choice(letters) for _ in range(rng.choice([rng.randint(0, 12),
                                                            rng.randint(50, 200)]))]
             for _ in range(rng.randint(1, 30))]
    return words, [rng.randint(1, 5) for _ in words]


@needs_two
@pytest.mark.parametrize("seed", range(12))
def test_random_corpora_equal_reference(seed, threads):
    words, counts = random_corpus(seed)
    num_merges = [5, 50, 10_000][seed % 3]   # 10_000: trained until every word is one token
    expected = reference_with_counts(words, counts, num_merges)
    for n_threads in (1, 2):
        threads(n_threads)
        for block_windows in (1, 2, 5, kernels.BLOCK_WINDOWS):
            assert fast_with_counts(words, counts, num_merges, block_windows) == expected, \
                (n_threads, block_windows)


@needs_two
@pytest.mark.parametrize("word", [b"aaaa", b"aaaaa", b"a" * 101, b"abababa", b"aabaabaab",
                                  b"abcabcabc" * 7, b"ab" * 50 + b"a"])
def test_runs_merge_left_to_right(word, threads):
    """(a, a) in "aaaaa" is counted 4 times and merged as (aa)(aa)a, as the reference does,
    also when the windows of one step are split among threads."""
    words, counts = [word, word[:3], b"ba" + word], [2, 1, 3]
    expected = reference_with_counts(words, counts, 10_000)
    threads(2)
    for block_windows in (1, 2, 3):
        assert fast_with_counts(words, counts, 10_000, block_windows) == expected


def is_window(state, i, a, b):
    j = state.next[i]
    return state.symbols[i] == a and j != kernels.EMPTY and state.symbols[j] == b


def blocks_in_reverse(words, counts, num_merges, n_blocks):
    """The threaded merge step with its blocks run one by one, last block first: blocks
    that no merge crosses give the same result in any order. Also checks each cut: the
    window v after it is neither the partner j of the live window u before it nor
    next[j], the two positions that u's merge writes."""
    state = kernels.packed_state(*kernels.pack_words(words), counts, 256 + num_merges)
    kernels.train_init(state)
    seen = []
    for m in range(num_merges):
        p = kernels._pop_best(state)
        if p == kernels.EMPTY:
            break
        a, b, x = int(state.pair_a[p]), int(state.pair_b[p]), 256 + m
        seen.append(((a, b), int(state.pair_count[p])))
        lo, hi = int(state.pair_first[p]), int(state.pair_first[p] + state.pair_num[p])
        cuts = kernels._cut_blocks(state, lo, hi, a, b, n_blocks)
        live = [o for o in range(lo, hi) if is_window(state, state.post[o], a, b)]
        for cut in cuts[1:-1]:
            before, after = [o for o in live if o < cut], [o for o in live if o >= cut]
            if before and after:
                j = state.next[state.post[before[-1]]]
                assert state.post[after[0]] not in (j, state.next[j])
        for t in reversed(range(n_blocks)):
            kernels._merge_run(state, cuts[t], cuts[t + 1], lo, a, b, x)
        kernels._finish_step(state, p, lo, hi, x, m + 1)
    return seen


@pytest.mark.parametrize("seed", range(6))
def test_blocks_are_independent(seed):
    words, counts = random_corpus(seed)
    words += [b"ab" * 40, b"a" * 60, b"aab" * 20]
    counts += [3, 2, 1]
    expected = reference_with_counts(words, counts, 80)
    for n_blocks in (2, 3, 7):
        assert blocks_in_reverse(words, counts, 80, n_blocks) == expected


def test_word_order_does_not_matter():
    words, counts = random_corpus(3)
    order = list(range(len(words)))
    random.Random(0).shuffle(order)
    assert fast_with_counts(words, counts, 200) == \
        fast_with_counts([words[k] for k in order], [counts[k] for k in order], 200)


def english_letters(n_chars):
    """English with everything but its letters removed: one long word that has real merges."""
    from pydoc_data.topics import topics
    text = re.sub(r"[^a-z]", "", " ".join(topics[k] for k in sorted(topics)).lower())
    return (text * (1 + n_chars // len(text)))[:n_chars]


def random_letters(n_chars, seed=0):
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n_chars))


@pytest.mark.parametrize("make", [english_letters, random_letters])
def test_10kb_line_equals_reference(make, threads):
    line = make(10_000).encode()
    threads(2)
    assert fast_with_counts([line], [1], 140, block_windows=64) == \
        reference_with_counts([line], [1], 140)


def final_word(state, start):
    """The tokens of the word starting at position `start`, read along the links."""
    tokens, i = [], start
    while i != kernels.EMPTY:
        tokens.append(int(state.symbols[i]))
        i = state.next[i]
    return tokens


@needs_two
@pytest.mark.parametrize("make", [english_letters, random_letters])
def test_100kb_line_matches_encoder_and_recount(make, threads):
    """The reference needs minutes here; the encoder is the trusted kernel instead."""
    line = make(100_000)
    tokenizer = BPETokenizer(vocab_size=400, special_tokens=[])
    results = []
    for n_threads, block_windows in ((1, kernels.BLOCK_WINDOWS), (2, 256)):
        threads(n_threads)
        symbols, bounds = kernels.pack_words([line.encode()])
        state = kernels.packed_state(symbols, bounds, [1], 400)
        kernels.train_init(state)
        merges, merge_counts = np.zeros((144, 2), np.int64), np.zeros(144, np.int64)
        assert kernels.train_merges(state, 256, 0, 144, merges, merge_counts, n_threads,
                                    block_windows) == 144
        results.append((merges.tolist(), merge_counts.tolist(), final_word(state, 0), state))
    assert results[0][:3] == results[1][:3]
    merges, merge_counts, tokens, state = results[1]
    tokenizer.train(line)
    assert [(a, b) for a, b, _ in tokenizer.merges] == [tuple(p) for p in merges]
    assert list(tokenizer._encode_chunks([line])[0]) == tokens
    live = {(int(state.pair_a[p]), int(state.pair_b[p])): int(state.pair_count[p])
            for p in range(state.sizes[0]) if state.pair_count[p]}
    assert live == get_pair_counts([tokens], [1])


MIXED = ("Byte-level BPE merges frequent pairs: th, he, in. Grüße, naïve café, 日本語, "
         "русский, 😀👍🏽 12345 3.14 don't IT'S we'LL\n\n  \tdef f(x):\r\n    return x  # ok\n")


def mixed_texts(seed, n_texts=30):
    rng = random.Random(seed)
    pieces = MIXED.split(" ") + SPECIALS + ["\n" * 4, " " * 7, "ſ'S", "'ll", "x" * 500]
    return ["".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(0, 300)))
            for _ in range(n_texts)]


def as_dict(packed):
    (data, bounds), counts = packed
    return {bytes(data[bounds[k]:bounds[k + 1]]): int(counts[k]) for k in range(len(counts))}


@needs_two
@pytest.mark.parametrize("pattern", ["gpt4", "gpt2", r"\w+|\W"])
def test_chunk_counts_equal_regex(pattern, threads):
    tokenizer = BPETokenizer(1000, SPECIALS, pattern)
    texts = mixed_texts(0)
    expected = {w.encode(): n for w, n in tokenizer._count_chunks(texts).items()}
    for n_threads in (1, 2):
        threads(n_threads)
        got = as_dict(tokenizer._count_chunks_packed(texts))
        assert got == expected and list(got) == list(expected)   # first seen first


@needs_two
def test_chunk_counts_merge_across_groups(threads):
    """Texts counted in several groups, then merged, count as one group (`merge_counts`)."""
    tokenizer = BPETokenizer(1000, SPECIALS)
    texts = mixed_texts(1, n_texts=12)
    threads(2)
    whole = tokenizer._count_chunks_packed(texts)
    parts = [tokenizer._count_chunks_packed(texts[k:k + 5]) for k in range(0, 12, 5)]
    assert as_dict(count_kernels.merge_counts(parts)) == as_dict(whole)
    assert list(as_dict(count_kernels.merge_counts(parts))) == list(as_dict(whole))


@needs_two
def test_tokenizer_same_at_1_and_2_threads(threads):
    from pydoc_data.topics import topics
    text = "\n\n".join(topics[k] for k in sorted(topics))[:300_000]
    trained = []
    for n_threads in (1, 2):
        threads(n_threads)
        trained.append(BPETokenizer(vocab_size=1200).train(text))
    assert trained[0].merges == trained[1].merges and trained[0].vocab == trained[1].vocab
