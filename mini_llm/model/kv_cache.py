"""The KV cache of generation: each layer's keys and values, kept so a new token attends to
the past without recomputing it (as in llama2.c, the cache is a visible buffer).

For every layer a K and a V buffer of S slots, (B, S, Hkv, D), written in place. Without a
sliding window S = max_seq_length and the token at position `pos` goes to slot `pos`. With a
window W the cache is a rolling buffer of S = W slots: position `pos` overwrites slot
`pos % W`, which held position pos - W, the first one that fell out of the window. Memory and
per-token cost stay flat however long the generation. Each layer sizes its own buffers from its
own window (Qwen2's max_window_layers: some layers slide, the others keep max_seq_length slots).

The model's one decoder block uses it (MiniTransformer.forward(ids, kv_cache=cache)): after
RoPE, a layer hands its new keys and values to `extend`, which returns the cached ones before
them, in position order, and stores the new ones. The reference attention then treats the
new queries as the last positions of those keys (attention.py).
"""
from mini_llm import backend


class KVCache:
    """K/V buffers for every layer plus the absolute position held by each slot (-1 = empty)
    of the smallest buffer (all of them when every layer has the same window)."""

    def __init__(self, model, batch_size):
        c, xp = model.config, backend.xp()
        windows = [c.layer_window(i) for i in range(c.num_layers)]
        self.full_layers = any(w is None for w in windows)      # some layer sees every position
        self.max_seq_length = c.max_seq_length
        layer_slots = [w if w else c.max_seq_length for w in windows]   # S of each layer
        self.k = [xp.zeros((batch_size, S, c.num_kv_heads, c.head_dim), dtype=model.dtype)
                  for S in layer_slots]
        self.v = [xp.zeros_like(k) for k in self.k]
        self.slots = min(layer_slots)
        self.slot_pos = xp.full(self.slots, -1)                 # (S,) position stored in each slot
        self.next_pos = 0                                        # position of the next token

    def check_room(self, n_new):
        if self.full_layers and self.next_pos + n_new > self.max_seq_length:
            raise ValueError(f"{self.next_pos + n_new} tokens exceed max_seq_length="
                             f"{self.max_seq_length} (a layer without sliding window cannot go further)")

    def held(self, buffer):
        """The cached positions' rows of a buffer (B, S, ...), oldest first, as views: slots
        0..next_pos-1 until the buffer is full, then the rolling order, slots next_pos % S ..
        S-1 followed by 0 .. next_pos % S - 1."""
        S = buffer.shape[1]
        if self.next_pos <= S:
            return [buffer[:, :self.next_pos]]
        start = self.next_pos % S
        return [buffer[:, start:], buffer[:, :start]]

    def extend(self, layer, k_new, v_new):
        """k_new/v_new (B, Tn, Hkv, D) of positions next_pos.. -> (keys, values) (B, S'+Tn, Hkv, D):
        the S' cached positions in order, then the new ones. Stores the new K/V in place (slot
        pos % S; of a chunk longer than S only the last S survive)."""
        xp = backend.xp()
        keys = xp.concatenate(self.held(self.k[layer]) + [k_new], axis=1)     # one copy
        values = xp.concatenate(self.held(self.v[layer]) + [v_new], axis=1)
        Tn, S = k_new.shape[1], self.k[layer].shape[1]
        keep = slice(max(0, Tn - S), Tn)
        slots = xp.arange(self.next_pos, self.next_pos + Tn)[keep] % S
        self.k[layer][:, slots] = k_new[:, keep]
        self.v[layer][:, slots] = v_new[:, keep]
        return keys, values

    def advance(self, n_new):
        """After every layer stored its K/V: record which positions sit in which slots."""
        xp = backend.xp()
        positions = xp.arange(self.next_pos, self.next_pos + n_new)[-self.slots:]
        self.slot_pos[positions % self.slots] = positions
        self.next_pos += n_new
