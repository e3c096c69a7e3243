"""
Time `python evaluate.py score` for one model (all its LawBench task files) against the official scorer.

    python bench/bench_score.py                      # GPT4, zero-shot, from ../shared/lawbench/predictions

The official scorer is not in this repository, so its total is the measured reference from SCORING.md / issue 4
(200-440 s per model on 2 CPU cores, 2-1 alone ~214 s). The slow non-2-1 part of it - jieba + rouge_chinese's
Rouge().get_scores on the four ROUGE tasks - IS re-run here as the peer, in the same run, on the same files.
Task 2-1 is scored only when cherrant.py is importable; otherwise this says so and leaves it out.

LexEval (--lexeval true, default): the official code/evaluation/evaluate.py from ../shared/lexeval is run as its
README says (a process in code/evaluation) and `evaluate.py score --benchmark lexeval` on the same folder (both models
of one setting), one after the other in this run; both are timed from process start to exit, the scores are checked
equal, and the ratio printed (goal >= 10x). --workers 1 gives the one-core comparison.
"""
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import evaluate as E  # noqa: E402
import utils  # noqa: E402

OFFICIAL_TOTAL_S = (200, 440)  # one model, 2 cores (SCORING.md, issue 4)
OFFICIAL_TASK_S = {"2-1": 214, "3-8": 40, "3-2": 11, "1-1": 9, "2-7": 7.5}  # others < 2 s each


@dataclasses.dataclass
class BenchConfig:
    lawbench_dir: str = dataclasses.field(default=str(utils.SHARED / "lawbench"),
                                          metadata={"help": "LawBench copy with predictions/"})
    shot: str = dataclasses.field(default="zero_shot", metadata={"help": "zero_shot or one_shot"})
    model: str = dataclasses.field(default="GPT4", metadata={"help": "model folder under predictions/<shot>/"})
    workers: int = dataclasses.field(default=2, metadata={"help": "evaluate.py score --workers"})
    peer: bool = dataclasses.field(default=True, metadata={"help": "re-run rouge_chinese on the ROUGE tasks"})
    lawbench: bool = dataclasses.field(default=True, metadata={"help": "time LawBench"})
    lexeval: bool = dataclasses.field(default=True, metadata={"help": "time LexEval: ours vs the official scorer"})
    lexeval_dir: str = dataclasses.field(default=str(utils.SHARED / "lexeval"),
                                         metadata={"help": "LexEval copy with code/ and model_output/"})
    lexeval_setting: str = dataclasses.field(default="zero_shot", metadata={"help": "zero_shot or few_shot"})


def rouge_side_by_side(path: Path, task: str) -> tuple[float, float]:
    """One ROUGE task file, one core, same process: (our seconds, peer seconds). The peer is the official ROUGE path,
    jieba + rouge_chinese Rouge().get_scores (all 3 metrics, as LawBench calls it). Asserts identical scores."""
    from rouge_chinese import Rouge
    import jieba
    items = E.read_predictions(path)
    t0 = time.perf_counter()
    ours = E.TASK_SCORERS[task](items)["score"]
    t1 = time.perf_counter()
    refs = [it["refr"].replace("答案:", "") if task == "1-1" else it["refr"] for it in items]
    hyps = [" ".join(jieba.cut(it["prediction"])) for it in items]
    hyps = [h if h.strip() != "" else "无内容" for h in hyps]
    peer = utils.plain_mean([s["rouge-l"]["f"] for s in Rouge().get_scores(hyps, [" ".join(jieba.cut(r)) for r in refs])])
    t2 = time.perf_counter()
    assert abs(peer - ours) < 1e-12, (task, ours, peer)
    return t1 - t0, t2 - t1


def lexeval_side_by_side(cfg) -> None:
    """Official LexEval scorer vs `evaluate.py score --benchmark lexeval` on <lexeval_dir>/model_output/<setting>."""
    import csv
    import resource

    def cpu():  # user + sys seconds of the finished child processes (the scorers and their workers)
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime
    pred = Path(cfg.lexeval_dir) / "model_output" / cfg.lexeval_setting
    official_dir = Path(cfg.lexeval_dir) / "code" / "evaluation"
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), cpu()
        subprocess.run([sys.executable, "evaluate.py", "--input_dir", str(pred), "--output_dir", f"{tmp}/official",
                        "--metrics_choice", "Accuracy", "--metrics_gen", "Rouge_L"], cwd=official_dir, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t_official, c_official = time.perf_counter() - t0, cpu() - c0
        t0, c0 = time.perf_counter(), cpu()
        subprocess.run([sys.executable, str(REPO / "evaluate.py"), "score", "--benchmark", "lexeval", str(pred),
                        "--out", f"{tmp}/ours/scores.csv", "--workers", str(cfg.workers)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t_ours, c_ours = time.perf_counter() - t0, cpu() - c0
        with open(f"{tmp}/official/evaluation_result.csv", encoding="utf-8") as f:
            official = {(r["model"], r["task"]): float(r["score"]) for r in csv.DictReader(f)}
        with open(f"{tmp}/ours/scores.csv", encoding="utf-8") as f:
            ours = {(r["model_name"], r["task"]): float(r["score"]) for r in csv.DictReader(f)}
        per_file = [json.loads(l) for l in Path(f"{tmp}/ours/scores_metrics.jsonl").read_text().splitlines()]
    assert ours == official, "LexEval scores differ from the official"
    zeroed = per_file[-1]["zeroed_by_rouge_recursion"]
    print(f"LexEval {cfg.lexeval_setting}, {len(ours)} files ({len({m for m, _ in ours})} models), identical scores; "
          f"items zeroed by rouge's recursion limit: {zeroed}")
    print(f"  official evaluation/evaluate.py: {t_official:.1f} s   ours (--workers {cfg.workers}): {t_ours:.1f} s   "
          f"-> {t_official / t_ours:.1f}x (process start to exit, same files, same run)")
    print(f"  CPU time (user + sys, workers included): official {c_official:.1f} s, ours {c_ours:.1f} s "
          f"-> {c_official / c_ours:.1f}x")


def main():
    cfg = utils.parse_config(BenchConfig)
    if cfg.lexeval:
        lexeval_side_by_side(cfg)
    if not cfg.lawbench:
        return
    E._init_worker()  # jieba dictionary loaded (and quiet) before any timing
    pred = Path(cfg.lawbench_dir) / "predictions" / cfg.shot
    try:
        import cherrant  # noqa: F401
        has_2_1 = True
    except ModuleNotFoundError:
        has_2_1 = False
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(REPO / "evaluate.py"), "score", str(pred), "--models", cfg.model,
               "--out", f"{tmp}/scores.csv", "--workers", str(cfg.workers)] + ([] if has_2_1 else ["--skip_tasks", "2-1"])
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total = time.perf_counter() - t0
        per_file = [json.loads(l) for l in Path(f"{tmp}/scores_metrics.jsonl").read_text().splitlines()][:-1]
        ours = {m["task"]: m["seconds"] for m in per_file}

    print(f"evaluate.py score, {cfg.model} {cfg.shot}, {len(ours)} task files, {cfg.workers} workers"
          + ("" if has_2_1 else "  [2-1 NOT included: cherrant.py is not in this checkout]"))
    print(f"{'task':>5} {'ours in run s':>14} {'official s':>11} | {'ours 1 core s':>14} {'rouge_chinese 1 core s':>23}"
          f" {'ratio':>6}")
    for task in utils.LAWBENCH_TASKS:
        if task not in ours:
            continue
        side = ""
        if cfg.peer and task in ("1-1", "2-7", "3-2", "3-8"):
            mine, peer = rouge_side_by_side(pred / cfg.model / f"{task}.json", task)
            side = f"{mine:>14.2f} {peer:>23.2f} {peer / mine:>5.1f}x"
        print(f"{task:>5} {ours[task]:>14.2f} {OFFICIAL_TASK_S.get(task, '<2')!s:>11} | {side}")
    lo, hi = OFFICIAL_TOTAL_S
    print(f"total wall (process start to exit): ours {total:.1f} s vs official {lo}-{hi} s per model "
          f"-> {lo / total:.0f}x-{hi / total:.0f}x faster" + ("" if has_2_1 else " (ours without 2-1)"))


if __name__ == "__main__":
    main()
