import json

import pytest

from ttscale.config import RunConfig
from ttscale.errors import TtscaleError
from ttscale.store import RunStore


def make_config(tmp_path, **overrides):
    return RunConfig(**{"benchmark": "arithmetic", "backend": "fake", "output": tmp_path / "runs", **overrides})


def test_run_id_is_stable_and_changes_with_results_relevant_fields(tmp_path):
    base = make_config(tmp_path)
    assert base.run_id() == make_config(tmp_path).run_id()
    assert base.run_id() == make_config(tmp_path, concurrency=3).run_id()  # speed only
    assert base.run_id() != make_config(tmp_path, seed=1).run_id()
    assert base.run_id() != make_config(tmp_path, strategy_options={"n": 4}).run_id()
    assert base.run_id().startswith("arithmetic-best-of-n-")


def test_append_then_reopen_cuts_a_torn_tail(tmp_path):
    config = make_config(tmp_path)
    with RunStore(config) as store:
        store.append({"problem_id": "a", "x": 1})
        store.append({"problem_id": "b", "x": 2})
        path = store.samples_path
    with open(path, "a") as handle:
        handle.write('{"problem_id": "c", "x"')  # a crash mid-write
    with RunStore(config) as store:
        assert store.done_ids() == {"a", "b"}
        store.append({"problem_id": "c", "x": 3})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["problem_id"] for line in lines] == ["a", "b", "c"]


def test_second_writer_is_refused(tmp_path):
    config = make_config(tmp_path)
    with RunStore(config):
        with pytest.raises(TtscaleError, match="in use by another ttscale process"):
            RunStore(config).open()


def test_unwritable_output_names_the_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = RunConfig(benchmark="arithmetic", output=blocker / "runs")
    with pytest.raises(TtscaleError, match=r"cannot write to output directory .*file/runs.*--output"):
        RunStore(config).open()


def test_unreadable_record_names_file_and_line(tmp_path):
    config = make_config(tmp_path)
    with RunStore(config) as store:
        store.append({"problem_id": "a"})
        path = store.samples_path
    with open(path, "a") as handle:
        handle.write("garbage\n")
    with pytest.raises(TtscaleError, match=r"samples.jsonl:2: unreadable record"):
        RunStore(config).open().done_ids()


def test_connection_options_do_not_change_the_run(tmp_path):
    here = make_config(tmp_path, backend="openai", backend_options={"base_url": "http://127.0.0.1:8000/v1"})
    moved = make_config(tmp_path, backend="openai", backend_options={"base_url": "http://127.0.0.1:9000/v1", "max_retries": 9})
    assert here.run_id() == moved.run_id()
    assert here.run_id() != make_config(tmp_path, backend="openai", backend_options={"num_params": 5}).run_id()
