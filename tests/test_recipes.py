"""recipes/: every YAML is a RunConfig that `ttscale eval -c` runs, and the docs name each one.

The recipes are the docs' headline experiments; these tests keep them from rotting. They run each
through the CLI on the fake backend and a few problems: the engine is not what is tested here. A
trained verifier needs a head trained on the engine's hidden states, so a recipe that names one
runs with the scripted PRM in its place; everything else (strategy, options, split, benchmark)
is the recipe's own.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ttscale import registry
from ttscale.config import RunConfig, build_config, load_config_file

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def ttscale(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ttscale", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_there_are_recipes():
    assert {path.name for path in RECIPES} >= {"quickstart.yaml", "compare-best-of-32.yaml", "adaptive-best-of-8-logprobs.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_is_a_run_config_of_registered_plugins(recipe):
    config = build_config(load_config_file(recipe), where=str(recipe))
    assert isinstance(config, RunConfig)
    assert config.strategy in registry.strategies
    assert config.backend in registry.backends
    assert config.benchmark in registry.benchmarks
    assert config.verifier is None or config.verifier in registry.verifiers


def test_the_quickstart_recipe_is_the_readme_command():
    """Same config, so the same run id, as `ttscale eval --benchmark arithmetic --strategy best-of-n --n 8 --limit 10`."""
    from_flags = RunConfig(benchmark="arithmetic", strategy="best-of-n", strategy_options={"n": 8}, limit=10)
    assert build_config(load_config_file(ROOT / "recipes" / "quickstart.yaml")).run_id() == from_flags.run_id()


def test_every_recipe_is_named_in_the_docs_and_every_named_recipe_exists():
    text = "\n".join(path.read_text() for path in DOCS)
    named = set(re.findall(r"recipes/([a-z0-9][\w.-]*\.yaml)", text))  # not the placeholder X.yaml
    assert {path.name for path in RECIPES} <= named, "a recipe no page of docs/ or the README names"
    assert named <= {path.name for path in RECIPES}, "the docs name a recipe that does not exist"


def runnable_copy(recipe: Path, tmp_path: Path) -> Path:
    """The recipe with a trained verifier swapped for the scripted PRM (no head to load here)."""
    values = load_config_file(recipe)
    if values.get("verifier") != "trained":
        return recipe
    values.update(verifier="scripted-prm", verifier_options={})
    copy = tmp_path / recipe.name
    copy.write_text(yaml.safe_dump(values))
    return copy


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_runs_through_the_cli_on_the_fake_backend(recipe, tmp_path):
    config = build_config(load_config_file(recipe))
    flags = ["--limit", "6", "-o", str(tmp_path / "runs")]
    if config.backend == "replay":
        # The recorded run it replays: the recipe of that run, recorded on the fake backend first.
        recorded = RunConfig(**{**load_config_file(ROOT / "recipes" / "adaptive-best-of-8-logprobs.yaml"), "backend": "fake"})
        assert Path(config.backend_options["run"]).name == build_config(
            load_config_file(ROOT / "recipes" / "adaptive-best-of-8-logprobs.yaml")).run_id()
        first = ttscale("eval", "-c", str(ROOT / "recipes" / "adaptive-best-of-8-logprobs.yaml"), "--backend", "fake", *flags, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        flags += ["--backend-option", f"run={tmp_path / 'runs' / recorded.model_copy(update={'limit': 6}).run_id()}"]
    else:
        flags += ["--backend", "fake"]
    result = ttscale("eval", "-c", str(runnable_copy(recipe, tmp_path)), *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Run directory: " in result.stdout
