"""BPE tokenizers from scratch (byte-level; SentencePiece-style on load), read in this order:

  1. byte_bpe.py          BPE on raw bytes: pair counts, merge, the training loop, encode, decode
  2. bpe_tokenizer.py     BPETokenizer: the regex pre-tokenizer and special tokens around step 1
  3. hf_format.py         the Hugging Face tokenizer.json file: BPETokenizer.save / load
     hf_pipeline.py       its normalizer, pre-tokenizer and decoder, read into small steps
  4. sentencepiece_bpe.py step 1 on characters (Llama 2, Mistral): "▁" for spaces, <0xNN>
                          byte fallback, the decoder steps; `load` reads those files too
  bpe_kernels.py          the Numba fast path of encoding beside step 1's reference (a test pins them)
  bpe_train_kernels.py    ... and of training: merges that touch only their pair's occurrences
  pretokenize_kernels.py  the GPT-2 / GPT-4 pre-tokenizer patterns as Numba matchers, on all threads
  count_kernels.py        counting a corpus's chunks with those matchers
  threaded_path.py        BPETokenizer's way to those kernels: texts in groups of code points
  demo_bpe.py             runnable: watch the merges happen, one line per merge
"""
from tokenizer.bpe_tokenizer import BPETokenizer

__all__ = ["BPETokenizer"]
