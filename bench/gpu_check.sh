#!/usr/bin/env bash
# The one command for a fresh GPU machine (docs/PERFORMANCE.md, "On a GPU"): bench/gpu_check.py
# checks the versions, installs what is missing from carried wheels, then trains the GPU teacher
# and student recipes, measures the 224-px steps and runs the cuda tests, inside one 590-s call.
#
#   bash bench/gpu_check.sh --wheels WHEELS --archive cifar10-jpeg.tar.xz --out "$OUT"
#   bash bench/gpu_check.sh --dry-run --out /tmp/check   # the same stages on the CPU at tiny settings (CI)
#   bash bench/gpu_check.sh --fetch-wheels WHEELS [3.12] # where PyPI is reachable: the wheels to carry
#
# The target machine has Python 3.12, torch + CUDA, timm, Pillow, PyYAML, einops, matplotlib, tqdm
# and pytest, and lacks omegaconf and submitit: only those (pure-Python wheels, well under 64 MiB
# with the CIFAR archive) are carried. pytest and its plugins are the machine's own.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = "--fetch-wheels" ]; then
  dir=${2:?--fetch-wheels needs a folder} version=${3:-3.12}
  mkdir -p "$dir"
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$version" -d "$dir" omegaconf submitit cloudpickle
  # omegaconf 2.3's parser runtime: PyPI has only its source, built here into a pure-Python wheel
  "$PYTHON" -m pip wheel --no-deps -w "$dir" "antlr4-python3-runtime==4.9.3"
  ls -l "$dir"
  echo "carry $dir, then: bash bench/gpu_check.sh --wheels $dir --archive cifar10-jpeg.tar.xz --out \$OUT"
  exit 0
fi
case "${1:-}" in -h|--help) sed -n '2,13p' "$0" ;; esac
exec "$PYTHON" bench/gpu_check.py "$@"
