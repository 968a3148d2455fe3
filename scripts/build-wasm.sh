#!/usr/bin/env bash
# Builds the classifier for the browser: wasm32 with the size-tuned `wasm` profile, then
# wasm-bindgen --target web into web/pkg/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p classifier --lib --target wasm32-unknown-unknown --no-default-features --profile wasm
wasm-bindgen --target web --out-dir web/pkg target/wasm32-unknown-unknown/wasm/classifier.wasm
ls -l web/pkg/classifier_bg.wasm >&2

# The learned checkpoint for the page and its offline cache: copied next to the page (web/
# is what the gateway serves at /), when one has been trained (train_classifier writes
# hybrid.classifier.checkpoint_dir, the committed classifier-wasm/checkpoint by default).
ckpt=${CLASSIFIER_CHECKPOINT:-classifier-wasm/checkpoint}
if [ -f "$ckpt/classifier.json" ] && [ -f "$ckpt/model.safetensors" ]; then
    mkdir -p web/checkpoint
    cp "$ckpt/classifier.json" "$ckpt/model.safetensors" web/checkpoint/
    if [ -f "$ckpt/combiner.json" ]; then cp "$ckpt/combiner.json" web/checkpoint/; fi
    echo "learned checkpoint copied from $ckpt to web/checkpoint/" >&2
else
    echo "no learned checkpoint at $ckpt: the page offers the rule-based classifier only" >&2
fi
