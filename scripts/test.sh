#!/usr/bin/env bash
# Runs every test of the workspace. The real AMD SEV-SNP vectors are read from
# $VEIL_SNP_VECTORS (default: ../shared/vectors/snp beside the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VEIL_SNP_VECTORS:-}" ] && [ -d ../shared/vectors/snp ]; then
  VEIL_SNP_VECTORS="$(cd ../shared/vectors/snp && pwd)"
  export VEIL_SNP_VECTORS
fi
if [ -x scripts/setup.sh ]; then
  scripts/setup.sh
fi
cargo test --workspace --locked "$@"
