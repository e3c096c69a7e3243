"""utils.set_cpu_threads: a small model runs one torch thread on CPU (tiny kernels; on a busy machine every parallel op
waits for all its threads: bench/bench_demo_load.py), a large one keeps torch's default, OMP_NUM_THREADS always wins."""
import torch

import utils


def test_small_model_one_thread_large_model_default(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        assert utils.set_cpu_threads(4096) == 2  # a real model: unchanged
        assert utils.set_cpu_threads(128) == 1  # the tiny model
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice wins
        assert utils.set_cpu_threads(128) == 2
    finally:
        torch.set_num_threads(before)
