"""Scale-out on the fake backend, as a user runs it: Ray replicas, shards and merge give the samples
one process gives; a replica's worker or the driver SIGKILLed mid-run; an external `ray start` cluster.

Ray runs here on a small machine: each test's cluster gets its own short temp dir (RAY_TMPDIR), and
every process a test starts runs in a session of its own, which the test ends by its id.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ttscale.analysis.runs import load_run
from ttscale.config import RunConfig
from ttscale.problems import shard_index
from ttscale.scaleout import merge_runs
from ttscale.testing import free_port
from ttscale.types import Problem

ray = pytest.importorskip("ray", reason="scale-out tests need Ray: pip install 'ttscale[ray]'")

BASE = ["eval", "-b", "arithmetic", "--backend", "fake", "--n", "4", "--limit", "24", "--seed", "7", "--concurrency", "3"]
# Fields of a record's cost that depend on what an engine's prefix cache held (so on which replica
# or process served the problem), or on time: the structural (cache-independent) fields are compared.
CACHE_OR_TIME = {"cached_prompt_tokens", "flops", "eflops", "verifier_flops", "wall_s"}


@pytest.fixture
def ray_env(tmp_path):
    """Environment for a CLI run that starts Ray: its own short temp dir, no usage reporting."""
    temp = tempfile.mkdtemp(prefix="ttsr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": temp, "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"}
    yield env
    shutil.rmtree(temp, ignore_errors=True)


def start(args, cwd, env=None):
    """A ttscale CLI process in a session of its own (so the test can end what it started)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ttscale.cli", *args], cwd=cwd, env=env or os.environ.copy(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def run(args, cwd, env=None, timeout=300):
    process = start(args, cwd, env)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        end_session(process)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def end_session(process):
    """SIGKILL whatever is left of the session this test started (Ray's processes, if any)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def samples_of(run_dir):
    lines = (Path(run_dir) / "samples.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def comparable(record):
    """A record minus what depends on the cache or the clock (see CACHE_OR_TIME)."""
    cost = {k: v for k, v in record["cost"].items() if k not in CACHE_OR_TIME}
    return {**record, "cost": cost}


def assert_same_samples(run_dir, reference_dir):
    """Texts, answers, grades, selections, pass@k and token counts equal, problem by problem, each once."""
    got, want = samples_of(run_dir), samples_of(reference_dir)
    ids = [r["problem_id"] for r in got]
    assert len(ids) == len(set(ids)), "a problem recorded twice"
    assert sorted(ids) == sorted(r["problem_id"] for r in want)
    got_by_id = {r["problem_id"]: comparable(r) for r in got}
    for record in want:
        assert got_by_id[record["problem_id"]] == comparable(record), record["problem_id"]
    summary, reference = (json.loads((Path(d) / "summary.json").read_text()) for d in (run_dir, reference_dir))
    for key in ("problems", "samples", "accuracy", "pass_at_k", "pass_at_k_problems", "chosen_rule"):
        assert summary[key] == reference[key], key
    for key in ("prompt_tokens", "generated_tokens", "structural_cached_prompt_tokens", "structural_flops", "structural_eflops"):
        assert summary["cost"][key] == reference["cost"][key], key


def only_run(output):
    [run_dir] = [d for d in Path(output).iterdir() if d.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process run the scaled-out ones must reproduce."""
    cwd = tmp_path_factory.mktemp("reference")
    result = run([*BASE, "-o", "single"], cwd)
    assert result.returncode == 0, result.stderr
    return only_run(cwd / "single")


# --- shards and merge (no Ray needed) -----------------------------------------------------------


def test_shard_index_is_sha256_of_the_id_and_every_problem_falls_in_one_shard():
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"arithmetic-t2d1-s0-0").digest()[:8], "big") % 3
    assert shard_index("arithmetic-t2d1-s0-0", 3) == expected
    ids = [f"p{i}" for i in range(200)]
    shards = [[i for i in ids if shard_index(i, 4) == s] for s in range(4)]
    assert sorted(sum(shards, [])) == sorted(ids)
    assert all(20 < len(s) < 80 for s in shards)  # a hash, not a prefix: spread over all four


def test_shard_is_in_the_run_id_and_a_run_without_it_keeps_its_id():
    plain = RunConfig(benchmark="arithmetic")
    assert RunConfig(benchmark="arithmetic", shard="1/2").run_id() != plain.run_id()
    assert "shard1of2" in RunConfig(benchmark="arithmetic", shard="1/2").run_id()
    # Where the run goes is not what it computes: Ray settings leave the id as it was.
    assert RunConfig(benchmark="arithmetic", ray="local", replicas=3).run_id() == plain.run_id()
    assert plain.run_id() == "arithmetic-best-of-n-0f12aaaf560a"  # the id runs had before shards existed


def test_shards_then_merge_give_the_same_samples_as_one_process(tmp_path, reference):
    for shard in ("0/2", "1/2"):
        result = run([*BASE, "--shard", shard, "-o", "shards"], tmp_path)
        assert result.returncode == 0, result.stderr
    shard_dirs = sorted((tmp_path / "shards").iterdir())
    sizes = [len(samples_of(d)) for d in shard_dirs]
    assert sum(sizes) == 24 and all(sizes)

    result = run(["merge", *map(str, shard_dirs), "-o", "merged"], tmp_path)
    assert result.returncode == 0, result.stderr
    merged = only_run(tmp_path / "merged")
    assert merged.name == reference.name  # the run id one process gives
    assert_same_samples(merged, reference)
    backend = json.loads((merged / "backend.json").read_text())
    assert [s["shard"] for s in backend["shards"]] == ["0/2", "1/2"] and backend["replicas"] == 2
    loaded = load_run(merged)  # what compare, report and allocate read
    assert len(loaded.records) == 24

    # `ttscale eval` with the merged run's output finds every problem done.
    rerun = run([*BASE, "-o", "merged"], tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed 24, solved now 0" in " ".join(rerun.stdout.split())


def test_merge_refuses_other_configs_overlaps_repeats_and_a_filled_target(tmp_path, reference):
    for shard, extra in (("0/2", []), ("1/2", []), ("1/2", ["--temperature", "0.5"]), ("0/3", [])):
        result = run([*BASE, "--limit", "8", "--shard", shard, *extra, "-o", "shards"], tmp_path)
        assert result.returncode == 0, result.stderr
    dirs = {d.name: d for d in (tmp_path / "shards").iterdir()}
    by_shard = {}
    for name, d in dirs.items():
        config = json.loads((d / "config.json").read_text())
        by_shard.setdefault(config["shard"], []).append((config["sampling"]["temperature"], d))
    s0 = by_shard["0/2"][0][1]
    s1 = next(d for t, d in by_shard["1/2"] if t == 0.8)
    s1_hot = next(d for t, d in by_shard["1/2"] if t == 0.5)
    s0_of3 = by_shard["0/3"][0][1]

    def refused(*dirs, output=tmp_path / "out"):
        result = run(["merge", *map(str, dirs), "-o", str(output)], tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
        return " ".join(result.stderr.split())

    assert "differ in sampling" in refused(s0, s1_hot)
    assert "given twice" in refused(s0, s0)
    assert "merge the shards of one split" in refused(s0, s0_of3)
    assert "not a run directory" in refused(s0, tmp_path)
    assert "is not a shard" in refused(s0, reference)

    # A problem copied into the other shard's run (an overlap) is refused, naming the problem.
    copied = tmp_path / "copied"
    shutil.copytree(s1, copied)
    stray = (s0 / "samples.jsonl").read_text().splitlines()[0]
    with open(copied / "samples.jsonl", "a") as handle:
        handle.write(stray + "\n")
    assert json.loads(stray)["problem_id"] in refused(s0, copied)
    partial = merge_runs([s0], tmp_path / "partial")  # allowed: `ttscale eval` resumes the rest into it
    assert partial.missing == ["1/2"] and partial.summary["problems"] == len(samples_of(s0))
    result = merge_runs([s0, s1], tmp_path / "full")
    assert result.missing == [] and result.summary["problems"] == 8
    assert "already has 8 problems" in refused(s0, s1, output=tmp_path / "full")


def test_shard_and_replicas_flags_are_checked_in_one_line(tmp_path):
    for flags, words in ((["--shard", "2/2"], "shard index must be in 0..K-1"), (["--shard", "x"], "expected I/K"),
                         (["--replicas", "2"], "replicas and replica_gpus need ray")):
        result = run([*BASE, *flags], tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert words in " ".join(result.stderr.split())
    assert not (tmp_path / "runs").exists()


def test_ray_flag_without_ray_installed_says_how_to_install(tmp_path):
    # A `ray` package that cannot be imported shadows the installed one, as on a machine without it.
    fake = tmp_path / "no_ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    result = run([*BASE, "--ray", "local", "--replicas", "2"], tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'ttscale[ray]'" in lines[0]
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


# --- Ray --------------------------------------------------------------------------------------


def test_ray_local_two_replicas_give_the_same_samples_as_one_process(tmp_path, reference, ray_env):
    result = run([*BASE, "--ray", "local", "--replicas", "2", "-o", "ray"], tmp_path, env=ray_env)
    assert result.returncode == 0, result.stderr
    run_dir = only_run(tmp_path / "ray")
    assert run_dir.name == reference.name
    assert_same_samples(run_dir, reference)
    backend = json.loads((run_dir / "backend.json").read_text())
    assert backend["replicas"] == 2 and backend["hosts"] == [socket.gethostname()]
    assert [m["replica"] for m in backend["members"]] == [0, 1]
    assert len({m["pid"] for m in backend["members"]}) == 2  # two actors, two worker processes
    assert all(m["devices"] == ["cpu"] and m["backend"] == "FakeBackend" for m in backend["members"])


def _wait_for(predicate, what, process, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended before {what}: {err[-2000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _records_written(output):
    runs = list(Path(output).glob("*/samples.jsonl")) if Path(output).exists() else []
    return len(runs[0].read_text().splitlines()) if runs else 0


SLOW = ["--backend-option", "delay_s=0.4"]  # each generate call waits: the run lasts long enough to kill in


def test_sigkill_of_a_replica_worker_mid_run_completes_with_each_problem_once(tmp_path, reference, ray_env):
    output = tmp_path / "ray"
    process = start([*BASE, *SLOW, "--ray", "local", "--replicas", "2", "-o", str(output)], tmp_path, ray_env)
    try:
        # The driver writes backend.json once the replicas are up: where each one runs.
        members = _wait_for(lambda: _members(output), "the replicas were placed", process)
        _wait_for(lambda: _records_written(output) >= 3, "three problems were recorded", process)
        victim = members[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        before = _records_written(output)
        out, err = process.communicate(timeout=300)
    finally:
        end_session(process)
    assert process.returncode == 0, err
    assert before < 24, "the run finished before the replica was killed"
    run_dir = only_run(output)
    assert_same_samples(run_dir, reference)  # every problem once, the samples of one process
    backend = json.loads((run_dir / "backend.json").read_text())
    assert backend["ray"]["requeued"].get("0", 0) >= 1  # what replica 0 had in flight went back to the queue
    # Ray restarted the replica: its worker is a new process; the other one was untouched.
    assert backend["members"][0]["pid"] != victim and backend["members"][0]["restarted"]
    assert not backend["members"][1]["restarted"]


def _members(output):
    found = list(Path(output).glob("*/backend.json")) if Path(output).exists() else []
    if not found:
        return None
    try:
        return json.loads(found[0].read_text())["members"]
    except (ValueError, KeyError):
        return None


def test_sigkill_of_the_driver_then_rerun_resumes(tmp_path, reference, ray_env):
    output = tmp_path / "ray"
    args = [*BASE, *SLOW, "--ray", "local", "--replicas", "2", "-o", str(output)]
    process = start(args, tmp_path, ray_env)
    try:
        _wait_for(lambda: _records_written(output) >= 3, "three problems were recorded", process)
        os.kill(process.pid, signal.SIGKILL)  # the driver only: Ray's processes share its fate
        process.wait()
    finally:
        end_session(process)
    done_before = _records_written(output)
    assert 3 <= done_before < 24
    result = run(args, tmp_path, env=ray_env)
    assert result.returncode == 0, result.stderr
    assert f"Resuming: {done_before} of 24" in " ".join(result.stdout.split())
    assert_same_samples(only_run(output), reference)


def test_external_cluster_started_with_ray_start(tmp_path, reference, ray_env):
    port = free_port()
    # `ray start --head` on this machine, whose address 127.0.0.1:PORT is (Ray reaches it through the
    # node's IP). With --block, in a session of its own, ended by its id below. (`ray stop` ends every Ray
    # process on the machine, other users' too.)
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head",
         "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
         "--object-store-memory", str(200 * 2**20), "--temp-dir", ray_env["RAY_TMPDIR"], "--block"],
        cwd=tmp_path, env=ray_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while not _accepts(port):
            assert head.poll() is None, head.stdout.read()
            assert time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        result = run([*BASE, "--ray", address, "--replicas", "2", "-o", "ray"], tmp_path, env=ray_env)
        assert result.returncode == 0, result.stderr
        run_dir = only_run(tmp_path / "ray")
        assert_same_samples(run_dir, reference)
        backend = json.loads((run_dir / "backend.json").read_text())
        assert backend["ray"]["address"] == address and backend["replicas"] == 2
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        end_session(head)


def _accepts(port):
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
