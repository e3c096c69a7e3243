"""judge.py's expert-evaluation pieces: `rubric` (an LLM judge grading single answers, against the fake
OpenAI-compatible endpoint of test_judge.py), `human` (the expert page: design, every access rule, concurrent votes,
a real headless Chromium driving two annotators) and `agreement` (the libraries' statistics on constructed cases with
known answers, and the judge-human comparison read from what the pairwise judge really writes)."""
import dataclasses
import json
import os
import re
import shutil
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import exit_status
from test_judge import SENTINEL, FakeJudge, scripted, write_inputs

import judge
import utils

REPO = Path(__file__).resolve().parents[1]
SYS_A, SYS_B = "SYSNAME_ALPHA_7", "SYSNAME_BETA_9"  # system names that must never reach the page


# ----------------------------------------------------------------------------------------------------------------------
# 1. Rubric grading
# ----------------------------------------------------------------------------------------------------------------------

def test_rubric_parsing_never_guesses():
    names = ["accuracy", "completeness", "clarity"]
    full = '理由如下。```json\n{"accuracy": {"score": 4, "reason": "正确"}, "completeness": 3, ' \
           '"clarity": {"score": 5, "reason": "清楚"}}\n```'
    assert judge.parse_rubric(full, names) == ({"accuracy": 4, "completeness": 3, "clarity": 5},
                                               {"accuracy": "正确", "completeness": "", "clarity": "清楚"}, [])
    s, _, problems = judge.parse_rubric('{"accuracy": {"score": 6}, "completeness": {"score": "4"}, '
                                        '"clarity": {"score": true}}', names)
    assert s == {} and len(problems) == 3  # 6, "4" and true are not scores 1-5: none guessed
    s, _, problems = judge.parse_rubric('{"accuracy": 2, "clarity": 3.5}', names)
    assert s == {"accuracy": 2} and problems == ["completeness: missing", "clarity: score is not an integer 1-5"]
    assert judge.parse_rubric("准确性4分，完整性3分", names) == ({}, {}, ["no JSON object"])
    assert [c["name"] for c in judge.load_criteria("chatlaw")] == ["completeness", "logic", "correctness",
                                                                   "language", "guidance", "authority"]


def rubric_reply(scores: dict) -> tuple:
    return ("text", json.dumps({k: {"score": v, "reason": "理由"} for k, v in scores.items()}, ensure_ascii=False))


def test_rubric_against_fake_endpoint(tmp_path):
    """Two systems x 4 questions on DISC's criteria: re-asks for a missing and an out-of-range score, one answer
    never fixed (counted, not scored), a 500 retried, the reference shown; exact means; rerun from the cache."""
    write_inputs(tmp_path, 4, ["X", "X", "Y", "Y"])
    qs = [dict(r, reference=f"参考{r['id']}") if r["id"] == 1 else r for _, r in utils.iter_records(tmp_path / "q.jsonl")]
    utils.write_jsonl(tmp_path / "q.jsonl", qs)
    good = {"accuracy": 4, "completeness": 3, "clarity": 5}
    plan = {  # keyed like test_judge.scripted: (qid, "ab") for system a's answer, (qid, "ba") for system b's
        ("1", "ab"): [rubric_reply(good)],
        ("2", "ab"): [rubric_reply({"accuracy": 2, "clarity": 2}), rubric_reply({"accuracy": 2, "completeness": 2,
                                                                                 "clarity": 2})],  # re-asked once
        ("3", "ab"): [rubric_reply({"accuracy": 7, "completeness": 1, "clarity": 1})],  # never fixed: incomplete
        ("4", "ab"): [("status", 500, False, None), rubric_reply({"accuracy": 5, "completeness": 5, "clarity": 5})],
        ("1", "ba"): [rubric_reply({"accuracy": 1, "completeness": 1, "clarity": 1})],
        ("2", "ba"): [("text", "这个回答不错。")],  # never a JSON object: unparsable
        ("3", "ba"): [rubric_reply({"accuracy": 3, "completeness": 3, "clarity": 3})],
        ("4", "ba"): [rubric_reply({"accuracy": 3, "completeness": 4, "clarity": 3})],
    }
    seen_users = []

    def respond(fake, user, n):
        seen_users.append(user)
        # the rubric prompt shows one answer: make it look like the pairwise one for `scripted`
        mark = "A-ans" if "A-ans" in user else "B-ans"
        return scripted(plan)(fake, user + (" A-ans B-ans" if mark == "A-ans" else " B-ans A-ans"), n)

    fake = FakeJudge(respond)
    cfg = judge.RubricConfig(questions=str(tmp_path / "q.jsonl"), llm_url=fake.url, llm_model="fake",
                             answers=f"{tmp_path / 'sys_a.jsonl'},{tmp_path / 'sys_b.jsonl'}", names="mine,base",
                             out=str(tmp_path / "judge_rubric"), llm_key_env="LEXLAB_TEST_KEY", max_reasks=1,
                             backoff=0.01, backoff_max=0.02, bootstrap=200)
    os.environ["LEXLAB_TEST_KEY"] = SENTINEL
    try:
        s = judge.run_rubric(cfg)
        calls = dict(fake.calls)
        s2 = judge.run_rubric(cfg)
        with pytest.raises(utils.RunDirError, match="llm_model: 'fake' -> 'other'"):  # one grading per folder
            judge.run_rubric(dataclasses.replace(cfg, llm_model="other"))
    finally:
        os.environ.pop("LEXLAB_TEST_KEY")
        fake.close()
    assert calls == {("1", "ab"): 1, ("2", "ab"): 2, ("3", "ab"): 2, ("4", "ab"): 2,
                     ("1", "ba"): 1, ("2", "ba"): 2, ("3", "ba"): 1, ("4", "ba"): 1}
    assert s["judge_calls"] == 12 and s2["judge_calls"] == 0 and s2["cached"] == 8
    assert s2["scores"] == s["scores"]
    assert any("[参考答案]\n参考1" in u for u in seen_users) and not any("[参考答案]" in u and "问题Q2" in u
                                                                        for u in seen_users)
    mine, base = s["scores"]["mine"]["overall"], s["scores"]["base"]["overall"]
    assert (mine["accuracy"]["mean"], mine["accuracy"]["n"], mine["accuracy"]["errors"]) == (round(11 / 3, 4), 3, 1)
    assert (mine["completeness"]["mean"], mine["completeness"]["n"]) == (round(11 / 4, 4), 4)
    assert (base["clarity"]["mean"], base["clarity"]["n"], base["clarity"]["errors"]) == (round(7 / 3, 4), 3, 1)
    lo, hi = mine["completeness"]["ci95"]
    assert 1 <= lo <= 11 / 4 <= hi <= 5
    assert s["scores"]["mine"]["by_category"]["Y"]["accuracy"] == {"mean": 5.0, "ci95": [5.0, 5.0], "n": 1,
                                                                   "errors": 1}
    assert s["grade_errors"] == {"incomplete": 1, "unparsable": 1, "failed": 0}
    grades = [json.loads(x) for x in (tmp_path / "judge_rubric" / "rubric_grades.jsonl").read_text().splitlines()]
    assert len(grades) == 8 and {g["status"] for g in grades} == {"ok", "incomplete", "unparsable"}
    texts = [p.read_text() for p in (tmp_path / "judge_rubric").iterdir()]
    assert not any(SENTINEL in t for t in texts)

    # the figure beside the win-rate plots: plots.py finds judge*/rubric_summary.json
    import plots.plots as plots
    written, _ = plots.draw_run(plots.PlotConfig(run=str(tmp_path), out=str(tmp_path / "figs"), lawbench_dir=None))
    assert [p.name for p in written] == ["rubric_judge_rubric.png"] and written[0].stat().st_size > 10_000


def test_rubric_checks_inputs_and_endpoint_before_writing(tmp_path, capsys):
    write_inputs(tmp_path, 2, ["X"])
    (tmp_path / "crit.json").write_text('[{"name": "准确", "description": "x"}]', encoding="utf-8")
    base = ["rubric", "--questions", tmp_path / "q.jsonl", "--answers", tmp_path / "sys_a.jsonl", "--llm_model", "m",
            "--out", tmp_path / "o"]
    base += ["--llm_url", "http://127.0.0.1:9/v1"]  # nothing listens on port 9
    assert exit_status(judge.main, base) == 2
    assert exit_status(judge.main, base + ["--criteria", tmp_path / "crit.json"]) == 2
    assert exit_status(judge.main, base + ["--names", "a,b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("judge.py rubric: error: --llm_url: http://127.0.0.1:9/v1 does not answer")
    assert err[1] == f"judge.py rubric: error: {tmp_path / 'crit.json'}:1: field 'name': '准确': letters, digits and _ " \
        "only (it is a JSON key)"
    assert err[2] == "judge.py rubric: error: --names: 2 name(s) for 1 answers file(s)"
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------------------------
# 2. The expert page: design, access rules, bad input, concurrency, resume
# ----------------------------------------------------------------------------------------------------------------------

def test_study_design_overlap_and_sides():
    items = [f"q{i}" for i in range(20)]
    d = judge.make_study(items, ["x", "y", "z"], overlap=5, per_annotator=None, seed=1)
    shared = set(d["x"]["items"]) & set(d["y"]["items"]) & set(d["z"]["items"])
    assert len(shared) == 5 and set().union(*(set(v["items"]) for v in d.values())) == set(items)
    assert sorted(len(v["items"]) for v in d.values()) == [10, 10, 10]  # 5 shared + 15 dealt 5 / 5 / 5
    assert all(set(v["left"]) == set(v["items"]) and set(v["left"].values()) == {"a", "b"} for v in d.values())
    assert d == judge.make_study(items, ["x", "y", "z"], overlap=5, per_annotator=None, seed=1)  # seeded
    capped = judge.make_study(items, ["x", "y"], overlap=3, per_annotator=6, seed=0)
    assert [len(v["items"]) for v in capped.values()] == [6, 6]
    with pytest.raises(utils.DataError, match="only 20 items"):
        judge.make_study(items, ["x"], overlap=21, per_annotator=None, seed=0)


def write_study_inputs(tmp, n):
    utils.write_jsonl(tmp / "q.jsonl", [{"id": f"q{i}", "category": "咨询", "question": f"问题{i}：试用期能否解除合同？",
                                         "reference": f"参考{i}"} for i in range(n)])
    utils.write_jsonl(tmp / f"{SYS_A}.jsonl", [{"id": f"q{i}", "answer": f"甲回答{i}"} for i in range(n)])
    utils.write_jsonl(tmp / f"{SYS_B}.jsonl", [{"id": f"q{i}", "answer": f"乙回答{i}"} for i in range(n)])


class Page:
    """judge.py human served in this process on a free port."""

    def __init__(self, tmp, n_items=6, annotators="alice,bob", overlap=2, criteria="disc", **kw):
        write_study_inputs(tmp, n_items)
        self.cfg = judge.HumanConfig(questions=str(tmp / "q.jsonl"), answers_a=str(tmp / f"{SYS_A}.jsonl"),
                                     answers_b=str(tmp / f"{SYS_B}.jsonl"), annotators=annotators,
                                     out=str(tmp / "study"), overlap=overlap, criteria=criteria, port=0, **kw)
        self.start()

    def start(self):
        self.study = judge.open_study(self.cfg)
        self.server = judge.serve_study(self.study, "127.0.0.1", 0)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def token(self, who):
        return self.study.design["annotators"][who]["token"]

    def votes_text(self):
        p = self.study.votes_path
        return p.read_text(encoding="utf-8") if p.exists() else ""

    def request(self, path, body=None, ctype="application/json", method=None):
        """-> (status, body bytes)."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body, ensure_ascii=False).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": ctype} if ctype else {})
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def vote(self, who, item, choice, scores=None, comment=""):
        return self.request(f"/api/{self.token(who)}/vote", {"item": item, "choice": choice,
                                                             "scores": scores or {}, "comment": comment})


@pytest.fixture
def page(tmp_path):
    p = Page(tmp_path)
    yield p
    p.stop()


def test_page_access_rules(page):
    alice, bob = page.token("alice"), page.token("bob")
    a_items = page.study.design["annotators"]["alice"]["items"]
    b_items = page.study.design["annotators"]["bob"]["items"]
    only_alice = next(i for i in a_items if i not in b_items)

    # no token, a wrong token, another path: 403 and an empty body, nothing written
    for path in ["/", "/a/", "/a", f"/a/{alice}x", "/a/" + "x" * 24, f"/api/{alice[:-1]}/state", "/favicon.ico",
                 f"/api/{alice}/votes", f"/a/{alice}/../x", f"/api/{alice}/vote"]:  # GET on the vote endpoint too
        assert page.request(path) == (403, b""), path
    assert page.request("/api/nope/vote", {"item": only_alice, "choice": "left"}) == (403, b"")
    assert page.request("/api/vote", {"item": only_alice, "choice": "left"}) == (403, b"")
    assert page.request(f"/a/{alice}", b"{}") == (403, b"")  # POST to the page
    assert page.request(f"/api/{alice}/state", method="DELETE") == (403, b"")

    # the page and its data: no system name anywhere, only the annotator's own items
    status, html = page.request(f"/a/{alice}")
    assert status == 200 and b"<script>" in html
    assert (page.study.out / "study.json").stat().st_mode & 0o777 == 0o600  # the tokens: their owner only
    _, raw = page.request(f"/api/{alice}/state")
    state = json.loads(raw)
    for text in (html.decode(), raw.decode()):
        assert SYS_A not in text and SYS_B not in text and "SYSNAME" not in text
    assert [it["id"] for it in state["items"]] == a_items and (state["done"], state["total"]) == (0, len(a_items))
    assert all(it["reference"] is None for it in state["items"])  # --show_reference is off

    # a vote: the screen side becomes the system (verdict is a / b by system; scores oriented to system a)
    assert page.vote("alice", only_alice, "left", {"accuracy": 1, "clarity": 3}, "左边引用法条准确")[0] == 200
    left = page.study.design["annotators"]["alice"]["left"][only_alice]
    (rec,) = [json.loads(x) for x in page.votes_text().splitlines()]
    assert list(rec) == list(judge.VOTE_KEYS)
    assert rec["item"] == only_alice and rec["annotator"] == "alice" and (rec["a"], rec["b"]) == (SYS_A, SYS_B)
    assert rec["shown_left"] == {"a": SYS_A, "b": SYS_B}[left] and rec["verdict"] == left
    assert rec["scores"] == {"accuracy": 5 if left == "a" else 1, "clarity": 3} and rec["comment"] == "左边引用法条准确"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", rec["at"])

    # bob sees neither alice's vote nor her own items, and cannot vote on them
    bob_state = json.loads(page.request(f"/api/{bob}/state")[1])
    assert only_alice not in [it["id"] for it in bob_state["items"]] and bob_state["done"] == 0
    shared = next(i for i in a_items if i in b_items)
    assert page.vote("alice", shared, "tie")[0] == 200
    assert all(it["vote"] is None for it in json.loads(page.request(f"/api/{bob}/state")[1])["items"])
    before = page.votes_text()
    assert page.vote("bob", only_alice, "right") == (403, b"")
    assert page.votes_text() == before

    # bad input: 400, nothing written
    bad = [{"item": shared, "choice": "A"}, {"item": shared, "choice": "left", "scores": {"accuracy": 6}},
           {"item": shared, "choice": "left", "scores": {"accuracy": True}},
           {"item": shared, "choice": "left", "scores": {"accuracy": "3"}},
           {"item": shared, "choice": "left", "scores": {"logic": 3}},  # not one of this study's criteria
           {"item": shared, "choice": "left", "scores": [3]}, {"item": shared, "choice": "left", "comment": 5},
           {"item": shared, "choice": "left", "comment": "长" * 5001}, {"item": shared, "choice": "left", "x": 1},
           {"item": 3, "choice": "left"}, {"choice": "left"}, ["left"], "left", 3]
    for body in bad:
        assert page.request(f"/api/{bob}/vote", body)[0] == 400, body
    assert page.request(f"/api/{bob}/vote", b"null")[0] == 400
    assert page.request(f"/api/{bob}/vote", b"{not json")[0] == 400
    assert page.request(f"/api/{bob}/vote", b"\xff\xfe")[0] == 400
    assert page.request(f"/api/{bob}/vote", {"item": shared, "choice": "left"}, ctype="text/plain")[0] == 400
    assert page.request(f"/api/{bob}/vote", b"{" + b" " * (65 << 10) + b"}")[0] == 400
    assert page.votes_text() == before

    # a changed vote is a new line; the page shows the last one (in screen terms)
    assert page.vote("alice", only_alice, "right", {"clarity": 2})[0] == 200
    lines = page.votes_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["verdict"] == ("b" if left == "a" else "a")
    mine = {it["id"]: it for it in json.loads(page.request(f"/api/{alice}/state")[1])["items"]}
    assert mine[only_alice]["vote"] == {"choice": "right", "scores": {"clarity": 2}, "comment": ""}
    assert json.loads(page.request(f"/api/{alice}/state")[1])["done"] == 2

    # resume: a restart serves the same study (same links, votes kept); a torn last line is dropped
    page.stop()
    with open(page.study.votes_path, "a", encoding="utf-8") as f:
        f.write('{"item": "q0", "annot')
    page.start()
    assert page.token("alice") == alice and page.study.votes_path.read_text() == before + lines[-1] + "\n"
    assert json.loads(page.request(f"/api/{alice}/state")[1])["done"] == 2
    # other inputs into the same folder: refused
    page.cfg.overlap = 3
    with pytest.raises(utils.DataError, match="holds a study with other"):
        judge.open_study(page.cfg)


def test_page_binds_loopback_and_bad_flags_are_one_line(tmp_path, capsys):
    write_study_inputs(tmp_path, 3)
    args = ["human", "--questions", tmp_path / "q.jsonl", "--answers_a", tmp_path / f"{SYS_A}.jsonl",
            "--answers_b", tmp_path / f"{SYS_B}.jsonl", "--out", tmp_path / "s"]
    assert exit_status(judge.main, args + ["--annotators", "x,y", "--overlap", "4"]) == 2
    assert exit_status(judge.main, args + ["--annotators", "x,x"]) == 2
    assert exit_status(judge.main, args + ["--annotators", "x", "--criteria", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["judge.py human: error: --overlap: 4 shared items but only 3 items",
                   "judge.py human: error: --annotators: expected distinct names (letters, digits, _ . -), got 'x,x'",
                   "judge.py human: error: --criteria: expected disc | chatlaw or a JSON file, got 'nope'"]
    assert judge.HumanConfig.__dataclass_fields__["host"].default == "127.0.0.1"
    with socket.socket() as taken:  # a port in use: one line, nothing written
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert exit_status(judge.main, args + ["--annotators", "x", "--overlap", "1", "--port", port]) == 2
    assert capsys.readouterr().err.startswith(f"judge.py human: error: --host 127.0.0.1 --port {port}: cannot listen")
    assert not (tmp_path / "s").exists()  # nothing written before every input was checked


def test_the_command_binds_loopback_prints_links_and_stops_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys
    write_study_inputs(tmp_path, 3)
    cmd = [sys.executable, str(REPO / "judge.py"), "human", "--questions", str(tmp_path / "q.jsonl"),
           "--answers_a", str(tmp_path / f"{SYS_A}.jsonl"), "--answers_b", str(tmp_path / f"{SYS_B}.jsonl"),
           "--annotators", "x,y", "--overlap", "1", "--port", "0", "--out", str(tmp_path / "s")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        urls = [re.search(r"(http://\S+)", line).group(1) for line in lines[1:]]
        assert all(u.startswith("http://127.0.0.1:") for u in urls), lines
        with urllib.request.urlopen(urls[0], timeout=20) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == "", err


def test_concurrent_annotators_lose_nothing(tmp_path):
    n_threads, m_votes = 8, 25
    page = Page(tmp_path, n_items=m_votes, annotators=",".join(f"e{i}" for i in range(n_threads)),
                overlap=m_votes, criteria="chatlaw")
    try:
        def work(k):
            who = f"e{k}"
            return [page.vote(who, item, ("left", "right", "tie")[(k + j) % 3], {"logic": 1 + (k + j) % 5},
                              f"第{j}条 " + "意见" * 200)[0]
                    for j, item in enumerate(page.study.design["annotators"][who]["items"])]
        with ThreadPoolExecutor(n_threads) as pool:
            codes = [c for cs in pool.map(work, range(n_threads)) for c in cs]
    finally:
        page.stop()
    assert codes == [200] * (n_threads * m_votes)
    recs = [json.loads(x) for x in page.votes_text().splitlines()]  # every line whole
    assert len(recs) == n_threads * m_votes
    assert {(r["annotator"], r["item"]) for r in recs} == {(f"e{k}", f"q{i}") for k in range(n_threads)
                                                           for i in range(m_votes)}
    assert len(judge.read_votes(page.study.votes_path)) == n_threads * m_votes


# ----------------------------------------------------------------------------------------------------------------------
# 3. Agreement: the libraries' values on constructed cases with known answers
# ----------------------------------------------------------------------------------------------------------------------

def vote(item, who, winner, a="P", b="Q", scores=None, left=None):
    """A vote record; winner is a system name or 'tie'. a / b order and the side shown vary: labels must not."""
    verdict = "tie" if winner == "tie" else "a" if winner == a else "b"
    return {"item": item, "annotator": who, "a": a, "b": b, "shown_left": left or a, "verdict": verdict,
            "scores": scores or {}, "comment": "", "at": "2026-12-05T09:00:00.000+00:00"}


KRIPP = [  # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 coders x 12 units, missing = None
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]


def constructed_votes():
    """x and y: 50 items, the textbook Cohen case (20 both P, 15 both Q, 5 P/Q, 10 Q/P: kappa 0.4); z: items 0-9 with
    its own labels. On items k0..k11, w, x, y, z give the Krippendorff (2011) values as scores (and value % 3 as the
    verdict label)."""
    votes = []
    xy = [("P", "P")] * 20 + [("Q", "Q")] * 15 + [("P", "Q")] * 5 + [("Q", "P")] * 10
    for i, (lx, ly) in enumerate(xy):
        flip = i % 2 == 0  # half the votes list the systems the other way round, and show them on the other side
        a, b = ("Q", "P") if flip else ("P", "Q")
        votes.append(vote(f"i{i}", "x", lx, a, b, left=b))
        votes.append(vote(f"i{i}", "y", ly, a, b))
    for i in range(10):
        votes.append(vote(f"i{i}", "z", ["P", "Q", "tie"][i % 3]))
    for j in range(12):
        for who, row in zip("wxyz", KRIPP):
            if row[j] is not None:
                votes.append(vote(f"k{j}", who, ["P", "Q", "tie"][row[j] % 3], scores={"accuracy": row[j]}))
    return votes


def test_agreement_equals_the_libraries_and_known_answers(tmp_path):
    import krippendorff
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    votes = constructed_votes()
    stale = vote("i0", "x", "tie")  # an earlier vote of x on i0, changed later: the last one counts
    utils.write_jsonl(tmp_path / "votes.jsonl", [stale] + votes)
    r = judge.run_agreement(judge.AgreementConfig(votes=str(tmp_path / "votes.jsonl"), out=str(tmp_path / "agr")))
    assert r == json.loads((tmp_path / "agr" / "agreement.json").read_text())
    assert list(r) == ["cohen_kappa_pairs", "cohen_kappa", "fleiss_kappa", "krippendorff_alpha_verdict",
                       "krippendorff_alpha_scores", "n_items"]
    assert r["n_items"] == 62

    # known answers: Cohen 0.4 for x|y on the 50 i-items (x|y in agreement.json also counts the k-items both rated)
    lab = lambda v: "tie" if v["verdict"] == "tie" else v[v["verdict"]]  # noqa: E731
    by = {(v["annotator"], v["item"]): lab(v) for v in votes}
    xy_items = [f"i{i}" for i in range(50)]
    assert cohen_kappa_score([by[("x", i)] for i in xy_items], [by[("y", i)] for i in xy_items]) == pytest.approx(0.4)
    common = xy_items + [f"k{j}" for j in range(12) if KRIPP[1][j] is not None and KRIPP[2][j] is not None]
    assert r["cohen_kappa_pairs"]["x|y"] == round(cohen_kappa_score([by[("x", i)] for i in common],
                                                                    [by[("y", i)] for i in common]), 6)
    # the Krippendorff (2011) published values: ordinal 0.815 on the scores; nominal 0.743 for the same data
    assert r["krippendorff_alpha_scores"]["accuracy"] == pytest.approx(0.8153875, abs=1e-6)
    nominal = krippendorff.alpha(reliability_data=np.array(KRIPP, dtype=float), level_of_measurement="nominal")
    assert nominal == pytest.approx(0.743, abs=5e-4)

    # every pair and the other statistics: equal to the libraries called on matrices built here independently
    annotators = ["w", "x", "y", "z"]
    units = sorted({v["item"] for v in votes})
    codes = {"P": 0, "Q": 1, "tie": 2}
    for i, p in enumerate(annotators):
        for q in annotators[i + 1:]:
            both = [u for u in units if (p, u) in by and (q, u) in by]
            want = cohen_kappa_score([by[(p, u)] for u in both], [by[(q, u)] for u in both])
            got = r["cohen_kappa_pairs"][f"{p}|{q}"]
            assert (got is None and np.isnan(want)) or got == pytest.approx(want, abs=1e-6), (p, q)
    defined = [v for v in r["cohen_kappa_pairs"].values() if v is not None]
    assert r["cohen_kappa"] == pytest.approx(sum(defined) / len(defined), abs=1e-6)
    full = [u for u in units if all((a, u) in by for a in annotators)]
    assert len(full) == 8  # k1..k8: every coder rated them
    table = aggregate_raters(np.array([[codes[by[(a, u)]] for a in annotators] for u in full]), n_cat=3)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        want = fleiss_kappa(table, method="fleiss")
    assert (r["fleiss_kappa"] is None and np.isnan(want)) or r["fleiss_kappa"] == pytest.approx(want, abs=1e-6)
    data = np.array([[codes[by[(a, u)]] if (a, u) in by else np.nan for u in units] for a in annotators])
    assert r["krippendorff_alpha_verdict"] == pytest.approx(
        krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"), abs=1e-6)

    # perfect agreement: every statistic is 1
    perfect = [vote(f"u{i}", who, ["P", "Q", "tie"][i % 3], scores={"clarity": 1 + i % 5}) for i in range(9)
               for who in "xyz"]
    utils.write_jsonl(tmp_path / "perfect.jsonl", perfect)
    p = judge.run_agreement(judge.AgreementConfig(votes=str(tmp_path / "perfect.jsonl"), out=str(tmp_path / "p")))
    assert p["cohen_kappa"] == p["fleiss_kappa"] == p["krippendorff_alpha_verdict"] == 1.0
    assert p["krippendorff_alpha_scores"] == {"clarity": 1.0}


def test_agreement_bad_votes_file_is_one_line(tmp_path, capsys):
    rec = vote("i0", "x", "P")
    utils.write_jsonl(tmp_path / "v.jsonl", [rec, {**rec, "verdict": "left"}])
    assert exit_status(judge.main, ["agreement", "--votes", tmp_path / "v.jsonl", "--out", tmp_path / "o"]) == 2
    utils.write_jsonl(tmp_path / "w.jsonl", [{k: v for k, v in rec.items() if k != "shown_left"}])
    assert exit_status(judge.main, ["agreement", "--votes", tmp_path / "w.jsonl", "--out", tmp_path / "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"judge.py agreement: error: {tmp_path / 'v.jsonl'}:2: field 'verdict': expected a, b or tie, "
                   "got 'left'",
                   f"judge.py agreement: error: {tmp_path / 'w.jsonl'}:1: field 'shown_left': expected exactly the "
                   "fields item, annotator, a, b, shown_left, verdict, scores, comment, at"]
    assert not (tmp_path / "o").exists()


def test_our_sample_votes_and_one_agreement_per_folder(tmp_path, capsys):
    """data/expert_votes_sample.jsonl (the demo's): in the schema, 3 experts on 10 items; a folder holds the agreement
    of one set of inputs (rerun: recomputed; other inputs: refused unless --overwrite)."""
    sample = REPO / "data" / "expert_votes_sample.jsonl"
    args = ["agreement", "--votes", sample, "--out", tmp_path / "agr"]
    assert exit_status(judge.main, args) == 0 and exit_status(judge.main, args) == 0
    r = json.loads((tmp_path / "agr" / "agreement.json").read_text())
    assert r["n_items"] == 10 and list(r["cohen_kappa_pairs"]) == ["expert_a|expert_b", "expert_a|expert_c",
                                                                   "expert_b|expert_c"]
    assert set(r["krippendorff_alpha_scores"]) == {"accuracy", "completeness", "clarity"}
    assert all(v is not None for v in [r["cohen_kappa"], r["fleiss_kappa"], r["krippendorff_alpha_verdict"]])
    assert "Fleiss kappa" in capsys.readouterr().out
    assert exit_status(judge.main, args + ["--seed", "1"]) == 2
    assert "holds a run made with a different config (seed: 0 -> 1)" in capsys.readouterr().err
    assert exit_status(judge.main, args + ["--seed", "1", "--overwrite"]) == 0


def test_agreement_with_the_judge_reads_what_the_judge_writes(tmp_path):
    """A real pairwise judge run (fake endpoint) -> its OUT folder; expert votes on the same questions; judge-human
    agreement with and without ties counted by hand (FastChat's definition)."""
    write_inputs(tmp_path, 6, ["X"])
    ok = lambda v: [("text", f"[[{v}]]")]  # noqa: E731
    plan = {("1", "ab"): ok("A"), ("1", "ba"): ok("B"),   # sys_a wins
            ("2", "ab"): ok("B"), ("2", "ba"): ok("A"),   # sys_b wins
            ("3", "ab"): ok("C"), ("3", "ba"): ok("C"),   # tie
            ("4", "ab"): ok("A"), ("4", "ba"): ok("A"),   # inconsistent: a tie for the agreement
            ("5", "ab"): [("text", "无结论")], ("5", "ba"): ok("B"),  # unparsable: no judge label
            ("6", "ab"): ok("A"), ("6", "ba"): ok("B")}   # sys_a wins (nobody votes on it)
    fake = FakeJudge(scripted(plan))
    try:
        judge.run(judge.JudgeConfig(questions=str(tmp_path / "q.jsonl"), llm_url=fake.url, llm_model="fake",
                                    out=str(tmp_path / "judge"), answers_a=str(tmp_path / "sys_a.jsonl"),
                                    answers_b=str(tmp_path / "sys_b.jsonl"), max_reasks=0, bootstrap=100))
    finally:
        fake.close()
    A, B = "sys_a", "sys_b"
    votes = [vote("1", "x", A, A, B), vote("1", "y", A, B, A),         # judge A: agree, agree
             vote("2", "x", A, A, B), vote("2", "y", B, A, B),         # judge B: disagree, agree
             vote("3", "x", "tie", A, B), vote("3", "y", A, A, B),     # judge tie: agree, disagree
             vote("4", "x", "tie", A, B), vote("4", "y", B, A, B),     # judge tie (inconsistent): agree, disagree
             vote("5", "x", A, A, B), vote("5", "y", A, A, B),         # no judge label: left out
             vote("1", "z", A, "other", A)]                             # another pair of systems: not this judge's
    utils.write_jsonl(tmp_path / "votes.jsonl", votes)
    assert exit_status(judge.main, ["agreement", "--votes", tmp_path / "votes.jsonl", "--judge", tmp_path / "judge",
                                    "--out", tmp_path / "agr", "--bootstrap", "100"]) == 0
    r = json.loads((tmp_path / "agr" / "agreement.json").read_text())
    assert r["judge"]["units_judged"] == 5 and r["judge"]["units_with_human_votes"] == 4
    assert r["judge_human_agreement"] == {"with_ties": {"agree": 5, "total": 8, "rate": 0.625},
                                          "without_ties": {"agree": 3, "total": 4, "rate": 0.75}}
    # human pairs per unit: (A,A) (A,B) (tie,A) (tie,B) (A,A): with ties 2/5; without: (A,A) (A,B) (A,A) -> 2/3
    assert r["human_human_agreement"] == {"with_ties": {"agree": 2, "total": 5, "rate": 0.4},
                                          "without_ties": {"agree": 2, "total": 3, "rate": 0.6667}}
    w = r["win_rates"]
    assert (w["system_a"], w["system_b"]) == (A, B)
    assert (w["human"]["wins"], w["human"]["ties"], w["human"]["losses"]) == (6, 2, 2) and w["human"]["win_rate"] == 0.6
    assert (w["judge_on_human_items"]["wins"], w["judge_on_human_items"]["ties"],
            w["judge_on_human_items"]["losses"]) == (1, 2, 1)
    judge_summary = json.loads((tmp_path / "judge" / "summary.json").read_text())
    import plots.plots as plots  # the win-rate figure reads the interval judge.py really writes
    assert plots.win_rate_ci(judge_summary) == judge_summary["ci95"]["win_rate"] is not None
    assert plots.win_rate_ci(judge_summary["by_category"]["X"]) == judge_summary["by_category"]["X"]["ci95"]["win_rate"]
    assert w["judge_all"]["win_rate"] == judge_summary["win_rate"] == 0.5  # W q1 q6, L q2, T q3
    assert w["human"]["ci95"]["win_rate"][0] <= 0.6 <= w["human"]["ci95"]["win_rate"][1]


# ----------------------------------------------------------------------------------------------------------------------
# 4. A real browser: headless Chromium, two annotators voting through the page
# ----------------------------------------------------------------------------------------------------------------------

def chromium_paths():
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("headless Chromium absent (Debian: apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium")
    return browser, driver


def test_two_annotators_vote_in_headless_chromium(tmp_path):
    browser, driver = chromium_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    page = Page(tmp_path, n_items=4, overlap=2, criteria="disc")  # alice and bob: 2 shared items + 1 of their own
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1200,900"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        def wait_text(el_id, pattern):
            WebDriverWait(drv, 20).until(lambda d: re.search(pattern, d.find_element(By.ID, el_id).text))

        for who in ("alice", "bob"):
            drv.get(f"{page.base}/a/{page.token(who)}")
            wait_text("progress", r"已完成 done 0 / 3")
            assert SYS_A not in drv.page_source and SYS_B not in drv.page_source
            # item 1: scores and a comment, then the button for the left answer
            drv.find_element(By.CSS_SELECTOR, 'input[name="score-accuracy"][value="2"]').click()
            drv.find_element(By.ID, "comment").send_keys(f"{who} 的评语")
            drv.find_element(By.ID, "vote-left").click()
            wait_text("msg", r"已保存 saved \(1 / 3\)")
            # item 2: the keyboard shortcut for a tie ("3"), typed outside the comment box
            drv.find_element(By.TAG_NAME, "body").send_keys("3")
            wait_text("msg", r"已保存 saved \(2 / 3\)")
            wait_text("progress", r"已完成 done 2 / 3")
            if who == "alice":
                # back to item 1 with the arrow key (the page moved on to item 3): her vote is shown; change it
                # with "2" (the right-hand answer)
                drv.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT)
                wait_text("pos", r"^1 / 3$")
                assert "chosen" in drv.find_element(By.ID, "vote-left").get_attribute("class")
                drv.find_element(By.TAG_NAME, "body").send_keys("2")
                wait_text("msg", r"已保存 saved")
                drv.save_screenshot(str(tmp_path / "page.png"))
        alice_first = page.study.design["annotators"]["alice"]["items"][0]
    finally:
        drv.quit()
        page.stop()
    recs = [json.loads(x) for x in page.votes_text().splitlines()]
    assert [(r["annotator"]) for r in recs] == ["alice"] * 3 + ["bob"] * 2
    design = page.study.design["annotators"]
    for r in recs:
        side = design[r["annotator"]]["left"][r["item"]]
        assert r["shown_left"] == {"a": SYS_A, "b": SYS_B}[side]
    first_a, first_b = recs[0], recs[3]
    assert first_a["verdict"] == design["alice"]["left"][first_a["item"]] and first_a["comment"] == "alice 的评语"
    assert first_a["scores"] == {"accuracy": 4 if first_a["shown_left"] == SYS_A else 2}
    assert recs[1]["verdict"] == "tie" and recs[4]["verdict"] == "tie" and recs[4]["scores"] == {}
    changed = recs[2]
    assert changed["item"] == alice_first == first_a["item"]
    assert changed["verdict"] == ("b" if changed["shown_left"] == SYS_A else "a")  # the right-hand answer
    assert changed["comment"] == "alice 的评语" and changed["scores"] == first_a["scores"]  # the form kept them
    assert first_b["comment"] == "bob 的评语"
    assert (tmp_path / "page.png").stat().st_size > 5_000
