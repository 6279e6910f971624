"""Model-written tests for code selection: CodeT's test prompt, its parsing, and the pass matrix.

CodeT (Chen et al. 2022, "CodeT: Code Generation with Generated Tests"; microsoft/CodeT) asks the
same model for tests with a completion prompt: the function's signature and docstring, a `pass`
body, then `# check the correctness of <entry_point>` and `assert ` (CodeT's
data/dataset/HumanEval_for_test_case_generation.jsonl). Here the prompt ends in
`assert <entry_point>(`, so every sample starts a test of the function. As in CodeT's
postprocess.py, a sample is cut at the first `\\nclass`, `\\ndef`, `\\n#`, `\\nif` or `\\nprint`,
split at `assert `, and only its first ASSERTS_PER_SAMPLE asserts are kept (CodeT's
`test_case_limit`, 5). Stricter than CodeT, only well-formed `assert <entry_point>(...) == <literal>`
asserts count (CodeT keeps any assert that compiles). Identical tests are kept once with their
multiplicity, which weighs them as CodeT's expanded test ids do.

Scaled to this machine: CodeT draws 100 test samples per problem (temperature 0.8, top-p 0.95,
up to 300 tokens); here TEST_SAMPLES = 8 samples of up to TEST_MAX_TOKENS = 192 tokens at the
run's temperature. CodeT removes the docstring's examples from the test prompt; here the prompt
is the problem's own code prefix as shown (examples kept), so the model may restate them.

Every candidate runs every generated test in one sandboxed process with per-test timers
(ttscale.code_exec, the harness the visible tests use); `pass_matrix` is the (candidates x tests)
result that ttscale.selection's `codet` and `test-vote` rules read. The judge of
`test-vote-judge` (CodeMonkeys, Ehrlich et al. 2025) is prompted here too (`judge_prompt`,
`parse_choice`). Only the prompt's code and entry point are read: never a hidden test.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Sequence

import numpy as np

from ttscale.code_exec import CandidateExec, execute, results_of
from ttscale.code_tests import ENTRY_POINT, PREFIX, VISIBLE_TESTS, VisibleTest
from ttscale.selection import answer_classes
from ttscale.types import ChatMessage, Frozen, Problem

TEST_SAMPLES = 8  # CodeT: 100 samples per problem; scaled to this machine
ASSERTS_PER_SAMPLE = 5  # CodeT's test_case_limit default (main.py)
TEST_MAX_TOKENS = 192  # CodeT: 300
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # CodeT's postprocess.py STOP_TOKEN
GENERATED_TESTS = "generated_tests"  # trace metadata: GeneratedTests, the pass matrix, the judge
SELECTION_COST = "selection_cost"  # trace metadata: the Cost of the rule's own model calls (tests, judge)
JUDGE_MAX_TOKENS = 64


class GeneratedTests(Frozen):
    """The distinct well-formed tests the model wrote, in order of first appearance, with how
    often each was written (CodeT counts a repeated test that many times)."""

    tests: tuple[VisibleTest, ...] = ()
    counts: tuple[int, ...] = ()


def codet_prompt(problem: Problem) -> str | None:
    """CodeT's test-writing prompt for a problem: its code (HumanEval's stub: signature and
    docstring) with a `pass` body, then the check comment and the start of an assert. For a
    problem without a code stub (MBPP), the question as comments. None: no entry point known."""
    entry = problem.metadata.get(ENTRY_POINT)
    if not entry:
        return None
    prefix = problem.metadata.get(PREFIX) or ""
    if prefix:
        head = prefix.rstrip("\n") + "\n    pass\n"
    else:
        question = problem.prompt if isinstance(problem.prompt, str) else problem.prompt[-1].content
        head = "\n".join("# " + line for line in question.strip().splitlines()) + "\n"
    return f"{head}\n# check the correctness of {entry}\nassert {entry}("


def parse_asserts(completion: str, entry_point: str, *, limit: int = ASSERTS_PER_SAMPLE) -> list[VisibleTest]:
    """The well-formed tests of one test sample (the text after `assert <entry_point>(`): its first
    `limit` asserts, cut as CodeT cuts them, that read `assert <entry_point>(...) == <literal>`."""
    text = f"assert {entry_point}(" + completion
    for stop in STOP:
        text = text.split(stop)[0]
    pieces = [p.strip() for p in text.split("assert ") if p.strip()][:limit]
    return [test for piece in pieces if (test := _equality_test(piece, entry_point)) is not None]


def _equality_test(source: str, entry_point: str) -> VisibleTest | None:
    try:
        body = ast.parse(source, mode="eval").body
    except SyntaxError:
        return None
    if not (isinstance(body, ast.Compare) and len(body.ops) == 1 and isinstance(body.ops[0], ast.Eq)):
        return None
    call, expected = body.left, body.comparators[0]
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == entry_point):
        return None
    if not all(_literal(arg) for arg in [*call.args, *(k.value for k in call.keywords)]) or not _literal(expected):
        return None  # arguments and expected value must be literals: nothing the test defines elsewhere
    return VisibleTest(call=ast.unparse(call), expected=ast.unparse(expected))


def _literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


def collect(completions: Sequence[str], entry_point: str) -> GeneratedTests:
    """The distinct tests of all test samples, with their multiplicities."""
    counts: dict[VisibleTest, int] = {}
    for completion in completions:
        for test in parse_asserts(completion, entry_point):
            counts[test] = counts.get(test, 0) + 1
    return GeneratedTests(tests=tuple(counts), counts=tuple(counts.values()))


def run_generated(problem: Problem, codes: Sequence[str | None], tests: GeneratedTests, *,
                  test_timeout_s: float, max_workers: int | None = None) -> list[CandidateExec]:
    """Each candidate on the generated tests: one sandboxed process per candidate, each test under
    its own timer (ttscale.code_exec.execute, given these tests in place of the visible ones)."""
    as_visible = problem.model_copy(update={"metadata": {**problem.metadata,
                                                         VISIBLE_TESTS: [t.model_dump() for t in tests.tests]}})
    return execute(as_visible, codes, test_timeout_s=test_timeout_s, max_workers=max_workers)


def pass_matrix(results: Sequence[CandidateExec], num_tests: int) -> np.ndarray:
    """(candidates x tests) bool: whether each candidate passed each generated test."""
    matrix = np.zeros((len(results), num_tests), dtype=bool)
    for i, result in enumerate(results):
        if len(result.tests) == num_tests:
            matrix[i] = [t.status == "pass" for t in result.tests]
    return matrix


def combined_behaviour(visible: Sequence[CandidateExec], generated_signatures: Sequence[str | None], *,
                       filter_visible: bool = False) -> np.ndarray:
    """Each candidate's behaviour class by its outputs on the visible inputs and on the inputs of
    the model-written tests (AlphaCode clusters on generated inputs; the tests' expected values
    play no part). -1: no behaviour on either (no code, or every call failed), or, with
    `filter_visible`, a candidate that failed a visible test."""
    signatures = [
        None if (filter_visible and not run.passed) or (run.signature is None and generated is None)
        else f"{run.signature}#{generated}"
        for run, generated in zip(visible, generated_signatures)
    ]
    return answer_classes(signatures, str.__eq__)


def generated_behaviour_of(trace_metadata: dict[str, Any]) -> np.ndarray | None:
    """`combined_behaviour` from a record's trace metadata (None: no tests written, no visible
    runs, or a run recorded before the outputs on generated inputs were kept)."""
    meta = trace_metadata or {}
    visible, signatures = results_of(meta), (meta.get(GENERATED_TESTS) or {}).get("signatures")
    if visible is None or signatures is None:
        return None
    return combined_behaviour(visible, signatures, filter_visible=meta.get("behaviour_filter") == "visible")


def judge_prompt(problem: Problem, programs: Sequence[str]) -> tuple[ChatMessage, ...]:
    """The selection judge's prompt: the problem and the finalists, asked which one is correct."""
    shown = "\n\n".join(f"Solution {i + 1}:\n```python\n{p.strip()}\n```" for i, p in enumerate(programs))
    question = problem.prompt if isinstance(problem.prompt, str) else problem.prompt[-1].content
    return (ChatMessage(role="user", content=(
        f"{question}\n\nHere are {len(programs)} candidate solutions.\n\n{shown}\n\n"
        f"Which solution is correct? Answer with 'Solution N' for a number N from 1 to {len(programs)}.")),)


def parse_choice(text: str, count: int) -> int | None:
    """The 0-based finalist the judge chose: the last 'Solution N' it names, else its only number
    in range; None when it names none (or several bare numbers): the caller falls back."""
    named = [int(m) for m in re.findall(r"[Ss]olution\s*#?\s*(\d+)", text) if 1 <= int(m) <= count]
    if named:
        return named[-1] - 1
    numbers = {int(m) for m in re.findall(r"\b(\d+)\b", text) if 1 <= int(m) <= count}
    return numbers.pop() - 1 if len(numbers) == 1 else None


def generated_metadata(tests: GeneratedTests, texts: Sequence[str], results: Sequence[CandidateExec],
                       **extra: Any) -> dict[str, Any]:
    """Trace metadata GENERATED_TESTS: the tests, the raw samples, the pass matrix (0/1 rows) and
    each candidate's behaviour signature on the tests' inputs."""
    matrix = pass_matrix(results, len(tests.tests))
    return {"tests": [t.model_dump() for t in tests.tests], "counts": list(tests.counts), "samples": list(texts),
            "passed": matrix.astype(int).tolist(), "signatures": [r.signature for r in results], **extra}


def arrays_of(trace_metadata: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(pass matrix, test multiplicities) from a record's trace metadata (None: no tests written)."""
    recorded = (trace_metadata or {}).get(GENERATED_TESTS)
    if recorded is None:
        return None
    counts = np.asarray(recorded["counts"], dtype=np.float64)
    matrix = np.asarray(recorded["passed"], dtype=bool).reshape(len(recorded["passed"]), len(counts))  # (n, 0): none parsed
    return matrix, counts
