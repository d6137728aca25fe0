"""Data pipeline: loading .txt/.json/.jsonl documents (and one-line errors for bad files),
train/val splitting, encoding to one token stream, cutting sequences, shuffled batches."""
import json
from pathlib import Path

import numpy as np
import pytest

from tokenizer.bpe_tokenizer import BPETokenizer
from training.data import encode_documents, load_texts, make_sequences, read_data_file, split_train_val

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample_training.txt"


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


class ByteTokenizer:
    """Stand-in tokenizer: UTF-8 bytes as ids, optional eos id."""

    def __init__(self, eos_id=256):
        self.eos_id = eos_id

    def encode(self, text):
        return list(text.encode("utf-8"))


# ----------------------------------------------------------------------------- load_texts

def test_txt_with_blank_lines_gives_paragraphs(tmp_path):
    path = write(tmp_path, "a.txt", "first line\nstill first\n\n  \n\nsecond\n \nthird\n")
    assert load_texts(path) == ["first line\nstill first", "second", "third"]


def test_txt_without_blank_lines_gives_lines(tmp_path):
    assert load_texts(write(tmp_path, "a.txt", "one\ntwo\r\nthree")) == ["one", "two", "three"]


def test_json_strings_and_objects(tmp_path):
    data = ["plain", {"text": "object", "source": "x"}, "", "café 日本"]
    assert load_texts(write(tmp_path, "d.json", json.dumps(data))) == ["plain", "object", "café 日本"]


def test_jsonl_strings_and_objects(tmp_path):
    lines = [json.dumps({"text": "a b"}), "", json.dumps("c"), json.dumps({"text": "d", "id": 4})]
    assert load_texts(write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")) == ["a b", "c", "d"]


def test_sample_file_has_its_paragraphs():
    texts = load_texts(SAMPLE)
    paragraphs = [p for p in SAMPLE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    assert len(texts) == len(paragraphs) > 10
    assert texts[0].startswith("A language model")


BAD_FILES = {
    "empty": ("e.txt", b"", "empty"),
    "only blank lines": ("b.txt", b"\n \n\n", "no documents"),
    "invalid utf-8": ("u.txt", b"abc\xff\xfedef", "UTF-8"),
    "invalid json": ("j.json", b'["a", "b",', "invalid JSON"),
    "json not a list": ("o.json", b'{"text": "a"}', "list"),
    "json item without text": ("t.json", b'["a", {"body": "b"}, "c"]', "item 2 has no 'text' field"),
    "json text not a string": ("n.json", b'[{"text": 5}]', "item 1"),
    "json item a number": ("m.json", b'["a", 7]', "item 2"),
    "json all empty": ("z.json", b'["", "  "]', "no documents"),
    "jsonl bad line": ("l.jsonl", b'"a"\n{"text": \n', "line 2"),
    "jsonl line without text": ("k.jsonl", b'"a"\n"b"\n{"title": "c"}\n', "line 3 has no 'text' field"),
    "binary file": ("GPL-3.gz", b"\x1f\x8b\x08\x00\x00abc", "NUL byte"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_raise_one_line(tmp_path, case):
    name, content, expected = BAD_FILES[case]
    with pytest.raises(ValueError) as err:
        load_texts(write(tmp_path, name, content))
    message = str(err.value)
    assert expected in message and name in message and "\n" not in message


def test_invalid_utf8_names_byte_offset(tmp_path):
    with pytest.raises(ValueError, match="3"):
        load_texts(write(tmp_path, "u.txt", b"abc\xff"))


def test_read_data_file_replace_and_ignore(tmp_path):
    """--encoding_errors: strict names the offset; replace puts U+FFFD per bad byte; ignore drops them."""
    bad = write(tmp_path, "bad.txt", "héllo ".encode() + b"\xff\xfe rest")
    with pytest.raises(ValueError, match="byte offset 7"):
        read_data_file(bad)
    assert read_data_file(bad, errors="replace") == "héllo \ufffd\ufffd rest"
    assert read_data_file(bad, errors="ignore") == "héllo  rest"


def test_missing_file_raises_one_line(tmp_path):
    with pytest.raises(ValueError) as err:
        load_texts(tmp_path / "nope.txt")
    assert "nope.txt" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- split_train_val

def test_split_keeps_every_document_once_in_order():
    texts = [f"doc {i}" for i in range(10)]
    train, val = split_train_val(texts, val_fraction=0.2, seed=0)
    assert len(train) == 8 and len(val) == 2
    assert sorted(train + val) == sorted(texts)
    assert train == [t for t in texts if t in train] and val == [t for t in texts if t in val]
    assert split_train_val(texts, 0.2, seed=0) == (train, val)
    assert any(split_train_val(texts, 0.2, seed=s)[1] != val for s in range(1, 5))


def test_split_gives_each_side_at_least_one_document():
    assert split_train_val(["a", "b"], val_fraction=0.01)[0] and split_train_val(["a", "b"], 0.01)[1]
    train, val = split_train_val(["a", "b", "c"], val_fraction=0.99)
    assert len(train) == 1 and len(val) == 2


def test_single_document_is_cut_at_a_paragraph():
    text = "First paragraph, rather long, a few words more.\n\nSecond one here."
    train, val = split_train_val([text], val_fraction=0.3)
    assert train[0] + val[0] == text
    assert val == ["Second one here."]


def test_single_document_is_cut_at_a_sentence_when_no_paragraph_is_near():
    text = "One sentence goes here. " * 9 + "Last sentence."
    train, val = split_train_val([text], val_fraction=0.1)
    assert train[0] + val[0] == text
    assert val == ["Last sentence."]          # 14 of 230 characters: the sentence end nearest 10%


def test_single_document_without_boundaries_is_cut_by_characters():
    train, val = split_train_val(["abcdefghij"], val_fraction=0.3)
    assert (train, val) == (["abcdefg"], ["hij"])
    assert split_train_val(["ab"], val_fraction=0.01) == (["a"], ["b"])


@pytest.mark.parametrize("texts, fraction, expected", [
    ([], 0.1, "no documents"),
    (["x"], 0.1, "cannot be split"),
    (["a", "b"], 0.0, "val_fraction"),
    (["a", "b"], 1.0, "val_fraction"),
])
def test_split_bad_input_one_line(texts, fraction, expected):
    with pytest.raises(ValueError) as err:
        split_train_val(texts, fraction)
    assert expected in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- encode_documents

def test_encode_documents_appends_eos_after_each_document():
    stream = encode_documents(ByteTokenizer(eos_id=256), ["ab", "", "é"])
    assert stream.dtype == np.int64
    assert stream.tolist() == [97, 98, 256, 256, 0xC3, 0xA9, 256]


def test_encode_documents_without_eos_and_with_many_texts():
    assert encode_documents(ByteTokenizer(eos_id=None), ["ab", "c"]).tolist() == [97, 98, 99]
    assert encode_documents(ByteTokenizer(eos_id=None), []).shape == (0,)
    stream = encode_documents(ByteTokenizer(), ["x"] * 1500)       # progress-bar path
    assert stream.tolist() == [120, 256] * 1500


def test_encode_documents_with_the_bpe_tokenizer():
    tokenizer = BPETokenizer(vocab_size=280).train(["the cat sat on the mat", "the dog sat"])
    texts = ["the cat", "a dog"]
    stream = encode_documents(tokenizer, texts)
    eos = tokenizer.eos_id
    assert eos is not None and stream.tolist().count(eos) == 2 and stream[-1] == eos
    first = stream[:stream.tolist().index(eos)].tolist()
    assert tokenizer.decode(first) == "the cat" and tokenizer.decode(stream[len(first) + 1:-1].tolist()) == "a dog"


# ----------------------------------------------------------------------------- make_sequences

def test_make_sequences_windows_share_one_boundary_token():
    seqs = make_sequences(np.arange(7), seq_len=3)
    assert seqs.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6]]
    assert make_sequences(np.arange(9), seq_len=3).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6]]


def test_make_sequences_every_token_is_a_target_once():
    stream = np.random.default_rng(0).integers(0, 50, size=1001)
    seqs = make_sequences(stream, seq_len=10)
    assert seqs.shape == (100, 11) and seqs.dtype == np.int64
    assert np.array_equal(seqs[:, 1:].reshape(-1), stream[1:])
    assert np.array_equal(seqs[:, :-1].reshape(-1), stream[:-1])


def test_make_sequences_short_stream_gives_one_short_row():
    assert make_sequences([5, 6, 7], seq_len=10).tolist() == [[5, 6, 7]]
    assert make_sequences([5, 6], seq_len=1).tolist() == [[5, 6]]


@pytest.mark.parametrize("stream, seq_len, expected", [
    ([4], 8, "at least 2 tokens"),
    ([], 8, "at least 2 tokens"),
    ([[1, 2], [3, 4]], 1, "1-D"),
    ([1, 2, 3], 0, "seq_len"),
])
def test_make_sequences_bad_input_one_line(stream, seq_len, expected):
    with pytest.raises(ValueError) as err:
        make_sequences(np.array(stream), seq_len)
    assert expected in str(err.value) and "\n" not in str(err.value)
