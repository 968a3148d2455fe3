#!/usr/bin/env bash
# Installs what building and testing need beyond cargo: the wasm32 target and
# wasm-bindgen-cli at exactly the version of the wasm-bindgen crate in Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" != "$want" ]; then
    echo "installing wasm-bindgen-cli $want (found: ${have:-none})" >&2
    cargo install wasm-bindgen-cli --version "$want"
fi

command -v node >/dev/null || { echo "node is required (wasm tests run under node)" >&2; exit 1; }

# --- web: chromium and the npm packages of tests/browser (browser and edge-worker tests) ---
# --- apt packages: chromium (browser tests), mesa-vulkan-drivers (lavapipe, a CPU Vulkan
# driver for the wgpu kernel tests of gpu/) ---
apt_missing=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || apt_missing+=(chromium)
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || apt_missing+=(mesa-vulkan-drivers)
if [ "${#apt_missing[@]}" -gt 0 ]; then
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo -n true 2>/dev/null || { echo "missing: ${apt_missing[*]}; installing needs root: apt-get install -y ${apt_missing[*]}" >&2; exit 1; }
        as_root=(sudo -n)
    fi
    "${as_root[@]}" apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${apt_missing[@]}"
fi
if [ ! tests/browser/node_modules/.package-lock.json -nt tests/browser/package-lock.json ]; then
    npm ci --prefix tests/browser --no-audit --no-fund
fi
# --- end web ---

# >>> gateway: python clients (openai compatibility test) >>>
# The official `openai` client, pinned, in target/pyenv (tests/tests/e2e_openai_client.rs).
OPENAI_VERSION=3.51.0
if ! target/pyenv/bin/python -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
    echo "installing the openai python client $OPENAI_VERSION into target/pyenv" >&2
    python3 -m venv target/pyenv
    target/pyenv/bin/pip install --quiet "openai==$OPENAI_VERSION"
fi
# <<< gateway <<<
