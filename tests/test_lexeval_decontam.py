"""prepare_data.py decontaminates against LexEval too (--lexeval_dir, LawBench's windows), and says which benchmark
each dropped record overlapped (data_report.json decontamination_benchmarks, OUT/contaminated.jsonl)."""
import json

import prepare_data as P
import utils
from conftest import REPO

SAMPLE = REPO / "data" / "sample"


def _jsonl(path, recs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")


def _lexeval(d, mc_inputs, references):
    """A LexEval folder: 3_3 (multiple choice) with these inputs, 5_4 (generation) with these references."""
    _jsonl(d / "data" / "3_3.json", [{"instruction": "选择", "input": x, "answer": "A"} for x in mc_inputs])
    _jsonl(d / "data" / "5_4.json", [{"instruction": "回答", "input": f"问题{i}", "answer": r}
                                     for i, r in enumerate(references)])
    return d


def test_index_holds_lexeval_inputs_and_generation_references(tmp_path):
    fact = ("2020年5月1日，被告人乙在某县某村村民丁家中，趁无人之机窃取现金三千元及金项链一条，"
            "价值共计人民币一万一千元，次日被公安机关抓获，赃物已追回并发还被害人。")
    reference = "根据民法典规定，借款合同的利息不得预先在本金中扣除，预先扣除的应当按照实际借款数额返还借款并计算利息。"
    lex = _lexeval(tmp_path / "lex", ["事实：" + fact + "\nA: 盗窃罪\nB: 抢劫罪"], [reference])
    d = P.Decontaminator(SAMPLE / "lawbench", lexeval_dir=lex)
    (hit,) = d.hits("训练样本：" + fact)
    assert d.items[hit] == ("3_3", 0) and d.benchmarks[hit] == "LexEval"
    (hit,) = d.hits("答：" + reference)  # a generation task's reference is indexed like LawBench 1-1's answers
    assert d.items[hit] == ("5_4", 0) and d.benchmarks[hit] == "LexEval"
    assert d.hits("问题0") == set() and d.benchmarks.count("LexEval") == 2
    assert d.benchmarks.count("LawBench") == len(P.Decontaminator(SAMPLE / "lawbench").items)


def test_sample_build_names_the_benchmark_of_each_dropped_record(tiny_model, tmp_path, capsys):
    """Plant two sample judgments in a LexEval folder: one LawBench already flags (it then overlaps both), one it
    does not. LawBench's counts are unchanged; each dropped record is listed with the benchmarks it overlaps."""
    lawbench = P.Decontaminator(SAMPLE / "lawbench")
    facts = [rec["fact"] for _, rec in utils.iter_records(SAMPLE / "judgments.jsonl")]
    both = next(f for f in facts if lawbench.hits(utils.judgment_prompt(f)))
    only = next(f for f in facts if not lawbench.hits(utils.judgment_prompt(f)))
    lex = _lexeval(tmp_path / "lex", [both, only], ["某参考答案"])
    cfg = P.Config(manifest=str(SAMPLE / "manifest.json"), model=str(tiny_model), out=str(tmp_path / "out"),
                   lawbench_dir=str(SAMPLE / "lawbench"), lexeval_dir=str(lex), seq_len=2048, workers=1)
    report = P.run(cfg)
    printed = capsys.readouterr().out
    assert report["decontamination"]["judgments"] == {"3-1": 3, "LexEval 3_3": 2}  # LawBench's 3 as without LexEval
    assert report["decontamination_benchmarks"]["judgments"] == {"LawBench": 3, "LexEval": 2}
    assert report["sources"]["judgments"]["dropped"]["contaminated"] == 4
    assert report["decontamination_check"]["lexeval_items"] == 3
    rows = [r for _, r in utils.iter_records(tmp_path / "out" / "contaminated.jsonl")]
    judg = [r for r in rows if r["source"] == "judgments"]
    assert sorted(tuple(r["benchmarks"]) for r in judg) == [("LawBench",), ("LawBench",), ("LawBench", "LexEval"),
                                                            ("LexEval",)]
    assert any("LexEval 3_3 #1" in r["items"] for r in judg) and all(r["line"] > 0 for r in judg)
    assert "+ 3 LexEval items" in printed and "LexEval 3_3: 2 LexEval items" in printed

