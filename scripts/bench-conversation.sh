#!/usr/bin/env bash
# Prompt reuse over a conversation (issue 16): time to first token at every turn of a
# conversation that resends its whole history, Veil (`veil demo --keep`'s mock-TEE server,
# asked through `veil proxy`) beside llama.cpp's llama-server on the same GGUF with the
# same threads and slots (4 × 2048 tokens), then the ratios. Release builds.
#
#   scripts/bench-conversation.sh [MODEL.gguf] [TURNS] [ROUNDS] [THREADS]
#
# THREADS (default 1) is the inference threads of both servers: on a 2-core machine the
# proxy, the client and the server share the cores, and ggml's threads spin at their
# barriers, so 2 threads there measure core contention rather than the servers (the same
# choice as scripts/bench-e2e.sh; docs/engine.md, "Threads").
#
# llama-server: $LLAMA_SERVER if set; otherwise built once (about 15 minutes on 2 cores)
# from the llama.cpp sources in llama-cpp-python's sdist (scripts/llama-cpp.sh). Without
# it, Veil's figures only. BENCH_PROFILE=dev uses the test build instead of a release one
# (dependencies, llama.cpp included, are optimised there too; Veil's own code is not).
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
turns="${2:-10}"
rounds="${3:-3}"
threads="${4:-1}"
export VEIL_THREADS="$threads"   # veil demo starts veil-server, which reads it
target="${CARGO_TARGET_DIR:-target}"
out="$target/bench-conversation"
mkdir -p "$out"
scripts/setup.sh --bench   # the build's packages and the default model
. scripts/llama-cpp.sh

profile="${BENCH_PROFILE:-release}"
echo "== building veil and veil-server ($profile)"
cargo build --quiet --profile "$profile" --locked -p veil-client -p veil-server --bins
bins="$target/$([ "$profile" = dev ] && echo debug || echo "$profile")"

llama_server="${LLAMA_SERVER:-}"
if [ -z "$llama_server" ]; then
  echo "== llama.cpp's llama-server (built once)"
  if bin="$(build_llama_tools "$target/bench-model" "${BENCH_MARCH:-x86-64-v3}" ON llama-server)"; then
    llama_server="$bin/llama-server"
  else
    echo "SKIPPED llama-server: it could not be fetched or built (see $target/bench-model/llama-tools-*.log)"
  fi
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # URL PATH SECONDS
  for _ in $(seq 1 $((${3} * 10))); do
    if python3 - "$1$2" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=1).read()
PY
    sleep 0.1
  done
  echo "$1 did not answer within $3 s" >&2
  return 1
}

dir="$(mktemp -d)"
pids=()
# `veil demo --keep` stops its server on SIGINT (Ctrl-C), not on SIGTERM.
cleanup() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

echo "== Veil: mock TEE server (veil demo --keep), then veil proxy"
"$bins/veil" demo --keep "$dir/demo" --model "$model" --server "$bins/veil-server" >"$out/demo.log" 2>&1 &
pids+=($!)
url=""
for _ in $(seq 1 1200); do
  url="$(sed -n "s/^The server keeps running at \(https:[^ ]*\)\. .*/\1/p" "$out/demo.log")"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "veil demo did not keep a server (see $out/demo.log)" >&2; exit 1; }
proxy_port="$(free_port)"
"$bins/veil" proxy --upstream "$url" --policy "$dir/demo/policy.toml" --listen "127.0.0.1:$proxy_port" >"$out/proxy.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$proxy_port" /ready 60

args=(--veil "http://127.0.0.1:$proxy_port" --turns "$turns" --rounds "$rounds" --json "$out/result.json")
if [ -n "$llama_server" ]; then
  llama_port="$(free_port)"
  echo "== llama-server: $threads threads, 4 slots of 2048 tokens, --jinja"
  "$llama_server" -m "$model" -t "$threads" -tb "$threads" -c 8192 -np 4 --jinja \
    --host 127.0.0.1 --port "$llama_port" >"$out/llama-server.log" 2>&1 &
  pids+=($!)
  wait_for "http://127.0.0.1:$llama_port" /health 120
  args+=(--llama "http://127.0.0.1:$llama_port")
fi
echo "== $rounds rounds of $turns turns"
python3 scripts/bench-conversation.py "${args[@]}"
