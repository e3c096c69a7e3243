"""`evaluate.py generate --benchmark lexeval`: prompts equal to the official generation code's, LexEval's layout,
resume, the prompt budget, data parallelism, and a generate -> score round trip on the tiny model.

Tests on ../shared/lexeval skip without it; the synthetic ones (a two-task LexEval folder built here) run everywhere.
"""
import importlib.util
import json
import sys
import types

import pytest

import evaluate
import lexeval as L
import utils
from conftest import REPO, SHARED, exit_status

LEXEVAL = SHARED / "lexeval"


def _run(argv, capsys):
    rc = exit_status(evaluate.main, argv)
    return rc, capsys.readouterr()


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _jsonl(path, recs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")


@pytest.fixture
def small_lexeval(tmp_path):
    """A LexEval folder: 1_1 (multiple choice, 3 items, examples with answers) and 5_3 (translation, 3 items,
    examples without answers, as LexEval publishes them)."""
    d = tmp_path / "lexeval"
    mc = "请阅读以下选择题给出正确选项，不要解释原因。请只给出答案的序号。\n"
    _jsonl(d / "data" / "1_1.json", [{"instruction": mc, "input": f"问题{i}?\nA: 甲\nB: 乙", "answer": "AB"[i % 2]}
                                     for i in range(3)])
    _jsonl(d / "data" / "5_3.json", [{"instruction": "请完成以下法律场景的翻译任务，直接给出翻译结果。\n",
                                      "input": f"请将以下法条翻译成英文：“第{i}条" + "法院依法审理案件。" * 30 + "”",
                                      "answer": f"Article {i}"} for i in range(3)])
    _jsonl(d / "examples" / "1_1_few_shot.json", [{"instruction": mc, "input": f"例{i}\nA: 甲\nB: 乙", "answer": "A"}
                                                  for i in range(3)])
    _jsonl(d / "examples" / "5_3_few_shot.json", [{"instruction": "x", "input": f"例{i}"} for i in range(3)])
    return d


def _official_generator(lexeval_dir):
    """The official code/generation/model_gen.py (vllm stubbed: only its prompt code is used here)."""
    if not (LEXEVAL / "code" / "generation" / "model_gen.py").is_file():
        pytest.skip("../shared/lexeval is not present")
    from test_lexeval_score import load_official
    real = sys.modules.get("vllm")
    sys.modules["vllm"] = types.SimpleNamespace(LLM=None, SamplingParams=None)
    try:
        return load_official("lexeval_official_model_gen", LEXEVAL / "code" / "generation" / "model_gen.py") \
            .model_generator
    finally:
        if real is None:
            del sys.modules["vllm"]
        else:
            sys.modules["vllm"] = real


def test_prompts_equal_official_generation_code(tmp_path):
    """Every item of every task in ../shared/lexeval, zero- and few-shot: instruction [+ few-shot block] + input +
    label, exactly model_generator.process_prompt's (Qwen_gen: prompt = instruction + input_text). The official
    needs an 'answer' in each example (the published ones have none: KeyError) and one JSON object per line (5_3.json
    ends with a blank line: JSONDecodeError), so it reads copies with answers added and blank lines dropped."""
    gen_cls = _official_generator(LEXEVAL)
    tasks, missing = L.available_tasks(LEXEVAL, list(L.LEXEVAL_TASKS))
    assert missing == ["4_1", "5_1", "5_2"] and len(tasks) == 20
    for task in tasks:
        items = L.load_task(LEXEVAL, task)
        data = tmp_path / f"{task}.json"
        _jsonl(data, items)
        examples = [{**ex, "answer": f"答{k}"} for k, ex in enumerate(L.load_examples(LEXEVAL, task))]
        _jsonl(tmp_path / f"{task}_few_shot.json", examples)
        for few in (False, True):
            gen = gen_cls(str(data), few, "0", False, "m", str(tmp_path / f"{task}_few_shot.json") if few else None)
            instructions, inputs, answers = gen.process_prompt(task)
            ours = [L.prompt_parts(it, task, examples if few else None) for it in items]
            assert [h + i for h, i in ours] == [a + b for a, b in zip(instructions, inputs)], (task, few)
            assert [i for _, i in ours] == inputs and answers == [it["answer"] for it in items]
    head, _ = L.prompt_parts(items[0], "6_3", [{"input": "q1"}])  # no answer: rendered empty
    assert head.endswith("以下是三个例子:\n问题: q1\n答案: \n\n请你回答:\n问题:")


def test_generate_layout_resume_budget(tiny_model, small_lexeval, tmp_path, monkeypatch, capsys):
    """LexEval's layout and lines; a run interrupted mid-task resumes without regenerating finished items; a prompt
    over the budget has the middle of its input cut (the stored input is the item's), or is refused."""
    sent, fail_after = [], [None]

    def fake_generate(model, prompts, **kw):
        if fail_after[0] is not None and len(sent) >= fail_after[0]:
            raise KeyboardInterrupt
        sent.extend(prompts)
        return [f"A{len(sent)}"] * len(prompts)
    monkeypatch.setattr(utils, "generate", fake_generate)
    out = tmp_path / "out"
    common = ["generate", "--benchmark", "lexeval", "--model", tiny_model, "--lexeval_dir", small_lexeval,
              "--model_name", "tiny"]
    base = [*common, "--out", out, "--shots", "both", "--save_every", "1"]
    fail_after[0] = 4  # 1_1 zero-shot done (3 items), 5_3 zero-shot interrupted after one item
    with pytest.raises(KeyboardInterrupt):
        evaluate.main([str(a) for a in base])
    partial = out / "zero_shot" / "tiny" / "tiny_5_3.jsonl.partial"
    assert partial.is_file() and len(partial.read_text().splitlines()) == 1
    fail_after[0] = None
    rc, cap = _run(base, capsys)
    assert rc == 0, cap.err
    assert len(sent) == 12 and not partial.exists()  # 4 + the 8 left, nothing twice
    assert "few-shot examples without an 'answer'" in cap.out and "5_3: 3" in cap.out
    rows = {s: sorted(p.name for p in (out / s / "tiny").iterdir()) for s in ("zero_shot", "few_shot")}
    assert rows["few_shot"] == ["tiny_1_1.jsonl", "tiny_1_1.jsonl.model", "tiny_5_3.jsonl", "tiny_5_3.jsonl.model"]
    items = L.load_task(small_lexeval, "1_1")
    lines = _lines(out / "few_shot" / "tiny" / "tiny_1_1.jsonl")
    assert [list(x) for x in lines] == [["input", "output", "answer"]] * 3
    assert [x["input"] for x in lines] == [it["input"] + "\n答案:" for it in items]
    assert [x["answer"] for x in lines] == ["A", "B", "A"]
    examples = L.load_examples(small_lexeval, "1_1")
    assert sent[6] == items[0]["instruction"] + "\n" + L.few_shot_block("1_1", examples) + lines[0]["input"]
    metrics = _lines(out / "metrics.jsonl")[-1]
    assert metrics["generated"] == 8 and metrics["benchmark"] == "lexeval" and metrics["cut"] == 0
    # budget: the 5_3 inputs are cut in the middle to fit, the stored input stays the item's
    budget = min(evaluate.prompt_lengths(tiny_model, sent[3:6])) - 20  # below every zero-shot 5_3 prompt
    rc, cap = _run([*common, "--out", out / "b", "--max_prompt_tokens", budget], capsys)
    assert rc == 0, cap.err
    cut_prompts = sent[15:]
    assert all(utils.CUT_NOTE.split("{")[0] in p for p in cut_prompts) and len(cut_prompts) == 3
    assert max(evaluate.prompt_lengths(tiny_model, cut_prompts)) <= budget
    assert _lines(out / "b" / "metrics.jsonl")[-1]["cut"] == 3
    assert [x["input"] for x in _lines(out / "b" / "zero_shot" / "tiny" / "tiny_5_3.jsonl")] == [
        it["input"] + "\n翻译结果:" for it in L.load_task(small_lexeval, "5_3")]
    rc, cap = _run([*common, "--out", out / "c", "--max_prompt_tokens", 30, "--tasks", "5_3"], capsys)
    assert rc == 0 and len(_lines(out / "c" / "refused.jsonl")) == 3
    assert [x["output"] for x in _lines(out / "c" / "zero_shot" / "tiny" / "tiny_5_3.jsonl")] == ["", "", ""]


def test_generate_bad_flags(tiny_model, small_lexeval, tmp_path, capsys):
    base = ["generate", "--model", tiny_model, "--out", tmp_path / "o"]
    for argv, msg in (([], "--lawbench_dir: required with --benchmark lawbench"),
                      (["--benchmark", "lexeval"], "LexEval folder not found"),
                      (["--benchmark", "lexeval", "--lexeval_dir", small_lexeval, "--shots", "one"],
                       "zero | few | both, got 'one'"),
                      (["--benchmark", "lexeval", "--lexeval_dir", small_lexeval, "--tasks", "4_1"],
                       "4_1.json: file not found"),
                      (["--benchmark", "lexeval", "--lexeval_dir", small_lexeval, "--tasks", "7_1"],
                       "unknown LexEval task"),
                      (["--benchmark", "lexeval", "--lexeval_dir", small_lexeval, "--code"], "LawBench only"),
                      (["--lawbench_dir", REPO / "data" / "sample" / "lawbench", "--shots", "few"], "few is LexEval")):
        rc, cap = _run([*base, *argv], capsys)
        assert rc == 2 and msg in cap.err, (argv, cap.err)
    (small_lexeval / "data" / "1_1.json").write_text('{"instruction": "i", "input": 3, "answer": "A"}\n')
    rc, cap = _run([*base, "--benchmark", "lexeval", "--lexeval_dir", small_lexeval], capsys)
    assert rc == 2 and "1_1.json:1: field 'input': expected a string, got int" in cap.err


def test_generate_score_round_trip_tiny_model(tiny_model, tmp_path, capsys):
    """The tiny model (HF backend) on one item of every task in ../shared/lexeval, both settings, 2 new tokens;
    `score --benchmark lexeval` reads what `generate` wrote, and so does the official Evaluator (multiple choice)."""
    if not (LEXEVAL / "data").is_dir():
        pytest.skip("../shared/lexeval is not present")
    out = tmp_path / "gen"
    rc, cap = _run(["generate", "--benchmark", "lexeval", "--model", tiny_model, "--lexeval_dir", LEXEVAL, "--out",
                    out, "--model_name", "tiny", "--shots", "both", "--max_items", "1", "--max_new_tokens", "2"], capsys)
    assert rc == 0, cap.err
    assert "no data/<task>.json" in cap.out and "4_1, 5_1, 5_2" in cap.out
    official = None
    if importlib.util.find_spec("jsonlines") and importlib.util.find_spec("bert_score"):
        from test_lexeval_score import load_official
        official = load_official("lexeval_official_evaluate", LEXEVAL / "code" / "evaluation" / "evaluate.py")
    for setting in ("zero_shot", "few_shot"):
        files = sorted((out / setting / "tiny").glob("*.jsonl"))
        assert len(files) == 20
        rc, cap = _run(["score", "--benchmark", "lexeval", out / setting, "--out", tmp_path / setting / "s.csv"],
                       capsys)
        assert rc == 0 and "| tiny |" in cap.out and "20/23" in cap.out
        ours = {r["task"]: float(r["score"]) for _, r in utils.iter_records(tmp_path / setting / "s.csv")}
        assert sorted(ours) == sorted(L.task_of(f.name) for f in files)
        for f in files:
            (line,) = _lines(f)
            task = L.task_of(f.name)
            item = L.load_task(LEXEVAL, task, 1)[0]
            assert line["input"] == L.prompt_parts(item, task)[1] and line["answer"] == item["answer"]
            if official is not None and not L.is_generation(task):
                assert official.Evaluator(str(f), "multiple_choice", "Accuracy").eval() == ours[task]


def test_generate_data_parallel_torchrun(tiny_model, small_lexeval, tmp_path, capsys):
    """2 torchrun ranks (HF, gloo) write byte-identical LexEval files to a plain run, each rank its share."""
    from test_evaluate_gen import _torchrun_generate
    common = ["--benchmark", "lexeval", "--model", str(tiny_model), "--lexeval_dir", str(small_lexeval),
              "--max_new_tokens", "3", "--model_name", "tiny", "--tasks", "1_1,5_3"]
    rc, cap = _run(["generate", *common, "--out", tmp_path / "one"], capsys)
    assert rc == 0, cap.err
    log = _torchrun_generate([*common, "--out", str(tmp_path / "dp")])
    assert "rank 0/2: generated 4 items" in log and "rank 1/2: generated 2 items" in log
    for task in ("1_1", "5_3"):
        name = f"zero_shot/tiny/tiny_{task}.jsonl"
        assert (tmp_path / "dp" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_shot_dirs_name_each_benchmarks_folders():
    """One answer to "which shots, in which folders" for generation, its checks and its closing message (LexEval's
    `--shots few` used to end in a KeyError after generating everything: the message looked it up in LawBench's)."""
    import types
    cfg = lambda benchmark, shots: types.SimpleNamespace(benchmark=benchmark, shots=shots)  # noqa: E731
    assert evaluate.shot_dirs(cfg("lawbench", "both")) == {"zero": "zero_shot", "one": "one_shot"}
    assert evaluate.shot_dirs(cfg("lawbench", "one")) == {"one": "one_shot"}
    assert evaluate.shot_dirs(cfg("lexeval", "both")) == {"zero": "zero_shot", "few": "few_shot"}
    assert evaluate.shot_dirs(cfg("lexeval", "few")) == {"few": "few_shot"}
