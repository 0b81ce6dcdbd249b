#!/usr/bin/env bash
# Install everything a fresh Debian machine (2 cores, no GPU, no display) lacks, then run the tests
# under a virtual X server. This is the README's test command; CI runs it through .ci/run, in fresh
# venvs (PYTHON=/path/to/venv/bin/python; default: python3). Arguments go to pytest (files, -k, -x).
# NAPARI_UNET_PRECISION=fp32 (with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) runs the
# suite as a CPU without AVX-512 or bf16 would.
set -euo pipefail
cd "$(dirname "$0")/.."

# System libraries for headless Qt + napari rendering (Xvfb). Skipped when already present.
need=()
for pkg in xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libxcb-randr0 \
           libxcb-render-util0 libxcb-shape0 libxcb-image0 libxkbcommon-x11-0 libgl1 libegl1 \
           libfontconfig1 libdbus-1-3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# torch first: the CPU wheel (a plain `torch` would pull a multi-GB CUDA build here).
PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>/dev/null \
  || $PY -m pip install -q --disable-pip-version-check torch --index-url https://download.pytorch.org/whl/cpu
# testing brings the gui extra (napari with PyQt6, as a user's install); the export extra
# (bioimageio.spec/core, onnx, onnxruntime) too: its tests skip without it, CI runs them.
# Pinning the torch just installed on the same command line keeps pip from swapping it for another build.
TORCH=$($PY -c 'import torch; print(torch.__version__.split("+")[0])')
$PY -m pip install -q --disable-pip-version-check -e ".[testing,export]" "torch==$TORCH"

export QT_API=pyqt6 PYTHONHASHSEED=0 MPLBACKEND=Agg
exec xvfb-run -a -s "-screen 0 1600x1000x24" $PY -m pytest -p no:cacheprovider "$@"
