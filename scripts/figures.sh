#!/usr/bin/env bash
# Regenerate every figure the README and docs/ show, from real runs, and print the numbers the
# README quotes, so a change that moves them is seen rather than left to drift.
#
#   bash scripts/figures.sh            # quickstart (~3-7 min on 2 cores) + inspect (~2 min)
#   SKIP_INSPECT=1 bash scripts/figures.sh
#
# 1. The quickstart (experiment=quickstart, as scripts/quickstart.sh runs it) into $OUT, then
#    `bnstudy.results $OUT --plot`; its final-accuracy, γ and signal figures are copied into
#    docs/figures/ under the names the docs use; its table of final test accuracies is
#    printed as the README quotes it, and the γ and signal numbers docs/diagnostics.md quotes.
# 2. Signal propagation at init for ResNet101 at width 64 (docs/diagnostics.md), with
#    `bnstudy.inspect --plot` (which prints the table the page quotes), copied to
#    docs/figures/inspect-resnet101-w64.png.
# Measured on 2 idle cores (AMD EPYC, 2026-12-04): 4 min 53 s in all (2.9 min of it training
# the quickstart); the numbers and figures came out identical on a rerun.
# Assumes the environment scripts/setup.sh made (it does not install anything).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT=${OUT:-outputs/figures/quickstart}
INSPECT_OUT=${INSPECT_OUT:-outputs/figures/inspect}
FIG=docs/figures
mkdir -p "$FIG"

"$PYTHON" -m bnstudy.run -m experiment=quickstart paths.output_root="$OUT" trainer.progress=false
"$PYTHON" -m bnstudy.results "$OUT" --plot >"$OUT/results.txt"
cat "$OUT/results.txt"

# The figure names carry a hash of the setting; there is exactly one setting in the quickstart.
copy_one() { # copy_one GLOB DEST
  local matches=()
  shopt -s nullglob
  matches=($1)
  shopt -u nullglob
  if [ "${#matches[@]}" -ne 1 ]; then
    echo "figures.sh: expected one file for $1, found ${#matches[@]}" >&2
    exit 1
  fi
  cp "${matches[0]}" "$2"
  echo "figure: $2 (from ${matches[0]})"
}
copy_one "$OUT/final_vs_batch_size-fashion_mnist-w8-*.png" "$FIG/quickstart-final-vs-batch-size.png"
copy_one "$OUT/gamma-resnet18-bs128-*.png" "$FIG/quickstart-gamma-bs128.png"
copy_one "$OUT/signal-resnet18-bs32-*.png" "$FIG/quickstart-signal-bs32.png"

echo
echo "The README's quickstart table (final test accuracy %, one seed):"
"$PYTHON" - "$OUT/runs.csv" <<'PY'
import sys

import pandas as pd

runs = pd.read_csv(sys.argv[1])
order = ["batchnorm", "affine", "bnminus", "none"]
table = runs.pivot_table(index="norm.name", columns="batch_size", values="final_test_acc")
table = table.reindex([v for v in order if v in table.index])
print("| variant | " + " | ".join(f"bs {b}" for b in table.columns) + " |")
print("|---|" + "---|" * len(table.columns))
for variant, row in table.iterrows():
    print(f"| {variant} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
wall = runs["wall_seconds"].sum()
print(f"training time: {wall / 60:.1f} min summed over {len(runs)} runs on {runs['cpu'].iloc[0]}")
PY

echo
echo "docs/diagnostics.md's numbers (layers.csv):"
"$PYTHON" - "$OUT/layers.csv" <<'PY'
import sys

import pandas as pd

layers = pd.read_csv(sys.argv[1])
norms = layers[layers["kind"] == "norm"]
stem = norms[(norms["stage"] == 0) & (norms["batch_size"] == 128)]
print("stem mean γ per epoch, batch 128:")
print(stem.pivot_table(index="norm.name", columns="epoch", values="gamma_mean").round(2))
print(f"largest share of switched-off channels (|γ| < 0.01): {norms['gamma_small'].max():.2%}")
last = layers[(layers["epoch"] == layers["epoch"].max()) & (layers["batch_size"] == 32)]
sites = last[last["kind"].isin(["stem", "block", "logits"])]
std = sites.pivot_table(index="depth", columns="norm.name", values="act_std")
print("std of each site's output at the last epoch, batch 32:")
print(std.to_string(float_format=lambda v: f"{v:.3g}"))
dead = (std == 0).sum()
print("dead outputs (std exactly 0): " + ", ".join(f"{k} {v}" for k, v in dead.items()))
PY

if [ -z "${SKIP_INSPECT:-}" ]; then
  "$PYTHON" -m bnstudy.inspect -m debug=fast model=resnet101 model.width=64 \
    norm=batchnorm,affine,bnminus,none --plot --out "$INSPECT_OUT"
  copy_one "$INSPECT_OUT/*resnet101*.png" "$FIG/inspect-resnet101-w64.png"
fi
