#!/usr/bin/env bash
# Browser benchmark of the web page in headless chromium: worker classification latency
# (p50 over 1,000 calls), page load to first classification (cold and warm cache), bytes of
# wasm + checkpoint. Prints a table; with --json a JSON object as the last line.
#
#   scripts/bench_browser.sh [--json] [--calls N] [--runs N]
#
# Needs web/pkg (scripts/build-wasm.sh, which also copies a trained learned checkpoint to
# web/checkpoint/), chromium and `npm ci --prefix tests/browser` (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f web/pkg/classifier_bg.wasm ] || bash scripts/build-wasm.sh
exec node tests/browser/bench.mjs web tests/data/classifier_realistic.jsonl "$@"
