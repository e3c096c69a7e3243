"""evaluate.run_python against hostile programs (issue 13): the model under evaluation writes the code, so every
snippet below is something a program may do. For each: the evaluating process (this one) survives, the run ends within
its wall limit, a planted secret environment variable and a planted file beside the repository are neither read nor
changed, a listener on 127.0.0.1 receives no connection, and the outcome is recorded by status and reason.

Which layer stops each snippet is in its `layer` column:
  hook   - the audit hook installed in the child before the program runs (Python layer; always present)
  os     - an OS mechanism: rlimits (CPU, address space, open files, processes, file size), the network namespace,
           the uid change to nobody (the last two only as root: those tests skip where the mechanism is absent)
  parent - the evaluating process: wall time, output size, the scrubbed environment, the temporary directory
  python - the interpreter itself (e.g. RecursionError)
test_os_layer_* run the same kind of attack with the audit hook left out (a boot program without it, patched in), so
they show the OS layer on its own; they skip where run_python reports the mechanism missing.
"""
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import evaluate as E

REPO = Path(__file__).resolve().parents[1]
SECRET = "lexlab-planted-" + uuid.uuid4().hex
WALL = 2.0  # per program; small so the whole file takes seconds


@pytest.fixture(scope="module")
def listener():
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
                accepted.append(addr)
                conn.close()
            except OSError:
                pass
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    t.join(2)
    srv.close()


@pytest.fixture(scope="module")
def planted():
    """A world-readable file beside the repository holding the secret (only the audit hook keeps it unread) and the
    secret in this process's environment (as an API key would be)."""
    path = REPO.parent / f".lexlab-planted-{uuid.uuid4().hex[:8]}.txt"
    path.write_text(SECRET, encoding="utf-8")
    os.chmod(path, 0o644)
    os.environ["LEXLAB_PLANTED_API_KEY"] = SECRET
    stat = path.stat()
    yield path, (stat.st_mtime_ns, stat.st_size, stat.st_mode)
    os.environ.pop("LEXLAB_PLANTED_API_KEY", None)
    path.unlink(missing_ok=True)


def _ctypes_so():
    import _ctypes
    return _ctypes.__file__


def _posixsubprocess_so():
    import _posixsubprocess
    return getattr(_posixsubprocess, "__file__", "")


# (id, layer, program (P = planted path, PORT = listener port), accepted statuses, reason must contain)
HOSTILE = [
    ("infinite_loop", "parent", "while True:\n    pass", {"timeout"}, "wall"),
    ("sleep_forever", "parent", "import time\ntime.sleep(3600)", {"timeout"}, "wall"),
    ("close_pipes_and_sleep", "parent", "import os, time\nos.closerange(0, 64)\ntime.sleep(3600)", {"timeout"},
     "wall"),
    ("cpu_burn", "os", "x = 0\nwhile True:\n    x += 1", {"limit"}, "cpu"),  # cpu_s=1, wall 10 (see below)
    ("cpu_burn_ignoring_sigxcpu", "os",  # _signal is built in, already loaded: SIGXCPU ignored, the hard limit kills
     "import _signal\n_signal.signal(24, _signal.SIG_IGN)\nx = 0\nwhile True:\n    x += 1", {"limit"}, "cpu"),
    ("memory_bomb", "os", "a = []\nwhile True:\n    a.append(bytearray(10 ** 7))", {"limit"}, "memory"),
    ("memory_one_block", "os", "x = bytearray(1 << 40)", {"limit"}, "memory"),
    ("fork_bomb", "hook", "import os\nwhile True:\n    os.fork()", {"blocked"}, "os.fork"),
    ("deep_recursion", "python", "def f(n):\n    return f(n + 1)\nf(0)", {"error"}, "RecursionError"),
    ("deep_recursion_unlimited", "os",  # frames on the heap until the address-space limit or the wall (1 s)
     "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)",
     {"limit", "timeout", "error"}, ""),
    ("gigabytes_stdout", "parent", "while True:\n    print('x' * 65536)", {"limit"}, "output"),
    ("gigabytes_stderr", "parent", "import sys\nwhile True:\n    sys.stderr.write('x' * 65536)", {"limit"}, "output"),
    ("env_secret", "parent", "import os\nprint(dict(os.environ))", {"ok"}, ""),
    ("parent_environ", "hook", "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())", {"blocked"},
     "open"),
    ("read_planted_open", "hook", "print(open(P).read())", {"blocked"}, "open"),
    ("read_planted_os_open", "hook", "import os\nprint(os.read(os.open(P, os.O_RDONLY), 100))", {"blocked"}, "open"),
    ("read_planted_fileio", "hook", "import io\nprint(io.FileIO(P).read())", {"blocked"}, "open"),
    ("read_planted_open_code", "hook", "import io\nprint(io.open_code(P).read())", {"blocked"}, "open"),
    ("read_via_chdir", "hook", "import os\nos.chdir(os.path.dirname(P))\nprint(open(os.path.basename(P)).read())",
     {"blocked"}, "os.chdir"),
    ("read_planted_fspath_swap", "hook",  # a path object that names a file inside when checked, P when opened
     "class Swap:\n    n = 0\n    def __fspath__(self):\n        Swap.n += 1\n        return 'ok.txt' if Swap.n == 1 "
     "else P\nopen('ok.txt', 'w').close()\nprint(open(Swap()).read())", {"ok", "blocked"}, ""),  # 3.11: converted once
    ("read_via_symlink", "hook", "import os\nos.symlink(P, 'link')\nprint(open('link').read())", {"blocked"},
     "os.symlink"),
    ("list_outside", "hook", "import os\nprint(os.listdir(os.path.dirname(P)))", {"blocked"}, "os.listdir"),
    ("write_planted", "hook", "open(P, 'w').write('owned')", {"blocked"}, "open"),
    ("append_planted", "hook", "open(P, 'a').write('owned')", {"blocked"}, "open"),
    ("delete_planted", "hook", "import os\nos.remove(P)", {"blocked"}, "os.remove"),
    ("rename_planted", "hook", "import os\nos.rename(P, 'stolen.txt')", {"blocked"}, "os.rename"),
    ("chmod_planted", "hook", "import os\nos.chmod(P, 0o777)", {"blocked"}, "os.chmod"),
    ("write_new_outside", "hook", "open(P + '.new', 'w').write('x')", {"blocked"}, "open"),
    ("socket_connect", "hook", "import socket\nsocket.create_connection(('127.0.0.1', PORT)).send(b'hi')",
     {"blocked"}, "import"),
    ("socket_catch_and_continue", "hook",
     "try:\n    import socket\nexcept BaseException:\n    pass\nprint('escaped')", {"blocked"}, "import"),
    ("subprocess_run", "hook", "import subprocess\nsubprocess.run(['id'])", {"blocked"}, "import"),
    ("os_system", "hook", "import os\nos.system('echo owned > /tmp/lexlab-owned')", {"blocked"}, "os.system"),
    ("os_execv", "hook", "import os\nos.execv('/bin/sh', ['sh', '-c', 'id'])", {"blocked"}, "os.exec"),
    ("os_posix_spawn", "hook", "import os\nos.posix_spawn('/bin/id', ['id'], {})", {"blocked"}, "os.posix_spawn"),
    ("posixsubprocess_reload", "hook",
     "import sys\nm = sys.modules['_imp'].create_dynamic(type('S', (), {'name': '_posixsubprocess', "
     "'origin': SO_PS})())\nprint(m.fork_exec)", {"blocked"}, "import"),
    ("ctypes_import", "hook", "import ctypes\nctypes.CDLL(None).kill(0, 9)", {"blocked"}, "import"),
    ("ctypes_reload", "hook",
     "import sys\nm = sys.modules['_imp'].create_dynamic(type('S', (), {'name': '_ctypes', 'origin': SO_CT})())\n"
     "m.dlopen(None, 2)", {"blocked"}, "ctypes"),
    ("kill_parent", "hook", "import os\nos.kill(os.getppid(), 9)", {"blocked"}, "os.kill"),
    ("terminate_parent", "hook", "import os\nos.kill(os.getppid(), 15)", {"blocked"}, "os.kill"),
    ("killpg_parent", "hook", "import os\nos.killpg(os.getpgid(os.getppid()), 9)", {"blocked"}, "os.killpg"),
    ("signal_module", "hook", "import signal\nsignal.pthread_kill(0, 9)", {"blocked"}, "import"),
    ("raise_rlimit", "hook", "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))", {"blocked"},
     "resource.setrlimit"),
    ("thread", "os", "import _thread, time\n_thread.start_new_thread(print, ('thread',))\ntime.sleep(0.2)",
     {"limit", "blocked"}, ""),
    ("add_audit_hook", "hook", "import sys\nsys.addaudithook(lambda *a: None)", {"blocked"}, "sys.addaudithook"),
    ("hook_via_frames", "hook", "import sys\nprint(sys._getframe(1).f_locals)", {"blocked"}, "sys._getframe"),
    ("hook_via_traceback", "hook", "try:\n    1 / 0\nexcept Exception as e:\n    print(e.__traceback__.tb_frame)",
     {"blocked"}, "tb_frame"),
    ("hook_via_gc", "hook", "import gc\nprint(gc.get_objects())", {"blocked"}, ""),
    ("replace_function_code", "hook", "def f():\n    pass\nf.__code__ = (lambda: 1).__code__", {"blocked"}, "__code__"),
    ("fill_disk", "os", "open('big', 'wb').write(b'x' * (64 << 20))", {"limit"}, "file size"),
    ("fill_disk_many_files", "hook", "for i in range(10 ** 6):\n    open('f%d' % i, 'wb').write(b'x' * 1024)",
     {"limit"}, "files written"),
    ("open_files", "os", "fs = [open('f%d' % i, 'w') for i in range(10000)]", {"limit"}, "open files"),
]


def _program(program: str, path: Path, port: int) -> str:
    return (f"P = {str(path)!r}\nPORT = {port}\nSO_CT = {_ctypes_so()!r}\nSO_PS = {_posixsubprocess_so()!r}\n"
            + program)


def _limits(name: str) -> dict:
    if name.startswith("cpu_burn"):  # the CPU rlimit must come before the wall limit, even on a loaded machine
        return {"cpu_s": 1, "wall_s": 10.0}
    if name.startswith("memory"):  # filling the address space takes time on a loaded machine: a smaller one
        return {"wall_s": 5.0, "memory_mb": 128}
    if name in ("infinite_loop", "sleep_forever", "close_pipes_and_sleep", "deep_recursion_unlimited"):  # wall ends them
        return {"wall_s": 1.0, "memory_mb": 256}
    return {"wall_s": WALL, "memory_mb": 256}


def test_enough_snippets():
    assert len(HOSTILE) >= 25 and len({h[0] for h in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize("name,layer,program,statuses,reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile(name, layer, program, statuses, reason, listener, planted):
    port, accepted = listener
    path, before = planted
    kw = _limits(name)
    t0 = time.monotonic()
    r = E.run_python(_program(program, path, port), **kw)
    took = time.monotonic() - t0
    if name == "thread" and r["status"] == "ok" and os.geteuid() == 0 and not r["isolation"]["uid"]:
        pytest.skip("root without the uid change: Linux does not apply RLIMIT_NPROC to root (a thread is harmless)")
    assert r["status"] in statuses, (r["status"], r["reason"], r["stderr"][-500:])
    assert reason in r["reason"], r["reason"]
    assert r["status"] in E.EXEC_STATUSES
    assert took < kw["wall_s"] + 3.0  # the wall limit, plus process start/cleanup on a busy machine
    assert SECRET not in r["stdout"] and SECRET not in r["stderr"]
    assert path.read_text(encoding="utf-8") == SECRET
    st = path.stat()
    assert (st.st_mtime_ns, st.st_size, st.st_mode) == before
    assert not Path("/tmp/lexlab-owned").exists()
    assert "escaped" not in r["stdout"] and "thread" not in r["stdout"]
    time.sleep(0.05)
    assert accepted == []
    assert os.environ.get("LEXLAB_PLANTED_API_KEY") == SECRET  # ... and this process is alive, unchanged


def test_ok_program_and_cleanup():
    r = E.run_python("import math, decimal\nopen('a.txt', 'w').write('1')\nprint(decimal.Decimal('0.1') * 3, "
                     "math.fsum([1500, 7000]))", wall_s=WALL)
    assert r["status"] == "ok" and r["stdout"] == "0.3 8500.0\n"
    leftovers = [p for p in Path(__import__("tempfile").gettempdir()).glob("lexlab-sandbox-*")
                 if p.stat().st_mtime > time.time() - 5]
    assert leftovers == []


def test_never_raises_on_odd_input():
    for code in ["", "\x00", "def", "print('\ud800')", "x" * 200000]:
        assert E.run_python(code, wall_s=WALL)["status"] in E.EXEC_STATUSES


# --- The OS layer alone (audit hook left out): skipped where the mechanism is missing ------------------------------

def _run(code, audit=True, preload=(), **kw):
    """run_python, optionally with the audit hook left out of the boot program and with further modules preloaded
    (before the hook and the uid change: what sandbox_preloads gives for an import of a SANDBOX_MODULES name)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(E, "SANDBOX_MODULES", E.SANDBOX_MODULES + tuple(preload))
        if not audit:
            mp.setattr(E, "_SANDBOX_BOOT", E._SANDBOX_BOOT.replace("    sys.addaudithook(hook)\n", ""))
        return E.run_python(code, **kw)


def _os(code, **kw):
    return _run(code, audit=False, wall_s=WALL, **kw)


def test_socket_preloaded_still_blocked(listener):
    """Even with the socket module already loaded, the hook ends the program at its first socket call."""
    port, accepted = listener
    r = _run(f"import socket\nsocket.socket().connect(('127.0.0.1', {port}))\nprint('sent')",
             wall_s=WALL, preload=("socket",))
    assert r["status"] == "blocked" and r["reason"].startswith("socket.") and "sent" not in r["stdout"]
    time.sleep(0.05)
    assert accepted == []


def test_os_layer_network_namespace(listener):
    port, accepted = listener
    r = _os(f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\nprint('sent')",
            preload=("socket",))  # loaded before the uid change (the stdlib may be unreadable to nobody)
    if not r["isolation"]["net"]:
        pytest.skip("no network namespace here (not root, or unshare refused): only the audit hook stops sockets")
    assert r["status"] == "error" and r["reason"] in ("OSError", "ConnectionRefusedError") and "sent" not in r["stdout"]
    time.sleep(0.05)
    assert accepted == []


def test_os_layer_uid_kill_and_rlimits():
    victim = subprocess.Popen(["sleep", "30"])  # a root process standing in for the evaluating one
    try:
        r = _os(f"import os\nos.kill({victim.pid}, 9)")
        if not r["isolation"]["uid"]:
            pytest.skip("not root: the program keeps this user's uid; only the audit hook stops signals")
        assert r["status"] == "error" and "PermissionError" in r["reason"]
        assert victim.poll() is None
        r = _os("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))")
        assert r["status"] == "error" and "ValueError" in r["reason"]  # cannot raise its hard limit
        r = _os("import os\nos.fork()\nprint('forked')")
        assert r["status"] == "limit" and r["reason"] == "processes" and "forked" not in r["stdout"]
    finally:
        victim.kill()
        victim.wait()


def test_os_layer_uid_files(tmp_path):
    secret = tmp_path.parent / f".lexlab-root-only-{uuid.uuid4().hex[:8]}"
    secret.write_text(SECRET)
    os.chmod(secret, 0o600)
    try:
        r = _os(f"print(open({str(secret)!r}).read())")
        if not r["isolation"]["uid"]:
            pytest.skip("not root: no uid change; only the audit hook keeps the program out of this user's files")
        assert r["status"] == "error" and "PermissionError" in r["reason"] and SECRET not in r["stdout"]
        r = _os(f"open({str(REPO.parent / 'lexlab-os-layer-write')!r}, 'w').write('x')")
        assert r["status"] == "error" and not (REPO.parent / "lexlab-os-layer-write").exists()
    finally:
        secret.unlink()


def test_os_layer_limits_without_hook():
    assert _os("x = bytearray(1 << 40)")["reason"] == "memory"
    assert _os("import time\ntime.sleep(60)", )["status"] == "timeout"
    # without cpu_s, the CPU rlimit sits past the wall (a busy loop is a "timeout", not a race between the two)
    cpu = _os("import resource\nprint(resource.getrlimit(resource.RLIMIT_CPU))")["stdout"].strip()
    assert cpu == f"({int(WALL) + 1}, {int(WALL) + 2})"
    assert _os("while True:\n    print('x' * 65536)")["reason"].startswith("output")
    env = _os("import os\nprint(sorted(os.environ))")
    assert env["stdout"].strip() == "['HOME', 'LC_ALL', 'PATH']"


if __name__ == "__main__":  # LOG.md's table (python tests/test_sandbox.py): each program with the audit hook, and
    # with it left out (the OS layer alone)
    path = REPO.parent / f".lexlab-planted-{uuid.uuid4().hex[:8]}.txt"
    path.write_text(SECRET, encoding="utf-8")
    os.chmod(path, 0o644)
    os.environ["LEXLAB_PLANTED_API_KEY"] = SECRET
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    iso = E.run_python("pass")["isolation"]
    print(f"isolation: {iso}; python {sys.version.split()[0]}")
    print("| program | layer | with hook: status | reason | s | hook left out: status | reason | harm (hook left out) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, layer, program, _, _ in HOSTILE:
        cells = []
        for audit in (True, False):
            if not audit and not iso["uid"]:  # without the uid change, kill_parent would kill this process
                cells.append(("skipped", "", 0.0, ""))
                continue
            r = _run(_program(program, path, srv.getsockname()[1]), audit=audit, **_limits(name))
            try:
                srv.accept()
                conn = True
            except BlockingIOError:
                conn = False
            changed = not path.exists() or path.read_text(encoding="utf-8") != SECRET
            harm = [h for h, bad in (("secret read", SECRET in r["stdout"] + r["stderr"]), ("file changed", changed),
                                     ("connected", conn)) if bad]
            path.write_text(SECRET, encoding="utf-8")
            cells.append((r["status"], r["reason"].split(" (")[0][:40], r["seconds"], ", ".join(harm)))
        (s1, r1, t1, h1), (s2, r2, _, h2) = cells
        print(f"| {name} | {layer} | {s1} | {r1} | {t1:.2f} | {s2} | {r2} | "
              f"{('WITH THE HOOK: ' + h1) if h1 else (h2 or '-')} |")
    path.unlink()
