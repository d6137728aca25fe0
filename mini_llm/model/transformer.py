"""MiniTransformer: the Python interface of the model (a Mistral/LLaMA decoder).

The model object only holds state: `params` and `grads` (dicts keyed by Hugging Face names),
and what the last forward kept for backward. The math lives in free functions
(layers.py, attention.py). `forward` is the spine; `backward` is its mirror.

    x = embed(ids)                                   hidden_states[0]
    for each layer i:
        x = x + attention(rmsnorm(x))                RoPE, GQA, optional sliding window
        x = x + swiglu(rmsnorm(x))                   hidden_states[i + 1]
    logits = rmsnorm(x) @ lm_head.T                  (lm_head = embed when tied)
"""
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from mini_llm import backend
from mini_llm.backend import array_module
from mini_llm.model import attention, layers


@dataclass
class TransformerConfig:
    vocab_size: int = 30000           # tokens in the vocabulary; the tokenizer's real size
    hidden_size: int = 384            # C: width of the residual stream
    num_layers: int = 6               # decoder blocks
    num_heads: int = 6                # H: query heads; hidden_size % num_heads == 0 unless head_dim is set
    num_kv_heads: int = 6             # Hkv: key/value heads (GQA); num_heads % num_kv_heads == 0
    intermediate_size: int = 1536     # F: SwiGLU width, typically ~2.7-4x hidden_size
    max_seq_length: int = 512         # longest sequence the model accepts (RoPE table size)
    sliding_window: Optional[int] = None   # W: token t sees t-W+1..t (Mistral); None = full causal
    rope_theta: float = 10000.0       # RoPE base; LLaMA-3 uses 500000
    norm_eps: float = 1e-5            # RMSNorm epsilon (Mistral 1e-5, LLaMA-2 1e-5, LLaMA-3 1e-5)
    tie_word_embeddings: bool = False # reuse the embedding as the LM head (saves V*C parameters)
    head_dim: Optional[int] = None    # D: None means hidden_size // num_heads

    @property
    def head_size(self):
        """D, the width of one attention head."""
        return self.head_dim or self.hidden_size // self.num_heads

    def validate(self):
        """Raise one clear ValueError for an impossible configuration."""
        positive = ["vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                    "intermediate_size", "max_seq_length"]
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"config: {name} must be positive, got {getattr(self, name)}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"config: num_heads={self.num_heads} does not divide "
                             f"hidden_size={self.hidden_size}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"config: num_kv_heads={self.num_kv_heads} does not divide "
                             f"num_heads={self.num_heads}")
        if self.head_size % 2:
            raise ValueError(f"config: head_dim={self.head_size} must be even for RoPE")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"config: sliding_window must be >= 1 or None, got {self.sliding_window}")
        return self

    def to_dict(self):
        return asdict(self)


def layer_param_shapes(config, i):
    """Name -> shape of the parameters of decoder block i, Hugging Face names, [out, in]."""
    C, F = config.hidden_size, config.intermediate_size
    q_out, kv_out = config.num_heads * config.head_size, config.num_kv_heads * config.head_size
    p = f"model.layers.{i}."
    return {
        p + "input_layernorm.weight": (C,),
        p + "self_attn.q_proj.weight": (q_out, C),
        p + "self_attn.k_proj.weight": (kv_out, C),
        p + "self_attn.v_proj.weight": (kv_out, C),
        p + "self_attn.o_proj.weight": (C, q_out),
        p + "post_attention_layernorm.weight": (C,),
        p + "mlp.gate_proj.weight": (F, C),
        p + "mlp.up_proj.weight": (F, C),
        p + "mlp.down_proj.weight": (C, F),
    }


def param_shapes(config):
    """Every parameter's name and shape; no lm_head.weight when the head is tied."""
    shapes = {"model.embed_tokens.weight": (config.vocab_size, config.hidden_size)}
    for i in range(config.num_layers):
        shapes.update(layer_param_shapes(config, i))
    shapes["model.norm.weight"] = (config.hidden_size,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, config.hidden_size)
    return shapes


def init_params(config, seed, dtype):
    """Norm weights 1; other weights N(0, 0.02), the two projections that write into the
    residual stream (o_proj, down_proj) scaled by 1/sqrt(2 * num_layers) as in GPT-2."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("norm.weight"):
            w = np.ones(shape)
        else:
            std = 0.02
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                std /= np.sqrt(2 * config.num_layers)
            w = rng.normal(0.0, std, size=shape)
        params[name] = backend.to_device(w.astype(dtype))
    return params


class MiniTransformer:
    """params/grads: dicts name -> array (NumPy or CuPy). forward(ids) -> logits (B, T, V);
    backward(dlogits, hidden_grads) accumulates into grads; hidden_states after a forward."""

    def __init__(self, config, seed=0, dtype=np.float32, params=None):
        self.config = config.validate()
        self.dtype = np.dtype(dtype)
        self.params = params if params is not None else init_params(config, seed, self.dtype)
        self.grads = {name: backend.xp().zeros_like(p) for name, p in self.params.items()}
        self.hidden_states = []       # after forward: [embedding output, layer 0 output, ...]
        self.use_kernel = None        # attention path: None = Numba kernel on CPU with a window
        self._cache = None
        self._rope_table = None

    # ----- helpers -----------------------------------------------------------------------

    def num_parameters(self):
        return int(sum(p.size for p in self.params.values()))

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    def head_weight_name(self):
        return "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"

    def rope(self, T):
        """cos, sin (T, D) for positions 0..T-1, computed once for max_seq_length."""
        if self._rope_table is None:
            c = self.config
            xp = array_module(self.params["model.norm.weight"])
            self._rope_table = attention.rope_cos_sin(c.max_seq_length, c.head_size, c.rope_theta,
                                                      self.dtype, xp=xp)
        cos, sin = self._rope_table
        return cos[:T], sin[:T]

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

    def forward(self, ids, keep_cache=True):
        """ids (B, T) int -> logits (B, T, V). keep_cache=False (inference, teachers) drops
        what backward would need as soon as each layer is done."""
        p, c = self.params, self.config
        ids = backend.to_device(ids)
        self.check_ids(ids)
        cos, sin = self.rope(ids.shape[1])
        caches = []
        x, embed_cache = layers.embedding_forward(ids, p["model.embed_tokens.weight"])   # (B, T, C)
        self.hidden_states = [x]
        for i in range(c.num_layers):
            x, block_cache = self.block_forward(i, x, cos, sin)
            self.hidden_states.append(x)
            caches.append(block_cache if keep_cache else None)
        x, norm_cache = layers.rmsnorm_forward(x, p["model.norm.weight"], c.norm_eps)
        logits, head_cache = layers.linear_forward(x, p[self.head_weight_name()])     # (B, T, V)
        self._cache = (embed_cache, caches, norm_cache, head_cache) if keep_cache else None
        return logits

    def block_forward(self, i, x, cos, sin):
        """One decoder block: pre-norm attention then pre-norm SwiGLU, each added to x."""
        p, c, pre = self.params, self.config, f"model.layers.{i}."
        h, norm1 = layers.rmsnorm_forward(x, p[pre + "input_layernorm.weight"], c.norm_eps)
        a, attn = attention.self_attention_forward(
            h, p[pre + "self_attn.q_proj.weight"], p[pre + "self_attn.k_proj.weight"],
            p[pre + "self_attn.v_proj.weight"], p[pre + "self_attn.o_proj.weight"],
            cos, sin, c.num_heads, c.num_kv_heads, c.sliding_window, use_kernel=self.use_kernel)
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
        embed_cache, caches, norm_cache, head_cache = self._cache
        hidden_grads = hidden_grads or {}
        g = self.grads
        dx, dhead = layers.linear_backward(dlogits, head_cache)
        g[self.head_weight_name()] += dhead
        dx, dnorm = layers.rmsnorm_backward(dx, norm_cache)
        g["model.norm.weight"] += dnorm
        for i in reversed(range(self.config.num_layers)):
            if i + 1 in hidden_grads:
                dx = dx + hidden_grads[i + 1]
            dx = self.block_backward(i, dx, caches[i])
        if 0 in hidden_grads:
            dx = dx + hidden_grads[0]
        g["model.embed_tokens.weight"] += layers.embedding_backward(dx, embed_cache)

    def block_backward(self, i, dx, cache):
        """Mirror of block_forward. The residual x + f(x) passes dx straight through and adds
        f's input gradient, so each half is `dx = dx + d(sublayer input)`."""
        norm1, attn, norm2, mlp = cache
        g, pre = self.grads, f"model.layers.{i}."
        dh, dw_gate, dw_up, dw_down = layers.swiglu_backward(dx, mlp)
        g[pre + "mlp.gate_proj.weight"] += dw_gate
        g[pre + "mlp.up_proj.weight"] += dw_up
        g[pre + "mlp.down_proj.weight"] += dw_down
        dx_norm, dw = layers.rmsnorm_backward(dh, norm2)
        g[pre + "post_attention_layernorm.weight"] += dw
        dx = dx + dx_norm
        dh, dwq, dwk, dwv, dwo = attention.self_attention_backward(dx, attn)
        g[pre + "self_attn.q_proj.weight"] += dwq
        g[pre + "self_attn.k_proj.weight"] += dwk
        g[pre + "self_attn.v_proj.weight"] += dwv
        g[pre + "self_attn.o_proj.weight"] += dwo
        dx_norm, dw = layers.rmsnorm_backward(dh, norm1)
        g[pre + "input_layernorm.weight"] += dw
        return dx + dx_norm

    # ----- checkpoints -------------------------------------------------------------------

    def save_pretrained(self, directory):
        """config.json (Hugging Face MistralConfig keys) + model.safetensors, written atomically."""
        from mini_llm import checkpoint
        checkpoint.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory, dtype=np.float32):
        """Load ours, or a Hugging Face LLaMA / Mistral folder (fp32/fp16/bf16, sharded or not)."""
        from mini_llm import checkpoint
        config, params = checkpoint.load_pretrained(directory, dtype=dtype)
        return cls(config, dtype=dtype, params=params)
