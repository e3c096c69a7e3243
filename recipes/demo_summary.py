"""The demo's headline numbers, each with one sentence on what to expect from a tiny random-init model.

    python recipes/demo_summary.py runs/demo        # recipes/demo.sh ends with this table

Reads what the demo wrote (data/data_report.json, sft_stage*/ and rl/metrics.jsonl, eval/...) and prints one row per
stage: the number, then what it means for a ~1M-parameter model trained for a few minutes on the built-in sample. A
missing file gives a row saying so, never a made-up number.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from plots.plots import read_metrics  # noqa: E402
from utils import read_scores_csv  # noqa: E402

EXPECT = {
    "data": "counts of the built-in sample; the planted LawBench overlaps are found and removed (plots/data_mix.png).",
    "SFT": "falls: the tiny model memorises the few hundred training samples, the answer format above all; it says "
           "nothing about legal knowledge.",
    "GRPO": "rises slowly and noisily (+-0.1 per step): mostly the answer format and the frequent charges are learnt.",
    "LawBench": "about 0, and that is expected: the official scorer wants exact labels / articles in free text; a "
                "few of the 20 tasks, a few items each: not LawBench's Average.",
    "code mode": "about 0: a random-init model rarely writes a Python block (counted as no code); the row shows the "
                 "plumbing: programs run in the sandbox and counted by outcome, scored by the same 3-7 scorer.",
    "judgment": "above 0 because training used the same answer block and the same frequent charges (盗窃...) as "
                "these synthetic cases; not a measure of legal reasoning.",
    "retrieval": "often lower: the tiny model never saw retrieved articles in training, so the longer prompt is out "
                 "of its distribution (a real result, not a bug).",
    "long docs": "low: character-overlap F1 of short answers on a task the tiny model was never trained on.",
}


def _mean(xs) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _fmt(x, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def headline(run) -> list[tuple[str, str]]:
    """[(stage, number)] for the demo folder `run`; a missing input is said, not guessed."""
    run = Path(run)
    rows = []

    rep = _json(run / "data" / "data_report.json")
    if rep is None:
        rows.append(("data", "not run (no data/data_report.json)"))
    else:
        st = rep.get("stages", {})
        removed = sum(s.get("dropped", {}).get("contaminated", 0) for s in rep.get("sources", {}).values())
        check = rep.get("decontamination_check") or {}
        decon = (f"{removed} records removed by decontamination" if check.get("run", "decontamination" in rep)
                 else "decontamination NOT RUN")
        rows.append(("data", f"{st.get('stage1', {}).get('samples', 0)} SFT samples (stage 1), "
                             f"{st.get('stage2', {}).get('samples', 0)} (stage 2), "
                             f"{rep.get('mix', {}).get('rl_prompts', 0)} RL prompts; {decon}"))

    s1, s2 = (run / f"sft_stage{i}" / "metrics.jsonl" for i in (1, 2))
    if s1.is_file() and s2.is_file():
        a = [r["loss"] for r in read_metrics(s1) if "loss" in r]
        b = [r["loss"] for r in read_metrics(s2) if "loss" in r]
        rows.append(("SFT", f"loss {_fmt(_mean(a[:10]))} (stage 1, first 10 steps) -> {_fmt(_mean(b[-10:]))} "
                            f"(stage 2, last 10)"))
    else:
        rows.append(("SFT", "not run (no sft_stage1/ and sft_stage2/metrics.jsonl)"))

    rl = run / "rl" / "metrics.jsonl"
    if rl.is_file():
        m = read_metrics(rl)

        def first_last(key):
            v = [r[key] for r in m if isinstance(r.get(key), (int, float))]
            return f"{_fmt(_mean(v[:10]))} -> {_fmt(_mean(v[-10:]))}"
        rows.append(("GRPO", f"reward {first_last('reward')} (means of the first / last 10 of {len(m)} steps; "
                             f"format {first_last('reward_format')}, charge {first_last('reward_charge')})"))
    else:
        rows.append(("GRPO", "not run (no rl/metrics.jsonl)"))

    scores = run / "eval" / "lawbench" / "scores.csv"
    if scores.is_file():
        for model, tasks in read_scores_csv(scores).items():
            if model.endswith("-code"):  # the code mode's predictions: its own row below
                continue
            zeros = sum(v == 0 for v in tasks.values())
            mean = 100 * _mean(list(tasks.values()))
            rows.append(("LawBench", f"{model}: mean of {len(tasks)} sample tasks {mean:.1f} (x100); {zeros} of "
                                     f"{len(tasks)} tasks score 0"))
    else:
        rows.append(("LawBench", "not run (no eval/lawbench/scores.csv)"))

    code = _json(run / "eval" / "lawbench" / "code_mode.json")
    for key, r in (code or {}).items():
        rows.append(("code mode", f"{key}: direct {100 * r['direct']:.1f} vs code {100 * r['code']:.1f} (x100); "
                                  f"{r['n']} items: {r['ran']} programs ran ({r['ok']} ok, {r['raised']} raised, "
                                  f"{r['timed_out']} timed out, {r['blocked']} blocked), {r['no_code']} no code"))
    if not code:
        rows.append(("code mode", "not run (no eval/lawbench/code_mode.json)"))

    plain = _json(run / "eval" / "judgment" / "metrics_plain.json")
    if plain is None:
        rows.append(("judgment", "not run (no eval/judgment/metrics_plain.json)"))
    else:
        rows.append(("judgment", f"charge F1 {_fmt(plain.get('charge_micro_f1'))}, article F1 "
                                 f"{_fmt(plain.get('article_micro_f1'))}, term score {_fmt(plain.get('term_score'))}"
                                 f" ({plain.get('n')} cases of {plain.get('data')})"))
    effect = _json(run / "eval" / "judgment" / "rag_effect.json")
    for tag, e in (effect or {}).get("runs", {}).items():
        f1 = e.get("charge_micro_f1", {})
        rows.append(("retrieval", f"{tag}: charge F1 {_fmt(f1.get('without_rag'))} -> {_fmt(f1.get('with_rag'))} "
                                  f"(change {_fmt(f1.get('change'), '+.2f')}); gold articles retrieved "
                                  f"{_fmt(e.get('rag_recall'))}"))
    if not effect:
        rows.append(("retrieval", "not compared (no eval/judgment/rag_effect.json)"))

    ld = _json(run / "eval" / "longdoc" / "metrics.json")
    rows.append(("long docs", "not run (no eval/longdoc/metrics.json)" if ld is None else
                 f"char F1 {_fmt(ld.get('char_f1'))} over {ld.get('questions')} questions "
                 f"({ld.get('truncated_documents')} of {ld.get('documents')} documents cut to the context)"))
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python recipes/demo_summary.py RUN_DIR (a folder written by recipes/demo.sh)", file=sys.stderr)
        return 2
    print("headline numbers (a tiny random-init model, minutes of CPU training: what to expect is on the right)")
    for stage, number in headline(argv[0]):
        print(f"  {stage:<10} {number}")
        print(f"  {'':<10}   -> {EXPECT[stage]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
