#!/usr/bin/env bash
# The whole LexLab pipeline on the built-in tiny default: CPU only, nothing downloaded. About 3-4 minutes on an idle
# 2-core machine; it grows with load (the tests run it beside other jobs: 4-20 minutes).
#
#   bash recipes/demo.sh                 # writes runs/demo/ (RUN=... to choose another folder)
#
# tiny model -> prepare_data (built-in sample) -> SFT stage 1 -> SFT stage 2 -> GRPO -> evaluate (LawBench sample
# items, judgment prediction with and without statute retrieval, long documents) -> judge (only with an endpoint)
# and expert agreement (a sample votes file) -> plots. The hyper-parameters are the tiny model's (lr 1e-3..3e-3,
# several epochs), not the papers': see recipes/internlm_law.sh and recipes/lexpro.sh for those. A rerun replaces
# the previous demo (--overwrite below); the scripts refuse to write into a folder holding another run without it.
# It ends with the headline numbers and what to expect from a tiny random-init model (recipes/demo_summary.py).
set -euo pipefail
command -v python >/dev/null || python() { python3 "$@"; }   # machines with only python3
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/demo}
mkdir -p "$RUN"
START=$SECONDS
step() { echo; echo "== [$((SECONDS - START)) s] $*"; }

step "1/8 tiny model (byte-level BPE trained on data/sample + random-init Qwen2) -> $RUN/model"
python utils.py tiny-model --out "$RUN/model" --overwrite

step "2/8 prepare_data: built-in sample -> instructions, filtered, decontaminated, packed -> $RUN/data"
python prepare_data.py --manifest data/sample/manifest.json --lawbench_dir data/sample/lawbench \
    --model "$RUN/model" --seq_len 1024 --workers 1 --out "$RUN/data" --overwrite

step "3/8 SFT stage 1 (legal + general mix) -> $RUN/sft_stage1"
python sft.py --model "$RUN/model" --data "$RUN/data/stage1" --out "$RUN/sft_stage1" \
    --lr 3e-3 --num_epochs 8 --warmup_ratio 0.05 --overwrite

step "4/8 SFT stage 2 (high-quality set), from stage 1's export -> $RUN/sft_stage2"
python sft.py --model "$RUN/model" --init_from "$RUN/sft_stage1/final" --data "$RUN/data/stage2" \
    --out "$RUN/sft_stage2" --lr 1e-3 --num_epochs 8 --warmup_ratio 0.05 --overwrite

step "5/8 GRPO with the legal rewards (charge / article / term / format) -> $RUN/rl"
python rl.py --model "$RUN/sft_stage2/final" --prompts "$RUN/data/rl_prompts.jsonl" --out "$RUN/rl" \
    --backend hf --group_size 8 --prompts_per_step 8 --max_steps 80 --lr 5e-4 --max_new_tokens 64 --overwrite

step "6/8 evaluate: LawBench sample items (generate + score; 3-7 also in code mode), judgment prediction (+/- retrieval), long documents"
# --code: on 3-7 the model also writes a Python program (run in the sandbox, evaluate.run_python); the table printed
# gives accuracy without and with code side by side, plus how many programs ran / raised / timed out / were blocked
python evaluate.py generate --model "$RUN/rl/final" --lawbench_dir data/sample/lawbench --out "$RUN/eval/lawbench" \
    --tasks 1-1,2-8,3-1,3-3,3-7,3-8 --model_name lexlab-demo --max_new_tokens 128 --code --code_wall_s 5 --overwrite
python evaluate.py score "$RUN/eval/lawbench/zero_shot" --out "$RUN/eval/lawbench/scores.csv"
python evaluate.py judgment --model "$RUN/rl/final" --data data/judgments_test.jsonl --out "$RUN/eval/judgment" \
    --max_new_tokens 64 --overwrite
python evaluate.py judgment --model "$RUN/rl/final" --data data/judgments_test.jsonl --out "$RUN/eval/judgment" \
    --max_new_tokens 64 --rag data/sample/statutes.jsonl --rag_k 2
python evaluate.py longdoc --model "$RUN/rl/final" --data data/longdoc_sample.jsonl --out "$RUN/eval/longdoc" \
    --max_new_tokens 32 --overwrite

step "7/8 judge (LLM, only with an endpoint) and expert agreement -> $RUN/agreement"
if [ -n "${LEXLAB_JUDGE_URL:-}" ] && [ -n "${LEXLAB_JUDGE_MODEL:-}" ]; then
  # the sample consultations carry no ids (judge.py needs one per question): number them
  python -c 'import json, sys
for i, line in enumerate(open(sys.argv[1], encoding="utf-8"), 1):
    print(json.dumps({"id": str(i), **json.loads(line)}, ensure_ascii=False))' data/sample/consult_qa.jsonl \
      > "$RUN/judge_questions.jsonl"
  python judge.py --questions "$RUN/judge_questions.jsonl" --model_a "$RUN/rl/final" --answers_b reference \
      --llm_url "$LEXLAB_JUDGE_URL" --llm_model "$LEXLAB_JUDGE_MODEL" --out "$RUN/judge"
else
  echo "skipped: no judge endpoint. To compare the demo model with the reference answers, point it at any"
  echo "OpenAI-compatible server (key in OPENAI_API_KEY, never logged), e.g. a local 'vllm serve MODEL':"
  echo "  LEXLAB_JUDGE_URL=http://127.0.0.1:8000/v1 LEXLAB_JUDGE_MODEL=MODEL bash recipes/demo.sh"
fi
# expert evaluation: agreement between experts on a small votes file of ours (3 experts, 10 items), in the schema
# `judge.py human` (the experts' page, interactive: not run here) writes
python judge.py agreement --votes data/expert_votes_sample.jsonl --out "$RUN/agreement" --overwrite

step "8/8 plots -> $RUN/plots"
python plots/plots.py --run "$RUN"

step "done. Browse $RUN: data/data_report.json, sft_stage*/metrics.jsonl, rl/metrics.jsonl + samples.jsonl,"
echo "eval/lawbench/scores_table.md, eval/lawbench/code_mode.json (3-7 direct vs code, execution counts; programs in"
echo "eval/lawbench/zero_shot/lexlab-demo-code/3-7.json), eval/judgment/rag_effect.json, eval/longdoc/, plots/*.png"
echo
python recipes/demo_summary.py "$RUN"
