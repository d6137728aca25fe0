"""On-policy (GKD) and sequence-level distillation: the student's own samples, scored by the
teachers at exactly the positions it wrote; teacher-written text as extra training data."""
import json

import numpy as np
import pytest

from mini_llm.generate import generate
from mini_llm.gradcheck import assert_close_grad, numerical_grad
from tests.test_distillation import (T, minillm_teacher, ngram_teacher, one_numba_thread, sequences,  # noqa: F401
                                     student, trainable, zero_all)
from tests.test_train_cli import data, metrics, run_cli  # noqa: F401  (the tiny CLI fixtures)
from training import on_policy, seq_kd
from training.knowledge_transfer import DistillConfig, KnowledgeTransfer
from training.loop import TrainConfig, forward_backward, make_optimizer, train


def test_student_batch_keeps_the_prompt_and_masks_what_the_student_wrote():
    model, batch = student(), sequences(3)                         # (3, T + 1), M = T
    ids, mask = on_policy.student_batch(model, batch, 3, seed=(0, 5))
    M = T
    assert ids.shape == (3, M) and mask.shape == (3, M - 1)
    np.testing.assert_array_equal(ids[:, :M - 3], batch[:, :M - 3])             # the prompt
    np.testing.assert_array_equal(ids, generate(model, batch[:, :M - 3], 3, temperature=1.0, seed=(0, 5)))
    # input position t predicts token t + 1: the last 3 inputs predict the 3 sampled tokens
    np.testing.assert_array_equal(mask, np.repeat([[0, 0, 0, 1, 1, 1]], 3, axis=0))
    again, _ = on_policy.student_batch(model, batch, 3, seed=(0, 5))
    np.testing.assert_array_equal(ids, again)                                    # replayable


def test_share_of_student_batches_is_lambda():
    for fraction in (0.0, 0.3, 1.0):
        share = np.mean([on_policy.is_student_batch(7, m, fraction) for m in range(4000)])
        assert share == pytest.approx(fraction, abs=0.03)
    assert [on_policy.is_student_batch(7, m, 0.5) for m in range(50)] == \
        [on_policy.is_student_batch(7, m, 0.5) for m in range(50)]               # pure function


@pytest.mark.parametrize("beta", [None, 0.0, 0.4, 1.0])
def test_whole_on_policy_step_gradient(tmp_path, beta):
    """One student-written micro-batch (fixed samples), two teachers, JSD(beta) or the KL, hidden
    matching, the mask of written positions: grads == scale · d(total)/d(param)."""
    model = student()
    config = DistillConfig(kl_weight=0.7, hidden_weight=0.4, temperature=2.0, jsd_beta=beta,
                           kl_direction="reverse", layer_map='{"minillm": {"2": 1}}')
    distiller = KnowledgeTransfer(model, [(minillm_teacher(tmp_path), 0.75), (ngram_teacher(), 0.25)], config)
    ids, mask = on_policy.student_batch(model, sequences(2), 3, seed=1)
    scale = 0.5
    zero_all(model, distiller)
    forward_backward(model, ids, 0.0, distiller, None, scale, mask)
    params, grads = trainable(model, distiller)
    analytic = {n: g.copy() / scale for n, g in grads.items()}
    total = lambda: forward_backward(model, ids, 0.0, distiller, None, scale, mask)["total"]
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.1.mlp.down_proj.weight", "lm_head.weight", "proj.minillm.2->1"):
        assert_close_grad(analytic[name], numerical_grad(total, params[name]), name)


def test_only_the_written_positions_count(tmp_path):
    """Changing a teacher's view of the prompt positions changes nothing: with the mask, the
    gradient is the one of the written positions alone."""
    model = student()
    distiller = KnowledgeTransfer(model, [(minillm_teacher(tmp_path), 1.0)], DistillConfig(jsd_beta=0.5))
    ids, mask = on_policy.student_batch(model, sequences(2), 2, seed=3)
    zero_all(model, distiller)
    parts = forward_backward(model, ids, 0.0, distiller, None, 1.0, mask)
    logits = model.forward(ids[:, :-1], keep_cache=False)
    t_logits = distiller.links[0].teacher.forward(ids[:, :-1])[0]
    from training import losses
    expected = losses.jsd_forward(logits[:, -2:], t_logits[:, -2:], 0.5)[0]     # the 2 written
    assert parts["kl.minillm"] == pytest.approx(expected, rel=1e-12)


def test_no_cross_entropy_on_student_batches(tmp_path):
    """With lambda = 1 every micro-batch is student-written: the CE weight cannot matter."""
    data_seq = sequences(8, seed=5)
    teacher = minillm_teacher(tmp_path)
    results = []
    for ce_weight in (0.2, 5.0):
        model = student(dtype=np.float32)
        distiller = KnowledgeTransfer(model, [(teacher, 1.0)], DistillConfig())
        config = TrainConfig(steps=2, batch_size=4, lr=1e-3, ce_weight=ce_weight,
                             on_policy_fraction=1.0, on_policy_tokens=3)
        train(model, make_optimizer(model, distiller, 1e-3), data_seq, [], config, distiller,
              metrics_path=tmp_path / f"m{ce_weight}.jsonl")
        rows = [json.loads(line) for line in open(tmp_path / f"m{ce_weight}.jsonl")]
        assert [r["on_policy"] for r in rows] == [1.0, 1.0]
        results.append({n: p.copy() for n, p in model.params.items()})
    for name in results[0]:
        np.testing.assert_array_equal(results[0][name], results[1][name])


def test_teacher_writes_what_generate_samples(tmp_path):
    teacher = minillm_teacher(tmp_path)
    data_seq = sequences(10, seed=6)
    written, message = seq_kd.load_or_write(tmp_path / "kd", teacher, data_seq, 4, 3, seed=2, eos_id=1)
    assert written.shape == (4, T + 1) and "wrote 4 sequences" in message
    rows = np.linspace(0, 9, 4).astype(int)
    expected = generate(teacher.model, data_seq[rows, :3], T - 3, temperature=1.0, seed=2)     # (4, T)
    stream = np.concatenate([expected, np.ones((4, 1), dtype=np.int64)], axis=1).reshape(-1)
    np.testing.assert_array_equal(written, np.stack([stream[i * T:i * T + T + 1] for i in range(4)]))
    again, message = seq_kd.load_or_write(tmp_path / "kd", teacher, data_seq, 4, 3, seed=2, eos_id=1)
    assert "read from" in message and np.array_equal(again, written)
    (tmp_path / "kd" / "fingerprint.json").write_text("")                    # half-written cache
    _, message = seq_kd.load_or_write(tmp_path / "kd", teacher, data_seq, 4, 3, seed=2, eos_id=1)
    assert "wrote" in message
    teacher.model.params["lm_head.weight"][0, 0] += 1.0                       # other weights
    _, message = seq_kd.load_or_write(tmp_path / "kd", teacher, data_seq, 4, 3, seed=2, eos_id=1)
    assert "wrote" in message


def test_use_mock_runs_every_mode(data, tmp_path):  # noqa: F811
    code, printed = run_cli(data, tmp_path, "--use_mock", "--on_policy_fraction", 0.5,
                            "--on_policy_tokens", 4, "--jsd_beta", 0.3, "--seq_kd", 6)
    assert code == 0
    assert "seq-KD: teacher mock_llama wrote 6 sequences" in printed
    assert "JSD(β=0.3" in printed and "on 0.5 of the micro-batches" in printed
    rows = metrics(tmp_path)
    assert all(0 <= r["on_policy"] <= 1 for r in rows) and any(r["on_policy"] > 0 for r in rows)


BAD = {
    "lambda above 1": (["--use_mock", "--on_policy_fraction", 1.5], "--on_policy_fraction"),
    "lambda below 0": (["--use_mock", "--on_policy_fraction", -0.1], "--on_policy_fraction"),
    "beta outside [0, 1]": (["--use_mock", "--jsd_beta", 2], "--jsd_beta"),
    "on-policy without a teacher": (["--on_policy_fraction", 0.5], "needs a teacher"),
    "on-policy with the top-k cache": (["--use_mock", "--on_policy_fraction", 0.5, "--on_policy_tokens", 4,
                                        "--teacher_cache_topk", 4], "--teacher_cache_topk"),
    "student writes the whole sequence": (["--use_mock", "--on_policy_fraction", 0.5], "--on_policy_tokens"),
    "seq-kd with only an n-gram": (["--teacher", "ngram", "--seq_kd", 3], "n-gram cannot"),
    "negative seq-kd": (["--use_mock", "--seq_kd", -1], "--seq_kd"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_settings_are_one_error_line(case, data, tmp_path, capsys):  # noqa: F811
    flags, named = BAD[case]
    code, _ = run_cli(data, tmp_path / "out", *flags)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and named in err[0], err


def test_on_policy_refuses_a_teacher_with_another_vocabulary(tmp_path):
    from tokenizer.bpe_tokenizer import BPETokenizer
    text = ["the cat sat on the mat and the dog sat on the log"]
    s_tok = BPETokenizer(vocab_size=262, special_tokens=["<|endoftext|>"]).train(text)
    t_tok = BPETokenizer(vocab_size=270, special_tokens=["<|endoftext|>"]).train(text)
    model = student(vocab_size=s_tok.vocab_size)
    distiller = KnowledgeTransfer(model, [(minillm_teacher(tmp_path, t_tok.vocab_size, t_tok), 1.0)],
                                  DistillConfig(cross_vocab=True), s_tok)
    on_policy.check_teachers(0.0, distiller)                         # off: nothing to check
    with pytest.raises(ValueError, match="teacher minillm has another vocabulary"):
        on_policy.check_teachers(0.5, distiller)


# ----------------------------------------------------------------------------- MiniLLM objective

def test_mixed_sampling_with_alpha_zero_is_the_student(tmp_path):
    """alpha = 0: the mix is the student alone, so the recorded probabilities are the student's
    own q(y_t); alpha = 1: the teacher's p(y_t)."""
    model, batch = student(), sequences(2)
    teacher = minillm_teacher(tmp_path)
    for alpha, scorer in ((0.0, model), (1.0, teacher.model)):
        ids, mask, probs = on_policy.mixed_student_batch(model, teacher, batch, 3, alpha, seed=4)
        np.testing.assert_array_equal(ids[:, :T - 3], batch[:, :T - 3])
        logits = scorer.forward(ids[:, :-1], keep_cache=False)
        q = np.exp(logits - logits.max(-1, keepdims=True))
        q /= q.sum(-1, keepdims=True)
        expected = np.take_along_axis(q, ids[:, 1:, None], -1)[..., 0] * mask
        np.testing.assert_allclose(probs, expected, rtol=1e-9, atol=1e-15)


def test_whole_minillm_step_gradient(tmp_path):
    """A teacher-mixed batch through forward_backward with its sampling probabilities: the
    gradient of the reported surrogate (rewards and weights fixed by the samples) is exact."""
    from training import losses
    model = student()
    teacher = minillm_teacher(tmp_path)
    distiller = KnowledgeTransfer(model, [(teacher, 0.7), (ngram_teacher(), 0.3)], DistillConfig(kl_weight=0.9))
    ids, mask, probs = on_policy.mixed_student_batch(model, teacher, sequences(2), 3, 0.2, seed=2)
    zero_all(model, distiller)
    parts = forward_backward(model, ids, 0.0, distiller, None, 1.0, mask, probs)
    params, grads = trainable(model, distiller)
    analytic = {n: g.copy() for n, g in grads.items()}
    # the surrogate with its constants frozen at this batch's values, as a function of the weights
    frozen = {}
    for link in distiller.links:
        s = model.forward(ids[:, :-1], keep_cache=False)
        t = link.teacher.forward(ids[:, :-1])[0]
        frozen[link.teacher.name] = losses.minillm_forward(s, t, ids[:, 1:], probs, mask)[1]

    def total():
        s = model.forward(ids[:, :-1], keep_cache=False)
        value = 0.0
        for link in distiller.links:
            log_q, log_p, _, tokens, R, w, u, _ = frozen[link.teacher.name]
            log_q = s - s.max(-1, keepdims=True)
            log_q = log_q - np.log(np.exp(log_q).sum(-1, keepdims=True))
            kl = (np.exp(log_q) * (log_q - log_p)).sum(-1)
            log_q_y = np.take_along_axis(log_q, tokens[..., None], -1)[..., 0]
            value += link.weight * 0.9 * (u * w * (kl - R * log_q_y)).sum()
        return value
    assert parts["total"] == pytest.approx(total(), rel=1e-10)
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.v_proj.weight", "lm_head.weight"):
        assert_close_grad(analytic[name], numerical_grad(total, params[name]), name)


def test_minillm_settings_are_checked(data, tmp_path, capsys):  # noqa: F811
    for flags, named in ((["--objective", "minillm"], "--on_policy_fraction > 0"),
                         (["--on_policy_fraction", 0.5, "--on_policy_tokens", 4, "--objective", "minillm",
                           "--mix_alpha", 1.5], "--mix_alpha")):
        code, _ = run_cli(data, tmp_path / "out", "--use_mock", *flags)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and named in err[0], err
    code, printed = run_cli(data, tmp_path / "ok", "--use_mock", "--on_policy_fraction", 1, "--on_policy_tokens", 4,
                            "--objective", "minillm")
    assert code == 0 and "MiniLLM: samples from 0.2·teacher + 0.8·student" in printed
