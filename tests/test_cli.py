"""Every script's command line (issue 12): a bad flag, file, record or model folder is ONE line `SCRIPT: error: ...`
with exit status 2, found before any work starts, and nothing is written; `--help` of every script and subcommand
works and marks required flags. The scripts run in-process (main(argv)) to keep this fast; one subprocess per script
checks the real entry point."""
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

import evaluate
import judge
import prepare_data
import rl
import sft
import utils
from conftest import exit_status

REPO = Path(__file__).resolve().parents[1]
MAINS = {"sft.py": sft.main, "rl.py": rl.main, "evaluate.py": evaluate.main, "judge.py": judge.main,
         "prepare_data.py": prepare_data.main}


def cli(script: str, argv, capsys) -> tuple[int, str, str]:
    """Run SCRIPT's main(argv) in-process -> (exit status, stdout, stderr)."""
    rc = exit_status(MAINS[script], argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def files_under(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def inp(tiny_model, tmp_path_factory) -> dict:
    """Good inputs for every script, plus broken model folders; the tests change one thing at a time."""
    d = tmp_path_factory.mktemp("cli_inputs")
    stage = prepare_data.write_packed_stage(d / "stage", [([1, 2, 3, 4], [-100, -100, 3, 4])] * 4, 16, 0)
    truth = {"charges": ["盗窃"], "articles": [264], "term_months": 6, "life": False, "death": False}
    utils.write_jsonl(d / "prompts.jsonl", [{"prompt": "案件事实：被告人秘密窃取财物。", "truth": truth}])
    lb = d / "lawbench" / "data" / "zero_shot"
    lb.mkdir(parents=True)
    (lb / "1-1.json").write_text(json.dumps([{"instruction": "i", "question": "q", "answer": "a"}]), encoding="utf-8")
    meta = {"accusation": ["盗窃"], "relevant_articles": [264],
            "term_of_imprisonment": {"imprisonment": 6, "life_imprisonment": False, "death_penalty": False}}
    utils.write_jsonl(d / "cail.jsonl", [{"fact": "被告人秘密窃取他人财物。", "meta": meta}])
    utils.write_jsonl(d / "q.jsonl", [{"id": 1, "question": "盗窃罪如何量刑？"}])
    utils.write_jsonl(d / "a.jsonl", [{"id": 1, "answer": "甲"}])
    utils.write_jsonl(d / "b.jsonl", [{"id": 1, "answer": "乙"}])
    models = {"good": Path(tiny_model), "missing": d / "no_such_model", "empty": d / "empty_model"}
    models["empty"].mkdir()
    for name, spoil in (("truncated", lambda m: os.truncate(m / "model.safetensors", 4096)),
                        ("no_tokenizer", lambda m: (m / "tokenizer.json").unlink())):
        models[name] = d / f"{name}_model"
        shutil.copytree(tiny_model, models[name])
        spoil(models[name])
    return {"dir": d, "stage": stage, "prompts": d / "prompts.jsonl", "lawbench": d / "lawbench",
            "cail": d / "cail.jsonl", "q": d / "q.jsonl", "a": d / "a.jsonl", "b": d / "b.jsonl", "models": models}


def base_argv(script: str, inp: dict, out: Path, model: Path) -> list:
    if script == "sft.py":
        return ["--model", model, "--data", inp["stage"], "--out", out]
    if script == "rl.py":
        return ["--model", model, "--prompts", inp["prompts"], "--out", out]
    if script == "evaluate.py generate":
        return ["generate", "--model", model, "--lawbench_dir", inp["lawbench"], "--out", out, "--tasks", "1-1"]
    if script == "evaluate.py judgment":
        return ["judgment", "--model", model, "--data", inp["cail"], "--out", out]
    if script == "evaluate.py longdoc":
        return ["longdoc", "--model", model, "--data", REPO / "data" / "longdoc_sample.jsonl", "--out", out]
    if script == "prepare_data.py":
        return ["--manifest", REPO / "data" / "sample" / "manifest.json", "--model", model, "--out", out,
                "--lawbench_dir", REPO / "data" / "sample" / "lawbench"]
    if script == "judge.py":
        return ["--questions", inp["q"], "--answers_a", inp["a"], "--answers_b", inp["b"], "--llm_model", "m",
                "--llm_url", "http://127.0.0.1:9/v1", "--out", out]
    raise KeyError(script)


# (script, extra argv or a function of the inputs -> argv, text the one-line error must contain)
BAD = [
    ("sft.py", ["--export_dtype", "fp16"], "--export_dtype: expected one of auto | bfloat16 | float32, got 'fp16'"),
    ("sft.py", ["--lr", "-1"], "--lr: must be > 0, got -1.0"),
    ("sft.py", ["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    ("sft.py", ["--warmup_ratio", "2"], "--warmup_ratio: must be <= 1, got 2.0"),
    ("sft.py", ["--resume", "yes"], "--resume: expected one of auto, got 'yes'"),
    ("sft.py", ["--max_step", "3"], "unrecognized arguments: --max_step 3"),  # no prefix matching of --max_steps
    ("sft.py", lambda i: ["--data", i["dir"] / "nope"], "nope/meta.json: file not found"),
    ("sft.py", lambda i: ["--model", i["models"]["missing"]], "no_such_model: folder not found"),
    ("sft.py", lambda i: ["--model", i["models"]["truncated"]], "model.safetensors: truncated"),
    ("sft.py", lambda i: ["--init_from", i["models"]["empty"]], "--init_from"),
    ("rl.py", ["--backend", "vlm"], "--backend: expected one of hf | vllm, got 'vlm'"),
    ("rl.py", ["--loss_agg", "tokenmean"], "--loss_agg: expected one of token_mean | seq_mean | constant"),
    ("rl.py", ["--dtype", "fp16"], "--dtype: expected one of float32 | bfloat16, got 'fp16'"),
    ("rl.py", ["--reward_weights", "chrge=1"], "--reward_weights: unknown component 'chrge'"),
    ("rl.py", ["--reward_weights", "charge=x"], "--reward_weights: 'charge=x': expected charge=WEIGHT"),
    ("rl.py", ["--group_size", "1"], "--group_size: must be >= 2, got 1"),
    ("rl.py", ["--temperature", "0"], "--temperature: must be > 0"),
    ("rl.py", lambda i: ["--charge_list", i["dir"] / "accu.txt"], "accu.txt: file not found"),
    ("rl.py", lambda i: ["--model", i["models"]["empty"]], "empty_model: config.json: file not found"),
    ("rl.py", lambda i: ["--model", i["models"]["no_tokenizer"]], "tokenizer does not round-trip text"),
    ("evaluate.py generate", ["--backend", "vlm"], "--backend: expected one of hf | vllm, got 'vlm'"),
    ("evaluate.py generate", ["--task", "3-3"], "unrecognized arguments: --task 3-3"),
    ("evaluate.py generate", ["--tasks", "9-9"], "unknown LawBench task(s) ['9-9']"),
    ("evaluate.py generate", ["--tasks", "3-3"], "zero_shot/3-3.json: file not found"),
    ("evaluate.py generate", ["--shots", "two"], "--shots: expected one of zero | one | both, got 'two'"),
    ("evaluate.py generate", ["--max_new_tokens", "0"], "--max_new_tokens: must be >= 1, got 0"),
    ("evaluate.py generate", lambda i: ["--rag", i["dir"] / "articles.jsonl"], "articles.jsonl: file not found"),
    ("evaluate.py judgment", ["--max_items", "0"], "--max_items: must be >= 1, got 0"),
    ("evaluate.py judgment", lambda i: ["--data", i["dir"] / "missing.jsonl"], "missing.jsonl: file not found"),
    ("evaluate.py judgment", lambda i: ["--model", i["models"]["truncated"]], "model.safetensors: truncated"),
    ("evaluate.py longdoc", ["--max_prompt_tokens", "4"], "--max_prompt_tokens: 4 tokens leave no room"),
    ("evaluate.py longdoc", ["--doc_field", "text"], "field 'text': missing"),
    ("prepare_data.py", ["--seq_len", "-5"], "--seq_len: must be >= 16, got -5"),
    ("prepare_data.py", ["--general_ratio", "20"], "--general_ratio: must be <= 1, got 20.0"),
    ("prepare_data.py", ["--overlong", "cut"], "--overlong: expected one of drop | truncate, got 'cut'"),
    ("prepare_data.py", ["--llm_url", "http://127.0.0.1:9/v1"], "--llm_model: needed with --llm_url"),
    ("prepare_data.py", lambda i: ["--manifest", i["dir"] / "manifest.json"], "manifest.json: file not found"),
    ("prepare_data.py", lambda i: ["--model", i["models"]["no_tokenizer"]], "tokenizer does not round-trip text"),
    ("prepare_data.py", lambda i: ["--lawbench_dir", i["dir"]], "no LawBench *.json files"),
    ("judge.py", ["--concurrency", "0"], "--concurrency: must be >= 1, got 0"),
    ("judge.py", ["--llm_url", "127.0.0.1:8000/v1"], "--llm_url: expected an http:// or https:// URL"),
    ("judge.py", [], "--llm_url: http://127.0.0.1:9/v1 does not answer"),  # nothing listens on port 9
    ("judge.py", lambda i: ["--model_a", i["models"]["good"]], "give exactly one of --answers_a / --model_a"),
    ("judge.py", ["--name_a", "x", "--name_b", "x"], "both systems are named 'x'"),
    ("judge.py", lambda i: ["--answers_b", i["dir"] / "nope.jsonl"], "nope.jsonl: file not found"),
]


@pytest.mark.parametrize("script,extra,message", BAD, ids=[f"{s}:{i}" for i, (s, _, _) in enumerate(BAD)])
def test_bad_input_is_one_line_exit_2_nothing_written(script, extra, message, inp, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default output path (runs/...) would land here
    before = files_under(inp["dir"])
    out = tmp_path / "out"
    argv = base_argv(script, inp, out, inp["models"]["good"]) + (extra(inp) if callable(extra) else extra)
    rc, stdout, err = cli(script.split()[0], argv, capsys)
    assert rc == utils.BAD_INPUT_EXIT, (rc, stdout, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"{script}: error: "), err
    assert message in err, err
    assert "Traceback" not in err + stdout
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, not even a config.json
    assert files_under(inp["dir"]) == before


def test_bad_rl_prompt_records_fail_at_load(inp, tmp_path, capsys):
    """truth.term_months "十九个月" used to load, then crash inside rl.term_score at the first parsed completion."""
    good = {"charges": ["盗窃"], "articles": [264], "term_months": 6}
    for truth, field, what in (({**good, "term_months": "十九个月"}, "truth.term_months", "whole number of months"),
                               ({**good, "term_months": -3}, "truth.term_months", "whole number of months"),
                               ({**good, "charges": [1]}, "truth.charges", "list of charge names"),
                               ({**good, "charges": "盗窃"}, "truth.charges", "expected list"),
                               ({**good, "articles": ["第264条"]}, "truth.articles", "list of article numbers"),
                               ({**good, "life": "否"}, "truth.life", "true or false")):
        p = tmp_path / "p.jsonl"
        utils.write_jsonl(p, [{"prompt": "事实一", "truth": good}, {"prompt": "事实二", "truth": truth}])
        rc, _, err = cli("rl.py", base_argv("rl.py", {**inp, "prompts": p}, tmp_path / "out", inp["models"]["good"]),
                         capsys)
        assert rc == 2 and err.strip().startswith(f"rl.py: error: {p}:2: field '{field}': ") and what in err, err
        assert not (tmp_path / "out").exists()


def test_evaluate_unknown_command(capsys, tmp_path):
    rc, _, err = cli("evaluate.py", ["scor", "pred"], capsys)
    assert rc == 2 and err.strip() == ("evaluate.py: error: unknown command 'scor' (choose from generate, score, "
                                       "judgment, longdoc; did you mean 'score'?; see --help)")
    rc, _, err = cli("evaluate.py", [], capsys)
    assert rc == 2 and err.startswith("evaluate.py: error: a command is required")
    rc, _, err = cli("evaluate.py", ["score", str(REPO / "no_such_predictions")], capsys)
    assert rc == 2 and err.strip() == f"evaluate.py score: error: {REPO / 'no_such_predictions'}: prediction " \
                                      "directory not found"
    rc, _, err = cli("evaluate.py", ["score", str(REPO / "tests"), "--lawbench_dir", str(REPO / "nowhere"), "--out",
                                     str(tmp_path / "s.csv")], capsys)
    assert rc == 2 and err.strip() == f"evaluate.py score: error: {REPO / 'nowhere'}: folder not found (--lawbench_dir)"


HELP = [("sft.py", []), ("rl.py", []), ("judge.py", []), ("prepare_data.py", []), ("evaluate.py", []),
        ("evaluate.py", ["generate"]), ("evaluate.py", ["score"]), ("evaluate.py", ["judgment"]),
        ("evaluate.py", ["longdoc"])]


@pytest.mark.parametrize("script,sub", HELP, ids=[" ".join([s, *c]) for s, c in HELP])
def test_help_works(script, sub, capsys):
    rc, out, err = cli(script, [*sub, "--help"], capsys)
    assert rc == 0 and out.startswith("usage:") and not err, err
    if script == "evaluate.py" and not sub:  # the subcommands, one line each
        assert all(f"\n  {c:<10}" in out for c in ("generate", "score", "judgment", "longdoc")), out
    elif script != "prepare_data.py" and sub != ["score"]:
        assert "--model MODEL" in out or "--questions QUESTIONS" in out
        assert "(required)" in out  # required flags are marked
    for entry in " ".join(out.split()).split(" --")[1:]:  # one option's usage + help
        assert entry.lower().count("default") <= 1, entry  # a default is never shown twice


def test_judge_help_percent_and_sft_help_marks_required(capsys):
    _, out, _ = cli("judge.py", ["--help"], capsys)
    assert "95% intervals" in " ".join(out.split())
    _, out, _ = cli("sft.py", ["--help"], capsys)
    text = " ".join(out.split())
    assert text.split("--model MODEL", 2)[2].split(" --")[0].endswith("(required)")
    for flag in ("--data DATA", "--out OUT"):  # not needed by --dry_run (the memory plan)
        entry = text.split(flag, 2)[2].removeprefix(", --output_dir OUT")  # the alias, on the same line
        assert entry.split(" --")[0].endswith("(required, except with"), flag  # ... --dry_run)
    for flag in ("--beta1", "--beta2", "--seed"):
        help_text = text.split(f"{flag} {flag[2:].upper()}", 2)[2].split(" --")[0].strip()
        assert help_text.startswith(("AdamW", "pack order")), (flag, help_text)


class _DownJudge:
    """Answers GET /models (so the endpoint check passes) and fails every chat request with HTTP 500."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, b'{"object": "list", "data": [{"id": "m"}]}')

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self._send(500, b'{"error": "down"}')

            def _send(self, code, body):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_judge_run_where_every_judgment_failed_is_an_error(inp, tmp_path, capsys):
    down = _DownJudge()
    try:
        argv = base_argv("judge.py", inp, tmp_path / "out", None)
        argv[argv.index("--llm_url") + 1] = down.url
        rc, _, err = cli("judge.py", argv + ["--max_retries", "0", "--bootstrap", "0"], capsys)
    finally:
        down.server.shutdown()
    assert rc == 1 and err.strip().splitlines()[-1].startswith("judge.py: error: all 2 judgments failed")
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize("argv,message", [
    (["sft.py", "--model", "m", "--data", "d", "--out", "o", "--export_dtype", "fp16"], "--export_dtype"),
    (["rl.py", "--model", "m", "--prompts", "p", "--out", "o", "--backend", "vlm"], "--backend"),
    (["evaluate.py", "scor"], "unknown command 'scor'"),
    (["judge.py", "--questions", "q", "--judge_base_url", "u", "--judge_model", "m", "--out", "o", "--max_items", "0"],
     "--max_items"),  # the older spellings of --llm_url / --llm_model are still accepted
    (["prepare_data.py", "--out", "o", "--seq_len", "-5"], "--seq_len"),
    (["prepare_data.py", "--seq_len", "16"], "required: --out"),
], ids=lambda x: x[0] if isinstance(x, list) else "")
def test_real_entry_points(argv, message, tmp_path):
    p = subprocess.run([sys.executable, str(REPO / argv[0]), *argv[1:]], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith(f"{argv[0]}: error: ") and message in p.stderr and not list(tmp_path.iterdir())
