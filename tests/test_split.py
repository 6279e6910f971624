"""`--split a|b` on the fake backend: `ttscale eval` runs one half of the first LIMIT problems (with
--shard, merge and Ray too), a run without it keeps its id, and `compare`/`report` show one half."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ttscale.problems import shard_index, split_of
from ttscale.analysis.report import build_comparison
from ttscale.cli import app
from ttscale.config import CONNECTION_OPTIONS, NOT_HASHED, RunConfig
from ttscale.errors import ConfigError
from ttscale.build import build_benchmark
from ttscale.runner import run_eval
from ttscale.scaleout import merge_runs
from ttscale.testing import write_jsonl
from ttscale.types import SAMPLING_EXTRAS

LIMIT = 24
BASE = ["eval", "-b", "arithmetic", "--backend", "fake", "--n", "4", "--limit", str(LIMIT), "--seed", "7", "--concurrency", "3"]


def ttscale(*args, cwd, env=None, timeout=300):
    """A ttscale CLI process in a session of its own, ended by its id (Ray's processes with it)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ttscale.cli", *args], cwd=cwd, env={**(env or os.environ), "COLUMNS": "200"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def one_line_error(result):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return " ".join(result.stderr.split())


def ids_of(run_dir):
    return [json.loads(line)["problem_id"] for line in (Path(run_dir) / "samples.jsonl").read_text().splitlines()]


def only_run(output):
    [run_dir] = [d for d in Path(output).iterdir() if d.is_dir()]
    return run_dir


def first_ids(limit=LIMIT):
    """The ids of the benchmark's first LIMIT problems, in order (what --limit takes)."""
    return [p.id for p in build_benchmark(RunConfig(benchmark="arithmetic")).load(limit=limit)]


def run_id_before_splits(config: RunConfig) -> str:
    """RunConfig.run_id as it was before the split field existed (the ids of recorded runs)."""
    fields = config.model_dump(mode="json", exclude=NOT_HASHED | {"split"})
    fields["backend_options"] = {k: v for k, v in config.backend_options.items() if k not in CONNECTION_OPTIONS}
    if config.shard is None:
        del fields["shard"]
    for name in SAMPLING_EXTRAS:  # vLLM's extra sampling parameters did not exist then either
        del fields["sampling"][name]
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    shard = f"-shard{config.shard.replace('/', 'of')}" if config.shard else ""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{Path(config.benchmark).stem}-{config.strategy}{shard}").strip("-")
    return f"{slug}-{digest}"


# --- the run id ----------------------------------------------------------------------------------


def test_a_run_without_split_keeps_its_id_and_a_split_gets_its_own():
    plain = RunConfig(benchmark="arithmetic")
    assert plain.run_id() == "arithmetic-best-of-n-0f12aaaf560a"  # the id recorded runs have had all along
    configs = [
        plain,
        RunConfig(benchmark="arithmetic", shard="1/3", limit=240, seed=7, strategy_options={"n": 16}),
        RunConfig(benchmark="math500", backend="openai", model="m", verifier="oracle-orm",
                  backend_options={"base_url": "http://x/v1", "num_params": 5}, sampling={"max_tokens": 64, "temperature": 0.5}),
    ]
    for config in configs:
        assert config.split is None
        assert config.run_id() == run_id_before_splits(config)
        # A config.json written before splits existed (no "split" key) reads back to the same id.
        dumped = config.model_dump(mode="json")
        del dumped["split"]
        assert RunConfig(**dumped).run_id() == config.run_id()

    a, b = (RunConfig(benchmark="arithmetic", split=s) for s in "ab")
    assert len({plain.run_id(), a.run_id(), b.run_id()}) == 3
    assert "-splitb-" in b.run_id() and "-splita-" in a.run_id()
    assert "splitb-shard0of2" in RunConfig(benchmark="arithmetic", split="b", shard="0/2").run_id()
    # Where the run goes is not what it computes, with a split as without.
    assert RunConfig(benchmark="arithmetic", split="b", ray="local", replicas=2).run_id() == b.run_id()


# --- eval --split ----------------------------------------------------------------------------------


def test_eval_split_b_runs_exactly_the_held_out_problems_of_the_first_limit(tmp_path):
    result = ttscale(*BASE, "--split", "b", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = only_run(tmp_path / "runs")
    expected = [pid for pid in first_ids() if split_of(pid) == "b"]
    assert 0 < len(expected) < LIMIT  # both halves among the first LIMIT: the test means something
    assert sorted(ids_of(run_dir)) == sorted(expected)
    assert json.loads((run_dir / "summary.json").read_text())["problems"] == len(expected)
    assert json.loads((run_dir / "config.json").read_text())["split"] == "b"
    out = " ".join(result.stdout.split())
    assert "split b (held out)" in out and f"among the first {LIMIT} problems" in out
    assert "Note: --limit" not in out  # fewer than LIMIT problems is the split, not a short benchmark

    # The same command resumes the split run; without --split it is another run, of every problem.
    rerun = ttscale(*BASE, "--split", "b", cwd=tmp_path)
    assert rerun.returncode == 0 and f"resumed {len(expected)}, solved now 0" in " ".join(rerun.stdout.split())
    everything = ttscale(*BASE, "-o", "all", cwd=tmp_path)
    assert everything.returncode == 0, everything.stderr
    assert sorted(ids_of(only_run(tmp_path / "all"))) == sorted(first_ids())


def test_invalid_split_values_are_one_line_errors(tmp_path):
    assert "split" in one_line_error(ttscale(*BASE, "--split", "c", cwd=tmp_path))
    assert not (tmp_path / "runs").exists()  # refused before a run directory exists
    config = tmp_path / "run.yaml"
    config.write_text("benchmark: arithmetic\nbackend: fake\nsplit: held-out\n")
    assert "split" in one_line_error(ttscale("eval", "-c", str(config), cwd=tmp_path))
    message = one_line_error(ttscale("compare", str(tmp_path), "--split", "x", cwd=tmp_path))
    assert "'x' is not one of 'all', 'a', 'b'" in message
    message = one_line_error(ttscale("report", str(tmp_path), "--split", "x", cwd=tmp_path))
    assert "'x' is not one of 'all', 'a', 'b'" in message


async def test_split_with_shards_then_merge_gives_the_split_run(tmp_path):
    base = dict(benchmark="arithmetic", backend="fake", strategy_options={"n": 2}, limit=LIMIT, seed=7,
                output=tmp_path / "shards", concurrency=3)
    wanted = {pid for pid in first_ids() if split_of(pid) == "b"}
    shard_dirs = []
    for index in range(2):
        result = await run_eval(RunConfig(**base, split="b", shard=f"{index}/2"))
        got = set(ids_of(result.run_dir))
        assert got == {pid for pid in wanted if shard_index(pid, 2) == index}
        assert "splitb-shard" in result.run_dir.name
        shard_dirs.append(result.run_dir)
    merged = merge_runs(shard_dirs, tmp_path / "merged")
    assert merged.missing == [] and set(ids_of(merged.run_dir)) == wanted
    # The merged run is the run `eval --split b` writes in one process (so eval resumes it).
    whole = RunConfig(**{**base, "output": tmp_path / "merged"}, split="b")
    assert merged.run_dir.name == whole.run_id()
    assert json.loads((merged.run_dir / "config.json").read_text())["split"] == "b"
    resumed = await run_eval(whole)
    assert resumed.solved_now == 0 and resumed.resumed == len(wanted)

    # A shard of the other half (or of no split) is a shard of another run.
    other = await run_eval(RunConfig(**base, split="a", shard="1/2"))
    with pytest.raises(ConfigError, match="differ in split"):
        merge_runs([shard_dirs[0], other.run_dir], tmp_path / "refused")
    # A record outside the shard's split (an edited run directory) is refused, naming the problem.
    edited = tmp_path / "edited"
    shutil.copytree(shard_dirs[1], edited)
    stray = next(l for l in (other.run_dir / "samples.jsonl").read_text().splitlines()
                 if shard_index(json.loads(l)["problem_id"], 2) == 1)
    with open(edited / "samples.jsonl", "a") as handle:
        handle.write(stray + "\n")
    with pytest.raises(ConfigError, match="does not belong to split b"):
        merge_runs([shard_dirs[0], edited], tmp_path / "refused2")


def test_split_with_ray_runs_the_split_of_the_shard(tmp_path):
    pytest.importorskip("ray", reason="needs Ray: pip install 'ttscale[ray]'")
    temp = tempfile.mkdtemp(prefix="ttss", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": temp, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        result = ttscale(*BASE, "--split", "b", "--shard", "1/2", "--ray", "local", "--replicas", "2", cwd=tmp_path, env=env)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    run_dir = only_run(tmp_path / "runs")
    assert sorted(ids_of(run_dir)) == sorted(p for p in first_ids() if split_of(p) == "b" and shard_index(p, 2) == 1)
    assert run_dir.name == RunConfig(benchmark="arithmetic", backend="fake", strategy_options={"n": 4}, limit=LIMIT,
                                     seed=7, split="b", shard="1/2").run_id()


# --- compare / report --split ------------------------------------------------------------------------


def mixed_problems(path: Path) -> tuple[Path, dict[str, str]]:
    """A .jsonl benchmark whose gold answers are 7 or 3: the fake always answers 7, so the accuracy of
    a half is its share of 7s, different in a and b."""
    ids = [f"q{i}" for i in range(40)]
    halves = {pid: split_of(pid) for pid in ids}
    counts = {"a": 0, "b": 0}
    gold = {}
    for pid in ids:
        counts[halves[pid]] += 1
        # a: every other problem right; b: one in three right.
        right = counts[halves[pid]] % 2 == 0 if halves[pid] == "a" else counts[halves[pid]] % 3 == 0
        gold[pid] = "7" if right else "3"
    return write_jsonl(path, ({"id": pid, "question": f"What is 3 + 4? ({pid})", "answer": gold[pid]} for pid in ids)), gold


async def test_compare_split_b_shows_the_accuracy_of_split_b_only(tmp_path):
    problems, gold = mixed_problems(tmp_path / "mixed.jsonl")
    config = RunConfig(benchmark=str(problems), backend="fake", output=tmp_path / "runs", concurrency=4,
                       strategy_options={"n": 2}, backend_options={"script": ["The answer is \\boxed{7}."]})
    run_dir = (await run_eval(config)).run_dir
    accuracy = {s: sum(gold[p] == "7" for p in gold if split_of(p) == s) / sum(split_of(p) == s for p in gold) for s in "ab"}
    overall = sum(g == "7" for g in gold.values()) / len(gold)
    assert len({accuracy["a"], accuracy["b"], overall}) == 3  # the halves are told apart

    for split, want in (("b", accuracy["b"]), ("a", accuracy["a"]), (None, overall)):
        comparison = build_comparison([run_dir], rules=["majority", "first"], bootstrap=0, split=split)
        assert comparison.split == split
        [run] = comparison.runs
        assert all(split is None or split_of(r.problem_id) == split for r in run.records)
        for curve in comparison.curves:
            assert all(p.accuracy == pytest.approx(want) for p in curve.points), (split, curve.rule)
            assert split is None or all(split_of(p) == split for p in curve.problem_ids)

    runner = CliRunner()
    result = runner.invoke(app, ["compare", str(run_dir), "--split", "b", "--out", str(tmp_path / "plots"), "--bootstrap", "0"],
                           env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "split b (held out)" in output and f"{100 * accuracy['b']:.1f}%" in output
    report = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(run_dir), "--split", "b", "-o", str(report), "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    page = report.read_text()
    assert "split b (held out) only" in page and f"{100 * accuracy['b']:.1f}%" in page

    # A run with no problem in the half: a one-line error that names the run.
    only_a = await run_eval(config.model_copy(update={"split": "a", "output": tmp_path / "halves"}))
    with pytest.raises(ConfigError, match=re.escape(str(only_a.run_dir)) + ".*no problem in split b"):
        build_comparison([run_dir, only_a.run_dir], bootstrap=0, split="b")
    result = ttscale("compare", str(run_dir), str(only_a.run_dir), "--split", "b", "--bootstrap", "0", cwd=tmp_path)
    message = one_line_error(result)
    assert only_a.run_dir.name in message and "no problem in split b" in message


async def test_compare_common_keeps_only_the_problems_every_run_recorded(tmp_path):
    """A search stopped early beside a complete run: --common measures every curve on the problems both have."""
    problems, gold = mixed_problems(tmp_path / "mixed.jsonl")
    config = RunConfig(benchmark=str(problems), backend="fake", output=tmp_path / "runs", concurrency=4,
                       strategy_options={"n": 2}, backend_options={"script": ["The answer is \\boxed{7}."]})
    whole = (await run_eval(config)).run_dir
    part = (await run_eval(config.model_copy(update={"split": "b", "output": tmp_path / "part"}))).run_dir
    comparison = build_comparison([whole, part], rules=["majority"], bootstrap=0, common=True)
    held_out = sorted(p for p in gold if split_of(p) == "b")
    assert [sorted(r.problem_id for r in run.records) for run in comparison.runs] == [held_out, held_out]
    assert not comparison.warnings and f"the {len(held_out)} problems every run recorded" in comparison.split_label
    assert len(build_comparison([whole, part], rules=["majority"], bootstrap=0).warnings) == 1  # without it: a warning
