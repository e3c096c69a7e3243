"""
LexLab evaluation: LawBench generation, judgment prediction, long documents, statute retrieval.

    python evaluate.py generate --model DIR --lawbench_dir ../shared/lawbench --out preds [--shots zero|one|both]
                                [--tasks 1-1,3-3] [--max_items N] [--backend hf|vllm] [--raw true] [--rag ARTICLES.jsonl]
    python evaluate.py judgment --model DIR --data ../shared/data/cail2018/test.jsonl --out runs/jp [--max_items N]
                                [--rag ../shared/data/laws/articles.jsonl --rag_k 3]
    python evaluate.py longdoc  --model DIR --data data/longdoc_sample.jsonl --out runs/longdoc

Sections (banner comments below):
  1. Statute retrieval      - BM25 over jieba tokens of an articles.jsonl, the top-k prepended to a prompt
  2. Generation             - LawBench prompts -> predictions in LawBench's own layout, resumable
  3. Judgment prediction    - CAIL2018 facts -> answer block -> charge / article / term / life-death metrics
  4. Long documents         - document + questions, middle truncation to the context, char-level F1
  5. CLI                    - one subcommand per section; each has a config dataclass (utils.parse_config)

Every subcommand saves its resolved config (config.json) and appends a line to metrics.jsonl in its output folder.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import utils
from utils import DataError


def _append_metrics(out_dir, record: dict) -> None:
    """One line per run in OUT/metrics.jsonl (never overwritten, so with/without runs sit side by side)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_json(path, obj) -> None:
    """Write JSON atomically (tmp file then rename): an interrupted run never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=4), encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Statute retrieval (BM25 over jieba tokens; LexPro-style retrieval at inference)
# ----------------------------------------------------------------------------------------------------------------------

_PUNCT = set("，。、；：？！“”‘’（）《》【】…—-,.;:?!()[]<>\"' \t\r\n　×")


def bm25_tokens(text: str) -> list[str]:
    """jieba tokens (precise mode) without whitespace / punctuation: the unit BM25 counts."""
    import jieba
    return [t for t in jieba.lcut(text) if t.strip() and not all(c in _PUNCT for c in t)]


class StatuteIndex:
    """BM25 (rank_bm25.BM25Okapi) over the articles of an articles.jsonl
    ({law, article_cn, article_num, article_sub, text, ...}; see ../shared/data/laws/README.md).

    law: keep only this law (e.g. "刑法"); None or "all" keeps every law in the file.
    """

    def __init__(self, path, law: str | None = "刑法"):
        from rank_bm25 import BM25Okapi
        self.path, self.articles = str(path), []
        for line, rec in utils.iter_records(path):
            for f in ("law", "article_cn", "text"):
                utils.require(rec, f, path, line)
            utils.require(rec, "article_num", path, line, kind=int)
            if law in (None, "", "all") or rec["law"] == law:
                self.articles.append(rec)
        if not self.articles:
            raise DataError(path, None, "law", f"no article of law {law!r} in the file", reason="empty_index")
        self.bm25 = BM25Okapi([bm25_tokens(a["article_cn"] + a["text"]) for a in self.articles])

    def search(self, query: str, k: int = 3) -> list[dict]:
        """The k articles with the highest BM25 score for `query` (ties: file order)."""
        scores = self.bm25.get_scores(bm25_tokens(query))
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
        return [self.articles[i] for i in order]

    def context(self, query: str, k: int = 3) -> str:
        """Retrieved articles as the text prepended to a prompt."""
        lines = [f"《{a['law']}》{a['article_cn']}：{a['text']}" for a in self.search(query, k)]
        return "以下是可能相关的法条：\n" + "\n".join(lines) + "\n\n"


# ----------------------------------------------------------------------------------------------------------------------
# 2. Generation (LawBench: 20 tasks, zero- and one-shot; predictions in LawBench's own layout)
# ----------------------------------------------------------------------------------------------------------------------
# Layout written (what the official scorer and `evaluate.py score` read):
#   <out>/zero_shot/<model_name>/<task>.json = {"0": {"origin_prompt": [{"role": "HUMAN", "prompt": P}],
#                                                    "prediction": "...", "refr": answer}, "1": ...}
# with P = instruction + "\n" + question (exactly what LawBench's own generation sent; task 2-1's scorer cuts the
# source sentence out of it). Resume: finished tasks are skipped; a task in progress keeps its finished items in
# <task>.json.partial (one JSON line per item) until the task file is written atomically.

LAWBENCH_TASKS = ["1-1", "1-2", "2-1", "2-2", "2-3", "2-4", "2-5", "2-6", "2-7", "2-8", "2-9", "2-10",
                  "3-1", "3-2", "3-3", "3-4", "3-5", "3-6", "3-7", "3-8"]
SHOTS = {"zero": "zero_shot", "one": "one_shot"}


@dataclass
class GenerateConfig:
    """LawBench generation: predictions in LawBench's layout <out>/<shot>_shot/<model_name>/<task>.json."""
    model: str = field(metadata={"help": "Hugging Face model folder"})
    lawbench_dir: str = field(metadata={"help": "LawBench copy with data/zero_shot and data/one_shot"})
    out: str = field(metadata={"help": "output folder (predictions layout)"})
    shots: str = field(default="zero", metadata={"help": "zero | one | both"})
    tasks: str = field(default="all", metadata={"help": "'all' or comma-separated task ids, e.g. 1-1,3-3"})
    max_items: int | None = field(default=None, metadata={"help": "first N items per task (None: all)"})
    model_name: str | None = field(default=None, metadata={"help": "folder name under <shot>; default: model dir name"})
    backend: str = field(default="hf", metadata={"help": "hf | vllm"})
    raw: bool = field(default=False, metadata={"help": "raw completion instead of the chat template"})
    max_new_tokens: int = field(default=1024, metadata={"help": "papers' setting: 1024, greedy"})
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    save_every: int = field(default=64, metadata={"help": "items per generate call / progress save within a task"})
    rag: str | None = field(default=None, metadata={"help": "articles.jsonl: BM25 top-k prepended to 3-x prompts"})
    rag_k: int = field(default=3, metadata={"help": "articles retrieved per prompt"})
    rag_law: str = field(default="刑法", metadata={"help": "law to retrieve from ('all': every law in the file)"})


def parse_tasks(spec: str) -> list[str]:
    """'all' -> the 20 tasks; '1-1,3-3' (commas or spaces) -> those, validated."""
    if spec.strip() in ("", "all"):
        return list(LAWBENCH_TASKS)
    tasks = [t for t in re.split(r"[,\s]+", spec.strip()) if t]
    bad = [t for t in tasks if t not in LAWBENCH_TASKS]
    if bad:
        raise DataError("--tasks", None, None, f"unknown LawBench task(s) {bad}; known: {', '.join(LAWBENCH_TASKS)}",
                        reason="bad_flag")
    return tasks


def load_lawbench_task(lawbench_dir, shot: str, task: str, max_items: int | None = None) -> list[dict]:
    """data/<shot>_shot/<task>.json -> [{instruction, question, answer}] (fields checked, one-line errors)."""
    path = Path(lawbench_dir) / "data" / SHOTS[shot] / f"{task}.json"
    items = []
    for line, rec in utils.iter_records(path):
        for f in ("instruction", "question", "answer"):
            utils.require(rec, f, path, line, allow_empty=(f != "question"))
        items.append(rec)
        if max_items is not None and len(items) >= max_items:
            break
    return items


def lawbench_prompt(item: dict, context: str = "") -> str:
    """The user turn: [retrieved articles] + instruction + "\\n" + question."""
    return context + item["instruction"] + "\n" + item["question"]


def load_done(task_file: Path) -> dict[int, dict]:
    """Items already generated for a task: the finished task file and/or its .partial progress lines."""
    done: dict[int, dict] = {}
    if task_file.is_file():
        for i, (_, rec) in enumerate(utils.iter_records(task_file)):
            done[i] = rec
    partial = task_file.with_suffix(".json.partial")
    if partial.is_file():
        for _, rec in utils.iter_records(partial, on_error="skip", errors={}):  # skips a cut-off last line
            if isinstance(rec.get("index"), int) and "item" in rec:
                done[rec["index"]] = rec["item"]
    return done


def generate_lawbench(cfg: GenerateConfig) -> dict:
    """Generate every (shot, task) file not already complete. Returns {shot/task: items generated now}."""
    shots = ["zero", "one"] if cfg.shots == "both" else [cfg.shots]
    if any(s not in SHOTS for s in shots):
        raise DataError("--shots", None, None, f"expected zero | one | both, got {cfg.shots!r}", reason="bad_flag")
    tasks = parse_tasks(cfg.tasks)
    index = StatuteIndex(cfg.rag, cfg.rag_law) if cfg.rag else None
    name = cfg.model_name or Path(cfg.model).resolve().name
    report = {}
    from tqdm import tqdm
    for shot in shots:
        for task in tasks:
            items = load_lawbench_task(cfg.lawbench_dir, shot, task, cfg.max_items)
            use_rag = index is not None and task.startswith("3-")
            prompts = [lawbench_prompt(it, index.context(it["question"], cfg.rag_k) if use_rag else "")
                       for it in items]
            task_file = Path(cfg.out) / SHOTS[shot] / name / f"{task}.json"
            done = {i: r for i, r in load_done(task_file).items()
                    if i < len(items) and r.get("origin_prompt") == [{"role": "HUMAN", "prompt": prompts[i]}]}
            todo = [i for i in range(len(items)) if i not in done]
            report[f"{SHOTS[shot]}/{task}"] = len(todo)
            partial = task_file.with_suffix(".json.partial")
            if not todo and task_file.is_file() and not partial.is_file():
                continue  # complete, with exactly these prompts
            partial.parent.mkdir(parents=True, exist_ok=True)
            if partial.is_file() and not partial.read_bytes().endswith(b"\n"):
                with open(partial, "a", encoding="utf-8") as f:
                    f.write("\n")  # close a line cut off by the interruption before appending
            bar = tqdm(total=len(todo), desc=f"{SHOTS[shot]} {task}", disable=not todo)
            for start in range(0, len(todo), cfg.save_every):
                chunk = todo[start:start + cfg.save_every]
                outs = utils.generate(cfg.model, [prompts[i] for i in chunk], backend=cfg.backend,
                                      max_new_tokens=cfg.max_new_tokens, temperature=0.0, batch_size=cfg.batch_size,
                                      chat=not cfg.raw, seed=0)
                with open(partial, "a", encoding="utf-8") as f:
                    for i, pred in zip(chunk, outs):
                        done[i] = {"origin_prompt": [{"role": "HUMAN", "prompt": prompts[i]}],
                                   "prediction": pred, "refr": items[i]["answer"]}
                        f.write(json.dumps({"index": i, "item": done[i]}, ensure_ascii=False) + "\n")
                bar.update(len(chunk))
            bar.close()
            _write_json(task_file, {str(i): done[i] for i in range(len(items))})
            partial.unlink(missing_ok=True)
    return report


# ----------------------------------------------------------------------------------------------------------------------
# 3. Judgment prediction (LexPro: charges, statutes, sentence from the facts of a CAIL2018 case)
# ----------------------------------------------------------------------------------------------------------------------
# Predictions are parsed by utils.parse_judgment (the parser the RL rewards use) into
#   {"charges": set[str], "articles": set[int], "term_months": int | None, "life": bool, "death": bool}.
# Metrics below are pure functions over those dicts and the truth dicts of utils.judgment_truth.

LOG_216 = math.log(216)  # LawBench 3-4/3-5: distance of an abstention; score = (ln 216 - mean d) / ln 216


def prf_counts(pred: set, gold: set) -> tuple[int, int, int]:
    """(tp, fp, fn) of one item's predicted vs gold label sets."""
    tp = len(pred & gold)
    return tp, len(pred) - tp, len(gold) - tp


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """F1 = 2tp / (2tp + fp + fn); 0 when there is nothing to count."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def multilabel_f1(preds: list[set], golds: list[set]) -> dict:
    """Micro and macro F1 of N items' label sets.

    micro: tp/fp/fn summed over items and labels. macro: mean over every label seen in gold or predictions of that
    label's F1 (so a hallucinated label counts as a class with F1 0, as in the CAIL2018 scorer's macro average).
    """
    assert len(preds) == len(golds)
    per_label: dict = {}
    total = [0, 0, 0]
    for p, g in zip(preds, golds):
        for k, c in enumerate(prf_counts(p, g)):
            total[k] += c
        for lab in p | g:
            c = per_label.setdefault(lab, [0, 0, 0])
            c[0] += lab in p and lab in g
            c[1] += lab in p and lab not in g
            c[2] += lab in g and lab not in p
    macro = sum(f1_from_counts(*c) for c in per_label.values()) / len(per_label) if per_label else 0.0
    return {"micro_f1": f1_from_counts(*total), "macro_f1": macro}


def log_distance(pred_months: int | None, gold_months: int) -> float:
    """LawBench's per-item term distance |ln(gold+1) - ln(pred+1)|; ln 216 for an abstention (pred None)."""
    return LOG_216 if pred_months is None else abs(math.log(gold_months + 1) - math.log(pred_months + 1))


def term_metrics(preds: list[dict], truths: list[dict]) -> dict:
    """Term score over items whose truth is a fixed term (life / death skipped, as LawBench 3-4/3-5 skip them).

    A prediction of life / death on such an item counts as an abstention (no month count to compare).
    term_score = (ln 216 - mean d) / ln 216 (not clipped); exact_month_acc = share of pred == gold months.
    """
    pairs = [(None if p["life"] or p["death"] else p["term_months"], t["term_months"])
             for p, t in zip(preds, truths) if not (t["life"] or t["death"])]
    if not pairs:
        return {"term_score": None, "exact_month_acc": None, "term_items": 0, "term_abstained": 0}
    # (ln 216 - mean d) / ln 216 written as a mean of per-item (ln 216 - d) / ln 216: all-abstention gives exactly 0
    return {"term_score": sum((LOG_216 - log_distance(p, g)) / LOG_216 for p, g in pairs) / len(pairs),
            "exact_month_acc": sum(p == g for p, g in pairs) / len(pairs),
            "term_items": len(pairs), "term_abstained": sum(p is None for p, _ in pairs)}


def life_death_metrics(preds: list[dict], truths: list[dict]) -> dict:
    """Sentence category (fixed term / life / death) accuracy over all items, and recall on life+death truths.
    A prediction with no readable sentence (term_months None, neither life nor death) is in no category: wrong."""
    def cat(d):
        return "death" if d["death"] else "life" if d["life"] else "term" if d["term_months"] is not None else None

    hits = [cat(p) == cat(t) for p, t in zip(preds, truths)]
    severe = [h for h, t in zip(hits, truths) if cat(t) != "term"]
    return {"life_death_acc": sum(hits) / len(hits) if hits else None,
            "life_death_items": len(severe), "life_death_recall": sum(severe) / len(severe) if severe else None}


def norm_charge(name: str) -> str:
    """'盗窃' / '盗窃罪' / '[走私、贩卖、运输、制造]毒品' -> one spelling (the judgment's: '…罪')."""
    return utils.charge_display(name)


def judgment_metrics(preds: list[dict], truths: list[dict]) -> dict:
    """All judgment-prediction metrics. preds: parse_judgment dicts; truths: judgment_truth dicts (same order)."""
    charges = multilabel_f1([{norm_charge(c) for c in p["charges"]} for p in preds],
                            [{norm_charge(c) for c in t["charges"]} for t in truths])
    articles = multilabel_f1([{int(a) for a in p["articles"]} for p in preds],
                             [{int(a) for a in t["articles"]} for t in truths])
    answered = [bool(p["charges"] or p["articles"] or p["term_months"] is not None or p["life"] or p["death"])
                for p in preds]
    return {"n": len(preds), "answered_rate": sum(answered) / len(preds) if preds else None,
            "charge_micro_f1": charges["micro_f1"], "charge_macro_f1": charges["macro_f1"],
            "article_micro_f1": articles["micro_f1"], "article_macro_f1": articles["macro_f1"],
            **term_metrics(preds, truths), **life_death_metrics(preds, truths)}


def retrieval_recall(retrieved: list[list[int]], golds: list[set]) -> float:
    """Share of gold 刑法 articles that are among the retrieved ones (micro over items)."""
    hit = sum(len(set(r) & g) for r, g in zip(retrieved, golds))
    total = sum(len(g) for g in golds)
    return hit / total if total else 0.0


@dataclass
class JudgmentConfig:
    """Judgment prediction on CAIL2018-format records {fact, meta}: charge / article F1, term score, life/death."""
    model: str = field(metadata={"help": "Hugging Face model folder"})
    data: str = field(metadata={"help": "CAIL2018-format .jsonl (fact, meta.accusation, meta.relevant_articles, ...)"})
    out: str = field(default="runs/judgment", metadata={"help": "output folder"})
    max_items: int | None = field(default=None, metadata={"help": "first N records (None: all)"})
    backend: str = field(default="hf", metadata={"help": "hf | vllm"})
    max_new_tokens: int = field(default=1024, metadata={"help": "new tokens per answer"})
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    rag: str | None = field(default=None, metadata={"help": "articles.jsonl: BM25 top-k articles prepended"})
    rag_k: int = field(default=3, metadata={"help": "articles retrieved per fact"})
    rag_law: str = field(default="刑法", metadata={"help": "law to retrieve from ('all': every law)"})
    tag: str | None = field(default=None, metadata={"help": "run name in metrics.jsonl; default rag_k<K> or plain"})


def load_judgment_data(path, max_items: int | None = None) -> list[dict]:
    """CAIL2018 records -> [{fact, truth}] (truth = utils.judgment_truth(meta)); bad records: one-line DataError."""
    out = []
    for line, rec in utils.iter_records(path):
        fact = utils.require(rec, "fact", path, line)
        utils.require(rec, "meta.accusation", path, line, kind=list)
        utils.require(rec, "meta.relevant_articles", path, line, kind=list)
        utils.require(rec, "meta.term_of_imprisonment", path, line, kind=dict)
        try:
            truth = utils.judgment_truth(rec["meta"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(path, line, "meta.term_of_imprisonment", f"unreadable ({e})") from None
        out.append({"fact": fact, "truth": truth})
        if max_items is not None and len(out) >= max_items:
            break
    return out


def run_judgment(cfg: JudgmentConfig) -> dict:
    data = load_judgment_data(cfg.data, cfg.max_items)
    prompts, retrieved = [utils.judgment_prompt(d["fact"]) for d in data], None
    t0 = time.time()
    if cfg.rag:
        index = StatuteIndex(cfg.rag, cfg.rag_law)
        hits = [index.search(d["fact"], cfg.rag_k) for d in data]
        retrieved = [[a["article_num"] for a in h] for h in hits]
        prompts = [index.context(d["fact"], cfg.rag_k) + p for d, p in zip(data, prompts)]
    t_rag = time.time() - t0
    t0 = time.time()
    outs = utils.generate(cfg.model, prompts, backend=cfg.backend, max_new_tokens=cfg.max_new_tokens,
                          temperature=0.0, batch_size=cfg.batch_size, chat=True, seed=0)
    t_gen = time.time() - t0
    preds = [utils.parse_judgment(o) for o in outs]
    metrics = judgment_metrics(preds, [d["truth"] for d in data])
    if retrieved is not None:
        metrics["rag_recall"] = retrieval_recall(retrieved, [set(d["truth"]["articles"]) for d in data])
    metrics.update(tag=cfg.tag or (f"rag_k{cfg.rag_k}" if cfg.rag else "plain"), model=cfg.model, data=cfg.data,
                   retrieval_s=round(t_rag, 2), generation_s=round(t_gen, 2))
    tag = metrics["tag"]
    utils.write_jsonl(Path(cfg.out) / f"predictions_{tag}.jsonl",
                      [{"prompt": p, "completion": o, "parsed": {k: sorted(v) if isinstance(v, set) else v
                                                                 for k, v in pr.items()}, "truth": d["truth"],
                        **({"retrieved": r} if retrieved else {})}
                       for p, o, pr, d, r in zip(prompts, outs, preds, data, retrieved or [None] * len(data))])
    _write_json(Path(cfg.out) / f"metrics_{tag}.json", metrics)
    _append_metrics(cfg.out, metrics)
    effect = rag_effect(cfg.out)
    if effect:
        _write_json(Path(cfg.out) / "rag_effect.json", effect)
        metrics["rag_effect"] = effect
    return metrics


RAG_EFFECT_KEYS = ("charge_micro_f1", "charge_macro_f1", "article_micro_f1", "article_macro_f1", "term_score",
                   "exact_month_acc", "life_death_acc", "answered_rate")


def rag_effect(out_dir) -> dict:
    """When OUT holds both metrics_plain.json and metrics_rag_k*.json (same data, same n): {tag: {metric: [plain,
    with rag, difference]}}, the effect of statute retrieval. Empty when one side is missing."""
    out = Path(out_dir)
    if not (out / "metrics_plain.json").is_file():
        return {}
    plain = json.loads((out / "metrics_plain.json").read_text(encoding="utf-8"))
    effect = {}
    for path in sorted(out.glob("metrics_rag_k*.json")):
        rag = json.loads(path.read_text(encoding="utf-8"))
        if (rag.get("data"), rag.get("n"), rag.get("model")) != (plain.get("data"), plain.get("n"), plain.get("model")):
            continue
        effect[rag["tag"]] = {k: [plain[k], rag[k], rag[k] - plain[k]] for k in RAG_EFFECT_KEYS
                              if isinstance(plain.get(k), (int, float)) and isinstance(rag.get(k), (int, float))}
    return effect


# ----------------------------------------------------------------------------------------------------------------------
# 4. Long documents (InternLM-Law long-context test: questions over a long judgment, char-level F1)
# ----------------------------------------------------------------------------------------------------------------------
# Input JSONL: {"document": str, "questions": [{"question": str, "answer": str}, ...]}. A document longer than the
# model's context is cut from the middle (head and tail kept, a note put where text was removed) and counted.
# Records without questions (e.g. ../shared/data/long_docs, documents only: --doc_field query or fact) get length
# and truncation statistics only.

LONGDOC_TEMPLATE = "请阅读下面的文书，然后回答问题。答案尽量简短，直接给出答案。\n\n文书：\n{document}\n\n问题：{question}"
CUT_NOTE = "\n……（中间省略{n}字）……\n"


def normalize_chars(s: str) -> list[str]:
    """CAIL/CoQA char-F1 normalisation: lower(), keep only isdigit()/isalpha() characters, one token per char."""
    return [c for c in s.lower() if c.isdigit() or c.isalpha()]


def char_f1(gold: str, pred: str) -> float:
    """Bag-of-characters F1 after normalize_chars; if either side is empty: 1 if both are, else 0."""
    g, p = normalize_chars(gold), normalize_chars(pred)
    if not g or not p:
        return float(g == p)
    same = sum((Counter(g) & Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def truncate_middle(tokenizer, document: str, budget: int) -> tuple[str, int]:
    """Fit `document` into `budget` tokens by dropping its middle. Returns (text, characters removed)."""
    offsets = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= budget:
        return document, 0
    keep = max(budget - 16, 2)  # room for the note
    # cut at character positions (token start offsets): a byte-level token may hold half a character
    head = document[: offsets[keep // 2][0]]
    tail = document[offsets[len(offsets) - (keep - keep // 2)][0]:]
    removed = len(document) - len(head) - len(tail)
    return head + CUT_NOTE.format(n=removed) + tail, removed


@dataclass
class LongDocConfig:
    """Long-document QA: char-level F1 of answers to questions about a document cut to the model's context."""
    model: str = field(metadata={"help": "Hugging Face model folder"})
    data: str = field(default="data/longdoc_sample.jsonl", metadata={"help": "JSONL {document, questions}"})
    out: str = field(default="runs/longdoc", metadata={"help": "output folder"})
    doc_field: str = field(default="document", metadata={"help": "field holding the document text"})
    max_context: int | None = field(default=None, metadata={"help": "tokens; default: max_position_embeddings"})
    backend: str = field(default="hf", metadata={"help": "hf | vllm"})
    max_new_tokens: int = field(default=128, metadata={"help": "answers are short"})
    batch_size: int = field(default=4, metadata={"help": "generation batch size"})


def load_longdoc(path, doc_field: str = "document") -> list[dict]:
    """Records -> [{document, questions}] with every question checked (questions optional: [] when absent)."""
    out = []
    for line, rec in utils.iter_records(path):
        doc = utils.require(rec, doc_field, path, line)
        qs = rec.get("questions", [])
        if not isinstance(qs, list):
            raise DataError(path, line, "questions", f"expected list, got {type(qs).__name__}", reason="bad_field")
        for j, q in enumerate(qs):
            if not isinstance(q, dict):
                raise DataError(path, line, f"questions[{j}]", "expected an object", reason="bad_field")
            utils.require(q, "question", path, line)
            utils.require(q, "answer", path, line)
        out.append({"document": doc, "questions": qs})
    return out


def run_longdoc(cfg: LongDocConfig) -> dict:
    from transformers import AutoConfig, AutoTokenizer
    docs = load_longdoc(cfg.data, cfg.doc_field)
    tok = AutoTokenizer.from_pretrained(cfg.model)
    context = cfg.max_context or getattr(AutoConfig.from_pretrained(cfg.model), "max_position_embeddings", 32768)
    overhead = len(tok(LONGDOC_TEMPLATE, add_special_tokens=False)["input_ids"]) + 64  # template + chat + question
    prompts, golds, rows, truncated, doc_tokens = [], [], [], 0, []
    for d_i, d in enumerate(docs):
        q_tokens = max((len(tok(q["question"], add_special_tokens=False)["input_ids"]) for q in d["questions"]),
                       default=0)
        budget = context - cfg.max_new_tokens - overhead - q_tokens
        doc_tokens.append(len(tok(d["document"], add_special_tokens=False)["input_ids"]))
        text, removed = truncate_middle(tok, d["document"], budget)
        truncated += removed > 0
        for q in d["questions"]:
            prompts.append(LONGDOC_TEMPLATE.format(document=text, question=q["question"]))
            golds.append(q["answer"])
            rows.append({"doc": d_i, "question": q["question"], "answer": q["answer"], "removed_chars": removed})
    t0 = time.time()
    outs = utils.generate(cfg.model, prompts, backend=cfg.backend, max_new_tokens=cfg.max_new_tokens,
                          temperature=0.0, batch_size=cfg.batch_size, chat=True, seed=0) if prompts else []
    scores = [char_f1(g, o) for g, o in zip(golds, outs)]
    metrics = {"documents": len(docs), "questions": len(prompts), "documents_without_questions":
               sum(not d["questions"] for d in docs), "truncated_documents": truncated, "context_tokens": context,
               "max_document_tokens": max(doc_tokens, default=0),
               "char_f1": sum(scores) / len(scores) if scores else None, "generation_s": round(time.time() - t0, 2),
               "model": cfg.model, "data": cfg.data}
    utils.write_jsonl(Path(cfg.out) / "predictions.jsonl",
                      [{**r, "prediction": o, "char_f1": s} for r, o, s in zip(rows, outs, scores)])
    _write_json(Path(cfg.out) / "metrics.json", metrics)
    _append_metrics(cfg.out, metrics)
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# 5. CLI: python evaluate.py <subcommand> --flags   (each subcommand: a config dataclass via utils.parse_config)
# ----------------------------------------------------------------------------------------------------------------------

def _cmd_generate(argv):
    cfg = utils.parse_config(GenerateConfig, argv)
    utils.save_config(cfg, cfg.out)
    t0 = time.time()
    report = generate_lawbench(cfg)
    rec = {"command": "generate", "generated": sum(report.values()), "files": len(report),
           "seconds": round(time.time() - t0, 2), "model": cfg.model}
    _append_metrics(cfg.out, rec)
    print(json.dumps(rec, ensure_ascii=False))


def _cmd_judgment(argv):
    cfg = utils.parse_config(JudgmentConfig, argv)
    utils.save_config(cfg, cfg.out)
    print(json.dumps(run_judgment(cfg), ensure_ascii=False, indent=1))


def _cmd_longdoc(argv):
    cfg = utils.parse_config(LongDocConfig, argv)
    utils.save_config(cfg, cfg.out)
    print(json.dumps(run_longdoc(cfg), ensure_ascii=False, indent=1))


COMMANDS = {"generate": _cmd_generate, "judgment": _cmd_judgment, "longdoc": _cmd_longdoc}


def _bare_bools(argv: list[str], flags=("--raw",)) -> list[str]:
    """Let `--raw` stand alone (parse_config's bools take a value): a bare flag means `--raw true`."""
    out = []
    for i, a in enumerate(argv):
        out.append(a)
        if a in flags and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            out.append("true")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python evaluate.py {{{','.join(COMMANDS)}}} --help", file=sys.stderr)
        return 2
    try:
        COMMANDS[argv[0]](_bare_bools(argv[1:]))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
