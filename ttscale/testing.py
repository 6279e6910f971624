"""Helpers for tests and perf scripts: a JSONL file of rows (a problem set), and starting a server:
a free port, `ttscale serve` as a user starts it, and waiting for /health (or for a request to be
in flight) instead of sleeping.

It lives in the package, not in tests/, so that perf/ scripts (run as plain `python perf/X.py`)
and tests import the same helpers without path tricks. Only the standard library and httpx.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import httpx


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    """Write rows as JSON Lines (one object a line): a benchmark file of problems for
    `RunConfig(benchmark=str(path))` when each row has id, question and answer. Returns path."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


class ServerFailed(RuntimeError):
    """A started server exited, or did not answer /health in time (the message holds its output)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (closed again: a connection is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(port: int, *args: str) -> list[str]:
    """`ttscale serve` on 127.0.0.1:PORT with ARGS, run by this interpreter."""
    return [sys.executable, "-m", "ttscale.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]


def start_server(command: Sequence[str], port: int, *, log: Path | None = None, env: Mapping[str, str] | None = None,
                 timeout: float = 120, own_session: bool = False) -> subprocess.Popen:
    """Start `command` (a server listening on 127.0.0.1:PORT); return once GET /health answers 200.

    Its output is appended to `log`; without a log, stdout is dropped and stderr is a text pipe the
    caller may read (`process.communicate()` after stopping it). `env` replaces the environment
    (default: inherited); `own_session` starts it in a session of its own (for killpg)."""
    if log is not None:
        with open(log, "a") as out:
            process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=own_session)
    else:
        process = subprocess.Popen(list(command), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                   start_new_session=own_session)
    wait_healthy(process, port, timeout=timeout, log=log)
    return process


def wait_healthy(process: subprocess.Popen, port: int, *, timeout: float, log: Path | None = None) -> None:
    """Until the server on PORT answers /health; ServerFailed (with its output) if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerFailed(f"server exited with {process.returncode}:\n{_output(process, log)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise ServerFailed(f"server on port {port} did not answer /health in {timeout:.0f} s:\n{_output(process, log)}")


def _output(process: subprocess.Popen, log: Path | None) -> str:
    """The last of what an ended (or killed) server wrote."""
    if log is not None:
        return log.read_text()[-3000:]
    _, err = process.communicate(timeout=30)
    return (err or "")[-3000:]


def wait_until_in_flight(metrics_url: str, thread: threading.Thread, timeout_s: float = 120) -> None:
    """Until ttscale serve's own gauge (/metrics, which does not count itself) counts a request in
    flight, while `thread` waits on that request (a fixed sleep raced the machine's load)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert thread.is_alive(), "the request finished before it was seen in flight"
        lines = httpx.get(metrics_url, timeout=10).text.splitlines()
        if any(line.startswith("ttscale_requests_in_flight ") and float(line.split()[1]) >= 1 for line in lines):
            return
        time.sleep(0.05)
    raise AssertionError("no request was ever in flight")
