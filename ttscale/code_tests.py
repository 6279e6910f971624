"""Visible tests: the executable checks a code problem's own prompt shows, parsed at load time.

A strategy may run these (they are part of the question), never the benchmark's hidden tests.
A VisibleTest is a call and, where the prompt states one, the value it should equal:

- HumanEval: the docstring's doctest examples (`>>> f(x)` and the output line(s) under it) and
  example lines such as `f(x) == y`, `f(x) ➞ y`, `f(x) ==> y`, `f(x) returns y`,
  `f(x) should return y.` and `f(x) = y`. Only unambiguous ones are kept: the call must be a
  call of the entry point (doctest lines: an expression that calls it) and the expected value a
  Python literal (an output over several lines counts where it is one literal); an output that
  is not one (printed text, a blank line) is skipped rather than guessed. They are taken as written: a few HumanEval docstrings state an
  example the hidden tests contradict (listed in tests/test_visible_tests.py).
- MBPP: the one assert the question shows (`assert f(x) == y`, or any other assert expression).
  It is also the first of the hidden tests: it is in the prompt, so using it is deployable.

Problem.metadata holds them under VISIBLE_TESTS (as dicts), with ENTRY_POINT (the function's
name, which the prompt shows), SETUP (import lines the visible asserts name, e.g. `import math`
for `math.isclose`; empty for HumanEval, whose prompt carries its imports) and PREFIX (code the
candidate's program goes after: HumanEval's prompt, the stub with its imports and helpers).
"""

from __future__ import annotations

import ast
import builtins
import re
from typing import Any

from ttscale.types import Frozen

VISIBLE_TESTS = "visible_tests"
ENTRY_POINT = "entry_point"
SETUP = "setup"
PREFIX = "code_prefix"

# Separators of example lines, longest first (regex alternation tries them in order).
EXAMPLE_SEPARATOR = re.compile(r"^(?:#\s*)?(==>|-->|=>|➞|->|==|=|returns|should return|should be)\s*(.+)$")


class VisibleTest(Frozen):
    """One visible check: `call` (an expression) should equal `expected`; with no expected value,
    `call` itself is the asserted expression (e.g. `math.isclose(f(x), 3.14, rel_tol=0.001)`)."""

    call: str
    expected: str | None = None

    @property
    def assertion(self) -> str:
        """The check as an assert statement."""
        return f"assert {self.call}" if self.expected is None else f"assert {self.call} == {self.expected}"


def visible_metadata(tests: list[VisibleTest], entry_point: str, *, setup: str = "", prefix: str = "") -> dict[str, Any]:
    """Problem.metadata entries for a code problem's visible tests (JSON-ready)."""
    return {VISIBLE_TESTS: [t.model_dump() for t in tests], ENTRY_POINT: entry_point, SETUP: setup, PREFIX: prefix}


def visible_tests_of(metadata: dict[str, Any]) -> list[VisibleTest]:
    """The visible tests stored in a Problem's metadata (none for a problem without them)."""
    return [VisibleTest.model_validate(t) for t in metadata.get(VISIBLE_TESTS, ())]


# -- HumanEval: docstring examples ---------------------------------------------------------------


def docstring_tests(prompt: str, entry_point: str) -> list[VisibleTest]:
    """The unambiguous examples of a HumanEval prompt, in order, without duplicates."""
    lines = [line.strip() for line in prompt.splitlines()]
    found: list[VisibleTest] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(">>>"):
            source = line[3:].strip()
            i += 1
            while i < len(lines) and lines[i].startswith("..."):
                source += "\n" + lines[i][3:].strip()
                i += 1
            output = []
            while i < len(lines) and lines[i] and not lines[i].startswith((">>>", '"""', "'''")):
                output.append(lines[i])
                i += 1
            test = _doctest(source, "\n".join(output), entry_point)
        else:
            test = _example_line(line, entry_point)
            i += 1
        if test is not None and test not in found:
            found.append(test)
    return found


def _doctest(source: str, output: str, entry_point: str) -> VisibleTest | None:
    expression = _expression(source)
    if expression is None or not _calls(expression, entry_point) or not _self_contained(expression, entry_point):
        return None
    split = _equality(expression, entry_point)
    if split is not None and output in ("", "True"):  # `>>> f(x) == y`, shown with or without True
        return split
    if not output or not _is_literal(output):
        return None  # nothing shown, or printed text: ambiguous
    return VisibleTest(call=_normal(source), expected=_normal(output))


def _example_line(line: str, entry_point: str) -> VisibleTest | None:
    line = line.removeprefix("* ").removeprefix("- ").strip()  # bulleted examples
    if not line.startswith(entry_point + "("):
        return None
    for end in (i for i, char in enumerate(line) if char == ")"):
        call = line[: end + 1]
        expression = _expression(call)
        if not (isinstance(expression, ast.Call) and isinstance(expression.func, ast.Name)
                and expression.func.id == entry_point):
            continue
        if not _self_contained(expression, entry_point):
            return None  # `f(a) => ...` with `a` defined in prose
        match = EXAMPLE_SEPARATOR.match(line[end + 1:].strip())
        if match is None:
            return None
        expected = _literal_prefix(match.group(2))
        return None if expected is None else VisibleTest(call=_normal(call), expected=_normal(expected))
    return None


def _literal_prefix(text: str) -> str | None:
    """`text` as a Python literal, allowing a trailing full stop or `# comment` (else None)."""
    text = text.strip()
    candidates = [text.rstrip(".").strip(), text]
    if "#" in text:
        candidates.append(text.split("#", 1)[0].strip())
    return next((c for c in candidates if c and _is_literal(c)), None)


# -- MBPP: the shown assert -------------------------------------------------------------------------


def assert_test(statement: str) -> VisibleTest:
    """The VisibleTest of an `assert ...` line: `assert a == b` splits into call a and expected b."""
    try:
        tree = ast.parse(statement.strip())
    except SyntaxError as error:
        raise ValueError(f"not a Python assert: {statement!r} ({error.msg})") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise ValueError(f"not a single assert statement: {statement!r}")
    test = tree.body[0].test
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        return VisibleTest(call=ast.unparse(test.left), expected=ast.unparse(test.comparators[0]))
    return VisibleTest(call=ast.unparse(test))


def called_function(test: VisibleTest) -> str | None:
    """The function a test calls by name (MBPP's entry point): the first that is not a builtin,
    else the first (mbpp-126 defines its own `sum`)."""
    names = [node.func.id for node in ast.walk(ast.parse(test.call, mode="eval"))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    return next((name for name in names if not hasattr(builtins, name)), names[0] if names else None)


def needed_imports(test: VisibleTest, imports: list[str] | tuple[str, ...]) -> str:
    """The import lines among `imports` whose module the test names (e.g. `import math`)."""
    names = {node.id for node in ast.walk(ast.parse(test.call, mode="eval")) if isinstance(node, ast.Name)}
    if test.expected is not None:
        names |= {node.id for node in ast.walk(ast.parse(test.expected, mode="eval")) if isinstance(node, ast.Name)}
    kept = []
    for line in imports:
        try:
            statement = ast.parse(line).body
        except SyntaxError:
            continue
        bound = {alias.asname or alias.name.split(".")[0] for node in statement
                 if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
        if bound & names:
            kept.append(line)
    return "\n".join(kept)


# -- helpers -----------------------------------------------------------------------------------------


def _normal(source: str) -> str:
    """An expression as ast.unparse writes it: one spelling, comments dropped."""
    return ast.unparse(ast.parse(source, mode="eval"))


def _expression(source: str) -> ast.expr | None:
    try:
        return ast.parse(source, mode="eval").body
    except SyntaxError:
        return None


def _calls(expression: ast.expr, name: str) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name for n in ast.walk(expression))


def _self_contained(expression: ast.expr, entry_point: str) -> bool:
    """Whether every name the expression reads is the entry point or a builtin."""
    return all(node.id == entry_point or hasattr(builtins, node.id)
               for node in ast.walk(expression) if isinstance(node, ast.Name))


def _equality(expression: ast.expr, entry_point: str) -> VisibleTest | None:
    """`f(x) == y` with a literal y, as call and expected."""
    if (isinstance(expression, ast.Compare) and len(expression.ops) == 1 and isinstance(expression.ops[0], ast.Eq)
            and _calls(expression.left, entry_point) and _is_literal(ast.unparse(expression.comparators[0]))):
        return VisibleTest(call=ast.unparse(expression.left), expected=_normal(ast.unparse(expression.comparators[0])))
    return None


def _is_literal(text: str) -> bool:
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True
