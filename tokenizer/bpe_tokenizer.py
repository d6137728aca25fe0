"""Step 2 of the tokenizer: BPETokenizer, text in and ids out (train, encode, decode,
save, load).

What it adds to step 1 (`byte_bpe.py`, BPE on raw bytes): the regex
pre-tokenizer, the special tokens, Unicode normalization and the file. The
per-chunk work (training on the chunks, merging a chunk's bytes) is step 1's.

How it works (GPT-2 style byte-level BPE):
  1. Special tokens ("<|endoftext|>", "<pad>", ...) are cut out of the text first
     and never split.
  2. The rest is pre-tokenized: a regex cuts it into chunks (" the", "'s", "123")
     so that merges never cross word boundaries.
  3. Each chunk becomes its UTF-8 bytes: ids 0..255, the base alphabet. Any
     string therefore round-trips exactly: decode(encode(x)) == x.
  4. Training repeatedly merges the most frequent adjacent pair into a new token
     (256, 257, ...); encoding replays those merges by rank on each chunk.
     Steps 3 and 4 are `byte_bpe.py`, ties included (highest count, then the
     smallest pair).
  Encoding with the built-in GPT-2 / GPT-4 patterns runs steps 2-4 in Numba on
  many threads (`pretokenize_kernels.py`), with the same ids as `regex` + step 1.

Ids: bytes 0..255, then merges, then special tokens. Saved as a Hugging Face
`tokenizer.json` (see `hf_format.py`). The encoder never adds BOS/EOS on its
own; callers append `eos_id` themselves.

`load` also reads SentencePiece-style BPE files (Llama 2, Mistral: `byte_fallback`),
whose symbols are characters, not bytes, and whose spaces are "▁": then
`byte_fallback` is True, step 3 is `sentencepiece_bpe.initial_symbols`, and decode
runs the file's decoder steps (`sentencepiece_bpe.decode_pieces`). Training makes
byte-level BPE only.
"""
import collections
import itertools
import sys
import unicodedata

import numpy as np
import regex
from tqdm import tqdm

from tokenizer import (bpe_train_kernels, byte_bpe, hf_format, hf_pipeline, pretokenize_kernels,
                       sentencepiece_bpe, threaded_path)
from tokenizer.byte_bpe import render_token, train_reference
from tokenizer.hf_pipeline import GPT2_PATTERN, GPT4_PATTERN, PREFIX_SPACE

PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<pad>", "<bos>", "<eos>")
ROLE_CANDIDATES = {  # the first one present names bos / eos / pad
    "bos": ("<bos>", "<s>", "<|begin_of_text|>"),
    "eos": ("<eos>", "</s>", "<|end_of_text|>", "<|endoftext|>"),
    "pad": ("<pad>", "<|pad|>", "<|finetune_right_pad_id|>"),
}
ALLOWED_SPECIAL_MODES = ("all", "none", "none_raise")
BIG_CORPUS_CHARS = 1_000_000  # above this, train shows a progress bar
CACHE_LIMIT = 1 << 18         # chunk cache entries before it is cleared
FAST_PATTERNS = {GPT2_PATTERN: pretokenize_kernels.GPT2, GPT4_PATTERN: pretokenize_kernels.GPT4}
DEFAULT_FLAGS = regex.compile("").flags  # a pattern compiled with no flags given has these


# ----------------------------------------------------------------------------
# The regex pre-tokenizer: text -> chunks, so that merges never cross word boundaries

def split_isolated(pattern, text):
    """Cut text into the regex's matches, keeping any unmatched gaps as pieces too."""
    if not pattern.groups:  # fast path: findall gives whole matches, and usually covers all
        chunks = pattern.findall(text)
        if sum(map(len, chunks)) == len(text):
            return chunks
    pieces, end = [], 0
    for match in pattern.finditer(text):
        if match.start() > end:
            pieces.append(text[end:match.start()])
        pieces.append(match.group())
        end = match.end()
    return pieces + ([text[end:]] if end < len(text) else [])


# ----------------------------------------------------------------------------
# The tokenizer: special tokens and the pre-tokenizer around step 1's byte-level BPE

class BPETokenizer:
    """Byte-level BPE tokenizer. See the module docstring for the algorithm.

    vocab_size: the requested size, counting 256 bytes + merges + special tokens.
        After `train`, `.vocab_size` is the real size, which is smaller when the
        text supports fewer merges.
    special_tokens: list of strings, default ("<|endoftext|>", "<pad>", "<bos>", "<eos>").
    pattern: pre-tokenization regex, "gpt4" (cl100k, default), "gpt2", or a regex string.
    """

    def __init__(self, vocab_size=30000, special_tokens=None, pattern="gpt4"):
        special_tokens = list(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
        if len(set(special_tokens)) != len(special_tokens) or "" in special_tokens \
                or not all(isinstance(s, str) for s in special_tokens):
            raise ValueError(f"special_tokens must be distinct non-empty strings, got "
                             f"{special_tokens!r}")
        smallest = 256 + len(special_tokens)
        if not isinstance(vocab_size, (int, np.integer)) or vocab_size < smallest:
            raise ValueError(f"vocab_size {vocab_size!r} is below 256 bytes + "
                             f"{len(special_tokens)} special tokens = {smallest}")
        if pattern not in PATTERNS:
            try:
                regex.compile(pattern)
            except (regex.error, TypeError):
                raise ValueError(f"pattern must be 'gpt2', 'gpt4' or a regex, got "
                                 f"{pattern!r}") from None
        self.requested_vocab_size = vocab_size
        self._configure(hf_format.pre_tokenizer_json(PATTERNS.get(pattern, pattern)), None)
        self.unk_token = None
        self.prefix_ids = []        # what a loaded file's post-processor puts first (e.g. [bos])
        self._set_vocab({i: bytes([i]) for i in range(256)}, [],
                        {s: 256 + k for k, s in enumerate(special_tokens)}, list(range(256)))
        self.ignore_merges = False
        self.role_names = {}

    # --- state -----------------------------------------------------------

    def _configure(self, pre_tokenizer, normalizer, decoder=None, byte_fallback=False):
        """Set the pre-tokenizer, normalizer and decoder from their tokenizer.json dicts;
        byte_fallback: SentencePiece-style BPE (characters, not bytes, are the symbols)."""
        self.pre_tokenizer, self.normalizer = pre_tokenizer, normalizer
        self.decoder, self.byte_fallback = decoder, byte_fallback
        steps = hf_pipeline.parse_pre_tokenizer(pre_tokenizer, "pre_tokenizer", byte_fallback)
        self._steps = [regex.compile(s) if isinstance(s, str) and s != PREFIX_SPACE else s
                       for s in steps]
        self._normal_steps = hf_pipeline.parse_normalizer(normalizer, "normalizer")
        self._decoder_steps = hf_pipeline.parse_decoder(decoder, "decoder") if byte_fallback else []

    def _set_vocab(self, vocab, merges, special_tokens, byte_ids):
        """vocab {id: bytes}; merges [(a, b, new_id)] by rank; special_tokens {text: id}."""
        self.vocab, self.merges, self.special_tokens = vocab, merges, special_tokens
        size = max([*vocab, *special_tokens.values()]) + 1
        self._id_bytes = [None] * size
        for i, token in vocab.items():
            self._id_bytes[i] = token
        for s, i in special_tokens.items():
            self._id_bytes[i] = s.encode("utf-8")
        self._str_to_id = {hf_format.vocab_string(t, self.byte_fallback): i
                           for i, t in vocab.items()}
        self._str_to_id.update(special_tokens)
        self._bytes_to_id = {t: i for i, t in vocab.items()}
        self._byte_ids = np.asarray(byte_ids, dtype=np.int64)           # (256,) id of each byte
        self._merge_table = byte_bpe.merge_table(merges)
        self._cache = {}
        self._special_regexes = {}

    @property
    def vocab_size(self):
        """The real number of ids: bytes + merges + special tokens (after training)."""
        return len(self._id_bytes)

    def _role_id(self, role):
        name = self.role_names.get(role)
        if name is None:
            name = next((s for s in ROLE_CANDIDATES[role] if s in self.special_tokens), None)
        return self.special_tokens.get(name, self._str_to_id.get(name))

    bos_id = property(lambda self: self._role_id("bos"), doc="id of <bos>, or None")
    eos_id = property(lambda self: self._role_id("eos"), doc="id of <eos>, or None")
    pad_id = property(lambda self: self._role_id("pad"), doc="id of <pad>, or None")

    def token_to_id(self, token):
        """Vocab string -> id, or None. Strings as in tokenizer.json: 'Ġthe' (byte-level),
        '▁the' (SentencePiece)."""
        return self._str_to_id.get(token)

    def id_to_token(self, token_id):
        """Id -> its vocab string ('Ġthe', '▁the', or the special token's text)."""
        self._check_ids([token_id])
        for s, i in self.special_tokens.items():
            if i == token_id:
                return s
        return hf_format.vocab_string(self.vocab[token_id], self.byte_fallback)

    # --- pre-tokenizer: text -> chunks -----------------------------------

    def _normalize(self, text):
        """Apply the normalizer's steps in order (none by default): a Unicode form (NFC),
        Prepend("▁") or Replace(" ", "▁") (SentencePiece's legacy layout)."""
        for kind, *args in self._normal_steps:
            if kind == "unicode":
                text = unicodedata.normalize(args[0], text)
            elif kind == "prepend":
                text = args[0] + text if text else text
            else:
                pattern, content = args
                text = regex.sub(pattern, lambda _: content, text)
        return text

    def _pretokenize(self, text, first=True):
        """Text (no special tokens) -> chunks, by the pre-tokenizer's steps in order.
        first: the text starts the input (no special token before it), for Metaspace."""
        pieces = [text]
        for step in self._steps:
            if step == PREFIX_SPACE:
                pieces = [p if p.startswith(" ") else " " + p for p in pieces]
            elif isinstance(step, tuple):  # ("metaspace", replacement, prepend_scheme, split)
                pieces = sentencepiece_bpe.metaspace(pieces, *step[1:], first=first)
            elif len(pieces) == 1:
                pieces = split_isolated(step, pieces[0])
            else:
                pieces = [c for p in pieces for c in split_isolated(step, p)]
        return pieces

    # --- special tokens: cut out first, never split ----------------------

    def _allowed_specials(self, allowed_special):
        """encode()'s allowed_special -> the frozenset of special tokens that become ids."""
        if allowed_special == "all":
            return frozenset(self.special_tokens)
        if allowed_special in ("none", "none_raise"):
            return frozenset()
        if isinstance(allowed_special, str) or not hasattr(allowed_special, "__iter__"):
            raise ValueError(f"allowed_special must be one of {ALLOWED_SPECIAL_MODES} or a set "
                             f"of special tokens, got {allowed_special!r}")
        unknown = set(allowed_special) - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special names unknown special tokens {sorted(unknown)}")
        return frozenset(allowed_special)

    def _special_regex(self, specials):
        """A regex with one group matching any of `specials`, longest first (None if empty)."""
        if not specials:
            return None
        if specials not in self._special_regexes:
            ordered = sorted(specials, key=lambda s: (-len(s), s))
            self._special_regexes[specials] = regex.compile(
                "(" + "|".join(regex.escape(s) for s in ordered) + ")")
        return self._special_regexes[specials]

    # --- training --------------------------------------------------------

    def train(self, texts, verbose=False, reference=False):
        """Learn merges from `texts` (a list of strings, or one string).

        verbose prints one line per merge; otherwise a progress bar shows on big
        corpora. reference=True runs the plain-Python loop instead of Numba, on chunks
        that `regex` cuts (`_count_chunks`); the fast path counts them with Numba where it
        can (`_count_chunks_packed`). Both use numba.get_num_threads() threads.
        """
        if self.byte_fallback:
            raise ValueError("train(): this is a SentencePiece-style (byte_fallback) tokenizer; "
                             "train makes byte-level BPE: start from BPETokenizer(...)")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("train(): the list of texts is empty")
        if reference:
            word_counts = self._count_chunks(texts)
            words = [list(w.encode("utf-8")) for w in word_counts]   # byte ids, as lists
            counts = list(word_counts.values())
        else:
            words, counts = self._count_chunks_packed(texts)        # packed arrays
        if not len(counts):
            raise ValueError("train(): the texts hold no characters to learn from")
        specials = list(self.special_tokens)
        num_merges = self.requested_vocab_size - 256 - len(specials)

        vocab = {i: bytes([i]) for i in range(256)}
        bar = None
        if not verbose and sum(map(len, texts)) >= BIG_CORPUS_CHARS:
            bar = tqdm(total=num_merges, desc="BPE merges", unit="merge")

        def on_merge(m, pair, count):
            vocab[256 + m] = vocab[pair[0]] + vocab[pair[1]]
            if verbose:
                print(f"merge {m + 1}/{num_merges}: {pair} -> {256 + m} "
                      f"'{render_token(vocab[256 + m])}' (count {count})")
            elif bar:
                bar.update()

        if reference:
            pairs = train_reference(words, counts, num_merges, on_merge=on_merge)
        else:
            pairs = byte_bpe.train_packed(*words, counts, num_merges, on_merge=on_merge)
        if bar:
            bar.close()
        merges = [(a, b, 256 + m) for m, (a, b) in enumerate(pairs)]
        first_special = 256 + len(merges)
        self._set_vocab(vocab, merges, {s: first_special + k for k, s in enumerate(specials)},
                        list(range(256)))
        if len(merges) < num_merges:
            print(f"BPE: the text supports only {len(merges)} merges, so vocab_size is "
                  f"{self.vocab_size} (asked for {self.requested_vocab_size})", file=sys.stderr)
        return self

    def _count_chunks(self, texts):
        """Count every pre-tokenized chunk of the texts, special tokens cut out."""
        counter = collections.Counter()
        special = self._special_regex(frozenset(self.special_tokens))
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"train(): texts must be str, got {type(text).__name__}")
            pieces = special.split(text)[::2] if special else [text]  # odd pieces: specials
            for piece in filter(None, pieces):
                counter.update(self._pretokenize(self._normalize(piece)))
        return counter

    def _count_chunks_packed(self, texts):
        """`_count_chunks` as arrays, ((data, bounds), counts): chunk k is the UTF-8 bytes
        data[bounds[k]:bounds[k+1]], seen counts[k] times (`bpe_train_kernels.pack_words`).

        With a built-in pattern (`_fast_pattern`) Numba cuts and counts the chunks on all
        threads (`count_kernels.chunk_pieces`, then `unique_words`), about
        threaded_path.GROUP_CHARS characters per call; any other pre-tokenizer goes through `_count_chunks`.
        """
        pattern = self._fast_pattern()
        if pattern is None:
            counter = self._count_chunks(texts)
            return bpe_train_kernels.pack_words([w.encode("utf-8") for w in counter]), \
                np.fromiter(counter.values(), np.int64, len(counter))
        special = self._special_regex(frozenset(self.special_tokens))
        pieces = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"train(): texts must be str, got {type(text).__name__}")
            parts = special.split(text)[::2] if special else [text]   # odd parts: specials
            pieces += [self._normalize(part) for part in parts if part]
        return threaded_path.count_chunks(pieces, pattern)

    # --- encoding --------------------------------------------------------
    # Two paths give the same ids. The threaded one: the built-in GPT-2 / GPT-4 regex, written
    # out in Numba, and BPE, on all of Numba's threads (`pretokenize_kernels.py`). The
    # reference: `regex` cuts chunks, one Python string each, and each new chunk is merged
    # once, then read from the chunk cache; any other pre-tokenizer goes this way.

    fast_encode = True  # False: always the reference path (tests compare the two)

    def encode(self, text, allowed_special="all"):
        """Text -> token ids. No BOS/EOS is added.

        allowed_special says what to do with special-token text found in `text`:
          "all"         every special token's text becomes its id (as HF does);
          "none"        it is ordinary text, encoded byte by byte like the rest;
          "none_raise"  it raises ValueError (for untrusted text);
          a set of special token strings: only those become ids, the rest is text.
        A long text is shared out to Numba's threads (numba.get_num_threads()).
        """
        return self._encode_texts([text], allowed_special)[0]

    def encode_batch(self, texts, allowed_special="all"):
        """List of texts -> list of id lists, as encode() gives each. The texts are encoded
        together: on the threaded path they share Numba's threads, on the reference path
        the chunk cache."""
        return self._encode_texts(list(texts), allowed_special)

    def _encode_texts(self, texts, allowed_special):
        """Cut the special tokens out of each text, encode the ordinary pieces between them
        (all of them at once on the threaded path), and put each text's ids back in order."""
        special = self._special_regex(self._allowed_specials(allowed_special))
        found = self._special_regex(frozenset(self.special_tokens)) \
            if allowed_special == "none_raise" else None
        pattern = self._fast_pattern()
        layouts, pieces = [], []   # per text: its special ids, None where a piece goes
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"encode() expects str, got {type(text).__name__}")
            match = found.search(text) if found else None
            if match:
                raise ValueError(f"encode(): text holds special token {match.group()!r} at "
                                 f"index {match.start()} and allowed_special='none_raise'")
            parts = special.split(text) if special else [text]   # odd parts: special tokens
            layout = []
            for k, part in enumerate(parts):
                if k % 2:
                    layout.append(self.special_tokens[part])
                elif part and pattern is None:   # the reference path, piece by piece
                    layout.append(self._encode_ordinary(part, [], first=k == 0))
                elif part:
                    layout.append(None)
                    pieces.append(self._normalize(part))
            layouts.append(layout)
        encoded = iter(self._encode_pieces(pieces, pattern) if pieces else ())
        return [self._assemble(layout, encoded) for layout in layouts]

    @staticmethod
    def _assemble(layout, encoded):
        """One text's ids: special ids as they are, ints; id lists (a piece's ids) joined;
        None takes the next list from `encoded`."""
        if len(layout) == 1 and not isinstance(layout[0], int):   # the usual: one piece
            return next(encoded) if layout[0] is None else layout[0]
        ids = []
        for item in layout:
            if isinstance(item, int):
                ids.append(item)
            else:
                ids.extend(next(encoded) if item is None else item)
        return ids

    def _fast_pattern(self):
        """The threaded path's matcher (pretokenize_kernels.GPT2 / GPT4) when the
        pre-tokenizer is exactly that one built-in regex on byte-level BPE, else None."""
        if not self.fast_encode or self.byte_fallback or self.ignore_merges \
                or len(self._steps) != 1 or not isinstance(self._steps[0], regex.Pattern):
            return None
        step = self._steps[0]
        return FAST_PATTERNS.get(step.pattern) if step.flags == DEFAULT_FLAGS else None

    def _encode_pieces(self, pieces, pattern):
        """Ordinary texts (no special tokens, normalized) -> one id list each, on all
        threads (threaded_path.encode_pieces)."""
        return threaded_path.encode_pieces(pieces, pattern, self._byte_ids, self._merge_table)

    def _encode_ordinary(self, text, ids, first=True):
        """The reference path: append the ids of text (special tokens already cut out) to
        `ids`, and return it. New chunks are merged once, then read from the cache."""
        chunks = self._pretokenize(self._normalize(text), first)
        cache, unique = self._cache, set(chunks)
        new = [c for c in unique if c not in cache]
        if len(cache) + len(new) > CACHE_LIMIT:   # full: start over, with every chunk of this text
            cache.clear()
            new = list(unique)
        if new:
            cache.update(zip(new, self._encode_chunks(new)))
        ids.extend(itertools.chain.from_iterable(map(cache.__getitem__, chunks)))
        return ids

    def _encode_chunks(self, chunks):
        """Chunks -> list of id tuples, by the Numba kernel (ignore_merges first, if set)."""
        try:
            data = [c.encode("utf-8") for c in chunks]
        except UnicodeEncodeError as e:
            raise ValueError(f"encode(): text holds {e.object[e.start]!r}, a lone surrogate, "
                             "which is not valid Unicode") from None
        if self.byte_fallback:
            result = sentencepiece_bpe.encode_words_fast(chunks, self._bytes_to_id,
                                                         self._byte_ids, self._merge_table)
        else:
            result = byte_bpe.encode_fast(data, self._byte_ids, self._merge_table)
        if self.ignore_merges:
            whole = self._bytes_to_id
            result = [(whole[d],) if d in whole else r for d, r in zip(data, result)]
        return result

    # --- decoding --------------------------------------------------------

    def _check_ids(self, ids):
        for i in ids:
            if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self._id_bytes) \
                    or self._id_bytes[i] is None:
                raise ValueError(f"token id {i!r} is not in the vocabulary "
                                 f"(size {self.vocab_size})")

    def decode(self, ids, errors="replace"):
        """Token ids -> text. Bytes that are not valid UTF-8 (a token cut mid-character)
        become U+FFFD unless errors="strict"."""
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        try:
            if ids and min(ids) < 0:
                raise IndexError
            data = byte_bpe.decode(ids, self._id_bytes)
        except (IndexError, TypeError):
            self._check_ids(ids)
            raise
        if self.byte_fallback:  # the file's decoder steps, on the token strings
            pieces = [self._id_bytes[i].decode("utf-8") for i in ids]
            return sentencepiece_bpe.decode_pieces(pieces, self._decoder_steps, errors)
        return data.decode("utf-8", errors=errors)

    # --- files -----------------------------------------------------------

    def save(self, path):
        """Write a Hugging Face tokenizer.json (to `path`, or to path/tokenizer.json when
        path is a directory or has no .json suffix) plus a readable *.vocab.txt beside it.
        Returns the tokenizer.json path."""
        sentencepiece = {"decoder": self.decoder, "unk_token": self.unk_token} \
            if self.byte_fallback else None
        return hf_format.save(path, self.vocab, self.merges, self.special_tokens,
                              self.pre_tokenizer, self.normalizer, self.ignore_merges,
                              sentencepiece)

    @classmethod
    def load(cls, path):
        """Read a tokenizer.json (ours or Hugging Face's byte-level or SentencePiece-style
        BPE), or a directory holding one. One-line ValueError when the file is missing,
        corrupt or foreign."""
        parts = hf_format.from_json_file(path)
        tokenizer = cls.__new__(cls)
        tokenizer._configure(parts["pre_tokenizer"], parts["normalizer"], parts["decoder"],
                             parts["byte_fallback"])
        tokenizer.unk_token = parts["unk_token"]
        tokenizer._set_vocab(parts["vocab"], parts["merges"], parts["special_tokens"],
                             parts["byte_ids"])
        tokenizer.requested_vocab_size = tokenizer.vocab_size
        tokenizer.ignore_merges = parts["ignore_merges"]
        tokenizer.role_names = parts["role_names"]
        tokenizer.prefix_ids = parts["prefix_ids"]
        return tokenizer
