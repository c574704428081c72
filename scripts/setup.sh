#!/usr/bin/env bash
# Installs what the build needs that cargo cannot fetch, and fetches the default model.
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
# (system packages and the model fetch are added here as the crates need them)

# veil-model: llama-cpp-sys-2 builds llama.cpp with cmake and a C++ compiler, and makes its
# bindings with bindgen, which loads libclang.
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v c++ >/dev/null 2>&1 || need+=(g++)
if ! compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null && ! ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then
  need+=(libclang-dev)
fi
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq >/dev/null
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# veil-model: the default model for the real-model tests (quiet when already there).
scripts/fetch-model.sh
