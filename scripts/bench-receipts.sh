#!/usr/bin/env bash
# The cost of receipts (issue 18): streamed generation on attested TLS from a server that
# signs receipts against one started with --no-receipts (fresh servers, alternating, the
# ratio per round), and signing and offline verification in-process. Release builds;
# prints medians and the ratio.
#
#   scripts/bench-receipts.sh [MODEL.gguf] [THREADS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
scripts/setup.sh   # the build's packages and the default model, decided from dpkg
cargo build --quiet --release --locked -p veil-client -p veil-server --bins --example bench_receipts
exec "${CARGO_TARGET_DIR:-target}/release/examples/bench_receipts" "$model" "${2:-1}" "${3:-6}"
