#!/usr/bin/env bash
# Builds the classifier for the browser: wasm32 with the size-tuned `wasm` profile, then
# wasm-bindgen --target web into web/pkg/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p classifier --lib --target wasm32-unknown-unknown --no-default-features --profile wasm
wasm-bindgen --target web --out-dir web/pkg target/wasm32-unknown-unknown/wasm/classifier.wasm
ls -l web/pkg/classifier_bg.wasm >&2
