"""Plugins from other installed packages, and the contract they are written against.

The example package of docs/plugins.md (its pyproject with entry points, and one strategy,
verifier, backend and benchmark module, read from the page's code blocks) is built and installed
with pip into a temporary directory, with its dist-info, offline; `ttscale eval` then runs its
plugins through the CLI with that directory on PYTHONPATH, as for a user who pip-installed it.
"""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ttscale.backends.fake import FakeBackend
from ttscale.context import AnswerView, SolveContext, VerifierView
from ttscale.cost import CostMeter
from ttscale.errors import UnknownNameError
from ttscale.protocols import BoundVerifier, Meter, Startable, StrategyContext, start_now
from ttscale.registry import PluginError, Registry
from ttscale.steps import split_steps
from ttscale.types import ChatMessage, Problem, SampleParams
from ttscale.verifiers.base import VerifierBase

ROOT = Path(__file__).resolve().parent.parent
# A code block of the page whose first line names its file: "# pyproject.toml", "# example_plugins/x.py".
FILE_BLOCK = re.compile(r"```(?:python|toml)\n# (\S+)\n(.*?)```", re.DOTALL)


def docs_example_files() -> dict[str, str]:
    """The files of docs/plugins.md's example package, as the page shows them."""
    files = {path: f"# {path}\n{body}" for path, body in FILE_BLOCK.findall((ROOT / "docs" / "plugins.md").read_text())}
    assert {"pyproject.toml", "example_plugins/strategy.py", "example_plugins/verifier.py",
            "example_plugins/backend.py", "example_plugins/benchmark.py"} <= set(files)
    return files


def write_package(root: Path, name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]) -> Path:
    """A source tree with a pyproject.toml declaring `entry_points` ({group: {name: "module:attr"}})."""
    root.mkdir()
    packages = sorted({module.split("/")[0] for module in modules})
    lines = ['[build-system]', 'requires = ["setuptools>=69"]', 'build-backend = "setuptools.build_meta"', '',
             '[project]', f'name = "{name}"', 'version = "0.1"', '']
    for group, entries in entry_points.items():
        lines.append(f'[project.entry-points."{group}"]')
        lines += [f'{entry} = "{value}"' for entry, value in entries.items()]
        lines.append("")
    lines += ["[tool.setuptools]", f"packages = {json.dumps(packages)}"]
    (root / "pyproject.toml").write_text("\n".join(lines) + "\n")
    for package in packages:
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
    for path, source in modules.items():
        (root / path).write_text(source)
    return root


def pip_install(package: Path, target: Path) -> Path:
    """Install `package` into `target` with its dist-info (entry points included), offline."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(package)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    assert list(target.glob("*.dist-info/entry_points.txt")), "pip installed no entry points"
    return target


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """docs/plugins.md's ttscale-example-plugins installed: strategy shortest-of-n, verifier
    step-length, backend canned, benchmark doubles."""
    root = tmp_path_factory.mktemp("example")
    package = root / "src"
    for path, text in {**docs_example_files(), "example_plugins/__init__.py": ""}.items():
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(text)
    return pip_install(package, root / "site")


@pytest.fixture(scope="module")
def bad_site(tmp_path_factory) -> Path:
    """ttscale-bad-plugin installed: it claims the built-in best-of-n and the example's shortest-of-n,
    one entry point's module fails to import, another names something that is not a factory."""
    root = tmp_path_factory.mktemp("bad")
    package = write_package(
        root / "src", "ttscale-bad-plugin",
        {"ttscale.strategies": {"best-of-n": "bad_plugin.strategies:Impostor",
                                "shortest-of-n": "bad_plugin.strategies:Impostor",
                                "broken": "bad_plugin.broken:Strategy",
                                "not-a-factory": "bad_plugin.strategies:VERSION"}},
        {"bad_plugin/strategies.py": "VERSION = '0.1'\n\nclass Impostor:\n    name = 'impostor'\n",
         "bad_plugin/broken.py": "import ttscale_no_such_dependency\n"},
    )
    return pip_install(package, root / "site")


def ttscale(*args: str, sites: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m ttscale ARGS` with the plugin directories on PYTHONPATH."""
    path = [str(site) for site in sites] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.run([sys.executable, "-m", "ttscale", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def records(run_root: Path) -> list[dict]:
    [samples] = run_root.glob("*/samples.jsonl")
    return [json.loads(line) for line in samples.read_text().splitlines()]


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return " ".join(result.stderr.split())


# --- through the CLI ----------------------------------------------------------------------------


def test_a_strategy_from_an_installed_package_runs_through_ttscale_eval(example_site, tmp_path):
    result = ttscale("eval", "-s", "shortest-of-n", "--n", "3", "--backend", "fake", "-b", "arithmetic",
                     "--limit", "3", "-o", "runs", sites=[example_site], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = records(tmp_path / "runs")
    assert len(rows) == 3
    for row in rows:
        assert row["strategy"] == "shortest-of-n" and row["chosen_rule"] == "shortest"
        candidates = row["candidates"]
        assert len(candidates) == 3  # its --n
        finished = [c for c in candidates if c["finish_reason"] == "stop"] or candidates
        shortest = min(finished, key=lambda c: c["num_tokens"])
        # The plugin's own rule and log, and the per-problem seed its context carried.
        assert row["selections"]["shortest"]["answer"] == shortest["answer"]
        assert row["trace_metadata"] == {"seed": row["seed"], "shortest_tokens": shortest["num_tokens"]}
        # It spent through the meter: one request, every sample's tokens.
        assert row["cost"]["calls"] == 1
        assert row["cost"]["generated_tokens"] == sum(c["num_tokens"] for c in candidates) > 0


def test_a_verifier_backend_and_benchmark_from_an_installed_package_run_through_ttscale_eval(example_site, tmp_path):
    result = ttscale("eval", "-s", "best-of-n", "--n", "2", "-v", "step-length", "-V", "per=100",
                     "--backend", "canned", "-b", "doubles", "-B", "count=3", "-o", "runs",
                     sites=[example_site], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = records(tmp_path / "runs")
    assert sorted(row["problem_id"] for row in rows) == ["double-1", "double-2", "double-3"]  # the benchmark's
    [run_dir] = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "backend.json").read_text())["backend"] == "CannedBackend"
    canned = "Two and two.\n\nSo the answer is \\boxed{4}."
    for row in rows:
        assert row["verifier"] == "step-length" and row["verifier_uses_gold"] is False
        for candidate in row["candidates"]:
            assert candidate["text"] == canned and candidate["answer"] == "4"  # the backend's, read by the benchmark
            assert candidate["step_scores"] == [len(step) / 100 for step in split_steps(canned)]  # the verifier's
        # graded by the benchmark: only 2 + 2 is 4
        assert row["selections"]["majority"]["correct"] is (row["problem_id"] == "double-2")


def test_a_plugin_claiming_a_built_in_name_is_an_error_naming_both_packages(bad_site, tmp_path):
    message = one_line_error(ttscale("eval", "-s", "best-of-n", "--backend", "fake", "-b", "arithmetic",
                                     "--limit", "1", sites=[bad_site], cwd=tmp_path))
    assert "strategy 'best-of-n' is claimed by ttscale (built-in ttscale.strategies.best_of_n:BestOfN)" in message
    assert "package ttscale-bad-plugin 0.1 (entry point 'best-of-n = bad_plugin.strategies:Impostor'" in message


def test_a_plugin_that_fails_to_import_is_an_error_naming_its_entry_point_and_the_exception(bad_site, tmp_path):
    message = one_line_error(ttscale("eval", "-s", "broken", "--backend", "fake", "-b", "arithmetic",
                                     "--limit", "1", sites=[bad_site], cwd=tmp_path))
    assert "strategy plugin 'broken' failed to load" in message
    assert "entry point 'broken = bad_plugin.broken:Strategy' in group 'ttscale.strategies'" in message
    assert "ModuleNotFoundError: No module named 'ttscale_no_such_dependency'" in message
    assert "package ttscale-bad-plugin 0.1" in message


# --- the registry, in process (a fresh registry reads the entry points of the sys.path it finds) ---


def fresh_strategies() -> Registry:
    registry = Registry("strategy", "strategies")
    registry.register("best-of-n", "ttscale.strategies.best_of_n:BestOfN")
    return registry


def test_plugin_names_are_listed_and_suggested_with_their_package(example_site, monkeypatch):
    monkeypatch.syspath_prepend(str(example_site))
    strategies = fresh_strategies()
    assert strategies.group == "ttscale.strategies"
    assert strategies.names() == ["best-of-n", "shortest-of-n"] and "shortest-of-n" in strategies
    with pytest.raises(UnknownNameError) as error:
        strategies.factory("shortest-of")
    assert "Did you mean 'shortest-of-n'?" in str(error.value)
    assert "Known strategies: best-of-n, shortest-of-n (from package ttscale-example-plugins 0.1)." in str(error.value)
    assert strategies.factory("shortest-of-n").__name__ == "ShortestOfN"


def test_two_plugins_claiming_one_name_is_an_error_naming_both(example_site, bad_site, monkeypatch):
    monkeypatch.syspath_prepend(str(example_site))
    monkeypatch.syspath_prepend(str(bad_site))
    with pytest.raises(PluginError) as error:
        fresh_strategies().factory("shortest-of-n")
    assert "package ttscale-bad-plugin 0.1" in str(error.value) and "package ttscale-example-plugins 0.1" in str(error.value)


def test_an_entry_point_that_names_no_factory_is_an_error(bad_site, monkeypatch):
    monkeypatch.syspath_prepend(str(bad_site))
    with pytest.raises(PluginError, match="'not-a-factory = bad_plugin.strategies:VERSION'.* names a str, not a class or factory"):
        fresh_strategies().factory("not-a-factory")


# --- the contract a plugin is written against --------------------------------------------------


def members(protocol: type) -> set[str]:
    """What a Protocol declares: its annotated attributes, properties and methods."""
    return set(protocol.__annotations__) | {name for name in vars(protocol) if not name.startswith("_")}


def used_attributes(files: list[Path], base: str) -> set[str]:
    """Attributes read on `base` (a dotted expression such as "ctx" or "ctx.backend") in the files."""
    used = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) == base:
                used.add(node.attr)
    return used


def test_everything_the_built_in_strategies_use_on_their_context_is_declared():
    files = sorted((ROOT / "ttscale" / "strategies").glob("*.py"))
    assert used_attributes(files, "ctx") <= members(StrategyContext)
    assert used_attributes(files, "ctx.backend") <= members(Meter)
    assert used_attributes(files, "ctx.verifier") <= members(BoundVerifier)
    # the scan sees what they call (so the checks above are not vacuous)
    assert {"generate", "generate_until", "streams"} <= used_attributes(files, "ctx.backend")


def test_everything_the_built_in_verifiers_use_on_their_meter_is_declared():
    files = sorted((ROOT / "ttscale" / "verifiers").glob("*.py"))
    used = used_attributes(files, "meter")
    assert used and used <= members(Meter)


async def test_the_core_implements_what_plugins_are_handed():
    problem = Problem(id="p", question="1+1?", prompt=(ChatMessage(role="user", content="1+1?"),), answer="2")

    class Steps(VerifierBase):
        name: str = "steps"

        async def score_steps(self, problem, steps, meter):
            return [[0.5] * len(solution) for solution in steps]

    from ttscale.grading.math_answer import DEFAULT_VERIFIER

    ctx = SolveContext.for_problem(problem, backend=FakeBackend(), answers=DEFAULT_VERIFIER,
                                   params=SampleParams(), seed=7, verifier=Steps())
    assert isinstance(ctx, StrategyContext) and isinstance(ctx.answers, AnswerView)
    assert isinstance(ctx.backend, Meter) and isinstance(ctx.backend, CostMeter)
    assert isinstance(ctx.verifier, BoundVerifier) and isinstance(ctx.verifier, VerifierView)
    assert isinstance(ctx.verifier.meter, Meter)
    assert await ctx.require_verifier("test").score(["a\n\nb"]) == [0.5]


def test_a_verifier_on_the_public_base_must_score_steps():
    class NoScores(VerifierBase):
        name: str = "none"

    with pytest.raises(TypeError, match="abstract method.*score_steps"):
        NoScores()


async def test_start_now_starts_only_what_can_be_started():
    class Engine:
        started = False

        async def start(self) -> None:
            self.started = True

    engine, fake = Engine(), FakeBackend()
    assert isinstance(engine, Startable) and not isinstance(fake, Startable)
    await start_now(engine)
    await start_now(fake)  # nothing to start: no error
    assert engine.started
