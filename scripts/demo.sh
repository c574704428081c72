#!/usr/bin/env bash
# The demo on a fresh clone: installs what the build needs (scripts/setup.sh: cmake, a C++
# compiler, libclang, the default model), builds `veil` and `veil-server`, and runs
# `veil demo` (mock TEE, default model). Arguments go to `veil demo`, e.g. --keep DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build -q --locked -p veil-client -p veil-server
exec target/debug/veil demo "$@"
