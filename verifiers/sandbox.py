"""Run untrusted Python code (model-written programs and their tests) in a locked-down subprocess.

Each run gets a fresh interpreter (`sys.executable -I`) in its own temporary working directory,
removed afterwards, with a minimal environment (PATH, LANG, HOME and TMPDIR = that directory;
nothing of the parent's environment), stdin from /dev/null, and its own session, so that on a
wall-clock timeout the whole process group is killed.

Layers, from strongest to weakest (what is available is probed once per process):

* Network: run under `unshare -n` (a fresh network namespace with no interfaces up, not even
  loopback), when permitted; `unshare -rn` (user namespace) where we are not root. Otherwise a
  prelude replaces `socket.socket`, `socket.create_connection` and friends with functions that
  raise PermissionError: this stops ordinary code, not code that calls libc through ctypes.
* Identity: when the parent is root, `setpriv` starts the interpreter as a dedicated
  unprivileged uid/gid with no supplementary groups and no_new_privs (so setuid binaries grant
  nothing). Each concurrent run gets its own uid, so the
  process limit (RLIMIT_NPROC counts the processes of a uid) is per run, a run cannot signal or
  ptrace other runs or the parent, cannot read /proc/<parent>/environ, and ordinary file
  permissions stop it writing to root's files (e.g. under /root, or pytest's tmp dirs). After
  each run every process left with that uid is killed, even ones that left the process group.
  Without root none of this applies: the child runs as the caller's user, so it can write where
  the caller can, and RLIMIT_NPROC is set to the user's current process count plus the budget.
* Resources: RLIMIT_CPU (timeout, rounded up), RLIMIT_AS (memory_mb), RLIMIT_NPROC
  (max_processes), RLIMIT_FSIZE (max_file_mb), RLIMIT_CORE = 0. The limits are set by the
  bootstrap, not in a `preexec_fn`, which is unsafe in the threads `run_many` uses.

Not covered: the child can still read world-readable files, and can create (not overwrite) files
in world-writable directories such as /tmp, up to max_file_mb each. No mount namespace is used.

Outcome: exit 0 -> "pass"; a nonzero exit -> "fail" with the last line of stderr as the reason
(e.g. "AssertionError"); the wall-clock or CPU limit -> "timeout"; MemoryError, any other signal,
or a failure to set up the sandbox -> "error".
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Iterable, Literal

from ttscale.types import Frozen

Status = Literal["pass", "fail", "timeout", "error"]

SETUP_FAILED_EXIT = 121  # the bootstrap's exit code when it cannot apply a limit or drop privileges
REASON_CHARS = 300
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# Dedicated uids for sandboxed runs when we are root: a fresh uid for every run, from a block of
# UIDS_PER_PROCESS per parent pid, so concurrent runs, and runs of concurrent ttscale processes,
# never share a uid. Fresh, not pooled: killed processes whose parent died are reparented to
# pid 1, and where pid 1 is slow to reap them (as in some containers) their zombies still count
# against RLIMIT_NPROC of their uid, which would starve the next run that reused it.
UID_BASE = 1_000_000_000
UIDS_PER_PROCESS = 32_768
PROCESS_BLOCKS = 100_000  # UID_BASE + PROCESS_BLOCKS * UIDS_PER_PROCESS stays below 2**32 - 1

BOOTSTRAP = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
try:
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


def run_python(
    code: str,
    *,
    timeout_s: float = 10,
    memory_mb: int = 1024,
    max_processes: int = 64,
    max_file_mb: int = 16,
    output_limit: int = 4000,
) -> SandboxResult:
    """Run `code` as a Python program in a fresh sandboxed subprocess and classify the outcome."""
    isolation = probe_isolation()
    uid = _next_uid() if isolation.dedicated_uid else None
    workdir = tempfile.mkdtemp(prefix="ttscale-sandbox-")
    started = time.perf_counter()
    try:
        main = os.path.join(workdir, "main.py")
        with open(main, "w", encoding="utf-8") as f:
            f.write(code)
        os.chmod(main, 0o644)
        if uid is not None:
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)
        config = {
            "main": main,
            "cpu_s": max(1, math.ceil(timeout_s)),
            "as_bytes": memory_mb * 1024 * 1024,
            "fsize": max_file_mb * 1024 * 1024,
            "nproc": max_processes if uid is not None else _own_process_count() + max_processes,
            "block_sockets": not isolation.network_namespace,
        }
        command = [*isolation.prefix(uid), sys.executable, "-I", "-c", BOOTSTRAP, json.dumps(config)]
        env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        out, err = _Capture(proc.stdout, output_limit), _Capture(proc.stderr, output_limit)
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        # Kill what is left either way: background children of a finished program, too.
        _kill_group(proc.pid)
        if uid is not None:
            _kill_uid(uid)
        proc.wait()
        duration = time.perf_counter() - started
        out.join(5)
        err.join(5)
        stdout, stderr = out.text(), err.text()
        status, reason = _classify(proc.returncode, timed_out, stderr, timeout_s, err.last_line())
        return SandboxResult(
            status=status,
            reason=reason,
            stdout=stdout,
            stderr=stderr,
            duration_s=round(duration, 4),
            returncode=proc.returncode,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_many(codes: Iterable[str], *, max_workers: int | None = None, **limits) -> list[SandboxResult]:
    """`run_python` for each program, up to os.cpu_count() at a time; results in input order."""
    codes = list(codes)
    workers = max(1, min(max_workers or os.cpu_count() or 1, len(codes) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ttscale-sandbox") as pool:
        return list(pool.map(lambda code: run_python(code, **limits), codes))


class Isolation(Frozen):
    """What this machine lets the sandbox do; probed once per process."""

    network_prefix: tuple[str, ...] = ()  # e.g. ("unshare", "-n", "--"): a fresh network namespace
    dedicated_uid: bool = False  # root: each run as its own unprivileged uid, via setpriv
    notes: tuple[str, ...] = ()  # why a layer is off

    @property
    def network_namespace(self) -> bool:
        return bool(self.network_prefix)

    def prefix(self, uid: int | None) -> list[str]:
        """The command that runs a program with these layers (as `uid`, if given)."""
        drop = [] if uid is None else [
            _SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--"
        ]
        return [*self.network_prefix, *drop]


_SETPRIV = shutil.which("setpriv") or "setpriv"


@lru_cache(maxsize=1)
def probe_isolation() -> Isolation:
    """Which isolation layers work here: a network namespace via unshare, and a uid drop as root.

    The uid drop is checked end to end: the interpreter must start as that uid and import its
    standard library (it may live under a directory only root can read, e.g. /root/.pyenv).
    """
    is_root = os.geteuid() == 0
    notes: list[str] = []
    network: tuple[str, ...] = ()
    unshare = shutil.which("unshare")
    if unshare:
        candidate = (unshare, "-n", "--") if is_root else (unshare, "-rn", "--")
        if _works([*candidate, "true"]):
            network = candidate
        else:
            notes.append(f"{' '.join(candidate)} is not permitted here; sockets are blocked in Python only")
    else:
        notes.append("no unshare command; sockets are blocked in Python only")
    dedicated = False
    if not is_root:
        notes.append("not root: the child runs as the caller's user")
    elif not shutil.which("setpriv"):
        notes.append("no setpriv command: the child runs as root")
    elif not _uid_mapped(_uid_for(UIDS_PER_PROCESS - 1)):
        notes.append("sandbox uids are not mapped in this user namespace: the child runs as root")
    else:
        check = "import json, socket, resource, os; assert os.getuid() != 0"
        uid = _uid_for(UIDS_PER_PROCESS - 1)
        dedicated = _works([*Isolation(network_prefix=network).prefix(uid), sys.executable, "-I", "-c", check], cwd="/")
        if not dedicated:
            notes.append(f"{sys.executable} does not run as an unprivileged uid here: the child runs as root")
    return Isolation(network_prefix=network, dedicated_uid=dedicated, notes=tuple(notes))


def _works(command: list[str], cwd: str | None = None) -> bool:
    try:
        env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
        return subprocess.run(command, capture_output=True, timeout=30, cwd=cwd, env=env).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


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


def _classify(returncode: int, timed_out: bool, stderr: str, timeout_s: float, last_line: str) -> tuple[Status, str]:
    last = last_line[:REASON_CHARS]
    if timed_out:
        return "timeout", f"timed out after {timeout_s:g} s"
    if returncode == 0:
        return "pass", ""
    if returncode < 0:
        sig = -returncode
        if sig in (signal.SIGXCPU, signal.SIGKILL) and "MemoryError" not in stderr:
            # SIGKILL here is the hard CPU limit (our wall-clock kill is reported above).
            return "timeout", f"CPU time limit ({signal.Signals(sig).name})"
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXFSZ:
            return "error", "file size limit exceeded (SIGXFSZ)"
        return "error", f"killed by signal {name}"
    if returncode == SETUP_FAILED_EXIT and "sandbox setup failed" in stderr:
        return "error", last or "sandbox setup failed"
    if last.startswith("MemoryError") or "\nMemoryError" in stderr:
        return "error", last or "MemoryError"
    return "fail", last or f"exit code {returncode}"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pids_of_uid(uid: int) -> list[int]:
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
        except (OSError, ValueError):
            continue
    return pids


def _kill_uid(uid: int, rounds: int = 50) -> None:
    """Kill every process running as `uid` (processes that left the group or session, too)."""
    for _ in range(rounds):
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _own_process_count() -> int:
    try:
        return len(_pids_of_uid(os.getuid()))
    except OSError:
        return 0
