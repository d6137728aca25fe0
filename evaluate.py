"""Perplexity of a trained checkpoint on a text file.

    python evaluate.py --checkpoint output/checkpoint --data_path data/sample_training.txt

The checkpoint folder holds config.json, model.safetensors and tokenizer.json (train.py writes
all three). The text is read like train.py's --data_path (.txt, .json, .jsonl), tokenized,
cut into windows of --seq_len tokens, and scored: perplexity = exp(mean cross-entropy).
"""
import argparse
import json
import math
import sys

from mini_llm import backend, memory, threads
from mini_llm.checkpoint import CheckpointError, read_metadata
from training.data import encode_documents, load_texts, make_sequences, split_train_val
from training.checks import ArgumentParser, describe_os_error, require
from training.loop import evaluate
from training.run_checkpoint import load_checkpoint, readable_copy


def training_overlap(checkpoint, texts):
    """A `note:` line when some of `texts` were trained on by the checkpoint's run, else None.
    train.py saves the run's args in training_state.safetensors; the split is redone from
    them (data_path, val_fraction, seed), so a copy of the training file counts too."""
    state = readable_copy(checkpoint) / "training_state.safetensors"
    try:
        run = json.loads(read_metadata(state)["minillm_training_state"])["args"]
        train_texts, _ = split_train_val(load_texts(run["data_path"], notice=lambda message: None),
                                         run["val_fraction"], run["seed"])
    except (CheckpointError, ValueError, OSError, KeyError, TypeError):
        return None                    # not a train.py run, or its training file is gone
    seen = set(train_texts)
    # a run on one document trains on its first part: then a text holding that part overlaps
    trained = sum(text in seen or (len(train_texts) == 1 and train_texts[0] in text) for text in texts)
    if not trained:
        return None
    return (f"note: {trained} of {len(texts)} documents are in this checkpoint's training split "
            f"({run['data_path']}, val_fraction {run['val_fraction']}, seed {run['seed']}): this "
            "perplexity is not on held-out text")


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="output/checkpoint", help="default: %(default)s")
    p.add_argument("--data_path", required=True, help=".txt, .json or .jsonl")
    p.add_argument("--seq_len", type=int, help="default: the model's max_seq_length")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--encoding_errors", choices=["strict", "replace", "ignore"], default="strict",
                   help="invalid UTF-8 in the data: fail, or replace/drop the bad bytes")
    p.add_argument("--device", choices=["cpu", "gpu", "auto"])
    threads.add_flag(p)
    args = p.parse_args(argv)
    try:
        require(args.batch_size >= 1, "--batch_size", args.batch_size, ">= 1")
        require(args.seq_len is None or args.seq_len >= 1, "--seq_len", args.seq_len, ">= 1")
        backend.set_device(args.device)
        threads.set_threads(args.threads)
        memory.keep_freed_memory()
        model, tokenizer = load_checkpoint(args.checkpoint)
        seq_len = min(args.seq_len or model.config.max_seq_length, model.config.max_seq_length)
        texts = load_texts(args.data_path, args.encoding_errors)
        overlap = training_overlap(args.checkpoint, texts)
        if overlap:
            print(overlap, file=sys.stderr)
        sequences = make_sequences(encode_documents(tokenizer, texts), seq_len)
        loss = evaluate(model, sequences, args.batch_size, desc="evaluating")   # minutes on 1 MB
    except (ValueError, CheckpointError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    tokens = sequences[:, 1:].size
    print(f"{args.data_path}: {tokens:,} tokens | loss {loss:.4f} | perplexity {math.exp(loss):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
