"""One rule per decision (issue 24 items 4-6): may a run write into a folder or reuse a file (utils.check_run_dir,
utils.prepare_outputs), how an LLM-call cache is read back after a crash (utils.JsonlCache), how a JSONL file is
appended and a JSON file written (utils.append_jsonl, drop_torn_tail, write_json), and 2-1's resources passed as an
argument (no environment variable). No model, no ../shared: a few milliseconds each."""
import json
from pathlib import Path

import pytest

import evaluate
import prepare_data
import utils
from utils import RunDirError

REPO = Path(__file__).resolve().parents[1]


# ---- the run-folder rule: prepare_data uses it too -------------------------------------------------------------------

def test_check_run_dir_reads_only_and_prepare_data_never_clears_foreign_files(tmp_path):
    out = tmp_path / "data"
    (out / "stage1").mkdir(parents=True)
    (out / "data_report.json").write_text("{}")
    with pytest.raises(RunDirError) as e:  # no --resume in prepare_data: the message offers --overwrite only
        utils.check_run_dir(out, None, False, False, prepare_data.BUILD_OUTPUTS, continue_flag=None)
    assert "already holds a run (data_report.json, stage1): --overwrite replaces it" in str(e.value)
    assert "--resume" not in str(e.value) and "\n" not in str(e.value)
    assert utils.check_run_dir(out, None, False, True, prepare_data.BUILD_OUTPUTS) == (
        ["data_report.json", "stage1"], {"data_report.json", "stage1"})
    (out / "thesis.tex").write_text("mine")  # a build swaps OUT whole: it would have gone with the old build
    cfg = prepare_data.Config(out=str(out), overwrite=True, decontaminate=False,
                              manifest=str(REPO / "data" / "sample" / "manifest.json"))
    with pytest.raises(RunDirError, match="thesis.tex, which this script did not write"):
        prepare_data.preflight(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["data_report.json", "stage1", "thesis.tex"]  # read only


# ---- the same rule per file: which model made a prediction file / generated answers ----------------------------------

def test_prepare_outputs_keeps_refuses_or_removes_per_file(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    made = utils.model_identity(model, backend="hf", max_new_tokens=8)
    assert made == {"model": str(model.resolve()), "model_fingerprint": utils.fingerprint(model), "backend": "hf",
                    "max_new_tokens": 8}
    f, absent = tmp_path / "out" / "3-3.json", tmp_path / "out" / "1-1.json"
    f.parent.mkdir()
    f.write_text("{}")
    (f.parent / "3-3.json.partial").write_text('{"index": 0}\n')
    utils.write_json(utils.made_by_path(f), made)
    assert utils.made_by_path(f).name == "3-3.json.model"

    moved = tmp_path / "moved"  # the same model elsewhere: its fingerprint decides, not its path
    moved.mkdir()
    (moved / "config.json").write_text('{"a": 1}')
    utils.prepare_outputs([f, absent], utils.model_identity(moved, backend="hf", max_new_tokens=8), False, "hint")

    with pytest.raises(RunDirError) as e:
        utils.prepare_outputs([f], {**made, "max_new_tokens": 16}, False, "pass --overwrite")
    assert str(e.value) == f"{f}: made by {model.resolve()} with other settings (max_new_tokens: 8 -> 16): " \
                           f"pass --overwrite"
    utils.made_by_path(f).unlink()
    with pytest.raises(RunDirError, match=r"3-3.json: no 3-3.json.model says which model made it: hint$"):
        utils.prepare_outputs([f], made, False, "hint")
    utils.prepare_outputs([f], made, True, "hint")  # --overwrite: the file, its progress and record go
    assert list(f.parent.iterdir()) == []


# ---- the LLM-call cache: one load policy -----------------------------------------------------------------------------

def test_jsonl_cache_cuts_a_torn_last_line_and_counts_the_others(tmp_path, capsys):
    path = tmp_path / "judgments.jsonl"
    path.write_text('{"key": "a", "v": 1}\n'
                    '{"key": "b", "v": 2\n'        # line 2: bad JSON (an edit, not a crash: not the last line)
                    '{"v": 3}\n'                   # line 3: no key
                    '{"key": "a", "v": 4}\n'       # a duplicate: the first line of a key wins
                    '{"key": "c", "v": 5}\n'
                    '{"key": "d", "v"', encoding="utf-8")  # torn: the crash cut the last write short
    cache = utils.JsonlCache(path)
    assert {k: r["v"] for k, r in cache.records.items()} == {"a": 1, "c": 5}
    assert cache.skipped == {"bad_json": 1, "missing_key": 1}
    err = capsys.readouterr().err.strip()
    assert err == f"note: {path}:2: 2 cache line(s) skipped (bad_json 1, missing_key 1); their calls are asked again"
    assert path.read_text().endswith('{"key": "c", "v": 5}\n')  # the torn line is cut, the others stay
    cache.add({"key": "d", "v": 6})
    cache.add({"key": "d", "v": 7})  # stored already: not written twice
    assert path.read_text().splitlines()[-1] == '{"key": "d", "v": 6}'
    again = utils.JsonlCache(path)
    assert "d" in again and again.records["d"]["v"] == 6 and "b" not in again
    assert utils.JsonlCache(tmp_path / "new.jsonl").records == {} and not (tmp_path / "new.jsonl").exists()


def test_llm_scorer_reads_back_its_cache_after_a_crash(tmp_path):
    cache = tmp_path / "llm_scores.jsonl"
    calls = []
    s = prepare_data.LLMScorer("http://127.0.0.1:9/v1", "m", "NO_SUCH_KEY", cache,
                               ask=lambda p: calls.append(p) or {"clarity": 4, "coherence": 5})
    assert s.score("q", "a") == {"clarity": 4, "coherence": 5}
    with open(cache, "a") as f:
        f.write('{"key": "tor')
    again = prepare_data.LLMScorer("http://127.0.0.1:9/v1", "m", "NO_SUCH_KEY", cache, ask=lambda p: 1 / 0)
    assert again.score("q", "a") == {"clarity": 4, "coherence": 5} and again.hits == 1 and len(calls) == 1
    assert again.cache.skipped == {}


# ---- writers ---------------------------------------------------------------------------------------------------------

def test_writers_atomic_json_and_appends_after_a_torn_line(tmp_path):
    p = utils.write_json(tmp_path / "a" / "summary.json", {"系统": 1})
    assert json.loads(p.read_text(encoding="utf-8")) == {"系统": 1} and "系统" in p.read_text(encoding="utf-8")
    assert sorted(x.name for x in p.parent.iterdir()) == ["summary.json"]  # no .tmp left
    log = tmp_path / "metrics.jsonl"
    utils.append_jsonl(log, {"step": 1})
    with open(log, "a") as f:
        f.write('{"step": ')
    assert utils.drop_torn_tail(log) == len('{"step": ') and utils.drop_torn_tail(log) == 0
    utils.append_jsonl(log, {"step": 2}, fsync=True)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]
    assert utils.drop_torn_tail(tmp_path / "missing.jsonl") == 0


def test_2_1_resources_come_as_an_argument(tmp_path):
    """cherrant reads no environment variable: score_file passes the folder down (cmd_score: --lawbench_dir)."""
    path = evaluate.write_predictions(tmp_path / "2-1.json", [{"origin_prompt": [{"role": "HUMAN", "prompt": "句子：\n甲"}],
                                                                "prediction": "甲", "refr": "甲"}])
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere' / 'cilin.txt'}: 2-1 resource file missing"):
        evaluate.score_file(path, data_dir=tmp_path / "nowhere")
