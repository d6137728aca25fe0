"""Train a MiniLLM student, alone or distilled from teachers.

Examples
    python train.py --use_mock                       # whole pipeline, stand-in teachers, ~3 min on 2 cores
    python train.py --use_mock --compare_baseline    # + the same student trained without teachers
    python train.py --data_path data/sample_training.txt --hidden_size 64 --num_layers 2 \\
        --num_heads 4 --intermediate_size 192 --max_seq_length 64 --vocab_size 1024 --max_steps 50
                                                     # tiny CPU run, under a minute
    python train.py --data_path corpus.txt --tokenizer_path teacher_dir \\
        --teacher llama:teacher_dir --kl_weight 1 --hidden_weight 0.5 --sliding_window 128
    python train.py --output_dir out --resume        # continue where out/checkpoint stopped

The loss. Without a teacher: plain training, loss = ce_weight · CE with ce_weight 1.
With teachers (--teacher, or the stand-ins of --use_mock):
    loss = ce_weight · CE + Σ_teachers weight · (kl_weight · KL + hidden_weight · hidden
                                                 + contrastive_weight · InfoNCE)
with the distillation defaults ce_weight 0.2, kl_weight 0.8, temperature 1, forward KL,
hidden_weight 0 (0.5 with --use_mock), contrastive_weight 0. A teacher with another tokenizer
contributes through ULD in place of the KL (--cross_vocab). The logged "total" is the loss.
On-policy (--on_policy_fraction, --jsd_beta, --objective minillm) and sequence-level (--seq_kd)
distillation: see training/on_policy.py and training/seq_kd.py.

Writes to --output_dir: checkpoint/ (model, tokenizer, optimizer state), metrics.jsonl,
loss_curve.png (when matplotlib is installed). An output_dir that already holds a run is
refused: continue it with --resume (which restores the run's own arguments), or start over with
--overwrite. Exit codes: 0 done; 2 an error, reported as one `error:` line before any work where
it can be; 130 Ctrl-C and 143 SIGTERM, both after saving the step in progress (a second Ctrl-C
quits at once, keeping the previous checkpoint).
"""
import argparse
import io
import json
import math
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mini_llm import backend
from mini_llm.checkpoint import CheckpointError
from mini_llm.files import atomic_write
from mini_llm.generate import generate
from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from tokenizer.bpe_tokenizer import BPETokenizer
from training import checks, mock, on_policy, seq_kd
from training.data import encode_documents, load_texts, make_sequences, split_train_val
from training.knowledge_transfer import DISTILL_CE_WEIGHT, DistillConfig, KnowledgeTransfer
from training.loop import TrainConfig, evaluate, make_optimizer, train
from training.run_checkpoint import discard, keep_metrics_until, load_run_state, recover, save_run
from training.teachers import (TeacherOutputCache, load_flux_teacher, load_llama_teacher,
                               parse_teacher_spec, sequences_fingerprint)

DEFAULT_DATA = Path(__file__).parent / "data" / "sample_training.txt"
# model sizes: the documented defaults, and smaller ones that make --use_mock finish in minutes
SIZES = dict(vocab_size=(30000, 512), hidden_size=(384, 64), num_layers=(6, 2), num_heads=(6, 4),
             num_kv_heads=(None, 2), intermediate_size=(1536, 192), max_seq_length=(512, 64),
             batch_size=(8, 16), num_epochs=(1, 6))
SIZE_MEANINGS = dict(
    vocab_size="BPE vocabulary size V (a trained tokenizer may stop short of it)",
    hidden_size="width C of the residual stream",
    num_layers="decoder blocks",
    num_heads="query heads H; hidden_size % num_heads == 0",
    num_kv_heads="key/value heads Hkv (grouped-query attention); num_heads % num_kv_heads == 0",
    intermediate_size="SwiGLU feed-forward width F",
    max_seq_length="tokens per training sequence T (the context length)",
    batch_size="sequences per micro-batch",
    num_epochs="passes over the training split (unless --max_steps)")
STEP_COST = """\
What a step costs: at the documented size ~12-15 s on 2 CPU cores with one BLAS thread
(OPENBLAS_NUM_THREADS=1; several times slower when busy cores make BLAS threads spin), so
--num_epochs 3 on 1 MB of text takes ~30-37 min; at the --use_mock size ~0.1-0.5 s.
A run prints its own measured time per step, and its estimate, after the first steps."""


def size_help(name):
    """'--hidden_size' help: what it is, its default and its --use_mock default."""
    default, mock_default = SIZES[name]
    meaning = SIZE_MEANINGS[name].replace("%", "%%")         # argparse formats help with %
    return f"{meaning} (default: {default or 'num_heads'}; {mock_default} with --use_mock)"


def build_parser():
    """The command line: every flag with its help and default (python train.py --help)."""
    p = checks.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data_path", default=str(DEFAULT_DATA), help=".txt (a document per line, or "
                   "blank-line separated), .json (list of strings or {'text': ...}) or .jsonl (default: %(default)s)")
    g.add_argument("--output_dir", default="output", help="where the checkpoint, metrics and "
                   "plot go (default: %(default)s)")
    g.add_argument("--tokenizer_path", help="a saved tokenizer.json (or a folder holding one); "
                   "default: train one on the data and save it in output_dir")
    g.add_argument("--val_fraction", type=float, default=0.1, help="held-out share (default: %(default)s)")
    g = p.add_argument_group("model", "The documented size (TransformerConfig's defaults), or a "
                             "small one with --use_mock.\n" + STEP_COST)
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                 "intermediate_size", "max_seq_length"):
        g.add_argument(f"--{name}", type=int, help=size_help(name))
    g.add_argument("--sliding_window", type=int, help="attention window W (default: full causal)")
    g = p.add_argument_group("optimization")
    g.add_argument("--batch_size", type=int, help=size_help("batch_size"))
    g.add_argument("--num_epochs", type=int, help=size_help("num_epochs"))
    g.add_argument("--max_steps", type=int, help="optimizer steps (default: from num_epochs)")
    g.add_argument("--learning_rate", type=float, help="peak learning rate (default: 6e-4, or 3e-3 with --use_mock)")
    g.add_argument("--warmup_steps", type=int, default=10, help="steps of linear warm-up to the peak "
                   "learning rate, then cosine decay (default: %(default)s)")
    g.add_argument("--grad_accum_steps", type=int, default=1, help="micro-batches per optimizer step "
                   "(default: %(default)s)")
    g.add_argument("--weight_decay", type=float, default=0.1, help="AdamW decoupled weight decay, on "
                   "2-D weights only (default: %(default)s)")
    g.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm; 0 = no clipping "
                   "(default: %(default)s)")
    g = p.add_argument_group("distillation")
    g.add_argument("--use_mock", action="store_true", help="stand-in teachers built in this run: a "
                   "larger MiniTransformer trained briefly here, and an n-gram model")
    g.add_argument("--teacher", action="append", default=[], metavar="KIND:PATH[:WEIGHT]",
                   help="llama|mistral|flux|ngram; repeatable (e.g. llama:models/tiny:0.5; "
                   "default: none, plain training unless --use_mock)")
    d = DistillConfig()
    g.add_argument("--ce_weight", type=float, help="weight of the cross-entropy on the labels "
                   f"(default: 1 without teachers, {DISTILL_CE_WEIGHT} with teachers)")
    g.add_argument("--kl_weight", type=float, default=d.kl_weight, help="weight of each teacher's "
                   "KL (or ULD) term (default: %(default)s)")
    g.add_argument("--hidden_weight", type=float, default=None, help="weight of each teacher's "
                   "hidden-state term (default: 0, or 0.5 with --use_mock)")
    g.add_argument("--contrastive_weight", type=float, default=d.contrastive_weight, help="weight of "
                   "each teacher's InfoNCE term (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=d.temperature, help="τ: the KL compares "
                   "softmax(logits / τ), times τ² (default: %(default)s)")
    g.add_argument("--kl_direction", choices=["forward", "reverse"], default=d.kl_direction,
                   help="forward KL(teacher‖student), mean-seeking, or reverse KL(student‖teacher), "
                   "mode-seeking (default: %(default)s)")
    g.add_argument("--jsd_beta", type=float, help="use the generalized Jensen-Shannon divergence "
                   "JSD(beta) of GKD in place of the KL: 0 = forward KL, 1 = reverse KL, between: "
                   "both (default: off, the KL of --kl_direction)")
    g.add_argument("--hidden_loss", choices=["mse", "cosine"], default=d.hidden_loss,
                   help="how projected student hidden states are compared with the teacher's "
                   "(default: %(default)s)")
    g.add_argument("--layer_map", help='JSON, e.g. \'{"llama": {"8": 1, "16": 2}}\' (default: spread evenly)')
    g.add_argument("--cross_vocab", action="store_true", help="let teachers with another vocabulary "
                   "teach through Universal Logit Distillation")
    g.add_argument("--teacher_cache_topk", type=int, help="cache teachers' top-k outputs on disk "
                   "(offline distillation; default: off, teachers run live)")
    g.add_argument("--mock_teacher_steps", type=int, default=150, help="training steps of the "
                   "--use_mock transformer teacher (default: %(default)s)")
    g.add_argument("--compare_baseline", action="store_true",
                   help="also train the same student without teachers, for the final table")
    g = p.add_argument_group("on-policy and sequence-level distillation")
    g.add_argument("--on_policy_fraction", type=float, default=0.0, help="GKD's lambda: the share "
                   "of micro-batches whose last --on_policy_tokens tokens the student samples "
                   "itself, scored by the teachers (no CE on those) (default: %(default)s)")
    g.add_argument("--on_policy_tokens", type=int, default=16, help="tokens the student writes "
                   "per on-policy micro-batch (default: %(default)s)")
    g.add_argument("--objective", choices=["gkd", "minillm"], default="gkd", help="the loss on "
                   "student-written batches: gkd = the token-level KL / JSD above; minillm = "
                   "MiniLLM's policy gradient of the sequence-level reverse KL, on samples from "
                   "a teacher-student mix (default: %(default)s)")
    g.add_argument("--mix_alpha", type=float, default=0.2, help="MiniLLM's teacher share in "
                   "the sampling mix (default: %(default)s)")
    g.add_argument("--seq_kd", type=int, default=0, metavar="N", help="before training, the first "
                   "transformer teacher writes N sequences (prompted from the training text) that "
                   "join the training data; cached in output_dir/seq_kd (default: %(default)s)")
    g.add_argument("--seq_kd_prompt", type=int, default=8, help="prompt tokens per written "
                   "sequence (default: %(default)s)")
    g = p.add_argument_group("system")
    g.add_argument("--eval_every", type=int, default=25, help="validation every N steps, and at the "
                   "last (default: %(default)s)")
    g.add_argument("--save_every", type=int, default=0, help="save the checkpoint every N steps "
                   "(default: 0, only at the end)")
    g.add_argument("--resume", action="store_true", help="continue the run saved in output_dir "
                   "with its own settings; only run-length flags (--max_steps, ...) may change")
    g.add_argument("--overwrite", action="store_true", help="start over in an output_dir that "
                   "holds an earlier run (its checkpoint and metrics are replaced)")
    g.add_argument("--encoding_errors", choices=["strict", "replace", "ignore"], default="strict",
                   help="invalid UTF-8 in the data: fail, or replace/drop the bad bytes (default: %(default)s)")
    g.add_argument("--device", choices=["cpu", "gpu", "auto"], default=None, help="where the arrays live "
                   "(default: env MINILLM_DEVICE, else cpu)")
    g.add_argument("--seed", type=int, default=0, help="initial weights, data split and batch "
                   "order (default: %(default)s)")
    g.add_argument("--sample_tokens", type=int, default=60, help="tokens generated at the end "
                   "(default: %(default)s)")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    given = checks.explicit_flags(parser, argv)
    if args.resume:                 # the stored run's arguments, with the flags given now on top
        stored, _ = checks.resume_args(given, args.output_dir)
        args = argparse.Namespace(**{**vars(args), **stored})
    for name, (default, mock_default) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, mock_default if args.use_mock else default)
    if args.learning_rate is None:
        args.learning_rate = 3e-3 if args.use_mock else 6e-4
    if args.hidden_weight is None:
        args.hidden_weight = 0.5 if args.use_mock else 0.0
    if args.ce_weight is None:      # plain training: CE alone, weight 1; distillation: its default
        args.ce_weight = DISTILL_CE_WEIGHT if has_teachers(args) else 1.0
    if not args.ce_weight >= 0:
        raise ValueError(f"--ce_weight must be >= 0, got {args.ce_weight}")
    if args.num_kv_heads is None:
        args.num_kv_heads = args.num_heads
    for name in ("batch_size", "num_epochs", "grad_accum_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    checks.check_ranges(args)
    checks.check_tokenizer_vocab(args, given)
    distill_config(args)            # bad weights fail here, before any training
    on_policy.check_settings(args.on_policy_fraction, args.on_policy_tokens, args.max_seq_length,
                             has_teachers(args), bool(args.teacher_cache_topk), args.objective,
                             args.mix_alpha)
    seq_kd.check_request(args.seq_kd, args.seq_kd_prompt, args.max_seq_length, has_teachers(args))
    if args.teacher_cache_topk and args.kl_direction != "forward":
        raise ValueError("--teacher_cache_topk caches the target of the forward KL; it cannot "
                         "serve --kl_direction reverse")
    return args


def has_teachers(args):
    return bool(args.use_mock or args.teacher)


def distill_config(args):
    return DistillConfig(kl_weight=args.kl_weight,
                         hidden_weight=args.hidden_weight, contrastive_weight=args.contrastive_weight,
                         temperature=args.temperature, kl_direction=args.kl_direction,
                         jsd_beta=args.jsd_beta,
                         hidden_loss=args.hidden_loss, cross_vocab=args.cross_vocab,
                         layer_map=args.layer_map).validate()


def get_tokenizer(args, train_texts, out):
    """--tokenizer_path, else the one a resumed run saved, else train one and save it."""
    if args.tokenizer_path:
        return BPETokenizer.load(args.tokenizer_path)
    if args.resume:
        if not (out / "checkpoint" / "training_state.safetensors").is_file():
            raise CheckpointError(f"cannot resume: no saved run in {out / 'checkpoint'}")
        return BPETokenizer.load(out / "checkpoint" / "tokenizer.json")
    tokenizer = BPETokenizer(vocab_size=args.vocab_size)
    tokenizer.train(train_texts)
    tokenizer.save(out / "tokenizer.json")
    return tokenizer


def build_teachers(args, tokenizer, train_seq, train_stream, config, out, loaded=()):
    """(teacher, weight) for every --teacher (`loaded` by checks.load_teachers_early; an
    n-gram is fitted here), plus the stand-ins of --use_mock."""
    teachers = []
    if args.use_mock:
        teachers.append(mock.build_mock_transformer_teacher(
            config, tokenizer, train_seq, out, args.mock_teacher_steps, args.batch_size,
            args.learning_rate, args.seed))
        teachers.append(mock.build_ngram_teacher(config.vocab_size, train_stream))
    weights = [1.0] * len(teachers)
    for kind, teacher, weight in loaded:
        if teacher is None:
            teacher = mock.build_ngram_teacher(config.vocab_size, train_stream)
        teachers.append(teacher)
        weights.append(weight)
    return list(zip(teachers, weights))


def attach_teacher_caches(distiller, args, train_seq, out):
    """--teacher_cache_topk: offline top-k outputs on disk for teachers sharing the student's tokens."""
    for link in distiller.links:
        if link.same_tokens:
            name = link.teacher.name
            cache = TeacherOutputCache(out / "teacher_cache" / name, name, args.teacher_cache_topk,
                                       args.temperature, len(train_seq), train_seq.shape[1] - 1,
                                       sequences_fingerprint(train_seq))
            distiller.attach_cache(link, cache)
            print(cache.message)


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


def run(args):
    backend.set_device(args.device)
    out = Path(args.output_dir)
    starting_over = checks.check_output_dir(out, args.resume, args.overwrite)  # before any work
    loaded_teachers = checks.load_teachers_early(args)        # a typo in --teacher fails now
    if args.resume:
        recover(out / "checkpoint")        # a save cut short: its newest complete copy back in place
    texts = load_texts(args.data_path, args.encoding_errors)
    train_texts, val_texts = split_train_val(texts, args.val_fraction, args.seed)
    tokenizer = get_tokenizer(args, train_texts, out)
    train_stream = encode_documents(tokenizer, train_texts)
    checks.check_enough_tokens(train_stream, args)
    train_seq = make_sequences(train_stream, args.max_seq_length)
    val_seq = make_sequences(encode_documents(tokenizer, val_texts), args.max_seq_length)
    config = TransformerConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
        num_heads=args.num_heads, num_kv_heads=args.num_kv_heads, intermediate_size=args.intermediate_size,
        max_seq_length=args.max_seq_length, sliding_window=args.sliding_window).validate()
    steps_per_epoch = math.ceil(math.ceil(len(train_seq) / args.batch_size) / args.grad_accum_steps)
    steps = args.max_steps or args.num_epochs * steps_per_epoch
    print(f"data: {len(train_texts)} train / {len(val_texts)} val documents, "
          f"{len(train_seq)} train / {len(val_seq)} val sequences of {args.max_seq_length} tokens, "
          f"vocab {tokenizer.vocab_size}")
    print("config:", json.dumps(asdict(config)))

    teachers = build_teachers(args, tokenizer, train_seq, train_stream, config, out, loaded_teachers)
    ckpt = out / "checkpoint"
    student = MiniTransformer.from_pretrained(ckpt) if args.resume else MiniTransformer(config, seed=args.seed)
    distill = distill_config(args) if teachers else None
    distiller = KnowledgeTransfer(student, teachers, distill, tokenizer, seed=args.seed) if teachers else None
    if args.teacher_cache_topk and distiller:
        attach_teacher_caches(distiller, args, train_seq, out)
    on_policy.check_teachers(args.on_policy_fraction, distiller)
    student_seq = with_teacher_text(args, teachers, train_seq, tokenizer, out)
    optimizer = make_optimizer(student, distiller, args.learning_rate, args.weight_decay)
    proj_params = distiller.proj_params if distiller else {}
    stored = load_run_state(ckpt, optimizer, proj_params) if args.resume else {"step": 0}
    start, data_fingerprint = stored["step"], sequences_fingerprint(train_seq)
    metrics_path = out / "metrics.jsonl"
    if args.resume:
        print(checks.resumed_schedule(stored, steps, data_fingerprint, ckpt))
        keep_metrics_until(metrics_path, start)      # each step once: drop those after the checkpoint
    else:
        if starting_over:
            print(starting_over)
            discard(ckpt)
        atomic_write(metrics_path, "")
    print(f"student: {student.num_parameters():,} parameters; {optimizer.describe()}; "
          f"{len(teachers)} teacher(s): {', '.join(t.name for t, _ in teachers) or 'none'}")
    print(f"loss: {loss_formula(args, distill)}")
    print(f"training steps {start}..{steps} ({steps_per_epoch} per epoch)")
    run_config = train_config(args, steps, args.ce_weight)
    meta = dict(args=vars(args), config=asdict(config), distill=asdict(distill) if distill else None,
                steps=steps, data=data_fingerprint)
    save = lambda step: save_run(ckpt, student, optimizer, proj_params, tokenizer, step, meta)
    done, interrupted = train(student, optimizer, student_seq, val_seq, run_config, distiller, start,
                              save, metrics_path, desc="student")
    if not (args.save_every and done % args.save_every == 0):   # (the loop saved it already)
        save(done)
    if interrupted:
        print(f"interrupted: checkpoint of step {done} saved to {ckpt}; continue with --resume")
        return 128 + signal.Signals[interrupted]          # 130 for Ctrl-C, 143 for SIGTERM
    print(f"checkpoint saved to {ckpt}")
    png = save_loss_curve(metrics_path, out / "loss_curve.png")
    print(f"metrics: {metrics_path}" + (f", plot: {png}" if png else ""))
    return report(args, student, distiller, tokenizer, train_seq, val_seq, steps, config) or 0


def train_config(args, steps, ce_weight):
    return TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.learning_rate,
                       warmup_steps=args.warmup_steps, grad_accum_steps=args.grad_accum_steps,
                       ce_weight=ce_weight, grad_clip=args.grad_clip, seed=args.seed,
                       eval_every=args.eval_every, save_every=args.save_every,
                       on_policy_fraction=args.on_policy_fraction, on_policy_tokens=args.on_policy_tokens,
                       objective=args.objective, mix_alpha=args.mix_alpha)


def with_teacher_text(args, teachers, train_seq, tokenizer, out):
    """--seq_kd N: the training sequences plus N written by the first transformer teacher."""
    writer = next((t for t, _ in teachers if getattr(t, "model", None) is not None), None)
    seq_kd.check_settings(args.seq_kd, args.seq_kd_prompt, writer, args.max_seq_length)
    if not args.seq_kd:
        return train_seq
    written, message = seq_kd.load_or_write(out / "seq_kd", writer, train_seq, args.seq_kd,
                                            args.seq_kd_prompt, args.seed, tokenizer.eos_id)
    print(message)
    return np.concatenate([train_seq, written])


def loss_formula(args, distill):
    """The loss this run minimises, with its weights, e.g. `1·CE` or `0.2·CE + Σ_t w_t·(0.8·KL)`."""
    formula = f"{args.ce_weight:g}·CE"
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
    if args.on_policy_fraction:
        formula += (f"; on {args.on_policy_fraction:g} of the micro-batches the student writes the "
                    f"last {args.on_policy_tokens} tokens and only the teachers' terms count there")
        if args.objective == "minillm":
            formula += (f" (MiniLLM: samples from {args.mix_alpha:g}·teacher + "
                        f"{1 - args.mix_alpha:g}·student, policy-gradient reverse KL in place of the KL)")
    return formula


def report(args, student, distiller, tokenizer, train_seq, val_seq, steps, config):
    """The closing table of validation perplexities, and a generated sample. With
    --compare_baseline the same student is also trained without teachers, on CE weight 1 (plain
    training) and, when the run's CE weight differs, on that same CE scale too."""
    rows = []
    for link in distiller.links if distiller else []:
        if link.same_tokens:                    # perplexities compare only on the same tokens
            teacher_logits = lambda ids: link.teacher.forward(ids)[0]
            rows.append((f"teacher {link.teacher.name}",
                         math.exp(evaluate(teacher_logits, val_seq, desc=f"evaluating {link.teacher.name}"))))
    rows.append(("student (distilled)" if distiller else "student",
                 math.exp(evaluate(student, val_seq, desc="evaluating the student"))))
    if args.compare_baseline:
        for ce_weight in sorted({1.0, args.ce_weight}, reverse=True):
            baseline = MiniTransformer(config, seed=args.seed)
            optimizer = make_optimizer(baseline, None, args.learning_rate, args.weight_decay)
            run_config = train_config(args, steps, ce_weight)
            run_config.eval_every, run_config.on_policy_fraction = 0, 0.0   # no teacher here
            done, stopped = train(baseline, optimizer, train_seq, val_seq, run_config,
                                  desc=f"baseline ce {ce_weight:g}")
            if stopped:                 # a half-trained baseline is no comparison: no table
                print(f"baseline (CE weight {ce_weight:g}) interrupted at step {done} of {steps}: "
                      f"not reported; the student's checkpoint is saved")
                return 128 + signal.Signals[stopped]
            rows.append((f"student without teachers (CE weight {ce_weight:g})",
                         math.exp(evaluate(baseline, val_seq, desc="evaluating the baseline"))))
    print("---")
    print(f"{'model':<40} {'val perplexity':>15}")
    for name, ppl in rows:
        print(f"{name:<40} {ppl:>15.2f}")
    print("---")
    print("\n".join(sample_lines(args, student, tokenizer, val_seq, config)))
    print("---")


def sample_lines(args, student, tokenizer, val_seq, config):
    """The closing sample, prompt and continuation apart: the prompt is real held-out text (the
    first 8 validation tokens), so only the continuation shows what the model writes."""
    prompt = val_seq[:1, :8]                                             # (1, 8) token ids
    room = args.sample_tokens if config.sliding_window else config.max_seq_length - prompt.shape[1]
    ids = generate(student, prompt, min(args.sample_tokens, room), temperature=0.8, top_k=40,
                   seed=args.seed)
    new = ids[0, prompt.shape[1]:].tolist()
    return ["sample (temperature 0.8, top-k 40):",
            f"  prompt ({prompt.shape[1]} validation tokens): {tokenizer.decode(prompt[0].tolist())!r}",
            f"  continuation ({len(new)} generated tokens): {tokenizer.decode(new)!r}"]


def main(argv=None):
    args = None
    previous = signal.signal(signal.SIGTERM, checks.terminate)   # outside the loop, like Ctrl-C
    try:
        args = parse_args(argv)
        return run(args)
    except (ValueError, CheckpointError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:                # a folder in the way, read-only, full disk: path + reason
        print(f"error: {checks.describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:      # before or after the loop, or a second Ctrl-C in it
        print(checks.interrupted_message(args), file=sys.stderr)
        return 143 if isinstance(e, checks.Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
