"""Tests for the shared core in utils.py: numerals, answer format, record errors, tiny model."""
import json

import pytest

import utils
from utils import DataError


# ---------------------------------------------------------------- numerals
@pytest.mark.parametrize("n,cn", [(0, "零"), (1, "一"), (10, "十"), (15, "十五"), (20, "二十"), (101, "一百零一"),
                                  (110, "一百一十"), (133, "一百三十三"), (264, "二百六十四"), (1001, "一千零一"),
                                  (1260, "一千二百六十"), (2001, "二千零一"), (10010, "一万零一十")])
def test_int_to_cn_and_back(n, cn):
    assert utils.int_to_cn(n) == cn
    assert utils.cn_to_int(cn) == n


def test_cn_to_int_variants():
    assert utils.cn_to_int("两百") == 200
    assert utils.cn_to_int("264") == 264
    assert utils.cn_to_int("一〇") == 10 or utils.cn_to_int("十") == 10
    with pytest.raises(ValueError):
        utils.cn_to_int("条")


def test_article_cn():
    assert utils.article_cn(133, 1) == "第一百三十三条之一"
    assert utils.article_cn(264) == "第二百六十四条"
    assert utils.article_cn(10) == "第十条"


# ---------------------------------------------------------------- answer format
def test_format_answer_exact():
    t = {"charges": ["[走私、贩卖、运输、制造]毒品", "盗窃"], "articles": [347, 264, 264], "term_months": 18,
         "life": False, "death": False}
    assert utils.format_answer(t) == ("<answer>\n罪名：走私、贩卖、运输、制造毒品罪；盗窃罪\n"
                                      "法条：《刑法》第二百六十四条、第三百四十七条\n刑期：一年六个月\n</answer>")
    assert utils.format_answer(t, think="因为").startswith("<think>\n因为\n</think>\n\n<answer>")


@pytest.mark.parametrize("months,life,death,text", [(18, False, False, "一年六个月"), (24, False, False, "二年"),
                                                    (6, False, False, "六个月"), (0, False, False, "不判处监禁"),
                                                    (0, True, False, "无期徒刑"), (0, False, True, "死刑")])
def test_term_text(months, life, death, text):
    assert utils.term_text(months, life, death) == text


def test_judgment_truth_dedups_articles():
    meta = {"accusation": ["盗窃", "盗窃"], "relevant_articles": [280, 205, 205],
            "term_of_imprisonment": {"imprisonment": 10, "death_penalty": False, "life_imprisonment": False}}
    assert utils.judgment_truth(meta) == {"charges": ["盗窃"], "articles": [205, 280], "term_months": 10,
                                          "life": False, "death": False}


def test_judgment_record_one_line_errors():
    rec = {"fact": "事实", "meta": {"accusation": ["盗窃"], "relevant_articles": ["x"], "term_of_imprisonment": {"imprisonment": 6}}}
    with pytest.raises(DataError, match=r"^f\.jsonl:2: field 'meta': cannot read the labels: invalid literal"):
        utils.judgment_record(rec, "f.jsonl", 2)
    with pytest.raises(DataError, match=r"^f\.jsonl:3: field 'meta.term_of_imprisonment': missing$"):
        utils.judgment_record({"fact": "事实", "meta": {"accusation": ["盗窃"], "relevant_articles": [264]}}, "f.jsonl", 3)
    rec["meta"]["relevant_articles"] = [264]
    assert utils.judgment_record(rec, "f.jsonl", 4) == ("事实", utils.judgment_truth(rec["meta"]))


# ---------------------------------------------------------------- record reading errors
def test_bad_json_line_names_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.jsonl:2: invalid JSON"):
        list(utils.iter_records(p))
    errors = {}
    assert [r for _, r in utils.iter_records(p, on_error="skip", errors=errors)] == [{"a": 1}]
    assert errors == {"bad_json": 1}


def test_gbk_file_is_a_one_line_error(tmp_path):
    p = tmp_path / "gbk.jsonl"
    p.write_bytes(json.dumps({"q": "盗窃罪"}, ensure_ascii=False).encode("gbk"))
    with pytest.raises(DataError, match=r"gbk\.jsonl:1: not valid UTF-8.*GBK") as e:
        list(utils.iter_records(p))
    assert "\n" not in str(e.value)


def test_missing_file_and_field(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        list(utils.iter_records(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"f\.jsonl:3: field 'meta.accusation': missing"):
        utils.require({"meta": {}}, "meta.accusation", "f.jsonl", 3, kind=list)
    with pytest.raises(DataError, match="field 'answer': empty"):
        utils.require({"answer": "  "}, "answer", "f.jsonl", 1)


MSGS = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "世界"},
        {"role": "user", "content": "盗窃"}, {"role": "assistant", "content": "张某"}]


# ---------------------------------------------------------------- tiny model
def test_tiny_model_loads_and_generates(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    cfg = model.config
    assert cfg.hidden_size // cfg.num_attention_heads in (32, 64) and not cfg.tie_word_embeddings
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    prompt = tok.apply_chat_template(MSGS[:1], tokenize=False, add_generation_prompt=True)
    x = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        y = model.generate(**x, max_new_tokens=5, do_sample=False)
    assert y.shape[1] > x["input_ids"].shape[1]


def test_config_flags_roundtrip(tmp_path):
    import dataclasses

    @dataclasses.dataclass
    class C:
        model: str = "m"
        lr: float = 1e-5
        steps: int = 3
        flag: bool = False
        opt: "int | None" = None

    c = utils.parse_config(C, ["--lr", "2e-5", "--flag", "true", "--opt", "none", "--steps", "7"])
    assert c == C(model="m", lr=2e-5, steps=7, flag=True, opt=None)
    saved = json.loads(utils.save_config(c, tmp_path).read_text())
    assert saved["lr"] == 2e-5


def test_config_alias_is_the_same_flag():
    import dataclasses

    @dataclasses.dataclass
    class C:
        out: str = dataclasses.field(default="o", metadata={"alias": "--output_dir"})

    assert utils.parse_config(C, ["--output_dir", "x"]).out == "x" == utils.parse_config(C, ["--out", "x"]).out
    with pytest.raises(SystemExit):
        utils.parse_config(C, ["--output", "x"])  # never matched by prefix
