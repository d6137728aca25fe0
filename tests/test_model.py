"""Whole-model checks: the gradient of every parameter against finite differences (float64),
injected hidden-state gradients, overfitting a short text, clear errors for bad input."""
import numpy as np
import pytest

from mini_llm.model import layers
from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from mini_llm.optim import AdamW
from mini_llm.gradcheck import assert_close_grad, numerical_grad


def tiny_config(**overrides):
    base = dict(vocab_size=13, hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2,
                intermediate_size=12, max_seq_length=16, sliding_window=None)
    base.update(overrides)
    return TransformerConfig(**base)


def random_model(config, seed=0):
    """A float64 model with non-trivial norm weights (ones would hide bugs in their gradients)."""
    model = MiniTransformer(config, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    for name, p in model.params.items():
        p[...] = rng.normal(1.0, 0.3, p.shape) if name.endswith("norm.weight") else rng.normal(0, 0.5, p.shape)
    return model


CASES = {
    "full causal, untied": dict(),
    "window 3 < T, GQA 4/2, tied": dict(sliding_window=3, num_heads=4, num_kv_heads=2, tie_word_embeddings=True),
    "window 2, MQA 2/1, untied": dict(sliding_window=2, num_kv_heads=1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_model_gradient_every_parameter(case):
    model = random_model(tiny_config(**CASES[case]))
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 13, size=(2, 6))
    targets = rng.integers(0, 13, size=(2, 6))
    # an injected gradient at a hidden state, as distillation sends: loss += Σ h_1 · R
    R = rng.normal(size=(2, 6, 8))

    def loss_fn():
        logits = model.forward(ids)
        loss, _ = layers.cross_entropy_forward(logits, targets)
        return float(loss) + float(np.sum(model.hidden_states[1] * R))

    logits = model.forward(ids)
    loss, ce_cache = layers.cross_entropy_forward(logits, targets)
    model.zero_grad()
    model.backward(layers.cross_entropy_backward(1.0, ce_cache), hidden_grads={1: R})
    analytic = {n: g.copy() for n, g in model.grads.items()}
    for name, p in model.params.items():
        assert_close_grad(analytic[name], numerical_grad(loss_fn, p), f"{case}: {name}")


def test_kernel_and_reference_paths_give_same_model_gradients():
    config = tiny_config(sliding_window=3, num_heads=4, num_kv_heads=2)
    ids = np.random.default_rng(0).integers(0, 13, size=(2, 7))
    grads = []
    for use_kernel in (True, False):
        model = random_model(config)
        model.use_kernel = use_kernel
        logits = model.forward(ids)
        model.backward(np.ones_like(logits))
        grads.append((logits, model.grads))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-10, atol=1e-12)
    for name in grads[0][1]:
        np.testing.assert_allclose(grads[0][1][name], grads[1][1][name], rtol=1e-8, atol=1e-12, err_msg=name)


def test_hidden_states_layout():
    model = MiniTransformer(tiny_config(num_layers=3), seed=0)
    ids = np.array([[1, 2, 3]])
    model.forward(ids)
    assert len(model.hidden_states) == 4                        # embedding + one per layer
    np.testing.assert_array_equal(model.hidden_states[0], model.params["model.embed_tokens.weight"][ids])


def test_float32_matches_float64():
    config = tiny_config(sliding_window=4)
    m64 = MiniTransformer(config, seed=1, dtype=np.float64)
    m32 = MiniTransformer(config, seed=1, dtype=np.float32)
    ids = np.random.default_rng(0).integers(0, 13, size=(2, 10))
    out32 = m32.forward(ids)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, m64.forward(ids), rtol=1e-4, atol=1e-5)


def test_tiny_model_overfits_short_text():
    text = b"the cat sat on the mat. "
    ids = np.frombuffer(text * 2, dtype=np.uint8).astype(np.int64)[None, :]
    config = TransformerConfig(vocab_size=256, hidden_size=32, num_layers=2, num_heads=4,
                               num_kv_heads=2, intermediate_size=64, max_seq_length=64, sliding_window=16)
    model = MiniTransformer(config, seed=0)
    opt = AdamW(model.params, lr=1e-2, weight_decay=0.0)
    for step in range(150):
        logits = model.forward(ids[:, :-1])
        loss, cache = layers.cross_entropy_forward(logits, ids[:, 1:])
        model.zero_grad()
        model.backward(layers.cross_entropy_backward(1.0, cache))
        opt.step(model.params, model.grads)
    assert float(loss) < 0.05, f"did not overfit: loss {float(loss):.3f}"


@pytest.mark.parametrize("overrides, message", [
    (dict(hidden_size=10, num_heads=4), "num_heads=4 does not divide hidden_size=10"),
    (dict(num_heads=4, num_kv_heads=3), "num_kv_heads=3 does not divide num_heads=4"),
    (dict(sliding_window=0), "sliding_window must be None or an integer >= 1"),
])
def test_bad_config_is_one_clear_line(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides).validate()


@pytest.mark.parametrize("ids, message", [
    (np.array([[1, 13]]), "token id 13 is outside the vocabulary \\(size 13\\)"),
    (np.array([[-1, 2]]), "token id -1 is outside the vocabulary"),
    (np.zeros((1, 17), dtype=int), "sequence of 17 tokens is longer than max_seq_length=16"),
])
def test_bad_ids_are_one_clear_line(ids, message):
    model = MiniTransformer(tiny_config(), seed=0)
    with pytest.raises(ValueError, match=message):
        model.forward(ids)
