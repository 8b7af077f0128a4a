#!/usr/bin/env bash
# The GPU benchmark, as run on a lent GPU machine (one H100/H200, no internet).
#
#   bash benchmarks/cuda_run.sh OUT_DIR
#
# Expects in the checkout: .whl/ (wheels of the packages the machine lacks: polars,
# pydantic and their needs) and .gpu/peers/deepctr_torch (DeepCTR-Torch's pure-Python package,
# copied from its venv). pytorch-widedeep is not run there: it imports gensim and spaCy.
# Each step is independent, so one failure still leaves the others' results in OUT_DIR.
set -u
OUT_DIR=${1:?usage: cuda_run.sh OUT_DIR}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD/src:$PWD/.gpu/peers"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
python3 -c "import torch, polars; print('torch', torch.__version__, 'polars', polars.__version__)"

timeout 120 python3 -m pytest -q -p no:cacheprovider tests/training/test_cuda.py tests/optim \
  2>&1 | tail -5 | tee "$OUT_DIR/pytest-cuda.txt"

ROWS=${ROWS:-1000000}
TEST_ROWS=${TEST_ROWS:-200000}
COMMON=(--rows "$ROWS" --test-rows "$TEST_ROWS" --threads 8 --device cuda)
# 1. The main table: widedeep and DeepCTR-Torch, MLP [256,128], batch 1024, 3 epochs.
timeout 300 python3 benchmarks/bench.py "${COMMON[@]}" --epochs 3 --repeats 1 \
  --peer DeepCTR-Torch=python3 --results "$OUT_DIR/RESULTS-cuda.md" 2>&1 | tail -20
DATA="bench-scratch/data/ctr-$ROWS-$TEST_ROWS-0/train.parquet"
timeout 90 python3 benchmarks/profile_step.py --train "$DATA" --device cuda --threads 8 \
  2>&1 | grep -v USDT | tee "$OUT_DIR/profile-cuda.txt" | head -40
# 2. The variants of the issue: batch 4096, and MLP [400,400,400], widedeep alone.
cp bench-scratch/*-0.json "$OUT_DIR/" 2>/dev/null
timeout 100 python3 benchmarks/bench.py "${COMMON[@]}" --epochs 3 --repeats 1 --no-peers \
  --batch-size 4096 --results "$OUT_DIR/RESULTS-cuda-b4096.md" 2>&1 | tail -12
timeout 100 python3 benchmarks/bench.py "${COMMON[@]}" --epochs 3 --repeats 1 --no-peers \
  --hidden 400,400,400 --results "$OUT_DIR/RESULTS-cuda-400x3.md" 2>&1 | tail -12
