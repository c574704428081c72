#!/usr/bin/env bash
# Runs every test of the workspace. The real AMD SEV-SNP vectors are read from
# $VEIL_SNP_VECTORS (default: ../shared/vectors/snp beside the checkout). It builds the
# guest image first (scripts/build-image.sh, into image/).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VEIL_SNP_VECTORS:-}" ] && [ -d ../shared/vectors/snp ]; then
  VEIL_SNP_VECTORS="$(cd ../shared/vectors/snp && pwd)"
  export VEIL_SNP_VECTORS
fi
if [ -x scripts/setup.sh ]; then
  scripts/setup.sh
fi
# The SEV-SNP guest image, for tests/tests/boot_image.rs (which boots it under QEMU):
# cached after the first build, which takes a few minutes (docs/deploy-snp.md).
scripts/build-image.sh
export VEIL_REQUIRE_IMAGE=1
cargo test --workspace --locked "$@"
