"""bos / eos / pad from a tokenizer_config.json beside tokenizer.json, as Hugging Face keeps them.

Without that file, BPETokenizer names the roles from a list of usual spellings (<bos>, <s>, ...;
see ROLE_CANDIDATES). Chat models use other names ("<|im_end|>" ends a turn in Qwen2), and only
the config says which token is which: its `eos_token` is either the string or
{"content": the string, ...}. The same folder loaded by `transformers` is the outside reference.
"""
import json

import pytest

from tokenizer.bpe_tokenizer import BPETokenizer

TEXT = "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs on.\n" * 10
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[PAD]"]   # none is a bos/pad default
ROLES = {"bos": "<|im_start|>", "eos": "<|im_end|>", "pad": "[PAD]"}
FORMS = {
    "strings": {f"{role}_token": name for role, name in ROLES.items()},
    "dicts": {f"{role}_token": {"content": name, "lstrip": False, "normalized": False,
                                "rstrip": False, "single_word": False, "__type": "AddedToken"}
              for role, name in ROLES.items()},
    "mixed": {"bos_token": ROLES["bos"], "eos_token": {"content": ROLES["eos"]},
              "pad_token": ROLES["pad"]},
}


@pytest.fixture
def folder(tmp_path):
    """A tokenizer.json with the chat-style special tokens, no tokenizer_config.json yet."""
    BPETokenizer(vocab_size=300, special_tokens=SPECIALS).train(TEXT).save(tmp_path)
    return tmp_path


@pytest.mark.parametrize("form", FORMS)
def test_config_names_bos_eos_pad(folder, form):
    (folder / "tokenizer_config.json").write_text(json.dumps(FORMS[form]), encoding="utf-8")
    for path in (folder, folder / "tokenizer.json"):                  # directory or file
        tok = BPETokenizer.load(path)
        assert tok.role_names == ROLES
        ids = {role: tok.special_tokens[name] for role, name in ROLES.items()}
        assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ids["bos"], ids["eos"], ids["pad"])
        assert len(set(ids.values())) == 3


def test_without_config_the_defaults_apply(folder):
    tok = BPETokenizer.load(folder)
    assert tok.role_names == {}
    assert tok.eos_id == tok.special_tokens["<|endoftext|>"]          # a default eos spelling
    assert tok.bos_id is None and tok.pad_id is None                  # no default spelling here


def test_config_names_agree_with_transformers(folder):
    transformers = pytest.importorskip("transformers")
    (folder / "tokenizer_config.json").write_text(json.dumps(FORMS["dicts"]), encoding="utf-8")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(folder)
    tok = BPETokenizer.load(folder)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)


def test_add_bos_token_in_tokenizer_config_is_the_prefix(tmp_path):
    """Older Llama folders say add_bos_token in tokenizer_config.json, not in a post-processor:
    that bos is what the file's tokenizer puts first (prefix_ids; encode itself adds nothing)."""
    tok = BPETokenizer(vocab_size=300, special_tokens=["<s>", "</s>"]).train(["some text here"] * 3)
    tok.save(tmp_path / "tokenizer.json")
    assert BPETokenizer.load(tmp_path).prefix_ids == []
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "bos_token": "<s>"}))
    loaded = BPETokenizer.load(tmp_path)
    assert loaded.prefix_ids == [tok.special_tokens["<s>"]] and loaded.encode("some") == tok.encode("some")
