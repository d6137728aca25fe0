"""What the command lines check before any work: one `error:` line per problem, exit code 2.

train.py, evaluate.py and generate.py validate every argument, the output folder and the
teachers before a tokenizer is trained or a byte of data is encoded, so a typo fails in a
second. Everything here raises ValueError (or mini_llm.files.OutputError) with one line that
names the flag, file or field.

    ArgumentParser             argparse, but a usage mistake is one `error:` line (exit 2)
    explicit_flags             which flags the user typed (to tell them from defaults)
    check_ranges               numbers in range: --learning_rate > 0, --batch_size >= 1, ...
    check_output_dir           writable, and never a silent overwrite of an earlier run
    resume_args                --resume alone continues the stored run; contradictions refused
    load_teachers_early        --teacher folders opened and checked first
"""
import argparse
import math
import sys
from pathlib import Path

from training.run_checkpoint import any_copy, newest_complete, read_run_meta
from training.teacher_specs import HF_KINDS, parse_teacher_spec
from training.teachers import check_vocab, load_llama_teacher, load_minillm_teacher


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, except that a mistake prints one line, `error: ...`, and exits 2
    (argparse prints the usage first; `--help` still shows it)."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def explicit_flags(parser, argv):
    """{dest: value} of the flags given on the command line, whatever their defaults: parse
    again with every default set to SUPPRESS, so only what was typed appears."""
    actions = [a for a in parser._actions if a.dest != "help"]
    defaults = [a.default for a in actions]
    for a in actions:
        a.default = argparse.SUPPRESS
    try:
        return vars(parser.parse_args(argv))
    finally:
        for a, default in zip(actions, defaults):
            a.default = default


# ----------------------------------------------------------------------------- numbers

def require(ok, flag, value, rule):
    if not ok:
        raise ValueError(f"{flag} must be {rule}, got {value!r}")


def check_ranges(args):
    """train.py's numbers, each against its rule."""
    a = args
    finite = lambda x: isinstance(x, (int, float)) and math.isfinite(x)
    require(finite(a.learning_rate) and a.learning_rate > 0, "--learning_rate", a.learning_rate, "> 0")
    require(a.max_steps is None or a.max_steps >= 1, "--max_steps", a.max_steps,
            ">= 1 (leave it out to train --num_epochs epochs)")
    require(finite(a.grad_clip) and a.grad_clip >= 0, "--grad_clip", a.grad_clip, ">= 0 (0 = no clipping)")
    require(finite(a.weight_decay) and a.weight_decay >= 0, "--weight_decay", a.weight_decay, ">= 0")
    require(0 < a.val_fraction < 1, "--val_fraction", a.val_fraction, "between 0 and 1 (exclusive)")
    for name in ("batch_size", "num_epochs", "grad_accum_steps", "mock_teacher_steps", "vocab_size",
                 "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                 "max_seq_length"):
        require(getattr(a, name) >= 1, f"--{name}", getattr(a, name), ">= 1")
    for name in ("warmup_steps", "eval_every", "save_every", "sample_tokens"):
        require(getattr(a, name) >= 0, f"--{name}", getattr(a, name), ">= 0")
    require(a.sliding_window is None or a.sliding_window >= 1, "--sliding_window", a.sliding_window,
            ">= 1 (leave it out for full causal attention)")
    require(a.teacher_cache_topk is None or a.teacher_cache_topk >= 1, "--teacher_cache_topk",
            a.teacher_cache_topk, ">= 1")
    require(finite(a.temperature) and a.temperature > 0, "--temperature", a.temperature, "> 0")


def check_generation(args):
    """generate.py's sampling settings."""
    require(args.max_new_tokens >= 0, "--max_new_tokens", args.max_new_tokens, ">= 0")
    require(math.isfinite(args.temperature) and args.temperature >= 0, "--temperature",
            args.temperature, ">= 0 (0 = greedy)")
    require(args.top_k is None or args.top_k >= 0, "--top_k", args.top_k, ">= 0 (0 = off)")
    require(args.top_p is None or 0 < args.top_p <= 1, "--top_p", args.top_p, "in (0, 1]")


# ----------------------------------------------------------------------------- output folder

def check_output_dir(out, resume, overwrite):
    """The folder can be written, and holds no earlier run unless --resume or --overwrite says
    what to do with it. Returns a line to print, or None."""
    from mini_llm.files import check_writable_dir
    check_writable_dir(out, "--output_dir")
    ckpt, metrics = Path(out) / "checkpoint", Path(out) / "metrics.jsonl"
    if resume:
        return None
    held = any_copy(ckpt) or (metrics.is_file() and metrics.stat().st_size > 0)
    if not held:
        return None
    _, step = newest_complete(ckpt)
    what = f"a run (checkpoint of step {step})" if step is not None else "a run (metrics.jsonl)"
    if not overwrite:
        raise ValueError(f"--output_dir {out} already holds {what}: continue it with --resume, "
                         f"start over with --overwrite, or choose another --output_dir")
    return f"--overwrite: starting over in {out}, which held {what}"


# ----------------------------------------------------------------------------- --resume

# flags that may differ from the stored run: its length, logging, and where it runs
MAY_CHANGE_ON_RESUME = {"max_steps", "num_epochs", "eval_every", "save_every", "sample_tokens",
                        "compare_baseline", "device", "threads", "output_dir", "resume", "overwrite"}


def _same(a, b):
    return a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b))


def resume_args(given, out):
    """The stored run's arguments, with the flags given now on top. A given flag that
    contradicts the checkpoint is refused, naming it; only MAY_CHANGE_ON_RESUME may change.
    Returns (arguments dict, stored meta)."""
    meta, folder = read_run_meta(Path(out) / "checkpoint")
    stored = meta.get("args")
    if not isinstance(stored, dict):
        raise ValueError(f"cannot resume: {folder} stores no run arguments (saved by an older MiniLLM)")
    for name, value in given.items():
        if name in MAY_CHANGE_ON_RESUME or name not in stored or _same(value, stored[name]):
            continue
        raise ValueError(f"--resume: --{name} {value!r} contradicts the checkpoint in {folder} "
                         f"({name} = {stored[name]!r}); only "
                         f"{', '.join('--' + n for n in sorted(MAY_CHANGE_ON_RESUME - {'resume'}))} may change")
    return {**stored, **given, "resume": True}, meta


# ----------------------------------------------------------------------------- teachers

def mock_teacher_names():
    return ["mock_llama", "ngram"]


def check_layer_map_teachers(layer_map, names):
    """--layer_map keys must name teachers of this run."""
    import json
    if not layer_map:
        return
    try:
        spec = json.loads(layer_map)
    except json.JSONDecodeError as e:
        raise ValueError(f"--layer_map is not valid JSON (column {e.colno}): {e.msg}") from None
    if isinstance(spec, dict):
        unknown = [k for k in spec if k not in names]
        if unknown:
            raise ValueError(f"--layer_map names teacher {unknown[0]!r}, but this run's teachers are "
                             f"{', '.join(names) or 'none'}")


def load_teachers_early(args):
    """Parse every --teacher and open its folder (config, weights, tokenizer) before any data is
    read, checking what can be checked now. Returns [(kind, teacher or None for ngram, weight)]."""
    specs = [parse_teacher_spec(spec) for spec in args.teacher]
    names = (mock_teacher_names() if args.use_mock else []) + [kind for kind, _, _ in specs]
    check_layer_map_teachers(args.layer_map, names)
    loaded = []
    for kind, path, weight in specs:
        if kind == "ngram":
            loaded.append((kind, None, weight))
            continue
        if not Path(path).exists():
            raise ValueError(f"--teacher {kind}: {path} does not exist")
        if not Path(path).is_dir():
            raise ValueError(f"--teacher {kind}: {path} is a file; give the checkpoint folder")
        teacher = (load_llama_teacher(path, name=kind, kind=kind) if kind in HF_KINDS
                   else load_minillm_teacher(path))
        limit, prefix = teacher.model.config.max_seq_length, teacher.prefix_ids()
        if teacher.model.config.sliding_window is None and limit < args.max_seq_length + len(prefix):
            raise ValueError(f"--teacher {kind}: {path} takes at most {limit} positions "
                             f"(max_position_embeddings), less than --max_seq_length {args.max_seq_length}"
                             + (f" + its {len(prefix)} prefix token(s)" if prefix else ""))
        if prefix:
            print(f"teacher {kind}: its tokenizer's post-processor puts {prefix} before every "
                  f"sequence: the teacher reads them first; the student's own sequences get none "
                  f"(its documents are separated by eos)")
        if not args.cross_vocab and not args.tokenizer_path and not args.resume:
            check_vocab(teacher, args.vocab_size)    # the student's vocabulary will be --vocab_size
        loaded.append((kind, teacher, weight))
    return loaded


def check_tokenizer_vocab(args, given):
    """--tokenizer_path with a --vocab_size that disagrees with it is refused."""
    from tokenizer.bpe_tokenizer import BPETokenizer
    if not args.tokenizer_path:
        return
    tokenizer = BPETokenizer.load(args.tokenizer_path)
    if "vocab_size" in given and given["vocab_size"] != tokenizer.vocab_size:
        raise ValueError(f"--vocab_size {given['vocab_size']} disagrees with --tokenizer_path "
                         f"{args.tokenizer_path} ({tokenizer.vocab_size} tokens); drop --vocab_size")


# ----------------------------------------------------------------------------- data

def check_enough_tokens(train_stream, data_path, max_seq_length):
    """The training split must fill at least one sequence of --max_seq_length + 1 tokens."""
    need = max_seq_length + 1
    if len(train_stream) < need:
        raise ValueError(f"--data_path {data_path}: the training split is {len(train_stream)} "
                         f"tokens, shorter than one sequence of --max_seq_length {max_seq_length} "
                         f"(+1); use --max_seq_length {max(1, len(train_stream) - 1)} or less, or more text")


def check_resumed_ranks(stored, world_size, folder):
    """--resume with the number of MPI ranks the run was saved with (the global batch is
    ranks · --batch_size, so another number would change the schedule)."""
    saved = stored.get("world_size", 1)
    if saved != world_size:
        raise ValueError(f"--resume: the run in {folder} was trained by {saved} rank(s), this is "
                         f"{world_size}; resume with mpiexec -n {saved} (or start over with --overwrite)")


def resumed_schedule(stored, steps, data_fingerprint, folder):
    """What --resume continues: refused when the data changed or the run is already past the
    new length; a changed length is said with its consequence for the schedule."""
    start = stored["step"]
    if stored.get("data") not in (None, data_fingerprint):
        raise ValueError(f"--resume: the training data differs from the run saved in {folder} "
                         f"(the file changed?); resume with the same data, or start over with --overwrite")
    if start > steps:
        raise ValueError(f"--resume: the checkpoint in {folder} is at step {start}, beyond the "
                         f"{steps} steps asked for; give --max_steps {start} or more")
    line = f"resuming at step {start} of {steps} from {folder}"
    before = stored.get("steps")
    if before is not None and before != steps:
        line += (f"; the run was {before} steps: the cosine schedule now ends at step {steps}, "
                 f"so the learning rate from step {start} on differs from the original schedule")
    return line


# ----------------------------------------------------------------------------- signals

class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop: handled like Ctrl-C (exit code 143)."""


def terminate(signum, frame):
    raise Terminated


def interrupted_message(args):
    """The truth about what is on disk after an interruption that did not save the step."""
    if args is None:
        return "interrupted: nothing saved"
    folder, step = newest_complete(Path(args.output_dir) / "checkpoint")
    if folder is None:
        return f"interrupted: nothing saved (no checkpoint in {args.output_dir})"
    return (f"interrupted: the checkpoint of step {step} in {folder} is intact (the step in "
            f"progress was not saved); continue with --resume")


def describe_os_error(e):
    from mini_llm.files import describe_os_error as describe
    return describe(e)
