"""Byte-level BPE tokenizer from scratch (see bpe_tokenizer.py); Hugging Face tokenizer.json I/O."""
from tokenizer.bpe_tokenizer import BPETokenizer, read_text_file

__all__ = ["BPETokenizer", "read_text_file"]
