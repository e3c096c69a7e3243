"""How many of our functions and files does one sample cross? (issue 24: "follow one packed sample from raw JSONL to a
gradient and one GRPO step from prompt to weight push").

Runs, in this process and on the tiny offline model, (1) prepare_data.py on one raw JSONL source (the sample
judgments), (2) sft.py for one optimizer step on the packed stage it wrote, (3) rl.py for one GRPO step (--backend)
on the prompts it wrote, each under sys.setprofile, and prints for each the distinct functions of this repository
(tests/ and bench/ excluded) that ran, grouped by file. A reader following the code by hand crosses the same set.

    python bench/trace_path.py              # three tables and a one-line summary per run
    python bench/trace_path.py --list       # also every function, file:line order
    python bench/trace_path.py --backend vllm   # the GRPO step with vLLM rollouts and the weight push
"""
import argparse
import json
import sys
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import prepare_data  # noqa: E402
import rl  # noqa: E402
import sft  # noqa: E402
import utils  # noqa: E402

SKIP = (REPO / "tests", REPO / "bench")


def ours(filename: str) -> Path | None:
    p = Path(filename)
    if not p.is_absolute() or p.suffix != ".py" or REPO not in p.parents:
        return None
    return None if any(s in p.parents for s in SKIP) else p


def traced(fn, *args):
    """Run fn(*args) and return {file: {(line, qualname)}} of the repository functions it called."""
    seen = defaultdict(set)

    def prof(frame, event, arg):
        if event == "call":
            p = ours(frame.f_code.co_filename)
            if p is not None and "<" not in frame.f_code.co_qualname:  # comprehensions and lambdas are not read
                seen[p.relative_to(REPO).as_posix()].add((frame.f_code.co_firstlineno, frame.f_code.co_qualname))

    sys.setprofile(prof)
    threading.setprofile(prof)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return seen


def report(name: str, seen: dict, show: bool) -> dict:
    n = sum(len(v) for v in seen.values())
    print(f"\n== {name}: {n} functions in {len(seen)} files")
    for f in sorted(seen, key=lambda f: -len(seen[f])):
        print(f"  {f:20s} {len(seen[f]):4d}")
        if show:
            for line, q in sorted(seen[f]):
                print(f"      {line:5d} {q}")
    return {"functions": n, "files": len(seen), "per_file": {f: len(v) for f, v in seen.items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print every function crossed")
    ap.add_argument("--backend", default="hf", choices=("hf", "vllm"),
                    help="rl.py's rollout backend (vllm: the colocated engine and its weight push; slow on CPU)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lexlab_trace_"))
    model = tmp / "model"
    utils.build_tiny_model(model)
    manifest = tmp / "manifest.json"
    manifest.write_text(json.dumps([{"name": "judgments", "kind": "judgments",
                                     "path": str(REPO / "data" / "sample" / "judgments.jsonl")}]))
    data = tmp / "data"
    runs = [
        ("raw JSONL -> packed stage (prepare_data.py)", prepare_data.main,
         ["--manifest", str(manifest), "--model", str(model), "--seq_len", "1024", "--workers", "1",
          "--lawbench_dir", str(REPO / "data" / "sample" / "lawbench"), "--out", str(data)]),
        ("packed stage -> one gradient step (sft.py)", sft.main,
         ["--model", str(model), "--data", str(data / "stage1"), "--out", str(tmp / "sft"), "--max_steps", "1"]),
        ("prompt -> one GRPO step -> weights (rl.py)", rl.main,
         ["--model", str(model), "--prompts", str(data / "rl_prompts.jsonl"), "--out", str(tmp / "rl"),
          "--backend", args.backend, "--group_size", "2", "--prompts_per_step", "1", "--max_steps", "1",
          "--max_new_tokens", "8"]),
    ]
    summary = {}
    for name, fn, argv in runs:
        summary[name] = report(name, traced(fn, argv), args.list)
    print()
    for name, s in summary.items():
        print(f"{name}: {s['functions']} functions, {s['files']} files")


if __name__ == "__main__":
    main()
