"""Shared fixtures: the tiny offline model (built once per session) and the ../shared data folder (skip if absent)."""
from pathlib import Path

import pytest

import utils

REPO = Path(__file__).resolve().parents[1]
SHARED = utils.SHARED


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-init Qwen2 + locally trained tokenizer, saved as a Hugging Face folder. Nothing is downloaded."""
    import utils
    return utils.build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def lawbench_dir() -> Path:
    if not (SHARED / "lawbench" / "data").is_dir():
        pytest.skip("../shared/lawbench is not present")
    return SHARED / "lawbench"


# ---------------------------------------------------------------- CPU semantics on any machine (also a CUDA one)
# The CPU tests check exact equalities (1e-5, bitwise) that only hold in fp32 over gloo. On a CUDA machine the code
# would pick NCCL + bf16, so: subprocesses get cpu_env() (no GPU visible), in-process tests pick the CPU explicitly
# (world_of_one), and GPU checks live in their own tests marked @requires_cuda, with bf16 tolerances.
requires_cuda = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")


def exit_status(main, argv) -> int:
    """A script's main(argv) run in-process -> its exit status (bad input exits 2 through utils.fail)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return rc if isinstance(rc, int) else 0


def cpu_env(extra: dict | None = None) -> dict:
    """os.environ for a subprocess that must run the CPU (gloo, fp32) path even on a GPU machine: no GPU visible,
    no torchrun variables inherited, one thread per process (the tests run several ranks on few cores)."""
    import os
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           **(extra or {})}
    return {k: v for k, v in env.items()
            if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR")}


def kill_when(cmd, env, ready, timeout: float = 600) -> int:
    """Run cmd (a training run) and SIGKILL it from outside as soon as ready() is true (polled every 20 ms), as a
    crash or a preempted node would; -> its return code. The run must not end on its own first."""
    import signal
    import subprocess
    import time
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not ready():
        assert p.poll() is None, f"the run ended (exit {p.returncode}) before it could be killed"
        assert time.time() - t0 < timeout, "timed out waiting to kill the run"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    return p.wait()


@pytest.fixture
def world_of_one():
    """An in-process gloo world of one on the CPU (utils.dist_init with CUDA hidden); torn down after the test,
    environment restored. Yields the device (cpu)."""
    yield from _world_of_one(cuda=False)


@pytest.fixture
def world_of_one_cuda():
    """An in-process NCCL world of one on GPU 0 (use with @requires_cuda). Yields the device."""
    yield from _world_of_one(cuda=True)


def _world_of_one(cuda: bool):
    import os
    from unittest import mock

    import torch
    import torch.distributed as dist

    import utils
    saved = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR"):
        os.environ.pop(k, None)
    with mock.patch.object(torch.cuda, "is_available", return_value=cuda):
        device = utils.dist_init(0)[3]
    try:
        yield device
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


# ---------------------------------------------------------------- the README's CPU examples, run as written
# README.md's ```bash blocks whose first line starts with "# CPU" run in order, as written, in a copy of the
# repository (nothing lands in the working copy; no ../shared beside it). tests/test_readme.py checks each block;
# tests/test_plots.py draws what they wrote (the scripts' own outputs: sft, rl, evaluate, prepare_data).
CPU_MARK = "# CPU"


def readme_bash_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, body) of every ```bash block of a markdown text."""
    import re
    return [(text[:m.start()].count("\n") + 1, m.group(1))
            for m in re.finditer(r"^```bash\n(.*?)^```$", text, re.M | re.S)]


@pytest.fixture(scope="session")
def readme_run(tmp_path_factory) -> tuple[Path, dict]:
    """-> (the copy's root, {README line of a CPU block: CompletedProcess}); runs/cpu holds what the blocks wrote."""
    import shutil
    import subprocess
    root = tmp_path_factory.mktemp("readme") / "repo"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(".git", "runs", "figs", "__pycache__", ".pytest_cache"))
    results = {}
    for line, body in readme_bash_blocks((REPO / "README.md").read_text(encoding="utf-8")):
        if body.startswith(CPU_MARK):
            results[line] = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=root, env=cpu_env(),
                                           capture_output=True, text=True, timeout=900)
    return root, results
