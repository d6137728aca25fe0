"""Read and write Hugging Face `tokenizer.json` files for byte-level and SentencePiece BPE.

What it is: the translation between BPETokenizer's plain state (token bytes,
merges as id pairs, special tokens, pre-tokenizer settings) and the JSON layout
that Hugging Face `tokenizers` writes and loads. What it isn't: a general
tokenizer.json reader. It takes the byte-level BPE family (GPT-2, LLaMA-3,
SmolLM/StarCoder, Qwen2) and SentencePiece-style BPE (`byte_fallback`: Llama 2,
TinyLlama, Mistral, Vicuna; see `sentencepiece_bpe.py`), and refuses anything
else with one line naming the part.

Three conventions of that format matter here:

- Byte-level vocab strings are bytes in disguise. GPT-2 maps each of the 256
  bytes to a printable character (`bytes_to_unicode`), so the token b" the" is
  stored as "Ġthe" (space 0x20 -> "Ġ").
- SentencePiece vocab strings are plain text with "▁" for a space ("▁the"),
  plus the 256 byte tokens "<0x00>".."<0xFF>"; we keep their UTF-8 as the token
  bytes, so b"\xe2\x96\x81the" is "▁the".
- The pre-tokenizer is a chain of regex splits. `ByteLevel(use_regex=true)`
  splits with GPT-2's pattern; LLaMA-3 style files put their own pattern in a
  `Split` step and end with `ByteLevel(use_regex=false)`. `hf_pipeline.py`
  reduces every chain (and the normalizer, and a SentencePiece decoder) to a
  list of small steps: a regex pattern (split, keeping every piece) or
  PREFIX_SPACE (prepend " " to a piece that lacks it), and so on.
"""
import json
import os

from mini_llm.files import atomic_write
from tokenizer.byte_bpe import render_token
from tokenizer.hf_pipeline import (GPT2_PATTERN, TokenizerFileError, parse_decoder,
                                   parse_normalizer, parse_pre_tokenizer)
from tokenizer.sentencepiece_bpe import byte_token


def bytes_to_unicode():
    """GPT-2's byte -> printable character map, e.g. {0x41: 'A', 0x20: 'Ġ', 0x0A: 'Ċ'}.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are given
    the characters 256, 257, ... in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def token_to_str(token):
    """b' the' -> 'Ġthe' (the vocab string of a token's bytes)."""
    return "".join(BYTE_TO_CHAR[b] for b in token)


def str_to_token(s):
    """'Ġthe' -> b' the'; None when s holds a character outside the byte alphabet."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in s)
    except KeyError:
        return None


def vocab_string(token, byte_fallback=False):
    """A token's bytes -> its tokenizer.json string: 'Ġthe' (byte-level), or with
    byte_fallback (SentencePiece) the UTF-8 text itself, '▁the'."""
    return token.decode("utf-8") if byte_fallback else token_to_str(token)


# ----------------------------------------------------------------------------
# Writing

def pre_tokenizer_json(pattern):
    """The tokenizer.json pre-tokenizer that splits with `pattern` and maps bytes."""
    if pattern == GPT2_PATTERN:
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                "use_regex": True}
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]}


BYTE_LEVEL_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                      "use_regex": True}


def to_json(vocab, merges, special_tokens, pre_tokenizer, normalizer, ignore_merges,
            sentencepiece=None):
    """The tokenizer.json dict. vocab: {id: bytes}; merges: [(id_a, id_b)] by rank;
    special_tokens: {text: id}; pre_tokenizer / normalizer: their JSON dicts;
    sentencepiece: None (byte-level BPE), or {"decoder": JSON, "unk_token": text} of a
    SentencePiece-style BPE (byte_fallback)."""
    byte_fallback = sentencepiece is not None
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in special_tokens.items()]
    names = {i: vocab_string(t, byte_fallback) for i, t in vocab.items()}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": None,
        "decoder": sentencepiece["decoder"] if byte_fallback else BYTE_LEVEL_DECODER,
        "model": {"type": "BPE", "dropout": None,
                  "unk_token": sentencepiece["unk_token"] if byte_fallback else None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": byte_fallback, "byte_fallback": byte_fallback,
                  "ignore_merges": ignore_merges,
                  "vocab": {names[i]: i for i in sorted(names)},
                  "merges": [[names[a], names[b]] for a, b in merges]},
    }


def vocab_dump(vocab, merges, special_tokens):
    """A readable copy of the vocabulary (saved beside tokenizer.json), one token per line:
    `300<TAB>' the'<TAB>= ' t' + 'he'` (the merge that made it, if any)."""
    lines = ["# readable copy of the vocabulary: id, token, and the merge that made it"]
    made_by = {new: (a, b) for a, b, new in merges}
    for i in sorted(vocab):
        line = f"{i}\t'{render_token(vocab[i])}'"
        if i in made_by:
            a, b = made_by[i]
            line += f"\t= '{render_token(vocab[a])}' + '{render_token(vocab[b])}'"
        lines.append(line)
    lines += [f"{i}\t{s}\t(special)" for s, i in special_tokens.items()]
    return "\n".join(lines) + "\n"


def write_atomic(path, text):
    """Write text to path through a temporary file, so a crash leaves no half file
    (mini_llm.files.atomic_write: the project's one atomic writer)."""
    atomic_write(path, text)


def save(path, vocab, merges, special_tokens, pre_tokenizer, normalizer, ignore_merges,
         sentencepiece=None):
    """Write tokenizer.json (to `path`, or to path/tokenizer.json when path is a directory
    or has no .json suffix) plus a readable *.vocab.txt beside it; returns the json path.

    vocab {id: bytes}; merges [(a, b, new_id)] by rank; special_tokens {text: id};
    pre_tokenizer / normalizer: their JSON dicts; sentencepiece: see `to_json`.
    """
    path = os.fspath(path)
    if os.path.isdir(path) or not path.endswith(".json"):
        os.makedirs(path, exist_ok=True)
        path = os.path.join(path, "tokenizer.json")
    obj = to_json(vocab, [(a, b) for a, b, _ in merges], special_tokens, pre_tokenizer,
                  normalizer, ignore_merges, sentencepiece)
    write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2))
    write_atomic(path[:-len(".json")] + ".vocab.txt", vocab_dump(vocab, merges, special_tokens))
    return path


# ----------------------------------------------------------------------------
# Reading

def resolve_path(path):
    """A tokenizer.json path, or a directory holding one -> the file's path."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise TokenizerFileError(f"{path}: no such tokenizer file")
    return path


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise TokenizerFileError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise TokenizerFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} "
                                 f"column {e.colno})") from None


OTHER_MODELS = {"WordPiece": "a WordPiece", "Unigram": "a Unigram (SentencePiece)",
                "WordLevel": "a WordLevel"}


def _check_model(model, path):
    kind = model.get("type") if isinstance(model, dict) else None
    if kind in OTHER_MODELS:
        raise TokenizerFileError(f"{path}: {OTHER_MODELS[kind]} tokenizer; MiniLLM reads "
                                 f"byte-level BPE and SentencePiece-style BPE (byte_fallback) "
                                 f"tokenizer.json files")
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict) \
            or not isinstance(model.get("merges"), list):
        raise TokenizerFileError(f"{path}: no BPE model with vocab and merges; "
                                 "not a Hugging Face tokenizer.json")
    if model.get("type", "BPE") != "BPE":
        raise TokenizerFileError(f"{path}: model type {model['type']!r} is not BPE")
    unsupported = [k for k in ("continuing_subword_prefix", "end_of_word_suffix", "dropout")
                   if model.get(k)]
    if unsupported:
        raise TokenizerFileError(f"{path}: BPE option {unsupported[0]}="
                                 f"{model[unsupported[0]]!r} is not supported")


def _read_merges(model, vocab_ids, path):
    merges = []
    for rank, entry in enumerate(model["merges"]):
        parts = entry.split(" ") if isinstance(entry, str) else entry
        if not isinstance(parts, list) or len(parts) != 2 \
                or not all(isinstance(p, str) for p in parts):
            raise TokenizerFileError(f"{path}: merge #{rank} {entry!r} is not a pair of tokens")
        a, b = parts
        for token in (a, b, a + b):
            if token not in vocab_ids:
                raise TokenizerFileError(f"{path}: merge #{rank} ({a!r}, {b!r}) uses "
                                         f"{token!r}, which is not in the vocab")
        merges.append((vocab_ids[a], vocab_ids[b], vocab_ids[a + b]))
    return merges


def _read_added_tokens(data, path):
    specials = {}
    for item in data.get("added_tokens") or []:
        content, i = item.get("content"), item.get("id")
        if not isinstance(content, str) or not isinstance(i, int):
            raise TokenizerFileError(f"{path}: added token {item!r} lacks content or id")
        for flag in ("lstrip", "rstrip", "single_word"):
            if item.get(flag):
                raise TokenizerFileError(f"{path}: added token {content!r} sets {flag}, "
                                         "which is not supported")
        specials[content] = i
    return specials


def _refuse_normalized_added_tokens(data, path):
    """An added token with normalized=true is matched in the normalized text, where the
    legacy SentencePiece normalizer has put "▁" in; we cut special tokens out first."""
    for item in data.get("added_tokens") or []:
        if item.get("normalized"):
            raise TokenizerFileError(f"{path}: added token {item.get('content')!r} has "
                                     "normalized=true beside a normalizer, which is not "
                                     "supported with byte_fallback (set it to false)")


def _read_prefix_ids(post_processor, path):
    """The ids a TemplateProcessing post-processor puts before a single sequence ("<s> $A":
    Llama 2, TinyLlama; also inside a Sequence of processors, as Llama 3 stores it), [] for
    none. The encoder never adds them itself (encode gives the text's tokens); a teacher that
    was trained with them gets them in front of its inputs (training/teachers.py)."""
    if not isinstance(post_processor, dict):
        return []
    if post_processor.get("type") == "Sequence":
        for inner in post_processor.get("processors") or []:
            ids = _read_prefix_ids(inner, path)
            if ids:
                return ids
        return []
    if post_processor.get("type") != "TemplateProcessing":
        return []
    ids, specials = [], post_processor.get("special_tokens") or {}
    for item in post_processor.get("single") or []:
        if "Sequence" in item:
            break
        name = (item.get("SpecialToken") or {}).get("id")
        if name not in specials or not isinstance(specials[name].get("ids"), list):
            raise TokenizerFileError(f"{path}: post_processor names special token {name!r} "
                                     f"without its ids")
        ids += specials[name]["ids"]
    return ids


def _config_bos_prefix(path, specials):
    """[bos id] when tokenizer_config.json beside the file says add_bos_token (older Llama
    folders say it there instead of in a post-processor), else []."""
    config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    config = read_json(config_path) if os.path.isfile(config_path) else {}
    if not (isinstance(config, dict) and config.get("add_bos_token") is True):
        return []
    bos = _read_config_names(path).get("bos")
    return [specials[bos]] if bos in specials else []


def _read_config_names(path):
    """bos/eos/pad token names from a tokenizer_config.json beside the file, if any."""
    config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    if not os.path.isfile(config_path):
        return {}
    config = read_json(config_path)
    names = {}
    for role in ("bos", "eos", "pad"):
        value = config.get(f"{role}_token") if isinstance(config, dict) else None
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            names[role] = value
    return names


def _read_vocab(model, specials, byte_fallback, path):
    """The model's vocab {string: id} -> {id: token bytes} (see the module docstring)."""
    vocab, seen_ids = {}, set()
    for s, i in model["vocab"].items():
        if not isinstance(i, int) or i < 0 or i in seen_ids:
            raise TokenizerFileError(f"{path}: vocab entry {s!r} has a bad or repeated id {i!r}")
        seen_ids.add(i)
        token = s.encode("utf-8") if s in specials or byte_fallback else str_to_token(s)
        if token is None:
            raise TokenizerFileError(f"{path}: vocab token {s!r} (id {i}) has characters "
                                     "outside the byte-level alphabet")
        vocab[i] = token
    return vocab


def _read_byte_ids(model, byte_fallback, path):
    """The id of each byte 0..255: its byte-level character ('Ġ' for 0x20), or with
    byte_fallback its <0xNN> token ('<0x20>')."""
    names = [byte_token(b) if byte_fallback else BYTE_TO_CHAR[b] for b in range(256)]
    missing = [name for name in names if name not in model["vocab"]]
    if missing:
        need = "byte_fallback" if byte_fallback else "byte-level BPE"
        raise TokenizerFileError(f"{path}: vocab lacks {len(missing)} of the 256 byte tokens "
                                 f"(e.g. {missing[0]!r}); {need} needs all of them")
    return [model["vocab"][name] for name in names]


def from_json_file(path):
    """Read a tokenizer.json (or a directory holding one) into plain parts.

    Returns a dict with: vocab {id: bytes} (model tokens), merges [(a, b, new)]
    by rank, special_tokens {text: id}, byte_ids (the id of each byte 0..255),
    pre_tokenizer, normalizer and decoder (JSON, kept for saving), ignore_merges,
    byte_fallback (SentencePiece-style BPE) and its unk_token, role_names
    {role: text} from tokenizer_config.json, prefix_ids (what the post-processor puts before
    a sequence, e.g. [bos]), and path.
    """
    path = resolve_path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise TokenizerFileError(f"{path}: top level is not a JSON object; not a tokenizer.json")
    model = data.get("model")
    _check_model(model, path)
    byte_fallback = bool(model.get("byte_fallback", False))
    parse_pre_tokenizer(data.get("pre_tokenizer"), path, byte_fallback)
    if parse_normalizer(data.get("normalizer"), path) and byte_fallback:
        _refuse_normalized_added_tokens(data, path)
    if byte_fallback:
        parse_decoder(data.get("decoder"), path)
    specials = _read_added_tokens(data, path)
    return {
        "vocab": _read_vocab(model, specials, byte_fallback, path),
        "merges": _read_merges(model, model["vocab"], path),
        "special_tokens": specials,
        "byte_ids": _read_byte_ids(model, byte_fallback, path),
        "pre_tokenizer": data.get("pre_tokenizer"),
        "normalizer": data.get("normalizer"),
        "decoder": data.get("decoder"),
        "ignore_merges": bool(model.get("ignore_merges", False)),
        "byte_fallback": byte_fallback,
        "unk_token": model.get("unk_token"),
        "role_names": _read_config_names(path),
        "prefix_ids": (_read_prefix_ids(data.get("post_processor"), path)
                       or _config_bos_prefix(path, specials)),
        "path": path,
    }
