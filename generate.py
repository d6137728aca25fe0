"""Generate text from a trained checkpoint.

    python generate.py --checkpoint output/checkpoint --prompt "Attention lets" \\
        --max_new_tokens 100 --temperature 0.8 --top_k 40 --top_p 0.95 --seed 1

--temperature 0 is greedy decoding. --no_cache recomputes the whole context every step (the
slow reference the KV cache is checked against); tok/s is printed for comparison. A model
without a sliding window stops when prompt + new tokens fill its max_seq_length, and a `note:`
line on stderr says so; a prompt longer than that is an error.
"""
import argparse
import sys
import time

import mini_llm  # noqa: F401  first: the thread pools' spin settings, before NumPy loads (mini_llm/threads.py)
import numpy as np

from mini_llm import backend, memory, threads
from mini_llm.checkpoint import CheckpointError
from mini_llm.generate import STOP_CONTEXT_LIMIT, generate
from training.checks import ArgumentParser, check_generation, describe_os_error
from training.run_checkpoint import load_checkpoint


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="output/checkpoint", help="default: %(default)s")
    p.add_argument("--prompt", default="The model", help="default: %(default)r")
    p.add_argument("--max_new_tokens", type=int, default=100, help="at most this many; a model "
                   "without a sliding window stops at its context limit and says so (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top_k", type=int, help="sample among the k most likely tokens (default: all)")
    p.add_argument("--top_p", type=float, help="sample among the most likely tokens whose mass "
                   "reaches p (default: 1, all)")
    p.add_argument("--seed", type=int, help="fixes the sample (default: a new one each run)")
    p.add_argument("--no_cache", action="store_true", help="recompute instead of using the KV cache")
    p.add_argument("--device", choices=["cpu", "gpu", "auto"])
    threads.add_flag(p)
    args = p.parse_args(argv)
    try:
        check_generation(args)          # every setting in range before any work
        backend.set_device(args.device)
        threads.set_threads(args.threads)
        memory.keep_freed_memory()
        model, tokenizer = load_checkpoint(args.checkpoint)
        prompt = tokenizer.encode(args.prompt)
        if not prompt:
            raise ValueError("the prompt is empty")
        start = time.perf_counter()
        ids, stop_reason = generate(model, np.array([prompt]), args.max_new_tokens, args.temperature,
                                    args.top_k or None, args.top_p, args.seed, use_cache=not args.no_cache,
                                    eos_id=tokenizer.eos_id, return_stop_reason=True)
        seconds = time.perf_counter() - start
    except (ValueError, CheckpointError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    new = ids.shape[1] - len(prompt)
    print(tokenizer.decode(ids[0].tolist()))
    if stop_reason == STOP_CONTEXT_LIMIT:
        print(f"note: stopped at the model's context limit (max_seq_length="
              f"{model.config.max_seq_length}) after {new} new tokens", file=sys.stderr)
    print(f"--- {new} tokens in {seconds:.2f} s ({new / max(seconds, 1e-9):.1f} tok/s, "
          f"{'no cache' if args.no_cache else 'KV cache'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
