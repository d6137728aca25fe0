"""Step 4 of the tokenizer: SentencePiece-style BPE (Llama 2, TinyLlama, Mistral, Vicuna) as
Hugging Face `tokenizers` runs it: the merge loop of step 1, on characters instead of bytes.

What it is: the few small pure functions in which this BPE differs from byte-level BPE
(`byte_bpe.py`). What it isn't: SentencePiece itself (no .model files, no Unigram, no
training); `hf_format.py` reads the tokenizer.json and `bpe_tokenizer.py` calls these.

    "▁" (U+2581)   stands for a space, so " the" is the piece "▁the"
    symbols        a word's characters, each the id of its one-character piece...
    <0xNN>         ...or, when the vocab lacks the character, the 256 byte tokens of its
                   UTF-8 bytes (byte fallback), so every text still encodes (no <unk>)
    merges         then join adjacent symbols, lowest rank first: step 1's loop, run on ids

Two tokenizer.json layouts put the "▁" in, and differ on leading spaces:

    legacy (Llama 2)  normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer: each text
                      between special tokens is one word, "▁" in front, " Hi" -> "▁▁Hi"
    Metaspace         pre-tokenizer: " " -> "▁"; a "▁" put in front unless there is one
                      (prepend_scheme "always"; "first": only at the very start of the text;
                      "never"); split=true cuts a word before each "▁"

Decoding runs the file's decoder steps on the token strings, as `tokenizers` does: Replace
("▁" -> " "), ByteFallback (runs of <0xNN> -> UTF-8), Fuse (join), Strip (one leading
space), or Metaspace. A worked example (legacy layout, a vocab without "語"):

    "a 語"  -> "▁a▁語" -> ['▁a', '▁', '<0xE8>', '<0xAA>', '<0x9E>'] -> " a 語" -> "a 語"
"""
import itertools

import numpy as np
import regex

from tokenizer import byte_bpe

PREPEND_SCHEMES = ("always", "first", "never")
BYTE_TOKEN = regex.compile(r"<0x[0-9A-Fa-f]{2}>")


def byte_token(b):
    """The vocab string of byte b's fallback token: 10 -> '<0x0A>'."""
    return f"<0x{b:02X}>"


# ----------------------------------------------------------------------------
# Encoding: the symbols of a word, then step 1's merges

def initial_symbols(word, piece_ids, byte_ids):
    """A word -> its symbol ids before any merge: each character's own piece when the vocab
    has it, else the byte tokens of its UTF-8 bytes. piece_ids: {piece UTF-8: id};
    byte_ids: the id of each byte's <0xNN> token.

    >>> initial_symbols("▁a語", {"▁".encode(): 5, b"a": 7}, list(range(100, 356)))
    [5, 7, 332, 270, 258]
    """
    symbols = []
    for char in word:
        data = char.encode("utf-8")
        own = piece_ids.get(data)
        symbols.extend([own] if own is not None else [byte_ids[b] for b in data])
    return symbols


def encode_word_reference(word, piece_ids, byte_ids, merge_ranks, merge_ids):
    """A word -> ids: its symbols, merged by step 1's readable loop (lowest rank first)."""
    symbols = initial_symbols(word, piece_ids, byte_ids)
    return byte_bpe.encode_chunk_reference(symbols, merge_ranks, merge_ids)


def encode_words_fast(words, piece_ids, byte_ids, table):
    """Words -> one tuple of ids each: the same ids as `encode_word_reference`, merged by
    step 1's Numba kernel (each symbol is its own id there: an identity lookup table)."""
    symbols = [initial_symbols(word, piece_ids, byte_ids) for word in words]
    data = np.fromiter(itertools.chain.from_iterable(symbols), np.int64)
    identity = np.arange(int(data.max(initial=0)) + 1, dtype=np.int64)
    return byte_bpe.encode_symbols_fast(data, list(map(len, symbols)), identity, table)


# ----------------------------------------------------------------------------
# The Metaspace pre-tokenizer: spaces -> "▁", one in front, cut before each "▁"

def metaspace(pieces, replacement="▁", prepend_scheme="always", split=True, first=True):
    """HF's Metaspace pre-tokenizer on each piece. first: pieces[0] starts the text (it
    does not follow a special token), which is where prepend_scheme "first" adds "▁".

    >>> metaspace(["Hi  there"])
    ['▁Hi', '▁', '▁there']
    """
    cut = regex.compile(f"{regex.escape(replacement)}[^{regex.escape(replacement)}]*|"
                        f"[^{regex.escape(replacement)}]+")
    words = []
    for k, piece in enumerate(pieces):
        piece = piece.replace(" ", replacement)
        prepend = prepend_scheme == "always" or (prepend_scheme == "first" and first and k == 0)
        if prepend and not piece.startswith(replacement):
            piece = replacement + piece
        words.extend(cut.findall(piece) if split else [piece])
    return words


# ----------------------------------------------------------------------------
# Decoding: the decoder steps of tokenizer.json, each list of strings -> list of strings

def fuse_byte_tokens(pieces, errors="replace"):
    """ByteFallback: each run of <0xNN> tokens -> its UTF-8 text; a run that is not valid
    UTF-8 gives one U+FFFD per byte of the run (or raises, with errors="strict").

    >>> fuse_byte_tokens(["a", "<0xC3>", "<0xA9>", "b", "<0xC3>"])
    ['a', 'é', 'b', '�']
    """
    out, run = [], bytearray()
    for piece in [*pieces, None]:                     # None: flush the last run
        if piece is not None and BYTE_TOKEN.fullmatch(piece):
            run.append(int(piece[3:5], 16))
            continue
        if run:
            try:
                out.append(run.decode("utf-8"))
            except UnicodeDecodeError:
                if errors == "strict":
                    raise
                out.extend("\ufffd" * len(run))
            run.clear()
        if piece is not None:
            out.append(piece)
    return out


def strip(pieces, content=" ", start=1, stop=0):
    """Strip: remove up to `start` leading and `stop` trailing `content` characters of each
    piece. strip([" a", "  b"]) -> ['a', ' b']."""
    def one(piece):
        lo = 0
        while lo < min(start, len(piece)) and piece[lo] == content:
            lo += 1
        hi = len(piece)
        while hi > lo and len(piece) - hi < stop and piece[hi - 1] == content:
            hi -= 1
        return piece[lo:hi]
    return [one(piece) for piece in pieces]


def metaspace_decode(pieces, replacement="▁", prepend_scheme="always"):
    """Metaspace decoder: "▁" -> " ", except that in the first piece every "▁" is dropped
    (unless prepend_scheme is "never"), as `tokenizers` does.

    >>> metaspace_decode(["▁Hi", "▁there"])
    ['Hi', ' there']
    """
    return [piece.replace(replacement, "" if k == 0 and prepend_scheme != "never" else " ")
            for k, piece in enumerate(pieces)]


def decode_pieces(pieces, steps, errors="replace"):
    """Token strings -> text, through the decoder steps read by `hf_format.parse_decoder`:
    ("replace", regex, content), ("byte_fallback",), ("fuse",), ("strip", content, start,
    stop), ("metaspace", replacement, prepend_scheme). The pieces are joined at the end."""
    for kind, *args in steps:
        if kind == "replace":
            pattern, content = args
            pieces = [regex.sub(pattern, lambda _: content, p) for p in pieces]
        elif kind == "byte_fallback":
            pieces = fuse_byte_tokens(pieces, errors)
        elif kind == "fuse":
            pieces = ["".join(pieces)]
        elif kind == "strip":
            pieces = strip(pieces, *args)
        else:
            pieces = metaspace_decode(pieces, *args)
    return "".join(pieces)
