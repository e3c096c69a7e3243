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

Sections: 1. config  2. judging prompt and verdicts  3. inputs  4. judge client  5. cache  6. scores  7. main
"""
from __future__ import annotations

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
from pathlib import Path

import utils
from utils import DataError


# ----------------------------------------------------------------------------------------------------------------------
# 1. Config
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class JudgeConfig:
    """Pairwise LLM judge with position swap."""
    questions: str = field(metadata={"help": "questions JSONL: id, question (or input), optional category, reference"})
    llm_url: str = field(metadata={"help": "judge: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1",
                                   "alias": "--judge_base_url"})
    llm_model: str = field(metadata={"help": "judge: model name sent to the endpoint", "alias": "--judge_model"})
    out: str = field(metadata={"help": "output folder (judgments.jsonl, summary.json, config.json)"})
    answers_a: str | None = field(default=None, metadata={"help": "answers JSONL of system A (id, answer)"})
    answers_b: str | None = field(default=None, metadata={"help": "answers JSONL of system B, or 'reference'"})
    model_a: str | None = field(default=None, metadata={"help": "model folder: generate system A's answers"})
    model_b: str | None = field(default=None, metadata={"help": "model folder: generate system B's answers"})
    name_a: str | None = field(default=None, metadata={"help": "system A's name (default: file stem / folder name)"})
    name_b: str | None = field(default=None, metadata={"help": "system B's name"})
    backend: str = field(default="hf", metadata={"help": "generation backend for --model_a/b",
                                                  "choices": ("hf", "vllm")})
    max_new_tokens: int = field(default=1024, metadata={"help": "generation length for --model_a/b", "min": 1})
    llm_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "environment variable holding the key",
                                                                 "alias": "--api_key_env"})
    concurrency: int = field(default=4, metadata={"help": "judge requests in flight at most", "min": 1})
    timeout: float = field(default=120.0, metadata={"help": "seconds per judge request", "gt": 0})
    max_retries: int = field(default=6, metadata={"help": "retries on 429 / 5xx / timeout / connection / bad JSON",
                                                  "min": 0})
    backoff: float = field(default=1.0, metadata={"help": "first retry wait in seconds, doubled each retry", "min": 0})
    backoff_max: float = field(default=60.0, metadata={"help": "longest retry wait (also caps Retry-After)", "min": 0})
    max_reasks: int = field(default=2, metadata={"help": "re-asks when the verdict cannot be parsed", "min": 0})
    judge_max_tokens: int = field(default=2048, metadata={"help": "max_tokens of the judge's reply", "min": 1})
    max_items: int | None = field(default=None, metadata={"help": "first N questions only", "min": 1})
    category_field: str = field(default="category", metadata={"help": "question field of the category"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the 95% intervals (0: none)",
                                                   "min": 0})
    seed: int = field(default=0, metadata={"help": "bootstrap seed", "min": 0})


def preflight(cfg: JudgeConfig) -> None:
    """Every flag, input file and model folder, then the judge endpoint (one request), checked before anything is
    generated, judged or written. A problem is a DataError (one line)."""
    utils.check_fields(cfg)
    if not re.match(r"https?://[^/\s]+", cfg.llm_url):
        raise DataError("--llm_url", None, None, f"expected an http:// or https:// URL, got {cfg.llm_url!r}",
                        reason="bad_flag")
    utils.check_out_dir(cfg.out)
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
    return name or ("reference" if path == "reference" else Path(path).stem if path is not None else Path(model).name)


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
    if not saved.exists():
        # prompt budget: a question too long for the model's context is refused (empty answer, counted), not sent
        qs = [q["question"] for q in questions]
        budget = utils.prompt_budget(model, cfg.max_new_tokens)
        fits = [i for i, n in enumerate(utils.prompt_lengths(model, qs)) if n <= budget]
        if len(fits) < len(qs):
            print(f"judge.py: {len(qs) - len(fits)} question(s) longer than the {budget}-token prompt budget of "
                  f"{model}: empty answers", file=sys.stderr)
        gen = dict(zip(fits, utils.generate(model, [qs[i] for i in fits], backend=cfg.backend,
                                            max_new_tokens=cfg.max_new_tokens, max_prompt_tokens=budget)))
        texts = [gen.get(i, "") for i in range(len(qs))]
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
# 5. Cache: judgments.jsonl, one fsync'd line per judgment; a torn last line (crash mid-write) is dropped
# ----------------------------------------------------------------------------------------------------------------------

def content_hash(*texts) -> str:
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def cache_key(q: dict, name_a: str, name_b: str, order: str, judge_model: str, answers: dict) -> str:
    """(question id + hash of question/reference/answers, system names, order, judge model, prompt version).
    The answers are hashed too, so regenerated answers under the same system name are judged afresh."""
    return "|".join([q["id"], content_hash(q["question"], q["reference"], answers["a"], answers["b"]),
                     name_a, name_b, order, judge_model, PROMPT_VERSION])


class JudgmentCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            self._load()

    def _load(self):
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # torn last line: that judgment never finished being written
            data = data[: data.rfind(b"\n") + 1]
            with open(self.path, "r+b") as f:
                f.truncate(len(data))
        for i, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self.records.setdefault(rec["key"], rec)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(self.path, i, None, "corrupt cache line (not the last line): fix or delete it",
                                reason="bad_cache") from None

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, rec: dict):
        with self._lock:
            if rec["key"] in self.records:
                return
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.records[rec["key"]] = rec


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

def run(cfg: JudgeConfig) -> dict:
    preflight(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    utils.save_config(cfg, out)  # holds the env var's name, never the key
    api_key = os.environ.get(cfg.llm_key_env, "")
    questions = load_questions(cfg.questions, cfg.category_field, cfg.max_items)
    name_a, answers_a = get_answers("a", cfg, questions, out)
    name_b, answers_b = get_answers("b", cfg, questions, out)

    client = utils.ChatClient(cfg.llm_url, cfg.llm_model, api_key, cfg.timeout, cfg.max_retries,
                         cfg.backoff, cfg.backoff_max, cfg.judge_max_tokens)
    cache = JudgmentCache(out / "judgments.jsonl")
    tasks = []  # (key, question, answers, order)
    for q in questions:
        pair = {"a": answers_a[q["id"]], "b": answers_b[q["id"]]}
        for order in ("ab", "ba"):
            tasks.append((cache_key(q, name_a, name_b, order, cfg.llm_model, pair), q, pair, order))
    todo = [t for t in tasks if t[0] not in cache]
    print(f"{len(questions)} questions, {len(tasks)} judgments: {len(tasks) - len(todo)} cached, {len(todo)} to ask "
          f"{cfg.llm_model} at {cfg.llm_url}", flush=True)

    failed: dict[str, dict] = {}
    from tqdm import tqdm
    pool = ThreadPoolExecutor(max_workers=max(1, cfg.concurrency))
    try:
        futures = {pool.submit(judge_one, client, q, pair, order, cfg.max_reasks): key for key, q, pair, order in todo}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="judge", disable=not todo):
            key, rec = futures[fut], fut.result()
            rec = {"key": key, "system_a": name_a, "system_b": name_b, "judge_model": cfg.llm_model,
                   "prompt_version": PROMPT_VERSION, **rec}
            if rec["status"] == "failed":
                failed[key] = rec  # not cached: a later run asks again
                print(f"judge error q={rec['qid']} order={rec['order']}: {rec['error']}", file=sys.stderr)
            else:
                cache.add(rec)
    except KeyboardInterrupt:  # stop sending new (paid) requests; what finished is already on disk
        pool.shutdown(wait=False, cancel_futures=True)
        raise SystemExit(f"judge.py: interrupted; {len(cache.records)} judgments are cached in {cache.path}: "
                         "rerun to resume")
    pool.shutdown()
    if failed and len(failed) == len(tasks):  # not one judgment: an error, not a summary whose rates are null
        first = next(iter(failed.values()))["error"]
        print(f"judge.py: error: all {len(tasks)} judgments failed (first: {first}); nothing summarised: rerun when "
              f"the judge answers", file=sys.stderr)
        raise SystemExit(1)

    results = {q["id"]: {} for q in questions}
    for key, q, _, order in tasks:
        results[q["id"]][order] = cache.records.get(key) or failed[key]
    summary = {"system_a": name_a, "system_b": name_b, "judge_model": cfg.llm_model,
               "prompt_version": PROMPT_VERSION, "questions": len(questions),
               **summarize(questions, answers_a, answers_b, results, cfg.bootstrap, cfg.seed)}
    summary["judgment_errors"] = {s: sum(r[o]["status"] == s for r in results.values() for o in r)
                                  for s in ("unparsable", "failed")}
    summary["judge_calls"], summary["cached"] = client.calls, len(tasks) - len(todo)
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    print_table(summary, name_a, name_b)
    return summary


def main(argv=None):
    cfg = utils.parse_config(JudgeConfig, argv)
    try:
        run(cfg)
    except DataError as e:
        utils.fail("judge.py", e)


if __name__ == "__main__":
    sys.exit(main())
