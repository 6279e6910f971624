"""AllocationPolicy: fitting from runs, monotone choices, clear errors, batch allocation, plans."""

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ttscale.allocation.evaluate import evaluate_policy
from ttscale.allocation.fit import fit_policy
from ttscale.allocation.policy import AllocationError, AllocationPolicy, greedy_allocation, upper_hull
from ttscale.problems import split_of
from ttscale.analysis.runs import load_run, subsample
from ttscale.analysis.coverage import coverage_model
from ttscale.backends.fake import FakeBackend
from ttscale.cli import app
from ttscale.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from _allocation_data import write_run  # noqa: E402

LEVELS = [0.0, 0.05, 0.2, 0.4, 0.7, 1.0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """80 problems from hopeless to always solved, 16 samples each."""
    rng = random.Random(1)
    return write_run(tmp_path_factory.mktemp("runs"), "bon", [rng.choice(LEVELS) for _ in range(80)])


@pytest.fixture(scope="module")
def policy(run_dir):
    return fit_policy([run_dir], split="a")


def test_policy_records_model_benchmark_hash_and_round_trips(policy, tmp_path):
    assert (policy.version, policy.model, policy.benchmark, policy.split) == (2, "fake", "arithmetic", "a")
    assert policy.problem_ids and all(split_of(p) == "a" for p in policy.problem_ids)
    assert len(policy.data_hash) == 64 and policy.num_bins == 5
    path = policy.save(tmp_path / "policy.json")
    assert AllocationPolicy.load(path) == policy


def test_data_hash_changes_with_the_fitting_data(run_dir, policy):
    assert fit_policy([run_dir], split="b").data_hash != policy.data_hash


def test_policy_file_errors_name_the_file(tmp_path, policy):
    with pytest.raises(ConfigError, match="does not exist"):
        AllocationPolicy.load(tmp_path / "missing.json")
    old = json.loads(policy.model_dump_json())
    old["version"] = 0
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="old.json: policy version 0"):
        AllocationPolicy.load(tmp_path / "old.json")
    del old["model"]
    old["version"] = 2
    (tmp_path / "bad.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="model"):
        AllocationPolicy.load(tmp_path / "bad.json")


@pytest.mark.parametrize("source", ["oracle", "predicted"])
def test_policy_is_monotone_in_budget(policy, source):
    for b in range(policy.num_bins):
        table = policy.table(b, source)
        cheapest = table.frontier_flops[0].flops
        budgets = np.geomspace(cheapest, 20 * cheapest, 60)
        accuracies = [policy.choose(b, budget_flops=x, source=source).accuracy for x in budgets]
        assert accuracies == sorted(accuracies)
        first = table.frontier_samples[0].samples
        picked = [policy.choose(b, budget_samples=s, source=source).accuracy for s in range(first, 33)]
        assert picked == sorted(picked)
        for x in budgets:  # and never over budget
            assert policy.choose(b, budget_flops=x, source=source).flops <= x


def test_choice_is_the_best_setting_within_budget(policy):
    for table in policy.oracle_tables:
        for budget in sorted({e.flops for e in table.entries}):
            best = max(e.accuracy for e in table.entries if e.flops <= budget)
            assert policy.choose(table.bin, budget_flops=budget).accuracy == best


def test_hopeless_and_trivial_bins_get_the_minimum_and_middling_bins_buy_samples(tmp_path):
    run = write_run(tmp_path, "three-levels", [0.0] * 20 + [0.45] * 20 + [1.0] * 20, seed=3)
    # The always-solved bin also holds two lucky middling problems; min_gain ignores their
    # 2-3 point gains, as it would noise.
    policy = fit_policy([run], min_gain=0.05)
    bins = {level: policy.oracle_tables[b] for level, b in (("hopeless", 0), ("trivial", policy.num_bins - 2))}
    for table in bins.values():
        assert [e.setting.samples for e in table.frontier_flops] == [1]
        assert policy.choose(table.bin, budget_flops=1e12).setting.samples == 1
    middle = max(policy.oracle_tables, key=lambda t: len(t.frontier_flops))
    assert policy.choose(middle.bin, budget_flops=1e12).setting.samples >= 8


def test_clear_errors(policy):
    cheapest = policy.table(2).frontier_flops[0]
    with pytest.raises(AllocationError, match="below the cheapest setting for bin 2"):
        policy.allocate("What is 2 + 2?", budget_flops=cheapest.flops / 2, difficulty=2)
    with pytest.raises(AllocationError, match="fitted for model 'fake', not 'other-model'"):
        policy.allocate("What is 2 + 2?", budget_flops=1e9, difficulty=2, model="other-model")
    for bad in (5, -1, 7):
        with pytest.raises(AllocationError, match="unknown difficulty bin"):
            policy.allocate("What is 2 + 2?", budget_flops=1e9, difficulty=bad)
    with pytest.raises(AllocationError, match="exactly one budget"):
        policy.choose(2, budget_flops=1e9, budget_samples=4)
    with pytest.raises(AllocationError, match="difficulty=BIN, or backend"):
        policy.allocate("What is 2 + 2?", budget_flops=1e9)


def test_allocate_with_difficulty_is_cheap_and_runs(policy):
    backend = FakeBackend("fake", answer_key={"2 + 2": "4"}, accuracy=0.6, num_params=1000)
    plan = policy.allocate("What is 2 + 2?", budget_samples=8, difficulty=2, backend=backend)
    assert backend.requests == []  # no probe ran
    assert plan.bin == 2 and plan.bin_source == "given"
    assert "\\boxed{}" in plan.problem.prompt[0].content  # the fitting runs' template
    import asyncio

    trace = asyncio.run(plan.run(backend))
    assert len(trace.candidates) == plan.setting.samples
    assert trace.cost.generated_tokens == sum(c.num_tokens for c in trace.candidates)
    with pytest.raises(AllocationError, match="not 'other'"):
        asyncio.run(plan.run(FakeBackend("other")))


def test_probe_predicts_a_bin_and_its_samples_are_reused(policy):
    import asyncio

    backend = FakeBackend("fake", answer_key={"2 + 2": "4"}, accuracy=0.5, num_params=1000)
    plan = policy.allocate("What is 2 + 2?", budget_samples=16, backend=backend, probe=True)
    assert plan.bin_source == "predicted" and 0 <= plan.bin < 5
    assert len(plan.probe.candidates) == policy.probe.k0
    trace = asyncio.run(plan.run(backend))
    total = max(plan.setting.samples, policy.probe.k0)
    assert len(trace.candidates) == total
    assert trace.candidates[: policy.probe.k0] == plan.probe.candidates
    probe_tokens = plan.probe.cost.generated_tokens
    assert trace.metadata["probe_cost"]["generated_tokens"] == probe_tokens
    assert trace.cost.generated_tokens == sum(c.num_tokens for c in trace.candidates)
    # A fresh continuation: the samples after the probe's are not its repeats.
    if total > policy.probe.k0:
        assert len(backend.requests) == 2 and backend.requests[1].params.seed != backend.requests[0].params.seed


def test_probe_runs_only_where_it_pays(policy):
    backend = FakeBackend("fake", answer_key={"2 + 2": "4"}, accuracy=0.5, num_params=1000)
    for samples in range(1, 17):
        plan = policy.allocate("What is 2 + 2?", budget_samples=samples, backend=backend)
        pays = policy.probe_pays(budget_samples=samples)
        assert plan.bin_source == ("predicted" if pays else "unprobed")
        if not pays:
            assert plan.probe is None and plan.entry == policy.choose_unprobed(budget_samples=samples)
    assert not policy.probe_pays(budget_samples=policy.probe.k0 - 1)  # the probe alone is over budget


def brute_force(curves, total):
    best = -1.0
    for picks in itertools.product(*(range(len(c)) for c in curves)):
        if sum(c[i][0] for c, i in zip(curves, picks)) <= total:
            best = max(best, sum(c[i][1] for c, i in zip(curves, picks)))
    return best


def test_greedy_matches_brute_force_on_fitted_coverage_curves():
    rng = np.random.default_rng(0)
    for _ in range(40):
        prompts = rng.integers(2, 5)
        # Concave fitted curves c(k) = exp(a·k^b) in unit sample steps (a·b·k^b < 1 - b).
        curves = []
        for _ in range(prompts):
            a, b = -rng.uniform(0.05, 0.9), -rng.uniform(0.2, 1.0)
            curves.append([(float(k), float(coverage_model(k, a, b))) for k in range(1, 7)])
        total = float(rng.integers(prompts, 6 * prompts + 1))
        picks = greedy_allocation(curves, total)
        assert sum(curves[i][p][0] for i, p in enumerate(picks)) <= total
        assert sum(curves[i][p][1] for i, p in enumerate(picks)) == pytest.approx(brute_force(curves, total))


def test_greedy_matches_brute_force_on_random_concave_curves():
    rng = np.random.default_rng(1)
    for _ in range(60):
        curves = []
        for _ in range(rng.integers(2, 5)):
            gains = np.sort(rng.uniform(0, 0.3, rng.integers(1, 6)))[::-1]  # diminishing returns
            curves.append([(float(k + 1), float(v)) for k, v in enumerate(np.concatenate([[rng.uniform(0, 0.3)], gains]).cumsum())])
        total = float(rng.integers(len(curves), sum(len(c) for c in curves) + 1))
        picks = greedy_allocation(curves, total)
        assert sum(curves[i][p][1] for i, p in enumerate(picks)) == pytest.approx(brute_force(curves, total))


def test_flat_curves_keep_the_minimum_and_budget_goes_where_it_helps():
    hopeless = [(1.0, 0.0), (2.0, 0.0), (4.0, 0.0)]
    easy = [(1.0, 1.0), (2.0, 1.0), (4.0, 1.0)]
    middling = [(1.0, 0.3), (2.0, 0.5), (4.0, 0.7)]
    assert greedy_allocation([hopeless, easy, middling], 7.0) == [0, 0, 2]
    with pytest.raises(AllocationError, match="below the cheapest"):
        greedy_allocation([hopeless, easy], 1.0)


def test_upper_hull_skips_points_under_the_chord():
    assert upper_hull([(1, 0.1), (2, 0.12), (3, 0.5), (4, 0.55)]) == [0, 2, 3]


def test_batch_allocation_gives_hopeless_and_easy_prompts_the_minimum(policy):
    bins = [0, policy.num_bins - 1, 2, 2]
    cheapest = [policy.table(b).frontier_samples[0].setting.samples for b in bins]
    entries = policy.allocate_batch(bins, total_samples=40)
    assert entries[0].setting.samples == cheapest[0]  # hopeless
    assert sum(e.setting.samples for e in entries) <= 40
    assert entries[2].setting.samples >= 8


def test_subsampling_matches_direct_computation(run_dir):
    run = load_run(run_dir)
    j, record = next((j, r) for j, r in enumerate(run.records) if 0 < r.num_correct < r.n)
    table = subsample(run, ns=[1, 16], rules=["majority", "first"], subsets=64)
    # One sample: every one of the 16 draws is enumerated, so majority of one is exactly pass@1.
    assert table.correct["majority"][0, j] == pytest.approx(record.num_correct / record.n)
    assert table.correct["first"][0, j] == pytest.approx(record.num_correct / record.n)
    assert table.cost["flops"][1, j] == pytest.approx(record.cost["flops"])  # all samples: the recorded cost
    assert table.correct["majority"][1, j] in (0.0, 1.0)


def test_split_is_stable_and_halves_the_problems():
    halves = [split_of(f"arithmetic-t2-4d1-2-s0-{i}") for i in range(200)]
    assert halves == [split_of(f"arithmetic-t2-4d1-2-s0-{i}") for i in range(200)]
    assert 70 < halves.count("a") < 130


def test_fit_errors_name_the_problem(tmp_path, run_dir):
    with pytest.raises(ConfigError, match="not a run directory"):
        fit_policy([tmp_path])
    other = write_run(tmp_path, "other-model", [0.5] * 10, model="other")
    with pytest.raises(ConfigError, match="runs differ in model"):
        fit_policy([run_dir, other])
    with pytest.raises(ConfigError, match="k0=32"):
        fit_policy([run_dir], k0=32)


def test_held_out_evaluation_compares_with_best_of_n(policy, run_dir):
    report = evaluate_policy(policy, [run_dir], split="b")
    assert report["problems"] > 20 and 0 <= report["bin_agreement"] <= 1
    assert [p["n"] for p in report["best_of_n"]] == [1, 2, 4, 8, 16]
    modes = {row["mode"].split()[0] for row in report["rows"]}
    assert {"oracle", "predicted"} <= modes
    for row in report["rows"]:
        assert 0 <= row["accuracy"] <= 1 and row["flops"] > 0
        if row["saving"] is not None:
            assert row["saving"] == pytest.approx(row["bon_flops_for_accuracy"] / row["flops"])
    with pytest.raises(AllocationError, match="fitted for model 'other'"):
        evaluate_policy(policy.model_copy(update={"model": "other"}), [run_dir], split="b")


def test_cli_fit_and_allocate(tmp_path, run_dir):
    runner = CliRunner()
    result = runner.invoke(app, ["coverage-fit", str(run_dir), "--resamples", "20", "-o", str(tmp_path / "fit.png")])
    assert result.exit_code == 0, result.output
    assert "bin 0" in result.output and (tmp_path / "fit.png").stat().st_size > 10_000
    result = runner.invoke(app, ["allocate", "fit", str(run_dir), "--split", "a", "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert AllocationPolicy.load(tmp_path / "p.json").split == "a"
    result = runner.invoke(app, ["allocate", "eval", str(tmp_path / "p.json"), str(run_dir), "--split", "b", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "Predicted bin = oracle bin" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["rows"]


def test_import_allocation_policy_imports_no_vllm():
    code = (
        "import sys\nfrom ttscale import AllocationPolicy, solve\n"
        "assert callable(solve) and AllocationPolicy.__name__ == 'AllocationPolicy'\n"
        "loaded = [m for m in sys.modules if m == 'vllm' or m.startswith('vllm.') or m == 'torch']\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_solve_runs_a_registered_strategy_on_a_bare_prompt():
    import asyncio

    import ttscale

    backend = FakeBackend("fake", answer_key={"2 + 2": "4"}, accuracy=1.0, num_params=1000)
    trace = asyncio.run(ttscale.solve("What is 2 + 2?", backend=backend, options={"n": 3}))
    assert trace.answer == "4" and len(trace.candidates) == 3
    assert trace.cost.calls == 1
    assert trace.cost.generated_tokens == sum(c.num_tokens for c in trace.candidates)
    with pytest.raises(ValueError, match="prompt is empty"):
        asyncio.run(ttscale.solve("  ", backend=backend))


def test_runs_of_one_setting_over_different_problems_pool(tmp_path, run_dir):
    first = write_run(tmp_path, "first", [0.0, 0.3, 0.6, 1.0] * 5, seed=4)
    second = write_run(tmp_path, "second", [0.1, 0.5, 0.9] * 5, seed=5)
    for path, prefix in ((first, "first"), (second, "second")):  # other benchmark options: other ids
        lines = [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]
        for record in lines:
            record["problem_id"] = f"{prefix}-{record['problem_id']}"
        (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    policy = fit_policy([first, second])
    assert policy.problems == 35 and len(policy.runs) == 2
