"""One training step of MiniTransformer against the same model in PyTorch eager, on the CPU.

    python benchmarks/train_step.py                  # 7 timed steps each, threads = os.cpu_count()
    python benchmarks/train_step.py --threads 1      # single-threaded, both sides
    python benchmarks/train_step.py --quick          # smoke run: batch 2, 2 timed steps

A step = forward + cross-entropy + backward + AdamW update (lr 3e-4, betas (0.9, 0.95), weight
decay 0.1 on 2-D weights but the embedding), float32, config: vocab 8192, hidden 256, 4 layers,
4 heads (4 kv heads), intermediate 1024, sequence 256, batch 8, sliding window 128.
PyTorch runs a small Mistral module written here with torch ops (F.scaled_dot_product_attention
with a band mask, torch.optim.AdamW), loaded with our weights. Before timing, both sides train 3
steps from the same weights on the same batch and their losses must agree to 1e-4.

Timing: warm-up steps are not timed; then ours and theirs alternate, one step each, --steps
times; the table shows the median. Both sides use --threads threads: OpenBLAS (NumPy's matmuls),
Numba, and torch.set_num_threads.

Share of measured matmul throughput (column "share of measured matmul (N thr)", N = --threads)
= model FLOPs per step / (step time * measured matmul rate): how close a step comes to the rate
this machine's np.matmul reaches with the same threads, not to the hardware's peak:
    FLOPs/step = 6 * N * B*T  +  12 * L * B * band(T, W) * H * D
N: parameters that multiply activations (every weight matrix; not the embedding, a lookup, nor
norm weights); 6 = 2 (multiply-add) * 3 (forward, and two matmuls in backward). The attention
term counts q·k and p·v over the query-key pairs inside the window (band(T, W) of them per
sequence and head: 2 * 2 in forward, twice that in backward). The matmul rate is a 2048x2048
float32 np.matmul timed in the same run with the same threads.

The profile times one MiniTransformer step by wrapping the library's layer functions with timers
(this script patches the module attributes; the library is not edited). Time is exclusive: a
matmul inside SwiGLU counts for "swiglu matmuls", not for the SwiGLU wrapper as well.
"""
import argparse
import os
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per framework (default 7, at least 5 for a real run)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (default os.cpu_count())")
    parser.add_argument("--profile_steps", type=int, default=5, help="profiled MiniTransformer steps (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2, 1 warm-up, 2 timed steps")
    return parser.parse_args()


# The BLAS thread pool is sized when NumPy loads, so the thread count goes into the environment
# before any import of numpy, numba or torch.
ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numba  # noqa: E402
import numpy as np  # noqa: E402

from mini_llm import backend  # noqa: E402
from mini_llm.model import attention, layers  # noqa: E402
from mini_llm.model.transformer import MiniTransformer, TransformerConfig  # noqa: E402
from mini_llm.optim import AdamW, decays  # noqa: E402

CONFIG = dict(vocab_size=8192, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
              intermediate_size=1024, max_seq_length=256, sliding_window=128)
SEQ, BATCH = 256, 8
OPTIM = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

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
    """Model FLOPs of one step (formula in the header) and N, the parameters in matmuls."""
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
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / float(np.median(times)) / 1e9


# ---------------------------------------------------------------------------------------------
# Profile: exclusive time of each wrapped layer function during one step


ATTENTION_GLUE, SWIGLU = "attention glue (reshapes, checks)", "swiglu elementwise (silu, product)"


class Profile:
    """Wraps module-level functions with timers. Each call's time minus its wrapped callees' goes
    to a (row, "fwd" | "bwd") cell; a linear layer's row is named after its caller."""

    LINEAR_ROW = {ATTENTION_GLUE: "q/k/v/o projections", SWIGLU: "swiglu matmuls (gate, up, down)"}

    def __init__(self):
        self.cells, self.stack, self.undo = {}, [], []

    def wrap(self, owner, name, row, phase):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            parent = self.stack[-1][0] if self.stack else None
            label = self.LINEAR_ROW.get(parent, "lm head matmul") if row == "linear" else row
            self.stack.append([label, 0.0])
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                _, inner = self.stack.pop()
                key = (label, phase)
                self.cells[key] = self.cells.get(key, 0.0) + elapsed - inner
                if self.stack:
                    self.stack[-1][1] += elapsed
        setattr(owner, name, timed)
        self.undo.append((owner, name, original))

    def restore(self):
        for owner, name, original in reversed(self.undo):
            setattr(owner, name, original)
        self.undo.clear()


def profile_ours(step, steps):
    """{(row, phase): median ms per step} and the median ms of a whole step, over `steps`
    profiled steps."""
    prof = Profile()
    pairs = [(layers, "embedding", "embedding"), (layers, "rmsnorm", "rmsnorm"),
             (layers, "linear", "linear"), (attention, "linear", "linear"),
             (attention, "self_attention", ATTENTION_GLUE), (attention, "rope", "rope"),
             (attention, "attention", "attention (Numba kernel)"), (layers, "swiglu", SWIGLU),
             (layers, "silu", SWIGLU), (layers, "cross_entropy", "cross-entropy")]
    for owner, stem, row in pairs:
        prof.wrap(owner, stem + "_forward", row, "fwd")
        prof.wrap(owner, stem + "_backward", row, "bwd")
    prof.wrap(AdamW, "step", "AdamW update", "bwd")
    prof.wrap(MiniTransformer, "zero_grad", "zero_grad", "bwd")
    per_step, step_times = [], []
    try:
        for _ in range(steps):
            prof.cells = {}
            start = time.perf_counter()
            step()
            step_times.append(time.perf_counter() - start)
            per_step.append(prof.cells)
    finally:
        prof.restore()
    cells = {key: 1e3 * float(np.median([c.get(key, 0.0) for c in per_step])) for key in per_step[0]}
    return cells, 1e3 * float(np.median(step_times))


def print_profile(cells, step_ms):
    rows = {}
    for (row, phase), ms in cells.items():
        rows.setdefault(row, {"fwd": 0.0, "bwd": 0.0})[phase] += ms
    rows["other (residual adds, grads +=, reshapes, Python)"] = {"fwd": 0.0, "bwd": step_ms - sum(cells.values())}
    rows = {name: rows[name] for name in sorted(rows, key=lambda r: -sum(rows[r].values()))}
    print(f"\nMiniTransformer, one step = {step_ms:.1f} ms (median of the profiled steps; each cell "
          f"its own median; the 'bwd' column also holds zero_grad and the optimizer)")
    print(f"{'part':<52} | {'fwd ms':>8} | {'bwd ms':>8} | {'total ms':>8} | {'% step':>6}")
    for name, r in rows.items():
        total = r["fwd"] + r["bwd"]
        print(f"{name:<52} | {r['fwd']:8.1f} | {r['bwd']:8.1f} | {total:8.1f} | {100 * total / step_ms:5.1f}%")


# ---------------------------------------------------------------------------------------------


def main():
    args = ARGS
    batch, steps, warmup = BATCH, args.steps, args.warmup
    if args.quick:
        batch, steps, warmup = 2, 2, 1
    numba.set_num_threads(args.threads)
    config = TransformerConfig(**CONFIG)
    model = MiniTransformer(config, seed=0, dtype=np.float32)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, size=(batch, SEQ + 1))
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        theirs = torch_step_fn(torch, torch_model(torch, model.params, config), ids)
    ours = ours_step_fn(model, AdamW(model.params, **OPTIM), ids)

    print(f"train step, float32, B={batch} T={SEQ} V={config.vocab_size} C={config.hidden_size} "
          f"L={config.num_layers} H={config.num_heads} Hkv={config.num_kv_heads} F={config.intermediate_size} "
          f"W={config.sliding_window}; threads {args.threads} (numba {numba.get_num_threads()}"
          + (f", torch {torch.get_num_threads()})" if torch else ", no torch installed)")
          + f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if torch is not None:       # same weights, same batch: 3 steps must give the same losses
        losses = [(ours(), theirs()) for _ in range(3)]
        worst = max(abs(a - b) for a, b in losses)
        print("check, loss ours / torch: " + ", ".join(f"{a:.6f} / {b:.6f}" for a, b in losses)
              + f"  (max diff {worst:.1e})")
        if worst > 1e-4:
            sys.exit(f"losses differ by {worst:.1e} > 1e-4: not timing")
        warmup = max(0, warmup - 3)             # the check steps warmed both up
    for _ in range(warmup):
        ours()
        if torch is not None:
            theirs()

    times = {"MiniTransformer": [], "PyTorch eager": []}
    for _ in range(steps):                      # alternate: a slow patch of the machine hits both
        for name, fn in (("MiniTransformer", ours), ("PyTorch eager", theirs if torch else None)):
            if fn is None:
                continue
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    gflops = matmul_gflops()
    flops, n_matmul = flops_per_step(model.params, config, batch, SEQ)
    tokens = batch * SEQ
    print(f"FLOPs/step = 6 * {n_matmul:,} * {tokens} + 12 * {config.num_layers} * {batch} * "
          f"{band_area(SEQ, config.sliding_window)} * {config.num_heads} * {config.head_dim} = {flops / 1e9:.2f} GFLOP; "
          f"np.matmul 2048^3 float32: {gflops:.1f} GFLOP/s")
    medians = {name: float(np.median(t)) for name, t in times.items() if t}
    base = medians.get("PyTorch eager")
    share = f"share of measured matmul ({args.threads} thr)"
    print(f"\n{'framework':<16} | {'ms/step (median)':>16} | {'tokens/s':>9} | {'ratio vs PyTorch':>16} | {share}")
    for name, sec in medians.items():
        ratio = f"{base / sec:15.2f}x" if base else f"{'-':>16}"
        print(f"{name:<16} | {1e3 * sec:16.1f} | {tokens / sec:9.0f} | {ratio} | "
              f"{100 * flops / sec / (gflops * 1e9):{len(share) - 1}.1f}%")
    print(f"(median of {steps} alternating steps each, after warm-up; ratio = tokens/s / PyTorch's; "
          f"target >= 0.8x)")

    cells, step_ms = profile_ours(ours, 1 if args.quick else args.profile_steps)
    print_profile(cells, step_ms)


if __name__ == "__main__":
    main()
