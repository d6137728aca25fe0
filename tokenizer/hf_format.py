"""Read and write Hugging Face `tokenizer.json` files for byte-level BPE.

What it is: the translation between BPETokenizer's plain state (token bytes,
merges as id pairs, special tokens, pre-tokenizer settings) and the JSON layout
that Hugging Face `tokenizers` writes and loads. What it isn't: a general
tokenizer.json reader. It takes the byte-level BPE family (GPT-2, LLaMA-3,
SmolLM/StarCoder, Qwen2) and refuses anything else with one line naming the part.

Two conventions of that format matter here:

- Vocab strings are bytes in disguise. GPT-2 maps each of the 256 bytes to a
  printable character (`bytes_to_unicode`), so the token b" the" is stored as
  "Ġthe" (space 0x20 -> "Ġ").
- The pre-tokenizer is a chain of regex splits. `ByteLevel(use_regex=true)`
  splits with GPT-2's pattern; LLaMA-3 style files put their own pattern in a
  `Split` step and end with `ByteLevel(use_regex=false)`. We reduce every chain
  to a list of steps: a regex pattern (split, keeping every piece) or
  PREFIX_SPACE (prepend " " to a piece that lacks it).
"""
import json
import os

import regex

from mini_llm.files import atomic_write
from tokenizer.byte_bpe import render_token

# GPT-2's pattern (also ByteLevel's built-in regex) and GPT-4's cl100k pattern, as tiktoken has it
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}|"""
                r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
PREFIX_SPACE = "prefix_space"
NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


class TokenizerFileError(ValueError):
    """A tokenizer.json that cannot be used; the message names the file and the part."""


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


def to_json(vocab, merges, special_tokens, pre_tokenizer, normalizer, ignore_merges):
    """The tokenizer.json dict. vocab: {id: bytes}; merges: [(id_a, id_b)] by rank;
    special_tokens: {text: id}; pre_tokenizer / normalizer: their JSON dicts."""
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in special_tokens.items()]
    names = {i: token_to_str(t) for i, t in vocab.items()}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
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


def save(path, vocab, merges, special_tokens, pre_tokenizer, normalizer, ignore_merges):
    """Write tokenizer.json (to `path`, or to path/tokenizer.json when path is a directory
    or has no .json suffix) plus a readable *.vocab.txt beside it; returns the json path.

    vocab {id: bytes}; merges [(a, b, new_id)] by rank; special_tokens {text: id};
    pre_tokenizer / normalizer: their JSON dicts.
    """
    path = os.fspath(path)
    if os.path.isdir(path) or not path.endswith(".json"):
        os.makedirs(path, exist_ok=True)
        path = os.path.join(path, "tokenizer.json")
    obj = to_json(vocab, [(a, b) for a, b, _ in merges], special_tokens, pre_tokenizer,
                  normalizer, ignore_merges)
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


def parse_pre_tokenizer(obj, path):
    """A pre-tokenizer JSON dict -> list of steps (regex patterns and PREFIX_SPACE).

    Only splits that keep every piece ("Isolated") and a final ByteLevel are
    accepted, since those are what the byte-level BPE family uses.
    """
    items = obj.get("pretokenizers", []) if obj and obj.get("type") == "Sequence" else [obj]
    steps, saw_byte_level = [], False
    for item in items:
        kind = (item or {}).get("type")
        if saw_byte_level:
            raise TokenizerFileError(f"{path}: pre_tokenizer step {kind!r} after ByteLevel "
                                     "is not supported")
        if kind == "ByteLevel":
            saw_byte_level = True
            if item.get("add_prefix_space", True):
                steps.append(PREFIX_SPACE)
            if item.get("use_regex", True):
                steps.append(GPT2_PATTERN)
        elif kind == "Split":
            if item.get("behavior") != "Isolated" or item.get("invert", False):
                raise TokenizerFileError(f"{path}: Split pre_tokenizer with behavior "
                                         f"{item.get('behavior')!r} / invert "
                                         f"{item.get('invert')} is not supported")
            pattern = item.get("pattern", {})
            if "Regex" in pattern:
                steps.append(pattern["Regex"])
            else:
                steps.append(regex.escape(pattern.get("String", "")))
        elif kind == "Digits":
            steps.append(r"\p{N}" if item.get("individual_digits") else r"\p{N}+")
        else:
            raise TokenizerFileError(f"{path}: pre_tokenizer {kind!r} is not byte-level BPE "
                                     "(expected ByteLevel, Split, Digits or a Sequence of them)")
    if not saw_byte_level:
        raise TokenizerFileError(f"{path}: pre_tokenizer has no ByteLevel step, so this is "
                                 "not a byte-level BPE tokenizer")
    for pattern in steps:
        if pattern != PREFIX_SPACE:
            try:
                regex.compile(pattern)
            except regex.error as e:
                raise TokenizerFileError(f"{path}: pre_tokenizer regex does not compile "
                                         f"({e})") from None
    return steps


def parse_normalizer(obj, path):
    """A normalizer JSON dict -> list of Unicode normal forms to apply, e.g. ['NFC']."""
    if obj is None:
        return []
    items = obj.get("normalizers", []) if obj.get("type") == "Sequence" else [obj]
    forms = [item.get("type") for item in items]
    for form in forms:
        if form not in NORMAL_FORMS:
            raise TokenizerFileError(f"{path}: normalizer {form!r} is not supported "
                                     f"(only {', '.join(NORMAL_FORMS)})")
    return forms


OTHER_MODELS = {"WordPiece": "a WordPiece", "Unigram": "a Unigram (SentencePiece)",
                "WordLevel": "a WordLevel"}


def _check_model(model, path):
    kind = model.get("type") if isinstance(model, dict) else None
    if kind in OTHER_MODELS:
        raise TokenizerFileError(f"{path}: {OTHER_MODELS[kind]} tokenizer; MiniLLM reads "
                                 f"byte-level BPE tokenizer.json files")
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict) \
            or not isinstance(model.get("merges"), list):
        raise TokenizerFileError(f"{path}: no BPE model with vocab and merges; "
                                 "not a Hugging Face tokenizer.json")
    if model.get("type", "BPE") != "BPE":
        raise TokenizerFileError(f"{path}: model type {model['type']!r} is not BPE")
    unsupported = [k for k in ("continuing_subword_prefix", "end_of_word_suffix", "dropout",
                               "byte_fallback") if model.get(k)]
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


def from_json_file(path):
    """Read a tokenizer.json (or a directory holding one) into plain parts.

    Returns a dict with: vocab {id: bytes} (model tokens), merges [(a, b, new)]
    by rank, special_tokens {text: id}, byte_ids (the id of each byte 0..255),
    pre_tokenizer and normalizer (JSON, kept for saving), ignore_merges,
    role_names {role: text} from tokenizer_config.json, and path.
    """
    path = resolve_path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise TokenizerFileError(f"{path}: top level is not a JSON object; not a tokenizer.json")
    model = data.get("model")
    _check_model(model, path)
    parse_pre_tokenizer(data.get("pre_tokenizer"), path)
    parse_normalizer(data.get("normalizer"), path)
    specials = _read_added_tokens(data, path)
    vocab, seen_ids = {}, set()
    for s, i in model["vocab"].items():
        if not isinstance(i, int) or i < 0 or i in seen_ids:
            raise TokenizerFileError(f"{path}: vocab entry {s!r} has a bad or repeated id {i!r}")
        seen_ids.add(i)
        token = s.encode("utf-8") if s in specials else str_to_token(s)
        if token is None:
            raise TokenizerFileError(f"{path}: vocab token {s!r} (id {i}) has characters "
                                     "outside the byte-level alphabet")
        vocab[i] = token
    missing = [BYTE_TO_CHAR[b] for b in range(256) if BYTE_TO_CHAR[b] not in model["vocab"]]
    if missing:
        raise TokenizerFileError(f"{path}: vocab lacks {len(missing)} of the 256 byte tokens "
                                 f"(e.g. {missing[0]!r}); byte-level BPE needs all of them")
    return {
        "vocab": vocab,
        "merges": _read_merges(model, model["vocab"], path),
        "special_tokens": specials,
        "byte_ids": [model["vocab"][BYTE_TO_CHAR[b]] for b in range(256)],
        "pre_tokenizer": data.get("pre_tokenizer"),
        "normalizer": data.get("normalizer"),
        "ignore_merges": bool(model.get("ignore_merges", False)),
        "role_names": _read_config_names(path),
        "path": path,
    }
