"""The real engine on Ray: `ttscale eval --ray local --replicas 2` runs two small vLLM engines side by
side with the embedded SmolLM2, each sized for what it holds, and completes 20 problems."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

pytest.importorskip("ray", reason="scale-out needs Ray: pip install 'ttscale[ray]'")
pytestmark = pytest.mark.engine

CONCURRENCY, N = 4, 2


def test_two_engine_replicas_on_ray_complete_twenty_problems(tmp_path):
    temp = tempfile.mkdtemp(prefix="ttsr", dir="/tmp")  # Ray's own, short (socket paths)
    env = {**os.environ, "RAY_TMPDIR": temp, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # the sizing from the workload is what is tested
    args = ["eval", "-b", "arithmetic", "--model", "smollm2-135m", "--n", str(N), "--limit", "20",
            "--max-tokens", "64", "--concurrency", str(CONCURRENCY), "--ray", "local", "--replicas", "2", "-o", "runs"]
    process = subprocess.Popen([sys.executable, "-m", "ttscale.cli", *args], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=1500)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever of this run's session is left
        except ProcessLookupError:
            pass
        process.wait()
        shutil.rmtree(temp, ignore_errors=True)
    [run_dir] = list((tmp_path / "runs").iterdir())
    log = (run_dir / "engine.log").read_text()[-3000:] if (run_dir / "engine.log").exists() else ""
    assert process.returncode == 0, err + log

    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    ids = [r["problem_id"] for r in records]
    assert len(ids) == len(set(ids)) == 20
    for record in records:
        assert len(record["candidates"]) == N
        assert all(0 < c["num_tokens"] <= 64 for c in record["candidates"])
        assert record["cost"]["generated_tokens"] == sum(c["num_tokens"] for c in record["candidates"])
        assert record["cost"]["flops"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["problems"] == 20 and summary["samples"] == 20 * N

    backend = json.loads((run_dir / "backend.json").read_text())
    assert backend["replicas"] == 2 and backend["backend"] == "VLLMBackend"
    members = backend["members"]
    assert len({m["pid"] for m in members}) == 2  # two engines, two processes
    for member in members:
        settings = member["engine_settings"]
        # Each engine sized from what it holds: its problems in flight x samples each.
        assert f"for {CONCURRENCY * N} sequences" in settings["kv_cache"], settings["kv_cache"]
        assert settings["kv_cache_memory_bytes"] == settings["kv_cache_plan"]["cache_bytes"]
