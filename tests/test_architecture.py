"""The architecture, enforced: import-linter's contracts (pyproject.toml [tool.importlinter]) hold,
and every module of the package imports in a fresh interpreter whatever the order (no import
circle, and no function-local import hiding one, can make an order fail)."""

from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ttscale"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def package_modules() -> list[str]:
    """Every module of the package (`__main__` ones too), by name, sorted."""
    names = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


MODULES = [m for m in package_modules() if not m.endswith("__main__")]  # __main__ runs the CLI


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_contracts_hold():
    """Exactly what a developer runs: `lint-imports` at the repository root."""
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    report = result.stdout[result.stdout.find("Contracts"):] + result.stderr
    assert result.returncode == 0, report
    assert "BROKEN" not in report and f"{len(contracts())} kept, 0 broken" in report, report


def test_the_vllm_contract_names_every_module_but_the_backends():
    [contract] = [c for c in contracts() if c.get("forbidden_modules") == ["vllm"]]
    children = {".".join(m.split(".")[:2]) for m in package_modules() if m != "ttscale"}
    assert set(contract["source_modules"]) == children - {"ttscale.backends"}


ORDERS = {
    "sorted": MODULES,
    "reversed": MODULES[::-1],
    **{f"random seed {seed}": random.Random(seed).sample(MODULES, len(MODULES)) for seed in (1, 2, 3)},
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_every_module_imports_in_any_order(order):
    """Each order in its own fresh interpreter: the first ImportError (a circle shows as one: "cannot
    import name ... partially initialized module") fails it, naming the module and the order."""
    code = (
        "import importlib, json, sys, traceback\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        print(f'importing {name}:'); traceback.print_exc(); sys.exit(1)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, json.dumps(ORDERS[order])], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, f"{order} order: {result.stdout}{result.stderr[-3000:]}"


def test_every_function_local_project_import_says_why():
    """A project module imported inside a function hides nothing: it keeps a heavy dependency (vLLM,
    Ray, torch, FastAPI, uvicorn, matplotlib) off the import path, and its line says which."""
    silent = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                names = [inner.module or ""] if isinstance(inner, ast.ImportFrom) else \
                    [a.name for a in inner.names] if isinstance(inner, ast.Import) else []
                if any(n == "ttscale" or n.startswith("ttscale.") for n in names) and "#" not in lines[inner.lineno - 1]:
                    silent.append(f"{path.relative_to(ROOT)}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    assert not silent, "function-local imports of project modules with no reason:\n" + "\n".join(silent)
