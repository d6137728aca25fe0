"""BPETokenizer against Hugging Face `tokenizers`, the outside reference.

Both directions: a tokenizer.json that HF trains and saves loads into
BPETokenizer and encodes to the same ids; a tokenizer.json we save loads into
HF and encodes to the same ids as ours. Covered layouts: GPT-2 (ByteLevel with
its regex), LLaMA-3 (Split regex + ByteLevel without regex), SmolLM/StarCoder
(Digits + ByteLevel), merges as "a b" strings and as ["a", "b"] pairs, and
`ignore_merges`. HF's trainer may break ties differently from ours, so we
never compare training results, only encoding with the same file.

Skips when `tokenizers` is not installed (it is a test-only extra).
"""
import json

import pytest

from tokenizer.bpe_tokenizer import BPETokenizer
from tokenizer.hf_pipeline import GPT4_PATTERN

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

SPECIALS = ["<|endoftext|>", "<pad>"]
HELD_OUT_EXTRA = [
    "",
    "Hello world! It's 2024, they'll say: don't   panic.\n\n\tTabs\r\nand CRLF.",
    "Grüße aus Köln, naïve café, Ελληνικά, русский текст, 日本語のテキスト, 中文，标点。",
    "Emoji 😀👍🏽🇺🇸 ❤️ and numbers 1234567 3.14159 1,000,000 ٣٤٥",
    "def f(x):\n    return x ** 2  # comment\n\n\n    ",
    "special <|endoftext|>in<pad> the<|endoftext|><|endoftext|>middle<|endoftext",
    "   leading spaces and trailing   ",
]


def english_corpus():
    """Real English text from the Python documentation shipped with the stdlib."""
    topics = pytest.importorskip("pydoc_data.topics").topics
    docs = [topics[k] for k in sorted(topics)]
    return docs[::2][:150], docs[1::2][:60]  # train, held out


@pytest.fixture(scope="module")
def corpus():
    train, held_out = english_corpus()
    return train, held_out + HELD_OUT_EXTRA


def hf_train(texts, pre_tokenizer, vocab_size=600, normalizer=None):
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    if normalizer:
        tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # as in its tokenizer.json
HF_PRE_TOKENIZERS = {
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "llama3": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
    "llama3_own_regex": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
    "smollm": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
    "prefix_space": lambda: pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
}
HF_NORMALIZERS = {"qwen2_nfc": normalizers.NFC, "nfkc_sequence": lambda: normalizers.Sequence(
    [normalizers.NFD(), normalizers.NFKC()])}


def assert_same_ids(ours, theirs, texts):
    for text in texts:
        expected = theirs.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == expected, f"ids differ on {text[:60]!r}"


@pytest.mark.parametrize("layout", sorted(HF_PRE_TOKENIZERS))
def test_load_hf_trained_tokenizer_json(corpus, tmp_path, layout):
    train, held_out = corpus
    hf = hf_train(train, HF_PRE_TOKENIZERS[layout]())
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    ours = BPETokenizer.load(path)
    assert ours.vocab_size == hf.get_vocab_size()
    assert_same_ids(ours, hf, held_out)
    assert ours.token_to_id("<pad>") == hf.token_to_id("<pad>")


@pytest.mark.parametrize("name", sorted(HF_NORMALIZERS))
def test_load_hf_normalizers(corpus, tmp_path, name):
    """Qwen2 style: NFC first (so decode(encode(x)) may differ from x for unnormalized x)."""
    train, held_out = corpus
    hf = hf_train(train, HF_PRE_TOKENIZERS["llama3"](), normalizer=HF_NORMALIZERS[name]())
    hf.save(str(tmp_path / "tokenizer.json"))
    ours = BPETokenizer.load(tmp_path / "tokenizer.json")
    assert_same_ids(ours, hf, held_out + ["cafe\u0301 \ufb01ne \u2460 e\u0301<pad>e\u0301"])


@pytest.mark.parametrize("merge_form", ["pairs", "strings"])
def test_merges_in_both_forms(corpus, tmp_path, merge_form):
    train, held_out = corpus
    hf = hf_train(train, HF_PRE_TOKENIZERS["gpt2"]())
    data = json.loads(hf.to_str())
    merges = data["model"]["merges"]
    data["model"]["merges"] = [m if isinstance(m, str) == (merge_form == "strings")
                               else (" ".join(m) if merge_form == "strings" else m.split(" "))
                               for m in merges]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    ours = BPETokenizer.load(tmp_path)  # a directory holding tokenizer.json
    assert_same_ids(ours, hf, held_out)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_hf_loads_what_we_save(corpus, tmp_path, pattern):
    train, held_out = corpus
    ours = BPETokenizer(vocab_size=700, special_tokens=SPECIALS, pattern=pattern).train(train)
    path = ours.save(tmp_path / "ours")
    hf = tokenizers.Tokenizer.from_file(path)
    assert hf.get_vocab_size() == ours.vocab_size
    assert_same_ids(ours, hf, held_out)
    ids = ours.encode(held_out[-3])
    assert hf.decode(ids, skip_special_tokens=False) == ours.decode(ids)


def test_ignore_merges_emits_whole_words(corpus, tmp_path):
    """LLaMA-3 sets ignore_merges: a chunk that is itself in the vocab is one token."""
    train, held_out = corpus
    data = json.loads(hf_train(train, HF_PRE_TOKENIZERS["llama3"]()).to_str())
    vocab = data["model"]["vocab"]
    for word in ("Ġunreachable", "Ġzebra", "Hello"):  # in the vocab, made by no merge
        vocab.setdefault(word, len(vocab))
    data["model"]["ignore_merges"] = True
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    hf, ours = tokenizers.Tokenizer.from_file(str(path)), BPETokenizer.load(path)
    texts = held_out + ["Hello unreachable zebra zebras"]
    assert_same_ids(ours, hf, texts)
    assert ours.encode(" zebra") == [vocab["Ġzebra"]]


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_random_unicode_matches_hf(corpus, tmp_path, pattern):
    """Arbitrary strings of assigned characters (HF's regex engine and Python's
    `regex` know different Unicode versions, so unassigned code points may split
    differently); hypothesis drives the search."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    train, _ = corpus
    ours = BPETokenizer(vocab_size=700, special_tokens=SPECIALS, pattern=pattern).train(train)
    hf = tokenizers.Tokenizer.from_file(ours.save(tmp_path / "ours"))
    letters = st.characters(exclude_categories=("Cs", "Cn"))
    pieces = st.one_of(st.text(letters, max_size=8), st.sampled_from(
        [" ", "  ", "\n", "\r\n", "'s", "'LL", "123", "4567", "<|endoftext|>", "<pad>", "the"]))

    @hypothesis.settings(max_examples=300, deadline=None, database=None)
    @hypothesis.given(st.lists(pieces, max_size=12).map("".join))
    def check(text):
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids

    check()
