"""The demo's GRPO stage on a busy machine: step time idle vs beside N busy processes, side by side, in one run.

    python bench/bench_demo_load.py [--steps 8] [--busy 4] [--threads default,all]

Students run `bash recipes/demo.sh` on shared machines and laptops. This runs the demo's rl.py command (its flags,
the tiny model, prompts from the built-in sample; fewer steps) with no added load and then beside `--busy` processes
that each spin a core (`while True: pass`, what `stress --cpu N` does), for each thread setting in `--threads`:
  default  what a user gets (rl.py chooses its torch threads: utils.cpu_threads)
  all      OMP_NUM_THREADS = every core (torch's own default, what rl.py did before)
and prints the mean step time (first step excluded), the wall time of the command and the ratio loaded / idle.
The machine's load average is printed beside each number: on a shared machine "idle" means "no load added by us".
The `all` runs are slow on a busy machine (minutes per step): `--threads default` alone times what users get.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import utils  # noqa: E402

SPIN = "while True: pass"


def grpo(model: Path, prompts: Path, out: Path, steps: int, env: dict) -> dict:
    """The demo's rl.py command (recipes/demo.sh step 5) with `steps` steps -> {step_s, wall_s, load}."""
    cmd = [sys.executable, str(REPO / "rl.py"), "--model", str(model), "--prompts", str(prompts), "--out", str(out),
           "--backend", "hf", "--group_size", "8", "--prompts_per_step", "8", "--max_steps", str(steps),
           "--lr", "5e-4", "--max_new_tokens", "64", "--overwrite", "--log_every", "0"]
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    wall = time.time() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]
    return {"step_s": sum(r["step_time"] for r in rows) / len(rows), "wall_s": wall, "load": os.getloadavg()[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8, help="GRPO steps per run (the demo runs 80)")
    ap.add_argument("--busy", type=int, default=4, help="busy processes beside the loaded runs")
    ap.add_argument("--threads", default="default,all", help="comma-separated: default | all | a number")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_demo_load_"))
    model = utils.build_tiny_model(work / "model")
    subprocess.run([sys.executable, str(REPO / "prepare_data.py"), "--manifest", "data/sample/manifest.json",
                    "--lawbench_dir", "data/sample/lawbench", "--model", str(model), "--seq_len", "1024",
                    "--workers", "1", "--out", str(work / "data")], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    print(f"cores {os.cpu_count()}, load average before {os.getloadavg()[0]:.2f}, GRPO {a.steps} steps "
          f"(demo flags: G 8 x 8 prompts, 64 new tokens), busy processes {a.busy}")
    results = {}
    for setting in a.threads.split(","):
        env = dict(base)
        if setting != "default":
            env["OMP_NUM_THREADS"] = str(os.cpu_count() if setting == "all" else int(setting))
        for busy in (0, a.busy):
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
            try:
                time.sleep(2 if busy else 0)  # let the load average see them
                r = grpo(model, work / "data" / "rl_prompts.jsonl", work / f"rl_{setting}_{busy}", a.steps, env)
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
            results[setting, busy] = r
            print(f"threads {setting:>7}  busy {busy}:  {r['step_s']:6.2f} s/step  wall {r['wall_s']:6.1f} s  "
                  f"(load average {r['load']:.1f})", flush=True)
    print()
    for setting in a.threads.split(","):
        idle, busy = results[setting, 0], results[setting, a.busy]
        print(f"threads {setting:>7}: loaded / idle step time {busy['step_s'] / idle['step_s']:.2f}x "
              f"({idle['step_s']:.2f} -> {busy['step_s']:.2f} s/step)")
    if "default" in a.threads.split(",") and "all" in a.threads.split(","):
        ratio = {busy: results["all", busy]["step_s"] / results["default", busy]["step_s"] for busy in (0, a.busy)}
        print(f"threads all / default: {ratio[a.busy]:.2f}x under load, {ratio[0]:.2f}x without added load")


if __name__ == "__main__":
    main()
