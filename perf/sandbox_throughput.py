"""How fast the sandbox runs candidates' tests, and what bounds it.

For N candidates x T tests, two layouts, each through ttscale.grading.sandbox.run_many (one
sandboxed process per program, os.cpu_count() at a time):
  per candidate: N processes, each runs its candidate's T tests under per-test timers
                 (ttscale.code_exec's harness: what the code rules do);
  per test:      N x T processes, each runs one test.
Prints test executions per second for both, side by side, and their ratio, for each N x T.

Then what one sandboxed run costs, part by part (the median of repeated sequential runs):
  process start         fork + exec of /bin/true
  interpreter start     the sandbox's interpreter, `python -I -c pass` (and with -S: no site)
  namespaces            `unshare -m -i -n -p --kill-child -- /bin/true`: mount, IPC, network, PID
  cgroup setup          making the run's memory and pids groups, setting limits, removing them
  a sandboxed run       run_python("pass"): all of the above, plus the bootstrap building the
                        private root (tmpfs, bind mounts, pivot_root), dropping to the run's uid,
                        supervising, reaping and classifying: the residual
and the marginal cost of one more test inside a process. A layer this machine does not allow
(no root: no namespaces or cgroups) is reported as not measured.

    python perf/sandbox_throughput.py [--sizes 8x3 16x10 64x10] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import time

from ttscale.code_exec import harness, run_timeout_s
from ttscale.code_tests import VisibleTest
from ttscale.grading import sandbox
from ttscale.grading.sandbox import INTERPRETER, Limits, probe_isolation, run_many, run_python

SOLUTION = "def add(x, y):\n    return x + y\n"
TEST_TIMEOUT_S = 2.0


def tests(count: int) -> list[VisibleTest]:
    return [VisibleTest(call=f"add({i}, {i + 1})", expected=str(2 * i + 1)) for i in range(count)]


def throughput(n: int, t: int, per_candidate: bool) -> tuple[float, int]:
    """(test executions per second, processes started) for N candidates x T tests in one layout."""
    marker = "@@perf-" + secrets.token_hex(8) + "@@"
    if per_candidate:
        programs = [harness(SOLUTION, tests(t), TEST_TIMEOUT_S, marker) for _ in range(n)]
        timeout = run_timeout_s(t, TEST_TIMEOUT_S)
    else:
        programs = [harness(SOLUTION, [test], TEST_TIMEOUT_S, marker) for _ in range(n) for test in tests(t)]
        timeout = run_timeout_s(1, TEST_TIMEOUT_S)
    started = time.perf_counter()
    results = run_many(programs, timeout_s=timeout, output_limit=64_000)
    wall_s = time.perf_counter() - started
    reported = sum(marker in r.stdout for r in results)
    if reported != len(programs):
        raise SystemExit(f"{len(programs) - reported} of {len(programs)} runs did not report: {results[0].status} {results[0].reason}")
    return n * t / wall_s, len(programs)


def run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def parts(repeats: int) -> list[tuple[str, float | None]]:
    """Median milliseconds of each part of a sandboxed run (None: not available here). The parts
    run in turn, round after round, so a load that comes and goes weighs on each alike."""
    isolation = probe_isolation()
    actions = {
        "process start (fork + exec /bin/true)": lambda: run(["/bin/true"]),
        "interpreter start (python -I -c pass)": lambda: run([INTERPRETER, "-I", "-c", "pass"]),
        "  the same without site (-I -S)": lambda: run([INTERPRETER, "-I", "-S", "-c", "pass"]),
    }
    missing = []
    if isolation.private_tmp:
        unshare = ["unshare", "-m", "--propagation", "private", "-i", "-n", "-p", "--kill-child", "--", "/bin/true"]
        actions["namespaces (unshare -m -i -n -p, /bin/true)"] = lambda: run(unshare)
    else:
        missing.append("namespaces (not available: not root)")
    if isolation.cgroups:
        limits = Limits(timeout_s=1, cpu_s=3, memory_mb=1024, max_processes=64, max_file_mb=16, tmp_mb=64, shm_mb=64)
        serial = iter(range(10**9))

        def cgroups() -> None:  # the sandbox's own steps (private helpers: this measures them)
            made = sandbox._make_run_cgroups(isolation, limits, f"perf-{os.getpid()}-{next(serial)}")
            sandbox._remove_cgroups([path for path, _, _ in made])

        actions[f"cgroup setup ({', '.join(c for c, _, _ in isolation.cgroups)}: make, limit, remove)"] = cgroups
    else:
        missing.append("cgroup setup (not available here)")
    marker = "@@perf@@"
    one = harness(SOLUTION, tests(1), TEST_TIMEOUT_S, marker)
    many = harness(SOLUTION, tests(201), TEST_TIMEOUT_S, marker)
    actions["a sandboxed run of 'pass' (run_python)"] = lambda: run_python("pass", timeout_s=10)
    actions["the harness with 1 test (sandboxed)"] = lambda: run_python(one, timeout_s=30, output_limit=64_000)
    actions["the harness with 201 tests (sandboxed)"] = lambda: run_python(many, timeout_s=60, output_limit=64_000)
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeats):
        for name, action in actions.items():
            started = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - started)
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    with_1, with_201 = ms.pop("the harness with 1 test (sandboxed)"), ms.pop("the harness with 201 tests (sandboxed)")
    rows: list[tuple[str, float | None]] = [*ms.items(), *((name, None) for name in missing)]
    rows.append(("the harness with 1 test (sandboxed)", with_1))
    rows.append(("one more test in the same process (1 vs 201 tests, marginal)", (with_201 - with_1) / 200))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["8x3", "16x10", "64x10"], help="N x T pairs")
    parser.add_argument("--repeats", type=int, default=20, help="sequential runs per part")
    args = parser.parse_args()
    isolation = probe_isolation()
    print(f"sandbox: {sandbox._describe(isolation)}; {os.cpu_count()} CPUs seen, run_many uses that many workers")
    print(f"{'N x T':>8} {'per candidate':>16} {'per test':>16} {'ratio':>7}   (test executions per second; processes)")
    for size in args.sizes:
        n, t = (int(x) for x in size.lower().split("x"))
        cand, cand_procs = throughput(n, t, per_candidate=True)
        test, test_procs = throughput(n, t, per_candidate=False)
        print(f"{size:>8} {cand:>9.1f} ({cand_procs:>4}) {test:>9.1f} ({test_procs:>4}) {cand / test:>6.1f}x")
    print(f"\nOne sandboxed run, part by part (median of {args.repeats} sequential runs):")
    rows = parts(args.repeats)
    for name, ms in rows:
        print(f"  {name:<58} {'not measured' if ms is None else f'{ms:8.2f} ms'}")
    known = dict(rows)
    total = known.get("a sandboxed run of 'pass' (run_python)")
    counted = [v for k, v in known.items() if v is not None and k.startswith(("interpreter start", "namespaces", "cgroup"))]
    if total:
        print(f"  {'residual: root building, uid drop, supervision, reaping':<58} {total - sum(counted):8.2f} ms")


if __name__ == "__main__":
    main()
