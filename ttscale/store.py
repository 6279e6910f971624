"""Run directories: config.json, samples.jsonl (one line per finished problem) and summary.json.

samples.jsonl is the record of truth. Lines are appended, flushed and fsynced as each problem
finishes, so a SIGKILL loses at most the line being written; on reopen a torn last line is cut
off, and problems already there are skipped. Problems are keyed by stable id, never position,
so shards written elsewhere can be merged.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from ttscale.config import RunConfig
from ttscale.errors import TtscaleError

SAMPLES = "samples.jsonl"


class RunStore:
    """One run directory, opened for appending; holds a lock so two processes never interleave."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.dir = config.output / config.run_id()
        self.samples_path = self.dir / SAMPLES
        self._lock: FileLock | None = None
        self._file = None

    def open(self) -> "RunStore":
        """Create or reopen the run directory, lock it, and repair a torn tail."""
        writable_dir(self.dir, "--output", shown=self.config.output)
        self._lock = FileLock(str(self.dir / ".lock"))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise TtscaleError(
                f"run {self.dir} is in use by another ttscale process; wait for it or use another --output"
            ) from None
        (self.dir / "config.json").write_text(self.config.model_dump_json(indent=2) + "\n")
        _cut_torn_tail(self.samples_path)
        self._file = open(self.samples_path, "a", encoding="utf-8")
        return self

    def done_ids(self) -> set[str]:
        """Ids of problems already finished in this run."""
        return {record["problem_id"] for record in self.records()}

    def append(self, record: dict[str, Any]) -> None:
        """Write one finished problem durably."""
        assert self._file is not None, "open() the store first"
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def records(self) -> list[dict[str, Any]]:
        """Every finished problem, once each (the first line wins if a merge duplicated one)."""
        seen: dict[str, dict[str, Any]] = {}
        for record in read_samples(self.samples_path):
            seen.setdefault(record["problem_id"], record)
        return list(seen.values())

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write summary.json atomically."""
        return self.write_json("summary.json", summary)

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        """Write one JSON file in the run directory atomically (write, then rename)."""
        path = self.dir / name
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        tmp.replace(path)
        return path

    def close(self) -> None:
        """Close the samples file and release the lock."""
        if self._file:
            self._file.close()
            self._file = None
        if self._lock:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunStore":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def writable_dir(path: Path, flag: str, shown: Path | None = None) -> Path:
    """Create `path` and write a file in it, or say in one line that it cannot be written and which
    flag to change. Commands check their outputs first, so a long computation never ends in an
    OSError traceback (a read-only disk, a file where a directory should be)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # removed on close
            pass
    except OSError as error:
        why = "a file has that name" if isinstance(error, FileExistsError) else error.strerror or error
        raise TtscaleError(
            f"cannot write to output directory {shown or path} ({why}); "
            f"pass {flag} with a writable directory"
        ) from None
    return path


def writable_file(path: Path, flag: str) -> Path:
    """`path` can be written as a file: not a directory, not read-only, in a writable directory."""
    if path.is_dir():
        raise TtscaleError(f"{path} is a directory; pass {flag} with a file name in it")
    if path.exists() and not os.access(path, os.W_OK):
        raise TtscaleError(f"cannot write {path} (read-only file); pass {flag} with a writable path")
    writable_dir(path.parent, flag)
    return path


def read_samples(path: Path) -> Iterator[dict[str, Any]]:
    """Parse samples.jsonl, naming the file and line of anything that is not a record."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise TtscaleError(f"{path}:{lineno}: unreadable record (not UTF-8); remove that line and rerun") from None
            except json.JSONDecodeError as error:
                raise TtscaleError(f"{path}:{lineno}: unreadable record ({error.msg}); remove that line and rerun") from None
            problem = record_problem(record)
            if problem:
                raise TtscaleError(
                    f"{path}:{lineno}: not a samples record ({problem}); `ttscale eval` did not write "
                    "this line: remove it and rerun"
                )
            yield record


# What every reader of samples.jsonl (resume, summary, compare, fit) takes for granted.
RECORD_FIELDS: dict[str, type] = {
    "problem_id": str,
    "chosen_rule": str,
    "n": int,
    "num_correct": int,
    "candidates": list,
    "selections": dict,
    "cost": dict,
}
CANDIDATE_FIELDS = ("answer", "correct", "num_tokens")


def record_problem(record: Any) -> str | None:
    """Why `record` is not a samples.jsonl record, in a few words; None when it is one."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    missing = [name for name in RECORD_FIELDS if name not in record]
    if missing:
        return "no " + ", ".join(map(repr, missing)) + " field" + ("s" if len(missing) > 1 else "")
    for name, kind in RECORD_FIELDS.items():
        value = record[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{name!r} is {json.dumps(value)[:40]}, not a JSON {_JSON_NAMES[kind]}"
    if not record["problem_id"]:
        return "empty 'problem_id'"
    for index, candidate in enumerate(record["candidates"]):
        if not isinstance(candidate, dict) or any(name not in candidate for name in CANDIDATE_FIELDS):
            return f"candidate {index} lacks {', '.join(map(repr, CANDIDATE_FIELDS))}"
    for rule, selection in record["selections"].items():
        if not isinstance(selection, dict) or "correct" not in selection:
            return f"selection {rule!r} has no 'correct'"
    if record["chosen_rule"] not in record["selections"]:
        return f"chosen_rule {record['chosen_rule']!r} is not among its selections"
    return None


_JSON_NAMES = {str: "string", int: "integer", list: "array", dict: "object"}


def _cut_torn_tail(path: Path) -> None:
    """Finish or drop a last line that has no newline. A crash can stop a write after the record's
    JSON and before its newline: such a line is a whole record, kept (and given its newline, so the
    next append starts a line of its own). A line cut inside the JSON is dropped: it is re-solved."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        whole = record_problem(json.loads(data[start:].decode("utf-8"))) is None
    except ValueError:  # torn JSON or torn UTF-8 (UnicodeDecodeError is a ValueError)
        whole = False
    with open(path, "r+b") as handle:
        if whole:
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
        else:
            handle.truncate(start)
        handle.flush()
        os.fsync(handle.fileno())
