"""Autoregressive sampling with a KV cache (greedy, temperature, top-k, top-p).

The cache is visible, as in llama2.c: for every layer a K and a V buffer of S slots,
(B, S, Hkv, D), written in place. Without a sliding window S = max_seq_length and the token at
position `pos` goes to slot `pos`. With a window W the cache is a rolling buffer of S = W slots:
position `pos` overwrites slot `pos % W`, which held position pos - W, the first one that
fell out of the window. Memory and per-token cost stay flat however long the generation.
"""
import math

import numpy as np

from mini_llm import backend
from mini_llm.backend import array_module
from mini_llm.model import attention, layers


class KVCache:
    """K/V buffers for every layer plus the absolute position held by each slot (-1 = empty)."""

    def __init__(self, model, batch_size):
        c, xp = model.config, backend.xp()
        self.window = c.sliding_window
        self.slots = c.sliding_window if c.sliding_window else c.max_seq_length
        shape = (batch_size, self.slots, c.num_kv_heads, c.head_size)
        self.k = [xp.zeros(shape, dtype=model.dtype) for _ in range(c.num_layers)]
        self.v = [xp.zeros(shape, dtype=model.dtype) for _ in range(c.num_layers)]
        self.slot_pos = xp.full(self.slots, -1)                 # (S,) position stored in each slot
        self.next_pos = 0                                        # position of the next token

    def check_room(self, n_new):
        if self.window is None and self.next_pos + n_new > self.slots:
            raise ValueError(f"{self.next_pos + n_new} tokens exceed max_seq_length={self.slots} "
                             "(a model without sliding window cannot go further)")


def attend_with_cache(q, k_new, v_new, cache, layer, positions):
    """Attention of the new queries over cached keys plus the new ones, then store the new K/V.
    q (B, Tn, H, D), k_new/v_new (B, Tn, Hkv, D), positions (Tn,) absolute."""
    xp = array_module(q)
    B, Tn, H, D = q.shape
    group = H // k_new.shape[2]
    filled = min(cache.next_pos, cache.slots)        # slots fill in order 0, 1, ... before rolling
    keys = xp.concatenate([cache.k[layer][:, :filled], k_new], axis=1)   # (B, S'+Tn, Hkv, D)
    values = xp.concatenate([cache.v[layer][:, :filled], v_new], axis=1)
    key_pos = xp.concatenate([cache.slot_pos[:filled], positions])       # (S'+Tn,)
    keys, values = xp.repeat(keys, group, axis=2), xp.repeat(values, group, axis=2)  # GQA
    scores = xp.einsum("bqhd,bkhd->bhqk", q, keys) * (1.0 / math.sqrt(D))   # (B, H, Tn, S'+Tn)
    # a key is visible if it exists, is not in the future, and (with a window) is recent enough
    visible = (key_pos[None, :] >= 0) & (key_pos[None, :] <= positions[:, None])
    if cache.window is not None:
        visible &= key_pos[None, :] > positions[:, None] - cache.window
    scores = xp.where(visible, scores, -xp.inf)
    probs = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    out = xp.einsum("bhqk,bkhd->bqhd", probs, values)                    # (B, Tn, H, D)
    # write the new K/V in place: slot pos % S (rolling when windowed); only the last S survive
    keep = slice(max(0, Tn - cache.slots), Tn)
    slots = positions[keep] % cache.slots
    cache.k[layer][:, slots] = k_new[:, keep]
    cache.v[layer][:, slots] = v_new[:, keep]
    return out


def forward_with_cache(model, ids, cache):
    """Run ids (B, Tn), the tokens at positions next_pos.., through the model using and filling
    the cache. Returns logits (B, Tn, V). The prompt goes in as one chunk, then one token a step."""
    p, c = model.params, model.config
    xp = backend.xp()
    ids = backend.to_device(ids)
    B, Tn = ids.shape
    cache.check_room(Tn)
    positions = xp.arange(cache.next_pos, cache.next_pos + Tn)
    cos, sin = attention.rope_cos_sin(Tn, c.head_size, c.rope_theta, model.dtype,
                                      start=cache.next_pos, xp=xp)      # (Tn, D)
    x = p["model.embed_tokens.weight"][ids]                              # (B, Tn, C)
    for i in range(c.num_layers):
        pre = f"model.layers.{i}."
        h, _ = layers.rmsnorm_forward(x, p[pre + "input_layernorm.weight"], c.norm_eps)
        q = (h @ p[pre + "self_attn.q_proj.weight"].T).reshape(B, Tn, c.num_heads, c.head_size)
        k = (h @ p[pre + "self_attn.k_proj.weight"].T).reshape(B, Tn, c.num_kv_heads, c.head_size)
        v = (h @ p[pre + "self_attn.v_proj.weight"].T).reshape(B, Tn, c.num_kv_heads, c.head_size)
        q, k = attention.apply_rope(q, cos, sin), attention.apply_rope(k, cos, sin)
        a = attend_with_cache(q, k, v, cache, i, positions).reshape(B, Tn, -1)
        x = x + a @ p[pre + "self_attn.o_proj.weight"].T
        h, _ = layers.rmsnorm_forward(x, p[pre + "post_attention_layernorm.weight"], c.norm_eps)
        f, _ = layers.swiglu_forward(h, p[pre + "mlp.gate_proj.weight"],
                                     p[pre + "mlp.up_proj.weight"], p[pre + "mlp.down_proj.weight"])
        x = x + f
    # record which positions now sit in which slots (after every layer wrote its K/V)
    keep = positions[max(0, Tn - cache.slots):]
    cache.slot_pos[keep % cache.slots] = keep
    cache.next_pos += Tn
    x, _ = layers.rmsnorm_forward(x, p["model.norm.weight"], c.norm_eps)
    return x @ p[model.head_weight_name()].T                              # (B, Tn, V)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """Pick one token per row of logits (B, V) (host NumPy). temperature 0 = greedy (argmax)."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return logits.argmax(axis=-1)
    logits = logits / temperature                                   # <1 sharpens, >1 flattens
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]          # k-th largest per row
        logits = np.where(logits < kth, -np.inf, logits)            # keep only the top k
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1)                         # most likely first
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=-1, keepdims=True)
    rng = rng or np.random.default_rng()
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs])


def generate(model, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             seed=None, use_cache=True, eos_id=None):
    """Continue prompt_ids (B, T0) by max_new_tokens sampled tokens; returns (B, T0 + new) host
    ints. use_cache=False recomputes the whole context every step (the slow reference), cropped
    to the last max_seq_length tokens as nanoGPT does. Stops early when every row emitted eos_id."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(prompt_ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.shape[1] == 0:
        raise ValueError("generate needs a prompt of at least one token")
    cache = KVCache(model, ids.shape[0]) if use_cache else None
    finished = np.zeros(ids.shape[0], dtype=bool)
    new_tokens = ids                                 # what the model has not seen yet
    for _ in range(max_new_tokens):
        if use_cache:
            logits = forward_with_cache(model, new_tokens, cache)[:, -1]      # (B, V)
        else:
            context = ids[:, -model.config.max_seq_length:]                   # crop
            logits = model.forward(context, keep_cache=False)[:, -1]
        next_ids = sample_next(backend.to_host(logits), temperature, top_k, top_p, rng)
        if eos_id is not None:
            next_ids = np.where(finished, eos_id, next_ids)
            finished |= next_ids == eos_id
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
        new_tokens = next_ids[:, None]               # the cache holds the rest
        if eos_id is not None and finished.all():
            break
    return ids
