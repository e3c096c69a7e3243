"""Faults at the writing end (issue 21): each ends in one line naming the folder and the cause, exit 2 (130 for
Ctrl-C, with the step reached, the checkpoint and the resume command), and loses or mixes nothing.

  1. two runs into one folder: the run-folder lock (utils.lock_run_dir, taken by every writer)
  2. a read-only output folder: refused before any work, by every script
  3. a full disk at a checkpoint / the export: the partial .tmp removed
  4. Ctrl-C during sft.py / rl.py: stop at the end of the step, save, exit 130, resume
  5. `utils.py tiny-model` never replaces a model or a run's files
  6. `sft.py --dry_run --model` a data folder / a run folder
  7. the non-finite-loss stop names the step metrics.jsonl would have logged
  8. judge.py into another comparison's folder; generated answers of a retrained model
and the lines that say where a run went and what is next.

The read-only and full-disk faults are real: a tmpfs (read-only, or a few MiB) in a private mount namespace
(`unshare -rm`, no root needed; the tests run as root in CI, where chmod would not stop a write). Where unshare is not
allowed they are skipped, and the mocked variants below still run. CPU, tiny model, data/sample only."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import utils
from conftest import cpu_env, exit_status

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_mounts = pytest.mark.skipif(not _can_unshare(), reason="unshare -rm (a private mount namespace) not allowed")


def one_error_line(text: str) -> str:
    lines = [x for x in text.splitlines() if ": error: " in x]
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    return lines[0]


DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR")


def fresh_world():
    """Drop the torch.distributed variables a script's dist_init set: the next main() starts a new world of one."""
    for k in DIST_VARS:
        os.environ.pop(k, None)


@pytest.fixture
def one_thread():
    """One torch thread, as the subprocesses get (cpu_env): tiny kernels on a shared 2-core machine run several
    times slower with two threads each."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def in_process(monkeypatch, one_thread):
    """Scripts' main() run in this process on the CPU: the torch.distributed variables dist_init sets are dropped
    afterwards (as conftest.world_of_one does)."""
    import torch
    saved = dict(os.environ)
    fresh_world()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    yield
    utils.unlock_run_dirs()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def stage(tiny_model, tmp_path_factory):
    """A packed stage of 33 packs of 256 tokens (tests/test_sft.py's conversations)."""
    import prepare_data
    from transformers import AutoTokenizer
    from test_sft import conversations, encode_all
    tok = AutoTokenizer.from_pretrained(tiny_model)
    return prepare_data.write_packed_stage(tmp_path_factory.mktemp("stage") / "s", encode_all(tok, conversations(200)),
                                           256, tok.pad_token_id)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    truth = {"charges": ["盗窃"], "articles": [264], "term_months": 8, "life": False, "death": False}
    path = tmp_path_factory.mktemp("rl") / "rl_prompts.jsonl"
    utils.write_jsonl(path, [{"prompt": utils.judgment_prompt(f"被告人张某秘密窃取手机一部{i}。"), "truth": truth}
                             for i in range(4)])
    return path


@pytest.fixture(scope="module")
def preds(tmp_path_factory):
    """LawBench predictions of one model on one task (3-3), as evaluate.py generate writes them."""
    d = tmp_path_factory.mktemp("preds") / "zero_shot"
    items = [r for _, r in utils.iter_records(SAMPLE / "lawbench" / "data" / "zero_shot" / "3-3.json")][:3]
    (d / "m").mkdir(parents=True)
    (d / "m" / "3-3.json").write_text(json.dumps({str(i): {
        "origin_prompt": [{"role": "HUMAN", "prompt": it["instruction"] + "\n" + it["question"]}],
        "prediction": it["answer"], "refr": it["answer"]} for i, it in enumerate(items)}, ensure_ascii=False))
    return d


def writer_argvs(tiny_model, stage, prompts, preds, out: Path, tmp: Path) -> dict:
    """Every script that writes a run folder, pointed at `out` (name -> (module, argv))."""
    qs = tmp / "q.jsonl"
    utils.write_jsonl(qs, [{"id": 1, "question": "醉驾如何处罚？", "reference": "拘役。"}])
    m = str(tiny_model)
    return {
        "sft": ("sft", ["--model", m, "--data", stage, "--out", out, "--max_steps", 1]),
        "rl": ("rl", ["--model", m, "--prompts", prompts, "--out", out, "--max_steps", 1, "--group_size", 2,
                      "--prompts_per_step", 1, "--max_new_tokens", 4]),
        "generate": ("evaluate", ["generate", "--model", m, "--lawbench_dir", SAMPLE / "lawbench", "--out", out,
                                  "--tasks", "3-3", "--max_items", 1, "--max_new_tokens", 2]),
        "judgment": ("evaluate", ["judgment", "--model", m, "--data", REPO / "data" / "judgments_test.jsonl",
                                  "--out", out, "--max_items", 1, "--max_new_tokens", 2]),
        "longdoc": ("evaluate", ["longdoc", "--model", m, "--data", REPO / "data" / "longdoc_sample.jsonl", "--out",
                                 out, "--max_new_tokens", 2]),
        "score": ("evaluate", ["score", preds, "--out", out / "scores.csv", "--workers", 1]),
        "judge": ("judge", ["--questions", qs, "--answers_a", "reference", "--name_a", "ref", "--model_b", m,
                            "--llm_url", "http://127.0.0.1:9/v1", "--llm_model", "j", "--out", out]),
        "prepare_data": ("prepare_data", ["--manifest", SAMPLE / "manifest.json", "--lawbench_dir",
                                          SAMPLE / "lawbench", "--model", m, "--out", out, "--workers", 1]),
    }


# ---- 1. two runs into one folder ------------------------------------------------------------------------------------

def hold_lock(folder: Path, name: str = utils.LOCK_NAME) -> subprocess.Popen:
    """Another process holding `folder`'s lock through utils.lock_run_dir (as a running script does) until its stdin
    is closed; then it exits normally (the lock released as a script releases it)."""
    code = f"import sys, utils; utils.lock_run_dir({str(folder)!r}, {name!r}); print('held', flush=True); " \
           f"sys.stdin.read()"
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_sft_second_run_refused_while_first_works_then_ctrl_c_saves_and_resumes(tiny_model, stage, tmp_path,
                                                                                in_process, capsys):
    """The issue's two faults on one real run: sft B started into A's folder while A trains is refused (one line,
    exit 2, A's metrics not mixed); then Ctrl-C to A: it stops at the end of its step, saves, exits 130 with the step,
    the checkpoint and the command that resumes (default --save_every 0: the steps are not lost); that command
    finishes the run with every step logged once."""
    import sft
    out = tmp_path / "run"
    argv = ["--model", tiny_model, "--data", stage, "--out", out, "--lr", "1e-3", "--num_epochs", 2]
    a = subprocess.Popen([sys.executable, str(REPO / "sft.py"), *map(str, argv)], env=cpu_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "metrics.jsonl"
    t0 = time.time()
    while not (log.is_file() and log.read_text().count("\n") >= 1):
        assert a.poll() is None and time.time() - t0 < 300, a.communicate()
        time.sleep(0.05)
    holder = json.loads((out / utils.LOCK_NAME).read_text())
    assert holder["pid"] == a.pid and "sft.py" in holder["command"]

    assert exit_status(sft.main, [*argv, "--resume", "auto"]) == 2  # B, in this process: refused at once
    err = one_error_line(capsys.readouterr().err)
    assert err.startswith(f"sft.py: error: {out}: in use by another run (pid {a.pid}")
    assert a.poll() is None, "A must still be running (the step count is too small for this machine)"

    a.send_signal(signal.SIGINT)
    stdout, stderr = a.communicate(timeout=300)
    assert a.returncode == 130, stderr[-3000:]
    line = [x for x in stderr.splitlines() if "interrupted after step" in x]
    assert len(line) == 1 and "Traceback" not in stderr, stderr[-3000:]
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    k = steps[-1]
    assert steps == list(range(1, k + 1)) and k < 66  # nothing from B, nothing twice
    ckpt = out / "checkpoints" / f"step_{k:08d}"
    assert f"sft.py: interrupted after step {k}; checkpoint saved: {ckpt}; resume: python " in line[0]
    assert utils.latest_checkpoint(out / "checkpoints") == ckpt and not list((out / "checkpoints").glob(".tmp*"))
    assert not (out / utils.LOCK_NAME).exists()  # released on exit

    resume = line[0].split("; resume: ", 1)[1].split()  # the command it prints, run here (in this process)
    assert resume[:2] == ["python", str(REPO / "sft.py")] and resume[-2:] == ["--resume", "auto"]
    fresh_world()
    assert exit_status(sft.main, resume[2:]) == 0
    printed = capsys.readouterr()
    assert f"(step {k})" in printed.out
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == list(range(1, 67))
    assert f"sft.py: done: {out / 'final'}/" in printed.err and f"next: python evaluate.py generate --model " \
        f"{out / 'final'}" in printed.err


def test_every_writer_refuses_a_folder_another_run_holds(tiny_model, stage, prompts, preds, tmp_path, in_process,
                                                         capsys):
    import evaluate
    import judge
    import prepare_data
    import rl
    import sft
    mains = {"sft": sft.main, "rl": rl.main, "evaluate": evaluate.main, "judge": judge.main,
             "prepare_data": prepare_data.main}
    out = tmp_path / "held"
    out.mkdir()
    for name, (module, argv) in writer_argvs(tiny_model, stage, prompts, preds, out, tmp_path).items():
        if name == "judge":  # the judge endpoint is checked before the folder: a live (fake) one
            from test_judge import FakeJudge, longer_wins
            fake = FakeJudge(longer_wins)
            argv[argv.index("http://127.0.0.1:9/v1")] = fake.url
        folder, lock = {"prepare_data": (out.parent, f".{out.name}.lock"),  # OUT is built beside it and swapped
                        "score": (out, ".scores.csv.lock")}.get(name, (out, utils.LOCK_NAME))
        holder = hold_lock(folder, lock)
        before = sorted(p.name for p in out.iterdir() if p.name != lock)
        fresh_world()
        try:
            assert exit_status(mains[module], argv) == 2, name
        finally:
            holder.stdin.close()
            holder.wait()
            if name == "judge":
                fake.close()
        err = one_error_line(capsys.readouterr().err)
        assert f"in use by another run (pid {holder.pid}" in err, (name, err)
        assert sorted(p.name for p in out.iterdir()) == before, name  # nothing written (the lock file released)


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    holder = hold_lock(out)
    with pytest.raises(utils.RunDirError, match=f"in use by another run \\(pid {holder.pid} on "):
        utils.prepare_run_dir(out, {"lr": 1}, False, False)
    holder.send_signal(signal.SIGKILL)  # a killed run: its lock file stays, the kernel dropped the lock
    holder.wait()
    assert (out / utils.LOCK_NAME).is_file()
    capsys.readouterr()
    assert utils.prepare_run_dir(out, {"lr": 1}, False, False) is False
    assert f"taking over the lock left by a run that ended without releasing it (pid {holder.pid}" in \
        capsys.readouterr().err
    assert json.loads((out / utils.LOCK_NAME).read_text())["pid"] == os.getpid()
    utils.unlock_run_dirs()
    assert sorted(p.name for p in out.iterdir()) == [utils.RUN_IDENTITY]


# ---- 2. a read-only output folder -----------------------------------------------------------------------------------

DRIVER = """
import contextlib, importlib, io, json, os, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
os.environ["CUDA_VISIBLE_DEVICES"] = ""
from conftest import exit_status
res = {{}}
for name, (module, argv) in json.loads({calls!r}).items():
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR"):
        os.environ.pop(k, None)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = exit_status(importlib.import_module(module).main, argv)
    res[name] = [rc, err.getvalue()]
print("RESULT " + json.dumps(res))
"""


def in_namespace(mount: Path, size: str, setup: str, python: str, ro: bool) -> dict:
    """Run python code (printing `RESULT <json>`) in a private mount namespace where `mount` is a fresh tmpfs of
    `size`, made read-only after the shell lines `setup` when ro."""
    mount.mkdir(parents=True, exist_ok=True)
    code = mount.parent / "driver.py"
    code.write_text(python)
    sh = f"mount -t tmpfs -o size={size} tmpfs {mount} && {setup or 'true'} && " + \
         (f"mount -o remount,ro {mount} && " if ro else "") + f"exec {sys.executable} {code}"
    p = subprocess.run(["unshare", "-rm", "sh", "-c", sh], env=cpu_env(), cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    got = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert p.returncode == 0 and got, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(got[0][len("RESULT "):])


@needs_mounts
def test_read_only_output_folder_every_script_one_line_exit_2(tiny_model, stage, prompts, preds, tmp_path):
    """Every writer pointed at a folder on a read-only file system: one line naming the folder and the cause, exit 2,
    before any work (score: before scoring; judge: before asking the judge; sft / rl: before loading a model)."""
    mnt = tmp_path / "mnt"
    out = mnt / "run"
    calls = {k: (m, [str(a) for a in argv]) for k, (m, argv) in
             writer_argvs(tiny_model, stage, prompts, preds, out, tmp_path).items()}
    res = in_namespace(mnt, "1m", f"mkdir {out}", DRIVER.format(repo=str(REPO), tests=str(REPO / "tests"),
                                                                calls=json.dumps(calls)), ro=True)
    for name, (rc, err) in res.items():
        assert rc == 2, (name, err[-2000:])
        line = one_error_line(err)
        assert f"cannot write in {out} (read-only file system)" in line and "scoring" not in err, (name, line)
    p = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs tmpfs {mnt} && mount -o remount,ro {mnt} && "
                        f"exec {sys.executable} utils.py tiny-model --out {mnt / 'model'}"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and f"cannot write in {mnt} (read-only file system)" in one_error_line(p.stderr)


def test_check_out_dir_says_read_only_without_a_mount(tmp_path, monkeypatch):
    """The same check where no mount can be made: access(2) answering EROFS, as it does on a read-only mount."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: type("S", (), {"f_flag": real(p).f_flag | os.ST_RDONLY})())
    with pytest.raises(utils.DataError, match=f"--out {tmp_path / 'x'}: cannot write in {tmp_path} \\(read-only "
                                              f"file system\\); choose another output folder"):
        utils.check_out_dir(tmp_path / "x")


# ---- 3. a full disk at a checkpoint / at the export -----------------------------------------------------------------

@needs_mounts
def test_full_disk_at_checkpoint_and_export_one_line_partial_removed(tiny_model, stage, tmp_path):
    """sft.py into a 3 MiB tmpfs: the first checkpoint (15 MB) does not fit; without checkpoints the export does not
    fit. Each: one line saying no space left and naming the folder, exit 2, no .tmp left to keep the disk full."""
    mnt = tmp_path / "mnt"
    base = ["--model", str(tiny_model), "--data", str(stage), "--max_steps", "2", "--lr", "1e-3"]
    calls = {"ckpt": ("sft", [*base, "--out", str(mnt / "a"), "--save_every", "1"]),
             "export": ("sft", [*base, "--out", str(mnt / "b")])}
    listing = f"import glob; print('LEFT ' + json.dumps(sorted(glob.glob('{mnt}/**/.tmp*', recursive=True) + " \
              f"glob.glob('{mnt}/**/*.tmp', recursive=True))))"
    driver = DRIVER.format(repo=str(REPO), tests=str(REPO / "tests"), calls=json.dumps(calls)) + listing + "\n" + \
        f"print('STEPS ' + json.dumps([json.loads(x)['step'] for x in open('{mnt}/b/metrics.jsonl')]))\n"
    mnt.mkdir()
    (tmp_path / "driver.py").write_text(driver)
    p = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=3m tmpfs {mnt} && exec "
                        f"{sys.executable} {tmp_path / 'driver.py'}"], env=cpu_env(), cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    out = {x.split(" ", 1)[0]: json.loads(x.split(" ", 1)[1]) for x in p.stdout.splitlines()
           if x.split(" ", 1)[0] in ("RESULT", "LEFT", "STEPS")}
    assert set(out) == {"RESULT", "LEFT", "STEPS"}, p.stdout[-3000:] + p.stderr[-3000:]
    (rc_a, err_a), (rc_b, err_b) = out["RESULT"]["ckpt"], out["RESULT"]["export"]
    assert rc_a == 2 and rc_b == 2, err_a[-2000:] + err_b[-2000:]
    assert f"sft.py: error: {mnt / 'a' / 'checkpoints'}: writing checkpoint step 1 failed: no space left on device" \
           in one_error_line(err_a) and "the partial .tmp_step_00000001 was removed" in err_a
    assert f"sft.py: error: {mnt / 'b'}: writing the exported model final/ failed: no space left on device" in \
        one_error_line(err_b) and "the partial final.tmp was removed" in err_b
    assert out["LEFT"] == [] and out["STEPS"] == [1, 2]


def test_failed_checkpoint_write_is_cleaned_up_without_a_mount(tmp_path, world_of_one, monkeypatch):
    """torch.save's report of a full disk (`unexpected pos`, not an errno), the disk's free space read as 0: the
    same one line, the partial folder removed, the previous checkpoint still the newest."""
    import torch
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters())
    root = tmp_path / "checkpoints"
    utils.save_checkpoint(root, 1, model, opt, {"step": 1})
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        if str(f).endswith("trainer_state.pt"):
            Path(f).write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, f, *a, **kw)
    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    with pytest.raises(utils.RunDirError, match=f"{root}: writing checkpoint step 2 failed: no space left on device "
                                                r"\(0.0 MiB free\); the partial .tmp_step_00000002 was removed"):
        utils.save_checkpoint(root, 2, model, opt, {"step": 2})
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001"]


# ---- 4. Ctrl-C: rl.py, a second Ctrl-C, --resume auto without a checkpoint -------------------------------------------

def test_rl_ctrl_c_saves_and_says_how_to_resume(tiny_model, prompts, tmp_path, in_process, monkeypatch, capsys):
    """rl.py (in this process): Ctrl-C arrives while step 2 is scored -> step 2 ends, is saved, exit 130."""
    import rl
    out = tmp_path / "rl"
    argv = ["--model", tiny_model, "--prompts", prompts, "--out", out, "--group_size", 2, "--prompts_per_step", 2,
            "--max_steps", 50, "--max_new_tokens", 4, "--lr", 1e-4]
    calls = []
    real = rl.legal_reward

    def reward_then_ctrl_c(*a, **kw):
        calls.append(1)
        if len(calls) == 5:  # the first completion of step 2 (2 prompts x group 2 per step)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **kw)
    monkeypatch.setattr(rl, "legal_reward", reward_then_ctrl_c)
    monkeypatch.setattr(sys, "argv", ["rl.py"])

    def not_caught(signum, frame):  # the SIGINT reached this test's handler, not rl.py's: it would kill pytest
        raise AssertionError("rl.py did not handle Ctrl-C")
    old = signal.signal(signal.SIGINT, not_caught)
    try:
        assert exit_status(rl.main, argv) == 130
        assert signal.getsignal(signal.SIGINT) is not_caught  # rl.py's handler is gone with the run
    finally:
        signal.signal(signal.SIGINT, old)
    err = capsys.readouterr().err
    ckpt = out / "checkpoints" / "step_00000002"
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert f"rl.py: interrupted after step 2; checkpoint saved: {ckpt}; resume: python rl.py --model " in err
    assert err.rstrip().endswith("--resume auto") and (ckpt / "trainer_state.pt").is_file() and "Traceback" not in err


def test_second_ctrl_c_and_resume_without_checkpoint_say_so(tmp_path, capsys, monkeypatch):
    """The line after a second Ctrl-C (no save) and `--resume auto` with nothing to resume from."""
    out = tmp_path / "run"
    (out / "checkpoints" / "step_00000004").mkdir(parents=True)
    (out / "checkpoints" / "step_00000004" / "trainer_state.pt").write_bytes(b"x")
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 7)))
    monkeypatch.setattr(sys, "argv", ["sft.py", "--out", str(out), "--overwrite", "--lr", "1"])
    with pytest.raises(SystemExit) as e:
        utils.interrupted_exit("sft.py", KeyboardInterrupt(), out)
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == (f"sft.py: interrupted after step 6; last checkpoint: "
                                               f"{out / 'checkpoints' / 'step_00000004'}; resume: python sft.py "
                                               f"--out {out} --lr 1 --resume auto")
    assert utils.resume_checkpoint(tmp_path / "none", None, None) is None
    assert f"--resume auto: no checkpoint in {tmp_path / 'none'}: starting from step 0" in capsys.readouterr().out


# ---- 5. tiny-model never replaces trained weights or a run's files; 6. --dry_run on a data / run folder -------------

@pytest.fixture(scope="module")
def finished_run(tiny_model, stage, tmp_path_factory):
    """A finished sft run (1 step), made in this process."""
    import sft
    from unittest import mock

    import torch
    out = tmp_path_factory.mktemp("done") / "sft2"
    saved, threads = dict(os.environ), torch.get_num_threads()
    fresh_world()
    torch.set_num_threads(1)
    try:
        with mock.patch.object(torch.cuda, "is_available", return_value=False):
            assert exit_status(sft.main, ["--model", tiny_model, "--data", stage, "--out", out, "--max_steps", 1]) == 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
        torch.set_num_threads(threads)
    return out


def test_tiny_model_refuses_to_replace_a_model_or_a_run(finished_run, tmp_path):
    before = {p.name: p.read_bytes() for p in (finished_run / "final").iterdir()}
    config = (finished_run / "config.json").read_bytes()
    for target, extra, why in ((finished_run / "final", [], "refusing to replace it with a random model"),
                               (finished_run, ["--overwrite"], "is a run folder")):
        p = subprocess.run([sys.executable, "utils.py", "tiny-model", "--out", str(target), *extra], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and why in one_error_line(p.stderr) and str(target) in p.stderr
    assert {p.name: p.read_bytes() for p in (finished_run / "final").iterdir()} == before
    assert (finished_run / "config.json").read_bytes() == config and not (finished_run / "model.safetensors").exists()


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    """A prepare_data build with --on_error skip of a source with two bad lines."""
    import prepare_data as P
    d = tmp_path_factory.mktemp("built")
    src = d / "statutes.jsonl"
    good = (SAMPLE / "statutes.jsonl").read_text(encoding="utf-8").splitlines()
    src.write_text("\n".join(good[:3] + ["{not json", "[1, 2]"] + good[3:]) + "\n", encoding="utf-8")
    (d / "m.json").write_text(json.dumps([{"name": "s", "kind": "statutes", "path": str(src)}]))
    cfg = P.Config(manifest=str(d / "m.json"), model=str(tiny_model), out=str(d / "data"), seq_len=256,
                   general_ratio=0.0, workers=1, decontaminate=False, on_error="skip")
    return d / "data", src, P.run(cfg)


def test_dry_run_on_a_data_folder_or_a_run_folder_points_the_way(finished_run, built, in_process, capsys):
    import sft
    data = built[0]
    for model, says in ((data, f"{data} is a data folder (prepare_data.py): pass {data / 'stage1'} (or stage2) as "
                               f"sft.py --data"),
                        (finished_run, f"{finished_run} is a run folder: its trained model is "
                                       f"{finished_run / 'final'}/")):
        assert exit_status(sft.main, ["--dry_run", "--model", model]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"sft.py: error: --model {model}: config.json") and line.endswith(says), line


def test_on_error_skip_lists_each_record_left_out(built, capsys):
    data, src, report = built
    skipped = [json.loads(x) for x in (data / "skipped.jsonl").read_text().splitlines()]
    assert [(s["file"], s["line"], s["reason"]) for s in skipped] == [(str(src), 4, "bad_json"), (str(src), 5,
                                                                                                  "bad_json")]
    assert report["skipped_records"] == 2 and report["sources"]["s"]["dropped"]["bad_json"] == 2


# ---- 7. the non-finite-loss stop names metrics.jsonl's step ---------------------------------------------------------

def test_non_finite_stop_names_the_step_metrics_would_log(tiny_model, stage, tmp_path, in_process, capsys):
    import sft
    out = tmp_path / "run"
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert exit_status(sft.main, ["--model", tiny_model, "--data", stage, "--out", out, "--max_steps", 3,
                                  "--lr", "1e30", "--warmup_ratio", 0]) == 1  # step 1 fine, its update explodes
    logged = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1]
    assert "sft.py: error: step 2: non-finite loss" in capsys.readouterr().err
    # the Ctrl-C / SIGTERM handlers of the loop are put back on the way out of the error: one left behind made a later
    # multiprocessing pool in this process hang (its idle worker caught SIGTERM instead of exiting)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


# ---- 8. judge.py: another comparison's folder; answers of a retrained model ----------------------------------------

def test_judge_refuses_another_judges_folder_and_stale_generated_answers(tiny_model, tmp_path, in_process, capsys):
    import judge
    from test_judge import FakeJudge, longer_wins
    utils.write_jsonl(tmp_path / "q.jsonl", [{"id": f"q{i}", "question": f"问题{i}：醉驾如何处罚？",
                                              "reference": "依照《刑法》第一百三十三条之一处拘役。"} for i in range(2)])
    model = tmp_path / "runs" / "sft2" / "final"
    shutil.copytree(tiny_model, model)
    out = tmp_path / "o"
    fake = FakeJudge(longer_wins)
    base = ["--questions", tmp_path / "q.jsonl", "--model_a", model, "--answers_b", "reference", "--llm_url",
            fake.url, "--out", out, "--max_new_tokens", 4, "--bootstrap", 20]
    try:
        assert exit_status(judge.main, [*base, "--llm_model", "judge-1"]) == 0
        first = capsys.readouterr().err
        summary = (out / "summary.json").read_bytes()
        assert exit_status(judge.main, [*base, "--llm_model", "judge-2"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{out}: holds a run made with a different config (llm_model: 'judge-1' -> 'judge-2')" in line
        assert (out / "summary.json").read_bytes() == summary
        assert json.loads(summary)["system_a"] == "sft2"  # the run's name, not `final`
        assert f"judge.py: done: {out / 'summary.json'}" in first

        w = model / "model.safetensors"  # the model retrained at the same path: its answers in OUT are stale
        raw = bytearray(w.read_bytes())
        raw[len(raw) // 2] ^= 1
        w.write_bytes(bytes(raw))
        answers = out / "answers_a_sft2.jsonl"
        kept = answers.read_bytes()
        assert exit_status(judge.main, [*base, "--llm_model", "judge-1"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{answers}: made by {model} with other settings (model_fingerprint: " in line and "not judged" in line
        assert answers.read_bytes() == kept and (out / "summary.json").read_bytes() == summary
        assert exit_status(judge.main, [*base, "--llm_model", "judge-2", "--overwrite"]) == 0
    finally:
        fake.close()
    made = json.loads((out / "answers_a_sft2.jsonl.model").read_text())
    assert made["model_fingerprint"] == utils.fingerprint(model) and json.loads(
        (out / "summary.json").read_text())["judge_model"] == "judge-2"


# ---- where a run went and what is next ------------------------------------------------------------------------------

def test_generate_names_a_runs_export_after_the_run_and_score_shows_tasks(tiny_model, tmp_path, in_process,
                                                                          monkeypatch, capsys):
    import evaluate
    model = tmp_path / "runs" / "sft2" / "final"
    shutil.copytree(tiny_model, model)
    monkeypatch.setattr(utils, "generate", lambda m, prompts, **kw: ["A" for _ in prompts])
    out = tmp_path / "preds"
    assert exit_status(evaluate.main, ["generate", "--model", model, "--lawbench_dir", SAMPLE / "lawbench", "--out",
                                       out, "--tasks", "3-3", "--max_items", 2, "--max_new_tokens", 2]) == 0
    assert (out / "zero_shot" / "sft2" / "3-3.json").is_file()
    err = capsys.readouterr().err
    assert f"next: python evaluate.py score {out / 'zero_shot'} --out {out / 'scores.csv'}" in err
    assert exit_status(evaluate.main, ["score", out / "zero_shot", "--out", out / "scores.csv", "--workers", 1]) == 0
    printed = capsys.readouterr()
    assert "| sft2 |  |  |  |  |" in printed.out  # 1 of 20 tasks: blank averages ...
    assert "| task | sft2 |" in printed.out and "\n| 3-3 | " in printed.out  # ... and the task's own score
    assert f"evaluate.py score: done: {out / 'scores.csv'}" in printed.err


def test_rl_says_where_final_went(tiny_model, prompts, tmp_path, world_of_one, one_thread, capsys):
    import rl
    out = tmp_path / "rl"
    rl.train(rl.RLConfig(model=str(tiny_model), prompts=str(prompts), out=str(out), group_size=2, prompts_per_step=2,
                         max_steps=1, max_new_tokens=4, log_every=0), world_of_one)
    utils.unlock_run_dirs()
    err = capsys.readouterr().err
    assert f"rl.py: done: {out / 'final'}/ (the trained policy)" in err and (out / "final" / "config.json").is_file()
    assert f"next: python evaluate.py judgment --model {out / 'final'}" in err
