#!/usr/bin/env bash
# The cost of the confidential path (issue 6): generation through `veil proxy` and the
# attested TLS connection against the engine in-process, `veil verify` wall time, and
# provisioning-to-Ready against a plain load. Release builds; prints medians and ratios.
#
#   scripts/bench-e2e.sh [MODEL.gguf] [THREADS] [ROUNDS]
#
# THREADS (default 1) is the inference threads of both sides. On this 2-core machine the
# proxy, the client and the server share the cores, so 1 inference thread keeps the
# comparison about the path rather than about core contention (docs/engine.md has figures
# for both).
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
scripts/setup.sh   # the build's packages and the default model, decided from dpkg
cargo build --quiet --release --locked -p veil-client -p veil-server --bins --example bench_e2e
exec "${CARGO_TARGET_DIR:-target}/release/examples/bench_e2e" "$model" "${2:-1}" "${3:-5}"
