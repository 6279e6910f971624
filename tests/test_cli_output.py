"""Every table command reads on an 80-column terminal (no header or cell cut to "…"), and prints
the same tables as json, csv or markdown (--format) for a program or a page. Fake-backend runs."""

from __future__ import annotations

import csv
import io
import json
import shutil
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ttscale.allocation.fit import fit_policy
from ttscale.testing import write_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from _allocation_data import write_run  # noqa: E402

QUESTIONS = 40
ANSWER_KEY = {f"What is {i} + {i}?": str(2 * i) for i in range(QUESTIONS)}
FAKE = ["--backend", "fake", "--backend-option", "num_params=1000", "--backend-option", "accuracy=0.5"]


def ttscale(*args: str, cwd: Path, columns: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "ttscale.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two graded fake runs (a best-of-8 with logprobs, and a beam search), a policy fitted on half
    a of a synthetic run, and an ORM trained on half a of the best-of-8 run."""
    root = tmp_path_factory.mktemp("output")
    problems = write_jsonl(root / "p.jsonl", ({"id": f"p{i}", "question": q, "answer": a} for i, (q, a) in enumerate(ANSWER_KEY.items())))
    (root / "answers.json").write_text(json.dumps(ANSWER_KEY))
    answer_key = ["--backend-option", f"answer_key={json.dumps(ANSWER_KEY)}"]
    for strategy in (["-s", "best-of-n", "--n", "8", "-S", "logprobs=5"], ["-s", "beam-search", "--n", "4", "-v", "oracle-orm"]):
        done = ttscale("eval", "-b", problems, *strategy, *FAKE, *answer_key, "-o", root / "runs", cwd=root)
        assert done.returncode == 0, done.stderr
    best_of_n, beam = sorted((root / "runs").iterdir(), key=lambda d: "beam" in d.name)
    synthetic = write_run(root / "synthetic", "bon", [random.Random(i).choice([0.1, 0.5, 0.9]) for i in range(80)])
    policy = fit_policy([synthetic], split="a").save(root / "policy.json")
    trained = ttscale("verifier", "train", best_of_n, "--kind", "orm", "-o", root / "orm", cwd=root)
    assert trained.returncode == 0, trained.stderr
    return {"root": root, "problems": problems, "best_of_n": best_of_n, "beam": beam, "synthetic": synthetic,
            "policy": policy, "orm": root / "orm", "answer_key": answer_key}


def table_commands(runs) -> dict[str, list]:
    return {
        "eval": ["eval", "-b", runs["problems"], "-s", "best-of-n", "--n", "8", "-S", "logprobs=5", *FAKE, *runs["answer_key"],
                 "-o", runs["root"] / "runs"],  # resumes the fixture's run: the summary table again
        "compare": ["compare", runs["best_of_n"], runs["beam"], "--bootstrap", "20", "--subsets", "5"],
        "adaptive": ["adaptive", runs["best_of_n"], "--orders", "2", "--bootstrap", "20"],
        "allocate eval": ["allocate", "eval", runs["policy"], runs["synthetic"], "--split", "b"],
        "verifier eval": ["verifier", "eval", runs["orm"], runs["best_of_n"], "--bootstrap", "20"],
        "allocate fit": ["allocate", "fit", runs["synthetic"], "--split", "a", "-o", runs["root"] / "refit.json"],
        "coverage-fit": ["coverage-fit", runs["best_of_n"], "--resamples", "10", "-o", runs["root"] / "coverage.png"],
    }


COMMANDS = ["eval", "compare", "adaptive", "allocate eval", "verifier eval", "allocate fit", "coverage-fit"]


@pytest.mark.parametrize("command", COMMANDS)
def test_tables_read_on_an_80_column_terminal(runs, command):
    done = ttscale(*table_commands(runs)[command], cwd=runs["root"])
    assert done.returncode == 0, done.stderr
    assert "┃" in done.stdout  # a table was printed
    assert "…" not in done.stdout, done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80


@pytest.mark.parametrize("command", COMMANDS)
def test_json_output_parses_and_holds_every_table(runs, command):
    done = ttscale(*table_commands(runs)[command], "--format", "json", cwd=runs["root"])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["tables"], report
    for table in report["tables"]:
        assert table["rows"] and all(list(row) == table["columns"] for row in table["rows"])
        assert not any("[/" in cell for row in table["rows"] for cell in row.values())  # no rich markup
    if command == "adaptive":  # one table of every column, however narrow the terminal
        assert "saving FLOPs [95% CI]" in report["tables"][0]["columns"]
    if command == "eval":
        assert report["tables"][0]["rows"][0]["metric"].startswith("accuracy")


@pytest.mark.parametrize("command", COMMANDS)
def test_csv_output_parses_with_the_csv_module(runs, command):
    done = ttscale(*table_commands(runs)[command], "--format", "csv", cwd=runs["root"])
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    tables = json.loads(ttscale(*table_commands(runs)[command], "--format", "json", cwd=runs["root"]).stdout)["tables"]
    headers = [table["columns"] for table in tables]
    assert [row for row in rows if row in headers] == headers  # each table's header, in order
    body = sum(len(table["rows"]) for table in tables)
    titles = len(tables) if len(tables) > 1 else 0
    blank = len(tables) - 1
    assert len(rows) == len(headers) + body + titles + blank


@pytest.mark.parametrize("command", COMMANDS)
def test_markdown_output_is_pipe_tables(runs, command):
    done = ttscale(*table_commands(runs)[command], "--format", "markdown", cwd=runs["root"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("| ---") or line.startswith("| ---:")]
    assert rules
    for i in rules:
        header = lines[i - 1]
        assert header.startswith("| ") and header.count(" | ") == lines[i].count(" | ")
    assert "┃" not in done.stdout and "…" not in done.stdout


def test_the_old_fit_says_what_it_became(runs):
    done = ttscale("fit", runs["best_of_n"], cwd=runs["root"])
    assert done.returncode == 2
    assert "`ttscale fit` is now `ttscale coverage-fit`" in done.stderr and "`ttscale allocate fit`" in done.stderr


def test_split_all_means_every_problem(runs):
    every = json.loads(ttscale("compare", runs["best_of_n"], "--bootstrap", "0", "--format", "json", cwd=runs["root"]).stdout)
    also = json.loads(ttscale("compare", runs["best_of_n"], "--bootstrap", "0", "--split", "all", "--format", "json",
                              cwd=runs["root"]).stdout)
    half = json.loads(ttscale("compare", runs["best_of_n"], "--bootstrap", "0", "--split", "a", "--format", "json",
                              cwd=runs["root"]).stdout)
    assert every["tables"] == also["tables"]
    assert every["tables"] != half["tables"]


def test_allocation_values_print_in_one_short_line(runs):
    """print(plan) used to dump the whole policy (kilobytes); each value type prints what names it."""
    from ttscale.allocation.policy import AllocationPolicy

    policy = AllocationPolicy.load(runs["policy"])
    plan = policy.allocate("What is 2 + 2?", budget_samples=8, difficulty=2)
    table = policy.predicted_tables[2]
    entry = table.frontier_flops[-1]
    shown = [str(value) for value in (plan, policy, policy.probe, table, entry, entry.setting)]
    assert all("\n" not in text and len(text) < 200 for text in shown), shown
    assert str(plan) == repr(plan) == f"Plan({plan.problem.id}: {plan.describe()}; bin 2 (given); budget 8 samples)"
    assert str(entry.setting) == repr(entry.setting) == f"Setting({entry.setting.label()})"
    assert f"bin {table.bin}: {len(table.entries)} settings" in str(table)
    assert f"fitted on {policy.problems} problems of split a" in str(policy)


def test_labels_that_name_their_run_keep_the_run_id(runs, tmp_path):
    """Two runs of one strategy and model are told apart by '[run id]' in their labels: data,
    never read as a rich style tag (which would print both as the same label)."""
    twin = tmp_path / "twin-of-best-of-n"
    shutil.copytree(runs["best_of_n"], twin)
    done = ttscale("compare", runs["best_of_n"], twin, "--bootstrap", "0", "--format", "json", cwd=runs["root"])
    assert done.returncode == 0, done.stderr
    curves = {row["curve"] for row in json.loads(done.stdout)["tables"][0]["rows"]}
    assert f"majority [{runs['best_of_n'].name}]" in curves
    assert "majority [twin-of-best-of-n]" in curves
