#!/usr/bin/env bash
# Unseal benchmarks (issue 3): throughput ratios against ring's raw AES-256-GCM and
# memcpy, then the peak RSS of unsealing a synthetic model (default 2048 MiB).
#   scripts/bench-unseal.sh [MIB]        (set CARGO_TARGET_DIR to build elsewhere)
#   SKIP_THROUGHPUT=1 scripts/bench-unseal.sh   only the RSS part
# The synthetic model and its sealed copy go to a temporary directory under ${TMPDIR:-/tmp}
# (about 2 × MIB of disk) and are deleted afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-2048}"
scripts/setup.sh --bench   # the build's packages and /usr/bin/time, decided from dpkg
if [ -z "${SKIP_THROUGHPUT:-}" ]; then
  echo "== throughput (256 MiB, sealed file in the page cache; cargo bench)"
  cargo bench -q -p veil-sealing --bench unseal
fi
echo "== peak RSS of unsealing ${mib} MiB"
cargo build -q --release -p veil-sealing --example unseal_rss
bin="${CARGO_TARGET_DIR:-target}/release/examples/unseal_rss"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
"$bin" seal "$dir" "$mib"
/usr/bin/time -v "$bin" unseal "$dir" 2> "$dir/time.txt"
rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time.txt")
size_kib=$((mib * 1024))
echo "peak RSS ${rss_kib} KiB for a ${size_kib} KiB model: overhead $(( (rss_kib - size_kib) / 1024 )) MiB (goal <= 64 MiB)"
