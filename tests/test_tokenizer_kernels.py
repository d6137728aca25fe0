"""The Numba fast path against the plain-Python reference.

Training: `train_fast` (incremental pair counts, bpe_train_kernels.py) must learn
exactly the merges of `train_reference` (recount every step), ties included:
on real English text, and trained to exhaustion on tiny texts where ties and
overlapping pairs ("aaaa") are everywhere. Encoding: the `encode_chunks`
kernel must give the ids of `encode_chunk_reference`, also on very long chunks.
"""
import collections
import os
import random
import sysconfig

import numpy as np
import pytest

from tokenizer.bpe_kernels import encode_chunks
from tokenizer.bpe_tokenizer import BPETokenizer
from tokenizer.byte_bpe import encode_chunk_reference, train_fast, train_reference


def english_text(n_chars):
    """Real English from the Python docs in the stdlib (its .py sources if absent)."""
    try:
        from pydoc_data.topics import topics
        text = "\n\n".join(topics[k] for k in sorted(topics))
    except ImportError:
        folder = sysconfig.get_paths()["stdlib"]
        names = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
        text = "".join(open(os.path.join(folder, n), encoding="utf-8").read() for n in names)
    return text[:n_chars]


def words_and_counts(tokenizer, text):
    counts = tokenizer._count_chunks([text])
    return [list(w.encode("utf-8")) for w in counts], list(counts.values())


def test_numba_training_equals_reference_on_english():
    text = english_text(250_000)
    assert len(text) >= 200_000
    fast = BPETokenizer(vocab_size=256 + 4 + 200).train(text)
    slow = BPETokenizer(vocab_size=256 + 4 + 200).train(text, reference=True)
    assert len(fast.merges) == 200
    assert fast.merges == slow.merges
    assert fast.vocab == slow.vocab


@pytest.mark.parametrize("seed", range(4))
def test_equal_when_trained_to_exhaustion(seed):
    """Small alphabets make many equal counts and overlapping pairs such as (a, a)."""
    rng = random.Random(seed)
    words = [[rng.choice(b"aab") for _ in range(rng.randint(1, 12))] for _ in range(300)]
    counts = [rng.randint(1, 5) for _ in words]
    slow = train_reference([w[:] for w in words], counts, 10_000)
    fast = train_fast(words, counts, 10_000)
    assert fast == slow
    assert 0 < len(fast) < 10_000  # stopped early: every word became one token


def test_tie_break_is_smallest_pair():
    """(b, c) and (a, b) both occur twice; the smaller pair (97, 98) = 'ab' wins."""
    words, counts = [list(b"abc")], [2]
    assert train_reference(words, counts, 1) == [(97, 98)]
    assert train_fast(words, counts, 1) == [(97, 98)]


@pytest.fixture(scope="module")
def trained():
    return BPETokenizer(vocab_size=1200).train(english_text(200_000))


def reference_ids(tokenizer, chunk):
    ranks = {(a, b): r for r, (a, b, _) in enumerate(tokenizer.merges)}
    new_ids = {(a, b): new for a, b, new in tokenizer.merges}
    return encode_chunk_reference(list(chunk.encode("utf-8")), ranks, new_ids)


def test_encode_kernel_equals_reference(trained):
    held_out = english_text(260_000)[200_000:] + " naïve 日本語 😀👍🏽 1234567"
    chunks = sorted(set(trained._pretokenize(held_out)))
    got = trained._encode_chunks(chunks)
    assert [list(ids) for ids in got] == [reference_ids(trained, c) for c in chunks]


@pytest.mark.parametrize("chunk", ["a" * 100_000, "the" * 30_000, "ab" * 40_000 + "c"])
def test_long_chunk_equals_reference(chunk):
    """One enormous chunk (no word boundaries) goes through the heap in O(n log n)."""
    tokenizer = BPETokenizer(vocab_size=300, special_tokens=[]).train(
        ["aaaa aaaaaaaa theththe abababab abc"] * 3)
    ids = tokenizer._encode_chunks([chunk])[0]
    assert list(ids) == reference_ids(tokenizer, chunk)
    assert len(ids) < len(chunk) / 2
    assert tokenizer.decode(ids) == chunk


def test_kernel_handles_empty_and_many_chunks(trained):
    data = np.frombuffer(b"abcthe", np.uint8)
    offsets = np.array([0, 0, 3, 3, 6], np.int64)
    ids, bounds = encode_chunks(data, offsets, trained._byte_ids, *trained._merge_table)
    pieces = [ids[bounds[k]:bounds[k + 1]].tolist() for k in range(4)]
    assert pieces == [[], reference_ids(trained, "abc"), [], reference_ids(trained, "the")]


def test_word_counts_weight_the_pairs():
    """A word seen 3 times counts 3 times: same merges as listing it thrice."""
    tokenizer = BPETokenizer(vocab_size=300, special_tokens=[])
    words, counts = words_and_counts(tokenizer, "xyz xyz xyz abc abd")
    expanded = [w for w, c in zip(words, counts) for _ in range(c)]
    assert collections.Counter(map(tuple, expanded))[tuple(b" xyz")] == 2
    assert train_fast(words, counts, 20) == train_reference(expanded, [1] * len(expanded), 20)
