#!/usr/bin/env bash
# Prepare, on a machine with PyPI, what scripts/device_check.sh needs on a GPU machine with no
# network (Python 3.12 with torch, but no Hydra and no datasets: docs/gpu.md):
#   .whl/                    the wheels such an image lacks, for CPython 3.12, manylinux x86-64
#   .device/fashion-mnist/   the four Fashion-MNIST .gz files (and .device/source.txt: the commit)
# Both folders are ignored by git; they travel with the working tree when named in `carry`.
# What travels must stay under 64 MiB: the script prints the total and fails above it.
#
#   bash scripts/device_prep.sh     # FASHION_MNIST=DIR if the files are not in the Debian place
set -euo pipefail
cd "$(dirname "$0")/.."

# The versions the test environment runs (pip list of the project's venv, 2026-12-03); their
# own needs (PyYAML, packaging, joblib, cloudpickle, typing-extensions) are in the image.
WHEELS=(
  hydra-core==1.3.8
  omegaconf==2.3.1
  hydra-joblib-launcher==1.2.0
  hydra-submitit-launcher==1.2.0
  submitit==1.5.4
)
# Hydra's and OmegaConf's pin; PyPI has 4.9.3 only as an sdist, built here into a pure-Python
# wheel (no compiled code, so it runs on any CPU and Python 3).
SDISTS=(antlr4-python3-runtime==4.9.3)
FASHION_MNIST=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
FASHION_FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
               t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
WHEEL_DIR=.whl
DATA_DIR=.device/fashion-mnist
LIMIT_MIB=64
PIP=(python3 -m pip)

die() { echo "device_prep: error: $*" >&2; exit 1; }

download_wheels() {
  # A fresh folder: two versions of one package would stop the install on the GPU machine.
  rm -rf "$WHEEL_DIR"
  mkdir -p "$WHEEL_DIR"
  # The device tool's form: binary wheels for CPython 3.12 on any manylinux x86-64.
  "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$WHEEL_DIR" "${WHEELS[@]}"
  "${PIP[@]}" wheel -q --no-deps -w "$WHEEL_DIR" "${SDISTS[@]}"
  for wheel in "$WHEEL_DIR"/*.whl; do
    case "$(basename "$wheel")" in
      *-py3-none-any.whl | *-cp312-*manylinux*x86_64*.whl) ;;
      *) die "$wheel would not install on CPython 3.12 x86-64" ;;
    esac
  done
}

# A warning, not an error: the pins above are what the GPU machine will run.
warn_if_tests_run_other_versions() {
  local python=""
  if [ -n "${PYTHON:-}" ]; then python=$PYTHON
  elif [ -n "${VIRTUAL_ENV:-}" ]; then python=python
  elif [ -x .venv/bin/python ]; then python=.venv/bin/python
  fi
  [ -n "$python" ] || return 0
  "$python" - "${WHEELS[@]}" "${SDISTS[@]}" <<'EOF' || true
import sys
from importlib.metadata import PackageNotFoundError, version

for pin in sys.argv[1:]:
    name, wanted = pin.split("==")
    try:
        found = version(name)
    except PackageNotFoundError:
        continue
    if found != wanted:
        print(f"device_prep: note: the tests here run {name} {found}, the kit carries {wanted}; "
              "update WHEELS in scripts/device_prep.sh", file=sys.stderr)
EOF
}

copy_fashion_mnist() {
  mkdir -p "$DATA_DIR"
  for name in "${FASHION_FILES[@]}"; do
    [ -f "$FASHION_MNIST/$name" ] || die "no $FASHION_MNIST/$name; install Debian's" \
      "dataset-fashion-mnist or set FASHION_MNIST=DIR to a folder with the four .gz files"
    cp "$FASHION_MNIST/$name" "$DATA_DIR/"
  done
}

# The report names its source; the GPU machine gets the files, not .git.
record_source() {
  local changed
  changed=$(git status --porcelain --untracked-files=no | wc -l)
  echo "commit $(git log -1 --format='%h %cs') with $changed changed tracked files," \
       "prepared $(date -u +%Y-%m-%d)" >.device/source.txt
}

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# What the device tool sends: tracked files and untracked ones git does not ignore, and the
# carried folders.
check_size() {
  local tree carried total
  tree=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null |
         awk '{ s += $1 } END { print s + 0 }')
  carried=$(find "$WHEEL_DIR" "$DATA_DIR" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
  total=$((tree + carried))
  echo "device_prep: what travels: working tree $(mib "$tree") MiB + .whl and .device" \
       "$(mib "$carried") MiB = $(mib "$total") MiB of ${LIMIT_MIB} MiB"
  [ "$total" -le $((LIMIT_MIB * 1048576)) ] ||
    die "$(mib "$total") MiB is over the ${LIMIT_MIB} MiB that travel; remove untracked files" \
        "or large ones from the working tree"
}

download_wheels
warn_if_tests_run_other_versions
copy_fashion_mnist
record_source
echo "device_prep: $WHEEL_DIR/: $(cd "$WHEEL_DIR" && ls | tr '\n' ' ')"
echo "device_prep: $DATA_DIR/: ${FASHION_FILES[*]}"
check_size
echo "device_prep: ready. On the GPU machine (device tool: carry [\".whl\", \".device\"]):" \
     "bash scripts/device_check.sh"
