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
# 8. Training: distributed, FSDP2, packed attention, loss, checkpoints (used by sft.py and rl.py)
# ----------------------------------------------------------------------------------------------------------------------
# Everything here runs on CPU (gloo) as well as on GPUs (nccl), so the tests exercise the real code paths.

def dist_init(seed: int = 0):
    """Initialise torch.distributed for torchrun (env://) or, when run as a plain `python script.py`, as a world of
    one on 127.0.0.1. Returns (rank, local_rank, world_size, device). nccl on CUDA, gloo on CPU."""
    import socket

    import torch
    import torch.distributed as dist
    if "RANK" not in os.environ:  # plain python: a world of one, same code path as torchrun
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    torch.manual_seed(seed)
    return rank, local_rank, world, device


def dist_close():
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def print0(*args, **kwargs):
    """print on global rank 0 only (flushes, so logs interleave sensibly with torchrun)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


def shard_model(model, device, hybrid_shard: bool = False, cpu_offload: bool = False,
                activation_checkpointing: bool = False):
    """FSDP2: fully_shard each decoder block, then the root. On GPU: bf16 params for compute, fp32 gradient reduce,
    fp32 master weights in the optimizer. hybrid_shard: shard inside a node, replicate across nodes (HSDP).

    FSDP AVERAGES gradients over all ranks (replicas too, with hybrid_shard). A loss already divided by the global
    number of supervised tokens must therefore be multiplied by the world size before backward (see sft.train_step);
    set_gradient_divide_factor(1.0) would say the same but needs PREMUL_SUM, which gloo lacks."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if hybrid_shard:
        mesh = init_device_mesh(device.type, (world // local, local), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    kw = {"mesh": mesh}
    if device.type == "cuda":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy()
    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for block in decoder_blocks(model):
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


def decoder_blocks(model) -> list:
    """The repeated transformer blocks of a Hugging Face causal LM (Qwen2 / Llama / InternLM2 layouts)."""
    for path in ("model.layers", "hf.model.layers", "model.model.layers", "transformer.h"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return list(obj)
        except AttributeError:
            continue
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}")


# ---- packed (varlen) attention: one sample never attends to another ----

PACKED_ATTENTION = "lexlab_packed"


def packed_boundaries(cu_seqlens_per_pack: list, seq_len: int) -> list[int]:
    """Per-pack cumulative sample lengths -> one flat boundary list for the micro-batch laid end to end.

    cu_seqlens_per_pack: B lists [0, l0, l0+l1, ..., n_real]; the padding tail of a pack (n_real..seq_len) becomes a
    segment of its own (it has no labels; it only keeps total length = B*seq_len, as flash-attn wants).
    Returns [0, ..., B*seq_len] (strictly increasing)."""
    out = [0]
    for b, cu in enumerate(cu_seqlens_per_pack):
        base = b * seq_len
        for c in list(cu)[1:]:
            if c > 0 and base + int(c) > out[-1]:
                out.append(base + int(c))
        if out[-1] < base + seq_len:
            out.append(base + seq_len)
    return out


def attention_exact(query, key, value, cu_seqlens: list[int], scaling: float):
    """Exact per-sample causal attention (any device). query [1, Hq, T, D], key/value [1, Hkv, T, D] ->
    [1, T, Hq, D]. cu_seqlens: python ints [0, ..., T]."""
    import torch
    import torch.nn.functional as F
    outs = []
    for s, e in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        outs.append(F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                                   is_causal=True, scale=scaling,
                                                   enable_gqa=query.shape[1] != key.shape[1]))
    return torch.cat(outs, dim=2).transpose(1, 2)


def attention_flash(query, key, value, cu_seqlens, max_seqlen: int, scaling: float):
    """flash_attn_varlen_func (flash-attn package, CUDA). Shapes as attention_exact; cu_seqlens int32 tensor."""
    from flash_attn import flash_attn_varlen_func
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, H, D]
    out = flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale=scaling,
                                 causal=True)
    return out.unsqueeze(0)


def attention_torch_varlen(query, key, value, cu_seqlens, max_seqlen: int, scaling: float):
    """torch.nn.attention.varlen.varlen_attn (PyTorch's own flash kernel, CUDA). Shapes as attention_exact."""
    from torch.nn.attention.varlen import varlen_attn
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, H, D]
    out = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scaling, window_size=(-1, 0),
                      enable_gqa=q.shape[1] != k.shape[1])
    return out.unsqueeze(0)


def pick_attention_backend(device) -> str:
    """'flash' (flash-attn installed, CUDA) > 'torch_varlen' (CUDA) > 'exact' (CPU)."""
    if device.type != "cuda":
        return "exact"
    try:
        import flash_attn  # noqa: F401
        return "flash"
    except ImportError:
        return "torch_varlen"


def packed_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A transformers attention function (registered as PACKED_ATTENTION). The trainer passes
    lexlab_cu_seqlens (list of ints), lexlab_cu_seqlens_t (int32 tensor), lexlab_max_seqlen and lexlab_backend
    through the model's forward kwargs. query [1, Hq, T, D] -> ([1, T, Hq, D], None)."""
    cu, backend = kwargs["lexlab_cu_seqlens"], kwargs.get("lexlab_backend", "exact")
    if backend == "flash":
        out = attention_flash(query, key, value, kwargs["lexlab_cu_seqlens_t"], kwargs["lexlab_max_seqlen"], scaling)
    elif backend == "torch_varlen":
        out = attention_torch_varlen(query, key, value, kwargs["lexlab_cu_seqlens_t"], kwargs["lexlab_max_seqlen"],
                                     scaling)
    else:
        out = attention_exact(query, key, value, cu, scaling)
    return out, None


def register_packed_attention():
    """Make `attn_implementation=PACKED_ATTENTION` available to every transformers model (no mask is built for it)."""
    from transformers import AttentionInterface
    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)


# ---- loss ----

def shift_labels_packed(labels, position_ids):
    """Next-token targets inside each sample. labels, position_ids [..., T] (unshifted, -100 = not supervised,
    position 0 = a sample starts) -> targets [..., T] with targets[t] = labels[t+1] unless token t+1 starts a new
    sample (or is padding), and -100 at the last position."""
    import torch
    nxt = torch.full_like(labels, IGNORE_INDEX)
    nxt[..., :-1] = labels[..., 1:]
    starts = torch.zeros_like(labels, dtype=torch.bool)
    starts[..., :-1] = position_ids[..., 1:] == 0
    return nxt.masked_fill(starts, IGNORE_INDEX)


def chunked_cross_entropy_sum(hidden, weight, targets, chunk_size: int = 4096):
    """Sum of next-token cross-entropy without the full [tokens x vocab] logits ever existing.

    hidden [N, H] (final hidden states), weight [V, H] (lm_head), targets [N] (-100 = skip) -> scalar (fp32 sum).
    Only supervised rows are projected; each chunk's logits are recomputed in backward (checkpoint), so peak extra
    memory is one chunk_size x V block."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint
    keep = targets != IGNORE_INDEX
    h, t = hidden[keep], targets[keep]

    def chunk_loss(hc, tc, w):
        return F.cross_entropy((hc @ w.t()).float(), tc, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, h.shape[0], chunk_size):
        total = total + checkpoint(chunk_loss, h[s:s + chunk_size], t[s:s + chunk_size], weight, use_reentrant=False)
    return total


def lr_at(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1) -> float:
    """LR multiplier for optimizer step `step` (0-based): linear warmup to 1 over warmup_steps, then cosine decay to
    min_lr_ratio at total_steps."""
    import math
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_flops(n_params: int, n_tokens: float, sum_len_sq: float, n_layers: int, attn_dim: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) of one step: 6 * params * tokens for the matmuls, plus
    causal attention per sample: 2 matmuls (QK^T, AV) x 2 flops x L^2/2 x attn_dim x layers x 3 = 6 L^2 d layers.
    sum_len_sq = sum over the step's samples of L^2: attention is counted per sample (packing does not pay for
    cross-sample attention)."""
    return 6.0 * n_params * n_tokens + 6.0 * sum_len_sq * attn_dim * n_layers


def write_packed_stage(out_dir, samples, seq_len: int, pad_id: int, stage: str = "test") -> Path:
    """Write (input_ids, labels) samples as a packed stage (the PACKED_FORMAT contract: input_ids / labels /
    position_ids / cu_seqlens / cu_offsets .npy + meta.json), packing greedily in order. A simple reference writer
    for tests and benchmarks; prepare_data.py does the real packing. Samples longer than seq_len are an error."""
    import numpy as np
    packs, cur = [], []
    for s in samples:
        if len(s[0]) > seq_len:
            raise ValueError(f"sample of {len(s[0])} tokens > seq_len {seq_len}")
        if sum(len(x[0]) for x in cur) + len(s[0]) > seq_len:
            packs.append(cur)
            cur = []
        cur.append(s)
    packs.append(cur)
    n = len(packs)
    ids = np.full((n, seq_len), pad_id, np.int32)
    labels = np.full((n, seq_len), IGNORE_INDEX, np.int32)
    pos = np.zeros((n, seq_len), np.int32)
    cu_all, offsets = [], [0]
    for i, pack in enumerate(packs):
        cu = [0]
        for sid, slab in pack:
            a = cu[-1]
            ids[i, a:a + len(sid)], labels[i, a:a + len(sid)] = sid, slab
            pos[i, a:a + len(sid)] = np.arange(len(sid))
            cu.append(a + len(sid))
        cu_all += cu
        offsets.append(len(cu_all))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in [("input_ids", ids), ("labels", labels), ("position_ids", pos),
                      ("cu_seqlens", np.array(cu_all, np.int32)), ("cu_offsets", np.array(offsets, np.int64))]:
        np.save(out / f"{name}.npy", arr)
    n_tok = int(sum(len(s[0]) for s in samples))
    meta = {"seq_len": seq_len, "n_packs": n, "n_samples": len(samples), "n_tokens": n_tok,
            "n_supervised": int((labels != IGNORE_INDEX).sum()), "pad_token_id": pad_id,
            "packing_efficiency": n_tok / (n * seq_len), "tokenizer": "", "stage": stage}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


# ---- checkpoints (torch.distributed.checkpoint), atomic, keep last K ----

CKPT_PREFIX = "step_"


def latest_checkpoint(ckpt_root) -> Path | None:
    """The newest complete checkpoint folder (incomplete saves live under .tmp_* and are never picked)."""
    root = Path(ckpt_root)
    done = sorted((p for p in root.glob(CKPT_PREFIX + "*") if (p / "trainer_state.pt").is_file()),
                  key=lambda p: int(p.name[len(CKPT_PREFIX):])) if root.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(ckpt_root, step: int, model, optimizer, extra: dict, keep_last: int = 2) -> Path:
    """Write model + optimizer (sharded, DCP) and extra (scheduler, data position, ...) and each rank's RNG states
    to ckpt_root/.tmp_step_N, then rename it to step_N (atomic: a crash midway leaves the previous checkpoint the
    newest complete one). Older checkpoints beyond keep_last are removed. Needs a filesystem all ranks share."""
    import shutil

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    root = Path(ckpt_root)
    rank = dist.get_rank()
    final, tmp = root / f"{CKPT_PREFIX}{step:08d}", root / f".tmp_{CKPT_PREFIX}{step:08d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    if os.environ.get("LEXLAB_TEST_KILL_DURING_SAVE") == str(step):  # test hook: die with the save half done
        import signal
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()
    if rank == 0:
        torch.save(extra, tmp / "trainer_state.pt")  # written last: marks the folder complete
        os.replace(tmp, final)
        done = sorted(root.glob(CKPT_PREFIX + "*"), key=lambda p: int(p.name[len(CKPT_PREFIX):]))
        for old in done[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(path, model, optimizer) -> dict:
    """Load a save_checkpoint folder into (sharded) model and optimizer, restore this rank's RNG; return extra."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    path = Path(path)
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = path / f"rng_rank{dist.get_rank()}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return torch.load(path / "trainer_state.pt", weights_only=False)


def rng_state() -> dict:
    import random

    import numpy as np
    import torch
    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(s: dict):
    import random

    import numpy as np
    import torch
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


def export_hf(model, hf_model, tokenizer_dir, out_dir, dtype=None, prefix: str = ""):
    """Gather the full (unsharded) weights to rank 0 and save a Hugging Face folder: safetensors + config +
    generation config + tokenizer. `model` is the FSDP-wrapped module; its state dict keys are `hf_model`'s with
    `prefix` in front (e.g. "hf." for a wrapper holding the HF model as .hf). Loadable by transformers and vLLM."""
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoTokenizer
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if dist.get_rank() == 0:
        out = Path(out_dir)
        tmp = out.with_name(out.name + ".tmp")
        if dtype is not None:
            sd = {k: v.to(dtype) for k, v in sd.items()}
            hf_model.config.torch_dtype = dtype
        hf_model.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
        if out.exists():
            import shutil
            shutil.rmtree(out)
        os.replace(tmp, out)
    dist.barrier()
