"""
LexLab evaluation: one script, one subcommand per kind of evaluation.

    python evaluate.py generate --model DIR --lawbench_dir ../shared/lawbench --out preds [--shots zero|one|both]
                                [--tasks 1-1,3-3] [--max_items N] [--backend hf|vllm] [--raw]
                                [--rag ARTICLES.jsonl] [--code]     # --code: 3-7 also by a sandboxed program
    python evaluate.py score    preds/zero_shot --out scores.csv      # LawBench scores identical to the official scorer
    python evaluate.py generate --benchmark lexeval --model DIR --lexeval_dir ../shared/lexeval --out lx --shots both
    python evaluate.py score    --benchmark lexeval lx/zero_shot --out lx_scores.csv   # LexEval, as its official scorer
    python evaluate.py judgment --model DIR --data ../shared/data/cail2018/test.jsonl --out runs/jp [--max_items N]
                                [--rag ../shared/data/laws/articles.jsonl --rag_k 3]
    python evaluate.py longdoc  --model DIR --data data/longdoc_sample.jsonl --out runs/longdoc

Sections (banner comments below):
  1. LawBench scoring       - the 20 tasks, LawBench-compatible parsers and metrics (quirks reproduced on purpose),
                              prediction files in LawBench's layout, the paper-style table, the `score` subcommand
  2. Statute retrieval      - BM25 over jieba tokens of an articles.jsonl, the top-k prepended to a prompt
  3. Generation             - LawBench prompts -> predictions in LawBench's own layout, resumable
  3b. Tool use              - 3-7 code mode: the model writes Python, sandbox.run_python runs it
  4. Judgment prediction    - CAIL2018 facts -> answer block -> charge / article / term / life-death metrics
  5. Long documents         - document + questions, middle truncation to the context, char-level F1
  5b. LexEval               - the second benchmark: generation in LexEval's layout, its official scores (lexeval.py)
  6. Command line           - one subcommand per section; each has a config dataclass (utils.parse_config)

The scoring section reproduces the official LawBench scorer (open-compass/LawBench, evaluation/, commit e30981b) as
described task by task in ../shared/lawbench/SCORING.md. Its parsers are deliberately *wrong* in the same ways as the
official ones (e.g. "1年6个月" reads as 6 months): they exist only to give identical numbers. Never use them for RL
rewards or for judgment prediction; the correct parsers live in utils.py (section "Legal answer parsing").

Every subcommand saves its resolved config and appends a line to metrics.jsonl beside its outputs.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing as mp
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import lexeval
import sandbox
import utils
from utils import LAWBENCH_CATEGORIES, LAWBENCH_TASKS, LOG_216, DataError, plain_mean, plain_sum


# ----------------------------------------------------------------------------------------------------------------------
# 1. LawBench scoring
# ----------------------------------------------------------------------------------------------------------------------

# --- Label lists. These strings decide the scores, so they are taken verbatim from the official LawBench repository
# (open-compass/LawBench, evaluation/evaluation_functions/{jdzy,wbfl,zxfl,sjjc,ljp_accusation,xxcq}.py;
# LawBench is Apache-2.0, Copyright the LawBench authors). Order matters only for floating-point summation order.

DISPUTE_FOCUS_LABELS = [  # 2-2 (jdzy.py), 16 labels
    "诉讼主体", "租金情况", "利息", "本金争议", "责任认定", "责任划分", "损失认定及处理", "原审判决是否适当", "合同效力",
    "财产分割", "责任承担", "鉴定结论采信问题", "诉讼时效", "违约", "合同解除", "肇事逃逸"]

MARRIAGE_LABELS = [  # 2-3 (wbfl.py), 20 labels
    "婚后有子女", "限制行为能力子女抚养", "有夫妻共同财产", "支付抚养费", "不动产分割", "婚后分局", "二次起诉离婚",
    "按月给付抚养费", "准予离婚", "有夫妻共同债务", "婚前个人财产", "法定离婚", "不履行家庭义务", "存在非婚生子", "适当帮助",
    "不履行离婚协议", "损害赔偿", "感情不和分居满二年", "子女随非抚养权人生活", "婚后个人财产"]

TOPIC_LABELS = [  # 2-4 (zxfl.py), 20 labels
    "婚姻家庭", "劳动纠纷", "交通事故", "债权债务", "刑事辩护", "合同纠纷", "房产纠纷", "侵权", "公司法", "医疗纠纷",
    "拆迁安置", "行政诉讼", "建设工程", "知识产权", "综合咨询", "人身损害", "涉外法律", "海事海商", "消费权益", "抵押担保"]

EVENT_LABELS = [  # 2-9 (sjjc.py), 20 event types
    "支付/给付", "欺骗", "搜查/扣押", "要求/请求", "卖出", "买入", "获利", "拘捕", "鉴定", "同意/接受", "供述", "联络",
    "帮助/救助", "租用/借用", "受伤", "伪造", "卖淫", "伤害人身", "赔偿", "归还/偿还"]

IE_ENTITY_TYPES = [  # 2-6 (xxcq.py), 10 entity types (a set there; a fixed order here)
    "犯罪嫌疑人", "受害人", "被盗货币", "物品价值", "盗窃获利", "被盗物品", "作案工具", "时间", "地点", "组织机构"]

CHARGE_LABELS = [  # 3-3 (ljp_accusation.py), 189 charge names
    "侮辱", "违法发放贷款", "失火", "票据诈骗", "帮助犯罪分子逃避处罚", "重大责任事故", "对非国家工作人员行贿",
    "非法制造、销售非法制造的注册商标标识", "非法制造、买卖、运输、邮寄、储存枪支、弹药、爆炸物", "非法获取公民个人信息",
    "扰乱无线电通讯管理秩序", "非法持有、私藏枪支、弹药", "拒不执行判决、裁定", "虚开发票", "巨额财产来源不明",
    "组织、领导、参加黑社会性质组织", "非法获取国家秘密", "以危险方法危害公共安全", "非法持有毒品",
    "聚众扰乱公共场所秩序、交通秩序", "包庇毒品犯罪分子", "滥伐林木", "伪造公司、企业、事业单位、人民团体印章",
    "非法占用农用地", "走私废物", "串通投标", "非法采伐、毁坏国家重点保护植物", "冒充军人招摇撞骗", "玩忽职守",
    "重婚", "招收公务员、学生徇私舞弊", "组织、领导传销活动", "非法猎捕、杀害珍贵、濒危野生动物", "侵犯著作权",
    "非法种植毒品原植物", "伪造、变造、买卖武装部队公文、证件、印章", "倒卖文物", "伪造、变造居民身份证", "滥用职权",
    "诽谤", "猥亵儿童", "非法转让、倒卖土地使用权", "挪用公款", "污染环境", "出售、购买、运输假币", "敲诈勒索",
    "高利转贷", "故意伤害", "持有、使用假币", "单位受贿", "强奸", "引诱、容留、介绍卖淫", "虐待",
    "生产、销售伪劣农药、兽药、化肥、种子", "妨害公务", "容留他人吸毒", "拐骗儿童", "强制猥亵、侮辱妇女",
    "非法处置查封、扣押、冻结的财产", "骗取贷款、票据承兑、金融票证", "强迫他人吸毒", "非法拘禁",
    "非法携带枪支、弹药、管制刀具、危险物品危及公共安全", "绑架", "聚众斗殴", "破坏计算机信息系统",
    "制造、贩卖、传播淫秽物品", "虐待被监管人", "贷款诈骗", "赌博", "徇私舞弊不征、少征税款",
    "盗窃、抢夺枪支、弹药、爆炸物、危险物质", "故意杀人", "介绍贿赂", "提供侵入、非法控制计算机信息系统程序、工具",
    "编造、故意传播虚假恐怖信息", "妨害作证", "强迫卖淫", "走私、贩卖、运输、制造毒品", "伪证", "拐卖妇女、儿童",
    "过失损坏武器装备、军事设施、军事通信", "破坏广播电视设施、公用电信设施", "洗钱", "职务侵占", "倒卖车票、船票",
    "抢劫", "侵占", "掩饰、隐瞒犯罪所得、犯罪所得收益", "徇私舞弊不移交刑事案件", "引诱、教唆、欺骗他人吸毒", "遗弃",
    "生产、销售伪劣产品", "放火", "非法采矿", "对单位行贿", "盗窃、抢夺枪支、弹药、爆炸物", "破坏易燃易爆设备",
    "妨害信用卡管理", "制作、复制、出版、贩卖、传播淫秽物品牟利", "金融凭证诈骗", "私分国有资产",
    "走私国家禁止进出口的货物、物品", "假冒注册商标", "危险物品肇事", "走私普通货物、物品", "经济犯", "虚报注册资本",
    "盗掘古文化遗址、古墓葬", "传播淫秽物品", "窝藏、包庇", "拒不支付劳动报酬", "行贿", "开设赌场", "传授犯罪方法",
    "协助组织卖淫", "保险诈骗", "破坏生产经营", "破坏交通设施", "打击报复证人", "非法侵入住宅", "非国家工作人员受贿",
    "过失致人重伤", "伪造、变造金融票证", "窝藏、转移、隐瞒毒品、毒赃", "帮助毁灭、伪造证据", "走私珍贵动物、珍贵动物制品",
    "生产、销售假药", "逃税", "挪用特定款物", "聚众扰乱社会秩序", "组织、强迫、引诱、容留、介绍卖淫", "合同诈骗",
    "非法生产、销售间谍专用器材", "破坏交通工具", "传播性病", "强迫交易", "隐匿、故意销毁会计凭证、会计帐簿、财务会计报告",
    "非法组织卖血", "强迫劳动", "破坏电力设备", "销售假冒注册商标的商品", "收买被拐卖的妇女、儿童", "诬告陷害", "脱逃",
    "非法经营", "徇私枉法", "信用卡诈骗", "生产、销售不符合安全标准的食品", "非法行医", "伪造货币", "动植物检疫徇私舞弊",
    "单位行贿", "破坏监管秩序", "盗窃", "盗伐林木", "重大劳动安全事故", "非法吸收公众存款",
    "非法制造、出售非法制造的发票", "非法狩猎", "组织卖淫", "非法买卖、运输、携带、持有毒品原植物种子、幼苗", "挪用资金",
    "诈骗", "伪造、变造、买卖国家机关公文、证件、印章", "持有伪造的发票", "贪污", "非法生产、买卖警用装备",
    "投放危险物质", "伪造、倒卖伪造的有价票证", "集资诈骗", "抢夺", "生产、销售有毒、有害食品", "非法捕捞水产品",
    "过失致人死亡", "非法买卖制毒物品", "虚开增值税专用发票、用于骗取出口退税、抵扣税款发票", "寻衅滋事", "危险驾驶",
    "故意毁坏财物", "招摇撞骗", "盗窃、侮辱尸体", "走私武器、弹药",
    "非法收购、运输、加工、出售国家重点保护植物、国家重点保护植物制品", "非法出售发票", "劫持船只、汽车",
    "受贿", "聚众哄抢", "交通肇事"]

class BadItem(ValueError):
    """Raised by a task function for an item the official scorer would reject; becomes a DataError naming the file."""

    def __init__(self, index: int, field: str, message: str):
        self.index, self.field = index, field
        super().__init__(message)


# --- LawBench-compatible parsers and metrics (quirks reproduced on purpose; never use for rewards)

def lawbench_multi_choice(pred: str, options: list[str], gold: str) -> tuple[int, int]:
    """-> (correct, abstained). An option is 'present' if it is a substring of pred (case-sensitive). Correct iff the
    gold option is the only one present; abstained iff none is. So "Answer: B" is wrong (it contains "A")."""
    present = [opt for opt in options if opt in pred]
    if not present:
        return 0, 1
    return int(present == [gold]), 0


def lawbench_labels_found(pred: str, labels: list[str]) -> list[str]:
    """Every label that occurs as a substring anywhere in pred (so 合同诈骗 also yields 诈骗)."""
    return [label for label in labels if label in pred]


def lawbench_set_f1(a: set, b: set) -> float:
    """LawBench set F1: P = |a&b|/|a|, R = |a&b|/|b| (0 when empty), F1 = 2PR/(P+R), 0 when P+R = 0 (so two empty
    sets score 0, unlike the reward's set F1). Symmetric in a, b."""
    p = len(a & b) / len(a) if len(a) > 0 else 0
    r = len(a & b) / len(b) if len(b) > 0 else 0
    return 2 * p * r / (p + r) if p + r > 0 else 0


def _cjrc_chars(s: str) -> list[str]:
    return [c for c in s.lower() if c.isdigit() or c.isalpha()]


def lawbench_char_f1(gold: str, pred: str) -> float:
    """CJRC/CoQA-style bag-of-characters F1 after lower() and keeping only isdigit()/isalpha() characters.
    If either side is empty after that: 1 if both are, else 0."""
    g, p = _cjrc_chars(gold), _cjrc_chars(pred)
    if len(g) == 0 or len(p) == 0:
        return int(g == p)
    same = sum((Counter(g) & Counter(p)).values())
    if same == 0:
        return 0
    precision = 1.0 * same / len(p)
    recall = 1.0 * same / len(g)
    return (2 * precision * recall) / (precision + recall)


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence of token lists a (len m) and b (len n).

    Bit-parallel (Hyyro 2004): bit i of `v` is 1 while a[i] is still unmatched; one big-int add/or per token of b,
    so O(n * m / 64) machine words instead of rouge_chinese's O(n * m) dict-based DP. Same integer result.
    """
    if not a or not b:
        return 0
    match: dict = {}
    for i, tok in enumerate(a):
        match[tok] = match.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & match.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


_ROUGE = None


def _rouge_tokens(spaced: str) -> list[str]:
    """rouge_chinese 1.0.3's view of a space-joined text: cut into sentences (its own cut_sent), whitespace-normalise
    each non-empty sentence, flatten with split(" "). A whitespace-only sentence survives as one '' token."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_chinese import Rouge
        _ROUGE = Rouge(metrics=["rouge-l"])
    sentences = [" ".join(s.split()) for s in _ROUGE.cut_sent(spaced) if len(s) > 0]
    return [tok for s in sentences for tok in s.split(" ")]


def lawbench_rouge_l(hyps: list[str], refs: list[str]) -> list[float]:
    """Per-pair ROUGE-L F exactly as LawBench's compute_rouge + rouge_chinese 1.0.3 Rouge().get_scores:
    jieba.cut (0.42.1, default dict, HMM) joined by spaces, an empty hyp becomes '无内容', plain LCS over the
    flattened tokens, P = LCS/len(hyp), R = LCS/len(ref), F = 2PR/(P+R+1e-8). Raises ValueError for an empty ref."""
    import jieba
    out = []
    for hyp, ref in zip(hyps, refs, strict=True):
        h = " ".join(jieba.cut(hyp))
        h = h if h.strip() != "" else "无内容"
        h_toks, r_toks = _rouge_tokens(h), _rouge_tokens(" ".join(jieba.cut(ref)))
        if not r_toks:
            raise ValueError("reference is empty")
        llcs = lcs_length(r_toks, h_toks)
        r, p = llcs / len(r_toks), llcs / len(h_toks)
        out.append(2.0 * ((p * r) / (p + r + 1e-8)))
    return out


def lawbench_article_numbers(pred: str) -> set[int]:
    """3-1 parser: split on 、; per chunk 万元->元, drop 第…款, 第X条 -> X, cn2an.transform, keep the FIRST \\d+.
    So '刑法第264条，第67条' -> {264} and '根据2017年修正的刑法，第264条' -> {2017}."""
    import cn2an
    found = []
    for chunk in pred.split("、"):
        chunk = chunk.replace("万元", "元")
        chunk = re.sub(r"第(.*?)款", "", chunk)
        chunk = re.sub(r"第(.*?)条", lambda m: m.group(1), chunk)
        chunk = cn2an.transform(chunk, "cn2an")
        numbers = re.findall(r"\d+", chunk)
        if numbers:
            found.append(int(numbers[0]))
    return set(found)


def lawbench_term_months(pred: str) -> int | None:
    """3-4/3-5 parser: cn2an.transform the whole text; the first '\\d+个月', else the first '\\d+月', else the first
    '\\d+年' x 12; None = abstention. So '1年6个月' -> 6 and '2016年3月28日 …' -> 3."""
    import cn2an
    text = cn2an.transform(pred, "cn2an")
    months = [int(m[:-2]) for m in re.findall(r"\d+个月", text)] + [int(m[:-1]) for m in re.findall(r"\d+月", text)]
    if months:
        return months[0]
    years = re.findall(r"\d+年", text)
    return int(years[0][:-1]) * 12 if years else None


def lawbench_ie_entities(pred: str) -> dict[str, str]:
    """2-6 parser: for each entity type, every occurrence followed immediately by ':' or '：' (and not ending within
    the last 2 characters) gives value = rest .strip()ed, cut at the first '\\n' or ' '; '无'/'未提及' ignored;
    later occurrences overwrite earlier ones."""
    out = {}
    for etype in IE_ENTITY_TYPES:
        for m in re.finditer(re.escape(etype), pred):
            end = m.end()
            if end >= len(pred) - 2:
                continue
            if pred[end] == ":" or pred[end] == "：":
                value = re.split("\n| ", pred[end + 1:].strip())[0].strip()
                if value != "无" and value != "未提及":
                    out[etype] = value
    return out


def lawbench_ie_reference(refr: str, i: int) -> dict[str, str]:
    """2-6 reference 'type:value;type:value' -> dict (value = text between the first and second ':')."""
    out = {}
    if refr.strip() == "":
        return out
    for seg in refr.split(";"):
        parts = seg.split(":")
        if len(parts) < 2:
            raise BadItem(i, "refr", f"expected 'type:value;...', got segment {seg!r}")
        out[parts[0]] = parts[1]
    return out


# --- Per-task score functions: items (origin_prompt, prediction, refr) in file order -> {score, abstention_rate}

def _expect(ok: bool, i: int, refr: str, what: str):
    if not ok:
        raise BadItem(i, "refr", f"expected {what}, got {refr[:60]!r}")


def _multi_choice_task(items, options, gold_of) -> dict:
    """Accuracy with lawbench_multi_choice; gold_of(i, refr) -> gold option, or None to skip the item (2-2 赔偿)."""
    scores, abstentions = [], 0
    for i, it in enumerate(items):
        gold = gold_of(i, it["refr"])
        if gold is None:
            continue
        correct, abstained = lawbench_multi_choice(it["prediction"], options, gold)
        scores.append(correct)
        abstentions += abstained
    if not scores:
        raise BadItem(len(items) - 1, "refr", "no item left to score")
    return {"score": plain_mean(scores), "abstention_rate": abstentions / len(items)}


def _letter_at(pos: int, letters: str, what: str):
    def gold_of(i, refr):
        _expect(len(refr) > pos and refr[pos] in letters, i, refr, what)
        return refr[pos]
    return gold_of


def _label_set_task(items, labels, gold_of) -> dict:
    """Mean per-item set F1 between gold_of(i, refr) and every label found in the prediction; abstention = none found."""
    scores, abstentions = [], 0
    for i, it in enumerate(items):
        found = lawbench_labels_found(it["prediction"], labels)
        abstentions += len(found) == 0
        scores.append(lawbench_set_f1(set(gold_of(i, it["refr"])), set(found)))
    return {"score": plain_mean(scores), "abstention_rate": abstentions / len(items)}


def _rouge_task(items, ref_of=lambda refr: refr) -> dict:
    try:
        fs = lawbench_rouge_l([it["prediction"] for it in items], [ref_of(it["refr"]) for it in items])
    except ValueError:
        i = next(i for i, it in enumerate(items) if not _rouge_tokens(ref_of(it["refr"]).strip()))
        raise BadItem(i, "refr", "empty reference (the official ROUGE raises 'Reference is empty')") from None
    return {"score": plain_mean(fs), "abstention_rate": 0.0}


def score_1_1(items):  # article recitation: ROUGE-L vs refr without "答案:"
    return _rouge_task(items, lambda refr: refr.replace("答案:", ""))


def score_1_2(items):  # JEC-KD: refr '正确答案：X。'
    return _multi_choice_task(items, ["A", "B", "C", "D"], _letter_at(5, "ABCD", "'正确答案：X。' with X in A-D"))


def score_2_1(items, data_dir=None):  # proofreading: ChERRANT char-level F0.5, in its own module (imported only when
    import cherrant  # needed); data_dir: 2-1's resources, LawBench's evaluation/utils/data (score_file passes it)
    return cherrant.score_2_1(items, data_dir=data_dir)


def score_2_2(items):  # dispute focus: refr '争议焦点类别：X。'; gold '赔偿' (not a label) is skipped
    def gold_of(i, refr):
        if refr[7:-1] == "赔偿":
            return None
        _expect(refr.startswith("争议焦点类别：") and refr[7:-1] in DISPUTE_FOCUS_LABELS, i, refr,
                "'争议焦点类别：X。' with X one of the 16 labels")
        return refr[7:-1]
    return _multi_choice_task(items, DISPUTE_FOCUS_LABELS, gold_of)


def score_2_3(items):  # marriage classification: refr '类别:a、b。'
    def gold_of(i, refr):
        golds = refr[3:-1].split("、")
        _expect(refr.startswith("类别:") and refr.endswith("。") and all(g in MARRIAGE_LABELS for g in golds),
                i, refr, "'类别:a、b。' with labels from the 20 of 2-3")
        return golds
    return _label_set_task(items, MARRIAGE_LABELS, gold_of)


def score_2_4(items):  # consultation topic: refr is the label itself
    def gold_of(i, refr):
        _expect(refr in TOPIC_LABELS, i, refr, "one of the 20 topic labels")
        return refr
    return _multi_choice_task(items, TOPIC_LABELS, gold_of)


def score_2_5(items):  # reading comprehension: char F1 of the whole prediction vs refr without "回答:"
    fs = [lawbench_char_f1(it["refr"].replace("回答:", ""), it["prediction"]) for it in items]
    return {"score": plain_mean(fs), "abstention_rate": 0.0}


def score_2_6(items):  # information extraction; the official abstention key is misspelled, so it reports 0
    total = 0
    for i, it in enumerate(items):
        pred, ref = lawbench_ie_entities(it["prediction"]), lawbench_ie_reference(it["refr"], i)
        if not ref:
            total += 1 if not pred else 0
            continue
        matched = [lawbench_char_f1(ref[t], v) for t, v in pred.items() if t in ref]
        p = plain_sum(matched) / len(pred) if len(pred) > 0 else 0
        r = plain_sum(matched) / len(ref)
        total += 2 * p * r / (p + r + 1e-10)
    return {"score": total / len(items), "abstention_rate": 0.0}


def score_2_7(items):  # opinion summarisation
    return _rouge_task(items)


def score_2_8(items):  # argument mining: refr '[正确答案]X<eoa>'
    return _multi_choice_task(items, ["A", "B", "C", "D", "E"],
                              _letter_at(6, "ABCDE", "'[正确答案]X<eoa>' with X in A-E"))


def score_2_9(items):  # event detection: refr 'a;b'
    return _label_set_task(items, EVENT_LABELS, lambda i, refr: refr.split(";"))


def score_2_10(items):  # trigger words: position-aligned char F1 over ';'-split lists
    total = 0
    for it in items:
        golds, preds = it["refr"].split(";"), it["prediction"].split(";")
        matched = [lawbench_char_f1(g, p) for g, p in zip(golds, preds)]
        p = plain_sum(matched) / len(preds)
        r = plain_sum(matched) / len(golds)
        total += 2 * p * r / (p + r + 1e-10)
    return {"score": total / len(items), "abstention_rate": 0.0}


def score_3_1(items):  # article prediction: refr '法条:刑法第234、275条'
    scores, abstentions = [], 0
    for i, it in enumerate(items):
        refr = it["refr"]
        _expect(refr.startswith("法条:刑法第") and refr.endswith("条"), i, refr, "'法条:刑法第N、M条'")
        parts = refr.replace("法条:刑法第", "").replace("条", "").split("、")
        _expect(all(p.isdigit() and int(p) <= 490 for p in parts), i, refr, "article numbers <= 490")
        pred = lawbench_article_numbers(it["prediction"])
        abstentions += len(pred) == 0
        scores.append(lawbench_set_f1(pred, {int(p) for p in parts}))
    return {"score": plain_mean(scores), "abstention_rate": abstentions / len(items)}


def score_3_2(items):  # scenario-based article
    return _rouge_task(items)


def score_3_3(items):  # charge prediction: refr '罪名:a;b'
    def gold_of(i, refr):
        _expect(refr.startswith("罪名:"), i, refr, "'罪名:a;b'")
        return refr.replace("罪名:", "").split(";")
    return _label_set_task(items, CHARGE_LABELS, gold_of)


def score_3_4(items):  # prison term: normalised mean log distance; 死刑/无期 items skipped
    distances, abstentions = [], 0
    for i, it in enumerate(items):
        refr = it["refr"]
        if "死刑" in refr or "无期" in refr:
            continue
        gold = refr.replace("刑期:", "").replace("个月", "")
        _expect(refr.startswith("刑期:") and refr.endswith("个月") and gold.isdigit(), i, refr, "'刑期:N个月'")
        months = lawbench_term_months(it["prediction"])
        abstentions += months is None
        distances.append(utils.log_distance(months, int(gold)))
    if not distances:
        raise BadItem(len(items) - 1, "refr", "every item is 死刑/无期: nothing to score")
    return {"score": (LOG_216 - plain_mean(distances)) / LOG_216, "abstention_rate": abstentions / len(items)}


score_3_5 = score_3_4  # same function with the statutes in the prompt


def score_3_6(items):  # JEC-AC: refr '正确答案:X。'
    return _multi_choice_task(items, ["A", "B", "C", "D"], _letter_at(5, "ABCD", "'正确答案:X。' with X in A-D"))


def score_3_7(items):  # crime amount: gold equals ANY number in the prediction
    scores, abstentions = [], 0
    for i, it in enumerate(items):
        refr = it["refr"]
        amount = refr.replace("上文涉及到的犯罪金额:", "")
        ok = refr.startswith("上文涉及到的犯罪金额:") and refr.endswith("元。") and "千元" not in amount and "万" not in amount
        try:
            gold = float(amount.replace("元。", "")) if ok else None
        except ValueError:
            gold = None
        _expect(gold is not None, i, refr, "'上文涉及到的犯罪金额:N元。'")
        numbers = [float(x) for x in re.findall(r"\d+\.?\d*", it["prediction"])]
        abstentions += len(numbers) == 0
        scores.append(int(gold in numbers))
    return {"score": plain_mean(scores), "abstention_rate": abstentions / len(items)}


def score_3_8(items):  # legal consultation
    return _rouge_task(items)


TASK_SCORERS = {  # task id -> score function (items -> {score, abstention_rate})
    "1-1": score_1_1, "1-2": score_1_2,
    "2-1": score_2_1, "2-2": score_2_2, "2-3": score_2_3, "2-4": score_2_4, "2-5": score_2_5, "2-6": score_2_6,
    "2-7": score_2_7, "2-8": score_2_8, "2-9": score_2_9, "2-10": score_2_10,
    "3-1": score_3_1, "3-2": score_3_2, "3-3": score_3_3, "3-4": score_3_4, "3-5": score_3_5, "3-6": score_3_6,
    "3-7": score_3_7, "3-8": score_3_8}
assert list(TASK_SCORERS) == list(LAWBENCH_TASKS)


# --- Prediction files in LawBench's layout: <dir>/<model>/<task>.json = {"0": item, "1": item, ...}

PRED_FIELDS = ("origin_prompt", "prediction", "refr")


def read_predictions(path) -> list[dict]:
    """Read a LawBench prediction file in the official order "0".."N-1" (the dict's own key order does not matter).
    Anything the official scorer would crash on is a one-line DataError naming the file, the item and the field."""
    path = Path(path)
    data = utils.read_json(path)
    if not isinstance(data, dict) or not data:
        raise DataError(path, None, None, 'expected a non-empty JSON object {"0": {...}, "1": {...}, ...}',
                        "bad_schema")
    items = []
    for i in range(len(data)):
        key = str(i)
        if key not in data:
            extra = sorted(k for k in data if not (k.isdigit() and int(k) < len(data)))
            raise DataError(path, None, None, f'missing item "{key}": keys must be "0".."{len(data) - 1}"'
                            + (f" (unexpected keys: {extra[:3]})" if extra else ""), "bad_schema")
        item = data[key]
        if not isinstance(item, dict):
            raise DataError(path, None, f'["{key}"]', f"expected an object, got {type(item).__name__}", "bad_schema")
        for name in PRED_FIELDS:
            if name not in item:
                raise DataError(path, None, f'["{key}"].{name}', "missing", "missing_field")
            if name != "origin_prompt" and not isinstance(item[name], str):
                raise DataError(path, None, f'["{key}"].{name}', f"expected a string, got {type(item[name]).__name__}",
                                "bad_field")
        items.append(item)
    return items


def write_predictions(path, items: list[dict], keep: tuple[str, ...] = ()) -> Path:
    """Write items (origin_prompt, prediction, refr) as the official prediction file (indent 4, UTF-8, atomic).
    keep: further fields saved with each item (the scorer reads only the three; e.g. code mode's program)."""
    items = {str(i): {f: it[f] for f in PRED_FIELDS + keep} for i, it in enumerate(items)}
    return utils.write_json(path, items, indent=4)


def score_file(path, task: str | None = None, data_dir=None) -> dict:
    """Score one prediction file; the task id is the file name before the first '.'. -> {score, abstention_rate}
    data_dir: where 2-1 finds its resources (cilin.txt, confusion_dict.txt; default: cherrant's)."""
    path = Path(path)
    task = task or path.name.split(".")[0]
    if task not in TASK_SCORERS:
        raise DataError(path, None, None, f"unknown LawBench task '{task}' (expected one of {', '.join(LAWBENCH_TASKS)})",
                        "unknown_task")
    items = read_predictions(path)
    try:
        result = score_2_1(items, data_dir) if task == "2-1" else TASK_SCORERS[task](items)
    except BadItem as e:
        raise DataError(path, None, f'["{e.index}"].{e.field}', str(e), "bad_field") from None
    return {"score": float(result["score"]), "abstention_rate": float(result.get("abstention_rate", 0.0))}


def _score_job(job: tuple[str, str, str], data_dir=None) -> tuple[str, str, dict | None, str | None, float]:
    """Pool worker: (model, task, path) -> (model, task, result, error line, seconds). User errors become lines."""
    model, task, path = job
    t0 = time.perf_counter()
    try:
        return model, task, score_file(path, task, data_dir), None, time.perf_counter() - t0
    except DataError as e:
        return model, task, None, str(e), time.perf_counter() - t0
    except FileNotFoundError as e:  # 2-1's resource files (cilin.txt, confusion_dict.txt) not where --lawbench_dir says
        return model, task, None, f"{path}: {e}", time.perf_counter() - t0


def find_prediction_files(pred_dir, models=None, skip_tasks=()) -> tuple[list[tuple[str, str, str]], list[str]]:
    """PRED_DIR/<model>/<task>.json (or PRED_DIR/<task>.json for one model) -> jobs (model, task, path), notes."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(pred_dir, None, None, "prediction directory not found", "missing_file")
    model_dirs = [pred_dir] if any(pred_dir.glob("*.json")) else sorted(p for p in pred_dir.iterdir() if p.is_dir())
    jobs, notes = [], []
    for mdir in model_dirs:
        if models and mdir.name not in models:
            continue
        for path in sorted(mdir.glob("*.json")):
            task = path.name.split(".")[0]
            if task in skip_tasks:
                continue
            if task not in TASK_SCORERS:
                notes.append(f"{path}: not a LawBench task file, ignored")
                continue
            jobs.append((mdir.name, task, str(path)))
    if models:
        for m in sorted(set(models) - {j[0] for j in jobs}):
            notes.append(f"model '{m}': no prediction files under {pred_dir}")
    return jobs, notes


def _init_worker():
    import warnings
    warnings.filterwarnings("ignore", module="cn2an")  # cn2an warns on every stray 万/千 it cannot convert
    import jieba
    jieba.setLogLevel(60)
    jieba.initialize()


def score_jobs(jobs, workers: int = 2, progress: bool = True, data_dir=None
               ) -> tuple[list[dict], list[str], list[dict]]:
    """Score (model, task, path) jobs on `workers` processes. -> (rows, error lines, per-file metrics).
    data_dir: 2-1's resources (score_file)."""
    from functools import partial
    from tqdm import tqdm
    # biggest files first so that the two cores finish together
    jobs = sorted(jobs, key=lambda j: -os.path.getsize(j[2]))
    if workers > 1 and len(jobs) > 1:
        _init_worker()  # load jieba's dictionary once, before fork, so every worker inherits it
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
            results = list(tqdm(pool.imap_unordered(partial(_score_job, data_dir=data_dir), jobs), total=len(jobs),
                                disable=not progress,
                                desc="scoring", unit="file"))
    else:
        _init_worker()
        results = [_score_job(j, data_dir) for j in tqdm(jobs, disable=not progress, desc="scoring", unit="file")]
    order = {t: k for k, t in enumerate(LAWBENCH_TASKS)}
    results.sort(key=lambda r: (r[0], order[r[1]]))
    rows = [{"task": t, "model_name": m, "score": res["score"], "abstention_rate": res["abstention_rate"]}
            for m, t, res, err, _ in results if res is not None]
    errors = [err for *_, err, _ in results if err is not None]
    metrics = [{"model": m, "task": t, "seconds": round(s, 4), "ok": err is None} for m, t, _, err, s in results]
    return rows, errors, metrics


def paper_table(rows: list[dict], fill: dict | None = None) -> tuple[list[dict], list[str]]:
    """Per model: Memorization / Understanding / Application = mean of the 1-x / 2-x / 3-x task scores, Average =
    mean of all 20, all x100 (utils.category_means). Tasks not scored are taken from `fill` ({model: {task: score}})
    when given; a model still missing tasks gets blank averages and a note."""
    by_model: dict[str, dict[str, float]] = {}
    for r in rows:
        by_model.setdefault(r["model_name"], {})[r["task"]] = r["score"]
    table, notes = [], []
    for model, scores in by_model.items():
        filled = [t for t in LAWBENCH_TASKS if t not in scores and t in (fill or {}).get(model, {})]
        for t in filled:
            scores[t] = fill[model][t]
        if filled:
            notes.append(f"{model}: {', '.join(filled)} taken from the official results file, not scored here")
        missing = [t for t in LAWBENCH_TASKS if t not in scores]
        row = {"model_name": model}
        if missing:
            notes.append(f"{model}: no score for {', '.join(missing)}: averages left blank")
            row.update({k: None for k in [*LAWBENCH_CATEGORIES, "Average"]})
        else:
            row.update(utils.category_means(scores))
        table.append(row)
    return table, notes


def table_markdown(table: list[dict]) -> str:
    cols = [*LAWBENCH_CATEGORIES, "Average"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for row in table:
        lines.append(f"| {row['model_name']} | "
                     + " | ".join("" if row[c] is None else f"{row[c]:.2f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path, rows: list[dict], fields: list[str]):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


@dataclasses.dataclass
class ScoreConfig:
    """Score LawBench predictions (<pred_dir>/<model>/<task>.json) exactly like the official scorer."""
    pred_dir: str = dataclasses.field(metadata={"help": "LawBench predictions/ layout: <model>/<task>.json (LexEval: "
                                                        "<model>/<model>_<task>.jsonl)"})
    benchmark: str = dataclasses.field(default="lawbench", metadata={"help": "lawbench or lexeval (section 5b)",
                                                                     "choices": ("lawbench", "lexeval")})
    metric_choice: str = dataclasses.field(default="Accuracy", metadata={
        "help": "LexEval multiple-choice metric, as the official --metrics_choice", "choices": ("Accuracy", "F1")})
    metric_gen: str = dataclasses.field(default="Rouge_L", metadata={
        "help": "LexEval 5_x metric, as the official --metrics_gen (Bertscore / Bartscore need --bert_model)",
        "choices": ("Rouge_L", "Bertscore", "Bartscore")})
    bert_model: str = dataclasses.field(default="", metadata={
        "help": "LexEval: BERT (Bertscore) or BART (Bartscore) model folder, the official --model_path"})
    out: str = dataclasses.field(default="scores.csv", metadata={"help": "per-task CSV; the table goes beside it"})
    models: str = dataclasses.field(default="", metadata={"help": "comma-separated model folders (default: all)"})
    skip_tasks: str = dataclasses.field(default="", metadata={"help": "comma-separated task ids not to score"})
    fill_from: str = dataclasses.field(default="", metadata={
        "help": "official results.csv: tasks without predictions (e.g. 2-9, 2-10) are taken from it for the table"})
    workers: int = dataclasses.field(default=0, metadata={"help": "processes, one file each at a time (0: all cores)",
                                                          "min": 0})
    lawbench_dir: str = dataclasses.field(default="", metadata={
        "help": "LawBench copy whose evaluation/utils/data holds 2-1's resources (default: ../shared/lawbench)"})


def _preflight_score(cfg: ScoreConfig):
    utils.check_fields(cfg)
    if cfg.metric_gen != "Rouge_L" and not cfg.bert_model:
        raise DataError("--metric_gen", None, None, f"{cfg.metric_gen} needs the model's weights: pass --bert_model "
                        "DIR (not offered without them)", reason="bad_flag")
    if cfg.bert_model and not Path(cfg.bert_model).is_dir():
        raise DataError(cfg.bert_model, None, None, "folder not found (--bert_model)", reason="missing_file")
    if cfg.benchmark == "lawbench" and (cfg.metric_choice, cfg.metric_gen, cfg.bert_model) != ("Accuracy", "Rouge_L",
                                                                                              ""):
        raise DataError("--metric_choice", None, None, "--metric_choice / --metric_gen / --bert_model are LexEval's "
                        "(--benchmark lexeval)", reason="bad_flag")
    if Path(cfg.out).is_dir():
        raise DataError("--out", None, None, f"{cfg.out} is a folder (expected the path of the scores .csv)",
                        reason="bad_flag")
    utils.check_out_dir(Path(cfg.out).parent, "--out")  # writable, checked before anything is scored
    if cfg.fill_from and not Path(cfg.fill_from).is_file():
        raise DataError(cfg.fill_from, None, None, "file not found (--fill_from)", reason="missing_file")
    if cfg.lawbench_dir and not Path(cfg.lawbench_dir).is_dir():
        raise DataError(cfg.lawbench_dir, None, None, "folder not found (--lawbench_dir)", reason="missing_file")


def write_score_files(cfg: ScoreConfig, rows: list[dict], fields: list[str], table: list[dict],
                      table_fields: list[str], markdown: str, metrics: list[dict]) -> Path:
    """The files of `score` on either benchmark: OUT (per task), OUT_table.csv / _table.md (the ability table),
    OUT.config.json and OUT_metrics.jsonl. -> OUT without its suffix (the stem of the others)."""
    out = Path(cfg.out)
    stem = out.with_suffix("")
    write_csv(out, rows, fields)
    write_csv(f"{stem}_table.csv", table, table_fields)
    Path(f"{stem}_table.md").write_text(markdown, encoding="utf-8")
    utils.write_json(f"{stem}.config.json", dataclasses.asdict(cfg))
    utils.write_jsonl(f"{stem}_metrics.jsonl", metrics)
    return stem


def cmd_score(cfg: ScoreConfig) -> int:
    utils.lock_run_dir(Path(cfg.out).parent, f".{Path(cfg.out).name}.lock")  # one scorer writes these files at a time
    if cfg.benchmark == "lexeval":
        return score_lexeval(cfg)  # section 5b
    t0 = time.perf_counter()
    models = [m for m in cfg.models.split(",") if m]
    skip = parse_tasks(cfg.skip_tasks, "--skip_tasks") if cfg.skip_tasks else []
    fill = utils.read_scores_csv(cfg.fill_from) if cfg.fill_from else None
    jobs, notes = find_prediction_files(cfg.pred_dir, models, skip)
    if not jobs:
        raise DataError(cfg.pred_dir, None, None, "no <model>/<task>.json prediction files found", "missing_file")
    data_dir = Path(cfg.lawbench_dir) / "evaluation" / "utils" / "data" if cfg.lawbench_dir else None  # for 2-1
    rows, errors, metrics = score_jobs(jobs, cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1),
                                       data_dir=data_dir)
    seconds = time.perf_counter() - t0

    out = Path(cfg.out)
    table, table_notes = paper_table(rows, fill)
    markdown = table_markdown(table)
    stem = write_score_files(cfg, rows, ["task", "model_name", "score", "abstention_rate"], table,
                             ["model_name", *LAWBENCH_CATEGORIES, "Average"], markdown,
                             [*metrics, {"total_seconds": round(seconds, 3), "files": len(jobs), "errors": len(errors)}])

    print(markdown, end="")
    if any(r["Average"] is None for r in table):  # averages left blank: the per-task scores that were computed
        print(task_markdown(rows), end="")
    for line in notes + table_notes:
        print("note:", line)
    for line in errors:
        print("error:", line, file=sys.stderr)
    print(f"scored {len(rows)}/{len(jobs)} files in {seconds:.1f} s")
    utils.done("evaluate.py score", f"{out} (per task), {stem}_table.csv, {stem}_table.md",
               "python plots/plots.py --run RUN (its LawBench bars read RUN/eval*/**/scores*.csv)")
    return 1 if errors else 0


def task_markdown(rows: list[dict]) -> str:
    """Per-task scores (x100), one column per model: what the category table cannot show when tasks are missing."""
    models = list(dict.fromkeys(r["model_name"] for r in rows))
    score = {(r["model_name"], r["task"]): r["score"] for r in rows}
    tasks = [t for t in LAWBENCH_TASKS if any((m, t) in score for m in models)]
    lines = ["| task | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join("" if (m, t) not in score else f"{100 * score[m, t]:.2f}"
                                              for m in models) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------------
# 2. Statute retrieval (BM25 over jieba tokens; LexPro-style retrieval at inference)
# ----------------------------------------------------------------------------------------------------------------------

_PUNCT = set("，。、；：？！“”‘’（）《》【】…—-,.;:?!()[]<>\"' \t\r\n　×")


def bm25_tokens(text: str) -> list[str]:
    """jieba tokens (precise mode) without whitespace / punctuation: the unit BM25 counts."""
    import jieba
    return [t for t in jieba.lcut(text) if t.strip() and not all(c in _PUNCT for c in t)]


class StatuteIndex:
    """BM25 (rank_bm25.BM25Okapi) over the articles of an articles.jsonl
    ({law, article_cn, article_num, article_sub, text, ...}; see ../shared/data/laws/README.md).

    law: keep only this law (e.g. "刑法"); None or "all" keeps every law in the file.
    """

    def __init__(self, path, law: str | None = "刑法"):
        from rank_bm25 import BM25Okapi
        self.path, self.articles = str(path), []
        for line, rec in utils.iter_records(path):
            for f in ("law", "article_cn", "text"):
                utils.require(rec, f, path, line)
            utils.require(rec, "article_num", path, line, kind=int)
            if law in (None, "", "all") or rec["law"] == law:
                self.articles.append(rec)
        if not self.articles:
            raise DataError(path, None, "law", f"no article of law {law!r} in the file", reason="empty_index")
        self.bm25 = BM25Okapi([bm25_tokens(a["article_cn"] + a["text"]) for a in self.articles])

    def search(self, query: str, k: int = 3) -> list[dict]:
        """The k articles with the highest BM25 score for `query` (ties: file order)."""
        scores = self.bm25.get_scores(bm25_tokens(query))
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
        return [self.articles[i] for i in order]

    def context(self, query: str, k: int = 3) -> str:
        """Retrieved articles as the text prepended to a prompt."""
        lines = [f"《{a['law']}》{a['article_cn']}：{a['text']}" for a in self.search(query, k)]
        return "以下是可能相关的法条：\n" + "\n".join(lines) + "\n\n"


# ----------------------------------------------------------------------------------------------------------------------
# 3. Generation (LawBench: 20 tasks, zero- and one-shot; predictions in LawBench's own layout)
# ----------------------------------------------------------------------------------------------------------------------
# Layout written (what the official scorer and `evaluate.py score` read):
#   <out>/zero_shot/<model_name>/<task>.json = {"0": {"origin_prompt": [{"role": "HUMAN", "prompt": P}],
#                                                    "prediction": "...", "refr": answer}, "1": ...}
# with P = instruction + "\n" + question (exactly what LawBench's own generation sent; task 2-1's scorer cuts the
# source sentence out of it). Resume: finished tasks are skipped; a task in progress keeps its finished items in
# <task>.json.partial (one JSON line per item) until the task file is written atomically.

SHOTS = {"zero": "zero_shot", "one": "one_shot"}


def shot_dirs(cfg) -> dict[str, str]:
    """{shot: its output folder} for --shots on cfg's benchmark ('both': LawBench zero + one, LexEval zero + few)."""
    names = LEXEVAL_SETTINGS if cfg.benchmark == "lexeval" else SHOTS
    return dict(names) if cfg.shots == "both" else {cfg.shots: names[cfg.shots]}


@dataclass
class GenerateConfig:
    """LawBench generation: predictions in LawBench's layout <out>/<shot>_shot/<model_name>/<task>.json."""
    model: str = field(metadata={"help": "Hugging Face model folder"})
    out: str = field(metadata={"help": "output folder (predictions layout)"})
    lawbench_dir: str = field(default="", metadata={"help": "LawBench copy with data/zero_shot and data/one_shot "
                                                            "(required with --benchmark lawbench)"})
    benchmark: str = field(default="lawbench", metadata={  # section 5b: LexEval
        "help": "lawbench, or lexeval: <out>/<zero|few>_shot/<model_name>/<model_name>_<task>.jsonl from "
                "--lexeval_dir", "choices": ("lawbench", "lexeval")})
    lexeval_dir: str = field(default="", metadata={"help": "LexEval copy with data/ and examples/ (--benchmark "
                                                           "lexeval)"})
    shots: str = field(default="zero", metadata={"help": "LawBench: zero | one | both; LexEval: zero | few | both "
                                                         "(checked per benchmark)"})
    tasks: str = field(default="all", metadata={"help": "'all' or comma-separated task ids, e.g. 1-1,3-3 (LexEval: "
                                                        "1_1,5_3; all = those with data)"})
    max_items: int | None = field(default=None, metadata={"help": "first N items per task (default: all)", "min": 1})
    model_name: str | None = field(default=None, metadata={"help": "folder name under <shot>; default: the model "
                                                                   "folder's name (a run's export: the run's, e.g. "
                                                                   "sft2 for runs/sft2/final)"})
    backend: str = field(default="hf", metadata={"help": "generation backend", "choices": ("hf", "vllm")})
    raw: bool = field(default=False, metadata={"help": "raw completion instead of the chat template"})
    max_new_tokens: int = field(default=1024, metadata={"help": "papers' setting: 1024, greedy", "min": 1})
    batch_size: int = field(default=8, metadata={"help": "generation batch size (hf; prompts of similar length)",
                                                   "min": 1})
    save_every: int | None = field(default=None, metadata={
        "help": "items per generate call / progress save within a task (default: 64 hf, 4096 vllm: the engine "
                "schedules a whole task at once)", "min": 1})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": utils.MAX_PROMPT_TOKENS_HELP, "min": 1})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM on GPU: share of GPU memory for "
                                                                         "weights + KV cache", "min": 0.01, "max": 1})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM on GPU: GPUs per engine", "min": 1})
    vllm_kv_bytes: int = field(default=1 << 30, metadata={"help": "vLLM on CPU: KV cache bytes", "min": 1})
    rag: str | None = field(default=None, metadata={"help": "articles.jsonl: BM25 top-k prepended to 3-x prompts"})
    rag_k: int = field(default=3, metadata={"help": "articles retrieved per prompt", "min": 1})
    rag_law: str = field(default="刑法", metadata={"help": "law to retrieve from ('all': every law in the file)"})
    code: bool = field(default=False, metadata={  # section 3b
        "help": "also the code mode on 3-7 (same items): the model writes Python, run in a sandbox; "
                "predictions under <model_name>-code, both modes side by side in <out>/code_mode.json"})
    code_wall_s: float = field(default=10.0, metadata={"help": "wall-time limit per program (code mode)",
                                                       "min": 0.5, "max": 600})
    code_unsandboxed: bool = field(default=False, metadata={
        "help": "code mode where no OS sandbox can be set up (no bubblewrap / user namespaces): run the programs as "
                "plain child processes (rlimits only; they can read and write what you can). Off: --code stops"})
    overwrite: bool = field(default=False, metadata={
        "help": "regenerate the prediction files of --model_name (needed when another model made them)"})


def parse_tasks(spec: str, flag: str = "--tasks") -> list[str]:
    """'all' -> the 20 tasks; '1-1,3-3' (commas or spaces) -> those, validated."""
    if spec.strip() in ("", "all"):
        return list(LAWBENCH_TASKS)
    tasks = [t for t in re.split(r"[,\s]+", spec.strip()) if t]
    bad = [t for t in tasks if t not in LAWBENCH_TASKS]
    if bad:
        raise DataError(flag, None, None, f"unknown LawBench task(s) {bad}; known: {', '.join(LAWBENCH_TASKS)}",
                        reason="bad_flag")
    return tasks


def load_lawbench_task(lawbench_dir, shot: str, task: str, max_items: int | None = None) -> list[dict]:
    """data/<shot>_shot/<task>.json -> [{instruction, question, answer}] (fields checked, one-line errors)."""
    path = Path(lawbench_dir) / "data" / SHOTS[shot] / f"{task}.json"
    items = []
    for line, rec in utils.iter_records(path):
        for f in ("instruction", "question", "answer"):
            utils.require(rec, f, path, line, allow_empty=(f != "question"))
        items.append(rec)
        if max_items is not None and len(items) >= max_items:
            break
    return items


def lawbench_prompt(item: dict, context: str = "") -> str:
    """The user turn: [retrieved articles] + instruction + "\\n" + question."""
    return context + item["instruction"] + "\n" + item["question"]


def load_done(task_file: Path) -> dict[int, dict]:
    """Items already generated for a task: the finished task file and/or its .partial progress lines."""
    done: dict[int, dict] = {}
    if task_file.is_file():
        for i, (_, rec) in enumerate(utils.iter_records(task_file)):
            done[i] = rec
    partial = task_file.with_name(task_file.name + ".partial")  # <task>.json.partial (LexEval: <...>.jsonl.partial)
    if partial.is_file():
        for _, rec in utils.iter_records(partial, on_error="skip", errors={}):  # skips a cut-off last line
            if isinstance(rec.get("index"), int) and "item" in rec:
                done[rec["index"]] = rec["item"]
    return done


# Which model made a prediction file: <task>.json.model beside it (not *.json, so scorers never read it) holds the
# model's path, a fingerprint of its weights / config / tokenizer and the generation settings (utils.model_identity).
# Predictions (finished or .partial) made by another model or with other settings are never kept under this name
# (utils.prepare_outputs: the run-folder rule, per file, as one folder holds many models' files).

def made_by(cfg: GenerateConfig) -> dict:
    return utils.model_identity(cfg.model, backend=cfg.backend, raw=cfg.raw, max_new_tokens=cfg.max_new_tokens,
                                max_prompt_tokens=cfg.max_prompt_tokens)  # the budget decides which items are refused


def check_made_by(cfg: GenerateConfig, task_files: list[Path], want: dict) -> None:
    """Rank 0, before any work: OUT locked, and every selected prediction file made by `want` (or --overwrite)."""
    utils.lock_run_dir(cfg.out)  # one run at a time writes OUT
    utils.prepare_outputs(task_files, want, cfg.overwrite, f"not regenerated for {want['model']}; pass --overwrite "
                                                           f"to regenerate it, or another --model_name")


def _rank_world(backend: str) -> tuple[int, int]:
    """(rank, world size) (utils.dist_info). Under torchrun with WORLD_SIZE > 1, or for vLLM (a world of one, so that
    one engine serves every task: utils.generate closes an engine that made its own process group), the process group
    is started here (utils.dist_init); a plain HF run is a world of one without a process group."""
    import torch.distributed as dist
    if (utils.dist_info().world > 1 or backend == "vllm") and not dist.is_initialized():
        utils.dist_init()
    rank, _, world, _ = utils.dist_info()
    return rank, world


def prompt_lengths(model_dir, prompts: list[str], chat: bool = True) -> list[int]:
    """Token counts of the prompts as generate() sends them (chat template or raw)."""
    return [len(x) for x in utils.encode_prompts(utils.load_tokenizer(model_dir), prompts, chat)]


def data_parallel_rank(rank: int, world: int, tensor_parallel_size: int = 1) -> tuple[int, int]:
    """(data-parallel rank, data-parallel size) of torchrun rank `rank` of `world` when every vLLM engine spans
    tensor_parallel_size consecutive ranks (the external_launcher layout: data parallel x tensor parallel, as
    vllm_llm_kwargs configures it). The ranks of one tensor-parallel group share a data-parallel rank: they must
    send their engine the same prompts (different prompts hang the engine). A world that is not a multiple of
    tensor_parallel_size is a one-line error. A world of one (no torchrun): the engine starts its own workers."""
    if world == 1:
        return 0, 1
    if world % tensor_parallel_size:
        raise DataError("--tensor_parallel_size", None, None, f"{tensor_parallel_size} GPUs per vLLM engine do not "
                        f"divide the {world} torchrun ranks (each engine spans tensor_parallel_size consecutive "
                        "ranks): use a --nproc_per_node that is a multiple of it", reason="bad_flag")
    return rank // tensor_parallel_size, world // tensor_parallel_size


def generation_settings(cfg: GenerateConfig) -> dict:
    """utils.generate_within_budget's settings from the flags (greedy, seed 0)."""
    return dict(backend=cfg.backend, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, chat=not cfg.raw,
                gpu_memory_utilization=cfg.gpu_memory_utilization, tensor_parallel_size=cfg.tensor_parallel_size,
                kv_cache_bytes=cfg.vllm_kv_bytes)


def generate_lawbench(cfg: GenerateConfig) -> dict:
    """Generate every (shot, task) file not already complete. Returns {shot/task: items generated now}.

    Data parallel under torchrun (world > 1): every rank generates the items i with i % world == rank of each chunk
    on its own GPU; rank 0 gathers the shares and alone writes the files (.partial, task file, .json.model,
    refused.jsonl, config), exactly as a single process would. The report gets "per_rank": items each rank made.
    With vLLM and --tensor_parallel_size N, the N consecutive ranks of an engine get the same items (their group's
    first rank reports them) and the engine is sized once for the run: the longest prompt within the budget +
    max_new_tokens, the same on every rank."""
    rank, world = _rank_world(cfg.backend)
    tp = cfg.tensor_parallel_size if cfg.backend == "vllm" else 1
    dp_rank, dp_world = data_parallel_rank(rank, world, tp)
    lead = rank % tp == 0  # the rank that reports its tensor-parallel group's completions
    shots = list(shot_dirs(cfg))
    tasks = parse_tasks(cfg.tasks)
    code_mode_tasks(cfg)  # --code checked before any work (section 3b)
    name = cfg.model_name or utils.run_name(cfg.model)
    want = made_by(cfg)
    if rank == 0:  # a refusal here ends rank 0, and torchrun then stops the other ranks
        check_made_by(cfg, [Path(cfg.out) / SHOTS[s] / n / f"{t}.json" for s in shots for n, ts in
                            ((name, tasks), (f"{name}-code", code_mode_tasks(cfg))) for t in ts], want)
        utils.save_config(cfg, cfg.out)
    utils.barrier()  # the other ranks read the files only after rank 0 has checked (or removed) them
    index = StatuteIndex(cfg.rag, cfg.rag_law) if cfg.rag else None
    budget = utils.prompt_budget(cfg.model, cfg.max_new_tokens, cfg.max_prompt_tokens)
    save_every = cfg.save_every or (4096 if cfg.backend == "vllm" else 64)
    report, mine_total = {}, 0
    work = {}  # every (shot, task)'s items and prompts first, to size the vLLM engine once for the whole run
    for shot in shots:
        for task in tasks:
            items = load_lawbench_task(cfg.lawbench_dir, shot, task, cfg.max_items)
            use_rag = index is not None and task.startswith("3-")
            work[shot, task] = items, [lawbench_prompt(it, index.context(it["question"], cfg.rag_k) if use_rag else "")
                                       for it in items]
    max_model_len = None
    if cfg.backend == "vllm":  # no engine rebuilt between tasks, no engine sized to the model's whole context
        n_tok = prompt_lengths(cfg.model, [p for _, ps in work.values() for p in ps], chat=not cfg.raw)
        max_model_len = max([n for n in n_tok if n <= budget], default=1) + cfg.max_new_tokens
    from tqdm import tqdm
    for shot in shots:
        for task in tasks:
            items, prompts = work[shot, task]
            task_file = Path(cfg.out) / SHOTS[shot] / name / f"{task}.json"
            done = {i: r for i, r in load_done(task_file).items()
                    if i < len(items) and r.get("origin_prompt") == [{"role": "HUMAN", "prompt": prompts[i]}]}
            todo = [i for i in range(len(items)) if i not in done]
            report[f"{SHOTS[shot]}/{task}"] = len(todo)
            partial = task_file.with_suffix(".json.partial")
            if not todo and task_file.is_file() and not partial.is_file():
                continue  # complete, with exactly these prompts
            if rank == 0:
                partial.parent.mkdir(parents=True, exist_ok=True)
                utils.write_json(utils.made_by_path(task_file), want)
                utils.drop_torn_tail(partial)  # a line cut off by the interruption (load_done skipped it)
            bar = tqdm(total=len(todo), desc=f"{SHOTS[shot]} {task}", disable=not todo or rank > 0)
            for start in range(0, len(todo), save_every):
                chunk = todo[start:start + save_every]
                mine = [i for i in chunk if i % dp_world == dp_rank]  # this rank's share (all in a world of one)
                mine_total += len(mine) if lead else 0
                # a prompt over the budget is refused (LawBench items are not cut): empty prediction, reason recorded
                gen, over = utils.generate_within_budget(cfg.model, {i: prompts[i] for i in mine}, budget,
                                                         world=world, max_model_len=max_model_len,
                                                         **generation_settings(cfg))
                gen, over = (gen, over) if lead else ({}, {})  # the group's other ranks: the same, reported once
                refused = [{"shot": SHOTS[shot], "task": task, "index": i, "prompt_tokens": n, "budget": budget,
                            "reason": "prompt longer than the budget (context - max_new_tokens)"}
                           for i, n in over.items()]
                gen, refused = _gather_shares(gen, refused)
                if rank > 0:
                    continue
                refused.sort(key=lambda r: r["index"])
                if refused:
                    report["refused"] = report.get("refused", 0) + len(refused)
                    for r in refused:
                        utils.append_jsonl(Path(cfg.out) / "refused.jsonl", r)
                outs = [gen.get(i, "") for i in chunk]
                for i, pred in zip(chunk, outs):
                    done[i] = {"origin_prompt": [{"role": "HUMAN", "prompt": prompts[i]}],
                               "prediction": pred, "refr": items[i]["answer"]}
                    utils.append_jsonl(partial, {"index": i, "item": done[i]})
                bar.update(len(chunk))
            bar.close()
            if rank == 0:
                write_predictions(task_file, [done[i] for i in range(len(items))])
                partial.unlink(missing_ok=True)
            utils.barrier()  # the task file is complete before any rank reads the next one
    if world > 1:
        print(f"rank {rank}/{world}: generated {mine_total} items", flush=True)
        report["per_rank"] = list(_gather_shares({rank: mine_total}, [])[0].values())  # rank order
    if cfg.code and rank == 0:  # section 3b, on rank 0 only: the same items again, the model writing a program
        report["code_mode"] = generate_code_mode(cfg, shots, name, want)
    return report


def _gather_shares(gen: dict, refused: list) -> tuple[dict, list]:
    """Rank 0 gets every rank's {index: prediction} and refused records merged (other ranks: their own back)."""
    rank, _, world, _ = utils.dist_info()
    if world == 1:
        return gen, refused
    import torch.distributed as dist
    shares = [None] * world if rank == 0 else None
    dist.gather_object((gen, refused), shares, dst=0)
    if shares is None:
        return gen, refused
    return {i: p for g, _ in shares for i, p in g.items()}, [r for _, rs in shares for r in rs]


# ----------------------------------------------------------------------------------------------------------------------
# 3b. Tool use: the model writes Python (LawBench 3-7), run in a sandbox that assumes the code is hostile
# ----------------------------------------------------------------------------------------------------------------------
# InternLM-Law (tool use, Fig. 7): for the crime-amount task the model writes a program that prints the amount; the
# printed output is the prediction, scored by the unchanged official scorer (score_3_7). `generate --code` runs this
# code mode on the same items as the direct answers, into <out>/<shot>/<model_name>-code/<task>.json (LawBench's
# layout; each item also keeps the completion, the program and its execution record), and reports both side by side.
#
# Each program runs in sandbox.run_python (sandbox.py: an operating-system boundary, bubblewrap namespaces; what it
# contains and what it does not is in its docstring and the README). Without a boundary, --code stops before generating
# unless --code_unsandboxed accepts running the programs as plain child processes; every item's `exec` record keeps the
# isolation it ran under.

CODE_TASKS = {  # task -> the instruction that replaces LawBench's (the question is appended unchanged)
    "3-7": "请你编写一段Python程序，计算文书中涉及的犯罪总金额（单位：元）：把各笔金额写成数字，按文书计算总额，"
           "最后用print输出这个金额（只输出数字）。把程序写在```python和```之间。",
}
CODE_ONE_SHOT = {  # the one-shot example of LawBench 3-7 (its instruction holds it), as a program
    "3-7": "下面是一个例子:\n文书:经审理查明，2017年8月7日凌晨，被告人潘洋在本市姑苏区现代花园X幢202室，趁同住的被害人陈某"
           "不备之际，盗窃其价值人民币2250元的苹果6Splus手机1部。\n```python\nphone = 2250\nprint(phone)\n```\n请你回答：",
}


_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def extract_program(completion: str) -> tuple[str, bool]:
    """The program in a completion: its first ```python block (an unclosed one runs to the end), else the whole
    completion. -> (code, found): found is False when there is no block and the completion does not compile as
    Python (or is blank), i.e. the model wrote no program; such an item is not run and predicts ''."""
    m = _CODE_BLOCK.search(completion)
    if m:
        return m.group(1), True
    if not completion.strip():
        return "", False
    try:  # parse only (nothing runs); a parser failure of any kind means "no program"
        compile(completion, "<completion>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return completion, False
    return completion, True


def code_prompt(item: dict, task: str, shot: str) -> str:
    """The code-mode user turn: CODE_TASKS[task] (+ the one-shot example as a program) + "\\n" + question."""
    return CODE_TASKS[task] + ("\n" + CODE_ONE_SHOT[task] if shot == "one" else "") + "\n" + item["question"]


def code_mode_tasks(cfg: "GenerateConfig") -> list[str]:
    """The selected tasks that have a code mode; --code with none of them is a flag error (raised before any work)."""
    tasks = [t for t in parse_tasks(cfg.tasks) if t in CODE_TASKS]
    if cfg.code and not tasks:
        raise DataError("--code", None, None, f"no task with a code mode among --tasks {cfg.tasks!r} "
                        f"(code mode: {', '.join(CODE_TASKS)})", reason="bad_flag")
    return tasks


def exec_counts(items: list[dict]) -> dict:
    """Execution counts of code-mode items: ran (= executed), ok, raised, timed_out, blocked, limit, no_code, refused (prompt over the budget)."""
    st = Counter(it["exec"]["status"] for it in items if it["exec"]["status"] not in ("no_code", "refused"))
    return {"n": len(items), "ran": sum(st.values()), "ok": st["ok"], "raised": st["error"],
            "timed_out": st["timeout"], "blocked": st["blocked"], "limit": st["limit"],
            "no_code": sum(it["exec"]["status"] == "no_code" for it in items),
            "refused": sum(it["exec"]["status"] == "refused" for it in items)}


def generate_code_mode(cfg: "GenerateConfig", shots: list[str], name: str, want: dict) -> dict:
    """Code mode on the same items as the direct answers: generate, run each program in the sandbox, write
    <out>/<shot>/<name>-code/<task>.json, score both files with the official scorer. -> {shot/task: row}, where a
    row holds both scores and the execution counts (also in <out>/code_mode.json and a line of metrics.jsonl).
    want: made_by(cfg), recorded beside each file as for the direct answers."""
    from tqdm import tqdm
    rows = {}
    budget = utils.prompt_budget(cfg.model, cfg.max_new_tokens, cfg.max_prompt_tokens)
    for shot in shots:
        for task in code_mode_tasks(cfg):
            items = load_lawbench_task(cfg.lawbench_dir, shot, task, cfg.max_items)
            prompts = [code_prompt(it, task, shot) for it in items]
            task_file = Path(cfg.out) / SHOTS[shot] / f"{name}-code" / f"{task}.json"
            done = []
            if task_file.is_file():  # resume: a finished file with exactly these prompts is kept
                done = [it for it in read_predictions(task_file)]
                if [it["origin_prompt"][0]["prompt"] for it in done] != prompts:
                    done = []
            if not done:  # a prompt over the budget is refused, as in the direct mode (never cut, never an OOM)
                gen, _ = utils.generate_within_budget(cfg.model, dict(enumerate(prompts)), budget,
                                                      **generation_settings(cfg))
                outs = [gen.get(i) for i in range(len(prompts))]
                for prompt, out, it in tqdm(list(zip(prompts, outs, items)), desc=f"{SHOTS[shot]} {task} code"):
                    code, found = extract_program(out or "")
                    run = {"status": "refused", "stdout": ""} if out is None else \
                        sandbox.run_python(code, wall_s=cfg.code_wall_s, unsandboxed=cfg.code_unsandboxed) \
                        if found else {"status": "no_code", "stdout": ""}
                    out = out or ""
                    done.append({"origin_prompt": [{"role": "HUMAN", "prompt": prompt}], "prediction": run["stdout"],
                                 "refr": it["answer"], "completion": out, "code": code if found else "",
                                 "exec": {k: v for k, v in run.items() if k != "stdout"}})
                write_predictions(task_file, done, keep=("completion", "code", "exec"))
                utils.write_json(utils.made_by_path(task_file), want)  # which model wrote it (check_made_by)
            direct = score_file(Path(cfg.out) / SHOTS[shot] / name / f"{task}.json", task)
            coded = score_file(task_file, task)
            rows[f"{SHOTS[shot]}/{task}"] = {"direct": direct["score"], "code": coded["score"],
                                             "direct_abstention": direct["abstention_rate"],
                                             "code_abstention": coded["abstention_rate"], **exec_counts(done)}
    utils.write_json(Path(cfg.out) / "code_mode.json", rows)
    utils.append_jsonl(Path(cfg.out) / "metrics.jsonl", {"command": "generate --code", "model": cfg.model,
                                                         "code_mode": rows})
    return rows


def code_mode_table(rows: dict) -> str:
    """Markdown: accuracy without and with code, side by side, and the execution counts."""
    keys = ("n", "ran", "ok", "raised", "timed_out", "blocked", "limit", "no_code", "refused")
    lines = ["| shot/task | direct | code | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
    for k, r in rows.items():
        lines.append(f"| {k} | {100 * r['direct']:.2f} | {100 * r['code']:.2f} | "
                     + " | ".join(str(r[c]) for c in keys) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------------
# 4. Judgment prediction (LexPro: charges, statutes, sentence from the facts of a CAIL2018 case)
# ----------------------------------------------------------------------------------------------------------------------
# Predictions are parsed by parse_judgment (utils.parse_answer, the parser the RL rewards use) into
#   {"charges": set[str], "articles": set[int], "term_months": int | None, "life": bool, "death": bool}.
# Metrics below are pure functions over those dicts and the truth dicts of utils.judgment_truth.

def parse_judgment(completion: str, charges=None) -> dict:
    """Completion -> the flat form the evaluation metrics use: {'charges': set of canonical names, 'articles':
    set[int], 'term_months': int | None, 'life': bool, 'death': bool}; nothing read -> empty sets, term None."""
    ans = utils.parse_answer(completion, charges)
    if ans is None:
        return {"charges": set(), "articles": set(), "term_months": None, "life": False, "death": False}
    term = ans["term"] or {"term_months": None, "life": False, "death": False}
    return {"charges": set(ans["charges"]), "articles": set(ans["articles"]), **term}


def prf_counts(pred: set, gold: set) -> tuple[int, int, int]:
    """(tp, fp, fn) of one item's predicted vs gold label sets."""
    tp = len(pred & gold)
    return tp, len(pred) - tp, len(gold) - tp


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """F1 = 2tp / (2tp + fp + fn); 0 when there is nothing to count."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def multilabel_f1(preds: list[set], golds: list[set]) -> dict:
    """Micro and macro F1 of N items' label sets.

    micro: tp/fp/fn summed over items and labels. macro: mean over every label seen in gold or predictions of that
    label's F1 (so a hallucinated label counts as a class with F1 0, as in the CAIL2018 scorer's macro average).
    """
    assert len(preds) == len(golds)
    per_label: dict = {}
    total = [0, 0, 0]
    for p, g in zip(preds, golds):
        for k, c in enumerate(prf_counts(p, g)):
            total[k] += c
        for lab in p | g:
            c = per_label.setdefault(lab, [0, 0, 0])
            c[0] += lab in p and lab in g
            c[1] += lab in p and lab not in g
            c[2] += lab in g and lab not in p
    macro = sum(f1_from_counts(*c) for c in per_label.values()) / len(per_label) if per_label else 0.0
    return {"micro_f1": f1_from_counts(*total), "macro_f1": macro}


def term_metrics(preds: list[dict], truths: list[dict]) -> dict:
    """Term score over items whose truth is a fixed term (life / death skipped, as LawBench 3-4/3-5 skip them).

    A prediction of life / death on such an item counts as an abstention (no month count to compare).
    term_score = (ln 216 - mean d) / ln 216 (not clipped); exact_month_acc = share of pred == gold months.
    """
    pairs = [(None if p["life"] or p["death"] else p["term_months"], t["term_months"])
             for p, t in zip(preds, truths) if not (t["life"] or t["death"])]
    if not pairs:
        return {"term_score": None, "exact_month_acc": None, "term_items": 0, "term_abstained": 0}
    # (ln 216 - mean d) / ln 216 written as a mean of per-item (ln 216 - d) / ln 216: all-abstention gives exactly 0
    return {"term_score": sum((LOG_216 - utils.log_distance(p, g)) / LOG_216 for p, g in pairs) / len(pairs),
            "exact_month_acc": sum(p == g for p, g in pairs) / len(pairs),
            "term_items": len(pairs), "term_abstained": sum(p is None for p, _ in pairs)}


def life_death_metrics(preds: list[dict], truths: list[dict]) -> dict:
    """Sentence category (fixed term / life / death) accuracy over all items, and recall on life+death truths.
    A prediction with no readable sentence (term_months None, neither life nor death) is in no category: wrong."""
    def cat(d):
        return "death" if d["death"] else "life" if d["life"] else "term" if d["term_months"] is not None else None

    hits = [cat(p) == cat(t) for p, t in zip(preds, truths)]
    severe = [h for h, t in zip(hits, truths) if cat(t) != "term"]
    return {"life_death_acc": sum(hits) / len(hits) if hits else None,
            "life_death_items": len(severe), "life_death_recall": sum(severe) / len(severe) if severe else None}


def judgment_metrics(preds: list[dict], truths: list[dict]) -> dict:
    """All judgment-prediction metrics. preds: parse_judgment dicts; truths: judgment_truth dicts (same order)."""
    charges = multilabel_f1([{utils.norm_charge(c) for c in p["charges"]} for p in preds],
                            [{utils.norm_charge(c) for c in t["charges"]} for t in truths])
    articles = multilabel_f1([{int(a) for a in p["articles"]} for p in preds],
                             [{int(a) for a in t["articles"]} for t in truths])
    answered = [bool(p["charges"] or p["articles"] or p["term_months"] is not None or p["life"] or p["death"])
                for p in preds]
    return {"n": len(preds), "answered_rate": sum(answered) / len(preds) if preds else None,
            "charge_micro_f1": charges["micro_f1"], "charge_macro_f1": charges["macro_f1"],
            "article_micro_f1": articles["micro_f1"], "article_macro_f1": articles["macro_f1"],
            **term_metrics(preds, truths), **life_death_metrics(preds, truths)}


def retrieval_recall(retrieved: list[list[int]], golds: list[set]) -> float:
    """Share of gold 刑法 articles that are among the retrieved ones (micro over items)."""
    hit = sum(len(set(r) & g) for r, g in zip(retrieved, golds))
    total = sum(len(g) for g in golds)
    return hit / total if total else 0.0


@dataclass
class JudgmentConfig:
    """Judgment prediction on CAIL2018-format records {fact, meta}: charge / article F1, term score, life/death."""
    model: str = field(metadata={"help": "Hugging Face model folder"})
    data: str = field(metadata={"help": "CAIL2018-format .jsonl (fact, meta.accusation, meta.relevant_articles, ...)"})
    out: str = field(default="runs/judgment", metadata={"help": "output folder"})
    max_items: int | None = field(default=None, metadata={"help": "first N records (default: all)", "min": 1})
    backend: str = field(default="hf", metadata={"help": "generation backend", "choices": ("hf", "vllm")})
    max_new_tokens: int = field(default=1024, metadata={"help": "new tokens per answer", "min": 1})
    batch_size: int = field(default=8, metadata={"help": "generation batch size (hf; prompts of similar length)",
                                                   "min": 1})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": utils.MAX_PROMPT_TOKENS_HELP, "min": 1})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM on GPU: share of GPU memory",
                                                                 "min": 0.01, "max": 1})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM on GPU: GPUs per engine", "min": 1})
    rag: str | None = field(default=None, metadata={"help": "articles.jsonl: BM25 top-k articles prepended"})
    rag_k: int = field(default=3, metadata={"help": "articles retrieved per fact", "min": 1})
    rag_law: str = field(default="刑法", metadata={"help": "law to retrieve from ('all': every law)"})
    tag: str | None = field(default=None, metadata={"help": "run name in metrics.jsonl; default rag_k<K> or plain"})
    overwrite: bool = field(default=False, metadata={"help": "OUT holds judgment runs of another model / item set / "
                                                              "generation settings: delete them and start clean"})


# A judgment folder holds runs of ONE model on ONE item set with the same generation settings (so its plain and
# retrieval runs compare); only retrieval and the tag may differ. A run with the same tag replaces the earlier one.
JUDGMENT_SETTINGS = ("out", "batch_size", "rag", "rag_k", "rag_law", "tag", "overwrite")
JUDGMENT_OUTPUTS = ("metrics.jsonl", "metrics_*.json", "predictions_*.jsonl", "rag_effect.json", "*.tmp")


def load_judgment_data(path, max_items: int | None = None) -> list[dict]:
    """CAIL2018 records -> [{fact, truth}] (utils.judgment_record); bad records: one-line DataError."""
    out = []
    for line, rec in utils.iter_records(path):
        fact, truth = utils.judgment_record(rec, path, line)
        out.append({"fact": fact, "truth": truth})
        if max_items is not None and len(out) >= max_items:
            break
    if not out:  # metrics over no items would read as F1 0.0
        raise DataError(path, None, None, "no records (nothing to evaluate)", reason="empty_file")
    return out


def open_run_dir(cfg, settings: tuple, outputs: tuple) -> dict:
    """OUT holds one run of this model on this data (utils.prepare_run_dir: resumed, refused or --overwrite);
    the config is saved there. -> the run identity (config fields but `settings`, model and data fingerprints)."""
    identity = utils.run_identity(cfg, settings, {"model_fingerprint": utils.fingerprint(cfg.model),
                                                  "data_fingerprint": utils.fingerprint(cfg.data)})
    utils.prepare_run_dir(cfg.out, identity, True, cfg.overwrite, outputs)
    utils.save_config(cfg, cfg.out)
    return identity


def _preflight_judgment(cfg: JudgmentConfig):
    utils.check_fields(cfg)
    utils.check_backend(cfg.backend)
    utils.check_out_dir(cfg.out)
    load_judgment_data(cfg.data, cfg.max_items)
    if cfg.rag:
        StatuteIndex(cfg.rag, cfg.rag_law)
    utils.check_model_dir(cfg.model, chat_template=True)


def run_judgment(cfg: JudgmentConfig) -> dict:
    data = load_judgment_data(cfg.data, cfg.max_items)
    identity = open_run_dir(cfg, JUDGMENT_SETTINGS, JUDGMENT_OUTPUTS)
    prompts, retrieved = [utils.judgment_prompt(d["fact"]) for d in data], None
    t0 = time.time()
    if cfg.rag:
        index = StatuteIndex(cfg.rag, cfg.rag_law)
        hits = [index.search(d["fact"], cfg.rag_k) for d in data]
        retrieved = [[a["article_num"] for a in h] for h in hits]
        prompts = [index.context(d["fact"], cfg.rag_k) + p for d, p in zip(data, prompts)]
    t_rag = time.time() - t0
    # prompt budget: a fact too long for the model's context is cut in the middle (the instruction, the retrieved
    # articles and the chat template stay whole); one that cannot fit even so is refused (empty prediction)
    budget = utils.prompt_budget(cfg.model, cfg.max_new_tokens, cfg.max_prompt_tokens)
    tok = utils.load_tokenizer(cfg.model)
    contexts = [p[:len(p) - len(utils.judgment_prompt(d["fact"]))] for d, p in zip(data, prompts)]
    cut_chars, fits = [], []
    for i, (d, ctx) in enumerate(zip(data, contexts)):
        fit = utils.fit_prompt(tok, lambda f: utils.render_prompt(tok, ctx + utils.judgment_prompt(f)), d["fact"],
                               budget)
        cut_chars.append(None if fit is None else fit[1])
        if fit is not None:
            prompts[i] = ctx + utils.judgment_prompt(fit[0])
            fits.append(i)
    t0 = time.time()
    gen, _ = utils.generate_within_budget(cfg.model, {i: prompts[i] for i in fits}, budget, backend=cfg.backend,
                                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                          gpu_memory_utilization=cfg.gpu_memory_utilization,
                                          tensor_parallel_size=cfg.tensor_parallel_size)
    outs = [gen.get(i, "") for i in range(len(prompts))]  # a refused fact: empty prediction
    t_gen = time.time() - t0
    preds = [parse_judgment(o) for o in outs]
    metrics = judgment_metrics(preds, [d["truth"] for d in data])
    if retrieved is not None:
        metrics["rag_recall"] = retrieval_recall(retrieved, [set(d["truth"]["articles"]) for d in data])
    metrics.update(tag=cfg.tag or (f"rag_k{cfg.rag_k}" if cfg.rag else "plain"), model=cfg.model, data=cfg.data,
                   model_fingerprint=identity["model_fingerprint"], retrieval_s=round(t_rag, 2),
                   generation_s=round(t_gen, 2), prompt_budget=budget, cut_items=sum(bool(c) for c in cut_chars),
                   refused_items=sum(c is None for c in cut_chars))
    tag = metrics["tag"]
    utils.write_jsonl(Path(cfg.out) / f"predictions_{tag}.jsonl",
                      [{"prompt": p, "completion": o, "parsed": {k: sorted(v) if isinstance(v, set) else v
                                                                 for k, v in pr.items()}, "truth": d["truth"],
                        "cut_chars": c, **({"refused": "prompt does not fit the budget"} if c is None else {}),
                        **({"retrieved": r} if retrieved else {})}
                       for p, o, pr, d, r, c in zip(prompts, outs, preds, data, retrieved or [None] * len(data),
                                                    cut_chars)])
    utils.write_json(Path(cfg.out) / f"metrics_{tag}.json", metrics)
    path = Path(cfg.out) / "metrics.jsonl"  # one line per tag: a rerun of a tag replaces its line
    old = [r for _, r in utils.iter_records(path, on_error="skip")] if path.is_file() else []
    utils.write_jsonl(path, [r for r in old if r.get("tag") != tag] + [metrics])
    effect = rag_effect(cfg.out)
    if effect:
        utils.write_json(Path(cfg.out) / "rag_effect.json", effect)
        metrics["rag_effect"] = effect
    else:  # never leave an effect computed from other runs beside these
        (Path(cfg.out) / "rag_effect.json").unlink(missing_ok=True)
    return metrics


RAG_EFFECT_KEYS = ("charge_micro_f1", "charge_macro_f1", "article_micro_f1", "article_macro_f1", "term_score",
                   "exact_month_acc", "life_death_acc", "answered_rate")


def rag_effect(out_dir) -> dict:
    """The effect of statute retrieval, when OUT holds metrics_plain.json and metrics_rag_k*.json (or other tags)
    of the same model on the same items: {"items", "data", "model", "model_fingerprint", "runs": {tag: {metric:
    {"without_rag", "with_rag", "change" (= with - without)}}}}. Empty when there is nothing to compare."""
    out = Path(out_dir)
    if not (out / "metrics_plain.json").is_file():
        return {}
    plain = utils.read_json(out / "metrics_plain.json")
    same = ("data", "n", "model", "model_fingerprint")
    runs = {}
    for path in sorted(out.glob("metrics_*.json")):
        rag = utils.read_json(path)
        # a retrieval run of the same model on the same items only
        if path.name == "metrics_plain.json" or "rag_recall" not in rag or any(rag.get(k) != plain.get(k) for k in same):
            continue
        runs[rag["tag"]] = {k: {"without_rag": plain[k], "with_rag": rag[k], "change": rag[k] - plain[k]}
                            for k in RAG_EFFECT_KEYS
                            if isinstance(plain.get(k), (int, float)) and isinstance(rag.get(k), (int, float))}
        if isinstance(rag.get("rag_recall"), (int, float)):
            runs[rag["tag"]]["rag_recall"] = rag["rag_recall"]  # share of gold articles among the retrieved ones
    if not runs:
        return {}
    return {"items": plain.get("n"), "data": plain.get("data"), "model": plain.get("model"),
            "model_fingerprint": plain.get("model_fingerprint"), "runs": runs}


# ----------------------------------------------------------------------------------------------------------------------
# 5. Long documents (InternLM-Law long-context test: questions over a long judgment, char-level F1)
# ----------------------------------------------------------------------------------------------------------------------
# Input JSONL: {"document": str, "questions": [{"question": str, "answer": str}, ...]}. A document longer than the
# model's context is cut from the middle (head and tail kept, a note put where text was removed) and counted.
# Records without questions (e.g. ../shared/data/long_docs, documents only: --doc_field query or fact) get length
# and truncation statistics only.

LONGDOC_TEMPLATE = "请阅读下面的文书，然后回答问题。答案尽量简短，直接给出答案。\n\n文书：\n{document}\n\n问题：{question}"


@dataclass
class LongDocConfig:
    """Long-document QA: char-level F1 of answers to questions about a document cut to the model's context."""
    model: str = field(metadata={"help": "Hugging Face model folder"})
    data: str = field(default="data/longdoc_sample.jsonl", metadata={"help": "JSONL {document, questions}"})
    out: str = field(default="runs/longdoc", metadata={"help": "output folder"})
    doc_field: str = field(default="document", metadata={"help": "field holding the document text"})
    backend: str = field(default="hf", metadata={"help": "generation backend", "choices": ("hf", "vllm")})
    max_new_tokens: int = field(default=128, metadata={"help": "answers are short", "min": 1})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": utils.MAX_PROMPT_TOKENS_HELP, "min": 1})
    batch_size: int = field(default=4, metadata={"help": "generation batch size", "min": 1})
    overwrite: bool = field(default=False, metadata={"help": "OUT holds a long-document run of another model / data /"
                                                              " settings: delete it and start clean"})


LONGDOC_SETTINGS = ("out", "batch_size", "overwrite")  # a rerun with the same identity replaces the earlier result
LONGDOC_OUTPUTS = ("metrics.jsonl", "metrics.json", "predictions.jsonl", "*.tmp")


def load_longdoc(path, doc_field: str = "document") -> list[dict]:
    """Records -> [{document, questions}] with every question checked (questions optional: [] when absent)."""
    out = []
    for line, rec in utils.iter_records(path):
        doc = utils.require(rec, doc_field, path, line)
        qs = rec.get("questions", [])
        if not isinstance(qs, list):
            raise DataError(path, line, "questions", f"expected list, got {type(qs).__name__}", reason="bad_field")
        for j, q in enumerate(qs):
            if not isinstance(q, dict):
                raise DataError(path, line, f"questions[{j}]", "expected an object", reason="bad_field")
            utils.require(q, "question", path, line)
            utils.require(q, "answer", path, line)
        out.append({"document": doc, "questions": qs})
    if not out:  # a score over no documents would read as F1 0.0
        raise DataError(path, None, None, "no records (nothing to evaluate)", reason="empty_file")
    return out


def _preflight_longdoc(cfg: LongDocConfig):
    utils.check_fields(cfg)
    utils.check_backend(cfg.backend)
    utils.check_out_dir(cfg.out)
    load_longdoc(cfg.data, cfg.doc_field)
    utils.check_model_dir(cfg.model, chat_template=True)
    if cfg.max_prompt_tokens is not None:
        frame = prompt_lengths(cfg.model, [LONGDOC_TEMPLATE.format(document="", question="")])[0]
        if cfg.max_prompt_tokens <= frame:  # the rendered prompt without document and question
            raise DataError("--max_prompt_tokens", None, None, f"{cfg.max_prompt_tokens} tokens leave no room for the "
                            "document in the prompt", reason="bad_flag")


def run_longdoc(cfg: LongDocConfig) -> dict:
    docs = load_longdoc(cfg.data, cfg.doc_field)
    open_run_dir(cfg, LONGDOC_SETTINGS, LONGDOC_OUTPUTS)
    tok = utils.load_tokenizer(cfg.model)
    # the budget counts the whole rendered prompt (chat template, instructions, question): the document is cut in
    # the middle until it fits, per question; a question that cannot fit even so is refused (no prediction)
    budget = utils.prompt_budget(cfg.model, cfg.max_new_tokens, cfg.max_prompt_tokens)
    prompts, golds, rows, truncated, doc_tokens, refused = [], [], [], 0, [], 0
    for d_i, d in enumerate(docs):
        doc_tokens.append(utils.count_tokens(tok, d["document"]))
        cut_doc = False
        for q in d["questions"]:
            def render(doc, q=q):
                return utils.render_prompt(tok, LONGDOC_TEMPLATE.format(document=doc, question=q["question"]))
            fit = utils.fit_prompt(tok, render, d["document"], budget)
            if fit is None:
                refused += 1
                continue
            cut_doc |= fit[1] > 0
            prompts.append(LONGDOC_TEMPLATE.format(document=fit[0], question=q["question"]))
            golds.append(q["answer"])
            rows.append({"doc": d_i, "question": q["question"], "answer": q["answer"], "removed_chars": fit[1]})
        if not d["questions"]:  # documents only: would the document have to be cut (length statistics)?
            fit = utils.fit_prompt(tok, lambda doc: utils.render_prompt(
                tok, LONGDOC_TEMPLATE.format(document=doc, question="")), d["document"], budget)
            cut_doc = fit is None or fit[1] > 0
        truncated += cut_doc
    t0 = time.time()
    gen, _ = utils.generate_within_budget(cfg.model, dict(enumerate(prompts)), budget, backend=cfg.backend,
                                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    outs = [gen[i] for i in range(len(prompts))]  # every prompt fits (fit_prompt)
    scores = [float(lawbench_char_f1(g, o)) for g, o in zip(golds, outs)]  # LawBench 2-5's char F1
    metrics = {"documents": len(docs), "questions": len(prompts), "refused_questions": refused,
               "prompt_budget": budget, "documents_without_questions":
               sum(not d["questions"] for d in docs), "truncated_documents": truncated,
               "context_tokens": budget + cfg.max_new_tokens, "max_document_tokens": max(doc_tokens, default=0),
               "char_f1": sum(scores) / len(scores) if scores else None, "generation_s": round(time.time() - t0, 2),
               "model": cfg.model, "data": cfg.data}
    utils.write_jsonl(Path(cfg.out) / "predictions.jsonl",
                      [{**r, "prediction": o, "char_f1": s} for r, o, s in zip(rows, outs, scores)])
    utils.write_json(Path(cfg.out) / "metrics.json", metrics)
    utils.write_jsonl(Path(cfg.out) / "metrics.jsonl", [metrics])  # one run per folder: a rerun replaces it
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# 5b. LexEval, the second benchmark: generation in LexEval's layout and the official scores (tasks, prompts and
#     scoring functions in lexeval.py; the generation loop below is LawBench's, section 3, on LexEval's files)
# ----------------------------------------------------------------------------------------------------------------------
# Layout written (what LexEval's evaluation/evaluate.py and `evaluate.py score --benchmark lexeval` read):
#   <out>/{zero_shot,few_shot}/<model_name>/<model_name>_<task>.jsonl, one line {"input", "output", "answer"} per item,
# with "input" = the item's input + "\n" + label + ":" as the official main.py stores it; the prompt sent is the
# instruction [+ "\n" + the few-shot block] + that input, one user turn through the chat template (--raw: plain).
# A prompt over the budget has the middle of its input cut (utils.fit_prompt; the official cuts the middle of the
# whole prompt's tokens), or is refused when even that does not fit (empty output, refused.jsonl). Resume, the
# .model record and data parallelism are LawBench's (<file>.partial, <file>.model).

LEXEVAL_SETTINGS = {"zero": "zero_shot", "few": "few_shot"}


def lexeval_tasks(cfg) -> tuple[list[str], list[str]]:
    """(tasks to run, notes): 'all' = the 23 tasks that have data/<task>.json (the others named in a note); tasks
    asked for by name must have their data file."""
    tasks = lexeval.parse_tasks(cfg.tasks)
    have, missing = lexeval.available_tasks(cfg.lexeval_dir, tasks)
    if missing and cfg.tasks.strip() not in ("", "all"):
        raise DataError(Path(cfg.lexeval_dir) / "data" / f"{missing[0]}.json", None, None, "file not found (--tasks "
                        f"{', '.join(missing)})", reason="missing_file")
    return have, ([f"no data/<task>.json in {cfg.lexeval_dir} for {', '.join(missing)}: not generated"]
                  if missing else [])


def _preflight_lexeval(cfg: GenerateConfig):
    if not cfg.lexeval_dir or not Path(cfg.lexeval_dir).is_dir():
        raise DataError("--lexeval_dir", None, None, f"LexEval folder not found: {cfg.lexeval_dir!r}",
                        reason="missing_file")
    if cfg.shots not in ("zero", "few", "both"):
        raise DataError("--shots", None, None, f"expected one of zero | few | both, got {cfg.shots!r}"
                        + (" (one is LawBench's)" if cfg.shots == "one" else ""), reason="bad_flag")
    if cfg.rag or cfg.code:
        raise DataError("--rag" if cfg.rag else "--code", None, None, "LawBench only (not with --benchmark lexeval)",
                        reason="bad_flag")
    tasks, _ = lexeval_tasks(cfg)
    if not tasks:
        raise DataError(Path(cfg.lexeval_dir) / "data", None, None, "no LexEval <task>.json files", "missing_file")
    for task in tasks:
        lexeval.load_task(cfg.lexeval_dir, task, cfg.max_items)
        if "few" in shot_dirs(cfg):
            lexeval.load_examples(cfg.lexeval_dir, task)
    utils.check_model_dir(cfg.model, chat_template=not cfg.raw)


def generate_lexeval(cfg: GenerateConfig) -> dict:
    """Every (setting, task) file not already complete. -> {setting/task: items generated now, "cut": items whose
    input was cut, "refused": ..., "per_rank": ...}. Data parallel under torchrun exactly as generate_lawbench."""
    rank, world = _rank_world(cfg.backend)
    tp = cfg.tensor_parallel_size if cfg.backend == "vllm" else 1
    dp_rank, dp_world = data_parallel_rank(rank, world, tp)  # the ranks of one engine send it the same prompts
    lead = rank % tp == 0  # the rank that reports its tensor-parallel group's completions
    shots = list(shot_dirs(cfg))
    tasks, notes = lexeval_tasks(cfg)
    name = cfg.model_name or utils.run_name(cfg.model)
    want = made_by(cfg)
    files = {(s, t): Path(cfg.out) / LEXEVAL_SETTINGS[s] / name / lexeval.output_name(name, t)
             for s in shots for t in tasks}
    if rank == 0:
        check_made_by(cfg, list(files.values()), want)
        utils.save_config(cfg, cfg.out)
        for line in notes:
            print("note:", line, flush=True)
    utils.barrier()
    budget = utils.prompt_budget(cfg.model, cfg.max_new_tokens, cfg.max_prompt_tokens)
    tok = utils.load_tokenizer(cfg.model)
    save_every = cfg.save_every or (4096 if cfg.backend == "vllm" else 64)
    report, mine_total, no_answer = {"cut": 0}, 0, {}
    from tqdm import tqdm
    for shot in shots:
        for task in tasks:
            items = lexeval.load_task(cfg.lexeval_dir, task, cfg.max_items)
            examples = lexeval.load_examples(cfg.lexeval_dir, task) if shot == "few" else None
            if rank == 0 and any(it["answer"] is None for it in items):
                print(f"note: {task}: {sum(it['answer'] is None for it in items)} items have a null answer in the "
                      f"data (generated; scored wrong, as the official does)", flush=True)
            if examples and any("answer" not in ex for ex in examples):
                no_answer[task] = sum("answer" not in ex for ex in examples)
            parts = [lexeval.prompt_parts(it, task, examples) for it in items]
            out_file = files[(shot, task)]
            done = {i: r for i, r in load_done(out_file).items()
                    if i < len(items) and (r.get("input"), r.get("answer")) == (parts[i][1], items[i]["answer"])}
            todo = [i for i in range(len(items)) if i not in done]
            report[f"{LEXEVAL_SETTINGS[shot]}/{task}"] = len(todo)
            partial = out_file.with_name(out_file.name + ".partial")
            if not todo and out_file.is_file() and not partial.is_file():
                continue
            if rank == 0:
                partial.parent.mkdir(parents=True, exist_ok=True)
                utils.write_json(utils.made_by_path(out_file), want)
                utils.drop_torn_tail(partial)
            bar = tqdm(total=len(todo), desc=f"{LEXEVAL_SETTINGS[shot]} {task}", disable=not todo or rank > 0)
            for start in range(0, len(todo), save_every):
                chunk = todo[start:start + save_every]
                mine = [i for i in chunk if i % dp_world == dp_rank]
                mine_total += len(mine) if lead else 0
                prompts, refused, cut = {}, [], 0
                for i in mine:  # the input's middle is cut until the rendered prompt fits (head and label kept)
                    head, label = parts[i][0], parts[i][1][len(items[i]["input"]):]
                    fit = utils.fit_prompt(tok, lambda t: utils.render_prompt(tok, head + t + label, not cfg.raw),
                                           items[i]["input"], budget)
                    if fit is None:
                        refused.append({"setting": LEXEVAL_SETTINGS[shot], "task": task, "index": i, "budget": budget,
                                        "reason": "prompt does not fit the budget even with its input cut"})
                        continue
                    prompts[i], cut = head + fit[0] + label, cut + (fit[1] > 0)
                gen, over = utils.generate_within_budget(cfg.model, prompts, budget, world=world,
                                                         **generation_settings(cfg))
                refused += [{"setting": LEXEVAL_SETTINGS[shot], "task": task, "index": i, "prompt_tokens": n,
                             "budget": budget, "reason": "prompt longer than the budget"} for i, n in over.items()]
                gen, refused, cut = (gen, refused, cut) if lead else ({}, [], 0)  # the group's others: reported once
                gen, refused = _gather_shares(gen, refused)
                cut = sum(_gather_shares({rank: cut}, [])[0].values())
                if rank > 0:
                    continue
                report["cut"] += cut
                refused.sort(key=lambda r: r["index"])
                if refused:
                    report["refused"] = report.get("refused", 0) + len(refused)
                    for r in refused:
                        utils.append_jsonl(Path(cfg.out) / "refused.jsonl", r)
                for i in chunk:
                    done[i] = {"input": parts[i][1], "output": gen.get(i, ""), "answer": items[i]["answer"]}
                    utils.append_jsonl(partial, {"index": i, "item": done[i]})
                bar.update(len(chunk))
            bar.close()
            if rank == 0:  # the official main.py writes the same lines (json.dumps, ensure_ascii=False)
                utils.write_jsonl(out_file, [done[i] for i in range(len(items))])
                partial.unlink(missing_ok=True)
            utils.barrier()
    if no_answer and rank == 0:
        print(f"note: few-shot examples without an 'answer' (rendered with an empty answer, as LexEval publishes "
              f"them): {', '.join(f'{t}: {n}' for t, n in no_answer.items())}", flush=True)
    if world > 1:
        print(f"rank {rank}/{world}: generated {mine_total} items", flush=True)
        report["per_rank"] = list(_gather_shares({rank: mine_total}, [])[0].values())
    return report


def score_lexeval(cfg: ScoreConfig) -> int:
    """`score --benchmark lexeval PRED_DIR`: scores.csv (task,model_name,score, 0-1 like the official
    evaluation_result.csv), the ability table beside it (printed, _table.csv, _table.md) and _metrics.jsonl (per
    file: metric, items, items the rouge recursion cut zeroed, seconds)."""
    t0 = time.perf_counter()
    models = [m for m in cfg.models.split(",") if m]
    skip = lexeval.parse_tasks(cfg.skip_tasks, "--skip_tasks") if cfg.skip_tasks else []
    jobs, notes = lexeval.find_output_files(cfg.pred_dir, models)
    jobs = [j for j in jobs if j[1] not in skip]
    if not jobs:
        raise DataError(cfg.pred_dir, None, None, "no <model>/<model>_<task>.jsonl output files found", "missing_file")
    results = lexeval.score_jobs(jobs, cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1), cfg.metric_choice)
    if cfg.metric_gen != "Rouge_L":  # BERTScore / BARTScore with the given weights, in this process
        for r in results:
            if r["result"] is not None and lexeval.is_generation(r["task"]):
                r["result"].update(score=lexeval.score_neural(lexeval.read_outputs(r["path"]), cfg.metric_gen,
                                                              cfg.bert_model), metric=cfg.metric_gen, zeroed=0)
    order = {t: k for k, t in enumerate(lexeval.LEXEVAL_TASKS)}
    results.sort(key=lambda r: (r["model"], order[r["task"]]))
    rows = [{"task": r["task"], "model_name": r["model"], "score": r["result"]["score"]} for r in results
            if r["result"] is not None]
    errors = [r["error"] for r in results if r["error"] is not None]
    seconds = time.perf_counter() - t0

    out = Path(cfg.out)
    table, table_notes = lexeval.ability_table(rows)
    markdown = lexeval.table_markdown(table)
    zeroed: dict[str, int] = {}
    lines = []
    for r in results:
        res = r["result"] or {}
        if res.get("zeroed"):
            zeroed[r["model"]] = zeroed.get(r["model"], 0) + res["zeroed"]
        lines.append({"model": r["model"], "task": r["task"], "metric": res.get("metric"), "items": res.get("items"),
                      "zeroed": res.get("zeroed"), "seconds": r["seconds"], "ok": r["error"] is None})
    stem = write_score_files(cfg, rows, ["task", "model_name", "score"], table, ["model_name", *lexeval.TABLE_COLUMNS],
                             markdown, [*lines, {"total_seconds": round(seconds, 3), "files": len(jobs),
                                                 "errors": len(errors), "zeroed_by_rouge_recursion": zeroed}])
    print(markdown, end="")
    for line in notes + table_notes:
        print("note:", line)
    if zeroed:
        print("note: items scored 0 because rouge 1.0.1's recursive LCS passed the recursion limit (as the official): "
              + ", ".join(f"{m}: {n}" for m, n in zeroed.items()))
    for line in errors:
        print("error:", line, file=sys.stderr)
    print(f"scored {len(rows)}/{len(jobs)} files in {seconds:.1f} s -> {out}, {stem}_table.csv, {stem}_table.md")
    return 1 if errors else 0


# ----------------------------------------------------------------------------------------------------------------------
# 6. Command line: `generate`'s checks and dispatch (LawBench, code mode, LexEval), then python evaluate.py <subcommand>
#    --flags (each subcommand: a config dataclass via utils.parse_config; score / judgment / longdoc check beside their run)
# ----------------------------------------------------------------------------------------------------------------------

def _preflight_generate(cfg: GenerateConfig):
    """Flags, every (shot, task) file, the retrieval file and the model folder, before anything is written."""
    utils.check_fields(cfg)
    utils.check_backend(cfg.backend)
    utils.check_out_dir(cfg.out)
    if cfg.benchmark == "lexeval":
        return _preflight_lexeval(cfg)  # section 5b
    if cfg.shots not in ("zero", "one", "both"):
        raise DataError("--shots", None, None, f"expected one of zero | one | both, got {cfg.shots!r}"
                        + (" (few is LexEval's: --benchmark lexeval)" if cfg.shots == "few" else ""), "bad_flag")
    if not cfg.lawbench_dir:
        raise DataError("--lawbench_dir", None, None, "required with --benchmark lawbench", reason="bad_flag")
    for shot in shot_dirs(cfg):
        for task in parse_tasks(cfg.tasks):
            load_lawbench_task(cfg.lawbench_dir, shot, task, cfg.max_items)
    if cfg.rag:
        StatuteIndex(cfg.rag, cfg.rag_law)
    utils.check_model_dir(cfg.model, chat_template=not cfg.raw)
    if cfg.backend == "vllm":  # an engine spans tensor_parallel_size ranks: they must divide the world
        data_parallel_rank(0, utils.dist_info().world, cfg.tensor_parallel_size)
    if cfg.code and cfg.backend == "vllm" and utils.dist_info().world > 1:
        raise DataError("--code", None, None, "code mode runs on rank 0 only: with --backend vllm run it without "
                        "torchrun", reason="bad_flag")
    if cfg.code and code_mode_tasks(cfg) and not cfg.code_unsandboxed and not sandbox.boundary()["ok"]:
        raise DataError("--code", None, None, f"no OS sandbox for the model's programs: {sandbox.boundary()['why']}; "
                        "or pass --code_unsandboxed to run them without one", reason="no_sandbox")


def cmd_generate(cfg: GenerateConfig):
    t0 = time.time()
    report = generate_lexeval(cfg) if cfg.benchmark == "lexeval" else generate_lawbench(cfg)
    cut = report.pop("cut", None)  # LexEval items whose input was cut in the middle to fit the budget
    per_rank = report.pop("per_rank", None)
    utils.close_vllm()  # before dist_close: the engine's shutdown destroys the process groups
    utils.dist_close()
    if utils.dist_info().rank > 0:
        return  # rank 0 reports and writes metrics.jsonl
    code_rows = report.pop("code_mode", None)
    if code_rows:
        print(code_mode_table(code_rows), end="")
    refused = report.pop("refused", 0)  # prompts over the budget (refused.jsonl)
    rec = {"command": "generate", "generated": sum(report.values()), "files": len(report), "refused": refused,
           "seconds": round(time.time() - t0, 2), "model": cfg.model}
    if per_rank:
        rec["per_rank"] = per_rank  # items generated by each torchrun rank
    if cfg.benchmark != "lawbench":
        rec.update(benchmark=cfg.benchmark, cut=cut or 0)
    utils.append_jsonl(Path(cfg.out) / "metrics.jsonl", rec)
    print(json.dumps(rec, ensure_ascii=False))
    dirs = [Path(cfg.out) / d for d in shot_dirs(cfg).values()]
    lexeval_run = cfg.benchmark == "lexeval"
    layout = "<model_name>/<model_name>_<task>.jsonl" if lexeval_run else "<model_name>/<task>.json"
    utils.done("evaluate.py generate", f"{', '.join(map(str, dirs))} ({layout}), {Path(cfg.out) / 'metrics.jsonl'}",
               f"python evaluate.py score {'--benchmark lexeval ' if lexeval_run else ''}{dirs[-1]} --out "
               f"{Path(cfg.out) / 'scores.csv'}")


def _print_metrics(run, name: str, next_step: str):
    def show(cfg):
        print(json.dumps(run(cfg), ensure_ascii=False, indent=1))
        utils.done(f"evaluate.py {name}", f"{cfg.out}/ (metrics.jsonl, predictions)", next_step.format(out=cfg.out))
    return show


COMMANDS = {  # name -> (config dataclass, preflight checks, run)
    "generate": (GenerateConfig, _preflight_generate, cmd_generate),
    "score": (ScoreConfig, _preflight_score, cmd_score),
    "judgment": (JudgmentConfig, _preflight_judgment, _print_metrics(
        run_judgment, "judgment", "the same with --rag ARTICLES.jsonl into {out} (with vs without retrieval: "
                                  "{out}/rag_effect.json), then python plots/plots.py --run RUN")),
    "longdoc": (LongDocConfig, _preflight_longdoc, _print_metrics(
        run_longdoc, "longdoc", "python plots/plots.py --run RUN (RUN holding {out})"))}


def usage() -> str:
    """`evaluate.py --help`: the subcommands, one line each (`evaluate.py COMMAND --help` lists its flags)."""
    lines = [f"usage: python evaluate.py {{{','.join(COMMANDS)}}} [--flags]", "", __doc__.strip().splitlines()[0],
             "", "commands:"]
    lines += [f"  {name:<10}{cls.__doc__.strip().splitlines()[0]}" for name, (cls, *_) in COMMANDS.items()]
    lines += ["", "`python evaluate.py COMMAND --help` lists the flags of one command."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        import difflib
        got = f"unknown command {argv[0]!r}" if argv else "a command is required"
        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1) if argv else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        utils.fail("evaluate.py", f"{got} (choose from {', '.join(COMMANDS)}{hint}; see --help)")
    cls, preflight, run = COMMANDS[argv[0]]
    cfg = utils.parse_config(cls, argv[1:], positional=("pred_dir",) if cls is ScoreConfig else (),
                             prog=f"evaluate.py {argv[0]}")

    def checked(cfg):  # every flag and input checked before the first expensive step
        preflight(cfg)
        return run(cfg)
    return utils.run_command(f"evaluate.py {argv[0]}", checked, cfg) or 0


if __name__ == "__main__":
    sys.exit(main())
