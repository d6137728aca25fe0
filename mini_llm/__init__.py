"""MiniLLM: a small Mistral/LLaMA-style language model written from scratch in NumPy."""
from mini_llm import threads as _threads

# before NumPy loads, if it has not: the thread pools' spin settings (mini_llm/threads.py)
_threads.prepare_environment()
