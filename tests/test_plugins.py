"""Plugins from other installed packages, and the contract they are written against.

A tiny plugin package (a pyproject with entry points, a strategy and a verifier module) is
built and installed with pip into a temporary directory, with its dist-info, offline; `ttscale
eval` then runs it through the CLI with that directory on PYTHONPATH, as it would run for a
user who pip-installed the package.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap
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

DEMO_STRATEGY = '''
"""One sample, its answer taken as it is: a strategy written against ttscale.plugins only."""

from ttscale.plugins import Candidate, GenRequest, Problem, StrategyContext, Trace


class FirstSample:
    name = "first-sample"

    def __init__(self, tag: str = "untagged"):
        self.tag = tag

    async def solve(self, problem: Problem, ctx: StrategyContext) -> Trace:
        params = ctx.params.model_copy(update={"n": 1})
        [generation] = await ctx.backend.generate([GenRequest(prompt=problem.prompt, params=params)])
        [completion] = generation.completions
        answer = ctx.answers.extract_answer(completion.text)
        candidate = Candidate(text=completion.text, answer=answer, num_tokens=completion.num_tokens,
                              finish_reason=completion.finish_reason)
        return Trace(candidates=(candidate,), selections={"first": answer}, chosen_rule="first",
                     metadata={"plugin": "ttscale-demo-plugin", "tag": self.tag, "seed": ctx.params.seed})
'''

DEMO_VERIFIER = '''
"""Scores a step by its length: a verifier on the public base class."""

from pydantic import Field

from ttscale.plugins import VerifierBase


class StepLength(VerifierBase):
    name: str = Field(default="step-length", exclude=True)
    per: float = 1000.0

    async def score_steps(self, problem, steps, meter):
        return [[len(step) / self.per for step in solution] for solution in steps]
'''


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
        (root / path).write_text(textwrap.dedent(source))
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
def demo_site(tmp_path_factory) -> Path:
    """ttscale-demo-plugin installed: strategy my-strategy, verifier step-length."""
    root = tmp_path_factory.mktemp("demo")
    package = write_package(
        root / "src", "ttscale-demo-plugin",
        {"ttscale.strategies": {"my-strategy": "demo_plugin.strategy:FirstSample"},
         "ttscale.verifiers": {"step-length": "demo_plugin.verifier:StepLength"}},
        {"demo_plugin/strategy.py": DEMO_STRATEGY, "demo_plugin/verifier.py": DEMO_VERIFIER},
    )
    return pip_install(package, root / "site")


@pytest.fixture(scope="module")
def bad_site(tmp_path_factory) -> Path:
    """ttscale-bad-plugin installed: it claims the built-in best-of-n and the demo's my-strategy,
    one entry point's module fails to import, another names something that is not a factory."""
    root = tmp_path_factory.mktemp("bad")
    package = write_package(
        root / "src", "ttscale-bad-plugin",
        {"ttscale.strategies": {"best-of-n": "bad_plugin.strategies:Impostor",
                                "my-strategy": "bad_plugin.strategies:Impostor",
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


def test_a_strategy_from_an_installed_package_runs_through_ttscale_eval(demo_site, tmp_path):
    result = ttscale("eval", "-s", "my-strategy", "-S", "tag=from-the-cli", "--backend", "fake",
                     "-b", "arithmetic", "--limit", "3", "-o", "runs", sites=[demo_site], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = records(tmp_path / "runs")
    assert len(rows) == 3
    for row in rows:
        assert row["strategy"] == "my-strategy" and row["chosen_rule"] == "first"
        # The plugin's own trace metadata, its option from -S, and the per-problem seed its context carried.
        assert row["trace_metadata"] == {"plugin": "ttscale-demo-plugin", "tag": "from-the-cli", "seed": row["seed"]}
        [candidate] = row["candidates"]
        assert row["selections"]["first"]["answer"] == candidate["answer"]
        # It spent through the meter: one call, its sample's tokens.
        assert row["cost"]["calls"] == 1 and row["cost"]["generated_tokens"] == candidate["num_tokens"] > 0


def test_a_verifier_from_an_installed_package_scores_through_ttscale_eval(demo_site, tmp_path):
    result = ttscale("eval", "-s", "best-of-n", "--n", "2", "-v", "step-length", "-V", "per=100",
                     "--backend", "fake", "-b", "arithmetic", "--limit", "2", "-o", "runs", sites=[demo_site], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for row in records(tmp_path / "runs"):
        assert row["verifier"] == "step-length" and row["verifier_uses_gold"] is False
        for candidate in row["candidates"]:
            assert candidate["step_scores"] == [len(step) / 100 for step in split_steps(candidate["text"])]


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


def test_plugin_names_are_listed_and_suggested_with_their_package(demo_site, monkeypatch):
    monkeypatch.syspath_prepend(str(demo_site))
    strategies = fresh_strategies()
    assert strategies.group == "ttscale.strategies"
    assert strategies.names() == ["best-of-n", "my-strategy"] and "my-strategy" in strategies
    with pytest.raises(UnknownNameError) as error:
        strategies.factory("my-strategi")
    assert "Did you mean 'my-strategy'?" in str(error.value)
    assert "Known strategies: best-of-n, my-strategy (from package ttscale-demo-plugin 0.1)." in str(error.value)
    assert strategies.factory("my-strategy").__name__ == "FirstSample"


def test_two_plugins_claiming_one_name_is_an_error_naming_both(demo_site, bad_site, monkeypatch):
    monkeypatch.syspath_prepend(str(demo_site))
    monkeypatch.syspath_prepend(str(bad_site))
    with pytest.raises(PluginError) as error:
        fresh_strategies().factory("my-strategy")
    assert "package ttscale-bad-plugin 0.1" in str(error.value) and "package ttscale-demo-plugin 0.1" in str(error.value)


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
    files = sorted((ROOT / "strategies").glob("*.py"))
    assert used_attributes(files, "ctx") <= members(StrategyContext)
    assert used_attributes(files, "ctx.backend") <= members(Meter)
    assert used_attributes(files, "ctx.verifier") <= members(BoundVerifier)
    # the scan sees what they call (so the checks above are not vacuous)
    assert {"generate", "generate_until", "streams"} <= used_attributes(files, "ctx.backend")


def test_everything_the_built_in_verifiers_use_on_their_meter_is_declared():
    files = sorted((ROOT / "verifiers").glob("*.py"))
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
