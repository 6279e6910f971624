"""`mbpp`: MBPP (sanitized, test split: 257 problems), graded by running its asserts in the sandbox.

Rows come from the hub (google-research-datasets/mbpp, config "sanitized") or from a local file
in the same schema, `data_file` (JSON/JSONL/Parquet with task_id, prompt, code, test_list,
test_imports). The local file may be the whole sanitized set as google-research publishes it
(sanitized-mbpp.json, 427 problems): then `split` picks the hub's split by task_id (SPLITS;
default test, task_id 11-510, 257 problems). A file holding one split's rows is taken whole
unless `split` is given. A .json file is read with the json module, so loading prints no
`datasets` progress bar.

As is usual for MBPP, the question shows the first assert, which names the function and its
signature. That assert is the visible test (Problem.metadata, ttscale.code_tests); it is also
one of the graded tests, and using it is deployable because it is in the prompt. All asserts,
and their imports, are gold and stay on the benchmark. Problem.answer is the reference code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from ttscale.benchmarks._common import read_text_lines
from ttscale.benchmarks.hub import load_rows, problems_from_rows, required_field
from ttscale.benchmarks.humaneval import CodeBenchmark
from ttscale.code_tests import assert_test, called_function, needed_imports, visible_metadata
from ttscale.errors import ConfigError
from ttscale.types import Grade, Problem
from ttscale.grading.code_answer import assert_program

DEFAULT_MBPP_TEMPLATE = (
    "You are an expert Python programmer. Write a Python function for this task:\n\n{question}\n\n"
    "Return the complete code, with any imports it needs, in a single ```python code block."
)
# The hub's splits of the sanitized config, by task_id (inclusive); sanitized-mbpp.json holds
# 7 + 257 + 43 + 120 = 427 problems in them.
SPLITS: dict[str, tuple[int, int]] = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
Split = Literal["prompt", "test", "validation", "train"]


class MbppBenchmark(CodeBenchmark):
    """MBPP sanitized: write a function from a one-line description; correct iff every assert passes."""

    name: ClassVar[str] = "mbpp"
    dataset: ClassVar[str] = "google-research-datasets/mbpp"
    config: ClassVar[str] = "sanitized"
    default_template: ClassVar[str] = DEFAULT_MBPP_TEMPLATE

    data_file: Path | None = Field(default=None, description="a local JSON/JSONL/Parquet copy: a split, or all of sanitized-mbpp.json")
    split: Split | None = Field(
        default=None, description="the hub's split, by task_id (default: test; a data_file holding one split's rows is taken whole)",
    )
    size: int | None = Field(default=None, ge=1, description="use only the first `size` problems (None: all)")

    # Gold tests by problem id, filled by load(); a mutable cache, not a field.
    _tests: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = PrivateAttr(default_factory=dict)

    def load(self, *, limit: int | None = None) -> list[Problem]:
        """The first `limit` problems (of the first `size`), ids checked unique; their tests kept."""
        rows = self._split_rows()
        return problems_from_rows(rows, self._problem_keeping_tests, size=self.size, limit=limit, source=self._source())

    def _split_rows(self) -> list[dict[str, Any]]:
        split = self.split or "test"
        if self.data_file is None:
            try:
                return load_rows(self.dataset, self.config, split, None)
            except ConfigError as error:
                raise ConfigError(f"{error}; or pass google-research's sanitized-mbpp.json (all splits) as -B data_file=PATH") from None
        path = Path(self.data_file)
        rows = _json_rows(path) if path.suffix.lower() == ".json" else load_rows(self.dataset, self.config, split, path)
        splits = {_split_of(row.get("task_id")) for row in rows}
        if self.split is None and len(splits) <= 1:
            return rows  # one split's copy: all of it
        low, high = SPLITS[split]
        kept = [row for row in rows if _split_of(row.get("task_id")) == split]
        if not kept:
            raise ConfigError(
                f"{path}: no problem of the {split} split (task_id {low}-{high}); pass -B split= one of "
                f"{', '.join(SPLITS)}, or a file holding that split"
            )
        return kept

    def _problem_keeping_tests(self, index: int, row: dict[str, Any]) -> Problem:
        problem, tests = self._problem(index, row)
        self._tests[problem.id] = tests
        return problem

    def _problem(self, index: int, row: dict[str, Any]) -> tuple[Problem, tuple[tuple[str, ...], tuple[str, ...]]]:
        task_id = self._field(row, "task_id", index)
        description = str(self._field(row, "prompt", index)).strip()
        code = str(self._field(row, "code", index))
        test_list = self._field(row, "test_list", index)
        test_imports = row.get("test_imports") or []
        if not isinstance(test_list, (list, tuple)) or not test_list or not isinstance(test_imports, (list, tuple)):
            raise ConfigError(
                f"{self._source()}: row {index}: test_list must be a non-empty list of asserts and "
                f"test_imports a list of import lines"
            )
        question = f"{description}\nYour code should pass this test:\n{test_list[0]}"
        try:
            shown = assert_test(str(test_list[0]))
        except ValueError as error:
            raise ConfigError(f"{self._source()}: row {index}: the first of test_list: {error}") from None
        visible = visible_metadata([shown], called_function(shown) or "", setup=needed_imports(shown, list(map(str, test_imports))))
        problem = self.make_problem(id=f"mbpp-{task_id}", question=question, answer=code, **visible)
        return problem, (tuple(map(str, test_list)), tuple(map(str, test_imports)))

    def _field(self, row: dict[str, Any], name: str, index: int) -> Any:
        expects = f"the {self.name} benchmark expects the schema of {self.dataset} ({self.config})"
        return required_field(row, name, index, source=self._source(), expects=expects)

    def _source(self) -> str:
        return str(self.data_file) if self.data_file is not None else f"{self.dataset} ({self.config}, {self.split or 'test'})"

    def program(self, problem: Problem, answer: str) -> str:
        """`answer`, then the problem's test imports and asserts."""
        if problem.id not in self._tests:
            self.load()
        if problem.id not in self._tests:
            raise ConfigError(f"{problem.id!r} is not a problem of {self.name} ({self._source()})")
        tests, imports = self._tests[problem.id]
        return assert_program(answer, tests, imports)

    def grade(self, problem: Problem, answer: str | None) -> Grade:
        """Run every assert of the problem on `answer` in the sandbox."""
        if answer is None or not answer.strip():
            return Grade(correct=False, reason="no code")
        return self.verdict(self.program(problem, answer))


def _split_of(task_id: Any) -> str | None:
    """The hub split whose task_id range holds `task_id` (None: none, or not a number)."""
    try:
        number = int(task_id)
    except (TypeError, ValueError):
        return None
    return next((name for name, (low, high) in SPLITS.items() if low <= number <= high), None)


def _json_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a .json file: an array of objects (sanitized-mbpp.json) or one object a line."""
    text = "\n".join(read_text_lines(path, "MBPP data file"))
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not JSON ({error.msg}, line {error.lineno}); expected an array of MBPP rows") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data or not all(isinstance(row, dict) for row in data):
        raise ConfigError(f"{path}: expected a non-empty JSON array of objects (the MBPP schema)")
    return data
