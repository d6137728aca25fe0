"""Teacher adapters: every model the student can learn from, behind one small interface.

A teacher is any object with
    name          str, used in logs and in the --layer_map JSON ("llama", "minillm", "ngram")
    kind          "llama" (Hugging Face LLaMA / Mistral folder), "minillm" (a MiniLLM
                  checkpoint, train.py's output) or "ngram" (a count-based model fitted on
                  the training stream)
    tokenizer     a BPETokenizer, or None meaning "the same tokenizer as the student"
    vocab_size    V_teacher
    num_layers    decoder layers (0 for the n-gram)
    hidden_size   C_teacher (None for the n-gram)
    forward(ids, hidden_layers=()) -> (logits (B, T, V_teacher), {layer: hidden (B, T, C_teacher)})
                  inference only: nothing is kept for a backward pass
Layers are numbered as in MiniTransformer.hidden_states: 0 = embedding output, i = output of
decoder block i (1..num_layers).

This file: the transformer teachers (MiniTransformer, from our checkpoints or Hugging Face
folders) and the checks that a teacher's tokens fit the student's. Beside it: the n-gram
teacher (ngram_teacher.py), the offline top-k store (teacher_cache.py), the command-line
specs and layer maps (teacher_specs.py). The distillation losses are in training/losses.py,
the system that combines teachers in training/knowledge_transfer.py.
"""
from pathlib import Path

import numpy as np

from mini_llm import backend
from mini_llm.model.transformer import MiniTransformer
from tokenizer.bpe_tokenizer import BPETokenizer


# ----------------------------------------------------------------------------- transformer teachers

class TransformerTeacher:
    """A MiniTransformer (ours, or loaded from a Hugging Face LLaMA / Mistral folder) as a teacher."""

    def __init__(self, name, kind, model, tokenizer=None):
        self.name, self.kind, self.model, self.tokenizer = name, kind, model, tokenizer
        self.vocab_size = model.config.vocab_size       # the logits' width (drop_padded_rows)
        self.num_layers = model.config.num_layers
        self.hidden_size = model.config.hidden_size

    def prefix_ids(self):
        """The ids its tokenizer's post-processor puts before every sequence ([bos] for
        Llama 2 / TinyLlama), [] for none: the teacher reads them first, and its outputs at
        those positions are dropped, so position t still predicts token t + 1."""
        return list(getattr(self.tokenizer, "prefix_ids", []) or [])

    def drop_padded_rows(self, n_tokens):
        """Keep the first n_tokens logits. Published checkpoints round the embedding up past the
        tokenizer (Qwen2.5: 151,936 rows for 151,665 tokens; LLaMA-style: to a multiple of 64
        or 128); those rows are never a real next token. The softmax over the kept logits is
        the teacher's distribution renormalised over the real tokens."""
        self.vocab_size = n_tokens

    def forward(self, ids, hidden_layers=()):
        """ids (B, T) -> logits (B, T, V), {i: hidden_states[i] (B, T, C)} for i in hidden_layers."""
        for i in hidden_layers:
            if not 0 <= i <= self.num_layers:
                raise ValueError(f"teacher {self.name} has hidden states 0..{self.num_layers}, asked for {i}")
        prefix = self.prefix_ids()
        if prefix:                          # e.g. <s>: the teacher was trained with it in front
            ids = np.concatenate([np.tile(prefix, (len(ids), 1)), backend.to_host(ids)], axis=1)
        logits = self.model.forward(ids, keep_cache=False)[:, len(prefix):]     # (B, T, V)
        if logits.shape[-1] > self.vocab_size:          # padded rows dropped
            logits = logits[..., :self.vocab_size]
        hidden = {i: self.model.hidden_states[i][:, len(prefix):] for i in hidden_layers}
        self.model.hidden_states = []          # let the other layers' activations go
        return logits, hidden


def _load_transformer_teacher(path, kind, name, dtype):
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"teacher path {path} is not a checkpoint: no config.json")
    model = MiniTransformer.from_pretrained(path, dtype=dtype)
    tokenizer = BPETokenizer.load(path) if (path / "tokenizer.json").is_file() else None
    return TransformerTeacher(name or kind, kind, model, tokenizer)


def load_llama_teacher(path, name=None, dtype=np.float32, kind="llama"):
    """A Hugging Face folder (LLaMA, Mistral, and the families mini_llm/checkpoint.py reads:
    config.json's model_type decides): config.json, *.safetensors, and tokenizer.json when the
    teacher has its own tokenizer (without one it must share the student's)."""
    return _load_transformer_teacher(path, kind, name, dtype)


def load_minillm_teacher(path, name=None, dtype=np.float32):
    """A MiniLLM checkpoint folder (MiniTransformer.save_pretrained; train.py saves the
    tokenizer.json beside it)."""
    return _load_transformer_teacher(path, "minillm", name, dtype)


def same_tokenizer(a, b):
    """True when two BPETokenizers turn every text into the same ids: same vocabulary, merges,
    special tokens, pre-tokenizer and normalizer (equal sizes are not enough)."""
    return (a.vocab == b.vocab and a.merges == b.merges and a.special_tokens == b.special_tokens
            and a.pre_tokenizer == b.pre_tokenizer and a.normalizer == b.normalizer)


def check_vocab(teacher, student_vocab_size, token_level=True, notice=print):
    """Token-level losses compare probabilities token by token, so both vocabularies must be
    the same size (and the same tokens: the caller gives the student the teacher's tokenizer).
    First, a teacher with more embedding rows than its tokenizer has tokens (padding; without
    a tokenizer of its own it shares the student's) drops the extra rows, and notice() says so."""
    tokens = student_vocab_size if teacher.tokenizer is None else teacher.tokenizer.vocab_size
    if teacher.vocab_size > tokens and hasattr(teacher, "drop_padded_rows"):
        notice(f"teacher {teacher.name}: {teacher.vocab_size} embedding rows for {tokens} tokens; the "
               f"{teacher.vocab_size - tokens} rows past the vocabulary are padding, dropped (its "
               f"distribution renormalised over the {tokens} tokens)")
        teacher.drop_padded_rows(tokens)
    if token_level and teacher.vocab_size != student_vocab_size:
        raise ValueError(f"teacher {teacher.name} has a vocabulary of {teacher.vocab_size} tokens, the "
                         f"student {student_vocab_size}: for token-level KL pass the teacher's tokenizer "
                         f"with --tokenizer_path, or use the cross-vocabulary (ULD) loss")
