"""The isolation table (LOG.md): tests/sandbox_hostile.py's programs through sandbox.run_python as root and as an
unprivileged user this script creates (run it as root), per resource: "held n/n" or "ESCAPED k/n" (k programs did
harm). With --old_commit, the executor of that commit (evaluate.run_python before issue 20, its audit-hook sandbox
extracted from git) is run the same way, side by side; --hook_removed also runs it with its audit hook left out (the
OS layer alone, as after a bypass of the hook by crafted bytecode).

    sudo python bench/sandbox_isolation.py [--old_commit 2b9173e] [--hook_removed]   # a few minutes with old
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
import sandbox  # noqa: E402
import sandbox_hostile as H  # noqa: E402

RESOURCES = {
    "files outside the work folder (read, write)": ["bypass_all_read_planted", "bypass_realpath_read_planted",
                                                    "dir_fd_read_planted", "bypass_all_write_outside",
                                                    "dir_fd_write_outside", "read_planted_open", "write_planted"],
    "home, checkout, ../shared visible": ["bypass_all_list_home"],
    "gold answers (checkout, ../shared)": ["gold_from_checkout", "gold_from_shared"],
    "evaluator's environment and memory (API key)": ["env_secret", "parent_environ", "bypass_all_parent_environ",
                                                     "proc_ppid_mem"],
    "signals, priority, affinity of the user's processes": ["pidfd_stop_victim", "setpriority_victim",
                                                            "setpriority_parent", "sched_setaffinity_victim",
                                                            "kill_parent", "terminate_parent", "killpg_parent"],
    "TCP to 127.0.0.1": ["socket_connect"],
    "unix sockets (filesystem, abstract)": ["unix_socket_connect", "unix_socket_abstract"],
    ".pth in the user's site-packages": ["pth_user_site"],
    "host /tmp written": ["bypass_all_write_host_tmp", "os_system"],
    "/dev/shm: persistence, size": ["dev_shm_persist_write", "dev_shm_persist_read", "dev_shm_fill"],
    "host processes in /proc": ["sees_host_processes"],
    "cleanup: mode-000 dirs, symlink flood, 3000-deep chain": ["mode_000_dirs", "symlink_flood", "deep_dir_chain"],
    "status forged (report descriptor)": ["forge_report_then_raise", "forge_report_blocked_exit", "forge_report_ok"],
    "processes (fork bomb, subprocess, posix_spawn)": ["fork_bomb", "subprocess_run", "os_posix_spawn"],
    "memory, disk, file size": ["memory_bomb", "memory_one_block", "fill_disk", "fill_disk_many_files",
                                "work_tmpfs_fill"],
    "CPU, wall, output": ["cpu_burn", "cpu_burn_ignoring_sigxcpu", "infinite_loop", "gigabytes_stdout"],
}
PARENT_KILLERS = {"kill_parent", "terminate_parent", "killpg_parent"}  # would end the driver without the hook


def old_executor_dir(commit: str, hook: bool) -> str:
    """A folder (readable by any user) holding sandbox.py = the executor section of evaluate.py at commit."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:evaluate.py"], capture_output=True, text=True,
                         check=True).stdout
    body = src[src.index("SANDBOX_MODULES = ("):src.index("_CODE_BLOCK = re.compile")]
    if not hook:
        body = body.replace("    sys.addaudithook(hook)\n", "    pass\n")
    d = tempfile.mkdtemp(prefix="lexlab-old-executor-")
    Path(d, "sandbox.py").write_text("import math, os, re, sys, time\nfrom pathlib import Path\n" + body,
                                     encoding="utf-8")
    os.chmod(d, 0o755)
    os.chmod(Path(d, "sandbox.py"), 0o644)
    return d


def passes(executor_dir: str | None, names) -> dict:
    """{"root": rows, "user": rows}: root in a driver process of its own (it imports executor_dir's sandbox)."""
    cfg = Path(tempfile.mkdtemp(prefix="lexlab-iso-")) / "cfg.json"
    cfg.write_text(json.dumps({"path": [executor_dir or str(REPO), str(REPO / "tests")], "names": names}))
    print(f"running {executor_dir or 'the checkout'}'s executor as root ...", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, str(REPO / "tests" / "sandbox_hostile.py"), str(cfg)], capture_output=True,
                         text=True)
    shutil.rmtree(cfg.parent)
    if out.returncode != 0:
        raise SystemExit(f"sandbox_isolation: the root driver failed (exit {out.returncode}): {out.stderr[-2000:]}")
    print("... and as a new user", file=sys.stderr, flush=True)
    return {"root": json.loads(out.stdout), "user": H.run_as_new_user(executor_dir, names)}


def cell(rows, names) -> str:
    rows = {r["name"]: r for r in rows}
    present = [n for n in names if n in rows]
    bad = [n for n in present if rows[n]["harm"]]
    if not present:
        return "n/a"
    return f"ESCAPED {len(bad)}/{len(present)}" if bad else f"held {len(present)}/{len(present)}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old_commit", default="", help="also the executor of this commit (e.g. 2b9173e)")
    ap.add_argument("--hook_removed", action="store_true", help="also the old executor without its audit hook")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("sandbox_isolation: run as root (it creates the unprivileged user)")
    b = sandbox.boundary()
    names = [h[0] for h in H.HOSTILE]
    cols = {"new": passes(None, names)}
    olds = [("old", True)] + [("old, hook removed", False)] * args.hook_removed if args.old_commit else []
    for label, hook in olds:
        d = old_executor_dir(args.old_commit, hook=hook)
        try:
            cols[label] = passes(d, [n for n in names if hook or n not in PARENT_KILLERS])
        finally:
            shutil.rmtree(d)
    print(f"bwrap {b.get('version')} ({b.get('bwrap')}); kernel {os.uname().release}; python {sys.version.split()[0]} "
          f"(root) and the user's (see tests/sandbox_hostile.py); {len(names)} programs")
    head = [f"{k} {w}" for k in cols for w in ("root", "user")]
    print("| resource (programs) | " + " | ".join(head) + " |")
    print("|---" * (1 + len(head)) + "|")
    for res, progs in RESOURCES.items():
        print(f"| {res} ({len(progs)}) | " + " | ".join(cell(cols[k][w], progs) for k in cols for w in ("root", "user"))
              + " |")
    print("| all programs | " + " | ".join(f"{sum(bool(r['harm']) for r in cols[k][w])}/{len(cols[k][w])} harmed"
                                         for k in cols for w in ("root", "user")) + " |")


if __name__ == "__main__":
    main()
