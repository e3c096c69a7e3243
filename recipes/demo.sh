#!/usr/bin/env bash
# The LexLab demo on the built-in tiny default: everything on CPU, nothing downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/demo}
mkdir -p "$RUN"
echo "== tiny model"
python utils.py tiny-model --out "$RUN/model"
