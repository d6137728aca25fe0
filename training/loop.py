"""The training loop, in one function, shared by train.py, the mock teacher and the benchmarks.

Read `train` top to bottom, as in nanoGPT: for each step, for each micro-batch, the batch, the
student's forward, the losses (cross-entropy on the labels, plus each teacher's terms when a
KnowledgeTransfer is given), the backward; then clip the gradient norm and take one AdamW step.
Plain training is the same loop without teachers: the loss is ce_weight · CE (weight 1 by
default), and the logged loss is that loss. Distillation adds terms; it does not own the step.
On-policy distillation (training/on_policy.py) swaps a share of the micro-batches for text the
student writes itself; the step is otherwise the same. Under MPI (mini_llm/distributed.py) a
micro-batch is the global one of batch_size · N rows: each of the N ranks runs its share, and
the gradients are summed over the ranks before the clip (step_gradients).

The batch order is a pure function of (seed, micro-batch number): micro-batch m of the run is
batch m % n of epoch m // n, and each epoch's order is a permutation drawn from
default_rng((seed, epoch)). So a run resumed at step s sees exactly the batches it would have
seen, with no random state to save. Ctrl-C (or SIGTERM) sets a flag; the loop stops after
the current step and the caller saves, so a checkpoint never holds a half-applied update.
"""
import json
import math
import signal
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from mini_llm import backend
from mini_llm.distributed import SINGLE
from mini_llm.model import layers
from mini_llm.optim import AdamW, clip_grad_norm, get_lr
from mini_llm.progress import StepClock
from training import on_policy


@dataclass
class TrainConfig:
    steps: int                      # optimizer steps in the whole run
    batch_size: int                 # sequences per micro-batch
    lr: float                       # peak learning rate (warm-up, then cosine decay)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1       # the cosine ends at lr · min_lr_ratio
    grad_accum_steps: int = 1       # micro-batches per optimizer step
    ce_weight: float = 1.0          # weight of the cross-entropy on the labels
    grad_clip: float = 1.0          # max global gradient norm (0 = no clipping)
    seed: int = 0                   # fixes the batch order
    eval_every: int = 0             # validation every N steps (and at the last step); 0 = never
    save_every: int = 0             # on_save(step) every N steps; 0 = never
    on_policy_fraction: float = 0.0  # GKD's lambda: share of micro-batches the student writes
    on_policy_tokens: int = 16      # tokens the student writes per sequence on those batches
    objective: str = "gkd"          # on student batches: "gkd" token-level divergence, or "minillm"
    mix_alpha: float = 0.2          # MiniLLM's teacher-mixed sampling: p~ = a p + (1 - a) q


def micro_batch(sequences, m, batch_size, seed):
    """The m-th micro-batch of the run: (indices (b,), batch (b, T+1)) of sequences (N, T+1)."""
    n = len(sequences)
    per_epoch = math.ceil(n / batch_size)
    epoch, k = divmod(m, per_epoch)
    order = np.random.default_rng((seed, epoch)).permutation(n)
    indices = order[k * batch_size:(k + 1) * batch_size]
    return indices, sequences[indices]


def evaluate(model, sequences, batch_size=16, desc=None):
    """Mean next-token cross-entropy over every position of `sequences` (N, T+1); perplexity
    is exp of it. `model`: a MiniTransformer, or any function ids -> logits (a teacher).
    Inference only: no cache kept. desc: show a progress bar of that name (at full size an
    evaluation takes minutes)."""
    logits_fn = model if callable(model) else (lambda ids: model.forward(ids, keep_cache=False))
    total, count = 0.0, 0
    with tqdm(total=len(sequences), desc=desc, unit="seq", leave=False, dynamic_ncols=True,
              disable=desc is None) as bar:
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start:start + batch_size]
            logits = logits_fn(batch[:, :-1])
            loss, _ = layers.cross_entropy_forward(logits, backend.to_device(batch[:, 1:]))
            n = batch[:, 1:].size
            total, count = total + float(loss) * n, count + n
            bar.update(len(batch))
    return total / max(count, 1)


def trainable(student, distiller=None):
    """(params, grads): the student's, plus the distiller's projection matrices if any."""
    params, grads = dict(student.params), dict(student.grads)
    if distiller is not None:
        params.update(distiller.proj_params)
        grads.update(distiller.proj_grads)
    return params, grads


def make_optimizer(student, distiller=None, lr=3e-4, weight_decay=0.1):
    """One AdamW over every trainable array: the student's and the projections'."""
    params, _ = trainable(student, distiller)
    return AdamW(params, lr=lr, weight_decay=weight_decay)


def forward_backward(student, batch, ce_weight=1.0, distiller=None, indices=None, scale=1.0,
                     mask=None, sampling_probs=None):
    """One micro-batch: forward, losses, backward. batch (b, T+1) token ids: inputs batch[:, :-1],
    targets batch[:, 1:]. Adds scale · d(loss)/d(param) into the grads, where
        loss = ce_weight · CE + (the teachers' terms, when a distiller is given).
    mask (b, T): the positions the teachers' terms count (None = all). sampling_probs (b, T):
    with MiniLLM's objective, the probability the sampler gave each target token.
    Returns the loss components, unscaled: {"ce": .., "kl.NAME": .., ..., "total": loss}."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = student.forward(inputs)                                        # (b, T, V)
    ce, ce_cache = layers.cross_entropy_forward(logits, backend.to_device(targets))
    dlogits = layers.cross_entropy_backward(ce_weight * scale, ce_cache)    # (b, T, V)
    parts, total, hidden_grads = {"ce": float(ce)}, ce_weight * float(ce), {}
    if distiller is not None:
        sampled = None if sampling_probs is None else (backend.to_device(targets), sampling_probs)
        terms = distiller.losses(inputs, indices, logits, student.hidden_states, scale, mask, sampled)
        parts.update(terms.parts)
        total += terms.total
        dlogits += terms.dlogits
        hidden_grads = terms.hidden_grads
    student.backward(dlogits, hidden_grads=hidden_grads)
    parts["total"] = total
    return parts


def student_written(student, distiller, batch, m, config, rank=0):
    """On-policy micro-batch m (training/on_policy.py): the batch's last on_policy_tokens
    tokens rewritten by the student -> (ids, mask of the written positions, sampling
    probabilities for MiniLLM or None). No cross-entropy on it: its labels are the student's.
    Each rank samples its share with its own seed (so N ranks draw other samples than one)."""
    c, seed = config, ((config.seed, m) if rank == 0 else (config.seed, m, rank))
    if c.objective == "minillm":            # teacher-mixed samples, scored by a policy gradient
        return on_policy.mixed_student_batch(student, distiller.links[0].teacher, batch,
                                             c.on_policy_tokens, c.mix_alpha, seed)
    ids, mask = on_policy.student_batch(student, batch, c.on_policy_tokens, seed)   # GKD
    return ids, mask, None


def zero_grads(grads):
    for g in grads.values():
        g[...] = 0


class StopFlag:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a flag the loop checks between steps, so the
    caller saves a whole step. A second signal raises KeyboardInterrupt at once: quit now,
    without that save (the previous checkpoint stays as it was)."""
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.stop = None                # the name of the signal that asked to stop

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = signal.Signals(signum).name
        what = "Ctrl-C" if signum == signal.SIGINT else self.stop
        tqdm.write(f"{what}: finishing this step, then saving and exiting "
                   f"(Ctrl-C again quits at once, without this save)")

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def log_line(step, parts, lr, ms):
    """`step 120 | loss 3.412 | ce 2.100 | kl.ngram 1.205 | lr 3.0e-04 | 41 ms` (greppable)."""
    comps = " | ".join(f"{k} {v:.3f}" for k, v in parts.items() if k != "total")
    return f"step {step} | loss {parts['total']:.3f} | {comps} | lr {lr:.1e} | {ms:.0f} ms"


def step_gradients(student, distiller, train_seq, step, config, group=SINGLE):
    """The gradient of one optimizer step into the grads: its grad_accum_steps micro-batches,
    each one this rank's share of the global micro-batch, forward and backward, weighted so
    that the sum over micro-batches and ranks is the mean; then the sum over ranks. Returns the
    step's loss components, averaged the same way."""
    c, parts = config, {}
    for micro in range(c.grad_accum_steps):
        m = step * c.grad_accum_steps + micro
        indices, batch = micro_batch(train_seq, m, c.batch_size * group.size, c.seed)
        share = group.share(len(indices))                 # this rank's rows of the micro-batch
        frac = (share.stop - share.start) / len(indices)  # n_rank / n: 1.0 with one rank
        weight = frac / c.grad_accum_steps
        indices, batch = indices[share], batch[share]
        if not len(indices):
            continue
        if on_policy.is_student_batch(c.seed, m, c.on_policy_fraction):
            batch, mask, probs = student_written(student, distiller, batch, m, c, group.rank)
            micro_parts = forward_backward(student, batch, 0.0, distiller, None, weight, mask, probs)
            micro_parts["on_policy"] = 1.0
        else:
            micro_parts = forward_backward(student, batch, c.ce_weight, distiller, indices, weight)
            if c.on_policy_fraction:
                micro_parts["on_policy"] = 0.0
        for k, v in micro_parts.items():
            parts[k] = parts.get(k, 0.0) + v * frac / c.grad_accum_steps
    group.allreduce_grads(trainable(student, distiller)[1])
    return group.sum_values(parts)


def train(student, optimizer, train_seq, val_seq, config, distiller=None, start_step=0,
          on_save=None, metrics_path=None, desc="train", group=SINGLE):
    """Run optimizer steps start_step..config.steps-1 on `student` (and the projections of
    `distiller`, a KnowledgeTransfer, if given) with `optimizer` (see make_optimizer).
    Evaluates every config.eval_every steps, calls on_save(step) every config.save_every,
    appends one JSON line per step to metrics_path. Returns (last step done, interrupted),
    interrupted False, or the name of the signal that stopped the run ("SIGINT", "SIGTERM").
    group (mini_llm/distributed.py): the ranks sharing each batch; rank 0 evaluates and logs."""
    c = config
    params, grads = trainable(student, distiller)
    clock = StepClock(start_step, c.steps)
    metrics = open(metrics_path, "a") if metrics_path and group.is_root else None
    step, group.lockstep = start_step, True
    try:
        with StopFlag() as flag:
            bar = tqdm(range(start_step, c.steps), desc=desc, initial=start_step, total=c.steps,
                       dynamic_ncols=True, leave=False, disable=not group.is_root)
            for step in bar:
                t0 = time.perf_counter()
                lr = get_lr(step, c.lr, c.warmup_steps, c.steps, c.min_lr_ratio)
                parts = step_gradients(student, distiller, train_seq, step, c, group)
                grad_norm = clip_grad_norm(grads, c.grad_clip)
                optimizer.step(params, grads, lr=lr)
                zero_grads(grads)
                clock.tick()                    # after a few steps: what the run will take

                ms = 1000 * (time.perf_counter() - t0)
                bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
                record = {"step": step + 1, **parts, "lr": lr, "grad_norm": grad_norm, "ms": ms}
                if (c.eval_every and ((step + 1) % c.eval_every == 0 or step + 1 == c.steps)
                        and len(val_seq) and group.is_root):
                    record["val_loss"] = evaluate(student, val_seq, c.batch_size)
                    record["val_ppl"] = math.exp(min(record["val_loss"], 50))
                    tqdm.write(log_line(step + 1, parts, lr, ms) +
                               f" | val {record['val_loss']:.3f} | ppl {record['val_ppl']:.1f}")
                if metrics:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if on_save and c.save_every and (step + 1) % c.save_every == 0 and group.is_root:
                    on_save(step + 1)
                stop = group.first_signal(flag.stop)      # any rank's Ctrl-C stops every rank
                if stop:
                    group.lockstep = False
                    return step + 1, stop
            bar.close()
    finally:
        if metrics:
            metrics.close()
    group.lockstep = False           # (left True when an exception escapes: see train.py's main)
    return c.steps, False
