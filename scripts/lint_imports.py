"""Check the import contracts of pyproject.toml ([tool.importlinter]) with import-linter.

ttscale.strategies, ttscale.verifiers and ttscale.benchmarks live in top-level folders
(pyproject's package-dir), where grimp, which import-linter reads the imports with, does not look
for them: it walks the package's one folder. So the package is copied as it installs, every
subpackage under ttscale/, into a temporary folder, and lint-imports runs there (its working
directory comes first on sys.path). Exit status and output are lint-imports'.

    .venv/bin/python scripts/lint_imports.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: import-linter depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def stage(into: Path) -> Path:
    """The ttscale package laid out as installed (package-dir applied), under `into`."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package = into / "ttscale"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "ttscale", package, ignore=ignore)
    for name, folder in setuptools.get("package-dir", {}).items():
        shutil.copytree(ROOT / folder, into / Path(*name.split(".")), ignore=ignore)
    return package


def package_modules() -> list[str]:
    """Every module of the installed package (`__main__` ones too), by name, sorted."""
    with tempfile.TemporaryDirectory(prefix="ttscale-modules-") as tmp:
        package = stage(Path(tmp))
        names = []
        for path in package.rglob("*.py"):
            parts = path.relative_to(package.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def main() -> int:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory(prefix="ttscale-lint-imports-") as tmp:
        stage(Path(tmp))
        command = [str(lint_imports), str(ROOT / "pyproject.toml"), "--no-cache", *sys.argv[1:]]
        return subprocess.run(command, cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main())
