"""Generation: the KV cache gives the same tokens as recomputing; the sampling distribution is
exactly softmax(logits / T) cut by top-k / top-p; EOS, seeds and the context limit behave.

The references here are written independently of mini_llm.generate: a softmax and a nucleus
cut in plain loops, and model.forward over the whole sequence (a twin model with the same
weights and a longer max_seq_length where the sequence outgrows the small one)."""
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mini_llm.generate import generate, next_token_probs, receptive_field, sample_next
from mini_llm.model.kv_cache import KVCache
from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from tokenizer.bpe_tokenizer import BPETokenizer

ROOT = Path(__file__).resolve().parent.parent


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


def longer_twin(model, max_len):
    """The same weights (shared arrays) in a model that accepts max_len tokens."""
    config = dataclasses.replace(model.config, max_seq_length=max_len)
    return MiniTransformer(config, dtype=model.dtype, params=model.params)


def softmax_reference(z):
    """Row-wise softmax (B, V), written out: exp(z - max) / sum."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_k_reference(probs, k):
    """Keep the k most probable of each row, renormalize."""
    out = np.zeros_like(probs)
    for row, p in enumerate(probs):
        top = np.argsort(p)[::-1][:k]
        out[row, top] = p[top] / p[top].sum()
    return out


def nucleus_reference(probs, top_p):
    """Add tokens most probable first until their mass reaches top_p; keep those, renormalize."""
    out = np.zeros_like(probs)
    for row, p in enumerate(probs):
        kept, mass = [], 0.0
        for i in np.argsort(p)[::-1]:
            kept.append(i)
            mass += p[i]
            if mass >= top_p:
                break
        out[row, kept] = p[kept] / p[kept].sum()
    return out


# ----------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("window", [None, 5])
def test_cached_logits_equal_full_forward(window):
    model = model_with(window)
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 30))
    full = model.forward(ids, keep_cache=False)
    cache = KVCache(model, batch_size=2)
    step = lambda chunk: model.forward(chunk, keep_cache=False, kv_cache=cache)
    chunks = [step(ids[:, :7])]                                      # the prompt in one go
    chunks += [step(ids[:, t:t + 1]) for t in range(7, 30)]
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("window", [None, 4])
def test_greedy_generation_same_with_and_without_cache(window):
    model = model_with(window)
    prompt = np.array([[3, 14, 15, 9, 2, 6]])
    with_cache = generate(model, prompt, 30, temperature=0, use_cache=True)
    without = generate(model, prompt, 30, temperature=0, use_cache=False)
    np.testing.assert_array_equal(with_cache, without)
    assert with_cache.shape == (1, 36)


def test_rolling_cache_past_max_length_equals_full_recompute():
    """W=4, max_seq_length 16, 40 new tokens: the rolling cache against model.forward over the
    whole sequence, in a twin that takes 64 tokens (so nothing is cropped)."""
    small = model_with(window=4, max_len=16)
    long = longer_twin(small, 64)
    assert KVCache(small, batch_size=1).k[0].shape[1] == 4             # W slots, not max_seq_length
    prompt = np.array([[1, 2, 3]])
    out = generate(small, prompt, 40, temperature=0)                   # past max_seq_length: fine
    assert out.shape == (1, 43)
    np.testing.assert_array_equal(out, generate(long, prompt, 40, temperature=0, use_cache=False))
    # the small model's own no-cache path crops to 16 tokens: exact, the receptive field is 7
    assert receptive_field(small.config) == 2 * (4 - 1) + 1 <= 16
    np.testing.assert_array_equal(out, generate(small, prompt, 40, temperature=0, use_cache=False))
    # the cached logits of every step equal one full forward over the generated sequence
    cache = KVCache(small, batch_size=1)
    step = lambda chunk: small.forward(chunk, keep_cache=False, kv_cache=cache)
    steps = [step(out[:, :3])]
    steps += [step(out[:, t:t + 1]) for t in range(3, 42)]
    cached = np.concatenate(steps, axis=1)                             # (1, 42, V)
    full = long.forward(out[:, :-1], keep_cache=False)                 # (1, 42, V)
    assert np.abs(cached - full).max() < 1e-9
    assert np.array_equal(cached[0, 2:].argmax(-1), out[0, 3:])        # they chose the tokens


def test_receptive_field_is_exactly_what_the_last_token_sees():
    """L layers of window W: the last logits depend on the last L(W-1)+1 tokens, no fewer."""
    model = model_with(window=3)
    ids = np.random.default_rng(2).integers(0, 50, size=(1, 20))
    field = receptive_field(model.config)
    assert field == 2 * (3 - 1) + 1
    last = model.forward(ids, keep_cache=False)[:, -1]
    assert np.abs(model.forward(ids[:, -field:], keep_cache=False)[:, -1] - last).max() < 1e-10
    assert np.abs(model.forward(ids[:, -(field - 1):], keep_cache=False)[:, -1] - last).max() > 1e-6
    assert receptive_field(model_with(window=None).config) is None


def test_no_cache_refuses_a_window_that_sees_further_than_max_length():
    """W=8, 2 layers: the receptive field is 15 > max_seq_length 10, so recomputing over the
    last 10 tokens would change the logits; generate refuses instead of cropping."""
    model = model_with(window=8, max_len=10)
    ids = np.random.default_rng(3).integers(0, 50, size=(1, 20))
    full = longer_twin(model, 32).forward(ids, keep_cache=False)[:, -1]
    cropped = model.forward(ids[:, -10:], keep_cache=False)[:, -1]
    assert np.abs(full - cropped).max() > 1e-6                          # why it refuses
    with pytest.raises(ValueError, match="needs the KV cache"):
        generate(model, ids[:, :3], 20, temperature=0, use_cache=False)
    # up to max_seq_length nothing is cropped, and the cache goes on past it
    np.testing.assert_array_equal(generate(model, ids[:, :3], 7, temperature=0, use_cache=False),
                                  generate(model, ids[:, :3], 7, temperature=0, use_cache=True))
    assert generate(model, ids[:, :3], 20, temperature=0).shape == (1, 23)


# ----------------------------------------------------------------------------- context limit

def test_no_window_stops_at_context_limit():
    """Prompt 3 + 20 asked, max_seq_length 16: 13 new tokens, the same with and without the
    cache (no silent crop), and the stop reason says why."""
    model = model_with(window=None, max_len=16)
    prompt = np.array([[1, 2, 3]])
    runs = {use_cache: generate(model, prompt, 20, temperature=0, use_cache=use_cache,
                                return_stop_reason=True) for use_cache in (True, False)}
    for ids, reason in runs.values():
        assert ids.shape == (1, 16) and reason == "context_limit"
    np.testing.assert_array_equal(runs[True][0], runs[False][0])
    exact, reason = generate(model, prompt, 13, temperature=0, return_stop_reason=True)
    np.testing.assert_array_equal(exact, runs[True][0])
    assert reason == "max_new_tokens"
    full, reason = generate(model, np.arange(16)[None], 5, temperature=0, return_stop_reason=True)
    assert full.shape == (1, 16) and reason == "context_limit"       # 0 new tokens
    for use_cache in (True, False):
        with pytest.raises(ValueError, match="17 tokens, more than max_seq_length=16"):
            generate(model, np.arange(17)[None], 5, use_cache=use_cache)


# ----------------------------------------------------------------------------- the distribution

@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_divides_the_logits(temperature):
    """next_token_probs == softmax(logits / T); sample_next's frequencies follow it."""
    logits = np.array([[1.5, -0.5, 0.0, 2.5, -2.0, 1.0]])
    expected = softmax_reference(logits / temperature)
    probs = next_token_probs(logits, temperature)
    assert probs.shape == (1, 6) and np.abs(probs - expected).max() < 1e-12
    n = 20000
    draws = sample_next(np.repeat(logits, n, axis=0), temperature, rng=np.random.default_rng(0))
    freq = np.bincount(draws, minlength=6) / n
    # each frequency has std <= sqrt(0.25 / n) = 0.0035: 0.015 is over 4 std
    assert np.abs(freq - expected[0]).max() < 0.015
    inverted = softmax_reference(logits * temperature)                 # the bug this must catch
    assert np.abs(inverted - expected).max() > 0.1


def test_greedy_is_one_hot_argmax():
    logits = np.random.default_rng(4).normal(size=(3, 7))
    probs = next_token_probs(logits, 0)
    np.testing.assert_array_equal(probs, np.eye(7)[logits.argmax(-1)])
    np.testing.assert_array_equal(sample_next(logits, 0), logits.argmax(-1))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_top_k_keeps_the_k_largest(k):
    logits = np.random.default_rng(5).normal(0, 2, size=(4, 10))
    probs = next_token_probs(logits, 0.7, top_k=k)
    full = softmax_reference(logits / 0.7)
    for row in range(4):
        top = np.argsort(logits[row])[::-1][:k]
        outside = np.setdiff1d(np.arange(10), top)
        assert np.all(probs[row, outside] == 0)
        assert np.abs(probs[row, top] - full[row, top] / full[row, top].sum()).max() < 1e-12
    assert np.abs(probs.sum(-1) - 1).max() < 1e-12
    assert np.abs(probs - top_k_reference(full, k)).max() < 1e-12


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.9])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p):
    logits = np.random.default_rng(6).normal(0, 1.5, size=(5, 12))
    full = softmax_reference(logits / 1.3)
    probs = next_token_probs(logits, 1.3, top_p=top_p)
    assert np.abs(probs - nucleus_reference(full, top_p)).max() < 1e-12
    for row in range(5):
        kept = probs[row] > 0
        assert full[row, kept].sum() >= top_p                          # reaches p ...
        assert full[row, kept].sum() - full[row, kept].min() < top_p  # ... and is the smallest


def test_top_k_then_top_p():
    logits = np.random.default_rng(7).normal(0, 1.5, size=(5, 12))
    probs = next_token_probs(logits, 0.8, top_k=5, top_p=0.8)
    expected = nucleus_reference(top_k_reference(softmax_reference(logits / 0.8), 5), 0.8)
    assert np.abs(probs - expected).max() < 1e-12
    assert np.all((probs > 0).sum(-1) <= 5)


def test_sampling_filters_worked_example():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    np.testing.assert_allclose(next_token_probs(logits, 1.0, top_p=0.7),
                               [[0.625, 0.375, 0, 0]], atol=1e-12)    # 0.5 < 0.7 <= 0.8
    rng = np.random.default_rng(0)
    assert {int(sample_next(logits, 1.0, top_k=1, rng=rng)[0]) for _ in range(50)} == {0}
    assert {int(sample_next(logits, 1.0, top_k=2, rng=rng)[0]) for _ in range(200)} == {0, 1}
    assert {int(sample_next(logits, 1.0, top_p=0.7, rng=rng)[0]) for _ in range(200)} == {0, 1}
    assert int(sample_next(logits, 0)[0]) == 0                        # greedy


def test_seed_fixes_the_sample():
    model = model_with(None)
    prompt = np.array([[1, 2]])
    probs = next_token_probs(model.forward(prompt, keep_cache=False)[:, -1], 1.0)
    assert probs.max() > 5 / 50                                        # far from uniform
    a = generate(model, prompt, 20, temperature=1.0, seed=7)
    np.testing.assert_array_equal(a, generate(model, prompt, 20, temperature=1.0, seed=7))
    assert not np.array_equal(a, generate(model, prompt, 20, temperature=1.0, seed=8))


# ----------------------------------------------------------------------------- EOS

@pytest.mark.parametrize("use_cache", [True, False])
def test_eos_stops_its_row(use_cache):
    """Greedy batch of 2. eos_id: a token row 0 emits at step s but row 1 never emits. Row 0
    is eos_id from step s on (padding); row 1 is as without eos_id. When every row has emitted
    eos_id generation stops early."""
    model = model_with(None)
    prompt = np.array([[3, 14, 15, 9, 2, 6], [7, 1, 8, 2, 8, 1]])
    free = generate(model, prompt, 20, temperature=0, use_cache=use_cache)[:, 6:]   # (2, 20)
    eos = next(int(t) for t in free[0, 1:-1] if t not in free[1])
    s = int(np.argmax(free[0] == eos))                                 # first time row 0 emits it
    assert 0 < s < 19
    ids, reason = generate(model, prompt, 20, temperature=0, use_cache=use_cache, eos_id=eos,
                           return_stop_reason=True)
    new = ids[:, 6:]
    assert new.shape == (2, 20) and reason == "max_new_tokens"
    np.testing.assert_array_equal(new[0, :s], free[0, :s])
    assert np.all(new[0, s:] == eos) and not np.all(free[0, s:] == eos)
    np.testing.assert_array_equal(new[1], free[1])
    # a token both rows emit: generation ends when the later of the two emits it
    both = next(int(t) for t in free[0] if t in free[1])
    last = max(int(np.argmax(free[r] == both)) for r in (0, 1))
    assert last < 19
    ids, reason = generate(model, prompt, 20, temperature=0, use_cache=use_cache, eos_id=both,
                           return_stop_reason=True)
    assert ids.shape == (2, 6 + last + 1) and reason == "eos"
    assert np.all(ids[:, -1] == both)


# ----------------------------------------------------------------------------- the CLI

def load_cli(name):
    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def checkpoint(tmp_path):
    """A train.py-like folder: a BPE tokenizer and a 16-token model without a window."""
    text = "Attention lets every token look at the others. Tokens attend to tokens. " * 20
    tokenizer = BPETokenizer(vocab_size=300).train([text])
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2,
                               num_heads=4, num_kv_heads=2, intermediate_size=48,
                               max_seq_length=16)
    MiniTransformer(config, seed=0).save_pretrained(tmp_path / "ckpt")
    tokenizer.save(tmp_path / "ckpt")
    return tmp_path / "ckpt", tokenizer


def test_cli_stops_at_context_limit_with_a_note(checkpoint, capsys):
    """The default --max_new_tokens 100 is more than a 16-token model holds: the CLI prints
    the 16 tokens and one note, the same with --no_cache."""
    folder, tokenizer = checkpoint
    prompt = "Attention lets"
    prompt_ids = tokenizer.encode(prompt)
    expected = generate(MiniTransformer.from_pretrained(folder), np.array([prompt_ids]), 100,
                        temperature=0, eos_id=tokenizer.eos_id)
    assert expected.shape == (1, 16)                                   # no EOS before the limit
    cli = load_cli("generate")
    for flags in ([], ["--no_cache"]):
        rc = cli.main(["--checkpoint", str(folder), "--prompt", prompt, "--temperature", "0"] + flags)
        out, err = capsys.readouterr()
        assert rc == 0 and out == tokenizer.decode(expected[0].tolist()) + "\n"
        notes = [line for line in err.splitlines() if line.startswith("note:")]
        assert notes == [f"note: stopped at the model's context limit (max_seq_length=16) "
                         f"after {16 - len(prompt_ids)} new tokens"]
    rc = cli.main(["--checkpoint", str(folder), "--prompt", "tokens " * 20, "--temperature", "0"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error:") and "max_seq_length=16" in err


def test_cli_before_any_training_says_to_train_first(tmp_path, monkeypatch, capsys):
    """A newcomer's first `python generate.py`: the default output/checkpoint does not exist
    yet. One error line says how to make it."""
    monkeypatch.chdir(tmp_path)                           # no output/ here
    rc = load_cli("generate").main([])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: no checkpoint at output/checkpoint")
    assert "run `python train.py --use_mock` first" in err
