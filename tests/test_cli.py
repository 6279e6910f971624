"""The CLI as a user runs it, on the fake backend: tables, one-line errors, SIGKILL and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest


def ttscale(*args, cwd, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "ttscale.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def one_line_error(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return " ".join(lines)


def test_eval_on_fake_backend_prints_table(tmp_path):
    result = ttscale("eval", "--benchmark", "arithmetic", "--backend", "fake", "--n", "4", "--limit", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for label in ("accuracy · majority (chosen)", "accuracy · first", "accuracy · oracle", "pass@1", "pass@4", "generated tokens", "FLOPs"):
        assert label in result.stdout
    [run_dir] = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["problems"] == 3


def test_the_eval_table_labels_gold_guided_accuracy_an_upper_bound(tmp_path):
    args = ["eval", "--benchmark", "arithmetic", "--backend", "fake", "--n", "4", "--limit", "2", "--selection", "oracle"]
    result = subprocess.run(
        [sys.executable, "-m", "ttscale.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200"},  # one table row per line
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip() for line in result.stdout.splitlines() if line.count("│") >= 3}
    assert "accuracy · oracle (chosen) (upper bound: uses gold)" in rows
    assert "accuracy · majority" in rows and "accuracy · first" in rows  # no verifier: not gold-guided


def test_unknown_names_suggest_the_right_one(tmp_path):
    assert "did you mean 'arithmetic'" in one_line_error(ttscale("eval", "-b", "arithmatic", "--backend", "fake", cwd=tmp_path)).lower()
    assert "did you mean 'best-of-n'" in one_line_error(
        ttscale("eval", "-b", "arithmetic", "-s", "best-of-m", "--backend", "fake", cwd=tmp_path)
    ).lower()
    assert "did you mean 'smollm2-135m'" in one_line_error(ttscale("models", "prepare", "smollm2-13m", cwd=tmp_path)).lower()


def test_n_below_one_names_the_field(tmp_path):
    message = one_line_error(ttscale("eval", "-b", "arithmetic", "--backend", "fake", "--n", "0", cwd=tmp_path))
    assert "n:" in message and "greater than or equal to 1" in message


def test_malformed_jsonl_names_file_and_line(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": \n')
    message = one_line_error(ttscale("eval", "-b", str(data), "--backend", "fake", cwd=tmp_path))
    assert "mine.jsonl:2" in message


def test_unwritable_output_is_one_line(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    message = one_line_error(ttscale("eval", "-b", "arithmetic", "--backend", "fake", "--limit", "1", "-o", str(blocker / "x"), cwd=tmp_path))
    assert "cannot write to output directory" in message and "--output" in message


def test_sigkill_mid_run_then_resume_counts_every_problem_once(tmp_path):
    args = ["eval", "-b", "arithmetic", "--backend", "fake", "--n", "2", "--limit", "12",
            "--concurrency", "1", "--backend-option", "delay_s=0.2"]
    process = subprocess.Popen([sys.executable, "-m", "ttscale.cli", *args], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list((tmp_path / "runs").glob("*/samples.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            samples = found[0]
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert samples is not None, "the run never wrote three problems"
    done_before = len(samples.read_text().splitlines())
    assert 3 <= done_before < 12

    result = ttscale(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"resumed {done_before}" in result.stdout.replace("\n", " ")
    ids = [json.loads(line)["problem_id"] for line in samples.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 12
    assert json.loads((samples.parent / "summary.json").read_text())["problems"] == 12


def test_flags_reach_the_backend_and_benchmark_options(tmp_path):
    # The fake backend rejects an unknown option by name, which proves --base-url reached it.
    message = one_line_error(ttscale("eval", "-b", "arithmetic", "--backend", "fake", "--base-url", "http://127.0.0.1:1/v1", cwd=tmp_path))
    assert "base_url" in message
    message = one_line_error(ttscale("eval", "-b", "arithmetic", "--backend", "fake", "--data-file", "x.jsonl", cwd=tmp_path))
    assert "data_file" in message
