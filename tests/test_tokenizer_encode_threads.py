"""The threaded encoder (tokenizer/pretokenize_kernels.py) against its references.

  chunks      the Numba matchers cut text exactly where `regex` does (GPT-2 and GPT-4
              patterns, arbitrary Unicode, contractions under (?i), newlines, lookahead);
  segments    a long text cut into segments for the threads gives the chunks, and the ids,
              of the text encoded whole, whatever the segment size;
  threads     encode / encode_batch ids are the same at 1 and 2 Numba threads, and the same
              as the reference path (`fast_encode = False`: regex + chunk cache);
  outsiders   the same ids as Hugging Face `tokenizers` loading our tokenizer.json, and as
              tiktoken built from our vocabulary (ranks = ids);
  cache       the reference path's chunk cache still overflows correctly.

No timings here: benchmarks/tokenizer_speed.py measures. Skips without hypothesis,
tokenizers or tiktoken (test-only extras); under CI=true such a skip fails (conftest.py).
"""
import copy
import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
import regex

from tokenizer import bpe_tokenizer, pretokenize_kernels as pk, threaded_path
from tokenizer.bpe_tokenizer import BPETokenizer
from tokenizer.hf_pipeline import GPT2_PATTERN, GPT4_PATTERN

SPECIALS = ["<|endoftext|>", "<pad>", "<bos>", "<eos>"]
PATTERNS = {"gpt4": (pk.GPT4, GPT4_PATTERN), "gpt2": (pk.GPT2, GPT2_PATTERN)}
CORPUS = ("Byte-level BPE merges frequent pairs: th, he, in, er, an. The tokenizer's job. "
          "Grüße, naïve café, 日本語のテキスト, русский текст, Ελληνικά, 😀👍🏽 12345 3.14 "
          "don't it's WE'LL THEY'RE\n\n  \tdef f(x):\r\n    return x  # ok\n") * 40
# code points that the two patterns treat specially: (?i) letters (ſ is 's', K is not 'k'),
# Unicode whitespace and newlines, digits of other scripts, combining marks, emoji, CJK
TRICKY = list("aZ' \t\n\r\x0b\x0c\x85\xa0\u1680\u2028\u3000sStTdDmMlLvVeErRſK1٣²½Ⅻ.,!-_"
              "😀日本éß\u0301\u200d\U0001F1FA") + ["'s", "'LL", "'ve", "'Re", " \n", "\r\n", "  "]


def mixed_text(seed, n_pieces=4000):
    """A long text of words, scripts, numbers, runs of whitespace and newlines, specials."""
    rng = np.random.default_rng(seed)
    words = CORPUS.split(" ") + TRICKY + SPECIALS + ["\n" * 5, " " * 9, "12345678", "<|endof"]
    return "".join(rng.choice(words, size=n_pieces).tolist())


def chunks_by_kernel(text, pattern):
    cps = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    classes, folds = pk.char_tables()
    ends = pk.chunk_ends(cps, 0, cps.size, pattern, classes, folds).tolist()
    return [text[a:b] for a, b in zip([0] + ends[:-1], ends)]


@pytest.fixture(scope="module", params=sorted(PATTERNS))
def tok(request):
    return BPETokenizer(600, SPECIALS, pattern=request.param).train(CORPUS)


def reference_of(tok):
    """The same tokenizer on the reference path, with a cache of its own."""
    ref = copy.copy(tok)
    ref.fast_encode, ref._cache = False, {}
    return ref


# ----------------------------------------------------------------------------
# chunks: the matchers == regex

@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_chunks_equal_regex_on_text(name):
    pattern, source = PATTERNS[name]
    compiled = regex.compile(source)
    for text in [CORPUS, mixed_text(0), "", " ", "\n", "'", "'s", "  x", "x  ", "\r\n\r\n  \n y",
                 "'ll'LL'ſ'K 's", "1234567 ٣٤٥٦ ²³", "a\u0301b", "end with spaces   "]:
        assert chunks_by_kernel(text, pattern) == compiled.findall(text), repr(text[:80])


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_chunks_equal_regex_on_random_unicode(name):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    pattern, source = PATTERNS[name]
    compiled = regex.compile(source)
    any_char = st.characters(exclude_categories=("Cs",))           # surrogates are not text
    text = st.lists(st.one_of(any_char, st.sampled_from(TRICKY)), max_size=40).map("".join)

    @hypothesis.settings(max_examples=600, deadline=None, database=None)
    @hypothesis.given(text)
    def check(s):
        assert chunks_by_kernel(s, pattern) == compiled.findall(s)

    check()


# ----------------------------------------------------------------------------
# segments: cutting for threads changes nothing

def test_segments_cut_only_after_a_letter():
    text = "ab  cd\n\n12 34 ef" * 3
    cps = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    classes, _ = pk.char_tables()
    bounds, owner = pk.cut_segments(cps, np.array([0, 10, cps.size]), classes, 3)
    assert bounds[0] == 0 and bounds[-1] == cps.size and np.all(np.diff(bounds) > 0)
    assert set(bounds[1:-1].tolist()) >= {10}                 # piece bounds are always cuts
    for b in set(bounds[1:-1].tolist()) - {10}:
        assert text[b - 1].isalpha() and not text[b].isalpha(), (b, text[b - 1:b + 1])
    assert owner.tolist() == sorted(owner.tolist())


@pytest.mark.parametrize("target", [1, 2, 7, 100, 1 << 20])
def test_segment_size_does_not_change_ids(tok, target):
    text = mixed_text(1).replace("<", "(")                      # ordinary text only
    pattern = tok._fast_pattern()
    cps = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    classes, folds = pk.char_tables()
    args = (cps, np.array([0, cps.size]), pattern, classes, folds, tok._byte_ids,
            *tok._merge_table, target)
    ids, bounds = pk.encode_pieces_serial(*args)
    assert ids.tolist() == reference_of(tok).encode(text)
    assert bounds.tolist() == [0, ids.size]
    threaded = encode_at(min(2, numba.config.NUMBA_NUM_THREADS), lambda: pk.encode_pieces(*args))
    assert threaded[0].tolist() == ids.tolist() and threaded[1].tolist() == [0, ids.size]


@pytest.mark.parametrize("group", [1, 40, 5000])
def test_texts_cut_into_groups_give_the_same_ids(tok, monkeypatch, group):
    """Texts longer than GROUP_CHARS are cut (threaded_path.cut_long), the rest grouped."""
    texts = [mixed_text(6), "", "word", mixed_text(7, 300), "x" * 100 + " y"]
    expected = [reference_of(tok).encode(t) for t in texts]
    monkeypatch.setattr(threaded_path, "GROUP_CHARS", group)
    assert tok.encode_batch(texts) == expected
    assert [tok.encode(t) for t in texts] == expected
    assert threaded_path.cut_long("one two three", 5) == ["one two", " three"]


# ----------------------------------------------------------------------------
# threads: 1 == 2 == the reference path

def encode_at(threads, fn):
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return fn()
    finally:
        numba.set_num_threads(previous)


def at_two_threads(tok, texts, allowed_special, tmp_path):
    """encode and encode_batch at 2 Numba threads: here when NUMBA_NUM_THREADS allows it,
    else in a child process started with NUMBA_NUM_THREADS=2."""
    if numba.config.NUMBA_NUM_THREADS >= 2:
        return encode_at(2, lambda: ([tok.encode(t, allowed_special) for t in texts],
                                     tok.encode_batch(texts, allowed_special)))
    path, texts_path = tok.save(tmp_path / "two_threads.json"), tmp_path / "texts.json"
    texts_path.write_text(json.dumps(texts), encoding="utf-8")
    code = ("import json, sys, numba; from tokenizer.bpe_tokenizer import BPETokenizer\n"
            "tok = BPETokenizer.load(sys.argv[1]); texts = json.load(open(sys.argv[2]))\n"
            "assert numba.get_num_threads() == 2\n"
            f"print(json.dumps(([tok.encode(t, {allowed_special!r}) for t in texts], "
            f"tok.encode_batch(texts, {allowed_special!r}))))")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(texts_path)],
                         env=dict(os.environ, NUMBA_NUM_THREADS="2"), capture_output=True,
                         text=True, check=True).stdout
    single, batch = json.loads(out)
    return single, batch


@pytest.mark.parametrize("allowed_special", ["all", "none"])
def test_ids_same_at_1_and_2_threads_and_as_reference(tok, allowed_special, tmp_path):
    texts = [mixed_text(2), mixed_text(3, 50_000), "", "plain", CORPUS, "<pad>", "x<eos>"]
    expected = [reference_of(tok).encode(t, allowed_special) for t in texts]
    one = encode_at(1, lambda: [tok.encode(t, allowed_special) for t in texts])
    one_batch = encode_at(1, lambda: tok.encode_batch(texts, allowed_special))
    two, two_batch = at_two_threads(tok, texts, allowed_special, tmp_path)
    assert one == expected
    assert one_batch == expected
    assert two == expected
    assert two_batch == expected
    assert tok.decode(one[1]) == texts[1]


def test_fast_path_only_for_the_builtin_patterns(tok):
    assert tok._fast_pattern() in (pk.GPT2, pk.GPT4)
    other = BPETokenizer(vocab_size=300, pattern=r"\p{L}+|\s+|.").train(CORPUS)
    assert other._fast_pattern() is None                      # any other regex: the reference
    other.fast_encode = True
    assert other.encode(CORPUS[:200]) == reference_of(other).encode(CORPUS[:200])


def test_python_threads_may_encode_at_once(tmp_path):
    """Under Numba's workqueue layer (mini_llm/threads.py's choice) two parallel launches at
    once abort the process; encode takes a lock, so Python threads may share a tokenizer."""
    path = BPETokenizer(vocab_size=400).train(CORPUS).save(tmp_path / "tok.json")
    code = ("import sys; from concurrent.futures import ThreadPoolExecutor\n"
            "from tokenizer.bpe_tokenizer import BPETokenizer\n"
            "tok = BPETokenizer.load(sys.argv[1])\n"
            "texts = [sys.argv[2] * (40 + k) for k in range(16)]\n"
            "with ThreadPoolExecutor(4) as pool: ids = list(pool.map(tok.encode, texts))\n"
            "assert ids == [tok.encode(t) for t in texts]; print('same')")
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    result = subprocess.run([sys.executable, "-c", code, str(path), CORPUS], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "same" in result.stdout, result.stderr[-2000:]


def test_both_paths_reject_a_lone_surrogate(tok):
    for t in (tok, reference_of(tok)):
        with pytest.raises(ValueError, match="lone surrogate"):
            t.encode("ok \ud800 no")


# ----------------------------------------------------------------------------
# outsiders: Hugging Face tokenizers and tiktoken on the same vocabulary

def test_same_ids_as_hugging_face(tok, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(tok.save(tmp_path / "hf.json")))
    texts = [mixed_text(4), CORPUS, "Hello world!\n\n  x"]
    hf_ids = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert encode_at(1, lambda: tok.encode_batch(texts)) == hf_ids
    assert at_two_threads(tok, texts, "all", tmp_path)[1] == hf_ids


def tiktoken_of(tok):
    """A tiktoken Encoding from our vocabulary: for byte-level BPE, rank = token id."""
    tiktoken = pytest.importorskip("tiktoken")
    source = PATTERNS["gpt4" if tok._fast_pattern() == pk.GPT4 else "gpt2"][1]
    return tiktoken.Encoding(name="minillm-test", pat_str=source,
                             mergeable_ranks={token: i for i, token in tok.vocab.items()},
                             special_tokens=tok.special_tokens)


def test_same_ids_as_tiktoken(tok):
    enc = tiktoken_of(tok)
    texts = [mixed_text(5), CORPUS, "Hello world!\n\n  x", "<|endoftext|>a<pad>"]
    ours = tok.encode_batch(texts)
    assert ours == enc.encode_batch(texts, allowed_special="all")
    assert ours == [enc.encode(t, allowed_special="all") for t in texts]


# ----------------------------------------------------------------------------
# cache: the reference path's overflow (more than CACHE_LIMIT new chunks in one call)

def test_reference_cache_overflow_matches_fast_path(tok):
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = sorted({"".join(w) for w in rng.choice(letters, size=(bpe_tokenizer.CACHE_LIMIT
                                                                   + 5000, 7))})
    assert len(words) > bpe_tokenizer.CACHE_LIMIT
    ref = reference_of(tok)
    warm = ref.encode(" ".join(words[:1000]))                  # these chunks are now cached
    ids = ref.encode(" ".join(words))                          # 2^18 + more new ones
    assert 0 < len(ref._cache) <= len(words) + 1
    assert ids[:len(warm)] == warm
    assert ids == tok.encode(" ".join(words))
