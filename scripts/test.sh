#!/usr/bin/env bash
# Set up, then run the linter and the whole test suite (CPU only, several minutes), then the
# end-to-end tests again on the AVX2 kernels (oneDNN and ATen capped at AVX2), so a machine
# with AVX-512 also checks what an AVX2-only CPU runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
"$PYTHON" -m pytest -q "$@"
echo "end-to-end tests again on the AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2):"
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 "$PYTHON" -m pytest -q -m slow "$@"
