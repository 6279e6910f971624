"""`mbpp`: MBPP (sanitized, test split: 257 problems), graded by running its asserts in the sandbox.

Rows come from the hub (google-research-datasets/mbpp, config "sanitized") or from a local copy
in the same schema, `data_file` (JSON/JSONL/Parquet with task_id, prompt, code, test_list,
test_imports). As is usual for MBPP, the question shows the first assert, which names the
function and its signature; all asserts, and their imports, are gold and stay on the benchmark,
never in Problem.metadata. Problem.answer is the reference code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr

from ttscale.benchmarks.hub import load_rows, problems_from_rows, required_field
from ttscale.benchmarks.humaneval import CodeBenchmark
from ttscale.errors import ConfigError
from ttscale.types import Grade, Problem
from ttscale.grading.code_answer import assert_program

DEFAULT_MBPP_TEMPLATE = (
    "You are an expert Python programmer. Write a Python function for this task:\n\n{question}\n\n"
    "Return the complete code, with any imports it needs, in a single ```python code block."
)


class MbppBenchmark(CodeBenchmark):
    """MBPP sanitized: write a function from a one-line description; correct iff every assert passes."""

    name: ClassVar[str] = "mbpp"
    dataset: ClassVar[str] = "google-research-datasets/mbpp"
    config: ClassVar[str] = "sanitized"
    split: ClassVar[str] = "test"
    default_template: ClassVar[str] = DEFAULT_MBPP_TEMPLATE

    data_file: Path | None = Field(default=None, description="a local JSON/JSONL/Parquet copy of the split")
    size: int | None = Field(default=None, ge=1, description="use only the first `size` problems (None: all)")

    # Gold tests by problem id, filled by load(); a mutable cache, not a field.
    _tests: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = PrivateAttr(default_factory=dict)

    def load(self, *, limit: int | None = None) -> list[Problem]:
        """The first `limit` problems (of the first `size`), ids checked unique; their tests kept."""
        rows = load_rows(self.dataset, self.config, self.split, self.data_file)
        return problems_from_rows(rows, self._problem_keeping_tests, size=self.size, limit=limit, source=self._source())

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
        problem = self.make_problem(id=f"mbpp-{task_id}", question=question, answer=code)
        return problem, (tuple(map(str, test_list)), tuple(map(str, test_imports)))

    def _field(self, row: dict[str, Any], name: str, index: int) -> Any:
        expects = f"the {self.name} benchmark expects the schema of {self.dataset} ({self.config})"
        return required_field(row, name, index, source=self._source(), expects=expects)

    def _source(self) -> str:
        return str(self.data_file) if self.data_file is not None else f"{self.dataset} ({self.config}, {self.split})"

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
