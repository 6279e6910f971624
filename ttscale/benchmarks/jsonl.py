"""Custom problems from a JSONL file: one JSON object per line with a question and an answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from ttscale.benchmarks._common import MathBenchmark, read_text_lines, take
from ttscale.errors import ConfigError
from ttscale.types import Problem


class JsonlBenchmark(MathBenchmark):
    """Problems from `path`; the column names are options, e.g. -B question_field=problem."""

    name: ClassVar[str] = "jsonl"

    path: Path
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str | None = "id"
    difficulty_field: str | None = None

    def load(self, *, limit: int | None = None) -> list[Problem]:
        """Read and check every line, then return the first `limit` problems."""
        lines = read_text_lines(self.path, "benchmark file")
        problems: list[Problem] = []
        first_line_of: dict[str, int] = {}
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            problem = self._problem(self._row(line, lineno), lineno)
            if problem.id in first_line_of:
                raise ConfigError(
                    f"{self.path}:{lineno}: id {problem.id!r} repeats line {first_line_of[problem.id]}; ids must be unique"
                )
            first_line_of[problem.id] = lineno
            problems.append(problem)
        if not problems:
            raise ConfigError(f"{self.path} holds no problems; add one JSON object per line")
        return problems[: take(len(problems), limit)]

    def _row(self, line: str, lineno: int) -> dict:
        where = f"{self.path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{where}: not valid JSON ({error.msg}, column {error.colno}); fix or remove the line") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for option, field in (("question_field", self.question_field), ("answer_field", self.answer_field)):
            if row.get(field) is None:
                raise ConfigError(
                    f"{where}: no {field!r} field (has {', '.join(map(repr, row)) or 'none'}); "
                    f"map the column with -B {option}=NAME"
                )
        return row

    def _problem(self, row: dict, lineno: int) -> Problem:
        where = f"{self.path}:{lineno}"
        raw_id = row.get(self.id_field) if self.id_field is not None else None
        if raw_id is not None and not str(raw_id).strip():
            raise ConfigError(f"{where}: empty {self.id_field!r}; give every line a non-empty id")
        difficulty = row.get(self.difficulty_field) if self.difficulty_field else None
        try:
            difficulty = float(difficulty) if difficulty is not None else None
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: {self.difficulty_field!r} is {difficulty!r}, not a number; fix it or map another column"
            ) from None
        return self.make_problem(
            id=str(raw_id) if raw_id is not None else f"{self.path.stem}:{lineno}",
            question=str(row[self.question_field]),
            answer=row[self.answer_field],
            difficulty=difficulty,
            line=lineno,
        )
