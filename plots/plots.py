"""
LexLab figures: one script that reads what the other scripts write and draws everything it can.

    python plots/plots.py --run RUN_DIR [--out DIR] [--format png|pdf] [--lawbench_dir ../shared/lawbench]

It looks in RUN_DIR for (any that exist; the rest is skipped with a message):
    data*/data_report.json          prepare_data.py  -> data mix, drops, decontamination
    data*/<stage>/cu_seqlens.npy     prepare_data.py  -> sample-length histograms per packed stage
    sft*/metrics.jsonl               sft.py           -> SFT curves (loss, lr, tokens/s, MFU, ...)
    rl*/metrics.jsonl                rl.py            -> GRPO curves (reward + components, KL, clip fraction, length)
    eval*/**/scores*.csv             evaluate.py      -> LawBench per task / per category, beside published baselines
                                                         (LexEval task ids 1_1..6_3: its ability chart beside them)
    judge*/summary.json              judge.py         -> win rates by category with bootstrap intervals
    judge*/rubric_summary.json       judge.py rubric  -> mean 1-5 score per criterion and system, with intervals

Sections:
  1. CJK font            - find a font that has Chinese glyphs and make matplotlib use it
  2. Published baselines - LawBench numbers from the papers (InternLM-Law Table 1; LawBench's results.csv)
  3. Reading inputs      - tolerant readers for metrics.jsonl / summary.json / packed stages
  4. Figures             - one function per figure, each returns the path it wrote
  5. CLI                 - discover what exists in a run folder and draw it
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python plots/plots.py` puts plots/ on sys.path, not the repository root
    sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402

import utils  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------------
# 1. CJK font: Chinese labels must render (a missing glyph is a bug, and tests/test_plots.py fails on it)
# ----------------------------------------------------------------------------------------------------------------------
# Order of preference: a CJK font matplotlib already knows (system-wide, e.g. `apt-get install fonts-noto-cjk`), then
# the Noto Sans CJK SC file shipped inside the `mplfonts` pip package (in requirements.txt, so `pip install -r
# requirements.txt` is enough), then well-known font files on disk. A font counts only if it really has the glyphs.

CJK_FAMILIES = ["Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei",
                "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "AR PL UMing CN"]
CJK_FILE_GLOBS = ["/usr/share/fonts/**/NotoSansCJK*", "/usr/share/fonts/**/*wqy*", "/usr/share/fonts/**/*SourceHan*",
                  "/System/Library/Fonts/PingFang.ttc", "C:/Windows/Fonts/msyh.ttc", "C:/Windows/Fonts/simhei.ttf"]
PROBE = "法条罪名刑期咨询判决"  # characters every figure may need


@functools.lru_cache(maxsize=None)
def _covers(path: str, text: str = PROBE) -> bool:
    """True if the font file at `path` has a glyph for every character of `text`."""
    try:
        charmap = matplotlib.ft2font.FT2Font(path).get_charmap()
    except Exception:  # unreadable / unsupported font file: not usable
        return False
    return all(ord(c) in charmap for c in text)


def _mplfonts_file() -> str | None:
    """Path of Noto Sans CJK SC inside the `mplfonts` package (found without importing it), or None."""
    import importlib.util
    spec = importlib.util.find_spec("mplfonts")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "fonts" / "NotoSansCJKsc-Regular.otf"
        if p.is_file():
            return str(p)
    return None


def find_cjk_font() -> str | None:
    """Register and return the family name of a font with Chinese glyphs, or None if there is none on this machine."""
    known = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    for fam in CJK_FAMILIES:
        if fam in known and _covers(known[fam]):
            return fam
    candidates = [_mplfonts_file()] + [p for g in CJK_FILE_GLOBS for p in sorted(glob.glob(g, recursive=True))]
    for path in candidates:
        if path and _covers(path):
            font_manager.fontManager.addfont(path)
            return font_manager.FontProperties(fname=path).get_name()
    return None


_FONT_DONE = False


def setup_fonts() -> str | None:
    """Make matplotlib draw Chinese (CJK family first, DejaVu Sans as fallback). Prints how to fix it if impossible."""
    global _FONT_DONE
    family = find_cjk_font()
    if family is None:
        if not _FONT_DONE:
            print("plots: no font with Chinese glyphs found; labels will show boxes. Fix: `pip install mplfonts` "
                  "(in requirements.txt) or `apt-get install -y fonts-noto-cjk`.", file=sys.stderr)
    else:
        matplotlib.rcParams["font.family"] = "sans-serif"
        matplotlib.rcParams["font.sans-serif"] = [family, "DejaVu Sans"]
    matplotlib.rcParams["axes.unicode_minus"] = False  # CJK fonts often lack U+2212; use '-'
    _FONT_DONE = True
    return family


# ----------------------------------------------------------------------------------------------------------------------
# 2. Published baselines
# ----------------------------------------------------------------------------------------------------------------------
# LawBench (Fei et al., 2023, arXiv 2309.16289) published scores of 51 models on its 20 tasks, zero- and one-shot:
# `predictions/{zero_shot,one_shot}/results.csv` in the LawBench repository (`../shared/lawbench` here), columns
# task,model_name,score,abstention_rate on a 0-1 scale. We read that file at run time rather than copying numbers.
# InternLM-Law (Fei et al., 2024, arXiv 2406.14887, COLING 2025) Table 1 reports LawBench as Memorization (mean of
# 1-x) / Understanding (mean of 2-x) / Application (mean of 3-x) / Average (mean of all 20), x100. Its GPT-4 rows are
# computed from the same results.csv; the values below are what Table 1 prints, used to check that (test_plots.py).
# Not verified here (no access to the paper's PDF): the exact list of other models in Table 1 and InternLM-Law's own
# row; those must be filled from the paper before being drawn, so no number is invented.

# InternLM-Law Table 1, GPT-4 rows (Memorization, Understanding, Application, Average), x100.
PAPER_TABLE1 = {
    ("GPT4", "zero_shot"): (35.29, 54.41, 54.05, 52.35),
    ("GPT4", "one_shot"): (36.01, 56.48, 55.01, 53.85),
}
# Models drawn beside ours by default (LawBench results.csv names): the strongest general models and the legal models.
DEFAULT_BASELINES = ["GPT4", "GPT-3.5-turbo-0613", "qwen-7b-chat-hf", "internlm-chat-7b-8k-hf", "fuzi-mingcha-7b-hf",
                     "chatlaw-13b-hf"]


def load_published(lawbench_dir, shot: str = "zero_shot", models=None) -> dict[str, dict[str, float]]:
    """LawBench's published scores: {model_name: {task: score}} from predictions/<shot>/results.csv ({} if absent)."""
    path = Path(lawbench_dir) / "predictions" / shot / "results.csv" if lawbench_dir else None
    if path is None or not path.is_file():
        return {}
    scores = utils.read_scores_csv(path)
    return {m: scores[m] for m in (models or scores) if m in scores}


# ----------------------------------------------------------------------------------------------------------------------
# 3. Reading inputs (tolerant: plot what exists, count what could not be read)
# ----------------------------------------------------------------------------------------------------------------------

def read_metrics(path) -> list[dict]:
    """Records of a metrics.jsonl. A half-written last line (a run still going) or a bad line is skipped and counted."""
    errors: dict = {}
    recs = [r for _, r in utils.iter_records(path, on_error="skip", errors=errors)]
    if errors:
        print(f"plots: {path}: skipped unreadable lines {errors}", file=sys.stderr)
    return recs


def series(records: list[dict], key: str, x_key: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the records holding a finite number under `key`; x = record[x_key] or its index."""
    xs, ys = [], []
    for i, r in enumerate(records):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get(x_key, i))
            ys.append(float(v))
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (same length; the first points average what exists so far)."""
    if window <= 1 or len(y) == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def sample_lengths(stage_dir) -> np.ndarray:
    """Token length of every sample in a packed stage (utils section 7: diffs of cu_seqlens inside each pack)."""
    cu = np.load(Path(stage_dir) / "cu_seqlens.npy", mmap_mode="r")
    off = np.load(Path(stage_dir) / "cu_offsets.npy", mmap_mode="r")
    lengths = np.diff(np.asarray(cu, dtype=np.int64))
    # the diff across two packs (last boundary of pack i -> 0 of pack i+1) is not a sample: drop those positions
    keep = np.ones(len(lengths), dtype=bool)
    keep[np.asarray(off[1:-1], dtype=np.int64) - 1] = False
    return lengths[keep]


# ----------------------------------------------------------------------------------------------------------------------
# 4. Figures: each takes already-read data + an output path (suffix picks PNG or PDF) and returns the path
# ----------------------------------------------------------------------------------------------------------------------

DPI = 100  # PNG resolution: readable, and the demo's figures stay small enough for the README's gallery


def _save(fig, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI, bbox_inches="tight")  # keeps legends and notes placed outside the axes
    plt.close(fig)
    return out


def _task_label(t: str) -> str:
    """'3-4\n刑期预测\n(无法条内容)': id, then the Chinese name cut before a bracket so neighbours do not overlap."""
    return f"{t}\n" + utils.LAWBENCH_TASKS[t][0].replace("(", "\n(") if t in utils.LAWBENCH_TASKS else t


def _zero_axis(ax, values) -> None:
    """y from 0 to at least 10 (x100 scale): all-zero scores sit on a readable axis, not on -0.04..0.04."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    ax.set_ylim(min(0.0, *finite) if finite else 0.0, max(10.0, 1.15 * max(finite, default=0.0)))


def _note_empty_series(ax, ys, what: str = "", why: str | None = None) -> None:
    """Say on the panel when a curve is flat zero (or has no point), instead of leaving a blank-looking axis.
    why: the reason it is zero by construction (e.g. '--beta 0: no reference model'), said instead of the count."""
    ys = np.asarray(ys, dtype=float)
    if why is not None:
        ax.text(0.5, 0.75, f"0 by construction\n{why}", transform=ax.transAxes, ha="center", va="center", fontsize=8,
                color="gray")  # above the flat line (which sits mid-axis), not over it
    elif len(ys) == 0 or not np.any(ys):
        ax.text(0.5, 0.75, f"{what}{'no data' if len(ys) == 0 else f'all {len(ys)} values are 0'}",
                transform=ax.transAxes, ha="center", va="center", fontsize=8, color="firebrick")


def plot_lawbench_tasks(ours: dict[str, dict[str, float]], baselines: dict[str, dict[str, float]], out,
                        title: str = "LawBench") -> Path:
    """Grouped bars: one group per task (x100), our run(s) first (solid), published baselines beside (hatched)."""
    setup_fonts()
    tasks = [t for t in utils.LAWBENCH_TASKS if any(t in s for s in {**ours, **baselines}.values())]
    tasks += sorted({t for s in ours.values() for t in s} - set(tasks))
    names = list(ours) + [b for b in baselines if b not in ours]
    width = 0.8 / max(len(names), 1)
    if not tasks:
        raise ValueError("no LawBench task scores")
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(tasks) + 2), 4.8))
    for i, name in enumerate(names):
        scores = ours.get(name) or baselines[name]
        ys = [100 * scores.get(t, np.nan) for t in tasks]
        bars = ax.bar(np.arange(len(tasks)) + (i - (len(names) - 1) / 2) * width, ys, width, label=name,
                      hatch=None if name in ours else "//", alpha=1.0 if name in ours else 0.6)
        if name in ours:  # a 0 is a result: label it, so an empty-looking chart reads as zeros, not as missing data
            for bar, y in zip(bars, ys):
                if not np.isnan(y):
                    ax.text(bar.get_x() + bar.get_width() / 2, y, f"{y:.1f}", ha="center", va="bottom", fontsize=6)
    _zero_axis(ax, [100 * v for n in names for v in (ours.get(n) or baselines[n]).values()])
    zero = [n for n in ours if ours[n] and not any(ours[n].values())]
    if zero:
        ax.text(0.5, 0.95, f"{', '.join(zero)}: all {len(ours[zero[0]])} task scores are 0", transform=ax.transAxes,
                ha="center", va="top", fontsize=8, color="firebrick")
    ax.set_xticks(np.arange(len(tasks)), [_task_label(t) for t in tasks], fontsize=7)
    ax.set_ylabel("得分 score (x100)")
    ax.set_title(f"{title}: 各任务得分 per task")
    ax.legend(fontsize=7, ncol=min(len(names), 4), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return _save(fig, out)


def plot_lawbench_categories(ours: dict[str, dict[str, float]], baselines: dict[str, dict[str, float]], out,
                             title: str = "LawBench") -> Path:
    """Bars per category (记忆 / 理解 / 运用 / 平均, as InternLM-Law Table 1) for our run(s) and the baselines."""
    setup_fonts()
    zh = {"Memorization": "记忆", "Understanding": "理解", "Application": "运用", "Average": "平均"}
    cats = list(zh)
    names = list(ours) + [b for b in baselines if b not in ours]
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    values = []
    for i, name in enumerate(names):
        scores = ours.get(name) or baselines[name]
        means = utils.category_means(scores)
        xs = np.arange(len(cats)) + (i - (len(names) - 1) / 2) * width
        ys = [means.get(c, np.nan) for c in cats]
        values += [y for y in ys if not np.isnan(y)]
        ax.bar(xs, ys, width, label=name, hatch=None if name in ours else "//", alpha=1.0 if name in ours else 0.6)
        # a category with tasks missing gets no bar but says why (the mean of a subset is not the category's score)
        for x, c, y in zip(xs, cats, ys):
            label = f"{y:.1f}" if not np.isnan(y) else \
                f"{sum(t in scores for t in utils.category_tasks(c))}/{len(utils.category_tasks(c))}\ntasks"
            ax.annotate(label, (x, 0 if np.isnan(y) else y), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7)
    ax.set_xlim(-0.6, len(cats) - 0.4)  # room for the labels of the outer groups, bars drawn or not
    partial = [f"{n}: {sum(t in ours[n] for t in utils.LAWBENCH_TASKS)} of 20 tasks scored" for n in ours
               if not all(t in ours[n] for t in utils.LAWBENCH_TASKS)]
    if partial:
        import textwrap
        ax.text(0.5, 0.95, textwrap.fill("; ".join(partial) + ". A category (and the Average) is drawn only when all "
                                         "its tasks are scored.", 100), transform=ax.transAxes, ha="center",
                va="top", fontsize=8, color="firebrick")
    _zero_axis(ax, values)
    if partial:  # headroom for the note above the tallest bar and its label
        ax.set_ylim(ax.get_ylim()[0], 1.3 * ax.get_ylim()[1])
    ax.set_xticks(np.arange(len(cats)), [f"{zh[c]}\n{c}" for c in cats])
    ax.set_ylabel("得分 score (x100)")
    ax.set_title(f"{title}: 分类得分 by category")
    ax.legend(fontsize=7, ncol=min(len(names), 4), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return _save(fig, out)


def plot_lexeval_abilities(ours: dict[str, dict[str, float]], out, title: str = "LexEval") -> Path:
    """LexEval's ability table as bars (the six LexCog abilities and Overall, x100; lexeval.ability_table), one bar
    per model; an ability with tasks missing is drawn from those scored and says how many (k/n tasks)."""
    import lexeval
    setup_fonts()
    zh = dict(zip([*lexeval.ABILITIES, "Overall"], ["记忆", "理解", "逻辑推理", "判别", "生成", "伦理", "总体"]))
    cols = list(zh)
    table, _ = lexeval.ability_table([{"task": t, "model_name": m, "score": v} for m, sc in ours.items()
                                      for t, v in sc.items() if t in lexeval.LEXEVAL_TASKS])
    if not table:
        raise ValueError("no LexEval task scores")
    width = 0.8 / len(table)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    values = []
    for i, row in enumerate(table):
        xs = np.arange(len(cols)) + (i - (len(table) - 1) / 2) * width
        ys = [np.nan if row[c] is None else row[c] for c in cols]
        values += [y for y in ys if not np.isnan(y)]
        ax.bar(xs, ys, width, label=row["model_name"])
        scores = ours[row["model_name"]]
        for x, c, y in zip(xs, cols, ys):
            tasks = list(lexeval.LEXEVAL_TASKS) if c == "Overall" else \
                [t for t in lexeval.LEXEVAL_TASKS if lexeval.ability(t) == c]
            have = sum(t in scores for t in tasks)
            label = ("" if np.isnan(y) else f"{y:.1f}") + ("" if have == len(tasks) else f"\n{have}/{len(tasks)} tasks")
            ax.text(x, 0 if np.isnan(y) else y, label, ha="center", va="bottom", fontsize=6)
    _zero_axis(ax, values)
    ax.set_xticks(np.arange(len(cols)), [f"{zh[c]}\n{c}" for c in cols], fontsize=8)
    ax.set_ylabel("得分 score (x100)")
    ax.set_title(f"{title}: 能力得分 by ability (LexCog)")
    ax.legend(fontsize=7, ncol=min(len(table), 4), loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return _save(fig, out)


SFT_PANELS = [("loss", "损失 loss"), ("lr", "学习率 lr"), ("tokens_per_s", "吞吐 tokens/s"), ("mfu", "MFU"),
              ("grad_norm", "梯度范数 grad norm"), ("peak_mem_gb", "峰值内存 peak memory (GB)")]  # sft.py's keys


def _panels(n: int):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes.flat[:n]:
        ax.ticklabel_format(axis="y", useOffset=False)  # no '1e-14+2e-2' labels on flat curves
    return fig, list(axes.flat[:n])


def sft_stage_links(run_dirs: list[Path]) -> dict[str, str]:
    """{run: the run it continues} among sft folders: B continues A only when B's config.json has init_from = A/final
    (a real second stage of one pipeline). Independent runs are not chained."""
    finals = {(d / "final").resolve(): d.name for d in run_dirs}
    links = {}
    for d in run_dirs:
        cfg = d / "config.json"
        init = utils.read_json(cfg).get("init_from") if cfg.is_file() else None
        prev = finals.get(Path(init).resolve()) if init else None
        if prev is None and init and Path(init).name == "final":  # a relative path written from another folder
            prev = next((n.name for n in run_dirs if n.name == Path(init).parent.name), None)
        if prev is not None and prev != d.name:
            links[d.name] = prev
    return links


def plot_sft_curves(runs: dict[str, list[dict]], out, window: int = 1, links: dict[str, str] | None = None) -> Path:
    """SFT metrics vs step. A stage that continues another (links: {run: previous run}, see sft_stage_links) follows
    it on one axis, a dotted line between; independent runs each start at their own step 0. The loss is drawn raw
    (thin) and as a moving average over `window` steps (thick)."""
    setup_fonts()
    links = links or {}
    panels = [(k, lab) for k, lab in SFT_PANELS if any(len(series(r, k)[1]) for r in runs.values())]
    if not panels:
        raise ValueError("no SFT metric found (expected keys: " + ", ".join(k for k, _ in SFT_PANELS) + ")")
    fig, axes = _panels(len(panels))
    offsets: dict[str, float] = {}

    def offset(name: str, seen=()) -> float:  # where a run starts on the axis: after the stage it continues
        if name not in offsets:
            prev = links.get(name)
            if prev in runs and prev not in seen:
                steps = series(runs[prev], "loss")[0]
                offsets[name] = offset(prev, seen + (name,)) + (float(steps.max()) if len(steps) else 0.0)
            else:
                offsets[name] = 0.0
        return offsets[name]

    for name, recs in runs.items():
        off = offset(name)
        for ax, (key, label) in zip(axes, panels):
            x, y = series(recs, key)
            if not len(y):
                continue
            if key == "loss" and window > 1:
                line, = ax.plot(x + off, smooth(y, window), label=name, lw=1.5)
                ax.plot(x + off, y, lw=0.5, alpha=0.3, color=line.get_color())
            else:
                ax.plot(x + off, y, label=name, lw=1.2)
            if off > 0:
                ax.axvline(off, color="gray", ls=":", lw=0.8)
    for ax, (key, label) in zip(axes, panels):
        _note_empty_series(ax, np.concatenate([series(r, key)[1] for r in runs.values()]))
        ax.set_title(f"{label} (滑动平均 {window})" if key == "loss" and window > 1 else label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    chained = [f"{b} continues {a}" for b, a in links.items() if a in runs and b in runs]
    fig.suptitle("SFT 训练曲线" + (f" ({'; '.join(chained)})" if chained else ""))
    return _save(fig, out)


RL_REWARDS = [("reward", "总奖励 total"), ("reward_charge", "罪名 charge"), ("reward_article", "法条 article"),
              ("reward_term", "刑期 term"), ("reward_format", "格式 format")]
RL_PANELS = [("kl", "KL"), ("clip_frac", "裁剪比例 clip fraction"), ("entropy", "熵 entropy"),
             ("completion_len", "回答长度 completion length"),
             ("zero_var_frac", "奖励全同的组 share of groups with equal rewards")]


def zero_by_construction(config: dict | None) -> dict[str, str]:
    """{metric: why it is 0 whatever the model does} from rl.py's config.json."""
    config = config or {}
    why = {}
    if config.get("beta") == 0:
        why["kl"] = "--beta 0: no reference model, KL not computed"
    if config.get("mu") == 1:
        why["clip_frac"] = "--mu 1: one update per batch, the ratio is 1"
    return why


def plot_grpo_curves(records: list[dict], out, window: int = 5, config: dict | None = None) -> Path:
    """GRPO: reward and its components (raw thin, moving average thick), then KL / clip fraction / entropy / length /
    share of groups with equal rewards. Steps without any learning signal (rl.py's no_learning_signal: every group's
    rewards equal) are marked on the reward panel. config: rl.py's config.json (panels that are 0 by construction
    say so)."""
    setup_fonts()
    rewards = [(k, lab) for k, lab in RL_REWARDS if len(series(records, k)[1])]
    others = [(k, lab) for k, lab in RL_PANELS if len(series(records, k)[1])]
    if not rewards and not others:
        raise ValueError("no GRPO metric found (expected keys: reward, reward_*, kl, clip_frac, entropy, "
                         "completion_len)")
    why = zero_by_construction(config)
    no_signal = np.array([r.get("step", i) for i, r in enumerate(records) if r.get("no_learning_signal") is True])
    fig, axes = _panels((1 if rewards else 0) + len(others))
    if rewards:
        ax = axes[0]
        for key, label in rewards:
            x, y = series(records, key)
            line, = ax.plot(x, smooth(y, window), lw=2 if key == "reward" else 1.2, label=label)
            ax.plot(x, y, lw=0.5, alpha=0.3, color=line.get_color())
        if len(no_signal):
            ax.plot(no_signal, np.zeros(len(no_signal)), "x", color="firebrick", ms=5,
                    label=f"无学习信号 no learning signal ({len(no_signal)} steps)")
        ax.set_title(f"奖励 reward (滑动平均 {window})")
        ax.legend(fontsize=7)
        _note_empty_series(ax, series(records, rewards[0][0])[1], f"{rewards[0][0]}: ")
    for ax, (key, label) in zip(axes[1 if rewards else 0:], others):
        x, y = series(records, key)
        ax.plot(x, y, lw=0.6, alpha=0.4)
        ax.plot(x, smooth(y, window), lw=1.5)
        if key == "zero_var_frac":
            ax.set_ylim(-0.05, 1.05)
            if len(no_signal):
                ax.plot(no_signal, np.ones(len(no_signal)), "x", color="firebrick", ms=5)
        if key != "zero_var_frac":  # 0 there is good news (every group had a learning signal), not a missing curve
            _note_empty_series(ax, y, why=why.get(key) if not np.any(y) else None)
        ax.set_title(label, fontsize=9 if len(label) > 30 else None)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle("GRPO 训练曲线")
    return _save(fig, out)


def win_rate_ci(row: dict) -> list | None:
    """The win rate's 95% interval of one summary row: judge.py writes {"ci95": {"win_rate": [lo, hi], ...}}; a bare
    "ci": [lo, hi] is read too. None when absent or undefined."""
    ci = row.get("ci95", {}).get("win_rate") if isinstance(row.get("ci95"), dict) else row.get("ci")
    return list(ci) if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci else None


def plot_judge(summary: dict, out) -> Path:
    """Win rate per category (and overall) with judge.py's 95% interval (summary ci95.win_rate: Wilson, over the
    n = W+T+L consistent pairs, so one pair out of three is not a [1, 1] interval); adjusted win rate beside; counts
    and n on top."""
    setup_fonts()
    rows = dict(summary.get("by_category") or {})
    rows["总体 overall"] = summary
    names = list(rows)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names) + 2), 4.5))
    win = np.array([np.nan if rows[n].get("win_rate") is None else rows[n]["win_rate"] for n in names], dtype=float)
    if np.all(np.isnan(win)):
        raise ValueError("no win rate in the summary (every judgment failed?): nothing to draw")
    adj = np.array([np.nan if rows[n].get("adjusted_win_rate") is None else rows[n]["adjusted_win_rate"]
                    for n in names], dtype=float)
    err = np.full((2, len(names)), np.nan)
    for i, n in enumerate(names):
        ci = win_rate_ci(rows[n])
        if ci is not None:
            err[:, i] = [max(win[i] - ci[0], 0), max(ci[1] - win[i], 0)]
    has_ci = not np.all(np.isnan(err))
    bars = ax.bar(x - 0.2, win, 0.4, yerr=np.nan_to_num(err) if has_ci else None, capsize=4,
                  label="胜率 win rate" + (" (95% CI)" if has_ci else ""))
    ax.bar(x + 0.2, adj, 0.4, alpha=0.6, label="调整胜率 adjusted (ties+inconsistent = ½)")
    counts = [f"W{rows[n].get('wins', '?')} T{rows[n].get('ties', '?')} L{rows[n].get('losses', '?')}"
              f" I{rows[n].get('inconsistent', '?')}\nn={sum(rows[n].get(k, 0) for k in ('wins', 'ties', 'losses'))}"
              for n in names]
    ax.bar_label(bars, labels=counts, fontsize=7, padding=2)
    ax.axhline(0.5, color="gray", ls=":", lw=0.8)
    ax.set_ylim(0, 1.25)
    ax.set_xticks(x, names)
    ax.set_ylabel("rate")
    ax.set_title("LLM 评审胜率 judge win rate by category")
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, out)


def plot_rubric(summary: dict, out) -> Path:
    """judge.py rubric's rubric_summary.json: mean 1-5 score per criterion, one bar per system with the bootstrap 95%
    interval; one panel overall, one per category. Answers without a valid score are counted under the bars."""
    setup_fonts()
    crits = summary.get("criteria") or []
    scores = summary.get("scores") or {}
    if not crits or not scores:
        raise ValueError("no criteria or no scores in the rubric summary: nothing to draw")
    cats = sorted({c for s in scores.values() for c in s.get("by_category", {})})
    panels = [("总体 overall", {n: s["overall"] for n, s in scores.items()})]
    panels += [(c, {n: s["by_category"].get(c, {}) for n, s in scores.items()}) for c in cats] if len(cats) > 1 else []
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5, 0.9 * len(crits) * len(scores)) * len(panels) / 1.5 + 2,
                                                      4.2), squeeze=False)
    width = 0.8 / len(scores)
    x = np.arange(len(crits))
    for ax, (title, group) in zip(axes[0], panels):
        for k, (name, cells) in enumerate(group.items()):
            cell = [cells.get(c["name"]) or {} for c in crits]
            mean = np.array([np.nan if c.get("mean") is None else c["mean"] for c in cell], dtype=float)
            err = np.array([[max(m - c["ci95"][0], 0), max(c["ci95"][1] - m, 0)] if c.get("ci95") else [0, 0]
                            for m, c in zip(mean, cell)]).T
            bars = ax.bar(x + (k - (len(scores) - 1) / 2) * width, mean, width, yerr=err, capsize=3, label=name)
            ax.bar_label(bars, labels=[f"n{c.get('n', 0)}" + (f" e{c['errors']}" if c.get("errors") else "")
                                       for c in cell], fontsize=6, padding=2)
        ax.set_xticks(x, [c.get("label") or c["name"] for c in crits])
        ax.set_ylim(0, 6.2)
        ax.set_yticks(range(6))
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("score 1-5 (95% CI)")
    axes[0][0].legend(fontsize=8, loc="upper center", ncol=min(len(scores), 4))
    fig.suptitle(f"LLM 评审逐项评分 rubric grades ({summary.get('judge_model', '?')})")
    return _save(fig, out)


def plot_rag_effect(effect: dict, out) -> Path:
    """evaluate.py judgment's rag_effect.json: each judgment metric without and with statute retrieval, side by side,
    the change written above (one panel per retrieval run, e.g. rag_k2), with the items compared and the recall of
    gold articles among the retrieved ones."""
    setup_fonts()
    runs = {tag: {k: v for k, v in r.items() if isinstance(v, dict)} for tag, r in (effect.get("runs") or {}).items()}
    runs = {tag: r for tag, r in runs.items() if r}
    if not runs:
        raise ValueError("rag_effect.json has no run to compare (needs metrics_plain.json and a --rag run)")
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 3.8 * len(runs)), squeeze=False)
    for ax, (tag, metrics) in zip(axes[:, 0], runs.items()):
        names = list(metrics)
        x = np.arange(len(names))
        without = np.array([metrics[k]["without_rag"] for k in names], dtype=float)
        with_ = np.array([metrics[k]["with_rag"] for k in names], dtype=float)
        bars0 = ax.bar(x - 0.2, without, 0.4, label="无检索 without retrieval")
        bars = ax.bar(x + 0.2, with_, 0.4, label=f"检索 with retrieval ({tag})")
        ax.bar_label(bars0, labels=[f"{v:.2f}" for v in without], fontsize=6, padding=1)
        ax.bar_label(bars, labels=[f"{v:.2f}\n{metrics[k]['change']:+.3f}" for k, v in zip(names, with_)], fontsize=6,
                     padding=1)
        ax.set_xticks(x, [k.replace("_", "\n", 1) for k in names], fontsize=7)
        ax.set_ylim(0, max(1.0, 1.15 * max(without.max(), with_.max())))
        recall = (effect["runs"][tag] or {}).get("rag_recall")
        ax.set_title(f"{tag}: {effect.get('items', '?')} items" +
                     (f", gold-article recall of retrieval {recall:.2f}" if isinstance(recall, (int, float)) else ""),
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("判决预测 judgment prediction: 法条检索的作用 with vs without statute retrieval\n(value; with: value "
                 "and change)", fontsize=11)
    return _save(fig, out)


CODE_OUTCOMES = [("ok", "ran ok"), ("raised", "raised"), ("timed_out", "timed out"), ("blocked", "blocked"),
                 ("limit", "limit"), ("no_code", "no code"), ("refused", "refused")]  # evaluate.exec_counts' keys


def plot_code_mode(rows: dict, out) -> Path:
    """evaluate.py generate --code's code_mode.json: per shot/task the official score answered directly vs by a
    model-written program (x100), and what became of the programs (ran ok / raised / timed out / blocked / ...)."""
    setup_fonts()
    rows = {k: r for k, r in rows.items() if isinstance(r, dict) and "direct" in r and "code" in r}
    if not rows:
        raise ValueError("code_mode.json has no task (expected {shot/task: {direct, code, n, ran, ...}})")
    names = list(rows)
    x = np.arange(len(names))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(9, 2.5 * len(names) + 5), 4))
    direct = [100 * rows[n]["direct"] for n in names]
    code = [100 * rows[n]["code"] for n in names]
    for dx, ys, label in ((-0.2, direct, "直接回答 direct"), (0.2, code, "代码 code (sandbox)")):
        bars = ax.bar(x + dx, ys, 0.4, label=label)
        ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], fontsize=7, padding=2)
    _zero_axis(ax, direct + code)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("得分 score (x100)")
    ax.set_title("直接 vs 代码 direct vs code mode", fontsize=10)
    ax.legend(fontsize=7)
    bottom = np.zeros(len(names))
    for key, label in CODE_OUTCOMES:
        v = np.array([rows[n].get(key, 0) for n in names], dtype=float)
        if v.any():
            ax2.bar(x, v, 0.5, bottom=bottom, label=label)
            bottom += v
    ax2.set_xticks(x, [f"{n}\n(n={rows[n].get('n', '?')})" for n in names], fontsize=8)
    ax2.set_ylabel("programs")
    ax2.set_title("程序执行结果 what the programs did", fontsize=10)
    ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("LawBench 代码模式 code mode (evaluate.py --code)")
    return _save(fig, out)


def plot_longdoc(metrics: dict, predictions: list[dict], out) -> Path:
    """evaluate.py longdoc: character F1 of every question (grouped by document), the mean as a line; how many
    documents had to be cut to the context."""
    setup_fonts()
    preds = [p for p in predictions if isinstance(p.get("char_f1"), (int, float))]
    if not preds:
        raise ValueError("no scored question (documents only: length statistics, no F1)")
    f1 = np.array([p["char_f1"] for p in preds], dtype=float)
    docs = [p.get("doc", 0) for p in preds]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(preds) + 2), 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = {d: i for i, d in enumerate(dict.fromkeys(docs))}
    ax.bar(np.arange(len(preds)), f1, color=[colors[order[d] % len(colors)] for d in docs])
    mean = metrics.get("char_f1", float(f1.mean()))
    ax.axhline(mean, color="k", ls="--", lw=1, label=f"mean {mean:.3f}")
    ax.set_xticks(np.arange(len(preds)), [f"d{d}q{i}" for i, d in enumerate(docs)], fontsize=7, rotation=90)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("char F1")
    ax.set_title(f"长文档 long documents: {len(preds)} questions on {len(order)} documents, "
                 f"{metrics.get('truncated_documents', '?')} of {metrics.get('documents', '?')} documents cut to the "
                 f"context", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    _note_empty_series(ax, f1, "char F1: ")
    return _save(fig, out)


def plot_data_mix(report: dict, out) -> Path:
    """data_report.json: kept / dropped (by reason) per source; samples and tokens per stage; decontamination hits."""
    setup_fonts()
    sources = report.get("sources") or {}
    stages = report.get("stages") or {}
    decon = report.get("decontamination") or {}
    check = report.get("decontamination_check")  # prepare_data.py says whether it ran and what the counts mean
    show_decon = bool(decon) or check is not None
    n = sum(bool(p) for p in (sources, stages, show_decon))
    if n == 0:
        raise ValueError("data report has none of: sources, stages, decontamination")
    fig, axes = _panels(n)
    axes = iter(axes)
    if sources:
        ax = next(axes)
        names = list(sources)
        kept = np.array([sources[s].get("kept", 0) for s in names], dtype=float)
        ax.barh(names, kept, label="保留 kept")
        reasons = sorted({r for s in names for r in (sources[s].get("dropped") or {})})
        left = kept.copy()
        for r in reasons:
            v = np.array([(sources[s].get("dropped") or {}).get(r, 0) for s in names], dtype=float)
            ax.barh(names, v, left=left, label=f"丢弃 {r}")
            left += v
        ax.set_xlabel("records")
        ax.set_title("数据来源 sources")
        ax.legend(fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
    if stages:
        ax = next(axes)
        names = list(stages)
        tok = [stages[s].get("tokens", 0) for s in names]
        mix = [stages[s].get("mix") or {} for s in names]  # prepare_data.py: legal / general samples and tokens
        if all(mix):
            legal = [m["legal"]["tokens"] for m in mix]
            general = [m["general"]["tokens"] for m in mix]
            ax.bar(names, legal, label="法律 legal")
            bars = ax.bar(names, general, bottom=legal, label="通用 general")
            for i, (lg, g) in enumerate(zip(legal, general)):
                if lg + g:
                    ax.text(i, lg / 2, f"legal {lg / (lg + g):.0%}", ha="center", va="center", fontsize=7)
            ax.legend(fontsize=6, loc="upper right")
        else:
            bars = ax.bar(names, tok)
        eff = [stages[s].get("packing_efficiency") for s in names]
        ax.bar_label(bars, labels=[f"{stages[s].get('samples', '?')} samples" +
                                   (f"\npack {e:.1%}" if isinstance(e, (int, float)) else "")
                                   for s, e in zip(names, eff)], fontsize=7)
        ax.set_ylabel("tokens")
        ax.margins(y=0.2)
        ax.set_title("训练阶段 stages: legal / general tokens" if all(mix) else "训练阶段 stages")
    if show_decon:
        ax = next(axes)
        tasks = sorted({t for v in decon.values() if isinstance(v, dict) for t in v},
                       key=lambda t: list(utils.LAWBENCH_TASKS).index(t) if t in utils.LAWBENCH_TASKS else 99)
        bottom = np.zeros(len(tasks))
        for src, hits in decon.items():
            if isinstance(hits, dict):
                v = np.array([hits.get(t, 0) for t in tasks], dtype=float)
                ax.bar([_task_label(t) for t in tasks], v, bottom=bottom, label=src)
                bottom += v
        removed = sum((s.get("dropped") or {}).get("contaminated", 0) for s in sources.values())
        if check is not None and not check.get("run"):
            note = f"未运行 NOT RUN\n{check.get('reason', '')}"
        elif not decon:
            note = f"no overlap found with {check.get('lawbench_items', '?')} LawBench items"
        else:
            note = f"training records removed: {removed} (sources panel: 丢弃 contaminated)"
        ax.text(0.5, 0.97, note, transform=ax.transAxes, ha="center", va="top", fontsize=7, wrap=True,
                color="firebrick" if check is not None and not check.get("run") else "black")
        ax.set_ylabel("LawBench items overlapped (distinct)", fontsize=8)
        ax.set_title("去污染 decontamination: LawBench items each source overlaps", fontsize=9)
        ax.set_ylim(0, 1.4 * max(bottom.max(initial=0), 1))  # room for the note above the bars
        if decon:
            ax.legend(fontsize=6, loc="center right")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("数据 data mix")
    return _save(fig, out)


def plot_length_hist(stage_lengths: dict[str, np.ndarray], out, seq_len: int | None = None) -> Path:
    """Histogram of sample lengths (tokens) per packed stage, log-spaced bins; seq_len drawn as a line."""
    setup_fonts()
    stage_lengths = {k: np.asarray(v) for k, v in stage_lengths.items() if len(v)}
    if not stage_lengths:
        raise ValueError("no sample lengths")
    hi = max(int(v.max()) for v in stage_lengths.values())
    bins = np.unique(np.geomspace(1, max(hi, 2) + 1, 40).astype(int))
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, v in stage_lengths.items():
        ax.hist(v, bins=bins, alpha=0.5,
                label=f"{name} (n={len(v)}, p50={int(np.median(v))}, p99={int(np.percentile(v, 99))})")
    if seq_len:
        ax.axvline(seq_len, color="k", ls=":", lw=1, label=f"seq_len {seq_len}")
    ax.set_xscale("log")
    ax.set_xlabel("样本长度 sample length (tokens)")
    ax.set_ylabel("samples")
    ax.set_title("样本长度分布 length histogram")
    ax.legend(fontsize=7)
    return _save(fig, out)


# ----------------------------------------------------------------------------------------------------------------------
# 5. CLI: find whatever exists in a run folder and draw it, saying what was skipped
# ----------------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PlotConfig:
    """Draw every figure the run folder has inputs for."""
    run: str = dataclasses.field(metadata={"help": "run folder (e.g. runs/demo) holding data/, sft1/, rl/, eval/..."})
    out: str | None = dataclasses.field(default=None, metadata={"help": "output folder (default RUN/plots)"})
    format: str = dataclasses.field(default="png", metadata={"help": "figure file format", "choices": ("png", "pdf")})
    lawbench_dir: str | None = dataclasses.field(
        default=str(utils.SHARED / "lawbench"),
        metadata={"help": "LawBench copy with predictions/<shot>/results.csv for published baselines (none: off)"})
    baselines: str = dataclasses.field(default=",".join(DEFAULT_BASELINES),
                                       metadata={"help": "comma-separated LawBench model names drawn beside ours"})
    window: int = dataclasses.field(default=5, metadata={"help": "moving-average window (steps) of the SFT loss and "
                                                                 "the GRPO curves (1: raw)", "min": 1})
    dpi: int = dataclasses.field(default=DPI, metadata={"help": "PNG resolution (dots per inch)", "min": 20})


def _lexeval_scores(path) -> bool:
    """A scores CSV whose task ids are LexEval's (1_1 ... 6_3; LawBench writes 1-1 ...)."""
    import lexeval
    tasks = {r["task"] for _, r in utils.iter_records(path)}
    return bool(tasks) and tasks <= set(lexeval.LEXEVAL_TASKS)


def _found(run: Path, pattern: str) -> list[Path]:
    return sorted(p for p in run.glob(pattern) if p.is_file())


def _tag(run: Path, p: Path) -> str:
    """eval/judgment/rag_effect.json -> 'judgment': the folders between eval*/ and the file, for the figure's name."""
    return "_".join(p.relative_to(run).parent.parts[1:]) or p.relative_to(run).parts[0]


def draw_run(cfg: PlotConfig) -> tuple[list[Path], list[str]]:
    """Draw everything drawable from cfg.run. Returns (written files, skipped messages)."""
    global DPI
    utils.check_fields(cfg)
    DPI = cfg.dpi
    run = Path(cfg.run)
    if not run.is_dir():
        raise utils.DataError(run, None, None, "run folder not found")
    out = Path(cfg.out) if cfg.out else run / "plots"
    ext = "." + cfg.format
    written, skipped = [], []

    def attempt(what: str, fn, *args):
        try:
            written.append(fn(*args))
        except (ValueError, utils.DataError) as e:  # a bad or empty input is reported, the other figures go on
            skipped.append(f"{what}: {e}")

    # data
    reports = _found(run, "data*/data_report.json")
    if reports:
        attempt("data mix", lambda: plot_data_mix(utils.read_json(reports[0]), out / f"data_mix{ext}"))
    else:
        skipped.append("data mix: no data*/data_report.json")
    stages = sorted(p.parent for p in run.glob("data*/*/cu_seqlens.npy") if (p.parent / "cu_offsets.npy").is_file())
    if stages:
        def hist():
            meta = [utils.read_json(s / "meta.json") for s in stages if (s / "meta.json").is_file()]
            return plot_length_hist({s.name: sample_lengths(s) for s in stages}, out / f"length_hist{ext}",
                                    seq_len=meta[0].get("seq_len") if meta else None)
        attempt("length histogram", hist)
    else:
        skipped.append("length histogram: no packed stage (data*/<stage>/cu_seqlens.npy)")

    # training curves
    sft = _found(run, "sft*/metrics.jsonl")
    if sft:
        attempt("SFT curves", lambda: plot_sft_curves({p.parent.name: read_metrics(p) for p in sft},
                                                      out / f"sft_curves{ext}", cfg.window,
                                                      sft_stage_links([p.parent for p in sft])))
    else:
        skipped.append("SFT curves: no sft*/metrics.jsonl")
    rl = _found(run, "rl*/metrics.jsonl")
    for p in rl:
        config = utils.read_json(p.parent / "config.json") if (p.parent / "config.json").is_file() else None
        attempt(f"GRPO curves ({p.parent.name})",
                lambda p=p, c=config: plot_grpo_curves(read_metrics(p), out / f"grpo_curves_{p.parent.name}{ext}",
                                                       cfg.window, c))
    if not rl:
        skipped.append("GRPO curves: no rl*/metrics.jsonl")

    # LawBench
    csvs = []
    for p in _found(run, "eval*/**/scores*.csv"):  # evaluate.py also writes a category table next to scores.csv
        header = utils.read_text(p).split("\n", 1)[0].strip().split(",")
        if {"task", "model_name", "score"} <= set(header):
            csvs.append(p)
        else:
            skipped.append(f"{p.relative_to(run)}: not a per-task scores file (no task,model_name,score header)")
    for p in csvs:
        if _lexeval_scores(p):  # LexEval's scores.csv (evaluate.py score --benchmark lexeval): its ability chart
            setting = "few_shot" if "few_shot" in str(p.relative_to(run)) else "zero_shot"
            tag = "_".join(p.relative_to(run).with_suffix("").parts[1:]) or "scores"
            attempt(f"LexEval ({p.relative_to(run)})", lambda p=p, tag=tag, setting=setting: plot_lexeval_abilities(
                utils.read_scores_csv(p), out / f"lexeval_abilities_{tag}{ext}", f"LexEval {setting}"))
            continue
        shot = "one_shot" if "one_shot" in str(p.relative_to(run)) else "zero_shot"
        names = [b for b in cfg.baselines.split(",") if b]
        base = load_published(cfg.lawbench_dir, shot, names) if cfg.lawbench_dir else {}
        if not base:
            skipped.append(f"published baselines for {p.name}: no {cfg.lawbench_dir}/predictions/{shot}/results.csv")
        tag = "_".join(p.relative_to(run).with_suffix("").parts[1:]) or "scores"

        def lawbench(p=p, base=base, shot=shot, tag=tag):
            ours = utils.read_scores_csv(p)
            # evaluate.py --code scores 3-7 a second time as <model_name>-code: a mode of the same model, drawn by
            # the code-mode figure, not a model with 1 of 20 tasks
            code = [m for m in ours if m.endswith("-code") and m[:-len("-code")] in ours]
            ours = {(f"{m} (ours)" if m in base else m): s for m, s in ours.items() if m not in code}
            a = plot_lawbench_tasks(ours, base, out / f"lawbench_tasks_{tag}{ext}", f"LawBench {shot}")
            written.append(a)
            return plot_lawbench_categories(ours, base, out / f"lawbench_categories_{tag}{ext}", f"LawBench {shot}")
        attempt(f"LawBench ({p.relative_to(run)})", lawbench)
    if not csvs:
        skipped.append("LawBench: no eval*/**/scores*.csv")

    # evaluate.py: code mode, retrieval, long documents
    codes, effects = _found(run, "eval*/**/code_mode.json"), _found(run, "eval*/**/rag_effect.json")
    longdocs = [p for p in _found(run, "eval*/**/metrics.json") if (p.parent / "predictions.jsonl").is_file()
                and "char_f1" in utils.read_json(p)]
    for p in codes:
        attempt(f"code mode ({p.relative_to(run)})",
                lambda p=p: plot_code_mode(utils.read_json(p), out / f"code_mode_{_tag(run, p)}{ext}"))
    for p in effects:
        attempt(f"retrieval ({p.relative_to(run)})",
                lambda p=p: plot_rag_effect(utils.read_json(p), out / f"rag_effect_{_tag(run, p)}{ext}"))
    for p in longdocs:
        attempt(f"long documents ({p.relative_to(run)})",
                lambda p=p: plot_longdoc(utils.read_json(p), read_metrics(p.parent / "predictions.jsonl"),
                                         out / f"longdoc_{_tag(run, p)}{ext}"))
    for what, found, pattern in (("code mode", codes, "code_mode.json (evaluate.py generate --code)"),
                                 ("retrieval", effects, "rag_effect.json (evaluate.py judgment, plain and --rag)"),
                                 ("long documents", longdocs, "metrics.json + predictions.jsonl (evaluate.py "
                                                              "longdoc)")):
        if not found:
            skipped.append(f"{what}: no eval*/**/{pattern}")

    # judge
    summaries = _found(run, "judge*/summary.json")
    for p in summaries:
        attempt(f"judge ({p.parent.name})", lambda p=p: plot_judge(utils.read_json(p), out / f"judge_{p.parent.name}{ext}"))
    if not summaries:
        skipped.append("judge: no judge*/summary.json (judge.py runs only with an endpoint configured)")
    for p in _found(run, "judge*/rubric_summary.json"):  # judge.py rubric, beside the win rates
        attempt(f"rubric ({p.parent.name})",
                lambda p=p: plot_rubric(utils.read_json(p), out / f"rubric_{p.parent.name}{ext}"))
    return written, skipped


def main(argv=None) -> int:
    cfg = utils.parse_config(PlotConfig, argv)
    try:
        written, skipped = draw_run(cfg)
    except utils.DataError as e:
        utils.fail("plots.py", e)
    for p in written:
        print(f"wrote   {p}")
    for s in skipped:
        print(f"skipped {s}")
    if not written:
        print(f"plots: nothing to draw in {cfg.run}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
