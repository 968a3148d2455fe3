#!/usr/bin/env python3
"""Greedy-token agreement of our SmolLM2 paths with llama.cpp on the same GGUF.

For each chat prompt, the prompt's token ids (through the chat template of the directory
`expert pull smollm2` wrote) go to llama.cpp (`llama-cpp-python`, temperature 0, top-k 1, no
repetition penalty) and to `expert generate --temperature 0 --dtype D`; the first N new
tokens are compared. Reports, per weight format, how many leading tokens agree and how many
of the N positions agree.

    python3 -m venv target/parity && target/parity/bin/pip install jinja2 llama-cpp-python
    target/parity/bin/python scripts/agreement_llamacpp.py models/smollm2-135m-instruct \
        --expert target/release/expert [--json]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How do I reset my password?",
    "List three prime numbers greater than 20 and explain why they are prime.",
    "Explain in two sentences why the sky is blue.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--expert", default="target/release/expert")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--dtypes", default="q4_1,q8_0,f32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import jinja2
    from llama_cpp import Llama

    model_dir = Path(args.model)
    gguf = sorted(model_dir.glob("*.gguf"))[0]
    # The prompt ids come from our own tokenizer and chat template (torch, which
    # transformers would load, does not coexist with llama.cpp's library in one process).
    template = json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]
    render = jinja2.Environment().from_string(template).render
    texts = [render(messages=[{"role": "user", "content": p}], add_generation_prompt=True)
             for p in PROMPTS]
    ids_all = [json.loads(line) for line in subprocess.run(
        [args.expert, "tokenize", "--model", str(model_dir)],
        input="".join(json.dumps(t) + "\n" for t in texts),
        check=True, capture_output=True, text=True).stdout.splitlines()]
    # One token per llama.cpp batch: llama-cpp-python 0.3.36 built here (GGML_NATIVE, AVX-512)
    # crashes in `decode` on multi-token batches; token-by-token prefill computes the same.
    llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=args.threads, n_batch=1,
                n_ubatch=1, verbose=False)
    eos = llm.token_eos()

    reference = []
    for p, ids in zip(PROMPTS, ids_all):
        llm.reset()
        out = []
        for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            if t == eos or len(out) == args.tokens:
                break
            out.append(t)
        reference.append((p, len(ids), out))

    result = {"gguf": gguf.name, "tokens": args.tokens, "formats": {}}
    for dtype in args.dtypes.split(","):
        rows = []
        for p, n_prompt, ref in reference:
            rec = json.loads(subprocess.run(
                [args.expert, "generate", "--model", str(model_dir), "--prompt", p,
                 "--max_tokens", str(args.tokens), "--temperature", "0", "--dtype", dtype,
                 "--json"], check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            ours = rec["tokens"]
            prefix = 0
            for a, b in zip(ref, ours):
                if a != b:
                    break
                prefix += 1
            same = sum(a == b for a, b in zip(ref, ours))
            rows.append({"prompt": p, "prompt_tokens": (n_prompt, rec["prompt_tokens"]),
                         "llama_cpp": len(ref), "ours": len(ours), "agreeing_prefix": prefix,
                         "agreeing_positions": same})
            print(f"{dtype:5} {p[:44]!r:48} llama.cpp {len(ref):2} ours {len(ours):2} "
                  f"prefix {prefix:2} positions {same:2}", file=sys.stderr)
        result["formats"][dtype] = rows
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
