#!/usr/bin/env bash
# Fuzz campaigns on the stable toolchain: libFuzzer (through libfuzzer-sys) with
# SanitizerCoverage passes that stable rustc accepts (-C passes=sancov-module and the
# -sanitizer-coverage-* LLVM options; what `cargo fuzz -s none` passes), no sanitizer.
# The parsers are safe Rust, so what is sought is panics, hangs, leaks past -rss_limit_mb
# and broken round-trip assertions.
#
#   scripts/fuzz.sh [--runs N] [--max-time SECONDS] [TARGET…]
#
# Each target starts from its corpus in fuzz/corpus/TARGET (kept in the repository),
# explores into fuzz/scratch/TARGET (ignored), and at the end the inputs that add coverage
# are merged back into fuzz/corpus/TARGET. One line per target gives the executions,
# the time, the rate and the crashes; a crash stops the script with exit 1 and leaves the
# input in fuzz/artifacts/TARGET/. Default: 10,000,000 runs of every target.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=10000000
max_time=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --max-time) max_time="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^veil-fuzz$')
if [ ${#targets[@]} -eq 0 ]; then
  read -r -a targets <<<"$(echo $all)"
fi
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$all" || { echo "fuzz.sh: no target $t (targets: $(echo $all))" >&2; exit 2; }
done

triple=x86_64-unknown-linux-gnu
# --target keeps these flags off build scripts and proc macros.
export RUSTFLAGS="--cfg fuzzing -C debug-assertions -C overflow-checks -C passes=sancov-module \
-C llvm-args=-sanitizer-coverage-level=4 -C llvm-args=-sanitizer-coverage-inline-8bit-counters \
-C llvm-args=-sanitizer-coverage-pc-table -C llvm-args=-sanitizer-coverage-trace-compares \
-C target-cpu=x86-64-v3"
export CARGO_TARGET_DIR=fuzz/target
cargo build --release --manifest-path fuzz/Cargo.toml --target "$triple" --bins -q

total_fail=0
for t in "${targets[@]}"; do
  bin="fuzz/target/$triple/release/$t"
  mkdir -p "fuzz/corpus/$t" "fuzz/scratch/$t" "fuzz/artifacts/$t"
  log="fuzz/scratch/$t.log"
  args=(-runs="$runs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
        -artifact_prefix="fuzz/artifacts/$t/")
  if [ "$max_time" != 0 ]; then args+=(-max_total_time="$max_time"); fi
  started=$(date +%s)
  if "$bin" "${args[@]}" "fuzz/scratch/$t" "fuzz/corpus/$t" >"$log" 2>&1; then status=ok; else status=CRASH; fi
  secs=$(( $(date +%s) - started ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  execs=${execs:-0}
  # Keep what adds coverage: merged into the corpus, the scratch directory emptied.
  "$bin" -merge=1 "fuzz/corpus/$t" "fuzz/scratch/$t" >>"$log" 2>&1 || true
  rm -rf "fuzz/scratch/$t"
  files=$(find "fuzz/corpus/$t" -type f | wc -l)
  crashes=$(find "fuzz/artifacts/$t" -type f | wc -l)
  printf '%-18s %12s runs in %6s s (%s/s), corpus %s files, %s crashes: %s\n' \
    "$t" "$execs" "$secs" "$(( execs / (secs > 0 ? secs : 1) ))" "$files" "$crashes" "$status"
  if [ "$status" != ok ] || [ "$crashes" != 0 ]; then
    total_fail=1
    tail -30 "$log" >&2
  fi
done
exit $total_fail
