#!/usr/bin/env python3
"""Parity of the SmolLM2 directory `expert pull smollm2` writes, against Hugging Face
transformers (and llama.cpp when `llama_cpp` is importable).

    python scripts/parity_smollm2.py models/smollm2-135m-instruct \
        [--expert target/release/expert] [--strings 1000] [--json]

1. Model: transformers loads the directory (no GGUF: config.json + model.safetensors), f32,
   CPU. For each of 5 chat prompts it generates 64 greedy tokens; `expert generate
   --temperature 0 --json` must give the same tokens. Then the logits of every position of
   prompt + completion are compared with `expert logits --ids` (max |Δ| ≤ 1e-3).
2. Tokenizer: N varied strings (Chinese, emoji, digits, whitespace runs, chat markup, code)
   are encoded by our tokenizer.json (`expert tokenize`, the Rust `tokenizers` crate), by
   transformers reading our directory, by transformers' own GGUF conversion
   (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`) and, if installed, by llama.cpp.
   Counts of identical encodings are reported; strings that differ are classified.
3. Perplexity on a held-out text, f32 vs requantized formats (`expert perplexity`).

Exit status 1 when the model check fails (tokens or logits) or our tokenizer disagrees with
transformers reading our own tokenizer.json.
"""
import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How do I reset my password?",
    "请用一句话介绍一下长城。",
    "List three prime numbers greater than 20 and explain why they are prime.",
]
NEW_TOKENS = 64


def run(cmd, stdin=None):
    return subprocess.run(cmd, input=stdin, check=True, capture_output=True, text=True).stdout


def varied_strings(n, seed=0):
    rng = random.Random(seed)
    words = ["hello", "world", "The", "quick", "brown", "fox", "naïve", "café", "don't",
             "I'm", "we'll", "HTTP", "JSON", "tokenizer", "Rust", "ümlaut", "ß", "Ελληνικά",
             "русский", "العربية", "हिन्दी", "日本語", "한국어", "(x)", "x+y=z", "#include",
             "fn main()", "{\"a\": 1}", "<div>", "a_b", "--flag", "e.g.", "...", "?!", "%"]
    chinese = ["你好", "世界", "我想退货", "请问流程是什么", "长城", "机器学习", "。", "，",
               "小明有12个苹果", "２０２４年", "中文分词"]
    emoji = ["😀", "🚀", "👍🏽", "🇫🇷", "❤️", "👨‍👩‍👧", "🤖", "✨"]
    digits = ["0", "7", "42", "2024", "3.14159", "1,000,000", "-5", "1e-5", "0x1F", "١٢٣"]
    spaces = [" ", "  ", "   ", "\t", "\n", "\n\n", " \n ", "\r\n", "    ", "\u00a0", "\u3000"]
    markup = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\n",
              "<|im_start|>assistant\n", "<filename>", "<|im_start", "im_end|>"]
    pools = [words, chinese, emoji, digits, spaces, markup]
    out = [
        "", " ", "  42", "\n\n7", "a  1", "x\t\t9", "<|im_start|>user\nHi<|im_end|>\n",
        "   leading", "trailing   ", "1 2  3   4", "😀😀😀", "中文 English 123",
    ]
    while len(out) < n:
        k = rng.randint(1, 12)
        parts = []
        for _ in range(k):
            pool = rng.choice(pools)
            parts.append(rng.choice(pool))
            if rng.random() < 0.5:
                parts.append(rng.choice([" ", "", "", "  ", "\n"]))
        out.append("".join(parts))
    return out[:n]


def digit_after_spaces(s):
    """Whitespace directly before a digit: where GPT-2's split alone (` ?\\p{N}+`, one
    space glued to the digits; a run of spaces split before it) and smollm's (each digit
    isolated first, as llama.cpp does) can differ."""
    import re
    return re.search(r"\s\d", s) is not None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--expert", default="target/release/expert")
    ap.add_argument("--strings", type=int, default=1000)
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--heldout", default="data/heldout_smollm2.txt")
    ap.add_argument("--dtypes", default="q8_0,q4_0,q4_1")
    ap.add_argument("--skip-model", action="store_true", help="skip the generation/logits check")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    model_dir = Path(args.model)
    gguf = sorted(model_dir.glob("*.gguf"))
    result = {"model": str(model_dir)}
    ok = True

    tok = AutoTokenizer.from_pretrained(model_dir)

    # 1. Model parity.
    if not args.skip_model:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.eval()
        rows = []
        worst = 0.0
        agree_all = True
        for p in PROMPTS:
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
            hf_new = out[0, len(ids):].tolist()
            # transformers keeps the EOS it stopped on; `expert generate` reports it as the
            # finish reason instead.
            hf_stopped = bool(hf_new) and hf_new[-1] == tok.eos_token_id
            if hf_stopped:
                hf_new = hf_new[:-1]
            rec = json.loads(run([args.expert, "generate", "--model", str(model_dir), "--prompt", p,
                                  "--max_tokens", str(NEW_TOKENS), "--temperature", "0",
                                  "--json"]).strip().splitlines()[-1])
            ours_new = rec["tokens"]
            same_prompt = rec["prompt_tokens"] == len(ids)
            n_agree = 0
            for a, b in zip(hf_new, ours_new):
                if a != b:
                    break
                n_agree += 1
            same = (hf_new == ours_new and same_prompt
                    and hf_stopped == (rec["finish_reason"] == "stop"))
            agree_all &= same
            full = ids + ours_new
            lg = json.loads(run([args.expert, "logits", "--model", str(model_dir), "--ids",
                                 ",".join(map(str, full))]).strip().splitlines()[-1])
            ref = model(torch.tensor([full])).logits[0]
            diff = (ref - torch.tensor(lg["logits"])).abs().max().item()
            worst = max(worst, diff)
            rows.append({"prompt": p, "prompt_tokens": len(ids), "hf_tokens": len(hf_new),
                         "ours_tokens": len(ours_new), "identical": same,
                         "agreeing_prefix": n_agree, "max_abs_logit_diff": diff})
            print(f"{p[:40]!r:44} prompt {len(ids):3} gen hf {len(hf_new):2} ours "
                  f"{len(ours_new):2} identical {same} max|Δlogit| {diff:.2e}", file=sys.stderr)
        ok &= agree_all and worst <= args.tolerance
        result["generation"] = {"prompts": rows, "all_identical": agree_all,
                                "max_abs_logit_diff": worst}
        del model

    # 2. Tokenizer parity.
    strings = varied_strings(args.strings)
    ours = [json.loads(l) for l in run([args.expert, "tokenize", "--model", str(model_dir)],
                                       stdin="".join(json.dumps(s) + "\n" for s in strings)
                                       ).splitlines()]
    assert len(ours) == len(strings)
    refs = {"transformers(our dir)": tok}
    if gguf:
        t0 = time.time()
        # From a directory holding the GGUF alone: next to our tokenizer.json, transformers
        # would read that file instead of converting the GGUF's vocabulary.
        import tempfile
        only = Path(tempfile.mkdtemp())
        (only / gguf[0].name).symlink_to(gguf[0].resolve())
        refs["transformers(gguf)"] = AutoTokenizer.from_pretrained(only, gguf_file=gguf[0].name)
        print(f"gguf tokenizer built in {time.time() - t0:.1f}s", file=sys.stderr)
    lcpp = None
    try:
        import llama_cpp  # noqa: F401
        if gguf:
            lcpp = llama_cpp.Llama(model_path=str(gguf[0]), vocab_only=True, verbose=False)
    except Exception as e:  # not installed or failed to build
        print(f"llama.cpp not available: {e}", file=sys.stderr)
    toks = {}
    for name, t in refs.items():
        toks[name] = [t(s, add_special_tokens=False)["input_ids"] for s in strings]
    if lcpp is not None:
        toks["llama.cpp"] = [lcpp.tokenize(s.encode(), add_bos=False, special=True) if s else []
                             for s in strings]
    summary = {}
    for name, encs in toks.items():
        diffs = [i for i in range(len(strings)) if encs[i] != ours[i]]
        checked = len(strings)
        explained = sum(1 for i in diffs if digit_after_spaces(strings[i]))
        summary[name] = {"checked": checked, "identical": checked - len(diffs),
                         "differ": len(diffs),
                         "differ_with_whitespace_before_digit": explained,
                         "examples": [{"text": strings[i], "ours": ours[i], "ref": encs[i]}
                                      for i in diffs[:3]]}
        print(f"tokenizer vs {name}: {checked - len(diffs)}/{checked} identical "
              f"({explained} of {len(diffs)} differences have whitespace before a digit)",
              file=sys.stderr)
    ok &= summary["transformers(our dir)"]["differ"] == 0
    result["tokenizer"] = summary

    # 2b. Where our encoding and transformers' GGUF conversion differ, which segmentation
    # does the model itself find more likely? (A model scores the segmentation it was
    # trained on far higher; log p of the same text under each.)
    ref_name = "transformers(gguf)"
    if ref_name in toks:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        ctx = tok("Some text with numbers:\n", add_special_tokens=False)["input_ids"]

        def logp(ids):
            x = torch.tensor([ctx + ids])
            lp = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
            tgt = x[0, 1:]
            return lp[torch.arange(len(tgt)), tgt][len(ctx) - 1:].sum().item()

        diffs = [i for i in range(len(strings)) if toks[ref_name][i] != ours[i]]
        ours_better = 0
        margins = []
        for i in diffs:
            a, b = logp(ours[i]), logp(toks[ref_name][i])
            ours_better += a > b
            margins.append(a - b)
        margins.sort()
        result["segmentation_preference"] = {
            "strings": len(diffs), "model_prefers_ours": ours_better,
            "median_logp_margin_nats": margins[len(margins) // 2] if margins else None,
        }
        print(f"where ours and {ref_name} differ ({len(diffs)} strings), the model gives our "
              f"segmentation the higher log-probability in {ours_better}"
              + (f" (median margin {margins[len(margins) // 2]:.1f} nats)" if margins else ""),
              file=sys.stderr)
        del model

    # 3. Perplexity of requantized formats against f32.
    heldout = Path(args.heldout)
    if heldout.exists():
        ppl = {}
        for dt in ["f32"] + [d for d in args.dtypes.split(",") if d]:
            rec = json.loads(run([args.expert, "perplexity", "--model", str(model_dir), "--file",
                                  str(heldout), "--dtype", dt, "--json"]).strip().splitlines()[-1])
            ppl[dt] = rec
            print(f"perplexity {dt}: {rec['perplexity']:.4f} over {rec['tokens']} tokens "
                  f"({100 * (rec['perplexity'] / ppl['f32']['perplexity'] - 1):+.2f} % vs f32)",
                  file=sys.stderr)
        result["perplexity"] = ppl

    result["ok"] = ok
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
