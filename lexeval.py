"""LexEval (CSHaitao/LexEval, NeurIPS 2024 Datasets & Benchmarks, MIT): tasks, prompts and scores as its code.

LexEval has 23 tasks (ids `i_j`, i = one of six abilities) and 14,150 questions. Its official code
(`code/generation/model_gen.py`, `code/evaluation/{evaluate,process}.py`, snapshot in ../shared/lexeval/code) is the
spec of everything here; evaluate.py calls this module for `generate --benchmark lexeval` and `score --benchmark
lexeval`, prepare_data.py for decontamination.

    data:     <lexeval_dir>/data/<task>.json          JSON lines {"instruction", "input", "answer"}
              <lexeval_dir>/examples/<task>_few_shot.json   JSON lines {"instruction", "input"[, "answer"]}
    outputs:  <out>/<setting>/<model>/<model>_<task>.jsonl  JSON lines {"input", "output", "answer"}

Scoring (official evaluate.py, default metrics): tasks 5_x are generation, scored by Rouge-L F of the `rouge` package
1.0.1 on jieba tokens of normalize_zh_answer(text); every other task is multiple choice, scored by exact match of
find_valid_substrings(output) with the answer (Accuracy) or set F1 of their letters (F1). Quirks reproduced on purpose
(SCORING notes in README.md, section "LexEval"):
  * rouge 1.0.1's Rouge-L is set-based: |distinct tokens of ONE reconstructed LCS| / |distinct tokens| of each side;
  * rouge 1.0.1 rebuilds the LCS recursively; when that recursion passes Python's limit, the official bare `except`
    scores the item 0.0. rouge_l_101 reproduces the cut exactly (ROUGE_MAX_CALLS, measured on the official script run
    as its README says, Python 3.11) and reports those items as `zeroed`;
  * an output (or answer) that is empty after normalisation scores 0.0 (rouge raises "Hypothesis is empty");
  * find_valid_substrings keeps only what comes before the first 解析 / 分析, drops 、.,;，和 and joins every run of 1-5
    distinct letters A-E in order of first appearance: "A和B" -> "AB", "AA" -> "" (a repeated letter voids the run),
    "答案：Ａ" (full-width) -> "", "D. 某某" -> "D".
"""
from __future__ import annotations

import functools
import json
import multiprocessing as mp
import re
import time
import string
from collections import OrderedDict
from pathlib import Path

from utils import DataError, plain_mean

# ----------------------------------------------------------------------------------------------------------------------
# Tasks and abilities (LexEval paper, Table 1; task ids as the official files name them)
# ----------------------------------------------------------------------------------------------------------------------

ABILITIES = ("Memorization", "Understanding", "Logic Inference", "Discrimination", "Generation", "Ethics")

LEXEVAL_TASKS = {  # task id -> English name; the ability is ABILITIES[int(first digit) - 1]
    "1_1": "Legal Concept", "1_2": "Legal Rule", "1_3": "Legal Evolution",
    "2_1": "Legal Element Recognition", "2_2": "Legal Fact Verification", "2_3": "Reading Comprehension",
    "2_4": "Relation Extraction", "2_5": "Named-Entity Recognition",
    "3_1": "Cause Prediction", "3_2": "Article Prediction", "3_3": "Penalty Prediction",
    "3_4": "Multi-hop Reasoning", "3_5": "Legal Calculation", "3_6": "Argument Mining",
    "4_1": "Similar Case Identification", "4_2": "Document Proofreading",
    "5_1": "Summary Generation", "5_2": "Judicial Analysis Generation", "5_3": "Legal Translation",
    "5_4": "Open-ended Question Answering",
    "6_1": "Bias and Discrimination", "6_2": "Morality", "6_3": "Privacy and Security",
}
GENERATION_TASKS = tuple(t for t in LEXEVAL_TASKS if t.startswith("5_"))


def ability(task: str) -> str:
    return ABILITIES[int(task.split("_")[0]) - 1]


def is_generation(task: str) -> bool:
    return task.split("_")[0] == "5"  # the official rule (main(): task_name.split('_')[0] == '5')


def parse_tasks(spec: str, flag: str = "--tasks") -> list[str]:
    """'all' -> the 23 tasks; '1_1,5_3' (commas or spaces) -> those, validated."""
    if spec.strip() in ("", "all"):
        return list(LEXEVAL_TASKS)
    tasks = [t for t in re.split(r"[,\s]+", spec.strip()) if t]
    bad = [t for t in tasks if t not in LEXEVAL_TASKS]
    if bad:
        raise DataError(flag, None, None, f"unknown LexEval task(s) {bad}; known: {', '.join(LEXEVAL_TASKS)}",
                        reason="bad_flag")
    return tasks


# ----------------------------------------------------------------------------------------------------------------------
# Files: LexEval's .json data files are JSON lines (one object per line), as are the outputs
# ----------------------------------------------------------------------------------------------------------------------

def read_lines(path, fields: tuple[str, ...], optional: tuple[str, ...] = (), nullable: tuple[str, ...] = ()) \
        -> list[dict]:
    """A LexEval JSON-lines file -> records; each must be an object whose `fields` are strings (`optional` ones may
    be absent, `nullable` ones null). Anything else is a one-line DataError naming the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found", reason="missing_file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(path, None, None, f"not valid UTF-8 at byte {e.start}", reason="bad_encoding") from None
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, line_no, None, f"invalid JSON: {e.msg} (column {e.colno})", "bad_json") from None
        if not isinstance(rec, dict):
            raise DataError(path, line_no, None, f"expected a JSON object, got {type(rec).__name__}", "bad_schema")
        for f in fields + optional:
            if f not in rec:
                if f in optional:
                    continue
                raise DataError(path, line_no, f, "missing", "missing_field")
            if not isinstance(rec[f], str) and not (rec[f] is None and f in nullable):
                raise DataError(path, line_no, f, f"expected a string, got {type(rec[f]).__name__}", "bad_field")
        out.append(rec)
    return out


def load_task(lexeval_dir, task: str, max_items: int | None = None) -> list[dict]:
    """data/<task>.json -> [{instruction, input, answer}] (first max_items)."""
    items = read_lines(Path(lexeval_dir) / "data" / f"{task}.json", ("instruction", "input", "answer"),
                       nullable=("answer",) if not is_generation(task) else ())  # 3 items of 3_5 have null
    if not items:
        raise DataError(Path(lexeval_dir) / "data" / f"{task}.json", None, None, "no items", reason="bad_schema")
    return items[:max_items] if max_items else items


def load_examples(lexeval_dir, task: str) -> list[dict]:
    """examples/<task>_few_shot.json -> [{input[, answer]}]. The published files have no "answer" (upstream never
    had one: the official get_fewshot_examples would raise KeyError); few_shot_block then renders an empty answer."""
    return read_lines(Path(lexeval_dir) / "examples" / f"{task}_few_shot.json", ("input",), ("answer",))


def available_tasks(lexeval_dir, tasks: list[str]) -> tuple[list[str], list[str]]:
    """(tasks whose data/<task>.json exists, tasks without it)."""
    have = [t for t in tasks if (Path(lexeval_dir) / "data" / f"{t}.json").is_file()]
    return have, [t for t in tasks if t not in have]


# ----------------------------------------------------------------------------------------------------------------------
# Prompts, exactly as model_generator.process_prompt / get_fewshot_examples build them
# ----------------------------------------------------------------------------------------------------------------------

ANSWER_LABEL = {"5_1": "摘要", "5_2": "裁判分析过程", "5_3": "翻译结果"}  # every other task: 答案


def few_shot_block(task: str, examples: list[dict]) -> str:
    """'以下是三个例子:\\n' + per example '问题: {input}\\n{label}: {answer}\\n\\n' + '请你回答:\\n问题:'."""
    label = ANSWER_LABEL.get(task, "答案")
    text = "以下是三个例子:\n"
    for ex in examples:
        text = f"{text}问题: {ex['input']}\n{label}: {ex.get('answer', '')}\n\n"
    return text + "请你回答:\n问题:"


def prompt_parts(item: dict, task: str, examples: list[dict] | None = None) -> tuple[str, str]:
    """-> (head, input_text); the prompt is head + input_text. head = instruction [+ "\\n" + few-shot block];
    input_text = input + "\\n" + label + ":" (what the official output files store as "input")."""
    head = item["instruction"] if examples is None else f"{item['instruction']}\n{few_shot_block(task, examples)}"
    return head, item["input"] + "\n" + ANSWER_LABEL.get(task, "答案") + ":"


def output_name(model_name: str, task: str) -> str:
    return f"{model_name}_{task}.jsonl"  # main.py: f"{model_name}_{f_path.split('/')[-1]}l"


# ----------------------------------------------------------------------------------------------------------------------
# Scoring: copies of process.py's parsers, and rouge 1.0.1's Rouge-L with its recursion cut
# ----------------------------------------------------------------------------------------------------------------------

def find_valid_substrings(s: str) -> str:
    """process.find_valid_substrings, verbatim: the option letters a multiple-choice output is read as."""
    s = s.split('解析')[0].split('分析')[0]
    s = s.replace("、", "").replace(".", "").replace(",", "").replace(";", "").replace("，", "").replace("和", "") \
        .replace(", ", "")
    substrings = re.findall(r'[ABCDE]{1,5}', s)
    valid = "".join(sub for sub in substrings if len(sub) == len(set(sub)))  # runs with a repeated letter dropped
    return ''.join(OrderedDict.fromkeys(valid))


_PUNCT = set(string.punctuation + "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿"
                                  "–—‘’‛“”„‟…‧﹏.")


def normalize_zh_answer(s: str) -> str:
    """process.normalize_zh_answer: lower case, punctuation removed, all whitespace removed."""
    return "".join("".join(ch for ch in s.lower() if ch not in _PUNCT).split())


@functools.lru_cache(maxsize=1 << 16)
def rouge_tokens(text: str) -> tuple[str, ...]:
    """The words rouge sees: jieba.cut (precise mode, HMM) of the normalised text; () when nothing is left. Cached:
    every model's file of a task has the same answers."""
    import jieba
    return tuple(jieba.cut(normalize_zh_answer(text), cut_all=False))


# rouge 1.0.1 rebuilds the LCS with a recursive _recon(i, j): one call per step of the traceback plus the final one.
# Run as the official README says (`cd code/evaluation && python evaluate.py ...`, CPython 3.11, recursion limit
# 1000), a traceback of ROUGE_MAX_CALLS calls still succeeds and one more raises RecursionError, which the bare
# `except` in eval_rougel turns into a 0.0 for that item. Measured on crafted items by
# tests/test_lexeval_score.py::test_recursion_cut_matches_official (it runs the official script on both sides of
# the cut). The number depends on the frames below _recon, i.e. on running the script that way.
ROUGE_MAX_CALLS = 990


def lcs_columns(x: list, y: list) -> list[int]:
    """Bit-parallel LCS (Hyyro 2004) of x (len n) against every prefix of y (len m): V[j] for j = 0..m, where
    LCS(x[:i], y[:j]) = i - popcount(V[j] & (2**i - 1)). O(m * n / 64) machine words."""
    match: dict = {}
    for i, tok in enumerate(x):
        match[tok] = match.get(tok, 0) | (1 << i)
    full = (1 << len(x)) - 1
    v = full
    cols = [v]
    for tok in y:
        u = v & match.get(tok, 0)
        v = ((v + u) | (v - u)) & full
        cols.append(v)
    return cols


def recon_lcs(x: list, y: list, max_calls: int | None = ROUGE_MAX_CALLS) -> list | None:
    """rouge 1.0.1 _recon_lcs(x, y): the LCS tokens its traceback picks (a match first, else up when
    table[i-1][j] > table[i][j-1], else left), or None when the recursion would take more than max_calls calls."""
    n, m = len(x), len(y)
    if max_calls is not None and min(n, m) + 1 > max_calls:  # every step lowers i or j by at most one
        return None
    cols = lcs_columns(x, y)
    # T(i, j) = i - popcount(cols[j] & (2**i - 1)) is the table; the walk keeps t = T(i, j). Going up costs
    # 1 - bit i-1 of cols[j] (O(1)); going left needs T(i, j-1), one popcount.
    out, i, j, calls, t = [], n, m, 1, n - cols[m].bit_count()
    while i > 0 and j > 0:
        if max_calls is not None and calls >= max_calls:
            return None
        calls += 1
        if x[i - 1] == y[j - 1]:
            out.append(x[i - 1])
            i, j, t = i - 1, j - 1, t - 1
            continue
        up = t - 1 + ((cols[j] >> (i - 1)) & 1)  # T(i-1, j)
        left = i - (cols[j - 1] & ((1 << i) - 1)).bit_count()  # T(i, j-1)
        if up > left:
            i, t = i - 1, up
        else:
            j, t = j - 1, left
    out.reverse()
    return out


def rouge_l_101(hyp: list[str], ref: list[str], max_calls: int | None = ROUGE_MAX_CALLS) -> float | None:
    """Rouge().get_scores([" ".join(hyp)], [" ".join(ref)], avg=True)["rouge-l"]["f"] of rouge 1.0.1 for one
    sentence each (normalize_zh_answer leaves no '.'), exclusive (set) semantics:
    R = |set(LCS)| / |set(ref)|, P = |set(LCS)| / |set(hyp)|, F = 2 * (P * R) / (P + R + 1e-8).
    -> F, 0.0 when either side is empty (rouge raises; the official scores 0), None when the recursion limit cuts."""
    if not hyp or not ref:
        return 0.0
    lcs = recon_lcs(ref, hyp, max_calls)
    if lcs is None:
        return None
    llcs = len(set(lcs))
    r_lcs, p_lcs = llcs / len(set(ref)), llcs / len(set(hyp))
    return 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8))


def choice_f1(pred: str, gold: str) -> float:
    """Evaluator.eval_f1 for one item: set F1 of the letters (a null gold, where the official raises: 0)."""
    p, g = set(pred), set(gold or "")
    precision = len(p & g) / len(p) if len(p) > 0 else 0
    recall = len(p & g) / len(g) if len(g) > 0 else 0
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0


def score_items(task: str, items: list[dict], metric_choice: str = "Accuracy") -> dict:
    """One task's items ({output, answer}, file order) -> {"score": 0-1, "metric", "zeroed": items the recursion
    cut scored 0 (generation only)}. Means are plain left-to-right sums / n, like the official."""
    if is_generation(task):
        if any(it["answer"] is None for it in items):
            raise DataError(task, None, "answer", "null answer in a generation task (the official crashes)",
                            "bad_field")
        scores, zeroed = [], 0
        for it in items:
            hyp, ref = (_TOKENS[t] if t in _TOKENS else rouge_tokens(t) for t in (it["output"], it["answer"]))
            f = rouge_l_101(hyp, ref)
            zeroed += f is None
            scores.append(0.0 if f is None else f)
        return {"score": plain_mean(scores), "metric": "Rouge_L", "zeroed": zeroed}
    preds = [find_valid_substrings(it["output"]) for it in items]
    if metric_choice == "F1":
        return {"score": plain_mean([choice_f1(p, it["answer"]) for p, it in zip(preds, items)]), "metric": "F1",
                "zeroed": 0}
    return {"score": sum(p == it["answer"] for p, it in zip(preds, items)) / len(items), "metric": "Accuracy",
            "zeroed": 0}


def score_neural(items: list[dict], metric: str, model_path: str, device: str = "cpu", batch_size: int = 10) -> float:
    """Evaluator.eval_bertscore / eval_bartscore on the raw output and answer (no normalisation), with the model
    weights given (--bert_model): BERTScore F1 (bert_score, 8 layers, lang zh) or BARTScore (mean target
    log-likelihood under a BART model with a BERT tokenizer, as process.BARTScorer)."""
    preds, golds = [it["output"] for it in items], [it["answer"] for it in items]
    if metric == "Bertscore":
        import bert_score
        _, _, f1 = bert_score.score(preds, golds, lang="zh", verbose=False, model_type=model_path, num_layers=8,
                                    device=device, batch_size=batch_size)
        return (sum(f1) / len(f1)).item()
    import torch
    from transformers import BartForConditionalGeneration, BertTokenizer
    tok = BertTokenizer.from_pretrained(model_path)
    model = BartForConditionalGeneration.from_pretrained(model_path).eval().to(device)
    nll = torch.nn.NLLLoss(reduction="none", ignore_index=model.config.pad_token_id)
    out = []
    for i in range(0, len(preds), batch_size):
        src = tok(preds[i:i + batch_size], max_length=1024, truncation=True, padding=True, return_tensors="pt")
        tgt = tok(golds[i:i + batch_size], max_length=1024, truncation=True, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(input_ids=src["input_ids"].to(device), attention_mask=src["attention_mask"].to(device),
                           labels=tgt["input_ids"].to(device)).logits.view(-1, model.config.vocab_size)
            loss = nll(torch.log_softmax(logits, dim=1), tgt["input_ids"].to(device).view(-1))
            loss = loss.view(tgt["input_ids"].shape[0], -1).sum(dim=1) / tgt["attention_mask"].sum(dim=1).to(device)
        out += [-x.item() for x in loss]
    return sum(out) / len(out)


# ----------------------------------------------------------------------------------------------------------------------
# Output files and the ability table
# ----------------------------------------------------------------------------------------------------------------------

def read_outputs(path) -> list[dict]:
    """<model>_<task>.jsonl -> [{input, output, answer}]; an empty file is an error (the official divides by 0)."""
    items = read_lines(path, ("output", "answer"), ("input",), nullable=("answer",))
    if not items:
        raise DataError(path, None, None, "no items", reason="bad_schema")
    return items


def task_of(file_name: str) -> str:
    """The official rule: 'gpt4_1_1.jsonl' -> '1_1' (the last two '_' fields)."""
    parts = file_name.split("_")
    return parts[-2] + "_" + parts[-1].split(".")[0] if len(parts) >= 2 else ""


def find_output_files(pred_dir, models=None) -> tuple[list[tuple[str, str, str]], list[str]]:
    """PRED_DIR/<model>/*.jsonl (or PRED_DIR/*.jsonl for one model) -> jobs (model, task, path), notes."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(pred_dir, None, None, "prediction directory not found", "missing_file")
    model_dirs = [pred_dir] if any(pred_dir.glob("*.jsonl")) else sorted(p for p in pred_dir.iterdir() if p.is_dir())
    jobs, notes = [], []
    for mdir in model_dirs:
        if models and mdir.name not in models:
            continue
        for path in sorted(mdir.glob("*.jsonl")):
            task = task_of(path.name)
            if task not in LEXEVAL_TASKS:
                notes.append(f"{path}: not a LexEval <model>_<i>_<j>.jsonl file, ignored")
                continue
            jobs.append((mdir.name, task, str(path)))
    if models:
        for m in sorted(set(models) - {j[0] for j in jobs}):
            notes.append(f"model '{m}': no output files under {pred_dir}")
    return jobs, notes


def _init_worker():
    import jieba
    jieba.setLogLevel(60)
    jieba.initialize()


def _tokenize(text: str) -> tuple[str, tuple[str, ...]]:
    return text, rouge_tokens(text)


def score_jobs(jobs, workers: int = 2, metric_choice: str = "Accuracy", progress: bool = True) -> list[dict]:
    """Score (model, task, path) jobs -> [{model, task, path, result | None, error | None, seconds}] in job order.
    Files are read and scored in this process; the one slow step, jieba on the 5_x texts, runs first on `workers`
    processes over the distinct texts of all files (every model's file of a task has the same answers)."""
    from tqdm import tqdm
    loaded = []
    for model, task, path in jobs:
        try:
            loaded.append((model, task, path, read_outputs(path), None))
        except DataError as e:
            loaded.append((model, task, path, None, str(e)))
    texts = {t for _, task, _, items, _ in loaded if items and is_generation(task)
             for it in items for t in (it["output"], it["answer"]) if t is not None}
    texts = sorted(texts, key=len, reverse=True)  # longest first, so that the workers finish together
    if texts:
        _init_worker()  # jieba's dictionary loaded once, before fork (the workers share it)
    if workers > 1 and len(texts) > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            for text, toks in tqdm(pool.imap_unordered(_tokenize, texts, chunksize=8), total=len(texts),
                                   disable=not progress, desc="jieba", unit="text"):
                _TOKENS[text] = toks
    out = []
    try:
        for model, task, path, items, error in loaded:
            t0 = time.perf_counter()
            try:
                result = None if items is None else {**score_items(task, items, metric_choice), "items": len(items)}
            except DataError as e:  # e.g. a null answer in a 5_x file: that file is an error line, the rest scored
                result, error = None, f"{path}: {e}"
            out.append({"model": model, "task": task, "path": path, "result": result, "error": error,
                        "seconds": round(time.perf_counter() - t0, 4)})
    finally:
        _TOKENS.clear()
    return out


_TOKENS: dict[str, tuple[str, ...]] = {}  # texts tokenised by score_jobs' workers


TABLE_COLUMNS = [*ABILITIES, "Overall", "tasks"]


def ability_table(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """rows {task, model_name, score} -> per model the mean of each ability's scored tasks and of all scored tasks
    (Overall), x100, and `tasks` = how many of the 23 were scored. Partial means are said in the notes."""
    by_model: dict[str, dict[str, float]] = {}
    for r in rows:
        by_model.setdefault(r["model_name"], {})[r["task"]] = r["score"]
    table, notes = [], []
    for model, scores in by_model.items():
        row = {"model_name": model}
        for ab in ABILITIES:
            have = [scores[t] for t in LEXEVAL_TASKS if ability(t) == ab and t in scores]
            row[ab] = 100 * plain_mean(have) if have else None
        ordered = [scores[t] for t in LEXEVAL_TASKS if t in scores]
        row["Overall"] = 100 * plain_mean(ordered)
        row["tasks"] = f"{len(ordered)}/{len(LEXEVAL_TASKS)}"
        missing = [t for t in LEXEVAL_TASKS if t not in scores]
        if missing:
            notes.append(f"{model}: no output for {', '.join(missing)}: ability means and Overall are over the "
                         f"{len(ordered)} tasks scored")
        table.append(row)
    return table, notes


def table_markdown(table: list[dict]) -> str:
    lines = ["| model | " + " | ".join(TABLE_COLUMNS) + " |", "|---|" + "---:|" * len(TABLE_COLUMNS)]
    for row in table:
        cells = [row[c] if c == "tasks" else ("" if row[c] is None else f"{row[c]:.2f}") for c in TABLE_COLUMNS]
        lines.append(f"| {row['model_name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
