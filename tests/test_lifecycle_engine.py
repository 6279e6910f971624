"""No engine process outlives ttscale, whatever ends it: SIGTERM, SIGINT during the engine's
start-up, an exception after it started (ttscale.lifecycle). On the real vLLM engine.

Each case starts `ttscale eval` as a user would, in its own session, and afterwards looks for
any process of that session or process group: the vLLM EngineCore and its worker are started by
ttscale and inherit both, so a survivor shows up there.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TTSCALE = [str(Path(sys.executable).with_name("ttscale"))]
ENGINE_EVAL = ["eval", "--n", "1", "--max-tokens", "16", "--concurrency", "1"]
START_LINE = "Starting the vllm backend"

pytestmark = pytest.mark.engine


def default_sigint() -> None:
    """SIGINT at its default in the child, whatever pytest's launcher left it at (POSIX inherits SIG_IGN)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*TTSCALE, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)


def wait_for_line(process: subprocess.Popen, prefix: str) -> None:
    for line in process.stdout:
        if line.startswith(prefix):
            return
    pytest.fail(f"ttscale never printed {prefix!r}: {process.stderr.read()}")


def wait_for_records(run_dir_parent: Path, count: int, process: subprocess.Popen, timeout_s: float = 600) -> Path:
    """The run directory, once samples.jsonl holds `count` records (the engine is up and serving)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        for samples in run_dir_parent.glob("*/samples.jsonl"):
            if len([line for line in samples.read_text().splitlines() if line.strip()]) >= count:
                return samples.parent
        time.sleep(0.5)
    pytest.fail(f"no {count} records within {timeout_s} s")


def survivors(session: int) -> list[str]:
    """Live processes of this session or process group (ttscale's own pid is both)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            continue
        state, pgrp, sid = fields[0], int(fields[2]), int(fields[3])
        if state not in ("Z", "X") and session in (pgrp, sid):
            found.append(f"{entry} {command}")
    return found


def finish(process: subprocess.Popen, timeout_s: float = 300) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, err


def assert_no_survivor(process: subprocess.Popen) -> None:
    # The session's leader has exited; what it started must be gone with it. A moment's grace
    # for processes already SIGKILLed but not yet torn down by the kernel.
    deadline = time.monotonic() + 10
    while survivors(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = survivors(process.pid)
    if left:
        os.killpg(process.pid, signal.SIGKILL)
    assert not left, f"processes outlived ttscale: {left}"


def test_sigterm_of_a_running_engine_eval_keeps_the_work_and_leaves_no_process(tmp_path):
    process = start([*ENGINE_EVAL, "-b", "arithmetic", "--limit", "40"], tmp_path)
    run_dir = wait_for_records(tmp_path / "runs", 1, process)
    process.send_signal(signal.SIGTERM)
    code, err = finish(process)
    assert code == 143, err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last == f"terminated: finished problems are saved in runs/{run_dir.name}; rerun the same command to resume"
    assert_no_survivor(process)
    kept = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    assert kept and all(record["problem_id"] for record in kept)


def test_ctrl_c_during_engine_start_up_leaves_no_process(tmp_path):
    process = start([*ENGINE_EVAL, "-b", "arithmetic", "--limit", "40"], tmp_path)
    wait_for_line(process, START_LINE)
    time.sleep(5)  # well inside the engine's start (about a minute on CPU); EngineCore is being spawned
    process.send_signal(signal.SIGINT)
    code, err = finish(process)
    assert code == 130, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()][-1].startswith("interrupted: finished problems are saved in runs/")
    assert_no_survivor(process)


def test_an_error_after_the_engine_started_leaves_no_process(tmp_path, write_problems):
    # The second problem is longer than the engine's context: vLLM rejects it after the first
    # was answered, and the run ends with one error line.
    data = write_problems({"id": "short", "question": "What is 2 + 3?", "answer": "5"},
                          {"id": "long", "question": "Add these: " + " + ".join(["1"] * 6000), "answer": "6000"})
    process = start([*ENGINE_EVAL, "-b", str(data), "--backend-option", "max_model_len=1024"], tmp_path)
    code, err = finish(process, timeout_s=600)
    assert code == 2, err
    assert "Traceback" not in err
    assert "error: vLLM rejected a request of" in err
    assert_no_survivor(process)
