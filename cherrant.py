"""LawBench task 2-1 (文书校对, proofreading) scored exactly like the official LawBench scorer, in one process.

The official scorer (evaluation_functions/wsjd.py + a copy of ChERRANT in evaluation/utils) writes two parallel
files, shells out to `parallel_to_m2.py` twice and `compare_m2_for_evaluation.py` once, and gives every sentence a
10 s alignment budget. This module re-implements the same character-level pipeline in plain Python:

    items --(wsjd preprocessing)--> (source, prediction, reference) triples
          --(tokenise: whitespace removed, t2s on targets, one token per character)-->
          --(weighted edit distance with Cilin / confusion / pinyin / punctuation costs + transpositions)-->
          --(every cheapest alignment, each merged into span edits, identical edit lists dropped)-->
          --(pooled edits as (start, end, correction) -> TP / FP / FN per sentence, summed over the corpus)-->
          --> F0.5 rounded to 4 d.p.

Differences from the official scorer (all deliberate):
  * no clock: the official re-scores a sentence whose alignment takes over 10 s as if the prediction were `无`
    (so its numbers move with machine speed); here a sentence is re-scored as `无` when it has more than
    OFFICIAL_BUDGET cheapest alignments -- deterministic, and it reproduces all six published files to 4 d.p.
    (budget=None removes the limit; that is only usable for models with short, on-topic outputs).
  * a `\\r` in a prediction (or in the source line) is removed together with `\\n` and `\\t`; the official crashes.
  * an empty source line is aligned as an empty sentence; the official crashes.
The transposition search uses running multiset hashes instead of re-sorting windows, and the cheapest alignments
are walked run by run (runs that merge into the same edit are explored once); the edits are the same as the
official ones (checked against a plain walk of every alignment, tests/test_cherrant.py).

API: score_2_1(items, workers=None) -> {"score": float, "abstention_rate": 0.0}
"""
from __future__ import annotations

import os
import re
import random
import string
import sys
from itertools import groupby
from multiprocessing import current_process, get_context
from pathlib import Path

import Levenshtein
from opencc import OpenCC
from pypinyin import Style, pinyin

from utils import SHARED, DataError

# ----------------------------------------------------------------------------------------------------------------------
# 1. Resources (Cilin thesaurus, confusion sets, punctuation tables)
# ----------------------------------------------------------------------------------------------------------------------

DEFAULT_DATA_DIR = SHARED / "lawbench" / "evaluation" / "utils" / "data"

# punctuation used by the alignment cost (note: contains 〰〾〿﹏ but not "."), and by the merger (contains "." but
# not 〰〾〿﹏) -- the two official tables differ, both are kept as they are.
ALIGN_PUNCT = ("！？｡＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘'‛“”„‟…‧﹏"
               + string.punctuation)
MERGE_PUNCT = string.punctuation + ("！？｡＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟–—"
                                    "‘'‛“”„‟…‧.")
MISSING_TOKEN = "[缺失成分]"  # the official tokenizer keeps this marker as a single token

_RES: dict = {}  # per-process cache: data dir -> (cilin dict, confusion dict)
_CC = None


def load_resources(data_dir: str | os.PathLike | None = None):
    """Return (cilin: word -> code, confusion: char -> list of chars), read the way ChERRANT reads them, from
    data_dir (a LawBench copy's evaluation/utils/data; default DEFAULT_DATA_DIR)."""
    data_dir = Path(data_dir or DEFAULT_DATA_DIR)
    key = str(data_dir)
    if key not in _RES:
        cilin_path, conf_path = data_dir / "cilin.txt", data_dir / "confusion_dict.txt"
        for p in (cilin_path, conf_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: 2-1 resource file missing (pass --lawbench_dir)")
        cilin = {}
        for line in cilin_path.read_text(encoding="gbk").strip().split("\n"):
            code, *words = line.split(" ")
            for w in words:
                cilin[w] = code
        confusion = {}
        with open(conf_path, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split(" ")
                confusion[parts[0]] = parts[1:]
        _RES[key] = (cilin, confusion)
    return _RES[key]


def t2s(text: str) -> str:
    """Traditional -> Simplified with OpenCC's t2s (targets only, as the official)."""
    global _CC
    if _CC is None:
        _CC = OpenCC("t2s")
    return _CC.convert(text)


# ----------------------------------------------------------------------------------------------------------------------
# 2. wsjd.py preprocessing: items -> (source, prediction, reference)
# ----------------------------------------------------------------------------------------------------------------------

_LINE_WS = re.compile(r"\n|\t|\r")  # official: \n|\t; \r added (the official crashes on it)


def prepare_item(item: dict) -> tuple[str, str, str]:
    """One prediction-file item -> (source line, prediction, reference) exactly as wsjd.py builds them."""
    question = item["origin_prompt"]
    if isinstance(question, list):
        question = question[0]["prompt"]
    start = question.index("句子：\n") + 4
    source = _LINE_WS.sub("", question[start:].split("\n")[0])
    answer = item["refr"]
    prediction = _LINE_WS.sub("", item["prediction"])
    if len(prediction) - len(answer) > 5:  # length of the raw reference, as official
        prediction = prediction[:len(answer) + 5]
    if len(prediction) == 0:
        prediction = "无内容"
    return source, prediction, _LINE_WS.sub("", answer)


# ----------------------------------------------------------------------------------------------------------------------
# 3. Tokenisation: whitespace removed, t2s on targets, one token per character (+ pinyin readings)
# ----------------------------------------------------------------------------------------------------------------------

def squeeze(text: str) -> str:
    """Delete every whitespace character (str.split() semantics), as parallel_to_m2 does."""
    return "".join(text.split())


def tokenize(text: str) -> list[str]:
    """Characters, except that the literal marker [缺失成分] stays one token."""
    if not text:
        return []
    return " ".join(text).replace("[ 缺 失 成 分 ]", MISSING_TOKEN).split(" ")


_PINYIN: dict = {}


def readings(ch: str) -> frozenset:
    """All pypinyin readings (heteronyms, no tones) of one token."""
    r = _PINYIN.get(ch)
    if r is None:
        r = _PINYIN[ch] = frozenset(pinyin(ch, style=Style.NORMAL, heteronym=True)[0])
    return r


# ----------------------------------------------------------------------------------------------------------------------
# 4. Alignment: weighted edit distance with transpositions, every tied operation kept
# ----------------------------------------------------------------------------------------------------------------------

def _all_chinese(tok: str) -> bool:
    return all("\u4e00" <= ch <= "\u9fff" for ch in tok)


_INFO: dict = {}


def _token_info(tok: str, cilin: dict, confusion: dict) -> tuple:
    """Per-token facts the substitution cost needs: Cilin class (3 levels) or None, punctuation?, all-Chinese?,
    pinyin readings, confusion set."""
    key = (id(cilin), tok)
    info = _INFO.get(key)
    if info is None:
        code = cilin.get(tok)
        cls = None if code is None else (code[0], code[1], code[2:4])
        info = _INFO[key] = (cls, tok in ALIGN_PUNCT,  # substring test, as official
                             _all_chinese(tok), readings(tok), frozenset(confusion.get(tok, ())))
    return info


def sub_cost(a: str, b: str, cilin: dict, confusion: dict) -> float:
    """Substitution cost of token a -> b (a != b), below 2 (= one deletion + one insertion):
    semantic (Cilin class distance)/6 + character similarity (0 or 0.5) + punctuation-class cost, summed in this
    order (float ties decide which alignments are cheapest, so the order of the additions matters)."""
    ka, a_p, a_zh, a_py, a_conf = _token_info(a, cilin, confusion)
    kb, b_p, b_zh, b_py, b_conf = _token_info(b, cilin, confusion)
    if ka is None or kb is None:
        semantic = 4
    else:
        semantic = 0 if ka == kb else 2 * (3 - sum(x == y for x, y in zip(ka, kb)))
    semantic = semantic / 6.0
    pos = 0.0 if (a_p and b_p) else (0.25 if (not a_p and not b_p) else 0.499)
    if not (a_zh and b_zh):
        char = 0.5
    elif len(a) == 1 and len(b) == 1:  # character tokens: similar if they share a reading or are confusable
        char = 0.0 if (a_py & b_py or a in b_conf or b in a_conf) else 0.5
    else:  # ChERRANT's spell cost for words (never reached with character tokens)
        if len(a) > len(b):
            a, b = b, a
        count = 0
        same_sound = bool(a_py & b_py)
        for x in a:
            for y in b:
                if x == y or same_sound or x in confusion.get(y, ()) or y in confusion.get(x, ()):
                    count += 1
                    break
        char = (len(a) - count) / (len(a) * 2)
    return semantic + char + pos


class _Hasher:
    """Random 64-bit value per token: the sum over a window identifies its multiset (checked exactly on a hit)."""

    def __init__(self):
        self.rng = random.Random(0)
        self.val: dict = {}

    def __call__(self, tok):
        v = self.val.get(tok)
        if v is None:
            v = self.val[tok] = self.rng.getrandbits(64)
        return v


_SUB_CACHE: dict = {}
_M = ("M",)
_SID = {(s_, i_, d_): tuple(op for op, on in (("S", s_), ("I", i_), ("D", d_)) if on)
        for s_ in (False, True) for i_ in (False, True) for d_ in (False, True)}


def align(src: list[str], tgt: list[str], cilin: dict, confusion: dict):
    """Cost and operation matrices, (len(src)+1) x (len(tgt)+1) lists of lists.

    ops[i][j] lists every operation reaching cell (i, j) at minimal cost, in the official order
    (T<k>, S, I, D; or M for equal tokens). A transposition of the last k+1 tokens is tried for k = 1, 2, ...
    while the diagonal cost keeps changing; the first k whose windows are anagrams wins (cost = cost[i-k][j-k] + k).
    Instead of sorting windows for every k we keep, per diagonal, the last position of each prefix-hash difference
    and the last zero-cost diagonal step -- the same k, found in O(1)."""
    n, m = len(src), len(tgt)
    INF = float("inf")
    cost = [[0.0] * (m + 1) for _ in range(n + 1)]
    ops: list = [[None] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        cost[i][0] = cost[i - 1][0] + 1
        ops[i][0] = ("D",)
    for j in range(1, m + 1):
        cost[0][j] = cost[0][j - 1] + 1
        ops[0][j] = ("I",)
    h = _Hasher()
    ps = [0] * (n + 1)
    for i, t in enumerate(src):
        ps[i + 1] = ps[i] + h(t)  # exact Python ints, no wrap-around
    pt = [0] * (m + 1)
    for j, t in enumerate(tgt):
        pt[j + 1] = pt[j] + h(t)
    # per diagonal d = j - i (key d + n): last index t with a given ps[t]-pt[t+d], last zero step t (from cell (t,t+d))
    last_seen = [dict() for _ in range(n + m + 1)]
    last_zero = [-1] * (n + m + 1)
    sub_cache = _SUB_CACHE.setdefault(id(cilin), {})  # a -> {b -> cost}, shared by all sentences of a process
    for i in range(n):
        a = src[i]
        sub_a = sub_cache.get(a)
        if sub_a is None:
            sub_a = sub_cache[a] = {}
        row, prev = cost[i + 1], cost[i]
        orow = ops[i + 1]
        ps_next, ps_back = ps[i + 1], ps[i - 1] if i >= 1 else None
        for j in range(m):
            dk = j - i + n
            seen = last_seen[dk]
            # register diagonal index t = i - 1 (cell (i-1, j-1)) before looking back from (i, j)
            if ps_back is not None and j >= 1:
                seen[ps_back - pt[j - 1]] = i - 1
            b = tgt[j]
            if a == b:
                row[j + 1] = prev[j]
                orow[j + 1] = _M
            else:
                del_c = prev[j + 1] + 1
                ins_c = row[j] + 1
                sc = sub_a.get(b)
                if sc is None:
                    sc = sub_a[b] = sub_cost(a, b, cilin, confusion)
                sub_c = prev[j] + sc
                # transposition: smallest k >= 1 with k < i - last_zero, i-k >= 0, j-k >= 0, anagram windows
                trans_c, k = INF, 0
                t = seen.get(ps_next - pt[j + 1])
                if t is not None and t > last_zero[dk]:
                    kk = i - t
                    if sorted(src[t:i + 1]) == sorted(tgt[j - kk:j + 1]):
                        trans_c, k = cost[t][j - kk] + kk, kk
                    else:  # hash collision (never seen in practice): fall back to the plain search
                        trans_c, k = _trans_slow(src, tgt, cost, i, j)
                best = trans_c if trans_c < sub_c else sub_c
                if ins_c < best:
                    best = ins_c
                if del_c < best:
                    best = del_c
                row[j + 1] = best
                if trans_c == best:
                    cell = ["T" + str(k + 1)]
                    if sub_c == best:
                        cell.append("S")
                    if ins_c == best:
                        cell.append("I")
                    if del_c == best:
                        cell.append("D")
                    orow[j + 1] = tuple(cell)
                else:  # the common case: one of the 7 non-empty S/I/D combinations
                    orow[j + 1] = _SID[(sub_c == best, ins_c == best, del_c == best)]
            if row[j + 1] == prev[j]:
                last_zero[dk] = i
    return cost, ops


def _trans_slow(src, tgt, cost, i, j):
    """The official transposition search, used only to resolve a hash collision."""
    k = 1
    while i - k >= 0 and j - k >= 0 and cost[i - k + 1][j - k + 1] != cost[i - k][j - k]:
        if sorted(src[i - k:i + 1]) == sorted(tgt[j - k:j + 1]):
            return cost[i - k][j - k] + k, k
        k += 1
    return float("inf"), k


def _edge(op: str, i: int, j: int) -> tuple:
    """The alignment step (op, i1, i2, j1, j2) that reaches cell (i, j) by op."""
    if op == "M" or op == "S":
        return (op, i - 1, i, j - 1, j)
    if op == "D":
        return (op, i - 1, i, j, j)
    if op == "I":
        return (op, i, i, j - 1, j)
    k = int(op[1:])
    return (op, i - k, i, j - k, j)


def cheapest_alignments(ops, n: int, m: int):
    """Yield every cheapest alignment as a tuple of (op, i1, i2, j1, j2), left to right: the official walk, one
    path at a time (only used as the reference in tests; scoring uses run_edit_lists, section 5).
    Like the official, only the first operation of each cell is followed when |n - m| > 10."""
    first_only = abs(n - m) > 10
    path: list = []
    stack = [(n, m, 0, None)]  # (cell i, cell j, path length before this edge, edge into the cell)
    while stack:
        i, j, depth, edge = stack.pop()
        if edge is not None:
            del path[depth:]
            path.append(edge)
        if i + j == 0:
            yield tuple(reversed(path))
            continue
        depth = len(path)
        for op in reversed(ops[i][j][:1] if first_only else ops[i][j]):  # first operation explored first
            e = _edge(op, i, j)
            stack.append((e[1], e[3], depth, e))


def count_alignments(ops, n: int, m: int) -> int:
    """Number of cheapest alignments cheapest_alignments() would yield (DP over cells, exact big integers)."""
    first_only = abs(n - m) > 10
    cnt = [[0] * (m + 1) for _ in range(n + 1)]
    cnt[0][0] = 1
    for i in range(n + 1):
        for j in range(m + 1):
            if i + j == 0:
                continue
            c = 0
            for op in (ops[i][j][:1] if first_only else ops[i][j]):
                e = _edge(op, i, j)
                c += cnt[e[1]][e[3]]
            cnt[i][j] = c
    return cnt[n][m]


# ----------------------------------------------------------------------------------------------------------------------
# 5. Merging token operations into span edits (ChERRANT merger, character level)
# ----------------------------------------------------------------------------------------------------------------------

def _span(tag, seq):
    """One edit covering a run of operations."""
    return (tag, seq[0][1], seq[-1][2], seq[0][3], seq[-1][4])


def _merge_run(seq):
    """A run of non-M, non-T operations -> edits: all-D or all-I runs become one edit, D/I mixes stay apart,
    anything containing S becomes one S edit; a run of M becomes one M."""
    if len(seq) <= 1:
        return list(seq)
    kinds = {op[0] for op in seq}
    if kinds == {"D"} or kinds == {"I"}:
        return [_span(seq[0][0], seq)]
    if kinds == {"D", "I"}:
        return list(seq)
    if kinds == {"M"}:
        return [_span("M", seq)]
    return [_span("S", seq)]


def _as_transposition(group):
    return _span("T" + str(group[2][2] - group[0][1]), group)


def merge(alignment, src: list[str], tgt: list[str]) -> tuple:
    """ChERRANT's Merger for one alignment: runs -> edits, 'S M S' / 'D M I' / 'I M D' word-order patterns -> T,
    M edits dropped, then S edits sharing a prefix/suffix with their target are trimmed to I/D/S."""
    return finish_edits(merge_runs(alignment), src, tgt)


def merge_runs(alignment) -> list:
    """First merger stage: consecutive M / non-M-non-T operations grouped into runs, each T kept alone."""
    edits = []
    for key, group in groupby(alignment, lambda x: x[0][0] if x[0][0] in ("M", "T") else False):
        group = list(group)
        if key == "T":
            edits.extend(group)
        else:
            edits.extend(_merge_run(group))
    return edits


def _word_order_swap(edits: list, i: int, src: list[str], tgt: list[str]) -> bool | None:
    """Do edits i, i+1, i+2 form a word-order pattern (S M S, or D (M|T) I / I (M|T) D)? None: no pattern;
    True: the words match, so the three become one T; False: a pattern whose words do not match."""
    e1, e2, e3 = edits[i][0][0], edits[i + 1][0][0], edits[i + 2][0][0]
    if e1 == "S" and e2 == "M" and e3 == "S":
        w1 = "".join(src[edits[i][1]:edits[i][2]])
        w2 = "".join(tgt[edits[i][3]:edits[i][4]])
        w3 = "".join(src[edits[i + 2][1]:edits[i + 2][2]])
        w4 = "".join(tgt[edits[i + 2][3]:edits[i + 2][4]])
        if min(len(w1), len(w2), len(w3), len(w4)) == 1:
            return w1 == w4 and w2 == w3
        return Levenshtein.distance(w1, w4) <= 1 and Levenshtein.distance(w2, w3) <= 1
    if (e1 == "D" and (e2 == "M" or e2 == "T") and e3 == "I") or \
            (e1 == "I" and (e2 == "M" or e2 == "T") and e3 == "D"):
        if e1 == "D":
            a = "".join(src[edits[i][1]:edits[i][2]])
            b = "".join(tgt[edits[i + 2][3]:edits[i + 2][4]])
        else:
            a = "".join(src[edits[i + 2][1]:edits[i + 2][2]])
            b = "".join(tgt[edits[i][3]:edits[i][4]])
        if len(a) < len(b):
            a, b = b, a
        if a in MERGE_PUNCT or b in MERGE_PUNCT or len(a) - len(b) > 1:  # substring tests
            return False
        if len(b) == 1:
            return a == b
        return Levenshtein.distance(a, b) <= 1 or (len(a) == len(b) and b in a + a)
    return None


def finish_edits(edits: list, src: list[str], tgt: list[str]) -> tuple:
    """Second merger stage: word-order patterns -> T, M dropped, S edits trimmed."""
    kept = []
    i = 0
    while i < len(edits):
        swap = _word_order_swap(edits, i, src, tgt) if i < len(edits) - 2 else None
        if swap:
            kept.append(_as_transposition(edits[i:i + 3]))
            i += 3
            continue
        if swap is False or edits[i][0][0] != "M":
            kept.append(edits[i])
        i += 1

    out = []
    for e in kept:
        span1, span2 = "".join(src[e[1]:e[2]]), "".join(tgt[e[3]:e[4]])
        if span1 == span2:
            continue  # e.g. an S run that rewrites a span into itself
        if e[0] != "S":
            out.append(e)
            continue
        out.append(_trim_substitution(e, span2, src, tgt))
    return tuple(out)


def _trim_substitution(e, span2, src, tgt):
    """Shrink an S edit whose source and target share a leading / trailing token string (official logic)."""
    changed = False
    common, tmp_start1 = "", e[1]
    for i in range(e[1], e[2]):
        if not span2.startswith(common + src[i]):
            break
        common += src[i]
        tmp_start1 = i + 1
    start1, start2 = e[1], e[3]
    if common:
        acc = ""
        for i in range(e[3], e[4]):
            acc += tgt[i]
            if acc == common:
                start1, start2 = tmp_start1, i + 1
                changed = True
                break
            if len(acc) > len(common):
                break
    common, tmp_end1 = "", e[2]
    end1, end2 = e[2], e[4]
    for i in reversed(range(start1, e[2])):
        if not span2.endswith(src[i] + common):
            break
        common = src[i] + common
        tmp_end1 = i
    if common:
        acc = ""
        for i in reversed(range(start2, e[4])):
            acc = tgt[i] + acc
            if acc == common:
                end1, end2 = tmp_end1, i
                changed = True
                break
            if len(acc) > len(common):
                break
    if not changed:
        return e
    if start1 == end1:
        return ("I", start1, end1, start2, end2)
    if start2 == end2:
        return ("D", start1, end1, start2, end2)
    return ("S", start1, end1, start2, end2)


def run_edit_lists(ops, n: int, m: int) -> set:
    """The distinct first-stage edit lists (merge_runs) over all cheapest alignments, without walking every
    alignment: a path is cut into maximal runs (M-runs, single T steps, runs of D/I/S steps), and all runs of D/I/S
    steps between the same two cells that contain an S (or are all D, or all I) give the same merged edit, so they
    are explored once. Equals {tuple(merge_runs(a)) for a in cheapest_alignments(ops, n, m)}."""
    first_only = abs(n - m) > 10
    succ: dict = {}  # cell -> [(kind, step, next cell)] on the graph of cheapest paths, walked left to right
    seen, stack = {(n, m)}, [(n, m)]
    while stack:
        i, j = stack.pop()
        if i + j == 0:
            continue
        for op in (ops[i][j][:1] if first_only else ops[i][j]):
            e = _edge(op, i, j)
            prev = (e[1], e[3])
            succ.setdefault(prev, []).append((op[0], e, (i, j)))
            if prev not in seen:
                seen.add(prev)
                stack.append(prev)
    end = (n, m)

    def can_end(cell, after):  # a run of kind `after` may stop at cell if the path can go on with another kind
        return cell == end or any((k not in "DIS") if after == "X" else (k != "M") for k, _, _ in succ.get(cell, ()))

    memo: dict = {}

    def runs_from(c):
        """[(kind, edits, next cell)] for every maximal run starting at cell c."""
        if c in memo:
            return memo[c]
        out = []
        cur = c  # M-run: M steps are forced by equal tokens, so the run is a diagonal chain
        while True:
            nxt = next((x for k, _, x in succ.get(cur, ()) if k == "M"), None)
            if nxt is None:
                break
            cur = nxt
            if can_end(cur, "M"):
                out.append(("M", (("M", c[0], cur[0], c[1], cur[1]),), cur))
        for k, e, x in succ.get(c, ()):
            if k == "T":
                out.append(("T", (e,), x))
        found = set()
        s_seen = set()
        stack = [(x, k == "S", (e,)) for k, e, x in succ.get(c, ()) if k in "DIS"]
        while stack:
            cell, has_s, seq = stack.pop()
            if has_s:
                if cell in s_seen:
                    continue
                s_seen.add(cell)
            if can_end(cell, "X"):
                if has_s:
                    edits = (("S", c[0], cell[0], c[1], cell[1]),)
                else:
                    kinds = {e[0] for e in seq}
                    edits = seq if len(kinds) > 1 else ((seq[0][0], c[0], cell[0], c[1], cell[1]),)
                found.add((edits, cell))
            for k, e, x in succ.get(cell, ()):
                if k in "DIS":
                    stack.append((x, has_s or k == "S", None if (has_s or k == "S") else seq + (e,)))
        out.extend(("X", edits, cell) for edits, cell in found)
        memo[c] = out
        return out

    results = set()
    stack = [((0, 0), None, ())]
    while stack:
        cell, last, edits = stack.pop()
        if cell == end:
            results.add(edits)
            continue
        for kind, run, nxt in runs_from(cell):
            if kind != last or kind == "T":
                stack.append((nxt, kind, edits + run))
    return results


# ----------------------------------------------------------------------------------------------------------------------
# 6. Annotation of one (source, target) pair -> pooled span edits (what parallel_to_m2 writes as "A" lines)
# ----------------------------------------------------------------------------------------------------------------------

NOOP = ((-1, -1, "-NONE-", "noop"),)
NOT_ANNOTATABLE = ((-1, -1, "-NONE-", "NA"),)


def edit_lines(edits, tgt: list[str]) -> list[tuple]:
    """Classifier (character level) + compare_m2's reading of an A line: (start, end, correction, type)."""
    out = []
    for op, s1, s2, t1, t2 in edits:
        kind = op[0]
        if kind == "D":
            out.append((s1, s2, "-NONE-", "R"))
        else:
            out.append((s1, s2, "".join(tgt[t1:t2]), {"T": "W", "I": "M", "S": "S"}[kind]))
    return out


def annotate(src: list[str], tgt: list[str], cilin: dict, confusion: dict,
             max_alignments: int | None = None):
    """Edits of every distinct merged cheapest alignment, pooled; an edit shared by several lists repeats (it counts).
    Returns None when the number of cheapest alignments exceeds max_alignments (see OFFICIAL_BUDGET)."""
    src_str, tgt_str = "".join(src), "".join(tgt)
    if tgt_str == "没有错误" or src_str == tgt_str:
        return list(NOOP)
    if tgt_str == "无法标注":
        return list(NOT_ANNOTATABLE)
    _, ops = align(src, tgt, cilin, confusion)
    if max_alignments is not None and count_alignments(ops, len(src), len(tgt)) > max_alignments:
        return None
    finals = {finish_edits(list(edits), src, tgt) for edits in run_edit_lists(ops, len(src), len(tgt))}
    pooled = []
    for edits in sorted(finals):  # order is irrelevant to the counts; sorted for reproducible output
        pooled.extend(edit_lines(edits, tgt))
    return pooled


# ----------------------------------------------------------------------------------------------------------------------
# 7. compare_m2: span-level TP / FP / FN of one sentence, corpus F0.5
# ----------------------------------------------------------------------------------------------------------------------

def edit_dict(pooled) -> dict:
    """(start, end, correction) -> list of types, as compare_m2's process_edits builds it (noop if no edit)."""
    if not pooled:
        pooled = NOOP
    d: dict = {}
    for start, end, cor, cat in pooled:
        d.setdefault((start, end, cor), []).append(cat)
    return d


def compare(hyp_pooled, ref_pooled) -> tuple[int, int, int]:
    """TP, FP, FN of one sentence. Multiplicities count: a hypothesis edit found in the reference earns one TP per
    reference occurrence; a missing one costs one FP per hypothesis occurrence. A reference that is a single
    not-annotatable edit skips the sentence."""
    hyp, ref = edit_dict(hyp_pooled), edit_dict(ref_pooled)
    if len(ref) == 1 and next(iter(ref.values()))[0] == "NA":
        return 0, 0, 0
    tp = fp = fn = 0
    for key, cats in hyp.items():
        if cats[0] == "noop":
            continue
        if key in ref:
            tp += len(ref[key])
        else:
            fp += len(cats)
    for key, cats in ref.items():
        if cats[0] == "noop":
            continue
        if key not in hyp:
            fn += len(cats)
    return tp, fp, fn


def f_score(tp: int, fp: int, fn: int, beta: float = 0.5) -> tuple[float, float, float]:
    """P, R, F_beta rounded to 4 d.p.; P = 1 when FP = 0, R = 1 when FN = 0 (ERRANT convention)."""
    p = float(tp) / (tp + fp) if fp else 1.0
    r = float(tp) / (tp + fn) if fn else 1.0
    f = float((1 + beta ** 2) * p * r) / ((beta ** 2) * p + r) if p + r else 0.0
    return round(p, 4), round(r, 4), round(f, 4)


# ----------------------------------------------------------------------------------------------------------------------
# 8. Scoring a prediction file (sentences in parallel)
# ----------------------------------------------------------------------------------------------------------------------

# The official gives each sentence 10 s and re-scores it with the target `无` when it runs over. What runs over are
# sentences with very many cheapest alignments (the official walks and merges each one; the published files have
# sentences with up to 1.3e12 of them, which nobody can enumerate, and pooling them all would put ~1e12 edits into
# FP). We replace the clock by a deterministic budget on the number of cheapest alignments (counted by a DP, the
# official's work is linear in it). 75000 reproduces all six published files to 4 d.p.; any value in
# [70560, 75599] does. budget=None means no limit at all.
OFFICIAL_BUDGET = 75000


def _pair_edits(src_text: str, tgt_text: str, cilin, confusion, budget):
    """parallel_to_m2 for one line: whitespace removed, t2s on the target, an empty target or one over budget
    re-annotated with `无`."""
    src = tokenize(squeeze(src_text))
    tgt_clean = t2s(squeeze(tgt_text))
    if tgt_clean:
        pooled = annotate(src, tokenize(tgt_clean), cilin, confusion, budget)
        if pooled is not None:
            return pooled, False
    return annotate(src, tokenize("无"), cilin, confusion, None), True


def score_sentence(args) -> tuple[int, int, int, bool]:
    """(source, prediction, reference, data_dir, budget) -> (TP, FP, FN, prediction re-scored as 无?)."""
    source, prediction, reference, data_dir, budget = args
    cilin, confusion = load_resources(data_dir)
    hyp, hyp_fallback = _pair_edits(source, prediction, cilin, confusion, budget)
    ref, _ = _pair_edits(source, reference, cilin, confusion, budget)
    return (*compare(hyp, ref), hyp_fallback)


def score_2_1(items: list[dict], workers: int | None = None, data_dir=None,
              budget: int | None = OFFICIAL_BUDGET, details: bool = False, source_name: str = "2-1.json") -> dict:
    """Official LawBench 2-1 score of a list of prediction-file items (in key order "0".."N-1").
    Returns {"score": F0.5 rounded to 4 d.p., "abstention_rate": 0.0} (+ counts when details=True).
    A malformed item raises utils.DataError naming source_name and the item key."""
    load_resources(data_dir)  # fail early, in the parent, on missing files
    jobs = []
    for k, it in enumerate(items):
        try:
            jobs.append((*prepare_item(it), data_dir, budget))
        except (KeyError, IndexError, TypeError, ValueError) as e:  # the official dies with a traceback here
            raise DataError(source_name, None, f"{k}",
                            f"not a 2-1 item (needs origin_prompt with '句子：\\n', prediction, refr): {e!r}") from None
    workers = workers or min(2, os.cpu_count() or 1)
    if current_process().daemon:  # already inside a pool worker (daemons cannot have children): stay serial
        workers = 1
    if workers > 1 and len(jobs) > 1:
        with get_context("fork" if sys.platform != "win32" else "spawn").Pool(workers) as pool:
            results = pool.map(score_sentence, jobs, chunksize=1)
    else:
        results = [score_sentence(j) for j in jobs]
    tp = sum(r[0] for r in results)
    fp = sum(r[1] for r in results)
    fn = sum(r[2] for r in results)
    p, r, f = f_score(tp, fp, fn)
    out = {"score": f, "abstention_rate": 0.0}
    if details:
        out.update(tp=tp, fp=fp, fn=fn, precision=p, recall=r,
                   fallback=[i for i, res in enumerate(results) if res[3]])
    return out
