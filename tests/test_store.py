import json

import pytest

from ttscale.config import RunConfig
from ttscale.errors import TtscaleError
from ttscale.store import RunStore, read_samples


def record(problem_id, **extra):
    """The smallest line a reader of samples.jsonl accepts, as the runner writes it."""
    return {"problem_id": problem_id, "chosen_rule": "majority", "n": 1, "num_correct": 1,
            "candidates": [{"answer": "1", "correct": True, "num_tokens": 3}],
            "selections": {"majority": {"answer": "1", "correct": True}}, "cost": {"flops": 1.0}, **extra}


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
        store.append(record("a", x=1))
        store.append(record("b", x=2))
        path = store.samples_path
    with open(path, "a") as handle:
        handle.write('{"problem_id": "c", "x"')  # a crash mid-write
    with RunStore(config) as store:
        assert store.done_ids() == {"a", "b"}
        store.append(record("c", x=3))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["problem_id"] for line in lines] == ["a", "b", "c"]


def test_a_whole_last_record_without_its_newline_is_kept_and_the_next_append_starts_a_line(tmp_path):
    config = make_config(tmp_path)
    with RunStore(config) as store:
        store.append(record("a"))
        path = store.samples_path
    with open(path, "a") as handle:
        handle.write(json.dumps(record("b")))  # a crash between the record and its newline
    with RunStore(config) as store:
        assert store.done_ids() == {"a", "b"}
        store.append(record("c"))
    assert [json.loads(line)["problem_id"] for line in path.read_text().splitlines()] == ["a", "b", "c"]


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
        store.append(record("a"))
        path = store.samples_path
    with open(path, "a") as handle:
        handle.write("garbage\n")
    with pytest.raises(TtscaleError, match=r"samples.jsonl:2: unreadable record"):
        RunStore(config).open().done_ids()


BAD_RECORDS = {
    "no fields": ({"foo": 1}, r"no 'problem_id', 'chosen_rule', .* fields"),
    "a list": ([1, 2], r"a JSON list, not an object"),
    "a number": (3, r"a JSON int, not an object"),
    "id a number": (record(7), r"'problem_id' is 7, not a JSON string"),
    "empty id": (record(""), r"empty 'problem_id'"),
    "n a bool": (record("a", n=True), r"'n' is true, not a JSON integer"),
    "candidates an object": (record("a", candidates={}), r"'candidates' is \{\}, not a JSON array"),
    "bare candidate": (record("a", candidates=[{"text": "x"}]), r"candidate 0 lacks 'answer', 'correct', 'num_tokens'"),
    "selection not an object": (record("a", selections={"majority": "1"}), r"selection 'majority' has no 'correct'"),
    "chosen rule not selected": (record("a", chosen_rule="first"), r"chosen_rule 'first' is not among its selections"),
}


@pytest.mark.parametrize("line, message", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_line_that_is_json_but_not_a_record_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(record("a")) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(TtscaleError, match=rf"samples.jsonl:2: not a samples record \({message}\).*remove it"):
        list(read_samples(path))


def test_a_line_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(json.dumps(record("a")).encode() + b"\n" + json.dumps(record("b")).encode()[:-2] + b"\xff}\n")
    with pytest.raises(TtscaleError, match=r"samples.jsonl:2: unreadable record \(not UTF-8\)"):
        list(read_samples(path))


def test_connection_options_do_not_change_the_run(tmp_path):
    here = make_config(tmp_path, backend="openai", backend_options={"base_url": "http://127.0.0.1:8000/v1"})
    moved = make_config(tmp_path, backend="openai", backend_options={"base_url": "http://127.0.0.1:9000/v1", "max_retries": 9})
    assert here.run_id() == moved.run_id()
    assert here.run_id() != make_config(tmp_path, backend="openai", backend_options={"num_params": 5}).run_id()
