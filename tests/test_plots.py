"""plots/plots.py on small fixture inputs: every figure is written, non-empty, and Chinese renders (no missing glyph)."""
import json
import logging
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from plots import plots as P
import utils
from conftest import exit_status

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC, PDF_MAGIC = b"\x89PNG", b"%PDF"


# ---- helpers and fixture inputs ----

@contextmanager
def no_missing_glyphs(caplog):
    """Fail if matplotlib reports a glyph missing from the font (as a warning or a log record)."""
    with warnings.catch_warnings(record=True) as w, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        yield
    msgs = [str(x.message) for x in w] + [r.getMessage() for r in caplog.records]
    missing = [m for m in msgs if "missing from" in m and "Glyph" in m]
    assert not missing, missing[:3]


def check_file(path, magic=PNG_MAGIC):
    path = Path(path)
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:4] == magic


def write_stage(d: Path, packs: list[list[int]], seq_len: int = 64):
    """A packed stage (the layout of utils section 7) holding the given sample lengths per pack."""
    d.mkdir(parents=True)
    cu, off = [], [0]
    for lengths in packs:
        cu += list(np.cumsum([0] + lengths))
        off.append(len(cu))
    n = len(packs)
    for name in ("input_ids", "labels", "position_ids"):
        np.save(d / f"{name}.npy", np.zeros((n, seq_len), dtype=np.int32))
    np.save(d / "cu_seqlens.npy", np.asarray(cu, dtype=np.int32))
    np.save(d / "cu_offsets.npy", np.asarray(off, dtype=np.int64))
    (d / "meta.json").write_text(json.dumps({"seq_len": seq_len, "n_packs": n, "stage": d.name}))


REPORT = {
    "sources": {"lawbench_style": {"read": 120, "kept": 100, "dropped": {"decontaminated": 15, "duplicate": 5}},
                "咨询问答": {"read": 50, "kept": 30, "dropped": {"rule_filter": 20}}},
    "decontamination": {"argument_mining": {"2-8": 180}, "fakao_gpt4": {"1-2": 60, "3-6": 35}},
    "stages": {"stage1": {"samples": 130, "tokens": 60000, "packing_efficiency": 0.993},
               "stage2": {"samples": 40, "tokens": 20000, "packing_efficiency": 0.991}},
    "length_percentiles": {"p50": 300, "p99": 2000},
}
SUMMARY = {"wins": 30, "ties": 10, "losses": 20, "inconsistent": 5, "errors": 1, "win_rate": 0.5,
           "adjusted_win_rate": 0.538, "ci": [0.38, 0.62],
           "by_category": {"法律咨询": {"wins": 12, "ties": 3, "losses": 5, "inconsistent": 2, "errors": 0,
                                    "win_rate": 0.6, "adjusted_win_rate": 0.59, "ci": [0.4, 0.8]},
                           "案例分析": {"wins": 10, "ties": 4, "losses": 6, "inconsistent": 1, "errors": 1,
                                    "win_rate": 0.5, "adjusted_win_rate": 0.52, "ci": [0.3, 0.7]},
                           "法律推理": {"wins": 8, "ties": 3, "losses": 9, "inconsistent": 2, "errors": 0,
                                    "win_rate": 0.4, "adjusted_win_rate": 0.43}}}  # no ci: drawn without a bar


def sft_records(n, loss0):
    return [{"step": i, "loss": loss0 * 0.97 ** i, "grad_norm": 1.0, "lr": 1e-5 * min(1, (i + 1) / 3),
             "tokens_per_s": 1000 + i, "mfu": 0.01, "peak_mem": 1e9} for i in range(1, n + 1)]


def rl_records(n):
    rng = np.random.default_rng(0)
    out = []
    for i in range(1, n + 1):
        r = {"step": i, "reward": min(1, 0.1 + i / n + 0.05 * rng.standard_normal()), "reward_charge": i / n,
             "reward_format": 1.0, "kl": 0.001 * i, "clip_frac": 0.02, "completion_len": 100 - i}
        if i % 2:
            r["entropy"] = 2.0  # a key present in some steps only
        out.append(r)
    return out


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "data_report.json").write_text(json.dumps(REPORT, ensure_ascii=False), encoding="utf-8")
    write_stage(run / "data" / "stage1", [[10, 20, 30], [60], [5, 5]])
    write_stage(run / "data" / "stage2", [[40, 20]])
    utils.write_jsonl(run / "sft1" / "metrics.jsonl", sft_records(12, 8.0))
    utils.write_jsonl(run / "sft2" / "metrics.jsonl", sft_records(6, 5.0))
    utils.write_jsonl(run / "rl" / "metrics.jsonl", rl_records(30))
    with open(run / "rl" / "metrics.jsonl", "a") as f:
        f.write('{"step": 31, "rew')  # a run still writing: a half line must not break the plot
    (run / "eval").mkdir()
    rows = ["task,model_name,score,abstention_rate"] + [f"{t},tiny,{0.01 * i:.3f},0.0"
                                                         for i, t in enumerate(utils.LAWBENCH_TASKS)]
    (run / "eval" / "scores.csv").write_text("\n".join(rows) + "\n")
    (run / "eval" / "scores_table.csv").write_text("model_name,Memorization,Understanding,Application,Average\n")
    (run / "judge").mkdir()
    (run / "judge" / "summary.json").write_text(json.dumps(SUMMARY, ensure_ascii=False), encoding="utf-8")
    return run


# ---- fonts ----

def test_cjk_font_found():
    fam = P.setup_fonts()
    assert fam is not None, "no CJK font: pip install mplfonts (requirements.txt) or apt-get install fonts-noto-cjk"
    assert matplotlib.rcParams["font.sans-serif"][0] == fam


def test_glyph_check_can_fail(tmp_path, caplog, monkeypatch):
    """Without a CJK font matplotlib does warn, and our check catches it (so the other tests mean something)."""
    monkeypatch.setattr(P, "find_cjk_font", lambda: None)
    with matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"]}):
        with pytest.raises(AssertionError, match="missing from"):
            with no_missing_glyphs(caplog):
                P.plot_judge(SUMMARY, tmp_path / "j.png")


# ---- pure helpers ----

def test_category_means_by_hand():
    full = {t: 0.0 for t in utils.LAWBENCH_TASKS} | {"1-1": 0.2, "1-2": 0.4, "2-1": 0.5, "3-1": 0.1, "3-2": 0.3}
    m = utils.category_means(full)
    assert m == pytest.approx({"Memorization": 30, "Understanding": 5, "Application": 5, "Average": 7.5})


def test_category_means_never_average_a_subset():
    """The demo's 5 tasks are not LawBench's Average, nor its Understanding / Application (issue 12)."""
    assert utils.category_means({"1-1": 0.2, "1-2": 0.4, "2-8": 0.5, "3-1": 0.1, "3-3": 0.3}) == pytest.approx(
        {"Memorization": 30})


@pytest.fixture
def drawn(monkeypatch):
    """Every text drawn on the figures saved during a test (titles, labels, notes, bar labels)."""
    texts = []
    real = P._save

    def save(fig, out):
        texts.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        return real(fig, out)
    monkeypatch.setattr(P, "_save", save)
    return texts


def test_all_zero_and_partial_lawbench_drawn_as_such(tmp_path, drawn):
    ours = {"demo": {t: 0.0 for t in ("1-1", "2-8", "3-1", "3-3", "3-8")}}
    base = {"GPT4": {t: 0.5 for t in utils.LAWBENCH_TASKS}}
    P.plot_lawbench_tasks(ours, base, tmp_path / "t.png")
    assert "demo: all 5 task scores are 0" in drawn and drawn.count("0.0") >= 5  # zeros labelled, not blank
    drawn.clear()
    P.plot_lawbench_categories(ours, base, tmp_path / "c.png")
    # no 'Average 0.0' from 5 of 20 tasks (nor a category from part of its tasks): each says how many it has
    assert {"1/2\ntasks", "1/10\ntasks", "3/8\ntasks", "5/20\ntasks"} <= set(drawn) and "0.0" not in drawn
    assert drawn.count("50.0") == 4  # the complete baseline keeps its four bars
    with pytest.raises(ValueError, match="no LawBench task scores"):
        P.plot_lawbench_tasks({"x": {}}, {}, tmp_path / "e.png")


def test_all_zero_curves_say_so(tmp_path, drawn):
    P.plot_grpo_curves([{"step": i, "reward": 0.0, "kl": 0.0} for i in range(1, 6)], tmp_path / "g.png")
    assert "reward: all 5 values are 0" in drawn and "all 5 values are 0" in drawn


def test_data_mix_decontamination_panel_says_what_it_counts(tmp_path, drawn):
    P.plot_data_mix({**REPORT, "decontamination_check": {"run": True, "lawbench_items": 100}}, tmp_path / "d.png")
    assert "LawBench items overlapped (distinct)" in drawn and "training records removed: 0 (sources panel: 丢弃 " \
        "contaminated)" in drawn
    drawn.clear()
    P.plot_data_mix({"sources": REPORT["sources"], "decontamination": {},
                     "decontamination_check": {"run": False, "reason": "--decontaminate false"}}, tmp_path / "n.png")
    assert any("NOT RUN" in t and "--decontaminate false" in t for t in drawn)  # not an empty panel read as clean


def test_judge_without_any_rate_is_skipped(tmp_path):
    with pytest.raises(ValueError, match="no win rate"):
        P.plot_judge({"wins": 0, "win_rate": None, "adjusted_win_rate": None, "errors": 9}, tmp_path / "j.png")


def test_gpt4_rows_match_internlm_law_table1(lawbench_dir):
    for (model, shot), row in P.PAPER_TABLE1.items():
        means = utils.category_means(P.load_published(lawbench_dir, shot, [model])[model])
        got = [means[c] for c in ("Memorization", "Understanding", "Application", "Average")]
        assert got == pytest.approx(row, abs=0.01), (shot, got)


def test_sample_lengths_from_packed_stage(tmp_path):
    write_stage(tmp_path / "s", [[10, 20, 30], [60], [5, 5]])
    assert P.sample_lengths(tmp_path / "s").tolist() == [10, 20, 30, 60, 5, 5]


def test_smooth_and_series():
    assert P.smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]
    x, y = P.series([{"step": 1, "a": 1}, {"step": 2}, {"step": 3, "a": float("nan")}, {"step": 4, "a": 2}], "a")
    assert x.tolist() == [1, 4] and y.tolist() == [1, 2]


def test_bad_scores_csv_names_line(tmp_path):
    p = tmp_path / "scores.csv"
    p.write_text("task,model_name,score,abstention_rate\n1-1,m,0.5,0\n1-2,m,abc,0\n")
    with pytest.raises(utils.DataError, match=r"scores.csv:3: field 'score'"):
        utils.read_scores_csv(p)


# ---- each figure ----

def test_plot_lawbench(tmp_path, caplog):
    ours = {"我们的模型": {t: 0.3 for t in utils.LAWBENCH_TASKS}}
    base = {"GPT4": {t: 0.5 for t in utils.LAWBENCH_TASKS}, "partial": {"1-1": 0.1, "3-3": 0.4}}
    with no_missing_glyphs(caplog):
        check_file(P.plot_lawbench_tasks(ours, base, tmp_path / "t.png"))
        check_file(P.plot_lawbench_categories(ours, base, tmp_path / "c.pdf"), PDF_MAGIC)


def test_plot_sft_curves(tmp_path, caplog):
    with no_missing_glyphs(caplog):
        check_file(P.plot_sft_curves({"sft1": sft_records(10, 8), "sft2": sft_records(5, 5)}, tmp_path / "s.png"))
        check_file(P.plot_sft_curves({"only_loss": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]},
                                     tmp_path / "s2.png"))
    with pytest.raises(ValueError, match="no SFT metric"):
        P.plot_sft_curves({"x": [{"step": 1}]}, tmp_path / "none.png")


def test_plot_grpo_curves(tmp_path, caplog):
    with no_missing_glyphs(caplog):
        check_file(P.plot_grpo_curves(rl_records(20), tmp_path / "g.png"))
        check_file(P.plot_grpo_curves([{"step": 1, "kl": 0.1}, {"step": 2, "kl": 0.2}], tmp_path / "g2.png"))


def test_plot_judge(tmp_path, caplog):
    with no_missing_glyphs(caplog):
        check_file(P.plot_judge(SUMMARY, tmp_path / "j.png"))
        check_file(P.plot_judge({k: v for k, v in SUMMARY.items() if k != "by_category"}, tmp_path / "j2.png"))


def test_plot_data_mix_and_lengths(tmp_path, caplog):
    with no_missing_glyphs(caplog):
        check_file(P.plot_data_mix(REPORT, tmp_path / "d.png"))
        check_file(P.plot_data_mix({"stages": REPORT["stages"]}, tmp_path / "d2.png"))
        check_file(P.plot_length_hist({"stage1": np.array([10, 20, 30, 2000]), "stage2": [5]}, tmp_path / "h.png",
                                      seq_len=32768))


# ---- CLI ----

EXPECTED = ["data_mix", "length_hist", "sft_curves", "grpo_curves_rl", "lawbench_tasks_scores",
            "lawbench_categories_scores", "judge_judge"]


def test_cli_draws_everything(run_dir, tmp_path, caplog, capsys):
    out = tmp_path / "figs"
    with no_missing_glyphs(caplog):
        rc = P.main(["--run", str(run_dir), "--out", str(out), "--lawbench_dir", str(tmp_path / "no_lawbench")])
    assert rc == 0
    assert sorted(p.stem for p in out.iterdir()) == sorted(EXPECTED)
    for p in out.iterdir():
        check_file(p)
    text = capsys.readouterr()
    assert "skipped published baselines" in text.out  # said, not silently dropped
    assert "eval/scores_table.csv: not a per-task scores file" in text.out
    assert "rl/metrics.jsonl: skipped unreadable lines {'bad_json': 1}" in text.err


def test_cli_with_published_baselines_pdf(run_dir, lawbench_dir, caplog):
    with no_missing_glyphs(caplog):
        assert P.main(["--run", str(run_dir), "--format", "pdf", "--lawbench_dir", str(lawbench_dir)]) == 0
    check_file(run_dir / "plots" / "lawbench_categories_scores.pdf", PDF_MAGIC)


def test_cli_partial_and_bad_runs(tmp_path, capsys):
    run = tmp_path / "partial"
    utils.write_jsonl(run / "sft1" / "metrics.jsonl", sft_records(3, 4.0))
    (run / "judge").mkdir()
    (run / "judge" / "summary.json").write_text("{not json")
    assert P.main(["--run", str(run), "--lawbench_dir", "none"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "skipped GRPO curves: no rl*/metrics.jsonl" in out
    assert "skipped judge (judge): " in out and "summary.json:1: invalid JSON" in out
    (tmp_path / "empty").mkdir()
    assert P.main(["--run", str(tmp_path / "empty")]) == 1
    assert exit_status(P.main, ["--run", str(tmp_path / "absent")]) == 2
    with pytest.raises(SystemExit) as e:
        P.main(["--run", str(run), "--format", "svg"])
    assert e.value.code == 2 and "--format: expected one of png | pdf, got 'svg'" in capsys.readouterr().err


def test_script_entry_point(run_dir):
    """`python plots/plots.py --run ...` as the README writes it (the script finds utils.py by itself)."""
    r = subprocess.run([sys.executable, str(REPO / "plots" / "plots.py"), "--run", str(run_dir), "--lawbench_dir",
                        "none"], capture_output=True, text=True, cwd=REPO.parent, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("wrote") == len(EXPECTED)
