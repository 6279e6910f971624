"""The allocator's numbers are honest: the same FLOPs as compare, the probe paid by every setting,
held-out evaluation refused on fitted problems, bad budgets and policy files refused in one line."""

import asyncio
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ttscale.allocation.evaluate import evaluate_policy
from ttscale.allocation.fit import fit_policy, load_fit_data
from ttscale.allocation.policy import AllocationError, AllocationPolicy, drawn_samples
from ttscale.analysis.report import build_comparison
from ttscale.analysis.runs import load_run, price, pricing_subsets
from ttscale.backends.fake import FakeBackend
from ttscale.config import RunConfig
from ttscale.runner import run_eval

sys.path.insert(0, str(Path(__file__).parent))
from _allocation_data import write_run  # noqa: E402

LEVELS = [0.0, 0.05, 0.2, 0.4, 0.7, 1.0]
SHAPE = {"n_layers": 2, "d_model": 8, "n_heads": 2, "n_kv_heads": 1, "head_dim": 4}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A scored best-of-16 run (verifier cost 5e4 per problem) and a beam-search run of the same 60 problems."""
    root = tmp_path_factory.mktemp("runs")
    rng = random.Random(2)
    levels = [rng.choice(LEVELS) for _ in range(60)]
    bon = write_run(root, "bon", levels, verifier="llm-judge-prm", verifier_flops=5e4)
    beam = write_run(root, "beam", levels, n=4, seed=9, strategy="beam-search", verifier="llm-judge-prm", verifier_flops=2e4)
    return bon, beam


# -- one price per setting -------------------------------------------------------------------------


async def test_compare_and_the_allocator_report_the_same_flops_for_every_best_of_n_setting(tmp_path, write_problems):
    """A recorded run with a model shape (so the attention term counts): every best-of-n setting
    the policy holds costs exactly what compare's curve says at that n."""
    problems = write_problems(*({"id": f"p{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(12)),
                              name="p.jsonl")
    config = RunConfig(benchmark=str(problems), backend="fake", model="fake", output=tmp_path / "runs",
                       strategy_options={"n": 8},
                       backend_options={"num_params": 1000, "shape": SHAPE, "accuracy": 0.5,
                                        "answer_key": {f"{i} + {i}": str(2 * i) for i in range(12)}})
    run_dir = (await run_eval(config)).run_dir
    policy = fit_policy([run_dir], k0=2)
    curves = {c.rule: c for c in build_comparison([run_dir], bootstrap=0).curves}
    settings = [e for e in policy.unprobed.entries if e.setting.strategy == "best-of-n"]
    assert sorted(e.setting.samples for e in settings) == [1, 2, 4, 8]
    for entry in settings:
        rule = entry.setting.options["selection"]
        point = next(p for p in curves["majority" if rule == "first" else rule].points if p.n == entry.setting.samples)
        assert entry.flops == pytest.approx(point.flops, rel=1e-12), entry.setting.label()


# -- the probe's cost, for every setting -----------------------------------------------------------


@pytest.mark.parametrize("statistic", ["agreement", "verifier"])
def test_every_setting_planned_after_the_probe_pays_for_it(runs, statistic):
    bon, beam = runs
    k0 = 4
    data = load_fit_data([bon, beam], "all", 0, k0, statistic)
    reference = load_run(bon)
    for record in reference.records:
        # The probe is the first k0 samples: their prompt once and decoding, plus the verifier's
        # share (k0 of 16 scored) only when the probe reads verifier scores.
        expected = 2.0 * 1000 * (20 + sum(s.num_tokens for s in record.samples[:k0]))
        expected += 5e4 * k0 / 16 if statistic == "verifier" else 0.0
        assert data.probe_flops[record.problem_id] == pytest.approx(expected)
    reused = cold = 0
    for key, (setting, probed) in data.probed.items():
        _, outcomes = data.outcomes[key]
        for p in data.problems:
            if setting.reuses_probe:  # the probe's samples are the first of the setting's: priced together
                record = next(r for r in reference.records if r.problem_id == p)
                subsets = pricing_subsets(record.n, max(setting.samples, k0), k0)
                assert probed[p][1] == pytest.approx(price(reference, record, subsets)["flops"])
                assert probed[p][1] >= data.probe_flops[p] - 1e-9
                reused += 1
            else:  # verifier rules and the beam-search run: their own cost plus the probe's
                assert probed[p][1] == pytest.approx(outcomes[p][1] + data.probe_flops[p])
                cold += 1
    assert reused and cold
    beam_key = next(k for k, (s, _) in data.probed.items() if s.strategy == "beam-search")
    assert beam_key  # the run other than the reference pays the probe too (it did not before)
    policy = fit_policy([bon, beam], k0=k0, statistic=statistic)
    for table in policy.predicted_tables:  # and the sample counts say the same
        for entry in table.entries:
            assert entry.samples == drawn_samples(entry.setting, k0)
            assert entry.samples == (max(entry.setting.samples, k0) if entry.setting.reuses_probe else entry.setting.samples + k0)
    assert policy.probe.statistic == statistic
    assert policy.probe.verifier == ("llm-judge-prm" if statistic == "verifier" else None)
    expected_mean = np.mean([data.probe_flops[p] for p in data.problems])
    assert policy.probe.mean_flops == pytest.approx(expected_mean)


# -- held out by construction ----------------------------------------------------------------------


@pytest.mark.parametrize("fit_split, eval_split", [("all", "b"), ("a", "all"), ("a", "a")])
def test_evaluation_on_fitted_problems_is_refused(runs, fit_split, eval_split):
    bon, _ = runs
    policy = fit_policy([bon], split=fit_split)
    with pytest.raises(AllocationError, match="were fitted on .*refit on one half"):
        evaluate_policy(policy, [bon], split=eval_split)


def test_the_policy_records_what_it_was_fitted_on_and_held_out_evaluation_runs(runs):
    bon, _ = runs
    policy = fit_policy([bon], split="a")
    assert set(policy.problem_ids) == set(load_fit_data([bon], "a").problems)
    report = evaluate_policy(policy, [bon], split="b")
    assert report["problems"] == 60 - len(policy.problem_ids)
    oracle_rows = [row for row in report["rows"] if row["mode"].startswith("oracle")]
    assert oracle_rows and all(row["upper_bound"] and "upper bound" in row["mode"] for row in oracle_rows)
    assert not any(row["upper_bound"] for row in report["rows"] if not row["mode"].startswith("oracle"))


# -- budgets and policy files: clear errors --------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, 0.0])
def test_library_refuses_budgets_that_are_not_finite_and_positive(runs, bad):
    bon, _ = runs
    policy = fit_policy([bon], split="a")
    with pytest.raises(AllocationError, match="budget_flops must be a finite number above 0"):
        policy.allocate("What is 2 + 2?", budget_flops=bad, difficulty=2)
    with pytest.raises(AllocationError, match="total_flops must be a finite number above 0"):
        policy.allocate_batch([0, 1], total_flops=bad)
    with pytest.raises(AllocationError, match="budget_flops must be a finite number above 0"):
        policy.probe_pays(budget_flops=bad)
    with pytest.raises(AllocationError, match="--budget must be a finite number above 0"):
        evaluate_policy(policy, [bon], split="b", budgets=[bad])


def test_a_policy_with_empty_tables_is_refused_at_load(runs, tmp_path):
    bon, _ = runs
    data = json.loads(fit_policy([bon], split="a").model_dump_json())
    data["oracle_tables"][1]["entries"] = []
    data["oracle_tables"][1]["frontier_flops"] = []
    (tmp_path / "empty.json").write_text(json.dumps(data))
    from ttscale.errors import ConfigError

    with pytest.raises(ConfigError, match="empty.json: oracle table of bin 1 is empty; refit"):
        AllocationPolicy.load(tmp_path / "empty.json")


def ttscale(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ttscale.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cli_inputs(runs, tmp_path_factory):
    """A policy fitted on half a, one with an empty table, and a run of only 2 problems (all with
    a model shape, so that no warning about an unknown shape shares stderr with the error)."""
    root = tmp_path_factory.mktemp("cli")
    rng = random.Random(3)
    bon = write_run(root, "bon", [rng.choice(LEVELS) for _ in range(40)], shape=SHAPE)
    policy = fit_policy([bon], split="a")
    policy.save(root / "policy.json")
    empty = json.loads(policy.model_dump_json())
    empty["predicted_tables"][0]["entries"] = []
    (root / "empty.json").write_text(json.dumps(empty))
    nan = json.loads(policy.model_dump_json())
    nan["oracle_edges"][0] = float("nan")
    (root / "nan.json").write_text(json.dumps(nan))  # Python writes NaN, and reads it back
    (root / "blocker").write_text("")  # a file where a directory should be: no file can be written under it
    unpriced = root / "unpriced"  # the same run, as if its model's size had been unknown
    unpriced.mkdir()
    for name in ("config.json", "backend.json"):
        (unpriced / name).write_text((bon / name).read_text())
    records = [json.loads(line) for line in (bon / "samples.jsonl").read_text().splitlines()]
    (unpriced / "samples.jsonl").write_text("".join(
        json.dumps({**r, "cost": {**r["cost"], "flops": 0.0, "unpriced_calls": 1}}) + "\n" for r in records))
    write_run(root, "two", [0.5, 0.5], shape=SHAPE)
    return root, bon


@pytest.mark.parametrize("args, message", [
    (["allocate", "eval", "{root}/policy.json", "{bon}", "--split", "b", "--budget", "-1"], "--budget must be a finite number above 0"),
    (["allocate", "eval", "{root}/policy.json", "{bon}", "--split", "b", "--budget", "0"], "--budget must be a finite number above 0"),
    (["allocate", "eval", "{root}/policy.json", "{bon}", "--split", "b", "--budget", "nan"], "--budget must be a finite number above 0"),
    (["allocate", "eval", "{root}/policy.json", "{bon}", "--split", "all"], "were fitted on"),
    (["allocate", "eval", "{root}/empty.json", "{bon}", "--split", "b"], "predicted table of bin 0 is empty"),
    (["coverage-fit", "{root}/two"], "2 problems with samples"),
    (["allocate", "eval", "{root}", "{bon}", "--split", "b"], "is a directory, not a policy file"),
    (["allocate", "eval", "{root}/nan.json", "{bon}", "--split", "b"], "nan.json: oracle_edges.0: Input should be a finite number"),
    (["allocate", "fit", "{bon}", "--split", "a", "-o", "{root}/blocker/p.json"], "cannot write to output directory"),
    (["allocate", "fit", "{bon}", "--split", "a", "-o", "{root}"], "is a directory; pass --output with a file name"),
    (["allocate", "eval", "{root}/policy.json", "{bon}", "--split", "b", "--json", "{root}/blocker/r.json"], "pass --json with a writable directory"),
    (["coverage-fit", "{bon}", "-o", "{root}/blocker/fit.png"], "pass --plot with a writable directory"),
    (["allocate", "fit", "{root}/unpriced", "--split", "a", "-o", "{root}/u.json"], "unpriced: its FLOPs are unknown"),
    (["adaptive", "{root}/unpriced", "--bootstrap", "0"], "unpriced: its FLOPs are unknown"),  # it picks settings by FLOPs too
])
def test_cli_bad_inputs_give_one_line_and_exit_2(cli_inputs, args, message):
    root, bon = cli_inputs
    result = ttscale(*[a.format(root=root, bon=bon) for a in args], cwd=root)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1 and message in lines[0], lines


# -- the verifier probe, end to end; the budget a plan was allocated under --------------------------

SEVENS = {f"What is {i} + {7 - i}?": "7" for i in range(20)}
RULES = {"boxed{7}": 0.9}  # the scripted verifier: a right answer scores 0.9, anything else 0.1


def test_probe_verifier_runs_end_to_end_on_the_fake_backend(tmp_path, write_problems):
    from typer.testing import CliRunner

    from ttscale.cli import app
    from ttscale.build import build_benchmark, build_verifier

    problems = write_problems(*({"id": f"s{i}", "question": q, "answer": "7"} for i, q in enumerate(SEVENS)), name="sevens.jsonl")
    options = {"rules": RULES, "default": 0.1}
    config = RunConfig(benchmark=str(problems), backend="fake", model="fake", output=tmp_path / "runs", strategy_options={"n": 8},
                       verifier="scripted-prm", verifier_options=options,
                       backend_options={"num_params": 1000, "accuracy": 0.5, "answer_key": SEVENS})
    run_dir = asyncio.run(run_eval(config)).run_dir
    result = CliRunner().invoke(app, ["allocate", "fit", str(run_dir), "--probe", "verifier", "--k0", "2", "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    policy = AllocationPolicy.load(tmp_path / "p.json")
    assert (policy.probe.statistic, policy.probe.verifier) == ("verifier", "scripted-prm")

    backend = FakeBackend("fake", answer_key=SEVENS, accuracy=0.5, num_params=1000)
    verifier = build_verifier(config, build_benchmark(config))
    with pytest.raises(AllocationError, match="probe reads verifier scores.*pass verifier="):
        policy.allocate("What is 3 + 4?", budget_samples=8, backend=backend, probe=True)
    plan = policy.allocate("What is 3 + 4?", budget_samples=8, backend=backend, probe=True, verifier=verifier)
    assert plan.bin_source == "predicted" and len(plan.probe.candidates) == 2
    assert {c.score for c in plan.probe.candidates} <= {0.9, 0.1}  # the Plan handed the verifier to the probe
    trace = asyncio.run(plan.run(backend, verifier))
    assert trace.cost.flops >= plan.probe.cost.flops and trace.metadata["probe_cost"] == plan.probe.cost.model_dump()
    assert trace.metadata["budget"]["samples_drawn"] <= 8


def test_a_plan_never_spends_past_its_budget_after_the_probe(runs):
    bon, _ = runs
    policy = fit_policy([bon], split="a")
    backend = FakeBackend("fake", answer_key={"2 + 2": "4"}, accuracy=0.5, num_params=1000)
    budget = max(t.frontier_flops[0].flops for t in policy.predicted_tables)  # allocatable in every bin
    plan = policy.allocate("What is 2 + 2?", budget_flops=budget, backend=backend, probe=True)
    # The fake model's prompt and answers are longer than the fitting runs', so the probe alone
    # spends the whole budget here: nothing more runs, and the probe's majority answers.
    assert plan.probe.cost.structural_flops >= budget  # budgets are cache-independent FLOPs
    requests = len(backend.requests)
    trace = asyncio.run(plan.run(backend))
    assert len(backend.requests) == requests
    assert trace.candidates == plan.probe.candidates and trace.metadata["budget"]["probe_exhausted_it"]
    plan = policy.allocate("What is 2 + 2?", budget_samples=6, backend=backend, probe=True)
    trace = asyncio.run(plan.run(backend))
    assert len(trace.candidates) <= 6 and trace.metadata["budget"]["samples"] == 6
