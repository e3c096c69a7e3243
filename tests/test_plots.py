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


# ---- inputs written by the scripts themselves --------------------------------------------------------------------
# The README's CPU examples (conftest.readme_run) run prepare_data.py, sft.py (two stages), rl.py, evaluate.py
# (generate --code, score, judgment without / with --rag, longdoc) and plots.py into runs/cpu: the figures are tested
# on what the producers really write, never on fixtures written to match the reader. judge.py needs an endpoint, so
# its summary comes from judge.summarize, the function that writes summary.json.

def judge_summary(outcomes: dict[str, str]) -> dict:
    """summary.json as judge.py writes it, for {category: 'WTLIE' outcomes}."""
    import judge
    verdict = {"W": ("a", "a"), "L": ("b", "b"), "T": ("tie", "tie"), "I": ("a", "b"), "E": ("a", None)}
    questions, results = [], {}
    for cat, outs in outcomes.items():
        for j, o in enumerate(outs):
            qid = f"{cat}{j}"
            questions.append({"id": qid, "category": cat})
            results[qid] = {"ab": {"winner": verdict[o][0]}, "ba": {"winner": verdict[o][1]}}
    answers = {q["id"]: "答" for q in questions}
    return judge.summarize(questions, answers, answers, results, n_boot=200, seed=0)


# 法律推理: one win and two inconsistent pairs: win rate 1.0 from n = 1 (a bootstrap said [1.0, 1.0])
SUMMARY_OUTCOMES = {"法律咨询": "WWWWWWTTLLI", "案例分析": "WWWWTTTLLLIE", "法律推理": "WII"}


@pytest.fixture(scope="module")
def summary():
    return judge_summary(SUMMARY_OUTCOMES)


@pytest.fixture(scope="module")
def produced(readme_run) -> Path:
    """runs/cpu of the README's CPU examples (read only: tests that change it copy it first)."""
    return readme_run[0] / "runs" / "cpu"


@pytest.fixture
def run_dir(produced, summary, tmp_path) -> Path:
    """A copy of the produced run + a judge summary, and a half-written last line in rl/metrics.jsonl (a run still
    writing), without the figures the README's plots.py example already drew."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(produced, run, ignore=shutil.ignore_patterns("plots", "final", "checkpoints", "model"))
    (run / "judge").mkdir()
    (run / "judge" / "summary.json").write_text(json.dumps(summary, ensure_ascii=False), encoding="utf-8")
    with open(run / "rl" / "metrics.jsonl", "a") as f:
        f.write('{"step": 31, "rew')
    return run


# ---- fonts ----

def test_cjk_font_found():
    fam = P.setup_fonts()
    assert fam is not None, "no CJK font: pip install mplfonts (requirements.txt) or apt-get install fonts-noto-cjk"
    assert matplotlib.rcParams["font.sans-serif"][0] == fam


def test_glyph_check_can_fail(tmp_path, caplog, monkeypatch, summary):
    """Without a CJK font matplotlib does warn, and our check catches it (so the other tests mean something)."""
    monkeypatch.setattr(P, "find_cjk_font", lambda: None)
    with matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"]}):
        with pytest.raises(AssertionError, match="missing from"):
            with no_missing_glyphs(caplog):
                P.plot_judge(summary, tmp_path / "j.png")


# ---- pure helpers ----

def test_category_means_by_hand():
    full = {t: 0.0 for t in utils.LAWBENCH_TASKS} | {"1-1": 0.2, "1-2": 0.4, "2-1": 0.5, "3-1": 0.1, "3-2": 0.3}
    m = utils.category_means(full)
    assert m == pytest.approx({"Memorization": 30, "Understanding": 5, "Application": 5, "Average": 7.5})


def test_category_means_never_average_a_subset():
    """The demo's 5 tasks are not LawBench's Average, nor its Understanding / Application (issue 12)."""
    assert utils.category_means({"1-1": 0.2, "1-2": 0.4, "2-8": 0.5, "3-1": 0.1, "3-3": 0.3}) == pytest.approx(
        {"Memorization": 30})


class Drawn(list):
    """The texts of the saved figures; .lines: (panel title, line label, x data) of every line."""
    lines: list

    def __init__(self):
        super().__init__()
        self.lines = []


@pytest.fixture
def drawn(monkeypatch):
    """Every text drawn on the figures saved during a test (titles, labels, notes, bar labels)."""
    texts = Drawn()
    real = P._save

    def save(fig, out):
        texts.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        texts.lines += [(ax.get_title(), line.get_label(), np.asarray(line.get_xdata(), dtype=float))
                        for ax in fig.axes for line in ax.get_lines()]
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


def test_data_mix_decontamination_panel_says_what_it_counts(tmp_path, drawn, produced):
    report = utils.read_json(produced / "data" / "data_report.json")  # prepare_data.py's, on the built-in sample
    removed = sum(s["dropped"].get("contaminated", 0) for s in report["sources"].values())
    assert removed > 0  # the sample plants LawBench overlaps
    P.plot_data_mix(report, tmp_path / "d.png")
    assert "LawBench items overlapped (distinct)" in drawn and f"training records removed: {removed} (sources panel: " \
        "丢弃 contaminated)" in drawn
    drawn.clear()
    P.plot_data_mix({"sources": report["sources"], "decontamination": {},
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


def test_plot_sft_curves_from_sft_py(tmp_path, caplog, drawn, produced):
    """sft.py's metrics (peak_mem_gb, ...) are all drawn; the second stage (init_from = stage 1's final/) follows
    stage 1 on the step axis, an independent run (same metrics, no init_from) starts at its own step 1."""
    import shutil
    dirs = [produced / "sft_stage1", produced / "sft_stage2"]
    other = tmp_path / "sft_lr_sweep"  # an independent run: stage 1 again, its own config
    shutil.copytree(dirs[0], other, ignore=shutil.ignore_patterns("final", "checkpoints"))
    links = P.sft_stage_links(dirs + [other])
    assert links == {"sft_stage2": "sft_stage1"}
    runs = {d.name: P.read_metrics(d / "metrics.jsonl") for d in dirs + [other]}
    n1 = len(runs["sft_stage1"])
    with no_missing_glyphs(caplog):
        check_file(P.plot_sft_curves(runs, tmp_path / "s.png", window=5, links=links))
    assert {label for _, label in P.SFT_PANELS} - {"MFU"} <= {t.split(" (滑动")[0] for t in drawn}  # mfu: GPU only
    assert "SFT 训练曲线 (sft_stage2 continues sft_stage1)" in drawn and "损失 loss (滑动平均 5)" in drawn
    lr = {label: x for title, label, x in drawn.lines if title == "学习率 lr"}
    assert lr["sft_stage1"][0] == 1 and lr["sft_lr_sweep"][0] == 1 and lr["sft_stage2"][0] == n1 + 1
    with pytest.raises(ValueError, match="no SFT metric"):
        P.plot_sft_curves({"x": [{"step": 1}]}, tmp_path / "none.png")


def test_plot_grpo_curves_from_rl_py(tmp_path, caplog, drawn, produced, readme_run):
    """rl.py's metrics and config: KL (--beta 0) and clip fraction (--mu 1) say they are 0 by construction; steps
    without a learning signal (every group's rewards equal) are counted per step, warned about and drawn."""
    records = P.read_metrics(produced / "rl" / "metrics.jsonl")
    config = utils.read_json(produced / "rl" / "config.json")
    groups = config["prompts_per_step"]
    for r in records:
        assert r["no_learning_signal"] == (r["equal_reward_groups"] == groups)
        assert r["equal_reward_groups"] == round(r["zero_var_frac"] * groups)
    no_signal = sum(r["no_learning_signal"] for r in records)
    log = next(r.stdout + r.stderr for r in readme_run[1].values() if "python rl.py" in r.args[-1])  # the block
    assert ("no learning signal" in log) == (no_signal > 0)
    with no_missing_glyphs(caplog):
        check_file(P.plot_grpo_curves(records, tmp_path / "g.png", config=config))
    assert config["beta"] == 0 and config["mu"] == 1
    assert "0 by construction\n--beta 0: no reference model, KL not computed" in drawn
    assert "0 by construction\n--mu 1: one update per batch, the ratio is 1" in drawn
    assert (f"无学习信号 no learning signal ({no_signal} steps)" in drawn) == (no_signal > 0)
    # without the config (or with --beta > 0) a flat KL is only reported as such
    drawn.clear()
    P.plot_grpo_curves(records, tmp_path / "g2.png")
    assert not any("by construction" in t for t in drawn) and f"all {len(records)} values are 0" in drawn
    drawn.clear()
    P.plot_grpo_curves([{"step": 1, "reward": 0.0, "no_learning_signal": True},
                        {"step": 2, "reward": 0.5, "no_learning_signal": False}], tmp_path / "g3.png")
    assert "无学习信号 no learning signal (1 steps)" in drawn


def test_plot_judge_interval_from_judge_py(tmp_path, caplog, drawn, summary):
    """judge.py's ci95.win_rate is drawn; 1 win of 1 consistent pair gets a Wilson interval, not [1, 1]."""
    few = summary["by_category"]["法律推理"]
    assert few["win_rate"] == 1.0 and few["ci95"]["win_rate"][0] < 0.25 and few["ci95"]["win_rate"][1] == 1.0
    with no_missing_glyphs(caplog):
        check_file(P.plot_judge(summary, tmp_path / "j.png"))
        check_file(P.plot_judge({k: v for k, v in summary.items() if k != "by_category"}, tmp_path / "j2.png"))
    assert "胜率 win rate (95% CI)" in drawn and "W1 T0 L0 I2\nn=1" in drawn


def test_plot_data_mix_and_lengths(tmp_path, caplog, drawn, produced):
    report = utils.read_json(produced / "data" / "data_report.json")
    with no_missing_glyphs(caplog):
        check_file(P.plot_data_mix(report, tmp_path / "d.png"))
        check_file(P.plot_data_mix({"stages": report["stages"]}, tmp_path / "d2.png"))
        check_file(P.plot_length_hist({"stage1": np.array([10, 20, 30, 2000]), "stage2": [5]}, tmp_path / "h.png",
                                      seq_len=32768))
    # each stage's legal / general share, from prepare_data.py's counts
    for name, st in report["stages"].items():
        legal, general = st["mix"]["legal"], st["mix"]["general"]
        assert legal["samples"] + general["samples"] == st["samples"] and legal["tokens"] + general["tokens"] == \
            st["tokens"]
        assert f"legal {legal['tokens'] / st['tokens']:.0%}" in drawn
    assert report["stages"]["stage1"]["mix"]["general"]["samples"] == report["mix"]["general_used"] > 0


def test_evaluate_figures(tmp_path, caplog, drawn, produced):
    """Retrieval (rag_effect.json), code mode (code_mode.json) and long documents, from evaluate.py's files."""
    effect = utils.read_json(produced / "eval" / "judgment" / "rag_effect.json")
    code = utils.read_json(produced / "eval" / "lawbench" / "code_mode.json")
    ld = utils.read_json(produced / "eval" / "longdoc" / "metrics.json")
    with no_missing_glyphs(caplog):
        check_file(P.plot_rag_effect(effect, tmp_path / "r.png"))
        check_file(P.plot_code_mode(code, tmp_path / "c.png"))
        check_file(P.plot_longdoc(ld, P.read_metrics(produced / "eval" / "longdoc" / "predictions.jsonl"),
                                  tmp_path / "l.png"))
    tag, metrics = next(iter(effect["runs"].items()))
    assert any(t.startswith(f"{tag}: {effect['items']} items") for t in drawn)
    f1 = metrics["charge_micro_f1"]
    assert f"{f1['without_rag']:.2f}" in drawn and f"{f1['with_rag']:.2f}\n{f1['change']:+.3f}" in drawn
    assert "zero_shot/3-7" in drawn and f"zero_shot/3-7\n(n={code['zero_shot/3-7']['n']})" in drawn
    assert any(f"{ld['questions']} questions on {ld['documents']} documents" in t for t in drawn)
    with pytest.raises(ValueError, match="no run to compare"):
        P.plot_rag_effect({"runs": {}}, tmp_path / "e.png")
    with pytest.raises(ValueError, match="no scored question"):
        P.plot_longdoc({"documents": 3}, [], tmp_path / "e.png")


# ---- CLI ----

EXPECTED = ["data_mix", "length_hist", "sft_curves", "grpo_curves_rl", "lawbench_tasks_lawbench_scores",
            "lawbench_categories_lawbench_scores", "code_mode_lawbench", "rag_effect_judgment", "longdoc_longdoc",
            "judge_judge"]


def test_cli_draws_everything(run_dir, tmp_path, caplog, capsys, drawn):
    out = tmp_path / "figs"
    with no_missing_glyphs(caplog):
        rc = P.main(["--run", str(run_dir), "--out", str(out), "--lawbench_dir", str(tmp_path / "no_lawbench")])
    assert rc == 0
    assert sorted(p.stem for p in out.iterdir()) == sorted(EXPECTED)
    for p in out.iterdir():
        check_file(p)
    text = capsys.readouterr()
    assert "skipped published baselines" in text.out  # said, not silently dropped
    assert "eval/lawbench/scores_table.csv: not a per-task scores file" in text.out
    assert "rl/metrics.jsonl: skipped unreadable lines {'bad_json': 1}" in text.err
    # the code mode's predictions (<model>-code, 3-7 only) are a mode of the model, not a model with 1 of 20 tasks
    code = [m for m in utils.read_scores_csv(run_dir / "eval" / "lawbench" / "scores.csv") if m.endswith("-code")]
    assert code and not any(code[0] in t for t in drawn), code


def test_cli_with_published_baselines_pdf(run_dir, lawbench_dir, caplog):
    with no_missing_glyphs(caplog):
        assert P.main(["--run", str(run_dir), "--format", "pdf", "--lawbench_dir", str(lawbench_dir)]) == 0
    check_file(run_dir / "plots" / "lawbench_categories_lawbench_scores.pdf", PDF_MAGIC)


def test_cli_partial_and_bad_runs(tmp_path, capsys, produced):
    run = tmp_path / "partial"
    utils.write_jsonl(run / "sft1" / "metrics.jsonl", P.read_metrics(produced / "sft_stage1" / "metrics.jsonl"))
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
    assert exit_status(P.main, ["--run", str(run), "--window", "0"]) == 2  # a 0-step moving average is no curve
    assert "--window" in capsys.readouterr().err


def test_script_entry_point(run_dir):
    """`python plots/plots.py --run ...` as the README writes it (the script finds utils.py by itself)."""
    r = subprocess.run([sys.executable, str(REPO / "plots" / "plots.py"), "--run", str(run_dir), "--lawbench_dir",
                        "none"], capture_output=True, text=True, cwd=REPO.parent, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("wrote") == len(EXPECTED)
