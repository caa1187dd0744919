#!/usr/bin/env bash
# Set up, then run the linter and the whole test suite (CPU only). Every test computes with
# bnstudy's portable CPU kernels (AVX2, two threads: bnstudy/training/kernels.py), so an AVX-512 machine
# checks what an AVX2-only one runs; tests/test_portability.py checks that the machine's own
# kernels and a capped run give the same bytes.
#
# As root it also brings up a real single-node SLURM cluster (scripts/slurm_local.sh) for the
# tests marked `slurm`, which must then pass (BNSTUDY_REQUIRE_SLURM), and stops it at the end.
# Without root those tests are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .

if [ "$(id -u)" = 0 ]; then
  bash scripts/slurm_local.sh up
  trap 'bash scripts/slurm_local.sh down' EXIT
  export SLURM_CONF=${BNSTUDY_SLURM_DIR:-/tmp/bnstudy-slurm}/slurm.conf BNSTUDY_REQUIRE_SLURM=1
fi
"$PYTHON" -m pytest -q "$@"
