"""The distillation step, wired right: checked against finite differences and against the
formulas, not against itself.

1. Gradient checks of one whole micro-batch through the public API
   (`training.loop.forward_backward` with a KnowledgeTransfer): the gradient that lands in the
   student's and the projections' grads equals scale · d(reported total)/d(param), by central
   differences in float64, for the live path, the offline (top-k cache) path and the
   cross-vocabulary (ULD) path.
2. Behaviour that a wrong wiring cannot fake: a KL-only student moves towards its teacher; a
   top-k cache with k = V is the live teacher; two accumulated micro-batches are one batch of
   twice the size; temperature and direction change the gradient exactly as the formula says;
   a teacher's weight scales exactly its share of the gradient.
"""
import json

import numba
import numpy as np
import pytest

from mini_llm.gradcheck import assert_close_grad, numerical_grad
from tokenizer.bpe_tokenizer import BPETokenizer
from training import losses
from training.knowledge_transfer import DistillConfig, KnowledgeTransfer
from training.loop import (TrainConfig, forward_backward, make_optimizer, micro_batch, train, trainable,
                           zero_grads)
from training.ngram_teacher import NGramTeacher
from training.teacher_cache import TeacherOutputCache
from training.teachers import TransformerTeacher, load_minillm_teacher
from mini_llm.model.transformer import MiniTransformer, TransformerConfig

V = 24                          # the shared vocabulary of student, minillm and n-gram teachers
T = 7                           # positions per sequence (sequences hold T + 1 tokens)


@pytest.fixture(autouse=True)
def one_numba_thread():
    """Thousands of steps on arrays of a few hundred numbers: waking Numba's thread pool for
    each attention kernel call costs far more than the work (10x on a busy 2-core machine)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(previous)


def student_config(vocab_size=V, **changes):
    config = dict(vocab_size=vocab_size, hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=1,
                  intermediate_size=12, max_seq_length=16, sliding_window=4)
    return TransformerConfig(**{**config, **changes})


def sharpened(model, std=0.4, seed=3):
    """Larger random weights than the init, so the distributions are far from uniform."""
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        if not name.endswith("norm.weight"):
            p[...] = rng.normal(0, std, p.shape)
    return model


def minillm_teacher(tmp_path, vocab_size=V, tokenizer=None, name="minillm"):
    """A MiniLLM checkpoint (3 layers, width 12), saved and loaded back as a "minillm" teacher."""
    config = TransformerConfig(vocab_size=vocab_size, hidden_size=12, num_layers=3, num_heads=2,
                               num_kv_heads=2, intermediate_size=16, max_seq_length=32)
    folder = tmp_path / name
    sharpened(MiniTransformer(config, seed=5, dtype=np.float64), seed=6).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save(folder / "tokenizer.json")
    return load_minillm_teacher(folder, name=name, dtype=np.float64)


def ngram_teacher(vocab_size=V, seed=0):
    stream = np.random.default_rng(seed).integers(0, vocab_size, size=400)
    return NGramTeacher(vocab_size, order=3, dtype=np.float64).fit(stream)


def student(seed=0, dtype=np.float64, **changes):
    return sharpened(MiniTransformer(student_config(**changes), seed=seed, dtype=dtype), std=0.3, seed=seed)


def sequences(n=6, vocab_size=V, seed=1):
    return np.random.default_rng(seed).integers(0, vocab_size, size=(n, T + 1))


def zero_all(model, distiller):
    zero_grads(trainable(model, distiller)[1])


def check_whole_step(model, distiller, batch, indices, ce_weight, scale=0.5):
    """forward_backward's grads == scale · d(total)/d(param) by central differences, for every
    student parameter and every projection. Returns the reported components."""
    zero_all(model, distiller)
    parts = forward_backward(model, batch, ce_weight, distiller, indices, scale=scale)
    params, grads = trainable(model, distiller)
    analytic = {name: g.copy() / scale for name, g in grads.items()}

    def total():
        return forward_backward(model, batch, ce_weight, distiller, indices, scale=scale)["total"]
    for name, p in params.items():
        assert_close_grad(analytic[name], numerical_grad(total, p), name, tol=1e-6)
    return parts


# ----------------------------------------------------------------------------- 1. gradient checks

EVERY_TERM = DistillConfig(kl_weight=0.7, hidden_weight=0.4, contrastive_weight=0.3, temperature=2.0,
                           kl_direction="reverse", hidden_loss="cosine",
                           layer_map='{"minillm": {"1": 1, "3": 2}}')


def test_whole_step_gradient_live_teachers(tmp_path):
    """Two teachers of unequal weights (a MiniLLM checkpoint, an n-gram), reverse KL at tau 2,
    cosine hidden matching and InfoNCE through two projections, a layer map, scale 0.5."""
    model = student()
    distiller = KnowledgeTransfer(model, [(minillm_teacher(tmp_path), 0.75), (ngram_teacher(), 0.25)],
                                  EVERY_TERM, seed=0)
    assert sorted(distiller.proj_params) == ["proj.minillm.1->1", "proj.minillm.3->2"]
    parts = check_whole_step(model, distiller, sequences(2), None, ce_weight=0.3)
    assert set(parts) == {"ce", "kl.minillm", "hidden.minillm", "contrastive.minillm", "kl.ngram", "total"}
    expected = (0.3 * parts["ce"] + 0.75 * (0.7 * parts["kl.minillm"] + 0.4 * parts["hidden.minillm"]
                                            + 0.3 * parts["contrastive.minillm"]) + 0.25 * 0.7 * parts["kl.ngram"])
    assert parts["total"] == pytest.approx(expected, rel=1e-12)


def test_whole_step_gradient_offline_topk_cache(tmp_path):
    """The same two teachers read from a top-k cache (k < V, so the "rest" bucket is used);
    forward KL, as the cache stores; MSE hidden matching still runs the minillm teacher."""
    model = student()
    config = DistillConfig(kl_weight=0.7, hidden_weight=0.4, contrastive_weight=0.3, temperature=2.0,
                           hidden_loss="mse", layer_map='{"minillm": {"2": 1}}')
    distiller = KnowledgeTransfer(model, [(minillm_teacher(tmp_path), 0.75), (ngram_teacher(), 0.25)],
                                  config, seed=0)
    data = sequences(6)
    for link in distiller.links:
        distiller.attach_cache(link, TeacherOutputCache(tmp_path / "cache" / link.teacher.name,
                                                        link.teacher.name, 5, 2.0, len(data), T))
    indices = np.array([4, 1])
    parts = check_whole_step(model, distiller, data[indices], indices, ce_weight=0.3)
    assert all(link.cache.has(indices) for link in distiller.links)     # the cache was filled
    assert {"kl.minillm", "hidden.minillm", "contrastive.minillm", "kl.ngram"} <= parts.keys()


def test_whole_step_gradient_cross_vocabulary(tmp_path):
    """A teacher with its own tokenizer teaches through ULD (the text is re-tokenised), beside an
    n-gram teacher on the student's tokens with reverse KL."""
    text = ["the cat sat on the mat and the dog sat on the log", "a bird in the hand is worth two"]
    s_tok = BPETokenizer(vocab_size=262, special_tokens=["<|endoftext|>"]).train(text)
    t_tok = BPETokenizer(vocab_size=270, special_tokens=["<|endoftext|>"]).train(text)
    model = student(vocab_size=s_tok.vocab_size, tie_word_embeddings=True, hidden_size=4)
    teachers = [(minillm_teacher(tmp_path, t_tok.vocab_size, t_tok), 0.6),
                (ngram_teacher(s_tok.vocab_size), 0.4)]
    config = DistillConfig(kl_weight=0.7, temperature=2.0, kl_direction="reverse", cross_vocab=True)
    distiller = KnowledgeTransfer(model, teachers, config, s_tok, seed=0)
    assert [link.same_tokens for link in distiller.links] == [False, True]
    ids = np.array([s_tok.encode(t)[:T + 1] for t in ["the cat sat on the mat", "a bird in the hand"]])
    assert ids.shape == (2, T + 1)
    parts = check_whole_step(model, distiller, ids, None, ce_weight=0.3)
    assert parts["uld.minillm"] > 0 and parts["kl.ngram"] > 0        # ULD is logged as itself
    assert "kl.minillm" not in parts


def test_plain_training_step_is_the_cross_entropy():
    """No teacher: the loss is ce_weight · CE, reported as the total, and its gradient."""
    model = student()
    parts = check_whole_step(model, None, sequences(2), None, ce_weight=1.0, scale=0.25)
    assert parts["total"] == parts["ce"]


# ----------------------------------------------------------------------------- 2. behaviour

def kl_to_teacher(model, teacher, data):
    logits = model.forward(data[:, :-1], keep_cache=False)
    return losses.kl_forward(logits, teacher.forward(data[:, :-1])[0])[0]


def test_kl_only_distillation_moves_the_student_to_its_teacher(tmp_path):
    """ce_weight 0 and no weight decay: only the teacher's KL can move the student. The teacher
    has the student's architecture (so the student can fit it) and other weights; 50 steps must
    halve the KL on sequences not trained on."""
    model = MiniTransformer(student_config(), seed=0)
    teacher = TransformerTeacher("twin", "minillm", sharpened(MiniTransformer(student_config(), seed=7), seed=8))
    data, held_out = sequences(32, seed=2), sequences(8, seed=3)
    before = kl_to_teacher(model, teacher, held_out)
    distiller = KnowledgeTransfer(model, [(teacher, 1.0)], DistillConfig(kl_weight=1.0))
    config = TrainConfig(steps=50, batch_size=8, lr=3e-2, warmup_steps=5, ce_weight=0.0)
    train(model, make_optimizer(model, distiller, config.lr, 0.0), data, [], config, distiller)
    after = kl_to_teacher(model, teacher, held_out)
    assert after < 0.5 * before, (before, after)


def grads_of(model, distiller, batch, indices=None, ce_weight=0.0, scale=1.0):
    zero_all(model, distiller)
    parts = forward_backward(model, batch, ce_weight, distiller, indices, scale)
    return parts, {n: g.copy() for n, g in trainable(model, distiller)[1].items()}


def test_topk_cache_with_k_equal_to_v_is_the_live_teacher(tmp_path):
    teachers = [(minillm_teacher(tmp_path), 0.7), (ngram_teacher(), 0.3)]
    config = DistillConfig(kl_weight=0.9, temperature=2.0)
    data, indices = sequences(4), np.array([2, 0, 3])
    model = student()
    live = grads_of(model, KnowledgeTransfer(model, teachers, config), data[indices], indices, 0.2)
    offline = KnowledgeTransfer(model, teachers, config)
    for link in offline.links:
        offline.attach_cache(link, TeacherOutputCache(tmp_path / link.teacher.name, link.teacher.name,
                                                      V, 2.0, len(data), T))
    for attempt in ("filling the cache", "reading it back"):
        cached = grads_of(model, offline, data[indices], indices, 0.2)
        for name in ("kl.minillm", "kl.ngram", "total"):      # the cache stores float32 log-probs
            assert cached[0][name] == pytest.approx(live[0][name], rel=1e-6), (attempt, name)
        for name, g in live[1].items():
            np.testing.assert_allclose(cached[1][name], g, rtol=1e-5, atol=1e-8, err_msg=attempt)


def record_steps(optimizer):
    """Make optimizer.step record a copy of the (clipped) gradients it is given."""
    seen, real_step = [], optimizer.step

    def step(params, grads, lr=None):
        seen.append({n: g.copy() for n, g in grads.items()})
        return real_step(params, grads, lr)
    optimizer.step = step
    return seen


def test_two_accumulated_micro_batches_are_one_batch_of_twice_the_size(tmp_path):
    """grad_accum_steps 2 with batch b covers the same sequences as batch 2b, and each
    micro-batch is scaled 1/2: the same gradients, logged losses and first update. No clipping
    here (grad_clip 0), so a wrong scale cannot be hidden by the clip; InfoNCE is off because
    its negatives are the batch, so it is not a sum over sequences."""
    data = sequences(12, seed=4)
    teacher = minillm_teacher(tmp_path)
    config = DistillConfig(kl_weight=0.8, hidden_weight=0.5, layer_map='{"minillm": {"2": 1}}')
    runs = {}
    for batch_size, accum in ((4, 2), (8, 1)):
        model = student(dtype=np.float32)
        distiller = KnowledgeTransfer(model, [(teacher, 0.6), (ngram_teacher(), 0.4)], config)
        optimizer = make_optimizer(model, distiller, 1e-3)
        seen = record_steps(optimizer)
        run = TrainConfig(steps=1, batch_size=batch_size, lr=1e-3, grad_accum_steps=accum,
                          ce_weight=0.2, grad_clip=0.0)
        metrics = tmp_path / f"metrics_{accum}.jsonl"
        train(model, optimizer, data, [], run, distiller, metrics_path=metrics)
        runs[accum] = (seen[0], trainable(model, distiller)[0], metrics.read_text())
    assert set(micro_batch(data, 0, 4, 0)[0]) | set(micro_batch(data, 1, 4, 0)[0]) == \
        set(micro_batch(data, 0, 8, 0)[0])
    (grads2, params2, log2), (grads1, params1, log1) = runs[2], runs[1]
    for name in grads1:
        np.testing.assert_allclose(grads2[name], grads1[name], rtol=2e-4, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(params2[name], params1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    row2, row1 = json.loads(log2), json.loads(log1)
    for key in ("ce", "kl.minillm", "hidden.minillm", "kl.ngram", "total", "grad_norm"):
        assert row2[key] == pytest.approx(row1[key], rel=1e-5), key


def expected_kl_dlogits(s, t, tau, direction):
    """d(tau² · mean_positions KL)/d(student logits), written from the formula: with
    p = softmax(s / tau), q = softmax(t / tau), N positions,
      forward KL(q || p): tau (p - q) / N
      reverse KL(p || q): tau p (log p - log q - KL) / N."""
    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    log_p, log_q = log_softmax(s / tau), log_softmax(t / tau)
    p, q = np.exp(log_p), np.exp(log_q)
    n = s.shape[0] * s.shape[1]
    if direction == "forward":
        return tau * (p - q) / n
    kl = (p * (log_p - log_q)).sum(axis=-1, keepdims=True)
    return tau * p * (log_p - log_q - kl) / n


@pytest.mark.parametrize("tau,direction", [(1.0, "forward"), (2.0, "forward"), (0.5, "reverse"),
                                           (3.0, "reverse")])
def test_temperature_and_direction_change_the_gradient_as_the_formula_says(tmp_path, tau, direction):
    teacher = minillm_teacher(tmp_path)
    batch = sequences(3)
    model = student()
    distiller = KnowledgeTransfer(model, [(teacher, 1.0)],
                                  DistillConfig(kl_weight=1.0, temperature=tau, kl_direction=direction))
    _, grads = grads_of(model, distiller, batch)
    s = model.forward(batch[:, :-1])                          # the same forward, kept for backward
    t = teacher.forward(batch[:, :-1])[0]
    model.zero_grad()
    model.backward(expected_kl_dlogits(s, t, tau, direction))
    for name, g in model.grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-9, atol=1e-14, err_msg=name)


def test_teacher_weight_scales_exactly_its_share(tmp_path):
    """G(w) = G_others + w · G_teacher: the weight multiplies the teacher's gradient (KL and
    hidden terms) and its share of the logged loss, and nothing else."""
    minillm, ngram = minillm_teacher(tmp_path), ngram_teacher()
    config = DistillConfig(kl_weight=0.8, hidden_weight=0.5, layer_map='{"minillm": {"3": 2}}')
    batch = sequences(2)
    model = student()
    results = {}
    for w in (0.0, 0.5, 1.0):
        distiller = KnowledgeTransfer(model, [(minillm, w), (ngram, 0.3)], config)
        results[w] = grads_of(model, distiller, batch, ce_weight=0.2)
    alone = grads_of(model, KnowledgeTransfer(model, [(minillm, 1.0)], config), batch, ce_weight=0.0)
    (p0, g0), (p5, g5), (p1, g1) = results[0.0], results[0.5], results[1.0]
    minillm_share = 0.8 * p1["kl.minillm"] + 0.5 * p1["hidden.minillm"]
    assert p1["total"] - p0["total"] == pytest.approx(minillm_share, rel=1e-10)
    assert p5["total"] - p0["total"] == pytest.approx(0.5 * minillm_share, rel=1e-10)
    for name in g1:
        np.testing.assert_allclose(g5[name] - g0[name], 0.5 * (g1[name] - g0[name]), rtol=1e-8, atol=1e-14)
        np.testing.assert_allclose(g1[name] - g0[name], alone[1][name], rtol=1e-8, atol=1e-14)
    assert any(np.abs(g1[n] - g0[n]).max() > 1e-6 for n in g1)     # the teacher does move it


def test_offline_cache_refuses_what_it_cannot_serve(tmp_path):
    model = student()
    cache = TeacherOutputCache(tmp_path / "c", "ngram", 4, 1.0, 4, T)
    for config, message in ((DistillConfig(kl_direction="reverse"), "forward KL only"),
                            (DistillConfig(temperature=2.0), "temperature 1.0 cannot serve")):
        distiller = KnowledgeTransfer(model, [(ngram_teacher(), 1.0)], config)
        with pytest.raises(ValueError, match=message):
            distiller.attach_cache(distiller.links[0], cache)


def test_minillm_teacher_is_the_saved_model(tmp_path):
    """The checkpoint teacher used above is the model that was saved (not a fresh init)."""
    teacher = minillm_teacher(tmp_path)
    assert isinstance(teacher, TransformerTeacher) and teacher.model.dtype == np.float64
    again = minillm_teacher(tmp_path / "again")
    ids = sequences(1)[:, :-1]
    np.testing.assert_array_equal(teacher.forward(ids)[0], again.forward(ids)[0])
