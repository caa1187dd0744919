#!/usr/bin/env bash
# Set up, train the four normalization variants at two batch sizes on Fashion-MNIST (offline;
# ResNet18 at width 8 on 8,192 images, 3 epochs: about 3 minutes of training on 2 cores in fp32),
# then print the results tables and write the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
OUT=${OUT:-outputs/quickstart}

# conf/experiment/quickstart.yaml holds the grid and its sizes.
"$PYTHON" -m bnstudy.run -m experiment=quickstart paths.output_root="$OUT"
"$PYTHON" -m bnstudy.results "$OUT" --plot
