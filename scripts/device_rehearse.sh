#!/usr/bin/env bash
# Rehearse scripts/device_check.sh on a CPU machine as the GPU machine runs it: in a plain venv
# that holds torch and the GPU image's other packages but not Hydra, OmegaConf or submitit, nor
# bnstudy itself (the check installs the carried .whl/ into a fresh folder and runs bnstudy from
# the working tree). Every step but the CUDA ones works; those say "no CUDA device: not measured".
#
#   bash scripts/device_rehearse.sh [REPORT_DIR]    # default outputs/device_rehearsal
#
# The venv is kept for the next rehearsal (REHEARSAL_VENV, default /tmp/bnstudy-rehearsal-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${REHEARSAL_VENV:-/tmp/bnstudy-rehearsal-venv}
# What the GPU image has (docs/gpu.md), torch and torchvision at the releases tested here.
IMAGE_PACKAGES=(torch==2.14.1 torchvision==0.29.1 numpy pandas scipy matplotlib tensorboard
                filelock tabulate jinja2 pytest tqdm joblib cloudpickle pyyaml typing-extensions
                packaging)
MISSING_THERE=(hydra omegaconf submitit bnstudy)

die() { echo "device_rehearse: error: $*" >&2; exit 1; }

[ -d .whl ] && [ -d .device ] || bash scripts/device_prep.sh
if [ ! -x "$VENV/bin/python3" ]; then
  python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/python3" -m pip install -q "${IMAGE_PACKAGES[@]}"
fi
# A stand-in only while it lacks what the GPU image lacks (looked for outside the checkout).
for module in "${MISSING_THERE[@]}"; do
  if (cd / && env -u PYTHONPATH "$VENV/bin/python3" -c "import $module" 2>/dev/null); then
    die "$VENV can import $module, which the GPU image cannot; remove it or the venv"
  fi
done
echo "device_rehearse: $VENV: torch $("$VENV/bin/python3" -c 'import torch; print(torch.__version__)')," \
     "without ${MISSING_THERE[*]}"
started=$SECONDS
env -u PYTHONPATH -u VIRTUAL_ENV PATH="$VENV/bin:$PATH" \
  bash scripts/device_check.sh "${1:-outputs/device_rehearsal}"
echo "device_rehearse: the check took $((SECONDS - started)) s"
