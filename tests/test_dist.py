"""utils' distributed helpers, the one way sft, rl and evaluate do each thing (issue 24 item 1): dist_info reads
torchrun's environment; all_reduce, barrier and dist_close work with or without a process group; a collective's
tensors go to the process group's device (NCCL has no CPU tensors). One gloo process, no GPU; the real multi-rank
paths run in test_rl / test_sft / test_evaluate_gen (2 torchrun ranks)."""
import pytest
import torch
import torch.distributed as dist

import evaluate
import utils

DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def test_dist_info_reads_the_torchrun_environment(monkeypatch):
    for k in DIST_VARS:
        monkeypatch.delenv(k, raising=False)
    assert utils.dist_info() == (0, 0, 1, 1)  # plain python: rank 0 of a world of one
    for k, v in zip(DIST_VARS, ("9", "1", "16", "8")):
        monkeypatch.setenv(k, v)
    info = utils.dist_info()
    assert info == (9, 1, 16, 8) and (info.rank, info.local_rank, info.world, info.local_world) == (9, 1, 16, 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert utils.dist_info().local_world == 16  # not set: one node


def test_without_a_process_group_nothing_is_collective(monkeypatch):
    """torchrun's variables alone start nothing: all_reduce hands x back as it is, barrier and dist_close do
    nothing (evaluate's HF backend in a world of one, a dry run)."""
    assert not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("all_reduce", "barrier", "destroy_process_group"):
        monkeypatch.setattr(dist, name, lambda *a, name=name, **k: pytest.fail(f"{name} without a process group"))
    x = torch.ones(3)
    assert utils.all_reduce(x) is x and utils.all_reduce(x, "max") is x
    utils.barrier()
    utils.dist_close()


def test_all_reduce_in_a_gloo_group(world_of_one, monkeypatch):
    seen, real = [], dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda t, op: seen.append((t.device.type, op)) or real(t, op=op))
    x = torch.tensor([1.0, 5.0])
    assert utils.all_reduce(x) is x and seen == []  # a world of one: no collective (no host sync per step)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as on a rank of two: the collectives run (on the real group of one)
    assert utils.all_reduce(torch.tensor([1.0, 5.0])).tolist() == [1.0, 5.0]
    assert utils.all_reduce(torch.tensor([2, 3]), "max").tolist() == [2, 3]
    assert seen == [("cpu", dist.ReduceOp.SUM), ("cpu", dist.ReduceOp.MAX)]


def test_collectives_run_on_the_backend_device(world_of_one, monkeypatch):
    """gloo: the CPU; nccl (with or without the cpu_offload gloo beside it): this rank's GPU, and all_reduce moves
    a tensor built anywhere there first (the meta device stands in for the GPU)."""
    assert utils.collective_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    for backend in ("nccl", "cuda:nccl,cpu:gloo"):
        monkeypatch.setattr(dist, "get_backend", lambda group=None, b=backend: b)
        assert utils.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(utils, "collective_device", lambda: torch.device("meta"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = []
    monkeypatch.setattr(dist, "all_reduce", lambda t, op: seen.append(t.device))
    assert utils.all_reduce(torch.ones(3)).device.type == "meta" and seen == [torch.device("meta")]


@pytest.mark.parametrize("wait", [True, False])
def test_dist_close_ends_the_group_with_or_without_a_barrier(world_of_one, monkeypatch, wait):
    """evaluate waits for every rank before it ends the group (its gathers); sft / rl close in a `finally` and do
    not (on the way out of an error a barrier could wait forever on ranks busy in another collective)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = []
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: seen.append("barrier"))
    utils.dist_close(wait)
    assert not dist.is_initialized() and seen == (["barrier"] if wait else [])


def test_evaluate_starts_a_group_only_where_it_needs_one(monkeypatch):
    """A plain HF run: no process group; vLLM: a world of one with a group (one engine for every task); torchrun
    with WORLD_SIZE > 1: a group, and the rank torchrun gave."""
    calls = []
    monkeypatch.setattr(utils, "dist_init", lambda *a, **k: calls.append("init"))
    for k in DIST_VARS:
        monkeypatch.delenv(k, raising=False)
    assert evaluate._rank_world("hf") == (0, 1) and calls == []
    assert evaluate._rank_world("vllm") == (0, 1) and calls == ["init"]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert evaluate._rank_world("hf") == (1, 2) and calls == ["init", "init"]


def test_a_command_without_torch_does_not_import_it_on_the_way_out():
    """utils.run_command closes the process group in its `finally`; a command that never touched torch (evaluate.py
    score, judge.py agreement) must not pay torch's import for that (1.5 s: LexEval scoring took 1.5x as long)."""
    import subprocess
    import sys
    code = ("import sys, utils; utils.run_command('x', lambda cfg: 0, None); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=utils.REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
