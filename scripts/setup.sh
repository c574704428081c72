#!/usr/bin/env bash
# Installs what the build needs that cargo cannot fetch, and fetches the default model.
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
# (system packages and the model fetch are added here as the crates need them)
