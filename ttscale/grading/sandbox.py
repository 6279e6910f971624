"""Run untrusted Python code (model-written programs and their tests) in a locked-down subprocess.

Each run gets a fresh interpreter (the harness's own binary, `INTERPRETER -I`: sys.executable with
its links resolved, so a virtual environment's link, which may lie anywhere, even under the /tmp
that a run replaces, is not needed; the program has none of its packages either way) in its own working
directory, with a minimal environment (PATH, LANG, HOME and TMPDIR = that directory; nothing of
the parent's environment), stdin from /dev/null, and its own session.

Layers, from strongest to weakest (what is available is probed once per process, end to end;
every layer that is missing or weaker here is named in `Isolation.notes`, logged once per
process, and recorded in a run's backend.json by `isolation_record`):

* Filesystem (root): the run lives in its own mount namespace (`unshare -m`, private
  propagation), whose root is a new tmpfs holding an allow-list, not the host: /usr and the
  /bin, /sbin, /lib* links or directories beside it, the interpreter's prefix (sys.base_prefix:
  its standard library and libpython), the interpreter binary itself (INTERPRETER, where it lies
  outside that prefix), /etc/ld.so.cache and /etc/localtime,
  all bind-mounted read-only (where the harness's working directory or checkout lies inside one
  of them, as a checkout in /usr/src/app does, an empty directory covers it); a /etc/passwd and
  /etc/group that name only root and the run's uid; a read-only /dev with null, zero, full,
  random and urandom; a fresh /proc; and fresh /tmp and /dev/shm tmpfs instances capped at
  tmp_mb and shm_mb and at INODES_PER_MB inodes per MB (the kernel memory of many empty files is
  bounded too). The bootstrap, root inside the namespace, builds that root and pivots into it
  (pivot_root, then the host's tree is detached; where pivot_root is refused it moves the new
  root over / and chroots into it), so no run directory, checkout, home, /var/tmp or other mount
  of the host is there to open. The working directory is /tmp/sandbox; what the program stores
  is memory of a tmpfs that the kernel frees with the namespace, so nothing it writes outlives
  the run. The program's source reaches the namespace through stdin (a memfd). Without root
  there is no mount namespace: the program sees every file the caller's user may read, its
  working directory is a host temp dir (removed afterwards), and it can create files in the
  host's world-writable directories, up to max_file_mb each; the notes say so.
* Processes (root): a PID namespace (`unshare -p --kill-child`) and a System V IPC namespace
  (`-i`: shared memory segments die with the run). The bootstrap is the namespace's pid 1, a
  supervisor that stays root: it builds the root, forks the program (pid 2), reaps orphans,
  and when the program ends writes its wait status and CPU time to a pipe that only it holds,
  then exits, and the kernel kills whatever else is left in the namespace. The program is not
  pid 1, which would ignore SIGXCPU and its own SIGKILL. It sees only its own processes and
  cannot signal or ptrace the supervisor (another uid). Without a PID namespace the supervisor
  is an ordinary process and the program can list the host's processes (notes).
* Memory and processes per run (root, where a cgroup hierarchy lets us make groups): each run
  gets its own cgroup (v2, or the v1 memory and pids hierarchies where those controllers are
  bound to v1) with a memory limit of memory_mb + tmp_mb + shm_mb (everything its processes
  hold, the kernel memory of their files and the pages of its tmpfs; no swap) and pids.max =
  max_processes. The program joins it before it drops root (the supervisor stays outside, so
  the out-of-memory killer never takes the reporter). Without it memory_mb caps each process's
  address space only, and the notes say that a run's processes together may hold more.
* Network: a fresh network namespace (`unshare -n`: no interfaces up, not even loopback);
  `unshare -rn` (user namespace) where we are not root. Otherwise a prelude replaces
  `socket.socket`, `socket.create_connection` and friends with functions that raise
  PermissionError: this stops ordinary code, not code that calls libc through ctypes.
* Identity (root): the program runs as a dedicated unprivileged uid/gid with no supplementary
  groups, no capabilities and no_new_privs (setuid binaries grant nothing): dropped to by the
  bootstrap itself in a mount namespace, else by `setpriv`. Each run gets a fresh uid, so
  RLIMIT_NPROC (which counts the processes of a uid) is per run; a run cannot signal or ptrace
  other runs, the supervisor or the parent, nor write root's files. The uid is also a handle by
  which everything the run started is killed (below). The interpreter that ran, as it reports
  itself, is recorded in `Isolation.python` and in every result.
* Resources: RLIMIT_CPU (a backstop, see below; cpu_limit_s overrides), RLIMIT_AS (memory_mb),
  RLIMIT_NPROC (max_processes), RLIMIT_FSIZE (max_file_mb), RLIMIT_CORE = 0, per process. The
  limits are set by the bootstrap, not in a `preexec_fn`, which is unsafe in the threads
  `run_many` uses.

Which limit a CPU-bound program meets. The wall clock (timeout_s) is the limit; the default CPU
limit sits well past it, at 2 x timeout_s + 1 s (rounded up), so a single busy thread always
meets the wall clock first, idle machine or loaded (under load it gets less CPU per second, never
more), and the verdict does not depend on a race between two equal limits. The CPU limit stays
as a backstop: it ends a run whose wall-clock kill never comes (the harness itself was killed),
and a program that burns CPU in many threads at once. A caller that wants the CPU limit to be the
one met passes cpu_limit_s below timeout_s.

Ending a run. The verdict comes from how the main process ended (its wait status and the CPU
time it used: wait4's rusage, taken by the supervisor in a namespace, else by us) and from
whether our wall-clock timer fired, which it records before it kills anything; never from a
sleep. The wall clock kills the run's processes (by uid, and without a namespace by process
group too); in a namespace, if the supervisor has not ended KILL_GRACE_S later, it kills the
namespace's outer process, whose death takes the supervisor and the namespace with it. Once the
process we started has ended (the program, or in a namespace its outer process), and before it
is reaped (so that its pid, the process group's handle, cannot be reused), everything the run
left behind is killed: as root with one `kill(-1, SIGKILL)` sent *as the run's uid*, which
reaches exactly that uid's processes, wherever they moved (setsid, double fork), and which a
fork cannot slip past (the kernel signals them all under the task-list lock), repeated until
/proc shows none alive (with a PID namespace the kernel has killed them already); without root,
by process group only (a process that calls setsid escapes it; the notes say so).

Outcome: exit 0 -> "pass"; a nonzero exit -> "fail" with the last line of stderr as the reason
(e.g. "AssertionError"); our wall-clock kill, SIGXCPU, or a SIGKILL once the process has used
its CPU limit -> "timeout", with the reason naming which; MemoryError, a kill by the
out-of-memory killer when the run's own memory budget is spent ("memory limit"), any other
signal (including a SIGKILL the program sent itself, or one from the kernel's out-of-memory
killer, named as such when its OOM-kill count rose during the run), or a failure to set up the
sandbox -> "error".
"""

from __future__ import annotations

import atexit
import errno as errno_codes
import itertools
import json
import logging
import math
import os
import platform
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Iterable, Literal

from pydantic import Field

from ttscale.types import Frozen

log = logging.getLogger(__name__)

Status = Literal["pass", "fail", "timeout", "error"]

SETUP_FAILED_EXIT = 121  # exit code of the setup script or bootstrap when it cannot build the sandbox
REASON_CHARS = 300
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
ADMIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Kernel filesystems whose files the kernel itself guards per uid: not counted as writable mounts.
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs", "tracefs", "securityfs",
    "pstore", "bpf", "configfs", "fusectl", "binfmt_misc", "autofs", "efivarfs", "rpc_pipefs", "nsfs",
})
PRIVATE_WORKDIR = "/tmp/sandbox"  # the working directory inside a run's own /tmp
CLEANUP_DEADLINE_S = 30  # how long to keep killing a run's leftovers before giving up (never reached in practice)
KILL_GRACE_S = 5  # after the wall clock killed the run's uid, how long the supervisor has to report before the namespace is killed
# Dedicated uids for sandboxed runs when we are root: a fresh uid for every run, from a block of
# UIDS_PER_PROCESS per parent pid, so concurrent runs, and runs of concurrent ttscale processes,
# never share a uid. Fresh, not pooled: killed processes whose parent died are reparented to
# pid 1, and where pid 1 is slow to reap them (as in some containers) their zombies still count
# against RLIMIT_NPROC of their uid, which would starve the next run that reused it.
UID_BASE = 1_000_000_000
UIDS_PER_PROCESS = 32_768
PROCESS_BLOCKS = 100_000  # UID_BASE + PROCESS_BLOCKS * UIDS_PER_PROCESS stays below 2**32 - 1

# The allow-list: what a run's new root holds of the host, read-only (besides the interpreter).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("null", "zero", "full", "random", "urandom")
INODES_PER_MB = 256  # inodes of a private tmpfs per MB of its size: ~1 KB of kernel memory each, a quarter of the cap
MIN_INODES = 1024
ROOT_TMPFS = "size=4m,nr_inodes=4096,mode=755"  # the new root: directories, links and two small files, then read-only
DEV_TMPFS = "size=64k,nr_inodes=64,mode=755"
# The harness's interpreter binary, links resolved: what runs the programs, and what they see as
# sys.executable. A venv's bin/python is a link to it; the venv itself may sit in a checkout under
# /tmp, which the run's private /tmp hides, and its packages are not the program's to import.
INTERPRETER = os.path.realpath(sys.executable)
STAGING = "/tmp"  # where the bootstrap builds the new root before pivoting into it (a mount point in the namespace only)
# pivot_root has no libc wrapper in glibc: its syscall number, by machine (elsewhere: move + chroot).
PIVOT_ROOT_SYSCALL = {"x86_64": 155, "amd64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "loongarch64": 41,
                      "ppc64le": 203, "ppc64": 203, "s390x": 217}
CGROUP_PREFIX = "ttscale-sandbox-"
# Standard modules a program may import, checked in the sandbox by the probe (a missing shared
# library in the allow-list shows up here).
PROBE_MODULES = ("ctypes", "sqlite3", "decimal", "hashlib", "ssl", "zlib", "bz2", "lzma", "json",
                 "multiprocessing", "unicodedata", "readline", "curses", "uuid", "zoneinfo")

# The program that starts every run. With a mount namespace it begins as root inside it (pid 1 of
# a PID namespace where there is one): it carries out the parent's plan (`setup`: build the new
# root, pivot into it), forks the program and stays behind as its supervisor; the program joins
# the run's cgroup, drops to the run's uid for good, and stores its source (read from stdin) in
# its private working directory. All in these two processes, because a shell script doing the
# same with mount, install, cat and setpriv started a dozen processes per run, and cost 0.2 s a
# run at load 7. Without a mount namespace it starts as the run's uid already (setpriv) and
# reads the program from the working directory the parent made.
BOOTSTRAP = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
try:
    if cfg["setup"] is not None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        def call(what, result):
            if result != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, "%s: %s" % (what, os.strerror(errno)))
        def mount(source, target, fstype, flags, data=None):
            raw = [None if x is None else x.encode() for x in (source, target, fstype, data)]
            call("mount %s" % target, libc.mount(raw[0], raw[1], raw[2], ctypes.c_ulong(flags), raw[3]))
        MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
        MS_BIND, MS_MOVE, MS_REC, MS_RELATIME = 4096, 8192, 16384, 1 << 21
        def read_only(point):
            # A remount must restate nosuid, nodev, noexec and the atime flags (statvfs's ST_* -> MS_*).
            f = os.statvfs(point).f_flag
            kept = (f & (2 | 4 | 8 | 1024 | 2048)) | (MS_RELATIME if f & 4096 else 0)
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
        def unescape(field):
            for escape, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                field = field.replace(escape, char)
            return field
        def parents(target):
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        setup = cfg["setup"]
        root = setup["root"]
        # Opened while the cgroup filesystem is still in view; the program writes to them.
        cgroups = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in setup["cgroups"]]
        for op, path, *args in setup["steps"]:
            target = root + path
            if op == "root":
                mount("ttscale-sandbox", root, "tmpfs", MS_NOSUID | MS_NODEV, args[0])
            elif op == "dir":
                os.makedirs(target, 0o755, exist_ok=True)
            elif op == "symlink":
                parents(target)
                os.symlink(args[0], target)
            elif op == "file":
                parents(target)
                with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as f:
                    f.write(args[0])
            elif op == "bind":
                if os.path.isdir(path):
                    os.makedirs(target, 0o755, exist_ok=True)
                else:
                    parents(target)
                    os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
                mount(path, target, None, MS_BIND | MS_REC)
            elif op == "tmpfs":
                os.makedirs(target, 0o755, exist_ok=True)
                mount("ttscale-sandbox", target, "tmpfs", MS_NOSUID | MS_NODEV, args[0])
            elif op == "mask":  # an empty directory over a host directory inside an allowed one
                mount("ttscale-sandbox", target, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,nr_inodes=1,mode=755")
            elif op == "proc":
                os.makedirs(target, 0o555, exist_ok=True)
                mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            elif op == "seal":
                # Every mount of the new root so far becomes read-only: the root tmpfs (the last
                # mount at `root`) and all mounts under it, found through their parents' ids.
                with open("/proc/self/mountinfo") as f:
                    rows = [line.split() for line in f]
                ours, points = set(), []
                for row in rows:
                    if unescape(row[4]) == root:
                        ours, points = {row[0]}, [root]
                    elif row[1] in ours:
                        ours.add(row[0])
                        points.append(unescape(row[4]))
                for point in points:
                    read_only(point)
            elif op == "pivot":
                os.chdir(root)
                if args[0] is not None and libc.syscall(ctypes.c_long(args[0]), b".", b".") == 0:
                    call("umount2 of the host's root", libc.umount2(b".", 2))  # MNT_DETACH
                else:  # no pivot_root here (or refused): the new root goes over / and we chroot into it
                    mount(root, "/", None, MS_MOVE)
                    call("chroot", libc.chroot(b"."))
                os.chdir("/")
            else:
                raise ValueError("unknown setup step %r" % (op,))
        source = b""
        while chunk := os.read(0, 1 << 16):
            source += chunk
        report = setup["report_fd"]
        child = os.fork()
        if child:
            # The supervisor: root, outside the run's cgroup; reaps whatever is reparented to it
            # and reports how the program ended, then exits (with a PID namespace, the kernel
            # then kills everything left in it).
            for fd in cgroups:
                os.close(fd)
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.close(null)
            while True:
                pid, status, usage = os.wait4(-1, 0)
                if pid == child:
                    os.write(report, json.dumps({"status": status, "cpu_s": usage.ru_utime + usage.ru_stime}).encode())
                    os._exit(0)
        os.close(report)
        for fd in cgroups:
            os.write(fd, b"0")  # 0: the writing process joins the run's group, before it drops root
            os.close(fd)
        uid = cfg["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        call("no_new_privs", libc.prctl(38, 1, 0, 0, 0))  # PR_SET_NO_NEW_PRIVS: setuid binaries grant nothing
        call("dumpable", libc.prctl(4, 1, 0, 0, 0))  # PR_SET_DUMPABLE: the uid change cleared it; /proc/self stays ours
        os.mkdir(cfg["workdir"], 0o700)
        os.chdir(cfg["workdir"])
        with open(cfg["main"], "wb") as f:
            f.write(source)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        del ctypes, libc, call, mount, read_only, unescape, parents, setup, source, cgroups, report
    def limit(kind, soft, hard=None):
        resource.setrlimit(kind, (soft, soft if hard is None else hard))
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)  # SIGXCPU first, SIGKILL a second later
    limit(resource.RLIMIT_FSIZE, cfg["fsize"])
    if cfg["nproc"] is not None:
        limit(resource.RLIMIT_NPROC, cfg["nproc"])
    with open(cfg["main"], encoding="utf-8") as f:
        source = f.read()
    if cfg["block_sockets"]:
        import socket, _socket
        def _denied(*args, **kwargs):
            raise PermissionError(1, "network access is disabled in the sandbox")
        class _NoSocket(socket.socket):
            def __init__(self, *args, **kwargs):
                _denied()
        socket.socket = _socket.socket = _socket.SocketType = _NoSocket
        for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
            setattr(socket, name, _denied)
        for name in ("socketpair", "getaddrinfo", "gethostbyname"):
            if hasattr(_socket, name):
                setattr(_socket, name, _denied)
    limit(resource.RLIMIT_AS, cfg["as_bytes"])  # last: the steps above must not run out of memory
except BaseException as error:
    sys.stderr.write("sandbox setup failed: %r\n" % (error,))
    sys.stderr.flush()
    os._exit(@SETUP_FAILED_EXIT@)
sys.argv = [cfg["main"]]
sys.path.insert(0, os.getcwd())
del cfg, json, resource, limit
code = compile(source, "main.py", "exec")
del source
exec(code, {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__})
""".replace("@SETUP_FAILED_EXIT@", str(SETUP_FAILED_EXIT))


class SandboxResult(Frozen):
    """What one sandboxed run did. stdout and stderr are truncated to the output limit."""

    status: Status
    reason: str = ""
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    returncode: int | None = None
    cpu_s: float = 0.0  # CPU time of the main process (and of the children it waited for)
    uid: int | None = None  # the dedicated uid the run used (root only)
    python: str = ""  # the interpreter that ran the program, as it reported itself inside the sandbox


def run_python(
    code: str,
    *,
    timeout_s: float = 10,
    memory_mb: int = 1024,
    max_processes: int = 64,
    max_file_mb: int = 16,
    tmp_mb: int = 64,
    shm_mb: int = 64,
    cpu_limit_s: int | None = None,
    output_limit: int = 4000,
) -> SandboxResult:
    """Run `code` as a Python program in a fresh sandboxed subprocess and classify the outcome.

    timeout_s is the wall-clock limit; cpu_limit_s the main process's CPU limit (default:
    default_cpu_limit_s(timeout_s), a backstop past the wall clock); memory_mb caps each
    process's address space and, with a cgroup, the memory of the whole run (plus tmp_mb and
    shm_mb for its tmpfs); max_processes caps the run's processes (its uid's, and its cgroup's);
    tmp_mb and shm_mb cap the run's private /tmp and /dev/shm.
    """
    return _run(
        code,
        probe_isolation(),
        limits=Limits(
            timeout_s=timeout_s,
            cpu_s=cpu_limit_s if cpu_limit_s is not None else default_cpu_limit_s(timeout_s),
            memory_mb=memory_mb,
            max_processes=max_processes,
            max_file_mb=max_file_mb,
            tmp_mb=tmp_mb,
            shm_mb=shm_mb,
        ),
        output_limit=output_limit,
    )


def default_cpu_limit_s(timeout_s: float) -> int:
    """The CPU limit that goes with a wall-clock limit: far enough past it that one busy thread
    meets the wall clock first however loaded the machine is (see the module docstring)."""
    return math.ceil(2 * timeout_s) + 1


def run_many(codes: Iterable[str], *, max_workers: int | None = None, **limits) -> list[SandboxResult]:
    """`run_python` for each program, up to os.cpu_count() at a time; results in input order."""
    codes = list(codes)
    workers = max(1, min(max_workers or os.cpu_count() or 1, len(codes) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ttscale-sandbox") as pool:
        return list(pool.map(lambda code: run_python(code, **limits), codes))


class Limits(Frozen):
    """The resource limits of one run (see run_python)."""

    timeout_s: float = Field(gt=0)
    cpu_s: int = Field(ge=1)
    memory_mb: int = Field(ge=1)
    max_processes: int = Field(ge=1)
    max_file_mb: int = Field(ge=1)
    tmp_mb: int = Field(ge=1)  # never 0: a tmpfs mounted with size=0 has no limit at all
    shm_mb: int = Field(ge=1)

    @property
    def budget_mb(self) -> int:
        """The run's memory budget in a cgroup: its processes' memory plus its two tmpfs."""
        return self.memory_mb + self.tmp_mb + self.shm_mb


def tmpfs_inodes(size_mb: int) -> int:
    """The inode cap (nr_inodes) of a private tmpfs of `size_mb`."""
    return max(MIN_INODES, size_mb * INODES_PER_MB)


class Isolation(Frozen):
    """What this machine lets the sandbox do; probed once per process."""

    network_prefix: tuple[str, ...] = ()  # e.g. ("unshare", "-n", "--"): a fresh network namespace
    dedicated_uid: bool = False  # root: each run as its own unprivileged uid
    private_tmp: bool = False  # root: a mount namespace whose root is the allow-list, with private capped /tmp and /dev/shm
    pid_namespace: bool = False  # root: the run's own PID namespace, under a supervisor as pid 1
    exposed: tuple[tuple[str, ...], ...] = ()  # the allow-list: ("bind", host path) and ("symlink", path, target) steps
    cgroups: tuple[tuple[str, int, str], ...] = ()  # (controller, cgroup version, the group each run's group goes under)
    python: str = ""  # the interpreter that runs programs, as it reported itself inside the sandbox
    notes: tuple[str, ...] = ()  # why a layer is off, or weaker than the docstring says

    @property
    def network_namespace(self) -> bool:
        return bool(self.network_prefix)

    def prefix(self, uid: int | None) -> list[str]:
        """The command that runs a program with the network and uid layers (as `uid`, if given)."""
        return [*self.network_prefix, *_drop_privileges(uid)]


def isolation_record() -> dict[str, Any]:
    """What the sandbox gives programs on this machine, for a run's backend.json: each layer, and
    the notes that say which are missing or weaker (probed once per process)."""
    isolation = probe_isolation()
    return {
        "host": platform.node(),
        "filesystem": "allow-list (new root)" if isolation.private_tmp else "the host's, as the program's user",
        "pid_namespace": isolation.pid_namespace,
        "network_namespace": isolation.network_namespace,
        "dedicated_uid": isolation.dedicated_uid,
        "cgroup": {controller: f"v{version}" for controller, version, _ in isolation.cgroups},
        "python": isolation.python,
        "notes": list(isolation.notes),
    }


def _drop_privileges(uid: int | None) -> list[str]:
    if uid is None:
        return []
    return [_which("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--"]


def _which(name: str) -> str:
    return shutil.which(name, path=ADMIN_PATH) or name


# --- one run --------------------------------------------------------------------------------


def _run(code: str, isolation: Isolation, *, limits: Limits, output_limit: int) -> SandboxResult:
    """Build the sandbox that `isolation` allows, run `code` in it, clean up, classify."""
    uid = _next_uid() if isolation.dedicated_uid else None
    supervised = isolation.private_tmp
    host_workdir = None if supervised else tempfile.mkdtemp(prefix="ttscale-sandbox-")
    workdir = PRIVATE_WORKDIR if host_workdir is None else host_workdir
    groups: list[tuple[str, int, tuple[str, ...]]] = []
    report_r = report_w = None
    started = time.perf_counter()
    try:
        if supervised and isolation.cgroups:
            try:
                groups = _make_run_cgroups(isolation, limits, f"run-{uid}")
            except OSError as error:
                return SandboxResult(
                    status="error", reason=f"sandbox setup failed: cannot make the run's cgroup ({error})",
                    uid=uid, python=isolation.python,
                )
        config = {
            "main": os.path.join(workdir, "main.py"),
            "workdir": workdir,
            "uid": uid,
            "setup": None,
            "cpu_s": limits.cpu_s,
            "as_bytes": limits.memory_mb * 1024 * 1024,
            "fsize": limits.max_file_mb * 1024 * 1024,
            "nproc": limits.max_processes if uid is not None else _own_process_count() + limits.max_processes,
            "block_sockets": not isolation.network_namespace,
        }
        if supervised:
            # The source goes in through stdin; the bootstrap stores it in the private /tmp.
            report_r, report_w = os.pipe()
            config["setup"] = {
                "root": STAGING,
                "steps": _root_plan(isolation, limits, uid),
                "cgroups": [os.path.join(path, "cgroup.procs") for path, _, _ in groups],
                "report_fd": report_w,
            }
        interpreter = [INTERPRETER, "-I", "-c", BOOTSTRAP, json.dumps(config)]
        if supervised:
            stdin = _memory_file(code)
            command = [
                _which("unshare"), "-m", "--propagation", "private", "-i",
                *(["-n"] if isolation.network_namespace else []),
                *(["-p", "--kill-child"] if isolation.pid_namespace else ["-f"]),
                "--", *interpreter,
            ]
        else:
            stdin = subprocess.DEVNULL
            with open(config["main"], "w", encoding="utf-8") as f:
                f.write(code)
            os.chmod(config["main"], 0o644)
            if uid is not None:
                os.chown(host_workdir, uid, uid)
            os.chmod(host_workdir, 0o700)
            command = [*isolation.prefix(uid), *interpreter]
        memory_group = next(((path, version) for path, version, controllers in groups if "memory" in controllers), None)
        oom_before = None if memory_group else _oom_kill_count()
        try:
            proc = subprocess.Popen(
                command,
                cwd="/" if host_workdir is None else host_workdir,
                env={"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir},
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                pass_fds=() if report_w is None else (report_w,),
            )
        finally:
            if stdin is not subprocess.DEVNULL:
                stdin.close()
            if report_w is not None:
                os.close(report_w)
                report_w = None
        out, err = _Capture(proc.stdout, output_limit), _Capture(proc.stderr, output_limit)
        if supervised:
            # proc is unshare, the namespace's outer process; the supervisor inside reports the
            # program's ending. The wall clock kills the program (by uid), and later, if the
            # supervisor has not ended, the outer process (which takes the namespace with it).
            clock = _WallClock(
                limits.timeout_s, lambda: _kill_run(None, uid),
                backstop=lambda: _signal(proc.pid, signal.SIGKILL), grace_s=KILL_GRACE_S,
            )
        else:
            # unshare and setpriv exec the next command, so proc.pid ends up being the program.
            clock = _WallClock(limits.timeout_s, lambda: _kill_run(proc.pid, uid))
        try:
            _wait_until_ended(proc.pid)
        finally:
            clock.stop()
        # Ended but not reaped, so its pid (our handle on its process group) cannot be reused
        # yet: kill whatever it left running (background children, too), then reap it.
        _kill_run(proc.pid, uid, until_gone=True)
        wait_status, cpu_s = _reap(proc.pid)
        returncode = os.waitstatus_to_exitcode(wait_status)
        duration = time.perf_counter() - started
        out.join(5)
        err.join(5)
        stdout, stderr = out.text(), err.text()
        last_line = err.last_line()
        if supervised:
            report = _read_report(report_r)
            if report is not None:
                returncode, cpu_s = os.waitstatus_to_exitcode(report["status"]), float(report["cpu_s"])
            elif returncode == 0 and not clock.fired:
                returncode, last_line = SETUP_FAILED_EXIT, "sandbox setup failed: the supervisor ended without reporting"
                stderr += "\n" + last_line
        budget_mb = None
        if memory_group:
            # The run's own group, fresh for this run: its counts are this run's alone.
            kills, limit_hits = _memory_events(*memory_group)
            oom = kills > 0
            budget_mb = limits.budget_mb if limit_hits > 0 else None
        else:
            oom_after = _oom_kill_count()
            oom = None not in (oom_before, oom_after) and oom_after > oom_before
        status, reason = _classify(
            returncode, clock.fired, cpu_s, limits, stderr, last_line, oom_killer_ran=oom, budget_mb=budget_mb,
        )
        return SandboxResult(
            status=status,
            reason=reason,
            stdout=stdout,
            stderr=stderr,
            duration_s=round(duration, 4),
            returncode=returncode,
            cpu_s=round(cpu_s, 3),
            uid=uid,
            python=isolation.python,
        )
    finally:
        for fd in (report_r, report_w):
            if fd is not None:
                os.close(fd)
        if host_workdir is not None:
            shutil.rmtree(host_workdir, ignore_errors=True)
        _remove_cgroups([path for path, _, _ in groups])


def _read_report(fd: int) -> dict | None:
    """The supervisor's report (the program's wait status and CPU time), if it wrote one."""
    data = b""
    try:
        while chunk := os.read(fd, 4096):
            data += chunk
        report = json.loads(data)
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("status"), int):
        return None
    return report


def _root_plan(isolation: Isolation, limits: Limits, uid: int | None) -> list[list]:
    """The steps by which the bootstrap, as root in the new namespaces, builds the run's root.

    Order matters: the allow-list (bind mounts, links, files, /dev) goes onto the new root's
    tmpfs, then all of it turns read-only ("seal"); then the writable, capped /tmp and /dev/shm
    and a fresh /proc; last the pivot into the new root.
    """
    user = "sandbox" if uid is not None else "root"
    passwd = "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    group = "root:x:0:\n"
    if uid is not None:
        passwd += f"{user}:x:{uid}:{uid}:sandboxed program:{PRIVATE_WORKDIR}:/usr/sbin/nologin\n"
        group += f"{user}:x:{uid}:\n"
    plan: list[list] = [["root", "/", ROOT_TMPFS]]
    plan += [list(step) for step in isolation.exposed]
    plan += [
        ["file", "/etc/passwd", passwd],
        ["file", "/etc/group", group],
        ["tmpfs", "/dev", DEV_TMPFS],
        *(["bind", f"/dev/{name}"] for name in DEVICES),
        ["symlink", "/dev/fd", "/proc/self/fd"],
        ["symlink", "/dev/stdin", "/proc/self/fd/0"],
        ["symlink", "/dev/stdout", "/proc/self/fd/1"],
        ["symlink", "/dev/stderr", "/proc/self/fd/2"],
        ["dir", "/dev/shm"],
        ["dir", "/tmp"],
        ["dir", "/proc"],
        ["seal", "/"],
        ["tmpfs", "/tmp", f"size={limits.tmp_mb}m,nr_inodes={tmpfs_inodes(limits.tmp_mb)},mode=1777"],
        ["tmpfs", "/dev/shm", f"size={limits.shm_mb}m,nr_inodes={tmpfs_inodes(limits.shm_mb)},mode=1777"],
        ["proc", "/proc"],
        ["pivot", "/", _pivot_root_syscall()],
    ]
    return plan


def _pivot_root_syscall() -> int | None:
    """pivot_root's syscall number on this machine (None: unknown, so move + chroot instead)."""
    return PIVOT_ROOT_SYSCALL.get(platform.machine().lower())


def _allow_list() -> tuple[tuple[str, ...], ...]:
    """The host paths a run's root holds read-only: SYSTEM_PATHS, the interpreter's prefix and
    binary (INTERPRETER; the program can start `sys.executable` itself), as ("bind", path) and
    ("symlink", path, target);
    and ("mask", path) for the harness's working directory and checkout where they lie inside
    a bound directory.

    Links are recreated as links (same target), so paths resolve inside the sandbox as they do
    outside; a path under another bound path comes with it.
    """
    binds: list[str] = []
    links: dict[str, str] = {}

    def expose(path: str, depth: int = 0) -> None:
        path = os.path.normpath(os.path.abspath(path))
        if depth > 40 or not os.path.lexists(path):
            return
        parts = [part for part in path.split(os.sep) if part]
        current = os.sep
        for i, part in enumerate(parts):
            current = os.path.join(current, part)
            if os.path.islink(current):
                target = os.readlink(current)
                links[current] = target
                expose(os.path.join(os.path.dirname(current), target, *parts[i + 1 :]), depth + 1)
                return
        binds.append(current)

    for path in SYSTEM_PATHS:
        expose(path)
    expose(sys.base_prefix)
    expose(INTERPRETER)

    def inside(path: str, others: Iterable[str]) -> bool:
        return any(path == other or path.startswith(other.rstrip(os.sep) + os.sep) for other in others)

    kept: list[str] = []
    for path in sorted(set(binds)):
        if not inside(path, kept):
            kept.append(path)
    steps: list[tuple[str, ...]] = [("bind", path) for path in kept]
    steps += [("symlink", path, target) for path, target in sorted(links.items()) if not inside(path, kept)]
    # The harness's working directory and checkout (where runs/ goes by default) may lie inside
    # an allowed directory (a checkout in /usr/src/app): an empty read-only tmpfs covers them,
    # unless the interpreter itself lives there.
    needed = [os.path.realpath(sys.base_prefix), INTERPRETER]
    for path in sorted({os.path.realpath(os.getcwd()), *_checkout()}):
        if inside(path, kept) and path not in kept and not any(inside(n, [path]) for n in needed):
            steps.append(("mask", path))
    return tuple(steps)


def _checkout() -> list[str]:
    """The source checkout this module runs from, if it is one (a pyproject.toml or .git beside the package)."""
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # <top>/ttscale/grading/sandbox.py
    found = any(os.path.exists(os.path.join(top, name)) for name in ("pyproject.toml", ".git"))
    return [top] if found else []


def _memory_file(text: str):
    """A readable file holding `text` that exists on no filesystem (a memfd), else a temp file."""
    data = text.encode("utf-8")
    try:
        fd = os.memfd_create("ttscale-sandbox-main", os.MFD_CLOEXEC)
        f = os.fdopen(fd, "w+b")
    except (AttributeError, OSError):
        f = tempfile.TemporaryFile()
    f.write(data)
    f.flush()
    f.seek(0)
    return f


class _WallClock:
    """Calls `kill` once `seconds` have passed, unless stopped first; `fired` says whether it did.

    `fired` is set before the kill is sent, so a main process that dies of SIGKILL while
    `fired` is true was killed by the wall clock (or, at the same instant, by itself). With a
    `backstop`, that is called `grace_s` after the kill unless stopped first.
    """

    def __init__(self, seconds: float, kill, *, backstop=None, grace_s: float = 0.0):
        self.fired = False
        self._kill = kill
        self._backstop = None if backstop is None else threading.Timer(grace_s, backstop)
        self._lock = threading.Lock()
        self._stopped = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        self._kill()
        with self._lock:
            if self._backstop is not None and not self._stopped:
                self._backstop.daemon = True
                self._backstop.start()

    def stop(self) -> None:
        self._timer.cancel()
        self._timer.join()  # a kill in flight finishes before the caller looks at `fired`
        with self._lock:
            self._stopped = True
            backstop = self._backstop
        if backstop is not None and backstop.is_alive():
            backstop.cancel()
            backstop.join()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_until_ended(pid: int) -> None:
    """Wait until the main process has ended, leaving it unreaped (a zombie)."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # Python retries it on EINTR (PEP 475)


def _reap(pid: int) -> tuple[int, float]:
    """Reap the ended main process: its wait status, and the CPU time it used.

    The CPU time tells a SIGKILL from the hard RLIMIT_CPU apart from any other SIGKILL. It comes
    from wait4's rusage, which the kernel keeps exact (the utime and stime of /proc/<pid>/stat
    are sampled in clock ticks and read up to 10% low here), and which also counts the children
    the program itself waited for. (In a namespace the supervisor takes the program's own.)
    """
    _, status, usage = os.wait4(pid, 0)
    return status, usage.ru_utime + usage.ru_stime


def _classify(
    returncode: int,
    clock_fired: bool,
    cpu_s: float,
    limits: Limits,
    stderr: str,
    last_line: str,
    *,
    oom_killer_ran: bool = False,
    budget_mb: int | None = None,
) -> tuple[Status, str]:
    """The verdict, from how the main process ended; each kill named by its cause.

    budget_mb: the run's memory budget, where it has a memory cgroup (an out-of-memory kill
    there is the sandbox's memory limit; elsewhere it came from the machine running short).
    """
    last = last_line[:REASON_CHARS]
    if returncode == 0:
        return "pass", ""
    if returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGKILL and clock_fired:
            return "timeout", f"wall-clock limit: killed after {limits.timeout_s:g} s"
        if sig == signal.SIGXCPU:
            return "timeout", f"CPU time limit: {cpu_s:.2f} s of CPU used, limit {limits.cpu_s} s (SIGXCPU)"
        if sig == signal.SIGKILL and cpu_s >= limits.cpu_s:
            # Only the hard RLIMIT_CPU (a second after the soft one) kills a process this busy.
            return "timeout", f"CPU time limit: {cpu_s:.2f} s of CPU used, limit {limits.cpu_s} s (SIGKILL; SIGXCPU was ignored)"
        if sig == signal.SIGKILL and oom_killer_ran and budget_mb is not None:
            return "error", f"memory limit: killed by the out-of-memory killer after {cpu_s:.2f} s of CPU, when the run's processes together reached its budget of {budget_mb} MB"
        if sig == signal.SIGKILL and oom_killer_ran:
            return "error", f"killed by SIGKILL after {cpu_s:.2f} s of CPU, not by a sandbox limit: the kernel's out-of-memory killer ran during the run"
        if sig == signal.SIGKILL:
            return "error", f"killed by SIGKILL after {cpu_s:.2f} s of CPU, not by a sandbox limit (the program or another process sent it)"
        if sig == signal.SIGXFSZ:
            return "error", "file size limit exceeded (SIGXFSZ)"
        return "error", f"killed by signal {name}"
    if returncode == SETUP_FAILED_EXIT and "sandbox setup failed" in stderr:
        return "error", last or "sandbox setup failed"
    if last.startswith("MemoryError") or "\nMemoryError" in stderr:
        return "error", last or "MemoryError"
    return "fail", last or f"exit code {returncode}"


# --- cgroups: one memory and process budget per run -------------------------------------------

CONTROLLERS = ("memory", "pids")
_cgroup_bases: list[str] = []  # the groups this process made to hold its runs' groups (removed at exit)


class _NoCgroup(Exception):
    """Why a controller has no group we can use."""


def _probe_cgroups() -> tuple[tuple[tuple[str, int, str], ...], dict[str, str]]:
    """Where each run's group can go: ((controller, version, base group), ...), and for each
    controller that has none, why not.

    A controller bound to a v1 hierarchy gets a base group under our own group there; on v2 the
    base group is a sibling of ours (a group that holds processes may not have controllers for
    its children, except the root), with the controllers enabled for its children.
    """
    found: list[tuple[str, int, str]] = []
    missing: dict[str, str] = {}
    try:
        mounts, own = _cgroup_mounts(), _own_cgroups()
    except OSError as error:
        return (), {c: f"cannot read this process's cgroups: {error}" for c in CONTROLLERS}
    bases: dict[str, str] = {}  # parent directory -> the base group made under it
    for controller in CONTROLLERS:
        try:
            version, parent = _cgroup_parent(controller, mounts, own)
            if parent not in bases:
                bases[parent] = _make_base(parent)
            if version == 2:
                _enable_controller(bases[parent], controller)
            found.append((controller, version, bases[parent]))
        except _NoCgroup as why:
            missing[controller] = str(why)
        except OSError as error:
            missing[controller] = f"cannot make a {controller} group: {error}"
    return tuple(found), missing


def _cgroup_mounts() -> list[tuple[int, str, str, set[str]]]:
    """(version, mount point, the hierarchy's path mounted there, super options) of each cgroup mount."""
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            if " - " not in line:
                continue
            fields, after = line.split(), line.split(" - ", 1)[1].split()
            if after and after[0] in ("cgroup", "cgroup2"):
                options = set(after[2].split(",")) if len(after) > 2 else set()
                mounts.append((2 if after[0] == "cgroup2" else 1, _unescape_mount_path(fields[4]),
                               _unescape_mount_path(fields[3]), options))
    return mounts


def _own_cgroups() -> list[tuple[str, list[str], str]]:
    """(hierarchy id, controllers, path) of each line of /proc/self/cgroup."""
    rows = []
    with open("/proc/self/cgroup", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3:
                rows.append((parts[0], [c for c in parts[1].split(",") if c], parts[2]))
    return rows


def _cgroup_parent(controller: str, mounts, own) -> tuple[int, str]:
    """The cgroup version and the directory under which this process's base group goes."""
    for _, controllers, path in own:
        if controller in controllers:  # bound to a v1 hierarchy
            for version, point, root, options in mounts:
                if version == 1 and controller in options and (directory := _mounted_path(point, root, path)):
                    return 1, directory
            raise _NoCgroup(f"our group in the v1 {controller} hierarchy ({path}) is not mounted here")
    v2 = next((path for hierarchy, controllers, path in own if hierarchy == "0" and not controllers), None)
    for version, point, root, _ in mounts:
        if version == 2 and v2 is not None and (directory := _mounted_path(point, root, v2)):
            parent = directory if directory == point else os.path.dirname(directory)
            available = _read(os.path.join(parent, "cgroup.controllers")).split()
            if controller not in available:
                raise _NoCgroup(f"cgroup v2 at {parent} does not offer the {controller} controller "
                                f"(it offers: {' '.join(available) or 'none'})")
            _enable_controller(parent, controller)
            return 2, parent
    raise _NoCgroup(f"no cgroup hierarchy with the {controller} controller is mounted here")


def _mounted_path(point: str, root: str, path: str) -> str | None:
    """Where the group `path` (of a hierarchy whose `root` is mounted at `point`) is, if visible."""
    if path == root or path.startswith(root.rstrip("/") + "/"):
        return os.path.normpath(os.path.join(point, os.path.relpath(path, root)))
    return None


def _enable_controller(group: str, controller: str) -> None:
    """Make `controller` available to the children of the v2 `group`."""
    control = os.path.join(group, "cgroup.subtree_control")
    if controller not in _read(control).split():
        try:
            _write(control, f"+{controller}")
        except OSError as error:
            raise _NoCgroup(f"cannot enable the {controller} controller in {control}: {error}") from None


def _make_base(parent: str) -> str:
    """A group of this process's own under `parent`, for its runs' groups; removed at exit."""
    _remove_stale_bases(parent)
    base = os.path.join(parent, f"{CGROUP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(base, 0o755)
    if not _cgroup_bases:
        atexit.register(_remove_bases)
    _cgroup_bases.append(base)
    return base


def _remove_stale_bases(parent: str) -> None:
    """Base groups left by ttscale processes that are gone (killed before they removed them)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = re.fullmatch(re.escape(CGROUP_PREFIX) + r"(\d+)-[0-9a-f]+", name)
        if match and not _alive(int(match[1])):
            _remove_group_tree(os.path.join(parent, name))


def _remove_bases() -> None:
    for base in _cgroup_bases:
        _remove_group_tree(base)


def _remove_group_tree(path: str) -> None:
    """rmdir a group and its child groups (a group with live processes stays)."""
    try:
        children = [entry.path for entry in os.scandir(path) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for child in children:
        _remove_group_tree(child)
    try:
        os.rmdir(path)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _make_run_cgroups(isolation: Isolation, limits: Limits, name: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """The run's own groups, limits set: [(directory, version, controllers), ...]."""
    by_dir: dict[str, tuple[int, list[str]]] = {}
    for controller, version, base in isolation.cgroups:
        by_dir.setdefault(os.path.join(base, name), (version, []))[1].append(controller)
    made: list[tuple[str, int, tuple[str, ...]]] = []
    try:
        for path, (version, controllers) in by_dir.items():
            os.mkdir(path)
            made.append((path, version, tuple(controllers)))
            for controller in controllers:
                for filename, value, required in _limit_files(controller, version, limits):
                    file = os.path.join(path, filename)
                    if required or os.path.exists(file):
                        _write(file, str(value))
    except OSError:
        _remove_cgroups([path for path, _, _ in made])
        raise
    return made


def _limit_files(controller: str, version: int, limits: Limits) -> list[tuple[str, int, bool]]:
    """(file, value, whether it must exist) that set `controller`'s limit for a run."""
    if controller == "memory":
        budget = limits.budget_mb * 1024 * 1024
        if version == 2:
            return [("memory.max", budget, True), ("memory.swap.max", 0, False)]
        # v1: memory+swap no more than memory alone, where swap accounting is on (set after the memory limit).
        return [("memory.limit_in_bytes", budget, True), ("memory.memsw.limit_in_bytes", budget, False)]
    return [("pids.max", limits.max_processes, True)]


def _memory_events(path: str, version: int) -> tuple[int, int]:
    """(processes the out-of-memory killer killed in the group, times the group reached its limit)."""
    try:
        if version == 2:
            counts = dict(line.split() for line in _read(os.path.join(path, "memory.events")).splitlines())
            return int(counts.get("oom_kill", 0)), int(counts.get("max", 0)) + int(counts.get("oom", 0))
        counts = dict(line.split() for line in _read(os.path.join(path, "memory.oom_control")).splitlines())
        # v1's failcnt is not kept where the memory+swap counter is the one that refused (newer
        # kernels), so: did usage reach the limit? Charges fail at it, to within a charge batch.
        peak = int(_read(os.path.join(path, "memory.max_usage_in_bytes")))
        limit = int(_read(os.path.join(path, "memory.limit_in_bytes")))
        return int(counts.get("oom_kill", 0)), int(peak >= limit - 4 * 1024 * 1024)
    except (OSError, ValueError):
        return 0, 0


def _remove_cgroups(paths: list[str]) -> None:
    """rmdir the run's groups; their processes are gone, though the kernel may take a moment to say so."""
    for path in paths:
        deadline = time.monotonic() + 2
        while True:
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as error:
                if error.errno != errno_codes.EBUSY or time.monotonic() > deadline:
                    break  # left for the exit-time cleanup of its base group
                time.sleep(0.01)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# --- killing what a run leaves behind -----------------------------------------------------


def _kill_run(pgid: int | None, uid: int | None, *, until_gone: bool = False) -> None:
    """SIGKILL the run's process group (if given) and, with a dedicated uid, every process of that uid.

    until_gone: keep at it until /proc shows no live process of the uid (SIGKILLed processes
    take a moment to exit), so that the run's private tmpfs is freed when this returns.
    """
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if uid is None:
        return
    deadline = time.monotonic() + CLEANUP_DEADLINE_S
    while _pids_of_uid(uid):
        _kill_all_of_uid(uid)
        if not until_gone or time.monotonic() > deadline:
            return
        time.sleep(0.002)


def _kill_all_of_uid(uid: int) -> None:
    """SIGKILL every process of `uid`.

    First kill(-1, SIGKILL) sent *as* `uid` (by the kill command, run as that uid): it reaches
    all of that uid's processes at once, and a fork cannot slip past it, because the kernel
    signals them all under the task-list lock. Then each process /proc still lists, one by one,
    in case that command is missing or failed.
    """
    kill = shutil.which("kill", path=ADMIN_PATH)
    if kill is not None:
        try:
            subprocess.run(
                [kill, "-9", "-1"],  # the one spelling that every kill(1) takes for "signal 9 to pid -1"
                user=uid, group=uid, extra_groups=[],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={"PATH": SAFE_PATH}, cwd="/", close_fds=True, timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            pass
    for pid in _pids_of_uid(uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _pids_of_uid(uid: int) -> list[int]:
    """Live (not zombie) processes whose real, effective or saved uid is `uid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                zombie = False
                for line in f:
                    if line.startswith("State:"):
                        zombie = line.split()[1] in ("Z", "X")  # dead already; only its parent can reap it
                    elif line.startswith("Uid:"):
                        if not zombie and uid in (int(x) for x in line.split()[1:]):
                            pids.append(int(entry))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _own_process_count() -> int:
    try:
        return len(_pids_of_uid(os.getuid()))
    except OSError:
        return 0


def _oom_kill_count() -> int | None:
    """How many processes the kernel's out-of-memory killer has killed since boot (/proc/vmstat)."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None



# --- what this machine allows -----------------------------------------------------------------

PROBE_CHECK = r"""
import json, os, subprocess, sys
pseudo, modules, host_paths = json.loads(%r)
top = {}  # mount point -> whether the mount on top there (the last listed) is writable
with open("/proc/self/mountinfo") as f:
    for line in f:
        fields = line.split()
        fstype = line.split(" - ", 1)[1].split()[0]
        top[fields[4].encode().decode("unicode_escape")] = "rw" in fields[5].split(",") and fstype not in pseudo
writable = [point for point, rw in top.items() if rw and point not in ("/tmp", "/dev/shm")]
st = os.statvfs("/tmp")
failed = []
for name in modules:
    try:
        __import__(name)
    except Exception:
        failed.append(name)
try:
    with open("/proc/self/cgroup") as f:
        cgroup = f.read()
except OSError:
    cgroup = ""
try:
    starts = subprocess.run([sys.executable, "-c", "pass"], capture_output=True, timeout=20).returncode == 0
except Exception:
    starts = False
print(json.dumps({
    "uid": os.getuid(), "version": sys.version, "executable": sys.executable,
    "tmp_bytes": st.f_blocks * st.f_frsize, "tmp_inodes": st.f_files, "writable": sorted(writable),
    "root": sorted(os.listdir("/")), "pid": os.getpid(), "ppid": os.getppid(), "cgroup": cgroup,
    "visible": [path for path in host_paths if os.path.lexists(path)], "failed_imports": failed,
    "executable_starts": starts,
}))
"""

NOT_ROOT_NOTE = (
    "not root: no mount namespace, so a program sees every file the caller's user may read (run "
    "directories with their gold answers, the checkout, home), and files it stores in /tmp or "
    "/dev/shm stay on the host after its run (up to max_file_mb each); it runs as the caller's "
    "user, and what it leaves running is killed by process group only (setsid escapes that)"
)


@lru_cache(maxsize=1)
def probe_isolation() -> Isolation:
    """Which isolation layers work here, each checked end to end by running a program in it.

    Candidates, strongest first: as root, a mount namespace with the allow-list as its root, a
    dedicated uid, a PID namespace and the run's cgroups; the same without the cgroups, then
    without the PID namespace; then a dedicated uid alone, then root; without root, the caller's
    user. Each must start the interpreter and report itself, and what it reports must show the
    layers it claims; the first that does is used, the notes say what the stronger ones lacked
    and which layers are missing, and they are logged once (a warning).
    """
    is_root = os.geteuid() == 0
    notes: list[str] = []
    network = _probe_network(is_root, notes)
    candidates: list[Isolation] = []
    no_cgroup: dict[str, str] = {c: "not root" for c in CONTROLLERS}
    if not is_root:
        notes.append(NOT_ROOT_NOTE)
    elif not shutil.which("setpriv", path=ADMIN_PATH):
        notes.append("no setpriv command: the child runs as root, with no mount namespace")
    elif not _uid_mapped(_uid_for(UIDS_PER_PROCESS - 1)):
        notes.append("sandbox uids are not mapped in this user namespace: the child runs as root, with no mount namespace")
    else:
        if shutil.which("unshare", path=ADMIN_PATH):
            exposed = _allow_list()
            notes += _closed_paths(exposed)
            cgroups, no_cgroup = _probe_cgroups()
            namespace = Isolation(network_prefix=network, dedicated_uid=True, private_tmp=True, exposed=exposed)
            for pid_namespace in (True, False):
                if cgroups:
                    candidates.append(namespace.model_copy(update={"pid_namespace": pid_namespace, "cgroups": cgroups}))
                candidates.append(namespace.model_copy(update={"pid_namespace": pid_namespace}))
        else:
            notes.append("no unshare command: no mount namespace")
        candidates.append(Isolation(network_prefix=network, dedicated_uid=True))
    candidates.append(Isolation(network_prefix=network))
    limits = Limits(timeout_s=30, cpu_s=30, memory_mb=1024, max_processes=64, max_file_mb=1, tmp_mb=4, shm_mb=4)
    chosen: Isolation | None = None
    for candidate in candidates:
        host_paths = _host_paths_to_hide(candidate.exposed) if candidate.private_tmp else []
        probe = PROBE_CHECK % (json.dumps([sorted(PSEUDO_FILESYSTEMS), PROBE_MODULES, host_paths]),)
        result = _run(probe, candidate, limits=limits, output_limit=100_000)
        report = _parse_report(result.stdout)
        if result.status != "pass" or report is None:
            notes.append(f"{_describe(candidate)} does not work here ({result.status}: {result.reason or result.stderr[-200:]})")
            continue
        problem = _check_report(candidate, report, result.uid, limits)
        if problem:
            notes.append(f"{_describe(candidate)}: {problem}")
            continue
        chosen = candidate.model_copy(update={"python": f"Python {report['version'].split()[0]} at {report['executable']}"})
        if report["version"] != sys.version:
            notes.append(
                f"sandboxed programs run {chosen.python} ({report['version']}), while the harness runs "
                f"{sys.version.split()[0]} ({sys.version})"
            )
        missing = [name for name in report["failed_imports"] if _importable(name)]
        if missing:
            notes.append("these standard modules import in the harness but not in the sandbox: " + ", ".join(missing))
        if not report["executable_starts"]:
            notes.append(f"sys.executable ({report['executable']}) does not start inside the sandbox")
        break
    if chosen is None:
        notes.append("no candidate worked: sandboxed programs will fail to start")
        chosen = candidates[-1]
    notes += _missing_layer_notes(chosen, is_root, no_cgroup)
    for note in notes:
        log.warning("sandbox: %s", note)
    return chosen.model_copy(update={"notes": tuple(notes)})


def _check_report(candidate: Isolation, report: dict, uid: int | None, limits: Limits) -> str | None:
    """What the probe program saw that contradicts a layer the candidate claims, if anything."""
    if candidate.dedicated_uid and report["uid"] == 0:
        return "it still ran as root"
    if candidate.private_tmp:
        if report["tmp_bytes"] != limits.tmp_mb * 1024 * 1024 or report["tmp_inodes"] != tmpfs_inodes(limits.tmp_mb):
            return "/tmp was not the private tmpfs with its size and inode caps"
        allowed = {path.strip("/").split("/")[0] for _, path, *_ in candidate.exposed} | {"etc", "dev", "tmp", "proc"}
        extra = sorted(set(report["root"]) - allowed)
        if extra:
            return "the root holds more than the allow-list: " + ", ".join(extra)
        if report["visible"]:
            return "these host paths are visible: " + ", ".join(report["visible"])
        if report["writable"]:
            return "these mounts are writable: " + ", ".join(report["writable"])
    if candidate.pid_namespace and (report["pid"], report["ppid"]) != (2, 1):
        return f"no PID namespace in effect (the program was pid {report['pid']}, its parent {report['ppid']})"
    for controller, _, base in candidate.cgroups:
        if f"{os.path.basename(base)}/run-{uid}" not in report["cgroup"]:
            return f"the program was not in the run's {controller} cgroup"
    return None


def _missing_layer_notes(isolation: Isolation, is_root: bool, no_cgroup: dict[str, str]) -> list[str]:
    """One note for each layer of the module docstring that `isolation` lacks (besides the network's)."""
    notes = []
    if is_root and not isolation.private_tmp:
        notes.append(
            "no mount namespace: a program sees every file its user may read (world-readable run "
            "directories with their gold answers, checkouts), and may store files in the host's "
            "world-writable directories (up to max_file_mb each)"
        )
    if not isolation.pid_namespace:
        why = "not root" if not is_root else "the PID namespace did not work here" if isolation.private_tmp else "no mount namespace"
        notes.append(f"no PID namespace ({why}): a program can list the host's processes and read their command lines")
    have = {controller for controller, _, _ in isolation.cgroups}
    if not isolation.private_tmp:
        no_cgroup = {c: no_cgroup.get(c, "") if not is_root else "no mount namespace" for c in CONTROLLERS}
    if "memory" not in have:
        why = no_cgroup.get("memory") or "the run's cgroup did not work here"
        notes.append(
            f"no memory cgroup ({why}): memory_mb caps each process's address space only (RLIMIT_AS), "
            "so a run's processes together may hold up to max_processes x memory_mb, and the kernel "
            "memory of the files it stores is outside any memory limit (nr_inodes caps how many)"
        )
    if "pids" not in have:
        why = no_cgroup.get("pids") or "the run's cgroup did not work here"
        whose = (
            "the run's own uid, so it still counts the run's processes (threads included)"
            if isolation.dedicated_uid else
            "the caller's user, so it counts every process that user runs, not the run's"
        )
        notes.append(f"no pids cgroup ({why}): max_processes is RLIMIT_NPROC of {whose}")
    return notes


def _host_paths_to_hide(exposed: tuple[tuple[str, ...], ...]) -> list[str]:
    """Host paths that exist and that a run's root must not show (none is in the allow-list)."""
    listed = [step[1] for step in exposed if step[0] != "mask"]
    masks = [step[1] for step in exposed if step[0] == "mask"]

    def within(path: str, others: list[str]) -> bool:
        return any(path == other or path.startswith(other.rstrip("/") + "/") for other in others)

    def related(path: str) -> bool:  # shown by the allow-list (and not masked), or on the way to a listed path
        shown = within(path, listed) and not within(path, masks)
        return shown or any(other.startswith(path.rstrip("/") + "/") for other in listed)

    own = os.path.abspath(__file__)  # this module: in the checkout, or in the harness's site-packages
    return [path for path in (own, "/var/tmp", "/home", "/opt", "/srv", "/mnt", "/run") if os.path.lexists(path) and not related(path)]


def _closed_paths(exposed: tuple[tuple[str, ...], ...]) -> list[str]:
    """Notes for allow-listed paths that other users may not read (a bind mount keeps a mode)."""
    notes = []
    for step in exposed:
        if step[0] != "bind":
            continue
        try:
            mode = os.stat(step[1]).st_mode
        except OSError:
            continue
        needed = stat.S_IXOTH if stat.S_ISDIR(mode) else stat.S_IROTH
        if not mode & needed:
            notes.append(f"{step[1]} is closed to other users: the sandbox uid may not load or read it")
    return notes


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except Exception:
        return False
    return True


def _probe_network(is_root: bool, notes: list[str]) -> tuple[str, ...]:
    unshare = shutil.which("unshare", path=ADMIN_PATH)
    if not unshare:
        notes.append("no unshare command; sockets are blocked in Python only")
        return ()
    candidate = (unshare, "-n", "--") if is_root else (unshare, "-rn", "--")
    if _works([*candidate, "true"]):
        return candidate
    notes.append(f"{' '.join(candidate)} is not permitted here; sockets are blocked in Python only")
    return ()


def _describe(isolation: Isolation) -> str:
    if isolation.private_tmp:
        extras = [name for name, on in (("a PID namespace", isolation.pid_namespace), ("cgroups", bool(isolation.cgroups))) if on]
        return "a mount namespace with a dedicated uid" + "".join(f", {extra}" for extra in extras)
    return "a dedicated uid" if isolation.dedicated_uid else "the caller's own user"


def _parse_report(stdout: str) -> dict | None:
    try:
        report = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return report if isinstance(report, dict) else None


def _works(command: list[str], cwd: str | None = None) -> bool:
    try:
        env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
        return subprocess.run(command, capture_output=True, timeout=30, cwd=cwd, env=env).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _unescape_mount_path(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    for escape, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escape, char)
    return field


_uid_counter = itertools.count()
_uid_lock = threading.Lock()


def _uid_for(serial: int) -> int:
    return UID_BASE + (os.getpid() % PROCESS_BLOCKS) * UIDS_PER_PROCESS + serial % UIDS_PER_PROCESS


def _next_uid() -> int:
    with _uid_lock:
        return _uid_for(next(_uid_counter))


def _uid_mapped(uid: int) -> bool:
    """Whether `uid` exists in this (possibly user-namespaced) machine's uid map."""
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, _outside, count = (int(x) for x in line.split())
                if inside <= uid < inside + count:
                    return True
    except (OSError, ValueError):
        return False
    return False


class _Capture:
    """Drains a pipe in a thread, keeping the first and last `limit // 2` bytes."""

    def __init__(self, pipe, limit: int):
        self._pipe = pipe
        self._half = max(1, limit // 2)
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0
        self._thread = threading.Thread(target=self._drain, daemon=True, name="ttscale-sandbox-pipe")
        self._thread.start()

    def _drain(self) -> None:
        try:
            while chunk := self._pipe.read1(65536) if hasattr(self._pipe, "read1") else self._pipe.read(65536):
                self._total += len(chunk)
                room = self._half - len(self._head)
                if room > 0:
                    self._head += chunk[:room]
                    chunk = chunk[room:]
                if chunk:
                    self._tail += chunk
                    if len(self._tail) > 2 * self._half:
                        del self._tail[: len(self._tail) - self._half]
        except (OSError, ValueError):
            pass
        finally:
            try:
                self._pipe.close()
            except OSError:
                pass

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        tail = bytes(self._tail[-self._half :])
        dropped = self._total - len(self._head) - len(tail)
        if dropped <= 0:
            return (bytes(self._head) + bytes(self._tail)).decode("utf-8", "replace")
        middle = f"\n...[{dropped} bytes truncated]...\n"
        return bytes(self._head).decode("utf-8", "replace") + middle + tail.decode("utf-8", "replace")

    def last_line(self) -> str:
        lines = [line.strip() for line in bytes(self._tail or self._head).decode("utf-8", "replace").splitlines()]
        return next((line for line in reversed(lines) if line), "")
