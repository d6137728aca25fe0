"""train.py's command line: the flags, their defaults, and the configs they become.

build_parser lists every flag (grouped as `python train.py --help` shows them); parse_args
completes and checks them; model_config, distill_config and train_config turn them into the
dataclasses the library takes (TransformerConfig, DistillConfig, TrainConfig). Besides
training/checks.py, which checks them, nothing else in the library sees `args`.
"""
import argparse
from pathlib import Path

from mini_llm import threads
from mini_llm.model.config import TransformerConfig
from training import checks, on_policy, seq_kd
from training.knowledge_transfer import DISTILL_CE_WEIGHT, DistillConfig
from training.loop import TrainConfig

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "sample_training.txt"
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
What a step costs: at the documented size ~7-8 s on 2 CPU cores (12-13 s on one thread), so
--num_epochs 3 on 1 MB of text takes ~18-20 min; at the --use_mock size ~0.1-0.5 s.
--threads sets every thread pool (default: all cores).
A run prints its own measured time per step, and its estimate, after the first steps."""


def size_help(name):
    """'--hidden_size' help: what it is, its default and its --use_mock default."""
    default, mock_default = SIZES[name]
    meaning = SIZE_MEANINGS[name].replace("%", "%%")         # argparse formats help with %
    return f"{meaning} (default: {default or 'num_heads'}; {mock_default} with --use_mock)"


def build_parser(description=None):
    """The command line: every flag with its help and default (python train.py --help)."""
    p = checks.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add_flags in (add_data_flags, add_model_flags, add_optimization_flags, add_distillation_flags,
                      add_on_policy_flags, add_system_flags):
        add_flags(p)
    return p


def add_data_flags(p):
    g = p.add_argument_group("data")
    g.add_argument("--data_path", default=str(DEFAULT_DATA), help=".txt (a document per line, or "
                   "blank-line separated), .json (list of strings or {'text': ...}) or .jsonl (default: %(default)s)")
    g.add_argument("--output_dir", default="output", help="where the checkpoint, metrics and "
                   "plot go (default: %(default)s)")
    g.add_argument("--tokenizer_path", help="a saved tokenizer.json (or a folder holding one); "
                   "default: train one on the data and save it in output_dir")
    g.add_argument("--val_fraction", type=float, default=0.1, help="held-out share (default: %(default)s)")


def add_model_flags(p):
    g = p.add_argument_group("model", "The documented size (TransformerConfig's defaults), or a "
                             "small one with --use_mock.\n" + STEP_COST)
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                 "intermediate_size", "max_seq_length"):
        g.add_argument(f"--{name}", type=int, help=size_help(name))
    g.add_argument("--sliding_window", type=int, help="attention window W (default: full causal)")


def add_optimization_flags(p):
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


def add_distillation_flags(p):
    g = p.add_argument_group("distillation")
    g.add_argument("--use_mock", action="store_true", help="stand-in teachers built in this run: a "
                   "larger MiniTransformer trained briefly here, and an n-gram model")
    g.add_argument("--teacher", action="append", default=[], metavar="KIND:PATH[:WEIGHT]",
                   help="minillm (a MiniLLM checkpoint; flux is its older name), llama, mistral, "
                   "qwen2, qwen3 (Hugging Face folders) or ngram; repeatable (e.g. "
                   "llama:models/tiny:0.5; default: none, plain training unless --use_mock)")
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


def add_on_policy_flags(p):
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


def add_system_flags(p):
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
    threads.add_flag(g)
    g.add_argument("--seed", type=int, default=0, help="initial weights, data split and batch "
                   "order (default: %(default)s)")
    g.add_argument("--sample_tokens", type=int, default=60, help="tokens generated at the end "
                   "(default: %(default)s)")


def parse_args(argv=None, description=None):
    """The flags, completed: sizes by --use_mock or not, the CE weight by teachers or not, the
    stored flags of a --resume'd run; every value checked (one ValueError line) before work."""
    parser = build_parser(description)
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


def model_config(args, vocab_size):
    """The student's TransformerConfig: the size flags and the tokenizer's real vocabulary."""
    return TransformerConfig(
        vocab_size=vocab_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
        num_heads=args.num_heads, num_kv_heads=args.num_kv_heads, intermediate_size=args.intermediate_size,
        max_seq_length=args.max_seq_length, sliding_window=args.sliding_window).validate()


def train_config(args, steps, ce_weight):
    return TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.learning_rate,
                       warmup_steps=args.warmup_steps, grad_accum_steps=args.grad_accum_steps,
                       ce_weight=ce_weight, grad_clip=args.grad_clip, seed=args.seed,
                       eval_every=args.eval_every, save_every=args.save_every,
                       on_policy_fraction=args.on_policy_fraction, on_policy_tokens=args.on_policy_tokens,
                       objective=args.objective, mix_alpha=args.mix_alpha)
