"""The teacher families beyond LLaMA/Mistral, against Hugging Face `transformers`.

The same pattern as tests/test_hf_equivalence.py: a tiny random float64 model in
`transformers` (eager attention, weights N(0, 0.2), norms 1 + N(0, 0.1)), saved with
`save_pretrained`, loaded with `MiniTransformer.from_pretrained`, compared on logits, every
hidden state and the gradient of every parameter of sum(logits * R). Each family is a set of
switches in TransformerConfig:
    Llama 3.x   rope_scaling llama3 / linear (T beyond original_max_position_embeddings)
    Qwen2       q/k/v bias; sliding window only with use_sliding_window, only on some layers
    Qwen3       per-head q/k RMSNorm, explicit head_dim, GQA
And back: what MiniLLM saves loads in `transformers` as the same family with the same logits.
"""
import dataclasses
import json

import numpy as np
import pytest

from mini_llm import checkpoint
from mini_llm.gradcheck import rel_error
from mini_llm.model import attention, layers
from mini_llm.model.kv_cache import KVCache
from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from mini_llm.safetensors_file import CheckpointError
from tests.errors import one_line_error

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V, C, L, F, T = 64, 32, 2, 48, 12
TOL = 1e-6
# llama3: with D = 8 and theta 5000 the four wavelengths 2π/f are 6.3, 53, 444, 3737; with
# original context 8, high 0.5 and low 0.125 the limits are 8/0.5 = 16 and 8/0.125 = 64, so one
# pair is kept, one mixed and two divided by the factor: all three cases of the formula
LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 0.125, "high_freq_factor": 0.5,
          "original_max_position_embeddings": 8, "rope_theta": 5000.0}
LINEAR = {"rope_type": "linear", "factor": 4.0, "rope_theta": 5000.0}

CASES = {   # name: (family, config overrides, how config.json is edited after saving)
    "llama3_rope": ("llama", dict(num_attention_heads=4, num_key_value_heads=2,
                                  rope_parameters=dict(LLAMA3)), None),
    "linear_rope": ("llama", dict(num_attention_heads=4, num_key_value_heads=4,
                                  rope_parameters=dict(LINEAR)), None),
    # published Qwen2 configs carry a sliding_window number with use_sliding_window false:
    # transformers ignores it, so the file gets one back after saving
    "qwen2_window_ignored": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2,
                                           use_sliding_window=False, tie_word_embeddings=True),
                             {"sliding_window": 3}),
    # max_window_layers=1: layer 0 full, layers 1, 2 slide; layer_types dropped from the file
    # so that the max_window_layers rule is what is read
    "qwen2_max_window_layers": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2,
                                              num_hidden_layers=3, use_sliding_window=True,
                                              sliding_window=3, max_window_layers=1),
                                {"layer_types": None}),
    "qwen2_layer_types": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=4,
                                        num_hidden_layers=3, use_sliding_window=True,
                                        sliding_window=3, layer_types=["sliding_attention",
                                        "full_attention", "sliding_attention"]), None),
    "qwen3_gqa_head_dim_12": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2,
                                            head_dim=12), None),
}


def hf_model(family, seed=0, **overrides):
    """A tiny random transformers model of `family` in float64, weights larger than the usual
    init (N(0, 0.2), norms 1 + N(0, 0.1), biases too) so attention is far from uniform."""
    names = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    config_cls = getattr(transformers, names + "Config")
    model_cls = getattr(transformers, names + "ForCausalLM")
    kwargs = dict(vocab_size=V, hidden_size=C, num_hidden_layers=L, intermediate_size=F,
                  max_position_embeddings=2 * T, rms_norm_eps=1e-5, rope_theta=5000.0,
                  attn_implementation="eager")
    config = config_cls(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float64).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return model


def save_hf(hf, path, edit=None):
    """hf.save_pretrained(path), then set (or with None drop) keys of its config.json."""
    hf.save_pretrained(path, safe_serialization=True)
    if edit:
        d = json.loads((path / "config.json").read_text())
        for key, value in edit.items():
            d.pop(key) if value is None else d.__setitem__(key, value)
        (path / "config.json").write_text(json.dumps(d))


def random_model(config):
    """Our float64 model of `config`, every parameter moved by N(0, 0.2): the same reason as in
    hf_model (biases and norms away from 0 and 1 too, so that each one matters)."""
    model = MiniTransformer(config, seed=3, dtype=np.float64)
    rng = np.random.default_rng(4)
    for p in model.params.values():
        p += rng.normal(0.0, 0.2, size=p.shape)
    return model


def token_ids(seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(2, T))


def loaded_case(case, tmp_path):
    family, overrides, edit = CASES[case]
    hf = hf_model(family, **overrides)
    save_hf(hf, tmp_path, edit)
    return hf, MiniTransformer.from_pretrained(tmp_path, dtype=np.float64)


@pytest.mark.parametrize("case", CASES)
def test_logits_hidden_states_and_gradients_match_transformers(case, tmp_path, record_property):
    hf, ours = loaded_case(case, tmp_path)
    ids = token_ids()
    out = hf(torch.tensor(ids), output_hidden_states=True)
    logits = ours.forward(ids)
    errors = {"logits": rel_error(logits, out.logits.detach().numpy())}
    # transformers' last hidden state is after the final norm; ours is the last block's output
    ours_states = list(ours.hidden_states)
    ours_states[-1] = layers.rmsnorm_forward(ours_states[-1], ours.params["model.norm.weight"],
                                             ours.config.norm_eps)[0]
    assert len(out.hidden_states) == len(ours_states)
    for i, (h, theirs) in enumerate(zip(ours_states, out.hidden_states)):
        errors[f"hidden_states[{i}]"] = rel_error(h, theirs.detach().numpy())

    R = np.random.default_rng(1).normal(size=logits.shape)             # loss = sum(logits * R)
    (out.logits * torch.tensor(R)).sum().backward()
    ours.backward(R)
    hf_grads = {name: p.grad.numpy() for name, p in hf.named_parameters()}
    assert set(hf_grads) == set(ours.grads)
    for name, grad in hf_grads.items():
        errors[name] = rel_error(ours.grads[name], grad)
    worst = max(errors, key=errors.get)
    record_property("max_rel_error", f"{errors[worst]:.1e} ({worst})")
    print(f"{case}: max rel error {errors[worst]:.1e} at {worst}")
    bad = {k: e for k, e in errors.items() if not e < TOL}
    assert not bad, bad


def test_what_each_feature_changes(tmp_path):
    """Guards the test above: switching a feature off gives other logits, so each one matters."""
    ids = token_ids()
    for case, off in [("llama3_rope", dict(rope_scaling=None)),
                      ("linear_rope", dict(rope_scaling=None)),
                      ("qwen2_max_window_layers", dict(layer_windows=None, sliding_window=None)),
                      ("qwen2_max_window_layers", dict(layer_windows=None, sliding_window=3)),
                      ("qwen2_layer_types", dict(layer_windows=None, sliding_window=None))]:
        hf, ours = loaded_case(case, tmp_path / case)
        with torch.no_grad():
            hf_logits = hf(torch.tensor(ids)).logits.numpy()
        assert rel_error(ours.forward(ids), hf_logits) < TOL
        other = MiniTransformer(dataclasses.replace(ours.config, **off), dtype=np.float64,
                                params=ours.params)
        assert rel_error(other.forward(ids), hf_logits) > 1e-3, (case, off)


def test_configs_read_as_transformers_applies_them(tmp_path):
    """What each published layout turns into: the window ignored without use_sliding_window,
    per-layer windows from max_window_layers / layer_types, Qwen3's default head_dim 128."""
    expect = {"qwen2_window_ignored": (None, None, True, False),
              "qwen2_max_window_layers": (None, (None, 3, 3), True, False),
              "qwen2_layer_types": (None, (3, None, 3), True, False),
              "qwen3_gqa_head_dim_12": (None, None, False, True)}
    for case, (window, layer_windows, bias, qk_norm) in expect.items():
        _, ours = loaded_case(case, tmp_path / case)
        c = ours.config
        assert (c.sliding_window, c.layer_windows, c.qkv_bias, c.qk_norm) == expect[case], case
    c = checkpoint.config_from_hf({"model_type": "qwen3", "vocab_size": V, "hidden_size": C,
                                   "intermediate_size": F, "num_hidden_layers": L,
                                   "num_attention_heads": 4, "num_key_value_heads": 2})
    assert c.head_dim == 128 == transformers.Qwen3Config().head_dim
    assert c.rope_scaling is None and c.layer_windows is None



@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},                     # Llama 3.1 8B's config
    {"rope_type": "linear", "factor": 2.0}])
def test_rope_frequencies_match_transformers_at_published_sizes(rope):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    config = transformers.LlamaConfig(hidden_size=4096, num_attention_heads=32,
                                      max_position_embeddings=131072,
                                      rope_parameters=dict(rope, rope_theta=500000.0))
    theirs, attention_factor = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, "cpu")
    assert attention_factor == 1.0                       # cos/sin are not rescaled
    ours = attention.rope_inv_freq(128, 500000.0, rope)
    np.testing.assert_allclose(ours, theirs.double().numpy(), rtol=1e-6)   # theirs: float32

ROUND_TRIPS = {   # name: (our config's features, the class transformers must load)
    "llama3": (dict(rope_scaling={k: v for k, v in LLAMA3.items() if k != "rope_theta"}),
               "LlamaForCausalLM"),
    "linear": (dict(rope_scaling={"rope_type": "linear", "factor": 4.0}), "LlamaForCausalLM"),
    "qwen2_per_layer_windows": (dict(qkv_bias=True, layer_windows=(None, 3)), "Qwen2ForCausalLM"),
    "qwen2_tied_no_window": (dict(qkv_bias=True, tie_word_embeddings=True), "Qwen2ForCausalLM"),
    "qwen3": (dict(qk_norm=True, head_dim=12, num_kv_heads=1), "Qwen3ForCausalLM"),
    "qwen3_window": (dict(qk_norm=True, sliding_window=5), "Qwen3ForCausalLM"),
}


@pytest.mark.parametrize("case", ROUND_TRIPS)
def test_our_checkpoint_loads_in_transformers_as_the_family(case, tmp_path):
    features, class_name = ROUND_TRIPS[case]
    base = dict(vocab_size=V, hidden_size=C, num_layers=L, num_heads=4, num_kv_heads=2,
                intermediate_size=F, max_seq_length=2 * T, rope_theta=5000.0)
    ours = random_model(TransformerConfig(**{**base, **features}))
    ours.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float64, attn_implementation="eager").eval()
    assert type(hf).__name__ == class_name
    assert set(dict(hf.named_parameters())) == set(ours.params)
    ids = token_ids(2)
    with torch.no_grad():
        hf_logits = hf(torch.tensor(ids)).logits.numpy()
    assert rel_error(ours.forward(ids), hf_logits) < TOL
    assert MiniTransformer.from_pretrained(tmp_path, dtype=np.float64).config == ours.config


def test_generation_with_per_layer_windows_is_exact():
    """KV cache with a rolling layer (W=3) beside a full one (max_seq_length slots): feeding a
    prompt then one token at a time gives the logits of one full forward, past W tokens."""
    config = TransformerConfig(vocab_size=V, hidden_size=C, num_layers=2, num_heads=4,
                               num_kv_heads=2, intermediate_size=F, max_seq_length=T,
                               qkv_bias=True, layer_windows=(3, None))
    model = random_model(config)
    ids = token_ids()
    full = model.forward(ids, keep_cache=False)                       # (B, T, V)
    cache = KVCache(model, batch_size=2)
    assert [k.shape[1] for k in cache.k] == [3, T]
    steps = [model.forward(ids[:, :4], keep_cache=False, kv_cache=cache)]
    steps += [model.forward(ids[:, t:t + 1], keep_cache=False, kv_cache=cache) for t in range(4, T)]
    assert rel_error(np.concatenate(steps, axis=1), full) < 1e-12
    with pytest.raises(ValueError, match="max_seq_length"):          # the full layer is full
        model.forward(ids[:, :1], keep_cache=False, kv_cache=cache)


@pytest.mark.parametrize("change, needles", [
    ({"model_type": "gemma"}, ["model_type 'gemma'", "qwen2, qwen3, llama and mistral"]),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, ["rope_parameters", "'yarn'"]),
    ({"rope_scaling": {"rope_type": "longrope"}}, ["rope_scaling", "'longrope'"]),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, ["llama3", "low_freq_factor"]),
    ({"attention_bias": True, "model_type": "qwen3"}, ["attention_bias", "o_proj"]),
    ({"use_sliding_window": True, "sliding_window": 4, "layer_types": ["x", "y"]}, ["layer_types"]),
])
def test_unsupported_configs_are_one_clear_line(change, needles):
    d = {"model_type": "qwen2", "vocab_size": V, "hidden_size": C, "intermediate_size": F,
         "num_hidden_layers": L, "num_attention_heads": 4, **change}
    message = one_line_error(lambda: checkpoint.config_from_hf(d, source="x/config.json"),
                             *needles, error=CheckpointError)
    assert message.startswith("x/config.json: ")


def test_a_config_no_family_holds_is_refused_before_writing(tmp_path):
    """Per-layer windows without the Qwen features: Mistral has one window for all layers."""
    config = TransformerConfig(vocab_size=V, hidden_size=C, num_layers=2, num_heads=4,
                               num_kv_heads=2, intermediate_size=F, max_seq_length=T,
                               layer_windows=(3, None))
    model = MiniTransformer(config, dtype=np.float64)
    one_line_error(lambda: model.save_pretrained(tmp_path / "out"), "layer_windows", "qwen2",
                   error=CheckpointError)
    assert not (tmp_path / "out").exists()
