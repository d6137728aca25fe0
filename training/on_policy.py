"""On-policy distillation (GKD, Agarwal et al. 2024): the student writes, the teacher scores.

Off-policy distillation scores the student on the training text. At inference the student
reads its own tokens instead, and its mistakes lead it where the training text never went.
GKD trains on a mix: with probability lambda (`--on_policy_fraction`) a micro-batch is the
student's own continuation of a training prompt, otherwise the usual data batch.

    training sequence   [t_0 ... t_P-1 | t_P ...        t_M-1]     (M = max_seq_length)
    student batch       [t_0 ... t_P-1 | s_P ...        s_M-1]     s ~ student, temperature 1
    loss positions                   ^ ... the L = M - P inputs that predict s_P .. s_M-1

The teachers then score those positions in one forward pass and the token-level divergence
(forward KL, reverse KL or the generalized JSD of --jsd_beta) is computed there only: the
sampled tokens are data, the sampling itself is not differentiated (GKD, section 3). There is
no cross-entropy on a student batch: its "labels" are the student's own guesses.

Which micro-batches are student-written is a pure function of (seed, micro-batch number), and
so are the samples, so --resume replays the same run.

MiniLLM (Gu et al. 2024, `--objective minillm`) optimises the reverse KL of whole sequences
instead, with a policy gradient: its student batches are sampled from a mix of teacher and
student (mixed_student_batch), and the loss on them is losses.minillm_forward's surrogate.
"""
import numpy as np

from mini_llm import backend
from mini_llm.generate import generate
from mini_llm.model.kv_cache import KVCache
from mini_llm.model.layers import softmax

STREAM = 104729            # a fixed third seed word: these draws do not collide with others


def is_student_batch(seed, m, fraction):
    """True for the micro-batches (a share `fraction` of them) the student writes itself."""
    if fraction <= 0:
        return False
    return bool(np.random.default_rng((seed, m, STREAM)).random() < fraction)


def written_mask(rows, M, new_tokens):
    """(rows, M-1): 1 at the input positions whose next token was written (the last
    new_tokens tokens of M): input position t predicts token t + 1."""
    mask = np.zeros((rows, M - 1))
    mask[:, M - 1 - new_tokens:] = 1.0
    return mask


def student_batch(student, batch, new_tokens, seed):
    """batch (b, M+1) training tokens -> (ids (b, M), mask (b, M-1)): the first M - L tokens of
    each row as the prompt, the last L = new_tokens sampled from the student (temperature 1,
    KV cache); mask is 1 at the input positions whose next token the student wrote."""
    M = batch.shape[1] - 1
    prompt = batch[:, :M - new_tokens]                                     # (b, P)
    ids = generate(student, prompt, new_tokens, temperature=1.0, seed=seed)  # (b, M)
    return ids, written_mask(len(ids), M, new_tokens)


def mixed_student_batch(student, teacher, batch, new_tokens, alpha, seed):
    """MiniLLM's teacher-mixed sampling (Gu et al. 2024, section 2.2): like student_batch, but
    each of the last L tokens is drawn from p~ = alpha p_teacher + (1 - alpha) q_student, which
    keeps early, poor students from writing degenerate text. Returns (ids (b, M), mask
    (b, M-1), sampling_probs (b, M-1): p~ of each sampled token, 0 elsewhere)."""
    M = batch.shape[1] - 1
    ids = np.asarray(batch[:, :M - new_tokens])                             # (b, P) the prompt
    rng = np.random.default_rng(seed)
    s_cache = KVCache(student, len(ids))
    t_model = getattr(teacher, "model", None)                               # an n-gram has none
    t_cache = KVCache(t_model, len(ids)) if t_model is not None else None
    unseen, probs = ids, []
    for _ in range(new_tokens):
        s_logits = student.forward(unseen, keep_cache=False, kv_cache=s_cache)[:, -1]   # (b, V)
        q = softmax(backend.to_host(s_logits).astype(np.float64))
        t_logits = (t_model.forward(unseen, keep_cache=False, kv_cache=t_cache) if t_model is not None
                    else teacher.forward(ids)[0])[:, -1]
        p = softmax(backend.to_host(t_logits).astype(np.float64))
        mix = alpha * p + (1 - alpha) * q                                    # (b, V)
        y = np.array([rng.choice(mix.shape[-1], p=row / row.sum()) for row in mix])
        probs.append(mix[np.arange(len(y)), y])
        ids = np.concatenate([ids, y[:, None]], axis=1)
        unseen = y[:, None]
    mask = written_mask(len(ids), M, new_tokens)
    sampling_probs = np.zeros(mask.shape)
    sampling_probs[mask > 0] = np.stack(probs, axis=1).reshape(-1)          # row by row
    return ids, mask, sampling_probs


OBJECTIVES = ("gkd", "minillm")


def check_settings(fraction, new_tokens, max_seq_length, has_teacher, topk_cache=False,
                   objective="gkd", alpha=0.2):
    """One clear error for settings that cannot work (called before any work)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"--on_policy_fraction must lie in [0, 1], got {fraction}")
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"--mix_alpha must lie in [0, 1], got {alpha}")
    if objective == "minillm" and fraction == 0:
        raise ValueError("--objective minillm scores the student's own samples: give "
                         "--on_policy_fraction > 0")
    if fraction == 0:
        return
    if not has_teacher:
        raise ValueError("--on_policy_fraction needs a teacher to score the student's samples "
                         "(--teacher, or --use_mock)")
    if not 1 <= new_tokens <= max_seq_length - 2:
        raise ValueError(f"--on_policy_tokens must lie in [1, max_seq_length - 2 = "
                         f"{max_seq_length - 2}], got {new_tokens}")
    if topk_cache:
        raise ValueError("--on_policy_fraction cannot use --teacher_cache_topk: the student's "
                         "samples are new every step, so there is nothing to cache")


def check_teachers(fraction, distiller):
    """On-policy batches need every teacher's scores of the student's own tokens."""
    for link in distiller.links if fraction and distiller else []:
        if not link.same_tokens:
            raise ValueError(f"on-policy distillation needs the teacher's token-level scores of the "
                             f"student's own tokens: teacher {link.teacher.name} has another "
                             f"vocabulary (drop it, or --on_policy_fraction 0)")
