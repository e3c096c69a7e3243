"""
prepare_data.py: raw Chinese legal sources -> instructions -> filtered, deduplicated, decontaminated, packed stages.

    python prepare_data.py --manifest data/sample/manifest.json --model runs/demo/model --out runs/demo/data \
        --lawbench_dir data/sample/lawbench

Stages (each one reported in OUT/data_report.json and a printed table):
  1. load       sources listed in a JSON manifest: [{"name", "kind", "path" | "paths", "options"}]
  2. templates  legal tasks -> instructions, one of several templates per task picked by a seeded RNG
  3. filter     consultations: rule filter (answer >= 20 chars, cites 《…法…》) + optional LLM clarity/coherence scores
  4. statutes   -> recitation Q&A, article numbers in Chinese numerals (第一百三十三条之一)
  5. judgments  -> SFT samples (utils.format_answer) + OUT/rl_prompts.jsonl
  6. dedup      exact, on normalised text; decontamination vs LawBench by character windows
  7. mix        stage1 = all legal + general at --general_ratio; stage2 = key laws, resampled tasks, good consultations
  8. pack       encode_batch labels, best-fit packing to --seq_len (a sample is never split), write_packed
  9. report     every record accounted for: read = kept + sum(dropped)

Kinds: lawbench_task, cail_task (options.format: cjrc | argmine | ie), consultation, statutes, judgments, exam_mcq,
general (alpaca / sharegpt / messages, detected per record), eval_only (read and counted, never trained on).
Files: .jsonl / .json / .csv, or (read with `datasets`) .parquet / .arrow / a `save_to_disk` folder (options.split).
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

import utils
from utils import DataError, require


# ----------------------------------------------------------------------------------------------------------------------
# 0. Config
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Config:
    """Build packed SFT stages from a manifest of raw legal sources."""
    out: str = field(metadata={"help": "output directory (built beside it in .OUT.tmp, renamed when complete)"})
    manifest: str = field(default="data/sample/manifest.json", metadata={"help": "JSON manifest of sources"})
    model: str = field(default="runs/demo/model", metadata={"help": "tokenizer / chat template folder"})
    overwrite: bool = field(default=False, metadata={"help": "OUT holds data: rebuild it (replaced when complete)"})
    lawbench_dir: str | None = field(default=None, metadata={"help": "LawBench root (data/zero_shot/*.json); required "
                                                                     "unless --decontaminate false"})
    decontaminate: bool = field(default=True, metadata={"help": "drop records overlapping LawBench (false: not run, "
                                                                "and the report says so)"})
    lexeval_dir: str | None = field(default=None, metadata={"help": "LexEval root (data/<task>.json): decontaminate "
                                                                    "against LexEval too, with the same windows"})
    window: int = field(default=24, metadata={"help": "decontamination window (normalised chars)", "min": 1})
    short_window: int = field(default=12, metadata={"help": "window for short LawBench questions", "min": 1})
    short_below: int = field(default=48, metadata={"help": "LawBench questions shorter than this use short_window",
                                                   "min": 0})
    min_window_hits: int = field(default=24, metadata={"help": "flag a record when it holds this many windows of one "
                                                                  "LawBench item (24 x 24-char windows ~ 47 shared chars)",
                                                          "min": 1})
    min_window_frac: float = field(default=0.5, metadata={"help": "... or this share of a short item's windows",
                                                          "gt": 0, "max": 1})
    answer_tasks: str = field(default="1-1", metadata={"help": "LawBench tasks whose answers are indexed too "
                                                              "(comma list; 1-1 = statute recitation)"})
    boilerplate_items: int = field(default=5, metadata={"help": "windows found in >= this many LawBench items ignored",
                                                        "min": 1})
    seq_len: int = field(default=32768, metadata={"help": "pack length", "min": 16})
    overlong: str = field(default="drop", metadata={"help": "samples longer than seq_len: drop | truncate (a cut "
                                                                  "judgment loses its answer, so drop is the default)",
                                                    "choices": ("drop", "truncate")})
    general_ratio: float = field(default=0.1, metadata={"help": "share of general data in stage1 (0 / 0.1 / 0.2)",
                                                        "min": 0, "max": 1})
    stage2_task_frac: float = field(default=0.3, metadata={"help": "share of legal-task records resampled to stage2",
                                                           "min": 0, "max": 1})
    seed: int = field(default=0, metadata={"help": "templates, resampling and pack order", "min": 0})
    workers: int = field(default=2, metadata={"help": "tokenizer processes", "min": 1})
    chunk: int = field(default=512, metadata={"help": "samples per tokenizer job", "min": 1})
    on_error: str = field(default="raise", metadata={"help": "bad input: raise (one-line error) | skip (count)",
                                                     "choices": ("raise", "skip")})
    min_answer_chars: int = field(default=20, metadata={"help": "consultation rule filter", "min": 0})
    llm_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL for the semantic filter "
                                                                   "(e.g. a local `vllm serve` at http://127.0.0.1:8000/v1)"})
    llm_model: str | None = field(default=None, metadata={"help": "model name for the semantic filter"})
    llm_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "env var holding the API key (never logged)"})
    llm_min_clarity: int = field(default=3, metadata={"help": "keep if clarity >= this", "min": 1, "max": 5})
    llm_min_coherence: int = field(default=3, metadata={"help": "keep if coherence >= this", "min": 1, "max": 5})
    llm_hq: int = field(default=4, metadata={"help": "both scores >= this: high-quality consultation (stage2)",
                                             "min": 1, "max": 5})
    llm_cache: str | None = field(default=None, metadata={"help": "score cache JSONL (default OUT/llm_scores.jsonl)"})


def preflight(cfg: Config) -> None:
    """Every flag, the manifest and each source file it lists, the LawBench folder and the tokenizer, checked
    before anything is written (DataError, one line)."""
    utils.check_fields(cfg)
    utils.check_out_dir(cfg.out)
    # a built OUT is refused without --overwrite, and never cleared when it holds files that no build wrote (the
    # run-folder rule, utils.check_run_dir; no --resume: a build starts from scratch, and run() swaps OUT in whole)
    utils.check_run_dir(cfg.out, None, False, cfg.overwrite, BUILD_OUTPUTS, continue_flag=None)
    if cfg.decontaminate and not cfg.lawbench_dir:
        raise DataError("--lawbench_dir", None, None, "required to decontaminate against LawBench; pass "
                        "--decontaminate false to build without it (the report then says it was not run)",
                        reason="bad_flag")
    if cfg.llm_url and not cfg.llm_model:
        raise DataError("--llm_model", None, None, "needed with --llm_url", reason="bad_flag")
    for src in load_manifest(cfg.manifest):
        for p in src["paths"]:
            if not Path(p).exists():
                raise DataError(p, None, None, f"file not found (source {src['name']!r} of {cfg.manifest})",
                                reason="missing_file")
    if cfg.lawbench_dir and cfg.decontaminate:
        tasks = {f.stem for f in (Path(cfg.lawbench_dir) / "data" / "zero_shot").glob("*.json")}
        if not tasks:
            raise DataError(Path(cfg.lawbench_dir) / "data" / "zero_shot", None, None, "no LawBench *.json files "
                            "(--lawbench_dir)", reason="missing_file")
        unknown = [t.strip() for t in cfg.answer_tasks.split(",") if t.strip() and t.strip() not in tasks]
        if unknown:
            raise DataError("--answer_tasks", None, None, f"unknown LawBench task(s) {unknown}", reason="bad_flag")
    if cfg.lexeval_dir and cfg.decontaminate and not any((Path(cfg.lexeval_dir) / "data").glob("*.json")):
        raise DataError(Path(cfg.lexeval_dir) / "data", None, None, "no LexEval <task>.json files (--lexeval_dir)",
                        reason="missing_file")
    utils.check_model_dir(cfg.model, "--model", config=False, weights=False, chat_template=True)


BUILD_OUTPUTS = ("stage*", "work", "data_report.json", "metrics.jsonl", "rl_prompts.jsonl", "contaminated.jsonl",
                 "skipped.jsonl", "llm_scores.jsonl")  # what a build writes in OUT (besides config.json)
KEY_LAWS = ("刑法", "宪法", "劳动法", "劳动合同法")  # plus 民法典 婚姻家庭编 (see is_key_law)
LEGAL_TASK_KINDS = ("lawbench_task", "cail_task", "judgments", "exam_mcq")


def is_key_law(rec: dict) -> bool:
    return rec["law"] in KEY_LAWS or (rec["law"] == "民法典" and "婚姻家庭" in (rec.get("part") or ""))


# ----------------------------------------------------------------------------------------------------------------------
# 1. Instruction templates (the paper diversified instructions with an LLM; these are the offline default)
# ----------------------------------------------------------------------------------------------------------------------

TEMPLATES = {
    "statute": ["《{law}》{art}的内容是什么？", "请背诵《{law}》{art}。", "《{law}》{art}是如何规定的？",
                "请写出{law}{art}的条文原文。", "根据《{law}》，{art}规定了什么？"],
    "consultation": ["{q}", "请以律师的身份回答下面的法律咨询，并说明法律依据。\n{q}", "法律咨询：{q}",
                     "我想咨询一个法律问题：{q}"],
    "lawbench": ["{instruction}\n{question}", "{question}\n\n{instruction}", "任务说明：{instruction}\n输入：{question}"],
    "cjrc": ["阅读下面的裁判文书片段，回答问题。\n文书：{context}\n问题：{question}",
             "请根据文书内容作答，无法回答时请说明。\n{context}\n问题：{question}",
             "文书片段：{context}\n\n根据上文回答：{question}"],
    "argmine": ["给定诉方观点，请从辩方候选观点中选出与之构成争议焦点的一项。\n诉方：{sc}\n{cands}",
                "诉方观点：{sc}\n辩方候选：\n{cands}\n哪一个辩方观点与诉方观点形成争议？",
                "请完成论辩理解任务。\n{sc}\n候选观点：\n{cands}"],
    "ie": ["请从下面的毒品犯罪案件句子中抽取实体和实体之间的关系。\n{text}",
           "信息抽取：找出句中的人名、地名、时间、毒品及重量，以及贩卖、运输、持有等关系。\n{text}",
           "句子：{text}\n请列出其中的实体与关系。"],
    "mcq": ["以下是一道法律考试选择题，请给出正确答案。\n{q}", "{q}\n请选择正确选项。", "请回答下面的司法考试题目：\n{q}"],
}

IE_LABELS = {"Nh": "人名", "Ns": "地名", "NT": "时间", "NDR": "毒品", "NW": "毒品重量"}
IE_RELATIONS = {"sell_drugs_to": "贩卖给", "traffic_in": "贩卖", "possess": "持有", "provide_shelter_for": "容留"}


def user_assistant(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user.strip()}, {"role": "assistant", "content": assistant.strip()}]


# ----------------------------------------------------------------------------------------------------------------------
# 2. Converters: one raw record -> Converted (its samples, its dedup key, an RL prompt for judgments).
#    A user mistake raises DataError(path, line, field, ...); a filtered record raises Drop(reason).
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One training conversation and the stages (1, 2) it goes to; OUT/work holds one {"m", "st"} line each."""
    messages: list[dict]
    stages: list[int] = field(default_factory=lambda: [1])

    def line(self) -> str:
        return json.dumps({"m": self.messages, "st": self.stages}, ensure_ascii=False) + "\n"


@dataclass
class Converted:
    """What one record becomes. key: the record's text before templating (exact dedup; None: the first sample's)."""
    samples: list[Sample]
    key: str | None = None
    rl: dict | None = None  # judgments: {"prompt", "truth"} for OUT/rl_prompts.jsonl


class Drop(Exception):
    """A well-formed record that a filter removes; `reason` is the report key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def convert_statute(rec, path, line, rng, opts, cfg, scorer):
    law = require(rec, "law", path, line)
    text = require(rec, "text", path, line)
    num = require(rec, "article_num", path, line, kind=int)
    sub = rec.get("article_sub") or 0
    art = utils.article_cn(num, sub)
    forms = rng.sample(TEMPLATES["statute"], 2)
    samples = [Sample(user_assistant(forms[0].format(law=law, art=art), text), [1, 2] if is_key_law(rec) else [1])]
    if is_key_law(rec):  # stage 2 resamples key laws with a second question form
        samples.append(Sample(user_assistant(forms[1].format(law=law, art=art), text), [2]))
    return Converted(samples, law + art + text)


def convert_judgment(rec, path, line, rng, opts, cfg, scorer):
    fact, truth = utils.judgment_record(rec, path, line)
    prompt = utils.judgment_prompt(fact)
    return Converted([Sample(user_assistant(prompt, utils.format_answer(truth)))], prompt,
                     rl={"prompt": prompt, "truth": truth})


def convert_lawbench_task(rec, path, line, rng, opts, cfg, scorer):
    question = require(rec, "question", path, line)
    answer = require(rec, "answer", path, line)
    instruction = rec.get("instruction") or ""
    user = rng.choice(TEMPLATES["lawbench"]).format(instruction=instruction, question=question) if instruction \
        else question
    return Converted([Sample(user_assistant(user, answer))], question + answer)


def convert_cail_task(rec, path, line, rng, opts, cfg, scorer):
    fmt = opts.get("format")
    if fmt == "cjrc":  # one SQuAD question (flattened by read_source)
        context, question = require(rec, "context", path, line), require(rec, "question", path, line)
        answers = [a.get("text", "") for a in rec.get("answers") or [] if isinstance(a, dict)]
        ans = answers[0].strip() if answers else ""
        if str(rec.get("is_impossible", "false")).lower() == "true" or not ans:
            ans = "根据文书内容无法回答该问题。"
        ans = {"YES": "是", "NO": "否"}.get(ans, ans)
        user = rng.choice(TEMPLATES["cjrc"]).format(context=context, question=question)
        key = context + question + ans
    elif fmt == "argmine":
        sc = require(rec, "sc", path, line)
        cands = require(rec, "candidates", path, line, kind=dict)
        ans = str(require(rec, "answer", path, line, kind=(str, int)))
        letters = sorted(cands)
        if not ans.isdigit() or not 1 <= int(ans) <= len(letters):
            raise DataError(path, line, "answer", f"expected 1..{len(letters)}, got {ans!r}", reason="bad_field")
        letter = letters[int(ans) - 1]
        user = rng.choice(TEMPLATES["argmine"]).format(sc=sc, cands="\n".join(f"{k}：{cands[k]}" for k in letters))
        ans = f"{letter}：{cands[letter]}"
        key = user[user.index(sc):]
    elif fmt == "ie":
        text = require(rec, "sentText", path, line)
        ents = rec.get("entityMentions") or []
        rels = rec.get("relationMentions") or []
        ent_lines = [f"{IE_LABELS.get(e.get('label'), e.get('label'))}：{e.get('text')}" for e in ents]
        rel_lines = [f"{r.get('em1Text')} {IE_RELATIONS.get(r.get('label'), r.get('label'))} {r.get('em2Text')}"
                     for r in rels]
        if not ent_lines:
            raise Drop("no_entities")
        user = rng.choice(TEMPLATES["ie"]).format(text=text)
        ans = "实体：\n" + "\n".join(dict.fromkeys(ent_lines)) + ("\n关系：\n" + "\n".join(rel_lines) if rel_lines else "")
        key = text + ans
    else:
        raise DataError(path, None, "options.format", f"cail_task needs format cjrc|argmine|ie, got {fmt!r}",
                        reason="bad_manifest")
    return Converted([Sample(user_assistant(user, ans))], key)


def convert_exam_mcq(rec, path, line, rng, opts, cfg, scorer):
    if "options" in rec:  # DISC jsonl: question, options{A..D}, answer letters
        q = require(rec, "question", path, line)
        options = require(rec, "options", path, line, kind=dict)
        answer = "正确答案：" + require(rec, "answer", path, line)
    elif "A" in rec and "input" in rec:  # DISC csv: input, output, A, B, C, D
        q = require(rec, "input", path, line)
        options = {k: rec[k] for k in "ABCDE" if rec.get(k)}
        answer = "正确答案：" + require(rec, "output", path, line)
    else:  # fakao_gpt4: input (question with options inline), output (explanation + answer)
        q = require(rec, "input", path, line)
        options = {}
        answer = require(rec, "output", path, line)
    full_q = q.strip() + "".join(f"\n{k}. {v}" for k, v in options.items())
    return Converted([Sample(user_assistant(rng.choice(TEMPLATES["mcq"]).format(q=full_q), answer))], full_q + answer)


def convert_consultation(rec, path, line, rng, opts, cfg, scorer):
    qf = next((f for f in ("question", "query", "input") if f in rec), "question")
    af = next((f for f in ("answer", "response", "output") if f in rec), "answer")
    q, a = require(rec, qf, path, line), require(rec, af, path, line)
    if len(a.strip()) < cfg.min_answer_chars:
        raise Drop("short_answer")
    if "《" not in a or "法" not in a:
        raise Drop("no_law_cited")
    hq = len(a) >= 100 and re.search(r"第[一二三四五六七八九十百千零〇\d]+条", a) is not None
    if scorer is not None:
        s = scorer.score(q, a)
        if s["clarity"] < cfg.llm_min_clarity:
            raise Drop("llm_unclear")
        if s["coherence"] < cfg.llm_min_coherence:
            raise Drop("llm_incoherent")
        hq = min(s["clarity"], s["coherence"]) >= cfg.llm_hq
    user = rng.choice(TEMPLATES["consultation"]).format(q=q.strip())
    return Converted([Sample(user_assistant(user, a), [1, 2] if hq else [1])], q + a)


def convert_general(rec, path, line, rng, opts, cfg, scorer):
    if "messages" in rec:
        msgs = require(rec, "messages", path, line, kind=list)
        out = [{"role": m.get("role"), "content": m.get("content")} for m in msgs if isinstance(m, dict)]
    elif "conversations" in rec:  # ShareGPT
        roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
        msgs = require(rec, "conversations", path, line, kind=list)
        out = [{"role": roles.get(m.get("from")), "content": m.get("value")} for m in msgs if isinstance(m, dict)]
    else:  # Alpaca
        ins = require(rec, "instruction", path, line)
        out = user_assistant(ins + ("\n" + rec["input"] if rec.get("input") else ""), require(rec, "output", path, line))
    if not out or any(m["role"] not in ("system", "user", "assistant") or not isinstance(m["content"], str)
                      for m in out) or ("instruction" not in rec and len(out) != len(msgs)):
        raise DataError(path, line, "messages", "each turn needs a known role and a string content", reason="bad_field")
    if out[-1]["role"] != "assistant" or not out[-1]["content"].strip():
        raise DataError(path, line, "messages", "the last turn must be a non-empty assistant turn", reason="empty_field")
    return Converted([Sample(out)])


def convert_eval_only(rec, path, line, rng, opts, cfg, scorer):
    raise Drop("eval_only")


CONVERTERS = {"statutes": convert_statute, "judgments": convert_judgment, "lawbench_task": convert_lawbench_task,
              "cail_task": convert_cail_task, "exam_mcq": convert_exam_mcq, "consultation": convert_consultation,
              "general": convert_general, "eval_only": convert_eval_only}


# ----------------------------------------------------------------------------------------------------------------------
# 3. Manifest and record reading
# ----------------------------------------------------------------------------------------------------------------------

def load_manifest(path) -> list[dict]:
    """Manifest: {"sources": [...]} or a list; each {"name", "kind", "path" | "paths", "options"?}. Paths are
    relative to the manifest's folder. Every mistake is a one-line DataError."""
    path = Path(path)
    data = utils.read_json(path, reason="bad_manifest")
    sources = data.get("sources") if isinstance(data, dict) else data
    if not isinstance(sources, list) or not sources:
        raise DataError(path, None, "sources", "expected a non-empty list of sources", reason="bad_manifest")
    names = set()
    for i, s in enumerate(sources, start=1):
        if not isinstance(s, dict):
            raise DataError(path, None, f"sources[{i}]", "expected an object", reason="bad_manifest")
        for f in ("name", "kind"):
            if not isinstance(s.get(f), str) or not s[f]:
                raise DataError(path, None, f"sources[{i}].{f}", "missing", reason="bad_manifest")
        if s["kind"] not in CONVERTERS:
            raise DataError(path, None, f"sources[{i}].kind",
                            f"unknown kind {s['kind']!r} (known: {', '.join(CONVERTERS)})", reason="bad_manifest")
        if s["name"] in names:
            raise DataError(path, None, f"sources[{i}].name", f"duplicate name {s['name']!r}", reason="bad_manifest")
        names.add(s["name"])
        paths = s.get("paths") or ([s["path"]] if s.get("path") else [])
        if not paths or not all(isinstance(p, str) for p in paths):
            raise DataError(path, None, f"sources[{i}].path", "missing (give path or paths)", reason="bad_manifest")
        s["paths"] = [str((path.parent / p).resolve()) if not os.path.isabs(p) else p for p in paths]
        s.setdefault("options", {})
    return sources


def read_source(src: dict, on_error: str, errors: dict, skipped: list | None = None):
    """Yield (path, line, record) for every record of a source; cjrc SQuAD files are flattened to one per question."""
    for p in src["paths"]:
        if src["kind"] == "cail_task" and src["options"].get("format") == "cjrc":
            data = utils.read_json(p)
            if not isinstance(data, dict) or not isinstance(data.get("data"), list):
                raise DataError(p, None, "data", "expected SQuAD format {\"data\": [...]}", reason="bad_field")
            n = 0
            for doc in data["data"]:
                for para in doc.get("paragraphs", []):
                    for qa in para.get("qas", []):
                        n += 1
                        yield p, n, {"context": para.get("context", ""), **qa}
        elif Path(p).is_dir() or Path(p).suffix in (".parquet", ".arrow"):
            yield from ((p, line, rec) for line, rec in iter_hf_dataset(p, src["options"].get("split", "train")))
        else:
            for line, rec in utils.iter_records(p, on_error=on_error, errors=errors, skipped=skipped):
                yield p, line, rec


def iter_hf_dataset(path, split: str = "train"):
    """(row, record) of a Hugging Face dataset read with `datasets` (the form legal SFT sets are published in): a
    `save_to_disk` folder (a DatasetDict: its `split`), a .arrow file or a .parquet file (streamed). Rows count from 1."""
    import datasets
    p = Path(path)
    try:
        if p.suffix == ".parquet":
            ds = datasets.load_dataset("parquet", data_files=str(p), split="train", streaming=True)
        elif p.suffix == ".arrow":
            ds = datasets.Dataset.from_file(str(p))
        else:
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(p, None, "options.split", f"no split {split!r} (has {', '.join(ds)})",
                                    reason="bad_manifest")
                ds = ds[split]
        yield from enumerate(ds, start=1)
    except DataError:
        raise
    except Exception as e:  # datasets / pyarrow raise many kinds (FileNotFoundError, ArrowInvalid, ...)
        raise DataError(p, None, None, f"not a readable Hugging Face dataset ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})", reason="bad_dataset") from None


# ----------------------------------------------------------------------------------------------------------------------
# 4. LLM semantic filter (optional): clarity and coherence 1-5, cached on disk keyed by a hash of model+q+a
# ----------------------------------------------------------------------------------------------------------------------

LLM_PROMPT = ("请评估下面的法律咨询问答。给出两个1到5的整数分数：clarity（问题是否清楚、可回答），"
              "coherence（回答是否切题、与问题一致）。只输出JSON，例如{{\"clarity\": 4, \"coherence\": 5}}。\n"
              "问题：{q}\n回答：{a}")


class LLMScorer:
    """Scores (question, answer) with an OpenAI-compatible chat endpoint (utils.ChatClient); every score is cached in
    a JSONL file ({key, scores} lines, utils.JsonlCache) so a rerun asks nothing. `ask` can be replaced (tests inject
    a stub)."""

    def __init__(self, url: str, model: str, key_env: str, cache_path, ask=None):
        self.model = model
        self.client = utils.ChatClient(url, model, os.environ.get(key_env, ""), max_tokens=32)
        self.cache = utils.JsonlCache(cache_path)
        self.calls = self.hits = 0
        self.ask = ask or (lambda prompt: parse_scores(self.client.chat([{"role": "user", "content": prompt}])))

    def key(self, q: str, a: str) -> str:
        return hashlib.sha1(f"{self.model}\x00{q}\x00{a}".encode()).hexdigest()

    def score(self, q: str, a: str) -> dict:
        k = self.key(q, a)
        if k in self.cache:
            self.hits += 1
            return self.cache.records[k]["scores"]
        self.calls += 1
        scores = self.ask(LLM_PROMPT.format(q=q, a=a))
        self.cache.add({"key": k, "scores": scores})
        return scores


def parse_scores(text: str) -> dict:
    """'{"clarity": 4, "coherence": 5}' (possibly inside other words) -> {"clarity": 4, "coherence": 5}; 0 if absent."""
    out = {}
    for k in ("clarity", "coherence"):
        m = re.search(rf'"?{k}"?\s*[:：]\s*(\d)', text)
        out[k] = int(m.group(1)) if m else 0
    return out


# ----------------------------------------------------------------------------------------------------------------------
# 5. Normalisation, exact dedup and LawBench decontamination (character windows as rolling hashes)
# ----------------------------------------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Remove whitespace and punctuation, lowercase: '《刑法》 第 264 条。' -> '刑法第264条'."""
    return _NON_WORD.sub("", text).lower()


_BASE = np.uint64(1_000_003)


def window_hashes(text: str, w: int) -> np.ndarray:
    """Polynomial hashes of every w-character window of `text`. Returns uint64 [max(0, len(text) - w + 1)]."""
    c = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = len(c) - w + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(n, dtype=np.uint64)
    for j in range(w):  # wraps mod 2**64
        h = h * _BASE + c[j:j + n]
    return h


class Decontaminator:
    """Index of LawBench question (and long answer) windows: sorted hashes with the item each came from; with
    `lexeval_dir` also LexEval's inputs (and the references of its generation tasks 5_x), the same way. Item i is
    (task, index) of benchmark self.benchmarks[i] ("LawBench" or "LexEval"; LexEval ids are 1_1, LawBench's 1-1).

    Items shorter than `short_below` normalised chars use `short_window`; windows found in >= `boilerplate_items`
    items (template phrases) are ignored. A record is flagged when it contains min(`min_hits`, `min_frac` x n) of the
    n distinct windows of one LawBench item (all positions of the record are checked), i.e. a long shared passage or
    most of a short item: one shared legal phrase is not enough."""

    BITMAP_BITS = 25  # 32 MB per window size

    def __init__(self, lawbench_dir, window=24, short_window=12, short_below=48, min_hits=24, min_frac=0.5,
                 boilerplate_items=5, answer_tasks=("1-1",), lexeval_dir=None):
        self.items: list[tuple[str, int]] = []  # item id -> (task, index)
        self.benchmarks: list[str] = []  # item id -> "LawBench" | "LexEval"
        n_windows: list[int] = []  # item id -> how many distinct windows it has
        self.min_hits, self.min_frac, self.answer_tasks = min_hits, min_frac, tuple(answer_tasks)
        per_w = {window: ([], []), short_window: ([], [])}
        files = sorted((Path(lawbench_dir) / "data" / "zero_shot").glob("*.json"))
        if not files:
            raise DataError(Path(lawbench_dir) / "data" / "zero_shot", None, None, "no LawBench *.json files",
                            reason="missing_file")
        self.short_skipped = 0
        sources = [("LawBench", f.stem, i, rec.get("question", ""), rec.get("answer", "") if f.stem in answer_tasks
                    else None) for f in files for i, (_, rec) in enumerate(utils.iter_records(f))]
        if lexeval_dir:  # LexEval's data files are JSON lines (lexeval.read_lines); inputs, and 5_x references
            import lexeval
            for f in sorted((Path(lexeval_dir) / "data").glob("*.json")):
                recs = lexeval.read_lines(f, ("input",), ("answer",), nullable=("answer",))
                sources += [("LexEval", f.stem, i, rec["input"], rec.get("answer") if lexeval.is_generation(f.stem)
                             else None) for i, rec in enumerate(recs)]
        for bench, task, index, question, answer in sources:
            item = len(self.items)
            self.items.append((task, index))
            self.benchmarks.append(bench)
            n_windows.append(0)
            texts = [normalize(str(question))] + ([normalize(str(answer))] if answer is not None else [])
            for text in texts:
                w = window if len(text) >= short_below else short_window
                if len(text) < w:
                    self.short_skipped += 1
                    continue
                h = np.unique(window_hashes(text, w))
                n_windows[-1] += len(h)
                per_w[w][0].append(h)
                per_w[w][1].append(np.full(len(h), item, dtype=np.int32))
        self.need = np.maximum(1, np.minimum(min_hits, np.ceil(min_frac * np.asarray(n_windows)))).astype(np.int64)
        self.index, self.bits = {}, {}
        for w, (hs, ids) in per_w.items():
            h = np.concatenate(hs) if hs else np.zeros(0, np.uint64)
            ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
            order = np.argsort(h, kind="stable")
            h, ids = h[order], ids[order]
            uniq, start, counts = np.unique(h, return_index=True, return_counts=True)
            keep = np.repeat(counts < boilerplate_items, counts)
            self.index[w] = (h[keep], ids[keep])
            # a bitmap on the top hash bits answers "surely absent" for most windows without a binary search
            bits = np.zeros(1 << self.BITMAP_BITS, dtype=bool)
            bits[h[keep] >> np.uint64(64 - self.BITMAP_BITS)] = True
            self.bits[w] = bits
        self.window, self.short_window = window, short_window

    def hits(self, text: str, tasks: tuple[str, ...] | None = None) -> set[int]:
        """Ids of LawBench items (of `tasks`, default all) that `text` overlaps."""
        t = normalize(text)
        found: dict[int, int] = {}
        hashes = {}
        if len(t) >= self.short_window:
            hashes[self.short_window] = window_hashes(t, self.short_window)
        if len(t) >= self.window:
            if self.window == 2 * self.short_window:  # h24(i) = B^12 h12(i) + h12(i+12): reuse the short hashes
                h12, k = hashes[self.short_window], self.short_window
                hashes[self.window] = h12[:-k] * _BASE ** np.uint64(k) + h12[k:]
            else:
                hashes[self.window] = window_hashes(t, self.window)
        for w, h in hashes.items():
            H, ids = self.index[w]
            h = h[self.bits[w][h >> np.uint64(64 - self.BITMAP_BITS)]]  # candidates only
            if len(h) == 0:
                continue
            h = np.unique(h)
            lo = np.searchsorted(H, h, side="left")
            hi = np.searchsorted(H, h, side="right")
            for a, b in zip(lo[hi > lo], hi[hi > lo]):
                for item in ids[a:b]:
                    found[int(item)] = found.get(int(item), 0) + 1
        return {i for i, c in found.items()
                if c >= self.need[i] and (tasks is None or self.items[i][0] in tasks)}


def sample_text(sample: Sample) -> str:
    return "\n".join(m["content"] for m in sample.messages)


def text_key(text: str) -> bytes:
    return hashlib.blake2b(normalize(text).encode(), digest_size=8).digest()


# ----------------------------------------------------------------------------------------------------------------------
# 6. Pass 1: load -> convert -> filter -> dedup -> decontaminate, streaming to OUT/work/*.jsonl
# ----------------------------------------------------------------------------------------------------------------------

def collect(cfg: Config, sources: list[dict], out: Path, scorer=None, decon: Decontaminator | None = None) -> dict:
    """Stream every source through its converter; write kept samples to OUT/work/{legal,general}.jsonl and judgments'
    RL prompts to OUT/rl_prompts.jsonl. Returns the per-source report."""
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()
    report: dict = {"sources": {}, "decontamination": {}, "duplicates": 0}
    by_bench: dict = {}  # source -> {benchmark: records dropped that overlap it}
    f_dropped = open(out / "contaminated.jsonl", "w", encoding="utf-8") if decon is not None else None
    skipped: list = []  # --on_error skip: every record left out, with its file, line and reason (OUT/skipped.jsonl)
    f_legal = open(work / "legal.jsonl", "w", encoding="utf-8")
    f_general = open(work / "general.jsonl", "w", encoding="utf-8")
    f_rl = open(out / "rl_prompts.jsonl", "w", encoding="utf-8")
    counts = {"legal_samples": 0, "legal_stage1": 0, "general_samples": 0, "rl_prompts": 0}
    for src in sources:
        name, kind = src["name"], src["kind"]
        general = kind == "general"  # mixed into stage 1 at --general_ratio
        conv = CONVERTERS[kind]
        rng = random.Random(f"{cfg.seed}:{name}")
        rep = {"kind": kind, "read": 0, "kept": 0, "samples": 0, "dropped": {}, "file_errors": {}}
        report["sources"][name] = rep
        dropped = rep["dropped"]
        read_errors: dict = {}
        it = read_source(src, cfg.on_error, read_errors, skipped)
        try:
            for path, line, rec in tqdm(it, desc=f"load {name}", unit="rec", leave=False, mininterval=2):
                rep["read"] += 1
                try:
                    got = conv(rec, path, line, rng, src["options"], cfg, scorer)
                    if kind in LEGAL_TASK_KINDS and rng.random() < cfg.stage2_task_frac:
                        got.samples[0].stages = [1, 2]  # a share of the legal-task records is resampled to stage 2
                    # exact dedup on the record's own normalised text (before templates: a template must not hide
                    # a duplicate)
                    key = text_key(got.key or sample_text(got.samples[0]))
                    if key in seen:
                        raise Drop("duplicate")
                    if decon is not None:
                        hit = set()
                        # statute text quoted inside other LawBench prompts (e.g. 3-5) is public law, not a leaked
                        # answer: statutes are checked against the recitation tasks only
                        tasks = decon.answer_tasks if kind == "statutes" else None
                        for s in got.samples:
                            hit |= decon.hits(sample_text(s), tasks)
                        if hit:
                            dec = report["decontamination"].setdefault(name, {})
                            for item in hit:  # LawBench tasks as before ("3-1"); LexEval's named ("LexEval 1_1")
                                task, idx = decon.items[item]
                                key = task if decon.benchmarks[item] == "LawBench" else f"LexEval {task}"
                                dec.setdefault(key, set()).add(idx)
                            benches = sorted({decon.benchmarks[i] for i in hit})
                            for b in benches:
                                by_bench.setdefault(name, {})[b] = by_bench.get(name, {}).get(b, 0) + 1
                            f_dropped.write(json.dumps({"source": name, "path": str(path), "line": line,
                                                        "benchmarks": benches, "items": sorted(
                                                            f"{decon.benchmarks[i]} {decon.items[i][0]} #"
                                                            f"{decon.items[i][1]}" for i in hit)},
                                                       ensure_ascii=False) + "\n")
                            raise Drop("contaminated")
                    seen.add(key)
                except Drop as d:
                    dropped[d.reason] = dropped.get(d.reason, 0) + 1
                    if d.reason == "duplicate":
                        report["duplicates"] += 1
                    continue
                except DataError as e:
                    if cfg.on_error == "raise":
                        raise
                    dropped[e.reason] = dropped.get(e.reason, 0) + 1
                    skipped.append(utils.skipped_record(e))
                    continue
                rep["kept"] += 1
                rep["samples"] += len(got.samples)
                for s in got.samples:
                    (f_general if general else f_legal).write(s.line())
                counts["general_samples" if general else "legal_samples"] += len(got.samples)
                counts["legal_stage1"] += 0 if general else sum(1 in s.stages for s in got.samples)
                if got.rl is not None:
                    f_rl.write(json.dumps(got.rl, ensure_ascii=False) + "\n")
                    counts["rl_prompts"] += 1
        except DataError as e:  # a whole-file problem (missing, not UTF-8, not JSON)
            if cfg.on_error == "raise":
                raise
            rep["file_errors"][e.reason] = rep["file_errors"].get(e.reason, 0) + 1
            skipped.append(utils.skipped_record(e))
        for reason, n in read_errors.items():  # unreadable lines counted by iter_records
            rep["read"] += n
            dropped[reason] = dropped.get(reason, 0) + n
        assert rep["read"] == rep["kept"] + sum(dropped.values()), (name, rep)
    for f in (f_legal, f_general, f_rl, f_dropped):
        if f is not None:
            f.close()
    report["decontamination"] = {s: {t: len(v) for t, v in sorted(d.items())}
                                 for s, d in report["decontamination"].items()}
    if decon is not None:  # which benchmark each dropped record overlapped (one line per record: contaminated.jsonl)
        report["decontamination_benchmarks"] = by_bench
    report["counts"] = counts
    if skipped:
        utils.write_jsonl(out / SKIPPED, skipped)
    report["skipped_records"] = len(skipped)
    return report


SKIPPED = "skipped.jsonl"  # --on_error skip: one line per record left out: file, line, reason, error


# ----------------------------------------------------------------------------------------------------------------------
# 7. Tokenize (parallel, streaming to a flat token store on disk)
# ----------------------------------------------------------------------------------------------------------------------

_TOK = None


def _init_worker(model_dir: str):
    global _TOK
    from transformers import AutoTokenizer
    _TOK = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)


def encode_batch(tokenizer, conversations: list[list[dict]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenize conversations with the tokenizer's chat template, one batched tokenizer call for all their turns.
    Returns [(input_ids int32 [T], supervised uint8 [T])]: 1 on assistant tokens (content and the end-of-turn token,
    every assistant turn), 0 elsewhere (system/user turns, role headers, the newline after end-of-turn).
    Works for any template whose rendering of messages[:k] is a prefix of the rendering of messages[:k+1]
    (ChatML / Qwen / InternLM2 / Llama-3 all are). Each turn is tokenized on its own, so no token straddles turns."""
    eot = utils.end_of_turn_ids(tokenizer)  # the tokens generation stops at (utils.stop_token_ids)
    pieces, owners = [], []
    for ci, msgs in enumerate(conversations):
        prev = ""
        for k, msg in enumerate(msgs):
            if msg["role"] == "assistant":
                p = tokenizer.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True)
                if p[len(prev):]:
                    pieces.append(p[len(prev):]); owners.append((ci, False))
                prev = p
            full = tokenizer.apply_chat_template(msgs[:k + 1], tokenize=False)
            if not full.startswith(prev):
                raise ValueError("chat template is not prefix-stable")
            if full[len(prev):]:
                pieces.append(full[len(prev):]); owners.append((ci, msg["role"] == "assistant"))
            prev = full
    ids_all = tokenizer(pieces, add_special_tokens=False)["input_ids"] if pieces else []
    ids = [[] for _ in conversations]
    sup = [[] for _ in conversations]
    for (ci, supervised), new in zip(owners, ids_all):
        ids[ci].extend(new)
        if supervised:  # up to and including the last end-of-turn token; whitespace after it is not the model's
            last = max((i for i, t in enumerate(new) if t in eot), default=len(new) - 1)
            sup[ci].extend([1] * (last + 1) + [0] * (len(new) - last - 1))
        else:
            sup[ci].extend([0] * len(new))
    return [(np.asarray(a, dtype=np.int32), np.asarray(b, dtype=np.uint8)) for a, b in zip(ids, sup)]


def encode_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """One conversation -> (input_ids, labels): labels = input_ids where encode_batch supervises, else IGNORE_INDEX."""
    ids, sup = encode_batch(tokenizer, [messages])[0]
    return ids.tolist(), np.where(sup.astype(bool), ids, utils.IGNORE_INDEX).tolist()


def _tokenize_job(lines: list[str]):
    samples = [json.loads(x) for x in lines]  # Sample.line()s
    enc = encode_batch(_TOK, [s["m"] for s in samples])
    return [(i, m, s["st"]) for (i, m), s in zip(enc, samples)]


def iter_mix(work: Path, general_keep: set[int]):
    """Stage-tagged sample lines: all legal samples, then the general samples picked for the mix."""
    with open(work / "legal.jsonl", encoding="utf-8") as f:
        yield from f
    with open(work / "general.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i in general_keep:
                yield line


def chunked(it, n):
    it = iter(it)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def tokenize_all(cfg: Config, work: Path, general_keep: set[int], total: int, n_legal: int) -> dict:
    """Tokenize the mix into work/tokens.bin (int32) + work/sup.bin (uint8); returns lengths, the samples of each
    stage (indices into the store), which stored samples are general data (the mix's first n_legal are legal) and the
    overlong counts."""
    lengths, members, general, seen = [], {1: [], 2: []}, [], 0
    over = {"truncated": 0, "dropped": 0}
    from transformers import AutoTokenizer  # noqa: F401  imported once here, inherited by forked workers
    ctx = mp.get_context("fork" if sys.platform != "win32" else "spawn")
    jobs = chunked(iter_mix(work, general_keep), cfg.chunk)
    with open(work / "tokens.bin", "wb") as ft, open(work / "sup.bin", "wb") as fs:
        if cfg.workers > 1:
            pool = ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg.model,))
            results = pool.imap(_tokenize_job, jobs)
        else:
            _init_worker(cfg.model)
            pool, results = None, map(_tokenize_job, jobs)
        bar = tqdm(total=total, desc="tokenize", unit="sample", mininterval=2)
        for res in results:
            for ids, sup, st in res:
                seen += 1
                if len(ids) > cfg.seq_len:
                    if cfg.overlong == "drop":
                        over["dropped"] += 1
                        continue
                    over["truncated"] += 1
                    ids, sup = ids[:cfg.seq_len], sup[:cfg.seq_len]
                ft.write(ids.tobytes())
                fs.write(sup.tobytes())
                for stage in st:
                    members[stage].append(len(lengths))
                lengths.append(len(ids))
                general.append(seen > n_legal)
            bar.update(len(res))
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return {"lengths": np.asarray(lengths, dtype=np.int64), "overlong": over, "general": np.asarray(general, bool),
            "members": {k: np.asarray(v, dtype=np.int64) for k, v in members.items()}}


# ----------------------------------------------------------------------------------------------------------------------
# 8. Pack each stage (best fit, never split) and write the packed files
# ----------------------------------------------------------------------------------------------------------------------

def best_fit_pack(lengths, capacity: int, seed: int = 0) -> list[list[int]]:
    """Best-fit-decreasing bin packing of whole samples.

    lengths: int [n], each 1 <= lengths[i] <= capacity. Returns packs: a list of lists of sample indices (each index
    exactly once, sum of lengths per pack <= capacity). Samples go longest first (ties by index) into the open pack
    with the least room that still fits; the packs are then shuffled with `seed`. Deterministic for (lengths, seed).
    """
    lengths = [int(x) for x in lengths]
    for i, n in enumerate(lengths):
        if not 1 <= n <= capacity:
            raise ValueError(f"sample {i} has length {n}, outside 1..{capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (remaining capacity, pack id) of packs that still have room
    for i in order:
        n = lengths[i]
        j = bisect.bisect_left(room, (n, -1))
        if j < len(room):
            free, p = room.pop(j)
        else:
            free, p = capacity, len(packs)
            packs.append([])
        packs[p].append(i)
        if free - n > 0:
            bisect.insort(room, (free - n, p))
    random.Random(seed).shuffle(packs)
    return packs


def pack_boundaries(lengths) -> np.ndarray:
    """Sample lengths [k] of one pack -> cu_seqlens int32 [k+1] = [0, l0, l0+l1, ..., sum]."""
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int32)


def pack_position_ids(cu_seqlens, seq_len: int) -> np.ndarray:
    """cu_seqlens [k+1] -> position ids int32 [seq_len]: 0,1,2,... restarting at each sample start, 0 on padding."""
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    pos = np.zeros(seq_len, dtype=np.int32)
    n = int(cu[-1])
    if n:
        idx = np.arange(n)
        starts = np.repeat(cu[:-1], np.diff(cu))
        pos[:n] = idx - starts
    return pos


def write_packed(out_dir, packs, n_packs: int, seq_len: int, pad_id: int, meta: dict | None = None,
                 desc: str = "pack") -> dict:
    """Write a packed stage: input_ids / labels / position_ids [n_packs, seq_len] int32, cu_seqlens (all packs'
    boundaries, concatenated) int32, cu_offsets [n_packs + 1] int64, meta.json.

    packs: an iterable of n_packs lists of (input_ids, labels) int sequences, each list's total length <= seq_len.
    Rows stream to memory-mapped .npy files, so a stage larger than RAM is fine. Returns the meta written
    (`meta` adds fields such as tokenizer and stage).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fmt = np.lib.format
    arrays = {name: fmt.open_memmap(out / f"{name}.npy", mode="w+", dtype=np.int32, shape=(n_packs, seq_len))
              for name in ("input_ids", "labels", "position_ids")}
    cu_all, cu_offsets, n_samples, n_tokens, n_sup = [], [0], 0, 0, 0
    for p, pack in enumerate(tqdm(packs, total=n_packs, desc=desc, unit="pack", mininterval=2,
                                  disable=n_packs < 1000)):
        cu = pack_boundaries([len(ids) for ids, _ in pack])
        if cu[-1] > seq_len:
            raise ValueError(f"pack {p} holds {cu[-1]} tokens > seq_len {seq_len}")
        row_ids = np.full(seq_len, pad_id, dtype=np.int32)
        row_lab = np.full(seq_len, utils.IGNORE_INDEX, dtype=np.int32)
        for (ids, labels), a, b in zip(pack, cu[:-1], cu[1:]):
            row_ids[a:b], row_lab[a:b] = ids, labels
        arrays["input_ids"][p], arrays["labels"][p] = row_ids, row_lab
        arrays["position_ids"][p] = pack_position_ids(cu, seq_len)
        n_samples, n_tokens = n_samples + len(pack), n_tokens + int(cu[-1])
        n_sup += int((row_lab != utils.IGNORE_INDEX).sum())
        cu_all.append(cu)
        cu_offsets.append(cu_offsets[-1] + len(cu))
    if len(cu_offsets) != n_packs + 1:
        raise ValueError(f"got {len(cu_offsets) - 1} packs, expected {n_packs}")
    for a in arrays.values():
        a.flush()
    del arrays
    np.save(out / "cu_seqlens.npy", np.concatenate(cu_all).astype(np.int32) if cu_all else np.zeros(0, np.int32))
    np.save(out / "cu_offsets.npy", np.asarray(cu_offsets, dtype=np.int64))
    meta = {"seq_len": seq_len, "n_packs": n_packs, "n_samples": n_samples, "n_tokens": n_tokens,
            "n_supervised": n_sup, "pad_token_id": int(pad_id),
            "packing_efficiency": n_tokens / (n_packs * seq_len) if n_packs else 0.0, "tokenizer": "", "stage": "",
            **(meta or {})}
    utils.write_json(out / "meta.json", meta)
    return meta


def write_packed_stage(out_dir, samples, seq_len: int, pad_id: int, stage: str = "test", best_fit: bool = False,
                       seed: int = 0) -> Path:
    """In-memory (input_ids, labels) samples -> a packed stage: greedy *in order* (so a test knows which samples
    share a pack), or best_fit_pack as write_stage with best_fit=True. A sample longer than seq_len is an error."""
    lengths = [len(ids) for ids, _ in samples]
    if best_fit:
        packs = best_fit_pack(lengths, seq_len, seed)
    else:
        packs, used = [[]], 0
        for i, n in enumerate(lengths):
            if n > seq_len:
                raise ValueError(f"sample of {n} tokens > seq_len {seq_len}")
            if used + n > seq_len:
                packs.append([])
                used = 0
            packs[-1].append(i)
            used += n
    write_packed(out_dir, [[samples[i] for i in p] for p in packs], len(packs), seq_len, pad_id, {"stage": stage})
    return Path(out_dir)


def write_stage(cfg: Config, work: Path, out_dir: Path, stage: str, index: np.ndarray, lengths: np.ndarray,
                offsets: np.ndarray, pad_id: int) -> dict:
    """Pack samples `index` (into the token store) best fit and write them with write_packed."""
    lens = lengths[index]
    packs = best_fit_pack(lens, cfg.seq_len, seed=cfg.seed)
    tokens = np.memmap(work / "tokens.bin", dtype=np.int32, mode="r") if offsets[-1] else np.zeros(0, np.int32)
    sup = np.memmap(work / "sup.bin", dtype=np.uint8, mode="r") if offsets[-1] else np.zeros(0, np.uint8)

    def pack_rows():
        for members in packs:
            rows = []
            for s in index[members]:
                t = tokens[offsets[s]:offsets[s + 1]]
                rows.append((t, np.where(sup[offsets[s]:offsets[s + 1]].astype(bool), t, utils.IGNORE_INDEX)))
            yield rows

    meta = write_packed(out_dir, pack_rows(), len(packs), cfg.seq_len, pad_id,
                        {"tokenizer": str(cfg.model), "stage": stage}, desc=f"pack {stage}")
    pct = {f"p{q}": int(np.percentile(lens, q)) for q in (50, 90, 99)} if len(lens) else {}
    return {"samples": meta["n_samples"], "tokens": meta["n_tokens"], "supervised_tokens": meta["n_supervised"],
            "packs": meta["n_packs"], "packing_efficiency": round(meta["packing_efficiency"], 6),
            "length_percentiles": {**pct, "max": int(lens.max()) if len(lens) else 0}}


# ----------------------------------------------------------------------------------------------------------------------
# 9. Main: run the stages, write data_report.json, print the table
# ----------------------------------------------------------------------------------------------------------------------

def run(cfg: Config, scorer=None) -> dict:
    """Build OUT from scratch in the hidden folder .OUT.tmp beside it, then swap it in: OUT is never a mix of two
    builds, and a build that fails halfway leaves the previous OUT as it was (and .OUT.tmp, until the next run)."""
    t0 = time.time()
    preflight(cfg)
    final = Path(cfg.out)
    utils.lock_run_dir(final.parent, f".{final.name}.lock")  # one build of OUT at a time (OUT itself is swapped)
    try:
        return _run(cfg, final, scorer, t0)
    finally:
        utils.unlock_run_dirs()


def _run(cfg: Config, final: Path, scorer, t0: float) -> dict:
    sources = load_manifest(cfg.manifest)
    decon = None
    if cfg.decontaminate:
        decon = Decontaminator(cfg.lawbench_dir, cfg.window, cfg.short_window, cfg.short_below, cfg.min_window_hits,
                               cfg.min_window_frac, cfg.boilerplate_items,
                               tuple(t.strip() for t in cfg.answer_tasks.split(",") if t.strip()), cfg.lexeval_dir)
        print(f"decontamination index: {decon.benchmarks.count('LawBench')} LawBench items"
              + (f" + {decon.benchmarks.count('LexEval')} LexEval items" if cfg.lexeval_dir else ""), flush=True)

    out = final.parent / f".{final.name}.tmp"
    cache = [p / "llm_scores.jsonl" for p in (final, out) if (p / "llm_scores.jsonl").is_file()]
    cached = "".join(p.read_text(encoding="utf-8") for p in cache) if not cfg.llm_cache else ""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if cached:  # LLM scores already paid for (the old build's, or a failed build's) are kept
        (out / "llm_scores.jsonl").write_text(cached, encoding="utf-8")
    utils.save_config(cfg, out)
    try:
        report = build(cfg, out, sources, decon, scorer, t0)
    except BaseException:  # nothing half-built stays; only LLM scores paid for (read again by the next run)
        for p in out.iterdir():
            if p.name != "llm_scores.jsonl":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        if not any(out.iterdir()):
            out.rmdir()
        raise
    if final.exists():  # swap: the old build is removed only after the new one is complete
        old = final.parent / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(out, final)
        shutil.rmtree(old)
    else:
        os.replace(out, final)
    print_report(report)
    if report.get("skipped_records"):
        print(f"skipped {report['skipped_records']} records (--on_error skip): each with its file, line and reason "
              f"in {final / SKIPPED}")
    stages = " ".join(str(final / s) for s in report["stages"])
    utils.done("prepare_data.py", f"{final}/ (stages: {stages}; data_report.json, rl_prompts.jsonl)",
               f"python sft.py --model {cfg.model} --data {final / 'stage1'} --out runs/sft1")
    return report


def build(cfg: Config, out: Path, sources: list[dict], decon: Decontaminator | None, scorer, t0: float) -> dict:
    """Stages 1-9 into `out` (the temporary folder)."""
    if scorer is None and cfg.llm_url:  # --llm_model checked by preflight
        scorer = LLMScorer(cfg.llm_url, cfg.llm_model, cfg.llm_key_env, cfg.llm_cache or out / "llm_scores.jsonl")
    timings = {}
    # what the decontamination numbers mean, or that there are none: an empty "decontamination" must not read as clean
    check = ({"run": True, "lawbench_dir": str(cfg.lawbench_dir),
              "lawbench_items": decon.benchmarks.count("LawBench"),
              "counts": "decontamination[source][task] = distinct LawBench items of that task that the source's "
                        "records overlap (LexEval tasks: 'LexEval 1_1'); the training records removed are "
                        "sources[source].dropped.contaminated, by benchmark in decontamination_benchmarks[source], "
                        "one line each in contaminated.jsonl",
              **({"lexeval_dir": str(cfg.lexeval_dir), "lexeval_items": decon.benchmarks.count("LexEval")}
                 if cfg.lexeval_dir else {})}
             if decon is not None else {"run": False, "reason": "--decontaminate false: LawBench items may be in "
                                                                "the training data"})

    # 1-6: load, convert, filter, dedup, decontaminate
    timings["index"] = time.time() - t0
    report = collect(cfg, sources, out, scorer, decon)
    report["decontamination_check"] = check
    timings["load_filter_dedup_decontaminate"] = time.time() - t0 - sum(timings.values())
    if scorer is not None:
        report["llm_filter"] = {"calls": scorer.calls, "cache_hits": scorer.hits}
    c = report.pop("counts")

    # 7: mix. stage1 = legal + general at general_ratio of the stage; stage2 = samples tagged 2
    want = int(round(cfg.general_ratio / (1 - cfg.general_ratio) * c["legal_stage1"])) if cfg.general_ratio < 1 else \
        c["general_samples"]
    n_gen = min(want, c["general_samples"])
    general_keep = set(random.Random(cfg.seed).sample(range(c["general_samples"]), n_gen))
    report["mix"] = {"general_ratio": cfg.general_ratio, "general_wanted": want, "general_used": n_gen,
                     "general_available": c["general_samples"], "rl_prompts": c["rl_prompts"]}

    # 8: tokenize + pack
    tok = tokenize_all(cfg, out / "work", general_keep, c["legal_samples"] + n_gen, c["legal_samples"])
    timings["tokenize"] = time.time() - t0 - sum(timings.values())
    from transformers import AutoTokenizer
    pad_id = AutoTokenizer.from_pretrained(cfg.model).pad_token_id or 0
    lengths = tok["lengths"]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    report["overlong"] = tok["overlong"]
    report["stages"] = {}
    for stage, index in tok["members"].items():
        name = f"stage{stage}"
        report["stages"][name] = write_stage(cfg, out / "work", out / name, name, index, lengths, offsets, pad_id)
        gen = tok["general"][index]  # each stage's legal / general share (plots.py draws it)
        report["stages"][name]["mix"] = {
            "legal": {"samples": int((~gen).sum()), "tokens": int(lengths[index][~gen].sum())},
            "general": {"samples": int(gen.sum()), "tokens": int(lengths[index][gen].sum())}}
    for f in ("tokens.bin", "sup.bin"):
        (out / "work" / f).unlink()
    timings["pack_write"] = time.time() - t0 - sum(timings.values())
    report["seconds"] = round(time.time() - t0, 1)
    report["timings"] = {k: round(v, 2) for k, v in timings.items()}

    # 9: report
    utils.write_json(out / "data_report.json", report)
    utils.append_jsonl(out / "metrics.jsonl", {"seconds": report["seconds"],
                                               **{k: v["tokens"] for k, v in report["stages"].items()}})
    return report


def print_report(report: dict):
    print(f"\n{'source':<34}{'kind':<14}{'read':>8}{'kept':>8}  dropped")
    for name, r in report["sources"].items():
        drops = ", ".join(f"{k}={v}" for k, v in sorted(r["dropped"].items())) or "-"
        fe = "  file_errors: " + ", ".join(f"{k}={v}" for k, v in r["file_errors"].items()) if r["file_errors"] else ""
        print(f"{name:<34}{r['kind']:<14}{r['read']:>8}{r['kept']:>8}  {drops}{fe}")
    check = report.get("decontamination_check") or {}
    lex = f" + {check['lexeval_items']} LexEval items" if "lexeval_items" in check else ""
    if not check.get("run"):
        print(f"decontamination: NOT RUN ({check.get('reason', 'no record of it')})")
    else:
        removed = sum(r["dropped"].get("contaminated", 0) for r in report["sources"].values())
        print(f"decontamination vs {check['lawbench_items']} LawBench items{lex}: {removed} records removed"
              + ("" if report["decontamination"] else " (no overlap found)"))
    for name, d in report["decontamination"].items():
        by = report.get("decontamination_benchmarks", {}).get(name)
        hits = [f"{t}: {n} {'LexEval' if t.startswith('LexEval') else 'LawBench'} items" for t, n in d.items()]
        print(f"  {name}: overlaps " + ", ".join(hits)
              + (f"  (records dropped, by benchmark: {', '.join(f'{b} {n}' for b, n in by.items())})"
                 if by and lex else ""))
    print(f"duplicates: {report['duplicates']}   overlong: {report['overlong']}   mix: {report['mix']}")
    print(f"seconds: {report['seconds']}  {report.get('timings', {})}")
    print(f"\n{'stage':<10}{'samples':>10}{'tokens':>14}{'packs':>8}{'efficiency':>12}  lengths")
    for name, s in report["stages"].items():
        print(f"{name:<10}{s['samples']:>10}{s['tokens']:>14}{s['packs']:>8}{s['packing_efficiency']:>12.4%}  "
              f"{s['length_percentiles']}")


def main(argv=None):
    utils.run_command("prepare_data.py", run, utils.parse_config(Config, argv))


if __name__ == "__main__":
    sys.exit(main())
