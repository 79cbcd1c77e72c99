#!/usr/bin/env bash
# One command sets up a fresh Debian/Ubuntu machine for oss-gateway: system packages the tests
# start for real (redis-server, prometheus/promtool, nginx, wrk, docker-compose for offline
# validation) and the Python package with its dev and demo extras.
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
"${PIP[@]}" -e ".[dev,demo]"
./scripts/setup_vllm.sh  # real vLLM (CPU) in its own venv for tests/vllm: docs/vllm.md
echo "setup done: $(redis-server --version | cut -d' ' -f3), $(prometheus --version 2>&1 | head -1 | cut -d' ' -f3), python $(python3 -c 'import sys; print(sys.version.split()[0])')"
