#!/usr/bin/env python3
"""Decode and prefill speed of Hugging Face transformers (torch, CPU) on a model directory.

    python3 scripts/bench_transformers.py MODEL_DIR --prompt_len 64 --new_tokens 128 --batch 1 --threads 2

Prints one JSON object: {"prefill_tok_s", "decode_tok_s", "batch", ...}. Called by
`cargo bench -p experts --bench decode`, which runs ours beside it with the same shapes.
"""
import argparse
import json
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt_len", type=int, default=64)
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab - 10, (args.batch, args.prompt_len), generator=g)
    mask = torch.ones_like(ids)

    best_prefill, best_total = float("inf"), float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model(ids, attention_mask=mask, use_cache=True)
        best_prefill = min(best_prefill, time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            pad_token_id=0,
        )
        best_total = min(best_total, time.perf_counter() - t0)
        assert out.shape[1] == args.prompt_len + args.new_tokens
    decode_s = max(best_total - best_prefill, 1e-9)
    print(json.dumps({
        "batch": args.batch,
        "prefill_tok_s": args.batch * args.prompt_len / best_prefill,
        "decode_tok_s": args.batch * (args.new_tokens - 1) / decode_s,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
