"""Bad command lines and bad inputs, through the real entry point: one line on stderr, exit 2.

Each case runs `ttscale` in a subprocess, as a user would, and checks that stderr holds exactly
one non-empty line (`error: ...`), that no traceback shows, and the exit status. Ctrl-C during
a run says where the finished problems are and how to resume, and exits 130.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# The console script that pip installed beside this interpreter: the real entry point.
TTSCALE = [str(Path(sys.executable).with_name("ttscale"))]


def ttscale(*args, cwd, timeout=120):
    return subprocess.run([*TTSCALE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_error_line(result, code=2):
    """The single stderr line of a failed command, after checking the exit status and no traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert result.returncode == code, (result.returncode, result.stderr)
    return lines[0]


USAGE_ERRORS = {
    "unknown flag": (["eval", "--nosuchflag"], "No such option: --nosuchflag (see 'ttscale eval --help')"),
    "not an integer": (["eval", "-b", "arithmetic", "--n", "abc"], "Invalid value for '--n'"),
    "flag without its value": (["eval", "-b", "arithmetic", "--n"], "Option '--n' requires an argument"),
    "missing argument": (["compare"], "Missing argument 'run_dirs' (see 'ttscale compare --help')"),
    "bad --split on coverage-fit": (["coverage-fit", "--split", "x", "runs/r"], "Invalid value for '--split': Value error, 'x' is not one of 'all', 'a', 'b'"),
    "the old fit, renamed": (["fit", "runs/r"], "`ttscale fit` is now `ttscale coverage-fit`"),
    "bad --split on allocate fit": (["allocate", "fit", "--split", "c", "runs/r"], "(see 'ttscale allocate fit --help')"),
    "unknown command": (["evaluate"], "No such command 'evaluate'. Did you mean 'eval'"),
    "unknown command, no suggestion": (["xyz"], "No such command 'xyz' (see 'ttscale --help')"),
    "unknown subcommand": (["models", "remove"], "No such command 'remove' (see 'ttscale models --help')"),
    "port above 65535": (["serve", "--port", "99999"], "Invalid value for '--port': Input should be less than or equal to 65535"),
    "negative port": (["serve", "--port", "-1"], "Invalid value for '--port': Input should be greater than or equal to 1"),
}


@pytest.mark.parametrize("args, expected", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_errors_are_one_line_and_exit_2(tmp_path, args, expected):
    assert expected in one_error_line(ttscale(*args, cwd=tmp_path))


FAKE = ["eval", "-b", "arithmetic", "--backend", "fake", "--limit", "2"]

BAD_FLAGS = {
    "temperature inf": (["--temperature", "inf"], "sampling.temperature: Input should be a finite number"),
    "temperature nan": (["--temperature", "nan"], "sampling.temperature: Input should be a finite number"),
    "temperature negative": (["--temperature", "-1"], "sampling.temperature: Input should be greater than or equal to 0"),
    "top-p nan": (["--top-p", "nan"], "sampling.top_p"),
    "unknown backend": (["--backend", "nosuch"], "unknown backend 'nosuch'"),
    "misspelt backend": (["--backend", "fkae"], "Did you mean 'fake'?"),
    "dtype without an engine": (["--dtype", "float32"], "--dtype sets the vllm engine's dtype; the fake backend has none"),
}


@pytest.mark.parametrize("extra, expected", BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_bad_eval_flags_are_one_line_and_leave_no_run_directory(tmp_path, extra, expected):
    assert expected in one_error_line(ttscale(*FAKE, *extra, cwd=tmp_path))
    assert not (tmp_path / "runs").exists()


def test_ray_address_that_is_not_one_is_one_line_and_leaves_no_run_directory(tmp_path):
    pytest.importorskip("ray")
    line = one_error_line(ttscale(*FAKE, "--ray", "not_an_address", cwd=tmp_path))
    assert "--ray 'not_an_address': expected local, HOST:PORT or ray://HOST:PORT" in line
    assert not (tmp_path / "runs").exists()


def test_ray_address_that_refuses_is_one_line_and_leaves_no_run_directory(tmp_path):
    pytest.importorskip("ray")
    line = one_error_line(ttscale(*FAKE, "--ray", "127.0.0.1:1", cwd=tmp_path))
    assert "cannot reach the Ray cluster at 127.0.0.1:1 (Connection refused)" in line
    assert not (tmp_path / "runs").exists()


def test_ray_timeout_that_is_not_a_number_of_seconds_is_one_line(tmp_path):
    pytest.importorskip("ray")
    env = {**os.environ, "TTSCALE_RAY_TIMEOUT_S": "soon"}
    result = subprocess.run([*TTSCALE, *FAKE, "--ray", "127.0.0.1:1"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "TTSCALE_RAY_TIMEOUT_S='soon': expected a number of seconds above 0" in one_error_line(result)
    assert not (tmp_path / "runs").exists()


def test_ray_address_that_is_no_cluster_gives_up_after_the_timeout_in_one_line(tmp_path):
    # A port that takes connections but never speaks Ray (Ray alone would retry for 20 x ~40 s).
    pytest.importorskip("ray")
    with socket.create_server(("", 0)) as silent:
        port = silent.getsockname()[1]
        env = {**os.environ, "TTSCALE_RAY_TIMEOUT_S": "2"}
        result = subprocess.run([*TTSCALE, *FAKE, "--ray", f"127.0.0.1:{port}"], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=120)
    line = one_error_line(result)
    assert f"cannot join the Ray cluster at 127.0.0.1:{port} within 2 s" in line
    assert "TTSCALE_RAY_TIMEOUT_S" in line
    assert not (tmp_path / "runs").exists()


# Latin-1 bytes: "é" is the single byte 0xe9, at byte column 14 of line 2 (1-based).
NOT_UTF8 = b'{"question": "1+1?", "answer": "2"}\n{"text": "caf\xe9", "question": "2+2?", "answer": "4"}\n'
HUB_NOT_UTF8 = b'{"problem": "1+1?", "answer": "2"}\n{"text": "caf\xe9", "problem": "2+2?", "answer": "4"}\n'


@pytest.mark.parametrize("args, data", [
    (["-b", "mine.jsonl"], NOT_UTF8),
    (["-b", "math500", "--data-file", "mine.jsonl"], HUB_NOT_UTF8),
    (["-b", "aime24", "-B", "data_file=mine.jsonl"], HUB_NOT_UTF8),
], ids=["jsonl benchmark", "hub --data-file", "hub -B data_file"])
def test_non_utf8_data_file_names_file_and_line(tmp_path, args, data):
    (tmp_path / "mine.jsonl").write_bytes(data)
    line = one_error_line(ttscale("eval", *args, "--backend", "fake", cwd=tmp_path))
    assert "mine.jsonl:2: not UTF-8 (byte 0xe9 at column 14)" in line


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-problem run on the fake backend, copied by each test that spoils it."""
    root = tmp_path_factory.mktemp("finished")
    result = ttscale(*FAKE, "--n", "2", cwd=root)
    assert result.returncode == 0, result.stderr
    [run_dir] = (root / "runs").iterdir()
    return run_dir


BAD_LINES = {
    "not a record": ('{"foo": 1}', "no 'problem_id', 'chosen_rule'"),
    "a JSON list": ("[1, 2, 3]", "a JSON list, not an object"),
    "id not a string": (None, "'problem_id' is 7, not a JSON string"),
}


@pytest.mark.parametrize("command", ["eval", "compare"])
@pytest.mark.parametrize("bad_line, expected", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_samples_line_that_is_not_a_record_names_file_and_line(tmp_path, finished_run, command, bad_line, expected):
    run_dir = tmp_path / "runs" / finished_run.name
    shutil.copytree(finished_run, run_dir)
    samples = run_dir / "samples.jsonl"
    if bad_line is None:  # a real record, but with a number for an id
        bad_line = json.dumps({**json.loads(samples.read_text().splitlines()[0]), "problem_id": 7})
    with open(samples, "a") as handle:
        handle.write(bad_line + "\n")
    args = [*FAKE, "--n", "2"] if command == "eval" else ["compare", str(run_dir), "--bootstrap", "0"]
    line = one_error_line(ttscale(*args, cwd=tmp_path))  # eval: the resume reads the run first
    assert f"samples.jsonl:3: not a samples record ({expected}" in line


UNWRITABLE_OUTPUTS = {
    "compare -o under a file": (["compare", "{run}", "--bootstrap", "0", "-o", "blocker/plots"],
                                "cannot write to output directory blocker/plots (Not a directory); pass --out with a writable directory"),
    "report -o under a file": (["report", "{run}", "--bootstrap", "0", "-o", "blocker/r.html"],
                               "cannot write to output directory blocker (a file has that name); pass --output with a writable directory"),
    "report -o a directory": (["report", "{run}", "--bootstrap", "0", "-o", "."], ". is a directory; pass --output with a file name"),
    "report --plots-dir under a file": (["report", "{run}", "--bootstrap", "0", "--plots-dir", "blocker/p"],
                                        "pass --plots-dir with a writable directory"),
}


@pytest.mark.parametrize("args, expected", UNWRITABLE_OUTPUTS.values(), ids=UNWRITABLE_OUTPUTS.keys())
def test_an_output_that_cannot_be_written_is_one_line(tmp_path, finished_run, args, expected):
    # A regular file where a directory should be: writing under it fails for root too (a
    # read-only directory does not stop root, who runs some CI), with the same OSError path.
    (tmp_path / "blocker").write_text("")
    line = one_error_line(ttscale(*[a.format(run=finished_run) for a in args], cwd=tmp_path))
    assert expected in line


def test_limit_beyond_the_benchmark_says_how_many_it_has(tmp_path):
    result = ttscale("eval", "-b", "arithmetic", "-B", "size=3", "--backend", "fake", "--limit", "200", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Note: --limit 200, but arithmetic has only 3 problems; running all 3." in result.stdout
    assert "3 problems" in result.stdout  # the table's title
    quiet = ttscale("eval", "-b", "arithmetic", "-B", "size=3", "--backend", "fake", "--limit", "3", cwd=tmp_path)
    assert quiet.returncode == 0 and "Note: --limit" not in quiet.stdout


def default_sigint() -> None:
    """In the child before exec: SIGINT at its default. A process started with SIGINT ignored
    keeps it ignored (POSIX), and pytest may itself have been started that way (a background job,
    a CI runner): the test must exercise ttscale, not inherit its launcher's disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_a_run(tmp_path, sig):
    """Start a slow fake-backend run, send `sig` once it has started its backend; (exit code, stderr, run dir)."""
    # One problem at a time, each taking 5 s on the fake backend: 100 problems take over 8
    # minutes, so the run is certainly still going when the signal arrives. We send it once
    # the run has printed that it started the backend (inside the event loop).
    args = ["eval", "-b", "arithmetic", "--backend", "fake", "--concurrency", "1", "--backend-option", "delay_s=5"]
    process = subprocess.Popen([*TTSCALE, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=default_sigint)
    try:
        for line in process.stdout:
            if line.startswith("Starting the fake backend"):
                break
        else:
            pytest.fail(f"the run never started: {process.stderr.read()}")
        process.send_signal(sig)
        out, err = process.communicate(timeout=120)  # cancellation lands at the next await: seconds
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in out + err
    [run_dir] = (tmp_path / "runs").iterdir()
    return process.returncode, err, run_dir


def test_ctrl_c_during_a_run_says_how_to_resume_and_exits_130(tmp_path):
    code, err, run_dir = interrupt_a_run(tmp_path, signal.SIGINT)
    assert code == 130, err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last == f"interrupted: finished problems are saved in runs/{run_dir.name}; rerun the same command to resume"


def test_sigterm_during_a_run_takes_the_same_path_and_exits_143(tmp_path):
    code, err, run_dir = interrupt_a_run(tmp_path, signal.SIGTERM)
    assert code == 143, err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last == f"terminated: finished problems are saved in runs/{run_dir.name}; rerun the same command to resume"


def test_started_with_sigint_ignored_ttscale_keeps_ignoring_it_and_sigterm_still_ends_it(tmp_path):
    # What ttscale does when its launcher ignores SIGINT (docs/guide/running.md, "Stopping a run"): it keeps
    # ignoring it, as POSIX asks; SIGTERM still ends the run the documented way.
    args = ["eval", "-b", "arithmetic", "--backend", "fake", "--concurrency", "1", "--backend-option", "delay_s=5"]
    process = subprocess.Popen([*TTSCALE, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        for line in process.stdout:
            if line.startswith("Starting the fake backend"):
                break
        process.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=3)  # still running: the SIGINT was ignored
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, err
    assert [line for line in err.splitlines() if line.strip()][-1].startswith("terminated: finished problems are saved in runs/")
