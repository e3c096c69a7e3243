"""Per-call cost of code mode's OS boundary: sandbox.run_python behind bubblewrap vs the same boot run as a plain child
process (run_python(..., unsandboxed=True): what the boundary adds) and vs the executor before issue 20 (the audit-hook
sandbox in evaluate.py at --old_commit, extracted from git), on typical 3-7 programs. Calls are interleaved (one of
each in turn), so a load change on a shared machine hits all three alike; medians and 90th percentiles in ms.

    python bench/bench_sandbox.py [--calls 40] [--old_commit 2b9173e]
"""
import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import sandbox  # noqa: E402

PROGRAMS = ["print(1500 + 7000)",
            "from decimal import Decimal as D\nprint(int((D('2.6') + D('1.8') + D('7.1')) * 10000))"]


def old_executor(commit: str):
    """evaluate.run_python as it was at `commit` (its section 3b only, so torch & co. are not imported)."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:evaluate.py"], capture_output=True, text=True,
                         check=True).stdout
    body = src[src.index("SANDBOX_MODULES = ("):src.index("_CODE_BLOCK = re.compile")]
    path = Path(tempfile.mkdtemp(prefix="lexlab-bench-")) / "old_executor.py"
    path.write_text("import math, os, re, sys, time\nfrom pathlib import Path\n" + body, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("old_executor", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    shutil.rmtree(path.parent)  # loaded: the file is no longer needed
    return mod.run_python


def plain_child(code: str) -> dict:
    """run_python's unsandboxed mode (as where no boundary can be set up): the same boot in a plain child process."""
    boundary = sandbox.boundary
    sandbox.boundary = lambda: {"ok": False, "why": "bench: the peer without the boundary"}
    try:
        r = sandbox.run_python(code, wall_s=10, unsandboxed=True)
    finally:
        sandbox.boundary = boundary
    assert r["isolation"]["boundary"] == "none"
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=40, help="calls per executor and program")
    ap.add_argument("--old_commit", default="2b9173e", help="'' to leave the old executor out")
    args = ap.parse_args()
    b = sandbox.boundary()
    if not b["ok"]:
        sys.exit(f"bench_sandbox: no boundary here: {b['why']}")
    runners = {"bwrap": lambda c: sandbox.run_python(c, wall_s=10), "plain child": plain_child}
    if args.old_commit:
        runners["old (audit hook)"] = (lambda f: lambda c: f(c, wall_s=10))(old_executor(args.old_commit))
    print(f"bwrap {b['version']} ({b['bwrap']}), bwrap runs as uid {b['host_uid']}; python {sys.version.split()[0]}")
    for code in PROGRAMS:
        for run in runners.values():  # warm-up (the boundary's probe, page cache)
            r = run(code)
            assert r["status"] == "ok", r
        times = {k: [] for k in runners}
        for _ in range(args.calls):
            for name, run in runners.items():
                t0 = time.perf_counter()
                r = run(code)
                times[name].append(1000 * (time.perf_counter() - t0))
                assert r["status"] == "ok", r
        med = {k: statistics.median(ts) for k, ts in times.items()}
        print(f"\nprogram: {code.splitlines()[0][:50]!r} ({args.calls} calls each)")
        print(f"{'executor':18s} {'median ms':>9s} {'p90 ms':>7s} {'bwrap minus this (median)':>26s}")
        for name, ts in times.items():
            print(f"{name:18s} {med[name]:9.1f} {statistics.quantiles(ts, n=10)[-1]:7.1f} "
                  f"{med['bwrap'] - med[name]:+23.1f} ms")


if __name__ == "__main__":
    main()
