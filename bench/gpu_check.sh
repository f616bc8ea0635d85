#!/usr/bin/env bash
# One call that checks this codebase on a GPU machine, and measures it (docs/PERFORMANCE.md, "On a GPU").
#
# The target: a fresh Linux box with one GPU, Python and a CUDA build of torch preinstalled, no internet.
# The project's other pure-Python dependencies come as wheels in a folder (--wheels), installed into
# <out>/site; the repository itself runs from its folder (PYTHONPATH), nothing is pip-installed there.
#
#   bash bench/gpu_check.sh --wheels WHEELS --archive cifar10-jpeg.tar.xz [--out gpu_check] [--student-epochs 5] [--budget-s 450]
#   bash bench/gpu_check.sh --dry-run                # the same stages on the CPU at tiny settings (CI runs it)
#   bash bench/gpu_check.sh --fetch-wheels WHEELS    # where PyPI is reachable: the wheels to carry (Python 3.12 by default)
#
# It runs the `cuda` tests, the bf16 train step at 224 of DeiT-Ti/S/B (bench/throughput.py), the CIFAR-10
# teacher recipe and the student recipe for a fixed number of epochs, each with its own time limit
# inside the budget, and writes <out>/summary.json and <out>/summary.md. Exit 0 when every stage passed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Not preinstalled beside torch on the target (timm, pillow, pyyaml, einops, matplotlib, tqdm are).
WHEEL_PACKAGES=(omegaconf submitit cloudpickle pytest pluggy iniconfig pygments pytest-timeout)
WHEEL_SDIST_ONLY=("antlr4-python3-runtime==4.9.3")  # omegaconf's parser runtime: PyPI has no wheel of it

wheels="" out="gpu_check" fetch="" python_version="3.12" args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=${2:?--wheels needs a folder}; shift 2 ;;
    --fetch-wheels) fetch=${2:?--fetch-wheels needs a folder}; shift 2 ;;
    --python-version) python_version=${2:?}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; args+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exec "$PYTHON" bench/gpu_check.py --help ;;
    *) args+=("$1"); shift ;;
  esac
done

if [ -n "$fetch" ]; then
  mkdir -p "$fetch"
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$python_version" -d "$fetch" "${WHEEL_PACKAGES[@]}"
  "$PYTHON" -m pip wheel --no-deps -w "$fetch" "${WHEEL_SDIST_ONLY[@]}"
  echo "wheels for Python $python_version in $fetch: carry the folder, then bash bench/gpu_check.sh --wheels $fetch ..."
  exit 0
fi

mkdir -p "$out"
if [ -n "$wheels" ]; then
  compgen -G "$wheels/*.whl" >/dev/null || { echo "gpu_check: no .whl files in $wheels (make them with --fetch-wheels)" >&2; exit 2; }
  site="$(cd "$out" && pwd)/site"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

missing=$("$PYTHON" - <<'PY'
import importlib.util
names = ["torch", "torchvision", "timm", "yaml", "omegaconf", "PIL", "einops", "pytest", "matplotlib", "tqdm"]
print(" ".join(name for name in names if importlib.util.find_spec(name) is None))
PY
)
if [ -n "$missing" ]; then
  echo "gpu_check: cannot import: $missing. Carry their wheels (--fetch-wheels where PyPI is reachable) and pass --wheels DIR" >&2
  exit 2
fi
exec "$PYTHON" bench/gpu_check.py "${args[@]}"
