#!/usr/bin/env python3
"""Held-out check of the SmolLM2 eval sets, and the generator of their hybrid files.

Default (no flag): reads every `prompt` of data/eval/smollm2/general.jsonl and sop.jsonl
and checks that none shares a run of 5 consecutive lower-cased words with any string
literal in experts/src/corpus.rs (the experts' training corpus) or
classifier-wasm/src/sample.rs (the classifier's training templates). Words are runs of
letters and digits (everything else is a break); a `{slot}` placeholder in a literal is a
word break too, so the words on either side of it are not consecutive. Prints each
offending prompt with the shared run and exits 1 if there is any, else prints a count and
exits 0.

--write-hybrid: rewrites data/eval/smollm2/hybrid.jsonl (every general item, label 0, then
every sop item, label 1) and hybrid_subset.jsonl (every third item, line index % 3 == 0,
of each file, in the same order), in `hybrid_inference --eval_file` format: `prompt`,
`reference`, `label`, `choices`, `answer`, plus `keywords` where the item has them.
It only writes (no overlap check) and exits 0; run the check separately.

Usage (from the repository root):
    python3 scripts/check_eval_overlap.py
    python3 scripts/check_eval_overlap.py --write-hybrid

Pure Python 3 standard library.
"""

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVAL_DIR = ROOT / "data" / "eval" / "smollm2"
EVAL_FILES = ["general.jsonl", "sop.jsonl"]
SOURCES = ["experts/src/corpus.rs", "classifier-wasm/src/sample.rs"]
RUN = 5

WORD = re.compile(r"[^\W_]+")
SLOT = re.compile(r"\{[^{}]*\}")


def rust_string_literals(src):
    """The contents of every string literal ("...", r"...", r#"..."#, b"...") in Rust
    source, skipping comments and char literals. Escapes (\\n, \\", \\u{..}, ...) come back
    as a space, which is a word break."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j + 1
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}', '"') or a lifetime ('a).
            m = re.compile(r"'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'").match(src, i)
            i = m.end() if m else i + 1
        elif (c == "r" or src.startswith("br", i)) and re.compile(r"b?r#*\"").match(src, i) and (
            i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")
        ):
            m = re.compile(r"b?r(#*)\"").match(src, i)
            close = '"' + m.group(1)
            j = src.find(close, m.end())
            j = n if j < 0 else j
            out.append(src[m.end():j])
            i = j + len(close)
        elif c == '"':
            i += 1
            buf = []
            while i < n and src[i] != '"':
                if src[i] == "\\":
                    buf.append(" ")
                    if src.startswith("u{", i + 1):
                        k = src.find("}", i)
                        i = k + 1
                    elif i + 1 < n and src[i + 1] == "x":
                        i += 4
                    else:
                        i += 2
                else:
                    buf.append(src[i])
                    i += 1
            out.append("".join(buf))
            i += 1
        else:
            i += 1
    return out


def words(text):
    return WORD.findall(text.lower())


def runs(ws, k=RUN):
    return {tuple(ws[i:i + k]) for i in range(len(ws) - k + 1)}


def training_runs():
    """Every 5-word run of every string literal of SOURCES -> the first source naming it."""
    seen = {}
    for rel in SOURCES:
        text = (ROOT / rel).read_text(encoding="utf-8")
        for lit in rust_string_literals(text):
            for part in SLOT.split(lit):
                for r in runs(words(part)):
                    seen.setdefault(r, rel)
    return seen


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check():
    """Prints offenders; returns their number."""
    train = training_runs()
    checked = bad = 0
    for name in EVAL_FILES:
        for item in read_jsonl(EVAL_DIR / name):
            checked += 1
            ws = words(item["prompt"])
            hits = sorted({r for r in runs(ws) if r in train}, key=lambda r: " ".join(r))
            if hits:
                bad += 1
                print(f"{name} {item.get('id', '?')}: {item['prompt']!r}")
                for r in hits:
                    print(f"    shares \"{' '.join(r)}\" with {train[r]}")
    if bad:
        print(f"{bad} of {checked} prompts share a {RUN}-word run with the training sources")
    else:
        print(f"ok: none of {checked} prompts ({', '.join(EVAL_FILES)}) shares a {RUN}-word run "
              f"with a string literal of {' or '.join(SOURCES)}")
    return bad


def hybrid_item(item, label):
    out = {
        "prompt": item["prompt"],
        "reference": item["reference"],
        "label": label,
        "choices": item["choices"],
        "answer": item["answer"],
    }
    if "keywords" in item:
        out["keywords"] = item["keywords"]
    return out


def write_hybrid():
    """Writes hybrid.jsonl and hybrid_subset.jsonl from general.jsonl and sop.jsonl."""
    general = [hybrid_item(x, 0) for x in read_jsonl(EVAL_DIR / "general.jsonl")]
    sop = [hybrid_item(x, 1) for x in read_jsonl(EVAL_DIR / "sop.jsonl")]
    full = general + sop
    subset = general[::3] + sop[::3]
    for name, items in (("hybrid.jsonl", full), ("hybrid_subset.jsonl", subset)):
        with open(EVAL_DIR / name, "w", encoding="utf-8") as f:
            for x in items:
                f.write(json.dumps(x, ensure_ascii=False) + "\n")
        print(f"wrote {EVAL_DIR.relative_to(ROOT) / name}: {len(items)} items "
              f"({sum(1 for x in items if x['label'] == 0)} general, "
              f"{sum(1 for x in items if x['label'] == 1)} sop)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-hybrid", action="store_true",
                    help="regenerate hybrid.jsonl and hybrid_subset.jsonl (no overlap check)")
    args = ap.parse_args()
    if args.write_hybrid:
        write_hybrid()
        return 0
    return 1 if check() else 0


if __name__ == "__main__":
    sys.exit(main())
