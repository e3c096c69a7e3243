#!/usr/bin/env bash
# InternLM-Law Table 1, GPT-4 rows, from LawBench's published predictions, scored by `evaluate.py score` (CPU only).
#   bash recipes/lawbench_table.sh ../shared/lawbench
# Expected (paper): zero-shot 35.29 / 54.41 / 54.05 / 52.35, one-shot 36.01 / 56.48 / 55.01 / 53.85
# (one-shot Memorization computes to 36.00: the paper rounds 36.005 up; see ../shared/lawbench/SCORING.md).
# 2-9 and 2-10 have no published predictions: their scores come from the official results.csv (--fill_from).
set -euo pipefail
LAWBENCH=${1:-../shared/lawbench}
if [ ! -d "$LAWBENCH/predictions/zero_shot" ] || [ ! -d "$LAWBENCH/predictions/one_shot" ]; then
  echo "lawbench_table.sh: error: $LAWBENCH: not a LawBench copy (needs predictions/zero_shot and predictions/one_shot:" \
       "../shared/lawbench beside the repository, or a clone of open-compass/LawBench as the first argument)" >&2
  exit 2
fi
LAWBENCH=$(realpath "$LAWBENCH")
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/lawbench_table}
for SHOT in zero_shot one_shot; do
  echo "== GPT-4, $SHOT"
  python evaluate.py score "$LAWBENCH/predictions/$SHOT" --models GPT4 --lawbench_dir "$LAWBENCH" \
    --fill_from "$LAWBENCH/predictions/$SHOT/results.csv" --out "$OUT/$SHOT/scores.csv"
done
