"""MiniLLM: a small Mistral/LLaMA-style language model written from scratch in NumPy."""
