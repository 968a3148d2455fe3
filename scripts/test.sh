#!/usr/bin/env bash
# The test command: installs the wasm tooling if missing, builds the wasm package, runs
# every test of the workspace (unit, property, end-to-end, wasm-under-node parity, wgpu
# kernels and the experts' wgpu device on a CPU Vulkan driver).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/build-wasm.sh
# The wgpu kernel tests run on lavapipe (installed by setup.sh): fail rather than skip when
# no adapter is found.
export HYBRID_GPU_REQUIRE=1
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo test --workspace
# The experts' wgpu device (feature `wgpu`, off by default): decoder and fusion modes on the
# WGSL kernels against the candle CPU path, and `expert serve` with `device: wgpu`.
cargo test -p experts --features wgpu --test wgpu_device
