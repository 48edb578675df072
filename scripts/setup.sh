#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine (idempotent; fast when already done).
# torch==2.13.0 first (local CPU wheel), then the project pinned by constraints.txt so no CUDA wheels come in.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PKGS="tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim fonts-dejavu-core fonts-noto-cjk fonts-liberation fonts-urw-base35 fonts-lmodern libtasn1-doc glpk-doc gnuplot-doc chromium"
missing=""
for p in $DEB_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] apt-get install:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "[setup] missing Debian packages (run as root or install them):$missing" >&2
  fi
fi

PY=${PYTHON:-python3}
if ! $PY -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  $PY -m pip install -q torch==2.13.0
fi
# checked from /, and got must be this checkout's: the checkout's own got/ folder in the working directory does not pass
# for an installed package, nor does an editable install of another clone
if ! (cd / && $PY -c "import os, sys, got, deepspeed, transformers, rapidocr_onnxruntime, pytest_timeout, peft
sys.exit(os.path.dirname(os.path.dirname(os.path.realpath(got.__file__))) != os.path.realpath(sys.argv[1]))" "$PWD") 2>/dev/null \
   || [ pyproject.toml -nt .setup-stamp ]; then
  $PY -m pip install -q -c constraints.txt -e ".[dev,peers,lora]"
  touch .setup-stamp
fi
# DeepSpeed's CPU accelerator JIT-builds its shared-memory comm op on the first `got train` (about 30 s). Build it here,
# once and serially: parallel first runs (the test suite's two workers) otherwise queue on one file lock, and a run
# killed mid-build leaves that lock held, so every later run waits on it forever. A lock older than 10 min is stale.
# TORCH_EXTENSIONS_DIR stays as the user has it: torch builds under its default root in a py3XX_cpu folder, and a
# prebuild anywhere else would not be the build that later runs load.
EXT_ROOT=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}
mkdir -p "$EXT_ROOT"
find "$EXT_ROOT" -maxdepth 3 -name lock -mmin +10 -print -delete | sed 's/^/[setup] removed a stale build lock: /'
DS_ACCELERATOR=cpu $PY -c "
from deepspeed.accelerator import get_accelerator
b = get_accelerator().create_op_builder('ShareMemCommBuilder')
b is None or b.load(verbose=False)" >/dev/null 2>&1 || echo "[setup] DeepSpeed's CPU comm op did not build: the first got train builds it" >&2

# The project's own CPU decode kernels (got/csrc) build the same way on first use (about 25 s): here, once.
$PY -c "from got.kernels import cpu_kernels; cpu_kernels()" >/dev/null 2>&1 || echo "[setup] got's CPU kernels did not build: decoding uses torch ops" >&2

echo "[setup] ok: $($PY -c 'import torch, transformers, deepspeed; print("torch", torch.__version__, "transformers", transformers.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null | tail -1)"
