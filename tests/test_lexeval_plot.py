"""plots/plots.py: LexEval's ability chart (beside LawBench's), from what `evaluate.py score --benchmark lexeval`
writes."""
import csv

from plots import plots as P
from test_plots import check_file, no_missing_glyphs


def _scores(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["task", "model_name", "score"])
        w.writeheader()
        w.writerows(rows)


def test_lexeval_ability_chart_drawn_beside_lawbench(tmp_path, caplog):
    run = tmp_path / "run"
    rows = [{"task": t, "model_name": m, "score": s} for m, k in (("ours", 0.0), ("gpt4", 0.5))
            for t, s in (("1_1", 0.3 + k), ("1_2", 0.1), ("4_2", 0.2), ("5_3", 0.35), ("6_1", 0.6))]
    _scores(run / "eval" / "lexeval" / "few_shot" / "scores.csv", rows)
    _scores(run / "eval" / "zero_shot" / "scores.csv", [{"task": "1-1", "model_name": "ours", "score": 0.2}])
    with no_missing_glyphs(caplog):
        written, skipped = P.draw_run(P.PlotConfig(run=str(run), lawbench_dir=None))
    names = sorted(p.name for p in written)
    assert "lexeval_abilities_lexeval_few_shot_scores.png" in names
    assert "lawbench_tasks_zero_shot_scores.png" in names and not any("lawbench" in n and "lexeval" in n for n in names)
    check_file(run / "plots" / "lexeval_abilities_lexeval_few_shot_scores.png")
    assert not [s for s in skipped if "LexEval" in s]
