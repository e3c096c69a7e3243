"""prepare_data.py: packing invariants, label masks through packing, filters, recitation numerals, decontamination,
manifest errors and every bad-input kind. CPU, small: the sample run packs to 2048 tokens."""
import json
import random
from pathlib import Path

import numpy as np
import pytest

import prepare_data as P
import utils
from utils import IGNORE_INDEX, DataError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


# ---- packing (pure functions) ----------------------------------------------------------------------------------------

def test_best_fit_pack_invariants_and_determinism():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(500)] + [1000, 1000, 999]
    packs = P.best_fit_pack(lengths, 1000, seed=3)
    flat = sorted(i for p in packs for i in p)
    assert flat == list(range(len(lengths)))  # every sample exactly once: nothing split, nothing lost
    assert all(sum(lengths[i] for i in p) <= 1000 for p in packs)
    assert sum(lengths) / (len(packs) * 1000) > 0.97
    assert packs == P.best_fit_pack(lengths, 1000, seed=3)
    assert packs != P.best_fit_pack(lengths, 1000, seed=4)  # seed shuffles pack order
    assert sorted(map(sorted, packs)) == sorted(map(sorted, P.best_fit_pack(lengths, 1000, seed=4)))
    with pytest.raises(ValueError):
        P.best_fit_pack([5, 1001], 1000)


def test_best_fit_golden():
    # longest first into the fullest pack that fits: 6 -> A, 5 -> B, 4 -> C, 3 -> B (room 3), 2 -> A, 1 -> C
    packs = P.best_fit_pack([5, 3, 4, 2, 6, 1], 8, seed=0)
    assert sorted(map(sorted, packs)) == [[0, 1], [2, 5], [3, 4]]


def test_boundaries_and_positions():
    cu = P.pack_boundaries([3, 2, 4])
    assert cu.tolist() == [0, 3, 5, 9] and cu.dtype == np.int32
    assert P.pack_position_ids(cu, 11).tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 0]
    assert P.pack_position_ids(P.pack_boundaries([]), 3).tolist() == [0, 0, 0]


# ---- the whole pipeline on the built-in sample -------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    cfg = P.Config(manifest=str(SAMPLE / "manifest.json"), model=str(tiny_model), out=str(out),
                   lawbench_dir=str(SAMPLE / "lawbench"), seq_len=2048, general_ratio=0.1, workers=1)
    report = P.run(cfg)
    return cfg, out, report


def test_report_accounts_for_every_record(sample_run):
    _, out, report = sample_run
    assert json.loads((out / "data_report.json").read_text())["stages"] == report["stages"]
    for name, s in report["sources"].items():
        assert s["read"] == s["kept"] + sum(s["dropped"].values()), name
        assert s["read"] > 0
    src = report["sources"]
    assert src["consult_qa"]["dropped"] == {"short_answer": 2, "no_law_cited": 2, "duplicate": 1}
    assert src["judgments"]["dropped"]["duplicate"] == 1
    # planted overlaps with data/sample/lawbench are found without being told
    dec = report["decontamination"]
    assert dec["cail_argmine"] == {"2-8": 2}
    assert dec["judgments"] == {"3-1": 3}
    assert dec["statutes"] == {"1-1": 3}
    assert (out / "config.json").is_file()
    for stage in ("stage1", "stage2"):
        assert report["stages"][stage]["samples"] > 0


def test_rl_prompts(sample_run):
    _, out, report = sample_run
    rows = [json.loads(x) for x in (out / "rl_prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == report["sources"]["judgments"]["kept"]
    r = rows[0]
    assert r["prompt"].startswith(utils.JUDGMENT_INSTRUCTION)
    assert set(r["truth"]) == {"charges", "articles", "term_months", "life", "death"}
    assert any(x["truth"]["death"] for x in rows) and any(x["truth"]["life"] for x in rows)


def load_stage(d):
    a = {k: np.load(d / f"{k}.npy") for k in ("input_ids", "labels", "position_ids", "cu_seqlens", "cu_offsets")}
    return a, json.loads((d / "meta.json").read_text())


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_packed_format_invariants(sample_run, stage):
    cfg, out, report = sample_run
    a, meta = load_stage(out / stage)
    n, L = a["input_ids"].shape
    assert L == cfg.seq_len and meta["n_packs"] == n and a["cu_offsets"].shape == (n + 1,)
    assert a["input_ids"].dtype == np.int32 and a["cu_offsets"].dtype == np.int64
    n_real = 0
    for i in range(n):
        cu = a["cu_seqlens"][a["cu_offsets"][i]:a["cu_offsets"][i + 1]]
        assert cu[0] == 0 and np.all(np.diff(cu) > 0) and cu[-1] <= L
        real = int(cu[-1])
        n_real += real
        assert a["position_ids"][i].tolist() == P.pack_position_ids(cu, L).tolist()
        assert np.all(a["input_ids"][i, real:] == meta["pad_token_id"])  # padding: pad id, no label, position 0
        assert np.all(a["labels"][i, real:] == -100) and np.all(a["position_ids"][i, real:] == 0)
        lab = a["labels"][i, :real]
        assert np.all((lab == -100) | (lab == a["input_ids"][i, :real]))
    assert n_real == meta["n_tokens"] == report["stages"][stage]["tokens"]
    assert meta["n_samples"] == len(a["cu_seqlens"]) - n
    assert meta["n_supervised"] == int((a["labels"] != -100).sum())


def test_samples_survive_packing_whole(sample_run, tiny_model):
    """Every packed segment is exactly encode_chat of one stage-1 sample (ids AND labels): no split."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    _, out, report = sample_run
    a, _ = load_stage(out / "stage1")
    segs = []
    for i in range(a["input_ids"].shape[0]):
        cu = a["cu_seqlens"][a["cu_offsets"][i]:a["cu_offsets"][i + 1]]
        for s, e in zip(cu[:-1], cu[1:]):
            segs.append((tuple(a["input_ids"][i, s:e]), tuple(a["labels"][i, s:e])))
    legal = [json.loads(x) for x in (out / "work" / "legal.jsonl").read_text(encoding="utf-8").splitlines()]
    want = {tuple(map(tuple, P.encode_chat(tok, s["m"]))) for s in legal if 1 in s["st"]}
    got = set(segs)
    assert want <= got  # all legal stage-1 samples, whole; the rest are general samples
    assert len(segs) - len([s for s in legal if 1 in s["st"]]) == report["mix"]["general_used"]
    # each segment starts at a role header and its last supervised token is the end-of-turn token
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    for ids, labs in segs:
        assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
        assert [x for x in labs if x != -100][-1] == eot


MSGS = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "世界"},
        {"role": "user", "content": "盗窃"}, {"role": "assistant", "content": "张某"}]


def test_encode_chat_matches_template_and_masks(tiny_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids, labels = P.encode_chat(tok, MSGS)
    assert ids == tok(tok.apply_chat_template(MSGS, tokenize=False), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(labels)
    supervised = tok.decode([i for i, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert supervised == "世界<|im_end|>张某<|im_end|>"  # both turns, end-of-turn included, nothing else
    assert labels[-1] == IGNORE_INDEX  # the newline after the final <|im_end|> is not supervised
    # single turn: nothing of the prompt is supervised
    ids1, labels1 = P.encode_chat(tok, MSGS[:2])
    n_prompt = len(tok(tok.apply_chat_template(MSGS[:1], tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"])
    assert all(l == IGNORE_INDEX for l in labels1[:n_prompt]) and labels1[n_prompt] != IGNORE_INDEX


def test_encode_batch_equals_one_at_a_time_multiturn(tiny_model):
    """One batched tokenizer call over several conversations: each comes out as it does alone, nothing mixed."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    convs = [[{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
              {"role": "user", "content": "盗窃罪规定在哪一条？"}, {"role": "assistant", "content": "《刑法》第二百六十四条。"}],
             [{"role": "system", "content": "你是法官。"}, {"role": "user", "content": "问"},
              {"role": "assistant", "content": "答"}], MSGS]
    for (ids, sup), conv in zip(P.encode_batch(tok, convs), convs):
        ref_ids, ref_lab = P.encode_chat(tok, conv)
        assert ids.tolist() == ref_ids == tok(tok.apply_chat_template(conv, tokenize=False),
                                              add_special_tokens=False)["input_ids"]
        assert np.where(sup.astype(bool), ids, -100).tolist() == ref_lab


def test_overlong_truncate_and_drop(tiny_model, tmp_path):
    man = tmp_path / "m.json"
    man.write_text(json.dumps([{"name": "s", "kind": "statutes", "path": str(SAMPLE / "statutes.jsonl")}]))
    for mode, key in (("truncate", "truncated"), ("drop", "dropped")):
        cfg = P.Config(manifest=str(man), model=str(tiny_model), out=str(tmp_path / mode), seq_len=96,
                       overlong=mode, general_ratio=0.0, workers=1, decontaminate=False)
        rep = P.run(cfg)
        assert rep["overlong"][key] > 0
        ids = np.load(tmp_path / mode / "stage1" / "input_ids.npy")
        assert ids.shape[1] == 96


# ---- filters, numerals, templates ------------------------------------------------------------------------------------

CFG = P.Config(out="unused")


def consult(q, a, scorer=None):
    return P.convert_consultation({"question": q, "answer": a}, "f.jsonl", 1, random.Random(0), {}, CFG, scorer)


def test_consultation_rule_filter():
    good = "依照《劳动合同法》第八十二条，用人单位应当向劳动者每月支付二倍的工资，可以申请劳动仲裁。"
    assert consult("问", good).samples[0].messages[1]["content"] == good
    for ans, reason in [("起诉。", "short_answer"), ("找《劳动法》。", "short_answer"),
                        ("可以先和邻居沟通协商，如果沟通无效可以找物业或者社区居委会调解处理。", "no_law_cited"),
                        ("应当扶，见义勇为是传统美德，必要时拨打急救电话《120》求助，不要犹豫。", "no_law_cited")]:
        with pytest.raises(P.Drop) as e:
            consult("问", ans)
        assert e.value.reason == reason
    with pytest.raises(DataError, match="field 'answer': empty"):
        consult("问", "  ")


def test_llm_filter_stub_and_cache(tmp_path):
    calls = []

    def ask(prompt):
        calls.append(prompt)
        return P.parse_scores('评分：{"clarity": 2, "coherence": 5}' if "模糊" in prompt else '{"clarity": 5, "coherence": 4}')

    ans = "依照《民法典》第一千零七十六条，夫妻双方自愿离婚的，应当签订书面离婚协议并到婚姻登记机关申请登记。"
    scorer = P.LLMScorer("http://127.0.0.1:9/v1", "m", "NO_SUCH_KEY", tmp_path / "cache.jsonl", ask=ask)
    assert consult("怎么离婚？", ans, scorer).samples[0].stages == [1, 2]  # both >= llm_hq: stage 2 too
    with pytest.raises(P.Drop) as e:
        consult("模糊的问题", ans, scorer)
    assert e.value.reason == "llm_unclear"
    assert len(calls) == 2
    again = P.LLMScorer("http://127.0.0.1:9/v1", "m", "NO_SUCH_KEY", tmp_path / "cache.jsonl", ask=ask)
    consult("怎么离婚？", ans, again)
    assert len(calls) == 2 and again.hits == 1 and again.calls == 0  # rerun costs nothing


def test_llm_filter_http_loopback(tmp_path, monkeypatch):
    """The real client against a tiny local OpenAI-compatible server; the key goes in the header, never the cache."""
    import http.server
    import threading
    seen = {}

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen["auth"] = self.headers.get("Authorization")
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps({"choices": [{"message": {"content": '{"clarity": 4, "coherence": 3}'}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("LEXLAB_TEST_KEY", "sk-secret")
    s = P.LLMScorer(f"http://127.0.0.1:{srv.server_port}/v1", "judge", "LEXLAB_TEST_KEY", tmp_path / "c.jsonl")
    assert s.score("q", "a") == {"clarity": 4, "coherence": 3}
    srv.shutdown()
    assert seen["auth"] == "Bearer sk-secret" and seen["body"]["model"] == "judge"
    assert "sk-secret" not in (tmp_path / "c.jsonl").read_text()


def test_recitation_numerals():
    rec = {"law": "刑法", "part": "第二编 分则", "article_num": 133, "article_sub": 1, "text": "在道路上驾驶机动车……"}
    samples = P.convert_statute(rec, "f", 1, random.Random(0), {}, CFG, None).samples
    assert len(samples) == 2 and samples[1].stages == [2]  # key law: a second question form for stage 2
    assert all("第一百三十三条之一" in s.messages[0]["content"] for s in samples)
    assert samples[0].messages[0]["content"] != samples[1].messages[0]["content"]
    rec = {"law": "民法典", "part": "第三编 合同", "article_num": 1076, "article_sub": 0, "text": "……"}
    s = P.convert_statute(rec, "f", 1, random.Random(0), {}, CFG, None).samples
    assert len(s) == 1 and "第一千零七十六条" in s[0].messages[0]["content"] and s[0].stages == [1]


def test_templates_seeded():
    rec = {"instruction": "请给出罪名。", "question": "事实：……", "answer": "[罪名]盗窃<eoa>"}
    pick = lambda seed: P.convert_lawbench_task(rec, "f", 1, random.Random(seed), {}, CFG, None).samples[0].messages
    assert pick(1) == pick(1)
    assert len({pick(s)[0]["content"] for s in range(20)}) == len(P.TEMPLATES["lawbench"])


def test_judgment_sample_uses_shared_format():
    rec = {"fact": "被告人秘密窃取手机一部。", "meta": {"accusation": ["盗窃"], "relevant_articles": [264, 264],
                                                 "term_of_imprisonment": {"imprisonment": 18, "death_penalty": False,
                                                                          "life_imprisonment": False}}}
    got = P.convert_judgment(rec, "f", 1, random.Random(0), {}, CFG, None)
    s = got.samples[0].messages
    assert s[0]["content"] == utils.judgment_prompt(rec["fact"])
    assert s[1]["content"] == "<answer>\n罪名：盗窃罪\n法条：《刑法》第二百六十四条\n刑期：一年六个月\n</answer>"
    assert got.rl["truth"] == {"charges": ["盗窃"], "articles": [264], "term_months": 18, "life": False,
                                "death": False}


# ---- decontamination -------------------------------------------------------------------------------------------------

def test_decontamination_planted(tmp_path):
    lb = tmp_path / "data" / "zero_shot"
    lb.mkdir(parents=True)
    fact = ("2019年3月5日晚，被告人甲在某市某区某超市内趁店员不备，将货架上的两瓶白酒藏入衣内，"
            "未结账即离开，价值人民币一千二百元，后被保安当场抓获并移交公安机关处理。")
    (lb / "3-1.json").write_text(json.dumps([{"instruction": "i", "question": "事实：" + fact, "answer": "a"},
                                             {"instruction": "i", "question": "丙某在商场内的行为应当构成什么罪名？", "answer": "b"}],
                                            ensure_ascii=False), encoding="utf-8")
    d = P.Decontaminator(tmp_path)
    assert d.hits("前言。" + fact.replace("，", " ") + "后记") == {0}  # punctuation / whitespace do not hide it
    assert d.hits(fact[:30]) == set()  # one shared phrase is not an overlap
    assert d.hits("请问：丙某在商场内的行为应当构成什么罪名？") == {1}  # short item: 12-char windows, most of it present
    assert d.hits("丙某的行为") == set()
    assert P.normalize("《刑法》 第 264 条。") == "刑法第264条"


# ---- manifest and bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("manifest,match", [
    ("[{\"name\": \"a\", \"kind\": \"judgments\"", "invalid JSON"),
    ("[]", "non-empty list"),
    ("[{\"kind\": \"judgments\", \"path\": \"x\"}]", r"sources\[1\]\.name"),
    ("[{\"name\": \"a\", \"kind\": \"novels\", \"path\": \"x\"}]", "unknown kind 'novels'"),
    ("[{\"name\": \"a\", \"kind\": \"judgments\"}]", r"sources\[1\]\.path"),
    ("[{\"name\": \"a\", \"kind\": \"general\", \"path\": \"x\"}, {\"name\": \"a\", \"kind\": \"general\", \"path\": \"y\"}]",
     "duplicate name"),
])
def test_manifest_errors(tmp_path, manifest, match):
    p = tmp_path / "manifest.json"
    p.write_text(manifest)
    with pytest.raises(DataError, match=match) as e:
        P.load_manifest(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)
    with pytest.raises(DataError, match="file not found"):
        P.load_manifest(tmp_path / "nope.json")


GOOD_J = {"fact": "被告人秘密窃取手机。", "meta": {"accusation": ["盗窃"], "relevant_articles": [264],
                                            "term_of_imprisonment": {"imprisonment": 6}}}


def bad_sources(tmp_path):
    """(kind, file name, bytes, expected reason, message part)"""
    j = lambda r: json.dumps(r, ensure_ascii=False)
    return [
        ("judgments", "badjson.jsonl", (j(GOOD_J) + "\n{\"fact\": \n").encode(), "bad_json", "badjson.jsonl:2"),
        ("judgments", "gbk.jsonl", (j(GOOD_J) + "\n").encode("gbk"), "bad_encoding", "GBK"),
        ("judgments", "nofield.jsonl", (j(GOOD_J) + "\n" + j({"fact": "x", "meta": {}}) + "\n").encode(),
         "missing_field", "nofield.jsonl:2: field 'meta.accusation': missing"),
        ("consultation", "empty.jsonl", (j({"question": "q", "answer": ""}) + "\n").encode(), "empty_field",
         "empty.jsonl:1: field 'answer': empty"),
        ("judgments", "missing.jsonl", None, "missing_file", "missing.jsonl: file not found"),
    ]


@pytest.mark.parametrize("i", range(5))
def test_bad_input_raise_and_skip(tmp_path, i):
    kind, name, data, reason, msg = bad_sources(tmp_path)[i]
    if data is not None:
        (tmp_path / name).write_bytes(data)
    man = tmp_path / "m.json"
    man.write_text(json.dumps([{"name": "src", "kind": kind, "path": name}]))
    sources = P.load_manifest(man)
    with pytest.raises(DataError) as e:
        P.collect(P.Config(out="unused", on_error="raise"), sources, tmp_path / "o1")
    assert msg in str(e.value) and "\n" not in str(e.value) and e.value.reason == reason
    rep = P.collect(P.Config(out="unused", on_error="skip"), P.load_manifest(man), tmp_path / "o2")["sources"]["src"]
    if reason in ("bad_encoding", "missing_file"):  # whole-file problems
        assert rep["file_errors"] == {reason: 1}
    else:
        assert rep["dropped"] == {reason: 1}
        assert rep["read"] == rep["kept"] + 1


def test_hf_dataset_sources_read_like_jsonl(tmp_path):
    """A parquet file, a save_to_disk folder (DatasetDict split) and an .arrow file, written here with `datasets` (no
    hub, no network), give the same samples as the same records in a .jsonl file; a bad row is the same one-line
    error, naming file and row; a folder that is not a dataset is a one-line error too."""
    import datasets
    recs = [{**GOOD_J, "fact": f"被告人第{i}次秘密窃取手机。"} for i in range(4)]
    utils.write_jsonl(tmp_path / "j.jsonl", recs)
    ds = datasets.Dataset.from_list(recs)
    ds.to_parquet(str(tmp_path / "j.parquet"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    ds.save_to_disk(str(tmp_path / "one"))
    arrow = next((tmp_path / "one").glob("*.arrow")).name

    def samples(path, **opts):
        man = tmp_path / "m.json"
        man.write_text(json.dumps([{"name": "s", "kind": "judgments", "path": path, "options": opts}]))
        out = tmp_path / f"o_{len(list(tmp_path.iterdir()))}"
        rep = P.collect(P.Config(out="unused"), P.load_manifest(man), out)["sources"]["s"]
        assert rep["read"] == rep["kept"] == 4
        return (out / "work" / "legal.jsonl").read_text(), (out / "rl_prompts.jsonl").read_text()

    want = samples("j.jsonl")
    assert samples("j.parquet") == samples("dd", split="train") == samples(f"one/{arrow}") == samples("one") == want
    with pytest.raises(DataError, match=r"dd: field 'options.split': no split 'test' \(has train\)"):
        samples("dd", split="test")
    datasets.Dataset.from_list([GOOD_J, {"fact": "", "meta": GOOD_J["meta"]}]).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"bad\.parquet:2: field 'fact': empty$"):
        samples("bad.parquet")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="empty_dir: not a readable Hugging Face dataset") as e:
        samples("empty_dir")
    assert "\n" not in str(e.value)


def test_cli_one_line_error(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(REPO / "prepare_data.py"), "--manifest", str(tmp_path / "none.json"),
                        "--out", str(tmp_path / "o"), "--decontaminate", "false"], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "none.json: file not found" in r.stderr and "Traceback" not in r.stderr


# ---- the real data (skipped when ../shared is absent) --------------------------------------------------------------

def test_shared_known_overlaps_found(shared_dir, lawbench_dir):
    """Argument mining vs 2-8 (~180 items) and fakao_gpt4 vs 1-2 / 3-6 (~95 rows), found without the flags."""
    d = P.Decontaminator(lawbench_dir)
    data = shared_dir / "data"
    items = set()
    for line, rec in utils.iter_records(data / "lawbench_task_sources" / "cail2021_argmine_train.jsonl"):
        text = rec["sc"] + "".join(rec["candidates"].values())
        items |= {d.items[i] for i in d.hits(text) if d.items[i][0] == "2-8"}
    assert 170 <= len(items) <= 200
    flagged, marked = set(), set()
    for line, rec in utils.iter_records(data / "exam_mcq" / "lawyer_llama_fakao_gpt4.jsonl"):
        if {d.items[i][0] for i in d.hits(rec["input"])} & {"1-2", "3-6"}:
            flagged.add(line)
        if rec["lawbench_overlap"]:
            marked.add(line)
    assert len(marked & flagged) >= 0.95 * len(marked) and len(flagged) <= 1.15 * len(marked)
