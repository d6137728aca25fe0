"""Generation: the KV cache gives the same tokens as recomputing; sampling filters behave."""
import numpy as np
import pytest

from mini_llm.generate import KVCache, forward_with_cache, generate, sample_next
from mini_llm.model.transformer import MiniTransformer, TransformerConfig


def model_with(window, max_len=48, kv_heads=2):
    config = TransformerConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                               num_kv_heads=kv_heads, intermediate_size=48, max_seq_length=max_len,
                               sliding_window=window)
    model = MiniTransformer(config, seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    for name, p in model.params.items():            # larger weights: less flat distributions
        if not name.endswith("norm.weight"):
            p[...] = rng.normal(0, 0.3, p.shape)
    return model


@pytest.mark.parametrize("window", [None, 5])
def test_cached_logits_equal_full_forward(window):
    model = model_with(window)
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 30))
    full = model.forward(ids, keep_cache=False)
    cache = KVCache(model, batch_size=2)
    chunks = [forward_with_cache(model, ids[:, :7], cache)]          # the prompt in one go
    chunks += [forward_with_cache(model, ids[:, t:t + 1], cache) for t in range(7, 30)]
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("window", [None, 4])
def test_greedy_generation_same_with_and_without_cache(window):
    model = model_with(window)
    prompt = np.array([[3, 14, 15, 9, 2, 6]])
    with_cache = generate(model, prompt, 30, temperature=0, use_cache=True)
    without = generate(model, prompt, 30, temperature=0, use_cache=False)
    np.testing.assert_array_equal(with_cache, without)
    assert with_cache.shape == (1, 36)


def test_rolling_cache_keeps_window_slots_only():
    model = model_with(window=4, max_len=16)
    cache = KVCache(model, batch_size=1)
    assert cache.k[0].shape[1] == 4                                   # W slots, not max_seq_length
    out = generate(model, np.array([[1, 2, 3]]), 40, temperature=0)   # past max_seq_length: fine
    assert out.shape == (1, 43)


def test_no_window_refuses_past_max_length():
    model = model_with(window=None, max_len=16)
    with pytest.raises(ValueError, match="exceed max_seq_length=16"):
        generate(model, np.array([[1, 2, 3]]), 20, temperature=0)


def test_sampling_filters():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    top1 = {int(sample_next(logits, 1.0, top_k=1, rng=rng)[0]) for _ in range(50)}
    assert top1 == {0}
    top2 = {int(sample_next(logits, 1.0, top_k=2, rng=rng)[0]) for _ in range(200)}
    assert top2 == {0, 1}
    nucleus = {int(sample_next(logits, 1.0, top_p=0.7, rng=rng)[0]) for _ in range(200)}
    assert nucleus == {0, 1}                                          # 0.5 < 0.7 <= 0.8
    assert int(sample_next(logits, 0)[0]) == 0                        # greedy
    a = generate(model_with(None), np.array([[1, 2]]), 10, temperature=1.0, seed=7)
    b = generate(model_with(None), np.array([[1, 2]]), 10, temperature=1.0, seed=7)
    np.testing.assert_array_equal(a, b)                               # the seed fixes the sample
