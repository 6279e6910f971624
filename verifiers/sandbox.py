"""Run untrusted Python code (model-written programs and their tests) in a locked-down subprocess.

Each run gets a fresh interpreter (the harness's own, `sys.executable -I`) in its own working
directory, with a minimal environment (PATH, LANG, HOME and TMPDIR = that directory; nothing of
the parent's environment), stdin from /dev/null, and its own session.

Layers, from strongest to weakest (what is available is probed once per process, end to end):

* Filesystem (root): the run lives in its own mount namespace (`unshare -m`, private
  propagation), where the bootstrap starts as root, carries out the parent's mount plan, and
  then drops to the run's uid for good. In the namespace every mount of the host that stores
  data is remounted read-only; /tmp and /dev/shm are fresh tmpfs instances capped at tmp_mb and
  shm_mb; the working directory is /tmp/sandbox. What the program stores there is memory of a
  tmpfs that the kernel frees when the last process of the namespace is gone, so nothing it
  writes outlives the run, and a run can hold at most tmp_mb + shm_mb of it. The program's
  source reaches the namespace through stdin (a memfd), so the host gets no working directory
  either. Without root there is no mount namespace: the working directory is a host temp dir
  (removed afterwards) and the program can create files in the host's world-writable
  directories, up to max_file_mb each; the notes say so.
* Network: a fresh network namespace (`unshare -n`: no interfaces up, not even loopback);
  `unshare -rn` (user namespace) where we are not root. Otherwise a prelude replaces
  `socket.socket`, `socket.create_connection` and friends with functions that raise
  PermissionError: this stops ordinary code, not code that calls libc through ctypes.
* Identity (root): the program runs as a dedicated unprivileged uid/gid with no supplementary
  groups, no capabilities and no_new_privs (setuid binaries grant nothing): dropped to by the
  bootstrap itself in a mount namespace, else by `setpriv`. Each run gets a fresh uid, so
  RLIMIT_NPROC (which counts the processes of a uid) is per run; a run cannot signal or ptrace
  other runs or the parent, nor read /proc/<parent>/environ, nor write root's files. The uid is
  also the handle by which everything the run started is killed (below).
  The harness's interpreter may sit under a directory that only root may enter (pyenv under
  /root, mode 0700). The unprivileged uid would then fail to load the interpreter's own
  libpython and silently fall back to the system's (3.11.2 instead of 3.11.7 on one machine).
  So, inside the mount namespace, such a directory is covered with a read-only tmpfs that holds
  just the interpreter's prefixes, bind-mounted read-only: the same paths work, nothing else of
  that directory is visible. The interpreter that ran, as it reports itself, is recorded in
  `Isolation.python` and in every result.
* Resources: RLIMIT_CPU (a backstop, see below; cpu_limit_s overrides), RLIMIT_AS (memory_mb),
  RLIMIT_NPROC (max_processes), RLIMIT_FSIZE (max_file_mb), RLIMIT_CORE = 0. The limits are set
  by the bootstrap, not in a `preexec_fn`, which is unsafe in the threads `run_many` uses.

Which limit a CPU-bound program meets. The wall clock (timeout_s) is the limit; the default CPU
limit sits well past it, at 2 x timeout_s + 1 s (rounded up), so a single busy thread always
meets the wall clock first, idle machine or loaded (under load it gets less CPU per second, never
more), and the verdict does not depend on a race between two equal limits. The CPU limit stays
as a backstop: it ends a run whose wall-clock kill never comes (the harness itself was killed),
and a program that burns CPU in many threads at once. A caller that wants the CPU limit to be the
one met passes cpu_limit_s below timeout_s.

Ending a run. The verdict comes from how the main process ended (its wait status and the CPU
time it used) and from whether our wall-clock timer fired, which it records before it kills
anything; never from a sleep. Before the main process is reaped (so that its pid, the process
group's handle, cannot be reused), everything the run left behind is killed: as root with one `kill(-1, SIGKILL)` sent *as the run's uid*, which reaches exactly that
uid's processes, wherever they moved (setsid, double fork), and which a fork cannot slip past
(the kernel signals them all under the task-list lock), repeated until /proc shows none alive;
without root, by process group only (a process that calls setsid escapes it; the notes say so).

Outcome: exit 0 -> "pass"; a nonzero exit -> "fail" with the last line of stderr as the reason
(e.g. "AssertionError"); our wall-clock kill, SIGXCPU, or a SIGKILL once the process has used
its CPU limit -> "timeout", with the reason naming which; MemoryError, any other signal
(including a SIGKILL the program sent itself, or one from the out-of-memory killer, named as such
when the kernel's OOM-kill count rose during the run), or a failure to set up the sandbox ->
"error".
"""

from __future__ import annotations

import itertools
import json
import math
import os
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
from typing import Iterable, Literal

from pydantic import Field

from ttscale.types import Frozen

Status = Literal["pass", "fail", "timeout", "error"]

SETUP_FAILED_EXIT = 121  # exit code of the setup script or bootstrap when it cannot build the sandbox
REASON_CHARS = 300
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
ADMIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Kernel filesystems whose files the kernel itself guards per uid: remounting them read-only
# would cost a process each and protect nothing more from an unprivileged uid.
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs", "tracefs", "securityfs",
    "pstore", "bpf", "configfs", "fusectl", "binfmt_misc", "autofs", "efivarfs", "rpc_pipefs", "nsfs",
})
PRIVATE_WORKDIR = "/tmp/sandbox"  # the working directory inside a run's own /tmp
CLEANUP_DEADLINE_S = 30  # how long to keep killing a run's leftovers before giving up (never reached in practice)
# Dedicated uids for sandboxed runs when we are root: a fresh uid for every run, from a block of
# UIDS_PER_PROCESS per parent pid, so concurrent runs, and runs of concurrent ttscale processes,
# never share a uid. Fresh, not pooled: killed processes whose parent died are reparented to
# pid 1, and where pid 1 is slow to reap them (as in some containers) their zombies still count
# against RLIMIT_NPROC of their uid, which would starve the next run that reused it.
UID_BASE = 1_000_000_000
UIDS_PER_PROCESS = 32_768
PROCESS_BLOCKS = 100_000  # UID_BASE + PROCESS_BLOCKS * UIDS_PER_PROCESS stays below 2**32 - 1

# The program that starts every run. With a mount namespace it begins as root inside it: it
# carries out the parent's mount plan (`setup`), drops to the run's uid for good, and stores the
# program (read from stdin) in its private working directory; all in this one process, because
# a shell script doing the same with mount, install, cat and setpriv started a dozen processes
# per run, and cost 0.2 s a run at load 7. Without a mount namespace it starts as the run's
# uid already (setpriv) and reads the program from the working directory the parent made.
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
                raise OSError(errno, "%%s: %%s" %% (what, os.strerror(errno)))
        def mount(source, target, fstype, flags, data=None):
            raw = [None if x is None else x.encode() for x in (source, target, fstype, data)]
            call("mount %%s" %% target, libc.mount(raw[0], raw[1], raw[2], ctypes.c_ulong(flags), raw[3]))
        MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_MOVE = 1, 2, 4, 32, 4096, 8192
        KEEP = 2 | 4 | 8 | 1024 | 2048 | 4096  # nosuid nodev noexec noatime nodiratime relatime: a remount must restate them
        for op, *args in cfg["setup"]:
            if op == "read_only":
                target, required = args
                try:
                    kept = os.statvfs(target).f_flag & KEEP
                    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
                except OSError:
                    if required:
                        raise
            elif op == "tmpfs":
                mount("ttscale-sandbox", args[0], "tmpfs", MS_NOSUID | MS_NODEV, args[1])
            elif op == "mkdir":
                os.makedirs(args[0], 0o755, exist_ok=True)
            elif op == "bind":
                mount(args[0], args[1], None, MS_BIND)  # a bind mount of a read-only mount is read-only
            elif op == "move":
                mount(args[0], args[1], None, MS_MOVE)
            else:
                raise ValueError("unknown setup step %%r" %% (op,))
        uid = cfg["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        call("no_new_privs", libc.prctl(38, 1, 0, 0, 0))  # PR_SET_NO_NEW_PRIVS: setuid binaries grant nothing
        call("dumpable", libc.prctl(4, 1, 0, 0, 0))  # PR_SET_DUMPABLE: the uid change cleared it; /proc/self stays ours
        os.mkdir(cfg["workdir"], 0o700)
        os.chdir(cfg["workdir"])
        with open(cfg["main"], "wb") as f:
            while chunk := os.read(0, 1 << 16):
                f.write(chunk)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        del ctypes, libc, call, mount
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
    sys.stderr.write("sandbox setup failed: %%r\n" %% (error,))
    sys.stderr.flush()
    os._exit(%d)
sys.argv = [cfg["main"]]
sys.path.insert(0, os.getcwd())
del cfg, json, resource, limit
code = compile(source, "main.py", "exec")
del source
exec(code, {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__})
""" % SETUP_FAILED_EXIT


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
    default_cpu_limit_s(timeout_s), a backstop past the wall clock); tmp_mb and shm_mb cap the
    run's private /tmp and /dev/shm.
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


class Isolation(Frozen):
    """What this machine lets the sandbox do; probed once per process."""

    network_prefix: tuple[str, ...] = ()  # e.g. ("unshare", "-n", "--"): a fresh network namespace
    dedicated_uid: bool = False  # root: each run as its own unprivileged uid, via setpriv
    private_tmp: bool = False  # root: a mount namespace with private capped /tmp and /dev/shm
    read_only: tuple[str, ...] = ()  # host mounts to remount read-only inside that namespace
    exposed: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (a dir only root may enter, interpreter paths in it)
    python: str = ""  # the interpreter that runs programs, as it reported itself inside the sandbox
    notes: tuple[str, ...] = ()  # why a layer is off, or weaker than the docstring says

    @property
    def network_namespace(self) -> bool:
        return bool(self.network_prefix)

    def prefix(self, uid: int | None) -> list[str]:
        """The command that runs a program with the network and uid layers (as `uid`, if given)."""
        return [*self.network_prefix, *_drop_privileges(uid)]


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
    host_workdir = None if isolation.private_tmp else tempfile.mkdtemp(prefix="ttscale-sandbox-")
    workdir = PRIVATE_WORKDIR if host_workdir is None else host_workdir
    config = {
        "main": os.path.join(workdir, "main.py"),
        "workdir": workdir,
        "uid": uid,
        "setup": _mount_plan(isolation, limits) if host_workdir is None else None,
        "cpu_s": limits.cpu_s,
        "as_bytes": limits.memory_mb * 1024 * 1024,
        "fsize": limits.max_file_mb * 1024 * 1024,
        "nproc": limits.max_processes if uid is not None else _own_process_count() + limits.max_processes,
        "block_sockets": not isolation.network_namespace,
    }
    interpreter = [sys.executable, "-I", "-c", BOOTSTRAP, json.dumps(config)]
    oom_kills_before = _oom_kill_count()
    started = time.perf_counter()
    try:
        if host_workdir is None:
            # The source goes in through stdin; the bootstrap stores it in the private /tmp.
            stdin = _memory_file(code)
            command = [
                _which("unshare"), "-m", "--propagation", "private",
                *(["-n"] if isolation.network_namespace else []), "--", *interpreter,
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
            )
        finally:
            if stdin is not subprocess.DEVNULL:
                stdin.close()
        out, err = _Capture(proc.stdout, output_limit), _Capture(proc.stderr, output_limit)
        # unshare and setpriv exec the next command, so proc.pid ends up being the program.
        clock = _WallClock(limits.timeout_s, lambda: _kill_run(proc.pid, uid))
        try:
            _wait_until_ended(proc.pid)
        finally:
            clock.stop()
        # Ended but not reaped, so its pid (our handle on its process group) cannot be reused
        # yet: kill whatever it left running (background children, too), then reap it.
        _kill_run(proc.pid, uid, until_gone=True)
        status, cpu_s = _reap(proc.pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        duration = time.perf_counter() - started
        out.join(5)
        err.join(5)
        stdout, stderr = out.text(), err.text()
        oom_kills_after = _oom_kill_count()
        oom = None not in (oom_kills_before, oom_kills_after) and oom_kills_after > oom_kills_before
        status_, reason = _classify(
            proc.returncode, clock.fired, cpu_s, limits, stderr, err.last_line(), oom_killer_ran=oom
        )
        return SandboxResult(
            status=status_,
            reason=reason,
            stdout=stdout,
            stderr=stderr,
            duration_s=round(duration, 4),
            returncode=proc.returncode,
            cpu_s=round(cpu_s, 3),
            uid=uid,
            python=isolation.python,
        )
    finally:
        if host_workdir is not None:
            shutil.rmtree(host_workdir, ignore_errors=True)


def _mount_plan(isolation: Isolation, limits: Limits) -> list[list]:
    """The steps by which the bootstrap, as root in the new mount namespace, builds the run's files.

    Order matters: the host's mounts become read-only first; then the interpreter's prefixes are
    exposed (bound onto a scratch tmpfs at /tmp, which then moves over the directory that hid
    them, and turns read-only); last come the writable, capped /tmp and /dev/shm.
    """
    # Best effort for the host's mounts: one that refuses stays writable, and the probe names it.
    plan: list[list] = [["read_only", point, False] for point in isolation.read_only]
    for hidden, paths in isolation.exposed:
        plan.append(["tmpfs", "/tmp", "size=1m,mode=755"])
        for path in paths:
            staged = "/tmp/" + os.path.relpath(path, hidden)
            plan += [["mkdir", staged], ["bind", path, staged]]
        plan += [["move", "/tmp", hidden], ["read_only", hidden, True]]
    plan += [
        ["tmpfs", "/tmp", f"size={limits.tmp_mb}m,mode=1777"],
        ["tmpfs", "/dev/shm", f"size={limits.shm_mb}m,mode=1777"],
    ]
    return plan


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
    `fired` is true was killed by the wall clock (or, at the same instant, by itself).
    """

    def __init__(self, seconds: float, kill):
        self.fired = False
        self._kill = kill
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        self._kill()

    def stop(self) -> None:
        self._timer.cancel()
        self._timer.join()  # a kill in flight finishes before the caller looks at `fired`


def _wait_until_ended(pid: int) -> None:
    """Wait until the main process has ended, leaving it unreaped (a zombie)."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # Python retries it on EINTR (PEP 475)


def _reap(pid: int) -> tuple[int, float]:
    """Reap the ended main process: its wait status, and the CPU time it used.

    The CPU time tells a SIGKILL from the hard RLIMIT_CPU apart from any other SIGKILL. It comes
    from wait4's rusage, which the kernel keeps exact (the utime and stime of /proc/<pid>/stat
    are sampled in clock ticks and read up to 10% low here), and which also counts the children
    the program itself waited for.
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
) -> tuple[Status, str]:
    """The verdict, from how the main process ended; each kill named by its cause."""
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


# --- killing what a run leaves behind -----------------------------------------------------


def _kill_run(pgid: int, uid: int | None, *, until_gone: bool = False) -> None:
    """SIGKILL the run's process group and, with a dedicated uid, every process of that uid.

    until_gone: keep at it until /proc shows no live process of the uid (SIGKILLed processes
    take a moment to exit), so that the run's private tmpfs is freed when this returns.
    """
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
import json, os, sys
top = {}  # mount point -> whether the mount on top there (the last listed) is writable
with open("/proc/self/mountinfo") as f:
    for line in f:
        fields = line.split()
        fstype = line.split(" - ", 1)[1].split()[0]
        top[fields[4].encode().decode("unicode_escape")] = "rw" in fields[5].split(",") and fstype not in %r
writable = [point for point, rw in top.items() if rw and point not in ("/tmp", "/dev/shm")]
st = os.statvfs("/tmp")
print(json.dumps({
    "uid": os.getuid(), "version": sys.version, "executable": sys.executable,
    "tmp_bytes": st.f_blocks * st.f_frsize, "writable": sorted(writable),
}))
""" % (tuple(sorted(PSEUDO_FILESYSTEMS)),)


@lru_cache(maxsize=1)
def probe_isolation() -> Isolation:
    """Which isolation layers work here, each checked end to end by running a program in it.

    Candidates, strongest first: as root, a mount namespace plus a dedicated uid, then a
    dedicated uid alone, then root; without root, the caller's user. Each must start the
    interpreter and report itself; the first that does is used, and the notes say what the
    stronger ones lacked.
    """
    is_root = os.geteuid() == 0
    notes: list[str] = []
    network = _probe_network(is_root, notes)
    candidates: list[Isolation] = []
    if not is_root:
        notes.append(
            "not root: no mount namespace, so files a program stores in /tmp or /dev/shm stay on the "
            "host after its run (up to max_file_mb each); it runs as the caller's user, and what it "
            "leaves running is killed by process group only (setsid escapes that)"
        )
    elif not shutil.which("setpriv", path=ADMIN_PATH):
        notes.append("no setpriv command: the child runs as root, with no mount namespace")
    elif not _uid_mapped(_uid_for(UIDS_PER_PROCESS - 1)):
        notes.append("sandbox uids are not mapped in this user namespace: the child runs as root, with no mount namespace")
    else:
        if shutil.which("unshare", path=ADMIN_PATH) and shutil.which("mount", path=ADMIN_PATH):
            hidden, unreachable = _hidden_interpreter_dirs()
            notes += unreachable
            candidates.append(Isolation(
                network_prefix=network, dedicated_uid=True, private_tmp=True,
                read_only=_host_mounts(), exposed=hidden,
            ))
        else:
            notes.append("no unshare or mount command: no mount namespace")
        candidates.append(Isolation(network_prefix=network, dedicated_uid=True))
    candidates.append(Isolation(network_prefix=network))
    limits = Limits(timeout_s=30, cpu_s=30, memory_mb=1024, max_processes=64, max_file_mb=1, tmp_mb=4, shm_mb=4)
    for candidate in candidates:
        result = _run(PROBE_CHECK, candidate, limits=limits, output_limit=100_000)
        report = _parse_report(result.stdout)
        if result.status != "pass" or report is None:
            notes.append(f"{_describe(candidate)} does not work here ({result.status}: {result.reason or result.stderr[-200:]})")
            continue
        if candidate.dedicated_uid and report["uid"] == 0:
            notes.append(f"{_describe(candidate)} still ran as root")
            continue
        if candidate.private_tmp and report["tmp_bytes"] != limits.tmp_mb * 1024 * 1024:
            notes.append(f"{_describe(candidate)}: /tmp was not the private tmpfs")
            continue
        if candidate.private_tmp and report["writable"]:
            notes.append("these mounts stay writable inside the sandbox: " + ", ".join(report["writable"]))
        python = f"Python {report['version'].split()[0]} at {report['executable']}"
        if report["version"] != sys.version:
            notes.append(
                f"sandboxed programs run {python} ({report['version']}), while the harness runs "
                f"{sys.version.split()[0]} ({sys.version})"
            )
        return candidate.model_copy(update={"python": python, "notes": tuple(notes)})
    notes.append("no candidate worked: sandboxed programs will fail to start")
    return candidates[-1].model_copy(update={"notes": tuple(notes)})


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
        return "a mount namespace with a dedicated uid"
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


def _host_mounts() -> tuple[str, ...]:
    """The mount points that a sandbox remounts read-only: every writable mount that stores data.

    From /proc/self/mountinfo, once each, skipping mounts already read-only, kernel pseudo
    filesystems, and /tmp and /dev/shm (the sandbox mounts its own over those).
    """
    points: list[str] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if " - " not in line or len(fields) < 6:
                    continue
                point = _unescape_mount_path(fields[4])
                fstype = line.split(" - ", 1)[1].split()[0]
                if "ro" in fields[5].split(",") or fstype in PSEUDO_FILESYSTEMS:
                    continue
                if point in ("/tmp", "/dev/shm") or point.startswith(("/tmp/", "/dev/shm/")):
                    continue
                if point not in points:
                    points.append(point)
    except OSError:
        pass
    return tuple(points)


def _unescape_mount_path(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    for escape, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escape, char)
    return field


def _hidden_interpreter_dirs() -> tuple[tuple[tuple[str, tuple[str, ...]], ...], list[str]]:
    """Directories that only root may enter and that hold the interpreter, with its paths in each.

    Returns ((hidden dir, (paths to expose, ...)), ...) and notes for paths that cannot be
    exposed (the path itself is closed to others, so a bind mount would keep it closed).
    """
    real_executable = os.path.realpath(sys.executable)
    needed = {
        os.path.realpath(sys.base_prefix),
        os.path.realpath(sys.prefix),
        os.path.dirname(real_executable),
    }
    by_dir: dict[str, set[str]] = {}
    notes: list[str] = []
    for path in sorted(needed):
        hidden = _first_closed_dir(path)
        if hidden is None:
            continue
        if hidden == path:
            notes.append(f"{path} is closed to other users: the sandbox uid may not load the harness's interpreter")
            continue
        by_dir.setdefault(hidden, set()).add(path)
    exposed = []
    for hidden, paths in sorted(by_dir.items()):
        # A path inside another exposed path comes with it.
        outer = sorted(p for p in paths if not any(p != q and p.startswith(q + os.sep) for q in paths))
        exposed.append((hidden, tuple(outer)))
    return tuple(exposed), notes


def _first_closed_dir(path: str) -> str | None:
    """The outermost directory on the way to `path` (itself included) that others may not enter."""
    current = os.sep
    for part in path.strip(os.sep).split(os.sep):
        current = os.path.join(current, part)
        try:
            mode = os.stat(current).st_mode
        except OSError:
            return None
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return current
    return None


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
