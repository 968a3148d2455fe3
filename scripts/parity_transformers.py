#!/usr/bin/env python3
"""Logit parity of our decoder against Hugging Face transformers (the reference).

    python3 scripts/parity_transformers.py MODEL_DIR [--expert target/release/expert]

Loads MODEL_DIR with transformers (float32, CPU) — which is itself the proof that the
directory is a real HF checkpoint — tokenizes several prompts with both tokenizers, and
compares the logits of every position with `expert logits`. Exits 1 when the token ids
differ or the largest absolute difference exceeds 1e-3.
"""
import argparse
import json
import subprocess
import sys

PROMPTS = [
    "<|im_start|>user\nHow do I reset my password?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is 47 + 38?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n我想退货，请问流程是什么？<|im_end|>\n<|im_start|>assistant\n",
    "The weather in Paris is mild in spring, and many people walk along the river.",
    "小明有12个苹果，又买了7个。",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--expert", default="target/release/expert")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model.eval()

    worst = 0.0
    ok = True
    print("| prompt | tokens | max abs logit diff | same argmax |")
    print("|---|---|---|---|")
    for prompt in PROMPTS:
        ours = json.loads(
            subprocess.run(
                [args.expert, "logits", "--model", args.model, "--prompt", prompt],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip().splitlines()[-1]
        )
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        if ids != ours["ids"]:
            print(f"token ids differ for {prompt!r}:\n  hf   {ids}\n  ours {ours['ids']}")
            ok = False
            continue
        ref = model(torch.tensor([ids])).logits[0]
        mine = torch.tensor(ours["logits"])
        diff = (ref - mine).abs().max().item()
        same = bool((ref.argmax(-1) == mine.argmax(-1)).all())
        worst = max(worst, diff)
        short = prompt.replace("\n", " ")[:40]
        print(f"| {short} | {len(ids)} | {diff:.2e} | {same} |")
    print(f"max abs difference over all prompts: {worst:.3e} (tolerance {args.tolerance})")
    if not ok or worst > args.tolerance:
        sys.exit(1)


if __name__ == "__main__":
    main()
