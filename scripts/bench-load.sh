#!/usr/bin/env bash
# A load test of the confidential path with a real load generator (Locust, from PyPI):
# N concurrent streaming clients (default 64 and 256) send chat completions through
# `veil proxy` to a provisioned `veil-server` (mock TEE, the default model), each level
# for a bounded time, all on 127.0.0.1. Prints, per level: the outcomes by status, the
# p50/p99 time to first token and to the whole answer, and the peak RSS (VmHWM) of the
# server and of the proxy. Debug build of Veil's crates (dependencies optimised, as the
# tests use them); nothing here is a pass/fail test.
#
#   scripts/bench-load.sh [SECONDS_PER_LEVEL] [USERS…]
#
# The server runs with its defaults except --max-connections-per-peer, and the proxy with
# its caps raised to 1024: every client here, and the proxy's upstream connections, come
# from 127.0.0.1, which the default caps (64 a peer) would otherwise refuse at once (status
# 0 in Locust's terms; that cap is meant for many peers). So the figures are the engine's
# queue at work, not the caps.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
levels=("$@")
[ ${#levels[@]} -gt 0 ] || levels=(64 256)
scripts/setup.sh
locust_version=2.47.0
if [ "$(python3 -m pip show locust 2>/dev/null | sed -n 's/^Version: //p')" != "$locust_version" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "locust==$locust_version"
fi
cargo build -q --locked -p veil-client -p veil-server
bin="${CARGO_TARGET_DIR:-target}/debug"
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
work=$(mktemp -d)
[ -z "${VEIL_KEEP:-}" ] || echo "work directory: $work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${VEIL_KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
"$bin/veil" seal "$model" -o "$work/model.veil" --key-out "$work/model.key" >/dev/null
"$bin/veil" mock-platform init "$work/platform" >/dev/null
"$bin/veil-server" --model "$work/model.veil" --tee mock --mock-platform "$work/platform" \
  --listen "127.0.0.1:$port" --max-connections-per-peer 1024 >"$work/server.out" 2>"$work/server.log" &
pids+=($!); server_pid=$!
for _ in $(seq 100); do grep -q "https://" "$work/server.out" && break; sleep 0.1; done
sha=$("$bin/veil" seal --inspect "$work/model.veil" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_sha256"])')
"$bin/veil" mock-platform policy "$work/platform" -o "$work/policy.toml" --executable "$bin/veil-server" \
  --config veil.tee=mock --config "veil.listen=127.0.0.1:$port" --config "veil.model_sha256=$sha" >/dev/null
"$bin/veil" provision "https://127.0.0.1:$port" --policy "$work/policy.toml" --key "$work/model.key" >/dev/null 2>&1
proxy_port=$(free_port)
"$bin/veil" proxy --upstream "https://127.0.0.1:$port" --policy "$work/policy.toml" \
  --listen "127.0.0.1:$proxy_port" --max-connections 1024 --max-connections-per-peer 1024 >"$work/proxy.out" 2>"$work/proxy.log" &
pids+=($!); proxy_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/proxy.out" && break; sleep 0.1; done

hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
echo "veil-server with its engine defaults (--parallel 4, --queue 16; pid $server_pid), veil proxy (pid $proxy_pid); ${seconds} s per level"
printf '%-6s %-44s %10s %10s %10s %10s %9s %9s\n' users outcomes ttft_p50 ttft_p99 total_p50 total_p99 rss_srv rss_proxy
for users in "${levels[@]}"; do
  csv="$work/u$users"
  timeout $((seconds + 60)) python3 -m locust -f scripts/load/locustfile.py --headless \
    --host "http://127.0.0.1:$proxy_port" -u "$users" -r "$users" -t "${seconds}s" \
    --stop-timeout 30 --csv "$csv" --only-summary >"$work/locust-$users.log" 2>&1 || true
  python3 - "$csv" "$users" "$(hwm "$server_pid")" "$(hwm "$proxy_pid")" <<'PY'
import csv, sys
prefix, users, rss_s, rss_p = sys.argv[1:]
stats = {(r["Type"], r["Name"]): r for r in csv.DictReader(open(prefix + "_stats.csv"))}
fails = list(csv.DictReader(open(prefix + "_failures.csv")))
chat = stats.get(("POST", "chat (stream)"), {})
ttft = stats.get(("TTFT", "first token"), {})
answer = stats.get(("ANSWER", "whole answer"), {})
ok = int(answer.get("Request Count", 0) or 0)
import re
def kind(error):
    m = re.search(r"HTTP (\d+)", error)
    return m.group(1) if m else re.sub(r"^CatchResponseError\('(.*)'\)$", r"\1", error)[:24]
counts = {}
for f in fails:
    counts[kind(f["Error"])] = counts.get(kind(f["Error"]), 0) + int(f["Occurrences"])
outcomes = [f"200:{ok}"] + [f"{k}:{v}" for k, v in sorted(counts.items())]
ms = lambda r, k: f'{r.get(k, "-")} ms' if r.get(k) not in (None, "N/A") else "-"
print(f'{users:<6} {" ".join(outcomes):<44} {ms(ttft,"50%"):>10} {ms(ttft,"99%"):>10} '
      f'{ms(answer,"50%"):>10} {ms(answer,"99%"):>10} {int(rss_s or 0)//1024:>6} MiB {int(rss_p or 0)//1024:>6} MiB')
PY
done
# Every wait was bounded and nothing died: both processes are still there and answering.
kill -0 "$server_pid" && kill -0 "$proxy_pid" && echo "server and proxy alive after the load"
