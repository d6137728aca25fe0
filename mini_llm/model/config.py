"""TransformerConfig and the parameter shapes it implies: the model's contract as data.

Nothing here computes; transformer.py builds the model from it, checkpoint.py reads and writes
it as a Hugging Face config.json. Names follow Hugging Face (`model.layers.{i}.self_attn...`),
weights [out, in].
"""
from dataclasses import asdict, dataclass
from typing import Optional

# RoPE scalings MiniLLM implements (attention.rope_inv_freq, docs/rope_scaling.md) and the keys
# each needs besides rope_type, as Hugging Face's rope_parameters / rope_scaling name them
ROPE_SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def check_window(window, name="sliding window"):
    """One rule for a sliding window everywhere (config, reference attention, kernels):
    None (full causal attention) or an integer >= 1."""
    if window is not None and (isinstance(window, bool) or int(window) != window or window < 1):
        raise ValueError(f"{name} must be None or an integer >= 1, got {window!r}")


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
    head_dim: Optional[int] = None    # D: width of one head; None -> hidden_size // num_heads
    # optional features of the teacher families (all off: plain LLaMA/Mistral)
    rope_scaling: Optional[dict] = None    # Llama 3.x {"rope_type": "llama3", "factor": 8.0, ...} or
                                           # {"rope_type": "linear", "factor": 4.0}; None = plain RoPE
    qkv_bias: bool = False            # Qwen2: q/k/v projections add a bias (o_proj has none)
    qk_norm: bool = False             # Qwen3: RMSNorm over D on each head of q and k, before RoPE
    layer_windows: Optional[tuple] = None  # Qwen2/3 per-layer W (None entries: full attention),
                                           # set only when layers differ; sliding_window is then None

    def __post_init__(self):
        # config.json may omit head_dim (transformers then uses hidden_size // num_heads); resolve
        # it once here so that the rest of the code reads one name. dataclasses.replace that
        # changes hidden_size or num_heads must pass head_dim=None to have it resolved again.
        if self.head_dim is None and self.num_heads > 0 and self.hidden_size % self.num_heads == 0:
            self.head_dim = self.hidden_size // self.num_heads
        if self.layer_windows is not None:          # a JSON list reads back as the same tuple
            self.layer_windows = tuple(self.layer_windows)
        if self.rope_scaling is not None:
            self.rope_scaling = dict(self.rope_scaling)

    def layer_window(self, i):
        """The sliding window of layer i: its entry of layer_windows, else sliding_window."""
        return self.sliding_window if self.layer_windows is None else self.layer_windows[i]

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
        if self.head_dim % 2:
            raise ValueError(f"config: head_dim={self.head_dim} must be even for RoPE")
        check_window(self.sliding_window, name="config: sliding_window")
        if self.layer_windows is not None:
            if len(self.layer_windows) != self.num_layers or self.sliding_window is not None:
                raise ValueError(f"config: layer_windows needs one entry per layer "
                                 f"({self.num_layers}) and sliding_window=None, got "
                                 f"{self.layer_windows!r} with sliding_window={self.sliding_window!r}")
            for i, w in enumerate(self.layer_windows):
                check_window(w, name=f"config: layer_windows[{i}]")
        check_rope_scaling(self.rope_scaling)
        return self

    def to_dict(self):
        return asdict(self)


def check_rope_scaling(scaling, name="config: rope_scaling"):
    """None, or a dict with a rope_type MiniLLM implements and its keys, each a positive number
    (llama3 also needs high_freq_factor > low_freq_factor: it divides by their difference)."""
    if scaling is None:
        return
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALING_KEYS:
        raise ValueError(f"{name}: rope_type {kind!r} is not supported (MiniLLM implements "
                         f"plain, {' and '.join(ROPE_SCALING_KEYS)} RoPE)")
    for key in ROPE_SCALING_KEYS[kind]:
        value = scaling.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}: {kind} needs {key} as a positive number, got {value!r}")
    if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ValueError(f"{name}: llama3 needs high_freq_factor > low_freq_factor, got "
                         f"{scaling['high_freq_factor']} and {scaling['low_freq_factor']}")


def layer_param_shapes(config, i):
    """Name -> shape of the parameters of decoder block i, Hugging Face names, [out, in]."""
    C, F = config.hidden_size, config.intermediate_size
    q_out, kv_out = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    p = f"model.layers.{i}."
    shapes = {
        p + "input_layernorm.weight": (C,),
        p + "self_attn.q_proj.weight": (q_out, C),
        p + "self_attn.k_proj.weight": (kv_out, C),
        p + "self_attn.v_proj.weight": (kv_out, C),
    }
    if config.qkv_bias:                                       # Qwen2
        shapes.update({p + "self_attn.q_proj.bias": (q_out,), p + "self_attn.k_proj.bias": (kv_out,),
                       p + "self_attn.v_proj.bias": (kv_out,)})
    if config.qk_norm:                                        # Qwen3: one (D,) weight for all heads
        shapes.update({p + "self_attn.q_norm.weight": (config.head_dim,),
                       p + "self_attn.k_norm.weight": (config.head_dim,)})
    shapes.update({
        p + "self_attn.o_proj.weight": (C, q_out),
        p + "post_attention_layernorm.weight": (C,),
        p + "mlp.gate_proj.weight": (F, C),
        p + "mlp.up_proj.weight": (F, C),
        p + "mlp.down_proj.weight": (C, F),
    })
    return shapes


def param_shapes(config):
    """Every parameter's name and shape; no lm_head.weight when the head is tied."""
    shapes = {"model.embed_tokens.weight": (config.vocab_size, config.hidden_size)}
    for i in range(config.num_layers):
        shapes.update(layer_param_shapes(config, i))
    shapes["model.norm.weight"] = (config.hidden_size,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, config.hidden_size)
    return shapes
