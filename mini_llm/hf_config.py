"""config.json <-> TransformerConfig: the Hugging Face families MiniLLM reads and writes.

One architecture, optional features (DESIGN.md "Growing the design"). Each family's config.json
switches some of them on:
    llama    plain RoPE, or Llama 3.x / linear scaled RoPE (rope_scaling / rope_parameters)
    mistral  + one sliding window for every layer
    qwen2    + a bias on q/k/v; the window only if use_sliding_window, and only on the layers
             that layer_types (or max_window_layers) mark "sliding_attention"
    qwen3    + RMSNorm on each head of q and k (no bias unless attention_bias); head_dim
             defaults to 128, not hidden_size // heads
Anything else is refused with one line naming the problem (CheckpointError).
"""
from mini_llm.model.config import ROPE_SCALING_KEYS, TransformerConfig, check_rope_scaling
from mini_llm.safetensors_file import CheckpointError

FORMAT_VERSION = 1          # "minillm_version" in config.json; bump when the layout changes
FAMILIES = ("qwen2", "qwen3", "llama", "mistral")
HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
              "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
QWEN3_HEAD_DIM = 128        # Qwen3Config's default when config.json omits head_dim


# ---------------------------------------------------------------------------------------------
# TransformerConfig -> config.json


def hf_family(config):
    """The family whose config.json expresses config's features: qwen3 for q/k norm, qwen2 for
    q/k/v bias, llama for scaled RoPE without a window, mistral otherwise (as always)."""
    if config.qk_norm and config.qkv_bias:
        raise CheckpointError("no Hugging Face family has q/k norm with a q/k/v bias but no o_proj "
                              "bias (Qwen3's attention_bias adds all four): cannot save this config")
    if config.qk_norm:
        return "qwen3"
    if config.qkv_bias:
        return "qwen2"
    if config.layer_windows is not None:
        raise CheckpointError("per-layer sliding windows (layer_windows) are saved only as qwen2 "
                              "or qwen3 (Mistral has one window for every layer)")
    return "llama" if config.rope_scaling and config.sliding_window is None else "mistral"


def _qwen_window_keys(config):
    """use_sliding_window, sliding_window, layer_types, max_window_layers for qwen2/qwen3.
    Qwen has one window size W; each layer either uses it or attends to everything."""
    windows = [config.layer_window(i) for i in range(config.num_layers)]
    sizes = {w for w in windows if w is not None}
    if len(sizes) > 1:
        raise CheckpointError(f"qwen2/qwen3 configs have one sliding_window; layers use {sorted(sizes)}")
    sliding = [w is not None for w in windows]
    first = sliding.index(True) if any(sliding) else config.num_layers
    return {"use_sliding_window": bool(sizes), "sliding_window": sizes.pop() if sizes else None,
            "max_window_layers": first if all(sliding[first:]) else config.num_layers,
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding]}


def config_to_hf(config, dtype_name="float32"):
    """A Hugging Face config dict for `config`, of the family hf_family picks (a plain model:
    MistralConfig, LLaMA when there is no window being the same network)."""
    family = hf_family(config)
    d = {
        "architectures": [HF_CLASSES[family]],
        "model_type": family,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_length,
        "sliding_window": config.sliding_window,
        "rope_theta": config.rope_theta,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": dtype_name,
        "attention_dropout": 0.0,
        "minillm_version": FORMAT_VERSION,
    }
    if family in ("qwen2", "qwen3"):
        d.update(_qwen_window_keys(config))
    if family == "qwen3":
        d["attention_bias"] = False
    if config.rope_scaling:
        d["rope_parameters"] = dict(config.rope_scaling, rope_theta=config.rope_theta)
    return d


# ---------------------------------------------------------------------------------------------
# config.json -> TransformerConfig


def _rope(d, source):
    """(rope_theta, rope_scaling or None) from either layout, as transformers reads them:
    transformers <= 4: top-level rope_theta + optional rope_scaling {"rope_type"|"type": ...};
    transformers 5: rope_parameters {"rope_type": ..., "rope_theta": ...}; rope_scaling wins."""
    key = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
    rope = d.get(key) or {}
    if not isinstance(rope, dict):
        raise CheckpointError(f"{source}: {key} must be an object, got {rope!r}")
    theta = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ROPE_SCALING_KEYS:
        raise CheckpointError(f"{source}: {key} of type {kind!r} is not supported "
                              f"(MiniLLM implements plain, linear and llama3 RoPE)")
    if rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)) != 1.0:
        raise CheckpointError(f"{source}: partial_rotary_factor is not supported (MiniLLM turns "
                              f"every dimension of a head)")
    # transformers falls back to max_position_embeddings for llama3's original context
    rope = dict(rope, original_max_position_embeddings=rope.get(
        "original_max_position_embeddings", d.get("max_position_embeddings")))
    scaling = {"rope_type": kind, **{k: rope.get(k) for k in ROPE_SCALING_KEYS[kind]}}
    try:
        check_rope_scaling(scaling, name=key)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return theta, scaling


def _windows(d, model_type, source):
    """(sliding_window, layer_windows) as transformers applies them. mistral: one window for
    every layer. qwen2/qwen3: none unless use_sliding_window (the sliding_window number
    published configs carry is then ignored); else only the layers that layer_types marks
    "sliding_attention", by default those i >= max_window_layers. llama: none."""
    if model_type == "mistral":
        return d.get("sliding_window"), None
    if model_type == "llama" or not d.get("use_sliding_window", False) or d.get("sliding_window") is None:
        return None, None
    L, W = d["num_hidden_layers"], d["sliding_window"]
    types = d.get("layer_types")
    if types is None:
        first = d.get("max_window_layers", 28)
        if isinstance(first, bool) or not isinstance(first, int):
            raise CheckpointError(f"{source}: max_window_layers must be an integer, got {first!r}")
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(L)]
    if (not isinstance(types, list) or len(types) != L
            or not set(types) <= {"sliding_attention", "full_attention"}):
        raise CheckpointError(f"{source}: layer_types must list 'sliding_attention' or "
                              f"'full_attention' for each of the {L} layers, got {types!r}")
    windows = tuple(W if t == "sliding_attention" else None for t in types)
    if len(set(windows)) == 1:                       # every layer alike: one sliding_window
        return windows[0], None
    return None, windows


def _check_family_flags(d, model_type, source):
    """The flags of each family that would need parts MiniLLM lacks."""
    if model_type == "qwen3" and d.get("attention_bias"):
        raise CheckpointError(f"{source}: attention_bias=true is not supported for qwen3 "
                              f"(it adds an o_proj bias; MiniLLM has q/k/v bias only, as Qwen2)")
    flags = ("mlp_bias", "attention_bias") if model_type in ("llama", "mistral") else ("mlp_bias",)
    for flag in flags:
        if d.get(flag):
            raise CheckpointError(f"{source}: {flag}=true is not supported "
                                  f"(MiniLLM's projections have no bias)")
    if d.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {d['hidden_act']!r} is not supported "
                              f"(MiniLLM's MLP is SwiGLU with silu)")
    if not isinstance(d.get("use_sliding_window", False), bool):
        raise CheckpointError(f"{source}: use_sliding_window must be true or false, "
                              f"got {d['use_sliding_window']!r}")


# config.json fields and what each must hold: (key, kind, may be null)
INT_FIELDS = [("vocab_size", False), ("hidden_size", False), ("intermediate_size", False),
              ("num_hidden_layers", False), ("num_attention_heads", False),
              ("num_key_value_heads", True), ("head_dim", True), ("max_position_embeddings", False),
              ("sliding_window", True)]
FLOAT_FIELDS = ["rope_theta", "rms_norm_eps"]


def _check_field_types(d, source):
    """Sizes are positive integers (not strings, floats or booleans), rope_theta and
    rms_norm_eps positive numbers, tie_word_embeddings a boolean: one line naming the field."""
    for key, nullable in INT_FIELDS:
        if key not in d or (nullable and d[key] is None):
            continue
        value = d[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{source}: {key} must be a positive integer"
                                  f"{' or null' if nullable else ''}, got {value!r}")
    for key in FLOAT_FIELDS:
        value = d.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise CheckpointError(f"{source}: {key} must be a positive number, got {value!r}")
    if not isinstance(d.get("tie_word_embeddings", False), bool):
        raise CheckpointError(f"{source}: tie_word_embeddings must be true or false, "
                              f"got {d['tie_word_embeddings']!r}")


def config_from_hf(d, source="config.json"):
    """TransformerConfig from a config.json dict: ours, or a published llama / mistral / qwen2 /
    qwen3 config in the transformers 4 or 5 layout. Raises CheckpointError (one line) for what
    MiniLLM cannot run."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(d).__name__}")
    model_type = d.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(f"{source}: model_type {model_type!r} is not supported "
                              f"(MiniLLM reads {', '.join(FAMILIES[:-1])} and {FAMILIES[-1]})")
    version = d.get("minillm_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{source}: minillm_version {version!r} is newer than this "
                              f"MiniLLM reads ({FORMAT_VERSION}); update MiniLLM")
    _check_family_flags(d, model_type, source)
    required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads"]
    missing = [k for k in required if k not in d]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r}")
    _check_field_types(d, source)
    heads = d["num_attention_heads"]
    rope_theta, rope_scaling = _rope(d, source)
    sliding_window, layer_windows = _windows(d, model_type, source)
    head_dim = d.get("head_dim", QWEN3_HEAD_DIM if model_type == "qwen3" else None)
    config = TransformerConfig(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        intermediate_size=d["intermediate_size"],
        max_seq_length=d.get("max_position_embeddings", 2048),
        sliding_window=sliding_window,
        rope_theta=rope_theta,
        norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        head_dim=head_dim,                    # None: hidden_size // heads, as transformers does
        rope_scaling=rope_scaling,
        qkv_bias=model_type == "qwen2",       # Qwen2Attention: bias=True on q/k/v, not o
        qk_norm=model_type == "qwen3",
        layer_windows=layer_windows,
    )
    try:
        return config.validate()
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
