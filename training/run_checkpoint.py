"""Saving and resuming a training run: a complete checkpoint exists at every instant.

    checkpoint/config.json, model.safetensors   the student (Hugging Face names: loads anywhere)
    checkpoint/tokenizer.json                   the student's tokenizer
    checkpoint/training_state.safetensors       AdamW moments (student + projections), the
                                                projection matrices, and meta: step, settings
Each file is written atomically (mini_llm.files.atomic_write), training_state last, so a folder
holding all four files is complete. A save is a swap of folders:

    1. write checkpoint.tmp/ (all four files)          checkpoint/ (step s) is untouched
    2. rename checkpoint/     -> checkpoint.old/        checkpoint.tmp/ (step s+k) is complete
    3. rename checkpoint.tmp/ -> checkpoint/
    4. delete checkpoint.old/

A crash (even SIGKILL) at any instant leaves at least one complete folder among checkpoint,
checkpoint.tmp and checkpoint.old. `newest_complete` finds the one with the latest step;
`recover` moves it back to checkpoint/ before anything is deleted, so no save, resume or new
run ever deletes the only complete copy. `load_checkpoint` reads a run back (model and
tokenizer, from that newest copy) for evaluate.py, generate.py and demos/generate.py.
"""
import json
import os
import shutil
from pathlib import Path

from mini_llm import backend
from mini_llm.checkpoint import (CheckpointError, load_training_state, read_metadata,
                                 save_training_state)
from mini_llm.files import OutputError, atomic_write, describe_os_error, fsync_dir
from mini_llm.model.transformer import MiniTransformer
from tokenizer.bpe_tokenizer import BPETokenizer

FILES = ("config.json", "model.safetensors", "tokenizer.json", "training_state.safetensors")
STATE = "training_state.safetensors"


def siblings(directory):
    """checkpoint, checkpoint.tmp, checkpoint.old: where a save may have left a copy."""
    directory = Path(directory)
    return [directory, directory.with_name(directory.name + ".tmp"),
            directory.with_name(directory.name + ".old")]


def saved_step(folder):
    """The step of a complete checkpoint folder, or None if it is incomplete or unreadable."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in FILES):
        return None
    try:
        return int(json.loads(read_metadata(folder / STATE)["minillm_training_state"])["step"])
    except (CheckpointError, KeyError, ValueError, TypeError):
        return None


def newest_complete(directory):
    """(folder, step) of the newest complete copy among checkpoint/.tmp/.old, or (None, None).
    On equal steps checkpoint/ wins, then .tmp."""
    found = [(step, -rank, folder) for rank, folder in enumerate(siblings(directory))
             if (step := saved_step(folder)) is not None]
    if not found:
        return None, None
    step, _, folder = max(found)
    return folder, step


def any_copy(directory):
    """True when checkpoint, checkpoint.tmp or checkpoint.old exists (complete or not)."""
    return any(folder.exists() for folder in siblings(directory))


def recover(directory):
    """Put the newest complete copy at `directory` and remove the others. Safe at any instant:
    the newest copy is only renamed, and only what is not it is deleted. Returns its step."""
    directory = Path(directory)
    best, step = newest_complete(directory)
    if best is None:
        return None
    if best != directory:
        shutil.rmtree(directory, ignore_errors=True)      # older or incomplete: best is elsewhere
        os.replace(best, directory)
        fsync_dir(directory.parent)
    for folder in siblings(directory)[1:]:
        shutil.rmtree(folder, ignore_errors=True)
    return step


def _write_folder(folder, student, optimizer, proj_params, tokenizer, step, meta):
    """All four files of a checkpoint into `folder`, training_state last."""
    student.save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    arrays, opt_meta = optimizer.state_dict()
    arrays = {f"optim.{k}": backend.to_host(v) for k, v in arrays.items()}
    arrays.update({k: backend.to_host(v) for k, v in proj_params.items()})
    save_training_state(folder / STATE, arrays, {**meta, "step": step, "optimizer": opt_meta})
    fsync_dir(folder)


def save_run(directory, student, optimizer, proj_params, tokenizer, step, meta):
    """Save the student, its tokenizer, the optimizer state and the distillation projections
    (proj_params, {} without teachers) with meta (the step and the run's settings)."""
    directory = Path(directory)
    _, tmp, old = siblings(directory)
    try:
        recover(directory)                               # a crashed save: its newest copy first
        shutil.rmtree(tmp, ignore_errors=True)           # safe now: directory is complete (or none is)
        _write_folder(tmp, student, optimizer, proj_params, tokenizer, step, meta)
    except BaseException as e:                           # full disk, read-only, a second Ctrl-C
        shutil.rmtree(tmp, ignore_errors=True)           # a half-written copy is no copy
        if isinstance(e, OSError):
            raise _save_failed(directory, e) from None
        raise
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


def _save_failed(directory, e):
    """One line: what failed, the OS's reason, and which checkpoint is still intact."""
    folder, step = newest_complete(directory)
    kept = (f"the checkpoint of step {step} in {folder} is intact" if folder is not None
            else "no earlier checkpoint exists")
    return OutputError(f"saving the checkpoint to {directory} failed ({describe_os_error(e)}); {kept}")


def discard(directory):
    """--overwrite: remove every copy of an earlier run's checkpoint."""
    for folder in siblings(directory):
        shutil.rmtree(folder, ignore_errors=True)


def read_run_meta(directory):
    """The meta (step, args, config, ...) of the newest complete checkpoint, and its folder."""
    folder, _ = newest_complete(directory)
    if folder is None:
        raise CheckpointError(f"cannot resume: no complete checkpoint in {directory} "
                              f"(nor {directory}.tmp / .old)")
    return json.loads(read_metadata(Path(folder) / STATE)["minillm_training_state"]), folder


def load_run_state(directory, optimizer, proj_params):
    """Restore the projections (in place) and the optimizer state of a run whose student was
    loaded from the same folder. Returns the saved meta (with "step")."""
    path = Path(directory) / STATE
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} not found (was the run saved?)")
    arrays, meta = load_training_state(path)
    for name, p in proj_params.items():
        if name not in arrays or arrays[name].shape != p.shape:
            raise CheckpointError(f"cannot resume: {path} has no projection {name!r} of shape "
                                  f"{tuple(p.shape)} (different teachers or layer map?)")
        p[...] = arrays[name]
    optimizer.load_state_dict({k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")},
                                 meta["optimizer"])
    return meta


def keep_metrics_until(metrics_path, step):
    """Resuming at `step`: drop the lines of later steps (a run killed after its last save
    logged them), so metrics.jsonl holds each step once. Rewritten atomically."""
    path = Path(metrics_path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass                                       # a line cut short by a kill: dropped
    atomic_write(path, "".join(kept))


def readable_copy(folder):
    """The folder evaluate.py / generate.py should read for `folder`: the newest complete copy
    among folder, folder.tmp and folder.old (a save cut short leaves it under another name),
    else `folder` itself (a model folder of another origin, or one for the caller to report)."""
    best, _ = newest_complete(folder)
    return Path(folder) if best is None else best


def load_checkpoint(folder):
    """(model, tokenizer) of a train.py checkpoint folder (its newest complete copy: see
    readable_copy), for evaluate.py, generate.py and demos/generate.py. One-line errors
    (ValueError, CheckpointError) when it is missing or incomplete."""
    folder = readable_copy(folder)        # a save cut short: its newest complete copy
    if not folder.exists():               # most often: nothing trained yet
        raise ValueError(f"no checkpoint at {folder}: run `python train.py --use_mock` first "
                         "(it writes output/checkpoint), or pass --checkpoint FOLDER")
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"{folder}: no tokenizer.json (pass a train.py checkpoint folder)")
    return MiniTransformer.from_pretrained(folder), BPETokenizer.load(folder / "tokenizer.json")
