#!/usr/bin/env bash
# LexPro-1.0 (Chen et al., 2025, "LexPro-1.0 Technical Report", arXiv 2503.06949), reproduced with LexLab's scripts:
# SFT of DeepSeek-R1-Distill-Qwen-14B on criminal judgment records, then GRPO with rule rewards (charges, cited
# articles, sentence, format), then judgment prediction with and without statute retrieval (RAG).
#
#   MODEL=/path/to/DeepSeek-R1-Distill-Qwen-14B NGPU=8 bash recipes/lexpro.sh   # the real run (GPUs, weights on disk)
#   MODEL_32B=/path/to/DeepSeek-R1-Distill-Qwen-32B MODEL_70B=/path/to/DeepSeek-R1-Distill-Llama-70B ...  # + 32B / 70B SFT
#   DRY_RUN=1 bash recipes/lexpro.sh                                             # print the commands only
#
# From the report: base DeepSeek-R1-Distill (14B here; 32B / Llama-70B variants exist), SFT on selected judgment
# records, large-scale RL with GRPO "without additional supervision", retrieval of statutes at inference.
# NOT verified (we could not read the report's hyper-parameter tables): learning rates, epochs, group size, KL
# coefficient, sequence lengths. The values below are LexLab's choices, marked "ours"; override by env.
# Data: the report's millions of judgments are not public; CAIL2018 (../shared/data/cail2018) stands in.
# Needs: one node of 8 x 80 GB (H100; GPU_GB=141 for H200) and the base weights on disk. Every training command below
# fits it by its own memory plan (tests/test_memory_fit.py runs each with --dry_run against ../shared/model_shapes;
# a real run re-plans on its device before loading and stops, exit 2, if it would not fit):
#   14B SFT at 8k: activation checkpointing (auto) ~45 GiB/GPU; 14B GRPO with colocated vLLM: engine share, token
#   cap and checkpointing from the plan (~72 GiB); 32B and 70B SFT: --cpu_offload true (params, grads and AdamW in
#   host RAM: ~0.6 TiB / ~1.2 TiB per node, the plan prints it; the optimizer step runs on the CPU, so slowly).
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
GPU_GB=${GPU_GB:-80}            # memory of one GPU, GiB: each run checks its plan against min(this, the device's)
MODEL_32B=${MODEL_32B:-}        # optional: DeepSeek-R1-Distill-Qwen-32B (SFT with CPU offload)
MODEL_70B=${MODEL_70B:-}        # optional: DeepSeek-R1-Distill-Llama-70B (SFT with CPU offload; its own tokenizer)
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
    --lr "$SFT_LR" --gpu_memory_gb "$GPU_GB" --resume auto

echo "== 3. GRPO with the legal rewards (charge / article / term / format), vLLM rollouts"
run torchrun --nproc_per_node "$NGPU" rl.py --model "$RUN/sft/final" --prompts "$RUN/data/rl_prompts.jsonl" \
    --out "$RUN/rl" --group_size "$GROUP_SIZE" --max_steps "$RL_STEPS" --lr "$RL_LR" --backend vllm \
    --gpu_memory_gb "$GPU_GB" --resume auto

echo "== 4. judgment prediction on CAIL2018 test, without and with statute retrieval (BM25 top-k articles)"
# both runs of a model share one folder, so evaluate.py also writes rag_effect.json (with - without, per metric)
for M in sft rl; do
  run python evaluate.py judgment --model "$RUN/$M/final" --data "$TEST" --backend vllm --max_new_tokens 4096 \
      --out "$RUN/eval/judgment_$M"
  run python evaluate.py judgment --model "$RUN/$M/final" --data "$TEST" --backend vllm --max_new_tokens 4096 \
      --rag "$STATUTES" --rag_k 3 --out "$RUN/eval/judgment_$M"
done

echo "== 5. the 32B and 70B variants: SFT on the same judgments (set MODEL_32B / MODEL_70B), CPU offload"
# 32B: params + grads + AdamW are 61 GiB per GPU on 8 GPUs, too much beside 8k activations; 70B: 131 GiB. Offloaded,
# they live in (pinned) host RAM and the optimizer step runs on the CPU. Each model gets its own data build (the
# Llama-70B tokenizer differs from the Qwen ones).
for V in 32b 70b; do
  VM=$MODEL_32B; [ "$V" = 70b ] && VM=$MODEL_70B
  if [ -z "$VM" ] && [ "${DRY_RUN:-0}" != 1 ]; then echo "skipped $V: set MODEL_${V^^}"; continue; fi
  VM=${VM:-\$MODEL_${V^^}}
  if [ ! -f "$RUN/data_$V/data_report.json" ] || [ "${DRY_RUN:-0}" = 1 ]; then
    run python prepare_data.py --manifest "$LEXPRO_MANIFEST" --model "$VM" --seq_len "$SEQ_LEN" --general_ratio 0 \
        --lawbench_dir "$SHARED/lawbench" --out "$RUN/data_$V"
  fi
  run torchrun --nproc_per_node "$NGPU" sft.py --model "$VM" --data "$RUN/data_$V/stage1" --out "$RUN/sft_$V" \
      --lr "$SFT_LR" --cpu_offload true --loss_chunk 1024 --gpu_memory_gb "$GPU_GB" --resume auto
done

echo "== 6. figures"
run python plots/plots.py --run "$RUN"
