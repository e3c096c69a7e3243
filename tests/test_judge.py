"""judge.py against a real loopback HTTP server speaking the OpenAI chat-completions API (scripted verdicts and
injected faults), a kill-and-resume run, the real DISC-Law-Eval questions, vLLM's own OpenAI server on the tiny model,
and the shared generation backends (utils.generate: HF vs vLLM greedy)."""
import collections
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

import judge
import utils

REPO = Path(__file__).resolve().parents[1]
SENTINEL = "sk-LEXLAB-SENTINEL-7f3a9c"  # the "API key": must never show up anywhere we write or print
HAS_VLLM = importlib.util.find_spec("vllm") is not None


# ----------------------------------------------------------------------------------------------------------------------
# A fake OpenAI-compatible judge: a bounded thread pool HTTP server on 127.0.0.1
# ----------------------------------------------------------------------------------------------------------------------

class BoundedServer(HTTPServer):
    """HTTPServer answering each connection on a fixed pool of threads."""
    def __init__(self, addr, handler, workers=8):
        super().__init__(addr, handler)
        self.pool = ThreadPoolExecutor(workers)

    def process_request(self, request, client_address):
        self.pool.submit(self._work, request, client_address)

    def _work(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            pass  # the client gave up (timeout test): a broken pipe here is expected
        finally:
            self.shutdown_request(request)


class FakeJudge:
    """respond(user_text, n_messages) -> action; actions: ("text", reply), ("status", code, echo_headers, retry_after),
    ("slow", seconds, reply), ("raw", bytes). Calls and Authorization headers are recorded."""

    def __init__(self, respond):
        self.respond, self.calls, self.auth = respond, collections.Counter(), collections.Counter()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/chat/completions" and body["temperature"] == 0
                user = body["messages"][1]["content"]
                with fake.lock:
                    fake.auth[self.headers.get("Authorization")] += 1
                action = fake.respond(fake, user, len(body["messages"]))
                kind = action[0]
                if kind == "slow":
                    time.sleep(action[1])
                    action, kind = ("text", action[2]), "text"
                if kind == "text":
                    self._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": action[1]},
                         "finish_reason": "stop"}]}).encode())
                elif kind == "raw":
                    self._send(200, action[1])
                else:
                    _, code, echo, retry_after = action
                    text = json.dumps({"error": "boom", "headers": dict(self.headers)} if echo else {"error": "x"})
                    if echo == "padded":  # the key straddles the client's 300-character cut of error bodies
                        text = "x" * (300 - len("Bearer sk-LEXLAB")) + f"Bearer {SENTINEL} " + text
                    self._send(code, text.encode(), {"Retry-After": retry_after} if retry_after else {})

            def _send(self, code, data, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = BoundedServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.server.pool.shutdown(wait=False, cancel_futures=True)


def scripted(plan):
    """Server logic for marker questions: plan[(qid, order)] is a list of actions, one per call (the last repeats).
    Questions read '问题Q<qid>'; system a's answer holds 'A-ans', system b's 'B-ans'."""
    def respond(fake, user, n_messages):
        qid = re.search(r"问题Q(\d+)", user).group(1)
        order = "ab" if user.index("A-ans") < user.index("B-ans") else "ba"
        with fake.lock:
            k = fake.calls[(qid, order)]
            fake.calls[(qid, order)] += 1
        actions = plan[(qid, order)]
        return actions[min(k, len(actions) - 1)]
    return respond


def write_inputs(tmp, n, categories):
    qs = [{"id": i, "category": categories[(i - 1) % len(categories)], "question": f"问题Q{i}：盗窃罪如何量刑？"}
          for i in range(1, n + 1)]
    a = [{"id": i, "answer": f"A-ans 甲{'甲' * i}"} for i in range(1, n + 1)]
    b = [{"id": i, "answer": f"B-ans 乙{'乙' * (2 * i)}"} for i in range(1, n + 1)]
    for name, recs in (("q", qs), ("sys_a", a), ("sys_b", b)):
        utils.write_jsonl(tmp / f"{name}.jsonl", recs)
    return qs, a, b


def judge_cmd(tmp, url, out, *extra):
    return [sys.executable, str(REPO / "judge.py"), "--questions", str(tmp / "q.jsonl"),
            "--answers_a", str(tmp / "sys_a.jsonl"), "--answers_b", str(tmp / "sys_b.jsonl"),
            "--llm_url", url, "--llm_model", "fake-judge", "--out", str(out),
            "--llm_key_env", "LEXLAB_TEST_KEY", "--backoff", "0.01", "--backoff_max", "0.05", *extra]


def run_judge(cmd):
    env = {**os.environ, "LEXLAB_TEST_KEY": SENTINEL}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def read_judgments(out):
    return [json.loads(line) for line in (out / "judgments.jsonl").read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------------------------

def test_verdict_parsing_and_outcomes():
    assert judge.parse_verdict("理由……\n[[A]]") == "A"
    assert judge.parse_verdict("[[C]] 两者相当 [[C]]") == "C"
    assert judge.parse_verdict("A更好 [[A]]，不对，[[B]]") is None  # two different tags: not guessed
    assert judge.parse_verdict("A 更好") is None and judge.parse_verdict("[A]") is None
    assert [judge.winner(v, o) for v, o in [("A", "ab"), ("B", "ab"), ("A", "ba"), ("B", "ba"), ("C", "ba")]] == \
        ["a", "b", "b", "a", "tie"]
    assert [judge.pair_outcome(*p) for p in [("a", "a"), ("b", "b"), ("tie", "tie"), ("a", "tie"), ("a", None)]] == \
        ["W", "L", "T", "I", "E"]
    assert judge.rates(list("WWTLIE")) == (0.5, (2 + 0.5 * 2) / 5)
    assert judge.rates(list("IE")) == (None, 0.5)
    ci = judge.bootstrap_ci(list("WWWTLLIE"), 500, seed=0)
    assert ci == judge.bootstrap_ci(list("WWWTLLIE"), 500, seed=0)  # seeded
    assert ci["win_rate"][0] <= 0.5 <= ci["win_rate"][1]


# ----------------------------------------------------------------------------------------------------------------------
# Faults: 429, 500, slow past the timeout, malformed JSON, unparsable and ambiguous verdicts -> exact summary
# ----------------------------------------------------------------------------------------------------------------------

OK = lambda v: ("text", f"比较理由：……\n[[{v}]]")  # noqa: E731
FAULT_PLAN = {  # category X: q1 q2 q3 q4 q9; Y: q5 q6 q7 q8.   expected pair outcome, calls
    ("1", "ab"): [OK("A")], ("1", "ba"): [OK("B")],                                        # W   2
    ("2", "ab"): [("status", 429, False, "0"), OK("A")], ("2", "ba"): [("status", 500, False, None), OK("B")],  # W 4
    ("3", "ab"): [OK("C")], ("3", "ba"): [("slow", 8.0, "[[A]]"), OK("C")],                 # T   3
    ("4", "ab"): [OK("B")], ("4", "ba"): [OK("A")],                                        # L   2
    ("5", "ab"): [OK("A")], ("5", "ba"): [OK("A")],                                        # I   2
    ("6", "ab"): [("raw", b"{not json"), OK("A")], ("6", "ba"): [("text", "无结论"), OK("B")],  # W 4
    ("7", "ab"): [("text", "两个回答都不错。")], ("7", "ba"): [OK("A")],                     # E (unparsable) 4
    ("8", "ab"): [("status", 500, True, None)], ("8", "ba"): [OK("C")],                     # E (failed) 4
    ("9", "ab"): [("text", "[[A]] 还是 [[B]]？"), OK("B")], ("9", "ba"): [OK("A")],          # L   3
}


def test_faults_give_hand_computed_summary_and_never_leak_key(tmp_path):
    _, a, b = write_inputs(tmp_path, 9, ["X", "X", "X", "X", "Y", "Y", "Y", "Y", "X"])
    fake = FakeJudge(scripted(FAULT_PLAN))
    try:
        out = tmp_path / "out"
        cmd = judge_cmd(tmp_path, fake.url, out, "--timeout", "3", "--max_retries", "2", "--max_reasks", "2",
                        "--concurrency", "4", "--bootstrap", "200")
        p1 = run_judge(cmd)
        s = json.loads((out / "summary.json").read_text())
        calls_first = dict(fake.calls)
        p2 = run_judge(cmd)  # rerun: only the transport failure (q8 ab, not cached) is asked again
        s2 = json.loads((out / "summary.json").read_text())
    finally:
        fake.close()

    # overall: W = q1 q2 q6, T = q3, L = q4 q9, I = q5, E = q7 q8
    assert (s["wins"], s["ties"], s["losses"], s["inconsistent"], s["errors"], s["pairs"]) == (3, 1, 2, 1, 2, 9)
    assert s["win_rate"] == 0.5 and s["adjusted_win_rate"] == round(4 / 7, 4)
    x, y = s["by_category"]["X"], s["by_category"]["Y"]
    assert (x["wins"], x["ties"], x["losses"], x["inconsistent"], x["errors"]) == (2, 1, 2, 0, 0)
    assert x["win_rate"] == 0.4 and x["adjusted_win_rate"] == 0.5
    assert (y["wins"], y["ties"], y["losses"], y["inconsistent"], y["errors"]) == (1, 0, 0, 1, 2)
    assert y["win_rate"] == 1.0 and y["adjusted_win_rate"] == 0.75
    assert s["mean_len_a"] == round(sum(len(r["answer"]) for r in a) / 9, 4)
    assert s["mean_len_b"] == round(sum(len(r["answer"]) for r in b) / 9, 4)
    assert s["ci95"]["win_rate"][0] <= 0.5 <= s["ci95"]["win_rate"][1]
    assert s["judgment_errors"] == {"unparsable": 1, "failed": 1}
    assert s["judge_calls"] == 28 and sum(calls_first.values()) == 28
    assert calls_first[("7", "ab")] == 3 and calls_first[("8", "ab")] == 3 and calls_first[("3", "ba")] == 2

    # rerun: 17 judgments from the cache, 3 new calls (q8 ab again, all 500), same numbers
    assert s2["cached"] == 17 and s2["judge_calls"] == 3 and fake.calls[("8", "ab")] == 6
    assert {k: v for k, v in s2.items() if k not in ("judge_calls", "cached")} == \
        {k: v for k, v in s.items() if k not in ("judge_calls", "cached")}
    recs = read_judgments(out)
    assert len(recs) == 17 and len({r["key"] for r in recs}) == 17
    assert {r["status"] for r in recs} == {"ok", "unparsable"}

    # the key: sent to the server, never written or printed (the q8 500 body echoes it back)
    assert fake.auth == {f"Bearer {SENTINEL}": sum(fake.calls.values())}
    assert "[REDACTED]" in p1.stderr
    texts = [p1.stdout, p1.stderr, p2.stdout, p2.stderr] + [f.read_text() for f in out.iterdir()]
    assert not any(SENTINEL in t for t in texts)


def test_retry_wait_honours_retry_after_and_backs_off():
    c = utils.ChatClient("http://127.0.0.1:9/v1", "m", "", timeout=1, max_retries=3, backoff=0.5, backoff_max=10,
                         max_tokens=8)
    assert c._wait(1, "2.5") == 2.5 and c._wait(3, "0") == 0.0 and c._wait(1, "3600") == 10  # capped
    assert 0.5 <= c._wait(1, None) <= 0.55 and 2.0 <= c._wait(3, None) <= 2.2 and c._wait(9, None) == 10
    assert 0.5 <= c._wait(1, "Wed, 21 Oct 2015 07:28:00 GMT") <= 0.55  # an HTTP date: plain backoff


def test_missing_answer_is_a_one_line_error(tmp_path):
    write_inputs(tmp_path, 3, ["X"])
    utils.write_jsonl(tmp_path / "sys_b.jsonl", [{"id": 1, "answer": "B-ans"}])
    p = subprocess.run(judge_cmd(tmp_path, "http://127.0.0.1:9/v1", tmp_path / "out"), cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.endswith("sys_b.jsonl: field 'id': no answer for 2 question(s), first id '2'")


def test_error_bodies_are_redacted_before_cutting():
    fake = FakeJudge(lambda fake, user, n: ("status", 400, "padded", None))
    client = utils.ChatClient(fake.url, "m", SENTINEL, timeout=10, max_retries=3, backoff=0.01, backoff_max=0.01,
                              max_tokens=8)
    try:
        with pytest.raises(utils.ChatError) as e:
            client.chat([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    finally:
        fake.close()
    msg = str(e.value)
    assert client.calls == 1 and msg.startswith("HTTP 400")  # a 400 is not retried
    assert "sk-LEXLAB" not in msg and SENTINEL[-6:] not in msg and msg.endswith("Bearer [REDACTED")


# ----------------------------------------------------------------------------------------------------------------------
# Kill mid-run, then rerun: same judgments, no cached item asked twice, torn last line tolerated
# ----------------------------------------------------------------------------------------------------------------------

def test_kill_and_resume(tmp_path):
    n = 30
    write_inputs(tmp_path, n, ["X", "Y"])
    plan = {(str(i), o): [("slow", 0.05, f"[[{'ABC'[i % 3]}]]")] for i in range(1, n + 1) for o in ("ab", "ba")}
    fake = FakeJudge(scripted(plan))
    out = tmp_path / "out"
    cmd = judge_cmd(tmp_path, fake.url, out, "--concurrency", "2", "--timeout", "30", "--bootstrap", "50")
    try:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "LEXLAB_TEST_KEY": SENTINEL},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while sum(fake.calls.values()) < 20 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = read_judgments(out)
        assert 0 < len(before) < 2 * n, "the kill should land mid-run"
        with open(out / "judgments.jsonl", "a") as f:
            f.write('{"key": "torn')  # a crash in the middle of a write
        calls_at_kill = collections.Counter(fake.calls)
        run_judge(cmd)
    finally:
        fake.close()
    after = read_judgments(out)
    assert len(after) == 2 * n and len({r["key"] for r in after}) == 2 * n
    assert after[:len(before)] == before  # nothing lost or rewritten
    for r in before:  # every judgment cached before the kill was asked exactly once, over both runs
        assert fake.calls[(r["qid"], r["order"])] == 1
    assert sum(fake.calls.values()) - sum(calls_at_kill.values()) == 2 * n - len(before)
    for r in after:
        assert r["verdict"] == "ABC"[int(r["qid"]) % 3]
    s = json.loads((out / "summary.json").read_text())
    # verdict by question: i%3==1 -> B both orders (inconsistent), 2 -> C (tie), 0 -> A (inconsistent)
    assert (s["wins"], s["ties"], s["losses"], s["inconsistent"], s["errors"]) == (0, 10, 0, 20, 0)


# ----------------------------------------------------------------------------------------------------------------------
# The real DISC-Law-Eval subjective questions (id / input / output), answers from two scripted sources
# ----------------------------------------------------------------------------------------------------------------------

def between(text, start, end):
    return text[text.index(start) + len(start):text.index(end)]


def longer_wins(fake, user, n_messages):
    """A judge that prefers the longer answer, ties on equal length."""
    with fake.lock:
        fake.calls["all"] += 1
    first = between(user, "[助手A的回答开始]\n", "\n[助手A的回答结束]")
    second = between(user, "[助手B的回答开始]\n", "\n[助手B的回答结束]")
    return ("text", "[[A]]" if len(first) > len(second) else "[[B]]" if len(second) > len(first) else "[[C]]")


def test_real_disc_law_eval_questions(tmp_path, shared_dir):
    path = shared_dir / "data" / "consult_qa" / "disc_law_eval_subjective.jsonl"
    questions = judge.load_questions(path)
    assert len(questions) == 300 and all(q["reference"] for q in questions)
    cats = collections.Counter(q["category"] for q in questions)
    assert cats == {"case_analysis": 119, "legal_reasoning": 9, "consultation": 172}
    # system a: the reference cut to 60 characters; system b: the built-in reference source
    utils.write_jsonl(tmp_path / "short.jsonl", [{"id": q["id"], "answer": q["reference"][:60]} for q in questions])
    fake = FakeJudge(longer_wins)
    try:
        cfg = judge.JudgeConfig(questions=str(path), llm_url=fake.url, llm_model="fake",
                                out=str(tmp_path / "o"),
                                answers_a=str(tmp_path / "short.jsonl"), answers_b="reference", concurrency=8,
                                bootstrap=200)
        s = judge.run(cfg)
    finally:
        fake.close()
    ties = sum(len(q["reference"]) <= 60 for q in questions)
    assert (s["wins"], s["ties"], s["losses"], s["inconsistent"], s["errors"]) == (0, ties, 300 - ties, 0, 0)
    assert fake.calls["all"] == 600 and s["system_b"] == "reference"
    assert sum(c["pairs"] for c in s["by_category"].values()) == 300


def test_answers_generated_from_a_model_folder(tmp_path, tiny_model):
    """--model_a: answers generated once with utils.generate (hf), saved in OUT and reused by a rerun."""
    qs = [{"id": f"q{i}", "question": f"问题{i}：醉驾如何处罚？", "reference": "依照《刑法》第一百三十三条之一处拘役。"}
          for i in range(3)]
    utils.write_jsonl(tmp_path / "q.jsonl", qs)
    fake = FakeJudge(longer_wins)
    cfg = judge.JudgeConfig(questions=str(tmp_path / "q.jsonl"), llm_url=fake.url, llm_model="fake",
                            out=str(tmp_path / "o"), model_a=str(tiny_model), answers_b="reference",
                            max_new_tokens=8, bootstrap=50)
    try:
        s = judge.run(cfg)
        saved = tmp_path / "o" / f"answers_a_{tiny_model.name}.jsonl"
        answers = [r for _, r in utils.iter_records(saved)]
        s2 = judge.run(cfg)
    finally:
        fake.close()
    assert [r["id"] for r in answers] == ["q0", "q1", "q2"] and s["system_a"] == tiny_model.name
    assert s["pairs"] == 3 and s["errors"] == 0 and fake.calls["all"] == 6
    assert s2["cached"] == 6 and s2["judge_calls"] == 0 and saved.stat().st_size > 0


# ----------------------------------------------------------------------------------------------------------------------
# vLLM: its OpenAI-compatible server on the tiny model as the judge (started once for this module), and
# utils.generate's two backends giving the same greedy text
# ----------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_server(tiny_model, tmp_path_factory):
    if not HAS_VLLM:
        pytest.skip("vllm is not importable")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model),
           "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096",
           "--kv-cache-memory-bytes", str(128 << 20), "--dtype", "float32", "--disable-log-stats",
           "--uvicorn-log-level", "warning", "--enforce-eager"]  # no torch.compile warm-up: ~50 s less
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail("vLLM server exited:\n" + log.read_text()[-3000:])
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("vLLM server not up in 240 s:\n" + log.read_text()[-3000:])
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_vllm_openai_server_as_judge(tmp_path, vllm_server):
    write_inputs(tmp_path, 3, ["X", "Y"])
    p = run_judge(judge_cmd(tmp_path, vllm_server, tmp_path / "out", "--llm_model", "tiny", "--max_reasks", "1",
                            "--judge_max_tokens", "16", "--timeout", "120", "--bootstrap", "50"))
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    recs = read_judgments(tmp_path / "out")
    assert len(recs) == 6 and s["judgment_errors"]["failed"] == 0  # every call answered; nothing crashed
    assert {r["status"] for r in recs} <= {"ok", "unparsable"}  # a random model: verdicts are unparsable
    assert all(r["asks"] == (1 if r["status"] == "ok" else 2) for r in recs)
    assert s["wins"] + s["ties"] + s["losses"] + s["inconsistent"] + s["errors"] == 3
    assert SENTINEL not in p.stdout + p.stderr


def test_generate_backends_agree(tiny_model):
    if not HAS_VLLM:
        pytest.skip("vllm is not importable")
    prompts = ["你好", "盗窃罪如何量刑？请说明理由。", "请对以下案件做出分析并给出可能的判决：被告人张某深夜入户窃取现金。"]
    hf = utils.generate(tiny_model, prompts, backend="hf", max_new_tokens=16, batch_size=2)
    vl = utils.generate(tiny_model, prompts, backend="vllm", max_new_tokens=16, max_model_len=512,
                        kv_cache_bytes=64 << 20, enforce_eager=True, vllm_dtype="float32")
    assert hf == vl and all(hf)
    raw = utils.generate(tiny_model, prompts[:1], backend="hf", max_new_tokens=8, chat=False)
    assert len(raw) == 1
