#!/usr/bin/env bash
# Installs what the build needs that cargo cannot fetch, then fetches the default model.
# Idempotent and quiet when nothing is missing.
#
# What to install is decided from the package manager's own state (dpkg's database, read
# with dpkg-query), never from files that happen to lie around: a new machine has
# libclang-cpp.so.14 but not libclang, and only dpkg knows which package is really there.
#
#   scripts/setup.sh                    install what is missing, fetch the model
#   scripts/setup.sh --bench            also what the benchmark scripts need
#   scripts/setup.sh --image            also what scripts/build-image.sh and the boot
#                                       test need
#   scripts/setup.sh --print-decision   only print what would be installed, change nothing
#
# VEIL_DPKG_ADMINDIR points dpkg-query at another database (the test of this decision uses
# a fake one); it implies nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

bench=0
image=0
decide_only=0
for arg in "$@"; do
  case "$arg" in
    --bench) bench=1 ;;
    --image) image=1 ;;
    --print-decision) decide_only=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "setup: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

# package|why, one a line. veil-model's llama-cpp-sys-2 builds llama.cpp with cmake (which
# drives make) and a C++ compiler, and makes its Rust bindings with bindgen, which loads
# libclang at build time.
wanted=(
  "cmake|llama-cpp-sys-2 builds llama.cpp with cmake"
  "make|cmake's build tool for llama.cpp"
  "g++|llama.cpp is C++"
  "libclang-dev|bindgen (llama-cpp-sys-2) loads libclang"
)
if [ "$image" = 1 ]; then
  wanted+=(
    "nasm|edk2's OVMF build assembles with nasm"
    "acpica-tools|edk2's OVMF build compiles its ACPI tables with iasl"
    "uuid-dev|edk2's BaseTools link libuuid"
    "cpio|the initrd is a cpio archive"
    "patch|Debian's patches to edk2 are applied before the OVMF build"
    "curl|edk2's source tarballs come from Debian's pool"
    "xz-utils|the kernel's modules are xz-compressed"
    "qemu-system-x86|the boot test runs the image under QEMU"
  )
fi
if [ "$bench" = 1 ]; then
  wanted+=("time|/usr/bin/time measures peak RSS in the benchmark scripts")
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "setup: dpkg-query not found: this script installs with Debian's apt; install by hand:" >&2
  for entry in "${wanted[@]}"; do echo "  ${entry%%|*}  (${entry#*|})" >&2; done
  exit 1
fi
admin=()
[ -n "${VEIL_DPKG_ADMINDIR:-}" ] && admin=(--admindir="$VEIL_DPKG_ADMINDIR")

installed() {
  # "installed" only for a package that is fully installed (not removed with its
  # configuration left, not half-configured).
  [ "$(dpkg-query "${admin[@]}" -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

need=()
why=()
for entry in "${wanted[@]}"; do
  pkg="${entry%%|*}"
  if ! installed "$pkg"; then
    need+=("$pkg")
    why+=("  $pkg: ${entry#*|}")
  fi
done

if [ "$decide_only" = 1 ]; then
  if [ "${#need[@]}" -eq 0 ]; then
    echo "setup: nothing to install"
  else
    echo "setup: would install ${need[*]}"
    printf '%s\n' "${why[@]}"
  fi
  exit 0
fi

if [ "${#need[@]}" -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "setup: missing ${need[*]}; run as root or install them: apt-get install ${need[*]}" >&2
      exit 1
    fi
    sudo=(sudo)
  fi
  echo "setup: installing ${need[*]} with apt-get (once; the first build then takes a few minutes):"
  printf '%s\n' "${why[@]}"
  log="$(mktemp)"
  if ! { "${sudo[@]}" apt-get update -qq \
      && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "setup: apt-get could not install ${need[*]}" >&2
    exit 1
  fi
  rm -f "$log"
  for pkg in "${need[@]}"; do
    if ! installed "$pkg"; then
      echo "setup: apt-get reported success but $pkg is not installed" >&2
      exit 1
    fi
  done
fi

# The default model, for the demo and the real-model tests (quiet when already there).
scripts/fetch-model.sh
