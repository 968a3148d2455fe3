#!/usr/bin/env python3
"""Prefill and decode speed of llama.cpp (through llama-cpp-python, CPU) on a GGUF file.

    python3 scripts/bench_llamacpp.py MODEL.gguf --prompt_len 64 --new_tokens 64 --threads 2

Greedy (top-k 1), one sequence, random prompt token ids from a fixed seed. Prints one JSON
object: {"prefill_tok_s", "decode_tok_s", "batch": 1, ...}. Called by `cargo bench -p experts
--bench smollm2`, which runs ours beside it with the same shapes. Only batch 1 is measured:
llama-cpp-python's API decodes one sequence at a time.
"""
import argparse
import json
import random
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--prompt_len", type=int, default=64)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--n_batch", type=int, default=512,
                    help="llama.cpp's prefill batch (tokens evaluated per call)")
    args = ap.parse_args()
    if args.batch != 1:
        sys.exit("llama-cpp-python decodes one sequence at a time: only --batch 1 is measured")

    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=args.gguf, n_ctx=args.prompt_len + args.new_tokens + 8,
                n_threads=args.threads, n_threads_batch=args.threads, n_batch=args.n_batch,
                verbose=False)
    vocab = llm.n_vocab()
    rng = random.Random(0)
    ids = [rng.randrange(10, vocab - 10) for _ in range(args.prompt_len)]

    best_prefill, best_decode = float("inf"), float("inf")
    for _ in range(args.repeats):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        best_prefill = min(best_prefill, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(args.new_tokens - 1):
            logits = llm.scores[llm.n_tokens - 1]
            nxt = int(logits.argmax())
            llm.eval([nxt])
        best_decode = min(best_decode, time.perf_counter() - t0)
    print(json.dumps({
        "batch": 1,
        "prefill_tok_s": args.prompt_len / best_prefill,
        "decode_tok_s": (args.new_tokens - 1) / best_decode,
        "llama_cpp_python": llama_cpp.__version__,
        "threads": args.threads,
        "n_batch": args.n_batch,
    }))


if __name__ == "__main__":
    main()
