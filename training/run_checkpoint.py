"""Saving and resuming a training run: one folder that is always complete.

    checkpoint/config.json, model.safetensors   the student (Hugging Face names: loads anywhere)
    checkpoint/tokenizer.json                   the student's tokenizer
    checkpoint/training_state.safetensors       AdamW moments (student + projections), the
                                                projection matrices, and meta: step, settings
A save writes a fresh `checkpoint.tmp` folder (each file itself written atomically), then swaps
it in with renames, so an interrupted save leaves the previous checkpoint intact.
"""
import os
import shutil
from pathlib import Path

from mini_llm import backend
from mini_llm.checkpoint import CheckpointError, load_training_state, save_training_state


def save_run(directory, student, optimizer, proj_params, tokenizer, step, meta):
    """Save the student, its tokenizer, the optimizer state and the distillation projections
    (proj_params, {} without teachers) with meta (the step and the run's settings)."""
    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp)
    tokenizer.save(tmp / "tokenizer.json")
    arrays, opt_meta = optimizer.state_dict()
    arrays = {f"optim.{k}": backend.to_host(v) for k, v in arrays.items()}
    arrays.update({k: backend.to_host(v) for k, v in proj_params.items()})
    save_training_state(tmp / "training_state.safetensors", arrays,
                        {**meta, "step": step, "optimizer": opt_meta})
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def load_run_state(directory, optimizer, proj_params):
    """Restore the projections (in place) and the optimizer state of a run whose student was
    loaded from the same folder. Returns the saved meta (with "step")."""
    path = Path(directory) / "training_state.safetensors"
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
