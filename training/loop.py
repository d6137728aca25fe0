"""The training loop, in one function, shared by train.py, the mock teacher and the benchmarks.

The batch order is a pure function of (seed, micro-batch number): micro-batch m of the run is
batch m % n of epoch m // n, and each epoch's order is a permutation drawn from
default_rng((seed, epoch)). So a run resumed at step s sees exactly the batches it would have
seen, with no random state to save. Ctrl-C sets a flag; the loop stops after the current step
and the caller saves, so a checkpoint never holds a half-applied update.
"""
import json
import math
import signal
import time

import numpy as np
from tqdm import tqdm

from mini_llm import backend
from mini_llm.model import layers
from mini_llm.optim import get_lr


def micro_batch(sequences, m, batch_size, seed):
    """The m-th micro-batch of the run: (indices (b,), batch (b, T+1)) of sequences (N, T+1)."""
    n = len(sequences)
    per_epoch = math.ceil(n / batch_size)
    epoch, k = divmod(m, per_epoch)
    order = np.random.default_rng((seed, epoch)).permutation(n)
    indices = order[k * batch_size:(k + 1) * batch_size]
    return indices, sequences[indices]


def evaluate(model, sequences, batch_size=16):
    """Mean next-token cross-entropy over every position of `sequences` (N, T+1); perplexity
    is exp of it. `model`: a MiniTransformer, or any function ids -> logits (a teacher).
    Inference only: no cache kept."""
    logits_fn = model if callable(model) else (lambda ids: model.forward(ids, keep_cache=False))
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size]
        logits = logits_fn(batch[:, :-1])
        loss, _ = layers.cross_entropy_forward(logits, backend.to_device(batch[:, 1:]))
        n = batch[:, 1:].size
        total, count = total + float(loss) * n, count + n
    return total / max(count, 1)


class StopFlag:
    """Turns Ctrl-C (SIGINT) into a flag the loop checks between steps."""

    def __init__(self):
        self.stop = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        self.stop = True
        tqdm.write("Ctrl-C: finishing this step, then saving and exiting")

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def log_line(step, parts, lr, ms):
    """`step 120 | loss 3.412 | ce 2.100 | kl.ngram 1.205 | lr 3.0e-04 | 41 ms` (greppable)."""
    comps = " | ".join(f"{k} {v:.3f}" for k, v in parts.items() if k != "total")
    return f"step {step} | loss {parts['total']:.3f} | {comps} | lr {lr:.1e} | {ms:.0f} ms"


def train(kt, train_seq, val_seq, steps, batch_size, lr, warmup_steps=0, grad_accum_steps=1,
          seed=0, start_step=0, eval_every=0, save_every=0, on_save=None, metrics_path=None,
          desc="train", min_lr_ratio=0.1):
    """Run optimizer steps start_step..steps-1 of `kt` (a KnowledgeTransfer). Each step
    accumulates grad_accum_steps micro-batches (each scaled 1/grad_accum_steps) and applies
    one AdamW update. Evaluates every eval_every steps, calls on_save(step) every save_every.
    Returns (last step done, interrupted?)."""
    metrics = open(metrics_path, "a") if metrics_path else None
    step = start_step
    try:
        with StopFlag() as flag:
            bar = tqdm(range(start_step, steps), desc=desc, initial=start_step, total=steps,
                       dynamic_ncols=True, leave=False)
            for step in bar:
                t0 = time.perf_counter()
                step_lr = get_lr(step, lr, warmup_steps, steps, min_lr_ratio)
                parts = {}
                for j in range(grad_accum_steps):
                    indices, batch = micro_batch(train_seq, step * grad_accum_steps + j, batch_size, seed)
                    for k, v in kt.accumulate(batch, indices, scale=1.0 / grad_accum_steps).items():
                        parts[k] = parts.get(k, 0.0) + v / grad_accum_steps
                grad_norm = kt.apply(step_lr)
                ms = 1000 * (time.perf_counter() - t0)
                bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
                record = {"step": step + 1, **parts, "lr": step_lr, "grad_norm": grad_norm, "ms": ms}
                if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps) and len(val_seq):
                    record["val_loss"] = evaluate(kt.student, val_seq, batch_size)
                    record["val_ppl"] = math.exp(min(record["val_loss"], 50))
                    tqdm.write(log_line(step + 1, parts, step_lr, ms) +
                               f" | val {record['val_loss']:.3f} | ppl {record['val_ppl']:.1f}")
                if metrics:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if on_save and save_every and (step + 1) % save_every == 0:
                    on_save(step + 1)
                if flag.stop:
                    return step + 1, True
            bar.close()
    finally:
        if metrics:
            metrics.close()
    return steps, False
