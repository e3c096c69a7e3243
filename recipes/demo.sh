#!/usr/bin/env bash
# The LexLab demo on the built-in tiny default: everything on CPU, nothing downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/demo}
mkdir -p "$RUN"
echo "== tiny model"
python utils.py tiny-model --out "$RUN/model"
echo "== prepare_data on the built-in sample (decontaminated against the sample LawBench items)"
python prepare_data.py --manifest data/sample/manifest.json --lawbench_dir data/sample/lawbench \
    --model "$RUN/model" --seq_len 4096 --workers 1 --out "$RUN/data"
