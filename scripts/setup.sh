#!/usr/bin/env bash
# One command sets up a fresh Debian/Ubuntu machine for oss-gateway: system packages the tests
# start for real (redis-server, prometheus/promtool, nginx, wrk, docker-compose for offline
# validation) and the Python package with its dev, demo and report extras.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(redis-server prometheus nginx-light wrk docker-compose)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PIP=(python3 -m pip install --disable-pip-version-check -q)

# llama.cpp for the CPU demo, built once as a portable wheel (AVX2/FMA/F16C, no -march=native): a native
# build uses AMX tile instructions on CPUs that advertise them, and they fault where the kernel or the
# VM has not enabled AMX state (seen here: general protection fault in ldtilecfg). pip's own wheel cache
# does not key on CMAKE_ARGS, so the wheel lives in a cache of ours, named for its flags.
LLAMA_VERSION=0.3.36
LLAMA_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
WHEELS="${GATEWAY_WHEEL_CACHE:-$HOME/.cache/oss-gateway/wheels}/llama-$(echo "$LLAMA_FLAGS" | sha1sum | cut -c1-12)"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_VERSION (portable CPU build, once: several minutes)"
  mkdir -p "$WHEELS"
  CMAKE_ARGS="$LLAMA_FLAGS" python3 -m pip wheel --disable-pip-version-check -q --no-deps --no-cache-dir \
    --no-binary llama-cpp-python -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
fi
LLAMA_WHEEL=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -1)
"${PIP[@]}" "$LLAMA_WHEEL[server]"
# the same wheel replaces any other build of that version (e.g. a native one from pip's cache)
llama_dir() { python3 -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llama_cpp").origin))'; }
MARK=".oss-gateway-$(basename "$WHEELS")"
if [ ! -f "$(llama_dir)/$MARK" ]; then
  "${PIP[@]}" --force-reinstall --no-deps "$LLAMA_WHEEL"
  touch "$(llama_dir)/$MARK"
fi
"${PIP[@]}" -e ".[dev,demo,report]"
./scripts/setup_vllm.sh  # real vLLM (CPU) in its own venv for tests/vllm: docs/vllm.md
echo "setup done: $(redis-server --version | cut -d' ' -f3), $(prometheus --version 2>&1 | head -1 | cut -d' ' -f3), python $(python3 -c 'import sys; print(sys.version.split()[0])')"
