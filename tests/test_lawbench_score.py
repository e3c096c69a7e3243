"""LawBench scoring (evaluate.py section 1): identical to the official scorer, quirks included.

Golden numbers: the official results.csv over every published prediction file (skipped without ../shared), the
InternLM-Law Table 1 GPT-4 rows, and hand-computed values for each quirk listed in ../shared/lawbench/SCORING.md.
Task 2-1 lives in cherrant.py (another module) and is not tested here.
"""
import json
import math
import random
import warnings

import pytest

import evaluate as E
import utils
from utils import DataError
from conftest import exit_status

warnings.filterwarnings("ignore", module="cn2an")


def items(*pairs, prompt="问题"):
    """(prediction, refr) pairs -> prediction-file items."""
    return [{"origin_prompt": prompt, "prediction": p, "refr": r} for p, r in pairs]


# ---- all published predictions vs the official results.csv ------------------------------------------------------------

@pytest.fixture(scope="module")
def published(lawbench_dir):
    """Score every published prediction file except 2-1 (both shots, all models) on 2 processes."""
    out = {}
    for shot in ("zero_shot", "one_shot"):
        jobs, notes = E.find_prediction_files(lawbench_dir / "predictions" / shot, skip_tasks=("2-1",))
        rows, errors, _ = E.score_jobs(jobs, workers=2, progress=False)
        assert not errors and not notes
        csv = lawbench_dir / "predictions" / shot / "results.csv"
        out[shot] = (rows, utils.read_scores_csv(csv), utils.read_scores_csv(csv, "abstention_rate"))
    return out


@pytest.mark.parametrize("shot", ["zero_shot", "one_shot"])
def test_every_published_file_matches_results_csv(published, shot):
    rows, official, abstentions = published[shot]
    assert len(rows) == 3 * 17  # 3 models x 18 tasks with predictions, minus 2-1
    for r in rows:
        assert r["score"] == pytest.approx(official[r["model_name"]][r["task"]], abs=1e-12), r
        assert r["abstention_rate"] == pytest.approx(abstentions[r["model_name"]][r["task"]], abs=1e-12), r


@pytest.mark.parametrize("shot,expected", [("zero_shot", (35.29, 54.41, 54.05, 52.35)),
                                           ("one_shot", (36.00, 56.48, 55.01, 53.85))])  # paper prints 36.01
def test_gpt4_rows_of_internlm_law_table1(published, shot, expected):
    rows, official, _ = published[shot]
    table, notes = E.paper_table([r for r in rows if r["model_name"] == "GPT4"], fill=official)
    (row,) = table
    assert [round(row[c], 2) for c in ("Memorization", "Understanding", "Application", "Average")] == list(expected)
    assert notes == ["GPT4: 2-1, 2-9, 2-10 taken from the official results file, not scored here"]


def test_label_lists_match_scoring_md(lawbench_dir):
    assert [len(x) for x in (E.DISPUTE_FOCUS_LABELS, E.MARRIAGE_LABELS, E.TOPIC_LABELS, E.EVENT_LABELS,
                             E.IE_ENTITY_TYPES, E.CHARGE_LABELS)] == [16, 20, 20, 20, 10, 189]
    assert len(set(E.CHARGE_LABELS)) == 189
    nested = [(a, b) for a in E.CHARGE_LABELS for b in E.CHARGE_LABELS if a != b and a in b]
    assert len(nested) == 29  # "29 such pairs" (合同诈骗 -> 诈骗, ...)
    golds = [g for it in E.read_predictions(lawbench_dir / "predictions" / "zero_shot" / "GPT4" / "3-3.json")
             for g in it["refr"].replace("罪名:", "").split(";")]
    assert sum(g not in E.CHARGE_LABELS for g in golds) == 18  # gold labels that can never be predicted


# ---- shared metrics ------------------------------------------------------------------------------------------------------

def test_multi_choice_judge_quirks():
    abcd = list("ABCD")
    assert E.lawbench_multi_choice("[正确答案]B<eoa>", abcd, "B") == (1, 0)  # <eoa> is lower-case: harmless
    assert E.lawbench_multi_choice("BBB", abcd, "B") == (1, 0)  # repeating the gold option is fine
    assert E.lawbench_multi_choice("Answer: B", abcd, "B") == (0, 0)  # "Answer" contains "A"
    assert E.lawbench_multi_choice("B，因为C错误", abcd, "B") == (0, 0)  # any other option anywhere
    assert E.lawbench_multi_choice("b", abcd, "B") == (0, 1)  # lower case: abstention
    assert E.lawbench_multi_choice("Ｂ", abcd, "B") == (0, 1)  # full width: abstention


def test_set_f1_and_char_f1():
    assert E.lawbench_set_f1(set(), set()) == 0 and E.lawbench_set_f1({1}, set()) == 0
    assert E.lawbench_set_f1({1, 2}, {2}) == pytest.approx(2 / 3)
    assert E.lawbench_char_f1("张三", "张三") == 1.0
    assert E.lawbench_char_f1("，。", "") == 1  # both empty after dropping punctuation
    assert E.lawbench_char_f1("ABC", "abc") == 1.0  # lower()
    assert E.lawbench_char_f1("12", "１２") == 0  # full-width digits kept but differ from ASCII
    assert E.lawbench_char_f1("张三李四", "张三") == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_lcs_length_equals_rouge_chinese():
    from rouge_chinese.rouge_score import _len_lcs
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 70))]
        assert E.lcs_length(a, b) == _len_lcs(a, b)


def test_rouge_l_equals_rouge_chinese_get_scores():
    import jieba
    from rouge_chinese import Rouge
    hyps = ["被告人张三犯盗窃罪。判处有期徒刑一年。", "我们。  \n你们？好的", "   ", "", "今天……明天......后天！", "abc def"]
    refs = ["张三犯盗窃罪，判处有期徒刑一年。", "我们你们", "答案", "答案", "明天。", "abc"]
    jh = [" ".join(jieba.cut(h)) for h in hyps]
    jh = [h if h.strip() != "" else "无内容" for h in jh]
    jr = [" ".join(jieba.cut(r)) for r in refs]
    official = [s["rouge-l"]["f"] for s in Rouge().get_scores(jh, jr)]
    assert E.lawbench_rouge_l(hyps, refs) == official  # bit-identical


def test_rouge_whitespace_only_sentence_is_an_empty_token():
    assert E._rouge_tokens("我们。  \n你们") == ["我们。", "", "你们"]


# ---- per task, hand-written predictions hitting each quirk ---------------------------------------------------------------

def test_1_1_rouge_without_answer_prefix():
    same = E.score_1_1(items(("第一条 为了惩罚犯罪。", "答案:第一条 为了惩罚犯罪。")))
    assert same == {"score": pytest.approx(2.0 * (1 / (2 + 1e-8))), "abstention_rate": 0.0}


def test_1_2_3_6_2_8_letter_positions():
    assert E.score_1_2(items(("[正确答案]B<eoa>", "正确答案：B。"), ("Answer: B", "正确答案：B。"),
                             ("无", "正确答案：C。"))) == {"score": 1 / 3, "abstention_rate": 1 / 3}
    assert E.score_3_6(items(("D", "正确答案:D。"))) == {"score": 1.0, "abstention_rate": 0.0}
    assert E.score_2_8(items(("[正确答案]E<eoa>", "[正确答案]E<eoa>"))) == {"score": 1.0, "abstention_rate": 0.0}


def test_2_2_skips_compensation_items_in_score_not_in_abstention():
    result = E.score_2_2(items(("利息", "争议焦点类别：利息。"), ("不知道", "争议焦点类别：赔偿。"),
                               ("不知道", "争议焦点类别：违约。")))
    assert result == {"score": 0.5, "abstention_rate": 1 / 3}  # score over 2 items, abstention over 3


def test_2_3_label_set_f1():
    result = E.score_2_3(items(("婚后有子女，准予离婚", "类别:婚后有子女、支付抚养费。"), ("无", "类别:准予离婚。")))
    assert result == {"score": 0.25, "abstention_rate": 0.5}


def test_2_4_topic_multi_choice():
    assert E.score_2_4(items(("婚姻家庭", "婚姻家庭"), ("婚姻家庭或侵权", "侵权"), ("?", "侵权"))) == \
        {"score": 1 / 3, "abstention_rate": 1 / 3}


def test_2_5_answer_prefix_in_prediction_costs_precision():
    result = E.score_2_5(items(("回答:张三", "回答:张三"), ("张三", "回答:张三")))
    assert result == {"score": pytest.approx((2 * (2 / 4) * 1 / (2 / 4 + 1) + 1) / 2), "abstention_rate": 0.0}


def test_2_6_entity_extraction_quirks():
    ref = "犯罪嫌疑人:张三;时间:5日"
    perfect = E.score_2_6(items(("犯罪嫌疑人:张三\n时间:5日\n", ref)))
    assert perfect["score"] == 2 / (2 + 1e-10)  # 0.99999999995, never 1
    glued = E.score_2_6(items(("犯罪嫌疑人:张三;时间:5日。", ref)))  # values are not cut at ';'
    assert glued["score"] == pytest.approx(0.75)
    assert E.score_2_6(items(("犯罪嫌疑人 : 张三", ref)))["score"] == 0  # space before the colon: missed
    assert E.lawbench_ie_entities("时间:5") == {}  # ends within the last 2 characters: skipped
    assert E.lawbench_ie_entities("时间:无\n地点:未提及\n受害人：李四 和王五") == {"受害人": "李四"}
    assert E.score_2_6(items(("无", ""), ("犯罪嫌疑人:张三 ", "")))["score"] == 0.5  # empty reference
    # abstention is computed by the official code but reported under a misspelled key, so it is always 0
    assert E.score_2_6(items(("不知道", ref)))["abstention_rate"] == 0.0


def test_2_9_event_detection():
    result = E.score_2_9(items(("存在支付/给付行为", "支付/给付;欺骗"), ("没有", "赔偿")))
    assert result == {"score": (2 / 3 + 0) / 2, "abstention_rate": 0.5}


def test_2_10_trigger_words_are_position_aligned():
    f = 2 / (2 + 1e-10)
    assert E.score_2_10(items(("盗窃;抢劫", "盗窃;抢劫")))["score"] == f
    assert E.score_2_10(items(("抢劫;盗窃", "盗窃;抢劫")))["score"] == 0  # reordered
    full_width = E.score_2_10(items(("盗窃；抢劫", "盗窃;抢劫")))["score"]  # '；' is not a separator
    assert full_width == pytest.approx(2 * (2 / 3) * (1 / 3) / (1 + 1e-10))
    assert E.score_2_10(items(("盗窃", "盗窃;抢劫")))["abstention_rate"] == 0.0


def test_3_1_article_chunking():
    assert E.lawbench_article_numbers("刑法第二百六十四条") == {264}
    assert E.lawbench_article_numbers("刑法第264条，第67条") == {264}  # one chunk: only the first number
    assert E.lawbench_article_numbers("刑法第264、67条") == {264, 67}
    assert E.lawbench_article_numbers("根据2017年修正的刑法，第264条") == {2017}
    assert E.lawbench_article_numbers("刑法第２６４条") == {264}  # full-width digits
    assert E.lawbench_article_numbers("刑法第二百三十四条第一款") == set()  # non-greedy 第…款 eats the article
    result = E.score_3_1(items(("刑法第264、67条", "法条:刑法第264条"), ("不清楚", "法条:刑法第234、275条")))
    assert result == {"score": pytest.approx(1 / 3), "abstention_rate": 0.5}


def test_3_3_nested_charge_names():
    result = E.score_3_3(items(("合同诈骗罪", "罪名:合同诈骗"), ("盗窃罪", "罪名:盗窃"), ("单位行贿", "罪名:单位行贿"),
                               ("无罪", "罪名:盗窃;诈骗")))
    # 合同诈骗 -> {合同诈骗, 诈骗}: 2/3; 盗窃罪 -> 盗窃: 1; 单位行贿 -> {单位行贿, 行贿}: 2/3; nothing found: 0
    assert result == {"score": pytest.approx((2 / 3 + 1 + 2 / 3 + 0) / 4), "abstention_rate": 0.25}


def test_3_4_term_parser_quirks():
    assert E.lawbench_term_months("1年6个月") == 6
    assert E.lawbench_term_months("有期徒刑三年六个月") == 6
    assert E.lawbench_term_months("2016年3月28日案发，判处有期徒刑一年") == 3
    assert E.lawbench_term_months("半年") == 60  # 0.5年 -> '5年'
    assert E.lawbench_term_months("有期徒刑三年，缓刑五年") == 36
    assert E.lawbench_term_months("[刑期]12月<eoa>") == 12
    assert E.lawbench_term_months("无法判断") is None


def test_3_4_3_5_normalised_log_distance():
    its = items(("1年6个月", "刑期:6个月"), ("三年六个月", "刑期:42个月"), ("不知道", "刑期:12个月"),
                ("死刑", "刑期:死刑"))
    d = [0.0, abs(math.log(43) - math.log(7)), math.log(216)]
    expected = {"score": (math.log(216) - sum(d) / 3) / math.log(216), "abstention_rate": 1 / 4}
    assert E.score_3_4(its) == expected and E.score_3_5(its) == expected
    # far off predictions push the score below 0: it is not clipped
    assert E.score_3_4(items(("1200个月", "刑期:0个月")))["score"] < 0


def test_3_7_crime_amount():
    ref = "上文涉及到的犯罪金额:8500元。"
    assert E.score_3_7(items(("8,500元", ref)))["score"] == 0  # -> [8, 500]
    assert E.score_3_7(items(("８５００元", ref)))["score"] == 1  # full-width digits match
    assert E.score_3_7(items(("共计8500.0元，另有1000元", ref)))["score"] == 1  # any number may match
    assert E.score_3_7(items(("0.85万元", ref)))["score"] == 0  # 万 is not converted
    assert E.score_3_7(items(("八千五百元", ref))) == {"score": 0.0, "abstention_rate": 1.0}


def test_rouge_tasks_and_carriage_returns():
    # \r is an ordinary character for every task outside 2-1: scored, never a crash
    for fn in (E.score_2_7, E.score_3_2, E.score_3_8):
        r = fn(items(("被告人\r\n张三犯盗窃罪。", "张三犯盗窃罪。")))
        assert 0 < r["score"] < 1 and r["abstention_rate"] == 0.0
    assert E.score_3_3(items(("盗窃\r", "罪名:盗窃")))["score"] == 1.0


# ---- prediction files, bad input, command line -------------------------------------------------------------------------

def test_prediction_format_round_trips(tmp_path, lawbench_dir):
    its = items(("[正确答案]A<eoa>", "正确答案：A。"), ("B\r\n", "正确答案：B。"))
    its[1]["origin_prompt"] = [{"role": "HUMAN", "prompt": "问题"}]
    path = E.write_predictions(tmp_path / "m" / "1-2.json", its)
    assert E.read_predictions(path) == its
    assert json.loads(path.read_text(encoding="utf-8"))["1"]["prediction"] == "B\r\n"
    # a published file survives write -> read unchanged, byte for byte
    src = lawbench_dir / "predictions" / "zero_shot" / "GPT4" / "3-7.json"
    copy = E.write_predictions(tmp_path / "GPT4" / "3-7.json", E.read_predictions(src))
    assert copy.read_bytes() == src.read_bytes()
    assert E.score_file(copy) == E.score_file(src)


def test_keys_out_of_order_are_read_in_official_order(tmp_path):
    its = items(("A", "正确答案：A。"), ("C", "正确答案：B。"), ("D", "正确答案：D。"))
    path = tmp_path / "1-2.json"
    path.write_text(json.dumps({"2": its[2], "0": its[0], "1": its[1]}, ensure_ascii=False), encoding="utf-8")
    assert E.read_predictions(path) == its
    assert E.score_file(path) == {"score": 2 / 3, "abstention_rate": 0.0}


@pytest.mark.parametrize("content,needle", [
    ('{"0": {"origin_prompt": "q", "prediction": "A", "refr": "正确答案：A。"}, "2": {}}', 'missing item "1"'),
    ('{"0": {"origin_prompt": "q", "refr": "正确答案：A。"}}', "'[\"0\"].prediction': missing"),
    ('{"0": {"origin_prompt": "q", "prediction": null, "refr": "正确答案：A。"}}', "expected a string, got NoneType"),
    ('{"0": {"origin_prompt": "q", "prediction": ["A"], "refr": "正确答案：A。"}}', "expected a string, got list"),
    ('[{"origin_prompt": "q", "prediction": "A", "refr": "正确答案：A。"}]', "expected a non-empty JSON object"),
    ('{}', "expected a non-empty JSON object"),
    ('{"0": {"origin_prompt": "q", "prediction": "A", "refr": "错"}}', "'[\"0\"].refr': expected '正确答案"),
    ('{"0": {', "invalid JSON"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, needle):
    path = tmp_path / "1-2.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as e:
        E.score_file(path)
    assert needle in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value)


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        E.score_file(tmp_path / "1-2.json")
    (tmp_path / "9-9.json").write_text("{}", encoding="utf-8")
    with pytest.raises(DataError, match="unknown LawBench task"):
        E.score_file(tmp_path / "9-9.json")


def test_empty_rouge_reference_is_a_data_error(tmp_path):
    path = E.write_predictions(tmp_path / "3-8.json", items(("回答", "答案"), ("回答", " \n")))
    with pytest.raises(DataError, match=r"field '\[\"1\"\]\.refr': empty reference"):
        E.score_file(path)


def test_2_1_resources_missing_is_one_error_line(tmp_path, capsys):
    """2-1 needs LawBench's resource files; a --lawbench_dir without them gives one line naming the file."""
    pred = tmp_path / "preds"
    E.write_predictions(pred / "m1" / "2-1.json", items(("句子", "句子")))
    (tmp_path / "nowhere").mkdir()  # a folder without the resources (a missing folder is refused before scoring)
    rc = exit_status(E.main, ["score", pred, "--out", tmp_path / "s.csv", "--workers", "1",
                              "--lawbench_dir", tmp_path / "nowhere"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 1 and len(err) == 1 and "2-1.json" in err[0] and "cilin.txt" in err[0]


def test_cli_writes_csv_table_and_reports_bad_files(tmp_path, capsys):
    pred = tmp_path / "preds"
    E.write_predictions(pred / "m1" / "1-2.json", items(("A", "正确答案：A。"), ("B", "正确答案：C。")))
    E.write_predictions(pred / "m1" / "3-6.json", items(("C", "正确答案:C。")))
    (pred / "m2").mkdir()
    (pred / "m2" / "3-6.json").write_text('{"0": {"prediction": "A"}}', encoding="utf-8")
    out = tmp_path / "out" / "scores.csv"
    rc = exit_status(E.main, ["score", str(pred), "--out", str(out), "--workers", "1"])
    captured = capsys.readouterr()
    assert rc == 1  # m2's file is bad: reported in one line, the rest is still written
    assert "error:" in captured.err and "origin_prompt': missing" in captured.err
    assert out.read_text(encoding="utf-8").splitlines() == [
        "task,model_name,score,abstention_rate", "1-2,m1,0.5,0.0", "3-6,m1,1.0,0.0"]
    assert "m1: no score for 1-1, 2-1" in captured.out  # missing task files: blank averages and a note
    assert (tmp_path / "out" / "scores_table.md").is_file() and (tmp_path / "out" / "scores_table.csv").is_file()
    assert exit_status(E.main, ["score", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "prediction directory not found" in capsys.readouterr().err
