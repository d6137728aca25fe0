"""Tokenizer tests, the documented place: worked examples, round trips, special
tokens, save/load, and one clear error line for each kind of bad input.

More live in tests/: test_tokenizer_kernels.py (Numba == reference),
test_tokenizer_hf.py (== Hugging Face `tokenizers`), test_tokenizer_roundtrip.py
(property-based round trips with hypothesis).
"""
import json

import numpy as np
import pytest

from tests.errors import one_line_error
from tokenizer import bpe_tokenizer, byte_bpe
from tokenizer.bpe_tokenizer import BPETokenizer
from tokenizer.byte_bpe import get_pair_counts, merge_pair

TEXT = ("The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs on.\n"
        "Numbers like 12345 and 3.14 appear, and so do words such as don't and it's.\n") * 20


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer(vocab_size=320).train(TEXT)


def test_helpers_worked_examples():
    assert get_pair_counts([[97, 97, 97, 98]], [2]) == {(97, 97): 4, (97, 98): 2}
    assert merge_pair([97, 97, 97, 98], (97, 97), 256) == [256, 97, 98]
    assert merge_pair([1, 2, 1, 2], (1, 2), 9) == [9, 9]


def test_byte_bpe_alone_on_raw_bytes():
    """Step 1 by itself (no regex, no special tokens): train, encode, decode "aaabdaaabac"."""
    data = b"aaabdaaabac"
    pairs = byte_bpe.train_reference([list(data)], [1], 3)
    assert pairs == byte_bpe.train_fast([list(data)], [1], 3) == [(97, 97), (97, 98), (256, 257)]
    merges = [(a, b, 256 + m) for m, (a, b) in enumerate(pairs)]
    ranks = {(a, b): rank for rank, (a, b, _) in enumerate(merges)}
    ids = byte_bpe.encode_chunk_reference(list(data), ranks, {(a, b): new for a, b, new in merges})
    assert ids == [258, ord("d"), 258, ord("a"), ord("c")]
    fast = byte_bpe.encode_fast([data, b""], np.arange(256, dtype=np.int64),
                                byte_bpe.merge_table(merges))
    assert fast == [tuple(ids), ()]
    vocab = {i: bytes([i]) for i in range(256)}
    for a, b, new in merges:
        vocab[new] = vocab[a] + vocab[b]
    assert byte_bpe.decode(ids, vocab) == data


@pytest.mark.parametrize("reference", [False, True])
def test_wikipedia_example(reference):
    """aaabdaaabac: aa -> Z (256), ab -> Y (257), ZY -> X (258), giving XdXac."""
    tok = BPETokenizer(vocab_size=256 + 3, special_tokens=[])
    tok.train(["aaabdaaabac"], reference=reference)
    assert [(a, b) for a, b, _ in tok.merges] == [(97, 97), (97, 98), (256, 257)]
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]
    assert tok.vocab[258] == b"aaab"


def test_pre_tokenization_patterns():
    gpt4, gpt2 = BPETokenizer(pattern="gpt4"), BPETokenizer(pattern="gpt2")
    text = "Hello world's 1234567!!\n\n  x"
    assert gpt4._pretokenize(text) == ["Hello", " world", "'s", " ", "123", "456", "7",
                                       "!!\n\n", " ", " x"]
    assert gpt2._pretokenize(text) == ["Hello", " world", "'s", " 1234567", "!!",
                                       "\n\n ", " x"]


@pytest.mark.parametrize("text", ["", "a", "hello world", "  spaces  \t\n\r\n",
                                  "日本語のテキスト 中文", "emoji 😀👍🏽🇺🇸 ❤️", "\x00\x7f\uffff",
                                  "x" * 5000])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_merges_compress(tok):
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT.encode("utf-8")) / 2
    assert tok.encode_batch([TEXT, "fox"]) == [ids, tok.encode("fox")]


def test_token_lookups(tok):
    assert tok.vocab_size == 320
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (317, 318, 319)
    assert tok.id_to_token(tok.eos_id) == "<eos>" and tok.token_to_id("<eos>") == tok.eos_id
    the = tok.token_to_id("Ġthe")  # GPT-2's byte-level spelling of " the"
    assert the is not None and tok.id_to_token(the) == "Ġthe" and tok.decode([the]) == " the"
    assert tok.token_to_id("no such token") is None
    assert BPETokenizer(special_tokens=[]).eos_id is None


def test_invalid_utf8_from_partial_tokens(tok):
    ids = tok.encode("😀")
    assert tok.decode(ids[:1]) == "\ufffd"  # half a character: replaced, not raised
    with pytest.raises(UnicodeDecodeError):
        tok.decode(ids[:1], errors="strict")


def test_special_tokens(tok):
    text = "a<|endoftext|>b<eos>"
    eot, eos = tok.token_to_id("<|endoftext|>"), tok.eos_id
    assert tok.encode(text) == tok.encode("a") + [eot] + tok.encode("b") + [eos]
    as_text = tok.encode(text, allowed_special="none")
    assert eot not in as_text and eos not in as_text and tok.decode(as_text) == text
    assert tok.encode(text, allowed_special={"<eos>"})[-1] == eos
    assert eot not in tok.encode(text, allowed_special={"<eos>"})
    with pytest.raises(ValueError, match="special token '<|endoftext|>' at index 1"):
        tok.encode(text, allowed_special="none_raise")
    assert tok.encode("plain", allowed_special="none_raise") == tok.encode("plain")


def test_training_never_learns_special_token_text():
    tok = BPETokenizer(vocab_size=300).train("<|endoftext|>" * 50 + "ab")
    assert all(b"endof" not in token for token in tok.vocab.values())


def test_early_stop_notice(capsys):
    tok = BPETokenizer().train("tiny text, tiny vocab")  # documented default 30000
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "supports only" in err and "30000" in err
    assert tok.vocab_size == 256 + len(tok.merges) + 4 < 300
    assert tok.decode(tok.encode("tiny vocab")) == "tiny vocab"


@pytest.mark.parametrize("as_dir", [False, True])
def test_save_load(tok, tmp_path, as_dir):
    path = tok.save(tmp_path / ("saved" if as_dir else "tok.json"))
    loaded = BPETokenizer.load(tmp_path / "saved" if as_dir else path)
    assert loaded.encode(TEXT) == tok.encode(TEXT)
    assert (loaded.vocab_size, loaded.eos_id) == (tok.vocab_size, tok.eos_id)
    dump = open(path[:-len(".json")] + ".vocab.txt", encoding="utf-8").read().splitlines()
    first_merge = next(line for line in dump if line.startswith("256\t"))
    assert "= '" in first_merge and "' + '" in first_merge


# --- bad input: one line naming the problem ------------------------------

def test_bad_training_input():
    one_line_error(lambda: BPETokenizer().train([]), "empty")
    one_line_error(lambda: BPETokenizer().train(["", "<eos>"]), "no characters")
    one_line_error(lambda: BPETokenizer(vocab_size=259), "259", "260")
    one_line_error(lambda: BPETokenizer(pattern="(unclosed"), "pattern")


def test_decode_unknown_ids(tok):
    for ids in ([320], [-1], [5, 10 ** 9], ["a"], [1.5]):
        one_line_error(lambda: tok.decode(ids), "not in the vocabulary", "size 320")


def test_encode_rejects_lone_surrogates(tok):
    one_line_error(lambda: tok.encode("ok \ud800 no"), "surrogate")


@pytest.mark.parametrize("content, words", [
    ("{not json", ["not valid JSON", "line 1"]),
    ("[1, 2]", ["not a JSON object"]),
    ('{"model": {"type": "WordPiece", "vocab": {}, "merges": []}}', ["WordPiece"]),
    ('{"version": "1.0"}', ["no BPE model"]),
])
def test_load_corrupt_or_foreign(tmp_path, content, words):
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="utf-8")
    one_line_error(lambda: BPETokenizer.load(path), str(path), *words)


def test_load_rejects_broken_parts(tok, tmp_path):
    data = json.loads(open(tok.save(tmp_path / "good.json"), encoding="utf-8").read())
    cases = [
        (lambda d: d["model"]["merges"].append(["Ġthe", "zzz"]), "merge #"),
        (lambda d: d["model"]["vocab"].pop("Ā"), "lacks 1 of the 256 byte tokens"),
        (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "'Whitespace'"),
        (lambda d: d["model"].update(continuing_subword_prefix="##"), "continuing_subword"),
    ]
    for k, (breakage, words) in enumerate(cases):
        broken = json.loads(json.dumps(data))
        breakage(broken)
        path = tmp_path / f"broken{k}.json"
        path.write_text(json.dumps(broken), encoding="utf-8")
        one_line_error(lambda: BPETokenizer.load(path), str(path), words)
    one_line_error(lambda: BPETokenizer.load(tmp_path / "nowhere"), "nowhere")


def test_chunk_cache_overflow_in_one_call(tok):
    """More than CACHE_LIMIT (2^18) new distinct chunks in one encode, after earlier calls
    filled the cache: the cache starts over with every chunk of this text (it once dropped the
    chunks already cached, then failed to read them back: KeyError)."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = {"".join(w) for w in rng.choice(letters, size=(bpe_tokenizer.CACHE_LIMIT + 5000, 7))}
    words = sorted(words)
    assert len(words) > bpe_tokenizer.CACHE_LIMIT
    warm = tok.encode(" ".join(words[:1000]))               # these chunks are now cached
    ids = tok.encode(" ".join(words))                       # 2^18 + more new ones, and the cached
    assert len(tok._cache) <= len(words) + 1
    assert ids[:len(warm)] == warm
    pieces = [tok.encode((" " if i else "") + " ".join(words[i:i + 50000])) for i in range(0, len(words), 50000)]
    assert ids == [i for piece in pieces for i in piece]    # the same ids as in small calls
