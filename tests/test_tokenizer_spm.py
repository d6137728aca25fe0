"""BPETokenizer on SentencePiece-style BPE (Llama 2, TinyLlama, Mistral, Vicuna) and on
Qwen2's byte-level layout, against Hugging Face `tokenizers`, the outside reference.

Every tokenizer.json here is BUILT by `tokenizers` itself (nothing is downloaded): a
`BPE(byte_fallback=True, unk_token="<unk>")` trained by BpeTrainer on
data/sample_training.txt, with <unk>, <s>, </s> and the 256 <0xNN> byte tokens first in
the vocab as SentencePiece conversions have them, in both layouts that put the "▁" in:

    legacy     normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer (Llama 2)
    metaspace  pre-tokenizer Metaspace(prepend_scheme first / always / never, split or not)

and Qwen2's byte-level one (Split with its regex + ByteLevel(use_regex=False), NFC). We
load each with BPETokenizer.load and ask for `encode(text).ids` exactly
(add_special_tokens=False, as our encode adds no BOS), and for decode(ids) to equal HF's
decode, on held-out text and on awkward strings. Skips when `tokenizers` is missing.
"""
import json
import pathlib
import time

import pytest

from tokenizer import sentencepiece_bpe
from tokenizer.bpe_tokenizer import BPETokenizer
from tokenizer.sentencepiece_bpe import byte_token, encode_word_reference

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "sample_training.txt"
CONTROL = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [byte_token(b) for b in range(256)]
AWKWARD = [
    "", " ", "  ", "   leading spaces", "trailing spaces   ", "runs  of   spaces    here",
    "\n", "line one\nline two\n\n\nthree", "\ttabs\t\tand\t", "CRLF\r\nline", " \n \t ",
    "日本語のテキスト、中文，标点。", "Emoji 😀👍🏽🇺🇸 ❤️ and more", "Grüße aus Köln, naïve café",
    "outside the vocab: \x00\x01\x7f ǅ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd",  # byte fallback
    "e\u0301 and é", "▁already▁has▁metaspace ▁", "<0x41> is text, not a byte token",
    "<unk> is special", "<s>Hello</s>", "x<s>y", "<s> y", "<s>y", "y </s>", " <s>  </s> ",
    "<s><s></s>", "<s", "a</s>\n<s> b", "numbers 1234567 3.14159 and 1,000,000",
]
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # as in its tokenizer.json
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def corpus():
    """data/sample_training.txt by paragraph: 3 of 4 to train on, the 4th held out."""
    paragraphs = [p for p in SAMPLE.read_text(encoding="utf-8").split("\n") if p.strip()]
    train = [p for k, p in enumerate(paragraphs) if k % 4 != 3]
    held_out = [p for k, p in enumerate(paragraphs) if k % 4 == 3]
    return train, held_out + ["\n".join(held_out[:5])] + AWKWARD


def sentencepiece_decoder(prepend):
    """The decoder of transformers' Llama converter: "▁" -> " ", bytes -> UTF-8, join, and
    strip the one leading space (when a "▁" was prepended)."""
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    return decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prepend else []))


def spm_layout(name):
    """(normalizer, pre_tokenizer, decoder) of a layout: "legacy", or
    "metaspace_<scheme>[_nosplit][_metaspace_decoder]"."""
    if name == "legacy":
        normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
        return normalizer, None, sentencepiece_decoder(prepend=True)
    scheme = name.split("_")[1]
    split = "nosplit" not in name
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=split)
    if name.endswith("metaspace_decoder"):
        return None, pre, decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=split)
    return None, pre, sentencepiece_decoder(prepend=scheme != "never")


def hf_spm(texts, layout, vocab_size=900):
    """A SentencePiece-style BPE trained and saved by `tokenizers`; the byte tokens are
    vocab entries, not added tokens, as in Llama 2's tokenizer.json."""
    tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    normalizer, pre_tokenizer, decoder = spm_layout(layout)
    if normalizer:
        tok.normalizer = normalizer
    if pre_tokenizer:
        tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoder
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CONTROL + BYTE_TOKENS,
                                  limit_alphabet=60, show_progress=False)  # rare chars: bytes
    tok.train_from_iterator(texts, trainer)
    data = json.loads(tok.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in CONTROL]
    return data


def load_both(data, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return BPETokenizer.load(path), tokenizers.Tokenizer.from_file(str(path))


def assert_same(ours, hf, texts):
    """Same ids as HF on every text, and decode(ids) == HF's decode of those ids."""
    for text in texts:
        expected = hf.encode(text, add_special_tokens=False).ids
        ids = ours.encode(text)
        assert ids == expected, f"ids differ on {text[:60]!r}"
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False), \
            f"decode differs on {text[:60]!r}"


LAYOUTS = ["legacy"] + [f"metaspace_{scheme}{split}" for scheme in ("first", "always", "never")
                        for split in ("", "_nosplit")]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sentencepiece_layouts_match_hf(corpus, tmp_path, layout):
    train, held_out = corpus
    ours, hf = load_both(hf_spm(train, layout), tmp_path)
    assert ours.byte_fallback and ours.vocab_size == hf.get_vocab_size()
    assert_same(ours, hf, held_out)
    assert ours.token_to_id("<0x0A>") == hf.token_to_id("<0x0A>")
    assert ours.id_to_token(hf.token_to_id("▁the")) == "▁the"
    assert (ours.bos_id, ours.eos_id) == (hf.token_to_id("<s>"), hf.token_to_id("</s>"))


@pytest.mark.parametrize("scheme", ["first", "always", "never"])
def test_metaspace_decoder(corpus, tmp_path, scheme):
    """HF's Metaspace decoder alone: "▁" -> " ", every "▁" of the first token dropped, and
    byte tokens left as their text ("<0xE6>"): we decode exactly as it does."""
    train, held_out = corpus
    ours, hf = load_both(hf_spm(train, f"metaspace_{scheme}_metaspace_decoder"), tmp_path)
    assert_same(ours, hf, held_out)


def test_byte_fallback_spells_unknown_characters(corpus, tmp_path):
    train, _ = corpus
    ours, hf = load_both(hf_spm(train, "legacy"), tmp_path)
    assert hf.token_to_id("語") is None
    ids = ours.encode("語")
    assert ids == [ours.token_to_id("▁")] + [ours.token_to_id(byte_token(b))
                                              for b in "語".encode("utf-8")]
    assert ours.decode(ids) == "語"
    assert ours.decode([ours.token_to_id("<0xE8>")]) == "\ufffd"   # half a character
    with pytest.raises(UnicodeDecodeError):
        ours.decode([ours.token_to_id("<0xE8>")], errors="strict")


def test_bos_as_the_post_processor_adds_it(corpus, tmp_path):
    """Llama 2's post-processor puts <s> in front; our encode adds none, so bos_id + encode."""
    train, held_out = corpus
    data = hf_spm(train, "legacy")
    bos = data["model"]["vocab"]["<s>"]
    data["post_processor"] = json.loads(tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]).__getstate__())
    ours, hf = load_both(data, tmp_path)
    for text in held_out[-12:]:
        assert [ours.bos_id] + ours.encode(text) == hf.encode(text).ids


@pytest.mark.parametrize("merge_form", ["pairs", "strings"])
def test_merges_in_both_forms(corpus, tmp_path, merge_form):
    train, held_out = corpus
    data = hf_spm(train, "metaspace_first")
    merges = data["model"]["merges"]
    data["model"]["merges"] = [" ".join(m) if merge_form == "strings" else m for m in merges]
    ours, hf = load_both(data, tmp_path)
    assert_same(ours, hf, held_out)


def test_ignore_merges_emits_whole_words(corpus, tmp_path):
    train, held_out = corpus
    data = hf_spm(train, "metaspace_always")
    vocab = data["model"]["vocab"]
    for word in ("▁unreachable", "▁zebra", "▁語"):  # in the vocab, made by no merge
        vocab.setdefault(word, len(vocab))
    data["model"]["ignore_merges"] = True
    ours, hf = load_both(data, tmp_path)
    assert_same(ours, hf, held_out + ["unreachable zebra zebras 語 語語"])
    assert ours.encode("zebra") == [vocab["▁zebra"]]


@pytest.mark.parametrize("layout", ["legacy", "metaspace_first_nosplit"])
def test_save_round_trip(corpus, tmp_path, layout):
    """What we save loads back into us and into HF, with the same ids and decoding."""
    train, held_out = corpus
    ours, hf = load_both(hf_spm(train, layout), tmp_path)
    saved = ours.save(tmp_path / "ours")
    again, hf_again = BPETokenizer.load(saved), tokenizers.Tokenizer.from_file(saved)
    assert_same(again, hf, held_out)
    assert_same(ours, hf_again, held_out)


def test_reference_merge_loop_equals_kernel(corpus, tmp_path):
    """sentencepiece_bpe's readable path (symbols + step 1's reference loop) gives the
    kernel's ids, word by word, on the legacy layout's whole-paragraph words."""
    train, held_out = corpus
    ours, _ = load_both(hf_spm(train, "legacy"), tmp_path)
    words = [ours._normalize(text) for text in held_out if text]
    ranks = {(a, b): r for r, (a, b, _) in enumerate(ours.merges)}
    new_ids = {(a, b): new for a, b, new in ours.merges}
    fast = sentencepiece_bpe.encode_words_fast(words, ours._bytes_to_id, ours._byte_ids,
                                               ours._merge_table)
    for word, ids in zip(words, fast):
        assert encode_word_reference(word, ours._bytes_to_id, ours._byte_ids, ranks,
                                     new_ids) == list(ids)


def test_encoding_the_corpus_takes_seconds(corpus, tmp_path):
    train, _ = corpus
    ours, hf = load_both(hf_spm(train, "legacy"), tmp_path)
    ours.encode("warm up the kernels")
    start = time.perf_counter()
    ids = ours.encode_batch(train)
    assert time.perf_counter() - start < 20
    assert ids == [e.ids for e in hf.encode_batch(train, add_special_tokens=False)]


def test_sentencepiece_refuses_training_and_missing_byte_tokens(corpus, tmp_path):
    train, _ = corpus
    data = hf_spm(train, "legacy")
    ours, _ = load_both(data, tmp_path)
    with pytest.raises(ValueError, match="byte_fallback"):
        ours.train(train)
    del data["model"]["vocab"]["<0x41>"]
    (tmp_path / "broken.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="lacks 1 of the 256 byte tokens.*<0x41>"):
        BPETokenizer.load(tmp_path / "broken.json")


def test_normalized_added_tokens_are_refused_beside_a_normalizer(corpus, tmp_path):
    """HF matches a normalized=true added token in the normalized text ("▁<s>"); we cut
    special tokens out first, so such a file is refused with one line, not misread."""
    train, _ = corpus
    data = hf_spm(train, "legacy")
    data["added_tokens"][1]["normalized"] = True
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="'<s>' has normalized=true"):
        BPETokenizer.load(tmp_path)


# ----------------------------------------------------------------------------
# Qwen2: byte-level, its own Split regex, NFC

def hf_qwen2(texts):
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = tokenizers.processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=QWEN2_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    data = json.loads(tok.to_str())
    data["model"].update(continuing_subword_prefix="", end_of_word_suffix="")  # as Qwen2 has
    return data


def test_qwen2_layout_matches_hf(corpus, tmp_path):
    train, held_out = corpus
    ours, hf = load_both(hf_qwen2(train), tmp_path)
    assert not ours.byte_fallback
    texts = held_out + ["<|im_start|>user\nHi 123456<|im_end|>\n", "cafe\u0301 \ufb01ne \u2460"]
    assert_same(ours, hf, texts)
    assert ours.decode(ours.encode("cafe\u0301")) == "caf\u00e9"   # NFC first, as HF


# ----------------------------------------------------------------------------
# Random strings, hypothesis driving the search

@pytest.mark.parametrize("layout", ["legacy", "metaspace_first"])
def test_random_unicode_matches_hf(corpus, tmp_path, layout):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    train, _ = corpus
    ours, hf = load_both(hf_spm(train, layout), tmp_path)
    letters = st.characters(exclude_categories=("Cs",))
    pieces = st.one_of(st.text(letters, max_size=8), st.sampled_from(
        [" ", "  ", "\n", "▁", "<s>", "</s>", "<unk>", "the", " the", "<0x41>", "語"]))

    @hypothesis.settings(max_examples=200, deadline=None, database=None)
    @hypothesis.given(st.lists(pieces, max_size=12).map("".join))
    def check(text):
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False).ids
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)

    check()

