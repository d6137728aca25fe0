"""MiniTransformer: the Python interface of the model (a Mistral/LLaMA decoder; the Qwen2/Qwen3
and Llama 3 features are switches in TransformerConfig).

The model object only holds state: `params` and `grads` (dicts keyed by Hugging Face names),
and what the last forward kept for backward. The math lives in free functions
(layers.py, attention.py). `forward` is the spine; `backward` is its mirror.

    x = embed(ids)                                   hidden_states[0]
    for each layer i:
        x = x + attention(rmsnorm(x))                RoPE, GQA, optional sliding window
                                                     (optional: q/k/v bias, q/k norm)
        x = x + swiglu(rmsnorm(x))                   hidden_states[i + 1]
    logits = rmsnorm(x) @ lm_head.T                  (lm_head = embed when tied)

The rows of a batch never meet between the embedding and the logits, so with several threads
forward cuts them into one slice per thread and runs each slice's blocks and head on its own
thread (row_slices); backward mirrors that, each slice adding into its own gradients, which
are summed at the end (slice_grads). On one thread (or rows that do not split evenly over
the threads) it is the plain loop above.
"""
import numpy as np

from mini_llm import backend, checkpoint, threads
from mini_llm.backend import array_module
from mini_llm.model import attention, layers, row_kernels
# TransformerConfig lives in config.py (checkpoint.py needs it without the model); it is
# imported here too because `from mini_llm.model.transformer import TransformerConfig` is
# how a model is built: config, then MiniTransformer(config)
from mini_llm.model.config import TransformerConfig, param_shapes  # noqa: F401


def init_params(config, seed, dtype):
    """Norm weights 1, biases 0; other weights N(0, 0.02), the two projections that write into the
    residual stream (o_proj, down_proj) scaled by 1/sqrt(2 * num_layers) as in GPT-2."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("norm.weight"):
            w = np.ones(shape)
        elif name.endswith(".bias"):                     # Qwen2 q/k/v bias: starts at 0
            w = np.zeros(shape)
        else:
            std = 0.02
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                std /= np.sqrt(2 * config.num_layers)
            w = rng.normal(0.0, std, size=shape)
        params[name] = backend.to_device(w.astype(dtype))
    return params


def join(arrays):
    """One array from the slices' rows, in order (no copy when there is one slice)."""
    return arrays[0] if len(arrays) == 1 else array_module(arrays[0]).concatenate(arrays)


class MiniTransformer:
    """params/grads: dicts name -> array (NumPy or CuPy). forward(ids) -> logits (B, T, V);
    backward(dlogits, hidden_grads) accumulates into grads; hidden_states after a forward."""

    def __init__(self, config, seed=0, dtype=np.float32, params=None):
        self.config = config.validate()
        self.dtype = np.dtype(dtype)
        self.params = params if params is not None else init_params(config, seed, self.dtype)
        self.grads = {name: backend.xp().zeros_like(p) for name, p in self.params.items()}
        self.hidden_states = []       # after forward: [embedding output, layer 0 output, ...]
        self.use_kernel = None        # attention path: None = the fastest (attention.attention_path)
        self._cache = None
        self._slice_grads = []      # the 2nd, 3rd, .. slice of rows' own gradients (slice_grads)
        self._rope_table = None

    # ----- helpers -----------------------------------------------------------------------

    def num_parameters(self):
        return int(sum(p.size for p in self.params.values()))

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    def head_weight_name(self):
        return "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"

    def rope(self, T, start=0):
        """cos, sin (T, D) for positions start..start+T-1, from a table computed once for
        max_seq_length (a rolling KV cache goes further: those are computed when asked)."""
        c = self.config
        xp = array_module(self.params["model.norm.weight"])
        if start + T > c.max_seq_length:
            return attention.rope_cos_sin(T, c.head_dim, c.rope_theta, self.dtype, start=start,
                                          xp=xp, scaling=c.rope_scaling)
        if self._rope_table is None:
            self._rope_table = attention.rope_cos_sin(c.max_seq_length, c.head_dim, c.rope_theta,
                                                      self.dtype, xp=xp, scaling=c.rope_scaling)
        cos, sin = self._rope_table
        return cos[start:start + T], sin[start:start + T]

    def check_ids(self, ids):
        """One clear error for ids the model cannot take."""
        c = self.config
        if ids.ndim != 2:
            raise ValueError(f"ids must be 2-D (batch, time), got shape {tuple(ids.shape)}")
        if ids.shape[1] > c.max_seq_length:
            raise ValueError(f"sequence of {ids.shape[1]} tokens is longer than "
                             f"max_seq_length={c.max_seq_length}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= c.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary (size {c.vocab_size})")

    # ----- forward / backward ------------------------------------------------------------

    def forward(self, ids, keep_cache=True, kv_cache=None):
        """ids (B, T) int -> logits (B, T, V). keep_cache=False (inference, teachers) drops
        what backward would need as soon as each layer is done. kv_cache (generation,
        kv_cache.py): ids are the tokens at positions kv_cache.next_pos.., attending to the
        cached ones before them; the cache takes their keys and values."""
        p, c = self.params, self.config
        ids = backend.to_device(ids)
        self.check_ids(ids)
        start = 0
        if kv_cache is not None:
            kv_cache.check_room(ids.shape[1])
            start = kv_cache.next_pos
        cos, sin = self.rope(ids.shape[1], start)
        x, embed_cache = layers.embedding_forward(ids, p["model.embed_tokens.weight"])   # (B, T, C)
        slices = self.row_slices(x, kv_cache)
        logits = None if len(slices) == 1 else array_module(x).empty((*ids.shape, c.vocab_size), self.dtype)
        parts = threads.in_parallel(lambda lo, hi: self.rows_forward(
            x[lo:hi], cos, sin, kv_cache, keep_cache, None if logits is None else logits[lo:hi]), slices)
        if kv_cache is not None:
            kv_cache.advance(ids.shape[1])
        logits = parts[0][0] if logits is None else logits                                # (B, T, V)
        self.hidden_states = [x] + [join(outputs) for outputs in zip(*[hidden for _, hidden, _ in parts])]
        self._cache = (embed_cache, {bounds: cache for bounds, (_, _, cache) in zip(slices, parts)}
                       ) if keep_cache else None
        return logits

    def row_slices(self, x, kv_cache=None):
        """[(lo, hi), ..]: the batch's rows cut into one slice per thread of the policy, each
        run through rows_forward / rows_backward on its own thread (threads.in_parallel, every
        pool at one thread inside). Splitting the rows once, rather than every matmul and kernel
        over the pools, keeps each thread on its own work for the whole pass: no wake-up and no
        wait for the slowest thread after every operation. Only when every thread gets the
        same number of rows (B a multiple of the thread count: 8 rows on 16 threads would leave
        half the cores idle, 12 on 8 would wait for the 2-row slices); else one slice, whose
        matmuls and kernels use every thread. One slice too on CuPy, from a KV cache
        (generation), and where Numba cannot take kernel launches from several threads.
        The memory it costs: each slice after the first keeps its own gradients (every
        parameter but an untied embedding), so (threads - 1) more copies of them."""
        B = x.shape[0]
        if (B % threads.count() or kv_cache is not None or array_module(x) is not np or
                not threads.concurrent_kernels_allowed()):
            return [(0, B)]
        return threads.slices(B)

    def rows_forward(self, x, cos, sin, kv_cache=None, keep_cache=True, logits=None):
        """Every decoder block, the final norm and the head on x (b, T, C), rows of the batch.
        Returns logits (b, T, V) (written into `logits` when given), [each layer's output
        (b, T, C)], and the cache for backward (each block's None where keep_cache is False)."""
        p, c = self.params, self.config
        hidden, block_caches = [], []
        for i in range(c.num_layers):
            x, block_cache = self.block_forward(i, x, cos, sin, kv_cache)
            hidden.append(x)
            block_caches.append(block_cache if keep_cache else None)
        x, norm_cache = layers.rmsnorm_forward(x, p["model.norm.weight"], c.norm_eps)
        logits, head_cache = layers.linear_forward(x, p[self.head_weight_name()], out=logits)  # (b, T, V)
        return logits, hidden, (block_caches, norm_cache, head_cache)

    def block_forward(self, i, x, cos, sin, kv_cache=None):
        """One decoder block: pre-norm attention then pre-norm SwiGLU, each added to x. The same
        block serves training (backward from its cache) and generation (with a KV cache)."""
        p, c, pre = self.params, self.config, f"model.layers.{i}."
        att = pre + "self_attn."
        bias = tuple(p[att + n + "_proj.bias"] for n in "qkv") if c.qkv_bias else None    # Qwen2
        qk_norm = (p[att + "q_norm.weight"], p[att + "k_norm.weight"], c.norm_eps) if c.qk_norm else None
        h, norm1 = layers.rmsnorm_forward(x, p[pre + "input_layernorm.weight"], c.norm_eps)
        a, attn = attention.self_attention_forward(
            h, p[att + "q_proj.weight"], p[att + "k_proj.weight"], p[att + "v_proj.weight"],
            p[att + "o_proj.weight"], cos, sin, c.num_heads, c.num_kv_heads, c.layer_window(i),
            use_kernel=self.use_kernel, kv_cache=kv_cache, layer=i, bias=bias, qk_norm=qk_norm)
        x = x + a
        h, norm2 = layers.rmsnorm_forward(x, p[pre + "post_attention_layernorm.weight"], c.norm_eps)
        f, mlp = layers.swiglu_forward(h, p[pre + "mlp.gate_proj.weight"],
                                       p[pre + "mlp.up_proj.weight"], p[pre + "mlp.down_proj.weight"])
        return x + f, (norm1, attn, norm2, mlp)

    def backward(self, dlogits, hidden_grads=None):
        """Accumulate (+=) d(loss)/d(param) into self.grads. hidden_grads: {index: (B, T, C)}
        adds an outside gradient at hidden_states[index] (0 = embedding output), which is how
        distillation losses on hidden states reach the model. Reverse order of forward."""
        if self._cache is None:
            raise RuntimeError("backward needs a forward(ids, keep_cache=True) first")
        embed_cache, caches = self._cache
        hidden_grads = hidden_grads or {}
        slices = list(caches)                        # [(lo, hi), ..] as forward cut the rows
        grads = dict(zip(slices, [self.grads] + [self.slice_grads(k) for k in range(1, len(slices))]))
        dxs = threads.in_parallel(lambda lo, hi: self.rows_backward(
            dlogits[lo:hi], caches[lo, hi], {k: g[lo:hi] for k, g in hidden_grads.items()},
            grads[lo, hi]), slices)
        self.add_slice_grads(list(grads.values())[1:])
        dx = join(dxs)                                                                  # (B, T, C)
        if 0 in hidden_grads:
            dx = dx + hidden_grads[0]
        self.accumulate("model.embed_tokens.weight", layers.embedding_backward(dx, embed_cache))

    def rows_backward(self, dlogits, cache, hidden_grads, grads):
        """Mirror of rows_forward on rows dlogits (b, T, V): the head, the final norm, then the
        blocks in reverse, each adding hidden_grads[i + 1] at its output first. Parameter
        gradients go into `grads`. Returns dx (b, T, C) at the embedding output."""
        block_caches, norm_cache, head_cache = cache
        dx, dhead = layers.linear_backward(dlogits, head_cache)
        self.accumulate(self.head_weight_name(), dhead, grads)
        dx, dnorm = layers.rmsnorm_backward(dx, norm_cache)
        self.accumulate("model.norm.weight", dnorm, grads)
        for i in reversed(range(self.config.num_layers)):
            if i + 1 in hidden_grads:
                dx = dx + hidden_grads[i + 1]
            dx = self.block_backward(i, dx, block_caches[i], grads)
        return dx

    def embedding_only(self):
        """The parameter only the embedding's backward (after the slices) writes to, or None
        when the head shares it (tied)."""
        return None if self.config.tie_word_embeddings else "model.embed_tokens.weight"

    def slice_grads(self, k):
        """The gradients of the k-th slice of rows, k >= 1 (the first slice's go straight into
        self.grads): kept zeroed between backwards, so the next one can add into them."""
        while len(self._slice_grads) < k:
            xp = array_module(self.params["model.norm.weight"])
            self._slice_grads.append({name: xp.zeros_like(self.params[name]) for name in self.params
                                      if name != self.embedding_only()})
        return self._slice_grads[k - 1]

    def add_slice_grads(self, slice_grads):
        """self.grads += each slice's own gradients, which are then zeroed for next time."""
        for grads in slice_grads:
            for name, g in grads.items():
                row_kernels.add_into(self.grads[name], g)
                g[...] = 0

    def accumulate(self, name, d, grads=None):
        """grads[name] += d (row_kernels.add_into: in place, on every core); grads: self.grads
        unless given (a slice's own, slice_grads)."""
        row_kernels.add_into((self.grads if grads is None else grads)[name], d)

    def block_backward(self, i, dx, cache, grads=None):
        """Mirror of block_forward. The residual x + f(x) passes dx straight through and adds
        f's input gradient, so each half is `dx += d(sublayer input)` (dx is this backward's
        own array: adding in place is safe)."""
        norm1, attn, norm2, mlp = cache
        pre = f"model.layers.{i}."
        dh, dw_gate, dw_up, dw_down = layers.swiglu_backward(dx, mlp)
        self.accumulate(pre + "mlp.gate_proj.weight", dw_gate, grads)
        self.accumulate(pre + "mlp.up_proj.weight", dw_up, grads)
        self.accumulate(pre + "mlp.down_proj.weight", dw_down, grads)
        dx_norm, dw = layers.rmsnorm_backward(dh, norm2)
        self.accumulate(pre + "post_attention_layernorm.weight", dw, grads)
        dx = row_kernels.add_into(dx, dx_norm)
        dh, dwq, dwk, dwv, dwo, dextra = attention.self_attention_backward(dx, attn)
        self.accumulate(pre + "self_attn.q_proj.weight", dwq, grads)
        self.accumulate(pre + "self_attn.k_proj.weight", dwk, grads)
        self.accumulate(pre + "self_attn.v_proj.weight", dwv, grads)
        self.accumulate(pre + "self_attn.o_proj.weight", dwo, grads)
        for name, d in dextra.items():             # Qwen2 biases, Qwen3 q/k norms
            self.accumulate(pre + "self_attn." + name, d, grads)
        dx_norm, dw = layers.rmsnorm_backward(dh, norm1)
        self.accumulate(pre + "input_layernorm.weight", dw, grads)
        return row_kernels.add_into(dx, dx_norm)

    # ----- checkpoints -------------------------------------------------------------------

    def save_pretrained(self, directory):
        """config.json (Hugging Face keys of the family its features need: mistral for a plain
        model) + model.safetensors, written atomically."""
        checkpoint.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory, dtype=np.float32):
        """Load ours, or a Hugging Face LLaMA / Mistral / Qwen2 / Qwen3 folder (fp32/fp16/bf16,
        sharded or not)."""
        config, params = checkpoint.load_pretrained(directory, dtype=dtype)
        return cls(config, dtype=dtype, params=params)
