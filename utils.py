"""
LexLab shared utilities: everything two or more scripts need, in one file.

Sections (banner comments below):
  1. Errors and record reading   - one-line errors naming file, line and field
  2. Config                      - a dataclass per script exposed as --flags, saved to the run directory
  3. Chinese numerals            - 第一百三十三条之一 and friends
  4. Judgment answer format      - the one fixed answer block used by prepare_data / rl / evaluate
  5. Chat tokenization           - input ids + labels on assistant tokens only
  6. Tiny offline model          - byte-level BPE tokenizer + random-init Qwen2, nothing downloaded

Run `python utils.py tiny-model --out DIR` to build the tiny model used by the tests and the demo.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------------------------------
# 1. Errors and record reading
# ----------------------------------------------------------------------------------------------------------------------

class DataError(ValueError):
    """A user-data mistake. str() is one line: `file:line: field: what is wrong`."""

    def __init__(self, path, line: int | None, field: str | None, message: str, reason: str = "bad_record"):
        self.path, self.line, self.field, self.reason = str(path), line, field, reason
        where = self.path + (f":{line}" if line is not None else "")
        super().__init__(f"{where}: " + (f"field '{field}': " if field else "") + message)


def read_text(path) -> str:
    """Read a UTF-8 text file; a missing file or another encoding (GBK, ...) is a DataError, not a traceback."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found", reason="missing_file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        hint = ""
        try:
            raw.decode("gb18030")
            hint = " (looks like GBK/GB18030: convert with `iconv -f gb18030 -t utf-8`)"
        except UnicodeDecodeError:
            pass
        raise DataError(path, line, None, f"not valid UTF-8 at byte {e.start}{hint}", reason="bad_encoding") from None


def iter_records(path, on_error: str = "raise", errors: dict | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record) from a .jsonl, .json (array or {"0": ...} dict) or .csv file.

    on_error="raise": the first bad record raises DataError. on_error="skip": bad records are counted in
    `errors[reason]` (so the caller can report them) and skipped. Line numbers are 1-based; for a JSON array they
    are the item index + 1.
    """
    assert on_error in ("raise", "skip"), on_error
    path = Path(path)
    text = read_text(path)
    suffix = path.suffix.lower()

    def bad(line, msg, reason="bad_json"):
        err = DataError(path, line, None, msg, reason)
        if on_error == "raise":
            raise err
        if errors is not None:
            errors[reason] = errors.get(reason, 0) + 1

    if suffix == ".csv":
        for i, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):  # line 1 is the header
            yield i, dict(row)
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, None, f"invalid JSON: {e.msg}", "bad_json") from None
        items = data.items() if isinstance(data, dict) else enumerate(data)
        for i, (_, rec) in enumerate(items, start=1):
            if isinstance(rec, dict):
                yield i, rec
            else:
                bad(i, f"expected a JSON object, got {type(rec).__name__}")
    else:  # jsonl
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                bad(i, f"invalid JSON: {e.msg} (column {e.colno})")
                continue
            if isinstance(rec, dict):
                yield i, rec
            else:
                bad(i, f"expected a JSON object, got {type(rec).__name__}")


def require(rec: dict, field: str, path, line: int, kind=str, allow_empty: bool = False):
    """Return rec[field] (dotted paths allowed: 'meta.accusation'), or raise a DataError naming file, line, field."""
    cur: Any = rec
    for part in field.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise DataError(path, line, field, "missing", reason="missing_field")
        cur = cur[part]
    if kind is not None and not isinstance(cur, kind):
        raise DataError(path, line, field, f"expected {getattr(kind, '__name__', kind)}, got {type(cur).__name__}",
                        reason="bad_field")
    if not allow_empty and (cur is None or (hasattr(cur, "__len__") and len(cur) == 0)
                            or (isinstance(cur, str) and not cur.strip())):
        raise DataError(path, line, field, "empty", reason="empty_field")
    return cur


def write_jsonl(path, records) -> int:
    """Write records as UTF-8 JSON lines (atomically: tmp file then rename). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


# ----------------------------------------------------------------------------------------------------------------------
# 2. Config: a dataclass per script, exposed as --flags
# ----------------------------------------------------------------------------------------------------------------------

def parse_config(cls, argv=None, description: str | None = None):
    """Build an argparse parser from dataclass `cls` (field help from metadata['help']) and return an instance.

    bool fields take `--flag true|false`; Optional fields accept `none`.
    """
    parser = argparse.ArgumentParser(description=description or cls.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        typ = f.type if not isinstance(f.type, str) else eval(f.type, sys.modules[cls.__module__].__dict__)
        base = [t for t in getattr(typ, "__args__", (typ,)) if t is not type(None)][0]
        if base is bool:
            conv = _to_bool
        elif base in (int, float, str):
            conv = (lambda b: lambda s: None if s.lower() == "none" else b(s))(base)
        else:
            conv = str
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        parser.add_argument(f"--{f.name}", type=conv, default=default, required=required,
                            help=f.metadata.get("help", ""))
    return cls(**vars(parser.parse_args(argv)))


def _to_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if s.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def save_config(cfg, out_dir) -> Path:
    """Write the resolved config to OUT/config.json (what was actually run)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    path.write_text(json.dumps(dataclasses.asdict(cfg), ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# 3. Chinese numerals (as statutes write them: 第一百三十三条之一, 第十条, 第一百一十条, 第二千零一条)
# ----------------------------------------------------------------------------------------------------------------------

_DIGITS = "零一二三四五六七八九"
_CN_VALUE = {c: i for i, c in enumerate(_DIGITS)} | {"〇": 0, "两": 2, "壹": 1, "贰": 2, "叁": 3, "肆": 4, "伍": 5,
                                                    "陆": 6, "柒": 7, "捌": 8, "玖": 9}
_CN_UNIT = {"十": 10, "拾": 10, "百": 100, "佰": 100, "千": 1000, "仟": 1000, "万": 10_000, "萬": 10_000}


def int_to_cn(n: int) -> str:
    """0 <= n < 10**8 -> Chinese numeral in statute style: 10 -> 十, 110 -> 一百一十, 2001 -> 二千零一."""
    if not 0 <= n < 10 ** 8:
        raise ValueError(f"out of range: {n}")
    if n < 10:
        return _DIGITS[n]
    if n < 20:
        return "十" + (_DIGITS[n - 10] if n > 10 else "")
    if n >= 10_000:
        hi, lo = divmod(n, 10_000)
        return int_to_cn(hi) + "万" + ("" if lo == 0 else ("零" if lo < 1000 else "") + _small_cn(lo))
    return _small_cn(n)


def _small_cn(n: int) -> str:
    """1 <= n < 10000, with 一十 spelled out inside larger numbers (一百一十)."""
    out, zero = [], False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d, n = divmod(n, value)
        if d:
            if zero:
                out.append("零")
            out.append(_DIGITS[d] + unit)
            zero = False
        elif out:
            zero = True
    return "".join(out)


def cn_to_int(s: str) -> int:
    """Chinese (or Arabic, or mixed) numeral -> int: 一百三十三 -> 133, 十五 -> 15, 二千零一 -> 2001, 264 -> 264."""
    s = s.strip()
    if not s:
        raise ValueError("empty numeral")
    if s.isdigit():
        return int(s)
    total, section, digit = 0, 0, None
    for ch in s:
        if ch in _CN_VALUE:
            digit = _CN_VALUE[ch]
        elif ch.isdigit():
            digit = (digit or 0) * 10 + int(ch)
        elif ch in _CN_UNIT:
            unit = _CN_UNIT[ch]
            if unit == 10_000:
                total += (section + (digit or 0)) * unit
                section = 0
            else:
                section += (1 if digit is None else digit) * unit
            digit = None
        else:
            raise ValueError(f"not a numeral: {s!r}")
    return total + section + (digit or 0)


def article_cn(num: int, sub: int = 0) -> str:
    """Statute article label: (133, 1) -> 第一百三十三条之一, (264, 0) -> 第二百六十四条."""
    return f"第{int_to_cn(num)}条" + (f"之{int_to_cn(sub)}" if sub else "")


# ----------------------------------------------------------------------------------------------------------------------
# 4. Judgment answer format (shared by prepare_data SFT targets, rl rewards and evaluate judgment prediction)
# ----------------------------------------------------------------------------------------------------------------------
# A judgment answer is one block, after optional <think>...</think> reasoning:
#
#   <answer>
#   罪名：盗窃罪；诈骗罪
#   法条：《刑法》第二百六十四条、第二百六十六条
#   刑期：一年六个月
#   </answer>
#
# Charges are separated by '；' (charge names themselves may contain '、', e.g. 走私、贩卖、运输、制造毒品罪).
# 刑期 is one of: a duration (X年Y个月), 无期徒刑, 死刑, or 不判处监禁 (0 months).

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
NO_PRISON = "不判处监禁"


def charge_display(name: str) -> str:
    """CAIL label -> how a judgment writes it: '盗窃' -> '盗窃罪', '[走私、贩卖、运输、制造]毒品' -> '走私、贩卖、运输、制造毒品罪'."""
    name = name.replace("[", "").replace("]", "").strip()
    return name if name.endswith("罪") else name + "罪"


def term_text(term_months: int, life: bool = False, death: bool = False) -> str:
    """Sentence in words: 18 -> 一年六个月, 24 -> 二年, 6 -> 六个月, 0 -> 不判处监禁; life / death as categories."""
    if death:
        return "死刑"
    if life:
        return "无期徒刑"
    if term_months <= 0:
        return NO_PRISON
    years, months = divmod(int(term_months), 12)
    return (f"{int_to_cn(years)}年" if years else "") + (f"{int_to_cn(months)}个月" if months else "")


def format_answer(truth: dict, think: str | None = None) -> str:
    """Render a ground truth {charges, articles, term_months, life, death} as the answer block (the SFT target).

    With `think`, the block is preceded by <think>think</think> as R1-style models write it.
    """
    charges = "；".join(charge_display(c) for c in truth["charges"])
    articles = "、".join(article_cn(a) for a in sorted(set(int(a) for a in truth["articles"])))
    lines = [f"罪名：{charges}", f"法条：《刑法》{articles}",
             f"刑期：{term_text(truth.get('term_months', 0), truth.get('life', False), truth.get('death', False))}"]
    block = ANSWER_OPEN + "\n" + "\n".join(lines) + "\n" + ANSWER_CLOSE
    return (f"{THINK_OPEN}\n{think.strip()}\n{THINK_CLOSE}\n\n" + block) if think else block


JUDGMENT_INSTRUCTION = ("请根据下面的案件事实，判断被告人的罪名、适用的《刑法》法条和刑期。"
                        "先给出分析，最后严格按以下格式作答：\n<answer>\n罪名：…\n法条：《刑法》第…条\n刑期：…\n</answer>")


def judgment_prompt(fact: str) -> str:
    """The user turn for judgment prediction (SFT, RL and evaluation use the same words)."""
    return f"{JUDGMENT_INSTRUCTION}\n\n案件事实：{fact.strip()}"


def judgment_truth(meta: dict) -> dict:
    """CAIL2018 `meta` -> truth dict {charges, articles, term_months, life, death} (articles deduplicated, sorted)."""
    term = meta["term_of_imprisonment"]
    return {"charges": list(dict.fromkeys(meta["accusation"])),
            "articles": sorted(set(int(a) for a in meta["relevant_articles"])),
            "term_months": int(term.get("imprisonment", 0) or 0),
            "life": bool(term.get("life_imprisonment", False)),
            "death": bool(term.get("death_penalty", False))}


# ----------------------------------------------------------------------------------------------------------------------
# 5. Chat tokenization: labels on assistant tokens only
# ----------------------------------------------------------------------------------------------------------------------

IGNORE_INDEX = -100


def encode_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Tokenize a conversation with the tokenizer's chat template; return (input_ids, labels).

    labels[i] == input_ids[i] on assistant tokens (content and the end-of-turn token, every assistant turn),
    IGNORE_INDEX elsewhere (system/user turns, role headers, the newline after end-of-turn).
    Works for any template whose rendering of messages[:k] is a prefix of the rendering of messages[:k+1]
    (ChatML / Qwen / InternLM2 / Llama-3 all are). Each turn is tokenized on its own, so no token straddles turns.
    """
    ids: list[int] = []
    labels: list[int] = []
    prev_text = ""
    eot_ids = _end_of_turn_ids(tokenizer)
    for k, msg in enumerate(messages):
        if msg["role"] == "assistant":
            prompt_text = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
            _append(tokenizer, prompt_text[len(prev_text):], ids, labels, supervised=False, prev=prev_text,
                    full=prompt_text)
            prev_text = prompt_text
        full = tokenizer.apply_chat_template(messages[:k + 1], tokenize=False)
        _append(tokenizer, full[len(prev_text):], ids, labels, supervised=msg["role"] == "assistant",
                prev=prev_text, full=full, eot_ids=eot_ids)
        prev_text = full
    return ids, labels


def _end_of_turn_ids(tokenizer) -> set[int]:
    out = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<eoa>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            out.add(tid)
    return out


def _append(tokenizer, piece: str, ids, labels, supervised: bool, prev: str, full: str, eot_ids=()):
    if not full.startswith(prev):
        raise ValueError("chat template is not prefix-stable; encode_chat cannot split turns")
    if not piece:
        return
    new = tokenizer(piece, add_special_tokens=False)["input_ids"]
    if supervised:
        # supervise up to and including the last end-of-turn token; trailing whitespace after it is not the model's
        last = max((i for i, t in enumerate(new) if t in eot_ids), default=len(new) - 1)
        lab = new[:last + 1] + [IGNORE_INDEX] * (len(new) - last - 1)
    else:
        lab = [IGNORE_INDEX] * len(new)
    ids.extend(new)
    labels.extend(lab)


# ----------------------------------------------------------------------------------------------------------------------
# 6. Tiny offline model: a byte-level BPE tokenizer trained here + a random-init Qwen2 (untied lm_head)
# ----------------------------------------------------------------------------------------------------------------------

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n你是一个乐于助人的法律助手。<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TINY_CONFIG = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=32768, rope_theta=10000.0, rms_norm_eps=1e-6,
                   tie_word_embeddings=False, torch_dtype="float32")  # head_dim 32 (vLLM needs 32/64/...)


def sample_corpus(sample_dir=REPO / "data" / "sample") -> Iterator[str]:
    """Every string value in the built-in sample data (the tokenizer's training text)."""
    def strings(x):
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)

    for path in sorted(Path(sample_dir).rglob("*")):
        if path.suffix in (".jsonl", ".json", ".csv"):
            for _, rec in iter_records(path):
                yield from strings(rec)
        elif path.suffix == ".txt":
            yield path.read_text(encoding="utf-8")
    yield JUDGMENT_INSTRUCTION + format_answer({"charges": ["盗窃"], "articles": [264], "term_months": 18})


def build_tiny_model(out_dir, texts=None, vocab_size: int = 4096, seed: int = 0, **config_overrides) -> Path:
    """Train a byte-level BPE tokenizer on `texts` (default: the built-in sample corpus), build a random-init Qwen2
    causal LM and save both as an ordinary Hugging Face folder. Deterministic for a given corpus and seed."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = list(texts) if texts is not None else list(sample_corpus())

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None, unk_token=None, additional_special_tokens=SPECIAL_TOKENS[1:],
                                        chat_template=CHATML_TEMPLATE, model_max_length=32768)
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      **{**TINY_CONFIG, **config_overrides})
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# CLI: python utils.py tiny-model --out DIR
# ----------------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="LexLab utilities")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tm = sub.add_parser("tiny-model", help="build the tiny offline model (tokenizer + random-init Qwen2)")
    tm.add_argument("--out", required=True)
    tm.add_argument("--vocab_size", type=int, default=4096)
    tm.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.cmd == "tiny-model":
        print(build_tiny_model(a.out, vocab_size=a.vocab_size, seed=a.seed))


# ----------------------------------------------------------------------------------------------------------------------
# 7. Generation backends (temporary, replaced at merge)
# ----------------------------------------------------------------------------------------------------------------------
# Branch `evalx` only: a small batched Hugging Face greedy `generate` with the agreed signature, so evaluate.py can be
# tested here. The real section 7 (HF + vLLM) comes from another branch and replaces this one at merge.

_HF_CACHE: dict = {}


def _load_hf(model_dir: str):
    """(model, tokenizer) for model_dir, loaded once per process (evaluate.py calls generate once per chunk)."""
    if model_dir not in _HF_CACHE:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        _HF_CACHE.clear()
        _HF_CACHE[model_dir] = (model, tok)
    return _HF_CACHE[model_dir]


def generate(model_dir, prompts: list[str], backend: str = "hf", max_new_tokens: int = 1024, temperature: float = 0.0,
             batch_size: int = 8, chat: bool = True, seed: int = 0) -> list[str]:
    """Completions for `prompts` (one user turn each through the chat template, or raw text with chat=False).

    Temporary HF-only version: left-padded batches, greedy when temperature == 0.
    """
    import torch
    if backend != "hf":
        raise NotImplementedError(f"backend {backend!r}: only 'hf' in this branch's temporary section 7")
    model, tok = _load_hf(str(model_dir))
    torch.manual_seed(seed)
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             if chat else p for p in prompts]
    out: list[str] = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=not chat)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                                 pad_token_id=tok.pad_token_id)
        out.extend(tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# 9. Judgment parsing (temporary, replaced at merge)
# ----------------------------------------------------------------------------------------------------------------------
# Branch `evalx` only: reads the section-4 answer block back (format_answer output round-trips). The richer parser
# from another branch replaces this at merge; evaluate.py depends only on parse_judgment and the dict it returns.

import re as _re

_NUM = "0-9零〇一二两三四五六七八九十百千"


def parse_judgment(text: str) -> dict:
    """Completion -> {"charges": set[str], "articles": set[int], "term_months": int | None, "life": bool,
    "death": bool}, read from the last <answer> block (the whole text when there is none)."""
    blocks = _re.findall(_re.escape(ANSWER_OPEN) + r"(.*?)" + _re.escape(ANSWER_CLOSE), text, flags=_re.S)
    body = blocks[-1] if blocks else text

    def field(name):
        m = _re.findall(name + r"\s*[：:]\s*(.*)", body)
        return m[-1].strip() if m else ""

    charges = {c.strip() for c in _re.split(r"[；;]", field("罪名")) if c.strip()}
    articles = set()
    for num in _re.findall(rf"第([{_NUM}]+)条", field("法条")):
        try:
            articles.add(cn_to_int(num))
        except ValueError:
            pass
    term, months, life, death = field("刑期"), None, False, False
    if "死刑" in term:
        death = True
    elif "无期" in term:
        life = True
    elif NO_PRISON in term:
        months = 0
    else:
        m = _re.search(rf"(?:([{_NUM}]+)年)?(?:([{_NUM}]+)个?月)?", term)
        if m and (m.group(1) or m.group(2)):
            try:
                months = cn_to_int(m.group(1) or "0") * 12 + cn_to_int(m.group(2) or "0")
            except ValueError:
                months = None
    return {"charges": charges, "articles": articles, "term_months": months, "life": life, "death": death}
