"""Never lose or mix results: a second run into a folder that holds one is refused (one line, exit 2, nothing
touched), --overwrite starts clean, --resume auto continues only the same run (config and checkpoints), and a
changed model is detected. sft.py / rl.py / evaluate.py generate, judgment, longdoc / prepare_data.py, plus the
shared pieces in utils (prepare_run_dir, fingerprint). CPU, tiny model, data/sample only (no ../shared needed)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import prepare_data
import utils
from utils import DataError, RunDirError
from conftest import exit_status

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def snapshot(folder) -> dict:
    """{relative path: bytes} of every file under folder: 'nothing was touched' is snapshot equality."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- utils: prepare_run_dir and fingerprint (no model) ---------------------------------------------------------------

def test_prepare_run_dir_refuses_overwrites_and_resumes(tmp_path):
    out = tmp_path / "run"
    ident = {"model": "m", "lr": 1e-3, "model_fingerprint": "abc"}
    assert utils.prepare_run_dir(out, ident, False, False, ("metrics.jsonl", "checkpoints")) is False
    assert json.loads((out / utils.RUN_IDENTITY).read_text()) == ident
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "checkpoints" / "step_00000001").mkdir(parents=True)
    before = snapshot(out)

    with pytest.raises(RunDirError) as e:  # a second run, no flag
        utils.prepare_run_dir(out, ident, False, False, ("metrics.jsonl", "checkpoints"))
    msg = str(e.value)
    assert "\n" not in msg and "already holds a run" in msg and "--resume auto" in msg and "--overwrite" in msg
    with pytest.raises(RunDirError, match=r"different config \(lr: 0.001 -> 0.002\)"):
        utils.prepare_run_dir(out, {**ident, "lr": 2e-3}, True, False, ("metrics.jsonl", "checkpoints"))
    with pytest.raises(RunDirError, match="model_fingerprint: 'abc' -> 'xyz'"):  # same path, other weights
        utils.prepare_run_dir(out, {**ident, "model_fingerprint": "xyz"}, True, False, ("metrics.jsonl",
                                                                                         "checkpoints"))
    assert snapshot(out) == before  # refusals touch nothing
    assert utils.prepare_run_dir(out, ident, True, False, ("metrics.jsonl", "checkpoints")) is True

    (out / "notes.txt").write_text("mine")  # --overwrite never deletes what the script did not write
    with pytest.raises(RunDirError, match="notes.txt, which this script did not write"):
        utils.prepare_run_dir(out, ident, False, True, ("metrics.jsonl", "checkpoints"))
    (out / "notes.txt").unlink()
    assert utils.prepare_run_dir(out, {**ident, "lr": 2e-3}, False, True, ("metrics.jsonl", "checkpoints")) is False
    utils.unlock_run_dirs()  # the run ends: its lock file goes
    assert sorted(p.name for p in out.iterdir()) == [utils.RUN_IDENTITY]  # clean: old metrics, checkpoints gone


def test_prepare_run_dir_checks_every_checkpoint(tmp_path):
    """The issue's mix: another run's checkpoint in the folder is never resumed, whatever run_identity.json says."""
    import torch
    out = tmp_path / "run"
    ident = {"model": "m", "lr": 1e-3}
    utils.prepare_run_dir(out, ident, False, False, ("checkpoints",))
    for step, lr in ((40, 1e-3), (80, 5e-4)):
        (out / "checkpoints" / f"step_{step:08d}").mkdir(parents=True)
        torch.save({"step": step, "config": {"model": "m", "lr": lr, "save_every": step}},
                   out / "checkpoints" / f"step_{step:08d}" / "trainer_state.pt")
    with pytest.raises(RunDirError, match=r"step_00000080: saved by a run with a different config \(lr: 0.0005 -> "
                                          r"0.001\): refusing to resume from it"):
        utils.prepare_run_dir(out, ident, True, False, ("checkpoints",), ckpt_dir=out / "checkpoints")
    shutil.rmtree(out / "checkpoints" / "step_00000080")
    assert utils.prepare_run_dir(out, ident, True, False, ("checkpoints",), ckpt_dir=out / "checkpoints")


def test_prepare_run_dir_failed_start_is_empty(tmp_path):
    """A start that failed before any work (only config.json / run_identity.json) does not block the next one."""
    out = tmp_path / "run"
    utils.prepare_run_dir(out, {"lr": 1}, False, False)
    utils.save_config(utils_cfg(), out)
    assert utils.prepare_run_dir(out, {"lr": 2}, False, False) is False


def utils_cfg():
    import dataclasses

    @dataclasses.dataclass
    class C:
        lr: float = 1.0
    return C()


def test_fingerprint(tmp_path, tiny_model):
    a = tmp_path / "a"
    shutil.copytree(tiny_model, a)
    assert utils.fingerprint(a) == utils.fingerprint(tiny_model)  # a copy (other path, other mtimes) is the same model
    w = a / "model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[len(raw) // 2] ^= 1  # one bit of one weight in the middle of the file
    w.write_bytes(bytes(raw))
    assert utils.fingerprint(a) != utils.fingerprint(tiny_model)
    assert utils.fingerprint(tmp_path / "missing") is None


# ---- sft.py ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage(tiny_model, tmp_path_factory):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    samples = [prepare_data.encode_chat(tok, [{"role": "user", "content": f"问题{i}：盗窃罪规定在哪一条？"},
                                              {"role": "assistant", "content": "《刑法》第二百六十四条。" * (1 + i % 3)}])
               for i in range(12)]
    return prepare_data.write_packed_stage(tmp_path_factory.mktemp("stage") / "s", samples, 128, tok.pad_token_id)


def sft(tiny_model, stage, out, *extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return subprocess.run([sys.executable, str(REPO / "sft.py"), "--model", str(tiny_model), "--data", str(stage),
                           "--out", str(out), "--max_steps", "2", *map(str, extra)],
                          capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=600)


def error_line(p) -> str:
    """The one error line (sft.py prints it on stdout, rl / evaluate / prepare_data on stderr)."""
    lines = [x for x in (p.stdout + p.stderr).splitlines() if ": error: " in x or x.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stdout[-2000:] + p.stderr[-2000:]
    return lines[0]


def test_sft_second_run_refused_overwrite_clean_resume_same_config_only(tiny_model, stage, tmp_path):
    out = tmp_path / "run"
    p = sft(tiny_model, stage, out, "--save_every", 1, "--keep_last", 5, "--lr", "1e-3")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert (out / "checkpoints" / "step_00000001").is_dir()
    before = snapshot(out)

    p = sft(tiny_model, stage, out, "--lr", "1e-3")  # same folder again, no flag: refused, nothing touched
    assert p.returncode == 2 and "already holds a run" in error_line(p) and "--overwrite" in error_line(p)
    p = sft(tiny_model, stage, out, "--lr", "2e-3", "--resume", "auto")  # continue with another config: refused
    assert p.returncode == 2 and "different config (lr: 0.001 -> 0.002)" in error_line(p)
    assert snapshot(out) == before

    p = sft(tiny_model, stage, out, "--lr", "2e-3", "--overwrite")  # start clean: no old checkpoint, metrics, final
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert not (out / "checkpoints").exists()
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "config.json").read_text())["lr"] == 2e-3
    assert (out / "final" / "model.safetensors").read_bytes() != before["final/model.safetensors"]


# ---- rl.py (in process: rl.train in a world of one) ------------------------------------------------------------------

def rl_cfg(model, prompts, out, **kw):
    import rl
    base = dict(model=str(model), prompts=str(prompts), out=str(out), group_size=2, prompts_per_step=2,
                max_steps=2, max_new_tokens=4, lr=1e-4, sample_every=1, log_every=0)
    return rl.RLConfig(**{**base, **kw})


@pytest.fixture
def prompts(tmp_path):
    fact = "被告人张某于2019年3月在某超市秘密窃取手机一部，价值人民币3000元。" * 3  # longer than the old 200-char cut
    truth = {"charges": ["盗窃"], "articles": [264], "term_months": 8, "life": False, "death": False}
    path = tmp_path / "rl_prompts.jsonl"
    utils.write_jsonl(path, [{"prompt": utils.judgment_prompt(fact + str(i)), "truth": truth} for i in range(4)])
    return path


def test_rl_refuses_overwrites_resumes_and_samples_stand_alone(tiny_model, prompts, tmp_path, world_of_one):
    import rl
    import torch
    out = tmp_path / "run"
    rl.train(rl_cfg(tiny_model, prompts, out, save_every=1, keep_last=5), world_of_one)
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    prompts_all = [json.loads(x) for x in prompts.read_text(encoding="utf-8").splitlines()]
    assert [s["step"] for s in samples] == [1, 1, 2, 2]
    for s in samples:  # the whole prompt and the gold truth: a sample can be judged on its own
        assert {"prompt": s["prompt"], "truth": s["truth"]} in prompts_all and len(s["prompt"]) > 200
        assert set(s["reward"]) >= {"charge", "article", "term", "format", "total"}
    before = snapshot(out)

    with pytest.raises(RunDirError, match="already holds a run"):
        rl.train(rl_cfg(tiny_model, prompts, out), world_of_one)
    with pytest.raises(RunDirError, match=r"different config \(group_size: 2 -> 4\)"):
        rl.train(rl_cfg(tiny_model, prompts, out, group_size=4, resume="auto"), world_of_one)
    assert snapshot(out) == before

    # resume from step 1 (the step-2 checkpoint lost): samples and metrics of step 2 are not kept twice
    shutil.rmtree(out / "checkpoints" / "step_00000002")
    rl.train(rl_cfg(tiny_model, prompts, out, save_every=1, keep_last=5, resume="auto"), world_of_one)
    assert [json.loads(x)["step"] for x in (out / "samples.jsonl").read_text().splitlines()] == [1, 1, 2, 2]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    rl.train(rl_cfg(tiny_model, prompts, out, max_steps=1, overwrite=True), world_of_one)  # clean: no old checkpoints
    assert [json.loads(x)["step"] for x in (out / "samples.jsonl").read_text().splitlines()] == [1, 1]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001"]
    assert torch.load(out / "checkpoints" / "step_00000001" / "trainer_state.pt", weights_only=False)["step"] == 1


def test_rl_cli_refusal_is_one_line_exit_2(tiny_model, prompts, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    p = subprocess.run([sys.executable, str(REPO / "rl.py"), "--model", str(tiny_model), "--prompts", str(prompts),
                        "--out", str(out)], capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT")})
    assert p.returncode == 2 and error_line(p).startswith("rl.py: error: ") and "already holds a run" in p.stderr
    assert sorted(x.name for x in out.iterdir()) == ["metrics.jsonl"]


# ---- evaluate.py generate: which model made each prediction file -------------------------------------------------

def test_generate_detects_another_model(tiny_model, tmp_path, capsys):
    import evaluate
    out = tmp_path / "preds"
    args = ["generate", "--lawbench_dir", str(SAMPLE / "lawbench"), "--out", str(out), "--tasks", "3-3",
            "--max_items", "2", "--max_new_tokens", "2", "--model_name", "demo"]
    assert exit_status(evaluate.main, [*args, "--model", str(tiny_model)]) == 0
    task = out / "zero_shot" / "demo" / "3-3.json"
    made = json.loads(task.with_suffix(".json.model").read_text())
    assert made["model"] == str(Path(tiny_model).resolve()) and made["model_fingerprint"] == utils.fingerprint(
        tiny_model)

    moved = tmp_path / "moved"  # the same weights elsewhere: nothing to regenerate
    shutil.copytree(tiny_model, moved)
    capsys.readouterr()
    assert exit_status(evaluate.main, [*args, "--model", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out)["generated"] == 0

    other = utils.build_tiny_model(tmp_path / "other", seed=1)  # other weights: refused, old predictions kept
    before = snapshot(out)
    capsys.readouterr()
    assert exit_status(evaluate.main, [*args, "--model", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(task) in err and "model_fingerprint" in err and "--overwrite" in err
    assert snapshot(out) == before
    assert exit_status(evaluate.main, [*args, "--model", other, "--overwrite"]) == 0  # regenerated for the new model
    assert json.loads(task.with_suffix(".json.model").read_text())["model_fingerprint"] == utils.fingerprint(other)

    task.with_suffix(".json.model").unlink()  # predictions that do not say which model made them are not trusted
    assert exit_status(evaluate.main, [*args, "--model", str(other)]) == 2
    assert "says which model made it" in capsys.readouterr().err


# ---- evaluate.py judgment / longdoc: empty input, reruns, stale rag_effect ----------------------------------------

def test_judgment_and_longdoc_on_empty_file_are_errors(tmp_path, capsys):
    import evaluate
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for cmd in ("judgment", "longdoc"):
        out = tmp_path / cmd
        assert exit_status(evaluate.main, [cmd, "--model", "unused", "--data", str(empty), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"{empty}: no records (nothing to evaluate)") and "\n" not in err
        assert not out.exists()  # no metrics with F1 0.0, no config: nothing written


@pytest.fixture
def fake_generate(monkeypatch):
    """Answers with the right charge for the first half of the prompts, nothing for the rest (no model needed)."""
    def gen(model, prompts, **kw):
        return [utils.format_answer({"charges": ["盗窃"], "articles": [264], "term_months": 6}) if i % 2 == 0 else ""
                for i in range(len(prompts))]
    monkeypatch.setattr(utils, "generate", gen)


def test_judgment_rerun_replaces_and_never_mixes(tmp_path, fake_generate, tiny_model, capsys):
    import evaluate
    data = REPO / "data" / "judgments_test.jsonl"
    n_all = sum(1 for _ in utils.iter_records(data))
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)  # a real tokenizer (prompt budgets); its weights are changed below
    out = tmp_path / "jp"
    base = ["judgment", "--model", str(model), "--data", str(data), "--out", str(out), "--max_new_tokens", "8"]
    for _ in range(2):  # the same run twice: one line per tag, not two
        assert exit_status(evaluate.main, base) == 0
    assert exit_status(evaluate.main, [*base, "--rag", str(SAMPLE / "statutes.jsonl"), "--rag_k", "2"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["tag"] for r in lines] == ["plain", "rag_k2"]
    effect = json.loads((out / "rag_effect.json").read_text(encoding="utf-8"))
    assert effect["items"] == n_all and effect["data"] == str(data) and effect["model"] == str(model)
    f1 = effect["runs"]["rag_k2"]["charge_micro_f1"]
    assert set(f1) == {"without_rag", "with_rag", "change"}
    assert f1["change"] == pytest.approx(f1["with_rag"] - f1["without_rag"])
    before = snapshot(out)

    # another item set, or other weights at the same path: refused (it would be compared with the runs here)
    assert exit_status(evaluate.main, [*base, "--max_items", "4"]) == 2
    assert "different config (max_items: None -> 4)" in capsys.readouterr().err
    weights = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))  # other weights, same path
    assert exit_status(evaluate.main, base) == 2
    assert "model_fingerprint" in capsys.readouterr().err
    assert snapshot(out) == before

    assert exit_status(evaluate.main, [*base, "--max_items", "4", "--overwrite"]) == 0  # clean: no stale rag_effect
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl", "metrics_plain.json",
                                                     "predictions_plain.jsonl", utils.RUN_IDENTITY]
    assert json.loads((out / "metrics.jsonl").read_text())["n"] == 4


def test_longdoc_rerun_replaces(tmp_path, fake_generate, tiny_model):
    import evaluate
    out = tmp_path / "ld"
    base = ["longdoc", "--model", str(tiny_model), "--data", str(REPO / "data" / "longdoc_sample.jsonl"), "--out",
            str(out), "--max_new_tokens", "4"]
    assert exit_status(evaluate.main, base) == 0 and exit_status(evaluate.main, base) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert exit_status(evaluate.main, [*base, "--max_new_tokens", "8"]) == 2
    assert exit_status(evaluate.main, [*base, "--max_new_tokens", "8", "--overwrite"]) == 0


# ---- prepare_data.py: required --out, refuse a built folder, build in a temporary folder ----------------------------

def prep(out, *extra, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "prepare_data.py"), "--manifest", str(SAMPLE / "manifest.json"),
                           *map(str, extra), *(["--out", str(out)] if out else [])],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


def test_prepare_data_flags_checked_first(tmp_path):
    p = prep(None, "--lawbench_dir", SAMPLE / "lawbench", cwd=tmp_path)  # no --out: never the demo's folder
    assert p.returncode == 2 and "required: --out" in error_line(p) and list(tmp_path.iterdir()) == []
    p = prep(tmp_path / "d", cwd=tmp_path)  # no LawBench: no silent 'decontamination': {}
    assert p.returncode == 2 and "--lawbench_dir: required to decontaminate" in error_line(p)
    assert "--decontaminate false" in p.stderr and list(tmp_path.iterdir()) == []


def small_build(tiny_model, out, **kw):
    import prepare_data as P
    man = out.parent / "m.json"
    man.write_text(json.dumps([{"name": "s", "kind": "statutes", "path": str(SAMPLE / "statutes.jsonl")}]))
    return P.run(P.Config(**{**dict(manifest=str(man), model=str(tiny_model), out=str(out), seq_len=256,
                                    general_ratio=0.0, workers=1, decontaminate=False), **kw}))


def test_prepare_data_refuses_then_overwrite_swaps_a_complete_build(tiny_model, tmp_path, monkeypatch, capsys):
    import prepare_data as P
    out = tmp_path / "data"
    rep = small_build(tiny_model, out)
    assert rep["decontamination_check"]["run"] is False  # said, not an empty dict that reads as clean
    assert "decontamination: NOT RUN (--decontaminate false" in capsys.readouterr().out
    before = snapshot(out)
    with pytest.raises(DataError, match="already holds a run .*--overwrite"):
        small_build(tiny_model, out)

    real = P.write_stage  # a rebuild that fails halfway (stage2): the previous build stays whole, nothing mixed

    def fail_on_stage2(cfg, work, out_dir, stage, *a):
        if stage == "stage2":
            raise OSError("disk full")
        return real(cfg, work, out_dir, stage, *a)
    monkeypatch.setattr(P, "write_stage", fail_on_stage2)
    with pytest.raises(OSError):
        small_build(tiny_model, out, overwrite=True, seed=1)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["data", "m.json"]

    monkeypatch.setattr(P, "write_stage", real)
    small_build(tiny_model, out, overwrite=True, seed=1)
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # the new build's, not appended to the old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "m.json"]
