"""What a run reports: the loss it minimises, its loss curve, the table of validation
perplexities and a generated sample. train.py calls these after (and, for the formula,
before) training; nothing here trains.
"""
import io
import json
import math

from mini_llm.files import atomic_write
from mini_llm.generate import generate
from training.loop import evaluate


def loss_formula(ce_weight, distill, run_config):
    """The loss this run minimises, with its weights, e.g. `1·CE` or `0.2·CE + Σ_t w_t·(0.8·KL)`.
    distill: the DistillConfig (None for plain training); run_config: the TrainConfig."""
    formula = f"{ce_weight:g}·CE"
    if distill is None:
        return formula + " (plain training: no teacher)"
    divergence = (f"KL({distill.kl_direction}" if distill.jsd_beta is None else
                  f"JSD(β={distill.jsd_beta:g}")
    terms = [f"{distill.kl_weight:g}·{divergence}, τ={distill.temperature:g})"]
    if distill.hidden_weight:
        terms.append(f"{distill.hidden_weight:g}·hidden_{distill.hidden_loss}")
    if distill.contrastive_weight:
        terms.append(f"{distill.contrastive_weight:g}·InfoNCE")
    formula += f" + Σ_teachers weight·({' + '.join(terms)})"
    c = run_config
    if c.on_policy_fraction:
        formula += (f"; on {c.on_policy_fraction:g} of the micro-batches the student writes the "
                    f"last {c.on_policy_tokens} tokens and only the teachers' terms count there")
        if c.objective == "minillm":
            formula += (f" (MiniLLM: samples from {c.mix_alpha:g}·teacher + "
                        f"{1 - c.mix_alpha:g}·student, policy-gradient reverse KL in place of the KL)")
    return formula


def save_loss_curve(metrics_path, png_path):
    """loss and val_loss against step, if matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(line) for line in open(metrics_path)]
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    if any(r["total"] != r["ce"] for r in rows):          # distillation: the loss and its CE apart
        ax.plot(steps, [r["total"] for r in rows], label="train loss (CE and the teachers' terms)")
        ax.plot(steps, [r["ce"] for r in rows], label="train cross-entropy")
        title = "distillation: the loss minimised, and its cross-entropy"
    else:                                                   # plain training: the loss is the CE
        ax.plot(steps, [r["ce"] for r in rows], label="train cross-entropy (= the loss)")
        title = "plain training: loss = cross-entropy"
    val = [r for r in rows if "val_loss" in r]
    ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation cross-entropy")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (cross-entropy: nats per token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()                       # rendered in memory, written atomically
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(png_path, buffer.getvalue())
    plt.close(fig)
    return png_path


def data_parallel_line(group, batch_size, grads):
    """What the ranks share, for the run's opening lines."""
    return (f"data parallel: {group.size} MPI ranks x --batch_size {batch_size} = "
            f"{group.size * batch_size} sequences per micro-batch; gradients summed by "
            f"{group.all_reduce_name(grads.values())}")


def perplexity_rows(student, distiller, val_seq):
    """[(name, validation perplexity)]: each teacher that shares the student's tokens
    (perplexities over other tokens do not compare), then the student."""
    rows = []
    for link in distiller.links if distiller else []:
        if link.same_tokens:
            teacher_logits = lambda ids: link.teacher.forward(ids)[0]
            rows.append((f"teacher {link.teacher.name}",
                         math.exp(evaluate(teacher_logits, val_seq, desc=f"evaluating {link.teacher.name}"))))
    rows.append(("student (distilled)" if distiller else "student",
                 math.exp(evaluate(student, val_seq, desc="evaluating the student"))))
    return rows


def print_table(rows):
    print("---")
    print(f"{'model':<40} {'val perplexity':>15}")
    for name, ppl in rows:
        print(f"{name:<40} {ppl:>15.2f}")
    print("---")


def sample_lines(student, tokenizer, val_seq, sample_tokens, seed):
    """The closing sample, prompt and continuation apart: the prompt is real held-out text (the
    first 8 validation tokens), so only the continuation shows what the model writes."""
    config = student.config
    prompt = val_seq[:1, :8]                                             # (1, 8) token ids
    room = sample_tokens if config.sliding_window else config.max_seq_length - prompt.shape[1]
    ids = generate(student, prompt, min(sample_tokens, room), temperature=0.8, top_k=40, seed=seed)
    new = ids[0, prompt.shape[1]:].tolist()
    return ["sample (temperature 0.8, top-k 40):",
            f"  prompt ({prompt.shape[1]} validation tokens): {tokenizer.decode(prompt[0].tolist())!r}",
            f"  continuation ({len(new)} generated tokens): {tokenizer.decode(new)!r}"]
