"""The sandbox for untrusted code: basic outcomes, limits, and a hostile suite.

Every hostile test checks the outcome *and* that the host is unharmed. Wall-time bounds are
generous correctness bounds (the run must end, killed, near its limit), not performance checks.
"""

import os
import socket
import subprocess
import time

import pytest

from ttscale.verifiers.sandbox import UID_BASE, probe_isolation, run_many, run_python

ISOLATION = probe_isolation()
needs_uid_drop = pytest.mark.skipif(
    not ISOLATION.dedicated_uid, reason=f"no dedicated sandbox uid here: {'; '.join(ISOLATION.notes)}"
)
BOUND_S = 30  # a hostile run with a 2-3 s limit must be over well within this


def leftover_sandbox_processes() -> list[int]:
    """Live (non-zombie) processes running as any sandbox uid."""
    if not ISOLATION.dedicated_uid:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                continue
            if fields.get("State", "").split()[:1] != ["Z"] and int(fields["Uid"].split()[0]) >= UID_BASE:
                found.append(int(entry))
    return found


def host_is_fine() -> None:
    assert subprocess.run(["true"]).returncode == 0
    assert leftover_sandbox_processes() == []


def test_pass_and_output():
    result = run_python("print('hello')")
    assert result.status == "pass" and result.stdout == "hello\n" and result.reason == ""
    assert result.duration_s < BOUND_S


def test_failing_assert_is_fail_with_its_reason():
    result = run_python("assert 1 + 1 == 3")
    assert result.status == "fail"
    assert result.reason == "AssertionError"
    assert "main.py" in result.stderr


def test_exception_and_exit_code_are_fail():
    assert run_python("raise ValueError('bad input')").reason == "ValueError: bad input"
    result = run_python("import sys; sys.exit(3)")
    assert result.status == "fail" and result.returncode == 3


def test_syntax_error_is_fail():
    result = run_python("def f(:\n    pass")
    assert result.status == "fail" and "SyntaxError" in result.reason


def test_infinite_loop_is_timeout():
    started = time.monotonic()
    result = run_python("while True: pass", timeout_s=2)
    assert result.status == "timeout"
    assert time.monotonic() - started < BOUND_S
    host_is_fine()


def test_sleeping_child_is_timeout_and_killed():
    code = "import subprocess\nsubprocess.Popen(['sleep', '600'])\nimport time; time.sleep(600)"
    result = run_python(code, timeout_s=2)
    assert result.status == "timeout"
    host_is_fine()


def test_output_is_truncated():
    result = run_python("print('a' * 100_000)\nprint('END')", output_limit=1000)
    assert result.status == "pass"
    assert len(result.stdout) < 1100
    assert "truncated" in result.stdout and result.stdout.rstrip().endswith("END")


def test_run_many_keeps_order():
    results = run_many([f"print({i})" for i in range(8)] + ["assert False"])
    assert [r.stdout.strip() for r in results[:8]] == [str(i) for i in range(8)]
    assert results[8].status == "fail"


# --- hostile code -------------------------------------------------------------------------


def test_fork_bomb_is_contained():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    started = time.monotonic()
    result = run_python(code, timeout_s=3, max_processes=32)
    assert result.status in ("timeout", "error")
    assert time.monotonic() - started < BOUND_S
    host_is_fine()


def test_escaped_background_process_is_killed():
    # setsid leaves the process group that the timeout kill targets; the uid sweep still gets it.
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n"
    result = run_python(code, timeout_s=3)
    assert result.status == "pass"
    host_is_fine()


def test_huge_allocation_is_error():
    started = time.monotonic()
    result = run_python("x = bytearray(50 * 1024**3)\nprint(len(x))", timeout_s=5)
    assert result.status == "error" and "MemoryError" in result.reason
    assert time.monotonic() - started < BOUND_S
    host_is_fine()


def test_huge_file_is_stopped(tmp_path):
    code = "with open('big', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * 1024 * 1024)\n"
    result = run_python(code, timeout_s=5, max_file_mb=4)
    # CPython ignores SIGXFSZ, so the write fails with EFBIG instead of the process being killed.
    assert result.status in ("fail", "error")
    assert "File too large" in result.reason or "file size" in result.reason


@needs_uid_drop
def test_cannot_overwrite_file_outside_workdir(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("original")
    code = f"with open({str(sentinel)!r}, 'w') as f:\n    f.write('pwned')\n"
    result = run_python(code, timeout_s=3)
    assert result.status == "fail" and "PermissionError" in result.reason
    assert sentinel.read_text() == "original"
    host_is_fine()


@needs_uid_drop
def test_cannot_delete_files_in_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    precious = home / "precious.txt"
    precious.write_text("keep me")
    monkeypatch.setenv("HOME", str(home))
    code = (
        "import os, shutil\n"
        "print(os.path.expanduser('~'))\n"
        "for path in (os.path.expanduser('~/precious.txt'), {precious!r}):\n"
        "    try:\n        os.remove(path)\n    except FileNotFoundError:\n        pass\n"
        "shutil.rmtree({home!r})\n"
    ).format(precious=str(precious), home=str(home))
    result = run_python(code, timeout_s=3)
    assert result.status == "fail" and "PermissionError" in result.reason
    assert str(home) not in result.stdout  # the child's home is its own temp dir
    assert precious.read_text() == "keep me"


def test_environment_secrets_do_not_leak(monkeypatch):
    monkeypatch.setenv("TTSCALE_TEST_SECRET", "s3cr3t-value")
    code = (
        "import os\nprint(os.environ.get('TTSCALE_TEST_SECRET'))\nprint(dict(os.environ))\n"
        "try:\n    print(open(f'/proc/{os.getppid()}/environ').read())\nexcept OSError as e:\n    print(e)\n"
        "try:\n    print(open(f'/proc/{os.getppid()}/cwd/../environ').read())\nexcept OSError as e:\n    print(e)\n"
    )
    result = run_python(code, timeout_s=3, output_limit=100_000)
    assert "s3cr3t-value" not in result.stdout + result.stderr
    # The parent pytest process's environ, too: only readable with a uid drop.
    code = f"print(open('/proc/{os.getpid()}/environ').read())"
    result = run_python(code, timeout_s=3, output_limit=100_000)
    if ISOLATION.dedicated_uid:
        assert result.status == "fail" and "s3cr3t-value" not in result.stdout


def test_no_tcp_connection_to_localhost():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'hello')\nprint('connected')\n"
        )
        started = time.monotonic()
        result = run_python(code, timeout_s=5)
        assert result.status in ("fail", "error", "timeout") and "connected" not in result.stdout
        assert time.monotonic() - started < BOUND_S
        server.settimeout(0)
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody ever connected
    host_is_fine()


def test_isolation_report():
    # Documents what this machine gave the sandbox (see the module docstring for what each means).
    print(ISOLATION)
    assert ISOLATION.network_namespace or ISOLATION.notes


def test_fallback_without_namespaces_still_blocks_sockets(monkeypatch):
    # Where unshare and the uid drop are unavailable, a Python-level prelude blocks sockets.
    from ttscale.verifiers import sandbox

    monkeypatch.setattr(sandbox, "probe_isolation", lambda: sandbox.Isolation())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        for code in (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
            f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))",
            f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))",
        ):
            result = sandbox.run_python(code, timeout_s=5)
            assert result.status == "fail" and "PermissionError" in result.reason, result.stderr
        server.settimeout(0)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert sandbox.run_python("print(1)").status == "pass"
    assert sandbox.run_python("while True: pass", timeout_s=2).status == "timeout"
    assert sandbox.run_python("x = bytearray(50 * 1024**3)").status == "error"
