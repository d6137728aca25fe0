"""Train a MiniLLM student, alone or distilled from teachers.

Examples
    python train.py --use_mock                       # whole pipeline, stand-in teachers, < 3 min
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

Writes to --output_dir: checkpoint/ (model, tokenizer, optimizer state), metrics.jsonl,
loss_curve.png (when matplotlib is installed). Errors in the input are one line, exit code 2.
"""
import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path


from mini_llm import backend
from mini_llm.checkpoint import CheckpointError
from mini_llm.generate import generate
from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from tokenizer.bpe_tokenizer import BPETokenizer
from training import mock
from training.data import encode_documents, load_texts, make_sequences, split_train_val
from training.knowledge_transfer import DISTILL_CE_WEIGHT, DistillConfig, KnowledgeTransfer
from training.loop import TrainConfig, evaluate, make_optimizer, train
from training.run_checkpoint import load_run_state, save_run
from training.teachers import (TeacherOutputCache, load_flux_teacher, load_llama_teacher,
                               parse_teacher_spec, sequences_fingerprint)

DEFAULT_DATA = Path(__file__).parent / "data" / "sample_training.txt"
# model sizes: the documented defaults, and smaller ones that make --use_mock finish in minutes
SIZES = dict(vocab_size=(30000, 512), hidden_size=(384, 64), num_layers=(6, 2), num_heads=(6, 4),
             num_kv_heads=(None, 2), intermediate_size=(1536, 192), max_seq_length=(512, 64),
             batch_size=(8, 16), num_epochs=(1, 6))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data_path", default=str(DEFAULT_DATA), help=".txt (a document per line, or "
                   "blank-line separated), .json (list of strings or {'text': ...}) or .jsonl (default: %(default)s)")
    g.add_argument("--output_dir", default="output", help="default: %(default)s")
    g.add_argument("--tokenizer_path", help="a saved tokenizer.json (or a folder holding one); "
                   "default: train one on the data and save it in output_dir")
    g.add_argument("--val_fraction", type=float, default=0.1, help="held-out share (default: %(default)s)")
    g = p.add_argument_group("model (defaults: 30000/384/6/6/1536/512, or small ones with --use_mock)")
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                 "intermediate_size", "max_seq_length"):
        g.add_argument(f"--{name}", type=int)
    g.add_argument("--sliding_window", type=int, help="attention window W (default: full causal)")
    g = p.add_argument_group("optimization")
    g.add_argument("--batch_size", type=int)
    g.add_argument("--num_epochs", type=int)
    g.add_argument("--max_steps", type=int, help="optimizer steps (default: from num_epochs)")
    g.add_argument("--learning_rate", type=float, help="peak learning rate (default: 6e-4, or 3e-3 with --use_mock)")
    g.add_argument("--warmup_steps", type=int, default=10, help="default: %(default)s")
    g.add_argument("--grad_accum_steps", type=int, default=1, help="default: %(default)s")
    g.add_argument("--weight_decay", type=float, default=0.1, help="default: %(default)s")
    g.add_argument("--grad_clip", type=float, default=1.0, help="default: %(default)s")
    g = p.add_argument_group("distillation")
    g.add_argument("--use_mock", action="store_true", help="stand-in teachers built in this run: a "
                   "larger MiniTransformer trained briefly here, and an n-gram model")
    g.add_argument("--teacher", action="append", default=[], metavar="KIND:PATH[:WEIGHT]",
                   help="llama|mistral|flux|ngram; repeatable (e.g. llama:models/tiny:0.5)")
    d = DistillConfig()
    g.add_argument("--ce_weight", type=float, help="weight of the cross-entropy on the labels "
                   f"(default: 1 without teachers, {DISTILL_CE_WEIGHT} with teachers)")
    g.add_argument("--kl_weight", type=float, default=d.kl_weight, help="weight of each teacher's "
                   "KL (or ULD) term (default: %(default)s)")
    g.add_argument("--hidden_weight", type=float, default=None, help="default: 0, or 0.5 with --use_mock")
    g.add_argument("--contrastive_weight", type=float, default=d.contrastive_weight, help="default: %(default)s")
    g.add_argument("--temperature", type=float, default=d.temperature, help="default: %(default)s")
    g.add_argument("--kl_direction", choices=["forward", "reverse"], default=d.kl_direction)
    g.add_argument("--hidden_loss", choices=["mse", "cosine"], default=d.hidden_loss)
    g.add_argument("--layer_map", help='JSON, e.g. \'{"llama": {"8": 1, "16": 2}}\' (default: spread evenly)')
    g.add_argument("--cross_vocab", action="store_true", help="let teachers with another vocabulary "
                   "teach through Universal Logit Distillation")
    g.add_argument("--teacher_cache_topk", type=int, help="cache teachers' top-k outputs on disk (offline)")
    g.add_argument("--mock_teacher_steps", type=int, default=150, help="default: %(default)s")
    g.add_argument("--compare_baseline", action="store_true",
                   help="also train the same student without teachers, for the final table")
    g = p.add_argument_group("system")
    g.add_argument("--eval_every", type=int, default=25, help="default: %(default)s")
    g.add_argument("--save_every", type=int, default=0, help="default: only at the end")
    g.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint")
    g.add_argument("--device", choices=["cpu", "gpu", "auto"], default=None, help="default: env MINILLM_DEVICE or cpu")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--sample_tokens", type=int, default=60, help="tokens generated at the end")
    args = p.parse_args(argv)
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
    distill_config(args)            # bad weights fail here, before any training
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


def build_teachers(args, tokenizer, train_seq, train_stream, config, out):
    """(teacher, weight) for every --teacher, plus the stand-ins of --use_mock."""
    teachers = []
    if args.use_mock:
        teachers.append(mock.build_mock_transformer_teacher(
            config, tokenizer, train_seq, out, args.mock_teacher_steps, args.batch_size,
            args.learning_rate, args.seed))
        teachers.append(mock.build_ngram_teacher(config.vocab_size, train_stream))
    weights = [1.0] * len(teachers)
    for spec in args.teacher:
        kind, path, weight = parse_teacher_spec(spec)
        if kind == "ngram":
            teachers.append(mock.build_ngram_teacher(config.vocab_size, train_stream))
        else:
            teachers.append((load_llama_teacher if kind == "llama" else load_flux_teacher)(path))
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
    ax.plot([r["step"] for r in rows], [r["total"] for r in rows], label="train loss (total)")
    if any(r["total"] != r["ce"] for r in rows):          # distillation: the CE share apart
        ax.plot([r["step"] for r in rows], [r["ce"] for r in rows], label="train cross-entropy")
    val = [r for r in rows if "val_loss" in r]
    ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def run(args):
    backend.set_device(args.device)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = load_texts(args.data_path)
    train_texts, val_texts = split_train_val(texts, args.val_fraction, args.seed)
    tokenizer = get_tokenizer(args, train_texts, out)
    train_stream = encode_documents(tokenizer, train_texts)
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

    teachers = build_teachers(args, tokenizer, train_seq, train_stream, config, out)
    ckpt = out / "checkpoint"
    student = MiniTransformer.from_pretrained(ckpt) if args.resume else MiniTransformer(config, seed=args.seed)
    distill = distill_config(args) if teachers else None
    distiller = KnowledgeTransfer(student, teachers, distill, tokenizer, seed=args.seed) if teachers else None
    if args.teacher_cache_topk and distiller:
        attach_teacher_caches(distiller, args, train_seq, out)
    optimizer = make_optimizer(student, distiller, args.learning_rate, args.weight_decay)
    proj_params = distiller.proj_params if distiller else {}
    start = load_run_state(ckpt, optimizer, proj_params)["step"] if args.resume else 0
    metrics_path = out / "metrics.jsonl"
    if not args.resume:
        metrics_path.write_text("")
    print(f"student: {student.num_parameters():,} parameters; {optimizer.describe()}; "
          f"{len(teachers)} teacher(s): {', '.join(t.name for t, _ in teachers) or 'none'}")
    print(f"loss: {loss_formula(args, distill)}")
    print(f"training steps {start}..{steps} ({steps_per_epoch} per epoch)")
    run_config = train_config(args, steps, args.ce_weight)
    meta = dict(args=vars(args), config=asdict(config), distill=asdict(distill) if distill else None)
    save = lambda step: save_run(ckpt, student, optimizer, proj_params, tokenizer, step, meta)
    done, interrupted = train(student, optimizer, train_seq, val_seq, run_config, distiller, start,
                              save, metrics_path, desc="student")
    save(done)
    if interrupted:
        print(f"interrupted: checkpoint of step {done} saved to {ckpt}; continue with --resume")
        return 130
    print(f"checkpoint saved to {ckpt}")
    png = save_loss_curve(metrics_path, out / "loss_curve.png")
    print(f"metrics: {metrics_path}" + (f", plot: {png}" if png else ""))
    report(args, student, distiller, tokenizer, train_seq, val_seq, steps, config)
    return 0


def train_config(args, steps, ce_weight):
    return TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.learning_rate,
                       warmup_steps=args.warmup_steps, grad_accum_steps=args.grad_accum_steps,
                       ce_weight=ce_weight, grad_clip=args.grad_clip, seed=args.seed,
                       eval_every=args.eval_every, save_every=args.save_every)


def loss_formula(args, distill):
    """The loss this run minimises, with its weights, e.g. `1·CE` or `0.2·CE + Σ_t w_t·(0.8·KL)`."""
    formula = f"{args.ce_weight:g}·CE"
    if distill is None:
        return formula + " (plain training: no teacher)"
    terms = [f"{distill.kl_weight:g}·KL({distill.kl_direction}, τ={distill.temperature:g})"]
    if distill.hidden_weight:
        terms.append(f"{distill.hidden_weight:g}·hidden_{distill.hidden_loss}")
    if distill.contrastive_weight:
        terms.append(f"{distill.contrastive_weight:g}·InfoNCE")
    return formula + f" + Σ_teachers weight·({' + '.join(terms)})"


def report(args, student, distiller, tokenizer, train_seq, val_seq, steps, config):
    """The closing table of validation perplexities, and a generated sample. With
    --compare_baseline the same student is also trained without teachers, on CE weight 1 (plain
    training) and, when the run's CE weight differs, on that same CE scale too."""
    rows = []
    for link in distiller.links if distiller else []:
        if link.same_tokens:                    # perplexities compare only on the same tokens
            teacher_logits = lambda ids: link.teacher.forward(ids)[0]
            rows.append((f"teacher {link.teacher.name}", math.exp(evaluate(teacher_logits, val_seq))))
    rows.append(("student (distilled)" if distiller else "student", math.exp(evaluate(student, val_seq))))
    if args.compare_baseline:
        for ce_weight in sorted({1.0, args.ce_weight}, reverse=True):
            baseline = MiniTransformer(config, seed=args.seed)
            optimizer = make_optimizer(baseline, None, args.learning_rate, args.weight_decay)
            run_config = train_config(args, steps, ce_weight)
            run_config.eval_every = 0
            train(baseline, optimizer, train_seq, val_seq, run_config, desc=f"baseline ce {ce_weight:g}")
            rows.append((f"student without teachers (CE weight {ce_weight:g})",
                         math.exp(evaluate(baseline, val_seq))))
    print("---")
    print(f"{'model':<40} {'val perplexity':>15}")
    for name, ppl in rows:
        print(f"{name:<40} {ppl:>15.2f}")
    print("---")
    prompt = val_seq[:1, :8]                             # the first tokens of the held-out text
    room = args.sample_tokens if config.sliding_window else config.max_seq_length - prompt.shape[1]
    ids = generate(student, prompt, min(args.sample_tokens, room), temperature=0.8, top_k=40,
                   seed=args.seed)
    print("sample:", tokenizer.decode(ids[0].tolist()))
    print("---")


def main(argv=None):
    try:
        args = parse_args(argv)
        return run(args)
    except (ValueError, CheckpointError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before the student's training began: nothing saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
