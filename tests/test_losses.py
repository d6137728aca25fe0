"""Tests for training/losses.py, the distillation losses.

Every backward is checked against float64 central differences (mini_llm/gradcheck.py) for each
input that receives a gradient, with a mask that leaves some positions out. The other tests
pin what each loss means: KL is zero at the teacher, the top-k KL with k = V is the full KL,
the cosine loss ignores scale, ULD is the L1 distance of sorted vectors (computed here without
the library), and a student trained on KL alone becomes its teacher.
"""
import numpy as np
import pytest

from mini_llm.gradcheck import assert_close_grad, numerical_grad
from mini_llm.model.layers import log_softmax, softmax
from training import hidden_losses, losses

B, T, V, CS, CT = 2, 3, 7, 5, 4
MASK = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])          # positions (0, 2) and (1, 1) left out
DLOSS = 0.7                                                   # an upstream gradient that is not 1


def rng():
    return np.random.default_rng(0)


def hidden_inputs(r):
    return r.normal(size=(B, T, CS)), r.normal(size=(CT, CS)), r.normal(size=(B, T, CT))


def check_logit_grad(forward, backward, student, name, mask):
    """Gradient check of a logit loss; also: no gradient reaches left-out positions."""
    _, cache = forward(student)
    dz = backward(DLOSS, cache)
    assert dz.shape == student.shape and dz.dtype == student.dtype
    assert_close_grad(dz, numerical_grad(lambda: DLOSS * forward(student)[0], student), name)
    if mask is not None:
        assert np.all(dz[mask == 0] == 0)


def check_hidden_grads(forward, backward, h, w, name, mask):
    _, cache = forward(h, w)
    dh, dw = backward(DLOSS, cache)
    f = lambda: DLOSS * forward(h, w)[0]
    assert_close_grad(dh, numerical_grad(f, h), f"{name} dstudent_h")
    assert_close_grad(dw, numerical_grad(f, w), f"{name} dproj_w")
    if mask is not None:
        assert np.all(dh[mask == 0] == 0)


# ----------------------------------------------------------------------------- gradient checks

@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("mask", [None, MASK])
def test_kl_gradient(direction, tau, mask):
    r = rng()
    student, teacher = r.normal(size=(B, T, V)) * 2, r.normal(size=(B, T, V)) * 2
    check_logit_grad(lambda z: losses.kl_forward(z, teacher, tau, direction, mask),
                     losses.kl_backward, student, f"kl {direction} tau={tau}", mask)


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("k", [1, 3])
def test_topk_kl_gradient(tau, k):
    r = rng()
    student, teacher = r.normal(size=(B, T, V)) * 2, r.normal(size=(B, T, V)) * 2
    ids, logprobs = losses.teacher_topk(teacher, k, tau)
    check_logit_grad(lambda z: losses.topk_kl_forward(z, ids, logprobs, tau, MASK),
                     losses.topk_kl_backward, student, f"topk kl k={k} tau={tau}", MASK)


@pytest.mark.parametrize("mask", [None, MASK])
def test_hidden_mse_gradient(mask):
    h, w, teacher_h = hidden_inputs(rng())
    check_hidden_grads(lambda h, w: hidden_losses.hidden_mse_forward(h, w, teacher_h, mask),
                       hidden_losses.hidden_mse_backward, h, w, "hidden mse", mask)


@pytest.mark.parametrize("mask", [None, MASK])
def test_hidden_cosine_gradient(mask):
    h, w, teacher_h = hidden_inputs(rng())
    check_hidden_grads(lambda h, w: hidden_losses.hidden_cosine_forward(h, w, teacher_h, mask),
                       hidden_losses.hidden_cosine_backward, h, w, "hidden cosine", mask)


@pytest.mark.parametrize("tau", [0.1, 1.0])
@pytest.mark.parametrize("mask", [None, MASK])
def test_contrastive_gradient(tau, mask):
    h, w, teacher_h = hidden_inputs(rng())
    check_hidden_grads(lambda h, w: hidden_losses.contrastive_forward(h, w, teacher_h, tau, mask),
                       hidden_losses.contrastive_backward, h, w, f"contrastive tau={tau}", mask)


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("vt", [5, 7, 9])
def test_uld_gradient(tau, vt):
    r = rng()
    student, teacher = r.normal(size=(B, T, V)) * 2, r.normal(size=(B, T, vt)) * 2
    check_logit_grad(lambda z: losses.uld_forward(z, teacher, tau, MASK),
                     losses.uld_backward, student, f"uld Vt={vt} tau={tau}", MASK)


# ----------------------------------------------------------------------------- what each loss means

def reference_softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_log_softmax_is_stable():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1001.0, -999.0]])
    expected = np.log(reference_softmax(np.array([1.0, 2.0, 0.0])))
    np.testing.assert_allclose(log_softmax(x)[0], expected, rtol=1e-12)
    np.testing.assert_allclose(softmax(x).sum(axis=-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_zero_at_teacher(direction):
    logits = rng().normal(size=(B, T, V))
    loss, cache = losses.kl_forward(logits, logits.copy(), 2.0, direction)
    assert abs(loss) < 1e-14
    assert np.abs(losses.kl_backward(1.0, cache)).max() < 1e-14


def test_kl_matches_definition_and_directions_differ():
    r = rng()
    student, teacher = r.normal(size=(B, T, V)), r.normal(size=(B, T, V))
    tau = 2.0
    expected = {"forward": 0.0, "reverse": 0.0}
    counted = list(zip(*np.nonzero(MASK)))
    for b, t in counted:
        p_s, p_t = reference_softmax(student[b, t] / tau), reference_softmax(teacher[b, t] / tau)
        expected["forward"] += np.sum(p_t * np.log(p_t / p_s)) * tau ** 2 / len(counted)
        expected["reverse"] += np.sum(p_s * np.log(p_s / p_t)) * tau ** 2 / len(counted)
    for direction, value in expected.items():
        loss, _ = losses.kl_forward(student, teacher, tau, direction, MASK.astype(bool))
        assert loss == pytest.approx(value, rel=1e-12)
    assert expected["forward"] != pytest.approx(expected["reverse"], rel=1e-3)


def test_teacher_topk_is_sorted_top_k():
    teacher = rng().normal(size=(B, T, V))
    ids, logprobs = losses.teacher_topk(teacher, 3, 2.0)
    log_pt = log_softmax(teacher / 2.0)
    np.testing.assert_array_equal(ids, np.argsort(-teacher, axis=-1)[..., :3])
    np.testing.assert_allclose(logprobs, np.take_along_axis(log_pt, ids, axis=-1), rtol=1e-14)
    one = losses.teacher_topk(np.array([[[0.0, 2.0, 1.0]]]), 2)
    np.testing.assert_array_equal(one[0], [[[1, 2]]])
    np.testing.assert_allclose(one[1], [[[-0.4076, -1.4076]]], atol=1e-4)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_topk_kl_with_k_equal_v_is_full_kl(tau):
    r = rng()
    student, teacher = r.normal(size=(B, T, V)), r.normal(size=(B, T, V))
    ids, logprobs = losses.teacher_topk(teacher, V, tau)
    loss_k, cache_k = losses.topk_kl_forward(student, ids, logprobs, tau, MASK)
    loss, cache = losses.kl_forward(student, teacher, tau, "forward", MASK)
    assert loss_k == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(losses.topk_kl_backward(1.0, cache_k),
                               losses.kl_backward(1.0, cache), atol=1e-15)


def test_topk_kl_matches_bucket_definition():
    r = rng()
    student, teacher = r.normal(size=(B, T, V)), r.normal(size=(B, T, V))
    ids, logprobs = losses.teacher_topk(teacher, 3, 1.0)
    expected = 0.0
    for b in range(B):
        for t in range(T):
            p_s, p_t = reference_softmax(student[b, t]), reference_softmax(teacher[b, t])
            top = np.argsort(-p_t)[:3]
            q = np.append(p_t[top], 1 - p_t[top].sum())
            p = np.append(p_s[top], 1 - p_s[top].sum())
            expected += np.sum(q * np.log(q / p)) / (B * T)
    assert losses.topk_kl_forward(student, ids, logprobs)[0] == pytest.approx(expected, rel=1e-10)


def test_hidden_mse_zero_for_identical_states():
    h = rng().normal(size=(B, T, CS))
    loss, cache = hidden_losses.hidden_mse_forward(h, np.eye(CS), h.copy())
    dh, dw = hidden_losses.hidden_mse_backward(1.0, cache)
    assert loss == 0.0 and not dh.any() and not dw.any()


def test_hidden_cosine_ignores_teacher_scale():
    h, w, teacher_h = hidden_inputs(rng())
    loss, _ = hidden_losses.hidden_cosine_forward(h, w, teacher_h, MASK)
    scale = np.array([3.0, 0.01, 250.0])[None, :, None]       # a different positive scale per time
    scaled, _ = hidden_losses.hidden_cosine_forward(h, w, teacher_h * scale, MASK)
    assert scaled == pytest.approx(loss, rel=1e-12)
    assert hidden_losses.hidden_cosine_forward(h, w, h @ w.T * 5.0)[0] == pytest.approx(0.0, abs=1e-14)


def test_hidden_cosine_zero_vector_is_finite():
    h, w, teacher_h = hidden_inputs(rng())
    teacher_h[0, 0] = 0.0
    loss, cache = hidden_losses.hidden_cosine_forward(h, w, teacher_h)
    dh, dw = hidden_losses.hidden_cosine_backward(1.0, cache)
    assert np.isfinite(loss) and np.isfinite(dh).all() and np.isfinite(dw).all()


def test_contrastive_prefers_matching_teacher():
    r = rng()
    teacher_h = r.normal(size=(4, 8, 16))                     # 32 positions, 16 wide: far apart
    shuffled = teacher_h.reshape(32, 16)[r.permutation(32)].reshape(teacher_h.shape)
    matched, _ = hidden_losses.contrastive_forward(teacher_h, np.eye(16), teacher_h)
    mismatched, _ = hidden_losses.contrastive_forward(shuffled, np.eye(16), teacher_h)
    assert matched < 0.1 < np.log(32) < mismatched           # log N = 3.47: picking at random


def test_contrastive_no_counted_position():
    h, w, teacher_h = hidden_inputs(rng())
    loss, cache = hidden_losses.contrastive_forward(h, w, teacher_h, mask=np.zeros((B, T)))
    dh, dw = hidden_losses.contrastive_backward(1.0, cache)
    assert loss == 0.0 and dh.shape == h.shape and not dh.any() and not dw.any()


@pytest.mark.parametrize("vt", [4, 7, 11])
def test_uld_is_l1_of_sorted_probabilities(vt):
    r = rng()
    student, teacher = r.normal(size=(B, T, V)), r.normal(size=(B, T, vt))
    tau, expected = 1.5, 0.0
    counted = list(zip(*np.nonzero(MASK)))
    for b, t in counted:
        p_s = sorted(reference_softmax(student[b, t] / tau), reverse=True)
        p_t = sorted(reference_softmax(teacher[b, t] / tau), reverse=True)
        width = max(V, vt)
        padded_s, padded_t = np.zeros(width), np.zeros(width)
        padded_s[:V], padded_t[:vt] = p_s, p_t
        expected += np.abs(padded_s - padded_t).sum() / len(counted)
    assert losses.uld_forward(student, teacher, tau, MASK)[0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_student_learns_teacher_by_gradient_descent(direction):
    r = rng()
    teacher = r.normal(size=(1, 2, 5)) * 2
    student = np.zeros_like(teacher)
    for _ in range(300):
        _, cache = losses.kl_forward(student, teacher, direction=direction)
        student -= 4.0 * losses.kl_backward(1.0, cache)
    loss, _ = losses.kl_forward(student, teacher, direction=direction)
    assert loss < 1e-4
    np.testing.assert_allclose(softmax(student), softmax(teacher), atol=1e-2)


def test_float32_matches_float64():
    r = rng()
    z, zt = r.normal(size=(B, T, V)), r.normal(size=(B, T, V))
    h, w, th = hidden_inputs(r)
    ids, logprobs = losses.teacher_topk(zt, 3, 2.0)
    logit_losses = [
        (lambda s, t: losses.kl_forward(s, t, 2.0, "reverse", MASK), losses.kl_backward),
        (lambda s, t: losses.topk_kl_forward(s, ids, logprobs.astype(t.dtype), 2.0, MASK),
         losses.topk_kl_backward),
        (lambda s, t: losses.uld_forward(s, t[..., :5], 2.0, MASK), losses.uld_backward),
    ]
    for forward, backward in logit_losses:
        l64, c64 = forward(z, zt)
        l32, c32 = forward(z.astype(np.float32), zt.astype(np.float32))
        g32 = backward(1.0, c32)
        assert l32 == pytest.approx(l64, rel=1e-5) and g32.dtype == np.float32
        np.testing.assert_allclose(g32, backward(1.0, c64), atol=1e-6)
    for forward, backward in [(hidden_losses.hidden_mse_forward, hidden_losses.hidden_mse_backward),
                              (hidden_losses.hidden_cosine_forward, hidden_losses.hidden_cosine_backward),
                              (hidden_losses.contrastive_forward, hidden_losses.contrastive_backward)]:
        l64, c64 = forward(h, w, th, mask=MASK)
        l32, c32 = forward(*(a.astype(np.float32) for a in (h, w, th)), mask=MASK)
        grads32 = backward(1.0, c32)
        assert l32 == pytest.approx(l64, rel=1e-5) and all(g.dtype == np.float32 for g in grads32)
        for g32, g64 in zip(grads32, backward(1.0, c64)):
            np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- against PyTorch

def test_losses_match_torch_autograd():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    r = rng()
    z, zt = r.normal(size=(B, T, V)), r.normal(size=(B, T, V))
    h, w, th = hidden_inputs(r)
    keep = torch.tensor(MASK.reshape(-1) > 0)

    def torch_check(ours, backward, reference, *arrays):
        tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
        expected = reference(*tensors)
        expected.backward()
        loss, cache = ours
        grads = backward(1.0, cache)
        grads = grads if isinstance(grads, tuple) else (grads,)
        assert loss == pytest.approx(expected.item(), rel=1e-12)
        for g, t in zip(grads, tensors):
            np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-14)

    target = F.log_softmax(torch.tensor(zt) / 2, -1).reshape(-1, V)[keep]
    forward_kl = lambda s: F.kl_div(F.log_softmax(s / 2, -1).reshape(-1, V)[keep], target,
                                    log_target=True, reduction="batchmean") * 4
    torch_check(losses.kl_forward(z, zt, 2.0, "forward", MASK), losses.kl_backward, forward_kl, z)
    reverse_kl = lambda s: F.kl_div(target, F.log_softmax(s / 2, -1).reshape(-1, V)[keep],
                                    log_target=True, reduction="batchmean") * 4
    torch_check(losses.kl_forward(z, zt, 2.0, "reverse", MASK), losses.kl_backward, reverse_kl, z)

    cosine = lambda h_, w_: (1 - F.cosine_similarity(h_ @ w_.T, torch.tensor(th), dim=-1)).mean()
    torch_check(hidden_losses.hidden_cosine_forward(h, w, th), hidden_losses.hidden_cosine_backward, cosine, h, w)

    def info_nce(h_, w_):
        z_s = F.normalize((h_ @ w_.T).reshape(-1, CT)[keep], dim=-1)
        z_t = F.normalize(torch.tensor(th).reshape(-1, CT)[keep], dim=-1)
        return F.cross_entropy(z_s @ z_t.T / 0.1, torch.arange(int(keep.sum())))
    torch_check(hidden_losses.contrastive_forward(h, w, th, 0.1, MASK), hidden_losses.contrastive_backward,
                info_nce, h, w)

    def uld(s):
        p_s = torch.sort(F.softmax(s, -1), -1, descending=True).values
        p_t = torch.sort(F.softmax(torch.tensor(zt[..., :5]), -1), -1, descending=True).values
        return (p_s - F.pad(p_t, (0, V - 5))).abs().sum(-1).mean()
    torch_check(losses.uld_forward(z, zt[..., :5]), losses.uld_backward, uld, z)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_raises_one_line():
    z = np.zeros((B, T, V))
    h, w, th = hidden_inputs(rng())
    cases = [
        (lambda: losses.kl_forward(z, z, direction="sideways"), "direction"),
        (lambda: losses.kl_forward(z, np.zeros((B, T, V + 1))), "uld_forward"),
        (lambda: losses.kl_forward(z, z, mask=np.ones((B, T + 1))), "mask has shape"),
        (lambda: losses.kl_forward(z, z, temperature=0.0), "temperature"),
        (lambda: losses.teacher_topk(z, V + 1), "k = 8"),
        (lambda: losses.topk_kl_forward(z, np.full((B, T, 2), V), np.zeros((B, T, 2))), "[0, 7)"),
        (lambda: hidden_losses.hidden_mse_forward(h, w.T, th), "proj_w has shape"),
        (lambda: losses.uld_forward(z[0], z), "3 axes"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- generalized JSD (GKD)

@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_jsd_gradient(beta, tau):
    r = rng()
    student, teacher = r.normal(size=(B, T, V)) * 2, r.normal(size=(B, T, V)) * 2
    check_logit_grad(lambda z: losses.jsd_forward(z, teacher, beta, tau, MASK),
                     losses.jsd_backward, student, f"jsd beta={beta} tau={tau}", MASK)


def test_jsd_ends_are_the_kls_and_its_limits_approach_them():
    r = rng()
    s, t = r.normal(size=(B, T, V)), r.normal(size=(B, T, V))
    forward, reverse = losses.kl_forward(s, t, 1.0, "forward")[0], losses.kl_forward(s, t, 1.0, "reverse")[0]
    assert losses.jsd_forward(s, t, 0.0)[0] == forward and losses.jsd_forward(s, t, 1.0)[0] == reverse
    eps = 1e-4                                    # JSD(b)/b -> KL(p||q), JSD(b)/(1-b) -> KL(q||p)
    assert losses.jsd_forward(s, t, eps)[0] / eps == pytest.approx(forward, rel=1e-3)
    assert losses.jsd_forward(s, t, 1 - eps)[0] / eps == pytest.approx(reverse, rel=1e-3)
    assert losses.jsd_forward(s, s.copy(), 0.5)[0] == pytest.approx(0.0, abs=1e-15)
    # bounded by the binary entropy H(beta), reached when the two do not overlap
    far = np.where(np.arange(V) < V // 2, 40.0, -40.0) * np.ones((B, T, V))
    for beta in (0.2, 0.5):
        entropy = -beta * np.log(beta) - (1 - beta) * np.log(1 - beta)
        assert losses.jsd_forward(far, -far, beta)[0] == pytest.approx(entropy, rel=1e-9)
        assert losses.jsd_forward(s, t, beta)[0] < entropy
    with pytest.raises(ValueError, match="beta must lie in"):
        losses.jsd_forward(s, t, 1.5)


def test_jsd_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    r = rng()
    z, zt = r.normal(size=(B, T, V)), r.normal(size=(B, T, V))
    beta, tau = 0.3, 2.0
    zs = torch.tensor(z, requires_grad=True)
    p, q = torch.softmax(torch.tensor(zt) / tau, -1), torch.softmax(zs / tau, -1)
    m = beta * p + (1 - beta) * q
    per_position = (beta * p * (p / m).log() + (1 - beta) * q * (q / m).log()).sum(-1)
    expected = tau ** 2 * (per_position * torch.tensor(MASK)).sum() / MASK.sum()
    expected.backward()
    loss, cache = losses.jsd_forward(z, zt, beta, tau, MASK)
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    np.testing.assert_allclose(losses.jsd_backward(1.0, cache), zs.grad.numpy(), rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------------------- MiniLLM surrogate

def minillm_inputs(r):
    student, teacher = r.normal(size=(B, T, V)) * 2, r.normal(size=(B, T, V)) * 2
    tokens = r.integers(0, V, size=(B, T))
    sampling_probs = r.uniform(0.05, 0.9, size=(B, T)) * MASK
    return student, teacher, tokens, sampling_probs


def test_minillm_surrogate_gradient_is_the_policy_gradient_formula():
    """For fixed samples, d(surrogate)/d(student logits) = u w [dKL(q||p)/dz - R dlog q(y)/dz]
    with the reward terms w, R held constant: checked against central differences of the
    formula written here, with w and R frozen at their values."""
    r = rng()
    student, teacher, tokens, probs = minillm_inputs(r)
    value, cache = losses.minillm_forward(student, teacher, tokens, probs, MASK)
    _, _, _, _, R, w, u, _ = cache

    def frozen_surrogate():
        log_q = student - student.max(-1, keepdims=True)
        log_q = log_q - np.log(np.exp(log_q).sum(-1, keepdims=True))
        log_p = teacher - np.log(np.exp(teacher).sum(-1, keepdims=True))
        kl = (np.exp(log_q) * (log_q - log_p)).sum(-1)
        log_q_y = np.take_along_axis(log_q, tokens[..., None], -1)[..., 0]
        return DLOSS * (u * w * (kl - R * log_q_y)).sum()
    assert DLOSS * value == pytest.approx(frozen_surrogate(), rel=1e-12)
    dz = losses.minillm_backward(DLOSS, cache)
    assert_close_grad(dz, numerical_grad(frozen_surrogate, student), "minillm surrogate")
    assert np.all(dz[MASK == 0] == 0)


def test_minillm_rewards_and_weights_follow_the_paper():
    """One row of 3 sampled tokens: r_t = log p(y_t) - log q(y_t), R_t the mean of the later
    rewards (length-normalised), w_t = q(y_t) / p~(y_t)."""
    r = rng()
    student, teacher = r.normal(size=(1, 3, V)), r.normal(size=(1, 3, V))
    tokens, mask = np.array([[2, 0, 5]]), np.ones((1, 3))
    probs = np.array([[0.3, 0.2, 0.1]])
    _, cache = losses.minillm_forward(student, teacher, tokens, probs, mask)
    _, _, _, _, R, w, u, _ = cache
    sm = lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    q_y = np.take_along_axis(sm(student), tokens[..., None], -1)[0, :, 0]
    p_y = np.take_along_axis(sm(teacher), tokens[..., None], -1)[0, :, 0]
    reward = np.log(p_y) - np.log(q_y)
    np.testing.assert_allclose(R[0], [(reward[1] + reward[2]) / 2, reward[2], 0.0], rtol=1e-12)
    np.testing.assert_allclose(w[0], q_y / probs[0], rtol=1e-12)
    np.testing.assert_allclose(u[0], 1 / 3)
