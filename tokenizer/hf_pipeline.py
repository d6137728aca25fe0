"""The pipeline parts of a Hugging Face tokenizer.json, read into lists of small steps.

What it is: the normalizer, the pre-tokenizer and (for SentencePiece-style BPE) the
decoder, each a JSON dict or a Sequence of them, turned into plain tuples and strings
that `bpe_tokenizer.py` and `sentencepiece_bpe.py` apply. What it isn't: the file itself
(vocab, merges, special tokens, saving): that is `hf_format.py`, which calls these.

    normalizer     ("unicode", "NFC"), ("prepend", "▁"), ("replace", regex, "▁")
    pre-tokenizer  a regex pattern (split, keeping every piece), PREFIX_SPACE, or
                   ("metaspace", replacement, prepend_scheme, split)
    decoder        ("replace", regex, " "), ("byte_fallback",), ("fuse",),
                   ("strip", " ", 1, 0), ("metaspace", replacement, prepend_scheme)

Anything else is refused with one line naming the file and the part.
"""
import regex

from tokenizer.sentencepiece_bpe import PREPEND_SCHEMES

# GPT-2's pattern (also ByteLevel's built-in regex) and GPT-4's cl100k pattern, as tiktoken has it
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}|"""
                r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
PREFIX_SPACE = "prefix_space"
NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


class TokenizerFileError(ValueError):
    """A tokenizer.json that cannot be used; the message names the file and the part."""


def parse_pre_tokenizer(obj, path, byte_fallback=False):
    """A pre-tokenizer JSON dict -> list of steps (regex patterns, PREFIX_SPACE, and
    ("metaspace", replacement, prepend_scheme, split)).

    Only splits that keep every piece ("Isolated") are accepted. Byte-level BPE needs a
    final ByteLevel step; SentencePiece-style BPE (byte_fallback) has none: a Metaspace
    step, or no pre-tokenizer at all (the legacy Llama 2 layout).
    """
    if obj is None and byte_fallback:
        return []
    items = obj.get("pretokenizers", []) if obj and obj.get("type") == "Sequence" else [obj]
    steps, saw_byte_level = [], False
    for item in items:
        kind = (item or {}).get("type")
        if saw_byte_level:
            raise TokenizerFileError(f"{path}: pre_tokenizer step {kind!r} after ByteLevel "
                                     "is not supported")
        saw_byte_level = kind == "ByteLevel"
        steps += _pre_tokenizer_step(item, kind, path, byte_fallback)
    if not saw_byte_level and not byte_fallback:
        raise TokenizerFileError(f"{path}: pre_tokenizer has no ByteLevel step, so this is "
                                 "not a byte-level BPE tokenizer")
    for pattern in steps:
        if isinstance(pattern, str) and pattern != PREFIX_SPACE:
            try:
                regex.compile(pattern)
            except regex.error as e:
                raise TokenizerFileError(f"{path}: pre_tokenizer regex does not compile "
                                         f"({e})") from None
    return steps


def _pre_tokenizer_step(item, kind, path, byte_fallback):
    """One pre-tokenizer JSON item -> its steps (see `parse_pre_tokenizer`)."""
    if kind == "ByteLevel" and not byte_fallback:
        return ([PREFIX_SPACE] if item.get("add_prefix_space", True) else []) + \
               ([GPT2_PATTERN] if item.get("use_regex", True) else [])
    if kind == "Metaspace" and byte_fallback:
        return [("metaspace", *_metaspace_settings(item, path), item.get("split", True))]
    if kind == "Split":
        if item.get("behavior") != "Isolated" or item.get("invert", False):
            raise TokenizerFileError(f"{path}: Split pre_tokenizer with behavior "
                                     f"{item.get('behavior')!r} / invert "
                                     f"{item.get('invert')} is not supported")
        pattern = item.get("pattern", {})
        return [pattern["Regex"] if "Regex" in pattern
                else regex.escape(pattern.get("String", ""))]
    if kind == "Digits":
        return [r"\p{N}" if item.get("individual_digits") else r"\p{N}+"]
    if byte_fallback:
        raise TokenizerFileError(f"{path}: pre_tokenizer {kind!r} is not supported with "
                                 "byte_fallback (expected Metaspace, Split or Digits)")
    raise TokenizerFileError(f"{path}: pre_tokenizer {kind!r} is not byte-level BPE "
                             "(expected ByteLevel, Split, Digits or a Sequence of them)")


def _metaspace_settings(item, path):
    """A Metaspace pre-tokenizer or decoder -> (replacement, prepend_scheme); files from
    older `tokenizers` have add_prefix_space (true: "always") instead of prepend_scheme."""
    scheme = item.get("prepend_scheme", "always" if item.get("add_prefix_space", True)
                      else "never")
    replacement = item.get("replacement", "▁")
    if scheme not in PREPEND_SCHEMES or not isinstance(replacement, str) \
            or len(replacement) != 1:
        raise TokenizerFileError(f"{path}: Metaspace with replacement {replacement!r} / "
                                 f"prepend_scheme {scheme!r} is not supported")
    return replacement, scheme


def _pattern(item, path, part):
    """A Replace step's {"String": s} or {"Regex": r} -> a regex pattern string."""
    pattern = item.get("pattern") or {}
    if isinstance(pattern.get("String"), str):
        return regex.escape(pattern["String"])
    if isinstance(pattern.get("Regex"), str):
        return pattern["Regex"]
    raise TokenizerFileError(f"{path}: {part} Replace has no String or Regex pattern")


def _sequence(obj, key):
    """The items of a Sequence dict (obj[key]), or [obj] for a single step, [] for None."""
    if obj is None:
        return []
    return obj.get(key, []) if obj.get("type") == "Sequence" else [obj]


def parse_normalizer(obj, path):
    """A normalizer JSON dict -> list of steps, applied in order: ("unicode", "NFC") (or
    NFD, NFKC, NFKD), ("prepend", "▁") (unless the text is empty), ("replace", regex, "▁")."""
    steps = []
    for item in _sequence(obj, "normalizers"):
        kind = item.get("type")
        if kind in NORMAL_FORMS:
            steps.append(("unicode", kind))
        elif kind == "Prepend" and isinstance(item.get("prepend"), str):
            steps.append(("prepend", item["prepend"]))
        elif kind == "Replace" and isinstance(item.get("content"), str):
            steps.append(("replace", _pattern(item, path, "normalizer"), item["content"]))
        else:
            raise TokenizerFileError(f"{path}: normalizer {kind!r} is not supported "
                                     f"(only {', '.join(NORMAL_FORMS)}, Prepend, Replace)")
    return steps


def parse_decoder(obj, path):
    """A SentencePiece decoder JSON dict -> the steps of `sentencepiece_bpe.decode_pieces`."""
    steps = []
    for item in _sequence(obj, "decoders"):
        kind = item.get("type")
        if kind == "Replace" and isinstance(item.get("content"), str):
            steps.append(("replace", _pattern(item, path, "decoder"), item["content"]))
        elif kind in ("ByteFallback", "Fuse"):
            steps.append(("byte_fallback",) if kind == "ByteFallback" else ("fuse",))
        elif kind == "Strip":
            steps.append(("strip", item.get("content", " "), int(item.get("start", 0)),
                          int(item.get("stop", 0))))
        elif kind == "Metaspace":
            steps.append(("metaspace", *_metaspace_settings(item, path)))
        else:
            raise TokenizerFileError(f"{path}: decoder {kind!r} is not supported with "
                                     "byte_fallback (expected Replace, ByteFallback, Fuse, "
                                     "Strip, Metaspace or a Sequence of them)")
    return steps
