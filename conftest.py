# Puts the repository root on sys.path so tests import mini_llm, tokenizer and training as packages.
