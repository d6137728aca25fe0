"""Perplexity of a trained checkpoint on a text file.

    python evaluate.py --checkpoint output/checkpoint --data_path data/sample_training.txt

The checkpoint folder holds config.json, model.safetensors and tokenizer.json (train.py writes
all three). The text is read like train.py's --data_path (.txt, .json, .jsonl), tokenized,
cut into windows of --seq_len tokens, and scored: perplexity = exp(mean cross-entropy).
"""
import argparse
import math
import sys
from pathlib import Path

from mini_llm import backend
from mini_llm.checkpoint import CheckpointError
from mini_llm.model.transformer import MiniTransformer
from tokenizer.bpe_tokenizer import BPETokenizer
from training.data import encode_documents, load_texts, make_sequences
from training.loop import evaluate


def load_checkpoint(folder):
    """(model, tokenizer) from a train.py checkpoint folder; one-line errors if incomplete."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"{folder}: no tokenizer.json (pass a train.py checkpoint folder)")
    return MiniTransformer.from_pretrained(folder), BPETokenizer.load(folder / "tokenizer.json")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="output/checkpoint", help="default: %(default)s")
    p.add_argument("--data_path", required=True, help=".txt, .json or .jsonl")
    p.add_argument("--seq_len", type=int, help="default: the model's max_seq_length")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", choices=["cpu", "gpu", "auto"])
    args = p.parse_args(argv)
    try:
        backend.set_device(args.device)
        model, tokenizer = load_checkpoint(args.checkpoint)
        seq_len = min(args.seq_len or model.config.max_seq_length, model.config.max_seq_length)
        sequences = make_sequences(encode_documents(tokenizer, load_texts(args.data_path)), seq_len)
        loss = evaluate(model, sequences, args.batch_size)
    except (ValueError, CheckpointError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tokens = sequences[:, 1:].size
    print(f"{args.data_path}: {tokens:,} tokens | loss {loss:.4f} | perplexity {math.exp(loss):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
