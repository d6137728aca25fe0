"""The worker half of benchmarks/train_step.py: one framework at one thread count, in its own process.

    python benchmarks/train_step.py --worker ours --threads 2 --extras   # what the parent runs (first round)

It prints one JSON line on stdout: the first 3 losses (the loss check, from seed 0's weights
and the same batch in every worker), the timed steps' seconds, the thread counts the pools
report, the load average, and the peak resident memory. The parent (train_step.py) puts the
thread counts into the environment before this process starts, so NumPy's OpenBLAS, Numba and
torch size their pools once, alone on the machine: no other framework's threads are spinning.

Our worker with --extras also runs, after its timed steps (and after its memory is read):
the measured np.matmul rate, the per-part profile of our step (Profile), and two steps of the
real training loop (training/loop.py's train, the loop train.py runs): with gradient clipping,
and with clipping plus the KL to a mock teacher (training/mock.py's shape, untrained).
"""
import contextlib
import io
import json
import os
import resource
import tempfile
import threading
import time

import numba
import numpy as np

from mini_llm import backend, memory
from mini_llm.threads import describe as threads_describe
from mini_llm.model import attention, layers
from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from mini_llm.optim import AdamW, decays
from timing import timed

CONFIG = dict(vocab_size=8192, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
              intermediate_size=1024, max_seq_length=256, sliding_window=128)
SEQ, BATCH = 256, 8
OPTIM = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
CHECK_STEPS = 3                 # the loss check; they also warm both frameworks up

# ---------------------------------------------------------------------------------------------
# The two training steps


def ours_step_fn(model, optimizer, ids):
    """A closure running one MiniTransformer step on ids (B, T+1); it returns the loss."""
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def step():
        model.zero_grad()
        logits = model.forward(inputs)                                  # (B, T, V)
        loss, cache = layers.cross_entropy_forward(logits, targets)
        model.backward(layers.cross_entropy_backward(1.0, cache))
        optimizer.step(model.params, model.grads)
        return float(loss)
    return step


def torch_model(torch, params, config, seq=SEQ, device="cpu"):
    """The Mistral decoder in torch ops, holding float32 copies of `params` on `device`."""
    F = torch.nn.functional
    c = config
    H, Hkv, D = c.num_heads, c.num_kv_heads, c.head_dim
    cos, sin = (torch.tensor(a, device=device)
                for a in attention.rope_cos_sin(c.max_seq_length, D, c.rope_theta, np.float32))
    band = torch.tensor(attention.window_mask(seq, seq, c.sliding_window), device=device)  # True = visible

    def rmsnorm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.norm_eps) * w

    def rope(x, T):                                                     # x (B, H, T, D)
        x1, x2 = x[..., :D // 2], x[..., D // 2:]
        return x * cos[:T] + torch.cat([-x2, x1], dim=-1) * sin[:T]

    class Mistral(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.ParameterDict({
                n.replace(".", "/"): torch.nn.Parameter(torch.tensor(backend.to_host(p), device=device))
                for n, p in params.items()})

        def forward(self, ids):
            w = lambda name: self.w[name.replace(".", "/")]             # noqa: E731
            B, T = ids.shape
            x = w("model.embed_tokens.weight")[ids]                     # (B, T, C)
            for i in range(c.num_layers):
                p = f"model.layers.{i}."
                h = rmsnorm(x, w(p + "input_layernorm.weight"))
                q = (h @ w(p + "self_attn.q_proj.weight").T).view(B, T, H, D).transpose(1, 2)
                k = (h @ w(p + "self_attn.k_proj.weight").T).view(B, T, Hkv, D).transpose(1, 2)
                v = (h @ w(p + "self_attn.v_proj.weight").T).view(B, T, Hkv, D).transpose(1, 2)
                q, k = rope(q, T), rope(k, T)
                k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=band[:T, :T])   # (B, H, T, D)
                x = x + a.transpose(1, 2).reshape(B, T, H * D) @ w(p + "self_attn.o_proj.weight").T
                h = rmsnorm(x, w(p + "post_attention_layernorm.weight"))
                gate, up = h @ w(p + "mlp.gate_proj.weight").T, h @ w(p + "mlp.up_proj.weight").T
                x = x + (F.silu(gate) * up) @ w(p + "mlp.down_proj.weight").T
            x = rmsnorm(x, w("model.norm.weight"))
            return x @ w("lm_head.weight").T                            # (B, T, V)

    return Mistral()


def torch_step_fn(torch, model, ids, device="cpu"):
    """One PyTorch step: the same loss, torch.optim.AdamW with the same decay groups."""
    named = {n.replace("/", "."): p for n, p in model.w.items()}
    decay = [p for n, p in named.items() if decays(n, tuple(p.shape))]
    no_decay = [p for n, p in named.items() if not decays(n, tuple(p.shape))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": OPTIM["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=OPTIM["lr"], betas=OPTIM["betas"], eps=OPTIM["eps"])
    ids = torch.tensor(ids, device=device)
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


# ---------------------------------------------------------------------------------------------
# FLOPs and the machine's matmul rate


def band_area(T, W):
    """(query, key) pairs inside the causal window of width W."""
    return T * (T + 1) // 2 if W is None or T <= W else T * W - W * (W - 1) // 2


def flops_per_step(params, config, batch, seq):
    """Model FLOPs of one step (formula in train_step.py's header) and N, the parameters in matmuls."""
    c = config
    matmul_params = sum(p.size for n, p in params.items() if p.ndim == 2 and "embed_tokens" not in n)
    if c.tie_word_embeddings:                   # the embedding table is also the LM head
        matmul_params += c.vocab_size * c.hidden_size
    attn = 12 * c.num_layers * batch * band_area(seq, c.sliding_window) * c.num_heads * c.head_dim
    return 6 * matmul_params * batch * seq + attn, matmul_params


def matmul_gflops(n=2048, repeats=5):
    """Median float32 rate of an n x n x n np.matmul, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a @ b
    return 2 * n ** 3 / float(np.median(timed(lambda: a @ b, repeats))) / 1e9


# ---------------------------------------------------------------------------------------------
# Profile: exclusive time of each wrapped layer function during one step


ATTENTION_GLUE, SWIGLU = "attention glue (reshapes, checks)", "swiglu elementwise (silu, product)"
KERNEL_ROW, DENSE_ROW = "attention (Numba kernel)", "attention (dense reference)"
BANDED_ROW = "attention (banded)"


class Profile:
    """Wraps module-level functions with timers. Each call's time minus its wrapped callees' goes
    to a (row, "fwd" | "bwd") cell of the thread that ran it; a linear layer's row is named after
    its caller. The model runs its blocks on several threads at once (one slice of the batch's
    rows each, MiniTransformer.row_slices), so step_cells gives each cell's mean over the threads
    that ran it: the wall time it took, as the threads run side by side."""

    LINEAR_ROW = {ATTENTION_GLUE: "q/k/v/o projections", SWIGLU: "swiglu matmuls (gate, up, down)"}

    def __init__(self):
        self.thread_cells, self.local, self.undo = {}, threading.local(), []
        self.lock = threading.Lock()

    def step_cells(self):
        """{(row, phase): seconds} since the last call: the mean over the threads that ran it."""
        with self.lock:
            per_thread, self.thread_cells = list(self.thread_cells.values()), {}
        keys = dict.fromkeys(key for cells in per_thread for key in cells)      # in first-seen order
        return {key: float(np.mean([cells[key] for cells in per_thread if key in cells])) for key in keys}

    def wrap(self, owner, name, row, phase):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            stack = self.local.__dict__.setdefault("stack", [])      # this thread's open calls
            parent = stack[-1][0] if stack else None
            label = self.LINEAR_ROW.get(parent, "lm head matmul") if row == "linear" else row
            stack.append([label, 0.0])
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                _, inner = stack.pop()
                with self.lock:
                    cells = self.thread_cells.setdefault(threading.get_ident(), {})
                    cells[label, phase] = cells.get((label, phase), 0.0) + elapsed - inner
                if stack:
                    stack[-1][1] += elapsed
        setattr(owner, name, timed)
        self.undo.append((owner, name, original))

    def restore(self):
        for owner, name, original in reversed(self.undo):
            setattr(owner, name, original)
        self.undo.clear()


def profile_ours(step, steps):
    """[(row, phase, median ms per step)] and the median ms of a whole step, over `steps`
    profiled steps. Attention is split by the path the dispatcher took (attention_forward):
    banded, the Numba kernel or the dense reference; the dispatch itself counts as glue."""
    prof = Profile()
    pairs = [(layers, "embedding", "embedding"), (layers, "rmsnorm", "rmsnorm"),
             (layers, "linear", "linear"), (attention, "linear", "linear"),
             (attention, "self_attention", ATTENTION_GLUE), (attention, "rope", "rope"),
             (attention, "attention", ATTENTION_GLUE),
             (attention, "sliding_window_attention", KERNEL_ROW),
             (attention, "attention_reference", DENSE_ROW), (attention, "banded_attention", BANDED_ROW),
             (layers, "swiglu", SWIGLU),
             (layers, "silu", SWIGLU), (layers, "cross_entropy", "cross-entropy")]
    for owner, stem, row in pairs:
        prof.wrap(owner, stem + "_forward", row, "fwd")
        prof.wrap(owner, stem + "_backward", row, "bwd")
    prof.wrap(AdamW, "step", "AdamW update", "bwd")
    prof.wrap(MiniTransformer, "zero_grad", "zero_grad", "bwd")
    per_step, step_times = [], []
    try:
        for _ in range(steps):
            prof.step_cells()
            step_times += timed(step, 1)
            per_step.append(prof.step_cells())
    finally:
        prof.restore()
    cells = [(row, phase, 1e3 * float(np.median([c.get((row, phase), 0.0) for c in per_step])))
             for row, phase in per_step[0]]
    return cells, 1e3 * float(np.median(step_times))


# ---------------------------------------------------------------------------------------------
# The training loop's step (training/loop.py's train), as train.py runs it


def loop_step_ms(model, batch, steps, teacher=None):
    """ms of each of `steps` steps of training/loop.py's train() on `model`: gradient clipping at
    1.0, AdamW; with `teacher`, also the KL to it (DistillConfig's defaults, CE weight 0.2, as
    train.py distils). The loop times each step itself (the "ms" of its metrics lines)."""
    from training.knowledge_transfer import DISTILL_CE_WEIGHT, DistillConfig, KnowledgeTransfer
    from training.loop import TrainConfig, make_optimizer, train
    V = model.config.vocab_size
    sequences = np.random.default_rng(1).integers(0, V, size=(batch * steps, SEQ + 1))
    distiller = KnowledgeTransfer(model, [(teacher, 1.0)], DistillConfig()) if teacher else None
    run = TrainConfig(steps=steps, batch_size=batch, lr=OPTIM["lr"], grad_clip=1.0,
                      ce_weight=DISTILL_CE_WEIGHT if teacher else 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "metrics.jsonl")
        with contextlib.redirect_stderr(io.StringIO()):             # the loop's progress bar
            train(model, make_optimizer(model, distiller, OPTIM["lr"]), sequences, [], run, distiller,
                  metrics_path=metrics, desc="loop step")
        with open(metrics) as f:
            return [json.loads(line)["ms"] for line in f]


def extras(model, step, batch, profile_steps, loop_steps):
    """Our worker's extra measurements, after its timed steps."""
    from training.mock import mock_teacher_config
    from training.teachers import TransformerTeacher
    cells, profile_ms = profile_ours(step, profile_steps)
    teacher_model = MiniTransformer(mock_teacher_config(model.config), seed=1, dtype=np.float32)
    teacher = TransformerTeacher("mock_llama", "minillm", teacher_model)
    return dict(matmul_gflops=matmul_gflops(), profile=cells, profile_step_ms=profile_ms,
                loop_clip_ms=loop_step_ms(model, batch, loop_steps),
                loop_kd_ms=loop_step_ms(model, batch, loop_steps, teacher),
                student_params=model.num_parameters(), teacher_params=teacher_model.num_parameters())


# ---------------------------------------------------------------------------------------------


def peak_mib():
    """This process's peak resident memory so far (ru_maxrss: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(framework, threads, batch, warmup, steps, profile_steps=0, loop_steps=0):
    """One worker: build, 3 check steps, `warmup` more untimed, `steps` timed; print the JSON."""
    numba.set_num_threads(threads)
    torch = None
    if framework == "ours":
        memory.keep_freed_memory()           # as train.py runs: the step's temporaries reuse their pages
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        torch.manual_seed(0)
    out = dict(framework=framework, load_before=os.getloadavg()[0], rss_before_mib=peak_mib())
    config = TransformerConfig(**CONFIG)
    model = MiniTransformer(config, seed=0, dtype=np.float32)      # the torch worker's weights too
    ids = np.random.default_rng(0).integers(0, config.vocab_size, size=(batch, SEQ + 1))
    if torch is None:
        step = ours_step_fn(model, AdamW(model.params, **OPTIM), ids)
    else:
        step = torch_step_fn(torch, torch_model(torch, model.params, config), ids)
    out["losses"] = [step() for _ in range(CHECK_STEPS)]
    for _ in range(warmup):
        step()
    out["step_s"] = timed(step, steps)
    out.update(peak_mib=peak_mib(), load_after=os.getloadavg()[0], pools=threads_describe(), memory=memory.describe(),
               numba_threads=numba.get_num_threads(), torch_threads=torch and torch.get_num_threads())
    if torch is None:
        c = config
        out["shape"] = (f"B={batch} T={SEQ} V={c.vocab_size} C={c.hidden_size} L={c.num_layers} H={c.num_heads} "
                        f"Hkv={c.num_kv_heads} F={c.intermediate_size} W={c.sliding_window}")
        out["tokens"] = batch * SEQ
        out["flops"], out["matmul_params"] = flops_per_step(model.params, config, batch, SEQ)
        if profile_steps or loop_steps:
            out.update(extras(model, step, batch, profile_steps, loop_steps))
    print(json.dumps(out))
