#!/usr/bin/env bash
# The test command: installs the wasm tooling if missing, builds the wasm package, runs
# every test of the workspace (unit, property, end-to-end, wasm-under-node parity).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/build-wasm.sh
cargo test --workspace
