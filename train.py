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
import hashlib
import json
import math
import os
import signal
import sys
from dataclasses import asdict, replace
from pathlib import Path

import mini_llm  # noqa: F401  first: the thread pools' spin settings, before NumPy loads (mini_llm/threads.py)
import numpy as np

from mini_llm import backend, distributed, memory, threads
from mini_llm.distributed import SINGLE
from mini_llm.checkpoint import CheckpointError
from mini_llm.files import atomic_write
from mini_llm.model.transformer import MiniTransformer
from tokenizer.bpe_tokenizer import BPETokenizer
from training import checks, mock, on_policy, options, report, seq_kd
from training.data import encode_documents, load_texts, make_sequences, split_train_val
from training.knowledge_transfer import KnowledgeTransfer
from training.loop import evaluate, make_optimizer, train, trainable
from training.run_checkpoint import discard, keep_metrics_until, load_run_state, recover, save_run
from training.teacher_cache import TeacherOutputCache, sequences_fingerprint


def get_tokenizer(tokenizer_path, saved_run, vocab_size, train_texts, out):
    """The tokenizer at tokenizer_path; else the one a resumed run saved (saved_run: its
    checkpoint folder); else a new one of vocab_size trained on train_texts and saved in out."""
    if tokenizer_path:
        return BPETokenizer.load(tokenizer_path)
    if saved_run is not None:
        if not (saved_run / "training_state.safetensors").is_file():
            raise CheckpointError(f"cannot resume: no saved run in {saved_run}")
        return BPETokenizer.load(saved_run / "tokenizer.json")
    tokenizer = BPETokenizer(vocab_size=vocab_size)
    tokenizer.train(train_texts)
    tokenizer.save(out / "tokenizer.json")
    return tokenizer


def build_teachers(loaded, mock_settings, tokenizer, train_seq, train_stream, config, out):
    """(teacher, weight) for the stand-ins of --use_mock (mock_settings: their training steps,
    batch_size, lr and seed; None without --use_mock), then every --teacher (`loaded` by
    checks.load_teachers_early; an n-gram is fitted here)."""
    teachers = []
    if mock_settings is not None:
        teachers.append((mock.build_mock_transformer_teacher(config, tokenizer, train_seq, out,
                                                             **mock_settings), 1.0))
        teachers.append((mock.build_ngram_teacher(config.vocab_size, train_stream), 1.0))
    for kind, teacher, weight in loaded:
        if teacher is None:
            teacher = mock.build_ngram_teacher(config.vocab_size, train_stream)
        teachers.append((teacher, weight))
    return teachers


def build_distiller(student, teachers, distill, tokenizer, seed, cache_topk, train_seq, cache_folder,
                    group):
    """The KnowledgeTransfer tying the student to its teachers (None without teachers), with
    the offline top-k caches of --teacher_cache_topk attached (rank 0 creates them)."""
    if not teachers:
        return None
    distiller = KnowledgeTransfer(student, teachers, distill, tokenizer, seed=seed)
    if cache_topk:
        group.rank0_first(lambda: attach_teacher_caches(distiller, cache_topk, train_seq, cache_folder))
    return distiller


def attach_teacher_caches(distiller, topk, train_seq, folder):
    """--teacher_cache_topk: offline top-k outputs on disk, under folder/<teacher name>, for the
    teachers that share the student's tokens."""
    for link in distiller.links:
        if link.same_tokens:
            name = link.teacher.name
            cache = TeacherOutputCache(folder / name, name, topk, distiller.config.temperature,
                                       len(train_seq), train_seq.shape[1] - 1,
                                       sequences_fingerprint(train_seq))
            distiller.attach_cache(link, cache)
            print(cache.message)


def resumed_state(ckpt, optimizer, proj_params, world_size):
    """--resume: the saved optimizer state and projections restored in place; returns the
    saved meta (step, settings), after checking the run had as many MPI ranks."""
    stored = load_run_state(ckpt, optimizer, proj_params)
    checks.check_resumed_ranks(stored, world_size, ckpt)
    return stored


def with_teacher_text(teachers, train_seq, n_written, prompt_len, max_seq_length, seed, eos_id,
                      folder):
    """--seq_kd N: the training sequences plus N written by the first transformer teacher
    (cached in folder)."""
    writer = next((t for t, _ in teachers if getattr(t, "model", None) is not None), None)
    seq_kd.check_settings(n_written, prompt_len, writer, max_seq_length)
    if not n_written:
        return train_seq
    written, message = seq_kd.load_or_write(folder, writer, train_seq, n_written, prompt_len,
                                            seed, eos_id)
    print(message)
    return np.concatenate([train_seq, written])


def check_before_work(args, group, out, ckpt):
    """What can fail before any work, on every rank: the ranks agree on the flags and the data
    file; the output folder may be used; every --teacher opens. Then a resumed run's newest
    complete checkpoint is put back in place (rank 0). Returns (the starting-over notice or
    None, the teachers loaded early)."""
    group.check_same("the command line", lambda: json.dumps(vars(args), sort_keys=True))
    group.check_same("the data file", lambda: file_digest(args.data_path))   # one process: not read
    starting_over = checks.check_output_dir(out, args.resume, args.overwrite)
    group.barrier()                        # every rank has looked before rank 0 writes
    loaded_teachers = checks.load_teachers_early(args)        # a typo in --teacher fails now
    if args.resume:                        # a save cut short: its newest complete copy back in place
        group.rank0_first(lambda: recover(ckpt), then=lambda: None)
    return starting_over, loaded_teachers


def file_digest(path):
    """sha256 of a file's bytes ("" when it cannot be read: load_texts then says why)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def tokenizer_source(tokenizer_path, saved_run, vocab_size, out, group):
    """training texts -> the tokenizer (get_tokenizer): rank 0 first, which may train and save
    it; the other ranks then load the one rank 0 saved (or the same given file)."""
    saved_by_rank0 = None if saved_run else out / "tokenizer.json"
    return lambda texts: group.rank0_first(
        lambda: get_tokenizer(tokenizer_path, saved_run, vocab_size, texts, out),
        then=lambda: get_tokenizer(tokenizer_path or saved_by_rank0, saved_run, vocab_size, texts, out))


def prepare_data(data_path, encoding_errors, val_fraction, seed, seq_len, get_tokenizer):
    """read -> split -> tokenizer -> encode -> sequences (training/data.py). get_tokenizer:
    training texts -> the tokenizer. Returns the tokenizer, the training token stream and the
    (S, seq_len + 1) training and validation sequences."""
    texts = load_texts(data_path, encoding_errors)
    train_texts, val_texts = split_train_val(texts, val_fraction, seed)
    tokenizer = get_tokenizer(train_texts)
    train_stream = encode_documents(tokenizer, train_texts)
    checks.check_enough_tokens(train_stream, data_path, seq_len)
    train_seq = make_sequences(train_stream, seq_len)
    val_seq = make_sequences(encode_documents(tokenizer, val_texts), seq_len)
    print(f"data: {len(train_texts)} train / {len(val_texts)} val documents, "
          f"{len(train_seq)} train / {len(val_seq)} val sequences of {seq_len} tokens, "
          f"vocab {tokenizer.vocab_size}")
    return tokenizer, train_stream, train_seq, val_seq


def start_step(stored, resume, steps, data_fingerprint, ckpt, metrics_path, starting_over):
    """The step the loop starts from: the saved one of --resume (metrics after it dropped), or
    0 for a fresh run (an earlier run's checkpoint discarded with --overwrite, metrics emptied)."""
    if resume:
        print(checks.resumed_schedule(stored, steps, data_fingerprint, ckpt))
        keep_metrics_until(metrics_path, stored["step"])    # each step once: drop those after it
        return stored["step"]
    if starting_over:
        print(starting_over)
        discard(ckpt)
    atomic_write(metrics_path, "")
    return 0


def run(args, group=SINGLE):
    """The run, top to bottom: data -> model and teachers -> train -> save -> report. Each
    helper gets the values it uses. group: the MPI ranks (mini_llm/distributed.py); what
    writes a file runs on rank 0 first (rank0_first), and only rank 0 saves and reports."""
    backend.set_device(args.device)
    group.pick_gpu()                       # several ranks on a node: one GPU each
    threads.set_threads(args.threads, distributed.ranks_on_this_machine())
    memory.keep_freed_memory()                 # the step's temporaries reuse their pages
    print(f"{threads.describe()}; {memory.describe()}")
    out = Path(args.output_dir)
    ckpt, metrics_path = out / "checkpoint", out / "metrics.jsonl"
    starting_over, loaded_teachers = check_before_work(args, group, out, ckpt)
    tokenizer_from = tokenizer_source(args.tokenizer_path, ckpt if args.resume else None,
                                      args.vocab_size, out, group)
    tokenizer, train_stream, train_seq, val_seq = prepare_data(
        args.data_path, args.encoding_errors, args.val_fraction, args.seed, args.max_seq_length,
        tokenizer_from)
    config = options.model_config(args, tokenizer.vocab_size)
    print("config:", json.dumps(asdict(config)))
    global_batch = args.batch_size * group.size          # N ranks x --batch_size b
    steps_per_epoch = math.ceil(math.ceil(len(train_seq) / global_batch) / args.grad_accum_steps)
    run_config = options.train_config(args, args.max_steps or args.num_epochs * steps_per_epoch,
                                      args.ce_weight)

    mock_settings = (dict(steps=args.mock_teacher_steps, batch_size=global_batch,   # rank 0 alone
                          lr=args.learning_rate, seed=args.seed) if args.use_mock else None)
    teachers = group.rank0_first(lambda: build_teachers(loaded_teachers, mock_settings, tokenizer,
                                                        train_seq, train_stream, config, out))
    student = MiniTransformer.from_pretrained(ckpt) if args.resume else MiniTransformer(config, seed=args.seed)
    distill = options.distill_config(args) if teachers else None
    distiller = build_distiller(student, teachers, distill, tokenizer, args.seed,
                                args.teacher_cache_topk, train_seq, out / "teacher_cache", group)
    on_policy.check_teachers(args.on_policy_fraction, distiller)
    student_seq = group.rank0_first(lambda: with_teacher_text(
        teachers, train_seq, args.seq_kd, args.seq_kd_prompt, args.max_seq_length, args.seed,
        tokenizer.eos_id, out / "seq_kd"))
    optimizer = make_optimizer(student, distiller, args.learning_rate, args.weight_decay)
    proj_params = distiller.proj_params if distiller else {}
    stored = resumed_state(ckpt, optimizer, proj_params, group.size) if args.resume else {"step": 0}
    group.broadcast_params(trainable(student, distiller)[0])   # the same start on every rank
    data_fingerprint = sequences_fingerprint(train_seq)
    start = group.rank0_first(lambda: start_step(stored, args.resume, run_config.steps,
                                                 data_fingerprint, ckpt, metrics_path, starting_over),
                              then=lambda: stored["step"])
    print(f"student: {student.num_parameters():,} parameters; {optimizer.describe()}; "
          f"{len(teachers)} teacher(s): {', '.join(t.name for t, _ in teachers) or 'none'}")
    print(f"loss: {report.loss_formula(args.ce_weight, distill, run_config)}")
    print(f"training steps {start}..{run_config.steps} ({steps_per_epoch} per epoch)")
    if group.size > 1:
        print(report.data_parallel_line(group, args.batch_size, trainable(student, distiller)[1]))

    meta = dict(args=vars(args), config=asdict(config), distill=asdict(distill) if distill else None,
                steps=run_config.steps, data=data_fingerprint, world_size=group.size)
    save = lambda step: save_run(ckpt, student, optimizer, proj_params, tokenizer, step, meta)
    done, interrupted = train(student, optimizer, student_seq, val_seq, run_config, distiller, start,
                              save, metrics_path, desc="student", group=group)
    if not group.is_root:                  # rank 0 saves, plots and reports
        return 128 + signal.Signals[interrupted] if interrupted else 0
    if not (args.save_every and done % args.save_every == 0):   # (the loop saved it already)
        save(done)
    if interrupted:
        print(f"interrupted: checkpoint of step {done} saved to {ckpt}; continue with --resume")
        return 128 + signal.Signals[interrupted]          # 130 for Ctrl-C, 143 for SIGTERM
    print(f"checkpoint saved to {ckpt}")
    return closing_report(student, distiller, tokenizer, train_seq, val_seq, run_config,
                          args.compare_baseline, args.weight_decay, args.sample_tokens, out)


def closing_report(student, distiller, tokenizer, train_seq, val_seq, run_config,
                   compare_baseline, weight_decay, sample_tokens, out):
    """The loss curve, validation perplexities (with compare_baseline, also of the same
    student trained without teachers), then a generated sample. Returns the exit code."""
    metrics_path = out / "metrics.jsonl"
    png = report.save_loss_curve(metrics_path, out / "loss_curve.png")
    print(f"metrics: {metrics_path}" + (f", plot: {png}" if png else ""))
    rows = report.perplexity_rows(student, distiller, val_seq)
    if compare_baseline:
        baseline_rows, stopped = train_baselines(student.config, train_seq, val_seq, run_config,
                                                 weight_decay)
        if stopped:
            return 128 + signal.Signals[stopped]
        rows += baseline_rows
    report.print_table(rows)
    print("\n".join(report.sample_lines(student, tokenizer, val_seq, sample_tokens, run_config.seed)))
    print("---")
    return 0


def train_baselines(config, train_seq, val_seq, run_config, weight_decay):
    """--compare_baseline: the same student trained without teachers for the same steps, on CE
    weight 1 (plain training) and, when the run's CE weight differs, on that same CE scale too.
    Returns (table rows, None), or ([], "SIGINT"/"SIGTERM") when interrupted: a half-trained
    baseline is no comparison, so then there is no table."""
    rows = []
    for ce_weight in sorted({1.0, run_config.ce_weight}, reverse=True):
        baseline = MiniTransformer(config, seed=run_config.seed)     # the student's own init
        optimizer = make_optimizer(baseline, None, run_config.lr, weight_decay)
        plain = replace(run_config, ce_weight=ce_weight, eval_every=0, on_policy_fraction=0.0)
        done, stopped = train(baseline, optimizer, train_seq, val_seq, plain,
                              desc=f"baseline ce {ce_weight:g}")
        if stopped:
            print(f"baseline (CE weight {ce_weight:g}) interrupted at step {done} of {plain.steps}: "
                  f"not reported; the student's checkpoint is saved")
            return [], stopped
        rows.append((f"student without teachers (CE weight {ce_weight:g})",
                     math.exp(evaluate(baseline, val_seq, desc="evaluating the baseline"))))
    return rows, None


def fail(group, message, code=2, own=False):
    """An error's one line, then its exit code. With several ranks: a bad flag or file is met
    by every rank at the same place, and rank 0 alone prints it; an error that may be one
    rank's own (own=True: the file system; or anything while training runs in lockstep) is
    printed by that rank, which then stops them all (the others would wait in a collective)."""
    if group.size > 1 and (group.lockstep or (own and not group.is_root)):
        print(f"rank {group.rank}: {message}" if group.rank else message, file=sys.__stderr__)
        group.abort(code)
    elif group.is_root:
        print(message, file=sys.stderr)
    return code


def main(argv=None):
    args, group = None, SINGLE
    previous = signal.signal(signal.SIGTERM, checks.terminate)   # outside the loop, like Ctrl-C
    try:
        group = distributed.setup()
        if not group.is_root:           # rank 0 prints; the others' output (and bars) go nowhere
            sys.stdout = sys.stderr = open(os.devnull, "w")
        args = options.parse_args(argv, description=__doc__)
        return run(args, group)
    except distributed.NoMPI as e:      # one line from the launcher's rank 0, none from the rest
        if distributed.launched_rank() == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, CheckpointError, RuntimeError) as e:
        return fail(group, f"error: {e}")
    except OSError as e:                # a folder in the way, read-only, full disk: path + reason
        return fail(group, f"error: {checks.describe_os_error(e)}", own=True)
    except KeyboardInterrupt as e:      # before or after the loop, or a second Ctrl-C in it
        print(checks.interrupted_message(args), file=sys.stderr)
        return 143 if isinstance(e, checks.Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
