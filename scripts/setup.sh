#!/usr/bin/env bash
# Install bnstudy and what it needs on a fresh machine: the offline dataset (Debian's
# dataset-fashion-mnist, when apt is here and we are root) and the Python packages, into the
# active virtual environment or else into .venv in the checkout (scripts/env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST is not in /usr/share/datasets/fashion-mnist; install Debian's" \
         "dataset-fashion-mnist, or run with dataset.download=true dataset.root=DIR" >&2
  fi
fi

# These releases are the ones pip finds locally on the project's machines; any torch>=2.2 works.
"$PYTHON" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$PYTHON" -m pip install -q -e ".[test]"
echo "bnstudy is installed for $PYTHON"
