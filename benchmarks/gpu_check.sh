#!/usr/bin/env bash
# The checks only a GPU can make, as one script (under 8 minutes on one GPU):
#   1. the CUDA-only tests: fp16 (16-mixed) with gradient scaling for gradmatch train and ADIOS,
#      SyncBatchNorm/NCCL tests where there are 2 GPUs;
#   2. resume across device types: a run checkpointed on CUDA continues on the CPU and back;
#   3. speed: Fish/ERM (fp32, bf16-mixed, 16-mixed) and the Fish step overhead, ADIOS (fp32 vs
#      mixed precision).
# Usage, from the repository root:  bash benchmarks/gpu_check.sh RESULTS_DIR
# Needs python3 with torch (CUDA), lightning, wilds, matplotlib and this package importable
# (pip install -e ".[solo]"; or PYTHONPATH=plugins). Packages that the machine lacks can be
# installed from wheels in .whl/ (pip install --no-index --target /tmp/site .whl/*.whl). A solo-learn
# checkout is found via $SOLO_LEARN_DIR or ~/.cache/gradmatch-adios/upstream/solo-learn; without one
# the ADIOS parts are skipped and say so. Every step writes to RESULTS_DIR and a failing step
# does not stop the others; the exit code is the number of failed steps.
set -uo pipefail
RESULTS=${1:?usage: bash benchmarks/gpu_check.sh RESULTS_DIR}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/plugins:$PWD/tests:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
LOG=$RESULTS/gpu_check.log
FAILED=0
step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T)) : $*" | tee -a "$LOG"
  local start=$SECONDS
  if timeout "$limit" "$@" >>"$LOG" 2>&1; then
    echo "=== $name: ok in $((SECONDS - start)) s" | tee -a "$LOG"
  else
    echo "=== $name: FAILED (exit $?) after $((SECONDS - start)) s" | tee -a "$LOG"
    FAILED=$((FAILED + 1))
  fi
}

step environment 60 bash -c "nvidia-smi; $PY -c 'import torch, lightning; print(torch.__version__, lightning.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count())'"

# 1. CUDA-only tests (they skip on machines without CUDA)
step cuda-tests 240 $PY -m pytest -q -x -p no:cacheprovider --junitxml="$RESULTS/cuda_tests.xml" \
  tests/test_wilds_distributed.py tests/test_adios_ddp.py -k "cuda or fp16 or gpus or nccl"

# 2. resume across device types: 20 steps on one device, then 10 more on the other
resume_across() {  # resume_across FIRST SECOND
  local dir=/tmp/gradmatch_resume_$1_$2
  rm -rf "$dir"
  local args=(train --dataset cdsprites --dataset-kwargs '{"num_domains": 4, "per_domain": 128, "image_size": 32}'
              --out "$dir" --batch-size 16 --no-progress --checkpoint-every 10 --eval-every 10 --log-every 1)
  $PY -m gradmatch.cli "${args[@]}" --max-steps 20 --accelerator "$1" >/dev/null || return 1
  rm "$dir/summary.json"  # as if killed after its last checkpoint
  $PY -m gradmatch.cli "${args[@]}" --max-steps 30 --accelerator "$2" --resume >/dev/null || return 1
  $PY - "$dir" <<'EOF'
import json, sys
steps = [json.loads(l)["step"] for l in open(sys.argv[1] + "/log.jsonl") if '"train"' in l]
assert steps == list(range(1, 31)), steps
print("resumed across devices: steps 1-30 once each")
EOF
}
step resume-cuda-to-cpu 120 resume_across gpu cpu
step resume-cpu-to-cuda 120 resume_across cpu gpu

# 3. speed (ratios against a baseline measured in the same run)
step fish-scale 150 $PY benchmarks/fish_scale.py --accelerator gpu --devices 1 \
  --precisions 32-true bf16-mixed 16-mixed --image-size 64 --batch-size 64 --steps 60 --warmup 10 \
  --threads 4 --out "$RESULTS"
step fish-overhead 150 $PY benchmarks/fish_overhead.py --device cuda --threads 4 --steps 30 --out "$RESULTS"
step adios-scale 150 $PY benchmarks/adios_scale.py --device cuda --out "$RESULTS"

echo "failed steps: $FAILED (log: $LOG)" | tee -a "$LOG"
exit "$FAILED"
