"""The n-gram teacher: a count-based language model fitted on the training stream.

The cheapest teacher there is (logits only, no hidden states), and a fully honest one: every
probability is counted from the data. It speaks the teacher interface of teachers.py.
"""
import math

import numpy as np

from mini_llm import backend


class NGramTeacher:
    """An interpolated absolute-discounting n-gram model, the cheapest possible teacher.

    For order n with context h (the previous n-1 tokens) and next token w:
        P_n(w | h) = max(c(h w) - D_n, 0) / c(h)  +  D_n N(h) / c(h) * P_{n-1}(w | h')
    where c(h) counts h followed by anything, N(h) is the number of distinct tokens seen after
    h, h' drops h's oldest token, and D_n = n1 / (n1 + 2 n2) (n1, n2: n-grams seen once,
    twice). The discounted mass D_n N(h) / c(h) is exactly what the lower order receives, so
    every row sums to 1. An unseen context backs off fully; the chain ends at the add-one
    unigram (c(w) + 1) / (N + V), so no token has probability 0.

    Counts are kept as sorted int64 keys: an n-gram x_1..x_n is the base-V number
    ((x_1 V + x_2) V + ...) V + x_n, so the n-grams of one context are a contiguous run of the
    sorted keys and a context is found with one searchsorted.
    """

    kind = "ngram"
    tokenizer = None
    num_layers = 0
    hidden_size = None

    def __init__(self, vocab_size, order=3, name="ngram", dtype=np.float32):
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        if vocab_size < 1:
            raise ValueError(f"n-gram vocab_size must be >= 1, got {vocab_size}")
        if order > 1 and order * math.log2(vocab_size) >= 63:
            raise ValueError(f"n-gram order {order} with vocab size {vocab_size} does not fit in "
                             f"int64 keys: use a lower order")
        self.vocab_size, self.order, self.name, self.dtype = vocab_size, order, name, np.dtype(dtype)
        self.unigram = None        # (V,) add-one probabilities, set by fit
        self.tables = {}           # n -> dict of sorted arrays for order n >= 2

    def _key(self, windows):
        """(..., m) token windows -> (...,) int64 base-V numbers."""
        key = np.zeros(windows.shape[:-1], dtype=np.int64)
        for j in range(windows.shape[-1]):
            key = key * self.vocab_size + windows[..., j]
        return key

    def fit(self, stream):
        """Count 1..order-grams of a 1-D token stream. Returns self."""
        stream = np.asarray(backend.to_host(stream), dtype=np.int64)
        if stream.ndim != 1 or len(stream) == 0:
            raise ValueError(f"n-gram fit needs a non-empty 1-D token stream, got shape {stream.shape}")
        if stream.min() < 0 or stream.max() >= self.vocab_size:
            raise ValueError(f"n-gram fit: token ids must be in [0, {self.vocab_size}), "
                             f"got {stream.min()}..{stream.max()}")
        V = self.vocab_size
        self.unigram = (np.bincount(stream, minlength=V) + 1.0) / (len(stream) + V)   # (V,)
        self.tables = {}
        for n in range(2, min(self.order, len(stream)) + 1):
            grams = np.lib.stride_tricks.sliding_window_view(stream, n)              # (N-n+1, n)
            keys, counts = np.unique(self._key(grams), return_counts=True)           # sorted n-grams
            contexts, first = np.unique(keys // V, return_index=True)                # runs of one context
            n1, n2 = np.sum(counts == 1), np.sum(counts == 2)
            self.tables[n] = dict(
                next=keys % V, count=counts.astype(np.float64),
                contexts=contexts, first=first, types=np.diff(np.append(first, len(keys))),
                total=np.add.reduceat(counts, first).astype(np.float64),
                discount=n1 / (n1 + 2.0 * n2) if n1 > 0 else 0.5)
        return self

    def _discounted_rows(self, n, contexts):
        """The n-gram term max(c(h w) - D, 0) / c(h) as dense rows (U, V), one per context index
        in `contexts` (U,): each context's continuations are a run of `types` sorted n-grams."""
        table = self.tables[n]
        types, total = table["types"][contexts], table["total"][contexts]
        run_start = np.repeat(np.cumsum(types) - types, types)
        g = np.repeat(table["first"][contexts], types) + np.arange(types.sum()) - run_start  # n-gram ids
        rows = np.zeros((len(contexts), self.vocab_size), dtype=self.dtype)
        rows[np.repeat(np.arange(len(contexts)), types), table["next"][g]] = (
            np.maximum(table["count"][g] - table["discount"], 0.0) / np.repeat(total, types))
        return rows

    def _interpolate(self, probs, ids, n):
        """Turn probs (B*T, V) from order n-1 into order n, in place, at every position whose
        context of n-1 tokens was seen in training. Positions that share a context share its
        n-gram term, so it is built once per distinct context."""
        table = self.tables[n]
        B, T = ids.shape
        if T < n - 1:
            return
        ctx = self._key(np.lib.stride_tricks.sliding_window_view(ids, n - 1, axis=1)).reshape(-1)
        pos = (np.arange(B)[:, None] * T + np.arange(n - 2, T)[None, :]).reshape(-1)   # row of each ctx
        c = np.minimum(np.searchsorted(table["contexts"], ctx), len(table["contexts"]) - 1)
        seen = table["contexts"][c] == ctx
        pos, c = pos[seen], c[seen]
        contexts, which = np.unique(c, return_inverse=True)
        backoff = table["discount"] * table["types"][contexts] / table["total"][contexts]  # mass left to n-1
        probs[pos] = (probs[pos] * backoff[which, None].astype(self.dtype)
                      + self._discounted_rows(n, contexts)[which])

    def forward(self, ids, hidden_layers=()):
        """ids (B, T) -> log P(next token | ids[:, :t+1]) as logits (B, T, V), and {}.
        Position t uses the last min(order-1, t+1) tokens as its context."""
        if self.unigram is None:
            raise RuntimeError(f"n-gram teacher {self.name} must be fit on a token stream first")
        if len(hidden_layers):
            raise ValueError(f"teacher {self.name} is an n-gram model and has no hidden states")
        ids = np.asarray(backend.to_host(ids), dtype=np.int64)
        if ids.ndim != 2:
            raise ValueError(f"ids must be 2-D (batch, time), got shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token id outside the n-gram vocabulary (size {self.vocab_size})")
        B, T = ids.shape
        probs = np.tile(self.unigram.astype(self.dtype), (B * T, 1))                  # (B*T, V)
        for n in range(2, self.order + 1):
            if n in self.tables:
                self._interpolate(probs, ids, n)
        return backend.to_device(np.log(probs, out=probs).reshape(B, T, self.vocab_size)), {}
