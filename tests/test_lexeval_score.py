"""LexEval scoring (`evaluate.py score --benchmark lexeval`, lexeval.py) against the official scorer.

The official evaluation/evaluate.py from ../shared/lexeval/code runs IN these tests, as its README runs it (a
subprocess in code/evaluation: the recursion cut of rouge 1.0.1 depends on the frames below it), on the published
outputs of both models in both settings, and on crafted items on both sides of the cut. Without ../shared/lexeval
(or the official scorer's packages) those tests skip; the parser, Rouge-L and table tests run everywhere.
"""
import csv
import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest

import evaluate
import lexeval as L
from conftest import SHARED, exit_status

LEXEVAL = SHARED / "lexeval"
OFFICIAL = LEXEVAL / "code" / "evaluation"
MODELS = ("Qwen_7B_chat", "gpt4")


def _need_official():
    if not (OFFICIAL / "evaluate.py").is_file() or not (LEXEVAL / "model_output").is_dir():
        pytest.skip("../shared/lexeval is not present")
    missing = [m for m in ("jsonlines", "rouge", "bert_score", "pandas", "jieba", "transformers", "torch")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the official scorer needs {missing}")


def load_official(name: str, path):
    """Import a file of the official code in-process under its own name (its folder on sys.path for its imports),
    writing no __pycache__ into ../shared."""
    sys.path.insert(0, str(path.parent))
    flag, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.dont_write_bytecode = flag
        sys.path.remove(str(path.parent))


def _official_csv(out_dir) -> dict:
    with open(out_dir / "evaluation_result.csv", encoding="utf-8") as f:
        return {(r["model"], r["task"]): float(r["score"]) for r in csv.DictReader(f)}


def _crafted(calls: int, up: bool) -> dict:
    """One 5_x item whose rouge traceback takes exactly `calls` _recon calls: answer 苹果 and output 苹果 + 法院 x k
    (jieba: one token each), so the traceback walks k steps left (or, `up`: the two swapped, k steps up) then one
    diagonal, and ends. Rouge-L F = 2/3 when it does not hit the limit."""
    long_text, short = "苹果" + "法院" * (calls - 2), "苹果"
    out, ans = (short, long_text) if up else (long_text, short)
    return {"input": "x", "output": out, "answer": ans}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Run the official scorer twice at once (two processes, as its README: cd code/evaluation && python evaluate.py
    --input_dir ... --output_dir ...): A = zero-shot outputs of both models + crafted items at the cut, B = few-shot.
    -> {"zero": {(model, task): score}, "few": ..., "cut": ...}."""
    _need_official()
    tmp = tmp_path_factory.mktemp("lexeval_official")
    inputs = {"A": tmp / "in_A", "B": tmp / "in_B"}
    for setting, key in (("zero_shot", "A"), ("few_shot", "B")):
        inputs[key].mkdir()
        for m in MODELS:
            os.symlink(LEXEVAL / "model_output" / setting / m, inputs[key] / f"{setting}__{m}")
    for calls in (L.ROUGE_MAX_CALLS, L.ROUGE_MAX_CALLS + 1):
        for up in (False, True):
            d = inputs["A"] / f"cut{calls}{'up' if up else 'left'}"
            d.mkdir()
            (d / f"{d.name}_5_3.jsonl").write_text(json.dumps(_crafted(calls, up), ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
    procs = {k: subprocess.Popen([sys.executable, "evaluate.py", "--input_dir", str(v), "--output_dir",
                                  str(tmp / f"out_{k}"), "--metrics_choice", "Accuracy", "--metrics_gen", "Rouge_L"],
                                 cwd=OFFICIAL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})  # nothing written in ../shared
             for k, v in inputs.items()}
    for k, p in procs.items():
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-2000:]
    a, b = _official_csv(tmp / "out_A"), _official_csv(tmp / "out_B")
    split = lambda res, prefix: {(m.split("__")[1], t): s for (m, t), s in res.items() if m.startswith(prefix)}
    return {"zero": split(a, "zero_shot__"), "few": split(b, "few_shot__"),
            "cut": {m: s for (m, t), s in a.items() if m.startswith("cut")}}


@pytest.mark.parametrize("setting", ["zero", "few"])
def test_scores_equal_official_on_published_outputs(official, setting, tmp_path, capsys):
    """Every task file of both models: our score == the official's, to the last bit; one 5_4 item per model is
    zeroed by rouge's recursion limit in each setting (reported in the metrics and printed)."""
    out = tmp_path / "scores.csv"
    rc = exit_status(evaluate.main, ["score", "--benchmark", "lexeval", LEXEVAL / "model_output" / f"{setting}_shot",
                                     "--out", out, "--workers", "2"])
    printed = capsys.readouterr().out
    assert rc == 0
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["task", "model_name", "score"]
    ours = {(r["model_name"], r["task"]): float(r["score"]) for r in rows}
    assert len(ours) == 40 and ours == official[setting]
    summary = json.loads((tmp_path / "scores_metrics.jsonl").read_text().splitlines()[-1])
    assert summary["zeroed_by_rouge_recursion"] == {"Qwen_7B_chat": 1, "gpt4": 1}
    assert "recursion limit (as the official): Qwen_7B_chat: 1, gpt4: 1" in printed
    table = (tmp_path / "scores_table.md").read_text(encoding="utf-8")
    assert table in printed and "| Logic Inference |" in table and "20/23" in table


def test_recursion_cut_matches_official(official):
    """The official (run as its README says) scores an item whose traceback takes ROUGE_MAX_CALLS calls and zeroes
    one with a call more, whichever way the traceback walks; rouge_l_101 cuts at the same place."""
    cut, n = official["cut"], L.ROUGE_MAX_CALLS
    for way in ("left", "up"):
        assert cut[f"cut{n}{way}"] == pytest.approx(2 / 3, abs=1e-6) and cut[f"cut{n + 1}{way}"] == 0.0
    for calls, up in ((n, False), (n, True), (n + 1, False), (n + 1, True)):
        it = _crafted(calls, up)
        f = L.rouge_l_101(L.rouge_tokens(it["output"]), L.rouge_tokens(it["answer"]))
        assert (f is None) == (calls > n)
        assert L.score_items("5_3", [it])["score"] == cut[f"cut{calls}{'up' if up else 'left'}"]


def test_f1_equals_official(tmp_path):
    """--metric_choice F1: the official Evaluator (imported from ../shared) on every multiple-choice file of both
    models, few-shot."""
    _need_official()
    off = load_official("lexeval_official_evaluate", OFFICIAL / "evaluate.py")
    jobs, _ = L.find_output_files(LEXEVAL / "model_output" / "few_shot")
    mc = [(m, t, p) for m, t, p in jobs if not L.is_generation(t)]
    assert len(mc) == 36
    for m, t, p in mc:
        want = off.Evaluator(p, "multiple_choice", "F1").eval()
        assert L.score_items(t, L.read_outputs(p), "F1")["score"] == want, (m, t)


# ---- parsers: process.find_valid_substrings and normalize_zh_answer, edge cases -------------------------------------

CHOICE_CASES = [  # output -> letters the official reads (answer compared as a string)
    ("", ""),                                       # empty output: no letters, wrong
    ("我不知道", ""),                                 # no option letter: wrong
    ("A", "A"), ("ABCD", "ABCD"), ("B, C", "BC"), ("A、B和D", "ABD"), ("A;C.", "AC"),
    ("AA", ""),                                     # a repeated letter voids its run
    ("AAB", ""), ("A A", "A"),                      # 'AAB' is one run with a repeat; 'A A' two runs, deduplicated
    ("BA", "BA"),                                   # order as written, not sorted: wrong against 'AB'
    ("B。解析：A项错误，C项错误", "B"),                  # explanations after 解析 / 分析 are cut off
    ("答案是C。分析：D不对", "C"),
    ("C，因为选项D的说法与A相反", "CDA"),               # ... but not other explanations: every letter counts
    ("Ａ", ""), ("答案：ＢＣ", ""),                     # full-width letters are not read
    ("a", ""), ("ABCDEF", "ABCDE"), ("ABCDEA", "ABCDE"),  # lower case ignored; a run is at most 5 letters
    ("正确答案：D", "D"), ("D. 犯罪行为已经实行完毕的情况下", "D"),
]


@pytest.mark.parametrize("output,letters", CHOICE_CASES)
def test_find_valid_substrings_edge_cases(output, letters):
    assert L.find_valid_substrings(output) == letters
    if (OFFICIAL / "process.py").is_file() and importlib.util.find_spec("jsonlines"):
        process = load_official("lexeval_official_process", OFFICIAL / "process.py")
        assert process.find_valid_substrings(output) == letters


def test_normalize_and_empty_outputs():
    # the official punctuation list has 》 but not 《: kept, as the official keeps it
    assert L.normalize_zh_answer(" 《刑法》第 264 条。\nThe Court, 1.5 ") == "《刑法第264条thecourt15"
    mc = [{"output": o, "answer": a} for o, a in (("", "A"), ("A", "A"), ("AA", "A"), ("A", None))]
    assert L.score_items("1_1", mc)["score"] == 0.25  # empty, repeated and null-answer items are wrong
    assert L.score_items("1_1", mc, "F1")["score"] == 0.25
    gen = [{"output": o, "answer": "法院判决"} for o in ("", "。。！", "   ", "法院判决")]
    res = L.score_items("5_3", gen)  # nothing left after normalisation: rouge raises, the official scores 0
    assert res["score"] == 2.0 * (1.0 / (2.0 + 1e-8)) / 4 and res["zeroed"] == 0


def test_rouge_l_equals_rouge_101_package():
    """rouge_l_101 == rouge 1.0.1 Rouge().get_scores(hyp, ref, avg=True)['rouge-l']['f'] on random token lists
    (short: far below the recursion limit), exactly; and the bit-parallel LCS table equals rouge's dict table."""
    rouge = pytest.importorskip("rouge")
    from rouge import rouge_score
    rng = random.Random(0)
    for _ in range(400):
        x = [str(rng.randint(0, rng.randint(1, 6))) for _ in range(rng.randint(1, 25))]
        y = [str(rng.randint(0, 6)) for _ in range(rng.randint(1, 25))]
        want = rouge.Rouge().get_scores([" ".join(y)], [" ".join(x)], avg=True)["rouge-l"]["f"]
        assert L.rouge_l_101(y, x) == want
        assert L.recon_lcs(x, y, None) == list(rouge_score._recon_lcs(x, y, exclusive=False)._ngrams)
        cols, table = L.lcs_columns(x, y), rouge_score._lcs(x, y)
        assert all(i - (cols[j] & ((1 << i) - 1)).bit_count() == table[i, j]
                   for i in range(len(x) + 1) for j in range(len(y) + 1))
    assert L.rouge_l_101([], ["a"]) == 0.0 and L.rouge_l_101(["a"], []) == 0.0
    assert L.recon_lcs(["a"] * 5, ["b"] * 5, max_calls=5) is None  # 6 calls: left x5 then j == 0
    assert L.recon_lcs(["a"] * 5, ["b"] * 5, max_calls=6) == []


# ---- table, files, command line -------------------------------------------------------------------------------------

def test_ability_table_and_task_names():
    assert len(L.LEXEVAL_TASKS) == 23 and [L.ability(t) for t in ("1_3", "3_6", "4_2", "5_4", "6_1")] == [
        "Memorization", "Logic Inference", "Discrimination", "Generation", "Ethics"]
    assert L.task_of("Qwen_7B_chat_5_4.jsonl") == "5_4" and L.output_name("m_x", "2_1") == "m_x_2_1.jsonl"
    rows = [{"task": t, "model_name": "m", "score": s} for t, s in (("1_1", 0.2), ("1_2", 0.4), ("5_3", 0.5))]
    (row,), notes = L.ability_table(rows)
    assert row["Memorization"] == pytest.approx(30) and row["Generation"] == 50 and row["Ethics"] is None
    assert row["Overall"] == pytest.approx(100 * 1.1 / 3) and row["tasks"] == "3/23"
    assert "no output for 1_3" in notes[0]
    assert "| m | 30.00 |" in L.table_markdown([row])


def _write_outputs(path, items):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items), encoding="utf-8")


def test_score_cli(tmp_path, capsys):
    pred = tmp_path / "zero_shot"
    _write_outputs(pred / "m" / "m_1_1.jsonl", [{"input": "q", "output": "A", "answer": "A"},
                                                {"input": "q", "output": "B。解析：A", "answer": "A"}])
    _write_outputs(pred / "m" / "m_5_3.jsonl", [{"input": "q", "output": "法院", "answer": "法院"}])
    (pred / "m" / "m_9_9.jsonl").write_text("", encoding="utf-8")
    rc = exit_status(evaluate.main, ["score", "--benchmark", "lexeval", pred, "--out", tmp_path / "s.csv"])
    out = capsys.readouterr().out
    assert rc == 0 and "m_9_9.jsonl: not a LexEval" in out
    assert (tmp_path / "s.csv").read_text().splitlines() == ["task,model_name,score", "1_1,m,0.5",
                                                             f"5_3,m,{2.0 * (1.0 / (2.0 + 1e-8))}"]
    (pred / "m" / "m_2_1.jsonl").write_text('{"output": 3, "answer": "A"}\n', encoding="utf-8")
    _write_outputs(pred / "m" / "m_5_4.jsonl", [{"input": "q", "output": "法院", "answer": None}])
    rc = exit_status(evaluate.main, ["score", "--benchmark", "lexeval", pred, "--out", tmp_path / "t.csv"])
    err = capsys.readouterr().err
    assert rc == 1 and "m_2_1.jsonl:1: field 'output': expected a string, got int" in err
    assert "m_5_4.jsonl: 5_4: field 'answer': null answer in a generation task" in err
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 3  # the good files are still scored
    for argv, msg in ((["--metric_gen", "Bertscore"], "Bertscore needs the model's weights: pass --bert_model"),
                      (["--metric_gen", "Bartscore", "--bert_model", tmp_path / "none"], "folder not found"),
                      (["--benchmark", "lawbench", "--metric_choice", "F1"], "are LexEval's")):
        argv = ["score", pred, "--out", tmp_path / "u.csv", *(["--benchmark", "lexeval"] if "lawbench" not in argv
                                                              else []), *argv]
        assert exit_status(evaluate.main, argv) == 2 and msg in capsys.readouterr().err


# ---- BERTScore / BARTScore: only with model weights given (--bert_model); tiny random models built here -------------

def _tiny_bert_folder(path, bart: bool = False):
    """A random 8-layer BERT (or a BART) with a character vocabulary, saved as a Hugging Face folder."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, BertConfig, BertModel, BertTokenizer
    path.mkdir(parents=True)
    chars = sorted(set("法院判决被告人有期徒刑合同当事人应当承担违约责任ABCD"))
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]) + "\n",
                                    encoding="utf-8")
    BertTokenizer(str(path / "vocab.txt"), model_max_length=64).save_pretrained(path)
    torch.manual_seed(0)
    n = len(chars) + 5
    model = BartForConditionalGeneration(BartConfig(vocab_size=n, d_model=16, encoder_layers=1, decoder_layers=1,
                                                    encoder_attention_heads=2, decoder_attention_heads=2,
                                                    encoder_ffn_dim=32, decoder_ffn_dim=32, pad_token_id=0,
                                                    max_position_embeddings=64)) if bart else \
        BertModel(BertConfig(vocab_size=n, hidden_size=16, num_hidden_layers=8, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=64))
    model.save_pretrained(path)
    return path


def test_bertscore_and_bartscore_with_given_weights(tmp_path, capsys):
    """--metric_gen Bertscore runs bert_score as the official eval_bertscore does (8 layers, lang zh, the given
    weights); Bartscore equals the official BARTScorer (given the imports process.py lacks: as published it raises
    NameError, and it would put the model on cuda:0)."""
    pytest.importorskip("bert_score")
    import torch
    from transformers import BartForConditionalGeneration, BertTokenizer
    pred = tmp_path / "zero_shot"
    items = [{"input": "q", "output": o, "answer": a} for o, a in (("法院判决被告人有期徒刑", "判决被告人有期徒刑"),
                                                                   ("当事人应当承担责任", "合同当事人应当承担违约责任"))]
    _write_outputs(pred / "m" / "m_5_3.jsonl", items)
    _write_outputs(pred / "m" / "m_1_1.jsonl", [{"input": "q", "output": "A", "answer": "A"}])
    bert, bart = _tiny_bert_folder(tmp_path / "bert"), _tiny_bert_folder(tmp_path / "bart", bart=True)
    out = tmp_path / "s.csv"
    rc = exit_status(evaluate.main, ["score", "--benchmark", "lexeval", pred, "--out", out, "--metric_gen", "Bertscore",
                                     "--bert_model", bert, "--workers", "1"])
    assert rc == 0, capsys.readouterr().err
    rows = {r["task"]: float(r["score"]) for r in csv.DictReader(open(out, encoding="utf-8"))}
    import bert_score
    _, _, f1 = bert_score.score([it["output"] for it in items], [it["answer"] for it in items], lang="zh",
                                model_type=str(bert), num_layers=8, device="cpu", batch_size=10)
    assert rows["1_1"] == 1.0 and rows["5_3"] == (sum(f1) / len(f1)).item()  # eval_bertscore's call
    if (OFFICIAL / "process.py").is_file() and importlib.util.find_spec("jsonlines"):
        process = load_official("lexeval_official_process", OFFICIAL / "process.py")
        process.BertTokenizer, process.BartForConditionalGeneration = BertTokenizer, BartForConditionalGeneration
        process.torch, process.nn = torch, torch.nn
        scorer = process.BARTScorer(device="cpu", checkpoint=str(bart))
        want = scorer.score([it["output"] for it in items], [it["answer"] for it in items], batch_size=10)
        assert L.score_neural(items, "Bartscore", str(bart)) == pytest.approx(sum(want) / len(want), abs=1e-6)
