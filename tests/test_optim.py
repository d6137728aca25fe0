"""AdamW against torch.optim.AdamW, the schedule's three cases, clipping by global norm."""
import math

import numpy as np
import pytest

from mini_llm.optim import AdamW, clip_grad_norm, decays, get_lr


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = {"w.weight": rng.normal(size=(4, 3)), "norm.weight": rng.normal(size=3)}
    grads_per_step = [{n: rng.normal(size=p.shape) for n, p in params.items()} for _ in range(5)]

    ours = {n: p.copy() for n, p in params.items()}
    opt = AdamW(ours, lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for grads in grads_per_step:
        opt.step(ours, grads)

    theirs = {n: torch.tensor(p, requires_grad=True) for n, p in params.items()}
    groups = [{"params": [theirs["w.weight"]], "weight_decay": 0.1},        # 2-D: decayed
              {"params": [theirs["norm.weight"]], "weight_decay": 0.0}]     # 1-D: not decayed
    topt = torch.optim.AdamW(groups, lr=0.01, betas=(0.9, 0.95), eps=1e-8)
    for grads in grads_per_step:
        for n, t in theirs.items():
            t.grad = torch.tensor(grads[n])
        topt.step()
    for n in params:
        np.testing.assert_allclose(ours[n], theirs[n].detach().numpy(), rtol=1e-12, atol=1e-14)


def test_which_parameters_decay():
    assert decays("model.layers.0.mlp.up_proj.weight", (8, 4))
    assert not decays("model.layers.0.input_layernorm.weight", (4,))
    assert not decays("model.embed_tokens.weight", (10, 4))
    assert decays("model.embed_tokens.weight", (10, 4), decay_embeddings=True)


def test_lr_schedule_three_cases():
    assert get_lr(0, 1.0, 10, 100) == pytest.approx(0.1)          # 1) warm-up, linear
    assert get_lr(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert get_lr(55, 1.0, 10, 100) == pytest.approx(0.1 + 0.9 * 0.5)   # 3) cosine midpoint
    assert get_lr(100, 1.0, 10, 100) == pytest.approx(0.1)        # 2) floor after the end
    lrs = [get_lr(s, 1.0, 10, 100) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))              # monotone decay


def test_clip_grad_norm_scales_all_together():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    norm = clip_grad_norm(grads, max_norm=1.0)
    assert norm == pytest.approx(5.0)
    assert math.sqrt(sum(float((g ** 2).sum()) for g in grads.values())) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(grads["a"] / grads["b"][0, 0], [0.75, 0.0])


def test_gradient_accumulation_equals_one_big_batch():
    """Two half-batches with loss/2 each give the same update as the whole batch."""
    from mini_llm.model import layers
    from mini_llm.model.transformer import MiniTransformer, TransformerConfig
    config = TransformerConfig(vocab_size=11, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2,
                               intermediate_size=8, max_seq_length=8)
    ids = np.random.default_rng(0).integers(0, 11, size=(4, 6))
    models = [MiniTransformer(config, seed=0, dtype=np.float64) for _ in range(2)]
    for model, chunks in zip(models, ([ids], [ids[:2], ids[2:]])):
        model.zero_grad()
        for chunk in chunks:
            loss, cache = layers.cross_entropy_forward(model.forward(chunk[:, :-1]), chunk[:, 1:])
            model.backward(layers.cross_entropy_backward(1.0 / len(chunks), cache))
    for name in models[0].grads:
        np.testing.assert_allclose(models[0].grads[name], models[1].grads[name], rtol=1e-10, atol=1e-14)
