#!/usr/bin/env bash
# Set up, then run the linter and the whole test suite (CPU only, several minutes), then the
# end-to-end tests that depend on the CPU's kernels (marker `kernels`: training, compile,
# resume, evaluate, the small-width regression) again on the AVX2 kernels (oneDNN and ATen
# capped at AVX2), so a machine with AVX-512 also checks what an AVX2-only CPU runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
"$PYTHON" -m pytest -q "$@"
echo "kernel-dependent tests again on the AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2):"
# A cache of its own for torch.compile: inductor's cache key does not include
# ATEN_CPU_CAPABILITY, and kernels built for AVX-512 above give NaNs when reused under avx2.
inductor_cache=$(mktemp -d)
trap 'rm -rf "$inductor_cache"' EXIT
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 TORCHINDUCTOR_CACHE_DIR="$inductor_cache" \
  "$PYTHON" -m pytest -q -m kernels "$@"
