#!/usr/bin/env bash
# InternLM-Law (Fei et al., 2024, "InternLM-Law: An Open Source Chinese Legal Large Language Model",
# arXiv 2406.14887, COLING 2025), reproduced with LexLab's scripts.
#
#   MODEL=/path/to/internlm2-chat-7b NGPU=8 bash recipes/internlm_law.sh      # the real run (GPUs, weights on disk)
#   DRY_RUN=1 bash recipes/internlm_law.sh                                     # print the commands only (any machine)
#
# Paper settings used here (stated in the paper / its abstract and README): base InternLM2-Chat-7B, legal data packed to
# 32k tokens, two SFT stages (1: all legal data + general data; 2: the high-quality legal set), lr 1e-5, one epoch per
# stage, general ratio 0.2 (the paper compares 0 / 10 % / 20 %). Everything else (global batch, warmup, GPUs) is
# sft.py's default: we could not verify the paper's values.
# Needs: GPUs (7B at 32k: one 8x80GB node, ~38 GiB per GPU with checkpointing by the plan) and the base weights
# downloaded beforehand into $MODEL (LexLab never downloads). InternLM2 ships its own modelling code, which LexLab
# does not run (trust_remote_code stays off, and packed attention plugs into transformers' own models): convert the
# checkpoint to the Llama layout first with InternLM's tools/convert2llama.py, or use any natively supported model.
# Judge: an OpenAI-compatible endpoint (JUDGE_BASE_URL, JUDGE_MODEL, key in the env variable judge.py documents) and
# the two answer files; skipped with a message otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-}
NGPU=${NGPU:-8}
RUN=${RUN:-runs/internlm_law}
NAME=${NAME:-lexlab-internlm-law-7b}
LAWBENCH=${LAWBENCH:-../shared/lawbench}
MANIFEST=${MANIFEST:-recipes/shared_data.json}
SEQ_LEN=32768
LR=1e-5
GPU_GB=${GPU_GB:-80}     # memory of one GPU, GiB: each run checks its plan against min(this, the device's)
GENERAL_RATIO=0.2
QUESTIONS=${QUESTIONS:-../shared/data/consult_qa/disc_law_eval_subjective.jsonl}
LONGDOC=${LONGDOC:-../shared/data/long_docs/lecardv2_queries.jsonl}

run() { echo "+ $*"; if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi; }
if [ -z "$MODEL" ]; then
  if [ "${DRY_RUN:-0}" = 1 ]; then MODEL='$MODEL'; else
    echo "set MODEL=/path/to/internlm2-chat-7b (a local Hugging Face folder; nothing is downloaded)" >&2; exit 2; fi
fi

echo "== 1. data: legal sources -> instructions -> filter / dedup / decontaminate vs LawBench -> two packed 32k stages"
# a rerun (e.g. after a crash: the training steps below use --resume auto) keeps a complete build
if [ -f "$RUN/data/data_report.json" ] && [ "${DRY_RUN:-0}" != 1 ]; then
  echo "kept $RUN/data (already built; add --overwrite to prepare_data.py to rebuild it)"
else
  run python prepare_data.py --manifest "$MANIFEST" --lawbench_dir "$LAWBENCH" --model "$MODEL" \
      --seq_len $SEQ_LEN --general_ratio $GENERAL_RATIO --out "$RUN/data"
fi

echo "== 2. SFT stage 1 (legal + 20 % general), one epoch, lr $LR"
run torchrun --nproc_per_node "$NGPU" sft.py --model "$MODEL" --data "$RUN/data/stage1" --out "$RUN/sft1" \
    --lr $LR --activation_checkpointing true --gpu_memory_gb "$GPU_GB" --resume auto

echo "== 3. SFT stage 2 (high-quality legal set) from stage 1's export, one epoch, lr $LR"
run torchrun --nproc_per_node "$NGPU" sft.py --model "$MODEL" --init_from "$RUN/sft1/final" \
    --data "$RUN/data/stage2" --out "$RUN/sft2" --lr $LR --activation_checkpointing true --gpu_memory_gb "$GPU_GB" \
    --resume auto

echo "== 4. LawBench zero- and one-shot (greedy, 1024 new tokens), scored like the official scorer (Table 1)"
run python evaluate.py generate --model "$RUN/sft2/final" --model_name "$NAME" --lawbench_dir "$LAWBENCH" \
    --shots both --backend vllm --max_new_tokens 1024 --out "$RUN/eval/predictions"
for SHOT in zero_shot one_shot; do
  run python evaluate.py score "$RUN/eval/predictions/$SHOT" --lawbench_dir "$LAWBENCH" \
      --out "$RUN/eval/$SHOT/scores.csv"
done

echo "== 5. long documents: character-level F1"
run python evaluate.py longdoc --model "$RUN/sft2/final" --data data/longdoc_sample.jsonl --backend vllm \
    --out "$RUN/eval/longdoc"
# LeCaRDv2's long queries carry no questions: length and truncation statistics at the model's context only
run python evaluate.py longdoc --model "$RUN/sft2/final" --data "$LONGDOC" --doc_field query \
    --out "$RUN/eval/longdoc_lecardv2"

echo "== 6. pairwise judge with position swap (win rate by category)"
if [ -n "${JUDGE_BASE_URL:-}" ] && [ -n "${ANSWERS_A:-}" ] && [ -n "${ANSWERS_B:-}" ] || [ "${DRY_RUN:-0}" = 1 ]; then
  run python judge.py --questions "$QUESTIONS" --answers_a "${ANSWERS_A:-\$ANSWERS_A}" \
      --answers_b "${ANSWERS_B:-\$ANSWERS_B}" --llm_url "${JUDGE_BASE_URL:-\$JUDGE_BASE_URL}" \
      --llm_model "${JUDGE_MODEL:-gpt-4}" --out "$RUN/judge"
else
  echo "skipped: set JUDGE_BASE_URL, JUDGE_MODEL, ANSWERS_A (this model's answers) and ANSWERS_B (the baseline's," \
       "GPT-4 in the paper) as id/answer JSONL files; see python judge.py --help"
fi

echo "== 7. figures"
run python plots/plots.py --run "$RUN"
