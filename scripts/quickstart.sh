#!/usr/bin/env bash
# Set up, train the four normalization variants on Fashion-MNIST (offline, a few minutes on
# 2 CPU cores: ResNet18 at width 16 on a subset), then print the results table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
OUT=${OUT:-outputs/quickstart}

"$PYTHON" -m bnstudy.run -m dataset=fashion_mnist model=resnet18 model.width=16 \
  norm=batchnorm,affine,bnminus,none batch_size=128 trainer.epochs=3 \
  data.train_subset=8192 data.test_subset=2000 device=auto paths.output_root="$OUT"
"$PYTHON" -m bnstudy.results "$OUT" --plot
