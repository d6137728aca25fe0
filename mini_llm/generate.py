"""Autoregressive sampling with a KV cache (greedy, temperature, top-k, top-p).

The cache (model/kv_cache.py) is visible, as in llama2.c; the model's one decoder block fills
and reads it: `model.forward(new_ids, keep_cache=False, kv_cache=cache)` runs the prompt as
one chunk, then one token a step.

Without a window, generation stops when prompt + new tokens fill max_seq_length and says so
(stop reason "context_limit"), with the cache or without. The next-token distribution
(next_token_probs) is kept apart from the draw (sample_next), so tests can check it exactly.
"""
import numpy as np

from mini_llm import backend
from mini_llm.model.kv_cache import KVCache
from mini_llm.model.layers import softmax


# ---------------------------------------------------------------------------------------------
# The next-token distribution (temperature, top-k, top-p), then one draw from it


def keep_top_k(logits, k):
    """logits (B, V) with all but the k largest of each row set to -inf (ties with the k-th
    largest stay). [2, 0, 1, 3] with k=2 -> [2, -inf, -inf, 3]. k None or >= V: unchanged."""
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = np.sort(logits, axis=-1)[:, -k][:, None]                  # (B, 1) k-th largest per row
    return np.where(logits < kth, -np.inf, logits)


def keep_top_p(probs, p):
    """probs (B, V) cut to the smallest set of most likely tokens whose mass reaches p, then
    renormalized (nucleus sampling). [0.5, 0.3, 0.15, 0.05] with p=0.7 keeps the first two
    (0.5 < 0.7 <= 0.8) -> [0.625, 0.375, 0, 0]. p None or >= 1: unchanged."""
    if p is None or p >= 1.0:
        return probs
    order = np.argsort(-probs, axis=-1)                             # (B, V) most likely first
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    # a token stays while the mass before it is still short of p (so the first always stays)
    mass_before = np.cumsum(sorted_probs, axis=-1) - sorted_probs   # (B, V)
    drop = np.zeros(probs.shape, dtype=bool)
    np.put_along_axis(drop, order, mass_before >= p, axis=-1)       # back to vocabulary order
    kept = np.where(drop, 0.0, probs)
    return kept / kept.sum(axis=-1, keepdims=True)


def next_token_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """The distribution sample_next draws from: logits (B, V) -> probabilities (B, V), float64
    on the host:
        p = keep_top_p(softmax(keep_top_k(logits / temperature, top_k)), top_p)
    temperature < 1 sharpens p, > 1 flattens it; temperature 0 is greedy: one-hot on the argmax."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        probs = np.zeros_like(logits)
        np.put_along_axis(probs, logits.argmax(axis=-1)[:, None], 1.0, axis=-1)
        return probs
    z = keep_top_k(logits / temperature, top_k)                     # (B, V)
    return keep_top_p(softmax(z), top_p)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """One token per row of logits (B, V), drawn from next_token_probs; returns (B,) ints.
    Greedy (temperature 0) draws nothing and takes the argmax, so it uses no randomness."""
    probs = next_token_probs(logits, temperature, top_k, top_p)
    if temperature == 0:
        return probs.argmax(axis=-1)
    rng = rng or np.random.default_rng()
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs])


# ---------------------------------------------------------------------------------------------
# How far generation may go


def receptive_field(config):
    """How many trailing tokens decide the next token's logits: all of them without a window
    (None); with a window W each of the L layers reaches W-1 positions further back, so
    L(W-1) + 1 (the token itself included)."""
    if config.sliding_window is None:
        return None
    return config.num_layers * (config.sliding_window - 1) + 1


def room_for_new_tokens(config, prompt_len):
    """How many tokens generation may add after a prompt of prompt_len tokens. Without a window
    prompt + new must fit in max_seq_length (the cache has that many slots and the model
    accepts no more); with a window the rolling cache goes on, so there is no limit (None)."""
    if config.sliding_window is not None:
        return None
    if prompt_len > config.max_seq_length:
        raise ValueError(f"the prompt has {prompt_len} tokens, more than "
                         f"max_seq_length={config.max_seq_length}")
    return config.max_seq_length - prompt_len


def check_recompute_is_exact(config, longest):
    """use_cache=False runs model.forward on the last max_seq_length tokens (the most it takes).
    That crop is exact when it holds the receptive field: the dropped tokens could not reach
    the next one, and RoPE scores depend only on m - n, so shifting every position changes
    nothing but rounding. A window whose receptive field is longer than max_seq_length would
    lose context once the sequence (`longest` tokens fed) outgrows max_seq_length: refuse."""
    field, limit = receptive_field(config), config.max_seq_length
    if field is not None and field > limit and longest > limit:
        raise ValueError(f"use_cache=False recomputes at most max_seq_length={limit} tokens, but "
                         f"with sliding_window={config.sliding_window} over {config.num_layers} "
                         f"layers the next token depends on the last {field}: generating past "
                         f"{limit} tokens needs the KV cache")


def recompute_logits(model, ids):
    """The slow reference: logits (B, V) of the last position from a full model.forward over
    ids (B, T), cropped to the last max_seq_length tokens (exact: check_recompute_is_exact)."""
    context = ids[:, -model.config.max_seq_length:]                 # (B, <= max_seq_length)
    return model.forward(context, keep_cache=False)[:, -1]


# ---------------------------------------------------------------------------------------------
# The sampling loop

STOP_MAX_NEW_TOKENS, STOP_EOS, STOP_CONTEXT_LIMIT = "max_new_tokens", "eos", "context_limit"


def generate(model, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             seed=None, use_cache=True, eos_id=None, return_stop_reason=False):
    """Continue prompt_ids (B, T0) by up to max_new_tokens sampled tokens; returns ids
    (B, T0 + n) host ints, or (ids, stop_reason) with return_stop_reason=True:
        "max_new_tokens"  n == max_new_tokens
        "eos"             every row emitted eos_id (a finished row is padded with eos_id)
        "context_limit"   no window and T0 + n == max_seq_length: the model takes no more
    With a window the rolling cache goes past max_seq_length. use_cache=False recomputes the
    whole context every step (the slow reference); both modes give the same tokens."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(prompt_ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.shape[1] == 0:
        raise ValueError("generate needs a prompt of at least one token")
    room = room_for_new_tokens(model.config, ids.shape[1])     # None: no limit (window)
    steps = max_new_tokens if room is None else min(max_new_tokens, room)
    stop_reason = STOP_MAX_NEW_TOKENS if steps == max_new_tokens else STOP_CONTEXT_LIMIT
    if not use_cache:
        check_recompute_is_exact(model.config, ids.shape[1] + steps - 1)
    cache = KVCache(model, ids.shape[0]) if use_cache else None
    finished = np.zeros(ids.shape[0], dtype=bool)
    new_tokens = ids                                 # what the model has not seen yet
    for _ in range(steps):
        if use_cache:
            logits = model.forward(new_tokens, keep_cache=False, kv_cache=cache)[:, -1]  # (B, V)
        else:
            logits = recompute_logits(model, ids)                             # (B, V)
        next_ids = sample_next(backend.to_host(logits), temperature, top_k, top_p, rng)   # (B,)
        if eos_id is not None:
            next_ids = np.where(finished, eos_id, next_ids)   # a finished row only pads
            finished |= next_ids == eos_id
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
        new_tokens = next_ids[:, None]               # the cache holds the rest
        if eos_id is not None and finished.all():
            stop_reason = STOP_EOS
            break
    return (ids, stop_reason) if return_stop_reason else ids
