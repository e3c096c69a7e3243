"""Hand-written cases for the legal answer parsers (section 10 of utils.py) and rl.legal_reward."""
import math

import pytest

import utils
from rl import DEFAULT_REWARD_WEIGHTS, legal_reward
from utils import format_answer

T = {"charges": ["盗窃"], "articles": [264], "term_months": 18, "life": False, "death": False}


def block(charges="盗窃罪", articles="《刑法》第二百六十四条", term="一年六个月"):
    return f"<answer>\n罪名：{charges}\n法条：{articles}\n刑期：{term}\n</answer>"


# ---- round trip: format_answer(t) earns every component in full ------------------------------------------------------

ROUND_TRIP = [
    T,
    {"charges": ["合同诈骗", "诈骗"], "articles": [224, 266, 67], "term_months": 30, "life": False, "death": False},
    {"charges": ["[走私、贩卖、运输、制造]毒品"], "articles": [347], "term_months": 0, "life": True, "death": False},
    {"charges": ["故意杀人"], "articles": [232, 48], "term_months": 0, "life": False, "death": True},
    {"charges": ["危险驾驶"], "articles": [133], "term_months": 2, "life": False, "death": False},
    {"charges": ["非法持有、私藏枪支、弹药"], "articles": [128], "term_months": 0, "life": False, "death": False},
    {"charges": ["交通肇事"], "articles": [133], "term_months": 120, "life": False, "death": False},
]


@pytest.mark.parametrize("truth", ROUND_TRIP)
@pytest.mark.parametrize("think", [None, "先分析事实。"])
def test_round_trip_full_credit(truth, think):
    r = legal_reward(format_answer(truth, think=think), truth)
    assert r == {"charge": 1.0, "article": 1.0, "term": 1.0, "format": 1.0, "total": 1.0}


# ---- charges ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("written, expected", [
    ("盗窃罪", ["盗窃"]),
    ("盗窃", ["盗窃"]),                                   # no 罪 suffix
    ("盗窃罪；诈骗罪", ["盗窃", "诈骗"]),
    ("盗窃罪、诈骗罪", ["盗窃", "诈骗"]),                   # 、 between charges
    ("盗窃、诈骗", ["盗窃", "诈骗"]),
    ("盗窃罪, 诈骗罪", ["盗窃", "诈骗"]),
    ("合同诈骗罪", ["合同诈骗"]),                          # nested name: not also 诈骗
    ("走私、贩卖、运输、制造毒品罪", ["走私、贩卖、运输、制造毒品"]),  # 、 inside one official name
    ("[走私、贩卖、运输、制造]毒品罪", ["走私、贩卖、运输、制造毒品"]),  # brackets stripped
    ("醉驾", ["危险驾驶"]),                                # alias
    ("贩卖毒品罪", ["走私、贩卖、运输、制造毒品"]),          # alias
    ("合同炸骗罪", ["合同诈骗"]),                          # edit-distance fallback
    ("盗窃罪；盗窃罪", ["盗窃"]),                          # duplicates collapse
    ("外星人入侵罪", ["外星人入侵"]),                       # unknown kept (counts as wrong)
])
def test_parse_charges(written, expected):
    assert utils.parse_charges(written) == expected


def test_nested_charge_does_not_credit_substring():
    truth = {**T, "charges": ["诈骗"]}
    assert legal_reward(block(charges="合同诈骗罪"), truth)["charge"] == 0.0
    truth = {**T, "charges": ["合同诈骗"]}
    assert legal_reward(block(charges="诈骗罪"), truth)["charge"] == 0.0


def test_edit_distance_threshold_rejects_far_names():
    assert utils.canonical_charge("诈") is None or utils.canonical_charge("诈") != "合同诈骗"
    assert utils.canonical_charge("完全无关的名字") is None


def test_charge_f1_partial():
    truth = {**T, "charges": ["盗窃", "诈骗"]}
    assert legal_reward(block(charges="盗窃罪"), truth)["charge"] == pytest.approx(2 / 3)
    assert legal_reward(block(charges="盗窃罪；抢劫罪；抢夺罪"), {**T})["charge"] == pytest.approx(0.5)


def test_charge_list_file_and_fallback(tmp_path):
    p = tmp_path / "accu.txt"
    p.write_text("盗窃\n[走私、贩卖]毒品\n", encoding="utf-8")
    assert utils.load_charge_list(str(p)) == ("盗窃", "走私、贩卖毒品")
    assert "合同诈骗" in utils.FALLBACK_CHARGES
    with pytest.raises(utils.DataError):
        utils.load_charge_list(str(tmp_path / "missing.txt"))


def test_official_list(shared_dir):
    names = utils.load_charge_list(str(shared_dir / "data" / "cail2018" / "accu.txt"))
    assert len(names) == 202 and "合同诈骗" in names and "诈骗" in names
    assert utils.parse_charges("合同诈骗罪；信用卡诈骗罪", names) == ["合同诈骗", "信用卡诈骗"]


# ---- articles --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("written, expected", [
    ("第二百六十四条", [264]),
    ("第264条", [264]),
    ("《刑法》第二百三十四条、第六十七条第三款", [67, 234]),     # 款 ignored
    ("第一百三十三条之一", [133]),                            # 之一 -> base article (CAIL labels)
    ("第二百六十四条第一款第二项", [264]),                      # 项 ignored
    ("第二百六十四条；第五十二条;第53条，第六十四条", [52, 53, 64, 264]),
    ("第二百六十四、二百六十六条", [264, 266]),                  # one 第 for two numbers
    ("第５００条、第零条", []),                                # not Criminal Law articles
    ("第四百五十二条", [452]),
    ("第四百五十三条", []),
    ("第十条", [10]),
    ("无", []),
])
def test_parse_articles(written, expected):
    assert utils.parse_articles(written) == expected


def test_article_f1():
    truth = {**T, "articles": [264, 67]}
    assert legal_reward(block(articles="第二百六十四条"), truth)["article"] == pytest.approx(2 / 3)
    assert legal_reward(block(articles="第264条、第67条"), truth)["article"] == 1.0


# ---- sentence --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("written, months, life, death", [
    ("一年六个月", 18, False, False),                      # 12X + Y, not Y
    ("有期徒刑1年6个月", 18, False, False),
    ("有期徒刑二年", 24, False, False),
    ("十八个月", 18, False, False),
    ("有期徒刑三年，缓刑四年", 36, False, False),           # probation excluded
    ("有期徒刑一年零三个月，缓刑二年", 15, False, False),
    ("拘役三个月", 3, False, False),
    ("管制六个月", 6, False, False),
    ("无期徒刑", 0, True, False),
    ("死刑，缓期二年执行", 0, False, True),
    ("不判处监禁", 0, False, False),
    ("免予刑事处罚", 0, False, False),
])
def test_parse_term(written, months, life, death):
    assert utils.parse_term(written) == {"term_months": months, "life": life, "death": death}


def test_parse_term_unreadable():
    assert utils.parse_term("依法判决") is None


def test_term_shaping_near_misses_earn_reward():
    exact = legal_reward(block(term="一年六个月"), T)["term"]
    near = legal_reward(block(term="一年八个月"), T)["term"]
    far = legal_reward(block(term="十年"), T)["term"]
    assert exact == 1.0 and 0.9 < near < 1.0 and 0.0 <= far < near
    assert near == pytest.approx(1 - abs(math.log(21) - math.log(19)) / math.log(216))


def test_term_category_mismatch_scores_zero():
    life = {**T, "term_months": 0, "life": True}
    death = {**T, "term_months": 0, "death": True}
    assert legal_reward(block(term="十五年"), life)["term"] == 0.0
    assert legal_reward(block(term="死刑"), life)["term"] == 0.0
    assert legal_reward(block(term="无期徒刑"), death)["term"] == 0.0
    assert legal_reward(block(term="无期徒刑"), T)["term"] == 0.0
    assert legal_reward(block(term="无期徒刑"), life)["term"] == 1.0


# ---- format and malformed outputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("completion", [
    "",
    "   ",
    "罪名：盗窃罪\n法条：第二百六十四条\n刑期：一年六个月",           # no answer block
    "<answer>\n</answer>",                                          # empty block
    "<answer>\n罪名：盗窃罪\n法条：第二百六十四条\n刑期：一年六个月",   # truncated: never closed
    "<think>盗窃罪 第二百六十四条 一年六个月</think>",                 # right words only inside think
    "<answer>我认为是盗窃</answer>",                                 # no fields at all
])
def test_missing_or_empty_answer_scores_zero_everywhere(completion):
    r = legal_reward(completion, T)
    assert r == {"charge": 0.0, "article": 0.0, "term": 0.0, "format": 0.0, "total": 0.0}


@pytest.mark.parametrize("completion", [
    block() + "\n以上。",                                         # trailing text
    "前言" + block(),                                             # text before the block without <think>
    "<think>分析<think>嵌套</think>" + block(),                    # nested think
    "<think>未闭合" + block(),                                    # unclosed think
    block() + block(),                                            # two blocks
    "<answer>\n罪名：盗窃罪\n刑期：一年六个月\n</answer>",           # a field missing
])
def test_malformed_format_half_credit(completion):
    assert legal_reward(completion, T)["format"] == 0.5


def test_missing_field_zeroes_that_component_only():
    r = legal_reward("<answer>\n罪名：盗窃罪\n刑期：一年六个月\n</answer>", T)
    assert r["charge"] == 1.0 and r["term"] == 1.0 and r["article"] == 0.0


def test_last_block_is_read():
    r = legal_reward(block(charges="抢劫罪") + block(), T)
    assert r["charge"] == 1.0


def test_think_with_whitespace_is_well_formed():
    assert legal_reward("\n<think>\n想一想\n</think>\n\n" + block() + "\n\n", T)["format"] == 1.0


def test_weights():
    wrong_term = block(term="死刑")
    r = legal_reward(wrong_term, T, weights={"charge": 1, "article": 0, "term": 0, "format": 0})
    assert r["total"] == 1.0 and r["term"] == 0.0
    r = legal_reward(wrong_term, T, weights={"charge": 1, "article": 1, "term": 1, "format": 1})
    assert r["total"] == pytest.approx(0.75)
    assert legal_reward(wrong_term, T)["total"] == pytest.approx(1 - DEFAULT_REWARD_WEIGHTS["term"])


def test_components_in_unit_interval():
    for c in [block(), block(charges="x；y；z"), block(term="一千年"), "<answer>罪名：</answer>", block(articles="第1条")]:
        r = legal_reward(c, T)
        assert set(r) >= {"charge", "article", "term", "format", "total"}
        assert all(0.0 <= v <= 1.0 for v in r.values())
