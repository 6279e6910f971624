"""Execution seconds as a second cost axis in compare: pro-rated per candidate on subsamples as
FLOPs are, matched budgets on it with `--axis exec_cpu_s`, and "—" for runs that executed nothing."""

import asyncio
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from ttscale.analysis.report import build_comparison, matched_columns
from ttscale.analysis.runs import load_run
from ttscale.analysis.scaling import scaling_curves
from ttscale.backends.fake import FakeBackend
from ttscale.cli import app
from ttscale.code_exec import CODE_EXEC, EXECUTION, PROGRAM_EXEC, candidate_cpu_s
from ttscale.config import RunConfig
from ttscale.errors import ConfigError
from ttscale.runner import run_eval

N = 4
RIGHT, WRONG, SILENT = ("```python\nprint(3 + 4)\n```", "```python\nprint(3 - 4)\n```", "```python\nx = 1\n```")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A program-of-thought run (it executed programs) and a best-of-N run (it executed nothing)."""
    out = tmp_path_factory.mktemp("runs")
    bench = {"benchmark": "arithmetic", "benchmark_options": {"terms": 2, "digits": "1", "size": 3},
             "backend": "fake", "model": "fake", "output": out, "limit": 3}
    pot = RunConfig(**bench, strategy="program-of-thought", strategy_options={"n": N, "timeout_s": 2})
    plain = RunConfig(**bench, strategy="best-of-n", strategy_options={"n": N})
    first = asyncio.run(run_eval(pot, backend=FakeBackend(script=[RIGHT, WRONG, SILENT, RIGHT], num_params=100)))
    second = asyncio.run(run_eval(plain, backend=FakeBackend(num_params=100)))
    return first.run_dir, second.run_dir


def test_subsamples_pro_rate_execution_per_candidate(runs):
    pot_dir, plain_dir = runs
    pot = load_run(pot_dir)
    assert pot.kind == "best-of-n"  # subsampled by sample, as best-of-N
    record = pot.records[0]
    assert len(record.exec_cpu_s) == N and sum(record.exec_cpu_s) > 0
    [majority] = scaling_curves(pot, bootstrap=0, rules=["majority"])
    totals = np.asarray([sum(r.exec_cpu_s) for r in pot.records])
    for point in majority.points:  # every k-subset of N is priced: the mean is k/N of the total
        assert point.exec_cpu_s == pytest.approx(point.n / N * totals.mean())
    [plain] = scaling_curves(load_run(plain_dir), bootstrap=0, rules=["majority"])
    assert all(math.isnan(p.exec_cpu_s) for p in plain.points)


def test_records_name_each_candidates_run(runs):
    pot_dir, _ = runs
    line = json.loads((pot_dir / "samples.jsonl").read_text().splitlines()[0])
    assert [row["runs"] for row in line["trace_metadata"][PROGRAM_EXEC]] == [1, 1, 1, 1]


def test_matched_budgets_on_execution_seconds_leave_out_runs_that_executed_nothing(runs):
    comparison = build_comparison(runs, bootstrap=0, rules=["majority"], axis="exec_cpu_s")
    competing, _ = matched_columns(comparison)
    assert competing == ["program-of-thought · majority"]
    pot_curve = next(c for c in comparison.curves if c.strategy == "program-of-thought")
    costs = [p.exec_cpu_s for p in pot_curve.points]
    assert comparison.budgets[0].budget == pytest.approx(min(costs)) and comparison.budgets[-1].budget == pytest.approx(max(costs))
    assert set(comparison.budgets[0].accuracy) == {"program-of-thought · majority"}
    flops = build_comparison(runs, bootstrap=0, rules=["majority"])  # the default axis keeps both
    assert len(matched_columns(flops)[0]) == 2
    with pytest.raises(ConfigError, match="--axis"):
        build_comparison(runs, bootstrap=0, axis="joules")


def test_cli_shows_the_execution_column_and_the_axis(runs, tmp_path):
    result = CliRunner().invoke(app, ["compare", *map(str, runs), "--out", str(tmp_path), "--bootstrap", "0",
                                      "--rule", "majority", "--axis", "exec_cpu_s", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in result.stdout.splitlines()]
    header = next(r for r in rows if "exec CPU s" in r)
    column = header.index("exec CPU s")
    plain_rows = [r for r in rows if r[0].startswith("best-of-n")]
    assert plain_rows and all(r[column] == "—" for r in plain_rows)
    assert any(r[0] == "execution CPU seconds per problem" for r in rows)


def test_runs_recorded_only_as_a_total_are_shared_evenly():
    meta = {CODE_EXEC: [{"cpu_s": 1.0}, {"cpu_s": 3.0}], EXECUTION: {"runs": 4, "cpu_s": 6.0, "wall_s": 9.0}}
    assert candidate_cpu_s(meta) == [2.0, 4.0]  # 2 s of model-written tests' runs, 1 s each
    assert candidate_cpu_s({PROGRAM_EXEC: [{"cpu_s": 0.5}], EXECUTION: {"cpu_s": 0.5}}) == [0.5]
    assert candidate_cpu_s({"scorer": "verifier"}) is None
