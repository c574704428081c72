#!/usr/bin/env bash
# Engine benchmark (issue 4): Veil's engine API (model/examples/bench.rs) against llama.cpp's
# own llama-bench and llama-batched-bench (the 4-stream reference), on the same GGUF with the
# same thread count, interleaved, then the ratios.
#
#   scripts/bench-model.sh [MODEL.gguf] [THREADS] [ROUNDS]
#
# llama-bench: $LLAMA_BENCH if set; otherwise built once (about 5 minutes on 2 cores) from
# the llama.cpp sources vendored in the PyPI sdist of llama-cpp-python ($LLAMA_CPP_PYTHON,
# default 0.3.36), because the llama-cpp-sys-2 crate does not ship llama.cpp's tools.
# It is built like Veil's engine: GGML_NATIVE=OFF, -march=$BENCH_MARCH (default x86-64-v3,
# as .cargo/config.toml's target-cpu). BENCH_MARCH=native shows what the build machine's
# own CPU features would add. Skipped with a message when it cannot be built.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
threads="${2:-2}"
rounds="${3:-2}"
reps="${REPS:-5}"
march="${BENCH_MARCH:-x86-64-v3}"
target="${CARGO_TARGET_DIR:-target}"
out="$target/bench-model"
mkdir -p "$out"
scripts/setup.sh --bench   # the build's packages, /usr/bin/time and the default model
. scripts/llama-cpp.sh

echo "== building Veil's bench (release)"
cargo build --quiet --release -p veil-model --example bench
veil_bin="$target/release/examples/bench"

llama_bench="${LLAMA_BENCH:-}"
if [ -z "$llama_bench" ]; then
  echo "== llama.cpp's llama-bench (-march=$march, GGML_NATIVE=OFF; built once, about 5 minutes on 2 cores)"
  if bin="$(build_llama_tools "$out" "$march" OFF llama-bench llama-batched-bench)"; then
    llama_bench="$bin/llama-bench"
  else
    echo "SKIPPED llama-bench: it could not be fetched or built (see $out/llama-tools-*.log); Veil's figures only"
  fi
fi

for round in $(seq 1 "$rounds"); do
  echo "== round $round/$rounds: Veil engine"
  /usr/bin/time -f '%M' -o "$out/veil-$round.rss" "$veil_bin" "$model" "$threads" "$reps" | tee "$out/veil-$round.txt"
  if [ -n "$llama_bench" ]; then
    echo "== round $round/$rounds: llama-bench"
    /usr/bin/time -f '%M' -o "$out/llama-$round.rss" \
      "$llama_bench" -m "$model" -t "$threads" -p 128 -n 128 -d 0,128 -r "$reps" -o json >"$out/llama-$round.json"
    batched="$(dirname "$llama_bench")/llama-batched-bench"
    : >"$out/batched-$round.jsonl"
    if [ -x "$batched" ]; then
      echo "== round $round/$rounds: llama-batched-bench (1 and 4 sequences, 128 + 128 tokens each)"
      for _ in $(seq 1 "$reps"); do
        "$batched" -m "$model" -t "$threads" -c 4096 -b 512 -ub 512 -npp 128 -ntg 128 -npl 1,4 \
          --output-format jsonl 2>/dev/null | grep '^{' >>"$out/batched-$round.jsonl" || true
      done
    fi
  fi
done

python3 - "$out" "$rounds" "$threads" "${llama_bench:+yes}" <<'PY'
import json, statistics, sys
out, rounds, threads, have_llama = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "yes"
veil = [json.loads(open(f"{out}/veil-{r}.txt").read().strip().splitlines()[-1]) for r in range(1, rounds + 1)]
v = {k: statistics.median(x[k] for x in veil) for k in ("pp_tok_s", "tg_tok_s", "tg_engine_tok_s", "ttft_ms", "chat_ttft_ms", "aggregate_tok_s", "load_ms")}
v["rss_mib"] = max(int(open(f"{out}/veil-{r}.rss").read().split()[-1]) for r in range(1, rounds + 1)) / 1024
print(f"\n== results: {threads} threads, medians over {rounds} rounds")
print(f"veil      pp{veil[0]['prompt_tokens']} {v['pp_tok_s']:7.1f} tok/s   tg128 (after the prompt) {v['tg_tok_s']:6.1f} tok/s (engine-side {v['tg_engine_tok_s']:.1f})")
print(f"veil      time to first token {v['ttft_ms']:.1f} ms (128-token prompt), {v['chat_ttft_ms']:.1f} ms (chat question); load {v['load_ms']:.0f} ms; peak RSS {v['rss_mib']:.0f} MiB")
v["aggregate_steady_tok_s"] = statistics.median(x["aggregate_steady_tok_s"] for x in veil)
print(f"veil      4 streams: {v['aggregate_steady_tok_s']:.1f} tok/s aggregate while all 4 generate = {v['aggregate_steady_tok_s'] / v['tg_tok_s']:.2f}x one stream (goal >= 2); {v['aggregate_tok_s']:.1f} tok/s = {v['aggregate_tok_s'] / v['tg_tok_s']:.2f}x from the first token to the last")
if not have_llama:
    sys.exit(0)
samples = {}
for r in range(1, rounds + 1):
    for t in json.load(open(f"{out}/llama-{r}.json")):
        key = ("pp" if t["n_prompt"] else "tg", t["n_depth"])
        samples.setdefault(key, []).extend(t["samples_ts"])
l = {k: statistics.median(s) for k, s in samples.items()}
rss = max(int(open(f"{out}/llama-{r}.rss").read().split()[-1]) for r in range(1, rounds + 1)) / 1024
print(f"llama.cpp pp128 {l[('pp', 0)]:7.1f} tok/s   tg128 {l[('tg', 0)]:6.1f} tok/s (empty context), {l[('tg', 128)]:.1f} tok/s (after 128 tokens); peak RSS {rss:.0f} MiB")
batched = {}
for r in range(1, rounds + 1):
    for line in open(f"{out}/batched-{r}.jsonl"):
        t = json.loads(line)
        batched.setdefault(t["pl"], []).append(t["speed_tg"])
if 1 in batched and 4 in batched:
    b1, b4 = statistics.median(batched[1]), statistics.median(batched[4])
    print(f"llama.cpp batched-bench tg: 1 sequence {b1:.1f} tok/s, 4 sequences {b4:.1f} tok/s = {b4 / b1:.2f}x (llama.cpp's own 4-stream scaling on this model and machine)")
    print(f"ratio     4 streams  {v['aggregate_steady_tok_s'] / b4:.2f}x llama.cpp's 4-sequence rate")
print(f"ratio     pp  {v['pp_tok_s'] / l[('pp', 0)]:.2f}x (goal >= 0.9)")
print(f"ratio     tg  {v['tg_tok_s'] / l[('tg', 128)]:.2f}x against tg128 at the same depth (goal >= 1.0); {v['tg_tok_s'] / l[('tg', 0)]:.2f}x against tg128 from an empty context")
PY
