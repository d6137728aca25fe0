"""The model's batch rows split over threads (MiniTransformer.row_slices): each slice of rows runs
the blocks, the final norm and the head on its own thread. It must give the logits, hidden
states and gradients of the whole batch in one piece, keep adding into the grads across
backwards, and fall back to one slice where splitting cannot help or is not safe."""
import numpy as np
import pytest

from mini_llm import threads
from mini_llm.model import layers
from mini_llm.model.kv_cache import KVCache
from mini_llm.model.transformer import MiniTransformer
from tests.test_model import random_model, tiny_config

CASES = {
    "untied, full causal": dict(),
    "tied, window 3, GQA 4/2": dict(sliding_window=3, num_heads=4, num_kv_heads=2, tie_word_embeddings=True),
    "Qwen features: q/k/v bias, q/k norm": dict(qkv_bias=True, qk_norm=True, num_kv_heads=1),
}
SLICES = [(0, 1), (1, 3), (3, 4)]          # uneven, as 4 rows over 3 threads would be cut


def forward_backward(model, ids, targets, hidden_grads):
    """logits, hidden states and a copy of the grads after one forward and backward."""
    logits = model.forward(ids)
    _, ce_cache = layers.cross_entropy_forward(logits, targets)
    model.zero_grad()
    model.backward(layers.cross_entropy_backward(1.0, ce_cache), hidden_grads=hidden_grads)
    return logits, [h.copy() for h in model.hidden_states], {n: g.copy() for n, g in model.grads.items()}


def run_kernel_first():
    """A model's forward launches parallel kernels, so Numba's threading layer is chosen and
    in_parallel may run the slices at once (before that it runs them one after another)."""
    MiniTransformer(tiny_config(), seed=0).forward(np.array([[1, 2, 3]]))


@pytest.mark.parametrize("case", list(CASES))
def test_slices_give_the_whole_batch_logits_hidden_states_and_gradients(case, monkeypatch):
    run_kernel_first()
    config = tiny_config(**CASES[case])
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, 13, size=(2, 4, 7))
    hidden_grads = {i: rng.normal(size=(4, 7, 8)) for i in (0, 1, config.num_layers)}
    monkeypatch.setattr(MiniTransformer, "row_slices", lambda self, x, kv_cache=None: [(0, x.shape[0])])
    whole = forward_backward(random_model(config), ids, targets, hidden_grads)
    monkeypatch.setattr(MiniTransformer, "row_slices", lambda self, x, kv_cache=None: SLICES)
    sliced = forward_backward(random_model(config), ids, targets, hidden_grads)
    np.testing.assert_allclose(sliced[0], whole[0], rtol=1e-12, atol=1e-12)
    for i, (a, b) in enumerate(zip(sliced[1], whole[1])):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"hidden_states[{i}]")
    assert sliced[2].keys() == whole[2].keys()
    for name in whole[2]:
        np.testing.assert_allclose(sliced[2][name], whole[2][name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_backward_adds_into_the_grads_and_the_slices_start_from_zero_again(monkeypatch):
    run_kernel_first()
    monkeypatch.setattr(MiniTransformer, "row_slices", lambda self, x, kv_cache=None: SLICES)
    model = random_model(tiny_config())
    ids = np.random.default_rng(1).integers(0, 13, size=(4, 5))
    logits = model.forward(ids)
    model.backward(np.ones_like(logits))
    once = {n: g.copy() for n, g in model.grads.items()}
    model.forward(ids)
    model.backward(np.ones_like(logits))                      # no zero_grad between: grads add
    for name, g in model.grads.items():
        np.testing.assert_allclose(g, 2 * once[name], rtol=1e-12, atol=1e-12, err_msg=name)
    assert len(model._slice_grads) == len(SLICES) - 1         # every slice but the first has its own
    assert all(not g.any() for grads in model._slice_grads for g in grads.values())
    assert "model.embed_tokens.weight" not in model._slice_grads[0]   # untied: only after the slices


def test_equal_slices_only_else_one_and_one_from_a_kv_cache_or_without_concurrent_kernels(monkeypatch):
    model = MiniTransformer(tiny_config(), seed=0)
    rows = lambda B: np.zeros((B, 3, 8), np.float32)                 # noqa: E731
    monkeypatch.setattr(threads, "concurrent_kernels_allowed", lambda: True)
    monkeypatch.setattr(threads, "count", lambda: 3)                  # as if set_threads(3)
    assert model.row_slices(rows(6)) == [(0, 2), (2, 4), (4, 6)]
    for B in (1, 2, 4, 5):                                            # fewer rows than threads, or unequal
        assert model.row_slices(rows(B)) == [(0, B)], B
    assert model.row_slices(rows(6), KVCache(model, 6)) == [(0, 6)]
    monkeypatch.setattr(threads, "count", lambda: 1)
    assert model.row_slices(rows(6)) == [(0, 6)]
    monkeypatch.setattr(threads, "count", lambda: 3)
    monkeypatch.setattr(threads, "concurrent_kernels_allowed", lambda: False)   # e.g. Numba's workqueue
    assert model.row_slices(rows(6)) == [(0, 6)]
