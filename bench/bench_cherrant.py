"""Time cherrant.score_2_1 on the published 2-1 prediction files against the official scorer's reference time.

The official LawBench scorer (parallel_to_m2.py x2 + compare_m2_for_evaluation.py in subprocesses, 10 s per
sentence) takes about 214 s per model file on 2 CPU cores (measured, see ../shared/lawbench/SCORING.md); it cannot
run here (no copy of its code in the repo), so that measured figure is the peer.

    python bench/bench_cherrant.py [--workers 2] [--lawbench_dir ../shared/lawbench]
"""
import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cherrant  # noqa: E402
import utils  # noqa: E402

OFFICIAL_SECONDS = 214.0
FILES = [(s, m) for s in ("zero_shot", "one_shot") for m in ("GPT4", "qwen-7b-chat-hf", "chatglm2-6b-hf")]


def published(lawbench: Path, setting: str, model: str) -> float:
    with open(lawbench / "predictions" / setting / "results.csv") as f:
        return next(float(r["score"]) for r in csv.DictReader(f) if r["task"] == "2-1" and r["model_name"] == model)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lawbench_dir", default=str(utils.SHARED / "lawbench"))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    lawbench = Path(args.lawbench_dir)
    data_dir = lawbench / "evaluation" / "utils" / "data"
    print(f"{'file':34s} {'ours':>7s} {'published':>9s} {'seconds':>8s} {'official s':>10s} {'speed-up':>8s}")
    for setting, model in FILES:
        data = json.loads((lawbench / "predictions" / setting / model / "2-1.json").read_text(encoding="utf-8"))
        items = [data[str(i)] for i in range(len(data))]
        t0 = time.perf_counter()
        out = cherrant.score_2_1(items, workers=args.workers, data_dir=data_dir)
        dt = time.perf_counter() - t0
        print(f"{setting + '/' + model:34s} {out['score']:7.4f} {published(lawbench, setting, model):9.4f} "
              f"{dt:8.1f} {OFFICIAL_SECONDS:10.0f} {OFFICIAL_SECONDS / dt:7.1f}x", flush=True)


if __name__ == "__main__":
    main()
