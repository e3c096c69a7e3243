#!/usr/bin/env bash
# LexPro-1.0 (Chen et al., 2025, "LexPro-1.0 Technical Report", arXiv 2503.06949), reproduced with LexLab's scripts:
# SFT of DeepSeek-R1-Distill-Qwen-14B on criminal judgment records, then GRPO with rule rewards (charges, cited
# articles, sentence, format), then judgment prediction with and without statute retrieval (RAG).
#
#   MODEL=/path/to/DeepSeek-R1-Distill-Qwen-14B NGPU=8 bash recipes/lexpro.sh   # the real run (GPUs, weights on disk)
#   DRY_RUN=1 bash recipes/lexpro.sh                                             # print the commands only
#
# From the report: base DeepSeek-R1-Distill (14B here; 32B / Llama-70B variants exist), SFT on selected judgment
# records, large-scale RL with GRPO "without additional supervision", retrieval of statutes at inference.
# NOT verified (we could not read the report's hyper-parameter tables): learning rates, epochs, group size, KL
# coefficient, sequence lengths. The values below are LexLab's choices, marked "ours"; override by env.
# Data: the report's millions of judgments are not public; CAIL2018 (../shared/data/cail2018) stands in.
# Needs: GPUs (14B full fine-tuning + colocated vLLM rollouts: one 8x80GB node) and the base weights on disk.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-}
NGPU=${NGPU:-8}
RUN=${RUN:-runs/lexpro}
SHARED=${SHARED:-../shared}
LEXPRO_MANIFEST=${LEXPRO_MANIFEST:-recipes/lexpro_data.json}   # CAIL2018 judgments only (test held out)
SEQ_LEN=${SEQ_LEN:-8192}        # ours: CAIL2018 facts + an R1-style answer fit in 8k
SFT_LR=${SFT_LR:-1e-5}          # ours
RL_LR=${RL_LR:-1e-6}            # ours
GROUP_SIZE=${GROUP_SIZE:-8}     # ours
RL_STEPS=${RL_STEPS:-500}       # ours
TEST=${TEST:-$SHARED/data/cail2018/test.jsonl}
STATUTES=${STATUTES:-$SHARED/data/laws/articles.jsonl}

run() { echo "+ $*"; if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi; }
if [ -z "$MODEL" ]; then
  if [ "${DRY_RUN:-0}" = 1 ]; then MODEL='$MODEL'; else
    echo "set MODEL=/path/to/DeepSeek-R1-Distill-Qwen-14B (a local Hugging Face folder; nothing is downloaded)" >&2
    exit 2; fi
fi

echo "== 1. data: judgment records -> SFT samples (facts -> charges / articles / term) + RL prompt file"
# a rerun (e.g. after a crash: the training steps below use --resume auto) keeps a complete build
if [ -f "$RUN/data/data_report.json" ] && [ "${DRY_RUN:-0}" != 1 ]; then
  echo "kept $RUN/data (already built; add --overwrite to prepare_data.py to rebuild it)"
else
  run python prepare_data.py --manifest "$LEXPRO_MANIFEST" --model "$MODEL" --seq_len "$SEQ_LEN" --general_ratio 0 \
      --lawbench_dir "$SHARED/lawbench" --out "$RUN/data"
fi

echo "== 2. SFT on judgment records"
run torchrun --nproc_per_node "$NGPU" sft.py --model "$MODEL" --data "$RUN/data/stage1" --out "$RUN/sft" \
    --lr "$SFT_LR" --resume auto

echo "== 3. GRPO with the legal rewards (charge / article / term / format), vLLM rollouts"
run torchrun --nproc_per_node "$NGPU" rl.py --model "$RUN/sft/final" --prompts "$RUN/data/rl_prompts.jsonl" \
    --out "$RUN/rl" --group_size "$GROUP_SIZE" --max_steps "$RL_STEPS" --lr "$RL_LR" --backend vllm \
    --resume auto

echo "== 4. judgment prediction on CAIL2018 test, without and with statute retrieval (BM25 top-k articles)"
# both runs of a model share one folder, so evaluate.py also writes rag_effect.json (with - without, per metric)
for M in sft rl; do
  run python evaluate.py judgment --model "$RUN/$M/final" --data "$TEST" --backend vllm --max_new_tokens 4096 \
      --out "$RUN/eval/judgment_$M"
  run python evaluate.py judgment --model "$RUN/$M/final" --data "$TEST" --backend vllm --max_new_tokens 4096 \
      --rag "$STATUTES" --rag_k 3 --out "$RUN/eval/judgment_$M"
done

echo "== 5. figures"
run python plots/plots.py --run "$RUN"
