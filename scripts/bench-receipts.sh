#!/usr/bin/env bash
# The cost of receipts and lease renewals (issue 18): streamed generation through an
# in-process `veil proxy` from a server that signs receipts (the proxy keeping every
# bundle), one started with --no-receipts, and one that renews a 2 s lease from
# `veil broker` every second while it generates (fresh servers, rotating order, the
# ratios per round); then signing and offline verification in-process. Release builds;
# prints medians and the ratios.
#
#   scripts/bench-receipts.sh [MODEL.gguf] [THREADS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
scripts/setup.sh   # the build's packages and the default model, decided from dpkg
cargo build --quiet --release --locked -p veil-client -p veil-server --bins --example bench_receipts
exec "${CARGO_TARGET_DIR:-target}/release/examples/bench_receipts" "$model" "${2:-1}" "${3:-6}"
