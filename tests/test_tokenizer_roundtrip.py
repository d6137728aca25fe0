"""Property-based tests (hypothesis): decode(encode(x)) == x for arbitrary Unicode
strings, and special-token text in the input behaves as `encode` documents:

  allowed_special="all"         each occurrence becomes the special id
  allowed_special="none"        no special id appears; the text is encoded as text
  allowed_special="none_raise"  ValueError exactly when special-token text occurs
  allowed_special={"<pad>"}     only <pad> becomes an id

Skips when `hypothesis` is not installed (a test-only extra).
"""
import pytest

from tokenizer.bpe_tokenizer import BPETokenizer

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
SETTINGS = hypothesis.settings(max_examples=300, deadline=None, database=None)

CORPUS = ("Byte-level BPE merges frequent pairs: th, he, in, er, an. "
          "Grüße, naïve café, 日本語, русский, 😀👍🏽 12345 don't it's\n\n  \t") * 30
SPECIALS = ["<|endoftext|>", "<pad>", "<bos>", "<eos>"]


@pytest.fixture(scope="module", params=["gpt4", "gpt2"])
def tok(request):
    return BPETokenizer(vocab_size=420, pattern=request.param).train(CORPUS)


# arbitrary strings (surrogates excluded: they are not valid Unicode text)
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
# strings full of special-token text, its fragments and close misses
tricky = st.lists(st.one_of(any_text, st.sampled_from(
    SPECIALS + ["<|endof", "text|>", "<", ">", "<pad", "<<pad>>", "<eos><eos>"])),
    max_size=10).map("".join)


def special_ids(tok, ids):
    return [i for i in ids if i in set(tok.special_tokens.values())]


def test_round_trip_any_unicode(tok):
    @SETTINGS
    @hypothesis.given(any_text)
    def check(text):
        assert tok.decode(tok.encode(text)) == text

    check()


def test_round_trip_long_and_batched(tok):
    @hypothesis.settings(max_examples=40, deadline=None, database=None)
    @hypothesis.given(st.lists(any_text, max_size=6))
    def check(texts):
        batch = tok.encode_batch(texts)
        assert batch == [tok.encode(t) for t in texts]
        assert tok.decode([i for ids in batch for i in ids]) == "".join(texts)

    check()


def test_special_tokens_as_documented(tok):
    @SETTINGS
    @hypothesis.given(tricky)
    def check(text):
        found = tok._special_regex(frozenset(SPECIALS)).findall(text)
        ids = tok.encode(text)
        assert [tok.id_to_token(i) for i in special_ids(tok, ids)] == found
        assert tok.decode(ids) == text

        plain = tok.encode(text, allowed_special="none")
        assert special_ids(tok, plain) == [] and tok.decode(plain) == text

        if found:
            with pytest.raises(ValueError, match="special token"):
                tok.encode(text, allowed_special="none_raise")
        else:
            assert tok.encode(text, allowed_special="none_raise") == plain == ids

        only_pad = tok.encode(text, allowed_special={"<pad>"})
        assert special_ids(tok, only_pad) == [tok.pad_id] * special_ids(tok, ids).count(tok.pad_id)
        assert tok.decode(only_pad) == text

    check()
