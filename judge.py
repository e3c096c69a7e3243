"""
Pairwise LLM judge with position swap (InternLM-Law's subjective evaluation).

Each question is answered by system A (the model under test) and system B (the baseline). A judge LLM behind any
OpenAI-compatible chat endpoint compares the two answers twice, once in each order; a verdict counts only when both
orders agree, otherwise the pair is position-biased ("inconsistent").

    python judge.py --questions Q.jsonl --answers_a A.jsonl --answers_b B.jsonl \
        --llm_url http://127.0.0.1:8000/v1 --llm_model NAME --out OUT

Inputs: questions JSONL (id, category, question, optional reference; the DISC-Law-Eval spelling id/input/output is
accepted too), answers JSONL (id, answer) -- or --model_a / --model_b folders to generate answers with utils.generate,
or `--answers_b reference` to use the questions' reference answers as the baseline.
Outputs: OUT/judgments.jsonl (one line per judgment; also the cache: a rerun never repeats a stored call),
OUT/summary.json (wins, ties, losses, inconsistent, errors, win_rate, adjusted_win_rate, intervals, by_category),
OUT/config.json and a printed table. The API key is read from the environment (--llm_key_env) and never written.

Expert evaluation, three subcommands, each usable alone (sections 8-10):

    python judge.py rubric --questions Q.jsonl --answers A.jsonl,B.jsonl --criteria disc --llm_url URL \
        --llm_model NAME --out OUT        # LLM grades each answer 1-5 per criterion -> OUT/rubric_summary.json
    python judge.py human --questions Q.jsonl --answers_a A.jsonl --answers_b B.jsonl --annotators x,y,z \
        --overlap 10 --out STUDY          # the experts' blind pairwise page -> STUDY/votes.jsonl
    python judge.py agreement --votes STUDY/votes.jsonl [--judge OUT] --out DIR     # -> DIR/agreement.json

Sections: 1. config  2. judging prompt and verdicts  3. inputs  4. judge client  5. cache  6. scores  7. main
          8. rubric grading  9. the expert page  10. agreement
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import math
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import utils
from utils import DataError


# ----------------------------------------------------------------------------------------------------------------------
# 1. Config
# ----------------------------------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class LLMJudgeConfig:
    """What the pairwise judge and the rubric share: the questions, the judge endpoint and its client, the intervals."""
    questions: str = field(metadata={"help": "questions JSONL: id, question (or input), optional category, reference"})
    llm_url: str = field(metadata={"help": "judge: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1",
                                   "alias": "--judge_base_url"})
    llm_model: str = field(metadata={"help": "judge: model name sent to the endpoint", "alias": "--judge_model"})
    llm_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "environment variable holding the key",
                                                                 "alias": "--api_key_env"})
    concurrency: int = field(default=4, metadata={"help": "judge requests in flight at most", "min": 1})
    timeout: float = field(default=120.0, metadata={"help": "seconds per judge request", "gt": 0})
    max_retries: int = field(default=6, metadata={"help": "retries on 429 / 5xx / timeout / connection / bad JSON",
                                                  "min": 0})
    backoff: float = field(default=1.0, metadata={"help": "first retry wait in seconds, doubled each retry", "min": 0})
    backoff_max: float = field(default=60.0, metadata={"help": "longest retry wait (also caps Retry-After)", "min": 0})
    max_reasks: int = field(default=2, metadata={"help": "re-asks on an unparsable reply", "min": 0})
    judge_max_tokens: int = field(default=2048, metadata={"help": "max_tokens of the judge's reply", "min": 1})
    max_items: int | None = field(default=None, metadata={"help": "first N questions only", "min": 1})
    category_field: str = field(default="category", metadata={"help": "question field of the category"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the 95% intervals (0: none)",
                                                   "min": 0})
    seed: int = field(default=0, metadata={"help": "bootstrap seed", "min": 0})


@dataclass(kw_only=True)
class JudgeConfig(LLMJudgeConfig):
    """Pairwise LLM judge with position swap. Also: judge.py rubric | human | agreement (each has --help)."""
    out: str = field(metadata={"help": "output folder (judgments.jsonl, summary.json, config.json)"})
    answers_a: str | None = field(default=None, metadata={"help": "answers JSONL of system A (id, answer)"})
    answers_b: str | None = field(default=None, metadata={"help": "answers JSONL of system B, or 'reference'"})
    model_a: str | None = field(default=None, metadata={"help": "model folder: generates A's answers"})
    model_b: str | None = field(default=None, metadata={"help": "model folder: generates B's answers"})
    name_a: str | None = field(default=None, metadata={"help": "system A's name (default: file stem / folder name)"})
    name_b: str | None = field(default=None, metadata={"help": "system B's name"})
    backend: str = field(default="hf", metadata={"help": "generation backend for --model_a/b",
                                                  "choices": ("hf", "vllm")})
    max_new_tokens: int = field(default=1024, metadata={"help": "new tokens per generated answer", "min": 1})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": utils.MAX_PROMPT_TOKENS_HELP, "min": 1})
    overwrite: bool = field(default=False, metadata={
        "help": "OUT holds a comparison by another judge model / systems / questions: delete it and start clean"})


def check_judge_flags(cfg: LLMJudgeConfig) -> None:
    """What the pairwise judge and the rubric check first: every field, the judge's URL, OUT (DataError, one line)."""
    utils.check_fields(cfg)
    if not re.match(r"https?://[^/\s]+", cfg.llm_url):
        raise DataError("--llm_url", None, None, f"expected an http:// or https:// URL, got {cfg.llm_url!r}",
                        reason="bad_flag")
    utils.check_out_dir(cfg.out)


def preflight(cfg: JudgeConfig) -> None:
    """Every flag, input file and model folder, then the judge endpoint (one request), checked before anything is
    generated, judged or written. A problem is a DataError (one line)."""
    check_judge_flags(cfg)
    questions = load_questions(cfg.questions, cfg.category_field, cfg.max_items)
    for side in "ab":
        model = getattr(cfg, f"model_{side}")
        if model is not None and getattr(cfg, f"answers_{side}") is None:
            utils.check_backend(cfg.backend)
            utils.check_model_dir(model, f"--model_{side}", chat_template=True)
        else:  # a file or the references: read and checked now (cheap)
            get_answers(side, cfg, questions, Path(cfg.out))
    if system_name("a", cfg) == system_name("b", cfg):
        raise DataError("--name_a", None, None, f"both systems are named {system_name('a', cfg)!r}; set --name_a / "
                        "--name_b", reason="bad_flag")
    check_endpoint(cfg.llm_url, os.environ.get(cfg.llm_key_env, ""), min(cfg.timeout, 30.0))


# ----------------------------------------------------------------------------------------------------------------------
# 2. Judging prompt and verdicts (FastChat-style pairwise: the reply ends with [[A]], [[B]] or [[C]] for a tie)
# ----------------------------------------------------------------------------------------------------------------------
# Change PROMPT_VERSION whenever the wording changes: it is part of the cache key, so old verdicts are not reused.

PROMPT_VERSION = "lexlab-pairwise-zh-v1"

SYSTEM_PROMPT = (
    "你是一名公正、严谨的资深法律专家。请比较两位AI助手对下面法律问题的回答，判断哪一个更好。\n"
    "评价标准（按重要性排列）：\n"
    "1. 法律正确性：结论与分析是否符合现行中国法律和司法实践，有无错误；\n"
    "2. 法条引用：引用的法律、法条是否准确、相关，有无编造或张冠李戴；\n"
    "3. 完整性：是否覆盖问题的关键争点与必要的法律后果；\n"
    "4. 推理：论证是否清晰、有条理，事实与法律之间的推理是否成立；\n"
    "5. 实用性：对提问者是否有实际帮助（可操作的建议、风险提示）。\n"
    "若提供了参考答案，可将其作为判断依据，但不要求逐字一致。\n"
    "不要因回答出现的先后顺序、篇幅长短或助手名称而产生偏向，尽量客观。\n"
    "先给出简要的比较理由，最后一行严格按以下格式给出结论："
    "助手A更好输出“[[A]]”，助手B更好输出“[[B]]”，两者相当输出“[[C]]”。"
)

USER_TEMPLATE = (
    "[问题]\n{question}\n\n{reference}"
    "[助手A的回答开始]\n{answer_1}\n[助手A的回答结束]\n\n"
    "[助手B的回答开始]\n{answer_2}\n[助手B的回答结束]"
)

REASK = "请严格按要求，在最后一行只输出结论：[[A]]、[[B]] 或 [[C]]。"

VERDICT_RE = re.compile(r"\[\[([ABC])\]\]")


def judge_messages(question: str, reference: str | None, first: str, second: str) -> list[dict]:
    """Chat messages asking the judge to compare `first` (shown as 助手A) with `second` (shown as 助手B)."""
    ref = f"[参考答案]\n{reference}\n\n" if reference else ""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE.format(question=question, reference=ref,
                                                             answer_1=first, answer_2=second)}]


def parse_verdict(reply: str) -> str | None:
    """'A', 'B' or 'C' when the reply holds exactly one distinct verdict tag; None otherwise (never guessed)."""
    tags = set(VERDICT_RE.findall(reply or ""))
    return tags.pop() if len(tags) == 1 else None


def winner(verdict: str, order: str) -> str:
    """Position verdict -> system: order 'ab' shows system a first, 'ba' shows system b first. C -> 'tie'."""
    if verdict == "C":
        return "tie"
    first_wins = verdict == "A"
    return ("a" if first_wins else "b") if order == "ab" else ("b" if first_wins else "a")


# ----------------------------------------------------------------------------------------------------------------------
# 3. Inputs: questions, answers (files, the reference, or generated by utils.generate)
# ----------------------------------------------------------------------------------------------------------------------

QUESTION_FIELDS = ("question", "input", "query", "instruction")
REFERENCE_FIELDS = ("reference", "output", "answer", "response")
ANSWER_FIELDS = ("answer", "output", "response")


def infer_category(question: str) -> str:
    """Category for sets without one (DISC-Law-Eval): case analysis, reasoning over a given background, consultation."""
    if question.startswith("请对以下案件做出分析"):
        return "case_analysis"
    if question.startswith("根据以下背景回答问题"):
        return "legal_reasoning"
    return "consultation"


def _first_field(rec: dict, names, path, line, what: str, allow_empty: bool = False) -> str:
    for name in names:
        if name in rec:
            return utils.require(rec, name, path, line, allow_empty=allow_empty)
    raise DataError(path, line, "/".join(names), f"missing ({what})", reason="missing_field")


def _record_id(rec: dict, path, line) -> str:
    return str(utils.require(rec, "id", path, line, kind=(str, int)))


def load_questions(path, category_field: str = "category", limit: int | None = None) -> list[dict]:
    """-> [{id, question, reference (or None), category}] in file order; duplicate ids are a DataError."""
    out, seen = [], set()
    for line, rec in utils.iter_records(path):
        qid = _record_id(rec, path, line)
        if qid in seen:
            raise DataError(path, line, "id", f"duplicate id {qid!r}", reason="duplicate_id")
        seen.add(qid)
        question = _first_field(rec, QUESTION_FIELDS, path, line, "the question")
        ref_name = next((n for n in REFERENCE_FIELDS if n in rec), None)
        reference = utils.require(rec, ref_name, path, line) if ref_name else None
        category = rec.get(category_field) or infer_category(question)
        out.append({"id": qid, "question": question, "reference": reference, "category": str(category)})
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(path, None, None, "no questions", reason="empty_file")
    return out


def load_answers(path, questions: list[dict]) -> dict[str, str]:
    """answers JSONL -> {id: answer}; every question must have one (a one-line DataError names the first missing)."""
    answers = {}
    for line, rec in utils.iter_records(path):
        # an empty answer is a (bad) answer, not a data error: the judge sees it as it is
        answers[_record_id(rec, path, line)] = _first_field(rec, ANSWER_FIELDS, path, line, "the answer", True)
    missing = [q["id"] for q in questions if q["id"] not in answers]
    if missing:
        raise DataError(path, None, "id", f"no answer for {len(missing)} question(s), first id {missing[0]!r}",
                        reason="missing_answer")
    return answers


def system_name(side: str, cfg: JudgeConfig) -> str:
    """--name_x, else 'reference', the answers file's stem or the model folder's name."""
    path, model, name = getattr(cfg, f"answers_{side}"), getattr(cfg, f"model_{side}"), getattr(cfg, f"name_{side}")
    return name or ("reference" if path == "reference" else Path(path).stem if path is not None else
                    utils.run_name(model))


def get_answers(side: str, cfg: JudgeConfig, questions: list[dict], out: Path) -> tuple[str, dict[str, str]]:
    """(system name, {id: answer}) for side 'a' or 'b' from a file, the references, or a model folder."""
    path, model, name = getattr(cfg, f"answers_{side}"), getattr(cfg, f"model_{side}"), system_name(side, cfg)
    if (path is None) == (model is None):
        raise DataError(f"--answers_{side}", None, None, f"give exactly one of --answers_{side} / --model_{side}",
                        reason="bad_flag")
    if path == "reference":
        bad = [q["id"] for q in questions if not q["reference"]]
        if bad:
            raise DataError(f"--answers_{side} reference", None, None, f"question {bad[0]!r} has no reference",
                            reason="bad_flag")
        return name, {q["id"]: q["reference"] for q in questions}
    if path is not None:
        return name, load_answers(path, questions)
    saved = out / f"answers_{side}_{name}.jsonl"  # generated once; delete it to regenerate
    # answers made by another model (retrained at the same path) are never judged as this one's: answers_*.jsonl.model
    # records which model made them (the rule of evaluate.py's <task>.json.model, utils.prepare_outputs)
    made = utils.model_identity(model, backend=cfg.backend, max_new_tokens=cfg.max_new_tokens,
                                max_prompt_tokens=cfg.max_prompt_tokens)
    utils.prepare_outputs([saved], made, False, f"not judged as {model}'s answers; delete it to regenerate them (or "
                                                f"--overwrite: start {out} clean)")
    if not saved.exists():
        # prompt budget: a question too long for the model's context is refused (empty answer, counted), not sent
        budget = utils.prompt_budget(model, cfg.max_new_tokens, cfg.max_prompt_tokens)
        gen, over = utils.generate_within_budget(model, {i: q["question"] for i, q in enumerate(questions)}, budget,
                                                 backend=cfg.backend, max_new_tokens=cfg.max_new_tokens)
        if over:
            print(f"judge.py: {len(over)} question(s) longer than the {budget}-token prompt budget of {model}: empty "
                  "answers", file=sys.stderr)
        texts = [gen.get(i, "") for i in range(len(questions))]
        utils.write_json(utils.made_by_path(saved), made)
        utils.write_jsonl(saved, [{"id": q["id"], "answer": t} for q, t in zip(questions, texts)])
    return name, load_answers(saved, questions)


# ----------------------------------------------------------------------------------------------------------------------
# 4. Judge endpoint (the client is utils.ChatClient: retries with exponential backoff, key never shown)
# ----------------------------------------------------------------------------------------------------------------------

def check_endpoint(base_url: str, api_key: str, timeout: float) -> None:
    """One GET BASE_URL/models before any work: a judge that does not answer, refuses the key or is not an
    OpenAI-compatible base URL is a one-line DataError now, not minutes of retries per question later. Any other
    HTTP answer (200; 405 / 501 from a server without the listing) means the endpoint is up."""
    url = base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    redact = (lambda t: t.replace(api_key, "[REDACTED]")) if api_key else (lambda t: t)  # noqa: E731
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            resp.read(1 << 20)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise DataError("--llm_url", None, None, f"{base_url} refused the API key (GET /models: HTTP "
                            f"{e.code}; check --llm_key_env)", reason="judge_down") from None
        if e.code == 404:
            raise DataError("--llm_url", None, None, f"GET {url}: HTTP 404: not an OpenAI-compatible base URL "
                            "(it usually ends in /v1)", reason="judge_down") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        reason = redact(str(getattr(e, "reason", e)))
        raise DataError("--llm_url", None, None, f"{base_url} does not answer ({type(e).__name__}: {reason}); "
                        "start the judge server or fix the URL", reason="judge_down") from None


def judge_one(client: utils.ChatClient, q: dict, answers: dict, order: str, max_reasks: int) -> dict:
    """Judge question q in one order ('ab' or 'ba'). Returns the judgment record; status 'ok', 'unparsable'
    (re-asks spent: an error, cached, never guessed) or 'failed' (transport: an error, not cached, retried next run)."""
    first, second = (answers["a"], answers["b"]) if order == "ab" else (answers["b"], answers["a"])
    messages = judge_messages(q["question"], q["reference"], first, second)
    rec = {"qid": q["id"], "category": q["category"], "order": order, "status": "ok", "verdict": None,
           "winner": None, "reply": None, "asks": 0, "error": None}
    try:
        for _ in range(max_reasks + 1):
            reply = client.chat(messages)
            rec["asks"] += 1
            rec["reply"] = reply
            verdict = parse_verdict(reply)
            if verdict is not None:
                rec.update(verdict=verdict, winner=winner(verdict, order))
                return rec
            messages = messages + [{"role": "assistant", "content": reply}, {"role": "user", "content": REASK}]
        rec.update(status="unparsable", error=f"no single [[A]]/[[B]]/[[C]] verdict after {rec['asks']} asks")
    except utils.ChatError as e:
        rec.update(status="failed", error=str(e))
    return rec


# ----------------------------------------------------------------------------------------------------------------------
# 5. Cache: judgments.jsonl (utils.JsonlCache: one fsync'd line per judgment; a torn last line is dropped)
# ----------------------------------------------------------------------------------------------------------------------

def content_hash(*texts) -> str:
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def cache_key(q: dict, name_a: str, name_b: str, order: str, judge_model: str, answers: dict) -> str:
    """(question id + hash of question/reference/answers, system names, order, judge model, prompt version).
    The answers are hashed too, so regenerated answers under the same system name are judged afresh."""
    return "|".join([q["id"], content_hash(q["question"], q["reference"], answers["a"], answers["b"]),
                     name_a, name_b, order, judge_model, PROMPT_VERSION])


def ask_all(prog: str, what: str, cache: utils.JsonlCache, total: int, concurrency: int, calls: dict) -> dict:
    """Ask the judge `calls` ({key: (label, fields, fn, args)}: the record stored under key is {key, **fields,
    **fn(*args)}) on `concurrency` threads (the pairwise judge, the rubric); each answer is cached as it returns.
    -> {key: record} of the calls whose transport failed (status 'failed', named on stderr): not cached, so a later
    run asks again. Ctrl-C stops sending new (paid) requests, what finished is already on disk; all `total` calls
    failed: an error (exit 1), not a summary whose rates are null."""
    from tqdm import tqdm
    failed: dict[str, dict] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futures = {pool.submit(fn, *args): (key, label, fields) for key, (label, fields, fn, args) in calls.items()}
        for fut in tqdm(as_completed(futures), total=len(futures), desc=what, disable=not calls):
            key, label, fields = futures[fut]
            rec = {"key": key, **fields, **fut.result()}
            if rec["status"] == "failed":
                failed[key] = rec
                print(f"judge error {label}: {rec['error']}", file=sys.stderr)
            else:
                cache.add(rec)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise SystemExit(f"{prog}: interrupted; {len(cache.records)} {what}s are cached in {cache.path}: rerun to "
                         "resume")
    pool.shutdown()
    if failed and len(failed) == total:
        first = next(iter(failed.values()))["error"]
        print(f"{prog}: error: all {total} {what}s failed (first: {first}); nothing summarised: rerun when the judge "
              "answers", file=sys.stderr)
        raise SystemExit(1)
    return failed


# ----------------------------------------------------------------------------------------------------------------------
# 6. Scores: pair outcomes, win rates, bootstrap intervals (pure functions)
# ----------------------------------------------------------------------------------------------------------------------

def pair_outcome(winner_ab: str | None, winner_ba: str | None) -> str:
    """Winners of the two orders ('a' / 'b' / 'tie', None = error) -> 'W' / 'L' / 'T' (consistent), 'I', 'E'."""
    if winner_ab is None or winner_ba is None:
        return "E"
    if winner_ab != winner_ba:
        return "I"
    return {"a": "W", "b": "L", "tie": "T"}[winner_ab]


def rates(outcomes: list[str]) -> tuple[float | None, float | None]:
    """win_rate = W / (W+T+L) (the paper's); adjusted_win_rate = (W + (T+I)/2) / (W+T+L+I). None when undefined."""
    w, t, l, i = (outcomes.count(c) for c in "WTLI")
    win = w / (w + t + l) if w + t + l else None
    adj = (w + 0.5 * (t + i)) / (w + t + l + i) if w + t + l + i else None
    return win, adj


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson score interval of a proportion k/n (None when n = 0). Unlike a bootstrap it is not degenerate for
    small n: 1 win of 1 gives [0.207, 1.0], not [1.0, 1.0]."""
    if n <= 0:
        return None
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)]


def bootstrap_ci(outcomes: list[str], n: int, seed: int) -> dict:
    """95% intervals of (win_rate, adjusted_win_rate), errors left out: win_rate W/(W+T+L) gets the Wilson interval
    (a proportion over the consistent pairs); adjusted_win_rate (half credits) a seeded percentile bootstrap, pairs
    resampled with replacement."""
    import numpy as np
    pairs = np.array([c for c in outcomes if c != "E"])
    if len(pairs) == 0 or n <= 0:
        return {"win_rate": None, "adjusted_win_rate": None}
    rng = np.random.default_rng(seed)
    sample = pairs[rng.integers(0, len(pairs), size=(n, len(pairs)))]  # (n, pairs)
    w, t, l, i = ((sample == c).sum(1) for c in "WTLI")
    adj = (w + 0.5 * (t + i)) / (w + t + l + i)
    w, t, l = (outcomes.count(c) for c in "WTL")
    return {"win_rate": wilson_interval(w, w + t + l),
            "adjusted_win_rate": [round(float(v), 4) for v in np.percentile(adj, [2.5, 97.5])]}


def score(outcomes: list[str], len_a: list[int], len_b: list[int], n_boot: int, seed: int) -> dict:
    win, adj = rates(outcomes)
    r4 = lambda x: None if x is None else round(x, 4)  # noqa: E731
    return {"pairs": len(outcomes), "wins": outcomes.count("W"), "ties": outcomes.count("T"),
            "losses": outcomes.count("L"), "inconsistent": outcomes.count("I"), "errors": outcomes.count("E"),
            "win_rate": r4(win), "adjusted_win_rate": r4(adj), "ci95": bootstrap_ci(outcomes, n_boot, seed),
            "mean_len_a": r4(sum(len_a) / len(len_a)) if len_a else None,
            "mean_len_b": r4(sum(len_b) / len(len_b)) if len_b else None}


def summarize(questions, answers_a, answers_b, results: dict, n_boot: int, seed: int) -> dict:
    """results: {qid: {'ab': record, 'ba': record}} -> overall and per-category scores."""
    groups: dict[str, list] = {}
    for q in questions:
        r = results[q["id"]]
        out = pair_outcome(r["ab"]["winner"], r["ba"]["winner"])
        for g in ("__all__", q["category"]):
            groups.setdefault(g, []).append((out, len(answers_a[q["id"]]), len(answers_b[q["id"]])))
    stats = {g: score([o for o, _, _ in v], [a for _, a, _ in v], [b for _, _, b in v], n_boot, seed)
             for g, v in groups.items()}
    summary = stats.pop("__all__")
    summary["by_category"] = dict(sorted(stats.items()))
    return summary


def print_table(summary: dict, name_a: str, name_b: str):
    def fmt(x):
        return "-" if x is None else f"{x:.3f}"

    def ci(x):
        return "-" if not x else f"[{x[0]:.3f}, {x[1]:.3f}]"

    print(f"\n{name_a} (A) vs {name_b} (B), judged by {summary['judge_model']} ({PROMPT_VERSION})")
    head = f"{'category':<18}{'pairs':>6}{'W':>5}{'T':>5}{'L':>5}{'I':>5}{'err':>5}{'win':>8}{'adj':>8}  95% CI (win)"
    print(head + "\n" + "-" * (len(head) + 8))
    rows = list(summary["by_category"].items()) + [("overall", summary)]
    for name, s in rows:
        print(f"{name:<18}{s['pairs']:>6}{s['wins']:>5}{s['ties']:>5}{s['losses']:>5}{s['inconsistent']:>5}"
              f"{s['errors']:>5}{fmt(s['win_rate']):>8}{fmt(s['adjusted_win_rate']):>8}  {ci(s['ci95']['win_rate'])}")
    print(f"mean answer length (chars): A {summary['mean_len_a']}, B {summary['mean_len_b']}; "
          f"judge calls this run {summary['judge_calls']}, judgments from cache {summary['cached']}")


# ----------------------------------------------------------------------------------------------------------------------
# 7. Main
# ----------------------------------------------------------------------------------------------------------------------

# What a judge folder holds: one comparison (a judge model, prompt version, two systems, one question set). A rerun of
# it resumes from the cache; another comparison is refused unless --overwrite (utils.prepare_run_dir, with its lock).
JUDGE_OUTPUTS = ("judgments.jsonl", "summary.json", "answers_*.jsonl", "answers_*.jsonl.model", "*.tmp")


def run(cfg: JudgeConfig) -> dict:
    preflight(cfg)
    out = Path(cfg.out)
    utils.prepare_run_dir(out, {"llm_model": cfg.llm_model, "prompt_version": PROMPT_VERSION,
                                "system_a": system_name("a", cfg), "system_b": system_name("b", cfg),
                                "questions_fingerprint": utils.fingerprint(cfg.questions), "max_items": cfg.max_items,
                                "category_field": cfg.category_field},
                          resume=True, overwrite=cfg.overwrite, outputs=JUDGE_OUTPUTS)
    utils.save_config(cfg, out)  # holds the env var's name, never the key
    api_key = os.environ.get(cfg.llm_key_env, "")
    questions = load_questions(cfg.questions, cfg.category_field, cfg.max_items)
    name_a, answers_a = get_answers("a", cfg, questions, out)
    name_b, answers_b = get_answers("b", cfg, questions, out)

    client = utils.ChatClient(cfg.llm_url, cfg.llm_model, api_key, cfg.timeout, cfg.max_retries,
                         cfg.backoff, cfg.backoff_max, cfg.judge_max_tokens)
    cache = utils.JsonlCache(out / "judgments.jsonl")
    tasks = []  # (key, question, answers, order)
    for q in questions:
        pair = {"a": answers_a[q["id"]], "b": answers_b[q["id"]]}
        for order in ("ab", "ba"):
            tasks.append((cache_key(q, name_a, name_b, order, cfg.llm_model, pair), q, pair, order))
    todo = [t for t in tasks if t[0] not in cache]
    print(f"{len(questions)} questions, {len(tasks)} judgments: {len(tasks) - len(todo)} cached, {len(todo)} to ask "
          f"{cfg.llm_model} at {cfg.llm_url}", flush=True)

    meta = {"system_a": name_a, "system_b": name_b, "judge_model": cfg.llm_model, "prompt_version": PROMPT_VERSION}
    failed = ask_all("judge.py", "judgment", cache, len(tasks), cfg.concurrency,
                     {key: (f"q={q['id']} order={order}", meta, judge_one, (client, q, pair, order, cfg.max_reasks))
                      for key, q, pair, order in todo})

    results = {q["id"]: {} for q in questions}
    for key, q, _, order in tasks:
        results[q["id"]][order] = cache.records.get(key) or failed[key]
    summary = {"system_a": name_a, "system_b": name_b, "judge_model": cfg.llm_model,
               "prompt_version": PROMPT_VERSION, "questions": len(questions),
               **summarize(questions, answers_a, answers_b, results, cfg.bootstrap, cfg.seed)}
    summary["judgment_errors"] = {s: sum(r[o]["status"] == s for r in results.values() for o in r)
                                  for s in ("unparsable", "failed")}
    summary["judge_calls"], summary["cached"] = client.calls, len(tasks) - len(todo)
    utils.write_json(out / "summary.json", summary)
    print_table(summary, name_a, name_b)
    utils.done("judge.py", f"{out / 'summary.json'}, {out / 'judgments.jsonl'}",
               f"python plots/plots.py --run RUN (RUN holding {out}); another judge model: another --out")
    return summary


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv and argv[0] in SUBCOMMANDS:  # judge.py rubric | human | agreement (sections 8-10)
        return SUBCOMMANDS[argv[0]](argv[1:])
    utils.run_command("judge.py", run, utils.parse_config(JudgeConfig, argv))


# ----------------------------------------------------------------------------------------------------------------------
# 8. Rubric grading by an LLM judge (`judge.py rubric`): each answer alone, 1-5 per criterion with a short reason
# ----------------------------------------------------------------------------------------------------------------------
# The criteria: DISC-LawLLM's three (DISC-Law-Eval's subjective set: accuracy, completeness, clarity) and ChatLaw's six,
# or a JSON file: [{"name": "accuracy", "label": "准确性", "description": "..."}, ...] (label optional). The names are
# the keys of the judge's JSON reply, of rubric_summary.json and of the expert page's scores.

RUBRIC_PROMPT_VERSION = "lexlab-rubric-zh-v1"

CRITERIA = {
    "disc": [
        {"name": "accuracy", "label": "准确性", "description": "法律结论、法条引用与分析是否正确，有无错误或编造"},
        {"name": "completeness", "label": "完整性", "description": "是否覆盖问题的关键争点、必要的法律依据与法律后果"},
        {"name": "clarity", "label": "清晰度", "description": "表达是否清楚、有条理，便于提问者理解"},
    ],
    "chatlaw": [
        {"name": "completeness", "label": "完整性", "description": "是否覆盖问题的关键争点与必要的法律后果"},
        {"name": "logic", "label": "逻辑性", "description": "事实与法律之间的推理是否清晰、成立"},
        {"name": "correctness", "label": "正确性", "description": "结论与分析是否符合现行中国法律和司法实践"},
        {"name": "language", "label": "语言质量", "description": "用语是否规范、准确、通顺"},
        {"name": "guidance", "label": "指导性", "description": "是否给出可操作的建议与风险提示"},
        {"name": "authority", "label": "权威性", "description": "是否引用准确、相关的法律法规与司法解释，无编造"},
    ],
}
CRITERION_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")


def load_criteria(spec: str, flag: str = "--criteria") -> list[dict]:
    """'disc' | 'chatlaw' | a JSON file (a list of {name, label?, description} or {name: description}) -> the list of
    {name, label, description}. Names are unique identifiers (letters, digits, _); a bad file is a DataError."""
    if spec in CRITERIA:
        return [dict(c) for c in CRITERIA[spec]]
    if not Path(spec).is_file():
        raise DataError(flag, None, None, f"expected {' | '.join(CRITERIA)} or a JSON file, got {spec!r}",
                        reason="bad_flag")
    data = utils.read_json(spec)
    items = [{"name": k, "description": v} for k, v in data.items()] if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise DataError(spec, None, None, "expected a non-empty list of criteria", reason="bad_criteria")
    out = []
    for i, c in enumerate(items, start=1):
        if not isinstance(c, dict):
            raise DataError(spec, i, None, f"expected an object, got {type(c).__name__}", reason="bad_criteria")
        name, desc = utils.require(c, "name", spec, i), utils.require(c, "description", spec, i)
        if not CRITERION_NAME_RE.fullmatch(name):
            raise DataError(spec, i, "name", f"{name!r}: letters, digits and _ only (it is a JSON key)",
                            reason="bad_criteria")
        if name in {o["name"] for o in out}:
            raise DataError(spec, i, "name", f"duplicate criterion {name!r}", reason="bad_criteria")
        label = c.get("label") or name
        if not isinstance(label, str):
            raise DataError(spec, i, "label", "expected str", reason="bad_criteria")
        out.append({"name": name, "label": label, "description": desc})
    return out


def rubric_messages(question: str, reference: str | None, answer: str, criteria: list[dict]) -> list[dict]:
    """Chat messages asking the judge to grade one answer on every criterion: a JSON object
    {name: {"score": 1-5, "reason": "..."}} and nothing else."""
    lines = "\n".join(f"- {c['name']}（{c['label']}）：{c['description']}" for c in criteria)
    example = ", ".join(f'"{c["name"]}": {{"score": 4, "reason": "……"}}' for c in criteria[:2])
    system = ("你是一名公正、严谨的资深法律专家。请按下列评分标准，对AI助手就法律问题的回答逐项打分，"
              "每项为1到5的整数（1 很差，3 一般，5 很好）。\n评分标准：\n" + lines + "\n"
              "若提供了参考答案，可将其作为判断依据，但不要求逐字一致。不要因篇幅长短产生偏向。\n"
              "只输出一个JSON对象，键为上面每个评分项的英文名，值为 {\"score\": 整数, \"reason\": \"简短理由\"}，"
              f"例如 {{{example}, ……}}。")
    ref = f"[参考答案]\n{reference}\n\n" if reference else ""
    user = f"[问题]\n{question}\n\n{ref}[回答开始]\n{answer}\n[回答结束]"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_rubric(reply: str, names: list[str]) -> tuple[dict, dict, list[str]]:
    """The judge's reply -> ({name: score}, {name: reason}, problems). A score counts only when it is a JSON integer
    1..5 under its criterion's name (a bare integer or {"score": n, "reason": ...}); anything else is a problem
    naming the criterion, never a guessed score. The JSON object may sit in a ```json fence or in prose."""
    text = reply or ""
    start, end = text.find("{"), text.rfind("}")
    obj = None
    if 0 <= start < end:
        try:
            obj = json.loads(text[start:end + 1])
        except json.JSONDecodeError:
            obj = None
    if not isinstance(obj, dict):
        return {}, {}, ["no JSON object"]
    scores, reasons, problems = {}, {}, []
    for name in names:
        v = obj.get(name)
        score, reason = (v.get("score"), v.get("reason", "")) if isinstance(v, dict) else (v, "")
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
            problems.append(f"{name}: {'missing' if v is None else 'score is not an integer 1-5'}")
            continue
        scores[name], reasons[name] = score, reason if isinstance(reason, str) else json.dumps(reason)
    return scores, reasons, problems


RUBRIC_REASK = ("以下评分项缺失或无效：{problems}。请重新只输出完整的JSON对象，包含全部评分项（{names}），"
                "每项的 score 为1到5的整数。")


def grade_one(client: utils.ChatClient, q: dict, answer: str, criteria: list[dict], max_reasks: int) -> dict:
    """Grade one answer. status 'ok' (every criterion scored), 'incomplete' (re-asks spent; the criteria the last
    reply scored are kept, the rest are errors), 'unparsable' (no score at all) -- these three are cached -- or
    'failed' (transport: not cached, asked again next run)."""
    names = [c["name"] for c in criteria]
    messages = rubric_messages(q["question"], q["reference"], answer, criteria)
    rec = {"qid": q["id"], "category": q["category"], "status": "ok", "scores": {}, "reasons": {}, "missing": [],
           "reply": None, "asks": 0, "error": None}
    try:
        for _ in range(max_reasks + 1):
            reply = client.chat(messages)
            rec["asks"] += 1
            scores, reasons, problems = parse_rubric(reply, names)
            rec.update(reply=reply, scores=scores, reasons=reasons, missing=[n for n in names if n not in scores])
            if not problems:
                return rec
            messages = messages + [{"role": "assistant", "content": reply}, {"role": "user", "content":
                                   RUBRIC_REASK.format(problems="；".join(problems), names="、".join(names))}]
        rec.update(status="incomplete" if rec["scores"] else "unparsable",
                   error=f"no valid score for {', '.join(rec['missing'])} after {rec['asks']} asks")
    except utils.ChatError as e:
        rec.update(status="failed", error=str(e), scores={}, reasons={}, missing=names)
    return rec


def mean_ci(values: list[int], n_boot: int, seed: int) -> dict:
    """Mean of 1-5 scores with a seeded percentile-bootstrap 95% interval (answers resampled). {mean, ci95, n}."""
    import numpy as np
    if not values:
        return {"mean": None, "ci95": None, "n": 0}
    x = np.asarray(values, dtype=float)
    ci = None
    if n_boot > 0:
        means = x[np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))].mean(1)
        ci = [round(float(v), 4) for v in np.percentile(means, [2.5, 97.5])]
    return {"mean": round(float(x.mean()), 4), "ci95": ci, "n": len(x)}


def summarize_rubric(records: list[dict], criteria: list[dict], n_boot: int, seed: int) -> dict:
    """records: one grade record per (system, question) -> {system: {"overall": {crit: {mean, ci95, n, errors}},
    "by_category": {cat: {crit: ...}}}}. `errors`: answers whose criterion has no valid score (counted, not scored)."""
    out: dict = {}
    for r in records:
        sys_ = out.setdefault(r["system"], {"overall": {}, "by_category": {}})
        for group in (sys_["overall"], sys_["by_category"].setdefault(r["category"], {})):
            for c in criteria:
                cell = group.setdefault(c["name"], {"values": [], "errors": 0})
                if c["name"] in r["scores"]:
                    cell["values"].append(r["scores"][c["name"]])
                else:
                    cell["errors"] += 1

    def done(group):
        return {name: {**mean_ci(cell["values"], n_boot, seed), "errors": cell["errors"]}
                for name, cell in group.items()}

    return {name: {"overall": done(s["overall"]),
                   "by_category": {cat: done(g) for cat, g in sorted(s["by_category"].items())}}
            for name, s in out.items()}


@dataclass(kw_only=True)
class RubricConfig(LLMJudgeConfig):
    """Rubric grading by an LLM judge: each answer graded 1-5 per criterion with a short reason."""
    answers: str = field(metadata={"help": "comma-separated answers JSONL files (id, answer), one per system"})
    out: str = field(metadata={"help": "output folder (rubric_grades.jsonl, rubric_summary.json); name it judge*/ "
                                       "for plots/plots.py"})
    names: str | None = field(default=None, metadata={"help": "comma-separated system names (default: file stems)"})
    criteria: str = field(default="disc", metadata={"help": "disc (accuracy, completeness, clarity), chatlaw (six) "
                                                            "or a JSON file of {name, label, description}"})
    overwrite: bool = field(default=False, metadata={"help": "replace the grades of another grading in --out"})


# What a rubric folder holds: one grading (judge model, prompt version, criteria, systems and their answers, one
# question set). A rerun resumes from the cache; another grading is refused unless --overwrite (utils.prepare_run_dir).
RUBRIC_OUTPUTS = ("rubric_grades.jsonl", "rubric_summary.json", "*.tmp")


def rubric_systems(cfg: RubricConfig, questions: list[dict]) -> list[tuple[str, dict[str, str]]]:
    """[(system name, {id: answer})] from --answers / --names; every file read and checked."""
    paths = [p for p in cfg.answers.split(",") if p]
    names = [n for n in cfg.names.split(",") if n] if cfg.names else [Path(p).stem for p in paths]
    if not paths or len(names) != len(paths):
        raise DataError("--names", None, None, f"{len(names)} name(s) for {len(paths)} answers file(s)",
                        reason="bad_flag")
    if len(set(names)) != len(names):
        raise DataError("--names", None, None, f"system names must differ, got {names} (set --names)",
                        reason="bad_flag")
    return [(n, load_answers(p, questions)) for n, p in zip(names, paths)]


def rubric_key(q: dict, system: str, answer: str, criteria: list[dict], judge_model: str) -> str:
    return "|".join([q["id"], content_hash(q["question"], q["reference"], answer, criteria), system, judge_model,
                     RUBRIC_PROMPT_VERSION])


def run_rubric(cfg: RubricConfig) -> dict:
    # every flag and input, then the endpoint, before anything is asked or written
    check_judge_flags(cfg)
    criteria = load_criteria(cfg.criteria)
    questions = load_questions(cfg.questions, cfg.category_field, cfg.max_items)
    systems = rubric_systems(cfg, questions)
    api_key = os.environ.get(cfg.llm_key_env, "")
    check_endpoint(cfg.llm_url, api_key, min(cfg.timeout, 30.0))

    out = Path(cfg.out)
    utils.prepare_run_dir(out, {"llm_model": cfg.llm_model, "prompt_version": RUBRIC_PROMPT_VERSION,
                                "criteria": criteria, "systems": [name for name, _ in systems],
                                "answers_fingerprints": [utils.fingerprint(p) for p in cfg.answers.split(",") if p],
                                "questions_fingerprint": utils.fingerprint(cfg.questions), "max_items": cfg.max_items,
                                "category_field": cfg.category_field},
                          resume=True, overwrite=cfg.overwrite, outputs=RUBRIC_OUTPUTS)
    utils.save_config(cfg, out)  # the env var's name, never the key
    client = utils.ChatClient(cfg.llm_url, cfg.llm_model, api_key, cfg.timeout, cfg.max_retries, cfg.backoff,
                              cfg.backoff_max, cfg.judge_max_tokens)
    cache = utils.JsonlCache(out / "rubric_grades.jsonl")
    tasks = [(rubric_key(q, name, answers[q["id"]], criteria, cfg.llm_model), name, q, answers[q["id"]])
             for name, answers in systems for q in questions]
    todo = [t for t in tasks if t[0] not in cache]
    print(f"{len(questions)} questions x {len(systems)} systems x {len(criteria)} criteria: {len(tasks) - len(todo)} "
          f"answers graded before, {len(todo)} to ask {cfg.llm_model} at {cfg.llm_url}", flush=True)

    meta = {"judge_model": cfg.llm_model, "prompt_version": RUBRIC_PROMPT_VERSION}
    failed = ask_all("judge.py rubric", "grade", cache, len(tasks), cfg.concurrency,
                     {key: (f"{name} q={q['id']}", {"system": name, **meta}, grade_one,
                            (client, q, ans, criteria, cfg.max_reasks)) for key, name, q, ans in todo})

    records = [cache.records.get(key) or failed[key] for key, *_ in tasks]
    summary = {"judge_model": cfg.llm_model, "prompt_version": RUBRIC_PROMPT_VERSION, "criteria": criteria,
               "systems": [name for name, _ in systems], "questions": len(questions),
               "scores": summarize_rubric(records, criteria, cfg.bootstrap, cfg.seed),
               "grade_errors": {s: sum(r["status"] == s for r in records) for s in ("incomplete", "unparsable",
                                                                                    "failed")},
               "judge_calls": client.calls, "cached": len(tasks) - len(todo)}
    utils.write_json(out / "rubric_summary.json", summary)
    print_rubric(summary)
    return summary


def print_rubric(summary: dict):
    names = [c["name"] for c in summary["criteria"]]
    print(f"\nrubric grades 1-5 (mean [95% CI], errors), judged by {summary['judge_model']} "
          f"({summary['prompt_version']})")
    head = f"{'system':<20}{'category':<18}" + "".join(f"{n[:22]:>24}" for n in names)
    print(head + "\n" + "-" * len(head))
    for system, s in summary["scores"].items():
        for cat, group in list(s["by_category"].items()) + [("overall", s["overall"])]:
            cells = []
            for n in names:
                c = group[n]
                ci = f"[{c['ci95'][0]:.2f},{c['ci95'][1]:.2f}]" if c["ci95"] else ""
                cells.append("-" if c["mean"] is None else f"{c['mean']:.2f}{ci}" + (f" e{c['errors']}"
                                                                                       if c["errors"] else ""))
            print(f"{system:<20}{cat:<18}" + "".join(f"{c:>24}" for c in cells))
    print(f"grade errors: {summary['grade_errors']}; judge calls this run {summary['judge_calls']}, "
          f"answers from cache {summary['cached']}")


def main_rubric(argv) -> None:
    utils.run_command("judge.py rubric", run_rubric, utils.parse_config(RubricConfig, argv, prog="judge.py rubric"))

# ----------------------------------------------------------------------------------------------------------------------
# 9. The expert page (`judge.py human`): blind pairwise comparison by legal experts, served from this machine
# ----------------------------------------------------------------------------------------------------------------------
# Standard library only (http.server.ThreadingHTTPServer: one thread per request; nothing to install or keep up to
# date). The study (OUT/study.json, mode 600) says which items each annotator gets (`--overlap` items go to everyone,
# so that agreement can be measured; the rest is dealt out in turn), which system is shown on the left for each
# (item, annotator) (a seeded coin), and each annotator's secret token: their page is http://HOST:PORT/a/TOKEN.
# Neither the page nor the JSON it reads ever holds a system name: the screen says left / right, the server turns a
# vote into systems. Votes are appended to OUT/votes.jsonl, one line per vote (a changed vote is a new line; the last
# one counts), each line written by one os.write under a lock and fsync'd, so concurrent annotators lose nothing and a
# crash leaves at most a torn last line (dropped on restart). Scores (optional, one per criterion) are comparative,
# oriented to system a: 5 = a much better, 4 = a better, 3 = equal, 2 = b better, 1 = b much better (the page shows
# left / right and the server turns them around when a is on the right).

VOTE_KEYS = ("item", "annotator", "a", "b", "shown_left", "verdict", "scores", "comment", "at")
MAX_BODY = 64 << 10     # bytes of one vote request
MAX_COMMENT = 5000      # characters of a comment


def make_study(items: list[str], annotators: list[str], overlap: int, per_annotator: int | None,
               seed: int) -> dict[str, dict]:
    """Study design (pure). items: item ids; -> {annotator: {"items": [ids in the order shown], "left": {id: 'a'|'b'}}}.
    The first `overlap` items of a seeded shuffle go to every annotator; the rest is dealt out in turn (each item to
    one annotator), each share cut to per_annotator - overlap when given. Order and sides are drawn per annotator."""
    import random
    if overlap > len(items):
        raise DataError("--overlap", None, None, f"{overlap} shared items but only {len(items)} items",
                        reason="bad_flag")
    if per_annotator is not None and per_annotator < overlap:
        raise DataError("--per_annotator", None, None, f"{per_annotator} is fewer than --overlap {overlap}",
                        reason="bad_flag")
    rng = random.Random(seed)
    order = list(items)
    rng.shuffle(order)
    shared, rest = order[:overlap], order[overlap:]
    study = {}
    for i, name in enumerate(annotators):
        own = rest[i::len(annotators)]
        if per_annotator is not None:
            own = own[:per_annotator - overlap]
        mine = shared + own
        rng.shuffle(mine)
        study[name] = {"items": mine, "left": {item: rng.choice("ab") for item in mine}}
    return study


@dataclass
class HumanConfig:
    """Expert evaluation page: each annotator compares two systems' answers blind (and optionally scores them)."""
    questions: str = field(metadata={"help": "questions JSONL: id, question (or input), optional category, reference"})
    answers_a: str = field(metadata={"help": "answers JSONL of system a (id, answer)"})
    answers_b: str = field(metadata={"help": "answers JSONL of system b, or 'reference'"})
    annotators: str = field(metadata={"help": "comma-separated annotator names (letters, digits, _ . -)"})
    out: str = field(metadata={"help": "study folder (study.json with the tokens, votes.jsonl, config.json)"})
    name_a: str | None = field(default=None, metadata={"help": "system a's name (default: file stem)"})
    name_b: str | None = field(default=None, metadata={"help": "system b's name"})
    overlap: int = field(default=10, metadata={"help": "items every annotator gets (for agreement)", "min": 0})
    per_annotator: int | None = field(default=None, metadata={"help": "items per annotator, overlap included "
                                                                      "(default: overlap + an even share of the rest)",
                                                              "min": 1})
    criteria: str | None = field(default=None, metadata={"help": "optional 1-5 scores: disc, chatlaw or a JSON file "
                                                                 "(default: none, verdicts only)"})
    show_reference: bool = field(default=False, metadata={"help": "show the reference answer (never when a system "
                                                                  "is the reference)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (another one exposes the page to the "
                                                             "network: tokens travel in clear over http)"})
    port: int = field(default=8765, metadata={"help": "port (0: any free one)", "min": 0, "max": 65535})
    seed: int = field(default=0, metadata={"help": "seed of the study design and the sides", "min": 0})
    max_items: int | None = field(default=None, metadata={"help": "first N questions only", "min": 1})
    category_field: str = field(default="category", metadata={"help": "question field of the category"})


class Study:
    """What the server knows: items, the design, the tokens, every annotator's latest votes. Thread-safe."""

    def __init__(self, out: Path, design: dict, questions: list[dict], answers: dict, names: tuple[str, str],
                 criteria: list[dict], show_reference: bool):
        self.out, self.design, self.criteria = out, design, criteria
        self.names = names
        self.items = {q["id"]: q for q in questions}
        self.answers = answers  # {'a': {id: text}, 'b': {id: text}}
        self.cfg = None  # the HumanConfig (written to config.json beside study.json), set by open_study
        self.show_reference = show_reference
        self.by_token = {d["token"]: name for name, d in design["annotators"].items()}
        self.votes_path = out / "votes.jsonl"
        self.latest: dict[tuple[str, str], dict] = {}
        self.lock = threading.Lock()
        self._load_votes()

    def _load_votes(self):
        if not self.votes_path.exists():
            return
        utils.drop_torn_tail(self.votes_path)  # a crash mid-line: that vote was never acknowledged
        # any other bad line is an error, not skipped as in an LLM cache (utils.JsonlCache): a vote cannot be re-asked
        for i, line in enumerate(self.votes_path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rec = check_vote(json.loads(line), self.votes_path, i)
                except json.JSONDecodeError as e:
                    raise DataError(self.votes_path, i, None, f"invalid JSON ({e.msg}): fix or remove the line",
                                    reason="bad_vote") from None
                self.latest[(rec["annotator"], rec["item"])] = rec

    def annotator(self, token: str) -> str | None:
        """The annotator whose token this is, or None (constant-time comparison against every token)."""
        import hmac
        found = None
        for t, name in self.by_token.items():
            if hmac.compare_digest(t.encode(), token.encode()):
                found = name
        return found

    def state(self, annotator: str) -> dict:
        """Everything the page of one annotator shows: their items (left / right answers), their own latest votes
        (screen orientation), criteria, progress. No system name, no other annotator's vote."""
        d = self.design["annotators"][annotator]
        items = []
        for item in d["items"]:
            q, left = self.items[item], d["left"][item]
            right = "b" if left == "a" else "a"
            vote = self.latest.get((annotator, item))
            items.append({"id": item, "category": q["category"], "question": q["question"],
                          "reference": q["reference"] if self.show_reference else None,
                          "left": self.answers[left][item], "right": self.answers[right][item],
                          "vote": None if vote is None else {
                              "choice": {"tie": "tie", left: "left", right: "right"}[vote["verdict"]],
                              "scores": {c: s if left == "b" else 6 - s for c, s in vote["scores"].items()},
                              "comment": vote["comment"]}})
        done = sum((annotator, i) in self.latest for i in d["items"])
        return {"criteria": self.criteria, "items": items, "done": done, "total": len(items)}

    def vote(self, annotator: str, body: dict) -> dict:
        """Check a vote from the page ({item, choice: left|right|tie, scores: {criterion: 1-5 with 1 = left much
        better}, comment}); ValueError (-> 400, nothing written) or PermissionError (an item not given to this
        annotator -> 403). Appends the vote and returns the progress."""
        if not isinstance(body, dict) or set(body) - {"item", "choice", "scores", "comment"}:
            raise ValueError("expected an object with item, choice, scores, comment")
        item, choice = body.get("item"), body.get("choice")
        scores, comment = body.get("scores", {}), body.get("comment", "")
        if not isinstance(item, str) or choice not in ("left", "right", "tie"):
            raise ValueError("item must be a string and choice left, right or tie")
        names = {c["name"] for c in self.criteria}
        if not isinstance(scores, dict) or any(k not in names or isinstance(v, bool) or not isinstance(v, int)
                                               or not 1 <= v <= 5 for k, v in scores.items()):
            raise ValueError("scores: {criterion: integer 1-5} over this study's criteria")
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            raise ValueError(f"comment: a string of at most {MAX_COMMENT} characters")
        d = self.design["annotators"][annotator]
        if item not in d["left"]:
            raise PermissionError(item)
        left = d["left"][item]
        right = "b" if left == "a" else "a"
        rec = {"item": item, "annotator": annotator, "a": self.names[0], "b": self.names[1],
               "shown_left": self.names[0] if left == "a" else self.names[1],
               "verdict": {"tie": "tie", "left": left, "right": right}[choice],
               "scores": {c: s if left == "b" else 6 - s for c, s in sorted(scores.items())},
               "comment": comment,
               "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        with self.lock:  # one line per vote, on the disk before the page hears back
            utils.append_jsonl(self.votes_path, rec, fsync=True)
            self.latest[(annotator, item)] = rec
            done = sum((annotator, i) in self.latest for i in d["items"])
        return {"done": done, "total": len(d["items"])}


def check_vote(rec, path, line: int) -> dict:
    """One votes.jsonl record in the published schema, or a DataError naming file, line and field."""
    if not isinstance(rec, dict):
        raise DataError(path, line, None, "expected a JSON object", reason="bad_vote")
    if set(rec) != set(VOTE_KEYS):
        diff = sorted(set(rec) ^ set(VOTE_KEYS))
        raise DataError(path, line, diff[0], f"expected exactly the fields {', '.join(VOTE_KEYS)}", reason="bad_vote")
    for k in ("item", "annotator", "a", "b", "shown_left", "at"):
        utils.require(rec, k, path, line)
    utils.require(rec, "comment", path, line, allow_empty=True)
    if rec["a"] == rec["b"] or rec["shown_left"] not in (rec["a"], rec["b"]):
        raise DataError(path, line, "shown_left", "must be one of two different systems a, b", reason="bad_vote")
    if rec["verdict"] not in ("a", "b", "tie"):
        raise DataError(path, line, "verdict", f"expected a, b or tie, got {rec['verdict']!r}", reason="bad_vote")
    scores = rec["scores"]
    if not isinstance(scores, dict) or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 5
                                           for v in scores.values()):
        raise DataError(path, line, "scores", "expected {criterion: integer 1-5}", reason="bad_vote")
    return rec


PAGE_SCRIPT = r"""
const token = location.pathname.split('/').pop();
const $ = (id) => document.getElementById(id);
const SCALE = ['左明显更好', '左更好', '相当', '右更好', '右明显更好'];
let S = null, cur = 0;
async function load() {
  const r = await fetch('/api/' + token + '/state', {cache: 'no-store'});
  if (!r.ok) { $('msg').textContent = '无法加载 (HTTP ' + r.status + ')'; return; }
  S = await r.json();
  const first = S.items.findIndex((it) => !it.vote);
  show(first < 0 ? 0 : first);
}
function show(i) {
  if (!S.items.length) { $('msg').textContent = '没有分配给您的题目'; return; }
  cur = Math.max(0, Math.min(i, S.items.length - 1));
  const it = S.items[cur], v = it.vote || {choice: null, scores: {}, comment: ''};
  $('pos').textContent = (cur + 1) + ' / ' + S.items.length;
  $('progress').textContent = '已完成 done ' + S.done + ' / ' + S.total;
  $('category').textContent = it.category;
  $('question').textContent = it.question;
  $('refbox').hidden = !it.reference;
  $('reference').textContent = it.reference || '';
  $('left').textContent = it.left;
  $('right').textContent = it.right;
  $('comment').value = v.comment;
  for (const b of document.querySelectorAll('button.verdict')) {
    b.classList.toggle('chosen', b.dataset.choice === v.choice);
  }
  const box = $('scores');
  box.replaceChildren();
  for (const c of S.criteria) {
    const row = document.createElement('div');
    row.className = 'score';
    const name = document.createElement('span');
    name.textContent = c.label + '：';
    name.title = c.description;
    row.append(name);
    SCALE.forEach((text, k) => {
      const lab = document.createElement('label');
      const inp = document.createElement('input');
      inp.type = 'radio'; inp.name = 'score-' + c.name; inp.value = String(k + 1);
      inp.checked = v.scores[c.name] === k + 1;
      lab.append(inp, ' ' + text + ' ');
      row.append(lab);
    });
    box.append(row);
  }
  $('msg').textContent = it.vote ? '已保存 saved' : '';
}
async function vote(choice) {
  const it = S.items[cur], scores = {};
  for (const c of S.criteria) {
    const x = document.querySelector('input[name="score-' + c.name + '"]:checked');
    if (x) scores[c.name] = Number(x.value);
  }
  const body = {item: it.id, choice: choice, scores: scores, comment: $('comment').value};
  const r = await fetch('/api/' + token + '/vote', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                    body: JSON.stringify(body)});
  if (!r.ok) { $('msg').textContent = '保存失败 (HTTP ' + r.status + ')'; return; }
  const p = await r.json();
  it.vote = body; S.done = p.done;
  const next = S.items.findIndex((x, k) => k > cur && !x.vote);
  show(next < 0 ? cur : next);
  $('msg').textContent = '已保存 saved (' + p.done + ' / ' + p.total + ')';
}
for (const b of document.querySelectorAll('button.verdict')) b.addEventListener('click', () => vote(b.dataset.choice));
$('prev').addEventListener('click', () => show(cur - 1));
$('next').addEventListener('click', () => show(cur + 1));
document.addEventListener('keydown', (e) => {
  if (!S || e.target.tagName === 'TEXTAREA' || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key.toLowerCase();
  const choice = {'1': 'left', 'a': 'left', '2': 'right', 'b': 'right', '3': 'tie', 't': 'tie'}[k];
  if (choice) { e.preventDefault(); vote(choice); }
  else if (k === 'arrowleft' || k === 'p') show(cur - 1);
  else if (k === 'arrowright' || k === 'n') show(cur + 1);
});
load();
"""

PAGE = """<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>LexLab 专家评测</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: sans-serif; margin: 1em 2em; color: #222; }
header { display: flex; gap: 2em; align-items: baseline; }
.cols { display: flex; gap: 1em; }
.cols > div { flex: 1; border: 1px solid #ccc; border-radius: 6px; padding: 0.5em 1em; }
pre { white-space: pre-wrap; font-family: inherit; margin: 0.3em 0; }
button { font-size: 1em; padding: 0.4em 1em; margin-right: 0.5em; }
button.chosen { background: #2a6; color: white; }
.score { margin: 0.3em 0; } #msg { color: #2a6; } kbd { border: 1px solid #999; border-radius: 3px; padding: 0 3px; }
</style></head>
<body>
<header><h2>法律回答盲评 blind comparison</h2><span id="progress"></span><span id="pos"></span>
<span>类别 <span id="category"></span></span></header>
<h3>问题</h3><pre id="question"></pre>
<div id="refbox" hidden><h3>参考答案</h3><pre id="reference"></pre></div>
<div class="cols"><div><h3>回答 A（左）</h3><pre id="left"></pre></div>
<div><h3>回答 B（右）</h3><pre id="right"></pre></div></div>
<p><button class="verdict" id="vote-left" data-choice="left">A 更好 <kbd>1</kbd></button>
<button class="verdict" id="vote-right" data-choice="right">B 更好 <kbd>2</kbd></button>
<button class="verdict" id="vote-tie" data-choice="tie">相当 tie <kbd>3</kbd></button>
<button id="prev">上一题 <kbd>←</kbd></button><button id="next">下一题 <kbd>→</kbd></button> <span id="msg"></span></p>
<div id="scores"></div>
<p><textarea id="comment" rows="3" cols="80" placeholder="评语（可选） comment (optional)"></textarea></p>
<p><small>快捷键：<kbd>1</kbd>/<kbd>A</kbd> 左更好，<kbd>2</kbd>/<kbd>B</kbd> 右更好，<kbd>3</kbd>/<kbd>T</kbd> 相当，
<kbd>←</kbd>/<kbd>→</kbd> 翻页。评分（可选）在投票时一并保存。</small></p>
<script>""" + PAGE_SCRIPT + """</script>
</body></html>
"""
PAGE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "script-src 'sha256-" + base64.b64encode(hashlib.sha256(PAGE_SCRIPT.encode()).digest()).decode() + "'")


def page_handler(study: Study):
    """The request handler class: GET /a/TOKEN (the page), GET /api/TOKEN/state, POST /api/TOKEN/vote. A missing or
    wrong token, or any other path, is 403 with an empty body."""
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "lexlab"
        sys_version = ""

        def log_message(self, fmt, *args):  # the path holds the token: never logged
            pass

        def _send(self, code: int, body: bytes = b"", ctype: str = "application/json"):
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            if body:
                self.send_header("Content-Type", ctype + "; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Referrer-Policy", "no-referrer")  # the token is in the URL
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            if ctype == "text/html":
                self.send_header("Content-Security-Policy", PAGE_CSP)
            self.end_headers()
            self.wfile.write(body)

        def _route(self, method: str):
            m = re.fullmatch(r"/a/([A-Za-z0-9_-]{1,100})" if method == "GET" else r"(?!)", self.path) \
                or re.fullmatch(r"/api/([A-Za-z0-9_-]{1,100})/(state|vote)", self.path)
            who = study.annotator(m.group(1)) if m else None
            if who is None:
                return None, None
            what = "page" if self.path.startswith("/a/") else m.group(2)
            return who, what if (what == "vote") == (method == "POST") else None

        def do_GET(self):
            who, what = self._route("GET")
            if what == "page":
                self._send(200, PAGE.encode("utf-8"), "text/html")
            elif what == "state":
                self._send(200, json.dumps(study.state(who), ensure_ascii=False).encode("utf-8"))
            else:
                self._send(403)

        def do_POST(self):
            who, what = self._route("POST")
            if what != "vote":
                self._send(403)
                self.close_connection = True  # the body (if any) is not read
                return
            try:
                n = int(self.headers.get("Content-Length", ""))
            except ValueError:
                n = -1
            if not 0 < n <= MAX_BODY or "application/json" not in self.headers.get("Content-Type", ""):
                self._send(400, b'{"error": "a JSON body of at most 64 KiB"}')
                self.close_connection = True
                return
            try:
                body = json.loads(self.rfile.read(n).decode("utf-8"))
                self._send(200, json.dumps(study.vote(who, body)).encode())
            except PermissionError:
                self._send(403)
            except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
                self._send(400, json.dumps({"error": str(e)[:200]}).encode())

        def do_PUT(self):
            self._send(403)

        do_DELETE = do_PATCH = do_HEAD = do_PUT

    return Handler


def open_study(cfg: HumanConfig) -> Study:
    """Check every flag and input, then create OUT/study.json (design + tokens) or reopen it: a rerun with the same
    inputs serves the same study (same tokens, votes kept); with other inputs it is refused."""
    import secrets
    utils.check_fields(cfg)
    utils.check_out_dir(cfg.out)
    annotators = [a for a in cfg.annotators.split(",") if a]
    if not annotators or len(set(annotators)) != len(annotators) or \
            not all(re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", a) for a in annotators):
        raise DataError("--annotators", None, None, f"expected distinct names (letters, digits, _ . -), got "
                        f"{cfg.annotators!r}", reason="bad_flag")
    criteria = [] if cfg.criteria is None else load_criteria(cfg.criteria)
    questions = load_questions(cfg.questions, cfg.category_field, cfg.max_items)
    jcfg = JudgeConfig(questions=cfg.questions, llm_url="", llm_model="", out=cfg.out, answers_a=cfg.answers_a,
                       answers_b=cfg.answers_b, name_a=cfg.name_a, name_b=cfg.name_b)
    (name_a, answers_a), (name_b, answers_b) = (get_answers(s, jcfg, questions, Path(cfg.out)) for s in "ab")
    if name_a == name_b:
        raise DataError("--name_a", None, None, f"both systems are named {name_a!r}; set --name_a / --name_b",
                        reason="bad_flag")
    show_ref = cfg.show_reference and "reference" not in (cfg.answers_a, cfg.answers_b)
    inputs = content_hash([(q["id"], q["question"], q["reference"], q["category"], answers_a[q["id"]],
                            answers_b[q["id"]]) for q in questions], name_a, name_b, annotators, criteria,
                          cfg.overlap, cfg.per_annotator, cfg.seed)
    out = Path(cfg.out)
    path = out / "study.json"
    if path.exists():
        design = utils.read_json(path)
        if design.get("inputs") != inputs:
            raise DataError(path, None, None, "this folder holds a study with other questions, answers, annotators "
                            "or design flags: use another --out", reason="bad_flag")
    else:  # a new study: written by serve_study once the address is bound (nothing written before that)
        per = make_study([q["id"] for q in questions], annotators, cfg.overlap, cfg.per_annotator, cfg.seed)
        design = {"inputs": inputs, "systems": [name_a, name_b],
                  "annotators": {a: {"token": secrets.token_urlsafe(18), **per[a]} for a in annotators}}
    study = Study(out, design, questions, {"a": answers_a, "b": answers_b}, (name_a, name_b), criteria, show_ref)
    study.cfg = cfg
    return study


def save_study(study: Study) -> None:
    """OUT/study.json (design and tokens, mode 600: readable by its owner only) and OUT/config.json, once."""
    path = study.out / "study.json"
    if path.exists():
        return
    study.out.mkdir(parents=True, exist_ok=True)
    utils.save_config(study.cfg, study.out)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(study.design, f, ensure_ascii=False, indent=1)
    os.replace(path.with_suffix(".tmp"), path)


def serve_study(study: Study, host: str, port: int):
    """-> a ThreadingHTTPServer (not yet serving) bound to (host, port); then the study is saved (a port already
    taken or an address not ours is an OSError before anything is written)."""
    from http.server import ThreadingHTTPServer
    server = ThreadingHTTPServer((host, port), page_handler(study))
    server.daemon_threads = True
    try:
        utils.lock_run_dir(study.out)  # one server per study folder (utils' run-folder lock)
    except DataError:
        server.server_close()
        raise
    save_study(study)
    return server


def main_human(argv) -> None:
    cfg = utils.parse_config(HumanConfig, argv, prog="judge.py human")
    try:
        study = open_study(cfg)
        server = serve_study(study, cfg.host, cfg.port)
    except DataError as e:
        utils.fail("judge.py human", e)
    except OSError as e:  # port taken, address not ours
        utils.fail("judge.py human", f"--host {cfg.host} --port {cfg.port}: cannot listen ({e.strerror or e})")
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"expert page for {len(study.design['annotators'])} annotator(s), votes -> {study.votes_path} "
          f"({len(study.latest)} so far); send each annotator their own link:")
    for name, d in study.design["annotators"].items():
        print(f"  {name:<16} {len(d['items']):>4} items  http://{shown}:{port}/a/{d['token']}")
    print("Ctrl-C stops the server; rerun the same command to resume (same links, votes kept).", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        utils.unlock_run_dirs()

# ----------------------------------------------------------------------------------------------------------------------
# 10. Agreement (`judge.py agreement`): between experts, and between experts and the LLM judge
# ----------------------------------------------------------------------------------------------------------------------
# A unit is one item compared between one pair of systems; its label is the winning system's name or "tie" (never the
# screen side, never a / b). The statistics are the field's libraries' (scikit-learn's cohen_kappa_score, statsmodels'
# fleiss_kappa, the krippendorff package), not re-derived here; a value is null where the statistic is undefined
# (NaN: every label the same, too few units). Judge-human agreement is FastChat's (MT-bench, compute_agreement.py):
# every (judge verdict, human vote) pair on the same unit counts once; "with ties" keeps all pairs, "without ties"
# drops a pair where either side says tie. The judge's verdict on a unit is its pair outcome with both orders: a
# consistent winner, else "tie" (FastChat counts an inconsistent pair as a tie); a judgment error leaves the unit out.

def read_votes(path) -> list[dict]:
    """votes.jsonl -> the votes that count (the last line per (item, annotator, system pair)), in file order.
    Any record off the schema is a DataError naming file, line and field."""
    latest: dict[tuple, dict] = {}
    for line, rec in utils.iter_records(path):
        rec = check_vote(rec, path, line)
        latest.pop((rec["item"], rec["annotator"], *sorted((rec["a"], rec["b"]))), None)  # re-inserted: file order
        latest[(rec["item"], rec["annotator"], *sorted((rec["a"], rec["b"])))] = rec
    if not latest:
        raise DataError(path, None, None, "no votes", reason="empty_file")
    return list(latest.values())


def vote_label(rec: dict) -> str:
    """The winning system's name, or 'tie'."""
    return "tie" if rec["verdict"] == "tie" else rec[rec["verdict"]]


def unit_of(rec: dict) -> tuple[str, str, str]:
    return (rec["item"], *sorted((rec["a"], rec["b"])))


def _num(x) -> float | None:
    """A library's result as JSON: a rounded float, or None for NaN / inf (undefined)."""
    import math
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def human_agreement(votes: list[dict]) -> dict:
    """The agreement.json statistics of the human votes (keys as published): cohen_kappa_pairs {"x|y": kappa on the
    units both rated}, cohen_kappa (their mean), fleiss_kappa (units rated by every annotator),
    krippendorff_alpha_verdict (nominal, all units, missing ratings allowed), krippendorff_alpha_scores {criterion:
    ordinal alpha}, n_items."""
    import warnings

    import krippendorff
    import numpy as np
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    annotators = sorted({v["annotator"] for v in votes})
    units = sorted({unit_of(v) for v in votes})
    labels = sorted({vote_label(v) for v in votes})
    code = {lab: i for i, lab in enumerate(labels)}
    by = {(v["annotator"], unit_of(v)): v for v in votes}
    col = {u: j for j, u in enumerate(units)}

    def safe(fn):
        with warnings.catch_warnings():  # undefined statistics warn (0/0); they are reported as null
            warnings.simplefilter("ignore")
            try:
                return _num(fn())
            except (ValueError, ZeroDivisionError):  # krippendorff: "more than one value in the domain" needed
                return None

    pairs = {}
    for i, x in enumerate(annotators):
        for y in annotators[i + 1:]:
            both = [u for u in units if (x, u) in by and (y, u) in by]
            lx = [vote_label(by[(x, u)]) for u in both]
            ly = [vote_label(by[(y, u)]) for u in both]
            pairs[f"{x}|{y}"] = safe(lambda lx=lx, ly=ly: cohen_kappa_score(lx, ly)) if len(both) >= 2 else None
    defined = [k for k in pairs.values() if k is not None]

    full = [u for u in units if all((a, u) in by for a in annotators)]
    table = np.array([[code[vote_label(by[(a, u)])] for a in annotators] for u in full], dtype=int)
    fleiss = safe(lambda: fleiss_kappa(aggregate_raters(table, n_cat=len(labels))[0], method="fleiss")) \
        if len(annotators) >= 2 and len(full) >= 1 else None

    verdicts = np.full((len(annotators), len(units)), np.nan)
    for (a, u), v in by.items():
        verdicts[annotators.index(a), col[u]] = code[vote_label(v)]
    alpha_v = safe(lambda: krippendorff.alpha(reliability_data=verdicts, level_of_measurement="nominal")) \
        if len(annotators) >= 2 else None

    alpha_s = {}
    for crit in sorted({c for v in votes for c in v["scores"]}):
        m = np.full((len(annotators), len(units)), np.nan)
        for (a, u), v in by.items():
            if crit in v["scores"]:
                m[annotators.index(a), col[u]] = v["scores"][crit]
        alpha_s[crit] = safe(lambda m=m: krippendorff.alpha(reliability_data=m, level_of_measurement="ordinal",
                                                            value_domain=[1, 2, 3, 4, 5])) \
            if len(annotators) >= 2 else None
    return {"cohen_kappa_pairs": pairs, "cohen_kappa": round(sum(defined) / len(defined), 6) if defined else None,
            "fleiss_kappa": fleiss, "krippendorff_alpha_verdict": alpha_v, "krippendorff_alpha_scores": alpha_s,
            "n_items": len(units)}


def read_judge_out(folder) -> tuple[dict, dict[tuple, str]]:
    """A pairwise judge's OUT folder (summary.json + judgments.jsonl, as run() writes them) -> (summary, {unit:
    label}). The judgments of this summary's systems, judge model and prompt version; when the cache holds several
    of one (question, order) (answers changed between runs), the last written is the one the summary used."""
    folder = Path(folder)
    summary = utils.read_json(folder / "summary.json")
    for k in ("system_a", "system_b", "judge_model", "prompt_version", "win_rate", "ci95"):
        if not isinstance(summary, dict) or k not in summary:
            raise DataError(folder / "summary.json", None, k, "missing (not a judge.py output folder?)",
                            reason="missing_field")
    sa, sb = summary["system_a"], summary["system_b"]
    winners: dict[str, dict[str, str | None]] = {}
    for line, rec in utils.iter_records(folder / "judgments.jsonl"):
        if (rec.get("system_a"), rec.get("system_b"), rec.get("judge_model"), rec.get("prompt_version")) != \
                (sa, sb, summary["judge_model"], summary["prompt_version"]):
            continue
        qid, order = utils.require(rec, "qid", folder / "judgments.jsonl", line), rec.get("order")
        if order not in ("ab", "ba"):
            raise DataError(folder / "judgments.jsonl", line, "order", f"expected ab or ba, got {order!r}")
        winners.setdefault(qid, {})[order] = rec.get("winner") if rec.get("status") == "ok" else None
    labels = {}
    for qid, w in winners.items():
        out = pair_outcome(w.get("ab"), w.get("ba"))
        if out != "E":
            labels[(qid, *sorted((sa, sb)))] = {"W": sa, "L": sb}.get(out, "tie")
    return summary, labels


def pair_agreement(pairs: list[tuple[str, str]]) -> dict:
    """FastChat's agreement over (label, label) pairs, with and without ties -> {with_ties: {agree, total, rate},
    without_ties: {...}}."""
    def count(ps):
        agree = sum(x == y for x, y in ps)
        return {"agree": agree, "total": len(ps), "rate": round(agree / len(ps), 4) if ps else None}
    return {"with_ties": count(pairs), "without_ties": count([(x, y) for x, y in pairs if "tie" not in (x, y)])}


def judge_human(votes: list[dict], judge_dir, n_boot: int, seed: int) -> dict:
    """The --judge part of agreement.json: judge-human and human-human agreement (FastChat's definition), and system
    a's win rate from the human votes beside the judge's (all its questions, and the units the humans rated), each
    with a bootstrap 95% interval (votes / pairs resampled)."""
    summary, judge_labels = read_judge_out(judge_dir)
    sa, sb = summary["system_a"], summary["system_b"]
    mine = [v for v in votes if {v["a"], v["b"]} == {sa, sb}]
    if not mine:
        raise DataError("--votes", None, None, f"no vote compares the judge's systems {sa!r} and {sb!r}",
                        reason="no_overlap")
    jh = [(judge_labels[unit_of(v)], vote_label(v)) for v in mine if unit_of(v) in judge_labels]
    hh = []
    by_unit: dict[tuple, list[str]] = {}
    for v in mine:
        by_unit.setdefault(unit_of(v), []).append(vote_label(v))
    for labs in by_unit.values():
        hh += [(labs[i], labs[j]) for i in range(len(labs)) for j in range(i + 1, len(labs))]

    def rate_block(outcomes: list[str]) -> dict:
        win, adj = rates(outcomes)
        r4 = lambda x: None if x is None else round(x, 4)  # noqa: E731
        return {"n": len(outcomes), "wins": outcomes.count("W"), "ties": outcomes.count("T"),
                "losses": outcomes.count("L"), "inconsistent": outcomes.count("I"), "win_rate": r4(win),
                "adjusted_win_rate": r4(adj), "ci95": bootstrap_ci(outcomes, n_boot, seed)}

    human = [{sa: "W", sb: "L"}.get(vote_label(v), "T") for v in mine]
    on_items = [{sa: "W", sb: "L"}.get(judge_labels[u], "T") for u in by_unit if u in judge_labels]
    return {
        "judge": {"dir": str(judge_dir), "judge_model": summary["judge_model"],
                  "prompt_version": summary["prompt_version"], "units_judged": len(judge_labels),
                  "units_with_human_votes": sum(u in judge_labels for u in by_unit)},
        "judge_human_agreement": pair_agreement(jh),
        "human_human_agreement": pair_agreement(hh),
        "win_rates": {"system_a": sa, "system_b": sb, "human": rate_block(human),
                      "judge_on_human_items": rate_block(on_items),
                      "judge_all": {k: summary.get(k) for k in ("pairs", "wins", "ties", "losses", "inconsistent",
                                                                "win_rate", "adjusted_win_rate", "ci95")}},
    }


@dataclass
class AgreementConfig:
    """Agreement between experts (votes of `judge.py human`) and, with --judge, between experts and the LLM judge."""
    votes: str = field(metadata={"help": "votes JSONL in judge.py human's schema (OUT/votes.jsonl)"})
    out: str = field(metadata={"help": "output folder (agreement.json, config.json)"})
    judge: str | None = field(default=None, metadata={"help": "a pairwise judge.py output folder (summary.json + "
                                                                "judgments.jsonl) to compare with"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the win-rate intervals (0: none)",
                                                   "min": 0})
    seed: int = field(default=0, metadata={"help": "bootstrap seed", "min": 0})
    overwrite: bool = field(default=False, metadata={"help": "replace the agreement of other inputs in --out"})


def run_agreement(cfg: AgreementConfig) -> dict:
    utils.check_fields(cfg)
    utils.check_out_dir(cfg.out)
    out = Path(cfg.out)
    votes = read_votes(cfg.votes)
    # one agreement per folder (utils.prepare_run_dir): the same inputs recompute it, other inputs need --overwrite
    extra = {"votes_fingerprint": utils.fingerprint(cfg.votes),
             "judge_fingerprint": utils.fingerprint(cfg.judge) if cfg.judge else None}
    utils.prepare_run_dir(out, utils.run_identity(cfg, ("out", "overwrite"), extra), resume=True,
                          overwrite=cfg.overwrite, outputs=("agreement.json",))
    utils.save_config(cfg, out)
    result = human_agreement(votes)
    if cfg.judge is not None:
        result.update(judge_human(votes, cfg.judge, cfg.bootstrap, cfg.seed))
    utils.write_json(out / "agreement.json", result)
    print_agreement(result, votes)
    return result


def print_agreement(r: dict, votes: list[dict]):
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"\n{len(votes)} votes by {len({v['annotator'] for v in votes})} annotators on {r['n_items']} items")
    print(f"{'statistic':<34}{'value':>8}")
    print("-" * 42)
    for k, v in r["cohen_kappa_pairs"].items():
        print(f"{'Cohen kappa ' + k:<34}{f(v):>8}")
    for name, key in (("Cohen kappa (mean of pairs)", "cohen_kappa"), ("Fleiss kappa", "fleiss_kappa"),
                      ("Krippendorff alpha verdict", "krippendorff_alpha_verdict")):
        print(f"{name:<34}{f(r[key]):>8}")
    for c, v in r["krippendorff_alpha_scores"].items():
        print(f"{'Krippendorff alpha ' + c:<34}{f(v):>8}")
    if "judge_human_agreement" in r:
        for who in ("judge_human_agreement", "human_human_agreement"):
            for t in ("with_ties", "without_ties"):
                a = r[who][t]
                print(f"{who.split('_agree')[0] + ' ' + t:<34}{f(a['rate']):>8}  ({a['agree']}/{a['total']})")
        w = r["win_rates"]
        def ci(c):
            return "" if not c or not c.get("win_rate") else f" [{c['win_rate'][0]:.3f}, {c['win_rate'][1]:.3f}]"
        for name in ("human", "judge_on_human_items", "judge_all"):
            print(f"{'win rate ' + w['system_a'] + ' (' + name + ')':<34}{f(w[name]['win_rate']):>8}"
                  f"{ci(w[name]['ci95'])}")


def main_agreement(argv) -> None:
    utils.run_command("judge.py agreement", run_agreement,
                      utils.parse_config(AgreementConfig, argv, prog="judge.py agreement"))


SUBCOMMANDS = {"rubric": main_rubric, "human": main_human, "agreement": main_agreement}


if __name__ == "__main__":
    sys.exit(main())
