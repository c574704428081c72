# Sourced by the bench scripts: llama.cpp's own tools, built from the llama.cpp sources
# vendored in the PyPI sdist of llama-cpp-python ($LLAMA_CPP_PYTHON, default 0.3.36),
# because the llama-cpp-sys-2 crate does not ship them. Built like Veil's engine:
# GGML_NATIVE=OFF, -march=MARCH.
#
#   build_llama_tools OUT MARCH SERVER(ON|OFF) TARGET...   → prints the bin directory
build_llama_tools() {
  local out="$1" march="$2" server="$3"
  shift 3
  local version="${LLAMA_CPP_PYTHON:-0.3.36}"
  local src="$out/llama_cpp_python-$version/vendor/llama.cpp"
  local build="$out/llama-tools-$version-$march-server-$server"
  local log="$build.log"
  mkdir -p "$out"
  if [ ! -d "$src" ]; then
    python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$out" "llama-cpp-python==$version" >"$log" 2>&1 \
      && tar -xzf "$out/llama_cpp_python-$version.tar.gz" -C "$out" || true
  fi
  [ -d "$src" ] \
    && cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DCMAKE_C_FLAGS="-march=$march" -DCMAKE_CXX_FLAGS="-march=$march" \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER="$server" -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF >>"$log" 2>&1 \
    && cmake --build "$build" --target "$@" -j "$(nproc)" >>"$log" 2>&1 \
    && echo "$build/bin"
}
