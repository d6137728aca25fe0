"""AdamW, gradient clipping and the learning-rate schedule: short functions, cited formulas.

Gradient accumulation needs nothing special here: the model's backward adds (+=) into its
grads, so calling it on k micro-batches (each loss scaled by 1/k) before one `step` is the
same as one big batch. `zero_grad` then clears them.
"""
import math

from mini_llm.backend import array_module
from mini_llm.model import row_kernels


def decays(name, shape, decay_embeddings=False):
    """Weight decay only on 2-D weight matrices; never on norm weights (1-D), and not on the
    embedding table unless asked (decaying rare tokens' rows towards 0 mostly hurts)."""
    if len(shape) < 2:
        return False
    return decay_embeddings or "embed_tokens" not in name


class AdamW:
    """AdamW (Loshchilov & Hutter, 2019), as torch.optim.AdamW computes it:
        m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²
        m̂ = m / (1-β1^t);     v̂ = v / (1-β2^t)
        p = p - lr·wd·p  (decoupled decay)  - lr · m̂ / (sqrt(v̂) + eps)
    """

    def __init__(self, params, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                 decay_embeddings=False):
        self.lr, self.beta1, self.beta2, self.eps, self.weight_decay = lr, betas[0], betas[1], eps, weight_decay
        self.decay = {n: decays(n, p.shape, decay_embeddings) for n, p in params.items()}
        self.m = {n: array_module(p).zeros_like(p) for n, p in params.items()}   # first moment
        self.v = {n: array_module(p).zeros_like(p) for n, p in params.items()}   # second moment
        self.t = 0                                                              # steps taken

    def describe(self):
        n_decay = sum(self.decay.values())
        return f"AdamW: {n_decay} tensors with weight decay, {len(self.decay) - n_decay} without"

    def step(self, params, grads, lr=None):
        """One update of every parameter in place, from grads (already clipped if wanted)."""
        lr = self.lr if lr is None else lr
        self.t += 1
        for name, p in params.items():
            if name not in self.m:      # parameters added later (e.g. distillation projections)
                self.add_param(name, p)
            decay = self.weight_decay if self.decay[name] else 0.0
            adamw_update(p, grads[name], self.m[name], self.v[name], lr, self.beta1, self.beta2,
                         self.eps, decay, self.t)

    def add_param(self, name, p, decay=None):
        xp = array_module(p)
        self.decay[name] = decays(name, p.shape) if decay is None else decay
        self.m[name], self.v[name] = xp.zeros_like(p), xp.zeros_like(p)

    def state_dict(self):
        """Arrays to save ('m.NAME', 'v.NAME') and the step count."""
        arrays = {f"m.{n}": a for n, a in self.m.items()}
        arrays.update({f"v.{n}": a for n, a in self.v.items()})
        return arrays, {"t": self.t}

    def load_state_dict(self, arrays, meta):
        for n in self.m:
            if f"m.{n}" not in arrays or f"v.{n}" not in arrays:
                raise ValueError(f"optimizer state has no moments for parameter {n!r}")
        for n in self.m:
            self.m[n][...] = array_module(self.m[n]).asarray(arrays[f"m.{n}"])
            self.v[n][...] = array_module(self.v[n]).asarray(arrays[f"v.{n}"])
        self.t = int(meta["t"])


def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """One AdamW step of one parameter: p, m, v updated in place; t is the step number after
    this update (1 for the first), weight_decay 0 for a tensor without decay. NumPy arrays go to
    the one-pass Numba twin (row_kernels.adamw_update), the same formula in the same order."""
    if row_kernels.applies(p, g, m, v) and all(a.flags.c_contiguous for a in (p, g, m, v)):
        return row_kernels.adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t)
    xp = array_module(p)
    bias1, bias2 = 1 - beta1 ** t, 1 - beta2 ** t
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    if weight_decay:
        p *= 1 - lr * weight_decay
    # lr · m̂ / (sqrt(v̂) + eps), computed in one scratch array, in place, as torch does:
    # sqrt(v̂) = sqrt(v) / sqrt(bias2) and m̂ = m / bias1 (bias terms are scalars)
    update = xp.sqrt(v)
    update /= math.sqrt(bias2)
    update += eps
    xp.divide(m, update, out=update)
    update *= lr / bias1
    p -= update


def clip_grad_norm(grads, max_norm):
    """Scale all gradients together so their global L2 norm is at most max_norm.
    Returns the norm before clipping (worth logging: spikes show instability)."""
    total = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    if max_norm and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads.values():
            g *= scale
    return total


def get_lr(step, max_lr, warmup_steps, total_steps, min_lr_ratio=0.1):
    """Learning rate at `step` (0-based), as in nanoGPT:
    1) linear warm-up from 0 to max_lr over warmup_steps;
    2) after total_steps, the floor min_lr = max_lr * min_lr_ratio;
    3) in between, cosine decay from max_lr down to min_lr."""
    min_lr = max_lr * min_lr_ratio
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
