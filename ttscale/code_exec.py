"""Run code candidates on a problem's visible tests in the sandbox: what execution-based selection reads.

Only visible tests (ttscale.code_tests: what the prompt shows) ever run here; the hidden tests
stay on the benchmark, which grades. One sandboxed process per candidate runs all of its
visible tests (`harness`): the candidate's program is executed once, then each test's call is
evaluated under its own timer (SIGALRM after `test_timeout_s`), its value compared with the
expected one and summarised by a digest of its repr (the behaviour signature, as AlphaCode's
clustering and MBR-exec compare outputs). The candidate's own prints go to a buffer; the report
is the last line that starts with a per-run random marker. The process as a whole has a wall
clock of test_timeout_s x (tests + 1) + STARTUP_S, so a candidate that loops, ignores the timer
or kills itself costs at most that; the sandbox (ttscale.grading.sandbox) keeps its files,
network and processes off the host.

A candidate's record (`CandidateExec`, in trace metadata "code_exec", one per candidate) holds
each test's status and output digest and the run's CPU and wall seconds, so every rule of
ttscale.selection can be recomputed from a samples.jsonl record (`code_arrays`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any, Literal, Sequence

import numpy as np

from ttscale.code_tests import ENTRY_POINT, PREFIX, SETUP, VisibleTest, visible_tests_of
from ttscale.grading.code_answer import extract_code, humaneval_solution
from ttscale.grading.sandbox import SandboxResult, run_many
from ttscale.selection import answer_classes
from ttscale.types import Frozen, Problem

CheckStatus = Literal["pass", "fail", "error", "timeout"]
STARTUP_S = 5.0  # interpreter start and sandbox setup, on top of the tests' own timers
OUTPUT_LIMIT = 64_000  # stdout kept per run: the report is its last line, well under half of this
CODE_EXEC = "code_exec"  # trace metadata: one CandidateExec dict per candidate
EXECUTION = "execution"  # trace metadata: the problem's totals (runs, cpu_s, wall_s)
PROGRAM_EXEC = "program_exec"  # trace metadata: one ProgramRun dict per candidate (program of thought)

HARNESS = r'''
import contextlib, hashlib, io, json, os, signal, sys
SOLUTION = %(solution)s
TESTS = %(tests)s
PER_TEST_S = %(per_test)r
MARKER = %(marker)r

class _TestTimeout(BaseException):
    pass

def _alarm(signum, frame):
    raise _TestTimeout()

def _digest(value):
    try:
        text = repr(value)
    except BaseException as error:
        text = "<repr raised %%s>" %% type(error).__name__
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:16]

def _shown(value):
    try:
        return repr(value)[:200]
    except BaseException as error:
        return "<repr raised %%s>" %% type(error).__name__

def _timed(run):
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, PER_TEST_S)
    try:
        return run()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

results = []
namespace = {"__name__": "__main__"}
sink = io.StringIO()
with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
    loaded = None
    try:
        _timed(lambda: exec(compile(SOLUTION, "<solution>", "exec"), namespace))
    except _TestTimeout:
        loaded = ["timeout", "load timeout", "loading the program timed out"]
    except BaseException as error:
        loaded = ["error", "load " + type(error).__name__, ("%%s: %%s" %% (type(error).__name__, error))[:200]]
    for call, expected in TESTS:
        if loaded is not None:
            results.append(loaded)
            continue
        try:
            def _check():
                value = eval(call, namespace)
                ok = bool(value) if expected is None else bool(value == eval(expected, namespace))
                return ok, _digest(value), "" if ok else "returned " + _shown(value)
            ok, digest, shown = _timed(_check)
            results.append(["pass" if ok else "fail", digest, shown])
        except _TestTimeout:
            results.append(["timeout", "timeout", "timed out"])
        except BaseException as error:
            results.append(["error", "raise " + type(error).__name__, ("%%s: %%s" %% (type(error).__name__, error))[:200]])
sys.__stdout__.write("\n" + MARKER + json.dumps(results) + "\n")
sys.__stdout__.flush()
os._exit(0)  # skip the candidate's atexit handlers and threads
'''


class CheckResult(Frozen):
    """One visible test on one candidate: its status, and a digest of the value the call returned
    (or what it raised): equal digests, equal behaviour. `error` says what went wrong: the
    exception ("Type: message") or, for a wrong value, "returned <its repr>" (200 characters at
    most), which self-debug feeds back to the model."""

    status: CheckStatus
    output: str
    error: str = ""


class CandidateExec(Frozen):
    """One candidate on the visible tests: a result per test, and what its run cost."""

    tests: tuple[CheckResult, ...] = ()
    runs: int = 0  # sandboxed processes started (0: no code, or no visible tests)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    run_status: str = ""  # the sandbox's verdict on the whole process ("pass": it reported)

    @property
    def passed(self) -> bool:
        """Whether it passed every visible test (vacuously where the problem shows none)."""
        if self.run_status in ("no code", "no tests"):
            return self.run_status == "no tests"
        return bool(self.tests) and all(t.status == "pass" for t in self.tests)

    @property
    def signature(self) -> str | None:
        """Its behaviour on the visible inputs (outputs in test order); None where it has no code
        or every call raised or timed out (such a candidate joins no cluster)."""
        if self.run_status == "no code" or (self.tests and all(t.status in ("error", "timeout") for t in self.tests)):
            return None
        return "|".join(t.output for t in self.tests)


def solution_source(problem: Problem, code: str) -> str:
    """The program that defines a candidate's solution: HumanEval's prompt and the completion
    (ttscale.grading.code_answer.humaneval_solution), then the imports the visible tests name."""
    meta = problem.metadata
    source = humaneval_solution(meta[PREFIX], code, meta[ENTRY_POINT]) if meta.get(PREFIX) else code
    return f"{source}\n\n{meta.get(SETUP, '')}\n"


def harness(solution: str, tests: Sequence[VisibleTest], test_timeout_s: float, marker: str) -> str:
    """The program that runs `solution` and then each test under its own timer, reporting on the
    line after `marker`."""
    pairs = [[t.call, t.expected] for t in tests]
    return HARNESS % {"solution": repr(solution), "tests": repr(pairs), "per_test": float(test_timeout_s), "marker": marker}


def run_timeout_s(num_tests: int, test_timeout_s: float) -> float:
    """The wall clock of one candidate's process: every test's timer, the load's, and start-up."""
    return test_timeout_s * (num_tests + 1) + STARTUP_S


def execute(problem: Problem, codes: Sequence[str | None], *, test_timeout_s: float = 2.0,
            memory_mb: int = 1024, max_workers: int | None = None) -> list[CandidateExec]:
    """Each candidate's results on the problem's visible tests (blocking; one process each)."""
    tests = visible_tests_of(problem.metadata)
    if not tests:
        return [CandidateExec(run_status="no code" if not (c and c.strip()) else "no tests") for c in codes]
    marker = "@@ttscale-visible-" + secrets.token_hex(8) + "@@"
    runnable = [i for i, c in enumerate(codes) if c and c.strip()]
    programs = [harness(solution_source(problem, codes[i]), tests, test_timeout_s, marker) for i in runnable]
    sandboxed = run_many(programs, max_workers=max_workers, timeout_s=run_timeout_s(len(tests), test_timeout_s),
                         memory_mb=memory_mb, output_limit=OUTPUT_LIMIT)
    results = [CandidateExec(run_status="no code") for _ in codes]
    for i, result in zip(runnable, sandboxed):
        results[i] = _read(result, marker, len(tests))
    return results


async def execute_async(problem: Problem, codes: Sequence[str | None], **options: Any) -> list[CandidateExec]:
    """`execute` off the event loop, so other problems keep generating meanwhile."""
    return await asyncio.to_thread(execute, problem, codes, **options)


def _read(result: SandboxResult, marker: str, num_tests: int) -> CandidateExec:
    cost = {"runs": 1, "cpu_s": result.cpu_s, "wall_s": result.duration_s, "run_status": result.status}
    lines = [line for line in result.stdout.splitlines() if line.startswith(marker)]
    try:
        rows = json.loads(lines[-1][len(marker):]) if lines else None
        tests = tuple(CheckResult(status=s, output=o, error=e) for s, o, e in rows) if rows is not None else ()
    except (ValueError, TypeError):
        tests = ()
    if len(tests) != num_tests:  # killed, or it exited before reporting: every test counts as that
        status: CheckStatus = "timeout" if result.status == "timeout" else "error"
        why = (result.reason or result.status)[:200]
        tests = tuple(CheckResult(status=status, output=f"run {result.status}", error=why) for _ in range(num_tests))
    return CandidateExec(tests=tests, **cost)


def exec_metadata(results: Sequence[CandidateExec]) -> dict[str, Any]:
    """Trace metadata: each candidate's results (CODE_EXEC) and the problem's totals (EXECUTION)."""
    return {
        CODE_EXEC: [r.model_dump() for r in results],
        EXECUTION: {"runs": sum(r.runs for r in results), "cpu_s": sum(r.cpu_s for r in results),
                    "wall_s": sum(r.wall_s for r in results)},
    }


def code_arrays(results: Sequence[CandidateExec], *, filter_visible: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For ttscale.selection.chosen_positions: whether each candidate passed every visible test,
    and its behaviour class (-1: none; with `filter_visible`, also for those that did not pass)."""
    passed = np.asarray([r.passed for r in results], dtype=bool)
    signatures = [r.signature if (r.passed or not filter_visible) else None for r in results]
    return passed, answer_classes(signatures, str.__eq__)


def execution_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """summary.json's "execution" section: sandbox runs and seconds over the problems that ran
    any (None: none did). Execution cost, beside FLOPs, never priced into them."""
    rows = [r["trace_metadata"][EXECUTION] for r in records if EXECUTION in (r.get("trace_metadata") or {})]
    if not rows:
        return None
    totals = {key: sum(row[key] for row in rows) for key in ("runs", "cpu_s", "wall_s")}
    return {"problems": len(rows), **totals,
            "runs_per_problem": totals["runs"] / len(rows), "cpu_s_per_problem": totals["cpu_s"] / len(rows)}


def results_of(trace_metadata: dict[str, Any]) -> list[CandidateExec] | None:
    """The CandidateExec list a record holds (None: the run executed nothing)."""
    rows = (trace_metadata or {}).get(CODE_EXEC)
    return None if rows is None else [CandidateExec.model_validate(r) for r in rows]


class ProgramRun(Frozen):
    """Program of thought (ttscale/strategies/program_of_thought.py): one sample's program run once in
    the sandbox, what it printed last (its answer) and what the run cost."""

    answer: str | None = None  # None: no code, or it crashed, timed out or printed nothing
    status: str = "no code"  # the sandbox's verdict ("pass": it exited cleanly), or "no code"
    error: str = ""
    runs: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0


PRINTED_CHARS = 200  # a printed answer is cut to this: a longer one is garbage either way


def printed_answer(stdout: str) -> str | None:
    """The last non-blank line a program printed, stripped (None: it printed nothing)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    return lines[-1][:PRINTED_CHARS] if lines else None


def run_programs(samples: Sequence[str], *, timeout_s: float, memory_mb: int = 1024,
                 max_workers: int | None = None) -> list[ProgramRun]:
    """Each sample's program (its last ```python block) run once in the sandbox, one process each,
    with a wall clock of `timeout_s` (blocking)."""
    codes = [extract_code(text) for text in samples]
    runnable = [i for i, code in enumerate(codes) if code and code.strip()]
    results = run_many([codes[i] for i in runnable], max_workers=max_workers, timeout_s=timeout_s,
                       memory_mb=memory_mb, output_limit=4000)  # the capture keeps the tail: the last line is there
    runs = [ProgramRun() for _ in samples]
    for i, result in zip(runnable, results):
        clean = result.status == "pass"
        runs[i] = ProgramRun(answer=printed_answer(result.stdout) if clean else None, status=result.status,
                             error="" if clean else (result.reason or result.stderr)[-PRINTED_CHARS:],
                             runs=1, cpu_s=result.cpu_s, wall_s=result.duration_s)
    return runs


def execution_totals(runs: Sequence[ProgramRun | CandidateExec]) -> dict[str, Any]:
    """A problem's execution cost (trace metadata EXECUTION): sandbox runs, CPU and wall seconds."""
    return {"runs": sum(r.runs for r in runs), "cpu_s": sum(r.cpu_s for r in runs), "wall_s": sum(r.wall_s for r in runs)}


def candidate_cpu_s(trace_metadata: dict[str, Any]) -> list[float] | None:
    """Each candidate's sandbox CPU seconds, for pricing subsets of the samples on the execution
    axis: its own recorded run (visible tests, or its program), plus an equal share of what the
    problem's total (EXECUTION) holds beyond those (runs recorded only as a total, such as the
    candidates' runs on model-written tests). None: the run executed nothing."""
    meta = trace_metadata or {}
    rows = meta.get(CODE_EXEC) or meta.get(PROGRAM_EXEC)
    if rows is None:
        return None
    own = [float(row.get("cpu_s", 0.0)) for row in rows]
    rest = max(0.0, float(meta.get(EXECUTION, {}).get("cpu_s", 0.0)) - sum(own))
    return [cpu + rest / len(own) for cpu in own] if own else own
