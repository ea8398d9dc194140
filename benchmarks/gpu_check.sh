#!/usr/bin/env bash
# The first quarter-hour of a GPU: `gradmatch reproduce gpu-check --scale gpu` (three parts, each with
# its own time cap: checks 2 min, speed 2 min 20 s, science 4 min 40 s; see docs/gpu-check.md), then
# its report. Rehearsed on the CPU by `--scale rehearsal` (tests/test_gpu_check.py runs it in CI).
# Usage, from the repository root:  bash benchmarks/gpu_check.sh RESULTS_DIR
# Needs python3 with torch (CUDA), lightning, wilds, matplotlib and this package importable
# (pip install -e ".[solo,domainbed]"; or PYTHONPATH=plugins). Packages that the machine lacks can be
# installed from wheels in .whl/ (pip install --no-index --target /tmp/site .whl/*.whl). DomainBed and
# solo-learn checkouts are found via $DOMAINBED_DIR / $SOLO_LEARN_DIR or ~/.cache/gradmatch-adios/upstream;
# MNIST via $GRADMATCH_DOMAINBED_DATA (or ./data, ../shared/data), PACS via $PACS_DIR. A step whose
# checkout or data is missing says so and the others run; the report is written whatever finished.
set -uo pipefail
RESULTS=${1:?usage: bash benchmarks/gpu_check.sh RESULTS_DIR}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/plugins:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__, "cuda", torch.cuda.is_available(), torch.cuda.device_count())'
$PY -m gradmatch.cli reproduce gpu-check --scale "${GPU_CHECK_SCALE:-gpu}" --out "$RESULTS" --jobs 1
status=$?
tail -n 40 "$RESULTS"/jobs/part/*.log
exit $status
