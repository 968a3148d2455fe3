#!/usr/bin/env bash
# Gateway overhead, measured side by side in one run: the same `expert serve` process
# answering one token (max_tokens 1), called
#   direct   — POST /v1/chat/completions on the expert itself,
#   gateway  — POST /v1/chat/completions on the gateway (model "hybrid": classify, route,
#              dispatch to that expert over /v1/generate, stream back, JSON answer),
#   litellm  — LiteLLM's proxy (pip `litellm[proxy]`, one worker) in front of the expert's
#              OpenAI endpoint,
# with `oha` at fixed rates (--latency-correction, so a stalled server cannot hide its
# queueing) and unlimited (maximum throughput). Added latency = target − direct at the same
# rate and percentile. Prints a markdown table; raw oha JSON goes to $OUT.
#
#   scripts/bench_gateway.sh                    # everything
#   SKIP_LITELLM=1 scripts/bench_gateway.sh     # gateway vs direct only
#
# Env: MODELS (a forged pair: foundation/, sft-sop/; default target/bench/models, forged
# with the small profile when missing), DURATION (s per run, default 10), RATES (fixed rates
# for direct and gateway, default "100 500"), LITELLM_RATE (default 50: LiteLLM saturates
# near 100 req/s here), CONCURRENCY (unlimited runs, default 32), OHA (default: oha on PATH),
# OUT (default target/bench/gateway).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

DURATION=${DURATION:-10}
RATES=${RATES:-"100 500"}
LITELLM_RATE=${LITELLM_RATE:-50}
CONCURRENCY=${CONCURRENCY:-32}
OUT=${OUT:-target/bench/gateway}
MODELS=${MODELS:-target/bench/models}
OHA=${OHA:-oha}
LITELLM_VERSION=1.108.7
LITELLM_VENV=target/litellm-venv

command -v "$OHA" >/dev/null || { echo "oha is required: cargo install oha --locked (or set OHA=path)" >&2; exit 1; }
cargo build --release -p gateway --bin gateway -p experts --bin expert --bin forge >&2
if [ ! -f "$MODELS/sft-sop/config.json" ]; then
    target/release/forge --profile small --out "$MODELS" --no_eval >&2
fi
if [ -z "${SKIP_LITELLM:-}" ] && ! "$LITELLM_VENV/bin/python" -c "import litellm, sys; from importlib.metadata import version; sys.exit(version('litellm') != '$LITELLM_VERSION')" 2>/dev/null; then
    echo "installing litellm[proxy]==$LITELLM_VERSION into $LITELLM_VENV" >&2
    python3 -m venv "$LITELLM_VENV"
    "$LITELLM_VENV/bin/pip" install --quiet "litellm[proxy]==$LITELLM_VERSION"
fi

mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Starts "$@" in the background, stderr to $log, and waits for its `listening on` line.
start_server() {
    local log=$1
    shift
    "$@" 2>"$log" >/dev/null &
    pids+=($!)
    for _ in $(seq 1 600); do
        if url=$(grep -m1 -o 'listening on http://[0-9.:]*' "$log"); then
            echo "${url#listening on }"
            return
        fi
        kill -0 "${pids[-1]}" 2>/dev/null || { cat "$log" >&2; echo "$1 exited" >&2; exit 1; }
        sleep 0.1
    done
    cat "$log" >&2
    echo "$1 did not start" >&2
    exit 1
}

models=$(cd "$MODELS" && pwd)
cat >"$work/expert.yaml" <<EOF
hybrid:
  categories: ["reasoning", "sop"]
  classifier: {type: rule_based, checkpoint_dir: ./models/checkpoints/classifier, rules_file: $root/configs/rules.json}
  routing: {confidence_threshold: 0.85, enable_btm_fallback: true}
experts:
  models: {foundation: $models/foundation, sft-sop: $models/sft-sop}
  max_queue: 256
EOF
expert=$(start_server "$work/expert.log" target/release/expert serve --config "$work/expert.yaml" --listen 127.0.0.1:0)
cat >"$work/gateway.yaml" <<EOF
hybrid:
  categories: ["reasoning", "sop"]
  classifier: {type: rule_based, checkpoint_dir: ./models/checkpoints/classifier, rules_file: $root/configs/rules.json}
  routing: {confidence_threshold: 0.85, enable_btm_fallback: true}
experts:
  models: {foundation: $models/foundation, sft-sop: $models/sft-sop}
gateway:
  expert_processes: 0
  remote_experts: ["$expert"]
  max_concurrent_requests: 256
  category_experts: {reasoning: foundation, sop: sft-sop}
  foundation_model: foundation
  fusion: {type: ensemble, models: [foundation, sft-sop]}
  feedback_db: $work/feedback.sqlite
  bootstrap: off
EOF
gateway=$(start_server "$work/gateway.log" target/release/gateway --config "$work/gateway.yaml" --listen 127.0.0.1:0)
echo "expert $expert, gateway $gateway" >&2

prompt='How do I reset my password? I am locked out of my account.'
direct_body="{\"model\":\"sft-sop\",\"messages\":[{\"role\":\"user\",\"content\":\"$prompt\"}],\"max_tokens\":1,\"temperature\":0}"
gateway_body="{\"model\":\"hybrid\",\"messages\":[{\"role\":\"user\",\"content\":\"$prompt\"}],\"max_tokens\":1,\"temperature\":0}"
# The gateway routes this prompt to sft-sop alone: the same upstream work as the direct call.
curl -sf "$gateway/v1/chat/completions" -H 'content-type: application/json' -d "$gateway_body" \
    | grep -q '"experts":\["sft-sop"\]' || { echo "the gateway did not route the bench prompt to sft-sop alone" >&2; exit 1; }

litellm=""
if [ -z "${SKIP_LITELLM:-}" ]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat >"$work/litellm.yaml" <<EOF
model_list:
  - model_name: sft-sop
    litellm_params: {model: openai/sft-sop, api_base: "$expert/v1", api_key: none}
general_settings: {master_key: sk-bench}
litellm_settings: {telemetry: false}
EOF
    LITELLM_LOCAL_MODEL_COST_MAP=True "$LITELLM_VENV/bin/litellm" --config "$work/litellm.yaml" \
        --host 127.0.0.1 --port "$port" --num_workers 1 >"$work/litellm.log" 2>&1 &
    pids+=($!)
    litellm="http://127.0.0.1:$port"
    for _ in $(seq 1 1200); do
        curl -sf "$litellm/health/liveliness" >/dev/null 2>&1 && break
        kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/litellm.log" >&2; exit 1; }
        sleep 0.1
    done
    curl -sf "$litellm/v1/chat/completions" -H 'authorization: Bearer sk-bench' \
        -H 'content-type: application/json' -d "$direct_body" >/dev/null \
        || { cat "$work/litellm.log" >&2; echo "LiteLLM did not answer" >&2; exit 1; }
    echo "litellm $litellm" >&2
fi

# run NAME URL BODY RATE(or max) [AUTH]
run() {
    local name=$1 url=$2 body=$3 rate=$4 auth=${5:-none}
    local load=(-q "$rate" --latency-correction -c 64)
    [ "$rate" = max ] && load=(-c "$CONCURRENCY")
    echo "oha: $name at $rate req/s, ${DURATION}s" >&2
    "$OHA" -z "${DURATION}s" "${load[@]}" --no-tui --output-format json -m POST \
        -H 'content-type: application/json' -H "authorization: Bearer $auth" -d "$body" \
        "$url/v1/chat/completions" >"$OUT/$name-$rate.json"
}

# Warm-up (connections, caches), not recorded.
"$OHA" -z 2s -q 50 --no-tui -m POST -H 'content-type: application/json' -d "$direct_body" \
    "$expert/v1/chat/completions" >/dev/null
"$OHA" -z 2s -q 50 --no-tui -m POST -H 'content-type: application/json' -d "$gateway_body" \
    "$gateway/v1/chat/completions" >/dev/null
[ -n "$litellm" ] && "$OHA" -z 2s -q 20 --no-tui -m POST -H 'content-type: application/json' \
    -H 'authorization: Bearer sk-bench' -d "$direct_body" "$litellm/v1/chat/completions" >/dev/null

rates=()
for rate in $RATES; do
    run direct "$expert" "$direct_body" "$rate"
    run gateway "$gateway" "$gateway_body" "$rate"
    rates+=("$rate")
done
if [ -n "$litellm" ]; then
    run direct "$expert" "$direct_body" "$LITELLM_RATE"
    run gateway "$gateway" "$gateway_body" "$LITELLM_RATE"
    run litellm "$litellm" "$direct_body" "$LITELLM_RATE" sk-bench
    rates+=("$LITELLM_RATE")
fi
run direct "$expert" "$direct_body" max
run gateway "$gateway" "$gateway_body" max
[ -n "$litellm" ] && run litellm "$litellm" "$direct_body" max sk-bench

python3 - "$OUT" "$CONCURRENCY" "${rates[@]}" <<'EOF' | tee "$OUT/table.md"
import json, os, sys

out, concurrency, rates = sys.argv[1], sys.argv[2], sys.argv[3:]

def load(name, rate):
    path = os.path.join(out, f"{name}-{rate}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        r = json.load(f)
    codes = r.get("statusCodeDistribution", {})
    ok = int(codes.get("200", 0))
    total = sum(int(v) for v in codes.values()) + sum(int(v) for v in r.get("errorDistribution", {}).values())
    p = r["latencyPercentiles"]
    return {"p50": p["p50"] * 1e3, "p99": p["p99"] * 1e3, "rps": r["summary"]["requestsPerSec"],
            "ok": ok, "total": total}

print("| target | offered rate | p50 ms | p99 ms | achieved req/s | 200 / all |")
print("|---|---:|---:|---:|---:|---:|")
for rate in list(dict.fromkeys(rates)) + ["max"]:
    for name in ["direct", "gateway", "litellm"]:
        r = load(name, rate)
        if r:
            shown = f"unlimited (c={concurrency})" if rate == "max" else f"{rate} req/s"
            print(f"| {name} | {shown} | {r['p50']:.3f} | {r['p99']:.3f} | {r['rps']:.0f} | {r['ok']} / {r['total']} |")
print()
print("| added latency vs direct | offered rate | p50 ms | p99 ms |")
print("|---|---:|---:|---:|")
added = {}
for rate in list(dict.fromkeys(rates)):
    d = load("direct", rate)
    for name in ["gateway", "litellm"]:
        r = load(name, rate)
        if d and r:
            added[(name, rate)] = (r["p50"] - d["p50"], r["p99"] - d["p99"])
            print(f"| {name} | {rate} req/s | {r['p50'] - d['p50']:+.3f} | {r['p99'] - d['p99']:+.3f} |")
for (name, rate), (p50, p99) in added.items():
    if name == "litellm" and ("gateway", rate) in added:
        g50, g99 = added[("gateway", rate)]
        def ratio(a, b):
            return f"{a / b:.0f}×" if b > 0.001 else "n/a (gateway added < 1 µs)"
        print()
        print(f"At {rate} req/s LiteLLM adds {p50:.3f} ms (p50) / {p99:.3f} ms (p99), the gateway "
              f"{g50:.3f} / {g99:.3f} ms: ratio {ratio(p50, g50)} (p50), {ratio(p99, g99)} (p99).")
m = {n: load(n, "max") for n in ["direct", "gateway", "litellm"]}
if m["direct"] and m["gateway"]:
    line = f"Max throughput: direct {m['direct']['rps']:.0f} req/s, gateway {m['gateway']['rps']:.0f} req/s"
    if m["litellm"]:
        line += f", LiteLLM {m['litellm']['rps']:.0f} req/s"
    print()
    print(line + ".")
EOF
