"""MiniLLM against the outside reference: Hugging Face `transformers` on the same checkpoint.

Each test builds a tiny random LLaMA or Mistral in `transformers` (float64, eager attention so
the sliding window is applied), saves it with `save_pretrained`, loads it with
`MiniTransformer.from_pretrained`, and compares logits and the gradient of every parameter of
the same loss, sum(logits * R). And the other way: a folder MiniLLM writes loads in
`transformers` and gives the same logits.
Tolerance 1e-6: `transformers` computes RoPE and RMSNorm in float32 even in a float64 model,
so the two differ by ~1e-7, not by float64 rounding.
"""
import copy
import dataclasses
import json

import numpy as np
import pytest

from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from mini_llm.gradcheck import rel_error

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V, C, L, F, T = 64, 32, 2, 48, 12
TOL = 1e-6

CASES = {
    "mistral_window_gqa": ("mistral", dict(num_attention_heads=4, num_key_value_heads=2,
                                           sliding_window=5, tie_word_embeddings=False)),
    "llama_tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=4,
                                 tie_word_embeddings=True)),
    "llama_untied_head_dim_16": ("llama", dict(num_attention_heads=4, num_key_value_heads=1,
                                               head_dim=16, tie_word_embeddings=False)),
}


def hf_model(kind, seed=0, **overrides):
    """A tiny random transformers LLaMA/Mistral in float64. Weights ~ N(0, 0.2) and norm
    weights 1 + N(0, 0.1), larger than the usual init so attention is far from uniform."""
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[kind]
    kwargs = dict(vocab_size=V, hidden_size=C, num_hidden_layers=L, intermediate_size=F,
                  max_position_embeddings=2 * T, rms_norm_eps=1e-5, rope_theta=5000.0,
                  attn_implementation="eager")
    config = cls[0](**{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = cls[1](config).to(torch.float64).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return model


def read_header_dtypes(path):
    """{name: stored dtype code} straight from a safetensors header."""
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    return {name: info["dtype"] for name, info in header.items() if name != "__metadata__"}


def token_ids(seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(2, T))


@pytest.mark.parametrize("case", CASES)
def test_logits_and_gradients_match_transformers(case, tmp_path):
    kind, overrides = CASES[case]
    hf = hf_model(kind, **overrides)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = MiniTransformer.from_pretrained(tmp_path, dtype=np.float64)

    ids = token_ids()
    hf_logits = hf(torch.tensor(ids)).logits                          # (B, T, V)
    logits = ours.forward(ids)
    assert rel_error(logits, hf_logits.detach().numpy()) < TOL

    R = np.random.default_rng(1).normal(size=logits.shape)             # loss = sum(logits * R)
    (hf_logits * torch.tensor(R)).sum().backward()
    ours.backward(R)
    hf_grads = {name: p.grad.numpy() for name, p in hf.named_parameters()}
    assert set(hf_grads) == set(ours.grads)                            # tied: one shared weight
    for name, grad in hf_grads.items():
        assert rel_error(ours.grads[name], grad) < TOL, name


def test_sliding_window_is_what_makes_them_agree(tmp_path):
    """Guards the test above: without the window, the same weights give other logits."""
    hf = hf_model("mistral", num_attention_heads=4, num_key_value_heads=2, sliding_window=5)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = MiniTransformer.from_pretrained(tmp_path, dtype=np.float64)
    full = MiniTransformer(dataclasses.replace(ours.config, sliding_window=None),
                           dtype=np.float64, params=ours.params)
    ids = token_ids()
    hf_logits = hf(torch.tensor(ids)).logits.detach().numpy()
    assert rel_error(ours.forward(ids), hf_logits) < TOL
    assert rel_error(full.forward(ids), hf_logits) > 1e-3


@pytest.mark.parametrize("tied", [False, True])
def test_our_checkpoint_loads_in_transformers(tied, tmp_path):
    config = TransformerConfig(vocab_size=V, hidden_size=C, num_layers=L, num_heads=4,
                               num_kv_heads=2, intermediate_size=F, max_seq_length=2 * T,
                               sliding_window=5, rope_theta=5000.0, tie_word_embeddings=tied)
    ours = MiniTransformer(config, seed=3, dtype=np.float64)
    rng = np.random.default_rng(4)
    for p in ours.params.values():                     # same reason as in hf_model
        p += rng.normal(0.0, 0.2, size=p.shape)
    ours.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float64, attn_implementation="eager").eval()
    assert type(hf).__name__ == "MistralForCausalLM"
    assert hf.config.sliding_window == 5 and hf.config.tie_word_embeddings == tied
    ids = token_ids(2)
    with torch.no_grad():
        hf_logits = hf(torch.tensor(ids)).logits.numpy()
    assert rel_error(ours.forward(ids), hf_logits) < TOL


def test_bfloat16_checkpoint_from_transformers(tmp_path):
    """A bf16 folder loads as exactly the bf16 weights, and runs like HF with those weights."""
    hf = hf_model("mistral", num_attention_heads=4, num_key_value_heads=2, sliding_window=5)
    with torch.no_grad():                              # round the float64 weights to bf16 values
        for p in hf.parameters():
            p.copy_(p.to(torch.bfloat16))
    # a bf16 copy to save (model.to() would also round HF's RoPE buffer, so not on `hf` itself)
    copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
    header = read_header_dtypes(tmp_path / "model.safetensors")
    assert set(header.values()) == {"BF16"}
    ours = MiniTransformer.from_pretrained(tmp_path, dtype=np.float64)
    for name, p in hf.named_parameters():
        np.testing.assert_array_equal(ours.params[name], p.detach().numpy(), err_msg=name)
    ids = token_ids()
    with torch.no_grad():
        hf_logits = hf(torch.tensor(ids)).logits.numpy()
    assert rel_error(ours.forward(ids), hf_logits) < TOL
