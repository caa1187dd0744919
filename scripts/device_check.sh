#!/usr/bin/env bash
# The GPU path in one prepared command, for a GPU machine lent for minutes with no network:
# installs the wheels that scripts/device_prep.sh carried (.whl/), then runs, each step in a
# time box and all of them within DEVICE_CHECK_BUDGET_S (450 s), bnstudy.bench on CUDA
# (ResNet18 width 64: batch 512 in bf16 with the four variants and the reference loop; batch 16
# eager, with CUDA graphs and compiled), the CUDA tests, two concurrent runs on the GPU and the
# diagnostics' cost; and writes one report (report.md, report.csv) and the logs (logs.tar.gz).
# Without CUDA every GPU step says "no CUDA device: not measured", and the bench and the two
# runs go through at tiny sizes on the CPU to check the kit itself (scripts/device_rehearse.sh).
#
#   bash scripts/device_check.sh [REPORT_DIR]    # default: $OUT if set, else outputs/device_check
#
# Needs python3 with torch; reads only the working tree, .whl/ and .device/ (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
SELF=scripts/device_check.sh
NO_CUDA=3  # a step's exit status: it needs CUDA and found none

# ------------------------------------------------------------------------------ the steps
# Each runs as `bash scripts/device_check.sh --step NAME` in its time box, its output in
# $WORK/logs/NAME.log, and may leave a line for the report in $WORK/notes/NAME.

bench() {  # bench NAME ARGS...: python -m bnstudy.bench on the CIFAR-10 input, CSV in bench/
  python3 -m bnstudy.bench dataset=cifar10 "dataset.root=$CIFAR" dataset.download=false \
    model=resnet18 data.val_size=0 trainer.progress=false "${@:2}" --out "$WORK/bench/$1.csv"
}

# On the CPU: the same command at tiny sizes, so that the bench and the report are checked.
smoke() {  # smoke NAME ARGS...
  bench "$1" model.width=8 data.train_subset=512 data.test_subset=64 device=cpu "${@:2}"
  echo "CPU smoke run of the same command at tiny sizes (width 8, 512 images): ok" \
    >"$WORK/notes/$1"
  return "$NO_CUDA"
}

gpu() { bench "$1" model.width=64 trainer.precision=bf16 device=cuda "${@:2}"; }

step_install() {
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl
    echo "installed $(cd .whl && ls | sed 's/-py3-none-any.whl//' | paste -sd ' ')" \
      | tee "$WORK/notes/install"
  else
    echo "no .whl/ (scripts/device_prep.sh makes it): using the installed packages" \
      | tee "$WORK/notes/install"
  fi
  python3 -c "import hydra, omegaconf, submitit, hydra_plugins.hydra_joblib_launcher, bnstudy.run"
}

step_env() { python3 scripts/device_report.py env "$WORK"; }

step_data() {
  local cifar fashion kind
  if [ -n "${CIFAR10_ROOT:-}" ] && python3 -c "import sys; from pathlib import Path
from bnstudy.data.datasets import load_dataset; load_dataset('cifar10', Path(sys.argv[1]), False, 1, 1)" \
      "$CIFAR10_ROOT"; then
    cifar=$CIFAR10_ROOT kind=real
  else
    cifar=$WORK/cifar kind=synthetic
    python3 scripts/synthetic_cifar.py "$cifar"
  fi
  fashion=""
  for dir in .device/fashion-mnist /usr/share/datasets/fashion-mnist; do
    if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then fashion=$(cd "$dir" && pwd); break; fi
  done
  printf 'CIFAR=%q\nCIFAR_KIND=%q\nFASHION=%q\n' "$cifar" "$kind" "$fashion" >"$WORK/data.env"
  echo "CIFAR-10: $kind ($cifar); Fashion-MNIST: ${fashion:-none}" | tee "$WORK/notes/data"
}

step_bench_bs512() {
  if [ "$CUDA" = 1 ]; then
    gpu bench_bs512 batch_size=512 --variants --steps 30 --warmup 10 --workers 8 --profile 15
  else
    # One variant: five more processes would take minutes on a small CPU.
    smoke bench_bs512 batch_size=32 trainer.precision=bf16 --steps 2 --warmup 1 --workers 0 \
      --profile 5
  fi
}

step_bench_bs16() {
  if [ "$CUDA" = 1 ]; then
    gpu bench_bs16 batch_size=16 --no-reference --steps 100 --warmup 20 --profile 15
  else
    smoke bench_bs16 batch_size=16 trainer.precision=bf16 --no-reference --steps 2 \
      --warmup 1 --profile 5
  fi
}

# CUDA graphs and torch.compile: no CPU smoke (reduce-overhead needs CUDA; compiling for the
# CPU takes minutes).
step_bench_bs16_graphs() {
  [ "$CUDA" = 1 ] || return "$NO_CUDA"
  gpu bench_bs16_graphs batch_size=16 trainer.compile=reduce-overhead --no-reference \
    --steps 100 --warmup 30 --profile 15
}

step_bench_bs16_compile() {
  [ "$CUDA" = 1 ] || return "$NO_CUDA"
  gpu bench_bs16_compile batch_size=16 trainer.compile=default --no-reference --steps 100 \
    --warmup 30
}

step_cuda_tests() {
  local args=(-q -rA -p no:cacheprovider -m cuda --junitxml="$WORK/cuda_tests.xml")
  # Each test is its own few processes on the GPU: four at a time where pytest-xdist is.
  if [ "$CUDA" = 1 ] && python3 -c "import xdist" 2>/dev/null; then args+=(-n 4); fi
  python3 -m pytest "${args[@]}" tests/test_cuda.py
  [ "$CUDA" = 1 ] || return "$NO_CUDA"
}

# Two runs at once through joblib, after one alone: with a single GPU, bnstudy/sweeps/gpus.py claims
# nothing (it spreads runs over GPUs only when there are two or more), so both train on it.
step_concurrent() {
  local data=(dataset=fashion_mnist "dataset.root=$FASHION")
  [ -n "$FASHION" ] || data=(dataset=cifar10 "dataset.root=$CIFAR" dataset.download=false)
  local run=("${data[@]}" model=resnet18 data.val_size=0 trainer.progress=false)
  if [ "$CUDA" = 1 ]; then
    run+=(device=cuda model.width=64 batch_size=128 trainer.epochs=4)
  else
    run+=(device=cpu model.width=8 batch_size=64 trainer.epochs=2 data.train_subset=1024
          data.test_subset=256)
  fi
  python3 -m bnstudy.run "${run[@]}" seed=0 "paths.output_root=$WORK/concurrent/solo"
  python3 -m bnstudy.run -m "${run[@]}" seed=1,2 hydra/launcher=joblib hydra.launcher.n_jobs=2 \
    "paths.output_root=$WORK/concurrent/pair"
  if [ "$CUDA" != 1 ]; then
    echo "the same two runs on the CPU at tiny sizes (rehearsal of the launcher)" \
      >"$WORK/notes/concurrent"
    return "$NO_CUDA"
  fi
}

if [ "${1:-}" = --step ]; then
  "step_$2"
  exit
fi

# ------------------------------------------------------------------------------ the runner

REPORT_DIR=${1:-${OUT:-outputs/device_check}}
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-450}  # 7.5 min: the report and the copies fit in the 8
MIN_STEP_S=15  # a step with less time left than this is skipped, not started
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bnstudy-device-check.XXXXXX")
SITE=$WORK/site  # the carried wheels, installed afresh
export WORK SITE PYTHONUNBUFFERED=1
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"  # bnstudy from this working tree
mkdir -p "$WORK"/{logs,notes,bench,concurrent} "$REPORT_DIR"
printf 'step\tstatus\tseconds\tbox_s\tnote\n' >"$WORK/steps.tsv"
CUDA=$(python3 -c "import torch; print(int(torch.cuda.is_available()))")
CIFAR="" FASHION=""
export CUDA CIFAR FASHION
DEADLINE=$((SECONDS + BUDGET_S))

# run_step NAME GPU_BOX_S CPU_BOX_S: the step in its time box (the second without CUDA, where
# the bench runs its CPU smoke instead), or skipped once the budget is spent.
run_step() {
  local name=$1 box=$2 left=$((DEADLINE - SECONDS)) rc=0 status note=""
  [ "$CUDA" = 1 ] || box=$3
  if [ "$left" -lt "$MIN_STEP_S" ]; then
    printf '%s\tskipped: the %s s budget was spent\t0\t%s\t\n' "$name" "$BUDGET_S" "$box" \
      >>"$WORK/steps.tsv"
    echo "device_check: $name skipped (budget spent)"
    return 0
  fi
  local limit=$((box < left ? box : left)) started=$SECONDS
  echo "device_check: $name (time box ${limit} s) ..."
  timeout --kill-after=10 "$limit" bash "$SELF" --step "$name" >"$WORK/logs/$name.log" 2>&1 \
    || rc=$?
  case $rc in
    0) status=ok ;;
    "$NO_CUDA") status="no CUDA device: not measured" ;;
    124 | 137) status="timed out after ${limit} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  [ -f "$WORK/notes/$name" ] && note=$(tr '\t\n' '  ' <"$WORK/notes/$name" | sed 's/ *$//')
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" $((SECONDS - started)) "$box" "$note" \
    >>"$WORK/steps.tsv"
  echo "device_check: $name: $status ($((SECONDS - started)) s)"
  if [ "$rc" != 0 ] && [ "$rc" != "$NO_CUDA" ]; then tail -n 5 "$WORK/logs/$name.log"; fi
}

echo "device_check: CUDA $([ "$CUDA" = 1 ] && echo available || echo "not available");" \
     "work folder $WORK; budget ${BUDGET_S} s"
# Most important first: a step that runs long takes time from the ones after it.
#        step               GPU  CPU (s)
run_step install             40   40
run_step env                 20   20
run_step data                40   40
if [ -f "$WORK/data.env" ]; then source "$WORK/data.env"; fi
export CIFAR FASHION
run_step bench_bs512        100  150
run_step bench_bs16          45  100
run_step bench_bs16_graphs  120   20
run_step cuda_tests         150   60
run_step concurrent          90  150
run_step bench_bs16_compile 100   20
echo "device_check: steps done in $SECONDS s"

python3 scripts/device_report.py report "$WORK" "$REPORT_DIR" --seconds "$SECONDS" \
  --budget "$BUDGET_S"
# The logs and what the steps wrote, without checkpoints and weights; the data is not kept.
tar -czf "$REPORT_DIR/logs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude=site --exclude=cifar .
rm -rf "$WORK"
echo "device_check: written $REPORT_DIR/report.md, report.csv, logs.tar.gz"
cat "$REPORT_DIR/report.md"
