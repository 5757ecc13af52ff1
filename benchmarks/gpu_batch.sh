#!/usr/bin/env bash
# One batch for a lent GPU machine (run from the project root, after ../shared/gpu's RAPIDS install):
# the GPU tests, then the pipeline benchmark on both twins. Logs and CSVs go to $OUT (default benchmarks/results).
#   bash benchmarks/gpu_batch.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.}
PY=${PY:-python3}
gpu=$($PY -c "import cupy; p=cupy.cuda.runtime.getDeviceProperties(0); n=p['name']; print((n.decode() if isinstance(n, bytes) else n).replace(' ', '-'))" 2>/dev/null || echo nogpu)
cuml=$($PY -c "import cuml; print(cuml.__version__)" 2>/dev/null || echo none)
tag="$gpu-cuml$cuml"
nvidia-smi > "$OUT/nvidia-smi-$tag.txt" 2>&1
$PY -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests-$tag.log"
$PY benchmarks/bench_pipeline.py --sizes 20000 100000 1000000 --cpu-max 20000 --dim 768 --k 100 \
    --out "$OUT/pipeline-$tag.csv" 2>&1 | tee "$OUT/bench-pipeline-$tag.log"
